//! Firehose endpoint benchmark (issue 5): run with
//!
//!     cargo bench --features firehose --bench firehose_endpoint
//!
//! Starts a SecantusDB server (as the integration tests do) and the `firehose-endpoint` binary,
//! then prints:
//! - records/s end to end for requests of 10,000 sensor reports (~300 bytes each), plain and
//!   gzip, sent one after another by a load generator in this process (bodies are built and
//!   compressed before timing), against the same number of documents upserted directly with the
//!   driver in the same way (`Client::bulk_write`, replace with upsert, ordered, w: majority;
//!   documents built before timing) in the same run;
//! - the endpoint's CPU per record for decode and parse, measured in-process over many
//!   iterations of the functions the handler calls;
//! - the endpoint process's CPU per record during the runs (/proc/PID/stat), for reference;
//! - peak RSS (VmHWM of the endpoint process) for one 64 MiB request, against the body size.
//!
//! Environment: SECANTUSD (server launcher), BENCH_REQUESTS (requests per mode, default 5).

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{free_port, MongoServer};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use mongodb::bson::{doc, oid::ObjectId, Document};
use mongodb::options::{ReplaceOneModel, WriteConcern, WriteModel};
use mongodb::Namespace;
use sensehat_monitor::firehose::decode::{decode_record, DecodeOptions};
use sensehat_monitor::firehose::protocol::{BodyReader, RequestBody};
use sensehat_monitor::firehose::store::statement_batches;
use sensehat_monitor::firehose::UpsertMethod;

/// The endpoint binary's allocator, so that the in-process decode figures match it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const RECORDS: usize = 10_000;
const KEY: &str = "bench-key";
const DB: &str = "bench";

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A sensor report as JSON.stringify wrote it, ~300 bytes.
fn report(id: ObjectId, i: usize) -> Vec<u8> {
    format!(
        r#"{{"_id":"{id}","nodeName":"pi-greenhouse-{n:02}","humidity":{h:.2},"temperature":{t:.2},"pressure":{p:.2},"isMoving":false,"acceleration":{{"x":0.0123,"y":-0.0211,"z":0.9984}},"orientation":{{"pitch":{o:.2},"roll":-0.75,"yaw":181.25}},"firmware":"sensehat-monitor/0.1.0","recordedAt":"2026-11-25T18:50:{s:02}.{ms:03}Z"}}"#,
        n = i % 12,
        h = 40.0 + (i % 100) as f64 / 7.0,
        t = 20.0 + (i % 50) as f64 / 9.0,
        p = 1000.0 + (i % 300) as f64 / 11.0,
        s = i % 60,
        ms = i % 1000,
        o = (i % 360) as f64 / 3.0,
    )
    .into_bytes()
}

/// A report with a history of past readings, `size` bytes or a little less.
fn big_report(id: ObjectId, i: usize, size: usize) -> Vec<u8> {
    let base = report(id, i);
    let mut history = String::from(r#","history":["#);
    let mut k = 0;
    loop {
        let entry = format!(
            r#"{{"t":{},"temperature":{:.2},"humidity":{:.2},"pressure":{:.2}}},"#,
            1_764_096_600_000i64 + k * 1000,
            20.0 + (k % 50) as f64 / 9.0,
            40.0 + (k % 100) as f64 / 7.0,
            1000.0 + (k % 300) as f64 / 11.0
        );
        if base.len() + history.len() + entry.len() + 2 > size {
            break;
        }
        history.push_str(&entry);
        k += 1;
    }
    history.pop();
    history.push_str("]}");
    let mut out = base[..base.len() - 1].to_vec();
    out.extend_from_slice(history.as_bytes());
    out
}

fn firehose_body(request_id: &str, records: &[Vec<u8>]) -> Vec<u8> {
    let recs: Vec<serde_json::Value> = records
        .iter()
        .map(|r| serde_json::json!({ "data": base64::engine::general_purpose::STANDARD.encode(r) }))
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "requestId": request_id, "timestamp": 1_764_096_600_000i64, "records": recs,
    }))
    .unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn batch(n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| report(ObjectId::new(), i)).collect()
}

