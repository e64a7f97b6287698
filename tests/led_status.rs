//! `--led-status`: the real agent binary (simulated board) writing a framebuffer file, whose
//! top-right corner is driven by a real outage of a real MongoDB wire-protocol server, by a
//! failing sensor, by the clock and by a disk that cannot be written (with what `status` and
//! the log say meanwhile); and without the option, the logo alone.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{agent_command, quiet_agent, signal, status_text, unique_name, MongoServer, Reaped};
use sensehat_monitor::led::{frame::DEFAULT_LOGO_PNG, Frame, Rotation};

// docs/operating.md's colours as the framebuffer stores them (RGB565), declared here again
// rather than taken from the code under test.
/// Green (0, 255, 0): readings are stored.
const GREEN: u16 = 0x07E0;
/// Amber (255, 160, 0): readings are spooled.
const AMBER: u16 = 0xFD00;
/// Red (255, 0, 0): spooled, the spool in the last quarter before its cap.
const RED: u16 = 0xF800;
/// Blue (0, 0, 255): held for the clock.
const BLUE: u16 = 0x001F;
/// Magenta (255, 0, 255): a sensor is failing.
const MAGENTA: u16 = 0xF81F;
const OFF: u16 = 0;

/// The top-right 2x2 block at rotation 0, as framebuffer pixel numbers (row * 8 + column), in
/// the order docs/operating.md says they light: the corner, along the top, along the side, inside.
const CORNER: [usize; 4] = [7, 6, 15, 14];

/// The framebuffer file's 64 pixels.
fn pixels(fb: &Path) -> Vec<u16> {
    let bytes = std::fs::read(fb).unwrap();
    assert_eq!(bytes.len(), 128);
    bytes
        .chunks(2)
        .map(|p| u16::from_le_bytes([p[0], p[1]]))
        .collect()
}

/// The corner block of the framebuffer file.
fn corner(fb: &Path) -> [u16; 4] {
    let px = pixels(fb);
    CORNER.map(|i| px[i])
}

/// The built-in logo's 128 framebuffer bytes at rotation 0.
fn logo() -> [u8; 128] {
    Frame::from_png(DEFAULT_LOGO_PNG)
        .unwrap()
        .to_fb_bytes(Rotation::R0)
}

/// Every pixel but the corner's is the logo's.
fn assert_logo_outside_the_corner(fb: &Path) {
    let logo: Vec<u16> = logo()
        .chunks(2)
        .map(|p| u16::from_le_bytes([p[0], p[1]]))
        .collect();
    for (i, (got, want)) in pixels(fb).into_iter().zip(logo).enumerate() {
        if !CORNER.contains(&i) {
            assert_eq!(got, want, "pixel {i} is not the logo's");
        }
    }
}

/// A zeroed stand-in for the framebuffer device in `dir`.
fn framebuffer(dir: &Path, name: &str) -> PathBuf {
    let fb = dir.join(name);
    std::fs::write(&fb, [0u8; 128]).unwrap();
    fb
}

