//! Spool benchmark (harness = false; run by scripts/bench-spool.sh, which starts the server).
//!
//! `fill DIR N [SYNC_MS]`: append N simulated reports to a spool in DIR and print the bytes the
//! process wrote to storage (/proc/self/io write_bytes, so fsync and filesystem effects count)
//! per report, and the append rate.
//! `appends DIR N`: the CPU per report of appends written one at a time against appends grouped
//! as at `--interval 1ms`.
//! `memory DIR`: the time the append that finds the disk writable again takes to move the
//! reports kept in memory to it: 50,000 reports held (the disk was full, the database down),
//! the oldest 10,000 of them handed out for an insert.
//! `baseline DIR URI DB`: read the same reports and insert them with one plain unordered
//! `insert_many`, printing the time taken (the yardstick for the agent's drain).

use std::path::Path;
use std::time::{Duration, Instant};

use mongodb::bson::RawDocumentBuf;
use sensehat_monitor::report::{Acceleration, MovingRule, Reading, Report};
use sensehat_monitor::sink::spool::{self, Spool, SpoolOptions};

fn io_write_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("write_bytes: ")
                    .and_then(|v| v.trim().parse().ok())
            })
        })
        .unwrap_or(0)
}

/// The `i`th of a series of reports taken `interval_ms` apart.
fn report(i: u64, interval_ms: i64) -> Report {
    Report::new(
        "bench-pi",
        Reading {
            humidity_rh: 40.0 + (i % 100) as f64 / 10.0,
            temperature_celsius: 21.5,
            pressure_hpa: 1013.25,
            acceleration: Acceleration {
                x_g: 0.01,
                y_g: -0.02,
                z_g: 0.99,
            },
        },
        1_764_000_000_000 + i as i64 * interval_ms,
        MovingRule::Axis,
    )
}

fn fill(dir: &Path, n: u64, sync_ms: u64) {
    let (mut sp, _) = Spool::open(
        dir,
        SpoolOptions {
            max_bytes: 1 << 34,
            sync_interval: Duration::from_millis(sync_ms),
        },
    )
    .expect("open spool");
    let before = io_write_bytes();
    let start = Instant::now();
    let mut logical = 0u64;
    for i in 0..n {
        let r = report(i, 500);
        let bytes = mongodb::bson::to_vec(&r.to_document()).expect("serialise");
        logical += bytes.len() as u64 + 8;
        let now = std::time::Instant::now();
        sp.append(&bytes, now);
        sp.maintain(now).expect("maintain");
    }
    sp.close().expect("close");
    let elapsed = start.elapsed();
    // Count what reached the block layer, including the page cache writeback of this run.
    let _ = std::process::Command::new("sync").status();
    let written = io_write_bytes() - before;
    println!(
        "fill: {n} reports, sync {sync_ms} ms: {:.0} appends/s, {:.1} bytes/report framed, {:.1} bytes/report written to storage (write_bytes)",
        n as f64 / elapsed.as_secs_f64(),
        logical as f64 / n as f64,
        written as f64 / n as f64
    );
}

/// The CPU cost of an append, written at once (`append`, one `write(2)` per report) and
/// grouped as at `--interval 1ms` (`append_encoded`, the next report due 1 ms later, so one
/// `write(2)` per WRITE_GROUP of reports), in the same run: process CPU time per report, and the ratio.
fn appends(dir: &Path, n: u64) {
    let cpu = || {
        std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| {
                let f: Vec<u64> = s
                    .rsplit(')')
                    .next()?
                    .split_whitespace()
                    .skip(11)
                    .take(2)
                    .filter_map(|v| v.parse().ok())
                    .collect();
                Some(f.iter().sum::<u64>())
            })
            .unwrap_or(0)
    };
    let mut per_report = Vec::new();
    for grouped in [false, true] {
        let (mut sp, _) = Spool::open(
            &dir.join(if grouped { "grouped" } else { "each" }),
            SpoolOptions {
                max_bytes: 1 << 34,
                sync_interval: Duration::from_secs(3600),
            },
        )
        .expect("open spool");
        let t0 = Instant::now();
        let (ticks, start) = (cpu(), Instant::now());
        for i in 0..n {
            let r = report(i, 1);
            let now = t0 + Duration::from_millis(i);
            if grouped {
                sp.append_encoded(|b| r.write_bson(b), now, Duration::from_millis(1));
            } else {
                sp.append(&r.to_bson_bytes(), now);
            }
        }
        sp.close().expect("close");
        let wall = start.elapsed();
        // clock ticks (USER_HZ, 100 a second) of user+sys CPU.
        let us = (cpu() - ticks) as f64 * 10_000.0 / n as f64;
        per_report.push(us);
        println!(
            "appends ({}): {n} reports, {us:.2} us CPU/report, {:.2} us wall/report",
            if grouped {
                "grouped, 1 ms apart"
            } else {
                "one write(2) each"
            },
            wall.as_secs_f64() * 1e6 / n as f64
        );
    }
    println!(
        "appends: grouped / one write each = {:.2}",
        per_report[1] / per_report[0]
    );
}

