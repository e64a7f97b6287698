//! The command line of `firehose-local` ([`Cli`]) and the plain settings built from it
//! ([`Config`], what [`super::run`] takes). Every option is also an environment variable; the
//! access key comes only from `FIREHOSE_ACCESS_KEY`, never the command line.
//!
//! The durations take units and are named after Firehose's own settings (buffer interval,
//! retry duration). Their old spellings in whole seconds (`--buffer-seconds`,
//! `--retry-seconds`, `--request-timeout-seconds` and their variables) are still read, hidden
//! from `--help`; the new spelling wins when both are given.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use super::delivery::DeliveryConfig;
use super::{protocol, Buffering, FirehoseLocalError};
use crate::cli::parse_duration;

/// Default buffer size hint, MiB.
pub const DEFAULT_BUFFER_MIB: u32 = 5;
/// Default buffer interval hint, seconds.
pub const DEFAULT_BUFFER_SECONDS: u64 = 300;
/// Firehose's longest buffer interval, seconds.
pub const MAX_BUFFER_SECONDS: u64 = 900;
/// Default retry duration, seconds.
pub const DEFAULT_RETRY_SECONDS: u64 = 300;
/// Firehose's longest retry duration, seconds.
pub const MAX_RETRY_SECONDS: u64 = 7200;
/// Firehose waits this long for a response.
pub const DEFAULT_REQUEST_TIMEOUT_SECONDS: u64 = 180;
/// The delivery stream ARN sent when none is given.
pub const DEFAULT_SOURCE_ARN: &str =
    "arn:aws:firehose:us-east-1:000000000000:deliverystream/firehose-local";
/// The environment variable holding the access key.
pub const ACCESS_KEY_ENV: &str = "FIREHOSE_ACCESS_KEY";

/// A buffer interval: a duration of at most [`MAX_BUFFER_SECONDS`].
fn buffer_interval(s: &str) -> Result<Duration, String> {
    at_most(s, MAX_BUFFER_SECONDS)
}

/// A retry duration: a duration of at most [`MAX_RETRY_SECONDS`].
fn retry_duration(s: &str) -> Result<Duration, String> {
    at_most(s, MAX_RETRY_SECONDS)
}

fn at_most(s: &str, max_secs: u64) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d > Duration::from_secs(max_secs) {
        return Err(format!(
            "{s:?} is longer than Firehose allows: at most {max_secs}s"
        ));
    }
    Ok(d)
}

