//! One shard's counters: written by the sessions of that shard (and the
//! shard's loop and router), read by anyone with relaxed loads and summed
//! over shards on read (see `server::stats::Totals`).
//!
//! Each shard writes only its own [`ShardCounters`] (the caller keeps them
//! cache-line padded, so shards never share a line). A single writer lets
//! [`bump`] avoid locked instructions.

use crate::protocol::{ErrorCode, RequestKind};
use crossbeam_utils::CachePadded;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Adds `n` to a counter that only the calling shard writes: a plain load
/// and store, no `lock` prefix, still tear-free for readers.
#[inline]
pub fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Relaxed).wrapping_add(n), Relaxed);
}

/// Takes one from a gauge that only the calling shard writes (never below
/// zero), the way [`bump`] adds.
#[inline]
pub fn unbump(c: &AtomicU64) {
    c.store(c.load(Relaxed).saturating_sub(1), Relaxed);
}

/// Counters of one shard.
#[derive(Debug, Default)]
pub struct ShardCounters {
    /// Clients connected now (established: accepted, not server_full).
    pub connected: AtomicU64,
    /// Connections accepted since start.
    pub total_connections: AtomicU64,
    /// Requests handled, by [`RequestKind::index`].
    pub messages: [AtomicU64; RequestKind::COUNT],
    /// Bytes read.
    pub bytes_received: AtomicU64,
    /// Bytes written.
    pub bytes_sent: AtomicU64,
    /// Broadcast frames queued to recipients on this shard.
    pub broadcasts_delivered: AtomicU64,
    /// `channel_message` frames queued to subscribers on this shard.
    pub channel_deliveries: AtomicU64,
    /// Channels with at least one subscriber on this shard (a gauge).
    pub channels: AtomicU64,
    /// Subscriptions held by this shard's connections (a gauge).
    pub subscriptions: AtomicU64,
    /// Slow consumers cut.
    pub slow_consumer_disconnects: AtomicU64,
    /// Error frames sent, by position in [`ErrorCode::ALL`].
    pub errors: [AtomicU64; ErrorCode::COUNT],
    /// Requests in the last whole second (set by the shard's 1 s tick).
    pub messages_last_second: AtomicU64,
    /// Bytes of buffer (capacity) held now by partially received frames
    /// (a gauge, stored by the shard after each change).
    pub partial_frame_bytes: AtomicU64,
    /// Request handling time (recorded only when the metrics endpoint is on).
    pub request_duration: DurationHistogram,
    /// Failed TLS handshakes, by position in
    /// [`HandshakeFailure::ALL`](super::tls::HandshakeFailure::ALL).
    pub tls_handshake_failures: [AtomicU64; super::tls::HandshakeFailure::COUNT],
    /// Refused `auth` and `refresh` tokens, by position in
    /// [`TokenRefusal::ALL`](super::grant::TokenRefusal::ALL).
    pub auth_failures: [AtomicU64; super::grant::TokenRefusal::COUNT],
    /// Negotiated compression.
    pub compression: CompressionCounters,
    /// Other shards woken to drain their mailboxes, by path
    /// ([`WAKE_MSG_RING`], [`WAKE_EVENTFD`]).
    pub wakeups: [AtomicU64; 2],
}

/// [`ShardCounters::wakeups`]: a `MSG_RING` from this shard's ring.
pub const WAKE_MSG_RING: usize = 0;
/// [`ShardCounters::wakeups`]: an eventfd write.
pub const WAKE_EVENTFD: usize = 1;

/// What negotiated compression did on one shard. The shard is the only
/// writer of every field (the backplane reader counts its compressions in
/// a counter of its own, `Shared::remote_compressions`, added on read).
#[derive(Debug, Default)]
pub struct CompressionCounters {
    /// Connections that negotiated each codec, by
    /// [`Codec::index`](crate::protocol::codec::Codec::index) (a gauge).
    pub connections: [AtomicU64; crate::protocol::codec::Codec::COUNT],
    /// Compressed frames received.
    pub frames_in: AtomicU64,
    /// Their payload bytes as received (compressed).
    pub bytes_in_wire: AtomicU64,
    /// Their payload bytes after decompression.
    pub bytes_in_plain: AtomicU64,
    /// Compressed frames queued to clients (a shared broadcast counts once
    /// per recipient).
    pub frames_out: AtomicU64,
    /// Their payload bytes before compression.
    pub bytes_out_plain: AtomicU64,
    /// Their payload bytes compressed, as sent.
    pub bytes_out_wire: AtomicU64,
    /// Compression operations run (a broadcast to any number of clients of
    /// one codec is one).
    pub compressions: AtomicU64,
}

impl CompressionCounters {
    /// A compressed frame queued to a client: `plain` payload bytes sent as
    /// `wire` (by the shard that owns these counters).
    pub(crate) fn frame_out(&self, plain: usize, wire: usize) {
        bump(&self.frames_out, 1);
        bump(&self.bytes_out_plain, plain as u64);
        bump(&self.bytes_out_wire, wire as u64);
    }
}

