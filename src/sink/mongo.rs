//! The MongoDB sink: unordered inserts of raw BSON reports, where a duplicate `_id`
//! counts as delivered (the agent makes every `_id`, so a duplicate is a retried insert).
//!
//! The client is created lazily and re-created after a failure to create it: with a
//! `mongodb+srv://` string the driver resolves DNS when the client is built, and a Pi that
//! boots without Wi-Fi must still start sampling.
//!
//! The driver runs on a runtime of its own, in a thread of its own, and that runtime runs only
//! while an insert is under way. Between inserts the driver's background work (its connection
//! pool's maintenance timer, which fires twice a second, and server monitoring) waits, so an
//! agent that inserts every couple of seconds is not woken in between by the driver: the
//! pending ticks and any heartbeat reply that arrived meanwhile are handled in the next insert's
//! turn. Without an insert for a while (a long window, a database that is down), the driver
//! still gets a short turn every few seconds, within its own timeouts.

use std::io::Write;
use std::time::Duration;

use mongodb::bson::{Document, RawDocument, RawDocumentBuf};
use mongodb::error::ErrorKind;
use mongodb::Database;

use super::{InsertError, InsertOutcome, Inserter};
use crate::mongo::{
    classify, connect_with, reply_count, reply_ok, write_concern_document, write_concern_error,
    DUPLICATE_KEY, TRANSIENT_WRITE_CODES,
};

/// Longest the driver's runtime is left without a turn: under its default 10 s connect timeout,
/// and over the default 5 s insert window, so an agent that inserts every window gives it no
/// extra wake-ups.
const IDLE_TURN: Duration = Duration::from_secs(8);

/// How often the driver checks on the server when the connection string does not say. The
/// driver's 10 s cost more bytes than the reports at 2 Hz; an agent notices an outage from its
/// own inserts, and the driver checks at once after a failed one.
pub const HEARTBEAT: Duration = Duration::from_secs(60);

/// `--wire-compression`: how messages to and from the server are compressed, when the server
/// agrees (Atlas does); a `compressors=` in the connection string wins.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum WireCompression {
    /// zlib (at its fastest level), which every MongoDB server since 3.6 offers.
    #[default]
    Zlib,
    /// Uncompressed.
    None,
}

/// zlib's level for `--wire-compression zlib`: the fastest. An insert window's reports repeat
/// the same field names and nearly the same values, so level 1 finds almost all that the
/// default level 6 finds, for much less CPU (docs/development.md). A connection string that
/// names `compressors=zlib` sets the level with `zlibCompressionLevel` (the driver ignores that
/// option without `compressors=`).
const ZLIB_LEVEL: u32 = 1;

/// The agent's driver settings, where the connection string names none: polled monitoring
/// every [`HEARTBEAT`] (no second monitoring connection) and the chosen compression.
fn tune(options: &mut mongodb::options::ClientOptions, compression: WireCompression) {
    use mongodb::options::{Compressor, ServerMonitoringMode};
    options.heartbeat_freq.get_or_insert(HEARTBEAT);
    options
        .server_monitoring_mode
        .get_or_insert(ServerMonitoringMode::Poll);
    if options.compressors.is_none() && compression == WireCompression::Zlib {
        options.compressors = Some(vec![Compressor::Zlib {
            level: Some(ZLIB_LEVEL),
        }]);
    }
}

/// Longest wait for one `insert_many` before it is treated as lost and retried.
pub const INSERT_TIMEOUT: Duration = Duration::from_secs(30);

/// Most bytes of reports in one `insert` command: the server takes commands of up to 16 MiB
/// plus a little, and a command has some bytes besides the documents.
pub const COMMAND_BYTES: usize = 15 * 1024 * 1024;

/// Inserts reports into one collection, through a driver that runs only while an insert is
/// under way (see the module docs).
pub struct MongoSink {
    jobs: std::sync::mpsc::Sender<Job>,
}

