//! Live reservations and groups, as recovery reads them back to rebuild an engine.

use super::{corrupt, on_pool, unsigned, Store, StoreError};
use crate::domain::{
    CampaignId, Group, GroupId, GroupStatus, Millis, Quantity, Reservation, ReservationId,
    ReservationStatus, ScopedKey, StoredReservation, UserId,
};

/// One `reservations` row, as recovery reads it.
#[derive(sqlx::FromRow)]
struct ReservationRow {
    id: String,
    user_id: String,
    quantity: i64,
    status: String,
    created_at_ms: i64,
    expires_at_ms: i64,
    group_id: Option<String>,
    idempotency_key: Option<String>,
    fingerprint: Option<String>,
}

impl ReservationRow {
    fn into_stored(self, campaign: &CampaignId) -> Result<StoredReservation, StoreError> {
        Ok(StoredReservation {
            reservation: Reservation {
                id: ReservationId::parse(&self.id).map_err(|e| corrupt("reservation id", e))?,
                campaign_id: campaign.clone(),
                user_id: UserId::parse(&self.user_id).map_err(|e| corrupt("user id", e))?,
                quantity: Quantity::parse(unsigned("quantity", self.quantity)?)
                    .map_err(|e| corrupt("quantity", e))?,
                status: ReservationStatus::parse(&self.status)
                    .ok_or_else(|| corrupt("reservation status", &self.status))?,
                created_at: Millis(self.created_at_ms),
                expires_at: Millis(self.expires_at_ms),
                group_id: self
                    .group_id
                    .map(|g| GroupId::parse(&g).map_err(|e| corrupt("group id", e)))
                    .transpose()?,
            },
            idempotency_key: self.idempotency_key.map(ScopedKey::from_stored),
            fingerprint: self.fingerprint,
        })
    }
}

/// One `groups` row.
#[derive(sqlx::FromRow)]
struct GroupRow {
    id: String,
    leader_user_id: String,
    size: i64,
    status: String,
    created_at_ms: i64,
    expires_at_ms: i64,
}

impl GroupRow {
    fn into_group(self, campaign: &CampaignId) -> Result<Group, StoreError> {
        Ok(Group {
            id: GroupId::parse(&self.id).map_err(|e| corrupt("group id", e))?,
            campaign_id: campaign.clone(),
            leader_user_id: UserId::parse(&self.leader_user_id)
                .map_err(|e| corrupt("leader", e))?,
            size: unsigned("group size", self.size)?,
            status: GroupStatus::parse(&self.status)
                .ok_or_else(|| corrupt("group status", &self.status))?,
            created_at: Millis(self.created_at_ms),
            expires_at: Millis(self.expires_at_ms),
            members: Vec::new(),
        })
    }
}

/// What an engine needs to rebuild a campaign, read in the transaction that records the
/// load epoch it is rebuilt under.
#[derive(Debug, Clone)]
pub struct Rebuild {
    pub campaign: crate::domain::Campaign,
    /// Every reservation, live and ended, in creation order, with its idempotency record:
    /// ended ones keep answering replays and reads after the rebuild.
    pub reservations: Vec<StoredReservation>,
    pub groups: Vec<Group>,
    /// The load epoch the rebuild records.
    pub epoch: String,
}

const SELECT_RESERVATIONS: &str =
    "SELECT id, user_id, quantity, status, created_at_ms, expires_at_ms, group_id, \
    idempotency_key, fingerprint FROM reservations WHERE campaign_id = $1 ORDER BY id";
const SELECT_GROUPS: &str = "SELECT id, leader_user_id, size, status, created_at_ms, \
    expires_at_ms FROM groups WHERE campaign_id = $1 ORDER BY id";
/// Takes the campaign row's lock; the new epoch is written at commit, for the shards the
/// engine took it for.
const LOCK_CAMPAIGN: &str =
    "UPDATE campaigns SET engine_epoch = engine_epoch WHERE id = $1 AND archived_at_ms IS NULL";
/// A rebuilt campaign (shard) also starts a new event stream: the stream position recorded
/// of the old one (`available_ms/_seq`) is reset, so a later failover check
/// (`Store::persisted_positions`) never compares the new stream with the old one's.
const MARK_REBUILT: &str =
    "UPDATE campaigns SET engine_epoch = $2, available_ms = 0, available_seq = 0 WHERE id = $1";
const MARK_SHARD_REBUILT: &str = "UPDATE campaign_shards SET engine_epoch = $2, \
     available_ms = 0, available_seq = 0 WHERE id = $1";

