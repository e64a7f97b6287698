//! Never lose a reading: the real agent binary (simulated board) against a real MongoDB
//! wire-protocol server that is down, stopped, restarted; SIGKILL, SIGTERM, a full spool and
//! injected I2C faults.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    agent_command, all_reports, signal, status_text, unique_name, wait_exit, wait_until,
    MongoServer,
};
use mongodb::bson::{oid::ObjectId, Document};
use sensehat_monitor::sink::spool;
use sensehat_monitor::status::{Status, STATUS_FILE};

fn agent(uri: &str, db: &str, spool_dir: &Path, extra: &[&str]) -> Command {
    let mut c = agent_command();
    c.args(["--sensors", "sim", "--database", db]);
    if !extra.contains(&"--interval-ms") {
        c.args(["--interval-ms", "50"]);
    }
    c.arg("--spool-dir")
        .arg(spool_dir)
        .args(extra)
        .env("MONGODB_CONNECTION_STRING", uri)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null());
    c
}

/// A test's own places: a temporary directory (kept while the test runs), the spool and the
/// agent's log inside it, and a database name: `(dir, spool_dir, db, log)`.
fn places(name: &str) -> (tempfile::TempDir, PathBuf, String, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let spool_dir = dir.path().join("spool");
    let log = dir.path().join("agent.log");
    (dir, spool_dir, unique_name(name), log)
}

fn spawn_logged(mut c: Command, log: &Path) -> Child {
    c.stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

async fn ids_in(server: &MongoServer, db: &str) -> Vec<ObjectId> {
    all_reports(&server.client().await, db)
        .await
        .iter()
        .map(|d| d.get_object_id("_id").unwrap())
        .collect()
}

fn pending_ids(dir: &Path) -> Vec<ObjectId> {
    let mut ids = Vec::new();
    let unreadable = spool::for_each_pending(dir, |p| {
        let d = Document::from_reader(&mut &p[..]).unwrap();
        ids.push(d.get_object_id("_id").unwrap());
    })
    .unwrap();
    assert!(unreadable.is_empty(), "{unreadable:?}");
    ids
}

/// Wait until the spool in `dir` holds at least `n` undelivered reports.
async fn wait_for_spooled(dir: &Path, n: usize) {
    let d = dir.to_owned();
    wait_until(
        Duration::from_secs(20),
        &format!("{n} spooled reports"),
        || {
            let d = d.clone();
            async move { d.exists() && pending_ids(&d).len() >= n }
        },
    )
    .await;
}

/// Wait until the agent's log contains `text`.
async fn wait_for_log(log: &Path, text: &str, timeout: Duration) {
    let log = log.to_owned();
    wait_until(timeout, &format!("{text:?} in the log"), || {
        let log = log.clone();
        async move {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains(text)
        }
    })
    .await;
}

/// The ids of the reports stored in `db`, after checking that none is stored twice.
async fn stored_once(server: &MongoServer, db: &str) -> Vec<ObjectId> {
    let ids = ids_in(server, db).await;
    let set: HashSet<_> = ids.iter().collect();
    assert_eq!(set.len(), ids.len(), "duplicates among {} ids", ids.len());
    ids
}

/// With the server down, run the agent until at least 25 reports are spooled, then SIGKILL
/// it; the ids the spool holds.
async fn spooled_then_killed(
    server: &MongoServer,
    db: &str,
    spool_dir: &Path,
    log: &Path,
) -> Vec<ObjectId> {
    let mut child = spawn_logged(agent(&server.uri, db, spool_dir, &[]), log);
    wait_for_spooled(spool_dir, 25).await;
    signal(&child, 9);
    child.wait().unwrap();
    pending_ids(spool_dir)
}

/// Start the server, and the agent again for five more reports; its log, once it exited 0.
fn up_again_for_five(server: &mut MongoServer, db: &str, spool_dir: &Path, log: &Path) -> String {
    server.launch();
    let mut child = spawn_logged(agent(&server.uri, db, spool_dir, &["--count", "5"]), log);
    let status = wait_exit(&mut child, Duration::from_secs(90));
    let text = std::fs::read_to_string(log).unwrap();
    assert!(status.success(), "{text}");
    text
}

// Server down at start: 40 samples are spooled, then the server starts and all 40 arrive once.
#[tokio::test(flavor = "multi_thread")]
async fn server_down_at_start_then_up_delivers_everything_once() {
    let Some(mut server) = MongoServer::not_started() else {
        return;
    };
    let (_dir, spool_dir, db, log) = places("down_at_start");
    let mut child = spawn_logged(
        agent(&server.uri, &db, &spool_dir, &["--count", "40"]),
        &log,
    );
    // 40 samples at 50 ms take 2 s; wait until they are all in the spool.
    wait_for_spooled(&spool_dir, 40).await;
    // The first insert gives up after the 10 s server selection timeout and says so once.
    wait_for_log(&log, "MongoDB unavailable", Duration::from_secs(30)).await;
    server.launch();
    let status = wait_exit(&mut child, Duration::from_secs(90));
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
    let ids = stored_once(&server, &db).await;
    assert_eq!(ids.len(), 40);
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("MongoDB unavailable"), "{log}");
    // Nothing listened on the port: the log says what to check.
    assert!(log.contains("check the host and port"), "{log}");
    assert!(log.contains("connected to MongoDB"), "{log}");
    // One line per state change, not one per retry, and the backlog's end once.
    assert_eq!(log.matches("MongoDB unavailable").count(), 1, "{log}");
    assert_eq!(log.matches("backlog drained").count(), 1, "{log}");
    assert!(log.contains("delivered=40"), "{log}");
}

