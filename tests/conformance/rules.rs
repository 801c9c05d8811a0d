//! One rule per test, each run on every engine.

use crate::engines::{attempt, campaign, created, stock};
use crate::on_every_engine;
use flashsale::domain::{CampaignId, Millis, Refusal, ReservationStatus};
use flashsale::engine::{
    CampaignSnapshot, CancelScope, Engine, ReserveOutcome, StockOutcome, Transition,
};
use std::sync::Arc;

/// Reserves and unwraps the new reservation.
async fn reserved(
    engine: &Engine,
    request: &flashsale::engine::ReserveRequest,
) -> flashsale::domain::Reservation {
    match engine.reserve(request).await.expect("engine answers") {
        ReserveOutcome::Reserved { reservation, .. } => reservation,
        other => panic!("expected a reservation, got {other:?}"),
    }
}

async fn refusal(engine: &Engine, request: &flashsale::engine::ReserveRequest) -> Refusal {
    match engine.reserve(request).await.expect("engine answers") {
        ReserveOutcome::Refused(refusal) => refusal,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

async fn counts(engine: &Engine, id: &CampaignId) -> (u64, u64, u64) {
    let state = engine
        .campaign(id)
        .await
        .expect("engine answers")
        .expect("campaign exists");
    assert_eq!(
        state.available + state.held + state.confirmed,
        state.campaign.stock,
        "conservation"
    );
    (state.available, state.held, state.confirmed)
}

on_every_engine!(
    a_reservation_takes_units_until_it_ends,
    creating_a_campaign_twice_changes_nothing,
    reserving_past_the_limit_is_refused,
    reserving_more_than_is_available_is_sold_out,
    reserving_outside_the_window_is_refused,
    reserving_in_an_unknown_or_group_campaign_is_refused,
    one_idempotency_key_yields_one_reservation,
    a_retry_after_the_sale_sold_out_gets_its_reservation_back,
    confirming_is_idempotent_and_keeps_the_units,
    cancelling_returns_units_and_is_idempotent,
    a_user_cannot_cancel_a_confirmed_reservation_but_the_store_can,
    expired_holds_return_their_units_and_cannot_be_confirmed,
    holds_behind_more_than_a_page_of_ended_ones_still_expire_in_one_pass,
    stock_can_be_added_and_withdrawn_but_never_below_available,
    a_retried_stock_change_applies_once,
    unknown_reservations_are_not_found,
);

async fn a_reservation_takes_units_until_it_ends(engine: Arc<Engine>) {
    let c = campaign(10, 5, |_| {});
    created(&engine, &c).await;
    let now = Millis::now();

    let r = reserved(&engine, &attempt(&c, "u1", 3, "k1", now)).await;

    assert_eq!(r.status, ReservationStatus::Held);
    assert_eq!(r.quantity.get(), 3);
    assert_eq!(r.created_at, now);
    assert_eq!(r.expires_at, now.plus_seconds(60));
    assert_eq!(counts(&engine, &c.id).await, (7, 3, 0));
    assert_eq!(engine.reservation(&r.id).await.expect("answers"), Some(r));
}

async fn creating_a_campaign_twice_changes_nothing(engine: Arc<Engine>) {
    let c = campaign(10, 1, |_| {});
    created(&engine, &c).await;
    let mut other = c.clone();
    other.stock = 99;

    assert_eq!(
        engine
            .load(CampaignSnapshot::fresh(&other))
            .await
            .expect("answers"),
        0
    );

    let state = engine
        .campaign(&c.id)
        .await
        .expect("answers")
        .expect("exists");
    assert_eq!(state.campaign, c);
    assert!(engine
        .campaign_ids()
        .await
        .expect("answers")
        .contains(&c.id));
}

async fn reserving_past_the_limit_is_refused(engine: Arc<Engine>) {
    let c = campaign(10, 2, |_| {});
    created(&engine, &c).await;
    let now = Millis::now();
    reserved(&engine, &attempt(&c, "u1", 1, "k1", now)).await;

    assert_eq!(
        refusal(&engine, &attempt(&c, "u1", 2, "k2", now)).await,
        Refusal::LimitExceeded
    );
    reserved(&engine, &attempt(&c, "u1", 1, "k3", now)).await;
    assert_eq!(
        refusal(&engine, &attempt(&c, "u1", 1, "k4", now)).await,
        Refusal::LimitExceeded
    );
    // Others are not affected.
    reserved(&engine, &attempt(&c, "u2", 2, "k5", now)).await;
    assert_eq!(counts(&engine, &c.id).await, (6, 4, 0));
}

async fn reserving_more_than_is_available_is_sold_out(engine: Arc<Engine>) {
    let c = campaign(3, 5, |_| {});
    created(&engine, &c).await;
    let now = Millis::now();
    reserved(&engine, &attempt(&c, "u1", 2, "k1", now)).await;

    assert_eq!(
        refusal(&engine, &attempt(&c, "u2", 2, "k2", now)).await,
        Refusal::SoldOut
    );
    reserved(&engine, &attempt(&c, "u2", 1, "k3", now)).await;
    assert_eq!(
        refusal(&engine, &attempt(&c, "u3", 1, "k4", now)).await,
        Refusal::SoldOut
    );
    assert_eq!(counts(&engine, &c.id).await, (0, 3, 0));
}

async fn reserving_outside_the_window_is_refused(engine: Arc<Engine>) {
    let now = Millis::now();
    let starts = Millis(now.0 + 60_000);
    let ends = Millis(now.0 + 120_000);
    let c = campaign(5, 1, |d| {
        d.starts_at = Some(starts.to_rfc3339());
        d.ends_at = Some(ends.to_rfc3339());
    });
    created(&engine, &c).await;

    assert_eq!(
        refusal(&engine, &attempt(&c, "u1", 1, "k1", now)).await,
        Refusal::NotStarted
    );
    reserved(&engine, &attempt(&c, "u1", 1, "k2", starts)).await;
    assert_eq!(
        refusal(&engine, &attempt(&c, "u2", 1, "k3", ends)).await,
        Refusal::Ended
    );
}

async fn reserving_in_an_unknown_or_group_campaign_is_refused(engine: Arc<Engine>) {
    let now = Millis::now();
    let missing = campaign(5, 1, |_| {});
    assert_eq!(
        refusal(&engine, &attempt(&missing, "u1", 1, "k1", now)).await,
        Refusal::CampaignNotFound
    );
    let group = campaign(6, 1, |d| {
        d.kind = "group_buy".into();
        d.group = Some((3, 60));
    });
    created(&engine, &group).await;
    assert_eq!(
        refusal(&engine, &attempt(&group, "u1", 1, "k1", now)).await,
        Refusal::WrongCampaignKind
    );
}

async fn one_idempotency_key_yields_one_reservation(engine: Arc<Engine>) {
    let c = campaign(10, 5, |_| {});
    created(&engine, &c).await;
    let now = Millis::now();
    let first = reserved(&engine, &attempt(&c, "u1", 1, "same", now)).await;

    let again = engine
        .reserve(&attempt(&c, "u1", 1, "same", now))
        .await
        .expect("answers");
    assert_eq!(again, ReserveOutcome::Replayed(first.clone()));
    let other_body = engine
        .reserve(&attempt(&c, "u1", 2, "same", now))
        .await
        .expect("answers");
    assert_eq!(other_body, ReserveOutcome::KeyReused);
    // Replays answer the first outcome even after the reservation moved on.
    engine.confirm(&first.id, now).await.expect("answers");
    let later = engine
        .reserve(&attempt(&c, "u1", 1, "same", now))
        .await
        .expect("answers");
    assert_eq!(later, ReserveOutcome::Replayed(first));
    assert_eq!(counts(&engine, &c.id).await, (9, 0, 1));
}

async fn a_retry_after_the_sale_sold_out_gets_its_reservation_back(engine: Arc<Engine>) {
    let c = campaign(2, 1, |_| {});
    created(&engine, &c).await;
    let now = Millis::now();
    let first = reserved(&engine, &attempt(&c, "u1", 1, "mine", now)).await;
    reserved(&engine, &attempt(&c, "u2", 1, "theirs", now)).await;
    assert_eq!(
        refusal(&engine, &attempt(&c, "u3", 1, "late", now)).await,
        Refusal::SoldOut
    );
    // Give a gate time to arm from its snapshot.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;

    for _ in 0..3 {
        let retry = engine
            .reserve(&attempt(&c, "u1", 1, "mine", now))
            .await
            .expect("answers");
        assert_eq!(retry, ReserveOutcome::Replayed(first.clone()));
        let reused = engine
            .reserve(&attempt(&c, "u1", 1, "theirs", now))
            .await
            .expect("answers");
        assert_eq!(reused, ReserveOutcome::KeyReused);
        assert_eq!(
            refusal(&engine, &attempt(&c, "u4", 1, "new", now)).await,
            Refusal::SoldOut
        );
    }
}

async fn confirming_is_idempotent_and_keeps_the_units(engine: Arc<Engine>) {
    let c = campaign(10, 5, |_| {});
    created(&engine, &c).await;
    let now = Millis::now();
    let r = reserved(&engine, &attempt(&c, "u1", 2, "k1", now)).await;

    let Transition::Done(confirmed) = engine.confirm(&r.id, now).await.expect("answers") else {
        panic!("confirm should move held to confirmed");
    };
    assert_eq!(confirmed.status, ReservationStatus::Confirmed);
    assert!(matches!(
        engine.confirm(&r.id, now).await.expect("answers"),
        Transition::Unchanged(_)
    ));
    assert_eq!(counts(&engine, &c.id).await, (8, 0, 2));
    // Confirmed units still count against the limit.
    reserved(&engine, &attempt(&c, "u1", 3, "k2", now)).await;
    assert_eq!(
        refusal(&engine, &attempt(&c, "u1", 1, "k3", now)).await,
        Refusal::LimitExceeded
    );
}

async fn cancelling_returns_units_and_is_idempotent(engine: Arc<Engine>) {
    let c = campaign(1, 1, |_| {});
    created(&engine, &c).await;
    let now = Millis::now();
    let r = reserved(&engine, &attempt(&c, "u1", 1, "k1", now)).await;
    assert_eq!(
        refusal(&engine, &attempt(&c, "u2", 1, "k2", now)).await,
        Refusal::SoldOut
    );

    let outcome = engine
        .cancel(&r.id, CancelScope::HeldOnly, now)
        .await
        .expect("answers");
    assert!(matches!(&outcome, Transition::Done(x) if x.status == ReservationStatus::Cancelled));
    let again = engine
        .cancel(&r.id, CancelScope::HeldOnly, now)
        .await
        .expect("answers");
    assert!(matches!(again, Transition::Unchanged(_)));
    assert_eq!(counts(&engine, &c.id).await, (1, 0, 0));
    // The unit is back for anyone, and the user's count is back too.
    reserved(&engine, &attempt(&c, "u1", 1, "k3", now)).await;
    assert!(matches!(
        engine.confirm(&r.id, now).await.expect("answers"),
        Transition::NotHeld(x) if x.status == ReservationStatus::Cancelled
    ));
}

async fn a_user_cannot_cancel_a_confirmed_reservation_but_the_store_can(engine: Arc<Engine>) {
    let c = campaign(5, 1, |_| {});
    created(&engine, &c).await;
    let now = Millis::now();
    let r = reserved(&engine, &attempt(&c, "u1", 1, "k1", now)).await;
    engine.confirm(&r.id, now).await.expect("answers");

    assert!(matches!(
        engine
            .cancel(&r.id, CancelScope::HeldOnly, now)
            .await
            .expect("answers"),
        Transition::NotHeld(_)
    ));
    assert!(matches!(
        engine
            .cancel(&r.id, CancelScope::HeldOrConfirmed, now)
            .await
            .expect("answers"),
        Transition::Done(_)
    ));
    assert_eq!(counts(&engine, &c.id).await, (5, 0, 0));
}

async fn expired_holds_return_their_units_and_cannot_be_confirmed(engine: Arc<Engine>) {
    let c = campaign(3, 3, |d| d.hold_seconds = Some(10));
    created(&engine, &c).await;
    let now = Millis::now();
    let early = reserved(&engine, &attempt(&c, "u1", 1, "k1", now)).await;
    let late = reserved(&engine, &attempt(&c, "u1", 1, "k2", Millis(now.0 + 5_000))).await;
    let paid = reserved(&engine, &attempt(&c, "u1", 1, "k3", now)).await;
    engine.confirm(&paid.id, now).await.expect("answers");

    let expired = engine
        .expire_due(&c.id, Millis(now.0 + 10_000), 100)
        .await
        .expect("answers");

    assert_eq!(expired, 1);
    assert_eq!(counts(&engine, &c.id).await, (1, 1, 1));
    let gone = engine
        .reservation(&early.id)
        .await
        .expect("answers")
        .expect("kept");
    assert_eq!(gone.status, ReservationStatus::Expired);
    assert_eq!(
        engine
            .expire_due(&c.id, Millis(now.0 + 10_000), 100)
            .await
            .expect("answers"),
        0
    );
    // A hold past its expiry that the reaper has not reached yet expires on confirm.
    assert!(matches!(
        engine.confirm(&late.id, Millis(now.0 + 15_000)).await.expect("answers"),
        Transition::NotHeld(x) if x.status == ReservationStatus::Expired
    ));
    assert_eq!(counts(&engine, &c.id).await, (2, 0, 1));
}

/// The Redis engine keeps holds in a list walked from its head, where confirmed and
/// cancelled ones stay until the walk passes them: a page full of those must not stop it.
async fn holds_behind_more_than_a_page_of_ended_ones_still_expire_in_one_pass(engine: Arc<Engine>) {
    let c = campaign(10, 1, |d| d.hold_seconds = Some(10));
    created(&engine, &c).await;
    let now = Millis::now();
    let mut holds = Vec::new();
    for n in 0..8 {
        let at = Millis(now.0 + n);
        holds.push(
            reserved(
                &engine,
                &attempt(&c, &format!("u{n}"), 1, &format!("k{n}"), at),
            )
            .await,
        );
    }
    for paid in &holds[..5] {
        engine.confirm(&paid.id, now).await.expect("answers");
    }
    engine
        .cancel(&holds[5].id, CancelScope::HeldOnly, now)
        .await
        .expect("answers");

    let expired = engine
        .expire_due(&c.id, Millis(now.0 + 20_000), 3)
        .await
        .expect("answers");

    assert_eq!(expired, 2);
    assert_eq!(counts(&engine, &c.id).await, (5, 0, 5));
    for late in &holds[6..] {
        let r = engine
            .reservation(&late.id)
            .await
            .expect("answers")
            .expect("kept");
        assert_eq!(r.status, ReservationStatus::Expired);
    }
}

async fn stock_can_be_added_and_withdrawn_but_never_below_available(engine: Arc<Engine>) {
    let c = campaign(5, 5, |_| {});
    created(&engine, &c).await;
    let now = Millis::now();
    reserved(&engine, &attempt(&c, "u1", 5, "k1", now)).await;
    assert_eq!(
        refusal(&engine, &attempt(&c, "u2", 1, "k2", now)).await,
        Refusal::SoldOut
    );

    assert_eq!(
        engine
            .adjust_stock(&stock(&c.id, 3))
            .await
            .expect("answers"),
        StockOutcome::Adjusted {
            stock: 8,
            available: 3
        }
    );
    assert_eq!(
        engine
            .adjust_stock(&stock(&c.id, -4))
            .await
            .expect("answers"),
        StockOutcome::Insufficient { available: 3 }
    );
    assert_eq!(
        engine
            .adjust_stock(&stock(&c.id, -2))
            .await
            .expect("answers"),
        StockOutcome::Adjusted {
            stock: 6,
            available: 1
        }
    );
    reserved(&engine, &attempt(&c, "u2", 1, "k3", now)).await;
    assert_eq!(counts(&engine, &c.id).await, (0, 6, 0));
    let missing = crate::engines::campaign(1, 1, |_| {});
    assert_eq!(
        engine
            .adjust_stock(&stock(&missing.id, 1))
            .await
            .expect("answers"),
        StockOutcome::NotFound
    );
}

async fn a_retried_stock_change_applies_once(engine: Arc<Engine>) {
    let c = campaign(10, 5, |_| {});
    created(&engine, &c).await;
    let plus_100 = stock(&c.id, 100);
    let first = engine.adjust_stock(&plus_100).await.expect("answers");
    assert_eq!(
        first,
        StockOutcome::Adjusted {
            stock: 110,
            available: 110
        }
    );
    reserved(&engine, &attempt(&c, "u1", 1, "k1", Millis::now())).await;
    // The retry answers the first outcome and changes nothing. (A sharded campaign's replay
    // counts `available` now: no shard alone knows what the whole had then.)
    let sharded = crate::engines::SHARDS.try_with(|_| ()).is_ok();
    assert_eq!(
        engine.adjust_stock(&plus_100).await.expect("answers"),
        StockOutcome::Replayed {
            stock: 110,
            available: if sharded { 109 } else { 110 }
        }
    );
    assert_eq!(counts(&engine, &c.id).await, (109, 1, 0));
    // The same key with another delta is a different request.
    let reused = flashsale::engine::StockRequest {
        delta: flashsale::domain::StockDelta::parse(5).expect("valid"),
        ..plus_100
    };
    assert_eq!(
        engine.adjust_stock(&reused).await.expect("answers"),
        StockOutcome::KeyReused
    );
    assert_eq!(counts(&engine, &c.id).await, (109, 1, 0));
}

async fn unknown_reservations_are_not_found(engine: Arc<Engine>) {
    let c = campaign(5, 1, |_| {});
    created(&engine, &c).await;
    let id = flashsale::domain::ReservationId::generate(&c.id);
    let now = Millis::now();
    assert_eq!(engine.reservation(&id).await.expect("answers"), None);
    assert_eq!(
        engine.confirm(&id, now).await.expect("answers"),
        Transition::NotFound
    );
    assert_eq!(
        engine
            .cancel(&id, CancelScope::HeldOrConfirmed, now)
            .await
            .expect("answers"),
        Transition::NotFound
    );
}
