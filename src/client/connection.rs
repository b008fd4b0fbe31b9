//! One connection of the client: connecting (TCP, TLS, then the
//! [handshake](super::handshake) driven over the socket) and, once up, the
//! writing half and the table of requests waiting for their answers. The
//! reading half ([`FrameReader`]) belongs to the receiver thread.

use super::frames::{is_timeout, request_frame, request_payload, FrameReader, Packer};
use super::handshake::{Handled, Handshake, HandshakeError, Offer};
use super::tls::Stream;
use super::{ClientConfig, ClientError, Message, Result, ServerHello};
use crate::protocol::encode_frame;
use crate::sync::lock;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::io;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Response types that a server which does not copy `id`s still sends only
/// as answers, so they can be matched to the oldest waiting request.
const RESPONSE_TYPES: [&str; 10] = [
    "pong",
    "hello_ok",
    "echo_response",
    "broadcast_sent",
    "server_stats",
    "message_ack",
    "auth_ok",
    "subscribed",
    "unsubscribed",
    "published",
];

/// Connects to the first address that answers.
fn connect_any(addrs: &[SocketAddr], timeout: Duration) -> Result<TcpStream> {
    let mut last = None;
    for a in addrs {
        match TcpStream::connect_timeout(a, timeout) {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(e) if is_timeout(&e) => ClientError::Timeout(timeout),
        Some(e) => ClientError::Io(e),
        None => ClientError::InvalidArgument("the address resolved to nothing".into()),
    })
}

/// A connected (and authenticated) stream, with what arrived early.
pub(crate) struct Established {
    pub(crate) conn: Arc<Conn>,
    pub(crate) reader: FrameReader,
    /// Frames that arrived during the handshake and answer nothing.
    pub(crate) early: Vec<Message>,
    /// When the token this connection authenticated with expires.
    pub(crate) expires_at: Option<u64>,
}

/// Connects and, if configured, says `hello` (negotiating compression) and
/// authenticates. With `verify` (used for reconnections) a request must be
/// answered first (`hello` or `auth` if sent, else a `ping`): a TCP connect
/// alone can land in the backlog of a server that is shutting down and
/// never answers.
///
/// A server from before `hello` that requires a token closes the
/// connection with `unauthorized` when `hello` comes first: then this
/// connects again without `hello` (uncompressed).
pub(crate) fn establish(
    addrs: &[SocketAddr],
    cfg: &ClientConfig,
    ids: &AtomicU64,
    verify: bool,
) -> Result<Established> {
    let with_hello = !cfg.compression.is_empty();
    match establish_once(addrs, cfg, ids, verify, with_hello) {
        Err(Failed::HelloRefused(_))
            if cfg.auth_token.is_some() || cfg.token_provider.is_some() =>
        {
            tracing::debug!("the server refused hello before auth; connecting without it");
            establish_once(addrs, cfg, ids, verify, false).map_err(Failed::into_error)
        }
        r => r.map_err(Failed::into_error),
    }
}

/// Why one connection attempt failed.
enum Failed {
    /// `hello` was answered with `unauthorized` (a server from before
    /// hello that wants `auth` first).
    HelloRefused(ClientError),
    Other(ClientError),
}

impl Failed {
    fn into_error(self) -> ClientError {
        match self {
            Failed::HelloRefused(e) | Failed::Other(e) => e,
        }
    }
}

impl From<ClientError> for Failed {
    fn from(e: ClientError) -> Failed {
        Failed::Other(e)
    }
}

impl From<io::Error> for Failed {
    fn from(e: io::Error) -> Failed {
        Failed::Other(e.into())
    }
}

impl From<HandshakeError> for Failed {
    fn from(e: HandshakeError) -> Failed {
        match e {
            HandshakeError::HelloRefused(e) => Failed::HelloRefused(e),
            e => Failed::Other(e.into()),
        }
    }
}

