//! Concurrency claims, checked with many tasks against the real engines.

use crate::engines::{attempt, campaign, cluster, created, redis};
use crate::on_every_engine;
use flashsale::domain::{Millis, Refusal};
use flashsale::engine::{CancelScope, Engine, ReserveOutcome};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

on_every_engine!(
    a_burst_of_2000_attempts_never_oversells_nor_passes_the_limit,
    fifty_concurrent_requests_with_one_key_make_one_reservation,
);

/// Fires `attempts` reservation attempts at once from `users` users against the engines
/// (round-robin) and returns every outcome with its user.
async fn burst(
    engines: &[Arc<Engine>],
    c: &flashsale::domain::Campaign,
    attempts: usize,
    users: usize,
) -> Vec<(String, ReserveOutcome)> {
    let now = Millis::now();
    let tasks: Vec<_> = (0..attempts)
        .map(|i| {
            let engine = Arc::clone(&engines[i % engines.len()]);
            let user = format!("user-{}", i % users);
            let request = attempt(c, &user, 1, &format!("attempt-{i}"), now);
            tokio::spawn(async move {
                (
                    user,
                    engine.reserve(&request).await.expect("engine answers"),
                )
            })
        })
        .collect();
    let mut outcomes = Vec::with_capacity(attempts);
    for task in tasks {
        outcomes.push(task.await.expect("no task panics"));
    }
    outcomes
}

/// The invariants after a burst: exactly `stock` units held, nobody above `limit`,
/// conservation in the engine.
async fn assert_sold_exactly(
    engine: &Engine,
    c: &flashsale::domain::Campaign,
    outcomes: &[(String, ReserveOutcome)],
    limit: u64,
) {
    let mut per_user: HashMap<&str, u64> = HashMap::new();
    for (user, outcome) in outcomes {
        match outcome {
            ReserveOutcome::Reserved { reservation, .. } => {
                *per_user.entry(user).or_default() += u64::from(reservation.quantity)
            }
            ReserveOutcome::Refused(Refusal::SoldOut | Refusal::LimitExceeded) => {}
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    let sold: u64 = per_user.values().sum();
    assert_eq!(sold, c.stock, "every unit sold exactly once");
    assert!(
        per_user.values().all(|&units| units <= limit),
        "nobody above the limit"
    );
    let state = engine
        .campaign(&c.id)
        .await
        .expect("answers")
        .expect("exists");
    assert_eq!(
        (state.available, state.held, state.confirmed),
        (0, c.stock, 0)
    );
    assert_eq!(
        state.available + state.held + state.confirmed,
        state.campaign.stock
    );
}

async fn a_burst_of_2000_attempts_never_oversells_nor_passes_the_limit(engine: Arc<Engine>) {
    let c = campaign(100, 2, |_| {});
    created(&engine, &c).await;

    let outcomes = burst(&[Arc::clone(&engine)], &c, 2_000, 500).await;

    assert_sold_exactly(&engine, &c, &outcomes, 2).await;
}

async fn fifty_concurrent_requests_with_one_key_make_one_reservation(engine: Arc<Engine>) {
    let c = campaign(100, 100, |_| {});
    created(&engine, &c).await;
    let now = Millis::now();
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let engine = Arc::clone(&engine);
            let request = attempt(&c, "u1", 1, "one-key", now);
            tokio::spawn(async move { engine.reserve(&request).await.expect("answers") })
        })
        .collect();
    let mut ids = HashSet::new();
    let mut created_count = 0;
    for task in tasks {
        match task.await.expect("no panic") {
            ReserveOutcome::Reserved { reservation, .. } => {
                created_count += 1;
                ids.insert(reservation.id);
            }
            ReserveOutcome::Replayed(reservation) => {
                ids.insert(reservation.id);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(created_count, 1);
    assert_eq!(ids.len(), 1, "every answer names the same reservation");
    let state = engine
        .campaign(&c.id)
        .await
        .expect("answers")
        .expect("exists");
    assert_eq!(state.held, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_redis_never_oversell() {
    let a: Arc<Engine> = Arc::new(Engine::new(redis().await));
    let b: Arc<Engine> = Arc::new(Engine::new(redis().await));
    let c = campaign(100, 2, |_| {});
    created(&a, &c).await;

    let outcomes = burst(&[Arc::clone(&a), Arc::clone(&b)], &c, 2_000, 500).await;

    assert_sold_exactly(&b, &c, &outcomes, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_cluster_never_oversell() {
    let a: Arc<Engine> = Arc::new(Engine::new(cluster().await));
    let b: Arc<Engine> = Arc::new(Engine::new(cluster().await));
    // Campaigns on every node at once: each burst decides on its own node.
    let campaigns: Vec<_> = (0..6).map(|_| campaign(100, 2, |_| {})).collect();
    for c in &campaigns {
        created(&a, c).await;
    }
    let bursts: Vec<_> = campaigns
        .iter()
        .map(|c| {
            let (a, b, c) = (Arc::clone(&a), Arc::clone(&b), c.clone());
            tokio::spawn(async move { (burst(&[a, b], &c, 1_000, 250).await, c) })
        })
        .collect();
    for done in bursts {
        let (outcomes, c) = done.await.expect("no panic");
        assert_sold_exactly(&b, &c, &outcomes, 2).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn units_returned_on_one_instance_are_soon_served_by_another() {
    let a = Engine::new(redis().await);
    let b = Engine::new(redis().await);
    let refresher = {
        let (trigger, shutdown) = flashsale::shutdown::channel();
        let task = tokio::spawn(flashsale::workers::run_gate_refresher(b.clone(), shutdown));
        (trigger, task)
    };
    let c = campaign(1, 1, |_| {});
    created(&a, &c).await;
    let now = Millis::now();
    let ReserveOutcome::Reserved { reservation, .. } = a
        .reserve(&attempt(&c, "u1", 1, "k1", now))
        .await
        .expect("answers")
    else {
        panic!("the only unit should be reservable");
    };
    assert_eq!(
        b.reserve(&attempt(&c, "u2", 1, "k2", now))
            .await
            .expect("answers"),
        ReserveOutcome::Refused(Refusal::SoldOut)
    );
    let armed = Instant::now();
    while !b.gate().is_some_and(|g| g.is_sold_out(&c.id)) {
        assert!(
            armed.elapsed() < Duration::from_secs(2),
            "b's gate never armed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    a.cancel(&reservation.id, CancelScope::HeldOnly, now)
        .await
        .expect("answers");
    let returned = Instant::now();
    while b.gate().is_some_and(|g| g.is_sold_out(&c.id)) {
        // The design bound is ~100 ms (one refresh interval); the test allows a noisy machine.
        assert!(
            returned.elapsed() < Duration::from_secs(2),
            "b still refuses after 2 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    assert!(matches!(
        b.reserve(&attempt(&c, "u2", 1, "k3", now))
            .await
            .expect("answers"),
        ReserveOutcome::Reserved { .. }
    ));
    refresher.0.trigger();
    refresher.1.await.expect("refresher stops cleanly");
}
