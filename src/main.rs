//! The agent binary: parse the command line, open the board, the LED and the spool, and run
//! the sampling loop until SIGINT/SIGTERM (or `--count` reports).

use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use tracing::{error, info, warn};

use sensehat_monitor::agent::{self, Matrix, Output, Telemetry};
use sensehat_monitor::board::{led::open_led, Board};
use sensehat_monitor::config::{Cli, Command, Config, SensorsKind};
use sensehat_monitor::led::Frame;
use sensehat_monitor::metrics;
use sensehat_monitor::mongo;
use sensehat_monitor::shutdown::shutdown_signal;
use sensehat_monitor::sink::mongo::MongoSink;
use sensehat_monitor::sink::spool::Spool;
use sensehat_monitor::sink::NoDatabase;
use sensehat_monitor::status::{self, STATUS_FILE};

/// The logo to show: `--logo`'s image, or the built-in one and why `--logo`'s cannot be shown.
/// A decoration must not keep the agent from taking readings, so that is a warning, not an
/// error.
fn logo(config: &Config) -> Result<(Frame, Option<String>), String> {
    let own = config.logo.as_deref().map(|path| {
        let bytes = std::fs::read(path).map_err(|e| {
            // The unit's ProtectHome=yes hides these from the service.
            let hidden = ["/home", "/root", "/run/user"]
                .iter()
                .any(|d| path.starts_with(d));
            let hint = if hidden {
                "; the service cannot see /home, /root or /run/user (ProtectHome=yes): put the logo in /etc/sensehat-monitor/, readable by all"
            } else if e.kind() == std::io::ErrorKind::PermissionDenied {
                "; the service runs as a user of its own: make the file readable by all (chmod a+r)"
            } else {
                ""
            };
            format!("cannot read the logo {}: {e}{hint}", path.display())
        })?;
        Frame::from_png(&bytes).map_err(|e| format!("logo {}: {e}", path.display()))
    });
    match own {
        Some(Ok(frame)) => Ok((frame, None)),
        own => Frame::from_png(sensehat_monitor::led::frame::DEFAULT_LOGO_PNG)
            .map(|frame| (frame, own.and_then(Result::err)))
            .map_err(|e| format!("built-in logo: {e}")),
    }
}

/// `check-config`: the logo here, the rest in the library.
async fn check_config(config: &Config) -> Result<Vec<String>, String> {
    let (_, unusable) = logo(config)?;
    let check = config.check_config()?;
    let mut notes = agent::check_config(&check)
        .await
        .map_err(|e| e.to_string())?;
    notes.extend(
        unusable.map(|why| format!("warning: {why}; the agent will show the built-in logo")),
    );
    Ok(notes)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli: Cli = sensehat_monitor::cli::parse_args();
    sensehat_monitor::logging::init();
    let command = cli.command;
    let config = cli.into_config();
    match command {
        Some(Command::Status) => {
            let dir = &config.spool_dir;
            return match status::render(dir) {
                Ok(found) => match sensehat_monitor::cli::print_answer(&found.text) {
                    printed if printed != ExitCode::SUCCESS => printed,
                    _ => ExitCode::from(found.agent.exit_status()),
                },
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                    error!("cannot read the spool in {}: {e}; the service's spool is readable by root only: run it with sudo", dir.display());
                    ExitCode::FAILURE
                }
                Err(e) => {
                    error!("cannot read the spool in {}: {e}; pass --spool-dir if the agent uses another", dir.display());
                    ExitCode::FAILURE
                }
            };
        }
        Some(Command::CheckConfig) => {
            return match check_config(&config).await {
                Ok(notes) => {
                    for note in notes {
                        eprintln!("{note}");
                    }
                    eprintln!("configuration ok");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    error!("{e}");
                    ExitCode::from(2)
                }
            };
        }
        None => {}
    }
    match run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            error!("{}", failure.message());
            ExitCode::from(failure.exit_code())
        }
    }
}

/// Why the agent did not run to the end.
enum Failure {
    /// The configuration is wrong (exit 2, as `check-config`).
    Config(String),
    /// Starting or running failed (exit 1).
    Run(String),
}

impl Failure {
    fn exit_code(&self) -> u8 {
        match self {
            Failure::Config(_) => 2,
            Failure::Run(_) => 1,
        }
    }

    fn message(&self) -> &str {
        match self {
            Failure::Config(m) | Failure::Run(m) => m,
        }
    }
}

