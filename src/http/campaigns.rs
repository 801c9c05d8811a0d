//! Campaign endpoints: create, read, tune stock, availability.

use super::auth::Caller;
use super::creating;
use super::error::ApiError;
use super::json::{JsonBody, PathId};
use super::AppState;
use crate::domain::{
    Campaign, CampaignDraft, CampaignId, CampaignState, CampaignStatus, Millis, Refusal, ScopedKey,
    StockDelta,
};
use crate::engine::{StockOutcome, StockRequest};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/campaigns", post(create_campaign).get(list_campaigns))
        .route("/v1/campaigns/{id}/end", post(end_campaign))
        .route("/v1/campaigns/{id}", get(get_campaign))
        .route("/v1/campaigns/{id}/stock", post(adjust_stock))
        .route("/v1/campaigns/{id}/availability", get(availability))
}

/// A campaign to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewCampaign {
    /// `[a-z0-9_-]{1,64}`; generated when absent.
    id: Option<String>,
    /// `flash_sale` or `group_buy`.
    kind: String,
    sku: String,
    /// Units on sale, at least 1.
    stock: u64,
    /// Units one user may hold + confirm; default 1.
    per_user_limit: Option<u64>,
    /// RFC 3339; absent: open from creation.
    starts_at: Option<String>,
    /// RFC 3339; absent: never ends.
    ends_at: Option<String>,
    /// Seconds a reservation stays held unpaid; default 900.
    hold_seconds: Option<u64>,
    /// How far past `created_at + hold_seconds` the store may extend a hold while a
    /// payment is in progress (`POST /v1/reservations/{id}/extend`); default 300.
    max_extend_seconds: Option<u64>,
    /// Required for, and only for, `group_buy`.
    group: Option<NewGroupRule>,
    /// A waiting room: reservations (and group opens/joins) then need a pass from an
    /// admitted ticket (`POST /v1/campaigns/{id}/queue`).
    queue: Option<NewQueueRule>,
    /// 1 to 64 (default 1): the stock is spread over this many shards that decide on their
    /// own (a hot SKU past one Redis core or node); callers see one campaign. Only for
    /// `flash_sale` campaigns without a waiting room.
    #[schema(minimum = 1, maximum = 64)]
    shards: Option<u64>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewQueueRule {
    /// Waiting users admitted per second, at least 1.
    admit_per_second: u64,
    /// How long a pass stays valid once admitted; default 120.
    pass_seconds: Option<u64>,
}

/// A campaign's waiting room.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueueRuleView {
    admit_per_second: u32,
    pass_seconds: u32,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewGroupRule {
    size: u64,
    window_seconds: u64,
}

