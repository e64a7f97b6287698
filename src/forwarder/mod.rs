//! The change stream to Kinesis (or EventBridge) forwarder: the replacement for the retired
//! database trigger.
//!
//! It watches a collection's change stream (inserts by default), writes each full document into
//! a Kinesis data stream with PutRecords (or, with `--target eventbridge`, onto an event bus
//! with PutEvents), and stores the change-stream resume token in MongoDB only after the target
//! has accepted every event up to it, so a restart (or a SIGKILL) loses
//! nothing: delivery is at least once, and the endpoint's upsert by `_id` makes the result
//! exactly once.
//!
//! - [`config`]: the command line and the plain settings built from it.
//! - [`error`]: why the forwarder stops, and which MongoDB errors are worth retrying.
//! - [`format`](mod@format): record data (`stringify`, `relaxed`, `canonical`).
//! - [`batch`]: each target's limits, and batching (pure).
//! - [`target`]: the put trait, how a failed entry is sorted, and the back-off of resends.
//! - [`put`]: putting one batch, resending failed entries until all are accepted.
//! - [`aws`]: the AWS SDK Kinesis client, and the region and credentials checks at start.
//! - [`eventbridge`]: the AWS SDK EventBridge client, PutEvents.
//! - [`state`]: the stored resume token.
//! - [`metrics`]: Prometheus metrics and readiness (`--metrics-listen`).
//! - `change_stream`, `forward` and `in_flight` (private): following the change stream, the
//!   batch between it and the target, and the batches being put.
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
//! between are not forwarded). A stored token the server cannot parse (edited by hand, or
//! damaged) stops it with [`ForwarderError::Position`], naming the same flag. So does a change
//! event over 16 MiB (BSONObjectTooLarge, 10334), which the server fails every time the stream
//! reaches it: [`ForwarderError::EventTooLarge`].

pub mod aws;
pub mod batch;
mod change_stream;
pub mod config;
pub mod error;
pub mod eventbridge;
pub mod format;
mod forward;
mod in_flight;
pub mod metrics;
pub mod put;
pub mod state;
pub mod target;
mod trouble;

use std::future::Future;
use std::time::Duration;

use mongodb::Client;
use tokio::sync::watch;
use tracing::info;

pub use config::{
    Cli, Command, Config, Operation, Options, TargetKind, DEFAULT_EVENT_BUS_NAME,
    DEFAULT_LINGER_MS, DEFAULT_PARTITION_KEY_FIELD, DEFAULT_STREAM_NAME,
};
pub use error::{ForwarderError, CHANGE_STREAM_FATAL_ERROR, CHANGE_STREAM_HISTORY_LOST};
pub use metrics::Metrics;
use target::{PutError, Target};

/// How often the post-batch resume token is stored while the collection is quiet, and at most
/// how often while full batches keep coming (after a partly filled one it is stored at once).
pub const IDLE_SAVE_INTERVAL: Duration = Duration::from_secs(1);

/// How long the batches in hand at a stop (the one filling, and those in flight) may keep
/// retrying, all together from the stop request: a Kinesis (or EventBridge) outage must not
/// keep the process from stopping. What it had not put is read again from the stored resume
/// token.
pub const FINAL_PUT_WAIT: Duration = Duration::from_secs(10);

/// Forward until `shutdown` resolves (then the pending batch is put, for up to
/// [`FINAL_PUT_WAIT`], and the token stored) or a fatal error.
pub async fn run<T: Target>(
    client: &Client,
    target: &T,
    opts: &Options,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ForwarderError> {
    run_counted(client, target, opts, &Metrics::default(), shutdown).await
}

/// [`run`], counting what it does in `metrics` (see [`Metrics::served`]).
pub async fn run_counted<T: Target>(
    client: &Client,
    target: &T,
    opts: &Options,
    metrics: &Metrics,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ForwarderError> {
    // The stop request is watched here, apart from the work, so that it is seen even while a
    // put is retrying (which polls nothing else). It carries the one deadline of the work in
    // hand, FINAL_PUT_WAIT from now.
    let (stop_tx, stop_rx) = watch::channel(None);
    let work = change_stream::forward(client, target, opts, metrics, stop_rx);
    tokio::pin!(work, shutdown);
    let result = tokio::select! {
        r = &mut work => r,
        () = &mut shutdown => {
            let _ = stop_tx.send(Some(tokio::time::Instant::now() + FINAL_PUT_WAIT));
            work.await
        }
    };
    match result {
        Err(ForwarderError::Put(PutError::Interrupted)) => {
            info!("stopped before every event read was forwarded; those events are read again from the stored resume token at the next start");
            Ok(())
        }
        r => r,
    }
}

/// What `kinesis-forwarder check-config` found: a summary to print, or why it cannot start.
/// Contacts neither MongoDB nor the target; waits up to [`aws::CREDENTIALS_WAIT`] for
/// credentials.
pub async fn check_config(config: &Config) -> Result<String, String> {
    config.options.check_names()?;
    crate::mongo::check_uri(&config.mongodb_uri).await?;
    let o = &config.options;
    let (what, endpoint) = match o.target {
        TargetKind::Kinesis => ("stream", &config.kinesis_endpoint_url),
        TargetKind::Eventbridge => ("event bus", &config.eventbridge_endpoint_url),
    };
    let aws::Environment {
        region,
        credentials,
    } = aws::check_environment(endpoint.as_deref()).await?;
    let operations: Vec<&str> = o.operations.iter().map(|op| op.name()).collect();
    let format = clap::ValueEnum::to_possible_value(&o.format)
        .map(|v| v.get_name().to_owned())
        .unwrap_or_default();
    Ok(format!(
        "watch: {}.{} ({})\n\
         {what}: {} in {region}{}\n\
         partition key: {}, format: {format}, linger: {:?}\n\
         state: {}.{}, dead letters: {}\n\
         start: {}\n\
         metrics: {}\n\
         MongoDB connection string: well formed (not contacted)\n\
         AWS credentials: {credentials}\n",
        o.database,
        o.collection,
        operations.join(","),
        o.destination(),
        endpoint
            .as_deref()
            .map(|u| format!(" at {u}"))
            .unwrap_or_default(),
        o.partition_key_field,
        o.linger,
        o.state_database_name(),
        o.state_collection_name(),
        o.dead_letter_collection_name(),
        if o.start_from_now {
            "from now (--start-from-now)"
        } else {
            "after the stored position, or from now without one"
        },
        config
            .metrics_listen
            .as_deref()
            .map_or("off".to_owned(), |a| format!(
                "/metrics, /healthz and /readyz on {a}"
            )),
    ))
}
