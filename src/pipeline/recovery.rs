//! Recovery and reconciliation: the database is the durable source of campaigns. A campaign
//! the engine lacks (never loaded, or Redis restarted empty) is rebuilt from it — its config,
//! and its held and confirmed reservations, so `available = stock - units they hold`. The
//! same pass compares engine and database per campaign and exports the drift.
//!
//! [`Recovering`] is the engine as requests see it: every decision and read that finds its
//! campaign missing rebuilds it once from the database and tries again, so no handler runs
//! recovery; creating a campaign writes the database, then the engine.

use crate::domain::{
    Campaign, CampaignId, CampaignState, CampaignStatus, Group, GroupId, Millis, Refusal,
    Reservation, ReservationId,
};
use crate::engine::{
    Backend, CampaignSnapshot, CancelScope, Engine, EngineError, EventLog, Gated, GroupOutcome,
    GroupRequest, ReserveOutcome, ReserveRequest, StockOutcome, StockRequest, Transition,
    PERSISTER,
};
use crate::metrics as m;
use crate::shutdown::Shutdown;
use crate::store::{Store, StoredCounts};
use async_trait::async_trait;
use dashmap::DashMap;
use std::future::Future;
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
        tracing::info!(campaign = %rebuild.campaign.id, reservations = rebuild.reservations.len(), "loaded a campaign into the engine from the database");
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

/// How long an id the database did not know is answered `not found` without asking it
/// again: random ids must not turn into a database query each.
const UNKNOWN_TTL: Duration = Duration::from_secs(2);

/// Unknown ids remembered at most; past this the memory starts over (a flood of random ids
/// costs one query per id per [`UNKNOWN_TTL`] at worst, and bounded memory).
const UNKNOWN_MAX: usize = 100_000;

/// The engine as requests see it: [`Gated`] in front of the stock engine, and behind every
/// decision and read "campaign missing → rebuild once from the database → retry".
#[derive(Clone)]
pub struct Recovering {
    engine: Gated,
    store: Store,
    /// Campaign ids the database did not know, and when it said so.
    unknown: Arc<DashMap<CampaignId, Instant>>,
    /// The engine's dataset as this instance saw it, shared with the recovery worker.
    watch: Arc<LossWatch>,
    /// Archived campaigns (they left the engine for good) this instance has looked up.
    archived: Arc<DashMap<CampaignId, Campaign>>,
    /// When set, a change is answered only once the persister committed its events to the
    /// database (the embedded engine keeps nothing on its own across a crash).
    commit: Option<Arc<dyn EventLog>>,
}

impl Recovering {
    pub fn new(engine: Gated, store: Store) -> Self {
        Recovering {
            engine,
            store,
            unknown: Arc::default(),
            watch: Arc::default(),
            archived: Arc::default(),
            commit: None,
        }
    }

    /// The loss watch the recovery worker must share.
    pub fn watch(&self) -> Arc<LossWatch> {
        Arc::clone(&self.watch)
    }

    /// Answers every change only once `log`'s persister group acknowledged its events,
    /// that is once the database committed them.
    pub fn answering_after_commit(mut self, log: Arc<dyn EventLog>) -> Self {
        self.commit = Some(log);
        self
    }

    /// With [`Recovering::answering_after_commit`]: waits until the campaign's events so far
    /// are committed, when `changed`.
    async fn committed(&self, campaign: &CampaignId, changed: bool) -> Result<(), EngineError> {
        match &self.commit {
            Some(log) if changed => log.acknowledged(PERSISTER, campaign).await,
            _ => Ok(()),
        }
    }

    /// The gate and engine behind the recovery (workers and tests reach it directly).
    pub fn gated(&self) -> &Gated {
        &self.engine
    }

    /// Creates a campaign: the database first — it is the durable source of campaigns, and
    /// the one that decides whether the id is taken — then the engine, where `false` means
    /// recovery loaded it from the database already, which is the same campaign. `false` if
    /// the id was taken.
    pub async fn create_campaign(&self, campaign: &Campaign) -> Result<bool, RecoveryError> {
        let epoch = self.watch.settled_epoch(&self.engine, &self.store).await?;
        if !self.store.insert_campaign(campaign, &epoch).await? {
            return Ok(false);
        }
        self.unknown.remove(&campaign.id);
        self.engine
            .load_campaign(CampaignSnapshot::fresh(campaign))
            .await?;
        Ok(true)
    }

