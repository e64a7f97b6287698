//! Reading a sensor through the kernel's IIO sysfs interface, for an address a kernel driver owns.
//!
//! Some kernels bind IIO drivers to the Sense HAT's sensors (`hts221`, `st_pressure` for the
//! LPS25H, `st_lsm6dsx` for the LSM9DS1), and then the address cannot be opened for plain I2C
//! (EBUSY). The agent never force-binds; it reads the driver's sysfs files instead. The IIO
//! device of an I2C client is a child directory `iio:deviceN` of
//! `/sys/bus/i2c/devices/<bus>-00<addr>`; the one with the channel this sensor needs is used
//! (the LSM9DS1 has one for the accelerometer and one for the gyroscope).
//!
//! Values are `(raw + offset) * scale` (offset 0 when the file is absent). Units (the spec marks
//! them UNCONFIRMED on hardware; checked here against the kernel drivers' source):
//! - `hts221`: the scale already yields %rH and degC (its `hts221_get_sensor_scale` divides the
//!   calibration slope, made from the x2 and x8 calibration registers times 8000, by 16000 and
//!   64000), not the milli-units the IIO ABI suggests. The driver works that slope out in
//!   integers, so its humidity gain is rounded down: readings can be a few tenths of a %rH
//!   lower than the same chip read over plain I2C (temperature and pressure round far less).
//! - `st_pressure`: pressure in kPa (its LPS25H gain is 10^8 / 4096 nano-kPa a count, so the
//!   scale reads 0.000024414), times 10 for hPa.
//! - `st_lsm6dsx`: acceleration in m/s^2, as the IIO ABI says (divided by standard gravity,
//!   9.80665, for g), in the
//!   chip's axes, to which python-sense-hat's sign convention is applied as in
//!   [`crate::drivers::lsm9ds1::to_g`].
//!
//! Reading a `_raw` file makes the driver take a one-shot measurement, and the drivers make that
//! slow: `hts221` waits about 50 ms per channel, `st_pressure` two periods of its output rate
//! (2 s at the LPS25H's default 1 Hz), `st_lsm6dsx` a few periods per axis. A sample can then
//! take seconds, and the agent skips the slots it misses (and says so). Raising the LPS25H's and
//! the LSM9DS1's rate helps (as root: `echo 25 > /sys/bus/iio/devices/iio:deviceN/sampling_frequency`;
//! `hts221` takes only 1, 7 or 13 and waits its 50 ms whatever the rate); freeing the address
//! for plain I2C (see the EBUSY hint) helps most. The agent changes no kernel setting.

use std::path::{Path, PathBuf};

use super::{Sensor, SensorError};
use crate::drivers::lsm9ds1::Acceleration;
use crate::drivers::{hts221, lps25h};

/// Standard gravity, m/s^2 per g.
const G: f64 = 9.806_65;

/// One sensor's IIO device directory.
#[derive(Debug, Clone)]
pub struct IioSensor {
    sensor: Sensor,
    dir: PathBuf,
    /// The kernel driver, for messages.
    driver: String,
}

/// The channel file that tells this sensor's IIO device apart.
fn marker(sensor: Sensor) -> &'static str {
    match sensor {
        Sensor::Hts221 => "in_humidityrelative_raw",
        Sensor::Lps25h => "in_pressure_raw",
        Sensor::Lsm9ds1 => "in_accel_x_raw",
    }
}

