//! The delivery loop: the spool to the database, in order, in batches, with back-off while the
//! database cannot be reached.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tracing::{error, info, warn};

use super::link::{Delivered, Link, LinkEvent};
use super::{lock, rejected, AgentError, Counters, Mode, Telemetry};
use crate::clock::now_ms;
use crate::sink::spool::{Batch, BatchSource, Spool};
use crate::sink::{InsertError, InsertOutcome, Inserter};

/// Most reports per `insert_many` when draining a backlog.
pub const BATCH_MAX: usize = 10_000;
/// The fewest a backlog's batch is cut down to after inserts that timed out (see
/// [`Deliverer::batch_max`]).
const BATCH_FLOOR: usize = 100;
/// Up to this many pending reports, all written to the segment file, are read on the
/// runtime's thread (see [`Deliverer::read_batch`]): at the default 500 ms an insert window
/// holds ten.
pub const INLINE_READ_MAX: u64 = 64;
/// How early a sample may come and still close the insert window: samples fall on a fixed grid,
/// so the one that ends a window of a whole number of intervals is due exactly as it ends, give
/// or take the timer's jitter.
const WINDOW_SLACK: Duration = Duration::from_millis(25);

/// What the delivery loop keeps between inserts.
struct Deliverer<I> {
    spool: Arc<Mutex<Spool>>,
    inserter: I,
    mode: watch::Receiver<Mode>,
    counters: Arc<Mutex<Counters>>,
    link: Link,
    backoff_builder: ExponentialBuilder,
    backoff: ExponentialBackoff,
    last_insert: Option<Instant>,
    /// `--insert-every`: reports taken within this window of the last insert wait for the
    /// next one.
    insert_every: Duration,
    /// The one insert of what is pending that a stop gets has been made.
    flushed_at_stop: bool,
    telemetry: Option<Telemetry>,
    /// When the last batch was read (ms since the Unix epoch), and whether it took every
    /// report pending then: if so, what is left once it is acknowledged was taken since.
    read_at_ms: i64,
    read_all: bool,
    /// Most reports in the next batch. At most half a batch of more than [`BATCH_FLOOR`] that
    /// timed out, and grown by a quarter by each insert that works, up to [`BATCH_MAX`]: on a
    /// link too slow to carry a full batch within the insert's timeout, a backlog sent whole
    /// would time out and be sent again whole, and never drain.
    batch_max: usize,
    /// Refused reports put back at the spool's end by the last insert, their save having
    /// failed (0 when it worked).
    refused_unsaved: u64,
}

/// What came of one insert, for the loop.
enum Step {
    /// Go on with the next batch.
    Next,
    /// A stop was asked for.
    Stop,
}

/// What the delivery loop is given.
pub(super) struct DeliveryParts<I> {
    pub(super) spool: Arc<Mutex<Spool>>,
    pub(super) inserter: I,
    pub(super) mode: watch::Receiver<Mode>,
    /// Woken by each append while `idle` says delivery waits for one.
    pub(super) notify: Arc<Notify>,
    pub(super) idle: Arc<AtomicBool>,
    pub(super) backlog_at_start: u64,
    pub(super) counters: Arc<Mutex<Counters>>,
    pub(super) insert_every: Duration,
    pub(super) telemetry: Option<Telemetry>,
}

