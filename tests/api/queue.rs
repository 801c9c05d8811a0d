//! The waiting room over HTTP (contract v1.1): tickets, polling, passes — required, bound to
//! their user and campaign, unforgeable, expiring — and admission by the service's own
//! worker; with two instances on one Redis, admission still keeps the campaign's rate.

use crate::helpers::{
    assert_problem, fresh_key, redis_url, spawn_app_with, unique_id, Backend, TestApp,
};
use crate::on_every_backend;
use flashsale::domain::{Millis, TicketId, TicketStatus};
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

on_every_backend!(
    a_queued_campaign_takes_reservations_only_with_a_valid_pass,
    one_ticket_per_user_and_only_its_user_reads_it,
    group_buys_with_a_waiting_room_need_a_pass_too,
    polls_follow_the_line_as_it_moves,
    a_polled_ticket_reads_sold_out_as_the_last_unit_goes_and_waiting_when_it_returns,
    joins_from_one_user_count_against_the_rate_limit,
    a_unit_given_back_goes_to_the_line_not_back_to_the_same_pass,
    joins_with_new_keys_leave_one_ticket_record,
);

/// Stock 1: ann buys with her pass and cancels; bob, admitted since for the returned unit,
/// gets it — ann's same pass does not take it again (409 `sold_out`), though a retry of her
/// first reservation still answers it. Once bob has his unit and gives it back, nobody else
/// waits: ann's pass may take it again.
async fn a_unit_given_back_goes_to_the_line_not_back_to_the_same_pass(backend: Backend) {
    let app = spawn_app_with(backend, |_| {}).await;
    let campaign = app
        .campaign(
            1,
            1,
            json!({"queue": {"admit_per_second": 20, "pass_seconds": 60}}),
        )
        .await;
    let (ann, bob) = (app.user_token("ann"), app.user_token("bob"));
    let first: Value = join(&app, &campaign, &ann, json!({}))
        .await
        .json()
        .await
        .expect("json");
    let (ann_pass, _) = pass_of(&app, first["ticket"].as_str().expect("id"), &ann).await;
    let second: Value = join(&app, &campaign, &bob, json!({}))
        .await
        .json()
        .await
        .expect("json");
    let bob_ticket = second["ticket"].as_str().expect("id").to_owned();

    let key = fresh_key();
    let reserve = |token: &str, pass: &str, key: &str| {
        app.client
            .post(app.url(&format!("/v1/campaigns/{campaign}/reservations")))
            .bearer_auth(token.to_owned())
            .header("Idempotency-Key", key.to_owned())
            .header("Flashsale-Pass", pass.to_owned())
            .json(&json!({}))
            .send()
    };
    let held = reserve(&ann, &ann_pass, &key).await.expect("sent");
    assert_eq!(held.status(), StatusCode::CREATED);
    let held: Value = held.json().await.expect("json");
    let held_id = held["id"].as_str().expect("id").to_owned();
    assert_eq!(
        app.cancel(&held_id, &app.store_token).await.status(),
        StatusCode::OK
    );
    let (bob_pass, _) = pass_of(&app, &bob_ticket, &bob).await;

    assert_problem(
        reserve(&ann, &ann_pass, &fresh_key()).await.expect("sent"),
        409,
        "sold_out",
    )
    .await;
    let retry = reserve(&ann, &ann_pass, &key).await.expect("sent");
    assert!(retry.status().is_success(), "{}", retry.status());
    let retry: Value = retry.json().await.expect("json");
    assert_eq!(retry["id"], held_id.as_str(), "a retry answers the first");
    let bobs = reserve(&bob, &bob_pass, &fresh_key()).await.expect("sent");
    assert_eq!(bobs.status(), StatusCode::CREATED);
    let bobs: Value = bobs.json().await.expect("json");

    // Bob gives his back; nobody waits: ann's pass takes it.
    assert_eq!(
        app.cancel(bobs["id"].as_str().expect("id"), &app.store_token)
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        reserve(&ann, &ann_pass, &fresh_key())
            .await
            .expect("sent")
            .status(),
        StatusCode::CREATED
    );
}

