//! `spawn_app` and a `TestApp` method per endpoint.

use flashsale::config::Config;
use flashsale::startup::Application;
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::oneshot;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Memory,
    Redis,
    /// A 3-master Redis Cluster (`scripts/ensure-services` starts one).
    Cluster,
}

impl Backend {
    /// Redis, one server or a cluster.
    pub fn is_redis(self) -> bool {
        self != Backend::Memory
    }
}

/// The test cluster's seed nodes.
pub fn redis_cluster_nodes() -> Vec<String> {
    std::env::var("FLASHSALE_TEST_REDIS_CLUSTER")
        .unwrap_or_else(|_| {
            "redis://127.0.0.1:17001,redis://127.0.0.1:17002,redis://127.0.0.1:17003".into()
        })
        .split(',')
        .map(str::to_owned)
        .collect()
}

/// One command on the backend's Redis (every master of a cluster, as the cluster client
/// routes it); `None` on the embedded engine.
pub async fn redis_query<T: redis::FromRedisValue>(
    backend: Backend,
    command: redis::Cmd,
) -> Option<T> {
    match backend {
        Backend::Memory => None,
        Backend::Redis => {
            let mut redis = redis::Client::open(redis_url())
                .expect("valid URL")
                .get_multiplexed_async_connection()
                .await
                .expect("connects");
            Some(command.query_async(&mut redis).await.expect("answers"))
        }
        Backend::Cluster => {
            let mut redis = redis::cluster::ClusterClient::new(redis_cluster_nodes())
                .expect("valid URLs")
                .get_async_connection()
                .await
                .expect("connects");
            Some(command.query_async(&mut redis).await.expect("answers"))
        }
    }
}

/// `MEMORY USAGE` of one key in the backend's Redis, in bytes (0 if missing).
pub async fn redis_memory_usage(backend: Backend, key: &str) -> u64 {
    let mut usage = redis::cmd("MEMORY");
    usage.arg("USAGE").arg(key).arg("SAMPLES").arg(0);
    redis_query::<Option<u64>>(backend, usage)
        .await
        .flatten()
        .unwrap_or(0)
}

/// Every key matching `pattern` in the backend's Redis (every master of a cluster).
pub async fn redis_keys(backend: Backend, pattern: &str) -> Vec<String> {
    let mut keys = redis::cmd("KEYS");
    keys.arg(pattern);
    redis_query(backend, keys).await.unwrap_or_default()
}

