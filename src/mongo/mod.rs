//! What the agent, the Firehose endpoint and the forwarder share about MongoDB: building a
//! client, checking and redacting connection strings, sorting driver errors into "try again"
//! and "never works" ([`MongoError`]), duplicate keys, and reading command replies; and, in
//! `names`, which database and collection names the server takes.

mod names;
pub use names::{collection_name, database_name, namespace, COLLECTION_NAME_MAX, NAMESPACE_MAX};

use std::time::Duration;

use mongodb::bson::{self, Bson, Document, RawDocumentBuf};
use mongodb::error::{Error, ErrorKind, WriteFailure};
use mongodb::options::{Acknowledgment, ClientOptions, WriteConcern};
use mongodb::Client;

/// A MongoDB failure, sorted by what the caller should do about it. The message is for the log:
/// it never holds the connection string's user name or password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MongoError {
    /// The database is unreachable or unwilling right now (DNS, refused, timeout, failover,
    /// authentication, write concern): keep the data and try again later.
    #[error("{0}")]
    Unavailable(String),
    /// The configuration can never work (for example a malformed connection string).
    #[error("{0}")]
    Fatal(String),
}

/// Code of a duplicate-key write error.
pub const DUPLICATE_KEY: i32 = 11000;

/// Server error codes retrying cannot help with: Unauthorized (13, the user lacks a privilege
/// such as `changeStream` or `find`), AuthenticationFailed (18), InvalidNamespace (73, a
/// collection name the server refuses), Atlas's refusal of an action (8000), and change
/// streams asked of a server that is not a replica set (40573).
pub const FATAL_CODES: [i32; 5] = [13, 18, 73, 8000, 40573];
/// The code of a change stream asked of a standalone server.
pub const NOT_A_REPLICA_SET: i32 = 40573;

/// Build a client: rustls TLS, SRV lookup, and short selection timeouts so an outage is
/// noticed in seconds rather than the driver's default 30.
pub async fn connect(uri: &str, app_name: &str) -> Result<Client, MongoError> {
    connect_with(uri, app_name, |_| {}).await
}

/// [`connect`], with `tune` applied to the options the connection string gave before the
/// client is built (what the string names is in them already, for `tune` to honour).
pub async fn connect_with(
    uri: &str,
    app_name: &str,
    tune: impl FnOnce(&mut ClientOptions),
) -> Result<Client, MongoError> {
    let refused = |e: Error| match classify(e) {
        MongoError::Fatal(m) => MongoError::Fatal(redact_credentials(&m, uri)),
        MongoError::Unavailable(m) => MongoError::Unavailable(redact_credentials(&m, uri)),
    };
    check_escapes(uri).map_err(MongoError::Fatal)?;
    let mut options = ClientOptions::parse(uri).await.map_err(refused)?;
    options.app_name.get_or_insert_with(|| app_name.to_owned());
    if let Some(risk) = make_durable(&mut options.write_concern) {
        static SAID: std::sync::Once = std::sync::Once::new();
        SAID.call_once(|| tracing::warn!("{risk}"));
    }
    options
        .server_selection_timeout
        .get_or_insert(Duration::from_secs(10));
    options
        .connect_timeout
        .get_or_insert(Duration::from_secs(10));
    tune(&mut options);
    Client::with_options(options).map_err(refused)
}

/// The write concern asked for when the connection string names none: acknowledged only once the
/// write is durable. On a replica set (Atlas), `w: "majority"` waits for a majority of members,
/// each with the write in its on-disk journal; on a standalone server it waits for the journal.
/// `j: true` says the same for servers whose majority default does not journal. A server's
/// own default (`w: 1`, no journal, on a self-run standalone) acknowledges writes a crash of the
/// server can still take, after the agent has deleted them from its spool.
pub fn durable_write_concern() -> WriteConcern {
    WriteConcern::builder()
        .w(Acknowledgment::Majority)
        .journal(true)
        .build()
}

