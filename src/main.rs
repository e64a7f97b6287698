//! The agent binary: parse the command line, open the board, the LED and the spool, and run
//! the sampling loop until SIGINT/SIGTERM (or `--count` reports).

use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use tracing::{error, info, warn};

use sensehat_monitor::agent::{self, AgentOptions, Output};
use sensehat_monitor::board::{linux, Board};
use sensehat_monitor::clock::{self, ClockWait};
use sensehat_monitor::config::{Cli, Command, SensorsKind};
use sensehat_monitor::led;
use sensehat_monitor::led::{find_sense_fb, AttinyLed, Frame, FramebufferLed};
use sensehat_monitor::mongo;
use sensehat_monitor::shutdown::shutdown_signal;
use sensehat_monitor::sink::mongo::MongoSink;
use sensehat_monitor::sink::spool::{Spool, SpoolOptions};
use sensehat_monitor::sink::NoDatabase;
use sensehat_monitor::status::{self, STATUS_FILE};

fn logo(cli: &Cli) -> Result<Frame, String> {
    match &cli.logo {
        None => Frame::from_png(sensehat_monitor::led::frame::DEFAULT_LOGO_PNG)
            .map_err(|e| format!("built-in logo: {e}")),
        Some(path) => {
            let bytes = std::fs::read(path)
                .map_err(|e| format!("cannot read the logo {}: {e}", path.display()))?;
            Frame::from_png(&bytes).map_err(|e| format!("logo {}: {e}", path.display()))
        }
    }
}

/// Where the logo goes.
enum Led {
    /// The `RPi-Sense FB` framebuffer (or `--led-device`).
    Framebuffer(FramebufferLed),
    /// The LED controller itself, over I2C, when there is no framebuffer.
    Controller(AttinyLed<linux_embedded_hal::I2cdev>),
}

impl Led {
    fn show(&mut self, frame: &Frame) -> Result<(), String> {
        match self {
            Led::Framebuffer(fb) => fb.show(frame).map_err(|e| e.to_string()),
            Led::Controller(c) => c.show(frame).map_err(|e| e.to_string()),
        }
    }

    fn clear(&mut self) -> Result<(), String> {
        self.show(&Frame::blank())
    }

    fn name(&self) -> String {
        match self {
            Led::Framebuffer(fb) => fb.path().display().to_string(),
            Led::Controller(_) => format!("I2C address {:#04x}", led::attiny::ADDRESS),
        }
    }
}

/// The LED matrix, if there is one: `--led-device`, else the framebuffer named RPi-Sense FB,
/// else the LED controller over I2C unless a kernel driver owns it (only on the real board).
fn open_led(cli: &Cli) -> Option<Led> {
    match (&cli.led_device, cli.sensors) {
        (Some(p), _) => return Some(Led::Framebuffer(FramebufferLed::new(p, cli.led_rotation))),
        (None, SensorsKind::Sim) => return None,
        (None, SensorsKind::Sensehat) => {}
    }
    if let Some(p) = find_sense_fb("/sys/class/graphics".as_ref(), "/dev".as_ref()) {
        return Some(Led::Framebuffer(FramebufferLed::new(p, cli.led_rotation)));
    }
    if let Some(driver) = linux::owner(&cli.i2c_bus, led::attiny::ADDRESS) {
        warn!(driver, "no LED matrix framebuffer (no \"RPi-Sense FB\"), and a kernel driver owns the LED controller; running without the LED");
        return None;
    }
    match linux_embedded_hal::I2cdev::new(&cli.i2c_bus) {
        Ok(i2c) => {
            info!("no LED matrix framebuffer (is the rpisense-fb driver loaded?); writing the matrix over I2C instead");
            Some(Led::Controller(AttinyLed::new(i2c, cli.led_rotation)))
        }
        Err(e) => {
            warn!(error = %e, bus = cli.i2c_bus, "no LED matrix found (no framebuffer named \"RPi-Sense FB\", and the I2C bus cannot be opened); running without the LED");
            None
        }
    }
}

