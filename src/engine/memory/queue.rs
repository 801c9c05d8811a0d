//! A campaign's waiting room, under the campaign's mutex. Twin of `src/engine/redis/scripts/queue_*.lua`.

use super::campaign::Slot;
use crate::domain::{
    Line, LinePoint, Millis, Refusal, Ticket, TicketId, TicketStatus, UserId, Window,
};
use crate::engine::{Admission, JoinOutcome, JoinRequest, PassClaim, PassUse};
use std::collections::{BTreeSet, HashMap, VecDeque};

/// The waiting room's state.
#[derive(Default)]
pub struct Queue {
    /// Every ticket: its user and, once admitted, when its pass lapses.
    tickets: HashMap<TicketId, (UserId, Option<Millis>)>,
    by_user: HashMap<UserId, TicketId>,
    /// The idempotency key of the join that made each ticket → its user (one per ticket:
    /// later joins answer the user's ticket whatever their key, and are not remembered).
    keys: HashMap<String, UserId>,
    /// Tickets taken before the draw, with their lots.
    undrawn: Vec<(u64, TicketId)>,
    drawn: bool,
    /// Waiting tickets in order; the front one has sequence number `head`.
    line: VecDeque<TicketId>,
    seq: HashMap<TicketId, u64>,
    head: u64,
    /// Admitted passes not used nor lapsed, by when they lapse.
    outstanding: BTreeSet<(Millis, TicketId)>,
    /// The admission clock: budget up to this instant is spent (milliseconds, fractional).
    clock: f64,
}

impl Queue {
    /// Orders the tickets taken before the start by their lots, once `starts_at` came.
    fn draw_if_due(&mut self, starts_at: Option<Millis>, now: Millis) {
        if self.drawn || starts_at.is_some_and(|s| now < s) {
            return;
        }
        self.drawn = true;
        let mut undrawn = std::mem::take(&mut self.undrawn);
        undrawn.sort_unstable();
        for (_, ticket) in undrawn {
            self.push(ticket);
        }
    }

    fn push(&mut self, ticket: TicketId) {
        self.seq
            .insert(ticket.clone(), self.head + self.line.len() as u64);
        self.line.push_back(ticket);
    }

    /// Everything admitted so far left the front: `head` counts them. The memory engine's
    /// line lives as long as the process, so one generation.
    fn point(&self) -> LinePoint {
        LinePoint {
            admitted: self.head,
            generation: String::new(),
        }
    }

    fn waiting(&self) -> u64 {
        (self.line.len() + self.undrawn.len()) as u64
    }
}

impl Slot {
    /// Where the ticket stands; the draw happens first if it is due.
    fn ticket_now(&mut self, id: &TicketId, now: Millis) -> Option<Ticket> {
        let (starts_at, window) = (self.campaign.starts_at, self.campaign.window(now));
        self.queue.draw_if_due(starts_at, now);
        let (user, admitted) = self.queue.tickets.get(id)?.clone();
        let status = match admitted {
            Some(until) if now < until => TicketStatus::Admitted { until },
            Some(_) => TicketStatus::Expired,
            None if window == Window::After => TicketStatus::Expired,
            None if self.available == 0 => TicketStatus::SoldOut,
            None => TicketStatus::Waiting {
                position: self.queue.seq.get(id).map(|seq| seq - self.queue.head + 1),
            },
        };
        Some(Ticket {
            id: id.clone(),
            user_id: user,
            status,
            line: self.queue.point(),
        })
    }

    pub fn line(&self) -> Line {
        Line {
            point: self.queue.point(),
            available: self.available,
        }
    }

    pub fn ticket(&mut self, id: &TicketId, now: Millis) -> Option<Ticket> {
        self.ticket_now(id, now)
    }

