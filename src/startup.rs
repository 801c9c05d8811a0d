//! The application: build the state from the config, start the workers, serve, shut down.

use crate::config::{Config, Durability};
use crate::engine::safety::Safety;
use crate::engine::{Backing, Consumer, Engine, EventLog, MemoryEngine, RedisEngine, PERSISTER};
use crate::http::auth::{issue_user_token, Auth};
use crate::http::{self, AppState, HttpSettings, Shared};
use crate::pipeline::persister::{self, PersisterSettings};
use crate::pipeline::recovery;
use crate::shutdown::{self, Shutdown};
use crate::store::Store;
use crate::{metrics, workers};
use anyhow::Context;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A built, bound application, not yet serving.
pub struct Application {
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    router: axum::Router,
    metrics_router: Option<axum::Router>,
    state: AppState,
    reaper_interval: Duration,
    reconcile_interval: Duration,
    sample_interval: Duration,
    /// The in-process persister's settings; `None` when another process persists.
    persister: Option<PersisterSettings>,
    credentials: Credentials,
    serve: http::serve::ServeSettings,
    /// How long ended reservations and campaigns stay in the engine.
    retention: Duration,
    webhooks: crate::webhooks::deliver::DeliverySettings,
    personal: recovery::PersonalData,
    /// Whether changes can be decided safely (the persister and the engine watch say).
    safety: Arc<Safety>,
    engine_check: Duration,
    strict: bool,
}

/// The credentials the service accepts, with the generated ones marked so they can be shown.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub admin_tokens: Vec<String>,
    pub store_tokens: Vec<String>,
    pub jwt_secret: String,
    /// Whether the service tokens were generated at start (none were configured).
    pub generated_tokens: bool,
    /// Whether the JWT secret was generated at start.
    pub generated_jwt_secret: bool,
}

impl Credentials {
    fn from_config(config: &Config) -> Self {
        let configured = |tokens: &[String]| -> Vec<String> {
            tokens
                .iter()
                .map(|t| t.trim().to_owned())
                .filter(|t| !t.is_empty())
                .collect()
        };
        let mut admin_tokens = configured(&config.admin_tokens);
        let mut store_tokens = configured(&config.store_tokens);
        // Never run open: with no service token at all, make one of each.
        let generated_tokens = admin_tokens.is_empty() && store_tokens.is_empty();
        if generated_tokens {
            admin_tokens.push(format!("adm_{}", random_hex()));
            store_tokens.push(format!("sto_{}", random_hex()));
        }
        let configured_secret = config.jwt_secret.clone().filter(|s| !s.is_empty());
        let generated_jwt_secret = configured_secret.is_none();
        Credentials {
            admin_tokens,
            store_tokens,
            jwt_secret: configured_secret.unwrap_or_else(random_hex),
            generated_tokens,
            generated_jwt_secret,
        }
    }
}

fn random_hex() -> String {
    hex::encode(rand::random::<[u8; 24]>())
}

