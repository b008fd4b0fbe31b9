//! Channels: each shard's subscriber index, and the interest table through
//! which a publish finds the shards that have subscribers.
//!
//! A shard alone writes its [`ChannelIndex`] (channel → its sessions there,
//! session → its channels) and its row of the [`Interest`] table:
//! subscriber counts per hash slot of the channel name, read by every
//! other shard with relaxed loads. A publish reads one slot per shard, with
//! no lock, and crosses only to shards whose slot is non-zero. Two channels
//! that share a slot cost a shard an unneeded hop now and then (it finds no
//! local subscriber and drops the frame); they never lose a delivery.
//! The table itself is [`crate::protocol::interest`].

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;

pub use crate::protocol::interest::{slot_of, Interest, INTEREST_SLOTS};
use std::sync::Arc;

use crate::session::counters::ShardCounters;

pub use crate::session::SubscribeError;

/// One shard's subscriber index. Sessions are named by their shard key.
///
/// Each subscription of a history channel has a mark: the history store's
/// sequence when it began (`history::Store::seq`). A delivery at or below
/// it (already replayed, or from before the position `subscribed`
/// reported, still in a mailbox) is not delivered to that session.
#[derive(Debug, Default)]
pub struct ChannelIndex {
    channels: HashMap<Arc<str>, Members>,
    by_session: HashMap<usize, HashSet<Arc<str>>>,
    subscriptions: usize,
}

/// A channel's subscribers on a shard (each with its history mark), and
/// what the shard delivered on it since it last had none (for
/// `GET /v1/channels`: plain fields, this shard alone writes them).
#[derive(Debug, Default)]
struct Members {
    subs: HashMap<usize, u64>,
    publishes: u64,
    deliveries: u64,
}

impl ChannelIndex {
    /// Subscribes `session` to `channel` (again is a no-op), publishing the
    /// interest in `interest`; on a history channel, deliveries up to
    /// `mark` (a history sequence) are skipped for it. Returns the channels the session
    /// now holds.
    pub fn subscribe(
        &mut self,
        interest: &Interest,
        session: usize,
        channel: &str,
        max: usize,
        mark: u64,
    ) -> Result<usize, SubscribeError> {
        let mine = self.by_session.entry(session).or_default();
        if mine.contains(channel) {
            return Ok(mine.len());
        }
        if mine.len() >= max {
            return Err(SubscribeError::TooMany);
        }
        let name: Arc<str> = match self.channels.get_key_value(channel) {
            Some((k, _)) => k.clone(),
            None => Arc::from(channel),
        };
        mine.insert(name.clone());
        let held = mine.len();
        self.channels
            .entry(name)
            .or_default()
            .subs
            .insert(session, mark);
        self.subscriptions += 1;
        interest.add(slot_of(channel));
        Ok(held)
    }

    /// Unsubscribes `session` from `channel` if it was subscribed. Returns
    /// the channels the session now holds.
    pub fn unsubscribe(&mut self, interest: &Interest, session: usize, channel: &str) -> usize {
        let Some(mine) = self.by_session.get_mut(&session) else {
            return 0;
        };
        let removed = mine.remove(channel);
        let held = mine.len();
        if held == 0 {
            self.by_session.remove(&session);
        }
        if removed {
            self.remove_member(interest, session, channel);
        }
        held
    }

    /// Drops every subscription of `session` (it disconnected). Returns
    /// how many it held.
    pub fn drop_session(&mut self, interest: &Interest, session: usize) -> usize {
        let Some(mine) = self.by_session.remove(&session) else {
            return 0;
        };
        for channel in &mine {
            self.remove_member(interest, session, channel);
        }
        mine.len()
    }

    fn remove_member(&mut self, interest: &Interest, session: usize, channel: &str) {
        if let Some(members) = self.channels.get_mut(channel) {
            if members.subs.remove(&session).is_some() {
                self.subscriptions -= 1;
                interest.remove(slot_of(channel));
            }
            if members.subs.is_empty() {
                self.channels.remove(channel);
            }
        }
    }

