//! `status.json`, written by the running agent next to its spool, and the `status` command
//! that combines it with a read-only look at the spool.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::clock::now_ms;
use crate::report::iso_millis;
use crate::sink::spool::{self, SpoolSummary};

/// The status file's name, in the spool directory.
pub const STATUS_FILE: &str = "status.json";
/// How often the agent rewrites `status.json` (with each sample when samples are further
/// apart).
pub const STATUS_EVERY: std::time::Duration = std::time::Duration::from_secs(10);
/// Reads of the status file before it counts as unreadable (see [`Status::read`]).
const READ_TRIES: usize = 3;
/// How many of its rewrite periods old the status file may be and still be the running
/// agent's word (see [`Status::is_current`]): two rewrites may come late (a slow sample, a
/// busy card) before it is taken for what an agent left when it stopped.
const CURRENT_FOR: i64 = 3;

/// One sensor's health, as `status` shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SensorStatus {
    /// The chip (`hts221`, `lps25h`, `lsm9ds1`).
    pub name: String,
    /// Whether its last read worked.
    pub ok: bool,
    /// Failed reads since the last one that worked.
    pub consecutive_failures: u64,
    /// Failed reads since the agent started.
    pub total_failures: u64,
    /// Why its last failed read failed (the chip, its address, the bus's error and a hint),
    /// also once it reads fine again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// What the agent counts as it runs: kept by its loops, written into `status.json`, and
/// returned by [`crate::agent::run`] for the exit summary.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    /// Samples taken.
    pub samples: u64,
    /// Samples that made a report.
    pub reports: u64,
    /// Samples that made none (a sensor failed).
    pub skipped_samples: u64,
    /// Slots of the schedule missed because a sample overran its own.
    pub missed_slots: u64,
    /// Reports the database has acknowledged, `duplicates` included.
    pub delivered: u64,
    /// Acknowledged reports the database already had (sent again after a lost reply).
    pub duplicates: u64,
    /// Reports the database refused, saved to `rejected.jsonl`.
    pub rejected: u64,
    /// Undelivered reports dropped: by the spool's cap (`--spool-max-bytes`) and from memory.
    pub dropped: u64,
    /// Of `dropped`, reports held in memory while the disk could not be written: the oldest
    /// past the memory queue's limit, and at a stop all of them.
    #[serde(default)]
    pub dropped_from_memory: u64,
    /// Reports held until the system clock is synchronized (not in `pending` yet).
    #[serde(default)]
    pub held_for_clock: u64,
    /// When the last insert was acknowledged (ms since the Unix epoch).
    pub last_insert_ms: Option<i64>,
    /// When the oldest report in the spool was taken (ms since the Unix epoch), as delivery or
    /// sampling last saw it; `None` when the spool was empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_unsent_ms: Option<i64>,
    /// Whether the last insert reached the database; `None` before the first.
    pub connected: Option<bool>,
    /// Why the database was last unreachable, while it is.
    pub last_error: Option<String>,
    /// Each sensor's health.
    pub sensors: Vec<SensorStatus>,
}

/// What the agent last wrote about itself: its counters, with the spool's depth.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The agent's process id.
    pub pid: u32,
    /// When this was written (ms since the Unix epoch).
    pub updated_ms: i64,
    /// How often the agent rewrites this file (ms): every 10 s, or with each sample when
    /// samples are further apart. Files written before it was recorded say 0 (read as 10 s).
    #[serde(default)]
    pub rewritten_every_ms: u64,
    /// Reports in the spool, not yet acknowledged, `in_memory` included.
    pub pending: u64,
    /// Of `pending`, reports held in memory because the disk could not take them (full or
    /// read-only): not on disk, so a stop or a crash loses them.
    #[serde(default)]
    pub in_memory: u64,
    /// The loops' counters, as fields of the same object.
    #[serde(flatten)]
    pub counters: Counters,
}

