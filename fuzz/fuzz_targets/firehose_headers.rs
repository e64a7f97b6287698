//! The endpoint's request headers and access-key check, through its router (`app`), with keys
//! configured from an arbitrary `FIREHOSE_ACCESS_KEY` the way the endpoint reads it. A valid
//! Firehose request is built, then changed by the input: method, path, headers added, removed
//! or replaced, the body. Never a panic; a request whose access key is not one of the configured
//! keys is refused before anything past the key check (401, or 404/405 or a too long request id,
//! which come first); a configured key is never answered 401; and the unchanged request with the
//! key firehose-local sends for the same variable is accepted (200).
//!
//! Bodies never carry records: a record would reach the database, which this target has none
//! of (the store points where nothing listens, and an input that got that far would be slow and
//! answered 503, not 200).
#![no_main]

use std::io::{Read, Write};
use std::sync::OnceLock;

use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, Method, Request, StatusCode};
use clap::Parser;
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use sensehat_monitor::firehose::config::Cli;
use sensehat_monitor::firehose::protocol::{
    RequestBody, ACCESS_KEY, PROTOCOL_VERSION, REQUEST_ID, SOURCE_ARN,
};
use sensehat_monitor::firehose::server::{app, AppState, EndpointConfig, RequestError};
use sensehat_monitor::firehose::Store;
use sensehat_monitor::firehose_local::config::first_access_key;
use tower::ServiceExt;

const PATH: &str = "/firehose";
const LIMIT: usize = 64 * 1024;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    })
}

/// The endpoint's command line with no options: only its reading of the keys is used.
fn cli() -> &'static Cli {
    static CLI: OnceLock<Cli> = OnceLock::new();
    CLI.get_or_init(|| Cli::try_parse_from(["firehose-endpoint"]).unwrap())
}

