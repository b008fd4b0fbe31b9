//! Pattern subscriptions: a token trie with `*` and `>` children and a
//! bounded match cache, the structure NATS's `server/sublist.go` uses.
//!
//! A pattern is stored as its `.`-separated tokens, one trie level per
//! token: a literal token is a child by name, `*` the level's one
//! single-token wildcard child, a last `>` its one multi-token child. A
//! channel is matched by walking its tokens: at each level the literal
//! child, the `*` child and (ending the walk there) the `>` child. The
//! cost is bounded by the channel's tokens times the wildcard branches
//! actually present, not by the number of patterns.
//!
//! Matches are cached per channel name: publications to a channel mostly
//! repeat, so most lookups are one hash probe. The cache is bounded
//! ([`CACHE_MAX`], swept down to [`CACHE_SWEEP`] when full, as NATS does)
//! and cleared on any insert or removal, so it never answers from an
//! older set of patterns.
//!
//! Which names are patterns, and whether one is valid, is the protocol's
//! (`protocol::pattern`); this module only stores and matches tokens.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::sync::Arc;

/// The cache holds at most this many channels' matches. NATS's
/// `slCacheMax`: a shard's hot channels fit, and a flood of distinct
/// names costs at most this many entries of memory.
pub const CACHE_MAX: usize = 1024;
/// A full cache is swept down to this many entries (NATS's
/// `slCacheSweep`), so a sweep is amortised over many insertions.
pub const CACHE_SWEEP: usize = 256;

use crate::protocol::pattern::{ONE, REST};

/// A set of patterns, each with the members (`T`: a session, a shard)
/// that hold it, matched against channel names.
#[derive(Debug)]
pub struct Sublist<T> {
    root: Level<T>,
    /// Distinct patterns held by at least one member.
    patterns: usize,
    /// (pattern, member) pairs.
    entries: usize,
    cache: HashMap<Box<str>, Arc<[T]>>,
    /// Matches found by a walk (cache misses) and served from the cache.
    pub misses: u64,
    /// See `misses`.
    pub hits: u64,
    scratch: Vec<T>,
}

#[derive(Debug, Clone)]
struct Level<T> {
    literal: HashMap<Box<str>, Node<T>>,
    one: Option<Box<Node<T>>>,
    rest: Option<Box<Node<T>>>,
}

#[derive(Debug, Clone)]
struct Node<T> {
    /// Members holding the pattern that ends here.
    members: HashSet<T>,
    next: Option<Box<Level<T>>>,
}

impl<T> Default for Level<T> {
    fn default() -> Self {
        Level {
            literal: HashMap::new(),
            one: None,
            rest: None,
        }
    }
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Node {
            members: HashSet::new(),
            next: None,
        }
    }
}

impl<T> Default for Sublist<T> {
    fn default() -> Self {
        Sublist {
            root: Level::default(),
            patterns: 0,
            entries: 0,
            cache: HashMap::new(),
            misses: 0,
            hits: 0,
            scratch: Vec::new(),
        }
    }
}

impl<T> Level<T> {
    fn child(&mut self, token: &str) -> &mut Node<T> {
        match token {
            ONE => self.one.get_or_insert_with(Box::default),
            REST => self.rest.get_or_insert_with(Box::default),
            _ => self.literal.entry(token.into()).or_default(),
        }
    }

    fn is_empty(&self) -> bool {
        self.literal.is_empty() && self.one.is_none() && self.rest.is_none()
    }
}

impl<T> Node<T> {
    fn is_empty(&self) -> bool {
        self.members.is_empty() && self.next.is_none()
    }
}

impl<T: Copy + Clone + Eq + Hash + Ord> Sublist<T> {
    /// Adds `member` to `pattern` (a valid pattern, or a plain name).
    /// Returns the pattern's members now, or `None` if `member` already
    /// held it (a no-op). `Some(1)`: the pattern is new to the set.
    pub fn insert(&mut self, pattern: &str, member: T) -> Option<usize> {
        let mut tokens = pattern.split('.');
        let first = tokens.next().unwrap_or_default();
        let mut node = self.root.child(first);
        for t in tokens {
            node = node.next.get_or_insert_with(Box::default).child(t);
        }
        if !node.members.insert(member) {
            return None;
        }
        let n = node.members.len();
        self.entries += 1;
        self.patterns += usize::from(n == 1);
        self.cache.clear();
        Some(n)
    }

    /// Removes `member` from `pattern`. Returns the pattern's members
    /// left, or `None` if `member` did not hold it (a no-op). `Some(0)`:
    /// the pattern left the set. Empty trie nodes are pruned.
    pub fn remove(&mut self, pattern: &str, member: T) -> Option<usize> {
        let tokens: Vec<&str> = pattern.split('.').collect();
        let left = remove_in(&mut self.root, &tokens, member)?;
        self.entries -= 1;
        self.patterns -= usize::from(left == 0);
        self.cache.clear();
        Some(left)
    }

