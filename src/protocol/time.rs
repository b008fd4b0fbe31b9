//! ISO-8601 UTC timestamps with milliseconds: `2024-01-01T12:00:00.000Z`.
//!
//! Every response carries one, so formatting must be nearly free. Like
//! nginx's cached date, [`TimestampCache`] keeps the formatted string: the
//! calendar part (chrono) is recomputed only when the second changes, the
//! three millisecond digits are patched when the millisecond changes, and a
//! call within the same millisecond is one comparison. The caller supplies
//! the time (sans-IO); the server reads the clock once per event-loop turn.

use chrono::{DateTime, Datelike, Timelike, Utc};

/// Length of a formatted timestamp.
pub const TIMESTAMP_LEN: usize = 24;

/// A per-thread cache of the current timestamp string.
#[derive(Debug, Clone)]
pub struct TimestampCache {
    /// Unix milliseconds the buffer holds; `u64::MAX` before first use.
    ms: u64,
    buf: [u8; TIMESTAMP_LEN],
}

impl Default for TimestampCache {
    fn default() -> Self {
        Self::new()
    }
}

impl TimestampCache {
    /// An empty cache.
    pub const fn new() -> Self {
        TimestampCache {
            ms: u64::MAX,
            buf: *b"1970-01-01T00:00:00.000Z",
        }
    }

    /// The timestamp for `unix_ms` milliseconds since the Unix epoch.
    #[inline]
    pub fn format(&mut self, unix_ms: u64) -> &str {
        if unix_ms != self.ms {
            self.refresh(unix_ms);
        }
        // The buffer only ever holds ASCII digits and punctuation.
        std::str::from_utf8(&self.buf).unwrap_or("1970-01-01T00:00:00.000Z")
    }

    #[cold]
    fn refresh(&mut self, unix_ms: u64) {
        let same_second = self.ms != u64::MAX && self.ms / 1000 == unix_ms / 1000;
        self.ms = unix_ms;
        if !same_second {
            let secs = (unix_ms / 1000) as i64;
            let dt = DateTime::<Utc>::from_timestamp(secs, 0).unwrap_or_default();
            let year = dt.year().clamp(0, 9999) as u32;
            put(&mut self.buf[0..4], year, 4);
            put(&mut self.buf[5..7], dt.month(), 2);
            put(&mut self.buf[8..10], dt.day(), 2);
            put(&mut self.buf[11..13], dt.hour(), 2);
            put(&mut self.buf[14..16], dt.minute(), 2);
            put(&mut self.buf[17..19], dt.second(), 2);
        }
        put(&mut self.buf[20..23], (unix_ms % 1000) as u32, 3);
    }
}

/// Writes `v` as exactly `width` decimal digits.
fn put(dst: &mut [u8], mut v: u32, width: usize) {
    for i in (0..width).rev() {
        dst[i] = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

/// Milliseconds since the Unix epoch, read from the system clock.
///
/// Not part of the sans-IO core's logic: callers read it once per batch.
pub fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_the_seed() {
        let mut c = TimestampCache::new();
        // 2024-01-01T12:00:00.000Z
        assert_eq!(c.format(1_704_110_400_000), "2024-01-01T12:00:00.000Z");
        assert_eq!(c.format(1_704_110_400_001), "2024-01-01T12:00:00.001Z");
        assert_eq!(c.format(1_704_110_400_999), "2024-01-01T12:00:00.999Z");
        assert_eq!(c.format(1_704_110_401_000), "2024-01-01T12:00:01.000Z");
        assert_eq!(c.format(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(c.format(951_782_400_123), "2000-02-29T00:00:00.123Z");
    }

    #[test]
    fn agrees_with_chrono_across_many_instants() {
        let mut c = TimestampCache::new();
        let mut ms: u64 = 1_600_000_000_000;
        for _ in 0..10_000 {
            ms += 7_919_113; // walk across seconds, days and months
            let want = DateTime::<Utc>::from_timestamp_millis(ms as i64)
                .unwrap()
                .format("%Y-%m-%dT%H:%M:%S%.3fZ")
                .to_string();
            assert_eq!(c.format(ms), want);
        }
    }
}
