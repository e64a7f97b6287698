//! ST HTS221 relative humidity and temperature sensor (Sense HAT address 0x5F).
//!
//! Init as RTIMULib: CTRL_REG1 = 0x87 (power on, block data update, 12.5 Hz),
//! AV_CONF = 0x1B (16 temperature / 32 humidity samples averaged), then read the factory
//! calibration once. Multi-byte reads set bit 7 of the register address (auto-increment).
//!
//! Humidity is clamped to 0..=100 %rH, as ST's reference driver does: python-sense-hat does not
//! clamp, so it can report e.g. 100.8 %rH near saturation, which is not a physical value.
//! Unclamped values differ from python-sense-hat only outside that range. A value far outside
//! it, or a temperature far outside the chip's -40 to 120 degC, is not clamped but refused
//! ([`PLAUSIBLE_RH`], [`PLAUSIBLE_CELSIUS`]): it is a garbled transfer, not a reading.

use embedded_hal::delay::DelayNs;
use embedded_hal::i2c::I2c;

use super::{check_identity, read_regs, wait_first_conversion, write_reg, Error, ResetCheck};

/// The chip's 7-bit I2C address on the Sense HAT.
pub const ADDRESS: u8 = 0x5F;

/// Humidity before clamping that a working HTS221 may give, %rH: a few points past 0 or 100
/// near the ends of its range (clamped); further is a garbled transfer (I2C has no checksum;
/// a flipped top bit of HUMIDITY_OUT moves it by over 100 %rH with a typical calibration).
pub const PLAUSIBLE_RH: std::ops::RangeInclusive<f64> = -20.0..=120.0;

/// Temperatures a working HTS221 may give, degC: its range of -40 to 120 degC with a margin;
/// a flipped top bit of TEMP_OUT moves a typical reading by hundreds of degrees.
pub const PLAUSIBLE_CELSIUS: std::ops::RangeInclusive<f64> = -60.0..=140.0;

/// Register map (datasheet DocID026333).
pub mod reg {
    /// The identity register.
    pub const WHO_AM_I: u8 = 0x0F;
    /// Averaging of humidity and temperature samples.
    pub const AV_CONF: u8 = 0x10;
    /// Power, block data update and output data rate.
    pub const CTRL_REG1: u8 = 0x20;
    /// Data-ready flags.
    pub const STATUS: u8 = 0x27;
    /// HUMIDITY_OUT low byte; TEMP_OUT follows at 0x2A.
    pub const HUMIDITY_OUT_L: u8 = 0x28;
    /// The first of the 16 factory calibration registers.
    pub const CALIB_START: u8 = 0x30;
    /// Set on a register address to read several bytes in one transaction.
    pub const AUTO_INCREMENT: u8 = 0x80;
}

/// What WHO_AM_I reads on an HTS221.
pub const WHO_AM_I_VALUE: u8 = 0xBC;
/// STATUS: H_DA (bit 1, humidity ready) and T_DA (bit 0, temperature ready).
const STATUS_H_DA_T_DA: u8 = 0x03;
const CTRL_REG1_INIT: u8 = 0x87;
const AV_CONF_INIT: u8 = 0x1B;

/// Factory calibration, decoded from registers 0x30..=0x3F.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Calibration {
    /// H0: the humidity of the lower calibration point (H0_rH_x2 / 2).
    pub h0_rh: f64,
    /// H1: the humidity of the upper calibration point (H1_rH_x2 / 2).
    pub h1_rh: f64,
    /// T0: the temperature of the lower calibration point (a 10-bit T0_degC_x8 / 8).
    pub t0_celsius: f64,
    /// T1: the temperature of the upper calibration point (a 10-bit T1_degC_x8 / 8).
    pub t1_celsius: f64,
    /// HUMIDITY_OUT at H0.
    pub h0_t0_out: i16,
    /// HUMIDITY_OUT at H1.
    pub h1_t0_out: i16,
    /// TEMP_OUT at T0.
    pub t0_out: i16,
    /// TEMP_OUT at T1.
    pub t1_out: i16,
}

impl Calibration {
    /// Decode the 16 calibration bytes read from 0x30.
    pub fn from_registers(r: &[u8; 16]) -> Self {
        let word = |i: usize| i16::from_le_bytes([r[i], r[i + 1]]);
        let msb = u16::from(r[0x05]);
        Calibration {
            h0_rh: f64::from(r[0x00]) / 2.0,
            h1_rh: f64::from(r[0x01]) / 2.0,
            t0_celsius: f64::from(((msb & 0x03) << 8) | u16::from(r[0x02])) / 8.0,
            t1_celsius: f64::from(((msb & 0x0C) << 6) | u16::from(r[0x03])) / 8.0,
            h0_t0_out: word(0x06),
            h1_t0_out: word(0x0A),
            t0_out: word(0x0C),
            t1_out: word(0x0E),
        }
    }