pub fn database_url() -> String {
    std::env::var("FLASHSALE_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A fresh Postgres schema, and the URL whose connections use it.
pub async fn fresh_postgres_schema() -> String {
    use sqlx::Connection;
    let schema = unique_id("t").replace('-', "_");
    let mut admin = sqlx::PgConnection::connect(&database_url())
        .await
        .expect("the tests need a real Postgres (FLASHSALE_TEST_DATABASE_URL)");
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&mut admin)
        .await
        .expect("schema created");
    let separator = if database_url().contains('?') {
        '&'
    } else {
        '?'
    };
    format!(
        "{}{separator}options=-csearch_path%3D{schema}",
        database_url()
    )
}

/// A fresh SQLite file.
pub fn fresh_sqlite_path() -> String {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    dir.join(format!("{}.db", unique_id("test")))
        .to_string_lossy()
        .into_owned()
}

pub fn redis_url() -> String {
    std::env::var("FLASHSALE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

pub struct TestApp {
    pub address: String,
    pub admin_token: String,
    pub store_token: String,
    pub jwt_secret: String,
    pub client: reqwest::Client,
    pub store: flashsale::store::Store,
    pub engine: flashsale::engine::Engine,
    pub events: std::sync::Arc<dyn flashsale::engine::EventLog>,
    stop: Option<oneshot::Sender<()>>,
    pub server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// Runs `async fn $name(backend: Backend)` once per backend.
#[macro_export]
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use $crate::helpers::Backend;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory() { super::$name(Backend::Memory).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis() { super::$name(Backend::Redis).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn cluster() { super::$name(Backend::Cluster).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sharded_redis() {
                $crate::helpers::SHARDS.scope(4, super::$name(Backend::Redis)).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sharded_cluster() {
                $crate::helpers::SHARDS.scope(6, super::$name(Backend::Cluster)).await
            }
        }
    )*};
}

tokio::task_local! {
    /// Shards of the flash sales (without a waiting room) that [`TestApp::create_campaign`]
    /// creates in a test run with shards (`on_every_backend`'s `sharded_*` variants).
    pub static SHARDS: u8;
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, |_| {}).await
}

pub async fn spawn_app_with(backend: Backend, tune: impl FnOnce(&mut Config)) -> TestApp {
    let mut config = Config::defaults();
    config.listen = "127.0.0.1:0".parse().expect("valid address");
    // Each test gets its own database; with Redis, its own key namespace too.
    match backend {
        Backend::Memory => {
            config.redis_url = None;
            config.database_url = None;
            config.sqlite_path = fresh_sqlite_path();
        }
        Backend::Redis => {
            config.redis_url = Some(redis_url());
            config.redis_namespace = unique_id("ns");
            config.database_url = Some(fresh_postgres_schema().await);
        }
        Backend::Cluster => {
            config.redis_url = None;
            config.redis_cluster_nodes = redis_cluster_nodes();
            config.redis_namespace = unique_id("ns");
            config.database_url = Some(fresh_postgres_schema().await);
        }
    }
    config.persist_reclaim_ms = 500;
    config.reconcile_interval_ms = 200;
    config.admin_tokens = vec!["test-admin".into()];
    config.store_tokens = vec!["test-store".into()];
    config.jwt_secret = Some("test-secret".into());
    config.metrics_listen = None;
    config.reaper_interval_ms = 100;
    config.user_rate_per_second = 0;
    tune(&mut config);
    let application = Application::build(config.clone())
        .await
        .expect("the application builds (is Redis running?)");
    let address = format!("http://{}", application.address());
    let store = application.store();
    let engine = application.engine();
    let events = application.events();
    let secret = application.credentials().jwt_secret.clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(application.run_until(async move {
        let _ = stopped.await;
    }));
    TestApp {
        address,
        admin_token: config.admin_tokens.first().cloned().unwrap_or_default(),
        store_token: config.store_tokens.first().cloned().unwrap_or_default(),
        jwt_secret: secret,
        // Idle connections leave the pool before the service closes them (its header-read
        // timeout, 5 s): a request never goes out on a connection the service is closing.
        client: reqwest::Client::builder()
            .pool_idle_timeout(std::time::Duration::from_secs(3))
            .build()
            .expect("a client"),
        store,
        engine,
        events,
        stop: Some(stop),
        server: Some(server),
    }
}

/// A campaign id no other test uses.
pub fn unique_id(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}-{}-{}",
        ulid::Ulid::new().to_string().to_lowercase(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A reservation idempotency key no other request uses.
pub fn fresh_key() -> String {
    unique_id("key")
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// The whole feed from the start, read `limit` events a page; cursors checked to
    /// increase strictly and `next` to name the last one.
    pub async fn feed(&self, limit: usize) -> Vec<Value> {
        let mut events = Vec::new();
        let mut after = 0i64;
        loop {
            let response = self
                .client
                .get(self.url(&format!("/v1/events?after={after}&limit={limit}")))
                .bearer_auth(&self.store_token)
                .send()
                .await
                .expect("sent");
            assert_eq!(response.status(), 200);
            let page: Value = response.json().await.expect("json");
            let batch = page["events"].as_array().expect("events").clone();
            for event in &batch {
                let cursor = event["cursor"].as_i64().expect("cursor");
                assert!(cursor > after, "cursors strictly increase");
                after = cursor;
            }
            assert_eq!(page["next"].as_i64(), Some(after));
            if batch.is_empty() {
                return events;
            }
            events.extend(batch);
        }
    }

    /// The feed once it holds at least `expected` events (or as it is after `within`).
    pub async fn feed_when(&self, expected: usize, within: std::time::Duration) -> Vec<Value> {
        let started = std::time::Instant::now();
        loop {
            let events = self.feed(1000).await;
            if events.len() >= expected || started.elapsed() > within {
                return events;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// Opens a group of `campaign` for `user` (a fresh idempotency key).
    pub async fn open_group(&self, campaign: &str, user: &str) -> Response {
        self.client
            .post(self.url(&format!("/v1/campaigns/{campaign}/groups")))
            .bearer_auth(&self.store_token)
            .header("Idempotency-Key", fresh_key())
            .json(&json!({ "user_id": user }))
            .send()
            .await
            .expect("sent")
    }

    /// Joins `group` as `user` (a fresh idempotency key).
    pub async fn join_group(&self, group: &str, user: &str) -> Response {
        self.client
            .post(self.url(&format!("/v1/groups/{group}/members")))
            .bearer_auth(&self.store_token)
            .header("Idempotency-Key", fresh_key())
            .json(&json!({ "user_id": user }))
            .send()
            .await
            .expect("sent")
    }

    /// Registers a webhook (`POST /v1/webhooks` with a fresh key); the answer as sent.
    pub async fn webhook(&self, body: Value) -> Response {
        self.client
            .post(self.url("/v1/webhooks"))
            .header("idempotency-key", fresh_key())
            .bearer_auth(&self.admin_token)
            .json(&body)
            .send()
            .await
            .expect("sent")
    }

    /// `GET /readyz`: its status and body.
    pub async fn readiness(&self) -> (u16, Value) {
        let response = self
            .client
            .get(self.url("/readyz"))
            .send()
            .await
            .expect("sent");
        let status = response.status().as_u16();
        (status, response.json().await.expect("json"))
    }

    /// `GET /metrics` as text.
    pub async fn metrics_text(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("sent")
            .text()
            .await
            .expect("text")
    }

    /// The ids of the campaign's reservations the database holds.
    pub async fn stored_reservation_ids(
        &self,
        campaign: &str,
    ) -> std::collections::HashSet<String> {
        let campaign = flashsale::domain::CampaignId::parse(campaign).expect("valid");
        self.store
            .live_reservations(&campaign)
            .await
            .expect("database answers")
            .into_iter()
            .map(|r| r.reservation.id.to_string())
            .collect()
    }

    pub fn user_token(&self, user: &str) -> String {
        flashsale::http::auth::issue_user_token(&self.jwt_secret, user, 3600)
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.server.take() {
            Some(server) => server.await.expect("server task does not panic"),
            None => Ok(()),
        }
    }

    pub async fn create_campaign(&self, body: &Value) -> Response {
        let mut body = body.clone();
        if let (Ok(shards), Some(fields)) = (SHARDS.try_with(|n| *n), body.as_object_mut()) {
            let flash_sale = fields.get("kind") == Some(&json!("flash_sale"));
            if flash_sale && !fields.contains_key("queue") && !fields.contains_key("shards") {
                fields.insert("shards".into(), json!(shards));
            }
        }
        self.client
            .post(self.url("/v1/campaigns"))
            .bearer_auth(&self.admin_token)
            .json(&body)
            .send()
            .await
            .expect("request sent")
    }

    /// Creates a flash-sale campaign with a fresh id; `extra` fields override the defaults.
    pub async fn campaign(&self, stock: u64, per_user_limit: u64, extra: Value) -> String {
        let id = unique_id("c");
        let mut body = json!({"id": id, "kind": "flash_sale", "sku": "sku-1", "stock": stock,
            "per_user_limit": per_user_limit});
        if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            body.extend(extra.clone());
        }
        let response = self.create_campaign(&body).await;
        assert_eq!(
            response.status(),
            StatusCode::CREATED,
            "{:?}",
            response.text().await
        );
        id
    }

    pub async fn get_campaign(&self, id: &str) -> Response {
        self.client
            .get(self.url(&format!("/v1/campaigns/{id}")))
            .bearer_auth(&self.store_token)
            .send()
            .await
            .expect("request sent")
    }

    pub async fn campaign_json(&self, id: &str) -> Value {
        let response = self.get_campaign(id).await;
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.expect("json")
    }

    pub async fn adjust_stock(&self, id: &str, delta: i64) -> Response {
        self.client
            .post(self.url(&format!("/v1/campaigns/{id}/stock")))
            .bearer_auth(&self.admin_token)
            .header("Idempotency-Key", fresh_key())
            .json(&json!({ "delta": delta }))
            .send()
            .await
            .expect("request sent")
    }

    pub async fn availability(&self, id: &str) -> Response {
        self.client
            .get(self.url(&format!("/v1/campaigns/{id}/availability")))
            .send()
            .await
            .expect("request sent")
    }

    /// Reserves with the store token and a fresh key.
    pub async fn reserve(&self, campaign: &str, user: &str, quantity: u64) -> Response {
        self.reserve_with(
            campaign,
            &self.store_token,
            &fresh_key(),
            &json!({"user_id": user, "quantity": quantity}),
        )
        .await
    }

    pub async fn reserve_with(
        &self,
        campaign: &str,
        token: &str,
        key: &str,
        body: &Value,
    ) -> Response {
        self.try_reserve_with(campaign, token, key, body)
            .await
            .expect("request sent")
    }

    /// [`TestApp::reserve_with`], a transport error returned (a caller retries it with the
    /// same key, like a 5xx).
    pub async fn try_reserve_with(
        &self,
        campaign: &str,
        token: &str,
        key: &str,
        body: &Value,
    ) -> reqwest::Result<Response> {
        self.client
            .post(self.url(&format!("/v1/campaigns/{campaign}/reservations")))
            .bearer_auth(token)
            .header("Idempotency-Key", key)
            .json(body)
            .send()
            .await
    }

    /// The load epoch the database recorded for `campaign` (a new one after each rebuild).
    /// Where engine and database disagree, once the persisters caught up: reconciled again
    /// for up to 20 s while they differ (on a loaded machine the last events can take a while
    /// to reach the database); what still differs then.
    pub async fn settled_drift(&self) -> Vec<flashsale::pipeline::recovery::Drift> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let drift = flashsale::pipeline::recovery::reconcile(&self.engine, &self.store)
                .await
                .expect("reconciles");
            if drift.is_empty() || std::time::Instant::now() > deadline {
                return drift;
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    }

    pub async fn engine_epoch(&self, campaign: &str) -> Option<String> {
        let id = flashsale::domain::CampaignId::parse(campaign).expect("an id");
        self.store.engine_epoch(&id).await.expect("reads")
    }

    pub async fn get_reservation(&self, id: &str, token: &str) -> Response {
        self.client
            .get(self.url(&format!("/v1/reservations/{id}")))
            .bearer_auth(token)
            .send()
            .await
            .expect("request sent")
    }

    pub async fn confirm(&self, id: &str, token: &str) -> Response {
        self.client
            .post(self.url(&format!("/v1/reservations/{id}/confirm")))
            .bearer_auth(token)
            .send()
            .await
            .expect("request sent")
    }

    pub async fn extend(&self, id: &str, body: Value, token: &str) -> Response {
        self.client
            .post(self.url(&format!("/v1/reservations/{id}/extend")))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .expect("request sent")
    }

    pub async fn cancel(&self, id: &str, token: &str) -> Response {
        self.client
            .post(self.url(&format!("/v1/reservations/{id}/cancel")))
            .bearer_auth(token)
            .send()
            .await
            .expect("request sent")
    }
}

/// Asserts a problem+json answer with this status and `code`; returns the body.
pub async fn assert_problem(response: Response, status: u16, code: &str) -> Value {
    assert_eq!(response.status().as_u16(), status, "status for {code}");
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(content_type, "application/problem+json");
    let body: Value = response.json().await.expect("problem body is JSON");
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], status);
    assert!(
        body["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{body}"
    );
    assert!(body["title"].is_string() && body["type"].is_string());
    body
}

/// Reads a 201 reservation body.
pub async fn created_reservation(response: Response) -> Value {
    assert_eq!(response.status(), StatusCode::CREATED);
    response.json().await.expect("json")
}

/// A response's JSON body, once its status is `status`.
pub async fn json_body(response: Response, status: u16) -> Value {
    assert_eq!(response.status().as_u16(), status);
    response.json().await.expect("json")
}
