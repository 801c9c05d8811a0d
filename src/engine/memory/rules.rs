//! A campaign's stock rules — reserve, confirm, cancel, extend, expire, restock — each run
//! under the campaign's mutex. Every rule here has its twin in `src/engine/redis/scripts/`.

use super::campaign::{NewHold, Slot};
use crate::domain::{
    CampaignKind, Change, GroupId, GroupStatus, Millis, Refusal, Reservation, ReservationId,
    ReservationStatus, Window,
};
use crate::engine::{
    CancelScope, EngineError, Extension, ReserveOutcome, ReserveRequest, StockOutcome,
    StockRequest, Transition,
};

impl Slot {
    /// Adds or withdraws units; never below what is available; once per idempotency key.
    pub fn adjust_stock(&mut self, request: &StockRequest) -> StockOutcome {
        let delta = request.delta.get();
        if let Some((first, stock, available)) =
            self.stock_changes.get(request.idempotency_key.as_str())
        {
            return if *first == delta {
                StockOutcome::Replayed {
                    stock: *stock,
                    available: *available,
                }
            } else {
                StockOutcome::KeyReused
            };
        }
        let magnitude = delta.unsigned_abs();
        if delta < 0 {
            if magnitude > self.available {
                return StockOutcome::Insufficient {
                    available: self.available,
                };
            }
            self.available -= magnitude;
            self.campaign.stock -= magnitude;
        } else {
            self.available += magnitude;
            self.campaign.stock += magnitude;
        }
        let mut stock = self.campaign.stock;
        if let Some(total) = &mut self.total {
            *total = total.saturating_add_signed(delta);
            stock = *total;
            self.version += 1;
        }
        self.stock_changes.insert(
            request.idempotency_key.to_string(),
            (delta, stock, self.available),
        );
        self.emit(Millis::now(), Change::Stock { stock });
        StockOutcome::Adjusted {
            stock,
            available: self.available,
        }
    }

    /// The reserve rule, in the order `engine/mod.rs` documents.
    pub fn reserve(&mut self, request: &ReserveRequest) -> Result<ReserveOutcome, EngineError> {
        if let Some((id, fingerprint)) = self.idempotency.get(request.idempotency_key.as_str()) {
            if *fingerprint != request.fingerprint {
                return Ok(ReserveOutcome::KeyReused);
            }
            // Gone after the retention: the database has the first outcome.
            return Ok(match self.reservations.get(id) {
                Some(first) => ReserveOutcome::Replayed(Reservation {
                    status: ReservationStatus::Held,
                    ..first.clone()
                }),
                None => ReserveOutcome::ReplayOf(id.clone()),
            });
        }
        if self.campaign.kind != CampaignKind::FlashSale {
            return Ok(ReserveOutcome::Refused(Refusal::WrongCampaignKind));
        }
        match self.campaign.window(request.now) {
            Window::Before => return Ok(ReserveOutcome::Refused(Refusal::NotStarted)),
            Window::After => return Ok(ReserveOutcome::Refused(Refusal::Ended)),
            Window::Open => {}
        }
        let quantity = u64::from(request.quantity.get());
        if self.available < quantity {
            return Ok(ReserveOutcome::Refused(Refusal::SoldOut));
        }
        let had = self.users.get(&request.user_id).copied().unwrap_or(0);
        if had + quantity > u64::from(self.campaign.per_user_limit) {
            return Ok(ReserveOutcome::Refused(Refusal::LimitExceeded));
        }
        self.available -= quantity;
        self.held += quantity;
        self.idempotency.insert(
            request.idempotency_key.to_string(),
            (request.reservation_id.clone(), request.fingerprint.clone()),
        );
        self.record_order.push(request.idempotency_key.to_string());
        let reservation = self.hold(NewHold {
            id: &request.reservation_id,
            user: &request.user_id,
            quantity: request.quantity,
            group: None,
            key: &request.idempotency_key,
            fingerprint: &request.fingerprint,
            now: request.now,
        });
        Ok(ReserveOutcome::Reserved {
            reservation,
            available: self.available,
        })
    }

    /// held → confirmed; a hold found past `expires_at` expires instead.
    pub fn confirm(&mut self, id: &ReservationId, now: Millis) -> Transition {
        self.expire_if_due(id, now);
        let slot = self;
        let Some(stored) = slot.reservations.get_mut(id) else {
            return Transition::NotFound;
        };
        match stored.status {
            ReservationStatus::Confirmed => Transition::Unchanged(stored.clone()),
            ReservationStatus::Held => {
                let quantity = u64::from(stored.quantity);
                stored.status = ReservationStatus::Confirmed;
                slot.held -= quantity;
                slot.confirmed += quantity;
                slot.expiries.remove(&(stored.expires_at, id.clone()));
                let confirmed = stored.clone();
                slot.emit_reservation(now, confirmed.clone());
                let group_id = confirmed.group_id.clone();
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
                Transition::Done(confirmed)
            }
            _ => Transition::NotHeld(stored.clone()),
        }
    }

