//! The sampling loop's view of the spool's health: which changes are worth a log line, each
//! once when it begins and once when it ends. Pure state: each method says what to log, and
//! the loop logs it.

use crate::say_once::Latch;
use crate::sink::spool::{AppendOutcome, SpoolError};

/// Something about the spool worth one log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum SpoolEvent {
    /// Syncing the spool or writing its delivered position failed.
    MaintainFailing { error: String },
    /// Both work again.
    MaintainRecovered,
    /// The held readings' spool (see [`crate::clock`]) cannot be written.
    HeldFailing { error: String },
    /// It can be written again.
    HeldRecovered,
    /// The spool cannot be written: new reports are kept in memory.
    DiskFailing { error: String },
    /// It can be written again; `moved` reports went from memory to disk.
    DiskRecovered { moved: u64 },
    /// The spool is at its cap: the oldest undelivered reports are dropped.
    Full,
    /// Below its cap again, with delivery working; `dropped` by the cap so far.
    BelowCap { dropped: u64 },
    /// The spool still cannot be written and the reports kept in memory are at their limit:
    /// the oldest of them are dropped.
    MemoryFull,
    /// Reports are written to disk again, or none are dropped from memory any longer (delivery
    /// takes them); `dropped` from memory so far.
    MemoryBelowMax { dropped: u64 },
}

/// Reports dropped so far, as the agent counts them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Dropped {
    /// By the spool's cap.
    pub(super) by_cap: u64,
    /// From memory, while the disk could not be written.
    pub(super) from_memory: u64,
}

/// The spool's conditions, each said once per change.
#[derive(Debug, Default)]
pub(super) struct SpoolLog {
    disk_failing: Latch,
    full: Latch,
    /// The memory queue drops reports.
    memory_full: Latch,
    /// The held readings' spool could not be written.
    held_failing: Latch,
    /// Syncing the spool or writing its delivered position failed.
    maintain_failing: Latch,
}

impl SpoolLog {
    /// The spool's maintenance (sync, delivered position) gave `maintain`.
    pub(super) fn maintained(&mut self, maintain: &Result<bool, SpoolError>) -> Option<SpoolEvent> {
        match maintain {
            Err(e) => self
                .maintain_failing
                .raise()
                .then(|| SpoolEvent::MaintainFailing {
                    error: e.to_string(),
                }),
            Ok(true) => self
                .maintain_failing
                .clear()
                .then_some(SpoolEvent::MaintainRecovered),
            Ok(false) => None,
        }
    }

    /// A report went to the held readings' spool. Only its disk errors matter: it has no cap,
    /// and what it holds is in memory too.
    pub(super) fn held_written(
        &mut self,
        append: &AppendOutcome,
        maintain: &Result<bool, SpoolError>,
    ) -> Option<SpoolEvent> {
        let error = append
            .disk_error
            .clone()
            .or_else(|| maintain.as_ref().err().map(ToString::to_string));
        match error {
            Some(error) => self
                .held_failing
                .raise()
                .then_some(SpoolEvent::HeldFailing { error }),
            None if append.wrote => self
                .held_failing
                .clear()
                .then_some(SpoolEvent::HeldRecovered),
            None => None,
        }
    }

