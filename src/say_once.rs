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
//! - [`Failures`]: requests failing for a dependency's sake, shared by a server's requests
//!   (or a forwarder's puts): said when they begin, once a period while they go on, and when
//!   one succeeds again (or, for [`Failures::answered_after_quiet`], when one succeeds once none
//!   has failed for a while).

use std::sync::{Mutex, PoisonError};
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

/// How often [`Failures`] says again that failures go on.
pub const FAILURE_REMINDER: Duration = Duration::from_secs(60);

/// Requests failing for a dependency's sake (the database down): said when they begin, again
/// at most every [`FAILURE_REMINDER`] while they go on, with how many failed meanwhile, and when
/// a request succeeds again. Clients retry during an outage (a dashboard's open pages every
/// few seconds, Firehose each delivery), and each failure used to be a line of the log.
#[derive(Debug, Default)]
pub struct Failures {
    outage: Mutex<Option<Outage>>,
}

/// An outage under way.
#[derive(Debug)]
struct Outage {
    since: Instant,
    /// When a request last failed.
    last: Instant,
    reminder: Reminder,
    /// Failures since the last line.
    unsaid: u64,
}

impl Failures {
    /// A request failed at `now`: what to say of it, if anything.
    pub fn failed(&self, now: Instant) -> Option<Said> {
        let mut outage = self.outage.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(o) = outage.as_mut() else {
            *outage = Some(Outage {
                since: now,
                last: now,
                reminder: Reminder::new(now, FAILURE_REMINDER),
                unsaid: 0,
            });
            return Some(Said::Began);
        };
        o.last = now;
        match o.reminder.again(now) {
            Some(lasted) => Some(Said::GoesOn {
                lasted,
                unsaid: std::mem::take(&mut o.unsaid),
            }),
            None => {
                o.unsaid += 1;
                None
            }
        }
    }

    /// A request succeeded at `now`: how long the outage lasted, if one just ended.
    pub fn answered(&self, now: Instant) -> Option<Duration> {
        self.answered_after_quiet(now, Duration::ZERO)
    }

    /// The outage ended a while ago, if its last failure was `quiet` or longer before `now`
    /// (nothing came to end it: the requests stopped): how long it lasted, to its last failure.
    /// Asked before a failure, so that the failure begins a new outage rather than goes on with
    /// a stale one.
    pub fn ended_by_quiet(&self, now: Instant, quiet: Duration) -> Option<Duration> {
        self.take_if_quiet(now, quiet)
            .map(|o| o.last.saturating_duration_since(o.since))
    }

    /// A request succeeded at `now`, but the outage ends only if none has failed for `quiet`:
    /// how long it lasted, if it just ended. For requests side by side of which some keep
    /// failing (a throttle that fails a call in several), where one success says little and
    /// ending at each would say the outage over and begun again all the time.
    pub fn answered_after_quiet(&self, now: Instant, quiet: Duration) -> Option<Duration> {
        self.take_if_quiet(now, quiet)
            .map(|o| now.saturating_duration_since(o.since))
    }

    /// The outage under way, taken (ended), if none has failed for `quiet` before `now`.
    fn take_if_quiet(&self, now: Instant, quiet: Duration) -> Option<Outage> {
        let mut outage = self.outage.lock().unwrap_or_else(PoisonError::into_inner);
        outage.take_if(|o| now.saturating_duration_since(o.last) >= quiet)
    }
}

/// What to say of a failure.
#[derive(Debug, PartialEq, Eq)]
pub enum Said {
    /// The first of an outage.
    Began,
    /// The outage goes on, this long so far, with `unsaid` failures since the last line.
    GoesOn {
        /// How long it has gone on.
        lasted: Duration,
        /// Failures since the last line.
        unsaid: u64,
    },
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

    // An outage is said when it begins, then once a reminder period while it lasts (with the
    // failures unsaid meanwhile), and a new one after a request answered is said again.
    #[test]
    fn an_outage_is_said_when_it_begins_and_once_a_period() {
        let f = Failures::default();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(f.failed(t0), Some(Said::Began));
        for s in 1..60 {
            assert_eq!(f.failed(at(s)), None);
        }
        assert_eq!(
            f.failed(at(60)),
            Some(Said::GoesOn {
                lasted: FAILURE_REMINDER,
                unsaid: 59
            })
        );
        assert_eq!(f.failed(at(61)), None);
        assert_eq!(f.answered(at(70)), Some(Duration::from_secs(70)));
        assert_eq!(f.answered(at(71)), None);
        assert_eq!(f.failed(at(72)), Some(Said::Began));
    }

    // With a quiet spell, successes between failures do not end the outage (so it is not said
    // over and begun again each time); the first success once none failed for the spell does,
    // once, with the whole outage's length.
    #[test]
    fn an_outage_ends_only_after_a_quiet_spell() {
        let f = Failures::default();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let quiet = Duration::from_secs(10);
        assert_eq!(f.answered_after_quiet(t0, quiet), None, "no outage");
        assert_eq!(f.failed(t0), Some(Said::Began));
        for s in 1..70 {
            assert_eq!(f.answered_after_quiet(at(s), quiet), None, "at {s} s");
            let said = f.failed(at(s));
            assert_eq!(said.is_some(), s == 60, "at {s} s: {said:?}");
        }
        assert_eq!(f.answered_after_quiet(at(78), quiet), None);
        assert_eq!(
            f.answered_after_quiet(at(79), quiet),
            Some(Duration::from_secs(79))
        );
        assert_eq!(f.answered_after_quiet(at(80), quiet), None, "said once");
        assert_eq!(f.failed(at(81)), Some(Said::Began));
    }
}