/// One attempt: connect, TLS, then the set-up requests one at a time,
/// before the receiver thread takes over the reader.
fn establish_once(
    addrs: &[SocketAddr],
    cfg: &ClientConfig,
    ids: &AtomicU64,
    verify: bool,
    with_hello: bool,
) -> Result<Established, Failed> {
    let sock = connect_any(addrs, cfg.connect_timeout)?;
    sock.set_nodelay(true)?;
    let mut stream = match &cfg.tls {
        None => Stream::Plain(sock),
        Some(t) => {
            let peer = sock.peer_addr()?;
            Stream::handshake(
                sock,
                t.client_config()?,
                t.name_for(&peer)?,
                cfg.connect_timeout,
            )?
        }
    };
    let mut reader = FrameReader::new(stream.try_clone()?, cfg.max_frame_bytes);
    stream
        .socket()
        .set_write_timeout(Some(cfg.request_timeout))?;
    stream
        .socket()
        .set_read_timeout(Some(cfg.request_timeout))?;
    let mut offer = Offer::of(cfg, verify);
    if let Some(p) = &cfg.token_provider {
        // A fresh token for every connection (the last one may be stale).
        offer.token = Some(p.token()?);
    }
    if !with_hello {
        offer.compression.clear();
    }
    let mut hs = Handshake::new(offer);
    // Frames that answer nothing (broadcasts arriving meanwhile): reported
    // as events once the connection is up.
    let mut early = Vec::new();
    let mut frame = Vec::new();
    while let Some(req) = hs.poll_request(|| ids.fetch_add(1, Ordering::Relaxed)) {
        if req.announces_compression {
            reader.expect_hello();
        }
        frame.clear();
        encode_frame(&mut frame, &req.payload);
        stream.write_all(&frame, &mut Vec::new())?;
        loop {
            let m = reader.next_message().map_err(|e| match e {
                ClientError::Timeout(_) => ClientError::Timeout(cfg.request_timeout),
                e => e,
            })?;
            match hs.handle_message(m)? {
                Handled::Answered => break,
                Handled::Unrelated(m) => early.push(m),
            }
        }
        reader.set_codec(hs.codec());
    }
    let expires_at = hs.expires_at();
    let hello = hs.finish();
    stream.socket().set_read_timeout(None)?;
    let packer = hello.as_ref().and_then(|h| {
        h.compression
            .map(|c| Packer::new(c, h.compression_threshold))
    });
    let conn = Conn::new(stream, cfg.request_timeout, hello, packer)?;
    Ok(Established {
        conn: Arc::new(conn),
        reader,
        early,
        expires_at,
    })
}

/// What a waiting request receives.
pub(crate) type Reply = Result<Message>;

struct Pending {
    /// Waiters by id. Ids are assigned under the writer lock, so id order is
    /// the order requests went on the wire.
    waiting: BTreeMap<u64, SyncSender<Reply>>,
    /// Set once the connection is dead: no new waiter may register.
    dead: Option<String>,
}

/// The writing half of a connection.
struct Writer {
    stream: Stream,
    /// The request being written.
    buf: Vec<u8>,
    /// Its ciphertext (TLS).
    cipher: Vec<u8>,
    /// Compresses large requests (when a codec was negotiated).
    packer: Option<Packer>,
}

/// The writing half of a connection and its table of waiting requests.
pub(crate) struct Conn {
    writer: Mutex<Writer>,
    /// What `hello_ok` said (None: no hello, or a server from before it).
    hello: Option<ServerHello>,
    pending: Mutex<Pending>,
    /// Why the connection was killed locally (heartbeat, disconnect).
    kill_reason: Mutex<Option<String>>,
    control: TcpStream,
}

impl Conn {
    fn new(
        stream: Stream,
        write_timeout: Duration,
        hello: Option<ServerHello>,
        packer: Option<Packer>,
    ) -> Result<Conn> {
        // A server that stops reading must not block writers forever; a
        // write that times out leaves the stream out of step, so it kills
        // the connection.
        stream
            .socket()
            .set_write_timeout(Some(write_timeout.max(Duration::from_millis(1))))?;
        Ok(Conn {
            control: stream.socket().try_clone()?,
            writer: Mutex::new(Writer {
                stream,
                buf: Vec::with_capacity(256),
                cipher: Vec::new(),
                packer,
            }),
            hello,
            pending: Mutex::new(Pending {
                waiting: BTreeMap::new(),
                dead: None,
            }),
            kill_reason: Mutex::new(None),
        })
    }

    /// Sends a request and returns the receiver its answer will come on.
    pub(crate) fn send(
        &self,
        ids: &AtomicU64,
        type_name: &str,
        fields: &Map<String, Value>,
    ) -> Result<(u64, Receiver<Reply>)> {
        let (tx, rx) = sync_channel(1);
        let mut w = lock(&self.writer);
        let id = ids.fetch_add(1, Ordering::Relaxed);
        {
            let mut p = lock(&self.pending);
            if let Some(reason) = &p.dead {
                return Err(ClientError::Disconnected {
                    reason: reason.clone(),
                });
            }
            p.waiting.insert(id, tx);
        }
        let Writer {
            stream,
            buf,
            cipher,
            packer,
        } = &mut *w;
        buf.clear();
        match packer {
            None => request_frame(buf, type_name, fields, id),
            Some(p) => p.frame(&request_payload(type_name, fields, id), buf),
        }
        if let Err(e) = stream.write_all(buf, cipher) {
            drop(w);
            lock(&self.pending).waiting.remove(&id);
            self.kill(&format!("write failed: {e}"));
            return Err(if is_timeout(&e) {
                ClientError::Disconnected {
                    reason: "the server stopped reading (write timed out)".into(),
                }
            } else {
                ClientError::Io(e)
            });
        }
        Ok((id, rx))
    }

