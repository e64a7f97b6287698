//! The AWS side of the Kinesis seam: the SDK client ([`AwsKinesis`]) with credentials and
//! region from the standard chain, the checks that find a missing region or credentials at
//! start rather than at the first put (and of a stream name Kinesis would refuse), and the
//! sorting of failed PutRecords and PutEvents calls into "never works" and "try again".

use std::time::Duration;

use aws_sdk_kinesis::config::http::HttpResponse;
use aws_sdk_kinesis::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_kinesis::operation::describe_stream_summary::DescribeStreamSummaryError;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use tracing::warn;

use super::batch::{Entry, Limits, KINESIS};
use super::target::{entry_results, EntryResults, PutError, Target};

/// The AWS SDK client: credentials and region from the standard chain (environment, profile,
/// instance role), and an optional endpoint URL for an emulator.
#[derive(Clone, Debug)]
pub struct AwsKinesis {
    /// The SDK client, for calls beyond PutRecords.
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

/// One DescribeStreamSummary of `stream`, without the SDK's retries (a health check asks again
/// by itself), and what the status says: `None` when the stream is ACTIVE or UPDATING (readable
/// and writable), else why it cannot be used. The SDK's error is left to the caller to judge.
pub async fn describe_once(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
) -> Result<Option<String>, SdkError<DescribeStreamSummaryError, HttpResponse>> {
    use aws_sdk_kinesis::types::StreamStatus;
    let out = client
        .describe_stream_summary()
        .stream_name(stream)
        .customize()
        .config_override(
            aws_sdk_kinesis::config::Builder::default()
                .retry_config(aws_sdk_kinesis::config::retry::RetryConfig::disabled()),
        )
        .send()
        .await?;
    Ok(
        match out.stream_description_summary().map(|s| s.stream_status()) {
            Some(StreamStatus::Active | StreamStatus::Updating) => None,
            Some(status) => Some(format!("Kinesis stream {stream} is {status}")),
            None => Some("Kinesis answered DescribeStreamSummary without a summary".into()),
        },
    )
}

impl AwsKinesis {
    /// Whether `stream` can be reached, for `/readyz`: [`describe_once`]. A refusal of that call
    /// (AccessDenied: the forwarder's role needs only PutRecords) still shows that Kinesis
    /// answers and the credentials are known, so it counts as reachable; a stream that does not
    /// exist, or is not ACTIVE or UPDATING, does not.
    pub async fn reachable(&self, stream: &str) -> Result<(), String> {
        match describe_once(&self.client, stream).await {
            Ok(problem) => problem.map_or(Ok(()), Err),
            Err(e) => match e.as_service_error() {
                Some(DescribeStreamSummaryError::AccessDeniedException(_)) => Ok(()),
                Some(DescribeStreamSummaryError::ResourceNotFoundException(_)) => {
                    Err(format!("Kinesis stream {stream} does not exist"))
                }
                _ => Err(format!("Kinesis unreachable: {}", DisplayErrorContext(&e))),
            },
        }
    }
}

/// Longest a single Kinesis request may take, and one call with the SDK's own retries: the SDK
/// sets only a connect timeout, so a half-open connection would hang a call for good.
/// PutRecords and GetRecords answer in well under a second; GetRecords returns at most 10 MB.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest one call may take, the SDK's own retries included (see [`ATTEMPT_TIMEOUT`]).
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
    Ok(aws_sdk_kinesis::Client::new(
        &load_checked(endpoint_url).await?,
    ))
}

/// What `check-config` found of the AWS environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Environment {
    /// The region [`client_from_env`] would use.
    pub region: String,
    /// Whether credentials could be had.
    pub credentials: Credentials,
}

/// Whether [`check_config`] could fetch credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// They were there.
    Found,
    /// The chain names a source that did not answer (an instance role's metadata service,
    /// STS): the program starts anyway and its calls retry. Why, in the SDK's words.
    NotConfirmed(String),
}

impl std::fmt::Display for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Found => f.write_str("found"),
            Credentials::NotConfirmed(why) => write!(
                f,
                "not confirmed: they could not be fetched yet ({why}); the program starts anyway and retries"
            ),
        }
    }
}

/// The region [`client_from_env`] would use, and whether credentials could be had, once it has
/// checked that a region and credentials are set; for `check-config`. Nothing is sent to
/// Kinesis.
pub async fn check_environment(endpoint_url: Option<&str>) -> Result<Environment, String> {
    let (config, credentials) = load(endpoint_url).await?;
    Ok(Environment {
        region: config.region().map(ToString::to_string).unwrap_or_default(),
        credentials,
    })
}

