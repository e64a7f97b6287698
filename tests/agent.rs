//! The agent binary end to end: dry-run output, the MongoDB schema, the LED, and errors.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::{agent_command, all_reports, run_sim_agent, unique_name, MongoServer};
use mongodb::bson::{spec::ElementType, Document};

// --dry-run prints N lines of relaxed Extended JSON with the stored field order, and exits 0.
#[test]
fn dry_run_prints_relaxed_extended_json() {
    let out = agent_command()
        .args([
            "--sensors",
            "sim",
            "--dry-run",
            "--count",
            "5",
            "--interval-ms",
            "20",
            "--node-name",
            "pi-test",
        ])
        .env_remove("MONGODB_CONNECTION_STRING")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5);
    let mut ids = std::collections::HashSet::new();
    for line in lines {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let obj = v.as_object().unwrap();
        let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        assert_eq!(keys, sensehat_monitor::report::FIELDS);
        let oid = obj["_id"]["$oid"].as_str().unwrap();
        assert_eq!(oid.len(), 24);
        assert!(ids.insert(oid.to_owned()));
        assert_eq!(obj["nodeName"], "pi-test");
        let h = obj["humidity"].as_f64().unwrap();
        let t = obj["temperature"].as_f64().unwrap();
        let p = obj["pressure"].as_f64().unwrap();
        assert!((30.0..55.0).contains(&h), "humidity {h}");
        assert!((15.0..30.0).contains(&t), "temperature {t}");
        assert!((1000.0..1030.0).contains(&p), "pressure {p}");
        assert!(obj["isMoving"].is_boolean());
        for axis in ["x", "y", "z"] {
            assert!(obj["acceleration"][axis].is_f64());
        }
        let date = obj["recordedAt"]["$date"].as_str().unwrap();
        // 2026-11-25T18:50:00.123Z
        assert_eq!(date.len(), 24, "{date}");
        assert!(date.ends_with('Z'));
        // The line parses back into the same document through the BSON crate.
        let doc: Document = mongodb::bson::Bson::try_from(v.clone())
            .unwrap()
            .as_document()
            .unwrap()
            .clone();
        assert_eq!(
            doc.get("_id").unwrap().element_type(),
            ElementType::ObjectId
        );
        assert_eq!(
            doc.get("recordedAt").unwrap().element_type(),
            ElementType::DateTime
        );
    }
    // Logs go to stderr only.
    assert!(!text.contains("INFO"));
}

// Without a connection string and without --dry-run: non-zero exit and a message saying how.
// Switches read from the environment take what people write in env files: 1, yes, on.
#[test]
fn dry_run_from_the_environment_takes_1_and_yes() {
    for value in ["1", "yes", "on", "true"] {
        let out = agent_command()
            .args(["--sensors", "sim", "--count", "1"])
            .env("SENSEHAT_DRY_RUN", value)
            .env_remove("MONGODB_CONNECTION_STRING")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "SENSEHAT_DRY_RUN={value}: {err}");
        assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
    }
}

// RUST_LOG=warning (the Python spelling) is a module's name to tracing: it silenced every line
// of the agent's. The agent's own lines still show, with a word on the misspelling; a value
// that cannot be parsed at all is replaced by info, and said.
#[test]
fn a_misspelt_rust_log_does_not_silence_the_agent() {
    for (value, note) in [
        ("warning", "taken for a module's name"),
        ("sensehat_monitor=loud", "not understood"),
    ] {
        let out = agent_command()
            .args(["--sensors", "sim", "--dry-run", "--count", "2"])
            .args(["--interval", "10ms"])
            .env("RUST_LOG", value)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "RUST_LOG={value}: {err}");
        assert!(err.contains("stopped reports=2"), "RUST_LOG={value}: {err}");
        assert!(err.contains(note), "RUST_LOG={value}: {err}");
    }
}

#[test]
fn missing_connection_string_says_how_to_give_one() {
    let out = agent_command()
        .args(["--sensors", "sim", "--count", "1"])
        .env_remove("MONGODB_CONNECTION_STRING")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("MONGODB_CONNECTION_STRING"), "{err}");
    assert!(err.contains("--dry-run"), "{err}");
    assert!(out.stdout.is_empty());

    // One that can never work is refused at start too, not found out by delivery later
    // while sampling goes on (it was logged only when the agent stopped).
    let spool = tempfile::tempdir().unwrap();
    let out = agent_command()
        .args(["--sensors", "sim", "--count", "1"])
        .arg("--spool-dir")
        .arg(spool.path())
        .env(
            "MONGODB_CONNECTION_STRING",
            "mongodb://alice:p@ss/w0rd@127.0.0.1:1/",
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("percent-encoded"), "{err}");
    assert!(!err.contains("p@ss"), "the password was logged: {err}");
}

