//! The board `--sensors sim` runs: the register-level simulator ([`super::sim`]) with the real
//! drivers composed on it, and the fault plan of `--sim-fault`.

use std::time::Instant;

use embedded_hal::delay::DelayNs;

use super::{sim, Health, HealthEvent, SampleError, SenseHat, Sensor, SensorError};
use crate::report::Reading;

/// The simulated board plus the fault plan of `--sim-fault`.
pub struct SimBoard {
    /// The simulated chips, for tests to inspect and poke.
    pub sim: sim::SimSenseHat,
    hat: SenseHat<sim::SimBus, NoDelay>,
    samples: u64,
    faults: Vec<SimFault>,
}

/// `--sim-fault CHIP:FIRST:COUNT`: every transfer to CHIP fails during sample attempts
/// FIRST..FIRST+COUNT (0-based), retries and re-initialisation included. `CHIP:FIRST:reset`:
/// CHIP is reset, as by a power glitch, just before sample attempt FIRST.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimFault {
    /// The chip that fails.
    pub chip: sim::SimChip,
    /// The first failing sample attempt.
    pub first: u64,
    /// How many sample attempts fail; 0 for a reset.
    pub count: u64,
    /// The chip is reset before attempt `first` (and `count` is 0).
    pub reset: bool,
}

impl std::str::FromStr for SimFault {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let bad = || {
            format!("expected CHIP:FIRST:COUNT or CHIP:FIRST:reset (e.g. lps25h:10:3), got {s:?}")
        };
        if parts.len() != 3 {
            return Err(bad());
        }
        let (count, reset) = match parts[2] {
            "reset" => (0, true),
            n => (n.parse().map_err(|_| bad())?, false),
        };
        Ok(SimFault {
            chip: sim::SimChip::from_name(parts[0]).ok_or_else(|| {
                format!("unknown chip {:?}: use hts221, lps25h or lsm9ds1", parts[0])
            })?,
            first: parts[1].parse().map_err(|_| bad())?,
            count,
            reset,
        })
    }
}

/// A delay that returns at once: the simulator's chips need no real time (their warm-up is
/// counted in STATUS reads), and tests of the drivers run without sleeping.
pub struct NoDelay;

impl DelayNs for NoDelay {
    fn delay_ns(&mut self, _ns: u32) {}
}

impl SimBoard {
    /// Start the simulator and initialise the board on it.
    pub fn new(faults: Vec<SimFault>) -> Result<Self, SensorError> {
        let sim = sim::SimSenseHat::new();
        let hat = SenseHat::init("simulated bus", sim.bus(), sim.bus(), sim.bus(), NoDelay)?;
        Ok(SimBoard {
            sim,
            hat,
            samples: 0,
            faults,
        })
    }

    /// Take one sample, with the chips the fault plan names failing for this attempt.
    pub fn sample(
        &mut self,
        now: Instant,
    ) -> (Result<Reading, SampleError>, Vec<(Sensor, HealthEvent)>) {
        let n = self.samples;
        self.samples += 1;
        for chip in sim::SimChip::ALL {
            let failing = self
                .faults
                .iter()
                .any(|f| f.chip == chip && (f.first..f.first.saturating_add(f.count)).contains(&n));
            self.sim.set_failing(chip, failing);
            if self
                .faults
                .iter()
                .any(|f| f.chip == chip && f.reset && f.first == n)
            {
                self.sim.reset(chip);
            }
        }
        self.hat.sample(now)
    }

    /// Each sensor's health, in [`Sensor::ALL`] order.
    pub fn health(&self) -> &[Health; 3] {
        self.hat.health()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The fault plan parses and rejects nonsense with a message.
    #[test]
    fn sim_fault_parses() {
        let f: SimFault = "lps25h:10:3".parse().unwrap();
        assert_eq!(
            f,
            SimFault {
                chip: sim::SimChip::Lps25h,
                first: 10,
                count: 3,
                reset: false
            }
        );
        let r: SimFault = "hts221:4:reset".parse().unwrap();
        assert_eq!(
            (r.chip, r.first, r.count, r.reset),
            (sim::SimChip::Hts221, 4, 0, true)
        );
        assert!("lps25h:10".parse::<SimFault>().is_err());
        assert!("foo:1:1"
            .parse::<SimFault>()
            .unwrap_err()
            .contains("unknown chip"));
    }
}
