//! Tests of the decode API as a whole: each reader against the other and against the bson
//! crate, the `_id` rules, and each reason a record is rejected.

use super::*;
use base64::engine::general_purpose::STANDARD;
use mongodb::bson::spec::ElementType;
use mongodb::bson::{Bson, Document};

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

/// Not JSON: an object that is never closed. (A constant, so that no test's body holds an
/// unbalanced brace.)
const UNCLOSED: &[u8] = b"{nope";

/// JSON cut short inside an object.
const TRUNCATED: &str = r#"{"a":"#;

/// Not UTF-8, with the brace of an object after it.
const NOT_UTF8: [u8; 3] = [0xff, 0xfe, b'{'];

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

// An empty record is rejected with no bytes to keep.
#[test]
fn empty_record_is_rejected() {
    let e = decode_record("", "r", 0, &opts(&[])).unwrap_err();
    assert_eq!((e.raw.as_slice(), e.reason), (&b""[..], Rejection::Empty));
}

// Data that is not standard-alphabet base64 is rejected, keeping the text as it came.
#[test]
fn bad_base64_keeps_the_text() {
    let o = opts(&[]);
    let e = decode_record("!!not base64!!", "r", 0, &o).unwrap_err();
    assert!(matches!(e.reason, Rejection::Base64(_)));
    assert_eq!(e.raw, b"!!not base64!!");
    // URL-safe alphabet is not the standard one.
    let e = decode_record("-_-_", "r", 0, &o).unwrap_err();
    assert!(matches!(e.reason, Rejection::Base64(_)));
}

// Decoded bytes that are not UTF-8 are rejected, keeping the decoded bytes.
#[test]
fn not_utf8_keeps_the_decoded_bytes() {
    let e = decode_record(&b64(&NOT_UTF8), "r", 0, &opts(&[])).unwrap_err();
    assert!(matches!(e.reason, Rejection::NotUtf8(_)));
    assert_eq!(e.raw, NOT_UTF8);
}

// A record the KPL aggregated (firehose-local sends it unsplit: docs/pipeline.md) starts with
// the KPL's magic bytes, which are not UTF-8: a dead letter keeping its bytes, as documented.
#[test]
fn kpl_aggregated_records_are_not_utf8() {
    let mut kpl = vec![0xf3, 0x89, 0x9a, 0xc2];
    kpl.extend_from_slice(b"\x0a\x01k\x1a\x08\x08\x00\x1a\x04{}{}");
    let e = decode_record(&b64(&kpl), "r", 0, &opts(&[])).unwrap_err();
    assert!(matches!(e.reason, Rejection::NotUtf8(_)), "{:?}", e.reason);
    assert_eq!(e.raw, kpl);
}

// Text that is not JSON (also blank, or JSON followed by more) is rejected, keeping the bytes.
#[test]
fn not_json_keeps_the_decoded_bytes() {
    let e = decode_record(&b64(UNCLOSED), "r", 0, &opts(&[])).unwrap_err();
    assert!(matches!(e.reason, Rejection::NotJson(_)), "{:?}", e.reason);
    assert_eq!(e.raw, UNCLOSED);
    assert!(matches!(reject(b"   "), Rejection::NotJson(_)));
    assert!(matches!(reject(b"{\"a\":1} x"), Rejection::NotJson(_)));
}

// A record of Firehose's 1,024,000 bytes is decoded; one byte more and it is rejected
// unparsed, keeping its first 1,024,000 bytes.
#[test]
fn records_over_firehose_s_maximum_are_rejected_unparsed() {
    let object = |n: usize| {
        let text = format!(r#"{{"s":"{}"}}"#, "x".repeat(n - 8)).into_bytes();
        assert_eq!(text.len(), n);
        text
    };
    let fits = object(MAX_RECORD_BYTES);
    assert!(decode_record(&b64(&fits), "r", 0, &opts(&[])).is_ok());
    let over = object(MAX_RECORD_BYTES + 1);
    let e = decode_record(&b64(&over), "r", 0, &opts(&[])).unwrap_err();
    assert_eq!(e.reason, Rejection::TooLarge(MAX_RECORD_BYTES + 1));
    assert_eq!(e.raw, &over[..MAX_RECORD_BYTES]);
}

// JSON that is not an object, including a top-level Extended JSON value, is rejected.
#[test]
fn json_that_is_not_an_object_is_rejected() {
    assert_eq!(reject(b"[1,2]"), Rejection::NotObject);
    assert_eq!(reject(b"\"text\""), Rejection::NotObject);
    assert_eq!(
        reject(br#"{"$oid":"65a1b2c3d4e5f60718293a4b"}"#),
        Rejection::NotObject
    );
}

// A `$` wrapper the Extended JSON reader refuses is rejected as such.
#[test]
fn invalid_extended_json_is_rejected() {
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
// accepts.
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
        let fast = fast::document(case, &o).unwrap_or_else(|| panic!("fast path: {case}"));
        let general = general_document(case, &o).unwrap();
        assert_eq!(fast.as_bytes(), general.as_bytes(), "{case}");
    }
}

// The fast reader leaves to the general reader every input it must not decide: `$` keys,
// duplicates, an `_id` to check, and anything that is not one JSON object.
#[test]
fn fast_reader_leaves_what_it_must_not_decide() {
    let o = opts(&["recordedAt", "when", "_id"]);
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
        TRUNCATED,
    ];
    for case in left {
        assert!(fast::document(case, &o).is_none(), "{case}");
    }
}

// Duplicates are found past the first 16 fields too, and a name that is a prefix of another
// is not a duplicate; the general reader keeps a duplicate's first place and last value.
#[test]
fn duplicate_keys_past_sixteen_fields() {
    let o = opts(&["recordedAt", "when", "_id"]);
    let many: Vec<String> = (0..20).map(|i| format!(r#""k{i}":{i}"#)).collect();
    let distinct = format!(r#"{{{},"k":0,"k1x":1}}"#, many.join(","));
    assert!(fast::document(&distinct, &o).is_some(), "{distinct}");
    for dup in ["k1", "k17", "k19"] {
        let case = format!(r#"{{{},"{dup}":0}}"#, many.join(","));
        assert!(fast::document(&case, &o).is_none(), "{case}");
    }
    // A duplicate key keeps its first place and its last value, as JSON readers do.
    let d = general_document(r#"{"a":1,"b":2,"a":3}"#, &o)
        .unwrap()
        .to_document()
        .unwrap();
    assert_eq!(d, mongodb::bson::doc! { "a": 3, "b": 2 });
}

// An object wider than the fast path's scan for duplicates takes (its cost grows with the
// square of the fields) goes to the general reader, which writes the same document; nested
// objects are counted each on their own.
#[test]
fn wide_objects_go_to_the_general_reader() {
    let o = opts(&[]);
    let object = |n: usize| {
        let fields: Vec<String> = (0..n).map(|i| format!(r#""k{i}":{i}"#)).collect();
        format!("{{{}}}", fields.join(","))
    };
    let at_limit = object(64);
    assert!(fast::document(&at_limit, &o).is_some());
    let nested = format!(r#"{{"a":{at_limit},"b":{at_limit}}}"#);
    assert!(fast::document(&nested, &o).is_some());
    let wide = object(65);
    assert!(fast::document(&wide, &o).is_none());
    let d = decode(wide.as_bytes(), "r", 0, &o);
    // Every field, and the `_id` the record is given.
    assert_eq!(d.keys().filter(|k| k.starts_with('k')).count(), 65);
    assert_eq!(d.get_i32("k64"), Ok(64));
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
