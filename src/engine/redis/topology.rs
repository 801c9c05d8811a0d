//! A Redis Cluster's failovers, followed.
//!
//! The cluster client already follows a promotion (a replica that took over a dead master's
//! slots answers the next slot refresh). What it cannot know is whether the promoted replica
//! has every change the old master acknowledged: in the default mode a replica lags, and the
//! database may already hold changes it never received. [`Watched`] wraps the cluster
//! connection so that no decision reaches a promoted replica before the failover hook (see
//! [`fence_behind`](super::primary::fence_behind)) has removed the campaigns it lacks changes
//! of, on the slots it took over:
//!
//! - a watcher reads `CLUSTER NODES` every [`POLL`] (and at once after a failed command); the
//!   slots of a master that is failing or unreachable are held back — a script for them is
//!   refused here, as while the master is down — until a master serves them again;
//! - a script that fails the way a dead master fails (the connection dropped or refused,
//!   `CLUSTERDOWN`, `MASTERDOWN`, `READONLY`) holds back its slot the same way at once;
//! - when a replica of the slots' old master now serves them (a failover, as opposed to a
//!   slot moved by a reshard, whose keys move with it), the hook runs first, and only then
//!   are the slots released. A failing hook keeps them held back and runs again next round.
//!
//! Only scripts (`EVALSHA`/`EVAL`: every decision) are held back, by their first key's slot;
//! reads and background commands go through. Nothing is held back on the other masters'
//! slots. While no slot is held back, a command costs one atomic load here.

use futures::future::BoxFuture;
use redis::aio::ConnectionLike;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Arg, Cmd, Pipeline, RedisError, RedisFuture, Value};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often the cluster's nodes are read, failures or not.
pub const POLL: Duration = Duration::from_millis(250);

const SLOTS: usize = 16_384;

/// Runs when replicas took over slots (given as inclusive ranges), before any script for
/// those slots goes on; given the cluster connection with nothing held back.
pub type Failover = Arc<
    dyn Fn(ClusterConnection, Vec<(u16, u16)>) -> BoxFuture<'static, Result<(), String>>
        + Send
        + Sync,
>;

/// The key slot of `key` (CRC16 of its hash tag, or of the whole key without one).
pub fn slot(key: &[u8]) -> u16 {
    let tag = key
        .iter()
        .position(|b| *b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            rest.iter()
                .position(|b| *b == b'}')
                .map(|close| &rest[..close])
        })
        .filter(|tag| !tag.is_empty())
        .unwrap_or(key);
    crc16::State::<crc16::XMODEM>::calculate(tag) % SLOTS as u16
}

/// The slot of a script's first key; `None` for anything else.
fn script_slot(cmd: &Cmd) -> Option<u16> {
    let mut args = cmd.args_iter().map(|arg| match arg {
        Arg::Simple(bytes) => bytes,
        _ => &[],
    });
    let name = args.next()?;
    let script = [&b"EVALSHA"[..], b"EVAL", b"EVALSHA_RO", b"EVAL_RO"]
        .iter()
        .any(|s| name.eq_ignore_ascii_case(s));
    if !script {
        return None;
    }
    let _body = args.next()?;
    if args.next()? == b"0" {
        return None;
    }
    args.next().map(slot)
}

/// What one node says of the cluster.
#[derive(Clone, Debug, Default, PartialEq)]
struct View {
    /// Each slot range (inclusive) and the id of the master serving it.
    ranges: Vec<(u16, u16, String)>,
    /// Each replica's master.
    replica_of: HashMap<String, String>,
    /// Masters flagged failing (`fail`, `fail?`) or whose link is down.
    unhealthy: HashSet<String>,
}

impl View {
    /// From `CLUSTER NODES`: `<id> <addr> <flags> <master> <ping> <pong> <epoch> <link>
    /// <slot>…`, a slot being `n`, `a-b` or a `[…]` migration marker (skipped).
    fn parse(nodes: &str) -> Self {
        let mut view = View::default();
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [id, _, flags, master, _, _, _, link, slots @ ..] = fields.as_slice() else {
                continue;
            };
            let flags: Vec<&str> = flags.split(',').collect();
            if flags.contains(&"slave") && *master != "-" {
                view.replica_of
                    .insert((*id).to_owned(), (*master).to_owned());
                continue;
            }
            if !flags.contains(&"master") {
                continue;
            }
            let failing = flags
                .iter()
                .any(|f| matches!(*f, "fail" | "fail?" | "noaddr"));
            if failing || *link != "connected" {
                view.unhealthy.insert((*id).to_owned());
            }
            for range in slots.iter().filter(|s| !s.starts_with('[')) {
                let (from, to) = range.split_once('-').unwrap_or((range, range));
                if let (Ok(from), Ok(to)) = (from.parse(), to.parse()) {
                    view.ranges.push((from, to, (*id).to_owned()));
                }
            }
        }
        view
    }

    fn master_of(&self, slot: u16) -> Option<&str> {
        self.ranges
            .iter()
            .find(|(from, to, _)| (*from..=*to).contains(&slot))
            .map(|(_, _, id)| id.as_str())
    }

    /// The ranges now served by a replica of the master that served them in `before`.
    fn taken_over_since(&self, before: &View) -> Vec<(u16, u16)> {
        self.ranges
            .iter()
            .filter(|(from, _, master)| {
                before.master_of(*from).is_some_and(|old| {
                    old != master && before.replica_of.get(master).map(String::as_str) == Some(old)
                })
            })
            .map(|(from, to, _)| (*from, *to))
            .collect()
    }
}

