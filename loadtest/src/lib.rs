//! The flash-sale load generator: plays a sale against a running flashsale over HTTP/1.1
//! keep-alive connections (hyper), records latency in HDR histograms, and verifies the
//! service's invariants afterwards against its API and its database-backed event feed.
//!
//! Two ways to drive load:
//! - *closed loop*: a fixed number of workers, each sending its next attempt as soon as the
//!   last one answered;
//! - *open loop*: attempts are scheduled at a fixed arrival rate and each latency is measured
//!   from its *scheduled* send time, so a stalled service shows up in the latency instead of
//!   silently slowing the generator down (coordinated omission).

pub mod chart;
pub mod queue;

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A flashsale service to talk to.
#[derive(Clone)]
pub struct Service {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    base: String,
    admin_token: String,
    store_token: String,
    /// With it, attempts act as their user (an HS256 JWT with `sub` = the user) instead of
    /// with the store token.
    jwt_secret: Option<String>,
}

/// One answer: status and body.
pub struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The string value of a top-level `"field":"…"` without parsing the whole body: the
    /// generator shares the machine with the service, so its per-answer work must stay small.
    pub fn field(&self, field: &str) -> Option<String> {
        let needle = format!("\"{field}\":\"");
        let body = std::str::from_utf8(&self.body).ok()?;
        let start = body.find(&needle)? + needle.len();
        let end = body[start..].find('"')? + start;
        Some(body[start..end].to_owned())
    }
}

impl Service {
    pub fn new(base: &str, admin_token: &str, store_token: &str) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.enforce_http(false);
        // https:// (rustls, the webpki roots) or plain http://.
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(4096)
            .pool_idle_timeout(std::time::Duration::from_secs(2))
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .build(connector);
        Service {
            client,
            base: base.trim_end_matches('/').to_owned(),
            admin_token: admin_token.to_owned(),
            store_token: store_token.to_owned(),
            jwt_secret: None,
        }
    }

    /// Attempts act as their users (user JWTs signed with `secret`), not as the store.
    pub fn as_users(mut self, secret: &str) -> Self {
        self.jwt_secret = Some(secret.to_owned());
        self
    }

    /// The token an attempt of `user` carries: the store's, or the user's own JWT.
    pub fn attempt_token(&self, user: &str, cache: &mut HashMap<String, String>) -> String {
        let Some(secret) = &self.jwt_secret else {
            return self.store_token.clone();
        };
        cache
            .entry(user.to_owned())
            .or_insert_with(|| {
                #[derive(Serialize)]
                struct Claims<'a> {
                    sub: &'a str,
                    exp: u64,
                }
                jsonwebtoken::encode(
                    &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
                    &Claims {
                        sub: user,
                        exp: jsonwebtoken::get_current_timestamp() + 3600,
                    },
                    &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
                )
                .unwrap_or_default()
            })
            .clone()
    }

    /// A reservation attempt as `token`.
    pub async fn reserve_as(
        &self,
        campaign: &str,
        user: &str,
        key: &str,
        token: &str,
    ) -> anyhow::Result<Answer> {
        let path = format!("/v1/campaigns/{campaign}/reservations");
        self.post_as(&path, user, key, token).await
    }

    /// A creating POST for `user` (body `{"user_id": user}`) as `token`: opens a group
    /// (`path` = `/v1/campaigns/<id>/groups`), joins one (`/v1/groups/<id>/members`), …
    pub async fn post_as(
        &self,
        path: &str,
        user: &str,
        key: &str,
        token: &str,
    ) -> anyhow::Result<Answer> {
        let body = format!("{{\"user_id\":\"{user}\"}}").into_bytes();
        self.call(Method::POST, path, Some(token), Some(key), Some(body))
            .await
    }

    /// Takes a waiting-room ticket for `user` as `token`.
    pub async fn join_as(
        &self,
        campaign: &str,
        user: &str,
        key: &str,
        token: &str,
    ) -> anyhow::Result<Answer> {
        let path = format!("/v1/campaigns/{campaign}/queue");
        self.post_as(&path, user, key, token).await
    }

    /// Sends one request and reads the whole answer.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        key: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<Answer> {
        self.call_with(method, path, token, key, body, None).await
    }

    /// [`Service::call`] with one more header.
    pub async fn call_with(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        key: Option<&str>,
        body: Option<Vec<u8>>,
        header: Option<(&str, &str)>,
    ) -> anyhow::Result<Answer> {
        let body = body.map(Bytes::from);
        // A keep-alive connection the server closes (idle for its header-read timeout, or at
        // its maximum age) just as a request goes out on it fails with no answer. Requests
        // that are safe to send again (reads, and anything with an Idempotency-Key) are sent
        // once more on a fresh connection; the pool also drops idle connections well before
        // the service's default 5 s, so this is rare.
        let repeatable = key.is_some()
            || matches!(
                method,
                Method::GET | Method::HEAD | Method::PUT | Method::DELETE
            );
        let mut tries = 0;
        let response = loop {
            tries += 1;
            let mut request = Request::builder()
                .method(method.clone())
                .uri(format!("{}{path}", self.base));
            if let Some((name, value)) = header {
                request = request.header(name, value);
            }
            if let Some(token) = token {
                request = request.header("authorization", format!("Bearer {token}"));
            }
            if let Some(key) = key {
                request = request.header("idempotency-key", key);
            }
            let payload = match &body {
                Some(body) => {
                    request = request.header("content-type", "application/json");
                    Full::new(body.clone())
                }
                None => Full::new(Bytes::new()),
            };
            match self.client.request(request.body(payload)?).await {
                Ok(response) => break response,
                Err(error) if repeatable && tries < 3 && closed_unanswered(&error) => continue,
                Err(error) => return Err(error.into()),
            }
        };
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok(Answer { status, body })
    }

    pub async fn admin_post(&self, path: &str, body: Value) -> anyhow::Result<Answer> {
        self.call(
            Method::POST,
            path,
            Some(&self.admin_token),
            None,
            Some(body.to_string().into_bytes()),
        )
        .await
    }

    pub async fn store_get(&self, path: &str) -> anyhow::Result<Answer> {
        self.call(Method::GET, path, Some(&self.store_token), None, None)
            .await
    }

    pub async fn store_post(&self, path: &str) -> anyhow::Result<Answer> {
        self.call(Method::POST, path, Some(&self.store_token), None, None)
            .await
    }

    pub async fn reserve(&self, campaign: &str, user: &str, key: &str) -> anyhow::Result<Answer> {
        self.reserve_as(campaign, user, key, &self.store_token)
            .await
    }
}

