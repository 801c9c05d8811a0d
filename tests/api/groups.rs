//! Group buys through the API, and every group refusal.

use crate::helpers::{assert_problem, json_body, spawn_app, Backend, TestApp};
use crate::on_every_backend;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

on_every_backend!(
    a_group_buy_from_opening_to_formed,
    every_group_refusal_has_its_code,
    a_group_whose_window_passes_fails_and_the_feed_tells_whom_to_refund,
    a_user_opens_and_reads_only_groups_it_belongs_to,
);

async fn group_campaign(
    app: &TestApp,
    stock: u64,
    size: u64,
    window_seconds: u64,
    limit: u64,
) -> String {
    app.campaign(
        stock,
        limit,
        json!({"kind": "group_buy", "group": {"size": size, "window_seconds": window_seconds}}),
    )
    .await
}

async fn read_group(app: &TestApp, group: &str, token: &str) -> reqwest::Response {
    app.client
        .get(app.url(&format!("/v1/groups/{group}")))
        .bearer_auth(token)
        .send()
        .await
        .expect("sent")
}

fn reservation_of(group: &Value, user: &str) -> String {
    group["members"]
        .as_array()
        .expect("members")
        .iter()
        .rev()
        .find(|m| m["user_id"] == user)
        .and_then(|m| m["reservation_id"].as_str())
        .expect("member")
        .to_owned()
}

async fn a_group_buy_from_opening_to_formed(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = group_campaign(&app, 6, 3, 600, 1).await;

    let opened = app.open_group(&id, "leader").await;
    assert_eq!(opened.status(), 201);
    let location = opened.headers()["location"]
        .to_str()
        .expect("ascii")
        .to_owned();
    let group = opened.json::<Value>().await.expect("json");
    let gid = group["id"].as_str().expect("id").to_owned();
    assert_eq!(location, format!("/v1/groups/{gid}"));
    assert_eq!(group["status"], "open");
    assert_eq!(group["size"], 3);
    assert_eq!(group["leader_user_id"], "leader");
    assert_eq!(group["members"][0]["status"], "held");
    assert!(group["expires_at"].is_string());
    let campaign = app.campaign_json(&id).await;
    assert_eq!(
        (campaign["available"].as_u64(), campaign["held"].as_u64()),
        (Some(3), Some(3))
    );
    assert_eq!(
        campaign["groups"],
        json!({"open": 1, "formed": 0, "failed": 0})
    );

    json_body(app.join_group(&gid, "a").await, 201).await;
    let full = json_body(app.join_group(&gid, "b").await, 201).await;
    for user in ["leader", "a", "b"] {
        let rid = reservation_of(&full, user);
        let reservation: Value = app
            .get_reservation(&rid, &app.store_token)
            .await
            .json()
            .await
            .expect("json");
        assert_eq!(reservation["group_id"], gid.as_str());
        assert_eq!(app.confirm(&rid, &app.store_token).await.status(), 200);
    }
    let formed = json_body(read_group(&app, &gid, &app.store_token).await, 200).await;
    assert_eq!(formed["status"], "formed");
    let campaign = app.campaign_json(&id).await;
    assert_eq!(
        (
            campaign["available"].as_u64(),
            campaign["confirmed"].as_u64()
        ),
        (Some(3), Some(3))
    );
    assert_eq!(
        campaign["groups"],
        json!({"open": 0, "formed": 1, "failed": 0})
    );

    // A second group with one paid member: the database, once the pipeline caught up,
    // counts every kind of unit as the engine does (reconcile finds no drift).
    let second = json_body(app.open_group(&id, "c").await, 201).await;
    let paid = reservation_of(&second, "c");
    assert_eq!(app.confirm(&paid, &app.store_token).await.status(), 200);
    let campaign = app.campaign_json(&id).await;
    assert_eq!(
        (
            campaign["available"].as_u64(),
            campaign["held"].as_u64(),
            campaign["confirmed"].as_u64()
        ),
        (Some(0), Some(2), Some(4))
    );
    let drift = app.settled_drift().await;
    assert!(drift.is_empty(), "drift stayed: {drift:?}");
}

