//! The buffer between the shard readers and the endpoint: records wait until the size hint or
//! the interval hint is reached (or the next one would make the body too large), then go out
//! as one request; the checkpoint moves past a batch only once it has ended. The end of a shard
//! sends the buffer at once, so that its children are read only after its records have ended.
//!
//! A record over Firehose's 1,024,000 bytes never enters the buffer: it is set aside into the
//! error output as it arrives, and the checkpoint moves past it at once, as past a batch of its
//! own that ended. When the buffer holds earlier records of its shard, the buffer is sent first,
//! so that a shard's position still moves only past records that have all ended. A restart then
//! never writes it out twice, even when a stop cut the delivery before it short.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{info, warn};

use super::checkpoint::Checkpoint;
use super::delivery::{Delivery, Outcome};
use super::protocol;
use super::reader::{Arrived, Read};

/// Buffering hints.
#[derive(Debug, Clone, Copy)]
pub struct Buffering {
    /// Send once this much record data waits.
    pub bytes: usize,
    /// Send this long after the first record of a request arrived.
    pub interval: Duration,
}

/// How long deliveries may go on once a stop is requested: the one in progress and the
/// buffer's last, together. A destination that is down must not hold the stop for the whole
/// retry duration (up to two hours). What was cut short is read again at the next start with
/// `--checkpoint-file` (its position was not moved), and lost without one.
pub const FINAL_DELIVERY_WAIT: Duration = Duration::from_secs(10);

/// The records waiting, and what they add up to.
#[derive(Default)]
struct Pending {
    records: Vec<Arrived>,
    /// Record data waiting: what the size hint counts.
    bytes: usize,
    /// The request body the records make, without its fixed part.
    body: usize,
    /// When they must go out: the first one's arrival plus the interval.
    deadline: Option<Instant>,
}

impl Pending {
    /// Whether `record` would make a body past Firehose's largest, which the endpoint would
    /// answer with 413, and the records be lost.
    fn would_overflow(&self, record: &Arrived) -> bool {
        let grows = protocol::encoded_record_bytes(record.data.len());
        !self.records.is_empty()
            && protocol::BODY_OVERHEAD_BYTES + self.body + grows > protocol::MAX_BODY_BYTES
    }

    fn push(&mut self, record: Arrived, interval: Duration) {
        self.bytes += record.data.len();
        self.body += protocol::encoded_record_bytes(record.data.len());
        self.deadline
            .get_or_insert_with(|| Instant::now() + interval);
        self.records.push(record);
    }

    /// Whether a record of `shard` waits here.
    fn holds(&self, shard: &str) -> bool {
        self.records.iter().any(|r| &*r.shard == shard)
    }

    /// Whether a request is due by size or by Firehose's record count.
    fn is_full(&self, size_hint: usize) -> bool {
        self.bytes >= size_hint || self.records.len() >= protocol::MAX_RECORDS
    }

    /// The records, leaving the buffer empty.
    fn take(&mut self) -> Vec<Arrived> {
        std::mem::take(self).records
    }
}

/// Sends batches, moves the checkpoint past them, and keeps the stop deadline.
struct Sender<'a, S> {
    delivery: &'a Delivery,
    checkpoint: Option<Checkpoint>,
    shutdown: Pin<&'a mut S>,
    /// Set once a stop is requested: the time deliveries must end by.
    stop_at: Option<Instant>,
}

impl<S: Future<Output = ()>> Sender<'_, S> {
    /// Deliver one batch, then move the checkpoint past it: delivered, refused with 413, given
    /// up into the error output, or given up with no error output configured are all final.
    /// Given up with the error output failing is not: the records exist nowhere else, so the
    /// checkpoint stops moving and a restart reads them again.
    async fn deliver(
        delivery: &Delivery,
        batch: Vec<Arrived>,
        checkpoint: &mut Option<Checkpoint>,
    ) {
        let outcome = delivery.deliver(&batch).await;
        let Some(cp) = checkpoint else { return };
        if matches!(outcome, Outcome::Failed { written: None, .. }) && delivery.has_error_output() {
            cp.freeze();
        } else {
            cp.record(&batch);
        }
    }

    /// Set `record`, over Firehose's limit, aside into the error output, then move the
    /// checkpoint past it, final as a batch given up is (see [`Self::deliver`]). Every earlier
    /// record of its shard must have ended: the caller sends the buffer first if it holds any.
    fn set_aside(&mut self, record: &Arrived) {
        let kept = self.delivery.set_aside(record);
        let Some(cp) = &mut self.checkpoint else {
            return;
        };
        if kept {
            cp.record(std::slice::from_ref(record));
        } else {
            cp.freeze();
        }
    }

    /// [`Self::deliver`], but once a stop is requested only until `stop_at` (set then to
    /// [`FINAL_DELIVERY_WAIT`] from now, if it was not set before). False when it was cut
    /// short: the checkpoint did not move past the batch.
    async fn send(&mut self, batch: Vec<Arrived>) -> bool {
        let records = batch.len();
        let work = Self::deliver(self.delivery, batch, &mut self.checkpoint);
        tokio::pin!(work);
        let deadline = match self.stop_at {
            Some(at) => at,
            None => {
                tokio::select! {
                    () = &mut work => return true,
                    () = self.shutdown.as_mut() => *self.stop_at.insert(Instant::now() + FINAL_DELIVERY_WAIT),
                }
            }
        };
        if tokio::time::timeout_at(deadline, work).await.is_err() {
            warn!(
                records,
                "stopping before the endpoint accepted a batch: with --checkpoint-file it is read again at the next start, without one it is lost"
            );
            return false;
        }
        true
    }
}

