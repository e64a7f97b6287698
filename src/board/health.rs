//! Sensor health over time: pure state the sampling loop drives, no IO. Each update says what,
//! if anything, is worth one log line (a state change, never every failure).

use std::time::{Duration, Instant};

/// A sensor failing this long is logged as dead (once).
pub const DEAD_AFTER: Duration = Duration::from_secs(60);

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
}

/// What a health update asks the caller to log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthEvent {
    /// Nothing worth a log line.
    None,
    /// First failure after a good read.
    StartedFailing,
    /// Failing for [`DEAD_AFTER`]; reported once per episode.
    Dead,
    /// Read fine again after failing.
    Recovered {
        /// How many failed samples the run of failures had.
        failures: u64,
    },
}

impl Health {
    /// A sample of this sensor failed at `now`, for the reason `error`.
    pub fn record_failure(&mut self, now: Instant, error: String) -> HealthEvent {
        self.last_error = Some(error);
        self.consecutive_failures += 1;
        self.total_failures += 1;
        let since = *self.failing_since.get_or_insert(now);
        if self.consecutive_failures == 1 {
            HealthEvent::StartedFailing
        } else if !self.dead_reported && now.duration_since(since) >= DEAD_AFTER {
            self.dead_reported = true;
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
        if failures > 0 {
            HealthEvent::Recovered { failures }
        } else {
            HealthEvent::None
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
        assert_eq!(fail(&mut h, 0), HealthEvent::StartedFailing);
        assert_eq!(fail(&mut h, 30), HealthEvent::None);
        assert_eq!(fail(&mut h, 60), HealthEvent::Dead);
        assert_eq!(fail(&mut h, 90), HealthEvent::None);
        assert_eq!(h.record_success(), HealthEvent::Recovered { failures: 4 });
        assert_eq!(h.record_success(), HealthEvent::None);
        assert_eq!(h.total_failures, 4);
        // The last failure's reason outlives the recovery.
        assert_eq!(h.last_error.as_deref(), Some("failure at 90 s"));
    }
}
