//! Writing `status.json` (see [`crate::status`]) from the loops' counters and the spool.

use std::path::Path;
use std::time::Duration;

use tracing::debug;

use super::STATUS_EVERY;
use crate::clock::now_ms;
use crate::sink::spool::Spool;
use crate::status::{Counters, Status};

/// Replace `path` with what the agent counts now and what the spool holds; samples are
/// `interval` apart (the file is rewritten with a sample, every [`STATUS_EVERY`] or with each
/// when they are further apart). A failure is not worth more than a debug line: the file is
/// rewritten every few seconds.
pub(super) fn write_status(path: &Path, counters: Counters, spool: &Spool, interval: Duration) {
    let every = STATUS_EVERY.max(interval);
    let status = Status {
        pid: std::process::id(),
        updated_ms: now_ms(),
        rewritten_every_ms: u64::try_from(every.as_millis()).unwrap_or(u64::MAX),
        pending: spool.pending(),
        in_memory: spool.in_memory(),
        counters: Counters {
            dropped: spool.dropped_total.max(counters.dropped),
            dropped_from_memory: spool
                .dropped_from_memory_total
                .max(counters.dropped_from_memory),
            ..counters
        },
    };
    if let Err(e) = status.write(path) {
        debug!(error = %e, "cannot write status file");
    }
}
