//! The waiting room (contract v1.1) on every engine: one ticket per user, the fair draw at
//! `starts_at`, exact and decreasing positions, admission at the rate and never past the
//! units left, sold out reaching every waiting ticket, passes lapsing — and many admitters at
//! once never passing the rate.

use crate::engines::{attempt, campaign, cluster, redis};
use flashsale::domain::{
    Campaign, CampaignId, IdempotencyKey, Millis, Refusal, ScopedKey, Ticket, TicketId,
    TicketStatus, UserId,
};
use flashsale::engine::{
    CampaignSnapshot, CancelScope, Engine, JoinOutcome, JoinRequest, MemoryEngine, ReserveOutcome,
    Transition,
};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

#[derive(Debug, Clone, Copy)]
enum Kind {
    Memory,
    Redis,
    GatedRedis,
    Cluster,
}

async fn make(kind: Kind) -> Arc<Engine> {
    Arc::new(match kind {
        Kind::Memory => Engine::ungated(MemoryEngine::new()),
        Kind::Redis => Engine::ungated(redis().await),
        Kind::GatedRedis => Engine::new(redis().await),
        Kind::Cluster => Engine::ungated(cluster().await),
    })
}

macro_rules! on_every_queue_engine {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use super::{make, Kind};
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory() { super::$name(make(Kind::Memory).await).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis() { super::$name(make(Kind::Redis).await).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn gated_redis() { super::$name(make(Kind::GatedRedis).await).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn cluster() { super::$name(make(Kind::Cluster).await).await }
        }
    )*};
}

on_every_queue_engine!(
    tickets_before_the_start_are_admitted_in_a_fair_draw_at_the_rate,
    admission_never_outruns_the_units_left,
    sold_out_reaches_every_waiting_ticket_at_once,
    one_ticket_per_user_and_per_key,
    many_admitters_at_once_never_pass_the_rate,
    concurrent_reads_answer_each_ticket_its_own,
    concurrent_joins_give_each_user_one_ticket_and_one_place,
);

/// A whole second, so the RFC 3339 round trip of `starts_at` is exact.
fn second(at: Millis) -> Millis {
    Millis(at.0 / 1000 * 1000)
}

async fn queued(engine: &Engine, stock: u64, rate: u64, starts_at: Option<Millis>) -> Campaign {
    let c = campaign(stock, 1, |d| {
        d.queue = Some((rate, Some(30)));
        d.starts_at = starts_at.map(Millis::to_rfc3339);
    });
    assert_ne!(
        engine
            .load(CampaignSnapshot::fresh(&c))
            .await
            .expect("engine answers"),
        0
    );
    c
}

fn join_request(c: &Campaign, user: &str, key: &str, now: Millis) -> JoinRequest {
    JoinRequest::new(
        c.id.clone(),
        UserId::parse(user).expect("valid user"),
        ScopedKey::new(
            "s/test",
            "queue",
            &IdempotencyKey::parse(key).expect("valid key"),
        ),
        now,
    )
}

async fn join(engine: &Engine, c: &Campaign, user: &str, now: Millis) -> Ticket {
    match engine
        .join_queue(&join_request(c, user, &format!("q-{user}"), now))
        .await
        .expect("answers")
    {
        JoinOutcome::Joined(ticket) => ticket,
        other => panic!("expected a new ticket for {user}, got {other:?}"),
    }
}

async fn status(engine: &Engine, ticket: &TicketId, now: Millis) -> TicketStatus {
    engine
        .backing()
        .waiting_room()
        .ticket(ticket, now)
        .await
        .expect("answers")
        .expect("the ticket exists")
        .status
}

async fn position(engine: &Engine, ticket: &TicketId, now: Millis) -> Option<u64> {
    match status(engine, ticket, now).await {
        TicketStatus::Waiting { position } => position,
        _ => None,
    }
}

