//! The LED matrix as the agent drives it. The binary shows the logo before the agent starts;
//! with `--led-status` the sampling loop works out the agent's state after each sample and the
//! matrix is written again only when the corner would change (see [`crate::led::status`]).
//! Writes run on a blocking thread, as an I2C write to the LED controller takes milliseconds.
//! The agent clears the matrix when it stops.

use std::time::Duration;

use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::board::led::Led;
use crate::led::status::{AgentState, Database, SpoolUse, StatusCorner};
use crate::led::Frame;
use crate::say_once::Latch;
use crate::status::Counters;

/// The LED matrix, a part of the agent.
pub struct Matrix {
    /// Lent to the thread that writes a frame; `None` once that thread failed.
    led: Option<Led>,
    /// With `--led-status`: what the corner shows.
    corner: Option<StatusCorner>,
    /// Writing fails.
    failing: Latch,
    /// After a write failed: when to try again.
    retry_at: Option<Instant>,
}

/// How long after a failed write the corner is written again, whether or not the state it
/// shows changed meanwhile: a failing I2C write can take a bus timeout, not to be spent at every
/// sample.
const RETRY_AFTER: Duration = Duration::from_secs(10);

impl Matrix {
    /// The matrix `led`, already showing `logo`; with `status` (`--led-status`) its corner
    /// shows the agent's state.
    pub fn new(led: Led, logo: Frame, status: bool) -> Matrix {
        Matrix {
            led: Some(led),
            corner: status.then(|| StatusCorner::new(logo)),
            failing: Latch::default(),
            retry_at: None,
        }
    }

    /// Whether the corner shows the agent's state (only then is it worked out).
    pub(super) fn shows_status(&self) -> bool {
        self.corner.is_some()
    }

    /// The agent is in `state`: write the matrix if the corner changes. A write that fails is
    /// said once, and tried again every [`RETRY_AFTER`] until it works: the corner must not go
    /// on showing a state the agent left.
    pub(super) async fn update(&mut self, state: &AgentState) {
        if self.retry_at.is_some_and(|at| Instant::now() < at) {
            return;
        }
        let Some(corner) = self.corner.as_mut() else {
            return;
        };
        let Some(frame) = corner.update(state) else {
            return;
        };
        match self.show(frame).await {
            Some(Ok(())) => {
                self.retry_at = None;
                if self.failing.clear() {
                    info!("the LED matrix is written again");
                }
            }
            Some(Err(e)) => {
                if let Some(c) = self.corner.as_mut() {
                    c.forget();
                }
                self.retry_at = Some(Instant::now() + RETRY_AFTER);
                if self.failing.raise() {
                    warn!(error = %e, "cannot write the LED matrix; trying again every 10 s");
                }
            }
            None => {}
        }
    }

    /// Turn every LED off. [`super::run`] does when the agent stops; a binary that stops
    /// before running the agent does it itself.
    pub async fn clear(mut self) {
        if let Some(Err(e)) = self.show(Frame::blank()).await {
            warn!(error = %e, "cannot clear the LED matrix");
        }
    }

    /// Write `frame` on a blocking thread; `None` when there is no LED any more.
    async fn show(&mut self, frame: Frame) -> Option<Result<(), crate::board::led::LedError>> {
        let mut led = self.led.take()?;
        let written = tokio::task::spawn_blocking(move || {
            let result = led.show(&frame);
            (led, result)
        })
        .await;
        match written {
            Ok((led, result)) => {
                self.led = Some(led);
                Some(result)
            }
            Err(e) => {
                error!(error = %e, "the thread writing the LED matrix failed; running without the LED");
                None
            }
        }
    }
}

/// What the agent knows of itself after a sample: its counters, whether it prints reports
/// (`--dry-run`) rather than spooling them, whether it holds them for the clock, and what the
/// spool held when last looked at.
pub(super) fn agent_state(
    counters: &Counters,
    printing: bool,
    holding: bool,
    spool: SpoolUse,
) -> AgentState {
    let (database, spool) = match (printing, counters.connected) {
        (true, _) => (Database::Reached, SpoolUse::default()),
        (false, None) => (Database::NotContacted, spool),
        (false, Some(true)) => (Database::Reached, spool),
        (false, Some(false)) => (Database::Unreachable, spool),
    };
    AgentState {
        sensor_failing: counters.sensors.iter().any(|s| !s.ok),
        waiting_for_clock: holding,
        database,
        spool,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::SensorStatus;
    use std::time::Duration;

    // The counters tell the database's state; a dry run counts as reached, with nothing in a
    // spool; a sensor whose last read failed is a failing sensor.
    #[test]
    fn state_from_the_counters() {
        let spool = SpoolUse {
            waiting: Duration::from_secs(9),
            bytes: 5,
            cap: 10,
            in_memory: 3,
            memory_max: 10,
        };
        let mut c = Counters::default();
        let first = agent_state(&c, false, false, spool);
        assert_eq!(
            (first.database, first.spool),
            (Database::NotContacted, spool)
        );
        let dry = agent_state(&c, true, false, spool);
        assert_eq!(
            (dry.database, dry.spool),
            (Database::Reached, SpoolUse::default())
        );
        c.connected = Some(false);
        let down = agent_state(&c, false, false, spool);
        assert_eq!((down.database, down.spool), (Database::Unreachable, spool));
        c.connected = Some(true);
        let ok = agent_state(&c, false, true, spool);
        assert_eq!(ok.database, Database::Reached);
        assert!(ok.waiting_for_clock && !ok.sensor_failing);
        c.sensors = vec![SensorStatus {
            name: "lps25h".into(),
            ok: false,
            consecutive_failures: 1,
            total_failures: 1,
            last_error: None,
        }];
        assert!(agent_state(&c, false, false, spool).sensor_failing);
    }
}
