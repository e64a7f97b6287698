//! The in-memory fallback: reports the disk could not take, kept in a bounded queue, handed
//! out from there once the disk is drained, and moved to disk when it works again.

use std::collections::VecDeque;

use super::{frame, Spool, MEMORY_MAX};

/// Reports held in memory, oldest first; the first `in_flight` of them are handed out.
#[derive(Debug, Default)]
pub(super) struct Memory {
    queue: VecDeque<Vec<u8>>,
    in_flight: usize,
}

impl Memory {
    pub(super) fn len(&self) -> usize {
        self.queue.len()
    }

    /// Keep `payload`, dropping the oldest report not handed out when full; the reports
    /// dropped.
    pub(super) fn hold(&mut self, payload: Vec<u8>) -> u64 {
        let mut dropped = 0;
        if self.queue.len() >= MEMORY_MAX && self.queue.len() > self.in_flight {
            self.queue.remove(self.in_flight);
            dropped = 1;
        }
        self.queue.push_back(payload);
        dropped
    }

    /// Every report not handed out, oldest first, taken out of the queue at once (to move them
    /// to disk): one by one, each would shift those handed out, a batch of up to 10,000.
    pub(super) fn take_waiting(&mut self) -> Vec<Vec<u8>> {
        let from = self.in_flight.min(self.queue.len());
        self.queue.split_off(from).into()
    }

    /// Put back, in their order, the reports [`Memory::take_waiting`] took and the disk did not,
    /// before anything else is held: they go where they were, after those handed out.
    pub(super) fn put_back(&mut self, rest: impl IntoIterator<Item = Vec<u8>>) {
        self.queue.extend(rest);
    }

    /// Hand out at most `max` reports after those already handed out.
    pub(super) fn next_batch(&mut self, max: usize) -> Vec<Vec<u8>> {
        let start = self.in_flight;
        let n = (self.queue.len() - start).min(max);
        self.in_flight += n;
        self.queue.iter().skip(start).take(n).cloned().collect()
    }

    /// The oldest `n` reports handed out were delivered.
    pub(super) fn ack(&mut self, n: usize) {
        let n = n.min(self.queue.len());
        self.queue.drain(..n);
        self.in_flight = self.in_flight.saturating_sub(n);
    }

    /// Hand out every report again.
    pub(super) fn rewind(&mut self) {
        self.in_flight = 0;
    }
}

impl Spool {
    /// The disk works: move what waited in memory there (not what is being sent); how many.
    /// One `write(2)` per segment they fill, not one per report: at the memory queue's limit
    /// that is 50,000 writes made while sampling waits for the spool. A segment still rolls
    /// over where report by report it would, so the cap drops no more at once than it did. A
    /// write that fails puts back what it and the writes after it would have moved.
    pub(super) fn move_memory_to_disk(&mut self) -> u64 {
        let waiting = self.memory.take_waiting();
        let mut moved = 0;
        let mut frames = Vec::new();
        while moved < waiting.len() {
            frames.clear();
            let room = self.segments.room();
            let mut n = 0;
            for p in &waiting[moved..] {
                if n > 0 && frames.len() as u64 >= room {
                    break;
                }
                frame::push_frame(&mut frames, p);
                n += 1;
            }
            if self.write_frames(&frames, n as u64).is_err() {
                break;
            }
            moved += n;
        }
        self.memory.put_back(waiting.into_iter().skip(moved));
        moved as u64
    }
}

#[cfg(test)]
mod tests {
    use super::super::dir::{list_segments, segment_name};
    use super::super::testutil::{drain, opts, payload};
    use super::super::{Batch, BatchSource, Spool, MEMORY_MAX, WRITE_GROUP};
    use std::fs;
    use std::time::Instant;

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

