//! The work index (`engine::work`): background work follows traffic, not the catalogue. The
//! persister's read and the reaper's round cost as many calls to the backing store with 2,000
//! idle campaigns as with none (counted, never timed); a hold of an idle campaign still
//! expires, found through the due list; events an instance left behind when it died are
//! found by another through the shared index. On memory, Redis and the Redis Cluster, each
//! test on a namespace of its own (the index is one per namespace).

use crate::engines::{attempt, campaign, created, redis_cluster_nodes, redis_url};
use flashsale::domain::{Millis, ReservationStatus};
use flashsale::engine::{
    Backing, Consumer, Engine, EventLog, MemoryEngine, RedisEngine, ReserveOutcome, WorkIndex,
    PERSISTER,
};
use flashsale::workers::reap_once;
use std::time::{Duration, Instant};

/// Leases short enough that idle campaigns retire within a test.
const LEASE: Duration = Duration::from_millis(300);

/// Idle campaigns beside the one with traffic.
const IDLE: usize = 2_000;

/// A backend, whose event log and work index the tests read directly.
trait Tested: EventLog + WorkIndex + Clone + Into<Backing> {}
impl<T: EventLog + WorkIndex + Clone + Into<Backing>> Tested for T {}

fn namespace() -> String {
    format!("t-work-{}", ulid::Ulid::new())
}

async fn redis_in(namespace: &str) -> RedisEngine {
    RedisEngine::connect_in(&redis_url(), namespace)
        .await
        .expect("the conformance suite needs a real Redis (FLASHSALE_TEST_REDIS_URL)")
        .with_lease(LEASE)
}

async fn cluster_in(namespace: &str) -> RedisEngine<flashsale::engine::redis::topology::Watched> {
    RedisEngine::connect_cluster(&redis_cluster_nodes(), namespace)
        .await
        .expect("the conformance suite needs a real Redis Cluster (FLASHSALE_TEST_REDIS_CLUSTER)")
        .with_lease(LEASE)
}

fn consumer(name: &str) -> Consumer {
    Consumer {
        group: PERSISTER.into(),
        name: name.into(),
    }
}

/// One persister read (what it read acknowledged, as after a commit) and one reaper round.
async fn background_round<E: Tested>(engine: &E, gate: &Engine) {
    let read = engine
        .read(&consumer("test"), 1_000, Duration::from_secs(30))
        .await
        .expect("read");
    engine.ack(PERSISTER, &read.events).await.expect("ack");
    reap_once(gate, engine, Millis::now())
        .await
        .expect("reaper round");
}

/// Rounds until nothing is active (every lease ended, every event acknowledged).
async fn until_idle<E: Tested>(engine: &E, gate: &Engine) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        background_round(engine, gate).await;
        if engine.active().await.expect("active").leases.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "campaigns never left the active list"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Calls one background round makes.
async fn round_cost<E: Tested>(engine: &E, gate: &Engine) -> u64 {
    let before = engine.background_calls();
    background_round(engine, gate).await;
    engine.background_calls() - before
}

async fn background_work_does_not_grow_with_idle_campaigns<E: Tested>(engine: E) {
    let gate = Engine::new(engine.clone());
    let hot = campaign(100, 5, |_| {});
    created(&gate, &hot).await;
    until_idle(&engine, &gate).await;
    let alone = round_cost(&engine, &gate).await;
    for _ in 0..IDLE {
        created(&gate, &campaign(10, 1, |_| {})).await;
    }
    until_idle(&engine, &gate).await;
    let beside_idle = round_cost(&engine, &gate).await;
    assert_eq!(
        beside_idle, alone,
        "a background round made {beside_idle} calls beside {IDLE} idle campaigns, {alone} alone"
    );
    // The campaign with traffic is found again at once, and its events are read.
    let now = Millis::now();
    let outcome = gate
        .reserve(&attempt(&hot, "u1", 1, "k1", now))
        .await
        .expect("reserve");
    assert!(matches!(outcome, ReserveOutcome::Reserved { .. }));
    let read = engine
        .read(&consumer("test"), 1_000, Duration::from_secs(30))
        .await
        .expect("read");
    assert_eq!(read.events.len(), 1, "the new reservation's event is read");
    engine.ack(PERSISTER, &read.events).await.expect("ack");
}

