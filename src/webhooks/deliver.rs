//! The delivery worker. Every instance runs one; each webhook is delivered by one instance at
//! a time, the holder of its lease in the database (a conditional update: taken when free or
//! expired, renewed while delivering). Events come from the durable feed (the database),
//! after the webhook's `delivered_cursor`, in cursor order; each is sent until an endpoint
//! answers 2xx (then the cursor moves past it) or, after retries with exponential backoff and
//! jitter, until the give-up window passes (the attempt is recorded `gave_up` and the next
//! event goes on). Every attempt is recorded. A failing or hanging endpoint delays only its
//! own webhook: each webhook has its own task, and every attempt its own timeout.
//!
//! At least once: a crash between a 2xx and the cursor's move sends the event again, and a
//! lease that lapses mid-attempt lets another instance deliver it too.

use super::{client, signature, AllowedHosts};
use crate::domain::Millis;
use crate::metrics as m;
use crate::shutdown::Shutdown;
use crate::store::{Delivery, FeedEvent, FeedFilter, Store, Webhook};
use backon::BackoffBuilder;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// How the worker delivers.
#[derive(Debug, Clone)]
pub struct DeliverySettings {
    /// How long one attempt may take (connect, send, answer).
    pub timeout: Duration,
    /// After this long of failing, an event is given up on and the next goes on.
    pub give_up_after: Duration,
    /// First retry delay; doubles (with jitter) up to `max_backoff`.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// How often the worker looks for new webhooks and new events.
    pub poll: Duration,
    pub allowed: Arc<AllowedHosts>,
}

/// How long a lease lasts past its last renewal.
const LEASE: Duration = Duration::from_secs(15);

/// The lease is renewed before an attempt once this long passed since the last renewal: an
/// attempt (at most the delivery timeout, below [`LEASE`] less this) never outlives the
/// lease, so a slow receiver is not sent the same events by two instances at once, and a
/// deleted webhook (whose lease cannot be renewed) starts no attempt this long after.
const RENEW_EVERY: Duration = Duration::from_millis(250);

/// Successful deliveries are recorded, and the cursor moved past them, together: every
/// this many or this long (a crash in between sends them again: at least once).
const FLUSH_EVERY: usize = 200;
const FLUSH_AFTER: Duration = Duration::from_millis(200);

/// Events read per page.
const PAGE: i64 = 500;

/// Runs until shutdown: one task per webhook this instance may deliver.
pub async fn run(store: Store, settings: DeliverySettings, mut shutdown: Shutdown) {
    let owner = format!("instance-{}", ulid::Ulid::new());
    let http = client(Arc::clone(&settings.allowed), settings.timeout);
    let mut tasks: HashMap<String, JoinHandle<()>> = HashMap::new();
    loop {
        match store.webhooks().await {
            Ok(webhooks) => {
                tasks.retain(|_, task| !task.is_finished());
                for webhook in webhooks {
                    if tasks.contains_key(&webhook.id) {
                        continue;
                    }
                    let id = webhook.id.clone();
                    let task = tokio::spawn(deliver_webhook(
                        store.clone(),
                        http.clone(),
                        settings.clone(),
                        owner.clone(),
                        webhook.id,
                        shutdown.clone(),
                    ));
                    tasks.insert(id, task);
                }
            }
            Err(error) => tracing::warn!(%error, "could not list webhooks"),
        }
        tokio::select! {
            _ = shutdown.recv() => break,
            _ = tokio::time::sleep(settings.poll.max(Duration::from_millis(100)) * 4) => {}
        }
    }
    for (_, task) in tasks {
        let _ = task.await;
    }
}

/// Delivers one webhook's events while this instance holds its lease; returns when the
/// webhook is deleted or at shutdown.
async fn deliver_webhook(
    store: Store,
    http: reqwest::Client,
    settings: DeliverySettings,
    owner: String,
    id: String,
    mut shutdown: Shutdown,
) {
    deliver_until_stopped(&store, &http, &settings, &owner, &id, &mut shutdown).await;
    // Another instance takes the webhook over at once instead of after the lease.
    if let Err(error) = store.release_webhook(&id, &owner).await {
        tracing::warn!(%error, webhook = %id, "could not release a webhook's lease");
    }
}

