//! The forwarder's record formats on any document a change stream could carry (the input is
//! read as BSON, as the driver reads the server's bytes). Never a panic, and:
//! - every format writes one valid JSON text;
//! - canonical Extended JSON reads back as the same document (written again, the same text);
//! - `stringify` writes every finite double so that it reads back as the same number, as
//!   JavaScript's `JSON.stringify` does, and what it writes of a document with plain field
//!   names is accepted by the Firehose endpoint's record decoder (the pipeline's next hop).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mongodb::bson::{Bson, Document};
use sensehat_monitor::firehose::decode::{parse_record, DecodeOptions};
use sensehat_monitor::forwarder::format::{js_number, stringify, Format};

/// Whether a field name anywhere in the document is one the endpoint refuses on purpose (a `$`
/// first at the top level, where a replacement document cannot have one; a NUL anywhere), or one
/// that Extended JSON would read as a type wrapper (`$` first at any depth).
fn has_special_keys(doc: &Document) -> bool {
    fn value(v: &Bson) -> bool {
        match v {
            Bson::Document(d) => has_special_keys(d),
            Bson::Array(a) => a.iter().any(value),
            _ => false,
        }
    }
    // An array `_id` cannot be in a collection, so no change stream carries one.
    matches!(doc.get("_id"), Some(Bson::Array(_)))
        || doc
            .iter()
            .any(|(k, v)| k.starts_with('$') || k.contains('\0') || value(v))
}

/// Whether every value is one `JSON.stringify` writes as plain JSON (no Extended JSON wrapper
/// for a type JavaScript has no primitive for).
fn plain_values(doc: &Document) -> bool {
    fn value(v: &Bson) -> bool {
        match v {
            Bson::Document(d) => plain_values(d),
            Bson::Array(a) => a.iter().all(value),
            Bson::ObjectId(_)
            | Bson::DateTime(_)
            | Bson::String(_)
            | Bson::Boolean(_)
            | Bson::Null
            | Bson::Undefined
            | Bson::Double(_)
            | Bson::Int32(_)
            | Bson::Int64(_) => true,
            _ => false,
        }
    }
    doc.iter().all(|(_, v)| value(v))
}

fn doubles(doc: &Document, out: &mut Vec<f64>) {
    fn value(v: &Bson, out: &mut Vec<f64>) {
        match v {
            Bson::Document(d) => doubles(d, out),
            Bson::Array(a) => a.iter().for_each(|v| value(v, out)),
            Bson::Double(f) => out.push(*f),
            _ => {}
        }
    }
    doc.iter().for_each(|(_, v)| value(v, out));
}

fuzz_target!(|data: &[u8]| {
    let Ok(doc) = Document::from_reader(data) else {
        return;
    };
    for format in [Format::Stringify, Format::Relaxed, Format::Canonical] {
        let bytes = format.encode(&doc);
        if let Err(e) = serde_json::from_slice::<serde_json::Value>(&bytes) {
            panic!(
                "{format:?} wrote invalid JSON ({e}): {}",
                String::from_utf8_lossy(&bytes)
            );
        }
    }
    // Numbers as JavaScript writes them read back as the same double.
    let mut found = Vec::new();
    doubles(&doc, &mut found);
    for f in found.into_iter().filter(|f| f.is_finite()) {
        let text = js_number(f);
        let back: f64 = text
            .parse()
            .unwrap_or_else(|_| panic!("{f:e} written as {text:?}"));
        assert!(
            back == f,
            "{f:e} written as {text:?}, read back as {back:e}"
        );
    }
    // Canonical Extended JSON loses nothing: read back and written again, the same text. (A
    // field named like a type wrapper, `$oid` say, is ambiguous in Extended JSON itself.)
    if !has_special_keys(&doc) {
        let canonical = Format::Canonical.encode(&doc);
        let value: serde_json::Value = serde_json::from_slice(&canonical).unwrap();
        let again = Bson::try_from(value).expect("canonical Extended JSON reads back");
        let Bson::Document(again) = again else {
            panic!("canonical Extended JSON of a document read back as another type");
        };
        assert_eq!(
            String::from_utf8_lossy(&Format::Canonical.encode(&again)),
            String::from_utf8_lossy(&canonical),
            "canonical Extended JSON changed on the way back"
        );
    }
    // What the default format sends on, the endpoint decodes.
    if !has_special_keys(&doc) && plain_values(&doc) {
        let text = stringify(&doc);
        if let Err(e) = parse_record(text.as_bytes(), &DecodeOptions::default()) {
            panic!("the endpoint rejects the forwarder's record {text:?}: {e}");
        }
    }
});