impl Application {
    /// Connects the engine, binds the listeners (port 0 picks a free port) and wires the
    /// router; nothing is served until [`Application::run_until`].
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        // The recorder first: handles made while connecting must reach it.
        metrics::install();
        let backing = connect_engine(&config).await?;
        Self::build_with_engine(config, backing).await
    }

    /// Like [`Application::build`], around an engine the caller made (tests share one).
    pub async fn build_with_engine(config: Config, backing: Backing) -> anyhow::Result<Self> {
        let credentials = Credentials::from_config(&config);
        let store = connect_store(&config).await?;
        // Answering after the commit needs this process's persister to make the commit.
        let answer_after_commit = backing.volatile() && config.persister;
        crate::engine::recovery::fence_after_failover(&backing, &store, &config.redis_namespace);
        let safety = Arc::new(Safety::default());
        let mut engine = Engine::new(backing).recovering(store.clone(), Arc::clone(&safety));
        if answer_after_commit {
            engine = engine.answering_after_commit();
        }
        recovery::check_dataset(&engine, &store)
            .await
            .context("checking the stock engine's data against the database")?;
        // Whatever the database knows and the engine lacks (a fresh in-memory engine, or a
        // Redis that restarted empty) is rebuilt before the first request, at once.
        let restored = recovery::restore_all(&engine, &store, &recovery::LossWatch::immediate())
            .await
            .context("rebuilding campaigns from the database")?;
        if !restored.is_empty() {
            tracing::info!(
                campaigns = restored.len(),
                "rebuilt campaigns from the database"
            );
        }
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let metrics_listener = match config.metrics_listen {
            Some(address) => Some(
                TcpListener::bind(address)
                    .await
                    .with_context(|| format!("binding the metrics listener {address}"))?,
            ),
            None => None,
        };
        let handle = metrics::install();
        metrics::set_campaign_series(config.metrics_campaigns);
        let webhook_hosts = Arc::new(
            crate::webhooks::AllowedHosts::parse(&config.webhook_allowed_hosts)
                .map_err(|e| anyhow::anyhow!("FLASHSALE_WEBHOOK_ALLOWED_HOSTS: {e}"))?,
        );
        let mut persister = config.persister.then(|| persister_settings(&config));
        if let (Some(settings), true) = (&mut persister, answer_after_commit) {
            // Every answer waits for a commit: write whatever has arrived at once. Under load
            // the events that arrive during one commit make the next batch (group commit).
            settings.delay = Duration::ZERO;
        }
        let pass_key = store
            .secret("queue_pass_key", config.queue_pass_key.as_deref())
            .await
            .context("reading the waiting-room pass key from the database")?;
        let state = AppState::new(Shared {
            work: engine.backing().work(),
            events: engine.backing().events(),
            engine,
            store,
            auth: Arc::new(Auth::new(
                &credentials.admin_tokens,
                &credentials.store_tokens,
                &credentials.jwt_secret,
            )),
            user_limiter: Shared::user_limiter(config.user_rate_per_second),
            metrics: handle,
            metrics_on_main_listener: metrics_listener.is_none(),
            webhook_hosts: Arc::clone(&webhook_hosts),
            pass_key: crate::domain::PassKey::new(pass_key.as_bytes()),
            line_cache: Default::default(),
            safety: Arc::clone(&safety),
        });
        let settings = HttpSettings {
            body_limit_bytes: config.body_limit_bytes,
            body_read_timeout: Duration::from_millis(config.body_read_timeout_ms.max(1)),
            max_in_flight: config.max_in_flight.max(1),
            request_timeout: Duration::from_millis(config.request_timeout_ms.max(1)),
        };
        let router = http::router(state.clone(), &settings);
        let metrics_router = metrics_listener
            .as_ref()
            .map(|_| http::metrics_only_router(state.clone()));
        Ok(Application {
            listener,
            metrics_listener,
            router,
            metrics_router,
            state,
            reaper_interval: Duration::from_millis(config.reaper_interval_ms.max(10)),
            webhooks: crate::webhooks::deliver::DeliverySettings {
                timeout: Duration::from_millis(config.webhook_timeout_ms.max(1)),
                give_up_after: Duration::from_secs(config.webhook_give_up_seconds),
                min_backoff: Duration::from_millis(200),
                max_backoff: Duration::from_secs(60),
                poll: Duration::from_millis(250),
                allowed: Arc::clone(&webhook_hosts),
            },
            reconcile_interval: Duration::from_millis(config.reconcile_interval_ms.max(10)),
            sample_interval: Duration::from_millis(config.metrics_sample_interval_ms.max(10)),
            persister,
            credentials,
            retention: Duration::from_secs(config.ended_retention_seconds),
            personal: recovery::PersonalData {
                retention: Duration::from_secs(config.retention_days.saturating_mul(86_400)),
                key: config.pseudonym_key.clone(),
            },
            serve: http::serve::ServeSettings {
                header_read_timeout: Duration::from_millis(config.header_read_timeout_ms.max(1)),
                max_age: Duration::from_millis(config.max_connection_age_ms.max(1)),
            },
            safety,
            engine_check: Duration::from_millis(config.engine_check_interval_ms.max(10)),
            strict: config.durability == Durability::Strict,
        })
    }

    pub fn address(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    pub fn port(&self) -> u16 {
        self.address().port()
    }

    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// The database as the handlers see it (tests read it directly).
    pub fn store(&self) -> crate::store::Store {
        self.state.store.clone()
    }

    /// The engine the handlers ask (tests reach behind the API with it).
    pub fn engine(&self) -> Engine {
        self.state.engine.clone()
    }

    /// The engine's event log (tests read it as a persister would).
    pub fn events(&self) -> Arc<dyn EventLog> {
        Arc::clone(&self.state.events)
    }

    /// A user token signed with this instance's secret, for the banner and for tests.
    pub fn user_token(&self, user: &str) -> String {
        issue_user_token(&self.credentials.jwt_secret, user, 24 * 3600)
    }

    /// Serves until Ctrl-C or SIGTERM.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.run_until(stop_signal()).await
    }

    /// Serves until `stop` resolves; then finishes in-flight requests, stops the workers and
    /// waits for them.
    pub async fn run_until(
        self,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (trigger, shutdown) = shutdown::channel();
        let workers = self.spawn_workers(&shutdown);
        let serve_settings = self.serve;
        let metrics_server = match (self.metrics_listener, self.metrics_router) {
            (Some(listener), Some(router)) => {
                let mut stopped = shutdown.clone();
                Some(tokio::spawn(async move {
                    http::serve::serve(listener, router, serve_settings, async move {
                        stopped.recv().await
                    })
                    .await
                }))
            }
            _ => None,
        };
        // HTTP first: in-flight requests finish (with the embedded engine they wait for the
        // persister's commit), then the workers stop and the persister drains.
        http::serve::serve(
            self.listener,
            self.router,
            self.serve,
            signal_then_log(stop),
        )
        .await;
        trigger.trigger();
        for worker in workers {
            if let Err(error) = worker.await {
                tracing::error!(%error, "a worker ended abnormally");
            }
        }
        if let Some(server) = metrics_server {
            server.await.context("metrics listener task")?;
        }
        Ok(())
    }

    fn spawn_workers(&self, shutdown: &Shutdown) -> Vec<JoinHandle<()>> {
        let engine = &self.state.engine;
        let work = &self.state.work;
        let events = &self.state.events;
        let mut workers = vec![
            tokio::spawn(workers::run_reaper(
                engine.clone(),
                Arc::clone(work),
                self.reaper_interval,
                shutdown.clone(),
            )),
            tokio::spawn(workers::run_gate_refresher(
                engine.clone(),
                shutdown.clone(),
            )),
            tokio::spawn(workers::run_admission(
                engine.clone(),
                self.state.store.clone(),
                shutdown.clone(),
            )),
        ];
        if let Some(settings) = &self.persister {
            workers.push(tokio::spawn(persister::run(
                Arc::clone(events),
                self.state.store.clone(),
                persister_consumer(),
                settings.clone(),
                Arc::clone(&self.safety),
                shutdown.clone(),
            )));
        }
        if let Some(memory) = engine.backing().memory_watch() {
            workers.push(tokio::spawn(workers::run_engine_watch(
                memory,
                workers::EngineWatch {
                    interval: self.engine_check,
                    strict: self.strict,
                    safety: Arc::clone(&self.safety),
                },
                shutdown.clone(),
            )));
        }
        workers.push(tokio::spawn(workers::run_metrics_sampler(
            engine.clone(),
            Arc::clone(events),
            Arc::clone(work),
            self.state.store.clone(),
            self.sample_interval,
            shutdown.clone(),
        )));
        workers.push(tokio::spawn(recovery::run(
            engine.clone(),
            Arc::clone(work),
            self.state.store.clone(),
            engine.loss_watch().unwrap_or_default(),
            self.reconcile_interval,
            self.retention,
            self.personal.clone(),
            shutdown.clone(),
        )));
        workers.push(tokio::spawn(crate::webhooks::deliver::run(
            self.state.store.clone(),
            self.webhooks.clone(),
            shutdown.clone(),
        )));
        if let Some(limiter) = &self.state.user_limiter {
            workers.push(tokio::spawn(workers::run_limiter_cleanup(
                Arc::clone(limiter),
                shutdown.clone(),
            )));
        }
        workers
    }
}

