//! Why the forwarder stops ([`ForwarderError`]), and the sorting of MongoDB errors into "the
//! stored position is gone", "never works" and "try again". What never works is decided by
//! [`crate::mongo::is_fatal`], shared with the other programs; only the change-stream codes
//! are the forwarder's own.

use mongodb::error::{Error, ErrorKind};

use super::target::PutError;

/// ChangeStreamFatalError.
pub const CHANGE_STREAM_FATAL_ERROR: i32 = 280;
/// ChangeStreamHistoryLost.
pub const CHANGE_STREAM_HISTORY_LOST: i32 = 286;

/// What the forwarder does, when it stops.
#[derive(Debug, thiserror::Error)]
pub enum ForwarderError {
    /// The server no longer holds the stored position (oplog rolled over) or cannot resume it.
    #[error("the change stream on {namespace} cannot be resumed: {message} (error {code}); the oplog no longer holds the stored position, so events since then cannot be forwarded. Start again from now with --start-from-now")]
    HistoryLost {
        /// `database.collection` of the watched collection.
        namespace: String,
        /// The server's error code ([`CHANGE_STREAM_HISTORY_LOST`] or [`CHANGE_STREAM_FATAL_ERROR`]).
        code: i32,
        /// The server's message.
        message: String,
    },
    /// The target (Kinesis, EventBridge) refused a request in a way retrying cannot fix, or a
    /// stop came before it accepted everything.
    #[error(transparent)]
    Put(#[from] PutError),
    /// The stored resume token could not be read or written (for now: retried).
    #[error("resume token store: {0}")]
    State(String),
    /// The stored position cannot be used: unreadable, or kept for another collection.
    #[error("{0}")]
    Position(String),
    /// A MongoDB error that is neither a lost history nor worth retrying.
    #[error("MongoDB: {0}")]
    Mongo(String),
}

/// [`ForwarderError::HistoryLost`] when `e` means the stored position is gone for good.
pub(crate) fn history_lost(e: &Error, namespace: &str) -> Option<ForwarderError> {
    match *e.kind {
        ErrorKind::Command(ref c)
            if c.code == CHANGE_STREAM_HISTORY_LOST || c.code == CHANGE_STREAM_FATAL_ERROR =>
        {
            Some(ForwarderError::HistoryLost {
                namespace: namespace.to_owned(),
                code: c.code,
                message: c.message.clone(),
            })
        }
        _ => None,
    }
}

/// [`ForwarderError::Mongo`], with what to do where that is known, when retrying `e` cannot help.
pub(crate) fn fatal(e: &Error) -> Option<ForwarderError> {
    crate::mongo::is_fatal(e)
        .then(|| ForwarderError::Mongo(format!("{e}{}", crate::mongo::fatal_hint(e))))
}

/// A failure to read or write the stored position: fatal when retrying cannot help
/// (privileges, authentication), otherwise [`ForwarderError::State`], retried.
pub(crate) fn store_error(e: &Error) -> ForwarderError {
    fatal(e).unwrap_or_else(|| ForwarderError::State(e.to_string()))
}

/// What a failed insert into the dead-letter collection calls for.
#[derive(Debug)]
pub(crate) enum DeadLetterFailure {
    /// The record is there already (kept before a restart): done.
    AlreadyKept,
    /// Retrying cannot help.
    Fatal(ForwarderError),
    /// Try again after a pause.
    Retry,
}

/// Sort a failed dead-letter insert.
pub(crate) fn dead_letter_failure(e: &Error) -> DeadLetterFailure {
    if crate::mongo::is_duplicate_key(e) {
        DeadLetterFailure::AlreadyKept
    } else if let Some(f) = fatal(e) {
        DeadLetterFailure::Fatal(f)
    } else {
        DeadLetterFailure::Retry
    }
}

/// Whether a document cannot be written as it is (too large with the wrapper, say), so a
/// smaller record is the way to keep at least its id and the reason.
pub(crate) fn is_unwritable(e: &Error) -> bool {
    matches!(
        *e.kind,
        ErrorKind::InvalidArgument { .. } | ErrorKind::BsonSerialization(_)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    // The history-lost message says what happened and how to start again.
    #[test]
    fn fatal_messages_name_the_flag() {
        let e = ForwarderError::HistoryLost {
            namespace: "monitors.reports".into(),
            code: 286,
            message: "resume point no longer in the oplog".into(),
        };
        let text = e.to_string();
        assert!(
            text.contains("--start-from-now") && text.contains("286") && text.contains("oplog")
        );
    }

    // Errors that are neither a lost history nor fatal are retried.
    #[test]
    fn other_errors_are_retried() {
        let e = Error::custom("network blip");
        assert!(history_lost(&e, "a.b").is_none());
        assert!(fatal(&e).is_none());
        assert!(matches!(store_error(&e), ForwarderError::State(_)));
        assert!(matches!(dead_letter_failure(&e), DeadLetterFailure::Retry));
    }
}
