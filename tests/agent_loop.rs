//! The sampling loop under paused tokio time: the fixed-rate schedule holds while inserts are
//! slow, and every report is delivered in order once they complete.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sensehat_monitor::agent::{self, AgentError, AgentOptions, Counters, Output, Sampler};
use sensehat_monitor::board::{HealthEvent, SampleError, Sampled, Sensor};
use sensehat_monitor::report::{Acceleration, MovingRule, Reading, Report};
use sensehat_monitor::sink::spool::{Spool, SpoolOptions};
use sensehat_monitor::sink::{InsertError, InsertOutcome, Inserter};

/// The reading every sampler here gives.
fn reading() -> Reading {
    Reading {
        humidity_rh: 40.0,
        temperature_celsius: 20.0,
        pressure_hpa: 1000.0,
        acceleration: Acceleration {
            x_g: 0.0,
            y_g: 0.0,
            z_g: 1.0,
        },
    }
}

/// Records the (paused) tokio time of every sample.
struct ClockSampler {
    times: Arc<Mutex<Vec<tokio::time::Instant>>>,
}

impl Sampler for ClockSampler {
    fn sample(&mut self) -> (Result<Reading, SampleError>, Vec<(Sensor, HealthEvent)>) {
        self.times.lock().unwrap().push(tokio::time::Instant::now());
        (Ok(reading()), Vec::new())
    }
}

/// An in-memory database whose every insert takes `delay` (a unit-test stand-in for the
/// inserter; the real MongoDB path is proven by the integration tests).
struct SlowInserter {
    delay: Duration,
    got: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Inserter for SlowInserter {
    async fn insert(&mut self, docs: &[Vec<u8>]) -> Result<InsertOutcome, InsertError> {
        tokio::time::sleep(self.delay).await;
        self.got.lock().unwrap().extend(docs.iter().cloned());
        all_stored(docs)
    }
}

/// A spool in `dir`, large enough for any of these tests.
fn open_spool(dir: &std::path::Path) -> Spool {
    let options = SpoolOptions {
        max_bytes: 1 << 24,
        sync_interval: Duration::from_secs(1),
    };
    Spool::open(dir, options).unwrap().0
}

/// The agent on a [`ClockSampler`] recording into `times`, spooling to `spool` and delivering
/// with `inserter`, until `shutdown` (or `opts.count`).
fn spooled<I: Inserter>(
    opts: AgentOptions,
    times: Arc<Mutex<Vec<tokio::time::Instant>>>,
    spool: Arc<Mutex<Spool>>,
    inserter: I,
    shutdown: impl std::future::Future<Output = ()>,
) -> impl std::future::Future<Output = Result<Counters, AgentError>> {
    agent::run(
        opts,
        ClockSampler { times },
        Output::Spool {
            spool,
            status_path: None,
        },
        inserter,
        None,
        shutdown,
    )
}

/// Every report of `docs` stored.
fn all_stored(docs: &[Vec<u8>]) -> Result<InsertOutcome, InsertError> {
    Ok(InsertOutcome {
        inserted: docs.len() as u64,
        ..Default::default()
    })
}

fn options(interval: Duration, count: Option<u64>, shutdown_timeout: Duration) -> AgentOptions {
    AgentOptions {
        node_name: "loop-test".into(),
        moving_rule: MovingRule::Axis,
        interval,
        // A window of four samples at the production interval.
        insert_every: Duration::from_secs(2),
        count,
        shutdown_timeout,
        // Tokio's timer follows the paused clock these tests run on.
        ticker: agent::TickSource::Runtime,
        notify_systemd: false,
        clock: None,
        telemetry: None,
    }
}

// Sample n is taken at start + n x 500 ms even though each insert takes 1.7 s, and all 20
// reports arrive, in order.
#[tokio::test(start_paused = true)]
async fn schedule_holds_when_inserts_are_slow() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open_spool(dir.path());
    let times = Arc::new(Mutex::new(Vec::new()));
    let got = Arc::new(Mutex::new(Vec::new()));
    let counters = spooled(
        options(Duration::from_millis(500), Some(20), Duration::from_secs(5)),
        times.clone(),
        Arc::new(Mutex::new(spool)),
        SlowInserter {
            delay: Duration::from_millis(1700),
            got: got.clone(),
        },
        std::future::pending(),
    )
    .await
    .unwrap();
    let times = times.lock().unwrap();
    assert_eq!(times.len(), 20);
    for (n, t) in times.iter().enumerate() {
        assert_eq!(
            t.duration_since(times[0]),
            Duration::from_millis(500) * n as u32,
            "sample {n}"
        );
    }
    assert_eq!(counters.missed_slots, 0);
    assert_eq!(counters.delivered, 20);
    let got = got.lock().unwrap();
    assert_eq!(got.len(), 20);
    let stamps: Vec<i64> = got
        .iter()
        .map(|b| {
            mongodb::bson::Document::from_reader(&mut b.as_slice())
                .unwrap()
                .get_datetime("recordedAt")
                .unwrap()
                .timestamp_millis()
        })
        .collect();
    assert!(
        stamps.windows(2).all(|w| w[0] <= w[1]),
        "delivered out of order"
    );
}

