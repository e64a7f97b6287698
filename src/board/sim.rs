//! A simulated Sense HAT at the register level.
//!
//! [`SimBus`] implements `embedded_hal::i2c::I2c`, so the real drivers run against it unchanged.
//! It models the three chips the agent reads (HTS221 at 0x5F, LPS25H at 0x5C, LSM9DS1 accel/gyro
//! at 0x6A): WHO_AM_I, the factory calibration block of the HTS221, writable control registers,
//! output registers refreshed from a slowly varying "world", and each chip's auto-increment rule
//! (bit 7 of the sub-address on the HTS221 and LPS25H; CTRL_REG8.IF_ADD_INC on the LSM9DS1, which
//! a BOOT write resets to its power-on value). A device that is not present NAKs its address.
//!
//! Register addresses are declared here again from the datasheets rather than imported from the
//! drivers, so a wrong constant in a driver shows up as a failing test instead of agreeing with
//! itself.
//!
//! Tests can freeze the world and poke raw register contents ([`SimSenseHat::freeze`],
//! [`SimSenseHat::poke`]), remove a chip ([`SimSenseHat::set_present`]) or make it fail every
//! transfer ([`SimSenseHat::set_failing`]).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use embedded_hal::i2c::{ErrorKind, ErrorType, I2c, NoAcknowledgeSource, Operation};

/// The chips of the simulated board.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimChip {
    Hts221,
    Lps25h,
    Lsm9ds1Accel,
}

impl SimChip {
    pub const ALL: [SimChip; 3] = [SimChip::Hts221, SimChip::Lps25h, SimChip::Lsm9ds1Accel];

    pub fn address(self) -> u8 {
        match self {
            SimChip::Hts221 => 0x5F,
            SimChip::Lps25h => 0x5C,
            SimChip::Lsm9ds1Accel => 0x6A,
        }
    }

    /// Parse the names used by `--sim-fault` (`hts221`, `lps25h`, `lsm9ds1`).
    pub fn from_name(name: &str) -> Option<SimChip> {
        match name.to_ascii_lowercase().as_str() {
            "hts221" => Some(SimChip::Hts221),
            "lps25h" => Some(SimChip::Lps25h),
            "lsm9ds1" | "lsm9ds1-accel" | "accel" => Some(SimChip::Lsm9ds1Accel),
            _ => None,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

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

/// Physical values the simulated chips report.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct World {
    pub humidity_rh: f64,
    pub temperature_celsius: f64,
    pub pressure_hpa: f64,
    /// In python-sense-hat's axes (x, y negated relative to the chip).
    pub accel_g: [f64; 3],
}

impl World {
    /// A room that changes slowly: a few percent of humidity, a degree or two, a few hPa over
    /// minutes, and a board lying flat with a little accelerometer noise.
    pub fn at(seconds: f64, noise: f64) -> World {
        use std::f64::consts::TAU;
        World {
            humidity_rh: 42.0 + 4.0 * (TAU * seconds / 600.0).sin() + 0.2 * noise,
            temperature_celsius: 22.5 + 1.5 * (TAU * seconds / 900.0).sin() + 0.05 * noise,
            pressure_hpa: 1013.25 + 2.0 * (TAU * seconds / 1800.0).sin() + 0.02 * noise,
            accel_g: Self::accel(seconds, noise),
        }
    }
}

impl World {
    /// Lying flat (z a little under 1 g), with a two-second knock every five minutes that
    /// sets isMoving, so the flag is seen to work.
    fn accel(seconds: f64, noise: f64) -> [f64; 3] {
        let knock = seconds % 300.0;
        if (150.0..152.0).contains(&knock) {
            [0.6 * noise + 1.1, -0.4, 0.98 + 0.5 * noise]
        } else {
            [0.01 * noise, -0.01 * noise, 0.985 + 0.004 * noise]
        }
    }
}

/// The bus error of the simulator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimError {
    /// No device at the address (or the chip was removed).
    NoDevice,
    /// The chip is present but failing (fault injection).
    Fault,
}

impl embedded_hal::i2c::Error for SimError {
    fn kind(&self) -> ErrorKind {
        match self {
            SimError::NoDevice => ErrorKind::NoAcknowledge(NoAcknowledgeSource::Address),
            SimError::Fault => ErrorKind::Bus,
        }
    }
}

impl std::fmt::Display for SimError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SimError::NoDevice => f.write_str("no device acknowledged the address (simulated)"),
            SimError::Fault => f.write_str("bus error (simulated fault)"),
        }
    }
}

