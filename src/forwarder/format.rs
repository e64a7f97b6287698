//! Record data formats: what one change-stream document becomes in a Kinesis record.
//!
//! - `stringify`: what the original trigger wrote, `JSON.stringify(fullDocument)`: an ObjectId is
//!   its 24-hex string, a date is ISO-8601 with milliseconds (`Date.toJSON`), numbers are written
//!   the way JavaScript writes them (`20`, not `20.0`; `1e+21`), `undefined` fields are left out.
//! - `relaxed`: relaxed Extended JSON (dates as `{"$date":"...Z"}` with three fraction digits).
//! - `canonical`: canonical Extended JSON (every number typed).
//!
//! All functions here are pure.

use std::fmt::Write as _;

use mongodb::bson::{Bson, Document};

use crate::report::{iso_millis, relaxed_json};

/// How a document is written into a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// `JSON.stringify` of the document, as the original trigger wrote it.
    #[default]
    Stringify,
    /// Relaxed Extended JSON.
    Relaxed,
    /// Canonical Extended JSON.
    Canonical,
}

impl Format {
    /// The record data for one document.
    pub fn encode(self, document: &Document) -> Vec<u8> {
        match self {
            Format::Stringify => stringify(document).into_bytes(),
            Format::Relaxed => relaxed_json(document).to_string().into_bytes(),
            Format::Canonical => Bson::Document(document.clone())
                .into_canonical_extjson()
                .to_string()
                .into_bytes(),
        }
    }
}

/// `JSON.stringify` of a BSON document as a MongoDB server-side function sees it.
pub fn stringify(document: &Document) -> String {
    let mut out = String::with_capacity(256);
    write_document(&mut out, document);
    out
}

fn write_document(out: &mut String, document: &Document) {
    out.push('{');
    let mut first = true;
    for (key, value) in document {
        // JSON.stringify leaves out properties whose value is undefined.
        if matches!(value, Bson::Undefined) {
            continue;
        }
        if !first {
            out.push(',');
        }
        first = false;
        write_string(out, key);
        out.push(':');
        write_value(out, value);
    }
    out.push('}');
}

fn write_value(out: &mut String, value: &Bson) {
    match value {
        Bson::Document(d) => write_document(out, d),
        Bson::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                // In arrays, undefined becomes null.
                match item {
                    Bson::Undefined => out.push_str("null"),
                    other => write_value(out, other),
                }
            }
            out.push(']');
        }
        Bson::ObjectId(oid) => write_string(out, &oid.to_hex()),
        // An invalid Date's toJSON() is null.
        Bson::DateTime(d) => match iso_millis(d.timestamp_millis()) {
            Some(s) => write_string(out, &s),
            None => out.push_str("null"),
        },
        Bson::String(s) => write_string(out, s),
        Bson::Boolean(b) => out.push_str(if *b { "true" } else { "false" }),
        Bson::Null | Bson::Undefined => out.push_str("null"),
        Bson::Double(f) => out.push_str(&js_number(*f)),
        Bson::Int32(i) => {
            let _ = write!(out, "{i}");
        }
        Bson::Int64(i) => {
            let _ = write!(out, "{i}");
        }
        // Other BSON types have no JavaScript primitive: their toJSON is Extended JSON.
        other => out.push_str(&other.clone().into_relaxed_extjson().to_string()),
    }
}

fn write_string(out: &mut String, s: &str) {
    // serde_json escapes exactly what JSON requires; JSON.stringify escapes the same set
    // (control characters, quote, backslash) and lone surrogates cannot occur in a Rust str.
    match serde_json::to_string(s) {
        Ok(escaped) => out.push_str(&escaped),
        Err(_) => out.push_str("null"),
    }
}

