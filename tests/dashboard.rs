//! The dashboard binary against a real MongoDB wire-protocol server (SecantusDB) holding
//! readings this file generates: every series, motion mark and CSV row is checked against
//! values computed here from the same documents.
#![cfg(feature = "dashboard")]

mod common;
mod dashboard_support;
#[path = "common/metrics.rs"]
mod metrics_common;

use std::collections::BTreeMap;
use std::time::Duration;

use mongodb::bson::{DateTime, Document};
use serde_json::Value;

use common::wire::{Sent, Withhold, ZlibProxy};
use common::MongoServer;
use dashboard_support::{insert, iso, ms, readings, ten_readings, Dashboard, T0_MS};

const MIN: i64 = 60_000;
const HOUR: i64 = 60 * MIN;
/// Node b is silent from 40 min to 1 h 10 min.
const GAP: std::ops::Range<i64> = T0_MS + 40 * MIN..T0_MS + 70 * MIN;

/// Three nodes, a reading every 7 s for three hours; b has a gap; a and b move now and then.
fn dataset() -> Vec<Document> {
    let n = (3 * HOUR / 7_000) as u32;
    let mut docs = readings("node-a", 0, T0_MS, 7_000, n, 0..0, 97);
    docs.extend(readings("node-b", 1, T0_MS + 3_000, 7_000, n, GAP, 61));
    docs.extend(readings("node-c", 2, T0_MS + 5_000, 7_000, n, 0..0, 0));
    docs
}

fn value(d: &Document, path: &str) -> Option<f64> {
    match path.split_once('.') {
        Some((a, b)) => d.get_document(a).ok()?.get_f64(b).ok(),
        None => d.get_f64(path).ok(),
    }
}

/// (avg, min, max, count) per bucket start, computed here the way the issue defines buckets.
fn expected(
    docs: &[Document],
    node: &str,
    field: &str,
    from: i64,
    to: i64,
    w: i64,
) -> BTreeMap<i64, (f64, f64, f64, i64)> {
    let mut sums: BTreeMap<i64, (f64, f64, f64, i64)> = BTreeMap::new();
    for d in docs.iter().filter(|d| d.get_str("nodeName") == Ok(node)) {
        let t = d.get_datetime("recordedAt").unwrap().timestamp_millis();
        if t < from || t >= to {
            continue;
        }
        // Only finite doubles are readings: this file's odd documents hold other things.
        let Some(v) = value(d, field).filter(|v| v.is_finite()) else {
            continue;
        };
        // The bucket's start: the last multiple of w at or before t (floor, before 1970 too).
        let start = (t as f64 / w as f64).floor() as i64 * w;
        let e = sums.entry(start).or_insert((0.0, f64::MAX, f64::MIN, 0));
        *e = (e.0 + v, e.1.min(v), e.2.max(v), e.3 + 1);
    }
    sums.into_iter()
        .map(|(k, (s, lo, hi, n))| (k, (s / n as f64, lo, hi, n)))
        .collect()
}

/// One series request checked point by point against [`expected`].
fn check_series(
    dash: &Dashboard,
    docs: &[Document],
    node: &str,
    field: &str,
    from: i64,
    to: i64,
) -> usize {
    let url = format!(
        "/api/series?node={node}&field={field}&from={}&to={}",
        iso(from),
        iso(to)
    );
    let s = dash.json(&url);
    let w = (s["bucketSeconds"].as_f64().unwrap() * 1000.0) as i64;
    let points = s["points"].as_array().unwrap();
    assert!(points.len() <= 600, "{url}: {} points", points.len());
    assert!(
        w * 599 >= to - from,
        "{url}: buckets of {w} ms cannot fit 600"
    );
    let want = expected(docs, node, field, from, to, w);
    assert_eq!(points.len(), want.len(), "{url}");
    for (p, (t, (avg, lo, hi, n))) in points.iter().zip(&want) {
        assert_eq!(ms(&p["t"]), *t, "{url}: bucket start");
        assert_eq!(p["count"].as_i64().unwrap(), *n, "{url} at {t}");
        for (k, v) in [("avg", avg), ("min", lo), ("max", hi)] {
            let got = p[k].as_f64().unwrap();
            assert!((got - v).abs() < 1e-9, "{url} at {t}: {k} {got} != {v}");
        }
    }
    points.len()
}

