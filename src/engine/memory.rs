//! The in-memory engine: the embedded default when no Redis is configured.
//!
//! Campaigns live in a [`DashMap`] (sharded locks), each behind its own mutex, so decisions on
//! different campaigns never wait for each other and there is no global lock on the hot path.
//! Every rule here has its twin in `lua/`; keep them in step.

use super::{
    CancelScope, Change, Engine, EngineError, Event, GroupOutcome, GroupRequest,
    IdempotencySnapshot, Probe, ReserveOutcome, ReserveRequest, RestoredReservation, StockOutcome,
    StreamPosition, Transition,
};
use crate::domain::{
    Campaign, CampaignId, CampaignKind, CampaignState, Group, GroupCounts, GroupId, GroupMember,
    GroupStatus, Millis, Refusal, Reservation, ReservationId, ReservationStatus, UserId, Window,
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
    /// Groups of a group-buy campaign.
    groups: HashMap<GroupId, GroupSlot>,
    /// Open groups by the end of their window, so the reaper finds due ones without a scan.
    group_expiries: BTreeSet<(Millis, GroupId)>,
    /// Idempotency key of an open or join → (group id, fingerprint).
    group_idempotency: HashMap<String, (GroupId, String)>,
    group_counts: GroupCounts,
}

/// One group: its quota is `size` units of the campaign, held from opening.
struct GroupSlot {
    leader: UserId,
    size: u32,
    status: GroupStatus,
    created_at: Millis,
    expires_at: Millis,
    /// Latest reservation per member, in join order.
    members: Vec<(UserId, ReservationId)>,
    /// Members holding or confirmed.
    active: u32,
    /// Members confirmed.
    confirmed: u32,
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

/// Takes units off a user's count, forgetting users at zero.
fn take_from_user(users: &mut HashMap<UserId, u64>, user: &UserId, quantity: u64) {
    if let Some(units) = users.get_mut(user) {
        *units = units.saturating_sub(quantity);
        if *units == 0 {
            users.remove(user);
        }
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
            groups: HashMap::new(),
            group_expiries: BTreeSet::new(),
            group_idempotency: HashMap::new(),
            group_counts: GroupCounts::default(),
        }
    }

    fn group_view(&self, id: &GroupId) -> Option<Group> {
        let g = self.groups.get(id)?;
        Some(Group {
            id: id.clone(),
            campaign_id: self.campaign.id.clone(),
            leader_user_id: g.leader.clone(),
            size: g.size,
            status: g.status,
            created_at: g.created_at,
            expires_at: g.expires_at,
            members: g
                .members
                .iter()
                .filter_map(|(user, rid)| {
                    Some(GroupMember {
                        user_id: user.clone(),
                        reservation_id: rid.clone(),
                        status: self.reservations.get(rid)?.status,
                    })
                })
                .collect(),
        })
    }

    /// A campaign rebuilt from the database: the same counters the decisions would have left.
    fn restored(
        campaign: &Campaign,
        reservations: &[RestoredReservation],
        groups: &[Group],
    ) -> Self {
        let mut slot = Slot::new(campaign.clone());
        for g in groups {
            let size = u64::from(g.size);
            match g.status {
                GroupStatus::Open => {
                    slot.group_counts.open += 1;
                    slot.held += size;
                    slot.group_expiries.insert((g.expires_at, g.id.clone()));
                }
                GroupStatus::Formed => {
                    slot.group_counts.formed += 1;
                    slot.confirmed += size;
                }
                GroupStatus::Failed => slot.group_counts.failed += 1,
            }
            slot.groups.insert(
                g.id.clone(),
                GroupSlot {
                    leader: g.leader_user_id.clone(),
                    size: g.size,
                    status: g.status,
                    created_at: g.created_at,
                    expires_at: g.expires_at,
                    members: Vec::new(),
                    active: 0,
                    confirmed: 0,
                },
            );
        }
        for r in reservations {
            let reservation = &r.reservation;
            let quantity = u64::from(reservation.quantity);
            if !reservation.status.takes_units() {
                continue;
            }
            let held = reservation.status == ReservationStatus::Held;
            if held {
                slot.expiries
                    .insert((reservation.expires_at, reservation.id.clone()));
            }
            *slot.users.entry(reservation.user_id.clone()).or_insert(0) += quantity;
            let group_id = reservation
                .group_id
                .as_deref()
                .and_then(|g| GroupId::parse(g).ok());
            match group_id.and_then(|g| Some(g.clone()).zip(slot.groups.get_mut(&g))) {
                Some((group_id, group)) => {
                    group
                        .members
                        .push((reservation.user_id.clone(), reservation.id.clone()));
                    group.active += 1;
                    if !held {
                        group.confirmed += 1;
                        if group.status == GroupStatus::Open {
                            slot.held -= quantity;
                            slot.confirmed += quantity;
                        }
                    }
                    if let (Some(key), Some(fingerprint)) = (&r.idempotency_key, &r.fingerprint) {
                        slot.group_idempotency
                            .insert(key.clone(), (group_id, fingerprint.clone()));
                    }
                }
                None => {
                    if held {
                        slot.held += quantity;
                    } else {
                        slot.confirmed += quantity;
                    }
                    if let (Some(key), Some(fingerprint)) = (&r.idempotency_key, &r.fingerprint) {
                        slot.idempotency
                            .insert(key.clone(), (reservation.id.clone(), fingerprint.clone()));
                    }
                }
            }
            slot.reservations
                .insert(reservation.id.clone(), reservation.clone());
        }
        slot.available = campaign.stock.saturating_sub(slot.held + slot.confirmed);
        slot
    }

