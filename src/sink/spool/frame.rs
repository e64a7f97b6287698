//! Frames: `[u32 length LE][u32 CRC-32 of payload LE][payload]`, how they are encoded, and how
//! a segment file is read back, resuming at the next good frame after bad bytes.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

/// Frame header: length and CRC.
pub(super) const HEADER: u64 = 8;
/// No report comes near this; a larger length is corruption.
const MAX_RECORD: u32 = 16 * 1024 * 1024;
/// No segment file the spool writes comes near this: segments roll over at 1 MiB, and the
/// largest single write (reports appended at once: the last run's held readings, refused ones
/// put back) is a few MiB. A larger file is damage (a wrong size in a damaged inode, a file
/// that is not ours) and is not read: scanning it would hold up every start.
pub(super) const FILE_MAX: u64 = 1 << 30;
/// How much of a file the search for the next good frame reads at once, so that the search
/// costs this much memory however much bad data it crosses.
const SEARCH_WINDOW: u64 = 1024 * 1024;

/// Encode one frame.
#[cfg(test)]
pub(super) fn frame(payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(payload.len() + HEADER as usize);
    push_frame(&mut f, payload);
    f
}

/// Encode one frame at the end of `f`.
pub(super) fn push_frame(f: &mut Vec<u8>, payload: &[u8]) {
    push_encoded(f, |b| b.extend_from_slice(payload));
}

/// Encode one frame at the end of `f`, its payload being what `encode` appends to `f`: the
/// payload is encoded in place, with no buffer of its own.
pub(super) fn push_encoded(f: &mut Vec<u8>, encode: impl FnOnce(&mut Vec<u8>)) {
    let at = f.len();
    f.extend_from_slice(&[0; HEADER as usize]);
    encode(f);
    let (header, payload) = f[at..].split_at_mut(HEADER as usize);
    header[..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    header[4..].copy_from_slice(&crc32fast::hash(payload).to_le_bytes());
}

/// The payloads of frames encoded by [`push_frame`].
pub(super) fn payloads(mut frames: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let (head, rest) = frames.split_first_chunk::<4>()?;
        let len = u32::from_le_bytes(*head) as usize;
        let payload = rest.get(HEADER as usize - 4..HEADER as usize - 4 + len)?;
        frames = &rest[HEADER as usize - 4 + len..];
        Some(payload)
    })
}

/// Read the next frame; `Ok(None)` at a clean end, `Err` on a torn or corrupt frame.
fn read_frame(r: &mut impl Read, remaining: u64) -> Result<Option<Vec<u8>>, &'static str> {
    if remaining == 0 {
        return Ok(None);
    }
    if remaining < HEADER {
        return Err("truncated header");
    }
    let mut h = [0u8; HEADER as usize];
    r.read_exact(&mut h).map_err(|_| "truncated header")?;
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    if len == 0 || len > MAX_RECORD {
        return Err("bad length");
    }
    if u64::from(len) > remaining - HEADER {
        return Err("truncated record");
    }
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload).map_err(|_| "truncated record")?;
    if crc32fast::hash(&payload) != crc {
        return Err("checksum mismatch");
    }
    Ok(Some(payload))
}

/// The frames of a segment file, in order, from `pos` up to `limit`.
///
/// A frame that fails its checks (a block of the SD card that came back wrong, or a block of
/// an unsynced write that never reached it before power was lost, with later ones that did)
/// costs that frame, not the rest of the file: reading goes on at the next offset where a
/// whole frame passes its checks. Its length field must fit, its payload must start with the
/// same length (a BSON document's first field is its own length) and its CRC must match, so a
/// false start is about as likely as a CRC collision. Bytes after the last good frame are a
/// torn tail, not a skipped region. A block the disk cannot read (EIO) is bad data too: it
/// reads as zeros, which no frame passes.
pub(super) struct Frames {
    r: BufReader<File>,
    /// Where the next frame starts.
    pub(super) pos: u64,
    /// Where reading stops.
    pub(super) limit: u64,
    /// Regions skipped between good frames, and their bytes.
    skipped_regions: u64,
    pub(super) skipped_bytes: u64,
    /// Where the last good frame ends (the torn tail starts), once the end is reached.
    pub(super) end: Option<u64>,
    /// A block after the last good frame so far could not be read (EIO): what it held may
    /// read again later.
    pub(super) unreadable: bool,
}