impl ShardCounters {
    /// Total requests handled by this shard.
    pub fn total_messages(&self) -> u64 {
        self.messages.iter().map(|m| m.load(Relaxed)).sum()
    }

    /// Counts one error frame.
    #[inline]
    pub fn error(&self, code: ErrorCode) {
        bump(&self.errors[code.index()], 1);
    }

    /// Counts one request.
    #[inline]
    pub fn message(&self, kind: RequestKind) {
        bump(&self.messages[kind.index()], 1);
    }
}

/// Upper bound of the first request-duration bucket, in nanoseconds; each
/// further bucket doubles it.
pub const DURATION_BASE_NS: u64 = 250;
/// Finite request-duration buckets: 250 ns, 500 ns, 1 µs … 16.384 ms.
pub const DURATION_BOUNDS: usize = 17;

/// A fixed-bucket histogram of request handling times, written only by its
/// shard (with [`bump`]) and read by the metrics endpoint.
///
/// Bucket `i < DURATION_BOUNDS` counts durations in
/// `(DURATION_BASE_NS·2^(i-1), DURATION_BASE_NS·2^i]` (bucket 0 everything up
/// to the base); the last bucket counts the rest. The count is the sum of
/// the buckets, so the hot path writes two words per receive chunk.
#[derive(Debug, Default)]
pub struct DurationHistogram {
    /// Per-bucket (not cumulative) counts; the last one is the overflow.
    pub buckets: [AtomicU64; DURATION_BOUNDS + 1],
    /// Sum of the recorded durations, in nanoseconds.
    pub sum_ns: AtomicU64,
}

impl DurationHistogram {
    /// The bucket a duration of `ns` nanoseconds falls in.
    #[inline]
    pub fn bucket_index(ns: u64) -> usize {
        // For ns in (B·2^(k-1), B·2^k], (ns-1)/B lies in [2^(k-1), 2^k - 1],
        // whose bit length is k; ns <= B gives 0.
        let q = ns.saturating_sub(1) / DURATION_BASE_NS;
        ((u64::BITS - q.leading_zeros()) as usize).min(DURATION_BOUNDS)
    }

    /// Upper bound of finite bucket `i`, in seconds.
    pub fn upper_bound_seconds(i: usize) -> f64 {
        (DURATION_BASE_NS << i) as f64 / 1e9
    }

    /// Records `n` requests handled together in `total_ns` nanoseconds
    /// (single writer): each counts in the bucket of their average, the sum
    /// gains the exact total. With `n == 1` that is the request's own time.
    #[inline]
    pub fn record_batch(&self, total_ns: u64, n: u64) {
        if n == 0 {
            return;
        }
        bump(&self.buckets[Self::bucket_index(total_ns / n)], n);
        bump(&self.sum_ns, total_ns);
    }

    /// Reads the buckets and the sum (relaxed; a scrape during traffic may
    /// see the sum a request ahead of or behind the buckets).
    pub fn read(&self) -> ([u64; DURATION_BOUNDS + 1], u64) {
        let b = std::array::from_fn(|i| self.buckets[i].load(Relaxed));
        (b, self.sum_ns.load(Relaxed))
    }
}

/// [`CompressionCounters`] summed over shards: the very shape `get_stats`
/// writes, so it is passed there as it is.
pub type CompressionTotals = crate::protocol::stats::CompressionReport;

impl CompressionTotals {
    pub(crate) fn add(&mut self, c: &CompressionCounters) {
        for (a, b) in self.connections.iter_mut().zip(&c.connections) {
            *a += b.load(Relaxed);
        }
        self.frames_in += c.frames_in.load(Relaxed);
        self.bytes_in_wire += c.bytes_in_wire.load(Relaxed);
        self.bytes_in_plain += c.bytes_in_plain.load(Relaxed);
        self.frames_out += c.frames_out.load(Relaxed);
        self.bytes_out_plain += c.bytes_out_plain.load(Relaxed);
        self.bytes_out_wire += c.bytes_out_wire.load(Relaxed);
        self.compressions += c.compressions.load(Relaxed);
    }
}

/// Every shard's counters.
pub type Counters = Box<[CachePadded<ShardCounters>]>;

