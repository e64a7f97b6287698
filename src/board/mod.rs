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
//!   offers none, the error is *Device or resource busy (EBUSY)*: blacklist its module
//!   (`echo "blacklist hts221_i2c" | sudo tee /etc/modprobe.d/sensehat-monitor.conf`) and
//!   reboot. The agent never force-binds an address a driver owns.
//! - *Permission denied*: the user is not in the `i2c` group (see step 2).
//! - *No such file*: I2C is not enabled (see step 1).
//! - *No device acknowledged*: the HAT is not seated, or this is not a Sense HAT.

pub mod iio;
pub mod led;
pub mod linux;
pub mod sim;

use std::time::{Duration, Instant};

use embedded_hal::delay::DelayNs;
use embedded_hal::i2c::I2c;

use crate::drivers::{self, hts221::Hts221, lps25h::Lps25h, lsm9ds1, lsm9ds1::Lsm9ds1Accel};
use crate::report::{self, Reading};

/// The sensors of the Sense HAT, as named in logs and `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sensor {
    Hts221,
    Lps25h,
    Lsm9ds1,
}

impl Sensor {
    pub const ALL: [Sensor; 3] = [Sensor::Hts221, Sensor::Lps25h, Sensor::Lsm9ds1];

    pub fn name(self) -> &'static str {
        match self {
            Sensor::Hts221 => "hts221",
            Sensor::Lps25h => "lps25h",
            Sensor::Lsm9ds1 => "lsm9ds1",
        }
    }

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
#[derive(Debug, thiserror::Error)]
#[error("{sensor} (address {address:#04x} on {bus}): {detail}{hint}", address = sensor.address())]
pub struct SensorError {
    pub sensor: Sensor,
    pub bus: String,
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

/// Transfer attempts per sensor within one sample before the sample is skipped.
pub const READ_ATTEMPTS: u32 = 3;
/// A sensor failing this long is logged as dead (once).
pub const DEAD_AFTER: Duration = Duration::from_secs(60);

/// What happened to a sensor over time: pure state, no IO.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Health {
    /// When the current run of failures began.
    pub failing_since: Option<Instant>,
    pub consecutive_failures: u64,
    pub total_failures: u64,
    pub dead_reported: bool,
}

/// What a health update asks the caller to log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthEvent {
    None,
    /// First failure after a good read.
    StartedFailing,
    /// Failing for [`DEAD_AFTER`]; reported once per episode.
    Dead,
    /// Read fine again after failing.
    Recovered {
        failures: u64,
    },
}

impl Health {
    pub fn record_failure(&mut self, now: Instant) -> HealthEvent {
        self.consecutive_failures += 1;
        self.total_failures += 1;
        let since = *self.failing_since.get_or_insert(now);
        if self.consecutive_failures == 1 {
            HealthEvent::StartedFailing
        } else if !self.dead_reported && now.duration_since(since) >= DEAD_AFTER {
            self.dead_reported = true;
            HealthEvent::Dead
        } else {
            HealthEvent::None
        }
    }

    pub fn record_success(&mut self) -> HealthEvent {
        let failures = self.consecutive_failures;
        self.consecutive_failures = 0;
        self.failing_since = None;
        self.dead_reported = false;
        if failures > 0 {
            HealthEvent::Recovered { failures }
        } else {
            HealthEvent::None
        }
    }

    pub fn is_ok(&self) -> bool {
        self.consecutive_failures == 0
    }
}

/// A sample could not be taken because one sensor kept failing.
#[derive(Debug, thiserror::Error)]
#[error("sample skipped: {0}")]
pub struct SampleError(pub SensorError);

/// How one sensor is reached: its own driver on the I2C bus, or, when a kernel driver owns its
/// address, that driver's IIO sysfs files.
pub enum Handle<I2C> {
    I2c(I2C),
    Iio(iio::IioSensor),
}

/// One sensor of the composed board.
enum Slot<T> {
    Chip(T),
    Iio(iio::IioSensor),
}

/// A read failed, in the driver or in IIO (already a [`SensorError`]).
enum ReadError<E: core::fmt::Debug> {
    Driver(drivers::Error<E>),
    Iio(SensorError),
}

