//! A routed message: the frame serialised once, where it goes, and the
//! same frame compressed once per codec in use.

use crate::protocol::codec::{Codec, Compressor};
use crate::protocol::interest::slot_of;
use crate::session::counters::{bump, ShardCounters};
use bytes::Bytes;
use crossbeam_utils::CachePadded;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A frame for a shard's clients: a `broadcast_message` for every
/// established client, or a `channel_message` for the channel's
/// subscribers. Cloning it is a few refcount increments.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The frame, serialised once.
    pub frame: Bytes,
    /// `None` for a broadcast; the channel for a publish.
    pub channel: Option<Arc<str>>,
    /// The channel's interest slot, computed once where the delivery is
    /// made (every hop reads it from here).
    pub slot: Option<usize>,
    /// The frame compressed, by [`Codec::index`]: made once, where the
    /// delivery is published, for each codec some connection negotiated
    /// (see [`Delivery::pack`]). `None`: that codec's clients get `frame`.
    pub packed: [Option<Bytes>; Codec::COUNT],
    /// Messages in `frame`: 1, or more for a run of broadcasts gathered
    /// into one (see [`Delivery::gather`]).
    pub frames: u64,
    /// On a history channel, the publication's place in the history
    /// store's order of arrival (store-wide, never restarting, unlike an
    /// offset after a new epoch): a subscriber whose subscription began at
    /// or after it (it was in its replay, or before its position) skips it.
    pub history_seq: Option<u64>,
    /// For a channel message, the node's patterns that match the channel
    /// (looked up once, where the delivery is made): the shards holding
    /// one of them get it too. `None`: no pattern matches.
    pub patterns: Option<super::patterns::PatternMatch>,
    /// On a history channel, the store epoch's generation and the
    /// publication's offset (see [`super::channels::Mark`]).
    pub history_at: (u64, u64),
    /// A frame for one session only (a reply that waited for Redis, see
    /// [`super::Router::placed`]), not a broadcast.
    pub to: Option<Target>,
}

/// The one session a targeted delivery is for: its key on its shard, and
/// its `client_id`, so a key reused by a newer connection is not mistaken
/// for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The shard the session is on.
    pub shard: usize,
    /// Its key there.
    pub conn: usize,
    /// Its `client_id`.
    pub client_id: Arc<str>,
}

/// Broadcasts up to this size (plain, not compressed) are gathered, per
/// shard and loop turn, into one frame run per sender (see
/// [`Delivery::gather`]).
pub const GATHER_MAX: usize = 2048;

impl Delivery {
    /// A delivery of `frame`, not compressed yet.
    pub fn new(frame: Bytes, channel: Option<Arc<str>>) -> Delivery {
        Delivery {
            slot: channel.as_deref().map(slot_of),
            frame,
            channel,
            packed: Default::default(),
            frames: 1,
            history_seq: None,
            history_at: (0, 0),
            to: None,
            patterns: None,
        }
    }

    /// Where a history publication stands, for
    /// [`super::ChannelIndex::subscribers_of`]; `None` for any other.
    pub fn history_mark(&self) -> Option<super::channels::Mark> {
        self.history_seq.map(|seq| super::channels::Mark {
            seq,
            gen: self.history_at.0,
            floor: self.history_at.1,
        })
    }

    /// Whether [`Delivery::gather`] may take this one: a small broadcast
    /// with no compressed frame (those go one by one, as they are shared).
    pub fn gatherable(&self) -> bool {
        self.channel.is_none()
            && self.to.is_none()
            && self.frame.len() <= GATHER_MAX
            && self.packed.iter().all(Option::is_none)
    }

    /// One delivery carrying `parts` (gatherable broadcasts, in order) as
    /// one run of frames: each recipient then gets one queued segment, one
    /// reference count and one iovec for the run instead of one per
    /// broadcast; the frames on the wire are the same. A copy of a few
    /// small frames per shard and turn buys that. Broadcast 1 → 1,000
    /// (issue 15): see bench-results/README.md.
    pub fn gather(parts: &[Delivery]) -> Delivery {
        debug_assert!(parts.iter().all(Delivery::gatherable));
        let mut frame = Vec::with_capacity(parts.iter().map(|d| d.frame.len()).sum());
        for d in parts {
            frame.extend_from_slice(&d.frame);
        }
        Delivery {
            frame: Bytes::from(frame),
            channel: None,
            slot: None,
            packed: Default::default(),
            frames: parts.iter().map(|d| d.frames).sum(),
            history_seq: None,
            history_at: (0, 0),
            to: None,
            patterns: None,
        }
    }

    /// Compresses the frame once for each codec that connections on any
    /// shard have negotiated, if its payload is over the threshold and the
    /// codec saves bytes. Every recipient of that codec then shares the
    /// one compressed frame; a connection negotiating meanwhile simply gets
    /// this one plain. Counts each compression in `compressions`, a
    /// counter the caller alone writes (its shard's, or the backplane
    /// reader's own).
    pub fn pack(
        &mut self,
        threshold: usize,
        counters: &[CachePadded<ShardCounters>],
        compressor: &mut Compressor,
        compressions: &AtomicU64,
    ) {
        let payload = &self.frame[crate::protocol::HEADER_LEN..];
        if payload.len() <= threshold {
            return;
        }
        for codec in Codec::ALL {
            let wanted = counters
                .iter()
                .any(|c| c.compression.connections[codec.index()].load(Ordering::Relaxed) > 0);
            if !wanted {
                continue;
            }
            let mut out = Vec::with_capacity(payload.len() / 2 + 64);
            if compressor.compress_frame(codec, payload, &mut out) {
                self.packed[codec.index()] = Some(Bytes::from(out));
            }
            bump(compressions, 1);
        }
    }

    /// The frame a connection using `codec` gets: the compressed one when
    /// there is one.
    #[inline]
    pub fn frame_for(&self, codec: Option<Codec>) -> &Bytes {
        codec
            .and_then(|c| self.packed[c.index()].as_ref())
            .unwrap_or(&self.frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(s: &str) -> Bytes {
        let mut v = (s.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(s.as_bytes());
        Bytes::from(v)
    }

    #[test]
    fn a_gathered_run_is_the_frames_in_order() {
        let parts = [
            Delivery::new(frame(r#"{"a":1}"#), None),
            Delivery::new(frame(r#"{"b":2}"#), None),
            Delivery::gather(&[
                Delivery::new(frame(r#"{"c":3}"#), None),
                Delivery::new(frame(r#"{"d":4}"#), None),
            ]),
        ];
        let run = Delivery::gather(&parts);
        assert_eq!(run.frames, 4);
        let want: Vec<u8> = [r#"{"a":1}"#, r#"{"b":2}"#, r#"{"c":3}"#, r#"{"d":4}"#]
            .iter()
            .flat_map(|s| frame(s).to_vec())
            .collect();
        assert_eq!(&run.frame[..], &want[..]);
        assert!(run.channel.is_none() && run.packed.iter().all(Option::is_none));
    }

    #[test]
    fn only_small_plain_broadcasts_are_gathered() {
        assert!(Delivery::new(frame("{}"), None).gatherable());
        // Channel messages keep their own recipients.
        assert!(!Delivery::new(frame("{}"), Some(Arc::from("news"))).gatherable());
        // Large frames are shared as they are, not copied.
        let big = "x".repeat(GATHER_MAX);
        assert!(!Delivery::new(frame(&big), None).gatherable());
        // A compressed frame is shared by its codec's recipients.
        let mut packed = Delivery::new(frame("{}"), None);
        packed.packed[0] = Some(frame("z"));
        assert!(!packed.gatherable());
    }
}
