//! Recovery: the database is the durable source of campaigns. A campaign the backend lacks
//! (never loaded, or a Redis that restarted empty) is rebuilt from it — its config, and its
//! held and confirmed reservations, so `available = stock - units they hold` — by the first
//! operation that finds it missing (it rebuilds once and tries again: [`Engine`]'s
//! `retrying`), and by the recovery pass (`pipeline::recovery`). Archived campaigns and
//! reservations the backend forgot after the retention are answered from the database.

use super::safety::{Safety, Unsafe};
use super::{new_epoch, CampaignSnapshot, Engine, EngineError, EventLog, Transition};
use crate::domain::{Campaign, CampaignId, Refusal, Reservation, ReservationId, ReservationStatus};
use crate::metrics as m;
use crate::store::Store;
use dashmap::DashMap;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A failure of a rebuild: the backend's or the database's.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// How long an id the database did not know is answered `not found` without asking it
/// again: random ids must not turn into a database query each.
const UNKNOWN_TTL: Duration = Duration::from_secs(2);

/// Unknown ids remembered at most; past this the memory starts over (a flood of random ids
/// costs one query per id per [`UNKNOWN_TTL`] at worst, and bounded memory).
const UNKNOWN_MAX: usize = 100_000;

/// What the engine keeps to rebuild from the database and answer from it.
#[derive(Clone)]
pub struct Recovery {
    store: Store,
    /// Campaign ids the database did not know, and when it said so.
    unknown: Arc<DashMap<CampaignId, Instant>>,
    /// The campaigns this instance lost track of, shared with the recovery worker.
    pub(super) watch: Arc<LossWatch>,
    /// One rebuild per campaign at a time on this instance: the requests that find a lost
    /// campaign together wait for the first one's rebuild instead of each reading it from
    /// the database (and holding a database connection while the engine loads it).
    rebuilding: Arc<DashMap<CampaignId, Arc<tokio::sync::Mutex<()>>>>,
    /// Archived campaigns (they left the engine for good) this instance has looked up.
    archived: Arc<DashMap<CampaignId, Campaign>>,
    /// When set, a change is answered only once the persister committed its events to the
    /// database (the embedded engine keeps nothing on its own across a crash).
    pub(super) commit: Option<Arc<dyn EventLog>>,
    /// Whether changes can be decided safely just now (see `engine::safety`).
    safety: Arc<Safety>,
}

impl Recovery {
    pub fn new(store: Store, safety: Arc<Safety>) -> Self {
        Recovery {
            store,
            unknown: Arc::default(),
            watch: Arc::default(),
            rebuilding: Arc::default(),
            archived: Arc::default(),
            commit: None,
            safety,
        }
    }

    /// The database.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Records a new campaign in the database (`false`: the id is taken); it is known from
    /// then on.
    pub(super) async fn insert(
        &self,
        campaign: &Campaign,
        epoch: &str,
    ) -> Result<bool, crate::store::StoreError> {
        let inserted = self.store.insert_campaign(campaign, epoch).await?;
        if inserted {
            self.unknown.remove(&campaign.id);
        }
        Ok(inserted)
    }
}

/// The engine's steps that use the database (each a no-op without one).
impl Engine {
    /// Before every change: refuses it while the backend can lose data, or — when answers
    /// wait for the commit — while the database refuses writes (see `engine::safety`).
    pub(super) fn decidable(&self) -> Result<(), EngineError> {
        let Some(recovery) = &self.recovery else {
            return Ok(());
        };
        match recovery.safety.refusal(recovery.commit.is_some()) {
            None => Ok(()),
            Some(Unsafe::Engine(why)) => Err(EngineError::Unsafe(why)),
            Some(Unsafe::NotDurable(why)) => Err(EngineError::NotDurable(why)),
        }
    }

