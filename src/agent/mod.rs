//! The sampling loop and the delivery loop.
//!
//! Sampling runs on a fixed-rate schedule: sample n is due at `start + n * interval`, whatever
//! happened before. Each sample is taken in place, or on a blocking thread while a sensor fails
//! (see [`Sampler::blocking`]), and its report is appended to the spool in that same thread. A
//! separate task delivers the spool to the database in order, in batches, so a slow or absent
//! database never shifts or stalls sampling.
//! If a sample itself overruns its slot (a stuck bus), the missed slots are skipped, not
//! burst, so every report keeps its place on the grid.
//!
//! Shutdown (SIGINT/SIGTERM, injected as a future): stop sampling, give the in-flight insert up
//! to `shutdown_timeout`, leave the rest in the spool. With `--count`, the agent waits instead
//! until everything in the spool, including any backlog found at start, is acknowledged.
//!
//! # Layout
//!
//! - this module: [`run`], which starts both loops and stops them, and its options.
//! - `sampling`: the fixed-rate loop; `take`: one sample, in the thread that takes it.
//! - `delivery`: the spool to the database, in order, with back-off.
//! - `link` and `spool_log`: pure state that decides which delivery and spool changes are
//!   worth a log line; the loops log them.
//! - `rejected`: `rejected.jsonl`, where reports the database refused are kept.
//! - `status`: writing `status.json`.
//! - `matrix`: the LED matrix: the state the corner shows (`--led-status`), cleared at stop.
//! - `start`: opening the spool for a run ([`open_spool`]).
//! - [`check`]: the `check-config` command.

use std::future::Future;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::board::{Board, Health, Sampled, Sensor};
use crate::clock::ClockWait;
use crate::report::MovingRule;
use crate::sink::spool::Spool;
use crate::sink::Inserter;
pub use crate::status::Counters;
use crate::status::SensorStatus;

pub mod check;
mod delivery;
mod link;
mod matrix;
mod rejected;
mod sampling;
mod spool_log;
mod start;
mod status;
mod take;
mod telemetry;
pub mod ticker;
mod watchdog;

pub use check::{check_config, CheckConfig};
pub use delivery::BATCH_MAX;
pub use matrix::Matrix;
pub use rejected::REJECTED_MAX;
pub use start::{open_spool, OpenSpoolError, OpenedSpool, LOCK_FILE};
pub use telemetry::Telemetry;
pub use ticker::{TickSource, Ticker};

pub use crate::status::STATUS_EVERY;

/// Something that takes samples (blocking). The real and simulated boards implement it.
pub trait Sampler: Send + 'static {
    /// Read every sensor once: the reading, or why there is none, and the health changes.
    fn sample(&mut self) -> Sampled;
    /// Whether the next sample may block for long: then it runs on a blocking thread, so the
    /// runtime's other tasks (delivery, metrics) go on meanwhile. Otherwise it runs in place.
    fn blocking(&self) -> bool {
        true
    }

    /// The sample taken in place (when [`Sampler::blocking`] said it may be), or `None` when
    /// it cannot be had at once (a read failed), with nothing recorded: it is then taken again
    /// with [`Sampler::sample`] on a blocking thread.
    fn sample_in_place(&mut self) -> Option<Sampled> {
        Some(self.sample())
    }

    /// Per-sensor health, for `status`.
    fn sensors(&self) -> Vec<SensorStatus> {
        Vec::new()
    }
}

impl Sampler for Board {
    fn sample(&mut self) -> Sampled {
        Board::sample(self)
    }

    /// One read of each sensor in place, and the sample again on a blocking thread at the
    /// first that fails: a bus that has just stuck would otherwise hold the runtime for every
    /// retry's timeout (nine reads, a second each on the Pi's controller).
    fn sample_in_place(&mut self) -> Option<Sampled> {
        Board::sample_at_once(self)
    }

