//! The server's side of the backplane: what [`crate::cluster::Host`] asks
//! of the node (deliver another node's entry, the figures for the
//! heartbeat, resume paused publishers).

use super::broadcast::Delivery;
use super::Shared;
use crate::cluster::{Entry, Host};
use crate::protocol::codec::Compressor;
use crate::protocol::interest::{slot_of, INTEREST_SLOTS};
use std::sync::{Arc, Mutex};

/// The node as the backplane sees it.
pub(crate) struct ClusterBridge {
    shared: Arc<Shared>,
    /// Only the reader thread compresses; the lock is never contended.
    compressor: Mutex<Compressor>,
}

impl ClusterBridge {
    pub fn new(shared: &Arc<Shared>) -> Arc<ClusterBridge> {
        Arc::new(ClusterBridge {
            shared: shared.clone(),
            compressor: Mutex::new(Compressor::new()),
        })
    }
}

impl Host for ClusterBridge {
    /// Hands a remote entry to every shard that has recipients for it
    /// (every shard for a broadcast), through the shards' mailboxes;
    /// compressed here, once, like a local publish on its shard.
    fn deliver(&self, e: Entry) {
        let shared = &*self.shared;
        let mut d = Delivery::new(e.frame, e.channel);
        {
            let mut c = self.compressor.lock().unwrap_or_else(|p| p.into_inner());
            d.pack(shared, &mut c, &shared.remote_compressions);
        }
        let slot = d.channel.as_deref().map(slot_of);
        for (i, mb) in shared.mailboxes.iter().enumerate() {
            if slot.is_some_and(|s| shared.interest[i].count(s) == 0) {
                continue;
            }
            // This thread has no ring: the push wakes the shard by its
            // eventfd (at most once until the shard drains its mailbox).
            mb.push(d.clone(), false);
        }
    }

    fn local_figures(&self, slots: &mut Vec<(usize, u64)>) -> u64 {
        let shared = &*self.shared;
        for slot in 0..INTEREST_SLOTS {
            let n: u64 = shared
                .interest
                .iter()
                .map(|i| u64::from(i.count(slot)))
                .sum();
            if n > 0 {
                slots.push((slot, n));
            }
        }
        shared.totals(&mut Vec::new()).connected
    }

    fn backlog_cleared(&self) {
        // Shards with paused publishers may be asleep.
        for m in self.shared.mailboxes.iter() {
            m.wake_external();
        }
    }
}
