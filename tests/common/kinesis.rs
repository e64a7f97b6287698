//! A real Kinesis emulator for the tests: kinesis-local (kinesis-mock), installed by
//! `bash .ci/kinesis.sh install` into .ci/cache/kinesis, started on free ports and killed on drop.
//!
//! Set `KINESIS_TEST_ENDPOINT` (e.g. `http://127.0.0.1:4568`) to use an emulator that is already
//! running instead. Every test creates its own uniquely named stream either way.
#![allow(dead_code)]

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_kinesis::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_kinesis::types::{ShardIteratorType, StreamStatus};
use aws_sdk_kinesis::Client;

/// The directory holding kinesis-local's main.js.
pub fn package_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/cache/kinesis/node_modules/kinesis-local")
}

/// Environment for child processes (forwarder, firehose-local) talking to the emulator: static
/// credentials and a region through the standard AWS chain, nothing from the host's profile.
pub const AWS_ENV: [(&str, &str); 4] = [
    ("AWS_ACCESS_KEY_ID", "test"),
    ("AWS_SECRET_ACCESS_KEY", "test"),
    ("AWS_REGION", "us-east-1"),
    ("AWS_EC2_METADATA_DISABLED", "true"),
];

pub struct KinesisServer {
    pub endpoint: String,
    child: Option<Child>,
}

impl KinesisServer {
    pub fn start() -> KinesisServer {
        if let Ok(endpoint) = std::env::var("KINESIS_TEST_ENDPOINT") {
            return KinesisServer {
                endpoint,
                child: None,
            };
        }
        let dir = package_dir();
        assert!(
            dir.join("main.js").exists(),
            "kinesis-local is not installed: run `bash .ci/kinesis.sh install`, or set KINESIS_TEST_ENDPOINT"
        );
        // The ports are free when chosen, not when the emulator binds them: another process
        // may take one first, and the emulator then exits; it is started again on others.
        for _ in 0..3 {
            let plain = super::common::free_port();
            let tls = super::common::free_port();
            let mut child = Command::new("node")
                .arg("main.js")
                .current_dir(&dir)
                .env("KINESIS_MOCK_PLAIN_PORT", plain.to_string())
                .env("KINESIS_MOCK_TLS_PORT", tls.to_string())
                .env("CREATE_STREAM_DURATION", "0ms")
                .env("DELETE_STREAM_DURATION", "0ms")
                .env("SHOULD_PERSIST_DATA", "false")
                .env("LOG_LEVEL", "ERROR")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start node for kinesis-local: {e}"));
            // Many tests start one at once on two cores, each loading a large bundle.
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                if TcpStream::connect(("127.0.0.1", plain)).is_ok() {
                    return KinesisServer {
                        endpoint: format!("http://127.0.0.1:{plain}"),
                        child: Some(child),
                    };
                }
                if child.try_wait().ok().flatten().is_some() {
                    break;
                }
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("kinesis-local did not start on port {plain} within 120 s");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        panic!("kinesis-local exited at start three times (ports taken?)");
    }

    /// A client with static test credentials.
    pub fn client(&self) -> Client {
        let config = aws_sdk_kinesis::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("test", "test", None, None, "test"))
            .endpoint_url(&self.endpoint)
            .build();
        Client::from_conf(config)
    }

    /// Create a stream with `shards` shards and wait until it is ACTIVE.
    pub async fn create_stream(&self, name: &str, shards: i32) {
        let client = self.client();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match client
                .create_stream()
                .stream_name(name)
                .shard_count(shards)
                .send()
                .await
            {
                Ok(_) => break,
                Err(e) => {
                    assert!(Instant::now() < deadline, "CreateStream failed: {e:?}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        loop {
            let out = client
                .describe_stream_summary()
                .stream_name(name)
                .send()
                .await;
            if let Ok(out) = out {
                if out.stream_description_summary().map(|s| s.stream_status())
                    == Some(&StreamStatus::Active)
                {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "stream {name} never became ACTIVE"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `records`, one PutRecord each, under one partition key: in this order on its shard,
    /// which one PutRecords does not promise.
    pub async fn put_in_order(&self, stream: &str, records: &[&Vec<u8>]) {
        for data in records {
            self.client()
                .put_record()
                .stream_name(stream)
                .partition_key("k")
                .data(aws_sdk_kinesis::primitives::Blob::new((*data).clone()))
                .send()
                .await
                .unwrap();
        }
    }

    /// One PutRecords of (partition key, data) pairs, every one of which must be taken.
    pub async fn put_all(
        &self,
        stream: &str,
        records: impl IntoIterator<Item = (String, Vec<u8>)>,
    ) {
        let entries = records
            .into_iter()
            .map(|(key, data)| {
                aws_sdk_kinesis::types::PutRecordsRequestEntry::builder()
                    .data(aws_sdk_kinesis::primitives::Blob::new(data))
                    .partition_key(key)
                    .build()
                    .unwrap()
            })
            .collect();
        let out = self
            .client()
            .put_records()
            .stream_name(stream)
            .set_records(Some(entries))
            .send()
            .await
            .unwrap();
        assert_eq!(out.failed_record_count(), Some(0));
    }

    /// Every record in the stream, (partition key, data), shard by shard from the oldest.
    pub async fn read_all(&self, stream: &str) -> Vec<(String, Vec<u8>)> {
        let client = self.client();
        let shards = client
            .list_shards()
            .stream_name(stream)
            .send()
            .await
            .expect("ListShards");
        let mut out = Vec::new();
        for shard in shards.shards() {
            let mut it = client
                .get_shard_iterator()
                .stream_name(stream)
                .shard_id(shard.shard_id())
                .shard_iterator_type(ShardIteratorType::TrimHorizon)
                .send()
                .await
                .expect("GetShardIterator")
                .shard_iterator()
                .map(str::to_owned);
            while let Some(i) = it.take() {
                let page = client
                    .get_records()
                    .shard_iterator(i)
                    .limit(10_000)
                    .send()
                    .await
                    .expect("GetRecords");
                for r in page.records() {
                    out.push((
                        r.partition_key().unwrap_or_default().to_owned(),
                        r.data().as_ref().to_vec(),
                    ));
                }
                if page.records().is_empty() {
                    break;
                }
                it = page.next_shard_iterator().map(str::to_owned);
            }
        }
        out
    }
}

impl Drop for KinesisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
