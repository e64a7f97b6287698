//! firehose-local: a stand-in for Kinesis Data Firehose with an HTTP endpoint destination, so an
//! endpoint can be tested offline before going to AWS.
//!
//! It reads every shard of a Kinesis stream (from LATEST, as a new Firehose stream does, or from
//! the oldest record with `--from-start`), buffers records by size and time, and POSTs them in the
//! exact Firehose request format ([`protocol`]). Only a valid 200 response is a success; anything
//! else is retried with `delay(n) = min(120 s, 2^n s * uniform(0.85, 1.15))`, keeping the request
//! id, until the retry duration is used up (time waiting for responses does not count). Then the
//! batch is written to `--error-dir` as Firehose's error records. A 413 is permanent: the batch is
//! dropped and logged as lost, exactly as Firehose does.
//!
//! With `--checkpoint-file` each shard's position is kept on disk once its records are
//! delivered (or given up), and a restart carries on from there ([`checkpoint`]). Without it,
//! positions are kept in memory only: a restart starts at LATEST again (or the oldest record
//! with `--from-start`), skipping what was put meanwhile.
//!
//! - [`checkpoint`]: the positions file.
//! - [`protocol`]: request, response validation, retry delays and error records (pure).
//! - [`reader`]: one task per shard, GetRecords in a loop.
//! - [`delivery`]: the HTTP client and the error output.

pub mod checkpoint;
pub mod delivery;
pub mod protocol;
pub mod reader;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{info, warn};

use checkpoint::Checkpoint;
use delivery::{Delivery, DeliveryConfig, Outcome};
use reader::{Arrived, Starts};

/// Default buffer size hint, MiB.
pub const DEFAULT_BUFFER_MIB: u32 = 5;
/// Default buffer interval hint, seconds.
pub const DEFAULT_BUFFER_SECONDS: u64 = 300;
/// Default retry duration, seconds.
pub const DEFAULT_RETRY_SECONDS: u64 = 300;
/// Firehose waits this long for a response.
pub const DEFAULT_REQUEST_TIMEOUT_SECONDS: u64 = 180;
/// The delivery stream ARN sent when none is given.
pub const DEFAULT_SOURCE_ARN: &str =
    "arn:aws:firehose:us-east-1:000000000000:deliverystream/firehose-local";

