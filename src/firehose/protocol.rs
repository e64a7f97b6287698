//! The Firehose HTTP delivery contract: header names, the request body, the response body, and
//! reading a body with a cap that applies after gzip decompression.

use std::borrow::Cow;
use std::io::Write;
use std::marker::PhantomData;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;

/// `X-Amz-Firehose-Request-Id`: the same on every retry of a batch.
pub const REQUEST_ID: &str = "x-amz-firehose-request-id";
/// `X-Amz-Firehose-Access-Key`: the configured key, verbatim.
pub const ACCESS_KEY: &str = "x-amz-firehose-access-key";
/// `X-Amz-Firehose-Protocol-Version`: `1.0`.
pub const PROTOCOL_VERSION: &str = "x-amz-firehose-protocol-version";
/// `X-Amz-Firehose-Source-Arn`: the delivery stream, for the log.
pub const SOURCE_ARN: &str = "x-amz-firehose-source-arn";
/// The only protocol version.
pub const SUPPORTED_VERSION: &str = "1.0";
/// Firehose reads at most this many characters of `errorMessage`.
pub const MAX_ERROR_MESSAGE: usize = 8192;
/// Most records in one request (Firehose sends 1 to 10,000). Counted while the body is parsed:
/// a 64 MiB body of `{},` is 22 million records, over a gigabyte once parsed.
pub const MAX_RECORDS: usize = 10_000;
/// Most characters of a body's parse error kept: serde quotes a wrong-typed value whole, and a
/// 60 MiB string went into the log line.
pub const MAX_PARSE_ERROR: usize = 300;

/// The request body: `{"requestId", "timestamp", "records": [{"data"}]}`. Record data borrow
/// from the body.
#[derive(Debug, Deserialize)]
pub struct RequestBody<'a> {
    /// Firehose's id of the request, echoed in the response.
    #[serde(rename = "requestId", borrow)]
    pub request_id: Cow<'a, str>,
    /// When Firehose sent the request, in milliseconds since the epoch.
    #[serde(default)]
    pub timestamp: Option<serde_json::Number>,
    /// The records, in the order Firehose read them; at most [`MAX_RECORDS`].
    #[serde(borrow, deserialize_with = "at_most_max_records")]
    pub records: Vec<RecordIn<'a>>,
}

/// One record; a missing `data` counts as empty.
#[derive(Debug, Deserialize)]
pub struct RecordIn<'a> {
    /// The record's bytes, base64-encoded.
    #[serde(default, borrow)]
    pub data: Cow<'a, str>,
}

/// The `records` array, refused as soon as it holds more than [`MAX_RECORDS`].
fn at_most_max_records<'de: 'a, 'a, D: Deserializer<'de>>(
    d: D,
) -> Result<Vec<RecordIn<'a>>, D::Error> {
    struct Records<'a>(PhantomData<RecordIn<'a>>);
    impl<'de: 'a, 'a> Visitor<'de> for Records<'a> {
        type Value = Vec<RecordIn<'a>>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            write!(f, "an array of at most {MAX_RECORDS} records")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut records = Vec::new();
            while let Some(r) = seq.next_element()? {
                if records.len() == MAX_RECORDS {
                    return Err(de::Error::custom(format_args!(
                        "more than {MAX_RECORDS} records (Firehose sends at most {MAX_RECORDS})"
                    )));
                }
                records.push(r);
            }
            Ok(records)
        }
    }
    d.deserialize_seq(Records(PhantomData))
}

/// A body's parse error, cut to [`MAX_PARSE_ERROR`] characters.
pub fn parse_error(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.char_indices().nth(MAX_PARSE_ERROR) {
        Some((cut, _)) => format!("{}... (cut)", &text[..cut]),
        None => text,
    }
}

/// The response body: exactly `{"requestId","timestamp"}`, plus `errorMessage` on failure
/// (cut to [`MAX_ERROR_MESSAGE`] characters).
pub fn response_body(request_id: &str, timestamp_ms: i64, error: Option<&str>) -> Vec<u8> {
    let mut map = serde_json::Map::new();
    map.insert("requestId".into(), request_id.into());
    map.insert("timestamp".into(), timestamp_ms.into());
    if let Some(e) = error {
        let cut: String = e.chars().take(MAX_ERROR_MESSAGE).collect();
        map.insert("errorMessage".into(), cut.into());
    }
    serde_json::to_vec(&serde_json::Value::Object(map)).unwrap_or_default()
}

