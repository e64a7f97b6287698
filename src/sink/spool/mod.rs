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
//! duplicate-key rule on `_id` turns into no-ops. Fully delivered segments are deleted, oldest
//! first; a position naming a segment not on disk while older ones are is damaged, and nothing
//! is taken as delivered (see `dir::position_is_damaged`).
//!
//! # Crash safety and the fsync policy
//!
//! Each append is one `write(2)` of the whole frame, so once `append` returns the record is in
//! the kernel's page cache and survives the process being killed (SIGKILL, panic, OOM). Reports
//! taken in quick succession are written in groups instead ([`Spool::append_grouped`]): a
//! report due to be followed within [`WRITE_GROUP`] (50 ms) waits for it in memory, so at
//! `--interval 1ms` one `write(2)` carries fifty reports, and a kill can take the last 50 ms of
//! readings with it (power loss can take more, below). At intervals of 50 ms and more, the
//! agent's default 500 ms included, every report is written as soon as it is taken. Why: a
//! small `write(2)` spends nearly all of its time on the mtime update and its journal handle,
//! whatever its size, so at short intervals one write per report costs many times the CPU of
//! one per group (`benches/spool.rs appends` measures it). Power loss is the other
//! case: the page cache is gone unless the data was `fdatasync`ed. Syncing every append would
//! cost a data block plus an ext4 journal commit per report, many times the report's size in
//! flash writes (`benches/spool.rs fill` measures them), which wears an SD card for nothing in
//! the common case, where the database acknowledges a report within seconds and the spool copy
//! is deleted anyway. So the policy is *sync what is still owed*: a record neither acknowledged
//! nor synced `sync_interval` after it was appended is synced (with everything before it). The
//! agent's default (`--spool-sync`) is its insert window plus a second, so with the database up
//! nothing is synced; with it down, one fdatasync per interval covers every report older than
//! that. `--spool-sync 0` syncs every append, for those who prefer the wear to the window.
//!
//! On open, every segment is scanned. A torn or corrupt tail (a crash mid-write, or blocks of
//! zeros after power loss) fails its length or CRC check and is cut off, never fatal. Bad data
//! with good records after it (a block the card returned wrong, or an unsynced block that never
//! reached it while a later one did) costs only the records it overlaps: reading resumes at the
//! next good record (see `frame::Frames`), and the regions skipped are counted and logged.
//!
//! # Bounds and disk faults
//!
//! `max_bytes` caps the files; beyond it the oldest segment is deleted and its undelivered
//! reports counted as dropped. When a write fails (disk full, read-only, I/O error), the report
//! is kept in a bounded in-memory queue ([`MEMORY_MAX`]; past it the oldest not being sent is
//! dropped, counted apart from the cap's) and the next append tries the disk again, moving the
//! queue there once it works. Opening never fails for a disk fault either: a delivered segment
//! that cannot be deleted is left for the next start, one that cannot be read (at open, or
//! opened when reading reaches it) is renamed `*.spool.unreadable-<time>` (never deleted; left
//! in place, and out of the run, if even that fails), and with no segment file it can create,
//! the spool starts with its writer closed, so the first append falls back to memory (see
//! `OpenReport::problems`).
//!
//! # Layout
//!
//! - `frame`: framing and CRC, reading a segment file back and resyncing after bad bytes.
//! - `dir`: the files of the directory: segment names and listing, `acked`, set-aside names.
//! - `recovery`: opening after a crash: scanning, cutting torn tails, setting files aside.
//! - `segment`: the segment set, its writer and the cap.
//! - `group`: reports appended but not yet written (the write group).
//! - `cursor`: the delivery cursor: delivered and handed-out positions, the reader, `acked`.
//! - `memory`: the in-memory fallback while the disk cannot be written.
//! - `sync`: the sync policy.
//! - `summary`: the read-only look used by `status`.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod cursor;
mod dir;
mod frame;
mod group;
mod memory;
mod recovery;
mod segment;
mod summary;
mod sync;
#[cfg(test)]
mod testutil;

pub use cursor::{Batch, BatchSource};
pub use dir::{set_aside, set_aside_into, SetAside, SET_ASIDE};
pub use recovery::OpenReport;
pub use summary::{for_each_pending, summarize, SpoolSummary, Unreadable};

use cursor::Cursor;
use group::WriteGroup;
use memory::Memory;
use segment::Segments;
use sync::SyncPolicy;

