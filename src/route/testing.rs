//! A simulated node for the rule tests: a [`Router`] over in-memory
//! shards (no eventfds, no threads) and the session environment of each,
//! set up from one bag of the settings the tests vary.

use super::{NodeInfo, RouteSettings, Router, ShardRoute};
use crate::session::{Env, SessionConfig};
use std::collections::HashMap;

/// A shard's session environment, its sessions asking its router.
pub type TestEnv<'a> = Env<'a, ShardRoute<'a>>;

/// The settings the tests vary (named as the server's).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub auth_token: Option<String>,
    pub compression: bool,
    pub compression_threshold_bytes: usize,
    pub idle_timeout_secs: u64,
    pub max_frame_bytes: usize,
    pub max_partial_bytes: usize,
    pub max_pending_bytes: usize,
    pub max_subscriptions: usize,
    pub history: super::history::HistorySettings,
    pub rate_limit: u32,
    pub rate_burst: u32,
    pub tls_addr: Option<std::net::SocketAddr>,
    pub tls_handshake_timeout_secs: u64,
    pub jwt_leeway_secs: u64,
    pub token_refresh_grace_secs: u64,
    pub namespace: crate::session::grant::Namespaces,
}

impl Default for ServerConfig {
    fn default() -> Self {
        let s = SessionConfig::default();
        ServerConfig {
            auth_token: None,
            compression: s.compression,
            compression_threshold_bytes: s.compression_threshold_bytes,
            idle_timeout_secs: s.idle_timeout_secs,
            max_frame_bytes: s.max_frame_bytes,
            max_partial_bytes: s.max_partial_bytes,
            max_pending_bytes: s.max_pending_bytes,
            max_subscriptions: 1000,
            history: super::history::HistorySettings {
                size: 0,
                ttl_ms: 300_000,
                max_bytes: 256 << 20,
                recover_limit: 1000,
            },
            rate_limit: 0,
            rate_burst: 0,
            tls_addr: None,
            tls_handshake_timeout_secs: s.tls_handshake_timeout_secs,
            jwt_leeway_secs: s.token_leeway_secs,
            token_refresh_grace_secs: s.token_refresh_grace_secs,
            namespace: Default::default(),
        }
    }
}

/// A simulated node: the router and the settings.
pub struct Shared {
    pub router: Router,
    pub config: ServerConfig,
}

impl std::ops::Deref for Shared {
    type Target = Router;
    fn deref(&self) -> &Router {
        &self.router
    }
}

/// One shard with `cfg`.
pub fn shared(cfg: ServerConfig) -> Shared {
    shards(cfg, 1)
}

/// `n` shards with `cfg`.
pub fn shards(cfg: ServerConfig, n: usize) -> Shared {
    build(cfg, n, None)
}

/// `n` shards of a cluster node keeping `cfg.history` in Redis: the
/// backplane is never started (no Redis); a test plays its writer and
/// reader through the router's `cluster::Host` methods.
pub fn cluster_node(cfg: ServerConfig, n: usize) -> Shared {
    let c =
        crate::cluster::Cluster::new("redis://127.0.0.1:1", "test-node".into(), 1 << 20, 1 << 20)
            .expect("a URL")
            .with_history(crate::cluster::history::HistoryTarget {
                size: cfg.history.size,
                ttl_ms: cfg.history.ttl_ms,
            });
    build(cfg, n, Some(std::sync::Arc::new(c)))
}

fn build(
    cfg: ServerConfig,
    n: usize,
    cluster: Option<std::sync::Arc<crate::cluster::Cluster>>,
) -> Shared {
    let settings = RouteSettings {
        compression_threshold_bytes: cfg.compression_threshold_bytes,
        max_subscriptions: cfg.max_subscriptions,
        msg_ring: false,
        history: cfg.history,
    };
    let node = NodeInfo {
        start_unix_ms: 1_700_000_000_000,
        start_time: "2023-11-14T22:13:20.000Z".into(),
        io_backend: "epoll",
        handlers: HashMap::new(),
    };
    Shared {
        router: Router::new(&vec![-1; n], settings, node, cluster),
        config: cfg,
    }
}

impl Shared {
    /// The session settings of `config`.
    pub fn session_config(&self) -> SessionConfig {
        let c = &self.config;
        let rate = f64::from(c.rate_limit);
        SessionConfig {
            max_frame_bytes: c.max_frame_bytes,
            max_partial_bytes: c.max_partial_bytes,
            max_pending_bytes: c.max_pending_bytes,
            idle_timeout_secs: c.idle_timeout_secs,
            auth_token: c.auth_token.clone(),
            rate_limit: rate,
            rate_burst: if c.rate_burst > 0 {
                f64::from(c.rate_burst)
            } else {
                rate
            },
            compression: c.compression,
            compression_threshold_bytes: c.compression_threshold_bytes,
            tls_max_handshakes: SessionConfig::default().tls_max_handshakes,
            tls_handshake_timeout_secs: c.tls_handshake_timeout_secs,
            cluster: false,
            // Tests that need tokens set `TestTokens` (below).
            verifier: None,
            token_leeway_secs: c.jwt_leeway_secs,
            token_refresh_grace_secs: c.token_refresh_grace_secs,
            namespaces: c.namespace.clone(),
        }
    }

    /// Shard `shard`'s session environment.
    pub fn env(&self, shard: usize) -> TestEnv<'_> {
        Env::new(
            self.session_config(),
            shard,
            &self.router.counters[shard],
            ShardRoute::new(&self.router, shard),
            self.config.tls_addr.is_some(),
        )
    }
}

/// A verifier for session tests: the token is the claims as JSON, unsigned
/// (`{"sub":…,"exp":…,"subscribe":[…],"publish":[…],"history":[…],
/// "broadcast":…}`); `"bad"` is refused as a bad signature. The real
/// verifier is `server::jwt`, tested with signed tokens.
#[derive(Debug)]
pub struct TestTokens;

impl crate::session::grant::TokenVerifier for TestTokens {
    fn verify(
        &self,
        token: &str,
        now_secs: u64,
    ) -> Result<crate::session::grant::Claims, crate::session::grant::TokenRefusal> {
        use crate::session::grant::TokenRefusal;
        let v: serde_json::Value =
            serde_json::from_str(token).map_err(|_| TokenRefusal::Signature)?;
        let list = |k: &str| -> Vec<Box<str>> {
            v[k].as_array()
                .map(|a| a.iter().filter_map(|p| p.as_str().map(Box::from)).collect())
                .unwrap_or_default()
        };
        let exp = v["exp"].as_u64();
        if exp.is_some_and(|e| e + 30 <= now_secs) {
            return Err(TokenRefusal::Expired);
        }
        Ok(crate::session::grant::Claims {
            user: v["sub"].as_str().ok_or(TokenRefusal::Claims)?.into(),
            expires_at: exp,
            subscribe: list("subscribe"),
            publish: list("publish"),
            history: list("history"),
            broadcast: v["broadcast"].as_bool().unwrap_or(false),
        })
    }
}

impl TestTokens {
    /// The verifier, as the session settings hold it.
    pub fn verifier() -> crate::session::grant::Verifier {
        crate::session::grant::Verifier(std::sync::Arc::new(TestTokens))
    }
}
