//! The protocol as the tests speak it, written independently of the
//! library's codec: the frame encoder, the one frame reader, the
//! reference model of how a byte stream splits into frames, [`Client`] (a
//! blocking test connection with timeouts everywhere, so no test can hang),
//! and small readers of JSON responses.

use crate::support::wait::{poll, wait_until};
use ringcast::protocol::FrameError;
use serde_json::{json, Value};
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Default read timeout of a test client: long enough for a loaded CI box,
/// short enough that a missing reply fails the test instead of hanging it.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Encodes one frame: 4-byte big-endian length, then the payload.
pub fn frame_bytes(payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + payload.len());
    v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// Encodes a JSON value as one frame.
pub fn frame(v: &Value) -> Vec<u8> {
    frame_bytes(&serde_json::to_vec(v).unwrap())
}

/// Reads one frame from `stream`, blocking at most `within` for all of it.
///
/// - `Ok(Some(payload))`: a whole frame (its payload, header removed);
/// - `Ok(None)`: the peer closed cleanly at a frame boundary;
/// - `Err(e)`: no whole frame within `within` ([`is_timeout`]), the stream
///   ended inside a frame (`UnexpectedEof`), a reset ([`is_reset`]), or
///   another I/O error.
///
/// It sets the socket's read timeout as it goes.
pub fn read_frame(stream: &mut TcpStream, within: Duration) -> io::Result<Option<Vec<u8>>> {
    let deadline = Instant::now() + within;
    let mut header = [0u8; 4];
    if !read_full(stream, &mut header, deadline)? {
        return Ok(None);
    }
    let mut payload = vec![0u8; u32::from_be_bytes(header) as usize];
    if !read_full(stream, &mut payload, deadline)? {
        return Err(eof_inside_a_frame());
    }
    Ok(Some(payload))
}

/// Fills `buf` before `deadline`. `Ok(false)` if the stream ended before
/// the first byte; an error if it ended after it.
fn read_full(stream: &mut TcpStream, buf: &mut [u8], deadline: Instant) -> io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no whole frame within the time limit",
            ));
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return Err(eof_inside_a_frame()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

fn eof_inside_a_frame() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "EOF inside a frame")
}

/// Whether `e` is a read timeout.
pub fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Whether `e` means the peer closed or reset the connection.
pub fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
    )
}

/// How a byte stream must split into frames by the rules of
/// docs/PROTOCOL.md, however it is chunked: the payloads of the complete
/// frames before the first bad header, and that header's error (a header is
/// judged as soon as its 4 bytes are in, before its payload). A trailing
/// incomplete frame is neither.
pub fn expected_frames(bytes: &[u8], max: usize) -> (Vec<Vec<u8>>, Option<FrameError>) {
    let mut frames = Vec::new();
    let mut pos = 0;
    while bytes.len() - pos >= 4 {
        let len = u32::from_be_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
        if len == 0 {
            return (frames, Some(FrameError::Empty));
        }
        if len > max {
            return (
                frames,
                Some(FrameError::TooLarge {
                    len: len as u64,
                    max,
                }),
            );
        }
        if bytes.len() - pos - 4 < len {
            break;
        }
        frames.push(bytes[pos + 4..pos + 4 + len].to_vec());
        pos += 4 + len;
    }
    (frames, None)
}

/// Whether `s` looks like `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn is_timestamp(s: &str) -> bool {
    const PATTERN: &[u8; 24] = b"dddd-dd-ddTdd:dd:dd.dddZ";
    let b = s.as_bytes();
    b.len() == PATTERN.len()
        && b.iter().zip(PATTERN).all(|(&c, &p)| match p {
            b'd' => c.is_ascii_digit(),
            _ => c == p,
        })
}

/// The keys of a JSON object, sorted.
pub fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v
        .as_object()
        .expect("an object")
        .keys()
        .map(|s| s.as_str())
        .collect();
    k.sort_unstable();
    k
}

/// A u64 field of a JSON object (panics with the object when missing).
pub fn u64_of(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no integer {key} in {v}"))
}

/// A blocking framed test connection.
pub struct Client {
    pub stream: TcpStream,
    /// How long [`Client::recv`] and friends wait for a frame.
    read_timeout: Duration,
}

