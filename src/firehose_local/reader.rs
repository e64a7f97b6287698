//! Reading a Kinesis stream: one task per shard, GetRecords every [`POLL_INTERVAL`] (Kinesis
//! allows five calls per shard per second), new shards picked up every [`RELIST_INTERVAL`].
//! A child shard is read only once its parents have been read to their end and delivered
//! ([`super::lineage`]).
//!
//! A shard that Kinesis no longer has (ResourceNotFoundException from GetShardIterator or
//! GetRecords) is read no more once ListShards, read whole, confirms it is gone: its records
//! passed the retention period (or the stream was created again). That is logged once; its
//! children do not wait for it ([`super::lineage`]). Any other failure, or a listing that fails
//! too, is retried: throttling, a restarting emulator and the network all pass.

use crate::clock::now_ms;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_kinesis::error::DisplayErrorContext;
use aws_sdk_kinesis::operation::get_records::GetRecordsError;
use aws_sdk_kinesis::operation::get_shard_iterator::GetShardIteratorError;
use aws_sdk_kinesis::primitives::DateTime;
use aws_sdk_kinesis::types::ShardIteratorType;
use aws_sdk_kinesis::Client;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info, warn};

use super::lineage::{self, Lineage, Listed};
use super::metrics::Metrics;

/// Pause between GetRecords calls on one shard.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// How often the shard list is read again.
pub const RELIST_INTERVAL: Duration = Duration::from_secs(10);
/// Records waiting between the readers and the buffer.
pub const CHANNEL_CAPACITY: usize = 20_000;

/// The least record data the readers may hold ahead of the endpoint (see [`read_stream`]).
pub const MIN_READ_AHEAD_BYTES: usize = 16 << 20;

/// One record as Firehose received it.
#[derive(Debug, Clone)]
pub struct Arrived {
    /// The record's data.
    pub data: Vec<u8>,
    /// Its share of the readers' read-ahead budget, returned when the last copy of the record
    /// is dropped (its batch has ended); `None` for a record that did not come from a reader.
    pub share: Option<Arc<OwnedSemaphorePermit>>,
    /// When firehose-local read it, ms since the epoch.
    pub arrival_ms: i64,
    /// Its shard and sequence number there, for the checkpoint.
    pub shard: Arc<str>,
    /// Its sequence number in the shard.
    pub sequence: String,
}

/// What the readers hand the buffer, in each shard's order.
#[derive(Debug)]
pub enum Read {
    /// A record.
    Record(Arrived),
    /// The shard was read to its end (resharded): everything of it is before this. The buffer
    /// answers on `delivered` once those records have ended (see [`super::checkpoint`]) and the
    /// shard is marked ended in the checkpoint; then its children may be read.
    End {
        /// The shard.
        shard: Arc<str>,
        /// Answered once its records have ended; dropped when the buffer stops first.
        delivered: oneshot::Sender<()>,
    },
    /// Every shard of the stream, from a ListShards read whole and not empty: the checkpoint
    /// forgets the others ([`super::checkpoint::Checkpoint::prune`]).
    Listed(BTreeSet<String>),
}

impl From<Arrived> for Read {
    fn from(a: Arrived) -> Self {
        Read::Record(a)
    }
}

/// Where a shard is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// Records put from now on.
    Latest,
    /// The oldest record.
    TrimHorizon,
    /// Records put from this time on, ms since the epoch.
    AtTimestamp(i64),
    /// Records after this sequence number.
    After(String),
}

/// How the shards found are started: from a checkpoint's positions, else by the rules of
/// [`Starts::for_shard`].
#[derive(Debug, Clone, Default)]
pub struct Starts {
    /// `--from-start`: shards present at start are read from the oldest record, not LATEST.
    pub from_start: bool,
    /// Saved positions: shard id to the sequence number of the last record handled.
    pub saved: BTreeMap<String, String>,
    /// Whether this run resumes a checkpoint, and so where a shard without a saved position
    /// starts.
    pub resume: Resume,
    /// Shards an earlier run read to their end: not read again.
    pub ended: BTreeSet<String>,
}

/// Whether a run resumes a checkpoint file, which says where a shard it has no position for
/// starts (see [`super::checkpoint`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Resume {
    /// A fresh run: no checkpoint file was there at start.
    #[default]
    Fresh,
    /// The checkpoint's run started at LATEST at this time (ms since the epoch): read from it.
    Since(i64),
    /// The checkpoint's run started from the oldest record (`--from-start`), or the stream was
    /// created again since: read whole.
    Whole,
}

