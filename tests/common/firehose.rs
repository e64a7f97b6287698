//! Helpers of the Firehose endpoint tests (tests/firehose.rs): an endpoint served in-process
//! over a socket in front of a test server, requests built the way Firehose builds them, and
//! the checks of Firehose's response rules.
#![allow(dead_code)]

use std::io::Write;
use std::time::Duration;

use base64::Engine as _;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::HeaderMap;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mongodb::bson::{doc, oid::ObjectId, Document};
use sensehat_monitor::firehose::decode::DecodeOptions;
use sensehat_monitor::firehose::server::{
    AccessKeys, EndpointConfig, BODY_TIMEOUT, HEADER_TIMEOUT, LIMITS,
};
use sensehat_monitor::firehose::{app, serve, AppState, Store, UpsertMethod};
use sensehat_monitor::listener::Limits;

use crate::common::{unique_name, MongoServer};

/// The access key the test endpoints accept.
pub const KEY: &str = "test-key-0123456789-0123456789-0123";

/// How a test endpoint is set up.
pub struct Opts {
    pub keys: Vec<&'static str>,
    pub max_body_mib: usize,
    pub parse_dates: Vec<String>,
    pub method: UpsertMethod,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    /// The connection string, when not the server's (a proxy in front of it).
    pub uri: Option<String>,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            keys: vec![KEY],
            max_body_mib: 64,
            parse_dates: Vec::new(),
            method: UpsertMethod::Auto,
            header_timeout: HEADER_TIMEOUT,
            body_timeout: BODY_TIMEOUT,
            uri: None,
        }
    }
}

/// An endpoint served in-process, stopped when dropped.
pub struct Endpoint {
    pub url: String,
    pub db: mongodb::Database,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

impl Endpoint {
    /// The collection deliveries go to.
    pub fn coll(&self) -> mongodb::Collection<Document> {
        self.db.collection("firehose")
    }
    /// The dead-letter collection.
    pub fn rejected(&self) -> mongodb::Collection<Document> {
        self.db.collection("firehose_rejected")
    }
}

/// A URI whose server selection gives up after 2 s, so an outage answers quickly.
pub fn quick_uri(server: &MongoServer) -> String {
    let sep = if server.uri.contains('?') { '&' } else { '?' };
    format!("{}{sep}serverSelectionTimeoutMS=2000", server.uri)
}

/// Serve an endpoint writing to a database of its own on `server`.
pub async fn start(server: &MongoServer, opts: Opts) -> Endpoint {
    let db_name = unique_name("fh");
    let config = EndpointConfig {
        path: "/".into(),
        keys: AccessKeys::new(opts.keys.iter().map(|k| k.as_bytes())),
        max_body_bytes: opts.max_body_mib * 1024 * 1024,
        collection: "firehose".into(),
        decode: DecodeOptions {
            parse_dates: opts.parse_dates,
        },
        body_timeout: opts.body_timeout,
    };
    let uri = opts.uri.unwrap_or_else(|| quick_uri(server));
    let store = Store::new(&uri, &db_name).with_method(opts.method);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(
        listener,
        app(AppState::new(config, store)),
        None,
        None,
        Limits {
            header_timeout: opts.header_timeout,
            ..LIMITS
        },
        async {
            let _ = rx.await;
        },
    ));
    Endpoint {
        url: format!("http://{addr}"),
        db: server.client().await.database(&db_name),
        stop: Some(tx),
    }
}

/// A response as received.
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

