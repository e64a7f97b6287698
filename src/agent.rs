//! The sampling loop and the delivery loop.
//!
//! Sampling runs on a fixed-rate schedule: sample n is due at `start + n * interval`, whatever
//! happened before. Each sample runs in a blocking thread (I2C is blocking), and its report is
//! appended to the spool in that same thread. A separate task delivers the spool to the
//! database in order, in batches, so a slow or absent database never shifts or stalls sampling.
//! If a sample itself overruns its slot (a stuck bus), the missed slots are skipped, not
//! burst, so every report keeps its place on the grid.
//!
//! Shutdown (SIGINT/SIGTERM, injected as a future): stop sampling, give the in-flight insert up
//! to `shutdown_timeout`, leave the rest in the spool. With `--count`, the agent waits instead
//! until everything in the spool, including any backlog found at start, is acknowledged.

use std::future::Future;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use backon::BackoffBuilder;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::board::{Board, HealthEvent, SampleError, Sensor};
use crate::clock::{self, now_ms, ClockGate, ClockWait, Released};
use crate::report::{Reading, Report};
use crate::sink::spool::{AppendOutcome, Batch, Spool, SpoolError};
use crate::sink::{InsertError, Inserter};
use crate::status::{SensorStatus, Status};

/// Slots ahead whose timers are kept registered (see `sample_loop`).
const TIMERS: usize = 3;

/// Most reports per `insert_many` when draining a backlog.
pub const BATCH_MAX: usize = 10_000;
/// Smallest gap between the starts of two inserts that are not full batches: at most four
/// small inserts a second. Under the default 500 ms interval every report still goes out as
/// soon as it is taken; faster sampling is batched. An insert costs the agent about four
/// samples' worth of CPU (round trip, wake-up, driver), so at 1 ms this is the difference
/// between 10 and 4 of them a second.
pub const MIN_INSERT_SPACING: Duration = Duration::from_millis(250);
/// Up to this many pending reports are read from the spool on the runtime's thread (they were
/// just written, so the read is a copy from the page cache); more go to a blocking thread.
pub const INLINE_READ_MAX: u64 = 64;
/// How often `status.json` is rewritten.
pub const STATUS_EVERY: Duration = Duration::from_secs(10);

/// Something that takes samples (blocking). The real and simulated boards implement it.
pub trait Sampler: Send + 'static {
    fn sample(&mut self) -> (Result<Reading, SampleError>, Vec<(Sensor, HealthEvent)>);
    /// Whether a sample blocks (real I2C): then it runs on a blocking thread. The simulator
    /// only touches memory and runs in place, which saves two thread hand-offs per sample.
    fn blocking(&self) -> bool {
        true
    }

    /// Per-sensor health, for `status`.
    fn sensors(&self) -> Vec<SensorStatus> {
        Vec::new()
    }
}

impl Sampler for Board {
    fn sample(&mut self) -> (Result<Reading, SampleError>, Vec<(Sensor, HealthEvent)>) {
        Board::sample(self)
    }

    fn blocking(&self) -> bool {
        matches!(self, Board::Linux(_))
    }

    fn sensors(&self) -> Vec<SensorStatus> {
        Sensor::ALL
            .iter()
            .zip(self.health())
            .map(|(s, h)| SensorStatus {
                name: s.name().to_owned(),
                ok: h.is_ok(),
                consecutive_failures: h.consecutive_failures,
                total_failures: h.total_failures,
            })
            .collect()
    }
}

/// Where reports go.
pub enum Output {
    /// `--dry-run`: one line of relaxed Extended JSON per report on this writer (stdout).
    Print(Box<dyn Write + Send>),
    /// The durable spool, delivered to the database by the given inserter.
    Spool {
        spool: Arc<Mutex<Spool>>,
        status_path: Option<PathBuf>,
    },
}

#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub node_name: String,
    pub interval: Duration,
    /// Stop after this many reports (and wait for them to be acknowledged).
    pub count: Option<u64>,
    pub shutdown_timeout: Duration,
    /// Tell systemd READY and ping its watchdog.
    pub notify_systemd: bool,
    /// Hold reports until the system clock is synchronized (see [`crate::clock`]); `None`
    /// trusts the clock as it is.
    pub clock: Option<ClockWait>,
}