// A command line clap refuses is said without the password of a connection string on it: a
// string given without its option is quoted back as an unknown subcommand, into the journal
// under systemd. Every program parses its line the same way (`cli::parse_args`).
#[test]
fn a_refused_command_line_does_not_repeat_a_password() {
    let out = agent_command()
        .arg("mongodb+srv://greenhouse:Tomat0es-2026@cluster0.example.mongodb.net/")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unrecognized subcommand"), "{err}");
    assert!(err.contains("cluster0.example.mongodb.net"), "{err}");
    assert!(!err.contains("Tomat0es"), "the password was said: {err}");
    // Help still goes to standard output, with exit 0.
    let out = agent_command().arg("--help").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("--spool-max-bytes"));
}

// `status` answers on standard output: a reader that has gone (`| head -1`) ends it as usual,
// and an output that cannot be written (`> /dev/full`) is an error on one line with exit 1;
// neither panics. (The companions' `check-config` answers the same way: tests/dashboard_render.rs.)
#[test]
fn status_to_a_closed_or_full_standard_output_ends_cleanly() {
    let spool = tempfile::tempdir().unwrap();
    let status = |stdout: Stdio| {
        agent_command()
            .arg("--spool-dir")
            .arg(spool.path())
            .arg("status")
            .stdout(stdout)
            .stderr(Stdio::piped())
            .output()
            .unwrap()
    };
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let gone = status(Stdio::from(writer));
    let said = String::from_utf8_lossy(&gone.stderr);
    // As usual: 4, the agent's state not known (no status file here).
    assert_eq!(gone.status.code(), Some(4), "status | (gone): {said}");
    assert!(!said.contains("panicked"), "{said}");
    let full = status(Stdio::from(std::fs::File::create("/dev/full").unwrap()));
    let said = String::from_utf8_lossy(&full.stderr);
    assert_eq!(full.status.code(), Some(1), "status > /dev/full: {said}");
    assert!(said.contains("cannot write to standard output"), "{said}");
    assert!(!said.contains("panicked"), "{said}");
}

// While the agent runs and delivers, `status` counts as unsent what the agent has not had
// acknowledged (its status file), not what the files hold past the delivered position, which
// is written down once a minute: a healthy agent showed up to a minute of delivered reports
// as unsent.
#[tokio::test(flavor = "multi_thread")]
async fn status_of_a_running_agent_counts_only_what_is_unsent() {
    let server = MongoServer::start();
    let db = unique_name("status_running");
    let spool = tempfile::tempdir().unwrap();
    let args = [
        "--sensors",
        "sim",
        "--interval",
        "50ms",
        "--insert-every",
        "500ms",
    ];
    let _agent = common::quiet_agent(
        &server.uri,
        spool.path(),
        &[&args[..], &["--database", &db]].concat(),
    );
    let reports = server
        .client()
        .await
        .database(&db)
        .collection::<Document>("reports");
    common::wait_until(Duration::from_secs(60), "200 reports stored", || {
        let r = reports.clone();
        async move { r.count_documents(mongodb::bson::doc! {}).await.unwrap() >= 200 }
    })
    .await;
    let since = mongodb::bson::DateTime::now().timestamp_millis();
    common::wait_for_status(spool.path(), "the status file rewritten", |s| {
        s.updated_ms > since
    })
    .await;
    let s = common::status_text(spool.path());
    // Half a second's window and a write group at 20 reports a second, and room for a slow
    // insert; the files alone count 190 or more.
    let unsent = common::status_figure(&s, "unsent reports");
    assert!(unsent.is_some_and(|n| n <= 100), "{s}");
}

// `status` of a running agent exits 0, its first line the spool's (no "not running"): the
// agent's process is found, and its status file is current.
#[tokio::test(flavor = "multi_thread")]
async fn status_of_a_running_agent_exits_0() {
    let spool = tempfile::tempdir().unwrap();
    // Nothing listens there: the agent runs, spooling.
    let nobody = format!("mongodb://127.0.0.1:{}/", common::free_port());
    let agent = common::quiet_agent(&nobody, spool.path(), &["--sensors", "sim"]);
    let pid = agent.0.id();
    common::wait_for_status(spool.path(), "the agent's status file", |s| s.pid == pid).await;
    let (code, text, said) = common::status_run(spool.path());
    assert_eq!(code, Some(0), "{text}{said}");
    assert!(text.starts_with("spool "), "{text}");
    assert!(!text.contains("not running"), "{text}");
}

