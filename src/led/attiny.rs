//! Writing frames straight to the Sense HAT's LED controller, an ATTINY88 at I2C address 0x46,
//! for when the `rpisense-fb` framebuffer is absent (driver not loaded) and no kernel driver owns
//! the address.
//!
//! One I2C write of 193 bytes sets the whole matrix: register 0x00, then for each row 8 red,
//! 8 green and 8 blue values of 5 bits. The values go through the same gamma table as the
//! `rpisense-fb` driver applies by default (its `gamma_default`), so a frame looks the same
//! either way; the pixel order and rotation are the framebuffer's.

use embedded_hal::i2c::I2c;

use super::frame::{Frame, Rotation};

/// The LED controller's address.
pub const ADDRESS: u8 = 0x46;

/// The controller's identity register, and what the Sense HAT's firmware answers there ('s'),
/// as the kernel's `rpisense` driver checks before it uses the chip.
const WHO_AM_I: u8 = 0xF0;
const IDENTITY: u8 = b's';

/// 5-bit level to the controller's 5-bit level: the `rpisense-fb` driver's default gamma.
const GAMMA: [u8; 32] = [
    0, 0, 0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 15, 17, 18, 20, 21, 23,
    25, 27, 29, 31,
];

/// The 193 bytes of one write: register 0x00, then per row its red, green and blue planes.
pub fn controller_bytes(frame: &Frame, rotation: Rotation) -> [u8; 193] {
    let fb = frame.to_fb_bytes(rotation);
    let mut out = [0u8; 193];
    for i in 0..64 {
        let px = u16::from_le_bytes([fb[2 * i], fb[2 * i + 1]]);
        let (row, col) = (i / 8, i % 8);
        // Red is bits 15-11; green the top five of bits 10-5; blue bits 4-0.
        let levels = [(px >> 11) & 0x1f, (px >> 6) & 0x1f, px & 0x1f];
        for (plane, level) in levels.iter().enumerate() {
            out[1 + row * 24 + plane * 8 + col] = GAMMA[usize::from(*level)];
        }
    }
    out
}

/// The LED matrix driven over I2C.
pub struct AttinyLed<I2C> {
    i2c: I2C,
    rotation: Rotation,
}

impl<I2C: I2c> AttinyLed<I2C> {
    /// The LED controller on `i2c`, for a board mounted at `rotation`.
    pub fn new(i2c: I2C, rotation: Rotation) -> Self {
        AttinyLed { i2c, rotation }
    }

    /// The LED matrix on `i2c`, once the chip at [`ADDRESS`] has said it is the Sense HAT's
    /// controller; else why not, as a phrase for the log. Frames are never sent to a chip that
    /// does not answer, or to another chip at that address.
    pub fn probe(mut i2c: I2C, rotation: Rotation) -> Result<Self, String>
    where
        I2C::Error: std::fmt::Display,
    {
        let mut id = [0u8];
        if let Err(e) = i2c.write_read(ADDRESS, &[WHO_AM_I], &mut id) {
            return Err(format!(
                "nothing answers at the LED controller's address {ADDRESS:#04x} ({e})"
            ));
        }
        if id[0] != IDENTITY {
            return Err(format!(
                "the chip at {ADDRESS:#04x} is not the Sense HAT's LED controller (register {WHO_AM_I:#04x} holds {:#04x}, not {IDENTITY:#04x})",
                id[0]
            ));
        }
        Ok(AttinyLed::new(i2c, rotation))
    }

    /// Write `frame` to the matrix in one I2C transfer.
    pub fn show(&mut self, frame: &Frame) -> Result<(), I2C::Error> {
        self.i2c
            .write(ADDRESS, &controller_bytes(frame, self.rotation))
    }

    /// Turn every LED off.
    pub fn clear(&mut self) -> Result<(), I2C::Error> {
        self.show(&Frame::blank())
    }
}

