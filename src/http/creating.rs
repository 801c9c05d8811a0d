//! What every creating POST (reservations, groups, joins) and stock change shares: the `Idempotency-Key`, the
//! user the request acts for, and the 201 answer that marks a replay.

use super::auth::Caller;
use super::error::ApiError;
use crate::domain::{IdempotencyKey, UserId};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// Set on a response that replays the first outcome of an idempotency key.
const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// The request's `Idempotency-Key`: required, 1–128 of `[A-Za-z0-9._:-]`.
pub fn idempotency_key(headers: &HeaderMap) -> Result<IdempotencyKey, ApiError> {
    let raw = headers
        .get(IDEMPOTENCY_KEY)
        .ok_or(ApiError::IdempotencyKeyRequired)?
        .to_str()
        .map_err(|_| ApiError::InvalidIdempotencyKey("Idempotency-Key must be ASCII".into()))?;
    IdempotencyKey::parse(raw).map_err(|e| ApiError::InvalidIdempotencyKey(e.0))
}

/// The user a request acts for: `user_id` from the body (required with a store token, and a
/// user token's own `sub` if given), else the user token's `sub`.
pub fn acting_user(caller: &Caller, user_id: Option<String>) -> Result<UserId, ApiError> {
    let user = match (caller, user_id) {
        (_, Some(raw)) => UserId::parse(&raw).map_err(|e| ApiError::InvalidRequest(e.0))?,
        (Caller::User(me), None) => me.clone(),
        (Caller::Service { .. }, None) => {
            return Err(ApiError::InvalidRequest(
                "user_id is required with a store token".into(),
            ))
        }
    };
    caller.may_act_for(&user)?;
    Ok(user)
}

/// 201 with `Location`, marked `Idempotent-Replayed: true` when it replays a first outcome.
pub fn created(location: String, body: impl Serialize, replayed: bool) -> Response {
    let mut response = (
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(body),
    )
        .into_response();
    if replayed {
        mark_replayed(&mut response);
    }
    response
}

/// Marks an answer as the replay of a first outcome (`Idempotent-Replayed: true`).
pub fn mark_replayed(response: &mut Response) {
    response
        .headers_mut()
        .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
}
