//! Following the change stream: read the stored position, open the stream after it, hand each
//! event to the [`Forwarder`], and open it again after an invalidate (at once) or a failure
//! (after a back-off), until a stop is requested or an error retrying cannot fix.

use std::time::Duration;

use mongodb::bson::{doc, Document};
use mongodb::change_stream::event::{ChangeStreamEvent, ResumeToken};
use mongodb::change_stream::ChangeStream;
use mongodb::options::FullDocumentType;
use mongodb::{Client, Collection};
use tracing::{debug, error, info, warn};

use super::error::{cannot_go_on, fatal, unusable_token};
use super::forward::{stopped, Forwarder, Stop};
use super::metrics::Metrics;
use super::state::StateStore;
use super::target::{self, Target};
use super::trouble::{now, Say, Trouble};
use super::{ForwarderError, Operation, Options, IDLE_SAVE_INTERVAL};

type Events = ChangeStream<ChangeStreamEvent<Document>>;

/// Where forwarding begins.
enum Start {
    /// A stop was requested before the position could be read: nothing to do.
    Stopped,
    /// After this stored position, or from now (`None`).
    At(Option<ResumeToken>),
}

/// How reading one opened change stream ended.
enum Ended {
    /// A stop was requested; the batch is put and the position stored.
    Stopped,
    /// An invalidate: open the next stream after it at once.
    Invalidated,
    /// The stream failed (after the driver's own resume attempt).
    Failed {
        error: mongodb::error::Error,
        /// Whether it worked before it failed (see [`follow`]): the back-off of reopening
        /// then starts afresh.
        worked: bool,
    },
}

