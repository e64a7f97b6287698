//! Batching, pure: each target's limits per call and per entry ([`Limits`]): for Kinesis
//! PutRecords at most 500 entries and 5 MiB per call, each entry (data plus partition key) at
//! most 1 MiB, and its data at most what Firehose delivers; for EventBridge PutEvents
//! ([`EVENTBRIDGE`]) at most 10 entries per call, and under 256 KiB per call and per entry.

/// At most this many records in one PutRecords call.
pub const MAX_RECORDS: usize = 500;
/// At most this many bytes (data plus partition keys) in one PutRecords call.
pub const MAX_BATCH_BYTES: usize = 5 * 1024 * 1024;
/// At most this many bytes (data plus partition key) in one record.
pub const MAX_RECORD_BYTES: usize = 1024 * 1024;
/// At most this many bytes of data in one record Firehose delivers (1,000 KiB): a Kinesis record
/// between this and [`MAX_RECORD_BYTES`] would be accepted by the stream and then never reach the
/// endpoint, so it is refused here too.
pub const FIREHOSE_MAX_RECORD_DATA: usize = crate::FIREHOSE_MAX_RECORD_BYTES;
/// A partition key is 1 to 256 Unicode characters.
pub const MAX_PARTITION_KEY_CHARS: usize = 256;

/// Every EventBridge event's Source; the pipeline template's rule matches exactly this.
pub const SOURCE: &str = "sensehat-monitor.forwarder";
/// Every EventBridge event's DetailType; the pipeline template's rule matches exactly this.
pub const DETAIL_TYPE: &str = "MongoDB change event";

/// At most this many entries in one EventBridge PutEvents call.
pub const EVENTBRIDGE_MAX_ENTRIES: usize = 10;
/// EventBridge's "less than 256 KB", for one entry and for the entries of one call together:
/// an entry counts as [`EVENTBRIDGE`]'s `entry_overhead` plus its Detail, both UTF-8 bytes.
pub const EVENTBRIDGE_MAX_BYTES: usize = 256 * 1024 - 1;

/// What one target accepts in one call, and how it counts an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The service, for messages.
    pub target: &'static str,
    /// What an entry's size is made of, for messages.
    pub counted: &'static str,
    /// Entries per call.
    pub max_entries: usize,
    /// Bytes of all entries of one call together, counted as [`Limits::entry_size`].
    pub max_call_bytes: usize,
    /// Bytes of one entry, counted as [`Limits::entry_size`].
    pub max_entry_bytes: usize,
    /// Bytes every entry carries besides its data (EventBridge's Source and DetailType).
    pub entry_overhead: usize,
    /// Whether the partition key is sent (and so counted): Kinesis yes, EventBridge no.
    pub counts_partition_key: bool,
    /// Data limit of a reader downstream (Firehose reading the stream), if any.
    pub max_data_bytes: Option<usize>,
}

/// Kinesis PutRecords.
pub const KINESIS: Limits = Limits {
    target: "Kinesis",
    counted: "data plus partition key",
    max_entries: MAX_RECORDS,
    max_call_bytes: MAX_BATCH_BYTES,
    max_entry_bytes: MAX_RECORD_BYTES,
    entry_overhead: 0,
    counts_partition_key: true,
    max_data_bytes: Some(FIREHOSE_MAX_RECORD_DATA),
};

/// EventBridge PutEvents, as "Calculating PutEvents event entry size" in the EventBridge user
/// guide counts an entry: Source, DetailType and Detail as UTF-8 bytes, plus 14 for Time and
/// each of Resources when given. The forwarder sets neither Time nor Resources, so an entry is
/// the two fixed strings plus the Detail; the partition key is not sent. The guide's "less than
/// 256KB" is taken as at most 256 KiB - 1 bytes, per entry and per call.
pub const EVENTBRIDGE: Limits = Limits {
    target: "EventBridge",
    counted: "Detail plus Source and DetailType",
    max_entries: EVENTBRIDGE_MAX_ENTRIES,
    max_call_bytes: EVENTBRIDGE_MAX_BYTES,
    max_entry_bytes: EVENTBRIDGE_MAX_BYTES,
    entry_overhead: SOURCE.len() + DETAIL_TYPE.len(),
    counts_partition_key: false,
    max_data_bytes: None,
};

impl Limits {
    /// What `entry` counts against the entry and call limits.
    pub fn entry_size(&self, entry: &Entry) -> usize {
        let key = if self.counts_partition_key {
            entry.partition_key.len()
        } else {
            0
        };
        self.entry_overhead + entry.data.len() + key
    }

