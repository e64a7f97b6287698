//! A TCP proxy in front of the test server that makes it a server offering zlib wire
//! compression, as mongod and Atlas do and SecantusDB does not: it adds `"compression":
//! ["zlib"]` to the replies to hellos that ask for zlib, decompresses the messages the client
//! then sends compressed (`OP_COMPRESSED`) before passing them on, and compresses the replies
//! to those, as a server does. It notes each command the client sent, whether compressed, and
//! with which zlib level (from the zlib stream's header) and sizes. A message it cannot read
//! is noted as such and closes the connection, so a test fails on it rather than hangs.
//!
//! It can also withhold chosen commands from the server: answer them itself with the error a
//! server gives a user who lacks the privilege to run them (Unauthorized, code 13), which the
//! test server, having no users, never gives; with another error of a server unlike the test
//! server (see [`Withhold`]); or never answer them, as a server that hangs.
//!
//! And it can answer dates the test server cannot hold ([`ZlibProxy::redate`]): SecantusDB
//! decodes documents in Python, whose dates end at years 1 and 9999, while a BSON date, and
//! mongod, holds any i64 of milliseconds.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use mongodb::bson::{Bson, Document, RawDocument};

const OP_REPLY: i32 = 1;
const OP_QUERY: i32 = 2004;
const OP_COMPRESSED: i32 = 2012;
const OP_MSG: i32 = 2013;
const ZLIB: u8 = 2;

/// One command the client sent through the proxy, or what the proxy could not handle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    Command {
        /// The command's name (its document's first key), e.g. `insert`.
        name: String,
        /// How it came compressed; `None` when it came plain.
        zlib: Option<Zlib>,
    },
    /// A message the proxy could not read; it closed the connection.
    Failed(String),
}

/// A command that came zlib-compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Zlib {
    /// The zlib header's FLEVEL: 0 for levels 0 and 1, 1 for 2-5, 2 for 6, 3 for 7-9.
    pub level: u8,
    /// Its size compressed, and as it was.
    pub packed: usize,
    pub plain: usize,
}

/// What the proxy does with a command it withholds from the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Withhold {
    /// Answer it as refused for want of a privilege (Unauthorized, code 13).
    Refuse,
    /// Never answer it.
    Stall,
    /// Answer it as a write command none of whose documents the server took, each with a write
    /// error of this code (`ok: 1`, `n: 0`, a `writeErrors` entry per document), as a primary
    /// stepping down in the middle of an unordered insert answers the documents it had left.
    WriteError(i32),
    /// [`Withhold::WriteError`] for the commands on this collection (the command's first value)
    /// only; the others go to the server: a server that refuses the documents of one collection,
    /// as MongoDB refuses a replacement that changes the type of a stored `_id` (66
    /// ImmutableField), while taking the dead letters written to another.
    WriteErrorIn(i32, &'static str),
    /// Answer it as refused as a whole (`ok: 0`) with this code, code name and message, as
    /// MongoDB 8.0 whose featureCompatibilityVersion is still 7.0 answers `bulkWrite`.
    CommandError(i32, &'static str, &'static str),
}

/// The proxy; it runs until the test process ends.
pub struct ZlibProxy {
    pub port: u16,
    sent: Arc<Mutex<Vec<Sent>>>,
    withheld: Arc<Mutex<HashMap<String, Withhold>>>,
    redated: Redated,
}

/// Byte strings of date elements in replies, each with what replaces it (of the same length).
type Redated = Arc<Mutex<Vec<(Vec<u8>, Vec<u8>)>>>;

impl ZlibProxy {
    /// Listen on a free loopback port, passing connections on to the server at `upstream_port`.
    pub fn start(upstream_port: u16) -> ZlibProxy {
        ZlibProxy::start_withholding(upstream_port, &[])
    }

