//! Webhook subscriptions, their delivery lease and cursor, and the record of every attempt.

use super::{on_pool, Store, StoreError};
use crate::domain::Millis;
use serde::Serialize;

/// A subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    pub id: String,
    pub url: String,
    /// Empty: every type.
    pub event_types: Vec<String>,
    pub campaign_id: Option<String>,
    pub secret: String,
    pub created_at: Millis,
    /// Every feed event up to this cursor was delivered (or given up on).
    pub delivered_cursor: i64,
    /// Feed items one delivery carries at most (1: the item alone as the body).
    pub max_batch: u32,
}

#[derive(sqlx::FromRow)]
struct WebhookRow {
    id: String,
    url: String,
    event_types: String,
    campaign_id: Option<String>,
    secret: String,
    created_at_ms: i64,
    delivered_cursor: i64,
    max_batch: i64,
}

impl From<WebhookRow> for Webhook {
    fn from(row: WebhookRow) -> Self {
        Webhook {
            id: row.id,
            url: row.url,
            event_types: row
                .event_types
                .split(',')
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .collect(),
            campaign_id: row.campaign_id,
            secret: row.secret,
            created_at: Millis(row.created_at_ms),
            delivered_cursor: row.delivered_cursor,
            max_batch: u32::try_from(row.max_batch.clamp(1, 100)).unwrap_or(1),
        }
    }
}

/// One delivery attempt.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Delivery {
    #[serde(rename = "id")]
    pub id: i64,
    /// The feed event's cursor.
    pub event_cursor: i64,
    /// 1 for the first attempt of this event.
    pub attempt: i32,
    /// `delivered`, `failed` (will be retried) or `gave_up`.
    pub outcome: String,
    pub status_code: Option<i32>,
    pub error: Option<String>,
    #[serde(skip)]
    pub at_ms: i64,
}

const COLUMNS: &str =
    "id, url, event_types, campaign_id, secret, created_at_ms, delivered_cursor, max_batch";

impl Store {
    /// The newest feed cursor (0 when the feed is empty): where a new webhook starts.
    pub async fn newest_cursor(&self) -> Result<i64, StoreError> {
        const SQL: &str = "SELECT COALESCE(MAX(cursor), 0) FROM events";
        Ok(on_pool!(self, pool => sqlx::query_scalar::<_, i64>(SQL).fetch_one(pool).await?))
    }

    /// Records a new webhook made by a request with `key` and `fingerprint`. If the key made
    /// one before, nothing is written: that webhook (deleted or not) and the fingerprint of
    /// the request that made it.
    pub async fn insert_webhook(
        &self,
        w: &Webhook,
        key: &str,
        fingerprint: &str,
    ) -> Result<Option<(Webhook, String)>, StoreError> {
        const SQL: &str = "INSERT INTO webhooks (id, url, event_types, campaign_id, secret, \
            created_at_ms, delivered_cursor, max_batch, idempotency_key, fingerprint) \
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
            ON CONFLICT (idempotency_key) DO NOTHING";
        let inserted = on_pool!(self, pool => sqlx::query(SQL)
            .bind(&w.id)
            .bind(&w.url)
            .bind(w.event_types.join(","))
            .bind(&w.campaign_id)
            .bind(&w.secret)
            .bind(w.created_at.0)
            .bind(w.delivered_cursor)
            .bind(i64::from(w.max_batch))
            .bind(key)
            .bind(fingerprint)
            .execute(pool)
            .await?
            .rows_affected());
        if inserted == 1 {
            return Ok(None);
        }
        let sql = format!("SELECT {COLUMNS}, fingerprint FROM webhooks WHERE idempotency_key = $1");
        #[derive(sqlx::FromRow)]
        struct Made {
            #[sqlx(flatten)]
            row: WebhookRow,
            fingerprint: Option<String>,
        }
        let made: Made =
            on_pool!(self, pool => sqlx::query_as(&sql).bind(key).fetch_one(pool).await?);
        Ok(Some((
            Webhook::from(made.row),
            made.fingerprint.unwrap_or_default(),
        )))
    }

