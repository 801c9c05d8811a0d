//! The work index: which campaigns background work must visit, kept as the work is made, so
//! a catalogue of idle campaigns costs nothing.
//!
//! Two lists, each one key (one slot) of the engine's, which any instance can read, so the
//! work of an instance that died is still found:
//! - **active**: campaigns that changed lately or still have events for the persister. Every
//!   writer *announces* a campaign before it changes it, which gives the campaign a lease of
//!   [`LEASE`] on the list (a later lease is never shortened); a writer renews before its
//!   lease has less than [`MARGIN`] left ([`Leases`]), so one announcement covers a whole
//!   burst. The persister reads only these campaigns' events, the reaper visits them every
//!   round. Once a lease ran out and the campaign's stream is empty, the persister *retires*
//!   it: off the active list — only if nobody announced since its lease was read — and filed
//!   under its next due time.
//! - **due**: campaigns that are not active, by the time their next hold, group window,
//!   retention or transfer falls due. A reaper *claims* the due ones (each pushed [`CLAIM`]
//!   ahead, so other reapers skip it and a reaper that died leaves it due again), expires what
//!   is due, or *settles* the campaign under its next due time.
//!
//! Why it cannot miss work: a change is made only under a lease taken before it (so while the
//! change can still happen the campaign is active), a retirement reads the campaign after the
//! lease ended (so it sees every change made under it) and is refused if a lease was taken
//! since, and a settlement is refused once the campaign is active again (its retirement files
//! it then). Leases are timed by the index's own clock (Redis `TIME`); a writer counts its
//! lease from before it asked, so its own clock only has to measure seconds. What it costs: a
//! writer one call per campaign per `LEASE − MARGIN`; an idle catalogue one read of each list
//! per round, whatever its size.

use super::EngineError;
use crate::domain::{CampaignId, Millis};
use async_trait::async_trait;
use dashmap::DashMap;
use std::time::{Duration, Instant};

/// How long an announcement keeps a campaign active.
pub const LEASE: Duration = Duration::from_secs(10);

/// A writer renews its lease once less than this is left: a change sent with more left
/// reaches the engine well before the lease ends (a command waits 800 ms at most).
pub const MARGIN: Duration = Duration::from_secs(3);

/// How long a reaper's claim on a due campaign lasts.
pub const CLAIM: Duration = Duration::from_secs(10);

/// A settlement is not tried with less than this left of its claim.
pub const SETTLE_MARGIN: Duration = Duration::from_secs(3);

/// After a failed announcement, how long a writer goes on without trying again.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Campaigns one retirement round takes off the active list at most.
pub const RETIRE_PER_ROUND: usize = 256;

/// Retirements under way at once.
pub const RETIRE_AT_ONCE: usize = 16;

/// The active list as read: each campaign's lease end, on the index's clock.
#[derive(Debug, Clone, Default)]
pub struct Active {
    /// The index's clock when it was read (ms).
    pub now: i64,
    /// The index's birth mark: a new one means the index was lost (Redis restarted empty)
    /// and must be filled again (see [`WorkIndex::active`]).
    pub born: String,
    pub leases: Vec<(CampaignId, i64)>,
}

impl Active {
    pub fn campaigns(&self) -> impl Iterator<Item = &CampaignId> {
        self.leases.iter().map(|(campaign, _)| campaign)
    }

    /// Campaigns whose lease ran out, with the lease end as read.
    pub fn expired(&self) -> impl Iterator<Item = &(CampaignId, i64)> {
        self.leases
            .iter()
            .filter(move |(_, ends)| *ends <= self.now)
    }
}

/// What background work a campaign still has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leftover {
    /// The engine still holds the campaign.
    pub exists: bool,
    /// Events not yet persisted and acknowledged.
    pub events: u64,
    /// When the reaper next has something to do there.
    pub next_due: Option<Millis>,
}

/// A claimed due campaign after a look at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Something is due now: expire it (the campaign stays claimed meanwhile).
    Due,
    /// Filed under its next due time, or dropped (nothing left), or left to its retirement.
    Later,
}

