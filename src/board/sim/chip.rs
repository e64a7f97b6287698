//! One simulated chip: its 256 registers, the sub-address pointer, and the test's knobs
//! (present, failing, warm-up). What differs between the chips is a [`Model`], one per file
//! (`hts221.rs`, `lps25h.rs`, `lsm9ds1.rs`), with addresses declared again from the datasheets.

use super::world::World;
use super::SimChip;

/// A chip's register file.
pub(super) type Regs = [u8; 256];

/// Where every chip's output registers start (6 bytes at most).
const OUTPUTS: u8 = 0x28;
/// The register whose value switches every chip here on ([`Model::switches_on`]): CTRL_REG1 on
/// the HTS221 and LPS25H, CTRL_REG6_XL on the LSM9DS1.
const CONTROL: u8 = 0x20;

/// What one kind of chip does with its registers.
pub(super) struct Model {
    /// Fill the (zeroed) registers as at power-on.
    pub power_on: fn(&mut Regs),
    /// Whether a host may write the register; everything else is read-only.
    pub writable: fn(u8) -> bool,
    /// The pointer and whether it auto-increments, from the first byte of a write.
    pub pointer: fn(&Regs, u8) -> (u8, bool),
    /// Whether writing `value` to `reg` reboots the chip to its power-on contents.
    pub boots: fn(u8, u8) -> bool,
    /// Whether writing `value` to `reg` starts the chip converting.
    pub switches_on: fn(u8, u8) -> bool,
    /// The STATUS register, which reads 0 while the chip warms up.
    pub status: u8,
    /// Encode the world into the output registers.
    pub refresh: fn(&mut Regs, &World),
}

/// One simulated chip: its registers, sub-address pointer and the test's knobs.
pub(super) struct Chip {
    model: &'static Model,
    pub(super) regs: Regs,
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
            model: kind.model(),
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

    /// Registers as at power-on: switched off, the outputs zero. Also what a reset (a power
    /// glitch) leaves.
    pub(super) fn power_on(&mut self) {
        self.regs = [0; 256];
        (self.model.power_on)(&mut self.regs);
        self.warming = 0;
    }

    /// Whether the chip is switched on, and so converts: a chip switched off (at power-on, or
    /// after a reset) keeps its outputs as they are.
    pub(super) fn is_on(&self) -> bool {
        (self.model.switches_on)(CONTROL, self.regs[usize::from(CONTROL)])
    }

    /// Set the sub-address pointer from the first written byte, per the chip's rule.
    pub(super) fn set_pointer(&mut self, sub: u8) {
        (self.pointer, self.auto_increment) = (self.model.pointer)(&self.regs, sub);
    }

    fn advance(&mut self) {
        if self.auto_increment {
            self.pointer = self.pointer.wrapping_add(1);
        }
    }

    pub(super) fn write_byte(&mut self, value: u8) {
        let reg = self.pointer;
        if (self.model.writable)(reg) {
            if (self.model.boots)(reg, value) {
                // BOOT: reload trimming and reset the control registers to their power-on values.
                self.power_on();
            } else {
                self.regs[usize::from(reg)] = value;
                if self.warm_up > 0 && (self.model.switches_on)(reg, value) {
                    // No conversion yet: the outputs hold their reset value until one is done.
                    self.warming = self.warm_up;
                    self.regs[usize::from(OUTPUTS)..usize::from(OUTPUTS) + 6].fill(0);
                }
            }
        }
        self.advance();
    }

    pub(super) fn read_byte(&mut self) -> u8 {
        let mut v = self.regs[usize::from(self.pointer)];
        if self.warming > 0 && self.pointer == self.model.status {
            self.warming -= 1;
            v = 0;
        }
        self.advance();
        v
    }

    /// Encode the world into the output registers.
    pub(super) fn refresh(&mut self, w: &World) {
        (self.model.refresh)(&mut self.regs, w);
    }
}

/// Store a little-endian i16 at `reg`.
pub(super) fn put_i16(regs: &mut Regs, reg: u8, v: i16) {
    let r = usize::from(reg);
    regs[r..r + 2].copy_from_slice(&v.to_le_bytes());
}

/// A raw output code, rounded and saturated as the chip's ADC would.
pub(super) fn to_i16(v: f64) -> i16 {
    v.round().clamp(f64::from(i16::MIN), f64::from(i16::MAX)) as i16
}
