//! A real AWS emulator for the EventBridge tests: moto's server (`moto[server]`, installed with
//! boto3 into .venv-aws by `.ci/aws.sh`), started on a free loopback port and killed on drop.
//! Set `MOTO_SERVER` to another `moto_server`; the `python` beside it (with boto3) sets up buses,
//! rules and SQS queues and reads the queues back, since the tests have no SQS client of their own.
#![allow(dead_code)]

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `$MOTO_SERVER`, else `.venv-aws/bin/moto_server` in the package.
pub fn moto_server_path() -> PathBuf {
    match std::env::var_os("MOTO_SERVER") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv-aws/bin/moto_server"),
    }
}

pub struct MotoServer {
    pub endpoint: String,
    python: PathBuf,
    child: Child,
}

/// Sets up and reads back through boto3: `python -c SCRIPT ENDPOINT ARGS...`.
const SETUP: &str = r#"
import json, sys, boto3
endpoint, bus, queue = sys.argv[1:4]
kw = dict(endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test")
events, sqs = boto3.client("events", **kw), boto3.client("sqs", **kw)
if bus != "default":
    events.create_event_bus(Name=bus)
url = sqs.create_queue(QueueName=queue)["QueueUrl"]
arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
pattern = {"source": ["sensehat-monitor.forwarder"], "detail-type": ["MongoDB change event"]}
events.put_rule(Name=queue, EventBusName=bus, EventPattern=json.dumps(pattern), State="ENABLED")
events.put_targets(Rule=queue, EventBusName=bus, Targets=[{"Id": "q", "Arn": arn}])
print(url)
"#;

/// Receives (and deletes) every message waiting in a queue; prints one body per line.
const DRAIN: &str = r#"
import sys, boto3
endpoint, url = sys.argv[1:3]
sqs = boto3.client("sqs", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test")
while True:
    got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
    if not got:
        break
    for m in got:
        print(m["Body"].replace("\n", " "))
    sqs.delete_message_batch(QueueUrl=url, Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(got)])
"#;

impl MotoServer {
    /// Start moto; `None` (having said why) when it is not installed and `CI` is unset.
    pub fn start() -> Option<MotoServer> {
        let path = moto_server_path();
        if !path.exists() {
            assert!(
                std::env::var_os("CI").is_none(),
                "{} is missing: CI must install .venv-aws (bash .ci/aws.sh) before cargo test",
                path.display()
            );
            eprintln!(
                "SKIPPED: {} is missing (install it with `bash .ci/aws.sh`, or set MOTO_SERVER)",
                path.display()
            );
            return None;
        }
        let port = super::common::free_port();
        let child = Command::new(&path)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", path.display()));
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "moto_server did not start on {port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(MotoServer {
            endpoint: format!("http://127.0.0.1:{port}"),
            python: path.with_file_name("python"),
            child,
        })
    }

    fn python(&self, script: &str, args: &[&str]) -> String {
        let out = Command::new(&self.python)
            .arg("-c")
            .arg(script)
            .arg(&self.endpoint)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.python.display()));
        assert!(
            out.status.success(),
            "boto3 script failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Create `bus` (unless it is "default") and an SQS queue named `queue` receiving, through a
    /// rule matching the forwarder's Source and DetailType, every event on it; returns the queue URL.
    pub fn bus_to_queue(&self, bus: &str, queue: &str) -> String {
        self.python(SETUP, &[bus, queue]).trim().to_owned()
    }

    /// An EventBridge client of this server, for calls made in the test's own process.
    pub fn client(&self) -> aws_sdk_eventbridge::Client {
        client_at(&self.endpoint)
    }

    /// The events waiting in the queue at `url` (taken out of it), as JSON.
    pub fn drain(&self, url: &str) -> Vec<serde_json::Value> {
        self.python(DRAIN, &[url])
            .lines()
            .map(|l| serde_json::from_str(l).expect("an SQS body is an event as JSON"))
            .collect()
    }
}

/// An EventBridge client of the server at `endpoint` (moto, or a proxy in front of it), with
/// static credentials.
pub fn client_at(endpoint: &str) -> aws_sdk_eventbridge::Client {
    use aws_sdk_eventbridge::config::{BehaviorVersion, Credentials, Region};
    let config = aws_sdk_eventbridge::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "test"))
        .endpoint_url(endpoint)
        .build();
    aws_sdk_eventbridge::Client::from_conf(config)
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
