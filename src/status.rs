//! `status.json`, written by the running agent next to its spool, and the `status` command
//! that combines it with a read-only look at the spool.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::clock::now_ms;
use crate::report::iso_millis;
use crate::sink::spool;

pub const STATUS_FILE: &str = "status.json";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SensorStatus {
    pub name: String,
    pub ok: bool,
    pub consecutive_failures: u64,
    pub total_failures: u64,
}

/// What the agent last wrote about itself.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub pid: u32,
    pub updated_ms: i64,
    pub samples: u64,
    pub reports: u64,
    pub skipped_samples: u64,
    pub missed_slots: u64,
    pub delivered: u64,
    pub duplicates: u64,
    pub rejected: u64,
    pub dropped: u64,
    pub pending: u64,
    /// Reports held until the system clock is synchronized (not in `pending` yet).
    #[serde(default)]
    pub held_for_clock: u64,
    pub last_insert_ms: Option<i64>,
    pub connected: Option<bool>,
    pub last_error: Option<String>,
    pub sensors: Vec<SensorStatus>,
}

impl Status {
    /// Replace the file whole, so a reader never sees half of it. Not synced: it is rewritten
    /// often, and one lost to a power cut is rewritten at the next start.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let text = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        crate::fsutil::replace(path, &text, crate::fsutil::Durability::Unsynced)
    }

    pub fn read(path: &Path) -> Option<Status> {
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }
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

/// The text `sensehat-monitor status` prints.
pub fn render(dir: &Path) -> std::io::Result<String> {
    let now = now_ms();
    let summary = spool::summarize(dir)?;
    let status = Status::read(&dir.join(STATUS_FILE));
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<22}{v}\n"));
    line("spool", dir.display().to_string());
    line(
        "unsent reports",
        format!(
            "{} ({} bytes in {} segment files)",
            summary.pending, summary.bytes, summary.segments
        ),
    );
    let oldest = summary
        .oldest
        .as_deref()
        .and_then(|b| mongodb::bson::Document::from_reader(&mut &b[..]).ok())
        .and_then(|d| {
            d.get_datetime("recordedAt")
                .ok()
                .map(|t| t.timestamp_millis())
        });
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
        None => line(
            "agent",
            "no status file yet (has the agent run with this --spool-dir?)".into(),
        ),
        Some(s) => {
            line("status written", when(s.updated_ms, now));
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
                    "{} delivered ({} were already present), {} refused, {} dropped (spool full)",
                    s.delivered, s.duplicates, s.rejected, s.dropped
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
                    if sensor.ok {
                        format!("ok ({} failures in total)", sensor.total_failures)
                    } else {
                        format!("FAILING ({} in a row)", sensor.consecutive_failures)
                    },
                );
            }
        }
    }
    Ok(out)
}
