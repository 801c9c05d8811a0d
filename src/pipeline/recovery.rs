//! Recovery and reconciliation: the database is the durable source of campaigns. A campaign
//! the engine lacks (never loaded, or Redis restarted empty) is rebuilt from it — its config,
//! and its held and confirmed reservations, so `available = stock - units they hold`. The
//! same pass compares engine and database per campaign and exports the drift.

use crate::domain::{Campaign, CampaignId};
use crate::engine::Engine;
use crate::metrics as m;
use crate::shutdown::Shutdown;
use crate::store::{Store, StoredCounts};
use std::time::Duration;

/// A campaign whose engine and database counts differ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift {
    pub campaign: CampaignId,
    pub engine: StoredCounts,
    pub database: StoredCounts,
}

impl Drift {
    /// |Δstock| + |Δheld| + |Δconfirmed|.
    pub fn units(&self) -> u64 {
        self.engine.stock.abs_diff(self.database.stock)
            + self.engine.held.abs_diff(self.database.held)
            + self.engine.confirmed.abs_diff(self.database.confirmed)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// Rebuilds one campaign in the engine if the database knows it and the engine does not.
pub async fn restore(
    engine: &dyn Engine,
    store: &Store,
    id: &CampaignId,
) -> Result<bool, RecoveryError> {
    if engine.probe(id).await?.is_some() {
        return Ok(false);
    }
    match store.campaign(id).await? {
        Some(campaign) => restore_from(engine, store, &campaign).await,
        None => Ok(false),
    }
}

/// Rebuilds every campaign the engine lacks; returns the rebuilt ids. A campaign the engine
/// has but does not list (with Redis: its create script ran, the step that adds it to the
/// campaign index did not) goes through the same path, whose restore step is then a no-op
/// that lists it: otherwise the reaper, the persister and the sampler would never visit it.
pub async fn restore_all(
    engine: &dyn Engine,
    store: &Store,
) -> Result<Vec<CampaignId>, RecoveryError> {
    let listed: std::collections::HashSet<CampaignId> =
        engine.campaign_ids().await?.into_iter().collect();
    let mut restored = Vec::new();
    for campaign in store.campaigns().await? {
        let missing = engine.probe(&campaign.id).await?.is_none();
        if (missing || !listed.contains(&campaign.id))
            && restore_from(engine, store, &campaign).await?
        {
            restored.push(campaign.id);
        }
    }
    Ok(restored)
}

/// Loads the campaign's live reservations and groups and restores it (a no-op if it exists
/// by now).
async fn restore_from(
    engine: &dyn Engine,
    store: &Store,
    campaign: &Campaign,
) -> Result<bool, RecoveryError> {
    let reservations = store.live_reservations(&campaign.id).await?;
    let groups = store.groups(&campaign.id).await?;
    let restored = engine
        .restore_campaign(campaign, &reservations, &groups)
        .await?;
    if restored {
        metrics::counter!(m::RECOVERED_CAMPAIGNS).increment(1);
        tracing::warn!(campaign = %campaign.id, reservations = reservations.len(), "rebuilt a campaign the engine had lost");
    }
    Ok(restored)
}

/// Compares every campaign; exports the drift per campaign and returns the ones that differ.
pub async fn reconcile(engine: &dyn Engine, store: &Store) -> Result<Vec<Drift>, RecoveryError> {
    let mut drifts = Vec::new();
    for campaign in store.campaigns().await? {
        let database = store.counts(&campaign).await?;
        let Some(state) = engine.campaign(&campaign.id).await? else {
            continue;
        };
        let drift = Drift {
            campaign: campaign.id.clone(),
            engine: StoredCounts {
                stock: state.campaign.stock,
                held: state.held,
                confirmed: state.confirmed,
            },
            database,
        };
        metrics::gauge!(m::RECONCILE_DRIFT, "campaign" => campaign.id.to_string())
            .set(drift.units() as f64);
        if drift.units() > 0 {
            drifts.push(drift);
        }
    }
    Ok(drifts)
}

/// Every `interval`: rebuild what the engine lost, then reconcile.
pub async fn run(
    engine: std::sync::Arc<dyn Engine>,
    store: Store,
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
        if let Err(error) = restore_all(&*engine, &store).await {
            tracing::warn!(%error, "recovery pass failed");
        }
        if let Err(error) = reconcile(&*engine, &store).await {
            tracing::warn!(%error, "reconcile pass failed");
        }
    }
}