    pub fn join_queue(&mut self, request: &JoinRequest) -> JoinOutcome {
        if self.campaign.queue.is_none() {
            return JoinOutcome::Refused(Refusal::NoWaitingRoom);
        }
        if self.campaign.window(request.now) == Window::After {
            return JoinOutcome::Refused(Refusal::Ended);
        }
        let key = request.idempotency_key.as_str();
        if let Some(user) = self.queue.keys.get(key) {
            if *user != request.user_id {
                return JoinOutcome::KeyReused;
            }
        }
        if let Some(existing) = self.queue.by_user.get(&request.user_id).cloned() {
            return match self.ticket_now(&existing, request.now) {
                Some(ticket) => JoinOutcome::Existing(ticket),
                None => JoinOutcome::Refused(Refusal::CampaignNotFound),
            };
        }
        let id = request.ticket_id.clone();
        let queue = &mut self.queue;
        queue.keys.insert(key.to_owned(), request.user_id.clone());
        queue
            .tickets
            .insert(id.clone(), (request.user_id.clone(), None));
        queue.by_user.insert(request.user_id.clone(), id.clone());
        queue.draw_if_due(self.campaign.starts_at, request.now);
        if queue.drawn {
            queue.push(id.clone());
        } else {
            queue.undrawn.push((request.draw, id.clone()));
        }
        match self.ticket_now(&id, request.now) {
            Some(ticket) => JoinOutcome::Joined(ticket),
            None => JoinOutcome::Refused(Refusal::CampaignNotFound),
        }
    }

    pub fn admit(&mut self, now: Millis) -> Admission {
        let Some(rule) = self.campaign.queue else {
            return Admission::default();
        };
        self.queue.draw_if_due(self.campaign.starts_at, now);
        let queue = &mut self.queue;
        let waiting = queue.waiting();
        if self.campaign.window(now) != Window::Open {
            return Admission {
                admitted: 0,
                waiting,
                room: 0,
            };
        }
        while let Some(first) = queue.outstanding.first() {
            if first.0 > now {
                break;
            }
            queue.outstanding.pop_first();
        }
        let room = self
            .available
            .saturating_sub(queue.outstanding.len() as u64);
        let rate = f64::from(rule.admit_per_second);
        let burst = (rate / 10.0).floor().max(1.0);
        let clock = queue.clock.max(now.0 as f64 - burst * 1000.0 / rate);
        let budget = ((now.0 as f64 - clock) * rate / 1000.0).floor() as u64;
        let admitted = budget.min(room).min(queue.line.len() as u64);
        if admitted == 0 {
            return Admission {
                admitted: 0,
                waiting,
                room,
            };
        }
        let until = now.plus_seconds(rule.pass_seconds);
        for _ in 0..admitted {
            let Some(ticket) = queue.line.pop_front() else {
                break;
            };
            queue.head += 1;
            queue.seq.remove(&ticket);
            if let Some(entry) = queue.tickets.get_mut(&ticket) {
                entry.1 = Some(until);
            }
            queue.outstanding.insert((until, ticket));
        }
        queue.clock = clock + admitted as f64 * 1000.0 / rate;
        Admission {
            admitted,
            waiting: waiting - admitted,
            room: room - admitted,
        }
    }

    /// See `WaitingRoom::claim_pass`: a pass owed nothing (used before) takes only a unit
    /// no unused pass is owed, and is owed it until `pass_used`.
    pub fn claim_pass(&mut self, pass: &PassUse<'_>) -> Option<PassClaim> {
        let PassUse {
            ticket,
            expires,
            quantity,
            key,
            group,
            now,
        } = *pass;
        let seen = if group {
            self.group_idempotency.contains_key(key.as_str())
        } else {
            self.idempotency.get(key.as_str()).is_some()
        };
        if seen {
            return Some(PassClaim::Replay);
        }
        let queue = &mut self.queue;
        while queue
            .outstanding
            .first()
            .is_some_and(|first| first.0 <= now)
        {
            queue.outstanding.pop_first();
        }
        let until = queue
            .tickets
            .get(ticket)
            .and_then(|entry| entry.1)
            .unwrap_or(expires);
        let entry = (until, ticket.clone());
        if queue.outstanding.contains(&entry) {
            return Some(PassClaim::Kept);
        }
        let room = self
            .available
            .saturating_sub(queue.outstanding.len() as u64);
        if room < quantity {
            return None;
        }
        queue.outstanding.insert(entry);
        Some(PassClaim::Owed)
    }

    pub fn pass_used(&mut self, ticket: &TicketId) {
        let until = self.queue.tickets.get(ticket).and_then(|entry| entry.1);
        let removed =
            until.is_some_and(|until| self.queue.outstanding.remove(&(until, ticket.clone())));
        if !removed {
            // Owed under the pass's own expiry (a ticket this engine does not know).
            self.queue.outstanding.retain(|(_, owed)| owed != ticket);
        }
    }
}
