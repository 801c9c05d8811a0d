//! What a backend does: the primitives one campaign (or one shard of a sharded campaign)
//! offers, each the Rust side of one Lua script (`redis/scripts/`) and of one step under the
//! campaign's lock (`memory/`). Two implementations keep them: [`RedisEngine`](super::RedisEngine)
//! and [`MemoryEngine`](super::MemoryEngine); the conformance suite runs the same
//! specification on both. Nothing here knows about shards as a whole, the sold-out gate or
//! recovery: those are the `Engine`'s (see `engine/mod.rs`), which calls these.

use super::types::*;
use crate::domain::{
    CampaignId, CampaignState, Event, Group, GroupId, Millis, Reservation, ReservationId,
    ScopedKey, Ticket, TicketId,
};
use async_trait::async_trait;

/// What backs an engine or an event log.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// `memory`, `redis` or `redis-cluster`, for logs and `/readyz`.
    fn name(&self) -> &'static str;

    /// Whether the backing store answers.
    async fn ping(&self) -> Result<(), EngineError>;

    /// The id of the engine's data as a whole (a Redis namespace's, made there if missing;
    /// the in-memory engine's, one per process). The database records every one it served,
    /// so a start can refuse an engine that holds another database's campaigns.
    async fn dataset(&self) -> Result<String, EngineError>;

    /// Removes everything the engine holds of a campaign the database archived (ended, no
    /// live holds, every event persisted); requests about it are answered from the database
    /// from then on.
    async fn forget_campaign(&self, id: &CampaignId) -> Result<(), EngineError>;
}

/// The decisions of one campaign (or one shard of a sharded campaign): each is one atomic
/// step — one Lua script, or one campaign lock — that also appends its event, so no change
/// exists without its event. The rules each keeps are in the `Engine` method of the same
/// operation, which adds what spans shards, the gate and recovery.
#[async_trait]
pub trait Decisions: Send + Sync + 'static {
    /// Loads a campaign — new, or rebuilt from the database — with the counters its
    /// reservations and groups imply. Does nothing (`false`) if the campaign exists.
    async fn load_campaign(&self, snapshot: CampaignSnapshot<'_>) -> Result<bool, EngineError>;

    /// Adds or withdraws units; never below what is available. One idempotency key
    /// changes the stock at most once.
    async fn adjust_stock(&self, request: &StockRequest) -> Result<StockOutcome, EngineError>;

    /// Never creates a reservation that would oversell or pass the user's limit; one
    /// idempotency key yields at most one reservation.
    async fn reserve(&self, request: &ReserveRequest) -> Result<ReserveOutcome, EngineError>;

    /// held → confirmed. A hold found past `expires_at` expires instead (`NotHeld`).
    async fn confirm(&self, id: &ReservationId, now: Millis) -> Result<Transition, EngineError>;

    /// → cancelled, units return. A hold found past `expires_at` expires instead (`NotHeld`).
    async fn cancel(
        &self,
        id: &ReservationId,
        scope: CancelScope,
        now: Millis,
    ) -> Result<Transition, EngineError>;

    /// Ends the campaign at `now` unless it ended earlier (a campaign not started yet starts
    /// and ends at `now`): attempts from then on are refused `ended`; live holds end as they
    /// would have. Idempotent. Its state after, `None` when unknown.
    async fn end_campaign(
        &self,
        id: &CampaignId,
        now: Millis,
    ) -> Result<Option<CampaignState>, EngineError>;

    /// held → held until `max(expires_at, now + seconds)`, at most `created_at +
    /// hold_seconds + max_extend_seconds` (beyond it: `Exceeded`, nothing changes). Atomic
    /// with expiry: a hold found past `expires_at` expires instead (`NotHeld`), so a hold is
    /// never both extended and expired. An actual extension appends `reservation.extended`.
    async fn extend(
        &self,
        id: &ReservationId,
        seconds: u32,
        now: Millis,
    ) -> Result<Extension, EngineError>;

    /// Fails the campaign's open groups whose window passed (their members are released and
    /// their units return), then expires up to `limit` held reservations whose
    /// `expires_at <= now`, returning their units (a group member's slot returns to its
    /// group), then forgets up to `limit` reservations (outside groups) that ended more than
    /// the engine's retention ago — their idempotency records stay, so replays find them in
    /// the database. Safe to run from many instances at once. Returns how many reservations
    /// ended.
    async fn expire_due(
        &self,
        campaign: &CampaignId,
        now: Millis,
        limit: u32,
    ) -> Result<u32, EngineError>;

    /// Opens a group: holds `size` units of a group-buy campaign and gives the opener the
    /// first slot (a held reservation of one unit).
    async fn open_group(&self, request: &GroupRequest) -> Result<GroupOutcome, EngineError>;

    /// Joins an open group: one of its slots becomes the joiner's held reservation.
    async fn join_group(&self, request: &GroupRequest) -> Result<GroupOutcome, EngineError>;
}