impl Status {
    /// Overwrite the file in place (see [`crate::fsutil::overwrite_padded`]): it is rewritten
    /// every few seconds and read seldom, so the write is made cheap and the reader tries
    /// again. Not synced: one lost to a power cut is rewritten at the next start.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let text = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        crate::fsutil::overwrite_padded(path, &text)
    }

    /// The status file at `path`, if it is there and readable. A read that caught the agent
    /// writing it does not parse, and is made again a moment later.
    pub fn read(path: &Path) -> Option<Status> {
        for _ in 0..READ_TRIES {
            if let Ok(status) = serde_json::from_slice(&std::fs::read(path).ok()?) {
                return Some(status);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        None
    }

    /// Whether this is still the running agent's word at `now` (ms): written no longer ago
    /// than three of its rewrite periods. Either way: a clock set back since makes a file
    /// from the future, which counts as old too.
    pub fn is_current(&self, now: i64) -> bool {
        let every = i64::try_from(self.rewritten_every_ms)
            .unwrap_or(i64::MAX)
            .max(STATUS_EVERY.as_millis() as i64);
        now.abs_diff(self.updated_ms) <= every.saturating_mul(CURRENT_FOR).unsigned_abs()
    }

    /// Whether the agent that wrote this still runs at `now` (ms): the file is current (see
    /// [`Status::is_current`]) and its process is there. A stopped agent writes the file as it
    /// goes, so the file alone would say so for half a minute after the stop.
    pub fn is_running(&self, now: i64) -> bool {
        self.is_current(now) && process_exists(self.pid)
    }
}

/// Whether a process `pid` exists: one this user may not signal (the service runs as root)
/// counts, and so does an id that cannot be a process's (0, or too large), leaving it to the
/// file's age.
fn process_exists(pid: u32) -> bool {
    use rustix::process::{test_kill_process, Pid};
    let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
        return true;
    };
    test_kill_process(pid) != Err(rustix::io::Errno::SRCH)
}

/// Whether an agent holds the lock of the spool directory `dir` (see the agent's start): the
/// kernel lets go of it when the process ends, however it ends, so this is true of a running
/// agent whatever its status file says (one it cannot write, on a disk gone read-only), and
/// never of a process that took the agent's id since. False where there is no lock to look
/// at (an agent that could not make one).
fn spool_is_locked(dir: &Path) -> bool {
    use rustix::fs::{flock, FlockOperation};
    let Ok(file) = std::fs::File::open(dir.join(crate::agent::LOCK_FILE)) else {
        return false;
    };
    flock(&file, FlockOperation::NonBlockingLockShared) == Err(rustix::io::Errno::WOULDBLOCK)
}

/// What `status` found of the agent, for its exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Agent {
    /// Its status file is current and its process is there (exit 0).
    Running,
    /// It left a status file but is not running (exit [`NOT_RUNNING`]).
    NotRunning,
    /// No status file yet, or an unreadable one: not known (exit [`UNKNOWN`]).
    Unknown,
}

impl Agent {
    /// `status`'s exit status for what it found: the LSB's codes, for scripts.
    pub fn exit_status(self) -> u8 {
        match self {
            Agent::Running => 0,
            Agent::NotRunning => NOT_RUNNING,
            Agent::Unknown => UNKNOWN,
        }
    }
}

/// `status`'s exit status when the agent is not running: the LSB's "program is not running".
pub const NOT_RUNNING: u8 = 3;
/// `status`'s exit status when it cannot tell: the LSB's "program or service status is
/// unknown". Not 0, which scripts read as "running".
pub const UNKNOWN: u8 = 4;

/// What `sensehat-monitor status` prints, and what it found of the agent.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// The text for standard output.
    pub text: String,
    /// Whether the agent runs.
    pub agent: Agent,
}

fn age(ms: i64, now: i64) -> String {
    let s = (now - ms).max(0) / 1000;
    match s {
        0..=119 => format!("{s} s ago"),
        120..=7199 => format!("{} min ago", s / 60),
        7200..=172_799 => format!("{:.1} h ago", s as f64 / 3600.0),
        _ => format!("{:.1} days ago", s as f64 / 86400.0),
    }
}

fn when(ms: i64, now: i64) -> String {
    format!("{} ({})", iso_millis(ms).unwrap_or_default(), age(ms, now))
}