/// Open the change stream on `coll` after `resume` (from now without one).
async fn open(
    coll: &Collection<Document>,
    opts: &Options,
    resume: Option<ResumeToken>,
) -> mongodb::error::Result<Events> {
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

/// The stored position, read with retries: MongoDB may be down at start. A stop is obeyed
/// while waiting (nothing is held yet).
async fn start_position(
    state: &StateStore,
    opts: &Options,
    stop: &mut Stop,
    reconnect: &mut impl Iterator<Item = Duration>,
) -> Result<Start, ForwarderError> {
    if opts.start_from_now {
        // A warning, not news: the flag left set (in an environment file, say) skips what
        // came while the forwarder was down at every restart, and says so only here.
        warn!(
            stream = %opts.position_key(),
            state = %format!("{}.{}", opts.state_database_name(), opts.state_collection_name()),
            "--start-from-now (FORWARDER_START_FROM_NOW): the stored position is being overwritten with the present, and what came while the forwarder was down is not forwarded; remove the flag once it runs, or every restart skips it again"
        );
        return Ok(Start::At(None));
    }
    // Set while the position cannot be read: said when it begins, once a minute, and at its end.
    let mut trouble = Trouble::default();
    let stored = loop {
        let loaded = tokio::select! {
            biased;
            () = stopped(stop) => {
                info!("shutdown requested before the resume token could be read");
                return Ok(Start::Stopped);
            }
            r = state.load() => r,
        };
        match loaded {
            Ok(t) => {
                if trouble.recovered() {
                    info!(
                        failed_attempts = trouble.failures(),
                        "the stored resume token could be read: MongoDB is reachable again"
                    );
                }
                break t;
            }
            Err(ForwarderError::State(e)) => {
                match trouble.failed(now()) {
                    Say::Began => warn!(
                        error = %e,
                        "cannot read the stored resume token yet; retrying, and saying so again once a minute while it lasts"
                    ),
                    Say::Still(failing_for) => error!(
                        failing_for_s = failing_for.as_secs(),
                        failed_attempts = trouble.failures(),
                        error = %e,
                        "the stored resume token still cannot be read; retrying, and nothing is forwarded meanwhile"
                    ),
                    Say::Nothing => {
                        debug!(error = %e, "the stored resume token still cannot be read")
                    }
                }
                tokio::select! {
                    biased;
                    () = stopped(stop) => return Ok(Start::Stopped),
                    _ = tokio::time::sleep(reconnect.next().unwrap_or(target::RETRY_MAX_DELAY)) => {}
                }
            }
            Err(e) => return Err(e),
        }
    };
    if stored.is_none() {
        // Only positions of the same kind of target: a Kinesis and an EventBridge forwarder of
        // one collection are meant to keep their own, and a rename stays within a kind.
        let mut others = state.other_streams().await;
        others.retain(|k| opts.same_target_kind(k));
        if !others.is_empty() {
            warn!(
                stream = %opts.position_key(),
                others = ?others,
                "no position is stored for this stream, but there is one for other streams of the same collection: if the stream was renamed, what happened since the old name's position is skipped; starting from now"
            );
        }
    }
    Ok(Start::At(stored))
}

/// Forward until a stop is requested (then the batch is put and the position stored) or an
/// error retrying cannot fix.
pub(super) async fn forward<T: Target>(
    client: &Client,
    target: &T,
    opts: &Options,
    metrics: &Metrics,
    mut stop: Stop,
) -> Result<(), ForwarderError> {
    let db = client.database(&opts.database);
    let coll = db.collection::<Document>(&opts.collection);
    let state = StateStore::new(
        client
            .database(opts.state_database_name())
            .collection(&opts.state_collection_name()),
        &opts.position_key(),
        &opts.database,
        &opts.collection,
    )
    .reporting_to(metrics.token_stored_ms.clone());
    let mut reconnect = target::backoff();
    let stored = match start_position(&state, opts, &mut stop, &mut reconnect).await? {
        Start::Stopped => return Ok(()),
        Start::At(token) => token,
    };
    let from = if stored.is_some() {
        "the stored resume token"
    } else {
        "now"
    };
    let mut fw = Forwarder::new(target, opts, &db, state, stored, stop.clone(), metrics);
    info!(namespace = %fw.namespace, target = ?opts.target, destination = %opts.destination(), from, "forwarding");
    let result = reopening(&mut fw, &coll, &mut stop).await;
    // Whatever ended it, the batches accepted before it need not be sent again.
    if result.is_err() {
        fw.store_acked().await;
    }
    result
}

/// Open the change stream after the forwarder's position, follow it, and open it again after
/// an invalidate or a failure, until a stop is requested or an error retrying cannot fix.
async fn reopening<T: Target>(
    fw: &mut Forwarder<'_, T>,
    coll: &Collection<Document>,
    stop: &mut Stop,
) -> Result<(), ForwarderError> {
    let opts = fw.opts;
    // MongoDB answered the position's read: retries of the open start from the shortest delay.
    let mut reconnect = target::backoff();
    // Set while the change stream cannot be opened.
    let mut trouble = Trouble::default();
    // The stored token, until a stream opens: only it can be one edited by hand or damaged.
    let mut unproven = fw.latest.is_some();
    loop {
        let opened = tokio::select! {
            biased;
            () = stopped(stop) => return fw.flush().await,
            s = open(coll, opts, fw.latest.clone()) => s,
        };
        let mut stream = match opened {
            Ok(s) => s,
            Err(e) => {
                if unproven {
                    if let Some(stop) = unusable_token(&e, &fw.namespace) {
                        return Err(stop);
                    }
                }
                not_opened(&e, &fw.namespace, &mut trouble)?;
                let delay = reconnect.next().unwrap_or(target::RETRY_MAX_DELAY);
                tokio::select! {
                    () = stopped(stop) => return fw.flush().await,
                    _ = tokio::time::sleep(delay) => continue,
                }
            }
        };
        unproven = false;
        if trouble.recovered() {
            info!("change stream open again");
            reconnect = target::backoff();
        }
        let failure = match follow(fw, &mut stream, stop).await? {
            Ended::Stopped => return Ok(()),
            Ended::Invalidated => continue,
            // The back-off grows only while failures follow each other: a stream that worked
            // in between is reopened after the shortest delay, however often it failed before.
            Ended::Failed { error, worked } => {
                if worked {
                    reconnect = target::backoff();
                }
                error
            }
        };
        if let Some(lost) = cannot_go_on(&failure, &fw.namespace) {
            fw.flush().await?;
            return Err(lost);
        }
        // The driver already resumed once by itself; put what was read, then reopen after it.
        fw.flush().await?;
        let error = crate::mongo::describe(&failure);
        error!(%error, "change stream failed; reopening from the last position");
        let delay = reconnect.next().unwrap_or(target::RETRY_MAX_DELAY);
        tokio::select! {
            () = stopped(stop) => return fw.flush().await,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// A change stream that could not be opened: the error that stops the forwarder, or `Ok` to
/// retry, having said so (once when it begins, then once a period).
fn not_opened(
    e: &mongodb::error::Error,
    namespace: &str,
    trouble: &mut Trouble,
) -> Result<(), ForwarderError> {
    if let Some(stop) = cannot_go_on(e, namespace).or_else(|| fatal(e)) {
        return Err(stop);
    }
    let error = crate::mongo::describe(e);
    match trouble.failed(now()) {
        Say::Began => warn!(%error, "cannot open the change stream; retrying"),
        Say::Still(failing_for) => error!(
            failing_for_s = failing_for.as_secs(),
            %error,
            "the change stream still cannot be opened; retrying, and nothing is forwarded meanwhile"
        ),
        Say::Nothing => {}
    }
    Ok(())
}

/// Read one opened change stream until it ends, fails, or a stop is requested.
async fn follow<T: Target>(
    fw: &mut Forwarder<'_, T>,
    stream: &mut Events,
    stop: &mut Stop,
) -> Result<Ended, ForwarderError> {
    if fw.latest.is_none() {
        // Starting from now: remember where "now" is at once.
        fw.latest = stream.resume_token();
        fw.save().await?;
    }
    // Whether the stream worked: it gave an event, or answered a read after its first, which
    // the driver answers from the reply to the open (the aggregate's first batch).
    let (mut worked, mut reads) = (false, 0_u32);
    loop {
        let next = tokio::select! {
            biased;
            () = stopped(stop) => {
                if fw.batch.is_empty() {
                    fw.latest = stream.resume_token().or(fw.latest.take());
                }
                fw.flush().await?;
                return Ok(Ended::Stopped);
            }
            // The puts in flight go on while the stream is read.
            n = fw.puts.alongside(stream.next_if_any()) => n,
        };
        fw.finish_ended().await?;
        if let Ok(event) = &next {
            reads += 1;
            worked |= event.is_some() || reads > 1;
        }
        match next {
            Ok(Some(event)) => {
                let token = stream.resume_token();
                if fw.event(event, token).await? {
                    return Ok(Ended::Invalidated);
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
            Err(error) => return Ok(Ended::Failed { error, worked }),
        }
        if fw
            .batch_started
            .is_some_and(|t| t.elapsed() >= fw.opts.linger)
        {
            fw.flush().await?;
        }
    }
}
