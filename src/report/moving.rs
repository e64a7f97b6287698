//! `isMoving`: how a reading's acceleration says whether the board was moving
//! (`--moving-rule`). The original agent's rule is the default; the magnitude rule is offered
//! beside it, never in its place.

use super::Acceleration;

/// `--moving-rule magnitude`'s threshold, when none is given: how far from 1 g the
/// acceleration's length may be before the board counts as moving.
///
/// What a board at rest reads differs from 1 g by the LSM9DS1's zero-g offset far more than
/// by its noise, so the offset sets the threshold:
/// - Noise, at the agent's setting (+-8 g, 0.244 mg/LSB; 119 Hz, whose automatic anti-aliasing
///   bandwidth is 50 Hz): the datasheet gives no figure for the accelerometer; the 200 ug/sqrt(Hz)
///   quoted for the part elsewhere (UNCONFIRMED) makes about 2 mg RMS, so even a six-sigma
///   sample is some 12 mg.
/// - Offset: LA_TyOff is +-90 mg at +-8 g (typical, after soldering, which the datasheet
///   defines as one standard deviation across parts). Its part along gravity moves the resting
///   length by about as much, by a different amount in each orientation.
///
/// 0.25 g is 2.8 of those deviations: about one board in two hundred would rest outside it,
/// while a jolt, a knock or a drop (free fall reads 0 g) passes it. A board whose resting
/// length is known to be nearer 1 g can be given a smaller threshold (`magnitude:0.1`).
pub const DEFAULT_MOVING_THRESHOLD_G: f64 = 0.25;

/// The largest threshold `magnitude:G` takes: the accelerometer's range is +-8 g.
const MAX_MOVING_THRESHOLD_G: f64 = 8.0;

/// How `isMoving` is decided from a reading's acceleration (`--moving-rule`). Chosen once at
/// start; each report carries it, so every form of the report says the same.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum MovingRule {
    /// The original agent's rule, the default: moving when any axis is below -1 g or above
    /// +1 g. A board lying flat reads z about +1 g, so noise alone can set it, and a board
    /// mounted at an angle can be pushed hard without any axis passing 1 g.
    #[default]
    Axis,
    /// Moving when the acceleration's length differs from 1 g by more than `threshold_g`,
    /// whichever way the board lies.
    Magnitude {
        /// In g, above 0 ([`DEFAULT_MOVING_THRESHOLD_G`] unless given).
        threshold_g: f64,
    },
}

impl MovingRule {
    /// Whether a board reading `a` is moving by this rule. A reading that is not a number
    /// counts as moving by either rule, where the original's comparisons would say not: no
    /// working sensor gives one, so it is flagged rather than passed over.
    pub fn is_moving(self, a: &Acceleration) -> bool {
        match self {
            MovingRule::Axis => [a.x_g, a.y_g, a.z_g]
                .iter()
                .any(|v| !(-1.0..=1.0).contains(v)),
            MovingRule::Magnitude { threshold_g } => {
                let off = ((a.x_g * a.x_g + a.y_g * a.y_g + a.z_g * a.z_g).sqrt() - 1.0).abs();
                off.is_nan() || off > threshold_g
            }
        }
    }
}

impl std::fmt::Display for MovingRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MovingRule::Axis => f.write_str("axis"),
            MovingRule::Magnitude { threshold_g } => write!(f, "magnitude:{threshold_g}"),
        }
    }
}

impl std::str::FromStr for MovingRule {
    type Err = String;

