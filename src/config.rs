//! Configuration: every setting from a CLI flag or its environment variable, parsed once at
//! start and passed down. Nothing below this module reads the environment.

use clap::Parser;
use std::net::SocketAddr;

/// flashsale: sells scarce stock fairly and fast.
#[derive(Debug, Clone, Parser)]
#[command(version, about)]
pub struct Config {
    /// Address the HTTP API listens on.
    #[arg(long, env = "FLASHSALE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Redis for the stock engine; unset runs the embedded in-memory engine.
    #[arg(long, env = "FLASHSALE_REDIS_URL")]
    pub redis_url: Option<String>,

    /// A Redis Cluster for the stock engine instead of one Redis: seed nodes
    /// (`redis://host:port`), comma-separated; the client learns the rest of the cluster.
    #[arg(
        long,
        env = "FLASHSALE_REDIS_CLUSTER_NODES",
        value_delimiter = ',',
        conflicts_with = "redis_url"
    )]
    pub redis_cluster_nodes: Vec<String>,

    /// One Redis with replicas watched by Sentinel instead of a fixed URL: the sentinels
    /// (`host:port` or `redis://[user:password@]host:port`), comma-separated. The service
    /// asks them for the primary and follows every failover; `FLASHSALE_REDIS_URL`, if set
    /// too, gives the primary's credentials and database (its host is not used).
    #[arg(
        long,
        env = "FLASHSALE_REDIS_SENTINELS",
        value_delimiter = ',',
        conflicts_with = "redis_cluster_nodes"
    )]
    pub redis_sentinels: Vec<String>,

    /// The name the sentinels watch the primary under (`sentinel monitor <name> …`).
    #[arg(
        long,
        env = "FLASHSALE_REDIS_SENTINEL_MASTER",
        default_value = "flashsale"
    )]
    pub redis_sentinel_master: String,

    /// Prefix of every Redis key, so several deployments can share one Redis.
    #[arg(long, env = "FLASHSALE_REDIS_NAMESPACE", default_value = "fs")]
    pub redis_namespace: String,

    /// The durable record: a `postgres://` URL, or a `sqlite:` URL (e.g.
    /// `sqlite:///var/lib/flashsale.db`); unset uses the embedded SQLite file `sqlite_path`.
    #[arg(long, env = "FLASHSALE_DATABASE_URL")]
    pub database_url: Option<String>,

    /// The embedded SQLite database used when no `database_url` is set.
    #[arg(long, env = "FLASHSALE_SQLITE_PATH", default_value = "flashsale.db")]
    pub sqlite_path: String,

    /// Events per database transaction at most.
    #[arg(long, env = "FLASHSALE_PERSIST_BATCH", default_value_t = 1000)]
    pub persist_batch: usize,

    /// A batch is written at the latest this many milliseconds after its first event.
    #[arg(long, env = "FLASHSALE_PERSIST_DELAY_MS", default_value_t = 20)]
    pub persist_delay_ms: u64,

    /// Events another persister took this long ago without acknowledging are taken over.
    #[arg(long, env = "FLASHSALE_PERSIST_RECLAIM_MS", default_value_t = 10_000)]
    pub persist_reclaim_ms: u64,

    /// Run the persister inside this instance (`flashsale persist` runs it alone).
    #[arg(long, env = "FLASHSALE_PERSISTER", default_value_t = true, action = clap::ArgAction::Set)]
    pub persister: bool,

    /// How often engine and database are compared, in milliseconds.
    #[arg(long, env = "FLASHSALE_RECONCILE_INTERVAL_MS", default_value_t = 5_000)]
    pub reconcile_interval_ms: u64,

    /// Service tokens with the `admin` scope (campaigns; implies `store`), comma-separated.
    #[arg(long, env = "FLASHSALE_ADMIN_TOKENS", value_delimiter = ',')]
    pub admin_tokens: Vec<String>,

    /// Service tokens with the `store` scope (reservations for any user), comma-separated.
    #[arg(long, env = "FLASHSALE_STORE_TOKENS", value_delimiter = ',')]
    pub store_tokens: Vec<String>,

    /// HS256 secret shared with the main store for user JWTs; unset generates one at start.
    #[arg(long, env = "FLASHSALE_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// Serve `/metrics` on this address instead of on the main listener.
    #[arg(long, env = "FLASHSALE_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// How often state gauges (units per campaign, backlog, lag, up) are sampled, in ms.
    #[arg(
        long,
        env = "FLASHSALE_METRICS_SAMPLE_INTERVAL_MS",
        default_value_t = 1_000
    )]
    pub metrics_sample_interval_ms: u64,

    /// How often the stock engine's memory and eviction policy are checked (Redis), in ms:
    /// exported as gauges; under strict durability a policy that can evict keys stops every
    /// decision (503 `engine_unsafe`) until it is fixed.
    #[arg(
        long,
        env = "FLASHSALE_ENGINE_CHECK_INTERVAL_MS",
        default_value_t = 10_000
    )]
    pub engine_check_interval_ms: u64,

    /// How many campaigns with recent activity get per-campaign series in `/metrics`; the
    /// rest are summed under `campaign="_other"`, so `/metrics` does not grow with the
    /// catalogue.
    #[arg(long, env = "FLASHSALE_METRICS_CAMPAIGNS", default_value_t = crate::metrics::DEFAULT_CAMPAIGN_SERIES)]
    pub metrics_campaigns: usize,

    /// Largest accepted request body, in bytes.
    #[arg(long, env = "FLASHSALE_BODY_LIMIT_BYTES", default_value_t = 16 * 1024)]
    pub body_limit_bytes: usize,

    /// Reservation attempts one user may make per second (a burst of as many is allowed);
    /// 0 turns the per-user rate limit off.
    #[arg(long, env = "FLASHSALE_USER_RATE_PER_SECOND", default_value_t = 20)]
    pub user_rate_per_second: u32,

    /// Requests served at once before new ones are shed with 503 `overloaded`.
    #[arg(long, env = "FLASHSALE_MAX_IN_FLIGHT", default_value_t = 20_000)]
    pub max_in_flight: usize,

    /// A request still running after this many milliseconds is answered with 503.
    #[arg(long, env = "FLASHSALE_REQUEST_TIMEOUT_MS", default_value_t = 5_000)]
    pub request_timeout_ms: u64,

    /// A request's headers must arrive within this many milliseconds of the connection
    /// waiting for them (an idle keep-alive connection is closed after it too).
    #[arg(
        long,
        env = "FLASHSALE_HEADER_READ_TIMEOUT_MS",
        default_value_t = 5_000
    )]
    pub header_read_timeout_ms: u64,

    /// A connection is closed gracefully (HTTP/2 GOAWAY, HTTP/1 `Connection: close` after
    /// the request in flight) once it is this old, in ms, so clients spread over instances
    /// added since and no connection lives forever.
    #[arg(
        long,
        env = "FLASHSALE_MAX_CONNECTION_AGE_MS",
        default_value_t = 300_000
    )]
    pub max_connection_age_ms: u64,

    /// A request's body must arrive within this many milliseconds of its headers; 408 after.
    #[arg(long, env = "FLASHSALE_BODY_READ_TIMEOUT_MS", default_value_t = 2_000)]
    pub body_read_timeout_ms: u64,

    /// Ended reservations (cancelled, expired) leave the stock engine this many seconds after
    /// they ended; the database keeps them, and replays of their keys and reads of their ids
    /// are answered from it. Keeps Redis memory per live hold flat over a long sale.
    #[arg(
        long,
        env = "FLASHSALE_ENDED_RETENTION_SECONDS",
        default_value_t = 3_600
    )]
    pub ended_retention_seconds: u64,

    /// Days after a campaign's end before its user ids are replaced in the database by a
    /// keyed hash (the campaign has left the stock engine long before).
    #[arg(long, env = "FLASHSALE_RETENTION_DAYS", default_value_t = 90)]
    pub retention_days: u64,

    /// The key of that hash (HMAC-SHA256); unset: one made once and kept in the database.
    #[arg(long, env = "FLASHSALE_PSEUDONYM_KEY", hide_env_values = true)]
    pub pseudonym_key: Option<String>,

    /// The key waiting-room passes are signed with (HMAC-SHA256); every instance must share
    /// it. Unset: one made once and kept in the database.
    #[arg(long, env = "FLASHSALE_QUEUE_PASS_KEY", hide_env_values = true)]
    pub queue_pass_key: Option<String>,

    /// How often the reaper looks for expired holds, in milliseconds.
    #[arg(long, env = "FLASHSALE_REAPER_INTERVAL_MS", default_value_t = 250)]
    pub reaper_interval_ms: u64,

    /// `strict`: refuse to start unless every acknowledged change is on disk before it is
    /// answered (with Redis: `appendonly yes` and `appendfsync always`; the embedded engine
    /// always answers after the SQLite commit). `default`: Redis's own persistence decides.
    #[arg(long, env = "FLASHSALE_DURABILITY", value_enum, default_value_t = Durability::Default)]
    pub durability: Durability,

    /// Webhook targets allowed besides public addresses: comma-separated host names or
    /// CIDRs (loopback, private and link-local addresses are refused unless listed).
    #[arg(long, env = "FLASHSALE_WEBHOOK_ALLOWED_HOSTS", value_delimiter = ',')]
    pub webhook_allowed_hosts: Vec<String>,

    /// How long one webhook delivery attempt may take, in milliseconds.
    #[arg(long, env = "FLASHSALE_WEBHOOK_TIMEOUT_MS", default_value_t = 10_000)]
    pub webhook_timeout_ms: u64,

    /// After failing this many seconds, a webhook event is given up on (recorded
    /// `gave_up`) and the next one goes on.
    #[arg(
        long,
        env = "FLASHSALE_WEBHOOK_GIVE_UP_SECONDS",
        default_value_t = 86_400
    )]
    pub webhook_give_up_seconds: u64,

    /// Log as JSON lines instead of text.
    #[arg(long, env = "FLASHSALE_LOG_JSON")]
    pub log_json: bool,

    /// `campaign` and `reservation` commands: the service's base URL (default `http://` +
    /// FLASHSALE_LISTEN). Accepted before or after the subcommand.
    #[arg(long, env = "FLASHSALE_URL", global = true)]
    pub url: Option<String>,

    /// `campaign` and `reservation` commands: the token to send (default: the first of
    /// FLASHSALE_ADMIN_TOKENS, else of FLASHSALE_STORE_TOKENS). Accepted before or after the
    /// subcommand.
    #[arg(long, global = true, hide_env_values = true)]
    pub token: Option<String>,

    /// What to run; the service when absent.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// How durable an answer must be (see `Config::durability`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Durability {
    Default,
    Strict,
}

