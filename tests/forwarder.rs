//! kinesis-forwarder end to end against real servers: SecantusDB (change streams) and the
//! kinesis-local emulator. Records are read back from the stream with GetRecords; its metrics
//! are scraped over HTTP and parsed by Python's prometheus-client.
#![cfg(feature = "forwarder")]

mod common;
#[path = "common/http_proxy.rs"]
mod http_proxy;
#[path = "common/kinesis.rs"]
mod kinesis;
#[path = "common/metrics.rs"]
mod metrics_common;

use std::collections::{HashMap, HashSet};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use common::{all_reports, run_sim_agent, sim_agent, unique_name, wait_until, MongoServer};
use http_proxy::HttpProxy;
use kinesis::{KinesisServer, AWS_ENV};
use mongodb::bson::{doc, oid::ObjectId, Bson, Document};
use sensehat_monitor::forwarder::aws::AwsKinesis;
use sensehat_monitor::forwarder::batch::{Entry, Limits};
use sensehat_monitor::forwarder::format::{stringify, Format};
use sensehat_monitor::forwarder::target::{EntryResults, PutError, Target};
use sensehat_monitor::forwarder::{self, Options};

fn forwarder_bin() -> &'static str {
    env!("CARGO_BIN_EXE_kinesis-forwarder")
}

/// What every test here starts from: both servers, a fresh database name, a stream with
/// `shards` shards, and a client: `(mongo, kin, db, stream, client)`.
async fn fixture(
    db_prefix: &str,
    stream_prefix: &str,
    shards: i32,
) -> (MongoServer, KinesisServer, String, String, mongodb::Client) {
    let mongo = MongoServer::start();
    let kin = KinesisServer::start();
    let stream = unique_name(stream_prefix);
    kin.create_stream(&stream, shards).await;
    let client = mongo.client().await;
    (mongo, kin, unique_name(db_prefix), stream, client)
}

/// Start the forwarder binary on `db.reports` into `stream`.
fn spawn_forwarder(
    mongo: &MongoServer,
    kin: &KinesisServer,
    db: &str,
    stream: &str,
    extra: &[&str],
) -> tokio::process::Child {
    spawn_forwarder_at(mongo, &kin.endpoint, db, stream, extra, "warn")
}

/// The forwarder with Kinesis at `endpoint` and `RUST_LOG=log`.
fn spawn_forwarder_at(
    mongo: &MongoServer,
    endpoint: &str,
    db: &str,
    stream: &str,
    extra: &[&str],
    log: &str,
) -> tokio::process::Child {
    spawn_forwarder_through(&mongo.uri, endpoint, db, stream, extra, log)
}

