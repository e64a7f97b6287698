//! The dashboard's command line, and the plain [`Config`] the library runs on. Every option is
//! also an environment variable; the connection string comes only from the environment or
//! `--mongodb-uri` (hidden from `--help`'s values). A read-only user is enough: the dashboard
//! only runs `find`, `aggregate` and `distinct`, and `createIndexes` if it is allowed to.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use super::host::AllowedHosts;
use super::query::Field;

/// Where the dashboard listens by default: this machine only. Put a reverse proxy with TLS and a
/// password in front before opening it to a network.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// The agent's database.
pub const DEFAULT_DATABASE: &str = "monitors";
/// The agent's collection (the Firehose endpoint's is `firehose`, with the same documents when
/// the endpoint runs with `--parse-dates recordedAt`).
pub const DEFAULT_COLLECTION: &str = "reports";
/// A node silent for longer than this is marked stale: three of the agent's default 5 s insert
/// windows (`--insert-every`). Its newest stored reading is up to a window (plus the insert's
/// round trip) old just before each insert, so a healthy node must not be stale at one.
pub const DEFAULT_STALE_AFTER: &str = "15s";
/// How long one database read may take before the page says the database is unavailable.
pub const DEFAULT_QUERY_TIMEOUT: &str = "10s";
/// The longest `--query-timeout`: each query carries it (a little less) to the server as
/// `maxTimeMS`, a 32-bit count of milliseconds (about 24.8 days), which a longer one overflows.
pub const MAX_QUERY_TIMEOUT: Duration = Duration::from_secs(24 * 86_400);
/// The default chart size of `render`, pixels.
pub const DEFAULT_RENDER_SIZE: (u32, u32) = (1000, 400);

/// `sensehat-dashboard`: a read-only web page of the readings, and charts as files.
#[derive(Debug, Parser)]
#[command(
    name = "sensehat-dashboard",
    version,
    about = "Web dashboard of Sense HAT readings stored in MongoDB (read-only), and charts as PNG/SVG files"
)]
pub struct Cli {
    /// Options every command shares.
    #[command(flatten)]
    pub common: CommonArgs,
    /// What to do; serving the page when none is given.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Options every command shares.
#[derive(Debug, Args)]
pub struct CommonArgs {
    /// Address and port to serve the page on.
    #[arg(long, env = "DASHBOARD_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,

    /// MongoDB connection string (also MONGODB_CONNECTION_STRING); a read-only user is enough.
    #[arg(
        long = "mongodb-uri",
        env = "MONGODB_CONNECTION_STRING",
        hide_env_values = true
    )]
    pub mongodb_uri: Option<String>,

    /// Database holding the readings.
    #[arg(long, env = "DASHBOARD_DATABASE", default_value = DEFAULT_DATABASE,
          value_parser = crate::mongo::database_name)]
    pub database: String,

    /// Collection holding the readings (`reports` from the agent, `firehose` from the endpoint).
    #[arg(long, env = "DASHBOARD_COLLECTION", default_value = DEFAULT_COLLECTION,
          value_parser = crate::mongo::collection_name)]
    pub collection: String,

    /// How long a node may be silent before its tile is marked stale (e.g. 15s, 2m). Make it
    /// longer than the agents' --insert-every, and for `--collection firehose` longer than the
    /// delivery stream's buffering (60 s in deploy/aws).
    #[arg(long, env = "DASHBOARD_STALE_AFTER", default_value = DEFAULT_STALE_AFTER,
          value_parser = crate::cli::parse_duration)]
    pub stale_after: Duration,

    /// How long one database read may take before it is answered 503 (e.g. 10s; raise it for a
    /// slow server or very long windows).
    #[arg(long, env = "DASHBOARD_QUERY_TIMEOUT", default_value = DEFAULT_QUERY_TIMEOUT,
          value_parser = parse_query_timeout)]
    pub query_timeout: Duration,

    /// Serve Prometheus metrics, /healthz and /readyz on this address (e.g. 127.0.0.1:9467);
    /// off by default.
    #[arg(long, env = "DASHBOARD_METRICS_LISTEN", value_parser = crate::metrics::listen_addr)]
    pub metrics_listen: Option<String>,

    /// A host name the page may be reached by, besides localhost and IP addresses: the name a
    /// reverse proxy passes on or a LAN name (NAME, or NAME:PORT for that port only). Repeat
    /// it, or separate names with commas. Requests naming any other host are answered 421, so
    /// that a web page cannot read the dashboard by pointing its own name at this machine
    /// (DNS rebinding).
    #[arg(
        long = "allowed-host",
        env = "DASHBOARD_ALLOWED_HOSTS",
        value_delimiter = ',',
        value_name = "NAME"
    )]
    pub allowed_hosts: Vec<String>,

    /// The most rows a CSV download may hold; a longer window is refused (for tests).
    #[arg(long, env = "DASHBOARD_CSV_MAX_ROWS", hide = true,
          default_value_t = super::csv::MAX_CSV_ROWS,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub csv_max_rows: u64,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check the options and the connection string's syntax (without contacting the server)
    /// and exit: 0 when valid, 2 when not.
    CheckConfig,
    /// Write one node's chart of one field to a PNG or SVG file.
    Render(RenderArgs),
}

