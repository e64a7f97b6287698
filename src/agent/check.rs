//! `check-config`: what the agent would need to start (a connection string the driver takes,
//! a spool directory it may write), and what the clock says, without starting it. Suitable for
//! systemd's `ExecStartPre`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::clock::{clock_state, ClockState};

/// What `check-config` looks at.
#[derive(Debug, Clone)]
pub struct CheckConfig {
    /// The connection string and the spool directory; `None` with `--dry-run`, which needs
    /// neither.
    pub database: Option<(String, PathBuf)>,
    /// `--clock-sync-file`.
    pub clock_sync_file: PathBuf,
    /// `--clock-wait`.
    pub clock_wait: Duration,
    /// The directory systemd's `StateDirectory=` gave the service, when run as one.
    pub state_directory: Option<PathBuf>,
    /// `--metrics-textfile`, when the agent will write it (not with `--dry-run`).
    pub metrics_textfile: Option<PathBuf>,
}

/// Why the agent could not start as configured.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The connection string is missing or one the driver refuses (the message says which).
    #[error("{0}")]
    Uri(String),
    /// The spool directory cannot be created or written, for a reason other than a disk that
    /// is full or failing.
    #[error("the spool directory {} is not writable: {source}; choose another with --spool-dir", dir.display())]
    SpoolDir {
        /// The directory.
        dir: PathBuf,
        /// What creating it or writing in it gave.
        source: std::io::Error,
    },
    /// The spool directory is read-only to the service while its state directory is not: the
    /// unit's `ProtectSystem=strict`, not the disk. The agent would fail at start at each try.
    #[error("the spool directory {} is read-only to this service: its unit (ProtectSystem=strict) lets it write only its state directory {}. Add `ReadWritePaths={}` under [Service] in a drop-in (`sudo systemctl edit sensehat-monitor`), or leave SENSEHAT_SPOOL_DIR unset to use {}", dir.display(), state.display(), dir.display(), state.display())]
    Sandboxed {
        /// The spool directory.
        dir: PathBuf,
        /// The state directory, which the service may write.
        state: PathBuf,
    },
}

/// Check the configuration. `Ok` carries what to tell the person (each a line): things that
/// do not keep the agent from starting, and what it will do about the clock.
pub async fn check_config(config: &CheckConfig) -> Result<Vec<String>, CheckError> {
    let mut notes = Vec::new();
    if let Some((uri, dir)) = &config.database {
        crate::mongo::check_uri(uri)
            .await
            .map_err(CheckError::Uri)?;
        match crate::fsutil::create_dir_all(dir).and_then(|()| write_probe(dir)) {
            Ok(()) => {}
            // A disk that is full, read-only or failing now: the agent runs all the same,
            // keeping reports in memory until it can write, so this must not keep it from
            // starting (this is the unit's ExecStartPre). Unless the disk is fine and only
            // the service's sandbox keeps it from writing there.
            Err(e) if crate::fsutil::disk_trouble(&e) => {
                if let Some(state) = sandboxed(dir, &e, config.state_directory.as_deref()) {
                    return Err(CheckError::Sandboxed {
                        dir: dir.clone(),
                        state: state.to_owned(),
                    });
                }
                notes.push(format!(
                "warning: the spool directory {} cannot be written now: {e}; the agent keeps reports in memory (up to 50,000) until it can",
                    dir.display()
                ))
            }
            Err(source) => {
                return Err(CheckError::SpoolDir {
                    dir: dir.clone(),
                    source,
                })
            }
        }
    }
    // Metrics must not keep the agent from taking readings, but a file never written raises
    // no alert of its own (SensehatMetricsFileStale needs the file): said here, at the gate.
    if let Some(textfile) = &config.metrics_textfile {
        if let Err(e) = write_probe(crate::fsutil::dir_of(textfile)) {
            notes.push(format!(
                "warning: --metrics-textfile {} cannot be written: {e}; the agent runs without it, and node_exporter finds no file. The service may write in /run/sensehat-monitor (its RuntimeDirectory), or add `ReadWritePaths=` in a drop-in (`sudo systemctl edit sensehat-monitor`)",
                textfile.display()
            ));
        }
    }
    // Not an error either way; said so the journal shows what the agent will do.
    notes.push(clock_note(&config.clock_sync_file, config.clock_wait));
    Ok(notes)
}

/// What the agent will do about the clock, as `check-config` says it.
fn clock_note(marker: &Path, wait: Duration) -> String {
    match clock_state(marker) {
        ClockState::Synchronized => format!("clock: synchronized ({})", marker.display()),
        ClockState::NotYet if wait.is_zero() => {
            "clock: not synchronized yet; --clock-wait is 0, so readings are stamped by it as it is"
                .to_owned()
        }
        ClockState::NotYet => format!(
            "clock: not synchronized yet; readings will be held for up to {wait:?} (--clock-wait) and stamped once it is"
        ),
        ClockState::Unknown => format!(
            "clock: no systemd-timesyncd to ask ({} does not exist); the clock is trusted as it is",
            marker.parent().unwrap_or(marker).display()
        ),
    }
}

/// The state directory, when `dir` outside it is read-only (`e`) while it can be written: a
/// unit's `ProtectSystem=strict` makes every path but its own directories (and those in
/// `ReadWritePaths=`) read-only, where a card remounted read-only after errors fails both.
fn sandboxed<'a>(dir: &Path, e: &std::io::Error, state: Option<&'a Path>) -> Option<&'a Path> {
    let state = state?;
    let outside = !dir.starts_with(state);
    let sandbox = e.kind() == std::io::ErrorKind::ReadOnlyFilesystem && outside;
    (sandbox && write_probe(state).is_ok()).then_some(state)
}

fn write_probe(dir: &Path) -> std::io::Result<()> {
    let p = dir.join(".write-test");
    let written = std::fs::write(&p, b"ok");
    let removed = std::fs::remove_file(&p);
    written.and(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    // A directory that cannot be created is an error naming --spool-dir; the clock is said
    // either way.
    #[tokio::test]
    async fn an_unwritable_spool_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        let config = CheckConfig {
            database: Some(("mongodb://localhost/".into(), file.join("spool"))),
            clock_sync_file: dir.path().join("none").join("synchronized"),
            clock_wait: Duration::from_secs(300),
            state_directory: None,
            metrics_textfile: None,
        };
        let err = check_config(&config).await.unwrap_err();
        assert!(err.to_string().contains("--spool-dir"), "{err}");
        let dry = CheckConfig {
            database: None,
            ..config
        };
        let notes = check_config(&dry).await.unwrap();
        assert_eq!(notes.len(), 1);
        assert!(notes[0].contains("no systemd-timesyncd"), "{notes:?}");
    }
}
