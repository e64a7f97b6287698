//! The Firehose HTTP endpoint delivery contract, pure: the request body and headers, what
//! counts as a valid response, the retry delays, and the error-output records.

use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Map, Value};

/// `X-Amz-Firehose-Protocol-Version`.
pub const PROTOCOL_VERSION: &str = "1.0";
/// Most records in one request.
pub const MAX_RECORDS: usize = 10_000;
/// Largest decoded record Firehose delivers (1,000 KiB). A Kinesis record may hold up to 1 MiB
/// of data and partition key; one with more data than this is not delivered but goes to the
/// error output (see [`TOO_LARGE`]).
pub const MAX_RECORD_BYTES: usize = crate::FIREHOSE_MAX_RECORD_BYTES;
/// The error code of a record over [`MAX_RECORD_BYTES`] in the error output. AWS documents the
/// 1,000 KiB limit but not the code Firehose gives such a record read from a Kinesis stream
/// (UNCONFIRMED); this one is firehose-local's own, named after the limit.
pub const TOO_LARGE: &str = "Kinesis.RecordTooLarge";
/// Largest request body Firehose sends, before compression: the buffer is delivered before a
/// record would take the body past it, whatever the size hint (record data in base64 takes a
/// third more than the data itself).
pub const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;
/// What the body holds besides the records: `{"requestId":"<36>","timestamp":<13>,"records":[]}`.
pub const BODY_OVERHEAD_BYTES: usize = 128;

/// What one record of `len` bytes adds to the body: `{"data":"<base64>"},`.
pub fn encoded_record_bytes(len: usize) -> usize {
    len.div_ceil(3) * 4 + 12
}

/// Largest response body Firehose reads.
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;
/// Most common attributes.
pub const MAX_COMMON_ATTRIBUTES: usize = 50;
/// Longest `errorMessage` in a response.
pub const MAX_ERROR_MESSAGE_CHARS: usize = 8192;
/// Longest access key.
pub const MAX_ACCESS_KEY_BYTES: usize = 4096;
/// Cap of the retry delay.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(120);

/// The body of one delivery request.
pub fn request_body<'a>(
    request_id: &str,
    timestamp_ms: i64,
    records: impl IntoIterator<Item = &'a [u8]>,
) -> Vec<u8> {
    // Written out as it goes: a JSON tree of the base64 strings first would hold a second copy
    // of a batch of up to 64 MiB. Base64 needs no escaping in a JSON string.
    let engine = base64::engine::general_purpose::STANDARD;
    let mut out = format!(
        r#"{{"requestId":{},"timestamp":{timestamp_ms},"records":["#,
        Value::from(request_id)
    );
    for (i, r) in records.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(r#"{"data":""#);
        engine.encode_string(r, &mut out);
        out.push_str(r#""}"#);
    }
    out.push_str("]}");
    out.into_bytes()
}

/// `X-Amz-Firehose-Common-Attributes`: `{"commonAttributes":{"name":"value",...}}`.
pub fn common_attributes_header(attributes: &[(String, String)]) -> String {
    let map: Map<String, Value> = attributes
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    json!({ "commonAttributes": map }).to_string()
}

/// Parse `NAME=VALUE`.
pub fn parse_attribute(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected NAME=VALUE, got {s:?}")),
    }
}

/// Why a delivery attempt failed, in Firehose's error codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Firehose's error code, e.g. `HttpEndpoint.RequestTimeout`.
    pub code: &'static str,
    /// What happened, for the log and the error record.
    pub message: String,
}

impl Failure {
    /// A failure with Firehose's `code`.
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
        }
    }
}

/// A response's status and the headers that decide whether it is valid.
#[derive(Debug, Clone, Copy, Default)]
pub struct ResponseHead<'a> {
    /// The HTTP status.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: Option<&'a str>,
    /// `Content-Encoding`.
    pub content_encoding: Option<&'a str>,
    /// `Content-Length`.
    pub content_length: Option<&'a str>,
}

