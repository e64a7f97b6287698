//! Only a durable acknowledgement empties the spool: with no write concern in the connection
//! string the agent asks for one that makes each acknowledged insert durable, so a server killed
//! right after acknowledging keeps every report the agent deleted from its spool.

mod common;

use std::collections::HashSet;
use std::process::Stdio;
use std::time::Duration;

use common::{agent_command, all_reports, sim_agent, unique_name, MongoServer};

/// How many runs of "insert, then kill the server at once" each test makes.
const ROUNDS: usize = 3;
const REPORTS: u32 = 150;

async fn distinct_ids(server: &MongoServer, db: &str) -> HashSet<String> {
    all_reports(&server.client().await, db)
        .await
        .iter()
        .map(|d| d.get_object_id("_id").unwrap().to_hex())
        .collect()
}

// Reports acknowledged by a server that is SIGKILLed the moment the agent has finished are all
// there after it restarts: the agent's default write concern waits for the journal.
#[tokio::test(flavor = "multi_thread")]
async fn a_server_killed_after_acknowledging_keeps_every_report() {
    let Some(mut server) = MongoServer::start_persistent() else {
        return;
    };
    let db = unique_name("durable");
    let mut expected = 0;
    for round in 0..ROUNDS {
        let spool = tempfile::tempdir().unwrap();
        let mut agent = agent_command();
        agent
            .args(["--sensors", "sim", "--interval-ms", "5", "--database", &db])
            .args(["--count", &REPORTS.to_string()])
            .arg("--spool-dir")
            .arg(spool.path())
            .env("MONGODB_CONNECTION_STRING", &server.uri)
            .stdout(Stdio::null());
        let out = tokio::process::Command::from(agent).output().await.unwrap();
        assert!(
            out.status.success(),
            "round {round}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The agent exits once every report is acknowledged (and deleted from its spool).
        server.kill();
        server.launch();
        expected += REPORTS as usize;
        let stored = distinct_ids(&server, &db).await;
        assert_eq!(
            stored.len(),
            expected,
            "round {round}: acknowledged reports lost"
        );
    }
}

// A connection string that asks for less than a durable acknowledgement is honoured, and the
// risk is said once.
#[tokio::test(flavor = "multi_thread")]
async fn a_weaker_write_concern_is_honoured_and_said_once() {
    let server = MongoServer::start();
    let db = unique_name("weak");
    let spool = tempfile::tempdir().unwrap();
    let uri = if server.uri.contains('?') {
        format!("{}&w=1", server.uri)
    } else {
        format!("{}?w=1", server.uri)
    };
    let mut agent = sim_agent(&uri, &db, 20, spool.path());
    agent.stdout(Stdio::null());
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::from(agent).output(),
    )
    .await
    .expect("the agent finishes")
    .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert_eq!(log.matches("not yet in its journal").count(), 1, "{log}");
    assert_eq!(distinct_ids(&server, &db).await.len(), 20);
}
