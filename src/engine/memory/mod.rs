//! The in-memory engine: the embedded default when no Redis is configured.
//!
//! Campaigns live in a [`DashMap`] (sharded locks), each behind its own mutex, so decisions on
//! different campaigns never wait for each other and there is no global lock on the hot path.
//! - `campaign`: one campaign's state and its stock rules;
//! - `groups`: the group-buy rules;
//! - `outbox`: the campaign's events until the persister acknowledges them;
//! - `sharded`: the hash map the big per-campaign maps use, so growing never stalls.
//!
//! Every rule here has its twin in `src/engine/redis/scripts/`; keep them in step.

mod campaign;
mod groups;
mod outbox;
mod queue;
mod rules;
mod sharded;
mod transfers;
mod work;

use super::backend::{Backend, Decisions, EventLog, Probe, Reads, RecordsSince, WaitingRoom};
use super::types::{
    Admission, Backlog, CampaignSnapshot, CancelScope, Consumer, EngineError, EventBatch,
    Extension, GroupOutcome, GroupRequest, JoinOutcome, JoinRequest, ReserveOutcome,
    ReserveRequest, StockOutcome, StockRequest, Transition,
};
use crate::domain::{
    CampaignId, CampaignState, Event, Group, GroupId, Millis, Refusal, Reservation, ReservationId,
    Ticket, TicketId,
};
use async_trait::async_trait;
use campaign::Slot;
use dashmap::DashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;

/// The in-memory stock engine.
#[derive(Clone)]
pub struct MemoryEngine {
    /// One entry per campaign; the mutex makes each decision on a campaign atomic.
    campaigns: Arc<DashMap<CampaignId, Arc<Mutex<Slot>>>>,
    /// Signalled after every decision, so a waiting reader (the persister) wakes at once.
    appended: Arc<Notify>,
    /// Signalled after every acknowledgement, for callers waiting for their events' commit.
    acknowledged: Arc<Notify>,
    /// This process's dataset: everything here dies with the process.
    dataset: Arc<str>,
    /// How long an ended reservation stays here (see `Engine::expire_due`).
    retention: Duration,
    /// The work index (`engine::work`).
    work: Arc<Mutex<work::WorkLists>>,
    /// This process's leases on the work index's active list.
    leases: Arc<super::work::Leases>,
    /// Campaign locks background work took (see `WorkIndex::background_calls`).
    calls: Arc<std::sync::atomic::AtomicU64>,
}

/// How long an empty [`EventLog::read`] waits for a decision before answering nothing.
const READ_WAIT: Duration = Duration::from_millis(50);

/// A poisoned mutex means a panic mid-decision; the slot's invariants are kept by code that
/// does not panic, so carrying on is safe.
fn lock(slot: &Mutex<Slot>) -> MutexGuard<'_, Slot> {
    slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl MemoryEngine {
    pub fn new() -> Self {
        MemoryEngine {
            campaigns: Arc::default(),
            appended: Arc::default(),
            acknowledged: Arc::default(),
            dataset: Arc::from(format!("memory-{}", ulid::Ulid::new())),
            retention: super::DEFAULT_RETENTION,
            work: Arc::default(),
            leases: Arc::default(),
            calls: Arc::default(),
        }
    }

    /// Work-index leases of `lease` instead of [`super::work::LEASE`] (tests: idle campaigns
    /// retire within a test).
    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.leases = Arc::new(super::work::Leases::lasting(lease));
        self
    }

    /// Ended reservations leave memory this long after they ended.
    pub fn with_retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    fn slot(&self, id: &CampaignId) -> Option<Arc<Mutex<Slot>>> {
        self.campaigns
            .get(id)
            .map(|entry| Arc::clone(entry.value()))
    }

    /// Runs `decide` under the campaign's lock; `missing` when there is no such campaign.
    fn with_slot<T>(&self, id: &CampaignId, missing: T, decide: impl FnOnce(&mut Slot) -> T) -> T {
        match self.slot(id) {
            Some(slot) => decide(&mut lock(&slot)),
            None => missing,
        }
    }

    /// [`MemoryEngine::with_slot`] for a decision: a reader waiting for events is woken.
    fn decide<T>(&self, id: &CampaignId, missing: T, decide: impl FnOnce(&mut Slot) -> T) -> T {
        self.touch(id);
        let answer = self.with_slot(id, missing, decide);
        self.appended.notify_one();
        answer
    }

    /// The slots of the campaigns on the active list (`engine::work`), with the list.
    async fn active_slots(&self) -> (super::work::Active, Vec<Arc<Mutex<Slot>>>) {
        use super::work::WorkIndex;
        let active = self.active().await.unwrap_or_default();
        let slots = active.campaigns().filter_map(|id| self.slot(id)).collect();
        (active, slots)
    }
}

#[async_trait]
impl Backend for MemoryEngine {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn ping(&self) -> Result<(), EngineError> {
        Ok(())
    }

