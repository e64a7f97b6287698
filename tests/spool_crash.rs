//! The spool under crashes, by property: random sequences of appends, syncs, deliveries,
//! failed deliveries, clean restarts and crashes drive the real spool on real files. A crash is
//! either a kill (the process dies; what was written is in the page cache and survives) or a
//! power cut (what was not synced may be lost: every file is cut at a random byte past what the
//! last completed sync covered, a random range past it may read back as zeros, the way an SD
//! card loses a page, and the unsynced delivered position may be lost).
//!
//! The property, checked after every sequence and a final drain:
//! - every report appended before the last completed sync (or clean close) is delivered, and so
//!   is every later one unless a power cut came after it;
//! - reports are delivered in the order they were appended, and within one run of the spool
//!   (between two opens) none is handed out twice once acknowledged; across a crash one may be
//!   sent again, which the database's duplicate-key rule on `_id` turns into a no-op;
//! - nothing is delivered that was never appended, byte for byte;
//! - the spool always opens.
//!
//! `PROPTEST_CASES` sets the number of sequences (CI runs the default below; scripts/fuzz.sh
//! runs more).

use std::collections::{BTreeMap, HashSet};
use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use sensehat_monitor::sink::spool::{Spool, SpoolOptions};

/// Cases when `PROPTEST_CASES` is not set.
const DEFAULT_CASES: u32 = 2000;

#[derive(Debug, Clone)]
enum Crash {
    /// SIGKILL: no destructor runs, the page cache keeps everything written.
    Kill,
    /// Power cut: per file, how far past the synced length it is cut (a fraction of the unsynced
    /// part), an optional zeroed range in what is left unsynced, and whether the delivered
    /// position file is lost.
    Power {
        keep: Vec<f64>,
        zero: Option<(f64, f64)>,
        lose_cursor: bool,
    },
}

#[derive(Debug, Clone)]
enum Op {
    /// Append these payload sizes, one `append` each, or all in one `append_all`.
    Append {
        sizes: Vec<usize>,
        together: bool,
    },
    /// `flush`: write out and sync everything appended.
    Sync,
    /// Hand out at most this many and acknowledge them.
    Deliver(usize),
    /// Hand out at most this many, then the insert fails: `rewind`.
    FailDelivery(usize),
    /// Time passes and `maintain` runs (may write the delivered position).
    Tick(u64),
    /// `close` and open again.
    Restart,
    Crash(Crash),
}

fn op() -> impl Strategy<Value = Op> {
    let crash = prop_oneof![
        Just(Crash::Kill),
        (
            proptest::collection::vec(0.0f64..=1.0, 1..6),
            proptest::option::of((0.0f64..1.0, 0.0f64..0.5)),
            any::<bool>()
        )
            .prop_map(|(keep, zero, lose_cursor)| Crash::Power {
                keep,
                zero,
                lose_cursor
            }),
    ];
    prop_oneof![
        6 => (proptest::collection::vec(40usize..700, 1..6), any::<bool>())
            .prop_map(|(sizes, together)| Op::Append { sizes, together }),
        2 => Just(Op::Sync),
        4 => (1usize..12).prop_map(Op::Deliver),
        1 => (1usize..12).prop_map(Op::FailDelivery),
        2 => (0u64..7000).prop_map(Op::Tick),
        1 => Just(Op::Restart),
        2 => crash.prop_map(Op::Crash),
    ]
}

/// A report's bytes: its sequence number, then a filler that depends on it, so a payload read
/// back identifies itself and proves it whole.
fn payload(seq: u64, size: usize) -> Vec<u8> {
    let mut p = seq.to_le_bytes().to_vec();
    p.extend((0..size).map(|i| (seq as usize).wrapping_mul(31).wrapping_add(i) as u8 | 1));
    p
}

/// Small caps so sequences cross segment files; large enough that nothing is dropped.
fn options() -> SpoolOptions {
    SpoolOptions {
        max_bytes: 256 * 1024,
        // Only explicit syncs: the model knows exactly what a completed sync covered.
        sync_interval: Duration::from_secs(24 * 3600),
    }
}