async fn every_group_refusal_has_its_code(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = group_campaign(&app, 9, 2, 600, 1).await;
    let group = json_body(app.open_group(&id, "leader").await, 201).await;
    let gid = group["id"].as_str().expect("id").to_owned();

    assert_problem(app.join_group(&gid, "leader").await, 409, "already_member").await;
    let other = json_body(app.open_group(&id, "other-leader").await, 201).await;
    let other_gid = other["id"].as_str().expect("id");
    assert_problem(
        app.join_group(other_gid, "leader").await,
        409,
        "limit_exceeded",
    )
    .await;
    json_body(app.join_group(&gid, "a").await, 201).await;
    assert_problem(app.join_group(&gid, "b").await, 409, "group_full").await;
    for user in ["leader", "a"] {
        app.confirm(
            &reservation_of(
                &json_body(read_group(&app, &gid, &app.store_token).await, 200).await,
                user,
            ),
            &app.store_token,
        )
        .await;
    }
    assert_problem(app.join_group(&gid, "c").await, 409, "group_closed").await;

    let flash = app.campaign(5, 1, json!({})).await;
    assert_problem(
        app.open_group(&flash, "u").await,
        409,
        "wrong_campaign_kind",
    )
    .await;
    assert_problem(app.reserve(&id, "u", 1).await, 409, "wrong_campaign_kind").await;
    assert_problem(
        app.join_group("grp_nonsense", "u").await,
        404,
        "group_not_found",
    )
    .await;
    let missing = format!("grp_01ARZ3NDEKTSV4RRFFQ69G5FAV_{id}");
    assert_problem(app.join_group(&missing, "u").await, 404, "group_not_found").await;
    let sold = group_campaign(&app, 2, 2, 600, 1).await;
    json_body(app.open_group(&sold, "first").await, 201).await;
    assert_problem(app.open_group(&sold, "second").await, 409, "sold_out").await;
    let missing_key = app
        .client
        .post(app.url(&format!("/v1/groups/{gid}/members")))
        .bearer_auth(&app.store_token)
        .json(&json!({"user_id": "x"}))
        .send()
        .await
        .expect("sent");
    assert_problem(missing_key, 400, "idempotency_key_required").await;
}

async fn a_group_whose_window_passes_fails_and_the_feed_tells_whom_to_refund(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = group_campaign(&app, 3, 3, 1, 1).await;
    let group = json_body(app.open_group(&id, "leader").await, 201).await;
    let gid = group["id"].as_str().expect("id").to_owned();
    let group = json_body(app.join_group(&gid, "payer").await, 201).await;
    let payer = reservation_of(&group, "payer");
    assert_eq!(app.confirm(&payer, &app.store_token).await.status(), 200);

    let started = Instant::now();
    let failed = loop {
        let now = json_body(read_group(&app, &gid, &app.store_token).await, 200).await;
        if now["status"] == "failed" {
            break now;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the group never failed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(failed["members"]
        .as_array()
        .expect("members")
        .iter()
        .all(|m| m["status"] == "released"));
    let campaign = app.campaign_json(&id).await;
    assert_eq!(campaign["available"], 3, "all 3 units return");
    assert_eq!(
        campaign["groups"],
        json!({"open": 0, "formed": 0, "failed": 1})
    );

    let started = Instant::now();
    let events = loop {
        let events = app.feed(100).await;
        if events.iter().any(|e| e["type"] == "group.failed") {
            break events;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "group.failed never reached the feed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(
        kinds,
        [
            "group.opened",
            "reservation.held",
            "reservation.held",
            "reservation.confirmed",
            "reservation.released",
            "reservation.released",
            "group.failed"
        ]
    );
    let released: Vec<&str> = events
        .iter()
        .filter(|e| e["type"] == "reservation.released")
        .filter_map(|e| e["reservation"]["user_id"].as_str())
        .collect();
    assert_eq!(
        released,
        ["leader", "payer"],
        "a release per member, the one who paid included"
    );
    assert_eq!(events.last().expect("event")["group"]["id"], gid.as_str());
}

async fn a_user_opens_and_reads_only_groups_it_belongs_to(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = group_campaign(&app, 6, 3, 600, 1).await;
    let alice = app.user_token("alice");
    let response = app
        .client
        .post(app.url(&format!("/v1/campaigns/{id}/groups")))
        .bearer_auth(&alice)
        .header("Idempotency-Key", "alice-opens")
        .send()
        .await
        .expect("sent");
    let group = json_body(response, 201).await;
    let gid = group["id"].as_str().expect("id");
    assert_eq!(group["leader_user_id"], "alice");
    let read = read_group(&app, gid, &alice).await;
    assert_eq!(read.status(), 200);
    let bob = app.user_token("bob");
    let denied = read_group(&app, gid, &bob).await;
    assert_problem(denied, 403, "forbidden").await;
    let replay = app
        .client
        .post(app.url(&format!("/v1/campaigns/{id}/groups")))
        .bearer_auth(&alice)
        .header("Idempotency-Key", "alice-opens")
        .send()
        .await
        .expect("sent");
    assert_eq!(replay.status(), 201);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(replay.json::<Value>().await.expect("json")["id"], gid);
}
