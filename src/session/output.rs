//! A session's outgoing bytes, and its rate-limit bucket.

use crate::io::{Segment, SendBatch};
use crate::protocol::frame::{BoundedPool, BufferPool};
use bytes::Bytes;
use std::collections::VecDeque;

/// Output waiting to be sent: reply bytes being appended, then sealed
/// segments in order.
#[derive(Debug, Default)]
pub(crate) struct Output {
    /// Replies produced since the last seal; appended in place.
    pub building: Vec<u8>,
    /// Sealed segments not yet handed to the backend.
    queue: VecDeque<Segment>,
    /// Bytes in `queue`.
    queued: usize,
}

impl Output {
    /// Moves the reply bytes built so far into the queue.
    #[inline]
    pub fn seal(&mut self) {
        if !self.building.is_empty() {
            let b = std::mem::take(&mut self.building);
            self.queued += b.len();
            self.queue.push_back(Segment::Owned(b));
        }
    }

    /// Queues a shared frame after everything before it.
    #[inline]
    pub fn push_shared(&mut self, frame: Bytes) {
        self.seal();
        self.queued += frame.len();
        self.queue.push_back(Segment::Shared(frame));
    }

    /// Bytes waiting, not counting a send in flight.
    #[inline]
    pub fn len(&self) -> usize {
        self.queued + self.building.len()
    }

    /// Seals, then moves segments into `batch` up to its segment limit.
    pub fn fill(&mut self, batch: &mut SendBatch) {
        self.seal();
        while batch.segments.len() < crate::io::MAX_SEND_SEGMENTS {
            let Some(seg) = self.queue.pop_front() else {
                break;
            };
            self.queued -= seg.as_slice().len();
            batch.segments.push_back(seg);
        }
    }

    /// Drops everything not yet handed to the backend, returning owned
    /// buffers through `recycle`.
    pub fn discard(&mut self, mut recycle: impl FnMut(Vec<u8>)) {
        for s in self.queue.drain(..) {
            if let Segment::Owned(v) = s {
                recycle(v);
            }
        }
        self.queued = 0;
        self.building.clear();
    }
}

/// A token bucket for the per-connection rate limit.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bucket {
    tokens: f64,
    last_ms: u64,
}

impl Bucket {
    pub fn full(burst: f64, now_ms: u64) -> Bucket {
        Bucket {
            tokens: burst,
            last_ms: now_ms,
        }
    }

    /// Takes one token if there is one.
    #[inline]
    pub fn take(&mut self, rate: f64, burst: f64, now_ms: u64) -> bool {
        if now_ms > self.last_ms {
            self.tokens = (self.tokens + (now_ms - self.last_ms) as f64 * rate / 1000.0).min(burst);
            self.last_ms = now_ms;
        }
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A reply buffer starts this large (one receive buffer of small replies).
pub(crate) const REPLY_BUF_CAPACITY: usize = 16 << 10;

/// The reply buffer to append to, taken from the pool when empty.
pub(crate) fn reply_buf<'o>(pool: &mut BoundedPool, out: &'o mut Output) -> &'o mut Vec<u8> {
    if out.building.capacity() == 0 {
        out.building = pool
            .take()
            .unwrap_or_else(|| Vec::with_capacity(REPLY_BUF_CAPACITY));
    }
    &mut out.building
}