/// `check-config`: the logo here, the rest in the library.
async fn check_config(cli: &Cli) -> Result<Vec<String>, String> {
    logo(cli)?;
    let config = cli.check_config()?;
    agent::check_config(&config)
        .await
        .map_err(|e| e.to_string())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    sensehat_monitor::logging::init();
    match cli.command {
        Some(Command::Status) => {
            let dir = cli.spool_dir();
            return match status::render(&dir) {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
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
            return match check_config(&cli).await {
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
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, msg)) => {
            error!("{msg}");
            ExitCode::from(code)
        }
    }
}

async fn run(cli: Cli) -> Result<(), (u8, String)> {
    // Before the board and the LED: a stop request during start-up is then acted on by the
    // sampling loop's first poll (a clean exit that clears the matrix), not by the default
    // action of the signal, which would leave the logo lit.
    let shutdown = shutdown_signal();
    let uri = if cli.dry_run {
        None
    } else {
        let uri = cli.require_uri().map_err(|e| (2, e))?;
        mongo::check_uri(uri).await.map_err(|e| (2, e))?;
        Some(uri.to_owned())
    };
    let frame = logo(&cli).map_err(|e| (2, e))?;

    let bus = cli.i2c_bus.clone();
    let kind = cli.sensors;
    let faults = cli.sim_fault.clone();
    let board = tokio::task::spawn_blocking(move || match kind {
        SensorsKind::Sensehat => Board::open_linux(&bus),
        SensorsKind::Sim => Board::open_sim(faults),
    })
    .await
    .map_err(|e| (1, e.to_string()))?
    .map_err(|e| (1, format!("cannot start the Sense HAT: {e}")))?;

    let mut led = open_led(&cli);
    if let Some(l) = &mut led {
        if let Err(e) = l.show(&frame) {
            warn!(device = l.name(), error = %e, "cannot write the LED matrix; running without it");
            led = None;
        }
    }

    let mut options = AgentOptions {
        node_name: cli.node_name(),
        interval: Duration::from_millis(cli.interval_ms),
        count: cli.count,
        shutdown_timeout: cli.shutdown_timeout,
        notify_systemd: std::env::var_os("NOTIFY_SOCKET").is_some(),
        clock: Some(ClockWait {
            marker: cli.clock_sync_file.clone(),
            wait: cli.clock_wait,
            copy: None,
            simulated_error_ms: cli.sim_clock_error_ms,
        }),
    };

    let result = match uri {
        None => {
            info!(sensors = ?kind, "dry run: printing reports to stdout");
            agent::run(
                options,
                board,
                Output::Print(Box::new(std::io::stdout())),
                NoDatabase,
                shutdown,
            )
            .await
        }
        Some(uri) => {
            let dir = cli.spool_dir();
            let spool_options = SpoolOptions {
                max_bytes: cli.spool_max_bytes,
                sync_interval: Duration::from_millis(cli.spool_sync_ms),
            };
            let (mut spool, opened) = Spool::open(&dir, spool_options.clone()).map_err(|e| {
                (
                    1,
                    format!("{e}; choose a writable directory with --spool-dir"),
                )
            })?;
            for problem in &opened.problems {
                error!("{problem}");
            }
            if opened.corrupt_regions > 0 {
                error!(
                    regions = opened.corrupt_regions,
                    bytes = opened.corrupt_bytes,
                    "skipped bad data between good records in the spool; the readings in it are lost, the rest are kept. If this happens again, the SD card may be failing"
                );
            }
            if opened.torn_bytes > 0 {
                warn!(
                    bytes = opened.torn_bytes,
                    "cut a torn record from the spool (the last run was killed mid-write)"
                );
            }
            let held_dir = clock::recover_last_run(&mut spool, &dir);
            if let Some(c) = &mut options.clock {
                // No cap: at most HELD_MAX reports, which are in memory too.
                c.copy = Some((
                    held_dir,
                    SpoolOptions {
                        max_bytes: u64::MAX,
                        ..spool_options
                    },
                ));
            }
            info!(spool = %dir.display(), backlog = opened.pending, database = %cli.database, collection = %cli.collection, "sampling every {} ms", cli.interval_ms);
            let sink = MongoSink::new(&uri, &cli.database, &cli.collection);
            agent::run(
                options,
                board,
                Output::Spool {
                    spool: Arc::new(Mutex::new(spool)),
                    status_path: Some(dir.join(STATUS_FILE)),
                },
                sink,
                shutdown,
            )
            .await
        }
    };

    if let Some(led) = &mut led {
        if let Err(e) = led.clear() {
            warn!(error = %e, "cannot clear the LED matrix");
        }
    }
    let counters = result.map_err(|e| (1, e.to_string()))?;
    info!(
        reports = counters.reports,
        skipped = counters.skipped_samples,
        delivered = counters.delivered,
        duplicates = counters.duplicates,
        dropped = counters.dropped,
        "stopped"
    );
    Ok(())
}
