//! The tests of [`put_all`](super::put_all): in-memory targets that fail, throttle or refuse
//! entries, under a paused clock, with the log captured where a test is about what is said.

use super::*;
use crate::forwarder::batch::Limits;
use std::sync::Mutex;

/// Keep the data of a call's entries in `calls`.
fn record(calls: &Mutex<Vec<Vec<Vec<u8>>>>, entries: &[Entry]) {
    calls
        .lock()
        .unwrap()
        .push(entries.iter().map(|e| e.data.clone()).collect());
}

/// Fails the entries whose data is listed, once each.
struct FailOnce {
    fail: Mutex<Vec<Vec<u8>>>,
    calls: Mutex<Vec<Vec<Vec<u8>>>>,
}

impl Target for FailOnce {
    const LIMITS: Limits = crate::forwarder::batch::EVENTBRIDGE;
    const API: &'static str = "PutEvents";
    async fn put(&self, _: &str, entries: &[Entry]) -> Result<EntryResults, PutError> {
        record(&self.calls, entries);
        let mut fail = self.fail.lock().unwrap();
        Ok(entries
            .iter()
            .map(|e| {
                let pos = fail.iter().position(|f| *f == e.data)?;
                fail.remove(pos);
                Some("ProvisionedThroughputExceededException: slow down".to_owned())
            })
            .collect())
    }
}

/// An entry keyed by its data's first character: "a1" and "a2" share a key.
fn entry(s: &str) -> Entry {
    Entry {
        data: s.as_bytes().to_vec(),
        partition_key: s[..1].into(),
    }
}

/// Fails every entry, every time (a stream throttled for good).
struct AlwaysThrottled;

impl Target for AlwaysThrottled {
    const LIMITS: Limits = crate::forwarder::batch::KINESIS;
    const API: &'static str = "PutRecords";
    async fn put(&self, _: &str, entries: &[Entry]) -> Result<EntryResults, PutError> {
        Ok(vec![
            Some("ProvisionedThroughputExceededException".into());
            entries.len()
        ])
    }
}

/// A log writer into a shared buffer, for a test's own subscriber.
struct Captured(std::sync::Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Log into a buffer until the guard is dropped: the buffer, and the guard.
fn capture_log() -> (
    std::sync::Arc<Mutex<Vec<u8>>>,
    tracing::subscriber::DefaultGuard,
) {
    let buf = std::sync::Arc::new(Mutex::new(Vec::new()));
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || Captured(writer.clone()))
        .finish();
    (buf, tracing::subscriber::set_default(subscriber))
}

/// What was logged into `buf`.
fn logged(buf: &Mutex<Vec<u8>>) -> String {
    String::from_utf8(buf.lock().unwrap().clone()).unwrap()
}

/// The whole seconds a line gives as `field=`.
fn seconds(line: &str, field: &str) -> u64 {
    let at = line.find(&format!("{field}=")).expect(line) + field.len() + 1;
    let digits: String = line[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().expect(line)
}

// A put that never succeeds is warned about once, then reported as an error once a minute
// with how long it has failed: never silent, never a line per retry.
#[tokio::test(start_paused = true)]
async fn a_put_that_keeps_failing_is_reported_once_a_minute() {
    let (buf, _guard) = capture_log();
    // The n-th error comes at the first retry 60 s or more after the last line, and a
    // retry waits at most 10 s: the third between 180 and 210 s, the fourth from 240 s.
    throttled_until_interrupted(Duration::from_secs(225)).await;
    let log = logged(&buf);
    assert_eq!(
        log.matches("PutRecords failed some records").count(),
        1,
        "{log}"
    );
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("Kinesis has not accepted this batch yet"))
        .collect();
    assert_eq!(errors.len(), 3, "{log}");
    assert!(errors[0].contains("failing_for_s=6"), "{}", errors[0]);
}

/// Throttles the first entry of each batch at the batch's first call until `until`, as a
/// target near its capacity does: every batch is accepted at its second call.
struct ThrottlesEachBatch {
    until: tokio::time::Instant,
    /// The first entries of the calls so far.
    seen: Mutex<std::collections::HashSet<Vec<u8>>>,
}

