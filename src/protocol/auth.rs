//! The frames of token authentication: `auth_ok` with the user, `refreshed`,
//! and the `unsubscribed` the server sends on its own when a refreshed
//! token no longer allows a subscription. docs/PROTOCOL.md, "Tokens".

use super::json::write_response;
use super::JsonValue;

/// `auth_ok` for a token: its user (`sub`) and when it expires (`exp`,
/// Unix seconds; null: never).
pub fn write_auth_ok_user(
    out: &mut Vec<u8>,
    id: Option<&JsonValue<'_, '_>>,
    user: &str,
    expires_at: Option<u64>,
) {
    write_response(out, "auth_ok", id, |o| {
        o.str("user", user);
        match expires_at {
            Some(t) => o.u64("expires_at", t),
            None => o.null("expires_at"),
        }
    });
}

/// `refreshed`: the new token's expiry (Unix seconds; null: never).
pub fn write_refreshed(out: &mut Vec<u8>, id: Option<&JsonValue<'_, '_>>, expires_at: Option<u64>) {
    write_response(out, "refreshed", id, |o| match expires_at {
        Some(t) => o.u64("expires_at", t),
        None => o.null("expires_at"),
    });
}

/// `unsubscribed` sent by the server: `channel` (or pattern) was dropped
/// for `reason` (`permission_denied` after a refresh narrowed the
/// claims); `subscriptions` is what the connection holds now. No `id`: no
/// request asked for it.
pub fn write_dropped(out: &mut Vec<u8>, channel: &str, reason: &str, subscriptions: u64) {
    write_response(out, "unsubscribed", None, |o| {
        o.str("channel", channel);
        o.u64("subscriptions", subscriptions);
        o.str("reason", reason);
    });
}
