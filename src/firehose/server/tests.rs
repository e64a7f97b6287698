//! The router called directly (`app(state).oneshot(request)`), without a socket or a database:
//! every request here is refused before a record is stored, so the store points at an address
//! where nothing listens, and any test that reached it would fail with 503, not pass.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

use super::super::protocol::{ACCESS_KEY, PROTOCOL_VERSION};
use super::*;

const KEY: &str = "router-test-key";

/// Nothing listens on port 1; server selection would give up in 200 ms.
const UNREACHABLE: &str = "mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=200";

fn state(max_body_bytes: usize) -> AppState {
    state_with(max_body_bytes, BODY_TIMEOUT)
}

fn state_with(max_body_bytes: usize, body_timeout: Duration) -> AppState {
    let config = EndpointConfig {
        path: "/".into(),
        keys: AccessKeys::new([KEY.as_bytes()]),
        max_body_bytes,
        collection: "firehose".into(),
        decode: DecodeOptions::default(),
        body_timeout,
    };
    AppState::new(config, Store::new(UNREACHABLE, "router_tests"))
}

/// A request with Firehose's headers; `edit` changes them.
fn request(edit: impl FnOnce(&mut HeaderMap), body: &str) -> Request<Body> {
    let mut req = Request::builder()
        .method("POST")
        .uri("/")
        .body(Body::from(body.to_owned()))
        .unwrap();
    let h = req.headers_mut();
    h.insert(PROTOCOL_VERSION, HeaderValue::from_static("1.0"));
    h.insert(REQUEST_ID, HeaderValue::from_static("req-1"));
    h.insert(ACCESS_KEY, HeaderValue::from_static(KEY));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    edit(req.headers_mut());
    req
}

/// The answer's status, its `Allow` header, and its body's requestId and errorMessage.
struct Answer {
    status: StatusCode,
    allow: Option<String>,
    request_id: String,
    message: String,
}

async fn answer(state: AppState, req: Request<Body>) -> Answer {
    let resp = app(state).oneshot(req).await.unwrap();
    let status = resp.status();
    let allow = resp
        .headers()
        .get(header::ALLOW)
        .map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert!(v["timestamp"].is_i64(), "{v}");
    Answer {
        status,
        allow,
        request_id: v["requestId"].as_str().unwrap().to_owned(),
        message: v["errorMessage"].as_str().unwrap_or("").to_owned(),
    }
}

async fn refused(req: Request<Body>) -> Answer {
    answer(state(1 << 20), req).await
}

// A missing, wrong, prefix or empty key is 401, with a message that names no key.
#[tokio::test]
async fn missing_or_wrong_key_is_401() {
    for key in [None, Some("wrong"), Some(""), Some("router-test-ke")] {
        let req = request(
            |h| match key {
                Some(k) => {
                    h.insert(ACCESS_KEY, HeaderValue::from_str(k).unwrap());
                }
                None => {
                    h.remove(ACCESS_KEY);
                }
            },
            "{}",
        );
        let a = refused(req).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{key:?}");
        assert_eq!(a.message, "missing or invalid access key");
        assert_eq!(a.request_id, "req-1");
    }
}

// The key is checked before the other headers: without it, a bad request is still 401, a
// request id too long included.
#[tokio::test]
async fn key_is_checked_before_the_other_headers() {
    let a = refused(request(
        |h| {
            h.remove(ACCESS_KEY);
            h.remove(PROTOCOL_VERSION);
            h.remove(REQUEST_ID);
        },
        "",
    ))
    .await;
    assert_eq!(
        (a.status, a.request_id.as_str()),
        (StatusCode::UNAUTHORIZED, "")
    );
    let long = "r".repeat(300);
    let a = refused(request(
        |h| {
            h.remove(ACCESS_KEY);
            h.insert(REQUEST_ID, HeaderValue::from_str(&long).unwrap());
        },
        "",
    ))
    .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(a.message, "missing or invalid access key");
}

// A missing request id is 400 with an empty requestId; a too long one is 400 echoing 256 bytes.
#[tokio::test]
async fn request_id_missing_or_too_long_is_400() {
    let a = refused(request(
        |h| {
            h.remove(REQUEST_ID);
        },
        "{}",
    ))
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.request_id, "");
    assert_eq!(a.message, "missing X-Amz-Firehose-Request-Id header");
    let long = "r".repeat(5000);
    let a = refused(request(
        |h| {
            h.insert(REQUEST_ID, HeaderValue::from_str(&long).unwrap());
        },
        "{}",
    ))
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.request_id, long[..MAX_REQUEST_ID_BYTES]);
}

// Protocol version 2.0 and a missing one are 400, saying which.
#[tokio::test]
async fn protocol_version_other_or_missing_is_400() {
    let a = refused(request(
        |h| {
            h.insert(PROTOCOL_VERSION, HeaderValue::from_static("2.0"));
        },
        "{}",
    ))
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(a.message.contains("\"2.0\""), "{}", a.message);
    let a = refused(request(
        |h| {
            h.remove(PROTOCOL_VERSION);
        },
        "{}",
    ))
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.message, "missing X-Amz-Firehose-Protocol-Version header");
}

