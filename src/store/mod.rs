//! The durable record in a SQL database (sqlx): Postgres in production, an embedded SQLite
//! file by default. Knows nothing of Redis; it stores campaigns, the current state of every
//! reservation and the append-only event feed. Migrations are in `migrations/`.

use crate::domain::{
    Campaign, CampaignId, CampaignKind, Group, GroupId, GroupRule, GroupStatus, Millis,
    Reservation, ReservationId, ReservationStatus, UserId,
};
use crate::engine::{Change, Event, RestoredReservation};
use serde::Serialize;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::{QueryBuilder, Row};
use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("the database holds something unexpected: {0}")]
    Corrupt(String),
}

/// The database, whichever kind. Cheap to clone (a pool).
#[derive(Clone)]
pub enum Store {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

/// Any transaction that writes events takes this advisory lock first, so event cursors are
/// committed in the order they are assigned and a feed reader never skips one.
const EVENTS_LOCK: i64 = 0x00f1_a5b5_a1e0;

/// One feed row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FeedEvent {
    pub cursor: i64,
    #[serde(rename = "type")]
    pub kind: String,
    pub at: Millis,
    #[serde(flatten)]
    pub payload: serde_json::Map<String, serde_json::Value>,
}

/// Units of a campaign, counted the way the engine counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredCounts {
    pub stock: u64,
    pub held: u64,
    pub confirmed: u64,
}

impl Store {
    /// Connects (Postgres at `url`, or the SQLite file at `sqlite_path`) and migrates.
    pub async fn connect(url: Option<&str>, sqlite_path: &str) -> Result<Self, StoreError> {
        let store = match url {
            Some(url) => Store::Postgres(
                PgPoolOptions::new()
                    .max_connections(8)
                    .acquire_timeout(Duration::from_secs(3))
                    .connect(url)
                    .await?,
            ),
            None => {
                let options = SqliteConnectOptions::from_str(&format!("sqlite://{sqlite_path}"))?
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .busy_timeout(Duration::from_secs(5));
                Store::Sqlite(
                    SqlitePoolOptions::new()
                        .max_connections(4)
                        .connect_with(options)
                        .await?,
                )
            }
        };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        match self {
            Store::Postgres(pool) => sqlx::migrate!("migrations/postgres").run(pool).await?,
            Store::Sqlite(pool) => sqlx::migrate!("migrations/sqlite").run(pool).await?,
        }
        Ok(())
    }

