//! A TCP proxy in front of the test server that makes it a server offering zlib wire
//! compression, as mongod and Atlas do and SecantusDB does not: it adds `"compression":
//! ["zlib"]` to the replies to hellos that ask for zlib, decompresses the messages the client
//! then sends compressed (`OP_COMPRESSED`) before passing them on, and compresses the replies
//! to those, as a server does. It notes each command the client sent, whether compressed, and
//! with which zlib level (from the zlib stream's header).

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use mongodb::bson::{Bson, Document, RawDocument};

const OP_REPLY: i32 = 1;
const OP_QUERY: i32 = 2004;
const OP_COMPRESSED: i32 = 2012;
const OP_MSG: i32 = 2013;
const ZLIB: u8 = 2;

/// One command the client sent through the proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// The command's name (its document's first key), e.g. `insert`.
    pub command: String,
    /// The zlib header's FLEVEL (0 fastest, 1 fast, 2 default, 3 maximum) when it came
    /// compressed; `None` when it came plain.
    pub zlib_level: Option<u8>,
}

/// The proxy; it runs until the test process ends.
pub struct ZlibProxy {
    pub port: u16,
    sent: Arc<Mutex<Vec<Sent>>>,
}

impl ZlibProxy {
    /// Listen on a free loopback port, passing connections on to the server at `upstream_port`.
    pub fn start(upstream_port: u16) -> ZlibProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let sent = Arc::new(Mutex::new(Vec::new()));
        let log = sent.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream_port)) else {
                    continue;
                };
                let state = Arc::new(Mutex::new(Pending::default()));
                let (c2, s2, st2) = (
                    client.try_clone().unwrap(),
                    server.try_clone().unwrap(),
                    state.clone(),
                );
                let log = log.clone();
                std::thread::spawn(move || requests(client, server, &state, &log));
                std::thread::spawn(move || replies(s2, c2, &st2));
            }
        });
        ZlibProxy { port, sent }
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
/// flags, cursor id, start and count.
fn document_at(opcode: i32, body: &[u8]) -> Option<usize> {
    match opcode {
        OP_MSG => {
            // No checksum (flag bit 0): a changed body would need a new one.
            assert_eq!(body[0] & 1, 0, "OP_MSG with a checksum");
            (body[4] == 0).then_some(5)
        }
        OP_QUERY => Some(4 + body[4..].iter().position(|&b| b == 0)? + 1 + 8),
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

fn requests(
    mut client: TcpStream,
    mut server: TcpStream,
    state: &Mutex<Pending>,
    log: &Mutex<Vec<Sent>>,
) {
    while let Some((id, reply_to, mut opcode, mut body)) = read_message(&mut client) {
        let mut zlib_level = None;
        if opcode == OP_COMPRESSED {
            let original = i32::from_le_bytes(body[0..4].try_into().unwrap());
            assert_eq!(body[8], ZLIB, "compressed with compressor id {}", body[8]);
            // The zlib header's second byte: FLEVEL in its top two bits.
            zlib_level = Some(body[10] >> 6);
            let mut plain = Vec::new();
            flate2::read::ZlibDecoder::new(&body[9..])
                .read_to_end(&mut plain)
                .unwrap();
            (opcode, body) = (original, plain);
            state.lock().unwrap().compressed.insert(id);
        } else if let Some(doc) = document(opcode, &body) {
            let offers_zlib = doc
                .get_array("compression")
                .map(|a| {
                    a.into_iter()
                        .any(|c| c.ok().and_then(|c| c.as_str()) == Some("zlib"))
                })
                .unwrap_or(false);
            let hello = matches!(
                command_name(opcode, &body).as_str(),
                "hello" | "isMaster" | "ismaster"
            );
            if hello && offers_zlib {
                state.lock().unwrap().hellos.insert(id);
            }
        }
        let command = command_name(opcode, &body);
        log.lock().unwrap().push(Sent {
            command,
            zlib_level,
        });
        if !write_message(&mut server, id, reply_to, opcode, &body) {
            break;
        }
    }
    let _ = server.shutdown(Shutdown::Both);
}

fn replies(mut server: TcpStream, mut client: TcpStream, state: &Mutex<Pending>) {
    while let Some((id, reply_to, opcode, body)) = read_message(&mut server) {
        let (hello, compressed) = {
            let mut s = state.lock().unwrap();
            (s.hellos.remove(&reply_to), s.compressed.remove(&reply_to))
        };
        let ok = if hello {
            let at = document_at(opcode, &body).unwrap();
            let mut doc = Document::try_from(document(opcode, &body).unwrap()).unwrap();
            doc.insert("compression", vec![Bson::from("zlib")]);
            let mut changed = body[..at].to_vec();
            doc.to_writer(&mut changed).unwrap();
            write_message(&mut client, id, reply_to, opcode, &changed)
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
    let _ = client.shutdown(Shutdown::Both);
}