/// The text `sensehat-monitor status` prints, and whether the agent runs.
pub fn render(dir: &Path) -> std::io::Result<Rendered> {
    let now = now_ms();
    let summary = spool::summarize(dir)?;
    let status = Status::read(&dir.join(STATUS_FILE));
    let agent = match &status {
        Some(s) if s.is_running(now) => Agent::Running,
        _ if spool_is_locked(dir) => Agent::Running,
        None => Agent::Unknown,
        Some(_) => Agent::NotRunning,
    };
    // The running agent's status file is its word on what is unsent: the files alone count
    // from the delivered position on disk, which it writes down only once a minute, so a
    // healthy agent would show a minute of delivered reports as unsent. What it holds in memory
    // is in that file only; one it left when it stopped holds nothing any more (what its memory
    // held was lost, and counted as dropped).
    let current = status.as_ref().filter(|_| agent == Agent::Running);
    let mut out = String::new();
    match (agent, &status) {
        (Agent::NotRunning, Some(s)) => out.push_str(&not_running(s.updated_ms, now)),
        (Agent::Running, Some(s)) if !s.is_current(now) => out.push_str(&format!(
            "agent: running, but its status file was last written {}: the spool's disk is probably full or read-only (its journal says), and the figures below are from then; do not stop or restart it before the disk takes writes again, or what it holds in memory is lost\n",
            age(s.updated_ms, now)
        )),
        (Agent::Running, None) => out.push_str(
            "agent: running, but it has written no status file (is the spool's disk full or read-only? its journal says)\n",
        ),
        _ => {}
    }
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<22}{v}\n"));
    line("spool", dir.display().to_string());
    for (k, v) in unsent(&summary, current) {
        line(k, v);
    }
    let on_disk = summary
        .oldest
        .as_deref()
        .and_then(|b| mongodb::bson::Document::from_reader(&mut &b[..]).ok())
        .and_then(|d| {
            d.get_datetime(crate::report::field::RECORDED_AT)
                .ok()
                .map(|t| t.timestamp_millis())
        });
    // The agent's own last look, while it runs (reports in memory are not in the files).
    let oldest = match current {
        Some(s) if s.pending == 0 => None,
        Some(s) => s.counters.oldest_unsent_ms.or(on_disk),
        None => on_disk,
    };
    line(
        "oldest unsent",
        oldest.map_or_else(|| "none".to_owned(), |ms| when(ms, now)),
    );
    // Spool files that could not be read, kept under another name (see the spool): a person
    // should know they are there, and that their reports were not sent.
    let set_aside = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().contains(spool::SET_ASIDE))
        .count();
    if set_aside > 0 {
        line(
            "unreadable files",
            format!("{set_aside} set aside in the spool directory, their reports not sent (the agent's log says which; the SD card may be failing)"),
        );
    }
    match status {
        None if dir.join(STATUS_FILE).exists() => line(
            "agent",
            format!("{STATUS_FILE} is there but unreadable (damaged?); the agent rewrites it within 10 s while it runs"),
        ),
        None => line(
            "agent",
            "no status file yet (has the agent run with this --spool-dir?)".into(),
        ),
        Some(s) => agent_lines(&mut line, s.updated_ms, &s.counters, now),
    }
    Ok(Rendered { text: out, agent })
}

/// The first line of `status` for an agent that is not running, its status file written at
/// `updated_ms`.
fn not_running(updated_ms: i64, now: i64) -> String {
    let written = if updated_ms > now {
        // The clock was set back since.
        format!(
            "at {}, later than now",
            iso_millis(updated_ms).unwrap_or_default()
        )
    } else {
        age(updated_ms, now)
    };
    format!("agent: not running (its last status, written {written}, follows)\n")
}

/// The `unsent reports` line: the running `agent`'s count when there is one, else what the
/// spool's files hold; with reports the agent holds in memory said apart, and the files'
/// figures on a line of their own.
fn unsent(summary: &SpoolSummary, agent: Option<&Status>) -> Vec<(&'static str, String)> {
    let files = format!(
        "{} bytes in {} segment files",
        summary.bytes, summary.segments
    );
    let Some(s) = agent else {
        return vec![("unsent reports", format!("{} ({files})", summary.pending))];
    };
    if s.in_memory == 0 {
        return vec![("unsent reports", format!("{} ({files})", s.pending))];
    }
    vec![
        (
            "unsent reports",
            format!(
                "{} ({} of them in memory, not on disk: the spool's disk cannot be written, full or read-only; free space on it or make it writable before you stop or restart the agent, which would lose them)",
                s.pending, s.in_memory
            ),
        ),
        ("on disk", format!("{} reports ({files})", summary.pending)),
    ]
}

