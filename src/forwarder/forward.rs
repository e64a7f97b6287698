//! The [`Forwarder`]: what happens between the change stream and the target. Events fill a
//! batch within the target's limits; a full batch is put (resent until the target accepts all
//! of it) while the next one fills, up to [`Target::PUTS_IN_FLIGHT`] at once, and a lingering
//! one is put with every batch in flight before the forwarder reads on. A resume token is
//! stored only once every event before it was accepted. Documents too large to ever put, and
//! records the target refuses for good, go to the dead-letter collection instead.

use std::sync::Arc;
use std::time::Instant;

use mongodb::bson::{doc, Bson, DateTime, Document};
use mongodb::change_stream::event::{ChangeStreamEvent, OperationType, ResumeToken};
use mongodb::Collection;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::clock::now_ms;
use crate::say_once::Failures;

use super::batch::{self, Batch, Entry};
use super::error::{dead_letter_failure, is_unwritable, DeadLetterFailure};
use super::in_flight::{Done, InFlight, Sent};
use super::metrics::Metrics;
use super::state::StateStore;
use super::target::{self, PutError, Refused, Target};
use super::trouble::{now, Say, Trouble};
use super::{ForwarderError, Options, IDLE_SAVE_INTERVAL};

/// A field by dotted path.
fn field<'a>(document: &'a Document, path: &str) -> Option<&'a Bson> {
    let mut parts = path.split('.');
    let mut value = document.get(parts.next()?)?;
    for part in parts {
        value = value.as_document()?.get(part)?;
    }
    Some(value)
}

/// When `event` happened in the cluster, ms since the epoch: its wall time (MongoDB 6.0 on),
/// else its cluster time, which is whole seconds.
fn event_time_ms(event: &ChangeStreamEvent<Document>) -> Option<i64> {
    event
        .wall_time
        .map(|t| t.timestamp_millis())
        .or_else(|| event.cluster_time.map(|t| i64::from(t.time) * 1000))
}

/// The stop request as the forwarder's parts watch it: `None` until a stop is requested, then
/// when the work in hand must end, [`super::FINAL_PUT_WAIT`] after the request (see
/// [`super::run_counted`]).
pub(super) type Stop = watch::Receiver<Option<tokio::time::Instant>>;

/// A stop was requested (at once if it was before).
pub(super) async fn stopped(stop: &mut Stop) {
    let _ = stop.wait_for(Option::is_some).await;
}

/// When the work in hand must end, once a stop is requested: one deadline for every put, set
/// when the stop came.
async fn stop_deadline(stop: &mut Stop) -> tokio::time::Instant {
    let deadline = stop.wait_for(Option::is_some).await.ok().and_then(|d| *d);
    deadline.unwrap_or_else(tokio::time::Instant::now)
}

/// How long past the stop's deadline the position may still take to be stored. MongoDB not
/// answering (a partition, a hung primary) must not hold the stop until systemd's
/// `TimeoutStopSec` kills the forwarder: a position not stored only means events sent again.
const STORE_AFTER_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

/// The state between the change stream and the target: the batch being filled, and the resume
/// tokens read and stored.
pub(super) struct Forwarder<'a, T> {
    target: &'a T,
    pub(super) opts: &'a Options,
    pub(super) namespace: String,
    state: StateStore,
    dead_letter: Collection<Document>,
    pub(super) batch: Batch,
    /// When the oldest entry of the batch arrived.
    pub(super) batch_started: Option<Instant>,
    /// The resume token covering every event read so far (accepted, in flight, or in the
    /// batch).
    pub(super) latest: Option<ResumeToken>,
    /// The resume token covering every event before the oldest one not yet accepted: what may
    /// be stored.
    acked: Option<ResumeToken>,
    /// Batches handed to the target and not yet handled, oldest first.
    pub(super) puts: InFlight<'a>,
    /// The token last stored.
    saved: Option<ResumeToken>,
    /// When a token was last stored (or found unchanged).
    pub(super) last_save: Instant,
    /// Records the target accepted since the start.
    forwarded: u64,
    /// What the forwarder counts.
    metrics: &'a Metrics,
    /// Each batch entry's event time (ms since the epoch), in the batch's order: only while
    /// the lag is measured.
    event_times: Vec<i64>,
    /// Set once a stop is requested: the puts in progress, and the last one, may go on until
    /// its deadline.
    stop: Stop,
    /// Failed calls, as every batch's put says them: once for the forwarder, not per batch.
    resends: Arc<Failures>,
}

