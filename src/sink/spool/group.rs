//! The write group: reports appended but not yet written, encoded as frames in one buffer
//! so that a group of them costs one `write(2)` (see [`super::Spool::append_grouped`]).

use std::time::Instant;

use super::frame::{self, push_encoded, push_frame};
use super::{AppendOutcome, Spool, SpoolError, WRITE_GROUP};

/// Frames appended but not written yet, how many, and since when.
#[derive(Debug, Default)]
pub(super) struct WriteGroup {
    frames: Vec<u8>,
    records: u64,
    since: Option<Instant>,
}

/// What a group held when it was taken to be written.
pub(super) struct Taken {
    pub(super) frames: Vec<u8>,
    pub(super) records: u64,
    /// When the oldest of them was appended.
    pub(super) since: Option<Instant>,
}

impl WriteGroup {
    /// Reports waiting to be written.
    pub(super) fn records(&self) -> u64 {
        self.records
    }

    /// Add the report `encode` appends to the buffer it is given; when the oldest report
    /// waiting was appended.
    pub(super) fn push_encoded(
        &mut self,
        encode: impl FnOnce(&mut Vec<u8>),
        now: Instant,
    ) -> Instant {
        push_encoded(&mut self.frames, encode);
        self.records += 1;
        *self.since.get_or_insert(now)
    }

    /// Add these reports.
    pub(super) fn push_all(&mut self, payloads: &[Vec<u8>], now: Instant) {
        for p in payloads {
            push_frame(&mut self.frames, p);
        }
        self.records += payloads.len() as u64;
        self.since.get_or_insert(now);
    }

    /// The oldest report waiting has waited [`WRITE_GROUP`] by `now`.
    pub(super) fn has_waited(&self, now: Instant) -> bool {
        self.since
            .is_some_and(|t| now.duration_since(t) >= WRITE_GROUP)
    }

    /// Take everything waiting, to be written; `None` when nothing is.
    pub(super) fn take(&mut self) -> Option<Taken> {
        if self.records == 0 {
            return None;
        }
        Some(Taken {
            frames: std::mem::take(&mut self.frames),
            records: std::mem::take(&mut self.records),
            since: self.since.take(),
        })
    }

    /// Give back the buffer of what was taken, emptied: its capacity is kept, so a report
    /// then costs no allocation here.
    pub(super) fn recycle(&mut self, mut frames: Vec<u8>) {
        frames.clear();
        self.frames = frames;
    }
}

impl Spool {
    /// The end of every append: write out now if `write_now` (or if every append is synced),
    /// note what is owed a sync, sync when every append is, and stay under the cap.
    pub(super) fn finish_append(&mut self, write_now: bool, now: Instant) -> AppendOutcome {
        let mut out = std::mem::take(&mut self.deferred);
        if write_now || self.sync.every_append() {
            out.merge(self.write_out());
        }
        if self.sync.owed_since.is_none()
            && (self.group.records() > 0 || self.sync.is_owed(self.segments.end(), self.cursor.ack))
        {
            self.sync.owe_from(now);
        }
        // Not while a failed sync waits for its retry: each would write the reports since
        // the last good sync again to a new segment (see `Spool::write_unsynced_again`).
        if self.sync.every_append() && self.sync.is_due(now) {
            let result = self.sync();
            self.sync.tried(now, self.segments.end(), &result);
            if let Err(e) = result {
                self.unsaid.get_or_insert(e);
            }
        }
        let dropped = self.enforce_cap();
        out.dropped += dropped;
        self.dropped_total += dropped;
        out
    }

    /// Write every report appended but not yet written, in one `write(2)`. On a disk error
    /// they go to the in-memory queue; on success, what waited there moves to disk.
    pub(super) fn write_out(&mut self) -> AppendOutcome {
        let mut out = AppendOutcome::default();
        let Some(taken) = self.group.take() else {
            return out;
        };
        out.wrote = true;
        if let Some(since) = taken.since {
            // Written but not synced: owed from when the oldest of them was appended.
            self.sync.owe_from(since);
        }
        match self.write_frames(&taken.frames, taken.records) {
            Ok(()) => out.recovered_from_memory = self.move_memory_to_disk(),
            Err(e) => {
                out.disk_error = Some(e.to_string());
                for p in frame::payloads(&taken.frames) {
                    out.dropped_from_memory += self.memory.hold(p.to_vec());
                }
                self.dropped_total += out.dropped_from_memory;
                self.dropped_from_memory_total += out.dropped_from_memory;
            }
        }
        self.group.recycle(taken.frames);
        out
    }

