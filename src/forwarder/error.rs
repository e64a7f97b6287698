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
/// BSONObjectTooLarge: a change event over 16 MiB, which a change stream cannot get past.
pub const BSON_OBJECT_TOO_LARGE: i32 = 10334;

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
    /// A change event is over MongoDB's 16 MiB limit: the server fails the stream at it every
    /// time it is resumed before it, so retrying would go on for ever.
    #[error("a change event on {namespace} is larger than MongoDB's 16 MiB limit ({message}, error 10334), so the change stream cannot get past it and nothing after it can be forwarded. Make the document smaller (with --operations update, an update event holds the document and its changes); or skip it by starting again with --start-from-now, which forwards nothing between the stored position and now")]
    EventTooLarge {
        /// `database.collection` of the watched collection.
        namespace: String,
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

/// [`ForwarderError::EventTooLarge`] when `e` is the server failing a change event over 16 MiB.
pub(crate) fn event_too_large(e: &Error, namespace: &str) -> Option<ForwarderError> {
    match *e.kind {
        ErrorKind::Command(ref c) if c.code == BSON_OBJECT_TOO_LARGE => {
            Some(ForwarderError::EventTooLarge {
                namespace: namespace.to_owned(),
                message: c.message.clone(),
            })
        }
        _ => None,
    }
}

/// The codes a server answers when the resume token itself cannot be used (edited by hand, or
/// damaged): FailedToParse, TypeMismatch, InvalidResumeToken, and older servers' "_data of
/// missing or of wrong type".
const UNUSABLE_TOKEN_CODES: [i32; 4] = [9, 14, 260, 40647];

/// [`ForwarderError::Position`] when opening the change stream after a resume token failed
/// because of the token: retrying the same token cannot help.
pub(crate) fn unusable_token(e: &Error, namespace: &str) -> Option<ForwarderError> {
    match *e.kind {
        ErrorKind::Command(ref c) if UNUSABLE_TOKEN_CODES.contains(&c.code) => {
            Some(ForwarderError::Position(format!(
                "the change stream on {namespace} cannot be opened after the stored resume token: \
                 {}; the token is not one the server can resume from (edited by hand, or \
                 damaged?). Start again from now with --start-from-now (changes since the stored \
                 position are then not forwarded)",
                crate::mongo::describe(e)
            )))
        }
        _ => None,
    }
}

/// Why the change stream on `namespace` cannot go on from where it is, whatever is retried:
/// its history is gone, or the next event is too large.
pub(crate) fn cannot_go_on(e: &Error, namespace: &str) -> Option<ForwarderError> {
    history_lost(e, namespace).or_else(|| event_too_large(e, namespace))
}

/// [`ForwarderError::Mongo`], with what to do where that is known, when retrying `e` cannot help.
pub(crate) fn fatal(e: &Error) -> Option<ForwarderError> {
    crate::mongo::is_fatal(e).then(|| {
        let hint = crate::mongo::fatal_hint(e);
        ForwarderError::Mongo(format!("{}{hint}", crate::mongo::describe(e)))
    })
}

/// A failure to read or write the stored position: fatal when retrying cannot help
/// (privileges, authentication), otherwise [`ForwarderError::State`], retried.
pub(crate) fn store_error(e: &Error) -> ForwarderError {
    fatal(e).unwrap_or_else(|| ForwarderError::State(crate::mongo::describe(e)))
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

    // A change event over 16 MiB stops the forwarder with what to do, not a reopen loop.
    #[test]
    fn an_event_too_large_cannot_go_on() {
        let command: mongodb::error::CommandError =
            mongodb::bson::from_document(mongodb::bson::doc! {
                "code": 10334,
                "codeName": "BSONObjectTooLarge",
                "errmsg": "BSONObj size: 16800000 (0x1005A80) is invalid",
            })
            .unwrap();
        let e = Error::from(ErrorKind::Command(command));
        let stop = cannot_go_on(&e, "monitors.reports").expect("stops");
        let text = stop.to_string();
        assert!(
            matches!(stop, ForwarderError::EventTooLarge { .. }),
            "{text}"
        );
        assert!(
            text.contains("monitors.reports") && text.contains("--start-from-now"),
            "{text}"
        );
        assert!(cannot_go_on(&Error::custom("network blip"), "a.b").is_none());
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
