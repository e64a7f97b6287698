//! `sensehat-dashboard render` and `check-config` against a real MongoDB wire-protocol server
//! (SecantusDB) holding generated readings.
#![cfg(feature = "dashboard")]

mod common;
mod dashboard_support;

use common::MongoServer;
use dashboard_support::{insert, iso, readings, T0_MS};

const HOUR: i64 = 3_600_000;

// render writes a PNG of the asked size that decodes and is not blank, and an SVG; check-config
// accepts a good configuration and refuses a bad connection string without showing its password.
#[tokio::test(flavor = "multi_thread")]
async fn render_and_check_config() {
    let server = MongoServer::start();
    let db = common::unique_name("dash_render");
    let n = (3 * HOUR / 7_000) as u32;
    let mut docs = readings("node-a", 0, T0_MS, 7_000, n, 0..0, 97);
    docs.extend(readings(
        "node-b",
        1,
        T0_MS,
        7_000,
        n,
        T0_MS + HOUR..T0_MS + HOUR + 1_800_000,
        0,
    ));
    insert(&server.client().await, &db, docs).await;
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str], uri: &str| {
        std::process::Command::new(dashboard_support::dashboard_bin())
            .args(["--database", &db])
            .args(args)
            .env("MONGODB_CONNECTION_STRING", uri)
            .output()
            .unwrap()
    };
    let png_path = dir.path().join("chart.png");
    let to = iso(T0_MS + 3 * HOUR);
    let out = run(
        &[
            "render",
            "--node",
            "node-b",
            "--field",
            "temperature",
            "--window",
            "4h",
            "--to",
            &to,
            "--width",
            "640",
            "--height",
            "320",
            "--out",
            png_path.to_str().unwrap(),
        ],
        &server.uri,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(&png_path).unwrap(),
    ));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height), (640, 320));
    let pixels = &buf[..info.buffer_size()];
    let blue = pixels
        .chunks(3)
        .filter(|p| p[2] > 150 && p[0] < 100)
        .count();
    assert!(blue > 200, "the line is missing: {blue} blue pixels");
    let svg_path = dir.path().join("chart.svg");
    let out = run(
        &[
            "render",
            "--node",
            "node-a",
            "--window",
            "7d",
            "--to",
            &to,
            "--out",
            svg_path.to_str().unwrap(),
        ],
        &server.uri,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    assert!(svg.contains("<polyline"));
    // The times are UTC, and the chart says so.
    let title = format!("{} UTC", &to[..16]);
    assert!(svg.contains(&title), "no {title:?} in the SVG");
    let out = run(
        &[
            "render",
            "--node",
            "nobody",
            "--out",
            svg_path.to_str().unwrap(),
        ],
        &server.uri,
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nobody"));

    let out = run(&["check-config"], &server.uri);
    assert!(out.status.success());
    let found = String::from_utf8_lossy(&out.stdout);
    assert!(found.contains("read: "), "{found}");
    // What it found, to a standard output that cannot be written: an error (exit 1), not a
    // panic (every program's check-config answers through the same function).
    let full = std::process::Command::new(dashboard_support::dashboard_bin())
        .arg("check-config")
        .env("MONGODB_CONNECTION_STRING", &server.uri)
        .stdout(std::fs::File::create("/dev/full").unwrap())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&full.stderr);
    assert_eq!(full.status.code(), Some(1), "{said}");
    assert!(said.contains("cannot write to standard output"), "{said}");
    assert!(!said.contains("panicked"), "{said}");
    let out = run(&["check-config"], "mongodb://pi:s3cret?x@db.example.net/");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("s3cret") && err.contains("connection string"),
        "{err}"
    );
}

// check-config refuses, with exit 2 and the reason, options the service cannot run with: a
// query timeout of 0 (every request would be answered 503), one longer than maxTimeMS holds,
// a bare port as --metrics-listen (which used to pass, and then failed the service at start),
// and an --allowed-host that is no host name; the names allowed, from the environment too, are
// said.
#[test]
fn check_config_refuses_what_cannot_run() {
    let check = |args: &[&str]| {
        let out = std::process::Command::new(dashboard_support::dashboard_bin())
            .args(args)
            .arg("check-config")
            .env("MONGODB_CONNECTION_STRING", "mongodb://db.example.net/")
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.code(), said)
    };
    for (args, reason) in [
        (["--query-timeout", "0"], "less than 1ms"),
        (["--query-timeout", "0.5ms"], "less than 1ms"),
        (["--query-timeout", "25d"], "maxTimeMS"),
        (["--metrics-listen", "9467"], "HOST:PORT"),
        (["--metrics-listen", ":9467"], "HOST:PORT"),
        (["--allowed-host", "dash.example/x"], "NAME:PORT"),
    ] {
        let (code, said) = check(&args);
        assert_eq!(code, Some(2), "{args:?}: {said}");
        assert!(
            said.contains(args[0]) && said.contains(reason),
            "{args:?}: {said}"
        );
    }
    for args in [
        [
            "--query-timeout",
            "24d",
            "--metrics-listen",
            "127.0.0.1:9467",
        ],
        [
            "--query-timeout",
            "1ms",
            "--metrics-listen",
            "localhost:9467",
        ],
        ["--query-timeout", "10s", "--metrics-listen", "[::1]:9467"],
    ] {
        let (code, said) = check(&args);
        assert_eq!(code, Some(0), "{args:?}: {said}");
    }
    let out = std::process::Command::new(dashboard_support::dashboard_bin())
        .args(["--allowed-host", "dash.example", "check-config"])
        .env("MONGODB_CONNECTION_STRING", "mongodb://db.example.net/")
        .env("DASHBOARD_ALLOWED_HOSTS", "pi.lan:8080,dash.example")
        .output()
        .unwrap();
    let found = String::from_utf8_lossy(&out.stdout);
    assert!(
        found.contains("answers to: localhost, IP addresses, dash.example\n"),
        "the command line wins over the environment: {found}"
    );
    let out = std::process::Command::new(dashboard_support::dashboard_bin())
        .arg("check-config")
        .env("MONGODB_CONNECTION_STRING", "mongodb://db.example.net/")
        .env("DASHBOARD_ALLOWED_HOSTS", "pi.lan:8080,dash.example")
        .output()
        .unwrap();
    let found = String::from_utf8_lossy(&out.stdout);
    assert!(
        found.contains("answers to: localhost, IP addresses, pi.lan:8080, dash.example\n"),
        "{found}"
    );
}