/// Whether `error` is a connection that closed before the request was answered (so the
/// request may or may not have been handled).
fn closed_unanswered(error: &hyper_util::client::legacy::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(hyper) = cause.downcast_ref::<hyper::Error>() {
            return hyper.is_incomplete_message() || hyper.is_canceled() || hyper.is_closed();
        }
        source = cause.source();
    }
    false
}

/// How to drive the load.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "snake_case", tag = "mode")]
pub enum Drive {
    Closed {
        concurrency: usize,
    },
    Open {
        rate_per_second: u64,
        max_in_flight: usize,
    },
    /// Open loop through stages: each `(seconds, rate)` in turn (a ramp).
    Stages {
        #[serde(skip)]
        stages: &'static [(u64, u64)],
        max_in_flight: usize,
    },
}

impl Drive {
    /// When attempt `i` is due, counted from the start; `None` for a closed loop.
    fn due(&self, i: u64) -> Option<Duration> {
        match *self {
            Drive::Closed { .. } => None,
            Drive::Open {
                rate_per_second, ..
            } => Some(Duration::from_nanos(
                i * 1_000_000_000 / rate_per_second.max(1),
            )),
            Drive::Stages { stages, .. } => {
                let (mut before, mut offset) = (0u64, Duration::ZERO);
                for &(seconds, rate) in stages {
                    let here = seconds * rate;
                    if i < before + here {
                        let k = i - before;
                        return Some(
                            offset + Duration::from_nanos(k * 1_000_000_000 / rate.max(1)),
                        );
                    }
                    before += here;
                    offset += Duration::from_secs(seconds);
                }
                Some(offset)
            }
        }
    }

    /// Attempts the stages add up to.
    pub fn staged_attempts(stages: &[(u64, u64)]) -> u64 {
        stages.iter().map(|(s, r)| s * r).sum()
    }
}

