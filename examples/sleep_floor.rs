//! The floor under the agent benchmarks (`scripts/bench-agent.sh`): a current-thread Tokio
//! runtime that only waits for each slot of a fixed grid, on the agent's own ticker (the
//! kernel's timer), and does nothing else. Its CPU time and wake-ups per slot are what this
//! machine charges for waking a process that often; the agent's figures minus these are the
//! agent's own work.
//!
//! Usage: `sleep_floor [COUNT] [INTERVAL_MS]` (default 2000 slots of 1 ms).

use std::time::Duration;

use sensehat_monitor::agent::{TickSource, Ticker};

fn main() {
    let mut args = std::env::args().skip(1);
    let count: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(2000);
    let interval = Duration::from_millis(args.next().and_then(|a| a.parse().ok()).unwrap_or(1));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime");
    runtime.block_on(async {
        let (_, mut ticker) = Ticker::start(TickSource::Kernel, interval);
        for _ in 0..=count {
            ticker.tick().await;
        }
    });
}