    /// `postgres` or `sqlite`.
    pub fn name(&self) -> &'static str {
        match self {
            Store::Postgres(_) => "postgres",
            Store::Sqlite(_) => "sqlite",
        }
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Store::Postgres(pool) => {
                sqlx::query("SELECT 1").execute(pool).await?;
            }
            Store::Sqlite(pool) => {
                sqlx::query("SELECT 1").execute(pool).await?;
            }
        }
        Ok(())
    }

    /// Records a new campaign; `false` if one with the id exists.
    pub async fn insert_campaign(&self, c: &Campaign) -> Result<bool, StoreError> {
        const SQL: &str =
            "INSERT INTO campaigns (id, kind, sku, stock, per_user_limit, starts_at_ms, \
            ends_at_ms, hold_seconds, group_size, group_window_seconds, created_at_ms) \
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT (id) DO NOTHING";
        let stock = c.stock as i64;
        let group = c.group;
        macro_rules! bind_all {
            ($q:expr) => {
                $q.bind(c.id.as_str())
                    .bind(c.kind.as_str())
                    .bind(&c.sku)
                    .bind(stock)
                    .bind(i64::from(c.per_user_limit))
                    .bind(c.starts_at.map(|m| m.0))
                    .bind(c.ends_at.map(|m| m.0))
                    .bind(i64::from(c.hold_seconds))
                    .bind(group.map(|g| i64::from(g.size)))
                    .bind(group.map(|g| i64::from(g.window_seconds)))
                    .bind(c.created_at.0)
            };
        }
        let affected = match self {
            Store::Postgres(pool) => bind_all!(sqlx::query(SQL))
                .execute(pool)
                .await?
                .rows_affected(),
            Store::Sqlite(pool) => bind_all!(sqlx::query(SQL))
                .execute(pool)
                .await?
                .rows_affected(),
        };
        Ok(affected == 1)
    }

    /// Every campaign.
    pub async fn campaigns(&self) -> Result<Vec<Campaign>, StoreError> {
        self.select_campaigns(None).await
    }

    /// One campaign (recovery asks for a single id on a request's path; no full scan).
    pub async fn campaign(&self, id: &CampaignId) -> Result<Option<Campaign>, StoreError> {
        Ok(self.select_campaigns(Some(id)).await?.pop())
    }

    async fn select_campaigns(
        &self,
        only: Option<&CampaignId>,
    ) -> Result<Vec<Campaign>, StoreError> {
        macro_rules! select {
            ($tail:literal) => {
                concat!(
                    "SELECT id, kind, sku, stock, per_user_limit, starts_at_ms, ends_at_ms, ",
                    "hold_seconds, group_size, group_window_seconds, created_at_ms FROM campaigns",
                    $tail
                )
            };
        }
        const ALL: &str = select!(" ORDER BY id");
        const ONE: &str = select!(" WHERE id = $1");
        macro_rules! decode {
            ($rows:expr) => {
                $rows
                    .iter()
                    .map(|row| {
                        let corrupt =
                            |e: &dyn std::fmt::Display| StoreError::Corrupt(e.to_string());
                        let id: String = row.try_get("id")?;
                        let kind: String = row.try_get("kind")?;
                        let group_size: Option<i64> = row.try_get("group_size")?;
                        let group_window: Option<i64> = row.try_get("group_window_seconds")?;
                        Ok(Campaign {
                            id: CampaignId::parse(&id).map_err(|e| corrupt(&e))?,
                            kind: CampaignKind::parse(&kind).map_err(|e| corrupt(&e))?,
                            sku: row.try_get("sku")?,
                            stock: row.try_get::<i64, _>("stock")? as u64,
                            per_user_limit: row.try_get::<i64, _>("per_user_limit")? as u32,
                            starts_at: row.try_get::<Option<i64>, _>("starts_at_ms")?.map(Millis),
                            ends_at: row.try_get::<Option<i64>, _>("ends_at_ms")?.map(Millis),
                            hold_seconds: row.try_get::<i64, _>("hold_seconds")? as u32,
                            group: match (group_size, group_window) {
                                (Some(size), Some(window)) => Some(GroupRule {
                                    size: size as u32,
                                    window_seconds: window as u32,
                                }),
                                _ => None,
                            },
                            created_at: Millis(row.try_get("created_at_ms")?),
                        })
                    })
                    .collect::<Result<Vec<_>, StoreError>>()
            };
        }
        match (self, only) {
            (Store::Postgres(pool), None) => decode!(sqlx::query(ALL).fetch_all(pool).await?),
            (Store::Postgres(pool), Some(id)) => {
                decode!(sqlx::query(ONE).bind(id.as_str()).fetch_all(pool).await?)
            }
            (Store::Sqlite(pool), None) => decode!(sqlx::query(ALL).fetch_all(pool).await?),
            (Store::Sqlite(pool), Some(id)) => {
                decode!(sqlx::query(ONE).bind(id.as_str()).fetch_all(pool).await?)
            }
        }
    }

    /// The campaign's units as the database records them, counted as the engine counts
    /// them: reservations outside groups by status; an open group holds its whole `size`
    /// (held, less the members who paid), a formed group's `size` is confirmed. Summed by
    /// the database: reconcile runs this every few seconds, also mid-sale with a million
    /// live holds.
    pub async fn counts(&self, campaign: &Campaign) -> Result<StoredCounts, StoreError> {
        const SQL: &str = "SELECT \
            (SELECT CAST(COALESCE(SUM(quantity), 0) AS BIGINT) FROM reservations \
                WHERE campaign_id = $1 AND status = 'held' AND group_id IS NULL) AS held, \
            (SELECT CAST(COALESCE(SUM(quantity), 0) AS BIGINT) FROM reservations \
                WHERE campaign_id = $1 AND status = 'confirmed' AND group_id IS NULL) AS confirmed, \
            (SELECT CAST(COALESCE(SUM(r.quantity), 0) AS BIGINT) FROM reservations r \
                JOIN groups g ON g.id = r.group_id \
                WHERE r.campaign_id = $1 AND r.status = 'confirmed' AND g.status = 'open') AS paid, \
            (SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM groups \
                WHERE campaign_id = $1 AND status = 'open') AS open_units, \
            (SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM groups \
                WHERE campaign_id = $1 AND status = 'formed') AS formed_units";
        macro_rules! decode {
            ($row:expr) => {{
                let row = $row;
                let units = |name: &str| -> Result<u64, StoreError> {
                    let n: i64 = row.try_get(name)?;
                    u64::try_from(n).map_err(|_| StoreError::Corrupt(format!("{name} = {n}")))
                };
                let (held, confirmed, paid) = (units("held")?, units("confirmed")?, units("paid")?);
                let (open, formed) = (units("open_units")?, units("formed_units")?);
                Ok(StoredCounts {
                    stock: campaign.stock,
                    held: (held + open).saturating_sub(paid),
                    confirmed: confirmed + formed + paid,
                })
            }};
        }
        match self {
            Store::Postgres(pool) => decode!(
                sqlx::query(SQL)
                    .bind(campaign.id.as_str())
                    .fetch_one(pool)
                    .await?
            ),
            Store::Sqlite(pool) => decode!(
                sqlx::query(SQL)
                    .bind(campaign.id.as_str())
                    .fetch_one(pool)
                    .await?
            ),
        }
    }

    /// The held and confirmed reservations of a campaign, with their idempotency records.
    pub async fn live_reservations(
        &self,
        campaign: &CampaignId,
    ) -> Result<Vec<RestoredReservation>, StoreError> {
        const SQL: &str =
            "SELECT id, user_id, quantity, status, created_at_ms, expires_at_ms, group_id, \
            idempotency_key, fingerprint FROM reservations \
            WHERE campaign_id = $1 AND status IN ('held', 'confirmed') ORDER BY id";
        macro_rules! decode {
            ($rows:expr) => {
                $rows
                    .iter()
                    .map(|row| {
                        let corrupt =
                            |what: &str| StoreError::Corrupt(format!("reservation {what}"));
                        let id: String = row.try_get("id")?;
                        let user: String = row.try_get("user_id")?;
                        let status: String = row.try_get("status")?;
                        Ok(RestoredReservation {
                            reservation: Reservation {
                                id: ReservationId::parse(&id).map_err(|_| corrupt(&id))?,
                                campaign_id: campaign.clone(),
                                user_id: UserId::parse(&user).map_err(|_| corrupt(&user))?,
                                quantity: row.try_get::<i64, _>("quantity")? as u32,
                                status: ReservationStatus::parse(&status)
                                    .ok_or_else(|| corrupt(&status))?,
                                created_at: Millis(row.try_get("created_at_ms")?),
                                expires_at: Millis(row.try_get("expires_at_ms")?),
                                group_id: row.try_get("group_id")?,
                            },
                            idempotency_key: row.try_get("idempotency_key")?,
                            fingerprint: row.try_get("fingerprint")?,
                        })
                    })
                    .collect::<Result<Vec<_>, StoreError>>()
            };
        }
        match self {
            Store::Postgres(pool) => decode!(
                sqlx::query(SQL)
                    .bind(campaign.as_str())
                    .fetch_all(pool)
                    .await?
            ),
            Store::Sqlite(pool) => decode!(
                sqlx::query(SQL)
                    .bind(campaign.as_str())
                    .fetch_all(pool)
                    .await?
            ),
        }
    }

    /// Every group of a campaign (any status), members left empty.
    pub async fn groups(&self, campaign: &CampaignId) -> Result<Vec<Group>, StoreError> {
        const SQL: &str = "SELECT id, leader_user_id, size, status, created_at_ms, expires_at_ms \
            FROM groups WHERE campaign_id = $1 ORDER BY id";
        macro_rules! decode {
            ($rows:expr) => {
                $rows
                    .iter()
                    .map(|row| {
                        let corrupt = |what: &str| StoreError::Corrupt(format!("group {what}"));
                        let id: String = row.try_get("id")?;
                        let leader: String = row.try_get("leader_user_id")?;
                        let status: String = row.try_get("status")?;
                        Ok(Group {
                            id: GroupId::parse(&id).map_err(|_| corrupt(&id))?,
                            campaign_id: campaign.clone(),
                            leader_user_id: UserId::parse(&leader).map_err(|_| corrupt(&leader))?,
                            size: row.try_get::<i64, _>("size")? as u32,
                            status: GroupStatus::parse(&status).ok_or_else(|| corrupt(&status))?,
                            created_at: Millis(row.try_get("created_at_ms")?),
                            expires_at: Millis(row.try_get("expires_at_ms")?),
                            members: Vec::new(),
                        })
                    })
                    .collect::<Result<Vec<_>, StoreError>>()
            };
        }
        match self {
            Store::Postgres(pool) => decode!(
                sqlx::query(SQL)
                    .bind(campaign.as_str())
                    .fetch_all(pool)
                    .await?
            ),
            Store::Sqlite(pool) => decode!(
                sqlx::query(SQL)
                    .bind(campaign.as_str())
                    .fetch_all(pool)
                    .await?
            ),
        }
    }

    /// Writes a batch of events in one transaction: each event once (by campaign and stream
    /// position), each reservation's newest state, each campaign's newest stock.
    pub async fn persist(&self, events: &[Event]) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let batch = Batch::of(events)?;
        match self {
            Store::Postgres(pool) => batch.write_postgres(pool).await,
            Store::Sqlite(pool) => batch.write_sqlite(pool).await,
        }
    }

    /// Up to `limit` feed events after `cursor`, in cursor order.
    pub async fn events_after(
        &self,
        cursor: i64,
        limit: i64,
    ) -> Result<Vec<FeedEvent>, StoreError> {
        const SQL: &str = "SELECT cursor, type, at_ms, payload FROM events WHERE cursor > $1 ORDER BY cursor LIMIT $2";
        macro_rules! decode {
            ($rows:expr) => {
                $rows
                    .iter()
                    .map(|row| {
                        let payload: String = row.try_get("payload")?;
                        let payload = serde_json::from_str(&payload)
                            .map_err(|e| StoreError::Corrupt(format!("event payload: {e}")))?;
                        Ok(FeedEvent {
                            cursor: row.try_get("cursor")?,
                            kind: row.try_get("type")?,
                            at: Millis(row.try_get("at_ms")?),
                            payload,
                        })
                    })
                    .collect::<Result<Vec<_>, StoreError>>()
            };
        }
        match self {
            Store::Postgres(pool) => decode!(
                sqlx::query(SQL)
                    .bind(cursor)
                    .bind(limit)
                    .fetch_all(pool)
                    .await?
            ),
            Store::Sqlite(pool) => decode!(
                sqlx::query(SQL)
                    .bind(cursor)
                    .bind(limit)
                    .fetch_all(pool)
                    .await?
            ),
        }
    }
}

