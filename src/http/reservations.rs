//! Reservation endpoints: reserve, read, confirm, cancel.

use super::auth::Caller;
use super::creating;
use super::error::ApiError;
use super::json::{JsonBody, PathId};
use super::AppState;
use crate::domain::{
    CampaignId, Millis, Quantity, Refusal, Reservation, ReservationId, ReservationStatus,
    ScopedKey, UserId,
};
use crate::engine::{CancelScope, Extension, ReserveOutcome, ReserveRequest, Transition};
use crate::metrics as m;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use utoipa::ToSchema;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/v1/campaigns/{id}/reservations",
            post(reserve).get(list_reservations),
        )
        .route("/v1/reservations/{id}", get(get_reservation))
        .route("/v1/reservations/{id}/confirm", post(confirm))
        .route("/v1/reservations/{id}/cancel", post(cancel))
        .route("/v1/reservations/{id}/extend", post(extend))
}

/// A reservation attempt.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewReservation {
    /// Required with a store token; taken from `sub` with a user token (and must match it
    /// if given).
    user_id: Option<String>,
    /// Units, default 1.
    quantity: Option<u64>,
}

/// One reservation.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReservationView {
    id: String,
    campaign_id: String,
    user_id: String,
    quantity: u32,
    /// `held | confirmed | cancelled | expired | released`
    status: String,
    created_at: String,
    expires_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    group_id: Option<String>,
}

impl From<Reservation> for ReservationView {
    fn from(r: Reservation) -> Self {
        ReservationView {
            id: r.id.to_string(),
            campaign_id: r.campaign_id.to_string(),
            user_id: r.user_id.to_string(),
            quantity: r.quantity.get(),
            status: r.status.as_str().to_owned(),
            created_at: r.created_at.to_rfc3339(),
            expires_at: r.expires_at.to_rfc3339(),
            group_id: r.group_id.map(|g| g.to_string()),
        }
    }
}

fn reservation_id(raw: &str) -> Result<ReservationId, ApiError> {
    ReservationId::parse(raw).map_err(|_| ApiError::ReservationNotFound(raw.to_owned()))
}

fn created(reservation: Reservation, replayed: bool) -> Response {
    let location = format!("/v1/reservations/{}", reservation.id);
    creating::created(location, ReservationView::from(reservation), replayed)
}

/// Counts an attempt. The `campaign` label names only campaigns known to exist, so random
/// ids cannot grow `/metrics` by a series each: the rest count as `unknown`; and only a
/// bounded set of them (`metrics::campaign_label`).
fn count_attempt(campaign: Option<&CampaignId>, outcome: &'static str) {
    // Handles are resolved again every `frame::RESOLVE_EVERY`, like the frame's: the
    // exporter drops a series nobody updated for a while, and the campaign label's
    // bookkeeping wants to see the campaign now and then.
    use super::frame::RESOLVE_EVERY;
    /// At most this many campaigns per worker thread; all are resolved afresh beyond it.
    const MOST: usize = 1_024;
    type ByOutcome = HashMap<&'static str, (metrics::Counter, std::time::Instant)>;
    thread_local! {
        /// The attempt counters by campaign (`None`: unknown) and outcome, resolved once per
        /// minute instead of per request (a label string and a registry lookup per attempt,
        /// in the profile). Looked up by reference: a hit allocates nothing.
        static HANDLES: std::cell::RefCell<(HashMap<CampaignId, ByOutcome>, ByOutcome)> =
            Default::default();
    }
    HANDLES.with(|cache| {
        let mut cache = cache.borrow_mut();
        let (known, unknown) = &mut *cache;
        let hit = match campaign {
            Some(c) => known.get(c).and_then(|by| by.get(outcome)),
            None => unknown.get(outcome),
        };
        if let Some((counter, resolved)) = hit {
            if resolved.elapsed() < RESOLVE_EVERY {
                counter.increment(1);
                return;
            }
        }
        let label =
            campaign.map_or_else(|| "unknown".to_owned(), |c| m::campaign_label(c.as_str()));
        let counter =
            metrics::counter!(m::RESERVATION_ATTEMPTS, "campaign" => label, "outcome" => outcome);
        counter.increment(1);
        let entry = (counter, std::time::Instant::now());
        match campaign {
            Some(c) => {
                if known.len() >= MOST && !known.contains_key(c) {
                    known.clear();
                }
                known.entry(c.clone()).or_default().insert(outcome, entry);
            }
            None => {
                unknown.insert(outcome, entry);
            }
        }
    });
}

