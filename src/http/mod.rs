//! The HTTP transport (axum): parse, ask the engine, translate. No rule lives here.
//!
//! One file per resource, each exposing `router()`; they are merged in [`router`] with the
//! middleware every request goes through.

pub mod auth;
mod campaigns;
mod console;
mod creating;
pub mod error;
mod events;
mod frame;
mod groups;
mod health;
mod json;
mod openapi;
pub mod queue;
mod reservations;
pub mod serve;
mod users;
mod webhooks;

use auth::Auth;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{DefaultBodyLimit, Request};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use error::ApiError;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use metrics_exporter_prometheus::PrometheusHandle;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;

/// Everything a handler needs. axum clones the state for every request, so it is one `Arc`
/// (a single reference count to bump) around [`Shared`].
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        AppState(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`AppState`] shares.
pub struct Shared {
    /// The engine behind its gate, with recovery: what every handler asks.
    pub engine: crate::engine::Engine,
    /// The durable record: the feed is read from here.
    pub store: crate::store::Store,
    /// Which campaigns changed lately (`engine::work`): the campaign list's status filter
    /// asks the engine about these, the database's index about the rest.
    pub work: Arc<dyn crate::engine::WorkIndex>,
    /// The engine's event log: an erasure waits until what it holds is persisted.
    pub events: Arc<dyn crate::engine::EventLog>,
    pub auth: Arc<Auth>,
    /// Per-user reservation attempt limit; `None` when turned off.
    pub user_limiter: Option<Arc<DefaultKeyedRateLimiter<String>>>,
    pub metrics: PrometheusHandle,
    /// Whether `/metrics` is served here or on its own listener.
    pub metrics_on_main_listener: bool,
    /// Which webhook targets may be registered.
    pub webhook_hosts: Arc<crate::webhooks::AllowedHosts>,
    /// Signs and checks waiting-room passes; every instance sharing a database shares it.
    pub pass_key: crate::domain::PassKey,
    /// Answers polls of waiting tickets from the campaign's line (see [`queue::LineCache`]).
    pub line_cache: queue::LineCache,
    /// Whether changes can be decided safely just now (`/readyz` shows it).
    pub safety: Arc<crate::engine::safety::Safety>,
}

/// Settings of the HTTP layer itself.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub body_limit_bytes: usize,
    /// A body must arrive within this long of its headers.
    pub body_read_timeout: Duration,
    pub max_in_flight: usize,
    pub request_timeout: Duration,
}

impl Shared {
    pub fn user_limiter(per_second: u32) -> Option<Arc<DefaultKeyedRateLimiter<String>>> {
        NonZeroU32::new(per_second)
            .map(|rate| Arc::new(RateLimiter::keyed(Quota::per_second(rate))))
    }

    /// Counts an attempt against the user's rate; `RateLimited` when over it.
    pub fn check_user_rate(&self, user: &str) -> Result<(), ApiError> {
        let Some(limiter) = &self.user_limiter else {
            return Ok(());
        };
        limiter
            .check_key(&user.to_owned())
            .map_err(|not_until| ApiError::RateLimited {
                retry_after: not_until.wait_time_from(governor::clock::Clock::now(
                    &governor::clock::DefaultClock::default(),
                )),
            })
    }
}

/// The whole API with its middleware.
pub fn router(state: AppState, settings: &HttpSettings) -> Router {
    let mut api = Router::new()
        .merge(campaigns::router())
        .merge(reservations::router())
        .merge(events::router())
        .merge(groups::router())
        .merge(webhooks::router())
        .merge(users::router())
        .merge(queue::router())
        .merge(health::router())
        .merge(openapi::router())
        .merge(console::router());
    if state.metrics_on_main_listener {
        api = api.merge(health::metrics_router());
    }
    let limits = ServiceBuilder::new()
        .layer(HandleErrorLayer::new(|error: tower::BoxError| async move {
            if error.is::<tower::load_shed::error::Overloaded>() {
                ApiError::Overloaded
            } else if error.is::<tower::timeout::error::Elapsed>() {
                ApiError::Timeout
            } else {
                ApiError::Internal(format!("middleware: {error}"))
            }
        }))
        .load_shed()
        .concurrency_limit(settings.max_in_flight)
        .timeout(settings.request_timeout);
    let body = BodyRules {
        limit_bytes: settings.body_limit_bytes,
        read_timeout: settings.body_read_timeout,
    };
    api.fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .layer(DefaultBodyLimit::max(settings.body_limit_bytes))
        .layer(middleware::from_fn(move |request, next| {
            check_body(body, request, next)
        }))
        .layer(limits)
        .layer(CatchPanicLayer::custom(|_panic| {
            ApiError::Internal("a handler panicked".into()).into_response()
        }))
        .layer(middleware::from_fn(frame::frame))
}

/// What a request body must keep to.
#[derive(Debug, Clone, Copy)]
pub struct BodyRules {
    pub limit_bytes: usize,
    /// How long the body may take to arrive ([`json::JsonBody`] reads it under this).
    pub read_timeout: Duration,
}

/// A `Content-Length` over the limit is refused before a byte of the body is read (413 at
/// once, not after the client sent it all or gave up); the rules ride along for the body
/// extractor.
async fn check_body(rules: BodyRules, mut request: Request, next: Next) -> Response {
    let declared = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > rules.limit_bytes as u64) {
        return ApiError::PayloadTooLarge.into_response();
    }
    request.extensions_mut().insert(rules);
    next.run(request).await
}

async fn not_found() -> ApiError {
    ApiError::NotFound
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// `/metrics` alone, for `FLASHSALE_METRICS_LISTEN`.
pub fn metrics_only_router(state: AppState) -> Router {
    health::metrics_router().with_state(state)
}
