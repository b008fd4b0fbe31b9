//! Fan-out: broadcasts and channel messages published this turn go to the
//! local sessions and to the other shards' mailboxes (channel messages only
//! to shards with subscribers); publishers are paused while fan-out is
//! behind anywhere.

use super::{touch, Shard};
use crate::route::Delivery;
use crate::server::stats::{bump, WAKE_EVENTFD, WAKE_MSG_RING};
use crate::server::Shared;

/// Deliveries the longest-waiting recipient on a shard may wait through
/// before connections that publish (on every shard) are paused like any
/// other backpressure, so publishers slow to the rate fan-out sustains
/// instead of every subscriber's queue (and latency) growing.
///
/// The depth, not the number of recipients behind: with 500 subscribers a
/// shard, any broadcast puts hundreds behind, and a rule counting them
/// paused the publisher after every batch, so each send carried ~8
/// broadcasts. Letting queues reach this depth makes each send carry up to
/// `MAX_SEND_SEGMENTS` of them. Broadcast 1 → 1,000 (issue 15, medians of
/// 3, one run; 2 cores): the count rule 1.95 M deliveries/s, depth 32
/// 2.95 M, 64 3.30–3.42 M, 128 3.96–4.54 M (p99 31–36 ms), 256 4.98 M
/// (p99 48 ms), 512 4.98 M (p99 85 ms); the tokio baseline 2.45–2.93 M at
/// p99 37–40 ms. 128 is the deepest with a p99 below the baseline's.
/// Since small broadcasts are gathered into runs (see `queue_local`),
/// 64–512 measure alike (4.1–4.9 M, p99 18–20 ms); 128 stayed.
const FANOUT_DEPTH_LIMIT: u64 = 128;

