//! The waiting-room scenario after the joins: every ticket's user polls with backoff until
//! admitted (or sold out), then reserves with the pass, as a phone would.

use crate::Service;
use hyper::{Method, StatusCode};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// What the users who joined came to.
#[derive(Debug, Clone, Default, Serialize)]
pub struct QueueFlow {
    pub users: u64,
    pub polls: u64,
    /// Final outcomes per user: `reserved`, `sold_out`, `expired`, `gave_up`, or the problem
    /// code of a refused reservation.
    pub outcomes: BTreeMap<String, u64>,
    /// Answers with a 5xx status or without an answer (polls and reservations).
    pub errors: u64,
    pub seconds: f64,
    /// Seconds from the start to the last reservation.
    pub last_reserved_at: f64,
    /// Reservations per second, by second from the start.
    pub reserved_per_second: Vec<u64>,
}

/// How long a waiting user waits before polling again: half its `eta`, between 0.25 and
/// 5 seconds, spread ±25 % so a crowd does not poll in step.
fn backoff(eta_seconds: u64, spread: u64) -> Duration {
    let base = (eta_seconds as f64 / 2.0).clamp(0.25, 5.0);
    let jitter = 0.75 + (spread % 500) as f64 / 1000.0;
    Duration::from_secs_f64(base * jitter)
}

/// Plays every ticket's user through the line: poll until admitted, then reserve with the
/// pass. At most `max_in_flight` requests at once; a user still waiting after `give_up`
/// stops.
pub async fn through_the_line(
    service: &Service,
    campaign: &str,
    tickets: Vec<(String, String)>,
    run_id: &str,
    max_in_flight: usize,
    give_up: Duration,
) -> anyhow::Result<QueueFlow> {
    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(max_in_flight.max(1)));
    let flow = Arc::new(Mutex::new(QueueFlow {
        users: tickets.len() as u64,
        ..QueueFlow::default()
    }));
    let mut tasks = Vec::with_capacity(tickets.len());
    for (i, (user, ticket)) in tickets.into_iter().enumerate() {
        let (service, gate, flow) = (service.clone(), Arc::clone(&gate), Arc::clone(&flow));
        let (campaign, key) = (campaign.to_owned(), format!("{run_id}-q-{i}"));
        tasks.push(tokio::spawn(async move {
            let mut tokens = HashMap::new();
            let token = service.attempt_token(&user, &mut tokens);
            let note = |outcome: &str, polls: u64, errors: u64| {
                let mut flow = flow.lock().unwrap_or_else(|p| p.into_inner());
                *flow.outcomes.entry(outcome.to_owned()).or_default() += 1;
                flow.polls += polls;
                flow.errors += errors;
            };
            let (mut polls, mut errors) = (0, 0);
            loop {
                if started.elapsed() > give_up {
                    return note("gave_up", polls, errors);
                }
                let answer = {
                    let _permit = gate.acquire().await;
                    service
                        .call(
                            Method::GET,
                            &format!("/v1/queue/{ticket}"),
                            Some(&token),
                            None,
                            None,
                        )
                        .await
                };
                polls += 1;
                let body: Value = match &answer {
                    Ok(a) if a.status == StatusCode::OK => a.json(),
                    _ => {
                        errors +=
                            u64::from(answer.as_ref().map_or(true, |a| a.status.is_server_error()));
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                match body["status"].as_str().unwrap_or_default() {
                    "admitted" => {
                        let pass = body["pass"].as_str().unwrap_or_default().to_owned();
                        let reserved = {
                            let _permit = gate.acquire().await;
                            service
                                .call_with(
                                    Method::POST,
                                    &format!("/v1/campaigns/{campaign}/reservations"),
                                    Some(&token),
                                    Some(&key),
                                    Some(json!({"user_id": user}).to_string().into_bytes()),
                                    Some(("flashsale-pass", &pass)),
                                )
                                .await
                        };
                        return match reserved {
                            Ok(a) if a.status == StatusCode::CREATED => {
                                let at = started.elapsed().as_secs_f64();
                                let mut f = flow.lock().unwrap_or_else(|p| p.into_inner());
                                f.last_reserved_at = f.last_reserved_at.max(at);
                                let second = at as usize;
                                if f.reserved_per_second.len() <= second {
                                    f.reserved_per_second.resize(second + 1, 0);
                                }
                                f.reserved_per_second[second] += 1;
                                drop(f);
                                note("reserved", polls, errors)
                            }
                            Ok(a) => {
                                let code = a.field("code").unwrap_or_else(|| a.status.to_string());
                                note(&code, polls, errors + u64::from(a.status.is_server_error()))
                            }
                            Err(_) => note("transport_error", polls, errors + 1),
                        };
                    }
                    "waiting" => {
                        let eta = body["eta_seconds"].as_u64().unwrap_or(1);
                        tokio::time::sleep(backoff(eta, i as u64 * 7919)).await;
                    }
                    done => return note(done, polls, errors),
                }
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    let mut flow = Arc::try_unwrap(flow)
        .map_err(|_| anyhow::anyhow!("a user task outlived the run"))?
        .into_inner()
        .unwrap_or_else(|p| p.into_inner());
    flow.seconds = started.elapsed().as_secs_f64();
    Ok(flow)
}
