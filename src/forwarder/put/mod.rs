//! Putting one batch: [`put_all`] resends the failed entries (with the later ones of their
//! partition keys, `resend_set`) with exponential back-off and jitter until every one is
//! accepted, or the target refuses one for good ([`EntryFailure`]).

use std::future::Future;
use std::time::Duration;

use tracing::{error, info, warn};

use super::batch::Entry;
use super::metrics::Metrics;
use super::target::{backoff, EntryFailure, EntryResults, PutError, Target, RETRY_MAX_DELAY};
use super::trouble::{now, Say, Trouble};

/// An entry the target refused for good, with its reason ([`EntryFailure::Refused`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// Its place in the batch given to [`put_all`], from 0.
    pub position: usize,
    /// The entry as it was sent.
    pub entry: Entry,
    /// The target's error code and message.
    pub reason: String,
}

/// What it took to put one batch, and what the target refused of it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PutStats {
    /// Calls made, including resends.
    pub calls: u32,
    /// Entries resent after a partial failure (an entry resent twice counts twice).
    pub resent: u64,
    /// Entries the target will never accept, in the batch's order.
    pub refused: Vec<Refused>,
}

/// What to send again after a call that failed some entries: each failed entry, and every
/// later entry with the same partition key even when it was accepted. Kinesis keeps a key's
/// records in the order they were accepted (and EventBridge delivers roughly so); resending only a failed A1 would land it after an
/// accepted A2, and with updates forwarded the endpoint's replace by `_id` would then keep the
/// older document. Sending A2 again after A1 restores the order (a duplicate, which delivery at
/// least once already allows). `reason` gets the first failure's reason. An entry refused for
/// good ([`EntryFailure::Refused`]) goes to `refused` instead, and holds back no other: it will
/// never be delivered, so there is no order to keep with it. `positions` are the entries' places
/// in the batch; those of the entries to send again come back with them.
fn resend_set<T: Target>(
    entries: Vec<Entry>,
    positions: Vec<usize>,
    results: EntryResults,
    reason: &mut Option<String>,
    refused: &mut Vec<Refused>,
) -> (Vec<Entry>, Vec<usize>) {
    let mut blocked: std::collections::HashSet<String> = std::collections::HashSet::new();
    entries
        .into_iter()
        .zip(positions)
        .zip(results)
        .filter_map(|((e, position), r)| match r {
            Some(why) if T::entry_failure(&why) == EntryFailure::Refused => {
                refused.push(Refused {
                    position,
                    entry: e,
                    reason: why,
                });
                None
            }
            Some(why) => {
                reason.get_or_insert(why);
                blocked.insert(e.partition_key.clone());
                Some((e, position))
            }
            None if blocked.contains(&e.partition_key) => Some((e, position)),
            None => None,
        })
        .unzip()
}

/// Put every entry, resending the failed ones (see `resend_set`), until all are accepted or
/// refused for good (those come back in [`PutStats::refused`]). Returns early on a fatal error
/// (an entry [`EntryFailure::Denied`] among them), or with [`PutError::Interrupted`] when
/// `interrupt` resolves first (a call in flight is abandoned: its entries may or may not have
/// been accepted). Accepted entries, failed ones (to resend) apart from those refused or
/// denied for good, and retried calls are counted in `metrics` as they happen, so a put that
/// keeps failing shows while it does.
pub async fn put_all<T: Target>(
    target: &T,
    destination: &str,
    entries: Vec<Entry>,
    interrupt: impl Future<Output = ()>,
    metrics: &Metrics,
) -> Result<PutStats, PutError> {
    tokio::pin!(interrupt);
    let mut positions: Vec<usize> = (0..entries.len()).collect();
    let mut pending = entries;
    let mut stats = PutStats::default();
    let mut delays = backoff();
    let mut trouble = Trouble::default();
    while !pending.is_empty() {
        stats.calls += 1;
        if stats.calls > 1 {
            metrics.retries.inc();
        }
        let put = tokio::select! {
            r = target.put(destination, &pending) => r,
            () = &mut interrupt => return Err(PutError::Interrupted),
        };
        match put {
            Ok(results) => {
                let total = pending.len();
                let failed = results.iter().filter(|r| r.is_some()).count();
                let resend = results
                    .iter()
                    .flatten()
                    .filter(|why| T::entry_failure(why) == EntryFailure::Resend)
                    .count();
                metrics.records_put.inc_by((total - failed) as u64);
                metrics.failed_entries.inc_by(resend as u64);
                metrics.refused_entries.inc_by((failed - resend) as u64);
                if let Some(denied) = results
                    .iter()
                    .flatten()
                    .find(|why| T::entry_failure(why) == EntryFailure::Denied)
                {
                    return Err(PutError::Fatal(format!(
                        "{} refused records: {denied}; the forwarder is not allowed to put them: give its role or user the permission (see docs/aws.md); its position was not stored, so they are sent again at the next start",
                        T::API
                    )));
                }
                let mut reason = None;
                (pending, positions) =
                    resend_set::<T>(pending, positions, results, &mut reason, &mut stats.refused);
                if pending.is_empty() {
                    break;
                }
                stats.resent += pending.len() as u64;
                let reason = reason.as_deref().unwrap_or("");
                match trouble.failed(now()) {
                    Say::Began => warn!(
                        failed = pending.len(),
                        of = total,
                        reason,
                        "{} failed some records; resending those (and later records with the same partition key, to keep their order), with back-off",
                        T::API
                    ),
                    Say::Still(failing_for) => still_failing(T::LIMITS.target, failing_for, reason),
                    Say::Nothing => {}
                }
            }
            Err(e @ (PutError::Fatal(_) | PutError::Interrupted)) => return Err(e),
            Err(PutError::Transient(e)) => match trouble.failed(now()) {
                Say::Began => warn!(error = %e, "{} failed; retrying with back-off", T::API),
                Say::Still(failing_for) => still_failing(T::LIMITS.target, failing_for, &e),
                Say::Nothing => {}
            },
        }
        tokio::select! {
            () = tokio::time::sleep(delays.next().unwrap_or(RETRY_MAX_DELAY)) => {}
            () = &mut interrupt => return Err(PutError::Interrupted),
        }
    }
    if trouble.recovered() {
        info!(
            calls = stats.calls,
            "{} accepted every record again",
            T::API
        );
    }
    // Each round refuses in the batch's order; a later round's may come before an earlier's.
    stats.refused.sort_by_key(|r| r.position);
    Ok(stats)
}

/// The error line of a batch `target` has not accepted for `failing_for`.
fn still_failing(target: &str, failing_for: Duration, error: &str) {
    error!(
        failing_for_s = failing_for.as_secs(),
        error,
        "{target} has not accepted this batch yet; still retrying, and nothing after it is forwarded until it is accepted"
    );
}

#[cfg(test)]
mod tests;
