//! PutRecords batching, pure: at most 500 entries and 5 MiB per call, each entry (data plus
//! partition key) at most 1 MiB, and its data at most what Firehose delivers.

/// At most this many records in one PutRecords call.
pub const MAX_RECORDS: usize = 500;
/// At most this many bytes (data plus partition keys) in one PutRecords call.
pub const MAX_BATCH_BYTES: usize = 5 * 1024 * 1024;
/// At most this many bytes (data plus partition key) in one record.
pub const MAX_RECORD_BYTES: usize = 1024 * 1024;
/// At most this many bytes of data in one record Firehose delivers (1,000 KiB): a Kinesis record
/// between this and [`MAX_RECORD_BYTES`] would be accepted by the stream and then never reach the
/// endpoint, so it is refused here too.
pub const FIREHOSE_MAX_RECORD_DATA: usize = 1_024_000;
/// A partition key is 1 to 256 Unicode characters.
pub const MAX_PARTITION_KEY_CHARS: usize = 256;

/// One record to put.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The record's data.
    pub data: Vec<u8>,
    /// Its partition key.
    pub partition_key: String,
}

impl Entry {
    /// What the entry counts against the record and request limits.
    pub fn size(&self) -> usize {
        self.data.len() + self.partition_key.len()
    }
}

/// Why a record can never be put.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The record is larger than Kinesis accepts.
    #[error("record is {size} bytes (data plus partition key), over the Kinesis limit of {MAX_RECORD_BYTES}")]
    TooLarge {
        /// Data plus partition key, bytes.
        size: usize,
    },
    /// The record's data is larger than Firehose delivers.
    #[error("record data is {size} bytes, over the Firehose limit of {FIREHOSE_MAX_RECORD_DATA} for one record: the stream would take it, but Firehose could never deliver it")]
    TooLargeForFirehose {
        /// Data, bytes.
        size: usize,
    },
}

/// Check an entry against the per-record limit.
pub fn check(entry: &Entry) -> Result<(), RecordError> {
    let size = entry.size();
    if size > MAX_RECORD_BYTES {
        return Err(RecordError::TooLarge { size });
    }
    if entry.data.len() > FIREHOSE_MAX_RECORD_DATA {
        return Err(RecordError::TooLargeForFirehose {
            size: entry.data.len(),
        });
    }
    Ok(())
}

/// A partition key from a field value: its text, or "-" when missing or empty, cut to 256
/// characters.
pub fn partition_key(value: Option<&mongodb::bson::Bson>) -> String {
    use mongodb::bson::Bson;
    let text = match value {
        None | Some(Bson::Null) | Some(Bson::Undefined) => String::new(),
        Some(Bson::String(s)) => s.clone(),
        Some(Bson::ObjectId(o)) => o.to_hex(),
        Some(other) => other.clone().into_relaxed_extjson().to_string(),
    };
    if text.is_empty() {
        return "-".to_owned();
    }
    text.chars().take(MAX_PARTITION_KEY_CHARS).collect()
}

/// Entries waiting for one PutRecords call.
#[derive(Debug, Default)]
pub struct Batch {
    entries: Vec<Entry>,
    bytes: usize,
}

impl Batch {
    /// Whether no entry waits.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How many entries wait.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether `entry` fits without breaking a limit.
    pub fn fits(&self, entry: &Entry) -> bool {
        self.entries.len() < MAX_RECORDS && self.bytes + entry.size() <= MAX_BATCH_BYTES
    }

    /// Whether no further record can be added.
    pub fn is_full(&self) -> bool {
        self.entries.len() >= MAX_RECORDS || self.bytes >= MAX_BATCH_BYTES
    }

    /// Add `entry` (the caller checked [`Batch::fits`]).
    pub fn push(&mut self, entry: Entry) {
        self.bytes += entry.size();
        self.entries.push(entry);
    }

    /// Hand over the entries, leaving the batch empty.
    pub fn take(&mut self) -> Vec<Entry> {
        self.bytes = 0;
        std::mem::take(&mut self.entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: usize) -> Entry {
        Entry {
            data: vec![b'x'; n],
            partition_key: "k".to_owned(),
        }
    }

    // A batch closes at 500 records or 5 MiB, whichever comes first.
    #[test]
    fn batch_limits() {
        let mut b = Batch::default();
        for _ in 0..MAX_RECORDS {
            assert!(b.fits(&entry(10)));
            b.push(entry(10));
        }
        assert!(b.is_full() && !b.fits(&entry(1)));
        assert_eq!(b.take().len(), MAX_RECORDS);
        assert!(b.is_empty());
        for _ in 0..5 {
            b.push(entry(MAX_RECORD_BYTES - 1));
        }
        assert!(!b.fits(&entry(10)));
    }

    // Records over 1 MiB including the key are refused, and so is data over Firehose's
    // 1,024,000 bytes; exactly 1,024,000 is fine.
    #[test]
    fn record_limits() {
        assert!(check(&entry(FIREHOSE_MAX_RECORD_DATA)).is_ok());
        assert_eq!(
            check(&entry(FIREHOSE_MAX_RECORD_DATA + 1)),
            Err(RecordError::TooLargeForFirehose {
                size: FIREHOSE_MAX_RECORD_DATA + 1
            })
        );
        assert_eq!(
            check(&entry(MAX_RECORD_BYTES)),
            Err(RecordError::TooLarge {
                size: MAX_RECORD_BYTES + 1
            })
        );
    }

    // Partition keys: the field's text, "-" when missing, at most 256 characters.
    #[test]
    fn partition_keys() {
        use mongodb::bson::Bson;
        assert_eq!(partition_key(Some(&Bson::String("pi-1".into()))), "pi-1");
        assert_eq!(partition_key(None), "-");
        assert_eq!(partition_key(Some(&Bson::String(String::new()))), "-");
        assert_eq!(partition_key(Some(&Bson::Int32(7))), "7");
        assert_eq!(
            partition_key(Some(&Bson::String("é".repeat(300))))
                .chars()
                .count(),
            256
        );
    }
}
