//! The upsert layer: replace-by-`_id` with `upsert: true` for every document of a request, in
//! as few round trips as the server allows.
//!
//! Documents arrive as BSON bytes ([`RawDocumentBuf`], from the decoder) and are copied into the
//! command as they are: no `Document` tree is built on the way to the server.
//!
//! - MongoDB 8.0+ (`maxWireVersion` >= 25): the `bulkWrite` command, run on `admin` with
//!   `errorsOnly`, so the reply carries counts and at most the first error.
//! - Older servers: a multi-statement `update` command; also an 8.0 server that refuses
//!   `bulkWrite` ([`BULK_WRITE_UNSUPPORTED`]: its featureCompatibilityVersion is still 7.0, as
//!   through an upgrade, or an Atlas tier does not allow it), from the first refusal on.
//!
//! Both go through `run_raw_command`, one command per 16 MiB of statements (the driver's own
//! `Client::bulk_write` takes only `Document`s, whose building cost most of the endpoint's CPU).
//! `run_raw_command` applies no default write concern and does not retry (Firehose retries, and
//! the upserts make that safe), and the server reports write errors inside an `ok: 1` reply, so
//! [`check_bulk_write_reply`] and [`check_update_reply`] (in `reply`) read them.
//!
//! Write concern: the client's, which is the connection string's if it names one, else the
//! durable default of [`crate::mongo::durable_write_concern`] (majority, journaled), as for the
//! agent: a 200 goes to Firehose only for records a crash of the server cannot take.

mod reply;

use std::sync::atomic::{AtomicBool, Ordering};

use mongodb::bson::{self, doc, rawdoc, RawArrayBuf, RawBsonRef, RawDocument, RawDocumentBuf};
use mongodb::error::ErrorKind;
use mongodb::Client;
use tokio::sync::OnceCell;
use tracing::warn;

use super::decode::document_with_capacity;
use crate::mongo::{connect, MongoError};

pub use reply::{
    check_bulk_write_reply, check_unordered_update_reply, check_update_reply, Refusal,
};

/// The wire version of MongoDB 8.0, the first with the `bulkWrite` command.
pub const BULK_WRITE_WIRE_VERSION: i32 = 25;
/// Most statement bytes put in one command (the server's 16 MiB document limit, less room for
/// the command's own fields).
pub const COMMAND_BYTES: usize = 16 * 1024 * 1024 - 64 * 1024;
/// Most statements in one command (the server's `maxWriteBatchSize`).
pub const COMMAND_STATEMENTS: usize = 100_000;
/// Codes of a server whose wire version has `bulkWrite` but which will not run it: 115
/// CommandNotSupported (8.0 whose featureCompatibilityVersion is still 7.0, the normal state
/// of an upgrade until it is made final: "BulkWrite may not be run without
/// featureFlagBulkWriteCommand enabled"), 59 CommandNotFound, and [`ATLAS_ERROR`] when it names
/// the command. Only a refused `bulkWrite` is read so; the `update` commands that replace it
/// fail as before if the refusal was about something else. The command as a whole is refused,
/// so nothing of it was written.
pub const BULK_WRITE_UNSUPPORTED: [i32; 2] = [115, 59];
/// 8000 AtlasError: Atlas's answer to a command the cluster's tier does not allow (its Flex and
/// Serverless tiers restrict commands, "CMD_NOT_ALLOWED: bulkWrite"), with which every delivery
/// failed for as long as the endpoint ran. Atlas gives the same code for other refusals (a
/// shared tier over its space quota, a user without the right), which the `update` commands
/// would meet as well: only a refusal that names `bulkWrite`, and is no refusal of a user's
/// right, counts as the command not being allowed.
pub const ATLAS_ERROR: i32 = 8000;

