//! The whole pipeline, offline: agent (sim) -> monitors.reports -> kinesis-forwarder ->
//! kinesis-local -> firehose-local -> firehose-endpoint -> monitors.firehose.
#![cfg(all(feature = "forwarder", feature = "firehose"))]

mod common;
#[path = "common/kinesis.rs"]
mod kinesis;
#[path = "common/metrics.rs"]
mod metrics_common;

use std::collections::HashMap;
use std::net::TcpStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{free_port, sim_agent, unique_name, MongoServer};
use kinesis::{KinesisServer, AWS_ENV};
use mongodb::bson::{doc, spec::ElementType, Document};

const ACCESS_KEY: &str = "pipeline-test-key-0123456789-012345";

struct Pipeline {
    mongo: MongoServer,
    kin: KinesisServer,
    db: String,
    stream: String,
    endpoint: tokio::process::Child,
    /// Where the endpoint serves its metrics.
    endpoint_metrics: String,
    firehose: tokio::process::Child,
}

impl Pipeline {
    /// With `tls`, the endpoint serves HTTPS with the test certificate (as Firehose requires),
    /// and firehose-local trusts it with `--ca-cert`.
    async fn start(tls: bool) -> Pipeline {
        let mongo = MongoServer::start();
        let kin = KinesisServer::start();
        let db = unique_name("pipe");
        let stream = unique_name("realm");
        kin.create_stream(&stream, 2).await;
        let port = free_port();
        let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let cert = fixtures.join("firehose-test-cert.pem");
        let key = fixtures.join("firehose-test-key.pem");
        let mut endpoint = tokio::process::Command::new(env!("CARGO_BIN_EXE_firehose-endpoint"));
        if tls {
            endpoint
                .arg("--tls-cert")
                .arg(&cert)
                .arg("--tls-key")
                .arg(&key);
        }
        let endpoint_metrics = metrics_common::free_addr();
        let endpoint = endpoint
            .args(["--listen", &format!("127.0.0.1:{port}"), "--path", "/"])
            .args(["--metrics-listen", &endpoint_metrics])
            .args([
                "--mongodb-uri",
                &mongo.uri,
                "--database",
                &db,
                "--collection",
                "firehose",
            ])
            .env("FIREHOSE_ACCESS_KEY", ACCESS_KEY)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start firehose-endpoint");
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "firehose-endpoint did not listen"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut firehose = tokio::process::Command::new(env!("CARGO_BIN_EXE_firehose-local"));
        if tls {
            firehose
                .args(["--destination-url", &format!("https://localhost:{port}/")])
                .arg("--ca-cert")
                .arg(&cert);
        } else {
            firehose.args(["--destination-url", &format!("http://127.0.0.1:{port}/")]);
        }
        let firehose = firehose
            .args([
                "--stream-name",
                &stream,
                "--kinesis-endpoint-url",
                &kin.endpoint,
            ])
            .args([
                "--buffer-interval",
                "1s",
                "--from-start",
                "--retry-duration",
                "60s",
            ])
            .envs(AWS_ENV)
            .env("FIREHOSE_ACCESS_KEY", ACCESS_KEY)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start firehose-local");
        Pipeline {
            mongo,
            kin,
            db,
            stream,
            endpoint,
            endpoint_metrics,
            firehose,
        }
    }

    fn forwarder(&self) -> tokio::process::Child {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_kinesis-forwarder"))
            .args(["--database", &self.db, "--stream-name", &self.stream])
            .args(["--kinesis-endpoint-url", &self.kin.endpoint])
            .env("MONGODB_CONNECTION_STRING", &self.mongo.uri)
            .envs(AWS_ENV)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start kinesis-forwarder")
    }

