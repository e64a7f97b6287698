//! The forwarder's Prometheus metrics and readiness (`--metrics-listen`).
//!
//! The counters are updated where the work happens, one atomic add each, served or not. What
//! costs more than that is done only when they are served: the lag histogram (a clock read per
//! batch, and each event's time kept beside its entry) is `None` without `--metrics-listen`,
//! and the resume token's age is computed at scrape time from when the token was last stored.
//!
//! There are no dead-letter reasons or destinations as labels: one process has one target and
//! one dead-letter collection, so every series here has no labels at all.

use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mongodb::bson::doc;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::clock::now_ms;
use crate::metrics::Readiness;

/// The metrics' prefix.
pub const PREFIX: &str = "kinesis_forwarder";

/// Lag buckets, seconds: a batch waits up to `--linger` (100 ms by default) and a put takes
/// tens of milliseconds, so a healthy forwarder sits in the first buckets; retries under
/// throttling take seconds, an outage minutes.
const LAG_BUCKETS: [f64; 11] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

/// How long each readiness check (MongoDB, the target) may take: under the listener's own
/// [`crate::metrics::READY_TIMEOUT`], so that the answer names what did not answer.
pub const READY_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// What the forwarder counts. [`Metrics::default`] counts without serving; [`Metrics::served`]
/// also registers them to serve.
#[derive(Default)]
pub struct Metrics {
    /// Change events read from the change stream, of any operation type.
    pub(crate) change_events: Counter,
    /// Records (events) the target accepted; a record resent after a partial failure and
    /// accepted again counts again, as it is in the stream twice.
    pub(crate) records_put: Counter,
    /// Entries a put failed for now (throttled, an internal failure), each resent.
    pub(crate) failed_entries: Counter,
    /// Entries the target refused for good, never resent: kept in the dead-letter collection,
    /// or, denied to the forwarder, the reason it stops.
    pub(crate) refused_entries: Counter,
    /// Put calls made again after a call failed whole or refused some entries.
    pub(crate) retries: Counter,
    /// Documents too large to forward, or refused for good by the target, kept in the
    /// dead-letter collection.
    pub(crate) dead_letters: Counter,
    /// From an event's time in the cluster to the target's acceptance of its record; only
    /// when served.
    pub(crate) lag: Option<Histogram>,
    /// When the resume token was last stored (or, at start, when the stored one was), ms since
    /// the Unix epoch; 0 before that.
    pub(crate) token_stored_ms: Arc<AtomicI64>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("change_events", &self.change_events.get())
            .field("records_put", &self.records_put.get())
            .field("served", &self.lag.is_some())
            .finish_non_exhaustive()
    }
}

impl Metrics {
    /// Metrics to serve, and the registry (prefix [`PREFIX`]) that serves them.
    pub fn served() -> (Arc<Metrics>, Registry) {
        let m = Arc::new(Metrics {
            lag: Some(Histogram::new(LAG_BUCKETS)),
            ..Metrics::default()
        });
        let mut r = Registry::with_prefix(PREFIX);
        r.register(
            "change_events",
            "Change events read from the change stream",
            m.change_events.clone(),
        );
        r.register(
            "records_put",
            "Records the target (Kinesis or EventBridge) accepted, resends included",
            m.records_put.clone(),
        );
        r.register(
            "failed_entries",
            "Entries a put failed for now (throttled or failed), each resent",
            m.failed_entries.clone(),
        );
        r.register(
            "refused_entries",
            "Entries the target refused for good, never resent (dead-lettered, or denied: the forwarder stops)",
            m.refused_entries.clone(),
        );
        r.register(
            "retries",
            "Put calls made again after a call failed or refused some entries",
            m.retries.clone(),
        );
        r.register(
            "dead_letters",
            "Documents too large to forward, or refused for good by the target, kept in the dead-letter collection",
            m.dead_letters.clone(),
        );
        if let Some(lag) = &m.lag {
            r.register_with_unit(
                "lag",
                "Time from a change event in the cluster to the target's acceptance of its record",
                Unit::Seconds,
                lag.clone(),
            );
        }
        r.register_collector(Box::new(TokenAge(m.token_stored_ms.clone())));
        (m, r)
    }

    /// Whether the lag is measured (the metrics are served).
    pub(crate) fn measures_lag(&self) -> bool {
        self.lag.is_some()
    }