    /// A spool in `dir` whose disk was full (segment 1 is /dev/full) for `held` reports, kept
    /// in memory, the oldest `in_flight` of them handed out; then segment 1 has room again.
    fn held_in_memory(dir: &std::path::Path, held: u32, in_flight: usize) -> (Spool, Batch) {
        let seg = dir.join(segment_name(1));
        std::os::unix::fs::symlink("/dev/full", &seg).unwrap();
        let (mut s, _) = Spool::open(dir, opts(1 << 20)).unwrap();
        let all: Vec<_> = (0..held).map(payload).collect();
        for chunk in all.chunks(500) {
            assert!(s.append_all(chunk, Instant::now()).disk_error.is_some());
        }
        let batch = s.next_batch(in_flight).unwrap();
        assert_eq!(batch.source, BatchSource::Memory);
        fs::remove_file(&seg).unwrap();
        (s, batch)
    }

    // The disk has room again: the reports waiting in memory move to it in one write a
    // segment (not one a report, each shifting the batch in flight: seconds, at the queue's
    // limit, with sampling waiting), each segment rolling over where it would have, and come
    // back in order after the batch in flight, which is untouched and acknowledged as usual.
    #[test]
    fn memory_moves_to_disk_in_one_write_a_segment_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, in_flight) = held_in_memory(dir.path(), 4000, 1000);
        let writes = s.segments.writes;
        let out = s.append(&payload(4000), Instant::now());
        assert_eq!((out.disk_error, out.recovered_from_memory), (None, 3000));
        // 128 KiB segments (an eighth of the cap): the new report and the 3000 moved fill two
        // and start a third; one write for the new report, one for each segment of the move.
        assert_eq!(list_segments(dir.path()).unwrap(), [1, 2, 3]);
        assert_eq!(s.segments.writes - writes, 1 + 3);
        for id in [1, 2] {
            let len = fs::metadata(dir.path().join(segment_name(id)))
                .unwrap()
                .len();
            assert!((128 * 1024..128 * 1024 + 108).contains(&len), "{len}");
        }
        assert_eq!((s.in_memory(), s.pending()), (1000, 4001));
        assert_eq!(
            in_flight.records,
            (0..1000).map(payload).collect::<Vec<_>>()
        );
        s.ack(&in_flight);
        assert_eq!((s.in_memory(), s.pending()), (0, 3001));
        let mut expected = vec![payload(4000)];
        expected.extend((1000..4000).map(payload));
        assert_eq!(drain(&mut s), expected);
    }

    // A write of the move that fails (here the next segment's file is /dev/full) puts back
    // what it did not move, in order, behind the batch in flight; the next append moves it,
    // and every report is delivered once.
    #[test]
    fn a_move_to_disk_that_fails_midway_puts_back_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, in_flight) = held_in_memory(dir.path(), 3000, 1000);
        let next = dir.path().join(segment_name(2));
        std::os::unix::fs::symlink("/dev/full", &next).unwrap();
        let out = s.append(&payload(3000), Instant::now());
        assert_eq!(out.disk_error, None);
        // Segment 1 took the new report and as many as reach its 128 KiB: 1 + 1213 frames of
        // 108 bytes.
        let first = 1213;
        assert_eq!(out.recovered_from_memory, first);
        assert_eq!((s.in_memory(), s.pending()), (3000 - first, 3001));
        fs::remove_file(&next).unwrap();
        let out = s.append(&payload(3001), Instant::now());
        assert_eq!(out.recovered_from_memory, 2000 - first);
        assert_eq!(s.in_memory(), 1000);
        s.ack(&in_flight);
        let mut expected = vec![payload(3000)];
        expected.extend((1000..1000 + first as u32).map(payload));
        expected.push(payload(3001));
        expected.extend((1000 + first as u32..3000).map(payload));
        assert_eq!(drain(&mut s), expected);
    }

    // A disk that fills up just after a segment was wholly delivered: that segment is deleted
    // when the reports held in memory are delivered, giving its space back, where it used to
    // stay until something else freed the disk.
    #[test]
    fn a_delivered_segment_is_deleted_while_the_disk_fails() {
        let dir = tempfile::tempdir().unwrap();
        // 4096-byte segments: 38 records of 108 bytes fill one.
        let (mut s, _) = Spool::open(dir.path(), opts(8 * 4096)).unwrap();
        for i in 0..76 {
            assert_eq!(s.append(&payload(i), Instant::now()).disk_error, None);
        }
        assert_eq!(drain(&mut s).len(), 76);
        // Segment 2 is full and delivered; the next write starts segment 3, on a full disk.
        assert!(dir.path().join(segment_name(2)).exists());
        std::os::unix::fs::symlink("/dev/full", dir.path().join(segment_name(3))).unwrap();
        assert!(s.append(&payload(76), Instant::now()).disk_error.is_some());
        let b = s.next_batch(10).unwrap();
        assert_eq!(b.source, BatchSource::Memory);
        s.ack(&b);
        assert!(!dir.path().join(segment_name(2)).exists());
        assert_eq!(s.pending(), 0);
    }

    // A disk that stays unwritable fills the memory queue to MEMORY_MAX and no further: each
    // report past it drops the oldest, counted as dropped from memory, not by the cap.
    #[test]
    fn a_full_memory_queue_drops_its_oldest_counted_apart_from_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/dev/full", dir.path().join(segment_name(1))).unwrap();
        let (mut s, _) = Spool::open(dir.path(), opts(1 << 20)).unwrap();
        let max = MEMORY_MAX as u32;
        let mut dropped = 0;
        for chunk in (0..max + 5).collect::<Vec<_>>().chunks(1000) {
            let batch: Vec<_> = chunk.iter().map(|&i| payload(i)).collect();
            let out = s.append_all(&batch, Instant::now());
            assert!(out.disk_error.is_some());
            assert_eq!(out.dropped, 0, "the cap dropped nothing");
            dropped += out.dropped_from_memory;
        }
        assert_eq!(dropped, 5);
        assert_eq!(
            (s.in_memory(), s.pending()),
            (u64::from(max), u64::from(max))
        );
        assert_eq!((s.dropped_total, s.dropped_from_memory_total), (5, 5));
        assert_eq!(s.next_batch(1).unwrap().records, vec![payload(5)]);
    }

    // At close the reports held in memory, those handed out too, get one more try on the
    // disk: with room they are in the spool for the next start; without, they are given up
    // and counted as dropped, not left among the pending.
    #[test]
    fn close_moves_memory_to_disk_or_gives_it_up_counted() {
        for room in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let seg = dir.path().join(segment_name(1));
            std::os::unix::fs::symlink("/dev/full", &seg).unwrap();
            let (mut s, _) = Spool::open(dir.path(), opts(1 << 20)).unwrap();
            for i in 0..3 {
                assert!(s.append(&payload(i), Instant::now()).disk_error.is_some());
            }
            let handed_out = s.next_batch(2).unwrap();
            assert_eq!(handed_out.source, BatchSource::Memory);
            if room {
                fs::remove_file(&seg).unwrap();
            }
            s.close().unwrap_or_else(|e| panic!("room {room}: {e}"));
            // Delivery's acknowledgement arriving after the close (its blocking work outlived a
            // stop's timeout) is ignored: close has handed the memory queue to the disk.
            s.ack(&handed_out);
            s.append_again(&[payload(9)], Instant::now());
            let lost = s.discard_memory();
            assert_eq!(s.dropped_total, lost);
            assert_eq!(s.dropped_from_memory_total, lost);
            drop(s);
            if room {
                assert_eq!(lost, 0);
                let (mut again, _) = Spool::open(dir.path(), opts(1 << 20)).unwrap();
                let mut kept = drain(&mut again);
                kept.sort();
                assert_eq!(kept, vec![payload(0), payload(1), payload(2)]);
            } else {
                assert_eq!(lost, 3);
            }
        }
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
