//! Background workers the application owns: the reaper (expired holds return their units),
//! the sold-out gate refresher and the rate-limiter cleanup. The first two are safe to run on
//! every instance at once: each step is one atomic engine decision.

use crate::domain::Millis;
use crate::engine::{Engine, Gated};
use crate::metrics as m;
use crate::shutdown::Shutdown;
use std::time::Duration;

/// Holds expired per campaign per engine call, so one call stays short.
const BATCH: u32 = 500;

/// Expires due holds of every campaign, every `interval`, until shutdown.
pub async fn run_reaper(engine: Gated, interval: Duration, mut shutdown: Shutdown) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.recv() => return,
            _ = ticker.tick() => {}
        }
        if let Err(error) = reap_once(&engine, Millis::now()).await {
            metrics::counter!(m::REAPER_ERRORS).increment(1);
            tracing::warn!(%error, "reaper pass failed; retrying next tick");
        }
    }
}

/// One pass: every due hold of every campaign, as of `now`.
pub async fn reap_once(engine: &Gated, now: Millis) -> Result<u64, crate::engine::EngineError> {
    let mut total = 0;
    for campaign in engine.campaign_ids().await? {
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

/// Keeps the sold-out gate in step with other instances until shutdown.
pub async fn run_gate_refresher(engine: Gated, mut shutdown: Shutdown) {
    let mut ticker = tokio::time::interval(Gated::REFRESH_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.recv() => return,
            _ = ticker.tick() => {}
        }
        if let Err(error) = engine.refresh().await {
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