impl Client {
    /// Connects with the default read timeout and TCP_NODELAY.
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect");
        Client::from_stream(stream)
    }

    /// Wraps an already connected stream (timeouts and nodelay are set).
    pub fn from_stream(stream: TcpStream) -> Client {
        stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(READ_TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        Client {
            stream,
            read_timeout: READ_TIMEOUT,
        }
    }

    /// Connects a socket that `prepare` has set up first.
    fn connect_prepared(addr: SocketAddr, prepare: impl FnOnce(&socket2::Socket)) -> Client {
        let sock = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )
        .unwrap();
        prepare(&sock);
        sock.connect(&addr.into()).expect("connect");
        Client::from_stream(sock.into())
    }

    /// Connects with a small SO_RCVBUF set before the handshake (so the
    /// advertised window stays small), for slow-reader tests.
    pub fn connect_small_rcvbuf(addr: SocketAddr, rcvbuf: usize) -> Client {
        Client::connect_prepared(addr, |s| s.set_recv_buffer_size(rcvbuf).unwrap())
    }

    /// Connects from source address `ip` (any 127/8 address works on
    /// loopback).
    pub fn connect_from(ip: IpAddr, addr: SocketAddr) -> Client {
        Client::connect_prepared(addr, |s| s.bind(&SocketAddr::new(ip, 0).into()).unwrap())
    }

    /// Connects until a connection is admitted (answers a ping; a refused
    /// one gets `server_full`, and holds its slot until the server has
    /// flushed that error and closed it), retrying every 20 ms; panics if
    /// none is admitted within `within`.
    pub fn connect_admitted(addr: SocketAddr, within: Duration) -> Client {
        poll(within, || {
            let mut c = Client::connect(addr);
            let v = c.request(&json!({"type": "ping", "id": "probe"}));
            if v["type"] == "pong" {
                return Some(c);
            }
            assert_eq!(v["code"], "server_full", "{v}");
            None
        })
        .unwrap_or_else(|| panic!("no connection admitted within {within:?}"))
    }

    /// This side's address as the server formats client ids ("ip:port").
    pub fn client_id(&self) -> String {
        self.stream.local_addr().unwrap().to_string()
    }

    /// How long to wait for each frame from now on.
    pub fn set_read_timeout(&mut self, d: Duration) {
        self.read_timeout = d;
        self.stream.set_read_timeout(Some(d)).unwrap();
    }

    /// Sends one JSON frame.
    pub fn send(&mut self, v: &Value) {
        self.stream.write_all(&frame(v)).expect("send frame");
    }

    /// Sends raw bytes.
    pub fn send_raw(&mut self, b: &[u8]) {
        self.stream.write_all(b).expect("send raw bytes");
    }

    /// Reads one frame's raw payload ([`read_frame`] with this client's
    /// read timeout).
    pub fn try_recv_raw(&mut self) -> io::Result<Option<Vec<u8>>> {
        read_frame(&mut self.stream, self.read_timeout)
    }

    /// Reads one frame as JSON; `Ok(None)` on a clean EOF at a frame
    /// boundary, an `InvalidData` error if the payload is not JSON.
    pub fn try_recv(&mut self) -> io::Result<Option<Value>> {
        self.try_recv_within(self.read_timeout)
    }

    fn try_recv_within(&mut self, within: Duration) -> io::Result<Option<Value>> {
        let Some(payload) = read_frame(&mut self.stream, within)? else {
            return Ok(None);
        };
        let v: Value = serde_json::from_slice(&payload).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "server sent invalid JSON ({e}): {:?}",
                    String::from_utf8_lossy(&payload)
                ),
            )
        })?;
        Ok(Some(v))
    }

    /// Reads one frame's raw payload; panics on EOF or timeout.
    pub fn recv_raw(&mut self) -> Vec<u8> {
        match self.try_recv_raw() {
            Ok(Some(p)) => p,
            Ok(None) => panic!("unexpected EOF from the server"),
            Err(e) => panic!("reading a frame failed: {e}"),
        }
    }

    /// Reads one frame as JSON; panics on EOF, timeout or invalid JSON.
    pub fn recv(&mut self) -> Value {
        match self.try_recv() {
            Ok(Some(v)) => v,
            Ok(None) => panic!("unexpected EOF from the server"),
            Err(e) => panic!("reading a frame failed: {e}"),
        }
    }

    /// Sends a request and reads the next frame.
    pub fn request(&mut self, v: &Value) -> Value {
        self.send(v);
        self.recv()
    }

    /// Reads the next frame and asserts it is an error with `code`.
    pub fn expect_error(&mut self, code: &str) -> Value {
        let v = self.recv();
        assert_eq!(v["type"], "error", "expected an error {code}, got {v}");
        assert_eq!(v["code"], code, "unexpected error code in {v}");
        assert!(v["message"].is_string(), "error without message: {v}");
        v
    }

    /// Reads until the server closes the connection (EOF or reset), within
    /// `within`; returns the frames read before that. Panics if the
    /// connection is still open at the deadline.
    pub fn read_until_closed(&mut self, within: Duration) -> Vec<Value> {
        let deadline = Instant::now() + within;
        let mut frames = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "connection still open after {within:?} ({} frames read)",
                frames.len()
            );
            match self.try_recv_within(left) {
                Ok(Some(v)) => frames.push(v),
                Ok(None) => return frames,
                Err(e) if is_reset(&e) => return frames,
                Err(e) if is_timeout(&e) => {
                    panic!(
                        "connection still open after {within:?} ({} frames read)",
                        frames.len()
                    )
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => panic!("unexpected read error: {e}"),
            }
        }
    }

    /// Asserts nothing arrives within `d` (the connection stays open).
    pub fn expect_silence(&mut self, d: Duration) {
        let deadline = Instant::now() + d;
        let mut b = [0u8; 1];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            match self.stream.read(&mut b) {
                Ok(0) => panic!("connection closed, expected it to stay open"),
                Ok(_) => panic!("unexpected data from the server"),
                Err(e) if is_timeout(&e) => break,
                // EINTR: a timed socket read is not restarted; wait on.
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => panic!("unexpected read error: {e}"),
            }
        }
        self.stream
            .set_read_timeout(Some(self.read_timeout))
            .unwrap();
    }

    /// Asks for stats on this connection: the one stats reader.
    pub fn stats(&mut self) -> Value {
        let v = self.request(&json!({"type": "get_stats"}));
        assert_eq!(v["type"], "server_stats", "{v}");
        v
    }

    /// Waits (asking for stats on this connection) until the server counts
    /// `n` connected clients.
    pub fn wait_connected(&mut self, n: u64, within: Duration) {
        wait_until(within, format!("{n} connected clients"), || {
            u64_of(&self.stats(), "connected_clients") == n
        });
    }

    /// Pipelines `n` pings (ids 0..n) to a rate-limited server and reads the
    /// `n` answers, each in order: a pong, or a `rate_limited` error for a
    /// ping. Returns (passed, limited).
    pub fn ping_flood(&mut self, n: u64) -> (u64, u64) {
        let mut bytes = Vec::new();
        for i in 0..n {
            bytes.extend(frame(&json!({"type": "ping", "id": i})));
        }
        self.send_raw(&bytes);
        let (mut ok, mut limited) = (0, 0);
        for i in 0..n {
            let v = self.recv();
            assert_eq!(v["id"], i, "{v}");
            match v["type"].as_str() {
                Some("pong") => ok += 1,
                Some("error") => {
                    assert_eq!(v["code"], "rate_limited", "{v}");
                    assert_eq!(v["request_type"], "ping", "{v}");
                    limited += 1;
                }
                _ => panic!("unexpected {v}"),
            }
        }
        (ok, limited)
    }

    /// `n` clients connected to `addr`.
    pub fn connect_many(addr: SocketAddr, n: usize) -> Vec<Client> {
        (0..n).map(|_| Client::connect(addr)).collect()
    }
}