/// The command line of `firehose-local`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "firehose-local",
    version,
    about = "A local Kinesis Data Firehose: read a Kinesis stream and deliver it to an HTTP endpoint as Firehose does (but KPL-aggregated records are not split)"
)]
pub struct Cli {
    /// What to do instead of delivering.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Kinesis data stream to read (every shard).
    #[arg(long, env = "KINESIS_STREAM_NAME")]
    pub stream_name: String,
    /// Kinesis endpoint override, for an emulator (e.g. http://127.0.0.1:4568). Credentials and
    /// region come from the standard AWS chain.
    #[arg(long, env = "KINESIS_ENDPOINT_URL")]
    pub kinesis_endpoint_url: Option<String>,
    /// The HTTP endpoint to deliver to (Firehose requires https in AWS; http is allowed here).
    #[arg(long, env = "FIREHOSE_DESTINATION_URL")]
    pub destination_url: String,
    /// Buffer size hint in MiB (1-64): a request is sent once this much record data waits. A
    /// request body never passes 64 MiB (about 48 MiB of data) whatever this says.
    #[arg(long, env = "FIREHOSE_BUFFER_MIB", default_value_t = DEFAULT_BUFFER_MIB,
          value_parser = clap::value_parser!(u32).range(1..=64))]
    pub buffer_mib: u32,
    /// Buffer interval hint, 0s to 900s: a request is sent this long after its first record
    /// [default: 300s].
    #[arg(long, env = "FIREHOSE_BUFFER_INTERVAL", value_name = "DURATION",
          value_parser = buffer_interval)]
    pub buffer_interval: Option<Duration>,
    /// The old spelling of --buffer-interval, in seconds.
    #[arg(long, env = "FIREHOSE_BUFFER_SECONDS", hide = true,
          value_parser = clap::value_parser!(u64).range(0..=MAX_BUFFER_SECONDS))]
    pub buffer_seconds: Option<u64>,
    /// GZIP the request body (Content-Encoding: gzip).
    #[arg(long, env = "FIREHOSE_GZIP", value_parser = clap::builder::BoolishValueParser::new())]
    pub gzip: bool,
    /// Retry duration, 0s to 7200s; waits for responses do not count [default: 300s].
    #[arg(long, env = "FIREHOSE_RETRY_DURATION", value_name = "DURATION",
          value_parser = retry_duration)]
    pub retry_duration: Option<Duration>,
    /// The old spelling of --retry-duration, in seconds.
    #[arg(long, env = "FIREHOSE_RETRY_SECONDS", hide = true,
          value_parser = clap::value_parser!(u64).range(0..=MAX_RETRY_SECONDS))]
    pub retry_seconds: Option<u64>,
    /// Where batches that could not be delivered go, as Firehose's error records (one JSON line
    /// per record). Without it they are only logged, as lost.
    #[arg(long, env = "FIREHOSE_ERROR_DIR")]
    pub error_dir: Option<PathBuf>,
    /// A common attribute sent in X-Amz-Firehose-Common-Attributes; repeat for more (at most 50).
    #[arg(long = "common-attribute", env = "FIREHOSE_COMMON_ATTRIBUTES", value_delimiter = ',',
          value_name = "NAME=VALUE", value_parser = protocol::parse_attribute)]
    pub common_attributes: Vec<(String, String)>,
    /// Read from the oldest record in the stream instead of LATEST.
    #[arg(long, env = "FIREHOSE_FROM_START", value_parser = clap::builder::BoolishValueParser::new())]
    pub from_start: bool,
    /// Keep each shard's position in this file, so a restart carries on after the last record
    /// delivered (at least once: records read but not yet delivered are read again).
    #[arg(long, env = "FIREHOSE_CHECKPOINT_FILE")]
    pub checkpoint_file: Option<PathBuf>,
    /// The delivery stream ARN sent in X-Amz-Firehose-Source-Arn.
    #[arg(long, env = "FIREHOSE_SOURCE_ARN", default_value = DEFAULT_SOURCE_ARN)]
    pub source_arn: String,
    /// PEM certificates to trust for the destination, besides the built-in roots: an endpoint
    /// serving its own self-signed certificate (`firehose-endpoint --tls-cert`).
    #[arg(long, env = "FIREHOSE_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// How long to wait for a response (Firehose waits 3 minutes) [default: 180s].
    #[arg(long, env = "FIREHOSE_REQUEST_TIMEOUT", value_name = "DURATION",
          value_parser = parse_duration)]
    pub request_timeout: Option<Duration>,
    /// The old spelling of --request-timeout, in seconds.
    #[arg(long, env = "FIREHOSE_REQUEST_TIMEOUT_SECONDS", hide = true,
          value_parser = clap::value_parser!(u64).range(..=crate::cli::MAX_DURATION_SECS))]
    pub request_timeout_seconds: Option<u64>,
    /// Serve Prometheus metrics at /metrics, and /healthz and /readyz (the stream answers and
    /// the last delivery attempt reached the endpoint), on this address (e.g. 127.0.0.1:9466).
    /// Off by default. Not FIREHOSE_METRICS_LISTEN: firehose-endpoint reads that one, and the
    /// two often share an environment.
    #[arg(long, env = "FIREHOSE_LOCAL_METRICS_LISTEN", value_name = "ADDR", value_parser = crate::metrics::listen_addr)]
    pub metrics_listen: Option<String>,
}

/// What to do instead of delivering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Check the options, the access key, --ca-cert, the checkpoint file and that an AWS region
    /// and credentials are set, print what was found and exit: 0 when delivery could start, 2
    /// when not. Contacts neither Kinesis nor the destination; suitable for systemd's
    /// ExecStartPre.
    CheckConfig,
}

