//! The router as the backplane sees it ([`crate::cluster::Host`]): deliver
//! another node's entry, the figures for this node's heartbeat (and the
//! other nodes' patterns from theirs), and resume
//! publishers paused for the backplane.

use super::Router;
use crate::cluster::{Entry, Host};
use crate::protocol::interest::INTEREST_SLOTS;

impl Host for Router {
    fn deliver(&self, e: Entry) {
        self.deliver_remote(e.frame, e.channel);
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

    fn backlog_cleared(&self) {
        // Shards with paused publishers may be asleep.
        for m in self.mailboxes.iter() {
            m.wake_external();
        }
    }
}
