//! Events set aside instead of applied (`dead_events`), with why: the durable path never
//! stops for one bad event, and nothing set aside is silently dropped.

use super::{on_pool, Store, StoreError};
use crate::domain::{
    CampaignId, Change, Event, Group, GroupId, GroupStatus, Millis, Quantity, Reservation,
    ReservationId, ReservationStatus, ScopedKey, StreamPosition, UserId,
};
use crate::engine::Epochs;
use serde::{Deserialize, Serialize};

/// Why an event was set aside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The database refused it (a constraint); it can be retried once the cause is fixed.
    Refused,
    /// Its campaign is unknown to the database (a Redis holding another database's data).
    UnknownCampaign,
    /// Decided by an engine dataset that was lost, after the campaign was rebuilt without
    /// it: applying it now would count units the engine no longer holds. Its 201 was inside
    /// Redis's loss window; kept for the record, never retried.
    Fenced,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Refused => "refused",
            Reason::UnknownCampaign => "unknown_campaign",
            Reason::Fenced => "fenced",
        }
    }
}

/// An event as `dead_events.event` keeps it: every field needed to apply it later.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
enum StoredChange {
    Reservation {
        id: String,
        user_id: String,
        quantity: u32,
        status: String,
        created_at_ms: i64,
        expires_at_ms: i64,
        group_id: Option<String>,
        key: Option<String>,
        fingerprint: Option<String>,
        /// `reservation.extended` rather than a status change.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        extended: bool,
    },
    Group {
        id: String,
        leader_user_id: String,
        size: u32,
        status: String,
        created_at_ms: i64,
        expires_at_ms: i64,
    },
    Stock {
        stock: u64,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredEvent {
    at_ms: i64,
    #[serde(flatten)]
    change: StoredChange,
}

fn encode(event: &Event) -> String {
    let (reservation, idempotency, extended) = match &event.change {
        Change::Reservation {
            reservation,
            idempotency,
        } => (Some(reservation), idempotency.as_ref(), false),
        Change::Extended { reservation } => (Some(reservation), None, true),
        _ => (None, None, false),
    };
    let change = match (&event.change, reservation) {
        (_, Some(r)) => StoredChange::Reservation {
            id: r.id.to_string(),
            user_id: r.user_id.to_string(),
            quantity: r.quantity.get(),
            status: r.status.as_str().to_owned(),
            created_at_ms: r.created_at.0,
            expires_at_ms: r.expires_at.0,
            group_id: r.group_id.as_ref().map(ToString::to_string),
            key: idempotency.map(|(k, _)| k.to_string()),
            fingerprint: idempotency.map(|(_, f)| f.clone()),
            extended,
        },
        (Change::Group { group: g }, None) => StoredChange::Group {
            id: g.id.to_string(),
            leader_user_id: g.leader_user_id.to_string(),
            size: g.size,
            status: g.status.as_str().to_owned(),
            created_at_ms: g.created_at.0,
            expires_at_ms: g.expires_at.0,
        },
        (Change::Stock { stock }, None) => StoredChange::Stock { stock: *stock },
        (Change::Reservation { .. } | Change::Extended { .. }, None) => {
            unreachable!("a reservation change carries its reservation")
        }
    };
    let stored = StoredEvent {
        at_ms: event.at.0,
        change,
    };
    serde_json::to_string(&stored).unwrap_or_else(|_| "{}".to_owned())
}

fn decode(campaign: &str, stream_id: &str, raw: &str) -> Result<Event, StoreError> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("dead event {stream_id}: {what}"));
    let stored: StoredEvent = serde_json::from_str(raw).map_err(|e| corrupt(&e.to_string()))?;
    let campaign_id = CampaignId::parse_shard(campaign).map_err(|e| corrupt(&e.0))?;
    let change = match stored.change {
        StoredChange::Reservation {
            id,
            user_id,
            quantity,
            status,
            created_at_ms,
            expires_at_ms,
            group_id,
            key,
            fingerprint,
            extended,
        } => {
            let reservation = Reservation {
                id: ReservationId::parse(&id).map_err(|e| corrupt(&e.0))?,
                campaign_id: campaign_id.clone(),
                user_id: UserId::parse(&user_id).map_err(|e| corrupt(&e.0))?,
                quantity: Quantity::parse(u64::from(quantity)).map_err(|e| corrupt(&e.0))?,
                status: ReservationStatus::parse(&status).ok_or_else(|| corrupt(&status))?,
                created_at: Millis(created_at_ms),
                expires_at: Millis(expires_at_ms),
                group_id: group_id
                    .map(|g| GroupId::parse(&g).map_err(|e| corrupt(&e.0)))
                    .transpose()?,
            };
            if extended {
                Change::Extended { reservation }
            } else {
                Change::Reservation {
                    reservation,
                    idempotency: key.map(ScopedKey::from_stored).zip(fingerprint),
                }
            }
        }
        StoredChange::Group {
            id,
            leader_user_id,
            size,
            status,
            created_at_ms,
            expires_at_ms,
        } => Change::Group {
            group: Group {
                id: GroupId::parse(&id).map_err(|e| corrupt(&e.0))?,
                campaign_id: campaign_id.clone(),
                leader_user_id: UserId::parse(&leader_user_id).map_err(|e| corrupt(&e.0))?,
                size,
                status: GroupStatus::parse(&status).ok_or_else(|| corrupt(&status))?,
                created_at: Millis(created_at_ms),
                expires_at: Millis(expires_at_ms),
                members: Vec::new(),
            },
        },
        StoredChange::Stock { stock } => Change::Stock { stock },
    };
    Ok(Event {
        campaign_id,
        position: StreamPosition::parse(stream_id).ok_or_else(|| corrupt("stream id"))?,
        at: Millis(stored.at_ms),
        change,
    })
}

