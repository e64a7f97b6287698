//! firehose-local across a reshard: the Kinesis emulator splits or merges a shard, and
//! firehose-local delivers to the real endpoint over a socket in front of the real MongoDB
//! wire-protocol server. A newer record of an `_id`, put in a child shard, must win over the
//! older one in its parent.
#![cfg(all(feature = "forwarder", feature = "firehose"))]

mod common;
#[path = "common/firehose.rs"]
mod firehose_common;
#[path = "common/kinesis.rs"]
mod kinesis;

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{unique_name, wait_until, MongoServer};
use firehose_common::{start, Endpoint, Opts, KEY};
use kinesis::{KinesisServer, AWS_ENV};
use mongodb::bson::doc;

/// Half of Kinesis's 128-bit hash key range: where a split cuts a shard in two.
const HALF_HASH_KEY: &str = "170141183460469231731687303715884105728";

/// Put `{"_id": <i as 24 hex>, "v": version}` for `i` in `0..n`, with partition key `key(i)`.
async fn put_versions(
    kin: &KinesisServer,
    stream: &str,
    n: usize,
    version: u32,
    key: impl Fn(usize) -> String,
) {
    kin.put_all(
        stream,
        (0..n).map(|i| {
            (
                key(i),
                format!(r#"{{"_id":"{i:024x}","v":{version}}}"#).into_bytes(),
            )
        }),
    )
    .await;
}

/// Wait until the stream lists `shards` shards and is ACTIVE again after a reshard.
async fn wait_for_shards(kin: &KinesisServer, stream: &str, shards: usize) {
    let client = kin.client();
    wait_until(Duration::from_secs(30), "the reshard", || {
        let client = client.clone();
        async move {
            let listed = client.list_shards().stream_name(stream).send().await;
            let summary = client
                .describe_stream_summary()
                .stream_name(stream)
                .send()
                .await;
            listed.is_ok_and(|l| l.shards().len() == shards)
                && summary.is_ok_and(|s| {
                    s.stream_description_summary().map(|d| d.stream_status())
                        == Some(&aws_sdk_kinesis::types::StreamStatus::Active)
                })
        }
    })
    .await;
}

/// firehose-local from the oldest record, delivering to `ep` every second.
fn spawn(
    kin: &KinesisServer,
    stream: &str,
    ep: &Endpoint,
    extra: &[&str],
) -> tokio::process::Child {
    spawn_at(&kin.endpoint, stream, ep, extra, Stdio::null())
}

/// [`spawn`] reading Kinesis at `kinesis`, its log (info and up) to `stderr`.
fn spawn_at(
    kinesis: &str,
    stream: &str,
    ep: &Endpoint,
    extra: &[&str],
    stderr: Stdio,
) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_firehose-local"))
        .args(["--stream-name", stream, "--kinesis-endpoint-url", kinesis])
        .args(["--destination-url", &ep.url])
        .args(["--from-start", "--buffer-seconds", "1"])
        .args(extra)
        .envs(AWS_ENV)
        .env("FIREHOSE_ACCESS_KEY", KEY)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .expect("start firehose-local")
}

/// `stream` made of two shards holding v1 of 200 documents, merged into a third holding v2 of
/// the same `_id`s.
async fn merged_with_versions(kin: &KinesisServer, stream: &str) {
    kin.create_stream(stream, 2).await;
    let key = |i: usize| format!("key-{i}");
    put_versions(kin, stream, 200, 1, key).await;
    kin.client()
        .merge_shards()
        .stream_name(stream)
        .shard_to_merge("shardId-000000000000")
        .adjacent_shard_to_merge("shardId-000000000001")
        .send()
        .await
        .unwrap();
    wait_for_shards(kin, stream, 3).await;
    put_versions(kin, stream, 200, 2, key).await;
}

/// GetShardIterator calls seen, by shard id.
type Asked = Arc<Mutex<HashMap<String, usize>>>;

/// A pass-through to the emulator at `upstream` that counts GetShardIterator calls by shard:
/// how a test sees a reader retrying.
async fn counting_kinesis(upstream: String) -> (String, Asked) {
    use axum::body::Bytes;
    use axum::http::{HeaderMap, StatusCode, Uri};
    use axum::response::IntoResponse;
    let asked: Asked = Arc::default();
    let counts = asked.clone();
    let http = reqwest::Client::new();
    let pass = move |uri: Uri, headers: HeaderMap, body: Bytes| {
        let (counts, http, upstream) = (counts.clone(), http.clone(), upstream.clone());
        async move {
            let target = headers
                .get("x-amz-target")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if target.ends_with(".GetShardIterator") {
                let request: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                let shard = request["ShardId"].as_str().unwrap_or_default().to_owned();
                *counts.lock().unwrap().entry(shard).or_default() += 1;
            }
            let mut req = http.post(format!("{upstream}{uri}")).body(body);
            for (name, value) in &headers {
                if name != "host" && name != "content-length" {
                    req = req.header(name.as_str(), value.as_bytes());
                }
            }
            let answer = req.send().await.unwrap();
            let status = StatusCode::from_u16(answer.status().as_u16()).unwrap();
            let kind = answer
                .headers()
                .get("content-type")
                .map(|v| v.as_bytes().to_vec())
                .unwrap_or_default();
            let body = answer.bytes().await.unwrap();
            (status, [("content-type", kind)], body).into_response()
        }
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, axum::Router::new().fallback(pass)).await;
    });
    (url, asked)
}