// A link that keeps dropping (each insert refused for a moment, three times within seconds)
// is said once, with its first recovery: the outages soon after it, and their ends, are not
// (each wrote two or three lines, without end, on a flapping connection). Nothing is lost.
#[tokio::test(flavor = "multi_thread")]
async fn a_flapping_database_link_is_said_once() {
    use common::wire::{Sent, Withhold, ZlibProxy};
    let Some(server) = MongoServer::own() else {
        return;
    };
    let proxy = ZlibProxy::start(server.port);
    let (_dir, spool_dir, db, log) = places("flapping");
    let extra = ["--count", "100000", "--insert-every", "200ms"];
    let mut child = spawn_logged(agent(&proxy.uri(), &db, &spool_dir, &extra), &log);
    let count = || async { ids_in(&server, &db).await.len() };
    let inserts_since = |from: usize| {
        proxy.sent()[from..]
            .iter()
            .filter(|s| matches!(s, Sent::Command { name, .. } if name == "insert"))
            .count()
    };
    wait_until(Duration::from_secs(30), "the first insert", || async {
        count().await > 0
    })
    .await;
    for _ in 0..3 {
        proxy.withhold(&[("insert", Withhold::Refuse)]);
        let from = proxy.sent().len();
        // The second insert sent after the change is refused whatever the first raced with.
        wait_until(Duration::from_secs(30), "two inserts refused", || async {
            inserts_since(from) >= 2
        })
        .await;
        let before = count().await;
        proxy.withhold(&[]);
        wait_until(Duration::from_secs(30), "an insert again", || async {
            count().await > before
        })
        .await;
    }
    signal(&child, 15);
    assert!(wait_exit(&mut child, Duration::from_secs(30)).success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text.matches("MongoDB unavailable").count(), 1, "{text}");
    // At the start, and after the first outage.
    assert_eq!(text.matches("connected to MongoDB").count(), 2, "{text}");
    // The first outage's backlog, if it was empty at some insert before the stop.
    assert!(text.matches("backlog drained").count() <= 1, "{text}");
    // Every report taken is stored once, or still in the spool.
    let kept = stored_once(&server, &db).await.len() + pending_ids(&spool_dir).len();
    let taken = text.lines().rev().find_map(|l| {
        let n = l.split(" reports=").nth(1)?.split_whitespace().next()?;
        n.parse::<usize>().ok()
    });
    assert_eq!(taken, Some(kept), "{text}");
}

// A primary stepping down in the middle of an insert answers each document it had left with a
// write error (NotWritablePrimary): an outage, not a refusal. The reports are sent again and
// stored once, none set aside in rejected.jsonl (they all were, and never reached the database).
#[tokio::test(flavor = "multi_thread")]
async fn write_errors_of_a_failover_are_retried_not_rejected() {
    use common::wire::{Sent, Withhold, ZlibProxy};
    let Some(server) = MongoServer::own() else {
        return;
    };
    let proxy =
        ZlibProxy::start_withholding(server.port, &[("insert", Withhold::WriteError(10107))]);
    let (_dir, spool_dir, db, log) = places("stepdown");
    let extra = ["--count", "20", "--insert-every", "200ms"];
    let mut child = spawn_logged(agent(&proxy.uri(), &db, &spool_dir, &extra), &log);
    wait_until(
        Duration::from_secs(30),
        "two inserts answered with write errors",
        || async {
            let inserts = proxy
                .sent()
                .iter()
                .filter(|s| matches!(s, Sent::Command { name, .. } if name == "insert"))
                .count();
            inserts >= 2
        },
    )
    .await;
    proxy.withhold(&[]);
    let status = wait_exit(&mut child, Duration::from_secs(90));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{text}");
    assert_eq!(stored_once(&server, &db).await.len(), 20, "{text}");
    assert!(!spool_dir.join("rejected.jsonl").exists(), "{text}");
    assert!(text.contains("could not take the insert for now"), "{text}");
}

// The server stops mid-run and comes back: nothing lost, nothing doubled.
#[tokio::test(flavor = "multi_thread")]
async fn server_outage_mid_run_loses_nothing() {
    let Some(mut server) = MongoServer::start_persistent() else {
        return;
    };
    let (_dir, spool_dir, db, log) = places("outage");
    let mut child = spawn_logged(
        agent(&server.uri, &db, &spool_dir, &["--count", "80"]),
        &log,
    );
    wait_until(Duration::from_secs(20), "first reports stored", || {
        let s = &server;
        let db = &db;
        async move { !ids_in(s, db).await.is_empty() }
    })
    .await;
    server.stop();
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.launch();
    let status = wait_exit(&mut child, Duration::from_secs(90));
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
    let ids = stored_once(&server, &db).await;
    assert_eq!(ids.len(), 80);
}

