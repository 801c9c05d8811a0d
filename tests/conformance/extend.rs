//! Extending a hold while a payment is in progress (contract v1.1), on every engine: the new
//! expiry, its cap, holds that already expired, and the reaper — which must expire an
//! extended hold at its new time and every other hold at its own, and never a hold it was
//! racing an extension for.

use crate::engines::{attempt, campaign, created};
use crate::on_every_engine;
use flashsale::domain::{Millis, ReservationStatus};
use flashsale::engine::{CancelScope, Engine, Extension, ReserveOutcome};
use std::sync::Arc;

on_every_engine!(
    an_extension_moves_the_expiry_up_to_its_cap,
    a_hold_past_its_expiry_expires_instead_of_being_extended,
    the_reaper_expires_extended_holds_at_their_new_time_and_the_rest_at_theirs,
    extensions_racing_the_reaper_never_leave_a_hold_both_extended_and_expired,
    a_group_members_hold_extends_and_a_failed_groups_does_not,
);

async fn reserve(
    engine: &Engine,
    c: &flashsale::domain::Campaign,
    user: &str,
    now: Millis,
) -> flashsale::domain::Reservation {
    match engine
        .reserve(&attempt(c, user, 1, &format!("k-{user}"), now))
        .await
        .expect("answers")
    {
        ReserveOutcome::Reserved { reservation, .. } => reservation,
        other => panic!("expected a hold, got {other:?}"),
    }
}

async fn an_extension_moves_the_expiry_up_to_its_cap(engine: Arc<Engine>) {
    let c = campaign(10, 5, |d| {
        d.hold_seconds = Some(60);
        d.max_extend_seconds = Some(120);
    });
    created(&engine, &c).await;
    let t = Millis::now();
    let r = reserve(&engine, &c, "ann", t).await;
    assert_eq!(r.expires_at, t.plus_seconds(60));

    // now + 100 s is later than the hold's end: it moves.
    let Extension::Extended(extended) = engine.extend(&r.id, 100, t).await.expect("answers") else {
        panic!("extended");
    };
    assert_eq!(extended.expires_at, t.plus_seconds(100));
    assert_eq!(extended.status, ReservationStatus::Held);
    // Asking for less than it already has changes nothing.
    let Extension::Extended(same) = engine.extend(&r.id, 10, t).await.expect("answers") else {
        panic!("unchanged");
    };
    assert_eq!(same.expires_at, t.plus_seconds(100));
    // The cap: created + 60 + 120 = t + 180 s. Exactly at it is allowed, past it is not.
    let Extension::Extended(capped) = engine.extend(&r.id, 180, t).await.expect("answers") else {
        panic!("at the cap");
    };
    assert_eq!(capped.expires_at, t.plus_seconds(180));
    let later = t.plus_seconds(5);
    assert!(matches!(
        engine.extend(&r.id, 176, later).await.expect("answers"),
        Extension::Exceeded(r) if r.expires_at == t.plus_seconds(180)
    ));
    assert_eq!(
        engine
            .reservation(&r.id)
            .await
            .expect("answers")
            .map(|r| r.expires_at),
        Some(t.plus_seconds(180))
    );
    // Not held any more: 409 material.
    engine
        .cancel(&r.id, CancelScope::HeldOrConfirmed, t)
        .await
        .expect("answers");
    assert!(matches!(
        engine.extend(&r.id, 10, t).await.expect("answers"),
        Extension::NotHeld(r) if r.status == ReservationStatus::Cancelled
    ));
    // Unknown.
    let stranger = attempt(&c, "bob", 1, "never", t).reservation_id;
    assert_eq!(
        engine.extend(&stranger, 10, t).await.expect("answers"),
        Extension::NotFound
    );
}

async fn a_hold_past_its_expiry_expires_instead_of_being_extended(engine: Arc<Engine>) {
    let c = campaign(1, 5, |d| d.hold_seconds = Some(10));
    created(&engine, &c).await;
    let t = Millis::now();
    let r = reserve(&engine, &c, "ann", t).await;
    let at_expiry = t.plus_seconds(10);
    assert!(matches!(
        engine.extend(&r.id, 60, at_expiry).await.expect("answers"),
        Extension::NotHeld(r) if r.status == ReservationStatus::Expired
    ));
    let state = engine
        .campaign(&c.id)
        .await
        .expect("answers")
        .expect("exists");
    assert_eq!((state.available, state.held), (1, 0), "its unit came back");
}

