//! The Redis engine: every decision is one Lua script from `src/engine/redis/scripts/`, run atomically by SHA.
//!
//! - [`keys`]: the key schema (one hash tag per campaign; the table is `scripts/README.md`);
//! - [`scripts`]: the script registry, the shared-Lua loader, the timing connection; the
//!   `.lua` files themselves are in `scripts/`;
//! - [`codec`]: events, campaign hashes and reservation hashes, decoded;
//! - `connect`: connecting to one server or a cluster, strict mode's durability checks;
//! - `decisions`, `reads`, `queue`, `shards`: [`Decisions`](super::Decisions),
//!   [`Reads`](super::Reads), [`WaitingRoom`](super::WaitingRoom),
//!   [`ShardOps`](super::ShardOps) — each primitive's arguments in, answer out;
//! - `batcher`: group commit (reserves, joins, ticket reads, key claims batched per campaign);
//! - `events`: [`EventLog`](super::EventLog) — stream reads, acks and backlog per consumer group;
//! - `work`: the work index; `watch`: every node's memory for the engine watch.
//!
//! The engine is generic over its connection ([`Connection`]): one Redis server through a
//! reconnecting [`ConnectionManager`], or a Redis Cluster through redis-rs's cluster
//! connection, which routes each command by its first key's slot: every script touches one
//! slot, and every operation across campaigns is one command (or pipeline, or script) per
//! campaign, never a cross-slot one.

mod batcher;
pub mod codec;
mod connect;
mod decisions;
mod events;
pub mod keys;
pub mod primary;
mod queue;
mod reads;
pub mod scripts;
mod shards;
pub mod topology;
mod watch;
mod work;

pub use watch::{MemoryWatch, NodeMemory};

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

/// Runs `look` on `shared` every `every` (a late tick is not made up) for as long as
/// something else holds `shared`: the Sentinel follower's and the cluster watcher's polls.
fn look_every<S, F>(
    shared: &Arc<S>,
    every: std::time::Duration,
    look: impl Fn(Arc<S>) -> F + Send + 'static,
) where
    S: Send + Sync + 'static,
    F: std::future::Future<Output = ()> + Send,
{
    let watched = Arc::downgrade(shared);
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let Some(shared) = watched.upgrade() else {
                return;
            };
            look(shared).await;
        }
    });
}

/// Whether a command failed the way a dead or demoted primary (or cluster master) fails:
/// the connection dropped or refused, another I/O error than a timeout (a slow primary is
/// still the primary), `READONLY`, `MASTERDOWN`, `CLUSTERDOWN`.
fn dead_or_demoted(error: &redis::RedisError) -> bool {
    error.is_connection_dropped()
        || error.is_connection_refusal()
        || (error.is_io_error() && !error.is_timeout())
        || matches!(
            error.code(),
            Some("READONLY" | "MASTERDOWN" | "CLUSTERDOWN")
        )
}

/// The replicas connected to a Redis, from its `INFO replication` text.
fn connected_replicas(replication: &str) -> u64 {
    watch::info_field(replication, "connected_slaves").unwrap_or(0)
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
    claims: Arc<batcher::Batcher<shards::ClaimRequest, super::backend::Claim>>,
    /// This instance's leases on the work index's active list (see `engine::work`).
    leases: Arc<super::work::Leases>,
    /// Commands background work sent (see [`super::WorkIndex::background_calls`]).
    calls: Arc<std::sync::atomic::AtomicU64>,
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
