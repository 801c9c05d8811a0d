//! `GET /v1/events`: the durable, ordered feed of lifecycle events, read from the database.

use super::auth::Caller;
use super::error::ApiError;
use super::AppState;
use crate::domain::CampaignId;
use crate::store::{FeedEvent, FeedFilter};
use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/events", get(feed))
}

const MAX_LIMIT: i64 = 1000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedQuery {
    /// Events after this cursor (0: from the start).
    after: Option<i64>,
    /// At most this many (1 to 1000, default 100).
    limit: Option<i64>,
    /// Only this campaign's events.
    campaign_id: Option<String>,
    /// Only events of this type; several types comma-separated.
    #[serde(rename = "type")]
    kind: Option<String>,
}

/// Every type the feed carries.
pub const EVENT_TYPES: &[&str] = &[
    "reservation.held",
    "reservation.confirmed",
    "reservation.cancelled",
    "reservation.expired",
    "reservation.released",
    "reservation.extended",
    "group.opened",
    "group.formed",
    "group.failed",
];

/// A page of the feed.
#[derive(Debug, Serialize, ToSchema)]
pub struct FeedPage {
    /// `{"cursor","type","at","reservation"?}` in cursor order.
    #[schema(value_type = Vec<Object>)]
    events: Vec<FeedEvent>,
    /// The cursor to pass as `after` for the next page.
    next: i64,
    /// Whether more events (passing the same filters) follow `next` right now.
    has_more: bool,
}

/// Lifecycle events after a cursor: ordered, no gaps, no duplicates.
#[utoipa::path(get, path = "/v1/events", tag = "events", security(("bearer" = [])),
    params(("after" = Option<i64>, Query, description = "cursor; 0 or absent from the start"),
        ("limit" = Option<i64>, Query, description = "1 to 1000, default 100"),
        ("campaign_id" = Option<String>, Query, description = "only this campaign's events"),
        ("type" = Option<String>, Query, description = "only events of this type (comma-separated for several), e.g. `reservation.confirmed`")),
    responses((status = 200, body = FeedPage),
        (status = 403, description = "`forbidden`", body = super::error::Problem),
        (status = 422, description = "`invalid_request`: a bad cursor, limit, campaign id or type", body = super::error::Problem)))]
pub async fn feed(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<FeedQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<FeedPage>, ApiError> {
    caller.require_store()?;
    let Query(query) = query.map_err(|e| ApiError::InvalidRequest(e.body_text()))?;
    let after = query.after.unwrap_or(0);
    let limit = query.limit.unwrap_or(100);
    if after < 0 || !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::InvalidRequest(format!(
            "after must be a cursor (>= 0) and limit between 1 and {MAX_LIMIT}"
        )));
    }
    let mut filter = FeedFilter::default();
    if let Some(raw) = &query.campaign_id {
        let id = CampaignId::parse(raw)
            .map_err(|e| ApiError::InvalidRequest(format!("campaign_id: {}", e.0)))?;
        filter.campaign_id = Some(id.to_string());
    }
    for kind in query.kind.iter().flat_map(|k| k.split(',')) {
        if !EVENT_TYPES.contains(&kind) {
            return Err(ApiError::InvalidRequest(format!(
                "type {kind:?} is none of {}",
                EVENT_TYPES.join(", ")
            )));
        }
        filter.types.push(kind.to_owned());
    }
    // One more than asked: whether it exists is `has_more`.
    let mut events = state.store.events_after(after, limit + 1, &filter).await?;
    let has_more = events.len() as i64 > limit;
    events.truncate(limit as usize);
    let next = events.last().map_or(after, |e| e.cursor);
    Ok(Json(FeedPage {
        events,
        next,
        has_more,
    }))
}