impl<'a, T: Target> Forwarder<'a, T> {
    /// A forwarder with an empty batch, at `stored`, the position read at start (`None`: now).
    pub(super) fn new(
        target: &'a T,
        opts: &'a Options,
        db: &mongodb::Database,
        state: StateStore,
        stored: Option<ResumeToken>,
        stop: Stop,
        metrics: &'a Metrics,
    ) -> Self {
        Forwarder {
            target,
            opts,
            namespace: format!("{}.{}", opts.database, opts.collection),
            state,
            dead_letter: db.collection(&opts.dead_letter_collection_name()),
            batch: Batch::new(T::LIMITS),
            batch_started: None,
            latest: stored.clone(),
            acked: stored.clone(),
            puts: InFlight::default(),
            saved: stored,
            last_save: Instant::now(),
            forwarded: 0,
            metrics,
            event_times: Vec::new(),
            stop,
            resends: Arc::default(),
        }
    }

    /// Put the batch and wait for every batch in flight (each resent until the target accepted
    /// all of it), then store the token.
    pub(super) async fn flush(&mut self) -> Result<(), ForwarderError> {
        self.send_batch().await?;
        while let Some(done) = self.puts.next().await {
            self.finish(done).await?;
        }
        self.save().await
    }

    /// Send a batch that filled up while events keep coming, and go on reading while it is put;
    /// the token is stored only when none was for [`IDLE_SAVE_INTERVAL`]: with EventBridge's 10
    /// entries a call, a store per batch would cost as much as the put. A restart then sends up
    /// to that much again (never less).
    async fn flush_full(&mut self) -> Result<(), ForwarderError> {
        self.send_batch().await?;
        if self.last_save.elapsed() >= IDLE_SAVE_INTERVAL {
            self.save().await?;
        }
        Ok(())
    }

    /// Start putting the batch once fewer than [`Target::PUTS_IN_FLIGHT`] batches are in
    /// flight, handling the oldest ones until then.
    async fn send_batch(&mut self) -> Result<(), ForwarderError> {
        if !self.batch.is_empty() {
            while self.puts.len() >= T::PUTS_IN_FLIGHT {
                let Some(done) = self.puts.next().await else {
                    break;
                };
                self.finish(done).await?;
            }
            let entries = self.batch.take();
            let sent = Sent {
                token: self.latest.clone(),
                event_times: std::mem::take(&mut self.event_times),
                entries: entries.len(),
            };
            let mut stop = self.stop.clone();
            // Every put in progress when the stop comes, or begun after it, ends by the same
            // deadline: FINAL_PUT_WAIT for the whole stop, not for each put from its own start
            // (a batch sent once the one before it was accepted would get as long again).
            let interrupt = async move {
                tokio::time::sleep_until(stop_deadline(&mut stop).await).await;
            };
            let (to, destination, metrics) = (self.target, self.opts.destination(), self.metrics);
            let resends = self.resends.clone();
            self.puts.push(async move {
                let outcome =
                    target::put_all(to, destination, entries, interrupt, metrics, &resends).await;
                Done { sent, outcome }
            });
        }
        self.batch_started = None;
        Ok(())
    }

    /// Handle the batches whose puts ended while the change stream was read.
    pub(super) async fn finish_ended(&mut self) -> Result<(), ForwarderError> {
        while let Some(done) = self.puts.take_ended() {
            self.finish(done).await?;
        }
        Ok(())
    }