    /// Forgets a request that timed out.
    pub(crate) fn forget(&self, id: u64) {
        lock(&self.pending).waiting.remove(&id);
    }

    /// Routes a frame to its waiter. Returns it back if it answers nothing
    /// waiting (an unsolicited frame, or a late answer to a forgotten id).
    pub(crate) fn route(&self, m: Message) -> Option<Message> {
        let mut p = lock(&self.pending);
        let tx = match m.get("id") {
            Some(id) => match id.as_u64().and_then(|id| p.waiting.remove(&id)) {
                Some(tx) => tx,
                None => return Some(m),
            },
            None if RESPONSE_TYPES.contains(&m.kind()) => match p.waiting.pop_first() {
                Some((_, tx)) => tx,
                None => return Some(m),
            },
            None => return Some(m),
        };
        drop(p);
        // The waiter may have timed out and gone; that is fine.
        let _ = tx.try_send(Ok(m));
        None
    }

    /// Whether the connection has been declared dead.
    pub(crate) fn is_dead(&self) -> bool {
        lock(&self.pending).dead.is_some()
    }

    /// Kills the connection: wakes the reader (which then fails every
    /// waiter). The first reason given is the one reported.
    pub(crate) fn kill(&self, reason: &str) {
        lock(&self.kill_reason).get_or_insert_with(|| reason.to_owned());
        let _ = self.control.shutdown(Shutdown::Both);
    }

    /// Ends the TLS stream cleanly (close_notify) before a deliberate
    /// close; nothing with plain TCP. Skipped if a write holds the stream
    /// (it is stuck on a full socket: the close must not wait for it).
    pub(crate) fn close_notify(&self) {
        if let Ok(mut w) = self.writer.try_lock() {
            w.stream.close_notify();
        }
    }

    /// The reason given to [`Conn::kill`], if any.
    pub(crate) fn kill_reason(&self) -> Option<String> {
        lock(&self.kill_reason).clone()
    }

    /// Marks the connection dead and fails every waiter with `cause`
    /// (a copy of it each).
    pub(crate) fn fail_all(&self, cause: &Failure) {
        let waiting = {
            let mut p = lock(&self.pending);
            p.dead.get_or_insert_with(|| cause.reason());
            std::mem::take(&mut p.waiting)
        };
        for (_, tx) in waiting {
            let _ = tx.try_send(Err(cause.to_error()));
        }
        let _ = self.control.shutdown(Shutdown::Both);
    }

    /// What `hello_ok` said on this connection.
    pub(crate) fn hello(&self) -> Option<&ServerHello> {
        self.hello.as_ref()
    }

    /// The local address of the socket.
    pub(crate) fn local_addr(&self) -> Option<SocketAddr> {
        self.control.local_addr().ok()
    }
}

/// Why a connection ended, kept so that every waiter gets a typed error.
#[derive(Debug, Clone)]
pub(crate) enum Failure {
    /// Closed, reset, killed locally: [`ClientError::Disconnected`].
    Lost(String),
    /// Bad bytes: [`ClientError::Protocol`].
    Protocol(String),
    /// An oversized frame: [`ClientError::FrameTooLarge`].
    TooLarge {
        /// Announced length.
        len: u64,
        /// Client limit.
        max: usize,
    },
}

impl Failure {
    pub(crate) fn from_error(e: ClientError) -> Failure {
        match e {
            ClientError::Disconnected { reason } => Failure::Lost(reason),
            ClientError::Protocol(m) => Failure::Protocol(m),
            ClientError::FrameTooLarge { len, max } => Failure::TooLarge { len, max },
            e => Failure::Lost(e.to_string()),
        }
    }

    pub(crate) fn reason(&self) -> String {
        match self {
            Failure::Lost(r) => r.clone(),
            other => other.to_error().to_string(),
        }
    }

    pub(crate) fn to_error(&self) -> ClientError {
        match self {
            Failure::Lost(reason) => ClientError::Disconnected {
                reason: reason.clone(),
            },
            Failure::Protocol(m) => ClientError::Protocol(m.clone()),
            Failure::TooLarge { len, max } => ClientError::FrameTooLarge {
                len: *len,
                max: *max,
            },
        }
    }
}
