//! The Firehose endpoint binary: parse the command line, set up logging, and serve until
//! SIGINT/SIGTERM (or, with `check-config`, check and exit). Logic lives in
//! `sensehat_monitor::firehose`.

use std::process::ExitCode;

use tracing::error;

use sensehat_monitor::cli::INVALID_CONFIG;
use sensehat_monitor::firehose::config::{Cli, ACCESS_KEY_ENV};
use sensehat_monitor::firehose::{check_config, run};
use sensehat_monitor::shutdown::shutdown_signal;

/// mimalloc: decoding builds many small BSON values per record, where it is markedly faster
/// than the system allocator (see benches/firehose_endpoint.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    sensehat_monitor::logging::init();
    let cli: Cli = sensehat_monitor::cli::parse_args();
    let check_only = cli.wants_check_config();
    let failure = || ExitCode::from(if check_only { INVALID_CONFIG } else { 1 });
    let env_key = std::env::var(ACCESS_KEY_ENV).ok();
    let result = match cli.into_config(env_key.as_deref()) {
        Ok(config) if check_only => check_config(&config).await,
        Ok(config) => run(config, shutdown_signal()).await,
        Err(e) => {
            // A configuration that can never work: the same status at start as from
            // check-config (a placeholder access key, none at all).
            error!("{e}");
            return ExitCode::from(INVALID_CONFIG);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            failure()
        }
    }
}
