//! A failure that goes on, as the forwarder reports it: a warning where it begins, an error
//! every [`STUCK_REPORT_EVERY`] while it lasts, and its end once. The change stream's reopening
//! and the dead-letter writes use it whole; [`super::put::put_all`] only for its errors while a
//! batch is stuck, as the beginning and end of failed calls are said once for every batch.

use std::time::Duration;

use crate::say_once::{Latch, Reminder};

/// How often a put that keeps failing is reported again, at error level.
pub const STUCK_REPORT_EVERY: Duration = Duration::from_secs(60);

/// The log line a failure that goes on calls for, as [`Trouble::failed`] decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Say {
    /// The first failure: a warning, where it happens.
    Began,
    /// Still failing, for this long: an error, every [`STUCK_REPORT_EVERY`].
    Still(Duration),
    /// Nothing this time.
    Nothing,
}

/// A failure that goes on: the first one is a warning where it happens; from
/// [`STUCK_REPORT_EVERY`] on, an error every [`STUCK_REPORT_EVERY`], so a fault that never
/// clears (a network path gone, a throttle that never lifts) is never silent; its end is said
/// once. Pure: it decides which line is due, and the caller logs it.
#[derive(Debug, Default)]
pub(crate) struct Trouble {
    failing: Latch,
    reminder: Option<Reminder>,
    failures: u64,
}

impl Trouble {
    /// It failed (again) at `now`.
    pub(crate) fn failed(&mut self, now: std::time::Instant) -> Say {
        if self.failing.raise() {
            self.reminder = Some(Reminder::new(now, STUCK_REPORT_EVERY));
            self.failures = 1;
            return Say::Began;
        }
        self.failures += 1;
        match self.reminder.as_mut().and_then(|r| r.again(now)) {
            Some(failing_for) => Say::Still(failing_for),
            None => Say::Nothing,
        }
    }

    /// It worked: true when it had been failing, so its end is to be said.
    pub(crate) fn recovered(&mut self) -> bool {
        self.reminder = None;
        self.failing.clear()
    }

    /// How many times it failed in the current failure (or the last one, once it recovered).
    pub(crate) fn failures(&self) -> u64 {
        self.failures
    }
}

/// Now, on tokio's clock (paused in tests), as the [`Trouble`] methods take it.
pub(crate) fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

#[cfg(test)]
mod tests {
    use super::*;

    // A failure that goes on is said when it begins, then once a period, and its end once; the
    // failures of each spell are counted.
    #[test]
    fn trouble_says_begin_reminders_and_end() {
        let t0 = std::time::Instant::now();
        let mut t = Trouble::default();
        assert!(!t.recovered());
        assert_eq!(t.failed(t0), Say::Began);
        assert_eq!(t.failed(t0 + Duration::from_secs(59)), Say::Nothing);
        assert_eq!(
            t.failed(t0 + STUCK_REPORT_EVERY),
            Say::Still(STUCK_REPORT_EVERY)
        );
        assert_eq!(t.failures(), 3);
        assert!(t.recovered());
        assert_eq!(t.failures(), 3, "the count of the failure that ended");
        assert!(!t.recovered());
        assert_eq!(t.failed(t0 + 2 * STUCK_REPORT_EVERY), Say::Began);
        assert_eq!(t.failures(), 1);
    }
}
