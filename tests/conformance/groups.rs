//! Group buys on every engine: quota, slots, forming, failing, idempotency, races.

use crate::engines::{campaign, created};
use crate::on_every_engine;
use flashsale::domain::{
    Campaign, CampaignId, Group, GroupId, GroupStatus, Millis, Refusal, ReservationId,
    ReservationStatus, ScopedKey, UserId,
};
use flashsale::engine::{CancelScope, Engine, GroupOutcome, GroupRequest, Transition};
use std::sync::Arc;

/// A group-buy campaign: groups of `size`, a window of 60 s, holds of 30 s.
pub fn group_campaign(stock: u64, size: u64, limit: u64) -> Campaign {
    campaign(stock, limit, |d| {
        d.kind = "group_buy".into();
        d.group = Some((size, 60));
        d.hold_seconds = Some(30);
    })
}

pub fn request(
    c: &CampaignId,
    group: &GroupId,
    user: &str,
    key: &str,
    now: Millis,
) -> GroupRequest {
    GroupRequest {
        campaign_id: c.clone(),
        group_id: group.clone(),
        user_id: UserId::parse(user).expect("valid user"),
        idempotency_key: ScopedKey::from_stored(format!("s/test:{key}")),
        fingerprint: format!("member:{user}"),
        reservation_id: ReservationId::generate(c),
        now,
    }
}

pub async fn open(
    engine: &Engine,
    c: &Campaign,
    user: &str,
    now: Millis,
) -> Result<Group, Refusal> {
    let group = GroupId::generate(&c.id);
    match engine
        .open_group(&request(
            &c.id,
            &group,
            user,
            &format!("open-{user}-{}", group),
            now,
        ))
        .await
        .expect("answers")
    {
        GroupOutcome::Done(g) => Ok(g),
        GroupOutcome::Refused(r) => Err(r),
        other => panic!("unexpected {other:?}"),
    }
}

pub async fn join(
    engine: &Engine,
    c: &Campaign,
    group: &GroupId,
    user: &str,
    now: Millis,
) -> Result<Group, Refusal> {
    let key = format!("join-{user}-{}", ulid::Ulid::new());
    match engine
        .join_group(&request(&c.id, group, user, &key, now))
        .await
        .expect("answers")
    {
        GroupOutcome::Done(g) => Ok(g),
        GroupOutcome::Refused(r) => Err(r),
        other => panic!("unexpected {other:?}"),
    }
}

/// (available, held, confirmed, open, formed, failed), checking conservation.
pub async fn counts(engine: &Engine, id: &CampaignId) -> (u64, u64, u64, u64, u64, u64) {
    let s = engine.campaign(id).await.expect("answers").expect("exists");
    assert_eq!(
        s.available + s.held + s.confirmed,
        s.campaign.stock,
        "conservation"
    );
    (
        s.available,
        s.held,
        s.confirmed,
        s.groups.open,
        s.groups.formed,
        s.groups.failed,
    )
}

fn member(group: &Group, user: &str) -> ReservationId {
    group
        .members
        .iter()
        .rev()
        .find(|m| m.user_id.as_str() == user)
        .map(|m| m.reservation_id.clone())
        .expect("member present")
}

on_every_engine!(
    opening_a_group_holds_its_whole_quota,
    joining_fills_the_group_until_it_is_full,
    nobody_joins_twice_and_the_limit_counts_across_groups,
    a_group_forms_when_size_members_confirm,
    a_member_whose_hold_ends_frees_the_slot_to_the_group,
    a_group_whose_window_passes_fails_and_returns_its_quota,
    groups_are_only_for_group_buys_and_need_a_whole_quota,
    opening_and_joining_are_idempotent,
    ten_racing_joiners_fill_exactly_the_free_slots,
    three_hundred_users_racing_never_take_more_than_the_stock,
);