/// [`spawn_forwarder_at`] with MongoDB at `uri`.
fn spawn_forwarder_through(
    uri: &str,
    endpoint: &str,
    db: &str,
    stream: &str,
    extra: &[&str],
    log: &str,
) -> tokio::process::Child {
    tokio::process::Command::new(forwarder_bin())
        .args(["--database", db, "--stream-name", stream])
        .args(["--kinesis-endpoint-url", endpoint])
        .args(extra)
        .env("MONGODB_CONNECTION_STRING", uri)
        .envs(AWS_ENV)
        .env("RUST_LOG", log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start kinesis-forwarder")
}

/// Insert `docs` into the watched collection.
async fn insert_reports(client: &mongodb::Client, db: &str, docs: &[Document]) {
    client
        .database(db)
        .collection::<Document>("reports")
        .insert_many(docs)
        .await
        .unwrap();
}

/// Wait until the forwarder has stored a position for `stream` (its change stream is open).
async fn wait_for_position(client: &mongodb::Client, db: &str, stream: &str) {
    wait_for_position_in(client, db, "reports_forwarder_state", stream).await;
}

/// [`wait_for_position`] with the position kept in `db.collection`.
async fn wait_for_position_in(client: &mongodb::Client, db: &str, collection: &str, stream: &str) {
    let state = client.database(db).collection::<Document>(collection);
    wait_until(
        Duration::from_secs(30),
        "the forwarder's first stored position",
        || {
            let state = state.clone();
            async move {
                state
                    .find_one(doc! { "_id": stream })
                    .await
                    .ok()
                    .flatten()
                    .is_some()
            }
        },
    )
    .await;
}

/// The `_id` of a stringify record.
fn stringify_id(data: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(data).expect("record is JSON");
    v["_id"].as_str().expect("_id is a string").to_owned()
}

async fn wait_for_records(kin: &KinesisServer, stream: &str, n: usize) -> Vec<(String, Vec<u8>)> {
    let mut got = Vec::new();
    for _ in 0..300 {
        got = kin.read_all(stream).await;
        if got.len() >= n {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("only {} of {n} records reached the stream", got.len());
}

/// Wait until a record with partition key `key` is on the stream.
async fn wait_for_key(kin: &KinesisServer, stream: &str, key: &str) {
    wait_until(
        Duration::from_secs(30),
        &format!("a record of {key}"),
        || async { kin.read_all(stream).await.iter().any(|r| r.0 == key) },
    )
    .await;
}

fn sample_docs(n: usize) -> Vec<Document> {
    use sensehat_monitor::report::{Acceleration, MovingRule, Reading, Report};
    (0..n)
        .map(|i| {
            let reading = Reading {
                humidity_rh: 40.0 + i as f64 * 0.25,
                temperature_celsius: 21.0,
                pressure_hpa: 1013.25,
                acceleration: Acceleration {
                    x_g: 0.0,
                    y_g: 0.01,
                    z_g: 1.0,
                },
            };
            Report::new(
                &format!("pi-{}", i % 3),
                reading,
                1_764_096_600_000 + i as i64 * 50,
                MovingRule::Axis,
            )
            .to_document()
        })
        .collect()
}

// Every report the agent stores reaches the stream exactly as JSON.stringify of the stored
// document, keyed by nodeName, and the resume token keeps moving while the collection is quiet.
#[tokio::test(flavor = "multi_thread")]
async fn agent_reports_reach_the_stream_as_stringify() {
    let (mongo, kin, db, stream, client) = fixture("fwd", "reports", 2).await;
    let mut fwd = spawn_forwarder(&mongo, &kin, &db, &stream, &[]);
    wait_for_position(&client, &db, &stream).await;

    run_sim_agent(&mongo.uri, &db, 20).await;

    let docs = all_reports(&client, &db).await;
    assert_eq!(docs.len(), 20);
    let records = wait_for_records(&kin, &stream, 20).await;
    let by_id: HashMap<String, &(String, Vec<u8>)> =
        records.iter().map(|r| (stringify_id(&r.1), r)).collect();
    assert_eq!(records.len(), 20, "no record twice");
    for d in &docs {
        let id = d.get_object_id("_id").unwrap().to_hex();
        let (key, data) = by_id
            .get(&id)
            .unwrap_or_else(|| panic!("report {id} missing from the stream"));
        assert_eq!(String::from_utf8(data.clone()).unwrap(), stringify(d));
        assert_eq!(key, d.get_str("nodeName").unwrap());
        let v: serde_json::Value = serde_json::from_slice(data).unwrap();
        let at = d.get_datetime("recordedAt").unwrap().timestamp_millis();
        assert_eq!(
            v["recordedAt"],
            sensehat_monitor::report::iso_millis(at).unwrap()
        );
    }

    // Quiet collection: the post-batch resume token is stored and moves on.
    let state = client
        .database(&db)
        .collection::<Document>("reports_forwarder_state");
    let token = |s: Option<Document>| s.and_then(|d| d.get("resumeToken").cloned());
    let first = token(state.find_one(doc! { "_id": &stream }).await.unwrap());
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let later = token(state.find_one(doc! { "_id": &stream }).await.unwrap());
    assert!(first.is_some() && later.is_some());
    assert_ne!(first, later, "the stored token did not move while idle");

    fwd.start_kill().unwrap();
    client.database(&db).drop().await.unwrap();
}

// --format relaxed and canonical write Extended JSON that parses back into the stored
// document; --partition-key-field _id keys each record by its id.
#[tokio::test(flavor = "multi_thread")]
async fn extended_json_formats_round_trip() {
    let (mongo, kin, db, relaxed, client) = fixture("fwdfmt", "relaxed", 1).await;
    let canonical = unique_name("canonical");
    kin.create_stream(&canonical, 1).await;
    let mut a = spawn_forwarder(
        &mongo,
        &kin,
        &db,
        &relaxed,
        &["--format", "relaxed", "--partition-key-field", "_id"],
    );
    let mut b = spawn_forwarder(
        &mongo,
        &kin,
        &db,
        &canonical,
        &["--format", "canonical", "--partition-key-field", "_id"],
    );
    wait_for_position(&client, &db, &relaxed).await;
    wait_for_position(&client, &db, &canonical).await;

    let docs = sample_docs(12);
    insert_reports(&client, &db, &docs).await;
    for (stream, format) in [(&relaxed, Format::Relaxed), (&canonical, Format::Canonical)] {
        let records = wait_for_records(&kin, stream, docs.len()).await;
        assert_eq!(records.len(), docs.len());
        for (d, (key, data)) in docs.iter().zip(&records) {
            assert_eq!(data, &format.encode(d));
            let v: serde_json::Value = serde_json::from_slice(data).unwrap();
            let back = Bson::try_from(v).unwrap();
            assert_eq!(
                back.as_document().unwrap(),
                d,
                "{format:?} did not round-trip"
            );
            assert_eq!(key, &d.get_object_id("_id").unwrap().to_hex());
        }
    }
    a.start_kill().unwrap();
    b.start_kill().unwrap();
    client.database(&db).drop().await.unwrap();
}

// The forwarder SIGKILLed mid-stream and restarted loses nothing: every report is in the
// stream (duplicates allowed upstream of the endpoint's upsert). It is killed while an agent
// stores a report every 50 ms, and half the reports are stored only after the kill, so the
// restart must resume from the stored position to forward them.
#[tokio::test(flavor = "multi_thread")]
async fn sigkill_mid_stream_loses_nothing() {
    let (mongo, kin, db, stream, client) = fixture("fwdkill", "kill", 2).await;
    let mut fwd = spawn_forwarder(&mongo, &kin, &db, &stream, &[]);
    wait_for_position(&client, &db, &stream).await;

    let spool = tempfile::tempdir().unwrap();
    let mut each_report = sim_agent(&mongo.uri, &db, 40, spool.path());
    each_report.args(["--insert-every", "0"]);
    let mut agent = tokio::process::Command::from(each_report)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_records(&kin, &stream, 15).await;
    fwd.start_kill().unwrap(); // SIGKILL
    fwd.wait().await.unwrap();
    let before = kin.read_all(&stream).await.len();
    assert!(agent.wait().await.unwrap().success());
    run_sim_agent(&mongo.uri, &db, 40).await;
    let docs = all_reports(&client, &db).await;
    assert_eq!(docs.len(), 80);
    assert!(
        before < docs.len(),
        "killed after all {before} records were put: nothing left to resume"
    );
    let mut fwd = spawn_forwarder(&mongo, &kin, &db, &stream, &[]);

    let want: HashSet<String> = docs
        .iter()
        .map(|d| d.get_object_id("_id").unwrap().to_hex())
        .collect();
    let mut got = HashSet::new();
    for _ in 0..300 {
        got = kin
            .read_all(&stream)
            .await
            .iter()
            .map(|r| stringify_id(&r.1))
            .collect();
        if got.is_superset(&want) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let missing: Vec<_> = want.difference(&got).collect();
    assert!(
        missing.is_empty(),
        "lost across SIGKILL (killed after {before} records): {missing:?}"
    );
    fwd.start_kill().unwrap();
    client.database(&db).drop().await.unwrap();
}

/// One PutRecords call as the seam saw it: the entries' data and partition keys, and which of
/// them it failed.
type Call = (Vec<(Vec<u8>, String)>, Vec<bool>);

/// The test seam: the real emulator behind a wrapper that fails every fourth entry the first
/// time it is offered, as Kinesis does when a shard is throttled, and records every call.
struct Throttled {
    inner: AwsKinesis,
    seen: Mutex<HashSet<Vec<u8>>>,
    calls: Mutex<Vec<Call>>,
}

impl Target for Throttled {
    const LIMITS: Limits = AwsKinesis::LIMITS;
    const API: &'static str = AwsKinesis::API;

    async fn put(&self, stream: &str, entries: &[Entry]) -> Result<EntryResults, PutError> {
        let fail: Vec<bool> = {
            let mut seen = self.seen.lock().unwrap();
            entries
                .iter()
                .enumerate()
                .map(|(i, e)| seen.insert(e.data.clone()) && i % 4 == 1)
                .collect()
        };
        let pass: Vec<Entry> = entries
            .iter()
            .zip(&fail)
            .filter(|(_, f)| !**f)
            .map(|(e, _)| e.clone())
            .collect();
        let mut inner = if pass.is_empty() {
            Vec::new()
        } else {
            self.inner.put(stream, &pass).await?
        }
        .into_iter();
        let results = fail
            .iter()
            .map(|f| {
                if *f {
                    Some(
                        "ProvisionedThroughputExceededException: Rate exceeded for shard"
                            .to_owned(),
                    )
                } else {
                    inner.next().flatten()
                }
            })
            .collect();
        self.calls.lock().unwrap().push((
            entries
                .iter()
                .map(|e| (e.data.clone(), e.partition_key.clone()))
                .collect(),
            fail,
        ));
        Ok(results)
    }
}

// Partial PutRecords failures (through the seam, since the emulator cannot throttle): each
// failed entry is resent, with every later entry of its partition key (accepted or not), so
// that in the stream each key's newest copies come in the order the documents were inserted.
#[tokio::test(flavor = "multi_thread")]
async fn partial_failures_resend_and_keep_each_keys_order() {
    let (_mongo, kin, db, stream, client) = fixture("fwdpart", "partial", 1).await;
    let seam = Throttled {
        inner: AwsKinesis {
            client: kin.client(),
        },
        seen: Mutex::new(HashSet::new()),
        calls: Mutex::new(Vec::new()),
    };
    let mut opts = Options::new(&stream);
    opts.database = db.clone();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let fwd_client = client.clone();
    let seam = std::sync::Arc::new(seam);
    let run_seam = seam.clone();
    let task = tokio::spawn(async move {
        forwarder::run(&fwd_client, &*run_seam, &opts, async {
            let _ = stop_rx.await;
        })
        .await
    });
    wait_for_position(&client, &db, &stream).await;

    let docs = sample_docs(40);
    insert_reports(&client, &db, &docs).await;
    // Every document, not 40 records: resends alone can make 40 while later events are unread.
    wait_until(
        Duration::from_secs(30),
        "every document on the stream",
        || {
            let (kin, stream) = (&kin, &stream);
            async move {
                let ids: HashSet<String> = kin
                    .read_all(stream)
                    .await
                    .iter()
                    .map(|r| stringify_id(&r.1))
                    .collect();
                ids.len() == 40
            }
        },
    )
    .await;
    stop_tx.send(()).unwrap();
    task.await.unwrap().unwrap();
    let records = kin.read_all(&stream).await;
    client.database(&db).drop().await.unwrap();

    // What each resend held: the failed entries and the later ones of a failed entry's key.
    let calls = seam.calls.lock().unwrap().clone();
    let mut resends = 0;
    let mut resent_accepted = 0;
    for (i, (entries, fail)) in calls.iter().enumerate() {
        if !fail.contains(&true) {
            continue;
        }
        let mut blocked = HashSet::new();
        let mut expected = Vec::new();
        for ((data, key), failed) in entries.iter().zip(fail) {
            if *failed {
                blocked.insert(key.clone());
            } else if !blocked.contains(key) {
                continue;
            } else {
                resent_accepted += 1;
            }
            expected.push(data.clone());
        }
        let next: Vec<Vec<u8>> = calls
            .get(i + 1)
            .expect("a resend follows a partial failure")
            .0
            .iter()
            .map(|(d, _)| d.clone())
            .collect();
        assert_eq!(
            next, expected,
            "the resend holds the failed entries and the later ones of their keys"
        );
        resends += 1;
    }
    assert!(resends > 0, "the seam failed nothing");
    assert!(
        resent_accepted > 0,
        "no accepted entry followed a failed one of its key: the test proves nothing"
    );
    // Every document reached the stream; copies beyond one are exactly the accepted resends.
    let ids: Vec<String> = records.iter().map(|r| stringify_id(&r.1)).collect();
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), docs.len());
    assert_eq!(records.len(), docs.len() + resent_accepted);
    // Replayed in stream order, keeping the last copy of each, every key's documents come in
    // insert order: an upsert by _id ends with the newest.
    let inserted: Vec<String> = docs
        .iter()
        .map(|d| d.get_object_id("_id").unwrap().to_hex())
        .collect();
    for key in ["pi-0", "pi-1", "pi-2"] {
        let mut last: Vec<String> = Vec::new();
        for (k, data) in &records {
            if k == key {
                let id = stringify_id(data);
                last.retain(|x| *x != id);
                last.push(id);
            }
        }
        let want: Vec<String> = inserted
            .iter()
            .zip(&docs)
            .filter(|(_, d)| d.get_str("nodeName").unwrap() == key)
            .map(|(id, _)| id.clone())
            .collect();
        assert_eq!(last, want, "partition key {key} out of order");
    }
}

// A document too large for a Kinesis record, or for Firehose to deliver, goes to the
// dead-letter collection with the reason; the others are forwarded. Read again after a restart
// from an older position, it is not kept twice.
#[tokio::test(flavor = "multi_thread")]
async fn oversize_documents_go_to_the_dead_letter_collection() {
    let (mongo, kin, db, stream, client) = fixture("fwddlq", "dlq", 1).await;
    let mut fwd = spawn_forwarder(&mongo, &kin, &db, &stream, &[]);
    wait_for_position(&client, &db, &stream).await;
    let state = client
        .database(&db)
        .collection::<Document>("reports_forwarder_state");
    let before = state.find_one(doc! {}).await.unwrap().unwrap();
    let big_id = ObjectId::new();
    let firehose_big_id = ObjectId::new();
    let reports = client.database(&db).collection::<Document>("reports");
    reports
        .insert_one(doc! { "_id": big_id, "nodeName": "pi", "blob": "x".repeat(1_100_000) })
        .await
        .unwrap();
    // Under Kinesis's 1 MiB, over Firehose's 1,024,000 bytes of data.
    reports
        .insert_one(
            doc! { "_id": firehose_big_id, "nodeName": "pi", "blob": "x".repeat(1_030_000) },
        )
        .await
        .unwrap();
    let small = sample_docs(1).remove(0);
    reports.insert_one(&small).await.unwrap();

    let records = wait_for_records(&kin, &stream, 1).await;
    assert_eq!(records.len(), 1);
    assert_eq!(
        stringify_id(&records[0].1),
        small.get_object_id("_id").unwrap().to_hex()
    );
    let dlq = client
        .database(&db)
        .collection::<Document>("reports_forwarder_deadletter");
    let all_dead = || async {
        let mut cursor = dlq.find(doc! {}).await.unwrap();
        let mut docs = Vec::new();
        while cursor.advance().await.unwrap() {
            docs.push(cursor.deserialize_current().unwrap());
        }
        docs
    };
    let mut dead = Vec::new();
    for _ in 0..100 {
        dead = all_dead().await;
        if dead.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(dead.len(), 2, "{dead:?}");
    let reason = |id: ObjectId| {
        let d = dead
            .iter()
            .find(|d| d.get_object_id("documentId").ok() == Some(id))
            .expect("a dead-letter document for each");
        assert_eq!(
            d.get_document("document")
                .unwrap()
                .get_object_id("_id")
                .unwrap(),
            id
        );
        d.get_str("reason").unwrap().to_owned()
    };
    assert!(reason(big_id).contains("over the Kinesis limit"));
    assert!(reason(firehose_big_id).contains("over the Firehose limit"));

    // Back to the position before them: both events are read again, and kept once.
    wait_until(
        Duration::from_secs(10),
        "the position past the batch",
        || {
            let state = state.clone();
            let before = before.clone();
            async move {
                let now = state.find_one(doc! {}).await.unwrap().unwrap();
                now.get("resumeToken") != before.get("resumeToken")
            }
        },
    )
    .await;
    fwd.start_kill().unwrap();
    fwd.wait().await.unwrap();
    state
        .replace_one(doc! { "_id": &stream }, &before)
        .await
        .unwrap();
    let mut fwd = spawn_forwarder(&mongo, &kin, &db, &stream, &[]);
    wait_for_records(&kin, &stream, 2).await;
    assert_eq!(all_dead().await.len(), 2, "dead-lettered again");
    fwd.start_kill().unwrap();
    client.database(&db).drop().await.unwrap();
}

/// Stop the forwarder with SIGTERM (it puts its batch and stores its position) and wait for it.
async fn stop_forwarder(fwd: tokio::process::Child) {
    stop_forwarder_within(fwd, Duration::from_secs(30)).await;
}

/// Stop the forwarder with SIGTERM, check that it exits 0 within `within` (not only when
/// killed), and return its log.
async fn stop_forwarder_within(fwd: tokio::process::Child, within: Duration) -> String {
    common::signal_pid(fwd.id().unwrap(), 15);
    let out = tokio::time::timeout(within, fwd.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("the forwarder did not stop within {within:?} of SIGTERM"))
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{:?}: {log}", out.status);
    log
}

// With --operations update,replace an update's record is the document looked up when it is
// read (the newest version), a replace's is the new document, and inserts are not sent; an
// update of a document deleted before it was read has no document and is skipped, and the
// forwarder goes on.
#[tokio::test(flavor = "multi_thread")]
async fn updates_and_replaces_send_the_newest_version() {
    let (mongo, kin, db, stream, client) = fixture("fwdupd", "upd", 1).await;
    let reports = client.database(&db).collection::<Document>("reports");
    let ops = ["--operations", "update,replace"];
    let fwd = spawn_forwarder(&mongo, &kin, &db, &stream, &ops);
    wait_for_position(&client, &db, &stream).await;
    let a = ObjectId::new();
    let current = || async { reports.find_one(doc! { "_id": a }).await.unwrap().unwrap() };
    reports
        .insert_one(doc! { "_id": a, "nodeName": "pi-a", "v": 1 })
        .await
        .unwrap();
    reports
        .update_one(doc! { "_id": a }, doc! { "$set": { "v": 2 } })
        .await
        .unwrap();
    let records = wait_for_records(&kin, &stream, 1).await;
    assert_eq!(records[0].1, stringify(&current().await).into_bytes());
    reports
        .replace_one(doc! { "_id": a }, doc! { "nodeName": "pi-a", "v": 3 })
        .await
        .unwrap();
    let records = wait_for_records(&kin, &stream, 2).await;
    assert_eq!(records.len(), 2, "the insert was sent too");
    assert_eq!(records[1].1, stringify(&current().await).into_bytes());
    stop_forwarder(fwd).await;

    // While it is down: b updated and deleted (no document left to look up), then c updated.
    for node in ["pi-b", "pi-c"] {
        reports.insert_one(doc! { "nodeName": node }).await.unwrap();
        let filter = doc! { "nodeName": node };
        reports
            .update_one(filter.clone(), doc! { "$set": { "v": 2 } })
            .await
            .unwrap();
    }
    reports
        .delete_one(doc! { "nodeName": "pi-b" })
        .await
        .unwrap();
    let mut fwd = spawn_forwarder(&mongo, &kin, &db, &stream, &ops);
    wait_for_key(&kin, &stream, "pi-c").await;
    let records = kin.read_all(&stream).await;
    let keys: Vec<&str> = records.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(keys, ["pi-a", "pi-a", "pi-c"]);
    assert!(fwd.try_wait().unwrap().is_none(), "the forwarder stopped");
    fwd.start_kill().unwrap();
    client.database(&db).drop().await.unwrap();
}

// --start-from-now skips what was inserted while the forwarder was down and replaces the
// stored position, so that a later start without it does not go back either; it warns that it
// overwrites the position (it used to say so only at info level).
#[tokio::test(flavor = "multi_thread")]
async fn start_from_now_skips_what_came_before_and_replaces_the_position() {
    let (mongo, kin, db, stream, client) = fixture("fwdnow", "now", 1).await;
    let fwd = spawn_forwarder(&mongo, &kin, &db, &stream, &[]);
    wait_for_position(&client, &db, &stream).await;
    stop_forwarder(fwd).await;
    let state = client
        .database(&db)
        .collection::<Document>("reports_forwarder_state");
    let stored = || async {
        let found = state.find_one(doc! { "_id": &stream }).await.unwrap();
        found.unwrap().get("resumeToken").cloned().unwrap()
    };
    let old = stored().await;
    let reports = client.database(&db).collection::<Document>("reports");
    reports
        .insert_one(doc! { "nodeName": "pi-a" })
        .await
        .unwrap();

    let fwd = spawn_forwarder(&mongo, &kin, &db, &stream, &["--start-from-now"]);
    wait_until(Duration::from_secs(30), "the position replaced", || async {
        stored().await != old
    })
    .await;
    // Said as a warning (the log shows warnings only), naming what it overwrites.
    let log = stop_forwarder_within(fwd, Duration::from_secs(30)).await;
    let said = log.lines().find(|l| l.contains("--start-from-now"));
    let said = said.unwrap_or_else(|| panic!("no warning: {log}"));
    assert!(
        said.contains("WARN")
            && said.contains("stored position is being overwritten")
            && said.contains(&stream)
            && said.contains("reports_forwarder_state"),
        "{said}"
    );
    // Started again without the flag, from the replaced position: a is still not sent.
    let mut fwd = spawn_forwarder(&mongo, &kin, &db, &stream, &[]);
    wait_for_position(&client, &db, &stream).await;
    reports
        .insert_one(doc! { "nodeName": "pi-b" })
        .await
        .unwrap();
    wait_for_key(&kin, &stream, "pi-b").await;
    let keys: Vec<String> = kin
        .read_all(&stream)
        .await
        .into_iter()
        .map(|r| r.0)
        .collect();
    assert_eq!(keys, ["pi-b"], "what came before --start-from-now was sent");
    fwd.start_kill().unwrap();
    client.database(&db).drop().await.unwrap();
}

// A dropped collection ends the change stream (an invalidate); the forwarder follows the
// collection of that name from right after the drop, with no restart and no flag, and does the
// same when the drop happened while it was down.
#[tokio::test(flavor = "multi_thread")]
async fn a_dropped_collection_is_followed_when_it_comes_back() {
    let (mongo, kin, db, stream, client) = fixture("fwdinv", "inv", 1).await;
    let reports = client.database(&db).collection::<Document>("reports");
    reports
        .insert_one(doc! { "nodeName": "before" })
        .await
        .unwrap();
    let mut fwd = spawn_forwarder(&mongo, &kin, &db, &stream, &[]);
    wait_for_position(&client, &db, &stream).await;
    reports.insert_one(doc! { "nodeName": "pi" }).await.unwrap();
    wait_for_records(&kin, &stream, 1).await;
    // Dropped, and at once created again by the next insert, as the agent does.
    reports.drop().await.unwrap();
    reports
        .insert_one(doc! { "nodeName": "after-drop" })
        .await
        .unwrap();
    let records = wait_for_records(&kin, &stream, 2).await;
    assert_eq!(records[1].0, "after-drop");
    assert!(fwd.try_wait().unwrap().is_none(), "the forwarder stopped");

    // Dropped again while the forwarder is down: the next start goes past it too.
    fwd.kill().await.unwrap();
    reports.drop().await.unwrap();
    reports
        .insert_one(doc! { "nodeName": "while-down" })
        .await
        .unwrap();
    let mut again = spawn_forwarder(&mongo, &kin, &db, &stream, &[]);
    wait_for_key(&kin, &stream, "while-down").await;
    let records = kin.read_all(&stream).await;
    let mut keys: Vec<&str> = records.iter().map(|r| r.0.as_str()).collect();
    // SIGKILL may land before "after-drop"'s position is stored: then it is sent again.
    keys.dedup();
    assert_eq!(keys, ["pi", "after-drop", "while-down"]);
    again.start_kill().unwrap();
    client.database(&db).drop().await.unwrap();
}

// With its position kept in another database (--state-database), a forwarder that was down
// while the watched database was dropped goes on from the drop: the report inserted before it
// starts again is forwarded. (In the watched database the position goes with it, and the next
// start is from now.)
#[tokio::test(flavor = "multi_thread")]
async fn a_dropped_database_is_followed_with_the_position_kept_elsewhere() {
    let (mongo, kin, db, stream, client) = fixture("fwddropdb", "dropdb", 1).await;
    let state_db = format!("{db}_state");
    let args = ["--state-database", state_db.as_str()];
    let reports = client.database(&db).collection::<Document>("reports");
    let mut fwd = spawn_forwarder(&mongo, &kin, &db, &stream, &args);
    // In a state database of its own, the collection's name starts with the watched database.
    let state = format!("{db}.reports_forwarder_state");
    wait_for_position_in(&client, &state_db, &state, &stream).await;
    reports.insert_one(doc! { "nodeName": "pi" }).await.unwrap();
    wait_for_records(&kin, &stream, 1).await;
    fwd.kill().await.unwrap();
    client.database(&db).drop().await.unwrap();
    reports
        .insert_one(doc! { "nodeName": "while-down" })
        .await
        .unwrap();
    let mut again = spawn_forwarder(&mongo, &kin, &db, &stream, &args);
    wait_for_key(&kin, &stream, "while-down").await;
    let records = kin.read_all(&stream).await;
    let mut keys: Vec<&str> = records.iter().map(|r| r.0.as_str()).collect();
    // SIGKILL may land before "pi"'s position is stored: then it is sent again.
    keys.dedup();
    assert_eq!(keys, ["pi", "while-down"]);
    assert!(again.try_wait().unwrap().is_none(), "the forwarder stopped");
    again.start_kill().unwrap();
    client.database(&db).drop().await.unwrap();
    client.database(&state_db).drop().await.unwrap();
}

/// Store a made-up position for `stream`, kept for `db.collection`, in the default state
/// collection of `db.reports`.
async fn store_position(client: &mongodb::Client, db: &str, stream: &str, collection: &str) {
    client
        .database(db)
        .collection::<Document>("reports_forwarder_state")
        .insert_one(doc! {
            "_id": stream, "database": db, "collection": collection,
            "resumeToken": { "_data": "8200000001" },
        })
        .await
        .unwrap();
}

// A position stored for another collection (a state collection shared by two forwarders) is
// refused at start with what to do, not resumed.
#[tokio::test(flavor = "multi_thread")]
async fn a_position_kept_for_another_collection_is_refused() {
    let (mongo, kin, db, stream, client) = fixture("fwdns", "ns", 1).await;
    store_position(&client, &db, &stream, "other").await;
    let fwd = spawn_forwarder(&mongo, &kin, &db, &stream, &[]);
    let out = tokio::time::timeout(Duration::from_secs(30), fwd.wait_with_output())
        .await
        .expect("the forwarder stops by itself")
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!("is for {db}.other, not {db}.reports"))
            && err.contains("--start-from-now"),
        "{err}"
    );
    client.database(&db).drop().await.unwrap();
}

// A stream name with no stored position, when another name has one for the same collection
// (the stream renamed), starts from now with a warning naming the other, not silently.
#[tokio::test(flavor = "multi_thread")]
async fn a_renamed_stream_is_warned_about() {
    let (mongo, kin, db, stream, client) = fixture("fwdren", "ren", 1).await;
    store_position(&client, &db, "the-old-name", "reports").await;
    let mut fwd = spawn_forwarder(&mongo, &kin, &db, &stream, &[]);
    wait_for_position(&client, &db, &stream).await;
    fwd.start_kill().unwrap();
    let out = fwd.wait_with_output().await.unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("other streams") && err.contains("the-old-name"),
        "{err}"
    );
    client.database(&db).drop().await.unwrap();
}

