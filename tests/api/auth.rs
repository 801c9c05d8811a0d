//! Service tokens, scopes and user JWTs.

use crate::helpers::{assert_problem, created_reservation, fresh_key, spawn_app, Backend};
use crate::on_every_backend;
use serde_json::json;

on_every_backend!(
    requests_without_a_valid_token_are_unauthenticated,
    a_store_token_cannot_administer_campaigns,
    a_user_token_reserves_for_itself_only,
    a_user_sees_and_cancels_only_its_own_reservations_and_never_confirms,
    an_expired_user_token_is_unauthenticated,
);

async fn requests_without_a_valid_token_are_unauthenticated(backend: Backend) {
    let app = spawn_app(backend).await;
    let url = app.url("/v1/campaigns");
    let body = json!({"kind": "flash_sale", "sku": "s", "stock": 1});
    assert_problem(
        app.client
            .post(&url)
            .json(&body)
            .send()
            .await
            .expect("sent"),
        401,
        "unauthenticated",
    )
    .await;
    assert_problem(
        app.client
            .post(&url)
            .bearer_auth("nope")
            .json(&body)
            .send()
            .await
            .expect("sent"),
        401,
        "unauthenticated",
    )
    .await;
    assert_problem(
        app.client
            .post(&url)
            .header("Authorization", "Basic abc")
            .json(&body)
            .send()
            .await
            .expect("sent"),
        401,
        "unauthenticated",
    )
    .await;
    let forged = flashsale::http::auth::issue_user_token("another-secret", "mallory", 3600);
    assert_problem(
        app.client
            .get(app.url("/v1/campaigns/x"))
            .bearer_auth(forged)
            .send()
            .await
            .expect("sent"),
        401,
        "unauthenticated",
    )
    .await;
}

async fn a_store_token_cannot_administer_campaigns(backend: Backend) {
    let app = spawn_app(backend).await;
    let response = app
        .client
        .post(app.url("/v1/campaigns"))
        .bearer_auth(&app.store_token)
        .json(&json!({"kind": "flash_sale", "sku": "s", "stock": 1}))
        .send()
        .await
        .expect("sent");
    assert_problem(response, 403, "forbidden").await;
    let id = app.campaign(5, 1, json!({})).await;
    let user = app.user_token("alice");
    let read = app
        .client
        .get(app.url(&format!("/v1/campaigns/{id}")))
        .bearer_auth(&user)
        .send()
        .await
        .expect("sent");
    assert_problem(read, 403, "forbidden").await;
    // admin implies store
    let admin_reads = app
        .client
        .get(app.url(&format!("/v1/campaigns/{id}")))
        .bearer_auth(&app.admin_token)
        .send()
        .await
        .expect("sent");
    assert_eq!(admin_reads.status(), 200);
}

async fn a_user_token_reserves_for_itself_only(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = app.campaign(5, 2, json!({})).await;
    let alice = app.user_token("alice");

    let mine = created_reservation(
        app.reserve_with(&id, &alice, &fresh_key(), &json!({}))
            .await,
    )
    .await;
    assert_eq!(mine["user_id"], "alice");
    let explicit = app
        .reserve_with(&id, &alice, &fresh_key(), &json!({"user_id": "alice"}))
        .await;
    assert_eq!(explicit.status(), 201);
    let theirs = app
        .reserve_with(&id, &alice, &fresh_key(), &json!({"user_id": "bob"}))
        .await;
    assert_problem(theirs, 403, "forbidden").await;
}

async fn a_user_sees_and_cancels_only_its_own_reservations_and_never_confirms(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = app.campaign(5, 2, json!({})).await;
    let alice = app.user_token("alice");
    let bob = app.user_token("bob");
    let r = created_reservation(app.reserve(&id, "alice", 1).await).await;
    let rid = r["id"].as_str().expect("id");

    assert_eq!(app.get_reservation(rid, &alice).await.status(), 200);
    assert_problem(app.get_reservation(rid, &bob).await, 403, "forbidden").await;
    assert_problem(app.confirm(rid, &alice).await, 403, "forbidden").await;
    assert_problem(app.cancel(rid, &bob).await, 403, "forbidden").await;
    let cancelled = app.cancel(rid, &alice).await;
    assert_eq!(cancelled.status(), 200);

    let paid = created_reservation(app.reserve(&id, "alice", 1).await).await;
    let paid_id = paid["id"].as_str().expect("id");
    assert_eq!(app.confirm(paid_id, &app.store_token).await.status(), 200);
    assert_problem(app.cancel(paid_id, &alice).await, 403, "forbidden").await;
}

async fn an_expired_user_token_is_unauthenticated(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = app.campaign(5, 2, json!({})).await;
    #[derive(serde::Serialize)]
    struct Claims {
        sub: &'static str,
        exp: u64,
    }
    let expired = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &Claims {
            sub: "alice",
            exp: 1_000,
        },
        &jsonwebtoken::EncodingKey::from_secret(app.jwt_secret.as_bytes()),
    )
    .expect("encodes");
    let response = app
        .reserve_with(&id, &expired, &fresh_key(), &json!({}))
        .await;
    assert_problem(response, 401, "unauthenticated").await;
}
