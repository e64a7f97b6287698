//! Opening a spool directory after whatever ended the last run: delivered segments deleted,
//! every other one scanned, torn tails cut, bad regions counted, unreadable files set aside.
//! Disk faults met here are reported, never fatal.

use std::collections::VecDeque;
use std::fs::{self, OpenOptions};
use std::io;
use std::path::Path;

use super::dir::{
    list_segments, position_is_damaged, read_cursor, segment_name, set_aside, SetAside, CURSOR_FILE,
};
use super::frame::{scan, Scanned};
use super::segment::Segment;
use super::{Position, SpoolError};

/// What opening found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct OpenReport {
    /// Undelivered reports found (the backlog).
    pub pending: u64,
    /// Bytes cut from a torn tail.
    pub torn_bytes: u64,
    /// Regions of bad data between good records, skipped (the reports in them are lost).
    pub corrupt_regions: u64,
    /// Bytes of those regions.
    pub corrupt_bytes: u64,
    /// Regions of bad data among reports already delivered: nothing is lost, but the card
    /// may be failing.
    pub corrupt_delivered_regions: u64,
    /// Segment files that could not be read, set aside (or left in place).
    pub set_aside: u64,
    /// Segment files whose end could not be read (EIO), left uncut.
    pub unreadable_regions: u64,
    /// Disk errors met on the way that did not stop the spool from opening (a delivered
    /// segment that could not be deleted, an unreadable one set aside, a torn tail that could
    /// not be cut, no first segment file, a damaged delivered position), each a sentence for
    /// the log.
    pub problems: Vec<String>,
}

/// What recovery found in the directory.
pub(super) struct Recovered {
    /// The segments still holding undelivered reports (and the last one), oldest first.
    pub(super) segments: VecDeque<Segment>,
    /// Everything before this was delivered.
    pub(super) ack: Position,
    /// The delivered position `acked` holds (the default without one): the cursor writes
    /// `ack` down when the two differ.
    pub(super) written: Position,
    /// New segments get at least this id: below it lies an unreadable file left in place.
    pub(super) id_floor: u64,
    /// The lowest unreadable segment left in place.
    pub(super) left_in_place: Option<u64>,
    pub(super) report: OpenReport,
}

/// Recover the spool in `dir` (creating the directory); `Err` only when the directory itself
/// cannot be created or listed.
pub(super) fn recover(dir: &Path) -> Result<Recovered, SpoolError> {
    let dir_err = |source| SpoolError::Dir {
        dir: dir.to_owned(),
        source,
    };
    crate::fsutil::create_dir_all(dir).map_err(dir_err)?;
    let ids = list_segments(dir).map_err(dir_err)?;
    let last = ids.last().copied();
    let written = read_cursor(dir).unwrap_or_default();
    let mut found = Recovered {
        segments: VecDeque::new(),
        ack: written,
        written,
        id_floor: 0,
        left_in_place: None,
        report: OpenReport::default(),
    };
    if position_is_damaged(written, &ids) {
        // Nothing is taken as delivered: a duplicate `_id` is stored once.
        found.ack = Position::default();
        let older = ids.partition_point(|&id| id < written.segment);
        found.report.problems.push(format!(
            "the spool's delivered position in {} names segment {}, offset {}, which is not on disk while older segment files are ({older} of them): the position is damaged, so nothing is taken as delivered and every reading in the spool is sent again (the database stores each once). If this happens again, the SD card may be failing",
            dir.join(CURSOR_FILE).display(),
            written.segment,
            written.offset,
        ));
    }
    for id in ids {
        let path = dir.join(segment_name(id));
        if id < found.ack.segment {
            // Delivered before the last run ended.
            delete_delivered(&path, &mut found.report);
            continue;
        }
        let ack_offset = (id == found.ack.segment).then_some(found.ack.offset);
        match size_and_scan(&path, ack_offset) {
            Ok((size, scanned)) => found.add(&path, id, size, scanned, Some(id) == last),
            Err(e) => found.set_aside(&path, id, e),
        }
    }
    let first = found.segments.front().map_or(0, |s| s.id);
    if found.ack.segment < first {
        found.ack = Position {
            segment: first,
            offset: 0,
        };
    }
    // A power cut can keep the delivered position (a small file, renamed into place) and lose
    // the end of the segment it points into. Past the segment's end it would make the spool
    // skip the reports the next run writes there; everything the segment still holds was
    // delivered, so the position becomes its end, and new reports go to a segment of their
    // own: the position on disk still says the old offset until it is next written.
    if let Some(seg) = found.segments.iter().find(|s| s.id == found.ack.segment) {
        if found.ack.offset > seg.len {
            found.ack.offset = seg.len;
            found.id_floor = found.id_floor.max(seg.id + 1);
        }
    }
    Ok(found)
}

