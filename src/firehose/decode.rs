//! Record decoding: base64 (standard alphabet), then UTF-8, then a JSON object, then a BSON
//! document ready to upsert. Pure functions, no IO.
//!
//! Accepted shapes:
//! - the original producer's `JSON.stringify` output: `_id` a 24-hex string, dates ISO-8601 strings;
//! - relaxed or canonical Extended JSON: `{"$oid": ...}`, `{"$date": ...}`, `{"$numberLong": ...}`...
//!
//! `_id`: a 24-hex string or `{"$oid"}` becomes an ObjectId; any other value MongoDB allows as an
//! `_id` (number, other string, document...) is kept as it came; an array, regex or undefined
//! `_id` is rejected. A record without `_id` gets [`derived_id`]`(request id, index)`, so a
//! retried batch upserts the same documents again instead of duplicating them.

use std::fmt;

use base64::Engine as _;
use mongodb::bson::{oid::ObjectId, Bson, DateTime, Document};
use sha2::{Digest, Sha256};

/// How records become documents.
#[derive(Debug, Clone, Default)]
pub struct DecodeOptions {
    /// Top-level fields whose ISO-8601 string value becomes a BSON date (`--parse-dates`).
    /// A value that is not a string, or not an ISO-8601 date-time, is stored as it came.
    pub parse_dates: Vec<String>,
}

/// Why a record went to the dead-letter collection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// `data` was `""` (or missing), or decoded to zero bytes.
    Empty,
    /// `data` is not standard-alphabet base64.
    Base64(String),
    /// The decoded bytes are not UTF-8.
    NotUtf8(String),
    /// The text is not JSON.
    NotJson(String),
    /// The JSON is valid but not an object.
    NotObject,
    /// The object uses `$` keys that are not valid Extended JSON (e.g. `{"$oid": "zz"}`).
    ExtendedJson(String),
    /// `_id` is of a type MongoDB refuses as an `_id`.
    BadId(&'static str),
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::Empty => f.write_str("empty record"),
            Rejection::Base64(e) => write!(f, "invalid base64: {e}"),
            Rejection::NotUtf8(e) => write!(f, "not UTF-8: {e}"),
            Rejection::NotJson(e) => write!(f, "not JSON: {e}"),
            Rejection::NotObject => f.write_str("not a JSON object"),
            Rejection::ExtendedJson(e) => write!(f, "invalid Extended JSON: {e}"),
            Rejection::BadId(t) => write!(f, "_id cannot be {t}"),
        }
    }
}

/// A record that could not be decoded: the bytes to keep (decoded bytes when base64 worked,
/// else the record's `data` text as it came) and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub raw: Vec<u8>,
    pub reason: Rejection,
}

/// The `_id` of a record that has none, and of its dead-letter entry: the first 12 bytes of
/// SHA-256(`"sensehat-monitor/firehose\0"` ‖ request id ‖ `0x00` ‖ index as 8 bytes big-endian).
/// The same request id and index always give the same ObjectId.
pub fn derived_id(request_id: &str, index: usize) -> ObjectId {
    let mut h = Sha256::new();
    h.update(b"sensehat-monitor/firehose\0");
    h.update(request_id.as_bytes());
    h.update([0u8]);
    h.update((index as u64).to_be_bytes());
    let digest = h.finalize();
    let mut bytes = [0u8; 12];
    bytes.copy_from_slice(&digest[..12]);
    ObjectId::from_bytes(bytes)
}

/// Decode one record's `data` into the document to upsert.
pub fn decode_record(
    data: &str,
    request_id: &str,
    index: usize,
    options: &DecodeOptions,
) -> Result<Document, Rejected> {
    if data.is_empty() {
        return Err(Rejected {
            raw: Vec::new(),
            reason: Rejection::Empty,
        });
    }
    let bytes = match base64::engine::general_purpose::STANDARD.decode(data) {
        Ok(b) => b,
        Err(e) => {
            return Err(Rejected {
                raw: data.as_bytes().to_vec(),
                reason: Rejection::Base64(e.to_string()),
            })
        }
    };
    match parse_json_document(&bytes, options) {
        Ok(mut doc) => {
            if !doc.contains_key("_id") {
                let mut with_id = Document::new();
                with_id.insert("_id", derived_id(request_id, index));
                with_id.extend(doc);
                doc = with_id;
            }
            Ok(doc)
        }
        Err(reason) => Err(Rejected { raw: bytes, reason }),
    }
}

