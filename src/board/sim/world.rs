//! The physical values the simulated chips measure: a room that changes slowly.

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