/// Why a body could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BodyError {
    /// More than the limit, after decompression if `gzip`: 413.
    #[error("request body larger than {limit} bytes{}", if *.gzip { " after decompression" } else { "" })]
    TooLarge {
        /// The limit, in bytes.
        limit: usize,
        /// The body came gzip-compressed.
        gzip: bool,
    },
    /// Corrupt or truncated gzip: 400.
    #[error("invalid gzip body: {0}")]
    BadGzip(String),
    /// The connection failed while the body was being read.
    #[error("could not read the request body: {0}")]
    Read(String),
}

/// A `Vec` that refuses to grow past `limit` bytes.
#[derive(Debug)]
pub struct CappedVec {
    buf: Vec<u8>,
    limit: usize,
    exceeded: bool,
}

impl CappedVec {
    /// An empty buffer that takes at most `limit` bytes.
    pub fn new(limit: usize) -> Self {
        CappedVec {
            buf: Vec::new(),
            limit,
            exceeded: false,
        }
    }
}

impl Write for CappedVec {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() + data.len() > self.limit {
            self.exceeded = true;
            return Err(std::io::Error::other("body limit exceeded"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Collects a body chunk by chunk, decompressing gzip as it arrives, and stops as soon as the
/// (decompressed) size passes the limit: a gzip bomb costs at most `limit` bytes of memory.
pub enum BodyReader {
    /// A body sent as it is.
    Identity(CappedVec),
    /// A body sent with `Content-Encoding: gzip`, decompressed as it arrives.
    Gzip(Box<flate2::write::MultiGzDecoder<CappedVec>>),
}

/// What the decompressor's error `e` was: the output over its limit, or the gzip stream bad.
fn gzip_error(out: &CappedVec, e: &std::io::Error) -> BodyError {
    if out.exceeded {
        BodyError::TooLarge {
            limit: out.limit,
            gzip: true,
        }
    } else {
        BodyError::BadGzip(e.to_string())
    }
}

impl BodyReader {
    /// A reader for a body that is gzip-compressed or not, of at most `limit` bytes once
    /// decompressed.
    pub fn new(gzip: bool, limit: usize) -> Self {
        let out = CappedVec::new(limit);
        if gzip {
            BodyReader::Gzip(Box::new(flate2::write::MultiGzDecoder::new(out)))
        } else {
            BodyReader::Identity(out)
        }
    }

    /// Make room for `n` more bytes of a plain body (from its Content-Length).
    pub fn reserve(&mut self, n: usize) {
        if let BodyReader::Identity(v) = self {
            v.buf.reserve_exact(n.min(v.limit));
        }
    }

    /// Take one chunk of the body as it came over the wire.
    pub fn push(&mut self, chunk: &[u8]) -> Result<(), BodyError> {
        match self {
            BodyReader::Identity(v) => v.write_all(chunk).map_err(|_| BodyError::TooLarge {
                limit: v.limit,
                gzip: false,
            }),
            BodyReader::Gzip(d) => d.write_all(chunk).map_err(|e| gzip_error(d.get_ref(), &e)),
        }
    }

    /// The whole decompressed body; fails on a truncated gzip stream.
    pub fn finish(self) -> Result<Vec<u8>, BodyError> {
        match self {
            BodyReader::Identity(v) => Ok(v.buf),
            BodyReader::Gzip(mut d) => {
                if let Err(e) = d.try_finish() {
                    return Err(gzip_error(d.get_ref(), &e));
                }
                let out = d.finish().map_err(|e| BodyError::BadGzip(e.to_string()))?;
                if out.buf.is_empty() {
                    return Err(BodyError::BadGzip("empty gzip stream".into()));
                }
                Ok(out.buf)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{write::GzEncoder, Compression};

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn read(gz: bool, chunks: &[&[u8]], limit: usize) -> Result<Vec<u8>, BodyError> {
        let mut r = BodyReader::new(gz, limit);
        for c in chunks {
            r.push(c)?;
        }
        r.finish()
    }

    // The response has exactly requestId and timestamp (a number), errorMessage only when given.
    #[test]
    fn response_shape() {
        let ok: serde_json::Value =
            serde_json::from_slice(&response_body("abc", 17, None)).unwrap();
        assert_eq!(ok, serde_json::json!({"requestId": "abc", "timestamp": 17}));
        let err: serde_json::Value =
            serde_json::from_slice(&response_body("", 18, Some(&"x".repeat(10_000)))).unwrap();
        let obj = err.as_object().unwrap();
        assert_eq!(obj.len(), 3);
        assert_eq!(obj["requestId"], "");
        assert!(obj["timestamp"].is_i64());
        assert_eq!(
            obj["errorMessage"].as_str().unwrap().len(),
            MAX_ERROR_MESSAGE
        );
    }

    // Gzip split across chunks decodes; exactly the limit is accepted, one byte more is not.
    #[test]
    fn gzip_is_decoded_up_to_the_limit() {
        let body = vec![b'a'; 1000];
        let gz = gzip(&body);
        let (a, b) = gz.split_at(gz.len() / 2);
        assert_eq!(read(true, &[a, b], 1000).unwrap(), body);
        assert_eq!(
            read(true, &[&gz], 999),
            Err(BodyError::TooLarge {
                limit: 999,
                gzip: true
            })
        );
        assert_eq!(
            read(false, &[&body[..500], &body[500..]], 1000).unwrap(),
            body
        );
        assert_eq!(
            read(false, &[&body, b"x"], 1000),
            Err(BodyError::TooLarge {
                limit: 1000,
                gzip: false
            })
        );
    }

    // A gzip bomb (100 MiB of zeros in ~100 KiB) stops at the limit instead of filling memory.
    #[test]
    fn gzip_bomb_is_capped() {
        let mut e = GzEncoder::new(Vec::new(), Compression::best());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..100 {
            e.write_all(&zeros).unwrap();
        }
        let gz = e.finish().unwrap();
        assert!(gz.len() < 1 << 20);
        let mut r = BodyReader::new(true, 4 << 20);
        let mut result = Ok(());
        for c in gz.chunks(8192) {
            result = r.push(c);
            if result.is_err() {
                break;
            }
        }
        assert_eq!(
            result,
            Err(BodyError::TooLarge {
                limit: 4 << 20,
                gzip: true
            })
        );
    }

    // Corrupt, truncated and empty gzip are errors, not silently short bodies.
    #[test]
    fn bad_gzip_is_an_error() {
        let gz = gzip(b"{\"requestId\":\"x\"}");
        assert!(matches!(
            read(true, &[b"not gzip at all"], 100),
            Err(BodyError::BadGzip(_))
        ));
        assert!(matches!(
            read(true, &[&gz[..gz.len() - 6]], 100),
            Err(BodyError::BadGzip(_))
        ));
        assert!(matches!(read(true, &[], 100), Err(BodyError::BadGzip(_))));
    }

    // Record data borrow from the body; a record without data reads as empty.
    #[test]
    fn request_body_parses() {
        let text =
            br#"{"requestId":"r1","timestamp":1700000000000,"records":[{"data":"e30="},{}]}"#;
        let b: RequestBody = serde_json::from_slice(text).unwrap();
        assert_eq!(b.request_id, "r1");
        assert_eq!(b.records.len(), 2);
        assert!(matches!(b.records[0].data, Cow::Borrowed("e30=")));
        assert_eq!(b.records[1].data, "");
    }

    // More than 10,000 records is refused while parsing; 10,000 are read.
    #[test]
    fn at_most_ten_thousand_records() {
        let body = |n: usize| {
            let records = vec!["{}"; n].join(",");
            format!(r#"{{"requestId":"r","timestamp":1,"records":[{records}]}}"#)
        };
        let most = body(MAX_RECORDS);
        let b: RequestBody = serde_json::from_str(&most).unwrap();
        assert_eq!(b.records.len(), MAX_RECORDS);
        let e = serde_json::from_str::<RequestBody>(&body(MAX_RECORDS + 1)).unwrap_err();
        assert!(e.to_string().starts_with("more than 10000 records"), "{e}");
    }

    // A parse error quoting a long value is cut; a short one is kept whole.
    #[test]
    fn parse_errors_are_cut() {
        let long = format!(r#"{{"requestId":"r","records":"{}"}}"#, "é".repeat(100_000));
        let e = serde_json::from_str::<RequestBody>(&long).unwrap_err();
        let cut = parse_error(&e);
        assert!(cut.chars().count() <= MAX_PARSE_ERROR + 10, "{cut}");
        assert!(cut.ends_with("... (cut)"), "{cut}");
        let e = serde_json::from_str::<RequestBody>(r#"{"records":[]}"#).unwrap_err();
        assert_eq!(parse_error(&e), e.to_string());
    }
}