/// Check a response: only status 200 with `Content-Type: application/json`, a `Content-Length`
/// that is the body's length (the spec requires it: a chunked answer is invalid), no
/// `Content-Encoding`, and a body of exactly `{"requestId": <ours>, "timestamp": <number>}` is a
/// success. Anything else is a failure, with the endpoint's `errorMessage` when it gave one.
pub fn check_response(request_id: &str, head: &ResponseHead, body: &[u8]) -> Result<(), Failure> {
    const INVALID: &str = "HttpEndpoint.InvalidResponseFromDestination";
    let ResponseHead {
        status,
        content_type,
        content_encoding,
        content_length,
    } = *head;
    if body.len() > MAX_RESPONSE_BYTES {
        return Err(Failure::new(
            "HttpEndpoint.ResponseTooLarge",
            format!("response body is {} bytes, over 1 MiB", body.len()),
        ));
    }
    let parsed: Option<Map<String, Value>> = serde_json::from_slice(body).ok();
    if status != 200 {
        let detail = parsed
            .as_ref()
            .and_then(|m| m.get("errorMessage"))
            .and_then(Value::as_str)
            .map(|m| m.chars().take(MAX_ERROR_MESSAGE_CHARS).collect::<String>())
            .unwrap_or_default();
        // The one refusal the sender can mend itself, and whose cause it cannot see.
        let hint = if status == 401 {
            "; the key sent is the first in FIREHOSE_ACCESS_KEY: set it to one of the endpoint's keys"
        } else {
            ""
        };
        return Err(Failure::new(
            "HttpEndpoint.DestinationException",
            format!("the endpoint answered HTTP {status}: {detail}{hint}"),
        ));
    }
    let json_type = content_type
        .and_then(|t| t.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"));
    if !json_type {
        return Err(Failure::new(
            INVALID,
            format!("Content-Type is {content_type:?}, not application/json"),
        ));
    }
    if let Some(enc) = content_encoding {
        return Err(Failure::new(
            INVALID,
            format!("response has Content-Encoding {enc:?}"),
        ));
    }
    match content_length.map(|v| v.trim().parse::<usize>()) {
        Some(Ok(n)) if n == body.len() => {}
        None => return Err(Failure::new(INVALID, "response has no Content-Length")),
        Some(_) => {
            return Err(Failure::new(
                INVALID,
                format!(
                    "response Content-Length is {content_length:?}, but the body is {} bytes",
                    body.len()
                ),
            ))
        }
    }
    let Some(obj) = parsed else {
        return Err(Failure::new(INVALID, "response body is not a JSON object"));
    };
    if let Some(unknown) = obj.keys().find(|k| *k != "requestId" && *k != "timestamp") {
        return Err(Failure::new(
            INVALID,
            format!("response has the field {unknown:?}, which a successful response may not have"),
        ));
    }
    match obj.get("requestId") {
        Some(Value::String(id)) if id == request_id => {}
        other => {
            return Err(Failure::new(
                INVALID,
                format!("response requestId is {other:?}, expected {request_id:?}"),
            ))
        }
    }
    match obj.get("timestamp") {
        Some(Value::Number(_)) => Ok(()),
        other => Err(Failure::new(
            INVALID,
            format!("response timestamp is {other:?}, not a number"),
        )),
    }
}

/// The delay before retry `n` (0-based): `min(120 s, 2^n s * jitter)`, `jitter` in [0.85, 1.15].
pub fn retry_delay(n: u32, jitter: f64) -> Duration {
    let base = 2f64.powi(n.min(30) as i32);
    Duration::from_secs_f64(base * jitter).min(MAX_RETRY_DELAY)
}

/// A uniform jitter factor in [0.85, 1.15].
pub fn jitter() -> f64 {
    0.85 + 0.3 * fastrand::f64()
}

/// The retry clock of one batch: only the time spent waiting between attempts counts, not the
/// time spent waiting for responses.
#[derive(Debug, Clone)]
pub struct RetryClock {
    /// The retry duration.
    pub duration: Duration,
    /// Time waited between attempts so far.
    pub waited: Duration,
    /// Retries so far.
    pub retries: u32,
}

impl RetryClock {
    /// A clock with nothing used of `duration` yet.
    pub fn new(duration: Duration) -> Self {
        RetryClock {
            duration,
            waited: Duration::ZERO,
            retries: 0,
        }
    }

    /// The wait before the next attempt, or `None` when the retry duration is used up (the
    /// attempt would start after it ends).
    pub fn next_delay(&mut self, jitter: f64) -> Option<Duration> {
        let delay = retry_delay(self.retries, jitter);
        if self.waited + delay > self.duration {
            return None;
        }
        self.waited += delay;
        self.retries += 1;
        Some(delay)
    }
}

/// One line of the error output: Firehose's record for data it could not deliver.
pub fn error_record(
    attempts_made: u32,
    arrival_ms: i64,
    failure: &Failure,
    attempt_ending_ms: i64,
    data: &[u8],
    request_id: &str,
) -> Value {
    json!({
        "attemptsMade": attempts_made,
        "arrivalTimestamp": arrival_ms,
        "errorCode": failure.code,
        "errorMessage": failure.message,
        "attemptEndingTimestamp": attempt_ending_ms,
        "rawData": base64::engine::general_purpose::STANDARD.encode(data),
        "requestId": request_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // The body has exactly requestId, timestamp and base64 records.
    #[test]
    fn body_shape() {
        let body = request_body("id-\"1", 1_700_000_000_123, [b"{\"a\":1}".as_slice(), b""]);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["requestId"], "id-\"1");
        assert_eq!(v["timestamp"], 1_700_000_000_123_i64);
        assert_eq!(v["records"][0]["data"], "eyJhIjoxfQ==");
        assert_eq!(v["records"][1]["data"], "");
        assert_eq!(v.as_object().unwrap().len(), 3);
        assert_eq!(
            common_attributes_header(&[("env".into(), "test".into())]),
            r#"{"commonAttributes":{"env":"test"}}"#
        );
    }

    // Only an exact, matching 200 response is a success.
    #[test]
    fn response_validation() {
        let ok = br#"{"requestId":"r","timestamp":1}"#;
        let json = Some("application/json");
        let len = ok.len().to_string();
        // A response with a Content-Length that matches its body.
        let check = |status, content_type, content_encoding, body: &[u8]| {
            let len = body.len().to_string();
            let head = ResponseHead {
                status,
                content_type,
                content_encoding,
                content_length: Some(&len),
            };
            check_response("r", &head, body)
        };
        assert!(check(200, json, None, ok).is_ok());
        assert!(check(200, Some("application/json; charset=utf-8"), None, ok).is_ok());
        let bad = |status, ct, ce, body: &[u8]| check(status, ct, ce, body).unwrap_err().code;
        for content_length in [None, Some("5"), Some("many"), Some("-1")] {
            let head = ResponseHead {
                status: 200,
                content_type: json,
                content_length,
                ..ResponseHead::default()
            };
            let e = check_response("r", &head, ok).unwrap_err();
            assert_eq!(e.code, "HttpEndpoint.InvalidResponseFromDestination");
            assert!(e.message.contains("Content-Length"), "{}", e.message);
        }
        let padded = format!(" {len} ");
        let head = ResponseHead {
            status: 200,
            content_type: json,
            content_length: Some(&padded),
            ..ResponseHead::default()
        };
        assert!(check_response("r", &head, ok).is_ok());
        assert_eq!(
            bad(500, json, None, ok),
            "HttpEndpoint.DestinationException"
        );
        // A refused key says where the key sent comes from.
        let refused = ResponseHead {
            status: 401,
            content_type: json,
            ..ResponseHead::default()
        };
        let e = check_response(
            "r",
            &refused,
            br#"{"errorMessage":"missing or invalid access key"}"#,
        );
        let m = e.unwrap_err().message;
        assert!(
            m.contains("invalid access key") && m.contains("FIREHOSE_ACCESS_KEY"),
            "{m}"
        );
        assert_eq!(
            bad(200, json, None, b"OK"),
            "HttpEndpoint.InvalidResponseFromDestination"
        );
        assert_eq!(
            bad(200, json, None, br#"{"requestId":"x","timestamp":1}"#),
            "HttpEndpoint.InvalidResponseFromDestination"
        );
        assert_eq!(
            bad(200, json, None, br#"{"requestId":"r","timestamp":"1"}"#),
            "HttpEndpoint.InvalidResponseFromDestination"
        );
        assert_eq!(
            bad(200, json, None, br#"{"requestId":"r"}"#),
            "HttpEndpoint.InvalidResponseFromDestination"
        );
        assert_eq!(
            bad(
                200,
                json,
                None,
                br#"{"requestId":"r","timestamp":1,"extra":1}"#
            ),
            "HttpEndpoint.InvalidResponseFromDestination"
        );
        assert_eq!(
            bad(
                200,
                json,
                None,
                br#"{"requestId":"r","timestamp":1,"errorMessage":"x"}"#
            ),
            "HttpEndpoint.InvalidResponseFromDestination"
        );
        assert_eq!(
            bad(200, Some("text/plain"), None, ok),
            "HttpEndpoint.InvalidResponseFromDestination"
        );
        assert_eq!(
            bad(200, json, Some("gzip"), ok),
            "HttpEndpoint.InvalidResponseFromDestination"
        );
        let e = check(
            500,
            json,
            None,
            br#"{"requestId":"r","timestamp":1,"errorMessage":"db down"}"#,
        )
        .unwrap_err();
        assert!(e.message.contains("500") && e.message.contains("db down"));
    }

    // delay(n) = min(120 s, 2^n s * jitter).
    #[test]
    fn retry_delays() {
        assert_eq!(retry_delay(0, 1.0), Duration::from_secs(1));
        assert_eq!(retry_delay(3, 1.0), Duration::from_secs(8));
        assert_eq!(retry_delay(1, 0.85), Duration::from_secs_f64(1.7));
        assert_eq!(retry_delay(7, 1.15), MAX_RETRY_DELAY);
        assert_eq!(retry_delay(60, 1.0), MAX_RETRY_DELAY);
        for _ in 0..1000 {
            let j = jitter();
            assert!((0.85..=1.15).contains(&j));
        }
    }

    // The retry clock counts waits only and stops before an attempt past the duration.
    #[test]
    fn retry_clock() {
        let mut c = RetryClock::new(Duration::from_secs(10));
        assert_eq!(c.next_delay(1.0), Some(Duration::from_secs(1)));
        assert_eq!(c.next_delay(1.0), Some(Duration::from_secs(2)));
        assert_eq!(c.next_delay(1.0), Some(Duration::from_secs(4)));
        assert_eq!(c.next_delay(1.0), None);
        assert_eq!(c.retries, 3);
        assert_eq!(RetryClock::new(Duration::ZERO).next_delay(1.0), None);
    }
}
