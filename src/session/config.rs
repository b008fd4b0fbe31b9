//! The settings a session reads: a copy made once per shard from the
//! server's configuration (`ServerConfig::session_config`), so the session
//! needs nothing of the server to be built or tested.

/// A connection's straddle buffer may always grow to this, whatever the
/// shard's other partial frames hold: 4 KiB holds any small request, so a
/// shard at its `max_partial_bytes` budget still serves small frames that
/// straddle receive buffers. The budget's worst case is therefore
/// `max_partial_bytes` + 4 KiB × its connections.
pub const SMALL_PARTIAL_BYTES: usize = 4 << 10;

/// What the session needs to know of the server's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionConfig {
    /// Largest frame payload accepted.
    pub max_frame_bytes: usize,
    /// Per-shard budget of buffer held by partly received frames.
    pub max_partial_bytes: usize,
    /// A client whose unsent output would pass this (only broadcasts and
    /// channel messages can do it) is cut as a slow consumer.
    pub max_pending_bytes: usize,
    /// Seconds without a complete frame before a connection is closed (0:
    /// never).
    pub idle_timeout_secs: u64,
    /// The token `auth` must carry; `None`: no auth.
    pub auth_token: Option<String>,
    /// Requests per second per connection (0: no limit).
    pub rate_limit: f64,
    /// Bucket size of the rate limit.
    pub rate_burst: f64,
    /// Offer compression in `hello`.
    pub compression: bool,
    /// Payloads up to this size are never compressed.
    pub compression_threshold_bytes: usize,
    /// TLS handshakes in progress per shard at most.
    pub tls_max_handshakes: usize,
    /// Seconds a TLS handshake may take.
    pub tls_handshake_timeout_secs: u64,
    /// The node is part of a cluster (`hello` lists the feature).
    pub cluster: bool,
    /// Verifies the tokens (JWTs) `auth` and `refresh` carry; `None`: only
    /// the static `auth_token`, if any, is accepted.
    pub verifier: Option<super::grant::Verifier>,
    /// Seconds past a token's `exp` before `token_expired` (clock skew).
    pub token_leeway_secs: u64,
    /// Seconds after `token_expired` before the connection is closed,
    /// unless it sends `refresh`.
    pub token_refresh_grace_secs: u64,
    /// The namespace rules, in order (empty: none).
    pub namespaces: super::grant::Namespaces,
}

impl SessionConfig {
    /// Whether a connection must send `auth` first.
    pub fn auth_required(&self) -> bool {
        self.auth_token.is_some() || self.verifier.is_some()
    }
}

impl Default for SessionConfig {
    /// The server's defaults.
    fn default() -> Self {
        SessionConfig {
            max_frame_bytes: crate::protocol::DEFAULT_MAX_FRAME_BYTES,
            max_partial_bytes: 256 << 20,
            max_pending_bytes: 8 << 20,
            idle_timeout_secs: 300,
            auth_token: None,
            rate_limit: 0.0,
            rate_burst: 0.0,
            compression: true,
            compression_threshold_bytes: crate::protocol::codec::DEFAULT_THRESHOLD,
            tls_max_handshakes: 1024,
            tls_handshake_timeout_secs: 10,
            cluster: false,
            verifier: None,
            token_leeway_secs: 30,
            token_refresh_grace_secs: 10,
            namespaces: super::grant::Namespaces::default(),
        }
    }
}
