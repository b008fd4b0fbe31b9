//! Channel history across nodes, held in Redis.
//!
//! Redis owns every history channel's order, as in Centrifugo: a Lua
//! script ([`PUBLISH_SCRIPT`]) gives a publication the channel's next
//! offset, keeps it in the channel's own capped stream (with an expiry),
//! and appends it to the cluster stream with its offset and epoch, all in
//! one atomic step. So every node reads a channel's publications from the
//! cluster stream in offset order, the publishing node included: on a
//! history channel even the publisher's own node delivers only what it
//! reads back (one Redis round trip more than a plain channel, measured in
//! bench-results/README.md).
//!
//! Each node mirrors what it reads into its in-memory history store, and
//! serves `subscribe` positions, recoveries and `history` reads from the
//! mirror, under the same lock as on one node: the shards never wait for
//! Redis. At start the reader loads the mirror from Redis (every channel's
//! top offset and kept publications) before it reads the cluster stream,
//! so a node that joins late serves recoveries of what was published
//! before it came.
//!
//! # One epoch for the store
//!
//! The epoch is the store's, not a channel's: a key ([`EPOCH_KEY`]) made
//! once with `SET NX` by whichever node comes first. Offsets live in one
//! hash ([`TOPS_KEY`]) that never expires, so a quiet channel keeps
//! counting where it stopped, and a subscriber to a channel nobody has
//! published to yet is told `offset 0` under the epoch the first
//! publication will carry: no false loss. If Redis loses its data (a
//! restart without persistence, a failover that lost writes) the epoch key
//! is gone with it, the next publication makes a new one, and every client
//! holding the old one is told it lost messages.

use bytes::Bytes;
use redis::{Connection, RedisResult};
use std::collections::HashMap;

/// The store's epoch.
pub const EPOCH_KEY: &str = "ringcast:history:epoch";
/// Every history channel's latest offset (a hash: channel → offset).
pub const TOPS_KEY: &str = "ringcast:history:tops";
/// The last sequence number each node had placed (a hash: node → seq), so
/// that a batch written again after a lost reply is not placed twice.
pub const PLACED_KEY: &str = "ringcast:history:placed";
/// Prefix of each history channel's capped stream of publications.
pub const CHANNEL_STREAM_PREFIX: &str = "ringcast:history:stream:";

/// The publish script. KEYS: epoch, tops, placed, the channel's stream,
/// the cluster stream. ARGV: epoch candidate, history size, ttl ms, node,
/// seq, channel, frame, cluster stream MAXLEN. Returns `{offset, epoch}`,
/// or `{0, ""}` for a publication already placed.
///
/// `seq` is below 2^53 (µs since 1970), so Lua's double compares it
/// exactly.
pub const PUBLISH_SCRIPT: &str = r#"
local last = redis.call('HGET', KEYS[3], ARGV[4])
if last and tonumber(last) >= tonumber(ARGV[5]) then
  return {0, ''}
end
redis.call('HSET', KEYS[3], ARGV[4], ARGV[5])
redis.call('SET', KEYS[1], ARGV[1], 'NX')
local epoch = redis.call('GET', KEYS[1])
local top = redis.call('HINCRBY', KEYS[2], ARGV[6], 1)
redis.call('XADD', KEYS[4], 'MAXLEN', ARGV[2], '*', 'o', top, 'f', ARGV[7])
redis.call('PEXPIRE', KEYS[4], ARGV[3])
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[8], '*',
  'n', ARGV[4], 's', ARGV[5], 'c', ARGV[6], 'f', ARGV[7], 'o', top, 'e', epoch)
return {top, epoch}
"#;

/// A `published` reply waiting for its publication's place: Redis's
/// answer to the script adds the offset and epoch, and the node's router
/// hands it to the session (`Host::placed`).
#[derive(Debug, Clone)]
pub struct Reply {
    /// The publisher's shard.
    pub shard: usize,
    /// Its key on that shard.
    pub conn: usize,
    /// Its `client_id` (a reused key is not it).
    pub client_id: std::sync::Arc<str>,
    /// The reply frame, without a position.
    pub frame: Bytes,
}

