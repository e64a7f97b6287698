//! The endpoint as a service, from its [`Config`]: what `check-config` checks, and serving
//! until shutdown. The binary only parses the command line, sets up logging and calls these.

use std::future::Future;
use std::sync::Arc;

use tokio_rustls::rustls::ServerConfig;
use tracing::{info, warn};

use super::config::Config;
use super::server::{app, serve, tls_config, AppState, LIMITS};
use super::store::Store;

/// What both starting and `check-config` check beyond [`Config`]: the TLS files load, and the
/// connection string is valid (without DNS, and with the password never quoted back).
async fn check(config: &Config) -> Result<Option<Arc<ServerConfig>>, String> {
    let tls = match &config.tls {
        Some(files) => Some(tls_config(&files.cert, &files.key)?),
        None => None,
    };
    crate::mongo::check_uri(&config.mongodb_uri).await?;
    Ok(tls)
}

/// `check-config`: check everything that can be checked without serving, and log what was found.
pub async fn check_config(config: &Config) -> Result<(), String> {
    check(config).await?;
    let e = &config.endpoint;
    info!(
        listen = %config.listen, path = %e.path, keys = e.keys.len(), tls = config.tls.is_some(),
        database = %config.database, collection = %e.collection,
        max_body_mib = e.max_body_bytes / (1024 * 1024), body_timeout = ?e.body_timeout,
        parse_dates = ?e.decode.parse_dates, "configuration is valid"
    );
    Ok(())
}

/// Check the configuration, listen, and serve deliveries until `shutdown` resolves.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let tls = check(&config).await?;
    // Before the delivery port: an address in use is said before anything is served.
    let metrics_listener = crate::metrics::bind_if(config.metrics_listen.as_deref())
        .await
        .map_err(|e| e.to_string())?;
    let listen = config.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let store = Store::new(&config.mongodb_uri, &config.database).with_method(config.upsert_method);
    let (path, keys) = (&config.endpoint.path, config.endpoint.keys.len());
    if tls.is_some() {
        info!(listen = %listen, path = %path, keys, "serving HTTPS");
    } else {
        warn!(
            listen = %listen, path = %path, keys,
            "serving plain HTTP: put a TLS-terminating reverse proxy in front (Firehose only sends HTTPS), or pass --tls-cert and --tls-key"
        );
    }
    let state = AppState::new(config.endpoint, store);
    if let Some(l) = metrics_listener {
        let registry = Arc::new(state.metrics.registry());
        crate::metrics::spawn(l, registry, state.readiness.clone());
    }
    let connections = Some(state.metrics.connections.clone());
    let router = app(state);
    serve(listener, router, tls, connections, LIMITS, shutdown).await;
    info!("stopped");
    Ok(())
}
