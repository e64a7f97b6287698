//! Forwarder benchmark against the real servers (SecantusDB, kinesis-local):
//!
//! 1. Throughput: events per second from `insert_many` into the watched collection to PutRecords
//!    acknowledged, against a plain loop of PutRecords of the same records (500 per call) into
//!    the same emulator in the same run. Target: ratio >= 0.8.
//! 2. End-to-end latency: insert into `reports` -> kinesis-forwarder -> Kinesis -> firehose-local
//!    (`--buffer-interval 1s`) -> arrival at an HTTP receiver (a stand-in for firehose-endpoint,
//!    answering valid Firehose responses): median and p99.
//!
//! Run: `cargo bench --features forwarder --bench forwarder` (BENCH_EVENTS, BENCH_LATENCY_DOCS
//! change the sizes). Needs `bash .ci/kinesis.sh install` and SecantusDB in .venv-test.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/common/kinesis.rs"]
mod kinesis;

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use base64::Engine as _;
use common::{unique_name, MongoServer};
use kinesis::{KinesisServer, AWS_ENV};
use mongodb::bson::{doc, Document};
use sensehat_monitor::forwarder::aws::AwsKinesis;
use sensehat_monitor::forwarder::batch::{self, Entry, Limits};
use sensehat_monitor::forwarder::format::Format;
use sensehat_monitor::forwarder::target::{EntryResults, PutError, Target};
use sensehat_monitor::forwarder::{self, Options};
use sensehat_monitor::report::{Acceleration, Reading, Report};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn docs(n: usize) -> Vec<Document> {
    (0..n)
        .map(|i| {
            let reading = Reading {
                humidity_rh: 40.0 + (i % 100) as f64 * 0.1,
                temperature_celsius: 21.5,
                pressure_hpa: 1013.25,
                acceleration: Acceleration {
                    x_g: 0.01,
                    y_g: -0.02,
                    z_g: 0.998,
                },
            };
            Report::new(
                &format!("pi-{}", i % 4),
                reading,
                1_764_096_600_000 + i as i64,
            )
            .to_document()
        })
        .collect()
}

/// Counts entries Kinesis accepted, and notes when the count reached the target.
struct Counting {
    inner: AwsKinesis,
    accepted: AtomicUsize,
    target: usize,
    done_at: Mutex<Option<Instant>>,
}

impl Target for Counting {
    const LIMITS: Limits = AwsKinesis::LIMITS;
    const API: &'static str = AwsKinesis::API;

    async fn put(&self, stream: &str, entries: &[Entry]) -> Result<EntryResults, PutError> {
        let results = self.inner.put(stream, entries).await?;
        let ok = results.iter().filter(|r| r.is_none()).count();
        if self.accepted.fetch_add(ok, Ordering::SeqCst) + ok >= self.target {
            self.done_at
                .lock()
                .unwrap()
                .get_or_insert_with(Instant::now);
        }
        Ok(results)
    }
}