/// Deliver the spool until the mode says stop (or, draining, until it is empty).
///
/// In the steady state an insert carries what was taken within `insert_every` of the one
/// before: delivery waits for the sample that ends the window, so the insert goes out in the
/// same wake-up as that sample, with no timer of its own. A backlog (a full batch) and
/// `--count`'s drain are never held back, and a stop sends what is pending once more if the
/// database was answering.
pub(super) async fn deliver<I: Inserter>(parts: DeliveryParts<I>) -> Result<(), AgentError> {
    let DeliveryParts {
        spool,
        inserter,
        mode,
        notify,
        idle,
        backlog_at_start,
        counters,
        insert_every,
        telemetry,
    } = parts;
    let backoff_builder =
        crate::retry::exponential(Duration::from_millis(500), Duration::from_secs(60));
    let mut d = Deliverer {
        spool,
        inserter,
        mode,
        counters,
        // A backlog is what the spool held at start or what piles up during an outage.
        link: Link::new(backlog_at_start),
        backoff: backoff_builder.build(),
        backoff_builder,
        last_insert: None,
        insert_every,
        flushed_at_stop: false,
        telemetry,
        read_at_ms: 0,
        read_all: false,
        batch_max: BATCH_MAX,
        refused_unsaved: 0,
    };
    loop {
        let m = *d.mode.borrow();
        if m == Mode::Stop && !d.flush_at_stop() {
            return Ok(());
        }
        // Say we may go idle before looking, so a report appended after the look wakes us.
        idle.store(true, Ordering::SeqCst);
        // No timer of its own: every sample wakes delivery while it waits, and a stuck sample
        // stops the watchdog's pings, so systemd restarts the agent (the spool keeps the window).
        if m == Mode::Run && d.window_open() {
            if !wait_for_work(&notify, &mut d.mode).await {
                return Ok(());
            }
            continue;
        }
        // The window closes now, whatever reading the batch takes.
        let closed = Instant::now();
        let Some(batch) = d.read_batch().await?.filter(|b| !b.records.is_empty()) else {
            // Draining, or the insert a stop gets: nothing is left to send.
            if m != Mode::Run || !wait_for_work(&notify, &mut d.mode).await {
                return Ok(());
            }
            continue;
        };
        idle.store(false, Ordering::SeqCst);
        d.last_insert = Some(closed);
        if let Step::Stop = d.insert(batch).await? {
            return Ok(());
        }
        // A drain ends when all that is left is refused reports that cannot be saved: they stay
        // in the spool for the next start, rather than coming round for ever.
        if m == Mode::Drain
            && d.refused_unsaved > 0
            && lock(&d.spool).pending() <= d.refused_unsaved
        {
            return Ok(());
        }
    }
}

/// Wait for a sample or a change of mode; false when the mode can no longer change (the agent
/// is stopping without having said so).
async fn wait_for_work(notify: &Notify, mode: &mut watch::Receiver<Mode>) -> bool {
    tokio::select! {
        () = notify.notified() => true,
        changed = mode.changed() => changed.is_ok(),
    }
}

impl<I: Inserter> Deliverer<I> {
    /// Whether the insert window is open: reports are pending, the last insert started less
    /// than `insert_every` ago, and they are not a full batch.
    fn window_open(&self) -> bool {
        let Some(last) = self.last_insert else {
            return false;
        };
        if Instant::now() + WINDOW_SLACK >= last + self.insert_every {
            return false;
        }
        let pending = lock(&self.spool).pending() as usize;
        pending > 0 && pending < self.batch_max
    }

    /// A stop was asked for: whether to make one more insert of what is pending first. Only
    /// once, and only while the database answers; what is not sent stays in the spool.
    fn flush_at_stop(&mut self) -> bool {
        if self.flushed_at_stop {
            return false;
        }
        self.flushed_at_stop = true;
        lock(&self.counters).connected == Some(true) && lock(&self.spool).pending() > 0
    }

    /// The next batch, or `None` when the spool is empty. An insert window's reports (up to
    /// [`INLINE_READ_MAX`], all written already) are read here: they were written moments ago
    /// and are copied from the page cache, which costs less than the two thread switches of a
    /// blocking thread. More, or reports still waiting for their group (writing them may roll
    /// the segment over, which syncs), are read on a blocking thread.
    /// (`&mut`: a `Deliverer` is `Send`, not `Sync`.)
    async fn read_batch(&mut self) -> Result<Option<Batch>, AgentError> {
        let (batch, pending) = {
            let mut sp = lock(&self.spool);
            let pending = sp.pending();
            if pending == 0 {
                return Ok(None);
            }
            let inline = (pending <= INLINE_READ_MAX && sp.unwritten() == 0)
                .then(|| sp.next_batch(self.batch_max));
            (inline, pending)
        };
        let batch = match batch {
            Some(read) => read?,
            None => {
                let (sp, max) = (self.spool.clone(), self.batch_max);
                tokio::task::spawn_blocking(move || lock(&sp).next_batch(max))
                    .await
                    .map_err(|e| AgentError::Join(e.to_string()))??
            }
        };
        for problem in &batch.problems {
            error!("{problem}");
        }
        if let BatchSource::Disk { damaged, .. } = batch.source {
            if damaged > 0 {
                error!(
                    bytes = damaged,
                    "skipped bad data while reading the spool; the readings in it are lost, the rest are kept. The SD card may be failing"
                );
            }
        }
        // The batch starts with the oldest report still unsent: its age is a metric, and what
        // `status` says (one look into one report an insert).
        self.read_at_ms = now_ms();
        self.read_all = batch.records.len() as u64 >= pending;
        if let Some(t) = batch.records.first().and_then(|r| recorded_at(r)) {
            lock(&self.counters).oldest_unsent_ms = Some(t);
        }
        Ok(Some(batch))
    }