/// One second of a burst: what was sent, what came back, how fast.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Second {
    /// Seconds since the burst started.
    pub second: u64,
    pub attempts: u64,
    pub reserved: u64,
    /// Answers with a 5xx status, and requests that got no answer.
    pub errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// What to send.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// Reservation attempts against a campaign.
    Reserve,
    /// `GET /healthz`: the HTTP floor.
    Healthz,
    /// Group buy: a user opens a group, the next `size - 1` join it, and so on.
    Group { size: u64 },
    /// Every other attempt a flash-sale reservation, the others group-buy opens and joins
    /// (on the campaign `<campaign>-group`).
    Mixed { size: u64 },
    /// Waiting-room joins (`POST /v1/campaigns/<id>/queue`), one per user.
    Join,
    /// Ticket polls (`GET /v1/queue/<ticket>`), round robin over the burst's `tickets`.
    Poll,
}

/// Groups opened during a burst that still have free slots: (group id, slots left).
type OpenGroups = Arc<Mutex<std::collections::VecDeque<(String, u64)>>>;

/// The burst to play.
#[derive(Debug, Clone, Serialize)]
pub struct Burst {
    pub campaign: String,
    pub attempts: u64,
    pub users: u64,
    pub drive: Drive,
    pub target: Target,
    /// Makes idempotency keys unique to this run.
    pub run_id: String,
    /// The tickets a [`Target::Poll`] burst reads.
    #[serde(skip)]
    pub tickets: Arc<Vec<String>>,
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

/// What a burst came to.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub burst: Burst,
    pub seconds: f64,
    pub attempts_per_second: f64,
    /// Answers by `code` (201 → `reserved`, problem answers by their `code`, else the status).
    pub outcomes: BTreeMap<String, u64>,
    pub latency: Latency,
    /// Open loop only: how late the generator itself sent requests it was ready for in time,
    /// from the scheduled time to the request leaving (its timer's 1 ms granularity and its
    /// own scheduling). This part of `latency` is the generator's, not the service's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send_lag: Option<Latency>,
    /// Per second of the burst (by scheduled or sent time).
    pub series: Vec<Second>,
    /// What the chart draws: per tenth of a second for a burst of 20 s or less (so a
    /// sub-second run still draws lines), else per second; rates per second either way.
    #[serde(skip)]
    pub chart: Vec<chart::Point>,
    /// Answers with a 5xx status and requests without an answer, over all attempts.
    pub error_ratio: f64,
    /// The 201 answers: (user, reservation id) — or (user, ticket id) for joins.
    #[serde(skip)]
    pub winners: Vec<(String, String)>,
}

/// Counters and latencies of one worker per tenth of a second.
#[derive(Default)]
struct Seconds {
    slots: Vec<(u64, u64, u64, Option<Histogram<u64>>)>,
}

impl Seconds {
    fn record(&mut self, tenth: usize, reserved: bool, error: bool, micros: u64) {
        if self.slots.len() <= tenth {
            self.slots.resize_with(tenth + 1, Default::default);
        }
        let slot = &mut self.slots[tenth];
        slot.0 += 1;
        slot.1 += u64::from(reserved);
        slot.2 += u64::from(error);
        let histogram = slot.3.get_or_insert_with(|| {
            Histogram::<u64>::new_with_bounds(1, 60_000_000, 2).expect("valid bounds")
        });
        let _ = histogram.record(micros.max(1));
    }

    fn merge(&mut self, other: Seconds) {
        for (i, (a, r, e, h)) in other.slots.into_iter().enumerate() {
            if self.slots.len() <= i {
                self.slots.resize_with(i + 1, Default::default);
            }
            let slot = &mut self.slots[i];
            slot.0 += a;
            slot.1 += r;
            slot.2 += e;
            if let Some(h) = h {
                match &mut slot.3 {
                    Some(mine) => {
                        let _ = mine.add(h);
                    }
                    None => slot.3 = Some(h),
                }
            }
        }
    }

    /// The slots merged `per` at a time: whole seconds from tenths with `per` 10.
    fn grouped(&self, per: usize) -> Seconds {
        let mut grouped = Seconds::default();
        for (tenth, (a, r, e, h)) in self.slots.iter().enumerate() {
            let mut one = Seconds::default();
            one.slots.resize_with(tenth / per + 1, Default::default);
            one.slots[tenth / per] = (*a, *r, *e, h.clone());
            grouped.merge(one);
        }
        grouped
    }

