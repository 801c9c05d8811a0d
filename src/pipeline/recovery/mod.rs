//! Recovery and reconciliation: the database is the durable source of campaigns. A campaign
//! the engine lacks (never loaded, or Redis restarted empty) is rebuilt from it — its config,
//! and its held and confirmed reservations, so `available = stock - units they hold`. The
//! same pass compares engine and database per campaign and exports the drift.
//!
//! [`Recovering`] is the engine as requests see it: every decision and read that finds its
//! campaign missing rebuilds it once from the database and tries again, so no handler runs
//! recovery; creating a campaign writes the database, then the engine.
mod recovering;

pub use recovering::Recovering;

use crate::domain::{CampaignId, Millis};
use crate::engine::{CampaignSnapshot, Engine, EngineError};
use crate::metrics as m;
use crate::shutdown::Shutdown;
use crate::store::{Store, StoredCounts};
use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// How long after noticing that the engine lost its data (a new dataset epoch) no campaign
/// is rebuilt: the persisters (in every instance) write what they had already read from the
/// lost dataset first, so the rebuild counts it. Stragglers later than this are fenced out by
/// the database (set aside, never applied), so they can cost a 201, never a unit.
pub const LOSS_GRACE: Duration = Duration::from_secs(2);

/// Watches the engine's dataset epoch, on this instance: after a loss, rebuilds wait out
/// [`LOSS_GRACE`].
#[derive(Default)]
pub struct LossWatch {
    state: std::sync::Mutex<WatchState>,
}

#[derive(Default)]
struct WatchState {
    /// The dataset this instance last saw.
    known: Option<String>,
    /// When it saw the dataset change.
    lost_at: Option<Instant>,
}

impl LossWatch {
    /// The engine's current dataset, once rebuilding under it is safe; `Recovering` while a
    /// loss is younger than [`LOSS_GRACE`]. A new dataset is recorded in the database.
    pub async fn settled_epoch(
        &self,
        engine: &dyn Engine,
        store: &Store,
    ) -> Result<String, RecoveryError> {
        let current = engine.epoch().await?;
        let changed = {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let changed = state.known.as_deref() != Some(current.as_str());
            if changed {
                if let Some(previous) = state.known.replace(current.clone()) {
                    state.lost_at = Some(Instant::now());
                    tracing::error!(previous, current, "the stock engine lost its data; rebuilding campaigns from the database after the persisters flush");
                    metrics::counter!(m::ENGINE_DATA_LOSSES).increment(1);
                }
            }
            changed
        };
        if changed {
            store.register_epoch(&current).await?;
        }
        let waiting = {
            let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            state
                .lost_at
                .map(|at| at.elapsed())
                .filter(|e| *e < LOSS_GRACE)
        };
        if let Some(elapsed) = waiting {
            return Err(RecoveryError::Engine(EngineError::Recovering(format!(
                "the engine lost its data {} ms ago; rebuilding after the persisters flush",
                elapsed.as_millis()
            ))));
        }
        Ok(current)
    }
}