// Series of each field, with window edges inside buckets, equal what the test computes from the
// same documents; the gap has no points; any window gives at most 600 points.
#[tokio::test(flavor = "multi_thread")]
async fn series_are_bucketed_as_computed_here() {
    let server = MongoServer::start();
    let db = common::unique_name("dash_series");
    let docs = dataset();
    insert(&server.client().await, &db, docs.clone()).await;
    let dash = Dashboard::start(&server.uri, &db, "1h");
    tokio::task::spawn_blocking(move || {
        let (from, to) = (
            T0_MS + 13 * MIN + 27_300,
            T0_MS + 2 * HOUR + 41 * MIN + 1_234,
        );
        for field in [
            "temperature",
            "humidity",
            "pressure",
            "acceleration.x",
            "acceleration.y",
            "acceleration.z",
        ] {
            assert!(check_series(&dash, &docs, "node-a", field, from, to) > 100);
        }
        // A short window: one reading a bucket, so avg = min = max.
        check_series(
            &dash,
            &docs,
            "node-c",
            "temperature",
            T0_MS + 10 * MIN + 1,
            T0_MS + 12 * MIN,
        );
        // A month around the data: one bucket holds hours of readings.
        check_series(
            &dash,
            &docs,
            "node-b",
            "pressure",
            T0_MS - 20 * 24 * HOUR,
            T0_MS + 10 * 24 * HOUR,
        );
        // The gap: buckets of b there are absent, the neighbours present.
        let url = format!(
            "/api/series?node=node-b&field=temperature&from={}&to={}",
            iso(T0_MS),
            iso(T0_MS + 3 * HOUR)
        );
        let s = dash.json(&url);
        let times: Vec<i64> = s["points"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| ms(&p["t"]))
            .collect();
        let w = (s["bucketSeconds"].as_f64().unwrap() * 1000.0) as i64;
        assert!(
            !times
                .iter()
                .any(|t| *t + w > GAP.start + 7_000 && *t < GAP.end - 7_000),
            "points in the gap"
        );
        assert!(times.iter().any(|t| *t < GAP.start) && times.iter().any(|t| *t >= GAP.end));
        assert!(
            check_series(
                &dash,
                &docs,
                "node-b",
                "temperature",
                T0_MS,
                T0_MS + 3 * HOUR
            ) > 0
        );
    })
    .await
    .unwrap();
}

// Readings on both sides of 1970-01-01 (negative times) are bucketed as computed here, each in
// the bucket that starts at or before it: the pipeline's `$mod` keeps the dividend's sign, and
// every bucket before 1970 used to be labelled with its end and hold the wrong readings.
#[tokio::test(flavor = "multi_thread")]
async fn readings_before_1970_are_bucketed_by_their_start() {
    let server = MongoServer::start();
    let db = common::unique_name("dash_1970");
    let docs = readings("old-pi", 0, -90 * MIN - 2_500, 7_000, 1_545, 0..0, 0);
    insert(&server.client().await, &db, docs.clone()).await;
    let dash = Dashboard::start(&server.uri, &db, "1h");
    tokio::task::spawn_blocking(move || {
        for (from, to) in [
            (-2 * HOUR + 1_234, 2 * HOUR - 4_321),
            (-10 * MIN - 3_700, 10 * MIN + 2_900),
        ] {
            for field in ["temperature", "pressure"] {
                assert!(check_series(&dash, &docs, "old-pi", field, from, to) > 20);
            }
        }
    })
    .await
    .unwrap();
}

