//! `kinesis-forwarder`: forward a MongoDB collection's change stream to a Kinesis data stream.
//! See `sensehat_monitor::forwarder` and the README section "The full pipeline".

use std::process::ExitCode;

use clap::Parser;
use tracing::error;

use sensehat_monitor::forwarder::aws::AwsKinesis;
use sensehat_monitor::forwarder::{self, Cli, Command};
use sensehat_monitor::mongo::connect;
use sensehat_monitor::shutdown::shutdown_signal;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    sensehat_monitor::logging::init();
    let command = cli.command;
    let config = cli.into_config();
    if command == Some(Command::CheckConfig) {
        return match forwarder::check_config(&config).await {
            Ok(found) => {
                print!("{found}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                error!("{e}");
                ExitCode::from(2)
            }
        };
    }
    let client = match connect(&config.mongodb_uri, "kinesis-forwarder").await {
        Ok(c) => c,
        Err(e) => {
            error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let kinesis = match AwsKinesis::from_env(config.kinesis_endpoint_url.as_deref()).await {
        Ok(k) => k,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(2);
        }
    };
    match forwarder::run(&client, &kinesis, &config.options, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}
