//! One shard's part of the router: its channel index, what its sessions
//! published this turn, and the [`Host`] its sessions talk to.

use super::channels::ChannelIndex;
use super::delivery::Delivery;
use super::report::{self, RssReader};
use super::Router;
use crate::protocol::codec::Compressor;
use crate::protocol::message::{HistoryQuery, Recover};
use crate::protocol::JsonValue;
use crate::session::counters::ShardCounters;
use crate::session::{
    ConnId, Handler, Host, Position, Routed, SubscribeError, Subscribed, WriteMessage,
};
use bytes::Bytes;
use std::os::fd::RawFd;
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
    /// Shards to wake by `MSG_RING` for history publications this turn
    /// (pushed to their mailboxes under the history lock), by shard; the
    /// shard loop posts them with its own.
    pub ring_wakes: Vec<Option<RawFd>>,
    /// Eventfd wake-ups made for history publications, for the shard's
    /// wake-up counters.
    pub eventfd_wakes: u64,
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
            ring_wakes: vec![None; router.shards()],
            eventfd_wakes: 0,
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

    /// Subscribers of `channel` here and on the other shards (and nodes),
    /// as a publisher is told.
    fn recipients(&self, channel: &str, slot: usize) -> u64 {
        // Exact on this shard; elsewhere the other shards' interest counts,
        // read without a lock, and the other nodes' last heartbeats.
        let here = self.channels.subscriber_count(channel) as u64;
        let shards = self.router.other_shards_in(self.shard, slot);
        let nodes = self
            .router
            .cluster
            .as_ref()
            .map_or(0, |c| c.remote_subscribers(slot));
        here + shards + nodes
    }
}

impl Host for ShardRoute<'_> {
    fn broadcast(&mut self, from: ConnId, frame: Bytes) -> Routed {
        if !self.route(from, Delivery::new(frame, None)) {
            return Routed::LocalOnly;
        }
        // Every other established client: this node's gauges, the others'
        // heartbeats.
        let here = self.router.connected();
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
        Routed::Recipients(self.recipients(channel, slot))
    }

    fn subscribe(&mut self, conn: ConnId, channel: &str) -> Result<usize, SubscribeError> {
        let interest = &self.router.interest[self.shard];
        let max = self.router.settings.max_subscriptions;
        let r = self.channels.subscribe(interest, conn, channel, max, 0);
        self.channels.store_gauges(self.counters);
        r
    }

    fn publish_with(
        &mut self,
        from: ConnId,
        channel: &str,
        now_ms: u64,
        write: &mut WriteMessage<'_>,
    ) -> (Routed, Option<Position>) {
        let router = self.router;
        let Some(history) = &router.history else {
            let mut frame = Vec::with_capacity(160);
            write(&mut frame, None);
            return (self.publish(from, channel, Bytes::from(frame)), None);
        };
        // The channel's order is fixed here: offset, frame, log and every
        // shard's mailbox under one lock (see `history`). The cluster is
        // not involved: history is refused with a backplane for now.
        let (d, position) = {
            let mut store = crate::sync::lock(history);
            let (mut d, position) = store.append(channel, now_ms, write);
            router.pack(
                &mut d,
                &mut self.compressor,
                &self.counters.compression.compressions,
            );
            let msg_ring = router.settings.msg_ring;
            self.eventfd_wakes +=
                router.to_shards_in_order(self.shard, &d, msg_ring, &mut self.ring_wakes);
            (d, position)
        };
        let slot = d.slot.expect("a channel has a slot");
        // Kept for the fan-out's publisher pause only: it is delivered
        // through the mailboxes (the shard loop skips it).
        self.outgoing.push((d, from));
        (
            Routed::Recipients(self.recipients(channel, slot)),
            Some(position),
        )
    }

    fn subscribe_with(
        &mut self,
        conn: ConnId,
        channel: &str,
        now_ms: u64,
        recover: Option<Recover<'_>>,
        replay: &mut Vec<u8>,
    ) -> Result<Subscribed, SubscribeError> {
        let router = self.router;
        let Some(history) = &router.history else {
            return Ok(Subscribed {
                held: self.subscribe(conn, channel)?,
                position: None,
                recovered: false,
            });
        };
        let interest = &router.interest[self.shard];
        let max = router.settings.max_subscriptions;
        // Position, replay and joining the subscribers under the lock that
        // orders publications: one published before is replayed or at
        // most the mark, one after is delivered live (see `history`).
        let mut store = crate::sync::lock(history);
        if self.channels.is_subscribed(conn, channel) {
            // Already live on it: nothing to replay (it would double).
            let (position, _) = store.position(channel, now_ms, None, replay);
            return Ok(Subscribed {
                held: self.channels.subscribe(interest, conn, channel, max, 0)?,
                position: Some(position),
                recovered: false,
            });
        }
        let start = replay.len();
        let recover = recover.map(|r| (r.offset, r.epoch));
        let (position, recovered) = store.position(channel, now_ms, recover, replay);
        let r = self
            .channels
            .subscribe(interest, conn, channel, max, store.seq());
        drop(store);
        self.channels.store_gauges(self.counters);
        match r {
            Ok(held) => Ok(Subscribed {
                held,
                position: Some(position),
                recovered,
            }),
            Err(e) => {
                replay.truncate(start);
                Err(e)
            }
        }
    }

    fn history(
        &mut self,
        channel: &str,
        now_ms: u64,
        query: HistoryQuery,
        entries: &mut Vec<u8>,
    ) -> Option<Position> {
        let history = self.router.history.as_ref()?;
        let mut store = crate::sync::lock(history);
        Some(store.read(channel, now_ms, query.since, query.limit, entries))
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

    fn subscriptions_of(&self, conn: ConnId) -> Vec<Arc<str>> {
        self.channels.channels_of(conn)
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
