//! `kinesis-forwarder`: forward a MongoDB collection's change stream to a Kinesis data stream
//! (or, with `--target eventbridge`, an EventBridge event bus). See `sensehat_monitor::forwarder`,
//! docs/pipeline.md and docs/aws.md.

use std::process::ExitCode;
use std::sync::Arc;

use tokio::net::TcpListener;
use tracing::error;

use sensehat_monitor::cli::{check_config_exit, INVALID_CONFIG};
use sensehat_monitor::forwarder::aws::AwsKinesis;
use sensehat_monitor::forwarder::eventbridge::AwsEventBridge;
use sensehat_monitor::forwarder::target::Target;
use sensehat_monitor::forwarder::{self, Cli, Command, Metrics, Options, TargetKind};
use sensehat_monitor::metrics::{self, Readiness};
use sensehat_monitor::mongo::connect;
use sensehat_monitor::shutdown::shutdown_signal;

#[tokio::main]
async fn main() -> ExitCode {
    let cli: Cli = sensehat_monitor::cli::parse_args();
    sensehat_monitor::logging::init();
    let command = cli.command;
    let config = cli.into_config();
    if command == Some(Command::CheckConfig) {
        return check_config_exit(forwarder::check_config(&config).await);
    }
    if let Err(e) = config.options.check_names() {
        error!("{e}");
        return ExitCode::from(INVALID_CONFIG);
    }
    // Before anything else: an address in use is a configuration error, said at once.
    let listener = match metrics::bind_if(config.metrics_listen.as_deref()).await {
        Ok(l) => l,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(INVALID_CONFIG);
        }
    };
    let client = match connect(&config.mongodb_uri, "kinesis-forwarder").await {
        Ok(c) => c,
        Err(e) => {
            error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let options = &config.options;
    let destination = options.destination().to_owned();
    match options.target {
        TargetKind::Kinesis => {
            let target = AwsKinesis::from_env(config.kinesis_endpoint_url.as_deref()).await;
            let ready = |t: &AwsKinesis| {
                let t = t.clone();
                forwarder::metrics::readiness(client.clone(), move || {
                    let (t, stream) = (t.clone(), destination.clone());
                    async move { t.reachable(&stream).await }
                })
            };
            forward(&client, target, options, listener, ready).await
        }
        TargetKind::Eventbridge => {
            let target = AwsEventBridge::from_env(config.eventbridge_endpoint_url.as_deref()).await;
            let ready = |t: &AwsEventBridge| {
                let t = t.clone();
                forwarder::metrics::readiness(client.clone(), move || {
                    let (t, bus) = (t.clone(), destination.clone());
                    async move { t.reachable(&bus).await }
                })
            };
            forward(&client, target, options, listener, ready).await
        }
    }
}

/// Forward to `target` until a signal or a fatal error, serving metrics and `ready` on
/// `listener` if given: exit 2 when the target could not be built (no region or credentials),
/// 1 on a fatal error.
async fn forward<T: Target>(
    client: &mongodb::Client,
    target: Result<T, String>,
    options: &Options,
    listener: Option<TcpListener>,
    ready: impl FnOnce(&T) -> Readiness,
) -> ExitCode {
    let target = match target {
        Ok(t) => t,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(INVALID_CONFIG);
        }
    };
    let counted = match listener {
        Some(l) => {
            let (m, registry) = Metrics::served();
            metrics::spawn(l, Arc::new(registry), ready(&target));
            m
        }
        None => Arc::new(Metrics::default()),
    };
    match forwarder::run_counted(client, &target, options, &counted, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}
