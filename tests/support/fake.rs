//! For the tests of the client library (and those driving a server with
//! it): a small threaded fake server speaking the protocol through
//! `ringcast::protocol` (for behaviour a real server cannot be made to
//! show: slow answers, no ids, bad bytes, silence), a silent peer, a
//! one-shot bad server, and the client settings and event helpers the
//! tests share. The real server for them is
//! [`crate::support::server::Backend`].

use crate::support::wait::poll;
use crate::support::wire::read_frame;
use ringcast::client::ClientConfig;
use ringcast::protocol::message::{
    write_auth_ok, write_broadcast_message, write_broadcast_sent, write_echo_response, write_error,
    write_message_ack, write_pong, write_response, write_server_stats,
};
use ringcast::protocol::{
    parse_request, time::unix_ms_now, ErrorCode, FrameDecoder, JsonParser, RequestKind,
    StatsReport, TimestampCache,
};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How the fake server behaves.
#[derive(Clone, Default)]
pub struct FakeOptions {
    /// Require `auth` with this token first.
    pub token: Option<String>,
    /// Leave `id`s out of answers (like the Python seed server).
    pub no_ids: bool,
}

type Peer = (u64, Arc<Mutex<TcpStream>>);

struct Shared {
    opts: FakeOptions,
    stop: AtomicBool,
    peers: Mutex<Vec<Peer>>,
    next_peer: AtomicU64,
    total_messages: AtomicU64,
    total_connections: AtomicU64,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// A threaded fake server on 127.0.0.1.
///
/// Custom types: `slow` answers `slow_ok` after `{"ms": N}` milliseconds
/// (the connection's later requests wait behind it: answers stay in order),
/// `fake_custom` answers `fake_custom_ok` with the request's `data`, `close`
/// closes the connection without answering, every other type is
/// `unknown_type`.
pub struct FakeServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl FakeServer {
    pub fn start(opts: FakeOptions) -> FakeServer {
        Self::start_on("127.0.0.1:0".parse().unwrap(), opts)
    }

