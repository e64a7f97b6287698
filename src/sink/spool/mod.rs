//! The durable spool: every report is appended here before it is inserted, and leaves only
//! once the database acknowledged it.
//!
//! # On disk
//!
//! A directory of segment files `segment-<16 digits>.spool`, oldest first. Each record is
//! `[u32 length LE][u32 CRC-32 of payload LE][payload]`, the payload being the report's BSON.
//! A file `acked` holds the position before which everything was delivered; it is rewritten
//! (write to a temporary file, rename) at most every [`CURSOR_EVERY`] and on shutdown. Losing
//! it, or a stale one after a crash, only resends reports the database already has, which the
//! duplicate-key rule on `_id` turns into no-ops. Fully delivered segments are deleted.
//!
//! # Crash safety and the fsync policy
//!
//! Each append is one `write(2)` of the whole frame, so once `append` returns the record is in
//! the kernel's page cache and survives the process being killed (SIGKILL, panic, OOM). Reports
//! taken in quick succession are written in groups instead ([`Spool::append_grouped`]): a
//! report due to be followed within [`WRITE_GROUP`] (50 ms) waits for it in memory, so at
//! `--interval-ms 1` one `write(2)` carries fifty reports, and a kill can take the last 50 ms of
//! readings with it (power loss can take a second's, below). At intervals of 50 ms and more, the
//! agent's default 500 ms included, every report is written as soon as it is taken. Why: spread
//! out a few milliseconds apart, a `write(2)` of 2 KiB took about 30 us on this nested VM
//! (syscall tracepoints; a tight loop of the same writes takes 2 us each), nearly all of it the
//! mtime update and its journal handle, the same for 200 bytes as for 10 KiB. With 10 ms groups
//! that was 6 ms of a 2000-sample run at 1 ms, a tenth of the agent's CPU; with 50 ms, 2 ms. Power
//! loss is the other case: the page cache is gone unless the data was `fdatasync`ed. Syncing
//! every 2 Hz append would cost a data block plus an ext4 journal commit (about 8-16 KiB of
//! flash writes for a 200-byte report, some 2 GB a day), which wears an SD card for nothing in
//! the common case, where the database acknowledges a report within a fraction of a second and
//! the spool copy is deleted anyway. So the policy is *sync what is still owed*: at most every
//! `sync_interval` (default 1 s, `--spool-sync-ms`), and only if some appended record is neither
//! acknowledged nor synced yet. With the database up, almost nothing is synced; with it down,
//! one fdatasync per second covers every report older than a second. `--spool-sync-ms 0` syncs
//! every append, for those who prefer the wear to the one-second window.
//!
//! On open, every segment is scanned. A torn or corrupt tail (a crash mid-write, or blocks of
//! zeros after power loss) fails its length or CRC check and is cut off, never fatal. Bad data
//! with good records after it (a block the card returned wrong, or an unsynced block that never
//! reached it while a later one did) costs only the records it overlaps: reading resumes at the
//! next good record (see `Frames`), and the regions skipped are counted and logged.
//!
//! # Bounds and disk faults
//!
//! `max_bytes` caps the files; beyond it the oldest segment is deleted and its undelivered
//! reports counted as dropped. When a write fails (disk full, read-only, I/O error), the report
//! is kept in a bounded in-memory queue and the next append tries the disk again, moving the
//! queue there once it works. Opening never fails for a disk fault either: a delivered segment
//! that cannot be deleted is left for the next start, one that cannot be read is renamed
//! `*.spool.unreadable-<time>` (never deleted; left in place, and out of the run, if even that
//! fails), and with no segment file it can create, the spool starts
//! with its writer closed, so the first append falls back to memory (see `OpenReport::problems`).

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod dir;
mod frame;
mod recovery;
mod summary;
#[cfg(test)]
mod testutil;

pub use dir::SET_ASIDE;
pub use recovery::OpenReport;
pub use summary::{for_each_pending, summarize, SpoolSummary};

use dir::segment_name;
use frame::{payloads, push_frame, Frames, HEADER};

