//! `GET /console`: a live web page for the people running a sale (contract v1.2, Operators):
//! the live campaigns' units, attempts and refusals per second, p99, the waiting line, the
//! persister's and webhooks' lag, updating every second, with admin actions (create, end,
//! adjust stock). Static files embedded in the binary; the page reads the API and `/metrics`
//! with the token a person enters, so the API decides who may see and do what. Nothing is
//! fetched from anywhere else (the policy header says so to the browser).

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use super::AppState;

const PAGE: &str = include_str!("console/index.html");
const SCRIPT: &str = include_str!("console/console.js");
const STYLE: &str = include_str!("console/console.css");

/// Only this service's own resources, no inline script.
const POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/console", get(|| file(PAGE, "text/html; charset=utf-8")))
        .route(
            "/console/console.js",
            get(|| file(SCRIPT, "text/javascript; charset=utf-8")),
        )
        .route(
            "/console/console.css",
            get(|| file(STYLE, "text/css; charset=utf-8")),
        )
}

async fn file(body: &'static str, kind: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CONTENT_SECURITY_POLICY, POLICY),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
}
