//! The server's TLS configuration, swappable while the server runs.
//!
//! Every shard makes its new TLS connections from the one
//! `rustls::ServerConfig` held here. A reload (SIGHUP, or
//! [`ServerHandle::reload_tls`](super::ServerHandle::reload_tls)) builds a
//! new one from the files and swaps it in whole: handshakes that start
//! afterwards use the new certificate, connections already made keep the
//! config they were made with (rustls holds it by `Arc`), and a file that
//! does not load leaves the old one in place.

use super::ServerConfig;
use crate::tls::{load_certs, load_key, load_roots, provider, server_provider, TlsError};
use arc_swap::ArcSwap;
use std::sync::Arc;

/// Makes TLS connections for the shards (see the module doc).
#[derive(Debug)]
pub(crate) struct TlsAcceptor {
    current: ArcSwap<rustls::ServerConfig>,
}

impl TlsAcceptor {
    /// The acceptor for `cfg`, or None when it has no TLS listener.
    pub fn new(cfg: &ServerConfig) -> Result<Option<TlsAcceptor>, TlsError> {
        if cfg.tls_addr.is_none() {
            return Ok(None);
        }
        Ok(Some(TlsAcceptor {
            current: ArcSwap::from(build(cfg)?),
        }))
    }

    /// A server-side TLS connection for a client just accepted.
    pub fn accept(&self) -> Result<rustls::ServerConnection, rustls::Error> {
        rustls::ServerConnection::new(self.current.load_full())
    }

    /// Builds the configuration from `cfg`'s files and, if that works,
    /// uses it for every handshake from now on.
    pub fn reload(&self, cfg: &ServerConfig) -> Result<(), TlsError> {
        self.current.store(build(cfg)?);
        Ok(())
    }
}

/// A rustls server configuration from the TLS settings (which
/// `ServerConfig::validate` has checked are all there).
fn build(cfg: &ServerConfig) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let (Some(cert), Some(key)) = (&cfg.tls_cert, &cfg.tls_key) else {
        return Err(TlsError::Config("tls_cert and tls_key are needed".into()));
    };
    let chain = load_certs(cert)?;
    let key_der = load_key(key)?;
    let builder = rustls::ServerConfig::builder_with_provider(server_provider())
        .with_protocol_versions(cfg.tls_min_version.versions())
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match &cfg.tls_client_ca {
        Some(ca) => {
            let roots = Arc::new(load_roots(ca)?);
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider())
                    .build()
                    .map_err(|e| TlsError::Config(format!("client CA {}: {e}", ca.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key_der).map_err(|e| {
        TlsError::Config(format!(
            "certificate {} with key {}: {e}",
            cert.display(),
            key.display()
        ))
    })?;
    // Our suite order, not the client's (see `server_provider`).
    config.ignore_client_order = true;
    Ok(Arc::new(config))
}
