//! Background workers the application owns: the reaper (expired holds return their units),
//! the sold-out gate refresher and the rate-limiter cleanup. The first two are safe to run on
//! every instance at once: each step is one atomic engine decision.

use crate::domain::CampaignId;
use crate::domain::Millis;
use crate::engine::gate::Gate;
use crate::engine::work::Settled;
use crate::engine::{Engine, EventLog, WorkIndex, PERSISTER};
use crate::metrics as m;
use crate::shutdown::Shutdown;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

/// Holds expired per campaign per engine call, so one call stays short: Redis runs a script
/// alone, and expiring 500 holds in one `expire.lua` blocked it for 12–13 ms (SLOWLOG during
/// an open-loop sale with 3-second holds), which every reservation waiting behind it paid.
const BATCH: u32 = 100;

/// Due campaigns one reaper claims per round at most (the rest come next round).
const CLAIMS_PER_ROUND: usize = 500;

/// Expires due holds, every `interval`, until shutdown: of the campaigns the work index lists
/// as active or due (`engine::work`), never of the whole catalogue.
pub async fn run_reaper(
    engine: Engine,
    work: Arc<dyn WorkIndex>,
    interval: Duration,
    mut shutdown: Shutdown,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.recv() => return,
            _ = ticker.tick() => {}
        }
        if let Err(error) = reap_once(&engine, &*work, Millis::now()).await {
            metrics::counter!(m::REAPER_ERRORS).increment(1);
            tracing::warn!(%error, "reaper pass failed; retrying next tick");
        }
    }
}

/// One pass, as of `now`: the active campaigns with something due (a cheap read each), and
/// the due ones this reaper claimed; a sharded campaign is expired as a whole.
pub async fn reap_once(
    engine: &Engine,
    work: &dyn WorkIndex,
    now: Millis,
) -> Result<u64, crate::engine::EngineError> {
    use futures::{StreamExt, TryStreamExt};
    work.leases().retry_pending(work).await;
    let active = work.active().await?;
    let campaigns: Vec<CampaignId> = active.campaigns().cloned().collect();
    let due: Vec<Option<CampaignId>> = futures::stream::iter(campaigns)
        .map(|campaign| async move {
            let left = work.leftover(&campaign, now).await?;
            Ok::<_, crate::engine::EngineError>(
                left.next_due
                    .is_some_and(|due| due <= now)
                    .then(|| campaign.parent()),
            )
        })
        .buffer_unordered(16)
        .try_collect()
        .await?;
    let mut visit: BTreeSet<CampaignId> = due.into_iter().flatten().collect();
    let (claimed_until, claimed) = work.claim_due(now, CLAIMS_PER_ROUND).await?;
    for campaign in claimed {
        if crate::engine::work::settle(work, &campaign, claimed_until, now).await? == Settled::Due {
            visit.insert(campaign.parent());
        }
    }
    let mut total = 0;
    for campaign in visit {
        loop {
            let expired = engine.expire_due(&campaign, now, BATCH).await?;
            total += u64::from(expired);
            if expired < BATCH {
                break;
            }
        }
    }
    if total > 0 {
        metrics::counter!(m::REAPER_EXPIRED).increment(total);
    }
    Ok(total)
}

/// How often the admission worker lets waiting tickets through: a tenth of a second's budget
/// at most per round (see `WaitingRoom::admit`), so twenty rounds a second keep the rate.
pub const ADMIT_INTERVAL: Duration = Duration::from_millis(50);

/// How long the admission worker keeps the database's list of open waiting rooms.
const QUEUED_TTL: Duration = Duration::from_secs(1);