    /// The sessions subscribed to `channel` on this shard.
    pub fn subscribers(&self, channel: &str) -> impl Iterator<Item = usize> + '_ {
        self.subscribers_of(channel, None)
    }

    /// The sessions on this shard that get a delivery to `channel`: every
    /// subscriber, or for a history publication (its `history_seq`),
    /// those whose subscription began before it.
    pub fn subscribers_of(
        &self,
        channel: &str,
        history_seq: Option<u64>,
    ) -> impl Iterator<Item = usize> + '_ {
        let after = history_seq.unwrap_or(u64::MAX);
        self.channels
            .get(channel)
            .into_iter()
            .flat_map(|m| &m.subs)
            .filter(move |(_, mark)| **mark < after)
            .map(|(k, _)| *k)
    }

    /// Whether `session` is subscribed to `channel`.
    pub fn is_subscribed(&self, session: usize, channel: &str) -> bool {
        self.by_session
            .get(&session)
            .is_some_and(|m| m.contains(channel))
    }

    /// How many sessions on this shard are subscribed to `channel`.
    pub fn subscriber_count(&self, channel: &str) -> usize {
        self.channels.get(channel).map_or(0, |m| m.subs.len())
    }

    /// Counts one publication on `channel` queued to `delivered`
    /// subscribers here (the shard's fan-out, once per delivery).
    pub fn count_delivery(&mut self, channel: &str, delivered: u64) {
        if let Some(m) = self.channels.get_mut(channel) {
            m.publishes += 1;
            m.deliveries += delivered;
        }
    }

    /// Each channel with subscribers here: its name, subscribers,
    /// publications and deliveries (see [`ChannelIndex::count_delivery`]).
    pub fn channel_figures(&self) -> impl Iterator<Item = (&Arc<str>, u64, u64, u64)> + '_ {
        self.channels
            .iter()
            .map(|(c, m)| (c, m.subs.len() as u64, m.publishes, m.deliveries))
    }

    /// The channels `session` is subscribed to.
    pub fn channels_of(&self, session: usize) -> impl Iterator<Item = &Arc<str>> + '_ {
        self.by_session.get(&session).into_iter().flatten()
    }

    /// Channels with at least one subscriber on this shard.
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// Subscriptions held on this shard.
    pub fn subscription_count(&self) -> usize {
        self.subscriptions
    }

    /// Mirrors the index's sizes into the shard's gauges (after a change).
    pub fn store_gauges(&self, counters: &ShardCounters) {
        counters
            .channels
            .store(self.channels.len() as u64, Ordering::Relaxed);
        counters
            .subscriptions
            .store(self.subscriptions as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribe_unsubscribe_drop_keep_index_and_interest_in_step() {
        let interest = Interest::default();
        let mut ix = ChannelIndex::default();
        let (a, b) = (slot_of("a"), slot_of("b"));
        assert_eq!(ix.subscribe(&interest, 1, "a", 2, 0), Ok(1));
        assert_eq!(
            ix.subscribe(&interest, 1, "a", 2, 0),
            Ok(1),
            "again is a no-op"
        );
        assert_eq!(ix.subscribe(&interest, 2, "a", 2, 0), Ok(1));
        assert_eq!(ix.subscribe(&interest, 1, "b", 2, 0), Ok(2));
        assert_eq!(
            ix.subscribe(&interest, 1, "c", 2, 0),
            Err(SubscribeError::TooMany)
        );
        assert_eq!(interest.count(a), 2);
        assert_eq!(interest.count(b), 1);
        assert_eq!((ix.channel_count(), ix.subscription_count()), (2, 3));
        let mut subs: Vec<usize> = ix.subscribers("a").collect();
        subs.sort_unstable();
        assert_eq!(subs, [1, 2]);

        assert_eq!(
            ix.unsubscribe(&interest, 2, "b"),
            1,
            "not subscribed: no-op"
        );
        assert_eq!(ix.unsubscribe(&interest, 9, "a"), 0, "unknown session");
        assert_eq!(ix.unsubscribe(&interest, 2, "a"), 0);
        assert_eq!(interest.count(a), 1);
        assert_eq!(ix.drop_session(&interest, 1), 2);
        assert_eq!(ix.drop_session(&interest, 1), 0);
        assert_eq!((interest.count(a), interest.count(b)), (0, 0));
        assert_eq!((ix.channel_count(), ix.subscription_count()), (0, 0));
        assert_eq!(ix.subscribers("a").count(), 0);
    }

    #[test]
    fn a_history_delivery_skips_subscriptions_that_began_at_or_after_it() {
        let interest = Interest::default();
        let mut ix = ChannelIndex::default();
        ix.subscribe(&interest, 1, "h", 10, 0).unwrap();
        ix.subscribe(&interest, 2, "h", 10, 5).unwrap();
        let of = |offset| {
            let mut v: Vec<usize> = ix.subscribers_of("h", offset).collect();
            v.sort_unstable();
            v
        };
        assert_eq!(
            of(Some(5)),
            [1],
            "5 was replayed to 2, or before its position"
        );
        assert_eq!(of(Some(6)), [1, 2]);
        assert_eq!(of(None), [1, 2]);
        assert!(ix.is_subscribed(2, "h") && !ix.is_subscribed(3, "h"));
    }
}
