//! The put side's seam: a small trait over one batch call, [`Target`] (Kinesis PutRecords in
//! [`super::aws`], EventBridge PutEvents in [`super::eventbridge`], or a test wrapper that fails
//! chosen entries, since no emulator can throttle), each with its batch [`Limits`], how a failed
//! entry is sorted ([`EntryFailure`]), and the back-off of resends. Putting a whole batch, with
//! its resends, is [`super::put`]'s [`put_all`].

use std::future::Future;
use std::time::Duration;

use backon::BackoffBuilder;

use super::batch::{Entry, Limits};
pub use super::put::{put_all, PutStats, Refused};

/// First delay before resending failed entries.
pub const RETRY_MIN_DELAY: Duration = Duration::from_millis(100);
/// Longest back-off step; the jitter adds up to as much again, so throttling that goes on
/// slows the forwarder to a resend every 5 to 10 s.
pub const RETRY_MAX_DELAY: Duration = Duration::from_secs(5);

/// A call to the target (PutRecords, PutEvents) that failed as a whole.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PutError {
    /// Retrying cannot help: the stream or bus does not exist, access is denied, or the request
    /// is invalid.
    #[error("the target refused the request: {0}")]
    Fatal(String),
    /// Throttling, a network error or a server error: worth trying again.
    #[error("the target is unavailable: {0}")]
    Transient(String),
    /// [`put_all`] was told to stop before the target accepted every entry.
    #[error("stopped before the target accepted every record")]
    Interrupted,
}

/// What a call did with each entry, by position: `None` accepted, `Some(reason)` failed, the
/// reason starting with the error code (`ThrottlingException: Rate exceeded`).
pub type EntryResults = Vec<Option<String>>;

/// What a failed entry calls for, by its error code ([`Target::entry_failure`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryFailure {
    /// Throttling or the service's own failure: send it again.
    Resend,
    /// This entry can never be accepted (its content is refused): it is handed back to the
    /// caller, for the dead-letter collection, and the rest goes on.
    Refused,
    /// The forwarder may not put it (a policy that does not allow it): no entry will be
    /// accepted until the permission is given, so the put fails as a whole, [`PutError::Fatal`].
    Denied,
}

impl PutError {
    /// A failed call, as the SDK described it (`text`), sorted by whether retrying can help.
    pub fn of_call(text: String, fatal: bool) -> Self {
        if fatal {
            PutError::Fatal(text)
        } else {
            PutError::Transient(text)
        }
    }
}

/// Each entry's outcome from a call's answer, given as every result's error code and message:
/// an answer with a result count other than `sent` is a transient failure of the whole call.
pub fn entry_results<'a>(
    api: &str,
    sent: usize,
    answered: impl Iterator<Item = (Option<&'a str>, Option<&'a str>)>,
) -> Result<EntryResults, PutError> {
    let results: EntryResults = answered
        .map(|(code, message)| code.map(|c| format!("{c}: {}", message.unwrap_or(""))))
        .collect();
    if results.len() != sent {
        return Err(PutError::Transient(format!(
            "{api} answered {} results for {sent} entries",
            results.len()
        )));
    }
    Ok(results)
}

/// Where the forwarder puts its batches: one call, and nothing else the forwarder needs.
pub trait Target: Send + Sync {
    /// What one call and one entry may hold, and how an entry is counted.
    const LIMITS: Limits;
    /// The call's name, for log lines ("PutRecords", "PutEvents").
    const API: &'static str;
    /// How many calls may be in flight at once, each with a batch of its own. One by default:
    /// Kinesis keeps a partition key's records in the order they were accepted, and a batch put
    /// while an earlier one is still being resent would land before it.
    const PUTS_IN_FLIGHT: usize = 1;
    /// One call putting `entries` into `destination` (a stream name, an event bus name): what
    /// became of each entry, or why the call failed as a whole.
    fn put(
        &self,
        destination: &str,
        entries: &[Entry],
    ) -> impl Future<Output = Result<EntryResults, PutError>> + Send;

    /// What an entry that failed with `reason` calls for. Kinesis fails an entry only for
    /// throttling or its own failure, so the default is to send it again.
    fn entry_failure(reason: &str) -> EntryFailure {
        let _ = reason;
        EntryFailure::Resend
    }
}

/// The resend schedule: [`crate::retry::exponential`] from [`RETRY_MIN_DELAY`] to
/// [`RETRY_MAX_DELAY`], never giving up (throttling must slow the forwarder down, not stop it).
pub fn backoff() -> impl Iterator<Item = Duration> {
    crate::retry::exponential(RETRY_MIN_DELAY, RETRY_MAX_DELAY).build()
}

#[cfg(test)]
mod tests {
    use super::*;

    // The back-off grows, has jitter, stays within the cap, and never ends.
    #[test]
    fn backoff_is_bounded_and_endless() {
        let delays: Vec<Duration> = backoff().take(50).collect();
        assert_eq!(delays.len(), 50);
        assert!(delays
            .iter()
            .all(|d| *d >= RETRY_MIN_DELAY && *d <= RETRY_MAX_DELAY * 2));
        assert!(delays[10] >= RETRY_MAX_DELAY);
    }
}
