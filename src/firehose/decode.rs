//! Record decoding: base64 (standard alphabet), then UTF-8, then a JSON object, then the BSON
//! bytes to upsert. Pure functions, no IO.
//!
//! Accepted shapes:
//! - the original producer's `JSON.stringify` output: `_id` a 24-hex string, dates ISO-8601 strings;
//! - relaxed or canonical Extended JSON: `{"$oid": ...}`, `{"$date": ...}`, `{"$numberLong": ...}`...
//!
//! `_id`: a 24-hex string or `{"$oid"}` becomes an ObjectId; any other value MongoDB allows as an
//! `_id` (number, other string, document...) is kept as it came; an array, regex or undefined
//! `_id`, or a document `_id` with a field name starting with `$`, is rejected. A record without
//! `_id`, or with a null one, gets [`derived_id`]`(request id, index)`, so a retried batch
//! upserts the same documents again instead of duplicating them.
//!
//! Also rejected, because the database would refuse them and fail the whole batch on every retry:
//! a field name with a NUL character, and a top-level field name starting with `$` (not allowed in
//! a replacement document).
//!
//! Two readers give the same bytes. The fast one writes plain JSON (no `$` keys, no duplicate
//! keys, no array `_id`) straight into a [`RawDocumentBuf`] as the parser reads it: no
//! intermediate tree, strings copied once. Anything else, including every input that is
//! rejected, goes through the general one ([`json_to_bson`]: a `Document`, with the bson crate's
//! Extended JSON reader for `$` wrappers), which decides. Sensor reports all take the fast path.

use std::borrow::Cow;
use std::fmt;

use base64::Engine as _;
use mongodb::bson::{
    oid::ObjectId, Bson, DateTime, Document, RawArrayBuf, RawBson, RawBsonRef, RawDocument,
    RawDocumentBuf,
};
use serde::de::{self, DeserializeSeed, Visitor};
use sha2::{Digest, Sha256};

pub use crate::report::document_with_capacity;

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
    /// A field name the database refuses: a NUL character anywhere, or `$` first at the top level.
    BadFieldName(String),
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
            Rejection::BadFieldName(e) => write!(f, "invalid field name: {e}"),
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

/// Decode one record's `data` into the document to upsert, `_id` always present.
pub fn decode_record(
    data: &str,
    request_id: &str,
    index: usize,
    options: &DecodeOptions,
) -> Result<RawDocumentBuf, Rejected> {
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
    let doc = match parse_record(&bytes, options) {
        Ok(doc) => doc,
        Err(reason) => return Err(Rejected { raw: bytes, reason }),
    };
    if matches!(doc.get("_id"), Ok(Some(_))) {
        return Ok(doc);
    }
    with_id_first(derived_id(request_id, index), &doc)
        .map_err(|reason| Rejected { raw: bytes, reason })
}

/// `doc` with `_id` inserted as its first field.
fn with_id_first(id: ObjectId, doc: &RawDocument) -> Result<RawDocumentBuf, Rejection> {
    let mut out = RawDocumentBuf::new();
    out.append_ref("_id", id);
    for element in doc {
        let (key, value) = element.map_err(|e| Rejection::NotJson(e.to_string()))?;
        out.append_ref(key, value);
    }
    Ok(out)
}

/// Decoded bytes to the BSON document: UTF-8, JSON object, Extended JSON, `_id`,
/// `--parse-dates`, field names. Leaves a missing `_id` missing.
pub fn parse_record(bytes: &[u8], options: &DecodeOptions) -> Result<RawDocumentBuf, Rejection> {
    if bytes.is_empty() {
        return Err(Rejection::Empty);
    }
    let text = std::str::from_utf8(bytes).map_err(|e| Rejection::NotUtf8(e.to_string()))?;
    match fast_document(text, options) {
        Some(doc) => Ok(doc),
        None => general_document(text, options),
    }
}

/// The general reader: a `Document` first, then its bytes. The authority on what is rejected.
pub fn general_document(text: &str, options: &DecodeOptions) -> Result<RawDocumentBuf, Rejection> {
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
            // MongoDB refuses an `_id` holding '$' field names: the whole batch's write would
            // fail, on every retry, for this one record.
            Bson::Document(d) if has_dollar_key(d) => {
                return Err(Rejection::BadId(
                    "a document with a field name starting with '$'",
                ))
            }
            _ => {}
        }
    }
    // A null `_id` cannot tell records apart (all of them would replace one document): the
    // record gets a derived id, as one without `_id` does.
    if matches!(doc.get("_id"), Some(Bson::Null)) {
        doc.remove("_id");
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
    if let Some(key) = doc.keys().find(|k| k.starts_with('$')) {
        return Err(Rejection::BadFieldName(format!(
            "top-level field '{key}' starts with '$', which a replacement document cannot have"
        )));
    }
    check_field_names(&doc)?;
    RawDocumentBuf::from_document(&doc).map_err(|e| Rejection::BadFieldName(e.to_string()))
}

