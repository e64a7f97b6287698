//! The Firehose request body as the endpoint reads it: the body (gzip or not) collected chunk
//! by chunk under its size limit, the JSON envelope, each record's base64, and the record's JSON
//! made into BSON. Never a panic; a body past the limit, however well it compresses, is refused
//! without holding more than the limit; the fast JSON-to-BSON reader never accepts a record
//! differently from the general one (same document, or it leaves the record to the general one);
//! and an accepted record round-trips:
//! - plain JSON (no `$` key): the stored document, read back as JSON, is the record, within the
//!   documented rules (docs/firehose-endpoint.md): an integer is an Int32 when it fits, else an
//!   Int64, else (past the int64 range) the nearest double; any other number the double it
//!   reads as, bit for bit; a 24-hex `_id` an ObjectId; a missing or null `_id` a derived
//!   ObjectId; a `--parse-dates` field that is an ISO-8601 date-time a date of its milliseconds;
//!   field order kept, a repeated key's last value in its first place;
//! - any record: the stored document written as canonical Extended JSON decodes to the same
//!   BSON bytes.
#![no_main]

use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use mongodb::bson::{Bson, Document};
use sensehat_monitor::firehose::decode::{
    decode_record, general_document, parse_iso_date, parse_record, DecodeOptions,
};
use sensehat_monitor::firehose::protocol::{BodyError, BodyReader, RequestBody};
use serde_json::Value;

/// Small enough that the fuzzer reaches it, as the endpoint's 64 MiB is reached in production.
const LIMIT: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, body)) = data.split_first() else {
        return;
    };
    let gzip = flags & 1 == 1;
    let split = (flags as usize >> 1).min(body.len());
    let mut reader = BodyReader::new(gzip, LIMIT);
    let collected = match reader
        .push(&body[..split])
        .and_then(|()| reader.push(&body[split..]))
    {
        Ok(()) => reader.finish(),
        Err(e) => Err(e),
    };
    let bytes = match collected {
        Ok(b) => b,
        Err(BodyError::TooLarge { limit, gzip: said_gzip }) => {
            assert_eq!(limit, LIMIT);
            assert_eq!(said_gzip, gzip, "a body too large is said to be as it came");
            return;
        }
        Err(_) => return,
    };
    assert!(bytes.len() <= LIMIT, "{} bytes past the limit", bytes.len());
    let options = DecodeOptions {
        parse_dates: vec!["recordedAt".into()],
    };
    // Each record's bytes as JSON, the way parse_record sees them, against the general reader.
    if let Ok(text) = std::str::from_utf8(&bytes) {
        let fast_or_general = parse_record(text.as_bytes(), &options).ok();
        let general = general_document(text, &options).ok();
        assert_eq!(fast_or_general, general, "the readers disagree on {text:?}");
    }
    let Ok(request) = serde_json::from_slice::<RequestBody>(&bytes) else {
        return;
    };
    for (i, record) in request.records.iter().enumerate() {
        if let Ok(raw) = decode_record(&record.data, &request.request_id, i, &options) {
            let doc = raw
                .to_document()
                .expect("an accepted record is a valid BSON document");
            assert!(doc.contains_key("_id"), "an accepted record has an _id");
            let canonical = Bson::Document(doc.clone())
                .into_canonical_extjson()
                .to_string();
            let again = parse_record(canonical.as_bytes(), &options)
                .unwrap_or_else(|e| panic!("{canonical} is refused ({e})"));
            assert_eq!(
                again.as_bytes(),
                raw.as_bytes(),
                "{canonical} reads as another document"
            );
            let engine = base64::engine::general_purpose::STANDARD;
            let text = engine.decode(record.data.as_bytes()).unwrap();
            let input: Value = serde_json::from_slice(&text).unwrap();
            if !has_dollar_key(&input) {
                same_document(&input, &doc, true, &options);
            }
        }
    }
});

fn has_dollar_key(v: &Value) -> bool {
    match v {
        Value::Object(m) => m
            .iter()
            .any(|(k, v)| k.starts_with('$') || has_dollar_key(v)),
        Value::Array(a) => a.iter().any(has_dollar_key),
        _ => false,
    }
}

/// `stored` is the JSON object `input` under the documented rules.
fn same_document(input: &Value, stored: &Document, top: bool, options: &DecodeOptions) {
    let Value::Object(fields) = input else {
        panic!("an accepted record that is not an object: {input}");
    };
    let mut keys: Vec<&str> = fields.keys().map(String::as_str).collect();
    if top {
        match fields.get("_id") {
            None | Some(Value::Null) => {
                assert!(
                    matches!(stored.get("_id"), Some(Bson::ObjectId(_))),
                    "derived _id"
                );
                keys.retain(|k| *k != "_id");
                keys.insert(0, "_id");
            }
            Some(Value::String(hex))
                if hex.len() == 24 && hex.bytes().all(|b| b.is_ascii_hexdigit()) =>
            {
                let Some(Bson::ObjectId(oid)) = stored.get("_id") else {
                    panic!("a 24-hex _id stored as {:?}", stored.get("_id"));
                };
                assert_eq!(oid.to_hex(), hex.to_ascii_lowercase());
            }
            Some(_) => {}
        }
    }
    let stored_keys: Vec<&str> = stored.keys().map(String::as_str).collect();
    assert_eq!(stored_keys, keys, "field order");
    for (key, value) in fields {
        let got = stored
            .get(key)
            .unwrap_or_else(|| panic!("{key:?} not stored"));
        if top && key == "_id" && matches!(got, Bson::ObjectId(_)) {
            continue;
        }
        if top && options.parse_dates.iter().any(|d| d == key) {
            if let Some(date) = value.as_str().and_then(parse_iso_date) {
                assert_eq!(got, &Bson::DateTime(date), "{key}");
                continue;
            }
        }
        same_value(value, got, options);
    }
}

fn same_value(input: &Value, got: &Bson, options: &DecodeOptions) {
    match (input, got) {
        (Value::Null, Bson::Null) => {}
        (Value::Bool(a), Bson::Boolean(b)) => assert_eq!(a, b),
        (Value::String(a), Bson::String(b)) => assert_eq!(a, b),
        (Value::Number(n), got) => {
            if let Some(i) = n.as_i64() {
                let want = match i32::try_from(i) {
                    Ok(small) => Bson::Int32(small),
                    Err(_) => Bson::Int64(i),
                };
                assert_eq!(got, &want, "{n}");
            } else {
                let f = n.as_f64().unwrap();
                let Bson::Double(d) = got else {
                    panic!("{n} stored as {got:?}");
                };
                assert_eq!(d.to_bits(), f.to_bits(), "{n} stored as {d:e}");
            }
        }
        (Value::Array(a), Bson::Array(b)) => {
            assert_eq!(a.len(), b.len());
            a.iter().zip(b).for_each(|(x, y)| same_value(x, y, options));
        }
        (Value::Object(_), Bson::Document(d)) => same_document(input, d, false, options),
        (a, b) => panic!("{a} stored as {b:?}"),
    }
}