// `status` of an agent that was stopped says so on its first line, with how old the status
// that follows is, and exits 3 (the LSB's "not running", for scripts), though the agent wrote
// that file as it stopped. It used to show the file as if the agent ran, and exit 0.
#[tokio::test(flavor = "multi_thread")]
async fn status_of_a_stopped_agent_says_so_and_exits_3() {
    let spool = tempfile::tempdir().unwrap();
    let nobody = format!("mongodb://127.0.0.1:{}/", common::free_port());
    let mut agent = common::quiet_agent(&nobody, spool.path(), &["--sensors", "sim"]);
    let pid = agent.0.id();
    common::wait_for_status(spool.path(), "the agent's status file", |s| s.pid == pid).await;
    common::signal(&agent.0, 15);
    assert!(agent.0.wait().unwrap().success());
    let (code, text, said) = common::status_run(spool.path());
    assert_eq!(code, Some(3), "{text}{said}");
    let first = text.lines().next().unwrap_or_default();
    let age: Option<u64> = first
        .strip_prefix("agent: not running (its last status, written ")
        .and_then(|r| r.strip_suffix(" s ago, follows)"))
        .and_then(|n| n.parse().ok());
    assert!(age.is_some_and(|s| s < 60), "{text}");
    assert!(text.contains("status written"), "{text}");
}

// A second agent on a spool directory another one uses (`sudo sensehat-monitor` beside the
// service) is refused at start with the holder's pid and what to do, and touches nothing; the
// lock goes with its holder however it ends, SIGKILL included.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_agent_on_the_same_spool_is_refused() {
    let spool = tempfile::tempdir().unwrap();
    // Nothing listens there: the reports stay in the spool.
    let nobody = format!("mongodb://127.0.0.1:{}/", common::free_port());
    let args = ["--sensors", "sim", "--interval", "50ms"];
    let first = common::quiet_agent(&nobody, spool.path(), &args);
    common::wait_for_status(spool.path(), "the first agent's status file", |s| {
        s.pid == first.0.id()
    })
    .await;
    let mut second = common::agent_command()
        .args(args)
        .args(["--count", "3"])
        .arg("--spool-dir")
        .arg(spool.path())
        .env("MONGODB_CONNECTION_STRING", &nobody)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Without the lock it would sample and wait for the database for ever.
    let status = common::wait_exit(&mut second, Duration::from_secs(30));
    let refused = second.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "another sensehat-monitor (pid {}) is using the spool directory",
            first.0.id()
        )),
        "{err}"
    );
    assert!(err.contains("--spool-dir of its own"), "{err}");
    // Dropped: killed with SIGKILL.
    drop(first);
    let third = common::quiet_agent(&nobody, spool.path(), &args);
    common::wait_for_status(
        spool.path(),
        "the status file of an agent after the kill",
        |s| s.pid == third.0.id(),
    )
    .await;
}

// Restarted while the database is unreachable, with reports from before in the spool,
// `status` gives the oldest unsent as the oldest in the spool, not this run's first sample
// (without metrics, the agent only counted the oldest for them).
#[tokio::test(flavor = "multi_thread")]
async fn status_after_a_restart_gives_the_oldest_report_in_the_spool() {
    let spool = tempfile::tempdir().unwrap();
    let nobody = format!("mongodb://127.0.0.1:{}/", common::free_port());
    let args = ["--sensors", "sim", "--interval", "50ms"];
    let mut first = common::quiet_agent(&nobody, spool.path(), &args);
    common::wait_for_status(spool.path(), "reports in the spool", |s| s.pending >= 10).await;
    common::signal(&first.0, 15);
    first.0.wait().unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let restarted = std::time::Instant::now();
    let again = common::quiet_agent(&nobody, spool.path(), &args);
    let pid = again.0.id();
    common::wait_for_status(spool.path(), "this run's status file", |s| {
        s.pid == pid && s.counters.oldest_unsent_ms.is_some()
    })
    .await;
    let s = common::status_text(spool.path());
    let age: Option<u64> = s
        .lines()
        .find_map(|l| l.strip_prefix("oldest unsent"))
        .and_then(|l| l.split('(').nth(1)?.strip_suffix(" s ago)")?.parse().ok());
    // Older than this run by the six seconds the agent was stopped, at least.
    let this_run = restarted.elapsed().as_secs();
    assert!(age.is_some_and(|a| a >= this_run + 5), "{this_run} s: {s}");
}

// `status` tells a damaged status file from none at all, and exits 4 for both: whether the
// agent runs is not known (0 would read as "running" to a script).
#[test]
fn status_tells_a_damaged_status_file_from_a_missing_one() {
    let spool = tempfile::tempdir().unwrap();
    let (code, text, _) = common::status_run(spool.path());
    assert_eq!(code, Some(4), "{text}");
    assert!(text.contains("no status file yet"), "{text}");
    std::fs::write(spool.path().join("status.json"), "{\"pid\": 1, \"upd").unwrap();
    let (code, text, _) = common::status_run(spool.path());
    assert_eq!(code, Some(4), "{text}");
    assert!(
        text.contains("status.json is there but unreadable"),
        "{text}"
    );
}

