//! The read-only web dashboard (feature `dashboard`): a page of tiles and charts of every
//! node's readings, the JSON API behind it, a CSV download, and charts rendered to files.
//!
//! - [`config`]: the command line and the plain [`config::Config`].
//! - [`query`]: fields, checked windows, bucket widths and the aggregation pipelines (pure).
//! - [`store`]: running them against the readings collection, bounded in time; a read every
//!   page asks for at once (the node list) made once for all ([`crate::shared_read`]).
//! - [`api`]: the JSON routes and their error answers.
//! - [`convert`]: stored readings as the API's JSON.
//! - [`csv`]: the streamed CSV download.
//! - [`page`]: the page and its assets, built in.
//! - [`render`]: one node's chart as a PNG or SVG file, with `plotters`.
//! - [`metrics`]: requests by route and status, served on `--metrics-listen`.
//! - [`limit`]: connections served at once, and API requests querying MongoDB at once.
//! - [`host`]: the host names it answers to, against DNS rebinding.
//!
//! Bucketing happens inside MongoDB (`$group` on a bucket computed from `recordedAt`), so a
//! chart of a month costs 600 documents on the wire rather than five million.

pub mod api;
pub mod config;
pub mod convert;
pub mod csv;
pub mod host;
pub mod limit;
pub mod metrics;
pub mod page;
pub mod query;
pub mod render;
pub mod store;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use tracing::{info, warn};

use config::Config;
use metrics::DashboardMetrics;
use store::{IndexOutcome, Store};

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The readings collection.
    pub store: Store,
    /// Silence after which a node is stale.
    pub stale_after: Duration,
    /// What the requests count.
    pub metrics: Arc<DashboardMetrics>,
    /// The API's turns at querying the database.
    pub turns: limit::Turns,
    /// The API's failures, said once per outage.
    pub failures: Arc<crate::say_once::Failures>,
    /// The host names answered besides localhost and IP addresses.
    pub allowed_hosts: Arc<host::AllowedHosts>,
    /// The most rows one CSV download holds.
    pub csv_max_rows: u64,
}

/// The router: the page, its assets and the API, each request counted, at most
/// [`limit::MAX_QUERYING`] API requests querying the database at once, and only for a `Host`
/// that [`host::check`] allows. Tests call it directly.
pub fn app(state: AppState) -> Router {
    let counting = axum::middleware::from_fn_with_state(state.metrics.clone(), metrics::track);
    let host_check = axum::middleware::from_fn_with_state(state.allowed_hosts.clone(), host::check);
    let turns = axum::middleware::from_fn_with_state(state.turns.clone(), limit::take_turn);
    let say_failures =
        axum::middleware::from_fn_with_state(state.failures.clone(), api::say_failures);
    // The node list is read by one shared sweep however many pages ask (see
    // [`Store::latest_of_each`]), which bounds its queries itself: a page waiting for it must
    // not hold a turn that a chart could use. The health check, likewise one read for every
    // probe at once ([`Store::readable`]), must say whether the database answers, not be
    // answered busy while pages hold every turn.
    let shared = Router::new()
        .route("/api/nodes", get(api::nodes))
        .route("/api/health", get(api::health));
    let api = Router::new()
        .route("/api/series", get(api::series))
        .route("/api/motion", get(api::motion))
        .route("/api/chart", get(api::chart))
        .route(limit::CSV_PATH, get(csv::csv))
        .route_layer(turns)
        .merge(shared)
        .route_layer(say_failures);
    Router::new()
        .route("/", get(page::index))
        .route("/assets/dashboard.js", get(page::script))
        .route("/assets/dashboard.css", get(page::style))
        .merge(api)
        .layer(host_check)
        .layer(counting)
        .with_state(state)
}

/// How long to wait between tries at creating the index while the database is down, or a
/// build that outlasts `--query-timeout` goes on (a try then joins it).
const INDEX_RETRY: Duration = Duration::from_secs(30);

/// Create the index once the database answers; a user without the right gets told how. Then
/// say so if the readings' times are not dates ([`check_dates`]). Each reason to wait (an
/// error, or no answer in time) is said once, not at every try.
async fn ensure_index(store: Store) {
    let (mut said_down, mut said_unanswered) = (false, false);
    loop {
        match store.ensure_index().await {
            Ok(IndexOutcome::Ready) => {
                info!(index = store::INDEX_NAME, "index ready");
                return check_dates(&store).await;
            }
            Ok(IndexOutcome::NotAllowed(how)) => {
                warn!("{how}");
                return check_dates(&store).await;
            }
            Ok(IndexOutcome::Unanswered(within)) => {
                if !std::mem::replace(&mut said_unanswered, true) {
                    warn!(
                        index = store::INDEX_NAME,
                        "the database did not answer createIndexes within {within:?} (--query-timeout): on a large collection it is most likely still building the index, and charts are slow until it is done; or the database is down; trying again every 30 s, and \"index ready\" is logged once the index is there"
                    );
                }
                tokio::time::sleep(INDEX_RETRY).await;
            }
            Err(e) => {
                if !std::mem::replace(&mut said_down, true) {
                    warn!(error = %e, "cannot create the index yet; trying again every 30 s");
                }
                tokio::time::sleep(INDEX_RETRY).await;
            }
        }
    }
}

