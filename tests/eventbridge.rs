//! kinesis-forwarder --target eventbridge end to end against real servers: SecantusDB (change
//! streams) and moto's EventBridge, whose rule (the pipeline template's pattern) sends the events
//! to an SQS queue that the test reads back.
#![cfg(feature = "forwarder")]

mod common;
#[path = "common/http_proxy.rs"]
mod http_proxy;
#[path = "common/kinesis.rs"]
mod kinesis;
#[path = "common/metrics.rs"]
mod metrics_common;
#[path = "common/moto.rs"]
mod moto;

use std::collections::{HashMap, HashSet};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{all_reports, run_sim_agent, sim_agent, unique_name, wait_until, MongoServer};
use http_proxy::HttpProxy;
use kinesis::AWS_ENV;
use mongodb::bson::{doc, Bson, Document};
use moto::MotoServer;
use sensehat_monitor::forwarder::batch::{Entry, Limits};
use sensehat_monitor::forwarder::eventbridge::{AwsEventBridge, EVENTBRIDGE_PUTS_IN_FLIGHT};
use sensehat_monitor::forwarder::format::{stringify, Format};
use sensehat_monitor::forwarder::target::{EntryFailure, EntryResults, PutError, Target};
use sensehat_monitor::forwarder::{self, Options, TargetKind};

/// The test server, a database named after `name`, and a bus on moto whose events go to a queue.
struct OnMoto {
    mongo: MongoServer,
    client: mongodb::Client,
    db: String,
    bus: String,
    queue: String,
}

impl OnMoto {
    async fn set_up(moto: &MotoServer, name: &str) -> OnMoto {
        let mongo = MongoServer::start();
        let client = mongo.client().await;
        let (db, bus) = (unique_name(name), unique_name("bus"));
        let queue = moto.bus_to_queue(&bus, &unique_name("q"));
        OnMoto {
            mongo,
            client,
            db,
            bus,
            queue,
        }
    }
}

fn forwarder_bin() -> &'static str {
    env!("CARGO_BIN_EXE_kinesis-forwarder")
}

/// The forwarder binary on `db.reports`, putting onto `bus` at `endpoint`, its log to `log`.
fn forwarder(
    mongo: &MongoServer,
    endpoint: &str,
    db: &str,
    bus: &str,
    log: Stdio,
) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(forwarder_bin());
    c.args(["--target", "eventbridge", "--database", db])
        .args(["--event-bus-name", bus])
        .args(["--eventbridge-endpoint-url", endpoint])
        .env("MONGODB_CONNECTION_STRING", &mongo.uri)
        .envs(AWS_ENV)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true);
    c
}

/// The forwarder binary on `db.reports`, putting onto `bus` at moto.
fn spawn_forwarder(
    mongo: &MongoServer,
    moto: &MotoServer,
    db: &str,
    bus: &str,
    extra: &[&str],
) -> tokio::process::Child {
    forwarder(mongo, &moto.endpoint, db, bus, Stdio::inherit())
        .args(extra)
        .spawn()
        .expect("start kinesis-forwarder")
}

/// Wait until the forwarder on `bus` has stored a position (its change stream is open).
async fn wait_for_position(client: &mongodb::Client, db: &str, bus: &str) {
    let state = client
        .database(db)
        .collection::<Document>("reports_forwarder_state");
    let key = format!("eventbridge:{bus}");
    wait_until(Duration::from_secs(30), "the first stored position", || {
        let (state, key) = (state.clone(), key.clone());
        async move {
            state
                .find_one(doc! { "_id": key })
                .await
                .ok()
                .flatten()
                .is_some()
        }
    })
    .await;
}

