//! Hot-SKU shards (`"shards": n`): the campaign sells its whole stock however users hash,
//! whoever moves units between shards and whatever dies while they do — on the embedded
//! engine, one Redis (four shards on one server) and the tests' cluster (six shards over
//! three nodes).

use crate::faults::{invariant_breaches, retrying_burst};
use crate::helpers::{
    fresh_postgres_schema, redis_cluster_nodes, redis_url, spawn_app, spawn_app_with, unique_id,
    Backend, TestApp,
};
use crate::processes::{free_port, two_instances_on, RedisCluster, Service};
use flashsale::domain::{CampaignId, UserId};
use flashsale::engine::shards::shard_of;
use flashsale::engine::RedisEngine;
use flashsale::engine::{ShardOps, ShardState, Transfer};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `count` user ids, nine in ten of them hashing to shard 0 of `shards`.
fn skewed_users(prefix: &str, shards: u8, count: usize) -> Vec<String> {
    let mut hot = (0..)
        .map(|i| format!("{prefix}-{i}"))
        .filter(|u| shard_of(&UserId::parse(u).expect("valid"), shards) == 0);
    let mut cold = (0..)
        .map(|i| format!("{prefix}-c{i}"))
        .filter(|u| shard_of(&UserId::parse(u).expect("valid"), shards) != 0);
    (0..count)
        .map(|i| if i % 10 == 9 { cold.next() } else { hot.next() }.expect("endless"))
        .collect()
}

/// Every user tries once (16 at a time, through the instances in turn, a 5xx or transport
/// error retried with the same key); how many got a reservation, and the other answers' codes.
async fn everyone_tries(
    instances: &[&TestApp],
    campaign: &str,
    users: Vec<String>,
) -> (u64, Vec<String>) {
    let targets = instances
        .iter()
        .map(|app| (app.address.clone(), app.store_token.clone()))
        .collect();
    everyone_tries_at(targets, campaign, users).await
}