async fn deliver_until_stopped(
    store: &Store,
    http: &reqwest::Client,
    settings: &DeliverySettings,
    owner: &str,
    id: &str,
    shutdown: &mut Shutdown,
) {
    loop {
        let pause = match deliver_some(store, http, settings, owner, id, shutdown).await {
            Ok(Next::Stop) => return,
            Ok(Next::More) => Duration::ZERO,
            Ok(Next::Idle) => settings.poll,
            Err(error) => {
                tracing::warn!(%error, webhook = %id, "webhook delivery could not reach the database");
                Duration::from_secs(1)
            }
        };
        if pause > Duration::ZERO {
            tokio::select! {
                _ = shutdown.recv() => return,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }
}

enum Next {
    /// Deleted, or shutting down.
    Stop,
    /// A page was delivered; there may be more.
    More,
    /// Nothing to deliver now, or another instance holds the lease.
    Idle,
}

/// The webhook's lease as this worker holds it.
struct Lease<'a> {
    store: &'a Store,
    owner: &'a str,
    id: &'a str,
    renewed: Instant,
    /// When a failed attempt was last logged (at most one line per [`WARN_EVERY`]).
    warned: Option<Instant>,
}

/// Failed attempts of a webhook are logged at most this often (all are counted).
const WARN_EVERY: Duration = Duration::from_secs(10);

impl Lease<'_> {
    /// Renews the lease if [`RENEW_EVERY`] passed, for `extra` past [`LEASE`]; `false` if
    /// it was lost (another instance took it, or the webhook was deleted).
    async fn keep(&mut self, extra: Duration) -> Result<bool, crate::store::StoreError> {
        if self.renewed.elapsed() < RENEW_EVERY && extra.is_zero() {
            return Ok(true);
        }
        let now = Millis::now();
        let until = Millis(now.0 + (LEASE + extra).as_millis() as i64);
        let kept = self
            .store
            .lease_webhook(self.id, self.owner, now, until)
            .await?;
        self.renewed = Instant::now();
        Ok(kept)
    }
}

/// Successful deliveries not yet recorded, and the cursor they move the webhook to.
struct Delivered {
    records: Vec<Delivery>,
    from: i64,
    to: i64,
    since: Instant,
}

impl Delivered {
    /// Records them and moves the cursor; `false` if the lease was lost or a replay moved
    /// the cursor meanwhile (start over from what the database says).
    async fn flush(
        &mut self,
        store: &Store,
        id: &str,
        owner: &str,
    ) -> Result<bool, crate::store::StoreError> {
        if self.to == self.from {
            return Ok(true);
        }
        store.record_deliveries(id, &self.records).await?;
        let moved = store.advance_webhook(id, owner, self.from, self.to).await?;
        self.records.clear();
        self.from = self.to;
        self.since = Instant::now();
        Ok(moved)
    }
}

async fn deliver_some(
    store: &Store,
    http: &reqwest::Client,
    settings: &DeliverySettings,
    owner: &str,
    id: &str,
    shutdown: &mut Shutdown,
) -> Result<Next, crate::store::StoreError> {
    let now = Millis::now();
    if !store
        .lease_webhook(id, owner, now, Millis(now.0 + LEASE.as_millis() as i64))
        .await?
    {
        return Ok(match store.webhook(id).await? {
            Some(_) => Next::Idle,
            None => Next::Stop,
        });
    }
    let mut lease = Lease {
        store,
        owner,
        id,
        renewed: Instant::now(),
        warned: None,
    };
    let Some(webhook) = store.webhook(id).await? else {
        return Ok(Next::Stop);
    };
    let filter = FeedFilter {
        campaign_id: webhook.campaign_id.clone(),
        types: webhook.event_types.clone(),
    };
    let events = store
        .events_after(webhook.delivered_cursor, PAGE, &filter)
        .await?;
    let lag = events
        .first()
        .map_or(0.0, |e| (now.0 - e.at.0).max(0) as f64 / 1000.0);
    metrics::gauge!(m::WEBHOOK_LAG, "webhook" => id.to_owned()).set(lag);
    if events.is_empty() {
        return Ok(Next::Idle);
    }
    let mut delivered = Delivered {
        records: Vec::new(),
        from: webhook.delivered_cursor,
        to: webhook.delivered_cursor,
        since: Instant::now(),
    };
    for batch in events.chunks(webhook.max_batch.max(1) as usize) {
        let Some(last) = batch.last() else {
            continue;
        };
        match deliver_batch(&mut lease, http, settings, &webhook, batch, shutdown).await? {
            Sent::Delivered(record) => delivered.records.push(record),
            Sent::Recorded => {}
            Sent::Stop => return Ok(Next::Stop),
        }
        delivered.to = last.cursor;
        let due =
            delivered.records.len() >= FLUSH_EVERY || delivered.since.elapsed() >= FLUSH_AFTER;
        if due && !delivered.flush(store, id, owner).await? {
            return Ok(Next::More);
        }
    }
    delivered.flush(store, id, owner).await?;
    Ok(Next::More)
}

