//! A persister batch: events shaped into rows (each event once, each reservation's and
//! group's newest state, each campaign's newest stock) and written in one transaction.

use super::fence::Fence;
use super::{Store, StoreError};
use crate::domain::{CampaignId, Change, Event, ReservationId};
use crate::engine::Epochs;
use sqlx::QueryBuilder;
use std::collections::HashMap;

/// Any transaction that writes events takes this advisory lock first, so event cursors are
/// committed in the order they are assigned and a feed reader never skips one.
const EVENTS_LOCK: i64 = 0x00f1_a5b5_a1e0;

impl Store {
    /// Writes a batch of events (each campaign's read under its load epoch in `epochs`) in one transaction: each
    /// event once (by campaign and stream position), each reservation's newest state, each
    /// campaign's newest stock. Events are set aside in `dead_events` instead when their
    /// campaign was loaded again since (`fenced`: decided by a load the engine lost, and
    /// rebuilt without them) or is unknown to the database (`unknown_campaign`); a
    /// batch the database refuses is written event by event and the refused ones are set
    /// aside (`refused`), so one bad event never stops the others. Returns how many were set
    /// aside, by reason.
    pub async fn persist(
        &self,
        epochs: &Epochs,
        events: &[Event],
    ) -> Result<Vec<(&'static str, u64)>, StoreError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        match self.persist_once(epochs, events).await {
            Err(error) if refusal(&error).is_some() && events.len() > 1 => {
                tracing::warn!(%error, events = events.len(), "the database refused a batch; writing its events one by one");
                let mut set_aside = Vec::new();
                for event in events {
                    let one = std::slice::from_ref(event);
                    match self.persist_once(epochs, one).await {
                        Ok(counts) => set_aside.extend(counts),
                        Err(error) => match refusal(&error) {
                            Some(why) => {
                                self.set_aside(epochs, one, super::dead::Reason::Refused, &why)
                                    .await?;
                                set_aside.push((super::dead::Reason::Refused.as_str(), 1));
                            }
                            None => return Err(error),
                        },
                    }
                }
                Ok(set_aside)
            }
            Err(error) => match refusal(&error) {
                Some(why) => {
                    self.set_aside(epochs, events, super::dead::Reason::Refused, &why)
                        .await?;
                    Ok(vec![(super::dead::Reason::Refused.as_str(), 1)])
                }
                None => Err(error),
            },
            ok => ok,
        }
    }

    /// One transaction: the fence, then the rows.
    pub(super) async fn persist_once(
        &self,
        epochs: &Epochs,
        events: &[Event],
    ) -> Result<Vec<(&'static str, u64)>, StoreError> {
        // Campaigns (locked: a rebuild holds its campaign's row), and the shards past the
        // first of sharded ones, which keep their own epochs.
        let (campaigns, shards): (Vec<String>, Vec<String>) = {
            let mut ids: Vec<String> = events.iter().map(|e| e.campaign_id.to_string()).collect();
            ids.sort();
            ids.dedup();
            let shards = ids.iter().filter(|id| id.contains('.')).cloned().collect();
            let mut campaigns: Vec<String> = events
                .iter()
                .map(|e| e.campaign_id.parent().to_string())
                .collect();
            campaigns.sort();
            campaigns.dedup();
            (campaigns, shards)
        };
        match self {
            Store::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(EVENTS_LOCK)
                    .execute(&mut *tx)
                    .await?;
                // FOR SHARE: a rebuild (which updates the row) waits for this batch to commit
                // and then reads it; a batch after the rebuild sees the new dataset.
                let mut loaded: Vec<(String, Option<String>)> = sqlx::query_as(
                    "SELECT id, engine_epoch FROM campaigns WHERE id = ANY($1) FOR SHARE",
                )
                .bind(&campaigns)
                .fetch_all(&mut *tx)
                .await?;
                if !shards.is_empty() {
                    let of_shards: Vec<(String, Option<String>)> = sqlx::query_as(
                        "SELECT id, engine_epoch FROM campaign_shards WHERE id = ANY($1)",
                    )
                    .bind(&shards)
                    .fetch_all(&mut *tx)
                    .await?;
                    loaded.extend(of_shards);
                }
                let fence = Fence::of(epochs, loaded);
                let (accepted, dead) = fence.split(events);
                Batch::of(&accepted).write_postgres(&mut tx).await?;
                let counts = super::dead::insert_postgres(&mut tx, epochs, &dead).await?;
                tx.commit().await?;
                Ok(counts)
            }
            Store::Sqlite(pool) => {
                // IMMEDIATE: the write lock up front (waiting out the busy timeout), not an
                // upgrade from a read that fails at once when another writer went first.
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                let mut loaded = Vec::with_capacity(campaigns.len());
                for id in &campaigns {
                    let row: Option<(String, Option<String>)> =
                        sqlx::query_as("SELECT id, engine_epoch FROM campaigns WHERE id = $1")
                            .bind(id)
                            .fetch_optional(&mut *tx)
                            .await?;
                    loaded.extend(row);
                }
                for id in &shards {
                    let row: Option<(String, Option<String>)> = sqlx::query_as(
                        "SELECT id, engine_epoch FROM campaign_shards WHERE id = $1",
                    )
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?;
                    loaded.extend(row);
                }
                let fence = Fence::of(epochs, loaded);
                let (accepted, dead) = fence.split(events);
                Batch::of(&accepted).write_sqlite(&mut tx).await?;
                let counts = super::dead::insert_sqlite(&mut tx, epochs, &dead).await?;
                tx.commit().await?;
                Ok(counts)
            }
        }
    }
}