/// What `status` says of the reports dropped: by the cap, and from memory when there were any.
fn dropped(s: &Counters) -> String {
    if s.dropped_from_memory == 0 {
        return format!("{} dropped (spool full)", s.dropped);
    }
    format!(
        "{} dropped ({} spool full, {} held in memory while the disk could not be written)",
        s.dropped,
        s.dropped.saturating_sub(s.dropped_from_memory),
        s.dropped_from_memory
    )
}

/// What `status` says about the running agent, from its status file.
fn agent_lines(line: &mut impl FnMut(&str, String), updated_ms: i64, s: &Counters, now: i64) {
    line("status written", when(updated_ms, now));
    line(
        "database",
        match s.connected {
            Some(true) => "connected".into(),
            Some(false) => {
                format!("unreachable: {}", s.last_error.as_deref().unwrap_or("?"))
            }
            None => "not contacted yet".into(),
        },
    );
    line(
        "last insert",
        s.last_insert_ms
            .map_or_else(|| "never".to_owned(), |ms| when(ms, now)),
    );
    line(
        "samples",
        format!(
            "{} taken, {} reports, {} skipped (sensor faults), {} slots missed",
            s.samples, s.reports, s.skipped_samples, s.missed_slots
        ),
    );
    line(
        "delivery",
        format!(
            "{} delivered ({} were already present), {} refused, {}",
            s.delivered,
            s.duplicates,
            s.rejected,
            dropped(s)
        ),
    );
    if s.held_for_clock > 0 {
        line(
            "held for the clock",
            format!(
                "{} reports wait for systemd-timesyncd to synchronize the clock (--clock-wait)",
                s.held_for_clock
            ),
        );
    }
    for sensor in &s.sensors {
        line(
            &format!("sensor {}", sensor.name),
            match (sensor.ok, &sensor.last_error) {
                (true, None) => format!("ok ({} failures in total)", sensor.total_failures),
                (true, Some(e)) => format!(
                    "ok ({} failures in total, the last: {e})",
                    sensor.total_failures
                ),
                (false, e) => format!(
                    "FAILING ({} in a row): {}",
                    sensor.consecutive_failures,
                    e.as_deref().unwrap_or("?")
                ),
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(pending: u64) -> SpoolSummary {
        SpoolSummary {
            pending,
            bytes: 4096,
            segments: 1,
            oldest: None,
        }
    }

    // With no agent running, the files' count; with one, its own count (the files count from
    // the delivered position written down once a minute); with reports in memory, those are
    // said to be in memory only, and the files' figures move to a line of their own.
    #[test]
    fn reports_in_memory_are_counted_and_said_apart() {
        assert_eq!(
            unsent(&summary(7), None),
            [("unsent reports", "7 (4096 bytes in 1 segment files)".into())]
        );
        let agent = |pending, in_memory| Status {
            pending,
            in_memory,
            ..Status::default()
        };
        assert_eq!(
            unsent(&summary(120), Some(&agent(3, 0))),
            [("unsent reports", "3 (4096 bytes in 1 segment files)".into())]
        );
        let lines = unsent(&summary(7), Some(&agent(58, 51)));
        assert_eq!(lines.len(), 2);
        assert!(
            lines[0]
                .1
                .starts_with("58 (51 of them in memory, not on disk: "),
            "{lines:?}"
        );
        assert!(lines[0].1.contains("free space"), "{lines:?}");
        assert_eq!(
            lines[1],
            (
                "on disk",
                "7 reports (4096 bytes in 1 segment files)".into()
            )
        );
    }

    // The status file is the running agent's word for three of its rewrite periods (10 s, or
    // the sampling interval when longer; 10 s for a file that does not say), not after, and
    // not when it is dated ahead of the clock by as much.
    #[test]
    fn a_status_file_is_current_for_three_rewrites() {
        let at = |updated_ms, every_ms| Status {
            updated_ms,
            rewritten_every_ms: every_ms,
            ..Status::default()
        };
        let now = 1_000_000_000;
        assert!(at(now - 30_000, 0).is_current(now));
        assert!(!at(now - 30_001, 0).is_current(now));
        assert!(at(now - 30_000, 5_000).is_current(now));
        assert!(at(now - 180_000, 60_000).is_current(now));
        assert!(!at(now - 180_001, 60_000).is_current(now));
        assert!(!at(now + 30_001, 0).is_current(now));
        // Out-of-range figures from a damaged file neither overflow nor panic.
        assert!(at(0, u64::MAX).is_current(i64::MAX));
        assert!(!at(i64::MIN, 0).is_current(i64::MAX));
    }

    // A status file is the running agent's word only while it is current and its process is
    // there: this test's own process is, a child that has exited and been reaped is not.
    #[test]
    fn a_running_agent_needs_a_current_file_and_a_live_process() {
        let now = now_ms();
        let by = |pid| Status {
            pid,
            updated_ms: now,
            ..Status::default()
        };
        assert!(by(std::process::id()).is_running(now));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let gone = child.id();
        child.wait().unwrap();
        assert!(!by(gone).is_running(now));
        let old = Status {
            updated_ms: now - 60_000,
            ..by(std::process::id())
        };
        assert!(!old.is_running(now));
        // An id no process can have leaves it to the file's age.
        assert!(by(0).is_running(now));
        assert_eq!(
            not_running(now - 5_000, now),
            "agent: not running (its last status, written 5 s ago, follows)\n"
        );
    }

    // An agent that holds its spool's lock runs, though its status file is old (a disk gone
    // read-only cannot take it): `status` says so and shows the readings it held in memory
    // then, rather than "not running", after which a restart would lose them. Without the
    // lock held, the same file is a stopped agent's.
    #[test]
    fn an_agent_holding_the_spool_lock_runs_though_its_status_file_is_old() {
        use rustix::fs::{flock, FlockOperation};
        let dir = tempfile::tempdir().unwrap();
        let old = Status {
            pid: std::process::id(),
            updated_ms: now_ms() - 120_000,
            pending: 9,
            in_memory: 7,
            ..Status::default()
        };
        old.write(&dir.path().join(STATUS_FILE)).unwrap();
        let lock = std::fs::File::create(dir.path().join(crate::agent::LOCK_FILE)).unwrap();
        let stopped = render(dir.path()).unwrap();
        assert_eq!(stopped.agent, Agent::NotRunning, "{}", stopped.text);
        flock(&lock, FlockOperation::NonBlockingLockExclusive).unwrap();
        let running = render(dir.path()).unwrap();
        assert_eq!(running.agent, Agent::Running, "{}", running.text);
        assert!(
            running
                .text
                .starts_with("agent: running, but its status file was last written 2 min ago"),
            "{}",
            running.text
        );
        assert!(
            running.text.contains("7 of them in memory"),
            "{}",
            running.text
        );
        drop(lock);
        assert_eq!(render(dir.path()).unwrap().agent, Agent::NotRunning);
    }

    // Drops from memory are told from the cap's, and only when there are any.
    #[test]
    fn drops_from_memory_are_said_apart() {
        let c = Counters {
            dropped: 9,
            ..Counters::default()
        };
        assert_eq!(dropped(&c), "9 dropped (spool full)");
        let c = Counters {
            dropped_from_memory: 5,
            ..c
        };
        assert_eq!(
            dropped(&c),
            "9 dropped (4 spool full, 5 held in memory while the disk could not be written)"
        );
    }

    // An older status file, without the fields added since, still reads: nothing in memory.
    #[test]
    fn an_older_status_file_reads_with_nothing_in_memory() {
        let old = r#"{"pid": 7, "updated_ms": 1, "pending": 3, "samples": 1, "reports": 1,
            "skipped_samples": 0, "missed_slots": 0, "delivered": 0, "duplicates": 0,
            "rejected": 0, "dropped": 2, "last_insert_ms": null, "connected": null,
            "last_error": null, "sensors": []}"#;
        let s: Status = serde_json::from_str(old).unwrap();
        assert_eq!((s.pending, s.in_memory, s.rewritten_every_ms), (3, 0, 0));
        assert_eq!((s.counters.dropped, s.counters.dropped_from_memory), (2, 0));
    }
}
