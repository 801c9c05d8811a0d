//! Reserve on both engines, with a baseline from the same run.
//!
//! `cargo bench --bench engine` (needs Redis at `FLASHSALE_BENCH_REDIS_URL`, default
//! 127.0.0.1:6379). Groups:
//! - `reserve_success`: every attempt reserves (huge stock), on the in-memory engine, on the
//!   Redis engine, and a bare Redis `PING` round trip as the floor the Redis engine stands on;
//! - `reserve_sold_out`: every attempt is refused, by the Redis engine and by the sold-out gate
//!   in front of it (no round trip);
//! - `memory_contended`: the in-memory engine with one task per core, all on one hot campaign
//!   against each on a campaign of its own;
//! - `redis_connections`: 64 concurrent reserves through one multiplexed connection (what the
//!   engine uses) against a deadpool-redis pool of 16 connections, same script, same Redis;
//! - `codec`: decoding a reservation request body and encoding a reservation (serde_json).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use flashsale::domain::{
    Campaign, CampaignDraft, IdempotencyKey, Millis, Quantity, ReservationId, ScopedKey, UserId,
};
use flashsale::engine::{
    Backend, CampaignSnapshot, Engine, MemoryEngine, RedisEngine, ReserveOutcome, ReserveRequest,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn redis_url() -> String {
    std::env::var("FLASHSALE_BENCH_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn campaign(stock: u64) -> Campaign {
    let draft = CampaignDraft {
        id: None,
        kind: "flash_sale".into(),
        sku: "bench".into(),
        stock,
        per_user_limit: Some(1_000_000),
        starts_at: None,
        ends_at: None,
        hold_seconds: Some(3600),
        max_extend_seconds: None,
        group: None,
        queue: None,
        shards: None,
    };
    Campaign::parse(draft, Millis::now()).expect("valid campaign")
}

/// A fresh attempt each call: a new key, rotating over 10,000 users.
fn attempt(campaign: &Campaign, counter: &AtomicU64) -> ReserveRequest {
    let n = counter.fetch_add(1, Ordering::Relaxed);
    let user = UserId::parse(&format!("user-{}", n % 10_000)).expect("valid user");
    let quantity = Quantity::parse(1).expect("valid quantity");
    let key = IdempotencyKey::parse(&format!("bench-{n}")).expect("valid key");
    ReserveRequest::new(
        campaign.id.clone(),
        user,
        quantity,
        ScopedKey::new("s/bench", "reserve", &key),
        Millis::now(),
    )
}

fn bench_reserve(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let redis = runtime
        .block_on(RedisEngine::connect(&redis_url()))
        .expect("the engine bench needs Redis (FLASHSALE_BENCH_REDIS_URL)");
    let engines: Vec<(&str, Arc<Engine>)> = vec![
        ("memory", Arc::new(Engine::ungated(MemoryEngine::new()))),
        ("redis", Arc::new(Engine::ungated(redis.clone()))),
    ];
    let counter = Arc::new(AtomicU64::new(0));

    let mut group = c.benchmark_group("reserve_success");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(5));
    for (name, engine) in &engines {
        let hot = campaign(Campaign::MAX_STOCK);
        runtime
            .block_on(engine.load(CampaignSnapshot::fresh(&hot)))
            .expect("created");
        group.bench_function(*name, |b| {
            b.to_async(&runtime).iter(|| {
                let request = attempt(&hot, &counter);
                let engine = Arc::clone(engine);
                async move {
                    let outcome = engine.reserve(&request).await.expect("answers");
                    assert!(matches!(outcome, ReserveOutcome::Reserved { .. }));
                }
            })
        });
    }
    group.bench_function("redis_ping_floor", |b| {
        b.to_async(&runtime).iter(|| {
            let engine = redis.clone();
            async move { engine.ping().await.expect("pong") }
        })
    });
    group.finish();

    let mut group = c.benchmark_group("reserve_sold_out");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(5));
    let gated = Engine::new(redis.clone());
    let refusers: Vec<(&str, Arc<Engine>)> = vec![
        ("redis", Arc::new(Engine::ungated(redis.clone()))),
        ("gated_redis", Arc::new(gated.clone())),
    ];
    for (name, engine) in &refusers {
        let sold = campaign(1);
        runtime.block_on(async {
            engine
                .load(CampaignSnapshot::fresh(&sold))
                .await
                .expect("created");
            engine
                .reserve(&attempt(&sold, &counter))
                .await
                .expect("answers");
            engine
                .reserve(&attempt(&sold, &counter))
                .await
                .expect("answers");
            tokio::time::sleep(Duration::from_millis(100)).await;
        });
        group.bench_function(*name, |b| {
            b.to_async(&runtime).iter(|| {
                let request = attempt(&sold, &counter);
                let engine = Arc::clone(engine);
                async move {
                    let outcome = engine.reserve(&request).await.expect("answers");
                    assert!(matches!(outcome, ReserveOutcome::Refused(_)));
                }
            })
        });
    }
    group.finish();
}

