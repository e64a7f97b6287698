//! The upsert layer: replace-by-`_id` with `upsert: true` for every document of a request, in
//! as few round trips as the server allows.
//!
//! - MongoDB 8.0+ (`maxWireVersion` >= 25): the driver's `Client::bulk_write` (one `bulkWrite`
//!   command; the driver splits it only past the server's message size, 48 MB).
//! - Older servers: a multi-statement `update` command through `run_raw_command`, one command per
//!   16 MiB of statements. `run_command` applies no default write concern and does not retry, and
//!   the server reports `writeErrors` inside an `ok: 1` reply, so [`check_update_reply`] reads them.
//!
//! Write concern: the connection string's `w` if it has one, else `majority`.

use mongodb::bson::{self, doc, rawdoc, Bson, Document, RawArrayBuf, RawDocumentBuf};
use mongodb::options::{ReplaceOneModel, WriteConcern, WriteModel};
use mongodb::{Client, Namespace};
use tokio::sync::OnceCell;

use crate::sink::mongo::connect;
use crate::sink::InsertError;

/// The wire version of MongoDB 8.0, the first with the `bulkWrite` command.
pub const BULK_WRITE_WIRE_VERSION: i32 = 25;
/// Most statement bytes put in one `update` command (the server's 16 MiB document limit, less
/// room for the command's own fields).
pub const UPDATE_COMMAND_BYTES: usize = 16 * 1024 * 1024 - 64 * 1024;
/// Most statements in one `update` command (the server's `maxWriteBatchSize`).
pub const UPDATE_COMMAND_STATEMENTS: usize = 100_000;

/// How upserts reach the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpsertMethod {
    /// Decide from the server's `maxWireVersion` on first use.
    Auto,
    /// `Client::bulk_write` (MongoDB 8.0+).
    BulkWrite,
    /// The `update` command with many statements (MongoDB 6.0/7.0).
    UpdateCommand,
}

/// Why a write was not acknowledged. The `String`s are for the log, never for the response.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Unreachable, timed out, not primary, authentication, write concern not satisfied.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The server refused a write (a `writeErrors` entry).
    #[error("write error: {0}")]
    Write(String),
    /// The connection string cannot work.
    #[error("configuration error: {0}")]
    Fatal(String),
}

impl StoreError {
    /// The short text for the response's `errorMessage`: no hosts, no driver internals.
    pub fn public_message(&self) -> &'static str {
        match self {
            StoreError::Unavailable(_) => "database unavailable; retry later",
            StoreError::Write(_) => "the database refused a write; retry later",
            StoreError::Fatal(_) => "endpoint misconfigured",
        }
    }
}

impl From<mongodb::error::Error> for StoreError {
    fn from(e: mongodb::error::Error) -> Self {
        use mongodb::error::ErrorKind;
        match *e.kind {
            ErrorKind::BulkWrite(ref b) if b.write_concern_errors.is_empty() => {
                let mut errors: Vec<_> = b.write_errors.iter().collect();
                errors.sort_by_key(|(i, _)| **i);
                match errors.first() {
                    Some((i, we)) => StoreError::Write(format!(
                        "{} write errors, first at {i}: {} (code {})",
                        errors.len(),
                        we.message,
                        we.code
                    )),
                    None => StoreError::Unavailable(e.to_string()),
                }
            }
            _ => match crate::sink::mongo::classify(e) {
                InsertError::Fatal(m) => StoreError::Fatal(m),
                InsertError::Unavailable(m) => StoreError::Unavailable(m),
            },
        }
    }
}

