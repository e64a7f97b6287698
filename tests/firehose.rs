//! The Firehose endpoint end to end: real HTTP over a socket, requests built the way Firehose
//! builds them (../shared/spec/firehose.md), the real MongoDB wire-protocol server behind it.
#![cfg(feature = "firehose")]

mod common;
#[path = "common/firehose.rs"]
mod firehose_common;

use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use common::wire::Withhold;
use common::{free_port, unique_name, wait_until, MongoServer};
use firehose_common::*;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mongodb::bson::{doc, oid::ObjectId, spec::ElementType, Document};
use sensehat_monitor::firehose::decode::{derived_id, DecodeOptions};
use sensehat_monitor::firehose::server::{AccessKeys, EndpointConfig, BODY_TIMEOUT, LIMITS};
use sensehat_monitor::firehose::{app, serve, AppState, Store, UpsertMethod};
use sensehat_monitor::listener::Limits;

// One plain record: 200, stored with an ObjectId _id and recordedAt left a string, as the original did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_plain_record_is_stored_like_the_original() {
    let server = MongoServer::start();
    let ep = start(&server, Opts::default()).await;
    let (ids, recs) = reports(1);
    let r = deliver(&ep, "req-one-plain", &recs, false).await;
    check_shape(&r, 200, "req-one-plain");
    let d = ep.coll().find_one(doc! {}).await.unwrap().unwrap();
    assert_eq!(d.get_object_id("_id").unwrap(), ids[0]);
    assert_eq!(d.get_str("recordedAt").unwrap(), "2026-11-25T18:50:00.123Z");
    assert_eq!(d.get_str("nodeName").unwrap(), "pi-0");
    assert_eq!(count(&ep.rejected()).await, 0);
}

// One gzip record: the gzip body is decoded and the record stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gzip_record_is_stored() {
    let server = MongoServer::start();
    let ep = start(&server, Opts::default()).await;
    let (ids, recs) = reports(1);
    let r = deliver(&ep, "req-one-gzip", &recs, true).await;
    check_shape(&r, 200, "req-one-gzip");
    let d = ep.coll().find_one(doc! {}).await.unwrap().unwrap();
    assert_eq!(d.get_object_id("_id").unwrap(), ids[0]);
}

// 10,000 records, plain then gzip: every one stored, none rejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_records_plain_and_gzip() {
    let server = MongoServer::start();
    let ep = start(&server, Opts::default()).await;
    let (ids_a, a) = reports(10_000);
    check_shape(
        &deliver(&ep, "req-10k-plain", &a, false).await,
        200,
        "req-10k-plain",
    );
    assert_eq!(count(&ep.coll()).await, 10_000);
    let (ids_b, b) = reports(10_000);
    check_shape(
        &deliver(&ep, "req-10k-gzip", &b, true).await,
        200,
        "req-10k-gzip",
    );
    assert_eq!(count(&ep.coll()).await, 20_000);
    for id in [ids_a[0], ids_a[9_999], ids_b[0], ids_b[9_999]] {
        assert_eq!(count_id(&ep, id).await, 1);
    }
    assert_eq!(count(&ep.rejected()).await, 0);
}

// Extended JSON (canonical and relaxed) becomes BSON types; --parse-dates recordedAt makes a date.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_json_and_parse_dates() {
    let server = MongoServer::start();
    let ep = start(
        &server,
        Opts {
            parse_dates: vec!["recordedAt".into()],
            ..Opts::default()
        },
    )
    .await;
    let canonical = br#"{"_id":{"$oid":"65a1b2c3d4e5f60718293a4b"},"n":{"$numberLong":"7"},"at":{"$date":{"$numberLong":"1689246131016"}}}"#.to_vec();
    let relaxed = br#"{"_id":{"$oid":"65a1b2c3d4e5f60718293a4c"},"at":{"$date":"2023-07-13T11:02:11.016Z"},"recordedAt":"2023-07-13T11:02:11.016Z"}"#.to_vec();
    let r = deliver(&ep, "req-ext", &[canonical, relaxed], false).await;
    check_shape(&r, 200, "req-ext");
    let c = ep
        .coll()
        .find_one(doc! { "_id": ObjectId::parse_str("65a1b2c3d4e5f60718293a4b").unwrap() })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.get_i64("n").unwrap(), 7);
    assert_eq!(
        c.get_datetime("at").unwrap().timestamp_millis(),
        1_689_246_131_016
    );
    let r = ep
        .coll()
        .find_one(doc! { "_id": ObjectId::parse_str("65a1b2c3d4e5f60718293a4c").unwrap() })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.get("at").unwrap().element_type(), ElementType::DateTime);
    assert_eq!(
        r.get_datetime("recordedAt").unwrap().timestamp_millis(),
        1_689_246_131_016
    );
}

// A replayed request (same id, twice) leaves one copy of each document, with or without _id,
// and a later delivery of an _id replaces the document (replace semantics, no leftover fields).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_request_leaves_one_copy() {
    let server = MongoServer::start();
    let ep = start(&server, Opts::default()).await;
    check_replay_and_replace(&ep).await;
}

// The update-command path (MongoDB 6.0/7.0) gives the same results as bulkWrite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_command_path_upserts_the_same_way() {
    let server = MongoServer::start();
    let ep = start(
        &server,
        Opts {
            method: UpsertMethod::UpdateCommand,
            ..Opts::default()
        },
    )
    .await;
    check_replay_and_replace(&ep).await;
    let (_, recs) = reports(10_000);
    check_shape(
        &deliver(&ep, "req-uc-10k", &recs, true).await,
        200,
        "req-uc-10k",
    );
    assert_eq!(count(&ep.coll()).await, 10_003);
}

async fn check_replay_and_replace(ep: &Endpoint) {
    let id = ObjectId::new();
    let recs = vec![
        report(id, 0),
        br#"{"nodeName":"no-id-1","v":1}"#.to_vec(),
        br#"{"nodeName":"no-id-2","v":2}"#.to_vec(),
    ];
    for _ in 0..2 {
        check_shape(
            &deliver(ep, "req-replay", &recs, false).await,
            200,
            "req-replay",
        );
    }
    assert_eq!(count(&ep.coll()).await, 3);
    let derived = ep
        .coll()
        .find_one(doc! { "nodeName": "no-id-2" })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        derived.get_object_id("_id").unwrap(),
        derived_id("req-replay", 2)
    );
    // The same _id in a new request replaces the stored document.
    let newer = format!(r#"{{"_id":"{id}","nodeName":"replaced"}}"#).into_bytes();
    check_shape(
        &deliver(ep, "req-replace", &[newer], true).await,
        200,
        "req-replace",
    );
    assert_eq!(count(&ep.coll()).await, 3);
    let d = ep
        .coll()
        .find_one(doc! { "_id": id })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.get_str("nodeName").unwrap(), "replaced");
    assert!(
        d.get("humidity").is_none(),
        "replace leaves no old fields: {d}"
    );
}

