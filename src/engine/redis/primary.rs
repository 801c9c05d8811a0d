//! The primary of a Redis watched by Sentinel, followed across failovers.
//!
//! [`Primary`] is a connection like [`ConnectionManager`] (which it wraps) that always talks
//! to the server the sentinels name as the primary of the watched set: it asks them at start,
//! again every [`POLL`], and at once when a command fails the way a demoted or dead primary
//! fails (the connection dropped or refused, `READONLY`, `MASTERDOWN`) — and from such a
//! failure until the sentinels have named the primary again and it answered `ROLE` as one,
//! nothing is sent (a dead primary that comes back as a replica, or before Sentinel demotes
//! it, gets no write). A new primary is connected to (redis-rs checks its `ROLE` is
//! `master`), the [`Switch`] hook runs on it, and only then do commands go there — so the hook
//! can look at the promoted data before any request changes it. Scripts are loaded on the new
//! primary by the first `EVALSHA` that misses (NOSCRIPT), as after a restart.
//!
//! While no primary answers, commands fail as they do when a single Redis is down (the
//! engine answers 503 `engine_unavailable` with `Retry-After`).

use futures::future::BoxFuture;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{Cmd, Pipeline, RedisError, RedisFuture, Value};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// How often the sentinels are asked which server is the primary, failures or not.
pub const POLL: Duration = Duration::from_millis(500);

/// Runs on a newly found primary before any command of the service goes there (the first
/// primary found at start excluded); `Err` leaves the old one in place and asks again later.
/// Given a connection to the new primary.
pub type Switch =
    Arc<dyn Fn(ConnectionManager) -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// Where the sentinels are and what they watch.
#[derive(Clone, Debug)]
pub struct Sentinels {
    /// `host:port` or `redis://[user:password@]host:port` of each sentinel.
    pub addresses: Vec<String>,
    /// The name of the watched primary (`sentinel monitor <name> …`).
    pub primary: String,
    /// The primary's own credentials and database, from a `redis://` URL (its host is not
    /// used); `None`: none.
    pub primary_url: Option<String>,
}

/// The two connections of an engine (requests, background work), following one primary.
pub struct Follower {
    shared: Arc<Shared>,
}

struct Shared {
    sentinels: tokio::sync::Mutex<SentinelClient>,
    config: ConnectionManagerConfig,
    background_config: ConnectionManagerConfig,
    /// Bumped on every switch; each [`Primary`] compares its own copy.
    generation: AtomicU64,
    current: RwLock<Current>,
    /// A lookup is under way (one at a time).
    looking: AtomicBool,
    /// A command met a dead or demoted primary: nothing is sent until the sentinels have
    /// named the primary again and it answered `ROLE` as one (an address that comes back as
    /// a replica, or as a stale primary, never gets a write).
    suspect: AtomicBool,
    switch: Mutex<Option<Switch>>,
}

#[derive(Clone)]
struct Current {
    address: String,
    requests: ConnectionManager,
    background: ConnectionManager,
}

impl Current {
    /// Both connections (requests, background work) to `primary`, each with its config.
    async fn open(
        primary: &redis::Client,
        config: &ConnectionManagerConfig,
        background_config: &ConnectionManagerConfig,
    ) -> Result<Self, RedisError> {
        Ok(Current {
            address: primary.get_connection_info().addr().to_string(),
            requests: primary
                .get_connection_manager_with_config(config.clone())
                .await?,
            background: primary
                .get_connection_manager_with_config(background_config.clone())
                .await?,
        })
    }
}

fn url_of(address: &str) -> String {
    if address.contains("://") {
        address.to_owned()
    } else {
        format!("redis://{address}")
    }
}

