//! The dashboard's Prometheus metrics, counted by a middleware around every route and exposed on
//! `--metrics-listen` with `/healthz` and `/readyz` (the readings collection can be read): see
//! docs/dashboard.md for the list.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// A route as the router declares it (`/api/series`, not the query string): a handful of values.
/// A path no route matches is counted as `other`, so a scanner cannot add label values.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    route: String,
}

/// A route and the status code it answered with.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteCodeLabel {
    route: String,
    code: u16,
}

/// Request durations: a tile's read takes milliseconds, a month's chart or CSV seconds, and
/// `--query-timeout` (10 s by default) ends a read that takes longer.
const REQUEST_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0,
];

/// What the dashboard counts.
#[derive(Debug, Clone)]
pub struct DashboardMetrics {
    requests: Family<RouteCodeLabel, Counter>,
    request_duration: Family<RouteLabel, Histogram>,
}

impl Default for DashboardMetrics {
    fn default() -> Self {
        DashboardMetrics {
            requests: Family::default(),
            request_duration: Family::new_with_constructor(|| Histogram::new(REQUEST_BUCKETS)),
        }
    }
}

impl DashboardMetrics {
    /// A registry holding these metrics, named `sensehat_dashboard_*`.
    pub fn registry(&self) -> Registry {
        let mut r = Registry::with_prefix("sensehat_dashboard");
        r.register(
            "requests",
            "Requests answered, by route and status code",
            self.requests.clone(),
        );
        r.register_with_unit(
            "request_duration",
            "Time from a request to its answer's headers, by route (a CSV download streams on after them)",
            Unit::Seconds,
            self.request_duration.clone(),
        );
        r
    }

    /// `route` answered with `code` after `seconds`.
    pub fn answered(&self, route: &str, code: u16, seconds: f64) {
        self.requests
            .get_or_create(&RouteCodeLabel {
                route: route.to_owned(),
                code,
            })
            .inc();
        self.request_duration
            .get_or_create(&RouteLabel {
                route: route.to_owned(),
            })
            .observe(seconds);
    }
}

/// The middleware: count each request under its matched route.
pub async fn track(
    State(metrics): State<Arc<DashboardMetrics>>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("other", MatchedPath::as_str)
        .to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    metrics.answered(
        &route,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    // Requests are counted by route and code, with a duration per route, in the text format.
    #[test]
    fn counted_by_route_and_code() {
        let m = DashboardMetrics::default();
        m.answered("/api/nodes", 200, 0.003);
        m.answered("/api/nodes", 503, 5.0);
        m.answered("other", 404, 0.0001);
        let text = crate::metrics::encode(&m.registry()).unwrap();
        assert!(
            text.contains(
                "sensehat_dashboard_requests_total{route=\"/api/nodes\",code=\"200\"} 1\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("sensehat_dashboard_requests_total{route=\"other\",code=\"404\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "sensehat_dashboard_request_duration_seconds_count{route=\"/api/nodes\"} 2\n"
            ),
            "{text}"
        );
    }
}
