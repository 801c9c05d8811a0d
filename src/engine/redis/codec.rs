//! What goes in and out of Redis, decoded once: events as `src/engine/redis/scripts/lib.lua` encodes them, the
//! campaign hash (config and counters, `src/engine/redis/scripts/README.md`), reservation hashes.

use crate::domain::{
    Campaign, CampaignId, CampaignKind, CampaignState, Change, Event, Group, GroupCounts, GroupId,
    GroupRule, GroupStatus, Millis, Quantity, QueueRule, Reservation, ReservationId,
    ReservationStatus, ScopedKey, StreamPosition, UserId,
};
use crate::engine::EngineError;
use std::collections::HashMap;

/// The byte between an event's values (see `src/engine/redis/scripts/lib.lua`).
pub const SEPARATOR: char = '\x1f';

/// The byte between the events of one stream entry (see `src/engine/redis/scripts/lib.lua`).
pub const EVENT_SEPARATOR: char = '\x1e';

/// Decodes the events of one stream entry (one, or one per reservation a batch of reserves
/// made), each with its own position: the entry's id and its index in the entry.
pub fn events_from(
    campaign: &CampaignId,
    id: &str,
    entry: &str,
) -> Result<Vec<Event>, EngineError> {
    let position = StreamPosition::parse(id)
        .ok_or_else(|| EngineError::Corrupt(format!("stream entry id {id:?} of {campaign}")))?;
    entry
        .split(EVENT_SEPARATOR)
        .zip(0u32..)
        .map(|(event, index)| event_from(campaign, StreamPosition { index, ..position }, event))
        .collect()
}

/// Decodes one event as the scripts in `src/engine/redis/scripts/` write it: values joined by byte 31 (layouts in
/// `src/engine/redis/scripts/lib.lua`).
pub fn event_from(
    campaign: &CampaignId,
    position: StreamPosition,
    event: &str,
) -> Result<Event, EngineError> {
    let corrupt = || EngineError::Corrupt(format!("event {position} of {campaign}: {event:?}"));
    let values: Vec<&str> = event.split(SEPARATOR).collect();
    let number = |raw: &str| raw.parse::<i64>().map_err(|_| corrupt());
    let (kind, at, rest) = match values.as_slice() {
        [kind, at, rest @ ..] => (*kind, Millis(number(at)?), rest),
        _ => return Err(corrupt()),
    };
    let change = if kind.starts_with("group.") {
        let [gid, leader, size, status, created, expires] = rest else {
            return Err(corrupt());
        };
        let gid = GroupId::parse(gid).map_err(|_| corrupt())?;
        Change::Group {
            group: Group {
                campaign_id: gid.campaign_id(),
                id: gid,
                leader_user_id: UserId::parse(leader).map_err(|_| corrupt())?,
                size: size.parse().map_err(|_| corrupt())?,
                status: GroupStatus::parse(status).ok_or_else(corrupt)?,
                created_at: Millis(number(created)?),
                expires_at: Millis(number(expires)?),
                members: Vec::new(),
            },
        }
    } else if kind == "campaign.stock" {
        let [stock] = rest else {
            return Err(corrupt());
        };
        Change::Stock {
            stock: stock.parse().map_err(|_| corrupt())?,
        }
    } else {
        let (id, fields, idempotency) = match rest {
            [id, fields @ ..] if fields.len() == 6 => (id, fields, None),
            [id, fields @ .., key, fp] if fields.len() == 6 => (
                id,
                fields,
                Some((ScopedKey::from_stored((*key).to_owned()), (*fp).to_owned())),
            ),
            _ => return Err(corrupt()),
        };
        let reservation_id = ReservationId::parse(id).map_err(|_| corrupt())?;
        let reservation = reservation_from(&reservation_id, campaign, fields)?;
        if kind == "reservation.extended" {
            Change::Extended { reservation }
        } else {
            Change::Reservation {
                reservation,
                idempotency,
            }
        }
    };
    Ok(Event {
        campaign_id: campaign.clone(),
        position,
        at,
        change,
    })
}