    fn check(&self) -> Result<(), &'static str> {
        if self.h1_t0_out == self.h0_t0_out {
            return Err("H0_T0_OUT equals H1_T0_OUT");
        }
        if self.t1_out == self.t0_out {
            return Err("T0_OUT equals T1_OUT");
        }
        Ok(())
    }

    /// %rH from a raw HUMIDITY_OUT, clamped to 0..=100.
    pub fn humidity_rh(&self, raw: i16) -> f64 {
        self.humidity_unclamped(raw).clamp(0.0, 100.0)
    }

    /// %rH from a raw HUMIDITY_OUT, as the calibration gives it.
    fn humidity_unclamped(&self, raw: i16) -> f64 {
        self.h0_rh
            + (f64::from(raw) - f64::from(self.h0_t0_out)) * (self.h1_rh - self.h0_rh)
                / (f64::from(self.h1_t0_out) - f64::from(self.h0_t0_out))
    }

    /// Degrees Celsius from a raw TEMP_OUT.
    pub fn temperature_celsius(&self, raw: i16) -> f64 {
        self.t0_celsius
            + (f64::from(raw) - f64::from(self.t0_out)) * (self.t1_celsius - self.t0_celsius)
                / (f64::from(self.t1_out) - f64::from(self.t0_out))
    }
}

/// One HTS221 measurement.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measurement {
    /// Relative humidity, %rH, clamped to 0..=100.
    pub humidity_rh: f64,
    /// Temperature, degrees Celsius.
    pub temperature_celsius: f64,
}

/// The HTS221 driver, owning its bus handle.
pub struct Hts221<I2C> {
    i2c: I2C,
    calibration: Option<Calibration>,
    reset: ResetCheck<4>,
}

impl<I2C: I2c> Hts221<I2C> {
    /// The chip's name in errors.
    pub const CHIP: &'static str = "HTS221";

    /// A driver on `i2c`; nothing is sent until [`init`](Self::init).
    pub fn new(i2c: I2C) -> Self {
        Hts221 {
            i2c,
            calibration: None,
            reset: ResetCheck::new(reg::CTRL_REG1, CTRL_REG1_INIT),
        }
    }

    /// Check WHO_AM_I, configure, read the calibration, and wait (on `delay`) for the first
    /// conversion, so the next [`read`](Self::read) is a measurement, not the reset value.
    pub fn init(&mut self, delay: &mut impl DelayNs) -> Result<Calibration, Error<I2C::Error>> {
        self.calibration = None;
        check_identity(
            &mut self.i2c,
            Self::CHIP,
            ADDRESS,
            reg::WHO_AM_I,
            WHO_AM_I_VALUE,
        )?;
        write_reg(&mut self.i2c, ADDRESS, reg::CTRL_REG1, CTRL_REG1_INIT)?;
        write_reg(&mut self.i2c, ADDRESS, reg::AV_CONF, AV_CONF_INIT)?;
        let mut raw = [0u8; 16];
        read_regs(
            &mut self.i2c,
            ADDRESS,
            reg::CALIB_START | reg::AUTO_INCREMENT,
            &mut raw,
        )?;
        let calibration = Calibration::from_registers(&raw);
        calibration
            .check()
            .map_err(|detail| Error::BadCalibration {
                chip: Self::CHIP,
                detail,
            })?;
        wait_first_conversion(
            &mut self.i2c,
            delay,
            Self::CHIP,
            ADDRESS,
            reg::STATUS,
            STATUS_H_DA_T_DA,
        )?;
        self.calibration = Some(calibration);
        Ok(calibration)
    }

    /// Whether a humidity and a temperature conversion have both completed since power-on
    /// (STATUS H_DA and T_DA), and the STATUS value.
    pub fn data_ready(&mut self) -> Result<(bool, u8), Error<I2C::Error>> {
        super::status_has(&mut self.i2c, ADDRESS, reg::STATUS, STATUS_H_DA_T_DA)
    }

    /// Read humidity and temperature in one burst (HUMIDITY_OUT then TEMP_OUT);
    /// [`Error::Reset`] if the chip was reset since init.
    pub fn read(&mut self) -> Result<Measurement, Error<I2C::Error>> {
        let cal = self
            .calibration
            .ok_or(Error::NotInitialised { chip: Self::CHIP })?;
        let mut raw = [0u8; 4];
        read_regs(
            &mut self.i2c,
            ADDRESS,
            reg::HUMIDITY_OUT_L | reg::AUTO_INCREMENT,
            &mut raw,
        )?;
        self.reset.check(&mut self.i2c, Self::CHIP, ADDRESS, raw)?;
        let h = i16::from_le_bytes([raw[0], raw[1]]);
        let t = i16::from_le_bytes([raw[2], raw[3]]);
        let implausible = |value, unit| Error::Implausible {
            chip: Self::CHIP,
            address: ADDRESS,
            value,
            unit,
        };
        let rh = cal.humidity_unclamped(h);
        if !PLAUSIBLE_RH.contains(&rh) {
            return Err(implausible(rh, "%rH"));
        }
        let celsius = cal.temperature_celsius(t);
        if !PLAUSIBLE_CELSIUS.contains(&celsius) {
            return Err(implausible(celsius, "degC"));
        }
        Ok(Measurement {
            humidity_rh: rh.clamp(0.0, 100.0),
            temperature_celsius: celsius,
        })
    }

