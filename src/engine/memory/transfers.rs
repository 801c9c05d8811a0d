//! Moving units between the shards of a sharded campaign ([`ShardOps`]), each step under
//! the shard's mutex.

use super::campaign::Slot;
use super::MemoryEngine;
use crate::domain::CampaignId;
use crate::engine::backend::{Claim, Given, OpenTransfer, ShardOps, ShardState, Transfer};
use crate::engine::EngineError;
use async_trait::async_trait;

impl Slot {
    /// Takes units for a transfer to another shard (see `ShardOps::take_units`).
    pub fn take_units(&mut self, transfer: &Transfer) -> u64 {
        if self.available < transfer.least || self.available == 0 {
            return 0;
        }
        let take = transfer.want.min(self.available);
        self.available -= take;
        self.campaign.stock -= take;
        self.outgoing += take;
        self.version += 1;
        self.transfers.insert(
            transfer.id.clone(),
            OpenTransfer {
                id: transfer.id.clone(),
                to: transfer.to,
                units: take,
                at: transfer.now,
            },
        );
        take
    }

    /// Gives a transfer's units, once per transfer id.
    pub fn give_units(&mut self, transfer: &str, units: u64) -> Given {
        if !self.received.insert(transfer.to_owned()) {
            return Given::Before;
        }
        self.available += units;
        self.campaign.stock += units;
        self.version += 1;
        Given::Now
    }

    /// Closes a transfer this shard opened.
    pub fn transfer_done(&mut self, transfer: &str) {
        if let Some(open) = self.transfers.remove(transfer) {
            self.outgoing -= open.units;
            self.version += 1;
        }
    }
}

#[async_trait]
impl ShardOps for MemoryEngine {
    async fn shard_state(&self, shard: &CampaignId) -> Result<Option<ShardState>, EngineError> {
        Ok(self.with_slot(shard, None, |slot| {
            Some(ShardState {
                stock: slot.campaign.stock,
                available: slot.available,
                outgoing: slot.outgoing,
                version: slot.version,
                total: slot.total,
                records: slot.record_order.len() as u64,
            })
        }))
    }

    async fn take_units(
        &self,
        shard: &CampaignId,
        transfer: &Transfer,
    ) -> Result<u64, EngineError> {
        Ok(self.decide(shard, 0, |slot| slot.take_units(transfer)))
    }

    async fn give_units(
        &self,
        shard: &CampaignId,
        transfer: &str,
        units: u64,
    ) -> Result<Given, EngineError> {
        let given = self.decide(shard, Given::Missing, |slot| {
            slot.give_units(transfer, units)
        });
        Ok(given)
    }

    async fn transfer_done(&self, shard: &CampaignId, transfer: &str) -> Result<(), EngineError> {
        self.decide(shard, (), |slot| slot.transfer_done(transfer));
        Ok(())
    }

    /// Every campaign in memory is listed.
    async fn relist(&self, _shard: &CampaignId) -> Result<(), EngineError> {
        Ok(())
    }

    async fn claim_key(
        &self,
        shard: &CampaignId,
        key: &crate::domain::ScopedKey,
        fingerprint: &str,
    ) -> Result<Claim, EngineError> {
        Ok(self.with_slot(shard, Claim::Missing, |slot| {
            let first = slot
                .claims
                .entry(key.to_string())
                .or_insert_with(|| fingerprint.to_owned());
            if first == fingerprint {
                Claim::Mine
            } else {
                Claim::Other
            }
        }))
    }

    async fn open_transfers(&self, shard: &CampaignId) -> Result<Vec<OpenTransfer>, EngineError> {
        Ok(self.with_slot(shard, Vec::new(), |slot| {
            slot.transfers.values().cloned().collect()
        }))
    }
}
