//! The work index in memory (`engine::work`): the same two lists as on Redis, behind one
//! mutex, on this process's clock. Writers touch it only when their lease runs short, so a
//! decision takes no global lock.

use super::{lock, MemoryEngine};
use crate::domain::{CampaignId, Millis};
use crate::engine::work::{Active, Incarnation, Leases, Leftover, WorkIndex, CLAIM};
use crate::engine::EngineError;
use async_trait::async_trait;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::time::Instant;

/// Both lists.
#[derive(Default)]
pub struct WorkLists {
    /// Campaign → end of its lease (ms).
    active: HashMap<CampaignId, i64>,
    /// Campaign → when it falls due (ms), and the same ordered by time.
    due: HashMap<CampaignId, i64>,
    by_time: BTreeSet<(i64, CampaignId)>,
    /// The incarnation whose campaigns were all filed.
    filed: Option<String>,
}

impl WorkLists {
    fn set_due(&mut self, campaign: &CampaignId, at: Option<i64>) {
        if let Some(old) = self.due.remove(campaign) {
            self.by_time.remove(&(old, campaign.clone()));
        }
        if let Some(at) = at {
            self.due.insert(campaign.clone(), at);
            self.by_time.insert((at, campaign.clone()));
        }
    }

    /// Files `campaign` under `at` unless it is filed earlier already (Redis's `ZADD LT`).
    fn lower_due(&mut self, campaign: &CampaignId, at: i64) {
        let at = self.due.get(campaign).map_or(at, |old| (*old).min(at));
        self.set_due(campaign, Some(at));
    }

    pub fn forget(&mut self, campaign: &CampaignId) {
        self.active.remove(campaign);
        self.set_due(campaign, None);
    }
}

impl MemoryEngine {
    fn lists(&self) -> std::sync::MutexGuard<'_, WorkLists> {
        self.work.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Before a change of `campaign`: a lease on the active list, taken only when the one
    /// this process holds has less than [`MARGIN`] left.
    pub(super) fn touch(&self, campaign: &CampaignId) {
        let now = Instant::now();
        if self.leases.fresh(campaign, now) {
            return;
        }
        let ends = Millis::now().0 + self.leases.lease.as_millis() as i64;
        let mut lists = self.lists();
        let lease = lists.active.entry(campaign.clone()).or_insert(ends);
        *lease = (*lease).max(ends);
        drop(lists);
        self.leases.took(campaign, now);
    }
}

#[async_trait]
impl WorkIndex for MemoryEngine {
    async fn announce(&self, campaign: &CampaignId) -> Result<(), EngineError> {
        self.leases.forget(campaign);
        self.touch(campaign);
        Ok(())
    }

    async fn active(&self) -> Result<Active, EngineError> {
        let lists = self.lists();
        Ok(Active {
            now: Millis::now().0,
            born: self.dataset.to_string(),
            leases: lists
                .active
                .iter()
                .map(|(campaign, ends)| (campaign.clone(), *ends))
                .collect(),
        })
    }

    async fn leftover(&self, campaign: &CampaignId, _now: Millis) -> Result<Leftover, EngineError> {
        let Some(slot) = self.slot(campaign) else {
            return Ok(Leftover {
                exists: false,
                events: 0,
                next_due: None,
            });
        };
        self.calls.fetch_add(1, Ordering::Relaxed);
        let slot = lock(&slot);
        Ok(Leftover {
            exists: true,
            events: slot.outbox.backlog().0,
            next_due: slot.next_due(self.retention),
        })
    }

    async fn retire(
        &self,
        campaign: &CampaignId,
        lease_end: i64,
        next_due: Option<Millis>,
    ) -> Result<bool, EngineError> {
        let mut lists = self.lists();
        if lists.active.get(campaign) != Some(&lease_end) || lease_end > Millis::now().0 {
            return Ok(false);
        }
        lists.active.remove(campaign);
        if let Some(due) = next_due {
            lists.lower_due(campaign, due.0);
        }
        Ok(true)
    }

    async fn claim_due(
        &self,
        now: Millis,
        max: usize,
    ) -> Result<(i64, Vec<CampaignId>), EngineError> {
        let until = now.0 + CLAIM.as_millis() as i64;
        let mut lists = self.lists();
        let due: Vec<CampaignId> = lists
            .by_time
            .iter()
            .take_while(|(at, _)| *at <= now.0)
            .take(max.max(1))
            .map(|(_, campaign)| campaign.clone())
            .collect();
        let mut claimed = Vec::with_capacity(due.len());
        for campaign in due {
            lists.set_due(&campaign, Some(until));
            if !lists.active.contains_key(&campaign) {
                claimed.push(campaign);
            }
        }
        Ok((until, claimed))
    }

    async fn file_due(
        &self,
        campaign: &CampaignId,
        claimed_until: i64,
        now: Millis,
        next_due: Option<Millis>,
    ) -> Result<(), EngineError> {
        let mut lists = self.lists();
        if lists.active.contains_key(campaign)
            || lists.due.get(campaign) != Some(&claimed_until)
            || now.0 >= claimed_until
        {
            return Ok(());
        }
        lists.set_due(campaign, next_due.map(|due| due.0));
        Ok(())
    }

    async fn file(&self, campaign: &CampaignId, due: Millis) -> Result<(), EngineError> {
        let mut lists = self.lists();
        lists.lower_due(campaign, due.0);
        Ok(())
    }

    fn background_calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    fn leases(&self) -> &Leases {
        &self.leases
    }
}

#[async_trait]
impl Incarnation for MemoryEngine {
    async fn incarnation(&self) -> Result<String, EngineError> {
        Ok(self.dataset.to_string())
    }

    async fn filed(&self) -> Result<Option<String>, EngineError> {
        Ok(self.lists().filed.clone())
    }

    async fn set_filed(&self, incarnation: &str) -> Result<(), EngineError> {
        self.lists().filed = Some(incarnation.to_owned());
        Ok(())
    }
}
