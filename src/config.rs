//! The agent's command line, and the plain [`Config`] the binary runs on. Every option can also
//! be set by an environment variable (shown in `--help`), which is how the systemd unit's
//! EnvironmentFile configures it.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::agent::{AgentOptions, CheckConfig};
use crate::board::{parse_rest_g, SimFault, SimKnock, SimPlan};
pub use crate::cli::parse_duration;
use crate::clock::ClockWait;
use crate::led::Rotation;
use crate::report::MovingRule;
use crate::sink::mongo::WireCompression;
use crate::sink::spool::SpoolOptions;

/// Time between samples, as the original agent sampled.
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(500);
/// `--database`.
pub const DEFAULT_DATABASE: &str = "monitors";
/// `--collection`.
pub const DEFAULT_COLLECTION: &str = "reports";
/// `--i2c-bus`: the Raspberry Pi's header I2C bus.
pub const DEFAULT_I2C_BUS: &str = "/dev/i2c-1";
/// `--spool-dir` when systemd gives no `STATE_DIRECTORY`.
pub const DEFAULT_SPOOL_DIR: &str = "/var/lib/sensehat-monitor";
/// 7 days of 2 Hz reports at about 230 bytes each on disk is 278 MB; leave room.
pub const DEFAULT_SPOOL_MAX_BYTES: &str = "384MiB";
/// The smallest `--spool-max-bytes`: four of the spool's smallest segments, about 70 reports.
pub const MIN_SPOOL_MAX_BYTES: u64 = 16 * 1024;
/// `--insert-every`: a report reaches the database within about this long of being taken
/// ("within a few seconds"), and at the default interval each insert carries ten reports: a
/// tenth of the round trips and per-insert bytes, and compression that has ten reports' field
/// names to share. The spool holds the window's reports, so a crash inside it loses nothing.
pub const DEFAULT_INSERT_EVERY: &str = "5s";
/// How long past its insert window an undelivered report waits to be synced to disk, by
/// default: `--spool-sync` is the window plus this. A report is normally stored within a
/// fraction of a second of its window closing, so with the database answering nothing is ever
/// owed a sync and the SD card sees no forced writes; a second covers a slow round trip.
pub const SYNC_AFTER_WINDOW: Duration = Duration::from_secs(1);
/// `--shutdown-timeout`.
pub const DEFAULT_SHUTDOWN_TIMEOUT: &str = "5s";
/// `--clock-wait`.
pub const DEFAULT_CLOCK_WAIT: &str = "5m";

/// `--sensors`: which board to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SensorsKind {
    /// The real Sense HAT on the I2C bus.
    Sensehat,
    /// A simulated Sense HAT (register-level), for machines without one.
    Sim,
}

/// Read a Sense HAT every interval and store each reading in MongoDB.
#[derive(Debug, Parser)]
#[command(version, long_about = None)]
pub struct Cli {
    /// A command instead of running the agent.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Which board to read.
    #[arg(long, env = "SENSEHAT_SENSORS", value_enum, default_value_t = SensorsKind::Sensehat)]
    pub sensors: SensorsKind,

    /// Print each report to stdout as relaxed Extended JSON instead of storing it.
    #[arg(long, env = "SENSEHAT_DRY_RUN", value_parser = clap::builder::BoolishValueParser::new())]
    pub dry_run: bool,

    /// Stop after this many reports have been printed or acknowledged (default: run forever).
    #[arg(long, env = "SENSEHAT_COUNT")]
    pub count: Option<u64>,

    /// Time between samples, at least 1ms (e.g. 500ms, 2s) [default: 500ms].
    #[arg(long, env = "SENSEHAT_INTERVAL", value_parser = parse_interval)]
    pub interval: Option<Duration>,