/// A campaign with its live counts.
#[derive(Debug, Serialize, ToSchema)]
pub struct CampaignView {
    id: String,
    kind: String,
    sku: String,
    stock: u64,
    per_user_limit: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    starts_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ends_at: Option<String>,
    hold_seconds: u32,
    max_extend_seconds: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<GroupRuleView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    queue: Option<QueueRuleView>,
    shards: u8,
    created_at: String,
    /// `scheduled | active | sold_out | ended`
    #[schema(value_type = String)]
    status: CampaignStatus,
    available: u64,
    held: u64,
    confirmed: u64,
    /// Group counts by status, for group-buy campaigns.
    #[serde(skip_serializing_if = "Option::is_none")]
    groups: Option<GroupCountsView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct GroupCountsView {
    open: u64,
    formed: u64,
    failed: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct GroupRuleView {
    size: u32,
    window_seconds: u32,
}

impl CampaignView {
    fn of(state: CampaignState, now: Millis) -> Self {
        let status = state.status(now);
        let c = state.campaign;
        CampaignView {
            id: c.id.to_string(),
            kind: c.kind.as_str().to_owned(),
            sku: c.sku,
            stock: c.stock,
            per_user_limit: c.per_user_limit,
            starts_at: c.starts_at.map(Millis::to_rfc3339),
            ends_at: c.ends_at.map(Millis::to_rfc3339),
            hold_seconds: c.hold_seconds,
            max_extend_seconds: c.max_extend_seconds,
            group: c.group.map(|g| GroupRuleView {
                size: g.size,
                window_seconds: g.window_seconds,
            }),
            queue: c.queue.map(|q| QueueRuleView {
                admit_per_second: q.admit_per_second,
                pass_seconds: q.pass_seconds,
            }),
            shards: c.shards,
            created_at: c.created_at.to_rfc3339(),
            status,
            available: state.available,
            held: state.held,
            confirmed: state.confirmed,
            groups: c.group.map(|_| GroupCountsView {
                open: state.groups.open,
                formed: state.groups.formed,
                failed: state.groups.failed,
            }),
        }
    }
}

/// A stock change.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StockChange {
    /// Units to add (positive) or withdraw (negative); not zero.
    delta: i64,
}

/// The cheap public view of a campaign.
#[derive(Debug, Serialize, ToSchema)]
pub struct Availability {
    /// `scheduled | active | sold_out | ended`
    #[schema(value_type = String)]
    status: CampaignStatus,
    available: u64,
}

/// Any path id that is not a valid campaign id names no campaign.
fn campaign_id(raw: &str) -> Result<CampaignId, ApiError> {
    CampaignId::parse(raw).map_err(|_| ApiError::refused(Refusal::CampaignNotFound))
}

/// Create a campaign.
#[utoipa::path(post, path = "/v1/campaigns", tag = "campaigns", request_body = NewCampaign,
    security(("bearer" = [])),
    responses((status = 201, body = CampaignView),
        (status = 409, description = "`campaign_exists`", body = super::error::Problem),
        (status = 422, description = "`invalid_request`, also for rules no schema says: `ends_at` after `starts_at`; `group` exactly for a `group_buy`; `shards` above 1 neither with a waiting room nor for a group buy", body = super::error::Problem)))]
pub async fn create_campaign(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<NewCampaign>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require_admin()?;
    let now = Millis::now();
    let draft = CampaignDraft {
        id: body.id,
        kind: body.kind,
        sku: body.sku,
        stock: body.stock,
        per_user_limit: body.per_user_limit,
        starts_at: body.starts_at,
        ends_at: body.ends_at,
        hold_seconds: body.hold_seconds,
        max_extend_seconds: body.max_extend_seconds,
        group: body.group.map(|g| (g.size, g.window_seconds)),
        queue: body.queue.map(|q| (q.admit_per_second, q.pass_seconds)),
        shards: body.shards,
    };
    let campaign = Campaign::parse(draft, now).map_err(|e| ApiError::InvalidRequest(e.0))?;
    if !state.engine.create_campaign(&campaign).await? {
        return Err(ApiError::CampaignExists(campaign.id.to_string()));
    }
    let location = format!("/v1/campaigns/{}", campaign.id);
    let view = CampaignView::of(
        CampaignState {
            available: campaign.stock,
            held: 0,
            confirmed: 0,
            groups: Default::default(),
            campaign,
        },
        now,
    );
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(view),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    status: Option<String>,
    after: Option<String>,
    limit: Option<i64>,
}

/// A page of campaigns.
#[derive(Debug, Serialize, ToSchema)]
pub struct CampaignPage {
    campaigns: Vec<CampaignView>,
    /// Pass as `after` for the next page (the last campaign's id); absent on an empty page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<String>,
    has_more: bool,
}

/// Campaigns by id, with their live counts; `status` filters (`scheduled`, `active`,
/// `sold_out`, `ended`).
#[utoipa::path(get, path = "/v1/campaigns", tag = "campaigns", security(("bearer" = [])),
    params(("status" = Option<String>, Query, description = "`scheduled | active | sold_out | ended`"),
        ("after" = Option<String>, Query, description = "a campaign id: the page starts after it"),
        ("limit" = Option<i64>, Query, description = "1 to 500, default 100")),
    responses((status = 200, body = CampaignPage),
        (status = 422, description = "`invalid_request`", body = super::error::Problem)))]
