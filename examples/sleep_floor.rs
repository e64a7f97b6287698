//! The floor under the agent benchmark (`scripts/bench-agent.sh`): a current-thread Tokio
//! runtime that only sleeps until each slot of a fixed grid, with the agent's timer ring, and
//! does nothing else. Its CPU time per slot is what this machine charges for waking a process
//! that often; the agent's figure minus this one is the agent's own work.
//!
//! Usage: `sleep_floor [COUNT] [INTERVAL_MS]` (default 2000 slots of 1 ms).

use std::time::Duration;

fn main() {
    let mut args = std::env::args().skip(1);
    let count: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(2000);
    let interval = Duration::from_millis(args.next().and_then(|a| a.parse().ok()).unwrap_or(1));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime");
    runtime.block_on(async {
        let start = tokio::time::Instant::now();
        let slot = |n: u32| start + interval * n;
        // As in the agent's sampling loop: timer n % 3 holds slot n (slots 1, 2 and 3 to begin
        // with) and is re-armed for slot n + 3 once it fires, so a later slot is always
        // pending and re-arming never wakes the runtime's own driver.
        let mut timers: [_; 3] = std::array::from_fn(|k| {
            let first = if k == 0 { 3 } else { k as u32 };
            Box::pin(tokio::time::sleep_until(slot(first)))
        });
        for n in 1..=count {
            let timer = &mut timers[n as usize % 3];
            timer.as_mut().await;
            timer.as_mut().reset(slot(n + 3));
        }
    });
}
