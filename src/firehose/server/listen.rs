//! Serving the router over a socket: plain HTTP or rustls TLS, HTTP/1.1 with keep-alive, a
//! header timeout, a cap on connections served at once, and graceful shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use prometheus_client::metrics::gauge::Gauge;
use tokio::net::TcpListener;
use tracing::{debug, warn};

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

/// Serve `app` on `listener` until `shutdown` resolves: plain HTTP, or HTTPS with `tls`; HTTP/1.1
/// with keep-alive. A connection whose request headers take longer than `header_timeout` (also
/// while idle between requests) is closed. On shutdown, requests in progress are finished.
/// `connections`, when given, counts the open connections.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    header_timeout: Duration,
    connections: Option<Gauge>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    tokio::pin!(shutdown);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
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
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(app.clone());
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let open = connections.clone().map(Open::new);
        tokio::spawn(async move {
            let _slot = slot;
            let _open = open;
            let Some(acceptor) = acceptor else {
                let conn = builder.serve_connection(TokioIo::new(stream), service);
                let _ = watcher.watch(conn).await;
                return;
            };
            let tls_stream =
                match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        // Scanners fail handshakes all day: debug level, not to flood the log.
                        debug!(peer = %peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
            let conn = builder.serve_connection(TokioIo::new(tls_stream), service);
            let _ = watcher.watch(conn).await;
        });
    }
    graceful.shutdown().await;
    Ok(())
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
