//! The engine's vocabulary: requests, outcomes and errors of every operation, shared by the
//! operations (`Engine`'s methods) and the backends that carry them out.

use crate::domain::{
    Campaign, CampaignId, Event, Group, GroupId, Millis, Quantity, Refusal, Reservation,
    ReservationId, ScopedKey, StockDelta, StoredReservation, Ticket, TicketId, UserId,
};
use std::collections::HashMap;
use thiserror::Error;

/// A failure of the engine itself (not a refusal): the caller gets an opaque 500 or a 503.
#[derive(Debug, Error)]
pub enum EngineError {
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    #[error("the engine answered something unexpected: {0}")]
    Corrupt(String),
    /// The campaign's engine state is missing and could not be rebuilt just now (the
    /// database did not answer); nothing was decided.
    #[error("the campaign is being rebuilt: {0}")]
    Recovering(String),
    /// Strict durability: the change was made but no replica has it yet; a retry with the
    /// same idempotency key answers it once it is there.
    #[error("not replicated: {0}")]
    Unreplicated(String),
    /// Too many attempts already wait for the campaign; this one was not decided.
    #[error("too many attempts wait for this campaign")]
    Overloaded,
    /// The database refuses writes (a full disk, say), so a change whose answer waits for
    /// its commit cannot be made durable: nothing was decided, or — when the refusal came
    /// while the answer waited — the change waits in the log and a retry with the same
    /// idempotency key answers it once it is written.
    #[error("changes cannot be made durable just now: {0}")]
    NotDurable(String),
    /// Strict durability, and the engine's configuration can lose data: nothing is decided
    /// until it is fixed.
    #[error("the stock engine can lose data: {0}")]
    Unsafe(String),
}

impl From<::redis::ParsingError> for EngineError {
    fn from(error: ::redis::ParsingError) -> Self {
        EngineError::Redis(error.into())
    }
}

impl EngineError {
    /// Redis refused a write for lack of memory (`OOM command not allowed when used memory >
    /// 'maxmemory'`): nothing was decided.
    pub fn is_out_of_memory(&self) -> bool {
        match self {
            EngineError::Redis(e) => {
                // Shared by a batch, the error keeps the server's words, not its code.
                let text = e.to_string();
                e.code() == Some("OOM") || (text.contains("OOM") && text.contains("maxmemory"))
            }
            _ => false,
        }
    }

    /// The same error for another caller (one failed batch fails each of its attempts).
    pub fn share(&self) -> EngineError {
        match self {
            EngineError::Redis(e) => EngineError::Redis(::redis::RedisError::from((
                e.kind(),
                "a batch of reserves failed",
                e.to_string(),
            ))),
            EngineError::Corrupt(what) => EngineError::Corrupt(what.clone()),
            EngineError::Recovering(what) => EngineError::Recovering(what.clone()),
            EngineError::Unreplicated(what) => EngineError::Unreplicated(what.clone()),
            EngineError::Overloaded => EngineError::Overloaded,
            EngineError::NotDurable(what) => EngineError::NotDurable(what.clone()),
            EngineError::Unsafe(what) => EngineError::Unsafe(what.clone()),
        }
    }
}

/// One reservation attempt.
#[derive(Debug, Clone)]
pub struct ReserveRequest {
    pub campaign_id: CampaignId,
    pub user_id: UserId,
    pub quantity: Quantity,
    /// The caller's idempotency key; it is remembered per campaign.
    pub idempotency_key: ScopedKey,
    /// What the request asked for, so a reused key with another body can be told apart.
    pub fingerprint: String,
    /// The id the reservation gets if one is created (for a sharded campaign, the same id
    /// made in the user's shard: see `sharded`).
    pub reservation_id: ReservationId,
    pub now: Millis,
}

