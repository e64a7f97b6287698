//! The agent's state at a glance (`--led-status`): the logo, with a 2x2 block in its top-right
//! corner that says how the readings fare. Pure: the agent works out an [`AgentState`] after
//! each sample, [`StatusCorner`] says whether the matrix needs a new frame, and the agent
//! writes it.
//!
//! # The corner
//!
//! The block is the four pixels at x 6-7, y 0-1 of the frame, so `--led-rotation` carries it
//! to whichever corner is top-right as the board is mounted, as it turns the logo. While the
//! option is on, those four pixels are the indicator's (a logo of your own loses them):
//!
//! - off: the first insert is under way (at start);
//! - 4 green: readings are being stored (with `--dry-run`, printed);
//! - 1 to 3 amber, or 4 red: readings are spooled, as the database is unreachable (or more
//!   than [`BEHIND`] of readings wait for it); one pixel per started quarter of
//!   `--spool-max-bytes` the spool uses, or of the reports it may keep in memory while its
//!   disk cannot be written, whichever is further along; all four red in the last quarter
//!   (at the cap, or that limit, the oldest undelivered readings are dropped);
//! - 4 blue: readings are held until the system clock is synchronized (`--clock-wait`);
//! - 4 magenta: a sensor is failing, so no readings are being taken.
//!
//! When several hold, the first in this order shows: a failing sensor (nothing is being
//! taken, so where readings go is moot), waiting for the clock (readings are held, not yet
//! spooled), the database, and off. Amber pixels light in the order: the corner itself, its
//! neighbour along the top edge, along the side edge, then the inner one.

use std::time::Duration;

use super::frame::{Frame, Rgb};

/// Readings are stored.
pub const GREEN: Rgb = Rgb(0, 255, 0);
/// Readings are spooled, the spool under three quarters of its cap.
pub const AMBER: Rgb = Rgb(255, 160, 0);
/// Readings are spooled, the spool in its last quarter before the cap.
pub const RED: Rgb = Rgb(255, 0, 0);
/// Readings are held for the clock.
pub const BLUE: Rgb = Rgb(0, 0, 255);
/// A sensor is failing.
pub const MAGENTA: Rgb = Rgb(255, 0, 255);
/// An unlit pixel.
const OFF: Rgb = Rgb(0, 0, 0);

/// The block's pixels as `(x, y)` in the frame, in the order they light: the corner, along
/// the top edge, along the side edge, the inner one.
pub const CORNER: [(usize, usize); 4] = [(7, 0), (6, 0), (7, 1), (6, 1)];

/// More than this much of readings (counted in sampling intervals, beyond the insert window
/// they wait for by design) waiting in the spool shows as spooled even before an insert has
/// failed. A server that went away takes the driver up to its server selection timeout (10 s)
/// to give up on, while readings pile up; a database that keeps up leaves none of them
/// waiting past the window.
pub const BEHIND: Duration = Duration::from_secs(3);

/// What the last insert did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Database {
    /// No insert has finished yet.
    NotContacted,
    /// The last insert reached the database (with `--dry-run`, reports are printed instead).
    Reached,
    /// The last insert could not reach it: reports wait in the spool.
    Unreachable,
}

/// What the spool holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpoolUse {
    /// How long the oldest undelivered reading has waited, counted in sampling intervals
    /// (one less than their number, times the interval), beyond the insert window.
    pub waiting: Duration,
    /// Bytes of the spool's files.
    pub bytes: u64,
    /// The cap on them (`--spool-max-bytes`).
    pub cap: u64,
    /// Readings held in memory, as the disk cannot be written.
    pub in_memory: u64,
    /// The limit on them, beyond which the oldest are dropped.
    pub memory_max: u64,
}

/// What the agent knows of itself after a sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentState {
    /// A sensor's last read failed.
    pub sensor_failing: bool,
    /// Readings are held until the system clock is synchronized.
    pub waiting_for_clock: bool,
    /// What the last insert did.
    pub database: Database,
    /// What the spool holds (nothing with `--dry-run`).
    pub spool: SpoolUse,
}

/// What the corner shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Indicator {
    /// All four off.
    Off,
    /// Four green.
    Storing,
    /// Spooled: `quarters` (1 to 4) of the spool's cap started; 1-3 amber, 4 red.
    Spooled {
        /// How many pixels are lit.
        quarters: u8,
    },
    /// Four blue.
    WaitingForClock,
    /// Four magenta.
    SensorFailing,
}