/// Events read from `queue` until `done` holds of all read so far (panics after 60 s).
fn read_until(
    moto: &MotoServer,
    queue: &str,
    mut done: impl FnMut(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut got = Vec::new();
    loop {
        got.extend(moto.drain(queue));
        if done(&got) {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "only {} events reached the queue",
            got.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The `_id` in an event's Detail, for `stringify` (a hex string).
fn detail_id(event: &serde_json::Value) -> String {
    event["detail"]["_id"]
        .as_str()
        .expect("detail._id is a string")
        .to_owned()
}

// Every report the agent stores arrives through the bus and the rule as an event with the
// forwarder's Source and DetailType and Detail equal to JSON.stringify of the stored document;
// with --format canonical the Detail parses back into the stored document, every BSON type
// intact; a document EventBridge can never take goes to the dead letters, and the rest go on.
#[tokio::test(flavor = "multi_thread")]
async fn reports_arrive_with_fields_and_types_intact() {
    let Some(moto) = MotoServer::start() else {
        return;
    };
    let mongo = MongoServer::start();
    let client = mongo.client().await;
    let db = unique_name("evb");
    let (plain, typed) = (unique_name("bus"), unique_name("typed"));
    let plain_q = moto.bus_to_queue(&plain, &unique_name("q"));
    let typed_q = moto.bus_to_queue(&typed, &unique_name("q"));
    let mut a = spawn_forwarder(&mongo, &moto, &db, &plain, &[]);
    let mut b = spawn_forwarder(&mongo, &moto, &db, &typed, &["--format", "canonical"]);
    wait_for_position(&client, &db, &plain).await;
    wait_for_position(&client, &db, &typed).await;

    run_sim_agent(&mongo.uri, &db, 23).await;
    let reports = client.database(&db).collection::<Document>("reports");
    let big = doc! { "nodeName": "pi-big", "blob": "x".repeat(300 * 1024) };
    let big_id = reports.insert_one(big).await.unwrap().inserted_id;
    reports
        .insert_one(doc! { "nodeName": "pi-after", "n": 1_i64 })
        .await
        .unwrap();
    let docs: Vec<Document> = all_reports(&client, &db)
        .await
        .into_iter()
        .filter(|d| d.get("_id") != Some(&big_id))
        .collect();
    assert_eq!(docs.len(), 24);

    let events = read_until(&moto, &plain_q, |got| got.len() >= docs.len());
    assert_eq!(events.len(), docs.len(), "no event twice");
    let by_id: HashMap<String, &serde_json::Value> =
        events.iter().map(|e| (detail_id(e), e)).collect();
    for d in &docs {
        let id = d.get_object_id("_id").unwrap().to_hex();
        let e = by_id
            .get(&id)
            .unwrap_or_else(|| panic!("{id} did not arrive"));
        assert_eq!(e["source"], "sensehat-monitor.forwarder");
        assert_eq!(e["detail-type"], "MongoDB change event");
        let want: serde_json::Value = serde_json::from_str(&stringify(d)).unwrap();
        assert_eq!(e["detail"], want, "fields intact");
    }
    let typed_events = read_until(&moto, &typed_q, |got| got.len() >= docs.len());
    assert_eq!(typed_events.len(), docs.len(), "no event twice");
    let by_id: HashMap<String, &serde_json::Value> = typed_events
        .iter()
        .map(|e| (e["detail"]["_id"]["$oid"].as_str().unwrap().to_owned(), e))
        .collect();
    for d in &docs {
        let id = d.get_object_id("_id").unwrap().to_hex();
        let e = by_id
            .get(&id)
            .unwrap_or_else(|| panic!("{id} did not arrive"));
        let back = Bson::try_from(e["detail"].clone()).unwrap();
        assert_eq!(
            back.as_document().unwrap(),
            d,
            "canonical did not round-trip"
        );
        assert_eq!(
            serde_json::to_vec(&e["detail"]).unwrap(),
            Format::Canonical.encode(d)
        );
    }

    let dead = client
        .database(&db)
        .collection::<Document>("reports_forwarder_deadletter");
    for bus in [&plain, &typed] {
        let kept = dead
            .find_one(doc! { "documentId": &big_id, "stream": format!("eventbridge:{bus}") })
            .await
            .unwrap()
            .expect("the oversize document is in the dead letters");
        let reason = kept.get_str("reason").unwrap();
        assert!(reason.contains("over the EventBridge limit"), "{reason}");
    }
    a.start_kill().unwrap();
    b.start_kill().unwrap();
    client.database(&db).drop().await.unwrap();
}

// The forwarder SIGKILLed mid-stream and restarted loses nothing: every report arrives
// (duplicates allowed: the endpoint downstream upserts by _id). It is killed while an agent
// stores a report every 50 ms, and half the reports are stored only after the kill, so the
// restart must resume from the stored position to forward them.
#[tokio::test(flavor = "multi_thread")]
async fn sigkill_mid_stream_loses_nothing() {
    let Some(moto) = MotoServer::start() else {
        return;
    };
    let mongo = MongoServer::start();
    let client = mongo.client().await;
    let db = unique_name("evbkill");
    let bus = unique_name("bus");
    let queue = moto.bus_to_queue(&bus, &unique_name("q"));
    let mut fwd = spawn_forwarder(&mongo, &moto, &db, &bus, &[]);
    wait_for_position(&client, &db, &bus).await;

    let spool = tempfile::tempdir().unwrap();
    let mut each_report = sim_agent(&mongo.uri, &db, 40, spool.path());
    each_report.args(["--insert-every", "0"]);
    let mut agent = tokio::process::Command::from(each_report)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut got = read_until(&moto, &queue, |got| got.len() >= 15);
    fwd.start_kill().unwrap(); // SIGKILL
    fwd.wait().await.unwrap();
    got.extend(moto.drain(&queue));
    let before: HashSet<String> = got.iter().map(detail_id).collect();
    assert!(agent.wait().await.unwrap().success());
    run_sim_agent(&mongo.uri, &db, 40).await;
    let docs = all_reports(&client, &db).await;
    assert_eq!(docs.len(), 80);
    assert!(
        before.len() < docs.len(),
        "killed after all {} reports arrived: nothing left to resume",
        before.len()
    );
    let mut fwd = spawn_forwarder(&mongo, &moto, &db, &bus, &[]);

    let want: HashSet<String> = docs
        .iter()
        .map(|d| d.get_object_id("_id").unwrap().to_hex())
        .collect();
    let rest = read_until(&moto, &queue, |more| {
        let seen: HashSet<String> = got.iter().chain(more).map(detail_id).collect();
        seen.is_superset(&want)
    });
    got.extend(rest);
    let seen: HashSet<String> = got.iter().map(detail_id).collect();
    assert!(
        seen.is_superset(&want),
        "lost across SIGKILL (killed after {} events)",
        before.len()
    );
    fwd.start_kill().unwrap();
    client.database(&db).drop().await.unwrap();
}

// With 100 ms to EventBridge and back (a proxy holds each request that long before moto
// answers it), the forwarder keeps several PutEvents calls open at once, never more than its
// bound, where it used to wait for each answer before the next call (10 events a round trip);
// every event arrives.
#[tokio::test(flavor = "multi_thread")]
async fn puts_overlap_over_a_slow_link_and_every_event_arrives() {
    let Some(moto) = MotoServer::start() else {
        return;
    };
    let proxy = HttpProxy::start(&moto.endpoint, Duration::from_millis(100));
    let OnMoto {
        mongo,
        client,
        db,
        bus,
        queue,
    } = OnMoto::set_up(&moto, "evbslow").await;
    let mut fwd = forwarder(&mongo, &proxy.endpoint, &db, &bus, Stdio::inherit())
        .spawn()
        .expect("start kinesis-forwarder");
    wait_for_position(&client, &db, &bus).await;
    let n = 300;
    let docs: Vec<Document> = (0..n)
        .map(|i| doc! { "nodeName": format!("pi-{}", i % 7), "n": i })
        .collect();
    client
        .database(&db)
        .collection::<Document>("reports")
        .insert_many(docs)
        .await
        .unwrap();
    let numbers = |got: &[serde_json::Value]| -> HashSet<i64> {
        got.iter()
            .map(|e| e["detail"]["n"].as_i64().unwrap())
            .collect()
    };
    let events = read_until(&moto, &queue, |got| numbers(got).len() == n as usize);
    assert_eq!(numbers(&events), (0..n).collect());
    let puts = proxy.calls("AWSEvents.PutEvents");
    assert!(puts.total >= 30, "{puts:?}");
    assert!(puts.most_open > 1, "one PutEvents call at a time: {puts:?}");
    assert!(puts.most_open <= EVENTBRIDGE_PUTS_IN_FLIGHT, "{puts:?}");
    fwd.start_kill().unwrap();
    client.database(&db).drop().await.unwrap();
}

/// moto's EventBridge whose first PutEvents call waits until `release` is given a permit
/// (a call whose answer is slow to come) while the later ones go through; counts the calls
/// answered.
struct FirstCallHeld {
    inner: AwsEventBridge,
    calls: AtomicUsize,
    answered: AtomicUsize,
    release: tokio::sync::Semaphore,
}

impl Target for FirstCallHeld {
    const LIMITS: Limits = AwsEventBridge::LIMITS;
    const API: &'static str = AwsEventBridge::API;
    const PUTS_IN_FLIGHT: usize = AwsEventBridge::PUTS_IN_FLIGHT;

    async fn put(&self, bus: &str, entries: &[Entry]) -> Result<EntryResults, PutError> {
        if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
            let _ = self.release.acquire().await.unwrap();
        }
        let r = self.inner.put(bus, entries).await;
        self.answered.fetch_add(1, Ordering::SeqCst);
        r
    }

    fn entry_failure(reason: &str) -> EntryFailure {
        AwsEventBridge::entry_failure(reason)
    }
}

// Batches accepted after one still in flight do not move the stored position past it: the
// forwarder stopped dead then (as by SIGKILL) and started again sends that batch, and every
// event arrives.
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_still_in_flight_holds_the_position_back() {
    let Some(moto) = MotoServer::start() else {
        return;
    };
    let OnMoto {
        mongo,
        client,
        db,
        bus,
        queue,
    } = OnMoto::set_up(&moto, "evbheld").await;
    let held = std::sync::Arc::new(FirstCallHeld {
        inner: AwsEventBridge {
            client: moto.client(),
        },
        calls: AtomicUsize::new(0),
        answered: AtomicUsize::new(0),
        release: tokio::sync::Semaphore::new(0),
    });
    // A position before the 30 events, so that they are all there when the stream opens after
    // it, and make three full batches.
    let mut first = spawn_forwarder(&mongo, &moto, &db, &bus, &[]);
    wait_for_position(&client, &db, &bus).await;
    common::signal_pid(first.id().unwrap(), 15);
    assert!(first.wait().await.unwrap().success());
    let docs: Vec<Document> = (0..30).map(|i| doc! { "nodeName": "pi", "n": i }).collect();
    client
        .database(&db)
        .collection::<Document>("reports")
        .insert_many(docs)
        .await
        .unwrap();
    let mut opts = Options::new("unused");
    opts.database = db.clone();
    opts.target = TargetKind::Eventbridge;
    opts.event_bus_name = bus.clone();
    let (c, t) = (client.clone(), held.clone());
    let task =
        tokio::spawn(async move { forwarder::run(&c, &*t, &opts, std::future::pending()).await });
    wait_until(
        Duration::from_secs(30),
        "the batches after the held one",
        || async { held.answered.load(Ordering::SeqCst) >= 2 },
    )
    .await;
    // Long enough for the forwarder to store its position (at least once a second) if it would.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(held.answered.load(Ordering::SeqCst), 2);
    task.abort();
    let _ = task.await;
    let before = read_until(&moto, &queue, |got| got.len() >= 20);
    assert_eq!(before.len(), 20, "only the two batches after the held one");

    let mut fwd = spawn_forwarder(&mongo, &moto, &db, &bus, &[]);
    let mut got = before;
    got.extend(read_until(&moto, &queue, |more| {
        let ns: HashSet<i64> = more
            .iter()
            .map(|e| e["detail"]["n"].as_i64().unwrap())
            .collect();
        (0..10).all(|n| ns.contains(&n))
    }));
    let ns: HashSet<i64> = got
        .iter()
        .map(|e| e["detail"]["n"].as_i64().unwrap())
        .collect();
    assert_eq!(ns, (0..30).collect(), "the held batch was lost");
    held.release.add_permits(1);
    fwd.start_kill().unwrap();
    client.database(&db).drop().await.unwrap();
}

/// moto's EventBridge whose calls for events `n` below `held_below` are put, but their answers
/// are held until `release` is set (calls accepted and not yet acknowledged), and whose calls
/// for later events are never answered.
struct AnswersHeld {
    inner: AwsEventBridge,
    held_below: i64,
    calls: AtomicUsize,
    release: tokio::sync::watch::Receiver<bool>,
}

impl Target for AnswersHeld {
    const LIMITS: Limits = AwsEventBridge::LIMITS;
    const API: &'static str = AwsEventBridge::API;
    const PUTS_IN_FLIGHT: usize = AwsEventBridge::PUTS_IN_FLIGHT;

    async fn put(&self, bus: &str, entries: &[Entry]) -> Result<EntryResults, PutError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let n =
            |e: &Entry| serde_json::from_slice::<serde_json::Value>(&e.data).unwrap()["n"].as_i64();
        if entries.iter().any(|e| n(e) >= Some(self.held_below)) {
            std::future::pending::<()>().await;
        }
        let r = self.inner.put(bus, entries).await;
        let _ = self.release.clone().wait_for(|r| *r).await;
        r
    }

    fn entry_failure(reason: &str) -> EntryFailure {
        AwsEventBridge::entry_failure(reason)
    }
}

// A stop that cuts short a put after earlier ones in flight were accepted stores the position
// after those: started again, the forwarder sends only the batch that was cut short, where it
// used to store nothing and send every batch again.
#[tokio::test(flavor = "multi_thread")]
async fn a_stop_stores_the_position_of_the_batches_accepted_before_it() {
    let Some(moto) = MotoServer::start() else {
        return;
    };
    let OnMoto {
        mongo,
        client,
        db,
        bus,
        queue,
    } = OnMoto::set_up(&moto, "evbcut").await;
    // A position before the 30 events, so that they make three full batches, all in flight.
    let mut first = spawn_forwarder(&mongo, &moto, &db, &bus, &[]);
    wait_for_position(&client, &db, &bus).await;
    common::signal_pid(first.id().unwrap(), 15);
    assert!(first.wait().await.unwrap().success());
    let docs: Vec<Document> = (0..30).map(|i| doc! { "nodeName": "pi", "n": i }).collect();
    client
        .database(&db)
        .collection::<Document>("reports")
        .insert_many(docs)
        .await
        .unwrap();
    let (release, released) = tokio::sync::watch::channel(false);
    let held = std::sync::Arc::new(AnswersHeld {
        inner: AwsEventBridge {
            client: moto.client(),
        },
        held_below: 20,
        calls: AtomicUsize::new(0),
        release: released,
    });
    let mut opts = Options::new("unused");
    opts.database = db.clone();
    opts.target = TargetKind::Eventbridge;
    opts.event_bus_name = bus.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (c, t) = (client.clone(), held.clone());
    let task = tokio::spawn(async move {
        let shutdown = async {
            let _ = stopped.await;
        };
        forwarder::run(&c, &*t, &opts, shutdown).await
    });
    wait_until(
        Duration::from_secs(30),
        "three batches in flight",
        || async { held.calls.load(Ordering::SeqCst) >= 3 },
    )
    .await;
    stop.send(()).unwrap();
    // The first two batches are acknowledged only once the stop is being handled.
    tokio::time::sleep(Duration::from_secs(1)).await;
    release.send(true).unwrap();
    let stopped_in = Duration::from_secs(20);
    let outcome = tokio::time::timeout(stopped_in, task).await;
    outcome.expect("stopped").unwrap().unwrap();
    let mut got = read_until(&moto, &queue, |got| got.len() >= 20);

    let mut fwd = spawn_forwarder(&mongo, &moto, &db, &bus, &[]);
    got.extend(read_until(&moto, &queue, |more| {
        let ns: HashSet<i64> = more
            .iter()
            .map(|e| e["detail"]["n"].as_i64().unwrap())
            .collect();
        (20..30).all(|n| ns.contains(&n))
    }));
    // What the restart would send of the first two batches has come by now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    got.extend(moto.drain(&queue));
    let mut ns: Vec<i64> = got
        .iter()
        .map(|e| e["detail"]["n"].as_i64().unwrap())
        .collect();
    ns.sort();
    assert_eq!(ns, (0..30).collect::<Vec<_>>(), "sent again, or lost");
    fwd.start_kill().unwrap();
    client.database(&db).drop().await.unwrap();
}

// check-config accepts --target eventbridge without a stream name and without reaching
// MongoDB or EventBridge, and says which bus, region and endpoint it found.
#[tokio::test(flavor = "multi_thread")]
async fn check_config_shows_the_eventbridge_target() {
    let out = tokio::process::Command::new(forwarder_bin())
        .args([
            "--target",
            "eventbridge",
            "--event-bus-name",
            "pipeline-bus",
        ])
        .args(["--eventbridge-endpoint-url", "http://127.0.0.1:9"])
        .arg("check-config")
        .env("MONGODB_CONNECTION_STRING", "mongodb://127.0.0.1:9/")
        .env_remove("KINESIS_STREAM_NAME")
        .envs(AWS_ENV)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), out)
        .await
        .expect("check-config answers without servers")
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("event bus: pipeline-bus in us-east-1 at http://127.0.0.1:9"),
        "{text}"
    );
}

