//! The fixed-rate sampling loop: sample n is taken at `start + n * interval`, and its report
//! appended to the spool (or held for the clock, see [`crate::clock`]) in the thread that
//! took it.

use std::future::Future;
use std::io::Write;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use super::matrix::{agent_state, Matrix};
use super::spool_log::{Dropped, SpoolEvent, SpoolLog};
use super::take::{take, Destination, Store, Stored, Taken};
use super::ticker::{TickSource, Ticker};
use super::watchdog::Watchdog;
use super::{lock, AgentError, AgentOptions, Output, Sampler, Shared, Telemetry, STATUS_EVERY};
use crate::board::{HealthEvent, Sensor, SensorError};
use crate::clock::{self, ClockGate, Released};
use crate::led::status::SpoolUse;
use crate::report::Report;
use crate::sink::spool::{AppendOutcome, Spool, MEMORY_MAX};

/// How long after the first line that sampling fell behind the next may come; each later one
/// waits twice as long as the one before, up to [`BEHIND_LOG_MAX`]: a board that can never keep
/// up (sensors read through the kernel's slow IIO drivers) would otherwise say so once a
/// minute for as long as it runs.
const BEHIND_LOG_EVERY: Duration = Duration::from_secs(60);
/// The longest wait between two lines that sampling fell behind.
const BEHIND_LOG_MAX: Duration = Duration::from_secs(3600);

/// The fixed-rate sampling loop, showing its state on `matrix` when that asks for it. Returns
/// true when stopped by `shutdown`. Reports still held for the clock when it stops go on as
/// they are (see [`crate::clock`]).
pub(super) async fn sample_loop<S: Sampler>(
    options: &AgentOptions,
    sampler: S,
    output: &mut Output,
    matrix: Option<&mut Matrix>,
    shared: &Shared,
    shutdown: &mut Pin<&mut impl Future<Output = ()>>,
) -> Result<bool, AgentError> {
    let mut sampling = Sampling {
        options,
        output,
        shared,
        matrix: matrix.filter(|m| m.shows_status()),
        spool_use: SpoolUse::default(),
        sampler: Some(sampler),
        gate: ClockGate::start(options.clock.as_ref(), Instant::now()),
        log: SpoolLog::default(),
        interval: options.interval.max(Duration::from_millis(1)),
        ready_sent: false,
        last_status: None,
    };
    let result = sampling.on_schedule(shutdown).await;
    if let Some(released) = sampling.gate.stop(Instant::now()) {
        sampling.release(released).await?;
    }
    result
}

/// What the sampling loop keeps from one sample to the next. Reports held for the clock
/// outlive the loop: they still go out when it ends.
struct Sampling<'a, S> {
    options: &'a AgentOptions,
    output: &'a mut Output,
    shared: &'a Shared,
    /// The LED matrix, when its corner shows the agent's state (`--led-status`).
    matrix: Option<&'a mut Matrix>,
    /// What the spool held after the last sample, when the matrix shows it.
    spool_use: SpoolUse,
    /// Lent to the thread that takes each sample.
    sampler: Option<S>,
    gate: ClockGate,
    log: SpoolLog,
    interval: Duration,
    ready_sent: bool,
    last_status: Option<Instant>,
}

/// The grid of slots: `start + n * interval`. The ticker skips the slots a sample overran, so
/// each tick stays on the grid; `slot` counts along to say how many were skipped.
struct Schedule {
    start: Instant,
    interval: Duration,
    slot: u64,
    ticker: Ticker,
    behind_log: BehindLog,
}

/// When to say next that sampling fell behind.
#[derive(Default)]
struct BehindLog {
    /// When it was last said, and how long until it may be said again.
    last: Option<(Instant, Duration)>,
}