// Bad records (empty, bad base64, not UTF-8, not JSON, not an object, array _id, field names
// the database refuses) go to the dead-letter collection with raw bytes, request id, index and reason; good ones are written; a
// replay adds no second copy of either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_records_go_to_the_dead_letter_collection() {
    let server = MongoServer::start();
    let ep = start(&server, Opts::default()).await;
    let good = ObjectId::new();
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let datas: Vec<String> = vec![
        b64(&report(good, 0)),
        String::new(),
        "%%% not base64 %%%".into(),
        b64(&[0xc3, 0x28, b'{', b'}']),
        b64(b"{\"truncated\": "),
        b64(b"[1, 2, 3]"),
        b64(br#"{"_id":[1,2]}"#),
        b64(br#"{"a\u0000b":1}"#),
        b64(br#"{"n":1,"$set":{"n":2}}"#),
    ];
    let body = serde_json::to_vec(&serde_json::json!({
        "requestId": "req-bad",
        "timestamp": 1_764_096_600_000i64,
        "records": datas.iter().map(|d| serde_json::json!({ "data": d })).collect::<Vec<_>>(),
    }))
    .unwrap();
    for _ in 0..2 {
        let r = send(
            "POST",
            &format!("{}/", ep.url),
            &firehose_headers("req-bad", Some(KEY), false),
            body.clone(),
        )
        .await;
        check_shape(&r, 200, "req-bad");
    }
    assert_eq!(count(&ep.coll()).await, 1);
    assert_eq!(count_id(&ep, good).await, 1);
    assert_eq!(count(&ep.rejected()).await, 8);
    let expect: [(i64, &str, Vec<u8>); 8] = [
        (1, "empty record", vec![]),
        (2, "invalid base64", b"%%% not base64 %%%".to_vec()),
        (3, "not UTF-8", vec![0xc3, 0x28, b'{', b'}']),
        (4, "not JSON", b"{\"truncated\": ".to_vec()),
        (5, "not a JSON object", b"[1, 2, 3]".to_vec()),
        (6, "_id cannot be an array", br#"{"_id":[1,2]}"#.to_vec()),
        (7, "invalid field name", br#"{"a\u0000b":1}"#.to_vec()),
        (
            8,
            "invalid field name",
            br#"{"n":1,"$set":{"n":2}}"#.to_vec(),
        ),
    ];
    for (index, reason, raw) in expect {
        let d = ep
            .rejected()
            .find_one(doc! { "index": index })
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("no dead letter for record {index}"));
        assert_eq!(d.get_str("requestId").unwrap(), "req-bad");
        assert!(d.get_str("reason").unwrap().starts_with(reason), "{d}");
        assert_eq!(d.get_binary_generic("data").unwrap(), &raw);
    }
}

// Firehose never sends a record of more than 1,024,000 bytes; a client with the key can. Such
// a record is not parsed (an array of small numbers grows about sixfold into BSON, and a
// document past MongoDB's 16 MiB failed every retry with 503): it is a dead letter naming
// Firehose's limit, keeping its first 1,024,000 bytes, and the records beside it are stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_over_firehose_s_limit_is_a_dead_letter() {
    let server = MongoServer::start();
    let ep = start(&server, Opts::default()).await;
    // {"a":[0,0,...]}, 1,024,001 bytes: 7 for the frame, 2 a zero.
    let zeros = vec!["0"; (1_024_001 - 7) / 2].join(",");
    let big = format!(r#"{{"a":[{zeros}]}}"#).into_bytes();
    assert_eq!(big.len(), 1_024_001);
    let (ids, normal) = reports(1);
    let r = deliver(&ep, "req-huge", &[big.clone(), normal[0].clone()], false).await;
    check_shape(&r, 200, "req-huge");
    assert_eq!(count(&ep.coll()).await, 1);
    assert_eq!(count_id(&ep, ids[0]).await, 1);
    let d = ep
        .rejected()
        .find_one(doc! { "requestId": "req-huge" })
        .await
        .unwrap()
        .expect("a dead letter for the big record");
    assert_eq!(d.get_i64("index").unwrap(), 0);
    let reason = d.get_str("reason").unwrap();
    assert!(reason.contains("record maximum of 1,000 KiB"), "{reason}");
    assert_eq!(d.get_binary_generic("data").unwrap(), &big[..1_024_000]);
}

// A request whose every record is empty still answers 200 and keeps every record as a dead letter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_empty_records_are_kept_as_dead_letters() {
    let server = MongoServer::start();
    let ep = start(&server, Opts::default()).await;
    let r = deliver(&ep, "req-empty", &[vec![], vec![]], false).await;
    check_shape(&r, 200, "req-empty");
    assert_eq!(count(&ep.coll()).await, 0);
    assert_eq!(count(&ep.rejected()).await, 2);
}

// Missing or wrong keys get 401 (nothing written); every rotated key is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_keys_missing_wrong_and_rotated() {
    let server = MongoServer::start();
    let ep = start(
        &server,
        Opts {
            keys: vec!["old-key", "new-key"],
            ..Opts::default()
        },
    )
    .await;
    let url = format!("{}/", ep.url);
    let (_, recs) = reports(3);
    let body = firehose_body("req-key", &recs);
    for key in [
        None,
        Some("wrong"),
        Some(""),
        Some("old-ke"),
        Some("new-key2"),
    ] {
        let r = send(
            "POST",
            &url,
            &firehose_headers("req-key", key, false),
            body.clone(),
        )
        .await;
        let m = check_shape(&r, 401, "req-key").unwrap();
        assert!(!m.contains("old-key") && !m.contains("new-key"));
    }
    assert_eq!(count(&ep.coll()).await, 0);
    for key in ["old-key", "new-key"] {
        let r = send(
            "POST",
            &url,
            &firehose_headers("req-key", Some(key), false),
            body.clone(),
        )
        .await;
        check_shape(&r, 200, "req-key");
    }
    assert_eq!(count(&ep.coll()).await, 3);
    // No request id and no key: 401 still in Firehose's shape, with an empty requestId.
    let r = send("POST", &url, &[], body).await;
    check_shape(&r, 401, "");
}

// Each malformed request gets 400 in Firehose's shape, and nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_answer_400() {
    let server = MongoServer::start();
    let ep = start(&server, Opts::default()).await;
    let url = format!("{}/", ep.url);
    let (_, recs) = reports(2);
    let body = firehose_body("req-400", &recs);
    let h = |f: &dyn Fn(&mut Headers)| {
        let mut h = firehose_headers("req-400", Some(KEY), false);
        f(&mut h);
        h
    };
    // Missing request id header: the requestId cannot be read, so it is empty.
    let r = send(
        "POST",
        &url,
        &h(&|h| h.retain(|(k, _)| *k != "x-amz-firehose-request-id")),
        body.clone(),
    )
    .await;
    check_shape(&r, 400, "");
    // A request id far longer than Firehose's: refused, and only its first 256 bytes echoed.
    let long = "r".repeat(5000);
    let r = send(
        "POST",
        &url,
        &h(&|h| h[1].1 = long.clone()),
        firehose_body(&long, &recs),
    )
    .await;
    check_shape(&r, 400, &long[..256]);
    // Header and body request ids differ.
    let other = firehose_body("req-other", &recs);
    let m = check_shape(
        &send("POST", &url, &h(&|_| {}), other).await,
        400,
        "req-400",
    )
    .unwrap();
    assert!(m.contains("requestId"), "{m}");
    // Protocol version 2.0, and none.
    let r = send("POST", &url, &h(&|h| h[0].1 = "2.0".into()), body.clone()).await;
    check_shape(&r, 400, "req-400");
    let r = send(
        "POST",
        &url,
        &h(&|h| {
            h.remove(0);
        }),
        body.clone(),
    )
    .await;
    check_shape(&r, 400, "req-400");
    // An encoding other than gzip.
    let r = send(
        "POST",
        &url,
        &h(&|h| h.push(("content-encoding", "br".into()))),
        body.clone(),
    )
    .await;
    check_shape(&r, 400, "req-400");
    // Body not JSON, JSON without records, corrupt and truncated gzip.
    for bad in [
        b"not json".to_vec(),
        br#"{"requestId":"req-400","timestamp":1}"#.to_vec(),
    ] {
        check_shape(&send("POST", &url, &h(&|_| {}), bad).await, 400, "req-400");
    }
    let gz = gzip(&body);
    for bad in [b"\x1f\x8b garbage".to_vec(), gz[..gz.len() / 2].to_vec()] {
        let r = send(
            "POST",
            &url,
            &h(&|h| h.push(("content-encoding", "gzip".into()))),
            bad,
        )
        .await;
        check_shape(&r, 400, "req-400");
    }
    assert_eq!(count(&ep.coll()).await, 0);
}