/// Admits waiting tickets of every campaign with an open waiting room, every
/// [`ADMIT_INTERVAL`], until shutdown. Safe on every instance: the engine counts the rate
/// across all of them. The campaigns come from the database (one query a second), so the
/// rest of the catalogue costs nothing.
pub async fn run_admission(engine: Engine, store: crate::store::Store, mut shutdown: Shutdown) {
    let mut ticker = tokio::time::interval(ADMIT_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut queued: Option<(std::time::Instant, Vec<CampaignId>)> = None;
    loop {
        tokio::select! {
            _ = shutdown.recv() => return,
            _ = ticker.tick() => {}
        }
        let now = Millis::now();
        if queued
            .as_ref()
            .is_none_or(|(at, _)| at.elapsed() >= QUEUED_TTL)
        {
            match store.queued_campaigns(now).await {
                Ok(ids) => queued = Some((std::time::Instant::now(), ids)),
                Err(error) => {
                    tracing::warn!(%error, "admission could not list the waiting rooms");
                }
            }
        }
        let Some((_, campaigns)) = &queued else {
            continue;
        };
        if let Err(error) = admit_once(&engine, campaigns, now).await {
            tracing::warn!(%error, "admission round failed; retrying next tick");
        }
    }
}

/// One admission round over `campaigns` (those with a waiting room); how many were admitted.
pub async fn admit_once(
    engine: &Engine,
    campaigns: &[CampaignId],
    now: Millis,
) -> Result<u64, crate::engine::EngineError> {
    let mut total = 0;
    for campaign in campaigns {
        let round = engine.backing().waiting_room().admit(campaign, now).await?;
        let label = m::campaign_label(campaign.as_str());
        metrics::counter!(m::QUEUE_ADMITTED, "campaign" => label.clone()).increment(round.admitted);
        metrics::gauge!(m::QUEUE_WAITING, "campaign" => label.clone()).set(round.waiting as f64);
        metrics::gauge!(m::QUEUE_ROOM, "campaign" => label).set(round.room as f64);
        total += round.admitted;
    }
    Ok(total)
}

/// Keeps the sold-out gate in step with other instances until shutdown.
pub async fn run_gate_refresher(engine: Engine, mut shutdown: Shutdown) {
    let mut ticker = tokio::time::interval(Gate::REFRESH_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.recv() => return,
            _ = ticker.tick() => {}
        }
        if let Err(error) = engine.refresh_gate().await {
            tracing::warn!(%error, "sold-out gate refresh failed");
        }
    }
}

/// Drops per-user rate-limit state of users who went quiet, so it stays bounded.
pub async fn run_limiter_cleanup(
    limiter: std::sync::Arc<governor::DefaultKeyedRateLimiter<String>>,
    mut shutdown: Shutdown,
) {
    let mut ticker = tokio::time::interval(Duration::from_secs(10));
    loop {
        tokio::select! {
            _ = shutdown.recv() => return,
            _ = ticker.tick() => limiter.retain_recent(),
        }
    }
}

