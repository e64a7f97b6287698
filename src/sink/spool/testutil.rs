//! Helpers shared by the spool's unit tests.

use std::fs::{self, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use super::dir::segment_name;
use super::{Spool, SpoolOptions};

/// Options syncing every second, the files capped at `max` bytes.
pub(super) fn opts(max: u64) -> SpoolOptions {
    SpoolOptions {
        max_bytes: max,
        sync_interval: Duration::from_secs(1),
    }
}

/// Shaped like a BSON document: its first four bytes are its length.
pub(super) fn payload(i: u32) -> Vec<u8> {
    let mut p = 100u32.to_le_bytes().to_vec();
    p.extend_from_slice(format!("report-{i:06}-").as_bytes());
    p.resize(100, b'x');
    p
}

/// Read and acknowledge everything, in batches of seven.
pub(super) fn drain(s: &mut Spool) -> Vec<Vec<u8>> {
    let mut all = Vec::new();
    loop {
        let b = s.next_batch(7).unwrap();
        if b.records.is_empty() {
            return all;
        }
        s.ack(&b);
        all.extend(b.records);
    }
}

/// Overwrite `bytes` at `at` in segment `id` of `dir`.
pub(super) fn damage(dir: &Path, id: u64, at: u64, bytes: &[u8]) {
    let mut f = OpenOptions::new()
        .write(true)
        .open(dir.join(segment_name(id)))
        .unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(bytes).unwrap();
}

/// The size of the last segment's file.
pub(super) fn file_len(s: &Spool) -> u64 {
    fs::metadata(s.segments.path(s.segments.end().segment))
        .unwrap()
        .len()
}