    /// [`ZlibProxy::start`], withholding the commands named in `withheld` from the server.
    pub fn start_withholding(upstream_port: u16, withheld: &[(&str, Withhold)]) -> ZlibProxy {
        let table: Arc<Mutex<HashMap<String, Withhold>>> = Arc::default();
        let shared = table.clone();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let sent = Arc::new(Mutex::new(Vec::new()));
        let log = sent.clone();
        let redated: Redated = Arc::default();
        let dates = redated.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream_port)) else {
                    continue;
                };
                let state = Arc::new(Mutex::new(Pending::default()));
                // Both threads answer the client, so whole messages are written under a lock.
                let answers = Arc::new(Mutex::new(client.try_clone().unwrap()));
                let (a2, s2, st2) = (answers.clone(), server.try_clone().unwrap(), state.clone());
                let (log, table, dates) = (log.clone(), table.clone(), dates.clone());
                std::thread::spawn(move || {
                    requests(client, server, &state, &log, &table, &answers)
                });
                std::thread::spawn(move || replies(s2, &a2, &st2, &dates));
            }
        });
        let proxy = ZlibProxy {
            port,
            sent,
            withheld: shared,
            redated,
        };
        proxy.withhold(withheld);
        proxy
    }

    /// From now on, withhold the commands named in `withheld` (and no others).
    pub fn withhold(&self, withheld: &[(&str, Withhold)]) {
        *self.withheld.lock().unwrap() = withheld.iter().map(|&(c, w)| (c.into(), w)).collect();
    }

    /// From now on, answer every date element named `field` that holds `stored_ms` (in the
    /// server's replies) as holding `answered_ms`: a date the test server cannot hold, stored
    /// there as one it can.
    pub fn redate(&self, field: &str, stored_ms: i64, answered_ms: i64) {
        let element = |ms: i64| {
            let mut e = vec![0x09];
            e.extend_from_slice(field.as_bytes());
            e.push(0);
            e.extend_from_slice(&ms.to_le_bytes());
            e
        };
        let pair = (element(stored_ms), element(answered_ms));
        self.redated.lock().unwrap().push(pair);
    }

    /// A connection string to the server through the proxy.
    pub fn uri(&self) -> String {
        format!("mongodb://127.0.0.1:{}/?directConnection=true", self.port)
    }

    /// What clients have sent so far.
    pub fn sent(&self) -> Vec<Sent> {
        self.sent.lock().unwrap().clone()
    }
}

/// Request ids whose replies the proxy must change.
#[derive(Default)]
struct Pending {
    /// Hellos that offered zlib: the reply accepts it.
    hellos: HashSet<i32>,
    /// Requests that came compressed: the reply goes back compressed.
    compressed: HashSet<i32>,
}

fn read_message(sock: &mut TcpStream) -> Option<(i32, i32, i32, Vec<u8>)> {
    let mut head = [0u8; 16];
    sock.read_exact(&mut head).ok()?;
    let field = |i: usize| i32::from_le_bytes(head[i..i + 4].try_into().unwrap());
    let mut body = vec![0u8; usize::try_from(field(0)).ok()?.checked_sub(16)?];
    sock.read_exact(&mut body).ok()?;
    Some((field(4), field(8), field(12), body))
}

fn write_message(sock: &mut TcpStream, id: i32, reply_to: i32, opcode: i32, body: &[u8]) -> bool {
    let len = i32::try_from(16 + body.len()).unwrap();
    let mut msg = Vec::with_capacity(16 + body.len());
    for field in [len, id, reply_to, opcode] {
        msg.extend_from_slice(&field.to_le_bytes());
    }
    msg.extend_from_slice(body);
    sock.write_all(&msg).is_ok()
}

/// Where the command or reply document of a message body starts: after OP_MSG's flags and
/// section kind, OP_QUERY's flags, collection name and skip/return counts, or OP_REPLY's
/// flags, cursor id, start and count. `None` for an OP_MSG with a checksum (flag bit 0),
/// which a changed body would invalidate, and which the driver does not send.
fn document_at(opcode: i32, body: &[u8]) -> Option<usize> {
    match opcode {
        OP_MSG => (*body.first()? & 1 == 0 && *body.get(4)? == 0).then_some(5),
        OP_QUERY => Some(4 + body.get(4..)?.iter().position(|&b| b == 0)? + 1 + 8),
        OP_REPLY => Some(20),
        _ => None,
    }
}

fn document(opcode: i32, body: &[u8]) -> Option<&RawDocument> {
    let at = document_at(opcode, body)?;
    let len = usize::try_from(i32::from_le_bytes(body.get(at..at + 4)?.try_into().ok()?)).ok()?;
    RawDocument::from_bytes(body.get(at..at + len)?).ok()
}

fn command_name(opcode: i32, body: &[u8]) -> String {
    document(opcode, body)
        .and_then(|d| d.iter().next())
        .and_then(|e| e.ok())
        .map(|(k, _)| k.to_owned())
        .unwrap_or_default()
}

