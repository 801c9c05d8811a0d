//! Loading a sharded campaign: whichever of its shards are missing, each with its share of
//! the stock, read consistently from the shards that are there.

use super::key_shard;
use crate::domain::{Campaign, CampaignId, StoredReservation};
use crate::engine::{CampaignSnapshot, Engine, EngineError, ShardState};

impl Engine {
    /// Every shard's state as of one instant: read until no shard's version moved between
    /// two reads (at most a few tries; transfers are rare next to reads).
    pub(in crate::engine) async fn consistent_states(
        &self,
        id: &CampaignId,
        n: u8,
    ) -> Result<Vec<Option<ShardState>>, EngineError> {
        let mut states = self.states(id, n).await?;
        for _ in 0..20 {
            let again = self.states(id, n).await?;
            let versions = |s: &[Option<ShardState>]| -> Vec<Option<u64>> {
                s.iter().map(|s| s.map(|s| s.version)).collect()
            };
            if versions(&states) == versions(&again) {
                return Ok(again);
            }
            states = again;
        }
        Err(EngineError::Recovering(format!(
            "the shards of {id} kept moving units while being read"
        )))
    }

    /// Loads the shards of a campaign that are missing (all of them for a new campaign);
    /// a bit per shard loaded by this call (see [`Engine::load`]).
    pub(in crate::engine) async fn load_missing(
        &self,
        snapshot: CampaignSnapshot<'_>,
    ) -> Result<u64, EngineError> {
        let campaign = snapshot.campaign;
        let n = campaign.shards;
        let states = self.consistent_states(&campaign.id, n).await?;
        let missing: Vec<u8> = (0..n).filter(|&k| states[k as usize].is_none()).collect();
        // The present ones, listed again: what an unsharded campaign's no-op load does.
        for k in (0..n).filter(|&k| states[k as usize].is_some()) {
            self.backing
                .shard_ops()
                .relist(&campaign.id.shard(k))
                .await?;
        }
        if missing.is_empty() {
            return Ok(0);
        }
        let total = states[0].and_then(|s| s.total).unwrap_or(campaign.stock);
        let present: u64 = states.iter().flatten().map(|s| s.stock + s.outgoing).sum();
        let of_shard = |k: u8| {
            snapshot
                .reservations
                .iter()
                .filter(move |r| r.reservation.id.shard_campaign().shard_index() == k)
        };
        let live = |k: u8| -> u64 {
            of_shard(k)
                .filter(|r| r.reservation.status.takes_units())
                .map(|r| u64::from(r.reservation.quantity))
                .sum()
        };
        let used: Vec<u64> = missing.iter().map(|&k| live(k)).collect();
        let free = total
            .checked_sub(present + used.iter().sum::<u64>())
            .unwrap_or_else(|| {
                tracing::error!(campaign = %campaign.id, total, present, "the present shards and the lost ones' live units exceed the campaign's stock; the lost shards get none free");
                0
            });
        let count = missing.len() as u64;
        let mut loaded = 0;
        for (i, &k) in missing.iter().enumerate() {
            let share = free / count + u64::from((i as u64) < free % count);
            let shard = Campaign {
                id: campaign.id.shard(k),
                stock: used[i] + share,
                ..campaign.clone()
            };
            let reservations: Vec<_> = of_shard(k).cloned().collect();
            let done = self
                .backing
                .decisions()
                .load_campaign(CampaignSnapshot {
                    campaign: &shard,
                    reservations: &reservations,
                    groups: &[],
                    epoch: snapshot.epoch.clone(),
                    total: (k == 0).then_some(total),
                })
                .await;
            // From the first load on, every shard this call may have loaded is reported
            // (never an error), so the database records the epoch of each: a shard loaded
            // under an epoch the database does not know would have its events fenced out.
            // One that failed and did not load stays missing, and the next rebuild loads it.
            match done {
                Ok(false) => continue,
                Ok(true) => loaded |= 1 << k,
                Err(error) => {
                    tracing::warn!(%error, shard = %shard.id, "loading a shard failed; it may have loaded");
                    loaded |= 1 << k;
                    continue;
                }
            }
            if let Err(error) = self
                .restore_claims(&campaign.id, n, k, snapshot.reservations)
                .await
            {
                tracing::warn!(%error, shard = %shard.id, "restoring a rebuilt shard's key claims failed");
            }
        }
        Ok(loaded)
    }

    /// Claims again, in a rebuilt shard, the store keys of the campaign's reservations that
    /// hash to it.
    async fn restore_claims(
        &self,
        id: &CampaignId,
        n: u8,
        k: u8,
        reservations: &[StoredReservation],
    ) -> Result<(), EngineError> {
        let shard = id.shard(k);
        let claims = reservations.iter().filter_map(|r| {
            let key = r.idempotency_key.as_ref()?;
            (key.is_store() && key_shard(key, n) == k)
                .then(|| (key, r.fingerprint.clone().unwrap_or_default()))
        });
        for (key, fingerprint) in claims {
            self.backing
                .shard_ops()
                .claim_key(&shard, key, &fingerprint)
                .await?;
        }
        Ok(())
    }
}