async fn opening_a_group_holds_its_whole_quota(engine: Arc<Engine>) {
    let c = group_campaign(6, 3, 1);
    created(&engine, &c).await;
    let now = Millis::now();

    let group = open(&engine, &c, "leader", now).await.expect("opens");

    assert_eq!(group.status, GroupStatus::Open);
    assert_eq!(group.size, 3);
    assert_eq!(group.leader_user_id.as_str(), "leader");
    assert_eq!(group.expires_at, now.plus_seconds(60));
    assert_eq!(group.members.len(), 1);
    assert_eq!(group.members[0].status, ReservationStatus::Held);
    assert_eq!(counts(&engine, &c.id).await, (3, 3, 0, 1, 0, 0));
    let r = engine
        .reservation(&group.members[0].reservation_id)
        .await
        .expect("answers")
        .expect("exists");
    assert_eq!(r.group_id.as_ref(), Some(&group.id));
    assert_eq!(engine.group(&group.id).await.expect("answers"), Some(group));
}

async fn joining_fills_the_group_until_it_is_full(engine: Arc<Engine>) {
    let c = group_campaign(6, 3, 1);
    created(&engine, &c).await;
    let now = Millis::now();
    let group = open(&engine, &c, "leader", now).await.expect("opens");

    join(&engine, &c, &group.id, "a", now).await.expect("joins");
    let full = join(&engine, &c, &group.id, "b", now).await.expect("joins");

    assert_eq!(full.members.len(), 3);
    assert_eq!(
        join(&engine, &c, &group.id, "c", now).await,
        Err(Refusal::GroupFull)
    );
    // Joining never changes the campaign's units: the quota was held at opening.
    assert_eq!(counts(&engine, &c.id).await, (3, 3, 0, 1, 0, 0));
    let unknown = GroupId::generate(&c.id);
    assert_eq!(
        join(&engine, &c, &unknown, "c", now).await,
        Err(Refusal::GroupNotFound)
    );
}

async fn nobody_joins_twice_and_the_limit_counts_across_groups(engine: Arc<Engine>) {
    let c = group_campaign(9, 3, 1);
    created(&engine, &c).await;
    let now = Millis::now();
    let first = open(&engine, &c, "leader", now).await.expect("opens");
    let second = open(&engine, &c, "other", now).await.expect("opens");

    assert_eq!(
        join(&engine, &c, &first.id, "leader", now).await,
        Err(Refusal::AlreadyMember)
    );
    assert_eq!(
        join(&engine, &c, &second.id, "leader", now).await,
        Err(Refusal::LimitExceeded)
    );
    assert_eq!(
        open(&engine, &c, "leader", now).await.map(|g| g.id),
        Err(Refusal::LimitExceeded)
    );
}

async fn a_group_forms_when_size_members_confirm(engine: Arc<Engine>) {
    let c = group_campaign(6, 3, 1);
    created(&engine, &c).await;
    let now = Millis::now();
    let group = open(&engine, &c, "leader", now).await.expect("opens");
    join(&engine, &c, &group.id, "a", now).await.expect("joins");
    let group = join(&engine, &c, &group.id, "b", now).await.expect("joins");

    for (i, m) in group.members.iter().enumerate() {
        assert!(matches!(
            engine
                .confirm(&m.reservation_id, now)
                .await
                .expect("answers"),
            Transition::Done(_)
        ));
        let expected = if i < 2 {
            GroupStatus::Open
        } else {
            GroupStatus::Formed
        };
        assert_eq!(
            engine
                .group(&group.id)
                .await
                .expect("answers")
                .expect("exists")
                .status,
            expected
        );
    }

    assert_eq!(counts(&engine, &c.id).await, (3, 0, 3, 0, 1, 0));
    // A formed group is closed, and its units are sold as a whole.
    assert_eq!(
        join(&engine, &c, &group.id, "c", now).await,
        Err(Refusal::GroupClosed)
    );
    assert!(matches!(
        engine
            .cancel(
                &group.members[0].reservation_id,
                CancelScope::HeldOrConfirmed,
                now
            )
            .await
            .expect("answers"),
        Transition::NotHeld(_)
    ));
    // The window passing later changes nothing for a formed group.
    engine
        .expire_due(&c.id, Millis(now.0 + 120_000), 100)
        .await
        .expect("answers");
    assert_eq!(counts(&engine, &c.id).await.4, 1);
}

