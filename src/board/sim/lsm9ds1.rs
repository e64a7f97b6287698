//! The simulated LSM9DS1 accelerometer/gyroscope die: auto-increment by CTRL_REG8.IF_ADD_INC
//! (on at power-on, restored by BOOT), and a non-zero accelerometer data rate switching it on.

use super::chip::{put_i16, to_i16, Model, Regs};
use super::world::World;

// Register addresses, from the datasheet.
const WHO_AM_I: u8 = 0x0F;
const STATUS_REG: u8 = 0x17;
const CTRL_REG6_XL: u8 = 0x20;
const CTRL_REG8: u8 = 0x22;
const OUT_X_XL: u8 = 0x28;
/// CTRL_REG8 bits.
const BOOT: u8 = 0x80;
const IF_ADD_INC: u8 = 0x04;

/// The register model.
pub(super) const MODEL: Model = Model {
    power_on,
    writable: |reg| matches!(reg, 0x04..=0x0D | 0x10..=0x13 | 0x1E..=0x24 | 0x2E | 0x30..=0x37),
    pointer: |regs, sub| (sub, regs[usize::from(CTRL_REG8)] & IF_ADD_INC != 0),
    boots: |reg, value| reg == CTRL_REG8 && value & BOOT != 0,
    switches_on: |reg, value| reg == CTRL_REG6_XL && value & 0xE0 != 0,
    status: STATUS_REG,
    refresh,
};

fn power_on(regs: &mut Regs) {
    regs[usize::from(WHO_AM_I)] = 0x68;
    // CTRL_REG8 power-on value: IF_ADD_INC set.
    regs[usize::from(CTRL_REG8)] = IF_ADD_INC;
    regs[usize::from(STATUS_REG)] = 0x01;
}

/// At the full scale CTRL_REG6_XL selects, in the chip's axes (X and Y negated from
/// python-sense-hat's, in which the world is given).
fn refresh(regs: &mut Regs, w: &World) {
    let mg_per_lsb = match (regs[usize::from(CTRL_REG6_XL)] >> 3) & 0x03 {
        0b00 => 0.061,
        0b10 => 0.122,
        0b11 => 0.244,
        _ => 0.732,
    };
    let lsb = |g: f64| to_i16(g * 1000.0 / mg_per_lsb);
    let raw = [lsb(-w.accel_g[0]), lsb(-w.accel_g[1]), lsb(w.accel_g[2])];
    for (i, v) in raw.iter().enumerate() {
        put_i16(regs, OUT_X_XL + 2 * i as u8, *v);
    }
}