// SIGKILL while the server is down, restart with it up: every report taken before the kill
// arrives exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn sigkill_while_down_then_restart_delivers_every_sample_once() {
    let Some(mut server) = MongoServer::not_started() else {
        return;
    };
    let (dir, spool_dir, db, log) = places("sigkill");
    let before_kill = spooled_then_killed(&server, &db, &spool_dir, &log).await;
    assert!(before_kill.len() >= 25);

    let text = up_again_for_five(&mut server, &db, &spool_dir, &dir.path().join("agent2.log"));
    let ids = stored_once(&server, &db).await;
    let stored: HashSet<_> = ids.iter().collect();
    for id in &before_kill {
        assert!(
            stored.contains(id),
            "report {id} taken before the kill was lost"
        );
    }
    assert_eq!(ids.len(), before_kill.len() + 5);
    // The backlog found at start is reported once when it is gone.
    assert_eq!(text.matches("backlog drained").count(), 1, "{text}");
    assert!(pending_ids(&spool_dir).is_empty());
}

// A bad byte in the spool (an SD card that returned a block wrong): the next start skips
// that one report, says so, and delivers every other one. It used to cut the rest of the
// segment and blame a torn write.
#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_report_in_the_spool_costs_only_itself() {
    let Some(mut server) = MongoServer::not_started() else {
        return;
    };
    let (dir, spool_dir, db, log) = places("corrupt");
    let before = spooled_then_killed(&server, &db, &spool_dir, &log).await;

    // Flip a byte inside the tenth report of the first segment.
    let segment = std::fs::read_dir(&spool_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "spool"))
        .min()
        .unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    let mut at = 0;
    for _ in 0..9 {
        at += 8 + u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    }
    bytes[at + 8 + 30] ^= 0x5a;
    std::fs::write(&segment, &bytes).unwrap();

    let text = up_again_for_five(&mut server, &db, &spool_dir, &dir.path().join("agent2.log"));
    assert!(text.contains("skipped bad data"), "{text}");
    assert!(!text.contains("torn record"), "{text}");
    let stored: HashSet<_> = stored_once(&server, &db).await.into_iter().collect();
    let lost: Vec<_> = before.iter().filter(|id| !stored.contains(id)).collect();
    assert_eq!(lost, vec![&before[9]]);
    assert_eq!(stored.len(), before.len() - 1 + 5);
}

// The delivered position cannot be written (here its name is taken by a directory): said once, not on every sample as it was, and nothing is lost.
#[tokio::test(flavor = "multi_thread")]
async fn a_failing_spool_position_write_is_logged_once() {
    let server = MongoServer::start();
    let (_dir, spool_dir, db, log) = places("cursor");
    std::fs::create_dir_all(spool_dir.join("acked/in-the-way")).unwrap();
    let mut child = spawn_logged(
        agent(&server.uri, &db, &spool_dir, &["--count", "40"]),
        &log,
    );
    let status = wait_exit(&mut child, Duration::from_secs(60));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{text}");
    assert_eq!(
        text.matches("delivered position; a power cut").count(),
        1,
        "{text}"
    );
    assert_eq!(stored_once(&server, &db).await.len(), 40);
}

