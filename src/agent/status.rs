//! Writing `status.json` (see [`crate::status`]) from the loops' counters and the spool.

use std::path::Path;

use tracing::debug;

use crate::clock::now_ms;
use crate::sink::spool::Spool;
use crate::status::{Counters, Status};

/// Replace `path` with what the agent counts now and what the spool holds. A failure is not
/// worth more than a debug line: the file is rewritten every few seconds.
pub(super) fn write_status(path: &Path, counters: Counters, spool: &Spool) {
    let status = Status {
        pid: std::process::id(),
        updated_ms: now_ms(),
        pending: spool.pending(),
        counters: Counters {
            dropped: spool.dropped_total.max(counters.dropped),
            ..counters
        },
    };
    if let Err(e) = status.write(path) {
        debug!(error = %e, "cannot write status file");
    }
}
