//! Where every message goes, and what is remembered of it.
//!
//! The [`Router`] is the one place that decides delivery. It owns:
//! - the shards' mailboxes and their wake-ups ([`mailbox`]);
//! - the interest table: which shards (and, from heartbeats, which other
//!   nodes) have subscribers in a channel's slot ([`channels`]);
//! - the outbox to the cluster, and the delivery of what the cluster reads
//!   (it is the [`crate::cluster::Host`]);
//! - compression, once per codec in use, as a property of a routed message
//!   ([`Delivery::pack`]);
//! - the recipient count a sender is told.
//!
//! Each shard has a [`ShardRoute`]: its channel index, the deliveries its
//! sessions published this turn, and the session's [`crate::session::Host`]
//! implementation. A local broadcast and a local publish enter through
//! [`ShardRoute`]'s `broadcast` and `publish` (the `Host` methods), a
//! remote entry through [`Router::deliver_remote`]; all three become a
//! [`Delivery`] and reach other shards through [`Router::to_shards`]. The
//! shard loop (`server::shard::fanout`) hands each delivery to its own
//! sessions: the subscribers [`ShardRoute::channels`] names, or every
//! established session for a broadcast.
//!
//! History ([`history`]): a history channel's publication gets its offset
//! in `ShardRoute::publish_with`, under the one lock of the router's
//! history [`history::Store`], and reaches every shard, its own included,
//! through the mailboxes under that lock; the module doc says why.
//!
//! Patterns (`a.*`, `a.>`): each shard matches its sessions' patterns in a
//! token trie with a bounded match cache ([`sublist`], held by
//! [`ChannelIndex`]); across shards and nodes a pattern counts in no slot
//! but in the node's [`patterns::PatternInterest`], which a publisher
//! consults once per delivery ([`Delivery::patterns`]) to add the shards
//! a pattern there may match.

#[cfg(test)]
mod channel_tests;
pub mod channels;
#[cfg(test)]
mod compress_tests;
pub mod control;
pub mod delivery;
mod external;
pub mod history;
#[cfg(test)]
mod history_tests;
pub mod mailbox;
#[cfg(test)]
mod pattern_tests;
pub mod patterns;
mod remote;
pub(crate) mod report;
#[cfg(test)]
mod session_tests;
mod shard;
pub mod sublist;
#[cfg(test)]
mod testing;
#[cfg(test)]
mod token_tests;

pub use channels::{ChannelIndex, Interest, Row};
pub use delivery::Delivery;
pub use mailbox::{Mailbox, Wake};
pub use shard::ShardRoute;

use crate::cluster::Cluster;
use crate::protocol::codec::Compressor;
use crate::session::counters::{ShardCounters, Totals};
use crate::session::Handler;
use crossbeam_utils::CachePadded;
use std::collections::HashMap;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Every shard's counters.
pub type Counters = Box<[CachePadded<ShardCounters>]>;

/// What a node reports of itself in `get_stats`, and its custom handlers.
pub struct NodeInfo {
    /// When it started, in Unix ms and as a timestamp.
    pub start_unix_ms: u64,
    /// `start_unix_ms` formatted.
    pub start_time: String,
    /// The I/O backend's name.
    pub io_backend: &'static str,
    /// Custom message handlers by type.
    pub handlers: HashMap<String, Arc<dyn Handler>>,
}

/// The settings routing reads.
#[derive(Debug, Clone, Copy)]
pub struct RouteSettings {
    /// Payloads up to this size are never compressed.
    pub compression_threshold_bytes: usize,
    /// Channels one connection may hold.
    pub max_subscriptions: usize,
    /// Wake other shards with `MSG_RING` (else by eventfd).
    pub msg_ring: bool,
    /// Channel history; `size` 0: none.
    pub history: history::HistorySettings,
}

