//! The dashboard's reads of the readings collection: node names, each node's latest report,
//! bucketed series and motion marks (aggregation pipelines from [`super::query`], run inside
//! MongoDB), raw readings for CSV, and the `{nodeName: 1, recordedAt: 1}` index they all use.
//! Every call is bounded in time (`--query-timeout`), so a database that stops answering becomes a
//! [`MongoError::Unavailable`] in seconds instead of a hung page; a query the server itself
//! stops at that limit is [`ReadError::TooSlow`], a long window rather than an outage.

use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{stream, Stream, TryStreamExt};
use mongodb::bson::{doc, Bson, Document};
use mongodb::{Collection, IndexModel};
use tokio::sync::OnceCell;

use super::config::Config;
use super::convert::number;
use super::query::{chart_pipeline, motion_pipeline, series_pipeline, Field, Window};
use crate::mongo::{classify, connect, describe, redact_credentials, MongoError};
use crate::report::field;
use crate::shared_read::SharedRead;

/// How long the list of node names is reused: `distinct` reads the whole index, and the page
/// asks every two seconds; a new node's tile appears within this.
pub const NAMES_TTL: Duration = Duration::from_secs(30);
/// How long each node's latest report is reused: shorter than the page's two seconds between
/// asks, so that one page gets a fresh sweep each time, and many pages share one.
pub const LATEST_TTL: Duration = Duration::from_secs(1);
/// How many nodes' latest reports a sweep asks for at once: with the API's
/// [`super::limit::MAX_QUERYING`] turns, the driver's pool of 10 connections (the health
/// check's one query at a time may wait a moment in the driver for one of them).
pub const NODE_QUERIES: usize = 2;
/// How far ahead of the dashboard's clock a node's latest reading may be dated. A reading
/// from a node whose clock ran ahead (a day, say, before NTP set it right) would otherwise be
/// its latest until that time came, shown as new and never stale while the node is silent, and
/// outside every chart, whose window ends now. A minute allows for clocks that differ a little
/// and for the time a reading takes to be stored and read.
pub const FUTURE_SLACK: Duration = Duration::from_secs(60);
/// The index every query of the dashboard uses.
pub const INDEX_NAME: &str = "nodeName_1_recordedAt_1";
/// How much sooner than the dashboard gives up on a query the server is asked to stop it
/// (`maxTimeMS`), at most: time for the server's answer to come back, so that a query that is
/// merely slow is told apart from a database that does not answer. A tenth of a shorter
/// `--query-timeout`.
pub const SERVER_LIMIT_MARGIN: Duration = Duration::from_secs(1);
/// The server's code for a command stopped at its `maxTimeMS` (MaxTimeMSExpired).
const MAX_TIME_MS_EXPIRED: i32 = 50;

/// Why a read failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// The database did not answer, or refused (see [`MongoError`]).
    #[error("{0}")]
    Mongo(#[from] MongoError),
    /// The server answered that it stopped the query at its time limit: the database is up,
    /// and the window holds more than it reads in `--query-timeout` (this long).
    #[error("this window took longer than --query-timeout ({0:?}) to read: choose a shorter window or raise --query-timeout")]
    TooSlow(Duration),
}

/// Whether `e` says the database was not reached (no server selected, DNS, the connection),
/// rather than what it answered.
fn unreached(e: &mongodb::error::Error) -> bool {
    use mongodb::error::ErrorKind;
    matches!(
        *e.kind,
        ErrorKind::ServerSelection { .. }
            | ErrorKind::DnsResolve { .. }
            | ErrorKind::Io(_)
            | ErrorKind::ConnectionPoolCleared { .. }
    )
}

/// The `maxTimeMS` a query carries for a client that waits `timeout`: [`SERVER_LIMIT_MARGIN`]
/// or a tenth less, whichever is shorter, and at least a millisecond (0 would be no limit).
pub fn server_time_limit(timeout: Duration) -> Duration {
    let margin = (timeout / 10).min(SERVER_LIMIT_MARGIN);
    timeout.saturating_sub(margin).max(Duration::from_millis(1))
}

/// One bucket of a series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// Bucket start, milliseconds since the epoch.
    pub t_ms: i64,
    /// Mean of the bucket's readings.
    pub avg: f64,
    /// Smallest reading.
    pub min: f64,
    /// Largest reading.
    pub max: f64,
    /// How many readings.
    pub count: i64,
}

/// A bucket holding motion, and how many moving readings it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    /// Bucket start, milliseconds since the epoch.
    pub t_ms: i64,
    /// How many `isMoving: true` readings.
    pub count: i64,
}

