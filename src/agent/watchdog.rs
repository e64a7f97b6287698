//! systemd's watchdog (`WatchdogSec=` in the unit): the sampling loop pings it, so a loop stuck
//! on the bus stops the pings and systemd restarts the agent.
//!
//! Each ping is a datagram that wakes systemd, so it is sent at most every quarter of the
//! timeout, not with every sample: with the unit's 30 s, 8 a minute instead of 120 at 500 ms. A
//! ping rides on a sample's wake-up when one comes in time, and the wait between samples
//! sends it only when samples are further apart than that. A loop stuck for longer than the
//! timeout is always restarted; one stuck for less than three quarters of it never is.

use std::time::Duration;

use tokio::time::Instant;

/// The watchdog's timeout is this many times the longest gap between pings.
const PINGS_PER_TIMEOUT: u32 = 4;

/// When systemd's watchdog was last pinged, and how often it must be.
pub(super) struct Watchdog {
    every: Duration,
    last: Option<Instant>,
}

impl Watchdog {
    /// The watchdog systemd set up for this process (`WATCHDOG_USEC`), when `notify` (the
    /// agent runs under systemd) and it has one.
    pub(super) fn from_env(notify: bool) -> Option<Watchdog> {
        notify
            .then(sd_notify::watchdog_enabled)
            .flatten()
            .map(Watchdog::new)
    }

    fn new(timeout: Duration) -> Watchdog {
        Watchdog {
            every: timeout / PINGS_PER_TIMEOUT,
            last: None,
        }
    }

    /// When the next ping is due; `None` before the first, which the first sample sends.
    pub(super) fn due(&self) -> Option<Instant> {
        self.last.map(|t| t + self.every)
    }

    /// Ping now if the next ping falls due before `next` (the next sample's slot): it rides on
    /// this wake-up rather than waking the agent on its own.
    pub(super) fn ping_before(&mut self, next: Instant) {
        if self.due().is_none_or(|due| due < next) {
            self.ping();
        }
    }

    /// Ping now.
    pub(super) fn ping(&mut self) {
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
        self.last = Some(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The first sample pings. Later ones ping when the next ping would fall due before the
    // sample after them, so pings are never further apart than a quarter of the timeout.
    #[test]
    fn a_sample_pings_when_the_next_ping_falls_due_before_the_next_sample() {
        let mut w = Watchdog::new(Duration::from_secs(30));
        assert_eq!(w.due(), None);
        w.ping_before(Instant::now() + Duration::from_millis(500));
        let first = w.last.expect("the first sample pings");
        assert_eq!(w.due(), Some(first + Duration::from_millis(7500)));
        w.ping_before(first + Duration::from_secs(7));
        assert_eq!(w.last, Some(first), "due after the next sample: not yet");
        w.ping_before(first + Duration::from_secs(8));
        assert!(w.last > Some(first), "due before the next sample: now");
    }
}
