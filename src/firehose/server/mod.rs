//! The HTTP side: [`app`] builds the router (tests call it directly), [`serve`] runs it over plain
//! HTTP or rustls TLS until shutdown.
//!
//! Order of checks for a delivery: path and method (404/405), access key (401, before any other
//! header and before the body is read), request id length, request id and protocol version
//! headers (400), content
//! encoding (400), a declared length over the limit (413), room in the body budget (503 after
//! `--body-timeout` without), body size after decompression (413), body JSON and its requestId
//! (400), then records and the database (200 or 503). The budget wait and the body share
//! `--body-timeout` from the request's arrival, and the whole request [`REQUEST_DEADLINE`].
//! Every answer the router makes, whatever its status, is
//! `{"requestId","timestamp"[,"errorMessage"]}`; each refusal is a [`RequestError`]. Requests
//! that never reach it are answered by hyper without a body (400 for one that is not HTTP, 414
//! for a target over 65,534 bytes, 431 for too many or too large headers), or not at all (the
//! connection closed when the headers do not arrive within [`HEADER_TIMEOUT`]).
//!
//! - `error`: [`RequestError`], the reasons for refusing and the response each one gets.
//! - `headers`: the checks made before the body is read, and the body's share of the budget.
//! - `keys`: [`AccessKeys`], compared in constant time.
//! - `listen`: [`serve`] and [`tls_config`], the socket side.
//! - `records`: the records of a delivery decoded and stored, and its dead letters.

mod error;
mod headers;
mod keys;
mod listen;
mod records;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::Response;
use axum::routing::{any, get};
use axum::Router;
use http_body_util::BodyExt;
use tracing::{debug, error, info, warn};

pub use error::{Oversize, RequestError};
use headers::{budget_share, check_headers, header_cut, kib, BodyPlan};
pub use keys::AccessKeys;
pub use listen::{
    serve, tls_config, HEADER_TIMEOUT, LIMITS, MAX_CONNECTIONS, SHUTDOWN_GRACE,
    TLS_HANDSHAKE_TIMEOUT,
};
use records::store_records;

use super::decode::DecodeOptions;
use super::metrics::EndpointMetrics;
use super::protocol::{
    parse_error, response_body, BodyError, BodyReader, RequestBody, REQUEST_ID, SOURCE_ARN,
};
use super::store::{Store, StoreError};
use crate::clock::now_ms;
use crate::mongo::MongoError;
use crate::say_once::{Failures, Latch, Said, Throttle};
use crate::shared_read::SharedRead;

/// Documents are decoded and written in chunks of about this many BSON bytes, one command's
/// worth, so a 64 MiB request never holds all its documents in memory at once. 10,000 sensor
/// reports of 300 bytes (3 MB) are one chunk, hence one round trip.
pub const CHUNK_BYTES: usize = super::store::COMMAND_BYTES - 1024 * 1024;
/// The paths the endpoint serves besides `--path` (health, liveness, readiness), which
/// `--path` cannot take.
pub const OWN_PATHS: [&str; 3] = ["/health", "/healthz", "/readyz"];
/// How long a delivery may take from its arrival (once its headers are read) to its answer, all
/// its steps together: waiting for room in the body budget and reading the body (both within
/// `--body-timeout` of arrival), then the database writes (whatever time is left). Firehose
/// waits 3 minutes for an answer and then sends the batch again; answering 503 before that
/// keeps a slow write from running on beside its own retry.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(170);
/// Longest `X-Amz-Firehose-Request-Id` accepted (Firehose's are 36-character UUIDs); a longer
/// one is refused with 400, and only its first bytes are echoed and logged.
pub const MAX_REQUEST_ID_BYTES: usize = 256;
/// How long a request's body may take to arrive in full by default (`--body-timeout`):
/// Firehose sends from AWS, where 64 MiB takes seconds; 120 s leaves a 64 MiB body 4.5 Mbit/s,
/// and the database write its time within Firehose's 3 minutes. A slower body is answered 408
/// and Firehose retries it.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(120);

/// Bodies being read and stored at once may hold at most this many maximum-size bodies' worth
/// of the budget between them. A delivery holds several times its body at its peak (the body,
/// the chunk of documents decoded from it, the command built from the chunk and the driver's
/// copy of it), so without a budget the endpoint's memory grew with its connections, 256 of them.
/// A plain body takes its declared length from the budget; a gzip body, or one without a
/// length, a whole maximum-size body's share. A delivery that finds no room waits for it for up
/// to `--body-timeout`, without reading its body, then is answered 503 and Firehose retries it.
pub const BODY_BUDGET_BODIES: usize = 4;

