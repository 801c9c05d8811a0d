//! The durable record in a SQL database (sqlx): Postgres in production, an embedded SQLite
//! file by default. Knows nothing of Redis; it stores campaigns, the current state of every
//! reservation and group, and the append-only event feed. Migrations are in `migrations/`.
//!
//! - `campaigns`: the campaigns table and the units the database counts per campaign;
//! - `reservations`: live reservations and groups, as recovery reads them back;
//! - `feed`: the event feed's pages;
//! - `batch`: a persister batch turned into rows and written in one transaction, behind the
//!   fence that keeps a lost engine dataset's late events out;
//! - [`dead`]: events set aside instead of applied, with why.
//!
//! Rows are typed (`sqlx::FromRow`) and decoded into domain values in one place each; the
//! same SQL serves both databases, run by [`on_pool!`] on whichever pool the store has.

mod batch;
mod campaigns;
pub mod dead;
mod feed;
mod fence;
pub mod personal;
mod reservations;
mod webhooks;

pub use campaigns::StoredCounts;
pub use feed::{FeedEvent, FeedFilter};
pub use reservations::{Rebuild, Rebuilding};
pub use webhooks::{Delivery, Webhook};

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use std::str::FromStr;
use std::time::Duration;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("the database holds something unexpected: {0}")]
    Corrupt(String),
}

/// The database, whichever kind. Cheap to clone (a pool).
#[derive(Clone)]
pub enum Store {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

/// Runs `$body` with `$pool` bound to the store's pool, whichever kind it is: the SQL and the
/// row types are shared, only the pool's type differs.
macro_rules! on_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match $store {
            $crate::store::Store::Postgres($pool) => $body,
            $crate::store::Store::Sqlite($pool) => $body,
        }
    };
}
pub(crate) use on_pool;

impl Store {
    /// Connects and migrates: Postgres at a `postgres:` URL, SQLite at a `sqlite:` URL, or,
    /// with no URL, the SQLite file at `sqlite_path`.
    pub async fn connect(url: Option<&str>, sqlite_path: &str) -> Result<Self, StoreError> {
        let store = match url {
            Some(url) if !url.starts_with("sqlite:") => Store::Postgres(
                PgPoolOptions::new()
                    .max_connections(8)
                    .acquire_timeout(Duration::from_secs(3))
                    .after_release(|connection, _| Box::pin(clean(connection)))
                    .connect(url)
                    .await?,
            ),
            sqlite => {
                let sqlite_url = sqlite
                    .map(str::to_owned)
                    .unwrap_or_else(|| format!("sqlite://{sqlite_path}"));
                let options = SqliteConnectOptions::from_str(&sqlite_url)?
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .busy_timeout(Duration::from_secs(5));
                Store::Sqlite(
                    SqlitePoolOptions::new()
                        .max_connections(4)
                        .after_release(|connection, _| Box::pin(clean(connection)))
                        .connect_with(options)
                        .await?,
                )
            }
        };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        match self {
            Store::Postgres(pool) => sqlx::migrate!("migrations/postgres").run(pool).await?,
            Store::Sqlite(pool) => sqlx::migrate!("migrations/sqlite").run(pool).await?,
        }
        Ok(())
    }

    /// `postgres` or `sqlite`.
    pub fn name(&self) -> &'static str {
        match self {
            Store::Postgres(_) => "postgres",
            Store::Sqlite(_) => "sqlite",
        }
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        on_pool!(self, pool => sqlx::query("SELECT 1").execute(pool).await.map(|_| ())?);
        Ok(())
    }
}

/// Whether a connection going back to the pool is clean: a transaction that failed to commit
/// (SQLite on a full disk rolls it back itself, and sqlx's own rollback then fails) can leave
/// the driver believing it is still inside one, and every later `BEGIN` on that connection
/// fails. Such a connection is closed, not reused: a storage fault ends when the fault ends.
async fn clean<C: sqlx::Connection>(connection: &mut C) -> Result<bool, sqlx::Error> {
    // Runs after any rollback a dropped transaction queued.
    connection.ping().await?;
    Ok(!connection.is_in_transaction())
}

/// A value the database holds that does not parse as its domain type.
fn corrupt(what: &str, value: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what} {value}"))
}

/// A count or size the database holds as BIGINT, as the unsigned number it is.
fn unsigned<T: TryFrom<i64>>(what: &str, value: i64) -> Result<T, StoreError> {
    T::try_from(value).map_err(|_| corrupt(what, value))
}
