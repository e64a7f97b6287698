//! Prometheus metrics and health checks, the same in every program: `--metrics-listen ADDR`
//! serves `/metrics`, `/healthz` and `/readyz`, and the agent can also write its metrics as a
//! file for node_exporter's textfile collector (`--metrics-textfile PATH`).
//!
//! Each program keeps its metrics in a [`Registry`] (counters it updates as it works, or a
//! [`Collector`](prometheus_client::collector::Collector) that reads the counters it keeps
//! anyway, at scrape time). [`encode`] turns a registry into Prometheus' text format;
//! [`serve`] answers scrapes and health checks over HTTP.
//!
//! - `/healthz`: 200 while the process serves at all.
//! - `/readyz`: 200 when what the program needs is reachable (its [`Readiness`]), else 503 with
//!   a one-line reason.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tracing::{info, warn};

mod text;

pub use text::{encode, write_textfile, CONTENT_TYPE};

/// How long `/readyz` waits for a program's own check before it answers 503.
pub const READY_TIMEOUT: Duration = Duration::from_secs(3);
/// Connections served at once. A scraper opens one; a few more allow for a load balancer's
/// health checks and a person with curl. More wait in the kernel's backlog.
pub const MAX_CONNECTIONS: usize = 8;

/// The answer to "is what this program needs reachable?": `Err` carries a one-line reason.
pub type ReadyFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// A program's readiness check, asked by each `/readyz` request.
pub type Readiness = Arc<dyn Fn() -> ReadyFuture + Send + Sync>;

/// A readiness check that always says ready (a program with nothing to reach).
pub fn always_ready() -> Readiness {
    Arc::new(|| Box::pin(async { Ok(()) }))
}

/// The registry a program builds its metrics in, shared with the listener.
pub type SharedRegistry = Arc<Registry>;

/// Why the metrics listener cannot start.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot listen for metrics on {addr} (--metrics-listen): {source}{}",
    hint(source)
)]
pub struct ListenError {
    addr: String,
    #[source]
    source: std::io::Error,
}

/// What to check, where the error says it.
fn hint(e: &std::io::Error) -> &'static str {
    use std::io::ErrorKind::{AddrInUse, AddrNotAvailable, InvalidInput};
    match e.kind() {
        AddrInUse => "; is another program using that port?",
        AddrNotAvailable => {
            "; that address is not one of this machine's (127.0.0.1 or 0.0.0.0 are)"
        }
        InvalidInput => "; give it as HOST:PORT, an IP address and a port number",
        _ => "",
    }
}

/// A `--metrics-listen` value, checked as far as can be without binding it or asking DNS:
/// `HOST:PORT`, an IP address (IPv6 in brackets) or a host name, and a port number. A bare
/// port, say, passed `check-config` and then failed the service at start.
pub fn listen_addr(s: &str) -> Result<String, String> {
    let named = |(host, port): (&str, &str)| {
        !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
            && port.parse::<u16>().is_ok()
    };
    if s.parse::<std::net::SocketAddr>().is_ok() || s.rsplit_once(':').is_some_and(named) {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "{s:?} is not HOST:PORT: give an address and a port, such as 127.0.0.1:9467"
        ))
    }
}

/// Bind `addr` (`HOST:PORT`; port 0 picks a free one).
pub async fn bind(addr: &str) -> Result<TcpListener, ListenError> {
    TcpListener::bind(addr).await.map_err(|source| ListenError {
        addr: addr.to_owned(),
        source,
    })
}

/// Bind `addr` if one is given (`--metrics-listen`). Every program does this before anything
/// else, so that an address in use is a configuration error said at once.
pub async fn bind_if(addr: Option<&str>) -> Result<Option<TcpListener>, ListenError> {
    match addr {
        Some(a) => bind(a).await.map(Some),
        None => Ok(None),
    }
}

/// Where the agent serves metrics: bound at start, or an address to bind once it exists.
pub enum Listener {
    /// Bound.
    Bound(TcpListener),
    /// Not bound yet, and why it could not be at start: see [`bind_or_later`].
    Later(String, std::io::ErrorKind),
}

/// How often [`Listener::Later`]'s address is tried again.
const BIND_AGAIN: Duration = Duration::from_secs(10);

/// Bind `addr` if one is given, as [`bind_if`]; but an address that may come by itself (one
/// not on this machine yet, as a LAN address before DHCP answers after a power cut, or a host
/// name DNS cannot resolve yet) is bound later instead of failing the agent, which would take
/// no readings until the network is back. An address in use, a port not allowed, stay errors.
pub async fn bind_or_later(addr: Option<&str>) -> Result<Option<Listener>, ListenError> {
    use std::io::ErrorKind::{AddrInUse, AddrNotAvailable, InvalidInput, PermissionDenied};
    match bind_if(addr).await {
        Ok(l) => Ok(l.map(Listener::Bound)),
        Err(e) => {
            let named = e.addr.parse::<std::net::SocketAddr>().is_err();
            match e.source.kind() {
                AddrNotAvailable => {}
                AddrInUse | PermissionDenied | InvalidInput => return Err(e),
                _ if named => {}
                _ => return Err(e),
            }
            warn!(
                "{e}; taking readings meanwhile, and trying the address again every {BIND_AGAIN:?}"
            );
            Ok(Some(Listener::Later(e.addr, e.source.kind())))
        }
    }
}