// Without a region or without any credentials the forwarder stops at start, saying what to set,
// instead of retrying every put for ever (the SDK reports both only when a call is made).
#[tokio::test(flavor = "multi_thread")]
async fn missing_aws_region_or_credentials_stops_at_start() {
    let mongo = MongoServer::start();
    let dir = tempfile::tempdir().unwrap();
    let nowhere = dir.path().join("none");
    for (unset, says) in [
        (
            &["AWS_REGION", "AWS_DEFAULT_REGION"][..],
            "no AWS region is set",
        ),
        (
            &[
                "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY",
                "AWS_SESSION_TOKEN",
            ][..],
            "no AWS credentials were found",
        ),
    ] {
        let mut cmd = tokio::process::Command::new(forwarder_bin());
        cmd.args(["--database", "fwnoaws", "--stream-name", "unused"])
            .args(["--kinesis-endpoint-url", "http://127.0.0.1:9"])
            .env("MONGODB_CONNECTION_STRING", &mongo.uri)
            .envs(AWS_ENV)
            .env("AWS_CONFIG_FILE", &nowhere)
            .env("AWS_SHARED_CREDENTIALS_FILE", &nowhere)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_WEB_IDENTITY_TOKEN_FILE")
            .env_remove("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
            .env_remove("AWS_CONTAINER_CREDENTIALS_FULL_URI")
            .kill_on_drop(true);
        for var in unset {
            cmd.env_remove(var);
        }
        // Credentials are waited for 16 s (a role's metadata service may not answer yet).
        let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
            .await
            .expect("the forwarder stops by itself")
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{err}");
        assert!(err.contains(says), "{err}");
    }
}

// A stream name Kinesis refuses (here a comment that systemd kept in KINESIS_STREAM_NAME's
// value) stops the forwarder at start with exit 2 and what to do, and check-config refuses it
// the same way; the forwarder used to start and retry every put for ever, as AWS answers each
// with ValidationException. (The emulator answers InvalidArgumentException, which stopped it
// only at the first put: the check at start is what this proves.)
#[tokio::test(flavor = "multi_thread")]
async fn a_stream_name_kinesis_refuses_stops_at_start() {
    let mongo = MongoServer::start();
    let kin = KinesisServer::start();
    let bad = "realm  # main stream";
    for check_config in [false, true] {
        let mut cmd = tokio::process::Command::new(forwarder_bin());
        cmd.args(["--database", "fwbadname"])
            .args(["--kinesis-endpoint-url", &kin.endpoint])
            .args(check_config.then_some("check-config"))
            .env("KINESIS_STREAM_NAME", bad)
            .env("MONGODB_CONNECTION_STRING", &mongo.uri)
            .envs(AWS_ENV)
            .kill_on_drop(true);
        let out = tokio::time::timeout(Duration::from_secs(20), cmd.output())
            .await
            .unwrap_or_else(|_| {
                panic!("started with stream name {bad:?} (check-config: {check_config})")
            })
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains("not a Kinesis stream name")
                && err.contains("KINESIS_STREAM_NAME")
                && err.contains("comment"),
            "{err}"
        );
    }
}

