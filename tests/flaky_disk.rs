//! The spool on a disk whose `fdatasync` fails: a FUSE file system (tests/fixtures/flaky_disk.py,
//! over real files) that keeps apart what the page cache holds and what the card does, and
//! fails a segment's first sync the way Linux does, reporting the error once and dropping what
//! the sync was to write. A power cut is then the card's files alone. Needs `/dev/fuse`,
//! `fusermount3` and mfusepy (installed by .ci/run).

mod common;
#[path = "common/metrics.rs"]
mod metrics_common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::wire::{Withhold, ZlibProxy};
use common::{
    agent_command, all_reports, free_port, quiet_agent, run_to_success, signal, sim_agent,
    unique_name, wait_exit, wait_until, MongoServer, Reaped,
};
use metrics_common::{free_addr, python, scrape, value, wait_for_metric, wait_serving};

/// The flaky disk, mounted; unmounted (and its daemon stopped) when dropped.
struct FlakyDisk {
    daemon: Child,
    mount: PathBuf,
    card: PathBuf,
    /// The daemon's lines: `fsync ok PATH`, `fsync failed PATH` or `write failed PATH`.
    said: Arc<Mutex<Vec<String>>>,
    mounted: bool,
    _dirs: tempfile::TempDir,
}

impl FlakyDisk {
    /// Mount a disk on which the first `failures` syncs of segment files fail, and, unless
    /// `write_fails_at` is 0, that numbered write to a segment file fails (a full card) and
    /// the sync of that file after it.
    async fn mount(failures: u32, write_fails_at: u32) -> FlakyDisk {
        Self::mount_with(failures, write_fails_at, 0, None).await
    }

    /// Mount a disk holding the files of `seed`, on which reads of segment files that reach
    /// byte `read_fails_from` or past it fail (EIO).
    async fn mount_reading_badly(seed: &Path, read_fails_from: u64) -> FlakyDisk {
        Self::mount_with(0, 0, read_fails_from, Some(seed)).await
    }

    async fn mount_with(
        failures: u32,
        write_fails_at: u32,
        read_fails_from: u64,
        seed: Option<&Path>,
    ) -> FlakyDisk {
        let dirs = tempfile::tempdir().unwrap();
        let [backing, card, mount] = ["backing", "card", "mount"].map(|d| dirs.path().join(d));
        for d in [&backing, &card, &mount] {
            std::fs::create_dir(d).unwrap();
        }
        if let Some(seed) = seed {
            copy_files(seed, &backing);
            copy_files(seed, &card);
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/flaky_disk.py");
        let mut daemon = Command::new(python())
            .arg(script)
            .args([&backing, &card, &mount])
            .args([".spool", &failures.to_string(), &write_fails_at.to_string()])
            .arg(read_fails_from.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run the test venv's python (bash .ci/run creates .venv-test)");
        let said = Arc::new(Mutex::new(Vec::new()));
        let lines = BufReader::new(daemon.stdout.take().unwrap()).lines();
        let into = said.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                into.lock().unwrap().push(line);
            }
        });
        let disk = FlakyDisk {
            daemon,
            mount,
            card,
            said,
            mounted: true,
            _dirs: dirs,
        };
        let target = disk.mount.to_string_lossy().into_owned();
        wait_until(Duration::from_secs(20), "the flaky disk to be mounted (needs /dev/fuse, fusermount3 and mfusepy: bash .ci/run installs them)", || {
            let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
            let found = mounts.lines().any(|l| l.split(' ').nth(1) == Some(&target));
            async move { found }
        })
        .await;
        disk
    }

    fn said(&self) -> Vec<String> {
        self.said.lock().unwrap().clone()
    }

    /// Unmount: what is left is what the card held, as after a power cut. Its directory.
    fn power_cut(&mut self) -> &Path {
        let out = Command::new("fusermount3")
            .arg("-u")
            .arg(&self.mount)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.mounted = false;
        assert!(self.daemon.wait().unwrap().success());
        &self.card
    }
}

impl Drop for FlakyDisk {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("fusermount3")
                .arg("-uz")
                .arg(&self.mount)
                .status();
            let _ = self.daemon.kill();
            let _ = self.daemon.wait();
        }
    }
}

// A segment's sync fails while the database is down, and the sync after it, at the agent's
// stop, works. Every report is there after a power cut: the reports the failed sync was to
// write were written again, to a new file, and synced there. Before, the sync at the stop
// "worked" on the same file without writing them, and the power cut lost them.
#[tokio::test(flavor = "multi_thread")]
async fn reports_a_failed_sync_was_to_write_survive_a_power_cut() {
    // The first sync is due 500 ms after the first report.
    a_failed_sync_then_a_power_cut(&["--spool-sync", "500ms"], 0).await;
}