// A shutdown during a slow insert returns within the shutdown timeout and leaves the rest in
// the spool.
#[tokio::test(start_paused = true)]
async fn shutdown_leaves_undelivered_reports_in_the_spool() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open_spool(dir.path());
    let spool = Arc::new(Mutex::new(spool));
    let got = Arc::new(Mutex::new(Vec::new()));
    let started = tokio::time::Instant::now();
    let counters = spooled(
        options(Duration::from_millis(100), None, Duration::from_secs(2)),
        Arc::new(Mutex::new(Vec::new())),
        spool.clone(),
        SlowInserter {
            delay: Duration::from_secs(60),
            got: got.clone(),
        },
        tokio::time::sleep(Duration::from_millis(1050)),
    )
    .await
    .unwrap();
    assert!(started.elapsed() <= Duration::from_millis(1050) + Duration::from_secs(2));
    assert_eq!(counters.reports, 11);
    assert!(got.lock().unwrap().is_empty());
    assert_eq!(spool.lock().unwrap().pending(), 11);
}

/// A database that can never take the reports (as when the driver refuses the options).
struct RefusingInserter;

impl Inserter for RefusingInserter {
    async fn insert(&mut self, _docs: &[Vec<u8>]) -> Result<InsertOutcome, InsertError> {
        Err(InsertError::Fatal(
            "write concern cannot have w=0 and j=true".into(),
        ))
    }
}

// Delivery that stops for good stops the agent (which systemd then restarts and shows as
// failed), with no shutdown request and no --count; what was sampled stays in the spool.
// Before, sampling went on and the error was seen only at the next stop.
#[tokio::test(start_paused = true)]
async fn a_delivery_that_can_never_work_stops_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open_spool(dir.path());
    let spool = Arc::new(Mutex::new(spool));
    let times = Arc::new(Mutex::new(Vec::new()));
    let run = spooled(
        options(Duration::from_millis(100), None, Duration::from_secs(2)),
        times.clone(),
        spool.clone(),
        RefusingInserter,
        std::future::pending(),
    );
    let result = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the agent went on sampling");
    let err = result.expect_err("the agent stopped without an error");
    assert!(err.to_string().contains("w=0 and j=true"), "{err}");
    // It stopped after the first insert, not some time later.
    assert!(
        times.lock().unwrap().len() <= 2,
        "{:?}",
        times.lock().unwrap().len()
    );
    assert_eq!(
        spool.lock().unwrap().pending(),
        times.lock().unwrap().len() as u64
    );
}

/// Records sample times, and stalls (in real time) on one sample, as a stuck bus does.
struct StallingSampler {
    times: Arc<Mutex<Vec<tokio::time::Instant>>>,
    stall_on: usize,
    stall: Duration,
}

impl Sampler for StallingSampler {
    fn sample(&mut self) -> (Result<Reading, SampleError>, Vec<(Sensor, HealthEvent)>) {
        let n = {
            let mut times = self.times.lock().unwrap();
            times.push(tokio::time::Instant::now());
            times.len() - 1
        };
        if n == self.stall_on {
            std::thread::sleep(self.stall);
        }
        ClockSampler {
            times: Arc::new(Mutex::new(Vec::new())),
        }
        .sample()
    }
}

