//! The composed Sense HAT: the three drivers (or IIO stand-ins) sampled together, with retries
//! within a sample, re-initialisation after a failed one, and each sensor's [`Health`].

use std::time::Instant;

use embedded_hal::delay::DelayNs;
use embedded_hal::i2c::I2c;

use super::{iio, BusErrorHint, Health, HealthEvent, SampleError, Sampled, Sensor, SensorError};
use crate::drivers::{
    self, hts221, hts221::Hts221, lps25h, lps25h::Lps25h, lsm9ds1, lsm9ds1::Lsm9ds1Accel,
};
use crate::report::{self, Reading};

/// Transfer attempts per sensor within one sample before the sample is skipped.
pub const READ_ATTEMPTS: u32 = 3;

/// How one sensor is reached: its own driver on the I2C bus, or, when a kernel driver owns its
/// address, that driver's IIO sysfs files.
pub enum Handle<I2C> {
    /// The sensor's own driver, on this bus handle.
    I2c(I2C),
    /// The kernel driver's IIO files.
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

/// The reading from the three sensors' measurements (the driver's or IIO's: the same units).
fn reading(h: hts221::Measurement, p: lps25h::Measurement, a: lsm9ds1::Acceleration) -> Reading {
    Reading {
        humidity_rh: h.humidity_rh,
        temperature_celsius: h.temperature_celsius,
        pressure_hpa: p.pressure_hpa,
        acceleration: report::Acceleration {
            x_g: a.x_g,
            y_g: a.y_g,
            z_g: a.z_g,
        },
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
    /// Each sensor's chip has said who it is since start-up: a wrong answer after that is the
    /// chip glitching, not another board.
    identified: [bool; 3],
}

impl<I2C, D> SenseHat<I2C, D>
where
    I2C: I2c,
    I2C::Error: BusErrorHint + std::fmt::Display,
    D: DelayNs,
{
    /// Initialise all three sensors. An error (naming the first sensor, its bus and address)
    /// only when none of them answers; one that fails is initialised again at each sample,
    /// whose failure says why.
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
            identified: [false; 3],
        };
        // A sensor that fails here is tried again at every sample, as one that fails later is:
        // a chip that does not answer after a brownout must not keep the agent, and the
        // readings in its spool, down until someone reseats the board. None answering at all
        // is a board missing, on another bus or another board: said at once.
        let mut failed = Vec::new();
        for sensor in Sensor::ALL {
            if let Err(e) = hat.init_sensor(sensor) {
                failed.push(e);
            }
        }
        if failed.len() == Sensor::ALL.len() {
            return Err(failed.swap_remove(0));
        }
        Ok(hat)
    }

    fn error(&self, sensor: Sensor, e: drivers::Error<I2C::Error>) -> SensorError {
        let hint = match &e {
            drivers::Error::Bus { source, .. } => source.hint(sensor, &self.bus_name),
            // All ones or all zeros is not another chip's WHO_AM_I but none driving the line:
            // a chip hung (after a brownout) or a glitch, at start-up too.
            drivers::Error::WrongChip { found: 0x00 | 0xFF, .. } => {
                "; the chip answers but reads as nothing: power the Pi off and reseat the Sense HAT, and check the Pi's power supply".to_owned()
            }
            drivers::Error::WrongChip { .. } if self.identified[sensor.index()] => {
                "; it answered as the right chip before: power the Pi off and reseat the Sense HAT, and check the Pi's power supply".to_owned()
            }
            drivers::Error::WrongChip { .. } => {
                "; is this a Sense HAT? another board may sit at this address".to_owned()
            }
            drivers::Error::Reset { .. } => {
                "; it is initialised again at the next sample; if this recurs, check the Pi's power supply and that the Sense HAT is seated".to_owned()
            }
            drivers::Error::Garbled { .. } | drivers::Error::Implausible { .. } => {
                "; it is read again at the next sample; if this recurs, power the Pi off and reseat the Sense HAT".to_owned()
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
        self.identified[sensor.index()] = true;
        Ok(())
    }

    /// One read of the HTS221, through its driver or IIO.
    fn read_hts(&mut self) -> Result<hts221::Measurement, ReadError<I2C::Error>> {
        self.hts.read(|c| c.read(), |i| i.hts221())
    }

    /// One read of the LPS25H, through its driver or IIO.
    fn read_lps(&mut self) -> Result<lps25h::Measurement, ReadError<I2C::Error>> {
        self.lps.read(|c| c.read(), |i| i.lps25h())
    }

    /// One read of the LSM9DS1's accelerometer, through its driver or IIO.
    fn read_acc(&mut self) -> Result<lsm9ds1::Acceleration, ReadError<I2C::Error>> {
        self.acc.read(|c| c.read(), |i| i.lsm9ds1())
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
    pub fn sample(&mut self, now: Instant) -> Sampled {
        let mut events = Vec::new();
        let hts = self.read_with_retries(Sensor::Hts221, Self::read_hts);
        let lps = self.read_with_retries(Sensor::Lps25h, Self::read_lps);
        let acc = self.read_with_retries(Sensor::Lsm9ds1, Self::read_acc);
        let mut errors = Vec::new();
        for (sensor, err) in [
            (Sensor::Hts221, hts.as_ref().err()),
            (Sensor::Lps25h, lps.as_ref().err()),
            (Sensor::Lsm9ds1, acc.as_ref().err()),
        ] {
            let h = &mut self.health[sensor.index()];
            let ev = match err {
                None => h.record_success(),
                Some(e) => h.record_failure(now, e.to_string()),
            };
            if ev != HealthEvent::None {
                events.push((sensor, ev));
            }
            errors.extend(err.cloned());
        }
        let result = match (hts, lps, acc) {
            (Ok(h), Ok(p), Ok(a)) => Ok(reading(h, p, a)),
            _ => Err(SampleError(errors)),
        };
        (result, events)
    }

    /// A sample that takes one read of each sensor and nothing more, for a caller that
    /// samples in place: `None` at the first read that fails, or with a sensor due to be
    /// initialised again, with nothing recorded, so that the caller takes the sample again
    /// with [`SenseHat::sample`] on a blocking thread. There its retries may wait out the
    /// bus's timeouts (a second each on the Pi's controller) without holding up the runtime.
    pub fn sample_at_once(&mut self) -> Option<Sampled> {
        if self.needs_init.iter().any(|&n| n) {
            return None;
        }
        let h = self.read_hts().ok()?;
        let p = self.read_lps().ok()?;
        let a = self.read_acc().ok()?;
        let events = Sensor::ALL
            .iter()
            .map(|&s| (s, self.health[s.index()].record_success()))
            .filter(|(_, ev)| *ev != HealthEvent::None)
            .collect();
        Some((Ok(reading(h, p, a)), events))
    }

    /// Each sensor's health, in [`Sensor::ALL`] order.
    pub fn health(&self) -> &[Health; 3] {
        &self.health
    }

    /// Whether any sensor is read through a kernel driver's IIO files, whose reads wait for a
    /// conversion (the LPS25H's `st_pressure` at 1 Hz: up to a second a sample).
    pub fn reads_iio(&self) -> bool {
        matches!(self.hts, Slot::Iio(_))
            || matches!(self.lps, Slot::Iio(_))
            || matches!(self.acc, Slot::Iio(_))
    }
}
