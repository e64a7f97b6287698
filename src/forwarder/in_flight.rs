//! The batches handed to the target and not yet handled: [`InFlight`], an ordered
//! `buffered(k)` kept beside the change stream. Each batch is put by its own [`put_all`] (with
//! its own resends), up to [`Target::PUTS_IN_FLIGHT`](super::target::Target::PUTS_IN_FLIGHT)
//! at once, and their outcomes come back in the order the batches were sent however the calls
//! end, so that the forwarder moves its position only past batches that were accepted with
//! every batch before them.
//!
//! [`put_all`]: super::put::put_all

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

use futures_util::stream::{FuturesOrdered, StreamExt};
use mongodb::change_stream::event::ResumeToken;

use super::put::PutStats;
use super::target::PutError;

/// What the forwarder keeps of a batch while it is put.
#[derive(Debug)]
pub(super) struct Sent {
    /// The resume token covering the batch and every event read before it.
    pub(super) token: Option<ResumeToken>,
    /// Each entry's event time (ms since the epoch), in the batch's order: only while the lag
    /// is measured.
    pub(super) event_times: Vec<i64>,
    /// How many entries it holds.
    pub(super) entries: usize,
}

/// A batch whose put ended: what was kept of it, and the put's outcome.
#[derive(Debug)]
pub(super) struct Done {
    pub(super) sent: Sent,
    pub(super) outcome: Result<PutStats, PutError>,
}

type Put<'a> = Pin<Box<dyn Future<Output = Done> + Send + 'a>>;

/// The puts in flight, oldest first, and those that ended while something else was awaited.
#[derive(Default)]
pub(super) struct InFlight<'a> {
    /// The Mutex is never locked, only reached through `get_mut`: it makes the set `Sync` (a
    /// boxed future is only `Send`), which the forwarder must be, as it is borrowed across
    /// awaits.
    running: Mutex<FuturesOrdered<Put<'a>>>,
    /// Outcomes that came in during [`InFlight::alongside`], in order, not yet handled.
    ended: VecDeque<Done>,
}

impl<'a> InFlight<'a> {
    fn running(&mut self) -> &mut FuturesOrdered<Put<'a>> {
        self.running
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Batches sent and not yet handled.
    pub(super) fn len(&mut self) -> usize {
        self.running().len() + self.ended.len()
    }

    /// Whether every batch sent was handled.
    pub(super) fn is_empty(&mut self) -> bool {
        self.len() == 0
    }

    /// Start putting a batch: `put` runs whenever the set is awaited.
    pub(super) fn push(&mut self, put: impl Future<Output = Done> + Send + 'a) {
        self.running().push_back(Box::pin(put));
    }

    /// The oldest batch's outcome, once its put ended (the others go on meanwhile); `None` when
    /// none is in flight.
    pub(super) async fn next(&mut self) -> Option<Done> {
        match self.ended.pop_front() {
            Some(done) => Some(done),
            None => self.running().next().await,
        }
    }

    /// An outcome that came in during [`InFlight::alongside`], oldest first, without waiting.
    pub(super) fn take_ended(&mut self) -> Option<Done> {
        self.ended.pop_front()
    }

    /// Run `work` to its end while the puts go on, keeping the outcomes that come in meanwhile
    /// for [`InFlight::take_ended`]. `work` is never cut short by them: a change stream's
    /// `next_if_any` must not be, as it takes its resume token out while it resumes.
    pub(super) async fn alongside<F: Future>(&mut self, work: F) -> F::Output {
        tokio::pin!(work);
        let running = self
            .running
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        loop {
            tokio::select! {
                biased;
                out = &mut work => return out,
                Some(done) = running.next(), if !running.is_empty() => self.ended.push_back(done),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn sent(n: usize) -> Sent {
        Sent {
            token: None,
            event_times: Vec::new(),
            entries: n,
        }
    }

    /// A put that ends after `ms`, as a batch of `n`.
    async fn put(n: usize, ms: u64) -> Done {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Done {
            sent: sent(n),
            outcome: Ok(PutStats::default()),
        }
    }

    // Puts run at once, together, and their outcomes come back in the order they were sent
    // whichever ends first.
    #[tokio::test(start_paused = true)]
    async fn outcomes_come_back_in_order_sent() {
        let mut f = InFlight::default();
        f.push(put(1, 300));
        f.push(put(2, 100));
        f.push(put(3, 200));
        let start = tokio::time::Instant::now();
        let order: Vec<usize> = [
            f.next().await.unwrap(),
            f.next().await.unwrap(),
            f.next().await.unwrap(),
        ]
        .iter()
        .map(|d| d.sent.entries)
        .collect();
        assert_eq!(order, [1, 2, 3]);
        assert_eq!(start.elapsed(), Duration::from_millis(300), "together");
        assert!(f.next().await.is_none() && f.is_empty());
    }

    // Work run alongside is never cut short; puts that end meanwhile are kept, in order, and
    // still count as in flight until taken.
    #[tokio::test(start_paused = true)]
    async fn work_alongside_runs_to_its_end() {
        let mut f = InFlight::default();
        f.push(put(1, 200));
        f.push(put(2, 100));
        let out = f
            .alongside(async {
                tokio::time::sleep(Duration::from_millis(250)).await;
                "read"
            })
            .await;
        assert_eq!(out, "read");
        assert_eq!(f.len(), 2);
        assert_eq!(f.take_ended().unwrap().sent.entries, 1);
        assert_eq!(f.take_ended().unwrap().sent.entries, 2);
        assert!(f.take_ended().is_none() && f.is_empty());
    }
}