// With --target eventbridge the metrics count the events EventBridge took, and /readyz asks the
// bus: 200 for one that exists, 503 naming a bus that does not.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_and_readyz_follow_the_bus() {
    use metrics_common::{free_addr, get, scrape, value, wait_serving};
    let Some(moto) = MotoServer::start() else {
        return;
    };
    let OnMoto {
        mongo,
        client,
        db,
        bus,
        queue,
    } = OnMoto::set_up(&moto, "ebmetrics").await;
    let addr = free_addr();
    let mut fwd = spawn_forwarder(&mongo, &moto, &db, &bus, &["--metrics-listen", &addr]);
    wait_serving(&addr).await;
    wait_for_position(&client, &db, &bus).await;
    let ready = get(&addr, "/readyz").unwrap();
    assert_eq!((ready.status, ready.body.as_str()), (200, "ready\n"));
    let docs: Vec<Document> = (0..3).map(|i| doc! { "nodeName": "pi", "n": i }).collect();
    client
        .database(&db)
        .collection::<Document>("reports")
        .insert_many(docs)
        .await
        .unwrap();
    read_until(&moto, &queue, |got| got.len() >= 3);
    wait_until(Duration::from_secs(10), "the puts to be counted", || {
        let a = addr.clone();
        async move { scrape(&a).get("kinesis_forwarder_records_put_total") == Some(&3.0) }
    })
    .await;
    let m = scrape(&addr);
    assert_eq!(value(&m, "kinesis_forwarder_change_events_total"), 3.0);
    assert_eq!(value(&m, "kinesis_forwarder_lag_seconds_count"), 3.0);
    fwd.start_kill().unwrap();

    let missing = unique_name("nosuchbus");
    let addr = free_addr();
    let mut fwd = spawn_forwarder(&mongo, &moto, &db, &missing, &["--metrics-listen", &addr]);
    wait_serving(&addr).await;
    let not_ready = get(&addr, "/readyz").unwrap();
    assert_eq!(not_ready.status, 503, "{}", not_ready.body);
    assert_eq!(
        not_ready.body,
        format!("not ready: EventBridge bus {missing} does not exist\n")
    );
    fwd.start_kill().unwrap();
}

