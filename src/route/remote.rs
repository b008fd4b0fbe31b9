//! The router as the backplane sees it ([`crate::cluster::Host`]): deliver
//! another node's entry (placed by Redis on a history channel), act on
//! its control entry, the figures for this node's heartbeat (and the other
//! nodes' patterns from theirs), and resume publishers paused for the
//! backplane.

use super::control::Control;
use super::delivery::{Delivery, Target};
use super::Router;
use crate::cluster::entry::{check_frame, place};
use crate::cluster::history::{Loaded, Reply};
use crate::cluster::{ControlOp, Entry, Host};
use crate::protocol::interest::INTEREST_SLOTS;
use crate::protocol::time::unix_ms_now;
use crate::protocol::JsonParser;

impl Host for Router {
    fn deliver(&self, e: Entry) {
        match (e.placed, e.channel) {
            (Some(p), Some(channel)) => {
                self.deliver_history(&channel, p.offset, &p.epoch, e.frame, p.body)
            }
            (_, channel) => self.deliver_remote(e.frame, channel),
        }
    }

    fn placed(&self, reply: Reply, place: Option<(u64, &str)>) {
        let frame = match place {
            Some((offset, epoch)) => {
                match crate::protocol::message::add_position(&reply.frame, offset, epoch) {
                    Some(f) => bytes::Bytes::from(f),
                    None => reply.frame,
                }
            }
            // Placed by an earlier try whose answer was lost: the reply
            // goes without the position it cannot know.
            None => reply.frame,
        };
        let mut d = Delivery::new(frame, None);
        d.to = Some(Target {
            shard: reply.shard,
            conn: reply.conn,
            client_id: reply.client_id,
        });
        if let Some(m) = self.mailboxes.get(reply.shard) {
            // This thread has no ring: the eventfd wakes the shard.
            m.push(d, false);
        }
    }

    fn history_loaded(&self, loaded: Loaded) {
        let Some(history) = &self.history else { return };
        let now_ms = unix_ms_now();
        let (mut parser, mut scratch) = (JsonParser::new(), Vec::new());
        let max = self
            .cluster
            .as_ref()
            .map_or(usize::MAX, |c| c.max_frame_bytes());
        let mut store = crate::sync::lock(history);
        store.set_epoch(&loaded.epoch);
        let (mut kept, mut skipped) = (0u64, 0u64);
        for (channel, top, publications) in loaded.channels {
            // Only a run that ends at the top is kept: a recovery must
            // never span a hole.
            let contiguous = publications.last().is_some_and(|(o, _)| *o == top)
                && publications.windows(2).all(|w| w[1].0 == w[0].0 + 1);
            if !contiguous {
                store.set_top(&channel, now_ms, top);
                continue;
            }
            for (offset, plain) in publications {
                let placed = check_frame(&plain, Some(&channel), max, &mut parser, &mut scratch)
                    .and_then(|()| place(&plain, &channel, offset, &loaded.epoch));
                match placed {
                    Ok((frame, body)) => {
                        store.insert(&channel, now_ms, offset, &loaded.epoch, frame, body);
                        kept += 1;
                    }
                    Err(_) => skipped += 1,
                }
            }
        }
        tracing::info!(epoch = %loaded.epoch, kept, skipped, "channel history loaded from the backplane");
    }

    fn history_epoch(&self, epoch: &str) {
        if let Some(history) = &self.history {
            if crate::sync::lock(history).set_epoch(epoch) {
                tracing::warn!(epoch, "the backplane's history has a new epoch: Redis lost what it held; clients are told they lost messages");
            }
        }
    }

    fn local_figures(
        &self,
        slots: &mut Vec<(usize, u64)>,
        patterns: &mut Vec<(String, u64)>,
    ) -> u64 {
        for slot in 0..INTEREST_SLOTS {
            let n: u64 = self.interest.iter().map(|i| u64::from(i.count(slot))).sum();
            if n > 0 {
                slots.push((slot, n));
            }
        }
        self.patterns
            .each_local(|p, n| patterns.push((p.to_owned(), n)));
        self.connected()
    }

    fn remote_pattern(&self, pattern: &str, old: u64, new: u64) {
        let col = self.patterns.remote();
        self.patterns.set(col, pattern, old as usize, new as usize);
    }

    fn control(&self, op: ControlOp) {
        // Nobody waits for the answer: the node that asked counted its own.
        for m in self.mailboxes.iter() {
            m.push_control(match op.clone() {
                ControlOp::Disconnect { target, reason } => Control::Disconnect {
                    target,
                    reason,
                    reply: Box::new(|_| {}),
                },
                ControlOp::Unsubscribe { target, channel } => Control::Unsubscribe {
                    target,
                    channel,
                    reply: Box::new(|_| {}),
                },
            });
        }
    }

    fn backlog_cleared(&self) {
        // Shards with paused publishers may be asleep.
        for m in self.mailboxes.iter() {
            m.wake_external();
        }
    }
}
