//! Hot-SKU shards: a campaign created with `shards: n > 1` is kept by the engine below as n
//! campaigns of its own — shard 0 under the campaign's id, shard k under `<id>.<k>`
//! ([`CampaignId::shard`]) — each with its own hash tag (so its own slot, and in a cluster
//! possibly its own node), its own units, users, idempotency records, events and load epoch,
//! each deciding atomically on its own. The [`Engine`]'s operations make them one campaign
//! again for everything above it, with the steps here.
//!
//! - A user's attempts go to shard `hash(user) mod n`: the per-user limit and the user's
//!   idempotency keys live in one shard and stay exact. Reservation ids name their shard
//!   (`res_<ULID>_<id>.<k>`), so confirm, cancel and extend go straight to it.
//! - When the user's shard runs dry while others have units, units move: `take` on the
//!   richest shard (its stock and available go down, an open transfer record keeps them
//!   counted), `give` on the dry one (once per transfer id), `done` on the donor (the record
//!   closes). A crash in between leaves the record open; the reaper completes it (give is
//!   idempotent). So the campaign sells its whole stock however users hash, and `sold_out`
//!   means every shard is dry — apart from the few milliseconds a refill takes.
//! - The campaign's total stock is kept by shard 0 (`total`): stock changes go to shard 0,
//!   which reports the total in its event, so the database keeps the campaign's stock.
//! - A lost shard (a cluster node restarted empty) is rebuilt alone, under its own epoch:
//!   its reservations from the database, and as stock its live units plus what the total
//!   leaves after the present shards' stock and open transfers, read consistently (every
//!   transfer bumps its shards' versions; the read is repeated until no version moved).
//!
//! Group buys and campaigns with a waiting room are not sharded (refused at creation).

mod gate_reads;
mod load;

use super::{Engine, EngineError, Given, ReserveRequest, ShardOps, ShardState, Transfer};
use crate::domain::{Campaign, CampaignId, CampaignState, Millis, ScopedKey, UserId};
use dashmap::DashMap;
use futures::future::try_join_all;
use std::sync::Arc;
use std::time::Duration;

/// The shard of a campaign with `n` shards that `user`'s attempts go to: FNV-1a of the user
/// id, stable across processes and versions.
pub fn shard_of(user: &UserId, n: u8) -> u8 {
    fnv_shard(user.as_str(), n)
}

/// The shard a store's idempotency key is claimed in.
pub fn key_shard(key: &ScopedKey, n: u8) -> u8 {
    fnv_shard(key.as_str(), n)
}

fn fnv_shard(text: &str, n: u8) -> u8 {
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    (hash % u64::from(n.max(1))) as u8
}

/// Shard 0's state (`first`) and the other shards' summed into the campaign's; `None` if a
/// shard is missing.
pub(in crate::engine) fn summed(
    id: &CampaignId,
    first: CampaignState,
    others: impl IntoIterator<Item = Option<CampaignState>>,
) -> Option<CampaignState> {
    let mut whole = first;
    whole.campaign.id = id.clone();
    for part in others {
        let part = part?;
        whole.campaign.stock += part.campaign.stock;
        whole.available += part.available;
        whole.held += part.held;
        whole.confirmed += part.confirmed;
    }
    Some(whole)
}

/// Refills an attempt that found its shard dry may ask for before it is answered.
/// How long an attempt keeps gathering units into its shard while the campaign as a whole has
/// enough for it (others may take them first); past this it answers 503 `overloaded`, never a
/// `sold_out` the campaign could serve.
pub(in crate::engine) const REFILL_FOR: Duration = Duration::from_secs(2);

/// How old an open transfer must be before the reaper completes it: a live one takes a few
/// milliseconds.
pub const STALE_TRANSFER: Duration = Duration::from_secs(1);

/// What this node keeps about sharded campaigns.
#[derive(Clone, Default)]
pub struct Shards {
    /// Shards per campaign; fixed at creation, so never stale.
    counts: Arc<DashMap<CampaignId, u8>>,
    /// One gatherer per campaign at a time on this instance: an attempt short of units moves
    /// them into its shard and asks again before the next one moves any, so attempts do not
    /// take each other's gathered units back and forth.
    refilling: Arc<DashMap<CampaignId, Arc<tokio::sync::Mutex<()>>>>,
    /// What the sold-out gate has read of each shard's idempotency records so far.
    gate_offsets: Arc<DashMap<CampaignId, Vec<u64>>>,
    /// One read of an unknown campaign's shard count at a time on this instance.
    looking: Arc<DashMap<CampaignId, Arc<tokio::sync::Mutex<()>>>>,
}