/// Cut short the Detail of each PutEvents entry whose Detail holds `"poison"`: no longer JSON,
/// it is refused for good by moto (MalformedDetail), which refuses nothing the forwarder itself
/// sends.
fn cut_poisoned_details(api: &str, body: Vec<u8>) -> Vec<u8> {
    if api != "AWSEvents.PutEvents" {
        return body;
    }
    let mut request: serde_json::Value = serde_json::from_slice(&body).unwrap();
    for e in request["Entries"].as_array_mut().unwrap() {
        let detail = e["Detail"].as_str().unwrap();
        if detail.contains("\"poison\"") {
            e["Detail"] = detail[..detail.len() - 1].into();
        }
    }
    serde_json::to_vec(&request).unwrap()
}

// An entry EventBridge refuses for good is counted in refused_entries_total and not in
// failed_entries_total (it is never resent), and, never accepted, has no lag; the others are
// put, counted and measured as usual. moto's own answer refuses it, through a proxy that
// spoils its Detail on the way.
#[tokio::test(flavor = "multi_thread")]
async fn an_entry_refused_for_good_is_counted_apart_and_has_no_lag() {
    use metrics_common::{free_addr, scrape, value, wait_serving};
    let Some(moto) = MotoServer::start() else {
        return;
    };
    let proxy = HttpProxy::start_rewriting(&moto.endpoint, Duration::ZERO, cut_poisoned_details);
    let OnMoto {
        mongo,
        client,
        db,
        bus,
        queue,
    } = OnMoto::set_up(&moto, "ebrefusedm").await;
    let addr = free_addr();
    let mut fwd = forwarder(&mongo, &proxy.endpoint, &db, &bus, Stdio::inherit())
        .args(["--metrics-listen", &addr])
        .spawn()
        .expect("start kinesis-forwarder");
    wait_serving(&addr).await;
    wait_for_position(&client, &db, &bus).await;
    let docs = [
        doc! { "nodeName": "pi", "n": 1 },
        doc! { "nodeName": "pi", "n": 2, "poison": true },
        doc! { "nodeName": "pi", "n": 3 },
    ];
    client
        .database(&db)
        .collection::<Document>("reports")
        .insert_many(docs)
        .await
        .unwrap();
    let events = read_until(&moto, &queue, |got| got.len() >= 2);
    let mut arrived: Vec<i64> = events
        .iter()
        .map(|e| e["detail"]["n"].as_i64().unwrap())
        .collect();
    arrived.sort();
    assert_eq!(arrived, [1, 3]);
    wait_until(Duration::from_secs(10), "the batch counted", || {
        let a = addr.clone();
        async move {
            let m = scrape(&a);
            m.get("kinesis_forwarder_dead_letters_total") == Some(&1.0)
                && m.get("kinesis_forwarder_lag_seconds_count") >= Some(&2.0)
        }
    })
    .await;
    // Whatever is counted of the batch is counted together: a moment later it all is.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let m = scrape(&addr);
    assert_eq!(value(&m, "kinesis_forwarder_records_put_total"), 2.0);
    assert_eq!(value(&m, "kinesis_forwarder_lag_seconds_count"), 2.0);
    assert_eq!(value(&m, "kinesis_forwarder_failed_entries_total"), 0.0);
    assert_eq!(value(&m, "kinesis_forwarder_retries_total"), 0.0);
    assert_eq!(value(&m, "kinesis_forwarder_refused_entries_total"), 1.0);
    fwd.start_kill().unwrap();
    client.database(&db).drop().await.unwrap();
}

