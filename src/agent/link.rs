//! The delivery loop's view of its link to the database: which changes are worth a log line.
//! Pure state: each method says what to log, and the loop logs it.

use std::time::Duration;

use tokio::time::Instant;

use crate::say_once::Latch;

/// Refused reports are logged the first time, then at most this often, with the count since.
pub(super) const REJECTED_LOG_EVERY: Duration = Duration::from_secs(60);

/// An outage beginning within this of the last one said (a link that keeps dropping) is not
/// said, nor its end, unless it lasts this long; the next one said counts those left unsaid.
pub(super) const FLAP_QUIET: Duration = Duration::from_secs(60);

/// Something about delivery worth one log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum LinkEvent {
    /// The first insert that worked, at start or after an outage.
    Connected { pending: u64 },
    /// The backlog (found at start, or piled up during an outage) is delivered.
    BacklogDrained {
        delivered: u64,
        already_present: u64,
    },
    /// The database cannot be reached; reports wait in the spool. `brief_unsaid` outages came
    /// and went since the last one said, without a line ([`FLAP_QUIET`]).
    Unavailable { error: String, brief_unsaid: u64 },
    /// Refused reports could not be saved to `rejected.jsonl`: they stay in the spool.
    RejectSaveFailing { error: String },
    /// The database refused reports (`count` since the last such line).
    Rejected { count: u64, reason: String },
}

/// Whether the database was reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Connection {
    /// No insert has been tried yet.
    Unknown,
    Up,
    Down,
}

/// What a backlog being sent has taken so far.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Backlog {
    delivered: u64,
    duplicates: u64,
    /// It was found at start, or an outage that was said added to it: its end is said.
    said: bool,
}

/// Delivery state changes, each said once.
#[derive(Debug)]
pub(super) struct Link {
    connection: Connection,
    /// When an outage was last said.
    outage_said: Option<Instant>,
    /// The outage going on began at this time, with this error, and is not said (yet).
    outage_unsaid: Option<(Instant, String)>,
    /// Outages that ended unsaid since the last one said.
    brief_unsaid: u64,
    /// A backlog is being sent: its end is said once, with what it took.
    backlog: Option<Backlog>,
    /// Refused reports cannot be saved.
    reject_failing: Latch,
    /// When refused reports were last said, and how many since, with the last one's reason.
    rejected_logged: Option<Instant>,
    rejected_unlogged: u64,
    rejected_reason: String,
}

/// What one insert that worked did.
#[derive(Debug, Clone, Copy)]
pub(super) struct Delivered<'a> {
    /// Reports the database has now, already present ones included.
    pub delivered: u64,
    pub duplicates: u64,
    /// How many it refused, and the first one's reason.
    pub rejected: Option<(u64, &'a str)>,
    /// What is left in the spool.
    pub pending: u64,
    /// The insert carried everything pending when its batch was read: what is left came
    /// during it. Over a link whose round trip is longer than the sample interval something
    /// always does, so a backlog is drained when this is true, not only when nothing is left.
    pub caught_up: bool,
}

impl Link {
    /// The link before the first insert, with `backlog_at_start` reports already spooled.
    pub(super) fn new(backlog_at_start: u64) -> Link {
        Link {
            connection: Connection::Unknown,
            outage_said: None,
            outage_unsaid: None,
            brief_unsaid: 0,
            backlog: (backlog_at_start > 0).then_some(Backlog {
                said: true,
                ..Backlog::default()
            }),
            reject_failing: Latch::default(),
            rejected_logged: None,
            rejected_unlogged: 0,
            rejected_reason: String::new(),
        }
    }