// Bodies up to the limit (after decompression) are accepted; larger ones, and gzip bombs, get 413.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_bodies_over_the_limit_get_413() {
    let server = MongoServer::start();
    let ep = start(
        &server,
        Opts {
            max_body_mib: 1,
            ..Opts::default()
        },
    )
    .await;
    let url = format!("{}/", ep.url);
    // ~0.98 MiB of records: accepted plain and gzip.
    let (_, recs) = reports(3_500);
    let body = firehose_body("req-size", &recs);
    assert!(
        body.len() < 1 << 20 && body.len() > 1_000_000,
        "{}",
        body.len()
    );
    check_shape(
        &send(
            "POST",
            &url,
            &firehose_headers("req-size", Some(KEY), false),
            body.clone(),
        )
        .await,
        200,
        "req-size",
    );
    check_shape(
        &send(
            "POST",
            &url,
            &firehose_headers("req-size", Some(KEY), true),
            gzip(&body),
        )
        .await,
        200,
        "req-size",
    );
    // ~1.2 MiB: too large, plain and gzip (whose compressed size is far below the limit).
    let (_, recs) = reports(4_000);
    let big = firehose_body("req-big", &recs);
    assert!(big.len() > 1 << 20);
    let m = check_shape(
        &send(
            "POST",
            &url,
            &firehose_headers("req-big", Some(KEY), false),
            big.clone(),
        )
        .await,
        413,
        "req-big",
    )
    .unwrap();
    // Refused for its Content-Length, and told so: not "after decompression", as it was.
    assert_eq!(m, "Content-Length is larger than the 1 MiB body limit");
    let gz = gzip(&big);
    assert!(gz.len() < 1 << 20);
    let m = check_shape(
        &send(
            "POST",
            &url,
            &firehose_headers("req-big", Some(KEY), true),
            gz,
        )
        .await,
        413,
        "req-big",
    )
    .unwrap();
    assert_eq!(m, "request body larger than 1 MiB after decompression");
    // A gzip bomb: 64 MiB of spaces in about 64 KiB.
    let bomb = gzip(&vec![b' '; 64 << 20]);
    check_shape(
        &send(
            "POST",
            &url,
            &firehose_headers("req-bomb", Some(KEY), true),
            bomb,
        )
        .await,
        413,
        "req-bomb",
    );
    assert_eq!(count(&ep.coll()).await, 3_500);
}

// Other paths get a Firehose-shaped 404, other methods 405, and GET /health answers 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_paths_methods_and_health() {
    let server = MongoServer::start();
    let ep = start(&server, Opts::default()).await;
    let h = firehose_headers("req-path", Some(KEY), false);
    let body = firehose_body("req-path", &reports(1).1);
    let r = send("POST", &format!("{}/elsewhere", ep.url), &h, body.clone()).await;
    check_shape(&r, 404, "req-path");
    let r = send("GET", &format!("{}/", ep.url), &h, vec![]).await;
    check_shape(&r, 405, "req-path");
    let r = send("GET", &format!("{}/health", ep.url), &[], vec![]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-type"], "application/json");
    assert_eq!(count(&ep.coll()).await, 0);
}

// The answers docs/firehose-endpoint.md lists as the HTTP layer's, made before the router sees
// the request, have no body and no Content-Type: 400 for a request that is not HTTP, 414 for a
// target over 65,534 bytes, 431 for over 100 headers; headers that do not arrive in time get
// no answer at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_layer_answers_without_a_body() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = MongoServer::start();
    let opts = Opts {
        header_timeout: Duration::from_secs(1),
        ..Opts::default()
    };
    let ep = start(&server, opts).await;
    let addr = ep.url.trim_start_matches("http://").to_owned();
    let answer = |request: Vec<u8>| {
        let addr = addr.clone();
        async move {
            let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
            c.write_all(&request).await.unwrap();
            let mut buf = Vec::new();
            tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut buf))
                .await
                .expect("the connection was not closed")
                .unwrap();
            String::from_utf8_lossy(&buf).to_lowercase()
        }
    };
    let long_target = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(65_534));
    let many_headers: String = (0..101).map(|i| format!("X-{i}: 1\r\n")).collect();
    for (request, status) in [
        (b"NOT HTTP\r\n\r\n".to_vec(), "400"),
        (long_target.into_bytes(), "414"),
        (
            format!("GET / HTTP/1.1\r\n{many_headers}\r\n").into_bytes(),
            "431",
        ),
    ] {
        let text = answer(request).await;
        assert!(text.starts_with(&format!("http/1.1 {status} ")), "{text}");
        assert!(text.contains("content-length: 0\r\n"), "{text}");
        assert!(!text.contains("content-type"), "{text}");
    }
    assert_eq!(answer(b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec()).await, "");
}

// A client that sends its headers or its body too slowly cannot hold a connection: headers
// not complete within the header timeout close the connection (also on an idle kept-alive
// one), and a body not complete within the body timeout is answered 408 in the Firehose shape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = MongoServer::start();
    let ep = start(
        &server,
        Opts {
            header_timeout: Duration::from_secs(1),
            body_timeout: Duration::from_secs(1),
            ..Opts::default()
        },
    )
    .await;
    let addr = ep.url.trim_start_matches("http://").to_owned();

    // Headers that never end.
    let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
    c.write_all(b"POST / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the connection was not closed");
    assert!(started.elapsed() >= Duration::from_millis(900));

    // A body that stops after 10 of its 1000 bytes.
    let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut head = String::from("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n");
    for (k, v) in firehose_headers("req-slow", Some(KEY), false) {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n{\"requestI");
    c.write_all(head.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut buf))
        .await
        .expect("no answer to a stalled body")
        .unwrap();
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    let body: serde_json::Value =
        serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["requestId"], "req-slow");
    assert!(
        body["errorMessage"]
            .as_str()
            .unwrap()
            .contains("not received"),
        "{body}"
    );
    assert_eq!(count(&ep.coll()).await, 0);
}

// Connections beyond MAX_CONNECTIONS wait in the backlog: with every slot held by a client that
// sends nothing, a delivery is answered only once the header timeout frees a slot, and then is
// stored. (Without the limit it would be answered at once.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_wait_for_a_free_slot() {
    use sensehat_monitor::firehose::server::MAX_CONNECTIONS;
    let server = MongoServer::start();
    let ep = start(
        &server,
        Opts {
            header_timeout: Duration::from_secs(2),
            ..Opts::default()
        },
    )
    .await;
    let addr = ep.url.trim_start_matches("http://").to_owned();
    // Timed from before the first idle connection: its header timeout frees the first slot
    // 2 s after it was accepted, however long the others took to open on a loaded machine.
    let started = std::time::Instant::now();
    let mut idle = Vec::new();
    for _ in 0..MAX_CONNECTIONS {
        idle.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    let (ids, recs) = reports(1);
    check_shape(
        &deliver(&ep, "req-slot", &recs, false).await,
        200,
        "req-slot",
    );
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "answered in {:?}, before any slot was freed",
        started.elapsed()
    );
    assert_eq!(count_id(&ep, ids[0]).await, 1);
    drop(idle);
}