impl From<InsertError> for StoreError {
    fn from(e: InsertError) -> Self {
        match e {
            InsertError::Fatal(m) => StoreError::Fatal(m),
            InsertError::Unavailable(m) => StoreError::Unavailable(m),
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
}

impl Store {
    pub fn new(uri: &str, database: &str) -> Self {
        Store {
            uri: uri.to_owned(),
            database: database.to_owned(),
            method: UpsertMethod::Auto,
            client: OnceCell::new(),
            resolved: OnceCell::new(),
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

    async fn method(&self, client: &Client) -> Result<UpsertMethod, StoreError> {
        if self.method != UpsertMethod::Auto {
            return Ok(self.method);
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
    pub async fn upsert(&self, collection: &str, docs: Vec<Document>) -> Result<(), StoreError> {
        if docs.is_empty() {
            return Ok(());
        }
        let client = self.client().await?;
        let wc = client
            .write_concern()
            .cloned()
            .unwrap_or_else(WriteConcern::majority);
        match self.method(client).await? {
            UpsertMethod::BulkWrite | UpsertMethod::Auto => {
                let ns = Namespace::new(&self.database, collection);
                let models: Vec<WriteModel> = docs
                    .into_iter()
                    .map(|d| {
                        let id = d.get("_id").cloned().unwrap_or(Bson::Null);
                        ReplaceOneModel::builder()
                            .namespace(ns.clone())
                            .filter(doc! { "_id": id })
                            .replacement(d)
                            .upsert(true)
                            .build()
                            .into()
                    })
                    .collect();
                client
                    .bulk_write(models)
                    .ordered(true)
                    .write_concern(wc)
                    .await?;
                Ok(())
            }
            UpsertMethod::UpdateCommand => {
                let db = client.database(&self.database);
                let wc = bson::to_raw_document_buf(&wc)
                    .map_err(|e| StoreError::Fatal(format!("write concern: {e}")))?;
                for batch in update_batches(&docs)? {
                    let n = batch.len;
                    let cmd = rawdoc! {
                        "update": collection,
                        "updates": batch.statements,
                        "ordered": true,
                        "writeConcern": wc.clone(),
                    };
                    let reply = db.run_raw_command(cmd).await?;
                    check_update_reply(&reply, n)?;
                }
                Ok(())
            }
        }
    }
}

/// Statements of one `update` command.
pub struct UpdateBatch {
    pub statements: RawArrayBuf,
    pub len: usize,
}

/// `{q: {_id}, u: doc, upsert: true}` statements, cut into commands of at most
/// [`UPDATE_COMMAND_BYTES`] and [`UPDATE_COMMAND_STATEMENTS`].
pub fn update_batches(docs: &[Document]) -> Result<Vec<UpdateBatch>, StoreError> {
    let mut batches = Vec::new();
    let mut current = UpdateBatch {
        statements: RawArrayBuf::new(),
        len: 0,
    };
    let mut bytes = 0usize;
    for d in docs {
        let id = d.get("_id").cloned().unwrap_or(Bson::Null);
        let stmt = doc! { "q": { "_id": id }, "u": d, "upsert": true, "multi": false };
        let raw = RawDocumentBuf::from_document(&stmt)
            .map_err(|e| StoreError::Write(format!("cannot encode a document: {e}")))?;
        let size = raw.as_bytes().len() + 8;
        if current.len > 0
            && (bytes + size > UPDATE_COMMAND_BYTES || current.len == UPDATE_COMMAND_STATEMENTS)
        {
            batches.push(std::mem::replace(
                &mut current,
                UpdateBatch {
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

/// An `update` reply is a success only with `ok: 1`, no `writeErrors`, no `writeConcernError`,
/// and every statement counted (`n` = matched + upserted).
pub fn check_update_reply(reply: &Document, statements: usize) -> Result<(), StoreError> {
    let ok = match reply.get("ok") {
        Some(Bson::Double(f)) => *f == 1.0,
        Some(Bson::Int32(i)) => *i == 1,
        Some(Bson::Int64(i)) => *i == 1,
        _ => false,
    };
    if !ok {
        return Err(StoreError::Unavailable(format!(
            "update command failed: {}",
            reply.get_str("errmsg").unwrap_or("no errmsg")
        )));
    }
    if let Ok(errors) = reply.get_array("writeErrors") {
        if let Some(Bson::Document(first)) = errors.first() {
            return Err(StoreError::Write(format!(
                "{} write errors, first at {}: {} (code {})",
                errors.len(),
                first.get_i32("index").unwrap_or(-1),
                first.get_str("errmsg").unwrap_or(""),
                first.get_i32("code").unwrap_or(0)
            )));
        }
    }
    if let Ok(wce) = reply.get_document("writeConcernError") {
        return Err(StoreError::Unavailable(format!(
            "write concern not satisfied: {} (code {})",
            wce.get_str("errmsg").unwrap_or(""),
            wce.get_i32("code").unwrap_or(0)
        )));
    }
    let n = match reply.get("n") {
        Some(Bson::Int32(n)) => *n as i64,
        Some(Bson::Int64(n)) => *n,
        _ => -1,
    };
    if n != statements as i64 {
        return Err(StoreError::Unavailable(format!(
            "update command counted {n} of {statements} statements"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::oid::ObjectId;

    // A reply with writeErrors inside ok:1 is a failure (run_command does not raise it).
    #[test]
    fn write_errors_in_an_ok_reply_fail() {
        let reply = doc! { "ok": 1.0, "n": 1, "writeErrors": [ { "index": 1, "code": 11000, "errmsg": "dup" } ] };
        let e = check_update_reply(&reply, 2).unwrap_err();
        assert!(
            matches!(e, StoreError::Write(ref m) if m.contains("11000")),
            "{e}"
        );
    }

    // A write concern error, ok:0, or a short count are failures; a full count with ok:1 is success.
    #[test]
    fn update_reply_checks() {
        let wce =
            doc! { "ok": 1, "n": 2, "writeConcernError": { "code": 64, "errmsg": "timeout" } };
        assert!(matches!(
            check_update_reply(&wce, 2),
            Err(StoreError::Unavailable(_))
        ));
        let not_ok = doc! { "ok": 0.0, "errmsg": "not primary" };
        assert!(matches!(
            check_update_reply(&not_ok, 2),
            Err(StoreError::Unavailable(_))
        ));
        let short = doc! { "ok": 1.0, "n": 1 };
        assert!(check_update_reply(&short, 2).is_err());
        let good =
            doc! { "ok": 1.0, "n": 2, "nModified": 1, "upserted": [ { "index": 1, "_id": 1 } ] };
        assert!(check_update_reply(&good, 2).is_ok());
    }

    // Statements are cut into commands under the 16 MiB limit, in order, none lost.
    #[test]
    fn update_batches_respect_the_size_limit() {
        let big = "x".repeat(1024 * 1024);
        let docs: Vec<Document> = (0..40)
            .map(|i| doc! { "_id": ObjectId::new(), "i": i, "pad": &big })
            .collect();
        let batches = update_batches(&docs).unwrap();
        assert_eq!(batches.len(), 3);
        assert_eq!(batches.iter().map(|b| b.len).sum::<usize>(), 40);
        for b in &batches {
            assert!(b.statements.as_bytes().len() <= UPDATE_COMMAND_BYTES);
        }
        let first = batches[0].statements.get(0).unwrap().unwrap();
        let stmt = first.as_document().unwrap();
        assert!(stmt.get_bool("upsert").unwrap());
        assert_eq!(
            stmt.get_document("q").unwrap().get("_id").unwrap(),
            stmt.get_document("u").unwrap().get("_id").unwrap()
        );
    }

    // The public message never carries the internal detail.
    #[test]
    fn public_message_hides_internals() {
        let e = StoreError::Unavailable("Server selection timeout: 127.0.0.1:27017".into());
        assert!(!e.public_message().contains("127.0.0.1"));
    }
}