impl ReserveRequest {
    /// An attempt with a fresh reservation id and the body's fingerprint.
    pub fn new(
        campaign_id: CampaignId,
        user_id: UserId,
        quantity: Quantity,
        idempotency_key: ScopedKey,
        now: Millis,
    ) -> Self {
        ReserveRequest {
            fingerprint: format!("{quantity}:{user_id}"),
            reservation_id: ReservationId::generate(&campaign_id),
            campaign_id,
            user_id,
            quantity,
            idempotency_key,
            now,
        }
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
    /// The idempotency key was seen before with the same body, but its reservation ended
    /// and left the engine (after the retention): the first outcome is in the database.
    ReplayOf(ReservationId),
    /// The idempotency key was seen before with a different body.
    KeyReused,
    Refused(Refusal),
    /// The user made more attempts on this campaign this second than the engine allows,
    /// counted across every instance (the Redis engine, when built with a rate).
    RateLimited,
}

/// How long an ended reservation (outside groups) stays in an engine when none is
/// configured; the database keeps it for good.
pub const DEFAULT_RETENTION: std::time::Duration = std::time::Duration::from_secs(3600);

/// Opening or joining a group.
#[derive(Debug, Clone)]
pub struct GroupRequest {
    pub campaign_id: CampaignId,
    /// The group to join, or the id a newly opened group gets.
    pub group_id: GroupId,
    pub user_id: UserId,
    /// The caller's idempotency key, scoped to the caller and the operation's target.
    pub idempotency_key: ScopedKey,
    pub fingerprint: String,
    /// The id the member's reservation gets if one is created.
    pub reservation_id: ReservationId,
    pub now: Millis,
}

impl GroupRequest {
    /// Opening a new group of `campaign_id` for `user_id`.
    pub fn open(campaign_id: CampaignId, user_id: UserId, key: ScopedKey, now: Millis) -> Self {
        GroupRequest {
            group_id: GroupId::generate(&campaign_id),
            reservation_id: ReservationId::generate(&campaign_id),
            fingerprint: format!("open:{user_id}"),
            idempotency_key: key,
            campaign_id,
            user_id,
            now,
        }
    }

    /// Joining group `group_id` as `user_id`.
    pub fn join(group_id: GroupId, user_id: UserId, key: ScopedKey, now: Millis) -> Self {
        let campaign_id = group_id.campaign_id();
        GroupRequest {
            reservation_id: ReservationId::generate(&campaign_id),
            fingerprint: format!("join:{user_id}"),
            idempotency_key: key,
            group_id,
            campaign_id,
            user_id,
            now,
        }
    }
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

/// A stock change.
#[derive(Debug, Clone)]
pub struct StockRequest {
    pub campaign_id: CampaignId,
    pub delta: StockDelta,
    /// The caller's idempotency key: a retried change applies once.
    pub idempotency_key: ScopedKey,
}

/// What a stock delta came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StockOutcome {
    Adjusted {
        stock: u64,
        available: u64,
    },
    /// The key was seen before with the same delta: the first outcome, as it was.
    Replayed {
        stock: u64,
        available: u64,
    },
    /// The key was seen before with another delta.
    KeyReused,
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

/// What an extension came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Extension {
    /// Still held, until `expires_at` (later than before, or unchanged when the hold already
    /// lasted past the asked time).
    Extended(Reservation),
    /// Not held: ended, or found past its expiry and expired on the spot.
    NotHeld(Reservation),
    /// The asked time is past `created_at + hold_seconds + max_extend_seconds`; unchanged.
    Exceeded(Reservation),
    NotFound,
}

/// A campaign to load into an engine: a new one (no reservations, no groups), or one
/// rebuilt from the database with its groups (`members` unused) and its live reservations
/// (held and confirmed, in creation order) with their idempotency records.
///
/// `epoch` names this load of the campaign: the engine keeps it with the campaign and hands
/// it out with the campaign's events, and the database records it (`campaigns.engine_epoch`)
/// so it applies only events of the campaign's current load (see `store::batch`).
#[derive(Debug, Clone)]
pub struct CampaignSnapshot<'a> {
    pub campaign: &'a Campaign,
    pub reservations: &'a [StoredReservation],
    pub groups: &'a [Group],
    pub epoch: String,
    /// Shard 0 of a sharded campaign (see `sharded`): the whole campaign's stock, which it
    /// keeps besides its own.
    pub total: Option<u64>,
}

impl<'a> CampaignSnapshot<'a> {
    /// A campaign just created: nothing taken yet, under a new epoch.
    pub fn fresh(campaign: &'a Campaign) -> Self {
        CampaignSnapshot {
            campaign,
            reservations: &[],
            groups: &[],
            epoch: new_epoch(),
            total: None,
        }
    }
}

/// A new load epoch: unique, so events of an earlier load never pass for this one's.
pub fn new_epoch() -> String {
    format!("load-{}", ulid::Ulid::new())
}

/// Each campaign's load epoch, as read atomically with its events.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Epochs(HashMap<CampaignId, String>);

impl Epochs {
    /// One campaign's.
    pub fn one(campaign: &CampaignId, epoch: &str) -> Self {
        let mut epochs = Epochs::default();
        epochs.set(campaign, epoch);
        epochs
    }

    /// The epoch the campaign's events were read under; empty if none was (the campaign was
    /// gone when they were read).
    pub fn of(&self, campaign: &CampaignId) -> &str {
        self.0.get(campaign).map_or("", String::as_str)
    }

    pub fn set(&mut self, campaign: &CampaignId, epoch: &str) {
        self.0.insert(campaign.clone(), epoch.to_owned());
    }

