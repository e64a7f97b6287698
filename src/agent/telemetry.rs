//! The agent's Prometheus metrics and readiness (`--metrics-listen`, `--metrics-textfile`).
//!
//! The loops already count everything worth a metric in [`Counters`] (for `status.json`), and
//! the spool knows its depth: the metrics are read from those at scrape time, so they cost the
//! loops nothing between scrapes. Only the insert duration is recorded as it happens, one
//! histogram update per insert.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use tracing::{info, warn};

use super::lock;
use crate::clock::now_ms;
use crate::metrics::Readiness;
use crate::sink::spool::{Spool, SpoolFaults};
use crate::status::Counters;

/// Insert durations: a local server answers in about a millisecond, Atlas over a slow link in
/// seconds, a batch after an outage takes longer, and an insert waiting for a server that does
/// not answer reaches the insert timeout (30 s).
const INSERT_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 10.0, 30.0,
];

/// What the agent exposes as metrics, shared by its loops, the metrics listener and the
/// textfile writer. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Telemetry {
    state: Arc<State>,
    insert_duration: Histogram,
    registry: Arc<Registry>,
    textfile: Option<Textfile>,
}

/// `--metrics-textfile`: where the metrics are written with `status.json`, and whether the
/// last write failed. Cheap to clone.
#[derive(Clone, Debug)]
pub(super) struct Textfile {
    path: PathBuf,
    registry: Arc<Registry>,
    failing: Arc<AtomicBool>,
}

impl Textfile {
    /// Replace the file. A failure is said once, at WARN, and its end once: it is tried again
    /// every 10 s, and node_exporter meanwhile serves the last copy or none.
    pub(super) fn write(&self) {
        match crate::metrics::write_textfile(&self.path, &self.registry) {
            Ok(()) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    info!(path = %self.path.display(), "the metrics textfile is written again");
                }
            }
            Err(e) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    warn!(error = %e, path = %self.path.display(), "cannot write the metrics textfile (--metrics-textfile); node_exporter serves an old copy or none until it can be written, tried every 10 s: check that its directory exists and the agent may write there (under systemd, /run/sensehat-monitor)");
                }
            }
        }
    }
}

/// What the collector reads at each scrape.
struct State {
    counters: Arc<Mutex<Counters>>,
    spool: Option<Arc<Mutex<Spool>>>,
    /// When the agent started (ms since the Unix epoch).
    started_ms: i64,
}

impl Telemetry {
    /// Metrics over `spool` (if the agent has one: not with `--dry-run`), also written to
    /// `textfile` when given.
    pub fn new(spool: Option<Arc<Mutex<Spool>>>, textfile: Option<PathBuf>) -> Telemetry {
        let state = Arc::new(State {
            counters: Arc::new(Mutex::new(Counters::default())),
            spool,
            started_ms: now_ms(),
        });
        let insert_duration = Histogram::new(INSERT_BUCKETS);
        let mut registry = Registry::with_prefix("sensehat_agent");
        registry.register_with_unit(
            "insert_duration",
            "Time an insert of reports into MongoDB took, failed ones included",
            Unit::Seconds,
            insert_duration.clone(),
        );
        registry.register_collector(Box::new(Reader(state.clone())));
        let registry = Arc::new(registry);
        let textfile = textfile.map(|path| Textfile {
            path,
            registry: registry.clone(),
            failing: Arc::default(),
        });
        Telemetry {
            state,
            insert_duration,
            registry,
            textfile,
        }
    }

    /// The registry to serve.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    /// Ready unless the last insert failed: the agent talks to MongoDB only to insert (a check
    /// of its own would wake the paused driver), so a failed insert is what says it is down.
    pub fn readiness(&self) -> Readiness {
        let state = self.state.clone();
        Arc::new(move || {
            let c = lock(&state.counters);
            let answer = match (c.connected, &c.last_error) {
                (Some(false), e) => Err(format!(
                    "MongoDB unreachable at the last insert: {}",
                    e.as_deref().unwrap_or("no reason given")
                )),
                _ => Ok(()),
            };
            Box::pin(std::future::ready(answer))
        })
    }

    /// The counters the loops keep.
    pub(super) fn counters(&self) -> Arc<Mutex<Counters>> {
        self.state.counters.clone()
    }

