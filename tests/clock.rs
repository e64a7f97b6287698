//! Reports taken before systemd-timesyncd has synchronized the clock (a Pi booted without
//! network): held, then stamped with the synchronized clock. A temporary directory stands in
//! for `/run/systemd/timesync`; the marker file is created by the test.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{agent_bin, all_reports, signal, sim_agent, unique_name, MongoServer};
use mongodb::bson::oid::ObjectId;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// The dry-run agent every 50 ms with `marker` as the clock's marker; stdout lines arrive on
/// the channel as they are printed.
fn dry_run(marker: &Path, extra: &[&str]) -> (Child, mpsc::Receiver<String>) {
    let mut child = Command::new(agent_bin())
        .args(["--sensors", "sim", "--dry-run", "--interval-ms", "50"])
        .arg("--clock-sync-file")
        .arg(marker)
        .args(extra)
        .env_remove("MONGODB_CONNECTION_STRING")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// `recordedAt` of a printed report, in ms.
fn recorded_at(line: &str) -> i64 {
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    let at = v["recordedAt"]["$date"].as_str().unwrap();
    let at =
        time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339).unwrap();
    (at.unix_timestamp_nanos() / 1_000_000) as i64
}

/// Every line that arrives within `within`.
fn drain(rx: &mpsc::Receiver<String>, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut lines = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(l) => lines.push(l),
            Err(_) => break,
        }
    }
    lines
}

/// Stamped in order, 50 ms apart give or take the scheduler.
fn assert_on_the_grid(lines: &[String]) {
    let t: Vec<i64> = lines.iter().map(|l| recorded_at(l)).collect();
    for w in t.windows(2) {
        let gap = w[1] - w[0];
        assert!((20..=250).contains(&gap), "reports {gap} ms apart: {t:?}");
    }
}

// Not synchronized: nothing is printed. Once the marker appears, every held report comes out,
// stamped with when it was taken (not when it was let go), then sampling goes on as usual.
#[test]
fn reports_are_held_until_the_clock_is_synchronized_then_stamped_when_taken() {
    let run = tempfile::tempdir().unwrap();
    let marker = run.path().join("synchronized");
    let started = now_ms();
    let (mut child, rx) = dry_run(&marker, &[]);

    let early = drain(&rx, Duration::from_millis(1500));
    assert!(
        early.is_empty(),
        "printed before the clock was synchronized: {early:?}"
    );
    std::fs::write(&marker, "").unwrap();
    let released_at = now_ms();
    let first = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("held reports");
    let mut lines = vec![first];
    lines.extend(drain(&rx, Duration::from_millis(1000)));
    signal(&child, 15);
    lines.extend(drain(&rx, Duration::from_secs(3)));
    assert!(child.wait().unwrap().success());

    assert!(lines.len() >= 40, "only {} reports", lines.len());
    let first_at = recorded_at(&lines[0]);
    assert!(
        (started..started + 1000).contains(&first_at),
        "the first report says {first_at}, the agent started at {started}"
    );
    // About 1.5 s of reports were held, and they carry their own times, before the release.
    let before_release = lines
        .iter()
        .filter(|l| recorded_at(l) < released_at - 200)
        .count();
    assert!(
        before_release >= 20,
        "{before_release} reports before the release"
    );
    assert_on_the_grid(&lines);
}

// Never synchronized: after --clock-wait the held reports go on as the clock stamps them, with
// a warning that says what to check, and so do the next ones.
#[test]
fn held_reports_go_on_after_clock_wait_with_a_warning() {
    let run = tempfile::tempdir().unwrap();
    let marker = run.path().join("synchronized");
    let (child, rx) = dry_run(&marker, &["--clock-wait", "1s"]);

    let lines = drain(&rx, Duration::from_secs(3));
    signal(&child, 15);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("still not synchronized") && stderr.contains("timedatectl"),
        "{stderr}"
    );
    assert!(lines.len() >= 30, "only {} reports in 3 s", lines.len());
    assert_on_the_grid(&lines);
}

// SIGTERM while reports are held: they are printed, not lost.
#[test]
fn stopping_while_held_lets_the_reports_go() {
    let run = tempfile::tempdir().unwrap();
    let marker = run.path().join("synchronized");
    let (child, rx) = dry_run(&marker, &[]);

    assert!(drain(&rx, Duration::from_millis(1000)).is_empty());
    signal(&child, 15);
    let lines = drain(&rx, Duration::from_secs(3));
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("stopping before the system clock"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(lines.len() >= 10, "only {} reports", lines.len());
    assert_on_the_grid(&lines);
}

// Against the database: --count reports taken while held are spooled when sampling ends, and
// stored with their own times.
#[tokio::test(flavor = "multi_thread")]
async fn held_reports_reach_the_database() {
    let server = MongoServer::start();
    let db = unique_name("clock");
    let spool = tempfile::tempdir().unwrap();
    let run = tempfile::tempdir().unwrap();
    let started = now_ms();
    let mut agent = sim_agent(&server.uri, &db, 30, spool.path());
    agent
        .arg("--clock-sync-file")
        .arg(run.path().join("synchronized"));
    let out = tokio::process::Command::from(agent).output().await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // They were held to the end: the clock was never synchronized. Their copy is gone.
    assert!(String::from_utf8_lossy(&out.stderr).contains("stopping before the system clock"));
    assert!(!spool.path().join("held").exists());
    let docs = all_reports(&server.client().await, &db).await;
    assert_eq!(docs.len(), 30);
    let mut at: Vec<i64> = docs
        .iter()
        .map(|d| d.get_datetime("recordedAt").unwrap().timestamp_millis())
        .collect();
    at.sort_unstable();
    assert!((started..started + 1000).contains(&at[0]), "{at:?}");
    for w in at.windows(2) {
        assert!((20..=250).contains(&(w[1] - w[0])), "{at:?}");
    }
}

// SIGKILL while reports are held: their copy in the spool directory's held/ survives, and the
// next start sends them (as the old clock stamped them), each once, before its own reports.
#[tokio::test(flavor = "multi_thread")]
async fn held_reports_survive_a_kill() {
    let server = MongoServer::start();
    let db = unique_name("clock_kill");
    let spool = tempfile::tempdir().unwrap();
    let run = tempfile::tempdir().unwrap();
    let marker = run.path().join("synchronized");
    let mut first = sim_agent(&server.uri, &db, 1_000_000, spool.path());
    first
        .arg("--clock-sync-file")
        .arg(&marker)
        .stderr(Stdio::null());
    let mut child = first.spawn().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    signal(&child, 9);
    child.wait().unwrap();
    let held = sensehat_monitor::sink::spool::summarize(&spool.path().join("held"))
        .unwrap()
        .pending;
    assert!(held >= 15, "{held} reports held on disk");
    let client = server.client().await;
    assert!(
        all_reports(&client, &db).await.is_empty(),
        "held reports were sent"
    );

    std::fs::write(&marker, "").unwrap();
    let mut second = sim_agent(&server.uri, &db, 5, spool.path());
    second.arg("--clock-sync-file").arg(&marker);
    let out = tokio::process::Command::from(second)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("the readings it held go on"), "{stderr}");
    assert!(!spool.path().join("held").exists());

    let docs = all_reports(&client, &db).await;
    let ids: std::collections::HashSet<ObjectId> = docs
        .iter()
        .map(|d| d.get_object_id("_id").unwrap())
        .collect();
    assert_eq!(ids.len(), docs.len());
    assert_eq!(docs.len() as u64, held + 5);
}
