//! firehose-local: a stand-in for Kinesis Data Firehose with an HTTP endpoint destination, so an
//! endpoint can be tested offline before going to AWS.
//!
//! It reads every shard of a Kinesis stream (from LATEST, as a new Firehose stream does, or from
//! the oldest record with `--from-start`; a resharded shard's children only once it has been read
//! to its end and delivered), buffers records by size and time, and POSTs them in the exact
//! Firehose request format ([`protocol`]). Only a valid 200 response is a success; anything
//! else is retried with `delay(n) = min(120 s, 2^n s * uniform(0.85, 1.15))`, keeping the request
//! id, until the retry duration is used up (time waiting for responses does not count). Then the
//! batch is written to `--error-dir` as Firehose's error records. A 413 is permanent: the batch is
//! dropped and logged as lost, exactly as Firehose does. One difference: a record the KPL
//! aggregated is sent as it is, one entry, where Firehose splits it into its user records
//! (docs/pipeline.md says why that is left so).
//!
//! With `--checkpoint-file` each shard's position is kept on disk once its records are
//! delivered (or given up), and a restart carries on from there ([`checkpoint`]). Without it,
//! positions are kept in memory only: a restart starts at LATEST again (or the oldest record
//! with `--from-start`), skipping what was put meanwhile.
//!
//! - [`config`]: the command line and the plain settings built from it.
//! - [`buffer`]: the buffer that turns records into requests, and the stop deadline.
//! - [`checkpoint`]: the positions file.
//! - [`protocol`]: request, response validation, retry delays and error records (pure).
//! - [`reader`]: one task per shard, GetRecords in a loop.
//! - [`lineage`]: which shards may be read now (children after their parents).
//! - [`delivery`]: the HTTP client and the error output.
//! - [`metrics`]: Prometheus metrics and readiness (`--metrics-listen`).

pub mod buffer;
pub mod checkpoint;
pub mod config;
pub mod delivery;
pub mod lineage;
pub mod metrics;
pub mod protocol;
pub mod reader;

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use tokio::sync::mpsc;
use tracing::{info, warn};

pub use buffer::{run_buffer, Buffering, FINAL_DELIVERY_WAIT};
use checkpoint::Checkpoint;
pub use config::{first_access_key, Cli, Command, Config};
use delivery::Delivery;
pub use metrics::Metrics;
use reader::{Resume, Starts};

