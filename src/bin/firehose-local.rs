//! `firehose-local`: a local Kinesis Data Firehose HTTP-endpoint delivery stream.
//! See `sensehat_monitor::firehose_local` and the README section "The full pipeline".

use std::process::ExitCode;

use clap::Parser;
use tracing::error;

use sensehat_monitor::firehose_local::{self, Cli};
use sensehat_monitor::forwarder::aws::client_from_env;
use sensehat_monitor::shutdown::shutdown_signal;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    sensehat_monitor::logging::init();
    let access_key = std::env::var("FIREHOSE_ACCESS_KEY")
        .ok()
        .and_then(|k| firehose_local::first_access_key(&k));
    let config = match cli.delivery_config(access_key) {
        Ok(c) => c,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(2);
        }
    };
    let kinesis = match client_from_env(cli.kinesis_endpoint_url.as_deref()).await {
        Ok(k) => k,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(2);
        }
    };
    match firehose_local::run(kinesis, &cli, config, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}
