//! The campaigns table, and the units the database counts per campaign.

use super::{corrupt, on_pool, unsigned, Store, StoreError};
use crate::domain::{Campaign, CampaignId, CampaignKind, GroupRule, Millis, QueueRule};

/// Units of a campaign, counted the way the engine counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredCounts {
    pub stock: u64,
    pub held: u64,
    pub confirmed: u64,
}

/// One `campaigns` row.
#[derive(sqlx::FromRow)]
pub(super) struct CampaignRow {
    id: String,
    kind: String,
    sku: String,
    stock: i64,
    per_user_limit: i64,
    starts_at_ms: Option<i64>,
    ends_at_ms: Option<i64>,
    hold_seconds: i64,
    max_extend_seconds: i64,
    group_size: Option<i64>,
    group_window_seconds: Option<i64>,
    queue_admit_per_second: Option<i64>,
    queue_pass_seconds: Option<i64>,
    shards: i64,
    created_at_ms: i64,
}

impl CampaignRow {
    pub(super) fn into_campaign(self) -> Result<Campaign, StoreError> {
        let group = match (self.group_size, self.group_window_seconds) {
            (Some(size), Some(window)) => Some(GroupRule {
                size: unsigned("group size", size)?,
                window_seconds: unsigned("group window", window)?,
            }),
            _ => None,
        };
        let queue = match (self.queue_admit_per_second, self.queue_pass_seconds) {
            (Some(rate), Some(pass)) => Some(QueueRule {
                admit_per_second: unsigned("queue admit_per_second", rate)?,
                pass_seconds: unsigned("queue pass_seconds", pass)?,
            }),
            _ => None,
        };
        Ok(Campaign {
            id: CampaignId::parse(&self.id).map_err(|e| corrupt("campaign id", e))?,
            kind: CampaignKind::parse(&self.kind).map_err(|e| corrupt("campaign kind", e))?,
            sku: self.sku,
            stock: unsigned("stock", self.stock)?,
            per_user_limit: unsigned("per_user_limit", self.per_user_limit)?,
            starts_at: self.starts_at_ms.map(Millis),
            ends_at: self.ends_at_ms.map(Millis),
            hold_seconds: unsigned("hold_seconds", self.hold_seconds)?,
            max_extend_seconds: unsigned("max_extend_seconds", self.max_extend_seconds)?,
            group,
            queue,
            shards: u8::try_from(self.shards).map_err(|e| corrupt("shards", e))?,
            created_at: Millis(self.created_at_ms),
        })
    }
}

/// The sums [`Store::counts`] reads.
#[derive(sqlx::FromRow)]
struct CountsRow {
    held: i64,
    confirmed: i64,
    paid: i64,
    open_units: i64,
    formed_units: i64,
}

pub(super) const SELECT_CAMPAIGNS: &str =
    "SELECT id, kind, sku, stock, per_user_limit, starts_at_ms, \
    ends_at_ms, hold_seconds, max_extend_seconds, group_size, group_window_seconds, \
    queue_admit_per_second, queue_pass_seconds, shards, created_at_ms FROM campaigns";