pub async fn list_campaigns(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<axum::extract::Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<CampaignPage>, ApiError> {
    caller.require_store()?;
    let axum::extract::Query(query) = query.map_err(|e| ApiError::InvalidRequest(e.body_text()))?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::InvalidRequest(
            "limit must be between 1 and 500".into(),
        ));
    }
    let wanted = match query.status.as_deref() {
        None => None,
        Some("scheduled") => Some(CampaignStatus::Scheduled),
        Some("active") => Some(CampaignStatus::Active),
        Some("sold_out") => Some(CampaignStatus::SoldOut),
        Some("ended") => Some(CampaignStatus::Ended),
        Some(other) => {
            return Err(ApiError::InvalidRequest(format!(
                "status {other:?} is none of scheduled, active, sold_out, ended"
            )))
        }
    };
    // A campaign id (or nothing): anything else names no place in the list.
    let mut after = query.after.clone().filter(|a| !a.is_empty());
    if let Some(after) = &after {
        CampaignId::parse(after)
            .map_err(|e| ApiError::InvalidRequest(format!("after: {}", e.0)))?;
    }
    let now = Millis::now();
    let mut views = Vec::new();
    // Whether a campaign in its window is sold out or active comes from the availability
    // the persister keeps in the database, which is current for every campaign off the
    // work index's active list (a change announces its campaign first, and it leaves the
    // list only once its events are persisted): so the candidates are the database's and
    // the active list's, each confirmed with the engine.
    let recent: std::collections::BTreeSet<CampaignId> = match wanted {
        Some(CampaignStatus::Active | CampaignStatus::SoldOut) => state
            .work
            .active()
            .await?
            .campaigns()
            .map(CampaignId::parent)
            .collect(),
        _ => Default::default(),
    };
    // Pages of the database's campaigns until one more than asked for matches (that one
    // only says `has_more`). With a status, the database's indexes narrow the pages to the
    // candidates (its window columns and the availability the persister keeps), so an idle
    // catalogue is not read campaign by campaign; the engine confirms each.
    'pages: loop {
        let page = match wanted {
            Some(status) => {
                state
                    .store
                    .campaigns_page_with_status(status, now, after.as_deref(), limit.max(50))
                    .await?
            }
            None => {
                state
                    .store
                    .campaigns_page(after.as_deref(), limit.max(50))
                    .await?
            }
        };
        let exhausted = (page.len() as i64) < limit.max(50);
        // This page's candidates and the recently changed campaigns up to its last id (to
        // the end when it is the last page), in id order.
        let from = after.clone().unwrap_or_default();
        let upto = page.last().map(|c| c.id.to_string());
        let mut candidates: std::collections::BTreeSet<CampaignId> =
            page.into_iter().map(|c| c.id).collect();
        candidates.extend(
            recent
                .iter()
                .filter(|id| {
                    id.as_str() > from.as_str()
                        && (exhausted || upto.as_deref().is_some_and(|upto| id.as_str() <= upto))
                })
                .cloned(),
        );
        for id in candidates {
            after = Some(id.to_string());
            let Some(live) = state.engine.campaign(&id).await? else {
                continue;
            };
            if wanted.is_some_and(|w| live.status(now) != w) {
                continue;
            }
            views.push(CampaignView::of(live, now));
            if views.len() as i64 > limit {
                break 'pages;
            }
        }
        if exhausted {
            break;
        }
    }
    let has_more = views.len() as i64 > limit;
    views.truncate(limit as usize);
    Ok(Json(CampaignPage {
        next: views.last().map(|v| v.id.clone()),
        campaigns: views,
        has_more,
    }))
}

/// Ends the campaign now: no new attempts (`ended`); live holds end as they would have.
/// Idempotent (a campaign that ended already keeps its end).
#[utoipa::path(post, path = "/v1/campaigns/{id}/end", tag = "campaigns", security(("bearer" = [])),
    responses((status = 200, body = CampaignView),
        (status = 404, description = "`campaign_not_found`", body = super::error::Problem)))]