/// A stand-in for Kinesis that answers every call with a ValidationException, as AWS answers a
/// request its model refuses; the emulator answers those with other codes. Returns its URL.
async fn kinesis_answering_validation_exception() -> String {
    use axum::{http::StatusCode, Router};
    let answer = || async {
        (
            StatusCode::BAD_REQUEST,
            [("content-type", "application/x-amz-json-1.1")],
            r#"{"__type":"ValidationException","message":"1 validation error detected: Value at 'streamName' failed to satisfy constraint"}"#,
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(listener, Router::new().fallback(answer))
            .await
            .unwrap()
    });
    url
}

// A PutRecords call Kinesis answers with ValidationException stops the forwarder with the
// error, as it stops an EventBridge forwarder, instead of retrying it for ever.
#[tokio::test(flavor = "multi_thread")]
async fn a_validation_exception_from_kinesis_stops_the_forwarder() {
    let mongo = MongoServer::start();
    let client = mongo.client().await;
    let url = kinesis_answering_validation_exception().await;
    let (db, stream) = (unique_name("fwinvalid"), unique_name("invalid"));
    let fwd = spawn_forwarder_at(&mongo, &url, &db, &stream, &[], "warn");
    wait_for_position(&client, &db, &stream).await;
    insert_reports(&client, &db, &sample_docs(1)).await;
    let out = tokio::time::timeout(Duration::from_secs(30), fwd.wait_with_output())
        .await
        .expect("the forwarder stops when Kinesis refuses the request")
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("ValidationException"), "{err}");
    client.database(&db).drop().await.unwrap();
}

