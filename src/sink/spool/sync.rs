//! The sync policy: *sync what is still owed*, at most every `sync_interval`, and only while
//! some appended record is neither delivered nor synced (see the module docs of
//! [`super`]). Pure state; the spool does the syncing.

use std::time::{Duration, Instant};

use super::{Position, RETRY_EVERY};

/// What is owed a sync, and since when.
#[derive(Debug)]
pub(super) struct SyncPolicy {
    /// Zero syncs every append.
    interval: Duration,
    /// Appended but neither synced nor known to be delivered, since this instant.
    pub(super) owed_since: Option<Instant>,
    /// Everything before this was synced.
    synced: Position,
    /// A sync failed: when to try it again.
    retry_at: Option<Instant>,
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
            retry_at: None,
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
    pub(super) fn delivered_to(&mut self, ack: Position, end: Position) {
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
            && self.retry_at.is_none_or(|t| now >= t)
    }

    /// The sync tried at `now` failed (`Err`) or worked; a failed one is tried again
    /// [`RETRY_EVERY`] later, not at the next tick.
    pub(super) fn tried<T, E>(&mut self, now: Instant, result: &Result<T, E>) {
        self.retry_at = result.is_err().then(|| now + RETRY_EVERY);
    }

    /// The last sync tried failed.
    pub(super) fn is_failing(&self) -> bool {
        self.retry_at.is_some()
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
