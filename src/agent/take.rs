//! Taking one sample, in whichever thread it runs (blocking: I2C and file I/O): the reading,
//! its report appended where it goes, and `status.json` when it is due.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::status::write_status;
use super::telemetry::Textfile;
use super::{lock, Counters, Sampler};
use crate::board::{HealthEvent, SampleError, Sampled, Sensor};
use crate::clock::{now_ms, HeldSpool};
use crate::led::status::SpoolUse;
use crate::report::{MovingRule, Report};
use crate::sink::spool::{AppendOutcome, Spool, SpoolError, MEMORY_MAX};
use crate::status::SensorStatus;

/// The spool append and maintenance results of one sample.
pub(super) type Stored = (AppendOutcome, Result<bool, SpoolError>);

/// What a sample produced, in whichever thread it was taken.
pub(super) struct Taken {
    pub(super) outcome: Result<Report, SampleError>,
    /// When the reads ended, which a report held for the clock is stamped from once let go.
    pub(super) read_at: Instant,
    pub(super) events: Vec<(Sensor, HealthEvent)>,
    /// A fresh health snapshot, when one was taken.
    pub(super) sensors: Option<Vec<SensorStatus>>,
    /// The spool append and maintenance results, when there is a spool.
    pub(super) stored: Option<Stored>,
    /// The spool's maintenance result when the sample appended nothing to it (the sample
    /// failed, or its report was held for the clock): syncs and position writes go on then.
    pub(super) maintained: Option<Result<bool, SpoolError>>,
    /// What the spool holds, when [`Store::measure`] asked.
    pub(super) spool_use: Option<SpoolUse>,
}

/// Where a sample's report is written.
pub(super) enum Destination {
    /// The spool: the clock is trusted.
    Spool,
    /// The held reports' spool: the report waits for the clock (see [`crate::clock`]).
    Held(HeldSpool),
    /// Held in memory only: there is no held reports' spool.
    HeldInMemory,
}

/// The spool side of taking a sample.
pub(super) struct Store {
    pub(super) spool: Arc<Mutex<Spool>>,
    pub(super) destination: Destination,
    /// Set when status.json is due.
    pub(super) status_path: Option<PathBuf>,
    /// Set when status.json is due and `--metrics-textfile` is given.
    pub(super) textfile: Option<Textfile>,
    pub(super) counters: Arc<Mutex<Counters>>,
    /// When the next sample is due, from now: reports closer together are written in groups.
    pub(super) interval: Duration,
    /// `--insert-every`: reports within it wait for their insert by design.
    pub(super) insert_every: Duration,
    /// Say what the spool holds (for the LED's corner).
    pub(super) measure: bool,
}

/// Take one sample (unless `sampled` is one taken already) and append its report to the spool,
/// or to the held reports' spool (blocking: I2C and file I/O).
pub(super) fn take<S: Sampler>(
    s: &mut S,
    sampled: Option<Sampled>,
    node: &str,
    moving_rule: MovingRule,
    store: Option<&Store>,
) -> Taken {
    let (result, events) = sampled.unwrap_or_else(|| s.sample());
    // When the reads ended, as the original agent stamped its document: a sample that waits
    // (an IIO conversion, a sensor initialised again) would otherwise describe a later moment
    // than its stamp.
    let recorded_at = now_ms();
    let read_at = Instant::now();
    let outcome = result.map(|r| Report::new(node, r, recorded_at, moving_rule));
    let (stored, maintained) = match store {
        Some(store) => write(store, outcome.as_ref().ok()),
        None => (None, None),
    };
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
        write_status(p, c, &lock(&store.spool), store.interval);
    }
    if let Some(textfile) = store.and_then(|st| st.textfile.as_ref()) {
        textfile.write();
    }
    let spool_use = store.filter(|s| s.measure).map(|s| {
        let sp = lock(&s.spool);
        // Of n readings taken an interval apart, the one just taken has waited nothing and
        // the oldest n - 1 intervals.
        let older = u32::try_from(sp.pending().saturating_sub(1)).unwrap_or(u32::MAX);
        SpoolUse {
            waiting: s
                .interval
                .saturating_mul(older)
                .saturating_sub(s.insert_every),
            bytes: sp.bytes(),
            cap: sp.max_bytes(),
            in_memory: sp.in_memory(),
            memory_max: MEMORY_MAX as u64,
        }
    });
    Taken {
        sensors,
        outcome,
        read_at,
        events,
        stored,
        maintained,
        spool_use,
    }
}

/// Write a sample's report where it goes, and maintain that spool (blocking); and the spool's
/// maintenance result when the report did not go to it.
fn write(
    store: &Store,
    report: Option<&Report>,
) -> (Option<Stored>, Option<Result<bool, SpoolError>>) {
    let now = std::time::Instant::now();
    if let (Some(report), Destination::Spool) = (report, &store.destination) {
        let mut sp = lock(&store.spool);
        let append = sp.append_encoded(|b| report.write_bson(b), now, store.interval);
        return (Some((append, sp.maintain(now))), None);
    }
    // Held: the report goes to the held readings' spool, which is maintained (synced, its
    // group written) whatever the sample gave.
    let stored = match &store.destination {
        Destination::Held(copy) => {
            let mut h = lock(copy);
            // Nothing appended when the sample failed; its maintenance is said all the same.
            let append = report.map_or_else(AppendOutcome::default, |r| {
                h.append_encoded(|b| r.write_bson(b), now, store.interval)
            });
            Some((append, h.maintain(now)))
        }
        Destination::Spool | Destination::HeldInMemory => None,
    };
    // Nothing written to the spool, but reports waiting for their group must not wait on
    // failing samples, nor syncs and position writes on a clock not yet synchronized.
    (stored, Some(lock(&store.spool).maintain(now)))
}
