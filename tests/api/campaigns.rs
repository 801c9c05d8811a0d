//! Creating, reading and tuning campaigns; availability.

use crate::helpers::{assert_problem, created_reservation, spawn_app, unique_id, Backend};
use crate::on_every_backend;
use serde_json::{json, Value};

on_every_backend!(
    creating_a_campaign_returns_it_with_live_counts,
    a_campaign_without_an_id_gets_one,
    creating_an_existing_campaign_conflicts,
    unknown_campaigns_are_not_found,
    stock_can_be_added_and_withdrawn_down_to_what_is_available,
    availability_is_public_and_cacheable_for_a_second,
    scheduled_and_ended_campaigns_say_so,
    an_admin_lists_ends_and_inspects_campaigns,
);

async fn creating_a_campaign_returns_it_with_live_counts(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = unique_id("c");
    let response = app
        .create_campaign(
            &json!({"id": id, "kind": "flash_sale", "sku": "phone-1", "stock": 100,
            "per_user_limit": 2, "hold_seconds": 300}),
        )
        .await;
    assert_eq!(response.status(), 201);
    assert_eq!(
        response.headers()["location"],
        format!("/v1/campaigns/{id}")
    );
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["status"], "active");
    assert_eq!(body["available"], 100);
    assert_eq!(body["per_user_limit"], 2);
    assert_eq!(body["hold_seconds"], 300);
    let read = app.campaign_json(&id).await;
    assert_eq!(read, body);
}

async fn a_campaign_without_an_id_gets_one(backend: Backend) {
    let app = spawn_app(backend).await;
    let response = app
        .create_campaign(&json!({"kind": "flash_sale", "sku": "s", "stock": 1}))
        .await;
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.expect("json");
    let id = body["id"].as_str().expect("id");
    assert_eq!(body["per_user_limit"], 1);
    assert_eq!(body["hold_seconds"], 900);
    assert_eq!(app.campaign_json(id).await["id"], id);
}

async fn creating_an_existing_campaign_conflicts(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = app.campaign(5, 1, json!({})).await;
    let again = app
        .create_campaign(&json!({"id": id, "kind": "flash_sale", "sku": "other", "stock": 9}))
        .await;
    assert_problem(again, 409, "campaign_exists").await;
    assert_eq!(app.campaign_json(&id).await["stock"], 5);
}

async fn unknown_campaigns_are_not_found(backend: Backend) {
    let app = spawn_app(backend).await;
    assert_problem(
        app.get_campaign("no-such-campaign").await,
        404,
        "campaign_not_found",
    )
    .await;
    assert_problem(
        app.get_campaign("NOT%20VALID").await,
        404,
        "campaign_not_found",
    )
    .await;
    assert_problem(
        app.availability("no-such-campaign").await,
        404,
        "campaign_not_found",
    )
    .await;
    assert_problem(
        app.adjust_stock("no-such-campaign", 1).await,
        404,
        "campaign_not_found",
    )
    .await;
    assert_problem(
        app.reserve("no-such-campaign", "u1", 1).await,
        404,
        "campaign_not_found",
    )
    .await;
}

async fn stock_can_be_added_and_withdrawn_down_to_what_is_available(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = app.campaign(3, 3, json!({})).await;
    assert_eq!(app.reserve(&id, "u1", 2).await.status(), 201);

    let added: Value = app.adjust_stock(&id, 5).await.json().await.expect("json");
    assert_eq!(
        (added["stock"].as_u64(), added["available"].as_u64()),
        (Some(8), Some(6))
    );
    let too_much = app.adjust_stock(&id, -7).await;
    assert_problem(too_much, 409, "insufficient_stock").await;
    let withdrawn: Value = app.adjust_stock(&id, -6).await.json().await.expect("json");
    assert_eq!(
        (withdrawn["stock"].as_u64(), withdrawn["available"].as_u64()),
        (Some(2), Some(0))
    );
    assert_eq!(withdrawn["status"], "sold_out");
    assert_problem(app.adjust_stock(&id, 0).await, 422, "invalid_request").await;
}

async fn availability_is_public_and_cacheable_for_a_second(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = app.campaign(2, 2, json!({})).await;
    let response = app.availability(&id).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["cache-control"], "max-age=1");
    assert_eq!(
        response.json::<Value>().await.expect("json"),
        json!({"status": "active", "available": 2})
    );
    app.reserve(&id, "u1", 2).await;
    let after: Value = app.availability(&id).await.json().await.expect("json");
    assert_eq!(after, json!({"status": "sold_out", "available": 0}));
}

async fn scheduled_and_ended_campaigns_say_so(backend: Backend) {
    let app = spawn_app(backend).await;
    let later = app
        .campaign(5, 1, json!({"starts_at": "2999-01-01T00:00:00Z"}))
        .await;
    assert_eq!(app.campaign_json(&later).await["status"], "scheduled");
    let over = app
        .campaign(
            5,
            1,
            json!({"starts_at": "2000-01-01T00:00:00Z", "ends_at": "2000-01-02T00:00:00+08:00"}),
        )
        .await;
    let body = app.campaign_json(&over).await;
    assert_eq!(body["status"], "ended");
    assert_eq!(body["ends_at"], "2000-01-01T16:00:00.000Z");
}