/// However many keys one user joins with, the line keeps one ticket and one key record for
/// them (contract v1.2): 200 joins with new keys answer the same ticket and leave the
/// engine's waiting-room keys as large as after the first.
async fn joins_with_new_keys_leave_one_ticket_record(backend: Backend) {
    let app = spawn_app_with(backend, |_| {}).await;
    // Starting in an hour: no admission round changes the line while it is weighed.
    let starts = Millis::now().plus_seconds(3600);
    let campaign = app
        .campaign(
            10,
            1,
            json!({"queue": {"admit_per_second": 1}, "starts_at": starts.to_rfc3339()}),
        )
        .await;
    let first: Value = join(
        &app,
        &campaign,
        &app.store_token,
        json!({"user_id": "many"}),
    )
    .await
    .json()
    .await
    .expect("json");
    let size = || async {
        if !backend.is_redis() {
            return 0;
        }
        let keys = crate::helpers::redis_keys(backend, &format!("*{campaign}*:w*")).await;
        let mut total = 0;
        for key in keys {
            total += crate::helpers::redis_memory_usage(backend, &key).await;
        }
        total
    };
    let before = size().await;
    assert!(
        before > 0 || !backend.is_redis(),
        "the line's keys are weighed"
    );
    for _ in 0..200 {
        let again = join(
            &app,
            &campaign,
            &app.store_token,
            json!({"user_id": "many"}),
        )
        .await;
        assert!(again.status().is_success());
        let again: Value = again.json().await.expect("json");
        assert_eq!(again["ticket"], first["ticket"]);
    }
    assert_eq!(
        size().await,
        before,
        "nothing left behind by the later joins"
    );
}

/// One user flooding the line with new keys is limited like a user flooding reservations
/// (contract v1.2): the third join in a second is 429 `rate_limited`; others still join.
async fn joins_from_one_user_count_against_the_rate_limit(backend: Backend) {
    let app = spawn_app_with(backend, |c| c.user_rate_per_second = 2).await;
    let id = app
        .campaign(10, 1, json!({"queue": {"admit_per_second": 5}}))
        .await;
    let mut limited = None;
    for _ in 0..10 {
        let response = join(&app, &id, &app.store_token, json!({"user_id": "flood"})).await;
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(response);
            break;
        }
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    let response = limited.expect("a quick third join is limited");
    assert!(response.headers().contains_key("retry-after"));
    assert_problem(response, 429, "rate_limited").await;
    let other = join(&app, &id, &app.store_token, json!({"user_id": "calm"})).await;
    assert_eq!(other.status(), StatusCode::CREATED);
}

/// Two instances on one Redis namespace and one database, as in production.
async fn two_instances() -> [TestApp; 2] {
    let namespace = unique_id("ns");
    let database = crate::helpers::fresh_postgres_schema().await;
    let shared = |c: &mut flashsale::config::Config| {
        c.redis_url = Some(redis_url());
        c.redis_namespace = namespace.clone();
        c.database_url = Some(database.clone());
    };
    [
        spawn_app_with(Backend::Redis, shared).await,
        spawn_app_with(Backend::Redis, shared).await,
    ]
}

async fn join(app: &TestApp, campaign: &str, token: &str, body: Value) -> Response {
    app.client
        .post(app.url(&format!("/v1/campaigns/{campaign}/queue")))
        .bearer_auth(token)
        .header("Idempotency-Key", fresh_key())
        .json(&body)
        .send()
        .await
        .expect("request sent")
}

async fn poll(app: &TestApp, ticket: &str, token: &str) -> Response {
    app.client
        .get(app.url(&format!("/v1/queue/{ticket}")))
        .bearer_auth(token)
        .send()
        .await
        .expect("request sent")
}

/// Polls until the ticket is admitted; its pass.
async fn pass_of(app: &TestApp, ticket: &str, token: &str) -> (String, Value) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let body: Value = poll(app, ticket, token).await.json().await.expect("json");
        if body["status"] == "admitted" {
            return (body["pass"].as_str().expect("a pass").to_owned(), body);
        }
        assert!(Instant::now() < deadline, "never admitted: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn reserve_with_pass(
    app: &TestApp,
    campaign: &str,
    token: &str,
    pass: Option<&str>,
) -> Response {
    let mut request = app
        .client
        .post(app.url(&format!("/v1/campaigns/{campaign}/reservations")))
        .bearer_auth(token)
        .header("Idempotency-Key", fresh_key())
        .json(&json!({}));
    if let Some(pass) = pass {
        request = request.header("Flashsale-Pass", pass);
    }
    request.send().await.expect("request sent")
}

