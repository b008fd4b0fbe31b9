//! The reader's last sequence number per writing node: how an entry
//! written twice (a pipeline whose reply was lost, written again after the
//! reconnection) is recognised and dropped.
//!
//! A restarted node comes back under a new id, so without pruning the map
//! would grow with every restart of every node. A node is forgotten once
//! its heartbeat has expired and nothing of it was read for a heartbeat's
//! lifetime: by then it is gone, and a node that is gone writes nothing
//! again (a late duplicate of it would need its writer to be alive).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// Last sequence number, and when it was read, per node.
#[derive(Debug, Default)]
pub(crate) struct SeqMap {
    last: HashMap<String, (u64, Instant)>,
}

impl SeqMap {
    /// Whether `seq` from `node` is new (then it is remembered).
    pub fn accept(&mut self, node: &str, seq: u64, now: Instant) -> bool {
        match self.last.get_mut(node) {
            Some((last, _)) if seq <= *last => false,
            Some(e) => {
                *e = (seq, now);
                true
            }
            None => {
                self.last.insert(node.to_owned(), (seq, now));
                true
            }
        }
    }

    /// Forgets the nodes that are not in `alive` and were last read more
    /// than `ttl` ago.
    pub fn prune(&mut self, alive: &HashSet<String>, now: Instant, ttl: Duration) {
        self.last
            .retain(|node, (_, seen)| alive.contains(node) || now.duration_since(*seen) < ttl);
    }

    /// Nodes remembered.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.last.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_are_dropped_and_dead_nodes_forgotten() {
        let ttl = Duration::from_secs(3);
        let t0 = Instant::now();
        let mut m = SeqMap::default();
        assert!(m.accept("a", 5, t0));
        assert!(!m.accept("a", 5, t0), "written twice");
        assert!(!m.accept("a", 4, t0));
        assert!(m.accept("a", 6, t0));
        assert!(m.accept("b", 1, t0));
        // Ten restarts of node c, each a new id, each gone since.
        for i in 0..10 {
            assert!(m.accept(&format!("c-{i}"), 1, t0));
        }
        assert_eq!(m.len(), 12);
        let alive: HashSet<String> = ["a".to_string()].into();
        // Within the ttl nothing goes, heartbeat or not.
        m.prune(&alive, t0 + Duration::from_secs(1), ttl);
        assert_eq!(m.len(), 12);
        // b wrote again recently: kept; the c's are gone.
        assert!(m.accept("b", 2, t0 + Duration::from_secs(3)));
        m.prune(&alive, t0 + Duration::from_secs(4), ttl);
        assert_eq!(m.len(), 2, "a (alive) and b (read within the ttl)");
        m.prune(&alive, t0 + Duration::from_secs(10), ttl);
        assert_eq!(m.len(), 1, "only the live node");
        assert!(!m.accept("a", 6, t0), "a's number is kept");
    }
}
