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

impl Store {
    /// The held and confirmed reservations of a campaign, with their idempotency records.
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