async fn a_hold_of_an_idle_campaign_expires_through_the_due_list<E: Tested>(engine: E) {
    let gate = Engine::new(engine.clone());
    let sale = campaign(10, 5, |draft| draft.hold_seconds = Some(2));
    created(&gate, &sale).await;
    let ReserveOutcome::Reserved { reservation, .. } = gate
        .reserve(&attempt(&sale, "u1", 2, "k1", Millis::now()))
        .await
        .expect("reserve")
    else {
        panic!("the first attempt reserves");
    };
    // The campaign retires from the active list before its hold is due: from then on only
    // the due list leads the reaper to it.
    until_idle(&engine, &gate).await;
    assert!(
        Millis::now() < reservation.expires_at,
        "the campaign went idle before the hold was due (the test's premise)"
    );
    let status = || async {
        gate.reservation(&reservation.id)
            .await
            .expect("read")
            .expect("kept")
            .status
    };
    assert_eq!(status().await, ReservationStatus::Held);
    let deadline = Instant::now() + Duration::from_secs(30);
    while status().await == ReservationStatus::Held {
        assert!(Instant::now() < deadline, "the hold never expired");
        reap_once(&gate, &engine, Millis::now())
            .await
            .expect("reaper round");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status().await, ReservationStatus::Expired);
    let state = gate.campaign(&sale.id).await.expect("read").expect("kept");
    assert_eq!((state.available, state.held), (10, 0));
}

/// Two instances on one namespace: the first makes reservations, its persister reads some
/// of them, and it dies; the second, which never saw the campaign, persists all of them,
/// found through the shared index with 2,000 idle campaigns beside it.
async fn events_a_dead_instance_left_are_found_by_another<E: Tested>(first: E, second: E) {
    let gate = Engine::new(second.clone());
    let deciding = Engine::new(first.clone());
    for _ in 0..IDLE {
        created(&deciding, &campaign(10, 1, |_| {})).await;
    }
    until_idle(&second, &gate).await;
    let sale = campaign(100, 5, |_| {});
    created(&deciding, &sale).await;
    for n in 0..50 {
        let outcome = deciding
            .reserve(&attempt(
                &sale,
                &format!("u{n}"),
                1,
                &format!("k{n}"),
                Millis::now(),
            ))
            .await
            .expect("reserve");
        assert!(matches!(outcome, ReserveOutcome::Reserved { .. }));
    }
    let taken = first
        .read(&consumer("dies"), 10, Duration::from_secs(30))
        .await
        .expect("read");
    assert!(!taken.events.is_empty());
    drop(first);
    drop(deciding);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = second.background_calls();
    let mut persisted = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut rounds = 0;
    while persisted < 50 {
        assert!(Instant::now() < deadline, "{persisted} of 50 events found");
        let read = second
            .read(&consumer("survives"), 1_000, Duration::from_millis(100))
            .await
            .expect("read");
        persisted += read
            .events
            .iter()
            .filter(|e| e.campaign_id.parent() == sale.id)
            .count();
        second.ack(PERSISTER, &read.events).await.expect("ack");
        rounds += 1;
    }
    // Each round reads the active list and the few campaigns on it, never the catalogue.
    let calls = second.background_calls() - before;
    assert!(
        calls <= rounds * 16,
        "{calls} calls in {rounds} rounds beside {IDLE} idle campaigns"
    );
}

mod memory {
    use super::*;

    fn engine() -> MemoryEngine {
        MemoryEngine::new().with_lease(LEASE)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn background_work_does_not_grow_with_idle_campaigns() {
        super::background_work_does_not_grow_with_idle_campaigns(engine()).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hold_of_an_idle_campaign_expires_through_the_due_list() {
        super::a_hold_of_an_idle_campaign_expires_through_the_due_list(engine()).await
    }
}

mod redis {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn background_work_does_not_grow_with_idle_campaigns() {
        super::background_work_does_not_grow_with_idle_campaigns(redis_in(&namespace()).await).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hold_of_an_idle_campaign_expires_through_the_due_list() {
        super::a_hold_of_an_idle_campaign_expires_through_the_due_list(redis_in(&namespace()).await)
            .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn events_a_dead_instance_left_are_found_by_another() {
        let namespace = namespace();
        super::events_a_dead_instance_left_are_found_by_another(
            redis_in(&namespace).await,
            redis_in(&namespace).await,
        )
        .await
    }
}

mod cluster {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn background_work_does_not_grow_with_idle_campaigns() {
        super::background_work_does_not_grow_with_idle_campaigns(cluster_in(&namespace()).await)
            .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hold_of_an_idle_campaign_expires_through_the_due_list() {
        super::a_hold_of_an_idle_campaign_expires_through_the_due_list(
            cluster_in(&namespace()).await,
        )
        .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn events_a_dead_instance_left_are_found_by_another() {
        let namespace = namespace();
        super::events_a_dead_instance_left_are_found_by_another(
            cluster_in(&namespace).await,
            cluster_in(&namespace).await,
        )
        .await
    }
}
