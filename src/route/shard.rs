//! One shard's part of the router: its channel index, what its sessions
//! published this turn, and the [`Host`] its sessions talk to.

use super::channels::{ChannelIndex, Mark};
use super::delivery::Delivery;
use super::history::Recovery;
use super::patterns::{PatternCache, PatternMatch};
use super::report::{self, RssReader};
use super::Router;
use crate::protocol::codec::Compressor;
use crate::protocol::message::{HistoryQuery, Recover};
use crate::protocol::pattern::is_pattern;
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
    /// A cluster history publication waiting for its `published` reply
    /// ([`Host::await_placement`]), which the session writes right after.
    placing: Option<(Delivery, ConnId)>,
    /// Compresses what this shard's sessions publish.
    compressor: Compressor,
    /// Which of the node's patterns match the channels published here.
    pattern_cache: PatternCache,
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
            placing: None,
            compressor: Compressor::new(),
            pattern_cache: PatternCache::default(),
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
    /// as a publisher is told; `patterns` are the node's patterns that
    /// match it.
    fn recipients(&mut self, channel: &str, slot: usize, patterns: Option<&PatternMatch>) -> u64 {
        // Exact on this shard (each session once, however many of its
        // subscriptions match); elsewhere the other shards' interest
        // counts, read without a lock, and the other nodes' last
        // heartbeats.
        let here = self.channels.subscriber_count(channel) as u64;
        let shards = self.router.other_shards_in(self.shard, slot);
        let nodes = self
            .router
            .cluster
            .as_ref()
            .map_or(0, |c| c.remote_subscribers(slot));
        let by_pattern = patterns.map_or(0, |p| p.elsewhere(self.shard));
        here + shards + nodes + by_pattern
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
        let mut d = Delivery::new(frame, Some(Arc::from(channel)));
        let slot = d.slot.expect("a channel has a slot");
        d.patterns = self
            .router
            .patterns
            .lookup(&mut self.pattern_cache, channel);
        let patterns = d.patterns.clone();
        if !self.route(from, d) {
            return Routed::LocalOnly;
        }
        Routed::Recipients(self.recipients(channel, slot, patterns.as_ref()))
    }

    fn subscribe(&mut self, conn: ConnId, channel: &str) -> Result<usize, SubscribeError> {
        let interest = self.router.row(self.shard);
        let max = self.router.settings.max_subscriptions;
        let r = self
            .channels
            .subscribe(interest, conn, channel, max, Mark::default());
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
        if let Some(c) = router.cluster.as_ref().filter(|c| c.keeps_history()) {
            // Redis fixes the channel's order (cluster::history): the
            // publication goes out without an offset, and every node, this
            // one too, delivers it as it reads it back, placed.
            // It is queued with the `published` reply, which the session
            // writes next ([`Host::await_placement`]).
            if !c.has_room(160) {
                return (Routed::Nowhere, None);
            }
            let mut frame = Vec::with_capacity(160);
            write(&mut frame, None);
            let d = Delivery::new(Bytes::from(frame), Some(Arc::from(channel)));
            let slot = d.slot.expect("a channel has a slot");
            let patterns = router.patterns.lookup(&mut self.pattern_cache, channel);
            self.placing = Some((d, from));
            let n = self.recipients(channel, slot, patterns.as_ref());
            return (Routed::Placing(n), None);
        }
        // The channel's order is fixed here: offset, frame, log and every
        // shard's mailbox under one lock (see `history`).
        let (d, position) = {
            let mut store = crate::sync::lock(history);
            let (mut d, position) = store.append(channel, now_ms, write);
            d.patterns = router.patterns.lookup(&mut self.pattern_cache, channel);
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
        let patterns = d.patterns.clone();
        // Kept for the fan-out's publisher pause only: it is delivered
        // through the mailboxes (the shard loop skips it).
        self.outgoing.push((d, from));
        (
            Routed::Recipients(self.recipients(channel, slot, patterns.as_ref())),
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
        // A pattern has no position: offsets are per channel, and the
        // session refuses `recover` with one.
        let history = router.history.as_ref().filter(|_| !is_pattern(channel));
        let Some(history) = history else {
            return Ok(Subscribed {
                held: self.subscribe(conn, channel)?,
                position: None,
                recovered: false,
            });
        };
        let interest = router.row(self.shard);
        let max = router.settings.max_subscriptions;
        // Position, replay and joining the subscribers under the lock that
        // orders publications: one published before is replayed or at
        // most the mark, one after is delivered live (see `history`).
        let mut store = crate::sync::lock(history);
        if self.channels.is_subscribed(conn, channel) {
            // Already live on it: nothing to replay (it would double).
            let (position, _) = store.position(channel, now_ms, None, replay);
            return Ok(Subscribed {
                held: self
                    .channels
                    .subscribe(interest, conn, channel, max, Mark::default())?,
                position: Some(position),
                recovered: false,
            });
        }
        let start = replay.len();
        let recover = recover.map(|r| (r.offset, r.epoch));
        let (position, recovery) = store.position(channel, now_ms, recover, replay);
        let mark = match recovery {
            Recovery::Ahead(m) => Mark {
                seq: store.seq(),
                ..m
            },
            _ => Mark {
                seq: store.seq(),
                ..Mark::default()
            },
        };
        let recovered = recovery.granted();
        let r = self.channels.subscribe(interest, conn, channel, max, mark);
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

    fn await_placement(&mut self, conn: ConnId, client_id: &str, reply: Bytes) -> bool {
        let (Some((mut d, from)), Some(c)) = (self.placing.take(), &self.router.cluster) else {
            return false;
        };
        debug_assert_eq!(from, conn);
        let reply = crate::cluster::history::Reply {
            shard: self.shard,
            conn,
            client_id: Arc::from(client_id),
            frame: reply,
        };
        let channel = d.channel.clone().expect("a channel");
        let reply = crate::cluster::history::Placement::Reply(reply);
        if !c.try_send_history(&d.frame, &channel, reply) {
            return false;
        }
        // Kept for the publisher pause and the writer's wake-up only (a
        // history delivery: the shard loop does not deliver it).
        d.history_seq = Some(0);
        self.outgoing.push((d, from));
        true
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
        let interest = self.router.row(self.shard);
        let held = self.channels.unsubscribe(interest, conn, channel);
        self.channels.store_gauges(self.counters);
        held
    }

    fn drop_subscriptions(&mut self, conn: ConnId) {
        let interest = self.router.row(self.shard);
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
