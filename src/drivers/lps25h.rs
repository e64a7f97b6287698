//! ST LPS25H barometric pressure sensor (Sense HAT address 0x5C).
//!
//! Init in RTIMULib's order: CTRL_REG1 = 0xC4 (power on, 25 Hz, block data update),
//! RES_CONF = 0x05, FIFO_CTRL = 0xC0 (FIFO mean mode), CTRL_REG2 = 0x40 (FIFO enable).
//! The Sense HAT v2 may carry an LPS25HB, which answers the same WHO_AM_I (0xBD); the same init
//! is assumed to work there (UNCONFIRMED on hardware; the register map is the same in ST's
//! LPS25HB datasheet for every register written here).

use embedded_hal::delay::DelayNs;
use embedded_hal::i2c::I2c;

use super::{check_identity, read_regs, wait_first_conversion, write_reg, Error, ResetCheck};

/// The chip's 7-bit I2C address on the Sense HAT.
pub const ADDRESS: u8 = 0x5C;

/// Register map (from the LPS25H datasheet).
pub mod reg {
    /// The identity register.
    pub const WHO_AM_I: u8 = 0x0F;
    /// Pressure and temperature resolution (internal averaging).
    pub const RES_CONF: u8 = 0x10;
    /// Power, output data rate and block data update.
    pub const CTRL_REG1: u8 = 0x20;
    /// FIFO enable, boot, one-shot.
    pub const CTRL_REG2: u8 = 0x21;
    /// Data-ready flags.
    pub const STATUS: u8 = 0x27;
    /// The low byte of the 24-bit pressure; TEMP_OUT follows at 0x2B.
    pub const PRESS_OUT_XL: u8 = 0x28;
    /// FIFO mode.
    pub const FIFO_CTRL: u8 = 0x2E;
    /// Set on a register address to read several bytes in one transaction.
    pub const AUTO_INCREMENT: u8 = 0x80;
}

/// What WHO_AM_I reads on an LPS25H (and an LPS25HB).
pub const WHO_AM_I_VALUE: u8 = 0xBD;
/// STATUS: P_DA (bit 1, pressure ready) and T_DA (bit 0, temperature ready).
const STATUS_P_DA_T_DA: u8 = 0x03;
/// CTRL_REG1: power on, 25 Hz, block data update.
const CTRL_REG1_INIT: u8 = 0xC4;

/// The pressures a working LPS25H may report, hPa. Its datasheet's range is 260 to 1260 hPa;
/// readings beyond it are taken (a balloon above 10 km, a deep mine), but not a pressure of
/// zero or less, or above 2000 hPa, which no atmosphere a Pi works in gives: those are a
/// garbled transfer (a flipped top bit makes 1013 hPa read -1035 or 2037).
pub const PLAUSIBLE_HPA: std::ops::RangeInclusive<f64> = f64::MIN_POSITIVE..=2000.0;

/// hPa from the three pressure bytes (XL, L, H): a 24-bit two's complement count of 1/4096 hPa.
pub fn pressure_hpa(xl: u8, l: u8, h: u8) -> f64 {
    // Place the 24 bits at the top of an i32 and shift back to sign-extend.
    let raw = i32::from_le_bytes([0, xl, l, h]) >> 8;
    f64::from(raw) / 4096.0
}

/// Degrees Celsius from TEMP_OUT.
pub fn temperature_celsius(raw: i16) -> f64 {
    42.5 + f64::from(raw) / 480.0
}

/// One LPS25H measurement.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measurement {
    /// Pressure, hPa (= mbar).
    pub pressure_hpa: f64,
    /// The chip's own temperature, degrees Celsius.
    pub temperature_celsius: f64,
}

/// The LPS25H driver, owning its bus handle.
pub struct Lps25h<I2C> {
    i2c: I2C,
    initialised: bool,
    reset: ResetCheck<5>,
}

impl<I2C: I2c> Lps25h<I2C> {
    /// The chip's name in errors.
    pub const CHIP: &'static str = "LPS25H";