impl<T> Slot<T> {
    /// Read with `chip` or with `iio`, whichever reaches the sensor.
    fn read<R, E: core::fmt::Debug>(
        &mut self,
        chip: impl FnOnce(&mut T) -> Result<R, drivers::Error<E>>,
        iio: impl FnOnce(&iio::IioSensor) -> Result<R, SensorError>,
    ) -> Result<R, ReadError<E>> {
        match self {
            Slot::Chip(c) => chip(c).map_err(ReadError::Driver),
            Slot::Iio(s) => iio(s).map_err(ReadError::Iio),
        }
    }
}

/// The report's acceleration from the driver's (or IIO's): the same axes and units.
fn report_acceleration(a: lsm9ds1::Acceleration) -> report::Acceleration {
    report::Acceleration {
        x_g: a.x_g,
        y_g: a.y_g,
        z_g: a.z_g,
    }
}

/// The composed Sense HAT: the three drivers, each with its own handle on the same bus, and
/// the delay their waits use.
pub struct SenseHat<I2C, D> {
    bus_name: String,
    delay: D,
    hts: Slot<Hts221<I2C>>,
    lps: Slot<Lps25h<I2C>>,
    acc: Slot<Lsm9ds1Accel<I2C>>,
    health: [Health; 3],
    needs_init: [bool; 3],
}