// A Content-Encoding other than gzip or identity is 400.
#[tokio::test]
async fn other_content_encoding_is_400() {
    let a = refused(request(
        |h| {
            h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("br"));
        },
        "{}",
    ))
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(a.message.contains("gzip"), "{}", a.message);
}

// A plain body that declares more than the limit is 413 before a byte of it is read.
#[tokio::test]
async fn declared_length_over_the_limit_is_413() {
    let a = refused(request(
        |h| {
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(2u64 << 20));
        },
        "",
    ))
    .await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        a.message,
        "Content-Length is larger than the 1 MiB body limit"
    );
}

// Bodies that are not Firehose requests, or name another request, are 400 before any write.
#[tokio::test]
async fn bad_bodies_are_400() {
    let a = refused(request(|_| {}, "not json")).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(
        a.message.starts_with("body is not a Firehose request"),
        "{}",
        a.message
    );
    let other = r#"{"requestId":"req-2","timestamp":1,"records":[]}"#;
    let a = refused(request(|_| {}, other)).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(a.message.contains("requestId"), "{}", a.message);
    let a = refused(request(
        |h| {
            h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        },
        "not gzip",
    ))
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(a.message.starts_with("invalid gzip body"), "{}", a.message);
}

// Other methods get 405 with `Allow: POST`, other paths a Firehose-shaped 404, /health 200.
#[tokio::test]
async fn methods_paths_and_health() {
    let mut req = request(|_| {}, "");
    *req.method_mut() = Method::GET;
    let a = refused(req).await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(a.allow.as_deref(), Some("POST"));
    assert_eq!(a.request_id, "req-1");
    let mut req = request(|_| {}, "{}");
    *req.uri_mut() = "/elsewhere".parse().unwrap();
    let a = refused(req).await;
    assert_eq!(
        (a.status, a.message.as_str()),
        (StatusCode::NOT_FOUND, "not found")
    );
    let health = Request::get("/health").body(Body::empty()).unwrap();
    let resp = app(state(1 << 20)).oneshot(health).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

// Bodies in progress share a budget of a few maximum-size bodies, not one per connection (a
// 64 MiB delivery peaked at about 4.6 times its size, and 256 connections could have held
// one each): a delivery that finds no room is answered 503 within the body timeout, without
// its body being read, so Firehose retries it; once there is room it goes on.
#[tokio::test]
async fn a_delivery_without_room_in_the_body_budget_gets_503() {
    let s = state_with(1024, Duration::from_millis(200));
    let all = s.body_budget.available_permits() as u32;
    assert_eq!(
        all, BODY_BUDGET_BODIES as u32,
        "1 KiB bodies, budget in KiB"
    );
    let held = s.body_budget.clone().try_acquire_many_owned(all).unwrap();
    let a = answer(s.clone(), request(|_| {}, "{}")).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.message, "endpoint busy; retry later");
    drop(held);
    let a = answer(s.clone(), request(|_| {}, "{}")).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.message);
}

// A plain body's share of the budget is its declared length; a gzip body, or one without a
// length, takes a whole maximum-size body's share, as it may grow to that.
#[tokio::test]
async fn small_plain_bodies_take_only_their_size_from_the_budget() {
    let s = state_with(64 * 1024, Duration::from_millis(200));
    let all = s.body_budget.available_permits() as u32;
    let held = s
        .body_budget
        .clone()
        .try_acquire_many_owned(all - 1)
        .unwrap();
    let small = request(
        |h| {
            h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("2"));
        },
        "{}",
    );
    assert_eq!(
        answer(s.clone(), small).await.status,
        StatusCode::BAD_REQUEST
    );
    let unknown = request(|_| {}, "{}");
    assert_eq!(
        answer(s.clone(), unknown).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    drop(held);
}

// Every `--path` the command line accepts builds the router (axum panics on a path it reads as
// a pattern it refuses), and a delivery there reaches the delivery handler (which refuses a
// request without a key), not the health check or a 404.
#[tokio::test]
async fn every_accepted_path_builds_a_router_that_delivers_there() {
    use clap::Parser;
    for path in [
        "/",
        "/firehose",
        "/a:b",
        "/v1/firehose/",
        "/a.b-c_d~e",
        "/healthzz",
        "/health/x",
        "/a%20b",
        "/v1/a%20b:c@d",
    ] {
        let cli = crate::firehose::config::Cli::try_parse_from(["f", "--path", path]).unwrap();
        let config = cli.endpoint_config(Some(KEY)).unwrap();
        let state = AppState::new(config, Store::new(UNREACHABLE, "router_tests"));
        let req = Request::builder()
            .method("POST")
            .uri(path)
            .body(Body::from("{}"))
            .unwrap();
        let a = answer(state, req).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{path}: {}", a.message);
    }
}
