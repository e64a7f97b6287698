//! A simulated Sense HAT at the register level.
//!
//! [`SimBus`] implements `embedded_hal::i2c::I2c`, so the real drivers run against it unchanged.
//! It models the three chips the agent reads (HTS221 at 0x5F, LPS25H at 0x5C, LSM9DS1 accel/gyro
//! at 0x6A): WHO_AM_I, the factory calibration block of the HTS221, writable control registers,
//! output registers refreshed from a slowly varying "world", and each chip's auto-increment rule
//! (bit 7 of the sub-address on the HTS221 and LPS25H; CTRL_REG8.IF_ADD_INC on the LSM9DS1, which
//! a BOOT write resets to its power-on value). A device that is not present NAKs its address.
//!
//! Each chip's register model is in its own file (`hts221.rs`, `lps25h.rs`, `lsm9ds1.rs`, run
//! by `chip.rs`), the room they measure in `world.rs`. Register addresses are declared there
//! again from the datasheets rather than imported from the drivers, so a wrong constant in a
//! driver shows up as a failing test instead of agreeing with itself.
//!
//! Tests can freeze the world and poke raw register contents ([`SimSenseHat::freeze`],
//! [`SimSenseHat::poke`]), remove a chip ([`SimSenseHat::set_present`]), make it fail every
//! transfer ([`SimSenseHat::set_failing`]) or keep it from converting for a while after it is
//! switched on ([`SimSenseHat::set_warm_up`]). That while is counted in STATUS reads, not in
//! time, so a driver polling through a delay that does not really sleep still goes through it.
//! They can also lay the board another way ([`SimSenseHat::set_rest`]) and knock it
//! ([`SimSenseHat::set_knocked`]).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use embedded_hal::i2c::{ErrorKind, ErrorType, I2c, NoAcknowledgeSource, Operation};

mod chip;
mod hts221;
mod lps25h;
mod lsm9ds1;
mod world;

use chip::Chip;
pub use world::{Pose, World, FLAT_G};

/// The chips of the simulated board.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimChip {
    /// The HTS221 at 0x5F.
    Hts221,
    /// The LPS25H at 0x5C.
    Lps25h,
    /// The LSM9DS1 accelerometer/gyroscope die at 0x6A.
    Lsm9ds1Accel,
}

impl SimChip {
    /// Every simulated chip.
    pub const ALL: [SimChip; 3] = [SimChip::Hts221, SimChip::Lps25h, SimChip::Lsm9ds1Accel];

    /// The chip's 7-bit I2C address.
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

    /// What the chip does with its registers.
    fn model(self) -> &'static chip::Model {
        match self {
            SimChip::Hts221 => &hts221::MODEL,
            SimChip::Lps25h => &lps25h::MODEL,
            SimChip::Lsm9ds1Accel => &lsm9ds1::MODEL,
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

struct State {
    chips: [Chip; 3],
    frozen: bool,
    started: Instant,
    rng: fastrand::Rng,
    transactions: [u64; 3],
    /// How the board lies, and whether it is being knocked.
    pose: Pose,
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
    /// A board with every chip present, just powered on.
    pub fn new() -> Self {
        SimSenseHat {
            state: Arc::new(Mutex::new(State {
                chips: SimChip::ALL.map(Chip::new),
                frozen: false,
                started: Instant::now(),
                rng: fastrand::Rng::with_seed(0x5E45_E4A7),
                transactions: [0; 3],
                pose: Pose::default(),
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

    /// Lay the board so that the accelerometer reads `rest_g` at rest (in g, python-sense-hat's
    /// axes; [`FLAT_G`] at first).
    pub fn set_rest(&self, rest_g: [f64; 3]) {
        let mut s = self.lock();
        s.pose.rest_g = rest_g;
        s.world = None;
    }

    /// Knock the board from the next transfer on (or stop), as it is for two seconds every
    /// five minutes.
    pub fn set_knocked(&self, knocked: bool) {
        let mut s = self.lock();
        if s.pose.knocked != knocked {
            s.pose.knocked = knocked;
            s.world = None;
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

    /// Reset the chip as a power glitch would: its registers go back to their power-on values
    /// (switched off, outputs zero) until a driver configures it again.
    pub fn reset(&self, chip: SimChip) {
        self.lock().chips[chip.index()].power_on();
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
        if !s.frozen && s.chips[index].warming == 0 && s.chips[index].is_on() {
            let seconds = s.started.elapsed().as_secs_f64();
            let world = match s.world {
                Some((at, w)) if seconds - at < WORLD_STEP => w,
                _ => {
                    let noise = s.rng.f64() * 2.0 - 1.0;
                    let w = World::at(seconds, noise, s.pose);
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