enum Sent {
    /// Delivered at the first attempt: the attempt's record, written with the next flush.
    Delivered(Delivery),
    /// Delivered after retries, or given up on: every attempt recorded already.
    Recorded,
    Stop,
}

/// Sends a batch (one event when the webhook takes one at a time) until it is delivered or
/// given up on, renewing the lease before every attempt that needs it.
async fn deliver_batch(
    lease: &mut Lease<'_>,
    http: &reqwest::Client,
    settings: &DeliverySettings,
    webhook: &Webhook,
    events: &[FeedEvent],
    shutdown: &mut Shutdown,
) -> Result<Sent, crate::store::StoreError> {
    let store = lease.store;
    let (Some(first), Some(last)) = (events.first(), events.last()) else {
        return Ok(Sent::Recorded);
    };
    let body = if webhook.max_batch <= 1 {
        serde_json::to_vec(first).unwrap_or_default()
    } else {
        serde_json::to_vec(&serde_json::json!({ "events": events })).unwrap_or_default()
    };
    let started = Instant::now();
    let mut delays = backon::ExponentialBuilder::default()
        .with_min_delay(settings.min_backoff)
        .with_max_delay(settings.max_backoff)
        .with_jitter()
        .without_max_times()
        .build();
    let mut attempt = 0;
    loop {
        attempt += 1;
        if !lease.keep(Duration::ZERO).await? {
            return Ok(Sent::Stop);
        }
        let (status, error) = send(http, settings, webhook, last.cursor, &body).await;
        let delivered = status.is_some_and(|s| (200..300).contains(&s));
        let gave_up = !delivered && started.elapsed() >= settings.give_up_after;
        let outcome = match (delivered, gave_up) {
            (true, _) => "delivered",
            (false, true) => "gave_up",
            (false, false) => "failed",
        };
        metrics::counter!(m::WEBHOOK_DELIVERIES, "outcome" => outcome).increment(1);
        let record = Delivery {
            id: 0,
            event_cursor: last.cursor,
            attempt,
            outcome: outcome.to_owned(),
            status_code: status.map(i32::from),
            error,
            at_ms: Millis::now().0,
        };
        if delivered && attempt == 1 {
            return Ok(Sent::Delivered(record));
        }
        if !delivered && lease.warned.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
            lease.warned = Some(Instant::now());
            tracing::warn!(
                webhook = %webhook.id,
                cursor = last.cursor,
                attempt,
                outcome,
                status = ?record.status_code,
                error = record.error.as_deref().unwrap_or_default(),
                "a webhook delivery failed (further failures of this webhook are logged at most every 10 s)"
            );
        }
        store.record_delivery(&webhook.id, &record).await?;
        if delivered || gave_up {
            return Ok(Sent::Recorded);
        }
        let delay = delays.next().unwrap_or(settings.max_backoff);
        if !lease.keep(delay).await? {
            return Ok(Sent::Stop);
        }
        tokio::select! {
            _ = shutdown.recv() => return Ok(Sent::Stop),
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// One attempt: the status code, or why there is none.
async fn send(
    http: &reqwest::Client,
    settings: &DeliverySettings,
    webhook: &Webhook,
    cursor: i64,
    body: &[u8],
) -> (Option<u16>, Option<String>) {
    // An address written in the URL is not resolved, so the resolver cannot check it.
    if let Err(error) = settings.allowed.check_literal(&webhook.url) {
        return (None, Some(error.to_string()));
    }
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let request = http
        .post(&webhook.url)
        .header("content-type", "application/json")
        .header("flashsale-event-cursor", cursor.to_string())
        .header("flashsale-signature", signature(&webhook.secret, now, body))
        .body(body.to_vec());
    match request.send().await {
        Ok(response) => (Some(response.status().as_u16()), None),
        Err(error) if error.is_timeout() => (None, Some("timed out".into())),
        Err(error) => (None, Some(error_chain(&error))),
    }
}

/// An error with its causes, `a: b: c`.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