    /// Whether some campaign has another epoch in `other`.
    pub fn conflicts(&self, other: &Epochs) -> bool {
        other
            .0
            .iter()
            .any(|(campaign, epoch)| self.0.get(campaign).is_some_and(|mine| mine != epoch))
    }

    /// Adds `other`'s (which must not conflict).
    pub fn extend(&mut self, other: Epochs) {
        self.0.extend(other.0);
    }
}

/// The consumer group every engine's events are read by today: the persister.
pub const PERSISTER: &str = "persister";

/// One reader of an event log: its consumer group and its own name within it.
#[derive(Debug, Clone)]
pub struct Consumer {
    /// Every group sees every event once; the consumer groups an engine keeps are given
    /// when it is built ([`RedisEngine::connect_in`] makes [`PERSISTER`]'s).
    pub group: String,
    /// Unique per process, so a dead consumer's unacknowledged events can be taken over.
    pub name: String,
}

/// Events waiting in the log for a consumer group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Not yet acknowledged.
    pub events: u64,
    /// Handed to a consumer, not yet acknowledged.
    pub pending: u64,
    /// When the oldest waiting event happened.
    pub oldest: Option<Millis>,
}

/// Events read together, with each campaign's load epoch ([`CampaignSnapshot::epoch`]) read
/// atomically with its events.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventBatch {
    pub epochs: Epochs,
    pub events: Vec<Event>,
    /// Per campaign (or shard) read: the units it had available when its events were read,
    /// and the position of the last event read with them (see `Store::record_available`).
    pub available: HashMap<CampaignId, (u64, crate::domain::StreamPosition)>,
}

/// Taking a ticket in a campaign's waiting room.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    pub campaign_id: CampaignId,
    pub user_id: UserId,
    /// The id the ticket gets if the user has none yet (the embedded engine's; Redis numbers
    /// its tickets in the line and makes the id from the number: `TicketId::numbered`).
    pub ticket_id: TicketId,
    /// The caller's idempotency key: one key stands for one user's ticket.
    pub idempotency_key: ScopedKey,
    /// The ticket's secret lot for the draw at `starts_at` (uniform below [`JoinRequest::DRAW_RANGE`]),
    /// used only when it joins before the start, by the embedded engine (Redis draws by a
    /// secret permutation of the tickets' numbers: `src/engine/redis/scripts/queue.lua`).
    pub draw: u64,
    pub now: Millis,
}

impl JoinRequest {
    /// Lots are below 2^52.
    pub const DRAW_RANGE: u64 = 1 << 52;

    /// A join with a fresh ticket id and a fresh lot from the thread's CSPRNG.
    pub fn new(campaign_id: CampaignId, user_id: UserId, key: ScopedKey, now: Millis) -> Self {
        JoinRequest {
            ticket_id: TicketId::generate(&campaign_id),
            draw: rand::random::<u64>() % Self::DRAW_RANGE,
            campaign_id,
            user_id,
            idempotency_key: key,
            now,
        }
    }
}

/// What taking a ticket came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinOutcome {
    Joined(Ticket),
    /// The user already had a ticket for the campaign: that one, as it stands now.
    Existing(Ticket),
    /// The idempotency key was used for another user's ticket.
    KeyReused,
    /// `campaign_not_found`, `ended` or `no_waiting_room`.
    Refused(Refusal),
}

/// What one admission round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Admission {
    /// Tickets admitted by this round.
    pub admitted: u64,
    /// Tickets still waiting after it.
    pub waiting: u64,
    /// Units the waiting could still be admitted for: available less the unused passes out
    /// (0 outside the campaign's window). Waiting tickets with room and no admission for a
    /// while mean admission is not running.
    pub room: u64,
}

/// A decision asked for with a waiting-room pass (see [`WaitingRoom::claim_pass`]).
#[derive(Debug, Clone, Copy)]
pub struct PassUse<'a> {
    pub ticket: &'a TicketId,
    /// When the pass lapses.
    pub expires: Millis,
    /// Units the decision would take.
    pub quantity: u64,
    /// The decision's idempotency key: a retry of a decision already made takes nothing.
    pub key: &'a crate::domain::ScopedKey,
    /// A group decision (its key is a group idempotency record) rather than a reservation.
    pub group: bool,
    pub now: Millis,
}

/// What [`WaitingRoom::claim_pass`] found for a pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassClaim {
    /// The decision's key was used before: a retry, which takes nothing new.
    Replay,
    /// The campaign is not in the engine (lost; the decision rebuilds it, without its line):
    /// the pass, being signed, is taken at its word.
    Unchecked,
    /// Not used yet: a unit was kept for it since its admission.
    Kept,
    /// Used before: a unit no unused pass was owed is kept for it now, until `pass_used`.
    Owed,
}