// SIGTERM while MongoDB is still unreachable at start (the resume token cannot be read yet):
// the forwarder stops at once and exits 0, rather than ignoring the signal until systemd
// kills it.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_while_mongodb_is_down_at_start_exits_cleanly() {
    let Some(mongo) = MongoServer::not_started() else {
        return;
    };
    let kin = KinesisServer::start();
    let stream = unique_name("fwdown");
    kin.create_stream(&stream, 1).await;
    let mut fw = spawn_forwarder(&mongo, &kin, &unique_name("fwdown"), &stream, &[]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        fw.try_wait().unwrap().is_none(),
        "still waiting for MongoDB"
    );
    stop_forwarder_within(fw, Duration::from_secs(10)).await;
}

// MongoDB down at start: that the stored position cannot be read is said once, not at every
// retry, and that it could be read in the end is said once, with how many attempts failed;
// then the forwarder forwards. It used to warn at every attempt, all through an outage.
#[tokio::test(flavor = "multi_thread")]
async fn mongodb_down_at_start_is_said_once_and_its_end_once() {
    let Some(mut mongo) = MongoServer::not_started() else {
        return;
    };
    // Each attempt gives up after 200 ms instead of 10 s, so several fail within seconds.
    mongo.uri.push_str("&serverSelectionTimeoutMS=200");
    let kin = KinesisServer::start();
    let db = unique_name("fwlate");
    let stream = unique_name("fwlate");
    kin.create_stream(&stream, 1).await;
    let fw = spawn_forwarder_at(&mongo, &kin.endpoint, &db, &stream, &[], "info");
    // The back-off starts at 100 ms and doubles: at least four attempts fail in 5 s.
    tokio::time::sleep(Duration::from_secs(5)).await;
    mongo.launch();
    let client = mongo.client().await;
    wait_for_position(&client, &db, &stream).await;
    let log = stop_forwarder_within(fw, Duration::from_secs(30)).await;
    let lines = |s: &str| log.lines().filter(|l| l.contains(s)).count();
    assert_eq!(lines("cannot read the stored resume token"), 1, "{log}");
    let recovered: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("MongoDB is reachable again"))
        .collect();
    assert_eq!(recovered.len(), 1, "{log}");
    let failed: u64 = recovered[0]
        .split("failed_attempts=")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count of failed attempts: {log}"));
    assert!(failed >= 4, "{log}");
}