// check-config (the unit's ExecStartPre): what is wrong, with exit 2, or "configuration ok"
// and what the agent will do about the clock.
#[test]
fn check_config_says_what_is_wrong_and_what_the_clock_says() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let timesync = dir.path().join("timesync");
    std::fs::create_dir(&timesync).unwrap();
    let marker = timesync.join("synchronized");
    let check = |uri: Option<&str>, spool: &std::path::Path| {
        let mut c = agent_command();
        c.arg("--clock-sync-file")
            .arg(&marker)
            .arg("check-config")
            .arg("--spool-dir")
            .arg(spool)
            .env_remove("MONGODB_CONNECTION_STRING");
        if let Some(u) = uri {
            c.env("MONGODB_CONNECTION_STRING", u);
        }
        let out = c.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    let (code, err) = check(None, &spool);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("MONGODB_CONNECTION_STRING"), "{err}");

    // A connection string that can never work is refused before anything runs: an Atlas
    // password with an unescaped @, and options the driver refuses together.
    let (code, err) = check(
        Some("mongodb+srv://greenhouse:p@ss@cluster0.example.mongodb.net/"),
        &spool,
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("@ as %40"), "{err}");
    let (code, err) = check(Some("mongodb://127.0.0.1:1/?w=0&journal=true"), &spool);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("w=0 and j=true"), "{err}");
    // A database or collection name the server would refuse is refused as an option.
    for (option, name) in [("--database", "monitors.pi"), ("--collection", "$reports")] {
        let out = agent_command()
            .args([option, name, "--dry-run", "check-config"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(option) && err.contains("cannot hold"), "{err}");
    }
    // TLS files the string names must be there to read (the driver reads them only when it
    // connects), also behind an SRV string, whose other options wait for DNS.
    for uri in [
        "mongodb://127.0.0.1:1/?tls=true&tlsCAFile=/nonexistent/ca.pem",
        "mongodb+srv://cluster0.example.mongodb.net/?tlsCAFile=/nonexistent/ca.pem",
    ] {
        let (code, err) = check(Some(uri), &spool);
        assert_eq!(code, Some(2), "{uri}: {err}");
        assert!(
            err.contains("cannot read tlsCAFile /nonexistent/ca.pem"),
            "{err}"
        );
    }

    let uri = Some("mongodb://127.0.0.1:1/");
    let (code, err) = check(uri, Path::new("/proc/no-spool-here"));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--spool-dir"), "{err}");
    // A file in the spool directory's place is named as such, at check-config and at start
    // (the system says only "File exists").
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let (code, err) = check(uri, &file);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("a file, not a directory"), "{err}");
    let out = agent_command()
        .args(["--sensors", "sim", "--count", "1", "--spool-dir"])
        .arg(&file)
        .env("MONGODB_CONNECTION_STRING", "mongodb://127.0.0.1:1/")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("a file, not a directory"), "{err}");

    // A full disk (the probe's file is /dev/full) is a warning, not a failure: the agent
    // runs from memory until it can write, so ExecStartPre must not keep it from starting.
    let full = dir.path().join("full");
    std::fs::create_dir(&full).unwrap();
    std::os::unix::fs::symlink("/dev/full", full.join(".write-test")).unwrap();
    let (code, err) = check(uri, &full);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("cannot be written now"), "{err}");

    let (code, err) = check(uri, &spool);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("configuration ok"), "{err}");
    assert!(
        err.contains("not synchronized yet; readings will be held"),
        "{err}"
    );

    std::fs::write(&marker, "").unwrap();
    let (_, err) = check(uri, &spool);
    assert!(err.contains("clock: synchronized"), "{err}");
}

/// `command` run with `dir` read-only, as a unit's `ProtectSystem=strict` or a card remounted
/// read-only after errors makes it: a read-only bind mount (the one systemd makes) in a mount
/// namespace of the command's own, which needs root, as CI runs.
fn read_only_at(dir: &Path, command: &std::process::Command) -> std::process::Command {
    let mut c = std::process::Command::new("unshare");
    c.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@""#)
        .arg("sh")
        .arg(dir)
        .arg(command.get_program())
        .args(command.get_args());
    for (name, value) in command.get_envs() {
        match value {
            Some(v) => c.env(name, v),
            None => c.env_remove(name),
        };
    }
    c
}

/// Whether [`read_only_at`] failed for want of root, outside CI: the test is skipped there.
fn no_mount_namespace(stderr: &str) -> bool {
    let refused = stderr.starts_with("unshare:") || stderr.starts_with("mount:");
    if refused && std::env::var_os("CI").is_none() {
        eprintln!("skipped: no mount namespace here (run as root, as CI does): {stderr}");
        return true;
    }
    false
}

