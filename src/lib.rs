//! flashsale sells scarce stock fairly and fast: a flash sale (秒杀) or a group buy (拼团)
//! answers hundreds of thousands of reservation attempts per second, never sells a unit twice
//! and never lets one user take more than the limit.
//!
//! # Layout
//! - [`config`]: every setting, from flags and environment, parsed once.
//! - [`startup`]: [`startup::Application`] builds the state, binds, serves, shuts down.
//! - [`domain`]: the contract's nouns as parsed types, and the event type; no I/O.
//! - [`engine`]: the [`engine::Engine`], [`engine::EventLog`] and [`engine::GateReads`]
//!   traits and their guarantees; Redis (`engine::redis`, Lua in `src/engine/redis/scripts/`) and in-memory
//!   (`engine::memory`) implementations with identical rules; the in-process sold-out gate.
//! - [`pipeline`]: after and around a decision: the persister (event log → database),
//!   recovery (database → engine, and [`pipeline::recovery::Recovering`], the engine as
//!   requests see it) and reconciliation.
//! - [`store`]: the database (Postgres or SQLite): campaigns, reservations, groups, the feed.
//! - [`workers`]: background work the application owns (reaper, gate refresher, sampler).
//! - [`http`]: axum transport only: one module per resource, auth, problem+json errors.
//! - [`shutdown`]: the one signal every worker stops on.
//! - [`metrics`]: every metric name.
//!
//! A request reads straight down: http → pipeline::recovery::Recovering → engine (decision);
//! the persister then carries the decision's event from the engine's log to the store.
//! Nothing below points back up. `docs/architecture.md` has the module map and where a new
//! campaign kind or event consumer goes.

pub mod cli;
pub mod commands;
pub mod config;
pub mod domain;
pub mod engine;
pub mod http;
pub mod metrics;
pub mod pipeline;
pub mod shutdown;
pub mod startup;
pub mod store;
pub mod webhooks;
pub mod workers;