/// The stock engine the config names: Redis, or the embedded in-memory engine.
pub async fn connect_engine(config: &Config) -> anyhow::Result<Backing> {
    let retention = Duration::from_secs(config.ended_retention_seconds);
    if !config.redis_cluster_nodes.is_empty() {
        let nodes = config.redis_cluster_nodes.join(",");
        let mut engine =
            RedisEngine::connect_cluster(&config.redis_cluster_nodes, &config.redis_namespace)
                .await
                .with_context(|| format!("connecting to the Redis Cluster at {nodes}"))?
                .with_retention(retention)
                .with_user_rate(config.user_rate_per_second);
        // (The default mode's warning about an evicting Redis is the engine watch's: it
        // reads every node as soon as the service runs, and again on every change.)
        if config.durability == Durability::Strict {
            engine = engine
                .require_durability_everywhere()
                .await
                .map_err(|found| anyhow::anyhow!("Redis Cluster at {nodes}: {found}"))?;
        }
        return Ok(engine.into());
    }
    if !config.redis_sentinels.is_empty() {
        let sentinels = crate::engine::redis::primary::Sentinels {
            addresses: config.redis_sentinels.clone(),
            primary: config.redis_sentinel_master.clone(),
            primary_url: config.redis_url.clone(),
        };
        let named = format!(
            "the primary '{}' through the sentinels {}",
            sentinels.primary,
            sentinels.addresses.join(",")
        );
        let engine = RedisEngine::connect_sentinel(&sentinels, &config.redis_namespace)
            .await
            .with_context(|| format!("connecting to {named}"))?;
        return Ok(single(engine, config, &named).await?.into());
    }
    Ok(match &config.redis_url {
        Some(url) => {
            let engine = RedisEngine::connect_in(url, &config.redis_namespace)
                .await
                .with_context(|| format!("connecting to Redis at {url}"))?;
            single(engine, config, &format!("Redis at {url}"))
                .await?
                .into()
        }
        None => MemoryEngine::new().with_retention(retention).into(),
    })
}

