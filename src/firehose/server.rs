//! The HTTP side: [`app`] builds the router (tests call it directly), [`serve`] runs it over plain
//! HTTP or rustls TLS until shutdown.
//!
//! Order of checks for a delivery: path and method (404/405), access key (401, before the body is
//! read), request id and protocol version headers (400), content encoding (400), body size after
//! decompression (413), body JSON and its requestId (400), then records and the database (200 or
//! 503). Every answer, whatever its status, is `{"requestId","timestamp"[,"errorMessage"]}`.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use axum::routing::{any, get};
use axum::Router;
use http_body_util::BodyExt;
use mongodb::bson::{rawdoc, spec::BinarySubtype, Binary, DateTime, RawDocumentBuf};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use super::decode::{decode_record, derived_id, DecodeOptions};
use super::protocol::{
    response_body, BodyError, BodyReader, RequestBody, ACCESS_KEY, PROTOCOL_VERSION, REQUEST_ID,
    SOURCE_ARN, SUPPORTED_VERSION,
};
use super::store::{Store, StoreError};
use crate::clock::now_ms;

/// Documents are decoded and written in chunks of about this many BSON bytes, one command's
/// worth, so a 64 MiB request never holds all its documents in memory at once. 10,000 sensor
/// reports of 300 bytes (3 MB) are one chunk, hence one round trip.
pub const CHUNK_BYTES: usize = super::store::COMMAND_BYTES - 1024 * 1024;
/// Firehose waits 3 minutes for an answer; give up on the database well before.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(150);
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
/// ranges is the stronger protection (see the README).
pub const MAX_CONNECTIONS: usize = 256;
/// Longest `X-Amz-Firehose-Request-Id` accepted (Firehose's are 36-character UUIDs); a longer
/// one is refused with 400, and only its first bytes are echoed and logged.
pub const MAX_REQUEST_ID_BYTES: usize = 256;
/// How long a request's body may take to arrive in full by default (`--body-timeout-seconds`):
/// Firehose sends from AWS, where 64 MiB takes seconds; 120 s leaves a 64 MiB body 4.5 Mbit/s,
/// and the database write its time within Firehose's 3 minutes. A slower body is answered 408
/// and Firehose retries it.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(120);

/// The configured access keys, kept as SHA-256 digests so that every comparison is over 32 bytes
/// and constant-time whatever the key lengths.
#[derive(Clone)]
pub struct AccessKeys(Vec<[u8; 32]>);

impl AccessKeys {
    pub fn new<'a>(keys: impl IntoIterator<Item = &'a [u8]>) -> Self {
        AccessKeys(keys.into_iter().map(|k| Sha256::digest(k).into()).collect())
    }

    /// Whether `given` is one of the keys. Compares against every key, in constant time.
    pub fn matches(&self, given: &[u8]) -> bool {
        let g: [u8; 32] = Sha256::digest(given).into();
        let mut any = subtle::Choice::from(0u8);
        for k in &self.0 {
            any |= k.ct_eq(&g);
        }
        !self.0.is_empty() && bool::from(any)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for AccessKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AccessKeys({} keys)", self.0.len())
    }
}

/// What a request handler needs to know.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// The path Firehose POSTs to.
    pub path: String,
    pub keys: AccessKeys,
    /// Largest body after decompression.
    pub max_body_bytes: usize,
    /// Target collection; rejected records go to `<collection>_rejected`.
    pub collection: String,
    pub decode: DecodeOptions,
    /// Longest a request body may take to arrive ([`BODY_TIMEOUT`]).
    pub body_timeout: Duration,
}

/// Shared state of the router.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<EndpointConfig>,
    pub store: Arc<Store>,
}

impl AppState {
    pub fn new(config: EndpointConfig, store: Store) -> Self {
        AppState {
            config: Arc::new(config),
            store: Arc::new(store),
        }
    }
}