    /// The replay of an open or join whose idempotency key was seen before.
    fn group_replay(&self, request: &GroupRequest) -> Option<GroupOutcome> {
        let (id, fingerprint) = self.group_idempotency.get(&request.idempotency_key)?;
        if *fingerprint != request.fingerprint {
            return Some(GroupOutcome::KeyReused);
        }
        self.group_view(id).map(GroupOutcome::Replayed)
    }

    /// Gives the requester a slot of the group: a held reservation of one unit.
    fn add_member(&mut self, request: &GroupRequest) {
        let reservation = Reservation {
            id: request.reservation_id.clone(),
            campaign_id: request.campaign_id.clone(),
            user_id: request.user_id.clone(),
            quantity: 1,
            status: ReservationStatus::Held,
            created_at: request.now,
            expires_at: request.now.plus_seconds(self.campaign.hold_seconds),
            group_id: Some(request.group_id.to_string()),
        };
        if let Some(group) = self.groups.get_mut(&request.group_id) {
            group
                .members
                .push((request.user_id.clone(), reservation.id.clone()));
            group.active += 1;
        }
        *self.users.entry(request.user_id.clone()).or_insert(0) += 1;
        self.group_idempotency.insert(
            request.idempotency_key.clone(),
            (request.group_id.clone(), request.fingerprint.clone()),
        );
        self.expiries
            .insert((reservation.expires_at, reservation.id.clone()));
        self.reservations
            .insert(reservation.id.clone(), reservation.clone());
        self.emit(
            request.now,
            Change::Reservation {
                reservation,
                idempotency: Some((request.idempotency_key.clone(), request.fingerprint.clone())),
            },
        );
    }

    fn emit_group(&mut self, at: Millis, id: &GroupId) {
        if let Some(mut group) = self.group_view(id) {
            group.members.clear();
            self.emit(at, Change::Group { group });
        }
    }

