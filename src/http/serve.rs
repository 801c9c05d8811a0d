//! The accept loop: hyper's connection builder with the timeouts `axum::serve` leaves off.
//!
//! `axum::serve` sets no timer on hyper, so hyper's header-read timeout never runs: a client
//! that sends half a request line and stops (slowloris), or connects and says nothing, holds
//! its connection — and a slot of the process's file descriptors — forever. Here every
//! connection gets [`ServeSettings::header_read_timeout`] to deliver each request's headers,
//! idle keep-alive connections included (hyper starts the timer when it waits for a head).
//!
//! HTTP/2 has no such timer in hyper, and its keep-alive PINGs only tell that the peer is
//! alive: a client that answers them would keep an idle connection forever. So each
//! connection's requests are counted here, and a connection with none in flight for the same
//! timeout is closed gracefully (GOAWAY) — whatever PINGs arrive. Every connection is also
//! closed gracefully once it is [`ServeSettings::max_age`] old.

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tower::ServiceExt;

/// How connections are served.
#[derive(Debug, Clone, Copy)]
pub struct ServeSettings {
    /// A request's headers must arrive within this long, counted from when the connection
    /// waits for them (so an idle keep-alive connection is closed after it too); an HTTP/2
    /// connection with no request in flight for this long is closed too.
    pub header_read_timeout: Duration,
    /// Every connection is closed gracefully once it is this old.
    pub max_age: Duration,
}

/// Serves `router` on `listener` until `stop` resolves; then stops accepting, lets every
/// in-flight request finish (idle connections close at once) and returns.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    settings: ServeSettings,
    stop: impl Future<Output = ()>,
) {
    // Every connection holds a receiver: stopping says so to each, then waits until every
    // one is gone.
    let (stopping, stopped) = tokio::sync::watch::channel(false);
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(settings.header_read_timeout)
        .keep_alive_timeout(settings.header_read_timeout);
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of file descriptors and the like: pause instead of spinning.
                tracing::warn!(%error, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        tokio::spawn(connection(
            stream,
            router.clone(),
            builder.clone(),
            settings,
            stopped.clone(),
        ));
    }
    drop(listener);
    drop(stopped);
    let _ = stopping.send(true);
    stopping.closed().await;
}

/// When a connection last finished a request, and how many it has in flight.
#[derive(Default)]
struct Activity {
    in_flight: AtomicUsize,
    /// Milliseconds from the connection's start to its last request's end.
    last_ms: AtomicU64,
}

/// Ends a request's count in [`Activity`], however the request ends.
struct InFlight {
    activity: Arc<Activity>,
    born: Instant,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let at = self.born.elapsed().as_millis() as u64;
        self.activity.last_ms.fetch_max(at, Ordering::Relaxed);
        self.activity.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves one connection until it ends, closing it gracefully when the server stops, when
/// it has been idle for the header-read timeout, or once it reaches its maximum age.
async fn connection(
    stream: tokio::net::TcpStream,
    router: Router,
    builder: Builder<TokioExecutor>,
    settings: ServeSettings,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let idle = settings.header_read_timeout;
    // The version sniffing before hyper's HTTP/1 code runs has no timer: a client that
    // connects and sends nothing is dropped here.
    let mut first = [0u8; 1];
    match tokio::time::timeout(idle, stream.peek(&mut first)).await {
        Ok(Ok(n)) if n > 0 => {}
        _ => return,
    }
    let born = Instant::now();
    let activity = Arc::new(Activity::default());
    let counted = {
        let activity = Arc::clone(&activity);
        tower::service_fn(move |request| {
            activity.in_flight.fetch_add(1, Ordering::Relaxed);
            let in_flight = InFlight {
                activity: Arc::clone(&activity),
                born,
            };
            let answer = router.clone().oneshot(request);
            async move {
                let response = answer.await;
                drop(in_flight);
                response
            }
        })
    };
    let connection = builder
        .serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(counted));
    tokio::pin!(connection);
    let mut check = tokio::time::interval((idle / 4).max(Duration::from_millis(10)));
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Once closing: how long the requests in flight may still take.
    let mut closing: Option<Instant> = None;
    loop {
        tokio::select! {
            ended = connection.as_mut() => {
                if let Err(error) = ended {
                    tracing::trace!(%error, "connection ended with an error");
                }
                return;
            }
            _ = stopped.changed(), if closing.is_none() => {
                connection.as_mut().graceful_shutdown();
                closing = Some(Instant::now());
            }
            _ = check.tick() => match closing {
                None => {
                    let idle_since = Duration::from_millis(activity.last_ms.load(Ordering::Relaxed));
                    let idle_for = born.elapsed().saturating_sub(idle_since);
                    let idle_now = activity.in_flight.load(Ordering::Relaxed) == 0 && idle_for >= idle;
                    if idle_now || born.elapsed() >= settings.max_age {
                        connection.as_mut().graceful_shutdown();
                        closing = Some(Instant::now());
                    }
                }
                // A peer that has nothing in flight and still does not let go is dropped.
                Some(since)
                    if since.elapsed() >= idle * 2
                        && activity.in_flight.load(Ordering::Relaxed) == 0
                        && !*stopped.borrow() =>
                {
                    return
                }
                Some(_) => {}
            },
        }
    }
}
