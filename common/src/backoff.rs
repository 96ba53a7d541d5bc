//! Jittered exponential backoff ("full jitter": a uniform delay between a small floor and a bound
//! that doubles per failed attempt up to `max`). Every reconnect and retry loop in weft uses this
//! one, so a flapping operator or API server is never hammered in a tight loop and many clients
//! that failed together do not retry together.

use std::time::Duration;

/// Delay bounds of a backoff. Attempts are counted by the caller (0 for the first retry).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// Bound of the first retry's delay (and twice the floor of every delay).
    pub min: Duration,
    /// Largest bound.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            min: Duration::from_millis(100),
            max: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// Backoff from `min` doubling up to `max`.
    pub const fn new(min: Duration, max: Duration) -> Self {
        Self { min, max }
    }

    /// The upper bound of the delay before attempt number `attempt` (0-based).
    pub fn bound(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.min.saturating_mul(factor).min(self.max).max(self.min)
    }

    /// A random delay in `[min/2, bound(attempt)]`.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.delay_with(attempt, rand::random::<f64>())
    }

    /// The delay for a given uniform sample `unit` in `[0, 1)` (deterministic, for tests).
    pub fn delay_with(&self, attempt: u32, unit: f64) -> Duration {
        let bound = self.bound(attempt);
        let floor = (self.min / 2).min(bound);
        let span = bound.saturating_sub(floor);
        floor + span.mul_f64(unit.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_and_stays_within_bounds() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        assert_eq!(b.bound(0), Duration::from_millis(100));
        assert_eq!(b.bound(1), Duration::from_millis(200));
        assert_eq!(b.bound(4), Duration::from_millis(1600));
        assert_eq!(b.bound(5), Duration::from_secs(2));
        assert_eq!(b.bound(u32::MAX), Duration::from_secs(2));
        for attempt in 0..40 {
            for _ in 0..20 {
                let d = b.delay(attempt);
                assert!(
                    d >= Duration::from_millis(50) && d <= b.bound(attempt),
                    "{d:?}"
                );
            }
        }
        assert_eq!(b.delay_with(3, 0.0), Duration::from_millis(50));
        assert_eq!(b.delay_with(3, 1.0), Duration::from_millis(800));
    }
}
