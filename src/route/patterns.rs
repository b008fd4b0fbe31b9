//! Pattern interest across shards: which shards hold a subscription whose
//! pattern may match a channel, for a publisher on any shard.
//!
//! The slot table ([`crate::protocol::interest`]) cannot say it: a pattern
//! matches channels in any slot. So each pattern held anywhere on the node
//! has one [`Entry`]: its subscriber count per shard, atomics that the
//! owning shard alone writes (as the slot table). Publishers find the
//! entries matching a channel in a [`Snapshot`]: a trie of the patterns
//! (their entry ids), immutable, shared through an `ArcSwap`. The set of
//! distinct patterns changes rarely next to publications, so:
//!
//! - a subscribe to a pattern the node already has, and any unsubscribe
//!   that leaves it held somewhere, is one atomic store by its shard;
//! - a pattern new to the node, or one no shard holds any more, changes
//!   the table under a lock and bumps the version; the next publisher
//!   that sees the version rebuilds the snapshot (a copy of the trie:
//!   O(patterns × tokens), once per version whichever shard comes first);
//! - a publisher keeps a [`PatternCache`]: channel → the matching entries,
//!   valid while the version is the same. A hit is one atomic load and
//!   one hash probe; whether shard *i* has a subscriber is then the
//!   entries' counts for *i*, read live.
//!
//! With no pattern held on the node, a publish pays one atomic load.

use super::sublist::{Sublist, CACHE_MAX, CACHE_SWEEP};
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// One pattern held on this node: its subscribers on each shard.
#[derive(Debug)]
pub struct Entry {
    /// The pattern.
    pub pattern: Box<str>,
    /// Sessions holding it, by shard (written by that shard only), and
    /// last the other nodes' (written by the backplane's heartbeat).
    counts: Box<[AtomicU32]>,
}

impl Entry {
    /// Subscribers of the pattern on `shard`.
    #[inline]
    pub fn count(&self, shard: usize) -> u32 {
        // Acquire pairs with the owner's Release, as in the slot table.
        self.counts[shard].load(Ordering::Acquire)
    }

    /// Subscribers of the pattern on every shard and other node.
    pub fn total(&self) -> u64 {
        self.counts
            .iter()
            .map(|c| u64::from(c.load(Ordering::Relaxed)))
            .sum()
    }
}

/// The patterns held on the node at one version, matched read-only.
#[derive(Debug, Default)]
pub struct Snapshot {
    version: u64,
    trie: Sublist<u32>,
    entries: Vec<Arc<Entry>>,
    by_pattern: HashMap<Box<str>, u32>,
}

/// The entries of a [`Snapshot`] whose patterns match one channel, carried
/// by the channel's delivery to every shard it may go to.
#[derive(Debug, Clone)]
pub struct PatternMatch {
    snapshot: Arc<Snapshot>,
    ids: Arc<[u32]>,
}

impl PatternMatch {
    /// Whether `shard` has a subscriber of one of the matching patterns.
    pub fn on_shard(&self, shard: usize) -> bool {
        self.ids
            .iter()
            .any(|id| self.snapshot.entries[*id as usize].count(shard) > 0)
    }

    /// Subscribers of the matching patterns on the shards other than
    /// `shard` and on the other nodes (a session holding two of them
    /// counts twice).
    pub fn elsewhere(&self, shard: usize) -> u64 {
        let entries = &self.snapshot.entries;
        self.ids
            .iter()
            .map(|id| {
                let e = &entries[*id as usize];
                (0..e.counts.len())
                    .filter(|i| *i != shard)
                    .map(|i| u64::from(e.count(i)))
                    .sum::<u64>()
            })
            .sum()
    }
}

/// A publisher's cache of matches (one per shard, one for the backplane
/// reader): channel → matching entries of `snapshot`.
#[derive(Debug, Default)]
pub struct PatternCache {
    snapshot: Arc<Snapshot>,
    map: HashMap<Box<str>, Arc<[u32]>>,
}