    /// Records accepted `at_ms` whose events happened at `event_ms` (ms since the epoch).
    pub(crate) fn observe_lag(&self, event_ms: impl IntoIterator<Item = i64>, at_ms: i64) {
        if let Some(h) = &self.lag {
            for t in event_ms {
                h.observe(lag_seconds(t, at_ms));
            }
        }
    }
}

/// Seconds from `event_ms` to `at_ms`, never below zero: the cluster's clock may run ahead of
/// this host's, and a cluster time without a wall time is whole seconds.
pub(crate) fn lag_seconds(event_ms: i64, at_ms: i64) -> f64 {
    (at_ms - event_ms).max(0) as f64 / 1000.0
}

/// `resume_token_age_seconds`, read at each scrape; absent until a token is stored or found.
#[derive(Debug)]
struct TokenAge(Arc<AtomicI64>);

impl Collector for TokenAge {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stored = self.0.load(Ordering::Relaxed);
        if stored == 0 {
            return Ok(());
        }
        let m = encoder.encode_descriptor(
            "resume_token_age",
            "Time since the resume token was last stored in MongoDB",
            Some(&Unit::Seconds),
            MetricType::Gauge,
        )?;
        ConstGauge::new(lag_seconds(stored, now_ms())).encode(m)
    }
}

/// Ready when MongoDB answers a `ping` and `target` (a live call naming the stream or bus, such
/// as [`super::aws::AwsKinesis::reachable`]) says its side is reachable, each within
/// [`READY_CHECK_TIMEOUT`], asked at once. A live check rather than the state of the last
/// operations: on a quiet collection the forwarder makes no put for hours, and a stale "it
/// worked" would say ready while the stream is gone. Both are single cheap calls, and only a
/// `/readyz` request makes them.
pub fn readiness<F, Fut>(client: mongodb::Client, target: F) -> Readiness
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let target = Arc::new(target);
    Arc::new(move || {
        let client = client.clone();
        let target = target.clone();
        Box::pin(async move {
            let (db, to) = tokio::join!(ping(&client), within(READY_CHECK_TIMEOUT, target()));
            match (db, to) {
                (Ok(()), Ok(())) => Ok(()),
                (Err(e), Ok(())) | (Ok(()), Err(e)) => Err(e),
                (Err(a), Err(b)) => Err(format!("{a}; {b}")),
            }
        })
    })
}

/// `check`, or why it did not answer in `limit`.
pub(crate) async fn within(
    limit: Duration,
    check: impl Future<Output = Result<(), String>>,
) -> Result<(), String> {
    tokio::time::timeout(limit, check)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {} s", limit.as_secs())))
}

/// MongoDB answers `ping`.
async fn ping(client: &mongodb::Client) -> Result<(), String> {
    let ping = async {
        client
            .database("admin")
            .run_command(doc! { "ping": 1 })
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    };
    within(READY_CHECK_TIMEOUT, ping)
        .await
        .map_err(|e| format!("MongoDB unreachable: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Lag is never negative, whatever the clocks say.
    #[test]
    fn lag_is_never_negative() {
        assert_eq!(lag_seconds(1_000, 3_500), 2.5);
        assert_eq!(lag_seconds(5_000, 3_500), 0.0);
    }

    // Unserved metrics count but measure no lag; served ones are all in the exposition, the
    // token's age only once a token was stored.
    #[test]
    fn served_metrics_are_exposed_under_the_prefix() {
        let quiet = Metrics::default();
        assert!(!quiet.measures_lag());
        let (m, registry) = Metrics::served();
        m.records_put.inc_by(3);
        m.observe_lag([now_ms() - 1500], now_ms());
        let text = crate::metrics::encode(&registry).unwrap();
        assert!(
            text.contains("kinesis_forwarder_records_put_total 3"),
            "{text}"
        );
        assert!(
            text.contains("kinesis_forwarder_lag_seconds_count 1"),
            "{text}"
        );
        assert!(!text.contains("resume_token_age"), "{text}");
        m.token_stored_ms.store(now_ms() - 2000, Ordering::Relaxed);
        let text = crate::metrics::encode(&registry).unwrap();
        assert!(
            text.contains("# TYPE kinesis_forwarder_resume_token_age_seconds gauge"),
            "{text}"
        );
    }

    // A check that hangs is cut short with a reason naming the limit.
    #[tokio::test(start_paused = true)]
    async fn a_hanging_check_is_cut_short() {
        let r = within(READY_CHECK_TIMEOUT, std::future::pending()).await;
        assert_eq!(r, Err("no answer within 2 s".into()));
    }
}