/// A batch of events, shaped into rows.
struct Batch {
    events: Vec<EventRow>,
    reservations: Vec<ReservationRow>,
    groups: Vec<GroupRow>,
    stocks: Vec<(String, i64, i64, i64)>,
}

struct EventRow {
    campaign_id: String,
    stream_id: String,
    kind: String,
    at_ms: i64,
    payload: String,
}

struct GroupRow {
    id: String,
    campaign_id: String,
    leader_user_id: String,
    size: i64,
    status: String,
    created_at_ms: i64,
    expires_at_ms: i64,
    event_ms: i64,
    event_seq: i64,
}

struct ReservationRow {
    id: String,
    campaign_id: String,
    user_id: String,
    quantity: i64,
    status: String,
    created_at_ms: i64,
    expires_at_ms: i64,
    group_id: Option<String>,
    idempotency_key: Option<String>,
    fingerprint: Option<String>,
    event_ms: i64,
    event_seq: i64,
}

impl Batch {
    fn of(events: &[Event]) -> Result<Self, StoreError> {
        let mut rows = Vec::with_capacity(events.len());
        let mut newest: HashMap<&ReservationId, ReservationRow> = HashMap::new();
        let mut stocks: HashMap<&CampaignId, (i64, i64, i64)> = HashMap::new();
        let mut groups: HashMap<String, GroupRow> = HashMap::new();
        for event in events {
            let position = event.position;
            match &event.change {
                Change::Reservation {
                    reservation,
                    idempotency,
                } => {
                    let payload =
                        serde_json::to_string(&serde_json::json!({ "reservation": reservation }))
                            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                    rows.push(EventRow {
                        campaign_id: event.campaign_id.to_string(),
                        stream_id: position.to_string(),
                        kind: event.kind(),
                        at_ms: event.at.0,
                        payload,
                    });
                    let row = ReservationRow {
                        id: reservation.id.to_string(),
                        campaign_id: event.campaign_id.to_string(),
                        user_id: reservation.user_id.to_string(),
                        quantity: i64::from(reservation.quantity),
                        status: reservation.status.as_str().to_owned(),
                        created_at_ms: reservation.created_at.0,
                        expires_at_ms: reservation.expires_at.0,
                        group_id: reservation.group_id.clone(),
                        idempotency_key: idempotency.as_ref().map(|(k, _)| k.clone()),
                        fingerprint: idempotency.as_ref().map(|(_, f)| f.clone()),
                        event_ms: position.ms,
                        event_seq: position.seq,
                    };
                    match newest.get_mut(&reservation.id) {
                        Some(kept)
                            if (kept.event_ms, kept.event_seq) >= (row.event_ms, row.event_seq) => {
                        }
                        Some(kept) => {
                            let key = kept.idempotency_key.take().or(row.idempotency_key.clone());
                            let fingerprint = kept.fingerprint.take().or(row.fingerprint.clone());
                            *kept = ReservationRow {
                                idempotency_key: key,
                                fingerprint,
                                ..row
                            };
                        }
                        None => {
                            newest.insert(&reservation.id, row);
                        }
                    }
                }
                Change::Group { group } => {
                    let payload = serde_json::json!({ "group": {
                        "id": group.id.as_str(),
                        "campaign_id": group.campaign_id.as_str(),
                        "leader_user_id": group.leader_user_id.as_str(),
                        "size": group.size,
                        "status": group.status.as_str(),
                        "expires_at": group.expires_at,
                    }});
                    rows.push(EventRow {
                        campaign_id: event.campaign_id.to_string(),
                        stream_id: position.to_string(),
                        kind: event.kind(),
                        at_ms: event.at.0,
                        payload: payload.to_string(),
                    });
                    let row = GroupRow {
                        id: group.id.to_string(),
                        campaign_id: event.campaign_id.to_string(),
                        leader_user_id: group.leader_user_id.to_string(),
                        size: i64::from(group.size),
                        status: group.status.as_str().to_owned(),
                        created_at_ms: group.created_at.0,
                        expires_at_ms: group.expires_at.0,
                        event_ms: position.ms,
                        event_seq: position.seq,
                    };
                    let newer = groups.get(&row.id).is_none_or(|kept| {
                        (kept.event_ms, kept.event_seq) < (row.event_ms, row.event_seq)
                    });
                    if newer {
                        groups.insert(row.id.clone(), row);
                    }
                }
                Change::Stock { stock } => {
                    let entry = stocks.entry(&event.campaign_id).or_insert((0, 0, 0));
                    if (position.ms, position.seq) > (entry.1, entry.2) {
                        *entry = (*stock as i64, position.ms, position.seq);
                    }
                }
            }
        }
        Ok(Batch {
            events: rows,
            reservations: newest.into_values().collect(),
            groups: groups.into_values().collect(),
            stocks: stocks
                .into_iter()
                .map(|(id, (stock, ms, seq))| (id.to_string(), stock, ms, seq))
                .collect(),
        })
    }

