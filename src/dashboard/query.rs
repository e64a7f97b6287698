//! What the dashboard asks MongoDB, as pure values: the fields it charts, checked time windows,
//! the bucket width that keeps a chart at most [`MAX_POINTS`] points, and the aggregation
//! pipelines that bucket readings inside the database. No IO here: [`super::store`] runs them.
//!
//! Buckets are aligned to multiples of their width since the Unix epoch, not to the window's
//! start, so a chart that slides forward keeps its buckets (and the page's polling redraws the
//! same points). The bucket is computed arithmetically (`$toLong`, `$mod`, `$subtract`, as in
//! MongoDB 4.0 and SecantusDB) rather than with `$dateTrunc` (5.0+), so older servers work.

use mongodb::bson::{doc, DateTime, Document};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::report::field;

/// The most points a series has, whatever the window: enough for a full-width chart.
pub const MAX_POINTS: i64 = 600;
/// The longest window, days: longer ones are refused (`400d` of 2 Hz readings is 69 million
/// documents a node; a chart of them is one point per day).
pub const MAX_WINDOW_DAYS: u64 = 400;
/// The longest window, milliseconds.
pub const MAX_WINDOW_MS: i64 = MAX_WINDOW_DAYS as i64 * DAY_MS;
const DAY_MS: i64 = 86_400_000;
/// Bucket widths, milliseconds: round numbers a time axis reads well in.
const BUCKET_STEPS_MS: [i64; 20] = [
    500,
    1_000,
    2_000,
    5_000,
    10_000,
    15_000,
    30_000,
    60_000,
    120_000,
    300_000,
    600_000,
    900_000,
    1_800_000,
    3_600_000,
    7_200_000,
    10_800_000,
    21_600_000,
    43_200_000,
    DAY_MS,
    2 * DAY_MS,
];

/// A charted field of a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// `temperature`, °C.
    Temperature,
    /// `humidity`, % relative humidity.
    Humidity,
    /// `pressure`, hPa.
    Pressure,
    /// `acceleration.x`, g.
    AccelX,
    /// `acceleration.y`, g.
    AccelY,
    /// `acceleration.z`, g.
    AccelZ,
}

impl Field {
    /// Every field, in the order messages list them.
    pub const ALL: [Field; 6] = [
        Field::Temperature,
        Field::Humidity,
        Field::Pressure,
        Field::AccelX,
        Field::AccelY,
        Field::AccelZ,
    ];

    /// Every field name, for messages: `temperature, humidity, ... or acceleration.z`.
    pub fn names() -> String {
        let paths = Field::ALL.map(Field::path);
        let (last, rest) = paths.split_last().expect("ALL is not empty");
        format!("{} or {last}", rest.join(", "))
    }

    /// The field named as stored (`acceleration.x` for the nested one).
    pub fn parse(s: &str) -> Option<Field> {
        Field::ALL.into_iter().find(|f| f.path() == s)
    }

    /// The document path, as stored.
    pub fn path(self) -> &'static str {
        match self {
            Field::Temperature => field::TEMPERATURE,
            Field::Humidity => field::HUMIDITY,
            Field::Pressure => field::PRESSURE,
            Field::AccelX => field::ACCELERATION_X,
            Field::AccelY => field::ACCELERATION_Y,
            Field::AccelZ => field::ACCELERATION_Z,
        }
    }

    /// The unit, for chart labels.
    pub fn unit(self) -> &'static str {
        match self {
            Field::Temperature => "°C",
            Field::Humidity => "%RH",
            Field::Pressure => "hPa",
            Field::AccelX | Field::AccelY | Field::AccelZ => "g",
        }
    }
}

/// A checked time window `[from, to)`, milliseconds since the epoch (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Start, inclusive.
    pub from_ms: i64,
    /// End, exclusive.
    pub to_ms: i64,
}

/// Why a window cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    /// A time that is not ISO 8601 / RFC 3339.
    #[error("{name}: {value:?} is not an ISO 8601 time such as 2026-12-04T10:00:00Z")]
    BadTime {
        /// The parameter's name.
        name: &'static str,
        /// What was given.
        value: String,
    },
    /// A time whose year in UTC is not 0 to 9999, which times print as.
    #[error("{name}: {value:?} is outside the years 0 to 9999 (UTC)")]
    OutOfRange {
        /// The parameter's name.
        name: &'static str,
        /// What was given.
        value: String,
    },
    /// `from` is not before `to`.
    #[error("from must be before to")]
    Empty,
    /// Longer than [`MAX_WINDOW_DAYS`].
    #[error("the window is longer than {MAX_WINDOW_DAYS} days: ask for a shorter one")]
    TooLong,
}