/// Lengths of the spool's files (segments and the delivered position).
fn file_lengths(dir: &Path) -> BTreeMap<String, u64> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            m.is_file()
                .then(|| (e.file_name().to_string_lossy().into_owned(), m.len()))
        })
        .collect()
}

struct Model {
    /// Every payload appended, by sequence number.
    appended: Vec<Vec<u8>>,
    /// Reports that must be delivered in the end: covered by a completed sync.
    must: HashSet<u64>,
    /// Appended since the last sync: delivered in the end unless a power cut comes first.
    unsynced: Vec<u64>,
    /// File lengths covered by the last completed sync.
    synced: BTreeMap<String, u64>,
    /// Sequence numbers acknowledged, ever.
    delivered: HashSet<u64>,
    /// Acknowledged in this run of the spool.
    delivered_this_run: HashSet<u64>,
    /// The highest sequence number delivered for the first time so far.
    last_first_delivery: Option<u64>,
}

impl Model {
    /// A sync completed: everything appended so far is durable.
    fn synced_now(&mut self, dir: &Path) {
        self.must.extend(self.unsynced.drain(..));
        self.synced = file_lengths(dir);
    }

    fn check_batch(&mut self, records: &[Vec<u8>], acked: bool) -> Result<(), TestCaseError> {
        for r in records {
            prop_assert!(r.len() >= 8, "a record of {} bytes", r.len());
            let seq = u64::from_le_bytes(r[..8].try_into().unwrap());
            let appended = self.appended.get(seq as usize);
            prop_assert!(
                appended == Some(r),
                "delivered {seq} that was never appended as read"
            );
            if !acked {
                continue;
            }
            prop_assert!(
                self.delivered_this_run.insert(seq),
                "{seq} delivered twice in one run"
            );
            if self.delivered.insert(seq) {
                if let Some(last) = self.last_first_delivery {
                    prop_assert!(seq > last, "{seq} first delivered after {last}");
                }
                self.last_first_delivery = Some(seq);
            }
        }
        Ok(())
    }
}

/// Cut and damage what was not synced, as a power cut may.
fn power_cut(dir: &Path, synced: &BTreeMap<String, u64>, keep: &[f64], zero: Option<(f64, f64)>) {
    for (i, (name, len)) in file_lengths(dir).into_iter().enumerate() {
        if name == "acked" {
            continue;
        }
        let durable = synced.get(&name).copied().unwrap_or(0).min(len);
        let unsynced = len - durable;
        let cut = durable + (unsynced as f64 * keep[i % keep.len()]) as u64;
        let mut f = OpenOptions::new()
            .write(true)
            .open(dir.join(&name))
            .unwrap();
        f.set_len(cut).unwrap();
        if let Some((start, width)) = zero {
            let from = durable + ((cut - durable) as f64 * start) as u64;
            let n = (((cut - from) as f64) * width) as usize;
            if n > 0 {
                f.seek(SeekFrom::Start(from)).unwrap();
                f.write_all(&vec![0; n]).unwrap();
            }
        }
    }
}

