//! The Sense HAT as the agent sees it: three drivers on one I2C bus, sampled together, with
//! retries, re-initialisation and health tracking, and the LED matrix found beside them
//! ([`led`]). This is the one hardware boundary: only [`linux`] and [`led`] name the Linux
//! bus, and [`sim`] is the register-level stand-in.
//!
//! # Setting up a Raspberry Pi
//!
//! 1. Enable I2C: `sudo raspi-config nonint do_i2c 0` (or `dtparam=i2c_arm=on` in
//!    `/boot/firmware/config.txt`, `/boot/config.txt` before Bookworm, and `i2c-dev` in
//!    `/etc/modules`), then reboot. `/dev/i2c-1` must exist.
//! 2. Let the user read it: `sudo usermod -aG i2c,video $USER` (i2c for the sensors, video for
//!    the LED framebuffer), then log out and in again. The systemd unit grants both groups.
//! 3. Check: `i2cdetect -y 1` (package i2c-tools) shows 1c, 46 (often UU), 5c, 5f and 6a.
//!
//! # Troubleshooting
//!
//! - A kernel driver owns the sensor's address (some kernels bind the IIO `hts221`,
//!   `st_pressure` or `st_lsm6dsx`/`st_accel` drivers; `ls -l /sys/bus/i2c/devices/1-005f/driver`
//!   names it): the sensor is read through the driver's IIO files ([`iio`]). If the driver
//!   offers none, the error is *Device or resource busy (EBUSY)*, with the command to unbind
//!   it and the module to blacklist (sysfs's `drivers/NAME/module` link names it: a driver's
//!   name is not always its module's). The agent never force-binds an address a driver owns.
//! - *Permission denied*: the user is not in the `i2c` group (see step 2).
//! - *No such file*: I2C is not enabled (see step 1).
//! - *No device acknowledged*: the HAT is not seated, or this is not a Sense HAT.

mod health;
pub mod iio;
pub mod led;
pub mod linux;
mod sensehat;
pub mod sim;
mod simulated;

use std::time::Instant;

use crate::drivers;
use crate::report::Reading;

pub use health::{Health, HealthEvent, DEAD_AFTER, FLAP_QUIET};
pub use sensehat::{Handle, SenseHat, READ_ATTEMPTS};
pub use simulated::{parse_rest_g, NoDelay, SimBoard, SimFault, SimKnock, SimPlan};

/// The sensors of the Sense HAT, as named in logs and `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sensor {
    /// Humidity and temperature.
    Hts221,
    /// Pressure.
    Lps25h,
    /// Acceleration.
    Lsm9ds1,
}

impl Sensor {
    /// Every sensor, in the order the board samples them.
    pub const ALL: [Sensor; 3] = [Sensor::Hts221, Sensor::Lps25h, Sensor::Lsm9ds1];

    /// The name in logs and `status`.
    pub fn name(self) -> &'static str {
        match self {
            Sensor::Hts221 => "hts221",
            Sensor::Lps25h => "lps25h",
            Sensor::Lsm9ds1 => "lsm9ds1",
        }
    }

    /// The sensor's 7-bit I2C address.
    pub fn address(self) -> u8 {
        match self {
            Sensor::Hts221 => drivers::hts221::ADDRESS,
            Sensor::Lps25h => drivers::lps25h::ADDRESS,
            Sensor::Lsm9ds1 => drivers::lsm9ds1::ADDRESS,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for Sensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A sensor could not be initialised or read.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{sensor} (address {address:#04x} on {bus}): {detail}{hint}", address = sensor.address())]
pub struct SensorError {
    /// The sensor.
    pub sensor: Sensor,
    /// The bus it is on (`/dev/i2c-1`).
    pub bus: String,
    /// What went wrong.
    pub detail: String,
    /// What the user can do about it, starting with "; " when present.
    pub hint: String,
}

/// Explains a bus error in user terms (EBUSY, EACCES, ...). Implemented by each bus.
pub trait BusErrorHint {
    /// A hint for the user, or an empty string; `bus` is the bus's name (`/dev/i2c-1`).
    fn hint(&self, sensor: Sensor, bus: &str) -> String;
}

impl BusErrorHint for sim::SimError {
    fn hint(&self, _sensor: Sensor, _bus: &str) -> String {
        String::new()
    }
}

/// A sample could not be taken because sensors kept failing: each one's error, in
/// [`Sensor::ALL`] order (never empty).
#[derive(Debug)]
pub struct SampleError(pub Vec<SensorError>);

impl SampleError {
    /// Why `sensor` failed this sample, if it did.
    pub fn of(&self, sensor: Sensor) -> Option<&SensorError> {
        self.0.iter().find(|e| e.sensor == sensor)
    }
}

impl std::fmt::Display for SampleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("sample skipped: ")?;
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; and ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SampleError {}

/// The board the agent samples: the real Sense HAT on Linux, or the simulator.
/// One per process, so the size difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Board {
    /// The Sense HAT on a Linux I2C bus.
    Linux(Box<SenseHat<linux_embedded_hal::I2cdev, linux_embedded_hal::Delay>>),
    /// The simulator (`--sensors sim`).
    Sim(Box<SimBoard>),
}

/// A sample: the reading, or why there is none, and the sensors' health changes.
pub type Sampled = (Result<Reading, SampleError>, Vec<(Sensor, HealthEvent)>);

impl Board {
    /// Open the real Sense HAT on the given bus (normally `/dev/i2c-1`).
    pub fn open_linux(path: &str) -> Result<Board, SensorError> {
        linux::open(path).map(|h| Board::Linux(Box::new(h)))
    }

    /// Start the simulated board with this plan.
    pub fn open_sim(plan: SimPlan) -> Result<Board, SensorError> {
        SimBoard::new(plan).map(|s| Board::Sim(Box::new(s)))
    }

    /// Take one sample (blocking I2C: a few milliseconds on a healthy bus, longer on a failing
    /// one).
    pub fn sample(&mut self) -> Sampled {
        let now = Instant::now();
        match self {
            Board::Linux(h) => h.sample(now),
            Board::Sim(s) => s.sample(now),
        }
    }

    /// One read of each sensor, in place (see [`SenseHat::sample_at_once`]).
    pub fn sample_at_once(&mut self) -> Option<Sampled> {
        match self {
            Board::Linux(h) => h.sample_at_once(),
            Board::Sim(s) => s.sample_at_once(),
        }
    }

    /// Each sensor's health, in [`Sensor::ALL`] order.
    pub fn health(&self) -> &[Health; 3] {
        match self {
            Board::Linux(h) => h.health(),
            Board::Sim(s) => s.health(),
        }
    }

    /// Whether any sensor is read through a kernel driver's IIO files (see
    /// [`SenseHat::reads_iio`]); never on the simulator.
    pub fn reads_iio(&self) -> bool {
        match self {
            Board::Linux(h) => h.reads_iio(),
            Board::Sim(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Samples inside the fault window are skipped; the sensor is re-initialised and the
    // samples after it succeed.
    #[test]
    fn faulty_samples_are_skipped_and_the_board_recovers() {
        let mut board = Board::open_sim(SimPlan {
            faults: vec!["hts221:2:3".parse().unwrap()],
            ..SimPlan::default()
        })
        .unwrap();
        let results: Vec<bool> = (0..8).map(|_| board.sample().0.is_ok()).collect();
        assert_eq!(results, [true, true, false, false, false, true, true, true]);
        assert_eq!(board.health()[0].total_failures, 3);
        assert!(board.health()[0].is_ok());
    }
}
