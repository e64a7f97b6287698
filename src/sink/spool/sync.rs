//! The sync policy: *sync what is still owed*, at most every `sync_interval`, and only while
//! some appended record is neither delivered nor synced (see the module docs of
//! [`super`]). Pure state; the spool does the syncing.

use std::time::{Duration, Instant};

use super::{frame, Position, Spool, SpoolError, RETRY_EVERY};

/// What is owed a sync, and since when.
#[derive(Debug)]
pub(super) struct SyncPolicy {
    /// Zero syncs every append.
    interval: Duration,
    /// Appended but neither synced nor known to be delivered, since this instant.
    pub(super) owed_since: Option<Instant>,
    /// Everything before this was synced.
    synced: Position,
    /// The last sync tried failed: when to try it again, and where the records ended then.
    failed: Option<Failed>,
    /// Where the records ended when the last batch was read, and when.
    last_read: Option<(Position, Instant)>,
}

impl SyncPolicy {
    /// Nothing owed, everything before `synced` on disk for good.
    pub(super) fn new(interval: Duration, synced: Position) -> Self {
        SyncPolicy {
            interval,
            owed_since: None,
            synced,
            failed: None,
            last_read: None,
        }
    }

    /// Every append is synced as it is made.
    pub(super) fn every_append(&self) -> bool {
        self.interval.is_zero()
    }

    /// Records up to `end` need a sync: past both what was delivered and what was synced.
    pub(super) fn is_owed(&self, end: Position, ack: Position) -> bool {
        end > ack.max(self.synced)
    }

    /// Where the records start that are neither delivered nor known to be on disk.
    fn unsynced_from(&self, ack: Position) -> Position {
        ack.max(self.synced)
    }

    /// Something is owed from `since`, unless something older already is.
    pub(super) fn owe_from(&mut self, since: Instant) {
        self.owed_since.get_or_insert(since);
    }

    /// Nothing is owed any longer.
    pub(super) fn settled(&mut self) {
        self.owed_since = None;
    }

    /// Everything before `end` was synced.
    pub(super) fn synced_to(&mut self, end: Position) {
        self.synced = end;
        self.owed_since = None;
    }

    /// A batch is read at `at`, when the records end at `end`.
    pub(super) fn read_up_to(&mut self, end: Position, at: Instant) {
        self.last_read = Some((end, at));
    }

    /// Everything before `ack` was delivered: if that is all there is (`end`), nothing is
    /// owed. If it is all there was when the last batch was read, what is owed now was
    /// appended since that read, and is owed from then, not from when the delivered reports
    /// were appended: a report taken while an insert is under way does not make a sync due
    /// early.
    ///
    /// A failed sync ends once what it left unsynced is delivered: nothing waits on it any
    /// longer, and with the insert window shorter than the sync interval (the default) no sync
    /// falls due while the database keeps up, so none would end it.
    pub(super) fn delivered_to(&mut self, ack: Position, end: Position) {
        if self.failed.is_some_and(|f| ack >= f.end) {
            self.failed = None;
        }
        let Some(since) = self.owed_since else {
            return;
        };
        if ack >= end {
            self.owed_since = None;
        } else if let Some((read_end, read_at)) = self.last_read {
            if ack >= read_end {
                self.owed_since = Some(since.max(read_at));
            }
        }
    }

    /// A sync is due: something has been owed for the interval, and a failed sync is not
    /// waiting for its retry.
    pub(super) fn is_due(&self, now: Instant) -> bool {
        self.owed_since
            .is_some_and(|t| now.duration_since(t) >= self.interval)
            && self.failed.is_none_or(|f| now >= f.retry_at)
    }

    /// The sync tried at `now` failed (`Err`) or worked, the records then ending at `end`; a
    /// failed one is tried again [`RETRY_EVERY`] later, not at the next tick.
    pub(super) fn tried<T, E>(&mut self, now: Instant, end: Position, result: &Result<T, E>) {
        self.failed = result.is_err().then(|| Failed {
            retry_at: now + RETRY_EVERY,
            end,
        });
    }

    /// The last sync tried failed, and neither a sync since nor delivery has ended that.
    pub(super) fn is_failing(&self) -> bool {
        self.failed.is_some()
    }
}

/// A sync that failed.
#[derive(Debug, Clone, Copy)]
struct Failed {
    /// When to try again.
    retry_at: Instant,
    /// Where the records ended when it failed (after the copies written again, see
    /// [`Spool::write_unsynced_again`]).
    end: Position,
}

impl Spool {
    /// `fdatasync` the open segment: everything appended before its end is then on disk.
    pub(super) fn sync(&mut self) -> Result<(), SpoolError> {
        self.syncs_total += 1;
        let end = self.segments.end();
        match self.segments.sync_data() {
            Ok(()) => {
                self.sync.synced_to(end);
                Ok(())
            }
            Err(source) => {
                self.faults.sync_failed += 1;
                Err(SpoolError::Sync {
                    path: self.segments.path(end.segment),
                    source,
                    then: self.write_unsynced_again(),
                })
            }
        }
    }

    pub(super) fn sync_if_owed(&mut self) -> Result<(), SpoolError> {
        if self.sync.is_owed(self.segments.end(), self.cursor.ack) {
            self.sync()?;
        }
        self.sync.settled();
        Ok(())
    }