/// Reserve units for a user.
#[utoipa::path(post, path = "/v1/campaigns/{id}/reservations", tag = "reservations",
    request_body = NewReservation, security(("bearer" = [])),
    params(("Idempotency-Key" = String, Header, description = "1–128 of [A-Za-z0-9._:-]")),
    responses((status = 201, body = ReservationView),
        (status = 409, description = "`sold_out`, `limit_exceeded`, `not_started`, `ended`, `wrong_campaign_kind`", body = super::error::Problem),
        (status = 403, description = "`queue_pass_required` (a campaign with a waiting room)", body = super::error::Problem),
        (status = 404, description = "`campaign_not_found`", body = super::error::Problem),
        (status = 422, description = "`idempotency_key_reused`, `invalid_request` (also: a store token must name the `user_id`; a user token acts for its own)", body = super::error::Problem),
        (status = 429, description = "`rate_limited`", body = super::error::Problem)))]
pub async fn reserve(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId,
    headers: HeaderMap,
    JsonBody(body): JsonBody<NewReservation>,
) -> Result<Response, ApiError> {
    let campaign_id =
        CampaignId::parse(&id).map_err(|_| ApiError::refused(Refusal::CampaignNotFound))?;
    let key = creating::idempotency_key(&headers)?;
    let user_id = creating::acting_user(&caller, body.user_id)?;
    let quantity =
        Quantity::parse(body.quantity.unwrap_or(1)).map_err(|e| ApiError::InvalidRequest(e.0))?;
    state.check_user_rate(user_id.as_str()).inspect_err(|_| {
        let known = state.engine.gate().is_some_and(|g| g.knows(&campaign_id));
        count_attempt(known.then_some(&campaign_id), "rate_limited")
    })?;
    let now = Millis::now();
    let scoped = ScopedKey::new(&caller.idempotency_scope(), "reserve", &key);
    let decision = super::queue::Decision {
        quantity: u64::from(quantity.get()),
        key: &scoped,
        group: false,
    };
    let pass =
        super::queue::admitted(&state, &campaign_id, &user_id, &headers, decision, now).await?;
    let request = ReserveRequest::new(campaign_id, user_id, quantity, scoped, now);
    let outcome = state.engine.reserve(&request).await;
    let made = matches!(outcome, Ok(ReserveOutcome::Reserved { .. }));
    super::queue::used(&state, pass, made).await;
    match outcome? {
        ReserveOutcome::Reserved { reservation, .. } => {
            count_attempt(Some(&request.campaign_id), "reserved");
            Ok(created(reservation, false))
        }
        ReserveOutcome::Replayed(reservation) => {
            count_attempt(Some(&request.campaign_id), "replayed");
            Ok(created(reservation, true))
        }
        // `Engine::reserve` reads a forgotten first outcome back from the database.
        ReserveOutcome::ReplayOf(id) => Err(ApiError::Internal(format!(
            "an unresolved replay of {id} reached the handler"
        ))),
        ReserveOutcome::RateLimited => {
            count_attempt(Some(&request.campaign_id), "rate_limited");
            Err(ApiError::RateLimited {
                retry_after: std::time::Duration::from_secs(1),
            })
        }
        ReserveOutcome::KeyReused => {
            count_attempt(Some(&request.campaign_id), "idempotency_key_reused");
            Err(ApiError::IdempotencyKeyReused)
        }
        ReserveOutcome::Refused(refusal) => {
            let exists = refusal != Refusal::CampaignNotFound;
            count_attempt(exists.then_some(&request.campaign_id), refusal.code());
            Err(ApiError::refused(refusal))
        }
    }
}