// A reading that is not a finite number (a string, a Decimal128, a sub-document, NaN, an
// infinity) is left out of its bucket in /api/series and in /api/chart, which the page draws:
// it used to win the bucket's $min or $max by BSON's order, or carry NaN into its average,
// and the chart dropped the bucket's other readings with it or drew them at zero.
#[tokio::test(flavor = "multi_thread")]
async fn readings_that_are_not_finite_numbers_are_left_out() {
    use mongodb::bson::{doc, Bson, Decimal128};
    let server = MongoServer::start();
    let db = common::unique_name("dash_odd");
    let mut docs = readings("node-odd", 0, T0_MS, 7_000, 600, 0..0, 0);
    let odd: [Bson; 6] = [
        Bson::String("21.5".into()),
        Bson::Decimal128("21.5".parse::<Decimal128>().unwrap()),
        Bson::Document(doc! { "c": 21.5 }),
        Bson::Double(f64::NAN),
        Bson::Double(f64::INFINITY),
        Bson::Double(f64::NEG_INFINITY),
    ];
    for (i, d) in docs.iter_mut().enumerate().filter(|(i, _)| i % 9 == 4) {
        d.insert("temperature", odd[i / 9 % odd.len()].clone());
    }
    insert(&server.client().await, &db, docs.clone()).await;
    let dash = Dashboard::start(&server.uri, &db, "1h");
    tokio::task::spawn_blocking(move || {
        let (from, to) = (T0_MS, T0_MS + 600 * 7_000);
        let buckets = check_series(&dash, &docs, "node-odd", "temperature", from, to);
        let chart = dash.json(&format!(
            "/api/chart?node=node-odd&from={}&to={}",
            iso(from),
            iso(to)
        ));
        let w = (chart["bucketSeconds"].as_f64().unwrap() * 1000.0) as i64;
        let want = expected(&docs, "node-odd", "temperature", from, to, w);
        let points = chart["series"]["temperature"].as_array().unwrap();
        assert_eq!((points.len(), want.len()), (buckets, buckets));
        for (p, (t, (avg, lo, hi, n))) in points.iter().zip(&want) {
            assert_eq!(ms(&p["t"]), *t);
            assert_eq!(p["count"].as_i64(), Some(*n), "at {t}");
            for (k, v) in [("avg", avg), ("min", lo), ("max", hi)] {
                let got = p[k].as_f64().unwrap_or(f64::NAN);
                assert!((got - v).abs() < 1e-9, "at {t}: {k} {got} != {v}");
            }
        }
        // The other fields of the same documents are whole.
        let humidity = chart["series"]["humidity"].as_array().unwrap();
        let readings: i64 = humidity.iter().map(|p| p["count"].as_i64().unwrap()).sum();
        assert_eq!(readings, 600);
    })
    .await
    .unwrap();
}

// Readings whose recordedAt is a string (the Firehose endpoint without --parse-dates) show
// nowhere, since every query ranges over dates: the dashboard says so at start, with the fix.
#[tokio::test(flavor = "multi_thread")]
async fn readings_without_dates_are_said_at_start() {
    let server = MongoServer::start();
    let db = common::unique_name("dash_strings");
    let mut docs = readings("node-s", 0, T0_MS, 7_000, 5, 0..0, 0);
    for d in &mut docs {
        let t = d.get_datetime("recordedAt").unwrap().timestamp_millis();
        d.insert("recordedAt", iso(t));
        d.insert("_id", mongodb::bson::oid::ObjectId::new());
    }
    server
        .client()
        .await
        .database(&db)
        .collection::<Document>("firehose")
        .insert_many(docs)
        .await
        .unwrap();
    let mut dashboard = dashboard_support::command(&server.uri, &db, "15s", "127.0.0.1:0");
    dashboard.args(["--collection", "firehose"]);
    let said = "recordedAt is not a date";
    let line = common::first_stderr_line(dashboard, said, Duration::from_secs(30)).await;
    assert!(line.contains("recorded_at=String"), "{line}");
    assert!(line.contains("--parse-dates recordedAt"), "{line}");
}