/// Routing state shared by all shards (see the module doc).
pub struct Router {
    /// Every shard's counters (each written by its shard only).
    pub counters: Counters,
    /// Each shard's inbound mailbox.
    pub mailboxes: Box<[CachePadded<Mailbox>]>,
    /// Each shard's channel interest (subscriber counts per hash slot),
    /// written by its shard, read by publishers on any shard.
    pub interest: Box<[Interest]>,
    /// The patterns held on this node, with each shard's (and the other
    /// nodes') subscribers of each.
    pub patterns: patterns::PatternInterest,
    /// The cross-node backplane, with `--backplane`.
    pub cluster: Option<Arc<Cluster>>,
    /// Compressions run for other nodes' messages (the backplane reader's
    /// own counter: one writer), added to the shards' in the totals.
    pub remote_compressions: AtomicU64,
    /// What `get_stats` says of this node, and its handlers.
    pub node: NodeInfo,
    pub(crate) settings: RouteSettings,
    /// Every history channel's log, when `history.size` > 0: one lock
    /// fixes each history channel's order (see [`history`]).
    pub history: Option<Mutex<history::Store>>,
    /// Only the backplane reader compresses remote entries: never contended.
    remote_compressor: Mutex<Compressor>,
    /// Only the backplane reader matches remote entries against patterns.
    remote_patterns: Mutex<patterns::PatternCache>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("shards", &self.mailboxes.len())
            .finish_non_exhaustive()
    }
}

impl Router {
    /// A router for one shard per entry of `event_fds` (each shard's
    /// wake-up eventfd).
    pub fn new(
        event_fds: &[RawFd],
        settings: RouteSettings,
        node: NodeInfo,
        cluster: Option<Arc<Cluster>>,
    ) -> Router {
        let n = event_fds.len();
        Router {
            counters: (0..n)
                .map(|_| CachePadded::new(ShardCounters::default()))
                .collect(),
            mailboxes: event_fds
                .iter()
                .map(|fd| CachePadded::new(Mailbox::new(*fd)))
                .collect(),
            interest: (0..n).map(|_| Interest::default()).collect(),
            patterns: patterns::PatternInterest::new(n),
            remote_compressions: AtomicU64::new(0),
            node,
            history: (settings.history.size > 0).then(|| {
                let mirror = cluster.as_ref().is_some_and(|c| c.keeps_history());
                Mutex::new(match mirror {
                    true => history::Store::mirror(settings.history),
                    false => history::Store::new(settings.history),
                })
            }),
            cluster,
            settings,
            remote_compressor: Mutex::new(Compressor::new()),
            remote_patterns: Mutex::new(patterns::PatternCache::default()),
        }
    }

