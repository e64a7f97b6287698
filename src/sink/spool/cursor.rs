//! The delivery cursor: how far the database has acknowledged, how far reports have been
//! handed out, the reader behind that, and writing the delivered position down.

use std::fs::File;
use std::io::{self, BufReader, Seek, SeekFrom};
use std::path::Path;
use std::time::Instant;

use super::dir::{set_aside, write_cursor, SetAside};
use super::frame::Frames;
use super::{Position, Spool, SpoolError, CURSOR_EVERY, RETRY_EVERY};

/// Where a batch came from, so it can be acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchSource {
    /// From a segment file, up to byte `end` of segment `segment`.
    Disk {
        /// The segment's id.
        segment: u64,
        /// Where the batch ends in the segment's file.
        end: u64,
        /// Bytes of damaged data reading this batch skipped, whose reports are lost; each
        /// region is said once, not again when a rewind reads past it anew.
        damaged: u64,
    },
    /// From the in-memory queue, its oldest reports.
    Memory,
}

/// Reports handed to the sender, oldest first.
#[derive(Debug)]
pub struct Batch {
    /// Where the reports came from.
    pub source: BatchSource,
    /// The reports' payloads.
    pub records: Vec<Vec<u8>>,
    /// Segment files that could not be opened on the way to these reports, set aside and read
    /// past (see [`super::Spool::next_batch`]): each a sentence for the log.
    pub problems: Vec<String>,
}

/// Where delivery and reading stand.
pub(super) struct Cursor {
    /// Everything before this was delivered.
    pub(super) ack: Position,
    /// Everything before this was handed out (at or after `ack`).
    pub(super) read: Position,
    /// Reads on from `read`: a segment id and its frames.
    reader: Option<(u64, Frames)>,
    /// The delivered position last written down, and when writing it was last tried.
    written: Position,
    tried_at: Option<Instant>,
    /// Writing the delivered position failed the last time it was tried.
    failing: bool,
    /// How far damaged data skipped while reading has been said (see [`BatchSource::Disk`]).
    damage_said: Position,
    /// The lowest unreadable segment left in place, out of this run: the delivered position
    /// written down never passes it, or the next start would delete it unread.
    pub(super) left_in_place: Option<u64>,
}

impl Cursor {
    /// Delivery and reading at `ack`, `written` being what is written down; damage before
    /// `scanned` was counted by the scan at open.
    pub(super) fn new(
        ack: Position,
        written: Position,
        left_in_place: Option<u64>,
        scanned: Position,
    ) -> Self {
        Cursor {
            ack,
            read: ack,
            reader: None,
            written,
            tried_at: None,
            failing: false,
            damage_said: scanned,
            left_in_place,
        }
    }

    /// Hand out everything after `ack` again.
    pub(super) fn rewind(&mut self) {
        self.read = self.ack;
        self.reader = None;
    }

    /// Reading never lags behind delivery (after segments were dropped or deleted).
    pub(super) fn catch_up_read(&mut self) {
        if self.read < self.ack {
            self.rewind();
        }
    }

    /// Segment `id` is gone and `next` is the oldest one left.
    pub(super) fn segment_gone(&mut self, id: u64, next: u64) {
        if self.ack.segment <= id {
            self.ack = Position {
                segment: next,
                offset: 0,
            };
        }
        self.catch_up_read();
    }

    /// Segment `id` left the run unread: delivery and reading go on after it.
    pub(super) fn skip_segment(&mut self, id: u64) {
        let next = Position {
            segment: id + 1,
            offset: 0,
        };
        if self.ack.segment == id {
            self.ack = next;
        }
        if self.read.segment == id {
            self.read = next;
        }
        self.reader = None;
    }

    /// Open the reader of segment `id` (at `path`, its good frames ending at `limit`) at the
    /// read position, unless it is open there already.
    pub(super) fn open(&mut self, path: &Path, id: u64, limit: u64) -> io::Result<()> {
        self.reader(path, id, limit).map(|_| ())
    }