impl Window {
    /// A window from two ISO 8601 times.
    pub fn parse(from: &str, to: &str) -> Result<Window, WindowError> {
        let from_ms = parse_time("from", from)?;
        let to_ms = parse_time("to", to)?;
        Window::new(from_ms, to_ms)
    }

    /// A window from milliseconds, checked.
    pub fn new(from_ms: i64, to_ms: i64) -> Result<Window, WindowError> {
        if from_ms >= to_ms {
            return Err(WindowError::Empty);
        }
        if to_ms - from_ms > MAX_WINDOW_MS {
            return Err(WindowError::TooLong);
        }
        Ok(Window { from_ms, to_ms })
    }

    /// The bucket width for this window: the smallest round step that keeps the series at
    /// most [`MAX_POINTS`] buckets, counting the partial ones at both ends.
    pub fn bucket_ms(&self) -> i64 {
        let span = self.to_ms - self.from_ms;
        BUCKET_STEPS_MS
            .into_iter()
            .find(|w| bucket_count(self.from_ms, self.to_ms, *w) <= MAX_POINTS)
            .unwrap_or_else(|| span.div_euclid(MAX_POINTS - 1) + 1)
    }

    /// `$match` for one node's readings in the window (the `{nodeName, recordedAt}` index).
    pub fn match_node(&self, node: &str) -> Document {
        doc! {
            field::NODE_NAME: node,
            field::RECORDED_AT: {
                "$gte": DateTime::from_millis(self.from_ms),
                "$lt": DateTime::from_millis(self.to_ms),
            },
        }
    }
}

/// How many epoch-aligned buckets of `width` ms touch `[from, to)`.
pub fn bucket_count(from_ms: i64, to_ms: i64, width: i64) -> i64 {
    let first = from_ms.div_euclid(width);
    let last = (to_ms - 1).div_euclid(width);
    last - first + 1
}

/// The start of the epoch-aligned bucket of `width` ms holding `t_ms`, the last multiple of
/// `width` not after it (before 1970 too): the rule the pipeline applies in the database, for
/// the naive comparison.
pub fn bucket_start(t_ms: i64, width: i64) -> i64 {
    t_ms - t_ms.rem_euclid(width)
}

/// A field's value in an aggregation expression: its path after a `$`.
fn value_of(path: &str) -> String {
    format!("${path}")
}

/// The bucket of `$recordedAt` as a date, in aggregation operators: [`bucket_start`].
/// `$mod` keeps the dividend's sign, so before 1970 (a negative time) its remainder is
/// negative, and subtracting it would give the bucket's end; `width` is added to it then, so
/// the remainder is always the time since the bucket's start, as `bucket_count` counts them.
fn bucket_expr(width: i64) -> Document {
    let t = doc! { "$toLong": value_of(field::RECORDED_AT) };
    let r = doc! { "$mod": [t.clone(), width] };
    let since_start =
        doc! { "$cond": [{ "$lt": [r.clone(), 0] }, { "$add": [r.clone(), width] }, r] };
    doc! { "$toDate": { "$subtract": [t, since_start] } }
}

/// Whether the field at `path` holds a reading a chart can draw: a finite double, int or long.
/// A string, a sub-document or a Decimal128 would win `$min` or `$max` by BSON's order (and
/// make `$avg` a decimal), NaN and the infinities would carry into every average; left out,
/// they never take their bucket's other readings with them. (`$type` and `$in` as expressions
/// are in MongoDB 4.0; NaN is below every number, so `$gt` -infinity leaves it out.)
fn is_reading(path: &str) -> Document {
    let v = value_of(path);
    doc! { "$and": [
        { "$in": [{ "$type": &v }, ["double", "int", "long"]] },
        { "$gt": [&v, f64::NEG_INFINITY] },
        { "$lt": [&v, f64::INFINITY] },
    ]}
}

/// Average, minimum, maximum and count of the readings ([`is_reading`]) of the field at
/// `path`, as `$group` accumulators named `{prefix}avg`, `{prefix}min`, `{prefix}max` and
/// `count_name`.
fn accumulators(group: &mut Document, prefix: &str, count_name: &str, path: &str) {
    let reading = doc! { "$cond": [is_reading(path), value_of(path), null] };
    group.insert(format!("{prefix}avg"), doc! { "$avg": &reading });
    group.insert(format!("{prefix}min"), doc! { "$min": &reading });
    group.insert(format!("{prefix}max"), doc! { "$max": &reading });
    let counted = doc! { "$cond": [is_reading(path), 1, 0] };
    group.insert(count_name, doc! { "$sum": counted });
}

