//! The in-process gate in front of an engine: a node that has seen a campaign sell out answers
//! `sold_out` itself, without a round trip, and campaign config is cached.
//!
//! Correctness rests on one fact: while `available == 0`, no reservation can be created. The
//! gate is armed only with a snapshot of the campaign's idempotency records read *atomically*
//! with `available == 0` ([`GateReads::sold_out_records`]), so a retried request whose first try
//! succeeded still gets its reservation back (a replay), a reused key still gets `KeyReused`,
//! and everything else gets exactly the refusal the engine would give. The gate is disarmed
//! at once on this node when it returns units (cancel, expiry, restock), and on every node by
//! [`Gated::refresh`], which the application runs every [`Gated::REFRESH_INTERVAL`].

use super::{
    Backend, CampaignSnapshot, CancelScope, Engine, EngineError, GroupOutcome, GroupRequest,
    ReserveOutcome, ReserveRequest, StockOutcome, StockRequest, Transition,
};
use crate::domain::{
    Campaign, CampaignId, CampaignKind, CampaignState, CampaignStatus, Group, GroupId, Millis,
    Refusal, Reservation, ReservationId, ReservationStatus, Window,
};
use crate::engine::Extension;
use crate::metrics as m;
use async_trait::async_trait;
use dashmap::DashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;

/// Idempotency records of a campaign, in the order they were created, from position
/// `from` on: what [`GateReads::sold_out_records`] returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordsSince {
    /// How many records the campaign has in all.
    pub total: u64,
    /// Records `from..total`: (scoped key, reservation id, fingerprint).
    pub records: Vec<(String, ReservationId, String)>,
}

/// A campaign's idempotency records as this node knows them: the first `count` records in
/// creation order, scoped key → (reservation id, fingerprint). Records never change once
/// made, so the map is kept across armings and only the new ones are read each time.
#[derive(Default)]
struct KnownRecords {
    map: DashMap<String, (ReservationId, String)>,
    count: AtomicU64,
    /// When the gate last answered for the campaign (ms since [`process_start`]): an armed
    /// gate nobody asks is dropped by [`Gated::refresh`] instead of probed forever.
    last_asked: AtomicU64,
}

/// A fixed point of this process's monotonic clock.
fn process_start() -> Instant {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *START.get_or_init(Instant::now)
}

fn process_ms() -> u64 {
    process_start().elapsed().as_millis() as u64
}

/// What [`GateReads::probe`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub available: u64,
    /// How many idempotency records the campaign has: it grows with every reservation ever
    /// created, so an unchanged count means no reservation was created in between.
    pub idempotency_records: u64,
}

/// The reads the gate needs from an engine, beyond [`Engine`]'s.
#[async_trait]
pub trait GateReads: Send + Sync + 'static {
    /// `None` while the campaign has units (or does not exist). Once it has none: its
    /// idempotency records from position `from` on (creation order), at most `limit`, read
    /// atomically with `available == 0` and the `total`. Records never change once made, so
    /// a reader may collect older pages in earlier calls; the call that returns the tail
    /// proves the whole set. Re-arming after a cancel reads one record, not all of them.
    /// `total < from` means the records were rebuilt: read again from 0.
    async fn sold_out_records(
        &self,
        campaign: &CampaignId,
        from: u64,
        limit: u64,
    ) -> Result<Option<RecordsSince>, EngineError>;

    /// `available` and the idempotency record count, in one cheap read; `None` if the
    /// campaign does not exist.
    async fn probe(&self, campaign: &CampaignId) -> Result<Option<Probe>, EngineError>;
}

/// An engine the gate can stand in front of.
pub trait GatedEngine: Engine + GateReads + super::WaitingRoom {}

impl<T: Engine + GateReads + super::WaitingRoom> GatedEngine for T {}

