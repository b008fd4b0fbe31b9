//! The per-IP rate limit of the HTTP listener (`http_rate_limit`): a token
//! bucket per address, a second's worth deep.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

/// Addresses remembered before full buckets (idle for a second or more)
/// are dropped: a scan of many addresses cannot grow the table without
/// bound, and an address that has been quiet that long starts full anyway.
const MAX_TRACKED: usize = 10_000;

/// Token buckets by client address.
#[derive(Debug)]
pub(super) struct RateLimiter {
    /// Requests per second per address; 0 = unlimited.
    rate: f64,
    buckets: HashMap<IpAddr, (f64, Instant)>,
}

impl RateLimiter {
    /// `rate` requests per second per address (0: no limit).
    pub fn new(rate: u32) -> RateLimiter {
        RateLimiter {
            rate: f64::from(rate),
            buckets: HashMap::new(),
        }
    }

    /// Takes a token for `ip` at `now`; false when its bucket is empty.
    pub fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        if self.buckets.len() >= MAX_TRACKED && !self.buckets.contains_key(&ip) {
            let rate = self.rate;
            self.buckets.retain(|_, (tokens, at)| {
                *tokens + rate * now.duration_since(*at).as_secs_f64() < rate
            });
        }
        let (tokens, at) = self.buckets.entry(ip).or_insert((self.rate, now));
        *tokens = (*tokens + self.rate * now.duration_since(*at).as_secs_f64()).min(self.rate);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_second_worth_then_refill() {
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let t0 = Instant::now();
        let mut l = RateLimiter::new(5);
        assert_eq!((0..10).filter(|_| l.allow(ip, t0)).count(), 5);
        assert!(l.allow(other, t0), "addresses have their own buckets");
        assert!(!l.allow(ip, t0 + Duration::from_millis(100)));
        assert!(l.allow(ip, t0 + Duration::from_millis(300)));
        let mut off = RateLimiter::new(0);
        assert!((0..1000).all(|_| off.allow(ip, t0)));
    }
}