impl std::error::Error for SimError {}

struct Chip {
    kind: SimChip,
    regs: [u8; 256],
    pointer: u8,
    auto_increment: bool,
    present: bool,
    failing: bool,
    /// STATUS reads that report "no conversion yet" after the chip is switched on (0: ready at
    /// once), and how many of them are left.
    warm_up: u32,
    warming: u32,
}

impl Chip {
    fn new(kind: SimChip) -> Chip {
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
    fn set_pointer(&mut self, sub: u8) {
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

    fn write_byte(&mut self, value: u8) {
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

    fn read_byte(&mut self) -> u8 {
        let mut v = self.regs[usize::from(self.pointer)];
        if self.warming > 0 && self.pointer == self.status_register() {
            self.warming -= 1;
            v = 0;
        }
        self.advance();
        v
    }

    /// Encode the world into the output registers.
    fn refresh(&mut self, w: &World) {
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

struct State {
    chips: [Chip; 3],
    frozen: bool,
    started: Instant,
    rng: fastrand::Rng,
    transactions: [u64; 3],
    /// The world as last computed, and when (seconds since `started`).
    world: Option<(f64, World)>,
}

/// The world is recomputed at most this often (seconds): the three reads of one sample see
/// the same room, as they would within a real chip's output period (the fastest here, the
/// accelerometer's, is about 8 ms), and a sample costs one evaluation instead of three.
const WORLD_STEP: f64 = 0.001;

/// A handle on the simulated board; cheap to clone, all clones see the same chips.
#[derive(Clone)]
pub struct SimSenseHat {
    state: Arc<Mutex<State>>,
}

impl Default for SimSenseHat {
    fn default() -> Self {
        Self::new()
    }
}

impl SimSenseHat {
    pub fn new() -> Self {
        SimSenseHat {
            state: Arc::new(Mutex::new(State {
                chips: SimChip::ALL.map(Chip::new),
                frozen: false,
                started: Instant::now(),
                rng: fastrand::Rng::with_seed(0x5E45_E4A7),
                transactions: [0; 3],
                world: None,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock can only come from a bug in a test; keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A bus on which the drivers talk to this board.
    pub fn bus(&self) -> SimBus {
        SimBus {
            board: self.clone(),
        }
    }

    /// Stop refreshing output registers from the world, so poked values stay.
    pub fn freeze(&self) {
        self.lock().frozen = true;
    }

    /// Encode these physical values into the output registers (and freeze).
    pub fn set_world(&self, world: World) {
        let mut s = self.lock();
        s.frozen = true;
        for c in s.chips.iter_mut() {
            c.refresh(&world);
        }
    }

    /// Write raw register contents, bypassing the host-writable check (a test's view of the chip).
    pub fn poke(&self, chip: SimChip, reg: u8, bytes: &[u8]) {
        let mut s = self.lock();
        let c = &mut s.chips[chip.index()];
        for (i, b) in bytes.iter().enumerate() {
            c.regs[usize::from(reg) + i] = *b;
        }
    }

    /// Read one register as the chip holds it.
    pub fn peek(&self, chip: SimChip, reg: u8) -> u8 {
        self.lock().chips[chip.index()].regs[usize::from(reg)]
    }

    /// Remove (or put back) a chip: a removed chip NAKs its address.
    pub fn set_present(&self, chip: SimChip, present: bool) {
        self.lock().chips[chip.index()].present = present;
    }

    /// Make every transfer to the chip fail with a bus error (or stop doing so).
    pub fn set_failing(&self, chip: SimChip, failing: bool) {
        self.lock().chips[chip.index()].failing = failing;
    }

    /// From the next time the chip is switched on, its STATUS reports "no conversion yet" for
    /// `status_reads` reads, and its outputs stay at their reset value (zero) until then, as a
    /// real chip's do for one output period; `u32::MAX`: a chip that never converts.
    pub fn set_warm_up(&self, chip: SimChip, status_reads: u32) {
        self.lock().chips[chip.index()].warm_up = status_reads;
    }

    /// Transactions addressed to the chip so far.
    pub fn transactions(&self, chip: SimChip) -> u64 {
        self.lock().transactions[chip.index()]
    }
}

/// The simulated I2C bus.
#[derive(Clone)]
pub struct SimBus {
    board: SimSenseHat,
}

impl ErrorType for SimBus {
    type Error = SimError;
}

impl I2c for SimBus {
    fn transaction(
        &mut self,
        address: u8,
        operations: &mut [Operation<'_>],
    ) -> Result<(), SimError> {
        let mut s = self.board.lock();
        let index = SimChip::ALL
            .iter()
            .position(|c| c.address() == address)
            .ok_or(SimError::NoDevice)?;
        s.transactions[index] += 1;
        if !s.chips[index].present {
            return Err(SimError::NoDevice);
        }
        if s.chips[index].failing {
            return Err(SimError::Fault);
        }
        if !s.frozen && s.chips[index].warming == 0 {
            let seconds = s.started.elapsed().as_secs_f64();
            let world = match s.world {
                Some((at, w)) if seconds - at < WORLD_STEP => w,
                _ => {
                    let noise = s.rng.f64() * 2.0 - 1.0;
                    let w = World::at(seconds, noise);
                    s.world = Some((seconds, w));
                    w
                }
            };
            s.chips[index].refresh(&world);
        }
        let chip = &mut s.chips[index];
        for op in operations.iter_mut() {
            match op {
                Operation::Write(bytes) => {
                    if let Some((sub, data)) = bytes.split_first() {
                        chip.set_pointer(*sub);
                        for b in data {
                            chip.write_byte(*b);
                        }
                    }
                }
                Operation::Read(buf) => {
                    for b in buf.iter_mut() {
                        *b = chip.read_byte();
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Without bit 7 the HTS221 reads the same register again; with it, consecutive registers.
    #[test]
    fn hts221_auto_increment_needs_bit_7() {
        let sim = SimSenseHat::new();
        sim.freeze();
        sim.poke(SimChip::Hts221, 0x28, &[1, 2, 3, 4]);
        let mut bus = sim.bus();
        let mut buf = [0u8; 4];
        bus.write_read(0x5F, &[0x28], &mut buf).unwrap();
        assert_eq!(buf, [1, 1, 1, 1]);
        bus.write_read(0x5F, &[0x28 | 0x80], &mut buf).unwrap();
        assert_eq!(buf, [1, 2, 3, 4]);
    }

    // The LSM9DS1 increments by IF_ADD_INC, which BOOT restores.
    #[test]
    fn lsm9ds1_auto_increment_follows_if_add_inc() {
        let sim = SimSenseHat::new();
        sim.freeze();
        sim.poke(SimChip::Lsm9ds1Accel, 0x28, &[9, 8, 7]);
        let mut bus = sim.bus();
        let mut buf = [0u8; 3];
        bus.write_read(0x6A, &[0x28], &mut buf).unwrap();
        assert_eq!(buf, [9, 8, 7]);
        bus.write(0x6A, &[0x22, 0x00]).unwrap();
        bus.write_read(0x6A, &[0x28], &mut buf).unwrap();
        assert_eq!(buf, [9, 9, 9]);
        bus.write(0x6A, &[0x22, 0x80]).unwrap();
        assert_eq!(sim.peek(SimChip::Lsm9ds1Accel, 0x22), 0x04);
    }

    // Absent addresses NAK; injected faults fail with a bus error.
    #[test]
    fn absent_and_failing_chips() {
        let sim = SimSenseHat::new();
        let mut bus = sim.bus();
        let mut b = [0u8];
        assert_eq!(
            bus.write_read(0x10, &[0x0F], &mut b),
            Err(SimError::NoDevice)
        );
        sim.set_failing(SimChip::Lps25h, true);
        assert_eq!(bus.write_read(0x5C, &[0x0F], &mut b), Err(SimError::Fault));
        sim.set_present(SimChip::Lps25h, false);
        assert_eq!(
            bus.write_read(0x5C, &[0x0F], &mut b),
            Err(SimError::NoDevice)
        );
    }
}