/// One insert for the driver's thread, and where its outcome goes.
struct Job {
    docs: Vec<Vec<u8>>,
    done: tokio::sync::oneshot::Sender<Result<InsertOutcome, InsertError>>,
}

impl MongoSink {
    /// A sink into `database.collection` on the server at `uri`; nothing is contacted until
    /// the first insert. Starts the driver's thread, which ends when the sink is dropped.
    pub fn new(uri: &str, database: &str, collection: &str, compression: WireCompression) -> Self {
        let mut driver = Driver {
            uri: uri.to_owned(),
            database: database.to_owned(),
            collection: collection.to_owned(),
            compression,
            target: None,
        };
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        let spawned = std::thread::Builder::new()
            .name("mongodb".into())
            .spawn(move || {
                // Made here: a runtime may not be dropped inside another, as it would be if
                // this thread could not start.
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                let runtime = match runtime {
                    Ok(r) => r,
                    Err(e) => {
                        let why = format!("cannot start the database driver's runtime: {e}");
                        for job in queue {
                            let _ = job.done.send(Err(InsertError::Fatal(why.clone())));
                        }
                        return;
                    }
                };
                // Blocks without running the runtime until the next insert comes, but gives the
                // driver a turn after IDLE_TURN without one: a reply that arrived meanwhile is
                // then read before its timeout (connectTimeoutMS, 10 s by default) has passed,
                // which the driver would otherwise also see as expired, and take the server
                // for down.
                loop {
                    match queue.recv_timeout(IDLE_TURN) {
                        Ok(job) => {
                            let outcome = runtime.block_on(driver.insert(&job.docs));
                            let _ = job.done.send(outcome);
                        }
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => idle_turn(&runtime),
                        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                    }
                }
                // The client's parts may hand work to the runtime as they drop.
                let _inside = runtime.enter();
                drop(driver);
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the database driver's thread");
        }
        MongoSink { jobs }
    }
}

/// A short turn for the driver's runtime between inserts: its due timers and any reply that
/// arrived meanwhile are handled. The timer is made inside the runtime: `tokio::time::sleep`
/// needs a runtime's context when it is called, and this thread has none outside `block_on`.
fn idle_turn(runtime: &tokio::runtime::Runtime) {
    runtime.block_on(async { tokio::time::sleep(Duration::from_millis(1)).await });
}

impl Inserter for MongoSink {
    async fn insert(&mut self, docs: &[Vec<u8>]) -> Result<InsertOutcome, InsertError> {
        let (done, outcome) = tokio::sync::oneshot::channel();
        let job = Job {
            docs: docs.to_vec(),
            done,
        };
        let gone = || InsertError::Fatal("the database driver's thread has stopped".into());
        self.jobs.send(job).map_err(|_| gone())?;
        outcome.await.map_err(|_| gone())?
    }
}

/// The driver's side: the client, made at the first insert.
///
/// Reports are already BSON (the spool holds them so), and they are sent as they are in an
/// `insert` command through `run_raw_command`: the driver's `insert_many` would re-serialise
/// every document through serde and inspect it for an `_id`, which cost more CPU than the rest
/// of a sample. `run_raw_command` applies no default write concern, so the client's (the
/// connection string's, or the durable one [`crate::mongo::make_durable`] puts in its place) is
/// added here, as `insert_many` would have sent it; and it does not
/// retry, which the delivery loop does (a retried report is a duplicate `_id`, counted as
/// delivered).
struct Driver {
    uri: String,
    database: String,
    collection: String,
    compression: WireCompression,
    target: Option<Target>,
}

#[derive(Clone)]
struct Target {
    db: Database,
    write_concern: Option<RawDocumentBuf>,
}

impl Driver {
    async fn target(&mut self) -> Result<Target, InsertError> {
        if let Some(t) = &self.target {
            return Ok(t.clone());
        }
        let compression = self.compression;
        let client = connect_with(&self.uri, "sensehat-monitor", |o| tune(o, compression)).await?;
        let t = Target {
            db: client.database(&self.database),
            write_concern: write_concern_document(client.write_concern())?,
        };
        self.target = Some(t.clone());
        Ok(t)
    }
}

/// A failed `insert` command, as [`classify`] says it, with what to do when the user may not
/// insert (mongod's Unauthorized, 13; Atlas's 8000): the agent keeps its reports and tries
/// again, so that a role granted on the server needs no restart.
fn refused_insert(e: mongodb::error::Error) -> InsertError {
    let unauthorized =
        matches!(*e.kind, ErrorKind::Command(ref c) if c.code == 13 || c.code == 8000);
    let said = classify(e);
    if unauthorized {
        InsertError::Unavailable(format!(
            "{said}: the connection string's user may not insert into this database; give it the readWrite role on it (on Atlas: Database Access)"
        ))
    } else {
        said.into()
    }
}

/// Read an `insert` reply into an outcome for `n` documents: a duplicate `_id` counts as
/// delivered; a write concern error, or a write error that says the server could not take the
/// write for now ([`TRANSIENT_WRITE_CODES`]: a failover, a shutdown), means "try again" (the
/// retry's duplicates are then counted as delivered); other write errors (a duplicate in
/// another unique index included) reject their document.
pub fn outcome_of_reply(n: usize, reply: &Document) -> Result<InsertOutcome, InsertError> {
    if !reply_ok(reply) {
        return Err(InsertError::Unavailable(format!(
            "insert command failed: {}",
            reply.get_str("errmsg").unwrap_or("no errmsg")
        )));
    }
    if let Some(e) = write_concern_error(reply) {
        return Err(InsertError::Unavailable(e));
    }
    let mut errors = Vec::new();
    for e in reply
        .get_array("writeErrors")
        .map_or(&[][..], |a| a.as_slice())
    {
        // A write error that names no document of this insert cannot say which report was
        // refused: none is taken as stored, the whole insert goes again.
        let named = e.as_document().and_then(|d| {
            let index = usize::try_from(reply_count(d, "index")).ok()?;
            (index < n).then(|| (index, reply_count(d, "code"), d))
        });
        let Some(named) = named else {
            return Err(InsertError::Unavailable(format!(
                "the server's reply has a write error that names no report of the insert ({e}); trying again"
            )));
        };
        errors.push(named);
    }
    // A failover between the server's sub-batches refuses the rest "for now": the whole batch
    // goes again, and what this try stored comes back as duplicates.
    if let Some((_, code, e)) = errors
        .iter()
        .find(|(_, code, _)| TRANSIENT_WRITE_CODES.iter().any(|&t| i64::from(t) == *code))
    {
        return Err(InsertError::Unavailable(format!(
            "the server could not take the insert for now: {} (code {code}); trying again",
            e.get_str("errmsg").unwrap_or("")
        )));
    }
    // Every report is either stored or has its write error; a reply that counts otherwise
    // cannot say which were stored, and the insert goes again.
    let stored = reply_count(reply, "n");
    if stored >= 0 && usize::try_from(stored).ok() != Some(n.saturating_sub(errors.len())) {
        return Err(InsertError::Unavailable(format!(
            "the server counted {stored} of {n} reports stored and {} refused; trying again",
            errors.len()
        )));
    }
    let mut out = InsertOutcome::default();
    for (index, code, e) in errors {
        if code == i64::from(DUPLICATE_KEY) && on_id(e) {
            out.duplicates += 1;
        } else {
            out.rejected.push((
                index,
                format!("{} (code {code})", e.get_str("errmsg").unwrap_or("")),
            ));
        }
    }
    out.inserted = (n as u64).saturating_sub(out.duplicates + out.rejected.len() as u64);
    Ok(out)
}

/// Whether a duplicate-key write error is about `_id` (a report already stored) rather than
/// another unique index the user made, which refuses the report for good. Servers since 4.2
/// say which index in `keyPattern`; without it, the message names the index.
fn on_id(error: &Document) -> bool {
    match error.get_document("keyPattern") {
        Ok(pattern) => pattern.len() == 1 && pattern.contains_key("_id"),
        Err(_) => !error
            .get_str("errmsg")
            .is_ok_and(|m| m.contains(" index: ") && !m.contains(" index: _id_ ")),
    }
}

/// The `insert` command for `docs` (BSON documents), as `rawdoc!` would build it
/// (`{insert, documents, ordered: false, writeConcern}`), written into one buffer of the right
/// size: building it through `RawArrayBuf` copied every report twice and grew the buffer by
/// doubling, which made glibc trim and regrow the heap on every insert.
pub fn insert_command(
    collection: &str,
    docs: &[&RawDocument],
    write_concern: Option<&RawDocument>,
) -> Result<RawDocumentBuf, InsertError> {
    fn element(out: &mut Vec<u8>, kind: u8, name: &str) {
        out.push(kind);
        out.extend_from_slice(name.as_bytes());
        out.push(0);
    }
    fn finish(out: &mut [u8], start: usize) {
        let len = i32::try_from(out.len() - start).unwrap_or(i32::MAX);
        out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    }
    let docs_bytes: usize = docs.iter().map(|d| d.as_bytes().len() + 8).sum();
    let mut out = Vec::with_capacity(
        collection.len() + docs_bytes + write_concern.map_or(0, |w| w.as_bytes().len()) + 64,
    );
    out.extend_from_slice(&[0; 4]);
    element(&mut out, 0x02, "insert");
    let name_len = i32::try_from(collection.len() + 1).unwrap_or(i32::MAX);
    out.extend_from_slice(&name_len.to_le_bytes());
    out.extend_from_slice(collection.as_bytes());
    out.push(0);
    element(&mut out, 0x04, "documents");
    let array = out.len();
    out.extend_from_slice(&[0; 4]);
    for (i, d) in docs.iter().enumerate() {
        out.push(0x03);
        // An array's element names are its indexes in decimal.
        let _ = write!(out, "{i}");
        out.push(0);
        out.extend_from_slice(d.as_bytes());
    }
    out.push(0);
    finish(&mut out, array);
    element(&mut out, 0x08, "ordered");
    out.push(0);
    if let Some(wc) = write_concern {
        element(&mut out, 0x03, "writeConcern");
        out.extend_from_slice(wc.as_bytes());
    }
    out.push(0);
    finish(&mut out, 0);
    RawDocumentBuf::from_bytes(out)
        .map_err(|e| InsertError::Fatal(format!("cannot build the insert command: {e}")))
}

impl Driver {
    async fn insert(&mut self, docs: &[Vec<u8>]) -> Result<InsertOutcome, InsertError> {
        // Reports were checksummed in the spool, so a payload that is not BSON cannot happen;
        // if it did, it is rejected alone and never blocks the rest.
        let mut out = InsertOutcome::default();
        let mut start = 0;
        while start < docs.len() {
            let chunk_start = start;
            let mut documents = Vec::new();
            let mut index = Vec::new();
            let mut bytes = 0;
            let mut end = start;
            while end < docs.len()
                && (documents.is_empty() || bytes + docs[end].len() <= COMMAND_BYTES)
            {
                match RawDocument::from_bytes(&docs[end]) {
                    Ok(r) => {
                        bytes += docs[end].len();
                        documents.push(r);
                        index.push(end);
                    }
                    Err(e) => out
                        .rejected
                        .push((end, format!("not a BSON document: {e}"))),
                }
                end += 1;
            }
            start = end;
            if documents.is_empty() {
                continue;
            }
            let t = self.target().await?;
            let cmd = insert_command(&self.collection, &documents, t.write_concern.as_deref())?;
            // The driver has no socket timeout by default: a connection that died with the
            // Wi-Fi could hang an insert for many minutes. Give up and retry instead (the
            // duplicate-key rule makes the retry safe).
            let reply = match tokio::time::timeout(INSERT_TIMEOUT, t.db.run_raw_command(cmd)).await
            {
                Ok(reply) => reply.map_err(refused_insert)?,
                Err(_) => {
                    return Err(InsertError::TimedOut(format!(
                        "insert not acknowledged within {} s: the link may be too slow or down, or (a self-run replica set) a majority of its members may not be up to confirm it",
                        INSERT_TIMEOUT.as_secs()
                    )))
                }
            };
            let part = outcome_of_reply(documents.len(), &reply)?;
            out.inserted += part.inserted;
            out.duplicates += part.duplicates;
            out.rejected.extend(
                part.rejected
                    .into_iter()
                    .map(|(i, why)| (index.get(i).copied().unwrap_or(chunk_start), why)),
            );
        }
        out.rejected.sort_by_key(|r| r.0);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::{doc, Bson};

    // The idle turn runs on the driver's own thread, outside any runtime's context. It used to
    // make its timer there, which panics, and the release build aborts: the agent died whenever
    // IDLE_TURN passed without an insert (a database down long enough for the back-off to pass
    // it). Found by scripts/soak.sh.
    #[test]
    fn the_idle_turn_runs_outside_a_runtime_context() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        idle_turn(&runtime);
    }

