//! The accept loop: hyper's connection builder with the timeouts `axum::serve` leaves off.
//!
//! `axum::serve` sets no timer on hyper, so hyper's header-read timeout never runs: a client
//! that sends half a request line and stops (slowloris), or connects and says nothing, holds
//! its connection — and a slot of the process's file descriptors — forever. Here every
//! connection gets [`ServeSettings::header_read_timeout`] to deliver each request's headers,
//! idle keep-alive connections included (hyper starts the timer when it waits for a head).

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::time::Duration;
use tokio::net::TcpListener;

/// How connections are served.
#[derive(Debug, Clone, Copy)]
pub struct ServeSettings {
    /// A request's headers must arrive within this long, counted from when the connection
    /// waits for them (so an idle keep-alive connection is closed after it too).
    pub header_read_timeout: Duration,
}

/// Serves `router` on `listener` until `stop` resolves; then stops accepting, lets every
/// in-flight request finish (idle connections close at once) and returns.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    settings: ServeSettings,
    stop: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
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
        let service = TowerToHyperService::new(router.clone());
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let header_read_timeout = settings.header_read_timeout;
        tokio::spawn(async move {
            // The version sniffing before hyper's HTTP/1 code runs has no timer: a client
            // that connects and sends nothing is dropped here.
            let mut first = [0u8; 1];
            match tokio::time::timeout(header_read_timeout, stream.peek(&mut first)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return,
            }
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            if let Err(error) = watcher.watch(connection.into_owned()).await {
                tracing::trace!(%error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