// A sample that overruns its slot (real time: a stuck bus) makes the agent skip the slots it
// overran, counting them, rather than take them in a burst; sampling goes on afterwards.
#[tokio::test]
async fn overrun_slots_are_counted_and_skipped() {
    let interval = Duration::from_millis(20);
    let times = Arc::new(Mutex::new(Vec::new()));
    // Slots are counted from the start of the run: on a slow machine (qemu) the first sample
    // itself can be more than a slot late, and the slots it missed are counted too.
    let started = tokio::time::Instant::now();
    let mut opts = options(interval, Some(8), Duration::from_secs(5));
    // Real time here: the kernel's timer, as the agent runs.
    opts.ticker = agent::TickSource::Kernel;
    let counters = run_printing(
        opts,
        StallingSampler {
            times: times.clone(),
            stall_on: 1,
            stall: Duration::from_millis(75),
        },
        Box::new(std::io::sink()),
    )
    .await;
    let times = times.lock().unwrap();
    assert_eq!(counters.reports, 8);
    // Sample 1 ran from slot 1 into slot 4: slots 2 and 3 (at least) are missed.
    assert!(counters.missed_slots >= 2, "{counters:?}");
    // No burst: each sample is taken at or after its slot, so the last one's slot (samples
    // and skipped slots before it) is no later than the time it was taken, counted from the
    // start of the run (a slot's worth of slack for the first tick).
    let span = *times.last().unwrap() - started + interval;
    let last_slot = counters.reports - 1 + counters.missed_slots;
    assert!(
        u128::from(last_slot) <= span.as_nanos() / interval.as_nanos(),
        "slot {last_slot} taken after {span:?}: {counters:?}"
    );
}

/// Run the agent with `opts` and `sampler`, printing its reports to `out`; its counters.
async fn run_printing<S: Sampler>(
    opts: AgentOptions,
    sampler: S,
    out: Box<dyn std::io::Write + Send>,
) -> Counters {
    agent::run(
        opts,
        sampler,
        Output::Print(out),
        sensehat_monitor::sink::NoDatabase,
        None,
        std::future::pending(),
    )
    .await
    .unwrap()
}

/// Records when each insert was made and how many reports it carried.
struct RecordingInserter {
    inserts: Arc<Mutex<Vec<(tokio::time::Instant, usize)>>>,
}

impl Inserter for RecordingInserter {
    async fn insert(&mut self, docs: &[Vec<u8>]) -> Result<InsertOutcome, InsertError> {
        let now = tokio::time::Instant::now();
        self.inserts.lock().unwrap().push((now, docs.len()));
        all_stored(docs)
    }
}

// At the production interval with a 2 s window, an insert carries the four reports
// taken since the one before, and goes out with the sample that closes the window: no report
// waits longer than the window.
#[tokio::test(start_paused = true)]
async fn inserts_carry_the_reports_of_their_window() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Arc::new(Mutex::new(open_spool(dir.path())));
    let inserts = Arc::new(Mutex::new(Vec::new()));
    let times = Arc::new(Mutex::new(Vec::new()));
    let counters = spooled(
        options(Duration::from_millis(500), None, Duration::from_secs(5)),
        times.clone(),
        spool.clone(),
        RecordingInserter {
            inserts: inserts.clone(),
        },
        // Stop just after sample 42 (t = 21 s), inside a window holding two reports.
        tokio::time::sleep(Duration::from_millis(21_100)),
    )
    .await
    .unwrap();
    let inserts = inserts.lock().unwrap();
    let times = times.lock().unwrap();
    assert_eq!(counters.reports, 43);
    // Every report delivered: the stop sent what its window held.
    assert_eq!(counters.delivered, 43, "{inserts:?}");
    assert_eq!(spool.lock().unwrap().pending(), 0);
    let sizes: Vec<usize> = inserts.iter().map(|(_, n)| *n).collect();
    // The first report goes at once; then each window's four; the stop sends the last two.
    assert_eq!(sizes[0], 1, "{sizes:?}");
    assert!(
        sizes[1..sizes.len() - 1].iter().all(|&n| n == 4),
        "{sizes:?}"
    );
    assert_eq!(sizes.last(), Some(&2), "{sizes:?}");
    // Each insert is made at the time of a sample (the one that closed its window).
    let start = times[0];
    for (t, _) in inserts.iter().take(inserts.len() - 1) {
        assert!(
            times.contains(t),
            "insert at {:?} is not at a sample",
            *t - start
        );
    }
    // No report waited for longer than the window before its insert.
    let mut taken = times.iter();
    for (t, n) in inserts.iter() {
        for _ in 0..*n {
            let at = taken.next().unwrap();
            assert!(*t - *at <= Duration::from_secs(2), "waited {:?}", *t - *at);
        }
    }
}

