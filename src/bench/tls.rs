//! TLS for the load generator: each connection has its own client-side
//! rustls state; the handshake (and authentication) is done blocking
//! before the connection joins the generator's backend, then records are
//! encrypted into the send buffers and decrypted off the receive buffers.

use crate::client::TlsOptions;
use rustls::pki_types::ServerName;
use rustls::ClientConnection;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;

/// What every TLS connection of a run shares.
#[derive(Debug, Clone)]
pub struct BenchTls {
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
}

impl BenchTls {
    /// From the run's options (files read once, here).
    pub fn new(opts: &TlsOptions, addr: SocketAddr) -> io::Result<BenchTls> {
        let bad = |e: crate::client::ClientError| {
            io::Error::new(io::ErrorKind::InvalidInput, e.to_string())
        };
        Ok(BenchTls {
            config: opts.client_config().map_err(bad)?,
            name: opts.name_for(&addr).map_err(bad)?,
        })
    }

    /// Runs the handshake on `sock` (blocking; its timeouts apply).
    pub fn handshake(&self, sock: &mut TcpStream) -> io::Result<ClientConnection> {
        let mut c = ClientConnection::new(self.config.clone(), self.name.clone())
            .map_err(io::Error::other)?;
        while c.is_handshaking() {
            c.complete_io(sock)?;
        }
        Ok(c)
    }
}

/// Encrypts `plain` onto the end of `cipher`.
pub fn encrypt(c: &mut ClientConnection, mut plain: &[u8], cipher: &mut Vec<u8>) -> io::Result<()> {
    while !plain.is_empty() {
        let n = c.writer().write(plain)?;
        plain = &plain[n..];
        while c.wants_write() {
            c.write_tls(cipher)?;
        }
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
    }
    Ok(())
}

/// Decrypts `data`, handing each run of plaintext to `on_plain` (in
/// `buf`); false from it stops.
pub fn decrypt(
    c: &mut ClientConnection,
    mut data: &[u8],
    buf: &mut [u8],
    mut on_plain: impl FnMut(&mut [u8]) -> bool,
) -> io::Result<()> {
    while !data.is_empty() {
        c.read_tls(&mut data)?;
        let state = c
            .process_new_packets()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let mut left = state.plaintext_bytes_to_read();
        while left > 0 {
            let n = c.reader().read(buf)?;
            if n == 0 {
                break;
            }
            left -= n.min(left);
            if !on_plain(&mut buf[..n]) {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// A blocking stream over a socket, through TLS when `tls` is given (for
/// the generator's set-up round trips).
pub fn stream<'a>(
    sock: &'a mut TcpStream,
    tls: Option<&'a mut ClientConnection>,
) -> Box<dyn ReadWrite + 'a> {
    match tls {
        Some(c) => Box::new(rustls::Stream::new(c, sock)),
        None => Box::new(sock),
    }
}

/// Read + Write, as one trait object.
pub trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}
