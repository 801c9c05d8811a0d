//! Outages of the real servers: Postgres unreachable for seconds, and Redis flushed.

use crate::helpers::{
    database_url, fresh_key, fresh_postgres_schema, json_body, redis_url, spawn_app_with,
    unique_id, Backend,
};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};

/// A TCP proxy in front of a server that the test can cut: while cut, it drops every open
/// connection and refuses new ones.
struct Proxy {
    port: u16,
    cut: Arc<AtomicBool>,
}

impl Proxy {
    async fn start(target: &'static str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let port = listener.local_addr().expect("addr").port();
        let cut = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&cut);
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if flag.load(Ordering::SeqCst) {
                    continue; // dropped: refused
                }
                let flag = Arc::clone(&flag);
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let copy = tokio::io::copy_bidirectional(&mut inbound, &mut outbound);
                    let watch = async {
                        while !flag.load(Ordering::SeqCst) {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    };
                    tokio::select! { _ = copy => {}, _ = watch => {} }
                });
            }
        });
        Proxy { port, cut }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_unreachable_for_seconds_loses_nothing() {
    let proxy = Proxy::start("127.0.0.1:5432").await;
    let direct = fresh_postgres_schema().await;
    let through_proxy = direct.replacen("127.0.0.1:5432", &format!("127.0.0.1:{}", proxy.port), 1);
    assert_ne!(
        direct,
        through_proxy,
        "the database URL must name 127.0.0.1:5432: {}",
        database_url()
    );
    let app = spawn_app_with(Backend::Redis, |c| c.database_url = Some(through_proxy)).await;
    let id = app.campaign(100_000, 100_000, json!({})).await;

    let mut acknowledged = HashSet::new();
    let reserve = |n: usize| {
        let app = &app;
        let id = id.clone();
        async move {
            let response = app.reserve(&id, &format!("u{n}"), 1).await;
            assert_eq!(response.status(), 201, "the hot path keeps serving");
            let body: Value = response.json().await.expect("json");
            body["id"].as_str().expect("id").to_owned()
        }
    };
    for n in 0..50 {
        acknowledged.insert(reserve(n).await);
    }
    proxy.cut.store(true, Ordering::SeqCst);
    let cut_at = Instant::now();
    let mut n = 50;
    let mut saw_degraded = false;
    while cut_at.elapsed() < Duration::from_secs(8) {
        acknowledged.insert(reserve(n).await);
        n += 1;
        if n % 50 == 0 {
            let ready = app
                .client
                .get(app.url("/readyz"))
                .send()
                .await
                .expect("sent");
            saw_degraded |= ready.status() == 503;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        saw_degraded,
        "/readyz says the database is down while it is"
    );
    proxy.cut.store(false, Ordering::SeqCst);

    let events = app
        .feed_when(acknowledged.len(), Duration::from_secs(30))
        .await;
    let persisted: HashSet<String> = events
        .iter()
        .map(|e| e["reservation"]["id"].as_str().expect("id").to_owned())
        .collect();
    assert_eq!(events.len(), acknowledged.len(), "each event once");
    assert_eq!(persisted, acknowledged, "nothing lost");
}

/// A Redis server of the test's own, on a free port, that it may flush.
struct OwnRedis {
    child: tokio::process::Child,
    url: String,
}

async fn own_redis() -> OwnRedis {
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
        probe.local_addr().expect("addr").port()
    };
    let child = tokio::process::Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .kill_on_drop(true)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server runs (scripts/ensure-services installs it)");
    let url = format!("redis://127.0.0.1:{port}");
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "own redis-server did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    OwnRedis { child, url }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flushed_redis_is_rebuilt_from_the_database_and_never_oversells() {
    let mut redis = own_redis().await;
    let database = fresh_postgres_schema().await;
    let namespace = unique_id("ns");
    let configure = |c: &mut flashsale::config::Config| {
        c.redis_url = Some(redis.url.clone());
        c.redis_namespace = namespace.clone();
        c.database_url = Some(database.clone());
    };
    let mut first = spawn_app_with(Backend::Redis, configure).await;
    let id = first.campaign(10, 10, json!({})).await;
    let key = fresh_key();
    let kept: Value = first
        .reserve_with(&id, &first.store_token, &key, &json!({"user_id": "keeper"}))
        .await
        .json()
        .await
        .expect("json");
    let mut ids = vec![];
    for n in 0..5 {
        let body: Value = first
            .reserve(&id, &format!("u{n}"), 1)
            .await
            .json()
            .await
            .expect("json");
        ids.push(body["id"].as_str().expect("id").to_owned());
    }
    assert_eq!(
        first.confirm(&ids[0], &first.store_token).await.status(),
        200
    );
    assert_eq!(
        first.confirm(&ids[1], &first.store_token).await.status(),
        200
    );
    assert_eq!(
        first.cancel(&ids[2], &first.store_token).await.status(),
        200
    );
    // 6 held then 2 confirmed, 1 cancelled: 3 held + 2 confirmed = 5 units taken.
    // And a group buy: one formed group of 2, one open group with one paid member of 2.
    let groups = first
        .campaign(
            6,
            1,
            json!({"kind": "group_buy", "group": {"size": 2, "window_seconds": 600}}),
        )
        .await;
    let group_of = |response: Value| response["id"].as_str().expect("group id").to_owned();
    let formed = group_of(json_body(first.open_group(&groups, "g1").await, 201).await);
    let formed_view = json_body(first.join_group(&formed, "g2").await, 201).await;
    for member in formed_view["members"].as_array().expect("members") {
        let rid = member["reservation_id"].as_str().expect("rid");
        assert_eq!(first.confirm(rid, &first.store_token).await.status(), 200);
    }
    let open_view = json_body(first.open_group(&groups, "g3").await, 201).await;
    let open = group_of(open_view.clone());
    let paid = open_view["members"][0]["reservation_id"]
        .as_str()
        .expect("rid")
        .to_owned();
    assert_eq!(first.confirm(&paid, &first.store_token).await.status(), 200);
    let before = first.campaign_json(&groups).await;
    // 9 flash-sale events, then 2 opened + 3 held + 3 confirmed + 1 formed.
    first.feed_when(18, Duration::from_secs(20)).await;
    first.stop().await.expect("stops");

    let mut connection = redis::Client::open(redis.url.as_str())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connects");
    let () = redis::cmd("FLUSHALL")
        .query_async(&mut connection)
        .await
        .expect("flushed");

    let second = spawn_app_with(Backend::Redis, configure).await;
    let campaign = second.campaign_json(&id).await;
    assert_eq!(
        (
            campaign["available"].as_u64(),
            campaign["held"].as_u64(),
            campaign["confirmed"].as_u64()
        ),
        (Some(5), Some(3), Some(2))
    );
    let replay = second
        .reserve_with(
            &id,
            &second.store_token,
            &key,
            &json!({"user_id": "keeper"}),
        )
        .await;
    assert_eq!(replay.status(), 201);
    assert_eq!(
        replay.json::<Value>().await.expect("json"),
        kept,
        "the idempotency record survived"
    );
    let mut sold = 0;
    for n in 0..12 {
        if second.reserve(&id, &format!("late-{n}"), 1).await.status() == 201 {
            sold += 1;
        }
    }
    assert_eq!(sold, 5, "exactly the units nobody holds");
    let campaign = second.campaign_json(&id).await;
    assert_eq!(campaign["available"], 0);

    let after = second.campaign_json(&groups).await;
    assert_eq!(after, before, "the group campaign comes back as it was");
    assert_eq!(
        second.join_group(&open, "g1").await.status(),
        409,
        "g1's limit survived"
    );
    assert_eq!(
        second.join_group(&open, "g4").await.status(),
        201,
        "the open group's free slot survived"
    );
    assert_eq!(
        second.join_group(&formed, "g5").await.status(),
        409,
        "a formed group stays closed"
    );
    // Once the pipeline has caught up, engine and database agree.
    let started = Instant::now();
    loop {
        let drifts = flashsale::pipeline::recovery::reconcile(&second.engine, &second.store)
            .await
            .expect("reconciles");
        if drifts.is_empty() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "{drifts:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    redis.child.kill().await.expect("stopped");
}

/// A campaign whose create script ran but whose entry in the campaign index is gone (the
/// `SADD` after the script failed) is listed again when it next leaves the work index's
/// active list (a lease ends 10 s after the last change), so a pass that must visit every
/// campaign (after the work index was lost) finds it. Background work never needed the
/// campaign index: the active list has every campaign that changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_missing_from_the_index_is_listed_again() {
    let namespace = unique_id("ns");
    let app = spawn_app_with(Backend::Redis, |c| c.redis_namespace = namespace.clone()).await;
    let id = app.campaign(5, 1, json!({})).await;
    let mut redis = redis::Client::open(redis_url())
        .expect("valid url")
        .get_multiplexed_async_connection()
        .await
        .expect("the test needs Redis");
    let index = format!("{namespace}:campaigns");
    let removed: i64 = redis::cmd("SREM")
        .arg(&index)
        .arg(&id)
        .query_async(&mut redis)
        .await
        .expect("answers");
    assert_eq!(removed, 1);
    assert_eq!(app.reserve(&id, "u1", 1).await.status(), 201);

    let started = Instant::now();
    loop {
        let listed: bool = redis::cmd("SISMEMBER")
            .arg(&index)
            .arg(&id)
            .query_async(&mut redis)
            .await
            .expect("answers");
        if listed {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the campaign stayed out of the index"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Instances that find the same campaign lost rebuild it at once; whichever load the engine
/// takes, the database records that load's epoch (a rebuild holds the campaign's row until
/// its load is done), so the campaign's events are never fenced out by a stray epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuilds_racing_on_one_lost_campaign_leave_engine_and_database_on_one_load() {
    use flashsale::pipeline::recovery::{restore_all, LossWatch};
    let namespace = unique_id("ns");
    let app = spawn_app_with(Backend::Redis, |c| c.redis_namespace = namespace.clone()).await;
    let mut redis = redis::Client::open(redis_url())
        .expect("valid url")
        .get_multiplexed_async_connection()
        .await
        .expect("the test needs Redis");
    for round in 0..5 {
        let id = app.campaign(5, 1, json!({})).await;
        assert_eq!(
            app.reserve(&id, &format!("u{round}"), 1).await.status(),
            201
        );
        let hash = format!("{namespace}:v3:{{c:{id}}}");
        // Lost, as a Redis node that restarted empty loses it.
        let _: i64 = redis::cmd("DEL")
            .arg(&hash)
            .query_async(&mut redis)
            .await
            .expect("answers");
        let racers: Vec<_> = (0..8)
            .map(|_| {
                let (engine, store) = (app.engine.clone(), app.store.clone());
                tokio::spawn(
                    async move { restore_all(&engine, &store, &LossWatch::immediate()).await },
                )
            })
            .collect();
        for racer in racers {
            racer.await.expect("no panic").expect("rebuilds");
        }
        let engine_epoch: Option<String> = redis::cmd("HGET")
            .arg(&hash)
            .arg("epoch")
            .query_async(&mut redis)
            .await
            .expect("answers");
        let database_epoch = app.engine_epoch(&id).await;
        assert!(engine_epoch.is_some(), "rebuilt");
        assert_eq!(engine_epoch, database_epoch, "round {round}");
    }
}