/// [`everyone_tries`] against service addresses and their store tokens.
async fn everyone_tries_at(
    targets: Vec<(String, String)>,
    campaign: &str,
    users: Vec<String>,
) -> (u64, Vec<String>) {
    let client = reqwest::Client::builder()
        .pool_idle_timeout(Duration::from_secs(3))
        .build()
        .expect("a client");
    let users = Arc::new(std::sync::Mutex::new(users));
    let sold = Arc::new(AtomicU64::new(0));
    let refusals = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for worker in 0..16 {
        let (users, sold, refusals) =
            (Arc::clone(&users), Arc::clone(&sold), Arc::clone(&refusals));
        let campaign = campaign.to_owned();
        let targets = targets.clone();
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut turn = worker;
            loop {
                let Some(user) = users.lock().expect("not poisoned").pop() else {
                    return;
                };
                let key = format!("k-{user}");
                for attempt in 0..40 {
                    turn += 1;
                    let (address, token) = &targets[turn % targets.len()];
                    let answer = client
                        .post(format!("{address}/v1/campaigns/{campaign}/reservations"))
                        .bearer_auth(token)
                        .header("Idempotency-Key", &key)
                        .json(&json!({"user_id": user}))
                        .send()
                        .await;
                    let Ok(answer) = answer else {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    };
                    let status = answer.status();
                    if status.is_server_error() {
                        assert!(attempt < 39, "{user}: still {status} after 40 tries");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                    if status == 201 {
                        sold.fetch_add(1, Ordering::Relaxed);
                    } else {
                        let body: Value = answer.json().await.unwrap_or_default();
                        refusals
                            .lock()
                            .expect("not poisoned")
                            .push(body["code"].as_str().unwrap_or("?").to_owned());
                    }
                    break;
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("no panic");
    }
    let refusals = refusals.lock().expect("not poisoned").clone();
    (sold.load(Ordering::Relaxed), refusals)
}

/// The campaign as the API shows it, once no unit is in flight between shards.
async fn settled(app: &TestApp, id: &str) -> Value {
    let started = Instant::now();
    loop {
        let state = app.campaign_json(id).await;
        let units = |f: &str| state[f].as_u64().unwrap_or_default();
        if units("available") + units("held") + units("confirmed") == units("stock") {
            return state;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "units still in flight: {state}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn skewed_users_still_buy_the_whole_stock(backend: Backend, shards: u8) {
    let app = spawn_app(backend).await;
    let stock = 120;
    let id = app.campaign(stock, 1, json!({"shards": shards})).await;
    assert_eq!(app.campaign_json(&id).await["shards"], shards);
    // One user first, with a key the store will later send for someone else.
    let key = unique_id("key");
    let anchor = app
        .reserve_with(&id, &app.store_token, &key, &json!({"user_id": "anchor"}))
        .await;
    assert_eq!(anchor.status(), 201);
    let users = skewed_users(&unique_id("u"), shards, 300);
    let (sold, refusals) = everyone_tries(&[&app], &id, users).await;
    assert_eq!(sold + 1, stock, "every unit sold, and none twice");
    assert!(
        refusals.iter().all(|code| code == "sold_out"),
        "only sold_out refusals: {refusals:?}"
    );
    let state = settled(&app, &id).await;
    assert_eq!(
        (
            &state["stock"],
            &state["available"],
            &state["held"],
            &state["status"]
        ),
        (&json!(stock), &json!(0), &json!(stock), &json!("sold_out")),
        "{state}"
    );
    // Sold out means every shard: users of every shard are refused.
    for user in skewed_users(&unique_id("late"), shards, 10) {
        let answer = app.reserve(&id, &user, 1).await;
        assert_eq!(answer.status(), 409, "{user}");
    }
    // A store's key reused for another user is refused as reused, whatever shard either
    // user hashes to.
    let reused = app
        .reserve_with(
            &id,
            &app.store_token,
            &key,
            &json!({"user_id": "someone-else"}),
        )
        .await;
    assert_eq!(reused.status(), 422, "{:?}", reused.text().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skewed_users_still_buy_the_whole_stock_in_memory() {
    skewed_users_still_buy_the_whole_stock(Backend::Memory, 4).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skewed_users_still_buy_the_whole_stock_on_redis() {
    skewed_users_still_buy_the_whole_stock(Backend::Redis, 4).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skewed_users_still_buy_the_whole_stock_on_a_cluster() {
    skewed_users_still_buy_the_whole_stock(Backend::Cluster, 6).await
}

/// Every shard's transfer state, read straight from Redis.
async fn shard_states<E: ShardOps>(engine: &E, id: &str, shards: u8) -> Vec<ShardState> {
    let id = CampaignId::parse(id).expect("valid");
    let mut states = Vec::new();
    for k in 0..shards {
        let state = engine
            .shard_state(&id.shard(k))
            .await
            .expect("answers")
            .expect("the shard exists");
        states.push(state);
    }
    states
}

/// Two instances on one namespace and one database, racing to refill the hot shard.
async fn two_instances_race_transfers<E: ShardOps>(instances: [TestApp; 2], engine: E, shards: u8) {
    let stock = 300;
    let id = instances[0]
        .campaign(stock, 1, json!({"shards": shards, "hold_seconds": 5}))
        .await;
    let users = skewed_users(&unique_id("u"), shards, 800);
    // (A wave lasts well under the 5 s holds, even on a loaded machine: no unit comes back
    // during it.)
    let (sold, _) = everyone_tries(&[&instances[0], &instances[1]], &id, users).await;
    assert_eq!(sold, stock, "every unit sold once");
    // Every hold expires (5 s) and the units go back; a second wave buys them all again.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let state = settled(&instances[1], &id).await;
    assert_eq!(state["available"], json!(stock), "{state}");
    let users = skewed_users(&unique_id("v"), shards, 800);
    let (again, _) = everyone_tries(&[&instances[1], &instances[0]], &id, users).await;
    assert_eq!(again, stock, "every returned unit sold once");
    let states = shard_states(&engine, &id, shards).await;
    assert!(
        states.iter().all(|s| s.outgoing == 0),
        "no transfer left open: {states:?}"
    );
    assert_eq!(states.iter().map(|s| s.stock).sum::<u64>(), stock);
    assert_eq!(states[0].total, Some(stock));
    tokio::time::sleep(Duration::from_secs(7)).await;
    let breaches = invariant_breaches(&instances[0], &id, stock as i64).await;
    assert!(breaches.is_empty(), "{breaches:?}");
    let drift = instances[0].settled_drift().await;
    assert!(drift.is_empty(), "engine and database disagree: {drift:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_racing_transfers_on_redis_sell_each_unit_once() {
    let namespace = unique_id("ns");
    let database = fresh_postgres_schema().await;
    let tune = |c: &mut flashsale::config::Config| {
        c.redis_namespace = namespace.clone();
        c.database_url = Some(database.clone());
    };
    let instances = [
        spawn_app_with(Backend::Redis, tune).await,
        spawn_app_with(Backend::Redis, tune).await,
    ];
    let engine = RedisEngine::connect_in(&redis_url(), &namespace)
        .await
        .expect("connects");
    two_instances_race_transfers(instances, engine, 4).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_racing_transfers_on_a_cluster_sell_each_unit_once() {
    let namespace = unique_id("ns");
    let database = fresh_postgres_schema().await;
    let tune = |c: &mut flashsale::config::Config| {
        c.redis_url = None;
        c.redis_cluster_nodes = redis_cluster_nodes();
        c.redis_namespace = namespace.clone();
        c.database_url = Some(database.clone());
    };
    let instances = [
        spawn_app_with(Backend::Cluster, tune).await,
        spawn_app_with(Backend::Cluster, tune).await,
    ];
    let engine = RedisEngine::connect_cluster(&redis_cluster_nodes(), &namespace)
        .await
        .expect("connects");
    two_instances_race_transfers(instances, engine, 6).await
}

/// An instance killed (SIGKILL) while it moves units leaves no unit lost or made: a transfer
/// taken and never given (its mover dead) is completed by another instance's reaper, and a
/// burst whose instance dies sells, through the other, exactly the campaign's stock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_killed_mid_transfer_loses_and_makes_no_unit() {
    use crate::processes::{ADMIN, STORE};
    let namespace = unique_id("ns");
    let database = fresh_postgres_schema().await;
    let redis = redis_url();
    let env = [
        ("FLASHSALE_REDIS_URL", redis.as_str()),
        ("FLASHSALE_REDIS_NAMESPACE", namespace.as_str()),
        ("FLASHSALE_DATABASE_URL", database.as_str()),
        ("FLASHSALE_REAPER_INTERVAL_MS", "100"),
        ("FLASHSALE_PERSIST_RECLAIM_MS", "500"),
    ];
    let mut doomed = Service::start_with(free_port(), &env);
    let survivor = Service::start_with(free_port(), &env);
    let client = reqwest::Client::new();
    let (shards, stock) = (4u8, 400u64);
    let id = unique_id("c");
    let created = client
        .post(format!("{}/v1/campaigns", survivor.address))
        .bearer_auth(ADMIN)
        .json(
            &json!({"id": id, "kind": "flash_sale", "sku": "s", "stock": stock,
            "per_user_limit": 1, "shards": shards}),
        )
        .send()
        .await
        .expect("sent");
    assert_eq!(created.status(), 201);
    let engine = RedisEngine::connect_in(&redis, &namespace)
        .await
        .expect("connects");
    let campaign = CampaignId::parse(&id).expect("valid");

    // A mover that died between taking units off shard 1 and giving them to shard 0.
    let taken = engine
        .take_units(
            &campaign.shard(1),
            &Transfer {
                id: "x-dead-mover".into(),
                to: 0,
                want: 30,
                least: 1,
                now: flashsale::domain::Millis::now(),
            },
        )
        .await
        .expect("takes");
    assert_eq!(taken, 30);
    let completed = Instant::now();
    loop {
        let states = shard_states(&engine, &id, shards).await;
        if states.iter().all(|s| s.outgoing == 0) {
            assert_eq!(states[0].stock, stock / 4 + 30, "{states:?}");
            assert_eq!(states.iter().map(|s| s.stock).sum::<u64>(), stock);
            break;
        }
        assert!(
            completed.elapsed() < Duration::from_secs(10),
            "the dead mover's transfer was never completed: {states:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A burst of skewed users (shard 0 keeps running dry) on the doomed instance, killed
    // mid-way; then the rest through the survivor until the campaign is sold out.
    let target = |service: &Service| vec![(service.address.clone(), STORE.to_owned())];
    let first_wave = skewed_users(&unique_id("u"), shards, 400);
    let burst = {
        let (targets, id) = (target(&doomed), id.clone());
        tokio::spawn(async move { everyone_tries_at(targets, &id, first_wave).await })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    doomed.kill();
    let _ = burst.await;
    let second_wave = skewed_users(&unique_id("v"), shards, 600);
    let (_, refusals) = everyone_tries_at(target(&survivor), &id, second_wave).await;
    assert!(
        refusals.iter().any(|code| code == "sold_out"),
        "the campaign sold out"
    );
    let settled = Instant::now();
    loop {
        let states = shard_states(&engine, &id, shards).await;
        let sum: u64 = states.iter().map(|s| s.stock + s.outgoing).sum();
        assert_eq!(sum, stock, "no unit lost or made: {states:?}");
        if states.iter().all(|s| s.outgoing == 0 && s.available == 0) {
            break;
        }
        assert!(
            settled.elapsed() < Duration::from_secs(10),
            "transfers left open: {states:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The database counts exactly the stock as sold (once the persisters caught up).
    let flashsale::store::Store::Postgres(pool) =
        flashsale::store::Store::connect(Some(&database), "unused")
            .await
            .expect("connects")
    else {
        panic!("Postgres");
    };
    let caught_up = Instant::now();
    loop {
        let (units,): (i64,) = sqlx::query_as(
            "SELECT CAST(COALESCE(SUM(quantity), 0) AS BIGINT) FROM reservations \
             WHERE campaign_id = $1 AND status IN ('held', 'confirmed')",
        )
        .bind(&id)
        .fetch_one(&pool)
        .await
        .expect("query");
        if units == stock as i64 {
            break;
        }
        assert!(units < stock as i64, "oversold in the database: {units}");
        assert!(
            caught_up.elapsed() < Duration::from_secs(15),
            "the database counts {units} of {stock}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Each shard's load epoch as the database records it (shard 0's is the campaign's).
async fn shard_epochs(app: &TestApp, id: &str, shards: u8) -> Vec<String> {
    let flashsale::store::Store::Postgres(pool) = &app.store else {
        panic!("this test runs on Postgres");
    };
    let campaign = CampaignId::parse(id).expect("valid");
    let mut epochs = Vec::new();
    for k in 0..shards {
        let sql = if k == 0 {
            "SELECT engine_epoch FROM campaigns WHERE id = $1"
        } else {
            "SELECT engine_epoch FROM campaign_shards WHERE id = $1"
        };
        let (epoch,): (Option<String>,) = sqlx::query_as(sql)
            .bind(campaign.shard(k).as_str())
            .fetch_one(pool)
            .await
            .expect("query");
        epochs.push(epoch.expect("loaded"));
    }
    epochs
}

/// A cluster node killed and restarted empty mid-burst loses the shards it served only:
/// they are rebuilt from the database — their reservations, and as stock what the campaign's
/// total leaves after the shards that survived — each under a new epoch, while the shards on
/// other nodes keep theirs and everything they decided. Twice over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_node_lost_mid_burst_loses_only_its_shards_and_no_unit() {
    let mut cluster = RedisCluster::start();
    let namespace = unique_id("ns");
    let instances = two_instances_on(&cluster, &namespace).await;
    let (shards, stock, hold_seconds) = (6u8, 1_000_000u64, 3);
    // A campaign with shards on at least two nodes.
    let (id, nodes) = loop {
        let id = instances[0]
            .campaign(
                stock,
                1,
                json!({"shards": shards, "hold_seconds": hold_seconds}),
            )
            .await;
        let campaign = CampaignId::parse(&id).expect("valid");
        let nodes: Vec<usize> = (0..shards)
            .map(|k| cluster.owner(&format!("{{c:{}}}", campaign.shard(k))))
            .collect();
        if nodes.iter().any(|&node| node != nodes[0]) {
            break (id, nodes);
        }
    };
    // Lose a node that serves some shards and not shard 0.
    let lost_node = *nodes
        .iter()
        .find(|&&node| node != nodes[0])
        .expect("another node");
    let before = shard_epochs(&instances[0], &id, shards).await;
    for round in 0..2 {
        let workers = retrying_burst(&instances, std::slice::from_ref(&id), round);
        tokio::time::sleep(Duration::from_millis(800)).await;
        cluster.nodes[lost_node].kill();
        tokio::time::sleep(Duration::from_millis(300)).await;
        cluster.nodes[lost_node].restart(); // empty: no persistence
        for worker in workers {
            worker.await.expect("no panic");
        }
    }
    tokio::time::sleep(Duration::from_secs(hold_seconds + 4)).await;
    let breaches = invariant_breaches(&instances[0], &id, stock as i64).await;
    assert!(breaches.is_empty(), "after two node losses: {breaches:?}");
    let drift = instances[0].settled_drift().await;
    assert!(drift.is_empty(), "engine and database disagree: {drift:?}");
    let state = settled(&instances[0], &id).await;
    assert_eq!(
        state["stock"],
        json!(stock),
        "no unit lost or made: {state}"
    );
    let after = shard_epochs(&instances[0], &id, shards).await;
    for k in 0..usize::from(shards) {
        if nodes[k] == lost_node {
            assert_ne!(after[k], before[k], "shard {k} (lost) was rebuilt");
        } else {
            assert_eq!(after[k], before[k], "shard {k} (kept) was not");
        }
    }
}

/// Twenty buyers at once asking 3 units each of a campaign with 16 shards and 10 units, twelve
/// rounds: every round sells 3 reservations (9 units) and refuses the rest `sold_out` only
/// because one unit cannot serve 3 — never while 3 are left somewhere (contract v1.2). A lone
/// 3-unit attempt afterwards is refused too, and a 1-unit one gets the last unit.
async fn quantities_above_one_gather_units_from_every_shard(backend: Backend) {
    let app = spawn_app(backend).await;
    for round in 0..12 {
        let id = app.campaign(10, 3, json!({"shards": 16})).await;
        let attempts: Vec<_> = (0..20)
            .map(|i| {
                let client = app.client.clone();
                let url = app.url(&format!("/v1/campaigns/{id}/reservations"));
                let token = app.store_token.clone();
                tokio::spawn(async move {
                    let response = client
                        .post(url)
                        .bearer_auth(token)
                        .header("Idempotency-Key", format!("q3-{round}-{i}"))
                        .json(&json!({"user_id": format!("buyer-{i}"), "quantity": 3}))
                        .send()
                        .await
                        .expect("sent");
                    let status = response.status().as_u16();
                    let body: Value = response.json().await.expect("json");
                    (status, body)
                })
            })
            .collect();
        let mut sold = 0;
        for attempt in attempts {
            let (status, body) = attempt.await.expect("no panic");
            match status {
                201 => sold += 1,
                409 => assert_eq!(body["code"], "sold_out", "{body}"),
                other => panic!("round {round}: {other} {body}"),
            }
        }
        assert_eq!(sold, 3, "round {round}: 9 of 10 units sell in threes");
        let lone = app
            .reserve_with(
                &id,
                &app.store_token,
                &unique_id("lone"),
                &json!({"user_id": "lone", "quantity": 3}),
            )
            .await;
        assert_eq!(lone.status(), 409, "round {round}: one unit cannot serve 3");
        let last = app
            .reserve_with(
                &id,
                &app.store_token,
                &unique_id("last"),
                &json!({"user_id": "last", "quantity": 1}),
            )
            .await;
        assert_eq!(last.status(), 201, "round {round}: the last unit sells");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quantities_above_one_gather_units_from_every_shard_in_memory() {
    quantities_above_one_gather_units_from_every_shard(Backend::Memory).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quantities_above_one_gather_units_from_every_shard_on_redis() {
    quantities_above_one_gather_units_from_every_shard(Backend::Redis).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quantities_above_one_gather_units_from_every_shard_on_a_cluster() {
    quantities_above_one_gather_units_from_every_shard(Backend::Cluster).await
}
