//! The endpoint's command line. Every option is also an environment variable. Access keys come
//! only from `FIREHOSE_ACCESS_KEY` (comma-separated, for rotation) or `--access-key-file`,
//! never from the command line.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

use super::decode::DecodeOptions;
use super::server::{AccessKeys, EndpointConfig};

/// Where the endpoint listens by default.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8443";
/// Firehose's largest body (64 MiB, before compression), the default the endpoint's issue fixes.
/// Whether Firehose's size hint (up to 64 MiB of "incoming data") counts records before base64,
/// which would allow bodies of about 86 MiB, is UNCONFIRMED; since a 413 loses the batch for good,
/// the README says to raise `--max-body-mib` to 96 with a size hint over 48 MiB.
pub const DEFAULT_MAX_BODY_MIB: u64 = 64;
/// How long a body may take to arrive by default, seconds (see [`super::server::BODY_TIMEOUT`]).
pub const DEFAULT_BODY_TIMEOUT_SECONDS: u64 = super::server::BODY_TIMEOUT.as_secs();
/// The environment variable holding the access keys.
pub const ACCESS_KEY_ENV: &str = "FIREHOSE_ACCESS_KEY";

#[derive(Debug, Parser)]
#[command(
    name = "firehose-endpoint",
    version,
    about = "Receive Kinesis Data Firehose HTTP endpoint deliveries and upsert them into MongoDB",
    after_help = "Access keys: FIREHOSE_ACCESS_KEY (several, comma-separated) and/or --access-key-file."
)]
pub struct Cli {
    /// Address and port to listen on.
    #[arg(long, env = "FIREHOSE_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,

    /// URL path that Firehose POSTs to (GET /health is always served as well).
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
    #[arg(long, env = "FIREHOSE_DATABASE", default_value = "monitors")]
    pub database: String,

    /// Collection to write to; undecodable records go to `<collection>_rejected`.
    #[arg(long, env = "FIREHOSE_COLLECTION", default_value = "firehose")]
    pub collection: String,

    /// PEM certificate chain; with --tls-key the endpoint serves HTTPS itself.
    #[arg(long, env = "FIREHOSE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for --tls-cert.
    #[arg(long, env = "FIREHOSE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Largest accepted body in MiB, after gzip decompression; larger ones get 413.
    #[arg(long, env = "FIREHOSE_MAX_BODY_MIB", default_value_t = DEFAULT_MAX_BODY_MIB,
          value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub max_body_mib: u64,

    /// How long (seconds, 1-170) a request's body may take to arrive in full before it is
    /// answered 408 (Firehose retries). Raise it on a slow link: an uncompressed 64 MiB body needs
    /// about 4.5 Mbit/s to arrive in the default 120 s.
    #[arg(long, env = "FIREHOSE_BODY_TIMEOUT_SECONDS", default_value_t = DEFAULT_BODY_TIMEOUT_SECONDS,
          value_parser = clap::value_parser!(u64).range(1..=170))]
    pub body_timeout_seconds: u64,

    /// File of access keys, one per line (blank lines and lines starting with # ignored).
    #[arg(long, env = "FIREHOSE_ACCESS_KEY_FILE")]
    pub access_key_file: Option<PathBuf>,

    /// Top-level fields whose ISO-8601 string values are stored as BSON dates (e.g. recordedAt).
    #[arg(long, env = "FIREHOSE_PARSE_DATES", value_delimiter = ',')]
    pub parse_dates: Vec<String>,

    /// Check the configuration (keys, TLS files, --path, and the connection string's syntax,
    /// without DNS) and exit.
    #[arg(long)]
    pub check_config: bool,
}

impl Cli {
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
        Ok(AccessKeys::new(keys.iter().map(String::as_bytes)))
    }

    /// Everything the router needs.
    pub fn endpoint_config(&self, env_key: Option<&str>) -> Result<EndpointConfig, String> {
        if !self.path.starts_with('/') {
            return Err(format!("--path must start with '/': {:?}", self.path));
        }
        if self.path == "/health" {
            return Err("--path cannot be /health, which the health check uses".into());
        }
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
            body_timeout: std::time::Duration::from_secs(self.body_timeout_seconds),
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
        assert!(cli(&["--path", "/health"])
            .endpoint_config(Some("k"))
            .is_err());
        assert!(Cli::try_parse_from(["f", "--max-body-mib", "0"]).is_err());
        assert!(Cli::try_parse_from(["f", "--tls-cert", "c.pem"]).is_err());
    }
}
