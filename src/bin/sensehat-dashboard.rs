//! The dashboard binary: parse the command line, set up logging, then serve the page until
//! SIGINT/SIGTERM, check the configuration, or render a chart. Logic lives in
//! `sensehat_monitor::dashboard`.

use std::process::ExitCode;

use tracing::{error, info};

use sensehat_monitor::cli::{check_config_exit, INVALID_CONFIG};
use sensehat_monitor::dashboard::config::{Cli, Command};
use sensehat_monitor::dashboard::{check_config, render, run};
use sensehat_monitor::shutdown::shutdown_signal;

#[tokio::main]
async fn main() -> ExitCode {
    sensehat_monitor::logging::init();
    let shutdown = shutdown_signal();
    let cli: Cli = sensehat_monitor::cli::parse_args();
    let config = match cli.common.into_config().await {
        Ok(c) => c,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(INVALID_CONFIG);
        }
    };
    match cli.command {
        Some(Command::CheckConfig) => check_config_exit(check_config(&config).await),
        Some(Command::Render(args)) => match render::render(&config, &args).await {
            Ok(chart) => {
                info!(out = %args.out.display(), points = chart.points.len(), "chart written");
                ExitCode::SUCCESS
            }
            Err(e) => {
                error!("{e}");
                ExitCode::FAILURE
            }
        },
        None => match run(config, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                error!("{e}");
                ExitCode::FAILURE
            }
        },
    }
}
