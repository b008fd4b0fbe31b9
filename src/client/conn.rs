//! One TCP connection: reading frames, writing requests, waiting answers.

use super::tls::Stream;
use super::{ClientConfig, ClientError, Message, Result, ServerHello};
use crate::protocol::codec::{Codec, Compressor, DecompressError, Decompressor};
use crate::protocol::frame::NoPool;
use crate::protocol::{encode_frame, FrameDecoder, FrameError};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Mutex, MutexGuard};
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

/// Locks, ignoring poisoning: every critical section here leaves the data
/// consistent, so a panic elsewhere must not cascade.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Reads whole frames off a stream, decompresses flagged ones and parses
/// them.
pub(crate) struct FrameReader {
    stream: Stream,
    decoder: FrameDecoder,
    buf: Box<[u8]>,
    /// Ciphertext off the socket (TLS only).
    scratch: Box<[u8]>,
    ready: VecDeque<Result<Incoming>>,
    /// The codec `hello_ok` named: flagged frames are decompressed with it.
    codec: Option<Codec>,
    /// Made on the first compressed frame.
    inflater: Option<Decompressor>,
    /// Decompressed payloads, reused frame to frame.
    inflated: Vec<u8>,
    /// Largest payload accepted, compressed or not.
    max_frame_bytes: usize,
}

/// A frame read but not handed out yet.
enum Incoming {
    Parsed(Message),
    /// A compressed payload that came in the same read as the `hello_ok`
    /// naming its codec, before that was known: decompressed when handed out.
    Packed(Vec<u8>),
}

/// A decompression buffer larger than this is freed after its frame.
const KEEP_INFLATED_CAPACITY: usize = 1 << 20;

impl FrameReader {
    pub(crate) fn new(stream: Stream, max_frame_bytes: usize) -> Self {
        let scratch = match stream {
            Stream::Plain(_) => Box::default(),
            // One full TLS record per socket read.
            Stream::Tls { .. } => vec![0u8; 17 * 1024].into_boxed_slice(),
        };
        FrameReader {
            stream,
            decoder: FrameDecoder::new(max_frame_bytes),
            buf: vec![0u8; 64 * 1024].into_boxed_slice(),
            scratch,
            ready: VecDeque::new(),
            codec: None,
            inflater: None,
            inflated: Vec::new(),
            max_frame_bytes,
        }
    }

    /// `hello` is about to be sent: from now on a header with the top bit
    /// set is a compressed frame (a server that never negotiates never sets
    /// it, so nothing changes for one).
    pub(crate) fn expect_hello(&mut self) {
        self.decoder.accept_compressed();
    }

    /// The codec `hello_ok` named: compressed frames from here on (and any
    /// already read behind the `hello_ok`) are decompressed with it.
    pub(crate) fn set_codec(&mut self, codec: Option<Codec>) {
        self.codec = codec;
    }

