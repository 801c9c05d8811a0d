//! The OpenAPI document, generated from the handlers' annotations and completed by
//! [`Complete`], at `/openapi.json`.
//!
//! The handlers describe their own successes and the refusals particular to them; what
//! every operation shares is added here, from one table, so it cannot drift per handler:
//! path parameters, who may call it (three security schemes: admin token, store token, user
//! JWT), the errors the middleware and extractors give (400, 401, 403, 408, 413, 415, 422,
//! 429, 500, 503), all as `application/problem+json` with the `code` enumerated, the headers
//! (`x-request-id` on every answer, `Location` and `Idempotent-Replayed` on a 201,
//! `Retry-After` on 429 and 503, `Idempotency-Key` where a request needs one), timestamp
//! formats and status enums, typed feed items, and an example for each request body.

use super::AppState;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "flashsale",
        description = "Sells scarce stock fairly and fast. Errors are application/problem+json with a stable `code`."
    ),
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
        super::users::erase_user,
        super::queue::join,
        super::queue::read,
    )
)]
pub struct ApiDoc;

/// Who may call an operation.
#[derive(Clone, Copy, PartialEq)]
enum Who {
    Anyone,
    Admin,
    /// A store token (admin tokens are accepted wherever a store token is).
    Store,
    /// A store token, or a user's JWT acting for its own `sub`.
    StoreOrUser,
}

/// (method, path) → who, whether it takes a body, whether it needs `Idempotency-Key`,
/// whether it may answer 429 `rate_limited`.
fn operation(method: &str, path: &str) -> (Who, bool, bool, bool) {
    use Who::*;
    match (method, path) {
        ("get", "/healthz" | "/readyz" | "/v1/campaigns/{id}/availability") => {
            (Anyone, false, false, false)
        }
        ("post", "/v1/campaigns") => (Admin, true, false, false),
        ("post", "/v1/campaigns/{id}/stock") => (Admin, true, true, false),
        ("post", "/v1/campaigns/{id}/end") => (Admin, false, false, false),
        ("post", "/v1/campaigns/{id}/reservations" | "/v1/campaigns/{id}/groups")
        | ("post", "/v1/groups/{id}/members") => (StoreOrUser, true, true, true),
        ("get", "/v1/reservations/{id}" | "/v1/groups/{id}") => (StoreOrUser, false, false, false),
        ("post", "/v1/reservations/{id}/cancel") => (StoreOrUser, false, false, false),
        ("post", "/v1/reservations/{id}/extend") => (Store, true, false, false),
        ("post", "/v1/campaigns/{id}/queue") => (StoreOrUser, true, true, true),
        ("get", "/v1/queue/{ticket}") => (StoreOrUser, false, false, false),
        ("post", "/v1/webhooks") => (Admin, true, true, false),
        (_, p) if p.starts_with("/v1/webhooks") => (Admin, method == "post", false, false),
        ("delete", "/v1/users/{id}") => (Admin, false, false, false),
        _ => (Store, false, false, false),
    }
}

mod parts;
use parts::{example, problem, CODES, RESERVATION_STATUSES};

