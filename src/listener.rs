//! Serving HTTP/1.1 on a TCP listener with the protections every listener of these programs
//! needs: a time limit on each request's headers (also while a kept-alive connection is idle),
//! a cap on the connections served at once, and a graceful shutdown. Shared by the metrics
//! listener and the dashboard.

use std::error::Error as StdError;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::service::Service;
use hyper::{Request, Response};
use tokio::net::TcpListener;
use tracing::{debug, warn};

/// How long a request's headers may take, also on an idle kept-alive connection: a client that
/// opens connections and sends nothing (or a byte at a time) cannot hold them for longer. A
/// browser, curl or a scraper sends its headers at once.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a stop waits for the requests under way to finish.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// What a listener allows its clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once; more wait in the kernel's backlog until one ends.
    pub max_connections: usize,
    /// How long a request's headers may take ([`HEADER_TIMEOUT`] unless a test wants less).
    pub header_timeout: Duration,
}

/// Serve `service` on `listener` until `shutdown` resolves: HTTP/1.1 with keep-alive, at most
/// `limits.max_connections` connections at once, each closed when a request's headers take
/// longer than `limits.header_timeout`. On shutdown it stops accepting, lets the requests in
/// progress finish, and returns once every connection has ended, or after [`SHUTDOWN_GRACE`].
pub async fn serve<S, B>(
    listener: TcpListener,
    service: S,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    use hyper_util::rt::{TokioIo, TokioTimer};
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    tokio::pin!(shutdown);
    loop {
        // A connection is accepted only with a slot free; the slot goes with the connection.
        let slot = tokio::select! {
            _ = &mut shutdown => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(s) => s,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(e) => {
                    // Out of file descriptors, for one: wait rather than spin.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let conn = builder.serve_connection(TokioIo::new(stream), service.clone());
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(e) = conn.await {
                // A client gone, or one too slow with its headers: nothing to act on.
                debug!(error = %e, "connection ended");
            }
        });
    }
    // A client that stopped reading a long answer would hold the stop for ever.
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        warn!(
            grace_s = SHUTDOWN_GRACE.as_secs(),
            "requests still under way at stop were cut short"
        );
    }
}
