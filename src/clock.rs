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

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::report::Report;
use crate::sink::spool::{self, Spool, SpoolError, SpoolOptions};

/// The held reports' spool, inside the spool directory.
pub const HELD_DIR: &str = "held";
/// Where systemd-timesyncd marks a synchronized clock.
pub const DEFAULT_MARKER: &str = "/run/systemd/timesync/synchronized";
/// Most reports held at once (about 150 bytes each in memory): 5 minutes at 2 Hz is 600.
pub const HELD_MAX: usize = 20_000;
/// How often the marker is looked at while reports are held.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// How often it is looked at after giving up, to log when the clock is finally set.
const WATCH_EVERY: Duration = Duration::from_secs(10);
/// A clock step smaller than this is not worth a log line.
const STEP_WORTH_LOGGING_MS: i64 = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockState {
    Synchronized,
    /// systemd-timesyncd runs but has not synchronized the clock yet.
    NotYet,
    /// No systemd-timesyncd: nothing to ask.
    Unknown,
}

/// What `marker` says about the system clock (see the module documentation).
pub fn clock_state(marker: &Path) -> ClockState {
    if marker.exists() {
        ClockState::Synchronized
    } else if marker.parent().is_some_and(Path::is_dir) {
        ClockState::NotYet
    } else {
        ClockState::Unknown
    }
}

/// `--clock-sync-file` and `--clock-wait`.
#[derive(Debug, Clone)]
pub struct ClockWait {
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

/// Move the reports a previous run held (and could not let go: it was killed, or the power
/// went) to `spool`, as they were stamped, then delete their spool once they are synced there.
/// Returns how many moved.
pub fn recover_held(spool: &mut Spool, dir: &Path) -> Result<u64, SpoolError> {
    if !dir.is_dir() {
        return Ok(0);
    }
    // Read without acknowledging: acknowledged segments are deleted, and nothing of the copy
    // may go before the spool has them on disk.
    let mut payloads = Vec::new();
    spool::for_each_pending(dir, |p| payloads.push(p.to_vec())).map_err(|source| {
        SpoolError::Io {
            path: dir.to_owned(),
            source,
        }
    })?;
    let out = spool.append_all(&payloads, std::time::Instant::now());
    spool.flush()?;
    match out.disk_error {
        // In memory only: the copy on disk is all there is if we die now. Keep it.
        Some(e) => {
            warn!(error = %e, "cannot write the spool; held readings of the last run stay in {} too", dir.display())
        }
        None => discard_held(dir),
    }
    Ok(payloads.len() as u64)
}

/// Delete the held reports' spool once what it holds is safe in the main spool.
pub fn discard_held(dir: &Path) {
    // Segments set aside as unreadable are never deleted: they move up into the spool's own
    // directory first, and if one cannot, the directory stays.
    if let (Ok(entries), Some(up)) = (std::fs::read_dir(dir), dir.parent()) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            if name
                .to_string_lossy()
                .contains(crate::sink::spool::SET_ASIDE)
            {
                let mut to = std::ffi::OsString::from("held-");
                to.push(&name);
                if let Err(e) = std::fs::rename(entry.path(), up.join(to)) {
                    error!(file = %entry.path().display(), error = %e, "cannot move an unreadable file of the held reports' spool out of it; leaving that spool in place");
                    return;
                }
            }
        }
    }
    if let Err(e) = std::fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            error!(dir = %dir.display(), error = %e, "cannot delete the held reports' spool; its reports will be sent again (as duplicates, which the database ignores)");
        }
    }
}

/// Reports let go: in the order they were taken, stamped.
pub struct Released {
    pub why: Release,
    pub reports: Vec<Report>,
    /// The held reports' spool and its directory: to be closed (dropped) and deleted
    /// ([`discard_held`]) once `reports` are safely in the main spool.
    pub copy: Option<(PathBuf, HeldSpool)>,
}

/// The held reports' spool, shared with the sampling thread, which writes it.
pub type HeldSpool = Arc<Mutex<Spool>>;

