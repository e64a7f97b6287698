//! Serving HTTP/1.1 on a TCP listener with the protections every listener of these programs
//! needs: a time limit on each request's headers (also while a kept-alive connection is idle),
//! another on each write to a client that has stopped reading, a cap on the connections served
//! at once, and a stop that waits a bounded time for the requests under way. Shared by the
//! metrics listener, the dashboard and the Firehose endpoint: [`serve`] serves plain TCP;
//! [`serve_with`] takes a [`Transport`] that readies each connection first (the endpoint's TLS
//! handshake) and may hold something for as long as it is open.

use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::service::Service;
use hyper::{Request, Response};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};
use tracing::{debug, warn};

/// How long a request's headers may take, also on an idle kept-alive connection: a client that
/// opens connections and sends nothing (or a byte at a time) cannot hold them for longer. A
/// browser, curl or a scraper sends its headers at once.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one write to a client may wait for room in the socket, that is for the client to
/// take some of what it was sent. hyper's header timeout runs only while a request's headers
/// are read: without this, a client that asks for answers and never reads them (a zero TCP
/// window costs it nothing to keep up) would hold its connection, and its slot under
/// [`Limits::max_connections`], for as long as it liked, and the cap's worth of such clients
/// would shut everyone else out.
///
/// The clock runs only while a write is pending and starts again at each write that goes
/// through, so a download that keeps moving, even slowly (the dashboard's CSV export on a poor
/// link), is not cut. Linux lets a blocked write through once about a third of the socket's
/// send buffer has been taken, and that buffer is capped ([`SEND_BUFFER`]): seconds, even at a
/// few KiB/s. 30 s also rides out a short break in the path
/// (a mobile handover, Wi-Fi roaming: TCP retransmits after about 1, 2, 4 and 8 s), while a
/// slot held on purpose is free again within half a minute.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Each connection's send buffer, asked of the kernel (which doubles it). A write blocked on a
/// full buffer goes through once about a third of it has been taken, so [`WRITE_TIMEOUT`]
/// cuts a client taking less than that a third every 30 s: about 3 KB/s here. Left to itself,
/// the kernel grows a buffer to megabytes where the client is near (a loopback connection from
/// an SSH tunnel or a streaming reverse proxy), and a download still moving at tens of KB/s
/// behind it would be cut. Still room for a fast answer: 256 KiB in flight per round trip.
pub const SEND_BUFFER: usize = 128 * 1024;

/// How long a stop waits for the requests under way to finish.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// What a listener allows its clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once; more wait in the kernel's backlog until one ends.
    pub max_connections: usize,
    /// How long a request's headers may take ([`HEADER_TIMEOUT`] unless a test wants less).
    pub header_timeout: Duration,
    /// How long one write to a client may stay pending ([`WRITE_TIMEOUT`] unless a test wants
    /// less).
    pub write_timeout: Duration,
    /// How long a stop waits for the requests under way before it returns without them
    /// ([`SHUTDOWN_GRACE`] unless the service or a test wants another).
    pub shutdown_grace: Duration,
}

impl Limits {
    /// At most `max_connections` at once, with [`HEADER_TIMEOUT`], [`WRITE_TIMEOUT`] and
    /// [`SHUTDOWN_GRACE`].
    pub const fn new(max_connections: usize) -> Limits {
        Limits {
            max_connections,
            header_timeout: HEADER_TIMEOUT,
            write_timeout: WRITE_TIMEOUT,
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
/// than `limits.header_timeout` or when a write to it (over TLS or not) stays pending for
/// `limits.write_timeout`. On shutdown it stops accepting, lets the requests in progress
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
        // Best effort: without it, only a slower client is cut, not a faster one.
        if let Err(e) = socket2::SockRef::from(&stream).set_send_buffer_size(SEND_BUFFER) {
            debug!(error = %e, "cannot set the connection's send buffer");
        }
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
            // Around what hyper writes to, the TLS stream when there is one: a pending write
            // is one the client is not reading.
            let io = WriteTimeout::new(io, limits.write_timeout);
            let conn = builder.serve_connection(TokioIo::new(io), service);
            if let Err(e) = watcher.watch(conn).await {
                // A client gone, one too slow with its headers or one that stopped reading:
                // nothing to act on, and scanners do it all day, hence debug.
                if stalled(&e) {
                    debug!(peer = %peer, timeout = ?limits.write_timeout,
                        "closed a connection whose client stopped reading");
                } else {
                    debug!(error = %e, "connection ended");
                }
            }
        });
    }
    // Refuse new connections now, not at the end of the grace: the kernel would go on taking
    // them into the backlog, and a client (Firehose) would send its request and wait there
    // until the process ends, instead of retrying at once.
    drop(listener);
    // A client reading a long answer slowly would hold the stop for as long as it reads.
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