    /// Read at most `max` records of segment `id` (at `path`, its good frames ending at
    /// `limit`) from the read position, and move it past them.
    pub(super) fn read_batch(
        &mut self,
        path: &Path,
        id: u64,
        limit: u64,
        max: usize,
    ) -> Result<Batch, SpoolError> {
        let io_err = |source| SpoolError::Io {
            path: path.to_owned(),
            source,
        };
        let frames = self.reader(path, id, limit).map_err(io_err)?;
        let skipped_before = frames.skipped_bytes;
        let mut records = Vec::new();
        // Bad data between good records is skipped; so is bad data after the last good
        // record: everything up to `limit` passed its checks when it was written or when the
        // spool was opened, so bad data there is damage found now, said and counted as such.
        while records.len() < max && frames.pos < limit {
            match frames.next().map_err(io_err)? {
                Some((_, p)) => records.push(p),
                None => {
                    frames.skipped_bytes += limit - frames.pos;
                    frames.pos = limit;
                    break;
                }
            }
        }
        let end = frames.pos;
        let mut damaged = frames.skipped_bytes - skipped_before;
        let reached = Position {
            segment: id,
            offset: end,
        };
        if reached <= self.damage_said {
            damaged = 0;
        } else if damaged > 0 {
            self.damage_said = reached;
        }
        self.read.offset = end;
        Ok(Batch {
            source: BatchSource::Disk {
                segment: id,
                end,
                damaged,
            },
            records,
            problems: Vec::new(),
        })
    }

    /// The reader of segment `id` at the read position, up to `limit`.
    fn reader(&mut self, path: &Path, id: u64, limit: u64) -> io::Result<&mut Frames> {
        // The reader goes on where it stopped, also when the active segment has grown since
        // (it read to the old end, and its buffer holds nothing past it), unless it has
        // latched the end of what it may read.
        let reuse = match &mut self.reader {
            Some((rid, f)) if *rid == id && f.pos == self.read.offset => {
                if f.limit != limit && f.end.is_none() {
                    f.limit = limit;
                }
                f.limit == limit
            }
            _ => false,
        };
        if !reuse {
            let mut f = File::open(path)?;
            f.seek(SeekFrom::Start(self.read.offset))?;
            let r = BufReader::with_capacity(256 * 1024, f);
            self.reader = Some((id, Frames::new(r, self.read.offset, limit)));
        }
        Ok(&mut self.reader.as_mut().expect("set above").1)
    }

    /// Write the delivered position down in `dir` if it moved since it last was and the last
    /// try was at least [`CURSOR_EVERY`] ago ([`RETRY_EVERY`] if it failed).
    pub(super) fn write_if_due(&mut self, dir: &Path, now: Instant) -> Result<(), SpoolError> {
        let every = if self.failing {
            RETRY_EVERY
        } else {
            CURSOR_EVERY
        };
        let tried_lately = self.tried_at.is_some_and(|t| now.duration_since(t) < every);
        if self.ack == self.written || tried_lately {
            return Ok(());
        }
        self.tried_at = Some(now);
        let result = self.write(dir);
        self.failing = result.is_err();
        result
    }

    /// Writing the delivered position failed the last time [`Cursor::write_if_due`] tried.
    pub(super) fn is_failing(&self) -> bool {
        self.failing
    }

    /// Write the delivered position down in `dir` now.
    pub(super) fn write(&mut self, dir: &Path) -> Result<(), SpoolError> {
        let keep = self
            .left_in_place
            .map(|segment| Position { segment, offset: 0 });
        write_cursor(dir, keep.map_or(self.ack, |k| k.min(self.ack)))?;
        self.written = self.ack;
        Ok(())
    }
}

