//! The change stream to Kinesis forwarder: the replacement for the retired database trigger.
//!
//! It watches a collection's change stream (inserts by default), writes each full document into
//! a Kinesis data stream with PutRecords, and stores the change-stream resume token in MongoDB
//! only after Kinesis has accepted every event up to it, so a restart (or a SIGKILL) loses
//! nothing: delivery is at least once, and the endpoint's upsert by `_id` makes the result
//! exactly once.
//!
//! - [`format`]: record data (`stringify`, `relaxed`, `canonical`).
//! - [`batch`]: PutRecords limits and batching (pure).
//! - [`kinesis`]: the PutRecords trait, the AWS client, and resending failed entries.
//! - [`state`]: the stored resume token.
//!
//! # A dropped or renamed collection
//!
//! An `invalidate` event ends the change stream. The forwarder stores its token and opens a new
//! stream with `startAfter` it, so the collection of that name (the agent creates it again with
//! its next insert) is followed from right after the drop, missing nothing: every stream is
//! opened with `startAfter`, which for any other token means what `resumeAfter` does.
//!
//! # Stopping for good
//!
//! The errors ChangeStreamHistoryLost (286) and ChangeStreamFatalError (280) mean the stored
//! position can never be resumed. The forwarder then stops with
//! [`ForwarderError::HistoryLost`]; `--start-from-now` starts again from the present (events in
//! between are not forwarded).

pub mod batch;
pub mod format;
pub mod kinesis;
pub mod state;

use std::future::Future;
use std::time::{Duration, Instant};

use mongodb::bson::{doc, Bson, DateTime, Document};
use mongodb::change_stream::event::{ChangeStreamEvent, OperationType, ResumeToken};
use mongodb::change_stream::ChangeStream;
use mongodb::error::ErrorKind;
use mongodb::options::FullDocumentType;
use mongodb::{Client, Collection};
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use batch::{Batch, Entry};
use format::Format;
use kinesis::{Kinesis, KinesisError};
use state::StateStore;

/// Default partition key field: one shard per board.
pub const DEFAULT_PARTITION_KEY_FIELD: &str = "nodeName";
/// Default linger: how long a partly filled batch waits for more events.
pub const DEFAULT_LINGER_MS: u64 = 100;
/// How often the post-batch resume token is stored while the collection is quiet.
pub const IDLE_SAVE_INTERVAL: Duration = Duration::from_secs(1);
/// ChangeStreamFatalError.
pub const CHANGE_STREAM_FATAL_ERROR: i32 = 280;
/// ChangeStreamHistoryLost.
pub const CHANGE_STREAM_HISTORY_LOST: i32 = 286;

/// What the forwarder does, when it stops.
#[derive(Debug, thiserror::Error)]
pub enum ForwarderError {
    /// The server no longer holds the stored position (oplog rolled over) or cannot resume it.
    #[error("the change stream on {namespace} cannot be resumed: {message} (error {code}); the oplog no longer holds the stored position, so events since then cannot be forwarded. Start again from now with --start-from-now")]
    HistoryLost {
        namespace: String,
        code: i32,
        message: String,
    },
    /// Kinesis refused a request in a way retrying cannot fix.
    #[error(transparent)]
    Kinesis(#[from] KinesisError),
    /// The stored resume token could not be read or written (for now: retried).
    #[error("resume token store: {0}")]
    State(String),
    /// The stored position cannot be used: unreadable, or kept for another collection.
    #[error("{0}")]
    Position(String),
    /// A MongoDB error that is neither a lost history nor worth retrying.
    #[error("MongoDB: {0}")]
    Mongo(String),
}

/// Which change events are forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Operation {
    Insert,
    Update,
    Replace,
}

impl Operation {
    fn name(self) -> &'static str {
        match self {
            Operation::Insert => "insert",
            Operation::Update => "update",
            Operation::Replace => "replace",
        }
    }
}