    /// The textfile, when `--metrics-textfile` asks for one.
    pub(super) fn textfile(&self) -> Option<Textfile> {
        self.textfile.clone()
    }

    /// Account for one insert that took `took`.
    pub(super) fn observe_insert(&self, took: Duration) {
        self.insert_duration.observe(took.as_secs_f64());
    }
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("spool", &self.spool.is_some())
            .finish_non_exhaustive()
    }
}

/// What a scrape reads from the spool, under one lock.
struct SpoolLook {
    pending: u64,
    in_memory: u64,
    bytes: u64,
    max: u64,
    dropped: u64,
    dropped_from_memory: u64,
    syncs: u64,
    faults: SpoolFaults,
}

impl SpoolLook {
    fn of(s: &Spool) -> SpoolLook {
        SpoolLook {
            pending: s.pending(),
            in_memory: s.in_memory(),
            bytes: s.bytes(),
            max: s.max_bytes(),
            dropped: s.dropped_total,
            dropped_from_memory: s.dropped_from_memory_total,
            syncs: s.syncs_total,
            faults: s.faults,
        }
    }
}

/// `reports_dropped`'s reasons and counts: the loops' counters, or the spool's when it counts
/// more (drops the loops have not been told of yet).
fn dropped_by_reason(c: &Counters, spool: Option<&SpoolLook>) -> [(&'static str, u64); 2] {
    let (all, memory) = spool.map_or((c.dropped, c.dropped_from_memory), |s| {
        (
            s.dropped.max(c.dropped),
            s.dropped_from_memory.max(c.dropped_from_memory),
        )
    });
    [
        ("spool_full", all.saturating_sub(memory)),
        ("disk_unwritable", memory),
    ]
}

/// The collector that reads [`State`] at each scrape.
#[derive(Debug)]
struct Reader(Arc<State>);

impl Collector for Reader {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let c = lock(&self.0.counters).clone();
        let spool = self.0.spool.as_ref().map(|s| SpoolLook::of(&lock(s)));
        let counters: [(&str, &str, u64); 6] = [
            ("samples", "Samples taken", c.samples),
            (
                "samples_skipped",
                "Samples that made no report because a sensor failed",
                c.skipped_samples,
            ),
            (
                "slots_missed",
                "Sampling slots missed because a sample overran its own",
                c.missed_slots,
            ),
            (
                "reports_delivered",
                "Reports MongoDB acknowledged, duplicates included",
                c.delivered,
            ),
            (
                "reports_duplicate",
                "Acknowledged reports MongoDB already had (sent again after a lost reply)",
                c.duplicates,
            ),
            (
                "reports_rejected",
                "Reports MongoDB refused, saved to rejected.jsonl",
                c.rejected,
            ),
        ];
        for (name, help, v) in counters {
            let m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(v).encode(m)?;
        }
        let mut dropped = encoder.encode_descriptor(
            "reports_dropped",
            "Undelivered reports dropped, by reason: spool_full (past --spool-max-bytes, the oldest), disk_unwritable (kept in memory while the spool's disk could not be written: the oldest past the limit, or all at a stop)",
            None,
            MetricType::Counter,
        )?;
        for (reason, v) in dropped_by_reason(&c, spool.as_ref()) {
            let labels = [("reason", reason)];
            ConstCounter::new(v).encode(dropped.encode_family(&labels)?)?;
        }
        let mut failures = encoder.encode_descriptor(
            "sensor_read_failures",
            "Failed reads of one sensor (each is followed by a re-initialisation of it)",
            None,
            MetricType::Counter,
        )?;
        for s in &c.sensors {
            let labels = [("sensor", s.name.as_str())];
            ConstCounter::new(s.total_failures).encode(failures.encode_family(&labels)?)?;
        }
        let mut up = encoder.encode_descriptor(
            "sensor_up",
            "1 when the sensor's last read worked, else 0",
            None,
            MetricType::Gauge,
        )?;
        for s in &c.sensors {
            let labels = [("sensor", s.name.as_str())];
            ConstGauge::new(i64::from(s.ok)).encode(up.encode_family(&labels)?)?;
        }
        let now = now_ms();
        let gauges: [(&str, &str, Option<&Unit>, f64); 3] = [
            (
                "database_up",
                "1 when the last insert reached MongoDB, else 0 (also before the first)",
                None,
                f64::from(u8::from(c.connected == Some(true))),
            ),
            (
                "clock_held_reports",
                "Reports held until the system clock is synchronized",
                None,
                c.held_for_clock as f64,
            ),
            (
                "last_insert_age",
                "Time since MongoDB last acknowledged an insert, this run or the last with the same spool (since start, before any)",
                Some(&Unit::Seconds),
                (now - c.last_insert_ms.unwrap_or(self.0.started_ms)).max(0) as f64 / 1000.0,
            ),
        ];
        for (name, help, unit, v) in gauges {
            let m = encoder.encode_descriptor(name, help, unit, MetricType::Gauge)?;
            ConstGauge::new(v).encode(m)?;
        }
        if let Some(SpoolLook {
            pending,
            in_memory,
            bytes,
            max,
            syncs,
            faults,
            ..
        }) = spool
        {
            let mut m = encoder.encode_descriptor(
                "spool_faults",
                "Signs of a failing spool disk (SD card), by fault: sync_failed (an fdatasync failed), bad_data (bad bytes between good reports, the reports in them lost), set_aside (a segment file could not be read)",
                None,
                MetricType::Counter,
            )?;
            for (fault, v) in [
                ("sync_failed", faults.sync_failed),
                ("bad_data", faults.bad_data),
                ("set_aside", faults.set_aside),
            ] {
                ConstCounter::new(v).encode(m.encode_family(&[("fault", fault)])?)?;
            }
            let m = encoder.encode_descriptor(
                "spool_syncs",
                "fdatasync calls on the spool (forced writes to the card; none while MongoDB answers in time)",
                None,
                MetricType::Counter,
            )?;
            ConstCounter::new(syncs).encode(m)?;
            let spool_gauges: [(&str, &str, Option<&Unit>, i64); 4] = [
                (
                    "spool_reports",
                    "Reports in the spool, not yet acknowledged",
                    None,
                    pending as i64,
                ),
                (
                    "spool_memory_reports",
                    "Unsent reports held in memory because the spool's disk cannot be written (full or read-only): lost at a stop or crash while it cannot, the oldest dropped past 50,000",
                    None,
                    in_memory as i64,
                ),
                (
                    "spool",
                    "Bytes the spool holds on disk",
                    Some(&Unit::Bytes),
                    bytes as i64,
                ),
                (
                    "spool_capacity",
                    "The spool's limit (--spool-max-bytes); past it the oldest reports are dropped",
                    Some(&Unit::Bytes),
                    max as i64,
                ),
            ];
            for (name, help, unit, v) in spool_gauges {
                let m = encoder.encode_descriptor(name, help, unit, MetricType::Gauge)?;
                ConstGauge::new(v).encode(m)?;
            }
            let oldest = c
                .oldest_unsent_ms
                .filter(|_| pending > 0)
                .map_or(0.0, |t| (now - t).max(0) as f64 / 1000.0);
            let m = encoder.encode_descriptor(
                "spool_oldest_age",
                "Age of the oldest report waiting in the spool, as of the last look at it (0 when empty)",
                Some(&Unit::Seconds),
                MetricType::Gauge,
            )?;
            ConstGauge::new(oldest).encode(m)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Drops are told apart by reason, from the counters or the spool, whichever counts more;
    // the spool's cap takes what memory did not drop.
    #[test]
    fn dropped_reports_are_told_apart_by_reason() {
        let c = Counters {
            dropped: 7,
            dropped_from_memory: 2,
            ..Counters::default()
        };
        assert_eq!(
            dropped_by_reason(&c, None),
            [("spool_full", 5), ("disk_unwritable", 2)]
        );
        let spool = SpoolLook {
            pending: 0,
            in_memory: 0,
            bytes: 0,
            max: 0,
            dropped: 10,
            dropped_from_memory: 4,
            syncs: 0,
            faults: SpoolFaults::default(),
        };
        assert_eq!(
            dropped_by_reason(&c, Some(&spool)),
            [("spool_full", 6), ("disk_unwritable", 4)]
        );
    }
}