/// `render`'s options.
#[derive(Debug, Args)]
pub struct RenderArgs {
    /// The node whose readings to draw.
    #[arg(long)]
    pub node: String,
    /// temperature, humidity, pressure, acceleration.x, acceleration.y or acceleration.z.
    #[arg(long, default_value = "temperature", value_parser = parse_field)]
    pub field: Field,
    /// How far back from --to to draw: 30m, 24h, 7d, 30d and the like.
    #[arg(long, default_value = "24h", value_parser = parse_window)]
    pub window: Duration,
    /// End of the window, ISO 8601 (default: now).
    #[arg(long)]
    pub to: Option<String>,
    /// Output file; `.svg` writes SVG, anything else PNG.
    #[arg(long)]
    pub out: PathBuf,
    /// Width in pixels.
    #[arg(long, default_value_t = DEFAULT_RENDER_SIZE.0, value_parser = clap::value_parser!(u32).range(200..=4000))]
    pub width: u32,
    /// Height in pixels.
    #[arg(long, default_value_t = DEFAULT_RENDER_SIZE.1, value_parser = clap::value_parser!(u32).range(100..=4000))]
    pub height: u32,
}

/// What the server and `render` need, checked.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen.
    pub listen: SocketAddr,
    /// The connection string (a secret: never log it, see [`crate::mongo::redact_credentials`]).
    pub uri: String,
    /// Database name.
    pub database: String,
    /// Collection name.
    pub collection: String,
    /// Silence after which a node is stale.
    pub stale_after: Duration,
    /// Longest wait for one database read.
    pub query_timeout: Duration,
    /// Where to serve metrics and health checks, if anywhere.
    pub metrics_listen: Option<String>,
    /// The host names the page answers to besides localhost and IP addresses.
    pub allowed_hosts: AllowedHosts,
    /// The most rows one CSV download holds.
    pub csv_max_rows: u64,
}

/// Why a command line cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Neither MONGODB_CONNECTION_STRING nor --mongodb-uri was given.
    #[error("no MongoDB connection string: set MONGODB_CONNECTION_STRING or pass --mongodb-uri")]
    NoUri,
    /// An empty database or collection name.
    #[error("--database and --collection cannot be empty")]
    EmptyName,
    /// The connection string cannot work (the message never holds its password).
    #[error("{0}")]
    BadUri(String),
    /// An `--allowed-host` is not a host name.
    #[error("{0}")]
    BadAllowedHost(String),
}

impl CommonArgs {
    /// The checked [`Config`]: names present, the connection string's syntax valid (no DNS).
    pub async fn into_config(self) -> Result<Config, ConfigError> {
        let uri = self.mongodb_uri.ok_or(ConfigError::NoUri)?;
        if self.database.is_empty() || self.collection.is_empty() {
            return Err(ConfigError::EmptyName);
        }
        crate::mongo::check_uri(&uri)
            .await
            .map_err(ConfigError::BadUri)?;
        let allowed_hosts =
            AllowedHosts::new(&self.allowed_hosts).map_err(ConfigError::BadAllowedHost)?;
        Ok(Config {
            listen: self.listen,
            uri,
            database: self.database,
            collection: self.collection,
            stale_after: self.stale_after,
            query_timeout: self.query_timeout,
            metrics_listen: self.metrics_listen,
            allowed_hosts,
            csv_max_rows: self.csv_max_rows,
        })
    }
}