    /// With [`Engine::answering_after_commit`]: waits until the campaign's events so far are
    /// committed, when `changed`.
    pub(super) async fn committed(
        &self,
        campaign: &CampaignId,
        changed: bool,
    ) -> Result<(), EngineError> {
        let Some(recovery) = &self.recovery else {
            return Ok(());
        };
        match &recovery.commit {
            // The change is in the log either way; while the database refuses writes the
            // answer says so instead of waiting (a retry with the same key answers it).
            Some(log) if changed => tokio::select! {
                acknowledged = log.acknowledged(super::PERSISTER, campaign) => acknowledged,
                why = recovery.safety.not_durable() => Err(EngineError::NotDurable(why)),
            },
            _ => Ok(()),
        }
    }

    /// Runs `call`; if its answer says the campaign is missing, rebuilds it once and runs
    /// `call` again.
    pub(super) async fn retrying<T, F, Fut>(
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

    /// Rebuilds the campaign if the backend lacks it and the database has it; `true` if the
    /// backend has it now. The database not answering is `Recovering`: nothing can be
    /// decided about the campaign until it does.
    async fn recover(&self, id: &CampaignId) -> Result<bool, EngineError> {
        let Some(recovery) = &self.recovery else {
            return Ok(false);
        };
        if recovery.archived.contains_key(id) {
            return Ok(false);
        }
        if let Some(at) = recovery.unknown.get(id).map(|at| *at) {
            if at.elapsed() < UNKNOWN_TTL {
                return Ok(false);
            }
            recovery.unknown.remove(id);
        }
        let unavailable = |error: crate::store::StoreError| {
            tracing::warn!(%error, campaign = %id, "could not read a missing campaign from the database");
            EngineError::Recovering(error.to_string())
        };
        let turn = Arc::clone(recovery.rebuilding.entry(id.clone()).or_default().value());
        let restored = {
            let _one_at_a_time = turn.lock().await;
            restore(self, &recovery.store, &recovery.watch, id).await
        };
        drop(turn);
        recovery
            .rebuilding
            .remove_if(id, |_, turn| Arc::strong_count(turn) == 1);
        match restored {
            Ok(true) => Ok(true),
            Ok(false) => {
                // Not rebuildable: archived (answered from the database from now on) or
                // unknown (answered from the negative cache for a while). Either way this
                // instance asks the database about it once.
                match recovery
                    .store
                    .archived_campaign(id)
                    .await
                    .map_err(unavailable)?
                {
                    Some(campaign) => {
                        recovery.archived.insert(id.clone(), campaign);
                    }
                    None => {
                        if recovery.unknown.len() >= UNKNOWN_MAX {
                            recovery.unknown.clear();
                        }
                        recovery.unknown.insert(id.clone(), Instant::now());
                    }
                }
                Ok(false)
            }
            Err(RecoveryError::Engine(error)) => Err(error),
            Err(RecoveryError::Store(error)) => Err(unavailable(error)),
        }
    }

    /// The campaign if the database archived it (known from a rebuild attempt, which every
    /// missing-campaign answer goes through first): answered from the database alone.
    pub(super) fn archived(&self, id: &CampaignId) -> Option<Campaign> {
        let recovery = self.recovery.as_ref()?;
        recovery.archived.get(id).map(|campaign| campaign.clone())
    }

    /// A refusal for a campaign the backend does not know: `instead` if it was archived.
    pub(super) fn or_archived(
        &self,
        id: &CampaignId,
        refusal: Refusal,
        missing: Refusal,
        instead: Refusal,
    ) -> Refusal {
        if refusal == missing && self.archived(id).is_some() {
            return instead;
        }
        refusal
    }

    /// A reservation from the database (backends forget ended ones after the retention).
    pub(super) async fn stored(
        &self,
        id: &ReservationId,
    ) -> Result<Option<Reservation>, EngineError> {
        let Some(recovery) = &self.recovery else {
            return Ok(None);
        };
        recovery
            .store
            .reservation(id)
            .await
            .map_err(|error| EngineError::Recovering(error.to_string()))
    }

    /// A confirm or cancel the backend answered `NotFound`: if the database has the
    /// reservation, it ended long ago — `Unchanged` if it is in the asked status, else
    /// `NotHeld`.
    pub(super) async fn or_stored(
        &self,
        id: &ReservationId,
        outcome: Transition,
        asked: ReservationStatus,
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
    /// backend: the database records it (`Store::refund_archived`).
    pub(super) async fn refund_archived(
        &self,
        r: Reservation,
        now: crate::domain::Millis,
    ) -> Result<Transition, EngineError> {
        let (Some(recovery), Some(_)) = (&self.recovery, self.archived(&r.campaign_id)) else {
            return Ok(Transition::NotHeld(r));
        };
        let cancelled = recovery
            .store
            .refund_archived(r, now)
            .await
            .map_err(|error| EngineError::Recovering(error.to_string()))?;
        Ok(Transition::Done(cancelled))
    }
}

/// How long after noticing that the engine lost a campaign it had loaded no rebuild of it
/// starts: the persisters (in every instance) write what they had already read of the lost
/// load first, so the rebuild counts it. Stragglers later than this are fenced out by the
/// database (set aside, never applied), so they can cost a 201, never a unit.
pub const LOSS_GRACE: Duration = Duration::from_secs(2);

/// Watches, on this instance, for campaigns the engine lost (a Redis, or in a cluster one
/// node, that restarted empty): their rebuilds wait out [`LOSS_GRACE`].
pub struct LossWatch {
    /// When this instance first found each lost campaign missing.
    missing: std::sync::Mutex<HashMap<CampaignId, Instant>>,
    grace: Duration,
}

impl Default for LossWatch {
    fn default() -> Self {
        LossWatch {
            missing: Default::default(),
            grace: LOSS_GRACE,
        }
    }
}

impl LossWatch {
    /// A watch that rebuilds at once: at start, where what the engine lacks was lost before
    /// this instance ran (the embedded engine: with the process that held it, whose
    /// persister wrote what it had before it stopped).
    pub fn immediate() -> Self {
        LossWatch {
            missing: Default::default(),
            grace: Duration::ZERO,
        }
    }

    /// `Recovering` while the engine's loss of the campaign is younger than [`LOSS_GRACE`]
    /// (it is a loss if the database recorded a load of it).
    async fn settled(&self, store: &Store, id: &CampaignId) -> Result<(), RecoveryError> {
        if self.grace.is_zero() || !store.loaded(id).await? {
            return Ok(());
        }
        let noticed = *self
            .missing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.clone())
            .or_insert_with(|| {
                tracing::error!(campaign = %id, "the stock engine lost a campaign; rebuilding it from the database after the persisters flush");
                metrics::counter!(m::ENGINE_DATA_LOSSES).increment(1);
                Instant::now()
            });
        let elapsed = noticed.elapsed();
        if elapsed < self.grace {
            return Err(RecoveryError::Engine(EngineError::Recovering(format!(
                "the engine lost the campaign {} ms ago; rebuilding after the persisters flush",
                elapsed.as_millis()
            ))));
        }
        Ok(())
    }

    fn found(&self, id: &CampaignId) {
        self.missing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }
}

/// Rebuilds one campaign in the engine if the database knows it and the engine does not.
/// `true` if the engine has the campaign afterwards (rebuilt here, by another caller in the
/// meantime, or there all along).
pub async fn restore(
    engine: &Engine,
    store: &Store,
    watch: &LossWatch,
    id: &CampaignId,
) -> Result<bool, RecoveryError> {
    if engine.loaded_campaign(id).await?.is_some() {
        return Ok(true);
    }
    Ok(rebuild(engine, store, watch, id, true).await?.is_some())
}

/// Rebuilds every campaign the engine lacks; returns the rebuilt ids. A campaign the engine
/// has but does not list (with Redis: its load script ran, the step that adds it to the
/// campaign index did not) goes through the same path, whose load step is then a no-op that
/// lists it: otherwise the reaper, the persister and the sampler would never visit it.
pub async fn restore_all(
    engine: &Engine,
    store: &Store,
    watch: &LossWatch,
) -> Result<Vec<CampaignId>, RecoveryError> {
    let listed: std::collections::HashSet<CampaignId> =
        engine.campaign_ids().await?.into_iter().collect();
    let mut restored = Vec::new();
    for campaign in store.campaigns().await? {
        let absent = engine.loaded_campaign(&campaign.id).await?.is_none();
        if listed.contains(&campaign.id) && !absent {
            continue;
        }
        if rebuild(engine, store, watch, &campaign.id, absent).await? == Some(true) {
            restored.push(campaign.id);
        }
    }
    Ok(restored)
}

/// Loads what the database holds of a campaign under a new load epoch, after the loss grace
/// if the engine lost it (`absent`). The database keeps the new epoch only if this load is
/// the one the engine took (see [`Rebuilding`](crate::store::Rebuilding)): two instances
/// rebuilding at once never leave the engine under one epoch and the database under another.
/// `Some(true)` if this call loaded it, `Some(false)` if the engine had it (the load was a
/// no-op that listed it), `None` if the database has no such campaign (or archived it).
async fn rebuild(
    engine: &Engine,
    store: &Store,
    watch: &LossWatch,
    id: &CampaignId,
    absent: bool,
) -> Result<Option<bool>, RecoveryError> {
    if absent {
        watch.settled(store, id).await?;
    }
    let Some(rebuilding) = store.rebuild(id, &new_epoch()).await? else {
        return Ok(None);
    };
    let rebuild = &rebuilding.rebuild;
    let loaded = engine
        .load(CampaignSnapshot {
            campaign: &rebuild.campaign,
            reservations: &rebuild.reservations,
            groups: &rebuild.groups,
            epoch: rebuild.epoch.clone(),
            total: None,
        })
        .await;
    match loaded {
        Ok(shards) if shards != 0 => {
            let reservations = rebuild.reservations.len();
            rebuilding.commit(shards).await?;
            watch.found(id);
            metrics::counter!(m::RECOVERED_CAMPAIGNS).increment(1);
            tracing::debug!(campaign = %id, reservations, "loaded a campaign into the engine from the database");
            Ok(Some(true))
        }
        Ok(_) => {
            rebuilding.abandon().await?;
            watch.found(id);
            Ok(Some(false))
        }
        Err(error) => {
            // The load may have happened (its answer lost): keep its epoch. If it did not, the
            // campaign is still missing and the next rebuild starts from there. (A sharded
            // campaign's error means no shard loaded: see `Engine::load`.)
            if rebuild.campaign.shards > 1 {
                rebuilding.abandon().await?;
            } else {
                rebuilding.commit(1).await?;
            }
            Err(error.into())
        }
    }
}

/// After a Redis failover, before the new primary takes a request (Sentinel) or before the
/// slots replicas took over take a script (Cluster): the campaigns it lacks changes of —
/// changes the database already has — are removed from it and rebuilt from the database on
/// first use (see [`fence_behind`](super::redis::primary::fence_behind)).
pub fn fence_after_failover(backing: &super::Backing, store: &Store, namespace: &str) {
    let (store, namespace) = (store.clone(), namespace.to_owned());
    match backing {
        super::Backing::Sentinel(redis) => redis.fence_failovers(Arc::new(move |connection| {
            Box::pin(fence(store.clone(), namespace.clone(), connection, None))
        })),
        super::Backing::Cluster(redis) => {
            redis.fence_failovers(Arc::new(move |connection, slots| {
                Box::pin(fence(
                    store.clone(),
                    namespace.clone(),
                    connection,
                    Some(slots),
                ))
            }))
        }
        super::Backing::Memory(_) | super::Backing::Redis(_) => {}
    }
}

/// One fence after a failover: what the database persisted, against the promoted data
/// (on a cluster, in `slots` only).
async fn fence<C: super::redis::Connection>(
    store: Store,
    namespace: String,
    connection: C,
    slots: Option<Vec<(u16, u16)>>,
) -> Result<(), String> {
    let persisted = store
        .persisted_positions()
        .await
        .map_err(|e| e.to_string())?;
    super::redis::primary::fence_behind(connection, &namespace, &persisted, slots.as_deref())
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}
