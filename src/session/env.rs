//! What every session on a shard shares: the session's scratch (parser,
//! buffer pools, codec contexts, the TLS plaintext buffer), the clock the
//! caller read, the settings, the shard's counters, and the [`Host`] the
//! sessions ask for everything beyond their connection.

use super::config::SessionConfig;
use super::counters::ShardCounters;
use super::host::Host;
use crate::io::SendBatch;
use crate::protocol::codec::{Compressor, Decompressor};
use crate::protocol::frame::BoundedPool;
use crate::protocol::{JsonParser, TimestampCache};
use std::sync::atomic::Ordering;

/// Largest spare buffer a shard keeps: a maximum-size frame (1 MiB)
/// straddling receive buffers, after Vec growth.
const POOL_MAX_CAPACITY: usize = 2 << 20;
/// What one pool may hold in all (a shard has two: replies, straddles), so
/// a burst of large messages does not pin memory afterwards.
const POOL_MAX_BYTES: usize = 32 << 20;
/// The shard's TLS plaintext buffer: one full TLS record (16 KiB) of
/// plaintext and then some, so rustls hands over a record per read.
const TLS_PLAIN_BUF: usize = 32 << 10;
/// Spare send batches kept (each keeps its segment array).
const SPARE_BATCHES: usize = 1024;

/// A shard's shared session environment: what every input of every
/// session on the shard takes. The caller sets `now_ms` and `now_mono_ms`
/// before each input (the shard: once per loop turn, from the clock it
/// reads; tests: to simulate time); the session reads no clock.
pub struct Env<'a, H> {
    /// The settings.
    pub config: SessionConfig,
    /// Which shard (for logs).
    pub shard: usize,
    /// The shard's counters (this shard is their only writer).
    pub counters: &'a ShardCounters,
    /// What the sessions ask of the server.
    pub host: H,
    pub(crate) parser: JsonParser,
    pub(crate) ts: TimestampCache,
    /// Wall-clock milliseconds since the Unix epoch (timestamps, rate limit).
    pub now_ms: u64,
    /// Monotonic milliseconds since the shard started (idle and deadlines).
    pub now_mono_ms: u64,
    /// Spare reply buffers.
    pub(crate) pool: BoundedPool,
    /// Spare straddle buffers for frames that cross receive chunks.
    pub(crate) straddle_pool: BoundedPool,
    /// Capacity the shard's partial frames hold (the budget
    /// `max_partial_bytes` bounds), mirrored in the counters' gauge.
    pub(crate) partial_bytes: usize,
    pub(crate) batches: Vec<SendBatch>,
    pub(crate) warn_budget: WarnBudget,
    /// Where TLS sessions decrypt into, to parse in place (one per shard:
    /// decrypted bytes are parsed before the next session's arrive).
    pub(crate) tls_plain: Vec<u8>,
    /// TLS handshakes in progress on this shard (capped by
    /// `tls_max_handshakes`).
    pub(crate) tls_handshakes: usize,
    /// Compresses replies.
    pub(crate) compressor: Compressor,
    /// Decompresses compressed requests.
    pub(crate) decompressor: Decompressor,
    /// Where a compressed request is decompressed, to parse in place (one
    /// per shard, like `tls_plain`). Its capacity counts against the
    /// partial-frame budget while held.
    pub(crate) inflate: Vec<u8>,
    /// Where replies are compressed before they replace the plain ones.
    pub(crate) deflate: Vec<u8>,
}

