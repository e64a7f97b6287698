//! The endpoint's command line ([`Cli`]) and the checked settings built from it ([`Config`]).
//! Every option is also an environment variable. Access keys come only from
//! `FIREHOSE_ACCESS_KEY` (comma-separated, for rotation) or `--access-key-file`, never from the
//! command line.
//!
//! Old spellings kept as hidden aliases, so that no unit or environment file breaks:
//! `--check-config` (now the `check-config` command) and `--body-timeout-seconds N` /
//! `FIREHOSE_BODY_TIMEOUT_SECONDS` (now `--body-timeout 120s` / `FIREHOSE_BODY_TIMEOUT`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use super::decode::DecodeOptions;
use super::server::{AccessKeys, EndpointConfig, BODY_TIMEOUT, OWN_PATHS};
use super::store::UpsertMethod;
use crate::cli::parse_duration;

/// Where the endpoint listens by default.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8443";
/// Firehose's largest body (64 MiB, before compression), the default the endpoint's issue fixes.
/// Whether Firehose's size hint (up to 64 MiB of "incoming data") counts records before base64,
/// which would allow bodies of about 86 MiB, is UNCONFIRMED; since a 413 loses the batch for good,
/// docs/firehose-endpoint.md says to raise `--max-body-mib` to 96 with a size hint over 48 MiB.
pub const DEFAULT_MAX_BODY_MIB: u64 = 64;
/// The least `--max-body-mib`: Firehose's largest body. A smaller limit would answer 413 to a
/// batch Firehose may legally send, and a 413 loses that batch.
pub const MIN_MAX_BODY_MIB: u64 = 64;
/// The longest `--body-timeout`: Firehose waits 3 minutes for the whole answer, and the
/// database write needs some of that.
pub const MAX_BODY_TIMEOUT: Duration = Duration::from_secs(170);
/// The environment variable holding the access keys.
pub const ACCESS_KEY_ENV: &str = "FIREHOSE_ACCESS_KEY";
/// The access key of `systemd/firehose-endpoint.env`, refused: uncommented unedited, it made
/// an endpoint facing the internet whose key anyone could guess.
pub const PLACEHOLDER_ACCESS_KEY: &str = "change-me";
/// Keys shorter than this are warned about: the CloudFormation template (`deploy/aws`) takes
/// no shorter one for Firehose's side.
pub const MIN_ACCESS_KEY_CHARS: usize = 32;

/// The `firehose-endpoint` command line.
#[derive(Debug, Parser)]
#[command(
    name = "firehose-endpoint",
    version,
    about = "Receive Kinesis Data Firehose HTTP endpoint deliveries and upsert them into MongoDB",
    after_help = "Access keys: FIREHOSE_ACCESS_KEY (several, comma-separated) and/or --access-key-file."
)]
pub struct Cli {
    /// Without a command, serve.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Address and port to listen on.
    #[arg(long, env = "FIREHOSE_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,

    /// Serve Prometheus metrics at /metrics, with /healthz and /readyz, on this address (e.g.
    /// 127.0.0.1:9465): a port of its own, so that the delivery port is all that faces the
    /// internet. Off by default. The delivery port serves /healthz and /readyz too.
    #[arg(long, env = "FIREHOSE_METRICS_LISTEN", value_parser = crate::metrics::listen_addr)]
    pub metrics_listen: Option<String>,

    /// URL path that Firehose POSTs to (GET /health, /healthz and /readyz are always served as
    /// well, so it may be none of them).
    #[arg(long, env = "FIREHOSE_PATH", default_value = "/")]
    pub path: String,

