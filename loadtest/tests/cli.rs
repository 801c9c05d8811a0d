//! The load generator as a user runs it, against a live service: a ramp in stages, the JSON
//! report with its per-second series, the SVG chart, and thresholds that set the exit code.

use flashsale::config::Config;
use flashsale::startup::Application;
use std::process::Command;

async fn service() -> String {
    service_with(|config| {
        config.admin_tokens = vec!["lt-admin".into()];
        config.store_tokens = vec!["lt-store".into()];
        config.user_rate_per_second = 0;
        config.jwt_secret = Some("lt-jwt-secret".into());
    })
    .await
}

/// The embedded service on a port and an SQLite file of its own, as `tune` sets it up.
async fn service_with(tune: impl FnOnce(&mut Config)) -> String {
    let mut config = Config::defaults();
    config.listen = "127.0.0.1:0".parse().expect("address");
    config.redis_url = None;
    config.database_url = None;
    config.sqlite_path = std::env::temp_dir()
        .join(format!("lt-cli-{}.db", ulid::Ulid::new()))
        .to_string_lossy()
        .into_owned();
    tune(&mut config);
    let application = Application::build(config)
        .await
        .expect("the service builds");
    let url = format!("http://{}", application.address());
    tokio::spawn(application.run_until(std::future::pending()));
    url
}