/// A publisher flooding a channel with `publish` requests as fast as it
/// can (contents 1..=n, in batches of 100), its `published` replies
/// counted by a thread of their own so neither side waits on the other.
pub struct Flood {
    writer: std::thread::JoinHandle<Client>,
    replies: std::thread::JoinHandle<()>,
}

impl Flood {
    /// Starts flooding `channel` through `publisher`.
    pub fn start(mut publisher: Client, channel: &str, n: u64) -> Flood {
        let mut stream = publisher.stream.try_clone().expect("clone the publisher");
        let replies = std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            let (mut seen, mut tail) = (0u64, Vec::new());
            let want = br#""type":"published""#;
            while seen < n {
                let got = stream.read(&mut buf).expect("replies");
                assert!(got > 0, "the server closed the publisher");
                tail.extend_from_slice(&buf[..got]);
                seen += tail.windows(want.len()).filter(|w| w == want).count() as u64;
                let keep = tail.len().min(want.len() - 1);
                tail.drain(..tail.len() - keep);
            }
        });
        let channel = channel.to_owned();
        let writer = std::thread::spawn(move || {
            let mut batch = Vec::new();
            for k in 1..=n {
                batch.extend(frame(
                    &json!({"type": "publish", "channel": channel, "content": k}),
                ));
                if k % 100 == 0 || k == n {
                    publisher.send_raw(&batch);
                    batch.clear();
                }
            }
            publisher
        });
        Flood { writer, replies }
    }

    /// Waits until every publication was sent and answered.
    pub fn finish(self) -> Client {
        let publisher = self.writer.join().expect("the flood's writer");
        self.replies.join().expect("the flood's reply counter");
        publisher
    }
}
