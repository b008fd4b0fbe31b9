//! Shared helpers for the server integration tests: start a real server on
//! 127.0.0.1 with an ephemeral port, and a tiny blocking framed client over
//! `std::net::TcpStream` (read timeouts everywhere, so no test can hang).

#![allow(dead_code)]

use ringcast::server::{Server, ServerBuilder, ServerHandle};
use serde_json::{json, Value};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Default read timeout of a test client: long enough for a loaded CI box,
/// short enough that a missing reply fails the test instead of hanging it.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// A builder for a test server: 127.0.0.1:0, `shards` shards, not pinned
/// (tests run side by side on few cores).
pub fn builder(shards: usize) -> ServerBuilder {
    Server::builder()
        .addr("127.0.0.1:0".parse().unwrap())
        .shards(shards)
        .pin(false)
}

/// Builds and spawns.
pub fn spawn(b: ServerBuilder) -> ServerHandle {
    b.build()
        .expect("server builds")
        .spawn()
        .expect("server starts")
}

/// A server with defaults and `shards` shards.
pub fn start(shards: usize) -> ServerHandle {
    spawn(builder(shards))
}

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

/// Whether `s` looks like `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn is_timestamp(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() != 24 {
        return false;
    }
    let pattern = b"dddd-dd-ddTdd:dd:dd.dddZ";
    b.iter().zip(pattern).all(|(c, p)| match p {
        b'd' => c.is_ascii_digit(),
        _ => c == p,
    })
}

/// A blocking framed client.
pub struct Client {
    pub stream: TcpStream,
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
        Client { stream }
    }

    /// Connects with a small SO_RCVBUF set before the handshake (so the
    /// advertised window stays small), for slow-reader tests.
    pub fn connect_small_rcvbuf(addr: SocketAddr, rcvbuf: usize) -> Client {
        let sock = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )
        .unwrap();
        sock.set_recv_buffer_size(rcvbuf).unwrap();
        sock.connect(&addr.into()).expect("connect");
        Client::from_stream(sock.into())
    }

    /// This side's address as the server formats client ids ("ip:port").
    pub fn client_id(&self) -> String {
        self.stream.local_addr().unwrap().to_string()
    }

    pub fn set_read_timeout(&self, d: Duration) {
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

    /// Reads one frame; `Ok(None)` on a clean EOF at a frame boundary.
    pub fn try_recv(&mut self) -> io::Result<Option<Value>> {
        let mut h = [0u8; 4];
        let mut got = 0;
        while got < 4 {
            match self.stream.read(&mut h[got..]) {
                Ok(0) if got == 0 => return Ok(None),
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "EOF inside a frame header",
                    ))
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let n = u32::from_be_bytes(h) as usize;
        let mut payload = vec![0u8; n];
        self.stream.read_exact(&mut payload)?;
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

    /// Reads one frame; panics on EOF or timeout.
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
            self.stream.set_read_timeout(Some(left)).unwrap();
            match self.try_recv() {
                Ok(Some(v)) => frames.push(v),
                Ok(None) => return frames,
                Err(e) if is_reset(&e) => return frames,
                Err(e) if is_timeout(&e) => {
                    panic!(
                        "connection still open after {within:?} ({} frames read)",
                        frames.len()
                    )
                }
                Err(e) => panic!("unexpected read error: {e}"),
            }
        }
    }

    /// Asserts nothing arrives within `d` (the connection stays open).
    pub fn expect_silence(&mut self, d: Duration) {
        self.stream.set_read_timeout(Some(d)).unwrap();
        let mut b = [0u8; 1];
        match self.stream.read(&mut b) {
            Ok(0) => panic!("connection closed, expected it to stay open"),
            Ok(_) => panic!("unexpected data from the server"),
            Err(e) if is_timeout(&e) => {}
            Err(e) => panic!("unexpected read error: {e}"),
        }
        self.stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    }

    /// Asks for stats on this connection.
    pub fn stats(&mut self) -> Value {
        let v = self.request(&json!({"type": "get_stats"}));
        assert_eq!(v["type"], "server_stats", "{v}");
        v
    }
}

pub fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

pub fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
    )
}

/// Polls `f` every 20 ms until it returns true or `within` passes.
pub fn wait_until(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Opens a fresh connection, reads stats, closes it.
pub fn stats_of(addr: SocketAddr) -> Value {
    let mut c = Client::connect(addr);
    c.stats()
}

/// `n` clients connected to `addr`.
pub fn connect_many(addr: SocketAddr, n: usize) -> Vec<Client> {
    (0..n).map(|_| Client::connect(addr)).collect()
}

/// A u64 field of a JSON object (panics with the object when missing).
pub fn u64_of(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no integer {key} in {v}"))
}

/// The stderr lines of a child process (a `ringcast` binary), read on a
/// thread of their own so that a test can wait for one with a deadline.
pub struct LogLines {
    rx: std::sync::mpsc::Receiver<String>,
    /// Every line read so far, in order.
    pub seen: Vec<String>,
}

impl LogLines {
    /// Starts reading `r` (the child's stderr) line by line.
    pub fn new(r: impl Read + Send + 'static) -> LogLines {
        use std::io::BufRead;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in io::BufReader::new(r).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        LogLines {
            rx,
            seen: Vec::new(),
        }
    }

    /// Waits up to `within` for a JSON log line whose message starts with
    /// `msg`; `None` if none came (or the stream ended) by then.
    pub fn wait_for(&mut self, msg: &str, within: Duration) -> Option<Value> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let line = self.rx.recv_timeout(left).ok()?;
            self.seen.push(line);
            if let Some(v) = log_line_with(self.seen.last().unwrap(), msg) {
                return Some(v);
            }
        }
    }

    /// Waits up to `within` for any line containing `text` (text-format logs).
    pub fn wait_for_text(&mut self, text: &str, within: Duration) -> Option<String> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let line = self.rx.recv_timeout(left).ok()?;
            self.seen.push(line.clone());
            if line.contains(text) {
                return Some(line);
            }
        }
    }

    /// The first line already read whose message starts with `msg`.
    pub fn find_seen(&self, msg: &str) -> Option<Value> {
        self.seen.iter().find_map(|l| log_line_with(l, msg))
    }

    /// Reads what is left until the stream ends (the child has exited), or
    /// until no line comes for `quiet`; returns every line.
    pub fn finish(mut self, quiet: Duration) -> Vec<String> {
        while let Ok(l) = self.rx.recv_timeout(quiet) {
            self.seen.push(l);
        }
        self.seen
    }
}

/// `line` as JSON when it is a tracing JSON line whose message starts with `msg`.
fn log_line_with(line: &str, msg: &str) -> Option<Value> {
    let v: Value = serde_json::from_str(line).ok()?;
    let m = v["fields"]["message"].as_str()?;
    m.starts_with(msg).then_some(v)
}

/// Sends SIGTERM to a child process.
pub fn sigterm(child: &std::process::Child) {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -TERM failed");
}

/// Waits up to `within` for a child to exit; `None` (the child killed) if
/// it did not.
pub fn wait_exit(
    child: &mut std::process::Child,
    within: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
