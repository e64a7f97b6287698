//! The register model of each simulated chip: power-on contents, which registers a host may
//! write, the auto-increment rule, the warm-up after switching on, and how the world is
//! encoded into the output registers. Addresses are declared here again from the datasheets.

use super::world::World;
use super::SimChip;

// Register addresses, from the datasheets.
const WHO_AM_I: u8 = 0x0F;
const HTS_H0_RH_X2: u8 = 0x30;
const HTS_HUMIDITY_OUT: u8 = 0x28;
const HTS_TEMP_OUT: u8 = 0x2A;
const LPS_PRESS_OUT_XL: u8 = 0x28;
const LPS_TEMP_OUT: u8 = 0x2B;
const LSM_CTRL_REG6_XL: u8 = 0x20;
const LSM_CTRL_REG8: u8 = 0x22;
const LSM_OUT_X_XL: u8 = 0x28;
const STATUS: u8 = 0x27;
/// CTRL_REG1 of the HTS221 and LPS25H.
const CTRL_REG1: u8 = 0x20;
/// Where every chip's output registers start (6 bytes at most).
const OUTPUTS: u8 = 0x28;
const LSM_STATUS_REG: u8 = 0x17;

/// The simulated board's calibration (HTS221 factory values of a plausible chip).
const HTS_CAL: HtsCal = HtsCal {
    h0_rh_x2: 66,
    h1_rh_x2: 150,
    t0_degc_x8: 150,
    t1_degc_x8: 280,
    h0_t0_out: -1000,
    h1_t0_out: 7400,
    t0_out: 300,
    t1_out: 950,
};

struct HtsCal {
    h0_rh_x2: u8,
    h1_rh_x2: u8,
    t0_degc_x8: u16,
    t1_degc_x8: u16,
    h0_t0_out: i16,
    h1_t0_out: i16,
    t0_out: i16,
    t1_out: i16,
}

/// One simulated chip: its registers, sub-address pointer and the test's knobs.
pub(super) struct Chip {
    kind: SimChip,
    pub(super) regs: [u8; 256],
    pointer: u8,
    auto_increment: bool,
    /// A chip that is not present NAKs its address.
    pub(super) present: bool,
    /// A failing chip answers every transfer with a bus error.
    pub(super) failing: bool,
    /// STATUS reads that report "no conversion yet" after the chip is switched on (0: ready at
    /// once), and how many of them are left.
    pub(super) warm_up: u32,
    pub(super) warming: u32,
}

impl Chip {
    pub(super) fn new(kind: SimChip) -> Chip {
        let mut c = Chip {
            kind,
            regs: [0; 256],
            pointer: 0,
            auto_increment: false,
            present: true,
            failing: false,
            warm_up: 0,
            warming: 0,
        };
        c.power_on();
        c
    }

    fn power_on(&mut self) {
        self.regs = [0; 256];
        match self.kind {
            SimChip::Hts221 => {
                self.regs[usize::from(WHO_AM_I)] = 0xBC;
                let c = &HTS_CAL;
                let base = usize::from(HTS_H0_RH_X2);
                let r = &mut self.regs[base..base + 16];
                r[0] = c.h0_rh_x2;
                r[1] = c.h1_rh_x2;
                r[2] = (c.t0_degc_x8 & 0xFF) as u8;
                r[3] = (c.t1_degc_x8 & 0xFF) as u8;
                r[5] =
                    ((c.t0_degc_x8 >> 8) as u8 & 0x03) | (((c.t1_degc_x8 >> 8) as u8 & 0x03) << 2);
                r[6..8].copy_from_slice(&c.h0_t0_out.to_le_bytes());
                r[10..12].copy_from_slice(&c.h1_t0_out.to_le_bytes());
                r[12..14].copy_from_slice(&c.t0_out.to_le_bytes());
                r[14..16].copy_from_slice(&c.t1_out.to_le_bytes());
                self.regs[usize::from(STATUS)] = 0x03;
            }
            SimChip::Lps25h => {
                self.regs[usize::from(WHO_AM_I)] = 0xBD;
                self.regs[usize::from(STATUS)] = 0x03;
            }
            SimChip::Lsm9ds1Accel => {
                self.regs[usize::from(WHO_AM_I)] = 0x68;
                // CTRL_REG8 power-on value: IF_ADD_INC set.
                self.regs[usize::from(LSM_CTRL_REG8)] = 0x04;
                self.regs[usize::from(LSM_STATUS_REG)] = 0x01;
            }
        }
    }

    /// Registers a host may write (the control registers); everything else is read-only.
    fn writable(&self, reg: u8) -> bool {
        match self.kind {
            SimChip::Hts221 => matches!(reg, 0x10 | 0x20..=0x22),
            SimChip::Lps25h => matches!(reg, 0x08..=0x0A | 0x10 | 0x20..=0x24 | 0x2E | 0x30..=0x32),
            SimChip::Lsm9ds1Accel => {
                matches!(reg, 0x04..=0x0D | 0x10..=0x13 | 0x1E..=0x24 | 0x2E | 0x30..=0x37)
            }
        }
    }

