//! `GET /api/csv?node=&from=&to=`: one node's raw readings of a window as CSV for a
//! spreadsheet, streamed from the cursor (never held in memory whole). A window holding more
//! than [`MAX_CSV_ROWS`] is refused before any row goes out: a download cut at the cap dropped
//! the newest readings, and a header saying so is one no browser shows.

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures_util::{stream, StreamExt, TryStreamExt};
use mongodb::bson::{Bson, Document};

use super::api::{known_node, window, ApiError, Params};
use super::convert::number;
use super::query::iso;
use super::AppState;
use crate::report::field;

/// The most rows one download holds: about 5.8 days of one node at 2 Hz, some 90 MB. The
/// hidden `--csv-max-rows` changes it, for tests.
pub const MAX_CSV_ROWS: u64 = 1_000_000;
/// The columns, in order: the stored field names (the axes as dotted paths), each with how its
/// value is written.
pub const COLUMNS: [(&str, Cell); 9] = [
    (field::RECORDED_AT, Cell::Time),
    (field::NODE_NAME, Cell::Text),
    (field::TEMPERATURE, Cell::Number),
    (field::HUMIDITY, Cell::Number),
    (field::PRESSURE, Cell::Number),
    (field::IS_MOVING, Cell::Flag),
    (field::ACCELERATION_X, Cell::Number),
    (field::ACCELERATION_Y, Cell::Number),
    (field::ACCELERATION_Z, Cell::Number),
];

/// How a column's value is written; a value of another BSON type, or none, is an empty cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cell {
    /// A date, as ISO 8601 UTC with milliseconds.
    Time,
    /// A string, quoted where a spreadsheet would misread it.
    Text,
    /// Any BSON number.
    Number,
    /// A boolean, `true` or `false`.
    Flag,
}

/// The header line: the column names.
pub fn csv_header() -> String {
    let names: Vec<&str> = COLUMNS.iter().map(|(name, _)| *name).collect();
    names.join(",") + "\n"
}

/// The handler.
pub async fn csv(State(state): State<AppState>, Query(p): Params) -> Result<Response, ApiError> {
    let window = window(&p)?;
    let node = known_node(&state.store, &p).await?;
    let cap = state.csv_max_rows;
    if state.store.more_than(&node, &window, cap).await? {
        return Err(ApiError::TooMany(format!(
            "more than {} readings of {node} in this window, the most one CSV holds: choose a shorter window",
            thousands(cap)
        )));
    }
    // Readings stored while the download runs may take it a little past the cap: better than
    // leaving out the newest.
    let readings = state.store.raw(&node, &window).await?;
    // A failure after the header has gone out cannot change the status: the body ends there,
    // unfinished (no last chunk), which the client sees as a download that failed.
    let rows = readings
        .map_ok(|d| Bytes::from(csv_row(&d)))
        .inspect_err(|e| tracing::warn!(error = %e, "CSV download cut short"))
        .map_err(std::io::Error::other);
    let body = stream::once(async { Ok(Bytes::from(csv_header())) }).chain(rows);
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
        ],
        Body::from_stream(body),
    )
        .into_response())
}

/// One reading as a CSV line, in [`COLUMNS`]' order; a missing value is an empty cell.
pub fn csv_row(d: &Document) -> String {
    let mut line = String::with_capacity(128);
    for (i, &(path, cell)) in COLUMNS.iter().enumerate() {
        if i > 0 {
            line.push(',');
        }
        let value = match path.split_once('.') {
            Some((sub, name)) => d.get_document(sub).ok().and_then(|s| s.get(name)),
            None => d.get(path),
        };
        if let Some(v) = value {
            write_cell(&mut line, v, cell);
        }
    }
    line.push('\n');
    line
}

/// Append `v` as a `cell` column writes it; nothing when it is of another type.
fn write_cell(line: &mut String, v: &Bson, cell: Cell) {
    match (cell, v) {
        (Cell::Time, Bson::DateTime(t)) => line.push_str(&iso(t.timestamp_millis())),
        (Cell::Text, Bson::String(s)) => line.push_str(&quote(s)),
        (Cell::Number, v) => {
            if let Some(f) = number(v) {
                line.push_str(&f.to_string());
            }
        }
        (Cell::Flag, Bson::Boolean(b)) => line.push_str(if *b { "true" } else { "false" }),
        _ => {}
    }
}

/// A CSV cell, quoted when it holds a separator, a quote or a line break, and with a leading
/// `=`, `+`, `-`, `@`, tab, carriage return or line feed escaped so a spreadsheet does not run
/// a node name as a formula (some read past a leading tab or line break to the formula after
/// it).
fn quote(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@', '\t', '\r', '\n']) {
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

/// `n` with commas between thousands, as the docs write the cap.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
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
        assert_eq!(
            csv_header(),
            "recordedAt,nodeName,temperature,humidity,pressure,isMoving,acceleration.x,acceleration.y,acceleration.z\n"
        );
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
        assert_eq!(quote("\t=1+2"), "'\t=1+2");
        assert_eq!(quote("\r=1+2"), "\"'\r=1+2\"");
        assert_eq!(quote("\n=1+2"), "\"'\n=1+2\"");
        assert_eq!(safe_name("a/b c"), "a_b_c");
        assert_eq!(thousands(MAX_CSV_ROWS), "1,000,000");
        assert_eq!(thousands(100), "100");
        assert_eq!(thousands(1_000), "1,000");
        let partial = csv_row(&doc! { "nodeName": "n" });
        assert_eq!(partial, ",n,,,,,,,\n");
    }
}
