//! The in-memory engine: the embedded default when no Redis is configured.
//!
//! Campaigns live in a [`DashMap`] (sharded locks), each behind its own mutex, so decisions on
//! different campaigns never wait for each other and there is no global lock on the hot path.
//! Every rule here has its twin in `lua/`; keep them in step.

use super::{
    CancelScope, Engine, EngineError, IdempotencySnapshot, Probe, ReserveOutcome, ReserveRequest,
    StockOutcome, Transition,
};
use crate::domain::{
    Campaign, CampaignId, CampaignKind, CampaignState, Millis, Refusal, Reservation, ReservationId,
    ReservationStatus, UserId, Window,
};
use async_trait::async_trait;
use dashmap::DashMap;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

/// The in-memory stock engine.
#[derive(Default, Clone)]
pub struct MemoryEngine {
    /// One entry per campaign; the mutex makes each decision on a campaign atomic.
    campaigns: Arc<DashMap<CampaignId, Arc<Mutex<Slot>>>>,
}

/// Everything one campaign owns, changed only under its mutex.
struct Slot {
    campaign: Campaign,
    available: u64,
    held: u64,
    confirmed: u64,
    /// Units each user holds or has confirmed.
    users: HashMap<UserId, u64>,
    /// Idempotency key → (reservation id, fingerprint).
    idempotency: HashMap<String, (ReservationId, String)>,
    reservations: HashMap<ReservationId, Reservation>,
    /// Held reservations by expiry, so the reaper finds due ones without a scan.
    expiries: BTreeSet<(Millis, ReservationId)>,
}

impl MemoryEngine {
    pub fn new() -> Self {
        Self::default()
    }

    fn slot(&self, id: &CampaignId) -> Option<Arc<Mutex<Slot>>> {
        self.campaigns
            .get(id)
            .map(|entry| Arc::clone(entry.value()))
    }
}

/// A poisoned mutex means a panic mid-decision; the slot's invariants are kept by code that
/// does not panic, so carrying on is safe.
fn lock(slot: &Mutex<Slot>) -> MutexGuard<'_, Slot> {
    slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Slot {
    /// Ends a held or confirmed reservation, giving its units back.
    fn release(&mut self, id: &ReservationId, to: ReservationStatus) -> Option<Reservation> {
        let stored = self.reservations.get_mut(id)?;
        let from = stored.status;
        let quantity = u64::from(stored.quantity);
        match from {
            ReservationStatus::Held => {
                self.held -= quantity;
                self.expiries.remove(&(stored.expires_at, id.clone()));
            }
            ReservationStatus::Confirmed => self.confirmed -= quantity,
            _ => return None,
        }
        self.available += quantity;
        stored.status = to;
        let user = stored.user_id.clone();
        let reservation = stored.clone();
        if let Some(units) = self.users.get_mut(&user) {
            *units -= quantity;
            if *units == 0 {
                self.users.remove(&user);
            }
        }
        Some(reservation)
    }

    /// Expires the reservation if it is held past its `expires_at`.
    fn expire_if_due(&mut self, id: &ReservationId, now: Millis) -> bool {
        let due = self
            .reservations
            .get(id)
            .is_some_and(|s| s.status == ReservationStatus::Held && s.expires_at <= now);
        if due {
            self.release(id, ReservationStatus::Expired);
        }
        due
    }
}

#[async_trait]
impl Engine for MemoryEngine {
    async fn create_campaign(&self, campaign: &Campaign) -> Result<bool, EngineError> {
        let mut created = false;
        self.campaigns
            .entry(campaign.id.clone())
            .or_insert_with(|| {
                created = true;
                Arc::new(Mutex::new(Slot {
                    campaign: campaign.clone(),
                    available: campaign.stock,
                    held: 0,
                    confirmed: 0,
                    users: HashMap::new(),
                    idempotency: HashMap::new(),
                    reservations: HashMap::new(),
                    expiries: BTreeSet::new(),
                }))
            });
        Ok(created)
    }

