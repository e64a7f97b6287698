//! Delivering one batch: the HTTP request with Firehose's headers, retries on the retry clock,
//! and the error output once the retry duration is used up.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tracing::{error, info, warn};

use super::metrics::{self, Metrics};
use super::protocol::{self, Failure, RetryClock};
use super::reader::Arrived;
use crate::clock::now_ms;

/// Where and how batches are delivered.
#[derive(Clone)]
pub struct DeliveryConfig {
    /// The endpoint's URL.
    pub destination_url: String,
    /// Sent verbatim in X-Amz-Firehose-Access-Key; never logged.
    pub access_key: Option<String>,
    /// Sent in X-Amz-Firehose-Source-Arn.
    pub source_arn: String,
    /// Sent in X-Amz-Firehose-Common-Attributes.
    pub common_attributes: Vec<(String, String)>,
    /// GZIP the body.
    pub gzip: bool,
    /// How long failed attempts are retried (waits for responses do not count).
    pub retry_duration: Duration,
    /// How long one attempt waits for its response.
    pub request_timeout: Duration,
    /// Where batches given up go, as Firehose's error records.
    pub error_dir: Option<PathBuf>,
    /// PEM certificates trusted besides the built-in roots.
    pub ca_cert: Option<PathBuf>,
}

impl std::fmt::Debug for DeliveryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeliveryConfig")
            .field("destination_url", &self.destination_url)
            .field(
                "access_key",
                &self.access_key.as_ref().map(|_| "<redacted>"),
            )
            .field("gzip", &self.gzip)
            .field("retry_duration", &self.retry_duration)
            .finish_non_exhaustive()
    }
}

/// How one batch ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A valid 200 response, after `attempts` attempts.
    Delivered {
        /// Attempts made, the successful one included.
        attempts: u32,
    },
    /// 413: permanent, not written to the error output.
    Rejected413,
    /// Retry duration used up; written to the error output (path) if configured.
    Failed {
        /// Attempts made.
        attempts: u32,
        /// The error file written, if any.
        written: Option<PathBuf>,
    },
}

/// The HTTP side of firehose-local.
pub struct Delivery {
    config: DeliveryConfig,
    http: reqwest::Client,
    metrics: Arc<Metrics>,
}

enum Attempt {
    Ok,
    TooLarge,
    Failed(Failure),
}

/// `--destination-url` must be an http:// or https:// URL without a user name or password: the
/// endpoint is authenticated by the access key header, and a URL is logged.
fn check_destination(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("--destination-url: {e}"))?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("--destination-url must not hold a user name or password (Firehose authenticates with the access key, FIREHOSE_ACCESS_KEY)".into());
    }
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!(
            "--destination-url {url:?}: not an http:// or https:// URL"
        ));
    }
    Ok(())
}

