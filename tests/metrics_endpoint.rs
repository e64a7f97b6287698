//! The Firehose endpoint's metrics and health, through the real binary over real HTTP, with the
//! real test MongoDB server behind it: parsed by prometheus-client, linted by promtool, and
//! scraped by a real Prometheus.
#![cfg(feature = "firehose")]

mod common;
#[path = "common/firehose.rs"]
mod firehose_common;
#[path = "common/metrics.rs"]
mod metrics_common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{free_port, unique_name, wait_until, MongoServer, Reaped};
use firehose_common::{check_shape, firehose_body, firehose_headers, gzip, reports, send, KEY};
use metrics_common::{free_addr, get, lint, scrape, value, wait_serving, Prometheus};

/// The endpoint binary on a free port with metrics on `metrics`; its delivery address.
async fn endpoint(uri: &str, db: &str, metrics: &str) -> (Reaped, String) {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_firehose-endpoint"))
        .args(["--listen", &format!("127.0.0.1:{port}"), "--database", db])
        .args(["--metrics-listen", metrics])
        .env("MONGODB_CONNECTION_STRING", uri)
        .env("FIREHOSE_ACCESS_KEY", KEY)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let child = Reaped(child);
    wait_serving(metrics).await;
    let addr = format!("127.0.0.1:{port}");
    let a = addr.clone();
    wait_until(Duration::from_secs(20), "the delivery port", move || {
        let a = a.clone();
        async move { std::net::TcpStream::connect(&a).is_ok() }
    })
    .await;
    (child, addr)
}

async fn post(addr: &str, id: &str, key: &str, body: Vec<u8>, gz: bool) -> u16 {
    let body = if gz { gzip(&body) } else { body };
    send(
        "POST",
        &format!("http://{addr}/"),
        &firehose_headers(id, Some(key), gz),
        body,
    )
    .await
    .status
}

// Deliveries are counted by status code, stored and dead-lettered records by what happened to
// them, bytes after decompression; /readyz on both ports follows MongoDB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_metrics_count_what_happened() {
    let Some(mut server) = MongoServer::start_persistent() else {
        eprintln!("skipped: needs a server it can stop (MONGODB_TEST_URI is set)");
        return;
    };
    let db = unique_name("metrics_ep");
    let metrics = free_addr();
    let (_ep, addr) = endpoint(&server.uri, &db, &metrics).await;

    let (_, recs) = reports(30);
    let body = firehose_body("req-1", &recs);
    let plain_len = body.len();
    assert_eq!(post(&addr, "req-1", KEY, body.clone(), false).await, 200);
    assert_eq!(post(&addr, "req-1", KEY, body, true).await, 200);
    let mut bad = reports(5).1;
    bad.push(b"not json".to_vec());
    bad.push(b"[1,2]".to_vec());
    let r = send(
        "POST",
        &format!("http://{addr}/"),
        &firehose_headers("req-2", Some(KEY), false),
        firehose_body("req-2", &bad),
    )
    .await;
    check_shape(&r, 200, "req-2");
    assert_eq!(
        post(&addr, "req-3", "wrong-key", b"{}".to_vec(), false).await,
        401
    );
    assert_eq!(
        post(&addr, "req-4", KEY, b"{not json".to_vec(), false).await,
        400
    );
    // A scanner: an unknown path, and a wrong method on a health route; a health check that
    // works is not counted.
    let elsewhere = format!("http://{addr}/wp-login.php");
    assert_eq!(send("GET", &elsewhere, &[], vec![]).await.status, 404);
    let health = format!("http://{addr}/healthz");
    assert_eq!(send("POST", &health, &[], vec![]).await.status, 405);
    assert_eq!(send("GET", &health, &[], vec![]).await.status, 200);

    let m = scrape(&metrics);
    for code in ["404", "405"] {
        let name = format!("firehose_endpoint_requests_total{{code=\"{code}\"}}");
        assert_eq!(value(&m, &name), 1.0, "{code}");
    }
    assert_eq!(
        value(&m, "firehose_endpoint_requests_total{code=\"200\"}"),
        3.0
    );
    assert_eq!(
        value(&m, "firehose_endpoint_requests_total{code=\"401\"}"),
        1.0
    );
    assert_eq!(
        value(&m, "firehose_endpoint_requests_total{code=\"400\"}"),
        1.0
    );
    // The same request twice is upserted twice: stored counts writes, not distinct records.
    assert_eq!(value(&m, "firehose_endpoint_records_stored_total"), 65.0);
    assert_eq!(
        value(
            &m,
            "firehose_endpoint_records_dead_lettered_total{reason=\"not_json\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &m,
            "firehose_endpoint_records_dead_lettered_total{reason=\"not_object\"}"
        ),
        1.0
    );
    assert!(value(&m, "firehose_endpoint_received_bytes_total") >= 2.0 * plain_len as f64);
    assert_eq!(
        value(&m, "firehose_endpoint_request_duration_seconds_count"),
        5.0
    );
    assert!(
        value(
            &m,
            "firehose_endpoint_database_write_duration_seconds_count"
        ) >= 3.0
    );
    assert_eq!(value(&m, "firehose_endpoint_requests_in_flight"), 0.0);
    lint(&get(&metrics, "/metrics").unwrap().body);

    for (a, ready_body) in [(&metrics, "ready\n"), (&addr, r#"{"status":"ready"}"#)] {
        assert_eq!(get(a, "/healthz").unwrap().status, 200, "{a}");
        let ready = get(a, "/readyz").unwrap();
        assert_eq!(
            (ready.status, ready.body.as_str()),
            (200, ready_body),
            "{a}"
        );
    }
    server.kill();
    for a in [&metrics, &addr] {
        let a2 = a.to_string();
        wait_until(
            Duration::from_secs(30),
            "/readyz to say not ready",
            move || {
                let a = a2.clone();
                async move { get(&a, "/readyz").is_ok_and(|r| r.status == 503) }
            },
        )
        .await;
    }
    // The metrics port says why, on one line; the delivery port, open to anyone, does not.
    let r = get(&metrics, "/readyz").unwrap();
    assert!(
        r.body.starts_with("not ready: MongoDB does not answer"),
        "{}",
        r.body
    );
    assert_eq!(r.body.lines().count(), 1, "{}", r.body);
    let r = get(&addr, "/readyz").unwrap();
    assert_eq!(r.body, r#"{"status":"not ready"}"#);
    // The database is down: a delivery is answered 503, and counted so.
    let (_, recs) = reports(2);
    assert_eq!(
        post(&addr, "req-5", KEY, firehose_body("req-5", &recs), false).await,
        503
    );
    let m = scrape(&metrics);
    assert_eq!(
        value(&m, "firehose_endpoint_requests_total{code=\"503\"}"),
        1.0
    );
    server.launch();
}

// A real Prometheus scrapes the endpoint's metrics port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_endpoint() {
    let server = MongoServer::start();
    let db = unique_name("metrics_ep_prom");
    let metrics = free_addr();
    let (_ep, addr) = endpoint(&server.uri, &db, &metrics).await;
    let (_, recs) = reports(3);
    assert_eq!(
        post(&addr, "req-p", KEY, firehose_body("req-p", &recs), false).await,
        200
    );
    let prometheus = Prometheus::start(&[("firehose_endpoint", &metrics)]);
    prometheus
        .wait_for("up{job=\"firehose_endpoint\"}", |v| v == 1.0)
        .await;
    prometheus
        .wait_for("firehose_endpoint_records_stored_total", |v| v == 3.0)
        .await;
}