    async fn write_postgres(&self, pool: &PgPool) -> Result<(), StoreError> {
        let mut tx = pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(EVENTS_LOCK)
            .execute(&mut *tx)
            .await?;
        let e = &self.events;
        sqlx::query(
            "INSERT INTO events (campaign_id, stream_id, type, at_ms, payload) \
             SELECT c, s, t, a, p FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[]) \
             WITH ORDINALITY AS x(c, s, t, a, p, n) ORDER BY n \
             ON CONFLICT (campaign_id, stream_id) DO NOTHING",
        )
        .bind(e.iter().map(|r| r.campaign_id.clone()).collect::<Vec<_>>())
        .bind(e.iter().map(|r| r.stream_id.clone()).collect::<Vec<_>>())
        .bind(e.iter().map(|r| r.kind.clone()).collect::<Vec<_>>())
        .bind(e.iter().map(|r| r.at_ms).collect::<Vec<_>>())
        .bind(e.iter().map(|r| r.payload.clone()).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
        let g = &self.groups;
        sqlx::query(
            "INSERT INTO groups (id, campaign_id, leader_user_id, size, status, created_at_ms, \
             expires_at_ms, event_ms, event_seq) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], \
             $6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[]) \
             ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status, event_ms = EXCLUDED.event_ms, \
             event_seq = EXCLUDED.event_seq \
             WHERE (groups.event_ms, groups.event_seq) < (EXCLUDED.event_ms, EXCLUDED.event_seq)",
        )
        .bind(g.iter().map(|x| x.id.clone()).collect::<Vec<_>>())
        .bind(g.iter().map(|x| x.campaign_id.clone()).collect::<Vec<_>>())
        .bind(g.iter().map(|x| x.leader_user_id.clone()).collect::<Vec<_>>())
        .bind(g.iter().map(|x| x.size).collect::<Vec<_>>())
        .bind(g.iter().map(|x| x.status.clone()).collect::<Vec<_>>())
        .bind(g.iter().map(|x| x.created_at_ms).collect::<Vec<_>>())
        .bind(g.iter().map(|x| x.expires_at_ms).collect::<Vec<_>>())
        .bind(g.iter().map(|x| x.event_ms).collect::<Vec<_>>())
        .bind(g.iter().map(|x| x.event_seq).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
        let r = &self.reservations;
        sqlx::query(
            "INSERT INTO reservations (id, campaign_id, user_id, quantity, status, created_at_ms, \
             expires_at_ms, group_id, idempotency_key, fingerprint, event_ms, event_seq) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::bigint[], \
             $7::bigint[], $8::text[], $9::text[], $10::text[], $11::bigint[], $12::bigint[]) \
             ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status, event_ms = EXCLUDED.event_ms, \
             event_seq = EXCLUDED.event_seq, \
             idempotency_key = COALESCE(reservations.idempotency_key, EXCLUDED.idempotency_key), \
             fingerprint = COALESCE(reservations.fingerprint, EXCLUDED.fingerprint) \
             WHERE (reservations.event_ms, reservations.event_seq) < (EXCLUDED.event_ms, EXCLUDED.event_seq)",
        )
        .bind(r.iter().map(|x| x.id.clone()).collect::<Vec<_>>())
        .bind(r.iter().map(|x| x.campaign_id.clone()).collect::<Vec<_>>())
        .bind(r.iter().map(|x| x.user_id.clone()).collect::<Vec<_>>())
        .bind(r.iter().map(|x| x.quantity).collect::<Vec<_>>())
        .bind(r.iter().map(|x| x.status.clone()).collect::<Vec<_>>())
        .bind(r.iter().map(|x| x.created_at_ms).collect::<Vec<_>>())
        .bind(r.iter().map(|x| x.expires_at_ms).collect::<Vec<_>>())
        .bind(r.iter().map(|x| x.group_id.clone()).collect::<Vec<_>>())
        .bind(r.iter().map(|x| x.idempotency_key.clone()).collect::<Vec<_>>())
        .bind(r.iter().map(|x| x.fingerprint.clone()).collect::<Vec<_>>())
        .bind(r.iter().map(|x| x.event_ms).collect::<Vec<_>>())
        .bind(r.iter().map(|x| x.event_seq).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
        for (id, stock, ms, seq) in &self.stocks {
            sqlx::query(STOCK_SQL)
                .bind(id)
                .bind(stock)
                .bind(ms)
                .bind(seq)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn write_sqlite(&self, pool: &SqlitePool) -> Result<(), StoreError> {
        // SQLite allows one writer at a time, which already orders cursors by commit.
        let mut tx = pool.begin().await?;
        for chunk in self.events.chunks(500) {
            let mut q = QueryBuilder::new(
                "INSERT INTO events (campaign_id, stream_id, type, at_ms, payload) ",
            );
            q.push_values(chunk, |mut b, r| {
                b.push_bind(&r.campaign_id)
                    .push_bind(&r.stream_id)
                    .push_bind(&r.kind)
                    .push_bind(r.at_ms)
                    .push_bind(&r.payload);
            });
            q.push(" ON CONFLICT (campaign_id, stream_id) DO NOTHING");
            q.build().execute(&mut *tx).await?;
        }
        for chunk in self.groups.chunks(500) {
            let mut q = QueryBuilder::new(
                "INSERT INTO groups (id, campaign_id, leader_user_id, size, status, created_at_ms, \
                 expires_at_ms, event_ms, event_seq) ",
            );
            q.push_values(chunk, |mut b, g| {
                b.push_bind(&g.id)
                    .push_bind(&g.campaign_id)
                    .push_bind(&g.leader_user_id)
                    .push_bind(g.size)
                    .push_bind(&g.status)
                    .push_bind(g.created_at_ms)
                    .push_bind(g.expires_at_ms)
                    .push_bind(g.event_ms)
                    .push_bind(g.event_seq);
            });
            q.push(
                " ON CONFLICT (id) DO UPDATE SET status = excluded.status, event_ms = excluded.event_ms, \
                 event_seq = excluded.event_seq \
                 WHERE (groups.event_ms, groups.event_seq) < (excluded.event_ms, excluded.event_seq)",
            );
            q.build().execute(&mut *tx).await?;
        }
        for chunk in self.reservations.chunks(500) {
            let mut q = QueryBuilder::new(
                "INSERT INTO reservations (id, campaign_id, user_id, quantity, status, created_at_ms, \
                 expires_at_ms, group_id, idempotency_key, fingerprint, event_ms, event_seq) ",
            );
            q.push_values(chunk, |mut b, r| {
                b.push_bind(&r.id)
                    .push_bind(&r.campaign_id)
                    .push_bind(&r.user_id)
                    .push_bind(r.quantity)
                    .push_bind(&r.status)
                    .push_bind(r.created_at_ms)
                    .push_bind(r.expires_at_ms)
                    .push_bind(&r.group_id)
                    .push_bind(&r.idempotency_key)
                    .push_bind(&r.fingerprint)
                    .push_bind(r.event_ms)
                    .push_bind(r.event_seq);
            });
            q.push(
                " ON CONFLICT (id) DO UPDATE SET status = excluded.status, event_ms = excluded.event_ms, \
                 event_seq = excluded.event_seq, \
                 idempotency_key = COALESCE(reservations.idempotency_key, excluded.idempotency_key), \
                 fingerprint = COALESCE(reservations.fingerprint, excluded.fingerprint) \
                 WHERE (reservations.event_ms, reservations.event_seq) < (excluded.event_ms, excluded.event_seq)",
            );
            q.build().execute(&mut *tx).await?;
        }
        for (id, stock, ms, seq) in &self.stocks {
            sqlx::query(STOCK_SQL)
                .bind(id)
                .bind(stock)
                .bind(ms)
                .bind(seq)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// A stock event applies only if it is newer than the last one applied.
const STOCK_SQL: &str =
    "UPDATE campaigns SET stock = $2, stock_event_ms = $3, stock_event_seq = $4 \
    WHERE id = $1 AND (stock_event_ms, stock_event_seq) < ($3, $4)";