/// Warn when the newest reading's `recordedAt` is not a BSON date: every query ranges over
/// dates, so such readings show nowhere. It is what the Firehose endpoint stores without
/// `--parse-dates recordedAt`, as the original endpoint did.
async fn check_dates(store: &Store) {
    if let Ok(Some(kind)) = store.recorded_at_not_a_date().await {
        warn!(
            recorded_at = %kind,
            "the newest reading's recordedAt is not a date, so the charts, tiles and CSV cannot show it; for the Firehose endpoint's collection, run firehose-endpoint with --parse-dates recordedAt (FIREHOSE_PARSE_DATES=recordedAt): readings stored from then on have dates"
        );
    }
}

/// Why the dashboard could not serve.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The listen address is taken or not ours.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The client could not be built.
    #[error("{0}")]
    Mongo(#[from] crate::mongo::MongoError),
    /// The metrics address is taken or not ours.
    #[error("{0}")]
    Metrics(#[from] crate::metrics::ListenError),
}

/// What `sensehat-dashboard check-config` found: a summary to print, or why it cannot start.
/// Does not contact MongoDB.
pub async fn check_config(config: &Config) -> Result<String, String> {
    crate::mongo::check_uri(&config.uri).await?;
    Ok(format!(
        "listen: {}\n\
         read: {}.{}\n\
         stale after: {:?}; query timeout: {:?}\n\
         metrics: {}\n\
         answers to: {}\n\
         MongoDB connection string: well formed (not contacted)\n",
        config.listen,
        config.database,
        config.collection,
        config.stale_after,
        config.query_timeout,
        config.metrics_listen.as_deref().unwrap_or("off"),
        config.allowed_hosts,
    ))
}

/// Serve the dashboard until `shutdown` resolves.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    // Before anything else: an address in use is said at once.
    let metrics_listener = crate::metrics::bind_if(config.metrics_listen.as_deref()).await?;
    let store = Store::new(&config).await?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| RunError::Listen {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().unwrap_or(config.listen);
    tokio::spawn(ensure_index(store.clone()));
    info!(listen = %addr, database = %config.database, collection = %config.collection, "serving the dashboard");
    let counted = Arc::new(DashboardMetrics::default());
    if let Some(l) = metrics_listener {
        let reads = store.clone();
        let ready: crate::metrics::Readiness = Arc::new(move || {
            let store = reads.clone();
            Box::pin(async move {
                store
                    .readable()
                    .await
                    .map_err(|e| format!("cannot read the readings: {e}"))
            })
        });
        crate::metrics::spawn(l, Arc::new(counted.registry()), ready);
    }
    let state = AppState {
        store,
        stale_after: config.stale_after,
        metrics: counted,
        turns: limit::turns(),
        failures: Arc::default(),
        allowed_hosts: Arc::new(config.allowed_hosts),
        csv_max_rows: config.csv_max_rows,
    };
    let service = hyper_util::service::TowerToHyperService::new(app(state));
    let limits = crate::listener::Limits::new(limit::MAX_CONNECTIONS);
    crate::listener::serve(listener, service, limits, shutdown).await;
    info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(uri: &str) -> Config {
        Config {
            listen: config::DEFAULT_LISTEN.parse().unwrap(),
            uri: uri.to_owned(),
            database: "monitors".into(),
            collection: "firehose".into(),
            stale_after: Duration::from_secs(5),
            query_timeout: Duration::from_secs(10),
            metrics_listen: None,
            allowed_hosts: host::AllowedHosts::default(),
            csv_max_rows: csv::MAX_CSV_ROWS,
        }
    }

    // check-config says what the dashboard would read and where it would listen, without
    // contacting the database; a connection string that cannot work is refused unquoted.
    #[tokio::test]
    async fn check_config_says_what_it_found() {
        let found = check_config(&config("mongodb://pi:s3cret@db.example.net/"))
            .await
            .unwrap();
        assert!(found.contains("listen: 127.0.0.1:8080\n"), "{found}");
        assert!(found.contains("read: monitors.firehose\n"), "{found}");
        assert!(
            found.contains("stale after: 5s; query timeout: 10s"),
            "{found}"
        );
        assert!(!found.contains("s3cret"), "{found}");
        let e = check_config(&config("mongodb://pi:s3cret?x@db.example.net/"))
            .await
            .unwrap_err();
        assert!(!e.contains("s3cret"), "{e}");
    }
}