impl Spool {
    /// Segment `id` cannot be opened (`e`): out of the way (see [`set_aside`]) and out of
    /// the run, reading past it; what the log should say.
    pub(super) fn set_aside_unreadable(&mut self, id: u64, e: &io::Error) -> String {
        let path = self.segments.path(id);
        let lost = self.segments.remove(id).map_or(0, |s| s.records - s.acked);
        self.cursor.skip_segment(id);
        let fate = set_aside(&path);
        self.faults.set_aside += 1;
        if let SetAside::LeftInPlace(_) = fate {
            // Not past it in the position written down, or the next start deletes it unread.
            let first = self.cursor.left_in_place.map_or(id, |l| l.min(id));
            self.cursor.left_in_place = Some(first);
        }
        fate.said(&path, e, &format!("the {lost} reports in it"))
    }
}

#[cfg(test)]
mod tests {
    use super::super::dir::{read_cursor, segment_name};
    use super::super::testutil::{drain, opts, payload};
    use super::super::Spool;
    use super::*;
    use std::fs;

    // Appended reports come back in order, and acknowledged ones never again, across reopen.
    #[test]
    fn delivers_in_order_and_remembers_acks() {
        let dir = tempfile::tempdir().unwrap();
        let now = Instant::now();
        let (mut s, r) = Spool::open(dir.path(), opts(1 << 20)).unwrap();
        assert_eq!(r.pending, 0);
        for i in 0..50 {
            s.append(&payload(i), now);
        }
        let b = s.next_batch(20).unwrap();
        assert_eq!(b.records[0], payload(0));
        s.ack(&b);
        s.close().unwrap();
        drop(s);
        let (mut s, r) = Spool::open(dir.path(), opts(1 << 20)).unwrap();
        assert_eq!(r.pending, 30);
        let rest = drain(&mut s);
        assert_eq!(rest, (20..50).map(payload).collect::<Vec<_>>());
        assert_eq!(s.pending(), 0);
    }