    /// Binds `addr` (retrying for a while: the port may be in TIME_WAIT).
    pub fn start_on(addr: SocketAddr, opts: FakeOptions) -> FakeServer {
        let mut last = None;
        let listener = poll(Duration::from_secs(10), || {
            TcpListener::bind(addr).map_err(|e| last = Some(e)).ok()
        })
        .unwrap_or_else(|| panic!("bind {addr}: {}", last.unwrap()));
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            opts,
            stop: AtomicBool::new(false),
            peers: Mutex::new(Vec::new()),
            next_peer: AtomicU64::new(1),
            total_messages: AtomicU64::new(0),
            total_connections: AtomicU64::new(0),
            threads: Mutex::new(Vec::new()),
        });
        let s = shared.clone();
        let accept = std::thread::spawn(move || {
            while !s.stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        stream.set_nonblocking(false).unwrap();
                        let s2 = s.clone();
                        let t = std::thread::spawn(move || serve(s2, stream));
                        s.threads.lock().unwrap().push(t);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        FakeServer {
            addr,
            shared,
            accept: Some(accept),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Request frames received so far, over all connections.
    pub fn messages(&self) -> u64 {
        self.shared.total_messages.load(Ordering::Relaxed)
    }

    /// Connections open now.
    pub fn connections(&self) -> usize {
        self.shared.peers.lock().unwrap().len()
    }

    /// Closes every connection abruptly (no `shutting_down`), keeps listening.
    pub fn drop_connections(&self) {
        for (_, w) in self.shared.peers.lock().unwrap().iter() {
            let _ = w.lock().unwrap().shutdown(Shutdown::Both);
        }
    }

    /// Graceful stop: `shutting_down` to everyone, close, join.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(a) = self.accept.take() {
            let _ = a.join();
        }
        for (_, w) in self.shared.peers.lock().unwrap().iter() {
            let mut out = Vec::new();
            write_error(
                &mut out,
                None,
                ErrorCode::ShuttingDown,
                "server shutting down",
                None,
            );
            let w = w.lock().unwrap();
            let _ = (&*w).write_all(&out);
            let _ = w.shutdown(Shutdown::Both);
        }
        let threads = std::mem::take(&mut *self.shared.threads.lock().unwrap());
        for t in threads {
            let _ = t.join();
        }
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

fn serve(s: Arc<Shared>, stream: TcpStream) {
    let me = s.next_peer.fetch_add(1, Ordering::Relaxed);
    s.total_connections.fetch_add(1, Ordering::Relaxed);
    let peer_name = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let writer = Arc::new(Mutex::new(stream.try_clone().unwrap()));
    s.peers.lock().unwrap().push((me, writer.clone()));
    let mut reader = stream;
    let mut dec = FrameDecoder::new(1 << 20);
    let mut parser = JsonParser::new();
    let mut ts = TimestampCache::new();
    let mut authed = s.opts.token.is_none();
    let mut buf = vec![0u8; 64 * 1024];
    let start_ms = unix_ms_now();
    'conn: loop {
        if s.stop.load(Ordering::Relaxed) {
            break;
        }
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let mut close = false;
        let r = dec.feed(&mut buf[..n], |payload| {
            s.total_messages.fetch_add(1, Ordering::Relaxed);
            let mut out = Vec::new();
            let mut fanout: Option<Vec<u8>> = None;
            let mut sleep = None;
            let now = ts.format(unix_ms_now()).to_owned();
            parse_request(&mut parser, payload, |req| {
                let req = match req {
                    Ok(r) => r,
                    Err(rej) => {
                        write_error(
                            &mut out,
                            rej.id.as_ref(),
                            rej.error.code,
                            rej.error.message,
                            None,
                        );
                        return;
                    }
                };
                let id = if s.opts.no_ids { None } else { req.id };
                let mut req = req;
                req.id = id;
                if !authed {
                    let ok = req.kind == RequestKind::Auth
                        && req.get("token").and_then(|t| t.as_str()) == s.opts.token.as_deref();
                    if ok {
                        authed = true;
                        write_auth_ok(&mut out, req.id.as_ref());
                    } else {
                        write_error(
                            &mut out,
                            req.id.as_ref(),
                            ErrorCode::Unauthorized,
                            "bad token",
                            None,
                        );
                        close = true;
                    }
                    return;
                }
                match req.kind {
                    RequestKind::Ping => write_pong(&mut out, &req, &now, &peer_name),
                    RequestKind::Echo => write_echo_response(&mut out, &req, &now),
                    RequestKind::Message => write_message_ack(&mut out, &req, &now),
                    RequestKind::Auth => write_auth_ok(&mut out, req.id.as_ref()),
                    RequestKind::Broadcast => {
                        let mut b = Vec::new();
                        write_broadcast_message(&mut b, &req, &peer_name, &now);
                        let n = s.peers.lock().unwrap().len() as u64 - 1;
                        fanout = Some(b);
                        write_broadcast_sent(&mut out, &req, n, &now);
                    }
                    RequestKind::GetStats => {
                        let peers = s.peers.lock().unwrap().len() as u64;
                        let report = StatsReport {
                            connected_clients: peers,
                            uptime_seconds: (unix_ms_now() - start_ms) / 1000,
                            total_messages: s.total_messages.load(Ordering::Relaxed),
                            server_start_time: &now,
                            current_time: &now,
                            shards: 1,
                            total_connections: s.total_connections.load(Ordering::Relaxed),
                            connections_per_shard: &[peers],
                            ..StatsReport::default()
                        };
                        write_server_stats(&mut out, req.id.as_ref(), &report);
                    }
                    // The fake keeps no channels: the real server's tests cover them.
                    RequestKind::Subscribe
                    | RequestKind::Unsubscribe
                    | RequestKind::Publish
                    | RequestKind::History
                    | RequestKind::Refresh => write_error(
                        &mut out,
                        req.id.as_ref(),
                        ErrorCode::UnknownType,
                        "the fake server has no channels",
                        Some(req.type_name),
                    ),
                    // Like a server from before hello: clients must carry on
                    // uncompressed.
                    RequestKind::Hello => write_error(
                        &mut out,
                        req.id.as_ref(),
                        ErrorCode::UnknownType,
                        "no handler for message type 'hello'",
                        Some(req.type_name),
                    ),
                    RequestKind::Custom => match req.type_name {
                        "slow" => {
                            let ms = req.get("ms").and_then(|v| v.as_u64()).unwrap_or(200);
                            sleep = Some(Duration::from_millis(ms));
                            write_response(&mut out, "slow_ok", req.id.as_ref(), |_| {});
                        }
                        "fake_custom" => {
                            write_response(&mut out, "fake_custom_ok", req.id.as_ref(), |o| {
                                if let Some(d) = req.get("data") {
                                    o.value("data", &d);
                                }
                            })
                        }
                        "close" => close = true,
                        t => write_error(
                            &mut out,
                            req.id.as_ref(),
                            ErrorCode::UnknownType,
                            "no handler for this type",
                            Some(t),
                        ),
                    },
                }
            });
            if let Some(b) = fanout {
                for (p, w) in s.peers.lock().unwrap().iter() {
                    if *p != me {
                        let _ = (&*w.lock().unwrap()).write_all(&b);
                    }
                }
            }
            if let Some(d) = sleep {
                std::thread::sleep(d);
            }
            if !out.is_empty() {
                let _ = (&*writer.lock().unwrap()).write_all(&out);
            }
            if close {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        if r.is_err() || close {
            break 'conn;
        }
    }
    s.peers.lock().unwrap().retain(|(p, _)| *p != me);
    let _ = writer.lock().unwrap().shutdown(Shutdown::Both);
}

/// A listener that accepts and then never says anything (keeps the
/// connections open until dropped).
pub struct SilentPeer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl SilentPeer {
    pub fn start() -> SilentPeer {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            while !st.load(Ordering::Relaxed) {
                if let Ok((s, _)) = l.accept() {
                    held.push(s);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        SilentPeer {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for SilentPeer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A one-connection server that reads the first request frame, then writes
/// `reply` (raw bytes, header included) and keeps the socket open for a
/// moment so the client sees the bytes before any close.
pub fn bad_server(reply: Vec<u8>, then_close: bool) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        let Ok((mut s, _)) = l.accept() else { return };
        let Ok(Some(_request)) = read_frame(&mut s, Duration::from_secs(10)) else {
            return;
        };
        let _ = s.write_all(&reply);
        if then_close {
            let _ = s.shutdown(Shutdown::Both);
        } else {
            std::thread::sleep(Duration::from_secs(3));
        }
    });
    addr
}

/// The longest any client-test wait may take.
pub const LIMIT: Duration = Duration::from_secs(10);

/// A client of `addr` (5 s per request) sending a heartbeat every `every`
/// and giving up after two missed.
pub fn heartbeat_client(addr: SocketAddr, every: Duration) -> ringcast::client::Client {
    ringcast::client::Client::builder()
        .request_timeout(Duration::from_secs(5))
        .heartbeat(Some(every))
        .heartbeat_max_missed(2)
        .connect(addr)
        .unwrap()
}

/// The next `broadcast_message` among a library client's events (others
/// skipped), within 5 s.
pub fn next_broadcast(
    events: &std::sync::mpsc::Receiver<ringcast::client::Event>,
) -> ringcast::client::Message {
    crate::support::wait::next_matching(
        events,
        Duration::from_secs(5),
        "a broadcast_message",
        |e| match e {
            ringcast::client::Event::Message(m) if m.kind() == "broadcast_message" => Some(m),
            _ => None,
        },
    )
}

/// Client settings for the tests: 5 s to connect and for each request.
pub fn client_config() -> ClientConfig {
    ClientConfig {
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(5),
        ..ClientConfig::default()
    }
}
