//! The segment set: the segment files of the run, oldest first, the writer appending to the
//! last one, and the cap on their bytes.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::dir::segment_name;
use super::frame::{push_frame, Frames};
use super::{Position, SpoolError};

/// Largest segment file.
const SEGMENT_MAX: u64 = 1024 * 1024;
/// Smallest segment file, however small the cap.
const SEGMENT_MIN: u64 = 4096;

/// One segment file, as counted by the spool.
#[derive(Debug)]
pub(super) struct Segment {
    pub(super) id: u64,
    /// Bytes of good frames; the file may hold more (a torn tail that could not be cut).
    pub(super) len: u64,
    pub(super) records: u64,
    /// Records of this segment before the delivered position.
    pub(super) acked: u64,
    /// Its file ends in blocks that could not be read at open (EIO), which may read again:
    /// once delivered, it is set aside, kept, rather than deleted.
    pub(super) unreadable_end: bool,
}

impl Segment {
    /// A segment with nothing in it yet.
    pub(super) fn empty(id: u64) -> Self {
        Segment {
            id,
            len: 0,
            records: 0,
            acked: 0,
            unreadable_end: false,
        }
    }
}

/// The segments of the run and the writer of the last one.
pub(super) struct Segments {
    dir: PathBuf,
    max_bytes: u64,
    segment_max: u64,
    list: VecDeque<Segment>,
    /// Appends to the last segment; `None` after a write error, and until the first write of
    /// a run that found segments on disk.
    pub(super) writer: Option<File>,
    /// New segments get at least this id: below it lies an unreadable file left in place.
    id_floor: u64,
    /// `write(2)`s that wrote frames, for the tests: what costs the sampling thread its time
    /// is their number, not their size.
    pub(super) writes: u64,
}