/// The `campaigns` row of a new campaign; `false` if the id is taken.
macro_rules! insert_campaign_row {
    ($executor:expr, $c:expr, $epoch:expr) => {{
        let c: &Campaign = $c;
        const SQL: &str =
            "INSERT INTO campaigns (id, kind, sku, stock, per_user_limit, starts_at_ms, \
        ends_at_ms, hold_seconds, group_size, group_window_seconds, created_at_ms, \
        engine_epoch, max_extend_seconds, queue_admit_per_second, queue_pass_seconds, shards, \
        available) \
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17) \
        ON CONFLICT (id) DO NOTHING";
        let group = c.group;
        let affected = sqlx::query(SQL)
            .bind(c.id.as_str())
            .bind(c.kind.as_str())
            .bind(&c.sku)
            .bind(c.stock as i64)
            .bind(i64::from(c.per_user_limit))
            .bind(c.starts_at.map(|m| m.0))
            .bind(c.ends_at.map(|m| m.0))
            .bind(i64::from(c.hold_seconds))
            .bind(group.map(|g| i64::from(g.size)))
            .bind(group.map(|g| i64::from(g.window_seconds)))
            .bind(c.created_at.0)
            .bind($epoch)
            .bind(i64::from(c.max_extend_seconds))
            .bind(c.queue.map(|q| i64::from(q.admit_per_second)))
            .bind(c.queue.map(|q| i64::from(q.pass_seconds)))
            .bind(i64::from(c.shards))
            // A new campaign has its whole stock (for a sharded one, shard 0's row stands for
            // the whole until the persister reads shard 0's own count).
            .bind(c.stock as i64)
            .execute($executor)
            .await?
            .rows_affected();
        affected == 1
    }};
}