/// The series pipeline: one node's readings of the window grouped into buckets of `width` ms,
/// each with average, minimum, maximum and count of `field`, in time order. Readings without
/// the field, or with anything but a finite number (`is_reading`), are left out, so they
/// never count as zero; a bucket with none has no point.
pub fn series_pipeline(node: &str, window: &Window, field: Field, width: i64) -> Vec<Document> {
    let mut m = window.match_node(node);
    m.insert(field.path(), doc! { "$exists": true });
    let mut group = doc! { "_id": bucket_expr(width) };
    accumulators(&mut group, "", "count", field.path());
    vec![
        doc! { "$match": m },
        doc! { "$group": group },
        doc! { "$match": { "count": { "$gt": 0 } } },
        doc! { "$sort": { "_id": 1 } },
        doc! { "$limit": MAX_POINTS },
    ]
}

/// The motion pipeline: buckets of `width` ms holding at least one `isMoving: true` reading,
/// with how many, in time order.
pub fn motion_pipeline(node: &str, window: &Window, width: i64) -> Vec<Document> {
    let mut m = window.match_node(node);
    m.insert(field::IS_MOVING, true);
    vec![
        doc! { "$match": m },
        doc! { "$group": { "_id": bucket_expr(width), "count": { "$sum": 1 } } },
        doc! { "$sort": { "_id": 1 } },
        doc! { "$limit": MAX_POINTS },
    ]
}

/// The fields of the page's charts, in the order [`chart_pipeline`] names them (`f0`, `f1`, ...).
pub const CHART_FIELDS: [Field; 3] = [Field::Temperature, Field::Humidity, Field::Pressure];

/// The chart pipeline: what the page draws for one node, in one pass over its readings: for
/// each of `fields`, `f{i}avg`, `f{i}min`, `f{i}max` and `f{i}n` (how many readings have it as a
/// finite number, `is_reading`), and `moving` (how many have `isMoving: true`), per bucket, in time order. The same
/// buckets as [`series_pipeline`] and [`motion_pipeline`], a third of the work of asking each.
pub fn chart_pipeline(node: &str, window: &Window, fields: &[Field], width: i64) -> Vec<Document> {
    let mut group = doc! { "_id": bucket_expr(width) };
    for (i, f) in fields.iter().enumerate() {
        accumulators(&mut group, &format!("f{i}"), &format!("f{i}n"), f.path());
    }
    let moving = doc! { "$cond": [{ "$eq": [value_of(field::IS_MOVING), true] }, 1, 0] };
    group.insert("moving", doc! { "$sum": moving });
    vec![
        doc! { "$match": window.match_node(node) },
        doc! { "$group": group },
        doc! { "$sort": { "_id": 1 } },
        doc! { "$limit": MAX_POINTS },
    ]
}

/// An ISO 8601 / RFC 3339 time as milliseconds since the epoch.
pub fn parse_time(name: &'static str, value: &str) -> Result<i64, WindowError> {
    let bad = || WindowError::BadTime {
        name,
        value: value.to_owned(),
    };
    let t = OffsetDateTime::parse(&plus_restored(value.trim()), &Rfc3339).map_err(|_| bad())?;
    let ms = i64::try_from(t.unix_timestamp_nanos() / 1_000_000).map_err(|_| bad())?;
    // An offset can take a time written in year 9999 past it in UTC, where [`iso`] and the
    // chart's labels cannot print it.
    if !(FIRST_MS..=LAST_MS).contains(&ms) {
        return Err(WindowError::OutOfRange {
            name,
            value: value.to_owned(),
        });
    }
    Ok(ms)
}

/// `value` with a space where an offset's sign belongs (after the time's last digit, before
/// `HH:MM` at the end) read as `+`: in a query string a `+` not written `%2B` is decoded as a
/// space, so `?from=2026-12-04T10:00:00+01:00`, typed or pasted as it is, arrives as
/// `2026-12-04T10:00:00 01:00`.
fn plus_restored(value: &str) -> std::borrow::Cow<'_, str> {
    let b = value.as_bytes();
    let n = b.len();
    let offset_after_space = n > 7
        && b[n - 7].is_ascii_digit()
        && b[n - 6] == b' '
        && b[n - 5..].iter().enumerate().all(|(i, c)| {
            if i == 2 {
                *c == b':'
            } else {
                c.is_ascii_digit()
            }
        });
    if offset_after_space {
        // Every byte from n - 7 on is ASCII, so these are character boundaries.
        format!("{}+{}", &value[..n - 6], &value[n - 5..]).into()
    } else {
        value.into()
    }
}