/// The lines of `child`'s standard error as they come, each with when it came.
fn stderr_lines(
    child: &mut tokio::process::Child,
) -> std::sync::Arc<Mutex<Vec<(std::time::Instant, String)>>> {
    use tokio::io::AsyncBufReadExt;
    let lines = std::sync::Arc::new(Mutex::new(Vec::new()));
    let (mut reader, kept) = (
        tokio::io::BufReader::new(child.stderr.take().unwrap()).lines(),
        lines.clone(),
    );
    tokio::spawn(async move {
        while let Ok(Some(line)) = reader.next_line().await {
            kept.lock().unwrap().push((std::time::Instant::now(), line));
        }
    });
    lines
}

// A change stream that fails now and then over the forwarder's life (here its getMore refused
// by a proxy in front of the server) is reopened after the shortest back-off whenever it
// worked in between; the back-off grows only while failures follow each other, so a stream
// that fails at every read is not reopened ten times a second. The back-off used to start
// afresh only after a failed open, so that after some six failures every later reopen waited
// 5 to 10 s.
#[tokio::test(flavor = "multi_thread")]
async fn the_reopen_back_off_starts_afresh_once_the_stream_worked() {
    use common::wire::{Withhold, ZlibProxy};
    let Some(mongo) = MongoServer::own() else {
        return;
    };
    let kin = KinesisServer::start();
    let client = mongo.client().await;
    let (db, stream) = (unique_name("fwreopen"), unique_name("reopen"));
    kin.create_stream(&stream, 1).await;
    let proxy = ZlibProxy::start(mongo.port);
    let refused = [(
        "getMore",
        Withhold::CommandError(1, "InternalError", "getMore refused by the test's proxy"),
    )];
    let mut fwd = tokio::process::Command::new(forwarder_bin())
        .args(["--database", &db, "--stream-name", &stream])
        .args(["--kinesis-endpoint-url", &kin.endpoint])
        .env("MONGODB_CONNECTION_STRING", proxy.uri())
        .envs(AWS_ENV)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start kinesis-forwarder");
    let log = stderr_lines(&mut fwd);
    let failures = || {
        let log = log.lock().unwrap();
        let failed = log
            .iter()
            .filter(|(_, l)| l.contains("change stream failed"));
        failed.map(|(at, _)| *at).collect::<Vec<_>>()
    };
    wait_for_position(&client, &db, &stream).await;

    // Failing at every read for 3 s: reopened with a growing back-off (100 ms, then twice as
    // long each time, with jitter), not at once each time.
    proxy.withhold(&refused);
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.withhold(&[]);
    let in_a_row = failures().len();
    assert!((2..=6).contains(&in_a_row), "{in_a_row} failures in 3 s");
    insert_reports(&client, &db, &[doc! { "nodeName": "pi-works" }]).await;
    wait_for_key(&kin, &stream, "pi-works").await;

    // Then single failures, each after the stream worked: each reopened at once.
    for round in 0..3 {
        let before = failures().len();
        proxy.withhold(&refused);
        wait_until(Duration::from_secs(10), "the stream to fail", || async {
            failures().len() > before
        })
        .await;
        proxy.withhold(&[]);
        let failed_at = failures()[before];
        let node = format!("pi-{round}");
        insert_reports(&client, &db, &[doc! { "nodeName": &node }]).await;
        wait_for_key(&kin, &stream, &node).await;
        let took = failed_at.elapsed();
        assert!(
            took < Duration::from_secs(3),
            "round {round}: forwarding again took {took:?} after the failure"
        );
    }
    fwd.start_kill().unwrap();
    client.database(&db).drop().await.unwrap();
}

/// How long a stop may take with the target down or slow: the final put wait that
/// docs/pipeline.md promises, and 3 s for the process to start its stop and end.
const STOP_WITHIN: Duration = Duration::from_secs(forwarder::FINAL_PUT_WAIT.as_secs() + 3);

