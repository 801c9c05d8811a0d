//! `/metrics` after a small sale: valid for `promtool check metrics`, and exporting every
//! metric the Grafana dashboard and the alert rules read. Needs `promtool` (Debian package
//! `prometheus`; `scripts/ensure-services` installs it): the test fails without it.

use crate::helpers::{fresh_key, spawn_app_with, Backend, TestApp};
use serde_json::json;
use std::collections::BTreeSet;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// Plays a little of everything: reservations to sold out and past it, a confirm, a cancel,
/// an expiry, a group buy.
async fn small_sale(app: &TestApp) {
    let id = app.campaign(3, 1, json!({"hold_seconds": 1})).await;
    for user in 0..6 {
        app.reserve(&id, &format!("u{user}"), 1).await;
    }
    let held: serde_json::Value = app.reserve(&id, "u0", 1).await.json().await.expect("json");
    let _ = held;
    let other = app.campaign(10, 2, json!({})).await;
    let r: serde_json::Value = app
        .reserve(&other, "payer", 1)
        .await
        .json()
        .await
        .expect("json");
    app.confirm(r["id"].as_str().expect("id"), &app.store_token)
        .await;
    let r: serde_json::Value = app
        .reserve(&other, "quitter", 1)
        .await
        .json()
        .await
        .expect("json");
    app.cancel(r["id"].as_str().expect("id"), &app.store_token)
        .await;
    let groups = app
        .campaign(
            6,
            1,
            json!({"kind": "group_buy", "group": {"size": 3, "window_seconds": 60}}),
        )
        .await;
    app.client
        .post(app.url(&format!("/v1/campaigns/{groups}/groups")))
        .bearer_auth(&app.store_token)
        .header("Idempotency-Key", fresh_key())
        .json(&json!({"user_id": "leader"}))
        .send()
        .await
        .expect("sent");
    // A waiting room: a join, the admission worker, a reservation refused without a pass.
    let queued = app
        .campaign(3, 1, json!({"queue": {"admit_per_second": 1}}))
        .await;
    app.client
        .post(app.url(&format!("/v1/campaigns/{queued}/queue")))
        .bearer_auth(&app.store_token)
        .header("Idempotency-Key", fresh_key())
        .json(&json!({"user_id": "waiter"}))
        .send()
        .await
        .expect("sent");
    app.reserve(&queued, "waiter", 1).await;
    // Let holds expire, the reaper, the persister, reconcile and the sampler run.
    tokio::time::sleep(Duration::from_millis(1_800)).await;
}

/// Every `flashsale_*` name in a text, histogram suffixes folded into the family.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (start, _) in text.match_indices("flashsale_") {
        let name: String = text[start..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(&name)
            .to_owned();
        names.insert(family);
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_and_cover_every_dashboard_and_alert_query() {
    let app = spawn_app_with(Backend::Redis, |c| {
        c.metrics_sample_interval_ms = 200;
        c.webhook_allowed_hosts = vec!["127.0.0.0/8".into()];
    })
    .await;
    // A webhook whose endpoint refuses connections: its lag and failed deliveries show.
    let hook = app.webhook(json!({"url": "http://127.0.0.1:9/hook"})).await;
    assert_eq!(hook.status(), 201);
    small_sale(&app).await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let scrape = app.metrics_text().await;

    let mut promtool = tokio::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool runs (Debian package prometheus; scripts/ensure-services installs it)");
    let mut stdin = promtool.stdin.take().expect("stdin");
    stdin.write_all(scrape.as_bytes()).await.expect("written");
    drop(stdin);
    let checked = promtool
        .wait_with_output()
        .await
        .expect("promtool finishes");
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    let exported: BTreeSet<String> = scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .flat_map(metric_names)
        .collect();
    let root = env!("CARGO_MANIFEST_DIR");
    let mut used = BTreeSet::new();
    for file in [
        "grafana/dashboards/flashsale-overview.json",
        "grafana/alerts/flashsale.rules.yml",
    ] {
        let text = std::fs::read_to_string(format!("{root}/{file}")).expect("readable");
        used.extend(metric_names(&text));
    }
    assert!(used.len() >= 12, "the dashboard and alerts read {used:?}");
    let missing: Vec<&String> = used.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "used by the dashboard or alerts but not exported: {missing:?}\n{scrape}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alert_rules_pass_their_unit_tests() {
    let root = env!("CARGO_MANIFEST_DIR");
    for args in [
        vec!["check", "rules", "flashsale.rules.yml"],
        vec!["test", "rules", "flashsale.rules.test.yml"],
    ] {
        let output = tokio::process::Command::new("promtool")
            .args(&args)
            .current_dir(format!("{root}/grafana/alerts"))
            .output()
            .await
            .expect(
                "promtool runs (Debian package prometheus; scripts/ensure-services installs it)",
            );
        assert!(
            output.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