/// How often the delivered position is written down. What it saves after a crash is a
/// resend of reports the database already has (which it counts as duplicates), so a minute's
/// worth is cheap; writing it is a new file and a rename, the costliest thing the agent does
/// between syncs, so not at every insert.
pub const CURSOR_EVERY: Duration = Duration::from_secs(60);
/// How soon a sync or a position write that failed is tried again.
pub const RETRY_EVERY: Duration = Duration::from_secs(5);
/// Reports kept in memory while the disk cannot be written (about 7 hours at 2 Hz).
pub const MEMORY_MAX: usize = 50_000;
/// Reports appended within this long of each other may be written together, in one
/// `write(2)` (see [`Spool::append_grouped`]).
pub const WRITE_GROUP: Duration = Duration::from_millis(50);

/// Why the spool cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The spool directory cannot be created or listed (at open).
    #[error("cannot use the spool directory {dir}: {source}")]
    Dir {
        /// The spool directory.
        dir: PathBuf,
        /// What the system said.
        source: io::Error,
    },
    /// A segment file cannot be synced; `then` says where the reports it was to make safe
    /// went (see `Spool::write_unsynced_again`).
    #[error("cannot sync {path}: {source}; {then}")]
    Sync {
        /// The segment file.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
        /// What was done about the reports the failed sync was to write.
        then: String,
    },
    /// A file of the spool cannot be opened, read or written.
    #[error("spool I/O on {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },
}

/// A place in the spool: segment id and byte offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Position {
    /// The segment's id.
    pub segment: u64,
    /// Bytes into its file.
    pub offset: u64,
}

/// Settings of a spool.
#[derive(Debug, Clone)]
pub struct SpoolOptions {
    /// Cap on the bytes of segment files; beyond it the oldest reports are dropped.
    pub max_bytes: u64,
    /// How long an appended report may wait for a sync. Zero syncs every append.
    pub sync_interval: Duration,
}

/// What an append did beyond appending.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AppendOutcome {
    /// Undelivered reports deleted to stay under the cap.
    pub dropped: u64,
    /// Reports held in memory dropped because the disk still failed and the memory queue was
    /// at [`MEMORY_MAX`].
    pub dropped_from_memory: u64,
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
        self.dropped_from_memory += later.dropped_from_memory;
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

/// Signs of a failing disk since the spool was opened: each is said in the log, and counted
/// here for the metrics, where a fleet's operator sees a failing SD card before it fails for
/// good.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SpoolFaults {
    /// `fdatasync`s of a segment that failed.
    pub sync_failed: u64,
    /// Regions of bad data met between good records, at open or while delivering.
    pub bad_data: u64,
    /// Segment files that could not be read, set aside (or left in place), at open or after.
    pub set_aside: u64,
}

/// The spool of one directory (see the module docs).
pub struct Spool {
    segments: Segments,
    group: WriteGroup,
    cursor: Cursor,
    memory: Memory,
    sync: SyncPolicy,
    /// The outcome of a write made outside an append, returned by the next append.
    deferred: AppendOutcome,
    /// [`Spool::close`] was called: a late acknowledgement or re-append (delivery's blocking
    /// work outliving a stop's timeout) is ignored, since close has moved memory about.
    closed: bool,
    /// Undelivered reports dropped since the spool was opened (the cap, a full memory queue).
    pub dropped_total: u64,
    /// Of [`Spool::dropped_total`], those held in memory while the disk could not be written:
    /// dropped from a full memory queue, or given up by [`Spool::discard_memory`].
    pub dropped_from_memory_total: u64,
    /// `fdatasync`s of segment files since the spool was opened: each a forced write to the
    /// card, which the sync policy keeps to the times the database does not answer.
    pub syncs_total: u64,
    /// Signs of a failing disk since the spool was opened.
    pub faults: SpoolFaults,
    /// A sync that failed outside maintenance (at a segment's end, or with every append), for
    /// the next maintenance to return.
    unsaid: Option<SpoolError>,
}

impl Spool {
    /// Open (creating) the spool in `dir`, recovering from a crash.
    pub fn open(dir: &Path, options: SpoolOptions) -> Result<(Spool, OpenReport), SpoolError> {
        let recovery::Recovered {
            segments,
            ack,
            written,
            id_floor,
            left_in_place,
            mut report,
        } = recovery::recover(dir)?;
        let segments = Segments::new(dir, options.max_bytes, segments, id_floor);
        // Damage in what is on disk now was counted, and said, by the scan at open.
        let scanned = segments.end();
        let mut spool = Spool {
            sync: SyncPolicy::new(options.sync_interval, scanned),
            segments,
            group: WriteGroup::default(),
            cursor: Cursor::new(ack, written, left_in_place, scanned),
            memory: Memory::default(),
            deferred: AppendOutcome::default(),
            closed: false,
            dropped_total: 0,
            dropped_from_memory_total: 0,
            syncs_total: 0,
            faults: SpoolFaults {
                sync_failed: 0,
                bad_data: report.corrupt_regions
                    + report.corrupt_delivered_regions
                    + report.unreadable_regions,
                set_aside: report.set_aside,
            },
            unsaid: None,
        };
        if spool.segments.is_empty() {
            spool.start_first_segment(id_floor, &mut report);
        }
        Ok((spool, report))
    }