    /// A report was appended to the spool. `dropped` counts every report dropped so far,
    /// this append's included; `connected` says whether delivery works (only then can the
    /// spool be said to be below its cap for good).
    pub(super) fn appended(
        &mut self,
        append: &AppendOutcome,
        connected: bool,
        dropped: Dropped,
    ) -> Vec<SpoolEvent> {
        let mut events = Vec::new();
        match &append.disk_error {
            Some(e) if self.disk_failing.raise() => {
                events.push(SpoolEvent::DiskFailing { error: e.clone() });
            }
            None if append.wrote && self.disk_failing.clear() => {
                events.push(SpoolEvent::DiskRecovered {
                    moved: append.recovered_from_memory,
                });
            }
            _ => {}
        }
        if append.dropped_from_memory > 0 {
            if self.memory_full.raise() {
                events.push(SpoolEvent::MemoryFull);
            }
        } else if append.wrote && self.memory_full.clear() {
            // A write that dropped nothing: to disk, or into a queue below its limit.
            events.push(SpoolEvent::MemoryBelowMax {
                dropped: dropped.from_memory,
            });
        }
        if append.dropped > 0 {
            if self.full.raise() {
                events.push(SpoolEvent::Full);
            }
        } else if connected && self.full.clear() {
            events.push(SpoolEvent::BelowCap {
                dropped: dropped.by_cap,
            });
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written() -> AppendOutcome {
        AppendOutcome {
            wrote: true,
            ..Default::default()
        }
    }

    fn failed() -> AppendOutcome {
        AppendOutcome {
            wrote: true,
            disk_error: Some("No space left on device".into()),
            ..Default::default()
        }
    }

    fn none() -> Dropped {
        Dropped::default()
    }

    fn by_cap(n: u64) -> Dropped {
        Dropped {
            by_cap: n,
            from_memory: 0,
        }
    }

    fn io_error() -> SpoolError {
        SpoolError::Io {
            path: "/spool".into(),
            source: std::io::Error::other("EIO"),
        }
    }

    // A failing disk is said once, and its recovery once, with what moved from memory; an
    // append that wrote nothing says nothing about the disk.
    #[test]
    fn a_failing_disk_is_said_once_each_way() {
        let mut log = SpoolLog::default();
        assert_eq!(log.appended(&written(), true, none()), []);
        assert!(matches!(
            &log.appended(&failed(), true, none())[..],
            [SpoolEvent::DiskFailing { .. }]
        ));
        assert_eq!(log.appended(&failed(), true, none()), []);
        assert_eq!(log.appended(&AppendOutcome::default(), true, none()), []);
        let back = AppendOutcome {
            recovered_from_memory: 7,
            ..written()
        };
        assert_eq!(
            log.appended(&back, true, none()),
            [SpoolEvent::DiskRecovered { moved: 7 }]
        );
        assert_eq!(log.appended(&written(), true, none()), []);
    }

    // A full spool is said once; below the cap again is said only while delivery works, with
    // the count so far.
    #[test]
    fn a_full_spool_is_said_once_and_its_end_when_connected() {
        let mut log = SpoolLog::default();
        let dropping = AppendOutcome {
            dropped: 2,
            ..written()
        };
        assert_eq!(log.appended(&dropping, true, by_cap(2)), [SpoolEvent::Full]);
        assert_eq!(log.appended(&dropping, true, by_cap(4)), []);
        assert_eq!(log.appended(&written(), false, by_cap(4)), []);
        assert_eq!(
            log.appended(&written(), true, by_cap(4)),
            [SpoolEvent::BelowCap { dropped: 4 }]
        );
        assert_eq!(log.appended(&written(), true, by_cap(4)), []);
    }

    // A full memory queue is said once, as itself and not as the cap, and its end once a
    // write drops nothing (an append that wrote nothing says nothing), with the count so far.
    #[test]
    fn a_full_memory_queue_is_said_once_and_not_as_the_cap() {
        let mut log = SpoolLog::default();
        let from_memory = |n| Dropped {
            by_cap: 0,
            from_memory: n,
        };
        let dropping = AppendOutcome {
            dropped_from_memory: 2,
            ..failed()
        };
        assert!(matches!(
            &log.appended(&dropping, false, from_memory(2))[..],
            [SpoolEvent::DiskFailing { .. }, SpoolEvent::MemoryFull]
        ));
        assert_eq!(log.appended(&dropping, false, from_memory(4)), []);
        assert_eq!(
            log.appended(&AppendOutcome::default(), false, from_memory(4)),
            []
        );
        // Delivery took some out of memory: the next write fails but drops nothing.
        assert_eq!(
            log.appended(&failed(), false, from_memory(4)),
            [SpoolEvent::MemoryBelowMax { dropped: 4 }]
        );
        assert_eq!(log.appended(&failed(), true, from_memory(4)), []);
    }

    // Failing maintenance is said once; its end only when nothing fails any longer.
    #[test]
    fn failing_maintenance_is_said_once_each_way() {
        let mut log = SpoolLog::default();
        assert_eq!(log.maintained(&Ok(true)), None);
        assert!(matches!(
            log.maintained(&Err(io_error())),
            Some(SpoolEvent::MaintainFailing { .. })
        ));
        assert_eq!(log.maintained(&Err(io_error())), None);
        assert_eq!(log.maintained(&Ok(false)), None);
        assert_eq!(
            log.maintained(&Ok(true)),
            Some(SpoolEvent::MaintainRecovered)
        );
        assert_eq!(log.maintained(&Ok(true)), None);
    }

    // The held readings' spool: an append or a maintenance error is said once; it is over
    // once a report is written without either.
    #[test]
    fn the_held_spool_failing_is_said_once_each_way() {
        let mut log = SpoolLog::default();
        assert!(matches!(
            log.held_written(&written(), &Err(io_error())),
            Some(SpoolEvent::HeldFailing { .. })
        ));
        assert_eq!(log.held_written(&failed(), &Ok(true)), None);
        assert_eq!(log.held_written(&AppendOutcome::default(), &Ok(true)), None);
        assert_eq!(
            log.held_written(&written(), &Ok(true)),
            Some(SpoolEvent::HeldRecovered)
        );
    }
}