    fn series(&self) -> Vec<Second> {
        self.grouped(10)
            .slots
            .iter()
            .enumerate()
            .map(|(second, (attempts, reserved, errors, h))| Second {
                second: second as u64,
                attempts: *attempts,
                reserved: *reserved,
                errors: *errors,
                p50_ms: quantile_ms(h, 0.5),
                p99_ms: quantile_ms(h, 0.99),
            })
            .collect()
    }

    /// The chart's points: tenths for a burst of 20 s or less, else seconds.
    fn points(&self) -> Vec<chart::Point> {
        let (slots, width) = if self.slots.len() <= 200 {
            (&self.slots, 0.1)
        } else {
            (&self.grouped(10).slots, 1.0)
        };
        slots
            .iter()
            .enumerate()
            .map(|(i, (attempts, reserved, errors, h))| chart::Point {
                at: i as f64 * width,
                attempts_per_second: *attempts as f64 / width,
                reserved_per_second: *reserved as f64 / width,
                errors_per_second: *errors as f64 / width,
                p50_ms: quantile_ms(h, 0.5),
                p99_ms: quantile_ms(h, 0.99),
            })
            .collect()
    }
}

fn quantile_ms(histogram: &Option<Histogram<u64>>, quantile: f64) -> f64 {
    histogram
        .as_ref()
        .map_or(0.0, |h| h.value_at_quantile(quantile) as f64 / 1000.0)
}

impl Latency {
    fn of(histogram: &Histogram<u64>) -> Self {
        Latency {
            p50_us: histogram.value_at_quantile(0.5),
            p90_us: histogram.value_at_quantile(0.9),
            p99_us: histogram.value_at_quantile(0.99),
            p999_us: histogram.value_at_quantile(0.999),
            max_us: histogram.max(),
        }
    }
}

