//! Where each shard was delivered up to, kept in a file (`--checkpoint-file`) so a restart
//! carries on after the last record handled instead of at LATEST.
//!
//! A shard's position moves only once a batch holding its records has ended: delivered, given
//! up into the error output, or refused with 413 (all final, as in Firehose). Records read but
//! still buffered or being retried are not covered, so a crash or kill re-reads them: delivery
//! is at least once, as Firehose's is, and the endpoint's upsert by `_id` absorbs a repeat.
//!
//! The file is JSON, replaced atomically (written beside, synced, renamed):
//!
//! ```json
//! {"stream": "realm", "since_ms": 1764130000000, "shards": {"shardId-000000000000": "4959..."}}
//! ```
//!
//! `since_ms` is when the file was made by a run that started at LATEST (null with
//! `--from-start`): a shard with no position yet is read from that moment (AT_TIMESTAMP), or
//! from its oldest record when it is null, so nothing put while firehose-local was stopped is
//! skipped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::reader::Arrived;

/// The positions, and the file they are kept in.
#[derive(Debug)]
pub struct Checkpoint {
    path: PathBuf,
    state: State,
    /// The file was there at start: this run resumes an earlier one.
    resumed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct State {
    stream: String,
    since_ms: Option<i64>,
    /// Shard id to the sequence number of the last record handled.
    shards: BTreeMap<String, String>,
}

impl Checkpoint {
    /// Read the checkpoint of `stream` from `path`, or start one (and write it at once, so a
    /// crash before the first delivery still resumes from now) when there is no file.
    /// `now_ms` is `None` when reading from the oldest record (`--from-start`).
    pub fn open(path: &Path, stream: &str, now_ms: Option<i64>) -> Result<Self, String> {
        match std::fs::read(path) {
            Ok(bytes) => {
                let state: State = serde_json::from_slice(&bytes).map_err(|e| {
                    format!(
                        "{} is not a firehose-local checkpoint ({e}); move it away to start over",
                        path.display()
                    )
                })?;
                if state.stream != stream {
                    return Err(format!(
                        "{} holds positions in stream {:?}, not {stream:?}; give each stream its own --checkpoint-file",
                        path.display(),
                        state.stream
                    ));
                }
                Ok(Checkpoint {
                    path: path.to_owned(),
                    state,
                    resumed: true,
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let c = Checkpoint {
                    path: path.to_owned(),
                    state: State {
                        stream: stream.to_owned(),
                        since_ms: now_ms,
                        shards: BTreeMap::new(),
                    },
                    resumed: false,
                };
                c.save()
                    .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
                Ok(c)
            }
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    /// Whether the file was there at start.
    pub fn resumed(&self) -> bool {
        self.resumed
    }

    /// The run that made the file started at LATEST at this time (ms since the epoch).
    pub fn since_ms(&self) -> Option<i64> {
        self.state.since_ms
    }

    /// Every shard's position.
    pub fn positions(&self) -> &BTreeMap<String, String> {
        &self.state.shards
    }

    /// Move each shard with records in `batch` to its last one (a shard's records arrive in
    /// order). Returns whether anything moved.
    pub fn advance(&mut self, batch: &[Arrived]) -> bool {
        let mut moved = false;
        for a in batch {
            let slot = self.state.shards.entry(a.shard.to_string()).or_default();
            if *slot != a.sequence {
                slot.clone_from(&a.sequence);
                moved = true;
            }
        }
        moved
    }

    /// Replace the file (see [`super::write_durably`]).
    pub fn save(&self) -> std::io::Result<()> {
        let mut text = serde_json::to_vec(&self.state).map_err(std::io::Error::other)?;
        text.push(b'\n');
        super::write_durably(&self.path, &text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn arrived(shard: &str, seq: &str) -> Arrived {
        Arrived {
            data: b"{}".to_vec(),
            arrival_ms: 0,
            shard: Arc::from(shard),
            sequence: seq.to_owned(),
        }
    }

    #[test]
    fn a_new_file_is_written_at_once_and_positions_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cp.json");
        let mut c = Checkpoint::open(&path, "realm", Some(1_700_000_000_000)).unwrap();
        assert!(!c.resumed());
        assert!(path.exists(), "written before any delivery");
        assert!(c.advance(&[
            arrived("shard-0", "10"),
            arrived("shard-1", "20"),
            arrived("shard-0", "11"),
        ]));
        assert!(!c.advance(&[arrived("shard-1", "20")]), "nothing moved");
        c.save().unwrap();
        let c = Checkpoint::open(&path, "realm", Some(1)).unwrap();
        assert!(c.resumed());
        assert_eq!(
            c.since_ms(),
            Some(1_700_000_000_000),
            "kept from the first run"
        );
        let expected: BTreeMap<String, String> = [("shard-0", "11"), ("shard-1", "20")]
            .into_iter()
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
            .collect();
        assert_eq!(c.positions(), &expected);
    }

    #[test]
    fn another_streams_file_or_a_broken_one_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cp.json");
        Checkpoint::open(&path, "realm", None).unwrap();
        let e = Checkpoint::open(&path, "other", None).unwrap_err();
        assert!(
            e.contains("\"realm\"") && e.contains("its own --checkpoint-file"),
            "{e}"
        );
        std::fs::write(&path, b"{\"stream\": 3").unwrap();
        let e = Checkpoint::open(&path, "realm", None).unwrap_err();
        assert!(e.contains("not a firehose-local checkpoint"), "{e}");
        let e =
            Checkpoint::open(&dir.path().join("no/such/dir/cp.json"), "realm", None).unwrap_err();
        assert!(e.contains("cannot write"), "{e}");
    }
}
