//! Shutdown as a future: resolves on the first SIGINT or SIGTERM.

use std::future::Future;

/// Resolves when the process receives SIGINT (Ctrl-C) or SIGTERM (systemd stop).
///
/// The handlers are installed at the first poll (until then a signal has its default effect
/// and ends the process), and a task of their own waits on them; later polls only look at
/// that task's word. The sampling loop polls this on every wake-up (a thousand a second at
/// `--interval-ms 1`), and a oneshot receiver costs an atomic load where the two signal
/// streams cost a poll each. Poll it inside a Tokio runtime.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{signal, SignalKind};
    async {
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
        if rx.await.is_err() {
            // Without signal handlers (or their task) there is nothing to wait for.
            std::future::pending::<()>().await
        }
    }
}