/// Decoded bytes to a document: UTF-8, JSON object, Extended JSON, `_id`, `--parse-dates`.
/// Leaves a missing `_id` missing.
pub fn parse_json_document(bytes: &[u8], options: &DecodeOptions) -> Result<Document, Rejection> {
    if bytes.is_empty() {
        return Err(Rejection::Empty);
    }
    let text = std::str::from_utf8(bytes).map_err(|e| Rejection::NotUtf8(e.to_string()))?;
    let mut doc = match json_to_bson(text)? {
        Bson::Document(d) => d,
        _ => return Err(Rejection::NotObject),
    };
    if let Some(id) = doc.get_mut("_id") {
        match id {
            Bson::String(s) => {
                if let Some(oid) = object_id_of_hex(s) {
                    *id = Bson::ObjectId(oid);
                }
            }
            Bson::Array(_) => return Err(Rejection::BadId("an array")),
            Bson::RegularExpression(_) => return Err(Rejection::BadId("a regular expression")),
            Bson::Undefined => return Err(Rejection::BadId("undefined")),
            _ => {}
        }
    }
    for field in &options.parse_dates {
        if let Some(v) = doc.get_mut(field) {
            if let Bson::String(s) = v {
                if let Some(d) = parse_iso_date(s) {
                    *v = Bson::DateTime(d);
                }
            }
        }
    }
    Ok(doc)
}

/// JSON text to BSON as Extended JSON v2 would read it (the same result as
/// `Bson::try_from(serde_json::Value)`), in one pass: values are built straight from the
/// parser, and only an object with a `$` key (an Extended JSON wrapper such as `{"$oid"}`) goes
/// through `serde_json::Value` and the bson crate's Extended JSON reader.
pub fn json_to_bson(text: &str) -> Result<Bson, Rejection> {
    use serde::de::DeserializeSeed;
    let mut de = serde_json::Deserializer::from_str(text);
    let value = BsonSeed
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v));
    value.map_err(|e| match e.classify() {
        serde_json::error::Category::Data => Rejection::ExtendedJson(e.to_string()),
        _ => Rejection::NotJson(e.to_string()),
    })
}

struct BsonSeed;

impl<'de> serde::de::DeserializeSeed<'de> for BsonSeed {
    type Value = Bson;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Bson, D::Error> {
        d.deserialize_any(BsonSeed)
    }
}

/// An integer as Extended JSON reads it: Int32 when it fits, else Int64.
fn int_bson(i: i64) -> Bson {
    match i32::try_from(i) {
        Ok(small) => Bson::Int32(small),
        Err(_) => Bson::Int64(i),
    }
}