fn run(ops: &[Op]) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let mut now = Instant::now();
    let mut model = Model {
        appended: Vec::new(),
        must: HashSet::new(),
        unsynced: Vec::new(),
        synced: BTreeMap::new(),
        delivered: HashSet::new(),
        delivered_this_run: HashSet::new(),
        last_first_delivery: None,
    };
    let open = |dir: &Path| Spool::open(dir, options()).map(|(s, _)| s);
    let mut spool = open(dir).map_err(|e| TestCaseError::fail(format!("open: {e}")))?;
    for op in ops {
        match op {
            Op::Append { sizes, together } => {
                let first = model.appended.len() as u64;
                let ps: Vec<Vec<u8>> = (0..sizes.len() as u64)
                    .map(|i| payload(first + i, sizes[i as usize]))
                    .collect();
                let out = if *together {
                    spool.append_all(&ps, now)
                } else {
                    let mut last = Default::default();
                    for p in &ps {
                        last = spool.append(p, now);
                        prop_assert_eq!(last.dropped, 0);
                    }
                    last
                };
                prop_assert_eq!(out.dropped, 0, "the cap dropped reports");
                prop_assert!(out.disk_error.is_none(), "{:?}", out.disk_error);
                model.unsynced.extend(first..first + ps.len() as u64);
                model.appended.extend(ps);
            }
            Op::Sync => {
                spool.flush().unwrap();
                model.synced_now(dir);
            }
            Op::Deliver(n) | Op::FailDelivery(n) => {
                let acked = matches!(op, Op::Deliver(_));
                let batch = spool.next_batch(*n).unwrap();
                model.check_batch(&batch.records, acked)?;
                if acked {
                    spool.ack(&batch);
                } else {
                    spool.rewind();
                }
            }
            Op::Tick(ms) => {
                now += Duration::from_millis(*ms);
                let _ = spool.maintain(now);
            }
            Op::Restart => {
                spool.close().unwrap();
                drop(spool);
                model.synced_now(dir);
                spool = open(dir).map_err(|e| TestCaseError::fail(format!("reopen: {e}")))?;
                model.delivered_this_run.clear();
            }
            Op::Crash(crash) => {
                spool.kill();
                match crash {
                    // What was written survives, still unsynced.
                    Crash::Kill => {}
                    Crash::Power {
                        keep,
                        zero,
                        lose_cursor,
                    } => {
                        power_cut(dir, &model.synced, keep, *zero);
                        model.unsynced.clear();
                        if *lose_cursor {
                            let _ = std::fs::remove_file(dir.join("acked"));
                        }
                    }
                }
                spool = open(dir)
                    .map_err(|e| TestCaseError::fail(format!("open after {crash:?}: {e}")))?;
                model.delivered_this_run.clear();
                // Reports lost in the cut are never appended again: later ones keep their
                // numbers, so order is still checked across the gap.
            }
        }
    }
    // Drain: everything still in the spool, acknowledged.
    loop {
        let batch = spool.next_batch(64).unwrap();
        if batch.records.is_empty() {
            break;
        }
        model.check_batch(&batch.records, true)?;
        spool.ack(&batch);
    }
    let mut missing: Vec<u64> = model
        .must
        .iter()
        .chain(&model.unsynced)
        .filter(|s| !model.delivered.contains(s))
        .copied()
        .collect();
    missing.sort_unstable();
    prop_assert!(
        missing.is_empty(),
        "reports that should have survived were never delivered: {missing:?}"
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(DEFAULT_CASES),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    // Every report appended before the last completed sync survives any crash, is delivered in
    // order, and nothing that was never appended comes out.
    #[test]
    fn crashes_lose_nothing_synced(ops in proptest::collection::vec(op(), 1..60)) {
        run(&ops)?;
    }
}

// Found by the property above: a power cut keeps the delivered position (written after the
// report it covers was delivered) but not the report's bytes, so the position points past the
// end of its segment. The spool reused that empty segment for the next report and started
// reading at the stale position, past the new report, which was never delivered.
#[test]
fn a_position_past_a_cut_segment_does_not_skip_new_reports() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let (mut spool, _) = Spool::open(dir.path(), options()).unwrap();
    spool.append(&payload(0, 40), t0);
    let b = spool.next_batch(10).unwrap();
    assert_eq!(b.records.len(), 1);
    spool.ack(&b);
    spool.maintain(t0 + Duration::from_secs(10)).unwrap();
    spool.kill();
    power_cut(dir.path(), &BTreeMap::new(), &[0.0], None);

    let (mut spool, _) = Spool::open(dir.path(), options()).unwrap();
    spool.append(&payload(1, 40), t0);
    let b = spool.next_batch(10).unwrap();
    assert_eq!(b.records, vec![payload(1, 40)]);
}
