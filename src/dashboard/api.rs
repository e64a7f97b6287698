//! The JSON API: `/api/nodes`, `/api/series`, `/api/motion` and `/api/health`. Every error
//! answer is `{"error": "one line"}` with a status saying whose fault it is: 400 for a bad
//! parameter, 404 for an unknown node, 422 for a CSV window holding too many readings, 503
//! while the database does not answer, too many requests are querying it, or a query took
//! longer than `--query-timeout` (only the first is an outage, said in the log).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::convert::report_json;
use super::query::{iso, Field, Window, WindowError};
use super::store::{ReadError, Store};
use super::AppState;
use crate::mongo::MongoError;
use crate::report::field;
use crate::say_once::{Failures, Said};

/// The window a request without `from` and `to` gets: the last day.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(86_400);

/// Why a request was not answered with data.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A parameter is missing or wrong (400).
    #[error("{0}")]
    BadRequest(String),
    /// No such node (404).
    #[error("{0}")]
    NotFound(String),
    /// The window holds more readings than one answer may (422): a shorter one would do.
    #[error("{0}")]
    TooMany(String),
    /// The database is unreachable or too slow (503); the page retries.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// Too many requests are querying the database already (503); the page retries.
    #[error("busy: {0}")]
    Busy(String),
    /// The server stopped the query at `--query-timeout` (503): the database is up, the
    /// window too long for it.
    #[error("{0}")]
    TooSlow(String),
    /// The database refuses for a reason retrying will not fix, such as a missing privilege (500).
    #[error("database refused: {0}")]
    Refused(String),
}

impl From<MongoError> for ApiError {
    fn from(e: MongoError) -> Self {
        match e {
            MongoError::Unavailable(m) => ApiError::Unavailable(m),
            MongoError::Fatal(m) => ApiError::Refused(m),
        }
    }
}

impl From<ReadError> for ApiError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Mongo(e) => e.into(),
            e @ ReadError::TooSlow(_) => ApiError::TooSlow(e.to_string()),
        }
    }
}

