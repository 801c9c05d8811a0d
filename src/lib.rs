//! flashsale sells scarce stock fairly and fast: a flash sale (秒杀) or a group buy (拼团)
//! answers hundreds of thousands of reservation attempts per second, never sells a unit twice
//! and never lets one user take more than the limit.
//!
//! # Layout
//! - [`config`]: every setting, from flags and environment, parsed once.
//! - [`startup`]: [`startup::Application`] builds the state, binds, serves, shuts down.
//! - [`domain`]: the contract's nouns as parsed types; no I/O.
//! - [`engine`]: the stock engine trait and its invariants; Redis (Lua, `lua/`) and in-memory
//!   implementations with identical rules; the in-process sold-out gate.
//! - [`workers`]: background work the application owns (reaper, gate refresher).
//! - [`http`]: axum transport only: one module per resource, auth, problem+json errors.
//! - [`metrics`]: every metric name.
//!
//! A request reads straight down: http → engine (decision). Nothing below points back up.

pub mod config;
pub mod domain;
pub mod engine;
pub mod http;
pub mod metrics;
pub mod pipeline;
pub mod shutdown;
pub mod startup;
pub mod store;
pub mod workers;
