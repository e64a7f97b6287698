//! ST LPS25H barometric pressure sensor (Sense HAT address 0x5C).
//!
//! Init in RTIMULib's order: CTRL_REG1 = 0xC4 (power on, 25 Hz, block data update),
//! RES_CONF = 0x05, FIFO_CTRL = 0xC0 (FIFO mean mode), CTRL_REG2 = 0x40 (FIFO enable).
//! The Sense HAT v2 may carry an LPS25HB, which answers the same WHO_AM_I (0xBD); the same init
//! is assumed to work there (UNCONFIRMED on hardware; the register map is the same in ST's
//! LPS25HB datasheet for every register written here).

use embedded_hal::i2c::I2c;

use super::{check_identity, read_regs, write_reg, Error};

pub const ADDRESS: u8 = 0x5C;

pub mod reg {
    pub const WHO_AM_I: u8 = 0x0F;
    pub const RES_CONF: u8 = 0x10;
    pub const CTRL_REG1: u8 = 0x20;
    pub const CTRL_REG2: u8 = 0x21;
    pub const STATUS: u8 = 0x27;
    pub const PRESS_OUT_XL: u8 = 0x28;
    pub const FIFO_CTRL: u8 = 0x2E;
    pub const AUTO_INCREMENT: u8 = 0x80;
}

pub const WHO_AM_I_VALUE: u8 = 0xBD;

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
    pub pressure_hpa: f64,
    pub temperature_celsius: f64,
}

pub struct Lps25h<I2C> {
    i2c: I2C,
    initialised: bool,
}

impl<I2C: I2c> Lps25h<I2C> {
    pub const CHIP: &'static str = "LPS25H";

    pub fn new(i2c: I2C) -> Self {
        Lps25h {
            i2c,
            initialised: false,
        }
    }

    pub fn init(&mut self) -> Result<(), Error<I2C::Error>> {
        self.initialised = false;
        check_identity(
            &mut self.i2c,
            Self::CHIP,
            ADDRESS,
            reg::WHO_AM_I,
            WHO_AM_I_VALUE,
        )?;
        for (r, v) in [
            (reg::CTRL_REG1, 0xC4),
            (reg::RES_CONF, 0x05),
            (reg::FIFO_CTRL, 0xC0),
            (reg::CTRL_REG2, 0x40),
        ] {
            write_reg(&mut self.i2c, ADDRESS, r, v)?;
        }
        self.initialised = true;
        Ok(())
    }

    /// Whether a pressure and a temperature conversion have both completed since power-on
    /// (STATUS P_DA and T_DA), and the STATUS value.
    pub fn data_ready(&mut self) -> Result<(bool, u8), Error<I2C::Error>> {
        super::status_has(&mut self.i2c, ADDRESS, reg::STATUS, 0x03)
    }

    /// Pressure and temperature in one 5-byte burst from PRESS_OUT_XL.
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
        Ok(Measurement {
            pressure_hpa: pressure_hpa(raw[0], raw[1], raw[2]),
            temperature_celsius: temperature_celsius(i16::from_le_bytes([raw[3], raw[4]])),
        })
    }

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