    /// Fails the group if it is open past its window: every member with a slot is released,
    /// the whole quota returns to the campaign. Returns how many members were released.
    fn fail_group_if_due(&mut self, id: &GroupId, now: Millis) -> u32 {
        let Some(group) = self
            .groups
            .get_mut(id)
            .filter(|g| g.status == GroupStatus::Open && g.expires_at <= now)
        else {
            return 0;
        };
        group.status = GroupStatus::Failed;
        let size = u64::from(group.size);
        let confirmed = u64::from(group.confirmed);
        let expires_at = group.expires_at;
        let members: Vec<ReservationId> =
            group.members.iter().map(|(_, rid)| rid.clone()).collect();
        group.active = 0;
        group.confirmed = 0;
        self.group_expiries.remove(&(expires_at, id.clone()));
        self.available += size;
        self.held -= size - confirmed;
        self.confirmed -= confirmed;
        self.group_counts.open -= 1;
        self.group_counts.failed += 1;
        let mut released_members = 0;
        for rid in members {
            let Some(r) = self.reservations.get_mut(&rid) else {
                continue;
            };
            if !r.status.takes_units() {
                continue;
            }
            if r.status == ReservationStatus::Held {
                self.expiries.remove(&(r.expires_at, rid.clone()));
            }
            r.status = ReservationStatus::Released;
            let released = r.clone();
            take_from_user(&mut self.users, &released.user_id, 1);
            self.emit_reservation(now, released);
            released_members += 1;
        }
        self.emit_group(now, id);
        released_members
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
        if from == ReservationStatus::Held {
            self.expiries.remove(&(stored.expires_at, id.clone()));
        }
        let group = stored
            .group_id
            .as_deref()
            .and_then(|g| GroupId::parse(g).ok());
        match (from, group.and_then(|g| self.groups.get_mut(&g))) {
            // A member's slot returns to its (open) group, not to the campaign.
            (ReservationStatus::Held, Some(group)) => group.active -= 1,
            (ReservationStatus::Confirmed, Some(group)) => {
                group.active -= 1;
                group.confirmed -= 1;
                self.confirmed -= quantity;
                self.held += quantity;
            }
            (ReservationStatus::Held, None) => {
                self.held -= quantity;
                self.available += quantity;
            }
            (ReservationStatus::Confirmed, None) => {
                self.confirmed -= quantity;
                self.available += quantity;
            }
            _ => return None,
        }
        stored.status = to;
        let reservation = stored.clone();
        take_from_user(&mut self.users, &reservation.user_id, quantity);
        self.emit_reservation(at, reservation.clone());
        Some(reservation)
    }