impl Delivery {
    /// The HTTP client for `config`; fails when --ca-cert cannot be read or holds no certificate.
    pub fn new(config: DeliveryConfig) -> Result<Self, String> {
        check_destination(&config.destination_url)?;
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(config.request_timeout);
        if let Some(path) = &config.ca_cert {
            let pem = std::fs::read(path)
                .map_err(|e| format!("cannot read --ca-cert {}: {e}", path.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                format!(
                    "--ca-cert {} holds no usable PEM certificate: {e}",
                    path.display()
                )
            })?;
            if certs.is_empty() {
                return Err(format!(
                    "--ca-cert {} holds no PEM certificate",
                    path.display()
                ));
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder.build().map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Delivery {
            config,
            http,
            metrics: Arc::default(),
        })
    }

    /// Count outcomes and retries in `metrics`, and keep there whether the endpoint answers.
    pub fn counted_in(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// The request of one attempt, with Firehose's headers.
    fn request(&self, request_id: &str, body: bytes::Bytes) -> reqwest::RequestBuilder {
        let mut req = self
            .http
            .post(&self.config.destination_url)
            .header("Content-Type", "application/json")
            .header(
                "X-Amz-Firehose-Protocol-Version",
                protocol::PROTOCOL_VERSION,
            )
            .header("X-Amz-Firehose-Request-Id", request_id)
            .header("X-Amz-Firehose-Source-Arn", &self.config.source_arn)
            .body(body);
        if let Some(key) = &self.config.access_key {
            req = req.header("X-Amz-Firehose-Access-Key", key);
        }
        if !self.config.common_attributes.is_empty() {
            req = req.header(
                "X-Amz-Firehose-Common-Attributes",
                protocol::common_attributes_header(&self.config.common_attributes),
            );
        }
        if self.config.gzip {
            req = req.header("Content-Encoding", "gzip");
        }
        req
    }

    /// One POST of the batch, and what its response says.
    async fn attempt(&self, request_id: &str, body: bytes::Bytes) -> Attempt {
        let mut resp = match self.request(request_id, body).send().await {
            Ok(r) => r,
            Err(e) if e.is_timeout() => return Attempt::Failed(timed_out()),
            Err(e) => {
                return Attempt::Failed(Failure::new(
                    "HttpEndpoint.ConnectionFailed",
                    format!("cannot reach the endpoint: {}", error_chain(&e)),
                ))
            }
        };
        let status = resp.status().as_u16();
        if status == 413 {
            return Attempt::TooLarge;
        }
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let content_type = header("content-type");
        let content_encoding = header("content-encoding");
        let content_length = header("content-length");
        let body = match read_response(&mut resp).await {
            Ok(b) => b,
            Err(f) => return Attempt::Failed(f),
        };
        let head = protocol::ResponseHead {
            status,
            content_type: content_type.as_deref(),
            content_encoding: content_encoding.as_deref(),
            content_length: content_length.as_deref(),
        };
        match protocol::check_response(request_id, &head, &body) {
            Ok(()) => Attempt::Ok,
            Err(f) => Attempt::Failed(f),
        }
    }

    /// Deliver one batch: retry until success or the retry duration is used up.
    pub async fn deliver(&self, batch: &[Arrived]) -> Outcome {
        if batch.is_empty() {
            return Outcome::Delivered { attempts: 0 };
        }
        let request_id = uuid::Uuid::new_v4().to_string();
        let mut body =
            protocol::request_body(&request_id, now_ms(), batch.iter().map(|a| &a.data[..]));
        if self.config.gzip {
            body = gzip(&body);
        }
        // Each attempt sends this one copy.
        let body = bytes::Bytes::from(body);
        let mut clock = RetryClock::new(self.config.retry_duration);
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            if attempts > 1 {
                self.metrics.retried();
            }
            let attempt = self.attempt(&request_id, body.clone()).await;
            self.metrics.attempt(match &attempt {
                Attempt::Failed(f) => Some(format!("{}: {}", f.code, f.message)),
                Attempt::Ok | Attempt::TooLarge => None,
            });
            match attempt {
                Attempt::Ok => {
                    self.metrics.delivered(metrics::Outcome::Delivered);
                    if attempts > 1 {
                        info!(request_id = %request_id, records = batch.len(), attempts, "delivered after retries");
                    } else {
                        info!(request_id = %request_id, records = batch.len(), "delivered");
                    }
                    return Outcome::Delivered { attempts };
                }
                Attempt::TooLarge => {
                    error!(
                        request_id = %request_id,
                        records = batch.len(),
                        "the endpoint answered 413 (request too large): Firehose does not retry this nor write it to the error output; these records are LOST"
                    );
                    self.metrics.delivered(metrics::Outcome::Rejected);
                    return Outcome::Rejected413;
                }
                Attempt::Failed(failure) => match clock.next_delay(protocol::jitter()) {
                    Some(delay) => {
                        if attempts == 1 {
                            warn!(request_id = %request_id, code = failure.code, error = %failure.message, "delivery failed; retrying with back-off");
                        }
                        tokio::time::sleep(delay).await;
                    }
                    None => {
                        let written = self.write_errors(batch, &request_id, attempts, &failure);
                        error!(
                            request_id = %request_id,
                            records = batch.len(),
                            attempts,
                            code = failure.code,
                            error = %failure.message,
                            error_file = ?written,
                            "retry duration used up; batch not delivered"
                        );
                        self.metrics.delivered(metrics::Outcome::Failed);
                        return Outcome::Failed { attempts, written };
                    }
                },
            }
        }
    }

    /// Give up `record`, over [`protocol::MAX_RECORD_BYTES`], as Firehose does: it goes to
    /// the error output, in a file of its own, never to the endpoint. False when the error
    /// output is configured but could not keep it.
    pub fn set_aside(&self, record: &Arrived) -> bool {
        let failure = Failure::new(
            protocol::TOO_LARGE,
            format!(
                "the record's data is over Firehose's limit of {} bytes",
                protocol::MAX_RECORD_BYTES
            ),
        );
        let id = uuid::Uuid::new_v4().to_string();
        let written = self.write_errors(std::slice::from_ref(record), &id, 0, &failure);
        self.metrics.delivered(metrics::Outcome::TooLarge);
        error!(
            bytes = record.data.len(),
            shard = %record.shard,
            sequence = %record.sequence,
            error_file = ?written,
            "a record over 1,024,000 bytes is not delivered (as in Firehose)"
        );
        written.is_some() || !self.has_error_output()
    }

    /// Whether an error output (`--error-dir`) is configured.
    pub fn has_error_output(&self) -> bool {
        self.config.error_dir.is_some()
    }

    /// Write the batch as error records (one JSON line each), atomically.
    fn write_errors(
        &self,
        batch: &[Arrived],
        request_id: &str,
        attempts: u32,
        failure: &Failure,
    ) -> Option<PathBuf> {
        let dir = self.config.error_dir.as_ref()?;
        let ending = now_ms();
        let mut text = String::new();
        for a in batch {
            let rec = protocol::error_record(
                attempts,
                a.arrival_ms,
                failure,
                ending,
                &a.data,
                request_id,
            );
            text.push_str(&rec.to_string());
            text.push('\n');
        }
        match write_error_file(dir, ending, request_id, text.as_bytes()) {
            Ok(p) => Some(p),
            Err(e) => {
                error!(dir = %dir.display(), error = %e, "cannot write the error output: without --checkpoint-file the batch is LOST (with one, a restart reads it again)");
                None
            }
        }
    }
}

/// The endpoint's answer, or the end of it, did not come within the request timeout.
fn timed_out() -> Failure {
    Failure::new(
        "HttpEndpoint.RequestTimeout",
        "the endpoint did not answer in time",
    )
}

/// The response body, or as much of it as passes [`protocol::MAX_RESPONSE_BYTES`] (which
/// then fails validation): an endpoint must not make firehose-local hold an endless body.
async fn read_response(resp: &mut reqwest::Response) -> Result<Vec<u8>, Failure> {
    let mut body = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                body.extend_from_slice(&chunk);
                if body.len() > protocol::MAX_RESPONSE_BYTES {
                    return Ok(body);
                }
            }
            Ok(None) => return Ok(body),
            // The request timeout covers the whole answer, as Firehose's does.
            Err(e) if e.is_timeout() => return Err(timed_out()),
            Err(e) => {
                return Err(Failure::new(
                    "HttpEndpoint.ConnectionReset",
                    format!("reading the response failed: {}", error_chain(&e)),
                ))
            }
        }
    }
}

/// `DIR/http-endpoint-failed/YYYY/MM/DD/HH/firehose-local-YYYY-MM-DD-HH-MM-SS-<request id>`,
/// the layout of Firehose's S3 error output.
fn write_error_file(
    dir: &Path,
    at_ms: i64,
    request_id: &str,
    contents: &[u8],
) -> std::io::Result<PathBuf> {
    let t = time::OffsetDateTime::from_unix_timestamp(at_ms / 1000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let sub = dir.join(format!(
        "http-endpoint-failed/{:04}/{:02}/{:02}/{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour()
    ));
    std::fs::create_dir_all(&sub)?;
    let name = format!(
        "firehose-local-{:04}-{:02}-{:02}-{:02}-{:02}-{:02}-{request_id}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    );
    let path = sub.join(name);
    super::write_durably(&path, contents)?;
    Ok(path)
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    // Writing to a Vec cannot fail.
    let _ = enc.write_all(data);
    enc.finish().unwrap_or_default()
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}
