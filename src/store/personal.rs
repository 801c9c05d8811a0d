//! Personal data in the database: user ids replaced past the retention (a keyed hash, so one
//! user maps to one pseudonym for statistics) or on request (an unlinkable marker), in every
//! table that holds them — reservations (with their idempotency key and fingerprint, which
//! can name the user), group leaders, the feed's payloads and set-aside events.

use super::{on_pool, Store, StoreError};
use crate::domain::Millis;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The keyed hash of a user id: `p_` and 32 hex digits of HMAC-SHA256(key, user id).
pub fn pseudonym(key: &str, user: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("any key length");
    mac.update(user.as_bytes());
    let digest = hex::encode(mac.finalize().into_bytes());
    format!("p_{}", &digest[..32])
}

/// What an erasure changed.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct Rewritten {
    pub reservations: u64,
    pub groups: u64,
    pub events: u64,
}

/// Replaces the user ids `replace` names in one JSON value's known fields.
fn rewrite_json(value: &mut serde_json::Value, replace: &dyn Fn(&str) -> Option<String>) -> bool {
    let mut changed = false;
    for (object, field) in [
        ("reservation", "user_id"),
        ("group", "leader_user_id"),
        ("", "user_id"),
        ("", "leader_user_id"),
    ] {
        let target = if object.is_empty() {
            Some(&mut *value)
        } else {
            value.get_mut(object)
        };
        let Some(slot) = target.and_then(|t| t.get_mut(field)) else {
            continue;
        };
        if let Some(new) = slot.as_str().and_then(replace) {
            *slot = serde_json::Value::String(new);
            changed = true;
            // A set-aside creating event carries the idempotency record: it names the user too.
            if object.is_empty() {
                for extra in ["key", "fingerprint"] {
                    if let Some(v) = value.get_mut(extra) {
                        *v = serde_json::Value::Null;
                    }
                }
            }
            if !object.is_empty() {
                break;
            }
        }
    }
    changed
}

impl Store {
    /// The pseudonym key: `configured`, or the one this database made once.
    pub async fn pseudonym_key(&self, configured: Option<&str>) -> Result<String, StoreError> {
        self.secret("pseudonym_key", configured).await
    }

    /// A secret every instance sharing this database must agree on: `configured`, or a
    /// random one made by the first instance that asked and kept in `settings` as `name`.
    pub async fn secret(&self, name: &str, configured: Option<&str>) -> Result<String, StoreError> {
        if let Some(key) = configured.filter(|k| !k.is_empty()) {
            return Ok(key.to_owned());
        }
        let fresh = hex::encode(rand::random::<[u8; 32]>());
        const INSERT: &str =
            "INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING";
        const SELECT: &str = "SELECT value FROM settings WHERE name = $1";
        Ok(on_pool!(self, pool => {
            sqlx::query(INSERT).bind(name).bind(&fresh).execute(pool).await?;
            sqlx::query_scalar::<_, String>(SELECT).bind(name).fetch_one(pool).await?
        }))
    }

    /// Archived campaigns that ended before `cutoff` and still carry user ids.
    pub async fn campaigns_past_retention(
        &self,
        cutoff: Millis,
    ) -> Result<Vec<String>, StoreError> {
        const SQL: &str = "SELECT id FROM campaigns WHERE archived_at_ms IS NOT NULL \
            AND ends_at_ms IS NOT NULL AND ends_at_ms < $1 AND pseudonymised_at_ms IS NULL ORDER BY id";
        Ok(on_pool!(self, pool => sqlx::query_scalar::<_, String>(SQL)
            .bind(cutoff.0)
            .fetch_all(pool)
            .await?))
    }

    /// Replaces every user id of a campaign by its pseudonym, in one transaction, and marks
    /// the campaign done.
    pub async fn pseudonymise_campaign(
        &self,
        campaign: &str,
        key: &str,
        now: Millis,
    ) -> Result<Rewritten, StoreError> {
        let replace = |user: &str| (!user.starts_with("p_")).then(|| pseudonym(key, user));
        self.rewrite_campaign(campaign, &replace, Some(now)).await
    }

    /// Whether the user holds a unit now (a held reservation) or is in a group that is
    /// still open — as the database knows it (changes arrive within the persister's delay).
    pub async fn user_has_live_reservations(&self, user: &str) -> Result<bool, StoreError> {
        const SQL: &str = "SELECT COUNT(*) FROM reservations r LEFT JOIN groups g ON g.id = r.group_id \
            WHERE r.user_id = $1 AND (r.status = 'held' OR (g.status = 'open' AND r.status = 'confirmed'))";
        let live: i64 = on_pool!(self, pool => sqlx::query_scalar(SQL)
            .bind(user)
            .fetch_one(pool)
            .await?);
        Ok(live > 0)
    }

