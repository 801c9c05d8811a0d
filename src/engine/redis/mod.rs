//! The Redis engine: every decision is one Lua script from `src/engine/redis/scripts/`, run atomically by SHA.
//!
//! - [`keys`]: the key schema (one hash tag per campaign; the table is `src/engine/redis/scripts/README.md`);
//! - [`scripts`]: the script registry, the shared-Lua loader, the timing connection;
//! - [`codec`]: events, campaign hashes and reservation hashes, decoded;
//! - `decisions`: [`Engine`](super::Engine) — each decision's arguments in, answer out;
//! - `events`: [`EventLog`](super::EventLog) — stream reads, acks and backlog per consumer group.
//!
//! The engine is generic over its connection ([`Connection`]): one Redis server through a
//! reconnecting [`ConnectionManager`], or a Redis Cluster through redis-rs's cluster
//! connection, which routes each command by its first key's slot: every script touches one
//! slot, and every operation across campaigns is one command (or pipeline, or script) per
//! campaign, never a cross-slot one.

mod batcher;
pub mod codec;
mod decisions;
mod events;
pub mod keys;
mod queue;
mod reads;
pub mod scripts;
mod work;

pub use keys::DEFAULT_NAMESPACE;

use super::{Backend, EngineError, PERSISTER};
use crate::domain::CampaignId;
use async_trait::async_trait;
use keys::Keys;
use redis::aio::ConnectionManager;
use scripts::{Scripts, Timed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the engine needs of a connection: multiplexed (cheap to clone, shared by every
/// request) and safe to use from any task.
pub trait Connection: redis::aio::ConnectionLike + Clone + Send + Sync + 'static {}

impl<T: redis::aio::ConnectionLike + Clone + Send + Sync + 'static> Connection for T {}

/// The replicas connected to a Redis, from its `INFO replication` text.
fn connected_replicas(replication: &str) -> u64 {
    info_field(replication, "connected_slaves").unwrap_or(0)
}

/// The longest a command waits for Redis's answer.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_millis(800);

/// The longest a background command (persister, reaper, campaign loads) waits.
pub const BACKGROUND_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a change waits for a replica in strict mode before it is answered 503 (below
/// [`RESPONSE_TIMEOUT`], which would cut the `WAIT` itself).
const REPLICA_WAIT: Duration = Duration::from_millis(700);

/// The longest one connection attempt waits.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(300);

/// The pause between two connection attempts.
const RECONNECT_DELAY_MS: u64 = 50;

/// The campaign index as read, and when.
type CachedIds = (Instant, Vec<CampaignId>);

/// How long the campaign index is cached: campaigns created on other instances reach this
/// one's background workers within this long.
const CAMPAIGN_IDS_TTL: Duration = Duration::from_secs(1);

/// The Redis stock engine. Cheap to clone: clones share its two connections.
#[derive(Clone)]
pub struct RedisEngine<C = ConnectionManager> {
    /// Shared by every request of this instance.
    connection: C,
    /// A second one for the background work (the persister's stream reads and acks, the
    /// backlog sample, the reaper): a reserve's reply never waits on one socket behind a
    /// thousand-event `XREADGROUP` reply or a reaper batch.
    background: C,
    scripts: Arc<Scripts>,
    /// Prefix of every key, so several deployments (or tests) can share one Redis.
    namespace: Arc<str>,
    /// The consumer groups every campaign's event stream gets when it is loaded.
    consumer_groups: Arc<[String]>,
    /// How long an ended reservation stays in Redis (see `Engine::expire_due`).
    retention: Duration,
    /// Reservation attempts one user may make per campaign per second across every
    /// instance; 0: no limit.
    user_rate_per_second: u32,
    /// Strict durability with replicas: every change waits until a replica has it.
    wait_for_replica: bool,
    /// On a Redis Cluster (named `redis-cluster`).
    cluster: bool,
    /// The campaign index, cached for [`CAMPAIGN_IDS_TTL`]: the persister, reaper and sampler
    /// all walk it, and a campaign created on this instance is added at once.
    campaign_ids: Arc<Mutex<Option<CachedIds>>>,
    /// When this instance last looked for events a dead consumer left unacknowledged.
    last_reclaim: Arc<Mutex<Option<Instant>>>,
    /// Each campaign's reserve attempts waiting for the call in flight (group commit).
    batcher: Arc<batcher::Batcher<crate::engine::ReserveRequest, crate::engine::ReserveOutcome>>,
    /// Waiting-room ticket reads, batched per campaign like reserves.
    ticket_reads: Arc<batcher::Batcher<queue::TicketRead, Option<crate::domain::Ticket>>>,
    /// Waiting-room joins, batched per campaign like reserves.
    joins: Arc<batcher::Batcher<crate::engine::JoinRequest, crate::engine::JoinOutcome>>,
    /// Store key claims of sharded campaigns, batched per shard like reserves.
    claims: Arc<batcher::Batcher<ClaimRequest, super::backend::Claim>>,
    /// This instance's leases on the work index's active list (see `engine::work`).
    leases: Arc<super::work::Leases>,
    /// Commands background work sent (see [`super::WorkIndex::background_calls`]).
    calls: Arc<std::sync::atomic::AtomicU64>,
}

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
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(CONNECT_TIMEOUT)
            .set_response_timeout(RESPONSE_TIMEOUT)
            .set_number_of_retries(1)
            .set_exponent_base(1)
            .set_factor(RECONNECT_DELAY_MS)
            .set_max_delay(RECONNECT_DELAY_MS);
        let connection = client
            .get_connection_manager_with_config(config.clone())
            .await?;
        // Background work may wait longer: loading a large campaign (every reservation it
        // ever had) is one script that can run for more than a request's timeout.
        let background = client
            .get_connection_manager_with_config(config.set_response_timeout(BACKGROUND_TIMEOUT))
            .await?;
        RedisEngine::with_connections(connection, background, namespace).await
    }
}

impl RedisEngine<redis::cluster_async::ClusterConnection> {
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
        let mut engine = RedisEngine::with_connections(connection, background, namespace).await?;
        engine.cluster = true;
        Ok(engine)
    }

    /// [`RedisEngine::require_durability`] on every master of the cluster: each must append
    /// and fsync every write (`Err` names the ones that do not). With a replica on every
    /// master, every change then waits (`WAIT`, sent to every master; the fewest
    /// acknowledgements count) until a replica has it.
    pub async fn require_durability_everywhere(mut self) -> Result<Self, String> {
        use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo};
        let every_master = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
        let per_master = |command: redis::Cmd| {
            let mut connection = self.connection();
            let routing = every_master.clone();
            async move {
                let answers = connection
                    .route_command(&command, routing)
                    .await
                    .map_err(|e| format!("cannot ask every master: {e}"))?;
                let redis::Value::Map(answers) = answers else {
                    return Err(format!("every master answered {answers:?}"));
                };
                answers
                    .into_iter()
                    .map(|(node, answer)| {
                        let node: String = redis::from_redis_value(&node).unwrap_or_default();
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
                let pair: Vec<String> = redis::from_redis_value(&answer).unwrap_or_default();
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
            redis::from_redis_value::<String>(answer)
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
            retention: super::DEFAULT_RETENTION,
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
        self.leases = Arc::new(super::work::Leases::lasting(lease));
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

/// Every node's memory, eviction policy and evictions so far (a single server is node
/// `redis`; a cluster answers per node): what the engine watch exports, and what tells
/// whether Redis can evict a campaign's keys — a held unit forgotten, a user's count gone —
/// under memory pressure. Strict durability refuses such a Redis; the default mode warns.
#[async_trait::async_trait]
pub trait MemoryWatch: Send + Sync {
    async fn memory(&self) -> Result<Vec<NodeMemory>, EngineError>;
}

#[async_trait::async_trait]
impl<C: Connection> MemoryWatch for RedisEngine<C> {
    async fn memory(&self) -> Result<Vec<NodeMemory>, EngineError> {
        let mut connection = self.connection();
        let memory: redis::Value = redis::cmd("INFO")
            .arg("memory")
            .query_async(&mut connection)
            .await?;
        let stats: redis::Value = redis::cmd("INFO")
            .arg("stats")
            .query_async(&mut connection)
            .await?;
        let per_node = |reply: redis::Value| -> Vec<(String, String)> {
            match reply {
                // A cluster answers per node.
                redis::Value::Map(nodes) => nodes
                    .into_iter()
                    .map(|(node, answer)| {
                        (
                            redis::from_redis_value(&node).unwrap_or_default(),
                            redis::from_redis_value(&answer).unwrap_or_default(),
                        )
                    })
                    .collect(),
                single => vec![(
                    "redis".to_owned(),
                    redis::from_redis_value(&single).unwrap_or_default(),
                )],
            }
        };
        let stats: std::collections::HashMap<String, String> =
            per_node(stats).into_iter().collect();
        Ok(per_node(memory)
            .into_iter()
            .map(|(node, memory)| {
                let evicted = stats
                    .get(&node)
                    .map_or(0, |stats| info_field(stats, "evicted_keys").unwrap_or(0));
                NodeMemory {
                    policy: info_text(&memory, "maxmemory_policy").unwrap_or_default(),
                    used_bytes: info_field(&memory, "used_memory").unwrap_or(0),
                    max_bytes: info_field(&memory, "maxmemory").unwrap_or(0),
                    evicted_keys: evicted,
                    node,
                }
            })
            .collect())
    }
}

impl<C: Connection> RedisEngine<C> {
    /// With replicas and strict durability: waits until a replica has every write this
    /// instance made so far (`WAIT` on the shared connection covers all of them, so
    /// concurrent requests mostly find theirs already there).
    pub(super) async fn replicated(&self) -> Result<(), EngineError> {
        if !self.wait_for_replica {
            return Ok(());
        }
        let acknowledged: i64 = redis::cmd("WAIT")
            .arg(1)
            .arg(REPLICA_WAIT.as_millis() as u64)
            .query_async(&mut self.connection())
            .await?;
        if acknowledged < 1 {
            return Err(EngineError::Unreplicated(format!(
                "no replica acknowledged the change within {} ms",
                REPLICA_WAIT.as_millis()
            )));
        }
        Ok(())
    }

    fn keys(&self, id: &CampaignId) -> Keys {
        Keys::of(&self.namespace, id)
    }

    fn connection(&self) -> C {
        self.connection.clone()
    }

    /// The background connection, counting its commands.
    fn background(&self) -> work::Counting<C> {
        work::Counting {
            connection: self.background.clone(),
            calls: Arc::clone(&self.calls),
        }
    }

    /// The request connection, timing every command as the named script (EVALSHA, and the
    /// reload on NOSCRIPT).
    fn timed(&self, script: &'static str) -> Timed<C> {
        Timed {
            connection: self.connection(),
            script,
        }
    }

    /// Adds a campaign to the index and drops this instance's cached copy, so its own
    /// workers see the campaign at once.
    async fn index(&self, id: &CampaignId) -> Result<(), EngineError> {
        let _: i64 = redis::cmd("SADD")
            .arg(keys::campaign_index(&self.namespace))
            .arg(id.as_str())
            .query_async(&mut self.connection())
            .await?;
        *self.campaign_ids.lock().unwrap_or_else(|p| p.into_inner()) = None;
        Ok(())
    }

    /// Every campaign id in the index, cached for [`CAMPAIGN_IDS_TTL`].
    async fn listed_campaigns(&self) -> Result<Vec<CampaignId>, EngineError> {
        if let Some((at, ids)) = &*self.campaign_ids.lock().unwrap_or_else(|p| p.into_inner()) {
            if at.elapsed() < CAMPAIGN_IDS_TTL {
                return Ok(ids.clone());
            }
        }
        let raw: Vec<String> = redis::cmd("SMEMBERS")
            .arg(keys::campaign_index(&self.namespace))
            .query_async(&mut self.connection())
            .await?;
        let ids: Vec<CampaignId> = raw
            .iter()
            .filter_map(|id| CampaignId::parse_shard(id).ok())
            .collect();
        *self.campaign_ids.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((Instant::now(), ids.clone()));
        Ok(ids)
    }
}

#[async_trait]
impl<C: Connection> Backend for RedisEngine<C> {
    fn name(&self) -> &'static str {
        if self.cluster {
            "redis-cluster"
        } else {
            "redis"
        }
    }

    /// A tiny write, not a `PING`: a Redis that answers but refuses writes for lack of memory
    /// (`maxmemory` with `noeviction`) or because it is a replica is not serving.
    async fn ping(&self) -> Result<(), EngineError> {
        let _: () = redis::cmd("SET")
            .arg(format!("{}:ping", self.namespace))
            .arg(1)
            .arg("PX")
            .arg(10_000)
            .query_async(&mut self.connection())
            .await?;
        Ok(())
    }

    async fn dataset(&self) -> Result<String, EngineError> {
        let key = keys::dataset(&self.namespace);
        let mut connection = self.connection();
        let current: Option<String> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut connection)
            .await?;
        if let Some(epoch) = current {
            return Ok(epoch);
        }
        // A Redis without one is new or lost its data: the first to notice names the new
        // dataset; everyone else reads that name.
        let _: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg(format!("redis-{}", ulid::Ulid::new()))
            .arg("NX")
            .query_async(&mut connection)
            .await?;
        let epoch: String = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut connection)
            .await?;
        Ok(epoch)
    }

    async fn forget_campaign(&self, id: &CampaignId) -> Result<(), EngineError> {
        let keys = self.keys(id);
        let mut connection = self.background();
        // The hash first: from then on every script finds the campaign missing, and the
        // database answers for it.
        let _: i64 = redis::cmd("UNLINK")
            .arg(&keys.campaign)
            .query_async(&mut connection)
            .await?;
        let _: i64 = redis::cmd("SREM")
            .arg(keys::campaign_index(&self.namespace))
            .arg(id.as_str())
            .query_async(&mut connection)
            .await?;
        *self.campaign_ids.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.unlist_work(id).await?;
        self.batcher.forget(id);
        self.ticket_reads.forget(id);
        self.joins.forget(id);
        self.claims.forget(id);
        // Then the rest, a page at a time (SCAN never blocks Redis for long), by a script on
        // the node that serves the campaign's slot.
        let mut cursor = "0".to_owned();
        loop {
            let next: String = self
                .scripts
                .forget_page
                .key(&keys.campaign)
                .arg(&cursor)
                .arg(1000)
                .invoke_async(&mut connection)
                .await?;
            if next == "0" {
                return Ok(());
            }
            cursor = next;
        }
    }
}

#[async_trait]
impl<C: Connection> super::backend::ShardOps for RedisEngine<C> {
    async fn shard_state(
        &self,
        shard: &CampaignId,
    ) -> Result<Option<super::backend::ShardState>, EngineError> {
        let keys = self.keys(shard);
        let reply: Vec<String> = self
            .scripts
            .shard_state
            .key(&keys.campaign)
            .invoke_async(&mut self.timed("shard_state"))
            .await?;
        let corrupt = || EngineError::Corrupt(format!("shard state of {shard}: {reply:?}"));
        let number = |raw: &String| raw.parse::<u64>().map_err(|_| corrupt());
        match reply.as_slice() {
            [] => Ok(None),
            [stock, available, outgoing, version, total, records] => {
                Ok(Some(super::backend::ShardState {
                    stock: number(stock)?,
                    available: number(available)?,
                    outgoing: number(outgoing)?,
                    version: number(version)?,
                    total: match total.as_str() {
                        "" => None,
                        raw => Some(raw.parse().map_err(|_| corrupt())?),
                    },
                    records: number(records)?,
                }))
            }
            _ => Err(corrupt()),
        }
    }

    async fn take_units(
        &self,
        shard: &CampaignId,
        transfer: &super::backend::Transfer,
    ) -> Result<u64, EngineError> {
        self.leased(shard).await?;
        let keys = self.keys(shard);
        let reply: Vec<String> = self
            .scripts
            .transfer_take
            .key(&keys.campaign)
            .key(keys.transfers())
            .arg(&transfer.id)
            .arg(transfer.to)
            .arg(transfer.want)
            .arg(transfer.least)
            .arg(transfer.now.0)
            .invoke_async(&mut self.timed("transfer_take"))
            .await?;
        // Strict durability: the take on a replica before the units go anywhere (a failover
        // that lost it must not find them given).
        self.replicated().await?;
        match reply.as_slice() {
            [taken, units] if taken == "taken" => units
                .parse()
                .map_err(|_| EngineError::Corrupt(format!("transfer_take answered {reply:?}"))),
            [short, _] if short == "short" => Ok(0),
            [missing] if missing == "not_found" => Ok(0),
            _ => Err(EngineError::Corrupt(format!(
                "transfer_take answered {reply:?}"
            ))),
        }
    }

    async fn give_units(
        &self,
        shard: &CampaignId,
        transfer: &str,
        units: u64,
    ) -> Result<super::backend::Given, EngineError> {
        use super::backend::Given;
        self.leased(shard).await?;
        let keys = self.keys(shard);
        let given: i64 = self
            .scripts
            .transfer_give
            .key(&keys.campaign)
            .key(keys.received())
            .arg(transfer)
            .arg(units)
            .invoke_async(&mut self.timed("transfer_give"))
            .await?;
        // ... and the give before the transfer closes (until then the reaper may give again:
        // once per transfer id).
        self.replicated().await?;
        Ok(match given {
            1 => Given::Now,
            0 => Given::Before,
            _ => Given::Missing,
        })
    }

    async fn transfer_done(&self, shard: &CampaignId, transfer: &str) -> Result<(), EngineError> {
        self.leased(shard).await?;
        let keys = self.keys(shard);
        let _: i64 = self
            .scripts
            .transfer_done
            .key(&keys.campaign)
            .key(keys.transfers())
            .arg(transfer)
            .invoke_async(&mut self.timed("transfer_done"))
            .await?;
        Ok(())
    }

    async fn relist(&self, shard: &CampaignId) -> Result<(), EngineError> {
        self.index(shard).await
    }

    /// Batched per shard like reserves: claims that arrive while a call is in flight go
    /// together as the next one.
    async fn claim_key(
        &self,
        shard: &CampaignId,
        key: &crate::domain::ScopedKey,
        fingerprint: &str,
    ) -> Result<super::backend::Claim, EngineError> {
        let claim = ClaimRequest {
            shard: shard.clone(),
            key: key.clone(),
            fingerprint: fingerprint.to_owned(),
        };
        self.batched(shard, &claim).await
    }

    async fn open_transfers(
        &self,
        shard: &CampaignId,
    ) -> Result<Vec<super::backend::OpenTransfer>, EngineError> {
        let keys = self.keys(shard);
        let open: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
            .arg(keys.transfers())
            .query_async(&mut self.background())
            .await?;
        open.into_iter()
            .map(|(id, record)| {
                let corrupt =
                    || EngineError::Corrupt(format!("transfer {id} of {shard}: {record:?}"));
                let mut parts = record.split('|');
                let mut next = || parts.next().ok_or_else(corrupt);
                let to = next()?.parse().map_err(|_| corrupt())?;
                let units = next()?.parse().map_err(|_| corrupt())?;
                let at = next()?.parse().map_err(|_| corrupt())?;
                Ok(super::backend::OpenTransfer {
                    id: id.clone(),
                    to,
                    units,
                    at: crate::domain::Millis(at),
                })
            })
            .collect()
    }
}

/// A store key's claim in its shard (see `ShardOps::claim_key`).
#[derive(Clone)]
pub(super) struct ClaimRequest {
    shard: CampaignId,
    key: crate::domain::ScopedKey,
    fingerprint: String,
}

impl<C: Connection> RedisEngine<C> {
    /// One `claim_key.lua` call for a batch of claims in one shard.
    async fn claim_batch(
        &self,
        batch: &[ClaimRequest],
    ) -> Result<Vec<super::backend::Claim>, EngineError> {
        use super::backend::Claim;
        let Some(first) = batch.first() else {
            return Ok(Vec::new());
        };
        let keys = self.keys(&first.shard);
        let mut invocation = self.scripts.claim_key.prepare_invoke();
        invocation.key(&keys.campaign).key(keys.claims());
        for claim in batch {
            invocation.arg(claim.key.as_str()).arg(&claim.fingerprint);
        }
        let answers: Vec<i64> = invocation
            .invoke_async(&mut self.timed("claim_key"))
            .await?;
        if answers == [-2] {
            return Ok(vec![Claim::Missing; batch.len()]);
        }
        if answers.len() != batch.len() {
            return Err(EngineError::Corrupt(format!(
                "claim_key answered {} claims for {}",
                answers.len(),
                batch.len()
            )));
        }
        Ok(answers
            .into_iter()
            .map(|answer| match answer {
                -1 => Claim::Other,
                _ => Claim::Mine,
            })
            .collect())
    }
}

impl<C: Connection> batcher::BatchKind<C> for ClaimRequest {
    type Outcome = super::backend::Claim;
    const NAME: &'static str = "key claim";
    const HISTOGRAM: &'static str = crate::metrics::CLAIM_BATCH_SIZE;

    fn queues(engine: &RedisEngine<C>) -> &batcher::Batcher<Self, Self::Outcome> {
        &engine.claims
    }

    fn send(
        engine: &RedisEngine<C>,
        batch: &[Self],
    ) -> impl std::future::Future<Output = Result<Vec<Self::Outcome>, EngineError>> + Send {
        engine.claim_batch(batch)
    }
}

/// One Redis node's memory as `INFO` tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeMemory {
    pub node: String,
    /// `maxmemory-policy`: anything but `noeviction` can drop a campaign's keys.
    pub policy: String,
    pub used_bytes: u64,
    /// 0: no limit.
    pub max_bytes: u64,
    /// Keys evicted since the node started.
    pub evicted_keys: u64,
}

impl NodeMemory {
    /// Whether this node may evict keys under memory pressure.
    pub fn evicts(&self) -> bool {
        self.policy != "noeviction"
    }
}

/// A field of an `INFO` answer (`name:value` lines), as text.
fn info_text(info: &str, name: &str) -> Option<String> {
    info.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key == name).then(|| value.trim().to_owned())
    })
}

/// A numeric field of an `INFO` answer.
fn info_field(info: &str, name: &str) -> Option<u64> {
    info_text(info, name)?.parse().ok()
}
