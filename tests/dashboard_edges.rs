//! The dashboard binary against a real MongoDB wire-protocol server (SecantusDB) holding odd
//! documents, and against clients that misbehave: what one bad document or one idle client
//! must not do to everything else.
#![cfg(feature = "dashboard")]

mod common;
mod dashboard_support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use mongodb::bson::DateTime;
use serde_json::Value;

use common::wire::{Sent, Withhold, ZlibProxy};
use common::MongoServer;
use dashboard_support::{get_as, insert, readings, ten_readings, Dashboard, T0_MS};

/// The dashboard's header timeout (`listener::HEADER_TIMEOUT`), declared again here.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// API requests querying the database at once (`limit::MAX_QUERYING`), declared again here.
const MAX_QUERYING: usize = 8;

/// The names `/api/nodes` lists.
fn listed(list: &Value) -> Vec<&str> {
    list.as_array()
        .expect("an array")
        .iter()
        .map(|n| n["nodeName"].as_str().expect("a string name"))
        .collect()
}

// A document with an empty `nodeName` is no node, and one whose `nodeName` is an array is
// listed under each of its elements (as `distinct` and every query find it): each name listed
// is one whose chart answers. They used to be listed under the document's own name, "" (a
// 400: missing parameter) or the array (shown as "arr1,arr2", a 404), and the page's one
// failed request blanked every node's chart.
#[tokio::test(flavor = "multi_thread")]
async fn odd_node_names_leave_every_listed_node_chartable() {
    let server = MongoServer::start();
    let db = common::unique_name("dash_odd_names");
    let now = DateTime::now().timestamp_millis();
    let mut docs = readings("node-a", 0, now - 60_000, 1_000, 30, 0..0, 0);
    let mut empty = readings("", 1, now - 30_000, 1_000, 1, 0..0, 0).remove(0);
    empty.insert("nodeName", "");
    let mut array = readings("x", 2, now - 20_000, 1_000, 1, 0..0, 0).remove(0);
    array.insert("nodeName", vec!["arr1", "arr2"]);
    let mut number = readings("x", 3, now - 10_000, 1_000, 1, 0..0, 0).remove(0);
    number.insert("nodeName", 7);
    docs.extend([empty, array, number]);
    insert(&server.client().await, &db, docs).await;
    let dash = Dashboard::start(&server.uri, &db, "1h");
    tokio::task::spawn_blocking(move || {
        let list = dash.json("/api/nodes");
        assert_eq!(listed(&list), ["arr1", "arr2", "node-a"], "{list}");
        for node in listed(&list) {
            let chart = dash.json(&format!("/api/chart?node={node}"));
            assert_eq!(chart["node"], node);
        }
        let a = &list[2];
        assert_eq!(a["temperature"].as_f64().map(|t| t > 0.0), Some(true));
        assert_eq!(list[0]["stale"], false, "{list}");
    })
    .await
    .unwrap();
}

// A node's tile shows its latest reading dated up to a minute ahead of now, not one from a
// clock that ran a day ahead: that one used to pin the tile for a day, "0 s ago" and never
// stale, while the charts (a window ending now) left it out.
#[tokio::test(flavor = "multi_thread")]
async fn a_reading_dated_ahead_does_not_pin_the_tile() {
    const DAY: i64 = 86_400_000;
    let server = MongoServer::start();
    let db = common::unique_name("dash_ahead");
    let now = DateTime::now().timestamp_millis();
    let mut docs = readings("node-a", 0, now - 30_000, 1_000, 10, 0..0, 0);
    let last = docs.last().unwrap().get_datetime("recordedAt").unwrap();
    let last = last.timestamp_millis();
    let mut ahead = readings("node-a", 0, now + DAY, 1_000, 1, 0..0, 0);
    ahead[0].insert("temperature", 99.5);
    docs.extend(ahead);
    // Within the slack: a clock a little ahead of the dashboard's still counts.
    let mut near = readings("node-b", 1, now + 20_000, 1_000, 1, 0..0, 0);
    near[0].insert("temperature", 12.5);
    docs.extend(near);
    insert(&server.client().await, &db, docs).await;
    let dash = Dashboard::start(&server.uri, &db, "1h");
    tokio::task::spawn_blocking(move || {
        let list = dash.json("/api/nodes");
        assert_eq!(listed(&list), ["node-a", "node-b"], "{list}");
        let a = &list[0];
        // As instants: the answer writes three digits of milliseconds, `iso` drops trailing zeros.
        assert_eq!(dashboard_support::ms(&a["recordedAt"]), last, "{a}");
        assert_ne!(a["temperature"], 99.5, "{a}");
        assert!(a["ageSeconds"].as_f64().unwrap() >= 20.0, "{a}");
        assert_eq!(list[1]["temperature"], 12.5, "{list}");
    })
    .await
    .unwrap();
}