fn size_and_scan(path: &Path, ack_offset: Option<u64>) -> io::Result<(u64, Scanned)> {
    let size = fs::metadata(path)?.len();
    Ok((size, scan(path, ack_offset)?))
}

fn delete_delivered(path: &Path, report: &mut OpenReport) {
    if let Err(e) = fs::remove_file(path) {
        report.problems.push(format!(
            "cannot delete the delivered spool file {}: {e}; it is tried again at the next start",
            path.display()
        ));
    }
}

impl Recovered {
    /// Count segment `id`, of `size` bytes on disk, as scanned; cut its torn tail if it is
    /// the `last` one, where the next run appends.
    fn add(&mut self, path: &Path, id: u64, size: u64, scanned: Scanned, last: bool) {
        let Scanned {
            records,
            valid,
            acked,
            skipped_regions,
            skipped_bytes,
            delivered_regions,
            unreadable,
        } = scanned;
        self.report.corrupt_regions += skipped_regions;
        self.report.corrupt_bytes += skipped_bytes;
        self.report.corrupt_delivered_regions += delivered_regions;
        if valid < size && unreadable {
            // Not a torn write: the disk could not read blocks of it. Left uncut, so that a
            // start before the file is delivered reads them again (what they hold may come
            // back), and set aside rather than deleted once it is. New reports go to a new
            // segment, as after a tail that could not be cut.
            self.report.unreadable_regions += 1;
            self.report.problems.push(format!(
                "the last {} bytes of {} could not be read (an I/O error), so the readings in them cannot be sent now; the file is left as it is, and kept under another name once its other readings are delivered: a start before then reads them again. The SD card may be failing",
                size - valid,
                path.display()
            ));
        } else if valid < size {
            self.report.torn_bytes += size - valid;
            if last {
                // If it cannot be cut, the first write goes to a new segment (the writer is
                // not open yet) and reading stops at `valid` all the same.
                if let Err(e) = cut_torn_tail(path, valid) {
                    self.report.problems.push(format!(
                        "cannot cut the torn tail of {}: {e}",
                        path.display()
                    ));
                }
            }
        }
        self.report.pending += records - acked;
        if records > acked {
            // The last run may have been killed before it synced these reports: they are in
            // the page cache, and this run never writes to this segment again, so its syncs
            // would not cover them. One sync now makes them survive a power cut too.
            if let Err(e) = fs::File::open(path).and_then(|f| f.sync_data()) {
                self.report
                    .problems
                    .push(format!("cannot sync {}: {e}", path.display()));
            }
        }
        self.segments.push_back(Segment {
            id,
            len: valid,
            records,
            acked,
            unreadable_end: valid < size && unreadable,
        });
    }

    /// Segment `id` could not be read (`e`, an I/O error): out of the way under a name of its
    /// own (see [`set_aside`]), kept for whoever can read it. If it cannot even be renamed (a
    /// disk the kernel made read-only), it is left where it is and out of this run; nothing is
    /// deleted on such a disk, and the next start tries again.
    fn set_aside(&mut self, path: &Path, id: u64, e: io::Error) {
        let fate = set_aside(path);
        self.report.set_aside += 1;
        if let SetAside::LeftInPlace(_) = fate {
            self.id_floor = id + 1;
            self.left_in_place.get_or_insert(id);
        }
        self.report
            .problems
            .push(fate.said(path, &e, "the reports in it"));
    }
}

