//! firehose-local's Prometheus metrics and readiness (`--metrics-listen`).
//!
//! Counters are updated where the work happens (an atomic add per GetRecords page, per batch,
//! per retry), served or not; the checkpoint's age is computed at scrape time from when the
//! file was last written. The `shard` label is bounded by the stream's shard count, `outcome`
//! by [`Outcome`].

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::clock::now_ms;
use crate::metrics::Readiness;

/// The metrics' prefix.
pub const PREFIX: &str = "firehose_local";

/// How long the readiness check of the stream may take: under the listener's own
/// [`crate::metrics::READY_TIMEOUT`], so that the answer names what did not answer.
pub const READY_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// How a batch ended, as `deliveries_total{outcome}` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A valid 200 response, at the first attempt or after retries.
    Delivered,
    /// The retry duration was used up: written to the error output, if there is one.
    Failed,
    /// Answered 413: lost, as Firehose loses it.
    Rejected,
    /// A record over Firehose's size limit, set aside as it arrived: written to the error
    /// output, if there is one, in a file of its own. Each is counted.
    TooLarge,
}

impl Outcome {
    /// Every outcome, so that each series exists from the start.
    const ALL: [Outcome; 4] = [
        Outcome::Delivered,
        Outcome::Failed,
        Outcome::Rejected,
        Outcome::TooLarge,
    ];

    /// The label value.
    fn label(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Failed => "failed",
            Outcome::Rejected => "rejected",
            Outcome::TooLarge => "too_large",
        }
    }
}