    /// Insert one batch and account for what came of it.
    async fn insert(&mut self, batch: Batch) -> Result<Step, AgentError> {
        let started = std::time::Instant::now();
        let result = self.inserter.insert(&batch.records).await;
        if let Some(t) = &self.telemetry {
            t.observe_insert(started.elapsed());
        }
        match result {
            Ok(outcome) => self.inserted(batch, outcome).await,
            Err(InsertError::Fatal(msg)) => {
                lock(&self.spool).rewind();
                Err(AgentError::Fatal(msg))
            }
            Err(InsertError::TimedOut(msg)) => {
                // A large batch was perhaps too much for the link to carry in time: send half
                // next. A small one that hung (the Wi-Fi went) says nothing about its speed.
                let sent = batch.records.len();
                if sent > BATCH_FLOOR {
                    self.batch_max = self.batch_max.min(sent / 2).max(BATCH_FLOOR);
                }
                Ok(self.unavailable(msg).await)
            }
            Err(InsertError::Unavailable(msg)) => Ok(self.unavailable(msg).await),
        }
    }

    /// The insert did not reach the database: its reports are handed out again after the
    /// back-off (only: the window spaces inserts that worked).
    async fn unavailable(&mut self, msg: String) -> Step {
        lock(&self.spool).rewind();
        self.last_insert = None;
        if let Some(e) = self.link.unavailable(&msg, Instant::now()) {
            log(e);
        }
        {
            let mut c = lock(&self.counters);
            c.connected = Some(false);
            c.last_error = Some(msg);
        }
        self.back_off().await
    }

    /// The database took the batch, perhaps refusing some reports: those are saved to
    /// `rejected.jsonl` before the spool lets go of them. When they cannot be (a full or
    /// read-only disk), they go back to the spool's end, to be sent, refused and saved again
    /// later, and the rest of the batch is delivered: kept at its head, the batch came back
    /// first every time, and nothing behind it reached the database while the disk stayed so.
    async fn inserted(&mut self, batch: Batch, outcome: InsertOutcome) -> Result<Step, AgentError> {
        let (pending, saved) = if outcome.rejected.is_empty() {
            let mut sp = lock(&self.spool);
            sp.ack(&batch);
            (sp.pending(), true)
        } else {
            let (pending, saved) = self.settle_refused(batch, &outcome).await?;
            match &saved {
                Ok(()) => self.link.reject_saved(),
                Err(e) => {
                    if let Some(e) = self.link.reject_save_failed(&e.to_string()) {
                        log(e);
                    }
                }
            }
            (pending, saved.is_ok())
        };
        self.refused_unsaved = if saved {
            0
        } else {
            outcome.rejected.len() as u64
        };
        self.backoff = self.backoff_builder.build();
        self.batch_max = (self.batch_max + self.batch_max / 4).min(BATCH_MAX);
        let rejected = if saved { outcome.rejected.len() } else { 0 };
        {
            let mut c = lock(&self.counters);
            // Left after a batch that took only the head of a backlog: older than the read,
            // and the batch's first report says so more nearly until the next read.
            if pending == 0 {
                c.oldest_unsent_ms = None;
            } else if self.read_all {
                c.oldest_unsent_ms = Some(self.read_at_ms);
            }
            c.delivered += outcome.inserted + outcome.duplicates;
            c.duplicates += outcome.duplicates;
            c.rejected += rejected as u64;
            c.last_insert_ms = Some(now_ms());
            c.connected = Some(true);
            c.last_error = None;
        }
        let delivered = Delivered {
            delivered: outcome.inserted + outcome.duplicates,
            duplicates: outcome.duplicates,
            rejected: outcome
                .rejected
                .first()
                .filter(|_| saved)
                .map(|(_, reason)| (rejected as u64, reason.as_str())),
            pending,
            caught_up: pending == 0 || (self.read_all && saved),
        };
        for e in self.link.delivered(delivered, Instant::now()) {
            log(e);
        }
        if !saved {
            self.pause_before_refused_again().await;
        }
        Ok(Step::Next)
    }

