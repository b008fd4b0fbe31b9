//! Cross-shard mailboxes.
//!
//! Each shard has one inbound lock-free queue (crossbeam's SegQueue: MPSC
//! use of an MPMC queue; FIFO per producer, so one sender's broadcasts
//! reach every recipient in the order sent). A producer pushes the
//! delivery, already serialised once into a shared `Bytes`, then wakes the
//! target at most once per batch: the `notified` flag collapses wake-ups
//! until the target has drained its queue.
//!
//! A second queue carries [`Control`] requests from the operator's API
//! (listings, disconnect, unsubscribe); they are rare, so each push wakes
//! the owner by its eventfd, and the owner serves them once per turn.

use super::control::Control;
use super::delivery::Delivery;
use crate::io::sys::eventfd_signal;
use crossbeam_queue::SegQueue;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

/// One shard's inbound mailbox.
pub struct Mailbox {
    queue: SegQueue<Delivery>,
    /// Requests from outside the shards (see [`Control`]).
    control: SegQueue<Control>,
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
            control: SegQueue::new(),
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
            eventfd_signal(self.event_fd);
            Wake::Done
        }
    }

    /// Queues a delivery from the owner itself, which drains its mailbox
    /// later in the same turn: no wake-up is needed.
    pub fn push_own(&self, d: Delivery) {
        self.queue.push(d);
    }

    /// Queues a control request and wakes the owner (through its eventfd:
    /// the caller is no shard and has no ring).
    pub fn push_control(&self, c: Control) {
        self.control.push(c);
        eventfd_signal(self.event_fd);
    }

    /// Takes the queued control requests, in order (the owner, each turn).
    pub fn drain_control(&self, mut f: impl FnMut(Control)) {
        while let Some(c) = self.control.pop() {
            f(c);
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
        eventfd_signal(self.event_fd);
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