// The same when the sync that fails is the one a full segment gets before the next is
// started (the usual case while the database is down for long): the reports written again go
// to the new segment, synced, and the writes after them follow there. Before, that segment was
// left unsynced and its reports counted synced.
#[tokio::test(flavor = "multi_thread")]
async fn reports_a_failed_sync_at_a_segments_end_was_to_write_survive_a_power_cut() {
    // 4 KiB segments, about 20 reports each, full within about a second; no sync due before.
    a_failed_sync_then_a_power_cut(&["--spool-sync", "30s", "--spool-max-bytes", "32768"], 0).await;
}

// The same when a write fails (the card full for a moment) and the sync of what the segment
// took before it fails too: the spool closes that segment, so the sync it makes at the stop, on
// the next one, does not reach it. The reports it held are written again and synced too. Before,
// that sync was made once, its failure ignored, and those reports counted synced.
#[tokio::test(flavor = "multi_thread")]
async fn reports_before_a_failed_write_survive_a_power_cut_when_their_sync_fails() {
    // No sync due before the stop but the one after the failed write.
    a_failed_sync_then_a_power_cut(&["--spool-sync", "30s"], 5).await;
}

// A segment's sync fails while the database refuses inserts; the database takes them again
// within seconds, and from then on each insert window delivers its reports before a sync falls
// due (the sync interval is longer than the window, as by default), so no sync is tried again.
// The failure ends once what it left unsynced is delivered, and is said to. Before, the spool
// counted it failing for good: its end was never said, and a later failure would not be either.
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_sync_ends_once_delivery_catches_up() {
    let server = MongoServer::start();
    let proxy = ZlibProxy::start_withholding(
        server.port,
        &[(
            "insert",
            Withhold::CommandError(91, "ShutdownInProgress", "the server is shutting down"),
        )],
    );
    let disk = FlakyDisk::mount(1, 0).await;
    let db = unique_name("flakyends");
    let args = ["--insert-every", "1s", "--spool-sync", "1500ms"];
    let (_agent, log) = logging_agent(&proxy.uri(), &disk.mount, &db, &args);
    wait_said(&log, "cannot sync the spool").await;
    proxy.withhold(&[]);
    wait_said(&log, "the spool is safe again").await;
    let client = server.client().await;
    assert!(!all_reports(&client, &db).await.is_empty());
    client.database(&db).drop().await.unwrap();
}

// A sync fails while every sample fails (the board gone after its first readings; the same
// while readings wait for the clock): nothing is appended, and the sync is made by the sample's
// maintenance of the spool all the same. Its failure is said. Before, it went to the debug log.
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_sync_is_said_while_samples_fail() {
    let disk = FlakyDisk::mount(1, 0).await;
    let nowhere = format!("mongodb://127.0.0.1:{}/", free_port());
    let db = unique_name("flakysamples");
    let board_gone = "hts221:5:100000,lps25h:5:100000,lsm9ds1:5:100000";
    let args = ["--sim-fault", board_gone, "--spool-sync", "500ms"];
    let (_agent, log) = logging_agent(&nowhere, &disk.mount, &db, &args);
    wait_said(
        &log,
        "cannot sync the spool or write its delivered position",
    )
    .await;
    assert!(disk.said().iter().any(|l| l.starts_with("fsync failed")));
}