    /// `status` and `available` for the public availability endpoint.
    pub async fn availability(
        &self,
        id: &CampaignId,
        now: Millis,
    ) -> Result<Option<(CampaignStatus, u64)>, EngineError> {
        let found = self
            .retrying(id, Option::is_none, || self.engine.availability(id, now))
            .await?;
        if found.is_none() && self.archived(id).await?.is_some() {
            return Ok(Some((CampaignStatus::Ended, 0)));
        }
        Ok(found)
    }

    /// Rebuilds the campaign if the engine lacks it and the database has it; `true` if the
    /// engine has it now. The database not answering is `Recovering`: nothing can be decided
    /// about the campaign until it does.
    async fn recover(&self, id: &CampaignId) -> Result<bool, EngineError> {
        if let Some(at) = self.unknown.get(id).map(|at| *at) {
            if at.elapsed() < UNKNOWN_TTL {
                return Ok(false);
            }
            self.unknown.remove(id);
        }
        match restore(&self.engine, &self.store, &self.watch, id).await {
            Ok(true) => Ok(true),
            Ok(false) => {
                if self.unknown.len() >= UNKNOWN_MAX {
                    self.unknown.clear();
                }
                self.unknown.insert(id.clone(), Instant::now());
                Ok(false)
            }
            Err(RecoveryError::Engine(error)) => Err(error),
            Err(RecoveryError::Store(error)) => {
                tracing::warn!(%error, campaign = %id, "could not read a missing campaign from the database");
                Err(EngineError::Recovering(error.to_string()))
            }
        }
    }

    /// The campaign if the database archived it: it is answered from the database alone.
    async fn archived(&self, id: &CampaignId) -> Result<Option<Campaign>, EngineError> {
        if let Some(campaign) = self.archived.get(id) {
            return Ok(Some(campaign.clone()));
        }
        let found = self
            .store
            .archived_campaign(id)
            .await
            .map_err(|error| EngineError::Recovering(error.to_string()))?;
        if let Some(campaign) = &found {
            self.archived.insert(id.clone(), campaign.clone());
        }
        Ok(found)
    }

    /// A refusal for a campaign the engine does not know: `instead` if it was archived.
    async fn or_archived(
        &self,
        id: &CampaignId,
        refusal: Refusal,
        missing: Refusal,
        instead: Refusal,
    ) -> Result<Refusal, EngineError> {
        if refusal == missing && self.archived(id).await?.is_some() {
            return Ok(instead);
        }
        Ok(refusal)
    }

    /// A reservation from the database (engines forget ended ones after the retention).
    async fn stored(&self, id: &ReservationId) -> Result<Option<Reservation>, EngineError> {
        self.store
            .reservation(id)
            .await
            .map_err(|error| EngineError::Recovering(error.to_string()))
    }

    /// A confirm or cancel the engine answered `NotFound`: if the database has the
    /// reservation, it ended long ago — `Unchanged` if it is in the asked status, else
    /// `NotHeld`.
    async fn or_stored(
        &self,
        id: &ReservationId,
        outcome: Transition,
        asked: crate::domain::ReservationStatus,
    ) -> Result<Transition, EngineError> {
        if outcome != Transition::NotFound {
            return Ok(outcome);
        }
        Ok(match self.stored(id).await? {
            Some(r) if r.status == asked => Transition::Unchanged(r),
            Some(r) => Transition::NotHeld(r),
            None => Transition::NotFound,
        })
    }

    /// A refund (the store cancelling a confirmed reservation) in a campaign that left the
    /// engine: the change goes to the database directly, as the event the engine would have
    /// made (the campaign sells nothing any more, so no unit is counted anywhere else).
    async fn refund_archived(
        &self,
        r: Reservation,
        now: Millis,
    ) -> Result<Transition, EngineError> {
        if self.archived(&r.campaign_id).await?.is_none() {
            return Ok(Transition::NotHeld(r));
        }
        static SEQ: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);
        let unavailable =
            |error: crate::store::StoreError| EngineError::Recovering(error.to_string());
        let epoch = self
            .store
            .engine_epoch(&r.campaign_id)
            .await
            .map_err(unavailable)?
            .unwrap_or_default();
        let cancelled = Reservation {
            status: crate::domain::ReservationStatus::Cancelled,
            ..r
        };
        let event = crate::domain::Event {
            campaign_id: cancelled.campaign_id.clone(),
            position: crate::domain::StreamPosition {
                ms: now.0,
                seq: SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            },
            at: now,
            change: crate::domain::Change::Reservation {
                reservation: cancelled.clone(),
                idempotency: None,
            },
        };
        self.store
            .persist(&epoch, std::slice::from_ref(&event))
            .await
            .map_err(unavailable)?;
        Ok(Transition::Done(cancelled))
    }

    /// Runs `call`; if its answer says the campaign is missing, rebuilds it once and runs
    /// `call` again.
    async fn retrying<T, F, Fut>(
        &self,
        campaign: &CampaignId,
        missing: impl Fn(&T) -> bool,
        call: F,
    ) -> Result<T, EngineError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, EngineError>>,
    {
        let answer = call().await?;
        if !missing(&answer) || !self.recover(campaign).await? {
            return Ok(answer);
        }
        call().await
    }
}