/// Completes the generated document (see the module's doc).
pub fn complete(doc: utoipa::openapi::OpenApi) -> Value {
    let mut doc = serde_json::to_value(doc).unwrap_or_default();
    let components = &mut doc["components"];
    components["securitySchemes"] = json!({
        "admin": {"type": "http", "scheme": "bearer", "description": "An admin token (FLASHSALE_ADMIN_TOKENS)."},
        "store": {"type": "http", "scheme": "bearer", "description": "A store token (FLASHSALE_STORE_TOKENS); admin tokens are accepted too."},
        "user": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT", "description": "A user's HS256 JWT (FLASHSALE_JWT_SECRET), acting for its `sub` only."}
    });
    components["headers"] = json!({
        "RequestId": {"description": "The caller's x-request-id, or a generated one.", "schema": {"type": "string"}},
        "RetryAfter": {"description": "Seconds to wait before trying again.", "schema": {"type": "integer", "minimum": 0}},
        "Location": {"description": "The created resource.", "schema": {"type": "string"}},
        "IdempotentReplayed": {"description": "`true` when this is the first answer replayed for a retried Idempotency-Key.", "schema": {"type": "string", "enum": ["true"]}}
    });
    let schemas = &mut components["schemas"];
    schemas["Problem"]["properties"]["code"]["enum"] = json!(CODES);
    schemas["Problem"]["properties"]["type"]["format"] = json!("uri");
    for (name, field, values) in [
        (
            "CampaignView",
            "status",
            json!(["scheduled", "active", "sold_out", "ended"]),
        ),
        ("CampaignView", "kind", json!(["flash_sale", "group_buy"])),
        ("NewCampaign", "kind", json!(["flash_sale", "group_buy"])),
        ("ReservationView", "status", json!(RESERVATION_STATUSES)),
        ("MemberView", "status", json!(RESERVATION_STATUSES)),
        ("GroupView", "status", json!(["open", "formed", "failed"])),
        (
            "TicketView",
            "status",
            json!(["waiting", "admitted", "sold_out", "expired"]),
        ),
    ] {
        if schemas[name]["properties"][field].is_object() {
            schemas[name]["properties"][field]["enum"] = values;
        }
    }
    if let Some(all) = schemas.as_object_mut() {
        for schema in all.values_mut() {
            if let Some(properties) = schema["properties"].as_object_mut() {
                for (field, property) in properties.iter_mut() {
                    let text = property["type"] == "string"
                        || property["type"]
                            .as_array()
                            .is_some_and(|t| t.contains(&json!("string")));
                    if field.ends_with("_at") && text {
                        property["format"] = json!("date-time");
                    }
                }
            }
        }
    }
    // Bounds the service enforces, so generated clients (and fuzzers) know them.
    for (name, field, bounds) in [
        (
            "NewCampaign",
            "stock",
            json!({"minimum": 1, "maximum": 1_000_000_000}),
        ),
        (
            "NewCampaign",
            "per_user_limit",
            json!({"minimum": 1, "maximum": 1_000_000}),
        ),
        (
            "NewCampaign",
            "hold_seconds",
            json!({"minimum": 1, "maximum": 2_592_000}),
        ),
        (
            "NewCampaign",
            "max_extend_seconds",
            json!({"minimum": 0, "maximum": 2_592_000}),
        ),
        (
            "NewCampaign",
            "sku",
            json!({"minLength": 1, "maxLength": 128}),
        ),
        (
            "NewCampaign",
            "id",
            json!({"pattern": "^[a-z0-9_-]{1,64}$"}),
        ),
        (
            "NewWebhook",
            "campaign_id",
            json!({"pattern": "^[a-z0-9_-]{1,64}$"}),
        ),
        (
            "NewReservation",
            "quantity",
            json!({"minimum": 1, "maximum": 1_000_000}),
        ),
        (
            "ExtendRequest",
            "seconds",
            json!({"minimum": 1, "maximum": 86_400}),
        ),
        (
            "StockChange",
            "delta",
            json!({"minimum": -1_000_000_000, "maximum": 1_000_000_000}),
        ),
        ("Replay", "after", json!({"minimum": 0})),
        (
            "NewQueueRule",
            "admit_per_second",
            json!({"minimum": 1, "maximum": 1_000_000}),
        ),
        (
            "NewQueueRule",
            "pass_seconds",
            json!({"minimum": 1, "maximum": 2_592_000}),
        ),
    ] {
        let property = &mut schemas[name]["properties"][field];
        if let (Some(property), Some(bounds)) = (property.as_object_mut(), bounds.as_object()) {
            property.extend(bounds.clone());
        }
    }
    // A user id anywhere: 1 to 128 characters, none of them a control character.
    if let Some(all) = schemas.as_object_mut() {
        for schema in all.values_mut() {
            // (`get_mut`, not indexing: indexing would add a null `user_id` everywhere.)
            let user = schema
                .get_mut("properties")
                .and_then(|p| p.get_mut("user_id"))
                .and_then(|u| u.as_object_mut());
            if let Some(user) = user {
                user.insert(
                    "pattern".into(),
                    json!("^[^\\u0000-\\u001f\\u007f-\\u009f]{1,128}$"),
                );
            }
        }
    }
    schemas["FeedItem"] = json!({
        "type": "object",
        "required": ["cursor", "type", "at"],
        "properties": {
            "cursor": {"type": "integer", "format": "int64", "description": "Strictly increasing; pass the last one as `after`."},
            "type": {"type": "string", "enum": ["reservation.held", "reservation.confirmed", "reservation.cancelled",
                "reservation.expired", "reservation.released", "reservation.extended",
                "group.opened", "group.formed", "group.failed"]},
            "at": {"type": "string", "format": "date-time"},
            "reservation": {"$ref": "#/components/schemas/ReservationView"},
            "group": {"type": "object", "properties": {
                "id": {"type": "string"}, "campaign_id": {"type": "string"}, "leader_user_id": {"type": "string"},
                "size": {"type": "integer"}, "status": {"type": "string", "enum": ["open", "formed", "failed"]},
                "expires_at": {"type": "string", "format": "date-time"}}}
        }
    });
    schemas["FeedPage"]["properties"]["events"] =
        json!({"type": "array", "items": {"$ref": "#/components/schemas/FeedItem"}});

    let Some(paths) = doc["paths"].as_object_mut() else {
        return doc;
    };
    for (path, item) in paths.iter_mut() {
        let Some(operations) = item.as_object_mut() else {
            continue;
        };
        for (method, op) in operations.iter_mut() {
            let (who, body, idempotent, limited) = operation(method, path);
            // Path parameters the handlers take through an extractor.
            let parameters = op["parameters"].as_array().cloned().unwrap_or_default();
            let mut parameters: Vec<Value> = parameters;
            for name in ["id", "ticket"] {
                let template = format!("{{{name}}}");
                if path.contains(&template) && !parameters.iter().any(|p| p["name"] == name) {
                    parameters.insert(
                        0,
                        json!({"name": name, "in": "path", "required": true,
                        "schema": {"type": "string", "minLength": 1, "maxLength": 128}}),
                    );
                }
            }
            let takes_pass = method == "post"
                && (path.ends_with("/reservations") && path.starts_with("/v1/campaigns/")
                    || path.ends_with("/groups")
                    || path.ends_with("/members"));
            if takes_pass {
                parameters.push(json!({"name": "Flashsale-Pass", "in": "header", "required": false,
                    "description": "On a campaign with a waiting room: the pass of the user's admitted ticket (GET /v1/queue/{ticket}); without a valid one, 403 queue_pass_required. Ignored on other campaigns.",
                    "schema": {"type": "string"}}));
            }
            for parameter in parameters.iter_mut() {
                if parameter["in"] == "query" && parameter["name"] == "limit" {
                    let max = if path == "/v1/campaigns" { 500 } else { 1000 };
                    parameter["schema"] = json!({"type": "integer", "minimum": 1, "maximum": max});
                }
                if parameter["in"] == "query"
                    && parameter["name"] == "after"
                    && parameter["schema"]["type"] != "string"
                    && path != "/v1/campaigns"
                    && !path.ends_with("/reservations")
                {
                    parameter["schema"] =
                        json!({"type": "integer", "minimum": 0, "maximum": i64::MAX});
                }
                // The id rules: a campaign id, a user id (no control characters).
                if parameter["in"] == "query"
                    && parameter["name"] == "after"
                    && path == "/v1/campaigns"
                {
                    parameter["schema"] =
                        json!({"type": "string", "pattern": "^[a-z0-9_-]{0,64}$"});
                }
                if parameter["in"] == "query"
                    && parameter["name"] == "after"
                    && path.ends_with("/reservations")
                {
                    parameter["schema"] = json!({"type": "string",
                        "pattern": "^(res_[0-9A-HJKMNP-TV-Z]{26}_[a-z0-9_-]{1,64}(\\.([1-9]|[1-5][0-9]|6[0-3]))?)?$"});
                }
                if parameter["in"] == "query" && parameter["name"] == "campaign_id" {
                    parameter["schema"] =
                        json!({"type": "string", "pattern": "^[a-z0-9_-]{1,64}$"});
                }
                let user_path = path == "/v1/users/{id}" && parameter["in"] == "path";
                if user_path || (parameter["in"] == "query" && parameter["name"] == "user_id") {
                    parameter["schema"] = json!({"type": "string",
                        "pattern": "^[^\\u0000-\\u001f\\u007f-\\u009f]{1,128}$"});
                }
                // Enumerations: the campaign list's and the reservation list's `status`, the
                // feed's comma-separated `type`.
                if parameter["in"] == "query" && parameter["name"] == "status" {
                    let values: &[&str] = if path == "/v1/campaigns" {
                        &["scheduled", "active", "sold_out", "ended"]
                    } else {
                        &["held", "confirmed", "cancelled", "expired", "released"]
                    };
                    parameter["schema"] = json!({"type": "string", "enum": values});
                }
                if parameter["in"] == "query" && parameter["name"] == "type" {
                    parameter["schema"] = json!({"type": "array", "minItems": 1,
                        "items": {"type": "string", "enum": super::events::EVENT_TYPES}});
                    parameter["style"] = json!("form");
                    parameter["explode"] = json!(false);
                }
                if parameter["name"] == "Idempotency-Key" {
                    parameter["required"] = json!(true);
                    parameter["schema"] =
                        json!({"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,128}$"});
                }
            }
            if idempotent && !parameters.iter().any(|p| p["name"] == "Idempotency-Key") {
                parameters.push(
                    json!({"name": "Idempotency-Key", "in": "header", "required": true,
                    "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,128}$"}}),
                );
            }
            op["parameters"] = json!(parameters);
            op["security"] = match who {
                Who::Anyone => json!([]),
                Who::Admin => json!([{"admin": []}]),
                Who::Store => json!([{"store": []}, {"admin": []}]),
                Who::StoreOrUser => json!([{"store": []}, {"admin": []}, {"user": []}]),
            };
            if let (true, Some(example)) = (body, example(method, path)) {
                if let Some(content) = op["requestBody"]["content"].as_object_mut() {
                    for media in content.values_mut() {
                        media["example"] = example.clone();
                    }
                }
            }
            let Some(responses) = op["responses"].as_object_mut() else {
                continue;
            };
            for (status, response) in responses.iter_mut() {
                let code: u16 = status.parse().unwrap_or(0);
                if code >= 400 {
                    let description = response["description"].as_str().unwrap_or("").to_owned();
                    *response = problem(&description, code == 429 || code == 503);
                    continue;
                }
                let headers = &mut response["headers"];
                if !headers.is_object() {
                    *headers = json!({});
                }
                headers["x-request-id"] = json!({"$ref": "#/components/headers/RequestId"});
                if code == 201 {
                    headers["Location"] = json!({"$ref": "#/components/headers/Location"});
                    if idempotent {
                        headers["Idempotent-Replayed"] =
                            json!({"$ref": "#/components/headers/IdempotentReplayed"});
                    }
                }
            }
            let mut shared = vec![
                ("500", "`internal`: a bug; the log line has the detail"),
                ("503", "`overloaded`, `timeout`, `engine_unavailable`, `engine_recovering`, `engine_out_of_memory`, `engine_unsafe`, `database_unavailable` (also while the database refuses writes); each with `Retry-After`"),
            ];
            if who != Who::Anyone {
                shared.push((
                    "401",
                    "`unauthenticated`: no token, or one that is not valid",
                ));
                shared.push(("403", "`forbidden`: the token may not do this"));
            }
            if path.contains("{id}") || path.starts_with("/v1/") {
                shared.push(("400", "`malformed_path`, `malformed_json`"));
            }
            if body {
                shared.push(("408", "`body_timeout`: the body did not arrive in time"));
                shared.push(("413", "`payload_too_large`"));
                shared.push((
                    "415",
                    "`unsupported_media_type`: the body must be application/json",
                ));
            }
            if body || method == "get" && path.starts_with("/v1/") || idempotent {
                shared.push(("422", "`invalid_request`, `idempotency_key_required`, `invalid_idempotency_key`, `idempotency_key_reused`"));
            }
            if limited {
                shared.push(("429", "`rate_limited`"));
            }
            if path.contains("{id}") {
                shared.push(("404", "`campaign_not_found`, `reservation_not_found`, `group_not_found`, `webhook_not_found`, `not_found`"));
            }
            for (status, description) in shared {
                if !responses.contains_key(status) {
                    responses.insert(
                        status.into(),
                        problem(description, status == "429" || status == "503"),
                    );
                }
            }
        }
    }
    doc
}

pub fn router() -> Router<AppState> {
    Router::new().route(
        "/openapi.json",
        get(|| async { Json(complete(ApiDoc::openapi())) }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_is_problem_json_and_every_path_parameter_is_declared() {
        let doc = complete(ApiDoc::openapi());
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("operations") {
                for (status, response) in op["responses"].as_object().expect("responses") {
                    if status.parse::<u16>().is_ok_and(|s| s >= 400) {
                        assert!(
                            response["content"]["application/problem+json"].is_object(),
                            "{method} {path} {status}"
                        );
                    }
                }
                if path.contains("{id}") {
                    assert!(
                        op["parameters"].as_array().is_some_and(|p| p
                            .iter()
                            .any(|p| p["name"] == "id" && p["in"] == "path")),
                        "{method} {path}"
                    );
                }
                assert!(op["security"].is_array(), "{method} {path}");
            }
        }
    }
}