/// How often the delivered position is written down.
pub const CURSOR_EVERY: Duration = Duration::from_secs(5);
/// Reports kept in memory while the disk cannot be written (about 7 hours at 2 Hz).
pub const MEMORY_MAX: usize = 50_000;
/// Reports appended within this long of each other may be written together, in one
/// `write(2)` (see [`Spool::append_grouped`]).
pub const WRITE_GROUP: Duration = Duration::from_millis(50);
/// Largest segment file.
const SEGMENT_MAX: u64 = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("cannot use the spool directory {dir}: {source}")]
    Dir { dir: PathBuf, source: io::Error },
    #[error("spool I/O on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// A place in the spool: segment id and byte offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Position {
    pub segment: u64,
    pub offset: u64,
}

#[derive(Debug)]
struct Segment {
    id: u64,
    len: u64,
    records: u64,
    /// Records of this segment before the delivered position.
    acked: u64,
}

/// Settings of a spool.
#[derive(Debug, Clone)]
pub struct SpoolOptions {
    pub max_bytes: u64,
    /// Zero syncs every append.
    pub sync_interval: Duration,
}

/// Where a batch came from, so it can be acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchSource {
    Disk { segment: u64, end: u64 },
    Memory,
}

/// Reports handed to the sender, oldest first.
#[derive(Debug)]
pub struct Batch {
    pub source: BatchSource,
    pub records: Vec<Vec<u8>>,
}

/// What an append did beyond appending.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AppendOutcome {
    /// Undelivered reports deleted to stay under the cap.
    pub dropped: u64,
    /// The disk write failed; the report is held in memory.
    pub disk_error: Option<String>,
    /// Reports moved from memory to disk because the disk works again.
    pub recovered_from_memory: u64,
    /// The segment file was written (so `disk_error` tells whether the disk works).
    pub wrote: bool,
}

impl AppendOutcome {
    fn merge(&mut self, later: AppendOutcome) {
        self.dropped += later.dropped;
        self.recovered_from_memory += later.recovered_from_memory;
        if later.wrote {
            self.wrote = true;
            // The first failure is the one to report; a later success is seen at the next write.
            if self.disk_error.is_none() {
                self.disk_error = later.disk_error;
            }
        }
    }
}

pub struct Spool {
    dir: PathBuf,
    options: SpoolOptions,
    segment_max: u64,
    segments: VecDeque<Segment>,
    writer: Option<File>,
    ack: Position,
    read: Position,
    reader: Option<(u64, Frames)>,
    memory: VecDeque<Vec<u8>>,
    memory_in_flight: usize,
    /// Appended but neither synced nor known to be delivered, since this instant.
    owed_since: Option<Instant>,
    synced: Position,
    cursor_written: Position,
    cursor_at: Option<Instant>,
    pub dropped_total: u64,
    /// Frames appended but not written yet (see [`Spool::append_grouped`]), how many, and
    /// since when.
    unwritten: Vec<u8>,
    unwritten_records: u64,
    unwritten_since: Option<Instant>,
    /// The outcome of a write made outside an append, returned by the next append.
    deferred: AppendOutcome,
    /// New segments get at least this id: below it lies an unreadable file left in place.
    id_floor: u64,
    /// The lowest unreadable segment left in place, out of this run: the delivered position
    /// written down never passes it, or the next start would delete it unread.
    left_in_place: Option<u64>,
    /// A sync failed: when to try it again.
    sync_retry_at: Option<Instant>,
    /// Writing the delivered position failed the last time it was tried.
    cursor_failing: bool,
}

