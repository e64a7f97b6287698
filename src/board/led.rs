//! Finding the LED matrix: the framebuffer the `rpisense-fb` driver makes (`RPi-Sense FB`), or,
//! on the real board when there is none, the LED controller itself over the Linux I2C bus.
//! It lives on the hardware boundary because the controller is reached through the same bus
//! as the sensors; the frames themselves are [`crate::led`]'s.

use std::path::Path;

use linux_embedded_hal::{I2CError, I2cdev};
use tracing::{info, warn};

use super::linux;
use crate::led::{attiny, find_sense_fb, AttinyLed, Frame, FramebufferLed, Rotation};

/// Where the kernel lists framebuffers, each with its `name`.
const SYS_GRAPHICS: &str = "/sys/class/graphics";
/// Where the framebuffer devices are.
const DEV: &str = "/dev";

/// Where the logo goes.
pub enum Led {
    /// The `RPi-Sense FB` framebuffer (or `--led-device`).
    Framebuffer(FramebufferLed),
    /// The LED controller itself, over I2C, when there is no framebuffer.
    Controller(AttinyLed<I2cdev>),
}

/// A frame could not be written to the LED matrix.
#[derive(Debug, thiserror::Error)]
pub enum LedError {
    /// Writing the framebuffer device failed.
    #[error(transparent)]
    Framebuffer(#[from] std::io::Error),
    /// The I2C write to the LED controller failed.
    #[error(transparent)]
    Controller(#[from] I2CError),
}

impl Led {
    /// Show `frame` on the matrix.
    pub fn show(&mut self, frame: &Frame) -> Result<(), LedError> {
        match self {
            Led::Framebuffer(fb) => Ok(fb.show(frame)?),
            Led::Controller(c) => Ok(c.show(frame)?),
        }
    }

    /// Turn every LED off.
    pub fn clear(&mut self) -> Result<(), LedError> {
        self.show(&Frame::blank())
    }

    /// The device written, for logs.
    pub fn name(&self) -> String {
        match self {
            Led::Framebuffer(fb) => fb.path().display().to_string(),
            Led::Controller(_) => format!("I2C address {:#04x}", attiny::ADDRESS),
        }
    }
}

/// The LED matrix, if there is one: `device` (`--led-device`), else the framebuffer named
/// `RPi-Sense FB`, else the LED controller on `i2c_bus` unless a kernel driver owns it. Only
/// `real_board` (not the simulator) looks further than `device`. Says once in the log what it
/// found when that is not the framebuffer.
pub fn open_led(
    device: Option<&Path>,
    i2c_bus: &str,
    rotation: Rotation,
    real_board: bool,
) -> Option<Led> {
    let (sys_graphics, dev) = (Path::new(SYS_GRAPHICS), Path::new(DEV));
    open_in(device, i2c_bus, rotation, real_board, sys_graphics, dev)
}

/// [`open_led`], with the kernel's framebuffer list at `sys_graphics` and its devices in `dev`.
fn open_in(
    device: Option<&Path>,
    i2c_bus: &str,
    rotation: Rotation,
    real_board: bool,
    sys_graphics: &Path,
    dev: &Path,
) -> Option<Led> {
    match (device, real_board) {
        (Some(p), _) => return Some(Led::Framebuffer(FramebufferLed::new(p, rotation))),
        (None, false) => return None,
        (None, true) => {}
    }
    if let Some(p) = find_sense_fb(sys_graphics, dev) {
        return Some(Led::Framebuffer(FramebufferLed::new(p, rotation)));
    }
    if let Some(driver) = linux::owner(i2c_bus, attiny::ADDRESS) {
        warn!(driver, "no LED matrix framebuffer (no \"RPi-Sense FB\"), and a kernel driver owns the LED controller; running without the LED");
        return None;
    }
    match I2cdev::new(i2c_bus).map(|i2c| AttinyLed::probe(i2c, rotation)) {
        Ok(Ok(led)) => {
            info!("no LED matrix framebuffer (is the rpisense-fb driver loaded?); writing the matrix over I2C instead");
            Some(Led::Controller(led))
        }
        Ok(Err(why)) => {
            warn!(bus = i2c_bus, "no LED matrix found (no framebuffer named \"RPi-Sense FB\", and {why}); running without the LED");
            None
        }
        Err(e) => {
            warn!(error = %e, bus = i2c_bus, "no LED matrix found (no framebuffer named \"RPi-Sense FB\", and the I2C bus cannot be opened); running without the LED");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_BUS: &str = "/dev/i2c-does-not-exist";

    fn framebuffer_path(led: Option<Led>) -> Option<std::path::PathBuf> {
        match led {
            Some(Led::Framebuffer(fb)) => Some(fb.path().to_owned()),
            _ => None,
        }
    }

    // A device named on the command line is used as it is, on the simulator too; without one
    // the simulator has no LED.
    #[test]
    fn a_named_device_wins_and_the_simulator_looks_no_further() {
        let t = tempfile::tempdir().unwrap();
        let (g, d) = (t.path(), t.path());
        let fb = Some(Path::new("/tmp/fb"));
        let led = open_in(fb, NO_BUS, Rotation::R0, false, g, d);
        assert_eq!(framebuffer_path(led).as_deref(), fb);
        assert!(open_in(None, NO_BUS, Rotation::R0, false, g, d).is_none());
    }

    // On the real board the framebuffer named RPi-Sense FB is found; with none and no bus to
    // reach the controller on, there is no LED.
    #[test]
    fn the_real_board_finds_the_sense_framebuffer() {
        let t = tempfile::tempdir().unwrap();
        let (graphics, dev) = (t.path().join("graphics"), t.path().join("dev"));
        std::fs::create_dir_all(graphics.join("fb0")).unwrap();
        std::fs::write(graphics.join("fb0/name"), "simple\n").unwrap();
        assert!(open_in(None, NO_BUS, Rotation::R0, true, &graphics, &dev).is_none());
        std::fs::create_dir_all(graphics.join("fb1")).unwrap();
        std::fs::write(graphics.join("fb1/name"), "RPi-Sense FB\n").unwrap();
        let led = open_in(None, NO_BUS, Rotation::R0, true, &graphics, &dev);
        assert_eq!(framebuffer_path(led), Some(dev.join("fb1")));
    }
}
