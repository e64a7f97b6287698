//! `firehose-local`: a local Kinesis Data Firehose HTTP-endpoint delivery stream.
//! See `sensehat_monitor::firehose_local` and docs/pipeline.md.

use std::process::ExitCode;
use std::sync::Arc;

use tracing::error;

use sensehat_monitor::cli::{check_config_exit, INVALID_CONFIG};
use sensehat_monitor::firehose_local::config::ACCESS_KEY_ENV;
use sensehat_monitor::firehose_local::{self, Cli, Command, Metrics};
use sensehat_monitor::forwarder::aws::client_from_env;
use sensehat_monitor::metrics;
use sensehat_monitor::shutdown::shutdown_signal;

#[tokio::main]
async fn main() -> ExitCode {
    let cli: Cli = sensehat_monitor::cli::parse_args();
    sensehat_monitor::logging::init();
    let access_key = std::env::var(ACCESS_KEY_ENV)
        .ok()
        .and_then(|k| firehose_local::first_access_key(&k));
    let command = cli.command;
    let config = match cli.into_config(access_key) {
        Ok(c) => c,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(INVALID_CONFIG);
        }
    };
    if command == Some(Command::CheckConfig) {
        return check_config_exit(firehose_local::check_config(&config).await);
    }
    // Before anything else: an address in use is a configuration error, said at once.
    let listener = match metrics::bind_if(config.metrics_listen.as_deref()).await {
        Ok(l) => l,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(INVALID_CONFIG);
        }
    };
    let kinesis = match client_from_env(config.kinesis_endpoint_url.as_deref()).await {
        Ok(k) => k,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(INVALID_CONFIG);
        }
    };
    let counted = match listener {
        Some(l) => {
            let (m, registry) = Metrics::served();
            let ready = m.readiness(kinesis.clone(), config.stream_name.clone());
            metrics::spawn(l, Arc::new(registry), ready);
            m
        }
        None => Arc::default(),
    };
    match firehose_local::run(kinesis, &config, counted, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        // Every error it returns is a configuration that cannot work.
        Err(e) => {
            error!("{e}");
            ExitCode::from(INVALID_CONFIG)
        }
    }
}
