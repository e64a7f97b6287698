//! The report document: one sample of the Sense HAT, in the schema of the original agent.
//!
//! Field names, order and BSON types are fixed by the original Python agent:
//! `{_id, nodeName, humidity, temperature, pressure, isMoving, acceleration: {x, y, z}, recordedAt}`
//! ([`FIELDS`], named one by one in [`field`]).
//! The agent makes `_id` itself, so an insert retried after a lost acknowledgement is a
//! duplicate-key error rather than a second copy.

use mongodb::bson::{doc, oid::ObjectId, DateTime, Document, RawDocumentBuf};
use serde_json::Value;

mod moving;

pub use moving::{MovingRule, DEFAULT_MOVING_THRESHOLD_G};

/// The report's field names, as the original agent wrote them.
pub mod field {
    /// The report's id, made by the agent.
    pub const ID: &str = "_id";
    /// The node that took the sample.
    pub const NODE_NAME: &str = "nodeName";
    /// Relative humidity, percent.
    pub const HUMIDITY: &str = "humidity";
    /// Degrees Celsius.
    pub const TEMPERATURE: &str = "temperature";
    /// hPa.
    pub const PRESSURE: &str = "pressure";
    /// Whether the board was moving, by the agent's [`MovingRule`](super::MovingRule).
    pub const IS_MOVING: &str = "isMoving";
    /// The sub-document of the three axes, in g.
    pub const ACCELERATION: &str = "acceleration";
    /// The axes of [`ACCELERATION`].
    pub const X: &str = "x";
    /// See [`X`].
    pub const Y: &str = "y";
    /// See [`X`].
    pub const Z: &str = "z";
    /// [`ACCELERATION`]`.`[`X`]: the axis as a dotted path, as queries name it. Spelled out,
    /// as a `const` cannot be joined from others; a test checks that it is the join.
    pub const ACCELERATION_X: &str = "acceleration.x";
    /// [`ACCELERATION`]`.`[`Y`].
    pub const ACCELERATION_Y: &str = "acceleration.y";
    /// [`ACCELERATION`]`.`[`Z`].
    pub const ACCELERATION_Z: &str = "acceleration.z";
    /// When the sample was taken (a BSON date).
    pub const RECORDED_AT: &str = "recordedAt";
}

/// The top-level fields of a report, in their stored order.
pub const FIELDS: [&str; 8] = [
    field::ID,
    field::NODE_NAME,
    field::HUMIDITY,
    field::TEMPERATURE,
    field::PRESSURE,
    field::IS_MOVING,
    field::ACCELERATION,
    field::RECORDED_AT,
];

/// Bytes of a report besides its node name.
pub const REPORT_BYTES: usize = 177;

/// Acceleration in g on the three axes, as python-sense-hat's `get_accelerometer_raw()`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Acceleration {
    /// Along the board's x axis.
    pub x_g: f64,
    /// Along the board's y axis.
    pub y_g: f64,
    /// Along the board's z axis (about +1 g lying flat).
    pub z_g: f64,
}

/// What the board measured in one sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    /// Relative humidity, percent (HTS221).
    pub humidity_rh: f64,
    /// Temperature in degrees Celsius (HTS221).
    pub temperature_celsius: f64,
    /// Air pressure in hPa (LPS25H).
    pub pressure_hpa: f64,
    /// Acceleration (LSM9DS1).
    pub acceleration: Acceleration,
}

/// One report as stored in `monitors.reports`.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// `_id`, made by the agent so that a resent report is a duplicate, not a second copy.
    pub id: ObjectId,
    /// `nodeName`.
    pub node_name: String,
    /// What was measured.
    pub reading: Reading,
    /// When the sample was taken, in milliseconds since the Unix epoch (UTC).
    pub recorded_at_ms: i64,
    /// How `isMoving` is decided from the reading.
    pub moving_rule: MovingRule,
}

