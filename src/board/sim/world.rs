//! The physical values the simulated chips measure: a room that changes slowly, and a board
//! lying in it that is knocked now and then.

/// Physical values the simulated chips report.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct World {
    /// Relative humidity, %rH (HTS221).
    pub humidity_rh: f64,
    /// Degrees Celsius (HTS221 and LPS25H).
    pub temperature_celsius: f64,
    /// hPa (LPS25H).
    pub pressure_hpa: f64,
    /// In python-sense-hat's axes (x, y negated relative to the chip).
    pub accel_g: [f64; 3],
}

/// What the accelerometer reads at rest lying flat, in g: a little under 1 g, so the original
/// isMoving rule stays false at rest and the knock is what sets it.
pub const FLAT_G: [f64; 3] = [0.0, 0.0, 0.985];

/// How the simulated board lies, and whether it is being knocked.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pose {
    /// What the accelerometer reads at rest, in g, in python-sense-hat's axes: gravity as the
    /// board lies, plus whatever offset its chip has.
    pub rest_g: [f64; 3],
    /// Knocked now, besides the two seconds every five minutes.
    pub knocked: bool,
}

impl Default for Pose {
    fn default() -> Self {
        Pose {
            rest_g: FLAT_G,
            knocked: false,
        }
    }
}

impl World {
    /// A room that changes slowly: a few percent of humidity, a degree or two, a few hPa over
    /// minutes; and the board as `pose` has it, with a little accelerometer noise.
    pub fn at(seconds: f64, noise: f64, pose: Pose) -> World {
        use std::f64::consts::TAU;
        World {
            humidity_rh: 42.0 + 4.0 * (TAU * seconds / 600.0).sin() + 0.2 * noise,
            temperature_celsius: 22.5 + 1.5 * (TAU * seconds / 900.0).sin() + 0.05 * noise,
            pressure_hpa: 1013.25 + 2.0 * (TAU * seconds / 1800.0).sin() + 0.02 * noise,
            accel_g: Self::accel(seconds, noise, pose),
        }
    }

    /// At rest, with a two-second knock every five minutes (and whenever `pose` says) that
    /// sets isMoving, so the flag is seen to work. The knock is a jolt of 0.5 to 1.7 g along
    /// x, 0.4 g along -y and 0.2 to 0.6 g up: lying flat, every knocked sample reads over 1 g
    /// on z and over 1.3 g in length, so it is moving by either rule.
    fn accel(seconds: f64, noise: f64, pose: Pose) -> [f64; 3] {
        let [x, y, z] = pose.rest_g;
        if pose.knocked || (150.0..152.0).contains(&(seconds % 300.0)) {
            [x + 1.1 + 0.6 * noise, y - 0.4, z + 0.4 + 0.2 * noise]
        } else {
            [x + 0.01 * noise, y - 0.01 * noise, z + 0.004 * noise]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Lying flat, the board is under 1 g on every axis at rest and past it in every knocked
    // sample, whatever the noise; another pose moves both by its resting reading.
    #[test]
    fn the_knock_always_shows_and_the_pose_moves_the_board() {
        for i in 0..=20 {
            let noise = f64::from(i) / 10.0 - 1.0;
            let rest = World::at(10.0, noise, Pose::default()).accel_g;
            assert!(rest.iter().all(|a| a.abs() < 1.0), "{rest:?}");
            let knocked = Pose {
                knocked: true,
                ..Pose::default()
            };
            let jolt = World::at(10.0, noise, knocked).accel_g;
            assert!(jolt[2] > 1.0, "{jolt:?}");
            let length = jolt.iter().map(|a| a * a).sum::<f64>().sqrt();
            assert!(length > 1.3, "{jolt:?}");
            assert_eq!(World::at(151.0, noise, Pose::default()).accel_g, jolt);
            let tilted = Pose {
                rest_g: [0.0, 0.6, 0.8],
                knocked: false,
            };
            let [x, y, z] = World::at(10.0, noise, tilted).accel_g;
            assert!(x.abs() < 0.011 && (y - 0.6).abs() < 0.011 && (z - 0.8).abs() < 0.005);
        }
    }
}
