//! The session's side of a TLS handshake: established once it is done,
//! counted and logged once when it fails.

use super::counters::bump;
use super::tls::HandshakeFailure;
use super::{Env, Host, Phase, Session};

impl Session {
    /// The TLS handshake finished (the transport no longer counts it as in
    /// progress): the client is established (or, with an auth token, may
    /// now authenticate).
    pub(super) fn handshake_finished<H: Host>(&mut self, env: &mut Env<'_, H>) {
        if self.phase == Phase::Open && self.authed && !self.established {
            self.establish(env);
        }
    }

    /// Counts a failed handshake, once (and logs it, within the warning
    /// budget); it no longer counts as in progress.
    pub(super) fn handshake_failed<H: Host>(
        &mut self,
        env: &mut Env<'_, H>,
        why: HandshakeFailure,
    ) {
        if let Some(t) = &mut self.tls {
            t.handshaking = false;
            env.tls_handshakes -= 1;
        }
        bump(&env.counters.tls_handshake_failures[why.index()], 1);
        if let Some(suppressed) = env.warn_budget.allow(env.now_mono_ms) {
            tracing::warn!(
                shard = env.shard,
                client_id = %self.client_id,
                reason = why.as_str(),
                suppressed,
                "TLS handshake failed"
            );
        }
    }
}
