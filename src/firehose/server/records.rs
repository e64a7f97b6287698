//! A delivery's records, once its body is read: decoded chunk by chunk and upserted, the ones
//! that cannot be stored for good set aside in the dead-letter collection.

use std::time::Instant;

use base64::Engine as _;
use mongodb::bson::{rawdoc, spec::BinarySubtype, Binary, DateTime, RawDocumentBuf};

use super::super::decode::{decode_record, derived_id, Rejection};
use super::super::metrics::EndpointMetrics;
use super::super::protocol::RequestBody;
use super::super::store::{Refusal, StoreError};
use super::{AppState, CHUNK_BYTES};

/// Decode every record and upsert, chunk by chunk; rejected records (undecodable, or refused by
/// the database for good) go to the dead-letter collection. Ok only when every write of the
/// request was acknowledged.
pub(super) async fn store_records(
    state: &AppState,
    request_id: &str,
    body: &RequestBody<'_>,
    rejected_count: &mut usize,
) -> Result<(), StoreError> {
    let config = &state.config;
    let mut dead = DeadLetters {
        request_id,
        received_at: DateTime::now(),
        docs: Vec::new(),
        reasons: Vec::new(),
    };
    let mut chunk = Chunk::default();
    for (index, record) in body.records.iter().enumerate() {
        match decode_record(&record.data, request_id, index, &config.decode) {
            Ok(d) => {
                chunk.bytes += d.as_bytes().len();
                chunk.docs.push(d);
                chunk.indices.push(index);
                if chunk.bytes >= CHUNK_BYTES {
                    store_chunk(state, body, &mut chunk, &mut dead).await?;
                }
            }
            Err(r) => dead.add(index, r.reason.kind(), r.reason.to_string(), r.raw),
        }
    }
    store_chunk(state, body, &mut chunk, &mut dead).await?;
    *rejected_count = dead.docs.len();
    if !dead.docs.is_empty() {
        let dead_letter = format!("{}_rejected", config.collection);
        let started = Instant::now();
        let written = state.store.upsert(&dead_letter, &dead.docs).await;
        state.metrics.wrote(started.elapsed().as_secs_f64());
        written?;
        dead.reasons
            .into_iter()
            .for_each(|r| state.metrics.dead_lettered(r));
    }
    Ok(())
}

/// Decoded records waiting to be written together, with their indices in the request.
#[derive(Default)]
struct Chunk {
    docs: Vec<RawDocumentBuf>,
    indices: Vec<usize>,
    bytes: usize,
}

/// The request's dead letters, and why each is one (a metrics label).
struct DeadLetters<'a> {
    request_id: &'a str,
    received_at: DateTime,
    docs: Vec<RawDocumentBuf>,
    reasons: Vec<&'static str>,
}

impl DeadLetters<'_> {
    /// Record `index` of the request, whose bytes were `raw`, set aside for `reason`.
    fn add(&mut self, index: usize, kind: &'static str, reason: String, raw: Vec<u8>) {
        self.reasons.push(kind);
        self.docs.push(rawdoc! {
            "_id": derived_id(self.request_id, index),
            "requestId": self.request_id,
            "index": index as i64,
            "reason": reason,
            "data": Binary { subtype: BinarySubtype::Generic, bytes: raw },
            "receivedAt": self.received_at,
        });
    }
}

/// Write the chunk and empty it. A record the database refuses for good (a unique index of the
/// operator's, a validator) joins the dead letters and the rest of the chunk is written on:
/// otherwise the same record would fail every retry, and with it every record after it. The
/// chunk goes ordered, and after a refusal the rest of it unordered, so that any number of
/// refusals costs one more round trip: ordered, each cost one, with the rest of the chunk sent
/// again, and a chunk most of whose records broke a validator ran past the deadline.
async fn store_chunk(
    state: &AppState,
    body: &RequestBody<'_>,
    chunk: &mut Chunk,
    dead: &mut DeadLetters<'_>,
) -> Result<(), StoreError> {
    let collection = &state.config.collection;
    let refused = match upsert(state, collection, &chunk.docs).await {
        Ok(()) => Vec::new(),
        Err(StoreError::Refused { at, code, message }) => {
            let rest = at + 1;
            let mut refused = vec![Refusal { at, code, message }];
            let more = upsert_unordered(state, collection, &chunk.docs[rest..]).await?;
            refused.extend(more.into_iter().map(|r| Refusal {
                at: rest + r.at,
                ..r
            }));
            refused
        }
        Err(e) => return Err(e),
    };
    for Refusal { at, code, message } in refused {
        let index = chunk.indices[at];
        let raw = base64::engine::general_purpose::STANDARD
            .decode(body.records[index].data.as_bytes())
            .unwrap_or_default();
        let reason = format!("refused by the database (code {code}): {message}");
        dead.add(index, Rejection::REFUSED, reason, raw);
    }
    *chunk = Chunk::default();
    Ok(())
}

/// Upsert `docs` into `collection`, timed and counted.
async fn upsert(
    state: &AppState,
    collection: &str,
    docs: &[RawDocumentBuf],
) -> Result<(), StoreError> {
    if docs.is_empty() {
        return Ok(());
    }
    let _timed = WriteTimer::start(&state.metrics);
    let written = state.store.upsert(collection, docs).await;
    match written {
        Ok(()) => state.metrics.stored(docs.len()),
        // Those before the refused one were written.
        Err(StoreError::Refused { at, .. }) => state.metrics.stored(at),
        Err(_) => {}
    }
    written
}

/// Upsert `docs` into `collection` unordered, timed and counted: the documents refused for good.
async fn upsert_unordered(
    state: &AppState,
    collection: &str,
    docs: &[RawDocumentBuf],
) -> Result<Vec<Refusal>, StoreError> {
    if docs.is_empty() {
        return Ok(Vec::new());
    }
    let _timed = WriteTimer::start(&state.metrics);
    let written = state.store.upsert_unordered(collection, docs).await;
    if let Ok(refused) = &written {
        state.metrics.stored(docs.len() - refused.len());
    }
    written
}

/// Times a write to the database until it is dropped: when the write returns, and also when
/// the request's deadline (or a client gone) drops it unfinished, the slowest writes of all.
struct WriteTimer<'a> {
    metrics: &'a EndpointMetrics,
    started: Instant,
}

impl<'a> WriteTimer<'a> {
    fn start(metrics: &'a EndpointMetrics) -> Self {
        WriteTimer {
            metrics,
            started: Instant::now(),
        }
    }
}

impl Drop for WriteTimer<'_> {
    fn drop(&mut self) {
        self.metrics.wrote(self.started.elapsed().as_secs_f64());
    }
}
