//! The command line of `kinesis-forwarder` ([`Cli`]) and the plain settings built from it
//! ([`Config`], whose [`Options`] are what [`super::run`] takes). Every option is also an
//! environment variable; the connection string, which may hold a password, is best given only
//! there.

use std::time::Duration;

use clap::{Parser, Subcommand};

use super::format::Format;
use crate::cli::parse_duration;

/// Default partition key field: one shard per board.
pub const DEFAULT_PARTITION_KEY_FIELD: &str = "nodeName";
/// Default linger, in milliseconds: how long a partly filled batch waits for more events.
pub const DEFAULT_LINGER_MS: u64 = 100;
/// Default database of the watched collection.
pub const DEFAULT_DATABASE: &str = "monitors";
/// Default watched collection.
pub const DEFAULT_COLLECTION: &str = "reports";
/// Default Kinesis stream: the article's, and `deploy/aws/pipeline.yaml`'s default.
pub const DEFAULT_STREAM_NAME: &str = "realm";
/// Default event bus of `--target eventbridge`: the account's default bus.
pub const DEFAULT_EVENT_BUS_NAME: &str = "default";

/// Where the events go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum TargetKind {
    /// A Kinesis data stream (PutRecords), `--stream-name`.
    #[default]
    Kinesis,
    /// An EventBridge event bus (PutEvents), `--event-bus-name`.
    Eventbridge,
}

/// Which change events are forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Operation {
    /// A new document.
    Insert,
    /// A changed document, forwarded whole as looked up when the event is read.
    Update,
    /// A document replaced whole.
    Replace,
}

impl Operation {
    /// The change event's `operationType`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Operation::Insert => "insert",
            Operation::Update => "update",
            Operation::Replace => "replace",
        }
    }
}

/// The forwarder's settings, apart from the connections.
#[derive(Debug, Clone)]
pub struct Options {
    /// Database of the watched collection.
    pub database: String,
    /// The watched collection.
    pub collection: String,
    /// Where the events go.
    pub target: TargetKind,
    /// The Kinesis data stream records are put into (`--target kinesis`).
    pub stream_name: String,
    /// The event bus events are put on (`--target eventbridge`).
    pub event_bus_name: String,
    /// Document field (dotted path) whose value is the partition key.
    pub partition_key_field: String,
    /// How a document becomes record data.
    pub format: Format,
    /// Which change events are forwarded.
    pub operations: Vec<Operation>,
    /// Where the resume token is stored; default `<collection>_forwarder_state`.
    pub state_collection: Option<String>,
    /// The database of the state collection; default the watched one.
    pub state_database: Option<String>,
    /// Where oversize records go; default `<collection>_forwarder_deadletter`.
    pub dead_letter_collection: Option<String>,
    /// Ignore the stored token and start from the present.
    pub start_from_now: bool,
    /// How long a partly filled batch waits for more events.
    pub linger: Duration,
}

impl Options {
    /// The defaults of the command line, putting into `stream_name`.
    pub fn new(stream_name: &str) -> Self {
        Options {
            database: DEFAULT_DATABASE.into(),
            collection: DEFAULT_COLLECTION.into(),
            target: TargetKind::Kinesis,
            stream_name: stream_name.into(),
            event_bus_name: DEFAULT_EVENT_BUS_NAME.into(),
            partition_key_field: DEFAULT_PARTITION_KEY_FIELD.into(),
            format: Format::Stringify,
            operations: vec![Operation::Insert],
            state_collection: None,
            state_database: None,
            dead_letter_collection: None,
            start_from_now: false,
            linger: Duration::from_millis(DEFAULT_LINGER_MS),
        }
    }

    /// What the target's calls name: the stream, or the event bus.
    pub fn destination(&self) -> &str {
        match self.target {
            TargetKind::Kinesis => &self.stream_name,
            TargetKind::Eventbridge => &self.event_bus_name,
        }
    }

    /// The key of this forwarder's stored position and dead letters: the stream name (as
    /// before there was a choice of target), or `eventbridge:<bus>`, so that a Kinesis and an
    /// EventBridge forwarder of one collection keep their own positions.
    pub fn position_key(&self) -> String {
        match self.target {
            TargetKind::Kinesis => self.stream_name.clone(),
            TargetKind::Eventbridge => format!("{EVENTBRIDGE_KEY}{}", self.event_bus_name),
        }
    }