    fn dup(index: i32, pattern: Option<Document>, msg: &str) -> Document {
        let mut e = doc! { "index": index, "code": crate::mongo::DUPLICATE_KEY, "errmsg": msg };
        if let Some(p) = pattern {
            e.insert("keyPattern", p);
        }
        e
    }

    // The command written by hand is byte for byte the one rawdoc! builds.
    #[test]
    fn insert_command_matches_rawdoc() {
        use mongodb::bson::{rawdoc, RawArrayBuf};
        let docs: Vec<RawDocumentBuf> = (0..12)
            .map(|i| rawdoc! { "_id": i, "nodeName": format!("pi-{i}"), "v": 0.5 * f64::from(i) })
            .collect();
        let refs: Vec<&RawDocument> = docs.iter().map(|d| d.as_ref()).collect();
        let wc = rawdoc! { "w": "majority", "wtimeout": 5000 };
        for (wc, n) in [(None, 12), (Some(wc.as_ref()), 12), (None, 0), (None, 1)] {
            let mut expected = rawdoc! {
                "insert": "reports",
                "documents": docs[..n].iter().cloned().collect::<RawArrayBuf>(),
                "ordered": false,
            };
            if let Some(w) = wc {
                expected.append("writeConcern", w.to_raw_document_buf());
            }
            let built = insert_command("reports", &refs[..n], wc).unwrap();
            assert_eq!(
                built.as_bytes(),
                expected.as_bytes(),
                "{n} documents, {wc:?}"
            );
        }
    }