async fn an_admin_lists_ends_and_inspects_campaigns(backend: Backend) {
    let app = spawn_app(backend).await;
    let get = |path: String, token: String| {
        let request = app.client.get(app.url(&path)).bearer_auth(token);
        async move {
            let response = request.send().await.expect("sent");
            assert_eq!(response.status(), 200, "{path}");
            response.json::<Value>().await.expect("json")
        }
    };
    let active = app.campaign(5, 5, json!({})).await;
    let later = (flashsale::domain::Millis::now().plus_seconds(3600)).to_rfc3339();
    let scheduled = app.campaign(5, 5, json!({"starts_at": later})).await;
    let gone = app.campaign(1, 1, json!({})).await;
    let first = created_reservation(app.reserve(&gone, "ann", 1).await).await;
    let held = created_reservation(app.reserve(&active, "bob", 1).await).await;

    // Paging one at a time sees each campaign once; has_more until the last.
    let mut seen = Vec::new();
    let mut after = String::new();
    loop {
        let page = get(
            format!("/v1/campaigns?limit=1&after={after}"),
            app.store_token.clone(),
        )
        .await;
        let campaigns = page["campaigns"].as_array().expect("campaigns");
        assert!(campaigns.len() <= 1);
        if let Some(c) = campaigns.first() {
            seen.push(c["id"].as_str().expect("id").to_owned());
            after = page["next"].as_str().expect("next").to_owned();
        }
        if page["has_more"] == false {
            break;
        }
    }
    let mut expected = vec![active.clone(), scheduled.clone(), gone.clone()];
    expected.sort();
    assert_eq!(seen, expected);
    for (status, id) in [
        ("active", &active),
        ("scheduled", &scheduled),
        ("sold_out", &gone),
    ] {
        let page = get(
            format!("/v1/campaigns?status={status}"),
            app.admin_token.clone(),
        )
        .await;
        let ids: Vec<&str> = page["campaigns"]
            .as_array()
            .expect("campaigns")
            .iter()
            .filter_map(|c| c["id"].as_str())
            .collect();
        assert_eq!(ids, vec![id.as_str()], "{status}");
    }
    let response = app
        .client
        .get(app.url("/v1/campaigns?status=nope"))
        .bearer_auth(&app.admin_token)
        .send()
        .await
        .expect("sent");
    assert_problem(response, 422, "invalid_request").await;

    // End now: no new attempts, live holds still end normally, idempotent.
    let end = |id: String, token: String| {
        let request = app
            .client
            .post(app.url(&format!("/v1/campaigns/{id}/end")))
            .bearer_auth(token);
        async move { request.send().await.expect("sent") }
    };
    assert_problem(
        end(active.clone(), app.store_token.clone()).await,
        403,
        "forbidden",
    )
    .await;
    assert_problem(
        end("no-such".into(), app.admin_token.clone()).await,
        404,
        "campaign_not_found",
    )
    .await;
    let response = end(active.clone(), app.admin_token.clone()).await;
    assert_eq!(response.status(), 200);
    let ended: Value = response.json().await.expect("json");
    assert_eq!(ended["status"], "ended");
    let again: Value = end(active.clone(), app.admin_token.clone())
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(
        again["ends_at"], ended["ends_at"],
        "ending again keeps the first end"
    );
    assert_problem(app.reserve(&active, "cat", 1).await, 409, "ended").await;
    assert_eq!(
        app.confirm(held["id"].as_str().expect("id"), &app.store_token)
            .await
            .status(),
        200
    );
    let response = end(scheduled.clone(), app.admin_token.clone()).await;
    let ended: Value = response.json().await.expect("json");
    assert_eq!(ended["status"], "ended");
    assert_eq!(ended["starts_at"], ended["ends_at"]);
    let page = get("/v1/campaigns?status=ended".into(), app.admin_token.clone()).await;
    assert_eq!(page["campaigns"].as_array().map(Vec::len), Some(2));

    // A campaign's reservations, as persisted: by status and by user, paged.
    for n in 0..3 {
        let _ = app.reserve(&gone, &format!("late{n}"), 1).await; // sold out: nothing made
    }
    let started = std::time::Instant::now();
    let listed = loop {
        let page = get(
            format!("/v1/campaigns/{active}/reservations"),
            app.store_token.clone(),
        )
        .await;
        if page["reservations"]
            .as_array()
            .is_some_and(|r| r.first().is_some_and(|r| r["status"] == "confirmed"))
        {
            break page;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "{page}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(listed["reservations"].as_array().map(Vec::len), Some(1));
    assert_eq!(listed["has_more"], false);
    let page = get(
        format!("/v1/campaigns/{gone}/reservations?user_id=ann&status=held"),
        app.store_token.clone(),
    )
    .await;
    assert_eq!(page["reservations"][0]["id"], first["id"]);
    let page = get(
        format!("/v1/campaigns/{gone}/reservations?status=confirmed"),
        app.store_token.clone(),
    )
    .await;
    assert_eq!(page["reservations"].as_array().map(Vec::len), Some(0));
    let response = app
        .client
        .get(app.url(&format!("/v1/campaigns/{gone}/reservations?status=paid")))
        .bearer_auth(&app.store_token)
        .send()
        .await
        .expect("sent");
    assert_problem(response, 422, "invalid_request").await;
    let response = app
        .client
        .get(app.url("/v1/campaigns/no-such/reservations"))
        .bearer_auth(&app.store_token)
        .send()
        .await
        .expect("sent");
    assert_problem(response, 404, "campaign_not_found").await;
    // Text that names no place (a NUL byte, found by schemathesis: Postgres refused the
    // query with a 500) is a 422, never a server error.
    for path in [
        "/v1/campaigns?after=l%F1%9D%BC%97%00".to_owned(),
        format!("/v1/campaigns/{gone}/reservations?after=r%00"),
    ] {
        let response = app
            .client
            .get(app.url(&path))
            .bearer_auth(&app.admin_token)
            .send()
            .await
            .expect("sent");
        assert_problem(response, 422, "invalid_request").await;
    }
    let response = app
        .client
        .get(app.url("/v1/webhooks/wh%00"))
        .bearer_auth(&app.admin_token)
        .send()
        .await
        .expect("sent");
    assert_problem(response, 404, "webhook_not_found").await;
}
