//! `DELETE /v1/users/{user_id}` (admin): a user's personal data erased from every ended
//! campaign now (contract v1.1, "Personal data").

use super::auth::Caller;
use super::error::ApiError;
use super::json::PathId;
use super::AppState;
use crate::domain::{CampaignId, Millis, UserId};
use crate::engine::PERSISTER;
use crate::pipeline::recovery::{self, Archived};
use axum::extract::State;
use axum::routing::delete;
use axum::{Json, Router};
use serde::Serialize;
use std::time::Duration;
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

/// Erases a user's personal data from every ended campaign, now: the changes made so far
/// reach the database first (a hold made a moment ago counts), the ended campaigns the user
/// was in leave the stock engine (the database answers for them from then on), the database
/// is rewritten. Refused while the user holds a unit or is in an open group, or while a
/// campaign they were in ended moments ago and others' holds in it are still live.
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
    // The database as of this request: every change made so far persisted, so a hold made a
    // moment ago counts in the live check, and whatever the user's changes stored is erased
    // with the rest.
    persisted_so_far(&state).await?;
    if state
        .store
        .user_has_live_reservations(user.as_str())
        .await?
    {
        return Err(ApiError::UserHasLiveReservations);
    }
    // The engine's copies: every ended campaign the user was in leaves the engine now — the
    // database answers for it from then on (reads, replays, refunds) — so the rewrite below
    // leaves no copy with the id.
    let now = Millis::now();
    for id in state
        .store
        .ended_campaigns_of(user.as_str(), now, true)
        .await?
    {
        let Some(campaign) = stored_campaign(&state, &id).await? else {
            continue;
        };
        if recovery::archive_now(&state.engine, &state.store, &campaign).await? == Archived::NotYet
        {
            return Err(ApiError::CampaignSettling(id));
        }
    }
    let done = state.store.erase_user(user.as_str(), now).await?;
    Ok(Json(Erasure {
        reservations: done.reservations,
        groups: done.groups,
        events: done.events,
    }))
}

/// How long an erasure waits for the changes made so far to reach the database.
const PERSIST_WAIT: Duration = Duration::from_secs(5);

/// Waits until every campaign with changes not yet persisted (the work index's active list)
/// has them in the database; 503 `database_unavailable` if that takes over [`PERSIST_WAIT`].
async fn persisted_so_far(state: &AppState) -> Result<(), ApiError> {
    let active = state.work.active().await?;
    let waits = active
        .campaigns()
        .map(|campaign| state.events.acknowledged(PERSISTER, campaign));
    match tokio::time::timeout(PERSIST_WAIT, futures::future::try_join_all(waits)).await {
        Ok(done) => done.map(|_| ()).map_err(ApiError::from),
        Err(_) => Err(ApiError::from(crate::engine::EngineError::NotDurable(
            "the changes made so far did not reach the database within 5 s".into(),
        ))),
    }
}

/// The campaign the database has under `id` (as the database spells it).
async fn stored_campaign(
    state: &AppState,
    id: &str,
) -> Result<Option<crate::domain::Campaign>, ApiError> {
    let id =
        CampaignId::parse(id).map_err(|e| ApiError::Internal(format!("stored id: {}", e.0)))?;
    Ok(state.store.campaign(&id).await?)
}
