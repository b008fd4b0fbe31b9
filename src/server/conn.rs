//! One client connection's state on its shard.
//!
//! The byte path is behind one seam: input bytes go through [`Conn::decoder`]
//! into frames, and response frames are appended to [`Output`], which turns
//! them into send segments. TLS or per-frame compression would wrap exactly
//! these two places and nothing in the shard loop.

use crate::protocol::FrameDecoder;
use crate::uring::Segment;
use bytes::Bytes;
use std::collections::VecDeque;
use std::net::{IpAddr, TcpStream};
use std::os::fd::{AsRawFd, RawFd};

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Serving requests.
    Open,
    /// Flushing a final error (or shutdown notice) before closing; input is
    /// discarded. Past `deadline` (shard milliseconds) it is closed regardless.
    Draining { deadline: u64 },
    /// Our FIN is sent; input is read and dropped until the peer closes or
    /// the deadline passes, so the peer reads our last frame rather than a
    /// reset caused by unread input.
    Lingering { deadline: u64 },
    /// All operations cancelled; freed when the last completes.
    Closing,
}

/// Multishot receive state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Recv {
    /// A multishot receive is armed.
    Armed,
    /// Paused for backpressure: a cancel is in flight or it has ended.
    Paused,
    /// Ended and must not be re-armed (EOF, error, closing).
    Done,
}

/// Output waiting to be sent: reply bytes being appended, then sealed
/// segments in order.
#[derive(Debug, Default)]
pub(crate) struct Output {
    /// Replies produced since the last seal; appended in place.
    pub building: Vec<u8>,
    /// Sealed segments not yet handed to the kernel.
    pub queue: VecDeque<Segment>,
    /// Bytes in `queue`.
    pub queued: usize,
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

    /// Drops everything not yet handed to the kernel, returning owned
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

/// A connection.
#[derive(Debug)]
pub(crate) struct Conn {
    pub stream: TcpStream,
    pub gen: u32,
    /// "ip:port" of the peer, as the seed's client_id.
    pub client_id: Box<str>,
    pub ip: IpAddr,
    pub decoder: FrameDecoder,
    pub out: Output,
    /// Bytes in the send batch the kernel holds (0 when none).
    pub inflight: usize,
    pub send_inflight: bool,
    pub recv: Recv,
    /// A multishot receive is in the kernel (armed, until its final completion).
    pub recv_inflight: bool,
    /// Operations in flight that name this connection (recv, send,
    /// shutdown, cancel); the slot is freed only when this reaches zero.
    pub ops: u32,
    pub phase: Phase,
    /// Shard milliseconds of the last complete frame (or of the accept).
    pub last_active: u64,
    /// Passed authentication (or none is required).
    pub authed: bool,
    /// Counted in the shard's `connected` gauge and eligible for broadcasts.
    pub established: bool,
    /// Holds a per-IP slot to release on close.
    pub ip_slot: bool,
    /// In the shard's list of connections with replies to flush.
    pub dirty: bool,
    /// In the shard's round-robin list of connections with broadcasts to flush.
    pub push_dirty: bool,
    /// Reading paused because broadcast fan-out is behind (see shard.rs).
    pub fanout_paused: bool,
    pub bucket: Bucket,
}

impl Conn {
    pub fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    /// Output not yet acknowledged by the kernel, in flight included.
    #[inline]
    pub fn pending(&self) -> usize {
        self.out.len() + self.inflight
    }

    /// Whether requests are being served (not closing).
    #[inline]
    pub fn is_open(&self) -> bool {
        self.phase == Phase::Open
    }
}