impl From<WindowError> for ApiError {
    fn from(e: WindowError) -> Self {
        ApiError::BadRequest(e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::TooMany(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unavailable(_) | ApiError::Busy(_) | ApiError::TooSlow(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Refused(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let message = one_line(&self.to_string());
        let mut response = (status, Json(json!({ "error": &message }))).into_response();
        // The database's failures are said by [`say_failures`], once per outage; a flood's
        // every refused request is not worth a line at all, nor a long window on a database
        // that answers.
        if status.is_server_error() && !matches!(self, ApiError::Busy(_) | ApiError::TooSlow(_)) {
            response.extensions_mut().insert(Failed(message));
        }
        response
    }
}

/// A response's failure for the database's sake (a 503 but for a busy one, or a 500), for
/// [`say_failures`] to say.
#[derive(Debug, Clone)]
struct Failed(String);

/// Middleware for the API's routes: log the database's failures through [`Failures`].
pub async fn say_failures(
    State(failures): State<Arc<Failures>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let response = next.run(req).await;
    let now = Instant::now();
    if let Some(Failed(error)) = response.extensions().get::<Failed>() {
        match failures.failed(now) {
            Some(Said::Began) => tracing::warn!(%error, "requests are failing"),
            Some(Said::GoesOn { lasted, unsaid }) => tracing::warn!(
                %error,
                failing_for_seconds = lasted.as_secs(),
                failed_since_last_said = unsaid,
                "requests still failing"
            ),
            None => {}
        }
    } else if response.status().is_success() {
        if let Some(lasted) = failures.answered(now) {
            tracing::info!(
                failed_for_seconds = lasted.as_secs(),
                "requests answered again"
            );
        }
    }
    response
}

/// A message on one line of at most 300 characters: driver errors list every server's state.
fn one_line(message: &str) -> String {
    let flat: String = message.split_whitespace().collect::<Vec<_>>().join(" ");
    match flat.char_indices().nth(300) {
        Some((i, _)) => format!("{}…", &flat[..i]),
        None => flat,
    }
}

/// The query string, as given.
pub type Params = Query<HashMap<String, String>>;

/// A required parameter.
pub fn required<'a>(p: &'a HashMap<String, String>, name: &str) -> Result<&'a str, ApiError> {
    p.get(name)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ApiError::BadRequest(format!("missing parameter {name}")))
}

/// The window of `from` and `to`; either may be left out (to: now, from: a day before to).
pub fn window(p: &HashMap<String, String>) -> Result<Window, ApiError> {
    let to_ms = match p.get("to") {
        Some(t) => super::query::parse_time("to", t)?,
        None => crate::clock::now_ms(),
    };
    let from_ms = match p.get("from") {
        Some(f) => super::query::parse_time("from", f)?,
        None => to_ms - DEFAULT_WINDOW.as_millis() as i64,
    };
    Ok(Window::new(from_ms, to_ms)?)
}

/// The node named by `node`, which must have readings.
pub async fn known_node(store: &Store, p: &HashMap<String, String>) -> Result<String, ApiError> {
    let node = required(p, "node")?;
    if !store.node_exists(node).await? {
        return Err(ApiError::NotFound(format!(
            "no readings from a node named {node:?}"
        )));
    }
    Ok(node.to_owned())
}

/// `GET /api/nodes`: each node's latest report under its stored field names, with
/// `ageSeconds`, `stale` and `staleAfterSeconds` (`--stale-after`), sorted by name.
///
/// `nodeName` is the name the node was asked by, not the document's own: a document whose
/// `nodeName` is an array is found under each of its elements, and the page asks for the
/// node's chart by the name given here, which must be one the other routes know.
pub async fn nodes(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let latest = state.store.latest_of_each().await?;
    let now = crate::clock::now_ms();
    let stale_ms = state.stale_after.as_millis() as i64;
    let nodes: Vec<Value> = latest
        .iter()
        .map(|(name, doc)| {
            let at = doc
                .get_datetime(field::RECORDED_AT)
                .map(|t| t.timestamp_millis());
            let mut o = report_json(doc);
            o.insert(field::NODE_NAME.into(), json!(name));
            // Saturating: a date near i64::MIN ms (a document stored by hand) would wrap to an
            // age of 0, a fresh tile, or panic in a debug build.
            let age_ms = at.map(|t| now.saturating_sub(t).max(0)).ok();
            o.insert(
                "ageSeconds".into(),
                json!(age_ms.map(|a| a as f64 / 1000.0)),
            );
            o.insert("stale".into(), json!(age_ms.is_none_or(|a| a > stale_ms)));
            // The page counts the age on between answers, and marks the tile stale by this.
            o.insert("staleAfterSeconds".into(), json!(stale_ms as f64 / 1000.0));
            Value::Object(o)
        })
        .collect();
    Ok(Json(Value::Array(nodes)))
}

/// `GET /api/series?node=&field=&from=&to=`: buckets of one field, computed in the database.
pub async fn series(
    State(state): State<AppState>,
    Query(p): Params,
) -> Result<Json<Value>, ApiError> {
    let name = required(&p, "field")?;
    let field = Field::parse(name).ok_or_else(|| {
        ApiError::BadRequest(format!("unknown field {name:?}: use {}", Field::names()))
    })?;
    let window = window(&p)?;
    let node = known_node(&state.store, &p).await?;
    let width = window.bucket_ms();
    let points = state.store.series(&node, &window, field, width).await?;
    let points: Vec<Value> = points.iter().map(point_json).collect();
    Ok(Json(json!({
        "node": node, "field": field.path(), "unit": field.unit(),
        "from": iso(window.from_ms), "to": iso(window.to_ms),
        "bucketSeconds": width as f64 / 1000.0, "points": points,
    })))
}

/// `GET /api/motion?node=&from=&to=`: the series' buckets that hold `isMoving: true`
/// readings, with how many (at most 600, like a series).
pub async fn motion(
    State(state): State<AppState>,
    Query(p): Params,
) -> Result<Json<Value>, ApiError> {
    let window = window(&p)?;
    let node = known_node(&state.store, &p).await?;
    let width = window.bucket_ms();
    let marks = state.store.motion(&node, &window, width).await?;
    let marks: Vec<Value> = marks
        .iter()
        .map(|m| json!({ "t": iso(m.t_ms), "count": m.count }))
        .collect();
    Ok(Json(json!({
        "node": node, "from": iso(window.from_ms), "to": iso(window.to_ms),
        "bucketSeconds": width as f64 / 1000.0, "marks": marks,
    })))
}

/// `GET /api/chart?node=&from=&to=`: what the page draws for one node in one pass over its
/// readings: `series` with temperature, humidity and pressure (each as `/api/series` gives its
/// `points`) and `marks` (as `/api/motion`).
pub async fn chart(
    State(state): State<AppState>,
    Query(p): Params,
) -> Result<Json<Value>, ApiError> {
    let window = window(&p)?;
    let node = known_node(&state.store, &p).await?;
    let width = window.bucket_ms();
    let fields = super::query::CHART_FIELDS;
    let (series, marks) = state.store.chart(&node, &window, &fields, width).await?;
    let series: serde_json::Map<String, Value> = fields
        .iter()
        .zip(&series)
        .map(|(f, points)| {
            (
                f.path().to_owned(),
                Value::Array(points.iter().map(point_json).collect()),
            )
        })
        .collect();
    let marks: Vec<Value> = marks
        .iter()
        .map(|m| json!({ "t": iso(m.t_ms), "count": m.count }))
        .collect();
    Ok(Json(json!({
        "node": node, "from": iso(window.from_ms), "to": iso(window.to_ms),
        "bucketSeconds": width as f64 / 1000.0, "series": series, "marks": marks,
    })))
}

fn point_json(pt: &super::store::Point) -> Value {
    json!({ "t": iso(pt.t_ms), "avg": pt.avg, "min": pt.min, "max": pt.max, "count": pt.count })
}

/// `GET /api/health`: 200 when the readings collection can be read; 503 while the database
/// does not answer, 500 when it refuses (a missing privilege).
pub async fn health(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    state.store.readable().await?;
    Ok(Json(json!({ "database": "ok" })))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Error answers are one short line whatever the driver said.
    #[test]
    fn errors_are_one_line() {
        let long = format!("a\n  b\t{}", "x".repeat(400));
        let m = one_line(&long);
        assert!(m.starts_with("a b x") && !m.contains('\n'));
        assert!(m.chars().count() <= 301);
    }

    // Missing times default to the last day; a bad one is a 400 naming the parameter.
    #[test]
    fn window_parameters() {
        let p: HashMap<String, String> = [("to".to_owned(), "2026-12-04T00:00:00Z".to_owned())]
            .into_iter()
            .collect();
        let w = window(&p).unwrap();
        assert_eq!(w.to_ms - w.from_ms, 86_400_000);
        let p: HashMap<String, String> = [("from".to_owned(), "soon".to_owned())]
            .into_iter()
            .collect();
        assert!(matches!(window(&p), Err(ApiError::BadRequest(m)) if m.contains("from")));
    }
}