    /// Expires the reservation if it is held past its `expires_at`.
    fn expire_if_due(&mut self, id: &ReservationId, now: Millis) -> bool {
        let group = self
            .reservations
            .get(id)
            .and_then(|r| r.group_id.as_deref())
            .and_then(|g| GroupId::parse(g).ok());
        if let Some(group) = group {
            self.fail_group_if_due(&group, now);
        }
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
                groups: slot.group_counts,
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
                let group_id = confirmed
                    .group_id
                    .as_deref()
                    .and_then(|g| GroupId::parse(g).ok());
                if let Some(group_id) = group_id {
                    let formed = slot.groups.get_mut(&group_id).is_some_and(|g| {
                        g.confirmed += 1;
                        g.confirmed == g.size
                    });
                    if formed {
                        if let Some(g) = slot.groups.get_mut(&group_id) {
                            g.status = GroupStatus::Formed;
                            let expires_at = g.expires_at;
                            slot.group_expiries.remove(&(expires_at, group_id.clone()));
                        }
                        slot.group_counts.open -= 1;
                        slot.group_counts.formed += 1;
                        slot.emit_group(now, &group_id);
                    }
                }
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
        // A formed group's units are sold as a whole; its members are not cancelled one by one.
        let in_formed_group = slot
            .reservations
            .get(id)
            .and_then(|r| r.group_id.as_deref())
            .and_then(|g| GroupId::parse(g).ok())
            .and_then(|g| slot.groups.get(&g))
            .is_some_and(|g| g.status == GroupStatus::Formed);
        let cancellable = match status {
            ReservationStatus::Held => true,
            ReservationStatus::Confirmed => {
                scope == CancelScope::HeldOrConfirmed && !in_formed_group
            }
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
        // Groups first: a member whose hold and group end together is released with its group.
        let due_groups: Vec<GroupId> = slot
            .group_expiries
            .iter()
            .take_while(|(at, _)| *at <= now)
            .map(|(_, id)| id.clone())
            .collect();
        let mut ended = 0;
        for group in &due_groups {
            ended += slot.fail_group_if_due(group, now);
        }
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
        Ok(ended + due.len() as u32)
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

    async fn open_group(&self, request: &GroupRequest) -> Result<GroupOutcome, EngineError> {
        let Some(slot) = self.slot(&request.campaign_id) else {
            return Ok(GroupOutcome::Refused(Refusal::CampaignNotFound));
        };
        let mut slot = lock(&slot);
        if let Some(outcome) = slot.group_replay(request) {
            return Ok(outcome);
        }
        let Some(rule) = slot
            .campaign
            .group
            .filter(|_| slot.campaign.kind == CampaignKind::GroupBuy)
        else {
            return Ok(GroupOutcome::Refused(Refusal::WrongCampaignKind));
        };
        match slot.campaign.window(request.now) {
            Window::Before => return Ok(GroupOutcome::Refused(Refusal::NotStarted)),
            Window::After => return Ok(GroupOutcome::Refused(Refusal::Ended)),
            Window::Open => {}
        }
        let size = u64::from(rule.size);
        if slot.available < size {
            return Ok(GroupOutcome::Refused(Refusal::SoldOut));
        }
        if slot.users.get(&request.user_id).copied().unwrap_or(0) + 1
            > u64::from(slot.campaign.per_user_limit)
        {
            return Ok(GroupOutcome::Refused(Refusal::LimitExceeded));
        }
        let expires_at = request.now.plus_seconds(rule.window_seconds);
        slot.available -= size;
        slot.held += size;
        slot.group_counts.open += 1;
        slot.groups.insert(
            request.group_id.clone(),
            GroupSlot {
                leader: request.user_id.clone(),
                size: rule.size,
                status: GroupStatus::Open,
                created_at: request.now,
                expires_at,
                members: Vec::new(),
                active: 0,
                confirmed: 0,
            },
        );
        slot.group_expiries
            .insert((expires_at, request.group_id.clone()));
        slot.emit_group(request.now, &request.group_id);
        slot.add_member(request);
        Ok(GroupOutcome::Done(
            slot.group_view(&request.group_id)
                .ok_or_else(|| EngineError::Corrupt(format!("{} vanished", request.group_id)))?,
        ))
    }

    async fn join_group(&self, request: &GroupRequest) -> Result<GroupOutcome, EngineError> {
        let Some(slot) = self.slot(&request.campaign_id) else {
            return Ok(GroupOutcome::Refused(Refusal::GroupNotFound));
        };
        let mut slot = lock(&slot);
        if let Some(outcome) = slot.group_replay(request) {
            return Ok(outcome);
        }
        slot.fail_group_if_due(&request.group_id, request.now);
        let Some(group) = slot.groups.get(&request.group_id) else {
            return Ok(GroupOutcome::Refused(Refusal::GroupNotFound));
        };
        if group.status != GroupStatus::Open {
            return Ok(GroupOutcome::Refused(Refusal::GroupClosed));
        }
        let member = group
            .members
            .iter()
            .rev()
            .find(|(user, _)| *user == request.user_id)
            .and_then(|(_, rid)| slot.reservations.get(rid))
            .is_some_and(|r| r.status.takes_units());
        if member {
            return Ok(GroupOutcome::Refused(Refusal::AlreadyMember));
        }
        if group.active >= group.size {
            return Ok(GroupOutcome::Refused(Refusal::GroupFull));
        }
        if slot.users.get(&request.user_id).copied().unwrap_or(0) + 1
            > u64::from(slot.campaign.per_user_limit)
        {
            return Ok(GroupOutcome::Refused(Refusal::LimitExceeded));
        }
        slot.add_member(request);
        Ok(GroupOutcome::Done(
            slot.group_view(&request.group_id)
                .ok_or_else(|| EngineError::Corrupt(format!("{} vanished", request.group_id)))?,
        ))
    }

    async fn group(&self, id: &GroupId) -> Result<Option<Group>, EngineError> {
        Ok(self
            .slot(&id.campaign_id())
            .and_then(|slot| lock(&slot).group_view(id)))
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

    async fn backlog(&self) -> Result<super::Backlog, EngineError> {
        let mut backlog = super::Backlog::default();
        for entry in self.campaigns.iter() {
            let slot = lock(entry.value());
            backlog.pending += slot.in_flight.len() as u64;
            backlog.events += (slot.in_flight.len() + slot.outbox.len()) as u64;
            let oldest = slot
                .in_flight
                .values()
                .map(|(e, _)| e.at)
                .chain(slot.outbox.front().map(|e| e.at))
                .min();
            backlog.oldest = backlog.oldest.into_iter().chain(oldest).min();
        }
        Ok(backlog)
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
        groups: &[Group],
    ) -> Result<bool, EngineError> {
        let mut restored = false;
        self.campaigns
            .entry(campaign.id.clone())
            .or_insert_with(|| {
                restored = true;
                Arc::new(Mutex::new(Slot::restored(campaign, reservations, groups)))
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