// A node name that is a formula after a line break is written to the CSV with a leading `'`,
// as one after a tab or a carriage return was, so a spreadsheet that reads past the break does
// not run it; the line feed was let through.
#[tokio::test(flavor = "multi_thread")]
async fn a_formula_after_a_line_break_is_no_formula_in_the_csv() {
    let server = MongoServer::start();
    let db = common::unique_name("dash_csv_formula");
    let name = "\n=HYPERLINK(\"http://x.example/\",\"y\")";
    insert(
        &server.client().await,
        &db,
        readings(name, 0, T0_MS, 1_000, 2, 0..0, 0),
    )
    .await;
    let dash = Dashboard::start(&server.uri, &db, "1h");
    tokio::task::spawn_blocking(move || {
        let node = "%0A%3DHYPERLINK(%22http%3A%2F%2Fx.example%2F%22%2C%22y%22)";
        let r = dash.get(&format!(
            "/api/csv?node={node}&from={}&to={}",
            dashboard_support::iso(T0_MS),
            dashboard_support::iso(T0_MS + 10_000)
        ));
        assert_eq!(r.status, 200, "{}", r.body);
        let cell = ",\"'\n=HYPERLINK(\"\"http://x.example/\"\",\"\"y\"\")\",";
        assert_eq!(r.body.matches(cell).count(), 2, "{}", r.body);
    })
    .await
    .unwrap();
}

// A node whose latest reading is dated at the earliest time BSON holds (i64::MIN ms, as
// Extended JSON's `{"$date": {"$numberLong": "-9223372036854775808"}}` writes it) is listed
// stale, with an age, beside the others. Its age overflowed: a panic in a debug build, and
// every tile gone; an age of 0, a fresh tile for ever, in a release build. The test server
// holds dates from year 1 only: the reading is stored at the earliest it holds, and answered
// through the proxy as mongod would answer one stored at i64::MIN.
#[tokio::test(flavor = "multi_thread")]
async fn a_reading_dated_at_the_earliest_time_is_stale_not_an_overflow() {
    /// 0001-01-01T00:00:00Z, the earliest date the test server holds.
    const YEAR_1_MS: i64 = -62_135_596_800_000;
    let server = MongoServer::start();
    let db = common::unique_name("dash_earliest");
    let now = DateTime::now().timestamp_millis();
    let mut docs = readings("node-a", 0, now - 5_000, 1_000, 2, 0..0, 0);
    docs.extend(readings("node-b", 1, YEAR_1_MS, 1_000, 1, 0..0, 0));
    insert(&server.client().await, &db, docs).await;
    let proxy = ZlibProxy::start(server.port);
    proxy.redate("recordedAt", YEAR_1_MS, i64::MIN);
    let dash = Dashboard::start(&proxy.uri(), &db, "1h");
    tokio::task::spawn_blocking(move || {
        let list = dash.json("/api/nodes");
        assert_eq!(listed(&list), ["node-a", "node-b"], "{list}");
        assert_eq!(list[0]["stale"], false, "{list}");
        let b = &list[1];
        // The proxy answered the date the test needs: the earliest an i64 holds.
        assert_eq!(b["recordedAt"], i64::MIN.to_string(), "{b}");
        assert_eq!(b["stale"], true, "{b}");
        assert!(b["ageSeconds"].as_f64().unwrap() > 9e15, "{b}");
    })
    .await
    .unwrap();
}

/// A connection that sent the first line of a request and nothing more.
fn half_request(addr: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\n").expect("a request line");
    s
}

