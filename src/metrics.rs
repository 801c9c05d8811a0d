//! Every metric name, in one place, and the Prometheus recorder.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// HTTP requests by `route`, `method` and `status`.
pub const HTTP_REQUESTS: &str = "flashsale_http_requests_total";
/// HTTP request latency by `route` and `method`.
pub const HTTP_REQUEST_DURATION: &str = "flashsale_http_request_duration_seconds";
/// Requests being served right now.
pub const HTTP_IN_FLIGHT: &str = "flashsale_http_requests_in_flight";
/// Reservation attempts by `outcome` (reserved, replayed, sold_out, limit_exceeded, ...).
pub const RESERVATION_ATTEMPTS: &str = "flashsale_reservation_attempts_total";
/// Group opens and joins by `operation` and `outcome`.
pub const GROUP_ATTEMPTS: &str = "flashsale_group_attempts_total";
/// Refusals answered by the in-process sold-out gate, without asking the engine.
pub const SOLD_OUT_SHORT_CIRCUITS: &str = "flashsale_sold_out_short_circuits_total";
/// Held reservations the reaper expired.
pub const REAPER_EXPIRED: &str = "flashsale_reaper_expired_total";
/// Reaper passes that failed.
pub const REAPER_ERRORS: &str = "flashsale_reaper_errors_total";
/// Engine failures (not refusals) by `operation`.
pub const ENGINE_ERRORS: &str = "flashsale_engine_errors_total";
/// Events written to the database.
pub const PERSISTED_EVENTS: &str = "flashsale_persister_events_total";
/// Events per persisted batch.
pub const PERSIST_BATCH_SIZE: &str = "flashsale_persister_batch_size";
/// Time to write and acknowledge one batch.
pub const PERSIST_BATCH_DURATION: &str = "flashsale_persister_batch_duration_seconds";
/// Age of the oldest event of the last persisted batch.
pub const PERSIST_LAG: &str = "flashsale_persister_lag_seconds";
/// Persister failures by `stage` (read, write, ack).
pub const PERSIST_FAILURES: &str = "flashsale_persister_failures_total";
/// Units by which engine and database disagree, per `campaign`.
pub const RECONCILE_DRIFT: &str = "flashsale_reconcile_drift_units";
/// Campaigns rebuilt in the engine from the database.
pub const RECOVERED_CAMPAIGNS: &str = "flashsale_recovered_campaigns_total";
/// Always 1, labelled with `version` and `engine`.
pub const BUILD_INFO: &str = "flashsale_build_info";

/// Buckets that resolve a sub-millisecond service: 100 µs to 5 s.
const LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Installs the process-wide recorder once and returns its handle; later calls (tests start
/// many applications in one process) get the same handle.
pub fn install() -> PrometheusHandle {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS_SECONDS)
                .unwrap_or_else(|_| PrometheusBuilder::new());
            match builder.install_recorder() {
                Ok(handle) => handle,
                // Another recorder is installed (an embedding program's): keep a private one
                // so `/metrics` still answers.
                Err(_) => PrometheusBuilder::new().build_recorder().handle(),
            }
        })
        .clone()
}