// With no window (--insert-every 0) each report is inserted as soon as it is taken.
#[tokio::test(start_paused = true)]
async fn no_window_inserts_each_report_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Arc::new(Mutex::new(open_spool(dir.path())));
    let inserts = Arc::new(Mutex::new(Vec::new()));
    let mut opts = options(Duration::from_millis(500), Some(10), Duration::from_secs(5));
    opts.insert_every = Duration::ZERO;
    spooled(
        opts,
        Arc::new(Mutex::new(Vec::new())),
        spool.clone(),
        RecordingInserter {
            inserts: inserts.clone(),
        },
        std::future::pending(),
    )
    .await
    .unwrap();
    let sizes: Vec<usize> = inserts.lock().unwrap().iter().map(|(_, n)| *n).collect();
    assert_eq!(sizes, vec![1; 10]);
}

/// Refuses its first `failures` inserts as a database that cannot be reached would; records the
/// time of every attempt.
struct FlakyInserter {
    failures: usize,
    attempts: Arc<Mutex<Vec<tokio::time::Instant>>>,
}

impl Inserter for FlakyInserter {
    async fn insert(&mut self, docs: &[Vec<u8>]) -> Result<InsertOutcome, InsertError> {
        let mut attempts = self.attempts.lock().unwrap();
        attempts.push(tokio::time::Instant::now());
        if attempts.len() <= self.failures {
            return Err(InsertError::Unavailable("connection refused".into()));
        }
        all_stored(docs)
    }
}

// A failed insert is tried again when its back-off (0.5 s, then 1 s, ... with jitter up to as
// much again) is over, not when the insert window would have closed: the window spaces inserts
// that worked. Retries used to wait for the window too, 2 s here (5 s by default).
#[tokio::test(start_paused = true)]
async fn a_failed_insert_is_retried_after_its_back_off_not_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let counters = spooled(
        options(Duration::from_millis(500), Some(12), Duration::from_secs(5)),
        Arc::new(Mutex::new(Vec::new())),
        Arc::new(Mutex::new(open_spool(dir.path()))),
        FlakyInserter {
            failures: 2,
            attempts: attempts.clone(),
        },
        std::future::pending(),
    )
    .await
    .unwrap();
    assert_eq!(counters.delivered, 12);
    let attempts = attempts.lock().unwrap();
    let gaps: Vec<Duration> = attempts.windows(2).map(|w| w[1] - w[0]).collect();
    // Up to twice the back-off, and the paused clock rounds a sleep up to the millisecond.
    let ms = Duration::from_millis(1);
    assert!(gaps[0] <= Duration::from_secs(1) + ms, "{gaps:?}");
    assert!(gaps[1] <= Duration::from_secs(2) + ms, "{gaps:?}");
}

/// A database at the end of a slow link: a batch of more than `fits` reports does not arrive
/// within the insert's timeout (30 s, then the error the sink gives); smaller ones take 10 ms a
/// report. Records the size of every attempt.
struct SlowLink {
    fits: usize,
    sizes: Arc<Mutex<Vec<usize>>>,
}

