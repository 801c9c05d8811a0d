//! `flashsale campaign …` and `flashsale reservation …` against a running service: what a
//! person at a terminal types, the JSON it prints, the exit code on a refusal.

use crate::helpers::{created_reservation, spawn_app, Backend};
use serde_json::Value;
use std::process::Command;

/// Runs the binary with `args` against `url` as `token`: (exit code, stdout, stderr).
fn flashsale(url: &str, token: &str, args: &[&str]) -> (i32, String, String) {
    // Global options go before or after the subcommand: `--url` first, `--token` last.
    let output = Command::new(env!("CARGO_BIN_EXE_flashsale"))
        .arg("--url")
        .arg(url)
        .args(args)
        .arg("--token")
        .arg(token)
        .env_remove("FLASHSALE_URL")
        .env_remove("FLASHSALE_ADMIN_TOKENS")
        .env_remove("FLASHSALE_STORE_TOKENS")
        .env_remove("FLASHSALE_REDIS_URL")
        .env_remove("FLASHSALE_DATABASE_URL")
        .output()
        .expect("the binary runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_creates_lists_tunes_ends_and_settles() {
    let app = spawn_app(Backend::Memory).await;
    let (url, admin, store) = (
        app.address.clone(),
        app.admin_token.clone(),
        app.store_token.clone(),
    );
    let run = move |token: &str, args: Vec<&'static str>| {
        let (url, token) = (url.clone(), token.to_owned());
        let args: Vec<String> = args.into_iter().map(str::to_owned).collect();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            flashsale(&url, &token, &args)
        })
    };

    let (code, out, err) = run(
        &admin,
        vec![
            "campaign",
            "create",
            "--id",
            "cli-sale",
            "--sku",
            "s",
            "--stock",
            "3",
            "--per-user-limit",
            "2",
        ],
    )
    .await
    .expect("ran");
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["available"], 3);
    let (code, _, err) = run(
        &admin,
        vec![
            "campaign", "create", "--id", "cli-sale", "--sku", "s", "--stock", "3",
        ],
    )
    .await
    .expect("ran");
    assert_eq!(code, 1);
    assert!(err.contains("409 campaign_exists"), "{err}");
    let (code, out, err) = run(
        &admin,
        vec![
            "campaign",
            "create",
            "--id",
            "cli-queued",
            "--sku",
            "s",
            "--stock",
            "3",
            "--queue-admit-per-second",
            "50",
            "--queue-pass-seconds",
            "30",
        ],
    )
    .await
    .expect("ran");
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        json(&out)["queue"],
        serde_json::json!({"admit_per_second": 50, "pass_seconds": 30})
    );

    let (code, out, _) = run(&store, vec!["campaign", "list", "--status", "active"])
        .await
        .expect("ran");
    assert_eq!(code, 0);
    assert_eq!(json(&out)["campaigns"][1]["id"], "cli-sale");
    let (code, out, _) = run(&admin, vec!["campaign", "stock", "cli-sale", "-1"])
        .await
        .expect("ran");
    assert_eq!(code, 0);
    assert_eq!(json(&out)["stock"], 2);

    let held = created_reservation(app.reserve("cli-sale", "ann", 1).await).await;
    let id: &'static str = Box::leak(held["id"].as_str().expect("id").to_owned().into_boxed_str());
    let (code, out, _) = run(&store, vec!["reservation", "show", id])
        .await
        .expect("ran");
    assert_eq!((code, json(&out)["status"].clone()), (0, "held".into()));
    let (code, out, _) = run(&store, vec!["reservation", "confirm", id])
        .await
        .expect("ran");
    assert_eq!(
        (code, json(&out)["status"].clone()),
        (0, "confirmed".into())
    );
    let (code, _, err) = run(&store, vec!["reservation", "show", "res_nope"])
        .await
        .expect("ran");
    assert_eq!(code, 1);
    assert!(err.contains("404 reservation_not_found"), "{err}");

    let (code, _, err) = run(&store, vec!["campaign", "end", "cli-sale"])
        .await
        .expect("ran");
    assert_eq!(code, 1, "a store token cannot end a campaign");
    assert!(err.contains("403 forbidden"), "{err}");
    let (code, out, _) = run(&admin, vec!["campaign", "end", "cli-sale"])
        .await
        .expect("ran");
    assert_eq!((code, json(&out)["status"].clone()), (0, "ended".into()));
    let (code, out, _) = run(&admin, vec!["campaign", "show", "cli-sale"])
        .await
        .expect("ran");
    assert_eq!((code, json(&out)["confirmed"].clone()), (0, 1.into()));
}

/// The token comes from the service's own variable when not given, and a service that is
/// not there is said in words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_reads_the_services_token_variable_and_says_connection_refused() {
    let app = spawn_app(Backend::Memory).await;
    let (url, admin) = (app.address.clone(), app.admin_token.clone());
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_flashsale"))
            .args(["campaign", "list", "--url", &url])
            .env("FLASHSALE_ADMIN_TOKENS", format!("{admin},another"))
            .env_remove("FLASHSALE_URL")
            .output()
            .expect("the binary runs")
    })
    .await
    .expect("ran");
    assert_eq!(output.status.code(), Some(0), "{output:?}");

    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let port = closed.local_addr().expect("address").port();
    drop(closed);
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_flashsale"))
            .args(["--url", &format!("http://127.0.0.1:{port}"), "--token", "t"])
            .args(["campaign", "show", "nothing-here"])
            .output()
            .expect("the binary runs")
    })
    .await
    .expect("ran");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_ne!(output.status.code(), Some(0));
    assert!(stderr.contains("connection refused"), "{stderr}");
}
