//! Health, readiness, metrics, the OpenAPI document, unknown routes, request ids, shutdown.

use crate::helpers::{assert_problem, spawn_app, Backend};
use crate::on_every_backend;
use serde_json::Value;

on_every_backend!(
    health_and_readiness_answer,
    the_openapi_document_lists_every_endpoint,
    metrics_are_exported_in_prometheus_format,
    unknown_routes_and_methods_are_problems,
    a_request_id_is_echoed_or_generated,
    shutdown_finishes_in_flight_requests_and_stops,
);

async fn health_and_readiness_answer(backend: Backend) {
    let app = spawn_app(backend).await;
    let health = app
        .client
        .get(app.url("/healthz"))
        .send()
        .await
        .expect("sent");
    assert_eq!(health.status(), 200);
    let (status, body) = app.readiness().await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "ready");
}

async fn the_openapi_document_lists_every_endpoint(backend: Backend) {
    let app = spawn_app(backend).await;
    let doc: Value = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    for path in [
        "/healthz",
        "/readyz",
        "/v1/campaigns",
        "/v1/campaigns/{id}",
        "/v1/campaigns/{id}/stock",
        "/v1/campaigns/{id}/availability",
        "/v1/campaigns/{id}/reservations",
        "/v1/reservations/{id}",
        "/v1/reservations/{id}/confirm",
        "/v1/reservations/{id}/cancel",
    ] {
        assert!(
            doc["paths"].get(path).is_some(),
            "{path} missing from the OpenAPI document"
        );
    }
}

async fn metrics_are_exported_in_prometheus_format(backend: Backend) {
    let app = spawn_app(backend).await;
    let campaign = app.campaign(1, 1, serde_json::json!({})).await;
    app.reserve(&campaign, "u1", 1).await;
    app.reserve(&campaign, "u2", 1).await;
    let text = app.metrics_text().await;
    assert!(text.contains("flashsale_http_requests_total{"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("flashsale_reservation_attempts_total{")
                && l.contains("outcome=\"reserved\"")),
        "{text}"
    );
    assert!(
        text.contains("flashsale_http_request_duration_seconds_bucket"),
        "{text}"
    );
}

async fn unknown_routes_and_methods_are_problems(backend: Backend) {
    let app = spawn_app(backend).await;
    assert_problem(
        app.client
            .get(app.url("/v2/nothing"))
            .send()
            .await
            .expect("sent"),
        404,
        "not_found",
    )
    .await;
    assert_problem(
        app.client
            .delete(app.url("/v1/campaigns"))
            .send()
            .await
            .expect("sent"),
        405,
        "method_not_allowed",
    )
    .await;
}

async fn a_request_id_is_echoed_or_generated(backend: Backend) {
    let app = spawn_app(backend).await;
    let echoed = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .expect("sent");
    assert_eq!(echoed.headers()["x-request-id"], "abc-123");
    let generated = app
        .client
        .get(app.url("/healthz"))
        .send()
        .await
        .expect("sent");
    assert!(!generated.headers()["x-request-id"].is_empty());
}

