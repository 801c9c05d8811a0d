//! The OpenAPI document, generated from the handlers' annotations, at `/openapi.json`.

use super::AppState;
use axum::routing::get;
use axum::{Json, Router};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(title = "flashsale", description = "Sells scarce stock fairly and fast. Errors are application/problem+json with a stable `code`."),
    paths(
        super::health::healthz,
        super::health::readyz,
        super::campaigns::create_campaign,
        super::campaigns::get_campaign,
        super::campaigns::list_campaigns,
        super::campaigns::end_campaign,
        super::reservations::list_reservations,
        super::campaigns::adjust_stock,
        super::campaigns::availability,
        super::reservations::reserve,
        super::reservations::get_reservation,
        super::reservations::confirm,
        super::reservations::cancel,
        super::reservations::extend,
        super::events::feed,
        super::groups::open_group,
        super::groups::join_group,
        super::groups::get_group,
        super::webhooks::create_webhook,
        super::webhooks::list_webhooks,
        super::webhooks::get_webhook,
        super::webhooks::delete_webhook,
        super::webhooks::deliveries,
        super::webhooks::replay,
    ),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

pub fn router() -> Router<AppState> {
    Router::new().route("/openapi.json", get(|| async { Json(ApiDoc::openapi()) }))
}
