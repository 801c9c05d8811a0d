//! Connecting: one server or a cluster, every script loaded, and the durability checks of
//! strict mode.

use super::*;

impl RedisEngine {
    /// Connects and loads every script, so a broken script fails start-up, not a request.
    pub async fn connect(url: &str) -> Result<Self, EngineError> {
        Self::connect_in(url, DEFAULT_NAMESPACE).await
    }

    /// Like [`RedisEngine::connect`], with every key under `namespace`.
    ///
    /// Sized to fail fast and come back fast: a command waits at most [`RESPONSE_TIMEOUT`];
    /// a reconnection tries [`CONNECT_TIMEOUT`] at a time, twice, [`RECONNECT_DELAY_MS`]
    /// apart, so while Redis is down every request is answered within about a second, and
    /// the first request after Redis returns reconnects (the manager's default backoff grew to
    /// seconds and held every request behind it for up to ~100 s).
    pub async fn connect_in(url: &str, namespace: &str) -> Result<Self, EngineError> {
        let client = redis::Client::open(url)?;
        let connection = client
            .get_connection_manager_with_config(manager_config(RESPONSE_TIMEOUT))
            .await?;
        let background = client
            .get_connection_manager_with_config(manager_config(BACKGROUND_TIMEOUT))
            .await?;
        RedisEngine::with_connections(connection, background, namespace).await
    }
}

/// A connection manager's settings (see [`RedisEngine::connect_in`]): background work may
/// wait longer than a request — loading a large campaign (every reservation it ever had) is
/// one script that can run for more than a request's timeout.
fn manager_config(response_timeout: Duration) -> redis::aio::ConnectionManagerConfig {
    redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(response_timeout))
        .set_number_of_retries(1)
        .set_exponent_base(1.0)
        .set_min_delay(Duration::from_millis(RECONNECT_DELAY_MS))
        .set_max_delay(Duration::from_millis(RECONNECT_DELAY_MS))
}

impl RedisEngine<primary::Primary> {
    /// Connects to the primary the sentinels name (see [`primary`]), sized like
    /// [`RedisEngine::connect_in`], and follows it across failovers.
    pub async fn connect_sentinel(
        sentinels: &primary::Sentinels,
        namespace: &str,
    ) -> Result<Self, EngineError> {
        let follower = primary::Follower::connect(
            sentinels,
            manager_config(RESPONSE_TIMEOUT),
            manager_config(BACKGROUND_TIMEOUT),
        )
        .await?;
        RedisEngine::with_connections(follower.requests(), follower.background(), namespace).await
    }

    /// Runs `switch` on every primary the sentinels name from now on, before the engine uses
    /// it (see [`primary::fence_behind`]).
    pub fn fence_failovers(&self, switch: primary::Switch) {
        self.connection.on_switch(switch);
    }
}

impl RedisEngine<super::topology::Watched> {
    /// Connects to a Redis Cluster through `nodes` (seed nodes; the client learns the rest
    /// and follows slot moves) and loads every script on every node. Each script touches
    /// one campaign's hash tag, so it runs on the node serving that slot; every operation
    /// across campaigns is one command or script per campaign, never a cross-slot one.
    ///
    /// Sized like [`RedisEngine::connect_in`]: a command waits at most [`RESPONSE_TIMEOUT`],
    /// a connection attempt [`CONNECT_TIMEOUT`]; a redirect or an unreachable node is retried
    /// twice, [`RECONNECT_DELAY_MS`] apart at most.
    pub async fn connect_cluster(nodes: &[String], namespace: &str) -> Result<Self, EngineError> {
        let builder = |response_timeout| {
            redis::cluster::ClusterClientBuilder::new(nodes.to_vec())
                .connection_timeout(CONNECT_TIMEOUT)
                .response_timeout(response_timeout)
                .retries(2)
                .min_retry_wait(1)
                .max_retry_wait(RECONNECT_DELAY_MS)
                .retry_wait_formula(10, 2)
                .build()
        };
        let connection = builder(RESPONSE_TIMEOUT)?.get_async_connection().await?;
        let background = builder(BACKGROUND_TIMEOUT)?.get_async_connection().await?;
        let topology = super::topology::Topology::watch(background.clone()).await;
        let mut engine = RedisEngine::with_connections(
            topology.watched(connection),
            topology.watched(background),
            namespace,
        )
        .await?;
        engine.cluster = true;
        Ok(engine)
    }

    /// Runs `failover` whenever replicas take over slots, before scripts for those slots go
    /// on (see [`super::topology`]).
    pub fn fence_failovers(&self, failover: super::topology::Failover) {
        self.connection.on_failover(failover);
    }

