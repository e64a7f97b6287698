//! A read that many requests want at once, made once for all of them. Every open page asks for
//! the node list every two seconds; made per request, the database's work would grow with the
//! number of viewers, and with the database down each request would wait for the one before it
//! to time out, then time out in turn.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::store::ReadError;
use crate::mongo::MongoError;

/// One read at a time; a request that comes while it is under way waits for it and takes its
/// outcome, a failure too, and a success is reused for `ttl`.
pub struct SharedRead<T> {
    ttl: Duration,
    /// How many reads have ended; a request notes it before it waits for `last`.
    ended: AtomicU64,
    last: Arc<tokio::sync::Mutex<Option<Last<T>>>>,
}

/// How the last read ended, and when.
struct Last<T> {
    read_at: Instant,
    /// Its number in [`SharedRead::ended`].
    number: u64,
    outcome: Result<T, ReadError>,
}

impl<T: Clone + Send + 'static> SharedRead<T> {
    /// A read whose success is reused for `ttl`.
    pub fn new(ttl: Duration) -> Arc<SharedRead<T>> {
        Arc::new(SharedRead {
            ttl,
            ended: AtomicU64::new(0),
            last: Arc::default(),
        })
    }

    /// The last read's outcome if it succeeded within the `ttl`, or ended while this request
    /// waited for it; else the outcome of `read`, made now.
    pub async fn get<F, Fut>(self: &Arc<Self>, read: F) -> Result<T, ReadError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, ReadError>> + Send + 'static,
    {
        let before = self.ended.load(Ordering::Acquire);
        // Held across the read, so that requests coming meanwhile wait for it.
        let mut last = self.last.clone().lock_owned().await;
        if let Some(l) = last.as_ref() {
            let fresh = l.outcome.is_ok() && l.read_at.elapsed() < self.ttl;
            if l.number > before || fresh {
                return l.outcome.clone();
            }
        }
        // Read in a task of its own, holding the lock, so that the waiters get its outcome
        // even if the request that started it is dropped (its client went away) meanwhile.
        let read = read();
        let this = self.clone();
        let task = tokio::spawn(async move {
            let outcome = read.await;
            *last = Some(Last {
                read_at: Instant::now(),
                number: this.ended.fetch_add(1, Ordering::AcqRel) + 1,
                outcome: outcome.clone(),
            });
            outcome
        });
        task.await.unwrap_or_else(|e| {
            Err(MongoError::Unavailable(format!("the read failed: {e}")).into())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn counting() -> (Arc<AtomicUsize>, impl Fn() -> Arc<AtomicUsize>) {
        let reads = Arc::new(AtomicUsize::new(0));
        let r = reads.clone();
        (reads, move || r.clone())
    }

    // Requests that come together share one read; a success is reused within the ttl, and a
    // failure is not.
    #[tokio::test(start_paused = true)]
    async fn concurrent_requests_share_one_read() {
        let shared = SharedRead::<u32>::new(Duration::from_secs(1));
        let (reads, handle) = counting();
        let ask = |fail: bool| {
            let shared = shared.clone();
            let reads = handle();
            async move {
                shared
                    .get(|| async move {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        let n = reads.fetch_add(1, Ordering::SeqCst) as u32;
                        if fail {
                            Err(MongoError::Unavailable("down".into()).into())
                        } else {
                            Ok(n)
                        }
                    })
                    .await
            }
        };
        let together = futures_util::future::join_all((0..5).map(|_| ask(false))).await;
        assert!(together.iter().all(|r| r == &Ok(0)), "{together:?}");
        assert_eq!(reads.load(Ordering::SeqCst), 1);
        assert_eq!(ask(false).await, Ok(0), "reused within the ttl");
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(ask(true).await.is_err());
        assert_eq!(ask(false).await, Ok(2), "a failure is read again");
    }
}