/// The forwarder's settings, apart from the connections.
#[derive(Debug, Clone)]
pub struct Options {
    pub database: String,
    pub collection: String,
    pub stream_name: String,
    pub partition_key_field: String,
    pub format: Format,
    pub operations: Vec<Operation>,
    /// Where the resume token is stored; default `<collection>_forwarder_state`.
    pub state_collection: Option<String>,
    /// Where oversize records go; default `<collection>_forwarder_deadletter`.
    pub dead_letter_collection: Option<String>,
    /// Ignore the stored token and start from the present.
    pub start_from_now: bool,
    /// How long a partly filled batch waits for more events.
    pub linger: Duration,
}

impl Options {
    pub fn new(stream_name: &str) -> Self {
        Options {
            database: "monitors".into(),
            collection: "reports".into(),
            stream_name: stream_name.into(),
            partition_key_field: DEFAULT_PARTITION_KEY_FIELD.into(),
            format: Format::Stringify,
            operations: vec![Operation::Insert],
            state_collection: None,
            dead_letter_collection: None,
            start_from_now: false,
            linger: Duration::from_millis(DEFAULT_LINGER_MS),
        }
    }

    pub fn state_collection_name(&self) -> String {
        self.state_collection
            .clone()
            .unwrap_or_else(|| format!("{}_forwarder_state", self.collection))
    }

    pub fn dead_letter_collection_name(&self) -> String {
        self.dead_letter_collection
            .clone()
            .unwrap_or_else(|| format!("{}_forwarder_deadletter", self.collection))
    }
}

/// The command line of `kinesis-forwarder`.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "kinesis-forwarder",
    version,
    about = "Forward every document inserted into a MongoDB collection (and, with --operations, updated or replaced) to a Kinesis data stream, resuming after restarts without loss"
)]
pub struct Cli {
    /// MongoDB connection string (a replica set: change streams need one). Prefer the environment
    /// variable: the string may hold a password.
    #[arg(long, env = "MONGODB_CONNECTION_STRING", hide_env_values = true)]
    pub mongodb_uri: String,
    /// Database of the watched collection.
    #[arg(long, env = "FORWARDER_DATABASE", default_value = "monitors")]
    pub database: String,
    /// The watched collection.
    #[arg(long, env = "FORWARDER_COLLECTION", default_value = "reports")]
    pub collection: String,
    /// Kinesis data stream to put records into.
    #[arg(long, env = "KINESIS_STREAM_NAME")]
    pub stream_name: String,
    /// Kinesis endpoint override, for an emulator (e.g. http://127.0.0.1:4568). Credentials and
    /// region always come from the standard AWS chain.
    #[arg(long, env = "KINESIS_ENDPOINT_URL")]
    pub kinesis_endpoint_url: Option<String>,
    /// Document field (dotted path allowed) whose value is the partition key; `_id` spreads load
    /// over shards further. Missing or empty values use "-".
    #[arg(long, env = "FORWARDER_PARTITION_KEY_FIELD", default_value = DEFAULT_PARTITION_KEY_FIELD)]
    pub partition_key_field: String,
    /// Record data: `stringify` (JSON.stringify of the document, as the original trigger wrote),
    /// `relaxed` or `canonical` Extended JSON.
    #[arg(
        long,
        env = "FORWARDER_FORMAT",
        value_enum,
        default_value = "stringify"
    )]
    pub format: Format,
    /// Change events to forward, comma-separated; updates are forwarded with the full document
    /// looked up at the time of reading.
    #[arg(
        long,
        env = "FORWARDER_OPERATIONS",
        value_enum,
        value_delimiter = ',',
        default_value = "insert"
    )]
    pub operations: Vec<Operation>,
    /// Collection (same database) holding the resume token [default: <collection>_forwarder_state].
    #[arg(long, env = "FORWARDER_STATE_COLLECTION")]
    pub state_collection: Option<String>,
    /// Collection (same database) receiving documents too large to forward (over 1 MiB with the
    /// key, Kinesis's limit, or data over 1,024,000 bytes, Firehose's), with the reason
    /// [default: <collection>_forwarder_deadletter].
    #[arg(long, env = "FORWARDER_DEAD_LETTER_COLLECTION")]
    pub dead_letter_collection: Option<String>,
    /// Ignore the stored resume token and start from now: the way back after the oplog lost the
    /// stored position. Events in between are skipped.
    #[arg(long, env = "FORWARDER_START_FROM_NOW", value_parser = clap::builder::BoolishValueParser::new())]
    pub start_from_now: bool,
    /// How long (ms) a partly filled batch waits for more events before it is put.
    #[arg(long, env = "FORWARDER_LINGER_MS", default_value_t = DEFAULT_LINGER_MS)]
    pub linger_ms: u64,
}