    /// Whether `key`, another forwarder's [`Options::position_key`], is of this one's kind of
    /// target (what a renamed stream or bus would have had).
    pub fn same_target_kind(&self, key: &str) -> bool {
        key.starts_with(EVENTBRIDGE_KEY) == (self.target == TargetKind::Eventbridge)
    }

    /// The collection holding the resume token. Its position is kept under the stream's name,
    /// so in a `--state-database` of its own the default name holds the watched database's
    /// too (`monitors.reports_forwarder_state`): forwarders of two databases' `reports` sharing
    /// one state database would otherwise overwrite each other's position.
    pub fn state_collection_name(&self) -> String {
        match (&self.state_collection, &self.state_database) {
            (Some(name), _) => name.clone(),
            (None, Some(db)) if *db != self.database => {
                format!("{}.{}_forwarder_state", self.database, self.collection)
            }
            (None, _) => format!("{}_forwarder_state", self.collection),
        }
    }

    /// The database of the state collection.
    pub fn state_database_name(&self) -> &str {
        self.state_database.as_deref().unwrap_or(&self.database)
    }

    /// The collection receiving documents too large to forward.
    pub fn dead_letter_collection_name(&self) -> String {
        self.dead_letter_collection
            .clone()
            .unwrap_or_else(|| format!("{}_forwarder_deadletter", self.collection))
    }

    /// Whether the server takes every collection this forwarder uses in its database: each
    /// name passes `--collection`'s rules on its own, but the database's name with a default
    /// name built from a long collection's (`<collection>_forwarder_deadletter`) can pass the
    /// server's 255 bytes. A state collection the server refuses would store no position, and
    /// each restart would start from now, skipping what came meanwhile: so it is refused at
    /// start. So is a Kinesis stream name Kinesis would refuse at every put
    /// ([`super::aws::check_stream_name`]).
    pub fn check_names(&self) -> Result<(), String> {
        if self.target == TargetKind::Kinesis {
            super::aws::check_stream_name(&self.stream_name)
                .map_err(|e| format!("--stream-name {:?}: {e}", self.stream_name))?;
        }
        for (option, database, name) in [
            ("--collection", &*self.database, self.collection.clone()),
            (
                "--state-collection",
                self.state_database_name(),
                self.state_collection_name(),
            ),
            (
                "--dead-letter-collection",
                &*self.database,
                self.dead_letter_collection_name(),
            ),
        ] {
            crate::mongo::namespace(database, &name)
                .map_err(|e| format!("{option} {name:?}: {e}"))?;
        }
        Ok(())
    }
}

/// Everything `kinesis-forwarder` needs to start: the connections and the [`Options`].
#[derive(Clone)]
pub struct Config {
    /// The MongoDB connection string; may hold a password, so it is never shown whole.
    pub mongodb_uri: String,
    /// Kinesis endpoint override, for an emulator.
    pub kinesis_endpoint_url: Option<String>,
    /// EventBridge endpoint override, for an emulator.
    pub eventbridge_endpoint_url: Option<String>,
    /// Where to serve /metrics, /healthz and /readyz (`--metrics-listen`); none by default.
    pub metrics_listen: Option<String>,
    /// What is forwarded, and how.
    pub options: Options,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("mongodb_uri", &"<redacted>")
            .field("kinesis_endpoint_url", &self.kinesis_endpoint_url)
            .field("eventbridge_endpoint_url", &self.eventbridge_endpoint_url)
            .field("metrics_listen", &self.metrics_listen)
            .field("options", &self.options)
            .finish()
    }
}

