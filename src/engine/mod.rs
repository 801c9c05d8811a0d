//! The stock engine: every decision about units, in one atomic step per decision.
//!
//! Two implementations keep the same rules: [`RedisEngine`] (one Lua script per decision, for
//! production and for running many instances) and [`MemoryEngine`] (dashmap-sharded, the
//! embedded default). The conformance suite in `tests/conformance` runs the same functions
//! against both and against a reference model. [`Gated`] wraps either with the in-process
//! sold-out gate and campaign cache that keep refused attempts off Redis.
//!
//! # Guarantees every implementation gives, under any concurrency and any number of instances
//! sharing the same backing store
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

mod gate;
mod memory;
mod redis;

pub use self::redis::RedisEngine;
pub use gate::Gated;
pub use memory::MemoryEngine;

use crate::domain::{
    Campaign, CampaignId, CampaignState, Group, GroupId, GroupStatus, Millis, Quantity, Refusal,
    Reservation, ReservationId, UserId,
};
use async_trait::async_trait;
use std::collections::HashMap;
use thiserror::Error;

/// A failure of the engine itself (not a refusal): the caller gets an opaque 500 or 503.
#[derive(Debug, Error)]
pub enum EngineError {
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    #[error("the engine answered something unexpected: {0}")]
    Corrupt(String),
}

/// One reservation attempt.
#[derive(Debug, Clone)]
pub struct ReserveRequest {
    pub campaign_id: CampaignId,
    pub user_id: UserId,
    pub quantity: Quantity,
    /// The caller's idempotency key, already scoped to the caller (`<caller>:<key>`); it is
    /// remembered per campaign, so the target is part of its scope too.
    pub idempotency_key: String,
    /// What the request asked for, so a reused key with another body can be told apart.
    pub fingerprint: String,
    /// The id the reservation gets if one is created.
    pub reservation_id: ReservationId,
    pub now: Millis,
}

impl ReserveRequest {
    /// The fingerprint of a reservation request body.
    pub fn fingerprint_of(user_id: &UserId, quantity: Quantity) -> String {
        format!("{}:{}", quantity.get(), user_id)
    }
}

/// What a reservation attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReserveOutcome {
    /// A new reservation, with the units now available in its campaign.
    Reserved {
        reservation: Reservation,
        available: u64,
    },
    /// The idempotency key was seen before with the same body: the first outcome, as it was
    /// created (status `held`), whatever happened to it since.
    Replayed(Reservation),
    /// The idempotency key was seen before with a different body.
    KeyReused,
    Refused(Refusal),
}

/// Opening or joining a group.
#[derive(Debug, Clone)]
pub struct GroupRequest {
    pub campaign_id: CampaignId,
    /// The group to join, or the id a newly opened group gets.
    pub group_id: GroupId,
    pub user_id: UserId,
    /// The caller's idempotency key, scoped to the caller and the operation's target.
    pub idempotency_key: String,
    pub fingerprint: String,
    /// The id the member's reservation gets if one is created.
    pub reservation_id: ReservationId,
    pub now: Millis,
}

/// What opening or joining a group came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupOutcome {
    /// The group, with the caller's new reservation among its members.
    Done(Group),
    /// The idempotency key was seen before with the same body: the group as it is now.
    Replayed(Group),
    KeyReused,
    Refused(Refusal),
}

/// What a stock delta came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StockOutcome {
    Adjusted {
        stock: u64,
        available: u64,
    },
    /// Withdrawing more than is available.
    Insufficient {
        available: u64,
    },
    NotFound,
}

/// Who may cancel what: the store may cancel confirmed reservations too (a refund); a user
/// only their held ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelScope {
    HeldOnly,
    HeldOrConfirmed,
}

/// What a confirm or cancel came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// The reservation moved to the asked status.
    Done(Reservation),
    /// It was in the asked status already (confirm and cancel are idempotent).
    Unchanged(Reservation),
    /// It is in a status the transition does not leave from; it may have just expired.
    NotHeld(Reservation),
    NotFound,
}

/// The idempotency records of a sold-out campaign, read atomically with `available == 0`:
/// key → (reservation id, fingerprint). While the campaign stays sold out no reservation can
/// be created, so this map answers every retry without asking the engine.
/// A state change, appended atomically with the change itself (in the same Lua script, or
/// under the same campaign lock in memory), so no change exists without its event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub campaign_id: CampaignId,
    /// Position in the campaign's stream; strictly increasing per campaign.
    pub position: StreamPosition,
    pub at: Millis,
    pub change: Change,
}

/// A stream entry id `<ms>-<seq>`, ordered as Redis orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamPosition {
    pub ms: i64,
    pub seq: i64,
}