    /// Set the sub-address pointer from the first written byte, per the chip's rule.
    pub(super) fn set_pointer(&mut self, sub: u8) {
        match self.kind {
            SimChip::Hts221 | SimChip::Lps25h => {
                self.pointer = sub & 0x7F;
                self.auto_increment = sub & 0x80 != 0;
            }
            SimChip::Lsm9ds1Accel => {
                self.pointer = sub;
                self.auto_increment = self.regs[usize::from(LSM_CTRL_REG8)] & 0x04 != 0;
            }
        }
    }

    fn advance(&mut self) {
        if self.auto_increment {
            self.pointer = self.pointer.wrapping_add(1);
        }
    }

    pub(super) fn write_byte(&mut self, value: u8) {
        let reg = self.pointer;
        if self.writable(reg) {
            if self.kind == SimChip::Lsm9ds1Accel && reg == LSM_CTRL_REG8 && value & 0x80 != 0 {
                // BOOT: reload trimming and reset the control registers to their power-on values.
                self.power_on();
            } else {
                self.regs[usize::from(reg)] = value;
                if self.warm_up > 0 && self.switches_on(reg, value) {
                    // No conversion yet: the outputs hold their reset value until one is done.
                    self.warming = self.warm_up;
                    self.regs[usize::from(OUTPUTS)..usize::from(OUTPUTS) + 6].fill(0);
                }
            }
        }
        self.advance();
    }

    /// Whether writing `value` to `reg` starts the chip converting (HTS221 and LPS25H:
    /// CTRL_REG1's power-down bit set; LSM9DS1: a non-zero accelerometer data rate).
    fn switches_on(&self, reg: u8, value: u8) -> bool {
        match self.kind {
            SimChip::Hts221 | SimChip::Lps25h => reg == CTRL_REG1 && value & 0x80 != 0,
            SimChip::Lsm9ds1Accel => reg == LSM_CTRL_REG6_XL && value & 0xE0 != 0,
        }
    }

    fn status_register(&self) -> u8 {
        match self.kind {
            SimChip::Hts221 | SimChip::Lps25h => STATUS,
            SimChip::Lsm9ds1Accel => LSM_STATUS_REG,
        }
    }

    pub(super) fn read_byte(&mut self) -> u8 {
        let mut v = self.regs[usize::from(self.pointer)];
        if self.warming > 0 && self.pointer == self.status_register() {
            self.warming -= 1;
            v = 0;
        }
        self.advance();
        v
    }

    /// Encode the world into the output registers.
    pub(super) fn refresh(&mut self, w: &World) {
        match self.kind {
            SimChip::Hts221 => {
                let c = &HTS_CAL;
                let h0 = f64::from(c.h0_rh_x2) / 2.0;
                let h1 = f64::from(c.h1_rh_x2) / 2.0;
                let h = f64::from(c.h0_t0_out)
                    + (w.humidity_rh - h0) * f64::from(c.h1_t0_out - c.h0_t0_out) / (h1 - h0);
                let t0 = f64::from(c.t0_degc_x8) / 8.0;
                let t1 = f64::from(c.t1_degc_x8) / 8.0;
                let t = f64::from(c.t0_out)
                    + (w.temperature_celsius - t0) * f64::from(c.t1_out - c.t0_out) / (t1 - t0);
                self.put_i16(HTS_HUMIDITY_OUT, to_i16(h));
                self.put_i16(HTS_TEMP_OUT, to_i16(t));
            }
            SimChip::Lps25h => {
                let p = (w.pressure_hpa * 4096.0)
                    .round()
                    .clamp(-8_388_608.0, 8_388_607.0) as i32;
                let b = p.to_le_bytes();
                let base = usize::from(LPS_PRESS_OUT_XL);
                self.regs[base..base + 3].copy_from_slice(&b[..3]);
                self.put_i16(LPS_TEMP_OUT, to_i16((w.temperature_celsius - 42.5) * 480.0));
            }
            SimChip::Lsm9ds1Accel => {
                let mg_per_lsb = match (self.regs[usize::from(LSM_CTRL_REG6_XL)] >> 3) & 0x03 {
                    0b00 => 0.061,
                    0b10 => 0.122,
                    0b11 => 0.244,
                    _ => 0.732,
                };
                let lsb = |g: f64| to_i16(g * 1000.0 / mg_per_lsb);
                let raw = [lsb(-w.accel_g[0]), lsb(-w.accel_g[1]), lsb(w.accel_g[2])];
                for (i, v) in raw.iter().enumerate() {
                    self.put_i16(LSM_OUT_X_XL + 2 * i as u8, *v);
                }
            }
        }
    }

    fn put_i16(&mut self, reg: u8, v: i16) {
        let r = usize::from(reg);
        self.regs[r..r + 2].copy_from_slice(&v.to_le_bytes());
    }
}

fn to_i16(v: f64) -> i16 {
    v.round().clamp(f64::from(i16::MIN), f64::from(i16::MAX)) as i16
}
