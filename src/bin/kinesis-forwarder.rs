//! `kinesis-forwarder`: forward a MongoDB collection's change stream to a Kinesis data stream
//! (or, with `--target eventbridge`, an EventBridge event bus). See `sensehat_monitor::forwarder`,
//! docs/pipeline.md and docs/aws.md.

use std::process::ExitCode;

use clap::Parser;
use tracing::error;

use sensehat_monitor::cli::{check_config_exit, INVALID_CONFIG};
use sensehat_monitor::forwarder::aws::AwsKinesis;
use sensehat_monitor::forwarder::eventbridge::AwsEventBridge;
use sensehat_monitor::forwarder::target::Target;
use sensehat_monitor::forwarder::{self, Cli, Command, Options, TargetKind};
use sensehat_monitor::mongo::connect;
use sensehat_monitor::shutdown::shutdown_signal;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    sensehat_monitor::logging::init();
    let command = cli.command;
    let config = cli.into_config();
    if command == Some(Command::CheckConfig) {
        return check_config_exit(forwarder::check_config(&config).await);
    }
    let client = match connect(&config.mongodb_uri, "kinesis-forwarder").await {
        Ok(c) => c,
        Err(e) => {
            error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let options = &config.options;
    match options.target {
        TargetKind::Kinesis => {
            let target = AwsKinesis::from_env(config.kinesis_endpoint_url.as_deref()).await;
            forward(&client, target, options).await
        }
        TargetKind::Eventbridge => {
            let target = AwsEventBridge::from_env(config.eventbridge_endpoint_url.as_deref()).await;
            forward(&client, target, options).await
        }
    }
}

/// Forward to `target` until a signal or a fatal error: exit 2 when it could not be built (no
/// region or credentials), 1 on a fatal error.
async fn forward<T: Target>(
    client: &mongodb::Client,
    target: Result<T, String>,
    options: &Options,
) -> ExitCode {
    let target = match target {
        Ok(t) => t,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(INVALID_CONFIG);
        }
    };
    match forwarder::run(client, &target, options, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}
