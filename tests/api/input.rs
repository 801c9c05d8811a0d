//! Bad input of every kind gets a clear problem+json answer and changes nothing.

use crate::helpers::{assert_problem, fresh_key, spawn_app, spawn_app_with, Backend};
use crate::on_every_backend;
use serde_json::json;

on_every_backend!(
    malformed_json_is_a_bad_request,
    unknown_fields_wrong_types_and_out_of_range_values_are_invalid,
    campaign_rules_are_checked,
    bodies_over_the_limit_are_too_large,
    bodies_that_are_not_json_are_unsupported,
    a_reservation_needs_a_valid_idempotency_key,
    garbage_never_causes_a_server_error,
    a_whole_number_written_as_a_float_is_that_integer,
);

/// JSON has one number type: `2.0` is the integer 2 (the document says `integer`), `1.5` is
/// not an integer.
async fn a_whole_number_written_as_a_float_is_that_integer(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = app.campaign(10, 5, json!({})).await;
    let path = format!("/v1/campaigns/{id}/reservations");
    let made = post_raw(
        &app,
        &path,
        &app.store_token,
        r#"{"user_id":"u1","quantity":2.0}"#,
    )
    .await;
    assert_eq!(made.status(), 201);
    let body: serde_json::Value = made.json().await.expect("json");
    assert_eq!(body["quantity"], 2);
    let half = post_raw(
        &app,
        &path,
        &app.store_token,
        r#"{"user_id":"u2","quantity":1.5}"#,
    )
    .await;
    assert_problem(half, 422, "invalid_request").await;
}

async fn post_raw(
    app: &crate::helpers::TestApp,
    path: &str,
    token: &str,
    body: &'static str,
) -> reqwest::Response {
    app.client
        .post(app.url(path))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .header("Idempotency-Key", fresh_key())
        .body(body)
        .send()
        .await
        .expect("sent")
}

async fn malformed_json_is_a_bad_request(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = app.campaign(5, 1, json!({})).await;
    let path = format!("/v1/campaigns/{id}/reservations");
    for body in [
        "{",
        "{\"user_id\": }",
        "[1,2",
        "not json",
        "{\"user_id\":\"u\"} trailing",
    ] {
        assert_problem(
            post_raw(&app, &path, &app.store_token, body).await,
            400,
            "malformed_json",
        )
        .await;
    }
    assert_problem(
        post_raw(&app, "/v1/campaigns", &app.admin_token, "{\"kind\":").await,
        400,
        "malformed_json",
    )
    .await;
    assert_eq!(app.campaign_json(&id).await["available"], 5);
}