async fn a_queued_campaign_takes_reservations_only_with_a_valid_pass(backend: Backend) {
    let app = spawn_app_with(backend, |_| {}).await;
    let queue = json!({"queue": {"admit_per_second": 20, "pass_seconds": 2}});
    let campaign = app.campaign(10, 2, queue.clone()).await;
    let other_campaign = app.campaign(10, 2, queue).await;
    assert_eq!(
        app.campaign_json(&campaign).await["queue"],
        json!({"admit_per_second": 20, "pass_seconds": 2})
    );
    let ann = app.user_token("ann");
    let bob = app.user_token("bob");

    // No pass: refused, whatever the token.
    assert_problem(
        reserve_with_pass(&app, &campaign, &ann, None).await,
        403,
        "queue_pass_required",
    )
    .await;
    assert_problem(
        app.reserve(&campaign, "ann", 1).await,
        403,
        "queue_pass_required",
    )
    .await;

    let joined = join(&app, &campaign, &ann, json!({})).await;
    assert_eq!(joined.status(), StatusCode::CREATED);
    let ticket: Value = joined.json().await.expect("json");
    let id = ticket["ticket"].as_str().expect("ticket id").to_owned();
    assert!(["waiting", "admitted"].contains(&ticket["status"].as_str().unwrap_or_default()));
    let (pass, admitted) = pass_of(&app, &id, &ann).await;
    assert!(admitted["pass_expires_at"].is_string(), "{admitted}");
    assert_eq!(admitted["eta_seconds"], 0);

    // Someone else's pass, a pass of another campaign, a forged one: refused.
    assert_problem(
        reserve_with_pass(&app, &campaign, &bob, Some(&pass)).await,
        403,
        "queue_pass_required",
    )
    .await;
    assert_problem(
        reserve_with_pass(&app, &other_campaign, &ann, Some(&pass)).await,
        403,
        "queue_pass_required",
    )
    .await;
    let mut forged = pass.clone().into_bytes();
    let last = forged.len() - 1;
    forged[last] = if forged[last] == b'0' { b'1' } else { b'0' };
    let forged = String::from_utf8(forged).expect("ascii");
    assert_problem(
        reserve_with_pass(&app, &campaign, &ann, Some(&forged)).await,
        403,
        "queue_pass_required",
    )
    .await;
    let (ticket_part, rest) = pass.split_once('.').expect("ticket.expiry.tag");
    let (_, tag) = rest.split_once('.').expect("expiry.tag");
    let stretched = format!("{ticket_part}.{}.{tag}", Millis::now().0 + 3_600_000);
    assert_problem(
        reserve_with_pass(&app, &campaign, &ann, Some(&stretched)).await,
        403,
        "queue_pass_required",
    )
    .await;
    assert_problem(
        reserve_with_pass(&app, &campaign, &ann, Some("not a pass")).await,
        403,
        "queue_pass_required",
    )
    .await;

    // The right user with the pass: a hold.
    let held = reserve_with_pass(&app, &campaign, &ann, Some(&pass)).await;
    assert_eq!(
        held.status(),
        StatusCode::CREATED,
        "{:?}",
        held.text().await
    );

    // Once the pass lapsed (2 s), it is refused, and the ticket reads expired.
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    assert_problem(
        reserve_with_pass(&app, &campaign, &ann, Some(&pass)).await,
        403,
        "queue_pass_required",
    )
    .await;
    let late: Value = poll(&app, &id, &ann).await.json().await.expect("json");
    assert_eq!(late["status"], "expired", "{late}");
    assert!(late.get("pass").is_none(), "{late}");
}

