//! A campaign's events waiting for the persister, kept under the campaign's lock so an event
//! is appended in the same step as its change. One reader group: the embedded engine serves
//! one process, whose persister is its only consumer.

use crate::domain::{CampaignId, Change, Event, Millis, StreamPosition};
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct Outbox {
    /// Events not yet handed out, in order.
    queue: VecDeque<Event>,
    /// Events handed out but not yet acknowledged, with when they were handed out.
    in_flight: BTreeMap<StreamPosition, (Event, Instant)>,
    /// The position of the last event, so positions strictly increase — across restarts
    /// too, like Redis stream ids: `<wall-clock ms>-<seq within that ms>`, so the database,
    /// which orders a reservation's states by position, never takes a new state for an old.
    last: StreamPosition,
}

impl Outbox {
    /// Appends an event, under the same lock as the change it records.
    pub fn push(&mut self, campaign: &CampaignId, at: Millis, change: Change) {
        let now = Millis::now().0;
        self.last = if now > self.last.ms {
            StreamPosition {
                ms: now,
                seq: 0,
                index: 0,
            }
        } else {
            StreamPosition {
                ms: self.last.ms,
                seq: self.last.seq + 1,
                index: 0,
            }
        };
        self.queue.push_back(Event {
            campaign_id: campaign.clone(),
            position: self.last,
            at,
            change,
        });
    }

    /// Moves events into `out` until it holds `max`: first those handed out more than
    /// `reclaim_after` ago and never acknowledged (their reader died), then new ones.
    pub fn hand_out(&mut self, out: &mut Vec<Event>, max: usize, reclaim_after: Duration) {
        let now = Instant::now();
        for (event, handed_out) in self.in_flight.values_mut() {
            if out.len() < max && now.duration_since(*handed_out) >= reclaim_after {
                *handed_out = now;
                out.push(event.clone());
            }
        }
        while out.len() < max {
            let Some(event) = self.queue.pop_front() else {
                break;
            };
            self.in_flight.insert(event.position, (event.clone(), now));
            out.push(event);
        }
    }

    pub fn ack(&mut self, position: &StreamPosition) {
        self.in_flight.remove(position);
    }

    /// The position of the last event appended.
    pub fn last(&self) -> StreamPosition {
        self.last
    }

    /// Whether every event up to `position` is acknowledged.
    pub fn acknowledged_through(&self, position: StreamPosition) -> bool {
        let first_waiting = self
            .in_flight
            .keys()
            .next()
            .copied()
            .into_iter()
            .chain(self.queue.front().map(|e| e.position))
            .min();
        first_waiting.is_none_or(|first| first > position)
    }

    /// (events not acknowledged, of them handed out, when the oldest happened)
    pub fn backlog(&self) -> (u64, u64, Option<Millis>) {
        let oldest = self
            .in_flight
            .values()
            .map(|(e, _)| e.at)
            .chain(self.queue.front().map(|e| e.at))
            .min();
        let pending = self.in_flight.len() as u64;
        (pending + self.queue.len() as u64, pending, oldest)
    }
}
