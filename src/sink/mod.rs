//! Where reports go: the durable [`spool`] on disk, and the [`mongo`] database behind it.
//! [`Inserter`] is the seam between the delivery loop and the database.

pub mod mongo;
pub mod spool;

use std::future::Future;

/// What the database did with a batch.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct InsertOutcome {
    /// Stored now.
    pub inserted: u64,
    /// Already there (duplicate `_id`): a retry after a lost acknowledgement. Delivered.
    pub duplicates: u64,
    /// Refused for good (e.g. a validation rule): index in the batch and the server's reason.
    pub rejected: Vec<(usize, String)>,
}

/// Why a batch was not acknowledged.
#[derive(Debug, Clone, thiserror::Error)]
pub enum InsertError {
    /// The database is unreachable or unwilling right now (DNS, refused, timeout, failover,
    /// authentication, write concern): keep the reports and try again later.
    #[error("{0}")]
    Unavailable(String),
    /// The insert was not acknowledged in time: like [`InsertError::Unavailable`], and
    /// perhaps more than the link can carry in that time (the agent sends less next).
    #[error("{0}")]
    TimedOut(String),
    /// The configuration can never work (for example a malformed connection string).
    #[error("{0}")]
    Fatal(String),
}

impl From<crate::mongo::MongoError> for InsertError {
    fn from(e: crate::mongo::MongoError) -> Self {
        match e {
            crate::mongo::MongoError::Unavailable(m) => InsertError::Unavailable(m),
            crate::mongo::MongoError::Fatal(m) => InsertError::Fatal(m),
        }
    }
}

/// Inserts raw BSON documents; implemented by [`mongo::MongoSink`].
pub trait Inserter: Send + 'static {
    /// Insert `docs` (BSON documents) and say what became of each; `Err` when the batch as a
    /// whole was not acknowledged and should be tried again (or never can be).
    fn insert(
        &mut self,
        docs: &[Vec<u8>],
    ) -> impl Future<Output = Result<InsertOutcome, InsertError>> + Send;
}

/// The inserter of `--dry-run`, which has no database; never called.
pub struct NoDatabase;

impl Inserter for NoDatabase {
    async fn insert(&mut self, _docs: &[Vec<u8>]) -> Result<InsertOutcome, InsertError> {
        Err(InsertError::Fatal("no database in --dry-run".into()))
    }
}