// A spool file that cannot be opened (here a link to nowhere; on a failing card, EIO) is set
// aside with an error in the log, and the agent runs; it used to exit 1 at every start, so
// systemd gave up and nothing was sampled.
#[tokio::test(flavor = "multi_thread")]
async fn an_unreadable_spool_file_is_set_aside_and_the_agent_runs() {
    let server = MongoServer::start();
    let (_dir, spool_dir, db, log) = places("unreadable");
    std::fs::create_dir_all(&spool_dir).unwrap();
    std::os::unix::fs::symlink(
        "/nonexistent/segment",
        spool_dir.join("segment-0000000000000003.spool"),
    )
    .unwrap();
    let mut child = spawn_logged(agent(&server.uri, &db, &spool_dir, &["--count", "5"]), &log);
    let status = wait_exit(&mut child, Duration::from_secs(60));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{text}");
    assert!(text.contains("moved it to"), "{text}");
    let aside: Vec<_> = std::fs::read_dir(&spool_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("segment-0000000000000003.spool.unreadable-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    let s = status_text(&spool_dir);
    assert!(s.contains("unreadable files      1 set aside"), "{s}");
    assert_eq!(stored_once(&server, &db).await.len(), 5);
}

/// The ids of the reports in the spool file `path`, read frame by frame.
fn ids_in_file(path: &Path) -> Vec<ObjectId> {
    let bytes = std::fs::read(path).unwrap();
    let mut ids = Vec::new();
    let mut at = 0;
    while at + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let doc = Document::from_reader(&mut &bytes[at + 8..at + 8 + len]).unwrap();
        ids.push(doc.get_object_id("_id").unwrap());
        at += 8 + len;
    }
    ids
}

// A spool file that cannot be opened while the agent runs (here a link to itself, ELOOP, which
// root cannot open either; on a failing card, EIO) is set aside when delivery reaches it, as
// at start, said at ERROR, and delivery goes on: every report of the other files is stored.
// It used to stop delivery for good and the agent with it (exit 1); the restart then set the
// file aside all the same.
#[tokio::test(flavor = "multi_thread")]
async fn a_spool_file_unreadable_mid_run_is_set_aside_and_delivery_goes_on() {
    let Some(mut server) = MongoServer::not_started() else {
        return;
    };
    let (_dir, spool_dir, db, log) = places("unreadable_mid_run");
    // 8 KiB segments (an eighth of the cap): 150 reports fill several.
    let args = ["--count", "150", "--spool-max-bytes", "65536"];
    let mut child = spawn_logged(agent(&server.uri, &db, &spool_dir, &args), &log);
    wait_for_spooled(&spool_dir, 150).await;
    let taken = pending_ids(&spool_dir);
    let mut segments: Vec<PathBuf> = std::fs::read_dir(&spool_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "spool"))
        .collect();
    segments.sort();
    assert!(segments.len() >= 3, "{segments:?}");
    // The second: delivery, waiting for the server, has read the first only.
    let unreadable = &segments[1];
    let lost = ids_in_file(unreadable);
    assert!(!lost.is_empty());
    std::fs::remove_file(unreadable).unwrap();
    std::os::unix::fs::symlink(unreadable, unreadable).unwrap();
    server.launch();
    let status = wait_exit(&mut child, Duration::from_secs(90));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{text}");
    let said = text
        .lines()
        .find(|l| l.contains("moved it to"))
        .unwrap_or_else(|| panic!("not said: {text}"));
    assert!(said.contains("ERROR"), "{said}");
    assert!(said.contains(&format!("{} reports", lost.len())), "{said}");
    let mut aside = unreadable.as_os_str().to_owned();
    aside.push(".unreadable-");
    let aside = aside.to_string_lossy().into_owned();
    let kept = std::fs::read_dir(&spool_dir)
        .unwrap()
        .filter(|e| {
            let p = e.as_ref().unwrap().path();
            p.to_string_lossy().starts_with(&aside)
        })
        .count();
    assert_eq!(kept, 1, "the file set aside");
    let stored: HashSet<_> = stored_once(&server, &db).await.into_iter().collect();
    let expected: HashSet<_> = taken.into_iter().filter(|id| !lost.contains(id)).collect();
    assert_eq!(stored, expected);
}

// SIGTERM: exit 0 within the shutdown timeout; stored plus spooled equals reports taken.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_exits_cleanly_and_loses_nothing() {
    let server = MongoServer::start();
    let (_dir, spool_dir, db, log) = places("sigterm");
    let mut child = spawn_logged(
        agent(&server.uri, &db, &spool_dir, &["--shutdown-timeout", "3s"]),
        &log,
    );
    wait_until(Duration::from_secs(20), "reports stored", || {
        let s = &server;
        let db = &db;
        async move { ids_in(s, db).await.len() >= 10 }
    })
    .await;
    let t = Instant::now();
    signal(&child, 15);
    let status = wait_exit(&mut child, Duration::from_secs(10));
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "took {:?}",
        t.elapsed()
    );
    // A healthy run logs its connection once and no backlog (at 2 Hz or 20 Hz alike).
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text.matches("connected to MongoDB").count(), 1, "{text}");
    assert!(!text.contains("backlog drained"), "{text}");
    let st = Status::read(&spool_dir.join(STATUS_FILE)).expect("status written at exit");
    let ids = stored_once(&server, &db).await;
    let spooled = pending_ids(&spool_dir);
    let all: HashSet<_> = ids.iter().chain(spooled.iter()).collect();
    assert_eq!(
        all.len() as u64,
        st.counters.reports,
        "stored {} + spooled {}",
        ids.len(),
        spooled.len()
    );
}