/// The append that moves the memory queue to disk once the disk has room again: `MEMORY_MAX`
/// reports held while the segment file was /dev/full, a full batch of them in flight.
fn memory(dir: &Path) {
    std::fs::create_dir_all(dir).expect("bench dir");
    let segment = dir.join("segment-0000000000000001.spool");
    std::os::unix::fs::symlink("/dev/full", &segment).expect("symlink to /dev/full");
    let (mut sp, _) = Spool::open(
        dir,
        SpoolOptions {
            max_bytes: 1 << 34,
            sync_interval: Duration::from_secs(3600),
        },
    )
    .expect("open spool");
    let held = spool::MEMORY_MAX as u64;
    let in_flight = sensehat_monitor::agent::BATCH_MAX;
    let payloads: Vec<Vec<u8>> = (0..held).map(|i| report(i, 500).to_bson_bytes()).collect();
    for chunk in payloads.chunks(1000) {
        let out = sp.append_all(chunk, Instant::now());
        assert!(out.disk_error.is_some(), "the disk took them");
    }
    assert_eq!(sp.in_memory(), held);
    let batch = sp.next_batch(in_flight).expect("batch");
    assert_eq!(batch.records.len(), in_flight);
    std::fs::remove_file(&segment).expect("free the disk");
    let next = report(held, 500).to_bson_bytes();
    let start = Instant::now();
    let out = sp.append(&next, Instant::now());
    let took = start.elapsed();
    assert_eq!(out.disk_error, None);
    assert_eq!(out.recovered_from_memory, held - in_flight as u64);
    println!(
        "memory: {held} reports held, {in_flight} in flight: the append that moved {} to disk took {:.1} ms",
        out.recovered_from_memory,
        took.as_secs_f64() * 1e3
    );
}

async fn baseline(dir: &Path, uri: &str, db: &str) {
    let mut docs = Vec::new();
    let unreadable = spool::for_each_pending(dir, |p| {
        docs.push(RawDocumentBuf::from_bytes(p.to_vec()).expect("bson"))
    })
    .expect("read spool");
    assert!(unreadable.is_empty(), "{unreadable:?}");
    let client = mongodb::Client::with_uri_str(uri).await.expect("client");
    let coll = client.database(db).collection::<RawDocumentBuf>("reports");
    let start = Instant::now();
    coll.insert_many(&docs)
        .ordered(false)
        .await
        .expect("insert_many");
    let secs = start.elapsed().as_secs_f64();
    println!(
        "baseline: plain insert_many of {} reports: {secs:.3} s, {:.0} docs/s",
        docs.len(),
        docs.len() as f64 / secs
    );
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["fill", dir, n] => fill(Path::new(dir), n.parse().expect("N"), 1000),
        ["fill", dir, n, sync] => fill(
            Path::new(dir),
            n.parse().expect("N"),
            sync.parse().expect("SYNC_MS"),
        ),
        ["appends", dir, n] => appends(Path::new(dir), n.parse().expect("N")),
        ["memory", dir] => memory(Path::new(dir)),
        ["baseline", dir, uri, db] => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(baseline(Path::new(dir), uri, db)),
        _ => eprintln!(
            "usage: spool fill DIR N [SYNC_MS] | appends DIR N | memory DIR | baseline DIR URI DB (see scripts/bench-spool.sh)"
        ),
    }
}