async fn tickets_before_the_start_are_admitted_in_a_fair_draw_at_the_rate(engine: Arc<Engine>) {
    const USERS: usize = 2_000;
    const RATE: u64 = 100;
    let start = second(Millis::now()).plus_seconds(3600);
    let c = queued(&engine, 10_000, RATE, Some(start)).await;
    let early = Millis(start.0 - 60_000);
    let mut tickets = Vec::with_capacity(USERS);
    for i in 0..USERS {
        let ticket = join(&engine, &c, &format!("u{i}"), early).await;
        // Before the draw nobody has a place yet.
        assert_eq!(ticket.status, TicketStatus::Waiting { position: None });
        tickets.push(ticket.id);
    }
    let before = engine
        .backing()
        .waiting_room()
        .admit(&c.id, early)
        .await
        .expect("answers");
    assert_eq!(
        (before.admitted, before.room),
        (0, 0),
        "nothing admissible before the start"
    );

    // The draw: at the start every early ticket has a distinct place in 1..=USERS.
    let mut place = HashMap::new();
    for ticket in &tickets {
        let p = position(&engine, ticket, start).await.expect("drawn");
        place.insert(ticket.clone(), p);
        assert!((1..=USERS as u64).contains(&p));
    }
    let distinct: HashSet<u64> = place.values().copied().collect();
    assert_eq!(distinct.len(), USERS, "places are a permutation");
    // …and the draw is not the arrival order: Spearman's rank correlation between arrival and
    // place is near 0 (its standard deviation is 1/sqrt(n-1) ≈ 0.022 for a fair draw).
    let n = USERS as f64;
    let d2: f64 = tickets
        .iter()
        .enumerate()
        .map(|(arrival, t)| (arrival as f64 + 1.0 - place[t] as f64).powi(2))
        .sum();
    let rho = 1.0 - 6.0 * d2 / (n * (n * n - 1.0));
    assert!(
        rho.abs() < 0.12,
        "draw correlates with arrival: rho = {rho}"
    );

    // A ticket taken after the start comes after every drawn one.
    let late = join(&engine, &c, "late", start).await;
    assert_eq!(
        late.status,
        TicketStatus::Waiting {
            position: Some(USERS as u64 + 1)
        }
    );

    // Admission at 100/s, in rounds 50 ms apart over 3 s: in drawn order, each once.
    let by_place: HashMap<u64, TicketId> = place.iter().map(|(t, p)| (*p, t.clone())).collect();
    let mut admitted_so_far = 0u64;
    let mut now = start;
    for _ in 0..60 {
        now = Millis(now.0 + 50);
        let round = engine
            .backing()
            .waiting_room()
            .admit(&c.id, now)
            .await
            .expect("answers");
        admitted_so_far += round.admitted;
        assert_eq!(round.waiting, USERS as u64 + 1 - admitted_so_far);
    }
    let elapsed = (now.0 - start.0) as f64 / 1000.0;
    assert!(
        admitted_so_far as f64 <= RATE as f64 * elapsed + (RATE / 10) as f64,
        "{admitted_so_far} admitted in {elapsed} s at {RATE}/s"
    );
    assert!(
        admitted_so_far >= RATE * 3 - RATE / 10,
        "admission keeps up: {admitted_so_far}"
    );
    // Room: the units less the passes out (none used, none lapsed yet).
    let more = engine
        .backing()
        .waiting_room()
        .admit(&c.id, now)
        .await
        .expect("answers");
    assert_eq!(more.room, 10_000 - admitted_so_far - more.admitted);
    admitted_so_far += more.admitted;
    for p in 1..=USERS as u64 {
        let s = status(&engine, &by_place[&p], now).await;
        if p <= admitted_so_far {
            assert!(
                matches!(s, TicketStatus::Admitted { .. }),
                "place {p}: {s:?}"
            );
        } else {
            // Exact: everyone ahead was admitted, so the place moved up by exactly that many.
            assert_eq!(
                s,
                TicketStatus::Waiting {
                    position: Some(p - admitted_so_far)
                }
            );
        }
    }
}