    /// Create the first segment of an empty spool, past the delivered position.
    fn start_first_segment(&mut self, id_floor: u64, report: &mut OpenReport) {
        // The position on disk says the old offset until it is next written, which a kill or
        // a failing disk can put off: reports written at or past offset 0 of its segment
        // would then be taken as delivered at the next start. A position inside a segment that
        // is gone (set aside, deleted by hand) so starts the next one, which no write can fail
        // (writing the position down first could, on the failing disk that set it aside).
        let ack = self.cursor.ack;
        let past = ack.segment + u64::from(ack.offset > 0);
        let first = past.max(1).max(id_floor);
        if let Err(e) = self.segments.new_segment(first) {
            // A full or read-only disk: run anyway, reports kept in memory until a write
            // works (the first append reports the error, and creates this file then).
            report.problems.push(e.to_string());
            self.segments.push_empty(first);
        }
        // Only delivery and reading move: the position written down is still the old one.
        self.cursor.ack = Position {
            segment: first,
            offset: 0,
        };
        self.cursor.read = self.cursor.ack;
        self.sync.synced_to(self.segments.end());
    }

    /// The spool's directory.
    pub fn dir(&self) -> &Path {
        self.segments.dir()
    }

    /// Reports appended but not written to the segment file yet (see
    /// [`Spool::append_grouped`]); reading a batch writes them first.
    pub fn unwritten(&self) -> u64 {
        self.group.records()
    }

    /// Undelivered reports, on disk and in memory.
    pub fn pending(&self) -> u64 {
        self.segments.pending() + self.memory.len() as u64 + self.group.records()
    }

    /// Of [`Spool::pending`], the reports held in memory because the disk could not take them
    /// (at most [`MEMORY_MAX`]): a stop or a crash loses them.
    pub fn in_memory(&self) -> u64 {
        self.memory.len() as u64
    }

    /// Bytes of segment files.
    pub fn bytes(&self) -> u64 {
        self.segments.bytes()
    }

    /// The cap on [`Spool::bytes`] (`max_bytes`), beyond which the oldest reports are dropped.
    pub fn max_bytes(&self) -> u64 {
        self.segments.max_bytes()
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
        let oldest = self.group.push_encoded(encode, now);
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
        self.group.push_all(payloads, now);
        self.finish_append(true, now)
    }

    /// [`Spool::append_all`] for a caller that does not account for appends (delivery, putting
    /// back refused reports it could not save): what came of it (reports dropped by the cap, a
    /// disk error, reports moved from memory) is returned by the next append, whose caller does.
    pub fn append_again(&mut self, payloads: &[Vec<u8>], now: Instant) {
        if self.closed {
            return;
        }
        let out = self.append_all(payloads, now);
        self.deferred.merge(out);
    }

    /// Called on every tick: write out reports that have waited [`WRITE_GROUP`] (their group
    /// closes when the next report comes, which a stuck or failing sample delays), sync if
    /// something has been owed for `sync_interval`, and write down the delivered position every
    /// [`CURSOR_EVERY`]. A sync or position write that fails is tried again [`RETRY_EVERY`]
    /// later, not at the next tick, and the one does not wait for the other.
    ///
    /// `Err` when something tried here failed; `Ok(true)` when nothing that was tried, here or
    /// before, is failing any longer; `Ok(false)` when something failed before and has not been
    /// tried again yet.
    pub fn maintain(&mut self, now: Instant) -> Result<bool, SpoolError> {
        if self.group.has_waited(now) {
            self.write_out_deferred();
        }
        let mut first_error = self.unsaid.take();
        if self.sync.is_due(now) {
            let result = self.sync_if_owed();
            self.sync.tried(now, self.segments.end(), &result);
            if let Err(e) = result {
                first_error.get_or_insert(e);
            }
        }
        if let Err(e) = self.cursor.write_if_due(self.segments.dir(), now) {
            first_error.get_or_insert(e);
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(!self.sync.is_failing() && !self.cursor.is_failing()),
        }
    }

    /// Write out reports waiting for their group and sync everything appended, now.
    pub fn flush(&mut self) -> Result<(), SpoolError> {
        // A disk error here leaves them in memory like any failed write.
        self.write_out_deferred();
        self.sync_if_owed()
    }