struct Shared {
    /// A connection of its own for the watcher and the hook: never held back.
    raw: ClusterConnection,
    /// One bit per slot: scripts for it are held back.
    held: Vec<AtomicU64>,
    /// Some bit is set (the only thing a command reads while none is).
    any: AtomicBool,
    view: Mutex<Option<View>>,
    looking: AtomicBool,
    failover: Mutex<Option<Failover>>,
}

impl Shared {
    fn is_held(&self, slot: u16) -> bool {
        self.held[usize::from(slot) / 64].load(Ordering::Acquire) & (1 << (slot % 64)) != 0
    }

    fn hold(&self, from: u16, to: u16) {
        for slot in from..=to {
            self.held[usize::from(slot) / 64].fetch_or(1 << (slot % 64), Ordering::AcqRel);
        }
        self.any.store(true, Ordering::Release);
    }

    fn release(&self, from: u16, to: u16) {
        for slot in from..=to {
            self.held[usize::from(slot) / 64].fetch_and(!(1 << (slot % 64)), Ordering::AcqRel);
        }
        let any = self.held.iter().any(|w| w.load(Ordering::Acquire) != 0);
        self.any.store(any, Ordering::Release);
    }

    async fn read_view(&self) -> Result<View, RedisError> {
        let mut connection = self.raw.clone();
        let mut last = None;
        // A random node answers; the one that died may be picked.
        for _ in 0..3 {
            let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random);
            match connection
                .route_command(redis::cmd("CLUSTER").arg("NODES").clone(), routing)
                .await
            {
                Ok(answer) => {
                    let text: String = redis::from_redis_value_ref(&answer)?;
                    return Ok(View::parse(&text));
                }
                Err(error) => last = Some(error),
            }
        }
        Err(last.expect("tried"))
    }

    /// Reads the cluster; holds back the slots of failing masters and of any takeover, runs
    /// the hook on a takeover, releases slots a healthy master serves. One look at a time.
    async fn look(&self) {
        if self.looking.swap(true, Ordering::AcqRel) {
            return;
        }
        scopeguard::defer! { self.looking.store(false, Ordering::Release) }
        let view = match self.read_view().await {
            Ok(view) => view,
            Err(error) => {
                tracing::debug!(%error, "cannot read the cluster's nodes");
                return;
            }
        };
        let before = self.view.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let taken_over = before
            .as_ref()
            .map(|before| view.taken_over_since(before))
            .unwrap_or_default();
        for (from, to, master) in &view.ranges {
            if view.unhealthy.contains(master) {
                self.hold(*from, *to);
            }
        }
        for (from, to) in &taken_over {
            self.hold(*from, *to);
        }
        if !taken_over.is_empty() {
            let hook = self
                .failover
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            if let Some(hook) = hook {
                if let Err(error) = hook(self.raw.clone(), taken_over.clone()).await {
                    tracing::warn!(%error, "slots a replica took over stay held back");
                    return;
                }
            }
            tracing::warn!(slots = ?taken_over, "Redis Cluster failover: replicas took over slots");
            metrics::counter!(crate::metrics::REDIS_FAILOVERS).increment(1);
        }
        if self.any.load(Ordering::Acquire) {
            for (from, to, master) in &view.ranges {
                if !view.unhealthy.contains(master) {
                    self.release(*from, *to);
                }
            }
        }
        *self.view.lock().unwrap_or_else(|p| p.into_inner()) = Some(view);
    }

    fn look_now(self: &Arc<Self>) {
        if !self.looking.load(Ordering::Acquire) {
            let shared = Arc::clone(self);
            tokio::spawn(async move { shared.look().await });
        }
    }
}

/// Follows one cluster's failovers for the connections made from it.
pub struct Topology {
    shared: Arc<Shared>,
}