impl Store {
    /// Records a new campaign (and its shards past the first), to be loaded into the engine
    /// under load epoch `epoch`; `false` if one with the id exists.
    pub async fn insert_campaign(&self, c: &Campaign, epoch: &str) -> Result<bool, StoreError> {
        macro_rules! insert_in {
            ($tx:expr) => {{
                let inserted = insert_campaign_row!(&mut *$tx, c, epoch);
                if inserted {
                    for k in 1..c.shards {
                        sqlx::query(
                            "INSERT INTO campaign_shards (id, campaign_id, shard, engine_epoch) \
                             VALUES ($1, $2, $3, $4)",
                        )
                        .bind(c.id.shard(k).as_str())
                        .bind(c.id.as_str())
                        .bind(i64::from(k))
                        .bind(epoch)
                        .execute(&mut *$tx)
                        .await?;
                    }
                }
                inserted
            }};
        }
        let inserted = match self {
            Store::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                let inserted = insert_in!(tx);
                tx.commit().await?;
                inserted
            }
            Store::Sqlite(pool) => {
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                let inserted = insert_in!(tx);
                tx.commit().await?;
                inserted
            }
        };
        Ok(inserted)
    }

    /// Every campaign still in the engine (not archived).
    pub async fn campaigns(&self) -> Result<Vec<Campaign>, StoreError> {
        let sql = format!("{SELECT_CAMPAIGNS} WHERE archived_at_ms IS NULL ORDER BY id");
        let rows: Vec<CampaignRow> =
            on_pool!(self, pool => sqlx::query_as(&sql).fetch_all(pool).await?);
        rows.into_iter().map(CampaignRow::into_campaign).collect()
    }

    /// Records that this database serves engine dataset `epoch`.
    pub async fn register_epoch(&self, epoch: &str) -> Result<(), StoreError> {
        const SQL: &str = "INSERT INTO engine_epochs (epoch, first_seen_ms) VALUES ($1, $2) \
            ON CONFLICT (epoch) DO NOTHING";
        on_pool!(self, pool => sqlx::query(SQL)
            .bind(epoch)
            .bind(Millis::now().0)
            .execute(pool)
            .await
            .map(|_| ())?);
        Ok(())
    }

    /// Whether this database has recorded any engine dataset (before fencing, none).
    pub async fn has_epochs(&self) -> Result<bool, StoreError> {
        let (n,): (i64,) = on_pool!(self, pool => sqlx::query_as("SELECT COUNT(*) FROM engine_epochs")
            .fetch_one(pool)
            .await?);
        Ok(n > 0)
    }

    /// Whether this database ever served engine dataset `epoch`.
    pub async fn knows_epoch(&self, epoch: &str) -> Result<bool, StoreError> {
        const SQL: &str = "SELECT COUNT(*) FROM engine_epochs WHERE epoch = $1";
        let (n,): (i64,) = on_pool!(self, pool => sqlx::query_as(SQL)
            .bind(epoch)
            .fetch_one(pool)
            .await?);
        Ok(n > 0)
    }

    /// Whether this database knows any of these campaigns (archived ones too); asks about
    /// the first hundred at most.
    pub async fn knows_any_campaign(&self, ids: &[CampaignId]) -> Result<bool, StoreError> {
        const SQL: &str = "SELECT COUNT(*) FROM campaigns WHERE id = $1";
        for id in ids.iter().take(100) {
            let (n,): (i64,) = on_pool!(self, pool => sqlx::query_as(SQL)
                .bind(id.as_str())
                .fetch_one(pool)
                .await?);
            if n > 0 {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Records that an ended campaign left the engine for good.
    pub async fn archive(&self, id: &CampaignId) -> Result<(), StoreError> {
        const SQL: &str = "UPDATE campaigns SET archived_at_ms = $2 WHERE id = $1";
        on_pool!(self, pool => sqlx::query(SQL)
            .bind(id.as_str())
            .bind(Millis::now().0)
            .execute(pool)
            .await
            .map(|_| ())?);
        Ok(())
    }

    /// Whether the campaign was loaded into the engine and is still to be there (not
    /// archived): missing from the engine, it was lost.
    pub async fn loaded(&self, id: &CampaignId) -> Result<bool, StoreError> {
        const SQL: &str = "SELECT COUNT(*) FROM campaigns \
            WHERE id = $1 AND engine_epoch IS NOT NULL AND archived_at_ms IS NULL";
        let (n,): (i64,) = on_pool!(self, pool => sqlx::query_as(SQL)
            .bind(id.as_str())
            .fetch_one(pool)
            .await?);
        Ok(n > 0)
    }

    /// The load epoch the campaign was last loaded into the engine under.
    pub async fn engine_epoch(&self, id: &CampaignId) -> Result<Option<String>, StoreError> {
        let row: Option<(Option<String>,)> = on_pool!(self, pool => sqlx::query_as(
            "SELECT engine_epoch FROM campaigns WHERE id = $1",
        )
        .bind(id.as_str())
        .fetch_optional(pool)
        .await?);
        Ok(row.and_then(|(epoch,)| epoch))
    }

    /// The campaign if the database archived it (it is answered from here alone).
    pub async fn archived_campaign(&self, id: &CampaignId) -> Result<Option<Campaign>, StoreError> {
        let sql = format!("{SELECT_CAMPAIGNS} WHERE id = $1 AND archived_at_ms IS NOT NULL");
        let row: Option<CampaignRow> = on_pool!(self, pool => sqlx::query_as(&sql)
            .bind(id.as_str())
            .fetch_optional(pool)
            .await?);
        row.map(CampaignRow::into_campaign).transpose()
    }

    /// Ends a campaign at `now` unless it ended earlier (see `Campaign::end_at`); `false`
    /// when there is no such campaign.
    pub async fn end_campaign(&self, id: &CampaignId, now: Millis) -> Result<bool, StoreError> {
        const SQL: &str = "UPDATE campaigns SET \
            ends_at_ms = CASE WHEN ends_at_ms IS NULL OR ends_at_ms > $2 THEN $2 ELSE ends_at_ms END, \
            starts_at_ms = CASE WHEN starts_at_ms > $2 THEN $2 ELSE starts_at_ms END \
            WHERE id = $1";
        let affected = on_pool!(self, pool => sqlx::query(SQL)
            .bind(id.as_str())
            .bind(now.0)
            .execute(pool)
            .await?
            .rows_affected());
        Ok(affected == 1)
    }

    /// Campaigns by id after `after`, archived ones included; at most `limit`.
    pub async fn campaigns_page(
        &self,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Campaign>, StoreError> {
        let sql = format!("{SELECT_CAMPAIGNS} WHERE id > $1 ORDER BY id LIMIT $2");
        let rows: Vec<CampaignRow> = on_pool!(self, pool => sqlx::query_as(&sql)
            .bind(after.unwrap_or(""))
            .bind(limit)
            .fetch_all(pool)
            .await?);
        rows.into_iter().map(CampaignRow::into_campaign).collect()
    }

    /// Campaigns with a waiting room that has not closed at `now` (the admission worker's
    /// list: one query, whatever the catalogue's size).
    pub async fn queued_campaigns(&self, now: Millis) -> Result<Vec<CampaignId>, StoreError> {
        const SQL: &str = "SELECT id FROM campaigns WHERE queue_admit_per_second IS NOT NULL \
            AND archived_at_ms IS NULL AND (ends_at_ms IS NULL OR ends_at_ms > $1) ORDER BY id";
        let ids: Vec<(String,)> = on_pool!(self, pool => sqlx::query_as(SQL)
            .bind(now.0)
            .fetch_all(pool)
            .await?);
        ids.into_iter()
            .map(|(id,)| {
                CampaignId::parse(&id).map_err(|_| StoreError::Corrupt(format!("campaign id {id}")))
            })
            .collect()
    }

    /// Campaigns that ended at least `retention` before `now` and are not archived: the
    /// archive pass's candidates, found by the database, not by visiting every campaign.
    pub async fn ended_unarchived(&self, before: Millis) -> Result<Vec<Campaign>, StoreError> {
        let sql = format!(
            "{SELECT_CAMPAIGNS} WHERE archived_at_ms IS NULL AND ends_at_ms IS NOT NULL \
             AND ends_at_ms <= $1 ORDER BY ends_at_ms LIMIT 1000"
        );
        let rows: Vec<CampaignRow> = on_pool!(self, pool => sqlx::query_as(&sql)
            .bind(before.0)
            .fetch_all(pool)
            .await?);
        rows.into_iter().map(CampaignRow::into_campaign).collect()
    }

    /// Records each campaign's (or shard's) units available as the persister read them with
    /// its events: only under the load the database knows (a fenced read changes nothing)
    /// and only over an older read's.
    pub async fn record_available(
        &self,
        epochs: &crate::engine::Epochs,
        available: &std::collections::HashMap<CampaignId, (u64, crate::domain::StreamPosition)>,
    ) -> Result<(), StoreError> {
        for (id, (units, position)) in available {
            let table = if id.as_str().contains('.') {
                "campaign_shards"
            } else {
                "campaigns"
            };
            let sql = format!(
                "UPDATE {table} SET available = $2, available_ms = $3, available_seq = $4 \
                 WHERE id = $1 AND (engine_epoch IS NULL OR engine_epoch = $5) \
                 AND (available_ms, available_seq) < ($3, $4)"
            );
            on_pool!(self, pool => sqlx::query(&sql)
                .bind(id.as_str())
                .bind(i64::try_from(*units).unwrap_or(i64::MAX))
                .bind(position.ms)
                .bind(position.seq)
                .bind(epochs.of(id))
                .execute(pool)
                .await
                .map(|_| ())?);
        }
        Ok(())
    }

    /// Per live campaign (and shard past the first), the stream position of the newest event
    /// the persister read from the engine and committed: an engine whose stream for that
    /// campaign ends before it lacks changes the database has (a promoted Redis replica that
    /// had not received them). Campaigns without a recorded read are left out.
    pub async fn persisted_positions(
        &self,
    ) -> Result<std::collections::HashMap<CampaignId, (i64, i64)>, StoreError> {
        let rows: Vec<(String, i64, i64)> = on_pool!(self, pool => sqlx::query_as(
            "SELECT id, available_ms, available_seq FROM campaigns \
             WHERE archived_at_ms IS NULL AND available_ms > 0 \
             UNION ALL SELECT s.id, s.available_ms, s.available_seq FROM campaign_shards s \
             JOIN campaigns c ON c.id = s.campaign_id \
             WHERE c.archived_at_ms IS NULL AND s.available_ms > 0",
        )
        .fetch_all(pool)
        .await?);
        rows.into_iter()
            .map(|(id, ms, seq)| {
                CampaignId::parse_shard(&id)
                    .map(|id| (id, (ms, seq)))
                    .map_err(|_| StoreError::Corrupt(format!("campaign id {id}")))
            })
            .collect()
    }

    /// A page of live campaigns (not archived) that may have `status` at `now`, by id after
    /// `after`: the window from the campaign's columns, `sold_out` or `active` from the
    /// availability the persister recorded (unknown counts as either). The caller confirms
    /// each with the engine; the database only narrows the candidates, through its indexes.
    pub async fn campaigns_page_with_status(
        &self,
        status: crate::domain::CampaignStatus,
        now: Millis,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Campaign>, StoreError> {
        use crate::domain::CampaignStatus;
        const OPEN: &str = "(starts_at_ms IS NULL OR starts_at_ms <= $3) \
            AND (ends_at_ms IS NULL OR ends_at_ms > $3)";
        let filter = match status {
            CampaignStatus::Scheduled => "starts_at_ms > $3".to_owned(),
            CampaignStatus::Ended => "ends_at_ms <= $3".to_owned(),
            // Two indexed branches (the sold-out rows, the unknown ones), not one OR that
            // neither database answers from an index.
            CampaignStatus::SoldOut => format!(
                "{OPEN} AND id IN (SELECT id FROM campaigns WHERE available = 0 \
                 AND archived_at_ms IS NULL AND id > $1 UNION ALL SELECT id FROM campaigns \
                 WHERE available IS NULL AND archived_at_ms IS NULL AND id > $1) \
                 AND NOT EXISTS (SELECT 1 FROM campaign_shards s \
                 WHERE s.campaign_id = campaigns.id AND s.available > 0)"
            ),
            CampaignStatus::Active => format!(
                "{OPEN} AND (available IS NULL OR available > 0 OR EXISTS (SELECT 1 FROM \
                 campaign_shards s WHERE s.campaign_id = campaigns.id \
                 AND (s.available IS NULL OR s.available > 0)))"
            ),
        };
        // Ended campaigns include the archived ones (answered from the database); the
        // others are live by definition.
        let live = if status == CampaignStatus::Ended {
            ""
        } else {
            "archived_at_ms IS NULL AND "
        };
        let sql =
            format!("{SELECT_CAMPAIGNS} WHERE {live}{filter} AND id > $1 ORDER BY id LIMIT $2");
        let rows: Vec<CampaignRow> = on_pool!(self, pool => sqlx::query_as(&sql)
            .bind(after.unwrap_or(""))
            .bind(limit)
            .bind(now.0)
            .fetch_all(pool)
            .await?);
        rows.into_iter().map(CampaignRow::into_campaign).collect()
    }

    /// One campaign (recovery asks for a single id on a request's path; no full scan).
    pub async fn campaign(&self, id: &CampaignId) -> Result<Option<Campaign>, StoreError> {
        let sql = format!("{SELECT_CAMPAIGNS} WHERE id = $1");
        let row: Option<CampaignRow> = on_pool!(self, pool => sqlx::query_as(&sql)
            .bind(id.as_str())
            .fetch_optional(pool)
            .await?);
        row.map(CampaignRow::into_campaign).transpose()
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
        let row: CountsRow = on_pool!(self, pool => sqlx::query_as(SQL)
            .bind(campaign.id.as_str())
            .fetch_one(pool)
            .await?);
        let units = |name: &str, n: i64| unsigned::<u64>(name, n);
        let (held, confirmed, paid) = (
            units("held", row.held)?,
            units("confirmed", row.confirmed)?,
            units("paid", row.paid)?,
        );
        let (open, formed) = (
            units("open units", row.open_units)?,
            units("formed units", row.formed_units)?,
        );
        Ok(StoredCounts {
            stock: campaign.stock,
            held: (held + open).saturating_sub(paid),
            confirmed: confirmed + formed + paid,
        })
    }
}