async fn one_ticket_per_user_and_only_its_user_reads_it(backend: Backend) {
    let app = spawn_app_with(backend, |_| {}).await;
    // Starts in an hour: everyone waits for the draw.
    let starts = Millis(Millis::now().0 / 1000 * 1000 + 3_600_000).to_rfc3339();
    let campaign = app
        .campaign(
            10,
            1,
            json!({"starts_at": starts, "queue": {"admit_per_second": 5}}),
        )
        .await;
    let ann = app.user_token("ann");
    let first: Value = join(&app, &campaign, &ann, json!({}))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(first["status"], "waiting");
    assert_eq!(first["position"], Value::Null, "no place before the draw");
    let eta = first["eta_seconds"].as_u64().expect("eta");
    assert!((3_590..=3_600).contains(&eta), "eta until the draw: {eta}");

    // A second join (another key, the store acting for ann): the first ticket, as a replay.
    let second = join(&app, &campaign, &app.store_token, json!({"user_id": "ann"})).await;
    assert_eq!(second.status(), StatusCode::CREATED);
    assert_eq!(
        second
            .headers()
            .get("idempotent-replayed")
            .and_then(|v| v.to_str().ok()),
        Some("true")
    );
    let second: Value = second.json().await.expect("json");
    assert_eq!(second["ticket"], first["ticket"]);

    // The same key for another user is a reused key.
    let key = fresh_key();
    let send = |user: &'static str| {
        app.client
            .post(app.url(&format!("/v1/campaigns/{campaign}/queue")))
            .bearer_auth(&app.store_token)
            .header("Idempotency-Key", key.clone())
            .json(&json!({"user_id": user}))
            .send()
    };
    assert_eq!(
        send("cat").await.expect("sent").status(),
        StatusCode::CREATED
    );
    assert_problem(
        send("dan").await.expect("sent"),
        422,
        "idempotency_key_reused",
    )
    .await;

    // Only the store and the ticket's user read it.
    let ticket = first["ticket"].as_str().expect("id");
    assert_eq!(
        poll(&app, ticket, &app.store_token).await.status(),
        StatusCode::OK
    );
    assert_problem(
        poll(&app, ticket, &app.user_token("bob")).await,
        403,
        "forbidden",
    )
    .await;
    assert_problem(poll(&app, "tkt_nope", &ann).await, 404, "ticket_not_found").await;
    let unknown = TicketId::generate(&flashsale::domain::CampaignId::parse(&campaign).expect("id"));
    assert_problem(
        poll(&app, unknown.as_str(), &ann).await,
        404,
        "ticket_not_found",
    )
    .await;

    // A campaign without a waiting room, an unknown one, a join without a key.
    let plain = app.campaign(10, 1, json!({})).await;
    assert_problem(
        join(&app, &plain, &ann, json!({})).await,
        409,
        "no_waiting_room",
    )
    .await;
    assert_problem(
        join(&app, "no-such-campaign", &ann, json!({})).await,
        404,
        "campaign_not_found",
    )
    .await;
    let keyless = app
        .client
        .post(app.url(&format!("/v1/campaigns/{campaign}/queue")))
        .bearer_auth(&ann)
        .json(&json!({}))
        .send()
        .await
        .expect("sent");
    assert_problem(keyless, 400, "idempotency_key_required").await;
    // Another user's id with a user token.
    assert_problem(
        join(&app, &campaign, &ann, json!({"user_id": "bob"})).await,
        403,
        "forbidden",
    )
    .await;
    // Bad rules are refused at creation.
    for queue in [
        json!({"admit_per_second": 0}),
        json!({"admit_per_second": 1, "pass_seconds": 0}),
        json!({"rate": 1}),
    ] {
        let response = app
            .create_campaign(
                &json!({"id": unique_id("c"), "kind": "flash_sale", "sku": "s",
                "stock": 1, "queue": queue}),
            )
            .await;
        assert!(response.status().is_client_error(), "{queue}");
    }
}

async fn group_buys_with_a_waiting_room_need_a_pass_too(backend: Backend) {
    let app = spawn_app_with(backend, |_| {}).await;
    let campaign = unique_id("g");
    let created = app
        .create_campaign(
            &json!({"id": campaign, "kind": "group_buy", "sku": "s", "stock": 10,
            "group": {"size": 2, "window_seconds": 60}, "queue": {"admit_per_second": 50}}),
        )
        .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let ann = app.user_token("ann");
    let open = |pass: Option<String>| {
        let mut request = app
            .client
            .post(app.url(&format!("/v1/campaigns/{campaign}/groups")))
            .bearer_auth(&ann)
            .header("Idempotency-Key", fresh_key())
            .json(&json!({}));
        if let Some(pass) = pass {
            request = request.header("Flashsale-Pass", pass);
        }
        request.send()
    };
    assert_problem(open(None).await.expect("sent"), 403, "queue_pass_required").await;
    let ticket: Value = join(&app, &campaign, &ann, json!({}))
        .await
        .json()
        .await
        .expect("json");
    let (pass, _) = pass_of(&app, ticket["ticket"].as_str().expect("id"), &ann).await;
    let opened = open(Some(pass)).await.expect("sent");
    assert_eq!(opened.status(), StatusCode::CREATED);
    let group: Value = opened.json().await.expect("json");
    let bob = app.user_token("bob");
    let joined = app
        .client
        .post(app.url(&format!(
            "/v1/groups/{}/members",
            group["id"].as_str().expect("id")
        )))
        .bearer_auth(&bob)
        .header("Idempotency-Key", fresh_key())
        .json(&json!({}))
        .send()
        .await
        .expect("sent");
    assert_problem(joined, 403, "queue_pass_required").await;
}