impl Cli {
    pub fn options(&self) -> Options {
        Options {
            database: self.database.clone(),
            collection: self.collection.clone(),
            stream_name: self.stream_name.clone(),
            partition_key_field: self.partition_key_field.clone(),
            format: self.format,
            operations: self.operations.clone(),
            state_collection: self.state_collection.clone(),
            dead_letter_collection: self.dead_letter_collection.clone(),
            start_from_now: self.start_from_now,
            linger: Duration::from_millis(self.linger_ms),
        }
    }
}

/// A field by dotted path.
fn field<'a>(document: &'a Document, path: &str) -> Option<&'a Bson> {
    let mut parts = path.split('.');
    let mut value = document.get(parts.next()?)?;
    for part in parts {
        value = value.as_document()?.get(part)?;
    }
    Some(value)
}

/// Whether a MongoDB error means the stored position is gone for good.
fn history_lost(e: &mongodb::error::Error) -> Option<(i32, String)> {
    match *e.kind {
        ErrorKind::Command(ref c)
            if c.code == CHANGE_STREAM_HISTORY_LOST || c.code == CHANGE_STREAM_FATAL_ERROR =>
        {
            Some((c.code, c.message.clone()))
        }
        _ => None,
    }
}

/// A fatal MongoDB error as [`ForwarderError::Mongo`], with what to do where that is known.
fn mongo_error(e: &mongodb::error::Error) -> ForwarderError {
    ForwarderError::Mongo(format!("{e}{}", crate::mongo::fatal_hint(e)))
}

struct Forwarder<'a, K> {
    kinesis: &'a K,
    opts: &'a Options,
    namespace: String,
    state: StateStore,
    dead_letter: Collection<Document>,
    batch: Batch,
    /// When the oldest entry of the batch arrived.
    batch_started: Option<Instant>,
    /// The resume token covering every event read so far (accepted, or in the batch).
    latest: Option<ResumeToken>,
    /// The token last stored.
    saved: Option<ResumeToken>,
    last_save: Instant,
    forwarded: u64,
    /// True once a stop is requested: a put in progress, or the last one, may go on for
    /// [`FINAL_PUT_WAIT`] more.
    stop: watch::Receiver<bool>,
}

/// How long the batch put at stop may keep retrying: a Kinesis outage must not keep the
/// process from stopping. What it had not put is read again from the stored resume token.
pub const FINAL_PUT_WAIT: Duration = Duration::from_secs(10);