async fn admission_never_outruns_the_units_left(engine: Arc<Engine>) {
    let c = queued(&engine, 5, 1_000, None).await;
    let t = Millis::now();
    let mut tickets = Vec::new();
    for i in 0..20 {
        tickets.push(join(&engine, &c, &format!("w{i}"), t).await.id);
    }
    // A round's budget is 100 (a tenth of a second at 1000/s), but 5 units are left.
    let first = engine
        .backing()
        .waiting_room()
        .admit(&c.id, t)
        .await
        .expect("answers");
    assert_eq!((first.admitted, first.room), (5, 0));
    let t1 = Millis(t.0 + 1_000);
    assert_eq!(
        engine
            .backing()
            .waiting_room()
            .admit(&c.id, t1)
            .await
            .expect("answers")
            .admitted,
        0
    );

    // w0 reserves and its pass is used: 4 units, 4 unused passes — still no room.
    let reserved = match engine
        .reserve(&attempt(&c, "w0", 1, "r-w0", t1))
        .await
        .expect("answers")
    {
        ReserveOutcome::Reserved { reservation, .. } => reservation,
        other => panic!("{other:?}"),
    };
    engine
        .backing()
        .waiting_room()
        .pass_used(&tickets[0])
        .await
        .expect("answers");
    assert_eq!(
        engine
            .backing()
            .waiting_room()
            .admit(&c.id, Millis(t1.0 + 500))
            .await
            .expect("answers")
            .admitted,
        0
    );
    // The hold is cancelled: a unit with no pass waiting for it, so one more is admitted.
    let t2 = Millis(t1.0 + 1_000);
    assert!(matches!(
        engine
            .cancel(&reserved.id, CancelScope::HeldOrConfirmed, t2)
            .await
            .expect("answers"),
        Transition::Done(_)
    ));
    assert_eq!(
        engine
            .backing()
            .waiting_room()
            .admit(&c.id, t2)
            .await
            .expect("answers")
            .admitted,
        1
    );
    assert!(matches!(
        status(&engine, &tickets[5], t2).await,
        TicketStatus::Admitted { .. }
    ));
    assert_eq!(
        status(&engine, &tickets[6], t2).await,
        TicketStatus::Waiting { position: Some(1) }
    );
    // Passes lapse after pass_seconds (30): their tickets read expired and their units are
    // offered to the next in line.
    let lapsed = t.plus_seconds(31);
    assert_eq!(
        status(&engine, &tickets[1], lapsed).await,
        TicketStatus::Expired
    );
    assert_eq!(
        engine
            .backing()
            .waiting_room()
            .admit(&c.id, lapsed)
            .await
            .expect("answers")
            .admitted,
        4
    );
    let later = t2.plus_seconds(31);
    assert_eq!(
        engine
            .backing()
            .waiting_room()
            .admit(&c.id, later)
            .await
            .expect("answers")
            .admitted,
        1
    );
}

async fn sold_out_reaches_every_waiting_ticket_at_once(engine: Arc<Engine>) {
    let c = queued(&engine, 2, 1_000, None).await;
    let t = Millis::now();
    let mut tickets = Vec::new();
    for i in 0..10 {
        tickets.push(join(&engine, &c, &format!("s{i}"), t).await.id);
    }
    assert_eq!(
        engine
            .backing()
            .waiting_room()
            .admit(&c.id, t)
            .await
            .expect("answers")
            .admitted,
        2
    );
    let mut holds = Vec::new();
    for user in ["s0", "s1"] {
        match engine
            .reserve(&attempt(&c, user, 1, &format!("r-{user}"), t))
            .await
            .expect("answers")
        {
            ReserveOutcome::Reserved { reservation, .. } => holds.push(reservation),
            other => panic!("{other:?}"),
        }
    }
    for ticket in &tickets[2..] {
        assert_eq!(status(&engine, ticket, t).await, TicketStatus::SoldOut);
    }
    // A ticket taken now reads sold out too.
    assert_eq!(
        join(&engine, &c, "s-late", t).await.status,
        TicketStatus::SoldOut
    );
    // A unit comes back: the line is back, in its order.
    engine
        .cancel(&holds[0].id, CancelScope::HeldOrConfirmed, t)
        .await
        .expect("answers");
    assert_eq!(
        status(&engine, &tickets[2], t).await,
        TicketStatus::Waiting { position: Some(1) }
    );
}

