//! The general reader: JSON text to a BSON `Document` (Extended JSON wrappers through the bson
//! crate's reader), then the checks that decide what the database would refuse, then its bytes.
//! Every input the fast reader leaves, and every rejected one, comes here.

use std::fmt;

use mongodb::bson::{Bson, Document, RawDocumentBuf};
use serde::de::{self, DeserializeSeed, Visitor};

use super::{object_id_of_hex, parse_iso_date, DecodeOptions, Rejection};

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
