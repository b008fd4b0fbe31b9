//! Exponential backoff with jitter, for every retry loop in the crate
//! (the client's reconnection, the cluster's reconnection to Redis).
//!
//! The `n`-th wait (from 1) is `min(initial * multiplier^(n-1), max)`,
//! less a random share of up to `jitter` of it: with `jitter = 0.5` it lies
//! between half and all of it. The jitter spreads out the many clients (or
//! nodes) that one server restart cut at the same instant, so that they do
//! not all come back in the same instant too.

use crate::random::Rng;
use std::time::Duration;

/// A backoff schedule. Pure: the caller keeps the attempt count and
/// supplies the randomness.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// The first wait.
    pub initial: Duration,
    /// Cap on any wait.
    pub max: Duration,
    /// Growth factor from one wait to the next (below 1 counts as 1).
    pub multiplier: f64,
    /// Share of each wait, 0 to 1, that may randomly be taken off.
    pub jitter: f64,
}

impl Backoff {
    /// The wait before attempt `attempt` (from 1), without jitter.
    pub fn wait(&self, attempt: u32) -> Duration {
        // Capped at 64 doublings: past that the cap has long applied, and
        // powi's argument stays small.
        let exp = self
            .multiplier
            .max(1.0)
            .powi(attempt.saturating_sub(1).min(64) as i32);
        let secs = self.initial.as_secs_f64() * exp;
        let max = self.max.as_secs_f64();
        Duration::from_secs_f64(if secs.is_finite() { secs.min(max) } else { max })
    }

    /// The wait before attempt `attempt`, less `jitter` times `unit` (a
    /// number in `[0, 1)`, clamped to it) of it.
    pub fn wait_with_jitter(&self, attempt: u32, unit: f64) -> Duration {
        let j = self.jitter.clamp(0.0, 1.0) * unit.clamp(0.0, 1.0);
        self.wait(attempt).mul_f64(1.0 - j)
    }

    /// The wait before attempt `attempt`, jittered from `rng`.
    pub fn next_wait(&self, attempt: u32, rng: &mut Rng) -> Duration {
        self.wait_with_jitter(attempt, rng.unit())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b() -> Backoff {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
            multiplier: 2.0,
            jitter: 0.5,
        }
    }

    #[test]
    fn waits_grow_and_cap() {
        let b = b();
        assert_eq!(b.wait(1), Duration::from_millis(100));
        assert_eq!(b.wait(2), Duration::from_millis(200));
        assert_eq!(b.wait(4), Duration::from_millis(800));
        assert_eq!(b.wait(10), Duration::from_secs(5));
        assert_eq!(b.wait(u32::MAX), Duration::from_secs(5));
        // Attempt 0 is taken as the first.
        assert_eq!(b.wait(0), Duration::from_millis(100));
        // A multiplier below one does not shrink the waits.
        let flat = Backoff {
            multiplier: 0.5,
            ..b
        };
        assert_eq!(flat.wait(5), Duration::from_millis(100));
    }

    #[test]
    fn jitter_takes_off_at_most_its_share() {
        let b = b();
        assert_eq!(b.wait_with_jitter(1, 0.0), Duration::from_millis(100));
        assert!(b.wait_with_jitter(1, 0.999) >= Duration::from_millis(50));
        assert_eq!(b.wait_with_jitter(1, 7.0), Duration::from_millis(50));
        let none = Backoff { jitter: 0.0, ..b };
        assert_eq!(none.wait_with_jitter(3, 0.9), Duration::from_millis(400));
        let mut rng = Rng::with_seed(42);
        for attempt in 1..20 {
            let w = b.next_wait(attempt, &mut rng);
            assert!(w <= b.wait(attempt) && w >= b.wait(attempt) / 2, "{w:?}");
        }
    }
}