/// Put [`durable_write_concern`] where the connection string named no `w` and no `journal`
/// (keeping its `wtimeoutMS`). A write concern it names is honoured; when that one can
/// acknowledge a write that is not yet durable, the sentence to log, once, is returned.
pub fn make_durable(wc: &mut Option<WriteConcern>) -> Option<String> {
    let named = wc.as_ref().filter(|w| w.w.is_some() || w.journal.is_some());
    let Some(named) = named else {
        let timeout = wc.as_ref().and_then(|w| w.w_timeout);
        let mut durable = durable_write_concern();
        durable.w_timeout = timeout;
        *wc = Some(durable);
        return None;
    };
    let journaled = match (&named.w, named.journal) {
        (_, Some(j)) => j,
        // A majority is journaled by default; w: 0, 1 or none is not.
        (Some(Acknowledgment::Majority), None) => true,
        (Some(Acknowledgment::Nodes(n)), None) => *n >= 2,
        (_, None) => false,
    };
    let unacknowledged = matches!(named.w, Some(Acknowledgment::Nodes(0)));
    (unacknowledged || !journaled).then(|| {
        "the connection string's write concern lets the server acknowledge writes that are not yet in its journal; a crash of the server can then lose what was already acknowledged (readings deleted from the agent's spool, records answered 200 to Firehose, the forwarder's position); leave w and journal out of the connection string for a durable default, or add journal=true".to_owned()
    })
}