/// The node's pattern interest (see the module doc).
#[derive(Debug)]
pub struct PatternInterest {
    shards: usize,
    /// Entries in `table`: 0 lets a publish skip everything.
    held: AtomicUsize,
    /// Bumped under `table`'s lock whenever an entry comes or goes.
    version: AtomicU64,
    table: Mutex<HashMap<Box<str>, Arc<Entry>>>,
    snapshot: ArcSwap<Snapshot>,
}

impl PatternInterest {
    /// No patterns, for `shards` shards.
    pub fn new(shards: usize) -> PatternInterest {
        PatternInterest {
            shards,
            held: AtomicUsize::new(0),
            version: AtomicU64::new(0),
            table: Mutex::new(HashMap::new()),
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
        }
    }

    /// Column `col` (a shard, or [`PatternInterest::remote`]) now has
    /// `new` subscribers of `pattern`; it had `old`. Each column has one
    /// writer: its shard, or the backplane's heartbeat reader.
    pub fn set(&self, col: usize, pattern: &str, old: usize, new: usize) {
        let n = u32::try_from(new).unwrap_or(u32::MAX);
        if old > 0 && new > 0 {
            // The entry stays: no shard may drop it while `col` holds it.
            if let Some(e) = self.entry_of(pattern) {
                e.counts[col].store(n, Ordering::Release);
                return;
            }
        }
        if old == new {
            return;
        }
        let mut table = crate::sync::lock(&self.table);
        if new > 0 {
            let e = match table.get(pattern) {
                Some(e) => e.clone(),
                None => {
                    let e = Arc::new(Entry {
                        pattern: pattern.into(),
                        counts: (0..=self.shards).map(|_| AtomicU32::new(0)).collect(),
                    });
                    table.insert(pattern.into(), e.clone());
                    self.held.store(table.len(), Ordering::Release);
                    e
                }
            };
            e.counts[col].store(n, Ordering::Release);
            // After the count: a publisher that sees the version sees it.
            self.version.fetch_add(1, Ordering::AcqRel);
            return;
        }
        let Some(e) = table.get(pattern) else { return };
        e.counts[col].store(0, Ordering::Release);
        // Every column's 0 → n goes through this lock too, so none can be
        // adding it now.
        if e.total() == 0 {
            table.remove(pattern);
            self.held.store(table.len(), Ordering::Release);
            self.version.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// The column of the other nodes' subscribers (from their heartbeats):
    /// counted in `recipients`, never a shard to deliver to.
    pub fn remote(&self) -> usize {
        self.shards
    }

    /// The entry of `pattern`, from the current snapshot when it is there
    /// (no lock), else from the table.
    fn entry_of(&self, pattern: &str) -> Option<Arc<Entry>> {
        let s = self.snapshot.load();
        if s.version == self.version.load(Ordering::Acquire) {
            if let Some(id) = s.by_pattern.get(pattern) {
                return Some(s.entries[*id as usize].clone());
            }
        }
        crate::sync::lock(&self.table).get(pattern).cloned()
    }

    /// Patterns held on the node.
    pub fn len(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    /// Whether no pattern is held on the node.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The snapshot of the current version, rebuilt if it is older.
    fn current(&self) -> Arc<Snapshot> {
        let v = self.version.load(Ordering::Acquire);
        let s = self.snapshot.load_full();
        if s.version == v {
            return s;
        }
        let table = crate::sync::lock(&self.table);
        let v = self.version.load(Ordering::Acquire);
        let s = self.snapshot.load_full();
        if s.version == v {
            return s; // another publisher rebuilt it meanwhile
        }
        let mut trie = Sublist::default();
        let mut entries = Vec::with_capacity(table.len());
        let mut by_pattern = HashMap::with_capacity(table.len());
        for (pattern, e) in table.iter() {
            let id = entries.len() as u32;
            trie.insert(pattern, id);
            by_pattern.insert(pattern.clone(), id);
            entries.push(e.clone());
        }
        let s = Arc::new(Snapshot {
            version: v,
            trie,
            entries,
            by_pattern,
        });
        self.snapshot.store(s.clone());
        s
    }

    /// The entries matching `channel`, or `None` when no pattern is held
    /// on the node (or none matches).
    pub fn lookup(&self, cache: &mut PatternCache, channel: &str) -> Option<PatternMatch> {
        if self.is_empty() {
            return None;
        }
        if cache.snapshot.version != self.version.load(Ordering::Acquire) {
            cache.snapshot = self.current();
            cache.map.clear();
        }
        let ids = match cache.map.get(channel) {
            Some(ids) => ids.clone(),
            None => {
                let mut ids = Vec::new();
                cache
                    .snapshot
                    .trie
                    .for_each_match(channel, |id| ids.push(*id));
                let ids: Arc<[u32]> = ids.into();
                if cache.map.len() >= CACHE_MAX {
                    let mut keep = CACHE_SWEEP;
                    cache.map.retain(|_, _| {
                        keep = keep.saturating_sub(1);
                        keep > 0
                    });
                }
                cache.map.insert(channel.into(), ids.clone());
                ids
            }
        };
        (!ids.is_empty()).then(|| PatternMatch {
            snapshot: cache.snapshot.clone(),
            ids,
        })
    }

    /// Every pattern held on this node's shards with its subscribers
    /// there (the heartbeat's pattern lines).
    pub fn each_local(&self, mut f: impl FnMut(&str, u64)) {
        for (p, e) in crate::sync::lock(&self.table).iter() {
            let n = e.total() - u64::from(e.count(self.shards));
            if n > 0 {
                f(p, n);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shards_of(p: &PatternInterest, c: &mut PatternCache, ch: &str) -> Vec<usize> {
        match p.lookup(c, ch) {
            None => vec![],
            Some(m) => (0..3).filter(|i| m.on_shard(*i)).collect(),
        }
    }

    #[test]
    fn a_publisher_sees_each_shards_patterns_as_they_change() {
        let p = PatternInterest::new(3);
        let mut c = PatternCache::default();
        assert!(p.lookup(&mut c, "a.b").is_none(), "nothing held");
        p.set(1, "a.*", 0, 1);
        assert_eq!(shards_of(&p, &mut c, "a.b"), [1]);
        assert_eq!(shards_of(&p, &mut c, "b.b"), Vec::<usize>::new());
        p.set(2, "a.*", 0, 1);
        p.set(2, "a.*", 1, 2);
        assert_eq!(shards_of(&p, &mut c, "a.b"), [1, 2], "counts read live");
        assert_eq!(p.lookup(&mut c, "a.b").unwrap().elsewhere(1), 2);
        p.set(p.remote(), "a.*", 0, 5);
        assert_eq!(shards_of(&p, &mut c, "a.b"), [1, 2], "no shard for nodes");
        assert_eq!(p.lookup(&mut c, "a.b").unwrap().elsewhere(1), 7);
        let mut local = Vec::new();
        p.each_local(|pat, n| local.push((pat.to_string(), n)));
        assert_eq!(local, [("a.*".to_string(), 3)]);
        p.set(p.remote(), "a.*", 5, 0);
        p.set(0, ">", 0, 1);
        assert_eq!(shards_of(&p, &mut c, "a.b"), [0, 1, 2]);
        assert_eq!(shards_of(&p, &mut c, "b"), [0]);
        p.set(1, "a.*", 1, 0);
        assert_eq!(shards_of(&p, &mut c, "a.b"), [0, 2]);
        p.set(2, "a.*", 2, 1);
        p.set(2, "a.*", 1, 0);
        p.set(0, ">", 1, 0);
        assert_eq!(shards_of(&p, &mut c, "a.b"), Vec::<usize>::new());
        assert!(p.is_empty(), "an entry no shard holds is dropped");
    }
}