/// What the buffer does next.
enum Next {
    /// A stop was requested.
    Stop,
    /// The buffer's interval is up: send it.
    Due,
    /// Take this from the readers (`None`: they have all ended).
    Read(Option<Read>),
}

/// What comes first: a stop, the interval's end, or something from the readers. Once the
/// interval is up, what already waits in the channel is taken before the buffer is sent, as
/// Firehose sends what gathered within its interval: with an interval of 0 s, everything read
/// since the last request. (A deadline already past lost the race to a waiting record whenever
/// the loop had read long enough to yield, and the records read together went out in several
/// requests, cut wherever that happened.) Records that keep coming faster than they are taken
/// go on filling the buffer past its interval, up to its size hint, where it is sent at once;
/// a stop is then seen by that send.
async fn next(
    rx: &mut mpsc::Receiver<Read>,
    pending: &Pending,
    shutdown: Pin<&mut impl Future<Output = ()>>,
) -> Next {
    let Some(deadline) = pending.deadline else {
        return tokio::select! {
            biased;
            () = shutdown => Next::Stop,
            r = rx.recv() => Next::Read(r),
        };
    };
    if deadline > Instant::now() {
        tokio::select! {
            biased;
            () = shutdown => return Next::Stop,
            () = tokio::time::sleep_until(deadline) => {}
            r = rx.recv() => return Next::Read(r),
        }
    }
    // Nothing waiting, or the readers gone: send the buffer; the next call sees them gone.
    rx.try_recv().map_or(Next::Due, |r| Next::Read(Some(r)))
}

/// Buffer records from `rx` and deliver them until `shutdown` (the pending buffer is then
/// delivered, within [`FINAL_DELIVERY_WAIT`]) or the readers end.
pub async fn run_buffer(
    mut rx: mpsc::Receiver<Read>,
    delivery: &Delivery,
    buffering: Buffering,
    checkpoint: Option<Checkpoint>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut out = Sender {
        delivery,
        checkpoint,
        shutdown,
        stop_at: None,
    };
    let mut pending = Pending::default();
    // A delivery was cut short: nothing after it may be delivered, or the checkpoint would
    // move past the records it held.
    let mut cut_short = false;
    while out.stop_at.is_none() && !cut_short {
        let mut batch = None;
        match next(&mut rx, &pending, out.shutdown.as_mut()).await {
            Next::Stop => out.stop_at = Some(Instant::now() + FINAL_DELIVERY_WAIT),
            Next::Due => batch = Some(pending.take()),
            Next::Read(r) => {
                let record = match r {
                    None => break,
                    Some(Read::Record(record)) => record,
                    Some(Read::Listed(listed)) => {
                        if let Some(cp) = &mut out.checkpoint {
                            cp.prune(&listed);
                        }
                        continue;
                    }
                    Some(Read::End { shard, delivered }) => {
                        if !pending.records.is_empty() {
                            cut_short = !out.send(pending.take()).await;
                        }
                        if !cut_short {
                            if let Some(cp) = &mut out.checkpoint {
                                cp.end_shard(&shard);
                            }
                            // The reader may be gone already (a stop): nothing to tell.
                            let _ = delivered.send(());
                        }
                        continue;
                    }
                };
                if record.data.len() > protocol::MAX_RECORD_BYTES {
                    if pending.holds(&record.shard) {
                        cut_short = !out.send(pending.take()).await;
                    }
                    if !cut_short {
                        out.set_aside(&record);
                    }
                    continue;
                }
                if pending.would_overflow(&record) {
                    cut_short = !out.send(pending.take()).await;
                }
                pending.push(record, buffering.interval);
                if !cut_short && pending.is_full(buffering.bytes) {
                    batch = Some(pending.take());
                }
            }
        }
        if let Some(batch) = batch {
            cut_short = !out.send(batch).await;
        }
    }
    let last = pending.take();
    if last.is_empty() {
        return;
    }
    if cut_short {
        info!(
            records = last.len(),
            "not delivering the buffer: a batch before it was cut short, so both are read again at the next start with --checkpoint-file"
        );
        return;
    }
    info!(
        records = last.len(),
        "delivering the buffer before stopping"
    );
    out.send(last).await;
}
