//! One shard's part of the router: its channel index, what its sessions
//! published this turn, and the [`Host`] its sessions talk to.

use super::channels::ChannelIndex;
use super::delivery::Delivery;
use super::report::{self, RssReader};
use super::Router;
use crate::protocol::codec::Compressor;
use crate::protocol::JsonValue;
use crate::session::counters::ShardCounters;
use crate::session::{ConnId, Handler, Host, Routed, SubscribeError};
use bytes::Bytes;
use std::sync::Arc;

/// One shard's routing state (see the module doc).
pub struct ShardRoute<'a> {
    router: &'a Router,
    shard: usize,
    counters: &'a ShardCounters,
    /// Which of this shard's sessions are subscribed to which channels.
    pub channels: ChannelIndex,
    /// Broadcasts and channel messages published this turn, with the
    /// publishing session: the shard delivers them after its poll.
    pub outgoing: Vec<(Delivery, ConnId)>,
    /// Compresses what this shard's sessions publish.
    compressor: Compressor,
    rss: RssReader,
    per_shard: Vec<u64>,
}

impl std::fmt::Debug for ShardRoute<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardRoute")
            .field("shard", &self.shard)
            .finish_non_exhaustive()
    }
}

impl<'a> ShardRoute<'a> {
    /// Shard `shard`'s part of `router`.
    pub fn new(router: &'a Router, shard: usize) -> ShardRoute<'a> {
        ShardRoute {
            router,
            shard,
            counters: &router.counters[shard],
            channels: ChannelIndex::default(),
            outgoing: Vec::new(),
            compressor: Compressor::new(),
            rss: RssReader::new(),
            per_shard: Vec::with_capacity(router.shards()),
        }
    }

    /// The router.
    pub fn router(&self) -> &'a Router {
        self.router
    }

    /// A publish or broadcast from this shard: compressed once per codec
    /// in use, queued for the other nodes, and kept for this turn's
    /// fan-out. False when the backplane refused it (it goes to this
    /// node's clients only).
    fn route(&mut self, from: ConnId, mut d: Delivery) -> bool {
        self.router.pack(
            &mut d,
            &mut self.compressor,
            &self.counters.compression.compressions,
        );
        let to_cluster = match &self.router.cluster {
            Some(c) => c.try_send(&d.frame, d.channel.as_ref()),
            None => true,
        };
        self.outgoing.push((d, from));
        to_cluster
    }
}

impl Host for ShardRoute<'_> {
    fn broadcast(&mut self, from: ConnId, frame: Bytes) -> Routed {
        if !self.route(from, Delivery::new(frame, None)) {
            return Routed::LocalOnly;
        }
        // Every other established client: this node's gauges, the others'
        // heartbeats.
        let here = self.router.totals(&mut self.per_shard).connected;
        let there = self
            .router
            .cluster
            .as_ref()
            .map_or(0, |c| c.remote_clients());
        Routed::Recipients(here.saturating_sub(1) + there)
    }

    fn publish(&mut self, from: ConnId, channel: &str, frame: Bytes) -> Routed {
        let d = Delivery::new(frame, Some(Arc::from(channel)));
        let slot = d.slot.expect("a channel has a slot");
        if !self.route(from, d) {
            return Routed::LocalOnly;
        }
        // Exact on this shard; elsewhere the other shards' interest counts,
        // read without a lock, and the other nodes' last heartbeats.
        let here = self.channels.subscriber_count(channel) as u64;
        let shards = self.router.other_shards_in(self.shard, slot);
        let nodes = self
            .router
            .cluster
            .as_ref()
            .map_or(0, |c| c.remote_subscribers(slot));
        Routed::Recipients(here + shards + nodes)
    }

    fn subscribe(&mut self, conn: ConnId, channel: &str) -> Result<usize, SubscribeError> {
        let interest = &self.router.interest[self.shard];
        let max = self.router.settings.max_subscriptions;
        let r = self.channels.subscribe(interest, conn, channel, max);
        self.channels.store_gauges(self.counters);
        r
    }

    fn unsubscribe(&mut self, conn: ConnId, channel: &str) -> usize {
        let interest = &self.router.interest[self.shard];
        let held = self.channels.unsubscribe(interest, conn, channel);
        self.channels.store_gauges(self.counters);
        held
    }

    fn drop_subscriptions(&mut self, conn: ConnId) {
        let interest = &self.router.interest[self.shard];
        if self.channels.drop_session(interest, conn) > 0 {
            self.channels.store_gauges(self.counters);
        }
    }

    fn write_stats(
        &mut self,
        out: &mut Vec<u8>,
        id: Option<&JsonValue<'_, '_>>,
        now: &str,
        now_ms: u64,
    ) {
        report::write_stats(
            self.router,
            &self.rss,
            &mut self.per_shard,
            out,
            id,
            now,
            now_ms,
        );
    }

    fn handler(&self, type_name: &str) -> Option<&dyn Handler> {
        self.router.node.handlers.get(type_name).map(|h| &**h)
    }
}
