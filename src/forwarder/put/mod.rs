//! Putting one batch: [`put_all`] resends the failed entries (with the later ones of their
//! partition keys, `resend_set`) with exponential back-off and jitter until every one is
//! accepted, or the target refuses one for good ([`EntryFailure`]). How resends are said is
//! the forwarder's, not each batch's: see [`put_all`].

use std::future::Future;
use std::time::Duration;

use tracing::{error, info, warn};

use super::batch::Entry;
use super::metrics::Metrics;
use super::target::{backoff, EntryFailure, EntryResults, PutError, Target, RETRY_MAX_DELAY};
use super::trouble::{now, Say, Trouble};
use crate::say_once::{Failures, Said};

/// How long no call may have failed before a batch accepted at its first call says resends
/// over ("accepted every record again"): the longest wait between a batch's calls while it is
/// resent ([`RETRY_MAX_DELAY`] and a jitter of up to as much again). By then every batch that
/// was being resent has called again since its last failure, so a throttle still on would
/// have failed one of them. Near a shard's capacity (or EventBridge's PutEvents quota) batches
/// alternate between throttled and clean a few seconds apart; ending at each clean one would
/// say the end and a new beginning over and over.
pub const RESENDS_QUIET: Duration = Duration::from_secs(2 * RETRY_MAX_DELAY.as_secs());

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
///
/// `resends` is shared by the puts of every batch (up to [`Target::PUTS_IN_FLIGHT`] at once):
/// near a target's capacity one throttled entry in each batch is normal, and a pair of lines
/// per batch would bury the rest of the log. It says the warning when calls begin to fail,
/// again at most once a minute while they go on (with how many failed meanwhile), and the end
/// once, when a batch is accepted at its first call with none failed for [`RESENDS_QUIET`].
/// A batch itself not accepted for a minute is said as an error every minute
/// (its own `Trouble`'s `Still`): nothing after it is forwarded.
pub async fn put_all<T: Target>(
    target: &T,
    destination: &str,
    entries: Vec<Entry>,
    interrupt: impl Future<Output = ()>,
    metrics: &Metrics,
    resends: &Failures,
) -> Result<PutStats, PutError> {
    tokio::pin!(interrupt);
    let mut positions: Vec<usize> = (0..entries.len()).collect();
    let mut pending = entries;
    let mut stats = PutStats::default();
    let mut delays = backoff();
    // This batch's own failure: only its errors while it is stuck are said from it.
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
                say_failed::<T>(resends, &mut trouble, reason, || {
                    warn!(
                        failed = pending.len(),
                        of = total,
                        reason,
                        "{} failed some records; resending those (and later records with the same partition key, to keep their order), with back-off",
                        T::API
                    )
                });
            }
            Err(e @ (PutError::Fatal(_) | PutError::Interrupted)) => return Err(e),
            Err(PutError::Transient(e)) => say_failed::<T>(
                resends,
                &mut trouble,
                &e,
                || warn!(error = %e, "{} failed; retrying with back-off", T::API),
            ),
        }
        tokio::select! {
            () = tokio::time::sleep(delays.next().unwrap_or(RETRY_MAX_DELAY)) => {}
            () = &mut interrupt => return Err(PutError::Interrupted),
        }
    }
    // A batch accepted after resends says little: the next may be throttled as this one was.
    if stats.calls == 1 {
        if let Some(lasted) = resends.answered_after_quiet(now(), RESENDS_QUIET) {
            ended(T::API, lasted);
        }
    }
    // Each round refuses in the batch's order; a later round's may come before an earlier's.
    stats.refused.sort_by_key(|r| r.position);
    Ok(stats)
}

/// Say a call that failed (some of its records, or as a whole, with `error`): through
/// `resends`, the forwarder's, its beginning (`began` logs it) or a reminder once a minute;
/// through `trouble`, this batch's, an error once a minute while it is not accepted.
fn say_failed<T: Target>(
    resends: &Failures,
    trouble: &mut Trouble,
    error: &str,
    began: impl FnOnce(),
) {
    let now = now();
    // A spell whose last failure is a quiet spell old ended then, though no batch accepted at
    // its first call came to say so (the changes stopped): said now, and this failure begins a
    // new one, rather than going on with a spell hours old.
    if let Some(lasted) = resends.ended_by_quiet(now, RESENDS_QUIET) {
        ended(T::API, lasted);
    }
    match resends.failed(now) {
        Some(Said::Began) => began(),
        Some(Said::GoesOn { lasted, unsaid }) => warn!(
            failing_for_s = lasted.as_secs(),
            failed_calls = unsaid + 1,
            error,
            "{} still failing some calls or records; resending them with back-off",
            T::API
        ),
        None => {}
    }
    if let Say::Still(failing_for) = trouble.failed(now) {
        still_failing(T::LIMITS.target, failing_for, error);
    }
}

/// The line that says `api`'s calls, failing for `lasted`, work again.
fn ended(api: &str, lasted: Duration) {
    info!(
        failed_for_s = lasted.as_secs(),
        "{api} accepted every record again"
    );
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
