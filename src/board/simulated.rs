//! The board `--sensors sim` runs: the register-level simulator ([`super::sim`]) with the real
//! drivers composed on it, the fault plan of `--sim-fault`, and for testing isMoving the knocks
//! of `--sim-knock` and the resting reading of `--sim-gravity`.

use std::time::Instant;

use embedded_hal::delay::DelayNs;

use super::{sim, Health, Sampled, SenseHat, SensorError};

/// The simulated board plus its plan.
pub struct SimBoard {
    /// The simulated chips, for tests to inspect and poke.
    pub sim: sim::SimSenseHat,
    hat: SenseHat<sim::SimBus, NoDelay>,
    samples: u64,
    faults: Vec<SimFault>,
    knocks: Vec<SimKnock>,
}

/// What the simulated board is told to do, from the command line.
#[derive(Debug, Clone, Default)]
pub struct SimPlan {
    /// `--sim-fault`: chips that fail or are reset.
    pub faults: Vec<SimFault>,
    /// `--sim-knock`: samples during which the board is knocked.
    pub knocks: Vec<SimKnock>,
    /// `--sim-gravity`: what the accelerometer reads at rest; `None` lies flat
    /// ([`sim::FLAT_G`]).
    pub rest_g: Option<[f64; 3]>,
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

/// `--sim-knock FIRST:COUNT`: the board is knocked during sample attempts FIRST..FIRST+COUNT
/// (0-based), as it is for two seconds every five minutes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimKnock {
    /// The first knocked sample attempt.
    pub first: u64,
    /// How many sample attempts are knocked.
    pub count: u64,
}

impl SimKnock {
    fn covers(&self, attempt: u64) -> bool {
        (self.first..self.first.saturating_add(self.count)).contains(&attempt)
    }
}

impl std::str::FromStr for SimKnock {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("expected FIRST:COUNT (e.g. 10:4), got {s:?}");
        let (first, count) = s.split_once(':').ok_or_else(bad)?;
        Ok(SimKnock {
            first: first.trim().parse().map_err(|_| bad())?,
            count: count.trim().parse().map_err(|_| bad())?,
        })
    }
}

/// Parse `--sim-gravity X,Y,Z`: three finite numbers, in g.
pub fn parse_rest_g(s: &str) -> Result<[f64; 3], String> {
    let bad = || format!("expected X,Y,Z in g (e.g. 0,0,1.01), got {s:?}");
    let mut axes = s.split(',').map(|a| a.trim().parse::<f64>());
    match (axes.next(), axes.next(), axes.next(), axes.next()) {
        (Some(Ok(x)), Some(Ok(y)), Some(Ok(z)), None)
            if x.is_finite() && y.is_finite() && z.is_finite() =>
        {
            Ok([x, y, z])
        }
        _ => Err(bad()),
    }
}

/// A delay that returns at once: the simulator's chips need no real time (their warm-up is
/// counted in STATUS reads), and tests of the drivers run without sleeping.
pub struct NoDelay;

impl DelayNs for NoDelay {
    fn delay_ns(&mut self, _ns: u32) {}
}

impl SimBoard {
    /// Start the simulator as the plan lays the board, and initialise the board on it.
    pub fn new(plan: SimPlan) -> Result<Self, SensorError> {
        let sim = sim::SimSenseHat::new();
        if let Some(rest_g) = plan.rest_g {
            sim.set_rest(rest_g);
        }
        // A fault from attempt 0 is a chip failing from the start: at start-up too.
        for f in plan.faults.iter().filter(|f| f.first == 0 && f.count > 0) {
            sim.set_failing(f.chip, true);
        }
        let hat = SenseHat::init("simulated bus", sim.bus(), sim.bus(), sim.bus(), NoDelay)?;
        Ok(SimBoard {
            sim,
            hat,
            samples: 0,
            faults: plan.faults,
            knocks: plan.knocks,
        })
    }

    /// Take one sample, with the chips the fault plan names failing for this attempt, and
    /// the board knocked if the plan says so.
    pub fn sample(&mut self, now: Instant) -> Sampled {
        self.follow_plan();
        self.samples += 1;
        self.hat.sample(now)
    }

    /// [`SenseHat::sample_at_once`] under the plan: a `None` counts as no sample, so that the
    /// sample taken again is the same one of the plan.
    pub fn sample_at_once(&mut self) -> Option<Sampled> {
        self.follow_plan();
        let taken = self.hat.sample_at_once()?;
        self.samples += 1;
        Some(taken)
    }

    /// Set the chips up as the plan says for the next sample.
    fn follow_plan(&mut self) {
        let n = self.samples;
        self.sim
            .set_knocked(self.knocks.iter().any(|k| k.covers(n)));
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
    }

    /// Each sensor's health, in [`super::Sensor::ALL`] order.
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

    // Knocks and the resting reading parse, and nonsense is refused with the form expected.
    #[test]
    fn sim_knock_and_gravity_parse() {
        let k: SimKnock = "10:4".parse().unwrap();
        assert_eq!(
            k,
            SimKnock {
                first: 10,
                count: 4
            }
        );
        assert!(!k.covers(9) && k.covers(10) && k.covers(13) && !k.covers(14));
        assert!("10"
            .parse::<SimKnock>()
            .unwrap_err()
            .contains("FIRST:COUNT"));
        assert!("a:1".parse::<SimKnock>().is_err());
        assert_eq!(parse_rest_g("0, -0.5,1.01").unwrap(), [0.0, -0.5, 1.01]);
        for bad in ["0,0", "0,0,1,1", "0,0,x", "0,0,inf", ""] {
            assert!(parse_rest_g(bad).unwrap_err().contains("X,Y,Z"), "{bad}");
        }
    }

    // The plan lays the board and knocks it in the attempts it names, and only those.
    #[test]
    fn the_plan_lays_and_knocks_the_board() {
        let mut board = SimBoard::new(SimPlan {
            knocks: vec![SimKnock { first: 2, count: 2 }],
            rest_g: Some([0.0, 0.0, -1.0]),
            ..SimPlan::default()
        })
        .unwrap();
        let z: Vec<f64> = (0..6)
            .map(|_| board.sample(Instant::now()).0.unwrap().acceleration.z_g)
            .collect();
        for (i, z) in z.iter().enumerate() {
            let knocked = (2..4).contains(&i);
            // Upside down at rest; the knock lifts z by 0.2 to 0.6 g.
            let expected = if knocked { -0.8..=-0.4 } else { -1.01..=-0.99 };
            assert!(expected.contains(z), "sample {i}: z {z}");
        }
    }
}