    /// `axis`, `magnitude`, or `magnitude:G` with a threshold in g (`magnitude:0.1`, or
    /// `magnitude:0.1g`).
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (name, threshold) = match s.split_once(':') {
            Some((name, threshold)) => (name, Some(threshold)),
            None => (s, None),
        };
        match (name.to_ascii_lowercase().as_str(), threshold) {
            ("axis", None) => Ok(MovingRule::Axis),
            ("magnitude", None) => Ok(MovingRule::Magnitude {
                threshold_g: DEFAULT_MOVING_THRESHOLD_G,
            }),
            ("magnitude", Some(t)) => {
                let t = t.trim();
                let number = t.strip_suffix(['g', 'G']).unwrap_or(t).trim();
                match number.parse::<f64>() {
                    Ok(g) if g > 0.0 && g < MAX_MOVING_THRESHOLD_G => {
                        Ok(MovingRule::Magnitude { threshold_g: g })
                    }
                    _ => Err(format!(
                        "{t:?} is not a threshold: give g above 0 and below \
                         {MAX_MOVING_THRESHOLD_G}, as in magnitude:0.1"
                    )),
                }
            }
            _ => Err(format!(
                "unknown isMoving rule {s:?}: use axis, magnitude or magnitude:G (e.g. magnitude:0.1)"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accel(x_g: f64, y_g: f64, z_g: f64) -> Acceleration {
        Acceleration { x_g, y_g, z_g }
    }

    const MAGNITUDE: MovingRule = MovingRule::Magnitude {
        threshold_g: DEFAULT_MOVING_THRESHOLD_G,
    };

    // The axis rule is the original one: strictly outside [-1, 1] on any axis.
    #[test]
    fn axis_rule_uses_the_one_g_bounds() {
        let axis = |x, y, z| MovingRule::Axis.is_moving(&accel(x, y, z));
        assert!(!axis(0.0, 0.0, 1.0));
        assert!(!axis(-1.0, 1.0, -1.0));
        assert!(axis(0.0, 0.0, 1.0001));
        assert!(axis(-1.2, 0.0, 0.9));
        assert!(axis(0.0, 1.5, 0.0));
        assert!(axis(0.0, 0.0, f64::NAN));
        assert_eq!(MovingRule::default(), MovingRule::Axis);
    }

    // The magnitude rule: moving when the length is more than the threshold from 1 g, either
    // way; a length exactly at the threshold is at rest (0.75, 1.25 and their squares are exact).
    #[test]
    fn magnitude_rule_edges() {
        let at =
            |threshold_g, x, y, z| MovingRule::Magnitude { threshold_g }.is_moving(&accel(x, y, z));
        assert_eq!(DEFAULT_MOVING_THRESHOLD_G, 0.25);
        assert!(!at(0.25, 0.75, 0.0, 1.0)); // |a| = 1.25
        assert!(!at(0.25, 0.0, 0.0, 1.25));
        assert!(!at(0.25, 0.0, 0.0, -0.75));
        assert!(at(0.25, 0.0, 0.0, 1.250_001));
        assert!(at(0.25, 0.0, 0.0, 0.749_999));
        assert!(at(0.2, 0.75, 0.0, 1.0));
        assert!(!at(0.1, 0.0, 0.0, 1.0));
        // Free fall reads 0 g.
        assert!(at(0.25, 0.0, 0.0, 0.0));
        assert!(at(0.25, f64::NAN, 0.0, 1.0));
    }

    // Where the two rules differ: at rest flat reading a hair over 1 g, on its side, upside
    // down, and pushed while tilted.
    #[test]
    fn magnitude_rule_works_in_any_orientation() {
        let both = |x, y, z| {
            let a = accel(x, y, z);
            (MovingRule::Axis.is_moving(&a), MAGNITUDE.is_moving(&a))
        };
        // Flat, z a little over 1 g: noise (or the zero-g offset) sets the original flag.
        assert_eq!(both(0.01, -0.02, 1.004), (true, false));
        // On its side, upside down, tilted 45 degrees: at rest by both.
        assert_eq!(both(0.0, -0.99, 0.01), (false, false));
        assert_eq!(both(0.0, 0.0, -0.98), (false, false));
        let half = std::f64::consts::FRAC_1_SQRT_2;
        assert_eq!(both(0.0, half, half), (false, false));
        // Tilted 45 degrees and pushed by 0.4 g: no axis reaches 1 g.
        assert_eq!(both(0.0, 0.98, 0.98), (false, true));
        // A jolt sideways while flat: both see it.
        assert_eq!(both(1.1, -0.4, 1.3), (true, true));
    }

    // The option's values parse once into the rule, and its name prints back the same way.
    #[test]
    fn moving_rule_parses() {
        let parse = |s: &str| s.parse::<MovingRule>();
        assert_eq!(parse("axis").unwrap(), MovingRule::Axis);
        assert_eq!(parse("magnitude").unwrap(), MAGNITUDE);
        assert_eq!(
            parse(" Magnitude:0.1g ").unwrap(),
            MovingRule::Magnitude { threshold_g: 0.1 }
        );
        assert_eq!(
            parse("magnitude:7.5").unwrap(),
            MovingRule::Magnitude { threshold_g: 7.5 }
        );
        for rule in [
            MovingRule::Axis,
            MAGNITUDE,
            parse("magnitude:0.05").unwrap(),
        ] {
            assert_eq!(parse(&rule.to_string()).unwrap(), rule);
        }
        for bad in [
            "magnitude:0",
            "magnitude:-0.1",
            "magnitude:8",
            "magnitude:NaN",
            "magnitude:inf",
            "magnitude:",
            "magnitude:0.1mg",
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains("magnitude:0.1"), "{bad}: {e}");
        }
        for bad in ["", "axis:0.1", "speed", "magnitudes"] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains("use axis, magnitude"), "{bad}: {e}");
        }
    }
}
