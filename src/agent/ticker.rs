//! What wakes the sampling loop at each slot of its grid.
//!
//! A kernel timer (`timerfd`, periodic on the monotonic clock) wakes the process once per
//! slot. Tokio's own timers keep far deadlines in coarse wheel slots and wake once more to move
//! each one to a finer slot, so a sleep longer than 64 ms costs two wake-ups instead of one; at
//! the 500 ms production interval that was a wake-up a sample spent on nothing. The tokio
//! interval remains for tests that run on paused time, and as the fallback where no timerfd
//! can be made.

use std::io;
use std::os::fd::OwnedFd;
use std::time::Duration;

use rustix::time::{
    timerfd_create, timerfd_settime, Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags,
    Timespec,
};
use tokio::io::unix::AsyncFd;
use tokio::time::{Instant, Interval, MissedTickBehavior};

/// Which timer wakes the sampling loop.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TickSource {
    /// A kernel timer: one wake-up per slot.
    #[default]
    Kernel,
    /// Tokio's interval, which follows tokio's clock (and so `start_paused` tests).
    Runtime,
}

/// A periodic wake-up on the grid `start + n * interval`, skipping slots already past.
pub enum Ticker {
    /// The kernel's timer, and the interval to wait instead if it ever fails.
    Kernel(AsyncFd<OwnedFd>, Duration),
    /// Tokio's interval.
    Runtime(Interval),
}

impl Ticker {
    /// Ticks from now (the first at once), every `interval`.
    pub fn start(source: TickSource, interval: Duration) -> (Instant, Ticker) {
        let start = Instant::now();
        if source == TickSource::Kernel {
            match kernel_timer(interval) {
                Ok(fd) => return (start, Ticker::Kernel(fd, interval)),
                Err(e) => tracing::debug!(error = %e, "no timerfd; sampling on tokio's timer"),
            }
        }
        let mut ticker = tokio::time::interval_at(start, interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
        (start, Ticker::Runtime(ticker))
    }

    /// Wait for the next slot. Cancel-safe: a tick not waited for stays pending.
    pub async fn tick(&mut self) {
        match self {
            Ticker::Runtime(i) => {
                i.tick().await;
            }
            Ticker::Kernel(fd, interval) => loop {
                let Ok(mut ready) = fd.readable().await else {
                    // Never spin on a broken timer: wait a slot's length instead.
                    return tokio::time::sleep(*interval).await;
                };
                let mut expirations = [0u8; 8];
                match ready.try_io(|fd| {
                    rustix::io::read(fd.get_ref(), &mut expirations).map_err(io::Error::from)
                }) {
                    // Slots that passed meanwhile are counted by the schedule, from the clock.
                    // The read took every expiry, so the timer is not readable until the next:
                    // the next tick waits for the kernel without first reading to learn that.
                    Ok(Ok(_)) => {
                        ready.clear_ready();
                        return;
                    }
                    Ok(Err(e)) if e.kind() != io::ErrorKind::Interrupted => {
                        tracing::debug!(error = %e, "timerfd read failed");
                        return tokio::time::sleep(*interval).await;
                    }
                    Ok(Err(_)) | Err(_) => {}
                }
            },
        }
    }
}

fn kernel_timer(interval: Duration) -> io::Result<AsyncFd<OwnedFd>> {
    let fd = timerfd_create(
        TimerfdClockId::Monotonic,
        TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
    )?;
    let spec = Itimerspec {
        it_interval: timespec(interval),
        // The first expiry at once (a zero value would disarm the timer).
        it_value: Timespec {
            tv_sec: 0,
            tv_nsec: 1,
        },
    };
    timerfd_settime(&fd, TimerfdTimerFlags::empty(), &spec)?;
    // Deprecated for types that may not own the descriptor they expose (tokio#8587); an
    // `OwnedFd` owns its descriptor, and the replacement is an `unsafe fn`, which this crate
    // forbids.
    #[allow(deprecated)]
    AsyncFd::new(fd)
}

fn timespec(d: Duration) -> Timespec {
    Timespec {
        tv_sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: d.subsec_nanos().into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The kernel timer ticks on its grid: ten ticks of 20 ms take about 180 ms, never less.
    #[tokio::test]
    async fn the_kernel_timer_ticks_on_the_grid() {
        let (start, mut t) = Ticker::start(TickSource::Kernel, Duration::from_millis(20));
        assert!(matches!(t, Ticker::Kernel(..)));
        for _ in 0..10 {
            t.tick().await;
        }
        assert!(
            start.elapsed() >= Duration::from_millis(180),
            "{:?}",
            start.elapsed()
        );
    }
}
