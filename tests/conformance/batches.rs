//! Group commit: attempts decided together by one call of `reserve.lua` are answered exactly
//! as the same attempts decided one by one. The reference is the embedded engine, which
//! decides each attempt alone; the interleavings are the ones batching creates (a replay
//! and its original in one batch, a key reused with another body, the limit or the stock
//! reached mid-batch, a batch spanning the window's end), then random batches.

use crate::engines::{attempt, campaign, created_in, redis};
use flashsale::domain::Refusal;
use flashsale::domain::{Campaign, Millis};
use flashsale::engine::{
    Decisions, MemoryEngine, Reads, ReserveOutcome, ReserveRequest, StockOutcome,
};
use proptest::prelude::*;

/// Decides `requests` as one Redis batch and one by one on the embedded engine; both must
/// answer the same and leave the same counts and events.
async fn same_as_one_by_one(
    campaign: &Campaign,
    requests: &[ReserveRequest],
) -> Vec<ReserveOutcome> {
    let redis = redis().await;
    created_in(&redis, campaign).await;
    let memory = MemoryEngine::new();
    created_in(&memory, campaign).await;
    let batched = redis.reserve_batch(requests).await.expect("redis answers");
    let mut one_by_one = Vec::new();
    for request in requests {
        one_by_one.push(memory.reserve(request).await.expect("memory answers"));
    }
    assert_eq!(
        batched, one_by_one,
        "a batch answered otherwise than one by one"
    );
    let redis_state = redis.campaign(&campaign.id).await.expect("answers");
    let memory_state = memory.campaign(&campaign.id).await.expect("answers");
    assert_eq!(redis_state, memory_state);
    batched
}

fn reserved(outcome: &ReserveOutcome) -> bool {
    matches!(outcome, ReserveOutcome::Reserved { .. })
}

#[tokio::test]
async fn a_replay_and_its_original_in_one_batch() {
    let c = campaign(10, 5, |_| {});
    let now = Millis::now();
    let original = attempt(&c, "ann", 1, "k1", now);
    let again = attempt(&c, "ann", 1, "k1", now);
    let answers = same_as_one_by_one(&c, &[original.clone(), again]).await;
    assert!(reserved(&answers[0]));
    let ReserveOutcome::Replayed(replayed) = &answers[1] else {
        panic!("the second is a replay: {:?}", answers[1]);
    };
    assert_eq!(replayed.id, original.reservation_id);
}

#[tokio::test]
async fn a_key_reused_with_another_body_in_one_batch() {
    let c = campaign(10, 5, |_| {});
    let now = Millis::now();
    let answers = same_as_one_by_one(
        &c,
        &[
            attempt(&c, "ann", 1, "k1", now),
            attempt(&c, "ann", 2, "k1", now),
            attempt(&c, "bob", 1, "k1", now),
        ],
    )
    .await;
    assert!(reserved(&answers[0]));
    assert_eq!(answers[1], ReserveOutcome::KeyReused);
    assert_eq!(answers[2], ReserveOutcome::KeyReused);
}

#[tokio::test]
async fn the_limit_reached_mid_batch() {
    let c = campaign(10, 2, |_| {});
    let now = Millis::now();
    let answers = same_as_one_by_one(
        &c,
        &[
            attempt(&c, "ann", 1, "a1", now),
            attempt(&c, "ann", 1, "a2", now),
            attempt(&c, "ann", 1, "a3", now),
            attempt(&c, "bob", 2, "b1", now),
            attempt(&c, "ann", 1, "a2", now),
        ],
    )
    .await;
    assert!(reserved(&answers[0]) && reserved(&answers[1]) && reserved(&answers[3]));
    assert_eq!(answers[2], ReserveOutcome::Refused(Refusal::LimitExceeded));
    assert!(matches!(answers[4], ReserveOutcome::Replayed(_)));
}

#[tokio::test]
async fn sold_out_mid_batch_and_a_smaller_attempt_after_a_larger_refusal() {
    let c = campaign(3, 5, |_| {});
    let now = Millis::now();
    let answers = same_as_one_by_one(
        &c,
        &[
            attempt(&c, "ann", 2, "a", now),
            attempt(&c, "bob", 2, "b", now),
            attempt(&c, "cat", 1, "c", now),
            attempt(&c, "dan", 1, "d", now),
        ],
    )
    .await;
    assert!(reserved(&answers[0]));
    assert_eq!(answers[1], ReserveOutcome::Refused(Refusal::SoldOut));
    assert!(reserved(&answers[2]));
    assert_eq!(answers[3], ReserveOutcome::Refused(Refusal::SoldOut));
}