#[cfg(test)]
mod tests {
    use super::super::frame::Rgb;
    use super::*;
    use embedded_hal::i2c::{ErrorKind, ErrorType, Operation};

    // A frame worked by hand: full red at the top-left, mid grey next to it, full blue at the
    // bottom-right; everything else off.
    #[test]
    fn packs_rows_of_red_green_blue_planes_through_the_gamma() {
        let mut f = Frame::blank();
        f.pixels[0][0] = Rgb(255, 0, 0);
        f.pixels[0][1] = Rgb(128, 128, 128);
        f.pixels[7][7] = Rgb(0, 0, 255);
        let b = controller_bytes(&f, Rotation::R0);
        assert_eq!(b[0], 0x00);
        // Row 0: red plane bytes 1..9, green 9..17, blue 17..25.
        assert_eq!(b[1], 31); // red 31 -> 31
        assert_eq!((b[2], b[10], b[18]), (8, 8, 8)); // 128 -> level 16 -> 8
        assert_eq!(b[9], 0);
        // Row 7 starts at 1 + 7 * 24 = 169; blue plane of column 7 at 169 + 16 + 7.
        assert_eq!(b[192], 31);
        assert_eq!(b.iter().filter(|&&v| v != 0).count(), 5);
        // Rotated by 180 the red pixel lands bottom-right, in the red plane.
        let r = controller_bytes(&f, Rotation::R180);
        assert_eq!(r[169 + 7], 31);
        assert_eq!(r[1], 0);
    }

    /// Records the writes a test makes, and answers reads with `.1` (a unit test of the
    /// packing and the probe, not of a device); `None` answers nothing.
    struct Recorder(Vec<(u8, Vec<u8>)>, Option<u8>);

    impl ErrorType for Recorder {
        type Error = ErrorKind;
    }

    impl I2c for Recorder {
        fn transaction(&mut self, address: u8, ops: &mut [Operation<'_>]) -> Result<(), ErrorKind> {
            for op in ops {
                match op {
                    Operation::Write(bytes) => self.0.push((address, bytes.to_vec())),
                    Operation::Read(buf) => {
                        let byte = self.1.ok_or(ErrorKind::NoAcknowledge(
                            embedded_hal::i2c::NoAcknowledgeSource::Address,
                        ))?;
                        buf.fill(byte);
                    }
                }
            }
            Ok(())
        }
    }

    // The probe reads register 0xF0 at 0x46 and takes only the chip that answers 's'.
    #[test]
    fn the_probe_takes_only_the_sense_hat_controller() {
        let led = AttinyLed::probe(Recorder(Vec::new(), Some(b's')), Rotation::R0).unwrap();
        assert_eq!(led.i2c.0, vec![(ADDRESS, vec![0xF0])]);
        let other = AttinyLed::probe(Recorder(Vec::new(), Some(0x42)), Rotation::R0);
        let why = other.err().unwrap();
        assert!(why.contains("holds 0x42, not 0x73"), "{why}");
        let none = AttinyLed::probe(Recorder(Vec::new(), None), Rotation::R0);
        let why = none.err().unwrap();
        assert!(
            why.contains("nothing answers at the LED controller's address 0x46"),
            "{why}"
        );
    }

    // Showing and clearing are one 193-byte write each to address 0x46.
    #[test]
    fn show_and_clear_write_the_whole_matrix_at_once() {
        let mut led = AttinyLed::new(Recorder(Vec::new(), None), Rotation::R0);
        led.show(&Frame::from_png(super::super::frame::DEFAULT_LOGO_PNG).unwrap())
            .unwrap();
        led.clear().unwrap();
        let writes = &led.i2c.0;
        assert_eq!(writes.len(), 2);
        assert!(writes.iter().all(|(a, b)| *a == ADDRESS && b.len() == 193));
        assert!(writes[0].1[1..].iter().any(|&v| v != 0));
        assert!(writes[1].1.iter().all(|&v| v == 0));
    }
}