    /// [`Spool::write_out`] outside an append: its outcome is returned by the next append.
    pub(super) fn write_out_deferred(&mut self) {
        let out = self.write_out();
        self.deferred.merge(out);
    }

    /// Write whole frames at the end of the active segment, syncing a full one before the
    /// next is started.
    pub(super) fn write_frames(&mut self, frames: &[u8], records: u64) -> Result<(), SpoolError> {
        if self.segments.is_full() {
            if let Err(e) = self.sync_if_owed() {
                // The reports that sync was to write are on a new segment, synced, unless
                // that failed too: the write goes on there, and the failure is said by the
                // next maintenance.
                if self.segments.writer.is_none()
                    || self.sync.is_owed(self.segments.end(), self.cursor.ack)
                {
                    return Err(e);
                }
                self.unsaid.get_or_insert(e);
            }
        }
        let written = self.segments.write(frames, records);
        if written.is_err() {
            self.close_after_failed_write();
        }
        written
    }

    /// Close the segment a write failed on, so that new reports start a segment of their
    /// own, never after a partial frame. What the file took before is owed a sync that the
    /// spool's next sync, made on its next segment, would not reach, so it is synced now;
    /// should that fail, the reports it was to write are written again elsewhere or kept in
    /// memory, as after any failed sync (`Spool::sync`), and the error is said by the next
    /// maintenance.
    fn close_after_failed_write(&mut self) {
        let end = self.segments.end();
        // A segment the failed write was the first to reach holds nothing to sync: syncing it
        // would only fail again, and be counted a fault, at every append while the card is full.
        if end.offset > 0 && self.sync.is_owed(end, self.cursor.ack) {
            if let Err(e) = self.sync() {
                self.unsaid.get_or_insert(e);
            }
        }
        // The copies' new segment, if they went to one, was synced and holds whole frames.
        if self.segments.end().segment == end.segment {
            self.segments.writer = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::dir::segment_name;
    use super::super::frame::{frame, HEADER};
    use super::super::testutil::{drain, file_len, opts, payload};
    use super::super::Spool;
    use super::*;

    // A write that fails as the first of a new segment (a full card) syncs nothing: the
    // segment holds nothing. It used to sync the empty file, and count a fault when that failed
    // too (as /dev/full's sync does), at every append while the card stayed full.
    #[test]
    fn a_failed_first_write_of_a_segment_syncs_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let now = Instant::now();
        let (mut s, _) = Spool::open(dir.path(), opts(1 << 20)).unwrap();
        assert!(s.append(&payload(0), now).disk_error.is_none());
        s.sync().unwrap();
        // The next segment is /dev/full: its first write fails with ENOSPC.
        s.segments.writer = None;
        std::os::unix::fs::symlink("/dev/full", dir.path().join(segment_name(2))).unwrap();
        let syncs = s.syncs_total;
        let out = s.append(&payload(1), now);
        assert!(out.disk_error.is_some());
        assert_eq!((s.syncs_total, s.faults.sync_failed), (syncs, 0));
        assert_eq!(s.memory.len(), 1);
    }

    // Several reports appended at once are written at once (in one write), after those before.
    #[test]
    fn append_all_writes_at_once_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let now = Instant::now();
        let (mut s, _) = Spool::open(dir.path(), opts(1 << 20)).unwrap();
        // One report waiting for its group, then three at once.
        s.append_grouped(&payload(0), now, std::time::Duration::ZERO);
        assert_eq!(s.unwritten(), 1);
        let out = s.append_all(&[payload(1), payload(2), payload(3)], now);
        assert!(out.wrote && out.disk_error.is_none());
        assert_eq!(s.unwritten(), 0);
        assert_eq!(s.bytes(), 4 * (HEADER + 100));
        assert_eq!(drain(&mut s), (0..4).map(payload).collect::<Vec<_>>());
    }

    // Reports due a tenth of WRITE_GROUP apart are written ten at a time (one write of the
    // group once the next would fall WRITE_GROUP after the oldest waiting); waiting ones
    // still count as pending, and reading a batch or closing writes them out first, so
    // nothing is missed or reordered.
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
        assert_eq!(s.sync.owed_since, Some(t0));
        // The write made by maintain is reported by the next append.
        let out = s.append_grouped(&payload(1), t0 + WRITE_GROUP, step);
        assert!(out.wrote && out.disk_error.is_none());
        drop(s);
        let (mut s, report) = Spool::open(dir.path(), opts(1 << 20)).unwrap();
        assert_eq!(report.pending, 2);
        assert_eq!(drain(&mut s), vec![payload(0), payload(1)]);
    }
}