/// The command line of `kinesis-forwarder`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "kinesis-forwarder",
    version,
    about = "Forward every document inserted into a MongoDB collection (and, with --operations, updated or replaced) to a Kinesis data stream or an EventBridge event bus, resuming after restarts without loss"
)]
pub struct Cli {
    /// What to do instead of forwarding.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// MongoDB connection string (a replica set: change streams need one). Prefer the environment
    /// variable: the string may hold a password.
    #[arg(long, env = "MONGODB_CONNECTION_STRING", hide_env_values = true)]
    pub mongodb_uri: String,
    /// Database of the watched collection.
    #[arg(long, env = "FORWARDER_DATABASE", default_value = DEFAULT_DATABASE,
          value_parser = crate::mongo::database_name)]
    pub database: String,
    /// The watched collection.
    #[arg(long, env = "FORWARDER_COLLECTION", default_value = DEFAULT_COLLECTION,
          value_parser = crate::mongo::collection_name)]
    pub collection: String,
    /// Where events go: `kinesis` (PutRecords into --stream-name) or `eventbridge` (PutEvents
    /// on --event-bus-name, Source "sensehat-monitor.forwarder", DetailType "MongoDB change
    /// event", Detail the document).
    #[arg(long, env = "FORWARDER_TARGET", value_enum, default_value = "kinesis")]
    pub target: TargetKind,
    /// Kinesis data stream to put records into (--target kinesis).
    #[arg(long, env = "KINESIS_STREAM_NAME", default_value = DEFAULT_STREAM_NAME)]
    pub stream_name: String,
    /// Kinesis endpoint override, for an emulator (e.g. http://127.0.0.1:4568). Credentials and
    /// region always come from the standard AWS chain.
    #[arg(long, env = "KINESIS_ENDPOINT_URL")]
    pub kinesis_endpoint_url: Option<String>,
    /// EventBridge event bus to put events on (--target eventbridge).
    #[arg(long, env = "FORWARDER_EVENT_BUS_NAME", default_value = DEFAULT_EVENT_BUS_NAME)]
    pub event_bus_name: String,
    /// EventBridge endpoint override, for an emulator (e.g. http://127.0.0.1:5000). Credentials
    /// and region always come from the standard AWS chain.
    #[arg(long, env = "EVENTBRIDGE_ENDPOINT_URL")]
    pub eventbridge_endpoint_url: Option<String>,
    /// Document field (dotted path allowed) whose value is the partition key; `_id` spreads load
    /// over shards further. Missing or empty values use "-".
    #[arg(long, env = "FORWARDER_PARTITION_KEY_FIELD", default_value = DEFAULT_PARTITION_KEY_FIELD)]
    pub partition_key_field: String,
    /// Record data: `stringify` (JSON.stringify of the document, as the original trigger wrote),
    /// `relaxed` or `canonical` Extended JSON.
    #[arg(
        long,
        env = "FORWARDER_FORMAT",
        value_enum,
        default_value = "stringify"
    )]
    pub format: Format,
    /// Change events to forward, comma-separated; updates are forwarded with the full document
    /// looked up at the time of reading.
    #[arg(
        long,
        env = "FORWARDER_OPERATIONS",
        value_enum,
        value_delimiter = ',',
        default_value = "insert"
    )]
    pub operations: Vec<Operation>,
    /// Collection (in --state-database) holding the resume token (default:
    /// COLLECTION_forwarder_state; DATABASE.COLLECTION_forwarder_state in another database).
    #[arg(long, env = "FORWARDER_STATE_COLLECTION", value_parser = crate::mongo::collection_name)]
    pub state_collection: Option<String>,
    /// Database of the state collection (default: --database). Elsewhere, the stored position
    /// survives a dropDatabase of the watched database while the forwarder is down; in it, it
    /// goes with the database, and the next start is from now.
    #[arg(long, env = "FORWARDER_STATE_DATABASE", value_parser = crate::mongo::database_name)]
    pub state_database: Option<String>,
    /// Collection (same database) receiving documents too large to forward (over 1 MiB with the
    /// key, Kinesis's limit, or data over 1,024,000 bytes, Firehose's; with --target
    /// eventbridge, over 256 KiB) and events EventBridge refuses for good, with the reason
    /// (default: COLLECTION_forwarder_deadletter).
    #[arg(long, env = "FORWARDER_DEAD_LETTER_COLLECTION", value_parser = crate::mongo::collection_name)]
    pub dead_letter_collection: Option<String>,
    /// Ignore the stored resume token and start from now: the way back after the oplog lost the
    /// stored position. Events in between are skipped.
    #[arg(long, env = "FORWARDER_START_FROM_NOW", value_parser = clap::builder::BoolishValueParser::new())]
    pub start_from_now: bool,
    /// How long a partly filled batch waits for more events before it is put (e.g. 100ms, 1s)
    /// [default: 100ms].
    #[arg(long, env = "FORWARDER_LINGER", value_name = "DURATION", value_parser = parse_duration)]
    pub linger: Option<Duration>,
    /// The old spelling of --linger, in milliseconds; --linger wins when both are given.
    #[arg(long, env = "FORWARDER_LINGER_MS", hide = true,
          value_parser = clap::value_parser!(u64).range(..=crate::cli::MAX_DURATION_MS))]
    pub linger_ms: Option<u64>,
    /// Serve Prometheus metrics at /metrics, and /healthz and /readyz (MongoDB and the stream
    /// or bus answer), on this address (e.g. 127.0.0.1:9468, or 0.0.0.0:9468 for a scraper on
    /// another machine). Off by default.
    #[arg(long, env = "FORWARDER_METRICS_LISTEN", value_name = "ADDR", value_parser = crate::metrics::listen_addr)]
    pub metrics_listen: Option<String>,
}

