//! firehose-local end to end: records put into the kinesis-local emulator are delivered to a
//! small HTTP receiver written here, which records every request and can misbehave on cue.
#![cfg(feature = "forwarder")]

mod common;
#[path = "common/kinesis.rs"]
mod kinesis;
#[path = "common/metrics.rs"]
mod metrics_common;

use std::collections::{HashSet, VecDeque};
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use common::{free_port, unique_name, wait_until};
use kinesis::{KinesisServer, AWS_ENV};
use serde_json::{json, Value};

const ACCESS_KEY: &str = "test-access-key-0123";

/// How the receiver answers one request.
#[derive(Clone, Copy, Debug)]
enum Reply {
    Valid,
    Status(u16),
    NotJson,
    WrongRequestId,
    /// A valid body, but chunked: no Content-Length.
    Chunked,
    /// Status 200 and the start of a body, then nothing more.
    Stalled,
    /// Valid, after five seconds: time for the readers to have read everything meanwhile,
    /// however busy the machine.
    Slow,
}

/// A body of one chunk and of unknown length (hyper sends it chunked, without Content-Length),
/// which ends after the chunk or, if it `stalls`, never does.
struct OneChunk {
    chunk: Option<Bytes>,
    stalls: bool,
}

impl hyper::body::Body for OneChunk {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        match self.chunk.take() {
            Some(b) => std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(b)))),
            None if self.stalls => std::task::Poll::Pending,
            None => std::task::Poll::Ready(None),
        }
    }
}

/// One request as the receiver saw it.
#[derive(Clone, Debug)]
struct Got {
    at: Instant,
    headers: HeaderMap,
    /// The body after undoing Content-Encoding: gzip.
    body: Value,
    /// Its length in bytes.
    body_len: usize,
}

#[derive(Default)]
struct Recorder {
    got: Vec<Got>,
    /// Replies for the next requests; Valid once empty.
    script: VecDeque<Reply>,
}

type Shared = Arc<Mutex<Recorder>>;

async fn receive(State(state): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let raw = if headers.get("content-encoding").is_some_and(|v| v == "gzip") {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&body[..])
            .read_to_end(&mut out)
            .unwrap_or_default();
        out
    } else {
        body.to_vec()
    };
    let body_len = raw.len();
    let body: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    let id = body["requestId"].as_str().unwrap_or_default().to_owned();
    let reply = {
        let mut s = state.lock().unwrap();
        s.got.push(Got {
            at: Instant::now(),
            headers,
            body,
            body_len,
        });
        s.script.pop_front().unwrap_or(Reply::Valid)
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    if let Reply::Slow = reply {
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    match reply {
        Reply::Valid | Reply::Slow => {
            axum::Json(json!({ "requestId": id, "timestamp": now })).into_response()
        }
        Reply::Status(code) => (
            StatusCode::from_u16(code).unwrap(),
            axum::Json(
                json!({ "requestId": id, "timestamp": now, "errorMessage": "test failure" }),
            ),
        )
            .into_response(),
        Reply::NotJson => (StatusCode::OK, "OK").into_response(),
        Reply::WrongRequestId => {
            axum::Json(json!({ "requestId": "not-the-request-id", "timestamp": now }))
                .into_response()
        }
        Reply::Chunked => {
            let body = json!({ "requestId": id, "timestamp": now }).to_string();
            (
                [("content-type", "application/json")],
                axum::body::Body::new(OneChunk {
                    chunk: Some(Bytes::from(body)),
                    stalls: false,
                }),
            )
                .into_response()
        }
        Reply::Stalled => (
            [("content-type", "application/json")],
            axum::body::Body::new(OneChunk {
                chunk: Some(Bytes::from_static(b"{\"requestId\":")),
                stalls: true,
            }),
        )
            .into_response(),
    }
}

/// Start the receiver on a free port; returns its URL and the shared recorder.
async fn receiver(script: Vec<Reply>) -> (String, Shared) {
    let state: Shared = Arc::new(Mutex::new(Recorder {
        got: Vec::new(),
        script: script.into(),
    }));
    let app = axum::Router::new()
        .route("/", axum::routing::post(receive))
        // Firehose's bodies go up to 64 MiB; axum's default limit is 2 MiB.
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, state)
}

fn spawn_firehose(
    kin: &KinesisServer,
    stream: &str,
    url: &str,
    extra: &[&str],
) -> tokio::process::Child {
    firehose_command(kin, stream, url, extra)
        .spawn()
        .expect("start firehose-local")
}

/// The command [`spawn_firehose`] runs.
fn firehose_command(
    kin: &KinesisServer,
    stream: &str,
    url: &str,
    extra: &[&str],
) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_firehose-local"));
    c.args([
        "--stream-name",
        stream,
        "--kinesis-endpoint-url",
        &kin.endpoint,
    ])
    .args([
        "--destination-url",
        url,
        "--from-start",
        "--buffer-seconds",
        "1",
    ])
    .args(extra)
    .envs(AWS_ENV)
    .env("FIREHOSE_ACCESS_KEY", ACCESS_KEY)
    .env("RUST_LOG", "info")
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    c
}

/// Put `n` small JSON records, partition keys spread so every shard gets some.
async fn put_records(kin: &KinesisServer, stream: &str, n: usize) -> Vec<Vec<u8>> {
    put_records_from(kin, stream, 0, n).await
}

/// Put records numbered `first..first + n`.
async fn put_records_from(
    kin: &KinesisServer,
    stream: &str,
    first: usize,
    n: usize,
) -> Vec<Vec<u8>> {
    let data: Vec<Vec<u8>> = (first..first + n)
        .map(|i| format!(r#"{{"_id":"{i:024x}","n":{i},"text":"héllo"}}"#).into_bytes())
        .collect();
    kin.put_all(
        stream,
        data.iter()
            .enumerate()
            .map(|(i, d)| (format!("key-{i}"), d.clone())),
    )
    .await;
    data
}

async fn wait_for_requests(state: &Shared, n: usize, timeout: Duration) -> Vec<Got> {
    let deadline = Instant::now() + timeout;
    loop {
        let got = state.lock().unwrap().got.clone();
        if got.len() >= n {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {n} requests arrived",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn decoded_records(body: &Value) -> Vec<Vec<u8>> {
    body["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            base64::engine::general_purpose::STANDARD
                .decode(r["data"].as_str().unwrap())
                .unwrap()
        })
        .collect()
}

fn header<'a>(g: &'a Got, name: &str) -> Option<&'a str> {
    g.headers.get(name).and_then(|v| v.to_str().ok())
}

/// Assert the gaps between consecutive requests follow 1 s, 2 s, 4 s... within the +-15 %
/// jitter (plus up to half a second for the response round trip on a loaded machine, still
/// short of the next gap's 2 x 0.85).
fn assert_backoff(got: &[Got]) {
    for (n, pair) in got.windows(2).enumerate() {
        let gap = pair[1].at.duration_since(pair[0].at).as_secs_f64();
        let base = 2f64.powi(n as i32);
        assert!(
            gap >= base * 0.85 - 0.02 && gap <= base * 1.15 + 0.5,
            "retry {n}: gap {gap:.3} s, expected {base} s +-15 %"
        );
    }
}

/// The files of the error output under `dir`, once there are some (at most 30 s after
/// `started`), and the error records of the first.
async fn error_output(dir: &Path, started: Instant) -> (Vec<PathBuf>, Vec<Value>) {
    let mut files = Vec::new();
    while files.is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no error output"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        files = files_under(dir);
    }
    let text = std::fs::read_to_string(&files[0]).unwrap();
    let lines = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (files, lines)
}