impl BehindLog {
    /// Whether to say it at `now`; if so, the next time waits twice as long (up to
    /// [`BEHIND_LOG_MAX`]).
    fn due(&mut self, now: Instant) -> bool {
        let every = match self.last {
            None => BEHIND_LOG_EVERY,
            Some((at, wait)) if now.duration_since(at) >= wait => (wait * 2).min(BEHIND_LOG_MAX),
            Some(_) => return false,
        };
        self.last = Some((now, every));
        true
    }
}

impl Schedule {
    fn new(interval: Duration, source: TickSource) -> Schedule {
        let (start, ticker) = Ticker::start(source, interval);
        Schedule {
            start,
            interval,
            slot: 0,
            ticker,
            behind_log: BehindLog::default(),
        }
    }

    /// When the current slot is due.
    fn due(&self) -> Instant {
        slot_time(self.start, self.interval, self.slot)
    }

    /// On to the next slot; if the sample overran, skip the slots already past. Returns how
    /// many were skipped.
    fn advance(&mut self) -> u64 {
        self.slot += 1;
        let elapsed = Instant::now().duration_since(self.start);
        let current = (elapsed.as_nanos() / self.interval.as_nanos()) as u64;
        if current <= self.slot {
            return 0;
        }
        let missed = current - self.slot;
        self.slot = current;
        missed
    }
}

