//! Cross-shard mailboxes for broadcasts.
//!
//! Each shard has one inbound lock-free queue (crossbeam's SegQueue: MPSC
//! use of an MPMC queue; FIFO per producer, so one sender's broadcasts
//! reach every recipient in the order sent). A producer pushes the frame,
//! already serialised once into a shared `Bytes`, then wakes the target at
//! most once per batch: the `notified` flag collapses wake-ups until the
//! target has drained its queue.

use super::stats::bump;
use super::Shared;
use crate::protocol::codec::{Codec, Compressor};
use bytes::Bytes;
use crossbeam_queue::SegQueue;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::Arc;

/// A frame for a shard's clients: a `broadcast_message` for every
/// established client, or a `channel_message` for the channel's
/// subscribers. Cloning it is a few refcount increments.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The frame, serialised once.
    pub frame: Bytes,
    /// `None` for a broadcast; the channel for a publish.
    pub channel: Option<Arc<str>>,
    /// The frame compressed, by [`Codec::index`]: made once, where the
    /// delivery is published, for each codec some connection negotiated
    /// (see [`Delivery::pack`]). `None`: that codec's clients get `frame`.
    pub packed: [Option<Bytes>; Codec::COUNT],
    /// Messages in `frame`: 1, or more for a run of broadcasts gathered
    /// into one (see [`Delivery::gather`]).
    pub frames: u64,
}

/// Broadcasts up to this size (plain, not compressed) are gathered, per
/// shard and loop turn, into one frame run per sender (see
/// [`Delivery::gather`]).
pub const GATHER_MAX: usize = 2048;

impl Delivery {
    /// A delivery of `frame`, not compressed yet.
    pub fn new(frame: Bytes, channel: Option<Arc<str>>) -> Delivery {
        Delivery {
            frame,
            channel,
            packed: [None, None],
            frames: 1,
        }
    }

    /// Whether [`Delivery::gather`] may take this one: a small broadcast
    /// with no compressed frame (those go one by one, as they are shared).
    pub fn gatherable(&self) -> bool {
        self.channel.is_none()
            && self.frame.len() <= GATHER_MAX
            && self.packed.iter().all(Option::is_none)
    }

    /// One delivery carrying `parts` (gatherable broadcasts, in order) as
    /// one run of frames: each recipient then gets one queued segment, one
    /// reference count and one iovec for the run instead of one per
    /// broadcast; the frames on the wire are the same. A copy of a few
    /// small frames per shard and turn buys that. Broadcast 1 → 1,000
    /// (issue 15): see bench-results/README.md.
    pub fn gather(parts: &[Delivery]) -> Delivery {
        debug_assert!(parts.iter().all(Delivery::gatherable));
        let mut frame = Vec::with_capacity(parts.iter().map(|d| d.frame.len()).sum());
        for d in parts {
            frame.extend_from_slice(&d.frame);
        }
        Delivery {
            frame: Bytes::from(frame),
            channel: None,
            packed: [None, None],
            frames: parts.iter().map(|d| d.frames).sum(),
        }
    }

    /// Compresses the frame once for each codec that connections on any
    /// shard have negotiated, if its payload is over the threshold and the
    /// codec saves bytes. Every recipient of that codec then shares the
    /// one compressed frame; a connection negotiating meanwhile simply gets
    /// this one plain. Counts each compression in `compressions`, a
    /// counter the caller alone writes (its shard's, or the backplane
    /// reader's own).
    pub(crate) fn pack(
        &mut self,
        shared: &Shared,
        compressor: &mut Compressor,
        compressions: &AtomicU64,
    ) {
        let payload = &self.frame[crate::protocol::HEADER_LEN..];
        if payload.len() <= shared.config.compression_threshold_bytes {
            return;
        }
        for codec in Codec::ALL {
            let wanted = shared
                .counters
                .iter()
                .any(|c| c.compression.connections[codec.index()].load(Ordering::Relaxed) > 0);
            if !wanted {
                continue;
            }
            let mut out = Vec::with_capacity(payload.len() / 2 + 64);
            if compressor.compress_frame(codec, payload, &mut out) {
                self.packed[codec.index()] = Some(Bytes::from(out));
            }
            bump(compressions, 1);
        }
    }

    /// The frame a connection using `codec` gets: the compressed one when
    /// there is one.
    #[inline]
    pub fn frame_for(&self, codec: Option<Codec>) -> &Bytes {
        codec
            .and_then(|c| self.packed[c.index()].as_ref())
            .unwrap_or(&self.frame)
    }
}

