//! [`Backing`]: the backend an [`Engine`](super::Engine) runs on, one of the two
//! implementations, chosen at start. Each role is reached through its trait: no method here
//! stands for a backend's own.

use super::backend::{Backend, Decisions, EventLog, Reads, ShardOps, WaitingRoom};
use super::redis::primary::Primary;
use super::redis::topology::Watched;
use super::redis::MemoryWatch;
use super::work::WorkIndex;
use super::{MemoryEngine, RedisEngine};
use std::sync::Arc;

#[derive(Clone)]
pub enum Backing {
    Memory(MemoryEngine),
    Redis(RedisEngine),
    Cluster(RedisEngine<Watched>),
    /// One Redis primary found and followed through Sentinel.
    Sentinel(RedisEngine<Primary>),
}

/// A role of whichever backend it is.
macro_rules! role {
    ($(#[$doc:meta])* $name:ident: $role:ident) => {
        $(#[$doc])*
        pub fn $name(&self) -> &dyn $role {
            match self {
                Backing::Memory(b) => b,
                Backing::Redis(b) => b,
                Backing::Cluster(b) => b,
                Backing::Sentinel(b) => b,
            }
        }
    };
}

/// A role of whichever backend it is, shared.
macro_rules! shared_role {
    ($(#[$doc:meta])* $name:ident: $role:ident) => {
        $(#[$doc])*
        pub fn $name(&self) -> Arc<dyn $role> {
            match self {
                Backing::Memory(b) => Arc::new(b.clone()),
                Backing::Redis(b) => Arc::new(b.clone()),
                Backing::Cluster(b) => Arc::new(b.clone()),
                Backing::Sentinel(b) => Arc::new(b.clone()),
            }
        }
    };
}

impl Backing {
    role!(
        /// Name, ping, dataset, forgetting a campaign.
        backend: Backend
    );
    role!(
        /// The decisions of one campaign or shard.
        decisions: Decisions
    );
    role!(
        /// The reads of one campaign or shard.
        reads: Reads
    );
    role!(
        /// Moving units between shards.
        shard_ops: ShardOps
    );
    role!(
        /// The waiting rooms.
        waiting_room: WaitingRoom
    );
    shared_role!(
        /// The event log, for the persister and the commit wait.
        events: EventLog
    );
    shared_role!(
        /// Which campaigns have background work.
        work: WorkIndex
    );

    /// The backend's memory and eviction policy, where it has them (Redis).
    pub fn memory_watch(&self) -> Option<Arc<dyn MemoryWatch>> {
        match self {
            Backing::Memory(_) => None,
            Backing::Redis(b) => Some(Arc::new(b.clone())),
            Backing::Cluster(b) => Some(Arc::new(b.clone())),
            Backing::Sentinel(b) => Some(Arc::new(b.clone())),
        }
    }

    /// Whether a change may be answered only once the database committed it: the embedded
    /// backend keeps nothing across a crash.
    pub fn volatile(&self) -> bool {
        matches!(self, Backing::Memory(_))
    }
}

impl From<MemoryEngine> for Backing {
    fn from(engine: MemoryEngine) -> Self {
        Backing::Memory(engine)
    }
}

impl From<RedisEngine> for Backing {
    fn from(engine: RedisEngine) -> Self {
        Backing::Redis(engine)
    }
}

impl From<RedisEngine<Watched>> for Backing {
    fn from(engine: RedisEngine<Watched>) -> Self {
        Backing::Cluster(engine)
    }
}

impl From<RedisEngine<Primary>> for Backing {
    fn from(engine: RedisEngine<Primary>) -> Self {
        Backing::Sentinel(engine)
    }
}
