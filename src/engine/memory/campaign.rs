//! One campaign's state and its stock rules (reserve, confirm, cancel, expire, restock),
//! changed only under the campaign's mutex. Every rule here has its twin in `src/engine/redis/scripts/`.

use super::groups::GroupSlot;
use super::outbox::Outbox;
use super::sharded::Sharded;
use crate::domain::{
    Campaign, Change, GroupCounts, GroupId, GroupStatus, Millis, Quantity, Reservation,
    ReservationId, ReservationStatus, ScopedKey, UserId,
};
use crate::engine::backend::OpenTransfer;
use crate::engine::{CampaignSnapshot, RecordsSince};
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

/// Everything one campaign owns, changed only under its mutex.
pub struct Slot {
    pub campaign: Campaign,
    pub available: u64,
    pub held: u64,
    pub confirmed: u64,
    /// Units each user holds or has confirmed.
    pub users: Sharded<UserId, u64>,
    /// Idempotency key → (reservation id, fingerprint).
    pub idempotency: Sharded<String, (ReservationId, String)>,
    /// The keys of `idempotency` in creation order, for the sold-out gate.
    pub record_order: Vec<String>,
    /// Reservations outside groups that ended, in the order they ended, until they leave.
    pub ended: VecDeque<(Millis, ReservationId)>,
    /// Stock change keys → (delta, stock after, available after).
    pub stock_changes: HashMap<String, (i64, u64, u64)>,
    pub reservations: Sharded<ReservationId, Reservation>,
    /// Held reservations by expiry, so the reaper finds due ones without a scan.
    pub expiries: BTreeSet<(Millis, ReservationId)>,
    /// Events not yet acknowledged by the persister.
    pub outbox: Outbox,
    /// Groups of a group-buy campaign.
    pub groups: HashMap<GroupId, GroupSlot>,
    /// Open groups by the end of their window, so the reaper finds due ones without a scan.
    pub group_expiries: BTreeSet<(Millis, GroupId)>,
    /// Idempotency key of an open or join → (group id, fingerprint).
    pub group_idempotency: HashMap<String, (GroupId, String)>,
    pub group_counts: GroupCounts,
    /// The waiting room (empty unless the campaign has one).
    pub queue: super::queue::Queue,
    /// This load's epoch (see `CampaignSnapshot::epoch`), handed out with the events.
    pub epoch: String,
    /// Shard 0 of a sharded campaign: the whole campaign's stock (see `engine::sharded`).
    pub total: Option<u64>,
    /// Transfers this shard opened and has not closed, by id.
    pub transfers: HashMap<String, OpenTransfer>,
    /// Units in `transfers`.
    pub outgoing: u64,
    /// Transfer ids this shard was given.
    pub received: HashSet<String>,
    /// Bumped by every change of `stock` or `outgoing`.
    pub version: u64,
    /// Store idempotency keys claimed in this shard → the body's fingerprint.
    pub claims: HashMap<String, String>,
}

/// Takes units off a user's count, forgetting users at zero.
/// What [`Slot::hold`] records.
pub struct NewHold<'a> {
    pub id: &'a ReservationId,
    pub user: &'a UserId,
    pub quantity: Quantity,
    pub group: Option<GroupId>,
    pub key: &'a ScopedKey,
    pub fingerprint: &'a str,
    pub now: Millis,
}

pub fn take_from_user(users: &mut Sharded<UserId, u64>, user: &UserId, quantity: u64) {
    if let Some(units) = users.get_mut(user) {
        *units = units.saturating_sub(quantity);
        if *units == 0 {
            users.remove(user);
        }
    }
}

impl Slot {
    pub fn new(campaign: Campaign, epoch: String) -> Self {
        Slot {
            epoch,
            available: campaign.stock,
            campaign,
            held: 0,
            confirmed: 0,
            users: Sharded::default(),
            idempotency: Sharded::default(),
            record_order: Vec::new(),
            stock_changes: HashMap::new(),
            ended: VecDeque::new(),
            reservations: Sharded::default(),
            expiries: BTreeSet::new(),
            outbox: Outbox::default(),
            groups: HashMap::new(),
            group_expiries: BTreeSet::new(),
            group_idempotency: HashMap::new(),
            group_counts: GroupCounts::default(),
            queue: Default::default(),
            total: None,
            transfers: HashMap::new(),
            outgoing: 0,
            received: HashSet::new(),
            version: 0,
            claims: HashMap::new(),
        }
    }