/// Two instances on one Redis and one database, both running the admission worker: what
/// they admit together never passes the campaign's rate (each alone would admit at the
/// whole rate, so a per-instance budget would show twice as many).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_admit_at_the_campaign_rate_together() {
    const RATE: f64 = 100.0;
    const USERS: usize = 600;
    let [a, b] = two_instances().await;
    let start = Millis(Millis::now().0 / 1000 * 1000 + 8_000);
    let campaign = a
        .campaign(
            10_000,
            1,
            json!({"starts_at": start.to_rfc3339(), "queue": {"admit_per_second": RATE as u64}}),
        )
        .await;
    let mut tickets = Vec::with_capacity(USERS);
    for i in 0..USERS {
        let app = if i % 2 == 0 { &a } else { &b };
        let body: Value = join(
            app,
            &campaign,
            &app.store_token,
            json!({"user_id": format!("u{i}")}),
        )
        .await
        .json()
        .await
        .expect("json");
        tickets.push(TicketId::parse(body["ticket"].as_str().expect("id")).expect("ticket id"));
    }
    assert!(
        Millis::now() < start,
        "joining took too long for this test's schedule"
    );
    let mut last = 0;
    let mut samples = Vec::new();
    while Millis::now().0 < start.0 + 3_000 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let mut admitted = 0;
        for ticket in &tickets {
            let t = a
                .engine
                .backing()
                .waiting_room()
                .ticket(ticket, Millis::now())
                .await
                .expect("answers");
            if matches!(t.map(|t| t.status), Some(TicketStatus::Admitted { .. })) {
                admitted += 1;
            }
        }
        // Every admission counted happened before this instant.
        let at = Millis::now();
        let allowed = RATE * (at.0 - start.0).max(0) as f64 / 1000.0 + RATE / 10.0;
        assert!(
            admitted as f64 <= allowed,
            "{admitted} admitted {} ms after the start at {RATE}/s",
            at.0 - start.0
        );
        assert!(admitted >= last, "admissions are never taken back");
        last = admitted;
        samples.push((at.0 - start.0, admitted));
    }
    // And the two workers did keep it up (half the rate at least, on a busy machine).
    assert!(
        last as f64 >= RATE * 2.5 * 0.5,
        "admission stalled: {samples:?}"
    );
}

/// Polls are answered from the campaign's line between engine reads: while admission moves
/// the line, every ticket's place only goes down, never below its exact place, at most one
/// line-read behind; an admitted ticket never reads waiting again.
async fn polls_follow_the_line_as_it_moves(backend: Backend) {
    let app = spawn_app_with(backend, |_| {}).await;
    let campaign = app
        .campaign(1_000, 1, json!({"queue": {"admit_per_second": 10}}))
        .await;
    let mut tickets = Vec::new();
    for i in 0..40 {
        let body: Value = join(
            &app,
            &campaign,
            &app.store_token,
            json!({"user_id": format!("p{i}")}),
        )
        .await
        .json()
        .await
        .expect("json");
        tickets.push(body["ticket"].as_str().expect("ticket").to_owned());
    }
    let mut last: Vec<Option<u64>> = vec![None; tickets.len()];
    let mut admitted = vec![false; tickets.len()];
    // Until ten were seen admitted (about a second at 10/s; longer on a loaded machine).
    let until = Instant::now() + Duration::from_secs(20);
    while Instant::now() < until && admitted.iter().filter(|a| **a).count() < 10 {
        for (i, ticket) in tickets.iter().enumerate() {
            let id = TicketId::parse(ticket).expect("id");
            let exact = || async {
                app.engine
                    .backing()
                    .waiting_room()
                    .ticket(&id, Millis::now())
                    .await
                    .expect("answers")
                    .expect("exists")
                    .status
            };
            let before = exact().await;
            let body: Value = poll(&app, ticket, &app.store_token)
                .await
                .json()
                .await
                .expect("json");
            let after = exact().await;
            match body["status"].as_str() {
                Some("waiting") => {
                    assert!(
                        !admitted[i],
                        "ticket {i} read waiting after admitted: {body}"
                    );
                    let place = body["position"].as_u64().expect("a place");
                    if let Some(before) = last[i] {
                        assert!(
                            place <= before,
                            "ticket {i} moved back: {before} -> {place}"
                        );
                    }
                    // Never ahead of the truth after the poll, and behind the truth before
                    // it by at most what 50 ms of admission moves (a round's burst of 1 at
                    // 10/s, and one more).
                    if let TicketStatus::Waiting { position: Some(p) } = after {
                        assert!(place >= p, "ticket {i}: {place}, truly {p}");
                    }
                    match before {
                        TicketStatus::Waiting { position: Some(p) } => {
                            assert!(place <= p + 2, "ticket {i}: {place}, truly {p} before")
                        }
                        // Admitted within the last line read: it was at the front.
                        TicketStatus::Admitted { .. } => {
                            assert!(place <= 2, "ticket {i}: {place}, admitted before")
                        }
                        other => panic!("ticket {i} read waiting, was {other:?}"),
                    }
                    last[i] = Some(place);
                }
                Some("admitted") => admitted[i] = true,
                other => panic!("ticket {i}: {other:?} {body}"),
            }
        }
    }
    assert!(
        admitted.iter().filter(|a| **a).count() >= 10,
        "{admitted:?}"
    );
    assert!(admitted.iter().any(|a| !a), "some still wait");
}

