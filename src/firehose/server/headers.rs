//! The header stage of a delivery: the checks made before its body is read (the module docs
//! of [`super`] give their order), and the share of the body budget the body will take.

use axum::http::{header, HeaderMap, Method};

use super::super::protocol::{ACCESS_KEY, PROTOCOL_VERSION, REQUEST_ID, SUPPORTED_VERSION};
use super::{EndpointConfig, Oversize, RequestError, MAX_REQUEST_ID_BYTES};

/// How to read the body of a request whose headers passed.
pub(super) struct BodyPlan {
    pub(super) gzip: bool,
    pub(super) content_length: Option<u64>,
}

/// The checks made before the body is read, in the order of the module docs; only a request
/// that passes them all costs a body read. The key is checked before any other header, so a
/// caller without it learns nothing about what else the endpoint checks.
pub(super) fn check_headers(
    config: &EndpointConfig,
    method: &Method,
    headers: &HeaderMap,
) -> Result<BodyPlan, RequestError> {
    if method != Method::POST {
        return Err(RequestError::MethodNotAllowed);
    }
    let key_ok = headers
        .get(ACCESS_KEY)
        .is_some_and(|k| config.keys.matches(k.as_bytes()));
    if !key_ok {
        return Err(RequestError::AccessKey);
    }
    if header_str(headers, REQUEST_ID).is_some_and(|id| id.len() > MAX_REQUEST_ID_BYTES) {
        return Err(RequestError::RequestIdTooLong);
    }
    if header_cut(headers, REQUEST_ID).is_empty() {
        return Err(RequestError::MissingRequestId);
    }
    match header_str(headers, PROTOCOL_VERSION) {
        Some(SUPPORTED_VERSION) => {}
        Some(other) => {
            let v: String = other.chars().take(32).collect();
            return Err(RequestError::UnsupportedProtocolVersion(v));
        }
        None => return Err(RequestError::MissingProtocolVersion),
    }
    let gzip = match headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase())
    {
        None => false,
        Some(e) if e.is_empty() || e == "identity" => false,
        Some(e) if e == "gzip" => true,
        Some(_) => return Err(RequestError::UnsupportedEncoding),
    };
    let limit = config.max_body_bytes;
    let content_length = declared_length(headers);
    if !gzip && content_length.is_some_and(|n| n > limit as u64) {
        return Err(RequestError::TooLarge {
            limit,
            found: Oversize::Declared,
        });
    }
    Ok(BodyPlan {
        gzip,
        content_length,
    })
}

/// Whole KiB, rounded up; at least one.
pub(super) fn kib(bytes: u64) -> usize {
    bytes.div_ceil(1024).max(1) as usize
}

/// The share of the body budget a body takes, in KiB: its declared length if plain, else the
/// most it may grow to.
pub(super) fn budget_share(plan: &BodyPlan, limit: usize) -> u32 {
    let bytes = match plan.content_length {
        Some(n) if !plan.gzip => n.min(limit as u64),
        _ => limit as u64,
    };
    u32::try_from(kib(bytes)).unwrap_or(u32::MAX)
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    header_str(headers, header::CONTENT_LENGTH.as_str()).and_then(|v| v.parse::<u64>().ok())
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// A header's value cut to [`MAX_REQUEST_ID_BYTES`] (on a character boundary), for echoing and
/// logging what a client sent without echoing or logging whatever size it chose.
pub(super) fn header_cut<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    let s = header_str(headers, name).unwrap_or("");
    let mut end = s.len().min(MAX_REQUEST_ID_BYTES);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