impl Follower {
    /// Asks the sentinels for the primary and connects to it (twice: requests and background
    /// work, each with its config); then follows it in the background.
    pub async fn connect(
        sentinels: &Sentinels,
        config: ConnectionManagerConfig,
        background_config: ConnectionManagerConfig,
    ) -> Result<Self, RedisError> {
        let mut node = SentinelNodeConnectionInfo::default();
        if let Some(url) = &sentinels.primary_url {
            let client = redis::Client::open(url.as_str())?;
            node = node
                .set_redis_connection_info(client.get_connection_info().redis_settings().clone());
        }
        let urls: Vec<String> = sentinels.addresses.iter().map(|a| url_of(a)).collect();
        let mut client = SentinelClient::build(
            urls,
            sentinels.primary.clone(),
            Some(node),
            SentinelServerType::Master,
        )?;
        let primary = client.async_get_client().await?;
        let current = Current::open(&primary, &config, &background_config).await?;
        tracing::info!(primary = %current.address, "Redis primary found through Sentinel");
        let shared = Arc::new(Shared {
            sentinels: tokio::sync::Mutex::new(client),
            config,
            background_config,
            generation: AtomicU64::new(0),
            current: RwLock::new(current),
            looking: AtomicBool::new(false),
            suspect: AtomicBool::new(false),
            switch: Mutex::new(None),
        });
        super::look_every(&shared, POLL, |shared| async move { shared.look().await });
        Ok(Follower { shared })
    }

    /// The connection for requests.
    pub fn requests(&self) -> Primary {
        Primary::new(Arc::clone(&self.shared), false)
    }

    /// The connection for background work.
    pub fn background(&self) -> Primary {
        Primary::new(Arc::clone(&self.shared), true)
    }
}

impl Shared {
    fn current(&self) -> Current {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Asks the sentinels which server is the primary; on a new one, connects, runs the switch
    /// hook and moves every connection there. One lookup at a time; others return at once.
    async fn look(&self) {
        if self.looking.swap(true, Ordering::AcqRel) {
            return;
        }
        scopeguard::defer! { self.looking.store(false, Ordering::Release) }
        let mut sentinels = self.sentinels.lock().await;
        let primary = match sentinels.async_get_client().await {
            Ok(primary) => primary,
            Err(error) => {
                tracing::debug!(%error, "no primary known to the sentinels");
                return;
            }
        };
        drop(sentinels);
        let address = primary.get_connection_info().addr().to_string();
        let old = self.current();
        if address == old.address {
            // Still the primary, and it answered as one.
            self.suspect.store(false, Ordering::Release);
            return;
        }
        let new = match Current::open(&primary, &self.config, &self.background_config).await {
            Ok(new) => new,
            Err(error) => {
                tracing::warn!(%error, primary = %address, "cannot connect to the new primary");
                return;
            }
        };
        let switch = self
            .switch
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(switch) = switch {
            if let Err(error) = switch(new.requests.clone()).await {
                tracing::warn!(%error, primary = %address, "the new primary is not used yet");
                return;
            }
        }
        tracing::warn!(from = %old.address, to = %address, "Redis failover: following the new primary");
        metrics::counter!(crate::metrics::REDIS_FAILOVERS).increment(1);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = new;
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.suspect.store(false, Ordering::Release);
    }
}

/// Looks at a newly promoted primary before the service uses it: every campaign whose event
/// stream ends before what the database persisted of it (`persisted`: per campaign, the
/// stream position of the newest event committed) lacks changes the old primary had and the
/// replica never received — in the default mode a promoted replica may lag — so it is removed
/// from the new primary, and rebuilt from the database on first use under a new load epoch
/// (the recovery path of a Redis that lost a campaign), instead of selling again units the
/// database already counts as sold. Returns the campaigns removed.
///
/// On a cluster, `slots` (inclusive ranges) limits it to the campaigns whose keys are there:
/// the slots a replica took over.
pub async fn fence_behind<C: super::Connection>(
    connection: C,
    namespace: &str,
    persisted: &std::collections::HashMap<crate::domain::CampaignId, (i64, i64)>,
    slots: Option<&[(u16, u16)]>,
) -> Result<Vec<crate::domain::CampaignId>, crate::engine::EngineError> {
    use crate::engine::backend::{Backend, Reads};
    let engine =
        super::RedisEngine::with_connections(connection.clone(), connection, namespace).await?;
    let mut behind = Vec::new();
    for id in engine.campaign_ids().await? {
        let Some(&(ms, seq)) = persisted.get(&id) else {
            continue;
        };
        let events = engine.keys(&id).events();
        if let Some(slots) = slots {
            let slot = super::topology::slot(events.as_bytes());
            if !slots.iter().any(|(from, to)| (*from..=*to).contains(&slot)) {
                continue;
            }
        }
        let last: String = engine
            .scripts
            .stream_last
            .key(events)
            .invoke_async(&mut engine.background())
            .await?;
        let at = crate::domain::StreamPosition::parse(&last).map_or((0, 0), |p| (p.ms, p.seq));
        if at < (ms, seq) {
            tracing::warn!(campaign = %id, engine = %last, database = %format!("{ms}-{seq}"),
                "the promoted Redis lacks changes the database has; rebuilding the campaign from the database");
            engine.forget_campaign(&id).await?;
            metrics::counter!(crate::metrics::FAILOVER_REBUILDS).increment(1);
            behind.push(id);
        }
    }
    Ok(behind)
}

/// A connection to the current primary (see the module doc). Cheap to clone.
#[derive(Clone)]
pub struct Primary {
    shared: Arc<Shared>,
    background: bool,
    seen: u64,
    connection: ConnectionManager,
}

impl Primary {
    /// Runs `switch` on every primary found from now on, before it is used.
    pub fn on_switch(&self, switch: Switch) {
        *self.shared.switch.lock().unwrap_or_else(|p| p.into_inner()) = Some(switch);
    }