/// The body of [`Store::rebuild`] for one kind of transaction.
macro_rules! rebuild_in {
    ($tx:expr, $id:expr) => {{
        // The update first: it takes the campaign row's lock (Postgres) or the write lock
        // (SQLite), so a persister batch for the campaign commits before this reads, and one
        // after it meets the new dataset (the fence in `batch`).
        let marked = sqlx::query(LOCK_CAMPAIGN)
            .bind($id.as_str())
            .execute(&mut *$tx)
            .await?
            .rows_affected();
        if marked == 0 {
            None
        } else {
            let campaign: super::campaigns::CampaignRow = sqlx::query_as(&format!(
                "{} WHERE id = $1",
                super::campaigns::SELECT_CAMPAIGNS
            ))
            .bind($id.as_str())
            .fetch_one(&mut *$tx)
            .await?;
            let reservations: Vec<ReservationRow> = sqlx::query_as(SELECT_RESERVATIONS)
                .bind($id.as_str())
                .fetch_all(&mut *$tx)
                .await?;
            let groups: Vec<GroupRow> = sqlx::query_as(SELECT_GROUPS)
                .bind($id.as_str())
                .fetch_all(&mut *$tx)
                .await?;
            Some((campaign, reservations, groups))
        }
    }};
}

/// A rebuild under way: the campaign's row is locked, and its new load epoch recorded but
/// not committed, until [`Rebuilding::commit`] or [`Rebuilding::abandon`]. Meanwhile another
/// rebuild of the campaign, and every persister batch with its events, waits: so a rebuild
/// that finds the campaign loaded by one before it leaves the epoch that one recorded.
pub struct Rebuilding {
    tx: RebuildTx,
    pub rebuild: Rebuild,
}

enum RebuildTx {
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
    Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>),
}

/// Records the rebuild's epoch for the shards in `loaded` (bit k: shard k), in the
/// rebuild's transaction.
macro_rules! mark_in {
    ($tx:expr, $rebuild:expr, $loaded:expr) => {{
        let campaign = &$rebuild.campaign;
        for k in 0..campaign.shards.max(1) {
            if $loaded & (1 << k) == 0 {
                continue;
            }
            let sql = if k == 0 {
                MARK_REBUILT
            } else {
                MARK_SHARD_REBUILT
            };
            sqlx::query(sql)
                .bind(campaign.id.shard(k).as_str())
                .bind(&$rebuild.epoch)
                .execute(&mut *$tx)
                .await?;
        }
    }};
}

impl Rebuilding {
    /// The engine loaded the campaign's shards in `loaded` (bit k: shard k; bit 0 alone for
    /// an unsharded campaign) under the new epoch (or may have: its answer was lost): from
    /// the commit on, events of any earlier load of those are set aside, not applied.
    pub async fn commit(self, loaded: u64) -> Result<(), StoreError> {
        match self.tx {
            RebuildTx::Postgres(mut tx) => {
                mark_in!(tx, self.rebuild, loaded);
                tx.commit().await?
            }
            RebuildTx::Sqlite(mut tx) => {
                mark_in!(tx, self.rebuild, loaded);
                tx.commit().await?
            }
        }
        Ok(())
    }

    /// The engine had the campaign already: its epoch stays.
    pub async fn abandon(self) -> Result<(), StoreError> {
        match self.tx {
            RebuildTx::Postgres(tx) => tx.rollback().await?,
            RebuildTx::Sqlite(tx) => tx.rollback().await?,
        }
        Ok(())
    }
}