// Hundreds of connections that each send half a request leave the page and the API answering
// at once, and each such connection is closed once its headers are late. They used to be
// held for as long as their clients liked.
#[tokio::test(flavor = "multi_thread")]
async fn idle_half_requests_neither_block_nor_stay() {
    let server = MongoServer::start();
    let db = ten_readings(&server, "dash_idle").await;
    let dash = Dashboard::start(&server.uri, &db, "5s");
    tokio::task::spawn_blocking(move || {
        let opened = Instant::now();
        let idle: Vec<TcpStream> = (0..300).map(|_| half_request(&dash.addr)).collect();
        let asked = Instant::now();
        assert_eq!(dash.get("/").status, 200);
        assert_eq!(dash.json("/api/nodes").as_array().unwrap().len(), 1);
        assert!(
            asked.elapsed() < Duration::from_secs(5),
            "{:?}",
            asked.elapsed()
        );
        // The first one is closed (with or without a 408) once the header timeout has passed.
        let mut first = &idle[0];
        first.set_read_timeout(Some(HEADER_TIMEOUT * 3)).unwrap();
        let mut answer = Vec::new();
        first
            .read_to_end(&mut answer)
            .expect("closed by the server, not left open");
        let held = opened.elapsed();
        assert!(
            held >= HEADER_TIMEOUT - Duration::from_secs(1) && held < HEADER_TIMEOUT * 2,
            "closed after {held:?}"
        );
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
            "{answer}"
        );
    })
    .await
    .unwrap();
}