/// The work index of an engine (one implementation per backend, the same semantics).
#[async_trait]
pub trait WorkIndex: Incarnation {
    /// Announces that `campaign` is about to change (see the module doc). Writers call it
    /// through [`Leases::ensure`], not for every change.
    async fn announce(&self, campaign: &CampaignId) -> Result<(), EngineError>;

    /// The active list. A new birth mark means the index was lost: the caller re-announces
    /// every campaign the engine holds (the recovery pass does).
    async fn active(&self) -> Result<Active, EngineError>;

    /// What `campaign` still has to do, as of `now`.
    async fn leftover(&self, campaign: &CampaignId, now: Millis) -> Result<Leftover, EngineError>;

    /// Takes a campaign whose lease (`lease_end`, as read) ended off the active list if
    /// nothing was announced since, filing it under `next_due`. `false`: left active.
    async fn retire(
        &self,
        campaign: &CampaignId,
        lease_end: i64,
        next_due: Option<Millis>,
    ) -> Result<bool, EngineError>;

    /// Claims up to `max` due campaigns that are not active; with the claim's end.
    async fn claim_due(
        &self,
        now: Millis,
        max: usize,
    ) -> Result<(i64, Vec<CampaignId>), EngineError>;

    /// Files a claimed campaign under `next_due` (or drops it) unless it became active or
    /// the claim (`claimed_until`) ran out.
    async fn file_due(
        &self,
        campaign: &CampaignId,
        claimed_until: i64,
        now: Millis,
        next_due: Option<Millis>,
    ) -> Result<(), EngineError>;

    /// Files a campaign under `due` (kept if it is due earlier already): what a pass over
    /// every campaign does for one without events waiting, instead of making it active.
    async fn file(&self, campaign: &CampaignId, due: Millis) -> Result<(), EngineError>;

    /// Puts a campaign the engine holds back on its list of every campaign (the list only a
    /// pass over every campaign reads; a crash may have left the campaign out of it). Once
    /// per retirement.
    async fn relist(&self, _campaign: &CampaignId) -> Result<(), EngineError> {
        Ok(())
    }

    /// Calls made to the backing store by background work so far (Redis commands; campaign
    /// locks taken in memory): what the tests count to show work follows traffic.
    fn background_calls(&self) -> u64;

    /// This process's leases on the active list (see [`Leases`]).
    fn leases(&self) -> &Leases;
}

/// The life of the index's backing store, for the recovery pass.
#[async_trait]
pub trait Incarnation: Send + Sync + 'static {
    /// Names the backing store's current life: it changes when data may have been lost
    /// (a Redis server or cluster node restarted, a failover), and the recovery pass then
    /// restores and announces every campaign once. Asked once per recovery pass.
    async fn incarnation(&self) -> Result<String, EngineError>;

    /// The incarnation (see [`Incarnation::incarnation`]) whose campaigns were all filed on
    /// this index, as [`Incarnation::set_filed`] recorded it.
    async fn filed(&self) -> Result<Option<String>, EngineError>;

    /// Records that every campaign of `incarnation` was filed.
    async fn set_filed(&self, incarnation: &str) -> Result<(), EngineError>;
}

/// A claimed campaign: files it under its next due time unless something is due now.
pub async fn settle(
    index: &(impl WorkIndex + ?Sized),
    campaign: &CampaignId,
    claimed_until: i64,
    now: Millis,
) -> Result<Settled, EngineError> {
    let left = index.leftover(campaign, now).await?;
    if left.next_due.is_some_and(|due| due <= now) {
        return Ok(Settled::Due);
    }
    if now.0 + SETTLE_MARGIN.as_millis() as i64 >= claimed_until {
        // Too little of the claim left to file safely: it comes due again.
        return Ok(Settled::Later);
    }
    index
        .file_due(campaign, claimed_until, now, left.next_due)
        .await?;
    Ok(Settled::Later)
}