    /// Flush everything owed and the cursor (on shutdown, once delivery has stopped). Reports
    /// held in memory are tried on the disk once more, those handed out for delivery too (their
    /// insert has ended one way or the other; one that was stored is a duplicate `_id` when
    /// resent); what the disk still cannot take stays in memory, see
    /// [`Spool::discard_memory`].
    pub fn close(&mut self) -> Result<(), SpoolError> {
        self.closed = true;
        self.memory.rewind();
        self.move_memory_to_disk();
        self.flush()?;
        self.cursor.write(self.segments.dir())
    }

    /// Give up the reports held in memory (the process is ending and the disk cannot take
    /// them): they are counted as dropped, and their number returned.
    pub fn discard_memory(&mut self) -> u64 {
        let lost = self.memory.len() as u64;
        self.memory = Memory::default();
        self.dropped_total += lost;
        self.dropped_from_memory_total += lost;
        lost
    }

    /// Delete oldest segments while over the cap; returns undelivered reports dropped.
    fn enforce_cap(&mut self) -> u64 {
        let mut dropped = 0;
        while let Some(seg) = self.segments.pop_over_cap() {
            dropped += seg.records - seg.acked;
            self.cursor.segment_gone(seg.id, self.segments.first_id());
        }
        dropped
    }

    /// The next undelivered reports after those already handed out, at most `max` and never
    /// across a segment boundary; an empty batch when there is nothing to send. A segment file
    /// that cannot be opened is set aside as at open, and reading goes on past it (the batch's
    /// `problems` say so): delivery stopping there would stop the agent, and its restart set
    /// the file aside all the same.
    pub fn next_batch(&mut self, max: usize) -> Result<Batch, SpoolError> {
        self.write_out_deferred();
        self.sync.read_up_to(self.segments.end(), Instant::now());
        let mut problems = Vec::new();
        while let Some((id, limit)) = self.segments.seek_unread(&mut self.cursor.read) {
            let path = self.segments.path(id);
            if let Err(e) = self.cursor.open(&path, id, limit) {
                problems.push(self.set_aside_unreadable(id, &e));
                continue;
            }
            let mut batch = self.cursor.read_batch(&path, id, limit, max)?;
            if let BatchSource::Disk { damaged: 1.., .. } = batch.source {
                self.faults.bad_data += 1;
            }
            batch.problems = problems;
            return Ok(batch);
        }
        // Disk is drained: send what waits in memory.
        Ok(Batch {
            source: BatchSource::Memory,
            records: self.memory.next_batch(max),
            problems,
        })
    }

    /// The database acknowledged this batch (batches are acknowledged in the order handed out).
    pub fn ack(&mut self, batch: &Batch) {
        if self.closed {
            return;
        }
        match batch.source {
            BatchSource::Memory => {
                self.memory.ack(batch.records.len());
                // The disk is failing, perhaps full: a segment wholly delivered before it
                // failed is space the spool can give back itself.
                self.delete_delivered_segments();
            }
            BatchSource::Disk { segment, end, .. } => {
                self.ack_disk(segment, end, batch.records.len() as u64);
            }
        }
    }

    /// `records` reports of segment `segment`, up to `end`, were delivered.
    fn ack_disk(&mut self, segment: u64, end: u64, records: u64) {
        let pos = Position {
            segment,
            offset: end,
        };
        if pos <= self.cursor.ack {
            // Dropped by the cap while in flight.
            return;
        }
        self.segments.count_acked(segment, records, end);
        self.cursor.ack = pos;
        self.sync.delivered_to(pos, self.segments.end());
        self.delete_delivered_segments();
        self.cursor.catch_up_read();
    }

    /// Delete segments that are wholly delivered (never the active one).
    fn delete_delivered_segments(&mut self) {
        while let Some(id) = self.segments.pop_delivered(self.cursor.ack) {
            self.cursor.segment_gone(id, self.segments.first_id());
        }
    }

    /// An insert failed: hand the same reports out again.
    pub fn rewind(&mut self) {
        self.cursor.rewind();
        self.memory.rewind();
    }
}

impl Spool {
    /// What a SIGKILL leaves, for the crash tests: the reports still waiting for their write
    /// group are lost (as [`Drop`] would write them), and the files are closed, as the kernel
    /// closes a killed process's files. `mem::forget` loses the same reports but keeps the files
    /// open, which a long property run then runs out of.
    #[doc(hidden)]
    pub fn kill(mut self) {
        drop(self.group.take());
    }
}

impl Drop for Spool {
    /// Reports still waiting for their group go to the page cache, best effort, whatever way
    /// the spool is let go of (an error return included). Nothing is synced here.
    fn drop(&mut self) {
        let _ = self.write_out();
    }
}