/// Reads a reservation the caller may see: any with a store token, its own with a user token.
async fn visible(
    state: &AppState,
    caller: &Caller,
    id: &ReservationId,
) -> Result<Reservation, ApiError> {
    let reservation = state
        .engine
        .reservation(id)
        .await?
        .ok_or_else(|| ApiError::ReservationNotFound(id.to_string()))?;
    caller.may_act_for(&reservation.user_id)?;
    Ok(reservation)
}

/// One reservation.
#[utoipa::path(get, path = "/v1/reservations/{id}", tag = "reservations", security(("bearer" = [])),
    responses((status = 200, body = ReservationView),
        (status = 404, description = "`reservation_not_found`", body = super::error::Problem)))]
pub async fn get_reservation(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId,
) -> Result<Json<ReservationView>, ApiError> {
    let id = reservation_id(&id)?;
    Ok(Json(visible(&state, &caller, &id).await?.into()))
}

/// How much longer a hold should last.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtendRequest {
    /// The hold lasts until at least now + this many seconds (1 to 86,400).
    seconds: u64,
}

/// Keeps a hold while a payment is in progress: `expires_at` becomes max(`expires_at`, now +
/// `seconds`), at most `created_at` + `hold_seconds` + `max_extend_seconds`. Atomic with
/// expiry: a hold that already expired answers 409 `reservation_not_held`, never both.
#[utoipa::path(post, path = "/v1/reservations/{id}/extend", tag = "reservations",
    request_body = ExtendRequest, security(("bearer" = [])),
    responses((status = 200, body = ReservationView),
        (status = 409, description = "`reservation_not_held`, `extension_exceeded`", body = super::error::Problem),
        (status = 404, description = "`reservation_not_found`", body = super::error::Problem),
        (status = 422, description = "`invalid_request`", body = super::error::Problem)))]
pub async fn extend(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId,
    JsonBody(body): JsonBody<ExtendRequest>,
) -> Result<Json<ReservationView>, ApiError> {
    caller.require_store()?;
    let id = reservation_id(&id)?;
    let seconds = u32::try_from(body.seconds)
        .ok()
        .filter(|s| (1..=86_400).contains(s))
        .ok_or_else(|| ApiError::InvalidRequest("seconds must be between 1 and 86400".into()))?;
    match state.engine.extend(&id, seconds, Millis::now()).await? {
        Extension::Extended(r) => Ok(Json(r.into())),
        Extension::NotHeld(r) => Err(ApiError::ReservationNotHeld(r.status.as_str())),
        Extension::Exceeded(r) => {
            let limit = match state.engine.campaign(&r.campaign_id).await? {
                Some(c) => r
                    .created_at
                    .plus_seconds(c.campaign.hold_seconds)
                    .plus_seconds(c.campaign.max_extend_seconds)
                    .to_rfc3339(),
                None => "its limit".to_owned(),
            };
            Err(ApiError::ExtensionExceeded(limit))
        }
        Extension::NotFound => Err(ApiError::ReservationNotFound(id.to_string())),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReservationsQuery {
    status: Option<String>,
    user_id: Option<String>,
    after: Option<String>,
    limit: Option<i64>,
}

/// A page of a campaign's reservations.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReservationPage {
    reservations: Vec<ReservationView>,
    /// Pass as `after` for the next page (the last reservation's id); absent on an empty page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<String>,
    has_more: bool,
}

/// A campaign's reservations as persisted (a change reaches this list within the
/// persister's delay), in creation order; by status and by user.
#[utoipa::path(get, path = "/v1/campaigns/{id}/reservations", tag = "reservations",
    security(("bearer" = [])),
    params(("status" = Option<String>, Query, description = "`held | confirmed | cancelled | expired | released`"),
        ("user_id" = Option<String>, Query, description = "only this user's"),
        ("after" = Option<String>, Query, description = "a reservation id: the page starts after it"),
        ("limit" = Option<i64>, Query, description = "1 to 1000, default 100")),
    responses((status = 200, body = ReservationPage),
        (status = 404, description = "`campaign_not_found`", body = super::error::Problem),
        (status = 422, description = "`invalid_request`", body = super::error::Problem)))]