/// Cut the file at `path` to `valid` bytes, for good.
fn cut_torn_tail(path: &Path, valid: u64) -> io::Result<()> {
    let f = OpenOptions::new().write(true).open(path)?;
    f.set_len(valid)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::super::dir::SET_ASIDE;
    use super::super::frame::{frame, HEADER};
    use super::super::testutil::{damage, drain, opts, payload};
    use super::super::{for_each_pending, summarize, Spool};
    use std::fs::{self, OpenOptions};
    use std::io::Write;
    use std::time::Instant;

    use super::*;

    // One bad byte in a record costs that record, not the rest of the segment: reading goes on
    // at the next good one, at open (counted), in the read path and in `for_each_pending`.
    #[test]
    fn a_corrupt_record_costs_only_itself() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = Spool::open(dir.path(), opts(1 << 20)).unwrap();
        for i in 0..10 {
            s.append(&payload(i), Instant::now());
        }
        drop(s);
        let size = 100 + HEADER;
        // A payload byte of record 3, then the length field of record 6 (a bad length).
        damage(dir.path(), 1, 3 * size + HEADER + 20, b"?");
        damage(dir.path(), 1, 6 * size, &[0xff; 4]);
        let (mut s, r) = Spool::open(dir.path(), opts(1 << 20)).unwrap();
        assert_eq!(
            (r.pending, r.corrupt_regions, r.corrupt_bytes, r.torn_bytes),
            (8, 2, 2 * size, 0)
        );
        let mut listed = Vec::new();
        let unreadable = for_each_pending(dir.path(), |p| listed.push(p.to_vec())).unwrap();
        assert!(unreadable.is_empty(), "{unreadable:?}");
        s.append(&payload(10), Instant::now());
        let expected: Vec<_> = [0, 1, 2, 4, 5, 7, 8, 9, 10].map(payload).to_vec();
        assert_eq!(listed, expected[..8]);
        assert_eq!(drain(&mut s), expected);
        assert_eq!(s.pending(), 0);
    }

    // Bad data among reports already delivered is told apart from bad data among those still
    // to send: only the second loses readings.
    #[test]
    fn bad_data_before_the_delivered_position_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = Spool::open(dir.path(), opts(1 << 20)).unwrap();
        for i in 0..10 {
            s.append(&payload(i), Instant::now());
        }
        let b = s.next_batch(5).unwrap();
        s.ack(&b);
        s.close().unwrap();
        drop(s);
        let size = 100 + HEADER;
        // Records 2 and 4 (the last delivered) among the delivered, 7 among the rest.
        damage(dir.path(), 1, 2 * size + HEADER + 20, b"?");
        damage(dir.path(), 1, 4 * size + HEADER + 20, b"?");
        damage(dir.path(), 1, 7 * size + HEADER + 20, b"?");
        let (mut s, r) = Spool::open(dir.path(), opts(1 << 20)).unwrap();
        assert_eq!(
            (
                r.pending,
                r.corrupt_regions,
                r.corrupt_bytes,
                r.corrupt_delivered_regions
            ),
            (4, 1, size, 2)
        );
        assert_eq!(drain(&mut s), [5, 6, 8, 9].map(payload).to_vec());
    }

    // Zeros in the middle (a block of an unsynced write that never reached the card, with a
    // later one that did) are skipped too; a bad region in an older segment as well.
    #[test]
    fn zeros_between_good_records_are_skipped_in_any_segment() {
        let dir = tempfile::tempdir().unwrap();
        // 4096-byte segments: about 37 records each.
        let (mut s, _) = Spool::open(dir.path(), opts(8 * 4096)).unwrap();
        for i in 0..60 {
            s.append(&payload(i), Instant::now());
        }
        drop(s);
        assert!(dir.path().join(segment_name(2)).exists());
        let size = 100 + HEADER;
        damage(dir.path(), 1, 5 * size + 3, &[0; 300]);
        damage(dir.path(), 2, 2 * size, &[0; 20]);
        let (mut s, r) = Spool::open(dir.path(), opts(8 * 4096)).unwrap();
        assert_eq!((r.corrupt_regions, r.torn_bytes), (2, 0));
        let got = drain(&mut s);
        // Records 5 to 7 of segment 1 (the zeros span bytes 543 to 843) and record 2 of
        // segment 2 are lost.
        let lost = 3 + 1;
        assert_eq!(got.len(), 60 - lost);
        assert_eq!(r.pending, 60 - lost as u64);
        assert!(got.windows(2).all(|w| w[0] < w[1]), "out of order");
        assert_eq!(got.last(), Some(&payload(59)));
    }

    // A segment that cannot be opened (here a link to nowhere; on a failing card, EIO) does
    // not keep the spool from opening: it is set aside under a name of its own that the
    // delivered position can never delete, and the other segments are delivered. A second one
    // by the same name later is set aside beside it, not over it.
    #[test]
    fn an_unreadable_segment_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = Spool::open(dir.path(), opts(8 * 4096)).unwrap();
        for i in 0..40 {
            s.append(&payload(i), Instant::now());
        }
        drop(s);
        let aside = || {
            fs::read_dir(dir.path())
                .unwrap()
                .filter(|e| {
                    let name = e.as_ref().unwrap().file_name();
                    name.to_string_lossy().contains(SET_ASIDE)
                })
                .count()
        };
        std::os::unix::fs::symlink("/nonexistent/x", dir.path().join(segment_name(7))).unwrap();
        let (mut s, r) = Spool::open(dir.path(), opts(8 * 4096)).unwrap();
        assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
        assert!(r.problems[0].contains("moved it to"), "{:?}", r.problems);
        assert_eq!((aside(), r.pending), (1, 40));
        assert_eq!((r.set_aside, s.faults.set_aside), (1, 1));
        s.append(&payload(40), Instant::now());
        assert_eq!(drain(&mut s), (0..41).map(payload).collect::<Vec<_>>());
        drop(s);
        std::os::unix::fs::symlink("/nonexistent/y", dir.path().join(segment_name(7))).unwrap();
        let (_, r) = Spool::open(dir.path(), opts(8 * 4096)).unwrap();
        assert_eq!((r.problems.len(), aside()), (1, 2), "{:?}", r.problems);
    }

    // A segment file far larger than any the spool writes (a damaged inode's size; here a
    // sparse file) is set aside at open without being read, and the others are delivered.
    #[test]
    fn a_segment_too_large_to_be_ours_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = Spool::open(dir.path(), opts(8 * 4096)).unwrap();
        for i in 0..40 {
            s.append(&payload(i), Instant::now());
        }
        drop(s);
        let huge = fs::File::create(dir.path().join(segment_name(7))).unwrap();
        huge.set_len(64 << 30).unwrap();
        let (mut s, r) = Spool::open(dir.path(), opts(8 * 4096)).unwrap();
        assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
        assert!(
            r.problems[0].contains("not a spool file"),
            "{:?}",
            r.problems
        );
        assert!(r.problems[0].contains("moved it to"), "{:?}", r.problems);
        assert!(!dir.path().join(segment_name(7)).exists());
        assert_eq!(drain(&mut s), (0..40).map(payload).collect::<Vec<_>>());
    }

    // With the delivered position inside a segment that is gone (set aside, deleted by hand),
    // reports written after the restart are not taken as delivered by the position still on
    // disk: a kill before it is written again loses none of them.
    #[test]
    fn reports_after_a_lost_delivered_segment_survive_a_kill() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("acked"), "v1 5 4000\n").unwrap();
        let (mut s, _) = Spool::open(dir.path(), opts(1 << 20)).unwrap();
        for i in 0..60 {
            s.append(&payload(i), Instant::now());
        }
        s.kill();
        let (mut s, r) = Spool::open(dir.path(), opts(1 << 20)).unwrap();
        assert_eq!((r.pending, s.pending()), (60, 60));
        assert_eq!(drain(&mut s), (0..60).map(payload).collect::<Vec<_>>());
    }

    /// A spool in `dir` with 80 reports in segments 1 to 3, the first `delivered` of them
    /// delivered, closed; and the segment ids on disk.
    fn eighty_in_three_segments(dir: &Path, delivered: usize) -> Vec<u64> {
        let (mut s, _) = Spool::open(dir, opts(8 * 4096)).unwrap();
        for i in 0..80 {
            s.append(&payload(i), Instant::now());
        }
        let mut sent = 0;
        while sent < delivered {
            let b = s.next_batch(delivered - sent).unwrap();
            sent += b.records.len();
            s.ack(&b);
        }
        s.close().unwrap();
        list_segments(dir).unwrap()
    }

    // A delivered position naming a segment that is not on disk while older ones are (here a
    // bit flipped in its segment number) is not trusted: those segments are kept and every
    // report in them sent again, said as an error; the position is written anew.
    #[test]
    fn a_delivered_position_past_a_missing_segment_deletes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(eighty_in_three_segments(dir.path(), 10), [1, 2, 3]);
        fs::write(dir.path().join("acked"), "v1 9 0\n").unwrap();
        assert_eq!(summarize(dir.path()).unwrap().pending, 80);
        let (mut s, r) = Spool::open(dir.path(), opts(8 * 4096)).unwrap();
        assert_eq!((r.pending, s.pending()), (80, 80));
        assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
        assert!(r.problems[0].contains("sent again"), "{:?}", r.problems);
        assert_eq!(list_segments(dir.path()).unwrap(), [1, 2, 3]);
        s.maintain(Instant::now()).unwrap();
        assert_eq!(
            read_cursor(dir.path()),
            Some(Position {
                segment: 1,
                offset: 0
            })
        );
        assert_eq!(drain(&mut s), (0..80).map(payload).collect::<Vec<_>>());
    }

    // Delivered positions the spool itself leaves are trusted, older segments on disk or not:
    // everything delivered; the start of a segment just rolled into, with the one before it
    // still on disk (its deletion failed); and one naming a segment deleted since it was
    // written, with none older left. None of them resends a delivered report.
    #[test]
    fn delivered_positions_the_spool_leaves_are_trusted() {
        let dir = tempfile::tempdir().unwrap();
        eighty_in_three_segments(dir.path(), 80);
        let (mut s, r) = Spool::open(dir.path(), opts(8 * 4096)).unwrap();
        assert_eq!((r.pending, r.problems.len()), (0, 0), "{:?}", r.problems);
        assert_eq!(drain(&mut s), Vec::<Vec<u8>>::new());

        let dir = tempfile::tempdir().unwrap();
        let first = dir.path().join(segment_name(1));
        let (mut s, _) = Spool::open(dir.path(), opts(8 * 4096)).unwrap();
        for i in 0..80 {
            s.append(&payload(i), Instant::now());
        }
        let kept = fs::read(&first).unwrap();
        let b = s.next_batch(100).unwrap();
        let in_first = b.records.len() as u32;
        s.ack(&b);
        s.close().unwrap();
        drop(s);
        assert_eq!(
            read_cursor(dir.path()),
            Some(Position {
                segment: 2,
                offset: 0
            })
        );
        fs::write(&first, kept).unwrap();
        let (mut s, r) = Spool::open(dir.path(), opts(8 * 4096)).unwrap();
        assert_eq!(r.problems.len(), 0, "{:?}", r.problems);
        assert!(!first.exists());
        assert_eq!(
            drain(&mut s),
            (in_first..80).map(payload).collect::<Vec<_>>()
        );
        drop(s);

        let dir = tempfile::tempdir().unwrap();
        eighty_in_three_segments(dir.path(), 0);
        fs::remove_file(dir.path().join(segment_name(1))).unwrap();
        fs::write(dir.path().join("acked"), "v1 1 500\n").unwrap();
        let (mut s, r) = Spool::open(dir.path(), opts(8 * 4096)).unwrap();
        assert_eq!(r.problems.len(), 0, "{:?}", r.problems);
        assert_eq!(drain(&mut s).first(), Some(&payload(in_first)));
    }

    // A torn last record (crash mid-write) is cut off at open; the good ones survive.
    #[test]
    fn torn_tail_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = Spool::open(dir.path(), opts(1 << 20)).unwrap();
        for i in 0..3 {
            s.append(&payload(i), Instant::now());
        }
        drop(s);
        let seg = dir.path().join(segment_name(1));
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&frame(&payload(3))[..50]).unwrap();
        drop(f);
        let (mut s, r) = Spool::open(dir.path(), opts(1 << 20)).unwrap();
        assert_eq!(r.pending, 3);
        assert_eq!(r.torn_bytes, 50);
        s.append(&payload(4), Instant::now());
        assert_eq!(
            drain(&mut s),
            vec![payload(0), payload(1), payload(2), payload(4)]
        );
    }

    // Zero-filled blocks after power loss fail the length check, not the process.
    #[test]
    fn zeroed_tail_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = Spool::open(dir.path(), opts(1 << 20)).unwrap();
        s.append(&payload(0), Instant::now());
        drop(s);
        let seg = dir.path().join(segment_name(1));
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&[0u8; 4096]).unwrap();
        drop(f);
        let (mut s, r) = Spool::open(dir.path(), opts(1 << 20)).unwrap();
        assert_eq!((r.pending, r.torn_bytes), (1, 4096));
        assert_eq!(drain(&mut s), vec![payload(0)]);
    }
}