    /// Handle the oldest batch in flight, once its put ended: keep what the target refused
    /// for good, count the rest, and move the position that may be stored past the batch.
    async fn finish(&mut self, done: Done) -> Result<(), ForwarderError> {
        let Done { sent, outcome } = done;
        let stats = outcome?;
        // Kept before the position moves past them, as an oversized document is.
        for refused in &stats.refused {
            self.dead_letter_refused(refused).await?;
        }
        // Acknowledged when the whole batch is: entries accepted by an earlier call of a
        // resent batch count from the last one, an upper bound of their lag. Entries
        // refused for good were never accepted, so they have no lag.
        let mut refused = stats.refused.iter().map(|r| r.position).peekable();
        let accepted = sent
            .event_times
            .into_iter()
            .enumerate()
            .filter_map(|(i, t)| {
                let skip = refused.next_if_eq(&i).is_some();
                (!skip).then_some(t)
            });
        self.metrics.observe_lag(accepted, now_ms());
        self.forwarded += (sent.entries - stats.refused.len()) as u64;
        debug!(
            records = sent.entries,
            total = self.forwarded,
            "{} accepted a batch",
            T::API
        );
        // Batches end in the order they were sent: every one before this was accepted.
        self.acked = sent.token;
        Ok(())
    }

    /// Store the newest position every event before which was handled, if it moved: the
    /// newest token when nothing waits, else that of the last batch accepted.
    pub(super) async fn save(&mut self) -> Result<(), ForwarderError> {
        if self.batch.is_empty() && self.puts.is_empty() {
            self.acked = self.latest.clone();
        }
        if self.acked.is_some() && self.acked != self.saved {
            if let Some(token) = &self.acked {
                match self.store(token).await {
                    Ok(()) => self.saved = self.acked.clone(),
                    // Not stored yet means some events may be sent again after a restart: never lost.
                    Err(ForwarderError::State(e)) => {
                        warn!(error = %e, "could not store the resume token; will try again")
                    }
                    Err(e) => return Err(e),
                }
            }
            self.last_save = Instant::now();
        }
        Ok(())
    }

    /// After an error that ends forwarding (a stop that cut a put short, a put refused for
    /// good): store the position of the batches accepted before it, so that the next start does
    /// not send them again. It is [`Forwarder::acked`] as it stands, not what [`Forwarder::save`]
    /// would store: the failed batch is out of the set by now, and with nothing left waiting
    /// `save` would take every event read as handled, the failed ones too.
    pub(super) async fn store_acked(&mut self) {
        let Some(token) = self.acked.as_ref().filter(|_| self.acked != self.saved) else {
            return;
        };
        match self.store(token).await {
            Ok(()) => self.saved = self.acked.clone(),
            // Sent again at the next start, then: never lost.
            Err(e) => {
                warn!(error = %e, "could not store the position of the batches accepted before stopping; they are sent again at the next start")
            }
        }
    }

    /// Store `token` as the position; once a stop is requested, giving up
    /// [`STORE_AFTER_DEADLINE`] after its deadline, even if the store began before it.
    async fn store(&self, token: &ResumeToken) -> Result<(), ForwarderError> {
        let mut stop = self.stop.clone();
        tokio::select! {
            r = self.state.save(token) => r,
            () = async {
                tokio::time::sleep_until(stop_deadline(&mut stop).await + STORE_AFTER_DEADLINE).await;
            } => Err(ForwarderError::State(
                "MongoDB did not answer before the stop's deadline; the events after the stored position are sent again at the next start".into(),
            )),
        }
    }