    /// Give the bus handle back.
    pub fn release(self) -> I2C {
        self.i2c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cal() -> Calibration {
        // H0 = 33 %rH, H1 = 75 %rH; T0 = 18.75 degC (150/8), T1 = 35.0 degC (280/8: msb bit 8 set).
        let mut r = [0u8; 16];
        r[0x00] = 66;
        r[0x01] = 150;
        r[0x02] = 150;
        r[0x03] = (280u16 & 0xFF) as u8;
        r[0x05] = ((280u16 >> 8) as u8) << 2;
        r[0x06..0x08].copy_from_slice(&(-1000i16).to_le_bytes());
        r[0x0A..0x0C].copy_from_slice(&(7400i16).to_le_bytes());
        r[0x0C..0x0E].copy_from_slice(&(300i16).to_le_bytes());
        r[0x0E..0x10].copy_from_slice(&(950i16).to_le_bytes());
        Calibration::from_registers(&r)
    }

    // Calibration bytes decode to the spec's H0/H1/T0/T1 including the 10-bit T msb bits.
    #[test]
    fn decodes_calibration() {
        let c = cal();
        assert_eq!(c.h0_rh, 33.0);
        assert_eq!(c.h1_rh, 75.0);
        assert_eq!(c.t0_celsius, 18.75);
        assert_eq!(c.t1_celsius, 35.0);
        assert_eq!(c.h0_t0_out, -1000);
        assert_eq!(c.t1_out, 950);
    }

    // Linear interpolation, including below T0 (negative temperatures) and humidity clamping.
    #[test]
    fn converts_by_interpolation() {
        let c = cal();
        assert_eq!(c.humidity_rh(-1000), 33.0);
        assert_eq!(c.humidity_rh(7400), 75.0);
        assert!((c.humidity_rh(3200) - 54.0).abs() < 1e-12);
        assert_eq!(c.humidity_rh(i16::MAX), 100.0);
        assert_eq!(c.humidity_rh(i16::MIN), 0.0);
        assert_eq!(c.temperature_celsius(300), 18.75);
        // 16.25 degC per 650 LSB: -300 LSB from T0_OUT is -7.5 degC, so 11.25; far below goes negative.
        assert!((c.temperature_celsius(0) - 11.25).abs() < 1e-12);
        assert!((c.temperature_celsius(-900) - (18.75 - 1200.0 * 16.25 / 650.0)).abs() < 1e-12);
        assert!(c.temperature_celsius(-900) < 0.0);
    }

    // T0's top bits (0x35 bits 1:0) and negative T0_OUT/T1_OUT, worked by hand: T0 = 300/8 =
    // 37.5 degC needs bit 8, T1 = 520/8 = 65 degC bits 9 and 3 (0x208), and the outputs -2000
    // and -500 read as unsigned would be 63536 and 65036.
    #[test]
    fn decodes_high_bits_and_negative_outputs() {
        let mut r = [0u8; 16];
        r[0x02] = (300u16 & 0xFF) as u8;
        r[0x03] = (520u16 & 0xFF) as u8;
        r[0x05] = ((300u16 >> 8) as u8) | (((520u16 >> 8) as u8) << 2);
        r[0x0A] = 1;
        r[0x0C..0x0E].copy_from_slice(&(-2000i16).to_le_bytes());
        r[0x0E..0x10].copy_from_slice(&(-500i16).to_le_bytes());
        let c = Calibration::from_registers(&r);
        assert_eq!((c.t0_celsius, c.t1_celsius), (37.5, 65.0));
        assert_eq!((c.t0_out, c.t1_out), (-2000, -500));
        // 27.5 degC over 1500 LSB: -1250 is halfway.
        assert!((c.temperature_celsius(-1250) - 51.25).abs() < 1e-12);
    }

    // Equal calibration outputs would divide by zero: reported, not NaN, for either quantity.
    #[test]
    fn rejects_degenerate_calibration() {
        let mut c = cal();
        c.t1_out = c.t0_out;
        assert!(c.check().is_err());
        let mut c = cal();
        c.h1_t0_out = c.h0_t0_out;
        assert_eq!(c.check(), Err("H0_T0_OUT equals H1_T0_OUT"));
    }
}