impl Report {
    /// A report for a reading taken now-ish; `recorded_at_ms` is the sample time, and
    /// `moving_rule` decides its `isMoving`.
    pub fn new(
        node_name: &str,
        reading: Reading,
        recorded_at_ms: i64,
        moving_rule: MovingRule,
    ) -> Self {
        Report {
            id: ObjectId::new(),
            node_name: node_name.to_owned(),
            reading,
            recorded_at_ms,
            moving_rule,
        }
    }

    /// `isMoving`: the reading's acceleration by the report's rule. Every form of the report
    /// writes this.
    pub fn is_moving(&self) -> bool {
        self.moving_rule.is_moving(&self.reading.acceleration)
    }

    /// The BSON document, with the original field order and types.
    pub fn to_document(&self) -> Document {
        let r = &self.reading;
        doc! {
            field::ID: self.id,
            field::NODE_NAME: &self.node_name,
            field::HUMIDITY: r.humidity_rh,
            field::TEMPERATURE: r.temperature_celsius,
            field::PRESSURE: r.pressure_hpa,
            field::IS_MOVING: self.is_moving(),
            field::ACCELERATION: {
                field::X: r.acceleration.x_g,
                field::Y: r.acceleration.y_g,
                field::Z: r.acceleration.z_g,
            },
            field::RECORDED_AT: DateTime::from_millis(self.recorded_at_ms),
        }
    }

    /// The document as BSON bytes. Same fields, order and types as [`Report::to_document`].
    pub fn to_bson_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(REPORT_BYTES + self.node_name.len());
        self.write_bson(&mut b);
        b
    }

    /// Append the document's BSON to `out`. This runs for every sample, and the schema is
    /// fixed, so the bytes are laid down field by field (BSON spec: element type, name, value;
    /// little-endian; the lengths filled in at the end) rather than built as a document first.
    /// `raw_bytes_equal_the_document` checks the result against the bson crate's own encoding
    /// of [`Report::to_document`].
    pub fn write_bson(&self, out: &mut Vec<u8>) {
        fn element(out: &mut Vec<u8>, kind: u8, name: &str) {
            out.push(kind);
            out.extend_from_slice(name.as_bytes());
            out.push(0);
        }
        fn double(out: &mut Vec<u8>, name: &str, v: f64) {
            element(out, 0x01, name);
            out.extend_from_slice(&v.to_le_bytes());
        }
        let r = &self.reading;
        let a = &r.acceleration;
        let start = out.len();
        out.reserve(REPORT_BYTES + self.node_name.len());
        out.extend_from_slice(&[0; 4]);
        element(out, 0x07, field::ID);
        out.extend_from_slice(&self.id.bytes());
        element(out, 0x02, field::NODE_NAME);
        let name_len = i32::try_from(self.node_name.len() + 1).unwrap_or(i32::MAX);
        out.extend_from_slice(&name_len.to_le_bytes());
        out.extend_from_slice(self.node_name.as_bytes());
        out.push(0);
        double(out, field::HUMIDITY, r.humidity_rh);
        double(out, field::TEMPERATURE, r.temperature_celsius);
        double(out, field::PRESSURE, r.pressure_hpa);
        element(out, 0x08, field::IS_MOVING);
        out.push(u8::from(self.is_moving()));
        element(out, 0x03, field::ACCELERATION);
        // Length, three doubles of one-letter names, terminator.
        out.extend_from_slice(&(4 + 3 * 11 + 1i32).to_le_bytes());
        double(out, field::X, a.x_g);
        double(out, field::Y, a.y_g);
        double(out, field::Z, a.z_g);
        out.push(0);
        element(out, 0x09, field::RECORDED_AT);
        out.extend_from_slice(&self.recorded_at_ms.to_le_bytes());
        out.push(0);
        let len = i32::try_from(out.len() - start).unwrap_or(i32::MAX);
        out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    }

    /// One line of relaxed Extended JSON, as `--dry-run` prints it.
    pub fn to_relaxed_json_line(&self) -> String {
        relaxed_json(&self.to_document()).to_string()
    }
}

