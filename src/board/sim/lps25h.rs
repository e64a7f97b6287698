//! The simulated LPS25H (pressure): bit 7 of the sub-address for auto-increment, and
//! CTRL_REG1's PD bit switching it on.

use super::chip::{put_i16, to_i16, Model, Regs};
use super::world::World;

// Register addresses, from the datasheet.
const WHO_AM_I: u8 = 0x0F;
const CTRL_REG1: u8 = 0x20;
const STATUS: u8 = 0x27;
const PRESS_OUT_XL: u8 = 0x28;
const TEMP_OUT: u8 = 0x2B;

/// The register model.
pub(super) const MODEL: Model = Model {
    power_on,
    writable: |reg| matches!(reg, 0x08..=0x0A | 0x10 | 0x20..=0x24 | 0x2E | 0x30..=0x32),
    pointer: |_, sub| (sub & 0x7F, sub & 0x80 != 0),
    boots: |_, _| false,
    switches_on: |reg, value| reg == CTRL_REG1 && value & 0x80 != 0,
    status: STATUS,
    refresh,
};

fn power_on(regs: &mut Regs) {
    regs[usize::from(WHO_AM_I)] = 0xBD;
    regs[usize::from(STATUS)] = 0x03;
}

/// 4096 LSB per hPa in 24 bits; TEMP_OUT 480 LSB per degree around 42.5 degC.
fn refresh(regs: &mut Regs, w: &World) {
    let p = (w.pressure_hpa * 4096.0)
        .round()
        .clamp(-8_388_608.0, 8_388_607.0) as i32;
    let b = p.to_le_bytes();
    let base = usize::from(PRESS_OUT_XL);
    regs[base..base + 3].copy_from_slice(&b[..3]);
    put_i16(
        regs,
        TEMP_OUT,
        to_i16((w.temperature_celsius - 42.5) * 480.0),
    );
}