impl<K: Kinesis> Forwarder<'_, K> {
    /// Put the batch (resending failed entries until all are accepted), then store the token.
    async fn flush(&mut self) -> Result<(), ForwarderError> {
        if !self.batch.is_empty() {
            let entries = self.batch.take();
            let n = entries.len() as u64;
            let mut stop = self.stop.clone();
            // A put in progress when the stop comes, or begun after it, gets FINAL_PUT_WAIT.
            let interrupt = async move {
                let _ = stop.wait_for(|s| *s).await;
                tokio::time::sleep(FINAL_PUT_WAIT).await;
            };
            kinesis::put_all(self.kinesis, &self.opts.stream_name, entries, interrupt).await?;
            self.forwarded += n;
            debug!(
                records = n,
                total = self.forwarded,
                "PutRecords accepted a batch"
            );
        }
        self.batch_started = None;
        self.save().await
    }

    /// Store the newest token, if it moved. Only called with an empty batch.
    async fn save(&mut self) -> Result<(), ForwarderError> {
        if self.latest.is_some() && self.latest != self.saved {
            if let Some(token) = &self.latest {
                match self.state.save(token).await {
                    Ok(()) => self.saved = self.latest.clone(),
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

    /// Handle one event; `token` is its resume token. True when the event ended the stream
    /// (an invalidate): everything before it is put and its token stored, and the caller opens
    /// a new stream after it.
    async fn event(
        &mut self,
        event: ChangeStreamEvent<Document>,
        token: Option<ResumeToken>,
    ) -> Result<bool, ForwarderError> {
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
        if let Err(reason) = batch::check(&entry) {
            self.dead_letter(&document, &reason.to_string(), entry.size(), token.as_ref())
                .await?;
            if self.batch.is_empty() {
                self.latest = token;
            }
            return Ok(false);
        }
        if !self.batch.fits(&entry) {
            self.flush().await?;
        }
        self.batch.push(entry);
        self.batch_started.get_or_insert_with(Instant::now);
        self.latest = token;
        if self.batch.is_full() {
            self.flush().await?;
        }
        Ok(false)
    }

    /// Keep a document that can never be put, with the reason. Retries until stored, or until a
    /// stop is requested (then the event is read again at the next start). Keyed by the event's
    /// resume token, so that an event dead-lettered again after a restart (its position was not
    /// stored yet) is kept once.
    async fn dead_letter(
        &self,
        document: &Document,
        reason: &str,
        size: usize,
        token: Option<&ResumeToken>,
    ) -> Result<(), ForwarderError> {
        let id = document.get("_id").cloned().unwrap_or(Bson::Null);
        warn!(id = %id, reason, "record too large to forward; kept in the dead-letter collection");
        let mut record = doc! {
            "documentId": id.clone(),
            "stream": &self.opts.stream_name,
            "reason": reason,
            "sizeBytes": size as i64,
            "at": DateTime::now(),
            "document": document.clone(),
        };
        // With the stream in the key: forwarders of one collection to two streams share the
        // dead-letter collection by default, and see the same tokens.
        if let Some(key) = token.and_then(|t| mongodb::bson::to_bson(t).ok()) {
            record.insert(
                "_id",
                doc! { "stream": &self.opts.stream_name, "token": key },
            );
        }
        let mut delays = kinesis::backoff();
        let mut stop = self.stop.clone();
        loop {
            let result = match self.dead_letter.insert_one(&record).await {
                // A document near 16 MiB may not fit with the wrapper: keep the reason and the id.
                Err(e)
                    if matches!(
                        *e.kind,
                        ErrorKind::InvalidArgument { .. } | ErrorKind::BsonSerialization(_)
                    ) =>
                {
                    let mut smaller = record.clone();
                    smaller.remove("document");
                    smaller.insert("documentOmitted", e.to_string());
                    self.dead_letter.insert_one(&smaller).await.map(drop)
                }
                other => other.map(drop),
            };
            match result {
                Ok(()) => return Ok(()),
                Err(e) if crate::mongo::is_duplicate_key(&e) => {
                    debug!(id = %id, "already in the dead-letter collection");
                    return Ok(());
                }
                Err(e) if crate::mongo::is_fatal(&e) => return Err(mongo_error(&e)),
                Err(e) => {
                    warn!(error = %e, "could not write to the dead-letter collection; retrying");
                    tokio::select! {
                        () = stopped(&mut stop) => return Err(KinesisError::Interrupted.into()),
                        () = tokio::time::sleep(delays.next().unwrap_or(kinesis::RETRY_MAX_DELAY)) => {}
                    }
                }
            }
        }
    }
}

async fn open(
    coll: &Collection<Document>,
    opts: &Options,
    resume: Option<ResumeToken>,
) -> mongodb::error::Result<ChangeStream<ChangeStreamEvent<Document>>> {
    let mut types: Vec<&str> = opts.operations.iter().map(|o| o.name()).collect();
    types.extend(["invalidate", "drop", "rename", "dropDatabase"]);
    let mut watch = coll
        .watch()
        .pipeline([doc! { "$match": { "operationType": { "$in": types } } }])
        .max_await_time(opts.linger.max(Duration::from_millis(10)));
    if opts.operations.contains(&Operation::Update) {
        watch = watch.full_document(FullDocumentType::UpdateLookup);
    }
    if let Some(token) = resume {
        // startAfter, not resumeAfter: the same for an event's token, and it also opens a new
        // stream after an invalidate's token (resumeAfter refuses that one).
        watch = watch.start_after(token);
    }
    watch.await
}

/// Forward until `shutdown` resolves (then the pending batch is put, for up to
/// [`FINAL_PUT_WAIT`], and the token stored) or a fatal error.
pub async fn run<K: Kinesis>(
    client: &Client,
    kinesis: &K,
    opts: &Options,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ForwarderError> {
    // The stop request is watched here, apart from the work, so that it is seen even while a
    // put is retrying (which polls nothing else).
    let (stop_tx, stop_rx) = watch::channel(false);
    let work = forward(client, kinesis, opts, stop_rx);
    tokio::pin!(work, shutdown);
    let result = tokio::select! {
        r = &mut work => r,
        () = &mut shutdown => {
            let _ = stop_tx.send(true);
            work.await
        }
    };
    match result {
        Err(ForwarderError::Kinesis(KinesisError::Interrupted)) => {
            info!("stopped before every event read was forwarded; those events are read again from the stored resume token at the next start");
            Ok(())
        }
        r => r,
    }
}

/// A stop was requested (at once if it was before).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn forward<K: Kinesis>(
    client: &Client,
    kinesis: &K,
    opts: &Options,
    mut stop: watch::Receiver<bool>,
) -> Result<(), ForwarderError> {
    let db = client.database(&opts.database);
    let coll = db.collection::<Document>(&opts.collection);
    let namespace = format!("{}.{}", opts.database, opts.collection);
    let state = StateStore::new(
        db.collection(&opts.state_collection_name()),
        &opts.stream_name,
        &opts.database,
        &opts.collection,
    );
    let mut reconnect = kinesis::backoff();
    let stored = if opts.start_from_now {
        info!("--start-from-now: ignoring any stored resume token");
        None
    } else {
        // MongoDB may be down at start: keep trying, and stop when asked (nothing is held yet).
        loop {
            let loaded = tokio::select! {
                biased;
                () = stopped(&mut stop) => {
                    info!("shutdown requested before the resume token could be read");
                    return Ok(());
                }
                r = state.load() => r,
            };
            match loaded {
                Ok(t) => break t,
                Err(ForwarderError::State(e)) => {
                    warn!(error = %e, "cannot read the stored resume token yet; retrying");
                    tokio::select! {
                        biased;
                        () = stopped(&mut stop) => return Ok(()),
                        _ = tokio::time::sleep(reconnect.next().unwrap_or(kinesis::RETRY_MAX_DELAY)) => {}
                    }
                }
                Err(e) => return Err(e),
            }
        }
    };
    if stored.is_none() && !opts.start_from_now {
        let others = state.other_streams().await;
        if !others.is_empty() {
            warn!(
                stream = %opts.stream_name,
                others = ?others,
                "no position is stored for this stream, but there is one for other streams of the same collection: if the stream was renamed, what happened since the old name's position is skipped; starting from now"
            );
        }
    }
    info!(
        namespace = %namespace,
        stream = %opts.stream_name,
        from = if stored.is_some() { "the stored resume token" } else { "now" },
        "forwarding"
    );
    let mut fw = Forwarder {
        kinesis,
        opts,
        namespace,
        state,
        dead_letter: db.collection(&opts.dead_letter_collection_name()),
        batch: Batch::default(),
        batch_started: None,
        latest: stored.clone(),
        saved: stored,
        last_save: Instant::now(),
        forwarded: 0,
        stop: stop.clone(),
    };
    // Set while the change stream cannot be opened.
    let mut trouble: Option<kinesis::Trouble> = None;
    loop {
        let opened = tokio::select! {
            biased;
            () = stopped(&mut stop) => return fw.flush().await,
            s = open(&coll, opts, fw.latest.clone()) => s,
        };
        let mut stream = match opened {
            Ok(s) => s,
            Err(e) => {
                if let Some((code, message)) = history_lost(&e) {
                    return Err(ForwarderError::HistoryLost {
                        namespace: fw.namespace.clone(),
                        code,
                        message,
                    });
                }
                if crate::mongo::is_fatal(&e) {
                    return Err(mongo_error(&e));
                }
                match trouble.as_mut() {
                    None => {
                        warn!(error = %e, "cannot open the change stream; retrying");
                        trouble = Some(kinesis::Trouble::new(
                            "the change stream still cannot be opened; retrying, and nothing is forwarded meanwhile",
                        ));
                    }
                    Some(t) => t.still(&e.to_string()),
                }
                let delay = reconnect.next().unwrap_or(kinesis::RETRY_MAX_DELAY);
                tokio::select! {
                    () = stopped(&mut stop) => return fw.flush().await,
                    _ = tokio::time::sleep(delay) => continue,
                }
            }
        };
        if trouble.take().is_some() {
            info!("change stream open again");
            reconnect = kinesis::backoff();
        }
        if fw.latest.is_none() {
            // Starting from now: remember where "now" is at once.
            fw.latest = stream.resume_token();
            fw.save().await?;
        }
        let failure = loop {
            let next = tokio::select! {
                biased;
                () = stopped(&mut stop) => {
                    if fw.batch.is_empty() {
                        fw.latest = stream.resume_token().or(fw.latest.take());
                    }
                    return fw.flush().await;
                }
                n = stream.next_if_any() => n,
            };
            match next {
                Ok(Some(event)) => {
                    let token = stream.resume_token();
                    if fw.event(event, token).await? {
                        break None;
                    }
                }
                Ok(None) => {
                    // Every event read so far is in the batch or accepted: the post-batch token
                    // covers them all.
                    let token = stream.resume_token();
                    if !fw.batch.is_empty() {
                        if token.is_some() {
                            fw.latest = token;
                        }
                        fw.flush().await?;
                    } else if fw.last_save.elapsed() >= IDLE_SAVE_INTERVAL {
                        if token.is_some() {
                            fw.latest = token;
                        }
                        fw.save().await?;
                    }
                }
                Err(e) => break Some(e),
            }
            if fw.batch_started.is_some_and(|t| t.elapsed() >= opts.linger) {
                fw.flush().await?;
            }
        };
        let Some(failure) = failure else {
            // Invalidated: open the next stream after it at once.
            continue;
        };
        if let Some((code, message)) = history_lost(&failure) {
            fw.flush().await?;
            return Err(ForwarderError::HistoryLost {
                namespace: fw.namespace.clone(),
                code,
                message,
            });
        }
        // The driver already resumed once by itself; put what was read, then reopen after it.
        fw.flush().await?;
        error!(error = %failure, "change stream failed; reopening from the last position");
        let delay = reconnect.next().unwrap_or(kinesis::RETRY_MAX_DELAY);
        tokio::select! {
            () = stopped(&mut stop) => return fw.flush().await,
            _ = tokio::time::sleep(delay) => {}
        }
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

    // The history-lost message says what happened and how to start again.
    #[test]
    fn fatal_messages_name_the_flag() {
        let e = ForwarderError::HistoryLost {
            namespace: "monitors.reports".into(),
            code: 286,
            message: "resume point no longer in the oplog".into(),
        };
        let text = e.to_string();
        assert!(
            text.contains("--start-from-now") && text.contains("286") && text.contains("oplog")
        );
    }
}
