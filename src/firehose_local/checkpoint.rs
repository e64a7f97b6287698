//! Where each shard was delivered up to, kept in a file (`--checkpoint-file`) so a restart
//! carries on after the last record handled instead of at LATEST.
//!
//! A shard's position moves only once a batch holding its records has ended: delivered, given
//! up into the error output, or refused with 413 (all final, as in Firehose); a record over
//! Firehose's size limit is a batch of its own, ended once it is set aside into the error output
//! ([`super::buffer`]), so a restart does not write it out again. Records read but still
//! buffered or being retried are not covered, so a crash or kill re-reads them: delivery is at
//! least once, as Firehose's is, and the endpoint's upsert by `_id` absorbs a repeat.
//!
//! One exception: when the error output cannot be written, the records are lost unless read
//! again, so the positions stop moving ([`Checkpoint::freeze`]) and a restart re-reads from
//! the last batch that ended properly.
//!
//! The file is JSON, replaced atomically (written beside, synced, renamed):
//!
//! ```json
//! {"stream": "realm", "stream_created_ms": 1764129000000, "since_ms": 1764130000000,
//!  "shards": {"shardId-000000000000": "4959..."}, "ended": ["shardId-000000000000"]}
//! ```
//!
//! `since_ms` is when the file was made by a run that started at LATEST (null with
//! `--from-start`): a shard with no position yet is read from that moment (AT_TIMESTAMP), or
//! from its oldest record when it is null, so nothing put while firehose-local was stopped is
//! skipped. `stream_created_ms` tells a stream deleted and created again under the same name
//! (an emulator restarted, say): the sequence numbers saved belong to the old one, so they are
//! dropped and every shard is read from its oldest record. `ended` (absent in older files) lists
//! the shards closed by a reshard that were read to their end and delivered: they are not read
//! again, and their children are read at once.
//!
//! Shards gone from the stream (expired after the retention period: ListShards no longer lists
//! them) are forgotten, their positions and `ended` marks alike ([`Checkpoint::prune`]), so the
//! file does not grow with every reshard for the life of the stream. Nothing is lost by it: a
//! shard not listed can never be read again, and a parent gone from the listing holds no child
//! ([`super::lineage`]). Only a whole, non-empty listing prunes; a failed one prunes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tracing::{error, info};

use super::reader::Arrived;
use crate::say_once::Latch;

/// The positions, and the file they are kept in.
#[derive(Debug)]
pub struct Checkpoint {
    path: PathBuf,
    state: State,
    /// The file was there at start: this run resumes an earlier one.
    resumed: bool,
    /// The file was for an earlier stream of the same name; its positions were dropped.
    recreated: bool,
    /// Positions no longer move (see [`Checkpoint::freeze`]).
    frozen: bool,
    /// The last save failed (logged once until one works again).
    save_failing: Latch,
    /// When the file was last written, ms since the epoch (for the metrics).
    saved_ms: Arc<AtomicI64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct State {
    stream: String,
    /// When the stream was created, ms since the epoch.
    #[serde(default)]
    stream_created_ms: Option<i64>,
    since_ms: Option<i64>,
    /// Shard id to the sequence number of the last record handled.
    shards: BTreeMap<String, String>,
    /// Shards read to their end, every record handled.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    ended: BTreeSet<String>,
}

impl State {
    /// Drop the positions and `ended` marks of shards not in `listed`; nothing when it is empty
    /// (no stream has no shard: such a listing proves nothing). Returns whether any went.
    fn prune(&mut self, listed: &BTreeSet<String>) -> bool {
        if listed.is_empty() {
            return false;
        }
        let before = (self.shards.len(), self.ended.len());
        self.shards.retain(|id, _| listed.contains(id));
        self.ended.retain(|id| listed.contains(id));
        before != (self.shards.len(), self.ended.len())
    }
}

/// A checkpoint file as read and checked by [`Checkpoint::read`].
#[derive(Debug)]
pub struct Saved(State);

impl Checkpoint {
    /// Read the checkpoint of `stream` from `path` (`None`: no file yet), and check that it is
    /// one, of this stream: a clear error before anything else is asked of Kinesis.
    pub fn read(path: &Path, stream: &str) -> Result<Option<Saved>, String> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
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
        Ok(Some(Saved(state)))
    }