    async fn campaign(&self, id: &CampaignId) -> Result<Option<CampaignState>, EngineError> {
        Ok(self.slot(id).map(|slot| {
            let slot = lock(&slot);
            CampaignState {
                campaign: slot.campaign.clone(),
                available: slot.available,
                held: slot.held,
                confirmed: slot.confirmed,
            }
        }))
    }

    async fn campaign_ids(&self) -> Result<Vec<CampaignId>, EngineError> {
        Ok(self.campaigns.iter().map(|e| e.key().clone()).collect())
    }

    async fn adjust_stock(&self, id: &CampaignId, delta: i64) -> Result<StockOutcome, EngineError> {
        let Some(slot) = self.slot(id) else {
            return Ok(StockOutcome::NotFound);
        };
        let mut slot = lock(&slot);
        let magnitude = delta.unsigned_abs();
        if delta < 0 {
            if magnitude > slot.available {
                return Ok(StockOutcome::Insufficient {
                    available: slot.available,
                });
            }
            slot.available -= magnitude;
            slot.campaign.stock -= magnitude;
        } else {
            slot.available += magnitude;
            slot.campaign.stock += magnitude;
        }
        Ok(StockOutcome::Adjusted {
            stock: slot.campaign.stock,
            available: slot.available,
        })
    }

    async fn reserve(&self, request: &ReserveRequest) -> Result<ReserveOutcome, EngineError> {
        let Some(slot) = self.slot(&request.campaign_id) else {
            return Ok(ReserveOutcome::Refused(Refusal::CampaignNotFound));
        };
        let mut slot = lock(&slot);
        if let Some((id, fingerprint)) = slot.idempotency.get(&request.idempotency_key) {
            if *fingerprint != request.fingerprint {
                return Ok(ReserveOutcome::KeyReused);
            }
            let first = slot
                .reservations
                .get(id)
                .map(|s| Reservation {
                    status: ReservationStatus::Held,
                    ..s.clone()
                })
                .ok_or_else(|| {
                    EngineError::Corrupt(format!("idempotency record points at missing {id}"))
                })?;
            return Ok(ReserveOutcome::Replayed(first));
        }
        if slot.campaign.kind != CampaignKind::FlashSale {
            return Ok(ReserveOutcome::Refused(Refusal::WrongCampaignKind));
        }
        match slot.campaign.window(request.now) {
            Window::Before => return Ok(ReserveOutcome::Refused(Refusal::NotStarted)),
            Window::After => return Ok(ReserveOutcome::Refused(Refusal::Ended)),
            Window::Open => {}
        }
        let quantity = u64::from(request.quantity.get());
        if slot.available < quantity {
            return Ok(ReserveOutcome::Refused(Refusal::SoldOut));
        }
        let had = slot.users.get(&request.user_id).copied().unwrap_or(0);
        if had + quantity > u64::from(slot.campaign.per_user_limit) {
            return Ok(ReserveOutcome::Refused(Refusal::LimitExceeded));
        }
        let reservation = Reservation {
            id: request.reservation_id.clone(),
            campaign_id: request.campaign_id.clone(),
            user_id: request.user_id.clone(),
            quantity: request.quantity.get(),
            status: ReservationStatus::Held,
            created_at: request.now,
            expires_at: request.now.plus_seconds(slot.campaign.hold_seconds),
            group_id: None,
        };
        slot.available -= quantity;
        slot.held += quantity;
        *slot.users.entry(request.user_id.clone()).or_insert(0) += quantity;
        slot.idempotency.insert(
            request.idempotency_key.clone(),
            (reservation.id.clone(), request.fingerprint.clone()),
        );
        slot.expiries
            .insert((reservation.expires_at, reservation.id.clone()));
        slot.reservations
            .insert(reservation.id.clone(), reservation.clone());
        Ok(ReserveOutcome::Reserved {
            reservation,
            available: slot.available,
        })
    }

