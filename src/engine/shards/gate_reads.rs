//! The sold-out gate's two reads of a sharded campaign as a whole.

use crate::domain::CampaignId;
use crate::engine::{Engine, EngineError, Probe, RecordsSince, ShardState};

impl Engine {
    /// Sold out when every shard is dry with no transfer open; the records of every shard,
    /// shard by shard, continuing where the gate's last read of each stopped (a `from` that
    /// is not where the last read ended starts over: `total` 0). The shards are read one at
    /// a time, so the set is checked afterwards: every shard still dry, as many records.
    pub(in crate::engine) async fn sold_out_records(
        &self,
        campaign: &CampaignId,
        from: u64,
        limit: u64,
    ) -> Result<Option<RecordsSince>, EngineError> {
        let n = match self.shards_of(campaign).await? {
            Some(n) if n > 1 => n,
            _ => {
                return self
                    .backing
                    .reads()
                    .sold_out_records(campaign, from, limit)
                    .await
            }
        };
        let dry = |states: &[Option<ShardState>]| {
            states
                .iter()
                .all(|s| s.is_some_and(|s| s.available == 0 && s.outgoing == 0))
        };
        let before = self.states(campaign, n).await?;
        if !dry(&before) {
            return Ok(None);
        }
        let mut offsets = self
            .shards
            .gate_offsets
            .get(campaign)
            .map(|o| o.clone())
            .unwrap_or_else(|| vec![0; usize::from(n)]);
        if from != offsets.iter().sum::<u64>() {
            self.shards
                .gate_offsets
                .insert(campaign.clone(), vec![0; usize::from(n)]);
            if from != 0 {
                return Ok(Some(RecordsSince::default()));
            }
            offsets = vec![0; usize::from(n)];
        }
        let mut since = RecordsSince::default();
        let mut left = limit.max(1);
        for k in 0..n {
            let shard = campaign.shard(k);
            let page = if left == 0 {
                None
            } else {
                self.backing
                    .reads()
                    .sold_out_records(&shard, offsets[usize::from(k)], left)
                    .await?
            };
            let total = match page {
                Some(page) => {
                    let read = page.records.len() as u64;
                    offsets[usize::from(k)] += read;
                    left -= read.min(left);
                    since.records.extend(page.records);
                    page.total
                }
                // Not paged this call: its count as first read (checked again below).
                None if left == 0 => before[usize::from(k)].map_or(0, |s| s.records),
                None => return Ok(None),
            };
            since.total += total;
        }
        // Still dry everywhere, with as many records as read: the set is whole as of now.
        let after = self.states(campaign, n).await?;
        let records: u64 = after.iter().flatten().map(|s| s.records).sum();
        if !dry(&after) || records != since.total {
            self.shards.gate_offsets.remove(campaign);
            return Ok(None);
        }
        self.shards.gate_offsets.insert(campaign.clone(), offsets);
        Ok(Some(since))
    }

    /// Units in flight between shards count as available: they will be.
    pub(in crate::engine) async fn probe(
        &self,
        campaign: &CampaignId,
    ) -> Result<Option<Probe>, EngineError> {
        let n = match self.shards_of(campaign).await? {
            Some(n) if n > 1 => n,
            _ => return self.backing.reads().probe(campaign).await,
        };
        let mut whole = Probe {
            available: 0,
            idempotency_records: 0,
        };
        for state in self.states(campaign, n).await? {
            let Some(state) = state else {
                return Ok(None);
            };
            whole.available += state.available + state.outgoing;
            whole.idempotency_records += state.records;
        }
        Ok(Some(whole))
    }
}