/// One retirement round over the active list as read: campaigns whose lease ended and
/// whose events are all persisted leave it, [`RETIRE_AT_ONCE`] at a time and at most
/// [`RETIRE_PER_ROUND`] a round, so a round never holds up the caller's real work. How
/// many left.
pub async fn retire_idle(
    index: &(impl WorkIndex + ?Sized),
    active: &Active,
    now: Millis,
) -> Result<usize, EngineError> {
    use futures::{StreamExt, TryStreamExt};
    let candidates: Vec<(CampaignId, i64)> =
        active.expired().take(RETIRE_PER_ROUND).cloned().collect();
    let retired: Vec<bool> = futures::stream::iter(candidates)
        .map(|(campaign, lease_end)| async move {
            let left = index.leftover(&campaign, now).await?;
            if left.events > 0 {
                return Ok(false);
            }
            let retired = index.retire(&campaign, lease_end, left.next_due).await?;
            if retired && left.exists {
                index.relist(&campaign).await?;
            }
            Ok::<_, EngineError>(retired)
        })
        .buffer_unordered(RETIRE_AT_ONCE)
        .try_collect()
        .await?;
    Ok(retired.into_iter().filter(|r| *r).count())
}

/// A writer's leases, so it announces a campaign once per `LEASE − MARGIN`, not per change.
pub struct Leases {
    /// Until when (by this process's clock, counted from before the announcement was sent)
    /// each campaign's lease surely lasts.
    until: DashMap<CampaignId, Instant>,
    /// One announcement per campaign at a time: the requests of a burst that find the lease
    /// short wait for it instead of each announcing.
    announcing: DashMap<CampaignId, std::sync::Arc<tokio::sync::Mutex<()>>>,
    /// Campaigns changed while their announcement failed, to announce again.
    pending: DashMap<CampaignId, ()>,
    /// How long an announcement lasts ([`LEASE`] unless a test shortens it).
    pub lease: Duration,
    /// Renewal when less than this is left ([`MARGIN`], scaled with the lease).
    pub margin: Duration,
}

impl Default for Leases {
    fn default() -> Self {
        Leases::lasting(LEASE)
    }
}

impl Leases {
    /// Leases of `lease` (tests shorten them so idle campaigns retire within a test),
    /// renewed with 30 % left.
    pub fn lasting(lease: Duration) -> Self {
        Leases {
            until: DashMap::new(),
            announcing: DashMap::new(),
            pending: DashMap::new(),
            lease,
            margin: lease * 3 / 10,
        }
    }

    /// Whether this process's lease on `campaign` has at least the margin left.
    pub fn fresh(&self, campaign: &CampaignId, now: Instant) -> bool {
        self.until
            .get(campaign)
            .is_some_and(|until| *until > now + self.margin)
    }

    /// Records a lease announced at `sent` (before the announcement went out).
    pub fn took(&self, campaign: &CampaignId, sent: Instant) {
        self.until.insert(campaign.clone(), sent + self.lease);
    }

    /// Makes sure `campaign` holds a lease with at least [`MARGIN`] left, announcing it
    /// through `index` when it does not. A failed announcement fails the change unless
    /// `tolerant` (the index lives apart from the campaign: a Redis Cluster), where the change
    /// goes on and the announcement is retried.
    pub async fn ensure(
        &self,
        index: &(impl WorkIndex + ?Sized),
        campaign: &CampaignId,
        tolerant: bool,
    ) -> Result<(), EngineError> {
        if self.fresh(campaign, Instant::now()) {
            return Ok(());
        }
        let turn =
            std::sync::Arc::clone(self.announcing.entry(campaign.clone()).or_default().value());
        let _turn = turn.lock().await;
        let now = Instant::now();
        if self.fresh(campaign, now) {
            return Ok(());
        }
        match index.announce(campaign).await {
            Ok(()) => {
                self.took(campaign, now);
                self.pending.remove(campaign);
            }
            // One server holds both: the change would fail too, so fail at once.
            Err(error) if !tolerant => return Err(error),
            Err(error) => {
                // The index is out of reach while the campaign may not be (on a cluster its
                // node may be down alone). The change goes on — refusing it would tie every
                // campaign to one node — and the announcement is retried until it lands
                // (`WorkIndex::retry_announcements`, every reaper round): until then the
                // campaign's events wait in its stream and its holds in its expiry list.
                metrics::counter!(crate::metrics::WORK_ANNOUNCE_FAILURES).increment(1);
                tracing::warn!(%error, campaign = %campaign, "announcing a change on the work index failed; retrying in the background");
                self.pending.insert(campaign.clone(), ());
                self.until
                    .insert(campaign.clone(), now + self.margin + RETRY_AFTER);
            }
        }
        Ok(())
    }

