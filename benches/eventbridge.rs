//! EventBridge forwarder benchmark against real servers (SecantusDB, moto's EventBridge):
//!
//! 1. Events per second from `insert_many` into the watched collection to PutEvents
//!    acknowledged, against a plain loop of PutEvents of the same events (10 per call,
//!    EventBridge's most) onto the same emulator's bus in the same run, as a ratio. moto is the
//!    slow side here, so the ratio says what the forwarder adds to the calls it must make, not
//!    what AWS would take.
//! 2. The same through a proxy that adds a round trip (`BENCH_RTT_MS`, 100 ms by default) to
//!    each call, as a Region far from the forwarder would: with one PutEvents call in flight at a
//!    time (as the forwarder had) and with the forwarder's
//!    [`EVENTBRIDGE_PUTS_IN_FLIGHT`], in the same run. There the round trip sets the pace.
//!
//! Run: `cargo bench --features forwarder --bench eventbridge` (BENCH_EVENTS, BENCH_RTT_EVENTS
//! and BENCH_RTT_MS change the sizes). Needs moto in .venv-aws (`bash .ci/aws.sh`, or
//! MOTO_SERVER) and SecantusDB in .venv-test.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/common/http_proxy.rs"]
mod http_proxy;
#[path = "../tests/common/moto.rs"]
mod moto;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_eventbridge::types::PutEventsRequestEntry;
use common::{unique_name, MongoServer};
use http_proxy::HttpProxy;
use mongodb::bson::{doc, Document};
use moto::{client_at, MotoServer};
use sensehat_monitor::forwarder::batch::{Entry, Limits, EVENTBRIDGE_MAX_ENTRIES};
use sensehat_monitor::forwarder::batch::{DETAIL_TYPE, SOURCE};
use sensehat_monitor::forwarder::eventbridge::{AwsEventBridge, EVENTBRIDGE_PUTS_IN_FLIGHT};
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

/// Counts entries EventBridge accepted, and notes when the count reached the target; keeps up
/// to `K` calls in flight.
struct Counting<const K: usize> {
    inner: AwsEventBridge,
    accepted: AtomicUsize,
    target: usize,
    done_at: Mutex<Option<Instant>>,
}

impl<const K: usize> Target for Counting<K> {
    const LIMITS: Limits = AwsEventBridge::LIMITS;
    const API: &'static str = AwsEventBridge::API;
    const PUTS_IN_FLIGHT: usize = K;

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

/// The forwarder in this process with up to `K` calls in flight, EventBridge at `endpoint`:
/// insert -> change stream -> PutEvents acknowledged; seconds.
async fn through_forwarder<const K: usize>(
    mongo: &MongoServer,
    endpoint: &str,
    bus: &str,
    documents: &[Document],
) -> f64 {
    let client = mongo.client().await;
    let db = unique_name("benchevb");
    let counting = Arc::new(Counting::<K> {
        inner: AwsEventBridge {
            client: client_at(endpoint),
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
    let c = moto.client();
    let bus = unique_name("benchbus");
    c.create_event_bus().name(&bus).send().await.unwrap();

    // The plain loop once to warm moto up, then before and after the forwarder; the faster counts.
    let _warm_up = plain_loop(&c, &bus, &details[..details.len().min(200)]).await;
    let plain_before = plain_loop(&c, &bus, &details).await;
    let fwd_secs =
        through_forwarder::<EVENTBRIDGE_PUTS_IN_FLIGHT>(&mongo, &moto.endpoint, &bus, &documents)
            .await;
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
    over_a_slow_link(&mongo, &moto, &bus, &documents).await;
}

/// Part 2: the forwarder with one call in flight and with [`EVENTBRIDGE_PUTS_IN_FLIGHT`], each
/// PutEvents held `BENCH_RTT_MS` by a proxy before moto answers it.
async fn over_a_slow_link(mongo: &MongoServer, moto: &MotoServer, bus: &str, all: &[Document]) {
    let env = |name: &str, default: usize| -> usize {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let rtt_ms = env("BENCH_RTT_MS", 100);
    let documents = &all[..env("BENCH_RTT_EVENTS", 1000).min(all.len())];
    let n = documents.len() as f64;
    let proxy = HttpProxy::start(&moto.endpoint, Duration::from_millis(rtt_ms as u64));
    let one = n / through_forwarder::<1>(mongo, &proxy.endpoint, bus, documents).await;
    let after_one = proxy.calls("AWSEvents.PutEvents");
    const K: usize = EVENTBRIDGE_PUTS_IN_FLIGHT;
    let k = n / through_forwarder::<K>(mongo, &proxy.endpoint, bus, documents).await;
    let after_k = proxy.calls("AWSEvents.PutEvents");
    println!(
        "eventbridge over a slow link ({n} events, {rtt_ms} ms added to each PutEvents round trip):"
    );
    println!(
        "  1 call in flight:    {one:>8.0} events/s (most open at once: {})",
        after_one.most_open
    );
    println!(
        "  {K} calls in flight:   {k:>8.0} events/s (most open at once: {}), {:.1} times as many",
        after_k.most_open,
        k / one
    );
    println!(
        "  10 events a call per round trip would be {:.0} and {:.0} events/s",
        10_000.0 / rtt_ms as f64,
        10_000.0 * K as f64 / rtt_ms as f64
    );
}