/// What creating the index came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexOutcome {
    /// It exists now (made, or already there).
    Ready,
    /// The user may not create it (a read-only user): the message says how to.
    NotAllowed(String),
    /// The server did not answer `createIndexes` within this long (`--query-timeout`). On a
    /// collection of many millions of readings the build simply takes longer, and goes on in
    /// the server (asking again joins it); or the database is down.
    Unanswered(Duration),
}

/// The readings collection, read-only.
#[derive(Clone)]
pub struct Store {
    /// Built on first use: see [`Store::new`].
    reports: Arc<OnceCell<Collection<Document>>>,
    database: String,
    collection: String,
    uri: String,
    timeout: Duration,
    /// The `maxTimeMS` each query carries: [`server_time_limit`] of `timeout`.
    server_limit: Duration,
    /// The node names, read for all requests at once and kept [`NAMES_TTL`].
    names: Arc<SharedRead<Vec<String>, ReadError>>,
    /// Each node's latest report, read for all requests at once and kept [`LATEST_TTL`].
    latest: Arc<SharedRead<Latest, ReadError>>,
    /// Whether the readings can be read: one check at a time for every probe, never reused.
    readable: Arc<SharedRead<(), ReadError>>,
}

/// Each node's name and latest report (see [`Store::latest`]), sorted by name; a node with
/// none dated before [`FUTURE_SLACK`] from now is left out.
pub type Latest = Arc<Vec<(String, Document)>>;

impl Store {
    /// A store for the configured collection. A connection string that can never work is
    /// refused here; the client itself is built on first use, and again after a failure, so
    /// this succeeds while the database is down or DNS is not ready (a `mongodb+srv://`
    /// string is looked up when the client is built, and a Pi may start before its network):
    /// the page then says why, and recovers.
    pub async fn new(config: &Config) -> Result<Store, MongoError> {
        crate::mongo::check_uri(&config.uri)
            .await
            .map_err(MongoError::Fatal)?;
        Ok(Store {
            reports: Arc::default(),
            database: config.database.clone(),
            collection: config.collection.clone(),
            uri: config.uri.clone(),
            timeout: config.query_timeout,
            server_limit: server_time_limit(config.query_timeout),
            names: SharedRead::new(NAMES_TTL),
            latest: SharedRead::new(LATEST_TTL),
            readable: SharedRead::new(Duration::ZERO),
        })
    }

    /// The readings collection, its client built now if it is not yet (within the query
    /// timeout); a failure, said as [`crate::mongo::classify`] says it, is tried again by the
    /// next call.
    async fn reports(&self) -> Result<&Collection<Document>, MongoError> {
        let build = self.reports.get_or_try_init(|| async {
            let client = connect(&self.uri, "sensehat-dashboard").await?;
            Ok(client.database(&self.database).collection(&self.collection))
        });
        match tokio::time::timeout(self.timeout, build).await {
            Ok(built) => built,
            Err(_) => Err(MongoError::Unavailable(format!(
                "the connection string's DNS lookups did not finish within {:?}",
                self.timeout
            ))),
        }
    }