/// The reads of one campaign (or one shard), each one cheap call.
#[async_trait]
pub trait Reads: Send + Sync + 'static {
    async fn campaign(&self, id: &CampaignId) -> Result<Option<CampaignState>, EngineError>;

    /// Ids of every campaign the engine holds (for the reaper, recovery and metrics).
    async fn campaign_ids(&self) -> Result<Vec<CampaignId>, EngineError>;

    async fn reservation(&self, id: &ReservationId) -> Result<Option<Reservation>, EngineError>;

    async fn group(&self, id: &GroupId) -> Result<Option<Group>, EngineError>;

    /// `None` while the campaign has units (or does not exist). Once it has none: its
    /// idempotency records from position `from` on (creation order), at most `limit`, read
    /// atomically with `available == 0` and the `total`. Records never change once made, so
    /// a reader may collect older pages in earlier calls; the call that returns the tail
    /// proves the whole set. Re-arming after a cancel reads one record, not all of them.
    /// `total < from` means the records were rebuilt: read again from 0.
    async fn sold_out_records(
        &self,
        campaign: &CampaignId,
        from: u64,
        limit: u64,
    ) -> Result<Option<RecordsSince>, EngineError>;

    /// `available` and the idempotency record count, in one cheap read; `None` if the
    /// campaign does not exist.
    async fn probe(&self, campaign: &CampaignId) -> Result<Option<Probe>, EngineError>;
}

/// Idempotency records of a campaign, in the order they were created, from position
/// `from` on: what [`Reads::sold_out_records`] returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordsSince {
    /// How many records the campaign has in all.
    pub total: u64,
    /// Records `from..total`: (scoped key, reservation id, fingerprint).
    pub records: Vec<(String, ReservationId, String)>,
}

/// What [`Reads::probe`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub available: u64,
    /// How many idempotency records the campaign has: it grows with every reservation ever
    /// created, so an unchanged count means no reservation was created in between.
    pub idempotency_records: u64,
}

/// The events decisions appended, per consumer group: at least once, in order per campaign.
#[async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// Up to `max` events `consumer`'s group has not acknowledged: first those another
    /// consumer of the group took more than `reclaim_after` ago without acknowledging (it
    /// died), then new ones. In stream order per campaign.
    async fn read(
        &self,
        consumer: &Consumer,
        max: usize,
        reclaim_after: std::time::Duration,
    ) -> Result<EventBatch, EngineError>;

    /// Acknowledges `group`'s handled events; once every group has, they leave the log.
    async fn ack(&self, group: &str, events: &[Event]) -> Result<(), EngineError>;

    /// What waits for `group`, for metrics.
    async fn backlog(&self, group: &str) -> Result<Backlog, EngineError>;

    /// Resolves once every event `campaign` has appended so far has been acknowledged by
    /// `group` — for the persister: committed to the database. A caller that waits for this
    /// after a decision answers only what the database holds.
    async fn acknowledged(&self, group: &str, campaign: &CampaignId) -> Result<(), EngineError>;
}

