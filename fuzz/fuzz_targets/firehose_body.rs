//! The Firehose request body as the endpoint reads it: the body (gzip or not) collected chunk
//! by chunk under its size limit, the JSON envelope, each record's base64, and the record's JSON
//! made into BSON. Never a panic; a body past the limit, however well it compresses, is refused
//! without holding more than the limit; and the fast JSON-to-BSON reader never accepts a record
//! differently from the general one (same document, or it leaves the record to the general one).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sensehat_monitor::firehose::decode::{decode_record, general_document, parse_record, DecodeOptions};
use sensehat_monitor::firehose::protocol::{BodyError, BodyReader, RequestBody};

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
        Err(BodyError::TooLarge { limit }) => {
            assert_eq!(limit, LIMIT);
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
        if let Ok(doc) = decode_record(&record.data, &request.request_id, i, &options) {
            let doc = doc.to_document().expect("an accepted record is a valid BSON document");
            assert!(doc.contains_key("_id"), "an accepted record has an _id");
        }
    }
});