/// The standard chain's configuration with the forwarder's timeouts, after [`check_config`].
pub(crate) async fn load_checked(
    endpoint_url: Option<&str>,
) -> Result<aws_config::SdkConfig, String> {
    Ok(load(endpoint_url).await?.0)
}

/// [`load_checked`], with what [`check_config`] found of the credentials.
async fn load(endpoint_url: Option<&str>) -> Result<(aws_config::SdkConfig, Credentials), String> {
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
    let credentials = check_config(&config).await?;
    Ok((config, credentials))
}

/// How long [`check_config`] keeps asking for credentials that are not there.
pub const CREDENTIALS_WAIT: Duration = Duration::from_secs(16);

/// The checks of [`client_from_env`] on a loaded configuration: an error when the program
/// cannot start, else whether credentials could be fetched now.
pub async fn check_config(config: &aws_config::SdkConfig) -> Result<Credentials, String> {
    use aws_credential_types::provider::error::CredentialsError;
    use aws_sdk_kinesis::config::ProvideCredentials;
    if config.region().is_none() {
        return Err(
            "no AWS region is set: set AWS_REGION (for example AWS_REGION=eu-west-1, \
                    the region of the Kinesis stream or event bus), or a region in the AWS profile"
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
        Ok(_) => Ok(Credentials::Found),
        Err(CredentialsError::CredentialsNotLoaded(_)) => Err(NO_CREDENTIALS.into()),
        Err(e @ CredentialsError::InvalidConfiguration(_)) => Err(format!(
            "the AWS credentials are misconfigured: {}",
            DisplayErrorContext(&e)
        )),
        Err(e) => {
            let why = DisplayErrorContext(&e).to_string();
            warn!(error = %why, "cannot fetch AWS credentials yet; carrying on, and Kinesis calls will retry");
            Ok(Credentials::NotConfirmed(why))
        }
    }
}

/// Error codes AWS answers for credentials it refuses. Modelled as no particular PutRecords
/// error, they would otherwise be retried for ever; exiting non-zero instead shows the fault,
/// and a supervisor's restart loads the credentials afresh.
pub(crate) const REFUSED_CREDENTIALS: &[&str] = &[
    "UnrecognizedClientException",
    "InvalidSignatureException",
    "IncompleteSignature",
    "MissingAuthenticationToken",
    "InvalidClientTokenId",
    "ExpiredTokenException",
    "AccessDeniedException",
];

/// Error codes of a whole PutRecords or PutEvents call that retrying cannot fix, beside
/// [`REFUSED_CREDENTIALS`]: one list for both targets, so that what stops one cannot drift
/// from what stops the other (a code only one service answers is never seen from the other).
const FATAL_CALL_CODES: &[&str] = &[
    // The stream or bus does not exist.
    "ResourceNotFoundException",
    // A request AWS's model refuses, such as a stream or bus name outside its pattern: the SDK
    // checks only that the required fields are there, so this comes back from every call.
    "ValidationException",
    // Kinesis: the request is invalid.
    "InvalidArgumentException",
    // EventBridge: the request is invalid.
    "InvalidArgument",
    "MalformedDetail",
    // Kinesis: the stream's KMS key cannot be used.
    "KMSAccessDeniedException",
    "KMSDisabledException",
    "KMSInvalidStateException",
    "KMSNotFoundException",
    "KMSOptInRequired",
];

/// Whether a failed PutRecords or PutEvents call can never succeed as configured: the request
/// could not even be built (a configuration fault), or the service answered one of
/// [`FATAL_CALL_CODES`] or [`REFUSED_CREDENTIALS`]. Anything else (throttling, a network
/// error, a server error) is worth trying again.
pub(crate) fn is_fatal<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> bool {
    match e {
        SdkError::ConstructionFailure(_) => true,
        SdkError::ServiceError(s) => s
            .err()
            .code()
            .is_some_and(|c| FATAL_CALL_CODES.contains(&c) || REFUSED_CREDENTIALS.contains(&c)),
        _ => false,
    }
}

/// The longest Kinesis stream name: the API reference's StreamName, length 1 to 128.
pub const STREAM_NAME_MAX: usize = 128;

/// Whether `name` is one Kinesis takes as a stream name: 1 to [`STREAM_NAME_MAX`] characters of
/// the API reference's pattern `[a-zA-Z0-9_.-]+` (StreamName, the same in every Kinesis
/// call). Checked at start: Kinesis answers any other name with a ValidationException at every
/// put, which on a quiet collection comes long after start. The usual cause is a comment after
/// the value in a systemd environment file, which systemd keeps as part of the value.
pub fn check_stream_name(name: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
    let why = if name.is_empty() {
        "it is empty".to_owned()
    } else if let Some(c) = name.chars().find(|c| !allowed(*c)) {
        format!("it holds {c:?}")
    } else if name.len() > STREAM_NAME_MAX {
        format!("it is {} characters long", name.len())
    } else {
        return Ok(());
    };
    let comment = if name.contains('#') || name.contains(char::is_whitespace) {
        "; in a systemd environment file a comment after the value is part of the value: put \
         comments on lines of their own"
    } else {
        ""
    };
    Err(format!(
        "not a Kinesis stream name: {why}, and Kinesis takes only names of 1 to \
         {STREAM_NAME_MAX} letters, digits, '_', '.' and '-'. Set KINESIS_STREAM_NAME (or \
         --stream-name) to the stream's name alone{comment}"
    ))
}

impl Target for AwsKinesis {
    const LIMITS: Limits = KINESIS;
    const API: &'static str = "PutRecords";

    async fn put(&self, stream: &str, entries: &[Entry]) -> Result<EntryResults, PutError> {
        let mut records = Vec::with_capacity(entries.len());
        for e in entries {
            let record = PutRecordsRequestEntry::builder()
                .data(Blob::new(e.data.clone()))
                .partition_key(&e.partition_key)
                .build()
                .map_err(|e| PutError::Fatal(e.to_string()))?;
            records.push(record);
        }
        let output = self
            .client
            .put_records()
            .stream_name(stream)
            .set_records(Some(records))
            .send()
            .await
            .map_err(|e| PutError::of_call(DisplayErrorContext(&e).to_string(), is_fatal(&e)))?;
        let answered = output
            .records()
            .iter()
            .map(|r| (r.error_code(), r.error_message()));
        entry_results("PutRecords", entries.len(), answered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_eventbridge::operation::put_events::PutEventsError;
    use aws_sdk_kinesis::error::ErrorMetadata;
    use aws_sdk_kinesis::operation::put_records::PutRecordsError;

    /// A call the service answered with `code`, as the SDK hands it back.
    fn answered<E>(code: &str, generic: fn(ErrorMetadata) -> E) -> SdkError<E, ()> {
        SdkError::service_error(generic(ErrorMetadata::builder().code(code).build()), ())
    }

    // ValidationException (a stream or bus name outside AWS's pattern) stops either target, as
    // the other codes retrying cannot fix do; throttling and the services' own failures are
    // retried. Kinesis used to retry ValidationException for ever.
    #[test]
    fn both_targets_sort_call_errors_alike() {
        let fatal = [
            "ValidationException",
            "ResourceNotFoundException",
            "AccessDeniedException",
            "ExpiredTokenException",
            "InvalidArgumentException",
            "KMSDisabledException",
        ];
        let retried = [
            "ProvisionedThroughputExceededException",
            "ThrottlingException",
            "InternalFailure",
            "KMSThrottlingException",
        ];
        for (codes, want) in [(&fatal[..], true), (&retried[..], false)] {
            for code in codes {
                assert_eq!(
                    is_fatal(&answered(code, PutRecordsError::generic)),
                    want,
                    "{code}"
                );
                assert_eq!(
                    is_fatal(&answered(code, PutEventsError::generic)),
                    want,
                    "{code}"
                );
            }
        }
    }

    // Names of AWS's StreamName pattern pass; an empty, too long or other name is refused, and
    // one with a comment systemd kept in the value says where the comment belongs.
    #[test]
    fn stream_names_follow_the_api_pattern() {
        let longest = "s".repeat(STREAM_NAME_MAX);
        for name in ["realm", "r", "Realm-2_b.c", longest.as_str()] {
            assert_eq!(check_stream_name(name), Ok(()), "{name}");
        }
        let e = check_stream_name("realm  # main stream").unwrap_err();
        assert!(e.contains("' '") && e.contains("comment"), "{e}");
        let too_long = "s".repeat(STREAM_NAME_MAX + 1);
        for name in ["", too_long.as_str(), "realm/eu", "réalm", "realm\t"] {
            let e = check_stream_name(name).unwrap_err();
            assert!(e.contains("KINESIS_STREAM_NAME"), "{name:?}: {e}");
        }
        assert!(!check_stream_name("realm/eu")
            .unwrap_err()
            .contains("comment"));
    }
}