pub async fn end_campaign(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId,
) -> Result<Json<CampaignView>, ApiError> {
    caller.require_admin()?;
    let id = campaign_id(&id)?;
    let now = Millis::now();
    let ended = state
        .engine
        .end_campaign(&id, now)
        .await?
        .ok_or(ApiError::refused(Refusal::CampaignNotFound))?;
    Ok(Json(CampaignView::of(ended, now)))
}

/// A campaign's config and live counts.
#[utoipa::path(get, path = "/v1/campaigns/{id}", tag = "campaigns", security(("bearer" = [])),
    responses((status = 200, body = CampaignView),
        (status = 404, description = "`campaign_not_found`", body = super::error::Problem)))]
pub async fn get_campaign(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId,
) -> Result<Json<CampaignView>, ApiError> {
    caller.require_store()?;
    let id = campaign_id(&id)?;
    let campaign = state
        .engine
        .campaign(&id)
        .await?
        .ok_or(ApiError::refused(Refusal::CampaignNotFound))?;
    Ok(Json(CampaignView::of(campaign, Millis::now())))
}

/// Add or withdraw units.
#[utoipa::path(post, path = "/v1/campaigns/{id}/stock", tag = "campaigns", request_body = StockChange,
    security(("bearer" = [])),
    params(("Idempotency-Key" = String, Header, description = "1–128 of [A-Za-z0-9._:-]; a retried change applies once")),
    responses((status = 200, body = CampaignView),
        (status = 409, description = "`insufficient_stock`", body = super::error::Problem),
        (status = 422, description = "`idempotency_key_reused`, `invalid_request`", body = super::error::Problem)))]
pub async fn adjust_stock(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId,
    headers: HeaderMap,
    JsonBody(body): JsonBody<StockChange>,
) -> Result<Response, ApiError> {
    caller.require_admin()?;
    let id = campaign_id(&id)?;
    let key = creating::idempotency_key(&headers)?;
    let delta = StockDelta::parse(body.delta).map_err(|e| ApiError::InvalidRequest(e.0))?;
    let request = StockRequest {
        idempotency_key: ScopedKey::new(&caller.idempotency_scope(), &format!("stock:{id}"), &key),
        campaign_id: id,
        delta,
    };
    let replayed = match state.engine.adjust_stock(&request).await? {
        StockOutcome::Adjusted { .. } => false,
        StockOutcome::Replayed { .. } => true,
        StockOutcome::KeyReused => return Err(ApiError::IdempotencyKeyReused),
        StockOutcome::Insufficient { available } => {
            return Err(ApiError::InsufficientStock { available })
        }
        StockOutcome::NotFound => return Err(ApiError::refused(Refusal::CampaignNotFound)),
    };
    let campaign = state
        .engine
        .campaign(&request.campaign_id)
        .await?
        .ok_or(ApiError::refused(Refusal::CampaignNotFound))?;
    let mut response = Json(CampaignView::of(campaign, Millis::now())).into_response();
    if replayed {
        creating::mark_replayed(&mut response);
    }
    Ok(response)
}

/// Whether a campaign is on and how many units are left; cacheable for a second.
#[utoipa::path(get, path = "/v1/campaigns/{id}/availability", tag = "campaigns",
    responses((status = 200, body = Availability),
        (status = 404, description = "`campaign_not_found`", body = super::error::Problem)))]
pub async fn availability(
    State(state): State<AppState>,
    PathId(id): PathId,
) -> Result<impl IntoResponse, ApiError> {
    let id = campaign_id(&id)?;
    let (status, available) = state
        .engine
        .availability(&id, Millis::now())
        .await?
        .ok_or(ApiError::refused(Refusal::CampaignNotFound))?;
    Ok((
        [(header::CACHE_CONTROL, "max-age=1")],
        Json(Availability { status, available }),
    ))
}