pub async fn list_reservations(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId,
    query: Result<
        axum::extract::Query<ReservationsQuery>,
        axum::extract::rejection::QueryRejection,
    >,
) -> Result<Json<ReservationPage>, ApiError> {
    caller.require_store()?;
    let axum::extract::Query(query) = query.map_err(|e| ApiError::InvalidRequest(e.body_text()))?;
    let campaign =
        CampaignId::parse(&id).map_err(|_| ApiError::refused(Refusal::CampaignNotFound))?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::InvalidRequest(
            "limit must be between 1 and 1000".into(),
        ));
    }
    let status = query
        .status
        .as_deref()
        .map(|raw| {
            ReservationStatus::parse(raw).ok_or_else(|| {
                ApiError::InvalidRequest(format!(
                    "status {raw:?} is none of held, confirmed, cancelled, expired, released"
                ))
            })
        })
        .transpose()?;
    let user = query
        .user_id
        .as_deref()
        .map(|raw| {
            UserId::parse(raw).map_err(|e| ApiError::InvalidRequest(format!("user_id: {}", e.0)))
        })
        .transpose()?;
    let after = query.after.as_deref().filter(|a| !a.is_empty());
    if let Some(after) = after {
        ReservationId::parse(after)
            .map_err(|e| ApiError::InvalidRequest(format!("after: {}", e.0)))?;
    }
    if state.engine.campaign(&campaign).await?.is_none() {
        return Err(ApiError::refused(Refusal::CampaignNotFound));
    }
    let mut page = state
        .store
        .campaign_reservations(&campaign, status, user.as_ref(), after, limit + 1)
        .await?;
    let has_more = page.len() as i64 > limit;
    page.truncate(limit as usize);
    Ok(Json(ReservationPage {
        next: page.last().map(|r| r.id.to_string()),
        reservations: page.into_iter().map(ReservationView::from).collect(),
        has_more,
    }))
}

fn transitioned(
    outcome: Transition,
    id: &ReservationId,
) -> Result<Json<ReservationView>, ApiError> {
    match outcome {
        Transition::Done(r) | Transition::Unchanged(r) => Ok(Json(r.into())),
        Transition::NotHeld(r) => Err(ApiError::ReservationNotHeld(r.status.as_str())),
        Transition::NotFound => Err(ApiError::ReservationNotFound(id.to_string())),
    }
}

/// Held → confirmed (the user paid). Idempotent.
#[utoipa::path(post, path = "/v1/reservations/{id}/confirm", tag = "reservations",
    security(("bearer" = [])),
    responses((status = 200, body = ReservationView),
        (status = 409, description = "`reservation_not_held`", body = super::error::Problem),
        (status = 404, description = "`reservation_not_found`", body = super::error::Problem)))]
pub async fn confirm(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId,
) -> Result<Json<ReservationView>, ApiError> {
    caller.require_store()?;
    let id = reservation_id(&id)?;
    let outcome = state.engine.confirm(&id, Millis::now()).await?;
    transitioned(outcome, &id)
}

/// → cancelled, units return. Idempotent. A user may cancel only their own held reservation;
/// the store may also cancel a confirmed one (a refund).
#[utoipa::path(post, path = "/v1/reservations/{id}/cancel", tag = "reservations",
    security(("bearer" = [])),
    responses((status = 200, body = ReservationView),
        (status = 409, description = "`reservation_not_held`", body = super::error::Problem),
        (status = 404, description = "`reservation_not_found`", body = super::error::Problem)))]
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId,
) -> Result<Json<ReservationView>, ApiError> {
    let id = reservation_id(&id)?;
    let scope = match caller {
        Caller::Service { .. } => CancelScope::HeldOrConfirmed,
        Caller::User(_) => {
            let current = visible(&state, &caller, &id).await?;
            if current.status == ReservationStatus::Confirmed {
                return Err(ApiError::Forbidden(
                    "a confirmed reservation can only be cancelled by the store".into(),
                ));
            }
            CancelScope::HeldOnly
        }
    };
    let outcome = state.engine.cancel(&id, scope, Millis::now()).await?;
    transitioned(outcome, &id)
}