/// Rebuilds one campaign in the engine if the database knows it and the engine does not.
/// `true` if the engine has the campaign afterwards (rebuilt here, by another caller in the
/// meantime, or there all along).
pub async fn restore(
    engine: &dyn Engine,
    store: &Store,
    watch: &LossWatch,
    id: &CampaignId,
) -> Result<bool, RecoveryError> {
    if engine.campaign(id).await?.is_some() {
        return Ok(true);
    }
    let epoch = watch.settled_epoch(engine, store).await?;
    match store.rebuild(id, &epoch).await? {
        Some(rebuild) => {
            load(engine, &rebuild).await?;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// Rebuilds every campaign the engine lacks; returns the rebuilt ids. A campaign the engine
/// has but does not list (with Redis: its load script ran, the step that adds it to the
/// campaign index did not) goes through the same path, whose load step is then a no-op that
/// lists it: otherwise the reaper, the persister and the sampler would never visit it.
pub async fn restore_all(
    engine: &dyn Engine,
    store: &Store,
    watch: &LossWatch,
) -> Result<Vec<CampaignId>, RecoveryError> {
    let listed: std::collections::HashSet<CampaignId> =
        engine.campaign_ids().await?.into_iter().collect();
    let mut restored = Vec::new();
    for campaign in store.campaigns().await? {
        let missing =
            !listed.contains(&campaign.id) || engine.campaign(&campaign.id).await?.is_none();
        if !missing {
            continue;
        }
        let epoch = watch.settled_epoch(engine, store).await?;
        if let Some(rebuild) = store.rebuild(&campaign.id, &epoch).await? {
            if load(engine, &rebuild).await? {
                restored.push(campaign.id);
            }
        }
    }
    Ok(restored)
}

/// Loads what the database holds of a campaign (a no-op if the engine has it by now).
async fn load(engine: &dyn Engine, rebuild: &crate::store::Rebuild) -> Result<bool, RecoveryError> {
    let restored = engine
        .load_campaign(CampaignSnapshot {
            campaign: &rebuild.campaign,
            reservations: &rebuild.reservations,
            groups: &rebuild.groups,
        })
        .await?;
    if restored {
        metrics::counter!(m::RECOVERED_CAMPAIGNS).increment(1);
        tracing::debug!(campaign = %rebuild.campaign.id, reservations = rebuild.reservations.len(), "loaded a campaign into the engine from the database");
    }
    Ok(restored)
}

/// Refuses an engine whose data belongs to another database: it holds campaigns under a
/// dataset this database never served (and this database has served some). Otherwise
/// records the dataset as this database's.
pub async fn check_dataset(engine: &dyn Engine, store: &Store) -> Result<(), anyhow::Error> {
    let epoch = engine.epoch().await?;
    if !store.knows_epoch(&epoch).await?
        && !engine.campaign_ids().await?.is_empty()
        && store.has_epochs().await?
    {
        anyhow::bail!(
            "the stock engine holds campaigns of another database (its dataset {epoch} is unknown \
             to this database): refusing to mix them; point FLASHSALE_REDIS_URL/NAMESPACE and \
             FLASHSALE_DATABASE_URL at a matching pair"
        );
    }
    store.register_epoch(&epoch).await?;
    Ok(())
}

/// Ended campaigns leave the engine entirely: past `ends_at` plus `retention`, with no live
/// hold or open group, engine and database agreeing (every change persisted). The database
/// records the archive first, so nothing rebuilds it; then the engine forgets it. Returns the
/// archived ids.
pub async fn archive_ended(
    engine: &dyn Engine,
    store: &Store,
    retention: Duration,
    now: Millis,
) -> Result<Vec<CampaignId>, RecoveryError> {
    let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
    let mut archived = Vec::new();
    for campaign in store.campaigns().await? {
        let over = campaign
            .ends_at
            .is_some_and(|ends| ends.0.saturating_add(retention_ms) <= now.0);
        if !over {
            continue;
        }
        let Some(state) = engine.campaign(&campaign.id).await? else {
            continue;
        };
        if state.held > 0 || state.groups.open > 0 {
            continue;
        }
        let database = store.counts(&campaign).await?;
        let agree = (state.campaign.stock, state.held, state.confirmed)
            == (database.stock, database.held, database.confirmed);
        if !agree {
            continue;
        }
        store.archive(&campaign.id).await?;
        engine.forget_campaign(&campaign.id).await?;
        tracing::info!(campaign = %campaign.id, "an ended campaign left the stock engine");
        archived.push(campaign.id);
    }
    Ok(archived)
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

/// How long user ids stay, and the key of the hash that replaces them.
#[derive(Debug, Clone)]
pub struct PersonalData {
    pub retention: Duration,
    pub key: Option<String>,
}

/// Replaces the user ids of every archived campaign that ended more than the retention ago
/// by their keyed hash (one campaign per transaction). Returns the campaigns done.
pub async fn pseudonymise_past_retention(
    store: &Store,
    personal: &PersonalData,
    now: Millis,
) -> Result<Vec<String>, RecoveryError> {
    let retention_ms = i64::try_from(personal.retention.as_millis()).unwrap_or(i64::MAX);
    let due = store
        .campaigns_past_retention(Millis(now.0.saturating_sub(retention_ms)))
        .await?;
    if due.is_empty() {
        return Ok(due);
    }
    let key = store.pseudonym_key(personal.key.as_deref()).await?;
    for campaign in &due {
        let done = store.pseudonymise_campaign(campaign, &key, now).await?;
        tracing::info!(
            %campaign,
            reservations = done.reservations,
            events = done.events,
            "user ids past the retention replaced by pseudonyms"
        );
    }
    Ok(due)
}

/// Every `interval`: rebuild what the engine lost, reconcile, archive ended campaigns,
/// pseudonymise the ones past the retention.
pub async fn run(
    engine: std::sync::Arc<dyn Engine>,
    store: Store,
    watch: Arc<LossWatch>,
    interval: Duration,
    retention: Duration,
    personal: PersonalData,
    mut shutdown: Shutdown,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.recv() => return,
            _ = ticker.tick() => {}
        }
        if let Err(error) = restore_all(&*engine, &store, &watch).await {
            tracing::warn!(%error, "recovery pass failed");
        }
        if let Err(error) = reconcile(&*engine, &store).await {
            tracing::warn!(%error, "reconcile pass failed");
        }
        if let Err(error) = archive_ended(&*engine, &store, retention, Millis::now()).await {
            tracing::warn!(%error, "archive pass failed");
        }
        if let Err(error) = pseudonymise_past_retention(&store, &personal, Millis::now()).await {
            tracing::warn!(%error, "retention pass failed");
        }
    }
}
