//! Reading a Kinesis stream: one task per shard, GetRecords every [`POLL_INTERVAL`] (Kinesis
//! allows five calls per shard per second), new shards picked up every [`RELIST_INTERVAL`].

use std::collections::HashSet;
use std::time::Duration;

use aws_sdk_kinesis::error::DisplayErrorContext;
use aws_sdk_kinesis::operation::get_records::GetRecordsError;
use aws_sdk_kinesis::types::ShardIteratorType;
use aws_sdk_kinesis::Client;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

/// Pause between GetRecords calls on one shard.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// How often the shard list is read again.
pub const RELIST_INTERVAL: Duration = Duration::from_secs(10);
/// Records waiting between the readers and the buffer.
pub const CHANNEL_CAPACITY: usize = 20_000;

/// One record as Firehose received it.
#[derive(Debug, Clone)]
pub struct Arrived {
    pub data: Vec<u8>,
    /// When firehose-local read it, ms since the epoch.
    pub arrival_ms: i64,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

async fn list_shards(client: &Client, stream: &str) -> Result<Vec<String>, String> {
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
        ids.extend(out.shards().iter().map(|s| s.shard_id().to_owned()));
        next = out.next_token().map(str::to_owned);
        if next.is_none() {
            return Ok(ids);
        }
    }
}

/// Read every shard of `stream` into `tx` until the receiver goes away. Shards present at start
/// are read from LATEST (or TRIM_HORIZON with `from_start`); shards that appear later (resharding)
/// from TRIM_HORIZON.
pub async fn read_stream(
    client: Client,
    stream: String,
    from_start: bool,
    tx: mpsc::Sender<Arrived>,
) {
    let mut known: HashSet<String> = HashSet::new();
    let mut first = true;
    let mut failing = false;
    loop {
        match list_shards(&client, &stream).await {
            Ok(ids) => {
                if failing {
                    info!(stream = %stream, "listing shards works again");
                    failing = false;
                }
                for id in ids {
                    if known.insert(id.clone()) {
                        let start = if first && !from_start {
                            ShardIteratorType::Latest
                        } else {
                            ShardIteratorType::TrimHorizon
                        };
                        debug!(shard = %id, ?start, "reading shard");
                        tokio::spawn(read_shard(
                            client.clone(),
                            stream.clone(),
                            id,
                            start,
                            tx.clone(),
                        ));
                    }
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
        tokio::time::sleep(wait).await;
    }
}

async fn iterator(
    client: &Client,
    stream: &str,
    shard: &str,
    start: &ShardIteratorType,
    after: Option<&str>,
) -> Result<Option<String>, String> {
    let mut req = client
        .get_shard_iterator()
        .stream_name(stream)
        .shard_id(shard);
    req = match after {
        Some(seq) => req
            .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
            .starting_sequence_number(seq),
        None => req.shard_iterator_type(start.clone()),
    };
    let out = req
        .send()
        .await
        .map_err(|e| DisplayErrorContext(&e).to_string())?;
    Ok(out.shard_iterator().map(str::to_owned))
}

async fn read_shard(
    client: Client,
    stream: String,
    shard: String,
    start: ShardIteratorType,
    tx: mpsc::Sender<Arrived>,
) {
    let mut last_seq: Option<String> = None;
    let mut it: Option<String> = None;
    let mut failing = false;
    loop {
        if tx.is_closed() {
            return;
        }
        let current = match it.take() {
            Some(i) => i,
            None => match iterator(&client, &stream, &shard, &start, last_seq.as_deref()).await {
                Ok(Some(i)) => i,
                Ok(None) => return,
                Err(e) => {
                    if !failing {
                        warn!(shard = %shard, error = %e, "cannot get a shard iterator; retrying");
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
                for r in out.records() {
                    last_seq = Some(r.sequence_number().to_owned());
                    let arrived = Arrived {
                        data: r.data().as_ref().to_vec(),
                        arrival_ms,
                    };
                    if tx.send(arrived).await.is_err() {
                        return;
                    }
                }
                match out.next_shard_iterator() {
                    Some(next) => it = Some(next.to_owned()),
                    None => {
                        info!(shard = %shard, "shard closed (resharded); read to its end");
                        return;
                    }
                }
            }
            Err(e) => {
                let expired = matches!(
                    e.as_service_error(),
                    Some(GetRecordsError::ExpiredIteratorException(_))
                );
                if !expired && !failing {
                    warn!(shard = %shard, error = %DisplayErrorContext(&e), "GetRecords failed; retrying");
                    failing = true;
                }
                // Keep the position: a fresh iterator after the last record read.
                it = None;
            }
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}