    /// Run `f` within the configured timeout, its errors classified and redacted. Each query
    /// also asks the server to stop a little before that limit (`maxTimeMS`), so work this
    /// gives up on is not left running there while the page asks again (the CSV's cursor,
    /// which streams for as long as the download takes, excepted), and so a server that is
    /// merely slow says so before the client's timer takes it for one that is away.
    async fn bounded<T, F>(&self, f: F) -> Result<T, ReadError>
    where
        F: IntoFuture<Output = mongodb::error::Result<T>>,
    {
        match tokio::time::timeout(self.timeout, f.into_future()).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) if server_code(&e) == Some(MAX_TIME_MS_EXPIRED) => {
                Err(ReadError::TooSlow(self.timeout))
            }
            // A refusal retrying cannot mend (a missing privilege) is the operator's to fix,
            // and is answered so, rather than as a database that is away.
            Ok(Err(e)) => Err(
                match refusal(&e).map_or_else(|| classify(e), MongoError::Fatal) {
                    MongoError::Unavailable(m) => {
                        MongoError::Unavailable(redact_credentials(&m, &self.uri))
                    }
                    MongoError::Fatal(m) => MongoError::Fatal(redact_credentials(&m, &self.uri)),
                }
                .into(),
            ),
            Err(_) => Err(self.no_answer().into()),
        }
    }

    /// What a read that got no answer within `--query-timeout` fails with.
    fn no_answer(&self) -> MongoError {
        MongoError::Unavailable(format!(
            "the database did not answer within {:?}",
            self.timeout
        ))
    }

    /// Create the `{nodeName: 1, recordedAt: 1}` index if it is missing.
    pub async fn ensure_index(&self) -> Result<IndexOutcome, MongoError> {
        let keys = doc! { field::NODE_NAME: 1, field::RECORDED_AT: 1 };
        let reports = self.reports().await?;
        // Looked for first, under any name: a read-only user, who may list indexes but not
        // create one, would otherwise be told at every start to have made what an admin did.
        if self.has_index(reports, &keys).await? {
            return Ok(IndexOutcome::Ready);
        }
        let model = IndexModel::builder().keys(keys).build();
        let made = tokio::time::timeout(self.timeout, reports.create_index(model)).await;
        match made {
            Ok(Ok(_)) => Ok(IndexOutcome::Ready),
            Ok(Err(e)) if crate::mongo::is_fatal(&e) => Ok(IndexOutcome::NotAllowed(format!(
                "cannot create the index {INDEX_NAME} ({}); a user with createIndex on {ns} can, in mongosh: \
                 db.getSiblingDB(\"{db}\").{coll}.createIndex({{{node}: 1, {at}: 1}})",
                redact_credentials(&describe(&e), &self.uri),
                ns = reports.namespace(),
                db = self.database,
                coll = self.collection,
                node = field::NODE_NAME,
                at = field::RECORDED_AT,
            ))),
            Ok(Err(e)) => Err(MongoError::Unavailable(redact_credentials(
                &classify(e).to_string(),
                &self.uri,
            ))),
            Err(_) => Ok(IndexOutcome::Unanswered(self.timeout)),
        }
    }

    /// Whether the collection has an index on exactly `keys`; `false` when the database
    /// answers but cannot tell (no collection yet, a user who may not list indexes), so that
    /// creating it is tried. `Err` when the database did not answer: a `createIndexes` that then
    /// goes unanswered is the database away, not an index build under way.
    async fn has_index(
        &self,
        reports: &Collection<Document>,
        keys: &Document,
    ) -> Result<bool, MongoError> {
        let listed = tokio::time::timeout(self.timeout, async {
            reports.list_indexes().await?.try_collect::<Vec<_>>().await
        })
        .await;
        match listed {
            Ok(Ok(indexes)) => Ok(indexes.iter().any(|i| &i.keys == keys)),
            Ok(Err(e)) if !unreached(&e) => Ok(false),
            Ok(Err(e)) => Err(MongoError::Unavailable(redact_credentials(
                &classify(e).to_string(),
                &self.uri,
            ))),
            Err(_) => Err(self.no_answer()),
        }
    }

    /// The BSON type of the newest document's `recordedAt` (by `_id`, which the index has)
    /// when it is not a date; `None` when it is, or there is no document.
    pub async fn recorded_at_not_a_date(&self) -> Result<Option<String>, ReadError> {
        let reports = self.reports().await?;
        let newest = self
            .bounded(
                reports
                    .find_one(doc! {})
                    .sort(doc! { field::ID: -1 })
                    .projection(doc! { field::RECORDED_AT: 1 })
                    .max_time(self.server_limit),
            )
            .await?;
        Ok(newest.and_then(|d| match d.get(field::RECORDED_AT) {
            Some(Bson::DateTime(_)) => None,
            Some(other) => Some(format!("{:?}", other.element_type())),
            None => Some("missing".to_owned()),
        }))
    }

    /// Every node name (a non-empty string), sorted; asked of the database at most every
    /// [`NAMES_TTL`].
    pub async fn node_names(&self) -> Result<Vec<String>, ReadError> {
        let store = self.clone();
        self.names
            .get(|| async move { store.distinct_names().await })
            .await
    }

    /// Each node's latest report, read at most every [`LATEST_TTL`] whatever the number of
    /// pages asking: one sweep of the nodes at a time, [`NODE_QUERIES`] queries at once, for
    /// every request that comes meanwhile.
    pub async fn latest_of_each(&self) -> Result<Latest, ReadError> {
        let store = self.clone();
        self.latest.get(|| async move { store.sweep().await }).await
    }

    async fn sweep(&self) -> Result<Latest, ReadError> {
        use futures_util::StreamExt;
        let names = self.node_names().await?;
        let queries = names.into_iter().map(|n| {
            let store = self.clone();
            async move { Ok::<_, ReadError>(store.latest(&n).await?.map(|d| (n, d))) }
        });
        let latest: Vec<Option<(String, Document)>> = stream::iter(queries)
            .buffered(NODE_QUERIES)
            .try_collect()
            .await?;
        Ok(Arc::new(latest.into_iter().flatten().collect()))
    }

    async fn distinct_names(&self) -> Result<Vec<String>, ReadError> {
        let reports = self.reports().await?;
        let names = self
            .bounded(
                reports
                    .distinct(field::NODE_NAME, doc! {})
                    .max_time(self.server_limit),
            )
            .await?;
        let mut names: Vec<String> = names
            .into_iter()
            // Only names the other routes can be asked for: `node=` with nothing is a
            // missing parameter, and a number or null has no name to ask by.
            .filter_map(|b| match b {
                Bson::String(s) if !s.is_empty() => Some(s),
                _ => None,
            })
            .collect();
        names.sort();
        Ok(names)
    }

    /// A node's latest report dated no later than [`FUTURE_SLACK`] from now, `None` for a node
    /// with none.
    pub async fn latest(&self, node: &str) -> Result<Option<Document>, ReadError> {
        let until = crate::clock::now_ms().saturating_add(FUTURE_SLACK.as_millis() as i64);
        let reports = self.reports().await?;
        self.bounded(
            reports
                .find_one(doc! {
                    field::NODE_NAME: node,
                    field::RECORDED_AT: { "$lte": mongodb::bson::DateTime::from_millis(until) },
                })
                .sort(doc! { field::RECORDED_AT: -1 })
                .max_time(self.server_limit),
        )
        .await
    }

    /// Whether a node has any report at all.
    pub async fn node_exists(&self, node: &str) -> Result<bool, ReadError> {
        let reports = self.reports().await?;
        Ok(self
            .bounded(
                reports
                    .find_one(doc! { field::NODE_NAME: node })
                    .projection(doc! { field::ID: 1 })
                    .max_time(self.server_limit),
            )
            .await?
            .is_some())
    }

    /// One node's `field` over `window` in buckets of `width` ms, bucketed in the database.
    pub async fn series(
        &self,
        node: &str,
        window: &Window,
        field: Field,
        width: i64,
    ) -> Result<Vec<Point>, ReadError> {
        let pipeline = series_pipeline(node, window, field, width);
        let docs = self.aggregate(pipeline).await?;
        Ok(docs.iter().filter_map(point).collect())
    }

    /// One node's buckets of `width` ms holding motion over `window`.
    pub async fn motion(
        &self,
        node: &str,
        window: &Window,
        width: i64,
    ) -> Result<Vec<Mark>, ReadError> {
        let docs = self.aggregate(motion_pipeline(node, window, width)).await?;
        Ok(docs
            .iter()
            .filter_map(|d| {
                Some(Mark {
                    t_ms: d.get_datetime("_id").ok()?.timestamp_millis(),
                    count: number(d.get("count")?)? as i64,
                })
            })
            .collect())
    }

    /// One node's `fields` and motion over `window` in buckets of `width` ms, in one pass:
    /// a series per field (in the order given) and the motion marks.
    pub async fn chart(
        &self,
        node: &str,
        window: &Window,
        fields: &[Field],
        width: i64,
    ) -> Result<(Vec<Vec<Point>>, Vec<Mark>), ReadError> {
        let docs = self
            .aggregate(chart_pipeline(node, window, fields, width))
            .await?;
        let mut series = vec![Vec::new(); fields.len()];
        let mut marks = Vec::new();
        for d in &docs {
            let Ok(t) = d.get_datetime("_id") else {
                continue;
            };
            let t_ms = t.timestamp_millis();
            for (i, points) in series.iter_mut().enumerate() {
                let get = |k: &str| d.get(format!("f{i}{k}")).and_then(number);
                if let (Some(avg), Some(min), Some(max), Some(n)) =
                    (get("avg"), get("min"), get("max"), get("n"))
                {
                    if n > 0.0 {
                        points.push(Point {
                            t_ms,
                            avg,
                            min,
                            max,
                            count: n as i64,
                        });
                    }
                }
            }
            match d.get("moving").and_then(number) {
                Some(n) if n > 0.0 => marks.push(Mark {
                    t_ms,
                    count: n as i64,
                }),
                _ => {}
            }
        }
        Ok((series, marks))
    }

    async fn aggregate(&self, pipeline: Vec<Document>) -> Result<Vec<Document>, ReadError> {
        let reports = self.reports().await?;
        self.bounded(async {
            let cursor = reports
                .aggregate(pipeline)
                .max_time(self.server_limit)
                .await?;
            cursor.try_collect().await
        })
        .await
    }

    /// One node's raw readings in the window, oldest first, as a stream in
    /// which every batch is bounded by the query timeout: the `find` of the first and each
    /// `getMore` after it. Nothing times the stream as a whole (a download reads it as fast
    /// as its client takes the rows), so a batch the database never answered used to hold the
    /// download, and its slot, for ever. A batch that fails or times out ends the stream with
    /// that error.
    pub async fn raw(
        &self,
        node: &str,
        window: &Window,
    ) -> Result<impl Stream<Item = Result<Document, ReadError>> + Send + 'static, ReadError> {
        let reports = self.reports().await?;
        let cursor = self
            .bounded(
                reports
                    .find(window.match_node(node))
                    .sort(doc! { field::RECORDED_AT: 1 }),
            )
            .await?;
        Ok(stream::unfold(
            Some((self.clone(), cursor)),
            |state| async move {
                let (store, mut cursor) = state?;
                match store.bounded(cursor.try_next()).await {
                    Ok(Some(d)) => Some((Ok(d), Some((store, cursor)))),
                    Ok(None) => None,
                    Err(e) => Some((Err(e), None)),
                }
            },
        ))
    }

    /// Whether the window holds more than `n` of the node's readings (skipping along the index).
    pub async fn more_than(&self, node: &str, window: &Window, n: u64) -> Result<bool, ReadError> {
        let past = self
            .reports()
            .await?
            .find_one(window.match_node(node))
            .sort(doc! { field::RECORDED_AT: 1 })
            .skip(n)
            .projection(doc! { field::ID: 1 })
            .max_time(self.server_limit);
        Ok(self.bounded(past).await?.is_some())
    }

    /// Whether the dashboard can read the readings: one `find` of a single `_id`. A ping would
    /// answer for a user that may not read the collection, whose every page then fails. The
    /// health checks take no turn at querying (a probe must not be answered busy while the
    /// database is fine), so those that come while one runs take its outcome: however many
    /// probes, one such query at a time.
    pub async fn readable(&self) -> Result<(), ReadError> {
        let store = self.clone();
        self.readable
            .get(|| async move { store.find_one_id().await })
            .await
    }

    async fn find_one_id(&self) -> Result<(), ReadError> {
        let reports = self.reports().await?;
        self.bounded(
            reports
                .find_one(doc! {})
                .projection(doc! { field::ID: 1 })
                .max_time(self.server_limit),
        )
        .await?;
        Ok(())
    }
}

