//! Webhooks against real HTTP receivers the tests start on loopback (allowed by
//! configuration): every event delivered at least once, in cursor order, signed; a failing
//! endpoint catches up without delaying others; a hanging one hits the timeout; targets that
//! are not allowed are refused; replay delivers again.

use crate::helpers::{assert_problem, created_reservation, spawn_app_with, Backend, TestApp};
use crate::on_every_backend;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

on_every_backend!(
    every_event_of_a_burst_reaches_the_webhook_in_order_and_signed,
    a_failing_endpoint_catches_up_in_order_and_does_not_delay_the_others,
    a_hanging_endpoint_hits_the_timeout_and_is_retried,
    replay_delivers_again_from_a_cursor_and_delete_stops_deliveries,
);

/// What a receiver got: (cursor header, signature header, body).
type Received = Arc<Mutex<Vec<(i64, String, Vec<u8>)>>>;

/// How a receiver answers.
#[derive(Clone, Copy)]
enum Behaviour {
    Ok,
    /// 500 until this instant, then 200.
    FailUntil(Instant),
    /// Never answers the first `n` requests (they hang), then 200.
    HangFirst(usize),
    /// Answers 200 after this many milliseconds.
    Slow(u64),
}

/// A receiver on a loopback port; returns its URL and what it received.
async fn receiver(behaviour: Behaviour) -> (String, Received) {
    let received: Received = Arc::default();
    let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post({
            let received = Arc::clone(&received);
            move |headers: HeaderMap, body: Bytes| {
                let received = Arc::clone(&received);
                let seen = Arc::clone(&seen);
                async move {
                    let n = seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    match behaviour {
                        Behaviour::FailUntil(until) if Instant::now() < until => {
                            return StatusCode::INTERNAL_SERVER_ERROR
                        }
                        Behaviour::HangFirst(k) if n < k => {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                        }
                        Behaviour::Slow(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
                        _ => {}
                    }
                    let header = |name: &str| {
                        headers
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned()
                    };
                    let cursor = header("flashsale-event-cursor").parse().unwrap_or(-1);
                    received.lock().expect("not poisoned").push((
                        cursor,
                        header("flashsale-signature"),
                        body.to_vec(),
                    ));
                    StatusCode::NO_CONTENT
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let url = format!("http://{}/hook", listener.local_addr().expect("bound"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, received)
}

async fn app(backend: Backend) -> TestApp {
    spawn_app_with(backend, |c| {
        c.webhook_allowed_hosts = vec!["127.0.0.0/8".into()];
        c.webhook_timeout_ms = 500;
    })
    .await
}

/// A webhook's deliveries page (`query`: e.g. `?limit=1000`).
async fn deliveries(app: &TestApp, id: &str, query: &str) -> Value {
    app.client
        .get(app.url(&format!("/v1/webhooks/{id}/deliveries{query}")))
        .bearer_auth(&app.admin_token)
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json")
}

async fn subscribe(app: &TestApp, body: Value) -> Value {
    crate::helpers::json_body(app.webhook(body).await, 201).await
}

/// Checks `t=<s>,v1=<hex>` the way a receiver would.
fn signed(secret: &str, signature: &str, body: &[u8]) -> bool {
    let Some((t, v1)) = signature
        .strip_prefix("t=")
        .and_then(|rest| rest.split_once(",v1="))
    else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key");
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    hex::decode(v1).is_ok_and(|sig| mac.verify_slice(&sig).is_ok())
}

/// The cursors received, first arrival of each, in arrival order.
fn first_arrivals(received: &Received) -> Vec<i64> {
    let mut seen = std::collections::HashSet::new();
    received
        .lock()
        .expect("not poisoned")
        .iter()
        .filter(|(c, _, _)| seen.insert(*c))
        .map(|(c, _, _)| *c)
        .collect()
}

/// Waits until `received` holds at least `n` distinct cursors.
async fn until_received(received: &Received, n: usize, within: Duration) -> Vec<i64> {
    let started = Instant::now();
    loop {
        let cursors = first_arrivals(received);
        if cursors.len() >= n || started.elapsed() > within {
            return cursors;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The campaign's feed cursors, in order.
async fn feed_cursors(app: &TestApp, campaign: &str, expected: usize) -> Vec<i64> {
    let started = Instant::now();
    loop {
        let page: Value = app
            .client
            .get(app.url(&format!("/v1/events?campaign_id={campaign}&limit=1000")))
            .bearer_auth(&app.store_token)
            .send()
            .await
            .expect("sent")
            .json()
            .await
            .expect("json");
        let cursors: Vec<i64> = page["events"]
            .as_array()
            .expect("events")
            .iter()
            .filter_map(|e| e["cursor"].as_i64())
            .collect();
        if cursors.len() >= expected || started.elapsed() > Duration::from_secs(30) {
            return cursors;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn every_event_of_a_burst_reaches_the_webhook_in_order_and_signed(backend: Backend) {
    let app = app(backend).await;
    let (url, received) = receiver(Behaviour::Ok).await;
    let campaign = app.campaign(300, 1, json!({})).await;
    let hook = subscribe(&app, json!({"url": url, "campaign_id": campaign})).await;
    let secret = hook["secret"]
        .as_str()
        .expect("the secret, once")
        .to_owned();

    // 2,000 attempts from 1,000 users at once: 300 holds, the rest refused. Five of these
    // run at once on two cores: an attempt answered 503 (the engine did not answer in time)
    // is sent again with its key, as the contract asks of callers.
    let tasks: Vec<_> = (0..2000)
        .map(|i| {
            let client = app.client.clone();
            let url = app.url(&format!("/v1/campaigns/{campaign}/reservations"));
            let token = app.store_token.clone();
            tokio::spawn(async move {
                let mut tries = 0;
                loop {
                    tries += 1;
                    let status = client
                        .post(&url)
                        .bearer_auth(&token)
                        .header("idempotency-key", format!("burst-{i}"))
                        .json(&json!({"user_id": format!("u{}", i % 1000)}))
                        .send()
                        .await
                        .map(|r| r.status().as_u16());
                    match status {
                        Ok(503) if tries < 30 => {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        status => return status,
                    }
                }
            })
        })
        .collect();
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for task in tasks {
        *statuses
            .entry(task.await.expect("no panic").expect("answered"))
            .or_default() += 1;
    }
    assert_eq!(statuses.get(&201), Some(&300), "answers: {statuses:?}");
    let feed = feed_cursors(&app, &campaign, 300).await;
    assert_eq!(feed.len(), 300);
    let got = until_received(&received, 300, Duration::from_secs(60)).await;
    assert_eq!(got, feed, "every event, once at least, in cursor order");
    for (cursor, signature, body) in received.lock().expect("not poisoned").iter() {
        assert!(signed(&secret, signature, body), "a valid signature");
        let event: Value = serde_json::from_slice(body).expect("the feed item");
        assert_eq!(event["cursor"].as_i64(), Some(*cursor));
        assert_eq!(event["type"], "reservation.held");
    }
}

async fn a_failing_endpoint_catches_up_in_order_and_does_not_delay_the_others(backend: Backend) {
    let app = app(backend).await;
    let failing_for = Duration::from_secs(10);
    let (failing_url, failing) = receiver(Behaviour::FailUntil(Instant::now() + failing_for)).await;
    let (healthy_url, healthy) = receiver(Behaviour::Ok).await;
    let campaign = app.campaign(100, 100, json!({})).await;
    let broken = subscribe(&app, json!({"url": failing_url, "campaign_id": campaign})).await;
    subscribe(&app, json!({"url": healthy_url, "campaign_id": campaign})).await;
    let started = Instant::now();
    for n in 0..20 {
        created_reservation(app.reserve(&campaign, &format!("u{n}"), 1).await).await;
    }
    let feed = feed_cursors(&app, &campaign, 20).await;
    let got = until_received(&healthy, 20, Duration::from_secs(20)).await;
    assert_eq!(got, feed);
    assert!(
        started.elapsed() < failing_for,
        "the healthy endpoint got everything while the other was still failing"
    );
    assert!(failing.lock().expect("not poisoned").is_empty());
    let got = until_received(&failing, 20, Duration::from_secs(90)).await;
    assert_eq!(got, feed, "after recovering: everything, in order");

    let id = broken["id"].as_str().expect("id");
    let page = deliveries(&app, id, "?limit=1000").await;
    let attempts = page["deliveries"].as_array().expect("deliveries");
    let first = &attempts[0];
    assert_eq!(first["event_cursor"].as_i64(), feed.first().copied());
    assert_eq!(first["outcome"], "failed");
    assert_eq!(first["status_code"], 500);
    assert!(attempts
        .iter()
        .any(|a| a["outcome"] == "delivered" && a["attempt"].as_i64() > Some(1)));
}

async fn a_hanging_endpoint_hits_the_timeout_and_is_retried(backend: Backend) {
    let app = app(backend).await;
    let (url, received) = receiver(Behaviour::HangFirst(2)).await;
    let campaign = app.campaign(10, 10, json!({})).await;
    let hook = subscribe(&app, json!({"url": url, "campaign_id": campaign})).await;
    created_reservation(app.reserve(&campaign, "ann", 1).await).await;
    let got = until_received(&received, 1, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 1, "delivered after two timed-out attempts");
    let id = hook["id"].as_str().expect("id");
    // The receiver sees the request before the worker records its answer: wait for the
    // record of the third attempt.
    let deadline = Instant::now() + Duration::from_secs(10);
    let outcomes = loop {
        let page = deliveries(&app, id, "").await;
        let outcomes: Vec<(String, String)> = page["deliveries"]
            .as_array()
            .expect("deliveries")
            .iter()
            .map(|d| {
                (
                    d["outcome"].as_str().unwrap_or_default().to_owned(),
                    d["error"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        if outcomes.len() >= 3 || Instant::now() > deadline {
            break outcomes;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        outcomes,
        vec![
            ("failed".to_owned(), "timed out".to_owned()),
            ("failed".to_owned(), "timed out".to_owned()),
            ("delivered".to_owned(), String::new()),
        ]
    );
}

async fn replay_delivers_again_from_a_cursor_and_delete_stops_deliveries(backend: Backend) {
    let app = app(backend).await;
    let (url, received) = receiver(Behaviour::Ok).await;
    let campaign = app.campaign(10, 10, json!({})).await;
    let hook = subscribe(
        &app,
        json!({"url": url, "campaign_id": campaign, "event_types": ["reservation.held"]}),
    )
    .await;
    let id = hook["id"].as_str().expect("id").to_owned();
    for n in 0..3 {
        let r = created_reservation(app.reserve(&campaign, &format!("u{n}"), 1).await).await;
        // Cancellations are not subscribed to.
        app.cancel(r["id"].as_str().expect("id"), &app.store_token)
            .await;
    }
    let got = until_received(&received, 3, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 3);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        received.lock().expect("not poisoned").len(),
        3,
        "held events only"
    );

    let response = app
        .client
        .post(app.url(&format!("/v1/webhooks/{id}/replay")))
        .bearer_auth(&app.admin_token)
        .json(&json!({"after": got[0]}))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
    let started = Instant::now();
    while received.lock().expect("not poisoned").len() < 5 {
        assert!(started.elapsed() < Duration::from_secs(30), "replayed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let again: Vec<i64> = received.lock().expect("not poisoned")[3..]
        .iter()
        .map(|(c, _, _)| *c)
        .collect();
    assert_eq!(
        again,
        got[1..].to_vec(),
        "everything after the cursor, in order"
    );

    let response = app
        .client
        .delete(app.url(&format!("/v1/webhooks/{id}")))
        .bearer_auth(&app.admin_token)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 204);
    created_reservation(app.reserve(&campaign, "late", 1).await).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        received.lock().expect("not poisoned").len(),
        5,
        "nothing after delete"
    );
    let response = app
        .client
        .get(app.url(&format!("/v1/webhooks/{id}")))
        .bearer_auth(&app.admin_token)
        .send()
        .await
        .expect("sent");
    assert_problem(response, 404, "webhook_not_found").await;
}

#[tokio::test]
async fn targets_not_allowed_are_refused_at_creation() {
    // No allow-list: only public addresses.
    let app = spawn_app_with(Backend::Memory, |_| {}).await;
    for url in [
        "http://127.0.0.1:9/hook",
        "http://localhost:9/hook",
        "http://10.0.0.1/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]:9/hook",
        "ftp://example.com/",
        "not a url",
    ] {
        let response = app.webhook(json!({"url": url})).await;
        assert_problem(response, 422, "invalid_request").await;
    }
    let response = app
        .client
        .post(app.url("/v1/webhooks"))
        .header("idempotency-key", crate::helpers::fresh_key())
        .bearer_auth(&app.store_token)
        .json(&json!({"url": "https://example.com/hook"}))
        .send()
        .await
        .expect("sent");
    assert_problem(response, 403, "forbidden").await;
    let allowed = spawn_app_with(Backend::Memory, |c| {
        c.webhook_allowed_hosts = vec!["127.0.0.0/8".into()];
    })
    .await;
    let response = allowed
        .webhook(json!({"url": "http://127.0.0.1:9/hook", "event_types": ["reservation.nope"]}))
        .await;
    assert_problem(response, 422, "invalid_request").await;
    let hook = subscribe(&allowed, json!({"url": "http://127.0.0.1:9/hook"})).await;
    assert!(hook["secret"]
        .as_str()
        .is_some_and(|s| s.starts_with("whsec_")));
    let listed: Value = allowed
        .client
        .get(allowed.url("/v1/webhooks"))
        .bearer_auth(&allowed.admin_token)
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    assert_eq!(listed.as_array().map(Vec::len), Some(1));
    assert!(
        listed[0].get("secret").is_none(),
        "the secret is shown once"
    );
}

/// The `flashsale` binary on Redis and Postgres, as a process (two of them share one
/// deployment); killed on drop.
type Instance = crate::processes::Service;

/// An instance on `namespace` and `database` delivering to loopback receivers.
fn instance(namespace: &str, database: &str) -> Instance {
    instance_allowing(namespace, database, "127.0.0.0/8")
}

fn instance_allowing(namespace: &str, database: &str, allowed: &str) -> Instance {
    let redis = crate::helpers::redis_url();
    Instance::start_with(
        crate::processes::free_port(),
        &[
            ("FLASHSALE_REDIS_URL", redis.as_str()),
            ("FLASHSALE_REDIS_NAMESPACE", namespace),
            ("FLASHSALE_DATABASE_URL", database),
            ("FLASHSALE_ADMIN_TOKENS", "hook-admin"),
            ("FLASHSALE_STORE_TOKENS", "hook-store"),
            ("FLASHSALE_JWT_SECRET", "hook-secret"),
            ("FLASHSALE_WEBHOOK_ALLOWED_HOSTS", allowed),
        ],
    )
}

/// A flash sale of `stock` units on the first instance with a webhook to `url` for its
/// events, then one reservation per unit, sent round robin through `instances`; its id.
async fn hooked_sale(instances: &[&Instance], url: &str, stock: u64) -> String {
    let client = reqwest::Client::new();
    let post = |address: &str, path: &str, token: &str, body: Value, key: String| {
        client
            .post(format!("{address}{path}"))
            .bearer_auth(token)
            .header("idempotency-key", key)
            .json(&body)
            .send()
    };
    let first = &instances[0].address;
    let campaign = crate::helpers::unique_id("c").to_lowercase();
    let created = post(first, "/v1/campaigns", "hook-admin",
        json!({"id": campaign, "kind": "flash_sale", "sku": "s", "stock": stock, "per_user_limit": 1}), "c".into())
        .await
        .expect("sent");
    assert_eq!(created.status(), 201);
    let hook = post(
        first,
        "/v1/webhooks",
        "hook-admin",
        json!({"url": url, "campaign_id": campaign}),
        "h".into(),
    )
    .await
    .expect("sent");
    assert_eq!(hook.status(), 201);
    for n in 0..stock {
        let address = &instances[n as usize % instances.len()].address;
        let r = post(
            address,
            &format!("/v1/campaigns/{campaign}/reservations"),
            "hook-store",
            json!({"user_id": format!("u{n}")}),
            format!("k{n}"),
        )
        .await
        .expect("sent");
        assert_eq!(r.status(), 201);
    }
    campaign
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_delivering_instance_is_killed_another_delivers_the_rest() {
    let namespace = crate::helpers::unique_id("ns");
    let database = crate::helpers::fresh_postgres_schema().await;
    let client = reqwest::Client::new();
    // 30 ms per delivery: 100 events take ~3 s, so the kill lands mid-stream.
    let (url, received) = receiver(Behaviour::Slow(30)).await;
    let mut first = instance(&namespace, &database);
    let campaign = hooked_sale(&[&first], &url, 100).await;
    let some = until_received(&received, 10, Duration::from_secs(30)).await;
    assert!(
        some.len() >= 10 && some.len() < 100,
        "delivery under way: {}",
        some.len()
    );
    let second = instance(&namespace, &database);
    first.kill();

    let feed: Value = client
        .get(format!(
            "{}/v1/events?campaign_id={campaign}&limit=1000",
            second.address
        ))
        .bearer_auth("hook-store")
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    let feed: Vec<i64> = feed["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["cursor"].as_i64())
        .collect();
    assert_eq!(feed.len(), 100);
    // The lease of the killed instance lapses (15 s); the survivor delivers the rest.
    let got = until_received(&received, 100, Duration::from_secs(60)).await;
    assert_eq!(
        got, feed,
        "every event at least once, in order, across the kill"
    );
    drop(second);
}

/// The receiver example in `docs/webhook-receiver.py` verifies real deliveries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_python_receiver_verifies_real_deliveries() {
    use std::io::BufRead;
    let app = app(Backend::Memory).await;
    let port = crate::processes::free_port();
    let campaign = app.campaign(10, 10, json!({})).await;
    let hook = subscribe(
        &app,
        json!({"url": format!("http://127.0.0.1:{port}/"), "campaign_id": campaign}),
    )
    .await;
    let mut receiver = std::process::Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/docs/webhook-receiver.py"
        ))
        .env("WEBHOOK_SECRET", hook["secret"].as_str().expect("secret"))
        .env("PORT", port.to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs the documented receiver");
    let stdout = receiver.stdout.take().expect("piped");
    let (lines_tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = lines_tx.send(line);
        }
    });
    for n in 0..3 {
        created_reservation(app.reserve(&campaign, &format!("u{n}"), 1).await).await;
    }
    let mut valid = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while valid.len() < 3 && Instant::now() < deadline {
        if let Ok(line) = lines.recv_timeout(Duration::from_millis(200)) {
            valid.push(line);
        }
    }
    let _ = receiver.kill();
    let _ = receiver.wait();
    assert_eq!(valid.len(), 3, "{valid:?}");
    assert!(valid
        .iter()
        .all(|l| l.starts_with("valid ") && l.ends_with("reservation.held")));
}

/// A webhook made while its (private) target was allowed, delivered by an instance that no
/// longer allows it: every attempt is refused before a connection, and recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_target_is_refused_at_delivery_too() {
    let namespace = crate::helpers::unique_id("ns");
    let database = crate::helpers::fresh_postgres_schema().await;
    let client = reqwest::Client::new();
    let (url, received) = receiver(Behaviour::Ok).await;
    let mut allowing = instance(&namespace, &database);
    let hook: Value = client
        .post(format!("{}/v1/webhooks", allowing.address))
        .header("idempotency-key", crate::helpers::fresh_key())
        .bearer_auth("hook-admin")
        .json(&json!({"url": url}))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    let id = hook["id"].as_str().expect("created").to_owned();
    // A graceful stop gives the webhook's lease up at once.
    allowing.terminate();
    drop(allowing);
    let strict = instance_allowing(&namespace, &database, "");
    let campaign = crate::helpers::unique_id("c").to_lowercase();
    let created = client
        .post(format!("{}/v1/campaigns", strict.address))
        .bearer_auth("hook-admin")
        .json(&json!({"id": campaign, "kind": "flash_sale", "sku": "s", "stock": 5}))
        .send()
        .await
        .expect("sent");
    assert_eq!(created.status(), 201);
    let reserved = client
        .post(format!(
            "{}/v1/campaigns/{campaign}/reservations",
            strict.address
        ))
        .bearer_auth("hook-store")
        .header("idempotency-key", "k")
        .json(&json!({"user_id": "ann"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(reserved.status(), 201);
    let started = Instant::now();
    let refused = loop {
        let page: Value = client
            .get(format!("{}/v1/webhooks/{id}/deliveries", strict.address))
            .bearer_auth("hook-admin")
            .send()
            .await
            .expect("sent")
            .json()
            .await
            .expect("json");
        if let Some(first) = page["deliveries"]
            .as_array()
            .and_then(|d| d.first())
            .cloned()
        {
            break first;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no attempt recorded"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(refused["outcome"], "failed");
    assert!(
        refused["error"]
            .as_str()
            .is_some_and(|e| e.contains("not allowed")),
        "{refused}"
    );
    assert!(
        received.lock().expect("not poisoned").is_empty(),
        "nothing reached the target"
    );
}

/// Feed items of a delivery: the item itself, or each of a batch's `events`.
fn items(body: &[u8]) -> Vec<Value> {
    let value: Value = serde_json::from_slice(body).expect("a JSON body");
    match value.get("events") {
        Some(Value::Array(events)) => events.clone(),
        _ => vec![value],
    }
}

async fn batched_deliveries_carry_events_in_order_under_one_signature(backend: Backend) {
    let app = app(backend).await;
    for wrong in [0, 101] {
        let response = app
            .webhook(json!({"url": "http://127.0.0.1:9/hook", "max_batch": wrong}))
            .await;
        assert_problem(response, 422, "invalid_request").await;
    }
    let (url, received) = receiver(Behaviour::Ok).await;
    let campaign = app.campaign(50, 1, json!({})).await;
    let hook = subscribe(
        &app,
        json!({"url": url, "campaign_id": campaign, "max_batch": 10}),
    )
    .await;
    assert_eq!(hook["max_batch"], 10);
    let secret = hook["secret"].as_str().expect("secret").to_owned();
    for n in 0..50 {
        created_reservation(app.reserve(&campaign, &format!("u{n}"), 1).await).await;
    }
    let feed = feed_cursors(&app, &campaign, 50).await;
    let started = Instant::now();
    let delivered = loop {
        let got: Vec<(i64, String, Vec<u8>)> = received.lock().expect("not poisoned").clone();
        let count: usize = got.iter().map(|(_, _, body)| items(body).len()).sum();
        if count >= feed.len() {
            break got;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{count} delivered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut cursors = Vec::new();
    for (header, signature, body) in &delivered {
        assert!(signed(&secret, signature, body), "the whole body is signed");
        let batch = items(body);
        assert!(
            !batch.is_empty() && batch.len() <= 10,
            "{} in a batch",
            batch.len()
        );
        let last = batch.last().and_then(|e| e["cursor"].as_i64());
        assert_eq!(
            Some(*header),
            last,
            "the cursor header names the batch's last"
        );
        cursors.extend(batch.iter().filter_map(|e| e["cursor"].as_i64()));
    }
    assert_eq!(cursors, feed, "every event once, in order");
    assert!(delivered.len() < feed.len(), "batches, not one event each");
}

mod batched_deliveries {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn memory() {
        batched_deliveries_carry_events_in_order_under_one_signature(Backend::Memory).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis() {
        batched_deliveries_carry_events_in_order_under_one_signature(Backend::Redis).await
    }
}

/// Two instances, a receiver that takes 250 ms to say 2xx: 70 events take longer than a
/// lease (15 s), so a lease taken once per page would lapse mid-page and the other instance
/// would send the same events too. Renewed before every attempt, it never lapses: each
/// event arrives once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_receiver_gets_each_event_once_from_two_instances() {
    let namespace = crate::helpers::unique_id("ns");
    let database = crate::helpers::fresh_postgres_schema().await;
    let (url, received) = receiver(Behaviour::Slow(250)).await;
    let first = instance(&namespace, &database);
    let second = instance(&namespace, &database);
    hooked_sale(&[&first, &second], &url, 70).await;
    let got = until_received(&received, 70, Duration::from_secs(60)).await;
    assert_eq!(got.len(), 70);
    // A moment more: a second sender would show up now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let arrivals: Vec<i64> = received
        .lock()
        .expect("not poisoned")
        .iter()
        .map(|(c, _, _)| *c)
        .collect();
    assert_eq!(arrivals, got, "each event once, in order");
    drop((first, second));
}

/// A webhook deleted while a page of deliveries is under way starts no delivery a second
/// after the `DELETE` answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_webhook_stops_within_a_second() {
    let app = app(Backend::Memory).await;
    let (url, received) = receiver(Behaviour::Slow(50)).await;
    let campaign = app.campaign(100, 1, json!({})).await;
    let hook = subscribe(&app, json!({"url": url, "campaign_id": campaign})).await;
    let id = hook["id"].as_str().expect("id").to_owned();
    for n in 0..100 {
        created_reservation(app.reserve(&campaign, &format!("u{n}"), 1).await).await;
    }
    until_received(&received, 5, Duration::from_secs(30)).await;
    let response = app
        .client
        .delete(app.url(&format!("/v1/webhooks/{id}")))
        .bearer_auth(&app.admin_token)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 204);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after_a_second = received.lock().expect("not poisoned").len();
    assert!(after_a_second < 100, "the page ran to its end");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        received.lock().expect("not poisoned").len(),
        after_a_second,
        "a delivery started more than a second after the DELETE"
    );
}

/// Creating a webhook is a creating POST like the others: the key is required, a retry with
/// the same key and body answers the same webhook (its secret too), the same key with another
/// body is refused, and a campaign that does not exist is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creating_a_webhook_is_idempotent_and_names_a_real_campaign() {
    let app = app(Backend::Memory).await;
    let create = |key: Option<&str>, body: Value| {
        let mut request = app
            .client
            .post(app.url("/v1/webhooks"))
            .bearer_auth(&app.admin_token)
            .json(&body);
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        request.send()
    };
    let campaign = app.campaign(10, 1, json!({})).await;
    let body = json!({"url": "http://127.0.0.1:9/hook", "campaign_id": campaign});
    let missing = create(None, body.clone()).await.expect("sent");
    assert_problem(missing, 400, "idempotency_key_required").await;
    let first = create(Some("hook-once"), body.clone()).await.expect("sent");
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.expect("json");
    let again = create(Some("hook-once"), body.clone()).await.expect("sent");
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.expect("json");
    assert_eq!(again["id"], first["id"]);
    assert_eq!(again["secret"], first["secret"]);
    let listed: Value = app
        .client
        .get(app.url("/v1/webhooks"))
        .bearer_auth(&app.admin_token)
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "one webhook");
    let other = create(
        Some("hook-once"),
        json!({"url": "http://127.0.0.1:9/other", "campaign_id": campaign}),
    )
    .await
    .expect("sent");
    assert_problem(other, 422, "idempotency_key_reused").await;
    let unknown = create(
        Some("hook-unknown"),
        json!({"url": "http://127.0.0.1:9/hook", "campaign_id": "no-such-campaign"}),
    )
    .await
    .expect("sent");
    assert_problem(unknown, 422, "invalid_request").await;
}
