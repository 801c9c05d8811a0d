//! Hostile or broken callers: connections that never finish their headers, bodies shorter or
//! far longer than they claim, idempotency scopes built to collide, random campaign ids that
//! would grow `/metrics`, tokens used before their `nbf`.

use crate::helpers::{assert_problem, spawn_app_with, unique_id, Backend, TestApp};
use serde_json::json;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn app_with_short_timeouts() -> TestApp {
    spawn_app_with(Backend::Memory, |c| {
        c.header_read_timeout_ms = 1_000;
        c.body_read_timeout_ms = 500;
    })
    .await
}

fn address(app: &TestApp) -> String {
    app.address.trim_start_matches("http://").to_owned()
}

/// Reads until the server closes the connection; what it sent, and when it closed.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (String, Duration) {
    let started = Instant::now();
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match tokio::time::timeout(limit, stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => received.extend_from_slice(&buffer[..n]),
            Err(_) => panic!("the server kept the connection open past {limit:?}"),
        }
    }
    (
        String::from_utf8_lossy(&received).into_owned(),
        started.elapsed(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let app = app_with_short_timeouts().await;
    // Half a request, then silence (slowloris) ...
    let mut slow = TcpStream::connect(address(&app)).await.expect("connects");
    slow.write_all(b"POST /v1/campaigns/x/reservations HTTP/1.1\r\nHost: a\r\n")
        .await
        .expect("writes");
    // ... and a connection that never says anything.
    let mut silent = TcpStream::connect(address(&app)).await.expect("connects");
    // ... and a keep-alive connection that went idle after one request.
    let mut idle = TcpStream::connect(address(&app)).await.expect("connects");
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("writes");
    let (_, slow_after) = read_until_closed(&mut slow, Duration::from_secs(5)).await;
    let (_, silent_after) = read_until_closed(&mut silent, Duration::from_secs(5)).await;
    let (answered, idle_after) = read_until_closed(&mut idle, Duration::from_secs(5)).await;
    assert!(
        slow_after < Duration::from_secs(3),
        "closed after {slow_after:?}"
    );
    assert!(
        silent_after < Duration::from_secs(3),
        "closed after {silent_after:?}"
    );
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");
    assert!(
        idle_after < Duration::from_secs(3),
        "closed after {idle_after:?}"
    );
    // The service still serves everyone else.
    let health = app
        .client
        .get(app.url("/healthz"))
        .send()
        .await
        .expect("answers");
    assert_eq!(health.status(), 200);
}

/// Sends a reservation request whose head declares `content_length` and whose body is
/// `body` (then silence); the service's first answer, and how long it took.
async fn reserve_raw(
    app: &TestApp,
    campaign: &str,
    content_length: u64,
    body: &str,
) -> (String, Duration) {
    let mut stream = TcpStream::connect(address(app)).await.expect("connects");
    let request = format!(
        "POST /v1/campaigns/{campaign}/reservations HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nIdempotency-Key: raw-1\r\nContent-Length: {content_length}\r\n\r\n{body}",
        app.store_token
    );
    stream.write_all(request.as_bytes()).await.expect("writes");
    let started = Instant::now();
    let mut buffer = [0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(3), stream.read(&mut buffer))
        .await
        .expect("an answer within 3 s")
        .expect("reads");
    (
        String::from_utf8_lossy(&buffer[..n]).into_owned(),
        started.elapsed(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_shorter_than_its_content_length_gets_408_quickly() {
    let app = app_with_short_timeouts().await;
    let id = app.campaign(10, 1, json!({})).await;
    let (answer, took) = reserve_raw(&app, &id, 100, "{}").await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");
    assert!(answer.contains("body_timeout"), "{answer}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert_eq!(
        app.campaign_json(&id).await["held"],
        0,
        "nothing was reserved"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_declared_far_over_the_limit_gets_413_at_once() {
    let app = app_with_short_timeouts().await;
    let id = app.campaign(10, 1, json!({})).await;
    let (answer, took) = reserve_raw(&app, &id, 99_999_999_999, "{").await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("payload_too_large"), "{answer}");
    assert!(took < Duration::from_millis(400), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_scopes_of_different_users_never_collide() {
    let app = spawn_app_with(Backend::Memory, |_| {}).await;
    let id = app.campaign(10, 1, json!({})).await;
    // `eve` with key `order:42` and `eve:order` with key `42` once joined to the same text.
    let eve = app
        .reserve_with(&id, &app.user_token("eve"), "order:42", &json!({}))
        .await;
    let eve_order = app
        .reserve_with(&id, &app.user_token("eve:order"), "42", &json!({}))
        .await;
    assert_eq!(eve.status(), 201);
    assert_eq!(eve_order.status(), 201);
    assert!(eve_order.headers().get("idempotent-replayed").is_none());
    let (a, b): (serde_json::Value, serde_json::Value) = (
        eve.json().await.expect("json"),
        eve_order.json().await.expect("json"),
    );
    assert_ne!(a["id"], b["id"]);
    assert_eq!(b["user_id"], "eve:order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_on_unknown_campaigns_add_no_metric_series() {
    let app = spawn_app_with(Backend::Memory, |_| {}).await;
    let marker = unique_id("ghost").to_lowercase();
    for i in 0..300 {
        let answer = app.reserve(&format!("{marker}-{i}"), "mallory", 1).await;
        assert_eq!(answer.status(), 404);
    }
    let metrics = app.metrics_text().await;
    assert!(
        !metrics.contains(&marker),
        "a series per unknown campaign id"
    );
    assert!(metrics.contains(r#"campaign="unknown""#));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_token_used_before_its_nbf_is_refused() {
    let app = spawn_app_with(Backend::Memory, |_| {}).await;
    let id = app.campaign(10, 1, json!({})).await;
    let now = jsonwebtoken::get_current_timestamp();
    let early = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "early", "exp": now + 3600, "nbf": now + 600}),
        &jsonwebtoken::EncodingKey::from_secret(app.jwt_secret.as_bytes()),
    )
    .expect("encodes");
    let answer = app.reserve_with(&id, &early, "nbf-1", &json!({})).await;
    assert_problem(answer, 401, "unauthenticated").await;
}

crate::on_every_backend!(a_retried_stock_change_with_the_same_key_adds_once);

async fn a_retried_stock_change_with_the_same_key_adds_once(backend: Backend) {
    let app = spawn_app_with(backend, |_| {}).await;
    let id = app.campaign(10, 1, json!({})).await;
    let change = |key: Option<&str>, delta: i64| {
        let mut request = app
            .client
            .post(app.url(&format!("/v1/campaigns/{id}/stock")))
            .bearer_auth(&app.admin_token)
            .json(&json!({ "delta": delta }));
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        request.send()
    };
    let first = change(Some("restock-1"), 100).await.expect("sent");
    assert_eq!(first.status(), 200);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let retry = change(Some("restock-1"), 100).await.expect("sent");
    assert_eq!(retry.status(), 200);
    assert_eq!(
        retry
            .headers()
            .get("idempotent-replayed")
            .map(|v| v.as_bytes()),
        Some(&b"true"[..])
    );
    assert_eq!(app.campaign_json(&id).await["stock"], 110, "added once");
    assert_problem(
        change(Some("restock-1"), 5).await.expect("sent"),
        422,
        "idempotency_key_reused",
    )
    .await;
    assert_problem(
        change(None, 5).await.expect("sent"),
        400,
        "idempotency_key_required",
    )
    .await;
    assert_eq!(app.campaign_json(&id).await["stock"], 110);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_that_is_not_valid_text_gets_a_problem_not_plain_text() {
    let app = spawn_app_with(Backend::Memory, |_| {}).await;
    for path in [
        "/v1/reservations/%FF",
        "/v1/campaigns/%C3%28/availability",
        "/v1/groups/%FE%FF",
    ] {
        let answer = app
            .client
            .get(app.url(path))
            .bearer_auth(&app.store_token)
            .send()
            .await
            .expect("answers");
        assert_problem(answer, 400, "malformed_path").await;
    }
}

/// An HTTP/2 connection over `address`, sending PINGs every 100 ms (so it answers the
/// server's too): the request sender, and the connection's task, which ends when the server
/// closes it.
async fn http2_connection(
    address: &str,
) -> (
    hyper::client::conn::http2::SendRequest<http_body_util::Empty<axum::body::Bytes>>,
    tokio::task::JoinHandle<Result<(), hyper::Error>>,
) {
    let stream = TcpStream::connect(address).await.expect("connects");
    let (sender, connection) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .timer(hyper_util::rt::TokioTimer::new())
            .keep_alive_interval(Duration::from_millis(100))
            .keep_alive_while_idle(true)
            .handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("an HTTP/2 handshake");
    (sender, tokio::spawn(connection))
}

async fn h2_health(
    sender: &mut hyper::client::conn::http2::SendRequest<http_body_util::Empty<axum::body::Bytes>>,
    address: &str,
) -> Result<u16, hyper::Error> {
    let request = hyper::Request::get(format!("http://{address}/healthz"))
        .body(http_body_util::Empty::new())
        .expect("a request");
    Ok(sender.send_request(request).await?.status().as_u16())
}

/// An idle HTTP/2 connection is closed after the idle timeout even though its client answers
/// every PING (and sends its own); one that stays busy is closed at its maximum age.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_connections_close_when_idle_whatever_pings_arrive_and_at_their_maximum_age() {
    let app = spawn_app_with(Backend::Memory, |c| {
        c.header_read_timeout_ms = 1_000;
        c.max_connection_age_ms = 3_000;
    })
    .await;
    let address = address(&app);

    let (mut sender, connection) = http2_connection(&address).await;
    assert_eq!(
        h2_health(&mut sender, &address).await.expect("answered"),
        200
    );
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(4), connection)
        .await
        .expect("the idle connection was closed")
        .expect("joined")
        .expect("closed cleanly");
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "closed only once idle: {:?}",
        started.elapsed()
    );

    // Busy: a request every 200 ms; the connection ends at its maximum age, not before.
    let (mut sender, connection) = http2_connection(&address).await;
    let started = Instant::now();
    while !connection.is_finished() {
        match h2_health(&mut sender, &address).await {
            Ok(status) => assert_eq!(status, 200),
            Err(_) => break,
        }
        assert!(
            started.elapsed() < Duration::from_secs(6),
            "a busy connection is closed at its maximum age"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        started.elapsed() >= Duration::from_millis(2_500),
        "not before it: {:?}",
        started.elapsed()
    );
}