/// One Redis (at a URL, or the primary Sentinel names) with the config's settings; in strict
/// mode, only if it keeps what it acknowledges (`named` says which in the refusal).
async fn single<C: crate::engine::redis::Connection>(
    engine: RedisEngine<C>,
    config: &Config,
    named: &str,
) -> anyhow::Result<RedisEngine<C>> {
    let engine = engine
        .with_retention(Duration::from_secs(config.ended_retention_seconds))
        .with_user_rate(config.user_rate_per_second);
    if config.durability != Durability::Strict {
        return Ok(engine);
    }
    engine
        .require_durability()
        .await
        .map_err(|found| anyhow::anyhow!("{named}: {found}"))
}

/// The database the config names: Postgres, or the embedded SQLite file.
pub async fn connect_store(config: &Config) -> anyhow::Result<Store> {
    Store::connect(config.database_url.as_deref(), &config.sqlite_path)
        .await
        .with_context(|| match &config.database_url {
            Some(url) if url.starts_with("sqlite:") => format!("opening the SQLite database {url}"),
            Some(_) => "connecting to and migrating the Postgres database".to_owned(),
            None => format!("opening the SQLite database {}", config.sqlite_path),
        })
}

pub fn persister_settings(config: &Config) -> PersisterSettings {
    PersisterSettings {
        batch: config.persist_batch.max(1),
        delay: Duration::from_millis(config.persist_delay_ms),
        reclaim_after: Duration::from_millis(config.persist_reclaim_ms.max(1)),
    }
}

/// The persister's consumer: its group, and a name unique to this process, so a dead one's
/// entries can be told apart.
pub fn persister_consumer() -> Consumer {
    Consumer {
        group: PERSISTER.to_owned(),
        name: format!("persister-{}", ulid::Ulid::new()),
    }
}

/// Waits for `stop`, and says so.
async fn signal_then_log(stop: impl Future<Output = ()>) {
    stop.await;
    tracing::info!("shutting down: finishing in-flight requests");
}

/// Ctrl-C or SIGTERM, whichever comes first.
pub(crate) async fn stop_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}