impl Frames {
    /// `r` must be positioned at `pos`.
    pub(super) fn new(r: BufReader<File>, pos: u64, limit: u64) -> Self {
        Frames {
            r,
            pos,
            limit,
            skipped_regions: 0,
            skipped_bytes: 0,
            end: None,
            unreadable: false,
        }
    }

    /// The frames of the whole of `file`, from its start; an error for a file larger than
    /// [`FILE_MAX`].
    pub(super) fn of_file(file: File) -> io::Result<Self> {
        let size = file.metadata()?.len();
        if size > FILE_MAX {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{size} bytes, more than any spool file the agent writes ({FILE_MAX}): damaged, or not a spool file"
                ),
            ));
        }
        Ok(Frames::new(
            BufReader::with_capacity(64 * 1024, file),
            0,
            size,
        ))
    }

    /// The next good frame's offset in the file and its payload.
    pub(super) fn next(&mut self) -> io::Result<Option<(u64, Vec<u8>)>> {
        if self.end.is_some() {
            return Ok(None);
        }
        let start = self.pos;
        let found = match read_frame(&mut self.r, self.limit - start) {
            Ok(found) => found.map(|p| (start, p)),
            // From `start` itself: a read that failed once (EIO) may work again.
            Err(_) => {
                let found =
                    good_frame_from(self.r.get_ref(), start, self.limit, &mut self.unreadable);
                if let Some((at, p)) = &found {
                    self.r.seek(SeekFrom::Start(at + HEADER + p.len() as u64))?;
                    if *at > start {
                        self.skipped_regions += 1;
                        self.skipped_bytes += at - start;
                    }
                }
                found
            }
        };
        match found {
            Some((at, p)) => {
                self.pos = at + HEADER + p.len() as u64;
                // Unreadable blocks before a good frame were skipped as bad data; only those
                // after the last one make the file's end unreadable rather than torn.
                self.unreadable = false;
                Ok(Some((at, p)))
            }
            None => {
                self.end = Some(start);
                Ok(None)
            }
        }
    }
}

/// The bytes of `file` from `start` to `limit`, with zeros for any block it cannot read
/// (`unreadable` is then set).
fn read_readable(file: &File, start: u64, limit: u64, unreadable: &mut bool) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    const BLOCK: u64 = 4096;
    let mut rest = vec![0u8; usize::try_from(limit - start).unwrap_or(0)];
    let mut at = start;
    while at < limit {
        // To the next block boundary, so that one bad block costs that block.
        let end = ((at / BLOCK + 1) * BLOCK).min(limit);
        let buf = &mut rest[(at - start) as usize..(end - start) as usize];
        if file.read_exact_at(buf, at).is_err() {
            buf.fill(0);
            *unreadable = true;
        }
        at = end;
    }
    rest
}

/// The first frame at or after `start` (before `limit`) that passes its checks (see
/// [`Frames`]): its offset and payload. Read a window at a time; a candidate's payload is read
/// only once its header and first bytes agree. `unreadable` is set if a block cannot be read.
fn good_frame_from(
    file: &File,
    start: u64,
    limit: u64,
    unreadable: &mut bool,
) -> Option<(u64, Vec<u8>)> {
    use std::os::unix::fs::FileExt;
    // A header and the payload's first 4 bytes (a BSON document's own length).
    const HEAD: u64 = HEADER + 4;
    let mut from = start;
    while from + HEAD <= limit {
        let to = (from + SEARCH_WINDOW).min(limit);
        let buf = read_readable(file, from, (to + HEAD - 1).min(limit), unreadable);
        for k in 0..(to - from) as usize {
            let Some(head) = buf.get(k..k + HEAD as usize) else {
                break;
            };
            let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
            let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
            let at = from + k as u64;
            if !(5..=MAX_RECORD).contains(&len)
                || head[8..] != head[..4]
                || at + HEADER + u64::from(len) > limit
            {
                continue;
            }
            let mut payload = vec![0u8; len as usize];
            match file.read_exact_at(&mut payload, at + HEADER) {
                Ok(()) if crc32fast::hash(&payload) == crc => return Some((at, payload)),
                Ok(()) => {}
                Err(_) => *unreadable = true,
            }
        }
        from = to;
    }
    None
}

