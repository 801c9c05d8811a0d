//! [`Recovering`]: the engine as requests see it. Every decision and read that finds its
//! campaign missing rebuilds it once from the database and tries again; archived campaigns
//! and forgotten reservations are answered from the database; with the embedded engine a
//! change is answered only after its commit.

use crate::domain::{
    Campaign, CampaignId, CampaignState, CampaignStatus, Group, GroupId, Millis, Refusal,
    Reservation, ReservationId,
};
use crate::domain::{Ticket, TicketId};
use crate::engine::{Admission, Extension, JoinOutcome, JoinRequest, WaitingRoom};
use crate::engine::{
    Backend, CampaignSnapshot, CancelScope, Engine, EngineError, EventLog, Gated, GroupOutcome,
    GroupRequest, ReserveOutcome, ReserveRequest, StockOutcome, StockRequest, Transition,
    PERSISTER,
};
use crate::store::Store;
use async_trait::async_trait;
use dashmap::DashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{restore, LossWatch, RecoveryError};
use crate::pipeline::safety::{Safety, Unsafe};

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
    /// The campaigns this instance lost track of, shared with the recovery worker.
    watch: Arc<LossWatch>,
    /// One rebuild per campaign at a time on this instance: the requests that find a lost
    /// campaign together wait for the first one's rebuild instead of each reading it from
    /// the database (and holding a database connection while the engine loads it).
    rebuilding: Arc<DashMap<CampaignId, Arc<tokio::sync::Mutex<()>>>>,
    /// Archived campaigns (they left the engine for good) this instance has looked up.
    archived: Arc<DashMap<CampaignId, Campaign>>,
    /// When set, a change is answered only once the persister committed its events to the
    /// database (the embedded engine keeps nothing on its own across a crash).
    commit: Option<Arc<dyn EventLog>>,
    /// Whether changes can be decided safely just now (see `pipeline::safety`).
    safety: Arc<Safety>,
}

impl Recovering {
    pub fn new(engine: Gated, store: Store, safety: Arc<Safety>) -> Self {
        Recovering {
            engine,
            store,
            unknown: Arc::default(),
            watch: Arc::default(),
            rebuilding: Arc::default(),
            archived: Arc::default(),
            commit: None,
            safety,
        }
    }

    /// Before every change: refuses it while the engine can lose data, or — when answers
    /// wait for the commit — while the database refuses writes (see `pipeline::safety`).
    fn decidable(&self) -> Result<(), EngineError> {
        match self.safety.refusal(self.commit.is_some()) {
            None => Ok(()),
            Some(Unsafe::Engine(why)) => Err(EngineError::Unsafe(why)),
            Some(Unsafe::NotDurable(why)) => Err(EngineError::NotDurable(why)),
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
            // The change is in the log either way; while the database refuses writes the
            // answer says so instead of waiting (a retry with the same key answers it).
            Some(log) if changed => tokio::select! {
                acknowledged = log.acknowledged(PERSISTER, campaign) => acknowledged,
                why = self.safety.not_durable() => Err(EngineError::NotDurable(why)),
            },
            _ => Ok(()),
        }
    }

    /// Whether the campaign has a waiting room (`false` for an unknown one).
    pub async fn queued(&self, id: &CampaignId) -> Result<bool, EngineError> {
        if let Some(queued) = self.engine.cached_queue(id) {
            return Ok(queued);
        }
        Ok(self.config(id).await?.is_some_and(|c| c.queue.is_some()))
    }

    /// A campaign's config (`stock` may be stale): the cache first, else the engine, rebuilding
    /// the campaign if the engine lost it, else the archive.
    pub async fn config(&self, id: &CampaignId) -> Result<Option<Campaign>, EngineError> {
        if let Some(campaign) = self.engine.config(id).await? {
            return Ok(Some(campaign));
        }
        Ok(self.campaign(id).await?.map(|state| state.campaign))
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
        self.decidable()?;
        let snapshot = CampaignSnapshot::fresh(campaign);
        if !self
            .store
            .insert_campaign(campaign, &snapshot.epoch)
            .await?
        {
            return Ok(false);
        }
        self.unknown.remove(&campaign.id);
        self.engine.load_campaign(snapshot).await?;
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
        if found.is_none() && self.archived(id).is_some() {
            return Ok(Some((CampaignStatus::Ended, 0)));
        }
        Ok(found)
    }