/// A `--query-timeout`: at least a millisecond (shorter, every query would time out, and its
/// `maxTimeMS` would be 0, no limit) and at most [`MAX_QUERY_TIMEOUT`].
pub fn parse_query_timeout(s: &str) -> Result<Duration, String> {
    let d = crate::cli::parse_duration_at_most(s, MAX_QUERY_TIMEOUT).map_err(|e| {
        format!("{e} (MongoDB's maxTimeMS, which each query carries, holds up to 24.8 days)")
    })?;
    if d < Duration::from_millis(1) {
        return Err(format!(
            "{s:?}: a query timeout of less than 1ms would fail every query (the default is {DEFAULT_QUERY_TIMEOUT})"
        ));
    }
    Ok(d)
}

/// A field name as the API spells it.
fn parse_field(s: &str) -> Result<Field, String> {
    Field::parse(s).ok_or_else(|| format!("unknown field {s:?}: use {}", Field::names()))
}

/// A window: a duration as [`crate::cli::parse_duration`] reads them (`30m`, `24h`, `7d`), longer
/// than zero and at most [`MAX_WINDOW_DAYS`](super::query::MAX_WINDOW_DAYS) days.
pub fn parse_window(s: &str) -> Result<Duration, String> {
    let max = Duration::from_secs(super::query::MAX_WINDOW_DAYS * 86_400);
    match crate::cli::parse_duration_at_most(s, max)? {
        d if d.is_zero() => Err(format!("{s:?}: a window is longer than zero")),
        d => Ok(d),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("sensehat-dashboard").chain(args.iter().copied()))
            .unwrap()
    }

    // The defaults are the names the issue fixes.
    #[test]
    fn defaults() {
        let c = cli(&[]);
        assert_eq!(c.common.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.common.database, "monitors");
        assert_eq!(c.common.collection, "reports");
        assert_eq!(c.common.stale_after, Duration::from_secs(15));
        assert_eq!(c.common.metrics_listen, None);
        assert!(c.command.is_none());
    }

    // check-config is a subcommand after the options; render takes its own.
    #[test]
    fn subcommands() {
        let c = cli(&["--collection", "firehose", "check-config"]);
        assert!(matches!(c.command, Some(Command::CheckConfig)));
        assert_eq!(c.common.collection, "firehose");
        let c = cli(&["render", "--node", "n", "--window", "7d", "--out", "x.png"]);
        let Some(Command::Render(r)) = c.command else {
            panic!("not render")
        };
        assert_eq!(r.window, Duration::from_secs(7 * 86_400));
        assert_eq!(r.field, Field::Temperature);
        assert!(
            Cli::try_parse_from(["d", "render", "--node", "n", "--field", "x", "--out", "o"])
                .is_err()
        );
    }

    // A window takes the other programs' durations, days up to the query's limit, and not zero.
    #[test]
    fn windows() {
        let days = |n: u64| Duration::from_secs(n * 86_400);
        assert_eq!(parse_window("7d").unwrap(), days(7));
        assert_eq!(parse_window("30d").unwrap(), days(30));
        assert_eq!(parse_window("400d").unwrap(), days(400));
        assert_eq!(parse_window("24h").unwrap(), days(1));
        assert_eq!(parse_window("30m").unwrap(), Duration::from_secs(1800));
        assert!(parse_window("401d")
            .unwrap_err()
            .contains("at most 400 days"));
        assert!(parse_window("0d").is_err());
        assert!(parse_window("0").is_err());
        assert!(parse_window("7w").is_err());
    }

    // Without a connection string nothing starts; a malformed one is refused without its password.
    #[tokio::test]
    async fn config_needs_a_valid_uri() {
        let c = cli(&[]);
        let mut common = c.common;
        common.mongodb_uri = None;
        assert!(matches!(
            common.into_config().await,
            Err(ConfigError::NoUri)
        ));
        let mut common = cli(&[]).common;
        common.mongodb_uri = Some("mongodb://pi:s3cret?x@h/".into());
        let e = common.into_config().await.unwrap_err().to_string();
        assert!(!e.contains("s3cret"), "{e}");
    }
}