/// `message` with every piece of the connection string's user name and password replaced by
/// `<redacted>`. A string the driver cannot parse (a password with an unencoded `?` or `#`, say)
/// makes it quote the pieces it split, password included; such a message goes to the log.
/// Pieces shorter than three characters are left: they would blank out ordinary words.
pub fn redact_credentials(message: &str, uri: &str) -> String {
    let pieces = secret_pieces(uri);
    if pieces.is_empty() {
        return message.to_owned();
    }
    // The driver may quote a piece lower-cased (as an option name): match without case. ASCII
    // lower-casing keeps every byte where it was, so a match's range is the message's too.
    let hay = message.to_ascii_lowercase();
    let mut ranges = Vec::new();
    for piece in &pieces {
        for needle in [piece.to_ascii_lowercase(), piece.to_lowercase()] {
            let mut from = 0;
            while let Some(i) = hay[from..].find(&needle) {
                let start = from + i;
                ranges.push((start, start + needle.len()));
                from = start + hay[start..].chars().next().map_or(1, char::len_utf8);
            }
        }
    }
    ranges.sort_unstable();
    let mut merged: Vec<(usize, usize)> = Vec::new();
    for (start, end) in ranges {
        match merged.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    let mut out = String::with_capacity(message.len());
    let mut done = 0;
    for (start, end) in merged {
        out.push_str(&message[done..start]);
        out.push_str("<redacted>");
        done = end;
    }
    out.push_str(&message[done..]);
    out
}

/// Every `%` of a connection string starts a `%XX` escape. The driver checks this only as far as
/// it does not panic: a `%` followed by a non-ASCII character made it slice inside the character
/// (found by fuzzing), which would end the process at every start.
fn check_escapes(uri: &str) -> Result<(), String> {
    let b = uri.as_bytes();
    let bad = b.iter().enumerate().any(|(i, c)| {
        *c == b'%'
            && !(b.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
    });
    if bad {
        Err("invalid MongoDB connection string: every % must start a percent-encoded character (%XX); write % itself as %25".to_owned())
    } else {
        Ok(())
    }
}

/// What of a connection string's user information must never be shown: the whole of it, the
/// user name and password (split at `:`), and the pieces the driver splits it into when it
/// cannot parse it, each as written and percent-decoded, if at least three characters long.
fn secret_pieces(uri: &str) -> Vec<String> {
    let Some((_, rest)) = uri.split_once("://") else {
        return Vec::new();
    };
    let Some(at) = rest.rfind('@') else {
        return Vec::new();
    };
    let userinfo = &rest[..at];
    let mut pieces: Vec<String> = userinfo
        .split([':', '?', '&', '/', '#', '=', '[', ']', ',', ';'])
        .chain(userinfo.split(':'))
        .chain([userinfo])
        .flat_map(|p| [p.to_owned(), percent_decoded(p)])
        .filter(|p| p.chars().count() >= 3)
        .collect();
    pieces.sort_unstable();
    pieces.dedup();
    pieces
}

/// `%XX` escapes decoded, the rest as it is (invalid UTF-8 replaced).
fn percent_decoded(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = s
            .get(i + 1..i + 3)
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Check a connection string's syntax and options without contacting anything, so a string
/// that can never work is refused at start, not found out by the delivery task while readings
/// pile up. A `mongodb+srv://` string's options are checked only as far as its text goes: the
/// rest comes from DNS, which may not answer yet at boot.
pub async fn check_uri(uri: &str) -> Result<(), String> {
    check_escapes(uri)?;
    let message = |e: Error| match classify(e) {
        MongoError::Fatal(m) | MongoError::Unavailable(m) => redact_credentials(&m, uri),
    };
    let parsed = mongodb::options::ConnectionString::parse(uri).map_err(message)?;
    if let Some(mongodb::options::Tls::Enabled(tls)) = &parsed.tls {
        check_tls_files(tls)?;
    }
    if !uri.trim_start().starts_with("mongodb+srv://") {
        // Without SRV this makes the client's options from the text alone and checks them
        // together (for example w=0 with journal=true), as connecting would.
        ClientOptions::parse(parsed).await.map_err(message)?;
    }
    Ok(())
}

/// The files a connection string's `tlsCAFile` and `tlsCertificateKeyFile` name must be
/// readable: the driver reads them only when it connects, and would fail every insert.
fn check_tls_files(tls: &mongodb::options::TlsOptions) -> Result<(), String> {
    let named = [
        ("tlsCAFile", &tls.ca_file_path),
        ("tlsCertificateKeyFile", &tls.cert_key_file_path),
    ];
    for (option, path) in named {
        if let Some(path) = path {
            std::fs::File::open(path)
                .map_err(|e| format!("cannot read {option} {}: {e}", path.display()))?;
        }
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
pub fn classify(e: Error) -> MongoError {
    match *e.kind {
        ErrorKind::InvalidArgument { ref message, .. } => {
            MongoError::Fatal(format!(
                "invalid MongoDB connection string or option: {message}{}",
                uri_hint(message)
            ))
        }
        ErrorKind::Authentication { ref message, .. } => MongoError::Unavailable(format!(
            "authentication failed ({message}): check the user name and password in MONGODB_CONNECTION_STRING"
        )),
        ErrorKind::DnsResolve { ref message, .. } => {
            MongoError::Unavailable(format!("DNS lookup failed: {message}"))
        }
        ErrorKind::ServerSelection { ref message, .. } => MongoError::Unavailable(format!(
            "{} ({message})",
            server_selection_hint(message)
        )),
        _ => MongoError::Unavailable(describe(&e)),
    }
}

/// A driver error as an operator reads it: what went wrong, in the driver's words and the
/// server's (a refused command's code, name and message), without the driver's fields for
/// debugging it (its labels, the error it wraps, and the server's whole reply as hex bytes,
/// which made a log line hundreds of characters long).
pub fn describe(e: &Error) -> String {
    e.kind.to_string()
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

/// The connection string's write concern (`w`, `journal`, `wtimeoutMS`) as the document an
/// `insert` command carries; `None` when it sets none (the server's default applies, as with
/// `insert_many`).
pub fn write_concern_document(
    wc: Option<&WriteConcern>,
) -> Result<Option<RawDocumentBuf>, MongoError> {
    match wc {
        Some(wc) if wc.w.is_some() || wc.journal.is_some() || wc.w_timeout.is_some() => {
            bson::to_raw_document_buf(wc).map(Some).map_err(|e| {
                MongoError::Fatal(format!(
                    "invalid write concern in the connection string: {e}"
                ))
            })
        }
        _ => Ok(None),
    }
}

/// Whether retrying cannot help a long-running reader of the database (bad options,
/// authentication, privileges, a standalone server asked for a change stream). The agent's
/// inserts keep retrying an authentication failure instead (see [`classify`]): a password can be
/// fixed on the server while readings wait in the spool.
pub fn is_fatal(e: &Error) -> bool {
    match *e.kind {
        ErrorKind::InvalidArgument { .. } | ErrorKind::Authentication { .. } => true,
        ErrorKind::Command(ref c) => FATAL_CODES.contains(&c.code),
        _ => false,
    }
}

/// What to do about a fatal error, where that is known: `""` or a parenthesised hint.
pub fn fatal_hint(e: &Error) -> &'static str {
    match *e.kind {
        ErrorKind::Command(ref c) if c.code == NOT_A_REPLICA_SET => {
            " (change streams need a replica set: Atlas clusters are one; start a self-run mongod with --replSet and run rs.initiate() once)"
        }
        ErrorKind::Command(ref c) if c.code == 13 || c.code == 8000 => {
            " (most often a missing privilege: the user needs find and changeStream on the watched collection, and insert and update on the forwarder's state and dead-letter collections)"
        }
        _ => "",
    }
}

/// Whether a write failed only because a document with its key is already there.
pub fn is_duplicate_key(e: &Error) -> bool {
    match *e.kind {
        ErrorKind::Write(WriteFailure::WriteError(ref w)) => w.code == DUPLICATE_KEY,
        ErrorKind::Command(ref c) => c.code == DUPLICATE_KEY,
        _ => false,
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

/// An integer field of a reply, whichever integer type the server used (MongoDB sends 32-bit
/// ones; compatible servers and proxies may not); -1 when absent.
pub fn reply_count(reply: &Document, key: &str) -> i64 {
    match reply.get(key) {
        Some(Bson::Int32(n)) => i64::from(*n),
        Some(Bson::Int64(n)) => *n,
        Some(Bson::Double(n)) => *n as i64,
        _ => -1,
    }
}

/// Write error codes that say the server could not take a write for now, not that it refuses
/// the document: the retryable-writes specification's list (a primary stepping down or shutting
/// down, a node not primary, a network error or timeout between a router and a shard) and the
/// state codes a sharded cluster or a busy server gives (a time limit, a write conflict, a lock
/// timeout, stale routing, a shard with no primary to write to: 133). An unordered insert
/// reports them per document in `writeErrors` when a failover comes between its sub-batches;
/// the same write later goes through. Also 16500, Azure Cosmos DB's "request rate too large"
/// for its MongoDB API (Microsoft's "Prevent rate-limiting errors" page): a throttle, not a
/// refusal of the document.
pub const TRANSIENT_WRITE_CODES: [i32; 23] = [
    6, 7, 24, 50, 63, 64, 89, 91, 112, 133, 134, 150, 189, 262, 9001, 10058, 10107, 11600, 11602,
    13388, 13435, 13436, 16500,
];

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

#[cfg(test)]
mod tests {
    use super::*;

    // Found by fuzzing: a `%` followed by a non-ASCII character made the driver slice inside the
    // character and panic. It is refused with a reason instead.
    #[test]
    fn a_percent_before_a_non_ascii_character_is_refused() {
        for uri in [
            "mongodb://u:p%\u{e9}@host/",
            "mongodb://host/?appName=%\u{1F600}",
        ] {
            assert!(check_escapes(uri).is_err(), "{uri}");
        }
        assert!(check_escapes("mongodb://u:p%25x@host/").is_ok());
    }
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
                Err(MongoError::Fatal(m) | MongoError::Unavailable(m)) => m,
            };
            for s in secrets {
                assert!(!err.contains(s), "{uri}: {err}");
            }
        }
        assert_eq!(
            redact_credentials("got abc and abcdef", "mongodb://u:abcdef@h/"),
            "got abc and <redacted>"
        );
        // Found by fuzzing: the driver quoted a piece lower-cased; pieces split at ':' and
        // percent-decoded ones are secrets too; overlapping matches make one mark.
        assert_eq!(
            redact_credentials(
                "option xuthpi%p:80/i/n1@ is invalid",
                "mongodb://c?Xuthpi%p:80/i/n1@h/"
            ),
            "option <redacted>:<redacted>@ is invalid"
        );
        assert_eq!(
            redact_credentials("user p@ss:word", "mongodb://u:p%40ss%3Aword@h/"),
            "user <redacted>"
        );
        assert_eq!(
            redact_credentials("a red herring", "mongodb://u:red@h/"),
            "a <redacted> herring"
        );
    }

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

    // A connection string without a write concern gets the durable one (its timeout kept); one
    // that names a write concern keeps it, and a risky one is said.
    #[tokio::test]
    async fn the_write_concern_is_durable_unless_the_string_says_otherwise() {
        async fn wc(uri: &str) -> (Option<Document>, bool) {
            let mut o = ClientOptions::parse(uri).await.unwrap();
            let risk = make_durable(&mut o.write_concern);
            let doc = write_concern_document(o.write_concern.as_ref())
                .unwrap()
                .map(|d| d.to_document().unwrap());
            (doc, risk.is_some())
        }
        assert_eq!(
            wc("mongodb://h/").await,
            (Some(doc! { "w": "majority", "j": true }), false)
        );
        assert_eq!(
            wc("mongodb://h/?wtimeoutMS=5000").await,
            (
                Some(doc! { "w": "majority", "wtimeout": 5000, "j": true }),
                false
            )
        );
        assert_eq!(
            wc("mongodb://h/?w=majority").await,
            (Some(doc! { "w": "majority" }), false)
        );
        assert_eq!(
            wc("mongodb://h/?journal=true").await,
            (Some(doc! { "j": true }), false)
        );
        assert_eq!(wc("mongodb://h/?w=1").await, (Some(doc! { "w": 1 }), true));
        assert_eq!(wc("mongodb://h/?w=0").await, (Some(doc! { "w": 0 }), true));
        assert_eq!(
            wc("mongodb://h/?w=majority&journal=false").await,
            (Some(doc! { "w": "majority", "j": false }), true)
        );
    }

    // Each way of failing to reach a server gets a hint of what to check.
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
