//! Writing frames to the Sense HAT's framebuffer device.
//!
//! The `rpisense-fb` kernel driver exposes the matrix as a framebuffer named `RPi-Sense FB`;
//! its number varies (fb0 without HDMI, fb1 with it), so it is found by name in
//! `/sys/class/graphics/fb*/name`. The writer takes any path, so tests use a plain file.

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::frame::{Frame, Rotation};

/// The name the Sense HAT's framebuffer driver (`rpisense-fb`) gives its device in sysfs.
pub const SENSE_FB_NAME: &str = "RPi-Sense FB";

/// Find `/dev/fbN` whose sysfs name is exactly `RPi-Sense FB`, looking under `sys_graphics`
/// (normally `/sys/class/graphics`) and `dev` (normally `/dev`).
pub fn find_sense_fb(sys_graphics: &Path, dev: &Path) -> Option<PathBuf> {
    let mut entries: Vec<_> = std::fs::read_dir(sys_graphics)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("fb"))
        .collect();
    entries.sort();
    entries.into_iter().find_map(|n| {
        let name = std::fs::read_to_string(sys_graphics.join(&n).join("name")).ok()?;
        (name.trim_end_matches('\n') == SENSE_FB_NAME).then(|| dev.join(&n))
    })
}

/// The LED matrix behind a framebuffer device (or a file standing in for it).
pub struct FramebufferLed {
    path: PathBuf,
    rotation: Rotation,
}

impl FramebufferLed {
    /// The matrix behind the framebuffer device at `path`, for a board mounted at `rotation`.
    pub fn new(path: impl Into<PathBuf>, rotation: Rotation) -> Self {
        FramebufferLed {
            path: path.into(),
            rotation,
        }
    }

    /// The framebuffer device written to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Write the whole frame at offset 0 in one write.
    pub fn show(&self, frame: &Frame) -> std::io::Result<()> {
        let mut f = OpenOptions::new().write(true).open(&self.path)?;
        f.seek(SeekFrom::Start(0))?;
        f.write_all(&frame.to_fb_bytes(self.rotation))?;
        f.flush()
    }

    /// Turn every LED off.
    pub fn clear(&self) -> std::io::Result<()> {
        self.show(&Frame::blank())
    }
}

#[cfg(test)]
mod tests {
    use super::super::frame::Rgb;
    use super::*;

    // The framebuffer is found by its exact name, not by number.
    #[test]
    fn finds_the_sense_framebuffer_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let sys = dir.path().join("sys");
        for (fb, name) in [("fb0", "BCM2708 FB\n"), ("fb1", "RPi-Sense FB\n")] {
            std::fs::create_dir_all(sys.join(fb)).unwrap();
            std::fs::write(sys.join(fb).join("name"), name).unwrap();
        }
        assert_eq!(
            find_sense_fb(&sys, Path::new("/dev")),
            Some(PathBuf::from("/dev/fb1"))
        );
        std::fs::write(sys.join("fb1").join("name"), "RPi-Sense FB v2\n").unwrap();
        assert_eq!(find_sense_fb(&sys, Path::new("/dev")), None);
        assert_eq!(
            find_sense_fb(&dir.path().join("missing"), Path::new("/dev")),
            None
        );
    }

    // The bytes written for a known image are its RGB565 packing; clear writes zeros.
    #[test]
    fn writes_rgb565_bytes_to_the_device_file() {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("fb1");
        std::fs::write(&dev, [0xAAu8; 128]).unwrap();
        let mut frame = Frame::blank();
        frame.pixels[0][1] = Rgb(0, 255, 0);
        frame.pixels[7][7] = Rgb(0, 0, 255);
        let led = FramebufferLed::new(&dev, Rotation::R0);
        led.show(&frame).unwrap();
        let bytes = std::fs::read(&dev).unwrap();
        assert_eq!(bytes.len(), 128);
        assert_eq!(&bytes[2..4], &[0xE0, 0x07]);
        assert_eq!(&bytes[126..128], &[0x1F, 0x00]);
        assert_eq!(bytes.iter().filter(|b| **b != 0).count(), 3);
        led.clear().unwrap();
        assert_eq!(std::fs::read(&dev).unwrap(), vec![0u8; 128]);
    }
}