/// A stream whose writes fail with [`Stalled`] once one (a write, a flush or the shutdown) has
/// been pending for `timeout` with no write going through in between. Reads pass through
/// untimed: hyper keeps a read pending for as long as an answer takes (to notice a client that
/// hangs up), and the header timeout bounds the reads that wait for a request.
struct WriteTimeout<S> {
    inner: S,
    timeout: Duration,
    /// When the write pending now fails, if `armed`.
    deadline: Pin<Box<Sleep>>,
    armed: bool,
}

impl<S> WriteTimeout<S> {
    fn new(inner: S, timeout: Duration) -> WriteTimeout<S> {
        WriteTimeout {
            inner,
            timeout,
            deadline: Box::pin(tokio::time::sleep_until(Instant::now())),
            armed: false,
        }
    }

    /// `polled`, the outcome of a write-side call on the inner stream, with the clock applied:
    /// pending starts it (unless it runs already), anything else stops it.
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.armed = false;
            return polled;
        }
        if !self.armed {
            self.deadline.as_mut().reset(Instant::now() + self.timeout);
            self.armed = true;
        }
        ready!(self.deadline.as_mut().poll(cx));
        self.armed = false;
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            Stalled(self.timeout),
        )))
    }
}

/// A write that waited its whole timeout: the client has read nothing for that long.
#[derive(Debug)]
struct Stalled(Duration);

impl std::fmt::Display for Stalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the client read nothing for {:?}", self.0)
    }
}

impl StdError for Stalled {}