/// An engine behind the sold-out gate and the campaign config cache.
#[derive(Clone)]
pub struct Gated {
    inner: Arc<dyn GatedEngine>,
    /// Armed gates: campaigns this node knows to be sold out, with how many idempotency
    /// records they had then (all of them are in `records`).
    sold_out: Arc<DashMap<CampaignId, u64>>,
    /// The idempotency records this node has read per campaign, kept across armings.
    records: Arc<DashMap<CampaignId, Arc<KnownRecords>>>,
    /// When this node last armed each campaign: arming is rate-limited to one per
    /// [`Gated::ARM_INTERVAL`], so a cancel/reserve loop cannot make it read in a loop.
    last_arming: Arc<DashMap<CampaignId, Instant>>,
    /// Campaign config by id. Only `stock` ever changes after creation, and nothing here reads
    /// `stock` from the cache, so entries never go stale.
    config: Arc<DashMap<CampaignId, Campaign>>,
    /// Bumped whenever this node returns units. An arming that started before a bump may
    /// hold a snapshot from before the units came back, so it is dropped instead of armed.
    returns: Arc<AtomicU64>,
}

impl Gated {
    /// How often [`Gated::refresh`] should run: the bound on how long another node's returned
    /// units stay invisible here.
    pub const REFRESH_INTERVAL: Duration = Duration::from_millis(50);

    /// An armed gate nobody asked for this long is dropped instead of refreshed.
    pub const IDLE_AFTER: Duration = Duration::from_secs(5);

    /// At most one arming per campaign per this long, on each node.
    pub const ARM_INTERVAL: Duration = Duration::from_millis(100);

    /// Records read per engine call while arming: one call stays far below a millisecond of
    /// Redis time however many records a campaign has (30,000 in one call took 24 ms).
    pub const RECORDS_PAGE: u64 = 1_000;

    pub fn new(inner: Arc<dyn GatedEngine>) -> Self {
        Gated {
            inner,
            sold_out: Arc::default(),
            records: Arc::default(),
            last_arming: Arc::default(),
            config: Arc::default(),
            returns: Arc::default(),
        }
    }

    /// Whether this node has seen the campaign exist (its config is cached).
    pub fn knows(&self, id: &CampaignId) -> bool {
        self.config.contains_key(id)
    }

    /// Whether this node currently answers `sold_out` for the campaign on its own.
    pub fn is_sold_out(&self, id: &CampaignId) -> bool {
        self.sold_out.contains_key(id)
    }

    /// Disarms every gate whose campaign has units again. One cheap read per armed gate.
    pub async fn refresh(&self) -> Result<(), EngineError> {
        let armed: Vec<CampaignId> = self.sold_out.iter().map(|e| e.key().clone()).collect();
        let now = process_ms();
        for id in armed {
            // Nobody asked lately: disarm rather than probe (a sold-out campaign in the
            // catalogue costs nothing; the next attempt arms it again, reading only the
            // records made since).
            let asked = self
                .records
                .get(&id)
                .map_or(0, |r| r.last_asked.load(Ordering::Relaxed));
            if now.saturating_sub(asked) > Self::IDLE_AFTER.as_millis() as u64 {
                self.sold_out.remove(&id);
                continue;
            }
            let records = self.sold_out.get(&id).map(|count| *count);
            let still_sold_out = self.inner.probe(&id).await?.is_some_and(|probe| {
                probe.available == 0 && Some(probe.idempotency_records) == records
            });
            if !still_sold_out {
                self.sold_out.remove(&id);
            }
        }
        Ok(())
    }

    /// `status` and `available` for the availability endpoint, from the gate and cache when
    /// they can answer.
    pub async fn availability(
        &self,
        id: &CampaignId,
        now: Millis,
    ) -> Result<Option<(CampaignStatus, u64)>, EngineError> {
        let Some(campaign) = self.cached(id).await? else {
            return Ok(None);
        };
        let available = if self.sold_out.contains_key(id) {
            0
        } else {
            match self.inner.probe(id).await? {
                Some(probe) => probe.available,
                None => return Ok(None),
            }
        };
        let state = CampaignState {
            campaign,
            available,
            held: 0,
            confirmed: 0,
            groups: Default::default(),
        };
        Ok(Some((state.status(now), available)))
    }

    /// Whether a campaign this node has cached has a waiting room (`None`: not cached);
    /// read in place, for the reserve path.
    pub fn cached_queue(&self, id: &CampaignId) -> Option<bool> {
        self.config.get(id).map(|c| c.queue.is_some())
    }

