//! The router as the backplane sees it ([`crate::cluster::Host`]): deliver
//! another node's entry, act on its control entry, the figures for this
//! node's heartbeat, and resume publishers paused for the backplane.

use super::control::Control;
use super::Router;
use crate::cluster::{ControlOp, Entry, Host};
use crate::protocol::interest::INTEREST_SLOTS;

impl Host for Router {
    fn deliver(&self, e: Entry) {
        self.deliver_remote(e.frame, e.channel);
    }

    fn local_figures(&self, slots: &mut Vec<(usize, u64)>) -> u64 {
        for slot in 0..INTEREST_SLOTS {
            let n: u64 = self.interest.iter().map(|i| u64::from(i.count(slot))).sum();
            if n > 0 {
                slots.push((slot, n));
            }
        }
        self.connected()
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