impl<I2C, D> SenseHat<I2C, D>
where
    I2C: I2c,
    I2C::Error: BusErrorHint,
    D: DelayNs,
{
    /// Initialise all three sensors; any missing or wrong chip is an error naming it.
    pub fn init(
        bus_name: &str,
        hts: I2C,
        lps: I2C,
        acc: I2C,
        delay: D,
    ) -> Result<Self, SensorError> {
        Self::init_handles(
            bus_name,
            Handle::I2c(hts),
            Handle::I2c(lps),
            Handle::I2c(acc),
            delay,
        )
    }

    /// [`SenseHat::init`] with each sensor on I2C or, where a kernel driver owns it, on IIO.
    pub fn init_handles(
        bus_name: &str,
        hts: Handle<I2C>,
        lps: Handle<I2C>,
        acc: Handle<I2C>,
        delay: D,
    ) -> Result<Self, SensorError> {
        let slot = |h: Handle<I2C>| match h {
            Handle::I2c(i2c) => Ok(i2c),
            Handle::Iio(s) => Err(s),
        };
        let mut hat = SenseHat {
            bus_name: bus_name.to_owned(),
            delay,
            hts: slot(hts).map_or_else(Slot::Iio, |i| Slot::Chip(Hts221::new(i))),
            lps: slot(lps).map_or_else(Slot::Iio, |i| Slot::Chip(Lps25h::new(i))),
            acc: slot(acc).map_or_else(Slot::Iio, |i| Slot::Chip(Lsm9ds1Accel::new(i))),
            health: Default::default(),
            needs_init: [true; 3],
        };
        for sensor in Sensor::ALL {
            hat.init_sensor(sensor)?;
        }
        Ok(hat)
    }

    fn error(&self, sensor: Sensor, e: drivers::Error<I2C::Error>) -> SensorError {
        let hint = match &e {
            drivers::Error::Bus { source, .. } => source.hint(sensor, &self.bus_name),
            drivers::Error::WrongChip { .. } => {
                "; is this a Sense HAT? another board may sit at this address".to_owned()
            }
            drivers::Error::NoReading { .. } => {
                "; the chip answers but measures nothing: if this goes on, power the Pi off and reseat the Sense HAT".to_owned()
            }
            _ => String::new(),
        };
        SensorError {
            sensor,
            bus: self.bus_name.clone(),
            detail: e.to_string(),
            hint,
        }
    }

    fn read_error(&self, sensor: Sensor, e: ReadError<I2C::Error>) -> SensorError {
        match e {
            ReadError::Driver(e) => self.error(sensor, e),
            ReadError::Iio(e) => e,
        }
    }

    /// Initialise a sensor; each driver's init waits for the chip's first conversion, so a
    /// chip that has measured nothing yet (after start-up or a glitch that reset it) is never
    /// read as if it had, and one that never converts fails here.
    fn init_sensor(&mut self, sensor: Sensor) -> Result<(), SensorError> {
        let delay = &mut self.delay;
        let r = match sensor {
            Sensor::Hts221 => self.hts.read(|c| c.init(delay).map(drop), |s| s.check()),
            Sensor::Lps25h => self.lps.read(|c| c.init(delay), |s| s.check()),
            Sensor::Lsm9ds1 => self.acc.read(|c| c.init(delay), |s| s.check()),
        };
        r.map_err(|e| self.read_error(sensor, e))?;
        self.needs_init[sensor.index()] = false;
        Ok(())
    }

    /// Read one sensor with up to [`READ_ATTEMPTS`] tries, re-initialising it first if an
    /// earlier sample failed.
    fn read_with_retries<T>(
        &mut self,
        sensor: Sensor,
        read: impl Fn(&mut Self) -> Result<T, ReadError<I2C::Error>>,
    ) -> Result<T, SensorError> {
        let mut last = None;
        for _ in 0..READ_ATTEMPTS {
            if self.needs_init[sensor.index()] {
                if let Err(e) = self.init_sensor(sensor) {
                    last = Some(e);
                    continue;
                }
            }
            match read(self) {
                Ok(v) => return Ok(v),
                Err(e) => last = Some(self.read_error(sensor, e)),
            }
        }
        // Re-initialise before the next sample: a glitch may have reset the chip.
        self.needs_init[sensor.index()] = true;
        Err(last.expect("READ_ATTEMPTS is at least 1"))
    }

    /// Take one sample of all three sensors. A sensor that still fails after retries makes
    /// the whole sample fail (skipped, never a partial document); its health is updated and
    /// any event worth logging is returned with the result.
    pub fn sample(
        &mut self,
        now: Instant,
    ) -> (Result<Reading, SampleError>, Vec<(Sensor, HealthEvent)>) {
        let mut events = Vec::new();
        let hts =
            self.read_with_retries(Sensor::Hts221, |s| s.hts.read(|c| c.read(), |i| i.hts221()));
        let lps =
            self.read_with_retries(Sensor::Lps25h, |s| s.lps.read(|c| c.read(), |i| i.lps25h()));
        let acc = self.read_with_retries(Sensor::Lsm9ds1, |s| {
            s.acc.read(|c| c.read(), |i| i.lsm9ds1())
        });
        let mut first_error = None;
        for (sensor, ok, err) in [
            (Sensor::Hts221, hts.is_ok(), hts.as_ref().err()),
            (Sensor::Lps25h, lps.is_ok(), lps.as_ref().err()),
            (Sensor::Lsm9ds1, acc.is_ok(), acc.as_ref().err()),
        ] {
            let h = &mut self.health[sensor.index()];
            let ev = if ok {
                h.record_success()
            } else {
                h.record_failure(now)
            };
            if ev != HealthEvent::None {
                events.push((sensor, ev));
            }
            if first_error.is_none() {
                first_error = err.map(|e| SensorError {
                    sensor: e.sensor,
                    bus: e.bus.clone(),
                    detail: e.detail.clone(),
                    hint: e.hint.clone(),
                });
            }
        }
        let result = match (hts, lps, acc) {
            (Ok(h), Ok(p), Ok(a)) => Ok(Reading {
                humidity_rh: h.humidity_rh,
                temperature_celsius: h.temperature_celsius,
                pressure_hpa: p.pressure_hpa,
                acceleration: report_acceleration(a),
            }),
            _ => Err(SampleError(first_error.expect("one read failed"))),
        };
        (result, events)
    }

    pub fn health(&self) -> &[Health; 3] {
        &self.health
    }
}

/// The board the agent samples: the real Sense HAT on Linux, or the simulator.
/// One per process, so the size difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Board {
    Linux(Box<SenseHat<linux_embedded_hal::I2cdev, linux_embedded_hal::Delay>>),
    Sim(Box<SimBoard>),
}

/// The simulated board plus the fault plan of `--sim-fault`.
pub struct SimBoard {
    pub sim: sim::SimSenseHat,
    hat: SenseHat<sim::SimBus, NoDelay>,
    samples: u64,
    faults: Vec<SimFault>,
}

/// `--sim-fault CHIP:FIRST:COUNT`: every transfer to CHIP fails during sample attempts
/// FIRST..FIRST+COUNT (0-based), retries and re-initialisation included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimFault {
    pub chip: sim::SimChip,
    pub first: u64,
    pub count: u64,
}