// A full spool drops the oldest reports, counts them, logs once, and keeps the newest.
#[tokio::test(flavor = "multi_thread")]
async fn full_spool_drops_oldest_and_counts_them() {
    let Some(mut server) = MongoServer::not_started() else {
        return;
    };
    let (dir, spool_dir, db, log) = places("cap");
    let c = agent(
        &server.uri,
        &db,
        &spool_dir,
        &["--spool-max-bytes", "16384", "--interval-ms", "2"],
    );
    let mut child = spawn_logged(c, &log);
    // 16 KiB holds about 70 reports; 2 ms sampling fills it within a second.
    wait_for_log(&log, "spool is full", Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    signal(&child, 15);
    assert!(wait_exit(&mut child, Duration::from_secs(20)).success());
    let st = Status::read(&spool_dir.join(STATUS_FILE)).unwrap();
    assert!(st.counters.dropped > 0);
    let kept = pending_ids(&spool_dir);
    assert_eq!(
        kept.len() as u64 + st.counters.dropped,
        st.counters.reports,
        "kept + dropped = taken"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text.matches("spool is full").count(), 1, "{text}");

    // The kept reports are the newest: once delivered, the latest report taken is among them.
    server.launch();
    let mut child = spawn_logged(
        agent(&server.uri, &db, &spool_dir, &["--count", "1"]),
        &dir.path().join("agent2.log"),
    );
    assert!(wait_exit(&mut child, Duration::from_secs(90)).success());
    let ids = stored_once(&server, &db).await;
    let stored: HashSet<_> = ids.iter().collect();
    let newest = kept.iter().max_by_key(|id| id.timestamp()).unwrap();
    assert!(stored.contains(newest));
    assert!(kept.iter().all(|id| stored.contains(id)));
}

// An injected I2C fault: the samples in the window are skipped and counted, sampling goes on.
#[tokio::test(flavor = "multi_thread")]
async fn i2c_fault_skips_and_counts_samples() {
    let server = MongoServer::start();
    let (_dir, spool_dir, db, log) = places("fault");
    let mut child = spawn_logged(
        agent(
            &server.uri,
            &db,
            &spool_dir,
            &["--count", "20", "--sim-fault", "lps25h:5:3"],
        ),
        &log,
    );
    let status = wait_exit(&mut child, Duration::from_secs(60));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{text}");
    let st = Status::read(&spool_dir.join(STATUS_FILE)).unwrap();
    assert_eq!(st.counters.skipped_samples, 3);
    assert_eq!(st.counters.reports, 20);
    assert_eq!(st.counters.samples, 23);
    let lps = st
        .counters
        .sensors
        .iter()
        .find(|s| s.name == "lps25h")
        .unwrap();
    assert_eq!(lps.total_failures, 3);
    assert!(lps.ok);
    // status.json keeps why it failed, for `status` to say.
    let why = lps.last_error.as_deref().unwrap_or_default();
    assert!(
        why.starts_with("lps25h (address 0x5c on simulated bus): I2C transfer"),
        "{st:?}"
    );
    assert_eq!(ids_in(&server, &db).await.len(), 20);
    assert_eq!(text.matches("sensor read failed").count(), 1, "{text}");
    // The line says why, as the start-up error would: which chip, where, and the bus's error.
    let failed = text
        .lines()
        .find(|l| l.contains("sensor read failed"))
        .unwrap();
    assert!(
        failed.contains("error=lps25h (address 0x5c on simulated bus): I2C transfer"),
        "{failed}"
    );
    assert!(text.contains("sensor recovered"), "{text}");
    // The stop line tells sensor faults from slots missed because sampling fell behind (none
    // here, unless the machine stalled the agent for a slot).
    assert!(text.contains("sensor_faults=3 missed_slots="), "{text}");

    // `status` summarises it for a person.
    let s = status_text(&spool_dir);
    assert!(s.contains("unsent reports        0"), "{s}");
    assert!(s.contains("3 skipped (sensor faults), "), "{s}");
    assert!(s.contains("database              connected"), "{s}");
    assert!(
        s.contains("sensor lps25h         ok (3 failures in total, the last: lps25h (address 0x5c"),
        "{s}"
    );
}

// A sensor that does not answer at start-up (a chip hung after a brownout): the agent starts
// anyway, skips the samples it fails, and stores every one once it answers. It used to exit at
// start, and systemd to restart it every 10 s, delivering nothing its spool held meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn a_sensor_failing_at_start_up_costs_samples_not_the_run() {
    let server = MongoServer::start();
    let (_dir, spool_dir, db, log) = places("fault_start");
    let mut child = spawn_logged(
        agent(
            &server.uri,
            &db,
            &spool_dir,
            &["--count", "10", "--sim-fault", "lps25h:0:4"],
        ),
        &log,
    );
    let status = wait_exit(&mut child, Duration::from_secs(60));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{text}");
    let st = Status::read(&spool_dir.join(STATUS_FILE)).unwrap();
    assert_eq!(st.counters.skipped_samples, 4, "{st:?}");
    assert_eq!(ids_in(&server, &db).await.len(), 10);
    let failed = text
        .lines()
        .find(|l| l.contains("sensor read failed"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(failed.contains("error=lps25h (address 0x5c"), "{failed}");
    assert!(text.contains("sensor recovered"), "{text}");
}

// A sensor down from the first sample: status.json is still written, with the failing sensor,
// so `status` shows what is wrong (it used to be written only with a report).
#[tokio::test(flavor = "multi_thread")]
async fn status_is_written_while_every_sample_fails() {
    let server = MongoServer::start();
    let (_dir, spool_dir, db, log) = places("fault_status");
    let mut child = spawn_logged(
        agent(
            &server.uri,
            &db,
            &spool_dir,
            &["--sim-fault", "hts221:0:1000000"],
        ),
        &log,
    );
    let path = spool_dir.join(STATUS_FILE);
    wait_until(Duration::from_secs(20), "a status file", || async {
        Status::read(&path).is_some()
    })
    .await;
    signal(&child, 9);
    child.wait().unwrap();
    let st = Status::read(&path).unwrap();
    assert_eq!(st.counters.reports, 0);
    let hts = st
        .counters
        .sensors
        .iter()
        .find(|s| s.name == "hts221")
        .unwrap();
    assert!(!hts.ok, "{st:?}");
    let s = status_text(&spool_dir);
    assert!(
        s.contains("sensor hts221         FAILING (")
            && s.contains("in a row): hts221 (address 0x5f"),
        "{s}"
    );
}

// A sensor that fails one sample now and then (a loose connection) is said once, not twice a
// fault: ten one-sample faults in a few seconds make one "failed" line and one "recovered",
// every failure is still counted, and every good sample stored.
#[tokio::test(flavor = "multi_thread")]
async fn a_flapping_sensor_is_said_once_a_minute() {
    let server = MongoServer::start();
    let (_dir, spool_dir, db, log) = places("flap");
    let faults: Vec<String> = (0..10).map(|i| format!("lps25h:{}:1", 3 + 4 * i)).collect();
    let mut child = spawn_logged(
        agent(
            &server.uri,
            &db,
            &spool_dir,
            &["--count", "40", "--sim-fault", &faults.join(",")],
        ),
        &log,
    );
    let status = wait_exit(&mut child, Duration::from_secs(60));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{text}");
    assert_eq!(text.matches("sensor read failed").count(), 1, "{text}");
    assert_eq!(text.matches("sensor recovered").count(), 1, "{text}");
    let st = Status::read(&spool_dir.join(STATUS_FILE)).unwrap();
    assert_eq!(st.counters.skipped_samples, 10, "{st:?}");
    let lps = st.counters.sensors.iter().find(|s| s.name == "lps25h");
    assert_eq!(lps.map(|s| s.total_failures), Some(10), "{st:?}");
    assert_eq!(ids_in(&server, &db).await.len(), 40);
}

// A spool that cannot be written (disk full: the segment file is /dev/full) is reported once,
// reports are kept in memory and delivered, and writing resumes when the disk has room.
#[tokio::test(flavor = "multi_thread")]
async fn full_disk_keeps_reports_in_memory_until_it_can_write() {
    let server = MongoServer::start();
    let (_dir, spool_dir, db, log) = places("diskfull");
    std::fs::create_dir_all(&spool_dir).unwrap();
    let segment = spool_dir.join("segment-0000000000000001.spool");
    std::os::unix::fs::symlink("/dev/full", &segment).unwrap();
    let mut child = spawn_logged(
        agent(&server.uri, &db, &spool_dir, &["--count", "40"]),
        &log,
    );
    wait_for_log(&log, "cannot write the spool", Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::remove_file(&segment).unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(60));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{text}");
    assert!(text.contains("No space left on device"), "{text}");
    assert_eq!(text.matches("cannot write the spool").count(), 1, "{text}");
    assert!(text.contains("spool writable again"), "{text}");
    let ids = stored_once(&server, &db).await;
    assert_eq!(ids.len(), 40);
}

// Stopped while its disk is full, the agent gives the reports held in memory one more try on
// the disk: with room by then they are in the spool and go out at the next start; without, it
// says they are lost and counts them as dropped, rather than claim they stay in the spool.
#[tokio::test(flavor = "multi_thread")]
async fn a_stop_with_the_disk_full_saves_or_counts_what_memory_holds() {
    let Some(mut server) = MongoServer::not_started() else {
        return;
    };
    for room_at_stop in [false, true] {
        let (_dir, spool_dir, db, log) = places("stopfull");
        std::fs::create_dir_all(&spool_dir).unwrap();
        let segment = spool_dir.join("segment-0000000000000001.spool");
        std::os::unix::fs::symlink("/dev/full", &segment).unwrap();
        // With room at stop, a sample 3 s apart: the first is in memory, and no later append
        // moves it to disk before the stop does.
        let interval = if room_at_stop { "3000" } else { "50" };
        let mut child = spawn_logged(
            agent(&server.uri, &db, &spool_dir, &["--interval-ms", interval]),
            &log,
        );
        wait_for_log(&log, "cannot write the spool", Duration::from_secs(20)).await;
        if room_at_stop {
            std::fs::remove_file(&segment).unwrap();
        } else {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        signal(&child, 15);
        let status = wait_exit(&mut child, Duration::from_secs(30));
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(status.success(), "{text}");
        let st = Status::read(&spool_dir.join(STATUS_FILE)).unwrap();
        if room_at_stop {
            assert!(!text.contains("lost"), "{text}");
            assert_eq!((st.pending, st.counters.dropped), (1, 0), "{text}");
            assert_eq!(pending_ids(&spool_dir).len(), 1);
            server.launch();
            let mut again =
                spawn_logged(agent(&server.uri, &db, &spool_dir, &["--count", "0"]), &log);
            assert!(wait_exit(&mut again, Duration::from_secs(60)).success());
            assert_eq!(stored_once(&server, &db).await.len(), 1);
        } else {
            let lost = st.counters.dropped;
            assert!(lost > 1, "{st:?}\n{text}");
            assert_eq!(st.pending, 0, "{text}");
            assert!(
                text.contains(&format!("lost={lost}")) && text.contains("are lost"),
                "{text}"
            );
            // The stop's summary agrees with status.json, and nothing is said to stay behind.
            assert!(text.contains(&format!("dropped={lost}")), "{text}");
            assert!(!text.contains("stay in the spool"), "{text}");
        }
    }
}

// A batch resent after a lost acknowledgement: reports already in the database count as
// delivered (duplicate _id), the rest are inserted, and nothing is stored twice.
#[tokio::test(flavor = "multi_thread")]
async fn resent_reports_already_stored_are_not_duplicated() {
    let Some(mut server) = MongoServer::not_started() else {
        return;
    };
    let (dir, spool_dir, db, _) = places("dupes");
    let mut child = spawn_logged(
        agent(&server.uri, &db, &spool_dir, &[]),
        &dir.path().join("a.log"),
    );
    wait_for_spooled(&spool_dir, 20).await;
    signal(&child, 15);
    assert!(wait_exit(&mut child, Duration::from_secs(20)).success());
    let mut docs = Vec::new();
    let unreadable = spool::for_each_pending(&spool_dir, |p| {
        docs.push(Document::from_reader(&mut &p[..]).unwrap())
    })
    .unwrap();
    assert!(unreadable.is_empty(), "{unreadable:?}");
    let total = docs.len();
    server.launch();
    // The first half "arrived" before the agent was killed, but it never heard back.
    let client = server.client().await;
    client
        .database(&db)
        .collection::<Document>("reports")
        .insert_many(&docs[..total / 2])
        .await
        .unwrap();
    let log = dir.path().join("b.log");
    let mut child = spawn_logged(agent(&server.uri, &db, &spool_dir, &["--count", "0"]), &log);
    assert!(
        wait_exit(&mut child, Duration::from_secs(60)).success(),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
    let ids = stored_once(&server, &db).await;
    assert_eq!(ids.len(), total);
    let st = Status::read(&spool_dir.join(STATUS_FILE)).unwrap();
    assert_eq!(st.counters.duplicates, (total / 2) as u64);
    assert_eq!(st.counters.delivered, total as u64);
}

// A report the database refuses for good (here a unique index the user put on nodeName, so
// every report after the first is a duplicate key, but not of _id) is not retried forever and
// not counted as delivered: it goes to rejected.jsonl with the server's reason, and the rest
// flows on.
#[tokio::test(flavor = "multi_thread")]
async fn refused_reports_are_set_aside_with_the_reason() {
    let server = MongoServer::start();
    let (_dir, spool_dir, db, log) = places("refused");
    unique_node_name(&server, &db).await;
    let mut child = spawn_logged(agent(&server.uri, &db, &spool_dir, &["--count", "5"]), &log);
    let status = wait_exit(&mut child, Duration::from_secs(60));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{text}");
    assert!(text.contains("the database refused reports"), "{text}");
    assert_eq!(stored_once(&server, &db).await.len(), 1);
    let st = Status::read(&spool_dir.join(STATUS_FILE)).unwrap();
    assert_eq!(
        (st.counters.rejected, st.counters.duplicates, st.pending),
        (4, 0, 0)
    );
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(spool_dir.join("rejected.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    for l in &lines {
        let reason = l["reason"].as_str().unwrap();
        assert!(
            reason.contains("nodeName") && reason.contains("11000"),
            "{reason}"
        );
        assert!(l["report"]["_id"]["$oid"].is_string(), "{l}");
    }
}

/// Let refused reports be saved (remove `blocker`, the directory taking rejected.jsonl's name),
/// wait until they are, and stop the agent with SIGTERM: it must exit cleanly. Its log.
async fn save_refused_then_stop(child: &mut Child, blocker: &Path, log: &Path) -> String {
    std::fs::remove_dir(blocker).unwrap();
    wait_until(Duration::from_secs(30), "refused reports saved", || {
        let b = blocker.to_owned();
        async move { b.is_file() }
    })
    .await;
    signal(child, 15);
    let status = wait_exit(child, Duration::from_secs(60));
    let text = std::fs::read_to_string(log).unwrap();
    assert!(status.success(), "{text}");
    text
}

/// A unique index on nodeName: every report after the first is refused for good.
async fn unique_node_name(server: &MongoServer, db: &str) {
    server
        .client()
        .await
        .database(db)
        .collection::<Document>("reports")
        .create_index(
            mongodb::IndexModel::builder()
                .keys(mongodb::bson::doc! { "nodeName": 1 })
                .options(
                    mongodb::options::IndexOptions::builder()
                        .unique(true)
                        .build(),
                )
                .build(),
        )
        .await
        .unwrap();
}

// Refused reports that cannot be saved (here rejected.jsonl's name is taken by a directory,
// as a full disk would refuse it) stay in the spool and are retried until they can be; said
// once. They used to be deleted from the spool whether saved or not.
#[tokio::test(flavor = "multi_thread")]
async fn refused_reports_stay_in_the_spool_until_they_can_be_saved() {
    let server = MongoServer::start();
    let (_dir, spool_dir, db, log) = places("refused_unsaved");
    unique_node_name(&server, &db).await;
    let blocker = spool_dir.join("rejected.jsonl");
    std::fs::create_dir_all(&blocker).unwrap();
    let mut child = spawn_logged(agent(&server.uri, &db, &spool_dir, &[]), &log);
    wait_for_log(
        &log,
        "cannot save reports the database refused",
        Duration::from_secs(30),
    )
    .await;
    assert!(!pending_ids(&spool_dir).is_empty());
    let text = save_refused_then_stop(&mut child, &blocker, &log).await;
    assert_eq!(text.matches("cannot save reports").count(), 1, "{text}");
    assert_eq!(stored_once(&server, &db).await.len(), 1);
    // Every report after the first is refused, and saved once.
    let saved = std::fs::read_to_string(&blocker).unwrap();
    let lines: HashSet<&str> = saved.lines().collect();
    assert_eq!(lines.len(), saved.lines().count(), "saved once each");
    let st = Status::read(&spool_dir.join(STATUS_FILE)).unwrap();
    assert_eq!(lines.len() as u64, st.counters.reports - 1, "{text}");
    assert!(pending_ids(&spool_dir).is_empty());
}

// Refused reports that cannot be saved do not hold back the others. The disk is full (here
// the spool's next segment is /dev/full, so new reports are held in memory, and
// rejected.jsonl's name is taken by a directory) while the database is up: the reports it
// accepts, those on disk and those in memory, are delivered meanwhile, and the refused ones
// saved once they can be. The disk batch holding a refused report used to come back first
// every time, and nothing in memory was delivered.
#[tokio::test(flavor = "multi_thread")]
async fn refused_reports_that_cannot_be_saved_do_not_hold_back_the_rest() {
    let server = MongoServer::start();
    let (_dir, spool_dir, db, log) = places("refused_rest");
    // 20 reports in the spool, taken while the database could not be reached.
    let nowhere = format!("mongodb://127.0.0.1:{}/", common::free_port());
    let mut first = spawn_logged(agent(&nowhere, &db, &spool_dir, &[]), &log);
    wait_for_spooled(&spool_dir, 20).await;
    signal(&first, 9);
    first.wait().unwrap();
    let on_disk = pending_ids(&spool_dir).len();
    // The database refuses the reports taken in the second half of each second: every other
    // ten at 50 ms.
    let second_half = mongodb::bson::doc! { "$expr": { "$lt": [
        { "$mod": [{ "$toLong": "$recordedAt" }, 1000] }, 500
    ] } };
    let client = server.client().await;
    client
        .database(&db)
        .create_collection("reports")
        .validator(second_half)
        .await
        .unwrap();
    let blocker = spool_dir.join("rejected.jsonl");
    std::fs::create_dir_all(&blocker).unwrap();
    let next_segment = spool_dir.join("segment-0000000000000002.spool");
    std::os::unix::fs::symlink("/dev/full", &next_segment).unwrap();
    let args = ["--insert-every", "1s"];
    let mut child = spawn_logged(agent(&server.uri, &db, &spool_dir, &args), &log);
    wait_for_log(
        &log,
        "cannot save reports the database refused",
        Duration::from_secs(30),
    )
    .await;
    // About half of the reports on disk are accepted, and half of those taken into memory.
    let more_than_the_disk = on_disk / 2 + 10;
    wait_until(
        Duration::from_secs(30),
        "reports from memory stored",
        || {
            let (s, db) = (&server, &db);
            async move { ids_in(s, db).await.len() >= more_than_the_disk }
        },
    )
    .await;
    std::fs::remove_file(&next_segment).unwrap();
    let text = save_refused_then_stop(&mut child, &blocker, &log).await;
    let stored = stored_once(&server, &db).await.len();
    let saved = std::fs::read_to_string(&blocker).unwrap();
    let refused: HashSet<&str> = saved.lines().collect();
    assert_eq!(refused.len(), saved.lines().count(), "saved once each");
    let st = Status::read(&spool_dir.join(STATUS_FILE)).unwrap();
    let taken = on_disk + st.counters.reports as usize;
    assert_eq!(stored + refused.len(), taken, "{text}");
    assert!(pending_ids(&spool_dir).is_empty());
}

// SIGKILL inside an insert window: the reports taken since the last insert are only in the
// spool, and the next start delivers them; nothing lost, nothing stored twice.
#[tokio::test(flavor = "multi_thread")]
async fn a_sigkill_inside_the_insert_window_loses_nothing() {
    let Some(server) = MongoServer::start_persistent() else {
        return;
    };
    let (_dir, spool_dir, db, log) = places("kill_in_window");
    let window = ["--insert-every", "30s"];
    let mut child = spawn_logged(agent(&server.uri, &db, &spool_dir, &window), &log);
    // The first report goes at once; the next ones wait for the window to close.
    wait_until(Duration::from_secs(20), "the first insert", || {
        let (s, db) = (&server, &db);
        async move { !ids_in(s, db).await.is_empty() }
    })
    .await;
    wait_for_spooled(&spool_dir, 20).await;
    signal(&child, 9);
    child.wait().unwrap();
    let stored = ids_in(&server, &db).await;
    // The spool's delivered position is written down every few seconds: what it still holds
    // may include reports already stored, sent again (and counted as duplicates) next time.
    let in_window: Vec<_> = pending_ids(&spool_dir)
        .into_iter()
        .filter(|id| !stored.contains(id))
        .collect();
    assert!(
        in_window.len() >= 15,
        "{} only in the spool",
        in_window.len()
    );
    // Started again with the same window: the backlog is not held back by it.
    let mut child = spawn_logged(
        agent(
            &server.uri,
            &db,
            &spool_dir,
            &["--count", "3", window[0], window[1]],
        ),
        &log,
    );
    let status = wait_exit(&mut child, Duration::from_secs(90));
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
    let after: HashSet<_> = stored_once(&server, &db).await.into_iter().collect();
    for id in stored.iter().chain(&in_window) {
        assert!(after.contains(id), "{id} lost");
    }
    assert_eq!(after.len(), stored.len() + in_window.len() + 3);
}
