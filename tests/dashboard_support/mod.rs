//! Helpers for the dashboard's integration tests: the dashboard binary on a free port, a small
//! HTTP/1.1 GET over a plain socket, and generated readings whose every value the tests know.
#![allow(dead_code)]

pub mod cdp;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mongodb::bson::{doc, DateTime, Document};

use crate::common::{free_port, Reaped};

/// 2026-11-01T00:00:00Z: the generated readings start here.
pub const T0_MS: i64 = 1_793_491_200_000;

/// The dashboard binary built for this test run.
pub fn dashboard_bin() -> &'static str {
    env!("CARGO_BIN_EXE_sensehat-dashboard")
}

/// A running dashboard, killed when dropped.
pub struct Dashboard {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    _child: Reaped,
}

impl Dashboard {
    /// Start the dashboard on `uri`'s `db.reports`, nodes stale after `stale_after`, and wait
    /// until it accepts connections.
    pub fn start(uri: &str, db: &str, stale_after: &str) -> Dashboard {
        Dashboard::start_with(uri, db, stale_after, &[])
    }

    /// [`Dashboard::start`] with `extra` options (and a 5 s `--query-timeout` unless they give
    /// one).
    pub fn start_with(uri: &str, db: &str, stale_after: &str, extra: &[&str]) -> Dashboard {
        let addr = format!("127.0.0.1:{}", free_port());
        Dashboard::start_on(&addr, uri, db, stale_after, extra)
    }

    /// [`Dashboard::start_with`] on `addr` (`127.0.0.1:PORT`), for a dashboard started again
    /// where a page already points.
    pub fn start_on(
        addr: &str,
        uri: &str,
        db: &str,
        stale_after: &str,
        extra: &[&str],
    ) -> Dashboard {
        let addr = addr.to_owned();
        let mut command = command(uri, db, stale_after, &addr);
        if !extra.contains(&"--query-timeout") {
            command.args(["--query-timeout", "5s"]);
        }
        let child = command
            .args(extra)
            .spawn()
            .expect("start sensehat-dashboard");
        let child = Reaped(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(&addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "the dashboard did not start on {addr}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Dashboard {
            addr,
            _child: child,
        }
    }

    /// GET `path`.
    pub fn get(&self, path: &str) -> Reply {
        get(&self.addr, path)
    }

    /// GET `path`, which must answer 200 with JSON.
    pub fn json(&self, path: &str) -> serde_json::Value {
        let r = self.get(path);
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{path}: {e}: {}", r.body))
    }
}

/// The dashboard's command on `uri`'s `db`, listening on `addr`, its log (warnings and up) on
/// stderr, inherited unless the caller sets it.
pub fn command(uri: &str, db: &str, stale_after: &str, addr: &str) -> Command {
    let mut c = Command::new(dashboard_bin());
    c.args(["--listen", addr, "--database", db])
        .args(["--stale-after", stale_after])
        .env("MONGODB_CONNECTION_STRING", uri)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    c
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Header lines, lower-cased names.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: String,
}

impl Reply {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A blocking HTTP/1.1 GET with `Connection: close`. The body is read by its length or its
/// chunks, since a server may keep the connection open regardless (Chromium's does).
pub fn get(addr: &str, path: &str) -> Reply {
    get_as(addr, addr, path)
}

/// [`get`] with `host` as the `Host` header, as a browser sends the name it was given.
pub fn get_as(addr: &str, host: &str, path: &str) -> Reply {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).expect("status line");
    let status = line.split(' ').nth(1).expect("a status").parse().unwrap();
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line).expect("header line");
        match line.trim_end().split_once(':') {
            Some((k, v)) => headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned())),
            None => break,
        }
    }
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    if header("transfer-encoding").as_deref() == Some("chunked") {
        loop {
            line.clear();
            r.read_line(&mut line).expect("chunk size");
            let n = usize::from_str_radix(line.trim(), 16).expect("chunk size");
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk).expect("chunk");
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else if let Some(n) = header("content-length") {
        body.resize(n.parse().unwrap(), 0);
        r.read_exact(&mut body).expect("body");
    } else {
        r.read_to_end(&mut body).expect("body");
    }
    let body = String::from_utf8(body).expect("UTF-8 answer");
    Reply {
        status,
        headers,
        body,
    }
}

/// Readings of `node` every `step_ms` from `start_ms` for `count` steps, skipping those in
/// `gap` (ms range); values are a function of the index so every one is known. Every
/// `moving_every`-th reading (0: none) has `isMoving: true`.
pub fn readings(
    node: &str,
    k: u32,
    start_ms: i64,
    step_ms: i64,
    count: u32,
    gap: std::ops::Range<i64>,
    moving_every: u32,
) -> Vec<Document> {
    (0..count)
        .map(|i| (i, start_ms + i64::from(i) * step_ms))
        .filter(|(_, t)| !gap.contains(t))
        .map(|(i, t)| {
            // A slow wave per node plus a small known ripple: smooth enough to read on a chart.
            let wave = |period: f64, amp: f64| amp * (f64::from(i) / period + f64::from(k)).sin();
            let ripple = |m: u32| f64::from((i * m + k * 17) % 10) / 50.0;
            doc! {
                "nodeName": node,
                "humidity": 45.0 + wave(90.0, 8.0) + ripple(13),
                "temperature": 21.0 + wave(140.0, 3.0) + ripple(37),
                "pressure": 1010.0 + wave(400.0, 4.0) + ripple(7),
                "isMoving": moving_every > 0 && i % moving_every == 0,
                "acceleration": { "x": ripple(3) / 10.0, "y": -ripple(5) / 10.0, "z": 0.98 + ripple(11) / 20.0 },
                "recordedAt": DateTime::from_millis(t),
            }
        })
        .collect()
}

/// A database named for `prefix` on `server`, holding ten readings of `node-a` a second apart
/// from [`T0_MS`]: what a test of the API's answers and edges asks about.
pub async fn ten_readings(server: &crate::common::MongoServer, prefix: &str) -> String {
    let db = crate::common::unique_name(prefix);
    let docs = readings("node-a", 0, T0_MS, 1_000, 10, 0..0, 0);
    insert(&server.client().await, &db, docs).await;
    db
}

/// Insert documents into `db.reports`.
pub async fn insert(client: &mongodb::Client, db: &str, docs: Vec<Document>) {
    client
        .database(db)
        .collection::<Document>("reports")
        .insert_many(docs)
        .await
        .expect("insert readings");
}

/// An ISO 8601 UTC time with milliseconds, written here (not by the library) for requests.
pub fn iso(ms: i64) -> String {
    DateTime::from_millis(ms).try_to_rfc3339_string().unwrap()
}

/// The instant an answer's time string names, in ms since the epoch.
pub fn ms(v: &serde_json::Value) -> i64 {
    DateTime::parse_rfc3339_str(v.as_str().expect("a time string"))
        .expect("ISO 8601")
        .timestamp_millis()
}