    /// An insert worked at `now`.
    pub(super) fn delivered(&mut self, d: Delivered<'_>, now: Instant) -> Vec<LinkEvent> {
        let mut events = Vec::new();
        if self.connection != Connection::Up {
            self.connection = Connection::Up;
            match self.outage_unsaid.take() {
                // A brief outage of a flapping link: its end is not said either.
                Some((began, _)) if now.saturating_duration_since(began) < FLAP_QUIET => {
                    self.brief_unsaid += 1;
                }
                // One that lasted, though no failed insert came to say so after its first
                // minute (the back-off had grown): said now, with its end.
                Some((_, error)) => {
                    events.push(self.said_outage(error, now));
                    events.push(LinkEvent::Connected { pending: d.pending });
                }
                None => events.push(LinkEvent::Connected { pending: d.pending }),
            }
        }
        if let Some(b) = &mut self.backlog {
            b.delivered += d.delivered;
            b.duplicates += d.duplicates;
            if d.caught_up {
                if b.said {
                    events.push(LinkEvent::BacklogDrained {
                        delivered: b.delivered,
                        already_present: b.duplicates,
                    });
                }
                self.backlog = None;
            }
        }
        if let Some((count, reason)) = d.rejected {
            self.rejected_unlogged += count;
            reason.clone_into(&mut self.rejected_reason);
        }
        // Those refused since the last line are said once a minute has passed, with or without
        // a refusal in this insert: refusals that stop are still counted in the log.
        if self.rejected_unlogged > 0
            && self
                .rejected_logged
                .is_none_or(|t| now.saturating_duration_since(t) >= REJECTED_LOG_EVERY)
        {
            events.push(LinkEvent::Rejected {
                count: self.rejected_unlogged,
                reason: std::mem::take(&mut self.rejected_reason),
            });
            self.rejected_logged = Some(now);
            self.rejected_unlogged = 0;
        }
        events
    }

    /// An insert could not reach the database at `now`: what piles up from now is a backlog
    /// (added to one still being sent). Said when the outage begins, unless one was said less
    /// than [`FLAP_QUIET`] ago; then only once it has lasted that long (at a failed insert, or
    /// at its end).
    pub(super) fn unavailable(&mut self, error: &str, now: Instant) -> Option<LinkEvent> {
        let quiet_since = |t: Instant| now.saturating_duration_since(t) < FLAP_QUIET;
        if self.connection == Connection::Down {
            self.outage_unsaid
                .take_if(|(began, _)| !quiet_since(*began))?;
        } else {
            self.connection = Connection::Down;
            self.backlog.get_or_insert_default();
            if self.outage_said.is_some_and(quiet_since) {
                self.outage_unsaid = Some((now, error.to_owned()));
                return None;
            }
        }
        Some(self.said_outage(error.to_owned(), now))
    }

    /// An outage said at `now`: its backlog's end will be said too.
    fn said_outage(&mut self, error: String, now: Instant) -> LinkEvent {
        self.outage_said = Some(now);
        if let Some(b) = &mut self.backlog {
            b.said = true;
        }
        LinkEvent::Unavailable {
            error,
            brief_unsaid: std::mem::take(&mut self.brief_unsaid),
        }
    }

    /// Refused reports could not be saved (they stay in the spool and are sent again).
    pub(super) fn reject_save_failed(&mut self, error: &str) -> Option<LinkEvent> {
        self.reject_failing
            .raise()
            .then(|| LinkEvent::RejectSaveFailing {
                error: error.to_owned(),
            })
    }

    /// Refused reports were saved. Not said: the refusal itself is.
    pub(super) fn reject_saved(&mut self) {
        self.reject_failing.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(delivered: u64, pending: u64) -> Delivered<'static> {
        Delivered {
            delivered,
            duplicates: 0,
            rejected: None,
            pending,
            caught_up: pending == 0,
        }
    }

    // The first insert says "connected"; later ones say nothing, and an empty spool at start
    // has no backlog to report.
    #[test]
    fn connected_is_said_once() {
        let t0 = Instant::now();
        let mut link = Link::new(0);
        assert_eq!(
            link.delivered(ok(1, 0), t0),
            [LinkEvent::Connected { pending: 0 }]
        );
        assert!(link.delivered(ok(1, 0), t0).is_empty());
    }

