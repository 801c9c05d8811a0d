//! Personal data (contract v1.1): erasure on request, pseudonyms past the retention, and no
//! user id or token in info-level logs.

use crate::helpers::{assert_problem, created_reservation, spawn_app_with, Backend, TestApp};
use crate::on_every_backend;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

on_every_backend!(
    erasure_refuses_while_a_hold_is_live_and_succeeds_afterwards,
    the_retention_job_pseudonymises_ended_campaigns_and_nothing_else,
    a_hold_made_a_moment_ago_refuses_the_erasure,
    after_an_erasure_no_answer_or_later_refund_shows_the_id,
);

async fn reservations(app: &TestApp, campaign: &str, query: &str) -> Vec<Value> {
    let page: Value = app
        .client
        .get(app.url(&format!("/v1/campaigns/{campaign}/reservations?{query}")))
        .bearer_auth(&app.store_token)
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    page["reservations"].as_array().cloned().unwrap_or_default()
}

/// Waits until `check` holds (the persister wrote what it needs), at most 20 s.
async fn until<F: std::future::Future<Output = bool>>(mut check: impl FnMut() -> F, what: &str) {
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < Duration::from_secs(20), "{what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn feed_text(app: &TestApp, campaign: &str) -> String {
    app.client
        .get(app.url(&format!("/v1/events?campaign_id={campaign}&limit=1000")))
        .bearer_auth(&app.store_token)
        .send()
        .await
        .expect("sent")
        .text()
        .await
        .expect("text")
}

async fn erase(app: &TestApp, user: &str) -> reqwest::Response {
    app.client
        .delete(app.url(&format!("/v1/users/{user}")))
        .bearer_auth(&app.admin_token)
        .send()
        .await
        .expect("sent")
}

async fn erasure_refuses_while_a_hold_is_live_and_succeeds_afterwards(backend: Backend) {
    let app = spawn_app_with(backend, |_| {}).await;
    let ends = flashsale::domain::Millis::now().plus_seconds(2);
    let short = app
        .campaign(5, 5, json!({"ends_at": ends.to_rfc3339()}))
        .await;
    let running = app.campaign(5, 5, json!({})).await;
    let hold = created_reservation(app.reserve(&short, "eve", 1).await).await;
    let elsewhere = created_reservation(app.reserve(&running, "eve", 1).await).await;
    let paid = created_reservation(app.reserve(&short, "eve", 1).await).await;
    assert_eq!(
        app.confirm(paid["id"].as_str().expect("id"), &app.store_token)
            .await
            .status(),
        200
    );
    until(
        || async {
            reservations(&app, &short, "user_id=eve&status=held")
                .await
                .len()
                == 1
        },
        "the hold persisted",
    )
    .await;

    assert_problem(erase(&app, "eve").await, 409, "user_has_live_reservations").await;
    let response = app
        .client
        .delete(app.url("/v1/users/eve"))
        .bearer_auth(&app.store_token)
        .send()
        .await
        .expect("sent");
    assert_problem(response, 403, "forbidden").await;

    // The holds end (one cancelled; the other campaign's is confirmed), the short campaign ends.
    assert_eq!(
        app.cancel(hold["id"].as_str().expect("id"), &app.store_token)
            .await
            .status(),
        200
    );
    let other_id = elsewhere["id"].as_str().expect("id").to_owned();
    assert_eq!(app.confirm(&other_id, &app.store_token).await.status(), 200);
    until(
        || async {
            reservations(&app, &short, "user_id=eve&status=held")
                .await
                .is_empty()
                && reservations(&app, &running, "user_id=eve&status=held")
                    .await
                    .is_empty()
        },
        "the holds ended in the database",
    )
    .await;
    let wait = (ends.0 - flashsale::domain::Millis::now().0).max(0) as u64 + 100;
    tokio::time::sleep(Duration::from_millis(wait)).await;

    let response = erase(&app, "eve").await;
    assert_eq!(response.status(), 200);
    let erased: Value = response.json().await.expect("json");
    assert_eq!(erased["reservations"], 2, "{erased}");
    assert!(erased["events"].as_u64() >= Some(3), "{erased}");
    assert!(reservations(&app, &short, "user_id=eve").await.is_empty());
    let rows = reservations(&app, &short, "").await;
    assert!(
        rows.iter().all(|r| r["user_id"]
            .as_str()
            .is_some_and(|u| u.starts_with("erased_"))),
        "{rows:?}"
    );
    assert!(!feed_text(&app, &short).await.contains("\"eve\""));
    // The campaign still running keeps the user (it has not ended).
    assert_eq!(reservations(&app, &running, "user_id=eve").await.len(), 1);
}

