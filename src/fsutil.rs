//! Replacing a file so that a reader, a crash or a power cut sees the old contents or the new,
//! whole: the one way every program here writes its state files. And making the directory
//! they go in.

use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Whether [`replace`] waits for the new contents to reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Sync the file before the rename and the directory after it: once `replace` returns, a
    /// power cut keeps the new contents. For state that says what has been done (checkpoints,
    /// positions, dead letters).
    Synced,
    /// Rename without syncing: a reader never sees half a file, but a power cut may bring back
    /// the old one. For files rewritten often whose loss costs nothing but a repeat (a status
    /// snapshot; a delivery cursor whose older value only re-sends reports the database
    /// already has).
    Unsynced,
}

/// `fs::create_dir_all`, saying what is wrong when a file has the directory's name: the system
/// says only "File exists", which reads as if all were well.
pub fn create_dir_all(dir: &Path) -> std::io::Result<()> {
    match std::fs::create_dir_all(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(std::io::Error::new(
            std::io::ErrorKind::NotADirectory,
            "a file, not a directory, has this name",
        )),
        done => done,
    }
}

/// A disk that is full, read-only or failing, as against a path that is not ours to write:
/// what the agent rides out from memory rather than refusing to run.
pub fn disk_trouble(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{QuotaExceeded, ReadOnlyFilesystem, StorageFull};
    /// EIO: the card or disk failing.
    const EIO: i32 = 5;
    matches!(e.kind(), StorageFull | ReadOnlyFilesystem | QuotaExceeded)
        || e.raw_os_error() == Some(EIO)
}

/// Replace `path` with `contents`: write a new temporary file beside it, then rename it over
/// `path`.
///
/// The temporary file is named for this process, so two instances given the same file never
/// share one, and it is always created new: a leftover of a crash is removed first, and a
/// symlink planted under its name (in a directory others can write) is neither followed nor
/// written through.
pub fn replace(path: &Path, contents: &[u8], durability: Durability) -> std::io::Result<()> {
    replace_with_mode(path, contents, durability, None)
}

/// [`replace`], the new file given permission bits `mode` (e.g. 0o644: readable by others,
/// whatever the process's umask) before it takes `path`'s place.
pub fn replace_with_mode(
    path: &Path,
    contents: &[u8],
    durability: Durability,
    mode: Option<u32>,
) -> std::io::Result<()> {
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp_name);
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)?;
    let written = f
        .write_all(contents)
        .and_then(|()| match mode {
            Some(m) => {
                use std::os::unix::fs::PermissionsExt as _;
                f.set_permissions(std::fs::Permissions::from_mode(m))
            }
            None => Ok(()),
        })
        .and_then(|()| match durability {
            Durability::Synced => f.sync_all(),
            Durability::Unsynced => Ok(()),
        });
    drop(f);
    // A write that failed (a full disk) or a rename that did leaves no temporary file behind.
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    if durability == Durability::Synced {
        std::fs::File::open(dir_of(path))?.sync_all()?;
    }
    Ok(())
}

/// Overwrite `path` in place with `contents`, followed by spaces up to the file's length (so it
/// needs no truncation; a file more than 4 KiB longer is truncated instead), creating it if it is
/// not there. For a text file whose format ignores trailing spaces (JSON), rewritten often and
/// read seldom: one write into a page already cached, where [`replace`] makes a new file and
/// renames it over the old, which on ext4 also forces the new file's data out. A reader may see
/// a write half done, and must try again when what it reads does not parse. A symlink under the
/// name is not followed.
pub fn overwrite_padded(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::{FileExt as _, OpenOptionsExt as _};
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)?;
    let new_len = contents.len() as u64;
    let pad = f.metadata()?.len().saturating_sub(new_len);
    if pad > PAD_MAX {
        // Not a file this wrote (or one that shrank by far): cut it rather than pad it.
        f.write_all_at(contents, 0)?;
        return f.set_len(new_len);
    }
    let mut padded = contents.to_vec();
    padded.resize(contents.len() + pad as usize, b' ');
    f.write_all_at(&padded, 0)
}

/// Most spaces [`overwrite_padded`] writes after the contents; a longer file is truncated.
const PAD_MAX: u64 = 4096;

/// The directory a file `path` is in: its parent, or "." for a bare file name.
pub fn dir_of(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    // Shorter contents are padded with spaces to the old length, longer ones grow the file,
    // and a symlink planted under the name is neither followed nor written through.
    #[test]
    fn overwrite_padded_pads_grows_and_never_follows_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.json");
        overwrite_padded(&path, br#"{"a": 12345}"#).unwrap();
        overwrite_padded(&path, br#"{"a": 1}"#).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), br#"{"a": 1}    "#);
        overwrite_padded(&path, br#"{"a": 1234567}"#).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), br#"{"a": 1234567}"#);
        // A file far longer than anything written is cut, not padded.
        std::fs::write(&path, vec![b'x'; 3 * PAD_MAX as usize]).unwrap();
        overwrite_padded(&path, b"{}").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"{}");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"keep me").unwrap();
        let link = dir.path().join("planted");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        assert!(overwrite_padded(&link, b"{}").is_err());
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep me");
    }

    // The temporary file is made new: a symlink planted under its name is not written through.
    #[test]
    fn replace_never_follows_a_planted_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"keep me").unwrap();
        let target = dir.path().join("checkpoint.json");
        let mut tmp = target.as_os_str().to_owned();
        tmp.push(format!(".{}.tmp", std::process::id()));
        std::os::unix::fs::symlink(&victim, &tmp).unwrap();
        for durability in [Durability::Synced, Durability::Unsynced] {
            replace(&target, b"{}", durability).unwrap();
            assert_eq!(std::fs::read(&victim).unwrap(), b"keep me");
            assert_eq!(std::fs::read(&target).unwrap(), b"{}");
        }
    }

    // A file is replaced whole, and no temporary file is left beside it.
    #[test]
    fn replace_leaves_only_the_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("state");
        replace(&target, b"old", Durability::Synced).unwrap();
        replace(&target, b"new contents", Durability::Unsynced).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"new contents");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }
}
