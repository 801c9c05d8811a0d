//! The in-process gate in front of an engine: a node that has seen a campaign sell out answers
//! `sold_out` itself, without a round trip, and campaign config is cached.
//!
//! Correctness rests on one fact: while `available == 0`, no reservation can be created. The
//! gate is armed only with a snapshot of the campaign's idempotency records read *atomically*
//! with `available == 0` ([`Reads::sold_out_records`](super::Reads::sold_out_records)), so a retried request whose first try
//! succeeded still gets its reservation back (a replay), a reused key still gets `KeyReused`,
//! and everything else gets exactly the refusal the engine would give. The gate is disarmed
//! at once on this node when it returns units (cancel, expiry, restock), and on every node by
//! [`Engine::refresh_gate`], which the application runs every [`Gate::REFRESH_INTERVAL`].

use super::{Engine, EngineError, ReserveOutcome, ReserveRequest};
use crate::domain::{
    Campaign, CampaignId, CampaignKind, CampaignState, CampaignStatus, Millis, Refusal,
    Reservation, ReservationId, ReservationStatus, Window,
};
use crate::metrics as m;
use dashmap::DashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A campaign's idempotency records as this node knows them: the first `count` records in
/// creation order, scoped key → (reservation id, fingerprint). Records never change once
/// made, so the map is kept across armings and only the new ones are read each time.
#[derive(Default)]
struct KnownRecords {
    map: DashMap<String, (ReservationId, String)>,
    count: AtomicU64,
    /// When the gate last answered for the campaign (ms since [`process_start`]): an armed
    /// gate nobody asks is dropped by [`Engine::refresh_gate`] instead of probed forever.
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

/// The gate's state on this node.
#[derive(Clone, Default)]
pub struct Gate {
    /// Armed gates: campaigns this node knows to be sold out, with how many idempotency
    /// records they had then (all of them are in `records`).
    sold_out: Arc<DashMap<CampaignId, u64>>,
    /// The idempotency records this node has read per campaign, kept across armings.
    records: Arc<DashMap<CampaignId, Arc<KnownRecords>>>,
    /// When this node last armed each campaign: arming is rate-limited to one per
    /// [`Gate::ARM_INTERVAL`], so a cancel/reserve loop cannot make it read in a loop.
    last_arming: Arc<DashMap<CampaignId, Instant>>,
    /// Campaign config by id. Only `stock` ever changes after creation, and nothing here reads
    /// `stock` from the cache, so entries never go stale.
    config: Arc<DashMap<CampaignId, Campaign>>,
    /// Bumped whenever this node returns units. An arming that started before a bump may
    /// hold a snapshot from before the units came back, so it is dropped instead of armed.
    returns: Arc<AtomicU64>,
}

impl Gate {
    /// How often [`Engine::refresh_gate`] should run: the bound on how long another node's
    /// returned units stay invisible here.
    pub const REFRESH_INTERVAL: Duration = Duration::from_millis(50);

    /// An armed gate nobody asked for this long is dropped instead of refreshed.
    pub const IDLE_AFTER: Duration = Duration::from_secs(5);

    /// At most one arming per campaign per this long, on each node.
    pub const ARM_INTERVAL: Duration = Duration::from_millis(100);

    /// Records read per engine call while arming: one call stays far below a millisecond of
    /// Redis time however many records a campaign has (30,000 in one call took 24 ms).
    pub const RECORDS_PAGE: u64 = 1_000;

    /// Whether this node has seen the campaign exist (its config is cached).
    pub fn knows(&self, id: &CampaignId) -> bool {
        self.config.contains_key(id)
    }

    /// Whether this node currently answers `sold_out` for the campaign on its own.
    pub fn is_sold_out(&self, id: &CampaignId) -> bool {
        self.sold_out.contains_key(id)
    }

    /// A cached campaign config.
    pub fn cached(&self, id: &CampaignId) -> Option<Campaign> {
        self.config.get(id).map(|c| c.clone())
    }

    /// Whether a campaign this node has cached has a waiting room (`None`: not cached);
    /// read in place, for the reserve path.
    pub fn cached_queue(&self, id: &CampaignId) -> Option<bool> {
        self.config.get(id).map(|c| c.queue.is_some())
    }

    /// Keeps a campaign's config.
    pub fn remember(&self, campaign: &Campaign) {
        self.config.insert(campaign.id.clone(), campaign.clone());
    }

    /// Forgets everything about a campaign that left the engine.
    pub fn forget(&self, id: &CampaignId) {
        self.sold_out.remove(id);
        self.records.remove(id);
        self.config.remove(id);
    }

    /// Units came back to the campaign through this node: disarm its gate.
    pub fn units_returned(&self, id: &CampaignId) {
        self.returns.fetch_add(1, Ordering::SeqCst);
        self.sold_out.remove(id);
    }

    /// The records of an armed gate, marked as asked.
    fn armed(&self, id: &CampaignId) -> Option<Arc<KnownRecords>> {
        if !self.sold_out.contains_key(id) {
            return None;
        }
        let records = self.records.get(id).map(|r| Arc::clone(r.value()))?;
        records.last_asked.store(process_ms(), Ordering::Relaxed);
        Some(records)
    }
}

/// The engine's steps that use the gate.
impl Engine {
    /// Units came back to the campaign through this node: its gate (if any) disarms.
    pub(super) fn units_returned(&self, id: &CampaignId) {
        if let Some(gate) = &self.gate {
            gate.units_returned(id);
        }
    }