async fn the_retention_job_pseudonymises_ended_campaigns_and_nothing_else(backend: Backend) {
    // Retention 0 days and an engine retention of 0 s: a campaign is archived and
    // pseudonymised as soon as it has ended and every change is persisted.
    let app = spawn_app_with(backend, |c| {
        c.retention_days = 0;
        c.ended_retention_seconds = 0;
        c.pseudonym_key = Some("test-pseudonym-key".into());
    })
    .await;
    let ends = flashsale::domain::Millis::now().plus_seconds(1);
    let ended = app
        .campaign(5, 2, json!({"ends_at": ends.to_rfc3339()}))
        .await;
    let running = app.campaign(5, 2, json!({})).await;
    for user in ["ann", "ann", "bob"] {
        let r = created_reservation(app.reserve(&ended, user, 1).await).await;
        assert_eq!(
            app.confirm(r["id"].as_str().expect("id"), &app.store_token)
                .await
                .status(),
            200
        );
    }
    created_reservation(app.reserve(&running, "ann", 1).await).await;
    until(
        || async {
            let rows = reservations(&app, &ended, "").await;
            rows.len() == 3
                && rows
                    .iter()
                    .all(|r| r["user_id"].as_str().is_some_and(|u| u.starts_with("p_")))
        },
        "the ended campaign pseudonymised",
    )
    .await;
    let rows = reservations(&app, &ended, "").await;
    let ids: Vec<&str> = rows.iter().filter_map(|r| r["user_id"].as_str()).collect();
    let ann = flashsale::store::personal::pseudonym("test-pseudonym-key", "ann");
    assert_eq!(
        ids.iter().filter(|u| **u == ann).count(),
        2,
        "one user, one pseudonym: {ids:?}"
    );
    assert_eq!(ids.iter().filter(|u| **u != ann).count(), 1);
    let feed = feed_text(&app, &ended).await;
    assert!(
        !feed.contains("\"ann\"") && !feed.contains("\"bob\""),
        "{feed}"
    );
    assert_eq!(
        reservations(&app, &running, "user_id=ann").await.len(),
        1,
        "the running campaign keeps its users"
    );
}