/// Told a history publication's place (offset, epoch), or `None` when it
/// had been placed by an earlier try whose answer was lost.
pub type Notify = Box<dyn FnOnce(Option<(u64, &str)>) + Send>;

/// Who learns a history publication's place once Redis has given it.
pub enum Placement {
    /// A session's `published` reply, through its node's router.
    Reply(Reply),
    /// A caller off the shards (the HTTP API), called on the writer thread.
    Notify(Notify),
}

impl std::fmt::Debug for Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Placement::Reply(r) => f.debug_tuple("Reply").field(r).finish(),
            Placement::Notify(_) => f.write_str("Notify"),
        }
    }
}

/// What the writer needs to place history publications.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryTarget {
    /// Publications kept per channel.
    pub size: usize,
    /// How long a channel's stream lives after its last publication (ms).
    pub ttl_ms: u64,
}

/// The history read from Redis when a node starts.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The store's epoch.
    pub epoch: String,
    /// Every channel's latest offset, with its kept publications.
    pub channels: Vec<LoadedChannel>,
}

/// One channel of [`Loaded`]: its name, its latest offset, and its kept
/// publications (offset, plain frame), oldest first.
pub type LoadedChannel = (String, u64, Vec<(u64, Bytes)>);

/// The store's epoch, made now (from `candidate`) if Redis has none.
pub fn epoch(con: &mut Connection, candidate: &str) -> RedisResult<String> {
    redis::cmd("SET")
        .arg(EPOCH_KEY)
        .arg(candidate)
        .arg("NX")
        .query::<()>(con)?;
    redis::cmd("GET").arg(EPOCH_KEY).query(con)
}

/// Reads the store: its epoch (made if absent), every channel's top, and
/// the publications each still keeps (at most `size` each). Entries of a
/// channel's stream that are not well formed are skipped: the reader
/// checks each frame again before it keeps it.
pub fn load(con: &mut Connection, candidate: &str, size: usize) -> RedisResult<Loaded> {
    let epoch = epoch(con, candidate)?;
    let tops: HashMap<String, u64> = redis::cmd("HGETALL").arg(TOPS_KEY).query(con)?;
    let mut channels: Vec<LoadedChannel> = Vec::with_capacity(tops.len());
    for (channel, top) in tops {
        let r: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
            .arg(format!("{CHANNEL_STREAM_PREFIX}{channel}"))
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(size)
            .query(con)?;
        let mut kept: Vec<(u64, Bytes)> = r
            .ids
            .iter()
            .rev()
            .filter_map(|e| {
                let o = e.get::<u64>("o")?;
                let f = e.get::<Vec<u8>>("f")?;
                Some((o, Bytes::from(f)))
            })
            .collect();
        kept.retain(|(o, _)| *o <= top);
        channels.push((channel, top, kept));
    }
    Ok(Loaded { epoch, channels })
}

/// A new epoch candidate: random, and short.
pub fn epoch_candidate() -> String {
    format!("{:012x}", crate::random::random_u64() >> 16)
}

/// Whether `e` may be an epoch: what [`epoch_candidate`] makes, or any
/// short token of letters, digits and `-_.:` another version might (it is
/// written into frames unescaped).
pub fn valid_epoch(e: &str) -> bool {
    !e.is_empty()
        && e.len() <= 64
        && e.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_are_valid_epochs_and_strange_ones_are_not() {
        let c = epoch_candidate();
        assert!(valid_epoch(&c), "{c}");
        assert_ne!(c, epoch_candidate());
        for bad in ["", "a\"b", "a\\b", "é", &"x".repeat(65)] {
            assert!(!valid_epoch(bad), "{bad:?}");
        }
    }
}