    /// A campaign rebuilt from the database: the same counters the decisions would have left.
    pub fn restored(snapshot: CampaignSnapshot<'_>) -> Self {
        let CampaignSnapshot {
            campaign,
            reservations,
            groups,
            epoch,
            total,
        } = snapshot;
        let mut slot = Slot::new(campaign.clone(), epoch);
        slot.total = total;
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
            // Ended reservations come back too (status, idempotency record), so a replay of
            // their key and a read of their id answer as before; only live ones take units.
            let live = reservation.status.takes_units();
            let held = reservation.status == ReservationStatus::Held;
            if held {
                slot.expiries
                    .insert((reservation.expires_at, reservation.id.clone()));
            }
            if live {
                *slot.users.entry(reservation.user_id.clone()).or_insert(0) += quantity;
            }
            let group = reservation.group_id.as_ref();
            match group.and_then(|g| Some(g.clone()).zip(slot.groups.get_mut(g))) {
                Some((group_id, group)) => {
                    group
                        .members
                        .push((reservation.user_id.clone(), reservation.id.clone()));
                    if live {
                        group.active += 1;
                    }
                    if live && !held {
                        group.confirmed += 1;
                        if group.status == GroupStatus::Open {
                            slot.held -= quantity;
                            slot.confirmed += quantity;
                        }
                    }
                    if let (Some(key), Some(fingerprint)) = (&r.idempotency_key, &r.fingerprint) {
                        slot.group_idempotency
                            .insert(key.to_string(), (group_id, fingerprint.clone()));
                    }
                }
                None => {
                    if held {
                        slot.held += quantity;
                    } else if live {
                        slot.confirmed += quantity;
                    } else {
                        // Leaves again after the retention, counted from its expiry (its end
                        // time is not kept; it was no later).
                        slot.ended
                            .push_back((reservation.expires_at, reservation.id.clone()));
                    }
                    if let (Some(key), Some(fingerprint)) = (&r.idempotency_key, &r.fingerprint) {
                        slot.idempotency.insert(
                            key.to_string(),
                            (reservation.id.clone(), fingerprint.clone()),
                        );
                        slot.record_order.push(key.to_string());
                    }
                }
            }
            slot.reservations
                .insert(reservation.id.clone(), reservation.clone());
        }
        slot.available = campaign.stock.saturating_sub(slot.held + slot.confirmed);
        slot
    }

    /// Appends an event, under the same lock as the change it records.
    pub fn emit(&mut self, at: Millis, change: Change) {
        self.outbox.push(&self.campaign.id, at, change);
    }

    pub fn emit_reservation(&mut self, at: Millis, reservation: Reservation) {
        self.emit(
            at,
            Change::Reservation {
                reservation,
                idempotency: None,
            },
        );
    }

    /// At most `limit` idempotency records from position `from` on, in creation order.
    pub fn records_since(&self, from: u64, limit: u64) -> RecordsSince {
        let from = usize::try_from(from).unwrap_or(usize::MAX);
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        RecordsSince {
            total: self.record_order.len() as u64,
            records: self
                .record_order
                .get(from..)
                .unwrap_or_default()
                .iter()
                .take(limit)
                .filter_map(|key| {
                    let (id, fingerprint) = self.idempotency.get(key)?;
                    Some((key.clone(), id.clone(), fingerprint.clone()))
                })
                .collect(),
        }
    }

    /// Records a new hold — the reservation, its expiry, the user's units and its creating
    /// event — and returns it. Callers take the units from the campaign or the group and
    /// keep the idempotency record where their kind keeps it.
    pub fn hold(&mut self, new: NewHold<'_>) -> Reservation {
        let reservation = Reservation {
            id: new.id.clone(),
            campaign_id: self.campaign.id.parent(),
            user_id: new.user.clone(),
            quantity: new.quantity,
            status: ReservationStatus::Held,
            created_at: new.now,
            expires_at: new.now.plus_seconds(self.campaign.hold_seconds),
            group_id: new.group,
        };
        *self.users.entry(new.user.clone()).or_insert(0) += u64::from(new.quantity);
        self.expiries
            .insert((reservation.expires_at, reservation.id.clone()));
        self.reservations
            .insert(reservation.id.clone(), reservation.clone());
        self.emit(
            new.now,
            Change::Reservation {
                reservation: reservation.clone(),
                idempotency: Some((new.key.clone(), new.fingerprint.to_owned())),
            },
        );
        reservation
    }

    /// Ends a held or confirmed reservation, giving its units back.
    pub fn release(
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
        let group = stored.group_id.clone();
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
        if reservation.group_id.is_none() {
            self.ended.push_back((at, reservation.id.clone()));
        }
        Some(reservation)
    }

    /// Expires the reservation if it is held past its `expires_at`.
    pub fn expire_if_due(&mut self, id: &ReservationId, now: Millis) -> bool {
        let group = self.reservations.get(id).and_then(|r| r.group_id.clone());
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
