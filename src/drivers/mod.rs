//! Drivers for the three Sense HAT sensors the agent reads, generic over `embedded_hal::i2c::I2c`.
//!
//! No Linux or Pi type appears here: the same code runs on `/dev/i2c-1` and on the register-level
//! simulator in [`crate::board::sim`]. Register addresses, init sequences and conversions follow
//! the project's hardware notes (RTIMULib as used by python-sense-hat), so that for the same
//! register contents the values equal what python-sense-hat returns.
//!
//! Waits (the LSM9DS1's reboot, a chip's first conversion after power-on) go through the
//! `embedded_hal::delay::DelayNs` passed to each `init`, as embedded-hal 1.0 drivers do: the
//! board passes one that sleeps, tests one that returns at once.

use embedded_hal::delay::DelayNs;
use embedded_hal::i2c::I2c;

pub mod hts221;
pub mod lps25h;
pub mod lsm9ds1;

/// A driver error, generic over the bus error.
#[derive(Debug, thiserror::Error)]
pub enum Error<E: core::fmt::Debug> {
    /// The I2C transfer failed (no device acknowledged, bus error, ...).
    #[error("I2C transfer to address {address:#04x} failed: {source}")]
    Bus {
        /// The chip's address.
        address: u8,
        /// What the bus reported.
        source: E,
    },
    /// WHO_AM_I returned something other than this chip's identity.
    #[error("the device at address {address:#04x} is not a {chip}: WHO_AM_I reads {found:#04x}, expected {expected:#04x}")]
    WrongChip {
        /// The chip the driver is for.
        chip: &'static str,
        /// The address read.
        address: u8,
        /// What WHO_AM_I read.
        found: u8,
        /// What it reads on this chip.
        expected: u8,
    },
    /// The calibration registers would divide by zero (corrupt or unprogrammed chip).
    #[error("the {chip} calibration registers are unusable ({detail})")]
    BadCalibration {
        /// The chip.
        chip: &'static str,
        /// Which registers are unusable.
        detail: &'static str,
    },
    /// A read was attempted before `init`.
    #[error("the {chip} driver was used before init()")]
    NotInitialised {
        /// The chip.
        chip: &'static str,
    },
    /// After init the chip's STATUS never said a conversion was ready: its output registers
    /// still hold their reset value, which must not be stored as a reading.
    #[error("the {chip} at address {address:#04x} produced no reading within {waited_ms} ms of being switched on (STATUS reads {status:#04x})")]
    NoReading {
        /// The chip.
        chip: &'static str,
        /// Its address.
        address: u8,
        /// How long init waited for a conversion.
        waited_ms: u64,
        /// The last STATUS value read.
        status: u8,
    },
    /// The chip's control register no longer holds what init wrote: it was reset (a power
    /// glitch, a loose HAT) and has stopped converting, its outputs zero or frozen.
    #[error("the {chip} at address {address:#04x} has lost its settings (register {reg:#04x} reads {found:#04x}, not {expected:#04x}): it was reset")]
    Reset {
        /// The chip.
        chip: &'static str,
        /// Its address.
        address: u8,
        /// The control register read back.
        reg: u8,
        /// What it reads.
        found: u8,
        /// What init wrote there.
        expected: u8,
    },

    /// A read's output bytes were all 0xFF while the chip's settings read back fine: what the
    /// bus gives when nothing drives its data line for a transfer (a loose HAT, interference),
    /// not a measurement.
    #[error("the {chip} at address {address:#04x} answered a read with every byte 0xFF (nothing drove the bus)")]
    Garbled {
        /// The chip.
        chip: &'static str,
        /// Its address.
        address: u8,
    },
    /// A value no working chip of this kind gives: a garbled transfer (I2C has no checksum,
    /// and a flipped high bit moves a pressure by hundreds of hPa).
    #[error(
        "the {chip} at address {address:#04x} read {value} {unit}, which no working {chip} gives"
    )]
    Implausible {
        /// The chip.
        chip: &'static str,
        /// Its address.
        address: u8,
        /// The value read.
        value: f64,
        /// Its unit.
        unit: &'static str,
    },
}

impl<E: core::fmt::Debug> Error<E> {
    /// True when the error came from the bus (a transfer that may succeed when retried).
    pub fn is_bus(&self) -> bool {
        matches!(self, Error::Bus { .. })
    }
}

