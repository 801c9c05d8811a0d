//! The stock engine: every decision about units, in one atomic step per decision.
//!
//! [`Engine`] is what the HTTP layer and the workers call: one concrete type, one file per
//! operation (`ops/`), each reading in the same order — refuse while changes cannot be made
//! safely → the sold-out gate → route to the campaign's shard(s) → the backend's primitive →
//! refill / rebuild-and-retry → wait for the commit where answers must. The parts the
//! operations use are plain components, not layers:
//! - [`gate`]: the in-process sold-out gate and campaign config cache;
//! - [`shards`]: hot-SKU shards — routing, moving units between shards, summing them;
//! - [`recovery`]: rebuilding a campaign the backend lost from the database, and answering
//!   for archived campaigns and forgotten reservations from it;
//! - [`safety`]: whether changes can be decided safely just now.
//!
//! Below them, a backend ([`backend`]: a few narrow traits, each method one Lua script or one
//! step under a campaign lock) with two implementations: [`RedisEngine`] (for production and
//! many instances) and [`MemoryEngine`] (the embedded default). [`Backing`] is the one
//! chosen at start. The backends import nothing from the operations or the components.
//!
//! # Guarantees, under any concurrency and any number of instances sharing the backend
//! - never oversell: `held + confirmed <= stock`, and `available + held + confirmed == stock`;
//! - a user's held + confirmed units never pass `per_user_limit`;
//! - one idempotency key (per campaign) yields at most one reservation;
//! - every held reservation ends: confirmed, cancelled or expired (by [`Engine::expire_due`],
//!   or on the spot when confirm or cancel finds it past `expires_at`).
//!
//! # The order of the reserve checks
//! campaign exists → idempotency key already seen (replay, or `KeyReused` for another body) →
//! kind → window → stock (`sold_out`) → per-user limit. Stock is checked before the limit so a
//! sold-out campaign refuses with one read; both refusals are true in that case anyway.

pub mod backend;
mod backing;
pub mod gate;
pub mod memory;
mod ops;
pub mod recovery;
pub mod redis;
pub mod safety;
pub mod shards;
mod types;
pub mod work;

pub use self::redis::RedisEngine;
pub use backend::{
    Backend, Claim, Decisions, EventLog, Given, OpenTransfer, Probe, Reads, RecordsSince, ShardOps,
    ShardState, Transfer, WaitingRoom,
};
pub use backing::Backing;
pub use memory::MemoryEngine;
pub use types::*;
pub use work::WorkIndex;

use crate::store::Store;
use std::sync::Arc;

/// The engine every request and worker asks: the backend chosen at start, with the gate,
/// the shards and (given a database) recovery. Cheap to clone: every part is shared.
#[derive(Clone)]
pub struct Engine {
    backing: Backing,
    /// `None` only for checking a backend's own answers (the conformance suite).
    gate: Option<gate::Gate>,
    shards: shards::Shards,
    /// `None` without a database (the conformance suite, benchmarks): a campaign the backend
    /// lacks is simply unknown.
    recovery: Option<recovery::Recovery>,
}

impl Engine {
    /// The engine on `backing`, behind the sold-out gate; without a database until
    /// [`Engine::recovering`].
    pub fn new(backing: impl Into<Backing>) -> Self {
        Engine {
            gate: Some(gate::Gate::default()),
            ..Engine::ungated(backing)
        }
    }

    /// The engine without the sold-out gate: every attempt reaches the backend (to check
    /// the backend's own answers).
    pub fn ungated(backing: impl Into<Backing>) -> Self {
        Engine {
            backing: backing.into(),
            gate: None,
            shards: shards::Shards::default(),
            recovery: None,
        }
    }

    /// Rebuilds what the backend lost from `store`, and answers for archived campaigns and
    /// forgotten reservations from it; refuses changes while `safety` says they are unsafe.
    pub fn recovering(mut self, store: Store, safety: Arc<safety::Safety>) -> Self {
        self.recovery = Some(recovery::Recovery::new(store, safety));
        self
    }

    /// Answers every change only once the persister committed its events to the database
    /// (the embedded engine keeps nothing across a crash). Needs [`Engine::recovering`].
    pub fn answering_after_commit(mut self) -> Self {
        let log = self.backing.events();
        if let Some(recovery) = &mut self.recovery {
            recovery.commit = Some(log);
        }
        self
    }

    /// The backend (its name, ping, dataset; its waiting room and event log).
    pub fn backing(&self) -> &Backing {
        &self.backing
    }

    /// The sold-out gate, where there is one.
    pub fn gate(&self) -> Option<&gate::Gate> {
        self.gate.as_ref()
    }

    /// The loss watch the recovery worker shares; `None` without a database.
    pub fn loss_watch(&self) -> Option<Arc<recovery::LossWatch>> {
        self.recovery.as_ref().map(|r| Arc::clone(&r.watch))
    }
}
