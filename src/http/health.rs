//! `/healthz`, `/readyz` and `/metrics`.

use super::AppState;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use std::time::Duration;
use utoipa::ToSchema;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

/// `/metrics`, for the main listener or a listener of its own.
pub fn metrics_router() -> Router<AppState> {
    Router::new().route("/metrics", get(render_metrics))
}

#[derive(Serialize, ToSchema)]
pub struct Health {
    status: &'static str,
}

/// Readiness: which dependency answers.
#[derive(Serialize, ToSchema)]
pub struct Readiness {
    /// `ready` or `degraded`.
    status: &'static str,
    /// The stock engine (`memory` or `redis`).
    engine: &'static str,
    /// `ok`, or why the engine did not answer.
    engine_status: String,
    /// The database (`postgres` or `sqlite`).
    database: &'static str,
    /// `ok`, or why the database did not answer. While it is down the hot path keeps
    /// serving and the persister retries; events wait in the engine's streams.
    database_status: String,
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// 200 only when the stock engine and the database answer.
#[utoipa::path(get, path = "/readyz", tag = "health", responses(
    (status = 200, body = Readiness), (status = 503, body = Readiness)))]
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let engine_status = match tokio::time::timeout(
        Duration::from_secs(1),
        state.engine.backing().backend().ping(),
    )
    .await
    {
        Ok(Ok(())) => "ok".to_owned(),
        Ok(Err(error)) => error.to_string(),
        Err(_) => "no answer within 1 s".to_owned(),
    };
    let database_status =
        match tokio::time::timeout(Duration::from_secs(1), state.store.ping()).await {
            Ok(Ok(())) => "ok".to_owned(),
            Ok(Err(error)) => error.to_string(),
            Err(_) => "no answer within 1 s".to_owned(),
        };
    // A database that answers but refuses writes (a full disk), an engine that can lose data
    // under strict durability: the pings cannot tell, the persister and the engine watch can.
    let (not_durable, engine_unsafe) = state.safety.report();
    let engine_status = match engine_unsafe {
        Some(why) if engine_status == "ok" => why,
        _ => engine_status,
    };
    let database_status = match not_durable {
        Some(why) if database_status == "ok" => why,
        _ => database_status,
    };
    let ready = engine_status == "ok" && database_status == "ok";
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = Readiness {
        status: if ready { "ready" } else { "degraded" },
        engine: state.engine.backing().backend().name(),
        engine_status,
        database: state.store.name(),
        database_status,
    };
    (status, Json(body))
}

async fn render_metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}