impl<S: Sampler> Sampling<'_, S> {
    async fn on_schedule(
        &mut self,
        shutdown: &mut Pin<&mut impl Future<Output = ()>>,
    ) -> Result<bool, AgentError> {
        let mut schedule = Schedule::new(self.interval, self.options.ticker);
        let mut watchdog = Watchdog::from_env(self.options.notify_systemd);
        loop {
            let reports = lock(&self.shared.counters).reports;
            if self.options.count.is_some_and(|n| reports >= n) {
                return Ok(false);
            }
            if !wait_for_slot(&mut schedule, watchdog.as_mut(), shutdown).await {
                info!("shutdown requested: sampling stopped");
                return Ok(true);
            }
            self.sample_once().await?;
            let missed = schedule.advance();
            if missed > 0 {
                self.fell_behind(missed, &mut schedule.behind_log);
            }
            if let Some(w) = watchdog.as_mut() {
                w.ping_before(schedule.due());
            }
        }
    }

    /// Count slots skipped after an overrun, and say so when `log` says it is time.
    fn fell_behind(&self, missed: u64, log: &mut BehindLog) {
        let total = {
            let mut c = lock(&self.shared.counters);
            c.missed_slots += missed;
            c.missed_slots
        };
        if log.due(Instant::now()) {
            warn!(
                missed_in_total = total,
                "sampling fell behind its schedule; missed slots are skipped, not made up"
            );
        }
    }

    /// Take the slot's sample, and send its report on (or hold it for the clock).
    async fn sample_once(&mut self) -> Result<(), AgentError> {
        let write_status_now = self.last_status.is_none_or(|t| t.elapsed() >= STATUS_EVERY);
        let holding = self.gate.holding();
        let store = self.store(write_status_now, holding);
        let has_store = store.is_some();
        let taken = self.take(store).await?;
        if write_status_now && has_store {
            self.last_status = Some(Instant::now());
        }
        let Taken {
            outcome,
            read_at,
            events,
            sensors,
            stored,
            maintained,
            spool_use,
        } = taken;
        if let Some(e) = maintained.and_then(|m| self.log.maintained(&m)) {
            log_spool(e);
        }
        if let Some(sensors) = sensors {
            lock(&self.shared.counters).sensors = sensors;
        }
        if let Some(u) = spool_use {
            self.spool_use = u;
        }
        for (sensor, event) in events {
            log_health(
                sensor,
                event,
                outcome.as_ref().err().and_then(|e| e.of(sensor)),
            );
        }
        {
            let mut c = lock(&self.shared.counters);
            c.samples += 1;
            match &outcome {
                Ok(r) => {
                    c.reports += 1;
                    if !holding {
                        c.oldest_unsent_ms.get_or_insert(r.recorded_at_ms);
                    }
                }
                Err(e) => {
                    c.skipped_samples += 1;
                    debug!(error = %e, "sample skipped");
                }
            }
        }
        match outcome {
            Ok(report) if holding => self.hold(report, stored, read_at),
            Ok(report) => self.send(report, stored)?,
            // Nothing was appended, but the held readings' copy was maintained (synced).
            Err(_) => {
                if let Some((append, maintain)) = stored {
                    if let Some(e) = self.log.held_written(&append, &maintain) {
                        log_spool(e);
                    }
                }
            }
        }
        // Ready once the loop has sampled, whatever the sample gave: ready only after a
        // reading, a sensor failing from the start would have systemd stop the agent at its
        // start timeout and start it again, for ever.
        self.say_ready();
        if let Some(released) = self.gate.poll_if_watching(Instant::now) {
            self.release(released).await?;
        }
        self.show_state().await;
        // Every sample, stored or not, wakes delivery when it waits: for work, or for the
        // sample that closes its insert window. While it is busy it finds new reports anyway.
        if self.shared.delivery_idle.load(Ordering::SeqCst) {
            self.shared.notify.notify_one();
        }
        Ok(())
    }

    /// With `--led-status`, show the agent's state as it is after this sample (the matrix is
    /// written only when what it shows changes).
    async fn show_state(&mut self) {
        let Some(matrix) = self.matrix.as_deref_mut() else {
            return;
        };
        let printing = matches!(&*self.output, Output::Print(_));
        let state = agent_state(
            &lock(&self.shared.counters),
            printing,
            self.gate.holding(),
            self.spool_use,
        );
        matrix.update(&state).await;
    }

    /// The spool side of this sample, when there is a spool.
    fn store(&self, write_status_now: bool, holding: bool) -> Option<Store> {
        let Output::Spool { spool, status_path } = &*self.output else {
            return None;
        };
        let destination = match (holding, self.gate.copy()) {
            (false, _) => Destination::Spool,
            (true, Some(copy)) => Destination::Held(copy),
            (true, None) => Destination::HeldInMemory,
        };
        Some(Store {
            spool: spool.clone(),
            // Copied only when due: most samples write neither.
            status_path: status_path.as_ref().filter(|_| write_status_now).cloned(),
            textfile: self
                .options
                .telemetry
                .as_ref()
                .filter(|_| write_status_now)
                .and_then(Telemetry::textfile),
            counters: self.shared.counters.clone(),
            interval: self.interval,
            insert_every: self.options.insert_every,
            destination,
            measure: self.matrix.is_some(),
        })
    }

    /// Take the sample: on a blocking thread when it may block for long (see
    /// [`Sampler::blocking`]) or could not be had at once in place (see
    /// [`Sampler::sample_in_place`]), else in place.
    async fn take(&mut self, store: Option<Store>) -> Result<Taken, AgentError> {
        let mut s = self
            .sampler
            .take()
            .expect("sampler is returned by every sample");
        let in_place = if s.blocking() {
            None
        } else {
            s.sample_in_place()
        };
        let (s, taken) = if let Some(sampled) = in_place {
            let t = take(
                &mut s,
                Some(sampled),
                &self.options.node_name,
                self.options.moving_rule,
                store.as_ref(),
            );
            // Let go of the held readings' spool now: a release after this deletes its
            // directory.
            drop(store);
            (s, t)
        } else {
            let node = self.options.node_name.clone();
            let rule = self.options.moving_rule;
            tokio::task::spawn_blocking(move || {
                let t = take(&mut s, None, &node, rule, store.as_ref());
                (s, t)
            })
            .await
            .map_err(|e| AgentError::Join(e.to_string()))?
        };
        self.sampler = Some(s);
        Ok(taken)
    }

    /// Keep a report until the clock is synchronized; it is in the held reports' spool already.
    fn hold(&mut self, report: Report, stored: Option<Stored>, taken_at: Instant) {
        if let Some((append, maintain)) = stored {
            if let Some(e) = self.log.held_written(&append, &maintain) {
                log_spool(e);
            }
        }
        let _ = self.gate.hold(report, taken_at);
        lock(&self.shared.counters).held_for_clock = self.gate.held() as u64;
    }

    /// A report taken with the clock trusted: print it, or (appended to the spool already)
    /// wake delivery for it.
    fn send(&mut self, report: Report, stored: Option<Stored>) -> Result<(), AgentError> {
        match &mut *self.output {
            Output::Print(w) => writeln!(w, "{}", report.to_relaxed_json_line())
                .and_then(|()| w.flush())
                .map_err(AgentError::Print),
            Output::Spool { .. } => {
                let (append, maintain) = stored.expect("stored with a spool");
                if let Some(e) = self.log.maintained(&maintain) {
                    log_spool(e);
                }
                self.appended(&append);
                Ok(())
            }
        }
    }

    /// Count what an append to the spool dropped, and say what changed.
    fn appended(&mut self, append: &AppendOutcome) {
        let (connected, dropped) = {
            let mut c = lock(&self.shared.counters);
            c.dropped += append.dropped + append.dropped_from_memory;
            c.dropped_from_memory += append.dropped_from_memory;
            let dropped = Dropped {
                by_cap: c.dropped.saturating_sub(c.dropped_from_memory),
                from_memory: c.dropped_from_memory,
            };
            (c.connected == Some(true), dropped)
        };
        for e in self.log.appended(append, connected, dropped) {
            log_spool(e);
        }
    }

    /// Tell systemd the agent is ready, once: after its first report.
    fn say_ready(&mut self) {
        if !self.ready_sent {
            self.ready_sent = true;
            if self.options.notify_systemd {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
            }
        }
    }

    /// Reports that were held for the clock, printed or appended to the spool in order; then
    /// their on-disk copy is deleted, once they are synced in the spool.
    async fn release(&mut self, released: Released) -> Result<(), AgentError> {
        lock(&self.shared.counters).held_for_clock = 0;
        match &mut *self.output {
            Output::Print(w) => {
                for r in &released.reports {
                    writeln!(w, "{}", r.to_relaxed_json_line()).map_err(AgentError::Print)?;
                }
                w.flush().map_err(AgentError::Print)?;
            }
            Output::Spool { spool, .. } => {
                let spool = spool.clone();
                // Up to HELD_MAX reports, a sync and a directory to delete: off the runtime.
                let append = tokio::task::spawn_blocking(move || move_released(released, &spool))
                    .await
                    .map_err(|e| AgentError::Join(e.to_string()))?;
                self.appended(&append);
            }
        }
        self.shared.notify.notify_one();
        Ok(())
    }
}