/// The command line of `firehose-local`.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "firehose-local",
    version,
    about = "A local Kinesis Data Firehose: read a Kinesis stream and deliver it to an HTTP endpoint exactly as Firehose does"
)]
pub struct Cli {
    /// Kinesis data stream to read (every shard).
    #[arg(long, env = "KINESIS_STREAM_NAME")]
    pub stream_name: String,
    /// Kinesis endpoint override, for an emulator (e.g. http://127.0.0.1:4568). Credentials and
    /// region come from the standard AWS chain.
    #[arg(long, env = "KINESIS_ENDPOINT_URL")]
    pub kinesis_endpoint_url: Option<String>,
    /// The HTTP endpoint to deliver to (Firehose requires https in AWS; http is allowed here).
    #[arg(long, env = "FIREHOSE_DESTINATION_URL")]
    pub destination_url: String,
    /// Buffer size hint in MiB (1-64): a request is sent once this much record data waits. A
    /// request body never passes 64 MiB (about 48 MiB of data) whatever this says.
    #[arg(long, env = "FIREHOSE_BUFFER_MIB", default_value_t = DEFAULT_BUFFER_MIB,
          value_parser = clap::value_parser!(u32).range(1..=64))]
    pub buffer_mib: u32,
    /// Buffer interval hint in seconds (0-900): a request is sent this long after its first record.
    #[arg(long, env = "FIREHOSE_BUFFER_SECONDS", default_value_t = DEFAULT_BUFFER_SECONDS,
          value_parser = clap::value_parser!(u64).range(0..=900))]
    pub buffer_seconds: u64,
    /// GZIP the request body (Content-Encoding: gzip).
    #[arg(long, env = "FIREHOSE_GZIP", value_parser = clap::builder::BoolishValueParser::new())]
    pub gzip: bool,
    /// Retry duration in seconds (0-7200); waits for responses do not count.
    #[arg(long, env = "FIREHOSE_RETRY_SECONDS", default_value_t = DEFAULT_RETRY_SECONDS,
          value_parser = clap::value_parser!(u64).range(0..=7200))]
    pub retry_seconds: u64,
    /// Where batches that could not be delivered go, as Firehose's error records (one JSON line
    /// per record). Without it they are only logged, as lost.
    #[arg(long, env = "FIREHOSE_ERROR_DIR")]
    pub error_dir: Option<PathBuf>,
    /// A common attribute sent in X-Amz-Firehose-Common-Attributes; repeat for more (at most 50).
    #[arg(long = "common-attribute", env = "FIREHOSE_COMMON_ATTRIBUTES", value_delimiter = ',',
          value_name = "NAME=VALUE", value_parser = protocol::parse_attribute)]
    pub common_attributes: Vec<(String, String)>,
    /// Read from the oldest record in the stream instead of LATEST.
    #[arg(long, env = "FIREHOSE_FROM_START", value_parser = clap::builder::BoolishValueParser::new())]
    pub from_start: bool,
    /// Keep each shard's position in this file, so a restart carries on after the last record
    /// delivered (at least once: records read but not yet delivered are read again).
    #[arg(long, env = "FIREHOSE_CHECKPOINT_FILE")]
    pub checkpoint_file: Option<PathBuf>,
    /// The delivery stream ARN sent in X-Amz-Firehose-Source-Arn.
    #[arg(long, env = "FIREHOSE_SOURCE_ARN", default_value = DEFAULT_SOURCE_ARN)]
    pub source_arn: String,
    /// PEM certificates to trust for the destination, besides the built-in roots: an endpoint
    /// serving its own self-signed certificate (`firehose-endpoint --tls-cert`).
    #[arg(long, env = "FIREHOSE_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// How long to wait for a response, seconds (Firehose waits 3 minutes).
    #[arg(long, env = "FIREHOSE_REQUEST_TIMEOUT_SECONDS", default_value_t = DEFAULT_REQUEST_TIMEOUT_SECONDS)]
    pub request_timeout_seconds: u64,
}

