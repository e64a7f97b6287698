//! The MongoDB sink: unordered `insert_many` of raw BSON reports, where a duplicate `_id`
//! counts as delivered (the agent makes every `_id`, so a duplicate is a retried insert).
//!
//! The client is created lazily and re-created after a failure to create it: with a
//! `mongodb+srv://` string the driver resolves DNS when the client is built, and a Pi that
//! boots without Wi-Fi must still start sampling.

use std::time::Duration;

use mongodb::bson::RawDocumentBuf;
use mongodb::error::{Error, ErrorKind};
use mongodb::options::ClientOptions;
use mongodb::{Client, Collection};

use super::{InsertError, InsertOutcome, Inserter};

/// Longest wait for one `insert_many` before it is treated as lost and retried.
pub const INSERT_TIMEOUT: Duration = Duration::from_secs(30);

/// Code of a duplicate-key write error.
pub const DUPLICATE_KEY: i32 = 11000;

/// Build a client: rustls TLS, SRV lookup, and short selection timeouts so an outage is
/// noticed in seconds rather than the driver's default 30.
pub async fn connect(uri: &str, app_name: &str) -> Result<Client, InsertError> {
    let mut options = ClientOptions::parse(uri).await.map_err(classify)?;
    options.app_name.get_or_insert_with(|| app_name.to_owned());
    options
        .server_selection_timeout
        .get_or_insert(Duration::from_secs(10));
    options
        .connect_timeout
        .get_or_insert(Duration::from_secs(10));
    Client::with_options(options).map_err(classify)
}

/// Sort a driver error into "try again" or "never works", without internals a user needn't see.
pub fn classify(e: Error) -> InsertError {
    match *e.kind {
        ErrorKind::InvalidArgument { ref message, .. } => {
            InsertError::Fatal(format!("invalid MongoDB connection string or option: {message}"))
        }
        ErrorKind::Authentication { ref message, .. } => InsertError::Unavailable(format!(
            "authentication failed ({message}): check the user name and password in MONGODB_CONNECTION_STRING"
        )),
        ErrorKind::DnsResolve { ref message, .. } => {
            InsertError::Unavailable(format!("DNS lookup failed: {message}"))
        }
        _ => InsertError::Unavailable(e.to_string()),
    }
}

/// Inserts reports into one collection.
pub struct MongoSink {
    uri: String,
    database: String,
    collection: String,
    coll: Option<Collection<RawDocumentBuf>>,
}

impl MongoSink {
    pub fn new(uri: &str, database: &str, collection: &str) -> Self {
        MongoSink {
            uri: uri.to_owned(),
            database: database.to_owned(),
            collection: collection.to_owned(),
            coll: None,
        }
    }

    async fn collection(&mut self) -> Result<Collection<RawDocumentBuf>, InsertError> {
        if let Some(c) = &self.coll {
            return Ok(c.clone());
        }
        let client = connect(&self.uri, "sensehat-monitor").await?;
        let c = client
            .database(&self.database)
            .collection::<RawDocumentBuf>(&self.collection);
        self.coll = Some(c.clone());
        Ok(c)
    }
}

/// Turn an `insert_many` result into an outcome, treating duplicate keys as delivered.
pub fn outcome_of(n: usize, result: Result<(), Error>) -> Result<InsertOutcome, InsertError> {
    match result {
        Ok(()) => Ok(InsertOutcome {
            inserted: n as u64,
            ..Default::default()
        }),
        Err(e) => match *e.kind {
            ErrorKind::InsertMany(ref ime) if ime.write_concern_error.is_none() => {
                let mut out = InsertOutcome::default();
                for we in ime.write_errors.iter().flatten() {
                    if we.code == DUPLICATE_KEY {
                        out.duplicates += 1;
                    } else {
                        out.rejected
                            .push((we.index, format!("{} (code {})", we.message, we.code)));
                    }
                }
                out.inserted = n as u64 - out.duplicates - out.rejected.len() as u64;
                Ok(out)
            }
            _ => Err(classify(e)),
        },
    }
}

impl Inserter for MongoSink {
    async fn insert(&mut self, docs: &[Vec<u8>]) -> Result<InsertOutcome, InsertError> {
        // Reports were checksummed in the spool, so a payload that is not BSON cannot happen;
        // if it did, it is rejected alone and never blocks the rest.
        let mut raw = Vec::with_capacity(docs.len());
        let mut index = Vec::with_capacity(docs.len());
        let mut bad = Vec::new();
        for (i, d) in docs.iter().enumerate() {
            match RawDocumentBuf::from_bytes(d.clone()) {
                Ok(r) => {
                    raw.push(r);
                    index.push(i);
                }
                Err(e) => bad.push((i, format!("not a BSON document: {e}"))),
            }
        }
        let mut out = if raw.is_empty() {
            InsertOutcome::default()
        } else {
            let coll = self.collection().await?;
            // The driver has no socket timeout by default: a connection that died with the
            // Wi-Fi could hang an insert for many minutes. Give up and retry instead (the
            // duplicate-key rule makes the retry safe).
            match tokio::time::timeout(INSERT_TIMEOUT, coll.insert_many(&raw).ordered(false)).await
            {
                Ok(result) => outcome_of(raw.len(), result.map(drop))?,
                Err(_) => {
                    return Err(InsertError::Unavailable(format!(
                        "insert not acknowledged within {} s",
                        INSERT_TIMEOUT.as_secs()
                    )))
                }
            }
        };
        for r in out.rejected.iter_mut() {
            r.0 = index.get(r.0).copied().unwrap_or(r.0);
        }
        out.rejected.extend(bad);
        Ok(out)
    }
}