    /// held → held until later, at most `created_at + hold + max_extend`; a hold found past
    /// `expires_at` expires instead.
    pub fn extend(&mut self, id: &ReservationId, seconds: u32, now: Millis) -> Extension {
        self.expire_if_due(id, now);
        let (hold, max_extend) = (self.campaign.hold_seconds, self.campaign.max_extend_seconds);
        let slot = self;
        let Some(stored) = slot.reservations.get_mut(id) else {
            return Extension::NotFound;
        };
        if stored.status != ReservationStatus::Held {
            return Extension::NotHeld(stored.clone());
        }
        let asked = now.plus_seconds(seconds);
        if asked
            > stored
                .created_at
                .plus_seconds(hold)
                .plus_seconds(max_extend)
        {
            return Extension::Exceeded(stored.clone());
        }
        if asked <= stored.expires_at {
            return Extension::Extended(stored.clone());
        }
        slot.expiries.remove(&(stored.expires_at, id.clone()));
        stored.expires_at = asked;
        let extended = stored.clone();
        slot.expiries.insert((asked, id.clone()));
        slot.emit(
            now,
            Change::Extended {
                reservation: extended.clone(),
            },
        );
        Extension::Extended(extended)
    }

    /// → cancelled, units return; a hold found past `expires_at` expires instead.
    pub fn cancel(
        &mut self,
        id: &ReservationId,
        scope: CancelScope,
        now: Millis,
    ) -> Result<Transition, EngineError> {
        self.expire_if_due(id, now);
        let Some(status) = self.reservations.get(id).map(|s| s.status) else {
            return Ok(Transition::NotFound);
        };
        // A formed group's units are sold as a whole; its members are not cancelled one by one.
        let in_formed_group = self
            .reservations
            .get(id)
            .and_then(|r| r.group_id.as_ref())
            .and_then(|g| self.groups.get(g))
            .is_some_and(|g| g.status == GroupStatus::Formed);
        let cancellable = match status {
            ReservationStatus::Held => true,
            ReservationStatus::Confirmed => {
                scope == CancelScope::HeldOrConfirmed && !in_formed_group
            }
            _ => false,
        };
        if cancellable {
            let reservation = self
                .release(id, ReservationStatus::Cancelled, now)
                .ok_or_else(|| EngineError::Corrupt(format!("{id} vanished mid-cancel")))?;
            return Ok(Transition::Done(reservation));
        }
        let current = self.reservations.get(id).cloned();
        Ok(match current {
            Some(r) if r.status == ReservationStatus::Cancelled => Transition::Unchanged(r),
            Some(r) => Transition::NotHeld(r),
            None => Transition::NotFound,
        })
    }

    /// Fails due groups, then expires up to `limit` due holds; how many reservations ended.
    /// When [`Slot::expire_due`] next has something to do: the first hold or group window
    /// to end, the first ended reservation to leave, an open transfer (completed by the reaper
    /// once a second old).
    pub fn next_due(&self, retention: std::time::Duration) -> Option<Millis> {
        let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        [
            self.expiries.first().map(|(at, _)| *at),
            self.group_expiries.first().map(|(at, _)| *at),
            self.ended
                .front()
                .map(|(at, _)| Millis(at.0.saturating_add(retention_ms))),
            self.transfers
                .values()
                .map(|open| Millis(open.at.0 + 1000))
                .min(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    pub fn expire_due(&mut self, now: Millis, limit: u32, retention: std::time::Duration) -> u32 {
        // Groups first: a member whose hold and group end together is released with its group.
        let due_groups: Vec<GroupId> = self
            .group_expiries
            .iter()
            .take_while(|(at, _)| *at <= now)
            .map(|(_, id)| id.clone())
            .collect();
        let mut ended = 0;
        for group in &due_groups {
            ended += self.fail_group_if_due(group, now);
        }
        let due: Vec<ReservationId> = self
            .expiries
            .iter()
            .take_while(|(at, _)| *at <= now)
            .take(limit as usize)
            .map(|(_, id)| id.clone())
            .collect();
        for id in &due {
            self.release(id, ReservationStatus::Expired, now);
        }
        // Ended reservations (outside groups) leave memory after the retention; their
        // idempotency records stay, so a replay finds the id and reads the database.
        let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        loop {
            match self.ended.front() {
                Some((at, _)) if at.0.saturating_add(retention_ms) <= now.0 => {
                    if let Some((_, id)) = self.ended.pop_front() {
                        self.reservations.remove(&id);
                    }
                }
                _ => break,
            }
        }
        ended + due.len() as u32
    }
}