/// Poll the corner until `done` says so, noting each different corner seen on the way
/// (including the last); panics with them after `timeout`.
fn watch(
    fb: &Path,
    timeout: Duration,
    what: &str,
    mut done: impl FnMut(&[u16; 4]) -> bool,
) -> Vec<[u16; 4]> {
    let deadline = Instant::now() + timeout;
    let mut seen: Vec<[u16; 4]> = Vec::new();
    loop {
        let c = corner(fb);
        if seen.last() != Some(&c) {
            seen.push(c);
        }
        if done(&c) {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; corners seen: {seen:04x?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stop the agent with SIGTERM; it exits 0 and leaves the matrix dark.
fn stop_and_check_cleared(child: &mut Reaped, fb: &Path) {
    signal(&child.0, 15);
    let status = child.0.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert_eq!(std::fs::read(fb).unwrap(), vec![0u8; 128]);
}

/// The agent on the simulated board every 50 ms, storing into `db` at `uri`, showing the LED
/// on `fb`.
fn stored_agent(uri: &str, db: &str, dir: &Path, fb: &Path, extra: &[&str]) -> Reaped {
    let fb = fb.to_str().unwrap();
    let mut args = vec![
        "--sensors",
        "sim",
        "--interval",
        "50ms",
        "--database",
        db,
        "--led-device",
        fb,
    ];
    args.extend_from_slice(extra);
    quiet_agent(uri, &dir.join(format!("spool-{db}")), &args)
}

// Storing: four green. The server is killed: within a few seconds one amber pixel, lit in the
// documented order as the spool fills toward its cap, then all four red. The server comes back
// on the same port and data: four green again. Alongside, an agent without --led-status shows
// exactly the logo throughout. Both clear the matrix when stopped.
#[test]
fn the_corner_follows_a_real_database_outage() {
    let Some(mut server) = MongoServer::start_persistent() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (fb, plain_fb) = (
        framebuffer(dir.path(), "fb1"),
        framebuffer(dir.path(), "fb-plain"),
    );
    // 64 KiB: the spool fills its first three quarters in a few seconds each at 50 ms. A 1 s
    // insert window: readings waiting past it count as spooled after 3 s more.
    let mut agent = stored_agent(
        &server.uri,
        &unique_name("led"),
        dir.path(),
        &fb,
        &[
            "--led-status",
            "--spool-max-bytes",
            "65536",
            "--insert-every",
            "1s",
        ],
    );
    let mut plain = stored_agent(
        &server.uri,
        &unique_name("led_plain"),
        dir.path(),
        &plain_fb,
        &[],
    );
    watch(&fb, Duration::from_secs(30), "green", |c| *c == [GREEN; 4]);
    assert_logo_outside_the_corner(&fb);
    assert_eq!(std::fs::read(&plain_fb).unwrap(), logo());

    server.kill();
    let killed = Instant::now();
    watch(&fb, Duration::from_secs(10), "spooled", |c| c[0] == AMBER);
    // Three seconds of readings waiting past the window, not the driver's ten-second server
    // selection timeout after the window's second.
    let noticed = killed.elapsed();
    assert!(
        noticed < Duration::from_millis(9500),
        "spooled after {noticed:?}"
    );
    let filling = watch(&fb, Duration::from_secs(60), "red", |c| *c == [RED; 4]);
    let amber = [
        [AMBER, OFF, OFF, OFF],
        [AMBER, AMBER, OFF, OFF],
        [AMBER, AMBER, AMBER, OFF],
    ];
    // Only amber steps, in order, none skipped back, then red.
    let (red, steps) = filling.split_last().unwrap();
    assert_eq!(*red, [RED; 4]);
    let mut next = 0;
    for step in steps {
        let i = amber.iter().position(|a| a == step);
        assert!(
            i.is_some_and(|i| i >= next),
            "unexpected corner on the way: {filling:04x?}"
        );
        next = i.unwrap_or(next);
    }
    assert_logo_outside_the_corner(&fb);
    assert_eq!(std::fs::read(&plain_fb).unwrap(), logo());

    server.launch();
    // Delivery retries with back-off (up to a minute at most; seconds here).
    watch(&fb, Duration::from_secs(90), "green again", |c| {
        *c == [GREEN; 4]
    });
    assert_logo_outside_the_corner(&fb);
    assert_eq!(std::fs::read(&plain_fb).unwrap(), logo());

    stop_and_check_cleared(&mut agent, &fb);
    stop_and_check_cleared(&mut plain, &plain_fb);
}

// At an interval longer than the insert window plus BEHIND, a healthy agent shows green: the
// reading just taken has not waited at all. Before, it counted as a whole interval waiting, and
// the corner stayed amber as if the database were away.
#[test]
fn a_long_interval_stores_in_green() {
    let server = MongoServer::start();
    let dir = tempfile::tempdir().unwrap();
    let fb = framebuffer(dir.path(), "fb");
    let db = unique_name("led_slow");
    let mut agent = quiet_agent(
        &server.uri,
        &dir.path().join("spool"),
        &[
            "--sensors",
            "sim",
            "--interval",
            "4s",
            "--insert-every",
            "0",
            "--database",
            &db,
            "--led-device",
            fb.to_str().unwrap(),
            "--led-status",
        ],
    );
    watch(&fb, Duration::from_secs(20), "green", |c| *c == [GREEN; 4]);
    stop_and_check_cleared(&mut agent, &fb);
}

// --dry-run (SENSEHAT_LED_STATUS=true) while the clock is not synchronized: blue. A failing sensor wins over it:
// magenta, then blue again when the sensor recovers; once the clock is synchronized, green.
#[test]
fn a_failing_sensor_and_the_clock_show_in_the_corner() {
    let dir = tempfile::tempdir().unwrap();
    let fb = framebuffer(dir.path(), "fb1");
    // A directory without the marker: systemd-timesyncd runs but has not synchronized.
    let marker = dir.path().join("synchronized");
    let child = agent_command()
        .args(["--sensors", "sim", "--dry-run", "--interval", "50ms"])
        .args(["--sim-fault", "lps25h:20:40"])
        // The option as the systemd unit's environment file sets it.
        .env("SENSEHAT_LED_STATUS", "true")
        .arg("--clock-sync-file")
        .arg(&marker)
        .arg("--led-device")
        .arg(&fb)
        .env_remove("MONGODB_CONNECTION_STRING")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = Reaped(child);
    let mut seen = watch(&fb, Duration::from_secs(20), "magenta", |c| {
        *c == [MAGENTA; 4]
    });
    seen.extend(watch(&fb, Duration::from_secs(20), "blue again", |c| {
        *c == [BLUE; 4]
    }));
    std::fs::write(&marker, "").unwrap();
    seen.extend(watch(&fb, Duration::from_secs(20), "green", |c| {
        *c == [GREEN; 4]
    }));
    assert_logo_outside_the_corner(&fb);
    // The logo's own corner (dark) before the first sample, then each state once.
    seen.dedup();
    if seen.first() == Some(&[OFF; 4]) {
        seen.remove(0);
    }
    assert_eq!(
        seen,
        [[BLUE; 4], [MAGENTA; 4], [BLUE; 4], [GREEN; 4]],
        "{seen:04x?}"
    );
    stop_and_check_cleared(&mut child, &fb);
}

// A write of the matrix that fails (the device gone for a moment) is tried again while the
// state stays as it is: the corner turns magenta for a sensor that began failing while the
// device could not be written. It used to keep the old colour until the state changed again,
// here for as long as the sensor fails.
#[test]
fn a_failed_write_of_the_corner_is_tried_again() {
    let dir = tempfile::tempdir().unwrap();
    let fb = framebuffer(dir.path(), "fb");
    let log = dir.path().join("agent.log");
    let child = agent_command()
        .args([
            "--sensors",
            "sim",
            "--dry-run",
            "--interval",
            "50ms",
            "--led-status",
        ])
        // Failing from sample 60 (3 s) on.
        .args(["--sim-fault", "lps25h:60:1000000"])
        .arg("--clock-sync-file")
        .arg(dir.path().join("no-timesyncd/synchronized"))
        .arg("--led-device")
        .arg(&fb)
        .env_remove("MONGODB_CONNECTION_STRING")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut child = Reaped(child);
    watch(&fb, Duration::from_secs(20), "green", |c| *c == [GREEN; 4]);
    // The device is gone (a directory cannot be opened for writing) when the sensor fails.
    let aside = dir.path().join("fb.aside");
    std::fs::rename(&fb, &aside).unwrap();
    std::fs::create_dir(&fb).unwrap();
    poll(Duration::from_secs(20), "the failed write", &log, || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.contains("cannot write the LED matrix").then_some(())
    });
    std::fs::remove_dir(&fb).unwrap();
    std::fs::rename(&aside, &fb).unwrap();
    assert_eq!(corner(&fb), [GREEN; 4]);
    watch(&fb, Duration::from_secs(20), "magenta", |c| {
        *c == [MAGENTA; 4]
    });
    // Said just after the write the corner shows, so it may reach the log a moment later.
    poll(Duration::from_secs(10), "the line saying so", &log, || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.contains("the LED matrix is written again")
            .then_some(())
    });
    stop_and_check_cleared(&mut child, &fb);
}

/// Poll `f` every 200 ms until it gives something; panics with `what` and the agent's `log`
/// after `timeout`.
fn poll<T>(timeout: Duration, what: &str, log: &Path, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(t) = f() {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; the log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

// The spool's disk cannot be written (its segment file is /dev/full) and the database is
// down, so every report is kept in memory, up to its limit of 50,000 (at a 1 ms interval, a
// minute). `status` counts them as unsent and says they are in memory only, where it said
// "unsent reports 0"; the corner turns red before any is dropped, where it stayed at one amber
// pixel (the files hold nothing); when the limit is reached the log says what is dropped and
// what to do, where it said "spool is full (--spool-max-bytes)", and `status` and the metric
// count the losses as the disk's; a stop loses the rest, as it says.
#[test]
fn a_disk_that_cannot_be_written_shows_what_memory_holds() {
    let Some(server) = MongoServer::not_started() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let fb = framebuffer(dir.path(), "fb");
    let spool = dir.path().join("spool");
    std::fs::create_dir(&spool).unwrap();
    std::os::unix::fs::symlink("/dev/full", spool.join("segment-0000000000000001.spool")).unwrap();
    let (log, prom) = (dir.path().join("agent.log"), dir.path().join("agent.prom"));
    let child = agent_command()
        .args(["--sensors", "sim", "--interval", "1ms", "--led-status"])
        .args(["--database", &unique_name("led_memory")])
        .arg("--led-device")
        .arg(&fb)
        .arg("--spool-dir")
        .arg(&spool)
        .arg("--metrics-textfile")
        .arg(&prom)
        .env("MONGODB_CONNECTION_STRING", &server.uri)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut child = Reaped(child);
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    // status.json is rewritten every 10 s: the second one has thousands in memory.
    let s = poll(
        Duration::from_secs(60),
        "status to count reports in memory",
        &log,
        || {
            let s = status_text(&spool);
            s.contains("of them in memory, not on disk").then_some(s)
        },
    );
    // All in memory, but for those waiting to be written as a group when the agent wrote its
    // status (up to 50 ms of them).
    let unsent = common::status_figure(&s, "unsent reports").unwrap();
    let in_memory = s
        .split_once(&format!("unsent reports        {unsent} ("))
        .and_then(|(_, rest)| rest.split_once(" of them in memory"))
        .and_then(|(n, _)| n.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("{s}"));
    assert!(in_memory > 0 && unsent - in_memory <= 50, "{s}");
    assert!(s.contains("free space"), "{s}");
    assert_eq!(common::status_figure(&s, "on disk"), Some(0), "{s}");
    assert!(!s.contains("oldest unsent         none"), "{s}");

    let filling = watch(&fb, Duration::from_secs(240), "red", |c| *c == [RED; 4]);
    let memory_full = "the reports kept in memory meanwhile are at their limit";
    // Red in the last quarter of the limit: nothing dropped yet.
    assert!(!read_log().contains(memory_full), "{}", read_log());
    assert!(
        filling.contains(&[AMBER, AMBER, AMBER, OFF]),
        "{filling:04x?}"
    );
    poll(
        Duration::from_secs(240),
        "the memory limit in the log",
        &log,
        || read_log().contains(memory_full).then_some(()),
    );
    let s = poll(
        Duration::from_secs(60),
        "status to count the drops",
        &log,
        || {
            let s = status_text(&spool);
            s.contains("held in memory while the disk could not be written)")
                .then_some(s)
        },
    );
    assert!(s.contains("(0 spool full, "), "{s}");
    let dropped = poll(Duration::from_secs(30), "the metric", &log, || {
        let text = std::fs::read_to_string(&prom).unwrap_or_default();
        text.lines()
            .find_map(|l| {
                l.strip_prefix("sensehat_agent_reports_dropped_total{reason=\"disk_unwritable\"} ")
            })?
            .parse::<u64>()
            .ok()
            .filter(|&n| n > 0)
    });
    assert!(dropped > 0);

    signal(&child.0, 15);
    let status = child.0.wait().unwrap();
    let text = read_log();
    assert!(status.success(), "{text}");
    assert_eq!(text.matches(memory_full).count(), 1, "{text}");
    assert!(
        text.contains("free space on the spool's filesystem"),
        "{text}"
    );
    assert!(!text.contains("spool is full"), "{text}");
    assert!(text.contains("are lost"), "{text}");
    assert_eq!(std::fs::read(&fb).unwrap(), vec![0u8; 128]);
}