    fn new(shared: Arc<Shared>, background: bool) -> Self {
        let seen = shared.generation.load(Ordering::Acquire);
        let current = shared.current();
        let connection = if background {
            current.background
        } else {
            current.requests
        };
        Primary {
            shared,
            background,
            seen,
            connection,
        }
    }

    /// Moves to the current primary if a switch happened since this copy was made.
    fn catch_up(&mut self) {
        let now = self.shared.generation.load(Ordering::Acquire);
        if now != self.seen {
            *self = Primary::new(Arc::clone(&self.shared), self.background);
        }
    }

    /// After a failed command: if it failed the way a primary that died or became a replica
    /// fails, nothing more is sent until the sentinels name the primary again (asked now,
    /// not at the next poll). A timeout asks too, but does not stop the traffic: a slow
    /// primary is still the primary.
    fn check(&self, error: &RedisError) {
        let gone = super::dead_or_demoted(error);
        if gone {
            self.shared.suspect.store(true, Ordering::Release);
        }
        if gone || error.is_timeout() || error.code() == Some("LOADING") {
            self.look_now();
        }
    }

    fn look_now(&self) {
        if !self.shared.looking.load(Ordering::Acquire) {
            let shared = Arc::clone(&self.shared);
            tokio::spawn(async move { shared.look().await });
        }
    }

    /// While the primary is suspect: the error a command gets instead of being sent.
    fn held_back(&self) -> Option<RedisError> {
        if !self.shared.suspect.load(Ordering::Acquire) {
            return None;
        }
        self.look_now();
        Some(RedisError::from(std::io::Error::new(
            std::io::ErrorKind::NotConnected,
            "the Redis primary is being looked up through Sentinel",
        )))
    }
}

impl ConnectionLike for Primary {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        self.catch_up();
        Box::pin(async move {
            if let Some(error) = self.held_back() {
                return Err(error);
            }
            let answer = self.connection.req_packed_command(cmd).await;
            if let Err(error) = &answer {
                self.check(error);
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
        self.catch_up();
        Box::pin(async move {
            if let Some(error) = self.held_back() {
                return Err(error);
            }
            let answer = self
                .connection
                .req_packed_commands(cmd, offset, count)
                .await;
            if let Err(error) = &answer {
                self.check(error);
            }
            answer
        })
    }

    fn get_db(&self) -> i64 {
        self.connection.get_db()
    }
}