    /// Announces again the campaigns whose announcement failed; how many are still pending.
    pub async fn retry_pending(&self, index: &(impl WorkIndex + ?Sized)) -> usize {
        let pending: Vec<CampaignId> = self.pending.iter().map(|e| e.key().clone()).collect();
        for campaign in pending {
            let now = Instant::now();
            if index.announce(&campaign).await.is_ok() {
                self.took(&campaign, now);
                self.pending.remove(&campaign);
            }
        }
        self.pending.len()
    }

    /// Forgets every lease (the index was lost, or a campaign left): the next change
    /// announces again.
    pub fn clear(&self) {
        self.until.clear();
        self.announcing.clear();
    }

    pub fn forget(&self, campaign: &CampaignId) {
        self.until.remove(campaign);
        self.announcing.remove(campaign);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

    /// An index whose announcements fail while `down` (only what `Leases` calls answers).
    #[derive(Default)]
    struct Flaky {
        down: AtomicBool,
        announced: AtomicU32,
        leases: Leases,
    }

    #[async_trait]
    impl WorkIndex for Flaky {
        async fn announce(&self, _campaign: &CampaignId) -> Result<(), EngineError> {
            if self.down.load(Ordering::SeqCst) {
                return Err(EngineError::Corrupt("the index is out of reach".into()));
            }
            self.announced.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        async fn active(&self) -> Result<Active, EngineError> {
            Ok(Active::default())
        }
        async fn leftover(&self, _: &CampaignId, _: Millis) -> Result<Leftover, EngineError> {
            unreachable!("not asked by leases")
        }
        async fn retire(
            &self,
            _: &CampaignId,
            _: i64,
            _: Option<Millis>,
        ) -> Result<bool, EngineError> {
            unreachable!("not asked by leases")
        }
        async fn claim_due(
            &self,
            _: Millis,
            _: usize,
        ) -> Result<(i64, Vec<CampaignId>), EngineError> {
            unreachable!("not asked by leases")
        }
        async fn file_due(
            &self,
            _: &CampaignId,
            _: i64,
            _: Millis,
            _: Option<Millis>,
        ) -> Result<(), EngineError> {
            unreachable!("not asked by leases")
        }
        async fn file(&self, _: &CampaignId, _: Millis) -> Result<(), EngineError> {
            unreachable!("not asked by leases")
        }
        fn background_calls(&self) -> u64 {
            0
        }
        fn leases(&self) -> &Leases {
            &self.leases
        }
    }

    #[async_trait]
    impl Incarnation for Flaky {
        async fn filed(&self) -> Result<Option<String>, EngineError> {
            Ok(None)
        }
        async fn set_filed(&self, _: &str) -> Result<(), EngineError> {
            Ok(())
        }
        async fn incarnation(&self) -> Result<String, EngineError> {
            Ok(String::new())
        }
    }

    #[tokio::test]
    async fn a_lease_is_announced_once_per_renewal_and_a_failed_one_again_later() {
        let index = Flaky::default();
        let leases = Leases::lasting(Duration::from_secs(10));
        let campaign = CampaignId::parse("c-1").expect("valid");
        for _ in 0..5 {
            leases
                .ensure(&index, &campaign, true)
                .await
                .expect("answers");
        }
        assert_eq!(index.announced.load(Ordering::SeqCst), 1, "one per lease");

        // The index out of reach: the change goes on, the announcement waits.
        let other = CampaignId::parse("c-2").expect("valid");
        index.down.store(true, Ordering::SeqCst);
        assert!(
            leases.ensure(&index, &other, false).await.is_err(),
            "one server: the change fails with its index"
        );
        leases
            .ensure(&index, &other, true)
            .await
            .expect("the change goes on");
        assert_eq!(leases.retry_pending(&index).await, 1, "still pending");
        index.down.store(false, Ordering::SeqCst);
        assert_eq!(leases.retry_pending(&index).await, 0, "announced at last");
        assert_eq!(index.announced.load(Ordering::SeqCst), 2);
        leases.ensure(&index, &other, true).await.expect("fresh");
        assert_eq!(
            index.announced.load(Ordering::SeqCst),
            2,
            "the retry took the lease"
        );
    }
}