    /// The members whose patterns match `channel`, each once, sorted;
    /// from the cache when it has the channel.
    pub fn matches(&mut self, channel: &str) -> Arc<[T]> {
        if let Some(m) = self.cache.get(channel) {
            self.hits += 1;
            return m.clone();
        }
        self.misses += 1;
        let mut out = std::mem::take(&mut self.scratch);
        out.clear();
        self.for_each_match(channel, |m| out.push(*m));
        out.sort_unstable();
        out.dedup();
        let found: Arc<[T]> = Arc::from(&out[..]);
        self.scratch = out;
        if self.cache.len() >= CACHE_MAX {
            // Iteration order is the hash's: an arbitrary choice of
            // survivors, as NATS's sweep over a Go map.
            let mut keep = CACHE_SWEEP;
            self.cache.retain(|_, _| {
                keep = keep.saturating_sub(1);
                keep > 0
            });
        }
        self.cache.insert(channel.into(), found.clone());
        found
    }

    /// Calls `f` with the member of every (pattern, member) pair whose
    /// pattern matches `channel` (a member of several matching patterns
    /// once per pattern). No cache, no allocation: for a shared,
    /// read-only set.
    pub fn for_each_match(&self, channel: &str, mut f: impl FnMut(&T)) {
        collect(&self.root, channel.split('.'), &mut f);
    }

    /// A copy of the patterns and their members, with an empty cache (a
    /// snapshot to share read-only: see [`Sublist::for_each_match`]).
    pub fn snapshot(&self) -> Sublist<T> {
        Sublist {
            root: self.root.clone(),
            patterns: self.patterns,
            entries: self.entries,
            ..Sublist::default()
        }
    }

    /// Distinct patterns held.
    pub fn pattern_count(&self) -> usize {
        self.patterns
    }

    /// (pattern, member) pairs held.
    pub fn entry_count(&self) -> usize {
        self.entries
    }

    /// Channels whose matches are cached.
    pub fn cached(&self) -> usize {
        self.cache.len()
    }
}

/// Removes `member` from the pattern `tokens` under `level`: `None` if it
/// did not hold it, else the pattern's members left. Prunes nodes left
/// empty on the way back up.
fn remove_in<T: Eq + Hash>(level: &mut Level<T>, tokens: &[&str], member: T) -> Option<usize> {
    let (t, rest) = tokens.split_first()?;
    let (left, slot_empty) = {
        let node = match *t {
            ONE => level.one.as_deref_mut()?,
            REST => level.rest.as_deref_mut()?,
            _ => level.literal.get_mut(*t)?,
        };
        let left = if rest.is_empty() {
            if !node.members.remove(&member) {
                return None;
            }
            node.members.len()
        } else {
            let next = node.next.as_deref_mut()?;
            let left = remove_in(next, rest, member)?;
            if next.is_empty() {
                node.next = None;
            }
            left
        };
        (left, node.is_empty())
    };
    if slot_empty {
        match *t {
            ONE => level.one = None,
            REST => level.rest = None,
            _ => {
                level.literal.remove(*t);
            }
        }
    }
    Some(left)
}

/// Calls `f` for the members of every pattern under `level` that matches
/// the channel's remaining `tokens` (at least one).
fn collect<'c, T>(level: &Level<T>, mut tokens: std::str::Split<'c, char>, f: &mut impl FnMut(&T)) {
    let Some(t) = tokens.next() else {
        return;
    };
    // `>` matches this token and everything after it.
    if let Some(n) = &level.rest {
        n.members.iter().for_each(&mut *f);
    }
    if let Some(n) = &level.one {
        visit(n, tokens.clone(), f);
    }
    if let Some(n) = level.literal.get(t) {
        visit(n, tokens, f);
    }
}