    /// Handle one event; `token` is its resume token. True when the event ended the stream
    /// (an invalidate): everything before it is put and its token stored, and the caller opens
    /// a new stream after it.
    pub(super) async fn event(
        &mut self,
        event: ChangeStreamEvent<Document>,
        token: Option<ResumeToken>,
    ) -> Result<bool, ForwarderError> {
        self.metrics.change_events.inc();
        match event.operation_type {
            OperationType::Insert | OperationType::Update | OperationType::Replace => {}
            OperationType::Invalidate => {
                self.flush().await?;
                if token.is_some() {
                    self.latest = token;
                }
                self.save().await?;
                warn!(namespace = %self.namespace, "the watched collection was dropped or renamed; following the collection of that name from right after that");
                return Ok(true);
            }
            OperationType::Drop | OperationType::Rename | OperationType::DropDatabase => {
                warn!(namespace = %self.namespace, operation = ?event.operation_type, "the watched collection went away");
                self.latest = token;
                return Ok(false);
            }
            _ => {
                self.latest = token;
                return Ok(false);
            }
        }
        let event_ms = event_time_ms(&event);
        let Some(document) = event.full_document else {
            // An update whose document was deleted before the lookup: nothing to send.
            debug!("change event without a full document; skipped");
            self.latest = token;
            return Ok(false);
        };
        let entry = Entry {
            data: self.opts.format.encode(&document),
            partition_key: batch::partition_key(field(&document, &self.opts.partition_key_field)),
        };
        if let Err(reason) = T::LIMITS.check(&entry) {
            let size = T::LIMITS.entry_size(&entry);
            self.dead_letter(&document, &reason.to_string(), size, token.as_ref())
                .await?;
            if self.batch.is_empty() {
                self.latest = token;
            }
            return Ok(false);
        }
        if !self.batch.fits(&entry) {
            self.flush_full().await?;
        }
        self.batch.push(entry);
        if self.metrics.measures_lag() {
            self.event_times.push(event_ms.unwrap_or_else(now_ms));
        }
        self.batch_started.get_or_insert_with(Instant::now);
        self.latest = token;
        if self.batch.is_full() {
            self.flush_full().await?;
        }
        Ok(false)
    }

    /// Keep a document too large to ever put, with the reason. Keyed by the event's resume
    /// token, so that an event dead-lettered again after a restart (its position was not stored
    /// yet) is kept once.
    async fn dead_letter(
        &self,
        document: &Document,
        reason: &str,
        size: usize,
        token: Option<&ResumeToken>,
    ) -> Result<(), ForwarderError> {
        let id = document.get("_id").cloned().unwrap_or(Bson::Null);
        let key = self.opts.position_key();
        let mut record = dead_letter_record(&key, &id, reason, size);
        record.insert("document", document.clone());
        // With the stream in the key: forwarders of one collection to two streams share the
        // dead-letter collection by default, and see the same tokens.
        if let Some(token_key) = token.and_then(|t| mongodb::bson::to_bson(t).ok()) {
            record.insert("_id", doc! { "stream": &key, "token": token_key });
        }
        self.keep(&record, &id).await?;
        warn!(id = %id, reason, "record too large to forward; kept in the dead-letter collection");
        Ok(())
    }

    /// Keep a record the target refused for good, as it was sent: the document read back from
    /// the record's JSON (in the `--format` it was written in), or, should that fail, the JSON
    /// as text under `data`. Keyed by the stream and a SHA-256 of the record, so that one
    /// refused again after a restart (its position was not stored yet) is kept once.
    async fn dead_letter_refused(&self, refused: &Refused) -> Result<(), ForwarderError> {
        let data = &refused.entry.data;
        let document = serde_json::from_slice::<serde_json::Value>(data)
            .ok()
            .and_then(|v| Bson::try_from(v).ok())
            .and_then(|b| match b {
                Bson::Document(d) => Some(d),
                _ => None,
            });
        let id = document
            .as_ref()
            .and_then(|d| d.get("_id").cloned())
            .unwrap_or(Bson::Null);
        let key = self.opts.position_key();
        let mut record = dead_letter_record(&key, &id, &refused.reason, data.len());
        let digest: String = Sha256::digest(data)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        record.insert("_id", doc! { "stream": &key, "sha256": digest });
        match document {
            Some(d) => record.insert("document", d),
            None => record.insert("data", String::from_utf8_lossy(data).into_owned()),
        };
        self.keep(&record, &id).await?;
        warn!(id = %id, reason = %refused.reason, "{} refused a record for good; kept in the dead-letter collection", T::API);
        Ok(())
    }