/// Wait for the schedule's current slot, pinging systemd's watchdog meanwhile when samples are
/// further apart than its pings must be; a sample stuck on the bus stops the pings (the caller
/// awaits it), and systemd restarts us. False when `shutdown` came first.
async fn wait_for_slot(
    schedule: &mut Schedule,
    mut watchdog: Option<&mut Watchdog>,
    shutdown: &mut Pin<&mut impl Future<Output = ()>>,
) -> bool {
    let due = schedule.due();
    loop {
        let ping_at = watchdog.as_ref().and_then(|w| w.due());
        tokio::select! {
            biased;
            () = &mut *shutdown => return false,
            _ = schedule.ticker.tick() => return true,
            () = async { tokio::time::sleep_until(ping_at.unwrap_or(due)).await }, if ping_at.is_some_and(|p| p < due) => {
                if let Some(w) = watchdog.as_deref_mut() {
                    w.ping();
                }
            }
        }
    }
}

/// Append released reports to the spool and sync it; then close and delete their copy
/// (blocking).
fn move_released(released: Released, spool: &Mutex<Spool>) -> AppendOutcome {
    let payloads: Vec<Vec<u8>> = released.reports.iter().map(Report::to_bson_bytes).collect();
    let mut sp = lock(spool);
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
}

/// One line for a change in a sensor's health, with why it failed (and what to do) when it
/// did.
fn log_health(sensor: Sensor, event: HealthEvent, why: Option<&SensorError>) {
    let error = why.map(tracing::field::display);
    match event {
        HealthEvent::StartedFailing { unsaid_runs: 0 } => warn!(
            sensor = sensor.name(),
            error, "sensor read failed; skipping samples and re-initialising it"
        ),
        HealthEvent::StartedFailing { unsaid_runs } => warn!(
            sensor = sensor.name(),
            error,
            unsaid_runs,
            "sensor read failed again; skipping samples and re-initialising it. Since the last such line it failed and recovered unsaid_runs times more, each within a minute of a line and not logged: a loose connection?"
        ),
        HealthEvent::Dead => error!(
            sensor = sensor.name(),
            error, "sensor has failed for a minute; still retrying every sample"
        ),
        HealthEvent::Recovered { failures } => {
            info!(sensor = sensor.name(), failures, "sensor recovered")
        }
        HealthEvent::StartedFailingUnsaid | HealthEvent::RecoveredUnsaid | HealthEvent::None => {}
    }
}

