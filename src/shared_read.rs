//! A read that many requests want at once, made once for all of them. Every open dashboard page
//! asks for the node list every two seconds, and anyone may loop on the endpoint's `/readyz`;
//! made per request, the database's work would grow with the number of askers (the endpoint's
//! pings took connections its deliveries needed), and with the database down each request
//! would wait for the one before it to time out, then time out in turn.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::mongo::MongoError;

/// One read at a time; a request that comes while it is under way waits for it and takes its
/// outcome, a failure too, and a success (or, [`SharedRead::reusing_failures`], any outcome)
/// is reused for `ttl`.
pub struct SharedRead<T, E> {
    ttl: Duration,
    /// Whether a failure, too, is reused for `ttl`.
    keep_failures: bool,
    /// How many reads have ended; a request notes it before it waits for `last`.
    ended: AtomicU64,
    last: Arc<tokio::sync::Mutex<Option<Last<T, E>>>>,
}

/// How the last read ended, and when.
struct Last<T, E> {
    read_at: Instant,
    /// Its number in [`SharedRead::ended`].
    number: u64,
    outcome: Result<T, E>,
}

impl<T, E> SharedRead<T, E>
where
    T: Clone + Send + 'static,
    E: Clone + Send + 'static + From<MongoError>,
{
    /// A read whose success is reused for `ttl`.
    pub fn new(ttl: Duration) -> Arc<Self> {
        Self::keeping(ttl, false)
    }

    /// A read whose outcome, a failure too, is reused for `ttl` (a health check, which need
    /// not see a recovery at once).
    pub fn reusing_failures(ttl: Duration) -> Arc<Self> {
        Self::keeping(ttl, true)
    }

    fn keeping(ttl: Duration, keep_failures: bool) -> Arc<Self> {
        Arc::new(SharedRead {
            ttl,
            keep_failures,
            ended: AtomicU64::new(0),
            last: Arc::default(),
        })
    }

    /// The last read's outcome if it is to be reused within the `ttl`, or ended while this
    /// request waited for it; else the outcome of `read`, made now.
    pub async fn get<F, Fut>(self: &Arc<Self>, read: F) -> Result<T, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        let before = self.ended.load(Ordering::Acquire);
        // Held across the read, so that requests coming meanwhile wait for it.
        let mut last = self.last.clone().lock_owned().await;
        if let Some(l) = last.as_ref() {
            let fresh = (self.keep_failures || l.outcome.is_ok()) && l.read_at.elapsed() < self.ttl;
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

    type Shared = Arc<SharedRead<u32, MongoError>>;

    /// Ask `shared` `n` times at once, each read taking 100 ms and failing if `fail`.
    async fn ask(
        shared: &Shared,
        reads: &Arc<AtomicUsize>,
        n: usize,
        fail: bool,
    ) -> Vec<Result<u32, MongoError>> {
        let asked: Vec<_> = (0..n)
            .map(|_| {
                let (shared, reads) = (shared.clone(), reads.clone());
                tokio::spawn(async move {
                    shared
                        .get(|| async move {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            let n = reads.fetch_add(1, Ordering::SeqCst) as u32;
                            if fail {
                                Err(MongoError::Unavailable("down".into()))
                            } else {
                                Ok(n)
                            }
                        })
                        .await
                })
            })
            .collect();
        let mut out = Vec::new();
        for a in asked {
            out.push(a.await.unwrap());
        }
        out
    }

    // Requests that come together share one read; a success is reused within the ttl, and a
    // failure is not.
    #[tokio::test(start_paused = true)]
    async fn concurrent_requests_share_one_read() {
        let shared: Shared = SharedRead::new(Duration::from_secs(1));
        let reads = Arc::new(AtomicUsize::new(0));
        let together = ask(&shared, &reads, 5, false).await;
        assert!(together.iter().all(|r| r == &Ok(0)), "{together:?}");
        assert_eq!(reads.load(Ordering::SeqCst), 1);
        assert_eq!(
            ask(&shared, &reads, 1, false).await,
            [Ok(0)],
            "reused within the ttl"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(ask(&shared, &reads, 1, true).await[0].is_err());
        assert_eq!(
            ask(&shared, &reads, 1, false).await,
            [Ok(2)],
            "a failure is read again"
        );
    }

    // Reusing failures: one is reused within the ttl, then read again.
    #[tokio::test(start_paused = true)]
    async fn a_failure_can_be_reused_too() {
        let shared: Shared = SharedRead::reusing_failures(Duration::from_secs(1));
        let reads = Arc::new(AtomicUsize::new(0));
        assert!(ask(&shared, &reads, 3, true)
            .await
            .iter()
            .all(Result::is_err));
        assert!(
            ask(&shared, &reads, 1, false).await[0].is_err(),
            "reused within the ttl"
        );
        assert_eq!(reads.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(ask(&shared, &reads, 1, false).await, [Ok(1)]);
    }
}
