//! The same specification run against every engine: the in-memory engine, the Redis engine
//! (real Redis at `FLASHSALE_TEST_REDIS_URL`, default 127.0.0.1:6379; a test fails, never
//! skips, when Redis is unreachable), and both behind the sold-out gate. Tests isolate
//! themselves with fresh campaign ids.

mod batches;
mod concurrency;
mod engines;
mod events;
mod extend;
mod group_model;
mod groups;
mod model;
mod queue;
mod rules;
mod scripts;
mod work;
