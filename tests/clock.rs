//! Reports taken before systemd-timesyncd has synchronized the clock (a Pi booted without
//! network): held, then stamped with the synchronized clock. A temporary directory stands in
//! for `/run/systemd/timesync`; the marker file is created by the test.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{
    agent_command, all_reports, signal, sim_agent, status_text, unique_name, MongoServer, Reaped,
};
use sensehat_monitor::clock::now_ms;

/// The dry-run agent every 50 ms with `marker` as the clock's marker; stdout lines arrive on
/// the channel as they are printed.
fn dry_run(marker: &Path, extra: &[&str]) -> (Child, mpsc::Receiver<String>) {
    let mut child = agent_command()
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

/// Stamped in order and 50 ms apart, give or take the scheduler: strictly increasing (a slot
/// late under load may be followed by one on time, so single gaps vary), 50 ms in the middle.
fn assert_on_the_grid(t: &[i64]) {
    let mut gaps: Vec<i64> = t.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.iter().all(|g| *g > 0), "reports out of order: {t:?}");
    gaps.sort_unstable();
    let median = gaps[gaps.len() / 2];
    assert!((45..=55).contains(&median), "median gap {median} ms: {t:?}");
}

fn times(lines: &[String]) -> Vec<i64> {
    lines.iter().map(|l| recorded_at(l)).collect()
}

// Not synchronized: nothing is printed. Once the marker appears, every held report comes out,
// stamped with when it was taken by the synchronized clock (not by the clock as it was, three
// hours behind here, nor when it was let go), then sampling goes on as usual.
#[test]
fn reports_are_held_until_the_clock_is_synchronized_then_stamped_when_taken() {
    let run = tempfile::tempdir().unwrap();
    let marker = run.path().join("synchronized");
    let started = now_ms();
    let (mut child, rx) = dry_run(&marker, &["--sim-clock-error-ms", "-10800000"]);

    let early = drain(&rx, Duration::from_millis(2500));
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

    assert!(lines.len() >= 30, "only {} reports", lines.len());
    let t = times(&lines);
    assert!(
        t[0] >= started,
        "the first report says {}, the agent started at {started}",
        t[0]
    );
    // Reports were held for up to 2.5 s, and carry the times they were taken, before the release.
    let before_release = t.iter().filter(|at| **at < released_at - 300).count();
    assert!(
        before_release >= 10,
        "{before_release} reports before the release: {t:?}"
    );
    assert_on_the_grid(&t);
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
    assert_on_the_grid(&times(&lines));
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
    assert_on_the_grid(&times(&lines));
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
        .arg(run.path().join("synchronized"))
        .args(["--sim-clock-error-ms", "-10800000"]);
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
    assert!(at[0] >= started, "{at:?}");
    assert_on_the_grid(&at);
}

// SIGKILL while reports are held: their copy in the spool directory's held/ survives, and the
// next start sends them (as the old clock stamped them), each once.
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
    let mut child = Reaped(first.spawn().unwrap());
    let held_dir = spool.path().join("held");
    let on_disk = || sensehat_monitor::sink::spool::summarize(&held_dir).map_or(0, |s| s.pending);
    let deadline = Instant::now() + Duration::from_secs(20);
    while on_disk() < 10 {
        assert!(Instant::now() < deadline, "no held reports on disk");
        std::thread::sleep(Duration::from_millis(50));
    }
    // `status` tells a person why nothing is sent: status.json is rewritten every 10 s, the
    // first time at the first sample (before any report was held).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = status_text(spool.path());
        if let Some(n) = s
            .lines()
            .find_map(|l| l.strip_prefix("held for the clock"))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        {
            if n > 0 {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "status never showed held reports:\n{s}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    signal(&child.0, 9);
    child.0.wait().unwrap();
    let held = on_disk();
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
    assert!(
        stderr.contains("readings the last run held for the clock"),
        "{stderr}"
    );
    // The start counts them in its backlog.
    assert!(
        stderr.contains(&format!("backlog={held}")),
        "{held} held: {stderr}"
    );
    assert!(!spool.path().join("held").exists());

    // Each held report once, and the new run's five.
    let docs = all_reports(&client, &db).await;
    assert_eq!(docs.len() as u64, held + 5);
}

/// The ids of the reports in the spool file `path`, read frame by frame.
fn ids_in_file(path: &Path) -> Vec<mongodb::bson::oid::ObjectId> {
    let bytes = std::fs::read(path).unwrap();
    let mut ids = Vec::new();
    let mut at = 0;
    while at + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let doc = mongodb::bson::Document::from_reader(&mut &bytes[at + 8..at + 8 + len]).unwrap();
        ids.push(doc.get_object_id("_id").unwrap());
        at += 8 + len;
    }
    ids
}