/// Tells a chip that was reset from one still measuring. After a reset (a power glitch) a
/// chip's control registers hold their power-on values: switched off, it converts no more, and
/// its outputs read zero or stay as they were, which would be stored as readings. So when a
/// read's raw output bytes are all zero or the same as the last read's (which a measuring chip
/// gives rarely, and then costs one more one-byte read), the control register is read back.
/// Bytes all 0xFF (a chip no longer driving the bus) are read back the same way, and are never
/// a measurement, even when the control register reads fine.
pub(crate) struct ResetCheck<const N: usize> {
    last: Option<[u8; N]>,
    /// The control register, and what init wrote there.
    reg: u8,
    configured: u8,
}

impl<const N: usize> ResetCheck<N> {
    /// A check of control register `reg`, which init set to `configured`.
    pub(crate) const fn new(reg: u8, configured: u8) -> Self {
        ResetCheck {
            last: None,
            reg,
            configured,
        }
    }

    /// `raw` was just read from the chip's outputs: [`Error::Reset`] if it looks frozen and
    /// the control register says the chip was reset.
    pub(crate) fn check<I: I2c>(
        &mut self,
        i2c: &mut I,
        chip: &'static str,
        address: u8,
        raw: [u8; N],
    ) -> Result<(), Error<I::Error>> {
        let floating = raw.iter().all(|b| *b == 0xFF);
        let suspect = floating || raw.iter().all(|b| *b == 0) || self.last == Some(raw);
        self.last = Some(raw);
        if !suspect {
            return Ok(());
        }
        let mut now = [0u8];
        read_regs(i2c, address, self.reg, &mut now)?;
        if now[0] == self.configured {
            return match floating {
                true => Err(Error::Garbled { chip, address }),
                false => Ok(()),
            };
        }
        Err(Error::Reset {
            chip,
            address,
            reg: self.reg,
            found: now[0],
            expected: self.configured,
        })
    }
}

/// Read `buf.len()` bytes starting at `reg` in one write-then-read transaction.
pub(crate) fn read_regs<I: I2c>(
    i2c: &mut I,
    address: u8,
    reg: u8,
    buf: &mut [u8],
) -> Result<(), Error<I::Error>> {
    i2c.write_read(address, &[reg], buf)
        .map_err(|source| Error::Bus { address, source })
}

/// Write one register.
pub(crate) fn write_reg<I: I2c>(
    i2c: &mut I,
    address: u8,
    reg: u8,
    value: u8,
) -> Result<(), Error<I::Error>> {
    i2c.write(address, &[reg, value])
        .map_err(|source| Error::Bus { address, source })
}

/// Whether every bit of `mask` is set in the chip's STATUS register at `reg`; the value read.
pub(crate) fn status_has<I: I2c>(
    i2c: &mut I,
    address: u8,
    reg: u8,
    mask: u8,
) -> Result<(bool, u8), Error<I::Error>> {
    let mut status = [0u8];
    read_regs(i2c, address, reg, &mut status)?;
    Ok((status[0] & mask == mask, status[0]))
}

/// How often, and how many times, STATUS is read after init before the first reading:
/// 50 x 5 ms, so 250 ms, three periods of the slowest output (the HTS221's 12.5 Hz) and its
/// turn-on time with room to spare.
pub const FIRST_READING_PAUSE_MS: u32 = 5;
/// See [`FIRST_READING_PAUSE_MS`].
pub const FIRST_READING_POLLS: u32 = 50;

/// Wait, pausing on `delay`, until a freshly initialised chip says a conversion is ready. Its
/// output registers hold their reset value (zero) until then, or, after a glitch that reset
/// the chip, whatever came before: read at once, as the first sample after start-up or a
/// re-initialisation is, they would be taken for a real reading (0 hPa, or a humidity worked
/// out from zero). A chip that never becomes ready is [`Error::NoReading`].
pub(crate) fn wait_first_conversion<I: I2c>(
    i2c: &mut I,
    delay: &mut impl DelayNs,
    chip: &'static str,
    address: u8,
    status_reg: u8,
    mask: u8,
) -> Result<(), Error<I::Error>> {
    let mut status = 0;
    for poll in 0..FIRST_READING_POLLS {
        let (ready, value) = status_has(i2c, address, status_reg, mask)?;
        if ready {
            return Ok(());
        }
        status = value;
        if poll + 1 < FIRST_READING_POLLS {
            delay.delay_ms(FIRST_READING_PAUSE_MS);
        }
    }
    Err(Error::NoReading {
        chip,
        address,
        waited_ms: u64::from(FIRST_READING_PAUSE_MS * (FIRST_READING_POLLS - 1)),
        status,
    })
}

/// Check WHO_AM_I.
pub(crate) fn check_identity<I: I2c>(
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