/// Every regular file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

// Records from every shard arrive in one request with exactly Firehose's headers and body.
#[tokio::test(flavor = "multi_thread")]
async fn delivers_the_exact_firehose_request() {
    let kin = KinesisServer::start();
    let stream = unique_name("fh");
    kin.create_stream(&stream, 2).await;
    let sent = put_records(&kin, &stream, 6).await;
    let (url, state) = receiver(vec![]).await;
    let mut fh = spawn_firehose(
        &kin,
        &stream,
        &url,
        &[
            "--common-attribute",
            "env=test",
            "--common-attribute",
            "team=iot",
        ],
    );
    let got = wait_for_requests(&state, 1, Duration::from_secs(30)).await;
    let g = &got[0];
    assert_eq!(header(g, "content-type"), Some("application/json"));
    assert_eq!(header(g, "x-amz-firehose-protocol-version"), Some("1.0"));
    assert_eq!(header(g, "x-amz-firehose-access-key"), Some(ACCESS_KEY));
    assert_eq!(
        header(g, "x-amz-firehose-source-arn"),
        Some("arn:aws:firehose:us-east-1:000000000000:deliverystream/firehose-local")
    );
    assert_eq!(
        header(g, "x-amz-firehose-common-attributes"),
        Some(r#"{"commonAttributes":{"env":"test","team":"iot"}}"#)
    );
    assert_eq!(header(g, "content-encoding"), None);
    let id = header(g, "x-amz-firehose-request-id").unwrap();
    assert_eq!(id.len(), 36, "a GUID: {id}");
    let body = g.body.as_object().unwrap();
    assert_eq!(
        body.keys().collect::<Vec<_>>(),
        ["requestId", "timestamp", "records"]
    );
    assert_eq!(body["requestId"], id);
    let ts = body["timestamp"].as_i64().expect("integer ms timestamp");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!((now - 60_000..=now).contains(&ts), "timestamp {ts}");
    let records = decoded_records(&g.body);
    let got_set: HashSet<Vec<u8>> = records.iter().cloned().collect();
    assert_eq!(records.len(), sent.len());
    assert_eq!(got_set, sent.iter().cloned().collect());
    fh.start_kill().unwrap();
}

// With a buffer interval of 0 s Firehose sends what has gathered, not the records the buffer
// happened to take before its deadline came up: the records that wait while the first
// request is answered (slowly) go out together, every record once, where they went in several
// requests, cut wherever the channel's reads yielded to the expired deadline.
#[tokio::test(flavor = "multi_thread")]
async fn a_zero_buffer_interval_sends_what_has_gathered() {
    let kin = KinesisServer::start();
    let stream = unique_name("fhzero");
    kin.create_stream(&stream, 1).await;
    let sent = put_records(&kin, &stream, 5_000).await;
    let (url, state) = receiver(vec![Reply::Slow]).await;
    let mut fh = spawn_firehose(&kin, &stream, &url, &["--buffer-interval", "0s"]);
    wait_for_records(&state, sent.len()).await;
    assert_received_once(&state, sent, "each record once").await;
    let got = state.lock().unwrap().got.clone();
    let sizes: Vec<usize> = got.iter().map(|g| decoded_records(&g.body).len()).collect();
    // The first request takes what was read before it; the rest waited for its answer.
    assert!(sizes.len() <= 2, "requests of {sizes:?} records");
    fh.start_kill().unwrap();
}

// --gzip compresses the whole body and says so in Content-Encoding.
#[tokio::test(flavor = "multi_thread")]
async fn gzip_compresses_the_body() {
    let kin = KinesisServer::start();
    let stream = unique_name("fhgz");
    kin.create_stream(&stream, 1).await;
    let sent = put_records(&kin, &stream, 3).await;
    let (url, state) = receiver(vec![]).await;
    let mut fh = spawn_firehose(&kin, &stream, &url, &["--gzip"]);
    let got = wait_for_requests(&state, 1, Duration::from_secs(30)).await;
    assert_eq!(header(&got[0], "content-encoding"), Some("gzip"));
    assert_eq!(decoded_records(&got[0].body), sent);
    fh.start_kill().unwrap();
}

// An endpoint answering 500 for a while: retries 1 s, 2 s, 4 s apart (+-15 %), always with the
// same request id and body, then delivers, and sends nothing more.
#[tokio::test(flavor = "multi_thread")]
async fn retries_500s_with_backoff_and_the_same_request_id() {
    let kin = KinesisServer::start();
    let stream = unique_name("fh500");
    kin.create_stream(&stream, 1).await;
    let sent = put_records(&kin, &stream, 4).await;
    let (url, state) = receiver(vec![
        Reply::Status(500),
        Reply::Status(500),
        Reply::Status(503),
    ])
    .await;
    let mut fh = spawn_firehose(&kin, &stream, &url, &["--retry-seconds", "60"]);
    let got = wait_for_requests(&state, 4, Duration::from_secs(40)).await;
    assert_backoff(&got[..4]);
    let id = header(&got[0], "x-amz-firehose-request-id")
        .unwrap()
        .to_owned();
    for g in &got[..4] {
        assert_eq!(header(g, "x-amz-firehose-request-id"), Some(id.as_str()));
        assert_eq!(g.body, got[0].body, "the retried body is the same");
    }
    assert_eq!(decoded_records(&got[3].body), sent);
    // Past when a fifth would come (the next back-off, 8 s +-15 %), had the 200 not been taken.
    tokio::time::sleep(Duration::from_millis(9800)).await;
    assert_eq!(
        state.lock().unwrap().got.len(),
        4,
        "nothing sent after the 200"
    );
    fh.start_kill().unwrap();
}

// A 200 that is not JSON, or names another requestId, is a failure: retried like a 500.
#[tokio::test(flavor = "multi_thread")]
async fn invalid_200_responses_are_failures() {
    let kin = KinesisServer::start();
    let stream = unique_name("fhbad");
    kin.create_stream(&stream, 1).await;
    put_records(&kin, &stream, 2).await;
    let (url, state) = receiver(vec![Reply::NotJson, Reply::WrongRequestId]).await;
    let mut fh = spawn_firehose(&kin, &stream, &url, &["--retry-seconds", "60"]);
    let got = wait_for_requests(&state, 3, Duration::from_secs(30)).await;
    assert_backoff(&got[..3]);
    let ids: HashSet<&str> = got
        .iter()
        .map(|g| header(g, "x-amz-firehose-request-id").unwrap())
        .collect();
    assert_eq!(ids.len(), 1);
    // Past when a fourth would come (the next back-off, 4 s +-15 %), had the third failed.
    tokio::time::sleep(Duration::from_millis(5200)).await;
    assert_eq!(state.lock().unwrap().got.len(), 3);
    fh.start_kill().unwrap();
}

// A 200 with a valid body sent chunked, without the Content-Length the spec requires, is a
// failure: retried with the same request id, and accepted once the answer has one.
#[tokio::test(flavor = "multi_thread")]
async fn a_200_without_content_length_is_a_failure() {
    let kin = KinesisServer::start();
    let stream = unique_name("fhchunked");
    kin.create_stream(&stream, 1).await;
    let sent = put_records(&kin, &stream, 2).await;
    let (url, state) = receiver(vec![Reply::Chunked, Reply::Chunked]).await;
    let mut fh = spawn_firehose(&kin, &stream, &url, &["--retry-seconds", "60"]);
    let got = wait_for_requests(&state, 3, Duration::from_secs(30)).await;
    assert_backoff(&got[..3]);
    for g in &got[..3] {
        assert_eq!(decoded_records(&g.body), sent);
        assert_eq!(g.body["requestId"], got[0].body["requestId"]);
    }
    // Past when a fourth would come (the next back-off, 4 s +-15 %), had the third failed.
    tokio::time::sleep(Duration::from_millis(5200)).await;
    assert_eq!(state.lock().unwrap().got.len(), 3, "accepted the third");
    fh.start_kill().unwrap();
}

// Endpoint down past --retry-seconds: the batch lands in --error-dir as Firehose error records.
#[tokio::test(flavor = "multi_thread")]
async fn endpoint_down_past_the_retry_duration_writes_the_error_dir() {
    let kin = KinesisServer::start();
    let stream = unique_name("fhdown");
    kin.create_stream(&stream, 1).await;
    let sent = put_records(&kin, &stream, 3).await;
    let errors = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{}/", free_port()); // nothing listens here
    let started = Instant::now();
    let mut fh = spawn_firehose(
        &kin,
        &stream,
        &url,
        &[
            "--retry-seconds",
            "4",
            "--error-dir",
            errors.path().to_str().unwrap(),
        ],
    );
    let (files, lines) = error_output(errors.path(), started).await;
    // 1 s buffer, then attempts at 0, 1 and 3 s (waits 1 + 2 s, each +-15 %: at most 3.45 s,
    // inside the 4 s retry duration); the next would wait 4 s more and pass it.
    assert!(started.elapsed() >= Duration::from_secs(3));
    assert_eq!(files.len(), 1);
    let rel = files[0]
        .strip_prefix(errors.path())
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(rel.starts_with("http-endpoint-failed/"), "{rel}");
    assert_eq!(lines.len(), sent.len());
    for (line, data) in lines.iter().zip(&sent) {
        assert_eq!(line["attemptsMade"], 3);
        assert_eq!(line["errorCode"], "HttpEndpoint.ConnectionFailed");
        assert!(!line["errorMessage"].as_str().unwrap().is_empty());
        let arrival = line["arrivalTimestamp"].as_i64().unwrap();
        let ending = line["attemptEndingTimestamp"].as_i64().unwrap();
        assert!(arrival <= ending && ending - arrival >= 2500, "{line}");
        let raw = base64::engine::general_purpose::STANDARD
            .decode(line["rawData"].as_str().unwrap())
            .unwrap();
        assert_eq!(&raw, data);
    }
    fh.start_kill().unwrap();
}

// An endpoint that starts its answer and never finishes it has not answered in time: the
// batch's error records say HttpEndpoint.RequestTimeout, as for one that sends nothing, not
// that the connection was reset.
#[tokio::test(flavor = "multi_thread")]
async fn an_answer_that_never_ends_is_a_request_timeout() {
    let kin = KinesisServer::start();
    let stream = unique_name("fhstall");
    kin.create_stream(&stream, 1).await;
    let sent = put_records(&kin, &stream, 2).await;
    let errors = tempfile::tempdir().unwrap();
    let (url, state) = receiver(vec![Reply::Stalled; 20]).await;
    let mut fh = spawn_firehose(
        &kin,
        &stream,
        &url,
        &[
            "--request-timeout-seconds",
            "1",
            "--retry-seconds",
            "2",
            "--error-dir",
            errors.path().to_str().unwrap(),
        ],
    );
    let (_, lines) = error_output(errors.path(), Instant::now()).await;
    assert!(!state.lock().unwrap().got.is_empty());
    assert_eq!(lines.len(), sent.len(), "{lines:?}");
    for line in &lines {
        assert_eq!(line["errorCode"], "HttpEndpoint.RequestTimeout", "{line}");
    }
    fh.start_kill().unwrap();
}

// A record with more than Firehose's 1,024,000 bytes of data (Kinesis takes up to 1 MiB) is not
// delivered: it goes to --error-dir as an error record; one of exactly 1,024,000 bytes and the
// small ones around it are delivered.
#[tokio::test(flavor = "multi_thread")]
async fn a_record_over_1000_kib_goes_to_the_error_dir() {
    let kin = KinesisServer::start();
    let stream = unique_name("fhbig");
    kin.create_stream(&stream, 1).await;
    let small = br#"{"_id":"000000000000000000000001"}"#.to_vec();
    let limit = vec![b'a'; 1_024_000];
    let over = vec![b'b'; 1_024_001];
    kin.put_in_order(&stream, &[&small, &limit, &over, &small])
        .await;
    let errors = tempfile::tempdir().unwrap();
    let (url, state) = receiver(vec![]).await;
    let addr = metrics_common::free_addr();
    let args = [
        "--error-dir",
        errors.path().to_str().unwrap(),
        "--metrics-listen",
        &addr,
    ];
    let mut fh = spawn_firehose(&kin, &stream, &url, &args);
    wait_for_records(&state, 3).await;
    // Counted, so that FirehoseLocalDeliveriesGivenUp sees it.
    let m = metrics_common::scrape(&addr);
    assert_eq!(
        m.get("firehose_local_deliveries_total{outcome=\"too_large\"}"),
        Some(&1.0),
        "{m:?}"
    );
    let files = files_under(errors.path());
    assert_eq!(files.len(), 1, "{files:?}");
    let text = std::fs::read_to_string(&files[0]).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["errorCode"], "Kinesis.RecordTooLarge");
    assert_eq!(lines[0]["attemptsMade"], 0);
    let raw = base64::engine::general_purpose::STANDARD
        .decode(lines[0]["rawData"].as_str().unwrap())
        .unwrap();
    assert_eq!(raw, over);
    assert_received_once(
        &state,
        vec![small.clone(), limit, small],
        "all but the one over",
    )
    .await;
    fh.start_kill().unwrap();
}

