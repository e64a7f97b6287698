//! Forwarder benchmark against the real servers (SecantusDB, kinesis-local):
//!
//! 1. Throughput: records per second from `insert_many` into the watched collection to
//!    PutRecords acknowledged, for the forwarder and for a bare loop that reads the same change
//!    stream and puts 500-record batches (target: forwarder >= 0.9 of the bare loop), with each
//!    half of the bare loop alone (reading the change stream; PutRecords of the same records) to
//!    say which of the two bounds it. The loops take turns, `BENCH_ROUNDS` times, in one run.
//! 2. End-to-end latency: insert into `reports` -> kinesis-forwarder -> Kinesis -> firehose-local
//!    (`--buffer-interval 1s`) -> arrival at an HTTP receiver (a stand-in for firehose-endpoint,
//!    answering valid Firehose responses): median and p99.
//!
//! Run: `cargo bench --features forwarder --bench forwarder` (BENCH_EVENTS, BENCH_ROUNDS,
//! BENCH_LATENCY_DOCS change the sizes). Needs `bash .ci/kinesis.sh install` and SecantusDB in .venv-test.

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
use sensehat_monitor::report::{Acceleration, MovingRule, Reading, Report};

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
                MovingRule::Axis,
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

/// Insert `documents` into `reports` of `db` in chunks of 1,000, as a fleet's agents would in
/// bulk; returns when the inserts began and how long they took.
fn insert_all(
    client: &mongodb::Client,
    db: &str,
    documents: &[Document],
) -> (Instant, tokio::task::JoinHandle<f64>) {
    let reports = client.database(db).collection::<Document>("reports");
    let documents = documents.to_vec();
    let t = Instant::now();
    let task = tokio::spawn(async move {
        for chunk in documents.chunks(1000) {
            reports.insert_many(chunk).await.unwrap();
        }
        t.elapsed().as_secs_f64()
    });
    (t, task)
}

/// What one run of a loop took: seconds from the first insert to the last record done, and the
/// inserts' own seconds.
struct Run {
    secs: f64,
    inserts: f64,
}

