//! Faults of the real servers: `redis-server` processes this file starts, kills (SIGKILL) and
//! restarts, and the `flashsale` binary itself killed or stopped mid-burst on the embedded
//! engine. Each fault is repeated: where it lands in the service's cycle changes the outcome.

use crate::helpers::{assert_problem, created_reservation, spawn_app_with, unique_id, Backend};
use crate::processes::{
    free_port, two_instances_on, within, RedisCluster, RedisServer, Service, ADMIN, STORE,
};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_for_seconds_answers_within_a_second_and_recovers_within_a_second() {
    let mut redis = RedisServer::start(true);
    let url = redis.url();
    let app = spawn_app_with(Backend::Redis, |c| c.redis_url = Some(url)).await;
    let id = app.campaign(10_000, 10_000, json!({})).await;
    assert_eq!(app.reserve(&id, "before", 1).await.status(), 201);
    // "About a second" (the contract), with room for a 2-core machine running the whole suite.
    let second = Duration::from_millis(2000);
    for round in 0..3 {
        redis.kill();
        let down = Instant::now();
        let mut attempts = 0;
        while down.elapsed() < Duration::from_secs(3) {
            let user = format!("down-{round}-{attempts}");
            let answer = within(
                second,
                "reserve while Redis is down",
                app.reserve(&id, &user, 1),
            )
            .await;
            assert_eq!(answer.status(), 503, "round {round}");
            assert!(answer.headers().contains_key("retry-after"));
            let problem: Value = answer.json().await.expect("problem+json");
            assert_eq!(problem["code"], "engine_unavailable", "{problem}");
            let ready = within(second, "readyz while Redis is down", async {
                app.client
                    .get(app.url("/readyz"))
                    .send()
                    .await
                    .expect("answers")
            })
            .await;
            assert_eq!(ready.status(), 503);
            let availability = within(
                second,
                "availability while Redis is down",
                app.availability(&id),
            )
            .await;
            assert!(
                matches!(
                    availability.status(),
                    StatusCode::OK | StatusCode::SERVICE_UNAVAILABLE
                ),
                "availability answered {}",
                availability.status()
            );
            attempts += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        redis.restart();
        let back = Instant::now();
        loop {
            let user = format!("back-{round}-{}", back.elapsed().as_millis());
            let answer = within(
                second,
                "reserve after Redis returned",
                app.reserve(&id, &user, 1),
            )
            .await;
            if answer.status() == 201 {
                break;
            }
            assert_eq!(answer.status(), 503, "only 503 while reconnecting");
            assert!(
                back.elapsed() < Duration::from_secs(2),
                "round {round}: still not serving {:?} after Redis returned",
                back.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_url_pointing_at_nothing_fails_start_up_within_seconds_naming_the_host() {
    let port = free_port();
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_flashsale"))
        .env("FLASHSALE_REDIS_URL", format!("redis://127.0.0.1:{port}"))
        .env("FLASHSALE_LISTEN", "127.0.0.1:0")
        .env(
            "FLASHSALE_SQLITE_PATH",
            PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{}.db", unique_id("badurl"))),
        )
        .stdin(Stdio::null())
        .output()
        .expect("the binary runs");
    let took = started.elapsed();
    assert!(!output.status.success());
    assert!(took < Duration::from_secs(10), "gave up after {took:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&format!("127.0.0.1:{port}")), "{stderr}");
}

#[derive(Clone, Copy, Debug)]
enum Stop {
    Kill,
    Terminate,
}

/// Reserves until told to stop; every 201's reservation id is recorded.
async fn burst(
    client: reqwest::Client,
    address: String,
    campaign: String,
    worker: usize,
    acknowledged: Arc<Mutex<Vec<String>>>,
    stop_after: Instant,
) {
    let mut n = 0;
    while Instant::now() < stop_after {
        n += 1;
        let answer = client
            .post(format!("{address}/v1/campaigns/{campaign}/reservations"))
            .bearer_auth(STORE)
            .header("Idempotency-Key", format!("w{worker}-{n}"))
            .json(&json!({"user_id": format!("u{worker}-{n}")}))
            .send()
            .await;
        let Ok(answer) = answer else { continue };
        if answer.status() == 201 {
            if let Ok(body) = answer.json::<Value>().await {
                if let Some(id) = body["id"].as_str() {
                    acknowledged
                        .lock()
                        .expect("not poisoned")
                        .push(id.to_owned());
                }
            }
        }
    }
}

async fn embedded_engine_loses_no_acknowledged_reservation(stop: Stop) {
    let sqlite = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("{}.db", unique_id("fault")))
        .to_string_lossy()
        .into_owned();
    let port = free_port();
    let client = reqwest::Client::new();
    let campaign = unique_id("c").to_lowercase();
    let stock = 1_000_000;
    let mut service = Service::start(&sqlite, port);
    let created = client
        .post(format!("{}/v1/campaigns", service.address))
        .bearer_auth(ADMIN)
        .json(&json!({"id": campaign, "kind": "flash_sale", "sku": "s", "stock": stock, "per_user_limit": 1}))
        .send()
        .await
        .expect("answers");
    assert_eq!(created.status(), 201);
    for round in 0..3 {
        let acknowledged = Arc::new(Mutex::new(Vec::new()));
        let stop_after = Instant::now() + Duration::from_secs(5);
        let workers: Vec<_> = (0..32)
            .map(|w| {
                tokio::spawn(burst(
                    client.clone(),
                    service.address.clone(),
                    campaign.clone(),
                    round * 100 + w,
                    Arc::clone(&acknowledged),
                    stop_after,
                ))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(700)).await;
        match stop {
            Stop::Kill => {
                let _ = service.child.kill();
            }
            Stop::Terminate => service.terminate(),
        }
        service.wait(Duration::from_secs(30));
        for worker in workers {
            worker.await.expect("no panic");
        }
        let acknowledged = acknowledged.lock().expect("not poisoned").clone();
        assert!(
            !acknowledged.is_empty(),
            "round {round}: the burst got no 201 before the stop"
        );
        service = Service::start(&sqlite, port);
        let mut lost = Vec::new();
        for id in &acknowledged {
            let answer = client
                .get(format!("{}/v1/reservations/{id}", service.address))
                .bearer_auth(STORE)
                .send()
                .await
                .expect("answers");
            if answer.status() != 200 {
                lost.push(format!("{id} ({})", answer.status()));
            }
        }
        assert!(
            lost.is_empty(),
            "{stop:?} round {round}: {} of {} acknowledged reservations lost (in {sqlite}), e.g. {:?}",
            lost.len(),
            acknowledged.len(),
            &lost[..lost.len().min(3)]
        );
        let state: Value = client
            .get(format!("{}/v1/campaigns/{campaign}", service.address))
            .bearer_auth(STORE)
            .send()
            .await
            .expect("answers")
            .json()
            .await
            .expect("json");
        let held = state["held"].as_u64().expect("held");
        let unique: HashSet<&String> = acknowledged.iter().collect();
        assert!(held >= unique.len() as u64, "{state}");
        assert_eq!(
            state["available"].as_u64().expect("available") + held,
            stock,
            "conservation after restart: {state}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_engine_killed_mid_burst_loses_no_acknowledged_reservation() {
    embedded_engine_loses_no_acknowledged_reservation(Stop::Kill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_engine_terminated_mid_burst_loses_no_acknowledged_reservation() {
    embedded_engine_loses_no_acknowledged_reservation(Stop::Terminate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_arming_the_sold_out_gate_never_blocks_redis() {
    use flashsale::domain::{IdempotencyKey, Millis, Quantity, ScopedKey, UserId};
    use flashsale::engine::gate::Gate;
    use flashsale::engine::{
        CampaignSnapshot, CancelScope, Decisions, Engine, RedisEngine, ReserveOutcome,
        ReserveRequest,
    };
    let redis = RedisServer::start(false);
    let engine = RedisEngine::connect_in(&redis.url(), "gate")
        .await
        .expect("connects");
    let gated = Engine::new(engine.clone());
    let stock = 30_000u64;
    let campaign = flashsale::domain::Campaign::parse(
        flashsale::domain::CampaignDraft {
            id: Some(unique_id("gate").to_lowercase()),
            kind: "flash_sale".into(),
            sku: "s".into(),
            stock,
            per_user_limit: Some(1),
            starts_at: None,
            ends_at: None,
            hold_seconds: Some(900),
            max_extend_seconds: None,
            group: None,
            queue: None,
            shards: None,
        },
        Millis::now(),
    )
    .expect("valid");
    assert!(engine
        .load_campaign(CampaignSnapshot::fresh(&campaign))
        .await
        .expect("loads"));
    let attempt = |n: u64| {
        let key = IdempotencyKey::parse(&format!("k{n}")).expect("valid");
        ReserveRequest::new(
            campaign.id.clone(),
            UserId::parse(&format!("u{n}")).expect("valid"),
            Quantity::ONE,
            ScopedKey::new("s/test", "reserve", &key),
            Millis::now(),
        )
    };
    let fillers: Vec<_> = (0..32u64)
        .map(|worker| {
            let engine = engine.clone();
            let requests: Vec<ReserveRequest> =
                (worker + 1..stock).step_by(32).map(attempt).collect();
            tokio::spawn(async move {
                for request in requests {
                    engine.reserve(&request).await.expect("answers");
                }
            })
        })
        .collect();
    for filler in fillers {
        filler.await.expect("no panic");
    }
    // The last unit, kept so it can be cancelled.
    let mut victim = attempt(0);
    let last = engine.reserve(&victim).await.expect("answers");
    assert!(
        matches!(last, ReserveOutcome::Reserved { available: 0, .. }),
        "{last:?}"
    );
    let mut admin = redis::Client::open(redis.url())
        .expect("valid URL")
        .get_multiplexed_async_connection()
        .await
        .expect("connects");
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("slowlog-log-slower-than")
        .arg(20_000)
        .query_async(&mut admin)
        .await
        .expect("configures");
    let _: () = redis::cmd("SLOWLOG")
        .arg("RESET")
        .query_async(&mut admin)
        .await
        .expect("resets");
    // A user cancels and reserves again, ten times: every sold-out refusal after it re-arms.
    let mut next = stock;
    for _ in 0..10 {
        gated
            .cancel(
                &victim.reservation_id,
                CancelScope::HeldOrConfirmed,
                Millis::now(),
            )
            .await
            .expect("answers");
        next += 1;
        victim = attempt(next);
        let outcome = gated.reserve(&victim).await.expect("answers");
        assert!(
            matches!(outcome, ReserveOutcome::Reserved { available: 0, .. }),
            "{outcome:?}"
        );
        next += 1;
        let refused = gated.reserve(&attempt(next)).await.expect("answers");
        assert!(matches!(refused, ReserveOutcome::Refused(_)), "{refused:?}");
        tokio::time::sleep(Gate::ARM_INTERVAL).await;
        let armed = Instant::now();
        while !gated.gate().is_some_and(|g| g.is_sold_out(&campaign.id)) {
            assert!(armed.elapsed() < Duration::from_secs(5), "the gate re-arms");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    // The armed gate still answers a retry of the last reservation with its first outcome.
    let replay = gated.reserve(&victim).await.expect("answers");
    assert!(matches!(replay, ReserveOutcome::Replayed(ref r) if r.id == victim.reservation_id));
    let slow: Vec<redis::Value> = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(100)
        .query_async(&mut admin)
        .await
        .expect("reads");
    assert!(slow.is_empty(), "commands over 20 ms: {slow:?}");
}

/// What the database says about one campaign, held against the invariants: the breaches
/// still there once the holds that are due ended and the persisters caught up (asked again
/// for up to 20 s while any shows — on a loaded machine the last ends can take a while to
/// reach the database; a unit sold twice or a key used twice never goes away).
pub async fn invariant_breaches(
    app: &crate::helpers::TestApp,
    campaign: &str,
    stock: i64,
) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let breaches = breaches_now(app, campaign, stock).await;
        if breaches.is_empty() || Instant::now() > deadline {
            return breaches;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn breaches_now(app: &crate::helpers::TestApp, campaign: &str, stock: i64) -> Vec<String> {
    let flashsale::store::Store::Postgres(pool) = &app.store else {
        panic!("this test runs on Postgres");
    };
    let mut breaches = Vec::new();
    let (taken,): (i64,) = sqlx::query_as(
        "SELECT CAST(COALESCE(SUM(quantity), 0) AS BIGINT) FROM reservations \
         WHERE campaign_id = $1 AND status IN ('held', 'confirmed')",
    )
    .bind(campaign)
    .fetch_one(pool)
    .await
    .expect("query");
    if taken > stock {
        breaches.push(format!("oversold: {taken} units taken of {stock}"));
    }
    let over_limit: Vec<(String, i64)> = sqlx::query_as(
        "SELECT user_id, CAST(SUM(quantity) AS BIGINT) FROM reservations \
         WHERE campaign_id = $1 AND status IN ('held', 'confirmed') GROUP BY user_id HAVING SUM(quantity) > 1",
    )
    .bind(campaign)
    .fetch_all(pool)
    .await
    .expect("query");
    if !over_limit.is_empty() {
        breaches.push(format!("users over their limit: {over_limit:?}"));
    }
    let reused: Vec<(String, i64)> = sqlx::query_as(
        "SELECT idempotency_key, COUNT(*) FROM reservations WHERE campaign_id = $1 \
         AND idempotency_key IS NOT NULL GROUP BY idempotency_key HAVING COUNT(*) > 1",
    )
    .bind(campaign)
    .fetch_all(pool)
    .await
    .expect("query");
    if !reused.is_empty() {
        breaches.push(format!("keys with two reservations: {reused:?}"));
    }
    let stale: Vec<(String,)> = sqlx::query_as(
        "SELECT id FROM reservations WHERE campaign_id = $1 AND status = 'held' \
         AND expires_at_ms < $2",
    )
    .bind(campaign)
    .bind(flashsale::domain::Millis::now().0 - 3_000)
    .fetch_all(pool)
    .await
    .expect("query");
    if !stale.is_empty() {
        // What the engine says of a few of them, to tell a hold the engine lost from one
        // whose end never reached the database.
        let mut seen = Vec::new();
        for (id,) in stale.iter().take(3) {
            let answer = app
                .client
                .get(format!("{}/v1/reservations/{id}", app.address))
                .bearer_auth(&app.store_token)
                .send()
                .await
                .expect("the service answers");
            let status = answer.status();
            seen.push(format!(
                "{id}: {status} {}",
                answer.text().await.unwrap_or_default()
            ));
        }
        breaches.push(format!(
            "holds that never ended: {} ({seen:?})",
            stale.len()
        ));
    }
    breaches
}

/// 16 workers making reservations on `campaigns` (in turn) through both instances for 3 s,
/// a new user each time; a caller retries a 5xx or a transport error with the same key, on
/// either instance.
pub fn retrying_burst(
    instances: &Arc<[crate::helpers::TestApp; 2]>,
    campaigns: &[String],
    round: usize,
) -> Vec<tokio::task::JoinHandle<()>> {
    let deadline = Instant::now() + Duration::from_secs(3);
    (0..16)
        .map(|worker| {
            let instances = Arc::clone(instances);
            let campaigns = campaigns.to_vec();
            tokio::spawn(async move {
                let mut n = worker;
                while Instant::now() < deadline {
                    let user = format!("u{round}-{n}");
                    let key = format!("k-{user}");
                    let campaign = &campaigns[n % campaigns.len()];
                    n += 16;
                    for attempt in 0..40 {
                        let app = &instances[(worker + attempt) % 2];
                        let answer = app
                            .try_reserve_with(
                                campaign,
                                &app.store_token,
                                &key,
                                &json!({"user_id": user}),
                            )
                            .await;
                        if answer.is_ok_and(|a| !a.status().is_server_error()) {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_mid_burst_never_oversells_and_every_hold_ends() {
    use crate::helpers::fresh_postgres_schema;
    let mut redis = RedisServer::start(false);
    let url = redis.url();
    let database = fresh_postgres_schema().await;
    let namespace = unique_id("ns");
    let tune = |c: &mut flashsale::config::Config| {
        c.redis_url = Some(url.clone());
        c.redis_namespace = namespace.clone();
        c.database_url = Some(database.clone());
    };
    let instances = Arc::new([
        spawn_app_with(Backend::Redis, tune).await,
        spawn_app_with(Backend::Redis, tune).await,
    ]);
    // Enough stock that reservations are still being made when Redis dies: events are in
    // flight (read by a persister, not yet committed) at that moment.
    let stock = 1_000_000;
    let hold_seconds = 3;
    let campaign = instances[0]
        .campaign(stock, 1, json!({"hold_seconds": hold_seconds}))
        .await;
    for round in 0..3 {
        let workers = retrying_burst(&instances, std::slice::from_ref(&campaign), round);
        tokio::time::sleep(Duration::from_millis(800)).await;
        redis.kill();
        tokio::time::sleep(Duration::from_millis(300)).await;
        redis.restart(); // empty: no persistence
        for worker in workers {
            worker.await.expect("no panic");
        }
    }
    // Every hold ends (3 s holds, reaped within a second), the persisters drain.
    tokio::time::sleep(Duration::from_secs(hold_seconds + 4)).await;
    let breaches = invariant_breaches(&instances[0], &campaign, stock as i64).await;
    assert!(
        breaches.is_empty(),
        "after three Redis losses: {breaches:?}"
    );
    let drift = instances[0].settled_drift().await;
    assert!(drift.is_empty(), "engine and database disagree: {drift:?}");
}

/// A cluster node killed and restarted empty mid-burst loses its campaigns only: they are
/// rebuilt from the database under a new load epoch (events decided before the loss and
/// written after the rebuild are set aside, not applied), while a campaign on another node —
/// and the namespace's dataset id, kept on a third — never notice. Three times over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_node_restarted_empty_mid_burst_loses_only_its_campaigns_and_never_oversells() {
    let mut cluster = RedisCluster::start();
    let namespace = unique_id("ns");
    let instances = two_instances_on(&cluster, &namespace).await;
    let stock = 1_000_000;
    let hold_seconds = 3;
    // The campaign to lose on a node that does not hold the dataset id (a loss there goes
    // unnoticed by any dataset-wide check), the one to keep on a third node.
    let dataset_node = cluster.owner(&format!("{namespace}:epoch"));
    let (mut lost, mut kept) = (None, None);
    while lost.is_none() || kept.is_none() {
        let id = instances[0]
            .campaign(stock, 1, json!({"hold_seconds": hold_seconds}))
            .await;
        let node = cluster.owner(&format!("{{c:{id}}}"));
        if node == dataset_node {
            continue;
        }
        match lost {
            None => lost = Some((id, node)),
            Some((_, lost_node)) if kept.is_none() && node != lost_node => kept = Some(id),
            _ => {}
        }
    }
    let ((lost, lost_node), kept) = (lost.expect("chosen"), kept.expect("chosen"));
    let epoch = |id: String| {
        let instances = Arc::clone(&instances);
        async move { instances[0].engine_epoch(&id).await.expect("loaded") }
    };
    let (lost_epoch, kept_epoch) = (epoch(lost.clone()).await, epoch(kept.clone()).await);
    for round in 0..3 {
        let workers = retrying_burst(&instances, &[lost.clone(), kept.clone()], round);
        tokio::time::sleep(Duration::from_millis(800)).await;
        cluster.nodes[lost_node].kill();
        tokio::time::sleep(Duration::from_millis(300)).await;
        cluster.nodes[lost_node].restart(); // empty: no persistence
        for worker in workers {
            worker.await.expect("no panic");
        }
    }
    tokio::time::sleep(Duration::from_secs(hold_seconds + 4)).await;
    for campaign in [&lost, &kept] {
        let breaches = invariant_breaches(&instances[0], campaign, stock as i64).await;
        assert!(
            breaches.is_empty(),
            "{campaign} after three node losses: {breaches:?}"
        );
    }
    let drift = instances[0].settled_drift().await;
    assert!(drift.is_empty(), "engine and database disagree: {drift:?}");
    assert_ne!(
        epoch(lost.clone()).await,
        lost_epoch,
        "the lost campaign was rebuilt"
    );
    assert_eq!(
        epoch(kept.clone()).await,
        kept_epoch,
        "the other node's campaign was not"
    );
}

/// A campaign lost with its cluster node and asked nothing afterwards is rebuilt all the
/// same — the recovery pass finds it among the campaigns that changed lately — so its holds
/// end (the database says so) without a request for it. Neither the dataset id nor the work
/// index is on the lost node: no dataset-wide mark shows the loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_a_cluster_node_lost_is_rebuilt_without_a_request_and_its_holds_end() {
    let mut cluster = RedisCluster::start();
    let namespace = unique_id("ns");
    let instances = two_instances_on(&cluster, &namespace).await;
    let spared = [
        cluster.owner(&format!("{namespace}:epoch")),
        cluster.owner(&format!("{{w:{namespace}}}")),
    ];
    let (campaign, node) = loop {
        let id = instances[0]
            .campaign(10, 1, json!({"hold_seconds": 1}))
            .await;
        let node = cluster.owner(&format!("{{c:{id}}}"));
        if !spared.contains(&node) {
            break (id, node);
        }
    };
    let epoch = instances[0].engine_epoch(&campaign).await;
    for user in ["a", "b", "c"] {
        assert_eq!(instances[0].reserve(&campaign, user, 1).await.status(), 201);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while instances[0].stored_reservation_ids(&campaign).await.len() < 3 {
        assert!(
            Instant::now() < deadline,
            "the holds never reached the database"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster.nodes[node].kill();
    cluster.nodes[node].restart(); // empty: no persistence
    cluster.wait_until_ok();
    // The loss grace (2 s), a recovery pass (200 ms in tests), the holds' second, the reaper.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let live = instances[0].stored_reservation_ids(&campaign).await;
        if live.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "holds never ended without a request: {live:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_ne!(
        instances[0].engine_epoch(&campaign).await,
        epoch,
        "the campaign was rebuilt"
    );
}

/// A campaign whose slot is among the first 300 of its node's (so moving it moves few
/// slots), and the node to move it to.
async fn campaign_near_a_nodes_first_slot(
    cluster: &RedisCluster,
    app: &crate::helpers::TestApp,
    stock: u64,
    fields: Value,
) -> (String, usize) {
    loop {
        let id = app.campaign(stock, 1, fields.clone()).await;
        let key = format!("{{c:{id}}}");
        let node = cluster.owner(&key);
        if cluster.slot(&key) - cluster.first_slot(node) < 300 {
            return (id, (node + 1) % cluster.nodes.len());
        }
    }
}

/// `redis-cli --cluster reshard` moving the campaign's node's first slots, up to and
/// including the campaign's, to node `to`; runs in the background.
fn move_slot_to(
    cluster: &RedisCluster,
    campaign: &str,
    to: usize,
) -> tokio::task::JoinHandle<std::process::ExitStatus> {
    let key = format!("{{c:{campaign}}}");
    let from = cluster.owner(&key);
    let slots = cluster.slot(&key) - cluster.first_slot(from) + 1;
    let (from_id, to_id) = (cluster.id(from), cluster.id(to));
    let seed = format!("127.0.0.1:{}", cluster.nodes[to].port);
    tokio::task::spawn_blocking(move || {
        Command::new("redis-cli")
            .args(["--cluster", "reshard", &seed])
            .args(["--cluster-from", &from_id, "--cluster-to", &to_id])
            .args(["--cluster-slots", &slots.to_string(), "--cluster-yes"])
            .stdout(Stdio::null())
            .status()
            .expect("redis-cli runs")
    })
}

/// The same for a group buy: groups opened, joined, failing when their window passes (their
/// members released) while their slot moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_buy_slot_moved_mid_burst_loses_nothing() {
    let cluster = RedisCluster::start();
    let namespace = unique_id("ns");
    let instances = two_instances_on(&cluster, &namespace).await;
    let stock = 1_000_000;
    let fields = json!({"kind": "group_buy", "group": {"size": 3, "window_seconds": 1}});
    let (campaign, to) =
        campaign_near_a_nodes_first_slot(&cluster, &instances[0], stock, fields).await;
    let deadline = Instant::now() + Duration::from_secs(3);
    let workers: Vec<_> = (0..8)
        .map(|worker| {
            let (instances, campaign) = (Arc::clone(&instances), campaign.clone());
            tokio::spawn(async move {
                let (mut n, mut opened_groups) = (0, 0);
                while Instant::now() < deadline {
                    n += 1;
                    let app = &instances[(worker + n) % 2];
                    let opened = app.open_group(&campaign, &format!("l{worker}-{n}")).await;
                    if opened.status() != 201 {
                        continue;
                    }
                    opened_groups += 1;
                    let group: Value = opened.json().await.expect("json");
                    let group = group["id"].as_str().unwrap_or_default().to_owned();
                    let _ = app.join_group(&group, &format!("m{worker}-{n}")).await;
                }
                opened_groups
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let reshard = move_slot_to(&cluster, &campaign, to);
    let mut opened = 0;
    for worker in workers {
        opened += worker.await.expect("no panic");
    }
    assert!(opened > 100, "only {opened} groups opened");
    assert!(
        reshard.await.expect("no panic").success(),
        "the reshard failed"
    );
    assert_eq!(
        cluster.owner(&format!("{{c:{campaign}}}")),
        to,
        "the slot moved"
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let drift = instances[0].settled_drift().await;
    assert!(drift.is_empty(), "engine and database disagree: {drift:?}");
    let state: Value = instances[0]
        .get_campaign(&campaign)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(
        state["held"], 0,
        "every group failed and released its members: {state}"
    );
    assert_eq!(state["available"], stock, "every unit came back: {state}");
}

/// A slot moved to another node (`redis-cli --cluster reshard`) while a sale runs on it —
/// holds being made, confirmed and expiring — loses nothing: every unit is sold once or
/// still available, every hold ends, engine and database agree, and the campaign is served
/// by its new node afterwards. Scripts meet the move half done (MOVED, ASK, TRYAGAIN, keys
/// on either side); a caller retries a 5xx with the same key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_moved_to_another_node_mid_burst_loses_nothing() {
    slot_moved_mid_burst(1_000_000, json!({"hold_seconds": 1})).await
}

/// The same for a sharded campaign whose stock runs out and comes back (one-second holds)
/// while shard 0's slot — the shard that keeps the campaign's total — moves: units move
/// between shards on both sides of the move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sharded_campaigns_slot_moved_mid_burst_loses_nothing() {
    slot_moved_mid_burst(300, json!({"hold_seconds": 1, "shards": 3})).await
}

async fn slot_moved_mid_burst(stock: u64, fields: Value) {
    let cluster = RedisCluster::start();
    let namespace = unique_id("ns");
    let instances = two_instances_on(&cluster, &namespace).await;
    let (campaign, to) =
        campaign_near_a_nodes_first_slot(&cluster, &instances[0], stock, fields).await;
    let workers = retrying_burst(&instances, std::slice::from_ref(&campaign), 0);
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let reshard = move_slot_to(&cluster, &campaign, to);
    for worker in workers {
        worker.await.expect("no panic");
    }
    assert!(
        reshard.await.expect("no panic").success(),
        "the reshard failed"
    );
    assert_eq!(
        cluster.owner(&format!("{{c:{campaign}}}")),
        to,
        "the slot moved"
    );
    // Confirm holds made after the move (once the burst's one-second holds ended, so a small
    // stock has units again): the campaign answers from its new node.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for user in ["after-1", "after-2"] {
        let made: Value = instances[1]
            .reserve(&campaign, user, 1)
            .await
            .json()
            .await
            .expect("json");
        let id = made["id"].as_str().expect("a hold");
        let confirmed = instances[0].confirm(id, &instances[0].store_token).await;
        assert_eq!(confirmed.status(), 200);
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let breaches = invariant_breaches(&instances[0], &campaign, stock as i64).await;
    assert!(breaches.is_empty(), "after the reshard: {breaches:?}");
    let drift = instances[0].settled_drift().await;
    assert!(drift.is_empty(), "engine and database disagree: {drift:?}");
    let state: Value = instances[0]
        .get_campaign(&campaign)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(state["held"], 0, "every hold ended: {state}");
    assert_eq!(
        state["available"].as_u64().expect("a number")
            + state["confirmed"].as_u64().expect("a number"),
        stock,
        "every unit is sold once or still available: {state}"
    );
}

/// The fence, deterministically: events read under a campaign's load, then the campaign's
/// node restarted empty and the campaign rebuilt, then the events written — they are set
/// aside, not applied (the rebuild did not count them, so applying them would make units
/// the engine does not know of). The namespace's dataset id lives on another node and never
/// changes: only an epoch per campaign load tells the two loads apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_a_campaign_load_a_cluster_node_lost_are_fenced_out() {
    use crate::helpers::fresh_postgres_schema;
    use flashsale::engine::{Consumer, PERSISTER};
    let mut cluster = RedisCluster::start();
    let nodes = cluster.urls();
    let namespace = unique_id("ns");
    let database = fresh_postgres_schema().await;
    let app = spawn_app_with(Backend::Cluster, |c| {
        c.redis_cluster_nodes = nodes.clone();
        c.redis_namespace = namespace.clone();
        c.database_url = Some(database.clone());
        c.persister = false;
    })
    .await;
    let dataset_node = cluster.owner(&format!("{namespace}:epoch"));
    let (campaign, node) = loop {
        let id = app.campaign(10, 1, json!({})).await;
        let node = cluster.owner(&format!("{{c:{id}}}"));
        if node != dataset_node {
            break (id, node);
        }
    };
    for user in ["a", "b", "c"] {
        assert_eq!(app.reserve(&campaign, user, 1).await.status(), 201);
    }
    let consumer = Consumer {
        group: PERSISTER.to_owned(),
        name: "straggler".to_owned(),
    };
    let read = app
        .events
        .read(&consumer, 100, Duration::from_secs(60))
        .await
        .expect("reads");
    // The campaign's creation event and three holds.
    assert!(read.events.len() >= 3, "{read:?}");
    cluster.nodes[node].kill();
    cluster.nodes[node].restart();
    cluster.wait_until_ok();
    let restored = flashsale::pipeline::recovery::restore_all(
        &app.engine,
        &app.store,
        &flashsale::pipeline::recovery::LossWatch::immediate(),
    )
    .await
    .expect("rebuilds");
    assert_eq!(
        restored.len(),
        1,
        "the lost campaign is rebuilt, and only it"
    );
    let set_aside = app
        .store
        .persist(&read.epochs, &read.events)
        .await
        .expect("writes");
    assert_eq!(
        set_aside,
        vec![("fenced", read.events.len() as u64)],
        "every event of the lost load is set aside"
    );
    let drift = app.settled_drift().await;
    assert!(drift.is_empty(), "engine and database disagree: {drift:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_the_database_cannot_take_are_set_aside_and_the_rest_goes_on() {
    use flashsale::domain::{IdempotencyKey, Millis, Quantity, ScopedKey, UserId};
    use flashsale::engine::{CampaignSnapshot, ReserveOutcome, ReserveRequest};
    let app = crate::helpers::spawn_app(Backend::Redis).await;
    // A campaign only Redis knows, as when a fresh database is pointed at an old Redis: its
    // events can never reach the `reservations` table (its foreign key).
    let ghost = flashsale::domain::Campaign::parse(
        flashsale::domain::CampaignDraft {
            id: Some(unique_id("ghost").to_lowercase()),
            kind: "flash_sale".into(),
            sku: "s".into(),
            stock: 10,
            per_user_limit: Some(1),
            starts_at: None,
            ends_at: None,
            hold_seconds: Some(900),
            max_extend_seconds: None,
            group: None,
            queue: None,
            shards: None,
        },
        Millis::now(),
    )
    .expect("valid");
    assert_ne!(
        app.engine
            .load(CampaignSnapshot::fresh(&ghost))
            .await
            .expect("loads"),
        0
    );
    for i in 0..5 {
        let key = IdempotencyKey::parse(&format!("g{i}")).expect("valid");
        let request = ReserveRequest::new(
            ghost.id.clone(),
            UserId::parse(&format!("g{i}")).expect("valid"),
            Quantity::ONE,
            ScopedKey::new("s/test", "reserve", &key),
            Millis::now(),
        );
        let outcome = app.engine.reserve(&request).await.expect("answers");
        assert!(matches!(outcome, ReserveOutcome::Reserved { .. }));
    }
    // Beside them, a campaign both know, served as usual.
    let id = app.campaign(10, 1, json!({})).await;
    for i in 0..3 {
        assert_eq!(app.reserve(&id, &format!("u{i}"), 1).await.status(), 201);
    }
    let feed = app.feed_when(3, Duration::from_secs(20)).await;
    let healthy = feed
        .iter()
        .filter(|e| e["reservation"]["campaign_id"] == id.as_str())
        .count();
    assert_eq!(
        healthy, 3,
        "the healthy campaign's events reach the feed: {feed:?}"
    );
    let started = Instant::now();
    let dead = loop {
        let dead = app.store.dead_events().await.expect("reads");
        if dead.len() >= 5 || started.elapsed() > Duration::from_secs(20) {
            break dead;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(dead.len(), 5, "{dead:?}");
    assert!(dead
        .iter()
        .all(|d| d.reason == "unknown_campaign" && d.campaign_id == ghost.id.as_str()));
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("answers")
        .text()
        .await
        .expect("text");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("flashsale_persister_dead_events_total")
                && l.contains("unknown_campaign")
                && !l.ends_with(" 0")),
        "the set-aside events are counted"
    );
}

/// The binary started with strict durability on the Redis `variable` names: it must refuse
/// to start; its stderr.
fn refused_strict_start(variable: &str, redis: &str) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_flashsale"))
        .env(variable, redis)
        .env("FLASHSALE_DURABILITY", "strict")
        .env("FLASHSALE_LISTEN", "127.0.0.1:0")
        .env(
            "FLASHSALE_SQLITE_PATH",
            PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{}.db", unique_id("strict"))),
        )
        .stdin(Stdio::null())
        .output()
        .expect("the binary runs");
    assert!(!output.status.success());
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The same on a cluster: every master is asked, and the refusal names the ones without an
/// fsynced AOF.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_durability_on_a_cluster_asks_every_master() {
    let volatile = RedisCluster::start();
    let stderr = refused_strict_start("FLASHSALE_REDIS_CLUSTER_NODES", &volatile.urls()[0]);
    for node in &volatile.nodes {
        assert!(
            stderr.contains(&format!("127.0.0.1:{} has appendonly no", node.port)),
            "{stderr}"
        );
    }
    let durable = RedisCluster::start_with(true);
    let nodes = durable.urls();
    let app = spawn_app_with(Backend::Cluster, |c| {
        c.redis_cluster_nodes = nodes;
        c.durability = flashsale::config::Durability::Strict;
    })
    .await;
    let id = app.campaign(5, 1, json!({})).await;
    assert_eq!(app.reserve(&id, "u1", 1).await.status(), 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_durability_refuses_a_redis_that_could_lose_an_acknowledged_change() {
    // Without an fsynced AOF: the service refuses to start, saying what it found.
    let volatile = RedisServer::start(false);
    let stderr = refused_strict_start("FLASHSALE_REDIS_URL", &volatile.url());
    assert!(stderr.contains("appendonly no"), "{stderr}");
    // With one, it serves.
    let durable = RedisServer::start(true);
    let url = durable.url();
    let app = spawn_app_with(Backend::Redis, |c| {
        c.redis_url = Some(url);
        c.durability = flashsale::config::Durability::Strict;
    })
    .await;
    let id = app.campaign(5, 1, json!({})).await;
    assert_eq!(app.reserve(&id, "u1", 1).await.status(), 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_user_rate_is_shared_by_every_instance_on_redis() {
    use crate::helpers::fresh_postgres_schema;
    let database = fresh_postgres_schema().await;
    let namespace = unique_id("ns");
    let tune = |c: &mut flashsale::config::Config| {
        c.redis_namespace = namespace.clone();
        c.database_url = Some(database.clone());
        c.user_rate_per_second = 5;
    };
    let a = spawn_app_with(Backend::Redis, tune).await;
    let b = spawn_app_with(Backend::Redis, tune).await;
    let id = a.campaign(1_000, 1_000, json!({})).await;
    // Start just after a second begins, so the attempts share one counting window.
    let now = flashsale::domain::Millis::now().0;
    tokio::time::sleep(Duration::from_millis(
        (1_000 - now.rem_euclid(1_000)) as u64 + 20,
    ))
    .await;
    let mut passed = 0;
    let mut limited = 0;
    for i in 0..12 {
        let app = if i % 2 == 0 { &a } else { &b };
        let answer = app.reserve(&id, "hammer", 1).await;
        match answer.status().as_u16() {
            429 => limited += 1,
            _ => passed += 1,
        }
    }
    // Each instance alone allows 5 a second; together they still allow 5.
    assert!(passed <= 5, "{passed} attempts passed, {limited} limited");
    assert!(limited >= 7, "{passed} attempts passed, {limited} limited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_holding_another_databases_campaigns_is_refused_at_start() {
    use crate::helpers::fresh_postgres_schema;
    let redis = RedisServer::start(false);
    let url = redis.url();
    let namespace = unique_id("ns");
    let first = fresh_postgres_schema().await;
    let app = spawn_app_with(Backend::Redis, |c| {
        c.redis_url = Some(url.clone());
        c.redis_namespace = namespace.clone();
        c.database_url = Some(first.clone());
    })
    .await;
    app.campaign(5, 1, json!({})).await;
    // The first database knew a dataset; now point a second one that served another dataset
    // at this Redis.
    let second = fresh_postgres_schema().await;
    let other = RedisServer::start(false);
    let other_url = other.url();
    spawn_app_with(Backend::Redis, |c| {
        c.redis_url = Some(other_url.clone());
        c.redis_namespace = namespace.clone();
        c.database_url = Some(second.clone());
    })
    .await;
    let mut config = flashsale::config::Config::defaults();
    config.listen = "127.0.0.1:0".parse().expect("valid");
    config.redis_url = Some(url);
    config.redis_namespace = namespace;
    config.database_url = Some(second);
    let refused = flashsale::startup::Application::build(config).await;
    let Err(error) = refused else {
        panic!("a Redis with another database's campaigns was accepted");
    };
    let message = format!("{error:#}");
    assert!(message.contains("another database"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_durability_waits_for_a_replica_when_one_is_connected() {
    let master = RedisServer::start(true);
    let mut replica = RedisServer::replica_of(&master);
    let mut admin = redis::Client::open(master.url())
        .expect("valid URL")
        .get_multiplexed_async_connection()
        .await
        .expect("connects");
    let started = Instant::now();
    loop {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut admin)
            .await
            .expect("info");
        if info.contains("connected_slaves:1") && info.contains("state=online") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the replica never connected"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let url = master.url();
    let app = spawn_app_with(Backend::Redis, |c| {
        c.redis_url = Some(url);
        c.durability = flashsale::config::Durability::Strict;
    })
    .await;
    let id = app.campaign(10, 1, json!({})).await;
    // A caller retries a 503 with the same key; with the replica online that ends in a 201.
    let started = Instant::now();
    loop {
        let first = app
            .reserve_with(
                &id,
                &app.store_token,
                "with-replica",
                &json!({"user_id": "u1"}),
            )
            .await;
        if first.status() == 201 {
            break;
        }
        assert_eq!(first.status(), 503);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "never replicated"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Without its replica, a change is not answered 201: it might be lost with the master.
    replica.kill();
    let answer = app
        .reserve_with(
            &id,
            &app.store_token,
            "while-alone",
            &json!({"user_id": "u2"}),
        )
        .await;
    assert_eq!(answer.status(), 503);
    let problem: Value = answer.json().await.expect("problem");
    assert_eq!(problem["code"], "engine_unavailable");
    // Once the replica is back, the retry with the same key answers the change it made.
    replica.restart();
    let started = Instant::now();
    loop {
        let retry = app
            .reserve_with(
                &id,
                &app.store_token,
                "while-alone",
                &json!({"user_id": "u2"}),
            )
            .await;
        if retry.status() == 201 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never answered: {}",
            retry.status()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A Redis that evicts keys under memory pressure silently breaks promises (a held unit
/// forgotten, a user's count gone): strict durability refuses it at start, naming the policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_durability_refuses_a_redis_that_evicts_keys() {
    let evicting = RedisServer::start(true);
    evicting.config_set("maxmemory-policy", "allkeys-lru");
    let stderr = refused_strict_start("FLASHSALE_REDIS_URL", &evicting.url());
    assert!(stderr.contains("maxmemory-policy allkeys-lru"), "{stderr}");
}

/// A Redis out of memory (`noeviction`) refuses every write: each is answered 503
/// `engine_out_of_memory` with `Retry-After` (not the generic `engine_unavailable`),
/// `/readyz` says 503 with the reason, and once memory is there again the sale goes on with
/// nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_out_of_memory_answers_engine_out_of_memory_and_loses_nothing() {
    let redis = RedisServer::start(false);
    let url = redis.url();
    let app = spawn_app_with(Backend::Redis, |c| c.redis_url = Some(url)).await;
    let id = app.campaign(10, 5, json!({})).await;
    let before = created_reservation(app.reserve(&id, "u1", 1).await).await;

    redis.config_set("maxmemory-policy", "noeviction");
    redis.config_set("maxmemory", "1");
    let refused = app.reserve(&id, "u2", 1).await;
    assert_eq!(
        refused
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap_or_default().to_owned()),
        Some("5".to_owned())
    );
    assert_problem(refused, 503, "engine_out_of_memory").await;
    let (status, body) = app.readiness().await;
    assert_eq!(status, 503);
    assert!(
        body["engine_status"]
            .as_str()
            .unwrap_or_default()
            .contains("OOM"),
        "{body}"
    );

    redis.config_set("maxmemory", "0");
    created_reservation(app.reserve(&id, "u2", 1).await).await;
    let campaign = app.campaign_json(&id).await;
    assert_eq!(campaign["held"], 2, "{campaign}");
    assert_eq!(
        app.get_reservation(before["id"].as_str().expect("id"), &app.store_token)
            .await
            .status(),
        200
    );
    assert_eq!(app.readiness().await.0, 200);
}

/// Strict durability checks the engine's configuration while it runs, not only at start: a
/// `maxmemory-policy` changed to one that evicts stops every decision (503 `engine_unsafe`,
/// `/readyz` 503 naming it) until it is set back; the gauge and the eviction counter say it
/// in `/metrics` either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_durability_stops_deciding_when_redis_starts_evicting_and_resumes_when_fixed() {
    let redis = RedisServer::start(true);
    let url = redis.url();
    let app = spawn_app_with(Backend::Redis, |c| {
        c.redis_url = Some(url);
        c.durability = flashsale::config::Durability::Strict;
        c.engine_check_interval_ms = 100;
    })
    .await;
    let id = app.campaign(10, 5, json!({})).await;
    created_reservation(app.reserve(&id, "u1", 1).await).await;

    redis.config_set("maxmemory-policy", "allkeys-lru");
    let started = Instant::now();
    // Until the next check (100 ms) the change is not known yet.
    let mut held = 1;
    let refused = loop {
        let response = app.reserve(&id, "u2", 1).await;
        if response.status() == 503 {
            break response;
        }
        assert_eq!(response.status(), 201);
        held += 1;
        assert!(started.elapsed() < Duration::from_secs(3), "never noticed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_problem(refused, 503, "engine_unsafe").await;
    let (status, body) = app.readiness().await;
    assert_eq!(status, 503);
    assert!(
        body["engine_status"]
            .as_str()
            .unwrap_or_default()
            .contains("allkeys-lru"),
        "{body}"
    );
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains("flashsale_engine_evicting{node=\"redis\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("flashsale_engine_evicted_keys_total{node=\"redis\"}"));
    assert!(metrics.contains("flashsale_engine_memory_used_bytes{node=\"redis\"}"));

    redis.config_set("maxmemory-policy", "noeviction");
    let started = Instant::now();
    loop {
        let response = app.reserve(&id, "u3", 1).await;
        if response.status() == 201 {
            break;
        }
        assert_problem(response, 503, "engine_unsafe").await;
        assert!(started.elapsed() < Duration::from_secs(3), "never resumed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let campaign = app.campaign_json(&id).await;
    assert_eq!(
        campaign["held"],
        held + 1,
        "the refused changes were not made: {campaign}"
    );
}
