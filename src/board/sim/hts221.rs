//! The simulated HTS221 (humidity and temperature): a plausible chip's factory calibration,
//! bit 7 of the sub-address for auto-increment, and CTRL_REG1's PD bit switching it on.

use super::chip::{put_i16, to_i16, Model, Regs};
use super::world::World;

// Register addresses, from the datasheet.
const WHO_AM_I: u8 = 0x0F;
const AV_CONF: u8 = 0x10;
const CTRL_REG1: u8 = 0x20;
const CTRL_REG3: u8 = 0x22;
const STATUS: u8 = 0x27;
const HUMIDITY_OUT: u8 = 0x28;
const TEMP_OUT: u8 = 0x2A;
const H0_RH_X2: u8 = 0x30;

/// The register model.
pub(super) const MODEL: Model = Model {
    power_on,
    writable: |reg| matches!(reg, AV_CONF | CTRL_REG1..=CTRL_REG3),
    pointer: |_, sub| (sub & 0x7F, sub & 0x80 != 0),
    boots: |_, _| false,
    switches_on: |reg, value| reg == CTRL_REG1 && value & 0x80 != 0,
    status: STATUS,
    refresh,
};

/// The simulated board's calibration (HTS221 factory values of a plausible chip).
const CAL: Cal = Cal {
    h0_rh_x2: 66,
    h1_rh_x2: 150,
    t0_degc_x8: 150,
    t1_degc_x8: 280,
    h0_t0_out: -1000,
    h1_t0_out: 7400,
    t0_out: 300,
    t1_out: 950,
};

struct Cal {
    h0_rh_x2: u8,
    h1_rh_x2: u8,
    t0_degc_x8: u16,
    t1_degc_x8: u16,
    h0_t0_out: i16,
    h1_t0_out: i16,
    t0_out: i16,
    t1_out: i16,
}

fn power_on(regs: &mut Regs) {
    regs[usize::from(WHO_AM_I)] = 0xBC;
    let c = &CAL;
    let base = usize::from(H0_RH_X2);
    let r = &mut regs[base..base + 16];
    r[0] = c.h0_rh_x2;
    r[1] = c.h1_rh_x2;
    r[2] = (c.t0_degc_x8 & 0xFF) as u8;
    r[3] = (c.t1_degc_x8 & 0xFF) as u8;
    r[5] = ((c.t0_degc_x8 >> 8) as u8 & 0x03) | (((c.t1_degc_x8 >> 8) as u8 & 0x03) << 2);
    r[6..8].copy_from_slice(&c.h0_t0_out.to_le_bytes());
    r[10..12].copy_from_slice(&c.h1_t0_out.to_le_bytes());
    r[12..14].copy_from_slice(&c.t0_out.to_le_bytes());
    r[14..16].copy_from_slice(&c.t1_out.to_le_bytes());
    regs[usize::from(STATUS)] = 0x03;
}

/// The calibration's interpolation run backwards: the raw outputs that read as the world.
fn refresh(regs: &mut Regs, w: &World) {
    let c = &CAL;
    let h0 = f64::from(c.h0_rh_x2) / 2.0;
    let h1 = f64::from(c.h1_rh_x2) / 2.0;
    let h = f64::from(c.h0_t0_out)
        + (w.humidity_rh - h0) * f64::from(c.h1_t0_out - c.h0_t0_out) / (h1 - h0);
    let t0 = f64::from(c.t0_degc_x8) / 8.0;
    let t1 = f64::from(c.t1_degc_x8) / 8.0;
    let t = f64::from(c.t0_out)
        + (w.temperature_celsius - t0) * f64::from(c.t1_out - c.t0_out) / (t1 - t0);
    put_i16(regs, HUMIDITY_OUT, to_i16(h));
    put_i16(regs, TEMP_OUT, to_i16(t));
}
