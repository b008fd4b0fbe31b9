//! What a session asks of the world outside its connection: the one narrow
//! interface between the sans-IO session and the server.
//!
//! The shard implements it with its router (`route::ShardRoute`); a test
//! implements it with a fake. The session never learns where a message
//! goes, who else is subscribed, or what the other shards and nodes hold.

use crate::protocol::{JsonValue, Request};
use bytes::Bytes;

/// A session's name on its shard (the shard's slab key).
pub type ConnId = usize;

/// What became of a broadcast or publish handed to [`Host`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routed {
    /// Queued to this many recipients (across shards and nodes; other
    /// nodes' share from their last heartbeats).
    Recipients(u64),
    /// Delivered on this node only: the backplane is down and its buffer
    /// full. The sender is told `backplane_unavailable`.
    LocalOnly,
}

/// Why a subscribe was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    /// The connection already holds `max_subscriptions` channels.
    #[error("this connection already holds the server's max_subscriptions channels")]
    TooMany,
}

/// A handler for a custom message type, registered by an embedding
/// application (the seed promises an extensible format).
///
/// It runs on the shard thread, inline: keep it short and non-blocking.
/// It writes its response frame(s) into `out`, usually with
/// [`crate::protocol::message::write_response`], copying `req.id`.
pub trait Handler: Send + Sync + 'static {
    /// Answers `req`, sent by `client_id`, at time `now` (timestamp format).
    fn handle(&self, req: &Request<'_, '_>, client_id: &str, now: &str, out: &mut Vec<u8>);
}

impl<F> Handler for F
where
    F: Fn(&Request<'_, '_>, &str, &str, &mut Vec<u8>) + Send + Sync + 'static,
{
    fn handle(&self, req: &Request<'_, '_>, client_id: &str, now: &str, out: &mut Vec<u8>) {
        self(req, client_id, now, out)
    }
}

/// The session's one interface to the server (see the module doc).
pub trait Host {
    /// `from` broadcast `frame` (a whole `broadcast_message` frame,
    /// serialised once) to every other established client.
    fn broadcast(&mut self, from: ConnId, frame: Bytes) -> Routed;
    /// `from` published `frame` (a whole `channel_message` frame) to
    /// `channel`'s subscribers.
    fn publish(&mut self, from: ConnId, channel: &str, frame: Bytes) -> Routed;
    /// Subscribes `conn` to `channel`; the channels it holds now.
    fn subscribe(&mut self, conn: ConnId, channel: &str) -> Result<usize, SubscribeError>;
    /// Unsubscribes `conn` from `channel` (no-op if it was not); the
    /// channels it holds now.
    fn unsubscribe(&mut self, conn: ConnId, channel: &str) -> usize;
    /// `conn` stops receiving (it is closing): drop its subscriptions.
    fn drop_subscriptions(&mut self, conn: ConnId);
    /// Writes the `server_stats` response to `get_stats` (a snapshot of
    /// the server's figures, `now` as its `current_time`) into `out`.
    fn write_stats(
        &mut self,
        out: &mut Vec<u8>,
        id: Option<&JsonValue<'_, '_>>,
        now: &str,
        now_ms: u64,
    );
    /// The handler registered for a custom message type, if any.
    fn handler(&self, type_name: &str) -> Option<&dyn Handler>;
}
