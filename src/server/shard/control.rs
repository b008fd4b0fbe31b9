//! The shard's side of the operator's API: it serves the [`Control`]
//! requests in its mailbox once per loop turn, between two polls, on its
//! own thread: a listing copies what the shard holds (it never locks
//! anything the message path uses), and a disconnect or unsubscribe acts
//! on the sessions like any of their own events would.

use super::{touch, Entry, Shard};
use crate::route::control::{
    ChannelSnapshot, ConnSnapshot, Control, ShardSnapshot, Target, CLOSED_KEEP,
};
use crate::route::ChannelIndex;
use crate::session::Host;
use std::collections::VecDeque;
use std::sync::Arc;

impl Shard<'_> {
    /// Serves the control requests queued since the last turn.
    pub(super) fn serve_control(&mut self) {
        let mut requests = Vec::new();
        self.shared.router.mailboxes[self.id].drain_control(|c| requests.push(c));
        for c in requests {
            match c {
                Control::Snapshot(reply) => reply(self.snapshot()),
                Control::Disconnect {
                    target,
                    reason,
                    reply,
                } => reply(self.disconnect(&target, &reason)),
                Control::Unsubscribe {
                    target,
                    channel,
                    reply,
                } => reply(self.unsubscribe(&target, &channel)),
            }
        }
    }

    fn snapshot(&self) -> ShardSnapshot {
        let channels = &self.env.host.channels;
        ShardSnapshot {
            shard: self.id,
            now_ms: self.env.now_ms,
            open: self
                .sessions
                .iter()
                .filter(|(_, e)| e.session.phase() == crate::session::Phase::Open)
                .map(|(k, e)| self.conn(k, e, Some(channels)))
                .collect(),
            closed: self.closed.iter().cloned().collect(),
            channels: channels
                .channel_figures()
                .map(|(c, subscribers, publishes, deliveries)| ChannelSnapshot {
                    channel: c.clone(),
                    subscribers,
                    publishes,
                    deliveries,
                })
                .collect(),
        }
    }

    /// One connection as the listing shows it (`channels`: its
    /// subscriptions, None once closed).
    fn conn(&self, key: usize, e: &Entry, channels: Option<&ChannelIndex>) -> ConnSnapshot {
        conn_snapshot(self.id, &self.env, key, e, channels)
    }

    fn matching(&self, target: &Target) -> Vec<usize> {
        self.sessions
            .iter()
            .filter(|(_, e)| e.session.phase() == crate::session::Phase::Open)
            .filter(|(_, e)| match target {
                Target::ClientId(id) => e.session.client_id() == &**id,
                Target::User(u) => e.session.user() == Some(&**u),
            })
            .map(|(k, _)| k)
            .collect()
    }

    fn disconnect(&mut self, target: &Target, reason: &str) -> u64 {
        let mut n = 0;
        for key in self.matching(target) {
            if self.sessions[key].session.kick(&mut self.env, reason) {
                n += 1;
                touch(&mut self.sessions, &mut self.touched, key);
            }
        }
        n
    }

    fn unsubscribe(&mut self, target: &Target, channel: &str) -> u64 {
        let mut n = 0;
        for key in self.matching(target) {
            if self.env.host.channels.is_subscribed(key, channel) {
                let held = self.env.host.unsubscribe(key, channel);
                self.tell_unsubscribed(key, channel, held as u64);
                n += 1;
            }
        }
        n
    }

    /// Tells session `key` that the operator dropped its subscription to
    /// `channel` (`unsubscribed` with `reason: "operator"`, as a token
    /// refresh that narrows the claims says `permission_denied`): a frame
    /// for that session alone, through this shard's own mailbox, so it is
    /// queued and flushed as any delivery.
    fn tell_unsubscribed(&mut self, key: usize, channel: &str, held: u64) {
        let Some(e) = self.sessions.get(key) else {
            return;
        };
        let mut frame = Vec::with_capacity(96);
        crate::protocol::auth::write_dropped(&mut frame, channel, "operator", held);
        let mut d = crate::route::Delivery::new(bytes::Bytes::from(frame), None);
        d.to = Some(crate::route::delivery::Target {
            shard: self.id,
            conn: key,
            client_id: Arc::from(e.session.client_id()),
        });
        self.shared.router.mailboxes[self.id].push(d, false);
    }
}

/// Remembers a connection that just closed, dropping the oldest past
/// [`CLOSED_KEEP`].
pub(super) fn remember_closed(
    closed: &mut VecDeque<ConnSnapshot>,
    shard: usize,
    env: &super::ShardEnv<'_>,
    key: usize,
    e: &Entry,
) {
    if closed.len() == CLOSED_KEEP {
        closed.pop_front();
    }
    let mut c = conn_snapshot(shard, env, key, e, None);
    c.closed_at_ms = Some(env.now_ms);
    c.reason = Some(
        e.session
            .stats()
            .reason
            .unwrap_or(crate::session::conninfo::reason::PEER_CLOSED),
    );
    closed.push_back(c);
}

fn conn_snapshot(
    shard: usize,
    env: &super::ShardEnv<'_>,
    key: usize,
    e: &Entry,
    channels: Option<&ChannelIndex>,
) -> ConnSnapshot {
    let s = &e.session;
    let st = s.stats();
    let id: Arc<str> = Arc::from(s.client_id());
    let idle = env.now_mono_ms.saturating_sub(s.last_active_mono_ms());
    ConnSnapshot {
        addr: id.clone(),
        client_id: id,
        user: s.user().map(Arc::from),
        shard,
        tls: s.is_tls(),
        codec: s.codec().map(|c| c.as_str()),
        connected_at_ms: st.connected_at_ms,
        last_activity_ms: env.now_ms.saturating_sub(idle).max(st.connected_at_ms),
        subscriptions: channels.map(|c| c.channels_of(key)).unwrap_or_default(),
        msgs_in: st.msgs_in,
        msgs_out: st.msgs_out,
        bytes_in: st.bytes_in,
        bytes_out: st.bytes_out,
        pending_bytes: s.pending() as u64,
        closed_at_ms: None,
        reason: None,
    }
}