// A record the database refuses for good (here a unique index on another field) goes to the
// dead-letter collection with the server's reason, and the records after it are written on,
// with either way of upserting; a replay changes nothing, and once the cause is gone a replay
// stores every record once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_records_are_set_aside_and_the_rest_written() {
    let server = MongoServer::start();
    for method in [UpsertMethod::Auto, UpsertMethod::UpdateCommand] {
        let ep = start(
            &server,
            Opts {
                method,
                ..Opts::default()
            },
        )
        .await;
        let coll = ep.coll();
        let index = mongodb::IndexModel::builder()
            .keys(doc! { "serial": 1 })
            .options(
                mongodb::options::IndexOptions::builder()
                    .unique(true)
                    .build(),
            )
            .build();
        let name = coll.create_index(index).await.unwrap().index_name;
        // Records 2 and 4 repeat record 0's serial.
        let ids: Vec<ObjectId> = (0..5).map(|_| ObjectId::new()).collect();
        let records: Vec<Vec<u8>> = ids
            .iter()
            .zip([1, 2, 1, 3, 1])
            .map(|(id, serial)| format!(r#"{{"_id":"{id}","serial":{serial}}}"#).into_bytes())
            .collect();
        for _ in 0..2 {
            let r = deliver(&ep, "req-refused", &records, false).await;
            check_shape(&r, 200, "req-refused");
        }
        assert_eq!(count(&coll).await, 3, "{method:?}");
        for stored in [ids[0], ids[1], ids[3]] {
            assert_eq!(count_id(&ep, stored).await, 1, "{method:?}");
        }
        assert_eq!(count(&ep.rejected()).await, 2, "{method:?}");
        for index in [2usize, 4] {
            let d = ep
                .rejected()
                .find_one(doc! { "index": index as i64 })
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("{method:?}: no dead letter for record {index}"));
            let reason = d.get_str("reason").unwrap();
            assert!(
                reason.starts_with("refused by the database (code 11000)"),
                "{reason}"
            );
            assert_eq!(d.get_binary_generic("data").unwrap(), &records[index]);
        }
        coll.drop_index(name).await.unwrap();
        let r = deliver(&ep, "req-refused", &records, false).await;
        check_shape(&r, 200, "req-refused");
        assert_eq!(count(&coll).await, 5, "{method:?}");
        for id in &ids {
            assert_eq!(count_id(&ep, *id).await, 1, "{method:?}");
        }
    }
}

// Firehose sends at most 10,000 records: 10,001 (empty `{}` ones here, of which a 64 MiB body
// holds 22 million, over a gigabyte once parsed) are refused with 400 and nothing written, while
// 10,000 are taken. A parse error quoting a long wrong-typed value is answered (and logged) cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_than_ten_thousand_records_answer_400() {
    let server = MongoServer::start();
    let ep = start(&server, Opts::default()).await;
    let url = format!("{}/", ep.url);
    let headers = firehose_headers("req-count", Some(KEY), false);
    let body = |records: String| {
        format!(r#"{{"requestId":"req-count","timestamp":1,"records":{records}}}"#).into_bytes()
    };
    let empties = |n: usize| body(format!("[{}]", vec!["{}"; n].join(",")));
    let r = send("POST", &url, &headers, empties(10_001)).await;
    let m = check_shape(&r, 400, "req-count").unwrap();
    assert!(m.contains("more than 10000 records"), "{m}");
    assert_eq!(count(&ep.coll()).await + count(&ep.rejected()).await, 0);
    let r = send("POST", &url, &headers, empties(10_000)).await;
    check_shape(&r, 200, "req-count");
    assert_eq!(count(&ep.rejected()).await, 10_000);
    let long = body(format!(r#""{}""#, "x".repeat(1 << 20)));
    let r = send("POST", &url, &headers, long).await;
    let m = check_shape(&r, 400, "req-count").unwrap();
    assert!(m.len() < 1_000, "an errorMessage of {} bytes", m.len());
}

// A delivery most of whose records the database refuses for good (1,990 of 2,000 break a
// unique index) costs a few write commands, not one per refusal: after the first refusal the
// rest of the chunk goes unordered and every refused record of the reply is a dead letter.
// (Ordered, each refusal stopped the command and the rest was sent again: 1,990 round trips and
// about N^2 bytes, past the request's deadline, answered 503 with no dead letters.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_refused_records_cost_few_round_trips() {
    use common::wire::{Sent, ZlibProxy};
    let Some(server) = MongoServer::own() else {
        return;
    };
    let proxy = ZlibProxy::start(server.port);
    let writes = || {
        proxy
            .sent()
            .into_iter()
            .filter_map(|s| match s {
                Sent::Command { name, .. } if name == "bulkWrite" || name == "update" => Some(name),
                _ => None,
            })
            .collect::<Vec<String>>()
    };
    for method in [UpsertMethod::Auto, UpsertMethod::UpdateCommand] {
        let opts = Opts {
            uri: Some(proxy.uri()),
            method,
            ..Opts::default()
        };
        let ep = start(&server, opts).await;
        let unique = mongodb::options::IndexOptions::builder()
            .unique(true)
            .build();
        let index = mongodb::IndexModel::builder()
            .keys(doc! { "serial": 1 })
            .options(unique)
            .build();
        ep.coll().create_index(index).await.unwrap();
        // Ten serials among 2,000 records: the first record of each is stored.
        let records: Vec<Vec<u8>> = (0..2_000)
            .map(|i| {
                let id = ObjectId::new();
                format!(r#"{{"_id":"{id}","serial":{}}}"#, i % 10).into_bytes()
            })
            .collect();
        for _ in 0..2 {
            let before = writes().len();
            let r = deliver(&ep, "req-many-refused", &records, true).await;
            check_shape(&r, 200, "req-many-refused");
            // The chunk, the rest of it unordered, the dead letters.
            let sent = writes().len() - before;
            assert!(sent <= 3, "{method:?}: {sent} write commands");
            assert_eq!(count(&ep.coll()).await, 10, "{method:?}");
            assert_eq!(count(&ep.rejected()).await, 1_990, "{method:?}");
        }
        for index in [10i64, 1_999] {
            let d = ep
                .rejected()
                .find_one(doc! { "index": index })
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("{method:?}: no dead letter for record {index}"));
            let reason = d.get_str("reason").unwrap();
            assert!(
                reason.starts_with("refused by the database (code 11000)"),
                "{reason}"
            );
        }
    }
}

// A write error that MongoDB repeats for the same document whatever the retry (66
// ImmutableField: `{"_id":7.0}` replacing a stored `{"_id":7}`; 52 DollarPrefixedFieldName) is
// a dead letter with the server's reason and the delivery is answered 200, where it was 503
// until Firehose gave up after its retry duration. (The test server gives neither code: a proxy
// answers the writes to the delivery collection with it, and passes the dead letters on.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_errors_the_server_always_repeats_are_dead_letters() {
    use common::wire::ZlibProxy;
    let Some(server) = MongoServer::own() else {
        return;
    };
    let proxy = ZlibProxy::start(server.port);
    let opts = Opts {
        uri: Some(proxy.uri()),
        method: UpsertMethod::UpdateCommand,
        ..Opts::default()
    };
    let ep = start(&server, opts).await;
    // One record a delivery: the proxy refuses every statement of a command.
    for (n, code) in [66, 52].into_iter().enumerate() {
        proxy.withhold(&[("update", Withhold::WriteErrorIn(code, "firehose"))]);
        let id = format!("req-for-good-{code}");
        let record = br#"{"_id":7.0,"a":1}"#.to_vec();
        let r = deliver(&ep, &id, std::slice::from_ref(&record), false).await;
        check_shape(&r, 200, &id);
        assert_eq!(count(&ep.rejected()).await, n as u64 + 1);
        let d = ep
            .rejected()
            .find_one(doc! { "requestId": &id })
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("no dead letter for code {code}"));
        let reason = d.get_str("reason").unwrap();
        assert!(
            reason.starts_with(&format!("refused by the database (code {code})")),
            "{reason}"
        );
        assert_eq!(d.get_binary_generic("data").unwrap(), &record);
    }
    assert_eq!(count(&ep.coll()).await, 0);
}