async fn a_member_whose_hold_ends_frees_the_slot_to_the_group(engine: Arc<Engine>) {
    let c = group_campaign(6, 3, 1);
    created(&engine, &c).await;
    let now = Millis::now();
    let group = open(&engine, &c, "leader", now).await.expect("opens");
    join(&engine, &c, &group.id, "a", now).await.expect("joins");
    let group = join(&engine, &c, &group.id, "b", now).await.expect("joins");

    let cancelled = engine
        .cancel(&member(&group, "a"), CancelScope::HeldOnly, now)
        .await
        .expect("answers");
    assert!(matches!(cancelled, Transition::Done(_)));
    assert_eq!(
        counts(&engine, &c.id).await,
        (3, 3, 0, 1, 0, 0),
        "the slot stays with the group"
    );
    join(&engine, &c, &group.id, "c", now)
        .await
        .expect("the freed slot is taken");
    // b's hold expires (30 s) inside the window (60 s): its slot returns to the group too.
    let ended = engine
        .expire_due(&c.id, Millis(now.0 + 31_000), 100)
        .await
        .expect("answers");
    assert_eq!(ended, 3, "every member's hold ended");
    let group = engine
        .group(&group.id)
        .await
        .expect("answers")
        .expect("exists");
    assert_eq!(group.status, GroupStatus::Open);
    assert_eq!(group.active_members(), 0);
    assert_eq!(counts(&engine, &c.id).await, (3, 3, 0, 1, 0, 0));
    // The cancelled user may come back.
    join(&engine, &c, &group.id, "a", Millis(now.0 + 32_000))
        .await
        .expect("rejoins");
}

async fn a_group_whose_window_passes_fails_and_returns_its_quota(engine: Arc<Engine>) {
    let c = group_campaign(6, 3, 1);
    created(&engine, &c).await;
    let now = Millis::now();
    let group = open(&engine, &c, "leader", now).await.expect("opens");
    let group = join(&engine, &c, &group.id, "a", now).await.expect("joins");
    engine
        .confirm(&member(&group, "a"), now)
        .await
        .expect("answers");
    assert_eq!(counts(&engine, &c.id).await, (3, 2, 1, 1, 0, 0));

    let ended = engine
        .expire_due(&c.id, group.expires_at, 100)
        .await
        .expect("answers");

    assert_eq!(ended, 2);
    let failed = engine
        .group(&group.id)
        .await
        .expect("answers")
        .expect("exists");
    assert_eq!(failed.status, GroupStatus::Failed);
    assert!(failed
        .members
        .iter()
        .all(|m| m.status == ReservationStatus::Released));
    assert_eq!(counts(&engine, &c.id).await, (6, 0, 0, 0, 0, 1));
    assert_eq!(
        join(&engine, &c, &group.id, "b", group.expires_at).await,
        Err(Refusal::GroupClosed)
    );
    // Released members are free to open a new group.
    open(&engine, &c, "leader", group.expires_at)
        .await
        .expect("opens again");
}

async fn groups_are_only_for_group_buys_and_need_a_whole_quota(engine: Arc<Engine>) {
    let now = Millis::now();
    let flash = campaign(10, 1, |_| {});
    created(&engine, &flash).await;
    assert_eq!(
        open(&engine, &flash, "u", now).await.map(|g| g.id),
        Err(Refusal::WrongCampaignKind)
    );
    let c = group_campaign(5, 3, 1);
    created(&engine, &c).await;
    open(&engine, &c, "first", now).await.expect("3 of 5 units");
    assert_eq!(
        open(&engine, &c, "second", now).await.map(|g| g.id),
        Err(Refusal::SoldOut)
    );
    let missing = group_campaign(5, 3, 1);
    assert_eq!(
        open(&engine, &missing, "u", now).await.map(|g| g.id),
        Err(Refusal::CampaignNotFound)
    );
}