/// A number as JavaScript's `Number.prototype.toString` (and so JSON.stringify) writes it:
/// the shortest digits that round-trip, plain notation for exponents -7 < e < 21, otherwise
/// `d.ddde+N`; NaN and the infinities become `null`; -0 is `0`.
pub fn js_number(f: f64) -> String {
    if !f.is_finite() {
        return "null".to_owned();
    }
    if f == 0.0 {
        return "0".to_owned();
    }
    // Rust's `{:e}` gives the shortest round-trip digits: "-1.2345e-7", "1e21".
    let sci = format!("{:e}", f.abs());
    let (mantissa, exponent) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let k = digits.len() as i32;
    let n = exponent + 1;
    let mut out = String::new();
    if f < 0.0 {
        out.push('-');
    }
    if k <= n && n <= 21 {
        out.push_str(&digits);
        out.extend(std::iter::repeat_n('0', (n - k) as usize));
    } else if 0 < n && n <= 21 {
        out.push_str(&digits[..n as usize]);
        out.push('.');
        out.push_str(&digits[n as usize..]);
    } else if -6 < n && n <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', (-n) as usize));
        out.push_str(&digits);
    } else {
        out.push_str(&digits[..1]);
        if k > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let e = n - 1;
        let _ = write!(out, "e{}{}", if e < 0 { '-' } else { '+' }, e.abs());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::{doc, oid::ObjectId, DateTime};

    // Numbers are written exactly as JavaScript writes them.
    #[test]
    fn numbers_follow_javascript() {
        let cases = [
            (20.0, "20"),
            (-3.5, "-3.5"),
            (1013.25, "1013.25"),
            (0.1 + 0.2, "0.30000000000000004"),
            (1e21, "1e+21"),
            (1e20, "100000000000000000000"),
            (2f64.powi(60), "1152921504606847000"),
            (1e-7, "1e-7"),
            (1.5e-7, "1.5e-7"),
            (0.000001, "0.000001"),
            (-0.0, "0"),
            (f64::NAN, "null"),
            (f64::INFINITY, "null"),
            (123456789.125, "123456789.125"),
        ];
        for (f, want) in cases {
            assert_eq!(js_number(f), want, "{f:e}");
        }
    }

    // The original trigger's record: _id as 24-hex, dates as ISO-8601 with milliseconds.
    #[test]
    fn stringify_writes_what_the_trigger_wrote() {
        let oid = ObjectId::parse_str("64afd9a36ac1b6b1e0c5a001").unwrap();
        let d = doc! {
            "_id": oid,
            "nodeName": "pi \"one\"",
            "humidity": 41.0,
            "count": 3_i32,
            "big": 5_000_000_000_i64,
            "isMoving": false,
            "acceleration": { "x": 0.5, "y": -1.25, "z": 1.0 },
            "list": [1_i32, Bson::Undefined, Bson::Null],
            "gone": Bson::Undefined,
            "recordedAt": DateTime::from_millis(1_689_246_131_016),
        };
        assert_eq!(
            stringify(&d),
            r#"{"_id":"64afd9a36ac1b6b1e0c5a001","nodeName":"pi \"one\"","humidity":41,"count":3,"big":5000000000,"isMoving":false,"acceleration":{"x":0.5,"y":-1.25,"z":1},"list":[1,null,null],"recordedAt":"2023-07-13T11:02:11.016Z"}"#
        );
    }

    // Relaxed and canonical Extended JSON keep the BSON types.
    #[test]
    fn extended_json_formats() {
        let oid = ObjectId::parse_str("64afd9a36ac1b6b1e0c5a001").unwrap();
        let d = doc! { "_id": oid, "n": 1.5, "at": DateTime::from_millis(0) };
        let relaxed: serde_json::Value =
            serde_json::from_slice(&Format::Relaxed.encode(&d)).unwrap();
        assert_eq!(relaxed["_id"]["$oid"], "64afd9a36ac1b6b1e0c5a001");
        assert_eq!(relaxed["n"], 1.5);
        assert_eq!(relaxed["at"]["$date"], "1970-01-01T00:00:00.000Z");
        let canonical: serde_json::Value =
            serde_json::from_slice(&Format::Canonical.encode(&d)).unwrap();
        assert_eq!(canonical["n"]["$numberDouble"], "1.5");
        assert_eq!(canonical["at"]["$date"]["$numberLong"], "0");
    }
}