impl Starts {
    /// The start of shard `id`; `first` is true for the shards listed at start.
    pub fn for_shard(&self, id: &str, first: bool) -> Start {
        if let Some(seq) = self.saved.get(id) {
            return Start::After(seq.clone());
        }
        match self.resume {
            Resume::Since(ms) => Start::AtTimestamp(ms),
            Resume::Whole => Start::TrimHorizon,
            // Like a new Firehose stream; shards that appear later (resharding) are read
            // whole.
            Resume::Fresh if first && !self.from_start => Start::Latest,
            Resume::Fresh => Start::TrimHorizon,
        }
    }
}

/// When `stream` was created, ms since the epoch; retried every second until Kinesis answers
/// (the error is logged at the first failure and every minute after).
pub async fn stream_created_ms(client: &Client, stream: &str) -> i64 {
    let mut attempt = 0u64;
    loop {
        let error = match client
            .describe_stream_summary()
            .stream_name(stream)
            .send()
            .await
        {
            Ok(out) => match out.stream_description_summary() {
                Some(d) => {
                    let t = d.stream_creation_timestamp();
                    return t.secs() * 1000 + i64::from(t.subsec_nanos() / 1_000_000);
                }
                None => "DescribeStreamSummary returned no summary".to_owned(),
            },
            Err(e) => DisplayErrorContext(&e).to_string(),
        };
        if attempt.is_multiple_of(60) {
            warn!(stream = %stream, %error, "cannot describe the stream (needs kinesis:DescribeStreamSummary); retrying");
        }
        attempt += 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Every shard of `stream`, all pages of ListShards, or the first error: never part of a listing.
async fn list_shards(client: &Client, stream: &str) -> Result<Vec<Listed>, String> {
    let mut ids = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let req = match &next {
            Some(token) => client.list_shards().next_token(token),
            None => client.list_shards().stream_name(stream),
        };
        let out = req
            .send()
            .await
            .map_err(|e| DisplayErrorContext(&e).to_string())?;
        ids.extend(out.shards().iter().map(|s| {
            Listed {
                id: s.shard_id().to_owned(),
                parents: [s.parent_shard_id(), s.adjacent_parent_shard_id()]
                    .into_iter()
                    .flatten()
                    .map(str::to_owned)
                    .collect(),
            }
        }));
        next = out.next_token().map(str::to_owned);
        if next.is_none() {
            return Ok(ids);
        }
    }
}

/// Read every shard of `stream` into `tx` until the receiver goes away, each from where
/// `starts` says, a child only once its parents have ended ([`Lineage`]), counting the records
/// of each shard in `metrics`. The records read and not yet ended hold at most
/// `read_ahead_bytes` of data between them (and [`CHANNEL_CAPACITY`] wait for the buffer):
/// while the endpoint is down or slow, the readers wait, rather than take the stream into
/// memory (20,000 records near Kinesis's 1 MiB would be 20 GiB).
pub async fn read_stream(
    client: Client,
    stream: String,
    starts: Starts,
    tx: mpsc::Sender<Read>,
    metrics: Arc<Metrics>,
    read_ahead_bytes: usize,
) {
    let budget = Budget {
        bytes: read_ahead_bytes.max(1),
        left: Arc::new(Semaphore::new(read_ahead_bytes.max(1))),
    };
    let mut lineage = Lineage::new(starts.ended.iter().cloned());
    // Where each shard listed so far starts, decided when it was first listed, and when.
    let mut seen: HashMap<String, (Start, i64)> = HashMap::new();
    // Shards read to their end and delivered, from their readers.
    let (ended_tx, mut ended_rx) = mpsc::unbounded_channel::<String>();
    let mut first = true;
    let mut failing = false;
    loop {
        match list_shards(&client, &stream).await {
            Ok(listing) => {
                if failing {
                    info!(stream = %stream, "listing shards works again");
                    failing = false;
                }
                if !listing.is_empty() {
                    // Without waiting: when the buffer is full, the next listing does it.
                    let ids = listing.iter().map(|s| s.id.clone()).collect();
                    let _ = tx.try_send(Read::Listed(ids));
                }
                let listed_ms = now_ms();
                let mut new = HashSet::new();
                for s in &listing {
                    if !seen.contains_key(&s.id) {
                        seen.insert(s.id.clone(), (starts.for_shard(&s.id, first), listed_ms));
                        new.insert(s.id.as_str());
                    }
                }
                for id in lineage.ready(&listing) {
                    let Some((start, seen_ms)) = seen.get(&id) else {
                        continue;
                    };
                    // A shard that waited for its parents starts from when it was listed,
                    // not from LATEST when it is started: nothing put meanwhile is skipped.
                    let start = match start {
                        Start::Latest if !new.contains(id.as_str()) => Start::AtTimestamp(*seen_ms),
                        s => s.clone(),
                    };
                    let read = metrics.shard(&id);
                    debug!(shard = %id, ?start, "reading shard");
                    tokio::spawn(read_shard(
                        client.clone(),
                        stream.clone(),
                        id,
                        start,
                        (tx.clone(), ended_tx.clone(), budget.clone()),
                        read,
                    ));
                }
                first = false;
            }
            Err(e) => {
                if !failing {
                    warn!(stream = %stream, error = %e, "cannot list the stream's shards; retrying");
                    failing = true;
                }
            }
        }
        if tx.is_closed() {
            return;
        }
        let wait = if first {
            Duration::from_secs(1)
        } else {
            RELIST_INTERVAL
        };
        // A shard that ended may let its children start: list again at once.
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            Some(id) = ended_rx.recv() => {
                lineage.finish(&id);
                while let Ok(id) = ended_rx.try_recv() {
                    lineage.finish(&id);
                }
            }
        }
    }
}

