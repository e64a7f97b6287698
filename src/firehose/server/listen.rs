//! The endpoint's side of the socket: how the shared serving loop ([`crate::listener`]) serves
//! the router (plain HTTP or rustls TLS, the open connections counted, the endpoint's limits),
//! and [`tls_config`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tracing::debug;

use crate::listener::{Limits, Transport, WRITE_TIMEOUT};

/// How long a request's headers may take to arrive, also on an idle kept-alive connection: a
/// client that opens connections and sends nothing (or a byte at a time) cannot hold them.
/// Firehose sends its headers at once; 10 s leaves a slow client nothing to hold a connection
/// with for long.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a TLS handshake may take.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more wait in the kernel's backlog. Firehose opens a few; the
/// limit keeps anyone who opens thousands (no key needed to connect) from using up the
/// process's file descriptors and memory. Firewalling the port to Firehose's published address
/// ranges is the stronger protection (see docs/firehose-endpoint.md).
pub const MAX_CONNECTIONS: usize = 256;
/// How long a stop waits for the deliveries under way before the endpoint exits without them.
/// Cutting one short loses nothing: Firehose sends again a batch that got no 200 (for up to its
/// retry duration, two hours as deploy/ sets it up) and the store upserts, so the second copy
/// changes nothing. Waiting costs more than it saves: the endpoint accepts nothing while it
/// waits, so every delivery is refused until it has restarted. 30 s lets a usual delivery (a
/// few MiB) finish; one held by a stalled body, a slow database or a client reading very
/// slowly, which could hold the stop until the [`REQUEST_DEADLINE`] or for ever, is sent
/// again. The systemd unit's `TimeoutStopSec=45` leaves the process the rest to exit.
///
/// [`REQUEST_DEADLINE`]: super::REQUEST_DEADLINE
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// The endpoint's limits: [`MAX_CONNECTIONS`], [`HEADER_TIMEOUT`] (`header_timeout` shorter
/// in tests), the listener's [`WRITE_TIMEOUT`] (Firehose reads its small answers at once) and
/// [`SHUTDOWN_GRACE`].
pub const LIMITS: Limits = Limits {
    max_connections: MAX_CONNECTIONS,
    header_timeout: HEADER_TIMEOUT,
    write_timeout: WRITE_TIMEOUT,
    shutdown_grace: SHUTDOWN_GRACE,
};

/// Serve `app` on `listener` until `shutdown` resolves, within `limits` ([`LIMITS`] but in
/// tests): plain HTTP, or HTTPS with `tls`; HTTP/1.1 with keep-alive. `connections`, when
/// given, counts the open connections, those still in their TLS handshake included. A stop
/// finishes the requests in progress for up to `limits.shutdown_grace`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    connections: Option<Gauge>,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let transport = Connections {
        tls: tls.map(tokio_rustls::TlsAcceptor::from),
        count: connections,
    };
    let service = hyper_util::service::TowerToHyperService::new(app);
    crate::listener::serve_with(listener, transport, service, limits, shutdown).await;
}

/// The endpoint's connections: over TLS when it has a certificate, counted when given a gauge.
#[derive(Clone)]
struct Connections {
    tls: Option<tokio_rustls::TlsAcceptor>,
    count: Option<Gauge>,
}

/// A TCP or a TLS stream: boxed, so that one type serves both (one allocation a connection).
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

impl Transport for Connections {
    type Io = Box<dyn Stream>;
    type Guard = Option<Open>;

    fn guard(&self) -> Option<Open> {
        self.count.clone().map(Open::new)
    }

    async fn ready(&self, stream: TcpStream, peer: SocketAddr) -> Option<Box<dyn Stream>> {
        let Some(acceptor) = &self.tls else {
            return Some(Box::new(stream));
        };
        match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
            Ok(Ok(s)) => Some(Box::new(s)),
            Ok(Err(e)) => {
                // Scanners fail handshakes all day: debug level, not to flood the log.
                debug!(peer = %peer, error = %e, "TLS handshake failed");
                None
            }
            Err(_) => {
                debug!(peer = %peer, timeout = ?TLS_HANDSHAKE_TIMEOUT, "TLS handshake timed out");
                None
            }
        }
    }
}

/// An open connection, counted in the gauge until it is dropped.
struct Open(Gauge);

impl Open {
    fn new(g: Gauge) -> Open {
        g.inc();
        Open(g)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A rustls server configuration from PEM files (certificate chain, private key); HTTP/1.1.
pub fn tls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<Arc<tokio_rustls::rustls::ServerConfig>, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect())
        .map_err(|e| format!("cannot read the certificate {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("no certificate in {}", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read the private key {}: {e}", key.display()))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("TLS certificate and key do not fit: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