    /// The campaigns that ended (by `now`) in which the user reserved or led a group; with
    /// `in_engine`, only those not archived yet (the stock engine may still hold copies).
    pub async fn ended_campaigns_of(
        &self,
        user: &str,
        now: Millis,
        in_engine: bool,
    ) -> Result<Vec<String>, StoreError> {
        let ended = if in_engine {
            "c.ends_at_ms IS NOT NULL AND c.ends_at_ms <= $2 AND c.archived_at_ms IS NULL"
        } else {
            "c.ends_at_ms IS NOT NULL AND c.ends_at_ms <= $2"
        };
        let sql = format!(
            "SELECT DISTINCT r.campaign_id FROM reservations r \
            JOIN campaigns c ON c.id = r.campaign_id WHERE r.user_id = $1 AND {ended} \
            UNION SELECT DISTINCT g.campaign_id FROM groups g JOIN campaigns c ON c.id = g.campaign_id \
            WHERE g.leader_user_id = $1 AND {ended}"
        );
        Ok(on_pool!(self, pool => sqlx::query_scalar(&sql)
            .bind(user)
            .bind(now.0)
            .fetch_all(pool)
            .await?))
    }

    /// Erases a user from every campaign that has ended (by `now`): their id becomes an
    /// unlinkable marker in every table.
    pub async fn erase_user(&self, user: &str, now: Millis) -> Result<Rewritten, StoreError> {
        let campaigns = self.ended_campaigns_of(user, now, false).await?;
        let marker = format!("erased_{}", ulid::Ulid::new().to_string().to_lowercase());
        let replace = |found: &str| (found == user).then(|| marker.clone());
        let mut total = Rewritten::default();
        for campaign in campaigns {
            let done = self.rewrite_campaign(&campaign, &replace, None).await?;
            total.reservations += done.reservations;
            total.groups += done.groups;
            total.events += done.events;
        }
        Ok(total)
    }

    /// One transaction: every user id of the campaign that `replace` maps, replaced.
    async fn rewrite_campaign(
        &self,
        campaign: &str,
        replace: &(dyn Fn(&str) -> Option<String> + Sync),
        mark: Option<Millis>,
    ) -> Result<Rewritten, StoreError> {
        let mut done = Rewritten::default();
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let rows: Vec<(String, String)> =
                sqlx::query_as("SELECT id, user_id FROM reservations WHERE campaign_id = $1")
                    .bind(campaign)
                    .fetch_all(&mut *tx)
                    .await?;
            for (id, user) in rows {
                if let Some(new) = replace(&user) {
                    sqlx::query("UPDATE reservations SET user_id = $2, idempotency_key = NULL, \
                        fingerprint = NULL WHERE id = $1")
                        .bind(&id)
                        .bind(&new)
                        .execute(&mut *tx)
                        .await?;
                    done.reservations += 1;
                }
            }
            let rows: Vec<(String, String)> =
                sqlx::query_as("SELECT id, leader_user_id FROM groups WHERE campaign_id = $1")
                    .bind(campaign)
                    .fetch_all(&mut *tx)
                    .await?;
            for (id, user) in rows {
                if let Some(new) = replace(&user) {
                    sqlx::query("UPDATE groups SET leader_user_id = $2 WHERE id = $1")
                        .bind(&id)
                        .bind(&new)
                        .execute(&mut *tx)
                        .await?;
                    done.groups += 1;
                }
            }
            let rows: Vec<(i64, String)> =
                sqlx::query_as("SELECT cursor, payload FROM events WHERE campaign_id = $1")
                    .bind(campaign)
                    .fetch_all(&mut *tx)
                    .await?;
            for (cursor, payload) in rows {
                let mut value: serde_json::Value = serde_json::from_str(&payload)
                    .map_err(|e| StoreError::Corrupt(format!("event payload: {e}")))?;
                if rewrite_json(&mut value, replace) {
                    sqlx::query("UPDATE events SET payload = $2 WHERE cursor = $1")
                        .bind(cursor)
                        .bind(value.to_string())
                        .execute(&mut *tx)
                        .await?;
                    done.events += 1;
                }
            }
            let rows: Vec<(i64, String)> =
                sqlx::query_as("SELECT id, event FROM dead_events WHERE campaign_id = $1")
                    .bind(campaign)
                    .fetch_all(&mut *tx)
                    .await?;
            for (id, event) in rows {
                let Ok(mut value) = serde_json::from_str::<serde_json::Value>(&event) else {
                    continue;
                };
                if rewrite_json(&mut value, replace) {
                    sqlx::query("UPDATE dead_events SET event = $2 WHERE id = $1")
                        .bind(id)
                        .bind(value.to_string())
                        .execute(&mut *tx)
                        .await?;
                }
            }
            if let Some(now) = mark {
                sqlx::query("UPDATE campaigns SET pseudonymised_at_ms = $2 WHERE id = $1")
                    .bind(campaign)
                    .bind(now.0)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        });
        Ok(done)
    }
}