/// One shard's inbound mailbox.
pub struct Mailbox {
    queue: SegQueue<Delivery>,
    /// Set by a producer that has woken (or will wake) the target; cleared
    /// by the target before it drains.
    notified: AtomicBool,
    /// The target's ring fd (for MSG_RING); -1 until its ring exists.
    ring_fd: AtomicI32,
    /// The target's eventfd (wake-ups from threads without a ring, and the
    /// eventfd wake mode).
    event_fd: RawFd,
    /// The owner's fan-out is behind (see the shard's `fanout` module):
    /// published each turn so publishers on any shard can be slowed.
    behind: AtomicBool,
}

impl std::fmt::Debug for Mailbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailbox")
            .field("len", &self.queue.len())
            .finish()
    }
}

/// How a producer should wake the target, decided by [`Mailbox::push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// Someone already did.
    No,
    /// Post a MSG_RING to this ring fd.
    Ring(RawFd),
    /// The eventfd was written.
    Done,
}

impl Mailbox {
    /// A mailbox whose owner reads `event_fd`.
    pub fn new(event_fd: RawFd) -> Mailbox {
        Mailbox {
            queue: SegQueue::new(),
            notified: AtomicBool::new(false),
            ring_fd: AtomicI32::new(-1),
            event_fd,
            behind: AtomicBool::new(false),
        }
    }

    /// Records the owner's ring fd once its ring exists.
    pub fn set_ring_fd(&self, fd: RawFd) {
        self.ring_fd.store(fd, Ordering::Release);
    }

    /// Queues a delivery; says whether and how the caller must wake the owner.
    pub fn push(&self, d: Delivery, use_msg_ring: bool) -> Wake {
        self.queue.push(d);
        if self.notified.swap(true, Ordering::SeqCst) {
            return Wake::No;
        }
        let ring = self.ring_fd.load(Ordering::Acquire);
        if use_msg_ring && ring >= 0 {
            Wake::Ring(ring)
        } else {
            crate::io::sys::eventfd_signal(self.event_fd);
            Wake::Done
        }
    }

    /// Publishes whether the owner's fan-out is behind.
    pub fn set_fanout_behind(&self, behind: bool) {
        self.behind.store(behind, Ordering::Relaxed);
    }

    /// Whether the owner's fan-out is behind.
    pub fn fanout_behind(&self) -> bool {
        self.behind.load(Ordering::Relaxed)
    }

    /// The owner's eventfd.
    pub fn event_fd(&self) -> RawFd {
        self.event_fd
    }

    /// Wakes the owner through its eventfd (stop requests, other threads).
    pub fn wake_external(&self) {
        crate::io::sys::eventfd_signal(self.event_fd);
    }

    /// Takes every queued delivery, in order. The owner calls this each turn.
    pub fn drain(&self, mut f: impl FnMut(Delivery)) {
        if self.queue.is_empty() && !self.notified.load(Ordering::Relaxed) {
            return;
        }
        // Clear first: a push after this sees `false` and wakes us again.
        self.notified.store(false, Ordering::SeqCst);
        while let Some(b) = self.queue.pop() {
            f(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(s: &str) -> Bytes {
        let mut v = (s.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(s.as_bytes());
        Bytes::from(v)
    }

    #[test]
    fn a_gathered_run_is_the_frames_in_order() {
        let parts = [
            Delivery::new(frame(r#"{"a":1}"#), None),
            Delivery::new(frame(r#"{"b":2}"#), None),
            Delivery::gather(&[
                Delivery::new(frame(r#"{"c":3}"#), None),
                Delivery::new(frame(r#"{"d":4}"#), None),
            ]),
        ];
        let run = Delivery::gather(&parts);
        assert_eq!(run.frames, 4);
        let want: Vec<u8> = [r#"{"a":1}"#, r#"{"b":2}"#, r#"{"c":3}"#, r#"{"d":4}"#]
            .iter()
            .flat_map(|s| frame(s).to_vec())
            .collect();
        assert_eq!(&run.frame[..], &want[..]);
        assert!(run.channel.is_none() && run.packed.iter().all(Option::is_none));
    }

    #[test]
    fn only_small_plain_broadcasts_are_gathered() {
        assert!(Delivery::new(frame("{}"), None).gatherable());
        // Channel messages keep their own recipients.
        assert!(!Delivery::new(frame("{}"), Some(Arc::from("news"))).gatherable());
        // Large frames are shared as they are, not copied.
        let big = "x".repeat(GATHER_MAX);
        assert!(!Delivery::new(frame(&big), None).gatherable());
        // A compressed frame is shared by its codec's recipients.
        let mut packed = Delivery::new(frame("{}"), None);
        packed.packed[0] = Some(frame("z"));
        assert!(!packed.gatherable());
    }
}