    /// Keeps a campaign's config in the gate's cache, where there is a gate.
    pub(super) fn remember_config(&self, campaign: &Campaign) {
        if let Some(gate) = &self.gate {
            gate.remember(campaign);
        }
    }

    /// What the gate answers for an attempt on a campaign it knows to be sold out: exactly
    /// what the backend would (`None`: ask the backend).
    pub(super) async fn gate_answer(
        &self,
        request: &ReserveRequest,
    ) -> Result<Option<ReserveOutcome>, EngineError> {
        let Some(gate) = &self.gate else {
            return Ok(None);
        };
        let Some(records) = gate.armed(&request.campaign_id) else {
            return Ok(None);
        };
        if !gate.knows(&request.campaign_id) {
            self.loaded_campaign(&request.campaign_id).await?;
        }
        self.answer_sold_out(gate, request, &records)
            .await
            .map(Some)
    }

    /// After the backend answered an attempt: arm the gate if the campaign just sold out.
    pub(super) fn gate_saw(&self, request: &ReserveRequest, outcome: &ReserveOutcome) {
        match outcome {
            ReserveOutcome::Refused(Refusal::SoldOut)
            | ReserveOutcome::Reserved { available: 0, .. } => self.arm(&request.campaign_id),
            _ => {}
        }
    }

    /// Disarms every gate whose campaign has units again. One cheap read per armed gate.
    pub async fn refresh_gate(&self) -> Result<(), EngineError> {
        let Some(gate) = &self.gate else {
            return Ok(());
        };
        let armed: Vec<CampaignId> = gate.sold_out.iter().map(|e| e.key().clone()).collect();
        let now = process_ms();
        for id in armed {
            // Nobody asked lately: disarm rather than probe (a sold-out campaign in the
            // catalogue costs nothing; the next attempt arms it again, reading only the
            // records made since).
            let asked = gate
                .records
                .get(&id)
                .map_or(0, |r| r.last_asked.load(Ordering::Relaxed));
            if now.saturating_sub(asked) > Gate::IDLE_AFTER.as_millis() as u64 {
                gate.sold_out.remove(&id);
                continue;
            }
            let records = gate.sold_out.get(&id).map(|count| *count);
            let still_sold_out = self.probe(&id).await?.is_some_and(|probe| {
                probe.available == 0 && Some(probe.idempotency_records) == records
            });
            if !still_sold_out {
                gate.sold_out.remove(&id);
            }
        }
        Ok(())
    }

    /// `status` and `available` of a campaign the backend holds, from the gate and cache
    /// when they can answer.
    pub(super) async fn availability_here(
        &self,
        id: &CampaignId,
        now: Millis,
    ) -> Result<Option<(CampaignStatus, u64)>, EngineError> {
        let Some(campaign) = self.cached_config(id).await? else {
            return Ok(None);
        };
        let armed = self.gate.as_ref().is_some_and(|g| g.is_sold_out(id));
        let available = if armed {
            0
        } else {
            match self.probe(id).await? {
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

    /// A campaign's config the backend holds: from this node's cache when it has it (only
    /// `stock` changes after creation, so a cached config is current except for `stock`).
    pub(super) async fn cached_config(
        &self,
        id: &CampaignId,
    ) -> Result<Option<Campaign>, EngineError> {
        if let Some(campaign) = self.gate.as_ref().and_then(|g| g.cached(id)) {
            return Ok(Some(campaign));
        }
        Ok(self.loaded_campaign(id).await?.map(|state| state.campaign))
    }

    /// Arms the gate in the background if the campaign really is sold out (at most once
    /// per [`Gate::ARM_INTERVAL`]).
    fn arm(&self, id: &CampaignId) {
        let Some(gate) = &self.gate else {
            return;
        };
        if gate.sold_out.contains_key(id) {
            return;
        }
        let now = Instant::now();
        let recent = gate
            .last_arming
            .get(id)
            .is_some_and(|at| now.duration_since(*at) < Gate::ARM_INTERVAL);
        if recent {
            return;
        }
        gate.last_arming.insert(id.clone(), now);
        let engine = self.clone();
        let id = id.clone();
        let returns_before = gate.returns.load(Ordering::SeqCst);
        tokio::spawn(async move {
            let Some(gate) = &engine.gate else {
                return;
            };
            match engine.read_records(gate, &id).await {
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
    async fn read_records(&self, gate: &Gate, id: &CampaignId) -> Result<Option<u64>, EngineError> {
        let known = Arc::clone(gate.records.entry(id.clone()).or_default().value());
        // Arming follows an attempt the engine refused: that counts as asked.
        known.last_asked.store(process_ms(), Ordering::Relaxed);
        let mut from = known.count.load(Ordering::SeqCst);
        loop {
            let page = self.sold_out_records(id, from, Gate::RECORDS_PAGE);
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

    /// What the backend would answer a campaign that is sold out, from the records alone.
    async fn answer_sold_out(
        &self,
        gate: &Gate,
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
            return Ok(match self.backing.reads().reservation(&id).await? {
                Some(reservation) => ReserveOutcome::Replayed(Reservation {
                    status: ReservationStatus::Held,
                    group_id: None,
                    ..reservation
                }),
                // It ended and left the engine; the database has it.
                None => ReserveOutcome::ReplayOf(id),
            });
        }
        let refusal = match gate
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