/// What reaches the router of a header value sent over HTTP/1.1: the parser drops the spaces
/// and tabs around it, and a value with other control characters cannot be sent at all.
fn on_the_wire(value: &[u8]) -> Option<HeaderValue> {
    let start = value.iter().position(|b| !matches!(b, b' ' | b'\t'))?;
    let end = value.iter().rposition(|b| !matches!(b, b' ' | b'\t'))? + 1;
    HeaderValue::from_bytes(&value[start..end]).ok()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// Whether the endpoint could find a record in `body` (as sent, or gunzipped): such an input
/// would reach the database.
fn carries_records(body: &[u8]) -> bool {
    let has =
        |b: &[u8]| serde_json::from_slice::<RequestBody>(b).is_ok_and(|r| !r.records.is_empty());
    let mut plain = Vec::new();
    let gunzipped = flate2::read::MultiGzDecoder::new(body)
        .take(LIMIT as u64 + 1)
        .read_to_end(&mut plain)
        .is_ok();
    has(body) || (gunzipped && has(&plain))
}

struct Input {
    env: String,
    key: Vec<u8>,
    method: Method,
    path: String,
    headers: Vec<(HeaderName, Option<Vec<u8>>)>,
    body: Vec<u8>,
    changed: bool,
}

fn input(u: &mut Unstructured) -> Result<Input> {
    let env: String = u.arbitrary()?;
    let local_key = first_access_key(&env);
    let request_id = "7b8c1f0e-1d2e-4f5a-9b6c-0d1e2f3a4b5c";
    // The key sent: firehose-local's, one piece of the variable, or anything.
    let key = match u.int_in_range(0..=2)? {
        0 => local_key.clone().unwrap_or_default().into_bytes(),
        1 => {
            let pieces: Vec<&str> = env.split(',').collect();
            u.choose(&pieces)?.as_bytes().to_vec()
        }
        _ => u.arbitrary::<Vec<u8>>()?,
    };
    let mut input = Input {
        env,
        key: key.clone(),
        method: Method::POST,
        path: PATH.into(),
        headers: vec![
            (
                HeaderName::from_static(PROTOCOL_VERSION),
                Some(b"1.0".to_vec()),
            ),
            (HeaderName::from_static(REQUEST_ID), Some(request_id.into())),
            (HeaderName::from_static(ACCESS_KEY), Some(key)),
            (
                HeaderName::from_static(SOURCE_ARN),
                Some(b"arn:aws:firehose:eu-west-1:1:deliverystream/s".to_vec()),
            ),
            (
                HeaderName::from_static("content-type"),
                Some(b"application/json".to_vec()),
            ),
        ],
        body: format!(r#"{{"requestId":"{request_id}","timestamp":1700000000000,"records":[]}}"#)
            .into_bytes(),
        changed: false,
    };
    let names = [
        ACCESS_KEY,
        REQUEST_ID,
        PROTOCOL_VERSION,
        SOURCE_ARN,
        "content-encoding",
        "content-length",
        "content-type",
        "transfer-encoding",
    ];
    let changes = u.int_in_range(0..=6)?;
    for _ in 0..changes {
        input.changed = true;
        match u.int_in_range(0..=6)? {
            0 => {
                input.method = match u.int_in_range(0..=3)? {
                    0 => Method::GET,
                    1 => Method::PUT,
                    2 => Method::from_bytes(u.arbitrary::<&[u8]>()?).unwrap_or(Method::DELETE),
                    _ => Method::POST,
                }
            }
            1 => {
                input.path = match u.int_in_range(0..=3)? {
                    0 => "/".into(),
                    1 => "/health".into(),
                    2 => format!("{PATH}/"),
                    _ => format!("/{}", u.arbitrary::<String>()?),
                }
            }
            2 => {
                // Remove every header of a name.
                let name = HeaderName::from_static(*u.choose(&names)?);
                input.headers.retain(|(n, _)| *n != name);
            }
            3 => {
                // Add a header, known name or not, value from the input.
                let name = if u.arbitrary()? {
                    HeaderName::from_static(*u.choose(&names)?)
                } else {
                    match HeaderName::from_bytes(u.arbitrary::<&[u8]>()?) {
                        Ok(n) => n,
                        Err(_) => continue,
                    }
                };
                let value = match u.int_in_range(0..=3)? {
                    0 => b"gzip".to_vec(),
                    1 => b"1.0".to_vec(),
                    2 => input.key.clone(),
                    _ => u.arbitrary::<Vec<u8>>()?,
                };
                input.headers.push((name, Some(value)));
            }
            4 => {
                // Replace the value of an existing header.
                if input.headers.is_empty() {
                    continue;
                }
                let i = u.choose_index(input.headers.len())?;
                input.headers[i].1 = Some(u.arbitrary::<Vec<u8>>()?);
            }
            5 => input.body = u.arbitrary::<Vec<u8>>()?,
            _ => {
                input.body = gzip(&input.body);
                input.headers.push((
                    HeaderName::from_static("content-encoding"),
                    Some(b"gzip".to_vec()),
                ));
            }
        }
    }
    Ok(input)
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = input(&mut Unstructured::new(data)) else {
        return;
    };
    if carries_records(&input.body) {
        return;
    }
    let keys = cli().access_keys(Some(&input.env));
    // firehose-local, given the same variable, sends a key the endpoint accepts.
    if let Ok(keys) = &keys {
        let sent = first_access_key(&input.env);
        assert!(
            sent.as_ref().is_some_and(|k| keys.matches(k.as_bytes())),
            "FIREHOSE_ACCESS_KEY={:?}: firehose-local sends {sent:?}, which the endpoint refuses",
            input.env
        );
    }
    let Ok(keys) = keys else {
        return;
    };
    let mut request = Request::builder().method(input.method.clone());
    request = request.uri(format!("http://endpoint{}", input.path));
    let mut sent_key: Option<HeaderValue> = None;
    for (name, value) in &input.headers {
        let Some(value) = value.as_deref().and_then(on_the_wire) else {
            continue;
        };
        if *name == ACCESS_KEY && sent_key.is_none() {
            sent_key = Some(value.clone());
        }
        request = request.header(name.clone(), value);
    }
    let Ok(request) = request.body(Body::from(input.body.clone())) else {
        return;
    };
    // The health routes are not deliveries: they answer in their own shape, to anyone, with no
    // key (docs/metrics.md).
    if matches!(request.uri().path(), "/health" | "/healthz" | "/readyz") {
        return;
    }
    // A HEAD answer carries no body; its status is still checked.
    let head = request.method() == Method::HEAD;
    let config = EndpointConfig {
        path: PATH.into(),
        keys: keys.clone(),
        max_body_bytes: LIMIT,
        collection: "firehose".into(),
        decode: Default::default(),
        body_timeout: std::time::Duration::from_secs(5),
    };
    let state = AppState::new(
        config,
        Store::new(
            "mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=100",
            "fuzz",
        ),
    );
    let response = runtime().block_on(app(state).oneshot(request)).unwrap();
    let status = response.status();
    let body = runtime()
        .block_on(http_body_util::BodyExt::collect(response.into_body()))
        .unwrap()
        .to_bytes();
    let answer: serde_json::Value = if head {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&body).expect("every answer is Firehose-shaped JSON")
    };
    let message = answer["errorMessage"].as_str().unwrap_or("");
    // The key the router saw: the first X-Amz-Firehose-Access-Key, as HTTP delivered it.
    let sent_key_bytes = sent_key.as_ref().map(|k| k.as_bytes().to_vec());
    let right_key = sent_key.is_some_and(|k| keys.matches(k.as_bytes()));
    if right_key {
        assert_ne!(status, StatusCode::UNAUTHORIZED, "a configured key refused");
    } else {
        let before_the_key = status == StatusCode::NOT_FOUND
            || status == StatusCode::METHOD_NOT_ALLOWED
            || status == StatusCode::UNAUTHORIZED
            || (status == StatusCode::BAD_REQUEST
                && (head || message == RequestError::RequestIdTooLong.to_string()));
        assert!(
            before_the_key,
            "a wrong key got {status} {message:?} (key {:?}, FIREHOSE_ACCESS_KEY={:?})",
            input.key, input.env
        );
    }
    // firehose-local's own request, when its key can travel in a header at all (a key with
    // control characters cannot, and firehose-local's HTTP client refuses to send it).
    let key_on_the_wire = sent_key_bytes.as_deref() == Some(input.key.as_slice());
    if !input.changed
        && key_on_the_wire
        && input.key == first_access_key(&input.env).unwrap_or_default().as_bytes()
    {
        assert_eq!(
            status,
            StatusCode::OK,
            "firehose-local's request refused: {message}"
        );
    }
});