// With every turn at the database taken by requests the database does not answer, the next
// API request is answered 503 with the reason within seconds rather than queued without
// bound, and the page itself, the node list and the health check, which take no turn, still
// answer. The health check was answered 503 "busy", which says the database does not answer.
#[tokio::test(flavor = "multi_thread")]
async fn requests_beyond_the_querying_limit_are_answered_busy() {
    let server = MongoServer::start();
    let db = ten_readings(&server, "dash_busy").await;
    let proxy = ZlibProxy::start_withholding(server.port, &[("aggregate", Withhold::Stall)]);
    let dash = Dashboard::start_with(&proxy.uri(), &db, "5s", &["--query-timeout", "20s"]);
    let aggregates = move || {
        let sent = proxy.sent();
        let is_aggregate =
            |s: &&Sent| matches!(s, Sent::Command { name, .. } if name == "aggregate");
        sent.iter().filter(is_aggregate).count()
    };
    tokio::task::spawn_blocking(move || {
        let addr = dash.addr.clone();
        let held: Vec<_> = (0..MAX_QUERYING)
            .map(|_| {
                let addr = addr.clone();
                std::thread::spawn(move || {
                    dashboard_support::get(&addr, "/api/chart?node=node-a").status
                })
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(30);
        while aggregates() < MAX_QUERYING {
            assert!(
                Instant::now() < deadline,
                "{} aggregates held",
                aggregates()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let asked = Instant::now();
        let r = dash.get("/api/series?node=node-a&field=temperature");
        assert_eq!(r.status, 503, "{}", r.body);
        let v: Value = serde_json::from_str(&r.body).unwrap();
        let msg = v["error"].as_str().unwrap();
        assert!(
            msg.starts_with("busy: ") && msg.contains("try again"),
            "{msg}"
        );
        assert!(
            asked.elapsed() < Duration::from_secs(10),
            "{:?}",
            asked.elapsed()
        );
        assert_eq!(dash.get("/").status, 200);
        // The node list takes no turn (one shared sweep bounds its queries): the tiles still
        // answer while the charts hold every turn.
        assert_eq!(dash.get("/api/nodes").status, 200);
        // Nor does the health check: the database answers (its `find`), busy as the API is.
        let health = dash.get("/api/health");
        assert_eq!(health.status, 200, "{}", health.body);
        for h in held {
            assert_eq!(
                h.join().unwrap(),
                503,
                "a held request, once its query timed out"
            );
        }
        // Their turns are back once they have ended.
        assert_eq!(dash.json("/api/nodes").as_array().unwrap().len(), 1);
    })
    .await
    .unwrap();
}

// A CSV download whose later batches the database never answers (its `getMore`s stalled)
// ends, unfinished, within a few query timeouts, and gives its slot back: two such downloads
// used to hold both slots for ever, and every later download was answered busy.
#[tokio::test(flavor = "multi_thread")]
async fn a_csv_download_the_database_stalls_ends_and_frees_its_slot() {
    let server = MongoServer::start();
    let db = common::unique_name("dash_csv_stall");
    // More than the first batch (101 documents): the rest need a `getMore`.
    insert(
        &server.client().await,
        &db,
        readings("node-a", 0, T0_MS, 1_000, 1_000, 0..0, 0),
    )
    .await;
    let proxy = ZlibProxy::start_withholding(server.port, &[("getMore", Withhold::Stall)]);
    let timeout = Duration::from_secs(2);
    let dash = Dashboard::start_with(&proxy.uri(), &db, "5s", &["--query-timeout", "2s"]);
    let path = format!(
        "/api/csv?node=node-a&from={}&to={}",
        dashboard_support::iso(T0_MS),
        dashboard_support::iso(T0_MS + 2_000_000)
    );
    // A few queries before the rows, then the stalled batch: each within the timeout.
    let bound = 4 * timeout + Duration::from_secs(5);
    tokio::task::spawn_blocking(move || {
        let downloads: Vec<_> = (0..2)
            .map(|_| {
                let (addr, path) = (dash.addr.clone(), path.clone());
                std::thread::spawn(move || raw_get(&addr, &path, bound))
            })
            .collect();
        for d in downloads {
            let answer = d.join().unwrap();
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
            let rows = answer.matches("node-a").count();
            assert!(rows > 0 && rows < 1_000, "{rows} rows");
            // No last chunk: the client can tell the download failed.
            assert!(!answer.ends_with("0\r\n\r\n"), "{answer}");
        }
        // Both slots are free again: a third download is not answered busy.
        let third = raw_get(&dash.addr, &path, bound);
        assert!(third.starts_with("HTTP/1.1 200"), "{third}");
    })
    .await
    .unwrap();
}

/// A GET whose whole answer, as sent, must have ended (the server closing the connection)
/// within `bound`.
fn raw_get(addr: &str, path: &str, bound: Duration) -> String {
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).expect("connect");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0; 65_536];
    loop {
        let left = bound.saturating_sub(started.elapsed());
        assert!(
            !left.is_zero(),
            "{path}: the answer had not ended after {bound:?}"
        );
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!("{path}: the answer had not ended after {bound:?}")
            }
            Err(e) => panic!("{path}: {e}"),
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

// With a `mongodb+srv://` connection string whose DNS lookup fails (a Pi that starts before
// its network), the dashboard starts and serves the page, and the API says the lookup failed,
// without the password; it used to look the name up before listening, and exit.
#[tokio::test(flavor = "multi_thread")]
async fn a_failing_srv_lookup_at_start_leaves_the_page_up() {
    let uri = "mongodb+srv://pi:s3cretpw@no-such-host.invalid/";
    let dash = Dashboard::start_with(uri, "monitors", "5s", &["--query-timeout", "5s"]);
    tokio::task::spawn_blocking(move || {
        assert_eq!(dash.get("/").status, 200);
        let r = dash.get("/api/nodes");
        assert_eq!(r.status, 503, "{}", r.body);
        assert!(r.body.contains("DNS lookup failed"), "{}", r.body);
        assert!(!r.body.contains("s3cretpw"), "{}", r.body);
        // Still up, and saying so again: the lookup is tried again on the next request.
        let again = dash.get("/api/health");
        assert_eq!(again.status, 503, "{}", again.body);
        assert!(again.body.contains("DNS lookup failed"), "{}", again.body);
    })
    .await
    .unwrap();
}

// A `+01:00` offset written into the URL as it is (not `%2B`) arrives form-decoded as a space;
// it is read as the `+` it was, as `%2B` and `-` offsets are: it used to be answered 400.
#[tokio::test(flavor = "multi_thread")]
async fn an_offset_whose_plus_became_a_space_is_read_as_plus() {
    let server = MongoServer::start();
    let db = common::unique_name("dash_offset");
    insert(
        &server.client().await,
        &db,
        readings("node-a", 0, T0_MS, 10_000, 60, 0..0, 0),
    )
    .await;
    let dash = Dashboard::start(&server.uri, &db, "5s");
    tokio::task::spawn_blocking(move || {
        // T0 is 2026-11-01T00:00:00Z.
        for (from, to) in [
            ("2026-11-01T01:00:00+01:00", "2026-11-01T01:05:00.000+01:00"),
            ("2026-11-01T01:00:00%2B01:00", "2026-11-01T01:05:00%2B01:00"),
            ("2026-10-31T23:00:00-01:00", "2026-10-31T23:05:00-01:00"),
        ] {
            let chart = dash.json(&format!("/api/chart?node=node-a&from={from}&to={to}"));
            assert_eq!(chart["from"], "2026-11-01T00:00:00.000Z", "{from}");
            assert_eq!(chart["to"], "2026-11-01T00:05:00.000Z", "{to}");
            let points = chart["series"]["temperature"].as_array().unwrap().len();
            assert!(points > 0, "{from}: {chart}");
            let csv = dash.get(&format!("/api/csv?node=node-a&from={from}&to={to}"));
            assert_eq!(csv.status, 200, "{from}: {}", csv.body);
            assert_eq!(csv.body.lines().count(), 1 + 30, "{from}: {}", csv.body);
        }
    })
    .await
    .unwrap();
}

// With the database stopped, many failing requests write one line to the log, not one each
// (the all-nodes view asks for every node every few seconds, in every tab); once requests are
// answered again, the next outage is said again.
#[tokio::test(flavor = "multi_thread")]
async fn an_outage_is_said_once_not_once_a_request() {
    use std::io::BufRead;
    use std::sync::{Arc, Mutex};

    let mut server = MongoServer::start();
    let db = common::unique_name("dash_outage");
    let addr = format!("127.0.0.1:{}", common::free_port());
    let mut child = dashboard_support::command(&server.uri, &db, "5s", &addr)
        .args(["--query-timeout", "1s"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start sensehat-dashboard");
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let stderr = child.stderr.take().unwrap();
    let _child = common::Reaped(child);
    let seen = lines.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            seen.lock().unwrap().push(line);
        }
    });
    // The warnings so far, once the log has had a moment to reach the reader.
    let warnings = move || {
        std::thread::sleep(Duration::from_millis(500));
        let lines = lines.lock().unwrap();
        lines
            .iter()
            .filter(|l| l.contains("WARN"))
            .cloned()
            .collect::<Vec<_>>()
    };
    let healthy = |addr: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while dashboard_support::get(addr, "/api/health").status != 200 {
            assert!(
                Instant::now() < deadline,
                "the dashboard never read the database"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let fail_many = |addr: &str, n: usize| {
        for i in 0..n {
            let path = ["/api/nodes", "/api/health", "/api/chart?node=node-a"][i % 3];
            let r = dashboard_support::get(addr, path);
            assert!(r.status >= 500, "{path}: {} {}", r.status, r.body);
        }
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(&addr).is_err() {
        assert!(Instant::now() < deadline, "the dashboard did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let addr2 = addr.clone();
    tokio::task::spawn_blocking(move || healthy(&addr2))
        .await
        .unwrap();
    let before = warnings().len();
    server.stop();
    let addr2 = addr.clone();
    tokio::task::spawn_blocking(move || fail_many(&addr2, 12))
        .await
        .unwrap();
    let said = warnings()[before..].to_vec();
    assert_eq!(said.len(), 1, "{said:#?}");
    assert!(said[0].contains("requests are failing"), "{said:#?}");
    // Back, answered, then down again: a new outage, said anew.
    server.launch();
    let addr2 = addr.clone();
    tokio::task::spawn_blocking(move || healthy(&addr2))
        .await
        .unwrap();
    server.stop();
    let addr2 = addr.clone();
    tokio::task::spawn_blocking(move || fail_many(&addr2, 3))
        .await
        .unwrap();
    let said = warnings()[before..].to_vec();
    assert_eq!(said.len(), 2, "{said:#?}");
}

// A page whose own name was pointed at 127.0.0.1 (DNS rebinding) is answered 421 on the page
// and the API, with how to allow the name, where it used to read every node's readings; IP
// addresses and localhost are answered, and so is a name given with --allowed-host.
#[tokio::test(flavor = "multi_thread")]
async fn only_allowed_host_names_are_answered() {
    let server = MongoServer::start();
    let db = ten_readings(&server, "dash_host").await;
    let dash = Dashboard::start(&server.uri, &db, "5s");
    let uri = server.uri.clone();
    tokio::task::spawn_blocking(move || {
        let port = |d: &Dashboard| d.addr.rsplit(':').next().unwrap().to_owned();
        let csv = format!(
            "/api/csv?node=node-a&from={}",
            dashboard_support::iso(T0_MS)
        );
        let paths = ["/", "/api/nodes", csv.as_str()];
        for path in paths {
            let r = get_as(&dash.addr, &format!("rebind.example:{}", port(&dash)), path);
            assert_eq!(r.status, 421, "{path}: {}", r.body);
            let said: Value = serde_json::from_str(&r.body).unwrap();
            let said = said["error"].as_str().unwrap();
            assert!(said.contains("--allowed-host rebind.example"), "{said}");
            assert!(!r.body.contains("node-a"), "{path}: {}", r.body);
            for host in ["127.0.0.1", "localhost", "[::1]"] {
                let host = format!("{host}:{}", port(&dash));
                let r = get_as(&dash.addr, &host, path);
                assert_eq!(r.status, 200, "{host}{path}: {}", r.body);
            }
        }
        // HTTP/1.0 without a Host: no browser sends that, and scripts may.
        let mut s = TcpStream::connect(&dash.addr).unwrap();
        s.write_all(b"GET /api/nodes HTTP/1.0\r\n\r\n").unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        assert_eq!(answer.split(' ').nth(1), Some("200"), "{answer}");
        let allowing =
            Dashboard::start_with(&uri, &db, "5s", &["--allowed-host", "rebind.example"]);
        for path in paths {
            let host = format!("rebind.example:{}", port(&allowing));
            let r = get_as(&allowing.addr, &host, path);
            assert_eq!(r.status, 200, "{host}{path}: {}", r.body);
            let host = format!("other.example:{}", port(&allowing));
            assert_eq!(get_as(&allowing.addr, &host, path).status, 421, "{host}");
        }
    })
    .await
    .unwrap();
}

// A query the server stops at its time limit (MaxTimeMSExpired, code 50: the database is up,
// the window long) is answered 503 saying to choose a shorter window or raise
// --query-timeout, and is no outage in the log. It was answered "database unavailable" and
// logged as one; and since the client gave up at the same moment the server would have, a
// slow window on a healthy database was said to be a database that did not answer.
#[tokio::test(flavor = "multi_thread")]
async fn a_query_the_server_stops_at_its_time_limit_is_no_outage() {
    use std::io::BufRead;
    use std::sync::{Arc, Mutex};

    let server = MongoServer::start();
    let db = ten_readings(&server, "dash_expired").await;
    let proxy = ZlibProxy::start_withholding(
        server.port,
        &[(
            "aggregate",
            // As a healthy server answers a query that took longer than its maxTimeMS.
            Withhold::CommandError(50, "MaxTimeMSExpired", "operation exceeded time limit"),
        )],
    );
    let addr = format!("127.0.0.1:{}", common::free_port());
    let mut child = dashboard_support::command(&proxy.uri(), &db, "5s", &addr)
        .args(["--query-timeout", "3s"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start sensehat-dashboard");
    let stderr = child.stderr.take().unwrap();
    let _child = common::Reaped(child);
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = lines.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            seen.lock().unwrap().push(line);
        }
    });
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(&addr).is_err() {
            assert!(Instant::now() < deadline, "the dashboard did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        let window = format!(
            "node=node-a&from={}&to={}",
            dashboard_support::iso(T0_MS),
            dashboard_support::iso(T0_MS + 60_000)
        );
        for path in ["/api/chart", "/api/series", "/api/motion"] {
            let path = format!("{path}?field=temperature&{window}");
            let r = dashboard_support::get(&addr, &path);
            assert_eq!(r.status, 503, "{path}: {}", r.body);
            let said: Value = serde_json::from_str(&r.body).unwrap();
            let said = said["error"].as_str().unwrap();
            assert!(
                said.contains("took longer than --query-timeout (3s)")
                    && said.contains("choose a shorter window or raise --query-timeout")
                    && !said.contains("unavailable"),
                "{said}"
            );
        }
        // The database answers what it can.
        assert_eq!(dashboard_support::get(&addr, "/api/nodes").status, 200);
        std::thread::sleep(Duration::from_millis(500));
        let warnings: Vec<String> = lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("WARN"))
            .cloned()
            .collect();
        assert!(warnings.is_empty(), "{warnings:#?}");
    })
    .await
    .unwrap();
}

// A createIndexes the server does not answer within --query-timeout (on a collection of many
// millions of readings the build outlasts it, and goes on in the server) is said as that, with
// what it usually means and that it is tried again: it was said as "the database did not
// answer", as if the database were down.
#[tokio::test(flavor = "multi_thread")]
async fn an_unanswered_create_index_says_the_build_may_go_on() {
    let server = MongoServer::start();
    let db = ten_readings(&server, "dash_index_slow").await;
    let proxy = ZlibProxy::start_withholding(server.port, &[("createIndexes", Withhold::Stall)]);
    let addr = format!("127.0.0.1:{}", common::free_port());
    let mut dashboard = dashboard_support::command(&proxy.uri(), &db, "5s", &addr);
    dashboard.args(["--query-timeout", "2s"]);
    let waiting = "trying again every 30 s";
    let line = common::first_stderr_line(dashboard, waiting, Duration::from_secs(30)).await;
    assert!(line.contains("WARN"), "{line}");
    for said in [
        "did not answer createIndexes within 2s",
        "still building the index",
        "charts are slow until it is done",
        "or the database is down",
        "\"index ready\" is logged",
    ] {
        assert!(line.contains(said), "{said:?} in {line}");
    }
    assert_eq!(commands(&proxy, "createIndexes"), 1);
}

// A database that answers nothing (listIndexes unanswered too) is said as away, not as an index
// build under way: an unanswered createIndexes means a build only where the database answered.
#[tokio::test(flavor = "multi_thread")]
async fn an_unanswering_database_is_not_taken_for_an_index_build() {
    let server = MongoServer::start();
    let db = ten_readings(&server, "dash_index_away").await;
    let stalled = [
        ("listIndexes", Withhold::Stall),
        ("createIndexes", Withhold::Stall),
    ];
    let proxy = ZlibProxy::start_withholding(server.port, &stalled);
    let addr = format!("127.0.0.1:{}", common::free_port());
    let mut dashboard = dashboard_support::command(&proxy.uri(), &db, "5s", &addr);
    dashboard.args(["--query-timeout", "2s"]);
    let waiting = "trying again every 30 s";
    let line = common::first_stderr_line(dashboard, waiting, Duration::from_secs(30)).await;
    assert!(line.contains("cannot create the index yet"), "{line}");
    assert!(line.contains("did not answer within 2s"), "{line}");
    assert!(!line.contains("building"), "{line}");
    assert_eq!(commands(&proxy, "createIndexes"), 0);
}

/// The commands named `name` that `proxy` has passed on.
fn commands(proxy: &ZlibProxy, name: &str) -> usize {
    let named = |s: &&Sent| matches!(s, Sent::Command { name: n, .. } if n == name);
    proxy.sent().iter().filter(named).count()
}

// The dashboard creates its index where it is missing, and where an admin made it (under any
// name) does not try to: a read-only user, refused `createIndexes`, was warned at every start
// to make an index that was there.
#[tokio::test(flavor = "multi_thread")]
async fn the_index_is_made_where_missing_and_only_there() {
    use mongodb::IndexModel;
    let server = MongoServer::start();
    let client = server.client().await;
    let keys = mongodb::bson::doc! { "nodeName": 1, "recordedAt": 1 };
    let names = |db: String| {
        let reports = client
            .database(&db)
            .collection::<mongodb::bson::Document>("reports");
        async move { reports.list_index_names().await.unwrap() }
    };

    let missing = ten_readings(&server, "dash_index_missing").await;
    let made_by_admin = ten_readings(&server, "dash_index_there").await;
    let model = IndexModel::builder()
        .keys(keys)
        .options(
            mongodb::options::IndexOptions::builder()
                .name("by_node_time".to_owned())
                .build(),
        )
        .build();
    client
        .database(&made_by_admin)
        .collection::<mongodb::bson::Document>("reports")
        .create_index(model)
        .await
        .unwrap();

    let proxy = ZlibProxy::start_withholding(server.port, &[("createIndexes", Withhold::Refuse)]);
    let (read_only, admin) = (proxy.uri(), server.uri.clone());
    let (m, t) = (missing.clone(), made_by_admin.clone());
    let (proxy, _making) = tokio::task::spawn_blocking(move || {
        let making = Dashboard::start(&admin, &m, "5s");
        let _read_only = Dashboard::start(&read_only, &t, "5s");
        let deadline = Instant::now() + Duration::from_secs(30);
        while commands(&proxy, "listIndexes") + commands(&proxy, "createIndexes") == 0 {
            assert!(
                Instant::now() < deadline,
                "the dashboard never looked at its index"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // Time for a createIndexes after the look, had there been one.
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(commands(&proxy, "createIndexes"), 0);
        (proxy, making)
    })
    .await
    .unwrap();
    drop(proxy);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !names(missing.clone())
        .await
        .contains(&"nodeName_1_recordedAt_1".to_owned())
    {
        assert!(Instant::now() < deadline, "the missing index was not made");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        names(made_by_admin).await.len(),
        2,
        "_id and the admin's own"
    );
}
