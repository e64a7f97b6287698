//! The shape of every retry schedule: the agent's reconnects to MongoDB and the forwarder's
//! resends to Kinesis or EventBridge.

use std::time::Duration;

use backon::ExponentialBuilder;

/// Delays doubling from `min` to `max`, each plus a random 0-100 % of itself (so up to twice
/// `max`), never giving up. The jitter is drawn afresh in every schedule: a fleet that lost its
/// database at once must not come back at once, in lockstep, at every try.
pub fn exponential(min: Duration, max: Duration) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(min)
        .with_max_delay(max)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
}

#[cfg(test)]
mod tests {
    use super::*;
    use backon::BackoffBuilder;

    // Two schedules differ: backon without its `std` feature seeds every one alike.
    #[test]
    fn each_schedule_has_its_own_jitter() {
        let schedule = || -> Vec<Duration> {
            let s = exponential(Duration::from_millis(500), Duration::from_secs(60));
            s.build().take(12).collect()
        };
        let (a, b) = (schedule(), schedule());
        assert_ne!(a, b);
        for d in a.iter().chain(&b) {
            assert!(*d >= Duration::from_millis(500) && *d <= Duration::from_secs(120));
        }
    }
}
