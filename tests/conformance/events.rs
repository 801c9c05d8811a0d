//! The events an engine hands its persister say exactly what happened, whatever characters a
//! user id holds (the Redis engine packs each event into one stream field). These tests read
//! and acknowledge events, so each engine gets a namespace of its own.

use crate::engines::{attempt, campaign, created_in, redis_cluster_nodes, redis_url, stock};
use flashsale::domain::{
    Change, GroupId, GroupStatus, Millis, ReservationId, ReservationStatus, ScopedKey, UserId,
};
use flashsale::engine::{
    Consumer, Decisions, EventLog, GroupOutcome, GroupRequest, MemoryEngine, Reads, RedisEngine,
    ReserveOutcome, PERSISTER,
};
use std::time::Duration;

#[tokio::test]
async fn memory() {
    every_event_says_what_happened(&MemoryEngine::new()).await;
}

#[tokio::test]
async fn redis() {
    let namespace = format!("events-{}", ulid::Ulid::new());
    let engine = RedisEngine::connect_in(&redis_url(), &namespace)
        .await
        .expect("the conformance suite needs a real Redis (FLASHSALE_TEST_REDIS_URL)");
    every_event_says_what_happened(&engine).await;
}

#[tokio::test]
async fn cluster() {
    let namespace = format!("events-{}", ulid::Ulid::new());
    let engine = RedisEngine::connect_cluster(&redis_cluster_nodes(), &namespace)
        .await
        .expect("the conformance suite needs a real Redis Cluster (FLASHSALE_TEST_REDIS_CLUSTER)");
    every_event_says_what_happened(&engine).await;
}

async fn every_event_says_what_happened<E: Decisions + Reads + EventLog>(engine: &E) {
    let now = Millis::now();
    let sale = campaign(10, 5, |_| {});
    created_in(engine, &sale).await;
    let user = "李雷 | a:b/c \"q\" ü";
    let request = attempt(&sale, user, 2, "k1", now);
    let ReserveOutcome::Reserved { reservation, .. } =
        engine.reserve(&request).await.expect("answers")
    else {
        panic!("expected a reservation");
    };
    engine.confirm(&reservation.id, now).await.expect("answers");
    engine
        .adjust_stock(&stock(&sale.id, 5))
        .await
        .expect("answers");
    let buy = campaign(10, 1, |d| {
        d.kind = "group_buy".into();
        d.group = Some((2, 60));
    });
    created_in(engine, &buy).await;
    let opened = engine
        .open_group(&GroupRequest {
            campaign_id: buy.id.clone(),
            group_id: GroupId::generate(&buy.id),
            user_id: UserId::parse(user).expect("valid"),
            idempotency_key: ScopedKey::from_stored("s/test:g1".into()),
            fingerprint: "fp-g1".into(),
            reservation_id: ReservationId::generate(&buy.id),
            now,
        })
        .await
        .expect("answers");
    let GroupOutcome::Done(group) = opened else {
        panic!("expected a group, got {opened:?}");
    };

    let events = engine
        .read(
            &Consumer {
                group: PERSISTER.into(),
                name: "test".into(),
            },
            100,
            Duration::from_secs(3600),
        )
        .await
        .expect("answers")
        .events;

    let mut seen = Vec::new();
    for event in &events {
        match &event.change {
            Change::Reservation {
                reservation: r,
                idempotency,
            } => {
                assert_eq!(r.user_id.as_str(), user);
                let gid = r.group_id.as_ref().map(ToString::to_string);
                seen.push(format!("{} {} {gid:?}", event.change.kind(), r.quantity));
                if r.id == reservation.id {
                    assert_eq!(r.created_at, reservation.created_at);
                    assert_eq!(r.expires_at, reservation.expires_at);
                    if r.status == ReservationStatus::Held {
                        let key = (request.idempotency_key.clone(), request.fingerprint.clone());
                        assert_eq!(idempotency.as_ref(), Some(&key));
                    } else {
                        assert_eq!(idempotency, &None);
                    }
                }
            }
            Change::Stock { stock } => seen.push(format!("{} {stock}", event.change.kind())),
            Change::Extended { reservation: r } => {
                seen.push(format!("{} {}", event.change.kind(), r.id))
            }
            Change::Group { group: g } => {
                assert_eq!(g.id, group.id);
                assert_eq!(g.leader_user_id.as_str(), user);
                assert_eq!((g.size, g.status), (2, GroupStatus::Open));
                assert_eq!(g.expires_at, group.expires_at);
                seen.push(event.change.kind().to_owned());
            }
        }
    }
    seen.sort();
    let gid = Some(group.id.to_string());
    let mut expected = vec![
        "reservation.held 2 None".to_owned(),
        "reservation.confirmed 2 None".to_owned(),
        "campaign.stock 15".to_owned(),
        "group.opened".to_owned(),
        format!("reservation.held 1 {gid:?}"),
    ];
    expected.sort();
    assert_eq!(seen, expected);
    // A caller waiting for the campaign's events to be committed waits until they are
    // acknowledged, and no longer.
    let waiting = engine.acknowledged(PERSISTER, &sale.id);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), waiting)
            .await
            .is_err(),
        "resolved before the events were acknowledged"
    );
    engine.ack(PERSISTER, &events).await.expect("answers");
    tokio::time::timeout(
        Duration::from_secs(2),
        engine.acknowledged(PERSISTER, &sale.id),
    )
    .await
    .expect("resolves once acknowledged")
    .expect("answers");
}