// Under its unit, whose ProtectSystem=strict leaves every path but its state directory
// read-only, a spool directory elsewhere (SENSEHAT_SPOOL_DIR without ReadWritePaths=) is
// refused by check-config, the unit's ExecStartPre, saying what to add; the agent would
// otherwise fail at each start with the system's "Read-only file system". A disk read-only
// everywhere (a card remounted read-only after errors) stays a warning: the agent runs from
// memory (below).
#[test]
fn a_spool_directory_the_unit_makes_read_only_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let protected = dir.path().join("protected");
    let state = dir.path().join("state");
    std::fs::create_dir(&protected).unwrap();
    std::fs::create_dir(&state).unwrap();
    let check = |state: &Path| {
        let mut c = agent_command();
        c.args(["--clock-wait", "0", "check-config", "--spool-dir"])
            .arg(protected.join("spool"))
            .env("MONGODB_CONNECTION_STRING", "mongodb://127.0.0.1:1/")
            .env("STATE_DIRECTORY", state);
        let out = read_only_at(&protected, &c).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = check(&state);
    if no_mount_namespace(&err) {
        return;
    }
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("read-only to this service")
            && err.contains(&format!(
                "ReadWritePaths={}",
                protected.join("spool").display()
            )),
        "{err}"
    );
    // The state directory read-only too: the disk, not the unit.
    let (code, err) = check(&protected.join("state"));
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("cannot be written now"), "{err}");
}

// An agent started on a disk that is read-only now, in a spool directory it has not used
// before (so with no lock file to open), runs from memory and delivers every reading: it
// failed at start making its lock file, and under the unit tried again every 10 s, sampling
// nothing.
#[tokio::test(flavor = "multi_thread")]
async fn an_agent_on_a_read_only_disk_delivers_from_memory() {
    let server = MongoServer::start();
    let db = unique_name("read_only");
    let spool = tempfile::tempdir().unwrap();
    let agent = common::sim_agent(&server.uri, &db, 20, spool.path());
    let out = read_only_at(spool.path(), &agent).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    if no_mount_namespace(&err) {
        return;
    }
    assert!(out.status.success(), "{err}");
    assert!(err.contains("keeping new reports in memory"), "{err}");
    let client = server.client().await;
    assert_eq!(all_reports(&client, &db).await.len(), 20, "{err}");
}

