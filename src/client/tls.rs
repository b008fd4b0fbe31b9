//! TLS for the client: settings, the rustls client configuration, and a
//! stream that is plain TCP or TLS over it.
//!
//! The client reads on one thread and writes from any, on clones of one
//! socket. With TLS both sides share one `rustls::ClientConnection` behind
//! a mutex that is never held during socket I/O: the reader reads
//! ciphertext off the socket unlocked, then locks to decrypt it; a writer
//! (already serialised by the connection's writer lock, which keeps
//! records in order) locks to encrypt, then writes the ciphertext
//! unlocked. A writer blocked on a full socket therefore never stops the
//! reader from draining the server.

use super::{ClientError, Result};
use crate::sync::lock;
use crate::tls::{load_certs, load_key, load_roots, provider, TlsVersion};
use rustls::pki_types::ServerName;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How a client speaks TLS (`--tls` and the flags beside it).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TlsOptions {
    /// PEM file of CA certificates to trust; None: the Mozilla roots that
    /// `webpki-roots` ships (the usual public CAs).
    pub ca: Option<PathBuf>,
    /// The name the server's certificate must carry; None: the IP address
    /// connected to (`ringcast client` and `ringcast bench` pass the host
    /// of `--addr`).
    pub server_name: Option<String>,
    /// Client certificate chain (PEM) for mutual TLS, with `key`.
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub key: Option<PathBuf>,
    /// Oldest TLS version to accept.
    pub min_version: Option<TlsVersion>,
}

impl TlsOptions {
    /// The rustls configuration these options describe (files read now).
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>> {
        let bad = |e: crate::tls::TlsError| ClientError::InvalidArgument(e.to_string());
        let roots = match &self.ca {
            Some(path) => load_roots(path).map_err(bad)?,
            None => rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            },
        };
        let versions = self.min_version.unwrap_or(TlsVersion::V1_2).versions();
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)
            .map_err(|e| ClientError::InvalidArgument(e.to_string()))?
            .with_root_certificates(roots);
        let config = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => builder
                .with_client_auth_cert(load_certs(cert).map_err(bad)?, load_key(key).map_err(bad)?)
                .map_err(|e| {
                    ClientError::InvalidArgument(format!(
                        "client certificate {} with key {}: {e}",
                        cert.display(),
                        key.display()
                    ))
                })?,
            (None, None) => builder.with_no_client_auth(),
            _ => {
                return Err(ClientError::InvalidArgument(
                    "a client certificate needs its key, and a key its certificate".into(),
                ))
            }
        };
        Ok(Arc::new(config))
    }

    /// The name to verify: `server_name`, or the IP address of `addr`.
    pub fn name_for(&self, addr: &std::net::SocketAddr) -> Result<ServerName<'static>> {
        let Some(host) = &self.server_name else {
            return Ok(ServerName::IpAddress(addr.ip().into()));
        };
        ServerName::try_from(host.clone()).map_err(|e| {
            ClientError::InvalidArgument(format!(
                "`{host}` is not a TLS server name ({e}); give one with --tls-server-name"
            ))
        })
    }
}

/// The host part of "host:port", "[v6]:port" or a bare host.
pub fn host_of(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.parse::<u16>().is_ok() => host,
        _ => addr,
    }
}

/// A connection's byte stream: plain TCP, or TLS over it (see the module
/// doc). Clones share the socket and the TLS state.
#[derive(Debug)]
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls {
        sock: TcpStream,
        tls: Arc<Mutex<rustls::ClientConnection>>,
    },
}

impl Stream {
    /// Runs the TLS handshake on `sock` (blocking, within `timeout`).
    pub fn handshake(
        sock: TcpStream,
        config: Arc<rustls::ClientConfig>,
        name: ServerName<'static>,
        timeout: Duration,
    ) -> Result<Stream> {
        let mut conn = rustls::ClientConnection::new(config, name)
            .map_err(|e| ClientError::InvalidArgument(e.to_string()))?;
        sock.set_read_timeout(Some(timeout))?;
        sock.set_write_timeout(Some(timeout))?;
        let mut s = &sock;
        while conn.is_handshaking() {
            conn.complete_io(&mut s).map_err(|e| match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                    ClientError::Timeout(timeout)
                }
                _ => ClientError::Disconnected {
                    reason: format!("TLS handshake failed: {e}"),
                },
            })?;
        }
        sock.set_read_timeout(None)?;
        Ok(Stream::Tls {
            sock,
            tls: Arc::new(Mutex::new(conn)),
        })
    }

    /// The socket underneath (timeouts, shutdown, addresses).
    pub fn socket(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) | Stream::Tls { sock: s, .. } => s,
        }
    }

    /// Another handle on the same connection.
    pub fn try_clone(&self) -> io::Result<Stream> {
        Ok(match self {
            Stream::Plain(s) => Stream::Plain(s.try_clone()?),
            Stream::Tls { sock, tls } => Stream::Tls {
                sock: sock.try_clone()?,
                tls: tls.clone(),
            },
        })
    }

    /// Reads plaintext; `scratch` holds ciphertext read off the socket.
    pub fn read(&mut self, buf: &mut [u8], scratch: &mut [u8]) -> io::Result<usize> {
        let (sock, tls) = match self {
            Stream::Plain(s) => return s.read(buf),
            Stream::Tls { sock, tls } => (sock, tls),
        };
        loop {
            {
                let mut c = lock(tls);
                match c.reader().read(buf) {
                    Ok(n) => return Ok(n), // 0: the server's close_notify
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
            let n = sock.read(scratch)?;
            if n == 0 {
                return Ok(0); // closed without close_notify
            }
            let mut c = lock(tls);
            let mut data = &scratch[..n];
            while !data.is_empty() {
                c.read_tls(&mut data)?;
                c.process_new_packets()
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            }
        }
    }

    /// Writes all of `data` (encrypted first with TLS; `out` is scratch).
    pub fn write_all(&mut self, data: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        let (sock, tls) = match self {
            Stream::Plain(s) => return s.write_all(data),
            Stream::Tls { sock, tls } => (sock, tls),
        };
        out.clear();
        {
            let mut c = lock(tls);
            // rustls takes a bounded amount of plaintext per call: move
            // the ciphertext out between calls.
            let mut rest = data;
            while !rest.is_empty() {
                let n = c.writer().write(rest)?;
                rest = &rest[n..];
                while c.wants_write() {
                    c.write_tls(out)?;
                }
                if n == 0 {
                    return Err(io::ErrorKind::WriteZero.into());
                }
            }
        }
        sock.write_all(out)
    }

    /// Sends close_notify (TLS) before the caller shuts the socket.
    pub fn close_notify(&mut self) {
        if let Stream::Tls { sock, tls } = self {
            let mut out = Vec::new();
            {
                let mut c = lock(tls);
                c.send_close_notify();
                while c.wants_write() {
                    if c.write_tls(&mut out).is_err() {
                        break;
                    }
                }
            }
            let _ = sock.write_all(&out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn host_of_addresses() {
        assert_eq!(host_of("localhost:9999"), "localhost");
        assert_eq!(host_of("127.0.0.1:9999"), "127.0.0.1");
        assert_eq!(host_of("[::1]:9999"), "::1");
        assert_eq!(host_of("example.com"), "example.com");
    }
}