async fn unknown_fields_wrong_types_and_out_of_range_values_are_invalid(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = app.campaign(5, 1, json!({})).await;
    let path = format!("/v1/campaigns/{id}/reservations");
    let cases: [&'static str; 8] = [
        r#"{"user_id":"u1","extra":1}"#,
        r#"{"user_id":7}"#,
        r#"{"user_id":"u1","quantity":"2"}"#,
        r#"{"user_id":"u1","quantity":-1}"#,
        r#"{"user_id":"u1","quantity":0}"#,
        r#"{"user_id":"u1","quantity":1.5}"#,
        r#"{"user_id":"u1","quantity":99999999999999999999999}"#,
        r#"{"quantity":1}"#,
    ];
    for body in cases {
        let problem = assert_problem(
            post_raw(&app, &path, &app.store_token, body).await,
            422,
            "invalid_request",
        )
        .await;
        assert!(!problem["detail"].as_str().unwrap_or_default().is_empty());
    }
    let long_user = format!(r#"{{"user_id":"{}"}}"#, "u".repeat(129));
    let response = app
        .client
        .post(app.url(&path))
        .bearer_auth(&app.store_token)
        .header("content-type", "application/json")
        .header("Idempotency-Key", fresh_key())
        .body(long_user)
        .send()
        .await
        .expect("sent");
    assert_problem(response, 422, "invalid_request").await;
    assert_eq!(app.campaign_json(&id).await["available"], 5);
}

async fn campaign_rules_are_checked(backend: Backend) {
    let app = spawn_app(backend).await;
    let invalid = [
        json!({"kind": "flash_sale", "sku": "s", "stock": 0}),
        json!({"kind": "flash_sale", "sku": "s", "stock": 2_000_000_000u64}),
        json!({"kind": "auction", "sku": "s", "stock": 1}),
        json!({"kind": "flash_sale", "sku": "", "stock": 1}),
        json!({"kind": "flash_sale", "sku": "s".repeat(129), "stock": 1}),
        json!({"id": "Has Spaces", "kind": "flash_sale", "sku": "s", "stock": 1}),
        json!({"kind": "flash_sale", "sku": "s", "stock": 1, "per_user_limit": 0}),
        json!({"kind": "flash_sale", "sku": "s", "stock": 1, "hold_seconds": 0}),
        json!({"kind": "flash_sale", "sku": "s", "stock": 1, "starts_at": "tomorrow"}),
        json!({"kind": "flash_sale", "sku": "s", "stock": 1, "starts_at": "2030-01-02T00:00:00Z", "ends_at": "2030-01-01T00:00:00Z"}),
        json!({"kind": "flash_sale", "sku": "s", "stock": 1, "group": {"size": 3, "window_seconds": 60}}),
        json!({"kind": "group_buy", "sku": "s", "stock": 1}),
        json!({"kind": "group_buy", "sku": "s", "stock": 1, "group": {"size": 1, "window_seconds": 60}}),
        json!({"kind": "group_buy", "sku": "s", "stock": 1, "group": {"size": 3}}),
        json!({"kind": "flash_sale", "sku": "s", "stock": "ten"}),
        json!({"kind": "flash_sale", "sku": "s"}),
    ];
    for body in invalid {
        let problem =
            assert_problem(app.create_campaign(&body).await, 422, "invalid_request").await;
        assert!(
            !problem["detail"].as_str().unwrap_or_default().is_empty(),
            "{body}"
        );
    }
}

async fn bodies_over_the_limit_are_too_large(backend: Backend) {
    let app = spawn_app_with(backend, |c| c.body_limit_bytes = 1024).await;
    let id = app.campaign(5, 1, json!({})).await;
    let huge = format!(r#"{{"user_id":"{}"}}"#, "x".repeat(4096));
    let response = app
        .client
        .post(app.url(&format!("/v1/campaigns/{id}/reservations")))
        .bearer_auth(&app.store_token)
        .header("content-type", "application/json")
        .header("Idempotency-Key", fresh_key())
        .body(huge)
        .send()
        .await
        .expect("sent");
    assert_problem(response, 413, "payload_too_large").await;
    assert_eq!(app.campaign_json(&id).await["available"], 5);
}

async fn bodies_that_are_not_json_are_unsupported(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = app.campaign(5, 1, json!({})).await;
    let response = app
        .client
        .post(app.url(&format!("/v1/campaigns/{id}/reservations")))
        .bearer_auth(&app.store_token)
        .header("content-type", "text/plain")
        .header("Idempotency-Key", fresh_key())
        .body("user_id=u1")
        .send()
        .await
        .expect("sent");
    assert_problem(response, 415, "unsupported_media_type").await;
}

async fn a_reservation_needs_a_valid_idempotency_key(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = app.campaign(5, 1, json!({})).await;
    let url = app.url(&format!("/v1/campaigns/{id}/reservations"));
    let missing = app
        .client
        .post(&url)
        .bearer_auth(&app.store_token)
        .json(&json!({"user_id": "u1"}))
        .send()
        .await
        .expect("sent");
    assert_problem(missing, 400, "idempotency_key_required").await;
    for bad in ["has space", "ümlaut", &"k".repeat(129)] {
        let response = app
            .client
            .post(&url)
            .bearer_auth(&app.store_token)
            .header("Idempotency-Key", bad.as_bytes())
            .json(&json!({"user_id": "u1"}))
            .send()
            .await
            .expect("sent");
        assert_problem(response, 400, "invalid_idempotency_key").await;
    }
    assert_eq!(app.campaign_json(&id).await["available"], 5);
}

async fn garbage_never_causes_a_server_error(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = app.campaign(5, 1, json!({})).await;
    let paths = [
        "/v1/campaigns".to_owned(),
        format!("/v1/campaigns/{id}/reservations"),
        format!("/v1/campaigns/{id}/stock"),
        "/v1/reservations/res_garbage/confirm".to_owned(),
        "/v1/reservations/res_01ARZ3NDEKTSV4RRFFQ69G5FAV_nope/cancel".to_owned(),
    ];
    let bodies: [&'static [u8]; 8] = [
        b"",
        b"null",
        b"[]",
        b"\"string\"",
        b"{\"\xff\xfe\":1}",
        b"{\"user_id\":\"\\u0000\"}",
        b"{\"delta\":9223372036854775808}",
        b"{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{",
    ];
    for path in &paths {
        for body in bodies {
            for token in [&app.admin_token, &app.store_token] {
                let response = app
                    .client
                    .post(app.url(path))
                    .bearer_auth(token)
                    .header("content-type", "application/json")
                    .header("Idempotency-Key", fresh_key())
                    .body(body)
                    .send()
                    .await
                    .expect("sent");
                let status = response.status().as_u16();
                assert!(
                    (200..500).contains(&status),
                    "{path} {body:?} gave {status}"
                );
            }
        }
    }
    assert_eq!(app.campaign_json(&id).await["available"], 5);
}