/// The readers' read-ahead budget, in bytes of record data.
#[derive(Clone)]
struct Budget {
    bytes: usize,
    left: Arc<Semaphore>,
}

impl Budget {
    /// A share for a record of `len` bytes, once the records before it have left that much;
    /// `None` once the budget is closed (never: it lives as long as the readers).
    async fn share(&self, len: usize) -> Option<Arc<OwnedSemaphorePermit>> {
        // A record larger than the whole budget waits for all of it, not for ever.
        let permits = u32::try_from(len.min(self.bytes)).unwrap_or(u32::MAX);
        if self.left.available_permits() < permits as usize {
            debug!(
                budget_bytes = self.bytes,
                "the read-ahead budget is spent: reading waits for the endpoint"
            );
        }
        let share = self.left.clone().acquire_many_owned(permits).await.ok()?;
        Some(Arc::new(share))
    }
}

/// Hand the end of `shard` to the buffer and, once its records have ended, tell
/// [`read_stream`] that its children may start.
async fn end_shard(
    shard: &Arc<str>,
    tx: &mpsc::Sender<Read>,
    ended: &mpsc::UnboundedSender<String>,
) {
    info!(shard = %shard, "shard closed (resharded); read to its end");
    let (delivered, done) = oneshot::channel();
    let end = Read::End {
        shard: shard.clone(),
        delivered,
    };
    if tx.send(end).await.is_ok() && done.await.is_ok() {
        let _ = ended.send(shard.to_string());
    }
}

/// A failed GetShardIterator or GetRecords.
struct Failed {
    message: String,
    /// ResourceNotFoundException: the shard, or the stream, may be gone.
    not_found: bool,
}

/// Whether `shard` is gone from `stream`: ListShards answers, every page, without it. A listing
/// that fails says nothing, and the shard is read on.
async fn shard_gone(client: &Client, stream: &str, shard: &str) -> bool {
    match list_shards(client, stream).await {
        Ok(listing) => lineage::gone(&listing, shard),
        Err(e) => {
            debug!(shard = %shard, error = %e, "cannot list the shards to see whether this one is gone; reading on");
            false
        }
    }
}

/// Stop reading `shard`, gone from the stream, saying so once. Its children do not wait for it
/// ([`Lineage::ready`]); what was read from it goes on to be delivered.
fn gone(shard: &str, error: &str) {
    warn!(shard = %shard, %error, "the shard is no longer in the stream (its records passed the retention period, or the stream was created again): reading it stops here, and what had not been read from it is lost; its children are read without it");
}

async fn iterator(
    client: &Client,
    stream: &str,
    shard: &str,
    start: &Start,
) -> Result<Option<String>, Failed> {
    let req = client
        .get_shard_iterator()
        .stream_name(stream)
        .shard_id(shard);
    let req = match start {
        Start::Latest => req.shard_iterator_type(ShardIteratorType::Latest),
        Start::TrimHorizon => req.shard_iterator_type(ShardIteratorType::TrimHorizon),
        Start::AtTimestamp(ms) => req
            .shard_iterator_type(ShardIteratorType::AtTimestamp)
            .timestamp(DateTime::from_millis(*ms)),
        Start::After(seq) => req
            .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
            .starting_sequence_number(seq),
    };
    let out = req.send().await.map_err(|e| Failed {
        not_found: matches!(
            e.as_service_error(),
            Some(GetShardIteratorError::ResourceNotFoundException(_))
        ),
        message: DisplayErrorContext(&e).to_string(),
    })?;
    Ok(out.shard_iterator().map(str::to_owned))
}

