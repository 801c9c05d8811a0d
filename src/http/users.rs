//! `DELETE /v1/users/{user_id}` (admin): a user's personal data erased from every ended
//! campaign now (contract v1.1, "Personal data").

use super::auth::Caller;
use super::error::ApiError;
use super::json::PathId;
use super::AppState;
use crate::domain::{Millis, UserId};
use axum::extract::State;
use axum::routing::delete;
use axum::{Json, Router};
use serde::Serialize;
use utoipa::ToSchema;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/users/{id}", delete(erase_user))
}

/// What an erasure changed.
#[derive(Debug, Serialize, ToSchema)]
pub struct Erasure {
    /// Reservations of ended campaigns whose user id was replaced by an unlinkable marker
    /// (their idempotency key and fingerprint, which can name the user, removed too).
    reservations: u64,
    /// Groups whose leader id was replaced.
    groups: u64,
    /// Feed events whose user id was replaced.
    events: u64,
}

/// Erases a user's personal data from every ended campaign, in the database, now (the
/// stock engine forgets ended campaigns within `FLASHSALE_ENDED_RETENTION_SECONDS` of their
/// end). Refused while the user holds a unit or is in an open group.
#[utoipa::path(delete, path = "/v1/users/{id}", tag = "personal data", security(("bearer" = [])),
    responses((status = 200, body = Erasure),
        (status = 409, description = "`user_has_live_reservations`", body = super::error::Problem),
        (status = 422, description = "`invalid_request`", body = super::error::Problem)))]
pub async fn erase_user(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId,
) -> Result<Json<Erasure>, ApiError> {
    caller.require_admin()?;
    let user = UserId::parse(&id).map_err(|e| ApiError::InvalidRequest(e.0))?;
    if state
        .store
        .user_has_live_reservations(user.as_str())
        .await?
    {
        return Err(ApiError::UserHasLiveReservations);
    }
    let done = state.store.erase_user(user.as_str(), Millis::now()).await?;
    Ok(Json(Erasure {
        reservations: done.reservations,
        groups: done.groups,
        events: done.events,
    }))
}