/// Plays a burst, printing progress every second.
pub async fn play(service: &Service, burst: &Burst) -> anyhow::Result<Report> {
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let outcomes: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let winners: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let open_groups: OpenGroups = Arc::default();
    let progress = {
        let done = Arc::clone(&done);
        let total = burst.attempts;
        tokio::spawn(async move {
            let mut last = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let now = done.load(Ordering::Relaxed);
                eprintln!("  {now}/{total} attempts, {} /s", now - last);
                last = now;
            }
        })
    };
    let workers = match burst.drive {
        Drive::Closed { concurrency } => concurrency,
        Drive::Open { max_in_flight, .. } | Drive::Stages { max_in_flight, .. } => max_in_flight,
    };
    // Every worker's connection is opened before the clock starts: a sale's first second
    // should not be measured as TCP handshakes.
    let warm: Vec<_> = (0..workers)
        .map(|_| {
            let service = service.clone();
            tokio::spawn(async move {
                service
                    .call(Method::GET, "/healthz", None, None, None)
                    .await
            })
        })
        .collect();
    for warming in warm {
        warming.await??;
    }
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(workers);
    for _ in 0..workers {
        let service = service.clone();
        let burst = burst.clone();
        let (next, done, outcomes, winners) = (
            Arc::clone(&next),
            Arc::clone(&done),
            Arc::clone(&outcomes),
            Arc::clone(&winners),
        );
        let open_groups = Arc::clone(&open_groups);
        tasks.push(tokio::spawn(async move {
            let mut histogram =
                Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
            let mut lag = histogram.clone();
            let mut local: HashMap<String, u64> = HashMap::new();
            let mut won = Vec::new();
            let mut seconds = Seconds::default();
            let mut tokens: HashMap<String, String> = HashMap::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= burst.attempts {
                    break;
                }
                // Open loop: latency counts from the scheduled send time.
                let scheduled = match burst.drive.due(i) {
                    Some(due) => {
                        let at = started + due;
                        // Only a send the worker waited for is the generator's own lateness
                        // (timer granularity, its scheduling); one claimed after its time
                        // waited for a free worker, i.e. for the service's earlier answers.
                        let waited = Instant::now() < at;
                        tokio::time::sleep_until(at.into()).await;
                        if waited {
                            let _ = lag.record((at.elapsed().as_micros() as u64).max(1));
                        }
                        at
                    }
                    None => Instant::now(),
                };
                let user = format!("user-{}", i % burst.users.max(1));
                let key = format!("{}-{i}", burst.run_id);
                let group = match burst.target {
                    Target::Group { size } => Some((burst.campaign.clone(), size)),
                    Target::Mixed { size } if i % 2 == 1 => {
                        Some((format!("{}-group", burst.campaign), size))
                    }
                    _ => None,
                };
                let grouped = group.is_some();
                let answer = match (burst.target, group) {
                    (_, Some((campaign, size))) => {
                        let token = service.attempt_token(&user, &mut tokens);
                        let slot = {
                            let mut open = open_groups.lock().unwrap_or_else(|p| p.into_inner());
                            match open.pop_front() {
                                Some((id, left)) => {
                                    if left > 1 {
                                        open.push_back((id.clone(), left - 1));
                                    }
                                    Some(id)
                                }
                                None => None,
                            }
                        };
                        match slot {
                            Some(id) => {
                                service
                                    .post_as(
                                        &format!("/v1/groups/{id}/members"),
                                        &user,
                                        &key,
                                        &token,
                                    )
                                    .await
                            }
                            None => {
                                let answer = service
                                    .post_as(
                                        &format!("/v1/campaigns/{campaign}/groups"),
                                        &user,
                                        &key,
                                        &token,
                                    )
                                    .await;
                                if let Ok(a) = &answer {
                                    if a.status == StatusCode::CREATED {
                                        if let Some(id) = a.field("id") {
                                            open_groups
                                                .lock()
                                                .unwrap_or_else(|p| p.into_inner())
                                                .push_back((id, size.saturating_sub(1)));
                                        }
                                    }
                                }
                                answer
                            }
                        }
                    }
                    (Target::Reserve | Target::Mixed { .. } | Target::Group { .. }, None) => {
                        let token = service.attempt_token(&user, &mut tokens);
                        service
                            .reserve_as(&burst.campaign, &user, &key, &token)
                            .await
                    }
                    (Target::Healthz, None) => {
                        service
                            .call(Method::GET, "/healthz", None, None, None)
                            .await
                    }
                    (Target::Join, None) => {
                        let token = service.attempt_token(&user, &mut tokens);
                        service.join_as(&burst.campaign, &user, &key, &token).await
                    }
                    (Target::Poll, None) => {
                        let ticket = &burst.tickets[i as usize % burst.tickets.len().max(1)];
                        service
                            .call(
                                Method::GET,
                                &format!("/v1/queue/{ticket}"),
                                Some(&service.store_token),
                                None,
                                None,
                            )
                            .await
                    }
                };
                let micros = scheduled.elapsed().as_micros() as u64;
                let _ = histogram.record(micros.max(1));
                let error = match &answer {
                    Ok(a) => a.status.is_server_error(),
                    Err(_) => true,
                };
                let reserved = matches!(&answer, Ok(a) if a.status == StatusCode::CREATED);
                let tenth = scheduled.saturating_duration_since(started).as_millis() / 100;
                seconds.record(tenth as usize, reserved, error, micros);
                // The answers' bodies are only searched for the one field needed, and an
                // outcome seen before costs no allocation: a refusal is the cheapest request
                // the service answers, and the generator shares its cores.
                let code;
                let outcome = match &answer {
                    // A group opened or joined: a slot held in a group (its id is the group's).
                    Ok(a) if a.status == StatusCode::CREATED && grouped => "grouped",
                    Ok(a) if a.status == StatusCode::CREATED && burst.target == Target::Join => {
                        if let Some(ticket) = a.field("ticket") {
                            won.push((user, ticket));
                        }
                        "joined"
                    }
                    Ok(a) if a.status == StatusCode::CREATED => {
                        if let Some(id) = a.field("id") {
                            won.push((user, id));
                        }
                        "reserved"
                    }
                    Ok(a) if a.status == StatusCode::OK => "ok",
                    Ok(a) => {
                        code = a
                            .field("code")
                            .unwrap_or_else(|| a.status.as_u16().to_string());
                        &code
                    }
                    Err(_) => "transport_error",
                };
                match local.get_mut(outcome) {
                    Some(n) => *n += 1,
                    None => {
                        local.insert(outcome.to_owned(), 1);
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            {
                let mut all = outcomes.lock().unwrap_or_else(|p| p.into_inner());
                for (outcome, n) in local {
                    *all.entry(outcome).or_default() += n;
                }
            }
            winners
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(won);
            (histogram, lag, seconds)
        }));
    }
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut lag = histogram.clone();
    let mut per_seconds = Seconds::default();
    for task in tasks {
        let (latency, send_lag, per_second) = task.await?;
        histogram.add(latency)?;
        lag.add(send_lag)?;
        per_seconds.merge(per_second);
    }
    progress.abort();
    let seconds = started.elapsed().as_secs_f64();
    let outcomes = outcomes.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let winners = std::mem::take(&mut *winners.lock().unwrap_or_else(|p| p.into_inner()));
    let series = per_seconds.series();
    let errors: u64 = series.iter().map(|s| s.errors).sum();
    Ok(Report {
        chart: per_seconds.points(),
        series,
        error_ratio: errors as f64 / burst.attempts.max(1) as f64,
        burst: burst.clone(),
        seconds,
        attempts_per_second: burst.attempts as f64 / seconds,
        outcomes,
        latency: Latency::of(&histogram),
        send_lag: (!matches!(burst.drive, Drive::Closed { .. })).then(|| Latency::of(&lag)),
        winners,
    })
}

/// What the settling step did to the winners.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Settled {
    pub confirmed: Vec<String>,
    pub cancelled: Vec<String>,
    /// Left to expire.
    pub expiring: Vec<String>,
    /// Expired before settling (the run outlasted the holds): their units were free to sell
    /// again, and their users' counts went back.
    pub expired_early: Vec<String>,
}