impl Shards {
    /// The campaign's shard count, if this node knows it.
    pub fn known(&self, id: &CampaignId) -> Option<u8> {
        self.counts.get(id).map(|n| *n)
    }

    /// Forgets a campaign that left the engine.
    pub fn forget(&self, id: &CampaignId) {
        self.counts.remove(id);
        self.gate_offsets.remove(id);
    }
}

/// The engine's steps over shards.
impl Engine {
    /// The campaign's shard count; `None` if shard 0 is missing.
    pub(in crate::engine) async fn shards_of(
        &self,
        id: &CampaignId,
    ) -> Result<Option<u8>, EngineError> {
        if let Some(n) = self.shards.known(id) {
            return Ok(Some(n));
        }
        // The attempts that find it unknown together (the first burst of a sale) read it
        // once: the first reads, the others wait and find it known.
        let turn = Arc::clone(self.shards.looking.entry(id.clone()).or_default().value());
        let found = {
            let _one_at_a_time = turn.lock().await;
            match self.shards.known(id) {
                Some(n) => Ok(Some(n)),
                None => self.backing.reads().campaign(id).await.map(|state| {
                    state.map(|state| {
                        self.remember_config(&state.campaign);
                        self.remember_shards(&state.campaign)
                    })
                }),
            }
        };
        drop(turn);
        self.shards
            .looking
            .remove_if(id, |_, turn| Arc::strong_count(turn) == 1);
        found
    }

    /// Keeps the campaign's shard count; returns it.
    pub(in crate::engine) fn remember_shards(&self, campaign: &Campaign) -> u8 {
        let n = campaign.shards.max(1);
        self.shards.counts.insert(campaign.id.clone(), n);
        n
    }