async fn wait_for_state(client: &mongodb::Client, db: &str, coll: &str, stream: &str) {
    let state = client
        .database(db)
        .collection::<Document>(&format!("{coll}_forwarder_state"));
    for _ in 0..300 {
        if state
            .find_one(doc! { "_id": stream })
            .await
            .ok()
            .flatten()
            .is_some()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the forwarder never stored a position");
}

async fn throughput(mongo: &MongoServer, kin: &KinesisServer, n: usize) {
    let client = mongo.client().await;
    let db = unique_name("bench");
    let documents = docs(n);

    // Baseline: a plain loop of PutRecords, 500 records per call, of the same records; run once
    // to warm the emulator up, then before and after the forwarder, and the faster run counts.
    let entries: Vec<Entry> = documents
        .iter()
        .map(|d| Entry {
            data: Format::Stringify.encode(d),
            partition_key: batch::partition_key(d.get("nodeName")),
        })
        .collect();
    let _warm_up = plain_loop(kin, &entries).await;
    let plain_before = plain_loop(kin, &entries).await;

    // The forwarder: insert -> change stream -> PutRecords acknowledged.
    let stream = unique_name("fwd");
    kin.create_stream(&stream, 4).await;
    let counting = Arc::new(Counting {
        inner: AwsKinesis {
            client: kin.client(),
        },
        accepted: AtomicUsize::new(0),
        target: n,
        done_at: Mutex::new(None),
    });
    let mut opts = Options::new(&stream);
    opts.database = db.clone();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (c2, k2) = (client.clone(), counting.clone());
    let task = tokio::spawn(async move {
        forwarder::run(&c2, &*k2, &opts, async {
            let _ = stop_rx.await;
        })
        .await
    });
    wait_for_state(&client, &db, "reports", &stream).await;
    let reports = client.database(&db).collection::<Document>("reports");
    let t = Instant::now();
    for chunk in documents.chunks(1000) {
        reports.insert_many(chunk).await.unwrap();
    }
    let inserted = t.elapsed().as_secs_f64();
    while counting.done_at.lock().unwrap().is_none() {
        assert!(t.elapsed() < Duration::from_secs(300), "forwarder too slow");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let done = counting.done_at.lock().unwrap().unwrap();
    let fwd_secs = done.duration_since(t).as_secs_f64();
    let fwd_rate = n as f64 / fwd_secs;
    let _ = stop_tx.send(());
    let _ = task.await;
    let plain_after = plain_loop(kin, &entries).await;
    let plain_secs = plain_before.min(plain_after);
    let plain_rate = n as f64 / plain_secs;
    println!("throughput ({n} events, stringify, 4 shards):");
    println!(
        "  plain PutRecords loop:        {plain_rate:>9.0} records/s (best of {plain_before:.2} s before, {plain_after:.2} s after)"
    );
    println!("  forwarder insert -> acked:    {fwd_rate:>9.0} events/s ({fwd_secs:.2} s; inserts took {inserted:.2} s)");
    println!(
        "  ratio forwarder / plain:      {:>9.2} (target >= 0.80)",
        fwd_rate / plain_rate
    );
    client.database(&db).drop().await.unwrap();
}

/// A plain loop of PutRecords (500 per call) into a fresh 4-shard stream; returns seconds.
async fn plain_loop(kin: &KinesisServer, entries: &[Entry]) -> f64 {
    let plain = unique_name("plain");
    kin.create_stream(&plain, 4).await;
    let kc = kin.client();
    let t = Instant::now();
    for chunk in entries.chunks(batch::MAX_RECORDS) {
        let records = chunk
            .iter()
            .map(|e| {
                PutRecordsRequestEntry::builder()
                    .data(Blob::new(e.data.clone()))
                    .partition_key(&e.partition_key)
                    .build()
                    .unwrap()
            })
            .collect();
        let out = kc
            .put_records()
            .stream_name(&plain)
            .set_records(Some(records))
            .send()
            .await
            .unwrap();
        assert_eq!(out.failed_record_count(), Some(0));
    }
    t.elapsed().as_secs_f64()
}

type Arrivals = Arc<Mutex<HashMap<String, Instant>>>;

async fn receive(
    State(arrivals): State<Arrivals>,
    _headers: HeaderMap,
    body: Bytes,
) -> axum::Json<serde_json::Value> {
    let now = Instant::now();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let mut a = arrivals.lock().unwrap();
    for r in v["records"].as_array().into_iter().flatten() {
        let data = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().unwrap_or_default())
            .unwrap_or_default();
        let doc: serde_json::Value = serde_json::from_slice(&data).unwrap_or_default();
        if let Some(id) = doc["_id"].as_str() {
            a.entry(id.to_owned()).or_insert(now);
        }
    }
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    axum::Json(serde_json::json!({ "requestId": v["requestId"], "timestamp": ms }))
}

async fn latency(mongo: &MongoServer, kin: &KinesisServer, n: usize) {
    let client = mongo.client().await;
    let db = unique_name("benchlat");
    let stream = unique_name("lat");
    kin.create_stream(&stream, 2).await;
    let arrivals: Arrivals = Arc::default();
    let app = axum::Router::new()
        .route("/", axum::routing::post(receive))
        .with_state(arrivals.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let mut fwd = tokio::process::Command::new(env!("CARGO_BIN_EXE_kinesis-forwarder"))
        .args([
            "--database",
            &db,
            "--stream-name",
            &stream,
            "--kinesis-endpoint-url",
            &kin.endpoint,
        ])
        .env("MONGODB_CONNECTION_STRING", &mongo.uri)
        .envs(AWS_ENV)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut fh = tokio::process::Command::new(env!("CARGO_BIN_EXE_firehose-local"))
        .args([
            "--stream-name",
            &stream,
            "--kinesis-endpoint-url",
            &kin.endpoint,
        ])
        .args([
            "--destination-url",
            &url,
            "--buffer-interval",
            "1s",
            "--from-start",
        ])
        .envs(AWS_ENV)
        .env("FIREHOSE_ACCESS_KEY", "bench")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_for_state(&client, &db, "reports", &stream).await;
    let reports = client.database(&db).collection::<Document>("reports");
    let mut inserted: Vec<(String, Instant)> = Vec::with_capacity(n);
    for d in docs(n) {
        let id = d.get_object_id("_id").unwrap().to_hex();
        let at = Instant::now();
        reports.insert_one(&d).await.unwrap();
        inserted.push((id, at));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let t = Instant::now();
    while arrivals.lock().unwrap().len() < n {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "not every document arrived"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let a = arrivals.lock().unwrap();
    let mut ms: Vec<f64> = inserted
        .iter()
        .map(|(id, at)| a[id].duration_since(*at).as_secs_f64() * 1000.0)
        .collect();
    ms.sort_by(f64::total_cmp);
    let pct = |p: f64| ms[((ms.len() - 1) as f64 * p).round() as usize];
    println!("end-to-end latency, insert -> HTTP receiver ({n} docs, one every 20 ms, --buffer-interval 1s):");
    println!(
        "  median {:.0} ms, p99 {:.0} ms, min {:.0} ms, max {:.0} ms",
        pct(0.5),
        pct(0.99),
        ms[0],
        ms[ms.len() - 1]
    );
    let _ = fwd.start_kill();
    let _ = fh.start_kill();
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing useful: run only under bench.
    if !std::env::args().any(|a| a == "--bench") {
        println!("run with `cargo bench --features forwarder --bench forwarder`");
        return;
    }
    let mongo = MongoServer::start();
    let kin = KinesisServer::start();
    throughput(&mongo, &kin, env_usize("BENCH_EVENTS", 5000)).await;
    latency(&mongo, &kin, env_usize("BENCH_LATENCY_DOCS", 300)).await;
}