async fn the_reaper_expires_extended_holds_at_their_new_time_and_the_rest_at_theirs(
    engine: Arc<Engine>,
) {
    let c = campaign(10, 5, |d| d.hold_seconds = Some(1));
    created(&engine, &c).await;
    let t = Millis::now();
    // The first hold (at the head of the expiry order) is extended; the others are not.
    let first = reserve(&engine, &c, "ann", t).await;
    let second = reserve(&engine, &c, "bob", t).await;
    let third = reserve(&engine, &c, "cat", t).await;
    assert!(matches!(
        engine.extend(&first.id, 5, t).await.expect("answers"),
        Extension::Extended(_)
    ));
    let status = |id| {
        let engine = Arc::clone(&engine);
        async move {
            engine
                .reservation(&id)
                .await
                .expect("answers")
                .expect("exists")
                .status
        }
    };
    assert_eq!(
        engine
            .expire_due(&c.id, Millis(t.0 + 1_500), 100)
            .await
            .expect("answers"),
        2
    );
    assert_eq!(status(first.id.clone()).await, ReservationStatus::Held);
    assert_eq!(status(second.id.clone()).await, ReservationStatus::Expired);
    assert_eq!(status(third.id.clone()).await, ReservationStatus::Expired);
    // Extended again after the reaper moved it: the new time counts.
    assert!(matches!(
        engine.extend(&first.id, 6, t).await.expect("answers"),
        Extension::Extended(r) if r.expires_at == t.plus_seconds(6)
    ));
    assert_eq!(
        engine
            .expire_due(&c.id, Millis(t.0 + 5_500), 100)
            .await
            .expect("answers"),
        0
    );
    assert_eq!(status(first.id.clone()).await, ReservationStatus::Held);
    assert_eq!(
        engine
            .expire_due(&c.id, Millis(t.0 + 6_000), 100)
            .await
            .expect("answers"),
        1
    );
    assert_eq!(status(first.id.clone()).await, ReservationStatus::Expired);
    let state = engine
        .campaign(&c.id)
        .await
        .expect("answers")
        .expect("exists");
    assert_eq!((state.available, state.held), (10, 0));
}

async fn extensions_racing_the_reaper_never_leave_a_hold_both_extended_and_expired(
    engine: Arc<Engine>,
) {
    const HOLDS: usize = 200;
    let c = campaign(HOLDS as u64, 1, |d| d.hold_seconds = Some(1));
    created(&engine, &c).await;
    // Every hold ends 50 ms from now.
    let made = Millis(Millis::now().0 - 950);
    let mut holds = Vec::new();
    for n in 0..HOLDS {
        holds.push(reserve(&engine, &c, &format!("u{n}"), made).await);
    }
    let reaper = {
        let engine = Arc::clone(&engine);
        let id = c.id.clone();
        tokio::spawn(async move {
            let until = std::time::Instant::now() + std::time::Duration::from_millis(300);
            while std::time::Instant::now() < until {
                engine
                    .expire_due(&id, Millis::now(), 50)
                    .await
                    .expect("reaper answers");
                tokio::task::yield_now().await;
            }
        })
    };
    let tasks: Vec<_> = holds
        .iter()
        .map(|r| {
            let engine = Arc::clone(&engine);
            let id = r.id.clone();
            tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_millis(
                    (id.as_str().len() % 7) as u64 * 10,
                ))
                .await;
                let answer = engine
                    .extend(&id, 30, Millis::now())
                    .await
                    .expect("answers");
                (id, answer)
            })
        })
        .collect();
    let mut extended = 0;
    for task in tasks {
        let (id, answer) = task.await.expect("no panic");
        let now = engine
            .reservation(&id)
            .await
            .expect("answers")
            .expect("exists");
        match answer {
            Extension::Extended(r) => {
                extended += 1;
                assert_eq!(
                    now.status,
                    ReservationStatus::Held,
                    "extended, then expired: {id}"
                );
                assert!(r.expires_at.0 > made.0 + 1_000);
            }
            Extension::NotHeld(r) => {
                assert_eq!(r.status, ReservationStatus::Expired);
                assert_eq!(now.status, ReservationStatus::Expired);
            }
            other => panic!("{id}: {other:?}"),
        }
    }
    reaper.await.expect("no panic");
    engine
        .expire_due(&c.id, Millis::now(), 1_000)
        .await
        .expect("answers");
    let state = engine
        .campaign(&c.id)
        .await
        .expect("answers")
        .expect("exists");
    assert_eq!(
        state.held, extended,
        "every extended hold, and only those, is still held"
    );
    assert_eq!(state.available + state.held, HOLDS as u64);
}

async fn a_group_members_hold_extends_and_a_failed_groups_does_not(engine: Arc<Engine>) {
    use crate::groups::{group_campaign, open};
    let c = group_campaign(10, 2, 5);
    created(&engine, &c).await;
    let t = Millis::now();
    let group = open(&engine, &c, "ann", t).await.expect("opened");
    let leader = group.members[0].reservation_id.clone();
    let Extension::Extended(r) = engine.extend(&leader, 45, t).await.expect("answers") else {
        panic!("a member's hold extends");
    };
    assert_eq!(r.expires_at, t.plus_seconds(45));
    assert_eq!(r.group_id.as_ref(), Some(&group.id));
    // Past the group's window (60 s) the group fails first: the hold is released, not extended.
    let after_window = t.plus_seconds(61);
    assert!(matches!(
        engine.extend(&leader, 10, after_window).await.expect("answers"),
        Extension::NotHeld(r) if r.status == ReservationStatus::Released
    ));
}