    /// The checkpoint of `stream` (created at `created_ms`) from what [`Checkpoint::read`]
    /// found at `path`, or a new one, written at once so that a crash before the first
    /// delivery still resumes from now. `now_ms` is `None` when reading from the oldest
    /// record (`--from-start`).
    pub fn from_saved(
        path: &Path,
        stream: &str,
        saved: Option<Saved>,
        created_ms: i64,
        now_ms: Option<i64>,
    ) -> Result<Self, String> {
        let with = |state: State, resumed: bool, recreated: bool| Checkpoint {
            path: path.to_owned(),
            state,
            resumed,
            recreated,
            frozen: false,
            save_failing: Latch::default(),
            saved_ms: Arc::default(),
        };
        let fresh = |since_ms: Option<i64>| State {
            stream: stream.to_owned(),
            stream_created_ms: Some(created_ms),
            since_ms,
            shards: BTreeMap::new(),
            ended: BTreeSet::new(),
        };
        let c = match saved {
            None => with(fresh(now_ms), false, false),
            Some(Saved(state)) => match state.stream_created_ms {
                Some(t) if t == created_ms => return Ok(with(state, true, false)),
                // Read the new stream whole: nothing in it has been delivered.
                Some(_) => with(fresh(None), true, true),
                // A file from before the creation time was kept: take this stream's.
                None => with(
                    State {
                        stream_created_ms: Some(created_ms),
                        ..state
                    },
                    true,
                    false,
                ),
            },
        };
        c.save()
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(c)
    }

    /// [`Checkpoint::read`], then [`Checkpoint::from_saved`].
    pub fn open(
        path: &Path,
        stream: &str,
        created_ms: i64,
        now_ms: Option<i64>,
    ) -> Result<Self, String> {
        let saved = Self::read(path, stream)?;
        Self::from_saved(path, stream, saved, created_ms, now_ms)
    }

    /// Whether the file was there at start.
    pub fn resumed(&self) -> bool {
        self.resumed
    }

    /// Whether the file held positions in an earlier stream of the same name (dropped).
    pub fn recreated(&self) -> bool {
        self.recreated
    }

    /// Stop moving the positions for the rest of the run: records were neither delivered nor
    /// kept anywhere, so a restart must read them again.
    /// Logged the first time.
    pub fn freeze(&mut self) {
        if !self.frozen {
            error!("the error output could not be written: the checkpoint stays where it is, so a restart reads these records again");
        }
        self.frozen = true;
    }

    /// `batch` has ended: move past it and save. Delivery goes on when the save fails (a
    /// restart would deliver some records again); that is logged once until a save works.
    pub fn record(&mut self, batch: &[Arrived]) {
        if self.advance(batch) {
            self.save_logged();
        }
    }

    /// [`Self::save`], a failure logged once until a save works again.
    fn save_logged(&mut self) {
        match self.save() {
            Ok(()) => {
                if self.save_failing.clear() {
                    info!("the checkpoint file is written again");
                }
            }
            Err(e) => {
                if self.save_failing.raise() {
                    error!(error = %e, "cannot save the checkpoint file; a restart would deliver some records again");
                }
            }
        }
    }

    /// `shard` was read to its end and every record of it has ended: mark it so and save, so a
    /// restart neither reads it again nor holds its children for it. Not while frozen: its
    /// records must be read again.
    pub fn end_shard(&mut self, shard: &str) {
        if !self.frozen && self.state.ended.insert(shard.to_owned()) {
            self.save_logged();
        }
    }

    /// Forget the shards not in `listed`, every shard of the stream from a ListShards read whole
    /// (nothing when it is empty), and save if any was dropped. Not while frozen: the file stays
    /// as it is.
    pub fn prune(&mut self, listed: &BTreeSet<String>) {
        if !self.frozen && self.state.prune(listed) {
            self.save_logged();
        }
    }

