//! A read-only look at a spool directory, for `status` and tools: safe while the agent runs.

use std::fs::{self, File};
use std::io;
use std::path::Path;

use super::dir::{list_segments, position_is_damaged, read_cursor, segment_name};
use super::frame::Frames;

/// What a spool directory holds, seen from outside.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct SpoolSummary {
    /// Undelivered reports.
    pub pending: u64,
    /// Bytes of segment files.
    pub bytes: u64,
    /// Segment files.
    pub segments: usize,
    /// The first undelivered report's payload.
    pub oldest: Option<Vec<u8>>,
}

/// Summarize the spool in `dir` without changing anything.
pub fn summarize(dir: &Path) -> io::Result<SpoolSummary> {
    let mut s = SpoolSummary::default();
    for id in list_segments(dir)? {
        s.bytes += fs::metadata(dir.join(segment_name(id)))?.len();
        s.segments += 1;
    }
    for_each_pending(dir, |payload| {
        s.pending += 1;
        if s.oldest.is_none() {
            s.oldest = Some(payload.to_vec());
        }
    })?;
    Ok(s)
}

/// Call `f` with every undelivered report, oldest first, without changing anything (safe
/// while the agent runs: a record being appended may be missed, never misread).
pub fn for_each_pending(dir: &Path, mut f: impl FnMut(&[u8])) -> io::Result<()> {
    let ids = list_segments(dir)?;
    // A damaged position delivers nothing: the agent sends everything again (see `recovery`).
    let ack = read_cursor(dir)
        .filter(|at| !position_is_damaged(*at, &ids))
        .unwrap_or_default();
    for id in ids {
        if id < ack.segment {
            continue;
        }
        let path = dir.join(segment_name(id));
        let file = match File::open(&path) {
            Ok(f) => f,
            // Delivered and deleted since it was listed.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let mut frames = Frames::of_file(file)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        while let Some((start, p)) = frames.next()? {
            if id > ack.segment || start >= ack.offset {
                f(&p);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::spool::testutil::{opts, payload};
    use crate::sink::spool::Spool;
    use std::time::Instant;

    // A summary taken from outside matches the spool's own count and finds the oldest report.
    #[test]
    fn summary_reads_depth_and_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = Spool::open(dir.path(), opts(1 << 20)).unwrap();
        for i in 0..10 {
            s.append(&payload(i), Instant::now());
        }
        let b = s.next_batch(4).unwrap();
        s.ack(&b);
        s.close().unwrap();
        let sum = summarize(dir.path()).unwrap();
        assert_eq!(sum.pending, 6);
        assert_eq!(sum.oldest.unwrap(), payload(4));
    }
}