/// One request over a fresh connection.
pub async fn send(method: &str, url: &str, headers: &[(&str, String)], body: Vec<u8>) -> Reply {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut req = hyper::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let resp = client
        .request(req.body(Full::new(Bytes::from(body))).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    Reply {
        status,
        headers,
        body,
    }
}

/// Request headers, in order.
pub type Headers = Vec<(&'static str, String)>;

/// The headers Firehose sends.
pub fn firehose_headers(request_id: &str, key: Option<&str>, gzip: bool) -> Headers {
    let mut h = vec![
        ("x-amz-firehose-protocol-version", "1.0".to_owned()),
        ("x-amz-firehose-request-id", request_id.to_owned()),
        (
            "x-amz-firehose-source-arn",
            "arn:aws:firehose:eu-west-1:123456789012:deliverystream/realm".to_owned(),
        ),
        ("content-type", "application/json".to_owned()),
    ];
    if let Some(k) = key {
        h.push(("x-amz-firehose-access-key", k.to_owned()));
    }
    if gzip {
        h.push(("content-encoding", "gzip".to_owned()));
    }
    h
}

/// The body Firehose sends: each record's bytes base64-encoded.
pub fn firehose_body(request_id: &str, records: &[Vec<u8>]) -> Vec<u8> {
    let recs: Vec<serde_json::Value> = records
        .iter()
        .map(|r| serde_json::json!({ "data": base64::engine::general_purpose::STANDARD.encode(r) }))
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "requestId": request_id,
        "timestamp": 1_764_096_600_000i64,
        "records": recs,
    }))
    .unwrap()
}

/// `data` gzip-compressed.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// POST `records` with the right key, as Firehose would.
pub async fn deliver(ep: &Endpoint, request_id: &str, records: &[Vec<u8>], gz: bool) -> Reply {
    let body = firehose_body(request_id, records);
    let body = if gz { gzip(&body) } else { body };
    send(
        "POST",
        &format!("{}/", ep.url),
        &firehose_headers(request_id, Some(KEY), gz),
        body,
    )
    .await
}

/// A sensor report as the original producer's JSON.stringify wrote it.
pub fn report(id: ObjectId, i: usize) -> Vec<u8> {
    format!(
        r#"{{"_id":"{id}","nodeName":"pi-{n}","humidity":{h},"temperature":{t},"pressure":1013.25,"isMoving":false,"acceleration":{{"x":0.01,"y":-0.02,"z":0.998}},"recordedAt":"2026-11-25T18:50:00.123Z"}}"#,
        n = i % 7,
        h = 40.0 + (i % 100) as f64 / 10.0,
        t = 20.0 + (i % 50) as f64 / 8.0,
    )
    .into_bytes()
}

/// `n` reports with fresh ids.
pub fn reports(n: usize) -> (Vec<ObjectId>, Vec<Vec<u8>>) {
    let ids: Vec<ObjectId> = (0..n).map(|_| ObjectId::new()).collect();
    let recs = ids
        .iter()
        .enumerate()
        .map(|(i, id)| report(*id, i))
        .collect();
    (ids, recs)
}

/// Checks the Firehose response rules field by field; returns errorMessage when there is one.
pub fn check_shape(r: &Reply, status: u16, request_id: &str) -> Option<String> {
    assert_eq!(
        r.status,
        status,
        "body: {}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.headers["content-type"], "application/json");
    let len: usize = r.headers["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(len, r.body.len());
    assert!(r.headers.get("content-encoding").is_none());
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let obj = v.as_object().unwrap();
    assert_eq!(obj["requestId"], request_id);
    let ts = obj["timestamp"]
        .as_i64()
        .expect("timestamp is an integer number");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!((now - ts).abs() < 60_000, "timestamp {ts} is not now");
    if status == 200 {
        assert_eq!(obj.len(), 2, "{v}");
        None
    } else {
        assert_eq!(obj.len(), 3, "{v}");
        let m = obj["errorMessage"].as_str().unwrap().to_owned();
        assert!(!m.is_empty() && m.len() <= 8192);
        Some(m)
    }
}

/// How many documents `c` holds.
pub async fn count(c: &mongodb::Collection<Document>) -> u64 {
    c.count_documents(doc! {}).await.unwrap()
}

/// How many stored documents have this `_id`.
pub async fn count_id(ep: &Endpoint, id: ObjectId) -> u64 {
    ep.coll().count_documents(doc! { "_id": id }).await.unwrap()
}