    /// `read` of shards `from..n`, all at once, in shard order.
    async fn each_shard<'a, T, F, Fut>(
        &'a self,
        id: &CampaignId,
        from: u8,
        n: u8,
        read: F,
    ) -> Result<Vec<T>, EngineError>
    where
        F: Fn(&'a dyn ShardOps, CampaignId) -> Fut,
        Fut: std::future::Future<Output = Result<T, EngineError>>,
    {
        try_join_all((from..n).map(|k| read(self.backing.shard_ops(), id.shard(k)))).await
    }

    /// Every shard's state, `None` for missing ones.
    pub(in crate::engine) async fn states(
        &self,
        id: &CampaignId,
        n: u8,
    ) -> Result<Vec<Option<ShardState>>, EngineError> {
        self.each_shard(id, 0, n, |inner, shard| async move {
            inner.shard_state(&shard).await
        })
        .await
    }

    /// The campaign's gathering turn (see `refilling`).
    pub(in crate::engine) fn gathering(&self, id: &CampaignId) -> Arc<tokio::sync::Mutex<()>> {
        Arc::clone(self.shards.refilling.entry(id.clone()).or_default().value())
    }

    /// Moves units into shard `to` from the others, richest first, until it has `target`
    /// available (or nothing is left to take). `false` once the campaign as a whole — every
    /// shard's available units and those moving between shards — has fewer than `target`:
    /// then, and only then, the attempt is sold out.
    pub(in crate::engine) async fn refill(
        &self,
        id: &CampaignId,
        n: u8,
        to: u8,
        target: u64,
    ) -> Result<bool, EngineError> {
        let receiver = id.shard(to);
        let states = self.states(id, n).await?;
        let Some(state) = states[usize::from(to)] else {
            return Ok(false);
        };
        // Another refill may have just filled it.
        if state.available >= target {
            return Ok(true);
        }
        let whole: u64 = states
            .iter()
            .flatten()
            .map(|s| s.available + s.outgoing)
            .sum();
        if whole < target {
            return Ok(false);
        }
        let need = target - state.available;
        let mut donors: Vec<(u8, u64)> = states
            .iter()
            .enumerate()
            .filter(|(k, _)| *k as u8 != to)
            .filter_map(|(k, s)| s.map(|s| (k as u8, s.available)))
            .filter(|(_, available)| *available > 0)
            .collect();
        donors.sort_by_key(|&(_, available)| std::cmp::Reverse(available));
        let mut got = 0;
        for (k, available) in donors {
            if got >= need {
                break;
            }
            // Half of what the donor has, so the shards drain together, and at least what
            // is still needed.
            let want = (need - got).max(available / 2);
            let transfer = Transfer {
                id: format!("x{}", ulid::Ulid::new()),
                to,
                want,
                least: 1,
                now: Millis::now(),
            };
            let donor = id.shard(k);
            let taken = self
                .backing
                .shard_ops()
                .take_units(&donor, &transfer)
                .await?;
            if taken == 0 {
                continue;
            }
            metrics::counter!(crate::metrics::SHARD_TRANSFERS).increment(1);
            metrics::counter!(crate::metrics::SHARD_TRANSFERRED_UNITS).increment(taken);
            self.complete(&donor, &receiver, &transfer.id, taken)
                .await?;
            got += taken;
        }
        // Short of `target` still: the rest is moving between shards or was just taken by
        // others; the caller asks again.
        Ok(true)
    }

    /// Gives a taken transfer's units and closes it; a missing receiver leaves it open.
    async fn complete(
        &self,
        donor: &CampaignId,
        receiver: &CampaignId,
        transfer: &str,
        units: u64,
    ) -> Result<(), EngineError> {
        match self
            .backing
            .shard_ops()
            .give_units(receiver, transfer, units)
            .await?
        {
            Given::Missing => {
                tracing::warn!(%donor, %receiver, transfer, units, "a shard to refill is missing; the transfer stays open until it is rebuilt");
                Ok(())
            }
            Given::Now | Given::Before => {
                self.backing
                    .shard_ops()
                    .transfer_done(donor, transfer)
                    .await
            }
        }
    }

    /// Completes the campaign's transfers older than [`STALE_TRANSFER`] (their mover died).
    pub(in crate::engine) async fn complete_stale(
        &self,
        id: &CampaignId,
        n: u8,
        now: Millis,
    ) -> Result<(), EngineError> {
        let stale_before = now.0 - STALE_TRANSFER.as_millis() as i64;
        for (k, state) in self.states(id, n).await?.into_iter().enumerate() {
            if state.is_none_or(|s| s.outgoing == 0) {
                continue;
            }
            let donor = id.shard(k as u8);
            for open in self.backing.shard_ops().open_transfers(&donor).await? {
                if open.at.0 > stale_before {
                    continue;
                }
                tracing::info!(%donor, transfer = %open.id, to = open.to, units = open.units, "completing a transfer its mover left open");
                self.complete(&donor, &id.shard(open.to), &open.id, open.units)
                    .await?;
            }
        }
        Ok(())
    }

    /// The shards' states summed into the campaign's, shard 0's (`first`) read already;
    /// `None` if a shard is missing.
    pub(in crate::engine) async fn whole(
        &self,
        id: &CampaignId,
        n: u8,
        first: CampaignState,
    ) -> Result<Option<CampaignState>, EngineError> {
        let reads = self.backing.reads();
        let parts = try_join_all((1..n).map(|k| {
            let shard = id.shard(k);
            async move { reads.campaign(&shard).await }
        }))
        .await?;
        Ok(summed(id, first, parts))
    }

    /// The request for the user's shard.
    pub(in crate::engine) fn routed(request: &ReserveRequest, n: u8) -> ReserveRequest {
        let shard = request.campaign_id.shard(shard_of(&request.user_id, n));
        ReserveRequest {
            reservation_id: request.reservation_id.in_campaign(&shard),
            campaign_id: shard,
            ..request.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_spread_over_every_shard_and_always_to_the_same_one() {
        let mut seen = [0u32; 4];
        for i in 0..1000 {
            let user = UserId::parse(&format!("user-{i}")).expect("valid");
            let k = shard_of(&user, 4);
            assert_eq!(k, shard_of(&user, 4));
            seen[usize::from(k)] += 1;
        }
        assert!(seen.iter().all(|&count| count > 150), "{seen:?}");
    }
}