// MongoDB 8.0 whose featureCompatibilityVersion is still 7.0 (as through an upgrade) has
// bulkWrite's wire version but refuses the command (115 CommandNotSupported): the endpoint then
// upserts with update commands, the refused delivery at once and every later one without asking
// again, where it answered 503 to every delivery. (The test server's hello says wire version 27,
// so Auto picks bulkWrite; a proxy answers bulkWrite as such a server does.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_refusing_bulk_write_is_sent_update_commands() {
    bulk_write_refused_then_update_commands(Withhold::CommandError(
        115,
        "CommandNotSupported",
        "BulkWrite may not be run without featureFlagBulkWriteCommand enabled",
    ))
    .await;
}

// Atlas refuses a command a tier does not allow with 8000 AtlasError (the Flex and Serverless
// tiers): bulkWrite refused so is replaced by update commands as above, where every delivery
// was answered 503 for as long as the endpoint ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atlas_refusing_bulk_write_is_sent_update_commands() {
    bulk_write_refused_then_update_commands(Withhold::CommandError(
        8000,
        "AtlasError",
        "CMD_NOT_ALLOWED: bulkWrite",
    ))
    .await;
}

/// Two deliveries through a proxy that answers bulkWrite with `refused`: both stored, with one
/// bulkWrite and then update commands only.
async fn bulk_write_refused_then_update_commands(refused: Withhold) {
    use common::wire::{Sent, ZlibProxy};
    let Some(server) = MongoServer::own() else {
        return;
    };
    let proxy = ZlibProxy::start_withholding(server.port, &[("bulkWrite", refused)]);
    let opts = Opts {
        uri: Some(proxy.uri()),
        ..Opts::default()
    };
    let ep = start(&server, opts).await;
    let (ids_a, a) = reports(300);
    check_shape(
        &deliver(&ep, "req-fcv-1", &a, false).await,
        200,
        "req-fcv-1",
    );
    let (ids_b, b) = reports(300);
    check_shape(&deliver(&ep, "req-fcv-2", &b, true).await, 200, "req-fcv-2");
    assert_eq!(count(&ep.coll()).await, 600);
    for id in [ids_a[0], ids_a[299], ids_b[0], ids_b[299]] {
        assert_eq!(count_id(&ep, id).await, 1);
    }
    let writes: Vec<String> = proxy
        .sent()
        .into_iter()
        .filter_map(|s| match s {
            Sent::Command { name, .. } if name == "bulkWrite" || name == "update" => Some(name),
            _ => None,
        })
        .collect();
    assert_eq!(writes, ["bulkWrite", "update", "update"]);
}

// Database stopped mid-test: 503 with a short message and no internals; after it is back, the
// retry of the same request succeeds and nothing is duplicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_answers_503_then_retry_succeeds() {
    let Some(mut server) = MongoServer::start_persistent() else {
        return;
    };
    let ep = start(&server, Opts::default()).await;
    let (ids_a, a) = reports(500);
    check_shape(
        &deliver(&ep, "req-before", &a, false).await,
        200,
        "req-before",
    );
    server.stop();
    let (ids_b, b) = reports(500);
    let r = deliver(&ep, "req-during", &b, true).await;
    let m = check_shape(&r, 503, "req-during").unwrap();
    assert!(m.len() < 100, "{m}");
    for internal in ["127.0.0.1", &server.port.to_string(), "Kind", "selection"] {
        assert!(
            !m.contains(internal),
            "errorMessage leaks {internal:?}: {m}"
        );
    }
    server.launch();
    // Firehose retries with back-off; the first retry after the server is back succeeds.
    let mut status = 0;
    for _ in 0..20 {
        let r = deliver(&ep, "req-during", &b, true).await;
        status = r.status;
        if status == 200 {
            check_shape(&r, 200, "req-during");
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(status, 200);
    // A replay of the first batch too: still one copy of everything.
    check_shape(
        &deliver(&ep, "req-before", &a, false).await,
        200,
        "req-before",
    );
    let coll = ep.coll();
    assert_eq!(count(&coll).await, 1_000);
    for id in [ids_a[0], ids_a[499], ids_b[0], ids_b[499]] {
        assert_eq!(count_id(&ep, id).await, 1);
    }
}

// The binary refuses to start without an access key, never takes one on the command line, and
// with FIREHOSE_ACCESS_KEY serves deliveries over plain HTTP, saying so in its log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_requires_a_key_and_serves() {
    let bin = env!("CARGO_BIN_EXE_firehose-endpoint");
    let server = MongoServer::start();
    let out = Command::new(bin)
        .args(["--mongodb-uri", &server.uri])
        .env_remove("FIREHOSE_ACCESS_KEY")
        .env_remove("FIREHOSE_ACCESS_KEY_FILE")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("FIREHOSE_ACCESS_KEY"));
    let out = Command::new(bin)
        .args(["--access-key", "k"])
        .output()
        .unwrap();
    assert!(!out.status.success());

    let port = free_port();
    let db = unique_name("fhbin");
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut child = Command::new(bin)
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--database",
            &db,
            "--path",
            "/firehose",
        ])
        .args(["--parse-dates", "recordedAt"])
        .env("MONGODB_CONNECTION_STRING", &server.uri)
        .env("FIREHOSE_ACCESS_KEY", format!("old,{KEY}"))
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log.reopen().unwrap())
        .spawn()
        .unwrap();
    let health = format!("http://127.0.0.1:{port}/health");
    common::wait_listening(port, "the endpoint").await;
    assert_eq!(send("GET", &health, &[], vec![]).await.status, 200);
    let (ids, recs) = reports(2);
    let body = firehose_body("req-bin", &recs);
    let r = send(
        "POST",
        &format!("http://127.0.0.1:{port}/firehose"),
        &firehose_headers("req-bin", Some(KEY), false),
        body,
    )
    .await;
    check_shape(&r, 200, "req-bin");
    // Anyone can send deliveries with a wrong key as fast as they like: the first is logged,
    // the rest (within a minute) are not.
    for _ in 0..20 {
        let headers = firehose_headers("req-nokey", Some("wrong"), false);
        let url = format!("http://127.0.0.1:{port}/firehose");
        let r = send("POST", &url, &headers, firehose_body("req-nokey", &[])).await;
        assert_eq!(r.status, 401);
    }
    let coll = server
        .client()
        .await
        .database(&db)
        .collection::<Document>("firehose");
    let d = coll
        .find_one(doc! { "_id": ids[1] })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        d.get("recordedAt").unwrap().element_type(),
        ElementType::DateTime
    );
    common::signal(&child, 15);
    let status = child.wait().unwrap();
    assert!(status.success());
    let text = std::fs::read_to_string(log.path()).unwrap();
    assert!(text.contains("plain HTTP"), "{text}");
    assert!(
        text.contains("req-bin") && text.contains("records=2"),
        "{text}"
    );
    assert!(!text.contains(KEY), "the log must never show a key");
    assert_eq!(text.matches("req-nokey").count(), 1, "{text}");
}