impl<S: AsyncRead + Unpin> AsyncRead for WriteTimeout<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteTimeout<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.watch(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.watch(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.watch(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.watch(cx, polled)
    }
}

/// Whether hyper's `e` comes from a [`WriteTimeout`] that ran out.
fn stalled(e: &(dyn StdError + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        // An io::Error's `source` skips the error it carries: ask for that one.
        if let Some(io) = c.downcast_ref::<io::Error>() {
            return io.get_ref().is_some_and(|inner| inner.is::<Stalled>());
        }
        cause = c.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;
    use hyper::body::Bytes;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The answer to every request: far more than the kernel's buffers on both ends hold
    /// (4 MiB at most for a socket's send buffer by default), so a client that does not read
    /// it leaves the server's write pending.
    const BIG: usize = 64 << 20;

    /// Serve, within `limits`, over a real socket: `/slow` answers "ok" after 3 s, anything
    /// else a `BIG` answer; its address.
    async fn serve_big(limits: Limits) -> SocketAddr {
        serve_big_until(limits, std::future::pending()).await.0
    }

    /// [`serve_big`] until `shutdown` resolves; also what is told each time `/slow` starts.
    async fn serve_big_until(
        limits: Limits,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> (SocketAddr, Arc<tokio::sync::Notify>) {
        let body = Bytes::from(vec![b'x'; BIG]);
        let slow_started = Arc::new(tokio::sync::Notify::new());
        let started = slow_started.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let (body, started) = (body.clone(), started.clone());
            async move {
                if req.uri().path() == "/slow" {
                    started.notify_one();
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    return Ok(Response::new(Full::new(Bytes::from("ok"))));
                }
                Ok::<_, std::convert::Infallible>(Response::new(Full::new(body)))
            }
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, service, limits, shutdown));
        (addr, slow_started)
    }

    /// Two connections at most, whose headers and writes time out quickly.
    fn quick() -> Limits {
        Limits {
            header_timeout: Duration::from_secs(1),
            write_timeout: Duration::from_secs(2),
            ..Limits::new(2)
        }
    }

    /// Send `GET path` on `c`.
    async fn get(c: &mut TcpStream, path: &str) {
        c.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
    }

    /// A connection to `addr` with a receive buffer as small as the kernel allows, which has
    /// sent a GET.
    async fn ask(addr: SocketAddr) -> TcpStream {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(1024).unwrap();
        let mut c = socket.connect(addr).await.unwrap();
        get(&mut c, "/big").await;
        c
    }

    /// Read from `c` until a status line has come, for at most `within`; its status code.
    async fn status_line(c: &mut TcpStream, within: Duration) -> u16 {
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !got.windows(2).any(|w| w == b"\r\n") {
            let n = tokio::time::timeout(within, c.read(&mut buf))
                .await
                .expect("no status line in time")
                .unwrap();
            assert!(n > 0, "closed before answering");
            got.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&got[9..12]).parse().unwrap()
    }

    // A client that asks for a long answer and never reads it holds its connection slot only
    // until a write has waited the write timeout: with both slots held so, well past the
    // header timeout, a third client is answered. (Only the header timeout bounded a
    // connection, and it runs only while a request's headers are read: the third client
    // waited in the backlog for ever.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_that_stops_reading_frees_its_slot() {
        let addr = serve_big(quick()).await;
        let stalled = [ask(addr).await, ask(addr).await];
        tokio::time::sleep(Duration::from_secs(3)).await;
        let mut third = ask(addr).await;
        assert_eq!(status_line(&mut third, Duration::from_secs(10)).await, 200);
        drop(stalled);
    }

    // The write timeout bounds each write, not the answer: a client that reads a long answer
    // slowly (about 300 KiB/s), for twice the write timeout, still gets all of it. A deadline
    // on the whole answer would cut it short, and so would the kernel's own send buffer, which
    // on loopback grows to megabytes, a third of which takes longer than the timeout to drain
    // at that rate (hence SEND_BUFFER).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_reader_gets_the_whole_answer() {
        let addr = serve_big(quick()).await;
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 16 << 10];
        let mut got = 0;
        let slow_until = Instant::now() + quick().write_timeout * 2;
        while Instant::now() < slow_until {
            let n = c.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "closed after {got} bytes while the client was reading"
            );
            got += n;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The rest as fast as it comes, to the close that follows the answer.
        loop {
            let n = tokio::time::timeout(Duration::from_secs(30), c.read(&mut buf))
                .await
                .expect("the answer stalled")
                .unwrap();
            if n == 0 {
                break;
            }
            got += n;
        }
        // The body and, at most 1 KiB, the head.
        assert!(
            got > BIG && got < BIG + 1024,
            "got {got} bytes of a {BIG}-byte answer"
        );
    }

    // Only writes are timed: an answer that takes longer than the write timeout to start (a
    // long query), while hyper waits on a read to notice a hang-up, is still sent.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_answer_is_not_cut() {
        let addr = serve_big(quick()).await;
        let mut c = TcpStream::connect(addr).await.unwrap();
        get(&mut c, "/slow").await;
        assert_eq!(status_line(&mut c, Duration::from_secs(10)).await, 200);
    }

    // A stop closes the listening socket at once: a client that comes while the requests under
    // way finish is refused, and retries, rather than waiting in the backlog to be cut off at
    // the end of the grace.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stop_refuses_new_connections_while_requests_finish() {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (addr, slow_started) = serve_big_until(quick(), async {
            let _ = stopped.await;
        })
        .await;
        let mut slow = TcpStream::connect(addr).await.unwrap();
        get(&mut slow, "/slow").await;
        slow_started.notified().await;
        stop.send(()).unwrap();
        let refused = loop {
            match TcpStream::connect(addr).await {
                Err(e) => break e,
                Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        };
        // Reset when the connection raced the socket's close.
        assert!(
            matches!(
                refused.kind(),
                io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset
            ),
            "{refused}"
        );
        // Refused before the slow answer was sent (3 s), which still comes.
        let mut buf = [0u8; 16];
        assert_eq!(
            slow.try_read(&mut buf).map_err(|e| e.kind()).err(),
            Some(io::ErrorKind::WouldBlock)
        );
        assert_eq!(status_line(&mut slow, Duration::from_secs(10)).await, 200);
    }
}