    /// MongoDB connection string (also MONGODB_CONNECTION_STRING).
    #[arg(
        long = "mongodb-uri",
        env = "MONGODB_CONNECTION_STRING",
        hide_env_values = true
    )]
    pub mongodb_uri: Option<String>,

    /// Database to write to.
    #[arg(long, env = "FIREHOSE_DATABASE", default_value = "monitors",
          value_parser = crate::mongo::database_name)]
    pub database: String,

    /// Collection to write to; undecodable records go to `<collection>_rejected`.
    #[arg(long, env = "FIREHOSE_COLLECTION", default_value = "firehose",
          value_parser = crate::mongo::collection_name)]
    pub collection: String,

    /// PEM certificate chain; with --tls-key the endpoint serves HTTPS itself.
    #[arg(long, env = "FIREHOSE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for --tls-cert.
    #[arg(long, env = "FIREHOSE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Largest accepted body in MiB, after gzip decompression (64 to 1024); larger ones get
    /// 413, which Firehose neither retries nor backs up to S3, so it cannot be less than the
    /// 64 MiB Firehose may send.
    #[arg(long, env = "FIREHOSE_MAX_BODY_MIB", default_value_t = DEFAULT_MAX_BODY_MIB,
          value_parser = parse_max_body_mib)]
    pub max_body_mib: u64,

    /// How long a request's body may take to arrive in full (1s to 170s; default 120s) before
    /// it is answered 408 (Firehose retries). Raise it on a slow link: an uncompressed 64 MiB
    /// body needs about 4.5 Mbit/s to arrive in 120 s.
    #[arg(long, env = "FIREHOSE_BODY_TIMEOUT", value_parser = parse_body_timeout)]
    pub body_timeout: Option<Duration>,

    /// The old spelling of --body-timeout, in seconds without a unit; --body-timeout wins.
    #[arg(long, env = "FIREHOSE_BODY_TIMEOUT_SECONDS", hide = true,
          value_parser = clap::value_parser!(u64).range(1..=170))]
    pub body_timeout_seconds: Option<u64>,

    /// File of access keys, one per line (blank lines and lines starting with # ignored).
    #[arg(long, env = "FIREHOSE_ACCESS_KEY_FILE")]
    pub access_key_file: Option<PathBuf>,

    /// Top-level fields whose ISO-8601 string values are stored as BSON dates (e.g. recordedAt).
    #[arg(long, env = "FIREHOSE_PARSE_DATES", value_delimiter = ',')]
    pub parse_dates: Vec<String>,

    /// The old spelling of the `check-config` command.
    #[arg(long, hide = true)]
    pub check_config: bool,

    /// Which command upserts: from the server's version (`auto`), `bulk-write` (8.0+) or
    /// `update`. Not in `--help`: a test seam, since the test server's `bulkWrite` does not
    /// honour the write concern's `j` (see docs/durability.md).
    #[arg(
        long,
        env = "FIREHOSE_UPSERT_COMMAND",
        hide = true,
        value_enum,
        default_value = "auto"
    )]
    pub upsert_command: UpsertMethod,
}

/// The commands besides serving.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check the configuration (keys, TLS files, --path, and the connection string's syntax,
    /// without DNS), say what was found, and exit: 0 when it is valid, 2 when not. Usable as
    /// systemd's ExecStartPre.
    CheckConfig,
}

/// `--path` as the router can take it: the router serves [`OWN_PATHS`] itself, and reads
/// `{`, `}`, `*` and a segment that starts with `:` as a pattern (or refuses them), which would
/// stop the endpoint while it starts, after `check-config` had passed.
fn check_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("--path must start with '/': {path:?}"));
    }
    if OWN_PATHS.contains(&path) {
        return Err(format!(
            "--path cannot be {path}, which the endpoint serves itself ({})",
            OWN_PATHS.join(", ")
        ));
    }
    if path.contains(['{', '}', '*']) || path.split('/').any(|s| s.starts_with(':')) {
        return Err(format!(
            "--path {path:?} cannot hold '{{', '}}' or '*', or a segment that starts with ':': the router reads them as a pattern; give a plain path such as /firehose"
        ));
    }
    // A request's path arrives percent-encoded, and is matched as it arrives: a path with a
    // space, a '?' or a letter outside ASCII would match no delivery, and every batch would
    // end in the S3 backup.
    let plain = |c: char| c.is_ascii_alphanumeric() || "-._~!$&'()+,;=:@/%".contains(c);
    let bad_escape = path.match_indices('%').any(|(i, _)| {
        !path
            .get(i + 1..i + 3)
            .is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
    });
    if !path.chars().all(plain) || bad_escape {
        return Err(format!(
            "--path {path:?} holds characters a URL path carries only percent-encoded (a space, '?', '#', a letter outside ASCII): give it as it appears in the URL, e.g. /a%20b"
        ));
    }
    Ok(())
}