/// The binary's modes.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Serve the API (the default).
    Serve,
    /// Run only the persister: event streams to the database, until Ctrl-C or SIGTERM.
    Persist,
    /// Compare engine and database per campaign, print the drift, exit 1 if any.
    Reconcile,
    /// List the events the persister set aside (exit 1 if any); `--retry` applies the ones
    /// the database refused once more.
    DeadEvents {
        /// Apply the refused events again (after fixing what the database refused them for).
        #[arg(long)]
        retry: bool,
    },
    /// Manage campaigns through a running service's API (`--url`, `--token`).
    Campaign {
        #[command(subcommand)]
        action: CampaignAction,
    },
    /// Inspect and settle reservations through a running service's API (`--url`, `--token`).
    Reservation {
        #[command(subcommand)]
        action: ReservationAction,
    },
}

/// Which service the CLI talks to, and as whom.
#[derive(Debug, Clone)]
pub struct ApiTarget {
    /// The service's base URL.
    pub url: String,
    pub token: String,
}

impl Config {
    /// Where `campaign` and `reservation` commands go, and with which token: `--url` (or
    /// `http://` + the listen address), `--token` (or the first of FLASHSALE_ADMIN_TOKENS,
    /// else of FLASHSALE_STORE_TOKENS — the service's own variables, one per role).
    pub fn api_target(&self) -> anyhow::Result<ApiTarget> {
        let first = |tokens: &[String]| tokens.iter().find(|t| !t.is_empty()).cloned();
        let token = self
            .token
            .clone()
            .or_else(|| first(&self.admin_tokens))
            .or_else(|| first(&self.store_tokens))
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "no token: pass --token, or set FLASHSALE_ADMIN_TOKENS (or FLASHSALE_STORE_TOKENS) as the service has it"
                )
            })?;
        Ok(ApiTarget {
            url: self
                .url
                .clone()
                .unwrap_or_else(|| format!("http://{}", self.listen)),
            token,
        })
    }
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum CampaignAction {
    /// Create a campaign; prints it.
    Create {
        #[arg(long)]
        id: Option<String>,
        /// `flash_sale` or `group_buy`.
        #[arg(long, default_value = "flash_sale")]
        kind: String,
        #[arg(long)]
        sku: String,
        #[arg(long)]
        stock: u64,
        #[arg(long)]
        per_user_limit: Option<u64>,
        #[arg(long)]
        hold_seconds: Option<u64>,
        #[arg(long)]
        max_extend_seconds: Option<u64>,
        /// RFC 3339.
        #[arg(long)]
        starts_at: Option<String>,
        /// RFC 3339.
        #[arg(long)]
        ends_at: Option<String>,
        /// Group buys: members per group.
        #[arg(long)]
        group_size: Option<u64>,
        /// Group buys: how long a group may stay open.
        #[arg(long)]
        group_window_seconds: Option<u64>,
        /// A waiting room letting this many people through per second.
        #[arg(long)]
        queue_admit_per_second: Option<u64>,
        /// With a waiting room: how long a pass stays valid (default 120).
        #[arg(long, requires = "queue_admit_per_second")]
        queue_pass_seconds: Option<u64>,
    },
    /// List campaigns (one page; `--after` the printed `next` for the following one).
    List {
        /// `scheduled | active | sold_out | ended`
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        after: Option<String>,
        #[arg(long)]
        limit: Option<u32>,
    },
    /// A campaign with its live counts.
    Show { id: String },
    /// Add (positive) or withdraw (negative) units; once per `--key`.
    Stock {
        id: String,
        #[arg(allow_hyphen_values = true)]
        delta: i64,
        /// Idempotency key (default: a new one).
        #[arg(long)]
        key: Option<String>,
    },
    /// End the campaign now (no new attempts; live holds end normally).
    End { id: String },
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum ReservationAction {
    Show {
        id: String,
    },
    Confirm {
        id: String,
    },
    Cancel {
        id: String,
    },
    /// A campaign's reservations, one page.
    List {
        campaign: String,
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        user_id: Option<String>,
        #[arg(long)]
        after: Option<String>,
        #[arg(long)]
        limit: Option<u32>,
    },
}

impl Config {
    /// Defaults for everything, as if no flag or variable were set (tests start from this).
    pub fn defaults() -> Self {
        Config::parse_from(["flashsale"])
    }
}
