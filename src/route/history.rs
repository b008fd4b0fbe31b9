//! Channel history on one node: each history channel's publications,
//! numbered, kept in memory and bounded by count, age and a global byte
//! budget.
//!
//! # One owner, one lock
//!
//! A channel's publications may come from any shard, and its offset must
//! mean the same thing to every subscriber. So the store is one
//! [`Store`] behind one mutex in the router, and everything that fixes a
//! history channel's order happens under that lock (see
//! [`super::ShardRoute`]): a publish takes the next offset, serialises
//! the frame with it, keeps it, and pushes it to every shard's mailbox
//! (its own included) before the lock is released; a subscribe reads its
//! position (and a recovery's replay) and joins the channel's subscribers
//! under the same lock. The mailboxes are FIFO, so every shard delivers in
//! offset order; a publication pushed before a subscribe took the lock is
//! either in the replay or at most the position the subscription starts
//! after (such a delivery still in a mailbox is skipped for that
//! subscriber: its mark is the store's [`Store::seq`], see
//! [`super::ChannelIndex`]), and one pushed after it is
//! delivered live: none is lost or doubled.
//!
//! The cost: publishes to history channels from all shards serialise on
//! the lock (frame serialisation and compression included), and the
//! publishing shard's own subscribers get the message through its mailbox
//! rather than directly. Channels without history never take the lock.
//!
//! # Epochs
//!
//! A channel's epoch is made when its log is made: this process's random
//! prefix and a count. A log is dropped when eviction empties it (and an
//! empty log made by a subscribe or a `history` read, once it has been
//! idle for the TTL); made again, it starts at offset 1 under a new epoch,
//! so a client holding an old position is told it lost messages, never
//! given a silent gap.

use super::Delivery;
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Range;
use std::sync::Arc;

/// The history settings (see the server settings of the same names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistorySettings {
    /// Publications kept per channel; 0 = no history.
    pub size: usize,
    /// Publications older than this are dropped (ms).
    pub ttl_ms: u64,
    /// Bytes kept over all channels; past it the oldest anywhere go first.
    pub max_bytes: usize,
    /// A recovery that would replay more than this is refused.
    pub recover_limit: u64,
}

/// Bytes a kept publication costs beyond its frame: its record in the log
/// and its share of the age index (measured by size, not allocator
/// overhead).
const KEPT_OVERHEAD: usize = std::mem::size_of::<Kept>() + 8;

/// What `get_stats` and /metrics say of the history.
pub use crate::protocol::stats::HistoryReport as HistoryFigures;

/// One publication kept.
#[derive(Debug)]
struct Kept {
    /// Store-wide order of arrival: orders eviction across channels.
    seq: u64,
    at_ms: u64,
    /// The `channel_message` frame, as delivered.
    frame: Bytes,
    /// Where its `"content":…,"from":…,"timestamp":…` lie in `frame`.
    body: Range<u32>,
}

/// One history channel.
#[derive(Debug)]
struct Log {
    epoch: Arc<str>,
    /// The latest offset (0: none yet).
    top: u64,
    /// The last publications, oldest first; the last has offset `top`.
    kept: VecDeque<Kept>,
    /// When the log was made or last published to.
    last_ms: u64,
}

impl Log {
    /// The offset of the oldest kept publication (`top + 1` when none).
    fn first(&self) -> u64 {
        self.top + 1 - self.kept.len() as u64
    }
}

/// A history channel's position: its latest offset and its epoch.
pub type Position = crate::session::Position;

/// The history of every channel (see the module doc). Every method takes
/// `now_ms` and first drops what has outlived the TTL.
#[derive(Debug)]
pub struct Store {
    settings: HistorySettings,
    /// This process's epoch prefix, random.
    epoch_base: String,
    logs: HashMap<Arc<str>, Log>,
    /// Logs holding publications, by the `seq` of their oldest: the first
    /// holds the oldest publication kept anywhere.
    by_age: BTreeMap<u64, Arc<str>>,
    /// Logs made empty (by a subscribe or a read), with when: dropped once
    /// the TTL passes with nothing published.
    idle: VecDeque<(u64, Arc<str>)>,
    seq: u64,
    logs_made: u64,
    figures: HistoryFigures,
}