/// Whether a field name at any depth of `doc` starts with '$'.
fn has_dollar_key(doc: &Document) -> bool {
    fn value(v: &Bson) -> bool {
        match v {
            Bson::Document(d) => has_dollar_key(d),
            Bson::Array(a) => a.iter().any(value),
            _ => false,
        }
    }
    doc.iter().any(|(k, v)| k.starts_with('$') || value(v))
}

/// Every field name, at any depth, free of NUL (BSON names are NUL-terminated).
fn check_field_names(doc: &Document) -> Result<(), Rejection> {
    fn value(v: &Bson) -> Result<(), Rejection> {
        match v {
            Bson::Document(d) => check_field_names(d),
            Bson::Array(a) => a.iter().try_for_each(value),
            _ => Ok(()),
        }
    }
    for (key, v) in doc {
        if key.contains('\0') {
            return Err(Rejection::BadFieldName(format!(
                "'{}' contains a NUL character",
                key.escape_default()
            )));
        }
        value(v)?;
    }
    Ok(())
}

/// JSON text to BSON as Extended JSON v2 would read it (the same result as
/// `Bson::try_from(serde_json::Value)`), in one pass: values are built straight from the
/// parser, and only an object with a `$` key (an Extended JSON wrapper such as `{"$oid"}`) goes
/// through `serde_json::Value` and the bson crate's Extended JSON reader.
pub fn json_to_bson(text: &str) -> Result<Bson, Rejection> {
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

impl<'de> DeserializeSeed<'de> for BsonSeed {
    type Value = Bson;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Bson, D::Error> {
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

impl<'de> Visitor<'de> for BsonSeed {
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
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Bson, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(v) = seq.next_element_seed(BsonSeed)? {
            items.push(v);
        }
        Ok(Bson::Array(items))
    }
    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Bson, A::Error> {
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
                return Bson::try_from(serde_json::Value::Object(obj)).map_err(de::Error::custom);
            }
            let value = map.next_value_seed(BsonSeed)?;
            doc.insert(key, value);
        }
        Ok(Bson::Document(doc))
    }
}

/// The fast reader: plain JSON written straight into BSON. `None` for anything it leaves to the
/// general reader: not JSON, not an object, a `$` or NUL in a key, a duplicate key (JSON's last
/// value wins, in the first one's place), an array `_id`.
fn fast_document(text: &str, options: &DecodeOptions) -> Option<RawDocumentBuf> {
    let mut de = serde_json::Deserializer::from_str(text);
    let top = FastMap {
        top: Some(options),
        capacity: text.len() + 16,
    };
    let doc = de::Deserializer::deserialize_map(&mut de, top).ok()?;
    de.end().ok()?;
    Some(doc)
}

/// A JSON value on the fast path, ready to append: strings without escapes borrowed from the text.
enum FastValue<'de> {
    Scalar(RawBsonRef<'de>),
    String(String),
    Document(RawDocumentBuf),
    Array(RawArrayBuf),
}

impl<'de> FastValue<'de> {
    fn as_ref(&self) -> RawBsonRef<'_> {
        match self {
            FastValue::Scalar(v) => *v,
            FastValue::String(s) => RawBsonRef::String(s),
            FastValue::Document(d) => RawBsonRef::Document(d),
            FastValue::Array(a) => RawBsonRef::Array(a),
        }
    }
    fn into_owned(self) -> RawBson {
        match self {
            FastValue::Scalar(v) => v.to_raw_bson(),
            FastValue::String(s) => RawBson::String(s),
            FastValue::Document(d) => RawBson::Document(d),
            FastValue::Array(a) => RawBson::Array(a),
        }
    }
    fn as_str(&self) -> Option<&str> {
        match self {
            FastValue::Scalar(RawBsonRef::String(s)) => Some(s),
            FastValue::String(s) => Some(s),
            _ => None,
        }
    }
}

/// [`int_bson`] for the fast path.
fn int_raw(i: i64) -> RawBsonRef<'static> {
    match i32::try_from(i) {
        Ok(small) => RawBsonRef::Int32(small),
        Err(_) => RawBsonRef::Int64(i),
    }
}

/// The fast path's refusal: the general reader takes over, so the message is never shown.
fn leave_to_general<E: de::Error>() -> E {
    E::custom("left to the general reader")
}

