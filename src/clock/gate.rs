//! The sampling loop's view of the clock: while it is not synchronized, reports are held and
//! restamped once it is, or let go as they are (see [`crate::clock`]).

use std::path::PathBuf;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use super::held::{open_copy, HeldSpool};
use super::marker::{clock_state, ClockState};
use super::{now_ms, restamp, ClockWait};
use crate::report::Report;

/// Most reports held at once (about 150 bytes each in memory): 5 minutes at 2 Hz is 600.
pub const HELD_MAX: usize = 20_000;
/// How often the marker is looked at while reports are held.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// How often it is looked at after giving up, to log when the clock is finally set.
const WATCH_EVERY: Duration = Duration::from_secs(10);
/// A clock step smaller than this is not worth a log line.
const STEP_WORTH_LOGGING_MS: i64 = 1000;

/// Reports let go: in the order they were taken, stamped.
pub struct Released {
    /// Why they were let go.
    pub why: Release,
    /// The reports, oldest first, with their final `recordedAt`.
    pub reports: Vec<Report>,
    /// The held reports' spool and its directory: to be closed (dropped) and deleted
    /// ([`discard_held`](super::discard_held)) once `reports` are safely in the main spool.
    pub copy: Option<(PathBuf, HeldSpool)>,
}

/// Why held reports were let go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// The clock is synchronized: they carry the right time.
    Synchronized,
    /// `--clock-wait` passed, or [`HELD_MAX`] reports are held: they carry the clock's time.
    GaveUp,
    /// The agent is stopping: right time if the clock is synchronized by now.
    Stopping,
}

/// The sampling loop's view of the clock.
pub struct ClockGate(State);

enum State {
    /// Trust the clock (synchronized, or nothing to ask, or holding disabled).
    Open,
    /// Not synchronized yet: reports are held.
    Holding {
        marker: PathBuf,
        wait: Duration,
        until: Instant,
        next_check: Instant,
        held: Vec<(Report, Instant)>,
        simulated_error_ms: i64,
        /// Where the sampling thread writes each held report, and its directory.
        copy: Option<(PathBuf, HeldSpool)>,
    },
    /// Gave up holding; log once when the clock is set, and by how much it moved.
    Watching {
        marker: PathBuf,
        next_check: Instant,
        /// When we gave up, and what the wall clock read then.
        since: Instant,
        wall_then_ms: i64,
    },
}

impl ClockGate {
    /// Look at the clock once, at start-up.
    pub fn start(options: Option<&ClockWait>, now: Instant) -> ClockGate {
        let Some(o) = options else {
            return ClockGate(State::Open);
        };
        ClockGate(match clock_state(&o.marker) {
            ClockState::NotYet if !o.wait.is_zero() => {
                info!(
                    marker = %o.marker.display(),
                    "the system clock is not synchronized yet (systemd-timesyncd has not reached an NTP server): readings are held and stamped once it is, for up to {:?} (--clock-wait)",
                    o.wait
                );
                State::Holding {
                    marker: o.marker.clone(),
                    wait: o.wait,
                    until: now.checked_add(o.wait).unwrap_or(now),
                    next_check: now + CHECK_EVERY,
                    held: Vec::new(),
                    simulated_error_ms: o.simulated_error_ms,
                    copy: o.copy.as_ref().and_then(|(dir, opt)| {
                        open_copy(dir, opt).map(|spool| (dir.clone(), spool))
                    }),
                }
            }
            ClockState::NotYet => {
                warn!("the system clock is not synchronized yet; --clock-wait is 0, so readings are stamped by it as it is");
                State::watching(o.marker.clone(), now)
            }
            ClockState::Synchronized | ClockState::Unknown => State::Open,
        })
    }

    /// Whether reports are being held.
    pub fn holding(&self) -> bool {
        matches!(self.0, State::Holding { .. })
    }

    /// How many reports are held.
    pub fn held(&self) -> usize {
        match &self.0 {
            State::Holding { held, .. } => held.len(),
            _ => 0,
        }
    }