/// An empty BSON document with room for `capacity` bytes, so appending does not grow it field
/// by field.
pub fn document_with_capacity(capacity: usize) -> RawDocumentBuf {
    let mut bytes = Vec::with_capacity(capacity.max(5));
    // The empty document: length 5, then the terminating NUL.
    bytes.extend_from_slice(&[5, 0, 0, 0, 0]);
    RawDocumentBuf::from_bytes(bytes).unwrap_or_default()
}

/// ISO-8601 with milliseconds and a `Z`, the way JavaScript's `Date.toJSON` writes it
/// (`2023-07-13T11:02:11.016Z`). Returns `None` outside years 0..=9999.
pub fn iso_millis(ms: i64) -> Option<String> {
    const FORMAT: &[time::format_description::BorrowedFormatItem<'static>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()?;
    if !(0..=9999).contains(&t.year()) {
        return None;
    }
    t.format(FORMAT).ok()
}

/// Relaxed Extended JSON of a document, with dates always written with three fractional
/// digits (`{"$date":"2026-11-25T18:50:00.000Z"}`) so every line has the same shape.
pub fn relaxed_json(document: &Document) -> Value {
    Value::Object(
        document
            .iter()
            .map(|(k, v)| (k.clone(), relaxed_bson(v)))
            .collect(),
    )
}

fn relaxed_bson(value: &mongodb::bson::Bson) -> Value {
    use mongodb::bson::Bson;
    match value {
        Bson::Document(d) => relaxed_json(d),
        Bson::Array(a) => Value::Array(a.iter().map(relaxed_bson).collect()),
        Bson::DateTime(d) => match iso_millis(d.timestamp_millis()) {
            Some(s) if d.timestamp_millis() >= 0 => serde_json::json!({ "$date": s }),
            _ => value.clone().into_relaxed_extjson(),
        },
        other => other.clone().into_relaxed_extjson(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(x: f64, y: f64, z: f64) -> Reading {
        Reading {
            humidity_rh: 41.25,
            temperature_celsius: -3.5,
            pressure_hpa: 1013.25,
            acceleration: Acceleration {
                x_g: x,
                y_g: y,
                z_g: z,
            },
        }
    }

    const MAGNITUDE: MovingRule = MovingRule::Magnitude {
        threshold_g: DEFAULT_MOVING_THRESHOLD_G,
    };

    // The document, the raw BSON and the dry-run line all carry the report's rule's answer.
    #[test]
    fn every_form_uses_the_reports_rule() {
        // Flat, a hair over 1 g: moving by the original rule only.
        for (rule, moving) in [(MovingRule::Axis, true), (MAGNITUDE, false)] {
            let r = Report::new("pi", reading(0.01, -0.02, 1.004), 0, rule);
            assert_eq!(r.is_moving(), moving, "{rule}");
            assert_eq!(
                r.to_document().get_bool(field::IS_MOVING),
                Ok(moving),
                "{rule}"
            );
            let raw = mongodb::bson::RawDocumentBuf::from_bytes(r.to_bson_bytes()).unwrap();
            assert_eq!(raw.get_bool(field::IS_MOVING).ok(), Some(moving), "{rule}");
            let mut appended = Vec::new();
            r.write_bson(&mut appended);
            let raw = mongodb::bson::RawDocumentBuf::from_bytes(appended).unwrap();
            assert_eq!(raw.get_bool(field::IS_MOVING).ok(), Some(moving), "{rule}");
            let line: Value = serde_json::from_str(&r.to_relaxed_json_line()).unwrap();
            assert_eq!(line[field::IS_MOVING], moving, "{rule}");
        }
    }

    // Each dotted path is the sub-document's name, a dot and the axis's name.
    #[test]
    fn dotted_paths_join_the_names() {
        for (path, axis) in [
            (field::ACCELERATION_X, field::X),
            (field::ACCELERATION_Y, field::Y),
            (field::ACCELERATION_Z, field::Z),
        ] {
            assert_eq!(path, format!("{}.{axis}", field::ACCELERATION));
        }
    }

    // The document has the original field order and BSON types.
    #[test]
    fn document_has_the_original_schema() {
        let r = Report::new(
            "pi-kitchen",
            reading(0.01, -0.02, 0.998),
            1_764_096_600_123,
            MovingRule::Axis,
        );
        let d = r.to_document();
        let keys: Vec<&str> = d.keys().map(String::as_str).collect();
        assert_eq!(keys, FIELDS);
        assert_eq!(d.get_object_id("_id").unwrap(), r.id);
        assert_eq!(d.get_f64("temperature").unwrap(), -3.5);
        assert!(!d.get_bool("isMoving").unwrap());
        assert_eq!(
            d.get_document("acceleration")
                .unwrap()
                .get_f64("z")
                .unwrap(),
            0.998
        );
        assert_eq!(
            d.get_datetime("recordedAt").unwrap().timestamp_millis(),
            1_764_096_600_123
        );
    }

    // The raw bytes built for the spool are exactly the BSON of the document, whatever the
    // node name, readings and date; appended after other bytes, they leave those alone.
    #[test]
    fn raw_bytes_equal_the_document() {
        let cases = [
            Report::new(
                "pi",
                reading(0.5, -1.5, 0.9),
                1_764_096_600_123,
                MovingRule::Axis,
            ),
            Report::new("", reading(0.0, 0.0, 1.0), 0, MAGNITUDE),
            Report::new(
                "küche-π-7",
                reading(-0.0, 2.0, f64::NAN),
                -86_400_000,
                MAGNITUDE,
            ),
            Report::new(
                &"n".repeat(300),
                reading(1e300, -1e-300, 0.25),
                i64::MAX,
                MovingRule::Axis,
            ),
        ];
        for r in cases {
            let expected = mongodb::bson::to_vec(&r.to_document()).unwrap();
            assert_eq!(r.to_bson_bytes(), expected, "{}", r.node_name);
            assert_eq!(expected.len(), REPORT_BYTES + r.node_name.len());
            let mut after = vec![1, 2, 3];
            r.write_bson(&mut after);
            assert_eq!(&after[..3], &[1, 2, 3]);
            assert_eq!(&after[3..], &expected[..]);
        }
    }

    // The dry-run line is relaxed Extended JSON with millisecond ISO dates.
    #[test]
    fn relaxed_json_line_shape() {
        let mut r = Report::new(
            "n",
            reading(0.0, 0.0, 1.0),
            1_764_096_600_000,
            MovingRule::Axis,
        );
        r.id = ObjectId::parse_str("65a1b2c3d4e5f60718293a4b").unwrap();
        assert_eq!(
            r.to_relaxed_json_line(),
            concat!(
                r#"{"_id":{"$oid":"65a1b2c3d4e5f60718293a4b"},"nodeName":"n","humidity":41.25,"#,
                r#""temperature":-3.5,"pressure":1013.25,"isMoving":false,"#,
                r#""acceleration":{"x":0.0,"y":0.0,"z":1.0},"recordedAt":{"$date":"2025-11-25T18:50:00.000Z"}}"#
            )
        );
    }

    // Millisecond formatting pads and keeps three digits.
    #[test]
    fn iso_millis_formats_like_javascript() {
        assert_eq!(iso_millis(0).unwrap(), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            iso_millis(1_689_246_131_016).unwrap(),
            "2023-07-13T11:02:11.016Z"
        );
        assert_eq!(iso_millis(-1).unwrap(), "1969-12-31T23:59:59.999Z");
    }
}
