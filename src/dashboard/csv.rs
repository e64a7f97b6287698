//! `GET /api/csv?node=&from=&to=`: one node's raw readings of a window as CSV for a
//! spreadsheet, streamed from the cursor (never held in memory whole) and bounded to
//! [`MAX_CSV_ROWS`]; `X-Truncated: true` says the window held more.

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures_util::{stream, StreamExt, TryStreamExt};
use mongodb::bson::Document;

use super::api::{known_node, window, ApiError, Params};
use super::query::iso;
use super::store::number;
use super::AppState;

/// The most rows one download holds: about 5.8 days of one node at 2 Hz, some 90 MB.
pub const MAX_CSV_ROWS: u64 = 1_000_000;
/// The header line; the columns are the stored field names.
pub const CSV_HEADER: &str = "recordedAt,nodeName,temperature,humidity,pressure,isMoving,acceleration.x,acceleration.y,acceleration.z\n";

/// The handler.
pub async fn csv(State(state): State<AppState>, Query(p): Params) -> Result<Response, ApiError> {
    let window = window(&p)?;
    let node = known_node(&state.store, &p).await?;
    let truncated = state.store.more_than(&node, &window, MAX_CSV_ROWS).await?;
    let cursor = state.store.raw(&node, &window, MAX_CSV_ROWS as i64).await?;
    let rows = cursor
        .map_ok(|d| Bytes::from(csv_row(&d)))
        .map_err(std::io::Error::other);
    let body = stream::once(async { Ok(Bytes::from_static(CSV_HEADER.as_bytes())) }).chain(rows);
    let file = format!(
        "{}-{}.csv",
        safe_name(&node),
        iso(window.from_ms).replace(':', "")
    );
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{file}\""),
            ),
            (
                header::HeaderName::from_static("x-truncated"),
                truncated.to_string(),
            ),
        ],
        Body::from_stream(body),
    )
        .into_response())
}

/// One reading as a CSV line; a missing value is an empty cell.
pub fn csv_row(d: &Document) -> String {
    let num = |path: &str| {
        let mut parts = path.split('.');
        let first = parts.next().unwrap_or_default();
        let v = match parts.next() {
            Some(sub) => d.get_document(first).ok().and_then(|a| a.get(sub)),
            None => d.get(first),
        };
        v.and_then(number)
            .map(|f| f.to_string())
            .unwrap_or_default()
    };
    let at = d
        .get_datetime("recordedAt")
        .map(|t| iso(t.timestamp_millis()))
        .unwrap_or_default();
    let moving = d
        .get_bool("isMoving")
        .map(|b| b.to_string())
        .unwrap_or_default();
    format!(
        "{at},{},{},{},{},{moving},{},{},{}\n",
        quote(d.get_str("nodeName").unwrap_or_default()),
        num("temperature"),
        num("humidity"),
        num("pressure"),
        num("acceleration.x"),
        num("acceleration.y"),
        num("acceleration.z"),
    )
}

/// A CSV cell, quoted when it holds a separator, a quote or a line break, and with a leading
/// `=`, `+`, `-` or `@` escaped so a spreadsheet does not run a node name as a formula.
fn quote(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@']) {
        format!("'{s}")
    } else {
        s.to_owned()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

/// A node name fit for a file name.
fn safe_name(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::{doc, DateTime};

    // A reading becomes one line in the header's column order; odd names cannot break it.
    #[test]
    fn rows_follow_the_header() {
        let d = doc! {
            "nodeName": "greenhouse-pi", "humidity": 41.2, "temperature": 22.7,
            "pressure": 1013.25, "isMoving": false,
            "acceleration": { "x": 0.01, "y": -0.02, "z": 0.99 },
            "recordedAt": DateTime::from_millis(1_796_083_200_000),
        };
        assert_eq!(
            csv_row(&d),
            "2026-12-01T00:00:00.000Z,greenhouse-pi,22.7,41.2,1013.25,false,0.01,-0.02,0.99\n"
        );
        assert_eq!(quote("a,\"b\""), "\"a,\"\"b\"\"\"");
        assert_eq!(quote("=cmd()"), "'=cmd()");
        assert_eq!(safe_name("a/b c"), "a_b_c");
        let partial = csv_row(&doc! { "nodeName": "n" });
        assert_eq!(partial, ",n,,,,,,,\n");
    }
}
