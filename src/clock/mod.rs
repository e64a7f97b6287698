//! Timestamps on a board without a real-time clock.
//!
//! A Raspberry Pi (before the Pi 5 with its battery) keeps no time while off. At boot the clock
//! starts from the last time saved on disk (fake-hwclock, or systemd-timesyncd's
//! `/var/lib/systemd/timesync/clock`), which after a power cut is hours or days behind, and it
//! stays there until NTP answers, seconds after the network comes up or much later if it does
//! not. Readings stamped in that window would land in the past of the series.
//!
//! So while systemd-timesyncd says the clock is not synchronized yet, the agent still samples on
//! its schedule but holds the reports back, noting when each was taken on the monotonic clock
//! (which no clock step moves). Once the clock is synchronized, each held report's `recordedAt`
//! becomes the time it was taken by the synchronized clock (now minus how long ago it was
//! taken), and it goes on as usual. If the clock is still not synchronized after `--clock-wait`,
//! or too many reports are held, or the agent stops, the held reports go on stamped by the clock
//! as it is, with a warning: a wrong time is better than a lost reading.
//!
//! Held reports are also written to a spool of their own, `held/` in the spool directory, so a
//! kill or a power cut while they are held loses nothing: the next start moves what it finds
//! there to the spool as it was stamped (the monotonic times are of no use after a restart).
//! Their `_id` is never changed, which makes that safe: if the agent dies after moving
//! restamped reports to the spool but before deleting `held/`, the copies moved again at the next
//! start are duplicates of reports already stored, which the database turns into no-ops (the
//! first, restamped, copy is stored first: the spool is delivered in order).
//!
//! How the agent knows: systemd-timesyncd touches `/run/systemd/timesync/synchronized` once it
//! has synchronized the clock (systemd-time-wait-sync.service(8); systemd 239 and later, the
//! default on Raspberry Pi OS), in its runtime directory `/run/systemd/timesync`, which exists
//! while timesyncd runs. The file present: synchronized. The directory present without the
//! file: not yet. Neither: another time service (chrony, ntpd) or none, and the agent trusts
//! the clock as it is, as before. (The kernel's own flag, `adjtimex`, is not used: the service's
//! `ProtectClock=yes` filters that system call.)
//!
//! # Layout
//!
//! - [`marker`]: what systemd-timesyncd's marker file says about the clock.
//! - [`gate`]: the sampling loop's view of the clock: hold, restamp, release.
//! - [`held`]: the held reports' own spool, and moving a killed run's held reports on.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::report::Report;
use crate::sink::spool::SpoolOptions;

pub mod gate;
pub mod held;
pub mod marker;

pub use gate::{ClockGate, Release, Released, HELD_MAX};
pub use held::{discard_held, recover_held, recover_last_run, HeldSpool, HELD_DIR};
pub use marker::{clock_state, ClockState, DEFAULT_MARKER};

/// `--clock-sync-file` and `--clock-wait`.
#[derive(Debug, Clone)]
pub struct ClockWait {
    /// The file whose presence says the clock is synchronized.
    pub marker: PathBuf,
    /// Longest time reports are held; zero holds none.
    pub wait: Duration,
    /// Where held reports are also written, so that a kill or power cut does not lose them
    /// (the spool directory's [`HELD_DIR`]); `None` (`--dry-run`) holds them in memory only.
    pub copy: Option<(PathBuf, SpoolOptions)>,
    /// For tests (`--sim-clock-error-ms`): how far off the clock is while not synchronized, added
    /// to the time each held report was stamped with, as a Pi's clock is after a power cut.
    pub simulated_error_ms: i64,
}

/// Milliseconds since the Unix epoch by the system clock, now (0 before 1970). The crate's one
/// reading of the wall clock: reports, status, the Firehose services.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Stamp `report`, taken `ago` before a moment the wall clock reads `now_ms`, with that time.
/// Its `_id` stays as it is (see the module documentation).
pub fn restamp(report: &mut Report, now_ms: i64, ago: Duration) {
    report.recorded_at_ms =
        now_ms.saturating_sub(i64::try_from(ago.as_millis()).unwrap_or(i64::MAX));
}

#[cfg(test)]
pub(crate) mod test_support {
    use crate::report::{Acceleration, MovingRule, Reading, Report};

    /// A report of a still board, stamped at the epoch.
    pub(crate) fn report() -> Report {
        let reading = Reading {
            humidity_rh: 40.0,
            temperature_celsius: 20.0,
            pressure_hpa: 1013.0,
            acceleration: Acceleration {
                x_g: 0.0,
                y_g: 0.0,
                z_g: 1.0,
            },
        };
        Report::new("pi", reading, 0, MovingRule::Axis)
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::report;
    use super::*;

    // Restamping moves recordedAt to the synchronized clock's time and leaves _id alone.
    #[test]
    fn restamping_sets_recorded_at_and_keeps_the_id() {
        let mut r = report();
        let id = r.id;
        // 2026-11-26T06:00:01.250Z, taken 1.5 s before then.
        restamp(&mut r, 1_795_672_801_250, Duration::from_millis(1500));
        assert_eq!(r.recorded_at_ms, 1_795_672_799_750);
        assert_eq!(r.id, id);
    }
}