    /// Every webhook not deleted, oldest first.
    pub async fn webhooks(&self) -> Result<Vec<Webhook>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM webhooks WHERE deleted_at_ms IS NULL ORDER BY created_at_ms, id"
        );
        let rows: Vec<WebhookRow> =
            on_pool!(self, pool => sqlx::query_as(&sql).fetch_all(pool).await?);
        Ok(rows.into_iter().map(Webhook::from).collect())
    }

    pub async fn webhook(&self, id: &str) -> Result<Option<Webhook>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM webhooks WHERE id = $1 AND deleted_at_ms IS NULL");
        let row: Option<WebhookRow> =
            on_pool!(self, pool => sqlx::query_as(&sql).bind(id).fetch_optional(pool).await?);
        Ok(row.map(Webhook::from))
    }

    /// `false` if there was no such webhook.
    pub async fn delete_webhook(&self, id: &str, now: Millis) -> Result<bool, StoreError> {
        const SQL: &str =
            "UPDATE webhooks SET deleted_at_ms = $2 WHERE id = $1 AND deleted_at_ms IS NULL";
        let affected = on_pool!(self, pool => sqlx::query(SQL)
            .bind(id)
            .bind(now.0)
            .execute(pool)
            .await?
            .rows_affected());
        Ok(affected == 1)
    }

    /// Delivers again from `after` on (a replay); `false` if there was no such webhook.
    pub async fn rewind_webhook(&self, id: &str, after: i64) -> Result<bool, StoreError> {
        const SQL: &str = "UPDATE webhooks SET delivered_cursor = $2 \
            WHERE id = $1 AND deleted_at_ms IS NULL";
        let affected = on_pool!(self, pool => sqlx::query(SQL)
            .bind(id)
            .bind(after)
            .execute(pool)
            .await?
            .rows_affected());
        Ok(affected == 1)
    }

    /// Takes or renews the delivery lease of a webhook until `until`: one conditional
    /// update, so of instances racing for it one wins. `false` if another instance holds
    /// it (or the webhook was deleted).
    pub async fn lease_webhook(
        &self,
        id: &str,
        owner: &str,
        now: Millis,
        until: Millis,
    ) -> Result<bool, StoreError> {
        const SQL: &str = "UPDATE webhooks SET lease_owner = $2, lease_until_ms = $4 \
            WHERE id = $1 AND deleted_at_ms IS NULL \
            AND (lease_owner = $2 OR lease_until_ms < $3)";
        let affected = on_pool!(self, pool => sqlx::query(SQL)
            .bind(id)
            .bind(owner)
            .bind(now.0)
            .bind(until.0)
            .execute(pool)
            .await?
            .rows_affected());
        Ok(affected == 1)
    }

    /// Gives the lease up (at shutdown), so another instance takes the webhook at once.
    pub async fn release_webhook(&self, id: &str, owner: &str) -> Result<(), StoreError> {
        const SQL: &str =
            "UPDATE webhooks SET lease_until_ms = 0 WHERE id = $1 AND lease_owner = $2";
        on_pool!(self, pool => sqlx::query(SQL)
            .bind(id)
            .bind(owner)
            .execute(pool)
            .await?
            .rows_affected());
        Ok(())
    }

    /// Moves the webhook's cursor past a delivered event while `owner` holds the lease
    /// (and unless a replay moved it meanwhile); `false` if the lease was lost.
    pub async fn advance_webhook(
        &self,
        id: &str,
        owner: &str,
        from: i64,
        to: i64,
    ) -> Result<bool, StoreError> {
        const SQL: &str = "UPDATE webhooks SET delivered_cursor = $4 \
            WHERE id = $1 AND lease_owner = $2 AND delivered_cursor = $3";
        let affected = on_pool!(self, pool => sqlx::query(SQL)
            .bind(id)
            .bind(owner)
            .bind(from)
            .bind(to)
            .execute(pool)
            .await?
            .rows_affected());
        Ok(affected == 1)
    }

    /// Several attempts at once (the successful deliveries of a webhook since the last
    /// flush), in one statement per hundred.
    pub async fn record_deliveries(
        &self,
        webhook: &str,
        all: &[Delivery],
    ) -> Result<(), StoreError> {
        for chunk in all.chunks(100) {
            let mut sql = String::from(
                "INSERT INTO webhook_deliveries (webhook_id, event_cursor, attempt, outcome, \
                 status_code, error, at_ms) VALUES ",
            );
            for i in 0..chunk.len() {
                let b = i * 7;
                if i > 0 {
                    sql.push(',');
                }
                sql.push_str(&format!(
                    "(${}, ${}, ${}, ${}, ${}, ${}, ${})",
                    b + 1,
                    b + 2,
                    b + 3,
                    b + 4,
                    b + 5,
                    b + 6,
                    b + 7
                ));
            }
            macro_rules! bound {
                ($query:expr) => {{
                    let mut query = $query;
                    for d in chunk {
                        query = query
                            .bind(webhook)
                            .bind(d.event_cursor)
                            .bind(d.attempt)
                            .bind(&d.outcome)
                            .bind(d.status_code)
                            .bind(&d.error)
                            .bind(d.at_ms);
                    }
                    query
                }};
            }
            on_pool!(self, pool => bound!(sqlx::query(&sql)).execute(pool).await.map(|_| ())?);
        }
        Ok(())
    }

    pub async fn record_delivery(&self, webhook: &str, d: &Delivery) -> Result<(), StoreError> {
        const SQL: &str = "INSERT INTO webhook_deliveries (webhook_id, event_cursor, attempt, \
            outcome, status_code, error, at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7)";
        on_pool!(self, pool => sqlx::query(SQL)
            .bind(webhook)
            .bind(d.event_cursor)
            .bind(d.attempt)
            .bind(&d.outcome)
            .bind(d.status_code)
            .bind(&d.error)
            .bind(d.at_ms)
            .execute(pool)
            .await?
            .rows_affected());
        Ok(())
    }

    /// Up to `limit` attempts of a webhook after attempt `after`, oldest first.
    pub async fn deliveries(
        &self,
        webhook: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<Delivery>, StoreError> {
        const SQL: &str = "SELECT id, event_cursor, attempt, outcome, status_code, error, at_ms \
            FROM webhook_deliveries WHERE webhook_id = $1 AND id > $2 ORDER BY id LIMIT $3";
        Ok(on_pool!(self, pool => sqlx::query_as(SQL)
            .bind(webhook)
            .bind(after)
            .bind(limit)
            .fetch_all(pool)
            .await?))
    }
}
