//! Every metric's name, in one table.

/// HTTP requests by `route`, `method` and `status`.
pub const HTTP_REQUESTS: &str = "flashsale_http_requests_total";
/// HTTP request latency by `route` and `method`.
pub const HTTP_REQUEST_DURATION: &str = "flashsale_http_request_duration_seconds";
/// Requests being served right now.
pub const HTTP_IN_FLIGHT: &str = "flashsale_http_requests_in_flight";
/// Reservation attempts by `campaign` and `outcome` (reserved, replayed, sold_out,
/// limit_exceeded, not_started, ended, rate_limited, ...).
pub const RESERVATION_ATTEMPTS: &str = "flashsale_reservation_attempts_total";
/// Group opens and joins by `operation` and `outcome`.
pub const GROUP_ATTEMPTS: &str = "flashsale_group_attempts_total";
/// Waiting-room joins by `outcome` (joined, existing).
pub const QUEUE_JOINS: &str = "flashsale_queue_joins_total";
/// Reservations, group opens and joins of a queued campaign refused for their pass, by
/// `reason` (missing, malformed, other_campaign, expired, bad_signature).
pub const QUEUE_PASS_REFUSALS: &str = "flashsale_queue_pass_refusals_total";
/// Tickets admitted by this instance's admission worker, by `campaign`.
pub const QUEUE_ADMITTED: &str = "flashsale_queue_admitted_total";
/// Tickets waiting, by `campaign` (as the last admission round saw them).
pub const QUEUE_WAITING: &str = "flashsale_queue_waiting";
/// Units the waiting could still be admitted for, by `campaign` (0 outside its window).
pub const QUEUE_ROOM: &str = "flashsale_queue_room";
/// Refusals answered by the in-process sold-out gate, without asking the engine.
pub const SOLD_OUT_SHORT_CIRCUITS: &str = "flashsale_sold_out_short_circuits_total";
/// Moves of units between the shards of a sharded campaign (a shard ran dry).
pub const SHARD_TRANSFERS: &str = "flashsale_shard_transfers_total";
/// Units moved between the shards of sharded campaigns.
pub const SHARD_TRANSFERRED_UNITS: &str = "flashsale_shard_transferred_units_total";
/// Held reservations the reaper expired.
pub const REAPER_EXPIRED: &str = "flashsale_reaper_expired_total";
/// Reaper passes that failed.
pub const REAPER_ERRORS: &str = "flashsale_reaper_errors_total";
/// Units of a live campaign by `campaign` and `state` (available, held, confirmed).
pub const CAMPAIGN_UNITS: &str = "flashsale_campaign_units";
/// Groups of a live group-buy campaign by `campaign` and `status` (open, formed, failed).
pub const CAMPAIGN_GROUPS: &str = "flashsale_campaign_groups";
/// Time one Lua script took, round trip included, by `script`.
pub const SCRIPT_DURATION: &str = "flashsale_redis_script_duration_seconds";
/// Lua script calls that failed (connection, timeout, script error), by `script`.
pub const SCRIPT_ERRORS: &str = "flashsale_redis_script_errors_total";
/// 1 while the stock engine answers a ping, else 0.
pub const ENGINE_UP: &str = "flashsale_engine_up";
/// 1 while the database answers, else 0.
pub const DATABASE_UP: &str = "flashsale_database_up";
/// Memory Redis uses, per node (`INFO memory` `used_memory`).
pub const ENGINE_MEMORY_USED: &str = "flashsale_engine_memory_used_bytes";
/// Redis's `maxmemory` per node (0: no limit).
pub const ENGINE_MEMORY_MAX: &str = "flashsale_engine_memory_max_bytes";
/// 1 while a node's `maxmemory-policy` may evict keys (anything but `noeviction`).
pub const ENGINE_EVICTING: &str = "flashsale_engine_evicting";
/// Keys a node evicted since it started (`INFO stats` `evicted_keys`).
pub const ENGINE_EVICTED_KEYS: &str = "flashsale_engine_evicted_keys_total";
/// 0 while the persister's writes fail (a full disk, a database that refuses writes), 1 once
/// one succeeds: changes cannot be made durable meanwhile.
pub const DATABASE_WRITABLE: &str = "flashsale_database_writable";
/// Stream entries not yet persisted (and acknowledged): each carries one event, or the
/// events of one batch of reserves.
pub const PERSIST_BACKLOG: &str = "flashsale_persister_backlog_events";
/// Events handed to a persister and not yet acknowledged.
pub const PERSIST_PENDING: &str = "flashsale_persister_pending_events";
/// Events written to the database.
pub const PERSISTED_EVENTS: &str = "flashsale_persister_events_total";
/// Events per persisted batch.
pub const PERSIST_BATCH_SIZE: &str = "flashsale_persister_batch_size";
/// Reservation attempts decided by one call of `src/engine/redis/scripts/reserve.lua` (group commit).
pub const RESERVE_BATCH_SIZE: &str = "flashsale_reserve_batch_size";
/// Waiting-room tickets read by one call of the queue script (Redis engine).
pub const TICKET_BATCH_SIZE: &str = "flashsale_ticket_read_batch_size";
/// Waiting-room joins decided by one call of the queue script (Redis engine).
pub const JOIN_BATCH_SIZE: &str = "flashsale_queue_join_batch_size";
/// Store key claims per `claim_key.lua` call (sharded campaigns).
pub const CLAIM_BATCH_SIZE: &str = "flashsale_shard_claim_batch_size";
/// Time to write and acknowledge one batch.
pub const PERSIST_BATCH_DURATION: &str = "flashsale_persister_batch_duration_seconds";
/// Age of the oldest event not yet persisted (0 when none waits).
pub const PERSIST_LAG: &str = "flashsale_persister_lag_seconds";
/// Persister failures by `stage` (read, write, ack).
pub const PERSIST_FAILURES: &str = "flashsale_persister_failures_total";
/// Events set aside in `dead_events` instead of applied, by `reason` (refused,
/// unknown_campaign, fenced).
pub const DEAD_EVENTS: &str = "flashsale_persister_dead_events_total";
/// Units by which engine and database disagree, per `campaign`.
pub const RECONCILE_DRIFT: &str = "flashsale_reconcile_drift_units";
/// Campaigns this instance found lost by the engine (a Redis, or a cluster node, restarted
/// empty), each counted once per loss.
pub const ENGINE_DATA_LOSSES: &str = "flashsale_engine_data_losses_total";
/// Campaigns rebuilt in the engine from the database.
pub const RECOVERED_CAMPAIGNS: &str = "flashsale_recovered_campaigns_total";
/// Redis failovers this instance followed (Sentinel named a new primary).
pub const REDIS_FAILOVERS: &str = "flashsale_redis_failovers_total";
/// Campaigns removed from a newly promoted Redis because it lacked changes the database has
/// (rebuilt from the database on first use).
pub const FAILOVER_REBUILDS: &str = "flashsale_failover_rebuilds_total";
/// Webhook delivery attempts by `outcome` (delivered, failed, gave_up).
pub const WEBHOOK_DELIVERIES: &str = "flashsale_webhook_deliveries_total";
/// Per `webhook`: age of the oldest feed event not yet delivered (0 when none waits).
pub const WEBHOOK_LAG: &str = "flashsale_webhook_lag_seconds";
/// Always 1, labelled with `version` and `engine`.
pub const BUILD_INFO: &str = "flashsale_build_info";
