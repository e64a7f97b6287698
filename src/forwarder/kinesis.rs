//! The Kinesis side: a small trait over PutRecords (the real SDK client, or a test wrapper
//! that fails chosen entries, since no emulator can throttle), and [`put_all`], which resends
//! the failed entries (with the later ones of their partition keys, `resend_set`) with
//! exponential back-off and jitter until every one is accepted.

use std::future::Future;
use std::time::Duration;

use aws_sdk_kinesis::config::http::HttpResponse;
use aws_sdk_kinesis::error::{DisplayErrorContext, SdkError};
use aws_sdk_kinesis::operation::put_records::PutRecordsError;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use backon::BackoffBuilder;
use tracing::{error, info, warn};

use super::batch::Entry;

/// First delay before resending failed entries.
pub const RETRY_MIN_DELAY: Duration = Duration::from_millis(100);
/// Longest delay between resends; throttling slows the forwarder to about this pace.
pub const RETRY_MAX_DELAY: Duration = Duration::from_secs(5);

/// A PutRecords call that failed as a whole.
#[derive(Debug, Clone, thiserror::Error)]
pub enum KinesisError {
    /// Retrying cannot help: the stream does not exist, access is denied, or the request is invalid.
    #[error("Kinesis refused the request: {0}")]
    Fatal(String),
    /// Throttling, a network error or a server error: worth trying again.
    #[error("Kinesis is unavailable: {0}")]
    Transient(String),
    /// [`put_all`] was told to stop before Kinesis accepted every entry.
    #[error("stopped before Kinesis accepted every record")]
    Interrupted,
}

/// What a PutRecords call did with each entry, by position: `None` accepted, `Some(reason)` failed.
pub type EntryResults = Vec<Option<String>>;

/// PutRecords, and nothing else the forwarder needs.
pub trait Kinesis: Send + Sync {
    fn put_records(
        &self,
        stream: &str,
        entries: &[Entry],
    ) -> impl Future<Output = Result<EntryResults, KinesisError>> + Send;
}

/// The AWS SDK client: credentials and region from the standard chain (environment, profile,
/// instance role), and an optional endpoint URL for an emulator.
#[derive(Clone, Debug)]
pub struct AwsKinesis {
    pub client: aws_sdk_kinesis::Client,
}

impl AwsKinesis {
    /// The client, once [`client_from_env`] found a region and credentials.
    pub async fn from_env(endpoint_url: Option<&str>) -> Result<Self, String> {
        Ok(AwsKinesis {
            client: client_from_env(endpoint_url).await?,
        })
    }
}

/// Longest a single Kinesis request may take, and one call with the SDK's own retries: the SDK
/// sets only a connect timeout, so a half-open connection would hang a call for good.
/// PutRecords and GetRecords answer in well under a second; GetRecords returns at most 10 MB.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(20);
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A Kinesis client from the standard AWS chain, with an optional endpoint override. Fails, with
/// what to set, when the chain yields no region, or no credentials for [`CREDENTIALS_WAIT`]: the
/// SDK would report either only at the first call, and on every call after it, which on a quiet
/// collection is long after start-up. The wait is for an instance or task role whose metadata
/// service does not answer yet at boot (the SDK reports that as "not loaded" too); other
/// failures to fetch credentials are only warned about: they can pass.
pub async fn client_from_env(
    endpoint_url: Option<&str>,
) -> Result<aws_sdk_kinesis::Client, String> {
    let timeouts = aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(5))
        .operation_attempt_timeout(ATTEMPT_TIMEOUT)
        .operation_timeout(CALL_TIMEOUT)
        .build();
    let mut loader =
        aws_config::defaults(aws_config::BehaviorVersion::latest()).timeout_config(timeouts);
    if let Some(url) = endpoint_url {
        loader = loader.endpoint_url(url);
    }
    let config = loader.load().await;
    check_config(&config).await?;
    Ok(aws_sdk_kinesis::Client::new(&config))
}

/// How long [`check_config`] keeps asking for credentials that are not there.
pub const CREDENTIALS_WAIT: Duration = Duration::from_secs(16);