    /// The old spelling of --interval, in milliseconds (`--interval` wins when both are set).
    #[arg(long, env = "SENSEHAT_INTERVAL_MS", hide = true,
          value_parser = clap::value_parser!(u64).range(1..=crate::cli::MAX_DURATION_MS))]
    pub interval_ms: Option<u64>,

    /// Send the reports taken within this long of the last insert together in the next one
    /// (e.g. 2s, 10s; 0: each report as soon as it is taken). A backlog goes at once.
    #[arg(long, env = "SENSEHAT_INSERT_EVERY", default_value = DEFAULT_INSERT_EVERY,
          value_parser = parse_duration)]
    pub insert_every: Duration,

    /// Compress messages to and from the database when the server agrees (a `compressors=`
    /// in the connection string wins, with its `zlibCompressionLevel`; zlib is used at its
    /// fastest level otherwise).
    #[arg(long, env = "SENSEHAT_WIRE_COMPRESSION", value_enum, default_value_t = WireCompression::Zlib)]
    pub wire_compression: WireCompression,

    /// MongoDB connection string (mongodb:// or mongodb+srv://). Prefer the environment
    /// variable: a command line is visible to every user of the machine.
    #[arg(long, env = "MONGODB_CONNECTION_STRING", hide_env_values = true)]
    pub mongodb_uri: Option<String>,

    /// Database to write to.
    #[arg(long, env = "SENSEHAT_DATABASE", default_value = DEFAULT_DATABASE,
          value_parser = crate::mongo::database_name)]
    pub database: String,

    /// Collection to write to.
    #[arg(long, env = "SENSEHAT_COLLECTION", default_value = DEFAULT_COLLECTION,
          value_parser = crate::mongo::collection_name)]
    pub collection: String,

    /// nodeName of each report (default: the host name).
    #[arg(long, env = "SENSEHAT_NODE_NAME")]
    pub node_name: Option<String>,

    /// How isMoving is decided: `axis`, the original agent's rule (any axis below -1 g or
    /// above +1 g; a board lying flat reads about +1 g, so noise alone can set it), or
    /// `magnitude`, in any orientation: the acceleration's length is more than 0.25 g from
    /// 1 g (`magnitude:G` for another threshold, e.g. magnitude:0.1). See docs/operating.md.
    #[arg(long, env = "SENSEHAT_MOVING_RULE", default_value = "axis")]
    pub moving_rule: MovingRule,

    /// An 8x8 PNG to show on the LED matrix instead of the built-in logo.
    #[arg(long, env = "SENSEHAT_LOGO")]
    pub logo: Option<PathBuf>,

    /// LED matrix rotation (0, 90, 180, 270; 0 has the HDMI port down).
    #[arg(long, env = "SENSEHAT_LED_ROTATION", default_value = "0")]
    pub led_rotation: Rotation,

    /// Framebuffer device of the LED matrix (default: the one named "RPi-Sense FB").
    #[arg(long, env = "SENSEHAT_LED_DEVICE")]
    pub led_device: Option<PathBuf>,

    /// Show the agent's state in the logo's top-right 2x2 corner: green stored, amber to red
    /// spooled (database unreachable), blue waiting for the clock, magenta a sensor failing.
    /// See docs/operating.md (The LED matrix).
    #[arg(long, env = "SENSEHAT_LED_STATUS", value_parser = clap::builder::BoolishValueParser::new())]
    pub led_status: bool,

    /// I2C bus device of the Sense HAT.
    #[arg(long, env = "SENSEHAT_I2C_BUS", default_value = DEFAULT_I2C_BUS)]
    pub i2c_bus: String,

    /// Directory of the durable spool (default: $STATE_DIRECTORY from systemd, else
    /// /var/lib/sensehat-monitor).
    #[arg(long, env = "SENSEHAT_SPOOL_DIR", global = true)]
    pub spool_dir: Option<PathBuf>,

    /// Disk the spool may use (bytes, or e.g. 64MiB, 1G); beyond it the oldest undelivered
    /// reports are dropped (and counted).
    #[arg(long, env = "SENSEHAT_SPOOL_MAX_BYTES", default_value = DEFAULT_SPOOL_MAX_BYTES,
          value_parser = spool_max_bytes)]
    pub spool_max_bytes: u64,

    /// fdatasync reports not stored in the database after this long (e.g. 1s; 0: every report
    /// as it is taken), which bounds what a power cut can take. See docs/durability.md.
    /// [default: --insert-every plus 1s, so 6s]
    #[arg(long, env = "SENSEHAT_SPOOL_SYNC", value_parser = parse_duration)]
    pub spool_sync: Option<Duration>,

    /// The old spelling of --spool-sync, in milliseconds (`--spool-sync` wins when both are set).
    #[arg(long, env = "SENSEHAT_SPOOL_SYNC_MS", hide = true,
          value_parser = clap::value_parser!(u64).range(..=crate::cli::MAX_DURATION_MS))]
    pub spool_sync_ms: Option<u64>,

    /// On SIGTERM/SIGINT, how long in-flight inserts may take before exiting (e.g. 5s, 500ms).
    #[arg(long, env = "SENSEHAT_SHUTDOWN_TIMEOUT", default_value = DEFAULT_SHUTDOWN_TIMEOUT,
          value_parser = parse_duration)]
    pub shutdown_timeout: Duration,

    /// While systemd-timesyncd has not synchronized the clock (after a boot without network),
    /// hold readings for up to this long and stamp them once it has (0: don't hold).
    /// See docs/durability.md.
    #[arg(long, env = "SENSEHAT_CLOCK_WAIT", default_value = DEFAULT_CLOCK_WAIT,
          value_parser = parse_duration)]
    pub clock_wait: Duration,

    /// The file whose presence says the clock is synchronized (systemd-timesyncd's).
    #[arg(long, env = "SENSEHAT_CLOCK_SYNC_FILE", default_value = crate::clock::DEFAULT_MARKER)]
    pub clock_sync_file: PathBuf,

    /// For testing: readings taken while the clock is not synchronized are first stamped this
    /// many ms off (e.g. -10800000, three hours behind, as after a power cut).
    #[arg(
        long,
        env = "SENSEHAT_SIM_CLOCK_ERROR_MS",
        default_value_t = 0,
        allow_negative_numbers = true,
        hide = true
    )]
    pub sim_clock_error_ms: i64,

    /// Serve Prometheus metrics at /metrics, and /healthz and /readyz, on this address (e.g.
    /// 127.0.0.1:9464, or 0.0.0.0:9464 for a scraper on another machine). Off by default.
    #[arg(long, env = "SENSEHAT_METRICS_LISTEN", value_parser = crate::metrics::listen_addr)]
    pub metrics_listen: Option<String>,

    /// Also write the metrics to this file every 10 s, replaced whole, for node_exporter's
    /// textfile collector (e.g. /run/sensehat-monitor/sensehat.prom, which the service may
    /// write; point the collector's --collector.textfile.directory there).
    #[arg(long, env = "SENSEHAT_METRICS_TEXTFILE")]
    pub metrics_textfile: Option<PathBuf>,

    /// Simulated board only: make CHIP fail during sample attempts FIRST..FIRST+COUNT
    /// (CHIP:FIRST:COUNT, e.g. lps25h:10:3; FIRST 0 fails it at start-up too), or reset it, as a power glitch would, before
    /// attempt FIRST (CHIP:FIRST:reset). For testing fault handling.
    #[arg(long, env = "SENSEHAT_SIM_FAULT", value_delimiter = ',')]
    pub sim_fault: Vec<SimFault>,

    /// Simulated board only: knock the board during sample attempts FIRST..FIRST+COUNT
    /// (FIRST:COUNT, e.g. 10:4), as it is for two seconds every five minutes. For testing
    /// isMoving.
    #[arg(long, env = "SENSEHAT_SIM_KNOCK", value_delimiter = ',', hide = true)]
    pub sim_knock: Vec<SimKnock>,

    /// Simulated board only: what the accelerometer reads at rest, X,Y,Z in g (e.g. 0,0,1.01;
    /// default 0,0,0.985, lying flat). For testing isMoving.
    #[arg(long, env = "SENSEHAT_SIM_GRAVITY", value_parser = parse_rest_g,
          allow_hyphen_values = true, hide = true)]
    pub sim_gravity: Option<[f64; 3]>,
}