    // A backlog found at start is reported once, when the spool is empty, with what it took.
    #[test]
    fn a_backlog_at_start_is_reported_when_drained() {
        let t0 = Instant::now();
        let mut link = Link::new(30);
        let mut first = ok(10, 20);
        first.duplicates = 2;
        assert_eq!(
            link.delivered(first, t0),
            [LinkEvent::Connected { pending: 20 }]
        );
        assert_eq!(
            link.delivered(ok(20, 0), t0),
            [LinkEvent::BacklogDrained {
                delivered: 30,
                already_present: 2
            }]
        );
        assert!(link.delivered(ok(1, 0), t0).is_empty());
    }

    // Over a slow link a report arrives during every insert, so the spool is never empty when
    // one ends: the backlog is drained once an insert carried all that was pending at its read.
    #[test]
    fn a_backlog_is_drained_once_an_insert_carries_all_there_was() {
        let t0 = Instant::now();
        let mut link = Link::new(30);
        link.delivered(ok(29, 1), t0);
        let mut last = ok(1, 1);
        last.caught_up = true;
        assert_eq!(
            link.delivered(last, t0),
            [LinkEvent::BacklogDrained {
                delivered: 30,
                already_present: 0
            }]
        );
    }

    // An outage is said once however many inserts fail; what piles up meanwhile is a backlog,
    // counted from the outage, and the reconnection is said again.
    #[test]
    fn an_outage_is_said_once_and_starts_a_backlog() {
        let t0 = Instant::now();
        let mut link = Link::new(0);
        link.delivered(ok(5, 0), t0);
        assert_eq!(
            link.unavailable("refused", t0),
            Some(LinkEvent::Unavailable {
                error: "refused".into(),
                brief_unsaid: 0
            })
        );
        assert_eq!(link.unavailable("refused", t0 + 600 * SECOND), None);
        assert_eq!(
            link.delivered(ok(4, 0), t0),
            [
                LinkEvent::Connected { pending: 0 },
                LinkEvent::BacklogDrained {
                    delivered: 4,
                    already_present: 0
                }
            ]
        );
        // Failing before the first success is an outage too.
        assert!(Link::new(0).unavailable("x", t0).is_some());
    }

    const SECOND: Duration = Duration::from_secs(1);

    fn said_unavailable(e: Option<LinkEvent>) -> Option<u64> {
        match e {
            Some(LinkEvent::Unavailable { brief_unsaid, .. }) => Some(brief_unsaid),
            _ => None,
        }
    }

    // A link that keeps dropping: outages beginning within a minute of the last one said are
    // not said, nor their ends; the next one said counts them.
    #[test]
    fn a_flapping_link_is_said_once_a_minute() {
        let t0 = Instant::now();
        let mut link = Link::new(0);
        link.delivered(ok(1, 0), t0);
        assert_eq!(said_unavailable(link.unavailable("reset", t0)), Some(0));
        assert_eq!(
            link.delivered(ok(3, 0), t0 + 2 * SECOND).len(),
            2,
            "connected, backlog drained"
        );
        for s in [10, 30, 50] {
            assert_eq!(link.unavailable("reset", t0 + s * SECOND), None);
            assert!(link.delivered(ok(3, 0), t0 + (s + 2) * SECOND).is_empty());
        }
        assert_eq!(
            said_unavailable(link.unavailable("reset", t0 + 70 * SECOND)),
            Some(3)
        );
        assert_eq!(
            link.delivered(ok(3, 0), t0 + 72 * SECOND)[0],
            LinkEvent::Connected { pending: 0 }
        );
    }

    // A brief outage while the backlog of one that was said is still being sent: that
    // backlog's end is still said, counting what came after.
    #[test]
    fn a_brief_outage_keeps_the_said_backlog() {
        let t0 = Instant::now();
        let mut link = Link::new(0);
        link.unavailable("reset", t0);
        assert_eq!(
            link.delivered(ok(10, 5), t0 + SECOND),
            [LinkEvent::Connected { pending: 5 }]
        );
        assert_eq!(link.unavailable("reset", t0 + 2 * SECOND), None);
        assert!(link.delivered(ok(5, 2), t0 + 3 * SECOND).is_empty());
        assert_eq!(
            link.delivered(ok(2, 0), t0 + 4 * SECOND),
            [LinkEvent::BacklogDrained {
                delivered: 17,
                already_present: 0
            }]
        );
    }