    async fn reservation(&self, id: &ReservationId) -> Result<Option<Reservation>, EngineError> {
        Ok(self
            .slot(&id.campaign_id())
            .and_then(|slot| lock(&slot).reservations.get(id).cloned()))
    }

    async fn confirm(&self, id: &ReservationId, now: Millis) -> Result<Transition, EngineError> {
        let Some(slot) = self.slot(&id.campaign_id()) else {
            return Ok(Transition::NotFound);
        };
        let mut slot = lock(&slot);
        slot.expire_if_due(id, now);
        let slot = &mut *slot;
        let Some(stored) = slot.reservations.get_mut(id) else {
            return Ok(Transition::NotFound);
        };
        match stored.status {
            ReservationStatus::Confirmed => Ok(Transition::Unchanged(stored.clone())),
            ReservationStatus::Held => {
                let quantity = u64::from(stored.quantity);
                stored.status = ReservationStatus::Confirmed;
                slot.held -= quantity;
                slot.confirmed += quantity;
                slot.expiries.remove(&(stored.expires_at, id.clone()));
                Ok(Transition::Done(stored.clone()))
            }
            _ => Ok(Transition::NotHeld(stored.clone())),
        }
    }

    async fn cancel(
        &self,
        id: &ReservationId,
        scope: CancelScope,
        now: Millis,
    ) -> Result<Transition, EngineError> {
        let Some(slot) = self.slot(&id.campaign_id()) else {
            return Ok(Transition::NotFound);
        };
        let mut slot = lock(&slot);
        slot.expire_if_due(id, now);
        let Some(status) = slot.reservations.get(id).map(|s| s.status) else {
            return Ok(Transition::NotFound);
        };
        let cancellable = match status {
            ReservationStatus::Held => true,
            ReservationStatus::Confirmed => scope == CancelScope::HeldOrConfirmed,
            _ => false,
        };
        if cancellable {
            let reservation = slot
                .release(id, ReservationStatus::Cancelled)
                .ok_or_else(|| EngineError::Corrupt(format!("{id} vanished mid-cancel")))?;
            return Ok(Transition::Done(reservation));
        }
        let current = slot.reservations.get(id).cloned();
        Ok(match current {
            Some(r) if r.status == ReservationStatus::Cancelled => Transition::Unchanged(r),
            Some(r) => Transition::NotHeld(r),
            None => Transition::NotFound,
        })
    }

    async fn expire_due(
        &self,
        campaign: &CampaignId,
        now: Millis,
        limit: u32,
    ) -> Result<u32, EngineError> {
        let Some(slot) = self.slot(campaign) else {
            return Ok(0);
        };
        let mut slot = lock(&slot);
        let due: Vec<ReservationId> = slot
            .expiries
            .iter()
            .take_while(|(at, _)| *at <= now)
            .take(limit as usize)
            .map(|(_, id)| id.clone())
            .collect();
        for id in &due {
            slot.release(id, ReservationStatus::Expired);
        }
        Ok(due.len() as u32)
    }

    async fn sold_out_snapshot(
        &self,
        campaign: &CampaignId,
    ) -> Result<Option<IdempotencySnapshot>, EngineError> {
        Ok(self.slot(campaign).and_then(|slot| {
            let slot = lock(&slot);
            (slot.available == 0).then(|| slot.idempotency.clone())
        }))
    }

    async fn probe(&self, campaign: &CampaignId) -> Result<Option<Probe>, EngineError> {
        Ok(self.slot(campaign).map(|slot| {
            let slot = lock(&slot);
            Probe {
                available: slot.available,
                idempotency_records: slot.idempotency.len() as u64,
            }
        }))
    }

    async fn ping(&self) -> Result<(), EngineError> {
        Ok(())
    }

    fn name(&self) -> &'static str {
        "memory"
    }
}