/// Wait until the endpoint's collection holds `n` documents, each at version `v`.
async fn wait_for_versions(ep: &Endpoint, n: u64, v: i64) {
    let coll = ep.coll();
    let (mut all, mut at_v) = (0, 0);
    for _ in 0..300 {
        all = coll.count_documents(doc! {}).await.unwrap();
        at_v = coll.count_documents(doc! { "v": v }).await.unwrap();
        if all == n && at_v == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{all} documents, {at_v} of them at v{v}; expected {n} at v{v}");
}

// A split with a backlog: 200 records at v1 in the parent, the same _ids at v2 in a child. Read
// from the start, the child is read only once the parent has been delivered, so every document
// ends at v2. The checkpoint file marks the parent ended, and a restart from it is not held by
// the parent: v3 put in the child arrives, and nothing older overwrites it.
#[tokio::test(flavor = "multi_thread")]
async fn a_split_shards_children_are_delivered_after_it() {
    let kin = KinesisServer::start();
    let server = MongoServer::start();
    let ep = start(&server, Opts::default()).await;
    let stream = unique_name("fhsplit");
    kin.create_stream(&stream, 1).await;
    put_versions(&kin, &stream, 200, 1, |_| "1".into()).await;
    kin.client()
        .split_shard()
        .stream_name(&stream)
        .shard_to_split("shardId-000000000000")
        .new_starting_hash_key(HALF_HASH_KEY)
        .send()
        .await
        .unwrap();
    wait_for_shards(&kin, &stream, 3).await;
    put_versions(&kin, &stream, 200, 2, |_| "1".into()).await;

    let dir = tempfile::tempdir().unwrap();
    let checkpoint = dir.path().join("positions.json");
    let cp = ["--checkpoint-file", checkpoint.to_str().unwrap()];
    let fh = spawn(&kin, &stream, &ep, &cp);
    wait_for_versions(&ep, 200, 2).await;
    stop(fh).await;
    let saved = std::fs::read_to_string(&checkpoint).unwrap();
    assert!(
        saved.contains(r#""ended":["shardId-000000000000"]"#),
        "{saved}"
    );

    put_versions(&kin, &stream, 200, 3, |_| "1".into()).await;
    let mut fh = spawn(&kin, &stream, &ep, &cp);
    wait_for_versions(&ep, 200, 3).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    wait_for_versions(&ep, 200, 3).await;
    fh.start_kill().unwrap();
}

// A merge: the child waits for both parents. v1 spread over two shards, then, once merged,
// v2 of the same _ids in the child: every document ends at v2.
#[tokio::test(flavor = "multi_thread")]
async fn a_merged_shard_is_delivered_after_both_parents() {
    let kin = KinesisServer::start();
    let server = MongoServer::start();
    let ep = start(&server, Opts::default()).await;
    let stream = unique_name("fhmerge");
    merged_with_versions(&kin, &stream).await;
    let mut fh = spawn(&kin, &stream, &ep, &[]);
    wait_for_versions(&ep, 200, 2).await;
    fh.start_kill().unwrap();
}

// A shard that leaves the stream while it is read is read no more once ListShards confirms it is
// gone: logged once, and no GetShardIterator every second for ever; the checkpoint file forgets
// the shards gone. The emulator never expires a
// shard (its shortest retention is a day), so the stream is created again with one shard: the
// merged child being read, shardId-000000000002, is then not listed and answers
// ResourceNotFoundException, as an expired shard does in Kinesis.
#[tokio::test(flavor = "multi_thread")]
async fn a_shard_gone_from_the_stream_is_read_no_more() {
    let kin = KinesisServer::start();
    let server = MongoServer::start();
    let ep = start(&server, Opts::default()).await;
    let stream = unique_name("fhgone");
    merged_with_versions(&kin, &stream).await;
    let (kinesis, asked) = counting_kinesis(kin.endpoint.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = dir.path().join("positions.json");
    let cp = ["--checkpoint-file", checkpoint.to_str().unwrap()];
    let fh = spawn_at(&kinesis, &stream, &ep, &cp, Stdio::piped());
    wait_for_versions(&ep, 200, 2).await;

    kin.client()
        .delete_stream()
        .stream_name(&stream)
        .send()
        .await
        .unwrap();
    kin.create_stream(&stream, 1).await;
    const GONE: &str = "shardId-000000000002";
    let asked_for_gone = || asked.lock().unwrap().get(GONE).copied().unwrap_or(0);
    // Time for the reader to meet the error and list the shards.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let before = asked_for_gone();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        asked_for_gone(),
        before,
        "GetShardIterator is still asked for the gone shard"
    );

    // The checkpoint forgets the shards no longer listed at the next listing (10 s apart);
    // shardId-000000000000 is listed again, in the new stream.
    wait_until(
        Duration::from_secs(30),
        "the checkpoint to forget the gone shards",
        || {
            let saved = std::fs::read_to_string(&checkpoint).unwrap_or_default();
            async move {
                let saved: serde_json::Value = serde_json::from_str(&saved).unwrap_or_default();
                let positions: Vec<&String> = saved["shards"]
                    .as_object()
                    .map(|o| o.keys().collect())
                    .unwrap_or_default();
                saved["ended"] == serde_json::json!(["shardId-000000000000"])
                    && positions == ["shardId-000000000000"]
            }
        },
    )
    .await;

    common::signal_pid(fh.id().unwrap(), 15);
    let out = fh.wait_with_output().await.unwrap();
    assert!(out.status.success());
    let log = String::from_utf8_lossy(&out.stderr);
    let said: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("no longer in the stream"))
        .collect();
    assert_eq!(said.len(), 1, "{log}");
    assert!(said[0].contains(GONE), "{log}");
}

/// SIGTERM, then expect a clean exit.
async fn stop(mut fh: tokio::process::Child) {
    common::signal_pid(fh.id().unwrap(), 15);
    assert!(fh.wait().await.unwrap().success());
}