#[tokio::test]
async fn a_batch_spanning_the_window() {
    let starts = Millis::now().0 + 60_000;
    let ends = starts + 10_000;
    let c = campaign(10, 5, |d| {
        d.starts_at = Some(Millis(starts).to_rfc3339());
        d.ends_at = Some(Millis(ends).to_rfc3339());
    });
    let answers = same_as_one_by_one(
        &c,
        &[
            attempt(&c, "ann", 1, "a", Millis(starts - 1)),
            attempt(&c, "bob", 1, "b", Millis(starts)),
            attempt(&c, "cat", 1, "c", Millis(ends - 1)),
            attempt(&c, "dan", 1, "d", Millis(ends)),
            attempt(&c, "ann", 1, "a", Millis(ends + 1)),
        ],
    )
    .await;
    assert_eq!(answers[0], ReserveOutcome::Refused(Refusal::NotStarted));
    assert!(reserved(&answers[1]) && reserved(&answers[2]));
    assert_eq!(answers[3], ReserveOutcome::Refused(Refusal::Ended));
    // The key of a refused attempt is not remembered: tried again, it is decided again.
    assert_eq!(answers[4], ReserveOutcome::Refused(Refusal::Ended));
}

#[tokio::test]
async fn a_batch_on_a_missing_campaign_answers_each_attempt() {
    let c = campaign(10, 5, |_| {});
    let now = Millis::now();
    let answers = redis()
        .await
        .reserve_batch(&[
            attempt(&c, "ann", 1, "a", now),
            attempt(&c, "bob", 1, "b", now),
        ])
        .await
        .expect("redis answers");
    assert_eq!(
        answers,
        vec![ReserveOutcome::Refused(Refusal::CampaignNotFound); 2]
    );
}

#[tokio::test]
async fn a_stock_change_between_batches_counts() {
    let c = campaign(1, 5, |_| {});
    let engine = redis().await;
    created_in(&engine, &c).await;
    let now = Millis::now();
    let first = engine
        .reserve_batch(&[
            attempt(&c, "ann", 1, "a", now),
            attempt(&c, "bob", 1, "b", now),
        ])
        .await
        .expect("answers");
    assert!(reserved(&first[0]));
    assert_eq!(first[1], ReserveOutcome::Refused(Refusal::SoldOut));
    let added = engine
        .adjust_stock(&crate::engines::stock(&c.id, 1))
        .await
        .expect("answers");
    assert!(matches!(added, StockOutcome::Adjusted { .. }));
    let second = engine
        .reserve_batch(&[
            attempt(&c, "bob", 1, "b", now),
            attempt(&c, "cat", 1, "c", now),
        ])
        .await
        .expect("answers");
    assert!(reserved(&second[0]));
    assert_eq!(second[1], ReserveOutcome::Refused(Refusal::SoldOut));
}

/// One attempt of a random batch: a user of four, a key of six, a quantity of three.
fn step() -> impl Strategy<Value = (u8, u8, u64)> {
    (0u8..4, 0u8..6, 1u64..=3)
}

#[test]
fn random_batches_answer_as_one_by_one() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let config = ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(steps in proptest::collection::vec(step(), 1..48))| {
        runtime.block_on(async {
            let c = campaign(8, 4, |_| {});
            let now = Millis::now();
            let requests: Vec<ReserveRequest> = steps
                .iter()
                .map(|(user, key, quantity)| {
                    // A key belongs to one user most of the time, so replays and reuses both occur.
                    attempt(&c, &format!("u{user}"), *quantity, &format!("k{key}"), now)
                })
                .collect();
            same_as_one_by_one(&c, &requests).await;
        });
    });
}

/// Batch drivers start and stop all the time when attempts come in waves with gaps (each
/// wave starts a driver, which stops when its queue is empty): every attempt must still be
/// answered — none dropped at a driver's hand-over — and the counts must add up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_in_waves_are_all_answered_while_drivers_come_and_go() {
    let c = campaign(1_000_000, 1_000_000, |_| {});
    let engine = std::sync::Arc::new(redis().await);
    created_in(&*engine, &c).await;
    let tasks: Vec<_> = (0..64)
        .map(|task| {
            let engine = std::sync::Arc::clone(&engine);
            let c = c.clone();
            tokio::spawn(async move {
                let mut reserved = 0u64;
                for i in 0..400 {
                    let request = attempt(
                        &c,
                        &format!("u{task}"),
                        1,
                        &format!("{task}-{i}"),
                        Millis::now(),
                    );
                    match engine.reserve(&request).await {
                        Ok(ReserveOutcome::Reserved { .. }) => reserved += 1,
                        other => panic!("attempt {task}-{i} answered {other:?}"),
                    }
                    if i % 3 == 0 {
                        tokio::time::sleep(std::time::Duration::from_micros(
                            200 * (task % 4) as u64,
                        ))
                        .await;
                    }
                }
                reserved
            })
        })
        .collect();
    let mut reserved = 0;
    for task in tasks {
        reserved += task.await.expect("no task panics");
    }
    let state = engine
        .campaign(&c.id)
        .await
        .expect("answers")
        .expect("exists");
    assert_eq!(reserved, 64 * 400);
    assert_eq!(state.held, reserved);
    assert_eq!(state.available, 1_000_000 - reserved);
}
