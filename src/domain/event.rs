//! Events: every state change, as the engines record it and the feed shows it. This is the
//! one Rust home of the event type; its wire form in Redis is `engine::redis::codec` (twin of
//! `src/engine/redis/scripts/lib.lua`'s encoder), its feed JSON is [`Event::feed_payload`].

use super::{CampaignId, Group, GroupId, GroupStatus, Millis, Reservation, ScopedKey, UserId};
use serde::Serialize;

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

/// An event's place in its campaign's stream: the entry id `<ms>-<seq>`, ordered as Redis
/// orders them, and the event's index within the entry (an entry written by a batch of
/// reserves carries one event per reservation made). Written `<ms>-<seq>` for an entry's
/// first event and `<ms>-<seq>.<index>` for the others.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamPosition {
    pub ms: i64,
    pub seq: i64,
    pub index: u32,
}

impl StreamPosition {
    pub fn parse(raw: &str) -> Option<Self> {
        let (entry, index) = match raw.split_once('.') {
            Some((entry, index)) => (entry, index.parse().ok()?),
            None => (raw, 0),
        };
        let (ms, seq) = entry.split_once('-')?;
        Some(StreamPosition {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
            index,
        })
    }

    /// The id of the stream entry that carries the event (what is acknowledged).
    pub fn entry(&self) -> String {
        format!("{}-{}", self.ms, self.seq)
    }
}

impl std::fmt::Display for StreamPosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.index {
            0 => write!(f, "{}-{}", self.ms, self.seq),
            index => write!(f, "{}-{}.{index}", self.ms, self.seq),
        }
    }
}

/// What changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A reservation entered `reservation.status`; the creating event also carries its
    /// idempotency record (key, fingerprint), so the database can rebuild the engine.
    Reservation {
        reservation: Reservation,
        idempotency: Option<(ScopedKey, String)>,
    },
    /// A held reservation now expires later (`reservation.expires_at`).
    Extended { reservation: Reservation },
    /// The campaign's stock is now `stock`.
    Stock { stock: u64 },
    /// A group entered `group.status` (`members` is left empty in events).
    Group { group: Group },
}

/// A group as the feed shows it: without members (each member has events of its own).
#[derive(Debug, Serialize)]
struct GroupSummary<'a> {
    id: &'a GroupId,
    campaign_id: &'a CampaignId,
    leader_user_id: &'a UserId,
    size: u32,
    status: &'static str,
    expires_at: Millis,
}

/// The feed item's body besides `cursor`, `type` and `at`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "snake_case")]
enum Payload<'a> {
    Reservation(&'a Reservation),
    Group(GroupSummary<'a>),
    Stock(u64),
}

impl Event {
    /// The feed item's payload: `{"reservation": …}`, `{"group": …}` or `{"stock": n}`.
    pub fn feed_payload(&self) -> String {
        let payload = match &self.change {
            Change::Reservation { reservation, .. } | Change::Extended { reservation } => {
                Payload::Reservation(reservation)
            }
            Change::Group { group } => Payload::Group(GroupSummary {
                id: &group.id,
                campaign_id: &group.campaign_id,
                leader_user_id: &group.leader_user_id,
                size: group.size,
                status: group.status.as_str(),
                expires_at: group.expires_at,
            }),
            Change::Stock { stock } => Payload::Stock(*stock),
        };
        // Serializing these plain structs cannot fail; `{}` keeps the feed row valid anyway.
        serde_json::to_string(&payload).unwrap_or_else(|_| "{}".to_owned())
    }
}

impl Change {
    /// The event type as the feed names it.
    pub fn kind(&self) -> &'static str {
        use super::ReservationStatus as S;
        match self {
            Change::Reservation { reservation, .. } => match reservation.status {
                S::Held => "reservation.held",
                S::Confirmed => "reservation.confirmed",
                S::Cancelled => "reservation.cancelled",
                S::Expired => "reservation.expired",
                S::Released => "reservation.released",
            },
            Change::Extended { .. } => "reservation.extended",
            Change::Stock { .. } => "campaign.stock",
            Change::Group { group } => match group.status {
                GroupStatus::Open => "group.opened",
                GroupStatus::Formed => "group.formed",
                GroupStatus::Failed => "group.failed",
            },
        }
    }
}

/// A reservation as the database keeps it, for rebuilding an engine that lost a campaign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredReservation {
    pub reservation: Reservation,
    pub idempotency_key: Option<ScopedKey>,
    pub fingerprint: Option<String>,
}