/// A share of winners pays (confirm), a share cancels, the rest is left to expire.
pub async fn settle(
    service: &Service,
    winners: &[(String, String)],
    confirm_share: f64,
    cancel_share: f64,
) -> anyhow::Result<Settled> {
    let mut settled = Settled::default();
    let confirm_until = (winners.len() as f64 * confirm_share) as usize;
    let cancel_until = confirm_until + (winners.len() as f64 * cancel_share) as usize;
    // A hold that expired during the run (the run outlasted `hold_seconds`) gave its unit and
    // its user's count back; it is counted as such, not settled.
    let not_held = |answer: &Answer| {
        answer.status == StatusCode::CONFLICT
            && answer.field("code").as_deref() == Some("reservation_not_held")
    };
    for (i, (_, id)) in winners.iter().enumerate() {
        if i < confirm_until {
            let answer = service
                .store_post(&format!("/v1/reservations/{id}/confirm"))
                .await?;
            if not_held(&answer) {
                settled.expired_early.push(id.clone());
                continue;
            }
            if answer.status != StatusCode::OK {
                bail!(
                    "confirming {id} answered {}: {}",
                    answer.status,
                    String::from_utf8_lossy(&answer.body)
                );
            }
            settled.confirmed.push(id.clone());
        } else if i < cancel_until {
            let answer = service
                .store_post(&format!("/v1/reservations/{id}/cancel"))
                .await?;
            if not_held(&answer) {
                settled.expired_early.push(id.clone());
                continue;
            }
            if answer.status != StatusCode::OK {
                bail!("cancelling {id} answered {}", answer.status);
            }
            settled.cancelled.push(id.clone());
        } else {
            let answer = service.store_get(&format!("/v1/reservations/{id}")).await?;
            if answer.field("status").as_deref() == Some("expired") {
                settled.expired_early.push(id.clone());
            } else {
                settled.expiring.push(id.clone());
            }
        }
    }
    Ok(settled)
}

/// The checks, each with what it saw.
#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    pub checks: Vec<(String, bool, String)>,
}

impl Verification {
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|(_, ok, _)| *ok)
    }

    /// The failed checks, one line each.
    pub fn failures(&self) -> Vec<String> {
        self.checks
            .iter()
            .filter(|(_, ok, _)| !ok)
            .map(|(name, _, saw)| format!("{name}: {saw}"))
            .collect()
    }
}