impl StreamPosition {
    pub fn parse(raw: &str) -> Option<Self> {
        let (ms, seq) = raw.split_once('-')?;
        Some(StreamPosition {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

impl std::fmt::Display for StreamPosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// What changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A reservation entered `reservation.status`; the creating event also carries its
    /// idempotency record, so the database can rebuild the engine.
    Reservation {
        reservation: Reservation,
        idempotency: Option<(String, String)>,
    },
    /// The campaign's stock is now `stock`.
    Stock { stock: u64 },
    /// A group entered `group.status` (`members` is left empty in events).
    Group { group: Group },
}

impl Event {
    /// The event type as the feed names it.
    pub fn kind(&self) -> String {
        match &self.change {
            Change::Reservation { reservation, .. } => {
                format!("reservation.{}", reservation.status.as_str())
            }
            Change::Stock { .. } => "campaign.stock".to_owned(),
            Change::Group { group } => match group.status {
                GroupStatus::Open => "group.opened".to_owned(),
                GroupStatus::Formed => "group.formed".to_owned(),
                GroupStatus::Failed => "group.failed".to_owned(),
            },
        }
    }
}

/// A reservation as the database keeps it, for rebuilding an engine that lost a campaign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoredReservation {
    pub reservation: Reservation,
    pub idempotency_key: Option<String>,
    pub fingerprint: Option<String>,
}

/// Events waiting in the engine for the persister.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Not yet persisted and acknowledged.
    pub events: u64,
    /// Handed to a persister, not yet acknowledged.
    pub pending: u64,
    /// When the oldest waiting event happened.
    pub oldest: Option<Millis>,
}

/// What [`Engine::probe`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub available: u64,
    /// How many idempotency records the campaign has: it grows with every reservation ever
    /// created, so an unchanged count means no reservation was created in between.
    pub idempotency_records: u64,
}

pub type IdempotencySnapshot = HashMap<String, (ReservationId, String)>;

#[async_trait]
pub trait Engine: Send + Sync + 'static {
    /// Creates the campaign; `false` if one with that id exists (nothing is changed then).
    async fn create_campaign(&self, campaign: &Campaign) -> Result<bool, EngineError>;

    async fn campaign(&self, id: &CampaignId) -> Result<Option<CampaignState>, EngineError>;

    /// Ids of every campaign the engine holds (for the reaper).
    async fn campaign_ids(&self) -> Result<Vec<CampaignId>, EngineError>;

    /// Adds (`delta > 0`) or withdraws units; never below what is available.
    async fn adjust_stock(&self, id: &CampaignId, delta: i64) -> Result<StockOutcome, EngineError>;

    async fn reserve(&self, request: &ReserveRequest) -> Result<ReserveOutcome, EngineError>;

    async fn reservation(&self, id: &ReservationId) -> Result<Option<Reservation>, EngineError>;

    /// held → confirmed. A hold found past `expires_at` expires instead (`NotHeld`).
    async fn confirm(&self, id: &ReservationId, now: Millis) -> Result<Transition, EngineError>;

    /// → cancelled, units return. A hold found past `expires_at` expires instead (`NotHeld`).
    async fn cancel(
        &self,
        id: &ReservationId,
        scope: CancelScope,
        now: Millis,
    ) -> Result<Transition, EngineError>;

    /// Fails the campaign's open groups whose window passed (their members are released and
    /// their units return), then expires up to `limit` held reservations whose
    /// `expires_at <= now`, returning their units (a group member's slot returns to its
    /// group). Safe to run from many instances at once. Returns how many reservations ended.
    async fn expire_due(
        &self,
        campaign: &CampaignId,
        now: Millis,
        limit: u32,
    ) -> Result<u32, EngineError>;

    /// `None` while the campaign has units; its idempotency records once it has none.
    async fn sold_out_snapshot(
        &self,
        campaign: &CampaignId,
    ) -> Result<Option<IdempotencySnapshot>, EngineError>;

    /// A cheap read of what the sold-out gate needs to stay correct.
    async fn probe(&self, campaign: &CampaignId) -> Result<Option<Probe>, EngineError>;

    /// Up to `max` events not yet acknowledged, for `consumer`: first those another consumer
    /// took more than `reclaim_after` ago without acknowledging (it died), then new ones. In
    /// stream order per campaign.
    async fn read_events(
        &self,
        consumer: &str,
        max: usize,
        reclaim_after: std::time::Duration,
    ) -> Result<Vec<Event>, EngineError>;

    /// What waits for the persister, for metrics.
    async fn backlog(&self) -> Result<Backlog, EngineError>;

    /// Acknowledges persisted events and trims them from their streams.
    async fn ack_events(&self, events: &[Event]) -> Result<(), EngineError>;

    /// Recreates a campaign the engine lost, with its groups (`members` unused), its live
    /// reservations (held and confirmed, in creation order), their idempotency records and
    /// expiries. Does nothing (`false`) if the campaign exists.
    async fn restore_campaign(
        &self,
        campaign: &Campaign,
        reservations: &[RestoredReservation],
        groups: &[Group],
    ) -> Result<bool, EngineError>;

    /// Opens a group: holds `size` units of a group-buy campaign and gives the opener the
    /// first slot (a held reservation of one unit).
    async fn open_group(&self, request: &GroupRequest) -> Result<GroupOutcome, EngineError>;

    /// Joins an open group: one of its slots becomes the joiner's held reservation.
    async fn join_group(&self, request: &GroupRequest) -> Result<GroupOutcome, EngineError>;

    async fn group(&self, id: &GroupId) -> Result<Option<Group>, EngineError>;

    /// Whether the backing store answers.
    async fn ping(&self) -> Result<(), EngineError>;

    /// `memory` or `redis`, for logs and `/readyz`.
    fn name(&self) -> &'static str;
}
