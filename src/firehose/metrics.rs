//! The endpoint's Prometheus metrics, counted as requests are served (a few atomic additions
//! per request) and exposed on `--metrics-listen`: see docs/firehose-endpoint.md for the list.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use super::decode::Rejection;

/// A response's status code: a handful of values (200, 400, 401, 404, 405, 408, 413, 503).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    code: u16,
}

/// Why a record went to the dead-letter collection: one of [`Rejection::kind`]'s names.
///
/// [`Rejection::kind`]: super::decode::Rejection::kind
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    reason: &'static str,
}

/// Request durations: a small delivery is stored in milliseconds, a 64 MiB one in seconds, and
/// Firehose gives up after 3 minutes.
const REQUEST_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0, 120.0,
];
/// Database writes: one command of up to about 15 MB of documents.
const WRITE_BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5, 10.0];

/// What the endpoint counts.
#[derive(Debug, Clone)]
pub struct EndpointMetrics {
    requests: Family<CodeLabel, Counter>,
    records_stored: Counter,
    records_dead_lettered: Family<ReasonLabel, Counter>,
    received_bytes: Counter,
    request_duration: Histogram,
    write_duration: Histogram,
    in_flight: Gauge,
    /// Open connections, kept by the listener.
    pub connections: Gauge,
}

impl Default for EndpointMetrics {
    /// Every dead-letter reason's series starts at 0, so that the first record set aside for
    /// it is an increase an alert can see (a series that appears at 1 has none).
    fn default() -> Self {
        let m = EndpointMetrics {
            requests: Family::default(),
            records_stored: Counter::default(),
            records_dead_lettered: Family::default(),
            received_bytes: Counter::default(),
            request_duration: Histogram::new(REQUEST_BUCKETS),
            write_duration: Histogram::new(WRITE_BUCKETS),
            in_flight: Gauge::default(),
            connections: Gauge::default(),
        };
        for reason in Rejection::KINDS {
            drop(
                m.records_dead_lettered
                    .get_or_create(&ReasonLabel { reason }),
            );
        }
        m
    }
}

impl EndpointMetrics {
    /// A registry holding these metrics, named `firehose_endpoint_*`.
    pub fn registry(&self) -> Registry {
        let mut r = Registry::with_prefix("firehose_endpoint");
        r.register(
            "requests",
            "Requests answered, by status code",
            self.requests.clone(),
        );
        r.register(
            "records_stored",
            "Records upserted into the target collection",
            self.records_stored.clone(),
        );
        r.register(
            "records_dead_lettered",
            "Records written to the dead-letter collection, by reason",
            self.records_dead_lettered.clone(),
        );
        r.register_with_unit(
            "received",
            "Request body bytes received, after decompression",
            Unit::Bytes,
            self.received_bytes.clone(),
        );
        r.register_with_unit(
            "request_duration",
            "Time from a delivery's headers to its answer",
            Unit::Seconds,
            self.request_duration.clone(),
        );
        r.register_with_unit(
            "database_write_duration",
            "Time one write to MongoDB took (its commands, and the connection when it made one), failed ones and those the request's deadline cut short included",
            Unit::Seconds,
            self.write_duration.clone(),
        );
        r.register(
            "requests_in_flight",
            "Deliveries being received or stored now",
            self.in_flight.clone(),
        );
        r.register(
            "connections",
            "Open client connections",
            self.connections.clone(),
        );
        r
    }

    /// A request has begun; the guard counts it as in flight until it is dropped.
    pub fn begin(&self) -> InFlight {
        self.in_flight.inc();
        InFlight(self.in_flight.clone())
    }

    /// A request was answered with `code` after `seconds`, having received `bytes`.
    pub fn answered(&self, code: u16, seconds: f64, bytes: usize) {
        self.requests.get_or_create(&CodeLabel { code }).inc();
        self.request_duration.observe(seconds);
        self.received_bytes.inc_by(bytes as u64);
    }

    /// A request off the delivery path (an unknown path, a wrong method on a health route) was
    /// answered `code`: counted, but not in the delivery's histograms. Health checks that
    /// succeed are not counted.
    pub fn answered_elsewhere(&self, code: u16) {
        self.requests.get_or_create(&CodeLabel { code }).inc();
    }

    /// A write (one or more commands) took `seconds`.
    pub fn wrote(&self, seconds: f64) {
        self.write_duration.observe(seconds);
    }

    /// `n` records were stored.
    pub fn stored(&self, n: usize) {
        self.records_stored.inc_by(n as u64);
    }

    /// A record was dead-lettered for `reason`.
    pub fn dead_lettered(&self, reason: &'static str) {
        self.records_dead_lettered
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }
}

/// A request in flight: counted down when dropped, also when the client goes away mid-request.
#[derive(Debug)]
pub struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Every dead-letter reason is served from the start, at 0, and every rejection's kind is
    // one of them.
    #[test]
    fn every_dead_letter_reason_is_served_from_zero() {
        let m = EndpointMetrics::default();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &m.registry()).unwrap();
        for reason in Rejection::KINDS {
            let line =
                format!("firehose_endpoint_records_dead_lettered_total{{reason=\"{reason}\"}} 0");
            assert!(text.contains(&line), "{line} missing from:\n{text}");
        }
        let every = [
            Rejection::Empty,
            Rejection::Base64(String::new()),
            Rejection::NotUtf8(String::new()),
            Rejection::NotJson(String::new()),
            Rejection::NotObject,
            Rejection::ExtendedJson(String::new()),
            Rejection::BadId("null"),
            Rejection::BadFieldName(String::new()),
            Rejection::TooLarge(0),
        ];
        for r in every {
            assert!(Rejection::KINDS.contains(&r.kind()), "{}", r.kind());
        }
    }
}