impl Spool {
    /// Open (creating) the spool in `dir`, recovering from a crash.
    pub fn open(dir: &Path, options: SpoolOptions) -> Result<(Spool, OpenReport), SpoolError> {
        let recovery::Recovered {
            segments,
            ack,
            id_floor,
            left_in_place,
            mut report,
        } = recovery::recover(dir)?;
        let segment_max = (options.max_bytes / 8).clamp(4096, SEGMENT_MAX);
        let mut spool = Spool {
            dir: dir.to_owned(),
            options,
            segment_max,
            segments,
            writer: None,
            ack,
            read: ack,
            reader: None,
            memory: VecDeque::new(),
            memory_in_flight: 0,
            owed_since: None,
            synced: Position::default(),
            cursor_written: ack,
            cursor_at: None,
            dropped_total: 0,
            unwritten: Vec::new(),
            unwritten_records: 0,
            unwritten_since: None,
            deferred: AppendOutcome::default(),
            id_floor,
            left_in_place,
            sync_retry_at: None,
            cursor_failing: false,
        };
        spool.synced = spool.end();
        if spool.segments.is_empty() {
            let first = ack.segment.max(1).max(id_floor);
            if let Err(e) = spool.new_segment(first) {
                // A full or read-only disk: run anyway, reports kept in memory until a write
                // works (the first append reports the error, and creates this file then).
                report.problems.push(e.to_string());
                spool.segments.push_back(Segment {
                    id: first,
                    len: 0,
                    records: 0,
                    acked: 0,
                });
            }
            spool.ack = Position {
                segment: first,
                offset: 0,
            };
            spool.read = spool.ack;
            spool.synced = spool.end();
        }
        Ok((spool, report))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn end(&self) -> Position {
        self.segments
            .back()
            .map(|s| Position {
                segment: s.id,
                offset: s.len,
            })
            .unwrap_or_default()
    }

    fn path(&self, id: u64) -> PathBuf {
        self.dir.join(segment_name(id))
    }

    fn new_segment(&mut self, id: u64) -> Result<(), SpoolError> {
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
        if self.segments.back().map(|s| s.id) != Some(id) {
            self.segments.push_back(Segment {
                id,
                len,
                records: 0,
                acked: 0,
            });
        }
        Ok(())
    }

    /// Reports appended but not written to the segment file yet (see
    /// [`Spool::append_grouped`]); reading a batch writes them first.
    pub fn unwritten(&self) -> u64 {
        self.unwritten_records
    }

    /// Undelivered reports, on disk and in memory.
    pub fn pending(&self) -> u64 {
        self.segments
            .iter()
            .map(|s| s.records - s.acked)
            .sum::<u64>()
            + self.memory.len() as u64
            + self.unwritten_records
    }

    /// Bytes of segment files.
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.len).sum()
    }

    /// Append one report and write it to the segment file at once. Never fails: a disk error
    /// keeps the report in memory and is reported in the outcome.
    pub fn append(&mut self, payload: &[u8], now: Instant) -> AppendOutcome {
        self.append_grouped(payload, now, Duration::MAX)
    }

    /// Append one report, the caller expecting its next append `next_in` from now. When that
    /// comes less than [`WRITE_GROUP`] after the oldest report not yet written, this one waits
    /// in memory to be written with the next (one `write(2)` for the group); otherwise
    /// everything waiting is written now. Reading a batch and closing write out first.
    pub fn append_grouped(
        &mut self,
        payload: &[u8],
        now: Instant,
        next_in: Duration,
    ) -> AppendOutcome {
        self.append_encoded(|b| b.extend_from_slice(payload), now, next_in)
    }

    /// [`Spool::append_grouped`] for a report that `encode` appends to the buffer it is given
    /// (the spool's own), which saves a buffer and a copy per report.
    pub fn append_encoded(
        &mut self,
        encode: impl FnOnce(&mut Vec<u8>),
        now: Instant,
        next_in: Duration,
    ) -> AppendOutcome {
        let at = self.unwritten.len();
        self.unwritten.extend_from_slice(&[0; HEADER as usize]);
        encode(&mut self.unwritten);
        let (header, payload) = self.unwritten[at..].split_at_mut(HEADER as usize);
        header[..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        header[4..].copy_from_slice(&crc32fast::hash(payload).to_le_bytes());
        self.unwritten_records += 1;
        let oldest = *self.unwritten_since.get_or_insert(now);
        let next = now.checked_add(next_in);
        let group_closes = next.is_none_or(|t| t.duration_since(oldest) >= WRITE_GROUP);
        self.finish_append(group_closes, now)
    }

    /// Append several reports and write them at once, in one `write(2)` (and, with a zero
    /// `sync_interval`, one sync). Never fails, as [`Spool::append`].
    pub fn append_all(&mut self, payloads: &[Vec<u8>], now: Instant) -> AppendOutcome {
        if payloads.is_empty() {
            return AppendOutcome::default();
        }
        for p in payloads {
            push_frame(&mut self.unwritten, p);
        }
        self.unwritten_records += payloads.len() as u64;
        self.unwritten_since.get_or_insert(now);
        self.finish_append(true, now)
    }

    /// The end of every append: write out now if `write_now` (or if every append is synced),
    /// note what is owed a sync, sync when every append is, and stay under the cap.
    fn finish_append(&mut self, write_now: bool, now: Instant) -> AppendOutcome {
        let mut out = std::mem::take(&mut self.deferred);
        if write_now || self.options.sync_interval.is_zero() {
            out.merge(self.write_out());
        }
        if self.owed_since.is_none()
            && (self.unwritten_records > 0 || self.end() > self.ack.max(self.synced))
        {
            self.owed_since = Some(now);
        }
        if self.options.sync_interval.is_zero() {
            let _ = self.sync();
        }
        let dropped = self.enforce_cap();
        out.dropped += dropped;
        self.dropped_total += dropped;
        out
    }

    /// Write every report appended but not yet written, in one `write(2)`. On a disk error
    /// they go to the in-memory queue; on success, what waited there moves to disk.
    fn write_out(&mut self) -> AppendOutcome {
        let mut out = AppendOutcome::default();
        if self.unwritten_records == 0 {
            return out;
        }
        out.wrote = true;
        let frames = std::mem::take(&mut self.unwritten);
        let records = std::mem::take(&mut self.unwritten_records);
        if let Some(since) = self.unwritten_since.take() {
            // Written but not synced: owed from when the oldest of them was appended.
            self.owed_since.get_or_insert(since);
        }
        match self.write_frames(&frames, records) {
            Ok(()) => {
                // The disk works: move what waited in memory (not what is being sent).
                let mut one = Vec::new();
                while self.memory.len() > self.memory_in_flight {
                    let p = self
                        .memory
                        .remove(self.memory_in_flight)
                        .expect("len checked");
                    one.clear();
                    push_frame(&mut one, &p);
                    if self.write_frames(&one, 1).is_err() {
                        self.memory.insert(self.memory_in_flight, p);
                        break;
                    }
                    out.recovered_from_memory += 1;
                }
            }
            Err(e) => {
                out.disk_error = Some(e.to_string());
                self.writer = None;
                for p in payloads(&frames) {
                    if self.memory.len() >= MEMORY_MAX && self.memory.len() > self.memory_in_flight
                    {
                        self.memory.remove(self.memory_in_flight);
                        out.dropped += 1;
                    }
                    self.memory.push_back(p.to_vec());
                }
                self.dropped_total += out.dropped;
            }
        }
        // Keep the buffer's capacity: a sample then costs no allocation here.
        self.unwritten = frames;
        self.unwritten.clear();
        out
    }

    /// [`Spool::write_out`] outside an append: its outcome is returned by the next append.
    fn write_out_deferred(&mut self) {
        let out = self.write_out();
        self.deferred.merge(out);
    }

    /// Write whole frames at the end of the active segment.
    fn write_frames(&mut self, frames: &[u8], records: u64) -> Result<(), SpoolError> {
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
            self.sync_if_owed()?;
            self.new_segment(active.segment + 1)?;
        }
        let id = self.end().segment;
        let writer = self.writer.as_mut().expect("opened above");
        if let Err(source) = writer.write_all(frames) {
            let seg_len = self.segments.back().map_or(0, |s| s.len);
            let _ = writer.set_len(seg_len);
            self.writer = None;
            return Err(SpoolError::Io {
                path: self.path(id),
                source,
            });
        }
        let seg = self.segments.back_mut().expect("segment exists");
        seg.len += frames.len() as u64;
        seg.records += records;
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        if let Some(w) = &self.writer {
            w.sync_data()?;
        }
        self.synced = self.end();
        self.owed_since = None;
        Ok(())
    }

    fn sync_if_owed(&mut self) -> Result<(), SpoolError> {
        if self.end() > self.ack.max(self.synced) {
            let path = self.path(self.end().segment);
            self.sync()
                .map_err(|source| SpoolError::Io { path, source })?;
        }
        self.owed_since = None;
        Ok(())
    }

    /// Called on every tick: write out reports that have waited [`WRITE_GROUP`] (their group
    /// closes when the next report comes, which a stuck or failing sample delays), sync if
    /// something has been owed for `sync_interval`, and write down the delivered position every
    /// [`CURSOR_EVERY`]. A sync or position write that fails is tried again [`CURSOR_EVERY`]
    /// later, not at the next tick, and the one does not wait for the other.
    ///
    /// `Err` when something tried here failed; `Ok(true)` when nothing that was tried, here or
    /// before, is failing any longer; `Ok(false)` when something failed before and has not been
    /// tried again yet.
    pub fn maintain(&mut self, now: Instant) -> Result<bool, SpoolError> {
        if self
            .unwritten_since
            .is_some_and(|t| now.duration_since(t) >= WRITE_GROUP)
        {
            self.write_out_deferred();
        }
        let mut first_error = None;
        let sync_due = self
            .owed_since
            .is_some_and(|t| now.duration_since(t) >= self.options.sync_interval)
            && self.sync_retry_at.is_none_or(|t| now >= t);
        if sync_due {
            match self.sync_if_owed() {
                Ok(()) => self.sync_retry_at = None,
                Err(e) => {
                    self.sync_retry_at = Some(now + CURSOR_EVERY);
                    first_error = Some(e);
                }
            }
        }
        if self.ack != self.cursor_written
            && self
                .cursor_at
                .is_none_or(|t| now.duration_since(t) >= CURSOR_EVERY)
        {
            self.cursor_at = Some(now);
            match self.write_cursor() {
                Ok(()) => self.cursor_failing = false,
                Err(e) => {
                    self.cursor_failing = true;
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(self.sync_retry_at.is_none() && !self.cursor_failing),
        }
    }

    /// Write out reports waiting for their group and sync everything appended, now.
    pub fn flush(&mut self) -> Result<(), SpoolError> {
        // A disk error here leaves them in memory like any failed write.
        self.write_out_deferred();
        self.sync_if_owed()
    }

    /// Flush everything owed and the cursor (on shutdown).
    pub fn close(&mut self) -> Result<(), SpoolError> {
        self.flush()?;
        self.write_cursor()
    }

    fn write_cursor(&mut self) -> Result<(), SpoolError> {
        let keep = self
            .left_in_place
            .map(|segment| Position { segment, offset: 0 });
        dir::write_cursor(&self.dir, keep.map_or(self.ack, |k| k.min(self.ack)))?;
        self.cursor_written = self.ack;
        Ok(())
    }

    /// Delete oldest segments while over the cap; returns undelivered reports dropped.
    fn enforce_cap(&mut self) -> u64 {
        let mut dropped = 0;
        while self.bytes() > self.options.max_bytes && self.segments.len() > 1 {
            let seg = self.segments.pop_front().expect("more than one");
            dropped += seg.records - seg.acked;
            let _ = fs::remove_file(self.path(seg.id));
            let next = self.segments.front().expect("more than one").id;
            if self.ack.segment <= seg.id {
                self.ack = Position {
                    segment: next,
                    offset: 0,
                };
            }
            if self.read < self.ack {
                self.read = self.ack;
                self.reader = None;
            }
        }
        dropped
    }

    /// The next undelivered reports after those already handed out, at most `max` and never
    /// across a segment boundary; an empty batch when there is nothing to send.
    pub fn next_batch(&mut self, max: usize) -> Result<Batch, SpoolError> {
        self.write_out_deferred();
        // Find the first segment with unread records at or after the read position.
        let mut found = None;
        while let Some(seg) = self.segments.iter().find(|s| s.id >= self.read.segment) {
            if seg.id > self.read.segment {
                self.read = Position {
                    segment: seg.id,
                    offset: 0,
                };
            }
            if self.read.offset < seg.len {
                found = Some((seg.id, seg.len));
                break;
            }
            if seg.id == self.end().segment {
                break;
            }
            self.read = Position {
                segment: seg.id + 1,
                offset: 0,
            };
        }
        if let Some((id, limit)) = found {
            {
                let path = self.path(id);
                let io_err = |source| SpoolError::Io {
                    path: path.clone(),
                    source,
                };
                // The reader goes on where it stopped, also when the active segment has grown
                // since (it read to the old end, and its buffer holds nothing past it), unless
                // it has latched the end of what it may read.
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
                    let mut f = File::open(&path).map_err(io_err)?;
                    f.seek(SeekFrom::Start(self.read.offset)).map_err(io_err)?;
                    self.reader = Some((
                        id,
                        Frames::new(
                            BufReader::with_capacity(256 * 1024, f),
                            self.read.offset,
                            limit,
                        ),
                    ));
                }
                let (_, frames) = self.reader.as_mut().expect("set above");
                let mut records = Vec::new();
                // Bad data between good records (counted when the spool was opened) is
                // skipped; after the last good record the rest of the segment is.
                while records.len() < max && frames.pos < limit {
                    match frames.next().map_err(io_err)? {
                        Some((_, p)) => records.push(p),
                        None => {
                            frames.pos = limit;
                            break;
                        }
                    }
                }
                let end = frames.pos;
                self.read.offset = end;
                return Ok(Batch {
                    source: BatchSource::Disk { segment: id, end },
                    records,
                });
            }
        }
        // Disk is drained: send what waits in memory.
        let start = self.memory_in_flight;
        let n = (self.memory.len() - start).min(max);
        let records: Vec<Vec<u8>> = self.memory.iter().skip(start).take(n).cloned().collect();
        self.memory_in_flight += n;
        Ok(Batch {
            source: BatchSource::Memory,
            records,
        })
    }

    /// The database acknowledged this batch (batches are acknowledged in the order handed out).
    pub fn ack(&mut self, batch: &Batch) {
        match batch.source {
            BatchSource::Memory => {
                let n = batch.records.len().min(self.memory.len());
                self.memory.drain(..n);
                self.memory_in_flight = self.memory_in_flight.saturating_sub(n);
            }
            BatchSource::Disk { segment, end } => {
                let pos = Position {
                    segment,
                    offset: end,
                };
                if pos <= self.ack {
                    // Dropped by the cap while in flight.
                    return;
                }
                if let Some(seg) = self.segments.iter_mut().find(|s| s.id == segment) {
                    seg.acked = (seg.acked + batch.records.len() as u64).min(seg.records);
                }
                self.ack = pos;
                if self.owed_since.is_some() && self.ack >= self.end() {
                    self.owed_since = None;
                }
                // Delete segments that are wholly delivered (never the active one).
                while self.segments.len() > 1 {
                    let front = &self.segments[0];
                    let done = front.id < self.ack.segment
                        || (front.id == self.ack.segment && self.ack.offset >= front.len);
                    if !done {
                        break;
                    }
                    let id = front.id;
                    self.segments.pop_front();
                    let _ = fs::remove_file(self.path(id));
                    let next = self.segments[0].id;
                    if self.ack.segment <= id {
                        self.ack = Position {
                            segment: next,
                            offset: 0,
                        };
                    }
                }
                if self.read < self.ack {
                    self.read = self.ack;
                    self.reader = None;
                }
            }
        }
    }

    /// An insert failed: hand the same reports out again.
    pub fn rewind(&mut self) {
        self.read = self.ack;
        self.reader = None;
        self.memory_in_flight = 0;
    }
}

