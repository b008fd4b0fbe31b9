//! Blocking set-up, before a connection joins a generator thread's ring:
//! connect, TLS handshake, then the client library's sans-IO set-up
//! ([`crate::client::handshake`]: `hello`, `auth`) driven over the socket,
//! and for a pubsub subscriber its `subscribe`. Also the blocking round
//! trips of the connection workloads and `get_stats`.
//!
//! Frames are read one at a time, never a byte past the frame, so that
//! whatever follows stays in the socket for the ring.

use super::plan::{Role, Slot};
use super::replies::{is_delivery, MAX_FRAME};
use super::requests::subscription_name;
use super::tls::{BenchTls, ReadWrite};
use super::{BenchConfig, BenchError, Workload};
use crate::client::frames::parse_message;
use crate::client::handshake::{Handled, Handshake, HandshakeError, Offer};
use crate::protocol::codec::{Codec, Decompressor, COMPRESSED_FLAG};
use crate::protocol::json::ObjectWriter;
use crate::protocol::{encode_frame, ServerStats, HEADER_LEN};
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

/// How long a blocking set-up step may wait for the server.
const SETUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects to `addr`, from `source` when given.
pub fn connect(addr: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    if let Some(ip) = source {
        s.bind(&SocketAddr::new(ip, 0).into())?;
    }
    s.connect_timeout(&addr.into(), SETUP_TIMEOUT)?;
    s.set_nodelay(true)?;
    Ok(s.into())
}

/// A connection set up (handshakes done) before it joins the ring.
pub struct Connected {
    /// The socket.
    pub sock: TcpStream,
    /// Its TLS state (None: plain TCP).
    pub tls: Option<rustls::ClientConnection>,
    /// The codec `hello_ok` chose and the server's compression threshold
    /// (None: no `--compress`).
    pub codec: Option<(Codec, usize)>,
}

/// Connects, runs the TLS handshake when `tls` is given, says `hello`
/// offering `compress` when given (the server must agree: a bench asked to
/// measure compression does not quietly measure without it), and, when a
/// token is given, authenticates (blocking, before the connection joins
/// the ring).
pub fn connect_auth(
    addr: SocketAddr,
    source: Option<IpAddr>,
    token: Option<&str>,
    tls: Option<&BenchTls>,
    compress: Option<Codec>,
) -> io::Result<Connected> {
    let mut sock = connect(addr, source)?;
    sock.set_read_timeout(Some(SETUP_TIMEOUT))?;
    let mut conn = match tls {
        Some(t) => Some(t.handshake(&mut sock)?),
        None => None,
    };
    let offer = Offer {
        compression: compress.into_iter().collect(),
        require_compression: true,
        client_info: "ringcast-bench".into(),
        token: token.map(str::to_owned),
        verify: false,
    };
    let codec = {
        let mut s = super::tls::stream(&mut sock, conn.as_mut());
        handshake(&mut *s, offer).map_err(|e| match e {
            HandshakeError::CompressionRefused(_) => io::Error::other(format!(
                "--compress {}: {e}",
                compress.map_or("?", Codec::as_str)
            )),
            HandshakeError::AuthRefused(_) => {
                io::Error::new(io::ErrorKind::PermissionDenied, e.to_string())
            }
            HandshakeError::HelloRefused(e) | HandshakeError::Failed(e) => match e {
                crate::client::ClientError::Io(e) => e,
                e => io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
            },
        })?
    };
    sock.set_read_timeout(None)?;
    Ok(Connected {
        sock,
        tls: conn,
        codec,
    })
}

/// Drives the client's set-up over `s`, a frame at a time; returns the
/// codec `hello_ok` chose and the server's compression threshold.
fn handshake(
    s: &mut dyn ReadWrite,
    offer: Offer,
) -> Result<Option<(Codec, usize)>, HandshakeError> {
    let io = |e: io::Error| HandshakeError::Failed(e.into());
    let mut hs = Handshake::new(offer);
    let mut id = 0;
    let mut frame = Vec::new();
    while let Some(req) = hs.poll_request(|| {
        id += 1;
        id
    }) {
        frame.clear();
        encode_frame(&mut frame, &req.payload);
        s.write_all(&frame).map_err(io)?;
        loop {
            let payload = read_frame_with(s, hs.codec()).map_err(io)?;
            let m = parse_message(&payload).map_err(HandshakeError::Failed)?;
            // Broadcasts arriving meanwhile answer nothing: dropped.
            if let Handled::Answered = hs.handle_message(m)? {
                break;
            }
        }
    }
    let hello = hs.finish();
    Ok(hello.and_then(|h| h.compression.map(|c| (c, h.compression_threshold))))
}