    /// Check an entry against the per-entry limits.
    pub fn check(&self, entry: &Entry) -> Result<(), RecordError> {
        let size = self.entry_size(entry);
        if size > self.max_entry_bytes {
            return Err(RecordError::TooLarge {
                size,
                counted: self.counted,
                target: self.target,
                limit: self.max_entry_bytes,
            });
        }
        if let Some(limit) = self.max_data_bytes.filter(|l| entry.data.len() > *l) {
            return Err(RecordError::TooLargeForFirehose {
                size: entry.data.len(),
                limit,
            });
        }
        Ok(())
    }
}

/// One record to put.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The record's data.
    pub data: Vec<u8>,
    /// Its partition key.
    pub partition_key: String,
}

/// Why a record can never be put.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The record is larger than the target accepts.
    #[error("record is {size} bytes ({counted}), over the {target} limit of {limit}")]
    TooLarge {
        /// The entry as the target counts it, bytes.
        size: usize,
        /// What was counted.
        counted: &'static str,
        /// The service.
        target: &'static str,
        /// Its limit, bytes.
        limit: usize,
    },
    /// The record's data is larger than Firehose delivers.
    #[error("record data is {size} bytes, over the Firehose limit of {limit} for one record: the stream would take it, but Firehose could never deliver it")]
    TooLargeForFirehose {
        /// Data, bytes.
        size: usize,
        /// Firehose's limit, bytes.
        limit: usize,
    },
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

/// Entries waiting for one call to the target.
#[derive(Debug)]
pub struct Batch {
    limits: Limits,
    entries: Vec<Entry>,
    bytes: usize,
}

impl Batch {
    /// An empty batch for a target with these limits.
    pub fn new(limits: Limits) -> Self {
        Batch {
            limits,
            entries: Vec::new(),
            bytes: 0,
        }
    }

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
        self.entries.len() < self.limits.max_entries
            && self.bytes + self.limits.entry_size(entry) <= self.limits.max_call_bytes
    }

    /// Whether no further record can be added.
    pub fn is_full(&self) -> bool {
        self.entries.len() >= self.limits.max_entries || self.bytes >= self.limits.max_call_bytes
    }

    /// Add `entry` (the caller checked [`Batch::fits`]).
    pub fn push(&mut self, entry: Entry) {
        self.bytes += self.limits.entry_size(&entry);
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
        let mut b = Batch::new(KINESIS);
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
        assert!(KINESIS.check(&entry(FIREHOSE_MAX_RECORD_DATA)).is_ok());
        assert_eq!(
            KINESIS.check(&entry(FIREHOSE_MAX_RECORD_DATA + 1)),
            Err(RecordError::TooLargeForFirehose {
                size: FIREHOSE_MAX_RECORD_DATA + 1,
                limit: FIREHOSE_MAX_RECORD_DATA
            })
        );
        assert_eq!(
            KINESIS.check(&entry(MAX_RECORD_BYTES)),
            Err(RecordError::TooLarge {
                size: MAX_RECORD_BYTES + 1,
                counted: "data plus partition key",
                target: "Kinesis",
                limit: MAX_RECORD_BYTES
            })
        );
    }

    // An EventBridge batch closes at 10 entries, or when the next entry would take the call to
    // 256 KiB; the partition key is not counted, Source and DetailType are.
    #[test]
    fn eventbridge_batch_limits() {
        let overhead = EVENTBRIDGE.entry_overhead;
        assert_eq!(
            overhead,
            "sensehat-monitor.forwarder".len() + "MongoDB change event".len()
        );
        assert_eq!(EVENTBRIDGE.entry_size(&entry(100)), 100 + overhead);
        let mut b = Batch::new(EVENTBRIDGE);
        for _ in 0..EVENTBRIDGE_MAX_ENTRIES {
            assert!(b.fits(&entry(10)));
            b.push(entry(10));
        }
        assert!(b.is_full() && !b.fits(&entry(1)));
        assert_eq!(b.take().len(), 10);
        // Three entries of 100 KiB: the third would pass 256 KiB for the call.
        let big = 100 * 1024 - overhead;
        b.push(entry(big));
        b.push(entry(big));
        assert!(!b.is_full() && !b.fits(&entry(big)));
        assert!(b.fits(&entry(EVENTBRIDGE_MAX_BYTES - 2 * 100 * 1024 - overhead)));
    }

    // An EventBridge entry of 256 KiB - 1 bytes with Source and DetailType is taken; one byte
    // more is refused (to the dead letters); Firehose's data limit does not apply.
    #[test]
    fn eventbridge_entry_limit() {
        let most = EVENTBRIDGE_MAX_BYTES - EVENTBRIDGE.entry_overhead;
        assert!(EVENTBRIDGE.check(&entry(most)).is_ok());
        assert_eq!(
            EVENTBRIDGE.check(&entry(most + 1)),
            Err(RecordError::TooLarge {
                size: EVENTBRIDGE_MAX_BYTES + 1,
                counted: "Detail plus Source and DetailType",
                target: "EventBridge",
                limit: EVENTBRIDGE_MAX_BYTES
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