/// One line for a change in the spool's health.
pub(super) fn log_spool(event: SpoolEvent) {
    match event {
        SpoolEvent::MaintainFailing { error } => {
            warn!(error = %error, "cannot sync the spool or write its delivered position; a power cut now could lose the readings not yet synced, or resend some already delivered")
        }
        SpoolEvent::MaintainRecovered => {
            info!("the spool is safe again: what a failed sync left is synced or delivered, and its delivered position is written")
        }
        SpoolEvent::HeldFailing { error } => {
            warn!(error = %error, "cannot write the copy of the readings held for the clock; a power cut now would lose them")
        }
        SpoolEvent::HeldRecovered => {
            info!("the copy of the readings held for the clock is written again")
        }
        SpoolEvent::DiskFailing { error } => {
            error!(error = %error, "cannot write the spool (disk full or read-only?); keeping new reports in memory until it can be written again")
        }
        SpoolEvent::DiskRecovered { moved } => info!(
            moved,
            "spool writable again; reports held in memory moved to disk"
        ),
        SpoolEvent::Full => {
            warn!("spool is full (--spool-max-bytes): dropping the oldest undelivered reports; the count is logged when delivery catches up")
        }
        SpoolEvent::BelowCap { dropped } => {
            info!(dropped, "spool below its cap again; reports dropped so far")
        }
        SpoolEvent::MemoryFull => {
            error!(limit = MEMORY_MAX, "the spool still cannot be written and the reports kept in memory meanwhile are at their limit: dropping the oldest of them; free space on the spool's filesystem, or make it writable again (is it mounted read-only?)")
        }
        SpoolEvent::MemoryBelowMax { dropped } => info!(
            dropped,
            "reports kept in memory are below their limit again (written to disk, or being delivered); reports dropped from memory so far"
        ),
    }
}

/// When sample `n` is due: `start + n * interval`.
fn slot_time(start: Instant, interval: Duration, n: u64) -> Instant {
    let nanos = interval.as_nanos().saturating_mul(u128::from(n));
    start + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Falling behind is said at once, then after 1, 2, 4 ... minutes, and at most hourly: a
    // board that never keeps up says so a few times a day, not once a minute for ever.
    #[test]
    fn falling_behind_is_said_ever_less_often() {
        let start = Instant::now();
        let mut log = BehindLog::default();
        let said: Vec<u64> = (0..=4 * 3600)
            .step_by(30)
            .filter(|&s| log.due(start + Duration::from_secs(s)))
            .collect();
        assert_eq!(said, [0, 60, 180, 420, 900, 1860, 3780, 7380, 10980]);
    }
}