impl Shard<'_> {
    /// Whether broadcast fan-out is behind on any shard, or the cluster
    /// backplane behind writing to Redis.
    pub(super) fn fanout_busy(&self) -> bool {
        let router = &self.shared.router;
        router.mailboxes.iter().any(|m| m.fanout_behind())
            || router.cluster.as_ref().is_some_and(|c| c.backlogged())
    }

    /// Whether this shard's fan-out is behind: its longest-waiting
    /// recipient has waited through more than `FANOUT_DEPTH_LIMIT`
    /// deliveries, or holds more than half of `max_pending_bytes` (large
    /// broadcasts: publishers are paused before a recipient that keeps up
    /// is cut as a slow consumer). Entries of closed sessions at the front
    /// are dropped on the way.
    fn fanout_behind_here(&mut self) -> bool {
        let max_pending = self.shared.config.max_pending_bytes;
        while let Some(&(key, mark)) = self.pushes.front() {
            match self.sessions.get(key) {
                Some(e) if e.push_dirty => {
                    return self.fanout_seq - mark > FANOUT_DEPTH_LIMIT
                        || e.session.pending() > max_pending / 2;
                }
                _ => {
                    self.pushes.pop_front();
                }
            }
        }
        false
    }

    /// Publishes whether this shard's fan-out is behind, and resumes
    /// publishers paused for fan-out once every shard has caught up.
    pub(super) fn update_fanout(&mut self) {
        let mailboxes = &self.shared.router.mailboxes;
        let behind = self.fanout_behind_here();
        let was = mailboxes[self.id].fanout_behind();
        mailboxes[self.id].set_fanout_behind(behind);
        if was && !behind {
            // Caught up: shards with paused publishers may be asleep.
            for (i, m) in mailboxes.iter().enumerate() {
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
        let shared: &Shared = self.shared;
        let router = &*shared.router;
        let mut outgoing = std::mem::take(&mut self.env.host.outgoing);
        let sent_any = !outgoing.is_empty();
        let busy = sent_any && self.fanout_busy();
        let msg_ring = router.settings.msg_ring;
        // History publications went to the mailboxes (this shard's too)
        // under the history lock; only their wake-ups are left to post.
        let host = &mut self.env.host;
        for (i, w) in host.ring_wakes.iter_mut().enumerate() {
            if let Some(fd) = w.take() {
                self.wake_targets[i] = Some(fd);
            }
        }
        bump(
            &self.env.counters.wakeups[WAKE_EVENTFD],
            std::mem::take(&mut host.eventfd_wakes),
        );
        for (d, sender) in outgoing.drain(..) {
            let in_order = d.history_seq.is_some();
            if !in_order {
                let by_eventfd =
                    router.to_shards(Some(self.id), &d, msg_ring, &mut self.wake_targets);
                bump(&self.env.counters.wakeups[WAKE_EVENTFD], by_eventfd);
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
            if !in_order {
                self.queue_local(d, Some(sender));
            }
        }
        self.env.host.outgoing = outgoing;
        if sent_any {
            if let Some(c) = &router.cluster {
                c.wake_writer();
            }
        }
        let mut inbound = Vec::new();
        router.mailboxes[self.id].drain(|d| inbound.push(d));
        for d in inbound {
            self.queue_local(d, None);
        }
        self.deliver_run();
        for i in 0..self.wake_targets.len() {
            if let Some(fd) = self.wake_targets[i].take() {
                let path = match self.backend.wake_ring(fd, router.mailboxes[i].event_fd()) {
                    true => WAKE_MSG_RING,
                    false => WAKE_EVENTFD,
                };
                bump(&self.env.counters.wakeups[path], 1);
            }
        }
    }

    /// Queues a delivery for this shard's recipients, in order: small
    /// broadcasts from one sender (or from other shards) are held in `run`
    /// and go out gathered into one (see [`Delivery::gather`]); anything
    /// else first delivers the run, then itself.
    fn queue_local(&mut self, d: Delivery, except: Option<usize>) {
        if !self.run.is_empty() && (self.run_except != except || !d.gatherable()) {
            self.deliver_run();
        }
        if d.gatherable() {
            self.run_except = except;
            self.run.push(d);
        } else {
            self.deliver_local(&d, except);
        }
    }

    /// Delivers the gathered run of broadcasts, if any.
    fn deliver_run(&mut self) {
        let mut run = std::mem::take(&mut self.run);
        match run.len() {
            0 => {}
            1 => self.deliver_local(&run[0], self.run_except),
            _ => self.deliver_local(&Delivery::gather(&run), self.run_except),
        }
        run.clear();
        self.run = run;
    }

    /// Queues a delivery to this shard's recipients: a broadcast to every
    /// established session but its sender (`except`), a channel message to
    /// the channel's subscribers here (its publisher too, if subscribed).
    fn deliver_local(&mut self, d: &Delivery, except: Option<usize>) {
        let mut keys = std::mem::take(&mut self.recipients);
        if let Some(t) = &d.to {
            // A reply for one session, if it is still the one it was for.
            let alive = self
                .sessions
                .get(t.conn)
                .is_some_and(|e| e.session.client_id() == &*t.client_id);
            if alive {
                keys.push(t.conn);
            }
        }
        match &d.channel {
            _ if d.to.is_some() => {}
            None => keys.extend(
                self.sessions
                    .iter()
                    .filter(|(k, e)| Some(*k) != except && e.session.is_established())
                    .map(|(k, _)| k),
            ),
            Some(ch) => self
                .env
                .host
                .channels
                .recipients(ch, d.history_mark(), &mut keys),
        }
        let mut delivered = 0;
        // Recipients joining the round robin now have waited through
        // nothing yet: their mark is the count before this delivery.
        let mark = self.fanout_seq;
        self.fanout_seq += d.frames;
        for key in keys.drain(..) {
            let Some(e) = self.sessions.get_mut(key) else {
                continue;
            };
            if e.session
                .push_broadcast(&mut self.env, &d.frame, &d.packed, d.frames)
            {
                delivered += d.frames;
                if !e.push_dirty {
                    e.push_dirty = true;
                    self.pushes.push_back((key, mark));
                }
            } else if !e.touched {
                // Cut as a slow consumer: its error frame goes out as a reply.
                e.touched = true;
                self.touched.push(key);
            }
        }
        self.recipients = keys;
        if d.to.is_some() {
            return; // a reply, not a delivery
        }
        if let Some(ch) = &d.channel {
            self.env.host.channels.count_delivery(ch, delivered);
        }
        let counter = match d.channel {
            None => &self.env.counters.broadcasts_delivered,
            Some(_) => &self.env.counters.channel_deliveries,
        };
        crate::server::stats::bump(counter, delivered);
    }
}
