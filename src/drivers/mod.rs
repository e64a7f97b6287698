//! Drivers for the three Sense HAT sensors the agent reads, generic over `embedded_hal::i2c::I2c`.
//!
//! No Linux or Pi type appears here: the same code runs on `/dev/i2c-1` and on the register-level
//! simulator in [`crate::board::sim`]. Register addresses, init sequences and conversions follow
//! the project's hardware notes (RTIMULib as used by python-sense-hat), so that for the same
//! register contents the values equal what python-sense-hat returns.

pub mod hts221;
pub mod lps25h;
pub mod lsm9ds1;

/// A driver error, generic over the bus error.
#[derive(Debug, thiserror::Error)]
pub enum Error<E: core::fmt::Debug> {
    /// The I2C transfer failed (no device acknowledged, bus error, ...).
    #[error("I2C transfer to address {address:#04x} failed: {source:?}")]
    Bus { address: u8, source: E },
    /// WHO_AM_I returned something other than this chip's identity.
    #[error("the device at address {address:#04x} is not a {chip}: WHO_AM_I reads {found:#04x}, expected {expected:#04x}")]
    WrongChip {
        chip: &'static str,
        address: u8,
        found: u8,
        expected: u8,
    },
    /// The calibration registers would divide by zero (corrupt or unprogrammed chip).
    #[error("the {chip} calibration registers are unusable ({detail})")]
    BadCalibration {
        chip: &'static str,
        detail: &'static str,
    },
    /// A read was attempted before `init`.
    #[error("the {chip} driver was used before init()")]
    NotInitialised { chip: &'static str },
    /// After init the chip's STATUS never said a conversion was ready: its output registers
    /// still hold their reset value, which must not be stored as a reading.
    #[error("the {chip} at address {address:#04x} produced no reading within {waited_ms} ms of being switched on (STATUS reads {status:#04x})")]
    NoReading {
        chip: &'static str,
        address: u8,
        waited_ms: u64,
        status: u8,
    },
}

impl<E: core::fmt::Debug> Error<E> {
    /// True when the error came from the bus (a transfer that may succeed when retried).
    pub fn is_bus(&self) -> bool {
        matches!(self, Error::Bus { .. })
    }
}

/// Read `buf.len()` bytes starting at `reg` in one write-then-read transaction.
pub(crate) fn read_regs<I: embedded_hal::i2c::I2c>(
    i2c: &mut I,
    address: u8,
    reg: u8,
    buf: &mut [u8],
) -> Result<(), Error<I::Error>> {
    i2c.write_read(address, &[reg], buf)
        .map_err(|source| Error::Bus { address, source })
}

/// Write one register.
pub(crate) fn write_reg<I: embedded_hal::i2c::I2c>(
    i2c: &mut I,
    address: u8,
    reg: u8,
    value: u8,
) -> Result<(), Error<I::Error>> {
    i2c.write(address, &[reg, value])
        .map_err(|source| Error::Bus { address, source })
}

/// Whether every bit of `mask` is set in the chip's STATUS register at `reg`; the value read.
pub(crate) fn status_has<I: embedded_hal::i2c::I2c>(
    i2c: &mut I,
    address: u8,
    reg: u8,
    mask: u8,
) -> Result<(bool, u8), Error<I::Error>> {
    let mut status = [0u8];
    read_regs(i2c, address, reg, &mut status)?;
    Ok((status[0] & mask == mask, status[0]))
}

/// Check WHO_AM_I.
pub(crate) fn check_identity<I: embedded_hal::i2c::I2c>(
    i2c: &mut I,
    chip: &'static str,
    address: u8,
    reg: u8,
    expected: u8,
) -> Result<(), Error<I::Error>> {
    let mut id = [0u8];
    read_regs(i2c, address, reg, &mut id)?;
    if id[0] != expected {
        return Err(Error::WrongChip {
            chip,
            address,
            found: id[0],
            expected,
        });
    }
    Ok(())
}
