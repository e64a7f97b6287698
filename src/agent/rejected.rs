//! `rejected.jsonl` in the spool directory: reports the database refused, kept (with the
//! reason) so that a person can see them and the spool can let go of them.

use std::io::Write;

use crate::sink::spool::Batch;

/// Largest `rejected.jsonl` before it is moved to `rejected.jsonl.1` (replacing the one
/// before): the two keep the newest 20 MiB of refused reports whatever the database refuses
/// for however long (a validator refusing every report at 2 Hz writes about 50 MB a day).
pub const REJECTED_MAX: u64 = 10 * 1024 * 1024;

/// Keep refused reports as relaxed Extended JSON lines next to the spool, with the reason,
/// synced: the spool lets go of them once this returns Ok.
pub(super) fn save(
    dir: &std::path::Path,
    batch: &Batch,
    rejected: &[(usize, String)],
) -> std::io::Result<()> {
    let path = dir.join("rejected.jsonl");
    let mut lines = String::new();
    for (i, reason) in rejected {
        let doc = batch
            .records
            .get(*i)
            .and_then(|b| mongodb::bson::Document::from_reader(&mut b.as_slice()).ok());
        let line = serde_json::json!({
            "reason": reason,
            "report": doc.map(|d| crate::report::relaxed_json(&d)),
        });
        lines.push_str(&line.to_string());
        lines.push('\n');
    }
    if std::fs::metadata(&path).is_ok_and(|m| m.len() >= REJECTED_MAX) {
        std::fs::rename(&path, dir.join("rejected.jsonl.1"))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(&path)?;
    // A line cut short (a write that failed part-way on a full card, a power cut) is ended
    // first, so that it costs only itself, not the line written after it.
    // A last byte that cannot be read (a bad block) costs at most an empty line.
    if !ends_a_line(&f).unwrap_or(false) {
        lines.insert(0, '\n');
    }
    f.write_all(lines.as_bytes())?;
    f.sync_data()
}

/// Whether `f` is empty or ends with a newline.
fn ends_a_line(f: &std::fs::File) -> std::io::Result<bool> {
    use std::os::unix::fs::FileExt;
    let len = f.metadata()?.len();
    if len == 0 {
        return Ok(true);
    }
    let mut last = [0u8];
    f.read_exact_at(&mut last, len - 1)?;
    Ok(last[0] == b'\n')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::spool::BatchSource;

    // Past REJECTED_MAX the file moves to rejected.jsonl.1 (replacing the one before), so the
    // two stay under twice that whatever the database refuses.
    #[test]
    fn rejected_reports_file_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let batch = Batch {
            source: BatchSource::Memory,
            records: vec![mongodb::bson::rawdoc! { "n": 1 }.into_bytes()],
            problems: Vec::new(),
        };
        let refused = [(0, "E11000".to_owned())];
        let path = dir.path().join("rejected.jsonl");
        let old = dir.path().join("rejected.jsonl.1");
        std::fs::write(&old, "older").unwrap();
        save(dir.path(), &batch, &refused).unwrap();
        assert_eq!(std::fs::read_to_string(&old).unwrap(), "older");
        std::fs::write(&path, vec![b'x'; REJECTED_MAX as usize]).unwrap();
        save(dir.path(), &batch, &refused).unwrap();
        assert_eq!(std::fs::metadata(&old).unwrap().len(), REJECTED_MAX);
        let now = std::fs::read_to_string(&path).unwrap();
        assert_eq!(now.lines().count(), 1);
        assert!(now.contains("E11000") && now.contains("\"n\":1"), "{now}");
    }

    // A line cut short by an earlier save costs only itself: the next report's line is whole.
    #[test]
    fn a_line_cut_short_does_not_spoil_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let batch = Batch {
            source: BatchSource::Memory,
            records: vec![mongodb::bson::rawdoc! { "n": 2 }.into_bytes()],
            problems: Vec::new(),
        };
        let path = dir.path().join("rejected.jsonl");
        std::fs::write(&path, "{\"reason\":\"E11000\",\"rep").unwrap();
        save(dir.path(), &batch, &[(0, "E121".to_owned())]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
        assert_eq!(last["reason"], "E121");
        assert_eq!(last["report"]["n"], 2);
    }
}