impl Indicator {
    /// What the corner shows for `state`, by the priority in the module docs.
    pub fn of(state: &AgentState) -> Indicator {
        if state.sensor_failing {
            return Indicator::SensorFailing;
        }
        if state.waiting_for_clock {
            return Indicator::WaitingForClock;
        }
        let spool = state.spool;
        match state.database {
            Database::Unreachable => {}
            _ if spool.waiting > BEHIND => {}
            Database::NotContacted => return Indicator::Off,
            Database::Reached => return Indicator::Storing,
        }
        // Either limit reached drops readings: the one further along shows.
        Indicator::Spooled {
            quarters: quarters_started(spool.bytes, spool.cap)
                .max(quarters_started(spool.in_memory, spool.memory_max)),
        }
    }

    /// The block's four pixels, in [`CORNER`]'s order.
    pub fn pixels(self) -> [Rgb; 4] {
        match self {
            Indicator::Off => [OFF; 4],
            Indicator::Storing => [GREEN; 4],
            Indicator::WaitingForClock => [BLUE; 4],
            Indicator::SensorFailing => [MAGENTA; 4],
            Indicator::Spooled { quarters } => {
                let colour = if quarters >= 4 { RED } else { AMBER };
                std::array::from_fn(|i| {
                    if i < usize::from(quarters) {
                        colour
                    } else {
                        OFF
                    }
                })
            }
        }
    }

    /// `logo` with this indicator in its corner.
    pub fn on(self, logo: &Frame) -> Frame {
        let mut frame = *logo;
        for ((x, y), px) in CORNER.into_iter().zip(self.pixels()) {
            frame.pixels[y][x] = px;
        }
        frame
    }
}

/// How many quarters of `cap` `used` has started: 1 below a quarter, 4 from three quarters
/// on (and beyond the cap). A spool that is unreachable but empty still shows one.
fn quarters_started(used: u64, cap: u64) -> u8 {
    let cap = u128::from(cap.max(1));
    let q = u128::from(used) * 4 / cap + 1;
    q.min(4) as u8
}

/// The corner as last shown: says when the matrix needs a new frame, and which.
#[derive(Debug, Clone)]
pub struct StatusCorner {
    logo: Frame,
    shown: Option<Indicator>,
}

impl StatusCorner {
    /// A corner on `logo`, nothing shown yet.
    pub fn new(logo: Frame) -> StatusCorner {
        StatusCorner { logo, shown: None }
    }

    /// The agent is in `state`: the frame to show, when it differs from the one shown.
    pub fn update(&mut self, state: &AgentState) -> Option<Frame> {
        let indicator = Indicator::of(state);
        if self.shown == Some(indicator) {
            return None;
        }
        self.shown = Some(indicator);
        Some(indicator.on(&self.logo))
    }

