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
//!
//! Pattern subscriptions (`a.*`, `a.>`) live beside the channels in a
//! token trie ([`Sublist`]) of the shard's sessions, and their interest in
//! the node's [`PatternInterest`]: a pattern may match a channel in any
//! slot, so it counts in no slot (see [`super::patterns`]).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;

pub use crate::protocol::interest::{slot_of, Interest, INTEREST_SLOTS};
use std::sync::Arc;

use super::patterns::PatternInterest;
use super::sublist::Sublist;
use crate::protocol::pattern::is_pattern;
use crate::session::counters::ShardCounters;

/// A shard's row of the node's interest, which its index keeps in step:
/// its slot counts and its share of the pattern interest.
#[derive(Debug, Clone, Copy)]
pub struct Row<'a> {
    /// The shard's subscriber counts per slot.
    pub slots: &'a Interest,
    /// The node's patterns, with each shard's subscribers of each.
    pub patterns: &'a PatternInterest,
    /// The shard.
    pub shard: usize,
}

pub use crate::session::SubscribeError;

/// One shard's subscriber index. Sessions are named by their shard key.
///
/// A session's subscriptions (`by_session`, bounded by
/// `max_subscriptions`) are its channels and its patterns; a channel's
/// recipients are its subscribers and the sessions a pattern of which
/// matches it, each once.
///
/// Each subscription of a history channel has a mark: the history store's
/// sequence when it began (`history::Store::seq`). A delivery at or below
/// it (already replayed, or from before the position `subscribed`
/// reported, still in a mailbox) is not delivered to that session.
#[derive(Debug, Default)]
pub struct ChannelIndex {
    channels: HashMap<Arc<str>, Members>,
    patterns: Sublist<usize>,
    by_session: HashMap<usize, HashSet<Arc<str>>>,
    subscriptions: usize,
}

/// A channel's subscribers on a shard (each with its history mark), and
/// what the shard delivered on it since it last had none (for
/// `GET /v1/channels`: plain fields, this shard alone writes them).
#[derive(Debug, Default)]
struct Members {
    subs: HashMap<usize, Mark>,
    publishes: u64,
    deliveries: u64,
}

/// Where a subscription to a history channel begins, or where a history
/// delivery stands: the store's sequence, and the store epoch's generation
/// with an offset in it. A delivery reaches a subscription only if it came
/// after the subscription's `seq` and, within the same generation, after
/// its `floor` offset: a recovery from an offset this node's mirror has
/// not read yet (the client saw it on a faster node) skips what it has.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Mark {
    /// The history store's sequence.
    pub seq: u64,
    /// The generation of the store's epoch (a mirror's changes when Redis
    /// loses its data).
    pub gen: u64,
    /// An offset: of a subscription, the last it has; of a delivery, its own.
    pub floor: u64,
}

impl Mark {
    /// Whether delivery `d` comes after subscription mark `self`.
    fn admits(&self, d: &Mark) -> bool {
        d.seq > self.seq && (d.gen != self.gen || d.floor > self.floor)
    }
}

impl ChannelIndex {
    /// Subscribes `session` to `channel`, a channel or a pattern (again
    /// is a no-op), publishing the interest in `row`; on a history
    /// channel, deliveries up to `mark` are skipped for it. Returns the
    /// subscriptions the session now holds.
    pub fn subscribe(
        &mut self,
        row: Row<'_>,
        session: usize,
        channel: &str,
        max: usize,
        mark: Mark,
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
        self.subscriptions += 1;
        if is_pattern(channel) {
            if let Some(n) = self.patterns.insert(channel, session) {
                row.patterns.set(row.shard, channel, n - 1, n);
            }
        } else {
            self.channels
                .entry(name)
                .or_default()
                .subs
                .insert(session, mark);
            row.slots.add(slot_of(channel));
        }
        Ok(held)
    }

    /// Unsubscribes `session` from `channel` (or a pattern) if it was
    /// subscribed. Returns the subscriptions the session now holds.
    pub fn unsubscribe(&mut self, row: Row<'_>, session: usize, channel: &str) -> usize {
        let Some(mine) = self.by_session.get_mut(&session) else {
            return 0;
        };
        let removed = mine.remove(channel);
        let held = mine.len();
        if held == 0 {
            self.by_session.remove(&session);
        }
        if removed {
            self.remove_member(row, session, channel);
        }
        held
    }

    /// Drops every subscription of `session` (it disconnected). Returns
    /// how many it held.
    pub fn drop_session(&mut self, row: Row<'_>, session: usize) -> usize {
        let Some(mine) = self.by_session.remove(&session) else {
            return 0;
        };
        for channel in &mine {
            self.remove_member(row, session, channel);
        }
        mine.len()
    }