// While the endpoint fails, the readers hold no more record data than their read-ahead budget
// (twice the size hint, at least 16 MiB), where the channel alone took 20,000 records (20 GiB
// of records near 1 MiB): with 24 records of 900 kB in the stream, reading stops at the budget
// and says so (at debug); once the endpoint takes them, every one arrives, once.
#[tokio::test(flavor = "multi_thread")]
async fn reading_waits_for_the_endpoint_past_the_read_ahead_budget() {
    use tokio::io::AsyncBufReadExt;
    let kin = KinesisServer::start();
    let stream = unique_name("fhbudget");
    kin.create_stream(&stream, 1).await;
    let sent: Vec<Vec<u8>> = (0..24u8).map(|i| vec![b'a' + i; 900_000]).collect();
    kin.put_in_order(&stream, &sent.iter().collect::<Vec<_>>())
        .await;
    // Failing until the budget is spent.
    let (url, state) = receiver(vec![Reply::Status(500); 10_000]).await;
    let mut fh = firehose_command(&kin, &stream, &url, &["--buffer-mib", "1"])
        .env(
            "RUST_LOG",
            "info,sensehat_monitor::firehose_local::reader=debug",
        )
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(fh.stderr.take().unwrap()).lines();
    let spent = tokio::time::timeout(Duration::from_secs(120), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("the read-ahead budget is spent") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(spent, Ok(true), "no word of the budget within 120 s");
    // The requests answered 500 so far are those before `failed`; every later one is taken.
    let failed = {
        let mut s = state.lock().unwrap();
        let failed = 10_000 - s.script.len();
        s.script.clear();
        failed
    };
    let taken = || {
        let got = state.lock().unwrap().got.clone();
        let mut records: Vec<(usize, u8)> = got[failed..]
            .iter()
            .flat_map(|g| decoded_records(&g.body))
            .map(|r| (r.len(), r[0]))
            .collect();
        records.sort();
        records
    };
    // Its back-off may have grown to a minute by now.
    common::wait_until(Duration::from_secs(180), "every record", || {
        let have = taken().len();
        async move { have >= 24 }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let want: Vec<(usize, u8)> = sent.iter().map(|r| (r.len(), r[0])).collect();
    assert_eq!(taken(), want, "each record once");
    fh.start_kill().unwrap();
}

// A record over 1,024,000 bytes goes to the error output once, even when a stop cuts short the
// delivery of the records before it and a restart reads them again. The three records are put
// before the start, so that they are read together; the endpoint fails until the stop. After the
// restart the small ones are delivered once, and the error directory holds one file, the big
// record's.
#[tokio::test(flavor = "multi_thread")]
async fn a_record_set_aside_is_not_written_again_after_a_restart() {
    let kin = KinesisServer::start();
    let stream = unique_name("fhbigstop");
    kin.create_stream(&stream, 1).await;
    let small = br#"{"_id":"000000000000000000000001"}"#.to_vec();
    let over = vec![b'b'; 1_024_001];
    let small2 = br#"{"_id":"000000000000000000000002"}"#.to_vec();
    kin.put_in_order(&stream, &[&small, &over, &small2]).await;
    let dir = tempfile::tempdir().unwrap();
    let cp = dir.path().join("checkpoint.json");
    let errors = tempfile::tempdir().unwrap();
    let error_dir = ["--error-dir", errors.path().to_str().unwrap()];
    let (url, state) = receiver(vec![Reply::Status(500); 100]).await;
    let first = [&error_dir[..], &["--from-start", "--retry-seconds", "300"]].concat();
    let fh = spawn_with_checkpoint(&kin, &stream, &url, &cp, &first);
    wait_for_requests(&state, 1, Duration::from_secs(30)).await;
    common::signal_pid(fh.id().unwrap(), 15);
    let status = tokio::time::timeout(Duration::from_secs(30), fh.wait_with_output())
        .await
        .expect("stops within the final wait")
        .unwrap()
        .status;
    assert!(status.success(), "{status:?}");

    let (url, state) = receiver(Vec::new()).await;
    let fh = spawn_with_checkpoint(&kin, &stream, &url, &cp, &error_dir);
    wait_for_records(&state, 2).await;
    assert_received_once(&state, vec![small, small2], "the small records, once").await;
    let files = files_under(errors.path());
    assert_eq!(files.len(), 1, "the big record written out once: {files:?}");
    let text = std::fs::read_to_string(&files[0]).unwrap();
    let line: Value = serde_json::from_str(text.trim_end()).unwrap();
    let raw = base64::engine::general_purpose::STANDARD
        .decode(line["rawData"].as_str().unwrap())
        .unwrap();
    assert_eq!(raw, over);
    stop(fh).await;
}

// The body never passes Firehose's 64 MiB, whatever the size hint: 52 records of 1 MB are
// 52 MB of data, under the 64 MiB hint, but 69 MB once in base64; the buffer goes out in two
// requests instead of one the endpoint would have to refuse with 413 (and the records would be
// lost). The buffer is fed directly (a Kinesis emulator takes a minute over this much data);
// delivery is real HTTP to the receiver.
#[tokio::test(flavor = "multi_thread")]
async fn bodies_stay_within_64_mib_whatever_the_size_hint() {
    use sensehat_monitor::firehose_local::delivery::{Delivery, DeliveryConfig};
    use sensehat_monitor::firehose_local::reader::Arrived;
    use sensehat_monitor::firehose_local::{run_buffer, Buffering};
    let (url, state) = receiver(Vec::new()).await;
    let delivery = Delivery::new(DeliveryConfig {
        destination_url: url,
        access_key: None,
        source_arn: "arn:aws:firehose:us-east-1:000000000000:deliverystream/t".into(),
        common_attributes: Vec::new(),
        gzip: false,
        retry_duration: Duration::from_secs(10),
        request_timeout: Duration::from_secs(60),
        error_dir: None,
        ca_cert: None,
    })
    .unwrap();
    let sent: Vec<Vec<u8>> = (0..52u8).map(|i| vec![b'a' + i % 26; 1_000_000]).collect();
    let (tx, rx) = tokio::sync::mpsc::channel(sent.len());
    for (i, data) in sent.iter().enumerate() {
        tx.send(
            Arrived {
                data: data.clone(),
                share: None,
                arrival_ms: 0,
                shard: Arc::from("shardId-000000000000"),
                sequence: i.to_string(),
            }
            .into(),
        )
        .await
        .unwrap();
    }
    drop(tx);
    let buffering = Buffering {
        bytes: 64 * 1024 * 1024,
        interval: Duration::from_secs(60),
    };
    run_buffer(rx, &delivery, buffering, None, std::future::pending()).await;
    let got = state.lock().unwrap().got.clone();
    assert_eq!(got.len(), 2, "requests");
    for g in &got {
        assert!(
            g.body_len <= 64 * 1024 * 1024,
            "a body of {} bytes",
            g.body_len
        );
    }
    assert_eq!(received(&state), sent);
}

// SIGTERM while the endpoint keeps failing: firehose-local stops within its final wait (10 s),
// not after the retry duration (300 s here), without moving its checkpoint past the batch, and
// the restart delivers that batch.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_while_the_endpoint_fails_stops_within_seconds() {
    let kin = KinesisServer::start();
    let stream = unique_name("fhstop");
    kin.create_stream(&stream, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let cp = dir.path().join("checkpoint.json");
    let mut script = vec![Reply::Valid];
    script.extend(std::iter::repeat_n(Reply::Status(500), 100));
    let (url, state) = receiver(script).await;
    let fh = spawn_with_checkpoint(
        &kin,
        &stream,
        &url,
        &cp,
        &["--from-start", "--retry-seconds", "300"],
    );
    put_records_from(&kin, &stream, 0, 2).await;
    wait_for_requests(&state, 1, Duration::from_secs(30)).await;
    let failing = put_records_from(&kin, &stream, 2, 3).await;
    wait_for_requests(&state, 2, Duration::from_secs(30)).await;
    common::signal_pid(fh.id().unwrap(), 15);
    let status = tokio::time::timeout(Duration::from_secs(30), fh.wait_with_output())
        .await
        .expect("stops within the final wait, not after the retry duration")
        .unwrap()
        .status;
    assert!(status.success(), "{status:?}");

    let (url, state) = receiver(Vec::new()).await;
    let fh = spawn_with_checkpoint(&kin, &stream, &url, &cp, &[]);
    wait_for_records(&state, failing.len()).await;
    assert_received_once(&state, failing, "the batch cut short, after the restart").await;
    stop(fh).await;
}

// A 413 is permanent: not retried, not written to the error output, logged as lost data.
#[tokio::test(flavor = "multi_thread")]
async fn status_413_is_logged_as_data_loss() {
    let kin = KinesisServer::start();
    let stream = unique_name("fh413");
    kin.create_stream(&stream, 1).await;
    put_records(&kin, &stream, 2).await;
    let errors = tempfile::tempdir().unwrap();
    let (url, state) = receiver(vec![Reply::Status(413)]).await;
    let fh = spawn_firehose(
        &kin,
        &stream,
        &url,
        &["--error-dir", errors.path().to_str().unwrap()],
    );
    wait_for_requests(&state, 1, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(state.lock().unwrap().got.len(), 1, "a 413 is not retried");
    assert!(files_under(errors.path()).is_empty());
    common::signal_pid(fh.id().unwrap(), 15);
    let out = fh.wait_with_output().await.unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("413") && log.contains("LOST"), "{log}");
    assert!(!log.contains(ACCESS_KEY), "the access key is never logged");
}

/// firehose-local on `stream` at the Kinesis `endpoint`, from LATEST (no `--from-start`),
/// delivering to `url` every second unless `extra` options say otherwise.
fn spawn_from_latest_with(
    endpoint: &str,
    stream: &str,
    url: &str,
    extra: &[&str],
) -> tokio::process::Child {
    from_latest_command(endpoint, stream, url, extra)
        .spawn()
        .unwrap()
}

/// [`spawn_from_latest_with`] without options, returned once each of the stream's `shards` has its LATEST iterator
/// (so that a record put from then on is read), as its debug log says.
async fn started_from_latest(
    endpoint: &str,
    stream: &str,
    url: &str,
    shards: usize,
) -> tokio::process::Child {
    let log = tempfile::NamedTempFile::new().unwrap();
    let child = from_latest_command(endpoint, stream, url, &[])
        .env(
            "RUST_LOG",
            "info,sensehat_monitor::firehose_local::reader=debug",
        )
        .stderr(log.reopen().unwrap())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(60), "LATEST iterators", || async {
        let text = std::fs::read_to_string(log.path()).unwrap_or_default();
        text.matches("reading from LATEST").count() >= shards
    })
    .await;
    child
}

fn from_latest_command(
    endpoint: &str,
    stream: &str,
    url: &str,
    extra: &[&str],
) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_firehose-local"));
    c.args(["--stream-name", stream, "--kinesis-endpoint-url", endpoint])
        .args(["--destination-url", url])
        .args(if extra.contains(&"--buffer-seconds") {
            &[][..]
        } else {
            &["--buffer-seconds", "1"][..]
        })
        .args(extra)
        .envs(AWS_ENV)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    c
}

// Without --from-start it reads from LATEST, as a new Firehose stream does: records put before
// it started are not delivered, records put after are.
#[tokio::test(flavor = "multi_thread")]
async fn reads_from_latest_by_default() {
    let kin = KinesisServer::start();
    let stream = unique_name("fhlatest");
    kin.create_stream(&stream, 2).await;
    put_records_from(&kin, &stream, 1000, 3).await;
    let (url, state) = receiver(vec![]).await;
    let mut fh = started_from_latest(&kin.endpoint, &stream, &url, 2).await;
    let after = put_records(&kin, &stream, 5).await;
    wait_for_requests(&state, 1, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let got: HashSet<Vec<u8>> = state
        .lock()
        .unwrap()
        .got
        .iter()
        .flat_map(|g| decoded_records(&g.body))
        .collect();
    assert_eq!(
        got,
        after.into_iter().collect(),
        "only the records put after the start"
    );
    fh.start_kill().unwrap();
}

/// How [`kinesis_that_fails_reads`] fails: the calls (by the end of their X-Amz-Target) and
/// the answer.
#[derive(Clone, Copy)]
struct Failing {
    calls: &'static [&'static str],
    status: u16,
    body: &'static str,
}

/// GetRecords fails as a server error.
const INTERNAL_FAILURE: Failing = Failing {
    calls: &[".GetRecords"],
    status: 500,
    body: r#"{"__type":"InternalFailure","message":"failing on cue"}"#,
};

/// GetRecords is throttled (the shard's read limit).
const THROTTLED: Failing = Failing {
    calls: &[".GetRecords"],
    status: 400,
    body: r#"{"__type":"ProvisionedThroughputExceededException","message":"throttled, on cue"}"#,
};

/// GetRecords and GetShardIterator say the shard does not exist, while ListShards lists it.
const NOT_FOUND: Failing = Failing {
    calls: &[".GetRecords", ".GetShardIterator"],
    status: 400,
    body: r#"{"__type":"ResourceNotFoundException","message":"not found, on cue"}"#,
};

/// A pass-through to the emulator at `upstream` that answers as `failing` says while `fail` is
/// set, counting those answers in `failed`: the emulator cannot fail on cue. It also counts the
/// GetShardIterator calls it passes on, in `iterators`.
struct FailingKinesis {
    url: String,
    fail: Arc<std::sync::atomic::AtomicBool>,
    failed: Arc<std::sync::atomic::AtomicUsize>,
    iterators: Arc<std::sync::atomic::AtomicUsize>,
}

async fn kinesis_that_fails_reads(upstream: String, failing: Failing) -> FailingKinesis {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let fail = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicUsize::new(0));
    let iterators = Arc::new(AtomicUsize::new(0));
    let (f, n, its) = (fail.clone(), failed.clone(), iterators.clone());
    let http = reqwest::Client::new();
    let pass = move |uri: axum::http::Uri, headers: HeaderMap, body: Bytes| {
        let (f, n, its) = (f.clone(), n.clone(), its.clone());
        let (http, upstream) = (http.clone(), upstream.clone());
        async move {
            let target = headers
                .get("x-amz-target")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if f.load(Ordering::SeqCst) && failing.calls.iter().any(|c| target.ends_with(c)) {
                n.fetch_add(1, Ordering::SeqCst);
                let status = StatusCode::from_u16(failing.status).unwrap();
                return (status, failing.body).into_response();
            }
            if target.ends_with(".GetShardIterator") {
                its.fetch_add(1, Ordering::SeqCst);
            }
            let mut req = http.post(format!("{upstream}{uri}")).body(body);
            for (name, value) in &headers {
                if name != "host" && name != "content-length" {
                    req = req.header(name.as_str(), value.as_bytes());
                }
            }
            let answer = req.send().await.unwrap();
            let status = StatusCode::from_u16(answer.status().as_u16()).unwrap();
            let kind = answer
                .headers()
                .get("content-type")
                .map(|v| v.as_bytes().to_vec())
                .unwrap_or_default();
            let body = answer.bytes().await.unwrap();
            (status, [("content-type", kind)], body).into_response()
        }
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, axum::Router::new().fallback(pass)).await;
    });
    FailingKinesis {
        url,
        fail,
        failed,
        iterators,
    }
}

