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
//! a replacement document). And, unparsed, a record over Firehose's [`MAX_RECORD_BYTES`].
//!
//! Two readers give the same bytes:
//! - `fast`: plain JSON (no `$` keys, no duplicate keys, no array `_id`) written straight into a
//!   [`RawDocumentBuf`] as the parser reads it: no intermediate tree, strings copied once.
//!   Sensor reports all take this path.
//! - `general` ([`general_document`]): everything else, including every input that is rejected:
//!   a `Document` first, with the bson crate's Extended JSON reader for `$` wrappers
//!   ([`json_to_bson`]). It is the authority on what is rejected.
//!
//! This file holds the envelope both share: the options, the rejection reasons, base64, the
//! derived `_id`.

mod fast;
mod general;
#[cfg(test)]
mod tests;

use std::fmt;

use base64::Engine as _;
use mongodb::bson::{oid::ObjectId, DateTime, RawDocument, RawDocumentBuf};
use sha2::{Digest, Sha256};

pub use general::{general_document, json_to_bson};

pub use crate::report::document_with_capacity;

/// How records become documents.
#[derive(Debug, Clone, Default)]
pub struct DecodeOptions {
    /// Top-level fields whose ISO-8601 string value becomes a BSON date (`--parse-dates`).
    /// A value that is not a string, or not an ISO-8601 date-time, is stored as it came.
    pub parse_dates: Vec<String>,
}

/// Most bytes of data in a record: Firehose sends no larger one (its record maximum, 1,000 KiB),
/// so a larger one comes from a client holding the key. It is not parsed: its document could
/// grow past MongoDB's 16 MiB (an array of small numbers takes about six times its text in
/// BSON), which every retry would fail with 503, and its copies could take gigabytes.
pub const MAX_RECORD_BYTES: usize = crate::FIREHOSE_MAX_RECORD_BYTES;

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
    /// More than [`MAX_RECORD_BYTES`] of data (how many): only the first of them are kept.
    TooLarge(usize),
}

impl Rejection {
    /// Every [`Rejection::kind`], and [`Rejection::REFUSED`]: the dead-letter metric's labels.
    pub const KINDS: [&'static str; 10] = [
        "empty",
        "base64",
        "not_utf8",
        "not_json",
        "not_object",
        "extended_json",
        "bad_id",
        "bad_field_name",
        "too_large",
        Rejection::REFUSED,
    ];
    /// The reason of a record the database refused for good.
    pub const REFUSED: &'static str = "refused";

    /// A short name for the kind of rejection, without the detail (a metric's label).
    pub fn kind(&self) -> &'static str {
        match self {
            Rejection::Empty => "empty",
            Rejection::Base64(_) => "base64",
            Rejection::NotUtf8(_) => "not_utf8",
            Rejection::NotJson(_) => "not_json",
            Rejection::NotObject => "not_object",
            Rejection::ExtendedJson(_) => "extended_json",
            Rejection::BadId(_) => "bad_id",
            Rejection::BadFieldName(_) => "bad_field_name",
            Rejection::TooLarge(_) => "too_large",
        }
    }
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
            Rejection::TooLarge(n) => write!(
                f,
                "record of {n} bytes, over Firehose's record maximum of 1,000 KiB \
                 ({MAX_RECORD_BYTES} bytes): not parsed, and only its first \
                 {MAX_RECORD_BYTES} bytes kept here"
            ),
        }
    }
}

/// A record that could not be decoded: the bytes to keep (decoded bytes when base64 worked,
/// else the record's `data` text as it came) and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// What the dead-letter entry keeps of the record.
    pub raw: Vec<u8>,
    /// Why the record was rejected.
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
    let mut bytes = match base64::engine::general_purpose::STANDARD.decode(data) {
        Ok(b) => b,
        Err(e) => {
            return Err(Rejected {
                raw: data.as_bytes().to_vec(),
                reason: Rejection::Base64(e.to_string()),
            })
        }
    };
    if bytes.len() > MAX_RECORD_BYTES {
        // Cut, so that the dead letter stays far below MongoDB's 16 MiB, whatever its size.
        let reason = Rejection::TooLarge(bytes.len());
        bytes.truncate(MAX_RECORD_BYTES);
        return Err(Rejected { raw: bytes, reason });
    }
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
    match fast::document(text, options) {
        Some(doc) => Ok(doc),
        None => general_document(text, options),
    }
}

/// A 24-hex-digit string as an ObjectId (either case), else `None`.
pub(crate) fn object_id_of_hex(s: &str) -> Option<ObjectId> {
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