/// What to do instead of running the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Print spool depth, the oldest unsent report, the last insert and sensor health.
    ///
    /// Exit status: 0 when the agent is running (it holds the spool's lock, or its status file
    /// is fresh); 3 when it is not running (no lock held, and its status file is stale or its
    /// process is gone; the first line then says so, and its last status follows); 4 when it
    /// is not known (no lock held, and no status file, or an unreadable one); 1 when the spool
    /// cannot be read or the answer cannot be written; 2 for a command line it refuses.
    Status,
    /// Check the configuration (connection string, spool directory, logo) and say what the
    /// clock says, then exit; suitable for systemd's ExecStartPre.
    CheckConfig,
}

/// What the agent runs on: the command line with its defaults and old spellings resolved
/// ([`Cli::into_config`]).
#[derive(Debug, Clone)]
pub struct Config {
    /// Which board to read.
    pub sensors: SensorsKind,
    /// Print each report to stdout instead of storing it.
    pub dry_run: bool,
    /// The connection string as given (see [`Config::require_uri`]).
    pub mongodb_uri: Option<String>,
    /// Database to write to.
    pub database: String,
    /// Collection to write to.
    pub collection: String,
    /// Compress messages to and from the database when the server agrees.
    pub wire_compression: WireCompression,
    /// An 8x8 PNG for the LED matrix; `None` shows the built-in logo.
    pub logo: Option<PathBuf>,
    /// LED matrix rotation.
    pub led_rotation: Rotation,
    /// Framebuffer device of the LED matrix; `None` finds the one named "RPi-Sense FB".
    pub led_device: Option<PathBuf>,
    /// Show the agent's state in a corner of the LED matrix.
    pub led_status: bool,
    /// I2C bus device of the Sense HAT.
    pub i2c_bus: String,
    /// Directory of the durable spool.
    pub spool_dir: PathBuf,
    /// The spool's options.
    pub spool: SpoolOptions,
    /// What [`crate::agent::run`] needs; the held reports' copy is set once the spool is open.
    pub agent: AgentOptions,
    /// Simulated board only: the faults to inject, the knocks, how the board lies.
    pub sim: SimPlan,
    /// `--metrics-listen`.
    pub metrics_listen: Option<String>,
    /// `--metrics-textfile`.
    pub metrics_textfile: Option<PathBuf>,
}

