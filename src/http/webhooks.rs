//! Webhook endpoints (admin): subscribe, list, read, delete, the delivery record, replay.

use super::auth::Caller;
use super::creating;
use super::error::ApiError;
use super::events::EVENT_TYPES;
use super::json::{JsonBody, PathId};
use super::AppState;
use crate::domain::{CampaignId, Millis};
use crate::store::{Delivery, Webhook};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/webhooks", post(create_webhook).get(list_webhooks))
        .route("/v1/webhooks/{id}", get(get_webhook).delete(delete_webhook))
        .route("/v1/webhooks/{id}/deliveries", get(deliveries))
        .route("/v1/webhooks/{id}/replay", post(replay))
}

/// A subscription to the feed.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewWebhook {
    /// `http(s)://…`; must resolve to a public address unless listed in
    /// `FLASHSALE_WEBHOOK_ALLOWED_HOSTS`.
    url: String,
    /// Only these event types (default: every type).
    event_types: Option<Vec<String>>,
    /// Only this campaign's events.
    campaign_id: Option<String>,
    /// Feed items one delivery may carry, 1 to 100 (default 1: the item alone is the body;
    /// more: `{"events": [...]}`, `Flashsale-Event-Cursor` naming the last).
    #[schema(minimum = 1, maximum = 100)]
    max_batch: Option<u32>,
}

/// A webhook; `secret` only in the answer to its creation.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookView {
    id: String,
    url: String,
    event_types: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    campaign_id: Option<String>,
    /// Signs every delivery (`Flashsale-Signature`); shown once.
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
    created_at: String,
    /// Every event up to this feed cursor was delivered (or given up on).
    delivered_cursor: i64,
    /// Feed items one delivery carries at most.
    max_batch: u32,
}

impl WebhookView {
    fn of(w: Webhook, with_secret: bool) -> Self {
        WebhookView {
            id: w.id,
            url: w.url,
            event_types: w.event_types,
            campaign_id: w.campaign_id,
            secret: with_secret.then_some(w.secret),
            created_at: w.created_at.to_rfc3339(),
            delivered_cursor: w.delivered_cursor,
            max_batch: w.max_batch,
        }
    }
}

/// Subscribes an endpoint to the feed, from now on.
#[utoipa::path(post, path = "/v1/webhooks", tag = "webhooks", request_body = NewWebhook,
    security(("bearer" = [])),
    params(("Idempotency-Key" = String, Header, description = "1–128 of [A-Za-z0-9._:-]; a retry with the same key and body answers the same webhook")),
    responses((status = 201, body = WebhookView),
        (status = 422, description = "`invalid_request`: a bad URL, a host that does not resolve, a target not allowed, an unknown type or campaign id, `max_batch` out of 1..100; `idempotency_key_reused`", body = super::error::Problem)))]
pub async fn create_webhook(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    JsonBody(body): JsonBody<NewWebhook>,
) -> Result<axum::response::Response, ApiError> {
    caller.require_admin()?;
    let key = creating::idempotency_key(&headers)?;
    let url = state
        .webhook_hosts
        .check_url(&body.url)
        .await
        .map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
    let max_batch = body.max_batch.unwrap_or(1);
    if !(1..=100).contains(&max_batch) {
        return Err(ApiError::InvalidRequest(
            "max_batch must be between 1 and 100".into(),
        ));
    }
    let event_types = body.event_types.unwrap_or_default();
    if let Some(unknown) = event_types
        .iter()
        .find(|t| !EVENT_TYPES.contains(&t.as_str()))
    {
        return Err(ApiError::InvalidRequest(format!(
            "event type {unknown:?} is none of {}",
            EVENT_TYPES.join(", ")
        )));
    }
    let campaign_id = body
        .campaign_id
        .map(|raw| CampaignId::parse(&raw))
        .transpose()
        .map_err(|e| ApiError::InvalidRequest(format!("campaign_id: {}", e.0)))?;
    if let Some(id) = &campaign_id {
        if state.store.campaign(id).await?.is_none() {
            return Err(ApiError::InvalidRequest(format!(
                "campaign_id: there is no campaign {id}"
            )));
        }
    }
    let campaign_id = campaign_id.map(|id| id.to_string());
    let fingerprint =
        serde_json::json!([url.as_str(), &event_types, &campaign_id, max_batch]).to_string();
    let webhook = Webhook {
        id: format!("wh_{}", ulid::Ulid::new()),
        url: url.to_string(),
        event_types,
        campaign_id,
        secret: crate::webhooks::new_secret(),
        created_at: Millis::now(),
        delivered_cursor: state.store.newest_cursor().await?,
        max_batch,
    };
    let made = state
        .store
        .insert_webhook(&webhook, key.as_str(), &fingerprint)
        .await?;
    let (webhook, replayed) = match made {
        None => (webhook, false),
        Some((first, first_fingerprint)) if first_fingerprint == fingerprint => (first, true),
        Some(_) => return Err(ApiError::IdempotencyKeyReused),
    };
    let location = format!("/v1/webhooks/{}", webhook.id);
    Ok(creating::created(
        location,
        WebhookView::of(webhook, true),
        replayed,
    ))
}

/// Every webhook.
#[utoipa::path(get, path = "/v1/webhooks", tag = "webhooks", security(("bearer" = [])),
    responses((status = 200, body = Vec<WebhookView>)))]