/// How an EventBridge forwarder's [`Options::position_key`] begins.
const EVENTBRIDGE_KEY: &str = "eventbridge:";

/// What to do instead of forwarding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Check the options, the connection string's syntax and that an AWS region and credentials
    /// are set, print what was found and exit: 0 when forwarding could start, 2 when not.
    /// Contacts neither MongoDB nor Kinesis; suitable for systemd's ExecStartPre.
    CheckConfig,
}

impl Cli {
    /// The plain settings.
    pub fn into_config(self) -> Config {
        let linger = self
            .linger
            .or(self.linger_ms.map(Duration::from_millis))
            .unwrap_or(Duration::from_millis(DEFAULT_LINGER_MS));
        Config {
            mongodb_uri: self.mongodb_uri,
            kinesis_endpoint_url: self.kinesis_endpoint_url,
            eventbridge_endpoint_url: self.eventbridge_endpoint_url,
            metrics_listen: self.metrics_listen,
            options: Options {
                database: self.database,
                collection: self.collection,
                target: self.target,
                stream_name: self.stream_name,
                event_bus_name: self.event_bus_name,
                partition_key_field: self.partition_key_field,
                format: self.format,
                operations: self.operations,
                state_collection: self.state_collection,
                state_database: self.state_database,
                dead_letter_collection: self.dead_letter_collection,
                start_from_now: self.start_from_now,
                linger,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Config {
        let base = [
            "kinesis-forwarder",
            "--mongodb-uri",
            "mongodb://h/",
            "--stream-name",
            "s",
        ];
        Cli::try_parse_from(base.iter().chain(args))
            .unwrap()
            .into_config()
    }

    // The documented defaults hold, and match Options::new.
    #[test]
    fn defaults() {
        let o = parse(&[]).options;
        let d = Options::new("s");
        assert_eq!(o.linger, Duration::from_millis(100));
        assert_eq!(o.linger, d.linger);
        assert_eq!((&o.database, &o.collection), (&d.database, &d.collection));
        assert_eq!(o.operations, [Operation::Insert]);
        assert_eq!(o.partition_key_field, "nodeName");
        assert_eq!(
            (o.target, d.target),
            (TargetKind::Kinesis, TargetKind::Kinesis)
        );
        assert_eq!(o.event_bus_name, "default");
        assert_eq!(o.position_key(), "s");
    }

    // --target eventbridge needs no stream name; the stream defaults to the article's "realm";
    // the position is kept apart from a Kinesis forwarder's.
    #[test]
    fn eventbridge_target_and_defaults() {
        let c = Cli::try_parse_from([
            "kinesis-forwarder",
            "--mongodb-uri",
            "mongodb://h/",
            "--target",
            "eventbridge",
            "--event-bus-name",
            "b",
            "--eventbridge-endpoint-url",
            "http://127.0.0.1:5000",
        ])
        .unwrap()
        .into_config();
        assert_eq!(c.options.target, TargetKind::Eventbridge);
        assert_eq!(c.options.stream_name, DEFAULT_STREAM_NAME);
        assert_eq!(c.options.destination(), "b");
        assert_eq!(c.options.position_key(), "eventbridge:b");
        assert_eq!(
            c.eventbridge_endpoint_url.as_deref(),
            Some("http://127.0.0.1:5000")
        );
    }

    // In a state database of its own the default state collection names the watched database
    // too, so forwarders of two databases' `reports` sharing it keep apart; in the watched one
    // (or named), the name is as before.
    #[test]
    fn a_state_database_of_its_own_keeps_databases_apart() {
        let state = |db: &str, extra: &[&str]| {
            let o = parse(&[&["--database", db][..], extra].concat()).options;
            format!("{}.{}", o.state_database_name(), o.state_collection_name())
        };
        assert_eq!(state("a", &[]), "a.reports_forwarder_state");
        assert_eq!(
            state("a", &["--state-database", "a"]),
            "a.reports_forwarder_state"
        );
        let shared = ["--state-database", "fw"];
        assert_eq!(state("a", &shared), "fw.a.reports_forwarder_state");
        assert_eq!(state("b", &shared), "fw.b.reports_forwarder_state");
        let named = ["--state-database", "fw", "--state-collection", "pos"];
        assert_eq!(state("a", &named), "fw.pos");
    }

    // --linger takes a unit; the old --linger-ms still takes milliseconds, and the new one wins.
    #[test]
    fn linger_old_and_new_spellings() {
        assert_eq!(
            parse(&["--linger", "250ms"]).options.linger,
            Duration::from_millis(250)
        );
        assert_eq!(
            parse(&["--linger", "2"]).options.linger,
            Duration::from_secs(2)
        );
        assert_eq!(
            parse(&["--linger-ms", "250"]).options.linger,
            Duration::from_millis(250)
        );
        assert_eq!(
            parse(&["--linger-ms", "5", "--linger", "1s"])
                .options
                .linger,
            Duration::from_secs(1)
        );
        assert!(Cli::try_parse_from([
            "x",
            "--mongodb-uri",
            "m",
            "--stream-name",
            "s",
            "--linger",
            "soon"
        ])
        .is_err());
        // The old spelling is capped as --linger is (366 days).
        let linger_ms = |v| {
            Cli::try_parse_from([
                "x",
                "--mongodb-uri",
                "m",
                "--stream-name",
                "s",
                "--linger-ms",
                v,
            ])
        };
        assert!(linger_ms("31622400000").is_ok());
        assert!(linger_ms("31622400001").is_err());
    }

    // check-config is a subcommand after the options.
    #[test]
    fn check_config_subcommand() {
        let cli = Cli::try_parse_from([
            "kinesis-forwarder",
            "--mongodb-uri",
            "mongodb://h/",
            "--stream-name",
            "s",
            "check-config",
        ])
        .unwrap();
        assert_eq!(cli.command, Some(Command::CheckConfig));
    }

    // The connection string never shows in a Debug of the settings.
    #[test]
    fn debug_hides_the_connection_string() {
        let c = parse(&[]);
        let shown = format!(
            "{:?}",
            Config {
                mongodb_uri: "mongodb://u:secretpw@h/".into(),
                ..c
            }
        );
        assert!(!shown.contains("secretpw"), "{shown}");
    }

    // A state or dead-letter collection the server would refuse is refused as an option, and a
    // default name that would take the namespace over the server's 255 bytes at start.
    #[test]
    fn collection_names_the_server_refuses_are_refused_at_start() {
        for (option, name) in [
            ("--state-collection", "system.fwstate"),
            ("--dead-letter-collection", "dl$"),
            ("--state-collection", ""),
        ] {
            let args = [
                "x",
                "--mongodb-uri",
                "m",
                "--stream-name",
                "s",
                option,
                name,
            ];
            assert!(Cli::try_parse_from(args).is_err(), "{option} {name:?}");
        }
        assert_eq!(parse(&[]).options.check_names(), Ok(()));
        let long = "c".repeat(crate::mongo::COLLECTION_NAME_MAX);
        let db = "d".repeat(63);
        let o = parse(&["--database", &db, "--collection", &long]).options;
        let e = o.check_names().unwrap_err();
        assert!(
            e.starts_with("--state-collection \"") && e.contains("over the server's 255"),
            "{e}"
        );
        // Short enough names of their own make it work.
        let o = parse(&[
            "--database",
            &db,
            "--collection",
            &long,
            "--state-collection",
            "st",
            "--dead-letter-collection",
            "dl",
        ])
        .options;
        assert_eq!(o.check_names(), Ok(()));
    }

    // Only a position of the same kind of target could be a renamed stream's.
    #[test]
    fn same_target_kind() {
        let kinesis = parse(&[]).options;
        assert!(kinesis.same_target_kind("old-stream"));
        assert!(!kinesis.same_target_kind("eventbridge:b"));
        let mut eventbridge = kinesis.clone();
        eventbridge.target = TargetKind::Eventbridge;
        assert!(eventbridge.same_target_kind("eventbridge:other"));
        assert!(!eventbridge.same_target_kind("old-stream"));
    }
}