/// The checks of [`client_from_env`] on a loaded configuration.
pub async fn check_config(config: &aws_config::SdkConfig) -> Result<(), String> {
    use aws_credential_types::provider::error::CredentialsError;
    use aws_sdk_kinesis::config::ProvideCredentials;
    if config.region().is_none() {
        return Err(
            "no AWS region is set: set AWS_REGION (for example AWS_REGION=eu-west-1, \
                    the region of the Kinesis stream), or a region in the AWS profile"
                .into(),
        );
    }
    const NO_CREDENTIALS: &str = "no AWS credentials were found: set AWS_ACCESS_KEY_ID and \
        AWS_SECRET_ACCESS_KEY, name a profile with AWS_PROFILE, or run where an instance or task \
        role provides them";
    let Some(provider) = config.credentials_provider() else {
        return Err(NO_CREDENTIALS.into());
    };
    let give_up = tokio::time::Instant::now() + CREDENTIALS_WAIT;
    let mut pause = Duration::from_secs(1);
    let outcome = loop {
        match provider.provide_credentials().await {
            Err(CredentialsError::CredentialsNotLoaded(_))
                if tokio::time::Instant::now() + pause < give_up =>
            {
                if pause == Duration::from_secs(1) {
                    warn!(
                        "no AWS credentials found yet; trying again for {} s",
                        CREDENTIALS_WAIT.as_secs()
                    );
                }
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
            other => break other,
        }
    };
    match outcome {
        Ok(_) => Ok(()),
        Err(CredentialsError::CredentialsNotLoaded(_)) => Err(NO_CREDENTIALS.into()),
        Err(e @ CredentialsError::InvalidConfiguration(_)) => Err(format!(
            "the AWS credentials are misconfigured: {}",
            DisplayErrorContext(&e)
        )),
        Err(e) => {
            warn!(error = %DisplayErrorContext(&e), "cannot fetch AWS credentials yet; carrying on, and Kinesis calls will retry");
            Ok(())
        }
    }
}

/// Error codes AWS answers for credentials it refuses. Modelled as no particular PutRecords
/// error, they would otherwise be retried for ever; exiting non-zero instead shows the fault,
/// and a supervisor's restart loads the credentials afresh.
const REFUSED_CREDENTIALS: &[&str] = &[
    "UnrecognizedClientException",
    "InvalidSignatureException",
    "IncompleteSignature",
    "MissingAuthenticationToken",
    "InvalidClientTokenId",
    "ExpiredTokenException",
    "AccessDeniedException",
];

/// Whether a failed PutRecords call can never succeed as configured.
fn is_fatal(e: &SdkError<PutRecordsError, HttpResponse>) -> bool {
    use aws_sdk_kinesis::error::ProvideErrorMetadata;
    match e {
        // The request could not even be built: a configuration fault.
        SdkError::ConstructionFailure(_) => true,
        SdkError::ServiceError(s) => {
            matches!(
                s.err(),
                PutRecordsError::ResourceNotFoundException(_)
                    | PutRecordsError::AccessDeniedException(_)
                    | PutRecordsError::InvalidArgumentException(_)
                    | PutRecordsError::KmsDisabledException(_)
                    | PutRecordsError::KmsInvalidStateException(_)
                    | PutRecordsError::KmsNotFoundException(_)
                    | PutRecordsError::KmsAccessDeniedException(_)
                    | PutRecordsError::KmsOptInRequired(_)
            ) || s
                .err()
                .code()
                .is_some_and(|c| REFUSED_CREDENTIALS.contains(&c))
        }
        _ => false,
    }
}

impl Kinesis for AwsKinesis {
    async fn put_records(
        &self,
        stream: &str,
        entries: &[Entry],
    ) -> Result<EntryResults, KinesisError> {
        let mut records = Vec::with_capacity(entries.len());
        for e in entries {
            let record = PutRecordsRequestEntry::builder()
                .data(Blob::new(e.data.clone()))
                .partition_key(&e.partition_key)
                .build()
                .map_err(|e| KinesisError::Fatal(e.to_string()))?;
            records.push(record);
        }
        let output = self
            .client
            .put_records()
            .stream_name(stream)
            .set_records(Some(records))
            .send()
            .await
            .map_err(|e| {
                let text = DisplayErrorContext(&e).to_string();
                if is_fatal(&e) {
                    KinesisError::Fatal(text)
                } else {
                    KinesisError::Transient(text)
                }
            })?;
        let results: EntryResults = output
            .records()
            .iter()
            .map(|r| {
                r.error_code()
                    .map(|code| format!("{code}: {}", r.error_message().unwrap_or("")))
            })
            .collect();
        if results.len() != entries.len() {
            return Err(KinesisError::Transient(format!(
                "PutRecords answered {} results for {} records",
                results.len(),
                entries.len()
            )));
        }
        Ok(results)
    }
}

/// What it took to put one batch.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PutStats {
    /// PutRecords calls made, including resends.
    pub calls: u32,
    /// Entries resent after a partial failure (an entry resent twice counts twice).
    pub resent: u64,
}

