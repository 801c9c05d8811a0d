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

impl Store {
    /// Up to `limit` feed events after `cursor`, in cursor order.
    pub async fn events_after(
        &self,
        cursor: i64,
        limit: i64,
    ) -> Result<Vec<FeedEvent>, StoreError> {
        const SQL: &str = "SELECT cursor, type, at_ms, payload FROM events \
            WHERE cursor > $1 ORDER BY cursor LIMIT $2";
        let rows: Vec<FeedRow> = on_pool!(self, pool => sqlx::query_as(SQL)
            .bind(cursor)
            .bind(limit)
            .fetch_all(pool)
            .await?);
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