    // A reply of another shape than MongoDB's, from a compatible server or a proxy: integers
    // of another type are read as such; a write error that names no report of the insert (not
    // a document, its index missing or past the reports), or counts that do not add up, make
    // the insert go again rather than take a refused report for stored or blame another.
    #[test]
    fn odd_replies_are_read_or_retried() {
        let wide = doc! {
            "n": 2_i64, "ok": 1_i64,
            "writeErrors": [{ "index": 1_i64, "code": 121.0, "errmsg": "Document failed validation" }],
        };
        let out = outcome_of_reply(3, &wide).unwrap();
        assert_eq!((out.inserted, out.rejected.len()), (2, 1));
        assert_eq!(out.rejected[0].0, 1);
        let transient =
            doc! { "n": 2, "ok": 1, "writeErrors": [{ "index": 2_i64, "code": 10107_i64 }] };
        assert!(matches!(
            outcome_of_reply(3, &transient),
            Err(InsertError::Unavailable(_))
        ));
        for errors in [
            vec![Bson::String("Document failed validation".into())],
            vec![Bson::Document(doc! { "code": 121 })],
            vec![Bson::Document(doc! { "index": 3, "code": 121 })],
            vec![Bson::Document(doc! { "index": -1, "code": 121 })],
        ] {
            let reply = doc! { "n": 2, "ok": 1, "writeErrors": errors };
            let err = outcome_of_reply(3, &reply).unwrap_err();
            assert!(
                matches!(&err, InsertError::Unavailable(m) if m.contains("names no report")),
                "{reply}: {err}"
            );
        }
        let short = doc! { "n": 1, "ok": 1, "writeErrors": [{ "index": 0, "code": 121 }] };
        let err = outcome_of_reply(3, &short).unwrap_err();
        assert!(
            matches!(&err, InsertError::Unavailable(m) if m.contains("counted 1 of 3")),
            "{err}"
        );
        // A server that leaves the count out is taken at its write errors.
        let uncounted = doc! { "ok": 1, "writeErrors": [{ "index": 0, "code": 121 }] };
        assert_eq!(outcome_of_reply(3, &uncounted).unwrap().inserted, 2);
    }

