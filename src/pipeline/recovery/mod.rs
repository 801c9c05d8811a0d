//! Recovery and reconciliation: the database is the durable source of campaigns. A campaign
//! the engine lacks (never loaded, or Redis restarted empty) is rebuilt from it — its config,
//! and its held and confirmed reservations, so `available = stock - units they hold`. The
//! same pass compares engine and database per campaign and exports the drift.
//!
//! The rebuild itself is the engine's (`engine::recovery`): every operation that finds its
//! campaign missing rebuilds it once and tries again, so no handler runs recovery. This
//! module is the pass that runs beside the requests.
pub use crate::engine::recovery::{restore, restore_all, LossWatch, RecoveryError, LOSS_GRACE};

use crate::domain::{CampaignId, Millis};
use crate::engine::{Engine, WorkIndex};
use crate::metrics as m;
use crate::shutdown::Shutdown;
use crate::store::{Store, StoredCounts};
use std::sync::Arc;
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

/// Refuses an engine that holds another database's campaigns: its dataset is unknown to
/// this database, which served others, and it lists campaigns none of which this database
/// knows. (A dataset alone would refuse a cluster where the node holding its id restarted
/// empty; campaign ids alone, a new engine.) Records the dataset as this database's.
pub async fn check_dataset(engine: &Engine, store: &Store) -> Result<(), anyhow::Error> {
    let dataset = engine.backing().backend().dataset().await?;
    if !store.knows_epoch(&dataset).await? && store.has_epochs().await? {
        let listed = engine.campaign_ids().await?;
        if !listed.is_empty() && !store.knows_any_campaign(&listed).await? {
            anyhow::bail!(
                "the stock engine holds campaigns of another database (its dataset {dataset} \
                 and its campaigns are unknown to this database): refusing to mix them; point \
                 FLASHSALE_REDIS_URL/NAMESPACE and FLASHSALE_DATABASE_URL at a matching pair"
            );
        }
    }
    store.register_epoch(&dataset).await?;
    Ok(())
}

/// Ended campaigns leave the engine entirely: past `ends_at` plus `retention`, with no live
/// hold or open group, engine and database agreeing (every change persisted). The database
/// records the archive first, so nothing rebuilds it; then the engine forgets it. Returns the
/// archived ids.
pub async fn archive_ended(
    engine: &Engine,
    store: &Store,
    retention: Duration,
    now: Millis,
) -> Result<Vec<CampaignId>, RecoveryError> {
    let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
    let mut archived = Vec::new();
    // Only the campaigns the database says ended past the retention (an index on its own
    // columns), never every campaign.
    for campaign in store
        .ended_unarchived(Millis(now.0.saturating_sub(retention_ms)))
        .await?
    {
        if archive_now(engine, store, &campaign).await? == Archived::Now {
            archived.push(campaign.id);
        }
    }
    Ok(archived)
}

/// What [`archive_now`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Archived {
    /// The campaign left the engine now.
    Now,
    /// It was not in the engine (archived before, or never loaded).
    Already,
    /// It still has a live hold or an open group, or a change the database does not have
    /// yet: it stays.
    NotYet,
}

/// An ended campaign leaves the engine now if it can: no live hold or open group, engine and
/// database agreeing. The database records the archive first, so nothing rebuilds it; then
/// the engine forgets it, and the database answers for it from then on.
pub async fn archive_now(
    engine: &Engine,
    store: &Store,
    campaign: &crate::domain::Campaign,
) -> Result<Archived, RecoveryError> {
    let Some(state) = engine.loaded_campaign(&campaign.id).await? else {
        return Ok(Archived::Already);
    };
    if state.held > 0 || state.groups.open > 0 {
        return Ok(Archived::NotYet);
    }
    let database = store.counts(campaign).await?;
    let agree = (state.campaign.stock, state.held, state.confirmed)
        == (database.stock, database.held, database.confirmed);
    if !agree {
        return Ok(Archived::NotYet);
    }
    store.archive(&campaign.id).await?;
    engine.forget_campaign(&campaign.id).await?;
    tracing::info!(campaign = %campaign.id, "an ended campaign left the stock engine");
    Ok(Archived::Now)
}

/// Compares every campaign; exports the drift per campaign and returns the ones that differ.
pub async fn reconcile(engine: &Engine, store: &Store) -> Result<Vec<Drift>, RecoveryError> {
    reconcile_these(engine, store, store.campaigns().await?).await
}