/// Redis lost the line (its keys gone): a ticket polled before is not answered from memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_line_is_never_answered_from_memory() {
    let namespace = unique_id("ns");
    let app = spawn_app_with(Backend::Redis, |c| c.redis_namespace = namespace.clone()).await;
    let campaign = app
        .campaign(1_000, 1, json!({"queue": {"admit_per_second": 1}}))
        .await;
    let mut tickets = Vec::new();
    for user in ["a", "b", "c"] {
        let body: Value = join(&app, &campaign, &app.store_token, json!({"user_id": user}))
            .await
            .json()
            .await
            .expect("json");
        tickets.push(body["ticket"].as_str().expect("ticket").to_owned());
    }
    let last = &tickets[2];
    let before: Value = poll(&app, last, &app.store_token)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(before["status"], "waiting", "{before}");
    // Every key of the namespace goes, as if Redis restarted empty.
    let client = redis::Client::open(redis_url()).expect("url");
    let mut redis = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{namespace}:*"))
        .query_async(&mut redis)
        .await
        .expect("keys");
    let _: () = redis::cmd("DEL")
        .arg(&keys)
        .query_async(&mut redis)
        .await
        .expect("del");
    // The service rebuilds the campaign from the database (not its line: that lives in the
    // engine only); nobody polls meanwhile, so this instance still remembers the ticket.
    let id = flashsale::domain::CampaignId::parse(&campaign).expect("id");
    let deadline = Instant::now() + Duration::from_secs(10);
    while app
        .engine
        .backing()
        .waiting_room()
        .line(&id)
        .await
        .expect("answers")
        .is_none()
    {
        assert!(Instant::now() < deadline, "the campaign was never rebuilt");
        let _ = app.get_campaign(&campaign).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    for _ in 0..5 {
        let answer = poll(&app, last, &app.store_token).await;
        // Not found (the line is gone) — never the remembered place.
        assert_eq!(
            answer.status(),
            StatusCode::NOT_FOUND,
            "{:?}",
            answer.text().await
        );
    }
}