    /// Rebuilds the campaign if the engine lacks it and the database has it; `true` if the
    /// engine has it now. The database not answering is `Recovering`: nothing can be decided
    /// about the campaign until it does.
    async fn recover(&self, id: &CampaignId) -> Result<bool, EngineError> {
        if self.archived.contains_key(id) {
            return Ok(false);
        }
        if let Some(at) = self.unknown.get(id).map(|at| *at) {
            if at.elapsed() < UNKNOWN_TTL {
                return Ok(false);
            }
            self.unknown.remove(id);
        }
        let unavailable = |error: crate::store::StoreError| {
            tracing::warn!(%error, campaign = %id, "could not read a missing campaign from the database");
            EngineError::Recovering(error.to_string())
        };
        let turn = Arc::clone(self.rebuilding.entry(id.clone()).or_default().value());
        let restored = {
            let _one_at_a_time = turn.lock().await;
            restore(&self.engine, &self.store, &self.watch, id).await
        };
        drop(turn);
        self.rebuilding
            .remove_if(id, |_, turn| Arc::strong_count(turn) == 1);
        match restored {
            Ok(true) => Ok(true),
            Ok(false) => {
                // Not rebuildable: archived (answered from the database from now on) or
                // unknown (answered from the negative cache for a while). Either way this
                // instance asks the database about it once.
                match self
                    .store
                    .archived_campaign(id)
                    .await
                    .map_err(unavailable)?
                {
                    Some(campaign) => {
                        self.archived.insert(id.clone(), campaign);
                    }
                    None => {
                        if self.unknown.len() >= UNKNOWN_MAX {
                            self.unknown.clear();
                        }
                        self.unknown.insert(id.clone(), Instant::now());
                    }
                }
                Ok(false)
            }
            Err(RecoveryError::Engine(error)) => Err(error),
            Err(RecoveryError::Store(error)) => Err(unavailable(error)),
        }
    }

    /// The campaign if the database archived it (known from [`Recovering::recover`], which
    /// every missing-campaign answer goes through first): answered from the database alone.
    fn archived(&self, id: &CampaignId) -> Option<Campaign> {
        self.archived.get(id).map(|campaign| campaign.clone())
    }

    /// A refusal for a campaign the engine does not know: `instead` if it was archived.
    async fn or_archived(
        &self,
        id: &CampaignId,
        refusal: Refusal,
        missing: Refusal,
        instead: Refusal,
    ) -> Result<Refusal, EngineError> {
        if refusal == missing && self.archived(id).is_some() {
            return Ok(instead);
        }
        Ok(refusal)
    }

    /// Opening or joining a group: recovery when the engine answers `missing`, `archived`
    /// instead of it for a campaign that left the engine, the commit wait for a change.
    async fn group_decision<F, Fut>(
        &self,
        request: &GroupRequest,
        missing: Refusal,
        archived: Refusal,
        call: F,
    ) -> Result<GroupOutcome, EngineError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<GroupOutcome, EngineError>>,
    {
        self.decidable()?;
        let is_missing = |o: &GroupOutcome| *o == GroupOutcome::Refused(missing);
        let mut outcome = self
            .retrying(&request.campaign_id, is_missing, call)
            .await?;
        if let GroupOutcome::Refused(refusal) = outcome {
            let refusal = self
                .or_archived(&request.campaign_id, refusal, missing, archived)
                .await?;
            outcome = GroupOutcome::Refused(refusal);
        }
        self.committed(&request.campaign_id, joined(&outcome))
            .await?;
        Ok(outcome)
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
        if self.archived(&r.campaign_id).is_none() {
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
                index: 0,
            },
            at: now,
            change: crate::domain::Change::Reservation {
                reservation: cancelled.clone(),
                idempotency: None,
            },
        };
        self.store
            .persist(
                &crate::engine::Epochs::one(&event.campaign_id, &epoch),
                std::slice::from_ref(&event),
            )
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