// Without a Sense HAT the real board fails fast with a message naming the bus.
#[test]
fn missing_sense_hat_fails_fast() {
    let run = |bus: &str| {
        let out = agent_command()
            .args(["--dry-run", "--i2c-bus", bus, "--count", "1"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run("/dev/i2c-nonexistent");
    assert!(err.contains("/dev/i2c-nonexistent"), "{err}");
    // I2C off is the likely reason only where the machine has no I2C bus at all.
    let has_a_bus = std::fs::read_dir("/dev")
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with("i2c-"));
    let says = if has_a_bus {
        "ls /dev/i2c-*"
    } else {
        "raspi-config"
    };
    assert!(err.contains(says), "{err}");
    // A bare bus number, and a device that is no I2C bus, are named as such.
    let err = run("1");
    assert!(err.contains("such as /dev/i2c-1"), "{err}");
    let err = run("/dev/null");
    assert!(err.contains("/dev/null is not an I2C bus"), "{err}");
}

// The logo is written to the LED device as RGB565 at start, and the matrix is cleared on exit.
#[test]
fn led_shows_logo_then_clears() {
    let dir = tempfile::tempdir().unwrap();
    let fb = dir.path().join("fb1");
    std::fs::write(&fb, [0u8; 128]).unwrap();
    let mut child = agent_command()
        .args([
            "--sensors",
            "sim",
            "--dry-run",
            "--interval-ms",
            "50",
            "--led-device",
        ])
        .arg(&fb)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let logo =
        sensehat_monitor::led::Frame::from_png(sensehat_monitor::led::frame::DEFAULT_LOGO_PNG)
            .unwrap()
            .to_fb_bytes(sensehat_monitor::led::Rotation::R0);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::fs::read(&fb).unwrap() != logo {
        assert!(std::time::Instant::now() < deadline, "logo never appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
    common::signal(&child, 15);
    let status = child.wait().unwrap();
    assert!(status.success());
    assert_eq!(std::fs::read(&fb).unwrap(), vec![0u8; 128]);
}

// A --logo that cannot be shown (missing, not a PNG) costs no readings: the agent shows the
// built-in logo and says why, and check-config (the unit's ExecStartPre) passes with a warning.
// Before, both stopped with exit 2 and the service took no readings at all.
#[test]
fn an_unusable_logo_shows_the_built_in_one() {
    let dir = tempfile::tempdir().unwrap();
    let not_png = dir.path().join("logo.png");
    std::fs::write(&not_png, "not a picture").unwrap();
    let missing = dir.path().join("gone.png");
    let builtin =
        sensehat_monitor::led::Frame::from_png(sensehat_monitor::led::frame::DEFAULT_LOGO_PNG)
            .unwrap()
            .to_fb_bytes(sensehat_monitor::led::Rotation::R0);
    for logo in [&missing, &not_png] {
        let out = agent_command()
            .args(["--sensors", "sim", "--dry-run", "--logo"])
            .arg(logo)
            .arg("check-config")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        assert!(
            err.contains("the agent will show the built-in logo"),
            "{err}"
        );

        let fb = dir.path().join("fb");
        std::fs::write(&fb, [0u8; 128]).unwrap();
        let log = dir.path().join("log");
        let mut child = common::Reaped(
            agent_command()
                .args(["--sensors", "sim", "--dry-run", "--interval", "50ms"])
                .arg("--logo")
                .arg(logo)
                .arg("--led-device")
                .arg(&fb)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap(),
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::fs::read(&fb).unwrap() != builtin {
            assert!(
                std::time::Instant::now() < deadline,
                "the built-in logo never appeared: {}",
                std::fs::read_to_string(&log).unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        common::signal(&child.0, 15);
        assert!(child.0.wait().unwrap().success());
        let err = std::fs::read_to_string(&log).unwrap();
        assert!(err.contains("showing the built-in logo"), "{err}");
        assert!(err.contains(&*logo.to_string_lossy()), "{err}");
    }
}

// --sensors sim --count 10 stores 10 reports with exactly the original BSON types.
#[tokio::test(flavor = "multi_thread")]
async fn stores_reports_with_the_original_bson_types() {
    let server = MongoServer::start();
    let db = unique_name("agent");
    run_sim_agent(&server.uri, &db, 10).await;
    let client = server.client().await;
    let docs = all_reports(&client, &db).await;
    assert_eq!(docs.len(), 10);
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    for d in &docs {
        let types: Vec<(&str, ElementType)> = d
            .iter()
            .map(|(k, v)| (k.as_str(), v.element_type()))
            .collect();
        assert_eq!(
            types,
            [
                ("_id", ElementType::ObjectId),
                ("nodeName", ElementType::String),
                ("humidity", ElementType::Double),
                ("temperature", ElementType::Double),
                ("pressure", ElementType::Double),
                ("isMoving", ElementType::Boolean),
                ("acceleration", ElementType::EmbeddedDocument),
                ("recordedAt", ElementType::DateTime),
            ]
        );
        let acc = d.get_document("acceleration").unwrap();
        let acc_types: Vec<(&str, ElementType)> = acc
            .iter()
            .map(|(k, v)| (k.as_str(), v.element_type()))
            .collect();
        assert_eq!(
            acc_types,
            [
                ("x", ElementType::Double),
                ("y", ElementType::Double),
                ("z", ElementType::Double)
            ]
        );
        assert_eq!(d.get_str("nodeName").unwrap(), host);
    }
    // Samples are 50 ms apart on the schedule.
    let mut times: Vec<i64> = docs
        .iter()
        .map(|d| d.get_datetime("recordedAt").unwrap().timestamp_millis())
        .collect();
    times.sort();
    let span = times[9] - times[0];
    assert!(
        (400..=2000).contains(&span),
        "10 samples at 50 ms spanned {span} ms"
    );
    client.database(&db).drop().await.unwrap();
}

/// The simulated board for the isMoving tests: at rest reading z 1.01 g (gravity plus a zero-g
/// offset, as a real board can), knocked in samples 6, 7 and 8 of 10.
const SIM_REST_OVER_1G: [&str; 6] = [
    "--sim-gravity",
    "0,0,1.01",
    "--sim-knock",
    "6:3",
    "--interval",
    "20ms",
];
/// The samples [`SIM_REST_OVER_1G`] knocks.
const KNOCKED: std::ops::Range<usize> = 6..9;

/// The dry-run reports of 10 samples of [`SIM_REST_OVER_1G`], with `args` and `env` added:
/// each one's isMoving and acceleration.
fn moving_and_acceleration(args: &[&str], env: &[(&str, &str)]) -> Vec<(bool, [f64; 3])> {
    let out = agent_command()
        .args(["--sensors", "sim", "--dry-run", "--count", "10"])
        .args(SIM_REST_OVER_1G)
        .args(args)
        .envs(env.iter().copied())
        .env_remove("MONGODB_CONNECTION_STRING")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?} {env:?}: {err}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let a = &v["acceleration"];
            let axis = |n: &str| a[n].as_f64().unwrap();
            (
                v["isMoving"].as_bool().unwrap(),
                [axis("x"), axis("y"), axis("z")],
            )
        })
        .collect()
}

/// The length of `a`, in g.
fn length(a: [f64; 3]) -> f64 {
    a.iter().map(|v| v * v).sum::<f64>().sqrt()
}

// By default isMoving is the original rule, unchanged: a board resting a hair over 1 g is
// "moving" in every sample. `--moving-rule magnitude` calls it still at rest and moving in
// each knocked sample; SENSEHAT_MOVING_RULE sets it too, with a threshold of its own.
#[test]
fn moving_rule_magnitude_ignores_a_board_at_rest_and_sees_it_knocked() {
    let default = moving_and_acceleration(&[], &[]);
    assert_eq!(default.len(), 10);
    for (i, (moving, a)) in default.iter().enumerate() {
        let original = a.iter().any(|v| !(-1.0..=1.0).contains(v));
        assert_eq!(*moving, original, "sample {i}: {a:?}");
        assert!(*moving, "sample {i} at rest over 1 g: {a:?}");
    }

    let magnitude = moving_and_acceleration(&["--moving-rule", "magnitude"], &[]);
    assert_eq!(magnitude.len(), 10);
    for (i, (moving, a)) in magnitude.iter().enumerate() {
        assert_eq!(*moving, KNOCKED.contains(&i), "sample {i}: {a:?}");
        assert_eq!(
            *moving,
            (length(*a) - 1.0).abs() > 0.25,
            "sample {i}: {a:?}"
        );
        assert!(a[2] > 1.0, "sample {i} reads under 1 g: {a:?}");
    }

    // From the environment, with a threshold under the resting board's 1.01 g.
    let strict = moving_and_acceleration(&[], &[("SENSEHAT_MOVING_RULE", "magnitude:0.005")]);
    assert_eq!(strict.len(), 10);
    for (i, (moving, a)) in strict.iter().enumerate() {
        assert!(*moving, "sample {i}: {a:?}");
    }
}

// The rule reaches the stored reports too (the spool's BSON, not the dry-run line).
#[tokio::test(flavor = "multi_thread")]
async fn stored_reports_are_moving_by_the_chosen_rule() {
    let server = MongoServer::start();
    let db = unique_name("moving");
    let spool = tempfile::tempdir().unwrap();
    let mut agent = common::sim_agent(&server.uri, &db, 10, spool.path());
    agent
        .args(SIM_REST_OVER_1G)
        .args(["--moving-rule", "magnitude"]);
    let out = tokio::process::Command::from(agent).output().await.unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("moving_rule=magnitude:0.25"), "{err}");
    let client = server.client().await;
    let mut docs = all_reports(&client, &db).await;
    docs.sort_by_key(|d| d.get_datetime("recordedAt").unwrap().timestamp_millis());
    let moving: Vec<bool> = docs
        .iter()
        .map(|d| d.get_bool("isMoving").unwrap())
        .collect();
    let expected: Vec<bool> = (0..10).map(|i| KNOCKED.contains(&i)).collect();
    assert_eq!(moving, expected);
    client.database(&db).drop().await.unwrap();
}

// Where the server offers zlib (mongod and Atlas do), the agent's inserts go out compressed at
// zlib's fastest level, and every reading arrives; `--wire-compression none` sends them plain;
// a `compressors=` in the connection string wins, its `zlibCompressionLevel` included.
#[tokio::test(flavor = "multi_thread")]
async fn inserts_are_zlib_compressed_at_the_fastest_level_where_the_server_offers_it() {
    use common::wire::{Sent, ZlibProxy};
    let Some(server) = MongoServer::own() else {
        return;
    };
    let client = server.client().await;
    // (extra arguments, extra connection string options, the zlib FLEVEL the inserts carry:
    // 0 for levels 0 and 1, 3 for 7-9)
    let cases: [(&[&str], &str, Option<u8>); 3] = [
        (&[], "", Some(0)),
        (&["--wire-compression", "none"], "", None),
        (&[], "&compressors=zlib&zlibCompressionLevel=9", Some(3)),
    ];
    for (args, options, level) in cases {
        let proxy = ZlibProxy::start(server.port);
        let db = unique_name("wire");
        let spool = tempfile::tempdir().unwrap();
        let uri = proxy.uri() + options;
        let mut agent = common::sim_agent(&uri, &db, 12, spool.path());
        agent.args(["--insert-every", "200ms"]).args(args);
        let run = tokio::process::Command::from(agent)
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .unwrap_or_else(|_| panic!("{args:?} {options}: no exit in 60 s: {:?}", proxy.sent()))
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            all_reports(&client, &db).await.len(),
            12,
            "{args:?} {options}"
        );
        let sent = proxy.sent();
        assert!(
            !sent.iter().any(|s| matches!(s, Sent::Failed(_))),
            "{sent:?}"
        );
        let inserts: Vec<_> = sent
            .iter()
            .filter_map(|s| match s {
                Sent::Command { name, zlib } if name == "insert" => Some(zlib),
                _ => None,
            })
            .collect();
        // 12 samples 50 ms apart in windows of 200 ms: a few inserts (fewer if connecting was
        // slow, as a backlog goes in one), each as expected, and smaller compressed.
        assert!(!inserts.is_empty(), "{args:?} {options}: no insert seen");
        for zlib in inserts {
            assert_eq!(zlib.map(|z| z.level), level, "{args:?} {options}: {sent:?}");
            if let Some(z) = zlib {
                assert!(z.packed < z.plain, "{args:?} {options}: {z:?}");
            }
        }
        client.database(&db).drop().await.unwrap();
    }
}

// An insert the server refuses is logged in the server's words (code, name, message), without
// the driver's debugging fields: its labels, and the server's whole reply as hex bytes, which
// made the line hundreds of characters long. The test server has no users, so the wire proxy
// refuses the inserts as mongod refuses a user without the privilege.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_insert_is_logged_in_the_servers_words() {
    use common::wire::{Withhold, ZlibProxy};
    let Some(server) = MongoServer::own() else {
        return;
    };
    let proxy = ZlibProxy::start_withholding(server.port, &[("insert", Withhold::Refuse)]);
    let spool = tempfile::tempdir().unwrap();
    let mut agent = common::sim_agent(&proxy.uri(), &unique_name("refused"), 1_000, spool.path());
    agent.stdout(std::process::Stdio::null());
    let unavailable = "MongoDB unavailable";
    let line = common::first_stderr_line(agent, unavailable, Duration::from_secs(60)).await;
    assert!(line.contains("Error code 13 (Unauthorized)"), "{line}");
    assert!(line.contains("not authorized on"), "{line}");
    assert!(
        line.contains("user may not insert into this database; give it the readWrite role"),
        "{line}"
    );
    for debugging in ["server response", "RawDocumentBuf", "labels:"] {
        assert!(!line.contains(debugging), "{line}");
    }
}

/// What the agent run with `args` under a systemd watchdog of `watchdog_usec` tells systemd
/// (`NOTIFY_SOCKET`), in order. A thread reads as the messages come, as systemd does: a
/// datagram socket's queue is short, and a sender blocks when it is full.
fn systemd_notifications(args: &[&str], watchdog_usec: &str) -> Vec<String> {
    systemd_notifications_until(args, watchdog_usec, None)
}

/// [`systemd_notifications`] of an agent stopped by SIGTERM after `stop_after`, if given.
fn systemd_notifications_until(
    args: &[&str],
    watchdog_usec: &str,
    stop_after: Option<Duration>,
) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut messages = Vec::new();
            let mut buf = [0u8; 256];
            loop {
                match sock.recv(&mut buf) {
                    Ok(n) => messages.push(String::from_utf8_lossy(&buf[..n]).trim().to_owned()),
                    // Timed out: nothing is queued.
                    Err(_) if done.load(std::sync::atomic::Ordering::SeqCst) => return messages,
                    Err(_) => {}
                }
            }
        })
    };
    let mut child = agent_command()
        .args(args)
        .env("NOTIFY_SOCKET", &path)
        .env("WATCHDOG_USEC", watchdog_usec)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    if let Some(after) = stop_after {
        std::thread::sleep(after);
        common::signal(&child, 15);
    }
    let status = child.wait().unwrap();
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let messages = reader.join().unwrap();
    assert!(status.success(), "{messages:?}");
    messages
}

