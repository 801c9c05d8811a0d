//! Hot-SKU shards: a campaign created with `shards: n > 1` is kept by the engine below as n
//! campaigns of its own — shard 0 under the campaign's id, shard k under `<id>.<k>`
//! ([`CampaignId::shard`]) — each with its own hash tag (so its own slot, and in a cluster
//! possibly its own node), its own units, users, idempotency records, events and load epoch,
//! each deciding atomically on its own. [`Sharded`] in front of the engine makes them one
//! campaign again for everything above it.
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

use super::{
    Admission, Backend, CampaignSnapshot, CancelScope, Engine, EngineError, Extension, GateReads,
    GatedEngine, GroupOutcome, GroupRequest, JoinOutcome, JoinRequest, PassClaim, PassUse, Probe,
    RecordsSince, ReserveOutcome, ReserveRequest, StockOutcome, StockRequest, Transition,
    WaitingRoom,
};
use crate::domain::{
    Campaign, CampaignId, CampaignState, Group, GroupId, Line, Millis, Refusal, Reservation,
    ReservationId, ScopedKey, Ticket, TicketId, UserId,
};
use async_trait::async_trait;
use dashmap::DashMap;
use futures::future::try_join_all;
use std::sync::Arc;
use std::time::Duration;

/// A shard's state as transfers need it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardState {
    pub stock: u64,
    pub available: u64,
    /// Units taken off this shard by transfers not closed yet.
    pub outgoing: u64,
    /// Bumped by every change of `stock` or `outgoing` (transfers, stock changes).
    pub version: u64,
    /// The whole campaign's stock: kept by shard 0 only.
    pub total: Option<u64>,
    /// Its idempotency records (see [`Probe::idempotency_records`]).
    pub records: u64,
}

/// Units moving from one shard to another.
#[derive(Debug, Clone)]
pub struct Transfer {
    pub id: String,
    /// The receiving shard's index.
    pub to: u8,
    /// Units wanted; fewer are taken if fewer are available.
    pub want: u64,
    /// Below this many available, nothing is taken.
    pub least: u64,
    pub now: Millis,
}

/// A transfer a donor opened and has not closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenTransfer {
    pub id: String,
    pub to: u8,
    pub units: u64,
    pub at: Millis,
}

/// What giving a transfer's units came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Given {
    Now,
    Before,
    /// The receiving shard is missing (lost, not rebuilt yet): the transfer stays open.
    Missing,
}

/// What claiming a store's idempotency key came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// First seen now, or before with the same body.
    Mine,
    /// Seen before with another body (another user's attempt).
    Other,
    /// The key's shard is missing.
    Missing,
}

/// The per-shard steps of moving units, each atomic on its shard.
#[async_trait]
pub trait ShardOps: Send + Sync + 'static {
    async fn shard_state(&self, shard: &CampaignId) -> Result<Option<ShardState>, EngineError>;

    /// Takes up to `want` units (none if fewer than `least` are available) and opens the
    /// transfer record; the units taken (0: none).
    async fn take_units(&self, shard: &CampaignId, transfer: &Transfer)
        -> Result<u64, EngineError>;

    async fn give_units(
        &self,
        shard: &CampaignId,
        transfer: &str,
        units: u64,
    ) -> Result<Given, EngineError>;

    /// Closes a transfer on its donor (after its units were given).
    async fn transfer_done(&self, shard: &CampaignId, transfer: &str) -> Result<(), EngineError>;

    async fn open_transfers(&self, shard: &CampaignId) -> Result<Vec<OpenTransfer>, EngineError>;

    /// Lists a shard that exists in the engine's campaign index again (a Redis node that
    /// lost the index gets it back from the recovery pass; see `recovery::restore_all`).
    async fn relist(&self, shard: &CampaignId) -> Result<(), EngineError>;

    /// Claims a store's idempotency key for one body in the key's shard.
    async fn claim_key(
        &self,
        shard: &CampaignId,
        key: &ScopedKey,
        fingerprint: &str,
    ) -> Result<Claim, EngineError>;
}

/// An engine [`Sharded`] can stand in front of.
pub trait ShardableEngine: GatedEngine + ShardOps {}