/// A duration of at least 1 ms: a zero interval would sample without pause.
fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_millis(1) {
        return Err(format!("{s:?} is shorter than 1ms"));
    }
    Ok(d)
}

impl Cli {
    /// `--interval`, else the old `--interval-ms`, else the default.
    pub fn interval(&self) -> Duration {
        self.interval
            .or(self.interval_ms.map(Duration::from_millis))
            .unwrap_or(DEFAULT_INTERVAL)
    }

    /// `--spool-sync`, else the old `--spool-sync-ms`, else the insert window plus
    /// [`SYNC_AFTER_WINDOW`].
    pub fn spool_sync(&self) -> Duration {
        self.spool_sync
            .or(self.spool_sync_ms.map(Duration::from_millis))
            .unwrap_or_else(|| self.insert_every.saturating_add(SYNC_AFTER_WINDOW))
    }

    /// The spool's options.
    pub fn spool_options(&self) -> SpoolOptions {
        SpoolOptions {
            max_bytes: self.spool_max_bytes,
            sync_interval: self.spool_sync(),
        }
    }

    /// What [`crate::agent::run`] needs; the held reports' copy is set once the spool is open.
    pub fn agent_options(&self) -> AgentOptions {
        AgentOptions {
            node_name: self.node_name(),
            moving_rule: self.moving_rule,
            interval: self.interval(),
            insert_every: self.insert_every,
            count: self.count,
            shutdown_timeout: self.shutdown_timeout,
            ticker: crate::agent::TickSource::Kernel,
            notify_systemd: std::env::var_os("NOTIFY_SOCKET").is_some(),
            clock: Some(ClockWait {
                marker: self.clock_sync_file.clone(),
                wait: self.clock_wait,
                copy: None,
                simulated_error_ms: self.sim_clock_error_ms,
            }),
            telemetry: None,
        }
    }

    /// `--spool-dir`, else systemd's `STATE_DIRECTORY`, else the default.
    pub fn spool_dir(&self) -> PathBuf {
        self.spool_dir
            .clone()
            .or_else(state_directory)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SPOOL_DIR))
    }

    /// `--node-name`, else the host name.
    pub fn node_name(&self) -> String {
        self.node_name
            .clone()
            .unwrap_or_else(|| gethostname::gethostname().to_string_lossy().into_owned())
    }

    /// The [`Config`] to run on.
    pub fn into_config(self) -> Config {
        Config {
            spool_dir: self.spool_dir(),
            spool: self.spool_options(),
            agent: self.agent_options(),
            sensors: self.sensors,
            dry_run: self.dry_run,
            mongodb_uri: self.mongodb_uri,
            database: self.database,
            collection: self.collection,
            wire_compression: self.wire_compression,
            logo: self.logo,
            led_rotation: self.led_rotation,
            led_device: self.led_device,
            led_status: self.led_status,
            i2c_bus: self.i2c_bus,
            sim: SimPlan {
                faults: self.sim_fault,
                knocks: self.sim_knock,
                rest_g: self.sim_gravity,
            },
            metrics_listen: self.metrics_listen,
            metrics_textfile: self.metrics_textfile,
        }
    }
}