fn loadtest(url: &str, args: &[&str]) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .arg("--url")
        .arg(url)
        .args(args)
        .env("FLASHSALE_ADMIN_TOKENS", "lt-admin,another")
        .env("FLASHSALE_STORE_TOKENS", "lt-store")
        .output()
        .expect("the generator runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ramp_writes_a_series_and_a_chart_and_thresholds_set_the_exit_code() {
    let url = service().await;
    let dir = std::env::temp_dir().join(format!("lt-cli-{}", ulid::Ulid::new()));
    std::fs::create_dir_all(&dir).expect("a directory");
    let json = dir.join("report.json");
    let chart = dir.join("chart.svg");
    let (url2, json2, chart2) = (url.clone(), json.clone(), chart.clone());
    let (code, out) = tokio::task::spawn_blocking(move || {
        loadtest(
            &url2,
            &[
                "--json",
                json2.to_str().expect("utf-8"),
                "--chart",
                chart2.to_str().expect("utf-8"),
                "--max-error-ratio",
                "0",
                "sale",
                "--campaign",
                "ramp",
                "--stock",
                "100000",
                "--limit",
                "100",
                "--users",
                "1000",
                "--stages",
                "1:100,2:300",
                "--concurrency",
                "32",
                "--no-verify",
            ],
        )
    })
    .await
    .expect("ran");
    assert_eq!(code, 0, "{out}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("the report")).expect("json");
    let series = report["report"]["series"].as_array().expect("a series");
    assert!(series.len() >= 3, "{series:?}");
    let sent: u64 = series.iter().filter_map(|s| s["attempts"].as_u64()).sum();
    assert_eq!(sent, 100 + 600, "the stages add up");
    // The ramp: the second stage sends three times the first's rate.
    let first = series[0]["attempts"].as_u64().expect("n");
    let second = series[1]["attempts"].as_u64().expect("n");
    assert!(second > 2 * first, "{first} then {second}");
    let svg = std::fs::read_to_string(&chart).expect("the chart");
    assert!(svg.starts_with("<svg") && svg.contains("p99") && svg.contains("attempts/s"));

    // An impossible threshold fails the run with exit code 2.
    let (code, out) = tokio::task::spawn_blocking(move || {
        loadtest(
            &url,
            &["--min-rate", "100000000", "healthz", "--attempts", "200"],
        )
    })
    .await
    .expect("ran");
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("THRESHOLD FAILED"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_sale_as_the_users_themselves_reserves_and_groups_and_verifies() {
    let url = service().await;
    let dir = std::env::temp_dir().join(format!("lt-mixed-{}", ulid::Ulid::new()));
    std::fs::create_dir_all(&dir).expect("a directory");
    let json = dir.join("report.json");
    let json2 = json.clone();
    let (code, out) = tokio::task::spawn_blocking(move || {
        loadtest(
            &url,
            &[
                "--json",
                json2.to_str().expect("utf-8"),
                "sale",
                "--scenario",
                "mixed",
                "--jwt-secret",
                "lt-jwt-secret",
                "--campaign",
                "mixed",
                "--stock",
                "900",
                "--limit",
                "100",
                "--users",
                "60",
                "--group-size",
                "3",
                "--attempts",
                "300",
                "--concurrency",
                "8",
            ],
        )
    })
    .await
    .expect("ran");
    assert_eq!(code, 0, "{out}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("the report")).expect("json");
    let outcomes = &report["report"]["outcomes"];
    assert_eq!(outcomes["reserved"].as_u64(), Some(150), "{outcomes}");
    assert_eq!(outcomes["grouped"].as_u64(), Some(150), "{outcomes}");
    assert!(
        out.contains("ok   mixed-group: available + held + confirmed = stock"),
        "{out}"
    );

    // The attempts really carry the users' own tokens: signed with another secret, the
    // service refuses every one.
    let url = service().await;
    let json3 = dir.join("refused.json");
    let json4 = json3.clone();
    let (_, out) = tokio::task::spawn_blocking(move || {
        loadtest(
            &url,
            &[
                "--json",
                json4.to_str().expect("utf-8"),
                "sale",
                "--scenario",
                "flash",
                "--jwt-secret",
                "not-the-secret",
                "--campaign",
                "forged",
                "--attempts",
                "40",
                "--concurrency",
                "4",
                "--no-verify",
            ],
        )
    })
    .await
    .expect("ran");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json3).expect("the report")).expect("json");
    assert_eq!(
        report["report"]["outcomes"]["unauthenticated"].as_u64(),
        Some(40),
        "{out}"
    );
}

/// A run that outlasts `--hold-seconds` (the README's first trap): holds expire mid-run and
/// their units sell again; settling counts them instead of failing, verification passes, and
/// the chart of a short run still draws lines (points per tenth of a second).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_outlasts_its_holds_verifies_and_a_short_run_draws_lines() {
    let url = service().await;
    let dir = std::env::temp_dir().join(format!("lt-hold-{}", ulid::Ulid::new()));
    std::fs::create_dir_all(&dir).expect("a directory");
    let json = dir.join("report.json");
    let chart = dir.join("chart.svg");
    let (url2, json2, chart2) = (url.clone(), json.clone(), chart.clone());
    let (code, out) = tokio::task::spawn_blocking(move || {
        loadtest(
            &url2,
            &[
                "--json",
                json2.to_str().expect("utf-8"),
                "--chart",
                chart2.to_str().expect("utf-8"),
                "sale",
                "--campaign",
                "outlasted",
                "--stock",
                "50",
                "--limit",
                "1",
                "--users",
                "400",
                "--hold-seconds",
                "1",
                "--stages",
                "3:100",
                "--concurrency",
                "16",
            ],
        )
    })
    .await
    .expect("ran");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("holds expired during the run"), "{out}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("the report")).expect("json");
    let early = report["settled"]["expired_during_the_run"]
        .as_u64()
        .expect("counted");
    assert!(early > 0, "{report}");
    // The chart: a line of about 30 points (3 s in tenths), not 3.
    let svg = std::fs::read_to_string(&chart).expect("the chart");
    let longest = svg
        .split("points=\"")
        .skip(1)
        .map(|rest| {
            rest.split('"')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .count()
        })
        .max()
        .unwrap_or(0);
    assert!(longest >= 20, "{longest} points");
}

/// The README's load test, as written (only the binary's path and the port differ): it
/// passes, and writes its chart and report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readmes_load_test_runs_as_written() {
    // The service as the README starts it: these tokens, every other setting its default.
    let url = service_with(|config| {
        config.admin_tokens = vec!["adm-demo".into()];
        config.store_tokens = vec!["sto-demo".into()];
    })
    .await;
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("the README");
    // The block that builds and runs the generator.
    let from = readme
        .find("cargo build --release -p loadtest")
        .expect("the load test's block");
    let block = &readme[from..];
    let block = &block[..block.find("```").expect("closed")];
    let command: String = block
        .lines()
        .filter(|l| !l.starts_with("cargo build") && !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("target/release/loadtest", env!("CARGO_BIN_EXE_loadtest"))
        .replace("http://127.0.0.1:8080", &url);
    let dir = std::env::temp_dir().join(format!("lt-readme-{}", ulid::Ulid::new()));
    std::fs::create_dir_all(&dir).expect("a directory");
    let run_in = dir.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("bash")
            .arg("-c")
            .arg(&command)
            .current_dir(&run_in)
            .env_remove("FLASHSALE_ADMIN_TOKENS")
            .env_remove("FLASHSALE_STORE_TOKENS")
            .output()
            .expect("bash runs")
    })
    .await
    .expect("ran");
    let out = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{out}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(dir.join("sale.svg").exists() && dir.join("sale.json").exists());
}
