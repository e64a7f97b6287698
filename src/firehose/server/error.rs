//! Why a delivery is refused, and the Firehose response each reason gets: the status code that
//! Firehose's error reporting expects (400 bad request, 401 access key, 413 too large, 5xx the
//! destination) and an `errorMessage` that never carries a key, a host or a driver error.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;

use super::super::protocol::BodyError;
use super::super::store::StoreError;
use super::firehose_response;

/// A delivery refused, at the header stage (before the body is read), while reading the body,
/// or by the database. Its `Display` is the response's `errorMessage`.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// A method other than POST on the delivery path: 405 with `Allow: POST`.
    #[error("only POST is accepted")]
    MethodNotAllowed,
    /// A path that is neither the delivery path nor `/health`: 404.
    #[error("not found")]
    NotFound,
    /// `X-Amz-Firehose-Request-Id` longer than [`super::MAX_REQUEST_ID_BYTES`]: 400.
    #[error("X-Amz-Firehose-Request-Id is longer than 256 bytes")]
    RequestIdTooLong,
    /// No `X-Amz-Firehose-Access-Key`, or not one of the configured keys: 401.
    #[error("missing or invalid access key")]
    AccessKey,
    /// No (or an empty) `X-Amz-Firehose-Request-Id`: 400.
    #[error("missing X-Amz-Firehose-Request-Id header")]
    MissingRequestId,
    /// No `X-Amz-Firehose-Protocol-Version`: 400.
    #[error("missing X-Amz-Firehose-Protocol-Version header")]
    MissingProtocolVersion,
    /// A protocol version other than 1.0 (its first 32 characters): 400.
    #[error("unsupported protocol version {0:?}; only 1.0 is supported")]
    UnsupportedProtocolVersion(String),
    /// A `Content-Encoding` other than gzip or identity: 400.
    #[error("unsupported Content-Encoding; only gzip is accepted")]
    UnsupportedEncoding,
    /// A body over `limit` bytes, after decompression if gzip, or a plain one whose
    /// Content-Length says so: 413.
    #[error("{}", too_large(*.limit, *.found))]
    TooLarge {
        /// The configured limit, in bytes.
        limit: usize,
        /// Where it was found too large.
        found: Oversize,
    },
    /// The body did not arrive in full within the body timeout: 408 (Firehose retries).
    #[error("request body not received within {} s", .0.as_secs())]
    BodyTimeout(Duration),
    /// Corrupt or truncated gzip, or the connection failed while the body was read: 400.
    #[error("{0}")]
    Body(BodyError),
    /// The body is not `{"requestId","timestamp","records"}` JSON, or has more than
    /// [`super::super::protocol::MAX_RECORDS`] records: 400. The parser's message, cut
    /// ([`super::super::protocol::parse_error`]).
    #[error("body is not a Firehose request: {0}")]
    NotFirehoseBody(String),
    /// The body's `requestId` differs from the header's: 400.
    #[error("body requestId does not match the X-Amz-Firehose-Request-Id header")]
    RequestIdMismatch,
    /// No room in the body budget within the body timeout (see
    /// [`super::BODY_BUDGET_BODIES`]): 503, so Firehose retries.
    #[error("endpoint busy; retry later")]
    Busy,
    /// A write was not acknowledged: 503, so Firehose retries. The message is the short public
    /// one; the detail is logged.
    #[error("{}", .0.public_message())]
    Store(StoreError),
}

/// Where a body was found over the limit: each is told so, as a plain body refused for its
/// Content-Length was told it was too large "after decompression".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Oversize {
    /// A plain body's Content-Length, before a byte of it was read.
    Declared,
    /// A plain body, as it arrived.
    Plain,
    /// A gzip body, as it was decompressed.
    Decompressed,
}

fn too_large(limit: usize, found: Oversize) -> String {
    let mib = limit / (1024 * 1024);
    match found {
        Oversize::Declared => format!("Content-Length is larger than the {mib} MiB body limit"),
        Oversize::Plain => format!("request body larger than {mib} MiB"),
        Oversize::Decompressed => format!("request body larger than {mib} MiB after decompression"),
    }
}

impl RequestError {
    /// Refused before the access key was found good: a client without the key can cause it.
    pub fn before_key(&self) -> bool {
        matches!(
            self,
            RequestError::MethodNotAllowed | RequestError::NotFound | RequestError::AccessKey
        )
    }
}

impl From<BodyError> for RequestError {
    fn from(e: BodyError) -> Self {
        match e {
            BodyError::TooLarge { limit, gzip } => RequestError::TooLarge {
                limit,
                found: if gzip {
                    Oversize::Decompressed
                } else {
                    Oversize::Plain
                },
            },
            other => RequestError::Body(other),
        }
    }
}

impl From<StoreError> for RequestError {
    fn from(e: StoreError) -> Self {
        RequestError::Store(e)
    }
}

impl RequestError {
    /// The status code of the response.
    pub fn status(&self) -> StatusCode {
        match self {
            RequestError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            RequestError::NotFound => StatusCode::NOT_FOUND,
            RequestError::AccessKey => StatusCode::UNAUTHORIZED,
            RequestError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            RequestError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            RequestError::Store(_) | RequestError::Busy => StatusCode::SERVICE_UNAVAILABLE,
            RequestError::RequestIdTooLong
            | RequestError::MissingRequestId
            | RequestError::MissingProtocolVersion
            | RequestError::UnsupportedProtocolVersion(_)
            | RequestError::UnsupportedEncoding
            | RequestError::Body(_)
            | RequestError::NotFirehoseBody(_)
            | RequestError::RequestIdMismatch => StatusCode::BAD_REQUEST,
        }
    }

    /// The Firehose response: this status, `{"requestId","timestamp","errorMessage"}`, and
    /// `Allow: POST` with a 405.
    pub fn render(&self, request_id: &str) -> Response {
        let mut response = firehose_response(self.status(), request_id, Some(&self.to_string()));
        if let RequestError::MethodNotAllowed = self {
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A body over the limit is a 413 whatever the reader found it in; other body errors are 400.
    #[test]
    fn body_errors_map_to_413_or_400() {
        for (gzip, said) in [
            (true, "request body larger than 64 MiB after decompression"),
            (false, "request body larger than 64 MiB"),
        ] {
            let e = RequestError::from(BodyError::TooLarge {
                limit: 64 << 20,
                gzip,
            });
            assert_eq!(e.status(), StatusCode::PAYLOAD_TOO_LARGE);
            assert_eq!(e.to_string(), said);
        }
        let e = RequestError::from(BodyError::BadGzip("eof".into()));
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert_eq!(e.to_string(), "invalid gzip body: eof");
    }

    // A database failure is a 503 whose message is the public one, never the detail.
    #[test]
    fn store_errors_say_only_the_public_message() {
        let e = RequestError::from(StoreError::Unavailable("10.0.0.7:27017 refused".into()));
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.to_string(), "database unavailable; retry later");
    }
}
