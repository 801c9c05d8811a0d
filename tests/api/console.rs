//! The sale console (`GET /console`) in a real browser: Debian's chromium, headless, driven by
//! Playwright for Python (`tests/console/check.py`; `scripts/ensure-services` installs both)
//! while a sale runs against the real server.

use crate::helpers::{spawn_app_with, Backend};
use serde_json::json;
use std::time::{Duration, Instant};
use tokio::io::AsyncBufReadExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_a_running_sale_as_the_api_does_and_refuses_actions_without_a_token() {
    let app = spawn_app_with(Backend::Memory, |_| {}).await;
    let page = app
        .client
        .get(app.url("/console"))
        .send()
        .await
        .expect("sent");
    assert_eq!(page.status(), 200);
    let policy = page
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(policy.contains("default-src 'self'"), "{policy}");

    let campaign = app.campaign(5_000, 1, json!({})).await;
    // The sale: a reservation every 20 ms from new users, until the page has shown it moving
    // (the browser's start takes seconds on a busy machine), at most a minute.
    let selling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sale = {
        let (client, url, token) = (
            app.client.clone(),
            app.url(&format!("/v1/campaigns/{campaign}/reservations")),
            app.store_token.clone(),
        );
        let selling = std::sync::Arc::clone(&selling);
        tokio::spawn(async move {
            let started = Instant::now();
            let mut i = 0;
            while selling.load(std::sync::atomic::Ordering::SeqCst)
                && started.elapsed() < Duration::from_secs(60)
            {
                let _ = client
                    .post(&url)
                    .bearer_auth(&token)
                    .header("Idempotency-Key", format!("console-{i}"))
                    .json(&json!({"user_id": format!("buyer-{i}")}))
                    .send()
                    .await;
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let root = env!("CARGO_MANIFEST_DIR");
    let python = format!("{root}/target/console-venv/bin/python");
    assert!(
        std::path::Path::new(&python).exists(),
        "the console test needs chromium and Playwright: run scripts/ensure-services"
    );
    let mut check = tokio::process::Command::new(python);
    check
        .arg(format!("{root}/tests/console/check.py"))
        .arg(&app.address)
        .arg(&app.admin_token)
        .arg(&campaign);
    if let Ok(path) = std::env::var("FLASHSALE_CONSOLE_SCREENSHOT") {
        check.arg(path);
    }
    let mut child = check
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python runs");
    // The check says `moved` once the page showed the sale; then the sale ends, and the
    // check waits for the page to settle on what the API says.
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("piped")).lines();
    let mut said = Vec::new();
    while let Ok(Some(line)) = lines.next_line().await {
        if line.trim() == "moved" {
            selling.store(false, std::sync::atomic::Ordering::SeqCst);
        }
        said.push(line);
    }
    selling.store(false, std::sync::atomic::Ordering::SeqCst);
    let output = child.wait_with_output().await.expect("python ends");
    sale.await.expect("the sale ran");
    assert!(
        output.status.success(),
        "{}\n{}",
        said.join("\n"),
        String::from_utf8_lossy(&output.stderr)
    );
}