/// A stand-in for EventBridge's PutEvents that answers each entry as the API reference says a
/// failing one is answered, since no emulator can refuse a permission: on bus `denied-*` every
/// entry fails with NotAuthorizedForSourceException; elsewhere an entry whose Detail holds
/// `"poison"` fails with MalformedDetail and the rest are accepted. Returns its URL and every
/// Detail it was sent.
async fn put_events_stand_in() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use axum::{body::Bytes, routing::post, Router};
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let answer = move |body: Bytes| {
        let log = log.clone();
        async move {
            let request: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let mut failed = 0;
            let entries: Vec<serde_json::Value> = request["Entries"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| {
                    let detail = e["Detail"].as_str().unwrap().to_owned();
                    let denied = e["EventBusName"].as_str().unwrap().starts_with("denied-");
                    let poison = detail.contains("\"poison\"");
                    log.lock().unwrap().push(detail);
                    let (code, message) = match (denied, poison) {
                        (true, _) => (
                            "NotAuthorizedForSourceException",
                            "Not authorized for the source.",
                        ),
                        (false, true) => ("MalformedDetail", "Detail is malformed."),
                        (false, false) => return serde_json::json!({ "EventId": "1" }),
                    };
                    failed += 1;
                    serde_json::json!({ "ErrorCode": code, "ErrorMessage": message })
                })
                .collect();
            (
                [("content-type", "application/x-amz-json-1.1")],
                serde_json::json!({ "FailedEntryCount": failed, "Entries": entries }).to_string(),
            )
        }
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(listener, Router::new().route("/", post(answer)))
            .await
            .unwrap()
    });
    (url, seen)
}

