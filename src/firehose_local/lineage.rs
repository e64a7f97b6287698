//! Which shards may be read now: a child shard (from a split or a merge) only once each of its
//! parents has been read to its end and what was read from it delivered, as the Kinesis Client
//! Library orders them. Reading a parent and its child at once would mix an older and a newer
//! record with the same partition key in one buffer, in either order, and the endpoint, which
//! replaces documents by `_id`, could keep the older one.
//!
//! Pure state: the reader lists the shards and says which have ended; this says which to start.

use std::collections::HashSet;

/// A shard as ListShards describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Its id.
    pub id: String,
    /// The shard it was split from, or the two it was merged from.
    pub parents: Vec<String>,
}

/// Whether `shard` is gone from the stream by `listing`, which must be a whole ListShards
/// answer (every page read; an error anywhere is no answer at all). ListShards leaves out only
/// expired shards, so a shard it no longer lists cannot be read again. An empty listing proves
/// nothing (a stream always has an open shard): nothing is gone by it.
pub fn gone(listing: &[Listed], shard: &str) -> bool {
    !listing.is_empty() && !listing.iter().any(|s| s.id == shard)
}

/// The shards started so far and those finished.
#[derive(Debug, Default)]
pub struct Lineage {
    started: HashSet<String>,
    /// Read to their end and delivered, in this run or (per the checkpoint) an earlier one.
    finished: HashSet<String>,
}

impl Lineage {
    /// No shard started yet; `finished` were read to their end by an earlier run.
    pub fn new(finished: impl IntoIterator<Item = String>) -> Self {
        Lineage {
            started: HashSet::new(),
            finished: finished.into_iter().collect(),
        }
    }

    /// `id` was read to its end and what was read from it has been delivered.
    pub fn finish(&mut self, id: &str) {
        self.finished.insert(id.to_owned());
    }

    /// The shards of `listing` to start now, in listing order, taken as started: those not
    /// started nor finished whose parents are each finished or gone from the stream (trimmed
    /// after the retention period: nothing is left to read there).
    pub fn ready(&mut self, listing: &[Listed]) -> Vec<String> {
        let listed: HashSet<&str> = listing.iter().map(|s| s.id.as_str()).collect();
        let mut out = Vec::new();
        for shard in listing {
            if self.started.contains(&shard.id) || self.finished.contains(&shard.id) {
                continue;
            }
            let waits = shard
                .parents
                .iter()
                .any(|p| listed.contains(p.as_str()) && !self.finished.contains(p));
            if !waits {
                self.started.insert(shard.id.clone());
                out.push(shard.id.clone());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(id: &str, parents: &[&str]) -> Listed {
        Listed {
            id: id.to_owned(),
            parents: parents.iter().map(|p| (*p).to_owned()).collect(),
        }
    }

    // A split: the children wait for the parent, and start once it has finished.
    #[test]
    fn children_of_a_split_start_after_their_parent() {
        let listing = [listed("0", &[]), listed("1", &["0"]), listed("2", &["0"])];
        let mut l = Lineage::default();
        assert_eq!(l.ready(&listing), ["0"]);
        assert!(l.ready(&listing).is_empty(), "nothing twice, children wait");
        l.finish("0");
        assert_eq!(l.ready(&listing), ["1", "2"]);
        assert!(l.ready(&listing).is_empty());
    }

    // A merge: the child waits for both parents.
    #[test]
    fn the_child_of_a_merge_waits_for_both_parents() {
        let listing = [listed("0", &[]), listed("1", &[]), listed("2", &["0", "1"])];
        let mut l = Lineage::default();
        assert_eq!(l.ready(&listing), ["0", "1"]);
        l.finish("1");
        assert!(l.ready(&listing).is_empty(), "shard 0 is still being read");
        l.finish("0");
        assert_eq!(l.ready(&listing), ["2"]);
    }

    // A parent finished by an earlier run is not read again and does not hold its children;
    // nor does a parent gone from the stream; a grandchild waits for its own parent.
    #[test]
    fn finished_or_trimmed_parents_do_not_block() {
        let listing = [listed("0", &[]), listed("1", &["0"]), listed("3", &["1"])];
        let mut l = Lineage::new(["0".to_owned()]);
        assert_eq!(l.ready(&listing), ["1"]);
        let trimmed = [listed("1", &["0"]), listed("2", &["0"])];
        let mut l = Lineage::default();
        assert_eq!(l.ready(&trimmed), ["1", "2"]);
    }

    // A shard is gone only by a listing that holds other shards but not it; an empty one (no
    // stream has no shard) says nothing.
    #[test]
    fn a_shard_is_gone_only_by_a_listing_without_it() {
        let listing = [listed("1", &["0"]), listed("2", &["0"])];
        assert!(gone(&listing, "0"));
        assert!(!gone(&listing, "1"));
        assert!(!gone(&[], "0"));
    }
}