/// The resend schedule: exponential from [`RETRY_MIN_DELAY`] to [`RETRY_MAX_DELAY`], with jitter,
/// never giving up (throttling must slow the forwarder down, not stop it).
pub fn backoff() -> impl Iterator<Item = Duration> {
    backon::ExponentialBuilder::default()
        .with_min_delay(RETRY_MIN_DELAY)
        .with_max_delay(RETRY_MAX_DELAY)
        .with_jitter()
        .without_max_times()
        .build()
}

/// What to send again after a call that failed some entries: each failed entry, and every
/// later entry with the same partition key even when it was accepted. Kinesis keeps a key's
/// records in the order they were accepted; resending only a failed A1 would land it after an
/// accepted A2, and with updates forwarded the endpoint's replace by `_id` would then keep the
/// older document. Sending A2 again after A1 restores the order (a duplicate, which delivery at
/// least once already allows). `reason` gets the first failure's reason.
fn resend_set(
    entries: Vec<Entry>,
    results: EntryResults,
    reason: &mut Option<String>,
) -> Vec<Entry> {
    let mut blocked: std::collections::HashSet<String> = std::collections::HashSet::new();
    entries
        .into_iter()
        .zip(results)
        .filter_map(|(e, r)| match r {
            Some(why) => {
                reason.get_or_insert(why);
                blocked.insert(e.partition_key.clone());
                Some(e)
            }
            None if blocked.contains(&e.partition_key) => Some(e),
            None => None,
        })
        .collect()
}

/// How often a put that keeps failing is reported again, at error level.
pub const STUCK_REPORT_EVERY: Duration = Duration::from_secs(60);

/// Reports a failure that goes on: the first one is a warning where it happens; from
/// [`STUCK_REPORT_EVERY`] on, an error every [`STUCK_REPORT_EVERY`], so a fault that never
/// clears (a network path gone, a throttle that never lifts) is never silent.
pub(crate) struct Trouble {
    since: tokio::time::Instant,
    reported: tokio::time::Instant,
    what: &'static str,
}

impl Trouble {
    /// Trouble beginning now; `what` is the error line's message.
    pub(crate) fn new(what: &'static str) -> Self {
        let now = tokio::time::Instant::now();
        Trouble {
            since: now,
            reported: now,
            what,
        }
    }

    /// It failed again, with `error`.
    pub(crate) fn still(&mut self, error: &str) {
        if self.reported.elapsed() >= STUCK_REPORT_EVERY {
            self.reported = tokio::time::Instant::now();
            error!(
                failing_for_s = self.since.elapsed().as_secs(),
                error, "{}", self.what
            );
        }
    }
}