/// The waiting room of campaigns that have one (`Campaign::queue`). Every step is atomic
/// with the campaign's units (one script on the campaign's slot, or under its lock).
///
/// Tickets taken before `starts_at` carry a secret uniform lot and are ordered by it from the
/// start on (the draw); later ones follow in arrival order. A waiting ticket reads `sold_out`
/// while the campaign has no unit available: one read of the campaign, nothing written per
/// ticket.
#[async_trait]
pub trait WaitingRoom: Send + Sync + 'static {
    /// One ticket per user per campaign: a second join answers the first ticket.
    async fn join_queue(&self, request: &JoinRequest) -> Result<JoinOutcome, EngineError>;

    /// A ticket as it stands at `now`; `None` if unknown.
    async fn ticket(&self, id: &TicketId, now: Millis) -> Result<Option<Ticket>, EngineError>;

    /// Admits the next waiting tickets of the campaign: at most `admit_per_second` per second
    /// (with at most a tenth of a second's worth at once), counted across every caller, and
    /// never more than leaves every admitted, unused, unexpired pass a unit to take. Nothing
    /// before `starts_at` or after `ends_at`. Safe to run from every instance at once.
    async fn admit(&self, campaign: &CampaignId, now: Millis) -> Result<Admission, EngineError>;

    /// Before a decision with the ticket's pass: whether it may take its units now. A retry
    /// of a decision already made may ([`PassClaim::Replay`]). A pass not used yet has a unit kept for it
    /// ([`PassClaim::Kept`]). A pass used before takes only units no unused pass is owed, and
    /// is owed one itself until [`WaitingRoom::pass_used`] ([`PassClaim::Owed`]): so a unit its
    /// holder gave back goes to the line, not back to the same pass. `None`: no unit is left
    /// for it.
    async fn claim_pass(&self, pass: &PassUse<'_>) -> Result<Option<PassClaim>, EngineError>;

    /// The ticket's pass was used for a reservation (or, when it was [`PassClaim::Owed`],
    /// tried): it no longer needs a unit kept for it.
    async fn pass_used(&self, ticket: &TicketId) -> Result<(), EngineError>;

    /// Where the campaign's line stands and the units available, in one cheap read (for the
    /// poll cache); `None` if the campaign is unknown.
    async fn line(&self, campaign: &CampaignId)
        -> Result<Option<crate::domain::Line>, EngineError>;
}

/// A shard's state as transfers need it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardState {
    pub stock: u64,
    pub available: u64,
    /// Units taken off this shard by transfers not closed yet.
    pub outgoing: u64,
    /// Bumped by every change of `stock` or `outgoing` (transfers, stock changes).
    pub version: u64,
    /// The whole campaign's stock: kept by shard 0 only.
    pub total: Option<u64>,
    /// Its idempotency records (see [`Probe::idempotency_records`]).
    pub records: u64,
}

/// Units moving from one shard to another.
#[derive(Debug, Clone)]
pub struct Transfer {
    pub id: String,
    /// The receiving shard's index.
    pub to: u8,
    /// Units wanted; fewer are taken if fewer are available.
    pub want: u64,
    /// Below this many available, nothing is taken.
    pub least: u64,
    pub now: Millis,
}

/// A transfer a donor opened and has not closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenTransfer {
    pub id: String,
    pub to: u8,
    pub units: u64,
    pub at: Millis,
}

/// What giving a transfer's units came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Given {
    Now,
    Before,
    /// The receiving shard is missing (lost, not rebuilt yet): the transfer stays open.
    Missing,
}

/// What claiming a store's idempotency key came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// First seen now, or before with the same body.
    Mine,
    /// Seen before with another body (another user's attempt).
    Other,
    /// The key's shard is missing.
    Missing,
}

/// The per-shard steps of moving units, each atomic on its shard.

#[async_trait]
pub trait ShardOps: Send + Sync + 'static {
    async fn shard_state(&self, shard: &CampaignId) -> Result<Option<ShardState>, EngineError>;

    /// Takes up to `want` units (none if fewer than `least` are available) and opens the
    /// transfer record; the units taken (0: none).
    async fn take_units(&self, shard: &CampaignId, transfer: &Transfer)
        -> Result<u64, EngineError>;

    async fn give_units(
        &self,
        shard: &CampaignId,
        transfer: &str,
        units: u64,
    ) -> Result<Given, EngineError>;

    /// Closes a transfer on its donor (after its units were given).
    async fn transfer_done(&self, shard: &CampaignId, transfer: &str) -> Result<(), EngineError>;

    async fn open_transfers(&self, shard: &CampaignId) -> Result<Vec<OpenTransfer>, EngineError>;

    /// Lists a shard that exists in the engine's campaign index again (a Redis node that
    /// lost the index gets it back from the recovery pass; see `recovery::restore_all`).
    async fn relist(&self, shard: &CampaignId) -> Result<(), EngineError>;

    /// Claims a store's idempotency key for one body in the key's shard.
    async fn claim_key(
        &self,
        shard: &CampaignId,
        key: &ScopedKey,
        fingerprint: &str,
    ) -> Result<Claim, EngineError>;
}