/// The router: the delivery path, `GET /health`, and a Firehose-shaped 404 for anything else.
pub fn app(state: AppState) -> Router {
    let path = state.config.path.clone();
    Router::new()
        .route("/health", get(health))
        .route(&path, any(deliver))
        .fallback(not_found)
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

async fn health() -> Response {
    json_response(StatusCode::OK, br#"{"status":"ok"}"#.to_vec())
}

async fn not_found(headers: HeaderMap) -> Response {
    firehose_response(
        StatusCode::NOT_FOUND,
        header_cut(&headers, REQUEST_ID),
        Some("not found"),
    )
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut r = Response::new(Body::from(body.clone()));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    r
}

/// A response in Firehose's shape.
pub fn firehose_response(status: StatusCode, request_id: &str, error: Option<&str>) -> Response {
    json_response(status, response_body(request_id, now_ms(), error))
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// A header's value cut to [`MAX_REQUEST_ID_BYTES`] (on a character boundary), for echoing and
/// logging what a client sent without echoing or logging whatever size it chose.
fn header_cut<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    let s = header_str(headers, name).unwrap_or("");
    let mut end = s.len().min(MAX_REQUEST_ID_BYTES);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The outcome of one delivery, for the response and the log line.
struct Outcome {
    status: StatusCode,
    error: Option<String>,
    records: usize,
    rejected: usize,
    bytes: usize,
}

impl Outcome {
    fn fail(status: StatusCode, error: impl Into<String>) -> Self {
        Outcome {
            status,
            error: Some(error.into()),
            records: 0,
            rejected: 0,
            bytes: 0,
        }
    }
}

async fn deliver(State(state): State<AppState>, request: Request) -> Response {
    let started = Instant::now();
    let (parts, body) = request.into_parts();
    let request_id = header_cut(&parts.headers, REQUEST_ID).to_owned();
    let source_arn = header_cut(&parts.headers, SOURCE_ARN).to_owned();
    let id_too_long =
        header_str(&parts.headers, REQUEST_ID).is_some_and(|id| id.len() > MAX_REQUEST_ID_BYTES);
    let outcome = if parts.method != Method::POST {
        Outcome::fail(StatusCode::METHOD_NOT_ALLOWED, "only POST is accepted")
    } else if id_too_long {
        Outcome::fail(
            StatusCode::BAD_REQUEST,
            "X-Amz-Firehose-Request-Id is longer than 256 bytes",
        )
    } else {
        process(&state, &parts.headers, &request_id, body).await
    };
    let duration_ms = started.elapsed().as_millis() as u64;
    if outcome.status == StatusCode::OK {
        info!(
            request_id = %request_id, source_arn = %source_arn, records = outcome.records,
            rejected = outcome.rejected, bytes = outcome.bytes, status = outcome.status.as_u16(),
            duration_ms, "delivery stored"
        );
    } else if request_id.is_empty() {
        // No Firehose request id: a scanner or a stray client, not a delivery; logged only at
        // debug level, so that such traffic cannot flood the log.
        debug!(
            status = outcome.status.as_u16(), method = %parts.method,
            error = outcome.error.as_deref().unwrap_or(""), "request refused"
        );
    } else {
        warn!(
            request_id = %request_id, source_arn = %source_arn, records = outcome.records,
            rejected = outcome.rejected, bytes = outcome.bytes, status = outcome.status.as_u16(),
            duration_ms, error = outcome.error.as_deref().unwrap_or(""), "delivery refused"
        );
    }
    let mut response = firehose_response(outcome.status, &request_id, outcome.error.as_deref());
    if outcome.status == StatusCode::METHOD_NOT_ALLOWED {
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
    }
    response
}

async fn process(state: &AppState, headers: &HeaderMap, request_id: &str, body: Body) -> Outcome {
    let config = &state.config;
    let key_ok = headers
        .get(ACCESS_KEY)
        .is_some_and(|k| config.keys.matches(k.as_bytes()));
    if !key_ok {
        return Outcome::fail(StatusCode::UNAUTHORIZED, "missing or invalid access key");
    }
    if request_id.is_empty() {
        return Outcome::fail(
            StatusCode::BAD_REQUEST,
            "missing X-Amz-Firehose-Request-Id header",
        );
    }
    match header_str(headers, PROTOCOL_VERSION) {
        Some(SUPPORTED_VERSION) => {}
        Some(other) => {
            let v: String = other.chars().take(32).collect();
            return Outcome::fail(
                StatusCode::BAD_REQUEST,
                format!("unsupported protocol version {v:?}; only 1.0 is supported"),
            );
        }
        None => {
            return Outcome::fail(
                StatusCode::BAD_REQUEST,
                "missing X-Amz-Firehose-Protocol-Version header",
            )
        }
    }
    let gzip = match headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase())
    {
        None => false,
        Some(e) if e.is_empty() || e == "identity" => false,
        Some(e) if e == "gzip" => true,
        Some(_) => {
            return Outcome::fail(
                StatusCode::BAD_REQUEST,
                "unsupported Content-Encoding; only gzip is accepted",
            )
        }
    };
    let limit = config.max_body_bytes;
    if !gzip && declared_length(headers).is_some_and(|n| n > limit as u64) {
        return Outcome::fail(StatusCode::PAYLOAD_TOO_LARGE, too_large(limit));
    }
    let read = read_body(body, gzip, limit, declared_length(headers));
    let bytes = match tokio::time::timeout(config.body_timeout, read).await {
        Ok(Ok(b)) => b,
        Ok(Err(BodyError::TooLarge { limit })) => {
            return Outcome::fail(StatusCode::PAYLOAD_TOO_LARGE, too_large(limit))
        }
        Ok(Err(e)) => return Outcome::fail(StatusCode::BAD_REQUEST, e.to_string()),
        Err(_) => {
            return Outcome::fail(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "request body not received within {} s",
                    config.body_timeout.as_secs()
                ),
            )
        }
    };
    let total_bytes = bytes.len();
    let parsed: RequestBody = match serde_json::from_slice(&bytes) {
        Ok(p) => p,
        Err(e) => {
            let mut o = Outcome::fail(
                StatusCode::BAD_REQUEST,
                format!("body is not a Firehose request: {e}"),
            );
            o.bytes = total_bytes;
            return o;
        }
    };
    if parsed.request_id != request_id {
        let mut o = Outcome::fail(
            StatusCode::BAD_REQUEST,
            "body requestId does not match the X-Amz-Firehose-Request-Id header",
        );
        o.bytes = total_bytes;
        return o;
    }
    let mut outcome = Outcome {
        status: StatusCode::OK,
        error: None,
        records: parsed.records.len(),
        rejected: 0,
        bytes: total_bytes,
    };
    let result = tokio::time::timeout(
        WRITE_TIMEOUT,
        store_records(state, request_id, &parsed, &mut outcome.rejected),
    )
    .await
    .unwrap_or_else(|_| Err(StoreError::Unavailable("timed out".into())));
    if let Err(e) = result {
        warn!(request_id = %request_id, error = %e, "database write failed");
        outcome.status = StatusCode::SERVICE_UNAVAILABLE;
        outcome.error = Some(e.public_message().to_owned());
    }
    outcome
}

fn too_large(limit: usize) -> String {
    format!(
        "request body larger than {} MiB after decompression",
        limit / (1024 * 1024)
    )
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    header_str(headers, header::CONTENT_LENGTH.as_str()).and_then(|v| v.parse::<u64>().ok())
}

/// Read the body with the cap applied after decompression. A plain body's buffer is sized from
/// its Content-Length (at most the cap), so it is not copied while it grows.
pub async fn read_body(
    mut body: Body,
    gzip: bool,
    limit: usize,
    content_length: Option<u64>,
) -> Result<Vec<u8>, BodyError> {
    let mut reader = BodyReader::new(gzip, limit);
    if let Some(n) = content_length.filter(|_| !gzip) {
        reader.reserve(n.min(limit as u64) as usize);
    }
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyError::Read(e.to_string()))?;
        if let Some(data) = frame.data_ref() {
            reader.push(data)?;
        }
    }
    reader.finish()
}