/// A `--max-body-mib`: from [`MIN_MAX_BODY_MIB`] to 1024, and why not less.
fn parse_max_body_mib(s: &str) -> Result<u64, String> {
    let mib: u64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a whole number of MiB"))?;
    if mib < MIN_MAX_BODY_MIB {
        return Err(format!(
            "{mib} is less than {MIN_MAX_BODY_MIB}: Firehose may send a body of {MIN_MAX_BODY_MIB} MiB, and answering 413 to it loses its batch (Firehose neither retries nor backs up a 413)"
        ));
    }
    if mib > 1024 {
        return Err(format!("{mib} is more than 1024"));
    }
    Ok(mib)
}

/// A `--body-timeout`: a duration from 1 s to [`MAX_BODY_TIMEOUT`].
fn parse_body_timeout(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_secs(1) || d > MAX_BODY_TIMEOUT {
        return Err(format!("{s:?} is out of range: from 1s to 170s"));
    }
    Ok(d)
}

/// The PEM files the endpoint serves HTTPS with.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Certificate chain.
    pub cert: PathBuf,
    /// Private key.
    pub key: PathBuf,
}

/// The endpoint's settings, checked as far as can be without IO beyond the key file: what
/// [`super::run`] and [`super::check_config`] take.
#[derive(Clone)]
pub struct Config {
    /// Address and port to listen on.
    pub listen: SocketAddr,
    /// The connection string (holds the password: never logged; no `Debug` for that reason).
    pub mongodb_uri: String,
    /// Database to write to.
    pub database: String,
    /// HTTPS served by the endpoint itself; `None`: plain HTTP behind a TLS proxy.
    pub tls: Option<TlsFiles>,
    /// What the router needs.
    pub endpoint: EndpointConfig,
    /// `--metrics-listen`.
    pub metrics_listen: Option<String>,
    /// How upserts reach the server (`--upsert-command`).
    pub upsert_method: UpsertMethod,
}

impl Cli {
    /// Whether `check-config` was asked for, in either spelling.
    pub fn wants_check_config(&self) -> bool {
        self.check_config || matches!(self.command, Some(Command::CheckConfig))
    }

    /// The settings, with the access keys from `env_key` (the value of [`ACCESS_KEY_ENV`]) and
    /// `--access-key-file`.
    pub fn into_config(self, env_key: Option<&str>) -> Result<Config, String> {
        let endpoint = self.endpoint_config(env_key)?;
        let mongodb_uri = self.require_uri()?.to_owned();
        let tls = match (self.tls_cert, self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            _ => None,
        };
        Ok(Config {
            listen: self.listen,
            mongodb_uri,
            database: self.database,
            tls,
            endpoint,
            metrics_listen: self.metrics_listen,
            upsert_method: self.upsert_command,
        })
    }

    /// `--body-timeout`, else the old `--body-timeout-seconds`, else [`BODY_TIMEOUT`].
    pub fn body_timeout(&self) -> Duration {
        self.body_timeout
            .or(self.body_timeout_seconds.map(Duration::from_secs))
            .unwrap_or(BODY_TIMEOUT)
    }

    /// The connection string, or a message saying how to give one.
    pub fn require_uri(&self) -> Result<&str, String> {
        self.mongodb_uri.as_deref().ok_or_else(|| {
            "no MongoDB connection string: set MONGODB_CONNECTION_STRING or pass --mongodb-uri"
                .into()
        })
    }