/// Counters shared by the loops, for logs, `status.json` and the exit summary.
#[derive(Debug, Default, Clone)]
pub struct Counters {
    pub samples: u64,
    pub reports: u64,
    pub skipped: u64,
    pub missed_slots: u64,
    pub delivered: u64,
    pub duplicates: u64,
    pub rejected: u64,
    pub dropped: u64,
    /// Reports held until the system clock is synchronized.
    pub held_for_clock: u64,
    pub last_insert_ms: Option<i64>,
    pub connected: Option<bool>,
    pub last_error: Option<String>,
    pub sensors: Vec<SensorStatus>,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot write a report to standard output: {0}")]
    Print(std::io::Error),
    #[error("{0}")]
    Spool(#[from] crate::sink::spool::SpoolError),
    #[error("the database can never accept these reports: {0}")]
    Fatal(String),
    #[error("the sampling thread failed: {0}")]
    Join(String),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the delivery task should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Run,
    /// Deliver everything, then stop (`--count`).
    Drain,
    /// Stop after the in-flight batch (shutdown).
    Stop,
}

/// Run the agent until `count` reports are done or `shutdown` resolves.
pub async fn run<S, I>(
    options: AgentOptions,
    sampler: S,
    output: Output,
    inserter: I,
    shutdown: impl Future<Output = ()>,
) -> Result<Counters, AgentError>
where
    S: Sampler,
    I: Inserter,
{
    let counters = Arc::new(Mutex::new(Counters::default()));
    let notify = Arc::new(Notify::new());
    let delivery_idle = Arc::new(AtomicBool::new(true));
    let (mode_tx, mode_rx) = watch::channel(Mode::Run);
    let mut output = output;

    // Delivery that ends with an error (a connection string the driver refuses, a spool that
    // cannot be read) can never resume: sampling stops too, so the agent exits non-zero and
    // the failure is seen (systemd restarts it) instead of readings piling up unsent.
    let failed = Arc::new(Notify::new());
    let delivery = match &output {
        Output::Spool { spool, .. } => {
            let work = deliver(
                spool.clone(),
                inserter,
                mode_rx,
                notify.clone(),
                delivery_idle.clone(),
                lock(spool).pending(),
                counters.clone(),
            );
            let failed = failed.clone();
            Some(tokio::spawn(async move {
                let result = work.await;
                if result.is_err() {
                    error!("delivery to the database stopped for good; stopping the agent (unsent readings stay in the spool)");
                    failed.notify_one();
                }
                result
            }))
        }
        Output::Print(_) => None,
    };

    tokio::pin!(shutdown);
    let interrupted = {
        let stop = async {
            tokio::select! {
                () = &mut shutdown => {}
                () = failed.notified() => {}
            }
        };
        tokio::pin!(stop);
        sample_loop(
            &options,
            sampler,
            &mut output,
            &counters,
            &notify,
            &delivery_idle,
            &mut stop,
        )
        .await?
    };

    if let (Some(mut task), Output::Spool { spool, status_path }) = (delivery, &output) {
        let result = if interrupted || options.count.is_none() {
            let _ = mode_tx.send(Mode::Stop);
            match tokio::time::timeout(options.shutdown_timeout, &mut task).await {
                Ok(r) => Some(r),
                Err(_) => {
                    task.abort();
                    let pending = lock(spool).pending();
                    info!(
                        pending,
                        "shutdown timeout reached; undelivered reports stay in the spool"
                    );
                    None
                }
            }
        } else {
            let _ = mode_tx.send(Mode::Drain);
            notify.notify_one();
            tokio::select! {
                r = &mut task => Some(r),
                () = &mut shutdown => {
                    let _ = mode_tx.send(Mode::Stop);
                    tokio::time::timeout(options.shutdown_timeout, &mut task).await.ok()
                }
            }
        };
        // Always leave the spool consistent, even when delivery failed. A failure here is no
        // reason to exit non-zero: what was not synced is in the page cache, and a position
        // not written down only resends reports the database already has.
        if let Err(e) = lock(spool).close() {
            warn!(error = %e, "cannot sync the spool or write its delivered position at stop; some reports may be sent again at the next start (stored once)");
        }
        if let Some(path) = status_path {
            write_status(path, &lock(&counters), &lock(spool));
        }
        match result {
            Some(Ok(Err(e))) => return Err(e),
            Some(Err(join)) if !join.is_cancelled() => {
                return Err(AgentError::Join(join.to_string()))
            }
            _ => {}
        }
    }
    let c = lock(&counters).clone();
    Ok(c)
}

/// The fixed-rate sampling loop. Returns true when stopped by `shutdown`. Reports still held
/// for the clock when it stops go on as they are (see [`crate::clock`]).
async fn sample_loop<S: Sampler>(
    options: &AgentOptions,
    sampler: S,
    output: &mut Output,
    counters: &Arc<Mutex<Counters>>,
    notify: &Arc<Notify>,
    delivery_idle: &Arc<AtomicBool>,
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Result<bool, AgentError> {
    let mut state = LoopState {
        gate: ClockGate::start(options.clock.as_ref(), Instant::now()),
        log: SpoolLog::default(),
        notify,
        delivery_idle,
    };
    let result = sample_on_schedule(options, sampler, output, counters, &mut state, shutdown).await;
    if let Some(released) = state.gate.stop(Instant::now()) {
        lock(counters).held_for_clock = 0;
        emit(released, output, counters, &mut state.log).await?;
        notify.notify_one();
    }
    result
}

/// What the sampling loop keeps from one sample to the next. Reports held for the clock
/// outlive the loop: they still go out when it ends.
struct LoopState<'a> {
    gate: ClockGate,
    log: SpoolLog,
    /// Wakes the delivery task, when `delivery_idle` says it waits for work.
    notify: &'a Notify,
    delivery_idle: &'a AtomicBool,
}

/// Log lines about the spool's health, each once per change.
#[derive(Default)]
struct SpoolLog {
    disk_failing: bool,
    dropping: bool,
    /// The held readings' spool (see [`crate::clock`]) could not be written.
    held_failing: bool,
    /// Syncing the spool or writing its delivered position failed.
    maintain_failing: bool,
}

impl SpoolLog {
    fn note_maintain(&mut self, maintain: Result<bool, SpoolError>) {
        match (maintain, self.maintain_failing) {
            (Err(e), false) => {
                warn!(error = %e, "cannot sync the spool or write its delivered position; a power cut now could lose the last second of readings, or resend some already delivered");
                self.maintain_failing = true;
            }
            (Ok(true), true) => {
                info!("the spool is synced and its delivered position written again");
                self.maintain_failing = false;
            }
            _ => {}
        }
    }