/// Redis killed and restarted empty in the middle of a queued sale: the line is gone (its
/// tickets answer 404 and a user joins again, at the back of a new line), but passes already
/// handed out stay good — they are signed, not stored — the campaign comes back from the
/// database with its holds, and nothing answers 500 meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restarted_empty_keeps_the_passes_it_handed_out() {
    let mut redis = crate::processes::RedisServer::start(false);
    let url = redis.url();
    let app = spawn_app_with(Backend::Redis, |c| c.redis_url = Some(url.clone())).await;
    let campaign = app
        .campaign(
            10,
            1,
            json!({"queue": {"admit_per_second": 100, "pass_seconds": 60}}),
        )
        .await;
    let (ann, bob) = (app.user_token("ann"), app.user_token("bob"));
    let mut passes = Vec::new();
    let mut tickets = Vec::new();
    for token in [&ann, &bob] {
        let body: Value = join(&app, &campaign, token, json!({}))
            .await
            .json()
            .await
            .expect("json");
        let ticket = body["ticket"].as_str().expect("ticket").to_owned();
        passes.push(pass_of(&app, &ticket, token).await.0);
        tickets.push(ticket);
    }
    let held = reserve_with_pass(&app, &campaign, &ann, Some(&passes[0])).await;
    assert_eq!(held.status(), StatusCode::CREATED);
    // Ann's hold reached the database (a Redis without persistence loses what the persister
    // has not written yet: see docs/durability.md).
    let id = flashsale::domain::CampaignId::parse(&campaign).expect("id");
    app.events
        .acknowledged(flashsale::engine::PERSISTER, &id)
        .await
        .expect("persisted");

    redis.kill();
    redis.restart(); // empty: no persistence

    // Bob's pass, handed out before the loss, still buys: retried through the outage.
    let deadline = Instant::now() + Duration::from_secs(20);
    let bought = loop {
        let answer = reserve_with_pass(&app, &campaign, &bob, Some(&passes[1])).await;
        let status = answer.status();
        assert_ne!(
            status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "{:?}",
            answer.text().await
        );
        if status == StatusCode::CREATED {
            break answer;
        }
        assert!(
            status.is_server_error(),
            "{status}: {:?}",
            answer.text().await
        );
        assert!(
            Instant::now() < deadline,
            "never reserved after the restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let bought: Value = bought.json().await.expect("json");
    assert_eq!(bought["user_id"], "bob");
    // The line is gone: the old ticket is unknown; joining again gives a new one.
    assert_problem(poll(&app, &tickets[0], &ann).await, 404, "ticket_not_found").await;
    let again = join(&app, &campaign, &ann, json!({})).await;
    assert_eq!(again.status(), StatusCode::CREATED);
    let again: Value = again.json().await.expect("json");
    assert_ne!(again["ticket"], json!(tickets[0]));
    // Both holds came through: the rebuilt campaign counts ann's, and bob's was made on it.
    let view = app.campaign_json(&campaign).await;
    assert_eq!(
        (view["held"].as_u64(), view["available"].as_u64()),
        (Some(2), Some(8)),
        "{view}"
    );
}

/// A ticket polled while waiting (so this instance remembers its place) reads `sold_out` as
/// soon as the last unit is taken, and `waiting` again when the hold is cancelled.
async fn a_polled_ticket_reads_sold_out_as_the_last_unit_goes_and_waiting_when_it_returns(
    backend: Backend,
) {
    let app = spawn_app_with(backend, |_| {}).await;
    let campaign = app
        .campaign(
            1,
            1,
            json!({"queue": {"admit_per_second": 1, "pass_seconds": 60}}),
        )
        .await;
    let (ann, bob) = (app.user_token("ann"), app.user_token("bob"));
    let first: Value = join(&app, &campaign, &ann, json!({}))
        .await
        .json()
        .await
        .expect("json");
    let (pass, _) = pass_of(&app, first["ticket"].as_str().expect("id"), &ann).await;
    let second: Value = join(&app, &campaign, &bob, json!({}))
        .await
        .json()
        .await
        .expect("json");
    let ticket = second["ticket"].as_str().expect("id").to_owned();
    let read = |token: String| {
        let (app, ticket) = (&app, ticket.clone());
        async move {
            let body: Value = poll(app, &ticket, &token).await.json().await.expect("json");
            body["status"].as_str().unwrap_or_default().to_owned()
        }
    };
    assert_eq!(read(bob.clone()).await, "waiting");
    let held: Value = reserve_with_pass(&app, &campaign, &ann, Some(&pass))
        .await
        .json()
        .await
        .expect("json");
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert_eq!(read(bob.clone()).await, "sold_out");
    app.cancel(held["id"].as_str().expect("id"), &app.store_token)
        .await;
    tokio::time::sleep(Duration::from_millis(60)).await;
    // The unit is back; bob is next (and may be admitted already, the room being free).
    let after = read(bob.clone()).await;
    assert!(["waiting", "admitted"].contains(&after.as_str()), "{after}");
}

/// A sale through the line on two instances sharing Redis and the database: users join on
/// one, poll on the other and buy on either (the pass key is shared through the database),
/// and the line sells exactly the stock, one unit per admitted user, to nobody else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sale_through_the_line_on_two_instances_sells_exactly_the_stock() {
    const USERS: usize = 150;
    const STOCK: u64 = 40;
    let apps = std::sync::Arc::new(two_instances().await);
    let campaign = apps[0]
        .campaign(
            STOCK,
            1,
            json!({"queue": {"admit_per_second": 100, "pass_seconds": 30}}),
        )
        .await;
    let users = (0..USERS).map(|i| {
        let (apps, campaign) = (std::sync::Arc::clone(&apps), campaign.clone());
        tokio::spawn(async move {
            let user = format!("line-{i}");
            let token = apps[0].user_token(&user);
            let (here, there) = (&apps[i % 2], &apps[(i + 1) % 2]);
            let joined: Value = join(here, &campaign, &token, json!({}))
                .await
                .json()
                .await
                .expect("json");
            let ticket = joined["ticket"].as_str().expect("ticket").to_owned();
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let body: Value = poll(there, &ticket, &token)
                    .await
                    .json()
                    .await
                    .expect("json");
                match body["status"].as_str() {
                    Some("admitted") => {
                        let pass = body["pass"].as_str().expect("pass");
                        let bought = reserve_with_pass(here, &campaign, &token, Some(pass)).await;
                        let status = bought.status();
                        let body: Value = bought.json().await.expect("json");
                        return (user, status.as_u16(), body);
                    }
                    Some("waiting") => {}
                    Some(done) => return (user, 0, json!({"status": done})),
                    None => panic!("{body}"),
                }
                assert!(Instant::now() < deadline, "{user} waited too long");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    });
    let mut bought = Vec::new();
    let mut sold_out = 0;
    for user in users.collect::<Vec<_>>() {
        let (user, status, body) = user.await.expect("user");
        match status {
            201 => {
                assert_eq!(body["user_id"], json!(user));
                bought.push(user);
            }
            0 => {
                assert_eq!(body["status"], "sold_out", "{user}: {body}");
                sold_out += 1;
            }
            other => panic!("{user}: {other} {body}"),
        }
    }
    bought.sort();
    bought.dedup();
    assert_eq!(
        bought.len() as u64,
        STOCK,
        "exactly the stock, one unit each"
    );
    assert_eq!(sold_out, USERS - STOCK as usize);
    let view = apps[1].campaign_json(&campaign).await;
    assert_eq!(
        (view["available"].as_u64(), view["held"].as_u64()),
        (Some(0), Some(STOCK)),
        "{view}"
    );
}

/// A waiting ticket costs at most 200 bytes of Redis (issue: 616 B): 2,000 users join
/// (half before the start, in the draw; half after), and every key of the campaign's
/// waiting room is weighed with `MEMORY USAGE`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_ticket_costs_at_most_200_bytes_of_redis() {
    use flashsale::domain::{CampaignId, IdempotencyKey, ScopedKey, UserId};
    use flashsale::engine::{JoinOutcome, JoinRequest};
    let app = spawn_app_with(Backend::Redis, |_| {}).await;
    let starts = Millis::now().plus_seconds(3);
    let campaign = app
        .campaign(
            10,
            1,
            json!({"queue": {"admit_per_second": 1}, "starts_at": starts.to_rfc3339()}),
        )
        .await;
    let id = CampaignId::parse(&campaign).expect("id");
    let join = |i: usize, now: Millis| {
        let key = IdempotencyKey::parse(&format!("k-{i}")).expect("key");
        JoinRequest::new(
            id.clone(),
            UserId::parse(&format!("user-{i:06}")).expect("user"),
            ScopedKey::new("store", "join", &key),
            now,
        )
    };
    for i in 0..2_000 {
        let now = if i < 1_000 {
            Millis::now()
        } else {
            starts.plus_seconds(1)
        };
        let outcome = app.engine.join_queue(&join(i, now)).await.expect("joined");
        assert!(matches!(outcome, JoinOutcome::Joined(_)), "{outcome:?}");
    }
    let mut bytes = 0;
    for key in crate::helpers::redis_keys(Backend::Redis, &format!("*{{c:{campaign}}}:w*")).await {
        bytes += crate::helpers::redis_memory_usage(Backend::Redis, &key).await;
    }
    assert!(bytes > 0, "the line's keys are weighed");
    let per_ticket = bytes / 2_000;
    eprintln!("a waiting ticket: {per_ticket} B of Redis");
    assert!(per_ticket <= 200, "{per_ticket} B per ticket");
}