#[async_trait]
impl Backend for Recovering {
    fn name(&self) -> &'static str {
        self.engine.name()
    }

    async fn ping(&self) -> Result<(), EngineError> {
        self.engine.ping().await
    }

    async fn epoch(&self) -> Result<String, EngineError> {
        self.engine.epoch().await
    }

    async fn forget_campaign(&self, id: &CampaignId) -> Result<(), EngineError> {
        self.engine.forget_campaign(id).await
    }
}

#[async_trait]
impl Engine for Recovering {
    async fn load_campaign(&self, snapshot: CampaignSnapshot<'_>) -> Result<bool, EngineError> {
        self.engine.load_campaign(snapshot).await
    }

    async fn campaign(&self, id: &CampaignId) -> Result<Option<CampaignState>, EngineError> {
        let found = self
            .retrying(id, Option::is_none, || self.engine.campaign(id))
            .await?;
        if found.is_some() {
            return Ok(found);
        }
        let Some(campaign) = self.archived(id).await? else {
            return Ok(None);
        };
        // Archived: its units as the database counts them (no live holds are left).
        let counts = self
            .store
            .counts(&campaign)
            .await
            .map_err(|error| EngineError::Recovering(error.to_string()))?;
        Ok(Some(CampaignState {
            available: counts.stock.saturating_sub(counts.held + counts.confirmed),
            held: counts.held,
            confirmed: counts.confirmed,
            groups: Default::default(),
            campaign,
        }))
    }

    async fn campaign_ids(&self) -> Result<Vec<CampaignId>, EngineError> {
        self.engine.campaign_ids().await
    }

    async fn adjust_stock(&self, request: &StockRequest) -> Result<StockOutcome, EngineError> {
        let id = &request.campaign_id;
        let missing = |o: &StockOutcome| *o == StockOutcome::NotFound;
        let outcome = self
            .retrying(id, missing, || self.engine.adjust_stock(request))
            .await?;
        let changed = matches!(
            outcome,
            StockOutcome::Adjusted { .. } | StockOutcome::Replayed { .. }
        );
        self.committed(id, changed).await?;
        Ok(outcome)
    }

    async fn reserve(&self, request: &ReserveRequest) -> Result<ReserveOutcome, EngineError> {
        let missing = |o: &ReserveOutcome| *o == ReserveOutcome::Refused(Refusal::CampaignNotFound);
        let mut outcome = self
            .retrying(&request.campaign_id, missing, || {
                self.engine.reserve(request)
            })
            .await?;
        if let ReserveOutcome::ReplayOf(id) = &outcome {
            // The first outcome left the engine after the retention: read it back.
            let first = self.stored(id).await?.ok_or_else(|| {
                EngineError::Corrupt(format!("{id} is in an idempotency record but nowhere"))
            })?;
            outcome = ReserveOutcome::Replayed(Reservation {
                status: crate::domain::ReservationStatus::Held,
                group_id: None,
                ..first
            });
        }
        if let ReserveOutcome::Refused(refusal) = outcome {
            let refusal = self
                .or_archived(
                    &request.campaign_id,
                    refusal,
                    Refusal::CampaignNotFound,
                    Refusal::Ended,
                )
                .await?;
            outcome = ReserveOutcome::Refused(refusal);
        }
        // A replay waits too: its original may not be committed yet.
        let changed = matches!(
            outcome,
            ReserveOutcome::Reserved { .. } | ReserveOutcome::Replayed(_)
        );
        self.committed(&request.campaign_id, changed).await?;
        Ok(outcome)
    }