async fn run(config: Config) -> Result<(), Failure> {
    // Before the board and the LED: a stop request during start-up is then acted on by the
    // sampling loop's first poll (a clean exit that clears the matrix), not by the default
    // action of the signal, which would leave the logo lit.
    let shutdown = shutdown_signal();
    let uri = if config.dry_run {
        None
    } else {
        let uri = config.require_uri().map_err(Failure::Config)?;
        mongo::check_uri(uri).await.map_err(Failure::Config)?;
        Some(uri.to_owned())
    };
    // Before the board: an address in use is a configuration error, said at once.
    let listener = metrics::bind_or_later(config.metrics_listen.as_deref())
        .await
        .map_err(|e| Failure::Config(e.to_string()))?;
    let (frame, unusable) = logo(&config).map_err(Failure::Config)?;
    if let Some(why) = unusable {
        warn!("{why}; showing the built-in logo");
    }
    let board = open_board(&config).await?;
    let mut led = open_led(
        config.led_device.as_deref(),
        &config.i2c_bus,
        config.led_rotation,
        config.sensors == SensorsKind::Sensehat,
    );
    if let Some(l) = &mut led {
        if let Err(e) = l.show(&frame) {
            warn!(device = l.name(), error = %e, "cannot write the LED matrix; running without it");
            led = None;
        }
    }
    // The agent clears it when it stops.
    let matrix = led.map(|l| Matrix::new(l, frame, config.led_status));

    let result = match uri {
        None => {
            info!(sensors = ?config.sensors, moving_rule = %config.agent.moving_rule, "dry run: printing reports to stdout");
            let output = Output::Print(Box::new(std::io::stdout()));
            let mut options = config.agent.clone();
            options.telemetry = telemetry(&config, listener, None);
            agent::run(options, board, output, NoDatabase, matrix, shutdown)
                .await
                .map_err(|e| e.to_string())
        }
        Some(uri) => run_with_spool(&config, &uri, board, matrix, listener, shutdown).await,
    };

    let counters = result.map_err(Failure::Run)?;
    info!(
        reports = counters.reports,
        sensor_faults = counters.skipped_samples,
        missed_slots = counters.missed_slots,
        delivered = counters.delivered,
        duplicates = counters.duplicates,
        dropped = counters.dropped,
        "stopped"
    );
    Ok(())
}

/// The real Sense HAT or the simulated one (opening the real one blocks on I2C).
async fn open_board(config: &Config) -> Result<Board, Failure> {
    let bus = config.i2c_bus.clone();
    let kind = config.sensors;
    let plan = config.sim.clone();
    tokio::task::spawn_blocking(move || match kind {
        SensorsKind::Sensehat => Board::open_linux(&bus),
        SensorsKind::Sim => Board::open_sim(plan),
    })
    .await
    .map_err(|e| Failure::Run(e.to_string()))?
    .map_err(|e| Failure::Run(format!("cannot start the Sense HAT: {e}")))
}

/// Run with the spool, delivered to MongoDB at `uri`.
async fn run_with_spool(
    config: &Config,
    uri: &str,
    board: Board,
    matrix: Option<Matrix>,
    listener: Option<metrics::Listener>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<agent::Counters, String> {
    let dir = &config.spool_dir;
    let opened = match agent::open_spool(dir, config.spool.clone()) {
        Ok(opened) => opened,
        Err(e) => {
            // The agent never ran, so it does not clear the logo.
            if let Some(m) = matrix {
                m.clear().await;
            }
            return Err(e.to_string());
        }
    };
    // Held until the agent has stopped.
    let _lock = opened.lock;
    let mut options = config.agent.clone();
    if let Some(c) = &mut options.clock {
        c.copy = Some(opened.held);
    }
    info!(spool = %dir.display(), backlog = opened.backlog, database = %config.database, collection = %config.collection, moving_rule = %options.moving_rule, "sampling every {} ms", options.interval.as_millis());
    let sink = MongoSink::new(
        uri,
        &config.database,
        &config.collection,
        config.wire_compression,
    );
    let spool = Arc::new(Mutex::new(opened.spool));
    options.telemetry = telemetry(config, listener, Some(spool.clone()));
    let output = Output::Spool {
        spool,
        status_path: Some(dir.join(STATUS_FILE)),
    };
    agent::run(options, board, output, sink, matrix, shutdown)
        .await
        .map_err(|e| e.to_string())
}

/// The agent's metrics, when `--metrics-listen` or `--metrics-textfile` asks for them, served
/// on `listener` from now on.
fn telemetry(
    config: &Config,
    listener: Option<metrics::Listener>,
    spool: Option<Arc<Mutex<Spool>>>,
) -> Option<Telemetry> {
    if listener.is_none() && config.metrics_textfile.is_none() {
        return None;
    }
    if config.dry_run && config.metrics_textfile.is_some() {
        warn!("--metrics-textfile is not written with --dry-run: it is written with the spool's status.json, and --dry-run has no spool");
    }
    let t = Telemetry::new(spool, config.metrics_textfile.clone());
    if let Some(l) = listener {
        metrics::spawn_on(l, t.registry(), t.readiness());
    }
    Some(t)
}