    async fn dataset(&self) -> Result<String, EngineError> {
        Ok(self.dataset.to_string())
    }

    async fn forget_campaign(&self, id: &CampaignId) -> Result<(), EngineError> {
        self.campaigns.remove(id);
        self.work
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .forget(id);
        self.leases.forget(id);
        Ok(())
    }
}

impl Default for MemoryEngine {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl Decisions for MemoryEngine {
    async fn load_campaign(&self, snapshot: CampaignSnapshot<'_>) -> Result<bool, EngineError> {
        // A new campaign brings no events and nothing due (see `RedisEngine::load_campaign`).
        if !snapshot.reservations.is_empty() || !snapshot.groups.is_empty() {
            self.touch(&snapshot.campaign.id);
        }
        let mut loaded = false;
        self.campaigns
            .entry(snapshot.campaign.id.clone())
            .or_insert_with(|| {
                loaded = true;
                Arc::new(Mutex::new(Slot::restored(snapshot)))
            });
        Ok(loaded)
    }

    async fn end_campaign(
        &self,
        id: &CampaignId,
        now: Millis,
    ) -> Result<Option<CampaignState>, EngineError> {
        let ended = self.decide(id, false, |slot| {
            slot.campaign.end_at(now);
            true
        });
        if !ended {
            return Ok(None);
        }
        self.campaign(id).await
    }

    async fn adjust_stock(&self, request: &StockRequest) -> Result<StockOutcome, EngineError> {
        Ok(
            self.decide(&request.campaign_id, StockOutcome::NotFound, |slot| {
                slot.adjust_stock(request)
            }),
        )
    }

    async fn reserve(&self, request: &ReserveRequest) -> Result<ReserveOutcome, EngineError> {
        let missing = Ok(ReserveOutcome::Refused(Refusal::CampaignNotFound));
        self.decide(&request.campaign_id, missing, |slot| slot.reserve(request))
    }

    async fn confirm(&self, id: &ReservationId, now: Millis) -> Result<Transition, EngineError> {
        Ok(
            self.decide(&id.shard_campaign(), Transition::NotFound, |slot| {
                slot.confirm(id, now)
            }),
        )
    }

    async fn extend(
        &self,
        id: &ReservationId,
        seconds: u32,
        now: Millis,
    ) -> Result<Extension, EngineError> {
        Ok(
            self.decide(&id.shard_campaign(), Extension::NotFound, |slot| {
                slot.extend(id, seconds, now)
            }),
        )
    }

    async fn cancel(
        &self,
        id: &ReservationId,
        scope: CancelScope,
        now: Millis,
    ) -> Result<Transition, EngineError> {
        self.decide(&id.shard_campaign(), Ok(Transition::NotFound), |slot| {
            slot.cancel(id, scope, now)
        })
    }

    async fn expire_due(
        &self,
        campaign: &CampaignId,
        now: Millis,
        limit: u32,
    ) -> Result<u32, EngineError> {
        let retention = self.retention;
        Ok(self.decide(campaign, 0, |slot| slot.expire_due(now, limit, retention)))
    }

    async fn open_group(&self, request: &GroupRequest) -> Result<GroupOutcome, EngineError> {
        let missing = Ok(GroupOutcome::Refused(Refusal::CampaignNotFound));
        self.decide(&request.campaign_id, missing, |slot| {
            slot.open_group(request)
        })
    }

    async fn join_group(&self, request: &GroupRequest) -> Result<GroupOutcome, EngineError> {
        let missing = Ok(GroupOutcome::Refused(Refusal::GroupNotFound));
        self.decide(&request.campaign_id, missing, |slot| {
            slot.join_group(request)
        })
    }
}

#[async_trait]
impl Reads for MemoryEngine {
    async fn campaign(&self, id: &CampaignId) -> Result<Option<CampaignState>, EngineError> {
        Ok(self.with_slot(id, None, |slot| {
            Some(CampaignState {
                campaign: slot.campaign.clone(),
                available: slot.available,
                held: slot.held,
                confirmed: slot.confirmed,
                groups: slot.group_counts,
            })
        }))
    }

    async fn campaign_ids(&self) -> Result<Vec<CampaignId>, EngineError> {
        Ok(self.campaigns.iter().map(|e| e.key().clone()).collect())
    }

    async fn reservation(&self, id: &ReservationId) -> Result<Option<Reservation>, EngineError> {
        Ok(self.with_slot(&id.shard_campaign(), None, |slot| {
            slot.reservations.get(id).cloned()
        }))
    }

    async fn group(&self, id: &GroupId) -> Result<Option<Group>, EngineError> {
        Ok(self.with_slot(&id.campaign_id(), None, |slot| slot.group_view(id)))
    }

