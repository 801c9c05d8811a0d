//! The sale console (`GET /console`) in a real browser: Debian's chromium, headless, driven by
//! Playwright for Python (`tests/console/check.py`; `scripts/ensure-services` installs both)
//! while a sale runs against the real server.

use crate::helpers::{spawn_app_with, Backend};
use serde_json::json;
use std::time::{Duration, Instant};

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

    let campaign = app.campaign(1_000, 1, json!({})).await;
    // The sale: a reservation every 20 ms for 6 s, from new users.
    let sale = {
        let (client, url, token) = (
            app.client.clone(),
            app.url(&format!("/v1/campaigns/{campaign}/reservations")),
            app.store_token.clone(),
        );
        tokio::spawn(async move {
            let started = Instant::now();
            let mut i = 0;
            while started.elapsed() < Duration::from_secs(6) {
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
    let output = check.output().await.expect("python runs");
    sale.await.expect("the sale ran");
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