/// How upserts reach the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum UpsertMethod {
    /// Decide from the server's `maxWireVersion` on first use.
    Auto,
    /// The `bulkWrite` command (MongoDB 8.0+).
    BulkWrite,
    /// The `update` command with many statements (MongoDB 6.0/7.0).
    #[value(name = "update")]
    UpdateCommand,
}

/// Write error codes that writing the same document again can never clear, each about one
/// document: a duplicate key (of a unique index other than `_id`'s, which the upsert matches
/// on), a failed document validation, a document too large (10334 as stored, 17419 as the
/// update left it, 17420 as the upsert would insert it), a bad value, an
/// `_id` of another BSON type than the stored one's (66 ImmutableField: `7.0` replacing `7`),
/// and what the server's check of a replacement document refuses (52 DollarPrefixedFieldName,
/// 53 InvalidIdField, 55 InvalidDBRef, 15 Overflow: nested deeper than 100 levels).
///
/// From MongoDB's `src/mongo/base/error_codes.yml` and the places that raise them for a
/// replace-upsert (`update/storage_validation.cpp`, `exec/upsert_stage.cpp`). Not here: the
/// codes of update operators on paths (28 PathNotViable, 14 TypeMismatch), which a
/// replacement does not use, and 17280 KeyTooLong, gone since MongoDB 4.2. Any other code is
/// a retry ([`StoreError::Write`]).
pub const REFUSED_FOR_GOOD: [i64; 11] = [11000, 121, 10334, 17419, 17420, 2, 66, 52, 53, 55, 15];

/// Why a write was not acknowledged. The `String`s are for the log, never for the response.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Unreachable, timed out, not primary, authentication, write concern not satisfied.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The server refused a write (a `writeErrors` entry) for a reason that may pass.
    #[error("write error: {0}")]
    Write(String),
    /// The server refused one document for good ([`REFUSED_FOR_GOOD`]): retrying cannot help.
    /// `at` is its index among the documents given to [`Store::upsert`]; the ones before it
    /// were written, the ones after it not tried.
    #[error("document {at} refused (code {code}): {message}")]
    Refused {
        /// The document's index.
        at: usize,
        /// The server's error code.
        code: i64,
        /// The server's message.
        message: String,
    },
    /// The connection string cannot work.
    #[error("configuration error: {0}")]
    Fatal(String),
}

impl StoreError {
    /// The error of a command whose first document is document `start` of the whole write.
    fn after(self, start: usize) -> StoreError {
        match self {
            StoreError::Refused { at, code, message } => StoreError::Refused {
                at: start + at,
                code,
                message,
            },
            other => other,
        }
    }

    /// The short text for the response's `errorMessage`: no hosts, no driver internals.
    pub fn public_message(&self) -> &'static str {
        match self {
            StoreError::Unavailable(_) => "database unavailable; retry later",
            StoreError::Write(_) | StoreError::Refused { .. } => {
                "the database refused a write; retry later"
            }
            StoreError::Fatal(_) => "endpoint misconfigured",
        }
    }
}

impl From<mongodb::error::Error> for StoreError {
    fn from(e: mongodb::error::Error) -> Self {
        crate::mongo::classify(e).into()
    }
}

impl From<MongoError> for StoreError {
    fn from(e: MongoError) -> Self {
        match e {
            MongoError::Fatal(m) => StoreError::Fatal(m),
            MongoError::Unavailable(m) => StoreError::Unavailable(m),
        }
    }
}

/// The database side of the endpoint: one lazily-built client, shared by all requests.
pub struct Store {
    uri: String,
    database: String,
    method: UpsertMethod,
    client: OnceCell<Client>,
    resolved: OnceCell<UpsertMethod>,
    /// The server refused `bulkWrite` ([`BULK_WRITE_UNSUPPORTED`]): `Auto` means `update`
    /// from then on, until a restart.
    bulk_write_refused: AtomicBool,
}