/// Everything `firehose-local` needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    /// The Kinesis data stream read.
    pub stream_name: String,
    /// Kinesis endpoint override, for an emulator.
    pub kinesis_endpoint_url: Option<String>,
    /// Read from the oldest record instead of LATEST.
    pub from_start: bool,
    /// Where shard positions are kept between runs.
    pub checkpoint_file: Option<PathBuf>,
    /// When a request is sent.
    pub buffering: Buffering,
    /// Where and how requests are sent.
    pub delivery: DeliveryConfig,
    /// Where to serve /metrics, /healthz and /readyz (`--metrics-listen`); none by default.
    pub metrics_listen: Option<String>,
}

/// The key to send from `FIREHOSE_ACCESS_KEY`: its first key, read the way `firehose-endpoint`
/// reads the variable (comma-separated for rotation, each key trimmed, empty ones skipped), so
/// that one exported variable serves both. `None` when it holds no key.
pub fn first_access_key(value: &str) -> Option<String> {
    value
        .split(',')
        .map(str::trim)
        .find(|k| !k.is_empty())
        .map(str::to_owned)
}

impl Cli {
    /// The settings; `access_key` comes from [`ACCESS_KEY_ENV`], never the command line.
    pub fn into_config(self, access_key: Option<String>) -> Result<Config, FirehoseLocalError> {
        if self.common_attributes.len() > protocol::MAX_COMMON_ATTRIBUTES {
            return Err(FirehoseLocalError::Config(format!(
                "{} common attributes given; Firehose allows at most {}",
                self.common_attributes.len(),
                protocol::MAX_COMMON_ATTRIBUTES
            )));
        }
        if access_key
            .as_ref()
            .is_some_and(|k| k.len() > protocol::MAX_ACCESS_KEY_BYTES)
        {
            return Err(FirehoseLocalError::Config(
                "FIREHOSE_ACCESS_KEY is longer than 4096 bytes".into(),
            ));
        }
        let seconds = |new: Option<Duration>, old: Option<u64>, default: u64| {
            new.unwrap_or(Duration::from_secs(old.unwrap_or(default)))
        };
        let request_timeout = seconds(
            self.request_timeout,
            self.request_timeout_seconds,
            DEFAULT_REQUEST_TIMEOUT_SECONDS,
        );
        Ok(Config {
            buffering: Buffering {
                bytes: self.buffer_mib as usize * 1024 * 1024,
                interval: seconds(
                    self.buffer_interval,
                    self.buffer_seconds,
                    DEFAULT_BUFFER_SECONDS,
                ),
            },
            delivery: DeliveryConfig {
                destination_url: self.destination_url,
                access_key,
                source_arn: self.source_arn,
                common_attributes: self.common_attributes,
                gzip: self.gzip,
                retry_duration: seconds(
                    self.retry_duration,
                    self.retry_seconds,
                    DEFAULT_RETRY_SECONDS,
                ),
                request_timeout: request_timeout.max(Duration::from_secs(1)),
                error_dir: self.error_dir,
                ca_cert: self.ca_cert,
            },
            stream_name: self.stream_name,
            kinesis_endpoint_url: self.kinesis_endpoint_url,
            from_start: self.from_start,
            checkpoint_file: self.checkpoint_file,
            metrics_listen: self.metrics_listen,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let base = [
            "firehose-local",
            "--stream-name",
            "s",
            "--destination-url",
            "http://h/",
        ];
        Cli::try_parse_from(base.iter().chain(args))
            .map_err(|e| e.to_string())?
            .into_config(None)
            .map_err(|e| e.to_string())
    }

    // One key is sent as it is; of a rotation list, the first; nothing for an empty variable.
    #[test]
    fn access_key_from_the_variable() {
        assert_eq!(first_access_key("k1").as_deref(), Some("k1"));
        assert_eq!(
            first_access_key("new-key, old-key").as_deref(),
            Some("new-key")
        );
        assert_eq!(first_access_key(""), None);
        assert_eq!(first_access_key(" , "), None);
    }

    // The key sent is one firehose-endpoint takes from the same variable, which trims each key
    // and skips empty ones: with a leading comma or whitespace around a lone key, firehose-local
    // sent no key, or one with the whitespace, and every delivery was refused with 401.
    #[test]
    fn access_key_is_read_as_the_endpoint_reads_it() {
        assert_eq!(first_access_key(",x").as_deref(), Some("x"));
        assert_eq!(first_access_key(" , x ,y").as_deref(), Some("x"));
        assert_eq!(first_access_key("\u{a0}k1\t").as_deref(), Some("k1"));
    }

    // The defaults are Firehose's: 300 s buffer interval and retry duration, 180 s timeout.
    #[test]
    fn defaults() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.buffering.interval, Duration::from_secs(300));
        assert_eq!(c.buffering.bytes, 5 * 1024 * 1024);
        assert_eq!(c.delivery.retry_duration, Duration::from_secs(300));
        assert_eq!(c.delivery.request_timeout, Duration::from_secs(180));
    }

