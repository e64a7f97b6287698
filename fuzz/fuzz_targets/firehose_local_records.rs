//! firehose-local's handling of what it reads: Kinesis record data of any bytes made into a
//! Firehose request, the endpoint's response, and its checkpoint file. Never a panic, and:
//! - the request body it builds is read by the endpoint's own parser as the same request id and
//!   the same records, byte for byte, and is no longer than the size its buffer counts on (what
//!   keeps a request under Firehose's 64 MiB);
//! - an error-output record keeps the data (base64) and the request id;
//! - a response is a success only when it is a 200 `application/json` without Content-Encoding
//!   whose body is exactly `{"requestId": <ours>, "timestamp": <number>}`, and the endpoint's own
//!   success answer is one;
//! - a checkpoint file of any bytes is read, or refused with a message, for the stream it names.
#![no_main]

use base64::Engine as _;
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use sensehat_monitor::firehose::protocol::{response_body, RequestBody};
use sensehat_monitor::firehose_local::checkpoint::Checkpoint;
use sensehat_monitor::firehose_local::protocol::{
    check_response, encoded_record_bytes, error_record, request_body, Failure, ResponseHead,
    BODY_OVERHEAD_BYTES,
};

/// A request id as firehose-local makes them (a UUID: 36 characters).
const REQUEST_ID: &str = "0f8fad5b-d9cb-469f-a165-70867728950e";

fn records(u: &mut Unstructured) -> Result<()> {
    let records: Vec<Vec<u8>> = u.arbitrary()?;
    let timestamp: i64 = u.int_in_range(0..=i64::MAX / 2)?;
    let body = request_body(REQUEST_ID, timestamp, records.iter().map(Vec::as_slice));
    let counted = BODY_OVERHEAD_BYTES
        + records
            .iter()
            .map(|r| encoded_record_bytes(r.len()))
            .sum::<usize>();
    assert!(
        body.len() <= counted,
        "a body of {} bytes where the buffer counted {counted}",
        body.len()
    );
    let parsed: RequestBody = serde_json::from_slice(&body).expect("the endpoint reads the body");
    assert_eq!(parsed.request_id, REQUEST_ID);
    assert_eq!(parsed.records.len(), records.len());
    let engine = base64::engine::general_purpose::STANDARD;
    for (sent, got) in records.iter().zip(&parsed.records) {
        assert_eq!(&engine.decode(got.data.as_bytes()).unwrap(), sent);
    }
    if let Some(first) = records.first() {
        let failure = Failure::new("HttpEndpoint.DestinationException", "x");
        let line = error_record(3, timestamp, &failure, timestamp, first, REQUEST_ID);
        assert_eq!(line["requestId"], REQUEST_ID);
        let raw = line["rawData"].as_str().unwrap();
        assert_eq!(&engine.decode(raw).unwrap(), first);
    }
    Ok(())
}

fn response(u: &mut Unstructured) -> Result<()> {
    let status: u16 = if u.arbitrary()? {
        200
    } else {
        u.int_in_range(100..=599)?
    };
    let content_type: Option<String> = if u.arbitrary()? {
        Some("application/json".into())
    } else {
        u.arbitrary()?
    };
    let content_encoding: Option<String> = if u.ratio(3, 4)? { None } else { u.arbitrary()? };
    let body: Vec<u8> = if u.ratio(1, 4)? {
        let error: Option<String> = u.arbitrary()?;
        response_body(REQUEST_ID, u.arbitrary()?, error.as_deref())
    } else {
        u.arbitrary()?
    };
    // Mostly the body's own length, as an endpoint sends it; else missing or anything.
    let content_length: Option<String> = if u.ratio(3, 4)? {
        Some(body.len().to_string())
    } else {
        u.arbitrary()?
    };
    let head = ResponseHead {
        status,
        content_type: content_type.as_deref(),
        content_encoding: content_encoding.as_deref(),
        content_length: content_length.as_deref(),
    };
    let result = check_response(REQUEST_ID, &head, &body);
    if let Err(f) = &result {
        assert!(f.code.starts_with("HttpEndpoint."), "{f:?}");
        return Ok(());
    }
    assert_eq!(status, 200);
    assert!(content_encoding.is_none());
    assert_eq!(
        content_length.and_then(|v| v.trim().parse::<usize>().ok()),
        Some(body.len())
    );
    let mime = content_type.unwrap_or_default();
    assert!(mime
        .split(';')
        .next()
        .unwrap()
        .trim()
        .eq_ignore_ascii_case("application/json"));
    let v: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&body).unwrap();
    assert_eq!(v.len(), 2, "{v:?}");
    assert_eq!(v["requestId"], REQUEST_ID);
    assert!(v["timestamp"].is_number());
    Ok(())
}

fn checkpoint(u: &mut Unstructured) -> Result<()> {
    let stream: String = u.arbitrary()?;
    let file: Vec<u8> = u.arbitrary()?;
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    let path = DIR
        .get_or_init(|| tempfile::tempdir().unwrap())
        .path()
        .join("checkpoint.json");
    std::fs::write(&path, &file).unwrap();
    match Checkpoint::read(&path, &stream) {
        Ok(saved) => assert!(saved.is_some(), "a file that is there is read"),
        Err(message) => assert!(!message.is_empty()),
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let _ = match u.int_in_range(0..=2u8) {
        Ok(0) => records(&mut u),
        Ok(1) => response(&mut u),
        Ok(_) => checkpoint(&mut u),
        Err(_) => return,
    };
    // The endpoint's own success answer is one.
    let ok = response_body(REQUEST_ID, 1_700_000_000_000, None);
    let length = ok.len().to_string();
    let head = ResponseHead {
        status: 200,
        content_type: Some("application/json"),
        content_encoding: None,
        content_length: Some(&length),
    };
    assert!(check_response(REQUEST_ID, &head, &ok).is_ok());
});