/// Deliveries refused for a wrong key or method are logged at most this often, and so,
/// counted apart, are deliveries sent to a path the endpoint does not serve.
pub const KEYLESS_LOG_EVERY: Duration = Duration::from_secs(60);

/// What a request handler needs to know.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// The path Firehose POSTs to.
    pub path: String,
    /// The keys a delivery must carry one of.
    pub keys: AccessKeys,
    /// Largest body after decompression.
    pub max_body_bytes: usize,
    /// Target collection; rejected records go to `<collection>_rejected`.
    pub collection: String,
    /// How records become documents.
    pub decode: DecodeOptions,
    /// Longest a request body may take to arrive ([`BODY_TIMEOUT`]).
    pub body_timeout: Duration,
}

/// Shared state of the router.
#[derive(Clone)]
pub struct AppState {
    /// The endpoint's settings.
    pub config: Arc<EndpointConfig>,
    /// Where records are written; not touched by a request refused before its body is read.
    pub store: Arc<Store>,
    /// What the endpoint counts.
    pub metrics: Arc<EndpointMetrics>,
    /// The body budget ([`BODY_BUDGET_BODIES`]), in KiB.
    pub body_budget: Arc<tokio::sync::Semaphore>,
    /// `/readyz` last answered not ready (its reason is logged once per change).
    not_ready: Arc<std::sync::Mutex<Latch>>,
    /// The readiness check of `/readyz`, here and on `--metrics-listen`: one ping for all.
    pub readiness: crate::metrics::Readiness,
    /// Deliveries refused before their access key was found good: anyone can send those, as
    /// fast as they like, so at most one a minute is logged ([`KEYLESS_LOG_EVERY`]).
    keyless: Arc<std::sync::Mutex<Throttle>>,
    /// Deliveries sent to a path the endpoint does not serve, logged as `keyless` is: apart, so
    /// that a flood of either cannot keep the other out of the log.
    wrong_path: Arc<std::sync::Mutex<Throttle>>,
    /// Deliveries the database failed, said once per outage and once a minute within one.
    write_failures: Arc<Failures>,
    /// [`REQUEST_DEADLINE`]; shorter in tests.
    request_deadline: Duration,
}

impl AppState {
    /// State for [`app`].
    pub fn new(config: EndpointConfig, store: Store) -> Self {
        let budget = BODY_BUDGET_BODIES * kib(config.max_body_bytes as u64);
        let store = Arc::new(store);
        AppState {
            body_budget: Arc::new(tokio::sync::Semaphore::new(budget)),
            config: Arc::new(config),
            readiness: readiness(&store),
            store,
            metrics: Arc::new(EndpointMetrics::default()),
            not_ready: Arc::default(),
            keyless: Arc::new(std::sync::Mutex::new(Throttle::new(KEYLESS_LOG_EVERY))),
            wrong_path: Arc::new(std::sync::Mutex::new(Throttle::new(KEYLESS_LOG_EVERY))),
            write_failures: Arc::default(),
            request_deadline: REQUEST_DEADLINE,
        }
    }

    /// A deadline other than [`REQUEST_DEADLINE`] (tests), at least the body timeout.
    pub fn with_request_deadline(mut self, deadline: Duration) -> Self {
        self.request_deadline = deadline.max(self.config.body_timeout);
        self
    }
}

