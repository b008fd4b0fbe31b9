//! Fan-out: broadcasts and channel messages published this turn go to the
//! local sessions and to the other shards' mailboxes (channel messages only
//! to shards with subscribers); publishers are paused while fan-out is
//! behind anywhere.

use super::{touch, Shard};
use crate::server::broadcast::{Delivery, Wake};
use crate::server::channels::slot_of;
use crate::server::WakeMode;

/// Fan-out backlog (connections waiting for a broadcast send, on any shard)
/// above which connections that publish are paused like any other
/// backpressure: publishers are slowed to the rate the fan-out sustains,
/// instead of every subscriber's queue (and latency) growing.
/// (256: it was 4 × the flush budget of 64; kept at 256 when the budget
/// went to 4, where 16 measured 0.76× the deliveries/s of 256.)
const FANOUT_BACKLOG_LIMIT: usize = 256;

impl Shard<'_> {
    /// Whether broadcast fan-out is behind on any shard, or the cluster
    /// backplane behind writing to Redis.
    pub(super) fn fanout_busy(&self) -> bool {
        let shared = self.env.shared;
        shared
            .mailboxes
            .iter()
            .any(|m| m.backlog() > FANOUT_BACKLOG_LIMIT)
            || shared.cluster.as_ref().is_some_and(|c| c.backlogged())
    }

    /// Publishes this shard's fan-out backlog and resumes publishers paused
    /// for fan-out once every shard has caught up.
    pub(super) fn update_fanout(&mut self) {
        let shared = self.env.shared;
        let backlog = self.pushes.len();
        let was = shared.mailboxes[self.id].backlog();
        shared.mailboxes[self.id].set_backlog(backlog);
        if was > FANOUT_BACKLOG_LIMIT && backlog <= FANOUT_BACKLOG_LIMIT {
            // Caught up: shards with paused publishers may be asleep.
            for (i, m) in shared.mailboxes.iter().enumerate() {
                if i != self.id {
                    m.wake_external();
                }
            }
        }
        if self.fanout_paused.is_empty() || self.fanout_busy() {
            return;
        }
        for key in std::mem::take(&mut self.fanout_paused) {
            if let Some(e) = self.sessions.get_mut(key) {
                e.session.set_fanout_paused(false);
                touch(&mut self.sessions, &mut self.touched, key);
            }
        }
    }

    /// Delivers this turn's broadcasts and channel messages: to local
    /// sessions now, and to other shards' mailboxes (a channel message only
    /// to shards with interest in its channel), waking each at most once. A
    /// publisher is paused while fan-out is behind anywhere.
    pub(super) fn deliver_broadcasts(&mut self) {
        let shared = self.env.shared;
        let mut outgoing = std::mem::take(&mut self.env.outgoing);
        let sent_any = !outgoing.is_empty();
        let busy = sent_any && self.fanout_busy();
        let use_ring = shared.config.wake == WakeMode::MsgRing;
        for (d, sender) in outgoing.drain(..) {
            let slot = d.channel.as_deref().map(slot_of);
            for (i, mb) in shared.mailboxes.iter().enumerate() {
                if i == self.id || slot.is_some_and(|s| shared.interest[i].count(s) == 0) {
                    continue;
                }
                if let Wake::Ring(fd) = mb.push(d.clone(), use_ring) {
                    self.wake_targets[i] = Some(fd);
                }
            }
            if busy {
                if let Some(e) = self.sessions.get_mut(sender) {
                    if e.session.wants_read() {
                        e.session.set_fanout_paused(true);
                        self.fanout_paused.push(sender);
                        touch(&mut self.sessions, &mut self.touched, sender);
                    }
                }
            }
            self.deliver_local(&d, Some(sender));
        }
        self.env.outgoing = outgoing;
        if sent_any {
            if let Some(c) = &shared.cluster {
                c.wake_writer();
            }
        }
        let mut inbound = Vec::new();
        shared.mailboxes[self.id].drain(|d| inbound.push(d));
        for d in inbound {
            self.deliver_local(&d, None);
        }
        for i in 0..self.wake_targets.len() {
            if let Some(fd) = self.wake_targets[i].take() {
                self.backend.wake_ring(fd, shared.mailboxes[i].event_fd());
            }
        }
    }

    /// Queues a delivery to this shard's recipients: a broadcast to every
    /// established session but its sender (`except`), a channel message to
    /// the channel's subscribers here (its publisher too, if subscribed).
    fn deliver_local(&mut self, d: &Delivery, except: Option<usize>) {
        let mut keys = std::mem::take(&mut self.recipients);
        match &d.channel {
            None => keys.extend(
                self.sessions
                    .iter()
                    .filter(|(k, e)| Some(*k) != except && e.session.is_established())
                    .map(|(k, _)| k),
            ),
            Some(ch) => keys.extend(self.env.channels.subscribers(ch)),
        }
        let mut delivered = 0;
        for key in keys.drain(..) {
            let Some(e) = self.sessions.get_mut(key) else {
                continue;
            };
            if e.session.push_broadcast(&mut self.env, d) {
                delivered += 1;
                if !e.push_dirty {
                    e.push_dirty = true;
                    self.pushes.push_back(key);
                }
            } else if !e.touched {
                // Cut as a slow consumer: its error frame goes out as a reply.
                e.touched = true;
                self.touched.push(key);
            }
        }
        self.recipients = keys;
        let counter = match d.channel {
            None => &self.env.counters.broadcasts_delivered,
            Some(_) => &self.env.counters.channel_deliveries,
        };
        crate::server::stats::bump(counter, delivered);
    }
}