type ShardLabel = [(&'static str, String); 1];
type OutcomeLabel = [(&'static str, &'static str); 1];

/// What firehose-local counts, and what its readiness check reads.
#[derive(Default)]
pub struct Metrics {
    records_read: Family<ShardLabel, Counter>,
    deliveries: Family<OutcomeLabel, Counter>,
    retries: Counter,
    /// When the checkpoint file was last written (ms since the epoch), once there is one.
    checkpoint_saved_ms: OnceLock<Arc<AtomicI64>>,
    /// Why the last delivery attempt failed; `None` after one that reached the endpoint.
    endpoint_failure: Mutex<Option<String>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("retries", &self.retries.get())
            .finish_non_exhaustive()
    }
}

impl Metrics {
    /// Metrics to serve, and the registry (prefix [`PREFIX`]) that serves them.
    pub fn served() -> (Arc<Metrics>, Registry) {
        let m = Arc::new(Metrics::default());
        for o in Outcome::ALL {
            drop(m.deliveries.get_or_create(&[("outcome", o.label())]));
        }
        let mut r = Registry::with_prefix(PREFIX);
        r.register(
            "records_read",
            "Records read from the Kinesis stream, by shard",
            m.records_read.clone(),
        );
        r.register(
            "deliveries",
            "Batches that ended, by outcome: delivered, failed (retry duration used up) or rejected (413, lost); too_large: records over 1,024,000 bytes set aside, each on its own",
            m.deliveries.clone(),
        );
        r.register(
            "retries",
            "Delivery attempts made again after a failed one",
            m.retries.clone(),
        );
        r.register_collector(Box::new(CheckpointAge(m.clone())));
        (m, r)
    }

    /// The counter of records read from `shard`, to keep beside its reader.
    pub(crate) fn shard(&self, shard: &str) -> Counter {
        self.records_read
            .get_or_create(&[("shard", shard.to_owned())])
            .clone()
    }

    /// A batch ended so.
    pub(crate) fn delivered(&self, outcome: Outcome) {
        self.deliveries
            .get_or_create(&[("outcome", outcome.label())])
            .inc();
    }

    /// A failed attempt is retried.
    pub(crate) fn retried(&self) {
        self.retries.inc();
    }

    /// The last attempt reached the endpoint (`None`), or failed for this reason.
    pub(crate) fn attempt(&self, failure: Option<String>) {
        if let Ok(mut f) = self.endpoint_failure.lock() {
            *f = failure;
        }
    }

    /// Report the age of the checkpoint whose write time is kept in `saved_ms`.
    pub(crate) fn checkpoint(&self, saved_ms: Arc<AtomicI64>) {
        let _ = self.checkpoint_saved_ms.set(saved_ms);
    }

    /// Ready when Kinesis describes the stream as readable, within [`READY_CHECK_TIMEOUT`], and
    /// the last delivery attempt, if any, reached the endpoint. The stream is asked live (one
    /// DescribeStreamSummary, which firehose-local is allowed anyway); the endpoint is judged
    /// by the last attempt instead, since anything sent to it is a delivery.
    pub fn readiness(
        self: &Arc<Self>,
        kinesis: aws_sdk_kinesis::Client,
        stream: String,
    ) -> Readiness {
        let me = self.clone();
        Arc::new(move || {
            let (me, kinesis, stream) = (me.clone(), kinesis.clone(), stream.clone());
            Box::pin(async move {
                let endpoint = me
                    .endpoint_failure
                    .lock()
                    .ok()
                    .and_then(|f| f.clone())
                    .map(|f| format!("the last delivery attempt failed: {f}"));
                let stream = tokio::time::timeout(READY_CHECK_TIMEOUT, describe(&kinesis, &stream))
                    .await
                    .unwrap_or_else(|_| {
                        Err(format!(
                            "Kinesis did not answer within {} s",
                            READY_CHECK_TIMEOUT.as_secs()
                        ))
                    });
                match (stream, endpoint) {
                    (Ok(()), None) => Ok(()),
                    (Err(e), None) | (Ok(()), Some(e)) => Err(e),
                    (Err(a), Some(b)) => Err(format!("{a}; {b}")),
                }
            })
        })
    }
}

/// Kinesis describes `stream` as ACTIVE or UPDATING (readable), asked once.
async fn describe(kinesis: &aws_sdk_kinesis::Client, stream: &str) -> Result<(), String> {
    use aws_sdk_kinesis::error::DisplayErrorContext;
    crate::forwarder::aws::describe_once(kinesis, stream)
        .await
        .map_err(|e| format!("Kinesis stream {stream}: {}", DisplayErrorContext(&e)))?
        .map_or(Ok(()), Err)
}

/// `checkpoint_age_seconds`, read at each scrape; only with `--checkpoint-file`.
#[derive(Debug)]
struct CheckpointAge(Arc<Metrics>);

impl Collector for CheckpointAge {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(saved) = self.0.checkpoint_saved_ms.get() else {
            return Ok(());
        };
        let saved = saved.load(Ordering::Relaxed);
        if saved == 0 {
            return Ok(());
        }
        let m = encoder.encode_descriptor(
            "checkpoint_age",
            "Time since the checkpoint file was last written (it moves when a batch ends)",
            Some(&Unit::Seconds),
            MetricType::Gauge,
        )?;
        ConstGauge::new((now_ms() - saved).max(0) as f64 / 1000.0).encode(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Every outcome is exposed from the start at 0; shards appear as they are read; the
    // checkpoint's age only with a checkpoint.
    #[test]
    fn exposition_under_the_prefix() {
        let (m, registry) = Metrics::served();
        m.shard("shardId-000000000001").inc_by(4);
        m.delivered(Outcome::Delivered);
        let text = crate::metrics::encode(&registry).unwrap();
        for want in [
            "firehose_local_records_read_total{shard=\"shardId-000000000001\"} 4",
            "firehose_local_deliveries_total{outcome=\"delivered\"} 1",
            "firehose_local_deliveries_total{outcome=\"failed\"} 0",
            "firehose_local_deliveries_total{outcome=\"rejected\"} 0",
            "firehose_local_deliveries_total{outcome=\"too_large\"} 0",
            "firehose_local_retries_total 0",
        ] {
            assert!(text.contains(want), "{want} not in {text}");
        }
        assert!(!text.contains("checkpoint_age"), "{text}");
        m.checkpoint(Arc::new(AtomicI64::new(now_ms() - 1000)));
        let text = crate::metrics::encode(&registry).unwrap();
        assert!(
            text.contains("# TYPE firehose_local_checkpoint_age_seconds gauge"),
            "{text}"
        );
    }
}