/// The endpoint binary on a free port with `args`, storing through `uri`, its log (at info) in
/// the file returned; once it listens.
async fn logged_endpoint(
    uri: &str,
    args: &[&str],
) -> (common::Reaped, u16, tempfile::NamedTempFile) {
    let port = free_port();
    let log = tempfile::NamedTempFile::new().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_firehose-endpoint"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(args)
        .env("MONGODB_CONNECTION_STRING", uri)
        .env("FIREHOSE_ACCESS_KEY", KEY)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log.reopen().unwrap())
        .spawn()
        .unwrap();
    let child = common::Reaped(child);
    common::wait_listening(port, "the endpoint").await;
    (child, port, log)
}

/// Stop an endpoint of [`logged_endpoint`] with SIGTERM (it exits 0), and give its log.
fn stop_logged(mut child: common::Reaped, log: &tempfile::NamedTempFile) -> String {
    common::signal(&child.0, 15);
    assert!(child.0.wait().unwrap().success());
    std::fs::read_to_string(log.path()).unwrap()
}

/// The warnings of an endpoint's log, but the one for serving plain HTTP.
fn warnings(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains(" WARN ") && !l.contains("plain HTTP"))
        .collect()
}

// A delivery stream whose URL path is not the endpoint's --path (a trailing slash, a proxy's
// prefix) gets 404 on every delivery, retries for its retry duration, then puts everything in
// S3: the endpoint says so in a warning naming both paths, at most once a minute, where it said
// nothing. A scanner's request to an unknown path (no Firehose headers) is not logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_to_the_wrong_path_is_said() {
    let server = MongoServer::start();
    let db = unique_name("fhpath");
    let (child, port, log) =
        logged_endpoint(&server.uri, &["--database", &db, "--path", "/firehose"]).await;
    let root = format!("http://127.0.0.1:{port}/");
    assert_eq!(send("GET", &root, &[], vec![]).await.status, 404);
    for _ in 0..3 {
        let body = firehose_body("req-path", &reports(1).1);
        let r = send(
            "POST",
            &root,
            &firehose_headers("req-path", None, false),
            body,
        )
        .await;
        check_shape(&r, 404, "req-path");
    }
    let text = stop_logged(child, &log);
    let warnings = warnings(&text);
    assert_eq!(warnings.len(), 1, "{text}");
    let w = warnings[0];
    assert!(
        w.contains("req-path") && w.contains(r#"path="/""#) && w.contains("path=/firehose"),
        "{w}"
    );
    assert!(w.contains("--path"), "says what to do: {w}");
}

// Firehose neither retries a 413 nor writes its batch to S3: the records are lost. An
// authenticated body over --max-body-mib (64 MiB, the least it takes, here a gzip body that
// decompresses past it) is logged as an error that says so and what to change, where it was
// the warning every 400 gets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_is_logged_as_lost() {
    let server = MongoServer::start();
    let db = unique_name("fh413");
    let (child, port, log) =
        logged_endpoint(&server.uri, &["--database", &db, "--max-body-mib", "64"]).await;
    let url = format!("http://127.0.0.1:{port}/");
    let big = gzip(&vec![b' '; (64 << 20) + 1]);
    let r = send(
        "POST",
        &url,
        &firehose_headers("req-413", Some(KEY), true),
        big,
    )
    .await;
    check_shape(&r, 413, "req-413");
    let text = stop_logged(child, &log);
    let line = text
        .lines()
        .find(|l| l.contains("req-413"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains(" ERROR "), "{line}");
    assert!(
        line.contains("lost") && line.contains("--max-body-mib"),
        "{line}"
    );
}

// A database down while Firehose sends and re-sends deliveries: the failing writes are said
// when they begin, then at most once a minute, and their end once; each failed delivery was
// two warnings ("database write failed", "delivery refused"), through every retry of an outage.
#[tokio::test(flavor = "multi_thread")]
async fn a_database_outage_is_said_once_and_its_end_once() {
    let Some(mut server) = MongoServer::not_started() else {
        return;
    };
    // Each delivery gives up on the database after 300 ms instead of 10 s.
    let uri = format!("{}&serverSelectionTimeoutMS=300", server.uri);
    let db = unique_name("fhdown");
    let (child, port, log) = logged_endpoint(&uri, &["--database", &db]).await;
    let url = format!("http://127.0.0.1:{port}/");
    let deliver = |id: &'static str| {
        let url = url.clone();
        async move {
            let body = firehose_body(id, &reports(2).1);
            send("POST", &url, &firehose_headers(id, Some(KEY), false), body)
                .await
                .status
        }
    };
    for _ in 0..5 {
        assert_eq!(deliver("req-down").await, 503);
    }
    server.launch();
    assert_eq!(deliver("req-up").await, 200);
    let text = stop_logged(child, &log);
    let warnings = warnings(&text);
    assert_eq!(warnings.len(), 1, "{text}");
    assert!(
        warnings[0].contains("database writes are failing") && warnings[0].contains("req-down"),
        "{text}"
    );
    assert_eq!(
        text.matches("database writes work again").count(),
        1,
        "{text}"
    );
}

/// The endpoint's settings for the tests that serve it in this process: path `/`, the test key,
/// 64 MiB bodies, and `body_timeout`.
fn config(body_timeout: Duration) -> EndpointConfig {
    EndpointConfig {
        path: "/".into(),
        keys: AccessKeys::new([KEY.as_bytes()]),
        max_body_bytes: 64 << 20,
        collection: "firehose".into(),
        decode: DecodeOptions::default(),
        body_timeout,
    }
}

/// Serve `state` on a free loopback port (over TLS with `tls`, within `limits`) as the program
/// does, its connections counted in its metrics, until the returned sender is used or dropped:
/// the address, that sender, and the serving task.
async fn serve_in_process(
    state: AppState,
    tls: Option<std::sync::Arc<tokio_rustls::rustls::ServerConfig>>,
    limits: Limits,
) -> (
    std::net::SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let connections = Some(state.metrics.connections.clone());
    let served = tokio::spawn(serve(
        listener,
        app(state),
        tls,
        connections,
        limits,
        async {
            let _ = rx.await;
        },
    ));
    (addr, tx, served)
}

/// The test certificate and key (tests/fixtures), as the endpoint loads them, and a client that
/// trusts that certificate.
fn test_tls() -> (
    std::sync::Arc<tokio_rustls::rustls::ServerConfig>,
    tokio_rustls::TlsConnector,
) {
    use std::sync::Arc;
    use tokio_rustls::rustls::{self, pki_types::pem::PemObject, pki_types::CertificateDer};
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let cert = fixtures.join("firehose-test-cert.pem");
    let key = fixtures.join("firehose-test-key.pem");
    let tls = sensehat_monitor::firehose::server::tls_config(&cert, &key).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(&cert).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client_config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (
        tls,
        tokio_rustls::TlsConnector::from(Arc::new(client_config)),
    )
}

/// The name the test certificate is for.
fn localhost() -> tokio_rustls::rustls::pki_types::ServerName<'static> {
    tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").unwrap()
}

/// An HTTP/1 connection over TLS to `addr`, its connection task spawned.
async fn tls_sender(
    addr: std::net::SocketAddr,
    connector: &tokio_rustls::TlsConnector,
) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let stream = connector.connect(localhost(), tcp).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    sender
}