    /// Insert a dead-letter record. Retries until stored, or until a stop is requested (then
    /// the event is read again at the next start; a write under way gets until the stop's
    /// deadline); a failure that goes on is said as a change stream's is (see [`Trouble`]), not
    /// at every retry.
    async fn keep(&self, record: &Document, id: &Bson) -> Result<(), ForwarderError> {
        let mut delays = target::backoff();
        let mut stop = self.stop.clone();
        let mut trouble = Trouble::default();
        loop {
            // A write that MongoDB does not answer ends with the stop's deadline too.
            let inserted = tokio::select! {
                r = self.insert_dead_letter(record) => r,
                () = async { tokio::time::sleep_until(stop_deadline(&mut stop).await).await } => {
                    return Err(PutError::Interrupted.into());
                }
            };
            let e = match inserted {
                Ok(()) => {
                    self.metrics.dead_letters.inc();
                    if trouble.recovered() {
                        info!("the dead-letter collection takes records again");
                    }
                    return Ok(());
                }
                Err(e) => e,
            };
            match dead_letter_failure(&e) {
                DeadLetterFailure::AlreadyKept => {
                    debug!(id = %id, "already in the dead-letter collection");
                    return Ok(());
                }
                DeadLetterFailure::Fatal(f) => return Err(f),
                DeadLetterFailure::Retry => {
                    let error = crate::mongo::describe(&e);
                    match trouble.failed(now()) {
                        Say::Began => {
                            warn!(%error, "could not write to the dead-letter collection; retrying, and forwarding nothing after this record until it is kept")
                        }
                        Say::Still(failing_for) => {
                            error!(%error, failing_for = ?failing_for, "still cannot write to the dead-letter collection; forwarding is held up behind the record")
                        }
                        Say::Nothing => {}
                    }
                    tokio::select! {
                        () = stopped(&mut stop) => return Err(PutError::Interrupted.into()),
                        () = tokio::time::sleep(delays.next().unwrap_or(target::RETRY_MAX_DELAY)) => {}
                    }
                }
            }
        }
    }

    /// One insert of a dead-letter record; one too large with the document in it is kept
    /// without the document, with the reason and the id.
    async fn insert_dead_letter(&self, record: &Document) -> mongodb::error::Result<()> {
        match self.dead_letter.insert_one(record).await {
            // A document near 16 MiB may not fit with the wrapper.
            Err(e) if is_unwritable(&e) => {
                let mut smaller = record.clone();
                smaller.remove("document");
                smaller.insert("documentOmitted", e.to_string());
                self.dead_letter.insert_one(&smaller).await.map(drop)
            }
            other => other.map(drop),
        }
    }
}

/// A dead-letter record: which document, why, how large, and when (the caller adds what it
/// holds of the document).
fn dead_letter_record(stream: &str, id: &Bson, reason: &str, size: usize) -> Document {
    doc! {
        "documentId": id.clone(),
        "stream": stream,
        "reason": reason,
        "sizeBytes": size as i64,
        "at": DateTime::now(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Partition key fields may be dotted paths into sub-documents.
    #[test]
    fn dotted_fields() {
        let d = doc! { "a": { "b": "x" }, "c": 1 };
        assert_eq!(field(&d, "a.b"), Some(&Bson::String("x".into())));
        assert_eq!(field(&d, "c"), Some(&Bson::Int32(1)));
        assert_eq!(field(&d, "a.z"), None);
        assert_eq!(field(&d, "c.d"), None);
    }
}