/// Every `interval`: the gauges that describe state rather than events — engine and
/// database up, the persister's backlog and lag, units and groups of every live campaign,
/// build info. Campaigns that ended more than [`ENDED_GRACE`] ago are no longer sampled, so
/// their series idle out of `/metrics` ([`crate::metrics::IDLE_TIMEOUT`]).
pub async fn run_metrics_sampler(
    engine: Engine,
    events: std::sync::Arc<dyn EventLog>,
    work: Arc<dyn WorkIndex>,
    store: crate::store::Store,
    interval: Duration,
    mut shutdown: Shutdown,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Process metrics (CPU seconds, resident memory, open and maximum fds, threads, start
    // time) from the metrics-process crate, refreshed every tick.
    let process = metrics_process::Collector::default();
    process.describe();
    loop {
        tokio::select! {
            _ = shutdown.recv() => return,
            _ = ticker.tick() => {}
        }
        process.collect();
        sample_once(&engine, &*events, &*work, &store).await;
    }
}

/// How long after its end a campaign is still sampled.
pub const ENDED_GRACE: Duration = Duration::from_secs(300);

/// One sampling pass: the units and groups of the campaigns with recent activity (the work
/// index's active list, in the bounded set of `metrics::campaign_label`; the rest summed
/// under its `_other` label), never of the whole catalogue.
pub async fn sample_once(
    engine: &Engine,
    events: &dyn EventLog,
    work: &dyn WorkIndex,
    store: &crate::store::Store,
) {
    let now = Millis::now();
    let backend = engine.backing().backend();
    m::touch_counters(backend.name().starts_with("redis"));
    metrics::gauge!(m::BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"), "engine" => backend.name()).set(1.0);
    let engine_up = backend.ping().await.is_ok();
    metrics::gauge!(m::ENGINE_UP).set(if engine_up { 1.0 } else { 0.0 });
    let database_up = store.ping().await.is_ok();
    metrics::gauge!(m::DATABASE_UP).set(if database_up { 1.0 } else { 0.0 });
    if !engine_up {
        return;
    }
    if let Ok(backlog) = events.backlog(PERSISTER).await {
        metrics::gauge!(m::PERSIST_BACKLOG).set(backlog.events as f64);
        metrics::gauge!(m::PERSIST_PENDING).set(backlog.pending as f64);
        let lag_ms = backlog.oldest.map_or(0, |oldest| (now.0 - oldest.0).max(0));
        metrics::gauge!(m::PERSIST_LAG).set(lag_ms as f64 / 1000.0);
    }
    let Ok(active) = work.active().await else {
        return;
    };
    let ids: BTreeSet<CampaignId> = active.campaigns().map(CampaignId::parent).collect();
    let grace_ms = ENDED_GRACE.as_millis() as i64;
    let mut sums: std::collections::BTreeMap<(String, &'static str, &'static str), f64> =
        Default::default();
    for id in ids {
        let Ok(Some(state)) = engine.loaded_campaign(&id).await else {
            continue;
        };
        if state
            .campaign
            .ends_at
            .is_some_and(|ends| ends.0 + grace_ms < now.0)
        {
            continue;
        }
        let campaign = m::campaign_label(id.as_str());
        for (units, value) in [
            ("available", state.available),
            ("held", state.held),
            ("confirmed", state.confirmed),
        ] {
            *sums
                .entry((campaign.clone(), m::CAMPAIGN_UNITS, units))
                .or_default() += value as f64;
        }
        if state.campaign.group.is_some() {
            let groups = state.groups;
            for (status, value) in [
                ("open", groups.open),
                ("formed", groups.formed),
                ("failed", groups.failed),
            ] {
                *sums
                    .entry((campaign.clone(), m::CAMPAIGN_GROUPS, status))
                    .or_default() += value as f64;
            }
        }
    }
    for ((campaign, name, state), value) in sums {
        let label = if name == m::CAMPAIGN_UNITS {
            "state"
        } else {
            "status"
        };
        metrics::gauge!(name, "campaign" => campaign, label => state).set(value);
    }
}

/// How the engine watch runs.
pub struct EngineWatch {
    pub interval: Duration,
    /// Strict durability: an engine that can evict keys stops every decision.
    pub strict: bool,
    pub safety: Arc<crate::engine::safety::Safety>,
}

/// Every `interval`: the engine's memory, evictions and eviction policy per node, as gauges;
/// under strict durability a policy that can evict keys makes the engine unsafe (every
/// decision refused with 503 `engine_unsafe`) until it is fixed. One pair of `INFO` calls per
/// node per round, whatever the catalogue.
pub async fn run_engine_watch(
    memory: Arc<dyn crate::engine::redis::MemoryWatch>,
    watch: EngineWatch,
    mut shutdown: Shutdown,
) {
    let mut ticker = tokio::time::interval(watch.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // What was last said about eviction, so the log speaks when it changes.
    let mut said: Option<Option<String>> = None;
    loop {
        tokio::select! {
            _ = shutdown.recv() => return,
            _ = ticker.tick() => {}
        }
        let nodes = match memory.memory().await {
            Ok(nodes) => nodes,
            // Unknown is not unsafe: the decisions themselves fail while Redis is away.
            Err(error) => {
                tracing::debug!(%error, "could not read the stock engine's memory");
                continue;
            }
        };
        for node in &nodes {
            let label = node.node.clone();
            metrics::gauge!(m::ENGINE_MEMORY_USED, "node" => label.clone())
                .set(node.used_bytes as f64);
            metrics::gauge!(m::ENGINE_MEMORY_MAX, "node" => label.clone())
                .set(node.max_bytes as f64);
            metrics::gauge!(m::ENGINE_EVICTING, "node" => label.clone()).set(if node.evicts() {
                1.0
            } else {
                0.0
            });
            metrics::counter!(m::ENGINE_EVICTED_KEYS, "node" => label).absolute(node.evicted_keys);
        }
        let evicting = evicting(&nodes);
        if said.as_ref() != Some(&evicting) {
            match (&evicting, watch.strict) {
                (Some(nodes), true) => tracing::error!(
                    %nodes,
                    "Redis may now evict keys under memory pressure (maxmemory-policy other than \
                     noeviction): every decision is refused (503 engine_unsafe) until it is set \
                     back to noeviction"
                ),
                (Some(nodes), false) => tracing::warn!(
                    %nodes,
                    "Redis may evict keys under memory pressure (maxmemory-policy other than \
                     noeviction): an evicted key is a broken promise; set maxmemory-policy noeviction"
                ),
                (None, _) if said.is_some() => {
                    tracing::info!("Redis evicts no keys any more (maxmemory-policy noeviction)")
                }
                (None, _) => {}
            }
            said = Some(evicting.clone());
        }
        if watch.strict {
            watch.safety.engine_checked(evicting.map(|nodes| {
                format!("Redis may evict keys (maxmemory-policy other than noeviction): {nodes}")
            }));
        }
    }
}

/// The nodes that may evict keys, as `node: policy, …`; `None` if none may.
pub fn evicting(nodes: &[crate::engine::redis::NodeMemory]) -> Option<String> {
    let evicting: Vec<String> = nodes
        .iter()
        .filter(|node| node.evicts())
        .map(|node| format!("{}: {}", node.node, node.policy))
        .collect();
    (!evicting.is_empty()).then(|| evicting.join(", "))
}