    /// The held readings' spool: only its disk errors matter (it has no cap, and what it
    /// holds is in memory too).
    fn note_held(&mut self, append: &AppendOutcome, maintain: Result<bool, SpoolError>) {
        let error = append
            .disk_error
            .clone()
            .or_else(|| maintain.err().map(|e| e.to_string()));
        match (error, self.held_failing) {
            (Some(e), false) => {
                warn!(error = %e, "cannot write the copy of the readings held for the clock; a power cut now would lose them");
                self.held_failing = true;
            }
            (None, true) if append.wrote => {
                info!("the copy of the readings held for the clock is written again");
                self.held_failing = false;
            }
            _ => {}
        }
    }

    fn note(&mut self, append: &AppendOutcome, counters: &Mutex<Counters>) {
        match (&append.disk_error, self.disk_failing) {
            (Some(e), false) => {
                error!(error = %e, "cannot write the spool (disk full or read-only?); keeping new reports in memory until it can be written again");
                self.disk_failing = true;
            }
            (None, true) if append.wrote => {
                info!(
                    moved = append.recovered_from_memory,
                    "spool writable again; reports held in memory moved to disk"
                );
                self.disk_failing = false;
            }
            _ => {}
        }
        if append.dropped > 0 {
            lock(counters).dropped += append.dropped;
            if !self.dropping {
                warn!("spool is full (--spool-max-bytes): dropping the oldest undelivered reports; the count is logged when delivery catches up");
                self.dropping = true;
            }
        } else if self.dropping && lock(counters).connected == Some(true) {
            info!(
                dropped = lock(counters).dropped,
                "spool below its cap again; reports dropped so far"
            );
            self.dropping = false;
        }
    }
}

/// Reports that were held for the clock, printed or appended to the spool in order; then
/// their on-disk copy is deleted, once they are synced in the spool.
async fn emit(
    released: Released,
    output: &mut Output,
    counters: &Mutex<Counters>,
    log: &mut SpoolLog,
) -> Result<(), AgentError> {
    match output {
        Output::Print(w) => {
            for r in &released.reports {
                writeln!(w, "{}", r.to_relaxed_json_line()).map_err(AgentError::Print)?;
            }
            w.flush().map_err(AgentError::Print)?;
        }
        Output::Spool { spool, .. } => {
            let spool = spool.clone();
            // Up to HELD_MAX reports, a sync and a directory to delete: off the runtime.
            let append = tokio::task::spawn_blocking(move || {
                let payloads: Vec<Vec<u8>> =
                    released.reports.iter().map(Report::to_bson_bytes).collect();
                let mut sp = lock(&spool);
                let append = sp.append_all(&payloads, std::time::Instant::now());
                let synced = sp.flush();
                drop(sp);
                if let Some((dir, held)) = released.copy {
                    // Closed before its directory goes (the sampling thread let go of it).
                    drop(held);
                    match (&append.disk_error, synced) {
                        (None, Ok(())) => clock::discard_held(&dir),
                        // The copy is what survives a power cut now; the next start moves it.
                        (_, Err(e)) => {
                            warn!(error = %e, "cannot sync the spool; the held readings' copy is kept")
                        }
                        (Some(_), Ok(())) => {}
                    }
                }
                append
            })
            .await
            .map_err(|e| AgentError::Join(e.to_string()))?;
            log.note(&append, counters);
        }
    }
    Ok(())
}

async fn sample_on_schedule<S: Sampler>(
    options: &AgentOptions,
    sampler: S,
    output: &mut Output,
    counters: &Arc<Mutex<Counters>>,
    state: &mut LoopState<'_>,
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Result<bool, AgentError> {
    let LoopState {
        gate,
        log,
        notify,
        delivery_idle,
    } = state;
    let start = Instant::now();
    let interval = options.interval.max(Duration::from_millis(1));
    let mut slot: u64 = 0;
    let mut sampler = Some(sampler);
    let mut ready_sent = false;
    let mut last_status: Option<Instant> = None;
    let mut last_behind_log: Option<Instant> = None;
    let mut timers: [_; TIMERS] = std::array::from_fn(|n| {
        Box::pin(tokio::time::sleep_until(slot_time(
            start, interval, n as u64,
        )))
    });
    let watchdog = if options.notify_systemd {
        sd_notify::watchdog_enabled()
    } else {
        None
    };
    loop {
        if options.count.is_some_and(|n| lock(counters).reports >= n) {
            return Ok(false);
        }
        let due = slot_time(start, interval, slot);
        // A timer for each of the next TIMERS slots, all registered: re-arming a fired timer
        // for a slot earlier than any timer still pending makes tokio wake its own driver (an
        // eventfd write and an extra epoll round). With later slots waiting, re-arming costs
        // nothing, even when tokio's 1 ms ticks fire two slots at once (one sample in eight
        // at --interval-ms 1 here), which with only two timers left none pending.
        for n in slot..slot + TIMERS as u64 {
            let t = &mut timers[(n % TIMERS as u64) as usize];
            if t.deadline() != slot_time(start, interval, n) {
                t.as_mut().reset(slot_time(start, interval, n));
            }
        }
        // Wait for the slot, pinging systemd's watchdog meanwhile when intervals are long; a
        // sample stuck on the bus stops the pings (the await below), and systemd restarts us.
        loop {
            let ping_at = watchdog.map(|w| Instant::now() + w / 2);
            tokio::select! {
                biased;
                () = &mut *shutdown => {
                    info!("shutdown requested: sampling stopped");
                    return Ok(true);
                }
                () = timers[(slot % TIMERS as u64) as usize].as_mut() => break,
                () = async { tokio::time::sleep_until(ping_at.unwrap_or(due)).await }, if ping_at.is_some_and(|p| p < due) => {
                    let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                }
            }
        }

        let write_status_now = last_status.is_none_or(|t| t.elapsed() >= STATUS_EVERY);
        let holding = gate.holding();
        let store = match &*output {
            Output::Spool { spool, status_path } => Some(Store {
                spool: spool.clone(),
                status_path: if write_status_now {
                    status_path.clone()
                } else {
                    None
                },
                counters: counters.clone(),
                interval,
                held: holding.then(|| gate.copy()),
            }),
            Output::Print(_) => None,
        };
        let has_store = store.is_some();
        // Read the clock only when it is needed: a clock read is a measurable part of a sample.
        let taken_at = holding.then(Instant::now);
        let mut s = sampler.take().expect("sampler is returned by every sample");
        let (s, taken) = if s.blocking() {
            let node = options.node_name.clone();
            // Real I2C blocks for milliseconds: keep it off the runtime.
            tokio::task::spawn_blocking(move || {
                let t = take(&mut s, &node, store.as_ref());
                (s, t)
            })
            .await
            .map_err(|e| AgentError::Join(e.to_string()))?
        } else {
            let t = take(&mut s, &options.node_name, store.as_ref());
            // Let go of the held readings' spool now: a release below deletes its directory.
            drop(store);
            (s, t)
        };
        sampler = Some(s);
        if write_status_now && has_store {
            last_status = Some(Instant::now());
        }
        let Taken {
            outcome,
            events,
            sensors,
            stored,
        } = taken;
        if let Some(sensors) = sensors {
            lock(counters).sensors = sensors;
        }

        for (sensor, event) in events {
            match event {
                HealthEvent::StartedFailing => warn!(
                    sensor = sensor.name(),
                    "sensor read failed; skipping samples and re-initialising it"
                ),
                HealthEvent::Dead => error!(
                    sensor = sensor.name(),
                    "sensor has failed for a minute; still retrying every sample"
                ),
                HealthEvent::Recovered { failures } => {
                    info!(sensor = sensor.name(), failures, "sensor recovered")
                }
                HealthEvent::None => {}
            }
        }

        {
            let mut c = lock(counters);
            c.samples += 1;
            match &outcome {
                Ok(_) => c.reports += 1,
                Err(e) => {
                    c.skipped += 1;
                    debug!(error = %e, "sample skipped");
                }
            }
        }

        if let Ok(report) = outcome {
            if holding {
                // In the held reports' spool, not the spool: it waits for the clock.
                if let Some((append, maintain)) = stored {
                    log.note_held(&append, maintain);
                }
                let _ = gate.hold(report, taken_at.unwrap_or_else(Instant::now));
                lock(counters).held_for_clock = gate.held() as u64;
            } else {
                match output {
                    Output::Print(w) => {
                        writeln!(w, "{}", report.to_relaxed_json_line())
                            .and_then(|()| w.flush())
                            .map_err(AgentError::Print)?;
                    }
                    Output::Spool { .. } => {
                        let (append, maintain) = stored.expect("stored with a spool");
                        log.note_maintain(maintain);
                        log.note(&append, counters);
                        // Wake delivery only when it waits for work: while it is busy or spacing its
                        // inserts it will find this report anyway, and a needless wake-up per sample
                        // costs an eventfd write and an epoll round.
                        if delivery_idle.load(Ordering::SeqCst) {
                            notify.notify_one();
                        }
                    }
                }
            }
            if !ready_sent {
                ready_sent = true;
                if options.notify_systemd {
                    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
                }
            }
        }
        if let Some(released) = gate.poll_if_watching(Instant::now) {
            lock(counters).held_for_clock = 0;
            emit(released, output, counters, log).await?;
            notify.notify_one();
        }
        if options.notify_systemd {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
        }

        // Next slot on the grid; if this sample overran, skip the slots already past.
        slot += 1;
        let elapsed = Instant::now().duration_since(start);
        let current = (elapsed.as_nanos() / interval.as_nanos()) as u64;
        if current > slot {
            let missed = current - slot;
            let total = {
                let mut c = lock(counters);
                c.missed_slots += missed;
                c.missed_slots
            };
            if last_behind_log.is_none_or(|t: Instant| t.elapsed() >= Duration::from_secs(60)) {
                warn!(
                    missed_in_total = total,
                    "sampling fell behind its schedule; missed slots are skipped, not made up"
                );
                last_behind_log = Some(Instant::now());
            }
            slot = current;
        }
    }
}

/// When sample `n` is due: `start + n * interval`.
fn slot_time(start: Instant, interval: Duration, n: u64) -> Instant {
    let nanos = interval.as_nanos().saturating_mul(u128::from(n));
    start + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// What a sample produced, in whichever thread it was taken.
struct Taken {
    outcome: Result<Report, SampleError>,
    events: Vec<(Sensor, HealthEvent)>,
    /// A fresh health snapshot, when one was taken.
    sensors: Option<Vec<SensorStatus>>,
    /// The spool append and maintenance results, when there is a spool.
    stored: Option<(AppendOutcome, Result<bool, SpoolError>)>,
}

/// The spool side of taking a sample.
struct Store {
    spool: Arc<Mutex<Spool>>,
    /// While the clock is not synchronized: reports are held, and written to the held reports'
    /// spool, if there is one, instead (see [`crate::clock`]).
    held: Option<Option<clock::HeldSpool>>,
    /// Set when status.json is due.
    status_path: Option<PathBuf>,
    counters: Arc<Mutex<Counters>>,
    /// When the next sample is due, from now: reports closer together are written in groups.
    interval: Duration,
}

/// Take one sample and append its report to the spool, or to the held reports' spool (blocking:
/// I2C and file I/O).
fn take<S: Sampler>(s: &mut S, node: &str, store: Option<&Store>) -> Taken {
    let recorded_at = now_ms();
    let (result, events) = s.sample();
    let outcome = result.map(|r| Report::new(node, r, recorded_at));
    let stored = store.and_then(|store| {
        let now = std::time::Instant::now();
        if let (Ok(report), None) = (&outcome, &store.held) {
            let mut sp = lock(&store.spool);
            let append = sp.append_encoded(|b| report.write_bson(b), now, store.interval);
            return Some((append, sp.maintain(now)));
        }
        // Held: the report goes to the held readings' spool, which is maintained (synced, its
        // group written) whatever the sample gave.
        let stored = match &store.held {
            Some(Some(copy)) => {
                let mut h = lock(copy);
                let append = outcome
                    .as_ref()
                    .ok()
                    .map(|r| h.append_encoded(|b| r.write_bson(b), now, store.interval));
                let maintain = h.maintain(now);
                append.map(|a| (a, maintain))
            }
            _ => None,
        };
        // Nothing written to the spool, but reports waiting for their group must not wait on
        // failing samples.
        if let Err(e) = lock(&store.spool).maintain(now) {
            debug!(error = %e, "spool maintenance failed");
        }
        stored
    });
    // Health snapshots allocate; take one only when it can have changed or is about to be shown.
    let snapshot =
        !events.is_empty() || outcome.is_err() || store.is_some_and(|s| s.status_path.is_some());
    let sensors = snapshot.then(|| s.sensors());
    // Whatever the sample gave, with this sample's sensor health.
    if let Some((p, store)) = store.and_then(|st| st.status_path.as_ref().map(|p| (p, st))) {
        let mut c = lock(&store.counters).clone();
        if let Some(now) = &sensors {
            c.sensors.clone_from(now);
        }
        write_status(p, &c, &lock(&store.spool));
    }
    Taken {
        sensors,
        outcome,
        events,
        stored,
    }
}

/// Delivery state changes worth one log line each.
struct Link {
    connected: Option<bool>,
    /// A backlog is being sent (found at start, or piled up during an outage): its end is
    /// logged once, with what it took.
    draining: bool,
    backlog_delivered: u64,
    backlog_duplicates: u64,
    /// Refused reports could not be saved (said once until they can).
    reject_failing: bool,
    /// When refused reports were last logged, and how many since.
    rejected_logged: Option<Instant>,
    rejected_unlogged: u64,
}

async fn deliver<I: Inserter>(
    spool: Arc<Mutex<Spool>>,
    mut inserter: I,
    mut mode: watch::Receiver<Mode>,
    notify: Arc<Notify>,
    idle: Arc<AtomicBool>,
    backlog_at_start: u64,
    counters: Arc<Mutex<Counters>>,
) -> Result<(), AgentError> {
    let backoff_builder = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(Duration::from_secs(60))
        .with_factor(2.0)
        .with_jitter()
        .without_max_times();
    let mut backoff = backoff_builder.build();
    let mut link = Link {
        connected: None,
        // A backlog is what the spool held at start or what piles up during an outage.
        draining: backlog_at_start > 0,
        backlog_delivered: 0,
        backlog_duplicates: 0,
        reject_failing: false,
        rejected_logged: None,
        rejected_unlogged: 0,
    };
    let mut last_insert: Option<Instant> = None;
    loop {
        let m = *mode.borrow();
        if m == Mode::Stop {
            return Ok(());
        }
        // At most one small insert per MIN_INSERT_SPACING: at 2 Hz every report still goes out
        // at once, while faster sampling is batched instead of costing a round trip (and an
        // Atlas operation) per report. A full batch (a backlog) is never held back.
        // With nothing pending there is nothing to space out: go idle at once rather than
        // waking when the spacing ends only to find nothing (at 2 Hz that was two more
        // wake-ups and a blocking-thread round trip per report).
        // When draining for exit (`--count`) no more reports will come to batch with: no wait.
        if let (Some(t), Mode::Run) = (last_insert, m) {
            let next = t + MIN_INSERT_SPACING;
            let pending = lock(&spool).pending() as usize;
            if Instant::now() < next && pending > 0 && pending < BATCH_MAX {
                tokio::select! {
                    () = tokio::time::sleep_until(next) => {}
                    r = mode.wait_for(|m| *m != Mode::Run) => {
                        if r.map_or(true, |m| *m == Mode::Stop) {
                            return Ok(());
                        }
                    }
                }
            }
        }
        // Say we may go idle before looking, so a report appended after the look wakes us.
        idle.store(true, Ordering::SeqCst);
        let pending = lock(&spool).pending();
        let batch = if pending == 0 {
            None
        } else if pending <= INLINE_READ_MAX && lock(&spool).unwritten() == 0 {
            // A few reports, just written and still in the page cache: reading them here costs
            // less than handing the read to a blocking thread and back. Not when some wait to
            // be written: writing them may roll the segment over, which syncs the last one.
            Some(lock(&spool).next_batch(BATCH_MAX)?)
        } else {
            let sp = spool.clone();
            Some(
                tokio::task::spawn_blocking(move || lock(&sp).next_batch(BATCH_MAX))
                    .await
                    .map_err(|e| AgentError::Join(e.to_string()))??,
            )
        };
        let Some(mut batch) = batch.filter(|b| !b.records.is_empty()) else {
            if m == Mode::Drain {
                return Ok(());
            }
            tokio::select! {
                () = notify.notified() => {}
                _ = mode.changed() => {}
            }
            continue;
        };
        idle.store(false, Ordering::SeqCst);
        last_insert = Some(Instant::now());
        match inserter.insert(&batch.records).await {
            Ok(outcome) => {
                if !outcome.rejected.is_empty() {
                    let dir = lock(&spool).dir().to_owned();
                    let rejected = outcome.rejected.clone();
                    let (batch_back, saved) = tokio::task::spawn_blocking(move || {
                        let saved = reject(&dir, &batch, &rejected);
                        (batch, saved)
                    })
                    .await
                    .map_err(|e| AgentError::Join(e.to_string()))?;
                    batch = batch_back;
                    if let Err(e) = saved {
                        // Kept in the spool: sent again (the accepted ones count as already
                        // present) once the refused ones can be saved.
                        lock(&spool).rewind();
                        if !link.reject_failing {
                            error!(error = %e, "cannot save reports the database refused to rejected.jsonl in the spool directory; keeping them in the spool and retrying");
                            link.reject_failing = true;
                        }
                        if stopped_while_backing_off(&mut backoff, &mut mode).await {
                            return Ok(());
                        }
                        continue;
                    }
                    link.reject_failing = false;
                }
                backoff = backoff_builder.build();
                let pending = {
                    let mut sp = lock(&spool);
                    sp.ack(&batch);
                    sp.pending()
                };
                {
                    let mut c = lock(&counters);
                    c.delivered += outcome.inserted + outcome.duplicates;
                    c.duplicates += outcome.duplicates;
                    c.rejected += outcome.rejected.len() as u64;
                    c.last_insert_ms = Some(now_ms());
                    c.connected = Some(true);
                    c.last_error = None;
                }
                if link.connected != Some(true) {
                    info!(pending, "connected to MongoDB");
                    link.connected = Some(true);
                }
                if link.draining {
                    link.backlog_delivered += outcome.inserted + outcome.duplicates;
                    link.backlog_duplicates += outcome.duplicates;
                    if pending == 0 {
                        info!(
                            delivered = link.backlog_delivered,
                            already_present = link.backlog_duplicates,
                            "backlog drained"
                        );
                        link.draining = false;
                        link.backlog_delivered = 0;
                        link.backlog_duplicates = 0;
                    }
                }
                if !outcome.rejected.is_empty() {
                    link.rejected_unlogged += outcome.rejected.len() as u64;
                    // The first time, then at most once a minute with the count since.
                    if link
                        .rejected_logged
                        .is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
                    {
                        error!(count = link.rejected_unlogged, reason = %outcome.rejected[0].1, "the database refused reports; saved to rejected.jsonl in the spool directory");
                        link.rejected_logged = Some(Instant::now());
                        link.rejected_unlogged = 0;
                    }
                }
            }
            Err(InsertError::Fatal(msg)) => {
                lock(&spool).rewind();
                return Err(AgentError::Fatal(msg));
            }
            Err(InsertError::Unavailable(msg)) => {
                lock(&spool).rewind();
                if link.connected != Some(false) {
                    warn!(error = %msg, "MongoDB unavailable; reports are kept in the spool and retried with back-off");
                    link.connected = Some(false);
                    link.draining = true;
                    link.backlog_delivered = 0;
                    link.backlog_duplicates = 0;
                }
                {
                    let mut c = lock(&counters);
                    c.connected = Some(false);
                    c.last_error = Some(msg);
                }
                if stopped_while_backing_off(&mut backoff, &mut mode).await {
                    return Ok(());
                }
            }
        }
    }
}

/// Wait out the next back-off delay; true if a stop was asked for meanwhile.
async fn stopped_while_backing_off(
    backoff: &mut impl Iterator<Item = Duration>,
    mode: &mut watch::Receiver<Mode>,
) -> bool {
    let delay = backoff.next().unwrap_or(Duration::from_secs(60));
    tokio::select! {
        () = tokio::time::sleep(delay) => false,
        _ = mode.wait_for(|m| *m == Mode::Stop) => true,
    }
}

/// Largest `rejected.jsonl` before it is moved to `rejected.jsonl.1` (replacing the one
/// before): the two keep the newest 20 MiB of refused reports whatever the database refuses
/// for however long (a validator refusing every report at 2 Hz writes about 50 MB a day).
pub const REJECTED_MAX: u64 = 10 * 1024 * 1024;

/// Keep refused reports as relaxed Extended JSON lines next to the spool, with the reason,
/// synced: the spool lets go of them once this returns Ok.
fn reject(
    dir: &std::path::Path,
    batch: &Batch,
    rejected: &[(usize, String)],
) -> std::io::Result<()> {
    let path = dir.join("rejected.jsonl");
    let mut lines = String::new();
    for (i, reason) in rejected {
        let doc = batch
            .records
            .get(*i)
            .and_then(|b| mongodb::bson::Document::from_reader(&mut b.as_slice()).ok());
        let line = serde_json::json!({
            "reason": reason,
            "report": doc.map(|d| crate::report::relaxed_json(&d)),
        });
        lines.push_str(&line.to_string());
        lines.push('\n');
    }
    if std::fs::metadata(&path).is_ok_and(|m| m.len() >= REJECTED_MAX) {
        std::fs::rename(&path, dir.join("rejected.jsonl.1"))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)?;
    f.write_all(lines.as_bytes())?;
    f.sync_data()
}

fn write_status(path: &std::path::Path, c: &Counters, spool: &Spool) {
    let status = Status {
        pid: std::process::id(),
        updated_ms: now_ms(),
        samples: c.samples,
        reports: c.reports,
        skipped_samples: c.skipped,
        missed_slots: c.missed_slots,
        delivered: c.delivered,
        duplicates: c.duplicates,
        rejected: c.rejected,
        dropped: spool.dropped_total.max(c.dropped),
        pending: spool.pending(),
        held_for_clock: c.held_for_clock,
        last_insert_ms: c.last_insert_ms,
        connected: c.connected,
        last_error: c.last_error.clone(),
        sensors: c.sensors.clone(),
    };
    if let Err(e) = status.write(path) {
        debug!(error = %e, "cannot write status file");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::spool::BatchSource;

    // Past REJECTED_MAX the file moves to rejected.jsonl.1 (replacing the one before), so the
    // two stay under twice that whatever the database refuses.
    #[test]
    fn rejected_reports_file_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let batch = Batch {
            source: BatchSource::Memory,
            records: vec![mongodb::bson::rawdoc! { "n": 1 }.into_bytes()],
        };
        let refused = [(0, "E11000".to_owned())];
        let path = dir.path().join("rejected.jsonl");
        let old = dir.path().join("rejected.jsonl.1");
        std::fs::write(&old, "older").unwrap();
        reject(dir.path(), &batch, &refused).unwrap();
        assert_eq!(std::fs::read_to_string(&old).unwrap(), "older");
        std::fs::write(&path, vec![b'x'; REJECTED_MAX as usize]).unwrap();
        reject(dir.path(), &batch, &refused).unwrap();
        assert_eq!(std::fs::metadata(&old).unwrap().len(), REJECTED_MAX);
        let now = std::fs::read_to_string(&path).unwrap();
        assert_eq!(now.lines().count(), 1);
        assert!(now.contains("E11000") && now.contains("\"n\":1"), "{now}");
    }
}