impl std::str::FromStr for SimFault {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let bad = || format!("expected CHIP:FIRST:COUNT (e.g. lps25h:10:3), got {s:?}");
        if parts.len() != 3 {
            return Err(bad());
        }
        Ok(SimFault {
            chip: sim::SimChip::from_name(parts[0]).ok_or_else(|| {
                format!("unknown chip {:?}: use hts221, lps25h or lsm9ds1", parts[0])
            })?,
            first: parts[1].parse().map_err(|_| bad())?,
            count: parts[2].parse().map_err(|_| bad())?,
        })
    }
}

/// The simulator needs no real waiting after the LSM9DS1 reboot.
pub struct NoDelay;

impl DelayNs for NoDelay {
    fn delay_ns(&mut self, _ns: u32) {}
}

impl SimBoard {
    pub fn new(faults: Vec<SimFault>) -> Result<Self, SensorError> {
        let sim = sim::SimSenseHat::new();
        let hat = SenseHat::init("simulated bus", sim.bus(), sim.bus(), sim.bus(), NoDelay)?;
        Ok(SimBoard {
            sim,
            hat,
            samples: 0,
            faults,
        })
    }
}

impl Board {
    /// Open the real Sense HAT on the given bus (normally `/dev/i2c-1`).
    pub fn open_linux(path: &str) -> Result<Board, SensorError> {
        linux::open(path).map(|h| Board::Linux(Box::new(h)))
    }

    pub fn open_sim(faults: Vec<SimFault>) -> Result<Board, SensorError> {
        SimBoard::new(faults).map(|s| Board::Sim(Box::new(s)))
    }

    /// Take one sample (blocking I2C: call from a blocking thread).
    pub fn sample(&mut self) -> (Result<Reading, SampleError>, Vec<(Sensor, HealthEvent)>) {
        let now = Instant::now();
        match self {
            Board::Linux(h) => h.sample(now),
            Board::Sim(s) => {
                let n = s.samples;
                s.samples += 1;
                for chip in sim::SimChip::ALL {
                    let failing = s.faults.iter().any(|f| {
                        f.chip == chip && (f.first..f.first.saturating_add(f.count)).contains(&n)
                    });
                    s.sim.set_failing(chip, failing);
                }
                s.hat.sample(now)
            }
        }
    }

    pub fn health(&self) -> &[Health; 3] {
        match self {
            Board::Linux(h) => h.health(),
            Board::Sim(s) => s.hat.health(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A run of failures is reported once when it starts, once as dead after a minute, and
    // recovery reports how many failures it ended.
    #[test]
    fn health_reports_each_state_change_once() {
        let t0 = Instant::now();
        let mut h = Health::default();
        assert_eq!(h.record_failure(t0), HealthEvent::StartedFailing);
        assert_eq!(
            h.record_failure(t0 + Duration::from_secs(30)),
            HealthEvent::None
        );
        assert_eq!(
            h.record_failure(t0 + Duration::from_secs(60)),
            HealthEvent::Dead
        );
        assert_eq!(
            h.record_failure(t0 + Duration::from_secs(90)),
            HealthEvent::None
        );
        assert_eq!(h.record_success(), HealthEvent::Recovered { failures: 4 });
        assert_eq!(h.record_success(), HealthEvent::None);
        assert_eq!(h.total_failures, 4);
    }

    // The fault plan parses and rejects nonsense with a message.
    #[test]
    fn sim_fault_parses() {
        let f: SimFault = "lps25h:10:3".parse().unwrap();
        assert_eq!(
            f,
            SimFault {
                chip: sim::SimChip::Lps25h,
                first: 10,
                count: 3
            }
        );
        assert!("lps25h:10".parse::<SimFault>().is_err());
        assert!("foo:1:1"
            .parse::<SimFault>()
            .unwrap_err()
            .contains("unknown chip"));
    }

    // Samples inside the fault window are skipped; the sensor is re-initialised and the
    // samples after it succeed.
    #[test]
    fn faulty_samples_are_skipped_and_the_board_recovers() {
        let mut board = Board::open_sim(vec!["hts221:2:3".parse().unwrap()]).unwrap();
        let results: Vec<bool> = (0..8).map(|_| board.sample().0.is_ok()).collect();
        assert_eq!(results, [true, true, false, false, false, true, true, true]);
        assert_eq!(board.health()[0].total_failures, 3);
        assert!(board.health()[0].is_ok());
    }
}