    /// Whether the campaign has a waiting room (`false` for an unknown one): the cache in
    /// place, else the engine.
    pub async fn queued(&self, id: &CampaignId) -> Result<bool, EngineError> {
        if let Some(queued) = self.cached_queue(id) {
            return Ok(queued);
        }
        Ok(self.config(id).await?.is_some_and(|c| c.queue.is_some()))
    }

    /// A campaign's config: from this node's cache when it has it (only `stock` changes after
    /// creation, so a cached config is current except for `stock`).
    pub async fn config(&self, id: &CampaignId) -> Result<Option<Campaign>, EngineError> {
        self.cached(id).await
    }

    async fn cached(&self, id: &CampaignId) -> Result<Option<Campaign>, EngineError> {
        if let Some(campaign) = self.config.get(id) {
            return Ok(Some(campaign.clone()));
        }
        Ok(self.campaign(id).await?.map(|state| state.campaign))
    }

    /// Arms the gate in the background if the campaign really is sold out (at most once
    /// per [`Gated::ARM_INTERVAL`]).
    fn arm(&self, id: &CampaignId) {
        if self.sold_out.contains_key(id) {
            return;
        }
        let now = Instant::now();
        let recent = self
            .last_arming
            .get(id)
            .is_some_and(|at| now.duration_since(*at) < Self::ARM_INTERVAL);
        if recent {
            return;
        }
        self.last_arming.insert(id.clone(), now);
        let gate = self.clone();
        let id = id.clone();
        let returns_before = self.returns.load(Ordering::SeqCst);
        tokio::spawn(async move {
            match gate.read_records(&id).await {
                Ok(Some(count)) => {
                    if gate.returns.load(Ordering::SeqCst) == returns_before {
                        gate.sold_out.insert(id.clone(), count);
                        // Units returned while inserting? Then the insert must not stand.
                        if gate.returns.load(Ordering::SeqCst) != returns_before {
                            gate.sold_out.remove(&id);
                        }
                    }
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(%error, campaign = %id, "could not arm the sold-out gate")
                }
            }
        });
    }

    /// Brings this node's records of a sold-out campaign up to date, reading only the new
    /// ones; `Some(count)` of records if the campaign is sold out.
    async fn read_records(&self, id: &CampaignId) -> Result<Option<u64>, EngineError> {
        let known = Arc::clone(self.records.entry(id.clone()).or_default().value());
        // Arming follows an attempt the engine refused: that counts as asked.
        known.last_asked.store(process_ms(), Ordering::Relaxed);
        let mut from = known.count.load(Ordering::SeqCst);
        loop {
            let page = self.inner.sold_out_records(id, from, Self::RECORDS_PAGE);
            let Some(since) = page.await? else {
                return Ok(None);
            };
            if since.total < from {
                // The records were rebuilt (Redis lost the campaign): start over.
                known.map.clear();
                known.count.store(0, Ordering::SeqCst);
                from = 0;
                continue;
            }
            let read = since.records.len() as u64;
            for (key, reservation, fingerprint) in since.records {
                known.map.insert(key, (reservation, fingerprint));
            }
            from += read;
            known.count.store(from, Ordering::SeqCst);
            if from >= since.total {
                // This call returned the tail with `available == 0`: the set is whole.
                return Ok(Some(since.total));
            }
        }
    }

    /// Units came back to the campaign through this node: disarm its gate.
    fn units_returned(&self, id: &CampaignId) {
        self.returns.fetch_add(1, Ordering::SeqCst);
        self.sold_out.remove(id);
    }

