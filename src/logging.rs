//! Logging set-up shared by the binaries: `tracing` to stderr (journald captures it), filtered
//! by `RUST_LOG` (default `info`), colours only on a terminal (journald would store the escape
//! codes). Standard output is left for data.

use std::io::IsTerminal;

/// Install the global subscriber. Call once, first thing in `main`.
pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}