// PutEvents' per-entry codes are sorted as its API reference sorts them. A record EventBridge
// refuses for good (MalformedDetail) is sent once, kept in the dead-letter collection (once,
// even when it is refused again after a restart from an older position), and the rest go on; a
// bus the forwarder may not put to (NotAuthorizedForSourceException) stops it at once with an
// error that says so and stores no position past the record (started again, it sends it
// again), where it used to resend for ever.
#[tokio::test(flavor = "multi_thread")]
async fn an_entry_refused_for_good_is_kept_aside_and_a_denied_one_stops() {
    let (url, seen) = put_events_stand_in().await;
    let mongo = MongoServer::start();
    let client = mongo.client().await;
    let db = unique_name("ebrefused");
    let start = |bus: &str| {
        forwarder(&mongo, &url, &db, bus, Stdio::piped())
            .spawn()
            .expect("start kinesis-forwarder")
    };
    let reports = client.database(&db).collection::<Document>("reports");

    let mut fwd = start("pipeline-bus");
    wait_for_position(&client, &db, "pipeline-bus").await;
    let state = client
        .database(&db)
        .collection::<Document>("reports_forwarder_state");
    let position = doc! { "_id": "eventbridge:pipeline-bus" };
    let before = state.find_one(position.clone()).await.unwrap().unwrap();
    let docs = [
        doc! { "nodeName": "pi", "n": 1 },
        doc! { "nodeName": "pi", "n": 2, "poison": true },
        doc! { "nodeName": "pi", "n": 3 },
    ];
    reports.insert_many(docs).await.unwrap();
    let dead = client
        .database(&db)
        .collection::<Document>("reports_forwarder_deadletter");
    wait_until(
        Duration::from_secs(30),
        "the refused record kept aside",
        || {
            let dead = dead.clone();
            async move { dead.count_documents(doc! {}).await.unwrap() == 1 }
        },
    )
    .await;
    let kept = dead.find_one(doc! {}).await.unwrap().unwrap();
    assert!(
        kept.get_str("reason")
            .unwrap()
            .starts_with("MalformedDetail"),
        "{kept}"
    );
    assert_eq!(kept.get_document("document").unwrap().get_i32("n"), Ok(2));
    wait_until(Duration::from_secs(10), "the rest sent", || {
        let seen = seen.clone();
        async move { seen.lock().unwrap().len() >= 3 }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent = seen.lock().unwrap().clone();
    assert_eq!(sent.len(), 3, "the refused record was sent again: {sent:?}");
    fwd.start_kill().unwrap();
    let _ = fwd.wait().await;

    // Back to the position before the three: refused again, the record is still kept once.
    state.replace_one(position.clone(), &before).await.unwrap();
    let mut fwd = start("pipeline-bus");
    wait_until(Duration::from_secs(30), "the three sent again", || {
        let seen = seen.clone();
        async move { seen.lock().unwrap().len() >= 6 }
    })
    .await;
    // A position stored after that is stored after the dead letter was kept.
    let resent_at = mongodb::bson::DateTime::now();
    wait_until(Duration::from_secs(30), "the position past them", || {
        let (state, position) = (state.clone(), position.clone());
        async move {
            let now = state.find_one(position).await.unwrap().unwrap();
            now.get_datetime("updatedAt").unwrap() > &resent_at
        }
    })
    .await;
    let kept = dead.count_documents(doc! {}).await.unwrap();
    assert_eq!(kept, 1, "the refused record was kept again");
    fwd.start_kill().unwrap();
    let _ = fwd.wait().await;

    let fwd = start("denied-bus");
    wait_for_position(&client, &db, "denied-bus").await;
    reports
        .insert_one(doc! { "nodeName": "pi", "n": 4 })
        .await
        .unwrap();
    let denied = |sent: &[String]| sent.iter().filter(|d| d.contains("\"n\":4")).count();
    let out = tokio::time::timeout(Duration::from_secs(30), fwd.wait_with_output())
        .await
        .expect("the forwarder stops when it may not put")
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("NotAuthorizedForSourceException"), "{err}");
    assert!(err.contains("permission"), "{err}");
    assert_eq!(denied(&seen.lock().unwrap()), 1);
    // Started again, it sends the denied record again: the stored position is not past it (a
    // newer position from before it, stored while the collection was quiet, is fine).
    let again = start("denied-bus");
    let out = tokio::time::timeout(Duration::from_secs(30), again.wait_with_output()).await;
    let sent = seen.lock().unwrap().clone();
    assert_eq!(
        denied(&sent),
        2,
        "a position past the denied record was stored: {sent:?}"
    );
    let out = out.expect("stopped again by the denied record").unwrap();
    assert!(!out.status.success());
}
