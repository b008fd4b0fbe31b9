//! What the server, the client and the load generator share about TLS:
//! the crypto provider, reading PEM files, and the protocol versions.
//!
//! rustls does the TLS; this module only loads its inputs, so that a bad
//! file is one clear error naming the file, wherever it is read.

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;

/// The crypto provider every ringcast TLS endpoint uses: aws-lc-rs,
/// rustls's default. Measured against ring as the server's provider
/// (bench-results/README.md, "TLS"): ring cost as much or more server CPU
/// per message in every case (about 14 % more per handshake) and was not
/// faster, so ring is not a dependency. Defining it once keeps such a
/// comparison a one-line change.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The provider a server uses: [`provider`] with the AES-128-GCM suites
/// first (TLS 1.3 `TLS13_AES_128_GCM_SHA256`, TLS 1.2 ECDHE with
/// AES-128-GCM), the others after them in rustls's order. With
/// `ignore_client_order` set on the server config this picks AES-128-GCM
/// with SHA-256 whenever the client offers it, where rustls's and
/// OpenSSL's clients list AES-256-GCM with SHA-384 first: fewer AES rounds
/// per record, and SHA-256 (which x86 CPUs with SHA extensions run in
/// hardware, SHA-384 they do not) in every handshake and resumption.
/// Measured in bench-results/README.md ("TLS").
pub fn server_provider() -> Arc<CryptoProvider> {
    use rustls::CipherSuite as C;
    let mut p = rustls::crypto::aws_lc_rs::default_provider();
    p.cipher_suites.sort_by_key(|s| {
        !matches!(
            s.suite(),
            C::TLS13_AES_128_GCM_SHA256
                | C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                | C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
        )
    });
    Arc::new(p)
}

/// Why a TLS input could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate file is missing, unreadable or holds no certificate.
    #[error("cannot read certificates from {path}: {reason}")]
    Certs {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// A key file is missing, unreadable or holds no private key.
    #[error("cannot read a private key from {path}: {reason}")]
    Key {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// rustls refused the combination (a key that does not match the
    /// certificate, say).
    #[error("{0}")]
    Config(String),
}

fn reason(e: rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::NoItemsFound => "no PEM item of that kind in it".into(),
        rustls::pki_types::pem::Error::Io(e) => e.to_string(),
        other => format!("bad PEM: {other:?}"),
    }
}

/// Reads every certificate of a PEM file, in order (a full chain: the
/// leaf first, then its intermediates).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |reason| TlsError::Certs {
        path: path.display().to_string(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(reason(e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(reason(e)))?;
    if certs.is_empty() {
        return Err(err("no CERTIFICATE block in it".into()));
    }
    Ok(certs)
}

/// Reads the first private key of a PEM file: PKCS#8, PKCS#1 (RSA) or
/// SEC1 (EC); RSA, ECDSA and Ed25519 keys all work.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Key {
        path: path.display().to_string(),
        reason: reason(e),
    })
}

/// A root store of the certificates in a PEM file (a CA bundle).
pub fn load_roots(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in load_certs(path)? {
        roots.add(c).map_err(|e| TlsError::Certs {
            path: path.display().to_string(),
            reason: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(roots)
}

/// The oldest TLS version an endpoint accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3.
    #[serde(rename = "1.2")]
    V1_2,
    /// TLS 1.3 only.
    #[serde(rename = "1.3")]
    V1_3,
}

impl TlsVersion {
    /// Every choice, in the order `--help` lists them.
    pub const ALL: [TlsVersion; 2] = [TlsVersion::V1_2, TlsVersion::V1_3];

    /// The name used in flags and the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsVersion::V1_2 => "1.2",
            TlsVersion::V1_3 => "1.3",
        }
    }

    /// The rustls protocol versions from this one up.
    pub fn versions(self) -> &'static [&'static rustls::SupportedProtocolVersion] {
        static TLS13_ONLY: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
        match self {
            TlsVersion::V1_2 => rustls::ALL_VERSIONS,
            TlsVersion::V1_3 => &TLS13_ONLY,
        }
    }
}

crate::choices::named_choices!(TlsVersion, as_str, "TLS version");