    /// The next frame. Errors are final: the stream is out of step or gone.
    pub(crate) fn next_message(&mut self) -> Result<Message> {
        loop {
            if let Some(m) = self.ready.pop_front() {
                return match m? {
                    Incoming::Parsed(m) => Ok(m),
                    Incoming::Packed(p) => inflate_message(
                        self.codec,
                        &mut self.inflater,
                        &mut self.inflated,
                        &p,
                        self.max_frame_bytes,
                    ),
                };
            }
            let n = match self.stream.read(&mut self.buf, &mut self.scratch) {
                Ok(0) => {
                    let reason = if self.decoder.in_frame() {
                        "server closed the connection in the middle of a frame"
                    } else {
                        "server closed the connection"
                    };
                    return Err(ClientError::Disconnected {
                        reason: reason.into(),
                    });
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_timeout(&e) => {
                    return Err(ClientError::Timeout(
                        self.stream
                            .socket()
                            .read_timeout()
                            .ok()
                            .flatten()
                            .unwrap_or_default(),
                    ))
                }
                Err(e) => return Err(ClientError::Io(e)),
            };
            let FrameReader {
                decoder,
                buf,
                ready,
                codec,
                inflater,
                inflated,
                max_frame_bytes,
                ..
            } = self;
            let fed =
                decoder.feed_flagged(&mut buf[..n], &mut NoPool, usize::MAX, |payload, packed| {
                    let m = match (packed, *codec) {
                        (false, _) => parse_message(payload).map(Incoming::Parsed),
                        (true, Some(_)) => {
                            inflate_message(*codec, inflater, inflated, payload, *max_frame_bytes)
                                .map(Incoming::Parsed)
                        }
                        // Behind the hello_ok still waiting in `ready`.
                        (true, None) => Ok(Incoming::Packed(payload.to_vec())),
                    };
                    let bad = m.is_err();
                    ready.push_back(m);
                    if bad {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    }
                });
            if let Err(e) = fed {
                self.ready.push_back(Err(match e {
                    FrameError::TooLarge { len, max } => ClientError::FrameTooLarge { len, max },
                    FrameError::Empty => ClientError::Protocol("server sent an empty frame".into()),
                    // No capacity bound is set; kept for completeness.
                    e @ FrameError::OverBudget { .. } => ClientError::Protocol(e.to_string()),
                }));
            }
        }
    }
}

/// Decompresses one payload (never past `limit` bytes) and parses it.
fn inflate_message(
    codec: Option<Codec>,
    inflater: &mut Option<Decompressor>,
    out: &mut Vec<u8>,
    payload: &[u8],
    limit: usize,
) -> Result<Message> {
    let Some(codec) = codec else {
        return Err(ClientError::Protocol(
            "server sent a compressed frame, but no codec was negotiated".into(),
        ));
    };
    let r = inflater
        .get_or_insert_with(Decompressor::new)
        .decompress(codec, payload, out, limit);
    let m = match r {
        Ok(()) => parse_message(out),
        Err(DecompressError::TooLarge { limit }) => Err(ClientError::FrameTooLarge {
            len: limit as u64 + 1,
            max: limit,
        }),
        Err(e @ DecompressError::Corrupt { .. }) => Err(ClientError::Protocol(format!(
            "server sent a compressed frame that is not valid: {e}"
        ))),
    };
    if out.capacity() > KEEP_INFLATED_CAPACITY {
        *out = Vec::new();
    }
    m
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Parses one payload; anything but a UTF-8 JSON object is a protocol error.
pub(crate) fn parse_message(payload: &[u8]) -> Result<Message> {
    let value: Value = serde_json::from_slice(payload).map_err(|e| {
        ClientError::Protocol(format!(
            "server sent a frame that is not valid JSON ({e}): {}",
            preview(payload)
        ))
    })?;
    if !value.is_object() {
        return Err(ClientError::Protocol(format!(
            "server sent a frame that is not a JSON object: {}",
            preview(payload)
        )));
    }
    Ok(Message {
        value,
        raw: String::from_utf8_lossy(payload).into_owned(),
    })
}

fn preview(payload: &[u8]) -> String {
    let s = String::from_utf8_lossy(&payload[..payload.len().min(64)]);
    let mut out: String = s.escape_debug().collect();
    if payload.len() > 64 {
        out.push('…');
    }
    out
}

/// Builds a request payload: `{"type":…, fields…, "id":…}`.
pub(crate) fn request_payload(type_name: &str, fields: &Map<String, Value>, id: u64) -> Vec<u8> {
    let mut obj = Map::with_capacity(fields.len() + 2);
    obj.insert("type".into(), Value::from(type_name));
    for (k, v) in fields {
        if k != "type" && k != "id" {
            obj.insert(k.clone(), v.clone());
        }
    }
    obj.insert("id".into(), Value::from(id));
    // Serializing a Map of Values cannot fail.
    serde_json::to_vec(&obj).unwrap_or_default()
}

/// Builds a request frame (never compressed).
pub(crate) fn request_frame(
    out: &mut Vec<u8>,
    type_name: &str,
    fields: &Map<String, Value>,
    id: u64,
) {
    encode_frame(out, &request_payload(type_name, fields, id));
}

/// Compresses requests on a connection that negotiated a codec.
pub(crate) struct Packer {
    codec: Codec,
    /// Payloads larger than this are compressed (when that saves bytes).
    threshold: usize,
    compressor: Compressor,
}

impl Packer {
    /// Appends `payload` to `out` as one frame: compressed if it is over
    /// the threshold and that is smaller, plain otherwise.
    fn frame(&mut self, payload: &[u8], out: &mut Vec<u8>) {
        if payload.len() > self.threshold
            && self.compressor.compress_frame(self.codec, payload, out)
        {
            return;
        }
        encode_frame(out, payload);
    }
}

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
    pub(crate) conn: std::sync::Arc<Conn>,
    pub(crate) reader: FrameReader,
    /// Frames that arrived during the handshake and answer nothing.
    pub(crate) early: Vec<Message>,
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
        Err(HelloRefused(_)) if cfg.auth_token.is_some() => {
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
use Failed::HelloRefused;

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
    let mut hs = Handshake {
        stream: &mut stream,
        reader: &mut reader,
        ids,
        timeout: cfg.request_timeout,
        early: Vec::new(),
    };
    hs.stream
        .socket()
        .set_write_timeout(Some(cfg.request_timeout))?;
    hs.stream
        .socket()
        .set_read_timeout(Some(cfg.request_timeout))?;
    let mut hello = None;
    let mut answered = false;
    if with_hello {
        let mut fields = Map::new();
        let offer: Vec<Value> = cfg
            .compression
            .iter()
            .map(|c| Value::from(c.as_str()))
            .collect();
        fields.insert("compression".into(), Value::Array(offer));
        fields.insert("client".into(), Value::from(cfg.client_info.as_str()));
        hs.reader.expect_hello();
        let m = hs.request("hello", &fields, "hello_ok")?;
        answered = true;
        if m.kind() == "hello_ok" {
            let h = ServerHello::from_message(&m)?;
            if h.compression.is_some_and(|c| !cfg.compression.contains(&c)) {
                return Err(ClientError::Protocol(format!(
                    "hello_ok chose {:?}, which was not offered",
                    h.compression.map(Codec::as_str)
                ))
                .into());
            }
            hs.reader.set_codec(h.compression);
            hello = Some(h);
        } else {
            match m.get_str("code") {
                // A server from before hello: uncompressed, as before.
                Some("unknown_type") => {}
                Some("unauthorized") => return Err(HelloRefused(m.to_server_error())),
                _ => return Err(m.to_server_error().into()),
            }
        }
    }
    let auth = cfg.auth_token.as_deref();
    if let Some(token) = auth {
        let mut fields = Map::new();
        fields.insert("token".into(), Value::from(token));
        let m = hs.request("auth", &fields, "auth_ok")?;
        if m.is_error() {
            return Err(m.to_server_error().into());
        }
    } else if verify && !answered {
        let mut fields = Map::new();
        fields.insert("client_info".into(), Value::from(cfg.client_info.as_str()));
        let m = hs.request("ping", &fields, "pong")?;
        if m.is_error() {
            return Err(m.to_server_error().into());
        }
    }
    let early = std::mem::take(&mut hs.early);
    stream.socket().set_read_timeout(None)?;
    let packer = hello
        .as_ref()
        .and_then(|h| h.compression.map(|c| (c, h.compression_threshold)))
        .map(|(codec, threshold)| Packer {
            codec,
            threshold,
            compressor: Compressor::new(),
        });
    let conn = Conn::new(stream, cfg.request_timeout, hello, packer)?;
    Ok(Established {
        conn: std::sync::Arc::new(conn),
        reader,
        early,
    })
}

/// The requests of a connection's set-up, one at a time, before the
/// receiver thread takes over the reader.
struct Handshake<'a> {
    stream: &'a mut Stream,
    reader: &'a mut FrameReader,
    ids: &'a AtomicU64,
    timeout: Duration,
    /// Frames that answer nothing (broadcasts arriving meanwhile).
    early: Vec<Message>,
}

impl Handshake<'_> {
    /// Sends a request and returns its answer: a frame of type `want`, or
    /// an `error` (returned, not raised: callers tell codes apart). Any
    /// other answer is a protocol error.
    fn request(
        &mut self,
        type_name: &str,
        fields: &Map<String, Value>,
        want: &str,
    ) -> Result<Message> {
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        let mut frame = Vec::new();
        request_frame(&mut frame, type_name, fields, id);
        self.stream.write_all(&frame, &mut Vec::new())?;
        loop {
            let m = self.reader.next_message().map_err(|e| match e {
                ClientError::Timeout(_) => ClientError::Timeout(self.timeout),
                e => e,
            })?;
            let answers = m.get("id").and_then(Value::as_u64) == Some(id)
                || (m.get("id").is_none() && (m.kind() == want || m.is_error()));
            if !answers {
                self.early.push(m);
                continue;
            }
            if m.kind() == want || m.is_error() {
                return Ok(m);
            }
            return Err(ClientError::Protocol(format!(
                "expected {want}, got {:?}",
                m.kind()
            )));
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::codec::COMPRESSED_FLAG;
    use std::io::Write;
    use std::net::TcpListener;

    /// A connected pair of sockets on loopback.
    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        (a, b)
    }

    fn big_json(kind: &str) -> Vec<u8> {
        let items: Vec<Value> = (0..200)
            .map(|i| serde_json::json!({"sensor": format!("s-{}", i % 7), "v": i}))
            .collect();
        serde_json::to_vec(&serde_json::json!({"type": kind, "content": items})).unwrap()
    }

    #[test]
    fn a_compressed_frame_read_along_with_hello_ok_is_decoded_with_its_codec() {
        let (client, mut server) = pair();
        let mut bytes = Vec::new();
        encode_frame(
            &mut bytes,
            br#"{"type":"hello_ok","compression":"zstd","id":1}"#,
        );
        let payload = big_json("broadcast_message");
        assert!(Compressor::new().compress_frame(Codec::Zstd, &payload, &mut bytes));
        server.write_all(&bytes).unwrap();
        let mut r = FrameReader::new(Stream::Plain(client), 1 << 20);
        r.expect_hello();
        let ok = r.next_message().unwrap();
        assert_eq!(ok.kind(), "hello_ok");
        // Both frames came in one read: the second waits, compressed, for
        // the codec that the first names.
        assert!(matches!(r.ready.front(), Some(Ok(Incoming::Packed(_)))));
        r.set_codec(ServerHello::from_message(&ok).unwrap().compression);
        let m = r.next_message().unwrap();
        assert_eq!(m.kind(), "broadcast_message");
        assert_eq!(m.raw.as_bytes(), &payload[..]);
        // Later compressed frames are decoded as they are read.
        let mut more = Vec::new();
        assert!(Compressor::new().compress_frame(Codec::Zstd, &payload, &mut more));
        server.write_all(&more).unwrap();
        assert_eq!(r.next_message().unwrap().raw.as_bytes(), &payload[..]);
    }

    #[test]
    fn compressed_frames_are_bounded_and_checked() {
        // Inflating past the client's limit.
        let (client, mut server) = pair();
        let payload = big_json("echo_response");
        let mut bytes = Vec::new();
        assert!(Compressor::new().compress_frame(Codec::Deflate, &payload, &mut bytes));
        server.write_all(&bytes).unwrap();
        let mut r = FrameReader::new(Stream::Plain(client), 1000);
        r.expect_hello();
        r.set_codec(Some(Codec::Deflate));
        let e = r.next_message().unwrap_err();
        assert!(
            matches!(
                e,
                ClientError::FrameTooLarge {
                    len: 1001,
                    max: 1000
                }
            ),
            "{e:?}"
        );
        // Garbage.
        let (client, mut server) = pair();
        let mut bytes = (5u32 | COMPRESSED_FLAG).to_be_bytes().to_vec();
        bytes.extend_from_slice(b"junk!");
        server.write_all(&bytes).unwrap();
        let mut r = FrameReader::new(Stream::Plain(client), 1 << 20);
        r.expect_hello();
        r.set_codec(Some(Codec::Zstd));
        assert!(matches!(r.next_message(), Err(ClientError::Protocol(_))));
        // The flag without a negotiated codec.
        let (client, mut server) = pair();
        server.write_all(&bytes).unwrap();
        let mut r = FrameReader::new(Stream::Plain(client), 1 << 20);
        r.expect_hello();
        let e = r.next_message().unwrap_err();
        assert!(e.to_string().contains("no codec was negotiated"), "{e}");
        // Without hello the top bit is just a length over the limit.
        let (client, mut server) = pair();
        server.write_all(&bytes).unwrap();
        let mut r = FrameReader::new(Stream::Plain(client), 1 << 20);
        assert!(matches!(
            r.next_message(),
            Err(ClientError::FrameTooLarge { .. })
        ));
    }

    #[test]
    fn requests_are_compressed_only_over_the_threshold_and_when_smaller() {
        let mut p = Packer {
            codec: Codec::Zstd,
            threshold: 1024,
            compressor: Compressor::new(),
        };
        let small = request_payload("echo", &Map::new(), 7);
        let mut out = Vec::new();
        p.frame(&small, &mut out);
        assert_eq!(&out[4..], &small[..]);
        assert_eq!(
            u32::from_be_bytes(out[..4].try_into().unwrap()) & COMPRESSED_FLAG,
            0
        );
        let big = big_json("echo");
        let mut out = Vec::new();
        p.frame(&big, &mut out);
        let h = u32::from_be_bytes(out[..4].try_into().unwrap());
        assert_ne!(h & COMPRESSED_FLAG, 0);
        assert!(out.len() < big.len() / 2);
        let mut plain = Vec::new();
        Decompressor::new()
            .decompress(Codec::Zstd, &out[4..], &mut plain, 1 << 20)
            .unwrap();
        assert_eq!(plain, big);
    }

    #[test]
    fn hello_ok_is_read_with_defaults_for_what_it_leaves_out() {
        let m = parse_message(br#"{"type":"hello_ok","compression":null}"#).unwrap();
        let h = ServerHello::from_message(&m).unwrap();
        assert_eq!(h.compression, None);
        assert_eq!(h.compression_threshold, 1024);
        assert_eq!(h.max_frame_bytes, 1 << 20);
        let m = parse_message(
            br#"{"type":"hello_ok","compression":"deflate","server":"ringcast/9","protocol":1,
                "max_frame_bytes":2048,"compression_threshold":10,"features":["tls","auth"]}"#,
        )
        .unwrap();
        let h = ServerHello::from_message(&m).unwrap();
        assert_eq!(h.compression, Some(Codec::Deflate));
        assert_eq!((h.max_frame_bytes, h.compression_threshold), (2048, 10));
        assert!(h.has_feature("auth") && !h.has_feature("cluster"));
        let m = parse_message(br#"{"type":"hello_ok","compression":"lz4"}"#).unwrap();
        assert!(matches!(
            ServerHello::from_message(&m),
            Err(ClientError::Protocol(_))
        ));
    }
}