impl Inserter for SlowLink {
    async fn insert(&mut self, docs: &[Vec<u8>]) -> Result<InsertOutcome, InsertError> {
        self.sizes.lock().unwrap().push(docs.len());
        if docs.len() > self.fits {
            tokio::time::sleep(Duration::from_secs(30)).await;
            return Err(InsertError::TimedOut(
                "insert not acknowledged within 30 s".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(10) * docs.len() as u32).await;
        all_stored(docs)
    }
}

// A backlog drains over a link too slow to carry a whole batch (10,000 reports) within the
// insert's timeout: each failure halves the next batch until one gets through. It used to be
// sent whole again after every timeout, and never drained.
#[tokio::test(start_paused = true)]
async fn a_backlog_drains_over_a_link_too_slow_for_a_whole_batch() {
    let dir = tempfile::tempdir().unwrap();
    let mut spool = open_spool(dir.path());
    let backlog: Vec<Vec<u8>> = (0..3000)
        .map(|i| {
            Report::new(
                "loop-test",
                reading(),
                1_700_000_000_000 + i,
                MovingRule::Axis,
            )
            .to_bson_bytes()
        })
        .collect();
    spool.append_all(&backlog, std::time::Instant::now());
    let sizes = Arc::new(Mutex::new(Vec::new()));
    let run = spooled(
        options(Duration::from_millis(500), Some(4), Duration::from_secs(5)),
        Arc::new(Mutex::new(Vec::new())),
        Arc::new(Mutex::new(spool)),
        SlowLink {
            fits: 500,
            sizes: sizes.clone(),
        },
        std::future::pending(),
    );
    let counters = tokio::time::timeout(Duration::from_secs(3600), run).await;
    let sizes = sizes.lock().unwrap();
    let counters = counters
        .unwrap_or_else(|_| panic!("not drained in an hour; batches tried: {sizes:?}"))
        .unwrap();
    assert_eq!(counters.delivered, 3004, "{sizes:?}");
}

/// Refuses for good the first report it is sent, every time it is sent again; takes the rest.
/// Sent a hundred times, it ends the run (a fatal error) rather than let a test spin.
#[derive(Default)]
struct RefusesTheFirst {
    refused: Option<Vec<u8>>,
    inserts: u32,
}

impl Inserter for RefusesTheFirst {
    async fn insert(&mut self, docs: &[Vec<u8>]) -> Result<InsertOutcome, InsertError> {
        self.inserts += 1;
        if self.inserts > 100 {
            return Err(InsertError::Fatal(
                "a hundred inserts: delivery loops".into(),
            ));
        }
        let first = self.refused.get_or_insert_with(|| docs[0].clone());
        let mut out = InsertOutcome::default();
        for (i, d) in docs.iter().enumerate() {
            if d == first {
                out.rejected
                    .push((i, "Document failed validation (code 121)".into()));
            } else {
                out.inserted += 1;
            }
        }
        Ok(out)
    }
}

// While a refused report cannot be saved (rejected.jsonl's name is taken by a directory), it
// comes round again with every insert, and delivery pauses after each; a stop during that pause
// still gets its last insert, so every other report is delivered.
#[tokio::test(start_paused = true)]
async fn a_stop_while_refused_reports_wait_still_sends_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("rejected.jsonl")).unwrap();
    let spool = Arc::new(Mutex::new(open_spool(dir.path())));
    let counters = spooled(
        options(Duration::from_millis(500), None, Duration::from_secs(5)),
        Arc::new(Mutex::new(Vec::new())),
        spool.clone(),
        RefusesTheFirst::default(),
        tokio::time::sleep(Duration::from_millis(10_100)),
    )
    .await
    .unwrap();
    assert_eq!(counters.reports, 21);
    assert_eq!(counters.delivered, 20, "{counters:?}");
    assert_eq!(counters.rejected, 0);
    // The refused one is kept, to be saved when it can be.
    assert_eq!(spool.lock().unwrap().pending(), 1);
}

// `--count`'s drain ends when all that is left is a refused report that cannot be saved: it
// stays in the spool for the next start. It used to come round for ever, and the run never
// ended.
#[tokio::test(start_paused = true)]
async fn a_drain_ends_with_only_an_unsaved_refused_report_left() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("rejected.jsonl")).unwrap();
    let spool = Arc::new(Mutex::new(open_spool(dir.path())));
    let run = spooled(
        options(Duration::from_millis(500), Some(5), Duration::from_secs(5)),
        Arc::new(Mutex::new(Vec::new())),
        spool.clone(),
        RefusesTheFirst::default(),
        std::future::pending(),
    );
    let counters = tokio::time::timeout(Duration::from_secs(3600), run)
        .await
        .expect("the drain never ended")
        .unwrap();
    assert_eq!(counters.delivered, 4, "{counters:?}");
    assert_eq!(spool.lock().unwrap().pending(), 1);
}

