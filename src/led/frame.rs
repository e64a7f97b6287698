//! An 8x8 RGB image and its packing into the Sense HAT framebuffer's 128 bytes.

/// The logo shown at start-up when no `--logo` is given.
pub const DEFAULT_LOGO_PNG: &[u8] = include_bytes!("../../assets/logo.png");

/// One pixel, 8 bits per channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rgb(pub u8, pub u8, pub u8);

impl Rgb {
    /// RGB565 as the Sense HAT framebuffer stores it: 5 bits red, 6 green, 5 blue.
    pub fn to_rgb565(self) -> u16 {
        (u16::from(self.0 >> 3) << 11) | (u16::from(self.1 >> 2) << 5) | u16::from(self.2 >> 3)
    }
}

/// Which way the board is mounted (python-sense-hat's `set_rotation`); 0 has the HDMI port down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Rotation {
    /// As designed: the HDMI port down.
    #[default]
    R0,
    /// Turned 90 degrees clockwise.
    R90,
    /// Upside down.
    R180,
    /// Turned 270 degrees clockwise.
    R270,
}

impl std::str::FromStr for Rotation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "0" => Ok(Rotation::R0),
            "90" => Ok(Rotation::R90),
            "180" => Ok(Rotation::R180),
            "270" => Ok(Rotation::R270),
            _ => Err(format!("rotation must be 0, 90, 180 or 270, not {s:?}")),
        }
    }
}

impl Rotation {
    /// The framebuffer pixel index of the user's (x, y).
    pub fn fb_index(self, x: usize, y: usize) -> usize {
        match self {
            Rotation::R0 => y * 8 + x,
            Rotation::R90 => x * 8 + (7 - y),
            Rotation::R180 => (7 - y) * 8 + (7 - x),
            Rotation::R270 => (7 - x) * 8 + y,
        }
    }
}

/// An image could not be used as a logo.
#[derive(Debug, thiserror::Error)]
pub enum LogoError {
    /// The file is not a PNG the decoder can read.
    #[error("cannot decode the PNG: {0}")]
    Decode(#[from] png::DecodingError),
    /// The image is not 8x8.
    #[error("the logo must be 8x8 pixels, this PNG is {width}x{height}")]
    Size {
        /// The image's width in pixels.
        width: u32,
        /// The image's height in pixels.
        height: u32,
    },
    /// A pixel format (palette, 16-bit) the LED frame is not made from.
    #[error("unsupported PNG pixel format {0:?}: use RGB, RGBA, grey or grey+alpha")]
    Format(png::ColorType),
}

/// 8x8 pixels, row-major from the top-left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Frame {
    /// `pixels[y][x]`, y from the top.
    pub pixels: [[Rgb; 8]; 8],
}

impl Frame {
    /// All pixels off.
    pub fn blank() -> Frame {
        Frame::default()
    }

    /// Decode an 8x8 PNG (8-bit channels; alpha is ignored, as python-sense-hat does).
    pub fn from_png(bytes: &[u8]) -> Result<Frame, LogoError> {
        let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        decoder.set_transformations(png::Transformations::normalize_to_color8());
        let mut reader = decoder.read_info()?;
        let (width, height) = (reader.info().width, reader.info().height);
        if (width, height) != (8, 8) {
            return Err(LogoError::Size { width, height });
        }
        let mut buf = vec![0; reader.output_buffer_size().unwrap_or(8 * 8 * 4)];
        let info = reader.next_frame(&mut buf)?;
        let channels = match info.color_type {
            png::ColorType::Rgb => 3,
            png::ColorType::Rgba => 4,
            png::ColorType::Grayscale => 1,
            png::ColorType::GrayscaleAlpha => 2,
            other => return Err(LogoError::Format(other)),
        };
        let mut frame = Frame::blank();
        for y in 0..8 {
            for x in 0..8 {
                let p = &buf[y * info.line_size + x * channels..];
                frame.pixels[y][x] = if channels >= 3 {
                    Rgb(p[0], p[1], p[2])
                } else {
                    Rgb(p[0], p[0], p[0])
                };
            }
        }
        Ok(frame)
    }

    /// The 128 framebuffer bytes: RGB565 little-endian, pixel at (index * 2).
    pub fn to_fb_bytes(&self, rotation: Rotation) -> [u8; 128] {
        let mut out = [0u8; 128];
        for (y, row) in self.pixels.iter().enumerate() {
            for (x, px) in row.iter().enumerate() {
                let i = rotation.fb_index(x, y) * 2;
                out[i..i + 2].copy_from_slice(&px.to_rgb565().to_le_bytes());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // RGB565 packing keeps the top 5/6/5 bits.
    #[test]
    fn packs_rgb565() {
        assert_eq!(Rgb(255, 255, 255).to_rgb565(), 0xFFFF);
        assert_eq!(Rgb(255, 0, 0).to_rgb565(), 0xF800);
        assert_eq!(Rgb(0, 255, 0).to_rgb565(), 0x07E0);
        assert_eq!(Rgb(0, 0, 255).to_rgb565(), 0x001F);
        assert_eq!(Rgb(0x10, 0x20, 0x30).to_rgb565(), (2 << 11) | (8 << 5) | 6);
    }

    // Rotations map the user's corner pixels where python-sense-hat puts them.
    #[test]
    fn rotations_move_the_top_left_pixel() {
        let mut f = Frame::blank();
        f.pixels[0][0] = Rgb(255, 0, 0);
        for (rot, index) in [
            (Rotation::R0, 0),
            (Rotation::R90, 7),
            (Rotation::R180, 63),
            (Rotation::R270, 56),
        ] {
            let bytes = f.to_fb_bytes(rot);
            assert_eq!(&bytes[index * 2..index * 2 + 2], &[0x00, 0xF8], "{rot:?}");
            assert_eq!(bytes.iter().filter(|b| **b != 0).count(), 1);
        }
    }

    // The embedded default logo decodes as an 8x8 image that is not blank.
    #[test]
    fn default_logo_decodes() {
        let f = Frame::from_png(DEFAULT_LOGO_PNG).unwrap();
        assert_ne!(f, Frame::blank());
    }

    // A PNG of another size is refused with its size in the message.
    #[test]
    fn rejects_wrong_size() {
        let mut png_bytes = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut png_bytes, 4, 4);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            let mut w = enc.write_header().unwrap();
            w.write_image_data(&[0u8; 48]).unwrap();
        }
        let e = Frame::from_png(&png_bytes).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the logo must be 8x8 pixels, this PNG is 4x4"
        );
        assert!(Frame::from_png(b"not a png").is_err());
    }
}