async fn post(client: &HttpClient, url: &str, request_id: &str, body: Vec<u8>, gz: bool) -> u16 {
    let mut req = hyper::Request::builder()
        .method("POST")
        .uri(url)
        .header("x-amz-firehose-protocol-version", "1.0")
        .header("x-amz-firehose-request-id", request_id)
        .header("x-amz-firehose-access-key", KEY)
        .header("content-type", "application/json");
    if gz {
        req = req.header("content-encoding", "gzip");
    }
    let resp = client
        .request(req.body(Full::new(Bytes::from(body))).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await;
    status
}

struct EndpointProcess {
    child: Child,
    url: String,
}

impl Drop for EndpointProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl EndpointProcess {
    fn start(uri: &str) -> EndpointProcess {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_firehose-endpoint"))
            .args(["--listen", &format!("127.0.0.1:{port}"), "--database", DB])
            .env("MONGODB_CONNECTION_STRING", uri)
            .env("FIREHOSE_ACCESS_KEY", KEY)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start firehose-endpoint");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "endpoint did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        EndpointProcess {
            child,
            url: format!("http://127.0.0.1:{port}/"),
        }
    }

    fn status_kib(&self, field: &str) -> u64 {
        let text = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        text.lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// utime + stime of the process, in seconds.
    fn cpu_seconds(&self) -> f64 {
        let text = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        let after = &text[text.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = after.split_whitespace().collect();
        let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        ticks as f64 / 100.0
    }
}

/// Upsert the documents with the driver the same way the endpoint does.
async fn direct_upsert(client: &mongodb::Client, docs: Vec<Document>) {
    let ns = Namespace::new(DB, "direct");
    let models: Vec<WriteModel> = docs
        .into_iter()
        .map(|d| {
            let id = d.get("_id").cloned().unwrap();
            ReplaceOneModel::builder()
                .namespace(ns.clone())
                .filter(doc! { "_id": id })
                .replacement(d)
                .upsert(true)
                .build()
                .into()
        })
        .collect();
    client
        .bulk_write(models)
        .ordered(true)
        .write_concern(WriteConcern::majority())
        .await
        .unwrap();
}

fn decode_all(records: &[Vec<u8>]) -> Vec<Document> {
    let opts = DecodeOptions::default();
    records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let data = base64::engine::general_purpose::STANDARD.encode(r);
            decode_record(&data, "direct", i, &opts)
                .unwrap()
                .to_document()
                .unwrap()
        })
        .collect()
}

/// CPU time (user + system) of the calling thread, in seconds (10 ms resolution).
fn thread_cpu_seconds() -> f64 {
    let text = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    let after = &text[text.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    (f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()) as f64 / 100.0
}

/// The handler's CPU path: (gzip inflate), body JSON parse, per-record decode, and with
/// `statements` the upsert statements of the command as well (what remains is the driver's).
/// Returns (wall ns, thread CPU ns) per record.
fn cpu_per_record(body: &[u8], gz: bool, statements: bool, iterations: usize) -> (f64, f64) {
    let opts = DecodeOptions::default();
    let cpu0 = thread_cpu_seconds();
    let start = Instant::now();
    let mut kept = 0usize;
    for _ in 0..iterations {
        let plain;
        let bytes: &[u8] = if gz {
            let mut r = BodyReader::new(true, 64 << 20);
            r.push(body).unwrap();
            plain = r.finish().unwrap();
            &plain
        } else {
            body
        };
        let parsed: RequestBody = serde_json::from_slice(bytes).unwrap();
        let mut docs = Vec::with_capacity(parsed.records.len());
        for (i, rec) in parsed.records.iter().enumerate() {
            let d = decode_record(&rec.data, &parsed.request_id, i, &opts).unwrap();
            kept += d.as_bytes().len();
            docs.push(d);
        }
        if statements {
            for b in statement_batches(UpsertMethod::BulkWrite, &docs).unwrap() {
                kept += b.len;
            }
        }
    }
    std::hint::black_box(kept);
    let n = (iterations * RECORDS) as f64;
    (
        start.elapsed().as_nanos() as f64 / n,
        (thread_cpu_seconds() - cpu0) * 1e9 / n,
    )
}

/// Peak RSS of a fresh endpoint process for one request of about 64 MiB.
async fn peak_rss(uri: &str, gz: bool) -> (usize, u64, u64, u16) {
    let records: Vec<Vec<u8>> = (0..RECORDS)
        .map(|i| big_report(ObjectId::new(), i, 5_020))
        .collect();
    let body = firehose_body("rss", &records);
    drop(records);
    let size = body.len();
    assert!(size <= 64 << 20, "{size}");
    let wire = if gz { gzip(&body) } else { body };
    let ep = EndpointProcess::start(uri);
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    // Warm up: connection to the database, first request.
    post(
        &client,
        &ep.url,
        "rss-warm",
        firehose_body("rss-warm", &batch(10)),
        false,
    )
    .await;
    let before = ep.status_kib("VmHWM:");
    let status = post(&client, &ep.url, "rss", wire, gz).await;
    let after = ep.status_kib("VmHWM:");
    (size, before, after, status)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

async fn run() {
    let requests: usize = std::env::var("BENCH_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let server = MongoServer::start();
    let uri = server.uri.clone();
    let db_client = server.client().await;
    let http = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let ep = EndpointProcess::start(&uri);
    eprintln!("bench: SecantusDB at {uri}; {requests} requests of {RECORDS} records per mode");

    // Warm-up for both paths.
    let warm = batch(100);
    direct_upsert(&db_client, decode_all(&warm)).await;
    assert_eq!(
        post(&http, &ep.url, "warm", firehose_body("warm", &warm), false).await,
        200
    );

    let sample = report(ObjectId::new(), 1).len();

    // Rounds interleave direct, plain and gzip so that load from elsewhere on the machine
    // falls on all three alike. Everything sent is built before its timer starts.
    let mut elapsed = [0f64; 3];
    let mut process_cpu = [0f64; 2];
    let mut body_sizes = [0usize; 2];
    for r in 0..requests {
        let docs = decode_all(&batch(RECORDS));
        let t = Instant::now();
        direct_upsert(&db_client, docs).await;
        elapsed[0] += t.elapsed().as_secs_f64();
        for (m, gz) in [false, true].into_iter().enumerate() {
            let id = format!("bench-{gz}-{r}");
            let body = firehose_body(&id, &batch(RECORDS));
            let body = if gz { gzip(&body) } else { body };
            body_sizes[m] = body.len();
            let cpu0 = ep.cpu_seconds();
            let t = Instant::now();
            assert_eq!(post(&http, &ep.url, &id, body, gz).await, 200);
            elapsed[m + 1] += t.elapsed().as_secs_f64();
            process_cpu[m] += (ep.cpu_seconds() - cpu0) * 1e6 / (requests * RECORDS) as f64;
        }
    }
    let rate = |s: f64| (requests * RECORDS) as f64 / s;
    let direct = rate(elapsed[0]);
    let endpoint = [rate(elapsed[1]), rate(elapsed[2])];
    let count = db_client
        .database(DB)
        .collection::<Document>("firehose")
        .count_documents(doc! {})
        .await
        .unwrap();
    assert_eq!(count as usize, 100 + 2 * requests * RECORDS);
    drop(ep);

    // In-process CPU of decode and parse.
    let body = firehose_body("cpu", &batch(RECORDS));
    let gz_body = gzip(&body);
    let iterations = 50;
    let cpu_plain = cpu_per_record(&body, false, false, iterations);
    let cpu_gzip = cpu_per_record(&gz_body, true, false, iterations);
    let cpu_statements = cpu_per_record(&body, false, true, iterations);

    // Peak RSS for one ~64 MiB request.
    let (rss_body, rss_before, rss_after, rss_status) = peak_rss(&uri, false).await;
    let (_, gz_before, gz_after, gz_status) = peak_rss(&uri, true).await;

    let mib = |kib: u64| kib as f64 / 1024.0;
    println!();
    println!("Firehose endpoint benchmark ({requests} x {RECORDS}-record requests per mode, reports of {sample} bytes)");
    println!("| measure | value | target |");
    println!("|---|---|---|");
    println!("| direct driver bulk_write upserts | {direct:.0} records/s | |");
    for (i, name) in ["plain", "gzip"].iter().enumerate() {
        println!(
            "| endpoint {name} (body {:.1} MiB) | {:.0} records/s = {:.2} x direct | >= 0.85 |",
            body_sizes[i] as f64 / (1 << 20) as f64,
            endpoint[i],
            endpoint[i] / direct
        );
    }
    println!(
        "| decode+parse, plain (in-process, {iterations} x {RECORDS}): thread CPU | {:.2} us/record (wall {:.2}) | < 2 |",
        cpu_plain.1 / 1000.0,
        cpu_plain.0 / 1000.0
    );
    println!(
        "| decode+parse and the bulkWrite statements, plain (in-process): thread CPU | {:.2} us/record (wall {:.2}) | |",
        cpu_statements.1 / 1000.0,
        cpu_statements.0 / 1000.0
    );
    println!(
        "| decode+parse incl. gunzip (in-process): thread CPU | {:.2} us/record (wall {:.2}) | |",
        cpu_gzip.1 / 1000.0,
        cpu_gzip.0 / 1000.0
    );
    println!(
        "| endpoint process CPU, plain (all work incl. driver) | {:.2} us/record | |",
        process_cpu[0]
    );
    println!(
        "| endpoint process CPU, gzip (all work incl. driver) | {:.2} us/record | |",
        process_cpu[1]
    );
    println!(
        "| peak RSS, one {:.1} MiB plain request (status {rss_status}) | {:.1} MiB = {:.2} x body (before: {:.1} MiB) | <= 4 x |",
        rss_body as f64 / (1 << 20) as f64,
        mib(rss_after),
        (rss_after * 1024) as f64 / rss_body as f64,
        mib(rss_before)
    );
    println!(
        "| peak RSS, same request gzip (status {gz_status}) | {:.1} MiB = {:.2} x body (before: {:.1} MiB) | <= 4 x |",
        mib(gz_after),
        (gz_after * 1024) as f64 / rss_body as f64,
        mib(gz_before)
    );
}
