//! The in-memory engine: the embedded default when no Redis is configured.
//!
//! Campaigns live in a [`DashMap`] (sharded locks), each behind its own mutex, so decisions on
//! different campaigns never wait for each other and there is no global lock on the hot path.
//! Every rule here has its twin in `lua/`; keep them in step.

use super::{
    CancelScope, Change, Engine, EngineError, Event, IdempotencySnapshot, Probe, ReserveOutcome,
    ReserveRequest, RestoredReservation, StockOutcome, StreamPosition, Transition,
};
use crate::domain::{
    Campaign, CampaignId, CampaignKind, CampaignState, Millis, Refusal, Reservation, ReservationId,
    ReservationStatus, UserId, Window,
};
use async_trait::async_trait;
use dashmap::DashMap;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

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
    /// Events not yet read by a persister, in order.
    outbox: VecDeque<Event>,
    /// Events read but not yet acknowledged, with when they were handed out.
    in_flight: BTreeMap<StreamPosition, (Event, Instant)>,
    /// The sequence number of the last event, so positions strictly increase.
    last_seq: i64,
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
    fn new(campaign: Campaign) -> Self {
        Slot {
            available: campaign.stock,
            campaign,
            held: 0,
            confirmed: 0,
            users: HashMap::new(),
            idempotency: HashMap::new(),
            reservations: HashMap::new(),
            expiries: BTreeSet::new(),
            outbox: VecDeque::new(),
            in_flight: BTreeMap::new(),
            last_seq: 0,
        }
    }

    /// Appends an event, under the same lock as the change it records.
    fn emit(&mut self, at: Millis, change: Change) {
        self.last_seq += 1;
        self.outbox.push_back(Event {
            campaign_id: self.campaign.id.clone(),
            position: StreamPosition {
                ms: 0,
                seq: self.last_seq,
            },
            at,
            change,
        });
    }

    fn emit_reservation(&mut self, at: Millis, reservation: Reservation) {
        self.emit(
            at,
            Change::Reservation {
                reservation,
                idempotency: None,
            },
        );
    }

    /// Ends a held or confirmed reservation, giving its units back.
    fn release(
        &mut self,
        id: &ReservationId,
        to: ReservationStatus,
        at: Millis,
    ) -> Option<Reservation> {
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
        self.emit_reservation(at, reservation.clone());
        Some(reservation)
    }

    /// Expires the reservation if it is held past its `expires_at`.
    fn expire_if_due(&mut self, id: &ReservationId, now: Millis) -> bool {
        let due = self
            .reservations
            .get(id)
            .is_some_and(|s| s.status == ReservationStatus::Held && s.expires_at <= now);
        if due {
            self.release(id, ReservationStatus::Expired, now);
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
                Arc::new(Mutex::new(Slot::new(campaign.clone())))
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
        let stock = slot.campaign.stock;
        slot.emit(Millis::now(), Change::Stock { stock });
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
        slot.emit(
            request.now,
            Change::Reservation {
                reservation: reservation.clone(),
                idempotency: Some((request.idempotency_key.clone(), request.fingerprint.clone())),
            },
        );
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
                let confirmed = stored.clone();
                slot.emit_reservation(now, confirmed.clone());
                Ok(Transition::Done(confirmed))
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
                .release(id, ReservationStatus::Cancelled, now)
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
            slot.release(id, ReservationStatus::Expired, now);
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

    async fn read_events(
        &self,
        _consumer: &str,
        max: usize,
        reclaim_after: Duration,
    ) -> Result<Vec<Event>, EngineError> {
        let slots: Vec<Arc<Mutex<Slot>>> = self
            .campaigns
            .iter()
            .map(|e| Arc::clone(e.value()))
            .collect();
        let mut events = Vec::new();
        let now = Instant::now();
        for slot in slots {
            if events.len() >= max {
                break;
            }
            let mut slot = lock(&slot);
            // Handed out long ago and never acknowledged: the reader died; hand out again.
            for (event, handed_out) in slot.in_flight.values_mut() {
                if events.len() < max && now.duration_since(*handed_out) >= reclaim_after {
                    *handed_out = now;
                    events.push(event.clone());
                }
            }
            while events.len() < max {
                let Some(event) = slot.outbox.pop_front() else {
                    break;
                };
                slot.in_flight.insert(event.position, (event.clone(), now));
                events.push(event);
            }
        }
        Ok(events)
    }

    async fn ack_events(&self, events: &[Event]) -> Result<(), EngineError> {
        for event in events {
            if let Some(slot) = self.slot(&event.campaign_id) {
                lock(&slot).in_flight.remove(&event.position);
            }
        }
        Ok(())
    }

    async fn restore_campaign(
        &self,
        campaign: &Campaign,
        reservations: &[RestoredReservation],
    ) -> Result<bool, EngineError> {
        let mut restored = false;
        self.campaigns
            .entry(campaign.id.clone())
            .or_insert_with(|| {
                restored = true;
                let mut slot = Slot::new(campaign.clone());
                for r in reservations {
                    let reservation = &r.reservation;
                    let quantity = u64::from(reservation.quantity);
                    match reservation.status {
                        ReservationStatus::Held => {
                            slot.held += quantity;
                            slot.expiries
                                .insert((reservation.expires_at, reservation.id.clone()));
                        }
                        ReservationStatus::Confirmed => slot.confirmed += quantity,
                        _ => continue,
                    }
                    *slot.users.entry(reservation.user_id.clone()).or_insert(0) += quantity;
                    if let (Some(key), Some(fingerprint)) = (&r.idempotency_key, &r.fingerprint) {
                        slot.idempotency
                            .insert(key.clone(), (reservation.id.clone(), fingerprint.clone()));
                    }
                    slot.reservations
                        .insert(reservation.id.clone(), reservation.clone());
                }
                slot.available = campaign.stock.saturating_sub(slot.held + slot.confirmed);
                Arc::new(Mutex::new(slot))
            });
        Ok(restored)
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
