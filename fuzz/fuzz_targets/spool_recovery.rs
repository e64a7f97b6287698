//! Spool segment recovery from arbitrary bytes. The input is a list of reports, written as a
//! segment file in the spool's on-disk format, then damaged: from a position on, bytes are
//! replaced or the file is cut. Opening the spool and reading it out must never panic; it must
//! return every intact report before the damage, in order; and it must return nothing that is
//! not a whole, checksummed frame of the damaged file (what the spool cannot tell from a report).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sensehat_monitor::sink::spool::{Spool, SpoolOptions};

/// Frames as the spool writes them: length and CRC-32, little-endian, then the payload.
fn frame(out: &mut Vec<u8>, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// Every payload of a checksummed frame anywhere in `file`.
fn frames_anywhere(file: &[u8]) -> Vec<&[u8]> {
    let mut found = Vec::new();
    for at in 0..file.len().saturating_sub(7) {
        let len = u32::from_le_bytes(file[at..at + 4].try_into().unwrap()) as usize;
        let crc = u32::from_le_bytes(file[at + 4..at + 8].try_into().unwrap());
        if let Some(p) = file.get(at + 8..at + 8 + len) {
            if crc32fast::hash(p) == crc {
                found.push(p);
            }
        }
    }
    found
}

fuzz_target!(|data: &[u8]| {
    // Layout: [count][sizes...][damage offset u16][cut?][payload bytes...][damage bytes...]
    if data.len() < 4 {
        return;
    }
    let count = (data[0] % 24) as usize + 1;
    let (sizes, rest) = data[1..].split_at(count.min(data.len() - 1));
    if rest.len() < 3 {
        return;
    }
    let damage_at = u16::from_le_bytes([rest[0], rest[1]]) as usize;
    let cut = rest[2] & 1 == 1;
    let mut bytes = &rest[3..];
    let mut written = Vec::new();
    let mut file = Vec::new();
    let mut ends = Vec::new();
    for (i, s) in sizes.iter().enumerate() {
        let n = (*s as usize).min(bytes.len());
        let mut p = vec![i as u8];
        p.extend_from_slice(&bytes[..n]);
        bytes = &bytes[n..];
        frame(&mut file, &p);
        ends.push(file.len());
        written.push(p);
    }
    let damage_at = damage_at.min(file.len());
    if cut {
        file.truncate(damage_at);
    } else {
        for (i, b) in bytes.iter().enumerate() {
            match file.get_mut(damage_at + i) {
                Some(x) => *x = *b,
                None => file.push(*b),
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("segment-0000000000000001.spool"), &file).unwrap();
    let options = SpoolOptions {
        max_bytes: 64 * 1024 * 1024,
        sync_interval: std::time::Duration::from_secs(3600),
    };
    let (mut spool, _) = Spool::open(dir.path(), options).expect("the spool always opens");
    let mut out = Vec::new();
    loop {
        let batch = spool.next_batch(1000).expect("reading a damaged segment never fails");
        if batch.records.is_empty() {
            break;
        }
        spool.ack(&batch);
        out.extend(batch.records);
    }
    let intact = ends.iter().take_while(|e| **e <= damage_at).count();
    assert!(out.len() >= intact, "{} of {intact} intact reports", out.len());
    assert_eq!(&out[..intact], &written[..intact], "intact reports in order");
    let anywhere = frames_anywhere(&file);
    for r in &out[intact..] {
        assert!(
            anywhere.contains(&r.as_slice()),
            "a report that is no frame of the file"
        );
    }
});