/// Verifies the invariants after a sale has settled (expired holds reaped, pipeline caught up):
/// units sold ≤ stock; nobody above the limit; the campaign's counts match what was
/// confirmed; every 201 is in the database (its `reservation.held` is in the feed, once);
/// the feed's events equal what was acknowledged: one held per 201, one confirmed per
/// confirm, one cancelled per cancel, one expired per hold left to expire.
pub async fn verify(
    service: &Service,
    campaign: &str,
    stock: u64,
    limit: u64,
    winners: &[(String, String)],
    settled: &Settled,
) -> anyhow::Result<Verification> {
    let mut checks = Vec::new();
    let mut check = |name: &str, ok: bool, saw: String| checks.push((name.to_owned(), ok, saw));

    let state = service
        .store_get(&format!("/v1/campaigns/{campaign}"))
        .await?
        .json();
    let confirmed = state["confirmed"].as_u64().unwrap_or(u64::MAX);
    let held = state["held"].as_u64().unwrap_or(u64::MAX);
    let available = state["available"].as_u64().unwrap_or(u64::MAX);
    // A hold that expired during the run gave its unit and its user's count back: the units
    // reserved may exceed the stock by exactly those.
    let returned = settled.expired_early.len() as u64;
    check(
        "units sold <= stock",
        (winners.len() as u64) <= stock + returned && confirmed <= stock,
        format!(
            "{} reserved ({returned} of them expired during the run), {confirmed} confirmed, stock {stock}",
            winners.len()
        ),
    );
    let early: std::collections::HashSet<&str> =
        settled.expired_early.iter().map(String::as_str).collect();
    let mut per_user: HashMap<&str, u64> = HashMap::new();
    for (user, id) in winners {
        if !early.contains(id.as_str()) {
            *per_user.entry(user).or_default() += 1;
        }
    }
    let worst = per_user.values().copied().max().unwrap_or(0);
    check(
        "nobody above the per-user limit",
        worst <= limit,
        format!("most by one user: {worst}, limit {limit}"),
    );
    check(
        "campaign confirmed == confirms",
        confirmed == settled.confirmed.len() as u64,
        format!("{confirmed} vs {}", settled.confirmed.len()),
    );
    check("no hold left", held == 0, format!("held {held}"));
    check(
        "conservation",
        available + held + confirmed == stock,
        format!("{available} + {held} + {confirmed} vs stock {stock}"),
    );

    // The feed is served from the database.
    let mut events: HashMap<&'static str, Vec<String>> = HashMap::new();
    let mut after = 0i64;
    loop {
        let page = service
            .store_get(&format!("/v1/events?after={after}&limit=1000"))
            .await?
            .json();
        let batch = page["events"]
            .as_array()
            .ok_or_else(|| anyhow!("the feed answered {page}"))?
            .clone();
        if batch.is_empty() {
            break;
        }
        for event in &batch {
            let cursor = event["cursor"].as_i64().context("cursor")?;
            if cursor <= after {
                bail!("the feed went backwards at cursor {cursor}");
            }
            after = cursor;
            let reservation = &event["reservation"];
            if reservation["campaign_id"] != campaign {
                continue;
            }
            let kind = match event["type"].as_str() {
                Some("reservation.held") => "held",
                Some("reservation.confirmed") => "confirmed",
                Some("reservation.cancelled") => "cancelled",
                Some("reservation.expired") => "expired",
                _ => "other",
            };
            events
                .entry(kind)
                .or_default()
                .push(reservation["id"].as_str().unwrap_or_default().to_owned());
        }
    }
    let compare = |kind: &'static str, expected: &[String]| -> (bool, String) {
        let seen = events.get(kind).cloned().unwrap_or_default();
        let unique: HashSet<&String> = seen.iter().collect();
        let expected_set: HashSet<&String> = expected.iter().collect();
        let missing = expected_set.difference(&unique).count();
        let extra = unique.difference(&expected_set).count();
        let duplicates = seen.len() - unique.len();
        (missing == 0 && extra == 0 && duplicates == 0, format!("{} in the feed, {} expected: {missing} missing, {extra} unexpected, {duplicates} duplicated", seen.len(), expected.len()))
    };
    let acknowledged: Vec<String> = winners.iter().map(|(_, id)| id.clone()).collect();
    let (ok, saw) = compare("held", &acknowledged);
    check("every 201 in the database, once", ok, saw);
    let (ok, saw) = compare("confirmed", &settled.confirmed);
    check("every confirm in the database, once", ok, saw);
    let (ok, saw) = compare("cancelled", &settled.cancelled);
    check("every cancel in the database, once", ok, saw);
    let expired: Vec<String> = settled
        .expiring
        .iter()
        .chain(&settled.expired_early)
        .cloned()
        .collect();
    let (ok, saw) = compare("expired", &expired);
    check("every expiry in the database, once", ok, saw);
    Ok(Verification { checks })
}

