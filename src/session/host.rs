//! What a session asks of the world outside its connection: the one narrow
//! interface between the sans-IO session and the server.
//!
//! The shard implements it with its router (`route::ShardRoute`); a test
//! implements it with a fake. The session never learns where a message
//! goes, who else is subscribed, or what the other shards and nodes hold.

use crate::protocol::message::{HistoryQuery, Recover};
use crate::protocol::{JsonValue, Request};
use bytes::Bytes;
use std::ops::Range;
use std::sync::Arc;

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
    /// Queued to this many recipients, but its offset is not known yet: a
    /// history channel's publication in a cluster, placed by Redis. The
    /// session hands its `published` reply to [`Host::await_placement`],
    /// which sends it with the offset once Redis has answered.
    Placing(u64),
    /// Delivered nowhere: a history channel's publication in a cluster
    /// gets its offset from Redis, which cannot be reached (and the buffer
    /// is full). The sender is told `backplane_unavailable`.
    Nowhere,
}

/// Why a subscribe was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    /// The connection already holds `max_subscriptions` channels.
    #[error("this connection already holds the server's max_subscriptions channels")]
    TooMany,
}

/// A history channel's position: its latest offset (0: none yet) and its
/// epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// The latest offset (a publication's own, in `published`).
    pub offset: u64,
    /// The epoch the offsets count in.
    pub epoch: Arc<str>,
}

impl Position {
    /// As the protocol writers take it.
    pub fn pair(&self) -> (u64, &str) {
        (self.offset, &self.epoch)
    }
}

/// What a subscribe did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribed {
    /// The channels the connection holds now.
    pub held: usize,
    /// On a history channel, its position as the subscription starts:
    /// live delivery begins after it.
    pub position: Option<Position>,
    /// The `recover` asked for was granted: the publications after it were
    /// written to the replay buffer, in offset order.
    pub recovered: bool,
}

/// Serialises a `channel_message` frame into the buffer given, with the
/// publication's offset and epoch on a history channel; returns the span
/// of the publication's own fields (`protocol::message::write_channel_message`).
pub type WriteMessage<'w> = dyn FnMut(&mut Vec<u8>, Option<(u64, &str)>) -> Range<usize> + 'w;

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
    /// The channels (and patterns) `conn` is subscribed to, for a check
    /// after its token is refreshed. The default: none (a host that keeps
    /// no subscriptions).
    fn subscriptions_of(&self, conn: ConnId) -> Vec<Arc<str>> {
        let _ = conn;
        Vec::new()
    }
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

    /// Publishes to `channel` the frame `write` makes. On a history
    /// channel the host assigns the offset, and `write` is called with it
    /// where the channel's order is fixed; the position is returned. A
    /// host without history (the default) writes the frame plainly and
    /// hands it to [`Host::publish`].
    fn publish_with(
        &mut self,
        from: ConnId,
        channel: &str,
        now_ms: u64,
        write: &mut WriteMessage<'_>,
    ) -> (Routed, Option<Position>) {
        let _ = now_ms;
        let mut frame = Vec::with_capacity(160);
        write(&mut frame, None);
        (self.publish(from, channel, Bytes::from(frame)), None)
    }

    /// Subscribes `conn` to `channel`, reporting its position on a history
    /// channel. With `recover`, the publications after it are written to
    /// `replay` (whole frames, in offset order) when every one is still
    /// kept under its epoch; none of them is then delivered live to
    /// `conn`, and every later one is. The default: [`Host::subscribe`],
    /// no history.
    fn subscribe_with(
        &mut self,
        conn: ConnId,
        channel: &str,
        now_ms: u64,
        recover: Option<Recover<'_>>,
        replay: &mut Vec<u8>,
    ) -> Result<Subscribed, SubscribeError> {
        let _ = (now_ms, recover, replay);
        Ok(Subscribed {
            held: self.subscribe(conn, channel)?,
            position: None,
            recovered: false,
        })
    }

    /// The `published` reply (`reply`, a whole frame without a position)
    /// to the publication [`Host::publish_with`] answered
    /// [`Routed::Placing`]: it goes to `conn` (`client_id`) once Redis has
    /// placed the publication, with its offset and epoch added. False when
    /// the publication could not be queued after all (the backplane's
    /// buffer filled meanwhile): it went nowhere, and the session says so.
    fn await_placement(&mut self, conn: ConnId, client_id: &str, reply: Bytes) -> bool {
        let _ = (conn, client_id, reply);
        false
    }

    /// `channel`'s kept publications that `query` asks for, as `history`
    /// entries separated by commas into `entries`
    /// (`protocol::message::write_history_entry`), and its position; `None`
    /// when the channel keeps no history (the default).
    fn history(
        &mut self,
        channel: &str,
        now_ms: u64,
        query: HistoryQuery,
        entries: &mut Vec<u8>,
    ) -> Option<Position> {
        let _ = (channel, now_ms, query, entries);
        None
    }
}