/// What a scan of a segment file found.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Scanned {
    pub(super) records: u64,
    /// Where the last good frame ends.
    pub(super) valid: u64,
    /// Records before the delivered position.
    pub(super) acked: u64,
    /// Regions of bad data skipped after the last delivered record (what they held is lost),
    /// and their bytes.
    pub(super) skipped_regions: u64,
    pub(super) skipped_bytes: u64,
    /// Regions of bad data skipped before the last delivered record (already in the database).
    pub(super) delivered_regions: u64,
    /// A block after the last good frame could not be read (EIO): the file's end is not a
    /// torn write, and may read again later.
    pub(super) unreadable: bool,
}

/// Count the good records of a segment file, where they end, and how many lie before
/// `ack_offset`.
pub(super) fn scan(path: &Path, ack_offset: Option<u64>) -> io::Result<Scanned> {
    let mut frames = Frames::of_file(File::open(path)?)?;
    let mut s = Scanned::default();
    // Regions skipped before the delivered position: what they held is in the database. The
    // first record at or past it closes them (a bad last delivered record included).
    let mut delivered = (0, 0);
    while let Some((start, _)) = frames.next()? {
        if ack_offset.is_some_and(|a| start <= a) {
            delivered = (frames.skipped_regions, frames.skipped_bytes);
        }
        if ack_offset.is_some_and(|a| start < a) {
            s.acked += 1;
        }
        s.records += 1;
    }
    // Set when `next` gives None: where the last good frame ends.
    s.valid = frames.end.unwrap_or(frames.pos);
    s.delivered_regions = delivered.0;
    s.skipped_regions = frames.skipped_regions - delivered.0;
    s.skipped_bytes = frames.skipped_bytes - delivered.1;
    s.unreadable = frames.unreadable;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    // A block the disk cannot read reads as zeros, and costs only the records it overlaps.
    #[test]
    fn unreadable_blocks_read_as_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        fs::write(&path, [7u8; 10_000]).unwrap();
        let file = File::open(&path).unwrap();
        // Past the end of the file is unreadable to read_exact_at, as a bad block is: the
        // block 8192..12288 fails as a whole, the one before it reads.
        let mut unreadable = false;
        let rest = read_readable(&file, 5000, 13_000, &mut unreadable);
        assert!(unreadable);
        assert_eq!(rest.len(), 8000);
        assert!(rest[..3192].iter().all(|b| *b == 7));
        assert!(rest[3192..].iter().all(|b| *b == 0));
    }

    fn payload(i: u8) -> Vec<u8> {
        let mut p = 64u32.to_le_bytes().to_vec();
        p.resize(64, i);
        p
    }

    // Bad data longer than the search window is crossed a window at a time, and a frame that
    // starts just before a window's edge is found whole.
    #[test]
    fn the_search_crosses_windows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut bytes = frame(&payload(0));
        let start = bytes.len();
        bytes.resize(start + 2 * SEARCH_WINDOW as usize - 3, 0);
        bytes.extend(frame(&payload(1)));
        bytes.extend(frame(&payload(2)));
        fs::write(&path, &bytes).unwrap();
        let mut frames = Frames::of_file(File::open(&path).unwrap()).unwrap();
        let mut got = Vec::new();
        while let Some((at, p)) = frames.next().unwrap() {
            got.push((at, p[4]));
        }
        let second = (start + 2 * SEARCH_WINDOW as usize - 3) as u64;
        assert_eq!(got, [(0, 0), (second, 1), (second + 72, 2)]);
        assert_eq!(
            (frames.skipped_regions, frames.skipped_bytes),
            (1, second - start as u64)
        );
    }

    // A frame that failed to read once (EIO) and reads now is taken, not skipped.
    #[test]
    fn the_search_starts_at_the_failed_frame() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut bytes = frame(&payload(0));
        bytes.extend(frame(&payload(1)));
        fs::write(&path, &bytes).unwrap();
        let file = File::open(&path).unwrap();
        let found = good_frame_from(&file, 72, bytes.len() as u64, &mut false);
        assert_eq!(found, Some((72, payload(1))));
        assert_eq!(
            good_frame_from(&file, 73, bytes.len() as u64, &mut false),
            None
        );
    }

    // A file larger than any segment the spool writes is refused before it is read.
    #[test]
    fn a_file_larger_than_any_segment_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let f = File::create(&path).unwrap();
        f.set_len(FILE_MAX + 1).unwrap();
        let e = Frames::of_file(File::open(&path).unwrap()).err().unwrap();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("not a spool file"), "{e}");
    }
}
