//! The crate's one source of random numbers: no dependency, no `unsafe`.
//!
//! What ringcast needs randomness for is small: reconnection jitter, node
//! and connection ids, and the load generator's synthetic (but
//! reproducible) telemetry. None of it is security-sensitive, so a
//! xorshift generator seeded from std's per-process random hash keys is
//! enough. Not for secrets or tokens.

use std::hash::{BuildHasher, Hasher};

/// A fresh random number: std's per-process random SipHash keys (each
/// `RandomState` differs from the last) over the clock.
pub fn random_u64() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// A xorshift64 generator (Marsaglia's 13/7/17 triple): fast, tiny, and
/// reproducible from its seed. [`Rng::with_seed`] gives the same sequence
/// on every run (the load generator's telemetry content depends on it);
/// [`Rng::from_entropy`] a different one each time (jitter).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Stands in for a zero seed, the one state xorshift never leaves.
    const ZERO_SEED: u64 = 0x9e37_79b9_7f4a_7c15;

    /// A generator seeded with [`random_u64`].
    pub fn from_entropy() -> Rng {
        Rng::with_seed(random_u64())
    }

    /// A generator whose sequence is fixed by `seed` (0 is replaced by a
    /// fixed non-zero seed).
    pub fn with_seed(seed: u64) -> Rng {
        Rng(if seed == 0 { Self::ZERO_SEED } else { seed })
    }

    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// The next number as a float uniform in `[0, 1)` (its top 53 bits).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_are_in_range_and_vary() {
        let mut r = Rng::from_entropy();
        let v: Vec<f64> = (0..1000).map(|_| r.unit()).collect();
        assert!(v.iter().all(|x| (0.0..1.0).contains(x)));
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        assert!((0.4..0.6).contains(&mean), "{mean}");
    }

    #[test]
    fn a_seed_fixes_the_sequence() {
        // The load generator's telemetry is built from this sequence: a
        // change here changes the bytes every bench run sends.
        let mut r = Rng::with_seed(0x9e37_79b9_7f4a_7c15);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..100 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            assert_eq!(r.next_u64(), x);
        }
        // Zero would stick at zero.
        let mut z = Rng::with_seed(0);
        assert_ne!(z.next_u64(), 0);
    }

    #[test]
    fn entropy_differs_call_to_call() {
        assert_ne!(random_u64(), random_u64());
    }
}