    /// Where held reports are written while they are held (the sampling thread writes each
    /// there when it takes it; [`ClockGate::hold`] keeps it in memory).
    pub fn copy(&self) -> Option<HeldSpool> {
        match &self.0 {
            State::Holding {
                copy: Some((_, spool)),
                ..
            } => Some(spool.clone()),
            _ => None,
        }
    }

    /// Hold `report` (taken at `taken`) if reports are being held; otherwise hand it back.
    pub fn hold(&mut self, report: Report, taken: Instant) -> Option<Report> {
        match &mut self.0 {
            State::Holding {
                held,
                simulated_error_ms,
                ..
            } => {
                let mut report = report;
                report.recorded_at_ms += *simulated_error_ms;
                held.push((report, taken));
                None
            }
            _ => Some(report),
        }
    }

    /// [`ClockGate::poll`], reading the time only when there is something to look at.
    pub fn poll_if_watching(&mut self, now: impl FnOnce() -> Instant) -> Option<Released> {
        match &mut self.0 {
            State::Open => None,
            _ => self.poll(now()),
        }
    }

    /// Once a sample: held reports that may go now, in the order they were taken, stamped.
    pub fn poll(&mut self, now: Instant) -> Option<Released> {
        match &mut self.0 {
            State::Open => None,
            State::Watching {
                marker,
                next_check,
                since,
                wall_then_ms,
            } => {
                if now < *next_check {
                    return None;
                }
                *next_check = now + WATCH_EVERY;
                if clock_state(marker) == ClockState::Synchronized {
                    // How much further the wall clock went than the monotonic clock.
                    let mono = i64::try_from(now.duration_since(*since).as_millis()).unwrap_or(0);
                    let step = now_ms() - *wall_then_ms - mono;
                    if step.abs() >= STEP_WORTH_LOGGING_MS {
                        warn!(
                            step_ms = step,
                            "the system clock is synchronized now and moved by {:.1} s: readings of the last {:.0} s carry the old clock's time",
                            step as f64 / 1000.0,
                            now.duration_since(*since).as_secs_f64()
                        );
                    } else {
                        info!("the system clock is synchronized now");
                    }
                    self.0 = State::Open;
                }
                None
            }
            State::Holding {
                marker,
                until,
                next_check,
                held,
                ..
            } => {
                let full = held.len() >= HELD_MAX;
                if now < *next_check && !full {
                    return None;
                }
                *next_check = now + CHECK_EVERY;
                if clock_state(marker) == ClockState::Synchronized {
                    Some(self.release(Release::Synchronized, now))
                } else if full || now >= *until {
                    Some(self.release(Release::GaveUp, now))
                } else {
                    None
                }
            }
        }
    }

    /// Let every held report go (the agent is stopping).
    pub fn stop(&mut self, now: Instant) -> Option<Released> {
        match &mut self.0 {
            State::Holding { marker, .. } => {
                let why = if clock_state(marker) == ClockState::Synchronized {
                    Release::Synchronized
                } else {
                    Release::Stopping
                };
                Some(self.release(why, now))
            }
            _ => None,
        }
    }

    fn release(&mut self, why: Release, now: Instant) -> Released {
        let State::Holding {
            marker,
            held,
            wait,
            copy,
            ..
        } = std::mem::replace(&mut self.0, State::Open)
        else {
            return Released {
                why,
                reports: Vec::new(),
                copy: None,
            };
        };
        let now_ms = now_ms();
        let n = held.len();
        let reports: Vec<Report> = held
            .into_iter()
            .map(|(mut r, taken)| {
                restamp(&mut r, now_ms, now.saturating_duration_since(taken));
                r
            })
            .collect();
        match why {
            Release::Synchronized => info!(
                held = n,
                "the system clock is synchronized: held readings are stamped with it and go on"
            ),
            Release::GaveUp => {
                let reason = if n >= HELD_MAX {
                    format!("{HELD_MAX} readings are held")
                } else {
                    format!("{wait:?} (--clock-wait) have passed")
                };
                warn!(
                    held = n,
                    "the system clock is still not synchronized and {reason}: held readings go on, stamped by the unsynchronized clock, and so do new ones until it is synchronized. Check that systemd-timesyncd reaches an NTP server (timedatectl timesync-status)"
                );
                self.0 = State::watching(marker, now);
            }
            Release::Stopping => warn!(
                held = n,
                "stopping before the system clock was synchronized: held readings are stamped by the clock as it is"
            ),
        }
        Released { why, reports, copy }
    }
}