/// The router: the delivery path, `GET /health` and `/healthz` (the process serves), `GET
/// /readyz` (the database answers: for a load balancer; no reason given), and a
/// Firehose-shaped 404 for anything else. Every answer is JSON with a Content-Length.
pub fn app(state: AppState) -> Router {
    let path = state.config.path.clone();
    let [health_path, healthz_path, readyz_path] = OWN_PATHS;
    Router::new()
        .route(health_path, get(health).fallback(not_allowed))
        .route(healthz_path, get(health).fallback(not_allowed))
        .route(readyz_path, get(ready).fallback(not_allowed))
        .route(&path, any(deliver))
        .fallback(not_found)
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

async fn health() -> Response {
    json_response(StatusCode::OK, br#"{"status":"ok"}"#.to_vec())
}

/// `/readyz`: 200 `{"status":"ready"}` when MongoDB answers a ping, else 503
/// `{"status":"not ready"}`. This port faces Firehose, so anyone: the reason (a driver error
/// naming the servers, their addresses and the topology) is never sent here. It is logged when
/// readiness is lost (once, until it comes back) and served by `/readyz` on `--metrics-listen`.
async fn ready(State(state): State<AppState>) -> Response {
    let (status, reason) = crate::metrics::readiness(&state.readiness).await;
    let ready = status == 200;
    {
        let mut failing = state
            .not_ready
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if ready {
            if failing.clear() {
                info!("ready again: MongoDB answers");
            }
        } else if failing.raise() {
            warn!(reason = reason.trim_end(), "/readyz answers not ready");
        }
    }
    if ready {
        json_response(StatusCode::OK, br#"{"status":"ready"}"#.to_vec())
    } else {
        json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            br#"{"status":"not ready"}"#.to_vec(),
        )
    }
}

/// How long `/readyz` waits for MongoDB's reply to a ping.
const PING_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a ping's outcome answers `/readyz`.
const PING_REUSE: Duration = Duration::from_secs(1);

/// The endpoint's readiness: MongoDB answers a ping. One ping at a time, whose outcome every
/// check meanwhile or within a second takes: `/readyz` needs no key, and a ping per
/// request took the connections of the deliveries' writes.
pub fn readiness(store: &Arc<Store>) -> crate::metrics::Readiness {
    let store = store.clone();
    let shared = SharedRead::<(), MongoError>::reusing_failures(PING_REUSE);
    Arc::new(move || {
        let (store, shared) = (store.clone(), shared.clone());
        Box::pin(async move {
            let pinged = shared.get(|| async move {
                // Within the listener's own limit: a server that is down makes the driver
                // wait for server selection far longer than a health check may take.
                match tokio::time::timeout(PING_TIMEOUT, store.ping()).await {
                    Ok(r) => r.map_err(|e| format!("MongoDB does not answer: {e}")),
                    Err(_) => Err(format!(
                        "MongoDB does not answer: no reply to a ping within {} s",
                        PING_TIMEOUT.as_secs()
                    )),
                }
                .map_err(MongoError::Unavailable)
            });
            pinged.await.map_err(|e| e.to_string())
        })
    })
}

/// Any other path: 404. A request with a Firehose request id is a delivery sent to the wrong
/// path (the delivery stream's URL and `--path` differ: a trailing slash, a proxy's prefix),
/// which Firehose sends again for its whole retry duration and then writes to its S3 error
/// output, so it is said, at most once a minute; its key is neither needed nor logged. Others
/// (scanners) are not: anyone may send them, as fast as they like.
async fn not_found(State(state): State<AppState>, uri: Uri, headers: HeaderMap) -> Response {
    state
        .metrics
        .answered_elsewhere(StatusCode::NOT_FOUND.as_u16());
    let request_id = header_cut(&headers, REQUEST_ID);
    if !request_id.is_empty() {
        let said = state
            .wrong_path
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .happened(Instant::now());
        if let Some(unsaid) = said {
            let path: String = uri.path().chars().take(MAX_REQUEST_ID_BYTES).collect();
            warn!(
                request_id = %request_id, source_arn = %header_cut(&headers, SOURCE_ARN),
                path = ?path, expected_path = %state.config.path, refused_unsaid = unsaid,
                "delivery sent to a path the endpoint does not serve, answered 404: Firehose \
                 retries it, then writes the batch to its S3 error output; set the path of the \
                 delivery stream's endpoint URL to expected_path, or start the endpoint with \
                 --path set to path (logged once a minute; refused_unsaid counts those since the last line)"
            );
        }
    }
    RequestError::NotFound.render(request_id)
}

/// A method other than GET (or HEAD) on a health route: 405 in Firehose's shape, as on the
/// delivery path, rather than the router's empty one.
async fn not_allowed(State(state): State<AppState>, headers: HeaderMap) -> Response {
    state
        .metrics
        .answered_elsewhere(StatusCode::METHOD_NOT_ALLOWED.as_u16());
    RequestError::MethodNotAllowed.render(header_cut(&headers, REQUEST_ID))
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

/// What one delivery carried, for its log line.
#[derive(Default)]
struct Tally {
    records: usize,
    rejected: usize,
    bytes: usize,
}

async fn deliver(State(state): State<AppState>, request: Request) -> Response {
    let started = Instant::now();
    let _in_flight = state.metrics.begin();
    let (parts, body) = request.into_parts();
    let request_id = header_cut(&parts.headers, REQUEST_ID);
    let mut tally = Tally::default();
    let result = match check_headers(&state.config, &parts.method, &parts.headers) {
        Ok(plan) => process(&state, request_id, plan, body, &mut tally, started).await,
        Err(e) => Err(e),
    };
    let source_arn = header_cut(&parts.headers, SOURCE_ARN);
    let duration_ms = started.elapsed().as_millis() as u64;
    let (status, error) = match &result {
        Ok(()) => (StatusCode::OK, String::new()),
        Err(e) => (e.status(), e.to_string()),
    };
    let Tally {
        records,
        rejected,
        bytes,
    } = tally;
    let status_code = status.as_u16();
    state
        .metrics
        .answered(status_code, started.elapsed().as_secs_f64(), bytes);
    if result.is_ok() {
        if let Some(lasted) = state.write_failures.answered(Instant::now()) {
            info!(
                failed_for_seconds = lasted.as_secs(),
                "database writes work again"
            );
        }
        info!(
            request_id = %request_id, source_arn = %source_arn, records, rejected, bytes,
            status = status_code, duration_ms, "delivery stored"
        );
    } else if let Err(RequestError::Store(e)) = &result {
        // Firehose retries each delivery the database failed, for as long as it is down: said
        // when writes begin to fail, once a minute while they go on, and when they work again.
        match state.write_failures.failed(Instant::now()) {
            Some(Said::Began) => warn!(
                request_id = %request_id, error = %e,
                "database writes are failing: deliveries are answered 503, and Firehose sends them again"
            ),
            Some(Said::GoesOn { lasted, unsaid }) => warn!(
                request_id = %request_id, error = %e, failing_for_seconds = lasted.as_secs(),
                failed_since_last_said = unsaid, "database writes still failing"
            ),
            None => debug!(
                request_id = %request_id, status = status_code, error = error.as_str(),
                "delivery refused"
            ),
        }
    } else if request_id.is_empty() {
        // No Firehose request id: a scanner or a stray client, not a delivery; logged only at
        // debug level, so that such traffic cannot flood the log.
        debug!(status = status_code, method = %parts.method, error = error.as_str(), "request refused");
    } else if result.as_ref().is_err_and(RequestError::before_key) {
        // A wrong key (a misconfigured stream, or anyone at all): said, then once a minute.
        let said = state
            .keyless
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .happened(Instant::now());
        match said {
            Some(unsaid) => warn!(
                request_id = %request_id, source_arn = %source_arn, status = status_code,
                error = error.as_str(), refused_unsaid = unsaid,
                "delivery refused (such refusals are logged once a minute; refused_unsaid counts those since the last line)"
            ),
            None => {
                debug!(request_id = %request_id, status = status_code, error = error.as_str(), "delivery refused")
            }
        }
    } else if let Err(RequestError::TooLarge { .. }) = &result {
        // Only the key's holders get here, and Firehose gives up on a 413 at once.
        error!(
            request_id = %request_id, source_arn = %source_arn, status = status_code,
            duration_ms, error = error.as_str(),
            "delivery refused as too large (413): Firehose neither retries it nor writes it to \
             its S3 error output, so its records are lost; raise --max-body-mib, or lower the \
             delivery stream's buffer size hint"
        );
    } else {
        warn!(
            request_id = %request_id, source_arn = %source_arn, records, rejected, bytes,
            status = status_code, duration_ms, error = error.as_str(), "delivery refused"
        );
    }
    match result {
        Ok(()) => firehose_response(StatusCode::OK, request_id, None),
        Err(e) => e.render(request_id),
    }
}

/// Read and check the body, then store its records, all within the request's deadline from
/// `arrived` ([`REQUEST_DEADLINE`]); the body within `--body-timeout` of it.
async fn process(
    state: &AppState,
    request_id: &str,
    plan: BodyPlan,
    body: Body,
    tally: &mut Tally,
    arrived: Instant,
) -> Result<(), RequestError> {
    let config = &state.config;
    let arrived = tokio::time::Instant::from_std(arrived);
    let deadline = arrived + state.request_deadline;
    let body_deadline = (arrived + config.body_timeout).min(deadline);
    let share = budget_share(&plan, config.max_body_bytes);
    let _room = tokio::time::timeout_at(body_deadline, state.body_budget.acquire_many(share))
        .await
        .map_err(|_| RequestError::Busy)?
        .map_err(|_| RequestError::Busy)?;
    let read = read_body(body, plan.gzip, config.max_body_bytes, plan.content_length);
    let bytes = tokio::time::timeout_at(body_deadline, read)
        .await
        .map_err(|_| RequestError::BodyTimeout(config.body_timeout))??;
    tally.bytes = bytes.len();
    let parsed: RequestBody = serde_json::from_slice(&bytes)
        .map_err(|e| RequestError::NotFirehoseBody(parse_error(&e)))?;
    if parsed.request_id != request_id {
        return Err(RequestError::RequestIdMismatch);
    }
    tally.records = parsed.records.len();
    let stored = store_records(state, request_id, &parsed, &mut tally.rejected);
    tokio::time::timeout_at(deadline, stored)
        .await
        .unwrap_or_else(|_| {
            let limit = state.request_deadline.as_secs();
            let why = format!("not acknowledged within the request's {limit} s");
            Err(StoreError::Unavailable(why))
        })
        .map_err(RequestError::Store)
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