    async fn sold_out_records(
        &self,
        campaign: &CampaignId,
        from: u64,
        limit: u64,
    ) -> Result<Option<RecordsSince>, EngineError> {
        Ok(self.with_slot(campaign, None, |slot| {
            (slot.available == 0).then(|| slot.records_since(from, limit))
        }))
    }

    async fn probe(&self, campaign: &CampaignId) -> Result<Option<Probe>, EngineError> {
        Ok(self.with_slot(campaign, None, |slot| {
            Some(Probe {
                available: slot.available,
                idempotency_records: slot.idempotency.len() as u64,
            })
        }))
    }
}

/// One consumer group (the persister): the group name is not looked at.
#[async_trait]
impl EventLog for MemoryEngine {
    async fn read(
        &self,
        _consumer: &Consumer,
        max: usize,
        reclaim_after: Duration,
    ) -> Result<EventBatch, EngineError> {
        let mut events = Vec::new();
        let mut epochs = crate::engine::Epochs::default();
        let mut available = std::collections::HashMap::new();
        for waited in [false, true] {
            // Only the active campaigns: every campaign with events waiting is on the list.
            let (active, slots) = self.active_slots().await;
            for slot in slots {
                if events.len() >= max {
                    break;
                }
                let before = events.len();
                self.calls
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let mut slot = lock(&slot);
                slot.outbox.hand_out(&mut events, max, reclaim_after);
                if events.len() > before {
                    epochs.set(&slot.campaign.id, &slot.epoch);
                    let last = events[before..].iter().map(|e| e.position).max();
                    if let Some(last) = last {
                        available.insert(slot.campaign.id.clone(), (slot.available, last));
                    }
                }
            }
            if !events.is_empty() || waited {
                break;
            }
            // Nothing anywhere: campaigns whose lease ended leave the active list.
            super::work::retire_idle(self, &active, Millis::now()).await?;
            // Nothing yet: wait for a decision (like XREADGROUP's BLOCK), so a caller waiting
            // for its commit is not held up by the persister's idle pause.
            let _ = tokio::time::timeout(READ_WAIT, self.appended.notified()).await;
        }
        Ok(EventBatch {
            epochs,
            events,
            available,
        })
    }

    async fn ack(&self, _group: &str, events: &[Event]) -> Result<(), EngineError> {
        for event in events {
            if let Some(slot) = self.slot(&event.campaign_id) {
                lock(&slot).outbox.ack(&event.position);
            }
        }
        self.acknowledged.notify_waiters();
        Ok(())
    }

    async fn acknowledged(&self, _group: &str, campaign: &CampaignId) -> Result<(), EngineError> {
        let Some(slot) = self.slot(campaign) else {
            return Ok(());
        };
        let target = lock(&slot).outbox.last();
        loop {
            // Registered before the check, so an acknowledgement between the check and the
            // wait still wakes this caller.
            let notified = self.acknowledged.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if lock(&slot).outbox.acknowledged_through(target) {
                return Ok(());
            }
            notified.await;
        }
    }

    async fn backlog(&self, _group: &str) -> Result<Backlog, EngineError> {
        let mut backlog = Backlog::default();
        for slot in self.active_slots().await.1 {
            let (events, pending, oldest) = lock(&slot).outbox.backlog();
            backlog.events += events;
            backlog.pending += pending;
            backlog.oldest = backlog.oldest.into_iter().chain(oldest).min();
        }
        Ok(backlog)
    }
}

#[async_trait]
impl WaitingRoom for MemoryEngine {
    async fn join_queue(&self, request: &JoinRequest) -> Result<JoinOutcome, EngineError> {
        Ok(self.with_slot(
            &request.campaign_id,
            JoinOutcome::Refused(Refusal::CampaignNotFound),
            |slot| slot.join_queue(request),
        ))
    }

    async fn ticket(&self, id: &TicketId, now: Millis) -> Result<Option<Ticket>, EngineError> {
        Ok(self.with_slot(&id.campaign_id(), None, |slot| slot.ticket(id, now)))
    }

    async fn admit(&self, campaign: &CampaignId, now: Millis) -> Result<Admission, EngineError> {
        Ok(self.with_slot(campaign, Admission::default(), |slot| slot.admit(now)))
    }

    async fn claim_pass(
        &self,
        pass: &super::PassUse<'_>,
    ) -> Result<Option<super::PassClaim>, EngineError> {
        let unknown = Some(super::PassClaim::Unchecked);
        Ok(self.with_slot(&pass.ticket.campaign_id(), unknown, |slot| {
            slot.claim_pass(pass)
        }))
    }

    async fn pass_used(&self, ticket: &TicketId) -> Result<(), EngineError> {
        self.with_slot(&ticket.campaign_id(), (), |slot| slot.pass_used(ticket));
        Ok(())
    }

    async fn line(
        &self,
        campaign: &CampaignId,
    ) -> Result<Option<crate::domain::Line>, EngineError> {
        Ok(self.with_slot(campaign, None, |slot| Some(slot.line())))
    }
}
