//! The one error type of the HTTP layer, rendered as `application/problem+json` (RFC 9457).
//! This is the only place a refusal or failure becomes a status and a `code`.

use crate::domain::Refusal;
use crate::engine::EngineError;
use axum::body::Bytes;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use std::sync::OnceLock;
use std::time::Duration;
use utoipa::ToSchema;

/// Everything a request can end in besides success.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 401: no token, or one that is not valid.
    #[error("{0}")]
    Unauthenticated(String),
    /// 403: a valid token without the scope, or another user's resource.
    #[error("{0}")]
    Forbidden(String),
    /// 400: the body is not JSON at all.
    #[error("{0}")]
    MalformedJson(String),
    /// 422: JSON of the wrong shape: unknown or missing fields, wrong types, bad values.
    #[error("{0}")]
    InvalidRequest(String),
    /// 400: a path parameter that is not valid text.
    #[error("the path is not valid: {0}")]
    MalformedPath(String),
    /// 415: a body that does not say it is JSON.
    #[error("request bodies must be application/json")]
    UnsupportedMediaType,
    /// 413: a body over the configured limit.
    #[error(
        "the request body is larger than this service accepts (see FLASHSALE_BODY_LIMIT_BYTES)"
    )]
    PayloadTooLarge,
    /// 408: the body did not arrive in time (shorter than its `Content-Length`, or slow).
    #[error("the request body did not arrive in time; send it whole with the headers")]
    BodyTimeout,
    /// 400: a creating POST without `Idempotency-Key`.
    #[error("this request creates something, so it needs an Idempotency-Key header")]
    IdempotencyKeyRequired,
    /// 400: an `Idempotency-Key` outside the contract's charset or length.
    #[error("{0}")]
    InvalidIdempotencyKey(String),
    /// 422: the key was used before by this caller with another body.
    #[error("this Idempotency-Key was already used with a different request body")]
    IdempotencyKeyReused,
    /// 404 or 409: the engine refused the reservation.
    #[error("{detail}")]
    Refused {
        refusal: Refusal,
        detail: &'static str,
    },
    /// 404: no such reservation.
    #[error("no reservation {0}")]
    ReservationNotFound(String),
    /// 404: no such waiting-room ticket.
    #[error("no ticket {0}")]
    TicketNotFound(String),
    /// 403: the campaign has a waiting room and the request brought no valid pass.
    #[error("{0}")]
    QueuePassRequired(&'static str),
    /// 409: a campaign with this id exists.
    #[error("a campaign with id {0} already exists")]
    CampaignExists(String),
    /// 409: withdrawing more units than are available.
    #[error("only {available} units are available to withdraw")]
    InsufficientStock { available: u64 },
    /// 409: the reservation is not held (any more).
    #[error("reservation is {0}, not held")]
    ReservationNotHeld(&'static str),
    /// 409: an extension past `created_at + hold_seconds + max_extend_seconds`.
    #[error("the hold may be extended until {0} at most")]
    ExtensionExceeded(String),
    /// 409: the user holds a unit or is in an open group; erasure waits until it ends.
    #[error("the user holds a unit or is in an open group; erase after it ends")]
    UserHasLiveReservations,
    /// 409: a campaign the user was in ended moments ago and others' holds or groups in it
    /// are still live: erasure waits until the campaign settles.
    #[error("campaign {0} ended moments ago and still has live holds or open groups; erase after they end (at most the campaign's hold or group window)")]
    CampaignSettling(String),
    /// 404: no such webhook.
    #[error("no webhook {0}")]
    WebhookNotFound(String),
    /// 404: no such route.
    #[error("no such resource")]
    NotFound,
    /// 405: the route exists, the method does not.
    #[error("method not allowed on this resource")]
    MethodNotAllowed,
    /// 429: this user asks too often.
    #[error("too many attempts; retry after the Retry-After interval")]
    RateLimited { retry_after: Duration },
    /// 503: the service is shedding load.
    #[error("the service is at capacity; retry after the Retry-After interval")]
    Overloaded,
    /// 503: the request took longer than the configured timeout.
    #[error("the request timed out")]
    Timeout,
    /// 503: the stock engine did not answer; nothing was decided.
    #[error("the stock engine is unavailable")]
    EngineUnavailable(#[source] EngineError),
    /// 503: the stock engine refuses writes for lack of memory; nothing was decided.
    #[error("the stock engine is out of memory and refuses changes; retry after the Retry-After interval")]
    EngineOutOfMemory(#[source] EngineError),
    /// 503: the campaign's engine state is being rebuilt (after a Redis loss) and could not
    /// be yet; nothing was decided.
    #[error("the campaign's stock state is being rebuilt; retry after the Retry-After interval")]
    EngineRecovering(#[source] EngineError),
    /// 503: strict durability, and the stock engine's configuration can lose data; nothing
    /// is decided until it is fixed.
    #[error("the stock engine's configuration can lose data (see /readyz); nothing is decided until it is fixed")]
    EngineUnsafe(#[source] EngineError),
    /// 503: the database refuses writes, so changes cannot be made durable.
    #[error("the database refuses writes, so changes cannot be made durable (see /readyz); retry after the Retry-After interval with the same Idempotency-Key")]
    NotDurable(#[source] EngineError),
    /// 503: the database did not answer; nothing was decided.
    #[error("the database is unavailable")]
    DatabaseUnavailable(#[source] crate::store::StoreError),
    /// 500: a bug; logged, never shown.
    #[error("internal error")]
    Internal(String),
}

/// The problem+json body.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// A URI naming the problem type: `urn:flashsale:problem:<code>`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
    /// The stable machine value callers branch on.
    pub code: &'static str,
}

impl ApiError {
    pub fn refused(refusal: Refusal) -> Self {
        let detail = match refusal {
            Refusal::CampaignNotFound => "no such campaign",
            Refusal::WrongCampaignKind => "units of a group_buy campaign are taken through groups",
            Refusal::NotStarted => "the campaign has not started yet",
            Refusal::Ended => "the campaign has ended",
            Refusal::SoldOut => "not enough units are left",
            Refusal::LimitExceeded => "this would take the user past the campaign's per_user_limit",
            Refusal::GroupNotFound => "no such group",
            Refusal::GroupFull => "the group has all its members",
            Refusal::GroupClosed => "the group is no longer open",
            Refusal::AlreadyMember => "the user is already a member of this group",
            Refusal::NoWaitingRoom => "the campaign has no waiting room",
        };
        ApiError::Refused { refusal, detail }
    }

    /// Status, `code` and title: the single mapping from errors to the contract.
    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        use StatusCode as S;
        match self {
            ApiError::Unauthenticated(_) => (S::UNAUTHORIZED, "unauthenticated", "Unauthenticated"),
            ApiError::Forbidden(_) => (S::FORBIDDEN, "forbidden", "Forbidden"),
            ApiError::MalformedJson(_) => (S::BAD_REQUEST, "malformed_json", "Malformed JSON"),
            ApiError::MalformedPath(_) => (S::BAD_REQUEST, "malformed_path", "Malformed path"),
            ApiError::InvalidRequest(_) => (
                S::UNPROCESSABLE_ENTITY,
                "invalid_request",
                "Invalid request",
            ),
            ApiError::UnsupportedMediaType => (
                S::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "Unsupported media type",
            ),
            ApiError::PayloadTooLarge => (
                S::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "Payload too large",
            ),
            ApiError::BodyTimeout => (S::REQUEST_TIMEOUT, "body_timeout", "Request body timeout"),
            ApiError::IdempotencyKeyRequired => (
                S::BAD_REQUEST,
                "idempotency_key_required",
                "Idempotency-Key required",
            ),
            ApiError::InvalidIdempotencyKey(_) => (
                S::BAD_REQUEST,
                "invalid_idempotency_key",
                "Invalid Idempotency-Key",
            ),
            ApiError::IdempotencyKeyReused => (
                S::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "Idempotency-Key reused",
            ),
            ApiError::Refused { refusal, .. } => match refusal {
                Refusal::CampaignNotFound => (S::NOT_FOUND, refusal.code(), "Campaign not found"),
                Refusal::WrongCampaignKind => (S::CONFLICT, refusal.code(), "Wrong campaign kind"),
                Refusal::NotStarted => (S::CONFLICT, refusal.code(), "Not started"),
                Refusal::Ended => (S::CONFLICT, refusal.code(), "Ended"),
                Refusal::SoldOut => (S::CONFLICT, refusal.code(), "Sold out"),
                Refusal::LimitExceeded => (S::CONFLICT, refusal.code(), "Limit exceeded"),
                Refusal::GroupNotFound => (S::NOT_FOUND, refusal.code(), "Group not found"),
                Refusal::GroupFull => (S::CONFLICT, refusal.code(), "Group full"),
                Refusal::GroupClosed => (S::CONFLICT, refusal.code(), "Group closed"),
                Refusal::AlreadyMember => (S::CONFLICT, refusal.code(), "Already a member"),
                Refusal::NoWaitingRoom => (S::CONFLICT, refusal.code(), "No waiting room"),
            },
            ApiError::TicketNotFound(_) => (S::NOT_FOUND, "ticket_not_found", "Ticket not found"),
            ApiError::QueuePassRequired(_) => (
                S::FORBIDDEN,
                "queue_pass_required",
                "Waiting-room pass required",
            ),
            ApiError::ReservationNotFound(_) => (
                S::NOT_FOUND,
                "reservation_not_found",
                "Reservation not found",
            ),
            ApiError::CampaignExists(_) => (S::CONFLICT, "campaign_exists", "Campaign exists"),
            ApiError::InsufficientStock { .. } => {
                (S::CONFLICT, "insufficient_stock", "Insufficient stock")
            }
            ApiError::ReservationNotHeld(_) => {
                (S::CONFLICT, "reservation_not_held", "Reservation not held")
            }
            ApiError::ExtensionExceeded(_) => {
                (S::CONFLICT, "extension_exceeded", "Extension exceeded")
            }
            ApiError::UserHasLiveReservations | ApiError::CampaignSettling(_) => (
                S::CONFLICT,
                "user_has_live_reservations",
                "User has live reservations",
            ),
            ApiError::WebhookNotFound(_) => {
                (S::NOT_FOUND, "webhook_not_found", "Webhook not found")
            }
            ApiError::NotFound => (S::NOT_FOUND, "not_found", "Not found"),
            ApiError::MethodNotAllowed => (
                S::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "Method not allowed",
            ),
            ApiError::RateLimited { .. } => (S::TOO_MANY_REQUESTS, "rate_limited", "Rate limited"),
            ApiError::Overloaded => (S::SERVICE_UNAVAILABLE, "overloaded", "Overloaded"),
            ApiError::Timeout => (S::SERVICE_UNAVAILABLE, "timeout", "Timed out"),
            ApiError::EngineUnavailable(_) => (
                S::SERVICE_UNAVAILABLE,
                "engine_unavailable",
                "Stock engine unavailable",
            ),
            ApiError::EngineOutOfMemory(_) => (
                S::SERVICE_UNAVAILABLE,
                "engine_out_of_memory",
                "Stock engine out of memory",
            ),
            ApiError::EngineRecovering(_) => (
                S::SERVICE_UNAVAILABLE,
                "engine_recovering",
                "Stock engine recovering",
            ),
            ApiError::DatabaseUnavailable(_) | ApiError::NotDurable(_) => (
                S::SERVICE_UNAVAILABLE,
                "database_unavailable",
                "Database unavailable",
            ),
            ApiError::EngineUnsafe(_) => (
                S::SERVICE_UNAVAILABLE,
                "engine_unsafe",
                "Stock engine unsafe",
            ),
            ApiError::Internal(_) => (S::INTERNAL_SERVER_ERROR, "internal", "Internal error"),
        }
    }

    fn retry_after_seconds(&self) -> Option<u64> {
        match self {
            ApiError::RateLimited { retry_after } => Some(retry_after.as_secs().max(1)),
            ApiError::Overloaded
            | ApiError::Timeout
            | ApiError::EngineUnavailable(_)
            | ApiError::EngineRecovering(_)
            | ApiError::DatabaseUnavailable(_) => Some(1),
            ApiError::EngineOutOfMemory(_) | ApiError::NotDurable(_) => Some(5),
            ApiError::EngineUnsafe(_) => Some(30),
            _ => None,
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(error: EngineError) -> Self {
        match error {
            EngineError::Redis(_) if error.is_out_of_memory() => {
                crate::metrics::engine_out_of_memory();
                ApiError::EngineOutOfMemory(error)
            }
            EngineError::Redis(_) => ApiError::EngineUnavailable(error),
            EngineError::Corrupt(what) => ApiError::Internal(what),
            EngineError::Recovering(_) => ApiError::EngineRecovering(error),
            EngineError::Unreplicated(_) => ApiError::EngineUnavailable(error),
            EngineError::Overloaded => ApiError::Overloaded,
            EngineError::NotDurable(_) => ApiError::NotDurable(error),
            EngineError::Unsafe(_) => ApiError::EngineUnsafe(error),
        }
    }
}

impl From<crate::pipeline::recovery::RecoveryError> for ApiError {
    fn from(error: crate::pipeline::recovery::RecoveryError) -> Self {
        match error {
            crate::pipeline::recovery::RecoveryError::Engine(error) => error.into(),
            crate::pipeline::recovery::RecoveryError::Store(error) => error.into(),
        }
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(error: crate::store::StoreError) -> Self {
        match error {
            crate::store::StoreError::Corrupt(what) => ApiError::Internal(what),
            other => ApiError::DatabaseUnavailable(other),
        }
    }
}

/// The problem bodies of refusals never change, and a sold-out sale answers little else:
/// they are serialized once.
fn refusal_body(refusal: Refusal) -> Bytes {
    static BODIES: OnceLock<Vec<Bytes>> = OnceLock::new();
    let bodies = BODIES.get_or_init(|| {
        Refusal::ALL
            .iter()
            .map(|&r| {
                let error = ApiError::refused(r);
                let (status, code, title) = error.parts();
                let problem = Problem {
                    kind: format!("urn:flashsale:problem:{code}"),
                    title,
                    status: status.as_u16(),
                    detail: error.to_string(),
                    code,
                };
                Bytes::from(serde_json::to_vec(&problem).unwrap_or_default())
            })
            .collect()
    });
    bodies[refusal as usize].clone()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, title) = self.parts();
        if let ApiError::Refused { refusal, .. } = self {
            let mut response = (status, refusal_body(refusal)).into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/problem+json"),
            );
            return response;
        }
        let detail = match &self {
            ApiError::Internal(what) => {
                tracing::error!(%what, "internal error");
                "an internal error occurred; it has been logged".to_owned()
            }
            ApiError::EngineUnavailable(source) | ApiError::EngineRecovering(source) => {
                tracing::warn!(error = %source, "stock engine unavailable");
                self.to_string()
            }
            ApiError::EngineOutOfMemory(source) => {
                // Every write fails alike while Redis is full: one line per 10 s says so.
                if crate::metrics::log_out_of_memory_now() {
                    tracing::warn!(error = %source, "the stock engine refuses writes for lack of memory (maxmemory); further refusals are counted, logged every 10 s");
                }
                self.to_string()
            }
            ApiError::NotDurable(source) | ApiError::EngineUnsafe(source) => {
                // The persister and the engine watch log the cause; one line per 10 s here.
                if crate::metrics::log_unsafe_now() {
                    tracing::warn!(error = %source, "refusing changes; further refusals are logged every 10 s");
                }
                self.to_string()
            }
            ApiError::DatabaseUnavailable(source) => {
                tracing::warn!(error = %source, "database unavailable");
                self.to_string()
            }
            other => other.to_string(),
        };
        let problem = Problem {
            kind: format!("urn:flashsale:problem:{code}"),
            title,
            status: status.as_u16(),
            detail,
            code,
        };
        let mut response = (status, axum::Json(problem)).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(seconds) = self.retry_after_seconds() {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}
