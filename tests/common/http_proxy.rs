//! A TCP proxy in front of an HTTP/1.1 server (moto, in the EventBridge tests and benchmark)
//! that holds each request for a set time before passing it on, as a server a round trip away
//! would, and counts the calls of each AWS API (its `X-Amz-Target`) through it: how many, and
//! how many were open at once (sent on, not yet answered). It can also rewrite a request's body
//! on its way, so that the server answers what it answers to that body.
//!
//! One thread per client connection, which passes requests on one at a time over a connection
//! of its own to the server, as HTTP/1.1 without pipelining does: calls open at once are
//! calls on different connections.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The calls of one API through the proxy.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Calls {
    /// Calls received.
    pub total: usize,
    /// Calls received and not yet answered by the server, now.
    pub open: usize,
    /// The most that were open at once.
    pub most_open: usize,
}

/// A request body's rewrite: given the API (`X-Amz-Target`, or "") and the body, the body to
/// send on.
pub type Rewrite = fn(&str, Vec<u8>) -> Vec<u8>;

/// The proxy; it runs until the test process ends.
pub struct HttpProxy {
    /// `http://127.0.0.1:PORT`: the server's endpoint, through the proxy.
    pub endpoint: String,
    calls: Arc<Mutex<HashMap<String, Calls>>>,
}

impl HttpProxy {
    /// Listen on a free loopback port, passing each request on to `upstream`
    /// (`http://HOST:PORT`) after `delay`.
    pub fn start(upstream: &str, delay: Duration) -> HttpProxy {
        HttpProxy::start_rewriting(upstream, delay, |_, body| body)
    }

    /// [`HttpProxy::start`], passing each request's body on as `rewrite` makes it.
    pub fn start_rewriting(upstream: &str, delay: Duration, rewrite: Rewrite) -> HttpProxy {
        let addr = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let calls: Arc<Mutex<HashMap<String, Calls>>> = Arc::default();
        let shared = calls.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let (addr, calls) = (addr.clone(), calls.clone());
                std::thread::spawn(move || serve(client, &addr, delay, rewrite, &calls));
            }
        });
        HttpProxy {
            endpoint: format!("http://127.0.0.1:{port}"),
            calls: shared,
        }
    }

    /// The calls of `api` (an `X-Amz-Target`, e.g. `AWSEvents.PutEvents`) so far.
    pub fn calls(&self, api: &str) -> Calls {
        self.calls
            .lock()
            .unwrap()
            .get(api)
            .copied()
            .unwrap_or_default()
    }
}

/// One HTTP message: its start line and headers as received, and its body as it was framed.
struct Message {
    head: String,
    /// The body's bytes on the wire (chunked ones with their framing).
    raw_body: Vec<u8>,
    /// Whether the connection ends after it (read to the end, or `Connection: close`).
    closes: bool,
}

impl Message {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// The same request with `body`, framed by Content-Length.
    fn with_body(self, body: Vec<u8>) -> Message {
        let head: String = self
            .head
            .split_inclusive("\r\n")
            .map(|line| match line.split_once(':') {
                Some((n, _)) if n.trim().eq_ignore_ascii_case("content-length") => {
                    format!("{n}: {}\r\n", body.len())
                }
                _ => line.to_owned(),
            })
            .collect();
        Message {
            head,
            raw_body: body,
            closes: self.closes,
        }
    }

    fn write_to(&self, w: &mut impl Write) -> std::io::Result<()> {
        w.write_all(self.head.as_bytes())?;
        w.write_all(&self.raw_body)?;
        w.flush()
    }
}

/// Read one message; `None` at the end of the connection. A response's body is Content-Length
/// bytes, chunked, or (with neither) everything to the end of the connection.
fn read_message(r: &mut BufReader<TcpStream>, response: bool) -> Option<Message> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let mut m = Message {
        head,
        raw_body: Vec::new(),
        closes: false,
    };
    m.closes = m
        .header("connection")
        .is_some_and(|v| v.eq_ignore_ascii_case("close"));
    let status = m.head.split(' ').nth(1).and_then(|s| s.parse::<u16>().ok());
    if response && matches!(status, Some(100..=199 | 204 | 304)) {
        return Some(m);
    }
    if let Some(n) = m.header("content-length") {
        let mut body = vec![0; n.parse().expect("a Content-Length")];
        r.read_exact(&mut body).ok()?;
        m.raw_body = body;
    } else if m
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        loop {
            let mut size = String::new();
            r.read_line(&mut size).ok()?;
            m.raw_body.extend_from_slice(size.as_bytes());
            let n = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
            if n == 0 {
                // Trailers, up to the empty line.
                loop {
                    let mut line = String::new();
                    r.read_line(&mut line).ok()?;
                    m.raw_body.extend_from_slice(line.as_bytes());
                    if line == "\r\n" || line.is_empty() {
                        break;
                    }
                }
                break;
            }
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk).ok()?;
            m.raw_body.extend_from_slice(&chunk);
        }
    } else if response {
        r.read_to_end(&mut m.raw_body).ok()?;
        m.closes = true;
    }
    Some(m)
}

/// Pass one client connection's requests on, one at a time.
fn serve(
    client: TcpStream,
    upstream: &str,
    delay: Duration,
    rewrite: Rewrite,
    calls: &Mutex<HashMap<String, Calls>>,
) {
    let mut to_client = client.try_clone().unwrap();
    let mut from_client = BufReader::new(client);
    let mut server: Option<(TcpStream, BufReader<TcpStream>)> = None;
    while let Some(request) = read_message(&mut from_client, false) {
        let api = request.header("x-amz-target").unwrap_or("").to_owned();
        let mut request = request;
        // The SDK frames its bodies with Content-Length; a chunked one goes on as it came.
        if request.header("content-length").is_some() {
            let body = std::mem::take(&mut request.raw_body);
            request = request.with_body(rewrite(&api, body));
        }
        {
            let mut calls = calls.lock().unwrap();
            let c = calls.entry(api.clone()).or_default();
            c.total += 1;
            c.open += 1;
            c.most_open = c.most_open.max(c.open);
        }
        std::thread::sleep(delay);
        if server.is_none() {
            let s = TcpStream::connect(upstream).expect("the server behind the proxy");
            server = Some((s.try_clone().unwrap(), BufReader::new(s)));
        }
        let (to_server, from_server) = server.as_mut().unwrap();
        let response = request
            .write_to(to_server)
            .ok()
            .and_then(|()| read_message(from_server, true));
        calls.lock().unwrap().get_mut(&api).unwrap().open -= 1;
        let Some(response) = response else { return };
        if response.closes {
            server = None;
        }
        if response.write_to(&mut to_client).is_err() || request.closes {
            return;
        }
    }
}