    /// The last frame did not reach the matrix: the next update gives one whatever the state.
    pub fn forget(&mut self) {
        self.shown = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAP: u64 = 4000;
    const MEMORY_MAX: u64 = 400;

    fn state(database: Database, waiting_s: u64, bytes: u64) -> AgentState {
        AgentState {
            sensor_failing: false,
            waiting_for_clock: false,
            database,
            spool: SpoolUse {
                waiting: Duration::from_secs(waiting_s),
                bytes,
                cap: CAP,
                in_memory: 0,
                memory_max: MEMORY_MAX,
            },
        }
    }

    fn unreachable(bytes: u64) -> AgentState {
        state(Database::Unreachable, 1, bytes)
    }

    // The spool's fill lights one pixel per started quarter of its cap, amber, and all four
    // red in the last quarter and beyond the cap.
    #[test]
    fn spooled_lights_a_pixel_per_started_quarter() {
        let lit = |bytes| Indicator::of(&unreachable(bytes)).pixels();
        assert_eq!(lit(0), [AMBER, OFF, OFF, OFF]);
        assert_eq!(lit(999), [AMBER, OFF, OFF, OFF]);
        assert_eq!(lit(1000), [AMBER, AMBER, OFF, OFF]);
        assert_eq!(lit(2999), [AMBER, AMBER, AMBER, OFF]);
        assert_eq!(lit(3000), [RED; 4]);
        assert_eq!(lit(5000), [RED; 4]);
        assert_eq!(lit(u64::MAX), [RED; 4]);
        assert_eq!(quarters_started(10, 0), 4);
    }

    // While the disk cannot be written, readings held in memory count toward the fill as
    // well: red in the last quarter of the memory limit, before any of them is dropped, with
    // little or nothing on disk; the fuller of the two shows.
    #[test]
    fn readings_in_memory_count_toward_the_fill() {
        let lit = |bytes, in_memory| {
            let mut s = unreachable(bytes);
            s.spool.in_memory = in_memory;
            Indicator::of(&s).pixels()
        };
        assert_eq!(lit(0, 0), [AMBER, OFF, OFF, OFF]);
        assert_eq!(lit(0, 99), [AMBER, OFF, OFF, OFF]);
        assert_eq!(lit(0, 100), [AMBER, AMBER, OFF, OFF]);
        assert_eq!(lit(2000, 100), [AMBER, AMBER, AMBER, OFF]);
        assert_eq!(lit(0, 299), [AMBER, AMBER, AMBER, OFF]);
        assert_eq!(lit(0, 300), [RED; 4]);
        assert_eq!(lit(3000, 0), [RED; 4]);
        assert_eq!(lit(10, 400), [RED; 4]);
    }

    // Before any insert has failed, readings show as spooled once more than BEHIND of them
    // wait (an insert hanging on a server that went away, a backlog being sent); until then
    // the last insert says it.
    #[test]
    fn readings_waiting_too_long_show_as_spooled() {
        let quarter = Indicator::Spooled { quarters: 1 };
        assert_eq!(
            Indicator::of(&state(Database::Reached, 0, 0)),
            Indicator::Storing
        );
        assert_eq!(
            Indicator::of(&state(Database::Reached, 3, 10)),
            Indicator::Storing
        );
        assert_eq!(Indicator::of(&state(Database::Reached, 4, 10)), quarter);
        assert_eq!(
            Indicator::of(&state(Database::NotContacted, 3, 10)),
            Indicator::Off
        );
        assert_eq!(
            Indicator::of(&state(Database::NotContacted, 4, 10)),
            quarter
        );
        assert_eq!(Indicator::of(&state(Database::Unreachable, 0, 0)), quarter);
    }

    // A failing sensor wins over everything, then the clock, then the database.
    #[test]
    fn priority_sensor_then_clock_then_database() {
        let all = AgentState {
            sensor_failing: true,
            waiting_for_clock: true,
            ..unreachable(3500)
        };
        assert_eq!(Indicator::of(&all), Indicator::SensorFailing);
        assert_eq!(Indicator::SensorFailing.pixels(), [MAGENTA; 4]);
        let clock = AgentState {
            sensor_failing: false,
            ..all
        };
        assert_eq!(Indicator::of(&clock), Indicator::WaitingForClock);
        assert_eq!(Indicator::WaitingForClock.pixels(), [BLUE; 4]);
        let db = AgentState {
            waiting_for_clock: false,
            ..clock
        };
        assert_eq!(Indicator::of(&db), Indicator::Spooled { quarters: 4 });
        assert_eq!(Indicator::Storing.pixels(), [GREEN; 4]);
        assert_eq!(Indicator::Off.pixels(), [OFF; 4]);
    }

    // The indicator replaces the top-right 2x2 block and leaves every other pixel of the logo.
    #[test]
    fn the_indicator_takes_the_top_right_block_only() {
        let logo = Frame::from_png(super::super::frame::DEFAULT_LOGO_PNG).unwrap();
        let framed = Indicator::Spooled { quarters: 2 }.on(&logo);
        for y in 0..8 {
            for x in 0..8 {
                let want = match (x, y) {
                    (7, 0) | (6, 0) => AMBER,
                    (7, 1) | (6, 1) => OFF,
                    _ => logo.pixels[y][x],
                };
                assert_eq!(framed.pixels[y][x], want, "({x}, {y})");
            }
        }
    }

    // A new frame only when what the corner shows changes: not per sample, not per byte the
    // spool grows within a quarter.
    #[test]
    fn a_frame_only_when_the_indicator_changes() {
        let logo = Frame::blank();
        let mut corner = StatusCorner::new(logo);
        let storing = state(Database::Reached, 0, 0);
        assert_eq!(corner.update(&storing), Some(Indicator::Storing.on(&logo)));
        assert_eq!(corner.update(&storing), None);
        assert!(corner.update(&unreachable(10)).is_some());
        assert_eq!(corner.update(&unreachable(900)), None);
        assert!(corner.update(&unreachable(1000)).is_some());
        assert_eq!(corner.update(&unreachable(1001)), None);
        assert!(corner.update(&storing).is_some());
    }
}