impl State {
    fn watching(marker: PathBuf, now: Instant) -> State {
        State::Watching {
            marker,
            next_check: now + WATCH_EVERY,
            since: now,
            wall_then_ms: now_ms(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::test_support::report;

    #[tokio::test(start_paused = true)]
    async fn held_reports_go_when_synchronized_or_after_the_wait() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("synchronized");
        let options = ClockWait {
            marker: marker.clone(),
            wait: Duration::from_secs(5),
            copy: None,
            simulated_error_ms: 0,
        };
        let t0 = Instant::now();
        let mut gate = ClockGate::start(Some(&options), t0);
        assert!(gate.holding());
        assert!(gate.hold(report(), t0).is_none());
        assert!(gate.poll(t0 + Duration::from_secs(2)).is_none());
        // Synchronized: let go at the next look, within a second.
        std::fs::write(&marker, "").unwrap();
        assert!(gate.poll(t0 + Duration::from_millis(2500)).is_none());
        let r = gate.poll(t0 + Duration::from_secs(3)).unwrap();
        assert_eq!((r.why, r.reports.len()), (Release::Synchronized, 1));
        assert!(!gate.holding());
        assert!(gate.hold(report(), t0).is_some(), "not held once open");

        // Never synchronized: let go after the wait, and new reports are no longer held.
        std::fs::remove_file(&marker).unwrap();
        let mut gate = ClockGate::start(Some(&options), t0);
        gate.hold(report(), t0);
        assert!(gate.poll(t0 + Duration::from_secs(4)).is_none());
        let r = gate.poll(t0 + Duration::from_secs(5)).unwrap();
        assert_eq!(r.why, Release::GaveUp);
        assert!(gate.hold(report(), t0).is_some());

        // Having given up, it looks every WATCH_EVERY, and once synchronized stops looking.
        std::fs::write(&marker, "").unwrap();
        let t5 = t0 + Duration::from_secs(5);
        assert!(gate.poll(t5 + WATCH_EVERY / 2).is_none());
        assert!(matches!(gate.0, State::Watching { .. }));
        assert!(gate.poll(t5 + WATCH_EVERY).is_none());
        assert!(matches!(gate.0, State::Open));
        std::fs::remove_file(&marker).unwrap();

        // Too many held: let go at once, without waiting for the next look.
        let mut gate = ClockGate::start(Some(&options), t0);
        for _ in 0..HELD_MAX {
            gate.hold(report(), t0);
        }
        let r = gate.poll(t0).unwrap();
        assert_eq!((r.why, r.reports.len()), (Release::GaveUp, HELD_MAX));
    }

    #[test]
    fn nothing_is_held_without_timesyncd_or_with_a_zero_wait() {
        let dir = tempfile::tempdir().unwrap();
        let now = Instant::now();
        let absent = ClockWait {
            marker: dir.path().join("timesync").join("synchronized"),
            wait: Duration::from_secs(300),
            copy: None,
            simulated_error_ms: 0,
        };
        assert!(!ClockGate::start(Some(&absent), now).holding());
        let zero = ClockWait {
            marker: dir.path().join("synchronized"),
            wait: Duration::ZERO,
            copy: None,
            simulated_error_ms: 0,
        };
        assert!(!ClockGate::start(Some(&zero), now).holding());
        assert!(!ClockGate::start(None, now).holding());
    }
}