    /// Shards read to their end.
    pub fn ended(&self) -> &BTreeSet<String> {
        &self.state.ended
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
        if self.frozen {
            return false;
        }
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

    /// Replace the file, durably (see [`crate::fsutil::replace`]).
    pub fn save(&self) -> std::io::Result<()> {
        let mut text = serde_json::to_vec(&self.state).map_err(std::io::Error::other)?;
        text.push(b'\n');
        super::write_durably(&self.path, &text)?;
        self.saved_ms
            .store(crate::clock::now_ms(), Ordering::Relaxed);
        Ok(())
    }

    /// When the file was last written, ms since the epoch (0: never), kept up to date.
    pub fn saved_at(&self) -> Arc<AtomicI64> {
        self.saved_ms.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn arrived(shard: &str, seq: &str) -> Arrived {
        Arrived {
            data: b"{}".to_vec(),
            share: None,
            arrival_ms: 0,
            shard: Arc::from(shard),
            sequence: seq.to_owned(),
        }
    }

    #[test]
    fn a_new_file_is_written_at_once_and_positions_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cp.json");
        let mut c = Checkpoint::open(&path, "realm", 5, Some(1_700_000_000_000)).unwrap();
        assert!(!c.resumed());
        assert!(path.exists(), "written before any delivery");
        assert!(c.advance(&[
            arrived("shard-0", "10"),
            arrived("shard-1", "20"),
            arrived("shard-0", "11"),
        ]));
        assert!(!c.advance(&[arrived("shard-1", "20")]), "nothing moved");
        c.save().unwrap();
        let c = Checkpoint::open(&path, "realm", 5, Some(1)).unwrap();
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

    // A file without the stream's creation time (written before it was kept) is resumed, and
    // takes the current stream's.
    #[test]
    fn a_file_without_the_creation_time_takes_the_current_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cp.json");
        std::fs::write(
            &path,
            r#"{"stream":"realm","since_ms":3,"shards":{"shard-0":"9"}}"#,
        )
        .unwrap();
        let c = Checkpoint::open(&path, "realm", 5, None).unwrap();
        assert!(c.resumed() && !c.recreated());
        assert_eq!(c.since_ms(), Some(3));
        assert_eq!(c.positions().get("shard-0").map(String::as_str), Some("9"));
        let c = Checkpoint::open(&path, "realm", 6, None).unwrap();
        assert!(c.recreated(), "the time was saved at the first open");
    }

    #[test]
    fn another_streams_file_or_a_broken_one_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cp.json");
        Checkpoint::open(&path, "realm", 5, None).unwrap();
        let e = Checkpoint::open(&path, "other", 5, None).unwrap_err();
        assert!(
            e.contains("\"realm\"") && e.contains("its own --checkpoint-file"),
            "{e}"
        );
        std::fs::write(&path, b"{\"stream\": 3").unwrap();
        let e = Checkpoint::open(&path, "realm", 5, None).unwrap_err();
        assert!(e.contains("not a firehose-local checkpoint"), "{e}");
        let e = Checkpoint::open(&dir.path().join("no/such/dir/cp.json"), "realm", 5, None)
            .unwrap_err();
        assert!(e.contains("cannot write"), "{e}");
    }

    #[test]
    fn a_stream_created_again_drops_the_old_positions_and_a_frozen_one_stays_put() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cp.json");
        let mut c = Checkpoint::open(&path, "realm", 5, Some(1_700_000_000_000)).unwrap();
        c.advance(&[arrived("shard-0", "10")]);
        c.save().unwrap();
        let c = Checkpoint::open(&path, "realm", 5, None).unwrap();
        assert!(!c.recreated() && c.positions().len() == 1);
        let mut c = Checkpoint::open(&path, "realm", 6, Some(1)).unwrap();
        assert!(c.resumed() && c.recreated());
        assert!(c.positions().is_empty());
        assert_eq!(c.since_ms(), None, "the new stream is read whole");
        c.freeze();
        assert!(!c.advance(&[arrived("shard-0", "1")]));
        assert!(c.positions().is_empty());
        let c = Checkpoint::open(&path, "realm", 6, None).unwrap();
        assert!(!c.recreated(), "saved for the new stream at open");
    }

    // A shard read to its end is kept as ended across a reopen, but not while frozen (its
    // records are to be read again).
    #[test]
    fn ended_shards_are_saved_unless_frozen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cp.json");
        let mut c = Checkpoint::open(&path, "realm", 5, None).unwrap();
        c.end_shard("shard-0");
        let mut c = Checkpoint::open(&path, "realm", 5, None).unwrap();
        assert!(c.ended().contains("shard-0"));
        c.freeze();
        c.end_shard("shard-1");
        let c = Checkpoint::open(&path, "realm", 5, None).unwrap();
        assert_eq!(c.ended().len(), 1);
    }

    fn ids(ids: &[&str]) -> BTreeSet<String> {
        ids.iter().map(|s| (*s).to_owned()).collect()
    }

    // Shards gone from a listing lose their positions and ended marks, and that is saved; the
    // listed ones keep theirs. An empty listing prunes nothing, nor does a frozen checkpoint.
    #[test]
    fn shards_gone_from_the_listing_are_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cp.json");
        let mut c = Checkpoint::open(&path, "realm", 5, None).unwrap();
        c.advance(&[arrived("0", "1"), arrived("1", "2"), arrived("2", "3")]);
        c.end_shard("0");
        c.end_shard("1");
        c.prune(&ids(&[]));
        assert_eq!((c.positions().len(), c.ended().len()), (3, 2));
        c.prune(&ids(&["1", "2", "3"]));
        let mut c = Checkpoint::open(&path, "realm", 5, None).unwrap();
        assert_eq!(c.positions().keys().collect::<Vec<_>>(), ["1", "2"]);
        assert_eq!(c.ended(), &ids(&["1"]));
        c.freeze();
        c.prune(&ids(&["3"]));
        assert_eq!((c.positions().len(), c.ended().len()), (2, 1));
    }
}