// With --tls-cert/--tls-key the endpoint serves HTTPS itself: a client trusting the certificate
// delivers over TLS and gets a Firehose-shaped 200; a plain-HTTP client gets no answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_https() {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let cert = fixtures.join("firehose-test-cert.pem");
    assert!(sensehat_monitor::firehose::server::tls_config(&cert, &cert).is_err());
    let (tls, connector) = test_tls();

    let server = MongoServer::start();
    let db_name = unique_name("fhtls");
    let state = AppState::new(config(BODY_TIMEOUT), Store::new(&server.uri, &db_name));
    let (addr, tx, served) = serve_in_process(state, Some(tls), LIMITS).await;

    let mut sender = tls_sender(addr, &connector).await;
    let (ids, recs) = reports(2);
    let mut req = hyper::Request::builder()
        .method("POST")
        .uri("/")
        .header("host", "localhost");
    for (k, v) in firehose_headers("req-tls", Some(KEY), false) {
        req = req.header(k, v);
    }
    let resp = sender
        .send_request(
            req.body(Full::new(Bytes::from(firehose_body("req-tls", &recs))))
                .unwrap(),
        )
        .await
        .unwrap();
    let reply = Reply {
        status: resp.status().as_u16(),
        headers: resp.headers().clone(),
        body: resp
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    };
    check_shape(&reply, 200, "req-tls");
    let coll = server
        .client()
        .await
        .database(&db_name)
        .collection::<Document>("firehose");
    assert_eq!(
        coll.count_documents(doc! { "_id": ids[1] }).await.unwrap(),
        1
    );

    // Plain HTTP to the TLS port gets no HTTP answer.
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let plain = client
        .request(
            hyper::Request::builder()
                .uri(format!("http://{addr}/health"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
    assert!(plain.is_err());

    tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), served)
        .await
        .expect("TLS server stops on shutdown")
        .unwrap();
}

// Over TLS too, a client that pipelines requests and never reads the answers holds its slot
// only until a write to it has waited the write timeout: with both slots held so, well past
// the header timeout, a third client is answered. (Only the header timeout bounded a
// connection, and it runs only while a request's headers are read: the third client waited
// in the backlog for ever.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_clients_that_stop_reading_free_their_slots() {
    use tokio::io::AsyncWriteExt;
    let (tls, connector) = test_tls();
    let state = AppState::new(config(BODY_TIMEOUT), unreachable_store());
    let limits = Limits {
        max_connections: 2,
        header_timeout: Duration::from_secs(1),
        write_timeout: Duration::from_secs(2),
        ..LIMITS
    };
    let (addr, tx, _served) = serve_in_process(state, Some(tls), limits).await;
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(1024).unwrap();
        let tcp = socket.connect(addr).await.unwrap();
        let mut stream = connector.connect(localhost(), tcp).await.unwrap();
        // Health checks until the endpoint stops reading them, its answers having filled
        // every buffer on the way, and on until it closes the connection.
        stalled.push(tokio::spawn(async move {
            let requests = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n".repeat(1000);
            while stream.write_all(&requests).await.is_ok() {}
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let status = tokio::time::timeout(Duration::from_secs(10), async {
        let mut sender = tls_sender(addr, &connector).await;
        let req = hyper::Request::builder()
            .uri("/health")
            .header("host", "localhost")
            .body(Full::new(Bytes::new()))
            .unwrap();
        sender.send_request(req).await.unwrap().status()
    })
    .await
    .expect("a third client not answered within 10 s");
    assert_eq!(status, 200);
    for s in stalled {
        s.abort();
    }
    let _ = tx.send(());
}

/// Run the binary with these arguments and environment (no other endpoint settings from the
/// test's own environment); its exit code and what it logged.
fn run_endpoint(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_firehose-endpoint"));
    for (k, _) in std::env::vars() {
        if k.starts_with("FIREHOSE_") || k == "MONGODB_CONNECTION_STRING" {
            cmd.env_remove(k);
        }
    }
    let out = cmd
        .args(args)
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// `check-config` validates, says what it found and exits 0, or exits 2 with the error; the old
// spellings (`--check-config`, `--body-timeout-seconds`, FIREHOSE_BODY_TIMEOUT_SECONDS) still work.
#[test]
fn check_config_command_and_old_spellings() {
    let uri = ("MONGODB_CONNECTION_STRING", "mongodb://127.0.0.1:1/");
    let key = ("FIREHOSE_ACCESS_KEY", "k1,k2");
    let (code, log) = run_endpoint(&["--body-timeout", "90s", "check-config"], &[uri, key]);
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("configuration is valid"), "{log}");
    assert!(
        log.contains("keys=2") && log.contains("body_timeout=90s"),
        "{log}"
    );
    let (code, log) = run_endpoint(
        &["--check-config", "--body-timeout-seconds", "9"],
        &[uri, key],
    );
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("body_timeout=9s"), "{log}");
    let old_env = ("FIREHOSE_BODY_TIMEOUT_SECONDS", "7");
    let (code, log) = run_endpoint(&["check-config"], &[uri, key, old_env]);
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("body_timeout=7s"), "{log}");
    let new_env = ("FIREHOSE_BODY_TIMEOUT", "2m");
    let (code, log) = run_endpoint(&["check-config"], &[uri, key, new_env]);
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("body_timeout=120s"), "{log}");
    // Wrong: no key, in either spelling, is exit 2 naming what is missing.
    for args in [&["check-config"][..], &["--check-config"]] {
        let (code, log) = run_endpoint(args, &[uri]);
        assert_eq!(code, Some(2), "{log}");
        assert!(log.contains("FIREHOSE_ACCESS_KEY"), "{log}");
    }
    let (code, log) = run_endpoint(
        &["check-config"],
        &[("MONGODB_CONNECTION_STRING", "http://x"), key],
    );
    assert_eq!(code, Some(2), "{log}");
}

// The template's placeholder key (systemd/firehose-endpoint.env), uncommented and not edited,
// is refused by check-config and at start alike, exit 2 saying how to make a key: it was
// accepted, and served an endpoint facing the internet under a key anyone can guess. A key
// shorter than 32 characters is warned about, not refused.
#[test]
fn the_template_placeholder_key_is_refused() {
    let uri = ("MONGODB_CONNECTION_STRING", "mongodb://127.0.0.1:1/");
    let listen = format!("127.0.0.1:{}", free_port());
    let placeholder = (
        "FIREHOSE_ACCESS_KEY",
        "good-key-0123456789-0123456789-0123,change-me",
    );
    for args in [&["check-config"][..], &["--listen", &listen]] {
        let (code, log) = run_endpoint(args, &[uri, placeholder]);
        assert_eq!(code, Some(2), "{args:?}: {log}");
        assert!(
            log.contains("change-me") && log.contains("openssl rand -base64 48"),
            "{log}"
        );
    }
    let (code, log) = run_endpoint(&["check-config"], &[uri, ("FIREHOSE_ACCESS_KEY", "short")]);
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("shorter than 32 characters"), "{log}");
    let long = ("FIREHOSE_ACCESS_KEY", "good-key-0123456789-0123456789-0123");
    let (code, log) = run_endpoint(&["check-config"], &[uri, long]);
    assert_eq!(code, Some(0), "{log}");
    assert!(!log.contains("shorter than"), "{log}");
}

// /readyz on the delivery port, open to anyone, answers a fixed JSON "not ready" when the
// database cannot be reached: none of the driver's error (host names, addresses, topology).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_tells_no_one_where_the_database_is() {
    let port = free_port();
    let uri = format!(
        "mongodb://db-internal-7.example.invalid:27017,127.0.0.1:{port}/?serverSelectionTimeoutMS=500"
    );
    let state = AppState::new(config(BODY_TIMEOUT), Store::new(&uri, "monitors"));
    let (addr, tx, _served) = serve_in_process(state, None, LIMITS).await;
    let r = send("GET", &format!("http://{addr}/readyz"), &[], Vec::new()).await;
    let body = String::from_utf8_lossy(&r.body);
    assert_eq!(r.status, 503, "{body}");
    for secret in ["example.invalid", "127.0.0.1", &port.to_string()] {
        assert!(!body.contains(secret), "{secret} leaked: {body}");
    }
    assert_eq!(body, r#"{"status":"not ready"}"#);
    assert_eq!(r.headers["content-type"], "application/json");
    assert_eq!(r.headers["content-length"], body.len().to_string().as_str());
    for health in ["/health", "/healthz"] {
        let r = send("GET", &format!("http://{addr}{health}"), &[], Vec::new()).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.headers["content-type"], "application/json");
    }
    for route in ["/health", "/readyz"] {
        let r = send("POST", &format!("http://{addr}{route}"), &[], Vec::new()).await;
        assert_eq!(r.status, 405);
        assert_eq!(r.headers["content-type"], "application/json");
    }
    let _ = tx.send(());
}