/// The directory systemd's `StateDirectory=` gave the service (`STATE_DIRECTORY`, a
/// colon-separated list: its first), when run by systemd with one.
fn state_directory() -> Option<PathBuf> {
    let value = std::env::var_os("STATE_DIRECTORY")?;
    value
        .to_str()
        .and_then(|s| s.split(':').next())
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
}

impl Config {
    /// What `check-config` looks at; `Err` says how to give a missing connection string.
    pub fn check_config(&self) -> Result<CheckConfig, String> {
        let database = if self.dry_run {
            None
        } else {
            Some((self.require_uri()?.to_owned(), self.spool_dir.clone()))
        };
        // Without a clock wait the clock is trusted as it is, as with --clock-wait 0.
        let clock = self.agent.clock.as_ref();
        Ok(CheckConfig {
            database,
            clock_sync_file: clock.map_or_else(
                || PathBuf::from(crate::clock::DEFAULT_MARKER),
                |c| c.marker.clone(),
            ),
            clock_wait: clock.map_or(Duration::ZERO, |c| c.wait),
            state_directory: state_directory(),
            metrics_textfile: self.metrics_textfile.clone().filter(|_| !self.dry_run),
        })
    }

    /// The connection string, or the message that says how to give one.
    pub fn require_uri(&self) -> Result<&str, String> {
        match self.mongodb_uri.as_deref().map(str::trim) {
            Some(u) if !u.is_empty() => Ok(u),
            _ => Err(
                "no MongoDB connection string: set MONGODB_CONNECTION_STRING (for the systemd \
                 service, in /etc/sensehat-monitor/env) to e.g. \
                 mongodb+srv://USER:PASSWORD@cluster0.example.mongodb.net/, or pass --mongodb-uri; \
                 or use --dry-run to print readings without a database"
                    .to_owned(),
            ),
        }
    }
}

