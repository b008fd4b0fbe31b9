//! TLS test material made at test time (rcgen): a CA, server certificates
//! it signs for `localhost` and 127.0.0.1, a client certificate for mutual
//! TLS, written as PEM files into a fresh directory; and servers and
//! clients that use them. No key is ever committed.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, SignatureAlgorithm,
};
use ringcast::client::{Client, TlsOptions};
use ringcast::server::{ServerBuilder, ServerHandle};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A directory of PEM files for one test (removed on drop).
pub struct Pki {
    pub dir: PathBuf,
    /// The CA certificate every certificate here is signed by.
    pub ca: PathBuf,
    /// The server's chain (leaf, CA) and key.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// A client certificate for mutual TLS, and its key.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn fresh_dir() -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let d = std::env::temp_dir().join(format!(
        "ringcast-tls-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

impl Pki {
    /// A CA, an ECDSA P-256 server certificate and a client certificate.
    pub fn new() -> Pki {
        Pki::with_server_key(&rcgen::PKCS_ECDSA_P256_SHA256)
    }

    /// The same with the server key of `alg` (RSA, ECDSA or Ed25519).
    pub fn with_server_key(alg: &'static SignatureAlgorithm) -> Pki {
        let dir = fresh_dir();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "ringcast test CA");
        let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let issuer = CertifiedIssuer::self_signed(ca, ca_key).unwrap();
        let ca_path = dir.join("ca.pem");
        std::fs::write(&ca_path, issuer.pem()).unwrap();
        let mut pki = Pki {
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
            ca: ca_path,
            dir,
            issuer,
        };
        let (cert, key) = (pki.cert.clone(), pki.key.clone());
        pki.write_server("ringcast test server", alg, &cert, &key);
        let mut client = CertificateParams::new(Vec::<String>::new()).unwrap();
        client
            .distinguished_name
            .push(DnType::CommonName, "ringcast test client");
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let ck = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let c = client.signed_by(&ck, &pki.issuer).unwrap();
        std::fs::write(&pki.client_cert, c.pem()).unwrap();
        std::fs::write(&pki.client_key, ck.serialize_pem()).unwrap();
        pki
    }

    /// Writes a server certificate named `cn` (for localhost and
    /// 127.0.0.1, signed by the CA, chain = leaf + CA) and its key.
    pub fn write_server(
        &mut self,
        cn: &str,
        alg: &'static SignatureAlgorithm,
        cert: &Path,
        key: &Path,
    ) {
        let mut p =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let k = KeyPair::generate_for(alg).unwrap();
        let c = p.signed_by(&k, &self.issuer).unwrap();
        std::fs::write(cert, format!("{}{}", c.pem(), self.issuer.pem())).unwrap();
        std::fs::write(key, k.serialize_pem()).unwrap();
    }

    /// A client certificate signed by a CA the server does not trust.
    pub fn write_stranger_client(&self) -> (PathBuf, PathBuf) {
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let other = CertifiedIssuer::self_signed(
            ca,
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
        )
        .unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let k = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let c = p.signed_by(&k, &other).unwrap();
        let (cp, kp) = (self.dir.join("stranger.pem"), self.dir.join("stranger.key"));
        std::fs::write(&cp, c.pem()).unwrap();
        std::fs::write(&kp, k.serialize_pem()).unwrap();
        (cp, kp)
    }

    /// A builder for a server with TLS on an ephemeral port beside plain.
    pub fn server(&self, shards: usize) -> ServerBuilder {
        super::server::builder(shards)
            .tls_addr(Some("127.0.0.1:0".parse().unwrap()))
            .tls_cert(Some(self.cert.clone()))
            .tls_key(Some(self.key.clone()))
    }

    /// Client options trusting this CA.
    pub fn client_options(&self) -> TlsOptions {
        TlsOptions {
            ca: Some(self.ca.clone()),
            ..TlsOptions::default()
        }
    }

    /// Client options with the client certificate (mutual TLS).
    pub fn mtls_options(&self) -> TlsOptions {
        TlsOptions {
            cert: Some(self.client_cert.clone()),
            key: Some(self.client_key.clone()),
            ..self.client_options()
        }
    }
}

/// The TLS address of a running server.
pub fn tls_addr(h: &ServerHandle) -> std::net::SocketAddr {
    h.tls_addr().expect("a TLS listener")
}

/// Our client over TLS to `h`.
pub fn connect(
    h: &ServerHandle,
    opts: TlsOptions,
) -> Result<Client, ringcast::client::ClientError> {
    Client::builder().tls(opts).connect(tls_addr(h))
}
