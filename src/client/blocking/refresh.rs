//! Tokens that expire: [`Client::refresh`], and the thread that asks the
//! token provider for a new token before the current one expires and sends
//! it in `refresh` (a reconnection asks the provider itself, in
//! `establish`).

use super::*;

/// Refresh no later than this many seconds before `expires_at`: a round
/// trip to the token provider's backend and one to the server fit with
/// room to spare, and the server's own leeway (30 s by default) is extra.
const REFRESH_AHEAD_SECS: u64 = 30;

impl Client {
    /// Sends `refresh` with `token` (a JWT for the same user as the one
    /// the connection authenticated with); returns its expiry (Unix
    /// seconds; None: it has none). A refused token makes the server close
    /// the connection (an error here, then a reconnection if enabled).
    pub fn refresh(&self, token: &str) -> Result<Option<u64>> {
        self.inner.refresh(token)
    }

    /// When the connection's token expires (Unix seconds), when it has an
    /// expiry the server reported (`auth_ok`, `refreshed`).
    pub fn token_expires_at(&self) -> Option<u64> {
        *lock(&self.inner.expires_at)
    }
}

impl Inner {
    fn refresh(&self, token: &str) -> Result<Option<u64>> {
        let mut f = Map::new();
        f.insert("token".into(), Value::from(token));
        let m = self.request("refresh", &f, self.cfg.request_timeout)?;
        expect_kind(&m, "refreshed")?;
        let exp = m.get_u64("expires_at");
        *lock(&self.expires_at) = exp;
        Ok(exp)
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// When to refresh a token first seen at `seen` (Unix seconds) that
/// expires at `exp`: half its remaining life, or `REFRESH_AHEAD_SECS`
/// before it ends, whichever is later.
fn refresh_at(seen: u64, exp: u64) -> u64 {
    let half = seen + exp.saturating_sub(seen) / 2;
    half.max(exp.saturating_sub(REFRESH_AHEAD_SECS))
}

/// The token thread (only with a token provider): once a second, checks
/// whether the current token is due, and if so gets a new one from the
/// provider and sends `refresh`. A failure (provider or server) is logged
/// and tried again a second later; the server's `token_expired` grace
/// leaves time for a few tries.
pub(super) fn refresh_main(inner: Arc<Inner>) {
    let Some(provider) = inner.cfg.token_provider.clone() else {
        return;
    };
    // The expiry last seen, and when it was first seen.
    let mut seen: Option<(u64, u64)> = None;
    loop {
        if inner.sleep_unless_closed(Duration::from_secs(1)) {
            return;
        }
        let Some(exp) = *lock(&inner.expires_at) else {
            seen = None;
            continue;
        };
        let now = unix_now();
        let since = match seen {
            Some((e, since)) if e == exp => since,
            _ => {
                seen = Some((exp, now));
                now
            }
        };
        if now < refresh_at(since, exp) {
            continue;
        }
        let r = provider.token().and_then(|t| inner.refresh(&t));
        if let Err(e) = r {
            tracing::warn!(error = %e, "token refresh failed; retrying");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::refresh_at;

    #[test]
    fn refresh_comes_before_expiry_for_short_and_long_tokens() {
        assert_eq!(refresh_at(1000, 1010), 1005);
        assert_eq!(refresh_at(1000, 1000 + 3600), 1000 + 3600 - 30);
        assert_eq!(refresh_at(1000, 900), 1000);
    }
}