    /// Keys from `FIREHOSE_ACCESS_KEY` and `--access-key-file`; at least one is required.
    pub fn access_keys(&self, env_value: Option<&str>) -> Result<AccessKeys, String> {
        let mut keys: Vec<String> = env_value
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|k| !k.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        if let Some(path) = &self.access_key_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read the access key file {}: {e}", path.display()))?;
            keys.extend(parse_key_file(&text));
        }
        if keys.is_empty() {
            return Err(format!(
                "no access key: set {ACCESS_KEY_ENV} (comma-separated for several) or --access-key-file"
            ));
        }
        if keys.iter().any(|k| k == PLACEHOLDER_ACCESS_KEY) {
            return Err(format!(
                "the access key is still the template's placeholder {PLACEHOLDER_ACCESS_KEY:?}, \
                 which anyone can guess: generate one with `openssl rand -base64 48` and set it \
                 in {ACCESS_KEY_ENV} (or --access-key-file) and on the Firehose stream"
            ));
        }
        let short = keys
            .iter()
            .filter(|k| k.chars().count() < MIN_ACCESS_KEY_CHARS)
            .count();
        if short > 0 {
            tracing::warn!(
                keys = short,
                "access keys shorter than {MIN_ACCESS_KEY_CHARS} characters are easier to guess, \
                 and deploy/aws takes none for the Firehose stream: generate one with \
                 `openssl rand -base64 48`"
            );
        }
        Ok(AccessKeys::new(keys.iter().map(String::as_bytes)))
    }

    /// Everything the router needs.
    pub fn endpoint_config(&self, env_key: Option<&str>) -> Result<EndpointConfig, String> {
        check_path(&self.path)?;
        if self.collection.is_empty() || self.database.is_empty() {
            return Err("--database and --collection cannot be empty".into());
        }
        Ok(EndpointConfig {
            path: self.path.clone(),
            keys: self.access_keys(env_key)?,
            max_body_bytes: (self.max_body_mib as usize) * 1024 * 1024,
            collection: self.collection.clone(),
            decode: DecodeOptions {
                parse_dates: self
                    .parse_dates
                    .iter()
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect(),
            },
            body_timeout: self.body_timeout(),
        })
    }
}