// A shard read from LATEST that fails GetRecords before it has read a record carries on from
// where it began, not from a new LATEST: the records put while the reads failed are delivered.
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_read_from_latest_skips_nothing() {
    // The SDK tries a call three times before the reader sees the error: twice that many.
    reads_fail_then_recover(INTERNAL_FAILURE, 6, Duration::ZERO, "while reads failed").await;
}

// A shard that answers ResourceNotFoundException while ListShards still lists it is not taken
// for gone (only a listing without it says that): reading carries on once it answers again, and
// the records put meanwhile are delivered.
#[tokio::test(flavor = "multi_thread")]
async fn a_shard_not_found_but_still_listed_is_read_on() {
    // Then GetShardIterator, about once a second, for a few seconds more.
    let more = Duration::from_secs(3);
    reads_fail_then_recover(NOT_FOUND, 1, more, "while the shard was not found").await;
}

// A throttled read keeps its iterator (good for five minutes) and reads on with it, where it
// took a new one after each throttle: one more call against the shard's limits each time.
#[tokio::test(flavor = "multi_thread")]
async fn a_throttled_read_keeps_its_iterator() {
    let iterators = reads_fail_then_recover(THROTTLED, 6, Duration::ZERO, "while throttled").await;
    assert_eq!(iterators, 1, "GetShardIterator calls");
}