const INSERT: &str = "INSERT INTO dead_events \
    (campaign_id, stream_id, epoch, type, event, reason, error, failed_at_ms) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (campaign_id, stream_id, epoch) DO NOTHING";

/// Counts by reason, as the persister reports them.
fn counts(dead: &[(Event, Reason, String)]) -> Vec<(&'static str, u64)> {
    let mut counts: Vec<(&'static str, u64)> = Vec::new();
    for (_, reason, _) in dead {
        match counts.iter_mut().find(|(r, _)| *r == reason.as_str()) {
            Some((_, n)) => *n += 1,
            None => counts.push((reason.as_str(), 1)),
        }
    }
    counts
}

macro_rules! insert_all {
    ($tx:expr, $epochs:expr, $dead:expr) => {{
        let now = Millis::now().0;
        for (event, reason, error) in $dead {
            sqlx::query(INSERT)
                .bind(event.campaign_id.as_str())
                .bind(event.position.to_string())
                .bind($epochs.of(&event.campaign_id))
                .bind(event.change.kind())
                .bind(encode(event))
                .bind(reason.as_str())
                .bind(error)
                .bind(now)
                .execute(&mut *$tx)
                .await?;
        }
        Ok(counts($dead))
    }};
}

pub(super) async fn insert_postgres(
    tx: &mut sqlx::PgConnection,
    epochs: &Epochs,
    dead: &[(Event, Reason, String)],
) -> Result<Vec<(&'static str, u64)>, StoreError> {
    insert_all!(tx, epochs, dead)
}

pub(super) async fn insert_sqlite(
    tx: &mut sqlx::SqliteConnection,
    epochs: &Epochs,
    dead: &[(Event, Reason, String)],
) -> Result<Vec<(&'static str, u64)>, StoreError> {
    insert_all!(tx, epochs, dead)
}

/// One `dead_events` row, as operators list it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeadEvent {
    pub id: i64,
    pub campaign_id: String,
    pub stream_id: String,
    pub epoch: String,
    #[sqlx(rename = "type")]
    pub kind: String,
    pub event: String,
    pub reason: String,
    pub error: String,
    pub failed_at_ms: i64,
}

impl Store {
    /// Sets `events` aside in a transaction of their own.
    pub(super) async fn set_aside(
        &self,
        epochs: &Epochs,
        events: &[Event],
        reason: Reason,
        error: &str,
    ) -> Result<(), StoreError> {
        let dead: Vec<(Event, Reason, String)> = events
            .iter()
            .map(|e| (e.clone(), reason, error.to_owned()))
            .collect();
        match self {
            Store::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                insert_postgres(&mut tx, epochs, &dead).await?;
                tx.commit().await?;
            }
            Store::Sqlite(pool) => {
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                insert_sqlite(&mut tx, epochs, &dead).await?;
                tx.commit().await?;
            }
        }
        Ok(())
    }

    /// Every event set aside, oldest first.
    pub async fn dead_events(&self) -> Result<Vec<DeadEvent>, StoreError> {
        const SQL: &str = "SELECT id, campaign_id, stream_id, epoch, type, event, reason, error, \
            failed_at_ms FROM dead_events ORDER BY id";
        Ok(on_pool!(self, pool => sqlx::query_as(SQL).fetch_all(pool).await?))
    }

    /// Applies the events the database refused once more (after the cause was fixed);
    /// those that now go in leave `dead_events`. Fenced events are never retried: their
    /// campaign was rebuilt without them. Returns (retried, still refused).
    pub async fn retry_dead_events(&self) -> Result<(u64, u64), StoreError> {
        let (mut retried, mut refused) = (0, 0);
        for dead in self.dead_events().await? {
            if dead.reason != Reason::Refused.as_str() {
                continue;
            }
            let event = decode(&dead.campaign_id, &dead.stream_id, &dead.event)?;
            let epochs = Epochs::one(&event.campaign_id, &dead.epoch);
            match self
                .persist_once(&epochs, std::slice::from_ref(&event))
                .await
            {
                Ok(_) => {
                    on_pool!(self, pool => sqlx::query("DELETE FROM dead_events WHERE id = $1")
                        .bind(dead.id)
                        .execute(pool)
                        .await
                        .map(|_| ())?);
                    retried += 1;
                }
                Err(error) if super::batch::refusal(&error).is_some() => refused += 1,
                Err(other) => return Err(other),
            }
        }
        Ok((retried, refused))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_event_reads_back_as_it_was() {
        let campaign = CampaignId::parse("c1").expect("valid");
        let event = Event {
            campaign_id: campaign.clone(),
            position: StreamPosition {
                ms: 5,
                seq: 2,
                index: 0,
            },
            at: Millis(7),
            change: Change::Reservation {
                reservation: Reservation {
                    id: ReservationId::generate(&campaign),
                    campaign_id: campaign.clone(),
                    user_id: UserId::parse("李雷 | a:b").expect("valid"),
                    quantity: Quantity::ONE,
                    status: ReservationStatus::Held,
                    created_at: Millis(7),
                    expires_at: Millis(9),
                    group_id: None,
                },
                idempotency: Some((ScopedKey::from_stored("3:u/x/k".into()), "1:x".into())),
            },
        };
        let back = decode("c1", "5-2", &encode(&event)).expect("decodes");
        assert_eq!(back, event);
    }
}
