//! The event feed: durable, ordered by cursor, served from the database.

use super::{on_pool, Store, StoreError};
use crate::domain::Millis;
use serde::Serialize;

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

/// One `events` row.
#[derive(sqlx::FromRow)]
struct FeedRow {
    cursor: i64,
    #[sqlx(rename = "type")]
    kind: String,
    at_ms: i64,
    payload: String,
}

/// Which events a feed page holds.
#[derive(Debug, Clone, Default)]
pub struct FeedFilter {
    /// Only this campaign's events.
    pub campaign_id: Option<String>,
    /// Only events of these types (empty: every type).
    pub types: Vec<String>,
}

impl Store {
    /// Up to `limit` feed events after `cursor` that pass `filter`, in cursor order.
    pub async fn events_after(
        &self,
        cursor: i64,
        limit: i64,
        filter: &FeedFilter,
    ) -> Result<Vec<FeedEvent>, StoreError> {
        let rows: Vec<FeedRow> = on_pool!(self, pool => {
            let mut q = sqlx::QueryBuilder::new(
                "SELECT cursor, type, at_ms, payload FROM events WHERE cursor > ",
            );
            q.push_bind(cursor);
            if let Some(campaign) = &filter.campaign_id {
                q.push(" AND campaign_id = ").push_bind(campaign);
            }
            if !filter.types.is_empty() {
                q.push(" AND type IN (");
                let mut types = q.separated(", ");
                for kind in &filter.types {
                    types.push_bind(kind);
                }
                q.push(")");
            }
            q.push(" ORDER BY cursor LIMIT ").push_bind(limit);
            q.build_query_as().fetch_all(pool).await?
        });
        rows.into_iter()
            .map(|row| {
                let payload = serde_json::from_str(&row.payload)
                    .map_err(|e| StoreError::Corrupt(format!("event payload: {e}")))?;
                Ok(FeedEvent {
                    cursor: row.cursor,
                    kind: row.kind,
                    at: Millis(row.at_ms),
                    payload,
                })
            })
            .collect()
    }
}
