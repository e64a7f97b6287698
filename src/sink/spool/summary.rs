//! A read-only look at a spool directory, for `status` and tools: safe while the agent runs.

use std::fs::{self, File};
use std::io;
use std::path::Path;

use super::dir::{list_segments, position_is_damaged, read_cursor, segment_name};
use super::frame::Frames;
use super::Position;

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
    let (at, ids) = position_and_listing(dir)?;
    summarize_listed(dir, at, &ids)
}

/// Call `f` with every undelivered report, oldest first, without changing anything (safe
/// while the agent runs: a record being appended may be missed, never misread).
pub fn for_each_pending(dir: &Path, f: impl FnMut(&[u8])) -> io::Result<()> {
    let (at, ids) = position_and_listing(dir)?;
    pending_listed(dir, at, &ids, f)
}

/// The delivered position written down in `dir`, then the segments listed there. In this
/// order: the running agent writes down positions in segments it created after a listing
/// taken first, and such a position, naming a segment the listing lacks, reads as damaged
/// (and delivered reports as unsent). Read first, the position is at worst older than the
/// listing, which costs no more than a position written down a minute ago does.
fn position_and_listing(dir: &Path) -> io::Result<(Option<Position>, Vec<u64>)> {
    let at = read_cursor(dir);
    Ok((at, list_segments(dir)?))
}

/// [`summarize`], with the delivered position `at` and the segments `ids` listed in `dir`.
fn summarize_listed(dir: &Path, at: Option<Position>, ids: &[u64]) -> io::Result<SpoolSummary> {
    let mut s = SpoolSummary::default();
    for &id in ids {
        match fs::metadata(dir.join(segment_name(id))) {
            Ok(m) => {
                s.bytes += m.len();
                s.segments += 1;
            }
            // Delivered and deleted since it was listed.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    pending_listed(dir, at, ids, |payload| {
        s.pending += 1;
        if s.oldest.is_none() {
            s.oldest = Some(payload.to_vec());
        }
    })?;
    Ok(s)
}

/// [`for_each_pending`], with the delivered position `at` and the segments `ids` listed in
/// `dir`.
fn pending_listed(
    dir: &Path,
    at: Option<Position>,
    ids: &[u64],
    mut f: impl FnMut(&[u8]),
) -> io::Result<()> {
    // A damaged position delivers nothing: the agent sends everything again (see `recovery`).
    let ack = at
        .filter(|at| !position_is_damaged(*at, ids))
        .unwrap_or_default();
    for &id in ids {
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

    // A segment the agent deleted between the listing and the look at it (it deletes each
    // segment it has delivered) is skipped: it made `status` exit 1 now and then.
    #[test]
    fn a_segment_deleted_after_the_listing_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        // 4096-byte segments: 38 records of 108 bytes each.
        let (mut s, _) = Spool::open(dir.path(), opts(8 * 4096)).unwrap();
        for i in 0..80 {
            s.append(&payload(i), Instant::now());
        }
        let (at, ids) = position_and_listing(dir.path()).unwrap();
        assert_eq!(ids, [1, 2, 3]);
        let b = s.next_batch(100).unwrap();
        s.ack(&b);
        s.close().unwrap();
        assert!(!dir.path().join(segment_name(1)).exists());
        let sum = summarize_listed(dir.path(), at, &ids).unwrap();
        assert_eq!((sum.segments, sum.pending), (2, 42));
        assert_eq!(sum.oldest, Some(payload(38)));
    }
}