    /// [`RedisEngine::require_durability`] on every master of the cluster: each must append
    /// and fsync every write (`Err` names the ones that do not). With a replica on every
    /// master, every change then waits (`WAIT`, sent to every master; the fewest
    /// acknowledgements count) until a replica has it.
    pub async fn require_durability_everywhere(mut self) -> Result<Self, String> {
        use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo};
        let every_master = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
        let per_master = |command: redis::Cmd| {
            let mut connection = self.connection().unwatched();
            let routing = every_master.clone();
            async move {
                let answers = connection
                    .route_command(command, routing)
                    .await
                    .map_err(|e| format!("cannot ask every master: {e}"))?;
                let redis::Value::Map(answers) = answers else {
                    return Err(format!("every master answered {answers:?}"));
                };
                answers
                    .into_iter()
                    .map(|(node, answer)| {
                        let node: String = redis::from_redis_value_ref(&node).unwrap_or_default();
                        Ok((node, answer))
                    })
                    .collect::<Result<Vec<(String, redis::Value)>, String>>()
            }
        };
        let mut wrong = Vec::new();
        for (name, wanted) in [
            ("appendonly", "yes"),
            ("appendfsync", "always"),
            ("maxmemory-policy", "noeviction"),
        ] {
            let mut command = redis::cmd("CONFIG");
            command.arg("GET").arg(name);
            for (node, answer) in per_master(command).await? {
                let pair: Vec<String> = redis::from_redis_value_ref(&answer).unwrap_or_default();
                let value = pair.get(1).cloned().unwrap_or_default();
                if value != wanted {
                    wrong.push(format!("{node} has {name} {value}"));
                }
            }
        }
        if !wrong.is_empty() {
            return Err(format!(
                "FLASHSALE_DURABILITY=strict needs every master with appendonly yes, \
                 appendfsync always (a 201 must be on disk) and maxmemory-policy noeviction \
                 (an evicted key is a broken promise): {}",
                wrong.join(", ")
            ));
        }
        let mut info = redis::cmd("INFO");
        info.arg("replication");
        let replicated = per_master(info).await?.iter().all(|(_, answer)| {
            redis::from_redis_value_ref::<String>(answer)
                .is_ok_and(|replication| connected_replicas(&replication) > 0)
        });
        self.wait_for_replica = replicated;
        Ok(self)
    }
}

impl<C: Connection> RedisEngine<C> {
    /// An engine on connections the caller made (one for requests, one for background
    /// work); loads every script.
    pub async fn with_connections(
        connection: C,
        background: C,
        namespace: &str,
    ) -> Result<Self, EngineError> {
        let scripts = Scripts::new().map_err(EngineError::Corrupt)?;
        let engine = RedisEngine {
            connection,
            background,
            scripts: Arc::new(scripts),
            namespace: Arc::from(namespace),
            consumer_groups: Arc::from([PERSISTER.to_owned()]),
            retention: crate::engine::DEFAULT_RETENTION,
            user_rate_per_second: 0,
            wait_for_replica: false,
            cluster: false,
            campaign_ids: Arc::default(),
            last_reclaim: Arc::default(),
            batcher: Arc::default(),
            ticket_reads: Arc::default(),
            joins: Arc::default(),
            claims: Arc::default(),
            leases: Arc::default(),
            calls: Arc::default(),
        };
        let mut connection = engine.connection.clone();
        for script in engine.scripts.all() {
            script.prepare_invoke().load_async(&mut connection).await?;
        }
        engine.adopt_legacy_epochs().await?;
        Ok(engine)
    }

    /// Campaigns loaded before load epochs were kept per campaign have none: they were loaded
    /// under the namespace's dataset id, which the database recorded as their epoch, so they
    /// take that one (a no-op for every campaign that has its own).
    async fn adopt_legacy_epochs(&self) -> Result<(), EngineError> {
        let dataset: Option<String> = redis::cmd("GET")
            .arg(keys::dataset(&self.namespace))
            .query_async(&mut self.background())
            .await?;
        let Some(dataset) = dataset else {
            return Ok(());
        };
        let adopt = redis::Script::new(
            "if redis.call('EXISTS', KEYS[1]) == 1 then \
             return redis.call('HSETNX', KEYS[1], 'epoch', ARGV[1]) end return 0",
        );
        let campaigns = self.listed_campaigns().await?;
        let adoptions = campaigns.iter().map(|id| {
            let mut invocation = adopt.key(self.keys(id).campaign);
            invocation.arg(&dataset);
            let mut connection = self.background();
            async move { invocation.invoke_async::<i64>(&mut connection).await }
        });
        futures::future::try_join_all(adoptions).await?;
        Ok(())
    }

    /// Limits each user to `per_second` reservation attempts per campaign per second, counted
    /// in Redis so every instance shares the count (0: no limit).
    pub fn with_user_rate(mut self, per_second: u32) -> Self {
        self.user_rate_per_second = per_second;
        self
    }

    /// Work-index leases of `lease` instead of [`super::work::LEASE`] (tests: idle campaigns
    /// retire within a test).
    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.leases = Arc::new(crate::engine::work::Leases::lasting(lease));
        self
    }

    /// Ended reservations leave Redis this long after they ended.
    pub fn with_retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    /// Refuses a Redis that could lose an acknowledged change in a crash: it must append
    /// every write to its AOF and fsync it before answering (`appendonly yes`, `appendfsync
    /// always`). `Err` says what it found. With replicas connected, every change then also
    /// waits (`WAIT`) until one of them has it.
    pub async fn require_durability(mut self) -> Result<Self, String> {
        let connection = self.connection();
        let setting = |name: &'static str| {
            let mut connection = connection.clone();
            async move {
                let pair: Vec<String> = redis::cmd("CONFIG")
                    .arg("GET")
                    .arg(name)
                    .query_async(&mut connection)
                    .await
                    .map_err(|e| format!("cannot read Redis's {name} (CONFIG GET): {e}"))?;
                Ok::<String, String>(pair.get(1).cloned().unwrap_or_default())
            }
        };
        let appendonly = setting("appendonly").await?;
        let appendfsync = setting("appendfsync").await?;
        let policy = setting("maxmemory-policy").await?;
        if appendonly != "yes" || appendfsync != "always" || policy != "noeviction" {
            return Err(format!(
                "FLASHSALE_DURABILITY=strict needs Redis with appendonly yes and appendfsync \
                 always (a 201 must be on disk) and maxmemory-policy noeviction (an evicted \
                 key is a broken promise); this one has appendonly {appendonly}, \
                 appendfsync {appendfsync}, maxmemory-policy {policy}"
            ));
        }
        let replication: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut self.connection())
            .await
            .map_err(|e| format!("cannot read Redis's replication (INFO): {e}"))?;
        if connected_replicas(&replication) > 0 {
            self.wait_for_replica = true;
        }
        Ok(self)
    }
}