/// `tasks` concurrent tasks each doing `per_task` reserves; the total time.
async fn concurrent(
    engines: Vec<(Arc<Engine>, Campaign)>,
    per_task: u64,
    counter: Arc<AtomicU64>,
) -> Duration {
    let started = std::time::Instant::now();
    let tasks: Vec<_> = engines
        .into_iter()
        .map(|(engine, campaign)| {
            let counter = Arc::clone(&counter);
            tokio::spawn(async move {
                for _ in 0..per_task {
                    engine
                        .reserve(&attempt(&campaign, &counter))
                        .await
                        .expect("answers");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("no panic");
    }
    started.elapsed()
}

fn bench_contention(c: &mut Criterion) {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .enable_all()
        .build()
        .expect("runtime");
    let counter = Arc::new(AtomicU64::new(0));
    let mut group = c.benchmark_group("memory_contended");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(5));
    let engine: Arc<Engine> = Arc::new(Engine::ungated(MemoryEngine::new()));
    let hot = campaign(Campaign::MAX_STOCK);
    let own: Vec<Campaign> = (0..cores).map(|_| campaign(Campaign::MAX_STOCK)).collect();
    runtime.block_on(async {
        engine
            .load(CampaignSnapshot::fresh(&hot))
            .await
            .expect("created");
        for c in &own {
            engine
                .load(CampaignSnapshot::fresh(c))
                .await
                .expect("created");
        }
    });
    group.bench_function(format!("one_hot_campaign_{cores}_tasks"), |b| {
        b.to_async(&runtime).iter_custom(|iters| {
            let engines = (0..cores)
                .map(|_| (Arc::clone(&engine), hot.clone()))
                .collect();
            concurrent(engines, iters.div_ceil(cores as u64), Arc::clone(&counter))
        })
    });
    group.bench_function(format!("campaign_per_task_{cores}_tasks"), |b| {
        b.to_async(&runtime).iter_custom(|iters| {
            let engines = own
                .iter()
                .map(|c| (Arc::clone(&engine), c.clone()))
                .collect();
            concurrent(engines, iters.div_ceil(cores as u64), Arc::clone(&counter))
        })
    });
    group.finish();
}

fn bench_connections(c: &mut Criterion) {
    const TASKS: u64 = 64;
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    // Leaked: invocations borrow the script and move into spawned tasks (bench only).
    let script: &'static redis::Script = Box::leak(Box::new(redis::Script::new(
        &flashsale::engine::redis::scripts::with_lib(include_str!(
            "../../src/engine/redis/scripts/reserve.lua"
        ))
        .expect("the lib folds"),
    )));
    let namespace = format!(
        "bench-conn-{}",
        ulid::Ulid::new().to_string().to_lowercase()
    );
    let key = format!("{namespace}:{{c:conn}}");
    let (multiplexed, pool) = runtime.block_on(async {
        let client = redis::Client::open(redis_url()).expect("url");
        let multiplexed = client
            .get_multiplexed_async_connection()
            .await
            .expect("redis");
        let pool = deadpool_redis::Config::from_url(redis_url())
            .builder()
            .expect("pool config")
            .max_size(16)
            .runtime(deadpool_redis::Runtime::Tokio1)
            .build()
            .expect("pool");
        let mut connection = multiplexed.clone();
        let () = redis::cmd("HSET")
            .arg(&key)
            .arg(&[
                "kind",
                "flash_sale",
                "starts",
                "",
                "ends",
                "",
                "limit",
                "1000000000",
                "hold",
                "900",
            ])
            .arg(&["available", "1000000000000", "held", "0", "records", "0"])
            .query_async(&mut connection)
            .await
            .map(|_: i64| ())
            .expect("campaign hash");
        (multiplexed, pool)
    });
    let counter = Arc::new(AtomicU64::new(0));
    let invocation = |n: u64| {
        let mut invocation = script.prepare_invoke();
        invocation
            .key(&key)
            .key(format!("{key}:exp"))
            .key(format!("{key}:events"))
            .key(format!("{key}:recs"))
            .key(format!("{key}:rs"))
            .arg(0)
            .arg(Millis::now().0)
            .arg(format!("user-{n}"))
            .arg(1)
            .arg(format!("key-{n}"))
            .arg("fp")
            .arg(format!("r-{n}"));
        invocation
    };
    let mut group = c.benchmark_group("redis_connections");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("multiplexed_64_tasks", |b| {
        b.to_async(&runtime).iter_custom(|iters| {
            let started = std::time::Instant::now();
            let tasks: Vec<_> = (0..TASKS)
                .map(|_| {
                    let mut connection = multiplexed.clone();
                    let counter = Arc::clone(&counter);
                    let calls: Vec<_> = (0..iters.div_ceil(TASKS))
                        .map(|_| invocation(counter.fetch_add(1, Ordering::Relaxed)))
                        .collect();
                    tokio::spawn(async move {
                        for call in calls {
                            let _: Vec<Vec<String>> =
                                call.invoke_async(&mut connection).await.expect("reserve");
                        }
                    })
                })
                .collect();
            async move {
                for task in tasks {
                    task.await.expect("no panic");
                }
                started.elapsed()
            }
        })
    });
    group.bench_function("deadpool_16_connections_64_tasks", |b| {
        b.to_async(&runtime).iter_custom(|iters| {
            let started = std::time::Instant::now();
            let tasks: Vec<_> = (0..TASKS)
                .map(|_| {
                    let pool = pool.clone();
                    let counter = Arc::clone(&counter);
                    let calls: Vec<_> = (0..iters.div_ceil(TASKS))
                        .map(|_| invocation(counter.fetch_add(1, Ordering::Relaxed)))
                        .collect();
                    tokio::spawn(async move {
                        for call in calls {
                            let mut connection = pool.get().await.expect("pooled connection");
                            let _: Vec<Vec<String>> =
                                call.invoke_async(&mut *connection).await.expect("reserve");
                        }
                    })
                })
                .collect();
            async move {
                for task in tasks {
                    task.await.expect("no panic");
                }
                started.elapsed()
            }
        })
    });
    group.finish();
    runtime.block_on(async {
        let mut connection = multiplexed.clone();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{namespace}:*"))
            .query_async(&mut connection)
            .await
            .unwrap_or_default();
        for chunk in keys.chunks(1000) {
            let _: Result<i64, _> = redis::cmd("UNLINK")
                .arg(chunk)
                .query_async(&mut connection)
                .await;
        }
    });
}

/// The shape of the reservation request body (`http::reservations::NewReservation`).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // read by serde only: the bench measures the decode
struct NewReservation {
    user_id: Option<String>,
    quantity: Option<u64>,
}

fn bench_codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Elements(1));
    let body = br#"{"user_id":"user-123456","quantity":1}"#;
    group.bench_function("decode_reservation_request", |b| {
        b.iter(|| {
            serde_json::from_slice::<NewReservation>(std::hint::black_box(body)).expect("decodes")
        })
    });
    let hot = campaign(10);
    let reservation = flashsale::domain::Reservation {
        id: ReservationId::generate(&hot.id),
        campaign_id: hot.id.clone(),
        user_id: UserId::parse("user-123456").expect("valid"),
        quantity: Quantity::ONE,
        status: flashsale::domain::ReservationStatus::Held,
        created_at: Millis::now(),
        expires_at: Millis::now().plus_seconds(900),
        group_id: None,
    };
    group.bench_function("encode_reservation", |b| {
        b.iter(|| serde_json::to_vec(std::hint::black_box(&reservation)).expect("encodes"))
    });
    group.finish();
}

criterion_group!(
    benches,
    bench_reserve,
    bench_contention,
    bench_connections,
    bench_codec
);
criterion_main!(benches);
