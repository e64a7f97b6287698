//! Saying a thing once per change of state, not once per retry: the state types here decide
//! *whether* a line is due and the caller logs it, so the decision is pure and tested apart
//! from the log.
//!
//! - [`Latch`]: a condition that begins and ends (a disk failing, a link down): say it when it
//!   begins and when it ends, never in between.
//! - [`Reminder`]: a failure that goes on: say it again at a fixed period, so a fault that
//!   never clears is never silent.
//! - [`Throttle`]: an event anyone may cause as often as they like (a request refused for a
//!   wrong key): say the first, then at most one a period, with how many went unsaid.

use std::time::{Duration, Instant};

/// A condition that is either present or not; each change is reported once.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Latch {
    set: bool,
}

impl Latch {
    /// The condition holds now. True only when it did not before: say it began.
    pub fn raise(&mut self) -> bool {
        !std::mem::replace(&mut self.set, true)
    }

    /// The condition is over. True only when it held before: say it ended.
    pub fn clear(&mut self) -> bool {
        std::mem::replace(&mut self.set, false)
    }

    /// Whether the condition holds.
    pub fn is_set(&self) -> bool {
        self.set
    }
}

/// A failure that began at one moment and is reported again every `every` while it lasts.
#[derive(Debug, Clone, Copy)]
pub struct Reminder {
    since: Instant,
    reported: Instant,
    every: Duration,
}

impl Reminder {
    /// A failure beginning at `now`, whose first report the caller makes itself.
    pub fn new(now: Instant, every: Duration) -> Self {
        Reminder {
            since: now,
            reported: now,
            every,
        }
    }

    /// It failed again at `now`: `Some(how long it has been failing)` when a report is due.
    pub fn again(&mut self, now: Instant) -> Option<Duration> {
        if now.saturating_duration_since(self.reported) >= self.every {
            self.reported = now;
            Some(now.saturating_duration_since(self.since))
        } else {
            None
        }
    }
}

/// An event said the first time, then at most once every `every`, with the count unsaid since.
#[derive(Debug, Clone, Copy)]
pub struct Throttle {
    every: Duration,
    said: Option<Instant>,
    unsaid: u64,
}

impl Throttle {
    /// Nothing said yet.
    pub fn new(every: Duration) -> Self {
        Throttle {
            every,
            said: None,
            unsaid: 0,
        }
    }

    /// It happened at `now`: `Some(how many were not said since the last one that was)` when
    /// this one is to be said.
    pub fn happened(&mut self, now: Instant) -> Option<u64> {
        if self
            .said
            .is_some_and(|t| now.saturating_duration_since(t) < self.every)
        {
            self.unsaid += 1;
            return None;
        }
        self.said = Some(now);
        Some(std::mem::take(&mut self.unsaid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A latch says the beginning and the end once each, however often either is repeated.
    #[test]
    fn a_latch_reports_each_change_once() {
        let mut l = Latch::default();
        assert!(!l.clear());
        assert!(l.raise());
        assert!(!l.raise());
        assert!(l.is_set());
        assert!(l.clear());
        assert!(!l.clear());
        assert!(l.raise());
    }

    // A throttle says the first event, then one a period with the count left unsaid.
    #[test]
    fn a_throttle_says_one_a_period() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut t = Throttle::new(s(60));
        assert_eq!(t.happened(t0), Some(0));
        assert_eq!(t.happened(t0 + s(1)), None);
        assert_eq!(t.happened(t0 + s(59)), None);
        assert_eq!(t.happened(t0 + s(60)), Some(2));
        assert_eq!(t.happened(t0 + s(200)), Some(0));
    }

    // A reminder is due once a period has passed since the last report, with the time failing.
    #[test]
    fn a_reminder_is_due_once_a_period() {
        let t0 = Instant::now();
        let every = Duration::from_secs(60);
        let mut r = Reminder::new(t0, every);
        assert_eq!(r.again(t0 + Duration::from_secs(59)), None);
        assert_eq!(r.again(t0 + every), Some(every));
        assert_eq!(r.again(t0 + every + Duration::from_secs(30)), None);
        assert_eq!(
            r.again(t0 + 2 * every + Duration::from_secs(1)),
            Some(2 * every + Duration::from_secs(1))
        );
    }
}
