//! The Firehose endpoint binary: parse the command line, set up logging, and serve until
//! SIGINT/SIGTERM. Logic lives in `sensehat_monitor::firehose`.

use std::process::ExitCode;

use clap::Parser;
use tracing::{error, info, warn};

use sensehat_monitor::firehose::config::{Cli, ACCESS_KEY_ENV};
use sensehat_monitor::firehose::server::{tls_config, HEADER_TIMEOUT};
use sensehat_monitor::firehose::{app, serve, AppState, Store};
use sensehat_monitor::shutdown::shutdown_signal;

/// mimalloc: decoding builds many small BSON values per record, where it is markedly faster
/// than the system allocator (see benches/firehose_endpoint.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    sensehat_monitor::logging::init();
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    let env_key = std::env::var(ACCESS_KEY_ENV).ok();
    let config = cli.endpoint_config(env_key.as_deref())?;
    let uri = cli.require_uri()?.to_owned();
    let tls = match (&cli.tls_cert, &cli.tls_key) {
        (Some(cert), Some(key)) => Some(tls_config(cert, key)?),
        _ => None,
    };
    // Checked at start, without DNS, and with the password never quoted back.
    sensehat_monitor::mongo::check_uri(&uri).await?;
    if cli.check_config {
        info!(keys = config.keys.len(), "configuration is valid");
        return Ok(());
    }
    let listener = tokio::net::TcpListener::bind(cli.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", cli.listen))?;
    let store = Store::new(&uri, &cli.database);
    if tls.is_some() {
        info!(listen = %cli.listen, path = %config.path, keys = config.keys.len(), "serving HTTPS");
    } else {
        warn!(
            listen = %cli.listen, path = %config.path, keys = config.keys.len(),
            "serving plain HTTP: put a TLS-terminating reverse proxy in front (Firehose only sends HTTPS), or pass --tls-cert and --tls-key"
        );
    }
    let router = app(AppState::new(config, store));
    serve(listener, router, tls, HEADER_TIMEOUT, shutdown_signal())
        .await
        .map_err(|e| format!("server failed: {e}"))?;
    info!("stopped");
    Ok(())
}
