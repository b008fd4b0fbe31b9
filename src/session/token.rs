//! A connection's credentials over time: `auth` (the static token or a
//! token the verifier accepts), the expiry notice and the cut after the
//! grace, and `refresh`. The rules about channels are in [`super::grant`].
//!
//! Time: a token's `exp` is wall-clock (Unix seconds), so expiry is read
//! from `Env::now_ms`; the grace is a span, so its deadline is monotonic
//! (`Env::now_mono_ms`). Both come from the caller, checked on the
//! session's one-second tick ([`Session::handle_tick`](super::Session::handle_tick)).

use super::config::SessionConfig;
use super::grant::{Grant, TokenRefusal, MAX_TOKEN_BYTES};
use super::output::reply_buf;
use super::{Env, Host, Session};
use crate::protocol::ErrorCode;

/// What `auth` proved and when the connection must refresh it.
#[derive(Debug, Default)]
pub(crate) struct Credentials {
    /// What the connection may do.
    pub grant: Grant,
    /// Set when `token_expired` was sent: the monotonic ms at which the
    /// connection is closed unless it refreshes first.
    cut_at: Option<u64>,
}

/// What the tick found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expiry {
    /// Nothing to do.
    Valid,
    /// The token just expired: send `token_expired`, keep serving.
    Notice,
    /// The grace is over with no refresh: close.
    Cut,
}

impl Session {
    /// The token's part of the tick: `token_expired` once the token has
    /// expired, and the cut when the grace is over. True if it queued a
    /// frame or closed.
    pub(super) fn tick_token<H: Host>(&mut self, env: &mut Env<'_, H>) -> bool {
        let code = ErrorCode::TokenExpired;
        match self
            .cred
            .check_expiry(&env.config, env.now_ms, env.now_mono_ms)
        {
            Expiry::Valid => false,
            Expiry::Notice => {
                let buf = reply_buf(&mut env.pool, &mut self.out);
                let msg = "your token expired: send refresh with a new one";
                crate::protocol::message::write_error(buf, None, code, msg, None);
                env.counters.error(code);
                true
            }
            Expiry::Cut => {
                self.fail(
                    env,
                    code,
                    "your token expired and was not refreshed in time",
                );
                true
            }
        }
    }
}

/// Checks the token of an `auth`: the static `auth_token` first (compared
/// in constant time), then the verifier. `now_ms`: wall clock.
pub(crate) fn authenticate(
    config: &SessionConfig,
    token: Option<&str>,
    now_ms: u64,
) -> Result<Grant, TokenRefusal> {
    let Some(token) = token else {
        return Err(TokenRefusal::Missing);
    };
    if let Some(expected) = &config.auth_token {
        if constant_time_eq(token.as_bytes(), expected.as_bytes()) {
            return Ok(Grant::Static);
        }
    }
    let Some(verifier) = &config.verifier else {
        return Err(TokenRefusal::Static);
    };
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenRefusal::TooLarge);
    }
    let claims = verifier.0.verify(token, now_ms / 1000)?;
    Ok(Grant::Token(Box::new(claims)))
}

impl Credentials {
    /// The user, for a token.
    pub fn user(&self) -> Option<&str> {
        self.grant.user().map(|u| &**u)
    }

    /// Called each tick while the connection is open.
    pub fn check_expiry(&mut self, config: &SessionConfig, now_ms: u64, now_mono: u64) -> Expiry {
        let Grant::Token(claims) = &self.grant else {
            return Expiry::Valid;
        };
        let Some(exp) = claims.expires_at else {
            return Expiry::Valid;
        };
        match self.cut_at {
            Some(at) if now_mono >= at => Expiry::Cut,
            Some(_) => Expiry::Valid,
            None if now_ms / 1000 >= exp.saturating_add(config.token_leeway_secs) => {
                self.cut_at = Some(now_mono + config.token_refresh_grace_secs * 1000);
                Expiry::Notice
            }
            None => Expiry::Valid,
        }
    }

    /// A `refresh {token}`: on success the new claims replace the old
    /// ones, any pending cut is called off, and the new expiry returned.
    /// A refused refresh closes the connection, as a refused `auth` does.
    pub fn refresh(
        &mut self,
        config: &SessionConfig,
        token: Option<&str>,
        now_ms: u64,
    ) -> Result<Option<u64>, TokenRefusal> {
        let (Some(user), Some(verifier)) = (self.grant.user().cloned(), &config.verifier) else {
            return Err(TokenRefusal::NotToken);
        };
        let token = token.ok_or(TokenRefusal::Missing)?;
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenRefusal::TooLarge);
        }
        let claims = verifier.0.verify(token, now_ms / 1000)?;
        if claims.user != user {
            return Err(TokenRefusal::OtherUser);
        }
        let expires_at = claims.expires_at;
        self.grant = Grant::Token(Box::new(claims));
        self.cut_at = None;
        Ok(expires_at)
    }
}

/// Compares secrets in time independent of where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u8 | ((a.len() ^ b.len()) >> 8) as u8;
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= x ^ y;
    }
    diff == 0 && a.len() == b.len()
}