// A file of the last run's held readings that cannot be read (here a link to itself, ELOOP; on
// a failing card, EIO) is set aside, said at ERROR, and the readable ones are moved on and
// stored. It used to keep every one of them back, at every start while the clock was
// synchronized at start (only a start that held readings again set the file aside).
#[tokio::test(flavor = "multi_thread")]
async fn an_unreadable_held_file_keeps_back_only_its_own_readings() {
    use sensehat_monitor::report::{Acceleration, MovingRule, Reading, Report};
    use sensehat_monitor::sink::spool::{Spool, SpoolOptions};
    let server = MongoServer::start();
    let db = unique_name("clock_unreadable");
    let spool = tempfile::tempdir().unwrap();
    let held_dir = spool.path().join("held");
    // What a killed run leaves: 60 held readings in 4 KiB segments (an eighth of 32 KiB).
    let options = SpoolOptions {
        max_bytes: 32 * 1024,
        sync_interval: Duration::from_secs(1),
    };
    let (mut held, _) = Spool::open(&held_dir, options).unwrap();
    let reading = Reading {
        humidity_rh: 40.0,
        temperature_celsius: 21.5,
        pressure_hpa: 1013.25,
        acceleration: Acceleration {
            x_g: 0.0,
            y_g: 0.0,
            z_g: 1.0,
        },
    };
    for i in 0..60 {
        let r = Report::new(
            "held-pi",
            reading,
            now_ms() - 60_000 + i * 500,
            MovingRule::Axis,
        );
        held.append(&r.to_bson_bytes(), std::time::Instant::now());
    }
    held.kill();
    let mut segments: Vec<_> = std::fs::read_dir(&held_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "spool"))
        .collect();
    segments.sort();
    assert_eq!(segments.len(), 3, "{segments:?}");
    // The second cannot be opened: its readings are the ones lost.
    let lost = ids_in_file(&segments[1]);
    let readable: Vec<_> = [&segments[0], &segments[2]]
        .into_iter()
        .flat_map(|p| ids_in_file(p))
        .collect();
    assert_eq!(lost.len() + readable.len(), 60);
    std::fs::remove_file(&segments[1]).unwrap();
    std::os::unix::fs::symlink(&segments[1], &segments[1]).unwrap();

    let out = tokio::process::Command::from(sim_agent(&server.uri, &db, 5, spool.path()))
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let said = stderr
        .lines()
        .find(|l| l.contains("moved it to"))
        .unwrap_or_else(|| panic!("not said: {stderr}"));
    assert!(said.contains("ERROR") && said.contains("held"), "{said}");
    // held/ is gone; the file set aside moved up into the spool directory, kept.
    assert!(!held_dir.exists());
    let kept = std::fs::read_dir(spool.path())
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            let name = name.to_string_lossy().into_owned();
            name.starts_with("held-segment-") && name.contains(".unreadable-")
        })
        .count();
    assert_eq!(kept, 1);
    let docs = all_reports(&server.client().await, &db).await;
    let stored: std::collections::HashSet<_> = docs
        .iter()
        .map(|d| d.get_object_id("_id").unwrap())
        .collect();
    assert!(
        readable.iter().all(|id| stored.contains(id)),
        "a readable held reading was not stored: {} of {} stored\n{stderr}",
        docs.len(),
        readable.len() + 5
    );
    assert!(lost.iter().all(|id| !stored.contains(id)));
    assert_eq!(docs.len(), readable.len() + 5);
}