    /// A sample of the real board is a few milliseconds on the bus (about 2.5 ms at the Pi's
    /// default 100 kHz), which the runtime's other tasks can wait for, where handing it to a
    /// blocking thread and back costs two more thread switches a sample. Once a sensor fails,
    /// its reads can wait out the bus's timeouts and its re-initialisation's pauses, so samples
    /// go to a blocking thread until every sensor reads fine again. The simulator follows the
    /// same rule, so that its fault plans take both paths. A sensor read through a kernel
    /// driver's IIO files waits for a conversion at each read, so such a board always samples
    /// on a blocking thread.
    fn blocking(&self) -> bool {
        !self.health().iter().all(Health::is_ok) || self.reads_iio()
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
                last_error: h.last_error.clone(),
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
        /// The spool, shared by the sampling thread (which appends) and delivery.
        spool: Arc<Mutex<Spool>>,
        /// Where `status.json` goes; `None` writes none.
        status_path: Option<PathBuf>,
    },
}

/// How the agent runs: what [`run`] needs of the configuration.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// `nodeName` of each report.
    pub node_name: String,
    /// How each report's `isMoving` is decided (`--moving-rule`).
    pub moving_rule: MovingRule,
    /// Time between samples (at least 1 ms).
    pub interval: Duration,
    /// Reports taken within this long of the last insert go out together in the next one
    /// (zero: each as soon as it is taken).
    pub insert_every: Duration,
    /// Stop after this many reports (and wait for them to be acknowledged).
    pub count: Option<u64>,
    /// On shutdown, how long the in-flight insert may take.
    pub shutdown_timeout: Duration,
    /// What wakes sampling at each slot: the kernel's timer, or (for tests on paused time)
    /// tokio's.
    pub ticker: TickSource,
    /// Tell systemd READY and ping its watchdog.
    pub notify_systemd: bool,
    /// Hold reports until the system clock is synchronized (see [`crate::clock`]); `None`
    /// trusts the clock as it is.
    pub clock: Option<ClockWait>,
    /// Metrics (`--metrics-listen`, `--metrics-textfile`): the loops count into its counters.
    pub telemetry: Option<Telemetry>,
}

