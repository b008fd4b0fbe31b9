//! Requests from outside the shards (the operator's HTTP API) that a shard
//! answers on its own thread: a snapshot of its connections and channels,
//! disconnect, unsubscribe.
//!
//! They travel through the shard's mailbox ([`super::Mailbox::push_control`])
//! beside the deliveries, and the shard serves them once per loop turn
//! (src/server/shard/control.rs). A listing therefore never stops a shard
//! and takes no lock it shares: each shard copies what it holds between
//! two turns and hands the copy back through the request's reply; the
//! caller merges the shards' answers. What it reads of a connection are
//! plain fields its shard alone writes ([`crate::session::ConnStats`]).

use std::sync::Arc;

/// Closed connections a shard remembers for `state=closed`, newest last.
/// The listing keeps the newest [`CLOSED_KEEP`] over all shards; each
/// shard keeps as many, so the newest overall are always among them
/// however closes are spread. 10,000 entries of ~200 bytes: ~2 MB a shard.
pub const CLOSED_KEEP: usize = 10_000;

/// Whom a disconnect or unsubscribe is for (the backplane carries it to
/// the other nodes: see `cluster::control`).
pub use crate::cluster::control::Target;

/// A reply sent back from the shard thread.
pub type Reply<T> = Box<dyn FnOnce(T) + Send>;

/// A request to a shard (see the module doc).
pub enum Control {
    /// Copy the connections (open, and the closed ones remembered) and the
    /// channels with subscribers on this shard.
    Snapshot(Reply<ShardSnapshot>),
    /// Cut the target's connections with `error` `kicked` (the reason as
    /// its message); replies how many were cut.
    Disconnect {
        /// Whom.
        target: Target,
        /// The `kicked` error's message.
        reason: Arc<str>,
        /// How many connections were cut here.
        reply: Reply<u64>,
    },
    /// Unsubscribe the target's connections from `channel`; replies how
    /// many were subscribed.
    Unsubscribe {
        /// Whom.
        target: Target,
        /// The channel.
        channel: Arc<str>,
        /// How many subscriptions were dropped here.
        reply: Reply<u64>,
    },
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Control::Snapshot(_) => f.write_str("Snapshot"),
            Control::Disconnect { target, .. } => write!(f, "Disconnect({target:?})"),
            Control::Unsubscribe {
                target, channel, ..
            } => write!(f, "Unsubscribe({target:?}, {channel})"),
        }
    }
}

/// One connection as a listing shows it.
#[derive(Debug, Clone)]
pub struct ConnSnapshot {
    /// The client's id ("ip:port" today).
    pub client_id: Arc<str>,
    /// The peer's address.
    pub addr: Arc<str>,
    /// The user it authenticated as, if auth names one.
    pub user: Option<Arc<str>>,
    /// Its shard.
    pub shard: usize,
    /// Whether it came over TLS.
    pub tls: bool,
    /// The compression codec it negotiated, if any.
    pub codec: Option<&'static str>,
    /// Unix ms of the accept.
    pub connected_at_ms: u64,
    /// Unix ms of its last complete frame (or of the accept).
    pub last_activity_ms: u64,
    /// Channels it is subscribed to (empty once closed).
    pub subscriptions: Vec<Arc<str>>,
    /// Frames received.
    pub msgs_in: u64,
    /// Frames queued to it.
    pub msgs_out: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Bytes sent.
    pub bytes_out: u64,
    /// Output not yet sent.
    pub pending_bytes: u64,
    /// Unix ms it closed at (closed ones).
    pub closed_at_ms: Option<u64>,
    /// Why it closed (closed ones).
    pub reason: Option<&'static str>,
}

/// One channel with subscribers on a shard.
#[derive(Debug, Clone)]
pub struct ChannelSnapshot {
    /// The channel.
    pub channel: Arc<str>,
    /// Its subscribers on this shard.
    pub subscribers: u64,
    /// Publications delivered to its subscribers here since it last had
    /// none on this shard.
    pub publishes: u64,
    /// Copies of them queued to subscribers here.
    pub deliveries: u64,
}

/// What a shard answers a [`Control::Snapshot`] with.
#[derive(Debug, Clone, Default)]
pub struct ShardSnapshot {
    /// The shard.
    pub shard: usize,
    /// Its clock (unix ms) when it copied this.
    pub now_ms: u64,
    /// Open connections.
    pub open: Vec<ConnSnapshot>,
    /// Closed connections remembered, oldest first.
    pub closed: Vec<ConnSnapshot>,
    /// Channels with subscribers here.
    pub channels: Vec<ChannelSnapshot>,
}
