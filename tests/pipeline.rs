//! The whole pipeline, offline: agent (sim) -> monitors.reports -> kinesis-forwarder ->
//! kinesis-local -> firehose-local -> firehose-endpoint -> monitors.firehose.
#![cfg(all(feature = "forwarder", feature = "firehose"))]

mod common;
#[path = "common/kinesis.rs"]
mod kinesis;

use std::collections::HashMap;
use std::net::TcpStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{free_port, sim_agent, unique_name, MongoServer};
use kinesis::{KinesisServer, AWS_ENV};
use mongodb::bson::{doc, spec::ElementType, Document};

const ACCESS_KEY: &str = "pipeline-test-key";

struct Pipeline {
    mongo: MongoServer,
    kin: KinesisServer,
    db: String,
    stream: String,
    endpoint: tokio::process::Child,
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
        let endpoint = endpoint
            .args(["--listen", &format!("127.0.0.1:{port}"), "--path", "/"])
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

    fn agent(&self, count: u32, spool: &std::path::Path) -> tokio::process::Child {
        tokio::process::Command::from(sim_agent(&self.mongo.uri, &self.db, count, spool))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the agent")
    }

    /// Wait until monitors.firehose holds every report, then check each is there exactly once
    /// with the original ObjectId and fields.
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
            let id = d.get_object_id("_id").unwrap().to_hex();
            assert!(arrived.insert(id, d).is_none());
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
    assert!(p.agent(40, spool.path()).wait().await.unwrap().success());
    p.assert_exactly_once(&client).await;
    let _ = fwd.start_kill();
    let _ = p.firehose.start_kill();
    let _ = p.endpoint.start_kill();
    client.database(&p.db).drop().await.unwrap();
}

// The forwarder SIGKILLed mid-stream and restarted: nothing lost, and the duplicates it sends
// again upstream leave no duplicate in monitors.firehose.
#[tokio::test(flavor = "multi_thread")]
async fn sigkill_of_the_forwarder_loses_nothing_and_duplicates_nothing() {
    let mut p = Pipeline::start(false).await;
    let client = p.mongo.client().await;
    let mut fwd = p.forwarder();
    p.wait_for_position(&client).await;
    let spool = tempfile::tempdir().unwrap();
    let mut agent = p.agent(80, spool.path());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    fwd.start_kill().unwrap(); // SIGKILL
    fwd.wait().await.unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mut fwd = p.forwarder();
    assert!(agent.wait().await.unwrap().success());
    p.assert_exactly_once(&client).await;
    let _ = fwd.start_kill();
    let _ = p.firehose.start_kill();
    let _ = p.endpoint.start_kill();
    client.database(&p.db).drop().await.unwrap();
}