/// Info-level logs of a whole sale — successes, refusals, bad tokens, a user token —
/// carry no user id and no token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_logs_carry_no_user_ids_and_no_tokens() {
    use std::io::Read;
    let port = crate::processes::free_port();
    let dir = std::env::temp_dir().join(format!("pii-{}", ulid::Ulid::new()));
    std::fs::create_dir_all(&dir).expect("a directory");
    let log = dir.join("service.log");
    let file = std::fs::File::create(&log).expect("a log file");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_flashsale"))
        .env("FLASHSALE_LISTEN", format!("127.0.0.1:{port}"))
        .env("FLASHSALE_SQLITE_PATH", dir.join("pii.db"))
        .env("FLASHSALE_ADMIN_TOKENS", "admin-token-4711")
        .env("FLASHSALE_STORE_TOKENS", "store-token-4712")
        .env("FLASHSALE_JWT_SECRET", "jwt-secret-4713")
        .env("RUST_LOG", "info")
        .env_remove("FLASHSALE_REDIS_URL")
        .env_remove("FLASHSALE_DATABASE_URL")
        .stdout(file.try_clone().expect("clone"))
        .stderr(file)
        .spawn()
        .expect("the binary runs");
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    for _ in 0..100 {
        if client.get(format!("{base}/healthz")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let user = "pii-user-4714";
    let user_token = flashsale::http::auth::issue_user_token("jwt-secret-4713", user, 600);
    let created = client
        .post(format!("{base}/v1/campaigns"))
        .bearer_auth("admin-token-4711")
        .json(&json!({"id": "pii", "kind": "flash_sale", "sku": "s", "stock": 1, "per_user_limit": 1}))
        .send()
        .await
        .expect("sent");
    assert_eq!(created.status(), 201);
    for (token, who, key) in [
        (user_token.as_str(), user, "a"),
        ("store-token-4712", "pii-other-4715", "b"),
        ("store-token-4712", user, "c"),
        ("not-a-token-4716", user, "d"),
    ] {
        let _ = client
            .post(format!("{base}/v1/campaigns/pii/reservations"))
            .bearer_auth(token)
            .header("idempotency-key", key)
            .json(&json!({"user_id": who}))
            .send()
            .await;
    }
    let _ = client
        .delete(format!("{base}/v1/users/{user}"))
        .bearer_auth("admin-token-4711")
        .send()
        .await;
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let mut text = String::new();
    std::fs::File::open(&log)
        .expect("the log")
        .read_to_string(&mut text)
        .expect("readable");
    assert!(text.contains("flashsale listening"), "{text}");
    for secret in [
        user,
        "pii-other-4715",
        "admin-token-4711",
        "store-token-4712",
        "jwt-secret-4713",
        "not-a-token-4716",
        user_token.as_str(),
    ] {
        assert!(!text.contains(secret), "the log names {secret:?}:\n{text}");
    }
}

/// The live-hold check sees a hold made a moment ago (not yet in the database when the
/// request arrives): 409, and nothing erased. Twenty rounds, each erasing right after the 201.
async fn a_hold_made_a_moment_ago_refuses_the_erasure(backend: Backend) {
    let app = spawn_app_with(backend, |_| {}).await;
    let id = app.campaign(100, 1, json!({})).await;
    for round in 0..20 {
        let user = format!("quick-{round}");
        created_reservation(app.reserve(&id, &user, 1).await).await;
        assert_problem(erase(&app, &user).await, 409, "user_has_live_reservations").await;
    }
}

/// After an erasure answers 200, nothing shows the id: not the reservation read back (the
/// engine kept ended reservations for its retention), not a refund made afterwards (its
/// answer, its event, its stored row keep the marker).
async fn after_an_erasure_no_answer_or_later_refund_shows_the_id(backend: Backend) {
    let app = spawn_app_with(backend, |c| c.ended_retention_seconds = 3600).await;
    let ends = flashsale::domain::Millis::now().plus_seconds(2);
    let id = app
        .campaign(5, 5, json!({"ends_at": ends.to_rfc3339()}))
        .await;
    let paid = created_reservation(app.reserve(&id, "mallory", 1).await).await;
    let paid = paid["id"].as_str().expect("id").to_owned();
    assert_eq!(app.confirm(&paid, &app.store_token).await.status(), 200);
    let other = created_reservation(app.reserve(&id, "trent", 1).await).await;
    let other = other["id"].as_str().expect("id").to_owned();
    assert_eq!(app.confirm(&other, &app.store_token).await.status(), 200);
    let wait = (ends.0 - flashsale::domain::Millis::now().0).max(0) as u64 + 100;
    tokio::time::sleep(Duration::from_millis(wait)).await;

    let response = erase(&app, "mallory").await;
    assert_eq!(response.status(), 200);
    let erased: Value = response.json().await.expect("json");
    assert_eq!(erased["reservations"], 1, "{erased}");

    let read = app.get_reservation(&paid, &app.store_token).await;
    assert_eq!(read.status(), 200);
    let read = read.text().await.expect("text");
    assert!(!read.contains("mallory"), "{read}");
    assert!(read.contains("erased_"), "{read}");

    let refund = app.cancel(&paid, &app.store_token).await;
    assert_eq!(refund.status(), 200);
    let refund = refund.text().await.expect("text");
    assert!(!refund.contains("mallory"), "{refund}");
    // Others' data is untouched, and still answered.
    let kept = app.get_reservation(&other, &app.store_token).await;
    assert!(kept.text().await.expect("text").contains("trent"));
    until(
        || async { feed_text(&app, &id).await.contains("reservation.cancelled") },
        "the refund reached the feed",
    )
    .await;
    let feed = feed_text(&app, &id).await;
    assert!(!feed.contains("mallory"), "{feed}");
    let rows = reservations(&app, &id, "").await;
    assert!(
        !serde_json::to_string(&rows)
            .expect("json")
            .contains("mallory"),
        "{rows:?}"
    );
}