/// Why the agent stopped on its own.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// `--dry-run` output could not be written (a closed pipe).
    #[error("cannot write a report to standard output: {0}")]
    Print(std::io::Error),
    /// The spool could not be read.
    #[error("{0}")]
    Spool(#[from] crate::sink::spool::SpoolError),
    /// The database refuses every insert for a reason retrying cannot fix.
    #[error("the database can never accept these reports: {0}")]
    Fatal(String),
    /// A sampling or delivery thread panicked.
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

/// The delivery task, and what the sampling loop uses to drive it.
struct Delivery {
    task: JoinHandle<Result<(), AgentError>>,
    mode: watch::Sender<Mode>,
}

/// What both loops share.
struct Shared {
    counters: Arc<Mutex<Counters>>,
    /// Wakes the delivery task, when `delivery_idle` says it waits for work.
    notify: Arc<Notify>,
    delivery_idle: Arc<AtomicBool>,
    /// Delivery ended with an error it cannot recover from.
    failed: Arc<Notify>,
}

/// Run the agent until `count` reports are done or `shutdown` resolves. The LED `matrix`, if
/// there is one, is cleared when it stops, whatever the outcome.
pub async fn run<S, I>(
    options: AgentOptions,
    sampler: S,
    output: Output,
    inserter: I,
    matrix: Option<Matrix>,
    shutdown: impl Future<Output = ()>,
) -> Result<Counters, AgentError>
where
    S: Sampler,
    I: Inserter,
{
    let mut matrix = matrix;
    let result = run_loops(
        options,
        sampler,
        output,
        inserter,
        matrix.as_mut(),
        shutdown,
    )
    .await;
    if let Some(m) = matrix {
        m.clear().await;
    }
    result
}

/// [`run`], but for clearing the matrix.
async fn run_loops<S, I>(
    options: AgentOptions,
    sampler: S,
    output: Output,
    inserter: I,
    matrix: Option<&mut Matrix>,
    shutdown: impl Future<Output = ()>,
) -> Result<Counters, AgentError>
where
    S: Sampler,
    I: Inserter,
{
    let shared = Shared {
        counters: options.telemetry.as_ref().map_or_else(
            || Arc::new(Mutex::new(Counters::default())),
            Telemetry::counters,
        ),
        notify: Arc::new(Notify::new()),
        delivery_idle: Arc::new(AtomicBool::new(true)),
        failed: Arc::new(Notify::new()),
    };
    // The last insert the previous run had acknowledged: after a restart during an outage,
    // `status` and `last_insert_age_seconds` go on counting from it, not from "never" and
    // from this start (which would also restart the no-readings alert's clock at each restart).
    if let Output::Spool {
        status_path: Some(path),
        ..
    } = &output
    {
        // Not one from ahead of the clock (a Pi restarting with its clock behind, no network
        // to set it), which would read as an insert just made until the clock passed it.
        let previous = crate::status::Status::read(path)
            .and_then(|s| s.counters.last_insert_ms)
            .filter(|&ms| ms <= crate::clock::now_ms());
        lock(&shared.counters).last_insert_ms = previous;
    }
    let mut output = output;
    let delivery = match &output {
        Output::Spool { spool, .. } => Some(start_delivery(spool, inserter, &shared, &options)),
        Output::Print(_) => None,
    };

    tokio::pin!(shutdown);
    let interrupted = {
        let stop = async {
            tokio::select! {
                () = &mut shutdown => {}
                () = shared.failed.notified() => {}
            }
        };
        tokio::pin!(stop);
        sampling::sample_loop(&options, sampler, &mut output, matrix, &shared, &mut stop).await?
    };

    if let (Some(delivery), Output::Spool { spool, status_path }) = (delivery, &output) {
        let drain = !interrupted && options.count.is_some();
        let result = finish_delivery(delivery, drain, spool, &options, &shared, shutdown).await;
        // Always leave the spool consistent, even when delivery failed. A failure here is no
        // reason to exit non-zero: what was not synced is in the page cache, and a position
        // not written down only resends reports the database already has.
        if let Err(e) = lock(spool).close() {
            warn!(error = %e, "cannot sync the spool or write its delivered position at stop; some reports may be sent again at the next start (stored once)");
        }
        // Reports the disk could not take even now end with the process: say so, and count
        // them, rather than leave them among the pending.
        let (lost, dir, totals) = {
            let mut s = lock(spool);
            let lost = s.discard_memory();
            (
                lost,
                s.dir().to_owned(),
                (s.dropped_total, s.dropped_from_memory_total),
            )
        };
        {
            // The spool's own totals also have what writes at close dropped, which no append
            // passed on to the counters.
            let mut c = lock(&shared.counters);
            c.dropped = (c.dropped + lost).max(totals.0);
            c.dropped_from_memory = (c.dropped_from_memory + lost).max(totals.1);
        }
        if lost > 0 {
            if dir.join(crate::clock::HELD_DIR).is_dir() {
                error!(lost, spool_dir = %dir.display(), "the spool's disk is still full or read-only at stop: the reports held in memory are lost, apart from readings held for the clock, whose copy in held/ goes out at the next start; free space on that disk");
            } else {
                error!(lost, spool_dir = %dir.display(), "the spool's disk is still full or read-only at stop: the reports held in memory are lost; free space on that disk");
            }
        }
        // Said once the spool is closed, so that the count is what it holds.
        if result.is_none() {
            let pending = lock(spool).pending();
            if pending > 0 {
                info!(
                    pending,
                    "shutdown timeout reached; undelivered reports stay in the spool"
                );
            }
        }
        if let Some(path) = status_path {
            let counters = lock(&shared.counters).clone();
            status::write_status(path, counters, &lock(spool), options.interval);
        }
        if let Some(textfile) = options.telemetry.as_ref().and_then(Telemetry::textfile) {
            textfile.write();
        }
        match result {
            Some(Ok(Err(e))) => return Err(e),
            Some(Err(join)) if !join.is_cancelled() => {
                return Err(AgentError::Join(join.to_string()))
            }
            _ => {}
        }
    }
    let c = lock(&shared.counters).clone();
    Ok(c)
}

/// Spawn the delivery task. Delivery that ends with an error (a connection string the driver
/// refuses, a spool that cannot be read) can never resume: sampling stops too, so the agent
/// exits non-zero and the failure is seen (systemd restarts it) instead of readings piling up
/// unsent.
fn start_delivery<I: Inserter>(
    spool: &Arc<Mutex<Spool>>,
    inserter: I,
    shared: &Shared,
    options: &AgentOptions,
) -> Delivery {
    let (mode, mode_rx) = watch::channel(Mode::Run);
    let work = delivery::deliver(delivery::DeliveryParts {
        spool: spool.clone(),
        inserter,
        mode: mode_rx,
        notify: shared.notify.clone(),
        idle: shared.delivery_idle.clone(),
        backlog_at_start: lock(spool).pending(),
        counters: shared.counters.clone(),
        insert_every: options.insert_every,
        telemetry: options.telemetry.clone(),
    });
    let failed = shared.failed.clone();
    let task = tokio::spawn(async move {
        let result = work.await;
        if result.is_err() {
            error!("delivery to the database stopped for good; stopping the agent (unsent readings stay in the spool)");
            failed.notify_one();
        }
        result
    });
    Delivery { task, mode }
}

type Finished = Option<Result<Result<(), AgentError>, tokio::task::JoinError>>;

/// Sampling has stopped: stop delivery after its in-flight batch and one more of what is
/// pending (if the database answers), within the shutdown timeout,
/// or with `drain` (`--count`) let it deliver everything first, unless `shutdown` comes.
/// `None` when it was cut short.
async fn finish_delivery(
    delivery: Delivery,
    drain: bool,
    spool: &Mutex<Spool>,
    options: &AgentOptions,
    shared: &Shared,
    mut shutdown: std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Finished {
    let Delivery {
        mut task,
        mode: mode_tx,
    } = delivery;
    if !drain {
        return stop_delivery(task, &mode_tx, options.shutdown_timeout).await;
    }
    let _ = mode_tx.send(Mode::Drain);
    shared.notify.notify_one();
    // Sampling, which kept the spool synced, has ended; while the drain waits for the
    // database, what it waits with is synced here, as it would be while sampling.
    let mut maintenance = tokio::time::interval(Duration::from_secs(1));
    let mut log = spool_log::SpoolLog::default();
    loop {
        tokio::select! {
            r = &mut task => return Some(r),
            _ = maintenance.tick() => {
                let maintained = lock(spool).maintain(std::time::Instant::now());
                if let Some(event) = log.maintained(&maintained) {
                    sampling::log_spool(event);
                }
            }
            () = shutdown.as_mut() => {
                return stop_delivery(task, &mode_tx, options.shutdown_timeout).await;
            }
        }
    }
}

/// Tell delivery to stop and wait for it up to `timeout`; `None` when it was cut short.
async fn stop_delivery(
    mut task: JoinHandle<Result<(), AgentError>>,
    mode: &watch::Sender<Mode>,
    timeout: Duration,
) -> Finished {
    let _ = mode.send(Mode::Stop);
    let finished = tokio::time::timeout(timeout, &mut task).await.ok();
    if finished.is_none() {
        // Ended before the spool is closed: an ack after it would take the wrong ones.
        task.abort();
        let _ = (&mut task).await;
    }
    finished
}

#[cfg(test)]
mod tests {
    use super::*;

    // A board samples in place while every sensor reads, and on a blocking thread from its
    // first failed sample until the sensor reads again.
    #[test]
    fn a_board_samples_in_place_until_a_sensor_fails() {
        let plan = crate::board::SimPlan {
            faults: vec!["hts221:2:3".parse().unwrap()],
            ..Default::default()
        };
        let mut board = Board::open_sim(plan).unwrap();
        let in_place: Vec<bool> = (0..8)
            .map(|_| {
                let before = !Sampler::blocking(&board);
                let _ = board.sample();
                before
            })
            .collect();
        assert_eq!(
            in_place,
            [true, true, true, false, false, false, true, true]
        );
    }
}
