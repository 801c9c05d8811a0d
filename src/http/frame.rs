//! Every request's frame, one middleware outermost: its id (the caller's `x-request-id`, or a
//! new ULID) on the request and on every answer; counted by matched route, method and status
//! and timed; a 5xx logged. One layer instead of four (request id set, propagated, the trace
//! span, the metrics), and the metric handles resolved once per route, method and status
//! (per worker thread) instead of per request: the profile of a sale showed the allocator
//! busy with the layers' futures and the labels.

use crate::metrics as m;
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::Response;
use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, Instant};

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The metric handles of one route, method and status, and when they were resolved.
#[derive(Clone)]
struct Handles {
    requests: metrics::Counter,
    duration: metrics::Histogram,
    resolved: Instant,
}

/// Handles are resolved again after this long: the exporter drops a series nobody updated
/// for [`m::IDLE_TIMEOUT`], and an update through a handle kept from before would be lost.
pub(super) const RESOLVE_EVERY: Duration = Duration::from_secs(60);

thread_local! {
    /// Handles by (route's address, method, status): a route's matched path is one shared
    /// string, so its address names it. Bounded by routes × methods × statuses.
    static HANDLES: RefCell<HashMap<(usize, &'static str, u16), Handles>> =
        RefCell::new(HashMap::new());

    static IN_FLIGHT: RefCell<(metrics::Gauge, Instant)> =
        RefCell::new((metrics::gauge!(m::HTTP_IN_FLIGHT), Instant::now()));
}

/// The in-flight gauge, resolved again every [`RESOLVE_EVERY`].
fn in_flight(change: f64) {
    IN_FLIGHT.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.1.elapsed() >= RESOLVE_EVERY {
            *cell = (metrics::gauge!(m::HTTP_IN_FLIGHT), Instant::now());
        }
        cell.0.increment(change);
    });
}

fn handles(route: Option<&str>, method: &'static str, status: u16) -> Handles {
    let address = route.map_or(0, |r| r.as_ptr() as usize);
    HANDLES.with(|cache| {
        let mut cache = cache.borrow_mut();
        let fresh = cache
            .get(&(address, method, status))
            .filter(|h| h.resolved.elapsed() < RESOLVE_EVERY);
        if let Some(handles) = fresh {
            return handles.clone();
        }
        let route = route.unwrap_or("unmatched").to_owned();
        let handles = Handles {
            requests: metrics::counter!(m::HTTP_REQUESTS, "route" => route.clone(), "method" => method, "status" => status.to_string()),
            duration: metrics::histogram!(m::HTTP_REQUEST_DURATION, "route" => route, "method" => method),
            resolved: Instant::now(),
        };
        cache.insert((address, method, status), handles.clone());
        handles
    })
}

/// See the module docs.
pub async fn frame(mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = match request.headers().get(&REQUEST_ID) {
        Some(id) => id.clone(),
        None => {
            // A ULID from a thread-local generator (a UUID v4 per request cost a `getrandom`
            // system call, visible in the profile of a sold-out sale).
            let id = HeaderValue::from_str(&ulid::Ulid::new().to_string())
                .expect("a ULID is a valid header value");
            request.headers_mut().insert(REQUEST_ID, id.clone());
            id
        }
    };
    let route = request.extensions().get::<MatchedPath>().cloned();
    let method = method_label(request.method());
    in_flight(1.0);
    let mut response = next.run(request).await;
    // (Maybe on another worker thread: each holds a handle on the same gauge.)
    in_flight(-1.0);
    let status = response.status();
    let route = route.as_ref().map(MatchedPath::as_str);
    let handles = handles(route, method, status.as_u16());
    handles.requests.increment(1);
    handles.duration.record(started.elapsed().as_secs_f64());
    if status.is_server_error() {
        tracing::error!(
            request_id = id.to_str().unwrap_or_default(),
            route = route.unwrap_or("unmatched"),
            method,
            status = status.as_u16(),
            "request failed"
        );
    }
    if !response.headers().contains_key(&REQUEST_ID) {
        response.headers_mut().insert(REQUEST_ID, id);
    }
    response
}

/// Bounded method labels: anything unusual is `other`.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        _ => "other",
    }
}