impl Store {
    /// An empty store with a fresh random epoch prefix.
    pub fn new(settings: HistorySettings) -> Store {
        Store::with_epoch(settings, format!("{:016x}", crate::random::random_u64()))
    }

    /// An empty store whose epochs start with `base` (tests).
    pub fn with_epoch(settings: HistorySettings, base: String) -> Store {
        Store {
            settings,
            epoch_base: base,
            logs: HashMap::new(),
            by_age: BTreeMap::new(),
            idle: VecDeque::new(),
            seq: 0,
            logs_made: 0,
            figures: HistoryFigures::default(),
        }
    }

    /// The store-wide count of publications appended so far: a
    /// subscription made now gets every publication with a larger
    /// [`Delivery::history_seq`], and none with a smaller or equal one.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The settings.
    pub fn settings(&self) -> &HistorySettings {
        &self.settings
    }

    /// The figures for `get_stats` and /metrics.
    pub fn figures(&mut self, now_ms: u64) -> HistoryFigures {
        self.expire(now_ms);
        HistoryFigures {
            channels: self.logs.len() as u64,
            ..self.figures
        }
    }

    /// Appends a publication to `channel`: `write` serialises its frame
    /// given the offset and epoch, and returns the span of its own fields
    /// (see `protocol::message::write_channel_message`). Returns the
    /// delivery (carrying the offset) and the position.
    pub fn append(
        &mut self,
        channel: &str,
        now_ms: u64,
        write: &mut crate::session::WriteMessage<'_>,
    ) -> (Delivery, Position) {
        self.expire(now_ms);
        let log = self.log(channel, now_ms, false);
        let offset = log.top + 1;
        let epoch = log.epoch.clone();
        let mut frame = Vec::with_capacity(192);
        let body = write(&mut frame, Some((offset, &epoch)));
        let frame = Bytes::from(frame);
        let name = self
            .logs
            .get_key_value(channel)
            .expect("made above")
            .0
            .clone();
        let log = self.logs.get_mut(channel).expect("made above");
        log.top = offset;
        log.last_ms = now_ms;
        self.seq += 1;
        if log.kept.is_empty() {
            self.by_age.insert(self.seq, name.clone());
        }
        log.kept.push_back(Kept {
            seq: self.seq,
            at_ms: now_ms,
            frame: frame.clone(),
            body: body.start as u32..body.end as u32,
        });
        self.figures.publications += 1;
        self.figures.bytes += (frame.len() + KEPT_OVERHEAD) as u64;
        while self.logs[&name].kept.len() > self.settings.size {
            self.evict_oldest_of(&name);
        }
        while self.figures.bytes > self.settings.max_bytes as u64 {
            let Some((_, oldest)) = self.by_age.first_key_value() else {
                break;
            };
            let oldest = oldest.clone();
            self.evict_oldest_of(&oldest);
        }
        let mut d = Delivery::new(frame, Some(name));
        d.history_seq = Some(self.seq);
        (d, Position { offset, epoch })
    }

    /// A channel's latest offset and epoch, when it keeps a log now
    /// (read only: unlike [`Store::position`], no log is made).
    pub fn peek(&self, channel: &str) -> Option<Position> {
        self.logs.get(channel).map(|log| Position {
            offset: log.top,
            epoch: log.epoch.clone(),
        })
    }

    /// `channel`'s position now (its log is made if it has none). When
    /// `recover` is given and every publication after its offset is still
    /// kept under its epoch, and there are at most `recover_limit` of
    /// them, their frames are appended to `replay` in offset order and the
    /// second value is true.
    pub fn position(
        &mut self,
        channel: &str,
        now_ms: u64,
        recover: Option<(u64, &str)>,
        replay: &mut Vec<u8>,
    ) -> (Position, bool) {
        self.expire(now_ms);
        let recover_limit = self.settings.recover_limit;
        let log = self.log(channel, now_ms, true);
        let position = Position {
            offset: log.top,
            epoch: log.epoch.clone(),
        };
        let Some((after, epoch)) = recover else {
            return (position, false);
        };
        let ok = epoch == &*log.epoch
            && after <= log.top
            && after + 1 >= log.first()
            && log.top - after <= recover_limit;
        if ok {
            let skip = (after + 1 - log.first()) as usize;
            for k in log.kept.iter().skip(skip) {
                replay.extend_from_slice(&k.frame);
            }
        }
        (position, ok)
    }