impl Topology {
    /// Reads the cluster through `raw` (a connection of its own) now, then every [`POLL`].
    pub async fn watch(raw: ClusterConnection) -> Self {
        let shared = Arc::new(Shared {
            raw,
            held: (0..SLOTS / 64).map(|_| AtomicU64::new(0)).collect(),
            any: AtomicBool::new(false),
            view: Mutex::new(None),
            looking: AtomicBool::new(false),
            failover: Mutex::new(None),
        });
        shared.look().await;
        super::look_every(&shared, POLL, |shared| async move { shared.look().await });
        Topology { shared }
    }

    /// `connection`, held back on the slots being failed over.
    pub fn watched(&self, connection: ClusterConnection) -> Watched {
        Watched {
            inner: connection,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// A cluster connection that holds back scripts for slots being failed over (see the module
/// doc). Cheap to clone.
#[derive(Clone)]
pub struct Watched {
    inner: ClusterConnection,
    shared: Arc<Shared>,
}

impl Watched {
    /// The connection underneath, for commands routed by hand (to every master, say).
    pub fn unwatched(&self) -> ClusterConnection {
        self.inner.clone()
    }

    /// Runs `failover` whenever replicas take over slots, before scripts for them go on.
    pub fn on_failover(&self, failover: Failover) {
        *self
            .shared
            .failover
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(failover);
    }

    /// `Err` for a script whose slot is held back; its slot is only worked out while some
    /// slot is.
    fn admit(&self, slot: impl FnOnce() -> Option<u16>) -> Result<(), RedisError> {
        if !self.shared.any.load(Ordering::Acquire) {
            return Ok(());
        }
        match slot() {
            Some(slot) if self.shared.is_held(slot) => {
                self.shared.look_now();
                Err(RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::NotConnected,
                    "the Redis Cluster master of this campaign is failing over",
                )))
            }
            _ => Ok(()),
        }
    }

    /// After a failed script: if it failed the way a dead or demoted master fails, its slot
    /// is held back until the watcher has seen a master serve it (looked at now).
    fn check(&self, slot: Option<u16>, error: &RedisError) {
        let gone = super::dead_or_demoted(error);
        if let (true, Some(slot)) = (gone, slot) {
            self.shared.hold(slot, slot);
            self.shared.look_now();
        }
    }
}

impl ConnectionLike for Watched {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            self.admit(|| script_slot(cmd))?;
            let answer = self.inner.req_packed_command(cmd).await;
            if let Err(error) = &answer {
                self.check(script_slot(cmd), error);
            }
            answer
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let slot = || cmd.cmd_iter().find_map(script_slot);
            self.admit(slot)?;
            let answer = self.inner.req_packed_commands(cmd, offset, count).await;
            if let Err(error) = &answer {
                self.check(slot(), error);
            }
            answer
        })
    }

    fn get_db(&self) -> i64 {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_the_hash_tag() {
        // Redis's own answers (`CLUSTER KEYSLOT`).
        assert_eq!(slot(b"foo"), 12_182);
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        assert_eq!(slot(b"foo{}{bar}"), slot(b"foo{}{bar}"));
        assert_eq!(slot(b"{}x"), slot(b"{}x"));
    }

    const BEFORE: &str = "\
a 127.0.0.1:1@11 myself,master - 0 0 1 connected 0-5460
b 127.0.0.1:2@12 master - 0 0 2 connected 5461-10922
c 127.0.0.1:3@13 master - 0 0 3 connected 10923-16383
d 127.0.0.1:4@14 slave a 0 0 1 connected
e 127.0.0.1:5@15 slave b 0 0 2 connected
f 127.0.0.1:6@16 slave c 0 0 3 connected
";

    #[test]
    fn a_replica_serving_its_masters_slots_is_a_takeover_and_a_reshard_is_not() {
        let before = View::parse(BEFORE);
        assert!(before.unhealthy.is_empty());
        let failing = View::parse(&BEFORE.replace(
            "master - 0 0 2 connected",
            "master,fail? - 0 0 2 disconnected",
        ));
        assert!(failing.unhealthy.contains("b"));
        assert!(failing.taken_over_since(&before).is_empty());
        let promoted = View::parse(
            &BEFORE
                .replace(
                    "b 127.0.0.1:2@12 master - 0 0 2 connected 5461-10922",
                    "b 127.0.0.1:2@12 master,fail - 0 0 2 disconnected",
                )
                .replace(
                    "e 127.0.0.1:5@15 slave b 0 0 2 connected",
                    "e 127.0.0.1:5@15 master - 0 0 7 connected 5461-10922",
                ),
        );
        assert_eq!(promoted.taken_over_since(&before), vec![(5461, 10922)]);
        let resharded = View::parse(
            &BEFORE
                .replace("connected 0-5460", "connected 0-5399")
                .replace("connected 5461-10922", "connected 5400-10922 [5399->-a]"),
        );
        assert!(resharded.taken_over_since(&before).is_empty());
        assert_eq!(resharded.master_of(5400), Some("b"));
    }
}