/// A command the server refused for a reason retrying cannot mend (see
/// [`crate::mongo::is_fatal`]), in the server's words, with what to grant when it is most
/// likely a missing privilege; `None` for any other error. A failed authentication is left to
/// [`classify`], which calls it unavailable: a new user may not have reached every server yet.
fn refusal(e: &mongodb::error::Error) -> Option<String> {
    if !crate::mongo::is_fatal(e) {
        return None;
    }
    match *e.kind {
        mongodb::error::ErrorKind::Command(ref c) if c.code == 13 || c.code == 8000 => Some(format!(
            "{} (most often a missing privilege: the dashboard's user needs find on the collection, which the built-in read role gives)",
            describe(e)
        )),
        mongodb::error::ErrorKind::Command(_) => Some(describe(e)),
        _ => None,
    }
}

/// The server's error code, for a command it refused.
fn server_code(e: &mongodb::error::Error) -> Option<i32> {
    match *e.kind {
        mongodb::error::ErrorKind::Command(ref c) => Some(c.code),
        _ => None,
    }
}

/// A `$group` result as a [`Point`]; `None` for a malformed one.
fn point(d: &Document) -> Option<Point> {
    Some(Point {
        t_ms: d.get_datetime("_id").ok()?.timestamp_millis(),
        avg: number(d.get("avg")?)?,
        min: number(d.get("min")?)?,
        max: number(d.get("max")?)?,
        count: number(d.get("count")?)? as i64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // The server is asked to stop a query soon enough for its answer to come back before the
    // client gives up, and never with 0 (no limit).
    #[test]
    fn the_server_stops_a_query_before_the_client_does() {
        let ms = Duration::from_millis;
        assert_eq!(server_time_limit(Duration::from_secs(10)), ms(9_000));
        assert_eq!(server_time_limit(Duration::from_secs(60)), ms(59_000));
        assert_eq!(server_time_limit(ms(2_000)), ms(1_800));
        assert_eq!(server_time_limit(ms(1)), ms(1));
    }

    // The index's name is the one MongoDB gives the index on these keys.
    #[test]
    fn index_name_follows_the_keys() {
        let made = format!("{}_1_{}_1", field::NODE_NAME, field::RECORDED_AT);
        assert_eq!(INDEX_NAME, made);
    }
}