    /// The kept publications of `channel` after `since`, at most `limit`,
    /// as `history` entries separated by commas into `entries`; returns
    /// the channel's position.
    pub fn read(
        &mut self,
        channel: &str,
        now_ms: u64,
        since: u64,
        limit: usize,
        entries: &mut Vec<u8>,
    ) -> Position {
        self.expire(now_ms);
        let log = self.log(channel, now_ms, true);
        let first = log.first();
        let skip = since.saturating_add(1).saturating_sub(first) as usize;
        for (i, k) in log.kept.iter().enumerate().skip(skip).take(limit) {
            if i > skip {
                entries.push(b',');
            }
            let body = &k.frame[k.body.start as usize..k.body.end as usize];
            crate::protocol::message::write_history_entry(entries, first + i as u64, body);
        }
        Position {
            offset: log.top,
            epoch: log.epoch.clone(),
        }
    }

    /// `channel`'s log, made (with a new epoch) if it has none; a log made
    /// for a read (`idle`) is dropped after the TTL if nothing is
    /// published to it.
    fn log(&mut self, channel: &str, now_ms: u64, idle: bool) -> &mut Log {
        if !self.logs.contains_key(channel) {
            self.logs_made += 1;
            let name: Arc<str> = Arc::from(channel);
            let epoch = Arc::from(format!("{}{}", self.epoch_base, self.logs_made));
            self.logs.insert(
                name.clone(),
                Log {
                    epoch,
                    top: 0,
                    kept: VecDeque::new(),
                    last_ms: now_ms,
                },
            );
            if idle {
                self.idle.push_back((now_ms, name));
            }
        }
        self.logs.get_mut(channel).expect("inserted above")
    }

    /// Drops the publications older than the TTL, and the logs idle past it.
    fn expire(&mut self, now_ms: u64) {
        let ttl = self.settings.ttl_ms;
        while let Some((_, name)) = self.by_age.first_key_value() {
            let log = &self.logs[name];
            if log.kept.front().is_some_and(|k| k.at_ms + ttl > now_ms) {
                break;
            }
            let name = name.clone();
            self.evict_oldest_of(&name);
        }
        while let Some((at, _)) = self.idle.front() {
            if at + ttl > now_ms {
                break;
            }
            let (_, name) = self.idle.pop_front().expect("front exists");
            if self
                .logs
                .get(&name)
                .is_some_and(|l| l.kept.is_empty() && l.last_ms + ttl <= now_ms)
            {
                self.logs.remove(&name);
            }
        }
    }