// /readyz needs no key: requests looping on it share one ping, whose outcome they all take,
// so that however many come at once one ping at most is in flight (here one that never
// answers) and the deliveries' writes still find connections. Each /readyz pinged on its
// own, through the pool the writes use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_requests_share_one_ping() {
    use common::wire::{Sent, Withhold, ZlibProxy};
    let Some(server) = MongoServer::own() else {
        return;
    };
    let proxy = ZlibProxy::start_withholding(server.port, &[("ping", Withhold::Stall)]);
    let opts = Opts {
        uri: Some(proxy.uri()),
        ..Opts::default()
    };
    let ep = start(&server, opts).await;
    let (_, warm) = reports(1);
    check_shape(
        &deliver(&ep, "req-warm", &warm, false).await,
        200,
        "req-warm",
    );
    let pings = || {
        let sent = proxy.sent();
        sent.iter()
            .filter(|s| matches!(s, Sent::Command { name, .. } if name == "ping"))
            .count()
    };
    let url = format!("{}/readyz", ep.url.trim_end_matches('/'));
    let probes: Vec<_> = (0..40)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { send("GET", &url, &[], Vec::new()).await.status })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (ids, records) = reports(50);
    let started = std::time::Instant::now();
    check_shape(
        &deliver(&ep, "req-beside-pings", &records, false).await,
        200,
        "req-beside-pings",
    );
    let took = started.elapsed();
    for p in probes {
        assert_eq!(p.await.unwrap(), 503);
    }
    assert_eq!(pings(), 1, "pings sent for 40 /readyz at once");
    // Waiting for the stalled pings would take /readyz's 3 s timeout.
    assert!(
        took < Duration::from_millis(2500),
        "the delivery took {took:?}"
    );
    assert_eq!(count_id(&ep, ids[49]).await, 1);
}

// Over a socket: without the access key, a request id too long is still 401, not 400; the
// caller learns nothing about the other checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_key_is_401_whatever_the_request_id() {
    let server = MongoServer::start();
    let ep = start(&server, Opts::default()).await;
    let long = "r".repeat(300);
    let headers = firehose_headers(&long, None, false);
    let r = send("POST", &ep.url, &headers, firehose_body(&long, &[])).await;
    assert_eq!(r.status, 401, "{}", String::from_utf8_lossy(&r.body));
}

// One deadline per request from its arrival, shared by the body and the database write: with a
// body that takes 2.5 s and a database that never acknowledges (a proxy withholds the writes),
// an 8 s deadline answers 503 at 8 s after arrival, not 8 s after the body (10.5 s), nor after
// the old 150 s write timeout of its own (Firehose gives up at 180 s and sends the batch
// again). The body timeout (6 s) leaves a stalled test machine room to send the body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_deadline_covers_the_body_and_the_write() {
    use common::wire::ZlibProxy;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some(server) = MongoServer::own() else {
        return;
    };
    let stalled = [("update", Withhold::Stall), ("bulkWrite", Withhold::Stall)];
    let proxy = ZlibProxy::start_withholding(server.port, &stalled);
    let store = Store::new(&proxy.uri(), &unique_name("fhdeadline"));
    let state = AppState::new(config(Duration::from_secs(6)), store)
        .with_request_deadline(Duration::from_secs(8));
    let metrics = state.metrics.clone();
    let (addr, tx, _served) = serve_in_process(state, None, LIMITS).await;

    let body = firehose_body("req-deadline", &reports(3).1);
    let mut head = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in firehose_headers("req-deadline", Some(KEY), false) {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    let arrived = std::time::Instant::now();
    c.write_all(head.as_bytes()).await.unwrap();
    c.write_all(&body[..10]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    c.write_all(&body[10..]).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(20), c.read(&mut buf))
        .await
        .expect("no answer within 20 s")
        .unwrap();
    let took = arrived.elapsed();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(
        took >= Duration::from_millis(7800) && took < Duration::from_millis(10_400),
        "answered after {took:?}"
    );
    // The write the deadline cut short is in the write-duration histogram: it was observed
    // only when a write returned, so the stalled ones, the slowest, were never seen.
    let text = sensehat_monitor::metrics::encode(&metrics.registry()).unwrap();
    let sample = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    };
    let prefix = "firehose_endpoint_database_write_duration_seconds";
    assert_eq!(sample(&format!("{prefix}_count")), 1.0, "{text}");
    assert!(sample(&format!("{prefix}_sum")) >= 4.0, "{text}");
    let _ = tx.send(());
}

/// A store for tests whose requests never reach the database: nothing listens at its address.
fn unreachable_store() -> Store {
    Store::new(&format!("mongodb://127.0.0.1:{}/", free_port()), "monitors")
}

// A stop waits for the requests under way only for the grace: a delivery whose body stalls
// half-sent, which the endpoint would wait for until --body-timeout (120 s), no longer keeps
// `serve` from returning once the grace has passed. (It waited for every connection to end,
// and a client that kept one open held the stop for as long as it liked.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_delivery_does_not_hold_the_stop() {
    use tokio::io::AsyncWriteExt;
    let state = AppState::new(config(BODY_TIMEOUT), unreachable_store());
    let budget = state.body_budget.clone();
    let room = budget.available_permits();
    let limits = Limits {
        shutdown_grace: Duration::from_millis(500),
        ..LIMITS
    };
    let (addr, tx, served) = serve_in_process(state, None, limits).await;
    let mut head = String::from("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n");
    for (k, v) in firehose_headers("req-stop", Some(KEY), false) {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n{\"requestI");
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    c.write_all(head.as_bytes()).await.unwrap();
    // Under way once it holds its share of the body budget, waiting for the rest of its body.
    wait_until(
        Duration::from_secs(10),
        "the delivery to be under way",
        || async { budget.available_permits() < room },
    )
    .await;
    tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), served)
        .await
        .expect("serve still waits for the stalled delivery 10 s after the stop")
        .unwrap();
    drop(c);
}

// The connections gauge counts a connection from its accept, while its TLS handshake is still
// under way, until it closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_connections_are_counted_from_the_handshake_on() {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let tls = sensehat_monitor::firehose::server::tls_config(
        &fixtures.join("firehose-test-cert.pem"),
        &fixtures.join("firehose-test-key.pem"),
    )
    .unwrap();
    let state = AppState::new(config(BODY_TIMEOUT), unreachable_store());
    let open = state.metrics.connections.clone();
    let (addr, tx, _served) = serve_in_process(state, Some(tls), LIMITS).await;
    // A client that sends nothing: its handshake waits for it.
    let c = tokio::net::TcpStream::connect(addr).await.unwrap();
    wait_until(
        Duration::from_secs(10),
        "the connection counted",
        || async { open.get() == 1 },
    )
    .await;
    drop(c);
    wait_until(
        Duration::from_secs(10),
        "the closed connection uncounted",
        || async { open.get() == 0 },
    )
    .await;
    let _ = tx.send(());
}