// The disk cannot read the end of the spool's last segment at start (EIO), as a failing card's
// bad blocks: that end is not a torn write, so it is said as unreadable and left uncut; once the
// disk reads it again, a start delivers every reading it held. Before, it read as zeros, was
// taken for a torn tail and cut for good.
#[tokio::test(flavor = "multi_thread")]
async fn an_unreadable_end_of_the_spool_is_left_for_a_later_start() {
    let server = MongoServer::start();
    let nowhere = format!("mongodb://127.0.0.1:{}/", free_port());
    let db = unique_name("flakyread");
    let (seed, segment, size) = spool_of(&nowhere, &db).await;

    // The block holding its last bytes cannot be read: the reports in it are lost to this start.
    let disk = FlakyDisk::mount_reading_badly(seed.path(), size - 300).await;
    let (mut agent, log) = logging_agent(&nowhere, &disk.mount, &db, &[]);
    wait_said(&log, "could not be read (an I/O error)").await;
    signal(&agent.0, 15);
    assert!(wait_exit(&mut agent.0, Duration::from_secs(20)).success());
    let text = std::fs::read_to_string(log.path()).unwrap();
    assert!(!text.contains("cut a torn record"), "{text}");
    let name = segment.file_name().unwrap();
    assert_eq!(
        std::fs::metadata(disk.card.join(name)).unwrap().len(),
        size,
        "the unreadable end was cut"
    );
    let kept = tempfile::tempdir().unwrap();
    copy_files(&disk.card, kept.path());
    drop(disk);

    // The card reads again: every reading taken before is delivered.
    let mut after = sim_agent(&server.uri, &db, 1, kept.path());
    after.args(["--node-name", "after"]);
    run_to_success(after).await;
    let client = server.client().await;
    let before = all_reports(&client, &db)
        .await
        .into_iter()
        .filter(|d| d.get_str("nodeName") == Ok("before"))
        .count();
    assert_eq!(before, TAKEN as usize);
    client.database(&db).drop().await.unwrap();
}

// The same with the database up: once the readings before the unreadable end are delivered, the
// file is kept under another name for whoever can read it, whole, rather than deleted.
#[tokio::test(flavor = "multi_thread")]
async fn an_unreadable_end_of_the_spool_is_kept_once_delivered() {
    let server = MongoServer::start();
    let nowhere = format!("mongodb://127.0.0.1:{}/", free_port());
    let db = unique_name("flakykept");
    let (seed, segment, size) = spool_of(&nowhere, &db).await;
    let disk = FlakyDisk::mount_reading_badly(seed.path(), size - 300).await;
    let (_agent, log) = logging_agent(&server.uri, &disk.mount, &db, &[]);
    wait_said(&log, "could not be read (an I/O error)").await;
    let name = segment.file_name().unwrap().to_string_lossy().into_owned();
    let card = disk.card.clone();
    wait_until(Duration::from_secs(30), "the segment set aside", || {
        let kept = std::fs::read_dir(&card)
            .unwrap()
            .map(|f| f.unwrap())
            .find(|f| {
                f.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("{name}.unreadable-"))
            });
        async move { kept.is_some_and(|f| f.metadata().unwrap().len() == size) }
    })
    .await;
    assert!(!card.join(&name).exists(), "{name} is set aside, not left");
    let client = server.client().await;
    assert!(!all_reports(&client, &db).await.is_empty());
    client.database(&db).drop().await.unwrap();
}

/// A spool of `TAKEN` reports of node "before" into `db`, the database at `uri` down: its
/// directory, its segment file and that file's size.
async fn spool_of(uri: &str, db: &str) -> (tempfile::TempDir, PathBuf, u64) {
    let seed = tempfile::tempdir().unwrap();
    let mut first = sim_agent(uri, db, TAKEN, seed.path());
    first.args(["--node-name", "before"]);
    let addr = free_addr();
    first
        .args(["--metrics-listen", &addr])
        .stderr(Stdio::null());
    let mut first = Reaped(first.spawn().unwrap());
    wait_serving(&addr).await;
    wait_for_metric(&addr, "sensehat_agent_samples_total", f64::from(TAKEN)).await;
    signal(&first.0, 15);
    assert!(wait_exit(&mut first.0, Duration::from_secs(20)).success());
    let segment = std::fs::read_dir(seed.path())
        .unwrap()
        .map(|f| f.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "spool"))
        .expect("a segment file");
    let size = std::fs::metadata(&segment).unwrap().len();
    (seed, segment, size)
}

/// Reports a test spools before its disk fails to read them.
const TAKEN: u32 = 40;

/// Copy the plain files of directory `from` into directory `to`.
fn copy_files(from: &Path, to: &Path) {
    for file in std::fs::read_dir(from).unwrap() {
        let file = file.unwrap();
        if file.file_type().unwrap().is_file() {
            std::fs::copy(file.path(), to.join(file.file_name())).unwrap();
        }
    }
}

// The same while readings wait for the clock: the held readings' copy is synced at every
// sample, failed or not, and its failed sync is said. Before, it was said by no one.
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_sync_of_the_held_readings_is_said_while_samples_fail() {
    let disk = FlakyDisk::mount(1, 0).await;
    let nowhere = format!("mongodb://127.0.0.1:{}/", free_port());
    let db = unique_name("flakyheld");
    let never = tempfile::tempdir().unwrap();
    let marker = never.path().join("synchronized");
    let board_gone = "hts221:5:100000,lps25h:5:100000,lsm9ds1:5:100000";
    let mut args = vec!["--sim-fault", board_gone, "--spool-sync", "500ms"];
    args.extend(["--clock-sync-file", marker.to_str().unwrap()]);
    let (_agent, log) = logging_agent(&nowhere, &disk.mount, &db, &args);
    wait_said(
        &log,
        "cannot write the copy of the readings held for the clock",
    )
    .await;
    assert!(disk.said().iter().any(|l| l.starts_with("fsync failed")));
}