/// A `--spool-max-bytes`: a size ([`crate::cli::parse_size`]) of at least
/// [`MIN_SPOOL_MAX_BYTES`].
fn spool_max_bytes(s: &str) -> Result<u64, String> {
    let bytes = crate::cli::parse_size(s)?;
    if bytes < MIN_SPOOL_MAX_BYTES {
        return Err(format!(
            "{s:?} is too small: the spool needs at least {MIN_SPOOL_MAX_BYTES} bytes (16KiB)"
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    // --spool-max-bytes takes a unit, and refuses less than the spool can work with.
    #[test]
    fn spool_size_with_a_unit() {
        let max = |v: &str| Cli::try_parse_from(["x", "--spool-max-bytes", v]);
        assert_eq!(max("64MiB").unwrap().spool_max_bytes, 64 << 20);
        assert_eq!(max("16384").unwrap().spool_max_bytes, MIN_SPOOL_MAX_BYTES);
        let small = max("16000").unwrap_err().to_string();
        assert!(small.contains("too small"), "{small}");
        let unit = max("2TB").unwrap_err().to_string();
        assert!(unit.contains("unknown unit"), "{unit}");
    }

    // The documented defaults hold.
    #[test]
    fn defaults() {
        let cli = Cli::try_parse_from(["sensehat-monitor"]).unwrap();
        assert_eq!(cli.sensors, SensorsKind::Sensehat);
        assert_eq!(cli.interval(), Duration::from_millis(500));
        assert_eq!(cli.spool_sync(), Duration::from_secs(6));
        assert_eq!(cli.count, None);
        assert_eq!(cli.database, "monitors");
        assert_eq!(cli.collection, "reports");
        assert_eq!(cli.shutdown_timeout, Duration::from_secs(5));
        assert_eq!(cli.clock_wait, Duration::from_secs(300));
        assert_eq!(cli.insert_every, Duration::from_secs(5));
        assert_eq!(cli.moving_rule, MovingRule::Axis);
        assert!(!cli.led_status);
        assert_eq!(cli.spool_max_bytes, 384 * 1024 * 1024);
        assert!(Cli::try_parse_from(["x", "--interval-ms", "0"]).is_err());
        // The old spellings are capped as the new ones are (366 days).
        for old in ["--interval-ms", "--spool-sync-ms"] {
            assert!(Cli::try_parse_from(["x", old, "31622400000"]).is_ok());
            assert!(Cli::try_parse_from(["x", old, "31622400001"]).is_err());
        }
        assert!(Cli::try_parse_from(["x", "--interval", "0"]).is_err());
    }

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("sensehat-monitor").chain(args.iter().copied()))
            .unwrap()
    }

    // The old unit-less spellings (milliseconds) still parse, to the same values as the new.
    #[test]
    fn old_millisecond_spellings_still_parse() {
        assert_eq!(
            parse(&["--interval-ms", "250"]).interval(),
            parse(&["--interval", "250ms"]).interval()
        );
        assert_eq!(
            parse(&["--interval", "2s"]).interval(),
            Duration::from_secs(2)
        );
        assert_eq!(
            parse(&["--spool-sync-ms", "1500"]).spool_sync(),
            parse(&["--spool-sync", "1.5s"]).spool_sync()
        );
        // 0 still means a sync after every report, in either spelling.
        assert_eq!(
            parse(&["--spool-sync-ms", "0"]).spool_sync(),
            Duration::ZERO
        );
        assert_eq!(parse(&["--spool-sync", "0"]).spool_sync(), Duration::ZERO);
        // Not given: the insert window plus a second, whatever the window.
        assert_eq!(
            parse(&["--insert-every", "0"]).spool_sync(),
            Duration::from_secs(1)
        );
        assert_eq!(
            parse(&["--insert-every", "30s"]).spool_sync(),
            Duration::from_secs(31)
        );
        assert_eq!(
            parse(&["--insert-every", "30s", "--spool-sync", "1s"]).spool_sync(),
            Duration::from_secs(1)
        );
        // Both given: the new spelling wins.
        let both = parse(&["--interval", "1s", "--interval-ms", "20"]);
        assert_eq!(both.interval(), Duration::from_secs(1));
    }

    // The config holds what the command line resolves to: old spellings, defaults, the clock
    // that check-config looks at, and a missing connection string only when one is needed.
    #[test]
    fn into_config_resolves_the_command_line() {
        let args = [
            "--interval-ms",
            "250",
            "--spool-dir",
            "/tmp/s",
            "--clock-wait",
            "0",
        ];
        let config = parse(&[&args[..], &["--mongodb-uri", " "]].concat()).into_config();
        assert_eq!(config.agent.interval, Duration::from_millis(250));
        assert_eq!(config.spool_dir, PathBuf::from("/tmp/s"));
        assert_eq!(config.spool.sync_interval, Duration::from_secs(6));
        assert!(config
            .check_config()
            .unwrap_err()
            .contains("MONGODB_CONNECTION_STRING"));
        let dry = parse(&[&args[..], &["--dry-run"]].concat()).into_config();
        let check = dry.check_config().unwrap();
        assert!(check.database.is_none());
        assert_eq!(check.clock_wait, Duration::ZERO);
    }

    // --moving-rule parses once into the rule the reports carry; nonsense is refused at start.
    #[test]
    fn moving_rule_reaches_the_agent() {
        let rule = |args: &[&str]| parse(args).into_config().agent.moving_rule;
        assert_eq!(rule(&[]), MovingRule::Axis);
        assert_eq!(
            rule(&["--moving-rule", "magnitude"]),
            MovingRule::Magnitude {
                threshold_g: crate::report::DEFAULT_MOVING_THRESHOLD_G
            }
        );
        assert_eq!(
            rule(&["--moving-rule", "magnitude:0.1"]),
            MovingRule::Magnitude { threshold_g: 0.1 }
        );
        let e = Cli::try_parse_from(["x", "--moving-rule", "magnitude:0"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a threshold"), "{e}");
    }

    // The old options are hidden from --help, the new ones shown.
    #[test]
    fn old_spellings_are_hidden() {
        use clap::CommandFactory;
        let help = Cli::command().render_help().to_string();
        assert!(help.contains("--interval <INTERVAL>"), "{help}");
        assert!(help.contains("--spool-sync <SPOOL_SYNC>"), "{help}");
        assert!(!help.contains("--interval-ms"), "{help}");
        assert!(!help.contains("--spool-sync-ms"), "{help}");
    }
}