    /// What the engine would answer a campaign that is sold out, from the records alone.
    async fn answer_sold_out(
        &self,
        request: &ReserveRequest,
        records: &KnownRecords,
    ) -> Result<ReserveOutcome, EngineError> {
        let seen = records
            .map
            .get(request.idempotency_key.as_str())
            .map(|record| record.value().clone());
        if let Some((id, fingerprint)) = seen {
            if *fingerprint != request.fingerprint {
                return Ok(ReserveOutcome::KeyReused);
            }
            return Ok(match self.inner.reservation(&id).await? {
                Some(reservation) => ReserveOutcome::Replayed(Reservation {
                    status: ReservationStatus::Held,
                    group_id: None,
                    ..reservation
                }),
                // It ended and left the engine; the database has it.
                None => ReserveOutcome::ReplayOf(id),
            });
        }
        let refusal = match self
            .config
            .get(&request.campaign_id)
            .map(|c| (c.kind, c.window(request.now)))
        {
            Some((CampaignKind::GroupBuy, _)) => Refusal::WrongCampaignKind,
            Some((_, Window::Before)) => Refusal::NotStarted,
            Some((_, Window::After)) => Refusal::Ended,
            _ => Refusal::SoldOut,
        };
        metrics::counter!(m::SOLD_OUT_SHORT_CIRCUITS).increment(1);
        Ok(ReserveOutcome::Refused(refusal))
    }
}

#[async_trait]
impl Backend for Gated {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn ping(&self) -> Result<(), EngineError> {
        self.inner.ping().await
    }

    async fn dataset(&self) -> Result<String, EngineError> {
        self.inner.dataset().await
    }

    async fn forget_campaign(&self, id: &CampaignId) -> Result<(), EngineError> {
        self.inner.forget_campaign(id).await?;
        self.sold_out.remove(id);
        self.records.remove(id);
        self.config.remove(id);
        Ok(())
    }
}

#[async_trait]
impl Engine for Gated {
    async fn load_campaign(&self, snapshot: CampaignSnapshot<'_>) -> Result<bool, EngineError> {
        let campaign = snapshot.campaign;
        let loaded = self.inner.load_campaign(snapshot).await?;
        if loaded {
            self.units_returned(&campaign.id);
        }
        Ok(loaded)
    }

    async fn load_shards(&self, snapshot: CampaignSnapshot<'_>) -> Result<u64, EngineError> {
        let campaign = snapshot.campaign;
        let loaded = self.inner.load_shards(snapshot).await?;
        if loaded != 0 {
            self.units_returned(&campaign.id);
        }
        Ok(loaded)
    }

    async fn campaign(&self, id: &CampaignId) -> Result<Option<CampaignState>, EngineError> {
        let state = self.inner.campaign(id).await?;
        if let Some(state) = &state {
            self.config.insert(id.clone(), state.campaign.clone());
        }
        Ok(state)
    }

    async fn end_campaign(
        &self,
        id: &CampaignId,
        now: Millis,
    ) -> Result<Option<CampaignState>, EngineError> {
        let state = self.inner.end_campaign(id, now).await?;
        if let Some(state) = &state {
            self.config.insert(id.clone(), state.campaign.clone());
        }
        Ok(state)
    }

    async fn campaign_ids(&self) -> Result<Vec<CampaignId>, EngineError> {
        self.inner.campaign_ids().await
    }

    async fn adjust_stock(&self, request: &StockRequest) -> Result<StockOutcome, EngineError> {
        let outcome = self.inner.adjust_stock(request).await?;
        if let StockOutcome::Adjusted { available, .. } = outcome {
            if available > 0 {
                self.units_returned(&request.campaign_id);
            }
        }
        Ok(outcome)
    }

    async fn reserve(&self, request: &ReserveRequest) -> Result<ReserveOutcome, EngineError> {
        let records = self
            .sold_out
            .contains_key(&request.campaign_id)
            .then(|| {
                self.records
                    .get(&request.campaign_id)
                    .map(|r| Arc::clone(r.value()))
            })
            .flatten();
        if let Some(records) = records {
            records.last_asked.store(process_ms(), Ordering::Relaxed);
            if !self.config.contains_key(&request.campaign_id) {
                self.campaign(&request.campaign_id).await?;
            }
            return self.answer_sold_out(request, &records).await;
        }
        let outcome = self
            .inner
            .reserve(request)
            .instrument(tracing::debug_span!("engine.reserve", campaign = %request.campaign_id))
            .await?;
        match &outcome {
            ReserveOutcome::Refused(Refusal::SoldOut)
            | ReserveOutcome::Reserved { available: 0, .. } => self.arm(&request.campaign_id),
            _ => {}
        }
        Ok(outcome)
    }