impl Store {
    /// A store writing to `database` on the server at `uri`; nothing is contacted until the
    /// first write.
    pub fn new(uri: &str, database: &str) -> Self {
        Store {
            uri: uri.to_owned(),
            database: database.to_owned(),
            method: UpsertMethod::Auto,
            client: OnceCell::new(),
            resolved: OnceCell::new(),
            bulk_write_refused: AtomicBool::new(false),
        }
    }

    /// Force a method instead of asking the server (tests of the 6.0/7.0 path).
    pub fn with_method(mut self, method: UpsertMethod) -> Self {
        self.method = method;
        self
    }

    /// The client, built on first use; a failure is retried on the next request (a
    /// `mongodb+srv://` lookup at start-up must not make the service unusable).
    pub async fn client(&self) -> Result<&Client, StoreError> {
        self.client
            .get_or_try_init(|| connect(&self.uri, "sensehat-monitor firehose-endpoint"))
            .await
            .map_err(StoreError::from)
    }

    /// Whether the server answers a `ping` (for `/readyz`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .database("admin")
            .run_command(mongodb::bson::doc! { "ping": 1 })
            .await?;
        Ok(())
    }

    async fn method(&self, client: &Client) -> Result<UpsertMethod, StoreError> {
        if self.method != UpsertMethod::Auto {
            return Ok(self.method);
        }
        if self.bulk_write_refused.load(Ordering::Relaxed) {
            return Ok(UpsertMethod::UpdateCommand);
        }
        self.resolved
            .get_or_try_init(|| async {
                let hello = client
                    .database("admin")
                    .run_command(doc! { "hello": 1 })
                    .await?;
                let wire = hello.get_i32("maxWireVersion").unwrap_or(0);
                Ok::<_, StoreError>(if wire >= BULK_WRITE_WIRE_VERSION {
                    UpsertMethod::BulkWrite
                } else {
                    UpsertMethod::UpdateCommand
                })
            })
            .await
            .copied()
    }

    /// Replace-or-insert every document by its `_id` into `collection`; Ok only once the server
    /// acknowledged all of them with the write concern.
    pub async fn upsert(
        &self,
        collection: &str,
        docs: &[RawDocumentBuf],
    ) -> Result<(), StoreError> {
        if docs.is_empty() {
            return Ok(());
        }
        let client = self.client().await?;
        let wc = write_concern(client)?;
        let mut method = self.method(client).await?;
        let mut start = 0;
        'method: while start < docs.len() {
            for batch in statement_batches(method, &docs[start..])? {
                let len = batch.len;
                match method {
                    UpsertMethod::BulkWrite | UpsertMethod::Auto => {
                        let cmd = rawdoc! {
                            "bulkWrite": 1,
                            "ops": batch.statements,
                            "nsInfo": [ { "ns": format!("{}.{collection}", self.database) } ],
                            "ordered": true,
                            "errorsOnly": true,
                            "writeConcern": wc.clone(),
                        };
                        let reply = match client.database("admin").run_raw_command(cmd).await {
                            Err(e)
                                if self.method == UpsertMethod::Auto && refuses_bulk_write(&e) =>
                            {
                                // Nothing of this command was written: the same statements
                                // go again, as `update` commands.
                                self.stop_bulk_write(&e);
                                method = UpsertMethod::UpdateCommand;
                                continue 'method;
                            }
                            reply => reply?,
                        };
                        check_bulk_write_reply(&reply, len).map_err(|e| e.after(start))?;
                    }
                    UpsertMethod::UpdateCommand => {
                        let cmd = update_command(collection, batch.statements, true, &wc);
                        let reply = client.database(&self.database).run_raw_command(cmd).await?;
                        check_update_reply(&reply, len).map_err(|e| e.after(start))?;
                    }
                }
                start += len;
            }
        }
        Ok(())
    }

    /// [`Store::upsert`] with unordered `update` commands, which go on past a document refused
    /// for good: any number of refusals costs one round trip per 16 MiB of statements, where an
    /// ordered write stops at each. Ok with the documents refused for good, all others written;
    /// any other failure is an error, to retry. The `update` command on every version, as its
    /// reply lists every write error (`bulkWrite`'s is a cursor, which may need more round
    /// trips). A mongod applies unordered statements in order all the same, so of two documents
    /// with one `_id` the later still wins.
    pub async fn upsert_unordered(
        &self,
        collection: &str,
        docs: &[RawDocumentBuf],
    ) -> Result<Vec<Refusal>, StoreError> {
        if docs.is_empty() {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        let wc = write_concern(client)?;
        let mut refused = Vec::new();
        let mut start = 0;
        for batch in statement_batches(UpsertMethod::UpdateCommand, docs)? {
            let len = batch.len;
            let cmd = update_command(collection, batch.statements, false, &wc);
            let reply = client.database(&self.database).run_raw_command(cmd).await?;
            let batch_refused = check_unordered_update_reply(&reply, len)?;
            refused.extend(batch_refused.into_iter().map(|r| Refusal {
                at: start + r.at,
                ..r
            }));
            start += len;
        }
        Ok(refused)
    }

    /// `Auto` upserts with `update` from now on; said once.
    fn stop_bulk_write(&self, e: &mongodb::error::Error) {
        if !self.bulk_write_refused.swap(true, Ordering::Relaxed) {
            warn!(
                error = %crate::mongo::describe(e),
                "the server refused the bulkWrite command (MongoDB 8.0 whose featureCompatibilityVersion \
                 is still 7.0 does, and Atlas tiers that do not allow it): upserting with update \
                 commands from now on; after an upgrade, restart the endpoint once it is final \
                 (setFeatureCompatibilityVersion 8.0) to use bulkWrite"
            );
        }
    }
}