/// Decode every record and upsert, chunk by chunk; rejected records go to the dead-letter
/// collection. Ok only when every write of the request was acknowledged.
async fn store_records(
    state: &AppState,
    request_id: &str,
    body: &RequestBody<'_>,
    rejected_count: &mut usize,
) -> Result<(), StoreError> {
    let config = &state.config;
    let mut rejected: Vec<RawDocumentBuf> = Vec::new();
    let mut chunk: Vec<RawDocumentBuf> = Vec::new();
    let mut chunk_bytes = 0usize;
    let received_at = DateTime::now();
    for (index, record) in body.records.iter().enumerate() {
        match decode_record(&record.data, request_id, index, &config.decode) {
            Ok(d) => {
                chunk_bytes += d.as_bytes().len();
                chunk.push(d);
                if chunk_bytes >= CHUNK_BYTES {
                    state.store.upsert(&config.collection, &chunk).await?;
                    chunk.clear();
                    chunk_bytes = 0;
                }
            }
            Err(r) => rejected.push(rawdoc! {
                "_id": derived_id(request_id, index),
                "requestId": request_id,
                "index": index as i64,
                "reason": r.reason.to_string(),
                "data": Binary { subtype: BinarySubtype::Generic, bytes: r.raw },
                "receivedAt": received_at,
            }),
        }
    }
    state.store.upsert(&config.collection, &chunk).await?;
    *rejected_count = rejected.len();
    if !rejected.is_empty() {
        let dead_letter = format!("{}_rejected", config.collection);
        state.store.upsert(&dead_letter, &rejected).await?;
    }
    Ok(())
}

/// Serve `app` on `listener` until `shutdown` resolves: plain HTTP, or HTTPS with `tls`; HTTP/1.1
/// with keep-alive. A connection whose request headers take longer than `header_timeout` (also
/// while idle between requests) is closed. On shutdown, requests in progress are finished.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    header_timeout: Duration,
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
        tokio::spawn(async move {
            let _slot = slot;
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

#[cfg(test)]
mod tests {
    use super::*;

    // Every configured key matches (rotation); others, prefixes and the empty key do not.
    #[test]
    fn access_keys_match_any_configured_key() {
        let keys = AccessKeys::new([&b"old"[..], &b"new"[..]]);
        assert!(keys.matches(b"old"));
        assert!(keys.matches(b"new"));
        assert!(!keys.matches(b"ne"));
        assert!(!keys.matches(b""));
        assert!(!AccessKeys::new([]).matches(b""));
        assert_eq!(format!("{keys:?}"), "AccessKeys(2 keys)");
    }
}