/// [`serve`] on `listener` from now on, or once its address can be bound: tried every
/// `BIND_AGAIN`, each new reason it cannot be said once (the address is there now, but
/// another program has the port).
pub fn spawn_on(listener: Listener, registry: SharedRegistry, ready: Readiness) {
    match listener {
        Listener::Bound(l) => spawn(l, registry, ready),
        Listener::Later(addr, at_start) => {
            tokio::spawn(async move {
                let mut said = at_start;
                loop {
                    tokio::time::sleep(BIND_AGAIN).await;
                    match bind(&addr).await {
                        Ok(l) => return spawn(l, registry, ready),
                        Err(e) if e.source.kind() == said => {}
                        Err(e) => {
                            warn!("{e}; trying the address again every {BIND_AGAIN:?}");
                            said = e.source.kind();
                        }
                    }
                }
            });
        }
    }
}

/// [`serve`] on a task of the current runtime, logging the address. The task runs until the
/// process ends.
pub fn spawn(listener: TcpListener, registry: SharedRegistry, ready: Readiness) {
    if let Ok(addr) = listener.local_addr() {
        info!(address = %addr, "serving /metrics, /healthz and /readyz");
    }
    tokio::spawn(serve(listener, registry, ready));
}

/// Answer scrapes and health checks on `listener`, forever, at most [`MAX_CONNECTIONS`] at once,
/// each request's headers within [`crate::listener::HEADER_TIMEOUT`] and each write to a client
/// within [`crate::listener::WRITE_TIMEOUT`].
pub async fn serve(listener: TcpListener, registry: SharedRegistry, ready: Readiness) {
    let service = hyper::service::service_fn(move |req| {
        let registry = registry.clone();
        let ready = ready.clone();
        async move { Ok::<_, std::convert::Infallible>(answer(&req, &registry, &ready).await) }
    });
    let limits = crate::listener::Limits::new(MAX_CONNECTIONS);
    crate::listener::serve(listener, service, limits, std::future::pending()).await;
}

type Response = hyper::Response<http_body_util::Full<hyper::body::Bytes>>;

fn response(status: u16, content_type: &str, body: String) -> Response {
    let mut r = hyper::Response::new(http_body_util::Full::new(body.into()));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or_default();
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

/// `/metrics`, `/healthz` and `/readyz`; anything else is 404, and anything but GET or HEAD 405.
async fn answer<B>(req: &hyper::Request<B>, registry: &Registry, ready: &Readiness) -> Response {
    const PLAIN: &str = "text/plain; charset=utf-8";
    if !matches!(*req.method(), hyper::Method::GET | hyper::Method::HEAD) {
        return response(405, PLAIN, "only GET and HEAD are served here\n".into());
    }
    match req.uri().path() {
        "/metrics" => match encode(registry) {
            Ok(text) => response(200, CONTENT_TYPE, text),
            Err(e) => response(500, PLAIN, format!("cannot encode the metrics: {e}\n")),
        },
        "/healthz" => response(200, PLAIN, "ok\n".into()),
        "/readyz" => {
            let (status, body) = readiness(ready).await;
            response(status, PLAIN, body)
        }
        _ => response(
            404,
            PLAIN,
            "not found: this port serves /metrics, /healthz and /readyz\n".into(),
        ),
    }
}

/// Ask `ready`, within [`READY_TIMEOUT`]: the status code and the one line to answer with.
pub async fn readiness(ready: &Readiness) -> (u16, String) {
    match tokio::time::timeout(READY_TIMEOUT, ready()).await {
        Ok(Ok(())) => (200, "ready\n".into()),
        Ok(Err(reason)) => (503, format!("not ready: {}\n", one_line(&reason))),
        Err(_) => (
            503,
            format!(
                "not ready: the check took longer than {} s\n",
                READY_TIMEOUT.as_secs()
            ),
        ),
    }
}

/// A reason on one line: a driver's error can span several.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn readiness_reasons_are_one_line() {
        let failing: Readiness =
            Arc::new(|| Box::pin(async { Err("database down:\n  connection refused".into()) }));
        assert_eq!(
            readiness(&failing).await,
            (
                503,
                "not ready: database down: connection refused\n".to_owned()
            )
        );
        assert_eq!(readiness(&always_ready()).await, (200, "ready\n".into()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_check_that_hangs_is_not_ready() {
        let hangs: Readiness = Arc::new(|| Box::pin(std::future::pending()));
        let (status, body) = readiness(&hangs).await;
        assert_eq!(status, 503);
        assert!(body.contains("longer than"), "{body}");
    }
}
