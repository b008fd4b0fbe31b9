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

/// What became of a `recover` ([`Store::position`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// Not asked, or refused: the client is told it lost messages.
    No,
    /// Granted: the publications after it were replayed.
    Replayed,
    /// Granted from an offset this mirror has not read yet: nothing to
    /// replay, and the subscription skips up to the mark's floor.
    Ahead(crate::route::channels::Mark),
}

impl Recovery {
    /// Whether the recovery was granted.
    pub fn granted(&self) -> bool {
        !matches!(self, Recovery::No)
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
    /// A mirror of the history Redis holds for a cluster (see
    /// `cluster::history`): offsets and the epoch come from Redis, one
    /// epoch for the whole store, and a log emptied by eviction keeps its
    /// offset (Redis keeps counting where it stopped).
    mirror: Option<Arc<str>>,
    /// Changes with the mirror's epoch (see `channels::Mark`).
    gen: u64,
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
            mirror: None,
            gen: 0,
        }
    }

    /// An empty mirror of a cluster's history (see the `mirror` field),
    /// under a provisional epoch of its own until Redis tells it the
    /// store's ([`Store::set_epoch`]).
    pub fn mirror(settings: HistorySettings) -> Store {
        let mut s = Store::new(settings);
        s.mirror = Some(Arc::from(format!("{}-local", s.epoch_base)));
        s
    }

    /// Whether this store mirrors a cluster's history.
    pub fn is_mirror(&self) -> bool {
        self.mirror.is_some()
    }

    /// The mirror's store epoch is `epoch` from now on: if it changed,
    /// Redis lost what it held, and so does the mirror (every client
    /// holding the old epoch is told it lost messages). True if it changed.
    pub fn set_epoch(&mut self, epoch: &str) -> bool {
        if self.mirror.as_deref().is_none_or(|e| e == epoch) {
            return false;
        }
        self.mirror = Some(Arc::from(epoch));
        self.gen += 1;
        self.logs.clear();
        self.by_age.clear();
        self.idle.clear();
        self.figures.publications = 0;
        self.figures.bytes = 0;
        true
    }

    /// Keeps a publication Redis placed at `offset` of `channel` under
    /// `epoch` (a mirror only). `frame` is the delivered frame, `body`
    /// the span of its own fields. None for one already kept (read twice);
    /// a publication past the next offset (entries this node missed) drops
    /// what the log kept, so no recovery spans the hole.
    pub fn insert(
        &mut self,
        channel: &str,
        now_ms: u64,
        offset: u64,
        epoch: &str,
        frame: Bytes,
        body: Range<usize>,
    ) -> Option<Delivery> {
        debug_assert!(self.is_mirror());
        self.expire(now_ms);
        self.set_epoch(epoch);
        let log = self.log(channel, now_ms, false);
        if offset <= log.top {
            return None;
        }
        let gap = offset > log.top + 1;
        let name = self
            .logs
            .get_key_value(channel)
            .expect("made above")
            .0
            .clone();
        if gap {
            while !self.logs[&name].kept.is_empty() {
                self.evict_oldest_of(&name);
            }
        }
        Some(self.keep(name, now_ms, offset, frame, body))
    }

    /// Sets `channel`'s latest offset as read from Redis at start, before
    /// its kept publications are [`Store::insert`]ed (a mirror only).
    pub fn set_top(&mut self, channel: &str, now_ms: u64, top: u64) {
        let log = self.log(channel, now_ms, false);
        if log.kept.is_empty() {
            log.top = log.top.max(top);
        }
    }

    /// Keeps `frame` as `name`'s publication at `offset` (its log exists),
    /// evicts past the bounds, and returns its delivery.
    fn keep(
        &mut self,
        name: Arc<str>,
        now_ms: u64,
        offset: u64,
        frame: Bytes,
        body: Range<usize>,
    ) -> Delivery {
        let log = self.logs.get_mut(&name).expect("made above");
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
        self.trim(&name);
        let mut d = Delivery::new(frame, Some(name));
        d.history_seq = Some(self.seq);
        d.history_at = (self.gen, offset);
        d
    }

    /// Evicts past the per-channel count and the byte budget.
    fn trim(&mut self, name: &Arc<str>) {
        while self.logs[name].kept.len() > self.settings.size {
            self.evict_oldest_of(name);
        }
        while self.figures.bytes > self.settings.max_bytes as u64 {
            let Some((_, oldest)) = self.by_age.first_key_value() else {
                break;
            };
            let oldest = oldest.clone();
            self.evict_oldest_of(&oldest);
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
        let d = self.keep(name, now_ms, offset, frame, body);
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
    /// recovery is granted. A mirror also grants one from an offset past
    /// what it has read (the client saw it on a faster node): nothing is
    /// replayed, and the subscription must skip up to that offset.
    pub fn position(
        &mut self,
        channel: &str,
        now_ms: u64,
        recover: Option<(u64, &str)>,
        replay: &mut Vec<u8>,
    ) -> (Position, Recovery) {
        self.expire(now_ms);
        let recover_limit = self.settings.recover_limit;
        let mirror = self.mirror.is_some();
        let gen = self.gen;
        let log = self.log(channel, now_ms, true);
        let position = Position {
            offset: log.top,
            epoch: log.epoch.clone(),
        };
        let Some((after, epoch)) = recover else {
            return (position, Recovery::No);
        };
        if epoch != &*log.epoch {
            return (position, Recovery::No);
        }
        if mirror && after > log.top && after - log.top <= recover_limit {
            return (
                position,
                Recovery::Ahead(crate::route::channels::Mark {
                    seq: 0,
                    gen,
                    floor: after,
                }),
            );
        }
        let ok = after <= log.top && after + 1 >= log.first() && log.top - after <= recover_limit;
        if !ok {
            return (position, Recovery::No);
        }
        let skip = (after + 1 - log.first()) as usize;
        for k in log.kept.iter().skip(skip) {
            replay.extend_from_slice(&k.frame);
        }
        (position, Recovery::Replayed)
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
            let epoch = match &self.mirror {
                Some(e) => e.clone(),
                None => Arc::from(format!("{}{}", self.epoch_base, self.logs_made)),
            };
            self.logs.insert(
                name.clone(),
                Log {
                    epoch,
                    top: 0,
                    kept: VecDeque::new(),
                    last_ms: now_ms,
                },
            );
            // A mirror's logs stay: Redis keeps every channel's offset.
            if idle && self.mirror.is_none() {
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
            None if self.mirror.is_none() => {
                self.logs.remove(name);
            }
            None => {}
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
        let (_, r) = s.position(ch, now, Some((after, epoch)), &mut out);
        (r == Recovery::Replayed).then_some(out)
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

    /// A mirror keeping `text` at `offset` under `epoch`: whether it was new.
    fn put(s: &mut Store, ch: &str, now: u64, offset: u64, epoch: &str, text: &str) -> bool {
        let mut f = Vec::new();
        encode_frame(&mut f, text.as_bytes());
        s.insert(ch, now, offset, epoch, Bytes::from(f), 4..4 + text.len())
            .is_some()
    }

    fn mirror(size: usize) -> Store {
        let mut s = Store::mirror(HistorySettings {
            size,
            ttl_ms: 1000,
            max_bytes: 1 << 20,
            recover_limit: 1000,
        });
        s.set_epoch("R1");
        s
    }

    #[test]
    fn a_mirror_keeps_redis_offsets_once_and_never_replays_across_a_hole() {
        let mut s = mirror(10);
        // A channel nobody published to: offset 0 under the store's epoch.
        let p = s.position("a", 0, None, &mut Vec::new()).0;
        assert_eq!((p.offset, &*p.epoch), (0, "R1"));
        assert!(put(&mut s, "a", 0, 1, "R1", "1"));
        assert!(put(&mut s, "a", 0, 2, "R1", "2"));
        assert!(!put(&mut s, "a", 0, 2, "R1", "2"), "read twice: kept once");
        assert_eq!(replayed(&mut s, "a", 0, 0, "R1"), Some(frames(&["1", "2"])));
        // A client that saw 4 on a faster node: granted, nothing to replay,
        // and its subscription skips up to 4 when this node reads them.
        let (_, r) = s.position("a", 0, Some((4, "R1")), &mut Vec::new());
        assert_eq!(
            r,
            Recovery::Ahead(crate::route::channels::Mark {
                seq: 0,
                gen: 1,
                floor: 4
            })
        );
        let (_, r) = s.position("a", 0, Some((4, "R0")), &mut Vec::new());
        assert_eq!(r, Recovery::No, "another epoch");
        // This node missed 3 and 4: nothing before 5 can be replayed.
        assert!(put(&mut s, "a", 0, 5, "R1", "5"));
        assert_eq!(replayed(&mut s, "a", 0, 1, "R1"), None);
        assert_eq!(replayed(&mut s, "a", 0, 4, "R1"), Some(frames(&["5"])));
    }

    #[test]
    fn a_mirror_keeps_a_quiet_channels_offset_and_forgets_all_on_a_new_epoch() {
        let mut s = mirror(10);
        put(&mut s, "a", 0, 1, "R1", "1");
        put(&mut s, "a", 0, 2, "R1", "2");
        // Past the TTL the publications go, but the offset stays (Redis
        // keeps counting): no new epoch, so a quiet subscriber loses nothing.
        let p = s.position("a", 5000, None, &mut Vec::new()).0;
        assert_eq!((p.offset, &*p.epoch), (2, "R1"));
        assert_eq!(replayed(&mut s, "a", 5000, 2, "R1"), Some(Vec::new()));
        assert_eq!(replayed(&mut s, "a", 5000, 1, "R1"), None, "3 is gone");
        // Redis lost its data: a new epoch, offsets from 1 again.
        assert!(put(&mut s, "a", 5000, 1, "R2", "new"));
        assert_eq!(replayed(&mut s, "a", 5000, 2, "R1"), None);
        assert_eq!(replayed(&mut s, "a", 5000, 0, "R2"), Some(frames(&["new"])));
        assert!(!s.set_epoch("R2"), "the same epoch again changes nothing");
        // Loaded at start: a top with nothing kept.
        s.set_top("b", 5000, 7);
        assert_eq!(s.position("b", 5000, None, &mut Vec::new()).0.offset, 7);
        assert!(put(&mut s, "b", 5000, 8, "R2", "8"));
        assert_eq!(replayed(&mut s, "b", 5000, 7, "R2"), Some(frames(&["8"])));
    }
}