// Under systemd (NOTIFY_SOCKET set), the agent sends READY=1 after the first sample and pings
// the watchdog from the sampling loop.
#[test]
fn notifies_systemd_ready_and_watchdog() {
    let args = [
        "--sensors",
        "sim",
        "--dry-run",
        "--count",
        "3",
        "--interval",
        "200ms",
    ];
    let messages = systemd_notifications(&args, "100000");
    assert_eq!(
        messages.iter().filter(|m| *m == "READY=1").count(),
        1,
        "{messages:?}"
    );
    // Samples 200 ms apart, pings at most 25 ms apart (a quarter of the 100 ms timeout): one
    // with each sample and the ones while waiting.
    let pings = messages.iter().filter(|m| *m == "WATCHDOG=1").count();
    assert!(pings >= 5, "{messages:?}");
    // Nothing before the first sample: READY=1 means the sampling loop runs.
    assert_eq!(messages[0], "READY=1", "{messages:?}");
}

// READY=1 follows the first sample whatever it gave: a sensor that fails from the start costs
// samples, not the run. Were it sent only after a reading, systemd would stop the agent at its
// start timeout (90 s) and start it again, for ever, each time resetting its metrics.
#[test]
fn ready_is_said_though_every_sample_fails() {
    let args = [
        "--sensors",
        "sim",
        "--dry-run",
        "--sim-fault",
        "lps25h:0:1000000",
        "--interval",
        "100ms",
    ];
    let messages = systemd_notifications_until(&args, "0", Some(Duration::from_secs(2)));
    assert!(messages.iter().any(|m| m == "READY=1"), "{messages:?}");
}

// Each ping wakes systemd, so the watchdog is pinged every quarter of its timeout, with the
// sample due then, not with every sample: 30 samples at 100 ms under a 4 s watchdog send a
// few pings, where a ping a sample would send 30.
#[test]
fn watchdog_pings_come_a_quarter_of_its_timeout_apart_not_with_every_sample() {
    let args = [
        "--sensors",
        "sim",
        "--dry-run",
        "--count",
        "30",
        "--interval",
        "100ms",
    ];
    let messages = systemd_notifications(&args, "4000000");
    assert_eq!(
        messages.first().map(String::as_str),
        Some("READY=1"),
        "{messages:?}"
    );
    let pings = messages.iter().filter(|m| *m == "WATCHDOG=1").count();
    // 2.9 s of samples, a ping at least every second: 3 or 4, more only if the run stretched.
    assert!((2..=10).contains(&pings), "{pings} pings: {messages:?}");
}