    async fn reservation(&self, id: &ReservationId) -> Result<Option<Reservation>, EngineError> {
        self.inner.reservation(id).await
    }

    async fn confirm(&self, id: &ReservationId, now: Millis) -> Result<Transition, EngineError> {
        let outcome = self
            .inner
            .confirm(id, now)
            .instrument(tracing::debug_span!("engine.confirm", reservation = %id))
            .await?;
        if let Transition::NotHeld(r) = &outcome {
            if r.status == ReservationStatus::Expired {
                self.units_returned(&id.campaign_id());
            }
        }
        Ok(outcome)
    }

    async fn extend(
        &self,
        id: &ReservationId,
        seconds: u32,
        now: Millis,
    ) -> Result<Extension, EngineError> {
        let outcome = self
            .inner
            .extend(id, seconds, now)
            .instrument(tracing::debug_span!("engine.extend", reservation = %id))
            .await?;
        // Found past its expiry: it expired on the spot and its units came back.
        if let Extension::NotHeld(r) = &outcome {
            if r.status == ReservationStatus::Expired {
                self.units_returned(&id.campaign_id());
            }
        }
        Ok(outcome)
    }

    async fn cancel(
        &self,
        id: &ReservationId,
        scope: CancelScope,
        now: Millis,
    ) -> Result<Transition, EngineError> {
        let outcome = self
            .inner
            .cancel(id, scope, now)
            .instrument(tracing::debug_span!("engine.cancel", reservation = %id))
            .await?;
        if matches!(outcome, Transition::Done(_) | Transition::NotHeld(_)) {
            self.units_returned(&id.campaign_id());
        }
        Ok(outcome)
    }

    async fn expire_due(
        &self,
        campaign: &CampaignId,
        now: Millis,
        limit: u32,
    ) -> Result<u32, EngineError> {
        let expired = self
            .inner
            .expire_due(campaign, now, limit)
            .instrument(tracing::debug_span!("engine.expire_due", campaign = %campaign))
            .await?;
        if expired > 0 {
            self.units_returned(campaign);
        }
        Ok(expired)
    }

    async fn open_group(&self, request: &GroupRequest) -> Result<GroupOutcome, EngineError> {
        self.inner
            .open_group(request)
            .instrument(tracing::debug_span!("engine.open_group", campaign = %request.campaign_id))
            .await
    }

    async fn join_group(&self, request: &GroupRequest) -> Result<GroupOutcome, EngineError> {
        self.inner
            .join_group(request)
            .instrument(tracing::debug_span!("engine.join_group", group = %request.group_id))
            .await
    }

    async fn group(&self, id: &GroupId) -> Result<Option<Group>, EngineError> {
        self.inner.group(id).await
    }
}

#[async_trait]
impl super::WaitingRoom for Gated {
    async fn join_queue(
        &self,
        request: &super::JoinRequest,
    ) -> Result<super::JoinOutcome, EngineError> {
        self.inner.join_queue(request).await
    }

    async fn ticket(
        &self,
        id: &crate::domain::TicketId,
        now: Millis,
    ) -> Result<Option<crate::domain::Ticket>, EngineError> {
        self.inner.ticket(id, now).await
    }

    async fn admit(
        &self,
        campaign: &CampaignId,
        now: Millis,
    ) -> Result<super::Admission, EngineError> {
        self.inner.admit(campaign, now).await
    }

    async fn claim_pass(
        &self,
        pass: &super::PassUse<'_>,
    ) -> Result<Option<super::PassClaim>, EngineError> {
        self.inner.claim_pass(pass).await
    }

    async fn pass_used(&self, ticket: &crate::domain::TicketId) -> Result<(), EngineError> {
        self.inner.pass_used(ticket).await
    }

    async fn line(
        &self,
        campaign: &CampaignId,
    ) -> Result<Option<crate::domain::Line>, EngineError> {
        self.inner.line(campaign).await
    }
}