fn open_copy(dir: &Path, options: &SpoolOptions) -> Option<HeldSpool> {
    match Spool::open(dir, options.clone()) {
        // Reports of an earlier run that could not be moved: deleting them on release would
        // lose them, so this run holds in memory only.
        Ok((_, opened)) if opened.pending > 0 => {
            warn!(dir = %dir.display(), "held readings of an earlier run are still there; holding in memory only");
            None
        }
        Ok((spool, _)) => Some(Arc::new(Mutex::new(spool))),
        Err(e) => {
            warn!(error = %e, "cannot keep held readings on disk; holding them in memory only");
            None
        }
    }
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

    // Discarding the held reports' spool keeps a segment set aside as unreadable: it moves up
    // into the spool's directory (it was deleted with the rest).
    #[test]
    fn discarding_the_held_spool_keeps_unreadable_files() {
        let spool = tempfile::tempdir().unwrap();
        let held = spool.path().join(HELD_DIR);
        std::fs::create_dir(&held).unwrap();
        std::fs::write(held.join("segment-0000000000000001.spool"), "x").unwrap();
        let aside = format!(
            "segment-0000000000000002.spool{}123",
            crate::sink::spool::SET_ASIDE
        );
        std::fs::write(held.join(&aside), "kept").unwrap();
        discard_held(&held);
        assert!(!held.exists());
        let moved = spool.path().join(format!("held-{aside}"));
        assert_eq!(std::fs::read_to_string(moved).unwrap(), "kept");
    }
    use crate::report::{Acceleration, Reading};

    fn report() -> Report {
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
        Report::new("pi", reading, 0)
    }

    #[test]
    fn the_marker_and_its_directory_tell_the_state() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("timesync").join("synchronized");
        assert_eq!(clock_state(&marker), ClockState::Unknown);
        std::fs::create_dir(dir.path().join("timesync")).unwrap();
        assert_eq!(clock_state(&marker), ClockState::NotYet);
        std::fs::write(&marker, "").unwrap();
        assert_eq!(clock_state(&marker), ClockState::Synchronized);
    }

    #[test]
    fn restamping_sets_recorded_at_and_keeps_the_id() {
        let mut r = report();
        let id = r.id;
        // 2026-11-26T06:00:01.250Z, taken 1.5 s before then.
        restamp(&mut r, 1_795_672_801_250, Duration::from_millis(1500));
        assert_eq!(r.recorded_at_ms, 1_795_672_799_750);
        assert_eq!(r.id, id);
    }

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

    fn options() -> SpoolOptions {
        SpoolOptions {
            max_bytes: 1 << 20,
            sync_interval: Duration::from_secs(1),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_earlier_runs_held_reports_are_moved_never_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let held_dir = dir.path().join(HELD_DIR);
        let (mut held, _) = Spool::open(&held_dir, options()).unwrap();
        for _ in 0..2 {
            held.append(&report().to_bson_bytes(), std::time::Instant::now());
        }
        drop(held);

        // While they are there, a new hold keeps its reports in memory only, and lets go
        // without a copy to delete.
        let wait = ClockWait {
            marker: dir.path().join("synchronized"),
            wait: Duration::from_secs(5),
            copy: Some((held_dir.clone(), options())),
            simulated_error_ms: 0,
        };
        let t0 = Instant::now();
        let mut gate = ClockGate::start(Some(&wait), t0);
        gate.hold(report(), t0);
        assert!(gate.stop(t0).unwrap().copy.is_none());
        assert_eq!(spool::summarize(&held_dir).unwrap().pending, 2);

        // The next start moves them to the main spool and deletes their directory.
        let (mut main, _) = Spool::open(&dir.path().join("main"), options()).unwrap();
        assert_eq!(recover_held(&mut main, &held_dir).unwrap(), 2);
        assert_eq!(main.pending(), 2);
        assert!(!held_dir.exists());
        assert_eq!(recover_held(&mut main, &held_dir).unwrap(), 0);
    }

    // The spool cannot be written (disk full): the moved reports are in its memory only, so
    // their copy stays for the next start.
    #[test]
    fn held_reports_stay_on_disk_when_the_spool_cannot_take_them() {
        let dir = tempfile::tempdir().unwrap();
        let held_dir = dir.path().join(HELD_DIR);
        let (mut held, _) = Spool::open(&held_dir, options()).unwrap();
        held.append(&report().to_bson_bytes(), std::time::Instant::now());
        drop(held);
        let main_dir = dir.path().join("main");
        std::fs::create_dir(&main_dir).unwrap();
        std::os::unix::fs::symlink("/dev/full", main_dir.join("segment-0000000000000001.spool"))
            .unwrap();
        let (mut main, _) = Spool::open(&main_dir, options()).unwrap();
        assert_eq!(recover_held(&mut main, &held_dir).unwrap(), 1);
        assert_eq!(main.pending(), 1, "kept in the spool's memory");
        assert_eq!(spool::summarize(&held_dir).unwrap().pending, 1);
    }
}
