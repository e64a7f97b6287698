//! The MongoDB sink: unordered inserts of raw BSON reports, where a duplicate `_id`
//! counts as delivered (the agent makes every `_id`, so a duplicate is a retried insert).
//!
//! The client is created lazily and re-created after a failure to create it: with a
//! `mongodb+srv://` string the driver resolves DNS when the client is built, and a Pi that
//! boots without Wi-Fi must still start sampling.

use std::io::Write;
use std::time::Duration;

use mongodb::bson::{self, Bson, Document, RawDocument, RawDocumentBuf};
use mongodb::error::{Error, ErrorKind};
use mongodb::options::{ClientOptions, WriteConcern};
use mongodb::{Client, Database};

use super::{InsertError, InsertOutcome, Inserter};

/// Longest wait for one `insert_many` before it is treated as lost and retried.
pub const INSERT_TIMEOUT: Duration = Duration::from_secs(30);

/// Code of a duplicate-key write error.
pub const DUPLICATE_KEY: i32 = 11000;

/// Build a client: rustls TLS, SRV lookup, and short selection timeouts so an outage is
/// noticed in seconds rather than the driver's default 30.
pub async fn connect(uri: &str, app_name: &str) -> Result<Client, InsertError> {
    let refused = |e: Error| match classify(e) {
        InsertError::Fatal(m) => InsertError::Fatal(redact_credentials(&m, uri)),
        InsertError::Unavailable(m) => InsertError::Unavailable(redact_credentials(&m, uri)),
    };
    let mut options = ClientOptions::parse(uri).await.map_err(refused)?;
    options.app_name.get_or_insert_with(|| app_name.to_owned());
    options
        .server_selection_timeout
        .get_or_insert(Duration::from_secs(10));
    options
        .connect_timeout
        .get_or_insert(Duration::from_secs(10));
    Client::with_options(options).map_err(refused)
}

/// `message` with every piece of the connection string's user name and password replaced by
/// `<redacted>`. A string the driver cannot parse (a password with an unencoded `?` or `#`, say)
/// makes it quote the pieces it split, password included; such a message goes to the log.
/// Pieces shorter than three characters are left: they would blank out ordinary words.
pub fn redact_credentials(message: &str, uri: &str) -> String {
    let Some((_, rest)) = uri.split_once("://") else {
        return message.to_owned();
    };
    let Some(at) = rest.rfind('@') else {
        return message.to_owned();
    };
    let userinfo = &rest[..at];
    let mut pieces: Vec<&str> = userinfo
        .split([':', '?', '&', '/', '#', '=', '[', ']', ',', ';'])
        .chain([userinfo])
        .filter(|p| p.len() >= 3)
        .collect();
    pieces.sort_by_key(|p| std::cmp::Reverse(p.len()));
    let mut out = message.to_owned();
    for p in pieces {
        out = out.replace(p, "<redacted>");
    }
    out
}

/// Check a connection string's syntax and options without contacting anything, so a string
/// that can never work is refused at start, not found out by the delivery task while readings
/// pile up. A `mongodb+srv://` string's options are checked only as far as its text goes: the
/// rest comes from DNS, which may not answer yet at boot.
pub async fn check_uri(uri: &str) -> Result<(), String> {
    let message = |e: Error| match classify(e) {
        InsertError::Fatal(m) | InsertError::Unavailable(m) => redact_credentials(&m, uri),
    };
    let parsed = mongodb::options::ConnectionString::parse(uri).map_err(message)?;
    if !uri.trim_start().starts_with("mongodb+srv://") {
        // Without SRV this makes the client's options from the text alone and checks them
        // together (for example w=0 with journal=true), as connecting would.
        ClientOptions::parse(parsed).await.map_err(message)?;
    }
    Ok(())
}

/// What to add to the driver's account of a connection string it refused.
fn uri_hint(message: &str) -> &'static str {
    if message.contains("URL encoded") {
        "; a user name or password with any of : / ? # [ ] @ % must have them percent-encoded (@ as %40, : as %3A, / as %2F, ? as %3F, # as %23, % as %25)"
    } else if message.contains("scheme")
        || message.contains("host")
        || message.contains("server address")
        || message.contains("key=value")
    {
        "; it should look like mongodb+srv://USER:PASSWORD@cluster0.example.mongodb.net/ (Atlas) or mongodb://HOST:27017/, and a user name or password with any of : / ? # [ ] @ % must have them percent-encoded (? as %3F, # as %23, @ as %40)"
    } else {
        ""
    }
}