    /// After a failed `fdatasync`, what it was to write is nowhere safe, and syncing the same
    /// file again would not say so: since Linux 4.13 a writeback error is reported once to
    /// each open file, and the pages that failed are marked clean, so the next sync "works"
    /// without writing them and a power cut loses them. So the reports appended since the last
    /// sync that worked and not yet delivered are read back (from the page cache, where they
    /// still are; what fails its CRC is left) and written again to a new segment, which is
    /// synced at once: a new file, whose sync says whether they are on disk. The old copies
    /// stay where they are, and may be delivered too: the database takes the second as a
    /// duplicate `_id`. What the disk cannot take, or not sync either, is kept in memory, as
    /// after any failed write. Only the open segment is read back: a segment is synced before
    /// the next is started, and the one the copies went to was synced. Returns what was done,
    /// for the error.
    fn write_unsynced_again(&mut self) -> String {
        let from = self.sync.unsynced_from(self.cursor.ack);
        let (frames, records) = match self.segments.read_back(from) {
            Ok(read) => read,
            Err(e) => {
                self.segments.writer = None;
                return format!(
                    "reading back the reports it was to write failed too ({e}): those not yet delivered are lost if power fails before the kernel writes them"
                );
            }
        };
        self.segments.writer = None;
        if records == 0 {
            return "every report it held was delivered or synced before".into();
        }
        self.syncs_total += 1;
        let written = self
            .segments
            .write(&frames, records)
            .and_then(|()| self.sync_written());
        match written {
            Ok(()) => {
                self.sync.synced_to(self.segments.end());
                format!(
                    "the {records} undelivered reports appended since the last sync that worked were written again to {}, and synced there",
                    self.segments.path(self.segments.end().segment).display()
                )
            }
            Err(e) => {
                self.segments.writer = None;
                for p in frame::payloads(&frames) {
                    let dropped = self.memory.hold(p.to_vec());
                    self.dropped_total += dropped;
                    self.dropped_from_memory_total += dropped;
                }
                format!("the {records} undelivered reports appended since the last sync that worked could not be written again and synced ({e}), and are kept in memory")
            }
        }
    }

    /// `fdatasync` the open segment, as a spool error.
    fn sync_written(&self) -> Result<(), SpoolError> {
        let end = self.segments.end();
        self.segments.sync_data().map_err(|source| SpoolError::Io {
            path: self.segments.path(end.segment),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::dir::read_cursor;
    use super::super::testutil::{opts, payload};
    use super::super::Spool;
    use super::*;
    use std::fs;

    // Owed from when the last batch was read once all it could carry is delivered, even if
    // more came meanwhile; owed from the first append still when the delivery fell short.
    #[test]
    fn a_report_taken_during_an_insert_is_owed_from_the_read() {
        let pos = |offset| Position { segment: 1, offset };
        let t0 = Instant::now();
        let mut p = SyncPolicy::new(Duration::from_secs(6), pos(0));
        p.owe_from(t0);
        p.read_up_to(pos(100), t0 + Duration::from_secs(5));
        // Delivered only part of what was read: still owed from t0.
        p.delivered_to(pos(50), pos(150));
        assert_eq!(p.owed_since, Some(t0));
        assert!(p.is_due(t0 + Duration::from_secs(6)));
        // All that was read, with one more appended since: owed from the read.
        p.delivered_to(pos(100), pos(150));
        assert_eq!(p.owed_since, Some(t0 + Duration::from_secs(5)));
        assert!(!p.is_due(t0 + Duration::from_secs(6)));
        // Everything: nothing owed.
        p.delivered_to(pos(150), pos(150));
        assert_eq!(p.owed_since, None);
    }

    // A failed sync ends once what it left unsynced is delivered, though no sync is tried
    // again: with the insert window shorter than the sync interval, none falls due while the
    // database keeps up, and the failure used to last for good, its end never said, nor the
    // next failure.
    #[test]
    fn a_failed_sync_ends_once_what_it_left_is_delivered() {
        let pos = |offset| Position { segment: 1, offset };
        let t0 = Instant::now();
        let mut p = SyncPolicy::new(Duration::from_secs(6), pos(0));
        p.owe_from(t0);
        p.tried(t0, pos(100), &Err::<(), ()>(()));
        assert!(p.is_failing());
        p.read_up_to(pos(80), t0);
        p.delivered_to(pos(80), pos(150));
        assert!(p.is_failing(), "part of it is still undelivered");
        p.read_up_to(pos(150), t0);
        p.delivered_to(pos(150), pos(200));
        assert!(!p.is_failing());
        // Not waiting for a retry any more: due when owed for the interval.
        p.owe_from(t0);
        assert!(p.is_due(t0 + Duration::from_secs(6)));
    }

    // A delivered position that cannot be written (its name is taken by a directory) is
    // tried every RETRY_EVERY, not every tick, and syncs that work meanwhile do not count as
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
        assert!(s.maintain(t0 + RETRY_EVERY).is_err());
        fs::remove_dir_all(dir.path().join("acked")).unwrap();
        assert!(s.maintain(t0 + 2 * RETRY_EVERY).unwrap());
        assert_eq!(read_cursor(dir.path()), Some(s.cursor.ack));
    }
}