    /// Shard `shard`'s row of the interest: what its channel index keeps
    /// in step.
    pub fn row(&self, shard: usize) -> Row<'_> {
        Row {
            slots: &self.interest[shard],
            patterns: &self.patterns,
            shard,
        }
    }

    /// Whether shard `i` has recipients for `d`: every shard for a
    /// broadcast; for a channel message, a subscriber in its slot or of a
    /// pattern that matches it.
    #[inline]
    fn wants(&self, i: usize, d: &Delivery) -> bool {
        match d.slot {
            None => true,
            Some(s) => {
                self.interest[i].count(s) > 0 || d.patterns.as_ref().is_some_and(|p| p.on_shard(i))
            }
        }
    }

    /// Shards routed between.
    pub fn shards(&self) -> usize {
        self.mailboxes.len()
    }

    /// Clients connected over all shards: the one figure a broadcast's
    /// `recipients` needs, without summing every other counter.
    pub fn connected(&self) -> u64 {
        self.counters
            .iter()
            .map(|c| c.connected.load(Ordering::Relaxed))
            .sum()
    }

    /// Sums every shard's counters (and the backplane reader's);
    /// `per_shard` receives each shard's connected count.
    pub fn totals(&self, per_shard: &mut Vec<u64>) -> Totals {
        let mut t = Totals::read(&self.counters, per_shard);
        t.compression.compressions += self.remote_compressions.load(Ordering::Relaxed);
        t
    }

    /// Compresses `d` once per codec in use, counting in `compressions`
    /// (a counter only the caller writes).
    pub fn pack(&self, d: &mut Delivery, compressor: &mut Compressor, compressions: &AtomicU64) {
        d.pack(
            self.settings.compression_threshold_bytes,
            &self.counters,
            compressor,
            compressions,
        );
    }

    /// Hands `d` to every shard but `from` (`None`: every shard) that has
    /// recipients for it (every one for a broadcast). A target to wake by
    /// `MSG_RING` is recorded in `ring_wakes` (by shard) for the caller's
    /// ring to post; the others are woken by eventfd here. Returns how many
    /// eventfd wake-ups it made.
    pub fn to_shards(
        &self,
        from: Option<usize>,
        d: &Delivery,
        msg_ring: bool,
        ring_wakes: &mut [Option<RawFd>],
    ) -> u64 {
        let mut eventfd = 0;
        for (i, mb) in self.mailboxes.iter().enumerate() {
            if Some(i) == from || !self.wants(i, d) {
                continue;
            }
            match mb.push(d.clone(), msg_ring) {
                Wake::Ring(fd) => ring_wakes[i] = Some(fd),
                Wake::Done => eventfd += 1,
                Wake::No => {}
            }
        }
        eventfd
    }

    /// Hands a history channel's delivery to every shard with recipients
    /// for it, `me` included (without a wake: it drains its mailbox later
    /// this turn). Called under the history lock, so every mailbox gets
    /// the channel's publications in offset order. Wakes by `MSG_RING`
    /// are recorded in `ring_wakes`; returns the eventfd wake-ups made.
    pub fn to_shards_in_order(
        &self,
        me: usize,
        d: &Delivery,
        msg_ring: bool,
        ring_wakes: &mut [Option<RawFd>],
    ) -> u64 {
        let mut eventfd = 0;
        for (i, mb) in self.mailboxes.iter().enumerate() {
            if !self.wants(i, d) {
                continue;
            }
            if i == me {
                mb.push_own(d.clone());
                continue;
            }
            match mb.push(d.clone(), msg_ring) {
                Wake::Ring(fd) => ring_wakes[i] = Some(fd),
                Wake::Done => eventfd += 1,
                Wake::No => {}
            }
        }
        eventfd
    }

    /// The history figures for `get_stats` and /metrics (zero without
    /// history).
    pub fn history_figures(&self, now_ms: u64) -> history::HistoryFigures {
        self.history
            .as_ref()
            .map(|h| crate::sync::lock(h).figures(now_ms))
            .unwrap_or_default()
    }

    /// Subscribers of `slot` on the shards other than `shard` (exact on
    /// `shard` is the caller's part).
    fn other_shards_in(&self, shard: usize, slot: usize) -> u64 {
        (0..self.shards())
            .filter(|i| *i != shard)
            .map(|i| u64::from(self.interest[i].count(slot)))
            .sum()
    }

    /// A history channel's publication read from the cluster stream (any
    /// node's, this one's too), placed by Redis: kept in the mirror and
    /// handed to every shard with subscribers under the history lock, so
    /// it is ordered with subscribes as on one node. One read twice is
    /// dropped.
    pub fn deliver_history(
        &self,
        channel: &str,
        offset: u64,
        epoch: &str,
        frame: bytes::Bytes,
        body: std::ops::Range<usize>,
    ) {
        let Some(history) = &self.history else {
            // History is off here but on at the node that wrote it: the
            // frame is still a channel message.
            return self.deliver_remote(frame, Some(Arc::from(channel)));
        };
        let mut store = crate::sync::lock(history);
        let now_ms = crate::protocol::time::unix_ms_now();
        let Some(mut d) = store.insert(channel, now_ms, offset, epoch, frame, body) else {
            return;
        };
        {
            let mut cache = crate::sync::lock(&self.remote_patterns);
            d.patterns = self.patterns.lookup(&mut cache, channel);
        }
        {
            let mut c = crate::sync::lock(&self.remote_compressor);
            self.pack(&mut d, &mut c, &self.remote_compressions);
        }
        self.to_shards(None, &d, false, &mut []);
    }

    /// An entry from another node, checked: compressed here once, then to
    /// every shard with recipients (this thread has no ring: eventfds).
    pub fn deliver_remote(&self, frame: bytes::Bytes, channel: Option<Arc<str>>) {
        let mut d = Delivery::new(frame, channel);
        if let Some(ch) = &d.channel {
            let mut cache = crate::sync::lock(&self.remote_patterns);
            d.patterns = self.patterns.lookup(&mut cache, ch);
        }
        {
            let mut c = crate::sync::lock(&self.remote_compressor);
            self.pack(&mut d, &mut c, &self.remote_compressions);
        }
        self.to_shards(None, &d, false, &mut []);
    }
}