async fn shutdown_finishes_in_flight_requests_and_stops(backend: Backend) {
    let mut app = spawn_app(backend).await;
    let campaign = app.campaign(1_000, 1_000, serde_json::json!({})).await;
    // Requests in flight when the stop arrives still get their answers.
    let in_flight: Vec<_> = (0..50)
        .map(|i| {
            let client = app.client.clone();
            let url = app.url(&format!("/v1/campaigns/{campaign}/reservations"));
            let token = app.store_token.clone();
            tokio::spawn(async move {
                client
                    .post(url)
                    .bearer_auth(token)
                    .header("Idempotency-Key", format!("stop-{i}"))
                    .json(&serde_json::json!({"user_id": format!("u{i}")}))
                    .send()
                    .await
            })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let stopped = tokio::time::timeout(std::time::Duration::from_secs(10), app.stop()).await;
    assert!(
        matches!(stopped, Ok(Ok(()))),
        "the server stops within 10 s: {stopped:?}"
    );
    for request in in_flight {
        // Each request either got a full answer or never reached the closed listener.
        if let Ok(response) = request.await.expect("no panic") {
            assert_eq!(response.status(), 201);
        }
    }
}

/// `docs/webhook-recipe.sh` as written, against a service that allows loopback targets: the
/// receiver it starts checks two signed deliveries (held, confirmed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_recipe_runs_as_written() {
    let app = crate::helpers::spawn_app_with(Backend::Memory, |c| {
        c.admin_tokens = vec!["adm-demo".into()];
        c.store_tokens = vec!["sto-demo".into()];
        c.webhook_allowed_hosts = vec!["127.0.0.0/8".into()];
    })
    .await;
    let output = tokio::process::Command::new(format!(
        "{}/docs/webhook-recipe.sh",
        env!("CARGO_MANIFEST_DIR")
    ))
    .env("FS", &app.address)
    .output()
    .await
    .expect("bash, curl and python3 run");
    assert!(output.status.success(), "{output:?}");
    let out = String::from_utf8_lossy(&output.stdout);
    let valid: Vec<&str> = out.lines().filter(|l| l.starts_with("valid ")).collect();
    assert_eq!(valid.len(), 2, "{out}");
    assert!(valid[0].ends_with("reservation.held"), "{out}");
    assert!(valid[1].ends_with("reservation.confirmed"), "{out}");
}

on_every_backend!(
    the_readme_walkthrough_runs_as_written,
    the_readme_group_walkthrough_runs_as_written,
    the_readme_queue_walkthrough_runs_as_written
);

/// Runs a walk-through script from `docs/` against the real server; returns its output.
async fn run_walkthrough(backend: Backend, script: &str) -> String {
    let app = crate::helpers::spawn_app_with(backend, |c| {
        c.admin_tokens = vec!["adm-demo".into()];
        c.store_tokens = vec!["sto-demo".into()];
    })
    .await;
    // Run as a user would: the file itself (its shebang and its mode).
    let output =
        tokio::process::Command::new(format!("{}/docs/{script}", env!("CARGO_MANIFEST_DIR")))
            .env("FS", &app.address)
            .output()
            .await
            .expect("bash and curl run");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn json_lines(output: &str) -> Vec<Value> {
    output
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("each printed object is JSON"))
        .collect()
}

/// Runs `docs/group-walkthrough.sh` (docs/group-buy.md's walk-through).
async fn the_readme_group_walkthrough_runs_as_written(backend: Backend) {
    let output = run_walkthrough(backend, "group-walkthrough.sh").await;
    let lines = json_lines(&output);
    let codes: Vec<&str> = lines.iter().filter_map(|l| l["code"].as_str()).collect();
    assert_eq!(codes, ["group_full"]);
    let groups: Vec<&str> = lines
        .iter()
        .filter(|l| l["leader_user_id"].is_string())
        .filter_map(|l| l["status"].as_str())
        .collect();
    assert_eq!(groups, ["open", "formed", "failed"]);
    let last = lines.last().expect("the campaign at the end");
    assert_eq!(
        (last["available"].as_u64(), last["confirmed"].as_u64()),
        (Some(3), Some(3))
    );
    let feed: Vec<&str> = output
        .lines()
        .filter(|l| l.starts_with("\"type\""))
        .collect();
    assert_eq!(feed.len(), 7, "{output}");
    assert!(feed[4].contains("reservation.released") && feed[4].contains("\"user_id\":\"dan\""));
    assert!(feed[5].contains("reservation.released") && feed[5].contains("\"user_id\":\"eve\""));
    assert!(feed[6].contains("group.failed"));
}

/// Runs `docs/queue-walkthrough.sh` (docs/waiting-room.md's walk-through): three join,
/// nobody reserves without a pass, two are admitted and buy the two units, the third reads
/// sold out.
async fn the_readme_queue_walkthrough_runs_as_written(backend: Backend) {
    let output = run_walkthrough(backend, "queue-walkthrough.sh").await;
    let lines = json_lines(&output);
    let joined: Vec<&Value> = lines.iter().filter(|l| l["ticket"].is_string()).collect();
    assert_eq!(joined.len(), 3, "{output}");
    assert!(joined
        .iter()
        .all(|t| t["status"] == "waiting" && t["position"].is_null()));
    let codes: Vec<&str> = lines.iter().filter_map(|l| l["code"].as_str()).collect();
    assert_eq!(codes, ["queue_pass_required"], "{output}");
    let bought = lines.iter().filter(|l| l["status"] == "held").count();
    assert_eq!(bought, 2, "{output}");
    let outcomes: Vec<&str> = output
        .lines()
        .filter_map(|l| l.split_once(": {"))
        .filter_map(|(_, rest)| rest.split("\"status\":\"").nth(1))
        .filter_map(|rest| rest.split('"').next())
        .collect();
    let mut sorted = outcomes.clone();
    sorted.sort();
    assert_eq!(sorted, ["admitted", "admitted", "sold_out"], "{output}");
    let last = lines.last().expect("the campaign at the end");
    assert_eq!(
        (last["available"].as_u64(), last["held"].as_u64()),
        (Some(0), Some(2))
    );
}

/// The fenced block after the first line of `markdown` that contains `marker`.
fn fenced_after(markdown: &str, marker: &str) -> String {
    let from = markdown
        .find(marker)
        .unwrap_or_else(|| panic!("{marker:?} is there"));
    let rest = &markdown[from..];
    let open = rest.find("```").expect("a block follows");
    let body = &rest[open..];
    let body = &body[body.find('\n').expect("a fence line") + 1..];
    body[..body.find("```").expect("the block closes")].to_owned()
}

/// A script as the documentation shows it: without its shebang and its first comment lines.
fn shown_script(name: &str) -> String {
    let text = std::fs::read_to_string(format!("{}/docs/{name}", env!("CARGO_MANIFEST_DIR")))
        .expect("the script");
    text.lines()
        .skip_while(|l| l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// Output with what differs between runs masked: ULIDs, times, generated campaign ids.
fn masked(text: &str) -> String {
    let ulid = regex::Regex::new(r"[0-9A-HJKMNP-TV-Z]{26}").expect("a pattern");
    let time = regex::Regex::new(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z").expect("a pattern");
    let id = regex::Regex::new(r"(phone|team)-\d+").expect("a pattern");
    let text = ulid.replace_all(text, "<ulid>");
    let text = time.replace_all(&text, "<time>");
    id.replace_all(&text, "$1-<n>").trim().to_owned()
}

/// The documentation's walk-throughs are their scripts, and the output they show is what the
/// scripts print (ids and times masked): a sample that drifts from the service fails here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_walkthroughs_are_their_scripts_and_print_what_they_show() {
    let root = env!("CARGO_MANIFEST_DIR");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).expect("README");
    assert!(
        readme.lines().count() <= 200,
        "the README fits a screen or two"
    );
    assert_eq!(
        fenced_after(&readme, "this is [`docs/walkthrough.sh`]"),
        shown_script("walkthrough.sh")
    );
    let output = run_walkthrough(Backend::Memory, "walkthrough.sh").await;
    assert_eq!(
        masked(&fenced_after(&readme, "What it prints")),
        masked(&output)
    );

    // The README's CLI line, as written (the installed binary is this build's).
    let from = readme
        .find("cargo install --path .")
        .expect("the CLI block");
    let cli = &readme[from..];
    let cli = &cli[..cli.find("```").expect("closed")];
    let line = cli
        .lines()
        .find(|l| l.contains("flashsale campaign"))
        .expect("a CLI line")
        .replace(
            "flashsale campaign",
            &format!("{} campaign", env!("CARGO_BIN_EXE_flashsale")),
        );
    let app = crate::helpers::spawn_app_with(Backend::Memory, |c| {
        c.admin_tokens = vec!["adm-demo".into()];
    })
    .await;
    let listed = tokio::process::Command::new("bash")
        .arg("-c")
        .arg(&line)
        .env("FLASHSALE_URL", &app.address)
        .env_remove("FLASHSALE_ADMIN_TOKENS")
        .env_remove("FLASHSALE_STORE_TOKENS")
        .output()
        .await
        .expect("bash runs");
    assert!(listed.status.success(), "{line}: {listed:?}");
    let page: Value = serde_json::from_slice(&listed.stdout).expect("the CLI prints JSON");
    assert!(page["campaigns"].is_array(), "{page}");

    // docs/operating.md's CLI block, every line as written.
    let operating = std::fs::read_to_string(format!("{root}/docs/operating.md")).expect("doc");
    let block = fenced_after(&operating, "**From a terminal.**");
    let script = format!(
        "set -e\nflashsale() {{ {} \"$@\"; }}\n{block}",
        env!("CARGO_BIN_EXE_flashsale")
    );
    let ran = tokio::process::Command::new("bash")
        .arg("-c")
        .arg(&script)
        .env("FLASHSALE_URL", &app.address)
        .output()
        .await
        .expect("bash runs");
    assert!(ran.status.success(), "{script}\n{ran:?}");

    // docs/store.md's lifecycle of an order, as written, on a campaign of its own.
    let store = std::fs::read_to_string(format!("{root}/docs/store.md")).expect("doc");
    let campaign = app.campaign(10, 2, serde_json::json!({})).await;
    let ran = tokio::process::Command::new("bash")
        .arg("-c")
        .arg(fenced_after(&store, "```sh\nFS="))
        .env("FS", &app.address)
        .env("C", &campaign)
        .env("FLASHSALE_ADMIN_TOKENS", &app.admin_token)
        .env("FLASHSALE_STORE_TOKENS", &app.store_token)
        .output()
        .await
        .expect("bash runs");
    let printed = String::from_utf8_lossy(&ran.stdout);
    assert!(ran.status.success(), "{printed}");
    for status in ["\"status\":\"confirmed\"", "\"status\":\"cancelled\""] {
        assert!(printed.contains(status), "{printed}");
    }

    let group = std::fs::read_to_string(format!("{root}/docs/group-buy.md")).expect("doc");
    assert_eq!(
        fenced_after(&group, "this is\n[`docs/group-walkthrough.sh`]"),
        shown_script("group-walkthrough.sh")
    );
    let output = run_walkthrough(Backend::Memory, "group-walkthrough.sh").await;
    assert_eq!(
        masked(&fenced_after(&group, "What it prints")),
        masked(&output)
    );

    let queue = std::fs::read_to_string(format!("{root}/docs/waiting-room.md")).expect("doc");
    assert_eq!(
        fenced_after(&queue, "queue-walkthrough.sh"),
        shown_script("queue-walkthrough.sh")
    );
}

/// Runs `docs/walkthrough.sh` (the README's curl walk-through) against the real server.
async fn the_readme_walkthrough_runs_as_written(backend: Backend) {
    let lines = json_lines(&run_walkthrough(backend, "walkthrough.sh").await);
    let codes: Vec<&str> = lines.iter().filter_map(|l| l["code"].as_str()).collect();
    assert_eq!(codes, ["limit_exceeded", "sold_out"]);
    let statuses: Vec<&str> = lines.iter().filter_map(|l| l["status"].as_str()).collect();
    assert_eq!(
        statuses,
        [
            "active",
            "sold_out",
            "confirmed",
            "cancelled",
            "expired",
            "active"
        ]
    );
    let last = lines.last().expect("the campaign at the end");
    assert_eq!(
        (last["available"].as_u64(), last["confirmed"].as_u64()),
        (Some(1), Some(1))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_url_is_taken_for_sqlite() {
    let path = crate::helpers::fresh_sqlite_path();
    let app = crate::helpers::spawn_app_with(Backend::Memory, |c| {
        c.database_url = Some(format!("sqlite://{path}"));
    })
    .await;
    assert_eq!(app.store.name(), "sqlite");
    let id = app.campaign(5, 1, serde_json::json!({})).await;
    assert_eq!(app.reserve(&id, "u1", 1).await.status(), 201);
    assert!(
        std::path::Path::new(&path).exists(),
        "the file named by the URL holds it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_json_only_and_plain_logs_carry_no_colour_into_a_pipe() {
    for json in [true, false] {
        let path = crate::helpers::fresh_sqlite_path();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_flashsale"))
            .env("FLASHSALE_LISTEN", "127.0.0.1:0")
            .env("FLASHSALE_SQLITE_PATH", &path)
            .env("FLASHSALE_LOG_JSON", json.to_string())
            .env_remove("FLASHSALE_REDIS_URL")
            .env_remove("FLASHSALE_DATABASE_URL")
            .env_remove("FLASHSALE_ADMIN_TOKENS")
            .env_remove("FLASHSALE_STORE_TOKENS")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("the binary runs");
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let output = child.wait_with_output().expect("it stops");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(stdout.contains("flashsale listening"), "{stdout}");
        assert!(
            !stdout.contains('\u{1b}'),
            "colour codes in a pipe: {stdout:?}"
        );
        if json {
            for line in stdout.lines().filter(|l| !l.trim().is_empty()) {
                assert!(
                    serde_json::from_str::<serde_json::Value>(line).is_ok(),
                    "not JSON: {line}"
                );
            }
        }
    }
}

/// The README and the architecture document name only files and folders that exist: every
/// `path` in backticks (one with a `/`, or ending in `.rs`, `.lua`, `.md` or `.sh`) is found
/// from the repository's root, `src/`, `src/engine/` or the Redis backend's folders
/// (endpoints and build output aside).
#[test]
fn the_readme_and_the_architecture_name_only_paths_that_exist() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let bases = [
        "",
        "src/",
        "src/engine/",
        "src/engine/redis/",
        "src/engine/redis/scripts/",
    ];
    let quoted = regex::Regex::new(r"`([A-Za-z0-9_./-]+)`").expect("valid");
    let mut missing = Vec::new();
    for document in ["README.md", "docs/architecture.md"] {
        let text = std::fs::read_to_string(root.join(document)).expect("readable");
        for token in quoted.captures_iter(&text).map(|c| c[1].to_owned()) {
            let path_like = token.contains('/')
                || [".rs", ".lua", ".md", ".sh"]
                    .iter()
                    .any(|ext| token.ends_with(ext));
            // Endpoints (`/readyz`) and what a run makes (`target/…`) are not files here.
            if !path_like || token.starts_with('/') || token.starts_with("target/") {
                continue;
            }
            if !bases
                .iter()
                .any(|base| root.join(base).join(&token).exists())
            {
                missing.push(format!("{document}: {token}"));
            }
        }
    }
    assert!(missing.is_empty(), "named but missing: {missing:#?}");
}