/// A shard read from LATEST whose reads answer as `failing` says, from once its iterator is
/// taken until `failures` such answers and `then` more time have passed, while 4 records are
/// put: each of them must be delivered once. How many GetShardIterator calls were made.
async fn reads_fail_then_recover(
    failing: Failing,
    failures: usize,
    then: Duration,
    what: &str,
) -> usize {
    use std::sync::atomic::Ordering;
    let kin = KinesisServer::start();
    let stream = unique_name("fhfail");
    kin.create_stream(&stream, 1).await;
    let FailingKinesis {
        url: kinesis,
        fail,
        failed,
        iterators,
    } = kinesis_that_fails_reads(kin.endpoint.clone(), failing).await;
    let (url, state) = receiver(vec![]).await;
    let mut fh = started_from_latest(&kinesis, &stream, &url, 1).await;
    fail.store(true, Ordering::SeqCst);
    let put = put_records(&kin, &stream, 4).await;
    wait_until(Duration::from_secs(60), "reads to fail", || {
        let n = failed.load(Ordering::SeqCst);
        async move { n >= failures }
    })
    .await;
    tokio::time::sleep(then).await;
    fail.store(false, Ordering::SeqCst);
    wait_for_records(&state, put.len()).await;
    assert_received_once(&state, put, &format!("the records put {what}")).await;
    fh.start_kill().unwrap();
    iterators.load(Ordering::SeqCst)
}

