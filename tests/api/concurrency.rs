//! Concurrency through HTTP: the invariants hold with many clients at once.

use crate::helpers::{spawn_app, Backend};
use crate::on_every_backend;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};

on_every_backend!(
    two_thousand_attempts_over_http_sell_exactly_the_stock,
    fifty_requests_with_one_key_over_http_make_one_reservation,
);

async fn two_thousand_attempts_over_http_sell_exactly_the_stock(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = app.campaign(100, 2, json!({})).await;
    let limit = std::sync::Arc::new(tokio::sync::Semaphore::new(200));
    let tasks: Vec<_> = (0..2_000)
        .map(|i| {
            let client = app.client.clone();
            let url = app.url(&format!("/v1/campaigns/{id}/reservations"));
            let token = app.store_token.clone();
            let limit = limit.clone();
            tokio::spawn(async move {
                let _permit = limit.acquire().await.expect("semaphore open");
                let user = format!("user-{}", i % 500);
                // A 503 (a loaded machine's timeout) is retried with the same key, as
                // callers do; the final answer is what counts.
                let mut tries = 0;
                loop {
                    tries += 1;
                    let response = client
                        .post(&url)
                        .bearer_auth(&token)
                        .header("Idempotency-Key", format!("attempt-{i}"))
                        .json(&json!({ "user_id": user }))
                        .send()
                        .await
                        .expect("sent");
                    let status = response.status().as_u16();
                    let body: Value = response.json().await.expect("json");
                    if status != 503 || tries == 20 {
                        break (user, status, body);
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            })
        })
        .collect();
    let mut per_user: HashMap<String, u64> = HashMap::new();
    let mut ids = HashSet::new();
    for task in tasks {
        let (user, status, body) = task.await.expect("no panic");
        match status {
            201 => {
                *per_user.entry(user).or_default() += 1;
                assert!(ids.insert(body["id"].as_str().expect("id").to_owned()));
            }
            409 => assert!(
                matches!(body["code"].as_str(), Some("sold_out" | "limit_exceeded")),
                "{body}"
            ),
            other => panic!("unexpected status {other}: {body}"),
        }
    }
    assert_eq!(per_user.values().sum::<u64>(), 100);
    assert!(per_user.values().all(|&n| n <= 2));
    let campaign = app.campaign_json(&id).await;
    assert_eq!(campaign["held"], 100);
    assert_eq!(campaign["available"], 0);
}

async fn fifty_requests_with_one_key_over_http_make_one_reservation(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = app.campaign(100, 100, json!({})).await;
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let client = app.client.clone();
            let url = app.url(&format!("/v1/campaigns/{id}/reservations"));
            let token = app.store_token.clone();
            tokio::spawn(async move {
                let response = client
                    .post(url)
                    .bearer_auth(token)
                    .header("Idempotency-Key", "the-one-key")
                    .json(&json!({ "user_id": "alice" }))
                    .send()
                    .await
                    .expect("sent");
                assert_eq!(response.status(), 201);
                let body: Value = response.json().await.expect("json");
                body["id"].as_str().expect("id").to_owned()
            })
        })
        .collect();
    let mut ids = HashSet::new();
    for task in tasks {
        ids.insert(task.await.expect("no panic"));
    }
    assert_eq!(ids.len(), 1);
    assert_eq!(app.campaign_json(&id).await["held"], 1);
}