/// 0000-01-01T00:00:00.000Z and 9999-12-31T23:59:59.999Z, ms since the epoch.
const FIRST_MS: i64 = -62_167_219_200_000;
const LAST_MS: i64 = 253_402_300_799_999;

/// Milliseconds since the epoch as `2026-12-04T10:00:00.000Z`, the form every response uses.
pub fn iso(ms: i64) -> String {
    const FORMAT: &[time::format_description::BorrowedFormatItem<'static>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(FORMAT).ok())
        .unwrap_or_else(|| ms.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Every window up to the limit gets at most 600 buckets, counting partial ones at both ends,
    // and the narrowest round width that does so.
    #[test]
    fn bucket_width_keeps_series_at_most_600_points() {
        let h = 3_600_000;
        for (span, want) in [
            (60_000, 500),
            (h, 10_000),
            (24 * h, 300_000),
            (7 * 24 * h, 1_800_000),
            (30 * 24 * h, 7_200_000),
            (MAX_WINDOW_MS, DAY_MS),
        ] {
            let w = Window::new(1_000_123, 1_000_123 + span).unwrap();
            assert_eq!(w.bucket_ms(), want, "span {span}");
            assert!(bucket_count(w.from_ms, w.to_ms, w.bucket_ms()) <= MAX_POINTS);
        }
        for span in [1, 7, 999, 299_999, 300_001, 12_345_678, 987_654_321] {
            let w = Window::new(-5, span).unwrap();
            assert!(bucket_count(w.from_ms, w.to_ms, w.bucket_ms()) <= MAX_POINTS);
        }
    }

    // Bad windows are refused with a reason; the edges of the limit are exact.
    #[test]
    fn windows_are_checked() {
        assert_eq!(Window::new(5, 5), Err(WindowError::Empty));
        assert_eq!(Window::new(6, 5), Err(WindowError::Empty));
        assert!(Window::new(0, MAX_WINDOW_MS).is_ok());
        assert_eq!(Window::new(0, MAX_WINDOW_MS + 1), Err(WindowError::TooLong));
        assert!(matches!(
            Window::parse("yesterday", "2026-12-04T00:00:00Z"),
            Err(WindowError::BadTime { name: "from", .. })
        ));
        let w = Window::parse("2026-12-04T00:00:00Z", "2026-12-04T01:00:00.5+01:00").unwrap();
        assert_eq!(w.to_ms - w.from_ms, 500);
    }

    // Times print in one UTC form with milliseconds, and read back.
    #[test]
    fn iso_round_trips() {
        let t = parse_time("t", "2026-12-04T10:11:12.345Z").unwrap();
        assert_eq!(iso(t), "2026-12-04T10:11:12.345Z");
        assert_eq!(iso(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso(LAST_MS), "9999-12-31T23:59:59.999Z");
        assert_eq!(iso(FIRST_MS), "0000-01-01T00:00:00.000Z");
        // Year 9999 at an offset west of UTC is year 10000 in UTC: refused, not mis-printed.
        assert!(matches!(
            parse_time("to", "9999-12-31T23:59:59-23:59"),
            Err(WindowError::OutOfRange { .. })
        ));
        assert!(parse_time("to", "9999-12-31T23:59:59+00:00").is_ok());
    }

    // The bucket rule is epoch-aligned, before 1970 too: a bucket starts at or before its times.
    #[test]
    fn buckets_are_epoch_aligned() {
        assert_eq!(bucket_start(12_345, 1_000), 12_000);
        assert_eq!(bucket_start(12_000, 1_000), 12_000);
        assert_eq!(bucket_start(-1, 1_000), -1_000);
        assert_eq!(bucket_start(-1_000, 1_000), -1_000);
        assert_eq!(bucket_start(-1_001, 1_000), -2_000);
        assert_eq!(bucket_count(-1, 1, 1_000), 2);
        assert_eq!(bucket_count(999, 1_001, 1_000), 2);
    }

    // Fields are named as stored, and nothing else is one.
    #[test]
    fn fields() {
        for name in ["temperature", "humidity", "pressure", "acceleration.y"] {
            assert_eq!(Field::parse(name).unwrap().path(), name);
        }
        assert_eq!(Field::parse("isMoving"), None);
        assert_eq!(Field::parse("$where"), None);
        assert_eq!(
            Field::names(),
            "temperature, humidity, pressure, acceleration.x, acceleration.y or acceleration.z"
        );
    }
}