/// Builds a reservation from `[user, qty, status, created, expires, group]`.
pub fn reservation_from<S: AsRef<str> + std::fmt::Debug>(
    id: &ReservationId,
    campaign: &CampaignId,
    fields: &[S],
) -> Result<Reservation, EngineError> {
    let corrupt = || EngineError::Corrupt(format!("reservation {id} has fields {fields:?}"));
    let [user, quantity, status, created, expires, group] = fields else {
        return Err(corrupt());
    };
    let group = group.as_ref();
    Ok(Reservation {
        id: id.clone(),
        campaign_id: campaign.parent(),
        user_id: UserId::parse(user.as_ref()).map_err(|_| corrupt())?,
        quantity: quantity
            .as_ref()
            .parse()
            .ok()
            .and_then(|units| Quantity::parse(units).ok())
            .ok_or_else(corrupt)?,
        status: ReservationStatus::parse(status.as_ref()).ok_or_else(corrupt)?,
        created_at: Millis(created.as_ref().parse().map_err(|_| corrupt())?),
        expires_at: Millis(expires.as_ref().parse().map_err(|_| corrupt())?),
        group_id: match group {
            "" => None,
            raw => Some(GroupId::parse(raw).map_err(|_| corrupt())?),
        },
    })
}

/// Encodes a campaign's config as the hash fields of `src/engine/redis/scripts/README.md`.
pub fn campaign_fields(campaign: &Campaign) -> Vec<(&'static str, String)> {
    let optional = |at: Option<Millis>| at.map(|m| m.0.to_string()).unwrap_or_default();
    let (group, queue) = (campaign.group, campaign.queue);
    vec![
        ("kind", campaign.kind.as_str().to_owned()),
        ("sku", campaign.sku.clone()),
        ("stock", campaign.stock.to_string()),
        ("limit", campaign.per_user_limit.to_string()),
        ("starts", optional(campaign.starts_at)),
        ("ends", optional(campaign.ends_at)),
        ("hold", campaign.hold_seconds.to_string()),
        ("maxext", campaign.max_extend_seconds.to_string()),
        (
            "gsize",
            group.map(|g| g.size.to_string()).unwrap_or_default(),
        ),
        (
            "gwindow",
            group
                .map(|g| g.window_seconds.to_string())
                .unwrap_or_default(),
        ),
        ("created", campaign.created_at.0.to_string()),
        ("shards", campaign.shards.to_string()),
        (
            "qrate",
            queue
                .map(|q| q.admit_per_second.to_string())
                .unwrap_or_default(),
        ),
        (
            "qpass",
            queue
                .map(|q| q.pass_seconds.to_string())
                .unwrap_or_default(),
        ),
    ]
}

/// The campaign hash's config and counter fields (what [`campaign_state`] reads).
pub const CAMPAIGN_FIELDS: [&str; 20] = [
    "shards",
    "kind",
    "sku",
    "stock",
    "limit",
    "starts",
    "ends",
    "hold",
    "maxext",
    "gsize",
    "gwindow",
    "created",
    "available",
    "held",
    "confirmed",
    "gopen",
    "gformed",
    "gfailed",
    "qrate",
    "qpass",
];