impl Target for ThrottlesEachBatch {
    const LIMITS: Limits = crate::forwarder::batch::EVENTBRIDGE;
    const API: &'static str = "PutEvents";
    async fn put(&self, _: &str, entries: &[Entry]) -> Result<EntryResults, PutError> {
        let first_call = self.seen.lock().unwrap().insert(entries[0].data.clone());
        let throttle = first_call && tokio::time::Instant::now() < self.until;
        Ok((0..entries.len())
            .map(|i| (throttle && i == 0).then(|| "ThrottlingException: Rate exceeded".into()))
            .collect())
    }
}

// With every batch throttled once for 4 minutes (up to 8 puts in flight, as to EventBridge), the
// forwarder warns once, reminds at most once a minute with the calls failed meanwhile, and
// says the end once, after the throttling stopped: not a pair of lines per batch.
#[tokio::test(start_paused = true)]
async fn steady_throttling_is_said_once_for_all_batches() {
    use futures_util::stream::StreamExt;
    let (buf, _guard) = capture_log();
    let start = tokio::time::Instant::now();
    let throttled_for = Duration::from_secs(240);
    let target = ThrottlesEachBatch {
        until: start + throttled_for,
        seen: Mutex::new(Default::default()),
    };
    let (metrics, resends) = (Metrics::default(), Failures::default());
    // A batch every 40 ms for 5 minutes, put as soon as fewer than 8 are in flight.
    let puts = (0..7500u32).map(|i| {
        let (target, metrics, resends) = (&target, &metrics, &resends);
        async move {
            tokio::time::sleep_until(start + Duration::from_millis(40 * u64::from(i))).await;
            let batch = vec![entry(&format!("a{i}")), entry(&format!("b{i}"))];
            let r = put_all(
                target,
                "bus",
                batch,
                std::future::pending(),
                metrics,
                resends,
            );
            r.await.unwrap().calls
        }
    });
    let calls: Vec<u32> = futures_util::stream::iter(puts).buffered(8).collect().await;
    assert_eq!(calls[..6000], [2; 6000], "throttled once each");
    assert_eq!(calls[6000..], [1; 1500]);
    let log = logged(&buf);
    let lines = |text: &str| -> Vec<&str> { log.lines().filter(|l| l.contains(text)).collect() };
    assert_eq!(lines("PutEvents failed some records").len(), 1, "{log}");
    let reminders = lines("PutEvents still failing some calls or records");
    assert!((3..=4).contains(&reminders.len()), "{log}");
    let mut said_at = 0;
    for r in reminders {
        assert!(r.contains(" WARN "), "{r}");
        let at = seconds(r, "failing_for_s");
        assert!(at >= said_at + 60, "a minute after the last line: {r}");
        assert!(seconds(r, "failed_calls") > 1000, "{r}");
        said_at = at;
    }
    let ended = lines("PutEvents accepted every record again");
    assert_eq!(ended.len(), 1, "{log}");
    // Once none failed for RESENDS_QUIET after the throttling stopped, at the next batch.
    let lasted = seconds(ended[0], "failed_for_s");
    assert!((240..=251).contains(&lasted), "{}", ended[0]);
    assert!(lines("has not accepted this batch yet").is_empty(), "{log}");
}

