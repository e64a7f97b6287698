//! The held reports' own spool, `held/` in the spool directory: what is held survives a kill
//! or a power cut, and the next start moves it on (see [`crate::clock`]).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tracing::{error, warn};

use crate::sink::spool::{self, SetAside, Spool, SpoolError, SpoolOptions, Unreadable};

/// The held reports' spool, inside the spool directory.
pub const HELD_DIR: &str = "held";

/// The held reports' spool, shared with the sampling thread, which writes it.
pub type HeldSpool = Arc<Mutex<Spool>>;

/// Move the reports a previous run held (and could not let go: it was killed, or the power
/// went) to `spool`, as they were stamped, then delete their spool once they are synced there.
/// A file of it that cannot be read keeps back only its own reports: it is set aside into the
/// spool's directory (as `held-...`, as [`discard_held`] keeps them), said at ERROR. Returns
/// how many moved.
pub fn recover_held(spool: &mut Spool, dir: &Path) -> Result<u64, SpoolError> {
    if !dir.is_dir() {
        return Ok(0);
    }
    // Read without acknowledging: acknowledged segments are deleted, and nothing of the copy
    // may go before the spool has them on disk.
    let mut payloads = Vec::new();
    let unreadable =
        spool::for_each_pending(dir, |p| payloads.push(p.to_vec())).map_err(|source| {
            SpoolError::Io {
                path: dir.to_owned(),
                source,
            }
        })?;
    let mut left_in_place = false;
    for Unreadable { path, error } in &unreadable {
        let fate = match dir.parent() {
            Some(up) => spool::set_aside_into(path, up, "held-"),
            None => spool::set_aside(path),
        };
        left_in_place |= matches!(fate, SetAside::LeftInPlace(_));
        error!("{}", fate.said(path, error, "the held readings in it"));
    }
    let out = spool.append_all(&payloads, std::time::Instant::now());
    spool.flush()?;
    match out.disk_error {
        // In memory only: the copy on disk is all there is if we die now. Keep it.
        Some(e) => {
            warn!(error = %e, "cannot write the spool; held readings of the last run stay in {} too", dir.display())
        }
        // Deleting the directory would delete that file, unread: it stays, and what was read
        // goes out again from it at the next start (stored once).
        None if left_in_place => {
            warn!("held readings of the last run stay in {} too, with the file that cannot be read nor moved aside", dir.display())
        }
        None => discard_held(dir),
    }
    Ok(payloads.len() as u64)
}

/// At start: move what the last run held for the clock and could not let go (see
/// [`recover_held`]) to `spool`, saying so. Returns the directory this run holds reports in.
pub fn recover_last_run(spool: &mut Spool, spool_dir: &Path) -> PathBuf {
    let held_dir = spool_dir.join(HELD_DIR);
    match recover_held(spool, &held_dir) {
        Ok(0) => {}
        Ok(n) => warn!(
            reports = n,
            "readings the last run held for the clock (it stopped before it could let them go) go on as its clock stamped them; any it had already let go are stored once"
        ),
        Err(e) => error!(error = %e, "cannot move the last run's held readings to the spool; they stay in {}", held_dir.display()),
    }
    held_dir
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

pub(super) fn open_copy(dir: &Path, options: &SpoolOptions) -> Option<HeldSpool> {
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::clock::test_support::report;
    use crate::clock::{ClockGate, ClockWait};
    use tokio::time::Instant;

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