    // A failed insert rewinds: the same reports are handed out again.
    #[test]
    fn rewind_resends() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = Spool::open(dir.path(), opts(1 << 20)).unwrap();
        for i in 0..5 {
            s.append(&payload(i), Instant::now());
        }
        let b = s.next_batch(3).unwrap();
        s.rewind();
        assert_eq!(s.next_batch(3).unwrap().records, b.records);
    }

    // Reading the active segment as it grows, in batches smaller and larger than what was
    // appended since: every record once, in order (the reader goes on past its old end).
    #[test]
    fn reading_keeps_up_with_a_growing_segment() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = Spool::open(dir.path(), opts(1 << 20)).unwrap();
        let mut got = Vec::new();
        let mut n = 0;
        for (appends, max) in [(5, 3), (1, 10), (4, 2), (3, 100), (0, 5)] {
            for _ in 0..appends {
                s.append(&payload(n), Instant::now());
                n += 1;
            }
            let b = s.next_batch(max).unwrap();
            got.extend(b.records.iter().cloned());
            s.ack(&b);
        }
        got.extend(drain(&mut s));
        assert_eq!(got, (0..n).map(payload).collect::<Vec<_>>());
    }

    // An unreadable segment that could not even be renamed stays where it is, out of this
    // run; the delivered position written down never passes it, so the next start reads it
    // instead of deleting it as delivered.
    #[test]
    fn the_written_position_never_passes_a_segment_left_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = Spool::open(dir.path(), opts(8 * 4096)).unwrap();
        for i in 0..80 {
            s.append(&payload(i), Instant::now());
        }
        assert_eq!(drain(&mut s).len(), 80);
        assert!(s.cursor.ack.segment >= 3);
        s.cursor.left_in_place = Some(2);
        s.close().unwrap();
        assert_eq!(
            read_cursor(dir.path()),
            Some(Position {
                segment: 2,
                offset: 0
            })
        );
    }

    /// A spool in `dir` with ten reports written, the fourth then damaged on disk; and the
    /// size of a report's frame.
    fn ten_with_the_fourth_damaged(dir: &std::path::Path) -> (Spool, u64) {
        let (mut s, _) = Spool::open(dir, opts(1 << 20)).unwrap();
        for i in 0..10 {
            s.append(&payload(i), Instant::now());
        }
        s.flush().unwrap();
        let frame = 100 + super::super::frame::HEADER;
        super::super::testutil::damage(dir, 1, 3 * frame + 20, &[0xFF; 4]);
        (s, frame)
    }

    // Bad data in what was written after the spool opened (a block the card returns wrong
    // during a long outage) is said by the batch that skips it, once: not again when a failed
    // insert rewinds and reads past it anew. Bad data found at open was said by the scan.
    #[test]
    fn damage_found_while_reading_is_said_once() {
        let damaged = |b: &Batch| match b.source {
            BatchSource::Disk { damaged, .. } => damaged,
            BatchSource::Memory => 0,
        };
        let dir = tempfile::tempdir().unwrap();
        let (mut s, frame) = ten_with_the_fourth_damaged(dir.path());
        let b = s.next_batch(100).unwrap();
        assert_eq!((b.records.len(), damaged(&b)), (9, frame));
        s.rewind();
        let b = s.next_batch(100).unwrap();
        assert_eq!((b.records.len(), damaged(&b)), (9, 0));
        // Counted once, as it is said.
        assert_eq!(s.faults.bad_data, 1);
        drop(s);
        let (mut s, r) = Spool::open(dir.path(), opts(1 << 20)).unwrap();
        assert_eq!((r.corrupt_regions, s.faults.bad_data), (1, 1));
        let b = s.next_batch(100).unwrap();
        assert_eq!((b.records.len(), damaged(&b)), (9, 0));
        assert_eq!(s.faults.bad_data, 1);
    }

    // Bad data after the last good record of a segment (the card returning its last block
    // wrong during a long outage) is damage found while reading too: said and counted, not
    // skipped in silence as a torn tail is at open.
    #[test]
    fn damage_at_a_segments_end_found_while_reading_is_said() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = Spool::open(dir.path(), opts(1 << 20)).unwrap();
        for i in 0..10 {
            s.append(&payload(i), Instant::now());
        }
        s.flush().unwrap();
        let frame = 100 + super::super::frame::HEADER;
        super::super::testutil::damage(dir.path(), 1, 9 * frame + 20, &[0xFF; 4]);
        let b = s.next_batch(100).unwrap();
        let damaged = match b.source {
            BatchSource::Disk { damaged, .. } => damaged,
            BatchSource::Memory => 0,
        };
        assert_eq!((b.records.len(), damaged), (9, frame));
        assert_eq!(s.faults.bad_data, 1);
        s.ack(&b);
        assert_eq!(s.pending(), 0);
    }

    // The report lost in bad data found while reading leaves the pending count once delivery
    // has passed it: it is not left waiting for the active segment to be deleted, which would
    // keep "backlog drained" and the LED's idle state away.
    #[test]
    fn a_report_lost_to_damage_is_not_pending_once_passed() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = ten_with_the_fourth_damaged(dir.path());
        let b = s.next_batch(4).unwrap();
        s.ack(&b);
        assert_eq!(s.pending(), 6);
        let b = s.next_batch(100).unwrap();
        assert_eq!(b.records.len(), 5);
        s.ack(&b);
        assert_eq!(s.pending(), 0);
        // What comes after still counts, and is delivered.
        s.append(&payload(10), Instant::now());
        s.flush().unwrap();
        assert_eq!(s.pending(), 1);
        let b = s.next_batch(100).unwrap();
        assert_eq!(b.records.len(), 1);
        s.ack(&b);
        assert_eq!(s.pending(), 0);
    }

    /// Read and acknowledge everything, in batches of seven; and the problems said on the way.
    fn drain_saying(s: &mut Spool) -> (Vec<Vec<u8>>, Vec<String>) {
        let (mut all, mut said) = (Vec::new(), Vec::new());
        loop {
            let b = s.next_batch(7).unwrap();
            said.extend(b.problems.iter().cloned());
            if b.records.is_empty() {
                return (all, said);
            }
            s.ack(&b);
            all.extend(b.records);
        }
    }

    // A segment file that cannot be opened mid-run (a link to itself, ELOOP, which root cannot
    // open either; on a failing card, EIO), or that is gone (deleted by hand), is set aside as
    // at open, said, and read past: every report of the other segments is delivered. Here it
    // is reopened after a failed insert, part of it delivered. It used to stop delivery for
    // good, and the agent with it.
    #[test]
    fn a_segment_that_cannot_be_opened_mid_run_is_read_past() {
        for gone in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            // 4096-byte segments: 38 records of 108 bytes each.
            let (mut s, _) = Spool::open(dir.path(), opts(8 * 4096)).unwrap();
            for i in 0..100 {
                s.append(&payload(i), Instant::now());
            }
            let mut got = Vec::new();
            for max in [100, 10] {
                let b = s.next_batch(max).unwrap();
                s.ack(&b);
                got.extend(b.records);
            }
            assert_eq!(s.next_batch(5).unwrap().records[0], payload(48));
            s.rewind();
            let second = dir.path().join(segment_name(2));
            fs::remove_file(&second).unwrap();
            if !gone {
                std::os::unix::fs::symlink(&second, &second).unwrap();
            }
            let (rest, said) = drain_saying(&mut s);
            got.extend(rest);
            let expected: Vec<_> = (0..48).chain(76..100).map(payload).collect();
            assert_eq!(got, expected, "gone {gone}");
            assert_eq!(said.len(), 1, "{said:?}");
            assert!(said[0].contains("the 28 reports in it"), "{said:?}");
            assert_eq!(said[0].contains("moved it to"), !gone, "{said:?}");
            assert_eq!(s.pending(), 0);
            assert!(fs::symlink_metadata(&second).is_err());
            assert_eq!(set_aside_files(dir.path()), usize::from(!gone));
            assert_eq!(s.faults.set_aside, 1);
            // Reports taken since go on; a restart sends nothing again.
            s.append(&payload(100), Instant::now());
            assert_eq!(drain(&mut s), vec![payload(100)]);
            s.close().unwrap();
            drop(s);
            let (_, r) = Spool::open(dir.path(), opts(8 * 4096)).unwrap();
            assert_eq!((r.pending, r.problems.len()), (0, 0), "{:?}", r.problems);
        }
    }

    // The segment being written cannot be opened: the reports appended since go to a new
    // segment, which is read, not to the file set aside.
    #[test]
    fn the_segment_being_written_cannot_be_opened() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = Spool::open(dir.path(), opts(1 << 20)).unwrap();
        for i in 0..10 {
            s.append(&payload(i), Instant::now());
        }
        let first = dir.path().join(segment_name(1));
        fs::remove_file(&first).unwrap();
        std::os::unix::fs::symlink(&first, &first).unwrap();
        let (got, said) = drain_saying(&mut s);
        assert_eq!((got.len(), said.len()), (0, 1), "{said:?}");
        assert_eq!(s.pending(), 0);
        for i in 10..20 {
            s.append(&payload(i), Instant::now());
        }
        assert_eq!(drain(&mut s), (10..20).map(payload).collect::<Vec<_>>());
        assert!(dir.path().join(segment_name(2)).exists());
        assert_eq!(set_aside_files(dir.path()), 1);
    }

    /// Files set aside as unreadable in `dir`.
    fn set_aside_files(dir: &Path) -> usize {
        fs::read_dir(dir)
            .unwrap()
            .filter(|e| {
                let name = e.as_ref().unwrap().file_name();
                name.to_string_lossy().contains(super::super::SET_ASIDE)
            })
            .count()
    }
}