/// Connects (and says hello and authenticates) like [`connect_auth`]; a
/// pubsub subscriber then joins its channel before the connection joins
/// the ring.
pub(super) fn connect_slot(
    cfg: &BenchConfig,
    slot: &Slot,
    src: Option<IpAddr>,
    tls: Option<&BenchTls>,
) -> io::Result<Connected> {
    let mut c = connect_auth(slot.server, src, cfg.token.as_deref(), tls, cfg.compress)?;
    if cfg.workload == Workload::Pubsub && slot.role == Role::Subscriber {
        // Its `subscriptions` consecutive channels from its own on.
        for k in 0..cfg.subscriptions.max(1) {
            let n = (slot.channel + k) % cfg.channels.max(1);
            let mut payload = Vec::new();
            let mut o = ObjectWriter::new(&mut payload);
            o.raw_str("type", "subscribe");
            o.str("channel", &subscription_name(n, cfg.pattern));
            o.finish();
            c.sock.set_read_timeout(Some(SETUP_TIMEOUT))?;
            let reply = {
                let mut s = super::tls::stream(&mut c.sock, c.tls.as_mut());
                roundtrip_with(&mut *s, &payload, c.codec.map(|(k, _)| k))?
            };
            c.sock.set_read_timeout(None)?;
            if !reply.starts_with(br#"{"type":"subscribed""#) {
                return Err(io::Error::other(format!(
                    "subscribe refused: {}",
                    String::from_utf8_lossy(&reply)
                )));
            }
            // A history channel's `subscribed` names its position.
            if cfg.history && memchr::memmem::find(&reply, br#""epoch":"#).is_none() {
                return Err(io::Error::other(format!(
                    "--history: {} has no history (the server must run with --history-size N)",
                    subscription_name(n, cfg.pattern)
                )));
            }
        }
    }
    Ok(c)
}

/// Sends one frame and reads the answer (blocking, with a timeout).
pub fn roundtrip(stream: &mut (impl Read + Write + ?Sized), payload: &[u8]) -> io::Result<Vec<u8>> {
    roundtrip_with(stream, payload, None)
}

/// Like [`roundtrip`] on a connection that negotiated `codec`: a
/// compressed answer is decompressed. Broadcast and channel messages that
/// arrive meanwhile are skipped (they answer nothing).
pub fn roundtrip_with(
    stream: &mut (impl Read + Write + ?Sized),
    payload: &[u8],
    codec: Option<Codec>,
) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(payload.len() + 4);
    encode_frame(&mut out, payload);
    stream.write_all(&out)?;
    loop {
        let f = read_frame_with(stream, codec)?;
        if !is_delivery(&f) {
            return Ok(f);
        }
    }
}

/// Reads exactly one frame, never a byte past it (what follows stays in
/// the socket for the generator's own reader). With `codec`, a frame with
/// the top bit set is compressed and comes back decompressed.
pub fn read_frame_with(
    stream: &mut (impl Read + ?Sized),
    codec: Option<Codec>,
) -> io::Result<Vec<u8>> {
    let bad = |m: String| io::Error::new(io::ErrorKind::InvalidData, m);
    let mut h = [0u8; HEADER_LEN];
    stream.read_exact(&mut h)?;
    let raw = u32::from_be_bytes(h);
    let packed = codec.filter(|_| raw & COMPRESSED_FLAG != 0);
    let len = if packed.is_some() {
        raw & !COMPRESSED_FLAG
    } else {
        raw
    } as usize;
    if len == 0 || len > MAX_FRAME {
        return Err(bad(format!("server sent a frame header of {len} bytes")));
    }
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload)?;
    match packed {
        None => Ok(payload),
        Some(c) => {
            let mut plain = Vec::new();
            Decompressor::new()
                .decompress(c, &payload, &mut plain, MAX_FRAME)
                .map_err(|e| bad(e.to_string()))?;
            Ok(plain)
        }
    }
}

/// Asks the server for its stats over a fresh connection.
pub fn get_stats(addr: std::net::SocketAddr) -> Result<ServerStats, BenchError> {
    let mut s = TcpStream::connect_timeout(&addr, SETUP_TIMEOUT)?;
    s.set_read_timeout(Some(SETUP_TIMEOUT))?;
    let r = roundtrip(&mut s, br#"{"type":"get_stats"}"#)?;
    serde_json::from_slice(&r)
        .map_err(|e| BenchError::Io(io::Error::new(io::ErrorKind::InvalidData, e)))
}