/// Compares the campaigns that changed lately (the work index's active list): what the
/// periodic pass does, so an idle catalogue costs nothing. Unchanged campaigns cannot drift
/// apart (every change announces its campaign first).
pub async fn reconcile_active(
    engine: &Engine,
    work: &dyn WorkIndex,
    store: &Store,
) -> Result<Vec<Drift>, RecoveryError> {
    let ids: std::collections::BTreeSet<CampaignId> = work
        .active()
        .await?
        .campaigns()
        .map(CampaignId::parent)
        .collect();
    let mut campaigns = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(campaign) = store.campaign(&id).await? {
            campaigns.push(campaign);
        }
    }
    reconcile_these(engine, store, campaigns).await
}

async fn reconcile_these(
    engine: &Engine,
    store: &Store,
    campaigns: Vec<crate::domain::Campaign>,
) -> Result<Vec<Drift>, RecoveryError> {
    let mut drifts = Vec::new();
    for campaign in campaigns {
        let database = store.counts(&campaign).await?;
        let Some(state) = engine.loaded_campaign(&campaign.id).await? else {
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
        metrics::gauge!(m::RECONCILE_DRIFT, "campaign" => m::campaign_label(campaign.id.as_str()))
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

/// Files every campaign the engine holds on the work index (after the index was lost, or
/// campaigns kept from before it existed): active if it has events waiting, under its next
/// due time otherwise. One read per campaign, once per incarnation of the engine.
pub async fn file_all(engine: &Engine, work: &dyn WorkIndex) -> Result<usize, RecoveryError> {
    let ids = engine.campaign_ids().await?;
    let now = Millis::now();
    for id in &ids {
        let left = work.leftover(id, now).await?;
        if left.events > 0 {
            work.announce(id).await?;
        } else if let Some(due) = left.next_due {
            work.file(id, due).await?;
        }
    }
    Ok(ids.len())
}

/// Every `interval`: when the engine's incarnation changed (a restart or failover that may
/// have lost data, and this instance's first pass) rebuild what the engine lost and announce
/// every campaign once; then reconcile the campaigns that changed lately, archive ended
/// campaigns, pseudonymise the ones past the retention. Nothing here visits the whole
/// catalogue while the engine keeps its data.
#[allow(clippy::too_many_arguments)] // the pass's parts, each passed once at start
pub async fn run(
    engine: Engine,
    work: std::sync::Arc<dyn WorkIndex>,
    store: Store,
    watch: Arc<LossWatch>,
    interval: Duration,
    retention: Duration,
    personal: PersonalData,
    mut shutdown: Shutdown,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut known: Option<String> = None;
    loop {
        tokio::select! {
            _ = shutdown.recv() => return,
            _ = ticker.tick() => {}
        }
        match work.incarnation().await {
            Ok(now) if known.as_ref() != Some(&now) => {
                // A process's first pass skips what another instance (or this one before a
                // restart) filed already; a process that saw the incarnation change may hold
                // leases on a lost index and changes made under them, so it forgets its
                // leases first and then files every campaign itself.
                let first_pass = known.is_none();
                if first_pass && work.filed().await.ok().flatten().as_ref() == Some(&now) {
                    known = Some(now);
                } else {
                    work.leases().clear();
                    let restored = restore_all(&engine, &store, &watch).await;
                    let filed = file_all(&engine, &*work).await;
                    match (restored, filed) {
                        (Ok(_), Ok(campaigns)) => {
                            tracing::info!(
                                campaigns,
                                "every campaign restored and filed on the work index"
                            );
                            if let Err(error) = work.set_filed(&now).await {
                                tracing::warn!(%error, "could not record the filing");
                            }
                            known = Some(now);
                        }
                        (Err(error), _) | (_, Err(error)) => {
                            tracing::warn!(%error, "recovery pass failed");
                        }
                    }
                }
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "cannot read the engine's incarnation"),
        }
        if let Err(error) = reconcile_active(&engine, &*work, &store).await {
            tracing::warn!(%error, "reconcile pass failed");
        }
        if let Err(error) = archive_ended(&engine, &store, retention, Millis::now()).await {
            tracing::warn!(%error, "archive pass failed");
        }
        if let Err(error) = pseudonymise_past_retention(&store, &personal, Millis::now()).await {
            tracing::warn!(%error, "retention pass failed");
        }
    }
}
