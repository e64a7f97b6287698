//! Opening the spool for a run: what opening found is said, and the readings a killed run
//! held for the clock are moved into it (see [`crate::clock::recover_last_run`]).

use std::path::{Path, PathBuf};

use tracing::{error, warn};

use crate::sink::spool::{Spool, SpoolError, SpoolOptions};

/// The spool, open and ready for [`super::run`].
pub struct OpenedSpool {
    /// The spool.
    pub spool: Spool,
    /// Reports it held at start, not yet delivered (the last run's held readings included).
    pub backlog: u64,
    /// Where this run writes the reports it holds for the clock, and how (for
    /// [`crate::clock::ClockWait::copy`]).
    pub held: (PathBuf, SpoolOptions),
}

/// Open the spool in `dir`, logging what had to be repaired, and move the last run's held
/// readings into it.
pub fn open_spool(dir: &Path, options: SpoolOptions) -> Result<OpenedSpool, SpoolError> {
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
    })
}
