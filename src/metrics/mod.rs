//! Every metric name, in one place, and the Prometheus recorder.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;
use std::time::Duration;

/// A series not updated for this long is dropped from `/metrics`: per-campaign series go
/// away once their campaign ends (the sampler stops updating them) without an unbounded
/// label set. Everything that must always be present is re-set by the sampler every tick.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(600);

mod names;
pub use names::*;

/// The `script` label values of [`SCRIPT_DURATION`] and [`SCRIPT_ERRORS`]: one per file in
/// `src/engine/redis/scripts/` that the Redis engine runs.
pub const SCRIPT_NAMES: &[&str] = &[
    "load_campaign",
    "adjust_stock",
    "end_campaign",
    "reserve",
    "confirm",
    "cancel",
    "extend",
    "expire",
    "sold_out_records",
    "open_group",
    "join_group",
    "read_group",
    "queue_join",
    "queue_tickets",
    "queue_line",
    "shard_state",
    "transfer_take",
    "transfer_give",
    "transfer_done",
    "claim_key",
];

/// Keeps the counters that alerts and panels read present at zero, so a quiet service shows
/// 0 rather than no series (and they never idle out).
pub fn touch_counters(redis: bool) {
    if redis {
        for script in SCRIPT_NAMES {
            metrics::counter!(SCRIPT_ERRORS, "script" => *script).increment(0);
        }
    }
    for stage in ["read", "write", "ack"] {
        metrics::counter!(PERSIST_FAILURES, "stage" => stage).increment(0);
    }
    for outcome in ["delivered", "failed", "gave_up"] {
        metrics::counter!(WEBHOOK_DELIVERIES, "outcome" => outcome).increment(0);
    }
    for reason in ["refused", "unknown_campaign", "fenced"] {
        metrics::counter!(DEAD_EVENTS, "reason" => reason).increment(0);
    }
    for name in [
        ENGINE_OUT_OF_MEMORY,
        WORK_ANNOUNCE_FAILURES,
        SOLD_OUT_SHORT_CIRCUITS,
        REAPER_EXPIRED,
        REAPER_ERRORS,
        RECOVERED_CAMPAIGNS,
        REDIS_FAILOVERS,
        FAILOVER_REBUILDS,
        ENGINE_DATA_LOSSES,
        SHARD_TRANSFERS,
        SHARD_TRANSFERRED_UNITS,
    ] {
        metrics::counter!(name).increment(0);
    }
}

/// Buckets that resolve a sub-millisecond service: 100 µs to 5 s.
const LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Events per batch: 1 to the 1,000 default maximum.
const BATCH_SIZE_BUCKETS: &[f64] = &[1.0, 5.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0];

/// Attempts per reserve batch: 1 (a lone attempt) to the cap of 128.
const RESERVE_BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];

/// Announcements on the work index that failed (the change went on; retried).
pub const WORK_ANNOUNCE_FAILURES: &str = "flashsale_work_announce_failures_total";

/// Writes the stock engine refused for lack of memory (Redis `maxmemory`).
pub const ENGINE_OUT_OF_MEMORY: &str = "flashsale_engine_out_of_memory_total";

/// When an out-of-memory refusal was last logged (ms since the epoch; 0: never).
static LAST_OUT_OF_MEMORY_LOG_MS: std::sync::atomic::AtomicI64 =
    std::sync::atomic::AtomicI64::new(0);

/// Counts a write refused for lack of memory.
pub fn engine_out_of_memory() {
    metrics::counter!(ENGINE_OUT_OF_MEMORY).increment(1);
}

/// Whether an out-of-memory refusal should be logged now (at most one line per 10 s).
pub fn log_out_of_memory_now() -> bool {
    once_per_10s(&LAST_OUT_OF_MEMORY_LOG_MS)
}

/// Whether a refusal for an unsafe engine or a database that refuses writes should be logged
/// now (at most one line per 10 s).
pub fn log_unsafe_now() -> bool {
    static LAST: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);
    once_per_10s(&LAST)
}

/// Whether 10 s passed since `last` (milliseconds), taking the turn if so.
fn once_per_10s(last_ms: &std::sync::atomic::AtomicI64) -> bool {
    let now = crate::domain::Millis::now().0;
    let last = last_ms.load(std::sync::atomic::Ordering::Relaxed);
    now - last >= 10_000
        && last_ms
            .compare_exchange(
                last,
                now,
                std::sync::atomic::Ordering::Relaxed,
                std::sync::atomic::Ordering::Relaxed,
            )
            .is_ok()
}

/// Campaigns that get series of their own when none is configured
/// (`FLASHSALE_METRICS_CAMPAIGNS`).
pub const DEFAULT_CAMPAIGN_SERIES: usize = 100;

/// The `campaign` label of everything past the bound.
pub const OTHER_CAMPAIGNS: &str = "_other";

/// Which campaigns have per-campaign series: the first `limit` with recent activity, each
/// until it has been quiet for [`IDLE_TIMEOUT`]; the rest are summed under
/// [`OTHER_CAMPAIGNS`], so `/metrics` is bounded whatever the catalogue's size.
struct CampaignSeries {
    limit: std::sync::atomic::AtomicUsize,
    seen: dashmap::DashMap<String, std::time::Instant>,
}