/// Errors that stop firehose-local.
#[derive(Debug, thiserror::Error)]
pub enum FirehoseLocalError {
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl Cli {
    /// The delivery settings; `access_key` comes from `FIREHOSE_ACCESS_KEY`, never the command line.
    pub fn delivery_config(
        &self,
        access_key: Option<String>,
    ) -> Result<DeliveryConfig, FirehoseLocalError> {
        if self.common_attributes.len() > protocol::MAX_COMMON_ATTRIBUTES {
            return Err(FirehoseLocalError::Config(format!(
                "{} common attributes given; Firehose allows at most {}",
                self.common_attributes.len(),
                protocol::MAX_COMMON_ATTRIBUTES
            )));
        }
        if access_key
            .as_ref()
            .is_some_and(|k| k.len() > protocol::MAX_ACCESS_KEY_BYTES)
        {
            return Err(FirehoseLocalError::Config(
                "FIREHOSE_ACCESS_KEY is longer than 4096 bytes".into(),
            ));
        }
        Ok(DeliveryConfig {
            destination_url: self.destination_url.clone(),
            access_key,
            source_arn: self.source_arn.clone(),
            common_attributes: self.common_attributes.clone(),
            gzip: self.gzip,
            retry_duration: Duration::from_secs(self.retry_seconds),
            request_timeout: Duration::from_secs(self.request_timeout_seconds.max(1)),
            error_dir: self.error_dir.clone(),
            ca_cert: self.ca_cert.clone(),
        })
    }
}

/// The key to send from `FIREHOSE_ACCESS_KEY`: the variable as it is, or, when it holds a
/// comma-separated list (as `firehose-endpoint` takes it, for rotation), its first key, so that
/// one exported variable serves both. `None` when empty.
pub fn first_access_key(value: &str) -> Option<String> {
    let key = match value.split_once(',') {
        Some((first, _)) => first.trim(),
        None => value,
    };
    (!key.is_empty()).then(|| key.to_owned())
}

/// Replace `path` with `contents` durably (see [`crate::fsutil::replace`]).
pub(crate) fn write_durably(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    crate::fsutil::replace(path, contents, crate::fsutil::Durability::Synced)
}

/// Buffering hints.
#[derive(Debug, Clone, Copy)]
pub struct Buffering {
    pub bytes: usize,
    pub interval: Duration,
}

/// Deliver one batch, then move the checkpoint past it: delivered, refused with 413, given up
/// into the error output, or given up with no error output configured are all final. Given up
/// with the error output failing is not: the records exist nowhere else, so the checkpoint
/// stops moving and a restart reads them again.
async fn deliver(delivery: &Delivery, batch: Vec<Arrived>, checkpoint: &mut Option<Checkpoint>) {
    let outcome = delivery.deliver(&batch).await;
    let Some(cp) = checkpoint else { return };
    if matches!(outcome, Outcome::Failed { written: None, .. }) && delivery.has_error_output() {
        cp.freeze();
    } else {
        cp.record(&batch);
    }
}

/// How long deliveries may go on once a stop is requested: the one in progress and the
/// buffer's last, together. A destination that is down must not hold the stop for the whole
/// retry duration (up to two hours). What was cut short is read again at the next start with
/// `--checkpoint-file` (its position was not moved), and lost without one.
pub const FINAL_DELIVERY_WAIT: Duration = Duration::from_secs(10);

/// [`deliver`], but once `shutdown` resolves only until `stop_at` (set then to
/// [`FINAL_DELIVERY_WAIT`] from now, if it was not set before). False when it was cut short:
/// the checkpoint did not move past the batch.
async fn deliver_until_stopped(
    delivery: &Delivery,
    batch: Vec<Arrived>,
    checkpoint: &mut Option<Checkpoint>,
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    stop_at: &mut Option<Instant>,
) -> bool {
    let records = batch.len();
    let work = deliver(delivery, batch, checkpoint);
    tokio::pin!(work);
    let deadline = match *stop_at {
        Some(at) => at,
        None => {
            tokio::select! {
                () = &mut work => return true,
                () = shutdown.as_mut() => *stop_at.insert(Instant::now() + FINAL_DELIVERY_WAIT),
            }
        }
    };
    if tokio::time::timeout_at(deadline, work).await.is_err() {
        warn!(
            records,
            "stopping before the endpoint accepted a batch: with --checkpoint-file it is read again at the next start, without one it is lost"
        );
        return false;
    }
    true
}

/// Buffer records from `rx` and deliver them until `shutdown` (the pending buffer is then
/// delivered, within [`FINAL_DELIVERY_WAIT`]) or the readers end.
pub async fn run_buffer(
    mut rx: mpsc::Receiver<Arrived>,
    delivery: &Delivery,
    buffering: Buffering,
    mut checkpoint: Option<Checkpoint>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    // Set once a stop is requested: the time deliveries must end by.
    let mut stop_at: Option<Instant> = None;
    // A delivery was cut short: nothing after it may be delivered, or the checkpoint would
    // move past the records it held.
    let mut cut_short = false;
    let mut buffer: Vec<Arrived> = Vec::new();
    // Record data waiting (the size hint counts it) and the request body it makes.
    let mut bytes = 0usize;
    let mut body = protocol::BODY_OVERHEAD_BYTES;
    let mut deadline: Option<Instant> = None;
    while stop_at.is_none() {
        let flush_at = deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        let mut batch = None;
        tokio::select! {
            biased;
            () = &mut shutdown => stop_at = Some(Instant::now() + FINAL_DELIVERY_WAIT),
            _ = tokio::time::sleep_until(flush_at), if deadline.is_some() => {
                batch = Some(std::mem::take(&mut buffer));
            }
            r = rx.recv() => {
                let Some(record) = r else { break };
                let grows = protocol::encoded_record_bytes(record.data.len());
                // A body past Firehose's largest would be answered 413, and the records lost.
                if !buffer.is_empty() && body + grows > protocol::MAX_BODY_BYTES {
                    let full = std::mem::take(&mut buffer);
                    cut_short = !deliver_until_stopped(delivery, full, &mut checkpoint, &mut shutdown, &mut stop_at).await;
                    (bytes, body, deadline) = (0, protocol::BODY_OVERHEAD_BYTES, None);
                }
                bytes += record.data.len();
                body += grows;
                deadline.get_or_insert_with(|| Instant::now() + buffering.interval);
                buffer.push(record);
                if cut_short {
                    break;
                }
                if bytes >= buffering.bytes || buffer.len() >= protocol::MAX_RECORDS {
                    batch = Some(std::mem::take(&mut buffer));
                }
            }
        }
        if let Some(batch) = batch {
            cut_short = !deliver_until_stopped(
                delivery,
                batch,
                &mut checkpoint,
                &mut shutdown,
                &mut stop_at,
            )
            .await;
            (bytes, body, deadline) = (0, protocol::BODY_OVERHEAD_BYTES, None);
            if cut_short {
                break;
            }
        }
    }
    if buffer.is_empty() {
        return;
    }
    if cut_short {
        info!(
            records = buffer.len(),
            "not delivering the buffer: a batch before it was cut short, so both are read again at the next start with --checkpoint-file"
        );
        return;
    }
    info!(
        records = buffer.len(),
        "delivering the buffer before stopping"
    );
    deliver_until_stopped(
        delivery,
        buffer,
        &mut checkpoint,
        &mut shutdown,
        &mut stop_at,
    )
    .await;
}

/// Read the stream and deliver it until `shutdown`.
pub async fn run(
    kinesis: aws_sdk_kinesis::Client,
    cli: &Cli,
    config: DeliveryConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), FirehoseLocalError> {
    let delivery = Delivery::new(config).map_err(FirehoseLocalError::Config)?;
    tokio::pin!(shutdown);
    let checkpoint = match &cli.checkpoint_file {
        Some(path) => {
            let saved =
                Checkpoint::read(path, &cli.stream_name).map_err(FirehoseLocalError::Config)?;
            // Which stream the positions belong to: one deleted and created again under the
            // same name has new sequence numbers.
            let created_ms = tokio::select! {
                biased;
                () = &mut shutdown => return Ok(()),
                t = reader::stream_created_ms(&kinesis, &cli.stream_name) => t,
            };
            let c = Checkpoint::from_saved(
                path,
                &cli.stream_name,
                saved,
                created_ms,
                (!cli.from_start).then(crate::clock::now_ms),
            )
            .map_err(FirehoseLocalError::Config)?;
            if c.recreated() {
                warn!(file = %path.display(), "the stream was created again since the checkpoint file was written: its positions are dropped and every shard is read from its oldest record");
            }
            Some(c)
        }
        None => None,
    };
    let starts = Starts {
        from_start: cli.from_start,
        saved: checkpoint
            .as_ref()
            .map(|c| c.positions().clone())
            .unwrap_or_default(),
        resume_from: checkpoint
            .as_ref()
            .filter(|c| c.resumed())
            .map(Checkpoint::since_ms),
    };
    if let Some(c) = checkpoint.as_ref().filter(|c| c.resumed()) {
        info!(
            shards = c.positions().len(),
            "resuming from the checkpoint file"
        );
    }
    let (tx, rx) = mpsc::channel(reader::CHANNEL_CAPACITY);
    let readers = tokio::spawn(reader::read_stream(
        kinesis,
        cli.stream_name.clone(),
        starts,
        tx,
    ));
    info!(stream = %cli.stream_name, destination = %cli.destination_url, "firehose-local started");
    let buffering = Buffering {
        bytes: cli.buffer_mib as usize * 1024 * 1024,
        interval: Duration::from_secs(cli.buffer_seconds),
    };
    run_buffer(rx, &delivery, buffering, checkpoint, shutdown).await;
    readers.abort();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // One key is sent as it is; of a rotation list, the first; nothing for an empty variable.
    #[test]
    fn access_key_from_the_variable() {
        assert_eq!(first_access_key("k1").as_deref(), Some("k1"));
        assert_eq!(
            first_access_key("new-key, old-key").as_deref(),
            Some("new-key")
        );
        assert_eq!(first_access_key(""), None);
        assert_eq!(first_access_key(",x"), None);
    }

    // A record's share of the body is an upper bound of what it adds in fact.
    #[test]
    fn encoded_size_bounds_the_body() {
        let records: Vec<Vec<u8>> = (0..50).map(|n| vec![7u8; n * 37]).collect();
        let body =
            protocol::request_body("0123456789abcdef0123456789abcdef0123", i64::MAX, &records);
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