/// The forwarder: insert -> change stream -> PutRecords acknowledged, in a fresh database.
async fn forwarder_run(
    client: &mongodb::Client,
    kin: &KinesisServer,
    documents: &[Document],
) -> Run {
    let n = documents.len();
    let db = unique_name("bench");
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
    wait_for_state(client, &db, "reports", &stream).await;
    let (t, inserts) = insert_all(client, &db, documents);
    while counting.done_at.lock().unwrap().is_none() {
        assert!(t.elapsed() < Duration::from_secs(300), "forwarder too slow");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let done = counting.done_at.lock().unwrap().unwrap();
    let _ = stop_tx.send(());
    let _ = task.await;
    let inserts = inserts.await.unwrap();
    client.database(&db).drop().await.unwrap();
    delete_stream(kin, &stream).await;
    Run {
        secs: done.duration_since(t).as_secs_f64(),
        inserts,
    }
}

/// The bare loop the forwarder is measured against: the same change stream read, each document encoded the same way, and PutRecords of 500 records
/// at a time, one after another, with nothing else (no linger, no position stored, no metrics).
/// With `put` false it only reads and encodes: the change stream's own ceiling.
async fn bare_run(
    client: &mongodb::Client,
    kin: &KinesisServer,
    documents: &[Document],
    put: bool,
) -> Run {
    let n = documents.len();
    let db = unique_name("bare");
    let stream = unique_name("bare");
    if put {
        kin.create_stream(&stream, 4).await;
    }
    let kc = kin.client();
    let reports = client.database(&db).collection::<Document>("reports");
    let mut events = reports.watch().await.unwrap();
    let (t, inserts) = insert_all(client, &db, documents);
    let mut batch: Vec<Entry> = Vec::with_capacity(batch::MAX_RECORDS);
    let mut seen = 0;
    while seen < n {
        // `next_if_any` is one getMore at most; an empty one just asks again.
        let Some(event) = events.next_if_any().await.unwrap() else {
            continue;
        };
        let document = event.full_document.unwrap();
        batch.push(Entry {
            data: Format::Stringify.encode(&document),
            partition_key: batch::partition_key(document.get("nodeName")),
        });
        seen += 1;
        if batch.len() == batch::MAX_RECORDS || seen == n {
            let entries = std::mem::take(&mut batch);
            if put {
                put_records(&kc, &stream, &entries).await;
            }
        }
    }
    let secs = t.elapsed().as_secs_f64();
    let inserts = inserts.await.unwrap();
    client.database(&db).drop().await.unwrap();
    if put {
        delete_stream(kin, &stream).await;
    }
    Run { secs, inserts }
}

/// One PutRecords call of `entries`, all of which must be accepted.
async fn put_records(kc: &aws_sdk_kinesis::Client, stream: &str, entries: &[Entry]) {
    let records = entries
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
        .stream_name(stream)
        .set_records(Some(records))
        .send()
        .await
        .unwrap();
    assert_eq!(out.failed_record_count(), Some(0));
}

/// Delete a stream the bench made: the emulator holds at most 50 shards.
async fn delete_stream(kin: &KinesisServer, stream: &str) {
    kin.client()
        .delete_stream()
        .stream_name(stream)
        .send()
        .await
        .unwrap();
}

/// The best (shortest) of several runs.
fn best(runs: &[Run]) -> &Run {
    runs.iter()
        .min_by(|a, b| a.secs.total_cmp(&b.secs))
        .expect("at least one round")
}

async fn throughput(mongo: &MongoServer, kin: &KinesisServer, n: usize, rounds: usize) {
    let client = mongo.client().await;
    let documents = docs(n);
    let entries: Vec<Entry> = documents
        .iter()
        .map(|d| Entry {
            data: Format::Stringify.encode(d),
            partition_key: batch::partition_key(d.get("nodeName")),
        })
        .collect();
    // Once to warm the emulator and the server up; then the four loops in turn, `rounds` times,
    // so that a slow moment of this shared machine falls on each alike; the best run counts.
    let _warm_up = plain_loop(kin, &entries).await;
    let _warm_up = bare_run(&client, kin, &documents, true).await;
    let (mut plain, mut read, mut bare, mut fwd) = (vec![], vec![], vec![], vec![]);
    for _ in 0..rounds {
        plain.push(Run {
            secs: plain_loop(kin, &entries).await,
            inserts: 0.0,
        });
        read.push(bare_run(&client, kin, &documents, false).await);
        bare.push(bare_run(&client, kin, &documents, true).await);
        fwd.push(forwarder_run(&client, kin, &documents).await);
    }
    let rate = |r: &Run| n as f64 / r.secs;
    let (plain, read, bare, fwd) = (best(&plain), best(&read), best(&bare), best(&fwd));
    println!("throughput ({n} events inserted in chunks of 1,000, stringify, 4 shards; best of {rounds}):");
    println!(
        "  PutRecords alone (500 a call):       {:>7.0} records/s ({:.2} s)",
        rate(plain),
        plain.secs
    );
    println!(
        "  change stream alone (read, encode):  {:>7.0} events/s ({:.2} s; inserts took {:.2} s)",
        rate(read),
        read.secs,
        read.inserts
    );
    println!(
        "  bare loop (read, put 500 a call):    {:>7.0} records/s ({:.2} s; inserts took {:.2} s)",
        rate(bare),
        bare.secs,
        bare.inserts
    );
    println!(
        "  forwarder insert -> acked:           {:>7.0} records/s ({:.2} s; inserts took {:.2} s)",
        rate(fwd),
        fwd.secs,
        fwd.inserts
    );
    let limit = if rate(read) < rate(plain) {
        "the change stream"
    } else {
        "Kinesis (the emulator)"
    };
    println!("  the bare loop is bound by {limit}: the slower of its two halves");
    println!(
        "  ratio forwarder / bare loop:          {:>6.2} (target >= 0.90)",
        rate(fwd) / rate(bare)
    );
    println!(
        "  ratio forwarder / PutRecords alone:   {:>6.2}",
        rate(fwd) / rate(plain)
    );
}

/// A plain loop of PutRecords (500 per call) into a fresh 4-shard stream; returns seconds.
async fn plain_loop(kin: &KinesisServer, entries: &[Entry]) -> f64 {
    let plain = unique_name("plain");
    kin.create_stream(&plain, 4).await;
    let kc = kin.client();
    let t = Instant::now();
    for chunk in entries.chunks(batch::MAX_RECORDS) {
        put_records(&kc, &plain, chunk).await;
    }
    let secs = t.elapsed().as_secs_f64();
    delete_stream(kin, &plain).await;
    secs
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
    throughput(
        &mongo,
        &kin,
        env_usize("BENCH_EVENTS", 5000),
        env_usize("BENCH_ROUNDS", 3),
    )
    .await;
    latency(&mongo, &kin, env_usize("BENCH_LATENCY_DOCS", 300)).await;
}