impl Segments {
    /// The segments `list` found in `dir`, with no writer open yet.
    pub(super) fn new(dir: &Path, max_bytes: u64, list: VecDeque<Segment>, id_floor: u64) -> Self {
        Segments {
            dir: dir.to_owned(),
            max_bytes,
            segment_max: (max_bytes / 8).clamp(SEGMENT_MIN, SEGMENT_MAX),
            list,
            writer: None,
            id_floor,
            writes: 0,
        }
    }

    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }

    pub(super) fn path(&self, id: u64) -> PathBuf {
        self.dir.join(segment_name(id))
    }

    pub(super) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Where the next frame goes: the end of the last segment.
    pub(super) fn end(&self) -> Position {
        self.list
            .back()
            .map(|s| Position {
                segment: s.id,
                offset: s.len,
            })
            .unwrap_or_default()
    }

    /// The oldest segment's id (0 when there is none).
    pub(super) fn first_id(&self) -> u64 {
        self.list.front().map_or(0, |s| s.id)
    }

    /// Undelivered records on disk.
    pub(super) fn pending(&self) -> u64 {
        self.list.iter().map(|s| s.records - s.acked).sum()
    }

    /// Bytes of segment files.
    pub(super) fn bytes(&self) -> u64 {
        self.list.iter().map(|s| s.len).sum()
    }

    /// The cap on [`Segments::bytes`].
    pub(super) fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Count a segment that could not be created as the last one anyway, so that the first
    /// write tries to create it again.
    pub(super) fn push_empty(&mut self, id: u64) {
        self.list.push_back(Segment::empty(id));
    }

    /// Open (creating) segment `id` for appending and make it the last one.
    pub(super) fn new_segment(&mut self, id: u64) -> Result<(), SpoolError> {
        let path = self.path(id);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|source| SpoolError::Io {
                path: path.clone(),
                source,
            })?;
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        self.writer = Some(file);
        if self.list.back().map(|s| s.id) != Some(id) {
            self.list.push_back(Segment {
                len,
                ..Segment::empty(id)
            });
        }
        Ok(())
    }

    /// The next write starts a new segment: the open one is full. What it holds is synced
    /// first (see [`super::Spool`]'s `write_frames`).
    pub(super) fn is_full(&self) -> bool {
        self.writer.is_some() && self.end().offset >= self.segment_max
    }

    /// Bytes the next write fills before its segment is full (one starting a new segment
    /// fills a whole one): past them, a segment grows larger than the others.
    pub(super) fn room(&self) -> u64 {
        let end = self.end().offset;
        if self.writer.is_none() || end >= self.segment_max {
            self.segment_max
        } else {
            self.segment_max - end
        }
    }

    /// Write whole frames at the end of the last segment, opening a writer if there is none
    /// and starting the next segment when this one is full.
    pub(super) fn write(&mut self, frames: &[u8], records: u64) -> Result<(), SpoolError> {
        let active = self.end();
        if self.writer.is_none() {
            // After an error (or a restart), start a fresh segment so a partial frame left by a
            // failed write is never followed by good ones; an empty last segment is reused.
            // Not a last segment whose file still holds bytes it does not count (a torn tail
            // that could not be cut): appending after them would misplace every record.
            let empty_on_disk =
                fs::metadata(self.path(active.segment)).map_or(true, |m| m.len() == 0);
            let next = if active.offset == 0 && active.segment > 0 && empty_on_disk {
                active.segment
            } else {
                active.segment + 1
            };
            self.new_segment(next.max(self.id_floor))?;
        } else if active.offset >= self.segment_max {
            self.new_segment(active.segment + 1)?;
        }
        let id = self.end().segment;
        let writer = self.writer.as_mut().expect("opened above");
        if let Err(source) = writer.write_all(frames) {
            let seg_len = self.list.back().map_or(0, |s| s.len);
            let _ = writer.set_len(seg_len);
            // The writer stays open for the spool to sync what the file took before, and
            // then close it (`Spool::write_frames`).
            return Err(SpoolError::Io {
                path: self.path(id),
                source,
            });
        }
        self.writes += 1;
        let seg = self.list.back_mut().expect("segment exists");
        seg.len += frames.len() as u64;
        seg.records += records;
        Ok(())
    }

    /// The good frames of the last segment from `from` (from its start if `from` is in an
    /// earlier one) to its end, read from a file of its own, not the writer, and how many.
    pub(super) fn read_back(&self, from: Position) -> std::io::Result<(Vec<u8>, u64)> {
        let end = self.end();
        let start = if from.segment == end.segment {
            from.offset
        } else {
            0
        };
        let mut file = File::open(self.path(end.segment))?;
        file.seek(SeekFrom::Start(start))?;
        let mut read = Frames::new(BufReader::new(file), start, end.offset.max(start));
        let (mut frames, mut records) = (Vec::new(), 0);
        while let Some((_, payload)) = read.next()? {
            push_frame(&mut frames, &payload);
            records += 1;
        }
        Ok((frames, records))
    }

    /// `fdatasync` the open segment, if one is open.
    pub(super) fn sync_data(&self) -> std::io::Result<()> {
        match &self.writer {
            Some(w) => w.sync_data(),
            None => Ok(()),
        }
    }

    /// Count `records` more of segment `id` as delivered, up to `end`. Delivery up to the
    /// segment's end leaves nothing in it pending: the records that bad data found while
    /// reading held (skipped, their bytes logged) are lost, and would otherwise stay pending
    /// until the segment is deleted, which the active one never is.
    pub(super) fn count_acked(&mut self, id: u64, records: u64, end: u64) {
        if let Some(seg) = self.list.iter_mut().find(|s| s.id == id) {
            seg.acked = if end >= seg.len {
                seg.records
            } else {
                (seg.acked + records).min(seg.records)
            };
        }
    }

    /// Delete the oldest segment if it is wholly delivered by `ack` (never the last one);
    /// its id.
    pub(super) fn pop_delivered(&mut self, ack: Position) -> Option<u64> {
        let front = self.list.front().filter(|_| self.list.len() > 1)?;
        let done = front.id < ack.segment || (front.id == ack.segment && ack.offset >= front.len);
        if !done {
            return None;
        }
        let (id, keep) = (front.id, front.unreadable_end);
        self.list.pop_front();
        if keep {
            let _ = super::dir::set_aside(&self.path(id));
        } else {
            let _ = fs::remove_file(self.path(id));
        }
        Some(id)
    }

    /// Delete the oldest segment if the files are over the cap (never the last one).
    pub(super) fn pop_over_cap(&mut self) -> Option<Segment> {
        if self.bytes() <= self.max_bytes || self.list.len() <= 1 {
            return None;
        }
        let seg = self.list.pop_front()?;
        let _ = fs::remove_file(self.path(seg.id));
        Some(seg)
    }

    /// Take segment `id`, which cannot be read, out of the run; what it held. New segments
    /// come after it: one by its id would lie behind the read position. The last one's writer
    /// is closed, so that new reports go to a segment of their own.
    pub(super) fn remove(&mut self, id: u64) -> Option<Segment> {
        let at = self.list.iter().position(|s| s.id == id)?;
        if at + 1 == self.list.len() {
            self.writer = None;
        }
        self.id_floor = self.id_floor.max(id + 1);
        self.list.remove(at)
    }

    /// Move `read` to the first record not read yet, at or after it, and return its segment's
    /// id and length; `None` when everything on disk has been read.
    pub(super) fn seek_unread(&self, read: &mut Position) -> Option<(u64, u64)> {
        while let Some(seg) = self.list.iter().find(|s| s.id >= read.segment) {
            if seg.id > read.segment {
                *read = Position {
                    segment: seg.id,
                    offset: 0,
                };
            }
            if read.offset < seg.len {
                return Some((seg.id, seg.len));
            }
            if seg.id == self.end().segment {
                return None;
            }
            *read = Position {
                segment: seg.id + 1,
                offset: 0,
            };
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{drain, opts, payload};
    use super::super::Spool;
    use super::*;
    use std::time::Instant;

    // The writer, reopened after an error or at start, never appends to a segment whose file
    // holds bytes the spool does not count (a torn tail it could not cut): the records would
    // land past where it reads. It starts the next segment instead.
    #[test]
    fn a_segment_with_uncounted_bytes_is_not_appended_to() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = Spool::open(dir.path(), opts(1 << 20)).unwrap();
        s.segments.writer = None;
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join(segment_name(1)))
            .unwrap();
        f.write_all(&[0xab; 300]).unwrap();
        s.append(&payload(0), Instant::now());
        assert_eq!(s.segments.end().segment, 2);
        assert_eq!(drain(&mut s), vec![payload(0)]);
    }

    // Over the cap, the oldest reports are dropped and counted; the newest are kept.
    #[test]
    fn cap_drops_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let max = 64 * 1024;
        let (mut s, _) = Spool::open(dir.path(), opts(max)).unwrap();
        let mut dropped = 0;
        for i in 0..2000 {
            dropped += s.append(&payload(i), Instant::now()).dropped;
        }
        assert!(s.bytes() <= max, "{} > {max}", s.bytes());
        assert!(dropped > 0);
        assert_eq!(dropped, s.dropped_total);
        let rest = drain(&mut s);
        assert_eq!(rest.len() as u64 + dropped, 2000);
        assert_eq!(rest.last().unwrap(), &payload(1999));
        assert_eq!(rest[0], payload(dropped as u32));
    }
}
