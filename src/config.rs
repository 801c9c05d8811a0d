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

    /// How often the reaper looks for expired holds, in milliseconds.
    #[arg(long, env = "FLASHSALE_REAPER_INTERVAL_MS", default_value_t = 250)]
    pub reaper_interval_ms: u64,

    /// Log as JSON lines instead of text.
    #[arg(long, env = "FLASHSALE_LOG_JSON")]
    pub log_json: bool,
}

impl Config {
    /// Defaults for everything, as if no flag or variable were set (tests start from this).
    pub fn defaults() -> Self {
        Config::parse_from(["flashsale"])
    }
}
