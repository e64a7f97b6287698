//! Opening the spool for a run: what opening found is said, and the readings a killed run
//! held for the clock are moved into it (see [`crate::clock::recover_last_run`]).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use tracing::{error, warn};

use crate::sink::spool::{Spool, SpoolError, SpoolOptions};

/// The file in the spool directory an agent holds a lock on while it uses the directory.
pub const LOCK_FILE: &str = "lock";

/// Why the spool could not be opened for a run.
#[derive(Debug, thiserror::Error)]
pub enum OpenSpoolError {
    /// Another agent holds the directory's lock.
    #[error("another sensehat-monitor{} is using the spool directory {}: stop it first (`sudo systemctl stop sensehat-monitor` for the service), or give this one a --spool-dir of its own", .pid.map(|p| format!(" (pid {p})")).unwrap_or_default(), .dir.display())]
    InUse {
        /// The spool directory.
        dir: PathBuf,
        /// The holder's process id, as it wrote it in the lock file.
        pid: Option<u32>,
    },
    /// The spool itself.
    #[error("{0}; choose a writable directory with --spool-dir")]
    Spool(#[from] SpoolError),
}

/// The spool, open and ready for [`super::run`].
pub struct OpenedSpool {
    /// The spool.
    pub spool: Spool,
    /// Reports it held at start, not yet delivered (the last run's held readings included).
    pub backlog: u64,
    /// Where this run writes the reports it holds for the clock, and how (for
    /// [`crate::clock::ClockWait::copy`]).
    pub held: (PathBuf, SpoolOptions),
    /// The directory's lock, held until this is dropped (`None` where the filesystem has no
    /// locks).
    pub lock: Option<File>,
}

/// Open the spool in `dir`, logging what had to be repaired, and move the last run's held
/// readings into it. Refused while another agent uses `dir`: two would cut each other's
/// records as torn, write to one file at once, and delete each other's segments as delivered.
pub fn open_spool(dir: &Path, options: SpoolOptions) -> Result<OpenedSpool, OpenSpoolError> {
    let lock = lock_dir(dir)?;
    let (mut spool, opened) = Spool::open(dir, options.clone())?;
    for problem in &opened.problems {
        error!("{problem}");
    }
    if opened.corrupt_regions > 0 {
        error!(
            regions = opened.corrupt_regions,
            bytes = opened.corrupt_bytes,
            "skipped bad data between good records in the spool; the readings in it are lost, the rest are kept. If this happens again, the SD card may be failing"
        );
    }
    if opened.corrupt_delivered_regions > 0 {
        warn!(
            regions = opened.corrupt_delivered_regions,
            "found bad data among readings the spool had delivered already (nothing is lost: the database has them). If this happens again, the SD card may be failing"
        );
    }
    if opened.torn_bytes > 0 {
        warn!(
            bytes = opened.torn_bytes,
            "cut a torn record from the end of the spool (the last run was killed mid-write, or the power was cut before the end was synced)"
        );
    }
    let held_dir = crate::clock::recover_last_run(&mut spool, dir);
    // The last run's held readings, moved in just now, are part of the backlog.
    let backlog = spool.pending();
    // No cap: at most HELD_MAX reports, which are in memory too.
    let held_options = SpoolOptions {
        max_bytes: u64::MAX,
        ..options
    };
    Ok(OpenedSpool {
        spool,
        backlog,
        held: (held_dir, held_options),
        lock,
    })
}

/// Take the lock of the spool directory `dir` (made if missing), and write this process's id
/// in it for the message another agent gives. The kernel lets go of it when the process ends,
/// however it ends.
fn lock_dir(dir: &Path) -> Result<Option<File>, OpenSpoolError> {
    use rustix::fs::{flock, FlockOperation};
    crate::fsutil::create_dir_all(dir).map_err(|source| SpoolError::Dir {
        dir: dir.to_owned(),
        source,
    })?;
    let path = dir.join(LOCK_FILE);
    let opened = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        // Made by another user (an agent run by hand with sudo): a lock needs no writing.
        .or_else(|made| File::open(&path).map_err(|_| made));
    let mut file = match opened {
        Ok(file) => file,
        // No lock file yet on a disk that is full or read-only now (a card remounted after
        // errors): the agent runs from memory until it can write, as it does when the disk
        // fails later, rather than not at all.
        Err(e) if crate::fsutil::disk_trouble(&e) => {
            warn!(error = %e, path = %path.display(), "cannot make the spool directory's lock file (disk full or read-only?); a second agent started on it would not be refused");
            return Ok(None);
        }
        Err(source) => return Err(SpoolError::Io { path, source }.into()),
    };
    match flock(&file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            return Err(OpenSpoolError::InUse {
                dir: dir.to_owned(),
                pid: text.trim().parse().ok(),
            });
        }
        Err(e) => {
            warn!(error = %e, path = %path.display(), "cannot lock the spool directory (does its filesystem support locks?); a second agent started on it would not be refused");
            return Ok(None);
        }
    }
    let _ = file
        .set_len(0)
        .and_then(|()| writeln!(file, "{}", std::process::id()));
    Ok(Some(file))
}