/// Errors that stop firehose-local.
#[derive(Debug, thiserror::Error)]
pub enum FirehoseLocalError {
    /// The configuration can never work: an option, the access key, --ca-cert or the
    /// checkpoint file.
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// Replace `path` with `contents` durably (see [`crate::fsutil::replace`]).
pub(crate) fn write_durably(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    crate::fsutil::replace(path, contents, crate::fsutil::Durability::Synced)
}

/// Where each shard starts: from the checkpoint's positions where it has them.
fn starts(from_start: bool, checkpoint: Option<&Checkpoint>) -> Starts {
    Starts {
        from_start,
        saved: checkpoint
            .map(|c| c.positions().clone())
            .unwrap_or_default(),
        resume: match checkpoint.filter(|c| c.resumed()) {
            None => Resume::Fresh,
            Some(c) => c.since_ms().map_or(Resume::Whole, Resume::Since),
        },
        ended: checkpoint.map(|c| c.ended().clone()).unwrap_or_default(),
    }
}

/// Read the stream and deliver it until `shutdown`, counting what happens in `metrics` (see
/// [`Metrics::served`]; `Arc::default()` when they are not served).
pub async fn run(
    kinesis: aws_sdk_kinesis::Client,
    config: &Config,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), FirehoseLocalError> {
    let delivery = Delivery::new(config.delivery.clone())
        .map_err(FirehoseLocalError::Config)?
        .counted_in(metrics.clone());
    tokio::pin!(shutdown);
    let stream = &config.stream_name;
    let checkpoint = match &config.checkpoint_file {
        Some(path) => {
            let saved = Checkpoint::read(path, stream).map_err(FirehoseLocalError::Config)?;
            // Which stream the positions belong to: one deleted and created again under the
            // same name has new sequence numbers.
            let created_ms = tokio::select! {
                biased;
                () = &mut shutdown => return Ok(()),
                t = reader::stream_created_ms(&kinesis, stream) => t,
            };
            let now_ms = (!config.from_start).then(crate::clock::now_ms);
            let c = Checkpoint::from_saved(path, stream, saved, created_ms, now_ms)
                .map_err(FirehoseLocalError::Config)?;
            if c.recreated() {
                warn!(file = %path.display(), "the stream was created again since the checkpoint file was written: its positions are dropped and every shard is read from its oldest record");
            }
            Some(c)
        }
        None => None,
    };
    if let Some(c) = &checkpoint {
        metrics.checkpoint(c.saved_at());
    }
    if let Some(c) = checkpoint.as_ref().filter(|c| c.resumed()) {
        info!(
            shards = c.positions().len(),
            "resuming from the checkpoint file"
        );
    }
    let (tx, rx) = mpsc::channel(reader::CHANNEL_CAPACITY);
    let starts = starts(config.from_start, checkpoint.as_ref());
    // Twice the size hint: a full request on its way while the next one fills.
    let read_ahead = (2 * config.buffering.bytes).max(reader::MIN_READ_AHEAD_BYTES);
    let readers = tokio::spawn(reader::read_stream(
        kinesis,
        stream.clone(),
        starts,
        tx,
        metrics,
        read_ahead,
    ));
    info!(stream = %stream, destination = %config.delivery.destination_url, "firehose-local started");
    run_buffer(rx, &delivery, config.buffering, checkpoint, shutdown).await;
    readers.abort();
    Ok(())
}

/// What `firehose-local check-config` found: a summary to print, or why it cannot start.
/// Contacts neither Kinesis nor the destination; waits up to
/// [`crate::forwarder::aws::CREDENTIALS_WAIT`] for credentials.
pub async fn check_config(config: &Config) -> Result<String, String> {
    let d = &config.delivery;
    Delivery::new(d.clone())?;
    let checkpoint = match &config.checkpoint_file {
        None => "none: a restart starts again at LATEST".to_owned(),
        Some(path) => match Checkpoint::read(path, &config.stream_name)? {
            Some(_) => format!("{}, of this stream", path.display()),
            None => format!(
                "{} (not there yet: made at the first start)",
                path.display()
            ),
        },
    };
    let endpoint = config.kinesis_endpoint_url.as_deref();
    let crate::forwarder::aws::Environment {
        region,
        credentials,
    } = crate::forwarder::aws::check_environment(endpoint).await?;
    Ok(format!(
        "stream: {} in {region}{}, from {}\n\
         destination: {}\n\
         buffer: {} MiB or {:?}; retry duration: {:?}; request timeout: {:?}; gzip: {}\n\
         access key: {}; common attributes: {}\n\
         error output: {}\n\
         checkpoint file: {checkpoint}\n\
         metrics: {}\n\
         AWS credentials: {credentials}\n",
        config.stream_name,
        endpoint.map(|u| format!(" at {u}")).unwrap_or_default(),
        if config.from_start {
            "the oldest record"
        } else {
            "LATEST"
        },
        d.destination_url,
        config.buffering.bytes / (1024 * 1024),
        config.buffering.interval,
        d.retry_duration,
        d.request_timeout,
        d.gzip,
        if d.access_key.is_some() {
            "set"
        } else {
            "none"
        },
        d.common_attributes.len(),
        d.error_dir
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "none: batches given up are only logged".into()),
        config
            .metrics_listen
            .as_deref()
            .map_or("off".to_owned(), |a| format!(
                "/metrics, /healthz and /readyz on {a}"
            )),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    // A record's share of the body is an upper bound of what it adds in fact.
    #[test]
    fn encoded_size_bounds_the_body() {
        let records: Vec<Vec<u8>> = (0..50).map(|n| vec![7u8; n * 37]).collect();
        let body = protocol::request_body(
            "0123456789abcdef0123456789abcdef0123",
            i64::MAX,
            records.iter().map(Vec::as_slice),
        );
        let estimate: usize = protocol::BODY_OVERHEAD_BYTES
            + records
                .iter()
                .map(|r| protocol::encoded_record_bytes(r.len()))
                .sum::<usize>();
        assert!(body.len() <= estimate, "{} > {estimate}", body.len());
        assert!(
            estimate - body.len() < 200,
            "a loose bound: {estimate} for {}",
            body.len()
        );
    }
}
