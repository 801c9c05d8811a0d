//! The HTTP API, end to end: the real server on a random port, against the in-memory engine
//! and against the real Redis (`FLASHSALE_TEST_REDIS_URL`, default 127.0.0.1:6379; tests
//! fail, never skip, when it is unreachable). One test binary; tests isolate themselves with
//! fresh campaign ids.

mod abuse;
mod auth;
mod campaigns;
mod catalogue;
mod cli;
mod concurrency;
mod console;
mod durability;
mod failover;
mod faults;
mod groups;
mod helpers;
mod input;
mod observability;
mod outages;
mod personal;
mod processes;
mod queue;
mod reservations;
mod service;
mod shards;
mod storage;
mod webhooks;
