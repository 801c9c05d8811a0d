//! The parts every operation shares: the error codes, the problem body, request examples.

use serde_json::{json, Value};

/// Every `code` the service answers with.
pub(super) const CODES: &[&str] = &[
    "body_timeout",
    "campaign_exists",
    "campaign_not_found",
    "database_unavailable",
    "engine_recovering",
    "engine_out_of_memory",
    "engine_unavailable",
    "engine_unsafe",
    "extension_exceeded",
    "forbidden",
    "group_closed",
    "group_full",
    "group_not_found",
    "already_member",
    "idempotency_key_required",
    "idempotency_key_reused",
    "insufficient_stock",
    "internal",
    "invalid_idempotency_key",
    "invalid_request",
    "limit_exceeded",
    "malformed_json",
    "malformed_path",
    "method_not_allowed",
    "not_found",
    "not_started",
    "ended",
    "overloaded",
    "payload_too_large",
    "rate_limited",
    "reservation_not_found",
    "reservation_not_held",
    "sold_out",
    "timeout",
    "unauthenticated",
    "unsupported_media_type",
    "webhook_not_found",
    "wrong_campaign_kind",
    "user_has_live_reservations",
    "no_waiting_room",
    "queue_pass_required",
    "ticket_not_found",
];

pub(super) const RESERVATION_STATUSES: &[&str] =
    &["held", "confirmed", "cancelled", "expired", "released"];

pub(super) fn problem(description: &str, retry_after: bool) -> Value {
    let mut headers = json!({"x-request-id": {"$ref": "#/components/headers/RequestId"}});
    if retry_after {
        headers["Retry-After"] = json!({"$ref": "#/components/headers/RetryAfter"});
    }
    json!({
        "description": description,
        "headers": headers,
        "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    })
}

/// An example body per operation that takes one.
pub(super) fn example(method: &str, path: &str) -> Option<Value> {
    Some(match (method, path) {
        ("post", "/v1/campaigns") => {
            json!({"id": "spring-tea", "kind": "flash_sale", "sku": "tea-01",
            "stock": 500, "per_user_limit": 2, "hold_seconds": 900})
        }
        ("post", "/v1/campaigns/{id}/stock") => json!({"delta": -20}),
        ("post", "/v1/campaigns/{id}/reservations") => json!({"user_id": "u42", "quantity": 1}),
        ("post", "/v1/campaigns/{id}/groups" | "/v1/groups/{id}/members")
        | ("post", "/v1/campaigns/{id}/queue") => json!({"user_id": "u42"}),
        ("post", "/v1/reservations/{id}/extend") => json!({"seconds": 300}),
        ("post", "/v1/webhooks") => json!({"url": "https://store.example/flashsale-hook",
            "event_types": ["reservation.expired", "reservation.released"]}),
        ("post", "/v1/webhooks/{id}/replay") => json!({"after": 1200}),
        _ => return None,
    })
}
