//! Publishes and broadcasts that enter from outside the shards: the
//! operator's HTTP API (`POST /v1/publish`, `POST /v1/broadcast`).
//!
//! They take the path another node's entry takes ([`Router::deliver_remote`]):
//! compressed once with the router's own compressor, then pushed to every
//! shard with recipients, woken by eventfd (this thread has no ring). They
//! also go to the other nodes like a local client's message, and a history
//! channel's publication gets its offset under the history lock, as a
//! shard's does (`ShardRoute::publish_with`).

use super::{Delivery, Router};
use crate::session::{Position, Routed, WriteMessage};
use bytes::Bytes;
use std::sync::Arc;

/// Where a cluster's history publication's place arrives (see
/// [`Router::publish_external`]).
pub type Placed = std::sync::mpsc::Receiver<Option<Position>>;

impl Router {
    /// Publishes the frame `write` makes to `channel` (see the module doc).
    /// Returns the recipients as a client's publish is told them, and the
    /// publication's position on a history channel: at once on one node,
    /// or, in a cluster (Redis places it), through the receiver once Redis
    /// has answered (`None` in it: placed by an earlier try whose answer
    /// was lost).
    pub fn publish_external(
        &self,
        channel: &str,
        now_ms: u64,
        write: &mut WriteMessage<'_>,
    ) -> (Routed, Option<Position>, Option<Placed>) {
        if let Some(c) = self.cluster.as_ref().filter(|c| c.keeps_history()) {
            return self.publish_placed(c, channel, write);
        }
        let (routed, position) = match &self.history {
            Some(history) => {
                // Offset, log and every mailbox under the one lock that
                // orders the channel (see `history`); history runs
                // without a backplane.
                let mut store = crate::sync::lock(history);
                let (mut d, position) = store.append(channel, now_ms, write);
                self.pack_external(&mut d);
                self.to_shards(None, &d, false, &mut []);
                (true, Some(position))
            }
            None => {
                let mut frame = Vec::with_capacity(192);
                write(&mut frame, None);
                let mut d = Delivery::new(Bytes::from(frame), Some(Arc::from(channel)));
                self.pack_external(&mut d);
                let to_cluster = self.send_to_cluster(&d);
                self.to_shards(None, &d, false, &mut []);
                (to_cluster, None)
            }
        };
        if !routed {
            return (Routed::LocalOnly, position, None);
        }
        (
            Routed::Recipients(self.external_recipients(channel)),
            position,
            None,
        )
    }

    /// Subscribers of `channel` as an API publish is told them: every
    /// shard's interest count, and the other nodes' last heartbeats.
    fn external_recipients(&self, channel: &str) -> u64 {
        let slot = crate::protocol::interest::slot_of(channel);
        let here: u64 = (0..self.shards())
            .map(|i| u64::from(self.interest[i].count(slot)))
            .sum();
        let there = self
            .cluster
            .as_ref()
            .map_or(0, |c| c.remote_subscribers(slot));
        here + there
    }

    /// A history channel's publication in a cluster: Redis places it (see
    /// `cluster::history`) and every node delivers it as it reads it back.
    fn publish_placed(
        &self,
        c: &crate::cluster::Cluster,
        channel: &str,
        write: &mut WriteMessage<'_>,
    ) -> (Routed, Option<Position>, Option<Placed>) {
        let mut frame = Vec::with_capacity(192);
        write(&mut frame, None);
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let notify = crate::cluster::history::Placement::Notify(Box::new(move |p| {
            let _ = tx.send(p.map(|(o, e)| Position {
                offset: o,
                epoch: Arc::from(e),
            }));
        }));
        let name: Arc<str> = Arc::from(channel);
        if !c.try_send_history(&Bytes::from(frame), &name, notify) {
            return (Routed::Nowhere, None, None);
        }
        c.wake_writer();
        (
            Routed::Placing(self.external_recipients(channel)),
            None,
            Some(rx),
        )
    }

    /// Broadcasts `frame` (a `broadcast_message`) to every established
    /// client of every node.
    pub fn broadcast_external(&self, frame: Bytes) -> Routed {
        let mut d = Delivery::new(frame, None);
        self.pack_external(&mut d);
        let to_cluster = self.send_to_cluster(&d);
        self.to_shards(None, &d, false, &mut []);
        if !to_cluster {
            return Routed::LocalOnly;
        }
        let there = self.cluster.as_ref().map_or(0, |c| c.remote_clients());
        Routed::Recipients(self.connected() + there)
    }

    /// Compresses with the router's own compressor (shared with the
    /// backplane reader; neither is a hot path).
    fn pack_external(&self, d: &mut Delivery) {
        let mut c = crate::sync::lock(&self.remote_compressor);
        self.pack(d, &mut c, &self.remote_compressions);
    }

    /// Queues `d` for the other nodes; false when the backplane's buffer
    /// is full (it then reaches this node's clients only).
    fn send_to_cluster(&self, d: &Delivery) -> bool {
        let Some(c) = &self.cluster else {
            return true;
        };
        let queued = c.try_send(&d.frame, d.channel.as_ref());
        c.wake_writer();
        queued
    }
}