fn visit<T>(node: &Node<T>, tokens: std::str::Split<'_, char>, f: &mut impl FnMut(&T)) {
    // A `Split` clone that yields nothing: these were the last tokens.
    if tokens.clone().next().is_none() {
        node.members.iter().for_each(&mut *f);
    } else if let Some(next) = &node.next {
        collect(next, tokens, f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(s: &mut Sublist<usize>, ch: &str) -> Vec<usize> {
        s.matches(ch).to_vec()
    }

    #[test]
    fn star_is_one_token_and_a_last_gt_one_or_more() {
        let mut s = Sublist::default();
        s.insert("a.*", 1);
        s.insert("a.>", 2);
        s.insert("*.b.c", 3);
        s.insert("a.b", 4);
        assert_eq!(m(&mut s, "a.b"), [1, 2, 4]);
        assert_eq!(m(&mut s, "a.b.c"), [2, 3]);
        assert_eq!(m(&mut s, "a"), Vec::<usize>::new(), "> needs one token");
        assert_eq!(m(&mut s, "x.b.c"), [3]);
        assert_eq!(m(&mut s, "x.b"), Vec::<usize>::new());
    }

    #[test]
    fn a_member_matched_by_several_patterns_is_listed_once() {
        let mut s = Sublist::default();
        s.insert("a.*", 7);
        s.insert("a.>", 7);
        s.insert("*.*", 7);
        s.insert("a.b", 8);
        assert_eq!(m(&mut s, "a.b"), [7, 8]);
    }

    #[test]
    fn insert_and_remove_report_the_members_of_a_pattern() {
        let mut s = Sublist::default();
        assert_eq!(s.insert("a.*", 1), Some(1), "new to the set");
        assert_eq!(s.insert("a.*", 2), Some(2));
        assert_eq!(s.insert("a.*", 2), None, "again: no-op");
        assert_eq!((s.pattern_count(), s.entry_count()), (1, 2));
        assert_eq!(s.remove("a.*", 3), None, "not a member");
        assert_eq!(s.remove("a.>", 1), None, "not a pattern held");
        assert_eq!(s.remove("a.*", 1), Some(1));
        assert_eq!(s.remove("a.*", 2), Some(0), "left the set");
        assert_eq!((s.pattern_count(), s.entry_count()), (0, 0));
        assert!(s.root.is_empty(), "empty nodes are pruned");
    }

    #[test]
    fn the_cache_is_cleared_by_any_change() {
        let mut s = Sublist::default();
        s.insert("a.*", 1);
        assert_eq!(m(&mut s, "a.b"), [1]);
        assert_eq!(m(&mut s, "a.b"), [1]);
        assert_eq!((s.misses, s.hits), (1, 1));
        s.insert("*.b", 2);
        assert_eq!(s.cached(), 0);
        assert_eq!(m(&mut s, "a.b"), [1, 2], "a new pattern is seen at once");
        s.remove("a.*", 1);
        assert_eq!(m(&mut s, "a.b"), [2], "a removed one at once");
        assert_eq!(s.misses, 3);
    }

    #[test]
    fn the_cache_stays_bounded() {
        let mut s = Sublist::default();
        s.insert(">", 1);
        for i in 0..3 * CACHE_MAX {
            assert_eq!(m(&mut s, &format!("c.{i}")), [1]);
            assert!(s.cached() <= CACHE_MAX);
        }
    }

    /// Patterns and channels over a small alphabet, so that they meet.
    fn pattern() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let token = prop_oneof![Just("a"), Just("b"), Just("*")];
        (proptest::collection::vec(token, 1..=4), any::<bool>()).prop_map(|(mut t, rest)| {
            if rest {
                *t.last_mut().expect("one token") = ">";
            }
            t.join(".")
        })
    }

    fn channel() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        proptest::collection::vec(prop_oneof![Just("a"), Just("b"), Just("c")], 1..=5)
            .prop_map(|t| t.join("."))
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(500))]

        /// The trie, its cache included, against `protocol::pattern::matches`
        /// over every (pattern, member) held, through inserts and removals.
        #[test]
        fn the_trie_agrees_with_brute_force_matching(
            ops in proptest::collection::vec((pattern(), 0usize..4, proptest::bool::weighted(0.7)), 1..40),
            channels in proptest::collection::vec(channel(), 1..20),
        ) {
            use crate::protocol::pattern::matches;
            let mut s = Sublist::default();
            let mut held: std::collections::BTreeSet<(String, usize)> = Default::default();
            for (i, (p, member, add)) in ops.iter().enumerate() {
                if *add {
                    proptest::prop_assert_eq!(s.insert(p, *member).is_some(), held.insert((p.clone(), *member)));
                } else {
                    proptest::prop_assert_eq!(s.remove(p, *member).is_some(), held.remove(&(p.clone(), *member)));
                }
                // Ask after every change, every channel twice (a walk, then
                // the cache).
                for ch in channels.iter().chain(channels.iter()).skip(i % channels.len()) {
                    let mut want: Vec<usize> = held
                        .iter()
                        .filter(|(p, _)| matches(p, ch))
                        .map(|(_, m)| *m)
                        .collect();
                    want.sort_unstable();
                    want.dedup();
                    proptest::prop_assert_eq!(&s.matches(ch)[..], &want[..], "{}", ch);
                }
                let patterns: std::collections::BTreeSet<&String> = held.iter().map(|(p, _)| p).collect();
                proptest::prop_assert_eq!(s.pattern_count(), patterns.len());
                proptest::prop_assert_eq!(s.entry_count(), held.len());
            }
        }
    }
}