/// Every record received so far, in arrival order.
fn received(state: &Shared) -> Vec<Vec<u8>> {
    let got = state.lock().unwrap().got.clone();
    got.iter().flat_map(|g| decoded_records(&g.body)).collect()
}

/// firehose-local from LATEST with `--checkpoint-file checkpoint`, buffering 1 s unless `extra`
/// says otherwise.
fn spawn_with_checkpoint(
    kin: &KinesisServer,
    stream: &str,
    url: &str,
    checkpoint: &Path,
    extra: &[&str],
) -> tokio::process::Child {
    let checkpoint = checkpoint.to_str().expect("a UTF-8 temporary path");
    let options = [&["--checkpoint-file", checkpoint][..], extra].concat();
    spawn_from_latest_with(&kin.endpoint, stream, url, &options)
}

/// SIGTERM, then expect a clean exit.
async fn stop(mut fh: tokio::process::Child) {
    common::signal_pid(fh.id().unwrap(), 15);
    assert!(fh.wait().await.unwrap().success());
}

/// Give repeats time to arrive, then compare what was received with `expected`, as sets with
/// their counts (each record once).
async fn assert_received_once(state: &Shared, mut expected: Vec<Vec<u8>>, what: &str) {
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut got = received(state);
    got.sort();
    expected.sort();
    assert_eq!(got, expected, "{what}");
}

async fn wait_for_records(state: &Shared, n: usize) {
    common::wait_until(Duration::from_secs(30), &format!("{n} records"), || {
        let have = received(state).len();
        async move { have >= n }
    })
    .await;
}

// With --checkpoint-file a restart carries on after the last record delivered: records put
// while it was stopped (SIGTERM) are delivered after the restart, and records it had read but
// not yet delivered when it was killed (SIGKILL) are read and delivered again. Nothing put
// before the very first start (LATEST) and nothing delivered before is delivered twice.
#[tokio::test(flavor = "multi_thread")]
async fn a_checkpoint_file_carries_on_after_a_restart_or_a_kill() {
    let kin = KinesisServer::start();
    let stream = unique_name("fhcheckpoint");
    kin.create_stream(&stream, 2).await;
    put_records_from(&kin, &stream, 1000, 3).await;
    // The checkpoint's "since" is taken at the first start; keep these clearly before it.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (url, state) = receiver(vec![]).await;
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = dir.path().join("positions.json");
    let start = |extra: &[&str]| spawn_with_checkpoint(&kin, &stream, &url, &checkpoint, extra);
    let fh = start(&[]);
    // Time to list the shards and take LATEST iterators.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(checkpoint.exists(), "written at start, before any delivery");
    let mut expected = put_records_from(&kin, &stream, 0, 4).await;
    wait_for_records(&state, 4).await;
    stop(fh).await;

    // Stopped: these must not be skipped.
    expected.extend(put_records_from(&kin, &stream, 100, 5).await);
    let fh = start(&[]);
    wait_for_records(&state, 9).await;
    stop(fh).await;

    // Read into a 60 s buffer, then killed before delivering them.
    let mut fh = start(&["--buffer-seconds", "60"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    expected.extend(put_records_from(&kin, &stream, 200, 6).await);
    tokio::time::sleep(Duration::from_secs(2)).await;
    fh.start_kill().unwrap();
    fh.wait().await.unwrap();
    assert_eq!(
        received(&state).len(),
        9,
        "nothing delivered by the killed run"
    );

    let mut fh = start(&[]);
    wait_for_records(&state, 15).await;
    assert_received_once(
        &state,
        expected,
        "each record once, none from before the first start",
    )
    .await;
    fh.start_kill().unwrap();
}

// A checkpoint file of another stream is refused with a message that says what to do, at
// once: before Kinesis is asked anything (here it is not even reachable).
#[tokio::test(flavor = "multi_thread")]
async fn a_checkpoint_file_of_another_stream_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = dir.path().join("positions.json");
    std::fs::write(
        &checkpoint,
        r#"{"stream":"someother","since_ms":null,"shards":{}}"#,
    )
    .unwrap();
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_firehose-local"))
        .args(["--stream-name", "realm"])
        .args(["--kinesis-endpoint-url", &nowhere])
        .args(["--destination-url", "http://127.0.0.1:9/"])
        .arg("--checkpoint-file")
        .arg(&checkpoint)
        .envs(AWS_ENV)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("refused without waiting for Kinesis")
        .unwrap();
    assert!(!out.status.success());
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("someother") && log.contains("its own --checkpoint-file"),
        "{log}"
    );
}