/// Put every entry, resending the failed ones (see `resend_set`), until all are accepted. Returns early on a
/// fatal error, or with [`KinesisError::Interrupted`] when `interrupt` resolves first (a call in
/// flight is abandoned: its entries may or may not have been accepted).
pub async fn put_all<K: Kinesis>(
    kinesis: &K,
    stream: &str,
    entries: Vec<Entry>,
    interrupt: impl Future<Output = ()>,
) -> Result<PutStats, KinesisError> {
    tokio::pin!(interrupt);
    let mut pending = entries;
    let mut stats = PutStats::default();
    let mut delays = backoff();
    let mut troubled = false;
    let mut trouble = Trouble::new("Kinesis has not accepted this batch yet; still retrying, and nothing after it is forwarded until it is accepted");
    while !pending.is_empty() {
        stats.calls += 1;
        let put = tokio::select! {
            r = kinesis.put_records(stream, &pending) => r,
            () = &mut interrupt => return Err(KinesisError::Interrupted),
        };
        match put {
            Ok(results) => {
                let total = pending.len();
                let mut reason = None;
                pending = resend_set(pending, results, &mut reason);
                if pending.is_empty() {
                    break;
                }
                stats.resent += pending.len() as u64;
                trouble.still(reason.as_deref().unwrap_or(""));
                if !troubled {
                    warn!(
                        failed = pending.len(),
                        of = total,
                        reason = reason.as_deref().unwrap_or(""),
                        "PutRecords failed some records; resending those (and later records with the same partition key, to keep their order), with back-off"
                    );
                    troubled = true;
                }
            }
            Err(e @ (KinesisError::Fatal(_) | KinesisError::Interrupted)) => return Err(e),
            Err(KinesisError::Transient(e)) => {
                trouble.still(&e);
                if !troubled {
                    warn!(error = %e, "PutRecords failed; retrying with back-off");
                    troubled = true;
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(delays.next().unwrap_or(RETRY_MAX_DELAY)) => {}
            () = &mut interrupt => return Err(KinesisError::Interrupted),
        }
    }
    if troubled {
        info!(
            calls = stats.calls,
            "PutRecords accepted every record again"
        );
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Fails the entries whose data is listed, once each.
    struct FailOnce {
        fail: Mutex<Vec<Vec<u8>>>,
        calls: Mutex<Vec<Vec<Vec<u8>>>>,
    }

    impl Kinesis for FailOnce {
        async fn put_records(
            &self,
            _: &str,
            entries: &[Entry],
        ) -> Result<EntryResults, KinesisError> {
            self.calls
                .lock()
                .unwrap()
                .push(entries.iter().map(|e| e.data.clone()).collect());
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

    impl Kinesis for AlwaysThrottled {
        async fn put_records(
            &self,
            _: &str,
            entries: &[Entry],
        ) -> Result<EntryResults, KinesisError> {
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

    // A put that never succeeds is warned about once, then reported as an error once a minute
    // with how long it has failed: never silent, never a line per retry.
    #[tokio::test(start_paused = true)]
    async fn a_put_that_keeps_failing_is_reported_once_a_minute() {
        let buf = std::sync::Arc::new(Mutex::new(Vec::new()));
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || Captured(writer.clone()))
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let interrupt = tokio::time::sleep(Duration::from_secs(200));
        let r = put_all(&AlwaysThrottled, "s", vec![entry("a")], interrupt).await;
        assert!(matches!(r, Err(KinesisError::Interrupted)), "{r:?}");
        let log = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
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

    // Resending never gives up by itself, but stops when told to (a shutdown), with
    // Interrupted rather than success.
    #[tokio::test(start_paused = true)]
    async fn resending_stops_when_interrupted() {
        let interrupt = tokio::time::sleep(Duration::from_secs(60));
        let r = put_all(&AlwaysThrottled, "s", vec![entry("a")], interrupt).await;
        assert!(matches!(r, Err(KinesisError::Interrupted)), "{r:?}");
    }

    // After a partial failure a key's accepted entries that came after its failed one are sent
    // again with it, in order; other keys' accepted entries are not.
    #[tokio::test(start_paused = true)]
    async fn resends_keep_each_keys_order() {
        let k = FailOnce {
            fail: Mutex::new(vec![b"a1".to_vec(), b"b2".to_vec()]),
            calls: Mutex::new(Vec::new()),
        };
        let stats = put_all(
            &k,
            "s",
            ["a1", "b1", "a2", "c1", "b2", "a3", "b3"]
                .map(entry)
                .to_vec(),
            std::future::pending(),
        )
        .await
        .unwrap();
        let calls = k.calls.lock().unwrap();
        let resent: Vec<&[u8]> = calls[1].iter().map(|d| d.as_slice()).collect();
        assert_eq!(resent, [&b"a1"[..], b"a2", b"b2", b"a3", b"b3"]);
        assert_eq!(
            stats,
            PutStats {
                calls: 2,
                resent: 5
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
        )
        .await
        .unwrap();
        assert_eq!(
            stats,
            PutStats {
                calls: 2,
                resent: 2
            }
        );
        let calls = k.calls.lock().unwrap();
        assert_eq!(calls[1], vec![b"b".to_vec(), b"d".to_vec()]);
    }

    // The back-off grows, has jitter, stays within the cap, and never ends.
    #[test]
    fn backoff_is_bounded_and_endless() {
        let delays: Vec<Duration> = backoff().take(50).collect();
        assert_eq!(delays.len(), 50);
        assert!(delays
            .iter()
            .all(|d| *d >= RETRY_MIN_DELAY && *d <= RETRY_MAX_DELAY * 2));
        assert!(delays[10] >= RETRY_MAX_DELAY);
    }
}