/// Totals over all shards at one moment (each counter read once; shards keep
/// running meanwhile, so totals are consistent to within a loop turn).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    /// Sum of connected clients.
    pub connected: u64,
    /// Sum of accepted connections.
    pub total_connections: u64,
    /// Requests by kind.
    pub messages: [u64; RequestKind::COUNT],
    /// Bytes read.
    pub bytes_received: u64,
    /// Bytes written.
    pub bytes_sent: u64,
    /// Broadcast deliveries.
    pub broadcasts_delivered: u64,
    /// Channel message deliveries.
    pub channel_deliveries: u64,
    /// Channels with subscribers, summed over shards (a channel with
    /// subscribers on two shards counts twice).
    pub channels: u64,
    /// Subscriptions held.
    pub subscriptions: u64,
    /// Slow consumers cut.
    pub slow_consumer_disconnects: u64,
    /// Error frames by code.
    pub errors: [u64; ErrorCode::COUNT],
    /// Requests in the last second.
    pub messages_per_second: u64,
    /// Buffer held by partially received frames.
    pub partial_frame_bytes: u64,
    /// Failed TLS handshakes by reason.
    pub tls_handshake_failures: [u64; super::tls::HandshakeFailure::COUNT],
    /// Refused tokens by reason.
    pub auth_failures: [u64; super::grant::TokenRefusal::COUNT],
    /// Negotiated compression.
    pub compression: CompressionTotals,
    /// Cross-shard wake-ups by path ([`WAKE_MSG_RING`], [`WAKE_EVENTFD`]).
    pub wakeups: [u64; 2],
}

impl Totals {
    /// Sums every shard's counters; `per_shard` receives each shard's
    /// connected count (cleared first).
    pub fn read(counters: &[CachePadded<ShardCounters>], per_shard: &mut Vec<u64>) -> Totals {
        let mut t = Totals::default();
        per_shard.clear();
        for c in counters {
            let conn = c.connected.load(Relaxed);
            per_shard.push(conn);
            t.connected += conn;
            t.total_connections += c.total_connections.load(Relaxed);
            for (a, b) in t.messages.iter_mut().zip(&c.messages) {
                *a += b.load(Relaxed);
            }
            t.bytes_received += c.bytes_received.load(Relaxed);
            t.bytes_sent += c.bytes_sent.load(Relaxed);
            t.broadcasts_delivered += c.broadcasts_delivered.load(Relaxed);
            t.channel_deliveries += c.channel_deliveries.load(Relaxed);
            t.channels += c.channels.load(Relaxed);
            t.subscriptions += c.subscriptions.load(Relaxed);
            t.slow_consumer_disconnects += c.slow_consumer_disconnects.load(Relaxed);
            for (a, b) in t.errors.iter_mut().zip(&c.errors) {
                *a += b.load(Relaxed);
            }
            t.messages_per_second += c.messages_last_second.load(Relaxed);
            t.partial_frame_bytes += c.partial_frame_bytes.load(Relaxed);
            for (a, b) in t.wakeups.iter_mut().zip(&c.wakeups) {
                *a += b.load(Relaxed);
            }
            for (a, b) in t
                .tls_handshake_failures
                .iter_mut()
                .zip(&c.tls_handshake_failures)
            {
                *a += b.load(Relaxed);
            }
            for (a, b) in t.auth_failures.iter_mut().zip(&c.auth_failures) {
                *a += b.load(Relaxed);
            }
            t.compression.add(&c.compression);
        }
        t
    }

    /// Total requests.
    pub fn total_messages(&self) -> u64 {
        self.messages.iter().sum()
    }

    /// Requests of one kind.
    pub fn messages_of(&self, kind: RequestKind) -> u64 {
        self.messages[kind.index()]
    }

    /// Total error frames.
    pub fn protocol_errors(&self) -> u64 {
        self.errors.iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duration_buckets_have_inclusive_upper_bounds() {
        assert_eq!(DurationHistogram::bucket_index(0), 0);
        assert_eq!(DurationHistogram::bucket_index(250), 0);
        assert_eq!(DurationHistogram::bucket_index(251), 1);
        assert_eq!(DurationHistogram::bucket_index(500), 1);
        assert_eq!(DurationHistogram::bucket_index(501), 2);
        assert_eq!(DurationHistogram::bucket_index(1_000), 2);
        for i in 0..DURATION_BOUNDS {
            let bound = DURATION_BASE_NS << i;
            assert_eq!(DurationHistogram::bucket_index(bound), i, "at {bound} ns");
            assert_eq!(
                DurationHistogram::bucket_index(bound + 1),
                i + 1,
                "past {bound} ns"
            );
        }
        assert_eq!(DurationHistogram::bucket_index(u64::MAX), DURATION_BOUNDS);
        assert_eq!(DurationHistogram::upper_bound_seconds(2), 1e-6);
        assert_eq!(
            DurationHistogram::upper_bound_seconds(DURATION_BOUNDS - 1),
            0.016384
        );
    }

    #[test]
    fn record_counts_and_sums() {
        let h = DurationHistogram::default();
        h.record_batch(100, 1);
        h.record_batch(700, 1);
        h.record_batch(1 << 40, 1);
        // Four requests in 3 µs: four in the (500 ns, 1 µs] bucket.
        h.record_batch(3_000, 4);
        h.record_batch(5_000, 0);
        let (b, sum) = h.read();
        assert_eq!(b[0], 1);
        assert_eq!(b[2], 1 + 4);
        assert_eq!(b[DURATION_BOUNDS], 1);
        assert_eq!(b.iter().sum::<u64>(), 7);
        assert_eq!(sum, 100 + 700 + (1 << 40) + 3_000);
    }
}
