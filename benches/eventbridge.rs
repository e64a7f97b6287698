//! EventBridge forwarder benchmark against real servers (SecantusDB, moto's EventBridge): events
//! per second from `insert_many` into the watched collection to PutEvents acknowledged, against
//! a plain loop of PutEvents of the same events (10 per call, EventBridge's most) onto the same
//! emulator's bus in the same run, as a ratio. moto is the slow side here, so the ratio says what
//! the forwarder adds to the calls it must make, not what AWS would take.
//!
//! Run: `cargo bench --features forwarder --bench eventbridge` (BENCH_EVENTS changes the size).
//! Needs moto in .venv-aws (`bash .ci/aws.sh`, or MOTO_SERVER) and SecantusDB in .venv-test.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/common/moto.rs"]
mod moto;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_eventbridge::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_eventbridge::types::PutEventsRequestEntry;
use common::{unique_name, MongoServer};
use mongodb::bson::{doc, Document};
use moto::MotoServer;
use sensehat_monitor::forwarder::batch::{Entry, Limits, EVENTBRIDGE_MAX_ENTRIES};
use sensehat_monitor::forwarder::batch::{DETAIL_TYPE, SOURCE};
use sensehat_monitor::forwarder::eventbridge::AwsEventBridge;
use sensehat_monitor::forwarder::format::Format;
use sensehat_monitor::forwarder::target::{EntryResults, PutError, Target};
use sensehat_monitor::forwarder::{self, Options, TargetKind};
use sensehat_monitor::report::{Acceleration, MovingRule, Reading, Report};

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

/// Counts entries EventBridge accepted, and notes when the count reached the target.
struct Counting {
    inner: AwsEventBridge,
    accepted: AtomicUsize,
    target: usize,
    done_at: Mutex<Option<Instant>>,
}

impl Target for Counting {
    const LIMITS: Limits = AwsEventBridge::LIMITS;
    const API: &'static str = AwsEventBridge::API;

    async fn put(&self, bus: &str, entries: &[Entry]) -> Result<EntryResults, PutError> {
        let results = self.inner.put(bus, entries).await?;
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

fn client(moto: &MotoServer) -> aws_sdk_eventbridge::Client {
    let config = aws_sdk_eventbridge::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "test"))
        .endpoint_url(&moto.endpoint)
        .build();
    aws_sdk_eventbridge::Client::from_conf(config)
}

/// A plain loop of PutEvents, 10 per call, of `details` onto `bus`; returns seconds.
async fn plain_loop(c: &aws_sdk_eventbridge::Client, bus: &str, details: &[String]) -> f64 {
    let t = Instant::now();
    for chunk in details.chunks(EVENTBRIDGE_MAX_ENTRIES) {
        let entries = chunk
            .iter()
            .map(|d| {
                PutEventsRequestEntry::builder()
                    .source(SOURCE)
                    .detail_type(DETAIL_TYPE)
                    .detail(d)
                    .event_bus_name(bus)
                    .build()
            })
            .collect();
        let out = c
            .put_events()
            .set_entries(Some(entries))
            .send()
            .await
            .unwrap();
        assert_eq!(out.failed_entry_count(), 0);
    }
    t.elapsed().as_secs_f64()
}

/// The forwarder in this process, insert -> change stream -> PutEvents acknowledged; seconds.
async fn through_forwarder(
    mongo: &MongoServer,
    moto: &MotoServer,
    bus: &str,
    documents: &[Document],
) -> f64 {
    let client = mongo.client().await;
    let db = unique_name("benchevb");
    let counting = Arc::new(Counting {
        inner: AwsEventBridge {
            client: self::client(moto),
        },
        accepted: AtomicUsize::new(0),
        target: documents.len(),
        done_at: Mutex::new(None),
    });
    let mut opts = Options::new("unused");
    opts.database = db.clone();
    opts.target = TargetKind::Eventbridge;
    opts.event_bus_name = bus.to_owned();
    let state_key = opts.position_key();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (c2, k2) = (client.clone(), counting.clone());
    let task = tokio::spawn(async move {
        forwarder::run(&c2, &*k2, &opts, async {
            let _ = stop_rx.await;
        })
        .await
    });
    let state = client
        .database(&db)
        .collection::<Document>("reports_forwarder_state");
    while state
        .find_one(doc! { "_id": &state_key })
        .await
        .ok()
        .flatten()
        .is_none()
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reports = client.database(&db).collection::<Document>("reports");
    let t = Instant::now();
    for chunk in documents.chunks(1000) {
        reports.insert_many(chunk).await.unwrap();
    }
    while counting.done_at.lock().unwrap().is_none() {
        assert!(t.elapsed() < Duration::from_secs(600), "forwarder too slow");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let done = counting.done_at.lock().unwrap().unwrap();
    let _ = stop_tx.send(());
    let _ = task.await;
    client.database(&db).drop().await.unwrap();
    done.duration_since(t).as_secs_f64()
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing useful.
    if !std::env::args().any(|a| a == "--bench") {
        println!("run with `cargo bench --features forwarder --bench eventbridge`");
        return;
    }
    let Some(moto) = MotoServer::start() else {
        return;
    };
    let mongo = MongoServer::start();
    let n: usize = std::env::var("BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let documents = docs(n);
    let details: Vec<String> = documents
        .iter()
        .map(|d| String::from_utf8(Format::Stringify.encode(d)).unwrap())
        .collect();
    let c = client(&moto);
    let bus = unique_name("benchbus");
    c.create_event_bus().name(&bus).send().await.unwrap();

    // The plain loop once to warm moto up, then before and after the forwarder; the faster counts.
    let _warm_up = plain_loop(&c, &bus, &details[..details.len().min(200)]).await;
    let plain_before = plain_loop(&c, &bus, &details).await;
    let fwd_secs = through_forwarder(&mongo, &moto, &bus, &documents).await;
    let plain_after = plain_loop(&c, &bus, &details).await;
    let plain_rate = n as f64 / plain_before.min(plain_after);
    let fwd_rate = n as f64 / fwd_secs;
    println!(
        "eventbridge throughput ({n} events, stringify, moto {}):",
        moto.endpoint
    );
    println!(
        "  plain PutEvents loop (10/call): {plain_rate:>8.0} events/s (best of {plain_before:.2} s before, {plain_after:.2} s after)"
    );
    println!("  forwarder insert -> acked:      {fwd_rate:>8.0} events/s ({fwd_secs:.2} s)");
    println!(
        "  ratio forwarder / plain:        {:>8.2}",
        fwd_rate / plain_rate
    );
}