async fn one_ticket_per_user_and_per_key(engine: Arc<Engine>) {
    let c = queued(&engine, 10, 10, None).await;
    let t = Millis::now();
    let first = join(&engine, &c, "ann", t).await;
    // Another key, same user: the same ticket.
    let again = engine
        .join_queue(&join_request(&c, "ann", "another-key", t))
        .await
        .expect("answers");
    assert_eq!(again, JoinOutcome::Existing(first.clone()));
    // The same key for another user: refused.
    assert_eq!(
        engine
            .join_queue(&join_request(&c, "bob", "q-ann", t))
            .await
            .expect("answers"),
        JoinOutcome::KeyReused
    );
    assert_eq!(
        join(&engine, &c, "bob", t).await.status,
        TicketStatus::Waiting { position: Some(2) }
    );
    // No waiting room, no campaign, campaign ended.
    let plain = campaign(10, 1, |_| {});
    assert_ne!(
        engine
            .load(CampaignSnapshot::fresh(&plain))
            .await
            .expect("answers"),
        0
    );
    let refused = |outcome: JoinOutcome| match outcome {
        JoinOutcome::Refused(r) => r,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        refused(
            engine
                .join_queue(&join_request(&plain, "ann", "k1", t))
                .await
                .expect("answers")
        ),
        Refusal::NoWaitingRoom
    );
    let ghost = campaign(10, 1, |d| d.queue = Some((10, None)));
    assert_eq!(
        refused(
            engine
                .join_queue(&join_request(&ghost, "ann", "k2", t))
                .await
                .expect("answers")
        ),
        Refusal::CampaignNotFound
    );
    engine.end_campaign(&c.id, t).await.expect("answers");
    let after = Millis(t.0 + 1);
    assert_eq!(
        refused(
            engine
                .join_queue(&join_request(&c, "cat", "k3", after))
                .await
                .expect("answers")
        ),
        Refusal::Ended
    );
    assert_eq!(
        status(&engine, &first.id, after).await,
        TicketStatus::Expired
    );
    assert_eq!(
        engine
            .backing()
            .waiting_room()
            .admit(&c.id, after)
            .await
            .expect("answers")
            .admitted,
        0
    );
    // Unknown tickets are unknown.
    let stranger = TicketId::generate(&CampaignId::parse("nowhere").expect("valid"));
    assert_eq!(
        engine
            .backing()
            .waiting_room()
            .ticket(&stranger, t)
            .await
            .expect("answers"),
        None
    );
}