impl Store {
    /// A refund (the store cancelling a confirmed reservation) of a campaign that left the
    /// engine (archived): the cancellation is written here as the event the engine would have
    /// appended, under the campaign's last load epoch — the campaign sells nothing any more,
    /// so no unit is counted anywhere else. Returns the cancelled reservation.
    pub async fn refund_archived(
        &self,
        reservation: crate::domain::Reservation,
        now: crate::domain::Millis,
    ) -> Result<crate::domain::Reservation, StoreError> {
        /// Orders refunds written in the same millisecond by this process.
        static SEQ: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);
        let epoch = self
            .engine_epoch(&reservation.campaign_id)
            .await?
            .unwrap_or_default();
        let cancelled = crate::domain::Reservation {
            status: crate::domain::ReservationStatus::Cancelled,
            ..reservation
        };
        let event = crate::domain::Event {
            campaign_id: cancelled.campaign_id.clone(),
            position: crate::domain::StreamPosition {
                ms: now.0,
                seq: SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                index: 0,
            },
            at: now,
            change: crate::domain::Change::Reservation {
                reservation: cancelled.clone(),
                idempotency: None,
            },
        };
        self.persist(
            &crate::engine::Epochs::one(&event.campaign_id, &epoch),
            std::slice::from_ref(&event),
        )
        .await?;
        Ok(cancelled)
    }

    /// Starts rebuilding campaign `id`'s engine state under load epoch `epoch`: records the
    /// epoch and reads what the rebuild needs, in a transaction left open (see
    /// [`Rebuilding`]); `None` if the database has no such campaign or archived it (it left
    /// the engine for good).
    pub async fn rebuild(
        &self,
        id: &CampaignId,
        epoch: &str,
    ) -> Result<Option<Rebuilding>, StoreError> {
        let (tx, read) = match self {
            Store::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                let read = rebuild_in!(tx, id);
                (RebuildTx::Postgres(tx), read)
            }
            Store::Sqlite(pool) => {
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                let read = rebuild_in!(tx, id);
                (RebuildTx::Sqlite(tx), read)
            }
        };
        let Some((campaign, reservations, groups)) = read else {
            return Ok(None);
        };
        let rebuild = Rebuild {
            campaign: campaign.into_campaign()?,
            reservations: reservations
                .into_iter()
                .map(|r| r.into_stored(id))
                .collect::<Result<_, _>>()?,
            groups: groups
                .into_iter()
                .map(|g| g.into_group(id))
                .collect::<Result<_, _>>()?,
            epoch: epoch.to_owned(),
        };
        Ok(Some(Rebuilding { tx, rebuild }))
    }

    /// One reservation, whatever its status (engines forget ended ones after a while).
    pub async fn reservation(&self, id: &ReservationId) -> Result<Option<Reservation>, StoreError> {
        const SQL: &str =
            "SELECT id, user_id, quantity, status, created_at_ms, expires_at_ms, group_id, \
            idempotency_key, fingerprint FROM reservations WHERE id = $1";
        let row: Option<ReservationRow> = on_pool!(self, pool => sqlx::query_as(SQL)
            .bind(id.as_str())
            .fetch_optional(pool)
            .await?);
        row.map(|r| r.into_stored(&id.campaign_id()).map(|s| s.reservation))
            .transpose()
    }

    /// The held and confirmed reservations of a campaign, with their idempotency records.
    /// A campaign's reservations as persisted (the engine's newest changes reach the
    /// database within the persister's delay), by id (creation order) after `after`,
    /// optionally of one status and one user; at most `limit`.
    pub async fn campaign_reservations(
        &self,
        campaign: &CampaignId,
        status: Option<ReservationStatus>,
        user: Option<&UserId>,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Reservation>, StoreError> {
        let rows: Vec<ReservationRow> = on_pool!(self, pool => {
            let mut q = sqlx::QueryBuilder::new(
                "SELECT id, user_id, quantity, status, created_at_ms, expires_at_ms, group_id, \
                 idempotency_key, fingerprint FROM reservations WHERE campaign_id = ",
            );
            q.push_bind(campaign.as_str());
            if let Some(status) = status {
                q.push(" AND status = ").push_bind(status.as_str());
            }
            if let Some(user) = user {
                q.push(" AND user_id = ").push_bind(user.as_str());
            }
            if let Some(after) = after {
                q.push(" AND id > ").push_bind(after);
            }
            q.push(" ORDER BY id LIMIT ").push_bind(limit);
            q.build_query_as().fetch_all(pool).await?
        });
        rows.into_iter()
            .map(|row| row.into_stored(campaign).map(|s| s.reservation))
            .collect()
    }

    pub async fn live_reservations(
        &self,
        campaign: &CampaignId,
    ) -> Result<Vec<StoredReservation>, StoreError> {
        const SQL: &str =
            "SELECT id, user_id, quantity, status, created_at_ms, expires_at_ms, group_id, \
            idempotency_key, fingerprint FROM reservations \
            WHERE campaign_id = $1 AND status IN ('held', 'confirmed') ORDER BY id";
        let rows: Vec<ReservationRow> = on_pool!(self, pool => sqlx::query_as(SQL)
            .bind(campaign.as_str())
            .fetch_all(pool)
            .await?);
        rows.into_iter().map(|r| r.into_stored(campaign)).collect()
    }

    /// Every group of a campaign (any status), members left empty.
    pub async fn groups(&self, campaign: &CampaignId) -> Result<Vec<Group>, StoreError> {
        const SQL: &str = "SELECT id, leader_user_id, size, status, created_at_ms, expires_at_ms \
            FROM groups WHERE campaign_id = $1 ORDER BY id";
        let rows: Vec<GroupRow> = on_pool!(self, pool => sqlx::query_as(SQL)
            .bind(campaign.as_str())
            .fetch_all(pool)
            .await?);
        rows.into_iter().map(|g| g.into_group(campaign)).collect()
    }
}