    // An unsaid outage that lasted a minute but ended before a failed insert could say so
    // (the back-off had grown) is said at its end, with its end and its backlog.
    #[test]
    fn an_unsaid_outage_that_lasted_is_said_at_its_end() {
        let t0 = Instant::now();
        let mut link = Link::new(0);
        link.unavailable("reset", t0);
        link.delivered(ok(1, 0), t0 + SECOND);
        assert_eq!(link.unavailable("refused", t0 + 10 * SECOND), None);
        assert_eq!(link.unavailable("refused", t0 + 40 * SECOND), None);
        let events = link.delivered(ok(100, 0), t0 + 90 * SECOND);
        assert_eq!(
            events,
            [
                LinkEvent::Unavailable {
                    error: "refused".into(),
                    brief_unsaid: 0
                },
                LinkEvent::Connected { pending: 0 },
                LinkEvent::BacklogDrained {
                    delivered: 100,
                    already_present: 0
                }
            ]
        );
    }

    // An outage left unsaid for beginning soon after the last is said once it has lasted a
    // minute, and so is its end.
    #[test]
    fn an_unsaid_outage_is_said_once_it_lasts() {
        let t0 = Instant::now();
        let mut link = Link::new(0);
        link.unavailable("reset", t0);
        link.delivered(ok(1, 0), t0 + SECOND);
        assert_eq!(link.unavailable("reset", t0 + 20 * SECOND), None);
        assert_eq!(link.unavailable("reset", t0 + 50 * SECOND), None);
        assert_eq!(
            said_unavailable(link.unavailable("reset", t0 + 80 * SECOND)),
            Some(0)
        );
        assert_eq!(link.unavailable("reset", t0 + 200 * SECOND), None);
        assert_eq!(
            link.delivered(ok(1, 0), t0 + 210 * SECOND)[0],
            LinkEvent::Connected { pending: 0 }
        );
    }

    // Refused reports: said the first time, then at most once a minute with the count since.
    #[test]
    fn refusals_are_said_at_most_once_a_minute() {
        let t0 = Instant::now();
        let mut link = Link::new(0);
        link.delivered(ok(1, 0), t0);
        let refused = |count| Delivered {
            rejected: Some((count, "E121")),
            ..ok(count, 0)
        };
        let said = |e: Vec<LinkEvent>| {
            e.into_iter().find_map(|e| match e {
                LinkEvent::Rejected { count, .. } => Some(count),
                _ => None,
            })
        };
        assert_eq!(said(link.delivered(refused(2), t0)), Some(2));
        assert_eq!(
            said(link.delivered(refused(3), t0 + Duration::from_secs(30))),
            None
        );
        assert_eq!(
            said(link.delivered(refused(1), t0 + REJECTED_LOG_EVERY)),
            Some(4)
        );
        // Refusals that stop are said with the first insert a minute after the last line.
        assert_eq!(said(link.delivered(refused(5), t0 + 70 * SECOND)), None);
        assert_eq!(said(link.delivered(ok(3, 0), t0 + 100 * SECOND)), None);
        assert_eq!(said(link.delivered(ok(3, 0), t0 + 120 * SECOND)), Some(5));
        assert_eq!(said(link.delivered(ok(3, 0), t0 + 200 * SECOND)), None);
    }

    // A failure to save refused reports is said once until a save works again.
    #[test]
    fn a_failing_save_is_said_once_per_failure() {
        let mut link = Link::new(0);
        assert!(link.reject_save_failed("EROFS").is_some());
        assert!(link.reject_save_failed("EROFS").is_none());
        link.reject_saved();
        assert!(link.reject_save_failed("EROFS").is_some());
    }
}