/// The collection a command names as its first value (`{update: "firehose", ...}`).
fn target(opcode: i32, body: &[u8]) -> String {
    document(opcode, body)
        .and_then(|d| d.iter().next())
        .and_then(|e| e.ok())
        .and_then(|(_, v)| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn requests(
    mut client: TcpStream,
    mut server: TcpStream,
    state: &Mutex<Pending>,
    log: &Mutex<Vec<Sent>>,
    withheld: &Mutex<HashMap<String, Withhold>>,
    answers: &Mutex<TcpStream>,
) {
    while let Some((id, reply_to, opcode, body)) = read_message(&mut client) {
        let (opcode, body, sent) = match request(id, opcode, body, state) {
            Ok(r) => r,
            Err(e) => {
                log.lock().unwrap().push(Sent::Failed(e));
                break;
            }
        };
        let withhold = match &sent {
            Sent::Command { name, .. } => withheld.lock().unwrap().get(name).copied(),
            Sent::Failed(_) => None,
        }
        .filter(|w| match w {
            Withhold::WriteErrorIn(_, collection) => target(opcode, &body) == *collection,
            _ => true,
        });
        log.lock().unwrap().push(sent);
        if withhold.is_some() {
            // Answered here, if at all, and never compressed.
            state.lock().unwrap().compressed.remove(&id);
        }
        let ok = match withhold {
            Some(Withhold::Refuse) => {
                let reply = unauthorized(opcode, &body);
                write_message(&mut answers.lock().unwrap(), id, id, OP_MSG, &reply)
            }
            Some(Withhold::WriteError(code)) => {
                let reply = write_errors(opcode, &body, code, "not primary");
                write_message(&mut answers.lock().unwrap(), id, id, OP_MSG, &reply)
            }
            Some(Withhold::WriteErrorIn(code, _)) => {
                let reply = write_errors(opcode, &body, code, "refused by the test proxy");
                write_message(&mut answers.lock().unwrap(), id, id, OP_MSG, &reply)
            }
            Some(Withhold::CommandError(code, name, message)) => {
                let reply = op_msg_body(&mongodb::bson::doc! {
                    "ok": 0.0, "errmsg": message, "code": code, "codeName": name,
                });
                write_message(&mut answers.lock().unwrap(), id, id, OP_MSG, &reply)
            }
            Some(Withhold::Stall) => true,
            None => write_message(&mut server, id, reply_to, opcode, &body),
        };
        if !ok {
            break;
        }
    }
    let _ = server.shutdown(Shutdown::Both);
    let _ = client.shutdown(Shutdown::Both);
}

/// A request as the server takes it (decompressed), and what to note of it.
fn request(
    id: i32,
    opcode: i32,
    body: Vec<u8>,
    state: &Mutex<Pending>,
) -> Result<(i32, Vec<u8>, Sent), String> {
    if opcode == OP_COMPRESSED {
        let field = |i: usize| {
            body.get(i..i + 4)
                .map(|b| i32::from_le_bytes(b.try_into().unwrap()))
        };
        let (Some(original), Some(size), Some(&compressor), Some(&flags)) =
            (field(0), field(4), body.get(8), body.get(10))
        else {
            return Err(format!(
                "a short OP_COMPRESSED message ({} bytes)",
                body.len()
            ));
        };
        if compressor != ZLIB {
            return Err(format!(
                "compressed with compressor id {compressor}, not zlib"
            ));
        }
        let mut plain = Vec::new();
        flate2::read::ZlibDecoder::new(&body[9..])
            .read_to_end(&mut plain)
            .map_err(|e| format!("bad zlib data: {e}"))?;
        if usize::try_from(size).ok() != Some(plain.len()) {
            return Err(format!(
                "said {size} bytes uncompressed, held {}",
                plain.len()
            ));
        }
        state.lock().unwrap().compressed.insert(id);
        let zlib = Zlib {
            // The zlib header's second byte: FLEVEL in its top two bits.
            level: flags >> 6,
            packed: body.len() - 9,
            plain: plain.len(),
        };
        let name = command_name(original, &plain);
        return Ok((
            original,
            plain,
            Sent::Command {
                name,
                zlib: Some(zlib),
            },
        ));
    }
    let name = command_name(opcode, &body);
    let offers_zlib = document(opcode, &body)
        .and_then(|d| d.get_array("compression").ok())
        .is_some_and(|a| {
            a.into_iter()
                .any(|c| c.ok().and_then(|c| c.as_str()) == Some("zlib"))
        });
    if offers_zlib && matches!(name.as_str(), "hello" | "isMaster" | "ismaster") {
        state.lock().unwrap().hellos.insert(id);
    }
    Ok((opcode, body, Sent::Command { name, zlib: None }))
}

/// The body of an OP_MSG reply refusing the command in `body`, in the words mongod uses.
fn unauthorized(opcode: i32, body: &[u8]) -> Vec<u8> {
    let command = document(opcode, body);
    let name = command_name(opcode, body);
    let db = command
        .and_then(|d| d.get_str("$db").ok())
        .unwrap_or("admin");
    op_msg_body(&mongodb::bson::doc! {
        "ok": 0.0,
        "errmsg": format!("not authorized on {db} to execute command {{ {name}: ... }}"),
        "code": 13,
        "codeName": "Unauthorized",
    })
}

/// The body of an OP_MSG reply holding `reply`: no flags, one section of kind 0.
fn op_msg_body(reply: &Document) -> Vec<u8> {
    let mut body = vec![0, 0, 0, 0, 0];
    reply.to_writer(&mut body).unwrap();
    body
}

/// The body of an OP_MSG reply to the write command in `body` in which every document of its
/// `documents` (an insert) or statement of its `updates` (an update) failed with `code`.
fn write_errors(opcode: i32, body: &[u8], code: i32, message: &str) -> Vec<u8> {
    // An insert's documents, or an update's statements.
    let count = document(opcode, body)
        .and_then(|d| {
            d.get_array("documents")
                .or_else(|_| d.get_array("updates"))
                .ok()
        })
        .map_or(0, |a| a.into_iter().count());
    let errors: Vec<Bson> = (0..count)
        .map(|i| {
            Bson::Document(mongodb::bson::doc! {
                "index": i32::try_from(i).unwrap(),
                "code": code,
                "errmsg": message,
            })
        })
        .collect();
    op_msg_body(&mongodb::bson::doc! { "n": 0, "ok": 1.0, "writeErrors": errors })
}

fn replies(
    mut server: TcpStream,
    answers: &Mutex<TcpStream>,
    state: &Mutex<Pending>,
    redated: &Mutex<Vec<(Vec<u8>, Vec<u8>)>>,
) {
    while let Some((id, reply_to, opcode, mut body)) = read_message(&mut server) {
        for (stored, answered) in redated.lock().unwrap().iter() {
            let mut at = 0;
            while let Some(i) = body[at..].windows(stored.len()).position(|w| w == stored) {
                body[at + i..at + i + stored.len()].copy_from_slice(answered);
                at += i + stored.len();
            }
        }
        let mut client = answers.lock().unwrap();
        let (hello, compressed) = {
            let mut s = state.lock().unwrap();
            (s.hellos.remove(&reply_to), s.compressed.remove(&reply_to))
        };
        let ok = if hello {
            // A reply the proxy cannot read goes on unchanged: the client then sees a server
            // that does not offer zlib, and the test's expectations fail, not hang.
            match accept_zlib(opcode, &body) {
                Some(changed) => write_message(&mut client, id, reply_to, opcode, &changed),
                None => write_message(&mut client, id, reply_to, opcode, &body),
            }
        } else if compressed {
            let mut packed = Vec::new();
            packed.extend_from_slice(&opcode.to_le_bytes());
            packed.extend_from_slice(&i32::try_from(body.len()).unwrap().to_le_bytes());
            packed.push(ZLIB);
            let mut z = flate2::write::ZlibEncoder::new(packed, flate2::Compression::default());
            z.write_all(&body).unwrap();
            write_message(
                &mut client,
                id,
                reply_to,
                OP_COMPRESSED,
                &z.finish().unwrap(),
            )
        } else {
            write_message(&mut client, id, reply_to, opcode, &body)
        };
        if !ok {
            break;
        }
    }
    let _ = answers.lock().unwrap().shutdown(Shutdown::Both);
    let _ = server.shutdown(Shutdown::Both);
}

/// A hello reply's body with `"compression": ["zlib"]` added.
fn accept_zlib(opcode: i32, body: &[u8]) -> Option<Vec<u8>> {
    let at = document_at(opcode, body)?;
    let mut doc = Document::try_from(document(opcode, body)?).ok()?;
    doc.insert("compression", vec![Bson::from("zlib")]);
    let mut changed = body[..at].to_vec();
    doc.to_writer(&mut changed).ok()?;
    Some(changed)
}