/// Decodes a campaign hash back into its state.
pub fn campaign_state(
    id: &CampaignId,
    hash: &HashMap<String, String>,
) -> Result<CampaignState, EngineError> {
    let corrupt =
        |field: &str| EngineError::Corrupt(format!("campaign {id}: bad or missing {field}"));
    let text = |field: &str| hash.get(field).ok_or_else(|| corrupt(field));
    let number = |field: &str| -> Result<u64, EngineError> {
        text(field)?.parse().map_err(|_| corrupt(field))
    };
    let optional = |field: &str| -> Result<Option<i64>, EngineError> {
        match text(field)?.as_str() {
            "" => Ok(None),
            raw => raw.parse().map(Some).map_err(|_| corrupt(field)),
        }
    };
    let counter = |field: &str| -> Result<u64, EngineError> {
        hash.get(field)
            .map_or(Ok(0), |v| v.parse().map_err(|_| corrupt(field)))
    };
    let small = |field: &str| -> Result<u32, EngineError> {
        u32::try_from(number(field)?).map_err(|_| corrupt(field))
    };
    let group = match (optional("gsize")?, optional("gwindow")?) {
        (Some(size), Some(window)) => Some(GroupRule {
            size: u32::try_from(size).map_err(|_| corrupt("gsize"))?,
            window_seconds: u32::try_from(window).map_err(|_| corrupt("gwindow"))?,
        }),
        _ => None,
    };
    // Campaigns loaded before waiting rooms existed have no fields: no waiting room.
    let queue_field = |field: &str| -> Result<Option<u32>, EngineError> {
        match hash.get(field).map(String::as_str) {
            None | Some("") => Ok(None),
            Some(raw) => raw.parse().map(Some).map_err(|_| corrupt(field)),
        }
    };
    let queue = match (queue_field("qrate")?, queue_field("qpass")?) {
        (Some(admit_per_second), Some(pass_seconds)) => Some(QueueRule {
            admit_per_second,
            pass_seconds,
        }),
        _ => None,
    };
    Ok(CampaignState {
        campaign: Campaign {
            id: id.clone(),
            kind: CampaignKind::parse(text("kind")?).map_err(|_| corrupt("kind"))?,
            sku: text("sku")?.clone(),
            stock: number("stock")?,
            per_user_limit: small("limit")?,
            starts_at: optional("starts")?.map(Millis),
            ends_at: optional("ends")?.map(Millis),
            hold_seconds: small("hold")?,
            // Campaigns loaded before extensions existed have no field: the default.
            max_extend_seconds: match hash.get("maxext") {
                Some(raw) => raw.parse().map_err(|_| corrupt("maxext"))?,
                None => Campaign::DEFAULT_MAX_EXTEND_SECONDS,
            },
            group,
            queue,
            // Campaigns loaded before shards existed have no field: one.
            shards: match hash.get("shards") {
                Some(raw) => raw.parse().map_err(|_| corrupt("shards"))?,
                None => 1,
            },
            created_at: Millis(optional("created")?.unwrap_or_default()),
        },
        available: number("available")?,
        held: number("held")?,
        confirmed: number("confirmed")?,
        groups: GroupCounts {
            open: counter("gopen")?,
            formed: counter("gformed")?,
            failed: counter("gfailed")?,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reservation_event_decodes_with_its_idempotency_record() {
        let campaign = CampaignId::parse("c1").expect("valid");
        let id = ReservationId::generate(&campaign);
        let raw = [
            "reservation.held",
            "5",
            id.as_str(),
            "李雷 | a:b",
            "2",
            "held",
            "5",
            "9",
            "",
            "3:u/x/k",
            "2:x",
        ]
        .join("\x1f");
        let events = events_from(&campaign, "7-1", &raw).expect("decodes");
        let [event] = <[Event; 1]>::try_from(events).expect("one event");
        let Change::Reservation {
            reservation,
            idempotency,
        } = event.change
        else {
            panic!("a reservation event");
        };
        assert_eq!(reservation.user_id.as_str(), "李雷 | a:b");
        assert_eq!(reservation.quantity.get(), 2);
        assert_eq!(
            idempotency.map(|(k, f)| (k.to_string(), f)),
            Some(("3:u/x/k".into(), "2:x".into()))
        );
    }

    #[test]
    fn an_entry_of_a_batch_gives_each_event_its_own_position() {
        let campaign = CampaignId::parse("c1").expect("valid");
        let one = |n: &str| {
            let id = ReservationId::generate(&campaign);
            [
                "reservation.held",
                "5",
                id.as_str(),
                n,
                "1",
                "held",
                "5",
                "9",
                "",
            ]
            .join("\x1f")
        };
        let entry = [one("a"), one("b"), one("c")].join("\x1e");
        let events = events_from(&campaign, "7-1", &entry).expect("decodes");
        let positions: Vec<String> = events.iter().map(|e| e.position.to_string()).collect();
        assert_eq!(positions, ["7-1", "7-1.1", "7-1.2"]);
        assert!(events.windows(2).all(|w| w[0].position < w[1].position));
        assert!(events.iter().all(|e| e.position.entry() == "7-1"));
        let parsed: Vec<StreamPosition> = positions
            .iter()
            .filter_map(|p| StreamPosition::parse(p))
            .collect();
        assert_eq!(
            parsed,
            events.iter().map(|e| e.position).collect::<Vec<_>>()
        );
    }
}