// Positions saved for a stream that was then deleted and created again under the same name
// (kinesis-local restarted, say) are not applied to the new one: it is read whole.
#[tokio::test(flavor = "multi_thread")]
async fn a_checkpoint_of_a_stream_created_again_is_dropped() {
    let kin = KinesisServer::start();
    let stream = unique_name("fhrecreated");
    kin.create_stream(&stream, 1).await;
    let (url, state) = receiver(vec![]).await;
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = dir.path().join("positions.json");
    let fh = spawn_with_checkpoint(&kin, &stream, &url, &checkpoint, &[]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut expected = put_records_from(&kin, &stream, 0, 20).await;
    wait_for_records(&state, 20).await;
    stop(fh).await;

    kin.client()
        .delete_stream()
        .stream_name(&stream)
        .send()
        .await
        .unwrap();
    kin.create_stream(&stream, 1).await;
    expected.extend(put_records_from(&kin, &stream, 500, 3).await);
    let mut fh = spawn_with_checkpoint(&kin, &stream, &url, &checkpoint, &[]);
    wait_for_records(&state, 23).await;
    assert_received_once(&state, expected, "the new stream read whole").await;
    fh.start_kill().unwrap();
}

// When a batch is given up and the error output cannot be written, the records exist nowhere
// else: the checkpoint stays put, and a restart delivers them.
#[tokio::test(flavor = "multi_thread")]
async fn records_the_error_output_could_not_keep_are_read_again_after_a_restart() {
    let kin = KinesisServer::start();
    let stream = unique_name("fhfrozen");
    kin.create_stream(&stream, 1).await;
    let (failing_url, failing) = receiver(vec![Reply::Status(500); 100]).await;
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = dir.path().join("positions.json");
    // No directory can be made under /dev/null.
    let broken = ["--retry-seconds", "0", "--error-dir", "/dev/null/errors"];
    let fh = spawn_with_checkpoint(&kin, &stream, &failing_url, &checkpoint, &broken);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let expected = put_records_from(&kin, &stream, 0, 4).await;
    wait_for_records(&failing, 4).await;
    // Let the given-up batch finish (no retries) before stopping.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop(fh).await;

    let (url, state) = receiver(vec![]).await;
    let mut fh = spawn_with_checkpoint(&kin, &stream, &url, &checkpoint, &[]);
    wait_for_records(&state, 4).await;
    assert_received_once(&state, expected, "the given-up batch, read again").await;
    fh.start_kill().unwrap();
}

/// `firehose-local [args] check-config` with the test AWS settings, `env` set (an empty value
/// unsets the variable), and neither Kinesis nor the destination running: (exit code, stdout,
/// stderr).
async fn check_config(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_firehose-local"));
    cmd.args(["--stream-name", "checked"])
        .args(["--kinesis-endpoint-url", "http://127.0.0.1:9"])
        .args(args)
        .arg("check-config")
        .envs(AWS_ENV)
        .kill_on_drop(true);
    for (name, value) in env {
        if value.is_empty() {
            cmd.env_remove(name);
        } else {
            cmd.env(name, value);
        }
    }
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .expect("check-config answers without servers")
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// check-config accepts a good configuration without Kinesis or the destination, says what it
// found (never the access key), and reads the old spellings and their variables.
#[tokio::test(flavor = "multi_thread")]
async fn check_config_accepts_a_good_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = dir.path().join("positions.json");
    let (code, out, err) = check_config(
        &[
            "--destination-url",
            "https://127.0.0.1:9/",
            "--buffer-interval",
            "90s",
            "--retry-seconds",
            "60",
            "--checkpoint-file",
            checkpoint.to_str().unwrap(),
        ],
        &[
            ("FIREHOSE_REQUEST_TIMEOUT_SECONDS", "30"),
            ("FIREHOSE_ACCESS_KEY", "sekrit-key"),
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("checked in us-east-1"), "{out}");
    assert!(
        out.contains("or 90s; retry duration: 60s; request timeout: 30s"),
        "{out}"
    );
    assert!(out.contains("not there yet"), "{out}");
    assert!(out.contains("access key: set"), "{out}");
    assert!(!out.contains("sekrit") && !err.contains("sekrit"));
}

// check-config refuses, with exit 2 and the reason, a buffer interval past Firehose's 900 s, a
// destination that is no URL, a checkpoint file of another stream and a missing AWS region.
#[tokio::test(flavor = "multi_thread")]
async fn check_config_refuses_a_bad_configuration() {
    let url = ["--destination-url", "http://127.0.0.1:9/"];
    let (code, _, err) =
        check_config(&[&url[..], &["--buffer-interval", "16m"]].concat(), &[]).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("at most 900s"), "{err}");

    let (code, _, err) = check_config(&["--destination-url", "127.0.0.1:9"], &[]).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--destination-url"), "{err}");
    // A password in the URL is refused, and not repeated.
    let (code, _, err) = check_config(
        &["--destination-url", "https://u:pa55word@127.0.0.1:9/"],
        &[],
    )
    .await;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("access key") && !err.contains("pa55word"),
        "{err}"
    );
    // Started without check-config, it refuses the same URLs before reading the stream.
    for url in ["127.0.0.1:9", "not a url"] {
        let out = tokio::time::timeout(
            Duration::from_secs(30),
            tokio::process::Command::new(env!("CARGO_BIN_EXE_firehose-local"))
                .args(["--stream-name", "checked"])
                .args(["--kinesis-endpoint-url", "http://127.0.0.1:9"])
                .args(["--destination-url", url])
                .envs(AWS_ENV)
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("firehose-local refuses the URL at once")
        .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{url}: {err}");
        assert!(err.contains("--destination-url"), "{url}: {err}");
    }

    let dir = tempfile::tempdir().unwrap();
    let checkpoint = dir.path().join("positions.json");
    std::fs::write(
        &checkpoint,
        r#"{"stream":"someother","since_ms":null,"shards":{}}"#,
    )
    .unwrap();
    let file = ["--checkpoint-file", checkpoint.to_str().unwrap()];
    let (code, _, err) = check_config(&[&url[..], &file[..]].concat(), &[]).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("someother"), "{err}");

    let nowhere = dir.path().join("none");
    let nowhere = nowhere.to_str().unwrap();
    let no_region = [
        ("AWS_REGION", ""),
        ("AWS_DEFAULT_REGION", ""),
        ("AWS_CONFIG_FILE", nowhere),
        ("AWS_SHARED_CREDENTIALS_FILE", nowhere),
    ];
    let (code, _, err) = check_config(&url, &no_region).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no AWS region is set"), "{err}");
}

/// The sum of a counter's series over its labels.
fn total(m: &std::collections::BTreeMap<String, f64>, name: &str) -> f64 {
    m.iter()
        .filter(|(k, _)| k.split('{').next() == Some(name))
        .map(|(_, v)| v)
        .sum()
}