// SIGTERM while Kinesis answers slowly, a full batch in flight and the next one waiting for it:
// the forwarder stops within the final put wait (10 s) of the signal, for both batches
// together, storing the position after the one Kinesis took; started again, it sends the rest.
// Each batch used to get 10 s from when its own put began, so that this stop took 15 s.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_while_kinesis_is_slow_stops_within_the_final_put_wait() {
    let (mongo, kin, db, stream, client) = fixture("fwslow", "slow", 1).await;
    // Each call answered 8 s after it was made, within the SDK's 20 s a request.
    let proxy = HttpProxy::start(&kin.endpoint, Duration::from_secs(8));
    let fw = spawn_forwarder_at(&mongo, &proxy.endpoint, &db, &stream, &[], "info");
    wait_for_position(&client, &db, &stream).await;
    // 500 reports fill a PutRecords call; the other 10 wait behind it, one call at a time.
    insert_reports(&client, &db, &sample_docs(510)).await;
    wait_until(Duration::from_secs(30), "the full batch's put", || async {
        proxy.calls("Kinesis_20131202.PutRecords").total >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let log = stop_forwarder_within(fw, STOP_WITHIN).await;
    assert!(
        log.contains("read again from the stored resume token"),
        "{log}"
    );
    assert_eq!(kin.read_all(&stream).await.len(), 500);

    let _fw = spawn_forwarder(&mongo, &kin, &db, &stream, &[]);
    let got = wait_for_records(&kin, &stream, 510).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(kin.read_all(&stream).await.len(), got.len(), "sent again");
    assert_eq!(got.len(), 510, "the first batch was sent again");
}

// SIGTERM while MongoDB takes the position's store and never answers it (a hung primary, a
// partition): the forwarder gives the store until 5 s past the stop's deadline, then stops
// (exit 0), the batch Kinesis took to be sent again. It used to wait for the answer until
// systemd killed it.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_while_mongodb_does_not_answer_the_position_store_still_stops() {
    use common::wire::{Withhold, ZlibProxy};
    let (mongo, kin, db, stream, client) = fixture("fwhung", "hung", 1).await;
    let proxy = ZlibProxy::start(mongo.port);
    let fw = spawn_forwarder_through(&proxy.uri(), &kin.endpoint, &db, &stream, &[], "info");
    wait_for_position(&client, &db, &stream).await;
    proxy.withhold(&[("update", Withhold::Stall)]);
    insert_reports(&client, &db, &sample_docs(1)).await;
    wait_for_records(&kin, &stream, 1).await;
    // The store after the batch, due a second after it, is under way and not answered.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let log = stop_forwarder_within(fw, STOP_WITHIN + Duration::from_secs(5)).await;
    assert!(log.contains("could not store the resume token"), "{log}");
}

// SIGTERM while MongoDB takes a dead-letter record and never answers it: the write gets until
// the stop's deadline, and the forwarder stops (exit 0), the event to be read again. It used to
// wait for the answer until systemd killed it.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_while_mongodb_does_not_answer_a_dead_letter_write_still_stops() {
    use common::wire::{Sent, Withhold, ZlibProxy};
    let (mongo, kin, db, stream, client) = fixture("fwhungdl", "hungdl", 1).await;
    // The test's own inserts go to the server directly: only the forwarder's are withheld.
    let proxy = ZlibProxy::start_withholding(mongo.port, &[("insert", Withhold::Stall)]);
    let fw = spawn_forwarder_through(&proxy.uri(), &kin.endpoint, &db, &stream, &[], "info");
    wait_for_position(&client, &db, &stream).await;
    let big = doc! { "_id": ObjectId::new(), "nodeName": "pi", "blob": "x".repeat(1_100_000) };
    insert_reports(&client, &db, &[big]).await;
    wait_until(Duration::from_secs(30), "the dead-letter write", || async {
        proxy
            .sent()
            .iter()
            .any(|s| matches!(s, Sent::Command { name, .. } if name == "insert"))
    })
    .await;
    let log = stop_forwarder_within(fw, STOP_WITHIN).await;
    assert!(
        log.contains("read again from the stored resume token"),
        "{log}"
    );
}

// SIGTERM while Kinesis cannot be reached and a batch is being retried: the forwarder stops
// within its final put wait (10 s), exit 0, without storing a position past the batch; started
// again with Kinesis up, it forwards the report from the stored position. It used to retry
// until killed.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_while_kinesis_is_down_exits_and_loses_nothing() {
    let mongo = MongoServer::start();
    let kin = KinesisServer::start();
    let client = mongo.client().await;
    let db = unique_name("fwkdown");
    let stream = unique_name("fwkdown");
    kin.create_stream(&stream, 1).await;
    // Nothing listens on port 9 of this host: every PutRecords fails to connect.
    let fw = spawn_forwarder_at(&mongo, "http://127.0.0.1:9", &db, &stream, &[], "info");
    wait_for_position(&client, &db, &stream).await;
    let docs = sample_docs(1);
    insert_reports(&client, &db, &docs).await;
    // Let it read the event and fail a put or two.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let log = stop_forwarder_within(fw, STOP_WITHIN).await;
    assert!(
        log.contains("read again from the stored resume token"),
        "{log}"
    );
    assert!(kin.read_all(&stream).await.is_empty());

    let _fw = spawn_forwarder(&mongo, &kin, &db, &stream, &[]);
    let got = wait_for_records(&kin, &stream, 1).await;
    assert_eq!(
        stringify_id(&got[0].1),
        docs[0].get_object_id("_id").unwrap().to_hex()
    );
}

/// `kinesis-forwarder [args] check-config` with the test AWS settings and `env` (an empty value
/// unsets the variable), neither MongoDB nor Kinesis running: (exit code, stdout, stderr).
async fn check_config(uri: &str, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = tokio::process::Command::new(forwarder_bin());
    cmd.args(["--stream-name", "checked"])
        .args(["--kinesis-endpoint-url", "http://127.0.0.1:9"])
        .args(args)
        .arg("check-config")
        .env("MONGODB_CONNECTION_STRING", uri)
        .envs(AWS_ENV)
        .kill_on_drop(true);
    for (name, value) in env {
        if value.is_empty() {
            cmd.env_remove(name);
        } else {
            cmd.env(name, value);
        }
    }
    let run = cmd.output();
    let out = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("check-config answers without servers")
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// check-config accepts a good configuration without reaching MongoDB or Kinesis, says what it
// found, and reads the old FORWARDER_LINGER_MS spelling.
#[tokio::test(flavor = "multi_thread")]
async fn check_config_accepts_a_good_configuration() {
    let (code, out, err) = check_config(
        "mongodb://u:secretpw@127.0.0.1:9/?replicaSet=rs0",
        &["--collection", "readings"],
        &[("FORWARDER_LINGER_MS", "250")],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("monitors.readings"), "{out}");
    assert!(out.contains("checked in us-east-1"), "{out}");
    assert!(out.contains("linger: 250ms"), "{out}");
    assert!(!out.contains("secretpw") && !err.contains("secretpw"));
}

// Credentials the chain names but cannot fetch (here a credential_process that fails; in
// practice an instance role's metadata service not answering yet) are not called found: the
// forwarder would start and retry, and check-config says they are not confirmed, and why.
#[tokio::test(flavor = "multi_thread")]
async fn check_config_does_not_call_unfetched_credentials_found() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    std::fs::write(
        &config,
        "[profile broken]\ncredential_process = /bin/false\n",
    )
    .unwrap();
    let nowhere = dir.path().join("none");
    let (code, out, err) = check_config(
        "mongodb://127.0.0.1:9/",
        &[],
        &[
            ("AWS_ACCESS_KEY_ID", ""),
            ("AWS_SECRET_ACCESS_KEY", ""),
            ("AWS_PROFILE", "broken"),
            ("AWS_CONFIG_FILE", config.to_str().unwrap()),
            ("AWS_SHARED_CREDENTIALS_FILE", nowhere.to_str().unwrap()),
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("AWS credentials: not confirmed: they could not be fetched yet ("),
        "{out}"
    );
    assert!(!out.contains("AWS credentials: found"), "{out}");
}

// check-config refuses, with exit 2 and the reason, a malformed connection string and a
// missing AWS region.
#[tokio::test(flavor = "multi_thread")]
async fn check_config_refuses_a_bad_configuration() {
    let (code, _, err) = check_config("mongodb://127.0.0.1:notaport/", &[], &[]).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("invalid MongoDB connection string"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let nowhere = dir.path().join("none");
    let nowhere = nowhere.to_str().unwrap();
    let (code, _, err) = check_config(
        "mongodb://127.0.0.1:9/",
        &[],
        &[
            ("AWS_REGION", ""),
            ("AWS_DEFAULT_REGION", ""),
            ("AWS_CONFIG_FILE", nowhere),
            ("AWS_SHARED_CREDENTIALS_FILE", nowhere),
        ],
    )
    .await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no AWS region is set"), "{err}");

    // A state collection the server would refuse: it would store no position, and every
    // restart would skip what came while the forwarder was down. Refused as an option...
    let (code, _, err) = check_config(
        "mongodb://127.0.0.1:9/",
        &["--state-collection", "system.fwstate"],
        &[],
    )
    .await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("system. are the server's own"), "{err}");
    // ... and a default name too long with a long collection's, by check-config and at start,
    // before any server is contacted.
    let (db, coll) = ("d".repeat(63), "c".repeat(180));
    let long = ["--database", &db, "--collection", &coll];
    let (code, _, err) = check_config("mongodb://127.0.0.1:9/", &long, &[]).await;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--state-collection") && err.contains("over the server's 255"),
        "{err}"
    );
    let out = tokio::process::Command::new(forwarder_bin())
        .args(["--stream-name", "checked"])
        .args(long)
        .env("MONGODB_CONNECTION_STRING", "mongodb://127.0.0.1:9/")
        .envs(AWS_ENV)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), out)
        .await
        .expect("refused at start")
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("over the server's 255"), "{err}");
}