/// Creates a campaign; its JSON answer.
pub async fn create_campaign(
    service: &Service,
    id: &str,
    stock: u64,
    limit: u64,
    hold_seconds: u64,
) -> anyhow::Result<Value> {
    let answer = service
        .admin_post("/v1/campaigns", json!({"id": id, "kind": "flash_sale", "sku": "loadtest", "stock": stock, "per_user_limit": limit, "hold_seconds": hold_seconds}))
        .await?;
    if answer.status != StatusCode::CREATED {
        bail!(
            "creating {id} answered {}: {}",
            answer.status,
            String::from_utf8_lossy(&answer.body)
        );
    }
    Ok(answer.json())
}

/// Creates a flash-sale campaign with a waiting room admitting `admit_per_second`, starting
/// at `starts_at` (RFC 3339) or now.
pub async fn create_queued_campaign(
    service: &Service,
    id: &str,
    stock: u64,
    limit: u64,
    hold_seconds: u64,
    admit_per_second: u64,
    starts_at: Option<String>,
) -> anyhow::Result<Value> {
    let mut body = json!({"id": id, "kind": "flash_sale", "sku": "loadtest", "stock": stock,
        "per_user_limit": limit, "hold_seconds": hold_seconds,
        "queue": {"admit_per_second": admit_per_second}});
    if let Some(starts_at) = starts_at {
        body["starts_at"] = json!(starts_at);
    }
    let answer = service.admin_post("/v1/campaigns", body).await?;
    if answer.status != StatusCode::CREATED {
        bail!(
            "creating {id} answered {}: {}",
            answer.status,
            String::from_utf8_lossy(&answer.body)
        );
    }
    Ok(answer.json())
}

/// Creates a group-buy campaign: groups of `size`, open for a minute.
pub async fn create_group_campaign(
    service: &Service,
    id: &str,
    stock: u64,
    limit: u64,
    size: u64,
    hold_seconds: u64,
) -> anyhow::Result<Value> {
    let answer = service
        .admin_post("/v1/campaigns", json!({"id": id, "kind": "group_buy", "sku": "loadtest", "stock": stock,
            "per_user_limit": limit, "hold_seconds": hold_seconds, "group": {"size": size, "window_seconds": 60}}))
        .await?;
    if answer.status != StatusCode::CREATED {
        bail!(
            "creating {id} answered {}: {}",
            answer.status,
            String::from_utf8_lossy(&answer.body)
        );
    }
    Ok(answer.json())
}

/// A campaign's units add up: available + held + confirmed = stock. (`name`, ok, what was seen)
pub async fn units_add_up(
    service: &Service,
    campaign: &str,
) -> anyhow::Result<(String, bool, String)> {
    let view = service
        .store_get(&format!("/v1/campaigns/{campaign}"))
        .await?
        .json();
    let n = |f: &str| view[f].as_u64().unwrap_or(u64::MAX);
    let (stock, available, held, confirmed) =
        (n("stock"), n("available"), n("held"), n("confirmed"));
    Ok((
        format!("{campaign}: available + held + confirmed = stock"),
        available.saturating_add(held).saturating_add(confirmed) == stock,
        format!("{available} + {held} + {confirmed} vs {stock}"),
    ))
}

/// Waits until the feed's last event is at least as new as everything acknowledged: the
/// pipeline caught up (or `within` passed).
pub async fn wait_for_feed(
    service: &Service,
    expected_events: usize,
    campaign: &str,
    within: Duration,
) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let mut count = 0;
        let mut after = 0i64;
        loop {
            let page = service
                .store_get(&format!("/v1/events?after={after}&limit=1000"))
                .await?
                .json();
            let batch = page["events"].as_array().cloned().unwrap_or_default();
            if batch.is_empty() {
                break;
            }
            after = page["next"].as_i64().unwrap_or(after);
            count += batch
                .iter()
                .filter(|e| e["reservation"]["campaign_id"] == campaign)
                .count();
        }
        if count >= expected_events || started.elapsed() > within {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