pub async fn list_webhooks(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<WebhookView>>, ApiError> {
    caller.require_admin()?;
    let all = state.store.webhooks().await?;
    Ok(Json(
        all.into_iter().map(|w| WebhookView::of(w, false)).collect(),
    ))
}

/// Webhook ids are `wh_` and a ULID; anything else is no webhook (and never reaches the
/// database: a NUL byte in a path would make Postgres refuse the query).
fn webhook_id(id: &str) -> Result<&str, ApiError> {
    let valid = id
        .strip_prefix("wh_")
        .is_some_and(|rest| rest.parse::<ulid::Ulid>().is_ok());
    if valid {
        Ok(id)
    } else {
        Err(ApiError::WebhookNotFound(id.to_owned()))
    }
}

async fn found(state: &AppState, id: &str) -> Result<Webhook, ApiError> {
    let id = webhook_id(id)?;
    state
        .store
        .webhook(id)
        .await?
        .ok_or_else(|| ApiError::WebhookNotFound(id.to_owned()))
}

/// One webhook.
#[utoipa::path(get, path = "/v1/webhooks/{id}", tag = "webhooks", security(("bearer" = [])),
    responses((status = 200, body = WebhookView),
        (status = 404, description = "`webhook_not_found`", body = super::error::Problem)))]
pub async fn get_webhook(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId,
) -> Result<Json<WebhookView>, ApiError> {
    caller.require_admin()?;
    Ok(Json(WebhookView::of(found(&state, &id).await?, false)))
}

/// Stops deliveries to a webhook.
#[utoipa::path(delete, path = "/v1/webhooks/{id}", tag = "webhooks", security(("bearer" = [])),
    responses((status = 204),
        (status = 404, description = "`webhook_not_found`", body = super::error::Problem)))]
pub async fn delete_webhook(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId,
) -> Result<StatusCode, ApiError> {
    caller.require_admin()?;
    webhook_id(&id)?;
    if state.store.delete_webhook(&id, Millis::now()).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::WebhookNotFound(id))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveriesQuery {
    after: Option<i64>,
    limit: Option<i64>,
}

/// A page of delivery attempts.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveriesPage {
    /// `{"id","event_cursor","attempt","outcome","status_code"?,"error"?,"at"}`, oldest first.
    #[schema(value_type = Vec<Object>)]
    deliveries: Vec<DeliveryView>,
    /// Pass as `after` for the next page.
    next: i64,
    has_more: bool,
}

#[derive(Debug, Serialize)]
struct DeliveryView {
    #[serde(flatten)]
    delivery: Delivery,
    at: String,
}

/// Every delivery attempt of a webhook: which event, which attempt, and what came back.
#[utoipa::path(get, path = "/v1/webhooks/{id}/deliveries", tag = "webhooks",
    security(("bearer" = [])),
    params(("after" = Option<i64>, Query, description = "attempt id; absent: from the first"),
        ("limit" = Option<i64>, Query, description = "1 to 1000, default 100")),
    responses((status = 200, body = DeliveriesPage),
        (status = 404, description = "`webhook_not_found`", body = super::error::Problem)))]
pub async fn deliveries(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId,
    query: Result<Query<DeliveriesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<DeliveriesPage>, ApiError> {
    caller.require_admin()?;
    let Query(query) = query.map_err(|e| ApiError::InvalidRequest(e.body_text()))?;
    let after = query.after.unwrap_or(0);
    let limit = query.limit.unwrap_or(100);
    if after < 0 || !(1..=1000).contains(&limit) {
        return Err(ApiError::InvalidRequest(
            "after must be >= 0 and limit between 1 and 1000".into(),
        ));
    }
    found(&state, &id).await?;
    let mut page = state.store.deliveries(&id, after, limit + 1).await?;
    let has_more = page.len() as i64 > limit;
    page.truncate(limit as usize);
    let next = page.last().map_or(after, |d| d.id);
    let deliveries = page
        .into_iter()
        .map(|d| DeliveryView {
            at: Millis(d.at_ms).to_rfc3339(),
            delivery: d,
        })
        .collect();
    Ok(Json(DeliveriesPage {
        deliveries,
        next,
        has_more,
    }))
}

/// Where a replay starts.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Replay {
    /// Deliver again every event after this feed cursor.
    after: i64,
}

/// Delivers again from a feed cursor on (at least once, in order, as before).
#[utoipa::path(post, path = "/v1/webhooks/{id}/replay", tag = "webhooks", request_body = Replay,
    security(("bearer" = [])),
    responses((status = 200, body = WebhookView),
        (status = 404, description = "`webhook_not_found`", body = super::error::Problem)))]
pub async fn replay(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId,
    JsonBody(body): JsonBody<Replay>,
) -> Result<Json<WebhookView>, ApiError> {
    caller.require_admin()?;
    if body.after < 0 {
        return Err(ApiError::InvalidRequest(
            "after must be a cursor (>= 0)".into(),
        ));
    }
    webhook_id(&id)?;
    if !state.store.rewind_webhook(&id, body.after).await? {
        return Err(ApiError::WebhookNotFound(id));
    }
    Ok(Json(WebhookView::of(found(&state, &id).await?, false)))
}