impl<'de> serde::de::Visitor<'de> for BsonSeed {
    type Value = Bson;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Bson, E> {
        Ok(Bson::Boolean(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Bson, E> {
        Ok(int_bson(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Bson, E> {
        Ok(i64::try_from(v).map_or(Bson::Double(v as f64), int_bson))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Bson, E> {
        Ok(Bson::Double(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Bson, E> {
        Ok(Bson::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Bson, E> {
        Ok(Bson::String(v))
    }
    fn visit_unit<E>(self) -> Result<Bson, E> {
        Ok(Bson::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Bson, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(v) = seq.next_element_seed(BsonSeed)? {
            items.push(v);
        }
        Ok(Bson::Array(items))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Bson, A::Error> {
        let mut doc = Document::new();
        while let Some(key) = map.next_key::<String>()? {
            if key.starts_with('$') {
                // An Extended JSON wrapper: read the rest as JSON and let the bson crate decide.
                let mut obj: serde_json::Map<String, serde_json::Value> = doc
                    .into_iter()
                    .map(|(k, v)| (k, v.into_relaxed_extjson()))
                    .collect();
                let first: serde_json::Value = map.next_value()?;
                obj.insert(key, first);
                while let Some((k, v)) = map.next_entry::<String, serde_json::Value>()? {
                    obj.insert(k, v);
                }
                return Bson::try_from(serde_json::Value::Object(obj))
                    .map_err(serde::de::Error::custom);
            }
            let value = map.next_value_seed(BsonSeed)?;
            doc.insert(key, value);
        }
        Ok(Bson::Document(doc))
    }
}

/// A 24-hex-digit string as an ObjectId (either case), else `None`.
fn object_id_of_hex(s: &str) -> Option<ObjectId> {
    if s.len() == 24 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        ObjectId::parse_str(s).ok()
    } else {
        None
    }
}

/// An RFC 3339 / ISO-8601 date-time with an offset (`2023-07-13T11:02:11.016Z`) as a BSON date,
/// truncated to milliseconds.
pub fn parse_iso_date(s: &str) -> Option<DateTime> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    let ms = t.unix_timestamp_nanos().div_euclid(1_000_000);
    i64::try_from(ms).ok().map(DateTime::from_millis)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD;
    use mongodb::bson::spec::ElementType;

    fn b64(s: &[u8]) -> String {
        STANDARD.encode(s)
    }

    fn opts(fields: &[&str]) -> DecodeOptions {
        DecodeOptions {
            parse_dates: fields.iter().map(|s| s.to_string()).collect(),
        }
    }

    const STRINGIFIED: &str = r#"{"_id":"65a1b2c3d4e5f60718293a4b","nodeName":"pi","humidity":41.5,"temperature":21,"isMoving":false,"acceleration":{"x":0.01,"y":0,"z":1},"recordedAt":"2023-07-13T11:02:11.016Z"}"#;

    // JSON.stringify output: _id becomes an ObjectId, the date stays a string by default, order kept.
    #[test]
    fn stringified_report_keeps_dates_as_strings() {
        let d = decode_record(&b64(STRINGIFIED.as_bytes()), "r", 0, &opts(&[])).unwrap();
        assert_eq!(
            d.get_object_id("_id").unwrap().to_hex(),
            "65a1b2c3d4e5f60718293a4b"
        );
        assert_eq!(d.get_str("recordedAt").unwrap(), "2023-07-13T11:02:11.016Z");
        assert_eq!(d.get("temperature"), Some(&Bson::Int32(21)));
        let keys: Vec<&str> = d.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "_id",
                "nodeName",
                "humidity",
                "temperature",
                "isMoving",
                "acceleration",
                "recordedAt"
            ]
        );
    }

    // --parse-dates turns the named ISO string into a BSON date with the same milliseconds.
    #[test]
    fn parse_dates_makes_bson_dates() {
        let d = decode_record(
            &b64(STRINGIFIED.as_bytes()),
            "r",
            0,
            &opts(&["recordedAt", "nodeName"]),
        )
        .unwrap();
        assert_eq!(
            d.get_datetime("recordedAt").unwrap().timestamp_millis(),
            1_689_246_131_016
        );
        // Not a date: left as it came.
        assert_eq!(d.get_str("nodeName").unwrap(), "pi");
    }

    // Canonical and relaxed Extended JSON values become their BSON types.
    #[test]
    fn extended_json_values() {
        let text = r#"{"_id":{"$oid":"65a1b2c3d4e5f60718293a4b"},"at":{"$date":"2023-07-13T11:02:11.016Z"},"c":{"$date":{"$numberLong":"1689246131016"}},"n":{"$numberLong":"5"},"f":{"$numberDouble":"1.5"}}"#;
        let d = decode_record(&b64(text.as_bytes()), "r", 0, &opts(&[])).unwrap();
        assert_eq!(d.get("_id").unwrap().element_type(), ElementType::ObjectId);
        assert_eq!(
            d.get_datetime("at").unwrap().timestamp_millis(),
            1_689_246_131_016
        );
        assert_eq!(
            d.get_datetime("c").unwrap().timestamp_millis(),
            1_689_246_131_016
        );
        assert_eq!(d.get("n"), Some(&Bson::Int64(5)));
        assert_eq!(d.get("f"), Some(&Bson::Double(1.5)));
    }

    // A record without _id gets the derived id first; the same (request, index) gives the same id.
    #[test]
    fn missing_id_is_derived_deterministically() {
        let data = b64(br#"{"a":1}"#);
        let d1 = decode_record(&data, "req-1", 7, &opts(&[])).unwrap();
        let d2 = decode_record(&data, "req-1", 7, &opts(&[])).unwrap();
        let d3 = decode_record(&data, "req-1", 8, &opts(&[])).unwrap();
        let d4 = decode_record(&data, "req-2", 7, &opts(&[])).unwrap();
        assert_eq!(d1.keys().next().unwrap(), "_id");
        assert_eq!(d1.get_object_id("_id").unwrap(), derived_id("req-1", 7));
        assert_eq!(d1, d2);
        assert_ne!(d1.get("_id"), d3.get("_id"));
        assert_ne!(d1.get("_id"), d4.get("_id"));
    }

    // The derivation is pinned: changing it would duplicate documents of batches retried across an upgrade.
    #[test]
    fn derived_id_is_stable() {
        let mut h = Sha256::new();
        h.update(b"sensehat-monitor/firehose\0abc\0");
        h.update(3u64.to_be_bytes());
        let expect = h.finalize();
        assert_eq!(derived_id("abc", 3).bytes(), expect[..12]);
    }

    // Other _id values are kept as they came; arrays are refused.
    #[test]
    fn other_ids_kept_arrays_refused() {
        let d = decode_record(&b64(br#"{"_id":"not-hex"}"#), "r", 0, &opts(&[])).unwrap();
        assert_eq!(d.get_str("_id").unwrap(), "not-hex");
        let d = decode_record(&b64(br#"{"_id":42}"#), "r", 0, &opts(&[])).unwrap();
        assert_eq!(d.get("_id"), Some(&Bson::Int32(42)));
        let e = decode_record(&b64(br#"{"_id":[1]}"#), "r", 0, &opts(&[])).unwrap_err();
        assert_eq!(e.reason, Rejection::BadId("an array"));
    }

    // Each kind of bad record is rejected with its reason and the bytes to keep.
    #[test]
    fn bad_records_are_rejected_with_raw_bytes() {
        let o = opts(&[]);
        let e = decode_record("", "r", 0, &o).unwrap_err();
        assert_eq!((e.raw.as_slice(), e.reason), (&b""[..], Rejection::Empty));

        let e = decode_record("!!not base64!!", "r", 0, &o).unwrap_err();
        assert!(matches!(e.reason, Rejection::Base64(_)));
        assert_eq!(e.raw, b"!!not base64!!");

        // URL-safe alphabet is not the standard one.
        let e = decode_record("-_-_", "r", 0, &o).unwrap_err();
        assert!(matches!(e.reason, Rejection::Base64(_)));

        let e = decode_record(&b64(&[0xff, 0xfe, b'{']), "r", 0, &o).unwrap_err();
        assert!(matches!(e.reason, Rejection::NotUtf8(_)));
        assert_eq!(e.raw, [0xff, 0xfe, b'{']);

        let e = decode_record(&b64(b"{nope"), "r", 0, &o).unwrap_err();
        assert!(matches!(e.reason, Rejection::NotJson(_)), "{:?}", e.reason);

        let e = decode_record(&b64(b"   "), "r", 0, &o).unwrap_err();
        assert!(matches!(e.reason, Rejection::NotJson(_)));

        let e = decode_record(&b64(b"[1,2]"), "r", 0, &o).unwrap_err();
        assert_eq!(e.reason, Rejection::NotObject);

        let e = decode_record(&b64(br#"{"_id":{"$oid":"zz"}}"#), "r", 0, &o).unwrap_err();
        assert!(
            matches!(e.reason, Rejection::ExtendedJson(_)),
            "{:?}",
            e.reason
        );
    }

    // The one-pass reader gives exactly what the bson crate's Extended JSON reader gives.
    #[test]
    fn one_pass_reader_matches_extended_json() {
        let cases = [
            r#"{"a":1,"b":-2147483649,"c":18446744073709551615,"d":1.0,"e":1e3,"f":null,"g":[1,"x",{"h":true}]}"#,
            r#"{"_id":{"$oid":"65a1b2c3d4e5f60718293a4b"},"t":{"$date":{"$numberLong":"-5"}},"u":{"$date":"2023-07-13T11:02:11.016Z"}}"#,
            r#"{"n":{"$numberDecimal":"1.5"},"b":{"$binary":{"base64":"AQI=","subType":"00"}},"r":{"$regularExpression":{"pattern":"a","options":"i"}}}"#,
            r#"{"x":{"a":1,"$numberLong":"3"}}"#,
            r#"{"dup":1,"dup":2,"k":{"$numberInt":"7"},"arr":[{"$numberLong":"9"},{"$oid":"65a1b2c3d4e5f60718293a4b"}]}"#,
            r#"{"ts":{"$timestamp":{"t":1,"i":2}},"mk":{"$minKey":1},"s":"\u00e9\n"}"#,
            r#"{"$unknown":1,"a":2}"#,
        ];
        for case in cases {
            let expect = serde_json::from_str::<serde_json::Value>(case)
                .map_err(|e| e.to_string())
                .and_then(|v| Bson::try_from(v).map_err(|e| e.to_string()));
            let got = json_to_bson(case);
            match (expect, got) {
                (Ok(e), Ok(g)) => assert_eq!(e, g, "{case}"),
                (Err(_), Err(Rejection::ExtendedJson(_))) => {}
                (e, g) => panic!("{case}: expected {e:?}, got {g:?}"),
            }
        }
    }

    // Multi-byte UTF-8 survives (the original decoder produced Latin-1 code units).
    #[test]
    fn multibyte_text_survives() {
        let d = decode_record(&b64("{\"n\":\"Küche ☀\"}".as_bytes()), "r", 0, &opts(&[])).unwrap();
        assert_eq!(d.get_str("n").unwrap(), "Küche ☀");
    }

    // ISO dates with offsets and without fractions parse; garbage does not.
    #[test]
    fn iso_dates() {
        assert_eq!(
            parse_iso_date("2023-07-13T13:02:11+02:00")
                .unwrap()
                .timestamp_millis(),
            1_689_246_131_000
        );
        assert!(parse_iso_date("2023-07-13").is_none());
        assert!(parse_iso_date("yesterday").is_none());
    }
}