    /// A driver on `i2c`; nothing is sent until [`init`](Self::init).
    pub fn new(i2c: I2C) -> Self {
        Lps25h {
            i2c,
            initialised: false,
            reset: ResetCheck::new(reg::CTRL_REG1, CTRL_REG1_INIT),
        }
    }

    /// Check WHO_AM_I, configure, and wait (on `delay`) for the first conversion, so the next
    /// [`read`](Self::read) is a measurement, not the reset value.
    pub fn init(&mut self, delay: &mut impl DelayNs) -> Result<(), Error<I2C::Error>> {
        self.initialised = false;
        check_identity(
            &mut self.i2c,
            Self::CHIP,
            ADDRESS,
            reg::WHO_AM_I,
            WHO_AM_I_VALUE,
        )?;
        for (r, v) in [
            (reg::CTRL_REG1, CTRL_REG1_INIT),
            (reg::RES_CONF, 0x05),
            (reg::FIFO_CTRL, 0xC0),
            (reg::CTRL_REG2, 0x40),
        ] {
            write_reg(&mut self.i2c, ADDRESS, r, v)?;
        }
        wait_first_conversion(
            &mut self.i2c,
            delay,
            Self::CHIP,
            ADDRESS,
            reg::STATUS,
            STATUS_P_DA_T_DA,
        )?;
        self.initialised = true;
        Ok(())
    }

    /// Whether a pressure and a temperature conversion have both completed since power-on
    /// (STATUS P_DA and T_DA), and the STATUS value.
    pub fn data_ready(&mut self) -> Result<(bool, u8), Error<I2C::Error>> {
        super::status_has(&mut self.i2c, ADDRESS, reg::STATUS, STATUS_P_DA_T_DA)
    }

    /// Pressure and temperature in one 5-byte burst from PRESS_OUT_XL; [`Error::Reset`] if
    /// the chip was reset since init.
    pub fn read(&mut self) -> Result<Measurement, Error<I2C::Error>> {
        if !self.initialised {
            return Err(Error::NotInitialised { chip: Self::CHIP });
        }
        let mut raw = [0u8; 5];
        read_regs(
            &mut self.i2c,
            ADDRESS,
            reg::PRESS_OUT_XL | reg::AUTO_INCREMENT,
            &mut raw,
        )?;
        self.reset.check(&mut self.i2c, Self::CHIP, ADDRESS, raw)?;
        let pressure = pressure_hpa(raw[0], raw[1], raw[2]);
        if !PLAUSIBLE_HPA.contains(&pressure) {
            return Err(Error::Implausible {
                chip: Self::CHIP,
                address: ADDRESS,
                value: pressure,
                unit: "hPa",
            });
        }
        Ok(Measurement {
            pressure_hpa: pressure,
            temperature_celsius: temperature_celsius(i16::from_le_bytes([raw[3], raw[4]])),
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

    // 24-bit codes convert at 4096 LSB/hPa and sign-extend from bit 23.
    #[test]
    fn pressure_conversion_and_sign_extension() {
        // 1013.25 hPa = 4_150_272 = 0x3F5400.
        assert_eq!(pressure_hpa(0x00, 0x54, 0x3F), 1013.25);
        assert_eq!(pressure_hpa(0xFF, 0xFF, 0x7F), 8_388_607.0 / 4096.0);
        assert_eq!(pressure_hpa(0x00, 0x00, 0x80), -2048.0);
        assert_eq!(pressure_hpa(0xFF, 0xFF, 0xFF), -1.0 / 4096.0);
        assert_eq!(pressure_hpa(0, 0, 0), 0.0);
    }

    // TEMP_OUT is 480 LSB/degC around 42.5 degC.
    #[test]
    fn temperature_conversion() {
        assert_eq!(temperature_celsius(0), 42.5);
        assert_eq!(temperature_celsius(-9600), 22.5);
        assert_eq!(temperature_celsius(-24000), -7.5);
    }
}
