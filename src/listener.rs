//! Serving HTTP/1.1 on a TCP listener with the protections every listener of these programs
//! needs: a time limit on each request's headers (also while a kept-alive connection is idle),
//! a cap on the connections served at once, and a stop that waits a bounded time for the
//! requests under way. Shared by the metrics listener, the dashboard and the Firehose endpoint:
//! [`serve`] serves plain TCP; [`serve_with`] takes a [`Transport`] that readies each connection
//! first (the endpoint's TLS handshake) and may hold something for as long as it is open.

use std::error::Error as StdError;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::service::Service;
use hyper::{Request, Response};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
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
    /// How long a stop waits for the requests under way before it returns without them
    /// ([`SHUTDOWN_GRACE`] unless the service or a test wants another).
    pub shutdown_grace: Duration,
}

impl Limits {
    /// At most `max_connections` at once, with [`HEADER_TIMEOUT`] and [`SHUTDOWN_GRACE`].
    pub const fn new(max_connections: usize) -> Limits {
        Limits {
            max_connections,
            header_timeout: HEADER_TIMEOUT,
            shutdown_grace: SHUTDOWN_GRACE,
        }
    }
}

/// What happens to an accepted connection before HTTP is served on it.
pub trait Transport: Clone + Send + Sync + 'static {
    /// What HTTP is served over: the TCP stream itself, or a TLS stream over it.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// Held from the connection's accept until it closes (an open-connections count, say).
    type Guard: Send + 'static;

    /// Taken as a connection is accepted, before [`Transport::ready`].
    fn guard(&self) -> Self::Guard;

    /// The stream to serve HTTP over, or `None` to close the connection (a failed handshake;
    /// saying why is this method's job).
    fn ready(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
    ) -> impl Future<Output = Option<Self::Io>> + Send;
}

/// HTTP straight over TCP.
#[derive(Debug, Clone, Copy)]
pub struct Tcp;

impl Transport for Tcp {
    type Io = TcpStream;
    type Guard = ();

    fn guard(&self) {}

    async fn ready(&self, stream: TcpStream, _: SocketAddr) -> Option<TcpStream> {
        Some(stream)
    }
}

/// Serve `service` over plain TCP on `listener` until `shutdown` resolves, as [`serve_with`]
/// does.
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
    serve_with(listener, Tcp, service, limits, shutdown).await;
}

/// Serve `service` on `listener` until `shutdown` resolves, each connection readied by
/// `transport`: HTTP/1.1 with keep-alive, at most `limits.max_connections` connections at once
/// (a connection in its handshake counts), each closed when a request's headers take longer
/// than `limits.header_timeout`. On shutdown it stops accepting, lets the requests in progress
/// finish, and returns once every connection has ended, or after `limits.shutdown_grace` with
/// a warning; the connections still open then end with the process.
pub async fn serve_with<T, S, B>(
    listener: TcpListener,
    transport: T,
    service: S,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) where
    T: Transport,
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
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, for one: wait rather than spin.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let guard = transport.guard();
        // Watched from here, so a stop also waits (within the grace) for a handshake under way.
        let watcher = graceful.watcher();
        let (transport, service, builder) = (transport.clone(), service.clone(), builder.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let _guard = guard;
            let Some(io) = transport.ready(stream, peer).await else {
                return;
            };
            let conn = builder.serve_connection(TokioIo::new(io), service);
            if let Err(e) = watcher.watch(conn).await {
                // A client gone, or one too slow with its headers: nothing to act on.
                debug!(error = %e, "connection ended");
            }
        });
    }
    // A client that stopped reading a long answer would hold the stop for ever.
    if tokio::time::timeout(limits.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        warn!(
            grace_s = limits.shutdown_grace.as_secs(),
            "requests still under way at stop were cut short"
        );
    }
}