    /// Write the refused reports down, then let the spool go of the batch; if they cannot be
    /// written, append them again at the spool's end. Off the runtime (a synced file write, and
    /// an append that may roll a segment over and sync). What the spool holds after.
    async fn settle_refused(
        &mut self,
        batch: Batch,
        outcome: &InsertOutcome,
    ) -> Result<(u64, std::io::Result<()>), AgentError> {
        let spool = self.spool.clone();
        let refused = outcome.rejected.clone();
        tokio::task::spawn_blocking(move || {
            let dir = lock(&spool).dir().to_owned();
            let saved = rejected::save(&dir, &batch, &refused);
            let mut sp = lock(&spool);
            // Acknowledged first, under the same lock: an append may drop the oldest reports
            // to stay under the cap, and must not count this batch's among them.
            sp.ack(&batch);
            if saved.is_err() {
                let again: Vec<Vec<u8>> = refused
                    .iter()
                    .filter_map(|(i, _)| batch.records.get(*i).cloned())
                    .collect();
                sp.append_again(&again, std::time::Instant::now());
            }
            (sp.pending(), saved)
        })
        .await
        .map_err(|e| AgentError::Join(e.to_string()))
    }

    /// Refused reports that could not be saved come round again after an insert window (at
    /// least a second: with no window they would be refused in a loop while nothing else is
    /// pending). A stop asked for meanwhile ends the wait, and still gets its last insert.
    async fn pause_before_refused_again(&mut self) {
        if *self.mode.borrow() == Mode::Drain {
            // Nothing new is taken while draining: what is left goes at once.
            return;
        }
        let wait = self.insert_every.max(Duration::from_secs(1));
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = self.mode.wait_for(|m| *m == Mode::Stop) => {}
        }
    }

    /// Wait out the next back-off delay; `Step::Stop` if a stop was asked for meanwhile.
    async fn back_off(&mut self) -> Step {
        let delay = self.backoff.next().unwrap_or(Duration::from_secs(60));
        tokio::select! {
            () = tokio::time::sleep(delay) => Step::Next,
            _ = self.mode.wait_for(|m| *m == Mode::Stop) => Step::Stop,
        }
    }
}

/// One line for a change in delivery.
fn log(event: LinkEvent) {
    match event {
        LinkEvent::Connected { pending } => info!(pending, "connected to MongoDB"),
        LinkEvent::BacklogDrained {
            delivered,
            already_present,
        } => info!(delivered, already_present, "backlog drained"),
        LinkEvent::Unavailable {
            error,
            brief_unsaid: 0,
        } => {
            warn!(error = %error, "MongoDB unavailable; reports are kept in the spool and retried with back-off")
        }
        LinkEvent::Unavailable {
            error,
            brief_unsaid,
        } => {
            warn!(error = %error, brief_outages_unsaid = brief_unsaid, "MongoDB unavailable; reports are kept in the spool and retried with back-off (the link keeps dropping: outages within a minute of the last one said are not said)")
        }
        LinkEvent::RejectSaveFailing { error } => {
            error!(error = %error, "cannot save reports the database refused to rejected.jsonl in the spool directory (disk full or read-only?); the others are delivered, and the refused ones kept in the spool and tried again")
        }
        LinkEvent::Rejected { count, reason } => {
            error!(count, reason = %reason, "the database refused reports; saved to rejected.jsonl in the spool directory")
        }
    }
}

/// A spooled report's `recordedAt` (ms since the Unix epoch).
fn recorded_at(record: &[u8]) -> Option<i64> {
    let doc = mongodb::bson::RawDocument::from_bytes(record).ok()?;
    let t = doc.get_datetime(crate::report::field::RECORDED_AT).ok()?;
    Some(t.timestamp_millis())
}
