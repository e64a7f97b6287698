//! The 8x8 LED matrix: [`frame`] is the pure image model (pixels, rotation, RGB565 packing);
//! [`framebuffer`] finds the `RPi-Sense FB` device and writes frames to it; [`attiny`] writes
//! them straight to the LED controller over I2C when there is no framebuffer; [`status`] is
//! the corner that shows the agent's state (`--led-status`), pure.

pub mod attiny;
pub mod frame;
pub mod framebuffer;
pub mod status;

pub use attiny::AttinyLed;
pub use frame::{Frame, LogoError, Rotation};
pub use framebuffer::{find_sense_fb, FramebufferLed};