async fn opening_and_joining_are_idempotent(engine: Arc<Engine>) {
    let c = group_campaign(9, 3, 2);
    created(&engine, &c).await;
    let now = Millis::now();
    let first = GroupId::generate(&c.id);
    let opened = engine
        .open_group(&request(&c.id, &first, "leader", "open-1", now))
        .await
        .expect("answers");
    let GroupOutcome::Done(group) = opened else {
        panic!("opens: {opened:?}")
    };
    // A retry generates another id; the key brings back the first group.
    let again = engine
        .open_group(&request(
            &c.id,
            &GroupId::generate(&c.id),
            "leader",
            "open-1",
            now,
        ))
        .await
        .expect("answers");
    assert!(
        matches!(&again, GroupOutcome::Replayed(g) if g.id == group.id),
        "{again:?}"
    );
    let reused = engine
        .open_group(&request(
            &c.id,
            &GroupId::generate(&c.id),
            "other",
            "open-1",
            now,
        ))
        .await
        .expect("answers");
    assert_eq!(reused, GroupOutcome::KeyReused);

    let joined = engine
        .join_group(&request(&c.id, &group.id, "a", "join-1", now))
        .await
        .expect("answers");
    assert!(matches!(joined, GroupOutcome::Done(_)));
    let retried = engine
        .join_group(&request(&c.id, &group.id, "a", "join-1", now))
        .await
        .expect("answers");
    assert!(
        matches!(&retried, GroupOutcome::Replayed(g) if g.members.len() == 2),
        "{retried:?}"
    );
    assert_eq!(counts(&engine, &c.id).await, (6, 3, 0, 1, 0, 0));
}

async fn ten_racing_joiners_fill_exactly_the_free_slots(engine: Arc<Engine>) {
    let c = group_campaign(30, 3, 1);
    created(&engine, &c).await;
    let now = Millis::now();
    let group = open(&engine, &c, "leader", now).await.expect("opens");
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let engine = Arc::clone(&engine);
            let request = request(
                &c.id,
                &group.id,
                &format!("joiner-{i}"),
                &format!("race-{i}"),
                now,
            );
            tokio::spawn(async move { engine.join_group(&request).await.expect("answers") })
        })
        .collect();
    let (mut joined, mut full) = (0, 0);
    for task in tasks {
        match task.await.expect("no panic") {
            GroupOutcome::Done(_) => joined += 1,
            GroupOutcome::Refused(Refusal::GroupFull) => full += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((joined, full), (2, 8));
    assert_eq!(
        engine
            .group(&group.id)
            .await
            .expect("answers")
            .expect("exists")
            .active_members(),
        3
    );
}

async fn three_hundred_users_racing_never_take_more_than_the_stock(engine: Arc<Engine>) {
    let c = group_campaign(120, 3, 1);
    created(&engine, &c).await;
    let now = Millis::now();
    let groups: Arc<tokio::sync::Mutex<Vec<GroupId>>> = Arc::default();
    let checking = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let checker = {
        let engine = Arc::clone(&engine);
        let id = c.id.clone();
        let checking = Arc::clone(&checking);
        tokio::spawn(async move {
            let mut checks = 0;
            while checking.load(std::sync::atomic::Ordering::SeqCst) {
                let s = engine
                    .campaign(&id)
                    .await
                    .expect("answers")
                    .expect("exists");
                assert_eq!(
                    s.available + s.held + s.confirmed,
                    120,
                    "conservation at every step"
                );
                assert!(
                    s.groups.open + s.groups.formed <= 40,
                    "at most 40 groups hold units"
                );
                checks += 1;
                tokio::task::yield_now().await;
            }
            checks
        })
    };
    let tasks: Vec<_> = (0..300)
        .map(|i| {
            let engine = Arc::clone(&engine);
            let c = c.clone();
            let groups = Arc::clone(&groups);
            tokio::spawn(async move {
                let user = format!("user-{i}");
                // Join a known group if one takes us, else open one.
                let known: Vec<GroupId> = groups.lock().await.clone();
                for g in known.iter().rev().take(5) {
                    if join(&engine, &c, g, &user, now).await.is_ok() {
                        return;
                    }
                }
                if let Ok(group) = open(&engine, &c, &user, now).await {
                    groups.lock().await.push(group.id);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("no panic");
    }
    checking.store(false, std::sync::atomic::Ordering::SeqCst);
    assert!(checker.await.expect("no panic") > 0);
    let ids = groups.lock().await.clone();
    assert!(ids.len() <= 40);
    for id in &ids {
        let g = engine.group(id).await.expect("answers").expect("exists");
        assert!(g.active_members() <= 3, "no group above its size");
    }
    let (available, held, confirmed, open_groups, _, _) = counts(&engine, &c.id).await;
    assert_eq!(available + held + confirmed, 120);
    assert_eq!(held, 3 * open_groups);
}