fn campaign_series() -> &'static CampaignSeries {
    static SERIES: std::sync::OnceLock<CampaignSeries> = std::sync::OnceLock::new();
    SERIES.get_or_init(|| CampaignSeries {
        limit: std::sync::atomic::AtomicUsize::new(DEFAULT_CAMPAIGN_SERIES),
        seen: dashmap::DashMap::new(),
    })
}

/// Sets how many campaigns get series of their own (process-wide, at start).
pub fn set_campaign_series(limit: usize) {
    campaign_series()
        .limit
        .store(limit, std::sync::atomic::Ordering::Relaxed);
}

/// The `campaign` label for a campaign with activity now: its id while it is among the
/// bounded set, else [`OTHER_CAMPAIGNS`].
pub fn campaign_label(campaign: &str) -> String {
    let series = campaign_series();
    let now = std::time::Instant::now();
    if let Some(mut seen) = series.seen.get_mut(campaign) {
        *seen = now;
        return campaign.to_owned();
    }
    let limit = series.limit.load(std::sync::atomic::Ordering::Relaxed);
    if series.seen.len() >= limit {
        // Quiet ones leave first (their series idle out of `/metrics` as well).
        series
            .seen
            .retain(|_, seen| now.duration_since(*seen) < IDLE_TIMEOUT);
        if series.seen.len() >= limit {
            return OTHER_CAMPAIGNS.to_owned();
        }
    }
    series.seen.insert(campaign.to_owned(), now);
    campaign.to_owned()
}

/// Installs the process-wide recorder once and returns its handle; later calls (tests start
/// many applications in one process) get the same handle.
pub fn install() -> PrometheusHandle {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .idle_timeout(MetricKindMask::ALL, Some(IDLE_TIMEOUT))
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS_SECONDS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(PERSIST_BATCH_SIZE.into()),
                        BATCH_SIZE_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(RESERVE_BATCH_SIZE.into()),
                        RESERVE_BATCH_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(TICKET_BATCH_SIZE.into()),
                        RESERVE_BATCH_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(JOIN_BATCH_SIZE.into()),
                        RESERVE_BATCH_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(CLAIM_BATCH_SIZE.into()),
                        RESERVE_BATCH_BUCKETS,
                    )
                })
                .unwrap_or_else(|_| PrometheusBuilder::new());
            match builder.install_recorder() {
                Ok(handle) => {
                    describe();
                    handle
                }
                // Another recorder is installed (an embedding program's): keep a private one
                // so `/metrics` still answers.
                Err(_) => PrometheusBuilder::new().build_recorder().handle(),
            }
        })
        .clone()
}

