//! Persistence throughput: the persister's transaction (events + reservation upserts, one
//! batch of 1,000 events) against a plain `COPY` of the same event rows into a bare table,
//! both on the real Postgres in the same run.
//!
//! `cargo bench --bench persist` (Postgres at `FLASHSALE_BENCH_DATABASE_URL`, default
//! postgres://postgres@127.0.0.1:5432/test; a fresh schema per run).

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use flashsale::domain::{
    Campaign, CampaignDraft, Change, Event, Millis, Quantity, Reservation, ReservationId,
    ReservationStatus, ScopedKey, StreamPosition, UserId,
};
use flashsale::store::Store;
use sqlx::Connection;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

const BATCH: usize = 1_000;

fn database_url() -> String {
    std::env::var("FLASHSALE_BENCH_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn batch(campaign: &Campaign, next: &AtomicI64) -> Vec<Event> {
    (0..BATCH)
        .map(|_| {
            let seq = next.fetch_add(1, Ordering::Relaxed);
            let now = Millis::now();
            Event {
                campaign_id: campaign.id.clone(),
                position: StreamPosition {
                    ms: 1,
                    seq,
                    index: 0,
                },
                at: now,
                change: Change::Reservation {
                    reservation: Reservation {
                        id: ReservationId::generate(&campaign.id),
                        campaign_id: campaign.id.clone(),
                        user_id: UserId::parse(&format!("user-{}", seq % 10_000)).expect("valid"),
                        quantity: Quantity::ONE,
                        status: ReservationStatus::Held,
                        created_at: now,
                        expires_at: now.plus_seconds(900),
                        group_id: None,
                    },
                    idempotency: Some((
                        ScopedKey::from_stored(format!("s/bench:{seq}")),
                        format!("1:user-{seq}"),
                    )),
                },
            }
        })
        .collect()
}

/// The same rows as the persister's `events` insert, as COPY's CSV.
fn csv(events: &[Event]) -> Vec<u8> {
    let mut out = String::with_capacity(events.len() * 300);
    for e in events {
        let Change::Reservation { reservation, .. } = &e.change else {
            continue;
        };
        let payload = serde_json::json!({ "reservation": reservation })
            .to_string()
            .replace('"', "\"\"");
        out.push_str(&format!(
            "{},{},{},{},\"{payload}\"\n",
            e.campaign_id,
            e.position,
            e.change.kind(),
            e.at.0
        ));
    }
    out.into_bytes()
}

fn bench_persist(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let schema = format!("bench_{}", ulid::Ulid::new().to_string().to_lowercase());
    let url = format!("{}?options=-csearch_path%3D{schema}", database_url());
    let (store, mut copy_connection, campaign) = runtime.block_on(async {
        let mut admin = sqlx::PgConnection::connect(&database_url()).await.expect("the persist bench needs Postgres");
        sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&mut admin).await.expect("schema");
        let store = Store::connect(Some(&url), "unused.db").await.expect("store");
        let mut copy = sqlx::PgConnection::connect(&url).await.expect("connects");
        sqlx::query("CREATE TABLE copy_events (campaign_id TEXT, stream_id TEXT, type TEXT, at_ms BIGINT, payload TEXT)")
            .execute(&mut copy)
            .await
            .expect("table");
        let draft = CampaignDraft {
            id: None,
            kind: "flash_sale".into(),
            sku: "bench".into(),
            stock: 1_000_000_000,
            per_user_limit: Some(1_000_000),
            starts_at: None,
            ends_at: None,
            hold_seconds: None,
            max_extend_seconds: None,
            group: None,
            queue: None,
            shards: None,
        };
        let campaign = Campaign::parse(draft, Millis::now()).expect("valid");
        store
            .insert_campaign(&campaign, "bench")
            .await
            .expect("inserted");
        (store, copy, campaign)
    });
    let next = AtomicI64::new(1);
    let epochs = flashsale::engine::Epochs::one(&campaign.id, "bench");
    let mut group = c.benchmark_group("persist_batch_1000");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("persister_transaction", |b| {
        b.iter_batched(
            || batch(&campaign, &next),
            |events| {
                runtime
                    .block_on(store.persist(&epochs, &events))
                    .expect("persisted")
            },
            BatchSize::PerIteration,
        )
    });
    group.bench_function("plain_copy", |b| {
        b.iter_batched(
            || csv(&batch(&campaign, &next)),
            |rows| {
                runtime.block_on(async {
                    let mut copy = copy_connection
                        .copy_in_raw("COPY copy_events FROM STDIN (FORMAT csv)")
                        .await
                        .expect("copy starts");
                    copy.send(rows).await.expect("sent");
                    copy.finish().await.expect("copied");
                })
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, bench_persist);
criterion_main!(benches);
