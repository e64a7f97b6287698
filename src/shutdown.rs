//! Shutdown as a future: resolves on the first SIGINT or SIGTERM.

use std::future::Future;

/// Resolves when the process receives SIGINT (Ctrl-C) or SIGTERM (systemd stop).
///
/// The handlers are installed at once, so call this first thing (inside a Tokio runtime):
/// from then on a signal is never lost, nor does it kill the process half-way through
/// start-up. It waits, though, until the future is polled, so a caller that has slow work
/// to do before its main loop must poll the future meanwhile (as the forwarder does while it
/// waits for MongoDB). A task of its own waits on the signals; the future only looks at that
/// task's word, so the sampling loop, which polls it on every wake-up (a thousand a second at
/// `--interval 1ms`), pays an atomic load rather than a poll of both signal streams.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{signal, SignalKind};
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    if let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            let _ = tx.send(());
        });
    }
    async move {
        if rx.await.is_err() {
            // Without signal handlers (or their task) there is nothing to wait for.
            std::future::pending::<()>().await
        }
    }
}