/// A writer into a buffer the test keeps.
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// `recordedAt` is when the sample's reads ended, as the original agent stamped it (it built
// its document after reading the sensors): a sample that takes long (an IIO read waits for a
// conversion, a sensor is initialised again) is stamped at its end, not at its slot.
#[tokio::test]
async fn a_report_is_stamped_when_its_reads_end() {
    stamped_after_a_stall(None).await;
}

// The same for a report held while the clock is not synchronized: let go (here at the stop),
// it is stamped from when its reads ended. Before, from when its sample began.
#[tokio::test]
async fn a_held_report_is_stamped_when_its_reads_end() {
    let dir = tempfile::tempdir().unwrap();
    // timesyncd's directory exists, its marker not yet: the clock is not synchronized.
    std::fs::create_dir(dir.path().join("timesync")).unwrap();
    stamped_after_a_stall(Some(sensehat_monitor::clock::ClockWait {
        marker: dir.path().join("timesync/synchronized"),
        wait: Duration::from_secs(60),
        copy: None,
        simulated_error_ms: 0,
    }))
    .await;
}

/// One sample whose reads take 300 ms, printed: its `recordedAt` is at least 300 ms after the
/// sample began.
async fn stamped_after_a_stall(clock: Option<sensehat_monitor::clock::ClockWait>) {
    let printed = Arc::new(Mutex::new(Vec::new()));
    let stall = Duration::from_millis(300);
    let mut opts = options(Duration::from_millis(20), Some(1), Duration::from_secs(5));
    opts.ticker = agent::TickSource::Kernel;
    opts.clock = clock;
    let before = sensehat_monitor::clock::now_ms();
    run_printing(
        opts,
        StallingSampler {
            times: Arc::new(Mutex::new(Vec::new())),
            stall_on: 0,
            stall,
        },
        Box::new(Captured(printed.clone())),
    )
    .await;
    let printed = String::from_utf8(printed.lock().unwrap().clone()).unwrap();
    let json: serde_json::Value = serde_json::from_str(printed.trim()).unwrap();
    let doc = mongodb::bson::Bson::try_from(json).unwrap();
    let stamped = doc
        .as_document()
        .unwrap()
        .get_datetime("recordedAt")
        .unwrap()
        .timestamp_millis();
    assert!(
        stamped >= before + stall.as_millis() as i64,
        "stamped {} ms after the sample began, which took {stall:?}",
        stamped - before
    );
}

/// Samples in place, but for the `nth` sample, which cannot be had at once (a read failed);
/// records the thread of each sample taken in full.
struct FailsInPlace {
    in_place: usize,
    nth: usize,
    full: Arc<Mutex<Vec<std::thread::ThreadId>>>,
}

impl Sampler for FailsInPlace {
    fn sample(&mut self) -> (Result<Reading, SampleError>, Vec<(Sensor, HealthEvent)>) {
        self.full.lock().unwrap().push(std::thread::current().id());
        (Ok(reading()), Vec::new())
    }

    fn blocking(&self) -> bool {
        false
    }

    fn sample_in_place(&mut self) -> Option<Sampled> {
        self.in_place += 1;
        (self.in_place != self.nth + 1).then(|| (Ok(reading()), Vec::new()))
    }
}

// A sample that cannot be had at once in place (its first read failed) is taken again, with
// its retries, on a blocking thread, not on the runtime's, where the bus's timeouts would hold
// up delivery, the metrics and the signals; the others stay in place.
#[tokio::test(start_paused = true)]
async fn a_sample_that_fails_in_place_is_taken_again_off_the_runtime() {
    let full = Arc::new(Mutex::new(Vec::new()));
    let counters = run_printing(
        options(Duration::from_millis(500), Some(5), Duration::from_secs(5)),
        FailsInPlace {
            in_place: 0,
            nth: 2,
            full: full.clone(),
        },
        Box::new(std::io::sink()),
    )
    .await;
    assert_eq!(counters.reports, 5);
    let full = full.lock().unwrap();
    assert_eq!(full.len(), 1, "only the sample that failed in place");
    assert_ne!(full[0], std::thread::current().id());
}