    async fn dataset(&self) -> Result<String, EngineError> {
        self.engine.dataset().await
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

    async fn load_shards(&self, snapshot: CampaignSnapshot<'_>) -> Result<u64, EngineError> {
        self.engine.load_shards(snapshot).await
    }

    /// The database first (it is the source a rebuild reads), then the engine.
    async fn end_campaign(
        &self,
        id: &CampaignId,
        now: Millis,
    ) -> Result<Option<CampaignState>, EngineError> {
        self.decidable()?;
        let known = self
            .store
            .end_campaign(id, now)
            .await
            .map_err(|error| EngineError::Recovering(error.to_string()))?;
        if !known {
            return Ok(None);
        }
        match self
            .retrying(id, Option::is_none, || self.engine.end_campaign(id, now))
            .await?
        {
            Some(state) => Ok(Some(state)),
            // Archived: it ended long ago; the database answers.
            None => self.campaign(id).await,
        }
    }

    async fn campaign(&self, id: &CampaignId) -> Result<Option<CampaignState>, EngineError> {
        let found = self
            .retrying(id, Option::is_none, || self.engine.campaign(id))
            .await?;
        if found.is_some() {
            return Ok(found);
        }
        let Some(campaign) = self.archived(id) else {
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
        self.decidable()?;
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
        self.decidable()?;
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
        // A replay waits too: its original may not be committed yet. (The events are its
        // shard's, for a sharded campaign.)
        match &outcome {
            ReserveOutcome::Reserved { reservation, .. }
            | ReserveOutcome::Replayed(reservation) => {
                self.committed(&reservation.id.shard_campaign(), true)
                    .await?
            }
            _ => {}
        }
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
        self.decidable()?;
        let missing = |t: &Transition| *t == Transition::NotFound;
        let outcome = self
            .retrying(&id.campaign_id(), missing, || self.engine.confirm(id, now))
            .await?;
        let outcome = self
            .or_stored(id, outcome, crate::domain::ReservationStatus::Confirmed)
            .await?;
        self.committed(&id.shard_campaign(), changes(&outcome))
            .await?;
        Ok(outcome)
    }

    async fn extend(
        &self,
        id: &ReservationId,
        seconds: u32,
        now: Millis,
    ) -> Result<Extension, EngineError> {
        self.decidable()?;
        let missing = |e: &Extension| *e == Extension::NotFound;
        let outcome = self
            .retrying(&id.campaign_id(), missing, || {
                self.engine.extend(id, seconds, now)
            })
            .await?;
        // Gone from the engine (ended and forgotten, or archived): the database answers.
        let outcome = match outcome {
            Extension::NotFound => match self.stored(id).await? {
                Some(r) => Extension::NotHeld(r),
                None => Extension::NotFound,
            },
            other => other,
        };
        let changed = matches!(outcome, Extension::Extended(_) | Extension::NotHeld(_));
        self.committed(&id.shard_campaign(), changed).await?;
        Ok(outcome)
    }

    async fn cancel(
        &self,
        id: &ReservationId,
        scope: CancelScope,
        now: Millis,
    ) -> Result<Transition, EngineError> {
        self.decidable()?;
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
        self.committed(&id.shard_campaign(), changes(&outcome))
            .await?;
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
        self.group_decision(request, Refusal::CampaignNotFound, Refusal::Ended, || {
            self.engine.open_group(request)
        })
        .await
    }

    async fn join_group(&self, request: &GroupRequest) -> Result<GroupOutcome, EngineError> {
        self.group_decision(
            request,
            Refusal::GroupNotFound,
            Refusal::GroupClosed,
            || self.engine.join_group(request),
        )
        .await
    }

    async fn group(&self, id: &GroupId) -> Result<Option<Group>, EngineError> {
        self.retrying(&id.campaign_id(), Option::is_none, || self.engine.group(id))
            .await
    }
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

#[async_trait]
impl WaitingRoom for Recovering {
    /// A campaign the engine lost is rebuilt first (its tickets are not: they live in the
    /// engine only); an archived one answers `ended`.
    async fn join_queue(&self, request: &JoinRequest) -> Result<JoinOutcome, EngineError> {
        self.decidable()?;
        let missing = |o: &JoinOutcome| *o == JoinOutcome::Refused(Refusal::CampaignNotFound);
        let answer = self
            .retrying(&request.campaign_id, missing, || {
                self.engine.join_queue(request)
            })
            .await?;
        if missing(&answer) && self.archived(&request.campaign_id).is_some() {
            return Ok(JoinOutcome::Refused(Refusal::Ended));
        }
        Ok(answer)
    }

    async fn ticket(&self, id: &TicketId, now: Millis) -> Result<Option<Ticket>, EngineError> {
        self.engine.ticket(id, now).await
    }

    async fn admit(&self, campaign: &CampaignId, now: Millis) -> Result<Admission, EngineError> {
        self.engine.admit(campaign, now).await
    }

    async fn claim_pass(
        &self,
        pass: &crate::engine::PassUse<'_>,
    ) -> Result<Option<crate::engine::PassClaim>, EngineError> {
        self.engine.claim_pass(pass).await
    }

    async fn pass_used(&self, ticket: &TicketId) -> Result<(), EngineError> {
        self.engine.pass_used(ticket).await
    }

    async fn line(
        &self,
        campaign: &CampaignId,
    ) -> Result<Option<crate::domain::Line>, EngineError> {
        self.engine.line(campaign).await
    }
}
