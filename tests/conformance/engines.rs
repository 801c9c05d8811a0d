//! How each engine under test is made, and the macro that runs one specification on all.

use flashsale::domain::{
    Campaign, CampaignDraft, CampaignId, IdempotencyKey, Millis, Quantity, ScopedKey, StockDelta,
    UserId,
};
use flashsale::engine::{
    CampaignSnapshot, Decisions, Engine, MemoryEngine, RedisEngine, ReserveRequest, StockRequest,
};
use std::sync::Arc;

pub fn redis_url() -> String {
    std::env::var("FLASHSALE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

pub async fn redis() -> RedisEngine {
    // A namespace of the tests' own (`scripts/test` removes exactly its keys).
    RedisEngine::connect_in(&redis_url(), "t-conformance")
        .await
        .expect("the conformance suite needs a real Redis (FLASHSALE_TEST_REDIS_URL)")
}

/// The test cluster's seed nodes (`scripts/ensure-services` starts a 3-master cluster).
pub fn redis_cluster_nodes() -> Vec<String> {
    std::env::var("FLASHSALE_TEST_REDIS_CLUSTER")
        .unwrap_or_else(|_| {
            "redis://127.0.0.1:17001,redis://127.0.0.1:17002,redis://127.0.0.1:17003".into()
        })
        .split(',')
        .map(str::to_owned)
        .collect()
}

pub async fn cluster() -> RedisEngine<flashsale::engine::redis::topology::Watched> {
    RedisEngine::connect_cluster(&redis_cluster_nodes(), "t-conformance")
        .await
        .expect("the conformance suite needs a real Redis Cluster (FLASHSALE_TEST_REDIS_CLUSTER)")
}

/// The engines every specification runs against: on each backend, without the sold-out
/// gate (the backend's own answers), with it, and with it and sharded flash sales.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Memory,
    Redis,
    Cluster,
    GatedMemory,
    GatedRedis,
    GatedCluster,
    /// The production engine with flash sales made with [`SHARDS`] shards.
    ShardedMemory,
    ShardedRedis,
    ShardedCluster,
}

tokio::task_local! {
    /// Shards of the flash sales [`campaign`] makes (those without a waiting room).
    pub static SHARDS: u8;
}

pub async fn make(kind: Kind) -> Arc<Engine> {
    Arc::new(match kind {
        Kind::Memory => Engine::ungated(MemoryEngine::new()),
        Kind::Redis => Engine::ungated(redis().await),
        Kind::Cluster => Engine::ungated(cluster().await),
        Kind::GatedMemory | Kind::ShardedMemory => Engine::new(MemoryEngine::new()),
        Kind::GatedRedis | Kind::ShardedRedis => Engine::new(redis().await),
        Kind::GatedCluster | Kind::ShardedCluster => Engine::new(cluster().await),
    })
}

/// Runs `async fn $name(engine: Arc<Engine>)` once per engine.
#[macro_export]
macro_rules! on_every_engine {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use $crate::engines::{make, Kind};
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory() { super::$name(make(Kind::Memory).await).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis() { super::$name(make(Kind::Redis).await).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn gated_memory() { super::$name(make(Kind::GatedMemory).await).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn gated_redis() { super::$name(make(Kind::GatedRedis).await).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn cluster() { super::$name(make(Kind::Cluster).await).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn gated_cluster() { super::$name(make(Kind::GatedCluster).await).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sharded_memory() {
                $crate::engines::SHARDS.scope(4, super::$name(make(Kind::ShardedMemory).await)).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sharded_redis() {
                $crate::engines::SHARDS.scope(4, super::$name(make(Kind::ShardedRedis).await)).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sharded_cluster() {
                $crate::engines::SHARDS.scope(6, super::$name(make(Kind::ShardedCluster).await)).await
            }
        }
    )*};
}

/// A campaign spec with a fresh id, open now, tuned by `tune`.
pub fn campaign(
    stock: u64,
    per_user_limit: u64,
    tune: impl FnOnce(&mut CampaignDraft),
) -> Campaign {
    let mut draft = CampaignDraft {
        id: Some(CampaignId::generate().to_string()),
        kind: "flash_sale".into(),
        sku: "sku-test".into(),
        stock,
        per_user_limit: Some(per_user_limit),
        starts_at: None,
        ends_at: None,
        hold_seconds: Some(60),
        max_extend_seconds: None,
        group: None,
        queue: None,
        shards: None,
    };
    tune(&mut draft);
    if draft.kind == "flash_sale" && draft.queue.is_none() && draft.shards.is_none() {
        draft.shards = SHARDS.try_with(|n| u64::from(*n)).ok();
    }
    Campaign::parse(draft, Millis::now()).expect("test campaigns are valid")
}

pub async fn created(engine: &Engine, campaign: &Campaign) {
    assert_ne!(
        engine
            .load(CampaignSnapshot::fresh(campaign))
            .await
            .expect("engine answers"),
        0,
        "loaded"
    );
}

/// Loads a new campaign straight into a backend (tests of a backend's own primitives).
pub async fn created_in(backend: &dyn Decisions, campaign: &Campaign) {
    assert!(backend
        .load_campaign(CampaignSnapshot::fresh(campaign))
        .await
        .expect("backend answers"));
}

/// A reservation attempt with its own idempotency key.
pub fn attempt(
    campaign: &Campaign,
    user: &str,
    quantity: u64,
    key: &str,
    now: Millis,
) -> ReserveRequest {
    let user_id = UserId::parse(user).expect("valid user");
    let quantity = Quantity::parse(quantity).expect("valid quantity");
    let key = IdempotencyKey::parse(key).expect("valid key");
    ReserveRequest::new(
        campaign.id.clone(),
        user_id,
        quantity,
        ScopedKey::new("s/test", "reserve", &key),
        now,
    )
}

/// A stock change with its own idempotency key.
pub fn stock(campaign: &CampaignId, delta: i64) -> StockRequest {
    StockRequest {
        campaign_id: campaign.clone(),
        delta: StockDelta::parse(delta).expect("valid delta"),
        idempotency_key: ScopedKey::from_stored(format!("s/test/stock/{}", ulid::Ulid::new())),
    }
}
