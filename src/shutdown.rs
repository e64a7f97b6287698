//! Shutdown as a future: resolves on the first SIGINT or SIGTERM.

use std::future::Future;

/// Resolves when the process receives SIGINT (Ctrl-C) or SIGTERM (systemd stop).
///
/// The handlers are installed at once and a task of their own waits on them; the future
/// returned only waits for that task's word. The sampling loop polls it on every wake-up
/// (a thousand a second at `--interval-ms 1`), and a oneshot receiver costs an atomic load
/// where the two signal streams cost a poll each. Call it inside a Tokio runtime.
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
