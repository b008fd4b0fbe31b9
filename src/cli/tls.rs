//! The TLS flags `ringcast client` and `ringcast bench` share.

use crate::client::tls::host_of;
use crate::client::TlsOptions;
use std::path::PathBuf;

/// Connecting over TLS.
#[derive(Debug, Clone, Default, PartialEq, clap::Args)]
pub struct TlsArgs {
    /// Connect over TLS (the server's --tls-addr). Implied by the other
    /// --tls-* flags.
    #[arg(long)]
    pub tls: bool,
    /// PEM file of CA certificates to trust (default: the usual public CAs,
    /// as webpki-roots ships them).
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// Name the server's certificate must carry (default: the host of --addr).
    #[arg(long, value_name = "NAME")]
    pub tls_server_name: Option<String>,
    /// Client certificate chain (PEM) for mutual TLS; needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

impl TlsArgs {
    /// The client's TLS options for a server at `addr` ("host:port"), or
    /// None for plain TCP.
    pub fn to_options(&self, addr: &str) -> Option<TlsOptions> {
        let on = self.tls
            || self.tls_ca.is_some()
            || self.tls_server_name.is_some()
            || self.tls_cert.is_some();
        on.then(|| TlsOptions {
            ca: self.tls_ca.clone(),
            server_name: Some(
                self.tls_server_name
                    .clone()
                    .unwrap_or_else(|| host_of(addr).to_string()),
            ),
            cert: self.tls_cert.clone(),
            key: self.tls_key.clone(),
            min_version: None,
        })
    }
}