struct FastSeed;

impl<'de> DeserializeSeed<'de> for FastSeed {
    type Value = FastValue<'de>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(FastSeed)
    }
}

impl<'de> Visitor<'de> for FastSeed {
    type Value = FastValue<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(FastValue::Scalar(RawBsonRef::Boolean(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(FastValue::Scalar(int_raw(v)))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(FastValue::Scalar(
            i64::try_from(v).map_or(RawBsonRef::Double(v as f64), int_raw),
        ))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(FastValue::Scalar(RawBsonRef::Double(v)))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(FastValue::Scalar(RawBsonRef::String(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(FastValue::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(FastValue::String(v))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(FastValue::Scalar(RawBsonRef::Null))
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = RawArrayBuf::new();
        while let Some(v) = seq.next_element_seed(FastSeed)? {
            items.push(v.into_owned());
        }
        Ok(FastValue::Array(items))
    }
    fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        let nested = FastMap {
            top: None,
            capacity: 128,
        };
        nested.visit_map(map).map(FastValue::Document)
    }
}

/// An object on the fast path; `top` is set for the record itself, where `_id` and
/// `--parse-dates` apply. `capacity`: bytes to reserve, so the buffer is not grown field by field.
struct FastMap<'o> {
    top: Option<&'o DecodeOptions>,
    capacity: usize,
}

/// Where each element of a document being built starts, to find duplicate field names in its
/// bytes without keeping the names: on the stack for up to 16 fields.
struct ElementStarts {
    inline: [u32; 16],
    len: usize,
    more: Vec<u32>,
}

impl ElementStarts {
    fn new() -> Self {
        ElementStarts {
            inline: [0; 16],
            len: 0,
            more: Vec::new(),
        }
    }

    fn push(&mut self, start: usize) {
        let start = u32::try_from(start).unwrap_or(u32::MAX);
        match self.inline.get_mut(self.len) {
            Some(slot) => *slot = start,
            None => self.more.push(start),
        }
        self.len += 1;
    }

    /// Whether `key` names an element of `doc` already. An element is a type byte, then its
    /// name and a NUL.
    fn contains(&self, doc: &[u8], key: &str) -> bool {
        let n = self.len.min(self.inline.len());
        self.inline[..n].iter().chain(&self.more).any(|&start| {
            let name = start as usize + 1;
            let end = name + key.len();
            // The NUL first: it rules out most names of another length without a comparison.
            doc.get(end) == Some(&0) && doc.get(name..end) == Some(key.as_bytes())
        })
    }
}

/// A key, borrowed from the text when it has no escapes.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(KeySeed)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a field name")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
}

impl<'de> Visitor<'de> for FastMap<'_> {
    type Value = RawDocumentBuf;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<RawDocumentBuf, A::Error> {
        let mut doc = document_with_capacity(self.capacity);
        // Objects are small: a scan for duplicates is cheaper than a set.
        let mut starts = ElementStarts::new();
        while let Some(key) = map.next_key_seed(KeySeed)? {
            if key.starts_with('$') || key.contains('\0') || starts.contains(doc.as_bytes(), &key) {
                return Err(leave_to_general());
            }
            // The new element goes where the terminating NUL is now.
            starts.push(doc.as_bytes().len() - 1);
            let value = map.next_value_seed(FastSeed)?;
            let special = match self.top {
                Some(options) => top_level_value(&key, &value, options)?,
                None => None,
            };
            match special {
                Some(v) => doc.append_ref(&*key, v),
                None => doc.append_ref(&*key, value.as_ref()),
            }
        }
        Ok(doc)
    }
}

/// What a top-level field becomes when it is not stored as it came: a hex `_id` as an ObjectId,
/// a `--parse-dates` field as a date. An array `_id` is left to the general reader to reject.
fn top_level_value<E: de::Error>(
    key: &str,
    value: &FastValue<'_>,
    options: &DecodeOptions,
) -> Result<Option<RawBsonRef<'static>>, E> {
    if key == "_id" {
        // Arrays are refused, null is dropped and documents are checked by the general reader.
        if matches!(
            value,
            FastValue::Array(_) | FastValue::Document(_) | FastValue::Scalar(RawBsonRef::Null)
        ) {
            return Err(leave_to_general());
        }
        if let Some(oid) = value.as_str().and_then(object_id_of_hex) {
            return Ok(Some(RawBsonRef::ObjectId(oid)));
        }
    }
    if options.parse_dates.iter().any(|f| f == key) {
        return Ok(value
            .as_str()
            .and_then(parse_iso_date)
            .map(RawBsonRef::DateTime));
    }
    Ok(None)
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

    /// Decode and read back as a `Document`, for the assertions.
    fn decode(text: &[u8], request: &str, index: usize, o: &DecodeOptions) -> Document {
        decode_record(&b64(text), request, index, o)
            .unwrap()
            .to_document()
            .unwrap()
    }

    fn reject(text: &[u8]) -> Rejection {
        decode_record(&b64(text), "r", 0, &opts(&[]))
            .unwrap_err()
            .reason
    }

    const STRINGIFIED: &str = r#"{"_id":"65a1b2c3d4e5f60718293a4b","nodeName":"pi","humidity":41.5,"temperature":21,"isMoving":false,"acceleration":{"x":0.01,"y":0,"z":1},"recordedAt":"2023-07-13T11:02:11.016Z"}"#;

    // JSON.stringify output: _id becomes an ObjectId, the date stays a string by default, order kept.
    #[test]
    fn stringified_report_keeps_dates_as_strings() {
        let d = decode(STRINGIFIED.as_bytes(), "r", 0, &opts(&[]));
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
        let d = decode(
            STRINGIFIED.as_bytes(),
            "r",
            0,
            &opts(&["recordedAt", "nodeName"]),
        );
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
        let d = decode(text.as_bytes(), "r", 0, &opts(&[]));
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
        let data = br#"{"a":1,"b":{"$numberLong":"2"}}"#;
        let d1 = decode(data, "req-1", 7, &opts(&[]));
        let d2 = decode(data, "req-1", 7, &opts(&[]));
        let d3 = decode(data, "req-1", 8, &opts(&[]));
        let d4 = decode(data, "req-2", 7, &opts(&[]));
        let keys: Vec<&str> = d1.keys().map(String::as_str).collect();
        assert_eq!(keys, ["_id", "a", "b"]);
        assert_eq!(d1.get_object_id("_id").unwrap(), derived_id("req-1", 7));
        assert_eq!(d1.get("b"), Some(&Bson::Int64(2)));
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

    // Other _id values are kept as they came; arrays are refused; a null _id is replaced by
    // the derived one (all null-_id records would otherwise replace one document).
    #[test]
    fn other_ids_kept_arrays_refused() {
        let d = decode(br#"{"_id":null,"a":1}"#, "r", 4, &opts(&[]));
        assert_eq!(d.get_object_id("_id").unwrap(), derived_id("r", 4));
        assert_eq!(d.get_i32("a").unwrap(), 1);
        let d = decode(br#"{"_id":{"a":1}}"#, "r", 0, &opts(&[]));
        assert_eq!(d.get_document("_id").unwrap().get_i32("a").unwrap(), 1);
        let d = decode(br#"{"_id":"not-hex"}"#, "r", 0, &opts(&[]));
        assert_eq!(d.get_str("_id").unwrap(), "not-hex");
        let d = decode(br#"{"_id":42}"#, "r", 0, &opts(&[]));
        assert_eq!(d.get("_id"), Some(&Bson::Int32(42)));
        assert_eq!(reject(br#"{"_id":[1]}"#), Rejection::BadId("an array"));
        assert_eq!(
            reject(br#"{"_id":{"$foo":1}}"#),
            Rejection::BadId("a document with a field name starting with '$'")
        );
        assert_eq!(
            reject(br#"{"_id":{"a":{"$b":1}}}"#),
            Rejection::BadId("a document with a field name starting with '$'")
        );
        assert_eq!(
            reject(br#"{"_id":{"$regularExpression":{"pattern":"a","options":""}}}"#),
            Rejection::BadId("a regular expression")
        );
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
        assert_eq!(e.raw, b"{nope");

        assert!(matches!(reject(b"   "), Rejection::NotJson(_)));
        assert!(matches!(reject(b"{\"a\":1} x"), Rejection::NotJson(_)));
        assert_eq!(reject(b"[1,2]"), Rejection::NotObject);
        assert_eq!(reject(b"\"text\""), Rejection::NotObject);
        assert_eq!(
            reject(br#"{"$oid":"65a1b2c3d4e5f60718293a4b"}"#),
            Rejection::NotObject
        );
        let r = reject(br#"{"_id":{"$oid":"zz"}}"#);
        assert!(matches!(r, Rejection::ExtendedJson(_)), "{r:?}");
    }

    // Field names the database would refuse (and so fail the batch on every retry) are
    // dead-lettered: a NUL anywhere, a `$` first at the top level. A nested `$` name is stored.
    #[test]
    fn field_names_the_database_refuses() {
        for text in [
            &br#"{"a\u0000b":1}"#[..],
            br#"{"x":{"k\u0000":1}}"#,
            br#"{"x":[{"k\u0000":1}]}"#,
        ] {
            let r = reject(text);
            assert!(
                matches!(r, Rejection::BadFieldName(ref m) if m.contains("NUL")),
                "{r:?}"
            );
        }
        let r = reject(br#"{"a":1,"$set":{"b":2}}"#);
        assert!(
            matches!(r, Rejection::BadFieldName(ref m) if m.contains("$set")),
            "{r:?}"
        );
        assert!(matches!(
            reject(br#"{"$unknown":1}"#),
            Rejection::BadFieldName(_)
        ));
        let d = decode(br#"{"a":{"$foo":1}}"#, "r", 0, &opts(&[]));
        assert_eq!(d.get_document("a").unwrap().get_i32("$foo").unwrap(), 1);
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

    // The fast reader writes byte for byte what the general reader writes, for every input it
    // accepts, and leaves to the general reader every input it must not decide.
    #[test]
    fn fast_reader_matches_the_general_reader() {
        let o = opts(&["recordedAt", "when", "_id"]);
        let accepted = [
            STRINGIFIED,
            r#"{}"#,
            r#"{"a":{}}"#,
            r#"{"a":[]}"#,
            r#"{"s":"esc\"aped \u00e9 \n","k\u00e9y":"v","e\"k":1}"#,
            r#"{"nul":"a\u0000b"}"#,
            r#"{"n":[1,-1,2147483647,2147483648,-2147483649,9223372036854775807,18446744073709551615,1.5,-0.0,1e308,5e-324]}"#,
            r#"{"f":0.1,"g":42.144999999999996,"h":1e3,"i":-12}"#,
            r#"{"deep":{"a":{"b":{"c":[{"d":[true,false,null]}]}}}}"#,
            r#"{"_id":"65A1B2C3D4E5F60718293A4B","x":1}"#,
            r#"{"_id":"65a1b2c3d4e5f60718293a4","x":1}"#,
            r#"{"_id":"65a1b2c3d4e5f60718293a4g"}"#,
            r#"{"_id":"2023-07-13T11:02:11.016Z"}"#,
            r#"{"when":"2023-07-13T13:02:11.5+02:00","recordedAt":"not a date","other":"2023-07-13T11:02:11.016Z"}"#,
            r#"{"recordedAt":12,"x":{"recordedAt":"2023-07-13T11:02:11.016Z"}}"#,
            r#"{"a":{"a":1},"b":{"a":2}}"#,
            r#"  {"ws" : [ 1 , 2 ] }  "#,
        ];
        for case in accepted {
            let fast = fast_document(case, &o).unwrap_or_else(|| panic!("fast path: {case}"));
            let general = general_document(case, &o).unwrap();
            assert_eq!(fast.as_bytes(), general.as_bytes(), "{case}");
        }
        let left = [
            r#"{"a":1,"a":2}"#,
            r#"{"x":{"b":1,"b":2}}"#,
            r#"{"_id":{"$oid":"65a1b2c3d4e5f60718293a4b"}}"#,
            r#"{"x":[{"$numberLong":"1"}]}"#,
            r#"{"_id":[1]}"#,
            r#"{"_id":{"a":1},"x":"y"}"#,
            r#"{"_id":null}"#,
            r#"{"k\u0000":1}"#,
            r#"[1]"#,
            r#"{"a":1}x"#,
            r#"{"a":"#,
        ];
        for case in left {
            assert!(fast_document(case, &o).is_none(), "{case}");
        }
        // Duplicates are found past the first 16 fields too, and a name that is a prefix of
        // another is not a duplicate.
        let many: Vec<String> = (0..20).map(|i| format!(r#""k{i}":{i}"#)).collect();
        let distinct = format!(r#"{{{},"k":0,"k1x":1}}"#, many.join(","));
        assert!(fast_document(&distinct, &o).is_some(), "{distinct}");
        for dup in ["k1", "k17", "k19"] {
            let case = format!(r#"{{{},"{dup}":0}}"#, many.join(","));
            assert!(fast_document(&case, &o).is_none(), "{case}");
        }
        // A duplicate key keeps its first place and its last value, as JSON readers do.
        let d = general_document(r#"{"a":1,"b":2,"a":3}"#, &o)
            .unwrap()
            .to_document()
            .unwrap();
        assert_eq!(d, mongodb::bson::doc! { "a": 3, "b": 2 });
    }

    // Multi-byte UTF-8 survives (the original decoder produced Latin-1 code units).
    #[test]
    fn multibyte_text_survives() {
        let d = decode("{\"n\":\"Küche ☀\"}".as_bytes(), "r", 0, &opts(&[]));
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