/// The database's reason when it refused the write for good (a constraint), as opposed to
/// failing for now (connection, lock, timeout: retried).
pub(super) fn refusal(error: &StoreError) -> Option<String> {
    match error {
        StoreError::Database(sqlx::Error::Database(db))
            if db.kind() != sqlx::error::ErrorKind::Other =>
        {
            Some(db.to_string())
        }
        _ => None,
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

impl EventRow {
    /// The feed row of an event: its payload JSON comes from the domain type. An event of a
    /// shard past the first is its campaign's, at a position that names the shard (each
    /// shard has its own stream, whose positions may coincide).
    fn of(event: &Event) -> Self {
        let stream_id = match event.campaign_id.shard_index() {
            0 => event.position.to_string(),
            k => format!("{}@{k}", event.position),
        };
        EventRow {
            campaign_id: event.campaign_id.parent().to_string(),
            stream_id,
            kind: event.change.kind().to_owned(),
            at_ms: event.at.0,
            payload: event.feed_payload(),
        }
    }
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
    fn of(events: &[&Event]) -> Self {
        let mut rows = Vec::with_capacity(events.len());
        let mut newest: HashMap<&ReservationId, ReservationRow> = HashMap::new();
        let mut stocks: HashMap<&CampaignId, (i64, i64, i64)> = HashMap::new();
        let mut groups: HashMap<String, GroupRow> = HashMap::new();
        for &event in events {
            let position = event.position;
            let reservation_change = match &event.change {
                Change::Reservation {
                    reservation,
                    idempotency,
                } => Some((reservation, idempotency.as_ref())),
                Change::Extended { reservation } => Some((reservation, None)),
                _ => None,
            };
            match &event.change {
                Change::Reservation { .. } | Change::Extended { .. } => {
                    let Some((reservation, idempotency)) = reservation_change else {
                        continue;
                    };
                    rows.push(EventRow::of(event));
                    let row = ReservationRow {
                        id: reservation.id.to_string(),
                        campaign_id: event.campaign_id.parent().to_string(),
                        user_id: reservation.user_id.to_string(),
                        quantity: i64::from(reservation.quantity.get()),
                        status: reservation.status.as_str().to_owned(),
                        created_at_ms: reservation.created_at.0,
                        expires_at_ms: reservation.expires_at.0,
                        group_id: reservation.group_id.as_ref().map(ToString::to_string),
                        idempotency_key: idempotency.map(|(k, _)| k.to_string()),
                        fingerprint: idempotency.map(|(_, f)| f.clone()),
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
                    rows.push(EventRow::of(event));
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
                // Only shard 0 changes a sharded campaign's stock, and it reports the total.
                Change::Stock { .. } if event.campaign_id.shard_index() != 0 => {}
                Change::Stock { stock } => {
                    let entry = stocks.entry(&event.campaign_id).or_insert((0, 0, 0));
                    if (position.ms, position.seq) > (entry.1, entry.2) {
                        *entry = (*stock as i64, position.ms, position.seq);
                    }
                }
            }
        }
        Batch {
            events: rows,
            reservations: newest.into_values().collect(),
            groups: groups.into_values().collect(),
            stocks: stocks
                .into_iter()
                .map(|(id, (stock, ms, seq))| (id.to_string(), stock, ms, seq))
                .collect(),
        }
    }

    /// Writes the rows inside the caller's transaction (which holds [`EVENTS_LOCK`]).
    async fn write_postgres(&self, tx: &mut sqlx::PgConnection) -> Result<(), StoreError> {
        let e = &self.events;
        sqlx::query(
            "INSERT INTO events (campaign_id, stream_id, type, at_ms, payload) \
             SELECT c, s, t, a, p FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[]) \
             WITH ORDINALITY AS x(c, s, t, a, p, n) ORDER BY n \
             ON CONFLICT (campaign_id, stream_id) DO NOTHING",
        )
        .bind(e.iter().map(|r| r.campaign_id.as_str()).collect::<Vec<_>>())
        .bind(e.iter().map(|r| r.stream_id.as_str()).collect::<Vec<_>>())
        .bind(e.iter().map(|r| r.kind.as_str()).collect::<Vec<_>>())
        .bind(e.iter().map(|r| r.at_ms).collect::<Vec<_>>())
        .bind(e.iter().map(|r| r.payload.as_str()).collect::<Vec<_>>())
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
        .bind(g.iter().map(|x| x.id.as_str()).collect::<Vec<_>>())
        .bind(g.iter().map(|x| x.campaign_id.as_str()).collect::<Vec<_>>())
        .bind(g.iter().map(|x| x.leader_user_id.as_str()).collect::<Vec<_>>())
        .bind(g.iter().map(|x| x.size).collect::<Vec<_>>())
        .bind(g.iter().map(|x| x.status.as_str()).collect::<Vec<_>>())
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
             event_seq = EXCLUDED.event_seq, expires_at_ms = EXCLUDED.expires_at_ms, \
             idempotency_key = COALESCE(reservations.idempotency_key, EXCLUDED.idempotency_key), \
             fingerprint = COALESCE(reservations.fingerprint, EXCLUDED.fingerprint) \
             WHERE (reservations.event_ms, reservations.event_seq) < (EXCLUDED.event_ms, EXCLUDED.event_seq)",
        )
        .bind(r.iter().map(|x| x.id.as_str()).collect::<Vec<_>>())
        .bind(r.iter().map(|x| x.campaign_id.as_str()).collect::<Vec<_>>())
        .bind(r.iter().map(|x| x.user_id.as_str()).collect::<Vec<_>>())
        .bind(r.iter().map(|x| x.quantity).collect::<Vec<_>>())
        .bind(r.iter().map(|x| x.status.as_str()).collect::<Vec<_>>())
        .bind(r.iter().map(|x| x.created_at_ms).collect::<Vec<_>>())
        .bind(r.iter().map(|x| x.expires_at_ms).collect::<Vec<_>>())
        .bind(r.iter().map(|x| x.group_id.as_deref()).collect::<Vec<_>>())
        .bind(r.iter().map(|x| x.idempotency_key.as_deref()).collect::<Vec<_>>())
        .bind(r.iter().map(|x| x.fingerprint.as_deref()).collect::<Vec<_>>())
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
        Ok(())
    }

    /// Writes the rows inside the caller's transaction. SQLite allows one writer at a time,
    /// which already orders cursors by commit.
    async fn write_sqlite(&self, tx: &mut sqlx::SqliteConnection) -> Result<(), StoreError> {
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
                 event_seq = excluded.event_seq, expires_at_ms = excluded.expires_at_ms, \
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
        Ok(())
    }
}

/// A stock event applies only if it is newer than the last one applied.
const STOCK_SQL: &str =
    "UPDATE campaigns SET stock = $2, stock_event_ms = $3, stock_event_seq = $4 \
    WHERE id = $1 AND (stock_event_ms, stock_event_seq) < ($3, $4)";
