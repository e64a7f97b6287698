//! Sensor health over time: pure state the sampling loop drives, no IO. Each update says what
//! changed, if anything, and whether that is worth one log line (never every failure, and at
//! most one a minute for a sensor that keeps failing and recovering).

use std::time::{Duration, Instant};

/// A sensor failing this long is logged as dead (once).
pub const DEAD_AFTER: Duration = Duration::from_secs(60);

/// After the start of a run of failures is said, another starting within this long is not
/// (nor its end): a loose connection failing one sample in ten would otherwise write two lines
/// every few seconds for as long as it stays loose, and push everything else out of the journal.
/// The next start said counts the runs left unsaid.
pub const FLAP_QUIET: Duration = Duration::from_secs(60);

/// What happened to a sensor over time: pure state, no IO.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Health {
    /// When the current run of failures began.
    pub failing_since: Option<Instant>,
    /// Failed samples since the last good one.
    pub consecutive_failures: u64,
    /// Failed samples since start-up.
    pub total_failures: u64,
    /// Whether this run of failures has been reported as [`HealthEvent::Dead`].
    pub dead_reported: bool,
    /// Why the last failed sample failed; kept after the sensor recovers, so that `status`
    /// can say what an intermittent fault was.
    pub last_error: Option<String>,
    /// When the start of a run of failures was last said.
    said_at: Option<Instant>,
    /// Whether the current (or last) run of failures has been said, so its end is too.
    run_said: bool,
    /// Runs of failures not said since the last one that was ([`FLAP_QUIET`]).
    unsaid_runs: u64,
}

/// What a health update changed, and asks the caller to log (all but the `Unsaid` ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthEvent {
    /// No change.
    None,
    /// First failure after a good read.
    StartedFailing {
        /// Runs of failures since the last one said, each too soon after it to be said
        /// ([`FLAP_QUIET`]).
        unsaid_runs: u64,
    },
    /// Failing for [`DEAD_AFTER`]; reported once per episode.
    Dead,
    /// Read fine again after failing.
    Recovered {
        /// How many failed samples the run of failures had.
        failures: u64,
    },
    /// First failure after a good read, too soon after the last one said to be said
    /// ([`FLAP_QUIET`]): a change of state all the same (the sensor's health is shown anew).
    StartedFailingUnsaid,
    /// Read fine again after a run of failures that was not said.
    RecoveredUnsaid,
}

impl Health {
    /// A sample of this sensor failed at `now`, for the reason `error`.
    pub fn record_failure(&mut self, now: Instant, error: String) -> HealthEvent {
        self.last_error = Some(error);
        self.consecutive_failures += 1;
        self.total_failures += 1;
        let since = *self.failing_since.get_or_insert(now);
        if self.consecutive_failures == 1 {
            if self
                .said_at
                .is_some_and(|t| now.saturating_duration_since(t) < FLAP_QUIET)
            {
                self.unsaid_runs += 1;
                self.run_said = false;
                return HealthEvent::StartedFailingUnsaid;
            }
            self.said_at = Some(now);
            self.run_said = true;
            HealthEvent::StartedFailing {
                unsaid_runs: std::mem::take(&mut self.unsaid_runs),
            }
        } else if !self.dead_reported && now.duration_since(since) >= DEAD_AFTER {
            self.dead_reported = true;
            if !std::mem::replace(&mut self.run_said, true) {
                // Said after all: not among the runs the next start line counts.
                self.unsaid_runs = self.unsaid_runs.saturating_sub(1);
            }
            HealthEvent::Dead
        } else {
            HealthEvent::None
        }
    }

    /// A sample of this sensor succeeded.
    pub fn record_success(&mut self) -> HealthEvent {
        let failures = self.consecutive_failures;
        self.consecutive_failures = 0;
        self.failing_since = None;
        self.dead_reported = false;
        match (failures, std::mem::take(&mut self.run_said)) {
            (0, _) => HealthEvent::None,
            (failures, true) => HealthEvent::Recovered { failures },
            (_, false) => HealthEvent::RecoveredUnsaid,
        }
    }

    /// Whether the last sample of this sensor succeeded (or none failed yet).
    pub fn is_ok(&self) -> bool {
        self.consecutive_failures == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A run of failures is reported once when it starts, once as dead after a minute, and
    // recovery reports how many failures it ended.
    #[test]
    fn health_reports_each_state_change_once() {
        let t0 = Instant::now();
        let mut h = Health::default();
        let fail = |h: &mut Health, s: u64| {
            h.record_failure(t0 + Duration::from_secs(s), format!("failure at {s} s"))
        };
        assert_eq!(
            fail(&mut h, 0),
            HealthEvent::StartedFailing { unsaid_runs: 0 }
        );
        assert_eq!(fail(&mut h, 30), HealthEvent::None);
        assert_eq!(fail(&mut h, 60), HealthEvent::Dead);
        assert_eq!(fail(&mut h, 90), HealthEvent::None);
        assert_eq!(h.record_success(), HealthEvent::Recovered { failures: 4 });
        assert_eq!(h.record_success(), HealthEvent::None);
        assert_eq!(h.total_failures, 4);
        // The last failure's reason outlives the recovery.
        assert_eq!(h.last_error.as_deref(), Some("failure at 90 s"));
    }

    // A sensor that fails now and then says so once a minute at most: runs of failures that
    // start within a minute of the last one said are not said, nor their ends (still changes
    // of state), and the next said counts them. A run that lasts a minute is said as dead all
    // the same, and its end.
    #[test]
    fn a_flapping_sensor_is_said_once_a_minute() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut h = Health::default();
        let started = |n| HealthEvent::StartedFailing { unsaid_runs: n };
        assert_eq!(h.record_failure(at(0), "e".into()), started(0));
        assert_eq!(h.record_success(), HealthEvent::Recovered { failures: 1 });
        for s in [5, 10, 59] {
            let unsaid = h.record_failure(at(s), "e".into());
            assert_eq!(unsaid, HealthEvent::StartedFailingUnsaid);
            assert_eq!(h.record_success(), HealthEvent::RecoveredUnsaid);
        }
        assert_eq!(h.record_failure(at(60), "e".into()), started(3));
        assert_eq!(h.record_success(), HealthEvent::Recovered { failures: 1 });
        let unsaid = h.record_failure(at(70), "e".into());
        assert_eq!(unsaid, HealthEvent::StartedFailingUnsaid);
        assert_eq!(h.record_failure(at(130), "e".into()), HealthEvent::Dead);
        assert_eq!(h.record_success(), HealthEvent::Recovered { failures: 2 });
        assert_eq!(h.total_failures, 7);
        // The run said as dead is not counted as unsaid by the next start said.
        assert_eq!(h.record_failure(at(200), "e".into()), started(0));
    }
}