    // The durations take units; the old spellings still take whole seconds; the new one wins.
    #[test]
    fn old_and_new_duration_spellings() {
        let c = parse(&[
            "--buffer-interval",
            "1500ms",
            "--retry-duration",
            "1h",
            "--request-timeout",
            "2m",
        ])
        .unwrap();
        assert_eq!(c.buffering.interval, Duration::from_millis(1500));
        assert_eq!(c.delivery.retry_duration, Duration::from_secs(3600));
        assert_eq!(c.delivery.request_timeout, Duration::from_secs(120));
        let c = parse(&[
            "--buffer-seconds",
            "1",
            "--retry-seconds",
            "60",
            "--request-timeout-seconds",
            "30",
        ])
        .unwrap();
        assert_eq!(c.buffering.interval, Duration::from_secs(1));
        assert_eq!(c.delivery.retry_duration, Duration::from_secs(60));
        assert_eq!(c.delivery.request_timeout, Duration::from_secs(30));
        let c = parse(&["--buffer-seconds", "60", "--buffer-interval", "2s"]).unwrap();
        assert_eq!(c.buffering.interval, Duration::from_secs(2));
        // A zero timeout would fail every request at once: at least a second.
        let c = parse(&["--request-timeout-seconds", "0"]).unwrap();
        assert_eq!(c.delivery.request_timeout, Duration::from_secs(1));
        // Capped as --request-timeout is (366 days).
        assert!(parse(&["--request-timeout-seconds", "31622401"]).is_err());
    }

    // Firehose's ranges hold in both spellings: at most 900 s of buffering, 7200 s of retries.
    #[test]
    fn ranges_are_firehoses() {
        assert!(parse(&["--buffer-interval", "900s"]).is_ok());
        assert!(parse(&["--buffer-interval", "901s"]).is_err());
        assert!(parse(&["--buffer-interval", "16m"]).is_err());
        assert!(parse(&["--buffer-seconds", "901"]).is_err());
        assert!(parse(&["--retry-duration", "2h"]).is_ok());
        assert!(parse(&["--retry-duration", "7201s"]).is_err());
        assert!(parse(&["--retry-seconds", "7201"]).is_err());
        assert!(parse(&["--buffer-mib", "65"]).is_err());
    }

    // Too many common attributes, or an access key Firehose would refuse, stop at start.
    #[test]
    fn firehose_limits_are_refused() {
        let many: Vec<String> = (0..51).map(|i| format!("a{i}=v")).collect();
        let mut args = vec![];
        for a in &many {
            args.extend(["--common-attribute", a.as_str()]);
        }
        assert!(parse(&args).unwrap_err().contains("at most 50"));
        let cli = Cli::try_parse_from(["x", "--stream-name", "s", "--destination-url", "u"]);
        let long = "k".repeat(protocol::MAX_ACCESS_KEY_BYTES + 1);
        assert!(cli.unwrap().into_config(Some(long)).is_err());
    }

    // check-config is a subcommand after the options.
    #[test]
    fn check_config_subcommand() {
        let cli = Cli::try_parse_from([
            "firehose-local",
            "--stream-name",
            "s",
            "--destination-url",
            "http://h/",
            "check-config",
        ])
        .unwrap();
        assert_eq!(cli.command, Some(Command::CheckConfig));
    }
}