    /// Evicts `name`'s oldest publication; a log left empty is dropped
    /// (its next publication starts a new epoch).
    fn evict_oldest_of(&mut self, name: &Arc<str>) {
        let log = self.logs.get_mut(name).expect("a kept log exists");
        let k = log.kept.pop_front().expect("a kept log is not empty");
        self.by_age.remove(&k.seq);
        self.figures.publications -= 1;
        self.figures.bytes -= (k.frame.len() + KEPT_OVERHEAD) as u64;
        self.figures.evicted += 1;
        match log.kept.front() {
            Some(next) => {
                self.by_age.insert(next.seq, name.clone());
            }
            None => {
                self.logs.remove(name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::encode_frame;

    fn store(size: usize, ttl_ms: u64, max_bytes: usize) -> Store {
        Store::with_epoch(
            HistorySettings {
                size,
                ttl_ms,
                max_bytes,
                recover_limit: 1000,
            },
            "e".into(),
        )
    }

    /// Appends `text` as a frame whose body is the whole payload.
    fn add(s: &mut Store, ch: &str, now: u64, text: &str) -> Position {
        let mut w = |out: &mut Vec<u8>, _: Option<(u64, &str)>| {
            encode_frame(out, text.as_bytes());
            4..4 + text.len()
        };
        s.append(ch, now, &mut w).1
    }

    fn replayed(s: &mut Store, ch: &str, now: u64, after: u64, epoch: &str) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        let (_, ok) = s.position(ch, now, Some((after, epoch)), &mut out);
        ok.then_some(out)
    }

    fn frames(texts: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        for t in texts {
            encode_frame(&mut out, t.as_bytes());
        }
        out
    }

    #[test]
    fn offsets_count_from_one_and_recovery_replays_what_is_kept() {
        let mut s = store(3, 1000, 1 << 20);
        assert_eq!(add(&mut s, "a", 0, "1").offset, 1);
        assert_eq!(add(&mut s, "b", 0, "x").offset, 1, "per channel");
        for t in ["2", "3", "4"] {
            add(&mut s, "a", 0, t);
        }
        let p = s.position("a", 0, None, &mut Vec::new()).0;
        assert_eq!((p.offset, &*p.epoch), (4, "e1"));
        assert_eq!(
            replayed(&mut s, "a", 0, 1, "e1"),
            Some(frames(&["2", "3", "4"]))
        );
        assert_eq!(replayed(&mut s, "a", 0, 4, "e1"), Some(Vec::new()));
        assert_eq!(replayed(&mut s, "a", 0, 0, "e1"), None, "1 was trimmed");
        assert_eq!(replayed(&mut s, "a", 0, 5, "e1"), None, "beyond the top");
        assert_eq!(replayed(&mut s, "a", 0, 2, "e2"), None, "another epoch");
        let f = s.figures(0);
        assert_eq!((f.channels, f.publications, f.evicted), (2, 4, 1));
    }

    #[test]
    fn the_ttl_drops_publications_and_the_log_restarts_under_a_new_epoch() {
        let mut s = store(10, 1000, 1 << 20);
        add(&mut s, "a", 0, "1");
        add(&mut s, "a", 500, "2");
        assert_eq!(replayed(&mut s, "a", 1200, 1, "e1"), Some(frames(&["2"])));
        assert_eq!(replayed(&mut s, "a", 1200, 0, "e1"), None);
        // Both gone: the log is dropped, and made again under a new epoch.
        let p = add(&mut s, "a", 1600, "3");
        assert_eq!((p.offset, &*p.epoch), (1, "e2"));
        assert_eq!(replayed(&mut s, "a", 1600, 2, "e1"), None);
        assert_eq!(s.figures(1600).evicted, 2);
    }

    #[test]
    fn the_byte_budget_evicts_the_oldest_anywhere() {
        let one = 4 + 1 + KEPT_OVERHEAD;
        let mut s = store(10, 1000, 3 * one);
        add(&mut s, "a", 0, "1");
        add(&mut s, "b", 1, "1");
        add(&mut s, "a", 2, "2");
        add(&mut s, "b", 3, "2"); // evicts a's 1, the oldest
        assert_eq!(s.figures(3).bytes, 3 * one as u64);
        assert_eq!(replayed(&mut s, "a", 3, 0, "e1"), None);
        assert_eq!(replayed(&mut s, "b", 3, 0, "e2"), Some(frames(&["1", "2"])));
    }

    #[test]
    fn recovery_past_the_limit_is_refused() {
        let mut s = store(100, 1000, 1 << 20);
        s.settings.recover_limit = 2;
        for t in ["1", "2", "3"] {
            add(&mut s, "a", 0, t);
        }
        assert_eq!(replayed(&mut s, "a", 0, 0, "e1"), None);
        assert_eq!(replayed(&mut s, "a", 0, 1, "e1"), Some(frames(&["2", "3"])));
    }

    #[test]
    fn a_read_pages_by_since_and_limit() {
        let mut s = store(100, 1000, 1 << 20);
        for t in ["1", "2", "3"] {
            add(&mut s, "a", 500, t);
        }
        let mut e = Vec::new();
        let p = s.read("a", 500, 1, 1, &mut e);
        assert_eq!(p.offset, 3);
        assert_eq!(std::str::from_utf8(&e).unwrap(), r#"{"offset":2,2}"#);
        e.clear();
        s.read("a", 500, 0, 100, &mut e);
        assert_eq!(
            std::str::from_utf8(&e).unwrap(),
            r#"{"offset":1,1},{"offset":2,2},{"offset":3,3}"#
        );
        // An empty log made by a read goes once idle past the TTL.
        s.read("quiet", 0, 0, 10, &mut Vec::new());
        assert_eq!(s.figures(999).channels, 2);
        assert_eq!(s.figures(1000).channels, 1);
    }
}