/// The write concern of every command: the client's, else the durable default.
fn write_concern(client: &Client) -> Result<RawDocumentBuf, StoreError> {
    let wc = client
        .write_concern()
        .cloned()
        .unwrap_or_else(crate::mongo::durable_write_concern);
    bson::to_raw_document_buf(&wc).map_err(|e| StoreError::Fatal(format!("write concern: {e}")))
}

/// An `update` command of `statements` into `collection`.
fn update_command(
    collection: &str,
    statements: RawArrayBuf,
    ordered: bool,
    wc: &RawDocumentBuf,
) -> RawDocumentBuf {
    rawdoc! {
        "update": collection,
        "updates": statements,
        "ordered": ordered,
        "writeConcern": wc.clone(),
    }
}

/// The server has the `bulkWrite` command's wire version but will not run it.
fn refuses_bulk_write(e: &mongodb::error::Error) -> bool {
    let ErrorKind::Command(ref c) = *e.kind else {
        return false;
    };
    let names_it = || {
        let said = c.message.to_ascii_lowercase();
        said.contains("bulkwrite")
            && !said.contains("not authorized")
            && !said.contains("do action")
    };
    BULK_WRITE_UNSUPPORTED.contains(&c.code) || (c.code == ATLAS_ERROR && names_it())
}

/// The statements of one command.
pub struct StatementBatch {
    /// The upsert statements, as the command's array.
    pub statements: RawArrayBuf,
    /// How many statements the array holds.
    pub len: usize,
}

/// One replace-with-upsert statement for `doc`, keyed by its `_id`: `bulkWrite`'s
/// `{update: 0, filter, updateMods, upsert, multi}` or `update`'s `{q, u, upsert, multi}`.
pub fn statement(method: UpsertMethod, doc: &RawDocument) -> Result<RawDocumentBuf, StoreError> {
    let id = doc
        .get("_id")
        .map_err(|e| StoreError::Write(format!("cannot read a document's _id: {e}")))?
        .unwrap_or(RawBsonRef::Null);
    let mut filter = document_with_capacity(64);
    filter.append_ref("_id", id);
    let mut s = document_with_capacity(doc.as_bytes().len() + filter.as_bytes().len() + 64);
    if method == UpsertMethod::UpdateCommand {
        s.append_ref("q", &filter);
        s.append_ref("u", doc);
    } else {
        s.append_ref("update", 0i32);
        s.append_ref("filter", &filter);
        s.append_ref("updateMods", doc);
    }
    s.append_ref("upsert", true);
    s.append_ref("multi", false);
    Ok(s)
}

