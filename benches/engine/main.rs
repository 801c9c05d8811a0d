//! Reserve on both engines, with a baseline from the same run.
//!
//! `cargo bench --bench engine` (needs Redis at `FLASHSALE_BENCH_REDIS_URL`, default
//! 127.0.0.1:6379). Groups:
//! - `reserve_success`: every attempt reserves (huge stock), on the in-memory engine, on the
//!   Redis engine, and a bare Redis `PING` round trip as the floor the Redis engine stands on;
//! - `reserve_sold_out`: every attempt is refused, by the Redis engine and by the sold-out gate
//!   in front of it (no round trip).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use flashsale::domain::{
    Campaign, CampaignDraft, IdempotencyKey, Millis, Quantity, ReservationId, UserId,
};
use flashsale::engine::{Engine, Gated, MemoryEngine, RedisEngine, ReserveOutcome, ReserveRequest};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn redis_url() -> String {
    std::env::var("FLASHSALE_BENCH_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn campaign(stock: u64) -> Campaign {
    let draft = CampaignDraft {
        id: None,
        kind: "flash_sale".into(),
        sku: "bench".into(),
        stock,
        per_user_limit: Some(1_000_000),
        starts_at: None,
        ends_at: None,
        hold_seconds: Some(3600),
        group: None,
    };
    Campaign::parse(draft, Millis::now()).expect("valid campaign")
}

/// A fresh attempt each call: a new key, rotating over 10,000 users.
fn attempt(campaign: &Campaign, counter: &AtomicU64) -> ReserveRequest {
    let n = counter.fetch_add(1, Ordering::Relaxed);
    let user = UserId::parse(&format!("user-{}", n % 10_000)).expect("valid user");
    let quantity = Quantity::parse(1).expect("valid quantity");
    let key = IdempotencyKey::parse(&format!("bench-{n}")).expect("valid key");
    ReserveRequest {
        fingerprint: ReserveRequest::fingerprint_of(&user, quantity),
        idempotency_key: format!("s/bench:{}", key.as_str()),
        reservation_id: ReservationId::generate(&campaign.id),
        campaign_id: campaign.id.clone(),
        user_id: user,
        quantity,
        now: Millis::now(),
    }
}

fn bench_reserve(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let redis = runtime
        .block_on(RedisEngine::connect(&redis_url()))
        .expect("the engine bench needs Redis (FLASHSALE_BENCH_REDIS_URL)");
    let engines: Vec<(&str, Arc<dyn Engine>)> = vec![
        ("memory", Arc::new(MemoryEngine::new())),
        ("redis", Arc::new(redis.clone())),
    ];
    let counter = Arc::new(AtomicU64::new(0));

    let mut group = c.benchmark_group("reserve_success");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(5));
    for (name, engine) in &engines {
        let hot = campaign(Campaign::MAX_STOCK);
        runtime
            .block_on(engine.create_campaign(&hot))
            .expect("created");
        group.bench_function(*name, |b| {
            b.to_async(&runtime).iter(|| {
                let request = attempt(&hot, &counter);
                let engine = Arc::clone(engine);
                async move {
                    let outcome = engine.reserve(&request).await.expect("answers");
                    assert!(matches!(outcome, ReserveOutcome::Reserved { .. }));
                }
            })
        });
    }
    group.bench_function("redis_ping_floor", |b| {
        b.to_async(&runtime).iter(|| {
            let engine = redis.clone();
            async move { engine.ping().await.expect("pong") }
        })
    });
    group.finish();

    let mut group = c.benchmark_group("reserve_sold_out");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(5));
    let gated = Gated::new(Arc::new(redis.clone()));
    let refusers: Vec<(&str, Arc<dyn Engine>)> = vec![
        ("redis", Arc::new(redis.clone())),
        ("gated_redis", Arc::new(gated.clone())),
    ];
    for (name, engine) in &refusers {
        let sold = campaign(1);
        runtime.block_on(async {
            engine.create_campaign(&sold).await.expect("created");
            engine
                .reserve(&attempt(&sold, &counter))
                .await
                .expect("answers");
            engine
                .reserve(&attempt(&sold, &counter))
                .await
                .expect("answers");
            tokio::time::sleep(Duration::from_millis(100)).await;
        });
        group.bench_function(*name, |b| {
            b.to_async(&runtime).iter(|| {
                let request = attempt(&sold, &counter);
                let engine = Arc::clone(engine);
                async move {
                    let outcome = engine.reserve(&request).await.expect("answers");
                    assert!(matches!(outcome, ReserveOutcome::Refused(_)));
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_reserve);
criterion_main!(benches);