    async fn wait_for_position(&self, client: &mongodb::Client) {
        let state = client
            .database(&self.db)
            .collection::<Document>("reports_forwarder_state");
        let deadline = Instant::now() + Duration::from_secs(30);
        while state
            .find_one(doc! { "_id": &self.stream })
            .await
            .ok()
            .flatten()
            .is_none()
        {
            assert!(
                Instant::now() < deadline,
                "the forwarder never stored a position"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The agent taking `count` reports, with `args`.
    fn agent(&self, count: u32, spool: &std::path::Path, args: &[&str]) -> tokio::process::Child {
        let mut agent = sim_agent(&self.mongo.uri, &self.db, count, spool);
        agent.args(args);
        tokio::process::Command::from(agent)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the agent")
    }

    /// Wait until monitors.firehose holds every report, then check each is there exactly once
    /// with the original ObjectId and fields. (Once by `_id`, which is unique: what can fail is
    /// a report missing, stored under another `_id` or with other values.)
    async fn assert_exactly_once(&self, client: &mongodb::Client) {
        let db = client.database(&self.db);
        let mut cursor = db
            .collection::<Document>("reports")
            .find(doc! {})
            .await
            .unwrap();
        let mut reports = Vec::new();
        while cursor.advance().await.unwrap() {
            reports.push(cursor.deserialize_current().unwrap());
        }
        let firehose = db.collection::<Document>("firehose");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let n = firehose.count_documents(doc! {}).await.unwrap() as usize;
            if n >= reports.len() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "only {n} of {} reports reached monitors.firehose",
                reports.len()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let mut cursor = firehose.find(doc! {}).await.unwrap();
        let mut arrived: HashMap<String, Document> = HashMap::new();
        while cursor.advance().await.unwrap() {
            let d: Document = cursor.deserialize_current().unwrap();
            assert_eq!(
                d.get("_id").unwrap().element_type(),
                ElementType::ObjectId,
                "{d:?}"
            );
            arrived.insert(d.get_object_id("_id").unwrap().to_hex(), d);
        }
        assert_eq!(
            arrived.len(),
            reports.len(),
            "exactly once in monitors.firehose"
        );
        for r in &reports {
            let id = r.get_object_id("_id").unwrap().to_hex();
            let a = arrived
                .get(&id)
                .unwrap_or_else(|| panic!("report {id} missing"));
            assert_eq!(
                a.get_str("nodeName").unwrap(),
                r.get_str("nodeName").unwrap()
            );
            // JSON.stringify writes a whole double as an integer (42.0 as 42), so the endpoint
            // stores an int there, as the original pipeline did: compare values, not types.
            for field in ["humidity", "temperature", "pressure"] {
                assert_eq!(number(a, field), number(r, field), "{field} of {id}");
                assert!(number(a, field).is_some(), "{field} of {id}");
            }
        }
    }
}

/// A numeric field as f64, whatever its BSON number type.
fn number(d: &Document, field: &str) -> Option<f64> {
    match d.get(field)? {
        mongodb::bson::Bson::Double(v) => Some(*v),
        mongodb::bson::Bson::Int32(v) => Some(f64::from(*v)),
        mongodb::bson::Bson::Int64(v) => Some(*v as f64),
        _ => None,
    }
}

// Every report the agent stores arrives in monitors.firehose exactly once, with its original _id,
// over HTTPS as Firehose delivers (the endpoint's own TLS, trusted with firehose-local --ca-cert).
#[tokio::test(flavor = "multi_thread")]
async fn every_report_arrives_in_firehose_exactly_once() {
    let mut p = Pipeline::start(true).await;
    let client = p.mongo.client().await;
    let mut fwd = p.forwarder();
    p.wait_for_position(&client).await;
    let spool = tempfile::tempdir().unwrap();
    assert!(p
        .agent(40, spool.path(), &[])
        .wait()
        .await
        .unwrap()
        .success());
    p.assert_exactly_once(&client).await;
    let _ = fwd.start_kill();
    let _ = p.firehose.start_kill();
    let _ = p.endpoint.start_kill();
    client.database(&p.db).drop().await.unwrap();
}

// The forwarder SIGKILLed mid-stream, while an agent stores a report every 50 ms, and started
// again from a position before the first report (as after a kill between a put and the store of
// its position): the stream then holds every report forwarded before the kill twice, the
// endpoint stores every record, the second copies too, and monitors.firehose holds each report
// once, as it was, those stored after the kill too.
#[tokio::test(flavor = "multi_thread")]
async fn sigkill_of_the_forwarder_loses_nothing_and_duplicates_nothing() {
    let mut p = Pipeline::start(false).await;
    let client = p.mongo.client().await;
    let mut fwd = p.forwarder();
    p.wait_for_position(&client).await;
    let state = client
        .database(&p.db)
        .collection::<Document>("reports_forwarder_state");
    let position = doc! { "_id": &p.stream };
    let first = state.find_one(position.clone()).await.unwrap().unwrap();
    let spool = tempfile::tempdir().unwrap();
    let mut agent = p.agent(40, spool.path(), &["--insert-every", "0"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while p.kin.read_all(&p.stream).await.len() < 15 {
        assert!(Instant::now() < deadline, "no records reached the stream");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    fwd.start_kill().unwrap(); // SIGKILL
    fwd.wait().await.unwrap();
    let before = p.kin.read_all(&p.stream).await.len();
    assert!(agent.wait().await.unwrap().success());
    let spool = tempfile::tempdir().unwrap();
    assert!(p
        .agent(40, spool.path(), &[])
        .wait()
        .await
        .unwrap()
        .success());
    let total = client
        .database(&p.db)
        .collection::<Document>("reports")
        .count_documents(doc! {})
        .await
        .unwrap() as usize;
    assert_eq!(total, 80);
    assert!(before < total, "killed after all {before} records were put");
    state.replace_one(position, &first).await.unwrap();
    let mut fwd = p.forwarder();
    // Every record the stream holds is stored by the endpoint, the duplicates too.
    let records = before + total;
    metrics_common::wait_for_metric(
        &p.endpoint_metrics,
        "firehose_endpoint_records_stored_total",
        records as f64,
    )
    .await;
    assert!(p.kin.read_all(&p.stream).await.len() >= records);
    p.assert_exactly_once(&client).await;
    let _ = fwd.start_kill();
    let _ = p.firehose.start_kill();
    let _ = p.endpoint.start_kill();
    client.database(&p.db).drop().await.unwrap();
}