// Motion marks are the buckets holding isMoving readings, with their counts; a node that never
// moves has none.
#[tokio::test(flavor = "multi_thread")]
async fn motion_marks_are_the_moving_buckets() {
    let server = MongoServer::start();
    let db = common::unique_name("dash_motion");
    let docs = dataset();
    insert(&server.client().await, &db, docs.clone()).await;
    let dash = Dashboard::start(&server.uri, &db, "1h");
    tokio::task::spawn_blocking(move || {
        let (from, to) = (T0_MS + 5 * MIN + 500, T0_MS + 3 * HOUR);
        for node in ["node-a", "node-b", "node-c"] {
            let m = dash.json(&format!(
                "/api/motion?node={node}&from={}&to={}",
                iso(from),
                iso(to)
            ));
            let w = (m["bucketSeconds"].as_f64().unwrap() * 1000.0) as i64;
            let mut want: BTreeMap<i64, i64> = BTreeMap::new();
            for d in docs
                .iter()
                .filter(|d| d.get_str("nodeName") == Ok(node) && d.get_bool("isMoving") == Ok(true))
            {
                let t = d.get_datetime("recordedAt").unwrap().timestamp_millis();
                if (from..to).contains(&t) {
                    *want.entry(t - t % w).or_default() += 1;
                }
            }
            let got: BTreeMap<i64, i64> = m["marks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| (ms(&k["t"]), k["count"].as_i64().unwrap()))
                .collect();
            assert_eq!(got, want, "{node}");
            assert_eq!(got.is_empty(), node == "node-c");
        }
    })
    .await
    .unwrap();
}

// /api/nodes lists each node's latest report under the stored names with its age, stale past
// --stale-after (given too); the CSV of a window holds exactly its readings, in time order.
#[tokio::test(flavor = "multi_thread")]
async fn nodes_and_csv() {
    let server = MongoServer::start();
    let db = common::unique_name("dash_nodes");
    let client = server.client().await;
    let mut docs = dataset();
    let now = DateTime::now().timestamp_millis();
    let fresh = readings("node-fresh", 3, now - 2_000, 500, 2, 0..0, 0);
    docs.extend(fresh.clone());
    insert(&client, &db, docs.clone()).await;
    let dash = Dashboard::start(&server.uri, &db, "1h");
    tokio::task::spawn_blocking(move || {
        let list = dash.json("/api/nodes");
        let list = list.as_array().unwrap();
        let names: Vec<&str> = list
            .iter()
            .map(|n| n["nodeName"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["node-a", "node-b", "node-c", "node-fresh"]);
        for n in list {
            let node = n["nodeName"].as_str().unwrap();
            let last = docs
                .iter()
                .filter(|d| d.get_str("nodeName") == Ok(node))
                .max_by_key(|d| d.get_datetime("recordedAt").unwrap().timestamp_millis())
                .unwrap();
            assert_eq!(
                ms(&n["recordedAt"]),
                last.get_datetime("recordedAt").unwrap().timestamp_millis()
            );
            assert_eq!(n["temperature"].as_f64(), last.get_f64("temperature").ok());
            assert_eq!(
                n["acceleration"]["z"].as_f64(),
                value(last, "acceleration.z")
            );
            assert_eq!(n["isMoving"].as_bool(), last.get_bool("isMoving").ok());
            assert_eq!(n["stale"], node != "node-fresh", "{node}");
            assert!(n["ageSeconds"].as_f64().unwrap() >= 0.0);
            assert_eq!(n["staleAfterSeconds"].as_f64(), Some(3600.0));
        }
        let (from, to) = (T0_MS + 30 * MIN + 1, T0_MS + 35 * MIN);
        let r = dash.get(&format!(
            "/api/csv?node=node-a&from={}&to={}",
            iso(from),
            iso(to)
        ));
        assert_eq!(r.status, 200);
        let lines: Vec<&str> = r.body.lines().collect();
        assert!(lines[0].starts_with("recordedAt,nodeName,temperature,"));
        let want: Vec<&Document> = docs
            .iter()
            .filter(|d| {
                let t = d.get_datetime("recordedAt").unwrap().timestamp_millis();
                d.get_str("nodeName") == Ok("node-a") && (from..to).contains(&t)
            })
            .collect();
        assert_eq!(lines.len() - 1, want.len());
        let first: Vec<&str> = lines[1].split(',').collect();
        assert_eq!(first[1], "node-a");
        assert_eq!(
            first[2].parse::<f64>().ok(),
            want[0].get_f64("temperature").ok()
        );
    })
    .await
    .unwrap();
}

// A window holding more readings than a CSV may (here a cap of 100, against 150 readings) is
// refused with 422 and a reason saying to choose a shorter window, before any row goes out;
// it used to be cut at the cap, leaving out the newest readings with only a header to say so.
// A window at or under the cap downloads every reading, the newest too.
#[tokio::test(flavor = "multi_thread")]
async fn a_csv_window_over_the_cap_is_refused_not_cut() {
    let server = MongoServer::start();
    let db = common::unique_name("dash_csv_cap");
    let docs = readings("node-a", 0, T0_MS, 1_000, 150, 0..0, 0);
    insert(&server.client().await, &db, docs.clone()).await;
    let dash = Dashboard::start_with(&server.uri, &db, "1h", &["--csv-max-rows", "100"]);
    tokio::task::spawn_blocking(move || {
        let csv = |to_s: i64| {
            dash.get(&format!(
                "/api/csv?node=node-a&from={}&to={}",
                iso(T0_MS),
                iso(T0_MS + to_s * 1_000)
            ))
        };
        let r = csv(150);
        assert_eq!(r.status, 422, "{}", r.body);
        let said: Value = serde_json::from_str(&r.body).unwrap();
        let said = said["error"].as_str().unwrap();
        assert!(
            said.contains("more than 100 readings") && said.contains("shorter window"),
            "{said}"
        );
        for n in [100, 60] {
            let r = csv(n);
            assert_eq!(r.status, 200, "{}", r.body);
            let lines: Vec<&str> = r.body.lines().skip(1).collect();
            assert_eq!(lines.len(), n as usize);
            let newest = lines[lines.len() - 1].split(',').next().unwrap();
            let newest = DateTime::parse_rfc3339_str(newest).unwrap();
            assert_eq!(newest.timestamp_millis(), T0_MS + (n - 1) * 1_000);
        }
    })
    .await
    .unwrap();
}

// Bad input is answered with a status saying whose fault it is and a JSON reason.
#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_refused_with_a_reason() {
    let server = MongoServer::start();
    let db = ten_readings(&server, "dash_bad").await;
    let dash = Dashboard::start(&server.uri, &db, "5s");
    tokio::task::spawn_blocking(move || {
        let (f, t) = (iso(T0_MS), iso(T0_MS + HOUR));
        for (path, status, says) in [
            (
                format!("/api/series?node=nobody&field=temperature&from={f}&to={t}"),
                404,
                "nobody",
            ),
            (
                format!("/api/motion?node=nobody&from={f}&to={t}"),
                404,
                "nobody",
            ),
            (
                format!("/api/csv?node=nobody&from={f}&to={t}"),
                404,
                "nobody",
            ),
            (
                format!("/api/series?node=node-a&field=isMoving&from={f}&to={t}"),
                400,
                "unknown field",
            ),
            (
                format!("/api/series?node=node-a&field=temperature&from=yesterday&to={t}"),
                400,
                "from",
            ),
            (
                format!(
                    "/api/series?node=node-a&field=temperature&from={f}&to=2026-13-01T00:00:00Z"
                ),
                400,
                "to",
            ),
            (
                "/api/chart?node=node-a&from=9999-12-30T00:00:00Z&to=9999-12-31T23:59:59-23:59"
                    .to_owned(),
                400,
                "outside the years 0 to 9999",
            ),
            (
                format!("/api/series?node=node-a&field=temperature&from={t}&to={f}"),
                400,
                "before",
            ),
            (
                format!("/api/series?node=node-a&field=temperature&from={f}&to={f}"),
                400,
                "before",
            ),
            (
                format!(
                    "/api/series?node=node-a&field=temperature&from=2025-01-01T00:00:00Z&to={t}"
                ),
                400,
                "400 days",
            ),
            (
                format!("/api/series?field=temperature&from={f}&to={t}"),
                400,
                "node",
            ),
            (
                format!("/api/series?node=node-a&from={f}&to={t}"),
                400,
                "field",
            ),
        ] {
            let r = dash.get(&path);
            assert_eq!(r.status, status, "{path}: {}", r.body);
            let v: Value = serde_json::from_str(&r.body).unwrap();
            let msg = v["error"].as_str().unwrap();
            assert!(msg.contains(says) && !msg.contains('\n'), "{path}: {msg}");
        }
    })
    .await
    .unwrap();
}

// A user without the privilege to read the collection gets 500, "database refused", with the
// server's reason and what to grant: retrying (what a 503 asks for) will not mend it; and the
// dashboard is not ready. SecantusDB has no users or roles, so a proxy in front of it refuses
// the reads as mongod does (code 13); a ping still goes through, as it would for such a user.
#[tokio::test(flavor = "multi_thread")]
async fn a_missing_privilege_is_answered_500_with_what_to_grant() {
    use metrics_common::{free_addr, get, wait_serving};
    let server = MongoServer::start();
    let db = ten_readings(&server, "dash_denied").await;
    let refused = ["distinct", "aggregate", "find", "createIndexes"].map(|c| (c, Withhold::Refuse));
    let proxy = ZlibProxy::start_withholding(server.port, &refused);
    let metrics = free_addr();
    let dash = Dashboard::start_with(&proxy.uri(), &db, "5s", &["--metrics-listen", &metrics]);
    wait_serving(&metrics).await;
    tokio::task::spawn_blocking(move || {
        for path in [
            "/api/nodes",
            "/api/series?node=node-a&field=temperature",
            "/api/health",
        ] {
            let r = dash.get(path);
            assert_eq!(r.status, 500, "{path}: {}", r.body);
            let v: Value = serde_json::from_str(&r.body).unwrap();
            let msg = v["error"].as_str().unwrap();
            assert!(msg.starts_with("database refused"), "{msg}");
            assert!(msg.contains("not authorized on"), "{msg}");
            assert!(msg.contains("read role"), "{msg}");
        }
        // Readiness reads the collection as every page does, so it fails as they do; a ping,
        // which needs no privilege, said ready.
        let ready = get(&metrics, "/readyz").unwrap();
        assert_eq!(ready.status, 503, "{}", ready.body);
        assert!(
            ready
                .body
                .starts_with("not ready: cannot read the readings: ")
                && ready.body.contains("not authorized on"),
            "{}",
            ready.body
        );
        drop(dash);
    })
    .await
    .unwrap();
}

/// A dashboard whose every `distinct` is held at the server (the node list's read hangs) with
/// `--query-timeout` of `timeout`, and a count of the `distinct`s that reached the server.
fn names_held(timeout: &str) -> (MongoServer, Dashboard, impl Fn() -> usize + Send + 'static) {
    let server = MongoServer::start();
    let db = common::unique_name("dash_hang");
    let proxy = ZlibProxy::start_withholding(server.port, &[("distinct", Withhold::Stall)]);
    let dash = Dashboard::start_with(&proxy.uri(), &db, "5s", &["--query-timeout", timeout]);
    let distincts = move || {
        let sent = proxy.sent();
        let is_distinct = |s: &&Sent| matches!(s, Sent::Command { name, .. } if name == "distinct");
        sent.iter().filter(is_distinct).count()
    };
    (server, dash, distincts)
}

/// Wait until `distincts` says a read of the node list has reached the server.
fn until_a_distinct_is_held(distincts: &impl Fn() -> usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while distincts() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no distinct reached the server"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// GET /api/nodes from `addr` on a thread of its own.
fn ask_nodes(addr: &str) -> std::thread::JoinHandle<dashboard_support::Reply> {
    let addr = addr.to_owned();
    std::thread::spawn(move || dashboard_support::get(&addr, "/api/nodes"))
}

// With the database hanging, requests for the node list that come while one waits for it take
// its outcome: one `distinct` reaches the server and each request is answered 503, rather than
// each waiting for the one before it to time out and then timing out in turn.
#[tokio::test(flavor = "multi_thread")]
async fn requests_waiting_for_the_node_list_share_one_failed_read() {
    // Long enough that the later requests surely come while the first one's read is held.
    let (_server, dash, distincts) = names_held("20s");
    tokio::task::spawn_blocking(move || {
        let mut asked = vec![ask_nodes(&dash.addr)];
        // The others are sent once the first one's read is held at the server.
        until_a_distinct_is_held(&distincts);
        asked.extend((0..3).map(|_| ask_nodes(&dash.addr)));
        for a in asked {
            let r = a.join().unwrap();
            assert_eq!(r.status, 503, "{}", r.body);
        }
        assert_eq!(
            distincts(),
            1,
            "one read of the names for the four requests"
        );
    })
    .await
    .unwrap();
}

// The request that began the node list's read may be dropped (its client went away); the read
// goes on for the requests waiting for it, which get its outcome, and no second read is sent.
#[tokio::test(flavor = "multi_thread")]
async fn the_node_list_read_outlives_the_request_that_began_it() {
    let (_server, dash, distincts) = names_held("8s");
    tokio::task::spawn_blocking(move || {
        let mut first = std::net::TcpStream::connect(&dash.addr).unwrap();
        let request = format!("GET /api/nodes HTTP/1.1\r\nHost: {}\r\n\r\n", dash.addr);
        std::io::Write::write_all(&mut first, request.as_bytes()).unwrap();
        until_a_distinct_is_held(&distincts);
        let waiting: Vec<_> = (0..2).map(|_| ask_nodes(&dash.addr)).collect();
        // The waiters' requests are in before the first client goes.
        std::thread::sleep(Duration::from_millis(500));
        first.shutdown(std::net::Shutdown::Both).unwrap();
        drop(first);
        for w in waiting {
            let r = w.join().unwrap();
            assert_eq!(r.status, 503, "{}", r.body);
            assert!(r.body.contains("did not answer within 8s"), "{}", r.body);
        }
        assert_eq!(distincts(), 1, "the waiters took the first read's outcome");
    })
    .await
    .unwrap();
}

// Pages that ask for the node list at once share one sweep of the nodes: the database's work
// does not grow with the number of viewers. Five nodes, eight requests together: one sweep is
// five `find`s (two if the requests straddle the reuse of a second); one per request was 40.
#[tokio::test(flavor = "multi_thread")]
async fn pages_asking_at_once_share_one_sweep_of_the_nodes() {
    let server = MongoServer::start();
    let db = common::unique_name("dash_sweep");
    let names = ["n1", "n2", "n3", "n4", "n5"];
    let docs = (0..5u32).flat_map(|k| readings(names[k as usize], k, T0_MS, 1_000, 3, 0..0, 0));
    insert(&server.client().await, &db, docs.collect()).await;
    let proxy = ZlibProxy::start(server.port);
    let dash = Dashboard::start_with(&proxy.uri(), &db, "5s", &[]);
    tokio::task::spawn_blocking(move || {
        let finds = || {
            let is_find = |s: &&Sent| matches!(s, Sent::Command { name, .. } if name == "find");
            proxy.sent().iter().filter(is_find).count()
        };
        // The start's own reads are done once a list has been answered, and it is kept no
        // longer than a second.
        assert_eq!(dash.get("/api/nodes").status, 200);
        std::thread::sleep(Duration::from_millis(1_200));
        let before = finds();
        let asked: Vec<_> = (0..8).map(|_| ask_nodes(&dash.addr)).collect();
        for a in asked {
            let r = a.join().unwrap();
            assert_eq!(r.status, 200, "{}", r.body);
            let list: Value = serde_json::from_str(&r.body).unwrap();
            let got: Vec<&str> = list
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n["nodeName"].as_str().unwrap())
                .collect();
            assert_eq!(got, names);
        }
        let sent = finds() - before;
        assert!(sent <= 2 * names.len(), "{sent} finds for 8 requests");
    })
    .await
    .unwrap();
}

// Pages waiting for the node list hold none of the API's turns at querying: with the list's
// read hanging and ten pages waiting for it, the health check is still answered, where it was
// answered "busy" once eight of them held every turn.
#[tokio::test(flavor = "multi_thread")]
async fn pages_waiting_for_the_node_list_leave_turns_for_the_rest() {
    let (_server, dash, distincts) = names_held("6s");
    tokio::task::spawn_blocking(move || {
        let mut asked = vec![ask_nodes(&dash.addr)];
        until_a_distinct_is_held(&distincts);
        asked.extend((0..9).map(|_| ask_nodes(&dash.addr)));
        std::thread::sleep(Duration::from_millis(500));
        let health = dash.get("/api/health");
        assert_eq!(health.status, 200, "{}", health.body);
        for a in asked {
            assert_eq!(a.join().unwrap().status, 503);
        }
    })
    .await
    .unwrap();
}

// With the database down the API answers 503 with a one-line reason within seconds, and
// answers again once the database is back, without a restart.
#[tokio::test(flavor = "multi_thread")]
async fn database_down_is_503_then_recovers() {
    let Some(mut server) = MongoServer::start_persistent() else {
        return;
    };
    let db = ten_readings(&server, "dash_down").await;
    let dash = Dashboard::start(&server.uri, &db, "5s");
    let dash = tokio::task::spawn_blocking(move || {
        assert_eq!(dash.json("/api/nodes").as_array().unwrap().len(), 1);
        dash
    })
    .await
    .unwrap();
    server.stop();
    let dash = tokio::task::spawn_blocking(move || {
        // The node list answered before the stop is reused for a second (one sweep serves
        // every page that asks meanwhile).
        std::thread::sleep(Duration::from_millis(1_100));
        for path in [
            "/api/nodes",
            "/api/health",
            "/api/series?node=node-a&field=temperature",
        ] {
            let started = std::time::Instant::now();
            let r = dash.get(path);
            assert_eq!(r.status, 503, "{path}: {}", r.body);
            assert!(
                started.elapsed() < Duration::from_secs(8),
                "{path} took {:?}",
                started.elapsed()
            );
            let v: Value = serde_json::from_str(&r.body).unwrap();
            let msg = v["error"].as_str().unwrap();
            assert!(
                msg.starts_with("database unavailable") && !msg.contains('\n'),
                "{msg}"
            );
        }
        dash
    })
    .await
    .unwrap();
    server.launch();
    tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while dash.get("/api/nodes").status != 200 {
            assert!(
                std::time::Instant::now() < deadline,
                "the dashboard did not recover"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        assert_eq!(dash.json("/api/nodes").as_array().unwrap().len(), 1);
    })
    .await
    .unwrap();
}

// With --metrics-listen, requests are counted by route and status code (a path no route has
// is `other`), parsed by the real parser, linted by promtool and scraped by a real Prometheus;
// /healthz answers while the process serves, /readyz follows the database.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_requests_and_readyz_follows_the_database() {
    use metrics_common::{free_addr, get, lint, scrape, value, wait_serving, Prometheus};
    let Some(mut server) = MongoServer::start_persistent() else {
        return;
    };
    let db = ten_readings(&server, "dash_metrics").await;
    let metrics = free_addr();
    let dash = Dashboard::start_with(&server.uri, &db, "5s", &["--metrics-listen", &metrics]);
    wait_serving(&metrics).await;
    let m = metrics.clone();
    let dash = tokio::task::spawn_blocking(move || {
        assert_eq!(dash.json("/api/nodes").as_array().unwrap().len(), 1);
        assert_eq!(dash.json("/api/nodes").as_array().unwrap().len(), 1);
        assert_eq!(dash.get("/api/series?node=node-a&field=colour").status, 400);
        assert_eq!(dash.get("/wp-login.php").status, 404);
        let samples = scrape(&m);
        let requests = |route: &str, code: u16| {
            value(
                &samples,
                &format!("sensehat_dashboard_requests_total{{code=\"{code}\",route=\"{route}\"}}"),
            )
        };
        assert_eq!(requests("/api/nodes", 200), 2.0);
        assert_eq!(requests("/api/series", 400), 1.0);
        assert_eq!(requests("other", 404), 1.0);
        assert_eq!(
            value(
                &samples,
                "sensehat_dashboard_request_duration_seconds_count{route=\"/api/nodes\"}"
            ),
            2.0
        );
        assert!(
            !samples.keys().any(|k| k.contains("wp-login")),
            "{samples:?}"
        );
        lint(&get(&m, "/metrics").unwrap().body);
        let ready = get(&m, "/readyz").unwrap();
        assert_eq!((ready.status, ready.body.as_str()), (200, "ready\n"));
        dash
    })
    .await
    .unwrap();

    let prometheus = Prometheus::start(&[("sensehat_dashboard", &metrics)]);
    prometheus
        .wait_for("up{job=\"sensehat_dashboard\"}", |v| v == 1.0)
        .await;
    prometheus
        .wait_for(
            "sensehat_dashboard_requests_total{route=\"/api/nodes\",code=\"200\"}",
            |v| v == 2.0,
        )
        .await;

    server.stop();
    let m = metrics.clone();
    tokio::task::spawn_blocking(move || {
        assert_eq!(get(&m, "/healthz").unwrap().status, 200);
        let ready = get(&m, "/readyz").unwrap();
        assert_eq!(ready.status, 503, "{}", ready.body);
        assert!(
            ready.body.starts_with("not ready: ") && ready.body.trim_end().lines().count() == 1,
            "{}",
            ready.body
        );
        drop(dash);
    })
    .await
    .unwrap();
}