async fn read_shard(
    client: Client,
    stream: String,
    shard: String,
    mut start: Start,
    (tx, ended, budget): (mpsc::Sender<Read>, mpsc::UnboundedSender<String>, Budget),
    read: Counter,
) {
    let shard_id: Arc<str> = Arc::from(shard.as_str());
    let mut it: Option<String> = None;
    let mut failing = false;
    loop {
        if tx.is_closed() {
            return;
        }
        let asked_ms = now_ms();
        let current = match it.take() {
            Some(i) => i,
            None => match iterator(&client, &stream, &shard, &start).await {
                Ok(Some(i)) if start == Start::Latest => {
                    // LATEST is where reading begins, not where it resumes: a fresh LATEST
                    // iterator after a GetRecords error, before any record was read, would
                    // skip what was put in between. From here on the shard starts at this
                    // time (the local clock's, as a checkpoint's `since_ms` is), which may
                    // read a record put just before again: a repeat, never a loss.
                    start = Start::AtTimestamp(asked_ms);
                    debug!(shard = %shard, "reading from LATEST");
                    i
                }
                Ok(Some(i)) => i,
                // No iterator: nothing more can be read there.
                Ok(None) => return end_shard(&shard_id, &tx, &ended).await,
                Err(e) => {
                    if e.not_found && shard_gone(&client, &stream, &shard).await {
                        return gone(&shard, &e.message);
                    }
                    if !failing {
                        warn!(shard = %shard, error = %e.message, "cannot get a shard iterator; retrying");
                        failing = true;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
        };
        match client
            .get_records()
            .shard_iterator(&current)
            .limit(10_000)
            .send()
            .await
        {
            Ok(out) => {
                failing = false;
                let arrival_ms = now_ms();
                read.inc_by(out.records().len() as u64);
                for r in out.records() {
                    // A fresh iterator (after an error) starts after the last record read.
                    start = Start::After(r.sequence_number().to_owned());
                    let Some(share) = budget.share(r.data().as_ref().len()).await else {
                        return;
                    };
                    // As it is: a KPL-aggregated record is not split into its user records, as
                    // Firehose would (our forwarder never aggregates; see docs/pipeline.md).
                    let arrived = Arrived {
                        data: r.data().as_ref().to_vec(),
                        share: Some(share),
                        arrival_ms,
                        shard: shard_id.clone(),
                        sequence: r.sequence_number().to_owned(),
                    };
                    if tx.send(Read::Record(arrived)).await.is_err() {
                        return;
                    }
                }
                match out.next_shard_iterator() {
                    Some(next) => it = Some(next.to_owned()),
                    None => return end_shard(&shard_id, &tx, &ended).await,
                }
            }
            Err(e) => {
                let (expired, not_found) = match e.as_service_error() {
                    Some(GetRecordsError::ExpiredIteratorException(_)) => (true, false),
                    Some(GetRecordsError::ResourceNotFoundException(_)) => (false, true),
                    _ => (false, false),
                };
                // Throttled: the iterator is still good (for five minutes), and a new one
                // would be one more call against the shard's limits.
                let throttled = matches!(
                    e.as_service_error(),
                    Some(
                        GetRecordsError::ProvisionedThroughputExceededException(_)
                            | GetRecordsError::KmsThrottlingException(_)
                    )
                );
                if not_found && shard_gone(&client, &stream, &shard).await {
                    return gone(&shard, &DisplayErrorContext(&e).to_string());
                }
                if !expired && !failing {
                    warn!(shard = %shard, error = %DisplayErrorContext(&e), "GetRecords failed; retrying");
                    failing = true;
                }
                // Keep the position: the same iterator when throttled, else a fresh one after
                // the last record read.
                it = throttled.then_some(current);
            }
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn starts(from_start: bool, resume: Resume) -> Starts {
        Starts {
            from_start,
            saved: [("shard-0".to_owned(), "42".to_owned())].into(),
            resume,
            ended: BTreeSet::new(),
        }
    }

    // A saved position always wins; then a resumed run reads from the file's time (or whole);
    // a fresh run reads the shards present at start from LATEST (or whole with --from-start),
    // and shards that appear later (resharding) whole.
    #[test]
    fn each_shard_starts_where_the_rules_say() {
        for s in [
            starts(false, Resume::Fresh),
            starts(true, Resume::Fresh),
            starts(false, Resume::Since(7)),
            starts(false, Resume::Whole),
        ] {
            assert_eq!(s.for_shard("shard-0", true), Start::After("42".into()));
            assert_eq!(s.for_shard("shard-0", false), Start::After("42".into()));
        }
        let fresh = starts(false, Resume::Fresh);
        assert_eq!(fresh.for_shard("shard-1", true), Start::Latest);
        assert_eq!(fresh.for_shard("shard-1", false), Start::TrimHorizon);
        let from_start = starts(true, Resume::Fresh);
        assert_eq!(from_start.for_shard("shard-1", true), Start::TrimHorizon);
        let resumed = starts(false, Resume::Since(7));
        assert_eq!(resumed.for_shard("shard-1", true), Start::AtTimestamp(7));
        assert_eq!(resumed.for_shard("shard-1", false), Start::AtTimestamp(7));
        let resumed_whole = starts(false, Resume::Whole);
        assert_eq!(resumed_whole.for_shard("shard-1", true), Start::TrimHorizon);
    }
}