impl IioSensor {
    /// The IIO device of `sensor` under its I2C client directory (`.../devices/1-005f`), if
    /// the kernel driver made one with the channel the agent needs.
    pub fn find(sensor: Sensor, client_dir: &Path, driver: &str) -> Option<IioSensor> {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(client_dir)
            .ok()?
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("iio:device"))
            .map(|e| e.path())
            .filter(|p| p.join(marker(sensor)).exists())
            .collect();
        dirs.sort();
        Some(IioSensor {
            sensor,
            dir: dirs.into_iter().next()?,
            driver: driver.to_owned(),
        })
    }

    /// The IIO device directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The kernel driver that owns the sensor.
    pub fn driver(&self) -> &str {
        &self.driver
    }

    fn error(&self, detail: String) -> SensorError {
        // The agent finds which sensors a kernel driver owns when it starts: one unbound since
        // (as docs/operating.md suggests, to read it faster) is read over I2C after a restart.
        let hint = if self.dir.exists() {
            format!(
                "; read through the kernel driver `{}`, which owns this address",
                self.driver
            )
        } else {
            format!(
                "; the kernel driver `{}` has let go of this sensor (unbound?): restart the agent to read it over I2C (sudo systemctl restart sensehat-monitor)",
                self.driver
            )
        };
        SensorError {
            sensor: self.sensor,
            bus: format!("IIO {}", self.dir.display()),
            detail,
            hint,
        }
    }

    /// A number from one sysfs file; `default` when the file is absent and one is given.
    /// The kernel writes decimals only, so "nan" or "inf" (which Rust parses) can only be
    /// garbage and is refused: a NaN acceleration would otherwise be stored, and counted as
    /// moving.
    fn number(&self, file: &str, default: Option<f64>) -> Result<f64, SensorError> {
        let path = self.dir.join(file);
        match std::fs::read_to_string(&path) {
            Ok(text) => text
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| {
                    self.error(format!(
                        "{} holds {:?}, not a number",
                        path.display(),
                        text.trim()
                    ))
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && default.is_some() => {
                Ok(default.unwrap_or_default())
            }
            Err(e) => Err(self.error(format!("cannot read {}: {e}", path.display()))),
        }
    }

    /// `(raw + offset) * scale` of channel `channel` (`in_temp`, `in_accel_x`, ...), of the
    /// type `shared` (`in_accel`): see [`IioSensor::scale`].
    fn value(&self, channel: &str, shared: &str) -> Result<f64, SensorError> {
        let raw = self.number(&format!("{channel}_raw"), None)?;
        let offset = self.number(&format!("{channel}_offset"), Some(0.0))?;
        Ok((raw + offset) * self.scale(channel, shared)?)
    }

    /// The scale of `channel`: the file its type shares (`in_accel_scale`, as st_lsm6dsx
    /// gives the LSM9DS1's axes), else its own (`in_accel_x_scale`, as the st_sensors
    /// drivers give each axis); the IIO interface allows both.
    fn scale(&self, channel: &str, shared: &str) -> Result<f64, SensorError> {
        let shared = format!("{shared}_scale");
        if self.dir.join(&shared).exists() {
            return self.number(&shared, None);
        }
        self.number(&format!("{channel}_scale"), None)
    }

    /// The device is still there (after a sensor failure, in place of re-initialising it). It
    /// reads the scale, which costs no measurement, unlike a `_raw` file.
    pub fn check(&self) -> Result<(), SensorError> {
        match self.sensor {
            Sensor::Hts221 => self.scale("in_humidityrelative", "in_humidityrelative"),
            Sensor::Lps25h => self.scale("in_pressure", "in_pressure"),
            Sensor::Lsm9ds1 => self.scale("in_accel_x", "in_accel"),
        }
        .map(drop)
    }

    /// Humidity and temperature, as the HTS221 driver would read them.
    pub fn hts221(&self) -> Result<hts221::Measurement, SensorError> {
        let rh = self.value("in_humidityrelative", "in_humidityrelative")?;
        let celsius = self.value("in_temp", "in_temp")?;
        // Refused and clamped as the I2C driver does (crate::drivers::hts221).
        if !hts221::PLAUSIBLE_RH.contains(&rh) {
            return Err(self.error(format!("read {rh} %rH, which no working HTS221 gives")));
        }
        if !hts221::PLAUSIBLE_CELSIUS.contains(&celsius) {
            return Err(self.error(format!(
                "read {celsius} degC, which no working HTS221 gives"
            )));
        }
        Ok(hts221::Measurement {
            humidity_rh: rh.clamp(0.0, 100.0),
            temperature_celsius: celsius,
        })
    }

    /// Pressure, as the LPS25H driver would read it (no temperature).
    pub fn lps25h(&self) -> Result<lps25h::Measurement, SensorError> {
        let pressure_hpa = self.value("in_pressure", "in_pressure")? * 10.0;
        if !lps25h::PLAUSIBLE_HPA.contains(&pressure_hpa) {
            return Err(self.error(format!(
                "read {pressure_hpa} hPa, which no working LPS25H gives"
            )));
        }
        Ok(lps25h::Measurement {
            pressure_hpa,
            // The report's temperature is the HTS221's; this one is not read.
            temperature_celsius: f64::NAN,
        })
    }

    /// Acceleration in g, in python-sense-hat's axes, as the LSM9DS1 driver would read it.
    pub fn lsm9ds1(&self) -> Result<Acceleration, SensorError> {
        let g = |axis: &str| -> Result<f64, SensorError> {
            Ok(self.value(&format!("in_accel_{axis}"), "in_accel")? / G)
        };
        Ok(Acceleration {
            x_g: -g("x")?,
            y_g: -g("y")?,
            z_g: g("z")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake IIO device directory with these files.
    pub fn device(root: &Path, name: &str, files: &[(&str, &str)]) -> PathBuf {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for (f, v) in files {
            std::fs::write(dir.join(f), format!("{v}\n")).unwrap();
        }
        dir
    }

    // Values are (raw + offset) * scale, converted to the report's units; the device with the
    // sensor's channel is chosen among the client's IIO devices (accelerometer, not gyroscope).
    #[test]
    fn reads_and_converts_each_sensor() {
        let t = tempfile::tempdir().unwrap();
        device(
            t.path(),
            "iio:device0",
            &[
                ("name", "hts221"),
                ("in_humidityrelative_raw", "-4620"),
                ("in_humidityrelative_offset", "5000.5"),
                ("in_humidityrelative_scale", "0.125000000"),
                ("in_temp_raw", "300"),
                ("in_temp_offset", "-100"),
                ("in_temp_scale", "0.01"),
            ],
        );
        let h = IioSensor::find(Sensor::Hts221, t.path(), "hts221")
            .unwrap()
            .hts221()
            .unwrap();
        assert!((h.humidity_rh - 47.5625).abs() < 1e-9, "{h:?}");
        assert!((h.temperature_celsius - 2.0).abs() < 1e-9, "{h:?}");

        let t = tempfile::tempdir().unwrap();
        device(
            t.path(),
            "iio:device3",
            &[
                ("in_pressure_raw", "4149248"),
                ("in_pressure_scale", "0.000024414"),
            ],
        );
        let p = IioSensor::find(Sensor::Lps25h, t.path(), "st-press-i2c")
            .unwrap()
            .lps25h()
            .unwrap();
        // 4149248 / 4096 = 1013.0 hPa, within the scale's rounding.
        assert!((p.pressure_hpa - 1013.0).abs() < 0.01, "{p:?}");

        let t = tempfile::tempdir().unwrap();
        device(
            t.path(),
            "iio:device1",
            &[("in_anglvel_x_raw", "5"), ("in_anglvel_scale", "0.000153")],
        );
        device(
            t.path(),
            "iio:device2",
            &[
                ("in_accel_x_raw", "1000"),
                ("in_accel_y_raw", "-2000"),
                ("in_accel_z_raw", "16393"),
                ("in_accel_scale", "0.000598205"),
            ],
        );
        let s = IioSensor::find(Sensor::Lsm9ds1, t.path(), "st_lsm6dsx_i2c").unwrap();
        assert!(s.dir().ends_with("iio:device2"));
        assert_reads_as_the_chip(&s);
        // A scale file for each axis instead (the st_sensors drivers' layout).
        std::fs::remove_file(s.dir().join("in_accel_scale")).unwrap();
        assert!(s.check().is_err());
        for axis in ["x", "y", "z"] {
            let file = s.dir().join(format!("in_accel_{axis}_scale"));
            std::fs::write(file, "0.000598205\n").unwrap();
        }
        assert!(s.check().is_ok());
        assert_reads_as_the_chip(&s);
    }

    /// `s` holds the raw 1000, -2000, 16393 at 0.000598205 m/s^2 (0.061 mg): it reads as the
    /// chip read directly does, signs included.
    fn assert_reads_as_the_chip(s: &IioSensor) {
        let a = s.lsm9ds1().unwrap();
        let direct = crate::drivers::lsm9ds1::to_g(
            [1000, -2000, 16393],
            crate::drivers::lsm9ds1::FullScale::G2,
        );
        for (iio, i2c) in [
            (a.x_g, direct.x_g),
            (a.y_g, direct.y_g),
            (a.z_g, direct.z_g),
        ] {
            assert!((iio - i2c).abs() < 1e-5, "{a:?} vs {direct:?}");
        }
    }

    // No device with the channel: not found. A missing or malformed file is an error that
    // names the file and the kernel driver.
    #[test]
    fn missing_and_malformed_files_are_clear_errors() {
        let t = tempfile::tempdir().unwrap();
        assert!(IioSensor::find(Sensor::Hts221, t.path(), "hts221").is_none());
        device(
            t.path(),
            "iio:device0",
            &[
                ("in_humidityrelative_raw", "12"),
                ("in_humidityrelative_scale", "n/a"),
            ],
        );
        let s = IioSensor::find(Sensor::Hts221, t.path(), "hts221").unwrap();
        let e = s.hts221().unwrap_err().to_string();
        assert!(e.contains("in_humidityrelative_scale holds \"n/a\""), "{e}");
        assert!(e.contains("kernel driver `hts221`"), "{e}");
        std::fs::write(s.dir().join("in_humidityrelative_scale"), "0.5").unwrap();
        let e = s.hts221().unwrap_err().to_string();
        assert!(
            e.contains("cannot read") && e.contains("in_temp_raw"),
            "{e}"
        );
        assert!(s.check().is_ok());
        std::fs::remove_file(s.dir().join("in_humidityrelative_scale")).unwrap();
        assert!(s.check().is_err());
    }

    // Rust parses "nan" and "inf", which no kernel driver writes: they are refused like any
    // other garbage, not stored (a NaN acceleration would also count as moving).
    #[test]
    fn non_finite_values_are_refused() {
        let t = tempfile::tempdir().unwrap();
        device(
            t.path(),
            "iio:device0",
            &[
                ("in_accel_x_raw", "nan"),
                ("in_accel_y_raw", "0"),
                ("in_accel_z_raw", "16384"),
                ("in_accel_scale", "0.000598"),
            ],
        );
        let s = IioSensor::find(Sensor::Lsm9ds1, t.path(), "st_accel").unwrap();
        let e = s.lsm9ds1().unwrap_err().to_string();
        assert!(e.contains("in_accel_x_raw holds \"nan\""), "{e}");
        for bad in ["inf", "-infinity", "NaN"] {
            std::fs::write(s.dir().join("in_accel_x_raw"), bad).unwrap();
            assert!(s.lsm9ds1().is_err(), "{bad} was read as a value");
        }
        std::fs::write(s.dir().join("in_accel_x_raw"), "0").unwrap();
        assert!(s.lsm9ds1().is_ok());
    }
}