// The metrics count what went through: records read per shard (one series per shard, no
// more), one batch delivered after one retry, the checkpoint's age; promtool finds nothing
// wrong. /readyz is 200 while the stream answers and the endpoint takes deliveries, 503 with a
// one-line reason while deliveries fail, and names Kinesis once the emulator is gone.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_what_was_delivered_and_readyz_follows_the_endpoint_and_kinesis() {
    use metrics_common::{free_addr, get, lint, scrape, value, wait_serving};
    let kin = KinesisServer::start();
    let stream = unique_name("fhmetrics");
    kin.create_stream(&stream, 2).await;
    let (url, state) = receiver(vec![Reply::Status(500)]).await;
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = dir.path().join("checkpoint.json");
    let addr = free_addr();
    let mut fh = spawn_firehose(
        &kin,
        &stream,
        &url,
        &[
            "--retry-duration",
            "60s",
            "--checkpoint-file",
            checkpoint.to_str().unwrap(),
            "--metrics-listen",
            &addr,
        ],
    );
    wait_serving(&addr).await;
    assert_eq!(get(&addr, "/healthz").unwrap().status, 200);
    let sent = put_records(&kin, &stream, 6).await;
    wait_for_requests(&state, 2, Duration::from_secs(30)).await;
    wait_until(
        Duration::from_secs(10),
        "the delivery to be counted",
        || {
            let a = addr.clone();
            async move {
                scrape(&a).get("firehose_local_deliveries_total{outcome=\"delivered\"}")
                    == Some(&1.0)
            }
        },
    )
    .await;
    let m = scrape(&addr);
    assert_eq!(
        total(&m, "firehose_local_records_read_total"),
        sent.len() as f64
    );
    let shards: Vec<&String> = m
        .keys()
        .filter(|k| k.starts_with("firehose_local_records_read_total{shard="))
        .collect();
    assert_eq!(shards.len(), 2, "one series per shard: {shards:?}");
    assert_eq!(
        value(&m, "firehose_local_deliveries_total{outcome=\"failed\"}"),
        0.0
    );
    assert_eq!(
        value(&m, "firehose_local_deliveries_total{outcome=\"rejected\"}"),
        0.0
    );
    assert_eq!(value(&m, "firehose_local_retries_total"), 1.0);
    let age = value(&m, "firehose_local_checkpoint_age_seconds");
    assert!((0.0..30.0).contains(&age), "checkpoint age {age}");
    lint(&get(&addr, "/metrics").unwrap().body);
    let ready = get(&addr, "/readyz").unwrap();
    assert_eq!((ready.status, ready.body.as_str()), (200, "ready\n"));

    // The endpoint fails every delivery from now on.
    state
        .lock()
        .unwrap()
        .script
        .extend([Reply::Status(500); 100]);
    put_records_from(&kin, &stream, 100, 2).await;
    wait_until(Duration::from_secs(30), "/readyz to say not ready", || {
        let a = addr.clone();
        async move { get(&a, "/readyz").is_ok_and(|r| r.status == 503) }
    })
    .await;
    let not_ready = get(&addr, "/readyz").unwrap();
    assert!(
        not_ready
            .body
            .starts_with("not ready: the last delivery attempt failed"),
        "{}",
        not_ready.body
    );
    assert_eq!(not_ready.body.lines().count(), 1, "{}", not_ready.body);

    if std::env::var_os("KINESIS_TEST_ENDPOINT").is_none() {
        drop(kin);
        wait_until(Duration::from_secs(30), "/readyz to name Kinesis", || {
            let a = addr.clone();
            async move { get(&a, "/readyz").is_ok_and(|r| r.body.contains("Kinesis")) }
        })
        .await;
        let not_ready = get(&addr, "/readyz").unwrap();
        assert_eq!(not_ready.status, 503);
        assert_eq!(not_ready.body.lines().count(), 1, "{}", not_ready.body);
    }
    fh.start_kill().unwrap();
}

// A metrics address already in use stops firehose-local at start with exit 2, naming the
// option, before it reaches Kinesis.
#[tokio::test(flavor = "multi_thread")]
async fn a_metrics_address_in_use_is_refused_at_start() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_firehose-local"))
        .args([
            "--stream-name",
            "s",
            "--destination-url",
            "http://127.0.0.1:1/",
        ])
        .args(["--metrics-listen", &addr])
        .envs(AWS_ENV)
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--metrics-listen"), "{err}");
}

// A real Prometheus scrapes the forwarder and firehose-local while reports go from MongoDB
// through Kinesis to an endpoint: both targets are up, and each program's counters arrive.
#[tokio::test(flavor = "multi_thread")]
async fn prometheus_scrapes_the_forwarder_and_firehose_local() {
    use metrics_common::{free_addr, wait_serving, Prometheus};
    let mongo = common::MongoServer::start();
    let kin = KinesisServer::start();
    let (db, stream) = (unique_name("fhprom"), unique_name("fhprom"));
    kin.create_stream(&stream, 1).await;
    let (url, state) = receiver(vec![]).await;
    let (fwd_addr, fh_addr) = (free_addr(), free_addr());
    let mut fwd = tokio::process::Command::new(env!("CARGO_BIN_EXE_kinesis-forwarder"))
        .args(["--database", &db, "--stream-name", &stream])
        .args(["--kinesis-endpoint-url", &kin.endpoint])
        .args(["--metrics-listen", &fwd_addr])
        .env("MONGODB_CONNECTION_STRING", &mongo.uri)
        .envs(AWS_ENV)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut fh = spawn_firehose(&kin, &stream, &url, &["--metrics-listen", &fh_addr]);
    wait_serving(&fwd_addr).await;
    wait_serving(&fh_addr).await;
    let prometheus = Prometheus::start(&[
        ("kinesis_forwarder", &fwd_addr),
        ("firehose_local", &fh_addr),
    ]);
    prometheus
        .wait_for("up{job=\"kinesis_forwarder\"}", |v| v == 1.0)
        .await;
    prometheus
        .wait_for("up{job=\"firehose_local\"}", |v| v == 1.0)
        .await;
    // The forwarder's change stream is open once it has stored a position.
    let client = mongo.client().await;
    let state_coll = client
        .database(&db)
        .collection::<mongodb::bson::Document>("reports_forwarder_state");
    wait_until(Duration::from_secs(30), "the forwarder's position", || {
        let c = state_coll.clone();
        async move { c.count_documents(mongodb::bson::doc! {}).await.unwrap_or(0) > 0 }
    })
    .await;
    let reports: Vec<mongodb::bson::Document> = (0..3)
        .map(|i| mongodb::bson::doc! { "nodeName": format!("pi-{i}"), "n": i })
        .collect();
    client
        .database(&db)
        .collection::<mongodb::bson::Document>("reports")
        .insert_many(reports)
        .await
        .unwrap();
    wait_for_records(&state, 3).await;
    prometheus
        .wait_for("kinesis_forwarder_records_put_total", |v| v == 3.0)
        .await;
    prometheus
        .wait_for("sum(firehose_local_records_read_total)", |v| v == 3.0)
        .await;
    prometheus
        .wait_for(
            "firehose_local_deliveries_total{outcome=\"delivered\"}",
            |v| v >= 1.0,
        )
        .await;
    fwd.start_kill().unwrap();
    fh.start_kill().unwrap();
}