impl<T: GatedEngine + ShardOps> ShardableEngine for T {}

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
fn summed(
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
const REFILL_FOR: Duration = Duration::from_secs(2);

/// How old an open transfer must be before the reaper completes it: a live one takes a few
/// milliseconds.
pub const STALE_TRANSFER: Duration = Duration::from_secs(1);

/// The engine with sharded campaigns made one campaign again (see the module docs).
#[derive(Clone)]
pub struct Sharded {
    inner: Arc<dyn ShardableEngine>,
    /// Shards per campaign; fixed at creation, so never stale.
    shards: Arc<DashMap<CampaignId, u8>>,
    /// One gatherer per campaign at a time on this instance: an attempt short of units moves
    /// them into its shard and asks again before the next one moves any, so attempts do not
    /// take each other's gathered units back and forth.
    refilling: Arc<DashMap<CampaignId, Arc<tokio::sync::Mutex<()>>>>,
    /// What the sold-out gate has read of each shard's idempotency records so far.
    gate_offsets: Arc<DashMap<CampaignId, Vec<u64>>>,
}

impl Sharded {
    pub fn new(inner: Arc<dyn ShardableEngine>) -> Self {
        Sharded {
            inner,
            shards: Arc::default(),
            refilling: Arc::default(),
            gate_offsets: Arc::default(),
        }
    }

    /// The campaign's shard count; `None` if shard 0 is missing.
    async fn shards_of(&self, id: &CampaignId) -> Result<Option<u8>, EngineError> {
        if let Some(n) = self.shards.get(id) {
            return Ok(Some(*n));
        }
        let Some(state) = self.inner.campaign(id).await? else {
            return Ok(None);
        };
        Ok(Some(self.remember(&state.campaign)))
    }

    /// Keeps the campaign's shard count; returns it.
    fn remember(&self, campaign: &Campaign) -> u8 {
        let n = campaign.shards.max(1);
        self.shards.insert(campaign.id.clone(), n);
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
        F: Fn(&'a dyn ShardableEngine, CampaignId) -> Fut,
        Fut: std::future::Future<Output = Result<T, EngineError>>,
    {
        try_join_all((from..n).map(|k| read(&*self.inner, id.shard(k)))).await
    }

    /// Every shard's state, `None` for missing ones.
    async fn states(&self, id: &CampaignId, n: u8) -> Result<Vec<Option<ShardState>>, EngineError> {
        self.each_shard(id, 0, n, |inner, shard| async move {
            inner.shard_state(&shard).await
        })
        .await
    }

    /// Every shard's state as of one instant: read until no shard's version moved between
    /// two reads (at most a few tries; transfers are rare next to reads).
    async fn consistent_states(
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

    /// The campaign's gathering turn (see `refilling`).
    fn gathering(&self, id: &CampaignId) -> Arc<tokio::sync::Mutex<()>> {
        Arc::clone(self.refilling.entry(id.clone()).or_default().value())
    }

    /// Moves units into shard `to` from the others, richest first, until it has `target`
    /// available (or nothing is left to take). `false` once the campaign as a whole — every
    /// shard's available units and those moving between shards — has fewer than `target`:
    /// then, and only then, the attempt is sold out.
    async fn refill(
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
            let taken = self.inner.take_units(&donor, &transfer).await?;
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
        match self.inner.give_units(receiver, transfer, units).await? {
            Given::Missing => {
                tracing::warn!(%donor, %receiver, transfer, units, "a shard to refill is missing; the transfer stays open until it is rebuilt");
                Ok(())
            }
            Given::Now | Given::Before => self.inner.transfer_done(donor, transfer).await,
        }
    }

    /// Completes the campaign's transfers older than [`STALE_TRANSFER`] (their mover died).
    async fn complete_stale(&self, id: &CampaignId, n: u8, now: Millis) -> Result<(), EngineError> {
        let stale_before = now.0 - STALE_TRANSFER.as_millis() as i64;
        for (k, state) in self.states(id, n).await?.into_iter().enumerate() {
            if state.is_none_or(|s| s.outgoing == 0) {
                continue;
            }
            let donor = id.shard(k as u8);
            for open in self.inner.open_transfers(&donor).await? {
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

    /// Loads the shards of a campaign that are missing (all of them for a new campaign);
    /// a bit per shard loaded by this call (see [`Engine::load_shards`]).
    async fn load_missing(&self, snapshot: CampaignSnapshot<'_>) -> Result<u64, EngineError> {
        let campaign = snapshot.campaign;
        let n = campaign.shards;
        let states = self.consistent_states(&campaign.id, n).await?;
        let missing: Vec<u8> = (0..n).filter(|&k| states[k as usize].is_none()).collect();
        // The present ones, listed again: what an unsharded campaign's no-op load does.
        for k in (0..n).filter(|&k| states[k as usize].is_some()) {
            self.inner.relist(&campaign.id.shard(k)).await?;
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
                .inner
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
        reservations: &[crate::domain::StoredReservation],
    ) -> Result<(), EngineError> {
        let shard = id.shard(k);
        let claims = reservations.iter().filter_map(|r| {
            let key = r.idempotency_key.as_ref()?;
            (key.is_store() && key_shard(key, n) == k)
                .then(|| (key, r.fingerprint.clone().unwrap_or_default()))
        });
        for (key, fingerprint) in claims {
            self.inner.claim_key(&shard, key, &fingerprint).await?;
        }
        Ok(())
    }

    /// The shards' states summed into the campaign's, shard 0's (`first`) read already;
    /// `None` if a shard is missing.
    async fn whole(
        &self,
        id: &CampaignId,
        n: u8,
        first: CampaignState,
    ) -> Result<Option<CampaignState>, EngineError> {
        let parts = self
            .each_shard(id, 1, n, |inner, shard| async move {
                inner.campaign(&shard).await
            })
            .await?;
        Ok(summed(id, first, parts))
    }

    /// The request for the user's shard.
    fn routed(request: &ReserveRequest, n: u8) -> ReserveRequest {
        let shard = request.campaign_id.shard(shard_of(&request.user_id, n));
        ReserveRequest {
            reservation_id: request.reservation_id.in_campaign(&shard),
            campaign_id: shard,
            ..request.clone()
        }
    }
}

#[async_trait]
impl Backend for Sharded {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn ping(&self) -> Result<(), EngineError> {
        self.inner.ping().await
    }

    async fn dataset(&self) -> Result<String, EngineError> {
        self.inner.dataset().await
    }

    /// Shard 0 last: until it goes, the shard count stays readable for a retry.
    async fn forget_campaign(&self, id: &CampaignId) -> Result<(), EngineError> {
        let n = self.shards_of(id).await?.unwrap_or(1);
        for k in (0..n).rev() {
            self.inner.forget_campaign(&id.shard(k)).await?;
        }
        self.shards.remove(id);
        self.gate_offsets.remove(id);
        Ok(())
    }
}

#[async_trait]
impl Engine for Sharded {
    async fn load_campaign(&self, snapshot: CampaignSnapshot<'_>) -> Result<bool, EngineError> {
        Ok(self.load_shards(snapshot).await? != 0)
    }

    async fn load_shards(&self, snapshot: CampaignSnapshot<'_>) -> Result<u64, EngineError> {
        let campaign = snapshot.campaign;
        if campaign.shards <= 1 {
            return Ok(u64::from(self.inner.load_campaign(snapshot).await?));
        }
        self.remember(campaign);
        self.load_missing(snapshot).await
    }

    async fn campaign(&self, id: &CampaignId) -> Result<Option<CampaignState>, EngineError> {
        let Some(first) = self.inner.campaign(id).await? else {
            return Ok(None);
        };
        let n = self.remember(&first.campaign);
        if n == 1 {
            return Ok(Some(first));
        }
        self.whole(id, n, first).await
    }

    /// Campaigns, each once; a sharded one only while every shard is listed (one the engine
    /// holds but does not list is not visited by the persister: the recovery pass finds the
    /// campaign missing from this list and lists its shards again).
    async fn campaign_ids(&self) -> Result<Vec<CampaignId>, EngineError> {
        let mut listed: std::collections::BTreeMap<CampaignId, u8> = Default::default();
        for id in self.inner.campaign_ids().await? {
            *listed.entry(id.parent()).or_default() += 1;
        }
        Ok(listed
            .into_iter()
            .filter(|(id, count)| self.shards.get(id).is_none_or(|n| *count >= *n))
            .map(|(id, _)| id)
            .collect())
    }

    /// Stock changes go to shard 0, which keeps the total; a withdrawal first moves units
    /// there when it has too few.
    async fn adjust_stock(&self, request: &StockRequest) -> Result<StockOutcome, EngineError> {
        let id = &request.campaign_id;
        let n = match self.shards_of(id).await? {
            Some(n) if n > 1 => n,
            _ => return self.inner.adjust_stock(request).await,
        };
        let mut outcome = self.inner.adjust_stock(request).await?;
        if let StockOutcome::Insufficient { .. } = outcome {
            let target = request.delta.get().unsigned_abs();
            let turn = self.gathering(id);
            let _one_at_a_time = turn.lock().await;
            if self.refill(id, n, 0, target).await? {
                outcome = self.inner.adjust_stock(request).await?;
            }
        }
        let whole = || async {
            Ok::<u64, EngineError>(
                self.states(id, n)
                    .await?
                    .iter()
                    .flatten()
                    .map(|s| s.available)
                    .sum(),
            )
        };
        Ok(match outcome {
            StockOutcome::Adjusted { stock, .. } => StockOutcome::Adjusted {
                stock,
                available: whole().await?,
            },
            StockOutcome::Replayed { stock, .. } => StockOutcome::Replayed {
                stock,
                available: whole().await?,
            },
            StockOutcome::Insufficient { .. } => StockOutcome::Insufficient {
                available: whole().await?,
            },
            other => other,
        })
    }

    async fn reserve(&self, request: &ReserveRequest) -> Result<ReserveOutcome, EngineError> {
        let n = match self.shards_of(&request.campaign_id).await? {
            Some(n) if n > 1 => n,
            Some(_) => return self.inner.reserve(request).await,
            None => return Ok(ReserveOutcome::Refused(Refusal::CampaignNotFound)),
        };
        if request.idempotency_key.is_store() {
            let shard = request
                .campaign_id
                .shard(key_shard(&request.idempotency_key, n));
            let claim = self
                .inner
                .claim_key(&shard, &request.idempotency_key, &request.fingerprint)
                .await?;
            match claim {
                Claim::Mine => {}
                Claim::Other => return Ok(ReserveOutcome::KeyReused),
                Claim::Missing => return Ok(ReserveOutcome::Refused(Refusal::CampaignNotFound)),
            }
        }
        let routed = Self::routed(request, n);
        let to = routed.campaign_id.shard_index();
        let target = u64::from(request.quantity);
        let outcome = self.inner.reserve(&routed).await?;
        if outcome != ReserveOutcome::Refused(Refusal::SoldOut) {
            return Ok(outcome);
        }
        // Short of units: one gatherer of this campaign at a time (on this instance) moves
        // units into its shard and asks again before the next moves any; sold out only once
        // the campaign as a whole has too few. Gatherers on other instances can still take
        // what this one moved: it gathers again, for at most [`REFILL_FOR`].
        let turn = self.gathering(&request.campaign_id);
        let _one_at_a_time = turn.lock().await;
        let deadline = std::time::Instant::now() + REFILL_FOR;
        loop {
            let outcome = self.inner.reserve(&routed).await?;
            if outcome != ReserveOutcome::Refused(Refusal::SoldOut)
                || !self.refill(&request.campaign_id, n, to, target).await?
            {
                return Ok(outcome);
            }
            if std::time::Instant::now() >= deadline {
                return Err(EngineError::Overloaded);
            }
            // What it moved went to another instance's gatherer, or is still moving.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    async fn reservation(&self, id: &ReservationId) -> Result<Option<Reservation>, EngineError> {
        self.inner.reservation(id).await
    }

    async fn confirm(&self, id: &ReservationId, now: Millis) -> Result<Transition, EngineError> {
        self.inner.confirm(id, now).await
    }

    async fn cancel(
        &self,
        id: &ReservationId,
        scope: CancelScope,
        now: Millis,
    ) -> Result<Transition, EngineError> {
        self.inner.cancel(id, scope, now).await
    }

    async fn end_campaign(
        &self,
        id: &CampaignId,
        now: Millis,
    ) -> Result<Option<CampaignState>, EngineError> {
        let n = match self.shards_of(id).await? {
            Some(n) if n > 1 => n,
            _ => return self.inner.end_campaign(id, now).await,
        };
        // Each shard's state as its end left it: summed, not read again.
        let mut ended = Vec::with_capacity(usize::from(n));
        for k in 0..n {
            match self.inner.end_campaign(&id.shard(k), now).await? {
                Some(state) => ended.push(Some(state)),
                None => return Ok(None),
            }
        }
        let mut ended = ended.into_iter();
        let Some(Some(first)) = ended.next() else {
            return Ok(None);
        };
        Ok(summed(id, first, ended))
    }

    async fn extend(
        &self,
        id: &ReservationId,
        seconds: u32,
        now: Millis,
    ) -> Result<Extension, EngineError> {
        self.inner.extend(id, seconds, now).await
    }

    /// Every shard's, and the campaign's transfers whose mover died.
    async fn expire_due(
        &self,
        campaign: &CampaignId,
        now: Millis,
        limit: u32,
    ) -> Result<u32, EngineError> {
        let n = match self.shards_of(campaign).await? {
            Some(n) if n > 1 => n,
            _ => return self.inner.expire_due(campaign, now, limit).await,
        };
        let mut ended = 0;
        for k in 0..n {
            ended += self
                .inner
                .expire_due(&campaign.shard(k), now, limit)
                .await?;
        }
        self.complete_stale(campaign, n, now).await?;
        Ok(ended)
    }

    async fn open_group(&self, request: &GroupRequest) -> Result<GroupOutcome, EngineError> {
        self.inner.open_group(request).await
    }

    async fn join_group(&self, request: &GroupRequest) -> Result<GroupOutcome, EngineError> {
        self.inner.join_group(request).await
    }

    async fn group(&self, id: &GroupId) -> Result<Option<Group>, EngineError> {
        self.inner.group(id).await
    }
}

#[async_trait]
impl GateReads for Sharded {
    /// Sold out when every shard is dry with no transfer open; the records of every shard,
    /// shard by shard, continuing where the gate's last read of each stopped (a `from` that
    /// is not where the last read ended starts over: `total` 0). The shards are read one at
    /// a time, so the set is checked afterwards: every shard still dry, as many records.
    async fn sold_out_records(
        &self,
        campaign: &CampaignId,
        from: u64,
        limit: u64,
    ) -> Result<Option<RecordsSince>, EngineError> {
        let n = match self.shards_of(campaign).await? {
            Some(n) if n > 1 => n,
            _ => return self.inner.sold_out_records(campaign, from, limit).await,
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
            .gate_offsets
            .get(campaign)
            .map(|o| o.clone())
            .unwrap_or_else(|| vec![0; usize::from(n)]);
        if from != offsets.iter().sum::<u64>() {
            self.gate_offsets
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
                self.inner
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
            self.gate_offsets.remove(campaign);
            return Ok(None);
        }
        self.gate_offsets.insert(campaign.clone(), offsets);
        Ok(Some(since))
    }

    /// Units in flight between shards count as available: they will be.
    async fn probe(&self, campaign: &CampaignId) -> Result<Option<Probe>, EngineError> {
        let n = match self.shards_of(campaign).await? {
            Some(n) if n > 1 => n,
            _ => return self.inner.probe(campaign).await,
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

/// Campaigns with a waiting room are never sharded: straight through.
#[async_trait]
impl WaitingRoom for Sharded {
    async fn join_queue(&self, request: &JoinRequest) -> Result<JoinOutcome, EngineError> {
        self.inner.join_queue(request).await
    }

    async fn ticket(&self, id: &TicketId, now: Millis) -> Result<Option<Ticket>, EngineError> {
        self.inner.ticket(id, now).await
    }

    async fn admit(&self, campaign: &CampaignId, now: Millis) -> Result<Admission, EngineError> {
        self.inner.admit(campaign, now).await
    }

    async fn claim_pass(&self, pass: &PassUse<'_>) -> Result<Option<PassClaim>, EngineError> {
        self.inner.claim_pass(pass).await
    }

    async fn pass_used(&self, ticket: &TicketId) -> Result<(), EngineError> {
        self.inner.pass_used(ticket).await
    }

    async fn line(&self, campaign: &CampaignId) -> Result<Option<Line>, EngineError> {
        self.inner.line(campaign).await
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