/// The statements for `docs`, cut into commands of at most [`COMMAND_BYTES`] and
/// [`COMMAND_STATEMENTS`], in order.
pub fn statement_batches(
    method: UpsertMethod,
    docs: &[RawDocumentBuf],
) -> Result<Vec<StatementBatch>, StoreError> {
    let mut batches = Vec::new();
    let mut current = StatementBatch {
        statements: RawArrayBuf::new(),
        len: 0,
    };
    let mut bytes = 0usize;
    for d in docs {
        let raw = statement(method, d)?;
        // The element's type byte, its index as a name and the name's NUL.
        let size = raw.as_bytes().len() + 8;
        if current.len > 0 && (bytes + size > COMMAND_BYTES || current.len == COMMAND_STATEMENTS) {
            batches.push(std::mem::replace(
                &mut current,
                StatementBatch {
                    statements: RawArrayBuf::new(),
                    len: 0,
                },
            ));
            bytes = 0;
        }
        current.statements.push(raw);
        current.len += 1;
        bytes += size;
    }
    if current.len > 0 {
        batches.push(current);
    }
    Ok(batches)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::oid::ObjectId;

    // Statements are cut into commands under the 16 MiB limit, in order, none lost; each
    // carries the document's bytes unchanged, keyed by its _id.
    #[test]
    fn statement_batches_respect_the_size_limit() {
        let big = "x".repeat(1024 * 1024);
        let docs: Vec<RawDocumentBuf> = (0..40)
            .map(|i| rawdoc! { "_id": ObjectId::new(), "i": i, "pad": big.as_str() })
            .collect();
        for (method, filter, replacement) in [
            (UpsertMethod::UpdateCommand, "q", "u"),
            (UpsertMethod::BulkWrite, "filter", "updateMods"),
        ] {
            let batches = statement_batches(method, &docs).unwrap();
            assert_eq!(batches.len(), 3);
            assert_eq!(batches.iter().map(|b| b.len).sum::<usize>(), 40);
            let mut all = Vec::new();
            for b in &batches {
                assert!(b.statements.as_bytes().len() <= COMMAND_BYTES);
                all.extend(b.statements.into_iter().map(|s| s.unwrap()));
            }
            for (stmt, doc) in all.iter().zip(&docs) {
                let stmt = stmt.as_document().unwrap();
                assert!(stmt.get_bool("upsert").unwrap());
                assert!(!stmt.get_bool("multi").unwrap());
                assert_eq!(
                    stmt.get_document(filter).unwrap().get("_id").unwrap(),
                    doc.get("_id").unwrap()
                );
                assert_eq!(
                    stmt.get_document(replacement).unwrap().as_bytes(),
                    doc.as_bytes()
                );
            }
        }
    }

    // No more than maxWriteBatchSize statements in one command.
    #[test]
    fn statement_batches_respect_the_count_limit() {
        let docs: Vec<RawDocumentBuf> = (0..COMMAND_STATEMENTS + 1)
            .map(|i| rawdoc! { "_id": i as i64 })
            .collect();
        let batches = statement_batches(UpsertMethod::BulkWrite, &docs).unwrap();
        let lens: Vec<usize> = batches.iter().map(|b| b.len).collect();
        assert_eq!(lens, [COMMAND_STATEMENTS, 1]);
    }

    // The public message never carries the internal detail.
    #[test]
    fn public_message_hides_internals() {
        let e = StoreError::Unavailable("Server selection timeout: 127.0.0.1:27017".into());
        assert!(!e.public_message().contains("127.0.0.1"));
    }
}