/// Gives every metric its HELP text (Prometheus tooling expects one).
fn describe() {
    metrics::describe_counter!(HTTP_REQUESTS, "HTTP requests by route, method and status.");
    metrics::describe_counter!(
        SHARD_TRANSFERS,
        "Moves of units between the shards of a sharded campaign (a shard ran dry)."
    );
    metrics::describe_counter!(
        SHARD_TRANSFERRED_UNITS,
        "Units moved between the shards of sharded campaigns."
    );
    metrics::describe_histogram!(
        HTTP_REQUEST_DURATION,
        "HTTP request latency by route and method."
    );
    metrics::describe_gauge!(HTTP_IN_FLIGHT, "Requests being served right now.");
    metrics::describe_counter!(
        QUEUE_JOINS,
        "Waiting-room joins by outcome (joined, existing)."
    );
    metrics::describe_counter!(
        QUEUE_PASS_REFUSALS,
        "Attempts on a queued campaign refused for their pass, by reason."
    );
    metrics::describe_counter!(
        QUEUE_ADMITTED,
        "Waiting-room tickets this instance admitted, by campaign."
    );
    metrics::describe_gauge!(
        QUEUE_WAITING,
        "Waiting-room tickets still waiting, by campaign."
    );
    metrics::describe_gauge!(
        QUEUE_ROOM,
        "Units waiting tickets could still be admitted for (available less unused passes; 0 outside the window), by campaign."
    );
    metrics::describe_counter!(RESERVATION_ATTEMPTS, "Reservation attempts by campaign and outcome (reserved, replayed, sold_out, limit_exceeded, not_started, ended, rate_limited, ...).");
    metrics::describe_counter!(
        GROUP_ATTEMPTS,
        "Group opens and joins by operation and outcome."
    );
    metrics::describe_counter!(
        SOLD_OUT_SHORT_CIRCUITS,
        "Refusals answered by the in-process sold-out gate, without asking the engine."
    );
    metrics::describe_counter!(REAPER_EXPIRED, "Held reservations the reaper expired.");
    metrics::describe_counter!(
        DEAD_EVENTS,
        "Events the persister set aside in dead_events instead of applying, by reason (refused, unknown_campaign, fenced)."
    );
    metrics::describe_counter!(
        ENGINE_DATA_LOSSES,
        "Campaigns this instance found lost by the stock engine (a Redis or cluster node restarted empty)."
    );
    metrics::describe_counter!(REAPER_ERRORS, "Reaper passes that failed.");
    metrics::describe_gauge!(
        CAMPAIGN_UNITS,
        "Units of a live campaign by campaign and state (available, held, confirmed)."
    );
    metrics::describe_gauge!(
        CAMPAIGN_GROUPS,
        "Groups of a live group-buy campaign by campaign and status (open, formed, failed)."
    );
    metrics::describe_histogram!(
        SCRIPT_DURATION,
        "Time one Lua script took, round trip included, by script."
    );
    metrics::describe_counter!(
        SCRIPT_ERRORS,
        "Lua script calls that failed (connection, timeout, script error), by script."
    );
    metrics::describe_gauge!(
        ENGINE_UP,
        "1 while the stock engine answers a ping, else 0."
    );
    metrics::describe_gauge!(DATABASE_UP, "1 while the database answers, else 0.");
    metrics::describe_gauge!(
        ENGINE_MEMORY_USED,
        "Memory the stock engine (Redis) uses, per node, in bytes."
    );
    metrics::describe_gauge!(
        ENGINE_MEMORY_MAX,
        "The stock engine's (Redis) maxmemory per node, in bytes (0: no limit)."
    );
    metrics::describe_gauge!(
        ENGINE_EVICTING,
        "1 while a Redis node's maxmemory-policy may evict keys (anything but noeviction): an evicted key is a broken promise."
    );
    metrics::describe_counter!(
        ENGINE_EVICTED_KEYS,
        "Keys a Redis node evicted since it started (INFO evicted_keys)."
    );
    metrics::describe_gauge!(
        DATABASE_WRITABLE,
        "0 while the persister's writes to the database fail (changes cannot be made durable), 1 once one succeeds."
    );
    metrics::describe_gauge!(
        PERSIST_BACKLOG,
        "Stream entries not yet persisted (and acknowledged); an entry carries one event, or the events of one batch of reserves."
    );
    metrics::describe_gauge!(
        PERSIST_PENDING,
        "Events handed to a persister and not yet acknowledged."
    );
    metrics::describe_counter!(PERSISTED_EVENTS, "Events written to the database.");
    metrics::describe_histogram!(PERSIST_BATCH_SIZE, "Events per persisted batch.");
    metrics::describe_histogram!(
        RESERVE_BATCH_SIZE,
        "Reservation attempts decided by one call of the reserve script (group commit)."
    );
    metrics::describe_histogram!(
        TICKET_BATCH_SIZE,
        "Waiting-room tickets read by one call of the queue script."
    );
    metrics::describe_histogram!(
        JOIN_BATCH_SIZE,
        "Waiting-room joins decided by one call of the queue script."
    );
    metrics::describe_histogram!(
        CLAIM_BATCH_SIZE,
        "Store idempotency keys claimed by one call of the claim script (sharded campaigns)."
    );
    metrics::describe_histogram!(
        PERSIST_BATCH_DURATION,
        "Time to write and acknowledge one batch."
    );
    metrics::describe_gauge!(
        PERSIST_LAG,
        "Age of the oldest event not yet persisted (0 when none waits)."
    );
    metrics::describe_counter!(
        PERSIST_FAILURES,
        "Persister failures by stage (read, write, ack)."
    );
    metrics::describe_gauge!(
        RECONCILE_DRIFT,
        "Units by which engine and database disagree, per campaign."
    );
    metrics::describe_counter!(
        RECOVERED_CAMPAIGNS,
        "Campaigns rebuilt in the engine from the database."
    );
    metrics::describe_counter!(
        REDIS_FAILOVERS,
        "Redis failovers followed (Sentinel named a new primary)."
    );
    metrics::describe_counter!(
        FAILOVER_REBUILDS,
        "Campaigns a promoted Redis lacked changes of, rebuilt from the database."
    );
    metrics::describe_counter!(
        WEBHOOK_DELIVERIES,
        "Webhook delivery attempts by outcome (delivered, failed, gave_up)."
    );
    metrics::describe_gauge!(
        WEBHOOK_LAG,
        "Per webhook: age of the oldest feed event not yet delivered (0 when none waits)."
    );
    metrics::describe_gauge!(BUILD_INFO, "Always 1, labelled with version and engine.");
    metrics::describe_counter!(
        ENGINE_OUT_OF_MEMORY,
        "Changes the stock engine refused for lack of memory (Redis maxmemory; answered 503 engine_out_of_memory)."
    );
    metrics::describe_counter!(
        WORK_ANNOUNCE_FAILURES,
        "Changes whose announcement on the work index failed (they went on; the announcement is retried)."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn campaigns_past_the_bound_share_one_series() {
        set_campaign_series(2);
        assert_eq!(campaign_label("bound-a"), "bound-a");
        assert_eq!(campaign_label("bound-b"), "bound-b");
        assert_eq!(campaign_label("bound-c"), OTHER_CAMPAIGNS);
        assert_eq!(
            campaign_label("bound-a"),
            "bound-a",
            "a campaign keeps its series"
        );
        set_campaign_series(DEFAULT_CAMPAIGN_SERIES);
    }
}