    // A duplicate _id is a report already stored; a duplicate in another unique index, or any
    // other write error, refuses that report; a write concern error, a write error of a
    // failover, or ok: 0 means "retry".
    #[test]
    fn replies_are_read_into_outcomes() {
        let reply = doc! {
            "n": 3, "ok": 1.0,
            "writeErrors": [
                dup(0, Some(doc! { "_id": 1 }), "E11000 duplicate key error collection: m.r index: _id_ dup key: { _id: 1 }"),
                dup(2, Some(doc! { "nodeName": 1 }), "E11000 duplicate key error collection: m.r index: nodeName_1 dup key"),
                dup(3, None, "E11000 duplicate key error collection: m.r index: _id_ dup key: { _id: 3 }"),
                dup(4, None, "E11000 duplicate key error collection: m.r index: serial_1 dup key"),
                { "index": 5, "code": 121, "errmsg": "Document failed validation" },
            ],
        };
        let out = outcome_of_reply(8, &reply).unwrap();
        assert_eq!(out.duplicates, 2);
        assert_eq!(
            out.rejected.iter().map(|r| r.0).collect::<Vec<_>>(),
            vec![2, 4, 5]
        );
        assert!(out.rejected[2].1.contains("(code 121)"));
        assert_eq!(out.inserted, 3);

        let wce = doc! { "n": 8, "ok": 1, "writeConcernError": { "code": 64, "errmsg": "waiting for replication timed out" } };
        let err = outcome_of_reply(8, &wce).unwrap_err();
        assert!(
            matches!(&err, InsertError::Unavailable(m) if m.contains("timed out")),
            "{err}"
        );
        let failed = doc! { "ok": 0.0, "errmsg": "not primary" };
        assert!(
            matches!(outcome_of_reply(1, &failed), Err(InsertError::Unavailable(m)) if m.contains("not primary"))
        );
        // A primary stepping down between the server's sub-batches: the rest is not refused
        // for good, whatever else the reply holds.
        for code in [10107, 189, 91, 11602, 13436, 133, 16500] {
            let stepdown = doc! {
                "n": 1, "ok": 1.0,
                "writeErrors": [
                    { "index": 1, "code": 121, "errmsg": "Document failed validation" },
                    { "index": 2, "code": code, "errmsg": "not primary" },
                ],
            };
            let err = outcome_of_reply(3, &stepdown).unwrap_err();
            assert!(
                matches!(&err, InsertError::Unavailable(m) if m.contains(&format!("(code {code})"))),
                "{err}"
            );
        }
        assert_eq!(
            outcome_of_reply(3, &doc! { "n": 3, "ok": 1 }).unwrap(),
            InsertOutcome {
                inserted: 3,
                ..Default::default()
            }
        );
    }
}