/// Sort a driver error into "try again" or "never works", without internals a user needn't see.
pub fn classify(e: Error) -> InsertError {
    match *e.kind {
        ErrorKind::InvalidArgument { ref message, .. } => {
            InsertError::Fatal(format!(
                "invalid MongoDB connection string or option: {message}{}",
                uri_hint(message)
            ))
        }
        ErrorKind::Authentication { ref message, .. } => InsertError::Unavailable(format!(
            "authentication failed ({message}): check the user name and password in MONGODB_CONNECTION_STRING"
        )),
        ErrorKind::DnsResolve { ref message, .. } => {
            InsertError::Unavailable(format!("DNS lookup failed: {message}"))
        }
        ErrorKind::ServerSelection { ref message, .. } => InsertError::Unavailable(format!(
            "{} ({message})",
            server_selection_hint(message)
        )),
        _ => InsertError::Unavailable(e.to_string()),
    }
}

/// What to check when no server could be reached, from the driver's account of each server
/// (its message lists every server's last error; the driver's error kinds say no more).
pub fn server_selection_hint(message: &str) -> &'static str {
    if message.contains("Connection refused") {
        "no MongoDB server accepts connections at that address: check the host and port in the connection string, and that the server runs"
    } else if message.contains("certificate") || message.contains("InvalidCertificate") {
        "the server's TLS certificate was not accepted: check the host name in the connection string (and the system clock)"
    } else {
        "no MongoDB server answered: check the network, and on Atlas that this machine's public IP address is in the project's IP Access List (Security > Network Access)"
    }
}

/// Most bytes of reports in one `insert` command: the server takes commands of up to 16 MiB
/// plus a little, and a command has some bytes besides the documents.
pub const COMMAND_BYTES: usize = 15 * 1024 * 1024;

/// Inserts reports into one collection.
///
/// Reports are already BSON (the spool holds them so), and they are sent as they are in an
/// `insert` command through `run_raw_command`: the driver's `insert_many` would re-serialise
/// every document through serde and inspect it for an `_id`, which cost more CPU than the rest
/// of a sample. `run_raw_command` applies no default write concern, so the connection string's
/// `w`, if it has one, is added here, as `insert_many` would have sent it; and it does not
/// retry, which the delivery loop does (a retried report is a duplicate `_id`, counted as
/// delivered).
pub struct MongoSink {
    uri: String,
    database: String,
    collection: String,
    target: Option<Target>,
}

#[derive(Clone)]
struct Target {
    db: Database,
    write_concern: Option<RawDocumentBuf>,
}

impl MongoSink {
    pub fn new(uri: &str, database: &str, collection: &str) -> Self {
        MongoSink {
            uri: uri.to_owned(),
            database: database.to_owned(),
            collection: collection.to_owned(),
            target: None,
        }
    }

    async fn target(&mut self) -> Result<Target, InsertError> {
        if let Some(t) = &self.target {
            return Ok(t.clone());
        }
        let client = connect(&self.uri, "sensehat-monitor").await?;
        let t = Target {
            db: client.database(&self.database),
            write_concern: write_concern_document(client.write_concern())?,
        };
        self.target = Some(t.clone());
        Ok(t)
    }
}

/// The connection string's write concern (`w`, `journal`, `wtimeoutMS`) as the document an
/// `insert` command carries; `None` when it sets none (the server's default applies, as with
/// `insert_many`).
pub fn write_concern_document(
    wc: Option<&WriteConcern>,
) -> Result<Option<RawDocumentBuf>, InsertError> {
    match wc {
        Some(wc) if wc.w.is_some() || wc.journal.is_some() || wc.w_timeout.is_some() => {
            bson::to_raw_document_buf(wc).map(Some).map_err(|e| {
                InsertError::Fatal(format!(
                    "invalid write concern in the connection string: {e}"
                ))
            })
        }
        _ => Ok(None),
    }
}

/// A command reply's `ok` is 1 (servers send a double, some an integer).
pub fn reply_ok(reply: &Document) -> bool {
    match reply.get("ok") {
        Some(Bson::Double(f)) => *f == 1.0,
        Some(Bson::Int32(i)) => *i == 1,
        Some(Bson::Int64(i)) => *i == 1,
        _ => false,
    }
}

/// A write command's `writeConcernError`, in words, if the reply has one: the writes were
/// made but not confirmed as asked, so the batch is retried.
pub fn write_concern_error(reply: &Document) -> Option<String> {
    let wce = reply.get_document("writeConcernError").ok()?;
    Some(format!(
        "write concern not satisfied: {} (code {})",
        wce.get_str("errmsg").unwrap_or(""),
        wce.get_i32("code").unwrap_or(0)
    ))
}

