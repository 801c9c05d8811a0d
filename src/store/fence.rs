//! The fence: which events of a batch the database applies, and which it sets aside.

use crate::domain::Event;
use crate::engine::Epochs;
use std::collections::HashMap;

/// Which events of a batch may be applied: those of campaigns the database knows, read
/// under the load epoch the database recorded for their campaign (or under any, for
/// campaigns from before fencing recorded none).
pub(super) struct Fence<'a> {
    epochs: &'a Epochs,
    loaded: HashMap<String, Option<String>>,
}

impl<'a> Fence<'a> {
    pub(super) fn of(epochs: &'a Epochs, loaded: Vec<(String, Option<String>)>) -> Self {
        Fence {
            epochs,
            loaded: loaded.into_iter().collect(),
        }
    }

    /// (events to apply, events to set aside with their reason); the applied ones are
    /// borrowed (every event of a normal batch), only the set-aside ones copied.
    pub(super) fn split<'e>(
        &self,
        events: &'e [Event],
    ) -> (Vec<&'e Event>, Vec<(Event, super::dead::Reason, String)>) {
        let mut accepted = Vec::with_capacity(events.len());
        let mut dead = Vec::new();
        for event in events {
            match self.loaded.get(event.campaign_id.as_str()) {
                None => dead.push((
                    event.clone(),
                    super::dead::Reason::UnknownCampaign,
                    "the database has no such campaign".to_owned(),
                )),
                Some(Some(loaded)) if loaded != self.epochs.of(&event.campaign_id) => dead.push((
                    event.clone(),
                    super::dead::Reason::Fenced,
                    format!(
                        "decided under the campaign's load {:?}; it was rebuilt as {loaded:?} without it",
                        self.epochs.of(&event.campaign_id)
                    ),
                )),
                Some(_) => accepted.push(event),
            }
        }
        (accepted, dead)
    }
}
