//! ST LSM9DS1 accelerometer (the accel/gyro die at Sense HAT address 0x6A). The gyroscope and
//! the magnetometer are not used by the agent.
//!
//! Init as RTIMULib does for the accelerometer: CTRL_REG8 = 0x80 (reboot memory content), wait
//! 100 ms (on the `DelayNs` passed to [`Lsm9ds1Accel::init`]), then CTRL_REG8 = 0x44: IF_ADD_INC, as RTIMULib writes (0x04), plus BDU (block data
//! update, bit 6), which RTIMULib leaves off. With BDU off, a 6-byte burst that straddles an
//! update at 119 Hz can pair one sample's low byte with the next one's high byte (up to 62 mg at
//! +-8 g, enough to flip `isMoving` near 1 g); with it on, the output registers hold still until
//! both bytes of each axis are read. Whether IF_ADD_INC comes back on by itself after the reboot
//! is UNCONFIRMED; it is on after a power-on reset, so writing it explicitly is always right.
//! Then CTRL_REG6_XL = ODR 119 Hz | full scale | BW and CTRL_REG7_XL = 0x00, and wait for the
//! first sample.
//!
//! Axes: RTIMULib (and so python-sense-hat) reports x = -X, y = -Y, z = +Z.

use embedded_hal::delay::DelayNs;
use embedded_hal::i2c::I2c;

use super::{check_identity, read_regs, wait_first_conversion, write_reg, Error, ResetCheck};

/// The accelerometer/gyroscope die's 7-bit I2C address on the Sense HAT.
pub const ADDRESS: u8 = 0x6A;

/// Register map of the accelerometer/gyroscope die (from the LSM9DS1 datasheet).
pub mod reg {
    /// The identity register.
    pub const WHO_AM_I: u8 = 0x0F;
    /// Data-ready flags (bit 0: accelerometer, XLDA).
    pub const STATUS_REG: u8 = 0x17;
    /// Accelerometer data rate, full scale and bandwidth.
    pub const CTRL_REG6_XL: u8 = 0x20;
    /// Accelerometer filters.
    pub const CTRL_REG7_XL: u8 = 0x21;
    /// Boot, block data update, IF_ADD_INC.
    pub const CTRL_REG8: u8 = 0x22;
    /// OUT_X_XL low byte; Y and Z follow.
    pub const OUT_X_L_XL: u8 = 0x28;
}

/// What WHO_AM_I reads on the accelerometer/gyroscope die.
pub const WHO_AM_I_VALUE: u8 = 0x68;
/// STATUS_REG XLDA: an accelerometer sample is ready.
const STATUS_XLDA: u8 = 0x01;
const CTRL_REG8_BOOT: u8 = 0x80;
/// How long the chip takes to reload its trimming after a BOOT, as RTIMULib waits.
const BOOT_MS: u32 = 100;
/// IF_ADD_INC (bit 2) and BDU (bit 6).
const CTRL_REG8_IF_ADD_INC_BDU: u8 = 0x44;
/// ODR 119 Hz (011 in bits 7:5) and bandwidth bits 2:0 = 011, as RTIMULib's 0x7B at +-8 g.
const CTRL_REG6_ODR_BW: u8 = 0x63;

/// Accelerometer full scale (CTRL_REG6_XL bits 4:3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FullScale {
    /// +-2 g.
    G2,
    /// +-4 g.
    G4,
    /// +-8 g: RTIMULib's (and so python-sense-hat's) setting.
    #[default]
    G8,
    /// +-16 g.
    G16,
}

impl FullScale {
    /// Every full scale, smallest first.
    pub const ALL: [FullScale; 4] = [FullScale::G2, FullScale::G4, FullScale::G8, FullScale::G16];

    /// The FS bits in place (bits 4:3): 00 2 g, 10 4 g, 11 8 g, 01 16 g.
    pub fn bits(self) -> u8 {
        match self {
            FullScale::G2 => 0b00 << 3,
            FullScale::G4 => 0b10 << 3,
            FullScale::G8 => 0b11 << 3,
            FullScale::G16 => 0b01 << 3,
        }
    }

    /// Sensitivity in g per LSB (datasheet: 0.061 / 0.122 / 0.244 / 0.732 mg/LSB).
    pub fn g_per_lsb(self) -> f64 {
        match self {
            FullScale::G2 => 0.000_061,
            FullScale::G4 => 0.000_122,
            FullScale::G8 => 0.000_244,
            FullScale::G16 => 0.000_732,
        }
    }
}

/// An accelerometer sample in g, in python-sense-hat's axes (X and Y negated from the chip's).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Acceleration {
    /// Along X, g.
    pub x_g: f64,
    /// Along Y, g.
    pub y_g: f64,
    /// Along Z, g (about +1 lying flat, LEDs up).
    pub z_g: f64,
}

/// Convert raw OUT_X/Y/Z to g, in python-sense-hat's axes.
pub fn to_g(raw: [i16; 3], fs: FullScale) -> Acceleration {
    let s = fs.g_per_lsb();
    Acceleration {
        x_g: -f64::from(raw[0]) * s,
        y_g: -f64::from(raw[1]) * s,
        z_g: f64::from(raw[2]) * s,
    }
}