impl Drop for Spool {
    /// Reports still waiting for their group go to the page cache, best effort, whatever way
    /// the spool is let go of (an error return included). Nothing is synced here.
    fn drop(&mut self) {
        let _ = self.write_out();
    }
}

#[cfg(test)]
mod tests {
    use super::dir::read_cursor;
    use super::frame::frame;
    use super::testutil::{drain, file_len, opts, payload};
    use super::*;

    // Several reports appended at once are written at once (in one write), after those before.
    #[test]
    fn append_all_writes_at_once_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let now = Instant::now();
        let (mut s, _) = Spool::open(dir.path(), opts(1 << 20)).unwrap();
        // One report waiting for its group, then three at once.
        s.append_grouped(&payload(0), now, Duration::ZERO);
        assert_eq!(s.unwritten(), 1);
        let out = s.append_all(&[payload(1), payload(2), payload(3)], now);
        assert!(out.wrote && out.disk_error.is_none());
        assert_eq!(s.unwritten(), 0);
        assert_eq!(s.bytes(), 4 * (HEADER + 100));
        assert_eq!(drain(&mut s), (0..4).map(payload).collect::<Vec<_>>());
    }

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

    // The writer, reopened after an error or at start, never appends to a segment whose file
    // holds bytes the spool does not count (a torn tail it could not cut): the records would
    // land past where it reads. It starts the next segment instead.
    #[test]
    fn a_segment_with_uncounted_bytes_is_not_appended_to() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = Spool::open(dir.path(), opts(1 << 20)).unwrap();
        s.writer = None;
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join(segment_name(1)))
            .unwrap();
        f.write_all(&[0xab; 300]).unwrap();
        s.append(&payload(0), Instant::now());
        assert_eq!(s.end().segment, 2);
        assert_eq!(drain(&mut s), vec![payload(0)]);
    }

    // A delivered position that cannot be written (its name is taken by a directory) is
    // tried every CURSOR_EVERY, not every tick, and syncs that work meanwhile do not count as
    // recovery (the log would flap between failing and fixed); once it is written, it does.
    #[test]
    fn maintenance_recovers_only_when_what_failed_works() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = Spool::open(dir.path(), opts(1 << 20)).unwrap();
        let t0 = Instant::now();
        fs::create_dir_all(dir.path().join("acked/in-the-way")).unwrap();
        s.append(&payload(0), t0);
        let b = s.next_batch(10).unwrap();
        s.ack(&b);
        assert!(s.maintain(t0).is_err());
        // Something new to sync, a second on: the sync works, the position is not due.
        s.append(&payload(1), t0);
        assert!(!s.maintain(t0 + Duration::from_secs(2)).unwrap());
        assert!(s.maintain(t0 + CURSOR_EVERY).is_err());
        fs::remove_dir_all(dir.path().join("acked")).unwrap();
        assert!(s.maintain(t0 + 2 * CURSOR_EVERY).unwrap());
        assert_eq!(read_cursor(dir.path()), Some(s.ack));
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
        assert!(s.ack.segment >= 3);
        s.left_in_place = Some(2);
        s.close().unwrap();
        assert_eq!(
            read_cursor(dir.path()),
            Some(Position {
                segment: 2,
                offset: 0
            })
        );
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

    // A disk that cannot be written keeps reports in memory (sent from there); once it can
    // be written again they move to disk, and nothing is lost or reordered into duplicates.
    #[test]
    fn disk_full_falls_back_to_memory_then_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let seg = dir.path().join(segment_name(1));
        std::os::unix::fs::symlink("/dev/full", &seg).unwrap();
        let (mut s, _) = Spool::open(dir.path(), opts(1 << 20)).unwrap();
        let first = s.append(&payload(0), Instant::now());
        assert!(first.disk_error.unwrap().contains("No space left"));
        assert!(s.append(&payload(1), Instant::now()).disk_error.is_some());
        // One memory batch is in flight while the disk recovers.
        let in_flight = s.next_batch(1).unwrap();
        assert_eq!(in_flight.source, BatchSource::Memory);
        assert!(s.append(&payload(2), Instant::now()).disk_error.is_some());
        fs::remove_file(&seg).unwrap();
        let ok = s.append(&payload(3), Instant::now());
        assert_eq!(ok.disk_error, None);
        assert_eq!(ok.recovered_from_memory, 2);
        s.ack(&in_flight);
        assert_eq!(s.pending(), 3);
        let mut rest = drain(&mut s);
        rest.sort();
        assert_eq!(rest, vec![payload(1), payload(2), payload(3)]);
    }

    // Reports due a tenth of WRITE_GROUP apart are written ten at a time (one write of the
    // group once the next would fall WRITE_GROUP after the oldest waiting); waiting ones still count as pending, and
    // reading a batch or closing writes them out first, so nothing is missed or reordered.
    #[test]
    fn grouped_appends_are_written_together() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = Spool::open(dir.path(), opts(1 << 20)).unwrap();
        let t0 = Instant::now();
        let step = WRITE_GROUP / 10;
        let frame_len = frame(&payload(0)).len() as u64;
        let mut writes = Vec::new();
        for i in 0..25u32 {
            let out = s.append_grouped(&payload(i), t0 + step * i, step);
            assert_eq!(out.disk_error, None);
            if out.wrote {
                writes.push((i, file_len(&s)));
            }
            assert_eq!(s.pending(), u64::from(i) + 1);
        }
        assert_eq!(writes, vec![(9, 10 * frame_len), (19, 20 * frame_len)]);
        // Five wait in memory; reading a batch writes them out.
        let b = s.next_batch(100).unwrap();
        assert_eq!(b.records.len(), 25);
        assert_eq!(b.records[24], payload(24));
        assert_eq!(file_len(&s), 25 * frame_len);
        s.ack(&b);
        // At WRITE_GROUP apart or more every report is written at once, as `append` does.
        assert!(s.append_grouped(&payload(25), t0, WRITE_GROUP).wrote);
        assert!(s.append(&payload(26), t0).wrote);
        // Closing writes out what waits.
        s.append_grouped(&payload(27), t0, step);
        assert_eq!(file_len(&s), 27 * frame_len);
        s.close().unwrap();
        assert_eq!(file_len(&s), 28 * frame_len);
        drop(s);
        let (mut s, report) = Spool::open(dir.path(), opts(1 << 20)).unwrap();
        assert_eq!(report.pending, 3);
        assert_eq!(drain(&mut s), vec![payload(25), payload(26), payload(27)]);
    }

    // A report whose group stays open (the next sample is stuck or failing) is written by
    // maintain once it has waited WRITE_GROUP, and is then owed a sync; one still waiting
    // when the spool is dropped (an error return) is written by the drop.
    #[test]
    fn waiting_reports_are_written_after_the_group_window_or_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = Spool::open(dir.path(), opts(1 << 20)).unwrap();
        let t0 = Instant::now();
        let step = WRITE_GROUP / 10;
        assert!(!s.append_grouped(&payload(0), t0, step).wrote);
        s.maintain(t0 + step * 9).unwrap();
        assert_eq!((file_len(&s), s.unwritten()), (0, 1));
        s.maintain(t0 + WRITE_GROUP).unwrap();
        assert_eq!(file_len(&s), frame(&payload(0)).len() as u64);
        assert_eq!(s.unwritten(), 0);
        assert_eq!(s.owed_since, Some(t0));
        // The write made by maintain is reported by the next append.
        let out = s.append_grouped(&payload(1), t0 + WRITE_GROUP, step);
        assert!(out.wrote && out.disk_error.is_none());
        drop(s);
        let (mut s, report) = Spool::open(dir.path(), opts(1 << 20)).unwrap();
        assert_eq!(report.pending, 2);
        assert_eq!(drain(&mut s), vec![payload(0), payload(1)]);
    }

    // A group whose write fails goes to memory whole; the failure is reported by the append
    // that wrote (or, for a write made by `next_batch`, by the next append), and a later
    // append that writes again reports the recovery.
    #[test]
    fn a_failed_group_write_keeps_every_report_of_the_group() {
        let dir = tempfile::tempdir().unwrap();
        let seg = dir.path().join(segment_name(1));
        std::os::unix::fs::symlink("/dev/full", &seg).unwrap();
        let (mut s, _) = Spool::open(dir.path(), opts(1 << 20)).unwrap();
        let t0 = Instant::now();
        let step = WRITE_GROUP / 10;
        for i in 0..9 {
            let out = s.append_grouped(&payload(i), t0 + step * i, step);
            assert!(!out.wrote && out.disk_error.is_none());
        }
        let out = s.append_grouped(&payload(9), t0 + step * 9, step);
        assert!(out.wrote);
        assert!(out.disk_error.unwrap().contains("No space left"));
        assert_eq!(s.pending(), 10);
        // next_batch's own write-out fails too; the next append says so.
        s.append_grouped(&payload(10), t0 + step * 10, step);
        let in_memory = s.next_batch(100).unwrap();
        assert_eq!(in_memory.source, BatchSource::Memory);
        assert_eq!(in_memory.records.len(), 11);
        let out = s.append_grouped(&payload(11), t0 + step * 11, step);
        assert!(out.wrote && out.disk_error.is_some());
        assert!(s
            .append_grouped(&payload(12), t0 + step * 12, WRITE_GROUP)
            .disk_error
            .is_some());
        s.ack(&in_memory);
        assert_eq!(s.pending(), 2);
        fs::remove_file(&seg).unwrap();
        let out = s.append_grouped(&payload(13), t0 + step * 20, WRITE_GROUP);
        assert!(out.wrote);
        assert_eq!(out.disk_error, None);
        assert_eq!(out.recovered_from_memory, 2);
        assert_eq!(drain(&mut s), vec![payload(13), payload(11), payload(12)]);
    }
}