    fn remove_member(&mut self, row: Row<'_>, session: usize, channel: &str) {
        self.subscriptions -= 1;
        if is_pattern(channel) {
            if let Some(n) = self.patterns.remove(channel, session) {
                row.patterns.set(row.shard, channel, n + 1, n);
            }
            return;
        }
        if let Some(members) = self.channels.get_mut(channel) {
            if members.subs.remove(&session).is_some() {
                row.slots.remove(slot_of(channel));
            }
            if members.subs.is_empty() {
                self.channels.remove(channel);
            }
        }
    }

    /// The channels and patterns `session` is subscribed to.
    pub fn channels_of(&self, session: usize) -> Vec<Arc<str>> {
        self.by_session
            .get(&session)
            .map_or_else(Vec::new, |m| m.iter().cloned().collect())
    }

    /// The sessions subscribed to `channel` itself on this shard (not by
    /// a pattern).
    pub fn subscribers(&self, channel: &str) -> impl Iterator<Item = usize> + '_ {
        self.channels
            .get(channel)
            .into_iter()
            .flat_map(|m| &m.subs)
            .map(|(k, _)| *k)
    }

    /// Pushes to `out` the sessions on this shard that get a delivery to
    /// `channel`, each once: its subscribers (for a history publication,
    /// at its mark, those whose subscription began before it), and
    /// the sessions with a matching pattern that are not subscribers of
    /// the channel itself (a subscriber's own subscription decides, so a
    /// publication it was replayed is not delivered again by a pattern).
    pub fn recipients(&mut self, channel: &str, at: Option<Mark>, out: &mut Vec<usize>) {
        let exact = self.channels.get(channel);
        if let Some(members) = exact {
            out.extend(
                members
                    .subs
                    .iter()
                    .filter(|(_, mark)| at.is_none_or(|d| mark.admits(&d)))
                    .map(|(k, _)| *k),
            );
        }
        if self.patterns.pattern_count() == 0 {
            return;
        }
        let matched = self.patterns.matches(channel);
        match exact {
            None => out.extend(matched.iter().copied()),
            Some(m) => out.extend(matched.iter().filter(|k| !m.subs.contains_key(k)).copied()),
        }
    }

    /// Whether `session` is subscribed to `channel`.
    pub fn is_subscribed(&self, session: usize, channel: &str) -> bool {
        self.by_session
            .get(&session)
            .is_some_and(|m| m.contains(channel))
    }

    /// How many sessions on this shard get a delivery to `channel`
    /// (subscribers and matching patterns, each session once).
    pub fn subscriber_count(&mut self, channel: &str) -> usize {
        let exact = self.channels.get(channel);
        let n = exact.map_or(0, |m| m.subs.len());
        if self.patterns.pattern_count() == 0 {
            return n;
        }
        let matched = self.patterns.matches(channel);
        n + match exact {
            None => matched.len(),
            Some(m) => matched.iter().filter(|k| !m.subs.contains_key(k)).count(),
        }
    }

    /// Distinct patterns with at least one subscriber on this shard.
    pub fn pattern_count(&self) -> usize {
        self.patterns.pattern_count()
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

    /// Channels with at least one subscriber on this shard.
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// Subscriptions (channels and patterns) held on this shard.
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

    fn row<'a>(slots: &'a Interest, patterns: &'a PatternInterest) -> Row<'a> {
        Row {
            slots,
            patterns,
            shard: 0,
        }
    }

    #[test]
    fn subscribe_unsubscribe_drop_keep_index_and_interest_in_step() {
        let (slots, patterns) = (Interest::default(), PatternInterest::new(1));
        let interest = row(&slots, &patterns);
        let mut ix = ChannelIndex::default();
        let (a, b) = (slot_of("a"), slot_of("b"));
        assert_eq!(ix.subscribe(interest, 1, "a", 2, Mark::default()), Ok(1));
        assert_eq!(
            ix.subscribe(interest, 1, "a", 2, Mark::default()),
            Ok(1),
            "again is a no-op"
        );
        assert_eq!(ix.subscribe(interest, 2, "a", 2, Mark::default()), Ok(1));
        assert_eq!(ix.subscribe(interest, 1, "b", 2, Mark::default()), Ok(2));
        assert_eq!(
            ix.subscribe(interest, 1, "c", 2, Mark::default()),
            Err(SubscribeError::TooMany)
        );
        assert_eq!(slots.count(a), 2);
        assert_eq!(slots.count(b), 1);
        assert_eq!((ix.channel_count(), ix.subscription_count()), (2, 3));
        let mut subs: Vec<usize> = ix.subscribers("a").collect();
        subs.sort_unstable();
        assert_eq!(subs, [1, 2]);

        assert_eq!(ix.unsubscribe(interest, 2, "b"), 1, "not subscribed: no-op");
        assert_eq!(ix.unsubscribe(interest, 9, "a"), 0, "unknown session");
        assert_eq!(ix.unsubscribe(interest, 2, "a"), 0);
        assert_eq!(slots.count(a), 1);
        assert_eq!(ix.drop_session(interest, 1), 2);
        assert_eq!(ix.drop_session(interest, 1), 0);
        assert_eq!((slots.count(a), slots.count(b)), (0, 0));
        assert_eq!((ix.channel_count(), ix.subscription_count()), (0, 0));
        assert_eq!(ix.subscribers("a").count(), 0);
    }

    #[test]
    fn a_history_delivery_skips_subscriptions_that_began_at_or_after_it() {
        let (slots, patterns) = (Interest::default(), PatternInterest::new(1));
        let interest = row(&slots, &patterns);
        let mut ix = ChannelIndex::default();
        let at = |seq, gen, floor| Mark { seq, gen, floor };
        ix.subscribe(interest, 1, "h", 10, Mark::default()).unwrap();
        ix.subscribe(interest, 2, "h", 10, at(5, 0, 0)).unwrap();
        // 3 recovered from offset 20, which this node has not read yet.
        ix.subscribe(interest, 3, "h", 10, at(5, 0, 20)).unwrap();
        let mut of = |d: Option<Mark>| {
            let mut v = Vec::new();
            ix.recipients("h", d, &mut v);
            v.sort_unstable();
            v
        };
        assert_eq!(
            of(Some(at(5, 0, 5))),
            [1],
            "5 was replayed to 2, or before its position"
        );
        assert_eq!(of(Some(at(6, 0, 20))), [1, 2], "3 has offset 20");
        assert_eq!(of(Some(at(7, 0, 21))), [1, 2, 3]);
        assert_eq!(of(Some(at(7, 1, 1))), [1, 2, 3], "a new epoch: floors end");
        assert_eq!(of(None), [1, 2, 3]);
        assert!(ix.is_subscribed(2, "h") && !ix.is_subscribed(4, "h"));
    }

    #[test]
    fn a_session_matched_by_a_channel_and_patterns_is_a_recipient_once() {
        let (slots, patterns) = (Interest::default(), PatternInterest::new(1));
        let interest = row(&slots, &patterns);
        let mut ix = ChannelIndex::default();
        ix.subscribe(interest, 1, "a.b", 10, Mark::default())
            .unwrap();
        ix.subscribe(interest, 1, "a.*", 10, Mark::default())
            .unwrap();
        assert_eq!(ix.subscribe(interest, 1, "a.>", 10, Mark::default()), Ok(3));
        ix.subscribe(interest, 2, "*.b", 10, Mark::default())
            .unwrap();
        ix.subscribe(interest, 3, "a.c", 10, Mark::default())
            .unwrap();
        let mut of = |ch: &str| {
            let mut v = Vec::new();
            ix.recipients(ch, None, &mut v);
            v.sort_unstable();
            v
        };
        assert_eq!(of("a.b"), [1, 2]);
        assert_eq!(of("a.c"), [1, 3]);
        assert_eq!(of("a.b.c"), [1]);
        assert_eq!(ix.subscriber_count("a.b"), 2);
        assert_eq!(slots.count(slot_of("a.*")), 0, "a pattern holds no slot");
        assert_eq!((ix.subscription_count(), ix.pattern_count()), (5, 3));
        assert_eq!(patterns.len(), 3, "the node's pattern interest");

        // A pattern counts toward max_subscriptions.
        assert_eq!(
            ix.subscribe(interest, 2, "x.*", 1, Mark::default()),
            Err(SubscribeError::TooMany)
        );
        // Unsubscribing one of two overlapping subscriptions keeps the other.
        assert_eq!(ix.unsubscribe(interest, 1, "a.*"), 2);
        let mut v = Vec::new();
        ix.recipients("a.b", None, &mut v);
        v.sort_unstable();
        assert_eq!(v, [1, 2]);
        assert_eq!(ix.drop_session(interest, 1), 2);
        assert_eq!(patterns.len(), 1, "only *.b is still held");
        assert_eq!(ix.drop_session(interest, 2), 1);
        assert!(patterns.is_empty());
        assert_eq!(ix.subscription_count(), 1);
    }
}
