//! The contract's nouns as parsed types: once a value is one of these, it is valid, and
//! nothing past the HTTP edge checks it again. No I/O lives here.

/// Declares an id of something that lives inside one campaign (`scoped_id`'s shape,
/// `<prefix><ULID>_<campaign id>`): generated for a campaign, parsed from a caller, and
/// naming its campaign, so any instance finds the campaign (and its hash tag) from the id.
macro_rules! scoped_id_type {
    ($(#[$doc:meta])* $name:ident, $prefix:literal, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn generate(campaign: &$crate::domain::CampaignId) -> Self {
                $name($crate::domain::scoped_id::generate($prefix, campaign))
            }

            pub fn parse(raw: &str) -> Result<Self, $crate::domain::ParseError> {
                $crate::domain::scoped_id::check(raw, $prefix, $what)?;
                Ok($name(raw.to_owned()))
            }

            /// The campaign it belongs to.
            pub fn campaign_id(&self) -> $crate::domain::CampaignId {
                $crate::domain::scoped_id::campaign(&self.0, $prefix).parent()
            }

            /// The same id in another campaign or shard (the ULID kept).
            pub fn in_campaign(&self, campaign: &$crate::domain::CampaignId) -> Self {
                $name($crate::domain::scoped_id::in_campaign(&self.0, $prefix, campaign))
            }

            /// Where an engine keeps it: the campaign, or the campaign's shard it was made in
            /// (see [`CampaignId::shard`](crate::domain::CampaignId::shard)).
            pub fn shard_campaign(&self) -> $crate::domain::CampaignId {
                $crate::domain::scoped_id::campaign(&self.0, $prefix)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

mod campaign;
mod event;
mod group;
mod queue;
mod refusal;
mod reservation;

pub use campaign::{
    Campaign, CampaignDraft, CampaignKind, CampaignState, CampaignStatus, GroupCounts, GroupRule,
    QueueRule, Window,
};
pub use event::{Change, Event, StoredReservation, StreamPosition};
pub use group::{Group, GroupId, GroupMember, GroupStatus};
pub use queue::{Line, LinePoint, PassKey, PassRefusal, Ticket, TicketId, TicketStatus};
pub use refusal::Refusal;
pub use reservation::{Reservation, ReservationId, ReservationStatus};

use serde::Serialize;
use std::fmt;
use thiserror::Error;

/// Ids of things that live inside one campaign: `<prefix><ULID>_<campaign id>`. The campaign
/// rides inside so any instance finds the campaign (and its Redis hash tag) from the id alone.
mod scoped_id {
    use super::{CampaignId, ParseError};

    const ULID_LEN: usize = 26;

    pub fn generate(prefix: &str, campaign: &CampaignId) -> String {
        format!("{prefix}{}_{campaign}", ulid::Ulid::new())
    }

    /// Checks `raw` has the shape; `what` names the kind of id in the error.
    pub fn check(raw: &str, prefix: &str, what: &str) -> Result<(), ParseError> {
        let invalid = || ParseError(format!("{raw:?} is not a {what} id"));
        let rest = raw.strip_prefix(prefix).ok_or_else(invalid)?;
        if rest.len() <= ULID_LEN + 1 || !rest.is_char_boundary(ULID_LEN) {
            return Err(invalid());
        }
        let (ulid, campaign) = rest.split_at(ULID_LEN);
        ulid::Ulid::from_string(ulid).map_err(|_| invalid())?;
        let campaign = campaign.strip_prefix('_').ok_or_else(invalid)?;
        CampaignId::parse_shard(campaign).map_err(|_| invalid())?;
        Ok(())
    }

    /// An id that passed [`check`], moved to `campaign`.
    pub fn in_campaign(raw: &str, prefix: &str, campaign: &CampaignId) -> String {
        format!("{}_{campaign}", &raw[..prefix.len() + ULID_LEN])
    }

    /// The campaign of an id that passed [`check`].
    pub fn campaign(raw: &str, prefix: &str) -> CampaignId {
        CampaignId(raw[prefix.len() + ULID_LEN + 1..].to_owned())
    }
}

/// Why a raw value could not become a domain value; the text is shown to callers as `detail`.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("{0}")]
pub struct ParseError(pub String);

/// Milliseconds since the Unix epoch, UTC.
///
/// Every engine decision takes one of these as a parameter. In production it is read from the
/// wall clock of the instance (kept by NTP), so all instances agree to within a few
/// milliseconds; the only decisions that depend on it are window edges and hold expiry, where
/// that skew is far below the granularity callers can observe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Millis(pub i64);

impl Millis {
    /// The instance's wall clock.
    pub fn now() -> Self {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Millis(i64::try_from(since.as_millis()).unwrap_or(i64::MAX))
    }

    /// This instant plus whole seconds.
    pub fn plus_seconds(self, seconds: u32) -> Self {
        Millis(self.0.saturating_add(i64::from(seconds) * 1000))
    }

    /// RFC 3339 in UTC with millisecond precision, as the contract writes timestamps.
    pub fn to_rfc3339(self) -> String {
        let nanos = i128::from(self.0) * 1_000_000;
        match time::OffsetDateTime::from_unix_timestamp_nanos(nanos) {
            Ok(at) => {
                let format = time::macros::format_description!(
                    "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
                );
                at.format(&format).unwrap_or_else(|_| self.0.to_string())
            }
            Err(_) => self.0.to_string(),
        }
    }

    /// Parses an RFC 3339 timestamp (any offset) into UTC milliseconds.
    pub fn parse_rfc3339(raw: &str) -> Result<Self, ParseError> {
        let at = time::OffsetDateTime::parse(raw, &time::format_description::well_known::Rfc3339)
            .map_err(|e| ParseError(format!("`{raw}` is not an RFC 3339 timestamp: {e}")))?;
        let millis = at.unix_timestamp_nanos() / 1_000_000;
        i64::try_from(millis)
            .map(Millis)
            .map_err(|_| ParseError(format!("`{raw}` is out of range")))
    }
}

impl Serialize for Millis {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_rfc3339())
    }
}

/// A campaign id: `[a-z0-9_-]{1,64}`, so it can sit inside a Redis hash tag and a URL unescaped.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct CampaignId(String);

impl CampaignId {
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        let ok = !raw.is_empty()
            && raw.len() <= 64
            && raw
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if ok {
            Ok(CampaignId(raw.to_owned()))
        } else {
            Err(ParseError(format!(
                "campaign id must be 1 to 64 characters of [a-z0-9_-], got {raw:?}"
            )))
        }
    }

    /// Shard `k` of this campaign, as engines name it: the campaign itself for shard 0,
    /// `<id>.<k>` for the others (a `.` no campaign id has, so no shard id is ever a
    /// campaign's, and each has its own Redis hash tag).
    pub fn shard(&self, k: u8) -> CampaignId {
        match k {
            0 => self.clone(),
            k => CampaignId(format!("{}.{k}", self.0)),
        }
    }

    /// The campaign a shard id belongs to (itself for a campaign id).
    pub fn parent(&self) -> CampaignId {
        match self.0.split_once('.') {
            Some((parent, _)) => CampaignId(parent.to_owned()),
            None => self.clone(),
        }
    }

    /// Which shard of its campaign this id names (0 for a campaign id).
    pub fn shard_index(&self) -> u8 {
        self.0
            .split_once('.')
            .and_then(|(_, k)| k.parse().ok())
            .unwrap_or(0)
    }

    /// A campaign id or a shard id (`<id>.<k>`, k in 1..[`Campaign::MAX_SHARDS`]), as
    /// ids of things inside a shard carry it.
    pub fn parse_shard(raw: &str) -> Result<Self, ParseError> {
        let Some((parent, k)) = raw.split_once('.') else {
            return Self::parse(raw);
        };
        let shard = k
            .parse::<u8>()
            .ok()
            .filter(|&n| !k.starts_with('0') && n >= 1 && u64::from(n) < Campaign::MAX_SHARDS);
        let Some(shard) = shard else {
            return Err(ParseError(format!("{raw:?} is not a campaign shard")));
        };
        Ok(Self::parse(parent)?.shard(shard))
    }

    /// A fresh id for a campaign created without one.
    pub fn generate() -> Self {
        CampaignId(format!(
            "cmp-{}",
            ulid::Ulid::new().to_string().to_lowercase()
        ))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CampaignId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A user id as the main store knows it: 1 to 128 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct UserId(String);

impl UserId {
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        let chars = raw.chars().count();
        if chars == 0 || chars > 128 {
            return Err(ParseError(format!(
                "user_id must be 1 to 128 characters, got {chars}"
            )));
        }
        if raw.chars().any(char::is_control) {
            return Err(ParseError(
                "user_id must not contain control characters".into(),
            ));
        }
        Ok(UserId(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Units asked for or held: a whole number from 1 to [`Quantity::MAX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Quantity(u32);

impl Quantity {
    /// Larger asks are certainly mistakes; the bound keeps every sum far from overflow.
    pub const MAX: u64 = 1_000_000;

    pub fn parse(raw: u64) -> Result<Self, ParseError> {
        if (1..=Self::MAX).contains(&raw) {
            Ok(Quantity(raw as u32))
        } else {
            Err(ParseError(format!(
                "quantity must be between 1 and {}, got {raw}",
                Self::MAX
            )))
        }
    }

    /// One unit: what every group member holds.
    pub const ONE: Quantity = Quantity(1);

    pub fn get(self) -> u32 {
        self.0
    }
}

impl From<Quantity> for u64 {
    fn from(quantity: Quantity) -> u64 {
        u64::from(quantity.0)
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A stock change: units to add (positive) or withdraw (negative), never zero, never more
/// than [`Campaign::MAX_STOCK`] either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StockDelta(i64);

impl StockDelta {
    pub fn parse(raw: i64) -> Result<Self, ParseError> {
        let max = Campaign::MAX_STOCK as i64;
        if raw == 0 || !(-max..=max).contains(&raw) {
            return Err(ParseError(format!(
                "delta must be a non-zero integer between -{max} and {max}"
            )));
        }
        Ok(StockDelta(raw))
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

/// The caller-chosen key that makes a creating POST safe to retry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        let ok = !raw.is_empty()
            && raw.len() <= 128
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
        if ok {
            Ok(IdempotencyKey(raw.to_owned()))
        } else {
            Err(ParseError(
                "Idempotency-Key must be 1 to 128 characters of [A-Za-z0-9._:-]".into(),
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An idempotency key as the engines remember it: scoped to who sent it and what it
/// targets, so the same key from two callers, or for two targets, are two keys.
///
/// Layout: `<length of scope>:<scope>/<key>`. The scope (`s/<token name>` or `u/<user id>`,
/// then the operation and its target) is length-prefixed, so no two (scope, key) pairs can
/// spell the same text: user `eve` with key `order:42` and user `eve:order` with key `42`
/// stay apart.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ScopedKey(String);

impl ScopedKey {
    /// `caller`: who sent it; `operation`: what it targets (`reserve`, `open`,
    /// `join:<group id>`, `stock:<campaign id>`).
    pub fn new(caller: &str, operation: &str, key: &IdempotencyKey) -> Self {
        // One allocation: this runs on every creating request.
        let scope_len = caller.len() + 1 + operation.len();
        let key = key.as_str();
        let mut raw = String::with_capacity(8 + scope_len + key.len());
        raw.push_str(&scope_len.to_string());
        raw.push(':');
        raw.push_str(caller);
        raw.push('/');
        raw.push_str(operation);
        raw.push('/');
        raw.push_str(key);
        ScopedKey(raw)
    }

    /// Whether a store token sent it (scope `s/…`): the same key may then come for several
    /// users.
    pub fn is_store(&self) -> bool {
        self.0
            .split_once(':')
            .is_some_and(|(_, rest)| rest.starts_with("s/"))
    }

    /// A key as an engine or the database stored it.
    pub fn from_stored(raw: String) -> Self {
        ScopedKey(raw)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ScopedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn scoped_keys_of_different_callers_never_collide() {
        let key = |raw: &str| super::IdempotencyKey::parse(raw).expect("valid key");
        let eve = super::ScopedKey::new("u/eve", "reserve", &key("order:42"));
        let eve_order = super::ScopedKey::new("u/eve:order", "reserve", &key("42"));
        assert_ne!(eve, eve_order);
        let other_target = super::ScopedKey::new("u/eve", "open", &key("order:42"));
        assert_ne!(eve, other_target);
    }

    use super::*;

    #[test]
    fn campaign_ids_are_lowercase_slugs() {
        assert!(CampaignId::parse("spring-sale_2026").is_ok());
        assert!(CampaignId::parse("").is_err());
        assert!(CampaignId::parse("Upper").is_err());
        assert!(CampaignId::parse("with{brace}").is_err());
        assert!(CampaignId::parse(&"a".repeat(65)).is_err());
    }

    #[test]
    fn shard_ids_name_a_shard_past_the_first_and_their_campaign() {
        let sale = CampaignId::parse("sale").expect("valid id");
        assert_eq!(sale.shard(0), sale);
        for k in [1, 63] {
            let shard = CampaignId::parse_shard(&format!("sale.{k}")).expect("a shard");
            assert_eq!((shard.parent(), shard.shard_index()), (sale.clone(), k));
            assert_eq!(shard, sale.shard(k));
        }
        for raw in ["sale.0", "sale.01", "sale.64", "sale.x", "sale.", "Sale.1"] {
            assert!(CampaignId::parse_shard(raw).is_err(), "{raw}");
        }
        assert!(
            CampaignId::parse("sale.1").is_err(),
            "never a campaign's id"
        );
    }

    #[test]
    fn idempotency_keys_follow_the_contract_charset() {
        assert!(IdempotencyKey::parse("order-1:try.2_x").is_ok());
        assert!(IdempotencyKey::parse("has space").is_err());
        assert!(IdempotencyKey::parse(&"k".repeat(129)).is_err());
    }

    #[test]
    fn every_refusal_is_listed_at_its_own_index() {
        for (index, refusal) in Refusal::ALL.iter().enumerate() {
            assert_eq!(*refusal as usize, index);
            assert_eq!(Refusal::from_code(refusal.code()), Some(*refusal));
        }
    }

    #[test]
    fn quantities_are_bounded() {
        assert!(Quantity::parse(0).is_err());
        assert_eq!(Quantity::parse(3).map(Quantity::get), Ok(3));
        assert!(Quantity::parse(Quantity::MAX + 1).is_err());
    }

    #[test]
    fn timestamps_round_trip_through_rfc3339() {
        let at = Millis(1_764_000_000_123);
        assert_eq!(Millis::parse_rfc3339(&at.to_rfc3339()), Ok(at));
        assert_eq!(
            Millis::parse_rfc3339("2026-01-01T08:00:00+08:00").map(Millis::to_rfc3339),
            Ok("2026-01-01T00:00:00.000Z".to_owned())
        );
    }
}
