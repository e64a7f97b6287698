//! The fast reader: plain JSON written straight into a [`RawDocumentBuf`] as the parser reads
//! it. It answers `None` for anything it must not decide (`$` keys, duplicate keys, an `_id`
//! that needs checking), which the general reader then takes; for every input it accepts it
//! writes byte for byte what the general reader would.

use std::borrow::Cow;
use std::fmt;

use mongodb::bson::{RawArrayBuf, RawBson, RawBsonRef, RawDocumentBuf};
use serde::de::{self, DeserializeSeed, Visitor};

use super::{object_id_of_hex, parse_iso_date, DecodeOptions};
use crate::report::document_with_capacity;

/// The fast reader: plain JSON written straight into BSON. `None` for anything it leaves to the
/// general reader: not JSON, not an object, a `$` or NUL in a key, a duplicate key (JSON's last
/// value wins, in the first one's place), an array `_id`.
pub(super) fn document(text: &str, options: &DecodeOptions) -> Option<RawDocumentBuf> {
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

/// The general reader's `int_bson` for the fast path: Int32 when it fits, else Int64.
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

/// Fields an object may have on the fast path: its scan for duplicates compares each name
/// with those before it, so an object of n fields costs n²/2 comparisons, and a record of one
/// object with 85,000 short names (1 MB) would hold a worker of the endpoint for seconds per
/// record. Wider objects go to the general reader, whose map finds a name in log n.
const FIELDS_MAX: usize = 64;

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
            if key.starts_with('$')
                || key.contains('\0')
                || starts.len == FIELDS_MAX
                || starts.contains(doc.as_bytes(), &key)
            {
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
