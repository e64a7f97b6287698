//! The files of a spool directory: segment names and listing, the delivered-position file
//! `acked`, and the names unreadable segments are set aside under.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::{Position, SpoolError};

/// Set-aside files (unreadable segments) have this in their names, and are never deleted.
pub const SET_ASIDE: &str = ".unreadable-";

/// The file holding the delivered position.
pub(super) const CURSOR_FILE: &str = "acked";

/// The file name of segment `id`.
pub(super) fn segment_name(id: u64) -> String {
    format!("segment-{id:016}.spool")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    name.strip_prefix("segment-")?
        .strip_suffix(".spool")?
        .parse()
        .ok()
}

/// The ids of the segment files in `dir`, oldest first.
pub(super) fn list_segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut ids: Vec<u64> = fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter_map(|e| parse_segment_name(&e.file_name().to_string_lossy()))
        .collect();
    ids.sort_unstable();
    Ok(ids)
}

/// A name no other file has for the unreadable segment `path`, in `dir`, after `prefix`.
fn set_aside_name(path: &Path, dir: &Path, prefix: &str) -> PathBuf {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut name = std::ffi::OsString::from(prefix);
    name.push(path.file_name().unwrap_or_default());
    name.push(format!("{SET_ASIDE}{stamp}"));
    dir.join(name)
}

/// What became of a segment file that cannot be read (see [`set_aside`]).
#[derive(Debug)]
pub enum SetAside {
    /// Renamed to this: kept for whoever can read it, never deleted.
    Moved(PathBuf),
    /// Not there any more (deleted by hand): there is nothing to keep.
    Gone,
    /// It could not be renamed (a disk the kernel made read-only): left where it is.
    LeftInPlace(io::Error),
}

/// Move the segment file `path`, which cannot be read, out of the way under a name of its own:
/// no listing takes it for a segment, so a delivered position passing it never deletes it.
pub fn set_aside(path: &Path) -> SetAside {
    set_aside_into(path, path.parent().unwrap_or(Path::new("")), "")
}

/// [`set_aside`] into the directory `dir`, the new name after `prefix` (a file of the held
/// readings' spool goes up into the spool's directory as `held-...`, where it outlives
/// `held/`).
pub fn set_aside_into(path: &Path, dir: &Path, prefix: &str) -> SetAside {
    let aside = set_aside_name(path, dir, prefix);
    match fs::rename(path, &aside) {
        Ok(()) => SetAside::Moved(aside),
        Err(e) if e.kind() == io::ErrorKind::NotFound => SetAside::Gone,
        Err(e) => SetAside::LeftInPlace(e),
    }
}

impl SetAside {
    /// The log's sentence on the file at `path`, unreadable for `error`, `lost` saying what
    /// it held ("the reports in it").
    pub fn said(&self, path: &Path, error: &io::Error, lost: &str) -> String {
        let path = path.display();
        match self {
            SetAside::Moved(aside) => format!(
                "cannot read the spool file {path}: {error}; moved it to {} and went on without {lost}",
                aside.display()
            ),
            SetAside::Gone => {
                format!("cannot read the spool file {path}: {error}; went on without {lost}")
            }
            SetAside::LeftInPlace(r) => format!(
                "cannot read the spool file {path}: {error}, nor move it aside: {r}; going on without {lost}"
            ),
        }
    }
}

/// The delivered position written down in `dir`, if there is a readable one.
pub(super) fn read_cursor(dir: &Path) -> Option<Position> {
    let text = fs::read_to_string(dir.join(CURSOR_FILE)).ok()?;
    let mut it = text.split_whitespace();
    if it.next()? != "v1" {
        return None;
    }
    Some(Position {
        segment: it.next()?.parse().ok()?,
        offset: it.next()?.parse().ok()?,
    })
}

/// Whether the delivered position `at` cannot be true of the segments `ids` on disk (oldest
/// first): it names a segment that is not there while older ones are. The spool deletes
/// segments oldest first and never the last one, so the segment its position names stays on
/// disk as long as an older one does (but for a delivered segment whose deletion failed, with a
/// position written down before a later deletion: sending it again costs duplicates only).
/// Such a position was damaged (a flipped bit in `acked`); trusted, it would have every segment
/// below it taken as delivered, and deleted, unread.
pub(super) fn position_is_damaged(at: Position, ids: &[u64]) -> bool {
    ids.first().is_some_and(|&oldest| oldest < at.segment)
        && ids.binary_search(&at.segment).is_err()
}

/// Write down `at` as the delivered position in `dir`.
pub(super) fn write_cursor(dir: &Path, at: Position) -> Result<(), SpoolError> {
    let path = dir.join(CURSOR_FILE);
    let text = format!("v1 {} {}\n", at.segment, at.offset);
    // Unsynced: an older cursor after a power cut only re-sends reports the database
    // already has, which it counts as duplicates.
    crate::fsutil::replace(&path, text.as_bytes(), crate::fsutil::Durability::Unsynced)
        .map_err(|source| SpoolError::Io { path, source })
}