// A throttled batch, then nothing for an hour (the changes stopped), then another: the second
// begins a failure of its own, after the first's end, rather than going on with one an hour old.
#[tokio::test(start_paused = true)]
async fn a_failure_after_a_long_quiet_begins_anew() {
    let (buf, _guard) = capture_log();
    let target = FailOnce {
        fail: Mutex::new(vec![b"a1".to_vec(), b"a2".to_vec()]),
        calls: Mutex::new(Vec::new()),
    };
    let (metrics, resends) = (Metrics::default(), Failures::default());
    for e in ["a1", "a2"] {
        let put = put_all(
            &target,
            "s",
            vec![entry(e)],
            std::future::pending(),
            &metrics,
            &resends,
        );
        assert_eq!(put.await.unwrap().calls, 2);
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    let log = logged(&buf);
    let lines = |text: &str| log.lines().filter(|l| l.contains(text)).count();
    assert_eq!(lines("PutEvents failed some records"), 2, "{log}");
    assert_eq!(lines("still failing"), 0, "{log}");
    assert_eq!(
        lines("accepted every record again failed_for_s=0"),
        1,
        "{log}"
    );
}

// Resending never gives up by itself, but stops when told to (a shutdown), with
// Interrupted rather than success.
#[tokio::test(start_paused = true)]
async fn resending_stops_when_interrupted() {
    throttled_until_interrupted(Duration::from_secs(60)).await;
}

/// Put one entry to a target that throttles every call, interrupted after `after`: the put
/// must end Interrupted.
async fn throttled_until_interrupted(after: Duration) {
    let r = put_all(
        &AlwaysThrottled,
        "s",
        vec![entry("a")],
        tokio::time::sleep(after),
        &Metrics::default(),
        &Failures::default(),
    )
    .await;
    assert!(matches!(r, Err(PutError::Interrupted)), "{r:?}");
}

// After a partial failure a key's accepted entries that came after its failed one are sent
// again with it, in order; other keys' accepted entries are not.
#[tokio::test(start_paused = true)]
async fn resends_keep_each_keys_order() {
    let k = FailOnce {
        fail: Mutex::new(vec![b"a1".to_vec(), b"b2".to_vec()]),
        calls: Mutex::new(Vec::new()),
    };
    let metrics = Metrics::default();
    let stats = put_all(
        &k,
        "s",
        ["a1", "b1", "a2", "c1", "b2", "a3", "b3"]
            .map(entry)
            .to_vec(),
        std::future::pending(),
        &metrics,
        &Failures::default(),
    )
    .await
    .unwrap();
    // Accepted are counted each time, as they are in the stream each time: 5 then 5.
    assert_eq!(
        (
            metrics.records_put.get(),
            metrics.failed_entries.get(),
            metrics.retries.get()
        ),
        (10, 2, 1)
    );
    let calls = k.calls.lock().unwrap();
    let resent: Vec<&[u8]> = calls[1].iter().map(|d| d.as_slice()).collect();
    assert_eq!(resent, [&b"a1"[..], b"a2", b"b2", b"a3", b"b3"]);
    assert_eq!(
        stats,
        PutStats {
            calls: 2,
            resent: 5,
            refused: vec![]
        }
    );
}

// Only the failed entries are sent again, in order, until all are accepted, when no later
// entry shares a failed one's key.
#[tokio::test(start_paused = true)]
async fn resends_only_failed_entries() {
    let k = FailOnce {
        fail: Mutex::new(vec![b"b".to_vec(), b"d".to_vec()]),
        calls: Mutex::new(Vec::new()),
    };
    let stats = put_all(
        &k,
        "s",
        ["a", "b", "c", "d"].map(entry).to_vec(),
        std::future::pending(),
        &Metrics::default(),
        &Failures::default(),
    )
    .await
    .unwrap();
    assert_eq!(
        stats,
        PutStats {
            calls: 2,
            resent: 2,
            refused: vec![]
        }
    );
    let calls = k.calls.lock().unwrap();
    assert_eq!(calls[1], vec![b"b".to_vec(), b"d".to_vec()]);
}

// Through an in-memory target with EventBridge's limits, 25 entries go in calls of at most
// 10; an entry failed (an ErrorCode) is resent with its key's later entries, and every
// entry is accepted in the end.
#[tokio::test(start_paused = true)]
async fn eventbridge_batches_of_ten_with_resends() {
    use crate::forwarder::batch::Batch;
    let k = FailOnce {
        fail: Mutex::new(vec![b"a2".to_vec()]),
        calls: Mutex::new(Vec::new()),
    };
    let names: Vec<String> = (0..25)
        .map(|i| format!("{}{i}", ["a", "b"][i % 2]))
        .collect();
    let mut batch = Batch::new(FailOnce::LIMITS);
    let mut batches = Vec::new();
    for e in names.iter().map(|n| entry(n)) {
        if !batch.fits(&e) {
            batches.push(batch.take());
        }
        batch.push(e);
    }
    batches.push(batch.take());
    for b in batches {
        put_all(
            &k,
            "bus",
            b,
            std::future::pending(),
            &Metrics::default(),
            &Failures::default(),
        )
        .await
        .unwrap();
    }
    let calls = k.calls.lock().unwrap();
    let sizes: Vec<usize> = calls.iter().map(Vec::len).collect();
    // a2 failed in the first call: a2, a4, a6, a8 are resent, not b3.
    assert_eq!(sizes, [10, 4, 10, 5]);
    assert_eq!(
        calls[1],
        [&b"a2"[..], b"a4", b"a6", b"a8"].map(|d| d.to_vec())
    );
}

/// Fails the listed entries every time, each with its code; `Refused*` codes are refused
/// for good and `Denied*` ones are denied, as a target sorts its codes.
struct Answers {
    fail: Vec<(&'static [u8], &'static str)>,
    calls: Mutex<Vec<Vec<Vec<u8>>>>,
}

impl Target for Answers {
    const LIMITS: Limits = crate::forwarder::batch::EVENTBRIDGE;
    const API: &'static str = "PutEvents";
    async fn put(&self, _: &str, entries: &[Entry]) -> Result<EntryResults, PutError> {
        record(&self.calls, entries);
        Ok(entries
            .iter()
            .map(|e| {
                let (_, code) = self.fail.iter().find(|(d, _)| *d == e.data)?;
                Some(format!("{code}: no"))
            })
            .collect())
    }
    fn entry_failure(reason: &str) -> EntryFailure {
        if reason.starts_with("Refused") {
            EntryFailure::Refused
        } else if reason.starts_with("Denied") {
            EntryFailure::Denied
        } else {
            EntryFailure::Resend
        }
    }
}

// An entry refused for good is handed back with its place in the batch and never resent,
// holds back no later entry of its key, and is counted as refused, not as failed; the rest
// is accepted.
#[tokio::test(start_paused = true)]
async fn a_refused_entry_comes_back_and_the_rest_goes_on() {
    let t = Answers {
        fail: vec![(b"a2", "RefusedDetail")],
        calls: Mutex::new(Vec::new()),
    };
    let metrics = Metrics::default();
    let stats = put_all(
        &t,
        "bus",
        ["a1", "b1", "a2", "a3"].map(entry).to_vec(),
        std::future::pending(),
        &metrics,
        &Failures::default(),
    )
    .await
    .unwrap();
    assert_eq!(t.calls.lock().unwrap().len(), 1);
    assert_eq!(
        stats.refused,
        vec![Refused {
            position: 2,
            entry: entry("a2"),
            reason: "RefusedDetail: no".into()
        }]
    );
    assert_eq!((stats.calls, stats.resent), (1, 0));
    assert_eq!(
        (
            metrics.records_put.get(),
            metrics.failed_entries.get(),
            metrics.refused_entries.get()
        ),
        (3, 0, 1)
    );
}

// An entry the forwarder may not put ends the put at once, as a fatal error that says so,
// rather than being resent forever.
#[tokio::test(start_paused = true)]
async fn a_denied_entry_is_fatal_at_once() {
    let t = Answers {
        fail: vec![(b"b1", "Throttled"), (b"a2", "DeniedForSource")],
        calls: Mutex::new(Vec::new()),
    };
    let metrics = Metrics::default();
    let r = put_all(
        &t,
        "bus",
        ["a1", "b1", "a2"].map(entry).to_vec(),
        std::future::pending(),
        &metrics,
        &Failures::default(),
    )
    .await;
    // The throttled entry would have been resent; the denied one never is.
    assert_eq!(
        (metrics.failed_entries.get(), metrics.refused_entries.get()),
        (1, 1)
    );
    match r {
        Err(PutError::Fatal(why)) => {
            assert!(why.contains("DeniedForSource: no"), "{why}");
            assert!(why.contains("permission"), "{why}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(t.calls.lock().unwrap().len(), 1);
}