impl<'a, H: Host> Env<'a, H> {
    /// An environment for the sessions of shard `shard`, with `config`,
    /// writing `counters`, asking `host`; `tls` sizes the TLS plaintext
    /// buffer (only a shard with a TLS listener needs one).
    pub fn new(
        config: SessionConfig,
        shard: usize,
        counters: &'a ShardCounters,
        host: H,
        tls: bool,
    ) -> Env<'a, H> {
        Env {
            config,
            shard,
            counters,
            host,
            parser: JsonParser::new(),
            ts: TimestampCache::new(),
            now_ms: 0,
            now_mono_ms: 0,
            pool: BoundedPool::new(POOL_MAX_CAPACITY, POOL_MAX_BYTES),
            straddle_pool: BoundedPool::new(POOL_MAX_CAPACITY, POOL_MAX_BYTES),
            partial_bytes: 0,
            batches: Vec::new(),
            warn_budget: WarnBudget::default(),
            tls_plain: if tls {
                vec![0; TLS_PLAIN_BUF]
            } else {
                Vec::new()
            },
            tls_handshakes: 0,
            compressor: Compressor::new(),
            decompressor: Decompressor::new(),
            inflate: Vec::new(),
            deflate: Vec::new(),
        }
    }

    /// Bytes of buffer the shard's partial frames hold now.
    pub fn partial_bytes(&self) -> usize {
        self.partial_bytes
    }

    /// TLS handshakes in progress.
    pub fn tls_handshakes(&self) -> usize {
        self.tls_handshakes
    }

    /// Warnings held back by the per-second budget in a second that has
    /// ended (the caller's 1 s tick logs them).
    pub fn stale_warnings(&mut self) -> Option<u64> {
        let now = self.now_mono_ms;
        self.warn_budget.take_stale(now)
    }

    /// Records that a connection's straddle buffer went from `before` to
    /// `after` bytes of capacity.
    pub(crate) fn set_partial(&mut self, before: usize, after: usize) {
        if before != after {
            self.partial_bytes = self.partial_bytes - before + after;
            self.counters
                .partial_frame_bytes
                .store(self.partial_bytes as u64, Ordering::Relaxed);
        }
    }

    /// A batch to fill, reusing a spare one.
    pub(crate) fn batch(&mut self) -> SendBatch {
        self.batches.pop().unwrap_or_default()
    }

    /// Takes back an emptied batch (its buffers already recycled).
    pub(crate) fn spare_batch(&mut self, mut b: SendBatch) {
        let pool = &mut self.pool;
        b.clear(|v| drop(crate::protocol::frame::BufferPool::give(pool, v)));
        if self.batches.len() < SPARE_BATCHES {
            self.batches.push(b);
        }
    }
}

/// Connection-ending warnings allowed per shard per second.
pub(crate) const WARNINGS_PER_SEC: u32 = 20;

/// Lets through at most [`WARNINGS_PER_SEC`] warnings a second; the next
/// allowed line reports how many were held back.
#[derive(Debug, Default)]
pub(crate) struct WarnBudget {
    second: u64,
    used: u32,
    suppressed: u64,
}

impl WarnBudget {
    /// `Some(suppressed since the last allowed warning)` if one may be
    /// logged now.
    pub fn allow(&mut self, now_mono_ms: u64) -> Option<u64> {
        let second = now_mono_ms / 1000;
        if second != self.second {
            self.second = second;
            self.used = 0;
        }
        if self.used >= WARNINGS_PER_SEC {
            self.suppressed += 1;
            return None;
        }
        self.used += 1;
        Some(std::mem::take(&mut self.suppressed))
    }

    /// The warnings held back in a second that has ended (so that a flood
    /// which stops still gets its count logged, from the 1 s tick).
    pub fn take_stale(&mut self, now_mono_ms: u64) -> Option<u64> {
        if self.suppressed > 0 && now_mono_ms / 1000 != self.second {
            self.used = 0;
            self.second = now_mono_ms / 1000;
            return Some(std::mem::take(&mut self.suppressed));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::{WarnBudget, WARNINGS_PER_SEC};

    #[test]
    fn caps_a_second_and_reports_what_it_held_back() {
        let mut w = WarnBudget::default();
        for _ in 0..WARNINGS_PER_SEC {
            assert_eq!(w.allow(5_000), Some(0));
        }
        assert_eq!(w.allow(5_100), None);
        assert_eq!(w.allow(5_999), None);
        // Still the same second: nothing stale to report.
        assert_eq!(w.take_stale(5_999), None);
        // The next allowed warning carries the count ...
        assert_eq!(w.allow(6_000), Some(2));
        // ... or, if the flood stopped, the tick reports it.
        for _ in 0..WARNINGS_PER_SEC {
            w.allow(7_000);
        }
        w.allow(7_001);
        assert_eq!(w.take_stale(8_000), Some(1));
        assert_eq!(w.take_stale(9_000), None);
        assert_eq!(w.allow(9_000), Some(0));
    }
}