/// The agent on the simulated board every 50 ms, with `args`, storing into `db` through
/// `uri` and spooling in `spool`; killed when dropped. Its log goes to the file returned.
fn logging_agent(
    uri: &str,
    spool: &Path,
    db: &str,
    args: &[&str],
) -> (Reaped, tempfile::NamedTempFile) {
    let log = tempfile::NamedTempFile::new().unwrap();
    let agent = agent_command()
        .args([
            "--sensors",
            "sim",
            "--interval",
            "50ms",
            "--node-name",
            "flaky",
        ])
        .args(["--database", db])
        .args(args)
        .arg("--spool-dir")
        .arg(spool)
        .env("MONGODB_CONNECTION_STRING", uri)
        .stdout(Stdio::null())
        .stderr(log.reopen().unwrap())
        .spawn()
        .unwrap();
    (Reaped(agent), log)
}

/// Wait up to 30 s for `needle` in the log file `log`.
async fn wait_said(log: &tempfile::NamedTempFile, needle: &'static str) {
    let what = format!("{needle:?} in the agent's log");
    wait_until(Duration::from_secs(30), &what, || {
        let text = std::fs::read_to_string(log.path()).unwrap_or_default();
        async move { text.contains(needle) }
    })
    .await;
}

/// The agent, with `args`, takes 40 reports with the database down on a disk whose first
/// sync of a segment fails (or, unless `write_fails_at` is 0, that numbered write and the sync
/// after it); then it stops, the power is cut, and an agent with the database back delivers
/// what the card held: all 40.
async fn a_failed_sync_then_a_power_cut(args: &[&str], write_fails_at: u32) {
    const TAKEN: u32 = 40;
    let server = MongoServer::start();
    let failures = u32::from(write_fails_at == 0);
    let mut disk = FlakyDisk::mount(failures, write_fails_at).await;
    let db = unique_name("flakydisk");
    let addr = free_addr();
    let nowhere = format!("mongodb://127.0.0.1:{}/", free_port());
    let taken = TAKEN.to_string();
    let mut all_args = vec![
        "--sensors",
        "sim",
        "--interval",
        "50ms",
        "--count",
        &taken,
        "--node-name",
        "flaky",
        "--database",
        &db,
        "--metrics-listen",
        &addr,
    ];
    all_args.extend_from_slice(args);
    let mut agent = quiet_agent(&nowhere, &disk.mount, &all_args);
    wait_serving(&addr).await;
    wait_for_metric(&addr, "sensehat_agent_samples_total", f64::from(TAKEN)).await;
    let failed = disk.said();
    assert!(
        failed.iter().any(|l| l.starts_with("fsync failed")),
        "a segment's first sync was made and failed: {failed:?}"
    );
    let m = scrape(&addr);
    let faults = |fault| {
        value(
            &m,
            &format!("sensehat_agent_spool_faults_total{{fault=\"{fault}\"}}"),
        )
    };
    assert_eq!(
        [
            faults("sync_failed"),
            faults("bad_data"),
            faults("set_aside")
        ],
        [1.0, 0.0, 0.0]
    );
    signal(&agent.0, 15);
    assert!(wait_exit(&mut agent.0, Duration::from_secs(20)).success());
    let said = disk.said();
    assert!(
        said[failed.len()..]
            .iter()
            .any(|l| l.starts_with("fsync ok") && l.ends_with(".spool")),
        "the stop synced the spool: {said:?}"
    );
    let card = disk.power_cut().to_owned();

    // The database is back; the agent starts on what the card held and delivers it.
    let mut after = sim_agent(&server.uri, &db, 1, &card);
    after.args(["--node-name", "after"]);
    run_to_success(after).await;
    let flaky = all_reports(&server.client().await, &db)
        .await
        .into_iter()
        .filter(|d| d.get_str("nodeName") == Ok("flaky"))
        .count();
    assert_eq!(
        flaky,
        TAKEN as usize,
        "reports taken before the power cut, found in the database (syncs: {:?})",
        disk.said()
    );
}
