//! A read-only look at a spool directory, for `status` and tools: safe while the agent runs.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

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

/// A segment file [`for_each_pending`] could not read, and why.
#[derive(Debug)]
pub struct Unreadable {
    /// The file.
    pub path: PathBuf,
    /// What the system said, or why the file is not taken for a segment (its size).
    pub error: io::Error,
}

impl From<Unreadable> for io::Error {
    fn from(Unreadable { path, error }: Unreadable) -> Self {
        io::Error::new(error.kind(), format!("{}: {error}", path.display()))
    }
}

/// Summarize the spool in `dir` without changing anything; an error for a segment file that
/// cannot be read (the agent sets it aside when delivery comes to it).
pub fn summarize(dir: &Path) -> io::Result<SpoolSummary> {
    let (at, ids) = position_and_listing(dir)?;
    summarize_listed(dir, at, &ids)
}

/// Call `f` with every undelivered report, oldest first, without changing anything (safe
/// while the agent runs: a record being appended may be missed, never misread). A segment
/// file that cannot be read keeps back only its own reports: it is returned, for the caller
/// to say and set aside, and the others are read. `Err` when `dir` cannot be listed.
pub fn for_each_pending(dir: &Path, f: impl FnMut(&[u8])) -> io::Result<Vec<Unreadable>> {
    let (at, ids) = position_and_listing(dir)?;
    Ok(pending_listed(dir, at, &ids, f))
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
        let path = dir.join(segment_name(id));
        match fs::metadata(&path) {
            Ok(m) => {
                s.bytes += m.len();
                s.segments += 1;
            }
            // Delivered and deleted since it was listed.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(Unreadable { path, error }.into()),
        }
    }
    let unreadable = pending_listed(dir, at, ids, |payload| {
        s.pending += 1;
        if s.oldest.is_none() {
            s.oldest = Some(payload.to_vec());
        }
    });
    match unreadable.into_iter().next() {
        Some(u) => Err(u.into()),
        None => Ok(s),
    }
}

/// [`for_each_pending`], with the delivered position `at` and the segments `ids` listed in
/// `dir`.
fn pending_listed(
    dir: &Path,
    at: Option<Position>,
    ids: &[u64],
    mut f: impl FnMut(&[u8]),
) -> Vec<Unreadable> {
    // A damaged position delivers nothing: the agent sends everything again (see `recovery`).
    let ack = at
        .filter(|at| !position_is_damaged(*at, ids))
        .unwrap_or_default();
    let mut unreadable = Vec::new();
    for &id in ids {
        if id < ack.segment {
            continue;
        }
        let path = dir.join(segment_name(id));
        let read = File::open(&path)
            .and_then(Frames::of_file)
            .and_then(|mut frames| {
                while let Some((start, p)) = frames.next()? {
                    if id > ack.segment || start >= ack.offset {
                        f(&p);
                    }
                }
                Ok(())
            });
        match read {
            Ok(()) => {}
            // Delivered and deleted since it was listed.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(error) => unreadable.push(Unreadable { path, error }),
        }
    }
    unreadable
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

    // A segment file that cannot be read (a link to itself; a file too large to be one) keeps
    // back only its own reports: it is returned, and the others are read. `status` still says
    // it cannot read the spool, naming the file.
    #[test]
    fn an_unreadable_segment_keeps_back_only_its_own_reports() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = Spool::open(dir.path(), opts(8 * 4096)).unwrap();
        for i in 0..80 {
            s.append(&payload(i), Instant::now());
        }
        s.close().unwrap();
        let second = dir.path().join(segment_name(2));
        fs::remove_file(&second).unwrap();
        std::os::unix::fs::symlink(&second, &second).unwrap();
        let huge = File::create(dir.path().join(segment_name(4))).unwrap();
        huge.set_len(super::super::frame::FILE_MAX + 1).unwrap();
        let mut listed = Vec::new();
        let unreadable = for_each_pending(dir.path(), |p| listed.push(p.to_vec())).unwrap();
        let paths: Vec<_> = unreadable.iter().map(|u| u.path.clone()).collect();
        assert_eq!(paths, [second.clone(), dir.path().join(segment_name(4))]);
        assert_eq!(
            listed,
            (0..38).chain(76..80).map(payload).collect::<Vec<_>>()
        );
        let e = summarize(dir.path()).unwrap_err();
        assert!(e.to_string().contains(&second.display().to_string()), "{e}");
    }
}