/// Keys of a key file: one per line, trimmed, blank and `#` lines skipped.
pub fn parse_key_file(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("firehose-endpoint").chain(args.iter().copied()))
            .unwrap()
    }

    // Defaults are the ones the issue fixes.
    #[test]
    fn defaults() {
        let c = cli(&[]);
        assert_eq!(c.listen.to_string(), "127.0.0.1:8443");
        assert_eq!(c.path, "/");
        assert_eq!(
            (c.database.as_str(), c.collection.as_str()),
            ("monitors", "firehose")
        );
        assert_eq!(c.max_body_mib, 64);
        assert_eq!(c.body_timeout(), Duration::from_secs(120));
        assert!(!c.wants_check_config());
    }

    // --body-timeout takes a unit and a range; the old --body-timeout-seconds still works, and
    // the new spelling wins when both are given.
    #[test]
    fn body_timeout_new_and_old_spellings() {
        assert_eq!(
            cli(&["--body-timeout", "90s"]).body_timeout(),
            Duration::from_secs(90)
        );
        assert_eq!(
            cli(&["--body-timeout", "2m"]).body_timeout(),
            Duration::from_secs(120)
        );
        assert_eq!(
            cli(&["--body-timeout-seconds", "7"]).body_timeout(),
            Duration::from_secs(7)
        );
        assert_eq!(
            cli(&["--body-timeout-seconds", "7", "--body-timeout", "8s"]).body_timeout(),
            Duration::from_secs(8)
        );
        for bad in ["500ms", "171s", "3m", "soon"] {
            assert!(
                Cli::try_parse_from(["f", "--body-timeout", bad]).is_err(),
                "{bad}"
            );
        }
        assert!(Cli::try_parse_from(["f", "--body-timeout-seconds", "171"]).is_err());
    }

    // check-config is a command after the options; the old --check-config flag still works.
    #[test]
    fn check_config_command_and_old_flag() {
        assert!(cli(&["--path", "/f", "check-config"]).wants_check_config());
        assert!(cli(&["--check-config", "--path", "/f"]).wants_check_config());
        assert!(Cli::try_parse_from(["f", "check-config", "--no-such-option"]).is_err());
    }

    // The settings carry what the options said; a missing connection string is refused.
    #[test]
    fn into_config() {
        let c = cli(&["--mongodb-uri", "mongodb://db/", "--body-timeout", "30s"])
            .into_config(Some("k"))
            .unwrap();
        assert_eq!(c.mongodb_uri, "mongodb://db/");
        assert_eq!(c.endpoint.body_timeout, Duration::from_secs(30));
        assert!(c.tls.is_none());
        if std::env::var_os("MONGODB_CONNECTION_STRING").is_none() {
            let err = cli(&[]).into_config(Some("k")).err().unwrap();
            assert!(err.contains("MONGODB_CONNECTION_STRING"), "{err}");
        }
    }

    // There is no way to pass a key on the command line.
    #[test]
    fn no_access_key_option() {
        assert!(Cli::try_parse_from(["firehose-endpoint", "--access-key", "k"]).is_err());
    }

    // Keys: comma-separated from the environment plus the file; none at all is an error.
    #[test]
    fn access_keys_from_env_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("keys");
        std::fs::write(&f, "# rotated 2026-11\nnew-key\n\n").unwrap();
        let c = cli(&["--access-key-file", f.to_str().unwrap()]);
        let keys = c.access_keys(Some(" old-key , ,other")).unwrap();
        assert_eq!(keys.len(), 3);
        assert!(keys.matches(b"new-key") && keys.matches(b"old-key") && keys.matches(b"other"));
        assert!(!keys.matches(b"# rotated 2026-11"));
        let err = cli(&[]).access_keys(Some(" , ")).unwrap_err();
        assert!(err.contains("FIREHOSE_ACCESS_KEY"), "{err}");
    }

    // --parse-dates takes a comma list; bad paths and body limits are refused.
    #[test]
    fn parse_dates_path_and_limits() {
        let c = cli(&[
            "--parse-dates",
            "recordedAt,createdAt",
            "--path",
            "/firehose",
        ]);
        let cfg = c.endpoint_config(Some("k")).unwrap();
        assert_eq!(cfg.decode.parse_dates, ["recordedAt", "createdAt"]);
        assert!(cli(&["--path", "x"]).endpoint_config(Some("k")).is_err());
        let taken = [
            "/health",
            "/healthz",
            "/readyz",
            "/{id}",
            "/a/{*rest}",
            "/:id",
            "/a*",
        ];
        let unmatchable = ["/a b", "/f?x=1", "/a#b", "/\u{e4}", "/a%2", "/a%zz"];
        for taken in taken.into_iter().chain(unmatchable) {
            let refused = cli(&["--path", taken]).endpoint_config(Some("k"));
            assert!(refused.is_err(), "{taken}");
        }
        assert!(Cli::try_parse_from(["f", "--max-body-mib", "0"]).is_err());
        let small = Cli::try_parse_from(["f", "--max-body-mib", "63"]).unwrap_err();
        assert!(small.to_string().contains("loses its batch"), "{small}");
        assert!(cli(&["--path", "/v1/a%20b:c@d"])
            .endpoint_config(Some("k"))
            .is_ok());
        assert!(Cli::try_parse_from(["f", "--max-body-mib", "64"]).is_ok());
        assert!(Cli::try_parse_from(["f", "--tls-cert", "c.pem"]).is_err());
    }
}
