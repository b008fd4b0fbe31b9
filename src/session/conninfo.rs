//! What an operator may read of one connection (`GET /v1/connections`):
//! its counters, its user, and why it closed.
//!
//! The counters are plain fields of the session, written only by the
//! shard thread that owns it (no atomics on the message path); the
//! listing reads them on that same thread, when the shard answers a
//! snapshot request from its mailbox (src/server/shard/control.rs).

use super::{Host, Phase, Session};
use crate::protocol::ErrorCode;

/// Why a connection closed, as `GET /v1/connections?state=closed` reports
/// it: one of these names, or a framing error's code.
pub mod reason {
    /// The peer closed its side or the connection broke.
    pub const PEER_CLOSED: &str = "peer_closed";
    /// No complete frame within `idle_timeout_secs`.
    pub const IDLE_TIMEOUT: &str = "idle_timeout";
    /// Cut by an operator (`POST /v1/disconnect`).
    pub const KICKED: &str = "kicked";
}

/// One connection's counters (see the module doc).
#[derive(Debug, Clone, Default)]
pub struct ConnStats {
    /// Unix ms of the accept.
    pub connected_at_ms: u64,
    /// Frames received (requests, whatever became of them).
    pub msgs_in: u64,
    /// Frames queued to it: broadcasts and channel messages delivered,
    /// plus one answer per request handled.
    pub msgs_out: u64,
    /// Bytes received (ciphertext on TLS).
    pub bytes_in: u64,
    /// Bytes the kernel took for sending (ciphertext on TLS).
    pub bytes_out: u64,
    /// Why it closed, once it has begun to close; the first cause wins.
    pub reason: Option<&'static str>,
}

impl ConnStats {
    /// Records why the connection closes, unless a cause is already known.
    pub(super) fn closing(&mut self, why: &'static str) {
        self.reason.get_or_insert(why);
    }
}

/// The reason a connection closing with `code` gets.
pub(super) fn reason_of(code: ErrorCode) -> &'static str {
    code.as_str()
}

impl Session {
    /// The compression codec negotiated with `hello`, if any.
    pub fn codec(&self) -> Option<crate::protocol::codec::Codec> {
        self.codec
    }

    /// The peer's "ip:port".
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The user (`sub`) of the token it authenticated with, if any.
    pub fn user(&self) -> Option<&str> {
        self.cred.user()
    }

    /// The connection's counters and close reason (its user is
    /// [`Session::user`], from its token).
    pub fn stats(&self) -> &ConnStats {
        &self.stats
    }

    /// Monotonic ms of its last complete frame (or of the accept).
    pub fn last_active_mono_ms(&self) -> u64 {
        self.last_active
    }

    /// Whether it came over TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// An operator cuts this connection (`POST /v1/disconnect`): it gets
    /// `error` `kicked` with `why` as the message, then is closed like any
    /// other error that ends a connection. Returns false if it was already
    /// closing.
    pub fn kick<H: Host>(&mut self, env: &mut super::Env<'_, H>, why: &str) -> bool {
        if self.phase != Phase::Open {
            return false;
        }
        self.stats.closing(reason::KICKED);
        self.fail(env, ErrorCode::Kicked, why);
        true
    }
}
