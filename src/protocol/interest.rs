//! The interest table: subscriber counts per hash slot of a channel name.
//!
//! A slot number is part of the wire: nodes of a cluster tell each other
//! their counts by slot in their heartbeats, so every shard and every node
//! must put a name in the same slot. That is why the hash lives here, with
//! the protocol, and not with either of its users (the router and the
//! cluster).
//!
//! Why slots and not the names themselves: a name set shared across shards
//! needs a lock (or an epoch scheme) on every publish; a fixed array of
//! counters needs neither, and its size bounds the memory whatever clients
//! subscribe to.

use std::sync::atomic::{AtomicU32, Ordering};

/// Hash slots of the interest table. 16,384 × 4 bytes = 64 KiB per shard;
/// two given channels share a slot with probability 1/16,384, so the
/// unneeded hops (and the overcount in a remote shard's share of
/// `recipients`) stay rare even with thousands of busy channels.
pub const INTEREST_SLOTS: usize = 1 << 14;

/// The interest slot of a channel: FNV-1a, a fixed function (not the
/// per-process random SipHash of `HashMap`) so that every shard, and every
/// node of a cluster, puts a name in the same slot.
pub fn slot_of(channel: &str) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in channel.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % INTEREST_SLOTS as u64) as usize
}

/// One shard's published interest: its subscriber count per slot.
pub struct Interest {
    slots: Box<[AtomicU32]>,
}

impl std::fmt::Debug for Interest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Interest").finish_non_exhaustive()
    }
}

impl Default for Interest {
    fn default() -> Self {
        Interest {
            slots: (0..INTEREST_SLOTS).map(|_| AtomicU32::new(0)).collect(),
        }
    }
}

impl Interest {
    /// Subscribers the owner has in `slot` (any shard may ask).
    #[inline]
    pub fn count(&self, slot: usize) -> u32 {
        // Acquire pairs with the owner's Release: a client told
        // `subscribed` is visible to every publish that starts afterwards.
        self.slots[slot].load(Ordering::Acquire)
    }

    /// Sets `slot`'s count (the single writer of a table of remote counts).
    pub fn set(&self, slot: usize, n: u32) {
        self.slots[slot].store(n, Ordering::Release);
    }

    /// The owner adds one subscriber to `slot` (single writer: no RMW).
    pub fn add(&self, slot: usize) {
        let s = &self.slots[slot];
        s.store(s.load(Ordering::Relaxed) + 1, Ordering::Release);
    }

    /// The owner removes one subscriber from `slot`.
    pub fn remove(&self, slot: usize) {
        let s = &self.slots[slot];
        s.store(
            s.load(Ordering::Relaxed).saturating_sub(1),
            Ordering::Release,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_fixed_and_in_range() {
        // FNV-1a of the empty string is the offset basis itself.
        assert_eq!(
            slot_of(""),
            (0xcbf2_9ce4_8422_2325u64 % INTEREST_SLOTS as u64) as usize
        );
        assert_eq!(slot_of("news"), slot_of("news"));
        assert_ne!(slot_of("news"), slot_of("sport"));
        assert!(slot_of(&"x".repeat(300)) < INTEREST_SLOTS);
    }
}