    async fn reservation(&self, id: &ReservationId) -> Result<Option<Reservation>, EngineError> {
        let found = self
            .retrying(&id.campaign_id(), Option::is_none, || {
                self.engine.reservation(id)
            })
            .await?;
        match found {
            Some(reservation) => Ok(Some(reservation)),
            // Ended and forgotten by the engine after the retention: the database has it.
            None => self.stored(id).await,
        }
    }

    async fn confirm(&self, id: &ReservationId, now: Millis) -> Result<Transition, EngineError> {
        let missing = |t: &Transition| *t == Transition::NotFound;
        let outcome = self
            .retrying(&id.campaign_id(), missing, || self.engine.confirm(id, now))
            .await?;
        let outcome = self
            .or_stored(id, outcome, crate::domain::ReservationStatus::Confirmed)
            .await?;
        self.committed(&id.campaign_id(), changes(&outcome)).await?;
        Ok(outcome)
    }

    async fn cancel(
        &self,
        id: &ReservationId,
        scope: CancelScope,
        now: Millis,
    ) -> Result<Transition, EngineError> {
        let missing = |t: &Transition| *t == Transition::NotFound;
        let outcome = self
            .retrying(&id.campaign_id(), missing, || {
                self.engine.cancel(id, scope, now)
            })
            .await?;
        let outcome = self
            .or_stored(id, outcome, crate::domain::ReservationStatus::Cancelled)
            .await?;
        let outcome = match outcome {
            Transition::NotHeld(r)
                if r.status == crate::domain::ReservationStatus::Confirmed
                    && scope == CancelScope::HeldOrConfirmed =>
            {
                self.refund_archived(r, now).await?
            }
            other => other,
        };
        self.committed(&id.campaign_id(), changes(&outcome)).await?;
        Ok(outcome)
    }

    async fn expire_due(
        &self,
        campaign: &CampaignId,
        now: Millis,
        limit: u32,
    ) -> Result<u32, EngineError> {
        self.engine.expire_due(campaign, now, limit).await
    }

    async fn open_group(&self, request: &GroupRequest) -> Result<GroupOutcome, EngineError> {
        let missing = |o: &GroupOutcome| *o == GroupOutcome::Refused(Refusal::CampaignNotFound);
        let mut outcome = self
            .retrying(&request.campaign_id, missing, || {
                self.engine.open_group(request)
            })
            .await?;
        if let GroupOutcome::Refused(refusal) = outcome {
            let refusal = self
                .or_archived(
                    &request.campaign_id,
                    refusal,
                    Refusal::CampaignNotFound,
                    Refusal::Ended,
                )
                .await?;
            outcome = GroupOutcome::Refused(refusal);
        }
        self.committed(&request.campaign_id, joined(&outcome))
            .await?;
        Ok(outcome)
    }

    async fn join_group(&self, request: &GroupRequest) -> Result<GroupOutcome, EngineError> {
        let missing = |o: &GroupOutcome| *o == GroupOutcome::Refused(Refusal::GroupNotFound);
        let mut outcome = self
            .retrying(&request.campaign_id, missing, || {
                self.engine.join_group(request)
            })
            .await?;
        if let GroupOutcome::Refused(refusal) = outcome {
            let refusal = self
                .or_archived(
                    &request.campaign_id,
                    refusal,
                    Refusal::GroupNotFound,
                    Refusal::GroupClosed,
                )
                .await?;
            outcome = GroupOutcome::Refused(refusal);
        }
        self.committed(&request.campaign_id, joined(&outcome))
            .await?;
        Ok(outcome)
    }

    async fn group(&self, id: &GroupId) -> Result<Option<Group>, EngineError> {
        self.retrying(&id.campaign_id(), Option::is_none, || self.engine.group(id))
            .await
    }
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

/// Whether a confirm or cancel answer reports a state the database must hold first (an
/// `Unchanged` answer may repeat a change not committed yet; `NotHeld` may follow an expiry
/// made on the spot).
fn changes(outcome: &Transition) -> bool {
    !matches!(outcome, Transition::NotFound)
}

/// Whether an open or join answer reports a group the database must hold first.
fn joined(outcome: &GroupOutcome) -> bool {
    matches!(outcome, GroupOutcome::Done(_) | GroupOutcome::Replayed(_))
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

/// Every `interval`: rebuild what the engine lost, reconcile, archive ended campaigns.
pub async fn run(
    engine: std::sync::Arc<dyn Engine>,
    store: Store,
    watch: Arc<LossWatch>,
    interval: Duration,
    retention: Duration,
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
    }
}