/// The LSM9DS1 accelerometer driver, owning its bus handle.
pub struct Lsm9ds1Accel<I2C> {
    i2c: I2C,
    full_scale: FullScale,
    initialised: bool,
    reset: ResetCheck<6>,
}

impl<I2C: I2c> Lsm9ds1Accel<I2C> {
    /// The chip's name in errors.
    pub const CHIP: &'static str = "LSM9DS1 accelerometer";

    /// A driver on `i2c` at RTIMULib's +-8 g; nothing is sent until [`init`](Self::init).
    pub fn new(i2c: I2C) -> Self {
        Self::with_full_scale(i2c, FullScale::default())
    }

    /// A driver on `i2c` at another full scale.
    pub fn with_full_scale(i2c: I2C, full_scale: FullScale) -> Self {
        Lsm9ds1Accel {
            i2c,
            full_scale,
            initialised: false,
            reset: ResetCheck::new(reg::CTRL_REG6_XL, CTRL_REG6_ODR_BW | full_scale.bits()),
        }
    }

    /// The full scale the driver configures.
    pub fn full_scale(&self) -> FullScale {
        self.full_scale
    }

    /// Check WHO_AM_I, reboot and configure the accelerometer, and wait for its first sample;
    /// both waits are on `delay`.
    pub fn init(&mut self, delay: &mut impl DelayNs) -> Result<(), Error<I2C::Error>> {
        self.initialised = false;
        check_identity(
            &mut self.i2c,
            Self::CHIP,
            ADDRESS,
            reg::WHO_AM_I,
            WHO_AM_I_VALUE,
        )?;
        write_reg(&mut self.i2c, ADDRESS, reg::CTRL_REG8, CTRL_REG8_BOOT)?;
        delay.delay_ms(BOOT_MS);
        write_reg(
            &mut self.i2c,
            ADDRESS,
            reg::CTRL_REG8,
            CTRL_REG8_IF_ADD_INC_BDU,
        )?;
        write_reg(
            &mut self.i2c,
            ADDRESS,
            reg::CTRL_REG6_XL,
            CTRL_REG6_ODR_BW | self.full_scale.bits(),
        )?;
        write_reg(&mut self.i2c, ADDRESS, reg::CTRL_REG7_XL, 0x00)?;
        wait_first_conversion(
            &mut self.i2c,
            delay,
            Self::CHIP,
            ADDRESS,
            reg::STATUS_REG,
            STATUS_XLDA,
        )?;
        self.initialised = true;
        Ok(())
    }

    /// Whether an acceleration sample is ready (STATUS_REG XLDA), and the STATUS_REG value.
    pub fn data_ready(&mut self) -> Result<(bool, u8), Error<I2C::Error>> {
        super::status_has(&mut self.i2c, ADDRESS, reg::STATUS_REG, STATUS_XLDA)
    }

    /// X, Y and Z in one 6-byte burst (auto-increment by IF_ADD_INC); [`Error::Reset`] if the
    /// chip was reset since init.
    pub fn read(&mut self) -> Result<Acceleration, Error<I2C::Error>> {
        if !self.initialised {
            return Err(Error::NotInitialised { chip: Self::CHIP });
        }
        let mut b = [0u8; 6];
        read_regs(&mut self.i2c, ADDRESS, reg::OUT_X_L_XL, &mut b)?;
        self.reset.check(&mut self.i2c, Self::CHIP, ADDRESS, b)?;
        let raw = [
            i16::from_le_bytes([b[0], b[1]]),
            i16::from_le_bytes([b[2], b[3]]),
            i16::from_le_bytes([b[4], b[5]]),
        ];
        Ok(to_g(raw, self.full_scale))
    }

    /// Give the bus handle back.
    pub fn release(self) -> I2C {
        self.i2c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // RTIMULib's 0x7B at +-8 g is reproduced by the ODR/BW bits plus the FS bits.
    #[test]
    fn ctrl_reg6_matches_rtimulib_at_8g() {
        assert_eq!(CTRL_REG6_ODR_BW | FullScale::G8.bits(), 0x7B);
    }

    // Each full scale uses its datasheet sensitivity; X and Y are negated as in RTIMULib.
    #[test]
    fn converts_every_full_scale() {
        for (fs, s) in [
            (FullScale::G2, 0.000_061),
            (FullScale::G4, 0.000_122),
            (FullScale::G8, 0.000_244),
            (FullScale::G16, 0.000_732),
        ] {
            let a = to_g([1000, -2000, 4096], fs);
            assert_eq!(a.x_g, -1000.0 * s);
            assert_eq!(a.y_g, 2000.0 * s);
            assert_eq!(a.z_g, 4096.0 * s);
        }
        assert_eq!(to_g([0, 0, 4098], FullScale::G8).z_g, 4098.0 * 0.000_244);
    }
}