/// Read an `insert` reply into an outcome for `n` documents: a duplicate `_id` counts as
/// delivered, other write errors (a duplicate in another unique index included) reject their
/// document, a write concern error means "try
/// again" (the retry's duplicates are then counted as delivered).
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
    let mut out = InsertOutcome::default();
    if let Ok(errors) = reply.get_array("writeErrors") {
        for e in errors.iter().filter_map(Bson::as_document) {
            let code = e.get_i32("code").unwrap_or(0);
            if code == DUPLICATE_KEY && on_id(e) {
                out.duplicates += 1;
            } else {
                let index = e.get_i32("index").map_or(usize::MAX, |i| i as usize);
                out.rejected.push((
                    index,
                    format!("{} (code {code})", e.get_str("errmsg").unwrap_or("")),
                ));
            }
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

impl Inserter for MongoSink {
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
                Ok(reply) => reply.map_err(classify)?,
                Err(_) => {
                    return Err(InsertError::Unavailable(format!(
                        "insert not acknowledged within {} s",
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
    use mongodb::bson::doc;

    // A password with an unencoded '?' or '#' makes the driver quote pieces of it; the message
    // that reaches the log has none of them, and says how to encode the character.
    #[tokio::test]
    async fn a_refused_connection_string_never_shows_the_password() {
        for (uri, secrets) in [
            (
                "mongodb+srv://pi:hunter2?xyzzy@cluster0.example.net/",
                &["hunter2", "xyzzy"][..],
            ),
            (
                "mongodb://pi:s3cret?plugh@db.example.net/",
                &["s3cret", "plugh"],
            ),
            (
                "mongodb://pi:open#sesame@db.example.net/",
                &["open", "sesame"],
            ),
        ] {
            let err = check_uri(uri).await.expect_err(uri);
            for s in secrets {
                assert!(!err.contains(s), "{uri}: {err}");
            }
            let err = match connect(uri, "test").await {
                Ok(_) => panic!("{uri} was accepted"),
                Err(InsertError::Fatal(m) | InsertError::Unavailable(m)) => m,
            };
            for s in secrets {
                assert!(!err.contains(s), "{uri}: {err}");
            }
        }
        assert_eq!(
            redact_credentials("got abc and abcdef", "mongodb://u:abcdef@h/"),
            "got abc and <redacted>"
        );
    }

    fn dup(index: i32, pattern: Option<Document>, msg: &str) -> Document {
        let mut e = doc! { "index": index, "code": DUPLICATE_KEY, "errmsg": msg };
        if let Some(p) = pattern {
            e.insert("keyPattern", p);
        }
        e
    }

    // A duplicate _id is a report already stored; a duplicate in another unique index, or any
    // other write error, refuses that report; a write concern error or ok: 0 means "retry".
    // The connection string's write concern is sent under the names the server reads.
    #[tokio::test]
    async fn write_concern_comes_from_the_connection_string() {
        async fn wc(uri: &str) -> Option<Document> {
            let o = ClientOptions::parse(uri).await.unwrap();
            write_concern_document(o.write_concern.as_ref())
                .unwrap()
                .map(|d| d.to_document().unwrap())
        }
        assert_eq!(wc("mongodb://h/").await, None);
        assert_eq!(
            wc("mongodb://h/?w=majority&journal=true&wtimeoutMS=5000").await,
            Some(doc! { "w": "majority", "wtimeout": 5000, "j": true })
        );
        assert_eq!(wc("mongodb://h/?w=2").await, Some(doc! { "w": 2 }));
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

    #[test]
    fn replies_are_read_into_outcomes() {
        let reply = doc! {
            "n": 2, "ok": 1.0,
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
        assert_eq!(
            outcome_of_reply(3, &doc! { "n": 3, "ok": 1 }).unwrap(),
            InsertOutcome {
                inserted: 3,
                ..Default::default()
            }
        );
    }

    #[test]
    fn unreachable_servers_get_a_hint_of_what_to_check() {
        let refused = "Server selection timeout: No available servers. Topology: { Type: Unknown, Servers: [ { Address: 127.0.0.1:1, Type: Unknown, Error: Kind: I/O error: Connection refused (os error 111) } ] }";
        assert!(server_selection_hint(refused).contains("host and port"));
        let silent = "Server selection timeout: No available servers. Topology: { Type: ReplicaSetNoPrimary, Servers: [ { Address: ac-x-shard-00-00.abc.mongodb.net:27017, Type: Unknown, Error: Kind: I/O error: connection closed } ] }";
        assert!(server_selection_hint(silent).contains("IP Access List"));
        let cert = "Server selection timeout: ... Error: Kind: I/O error: invalid peer certificate: NotValidForName";
        assert!(server_selection_hint(cert).contains("TLS certificate"));
    }
}