// The metrics count what went through: every change event read, every record Kinesis took
// (as many as the stream holds), a dead letter, no failures or retries, a lag per record and
// the stored token's age; promtool finds nothing wrong. /readyz is 200 while MongoDB and the
// stream answer, and 503 with a one-line reason once MongoDB is killed.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_what_was_forwarded_and_readyz_follows_mongodb() {
    use metrics_common::{free_addr, get, lint, scrape, value, wait_serving};
    let Some(mut mongo) = MongoServer::start_persistent() else {
        return;
    };
    let kin = KinesisServer::start();
    let (db, stream) = (unique_name("fwdmetrics"), unique_name("metrics"));
    kin.create_stream(&stream, 2).await;
    let client = mongo.client().await;
    let addr = free_addr();
    let mut fwd = spawn_forwarder(&mongo, &kin, &db, &stream, &["--metrics-listen", &addr]);
    wait_serving(&addr).await;
    wait_for_position(&client, &db, &stream).await;
    let ready = get(&addr, "/readyz").unwrap();
    assert_eq!((ready.status, ready.body.as_str()), (200, "ready\n"));
    assert_eq!(get(&addr, "/healthz").unwrap().status, 200);

    insert_reports(&client, &db, &sample_docs(5)).await;
    client
        .database(&db)
        .collection::<Document>("reports")
        .insert_one(doc! { "nodeName": "pi", "blob": "x".repeat(1_100_000) })
        .await
        .unwrap();
    wait_for_records(&kin, &stream, 5).await;
    wait_until(Duration::from_secs(30), "the counters to catch up", || {
        let a = addr.clone();
        async move {
            let m = scrape(&a);
            m.get("kinesis_forwarder_records_put_total") == Some(&5.0)
                && m.get("kinesis_forwarder_dead_letters_total") == Some(&1.0)
        }
    })
    .await;
    let m = scrape(&addr);
    assert_eq!(value(&m, "kinesis_forwarder_change_events_total"), 6.0);
    assert_eq!(
        kin.read_all(&stream).await.len() as f64,
        value(&m, "kinesis_forwarder_records_put_total")
    );
    assert_eq!(value(&m, "kinesis_forwarder_failed_entries_total"), 0.0);
    assert_eq!(value(&m, "kinesis_forwarder_retries_total"), 0.0);
    assert_eq!(value(&m, "kinesis_forwarder_lag_seconds_count"), 5.0);
    let lag = value(&m, "kinesis_forwarder_lag_seconds_sum");
    assert!((0.0..30.0).contains(&lag), "lag sum {lag}");
    let age = value(&m, "kinesis_forwarder_resume_token_age_seconds");
    assert!((0.0..30.0).contains(&age), "token age {age}");
    assert!(
        m.keys()
            .all(|k| !k.contains('{') || k.starts_with("kinesis_forwarder_lag_seconds_bucket")),
        "only the histogram's buckets have labels: {m:?}"
    );
    lint(&get(&addr, "/metrics").unwrap().body);

    mongo.kill();
    wait_until(Duration::from_secs(30), "/readyz to say not ready", || {
        let a = addr.clone();
        async move { get(&a, "/readyz").is_ok_and(|r| r.status == 503) }
    })
    .await;
    let not_ready = get(&addr, "/readyz").unwrap();
    assert!(
        not_ready.body.starts_with("not ready: MongoDB unreachable"),
        "{}",
        not_ready.body
    );
    assert_eq!(not_ready.body.lines().count(), 1, "{}", not_ready.body);
    assert_eq!(get(&addr, "/healthz").unwrap().status, 200);
    fwd.start_kill().unwrap();
}

// A metrics address already in use stops the forwarder at start with exit 2, naming the
// option, before it reaches MongoDB or AWS.
#[tokio::test(flavor = "multi_thread")]
async fn a_metrics_address_in_use_is_refused_at_start() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = tokio::process::Command::new(forwarder_bin())
        .args(["--metrics-listen", &addr])
        .env("MONGODB_CONNECTION_STRING", "mongodb://127.0.0.1:1/")
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--metrics-listen"), "{err}");
}

// A stored resume token the server cannot parse (edited by hand, or damaged) stops the
// forwarder with a message naming --start-from-now, instead of reopening the change stream
// once a minute for ever; started with the flag, it stores a good position and goes on.
#[tokio::test(flavor = "multi_thread")]
async fn an_unusable_stored_token_stops_with_what_to_do() {
    let (mongo, kin, db, stream, client) = fixture("fwdbadtok", "badtok", 1).await;
    let state = client
        .database(&db)
        .collection::<Document>("reports_forwarder_state");
    for token in [
        Bson::String("x".into()),
        Bson::Document(doc! { "_data": "zz" }),
    ] {
        state
            .replace_one(
                doc! { "_id": &stream },
                doc! { "database": &db, "collection": "reports", "resumeToken": token.clone() },
            )
            .upsert(true)
            .await
            .unwrap();
        let fwd = spawn_forwarder(&mongo, &kin, &db, &stream, &[]);
        let out = tokio::time::timeout(Duration::from_secs(30), fwd.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("still retrying with the token {token}"))
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{err}");
        assert!(err.contains("--start-from-now"), "{err}");
    }
    let mut fwd = spawn_forwarder(&mongo, &kin, &db, &stream, &["--start-from-now"]);
    wait_until(
        Duration::from_secs(30),
        "a good position stored",
        || async {
            let found = state.find_one(doc! { "_id": &stream }).await.unwrap();
            found.is_some_and(|d| {
                d.get_document("resumeToken")
                    .is_ok_and(|t| t.get_str("_data") != Ok("zz"))
            })
        },
    )
    .await;
    insert_reports(&client, &db, &sample_docs(1)).await;
    wait_for_records(&kin, &stream, 1).await;
    fwd.start_kill().unwrap();
    client.database(&db).drop().await.unwrap();
}