/// Eight admitters (two engines' worth on Redis: separate connections, like two instances)
/// run admission rounds as fast as they can on the real clock for 1.5 s; however they
/// interleave, what they admitted in all stays within the rate over the time they ran plus
/// one round's burst.
async fn many_admitters_at_once_never_pass_the_rate(engine: Arc<Engine>) {
    const RATE: u64 = 200;
    let c = queued(&engine, 100_000, RATE, None).await;
    let t = Millis::now();
    for i in 0..1_000 {
        join(&engine, &c, &format!("m{i}"), t).await;
    }
    let second_engine: Arc<Engine> = match engine.backing().backend().name() {
        "redis" => Arc::new(Engine::ungated(redis().await)),
        "redis-cluster" => Arc::new(Engine::ungated(cluster().await)),
        _ => Arc::clone(&engine),
    };
    let started = Millis::now();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let engine = if i % 2 == 0 {
            Arc::clone(&engine)
        } else {
            Arc::clone(&second_engine)
        };
        let id = c.id.clone();
        tasks.push(tokio::spawn(async move {
            let mut admitted = 0;
            let until = std::time::Instant::now() + std::time::Duration::from_millis(1_500);
            while std::time::Instant::now() < until {
                admitted += engine
                    .backing()
                    .waiting_room()
                    .admit(&id, Millis::now())
                    .await
                    .expect("answers")
                    .admitted;
                tokio::task::yield_now().await;
            }
            admitted
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await.expect("admitter");
    }
    let elapsed = (Millis::now().0 - started.0) as f64 / 1000.0;
    let cap = RATE as f64 * elapsed + (RATE / 10) as f64;
    assert!(
        total as f64 <= cap,
        "{total} admitted in {elapsed:.3} s at {RATE}/s"
    );
    // Admission ran (loosely: the machine may be busy with other tests).
    assert!(total as f64 >= RATE as f64 * 0.5, "admission ran: {total}");
    // Nobody admitted twice, nobody lost: what waits is what was not admitted.
    let last = engine
        .backing()
        .waiting_room()
        .admit(&c.id, Millis::now())
        .await
        .expect("answers");
    assert_eq!(last.waiting, 1_000 - total - last.admitted);
}

/// Reads of many tickets at once (the Redis engine batches them per campaign): each answer
/// is its own ticket's — its user, its place.
async fn concurrent_reads_answer_each_ticket_its_own(engine: Arc<Engine>) {
    let c = queued(&engine, 1_000, 1, None).await;
    let t = Millis::now();
    let mut tickets = Vec::new();
    for i in 0..300 {
        tickets.push((
            format!("r{i}"),
            join(&engine, &c, &format!("r{i}"), t).await.id,
        ));
    }
    let reads = tickets.iter().cloned().enumerate().map(|(i, (user, id))| {
        let engine = Arc::clone(&engine);
        tokio::spawn(async move {
            let ticket = engine
                .backing()
                .waiting_room()
                .ticket(&id, t)
                .await
                .expect("answers")
                .expect("exists");
            assert_eq!(ticket.id, id);
            assert_eq!(ticket.user_id.as_str(), user);
            assert_eq!(
                ticket.status,
                TicketStatus::Waiting {
                    position: Some(i as u64 + 1)
                }
            );
        })
    });
    for read in reads.collect::<Vec<_>>() {
        read.await.expect("reader");
    }
}

/// 200 users join twice each (other keys), all at once (the Redis engine batches joins per
/// campaign): one ticket per user, both answers name it, and the places are 1..=200.
async fn concurrent_joins_give_each_user_one_ticket_and_one_place(engine: Arc<Engine>) {
    let c = queued(&engine, 1_000, 1, None).await;
    let t = Millis::now();
    let joins = (0..400).map(|i| {
        let (engine, c) = (Arc::clone(&engine), c.clone());
        tokio::spawn(async move {
            let user = format!("j{}", i % 200);
            let outcome = engine
                .join_queue(&join_request(&c, &user, &format!("k{i}"), t))
                .await
                .expect("answers");
            (user, outcome)
        })
    });
    let mut by_user: HashMap<String, Vec<(bool, TicketId)>> = HashMap::new();
    for join in joins.collect::<Vec<_>>() {
        let (user, outcome) = join.await.expect("joiner");
        let entry = match outcome {
            JoinOutcome::Joined(ticket) => (true, ticket.id),
            JoinOutcome::Existing(ticket) => (false, ticket.id),
            other => panic!("{other:?}"),
        };
        by_user.entry(user).or_default().push(entry);
    }
    assert_eq!(by_user.len(), 200);
    let mut places = HashSet::new();
    for (user, answers) in &by_user {
        assert_eq!(answers.len(), 2, "{user}");
        assert_eq!(answers[0].1, answers[1].1, "{user} got two tickets");
        assert_eq!(
            answers.iter().filter(|a| a.0).count(),
            1,
            "{user}: one new ticket"
        );
        places.insert(position(&engine, &answers[0].1, t).await.expect("placed"));
    }
    assert_eq!(places, (1..=200).collect::<HashSet<u64>>());
}
