//! `partial_flood`: many connections each send a maximum-size frame slowly,
//! never finishing it, so a ringcast server must hold partial frames. It
//! measures the `max_partial_bytes` budget (issue #6, docs/RELIABILITY.md
//! "Memory bound"); `scripts/partial-flood.sh` runs it against the release
//! binary and reads the server's peak RSS.
//!
//! ```text
//! cargo run --release --example partial_flood -- 127.0.0.1:PORT \
//!     [CONNS=10000] [FRAME=1048576] [FIRST=4096] [STEP=16384] [ROUND_MS=100] [SECS=60] [HOLD_SECS=3]
//! ```
//!
//! Every connection sends a 4-byte header announcing an echo of FRAME bytes
//! and the first FIRST bytes of it, then STEP more bytes per round (one
//! round every ROUND_MS at most), stopping one byte short of the end. The
//! trickle stops after SECS, or once every connection still open has sent
//! all but its last byte; the connections are then held HOLD_SECS more.
//! A connection that receives a frame is expected to have been refused:
//! it is counted by the error code it got. Ends with the server's own
//! `get_stats`. Talks to the address given only (use 127.0.0.1).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    /// Still sending (or holding) its frame.
    Open,
    /// Got an error frame (then, normally, the close).
    Refused,
    /// Closed by the server without a frame, or reset.
    Closed,
}

struct Conn {
    stream: TcpStream,
    sent: usize,
    state: State,
    /// Bytes of a frame from the server.
    inbox: Vec<u8>,
}

fn arg(args: &[String], i: usize, default: u64) -> u64 {
    args.get(i)
        .map(|s| {
            s.parse()
                .unwrap_or_else(|_| panic!("argument {i}: not a number: {s}"))
        })
        .unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let addr: SocketAddr = args
        .get(1)
        .expect("usage: partial_flood ADDR [CONNS] [FRAME] [FIRST] [STEP] [ROUND_MS] [SECS] [HOLD_SECS]")
        .parse()
        .expect("ADDR as ip:port");
    assert!(
        addr.ip().is_loopback(),
        "partial_flood only talks to loopback"
    );
    let conns = arg(&args, 2, 10_000) as usize;
    let frame = arg(&args, 3, 1 << 20) as usize;
    let first = arg(&args, 4, 4096) as usize;
    let step = arg(&args, 5, 16 << 10) as usize;
    let round = Duration::from_millis(arg(&args, 6, 100));
    let secs = Duration::from_secs(arg(&args, 7, 60));
    let hold = Duration::from_secs(arg(&args, 8, 3));

    // The stream: header + an echo whose content fills the frame. The last
    // byte (the closing brace) is never sent.
    let shell = r#"{"type":"echo","content":""}"#.len();
    assert!(frame > shell, "FRAME must exceed {shell} bytes");
    let mut bytes = Vec::with_capacity(4 + frame);
    bytes.extend_from_slice(&(frame as u32).to_be_bytes());
    bytes.extend_from_slice(br#"{"type":"echo","content":""#);
    bytes.resize(4 + frame - 2, b'f');
    bytes.extend_from_slice(br#""}"#);
    let last = bytes.len() - 1;

    let started = Instant::now();
    let mut all: Vec<Conn> = Vec::with_capacity(conns);
    let mut connect_errors = 0;
    for _ in 0..conns {
        match TcpStream::connect(addr) {
            Ok(s) => {
                s.set_nonblocking(true).unwrap();
                let _ = s.set_nodelay(true);
                all.push(Conn {
                    stream: s,
                    sent: 0,
                    state: State::Open,
                    inbox: Vec::new(),
                });
            }
            Err(e) => {
                connect_errors += 1;
                if connect_errors == 1 {
                    eprintln!("connect failed: {e}");
                }
            }
        }
    }
    let connected_in = started.elapsed();
    eprintln!(
        "{} connections open in {connected_in:.2?} ({connect_errors} failed)",
        all.len()
    );

    let mut codes: std::collections::BTreeMap<String, usize> = Default::default();
    let mut goal = first;
    let mut rounds = 0u64;
    let trickle_start = Instant::now();
    let mut trickle_time = Duration::ZERO;
    let mut hold_until: Option<Instant> = None;
    loop {
        let turn = Instant::now();
        let mut all_done = true;
        for c in all.iter_mut().filter(|c| c.state == State::Open) {
            poll_input(c, &mut codes);
            if c.state != State::Open {
                continue;
            }
            let target = goal.min(last);
            while c.sent < target {
                match c.stream.write(&bytes[c.sent..target]) {
                    Ok(n) => c.sent += n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => {
                        // Reset: the error frame may still be readable.
                        poll_input(c, &mut codes);
                        if c.state == State::Open {
                            c.state = State::Closed;
                        }
                        break;
                    }
                }
            }
            if c.state == State::Open && c.sent < last {
                all_done = false;
            }
        }
        rounds += 1;
        if hold_until.is_none() && (all_done || trickle_start.elapsed() >= secs) {
            trickle_time = trickle_start.elapsed();
            hold_until = Some(Instant::now() + hold);
        }
        if let Some(t) = hold_until {
            if Instant::now() >= t {
                break;
            }
        } else {
            goal = goal.saturating_add(step);
        }
        if let Some(left) = round.checked_sub(turn.elapsed()) {
            std::thread::sleep(left);
        }
    }
    for c in all.iter_mut().filter(|c| c.state == State::Open) {
        poll_input(c, &mut codes);
    }

    let count = |s: State| all.iter().filter(|c| c.state == s).count();
    let open: Vec<&Conn> = all.iter().filter(|c| c.state == State::Open).collect();
    let held_bytes: usize = open.iter().map(|c| c.sent).sum();
    let refused_at: Vec<usize> = all
        .iter()
        .filter(|c| c.state == State::Refused)
        .map(|c| c.sent)
        .collect();
    let total_sent: usize = all.iter().map(|c| c.sent).sum();
    println!(
        "connections {}: open (frame held) {}, refused {} {:?}, closed without a frame {}",
        all.len(),
        count(State::Open),
        count(State::Refused),
        codes,
        count(State::Closed)
    );
    println!(
        "frame {frame} bytes, first {first}, step {step} per round of {round:?}; \
         {rounds} rounds, trickle {trickle_time:.2?}, held {hold:?}"
    );
    println!(
        "bytes sent {} ({} MiB); by open connections {} ({} MiB, at most {} each); \
         refused connections had sent {}..{} bytes",
        total_sent,
        total_sent >> 20,
        held_bytes,
        held_bytes >> 20,
        open.iter().map(|c| c.sent).max().unwrap_or(0),
        refused_at.iter().min().unwrap_or(&0),
        refused_at.iter().max().unwrap_or(&0)
    );
    match server_stats(addr) {
        Ok(v) => println!("server get_stats: {v}"),
        Err(e) => println!("server get_stats failed: {e}"),
    }
}

/// Reads whatever the server sent; a whole frame marks the connection
/// refused (by its `code`), EOF or a reset without one marks it closed.
fn poll_input(c: &mut Conn, codes: &mut std::collections::BTreeMap<String, usize>) {
    let mut buf = [0u8; 4096];
    loop {
        match c.stream.read(&mut buf) {
            Ok(0) => {
                if c.state == State::Open {
                    c.state = State::Closed;
                }
                return;
            }
            Ok(n) => {
                c.inbox.extend_from_slice(&buf[..n]);
                if c.inbox.len() >= 4 {
                    let len = u32::from_be_bytes(c.inbox[..4].try_into().unwrap()) as usize;
                    if c.inbox.len() >= 4 + len && c.state == State::Open {
                        let code = code_of(&c.inbox[4..4 + len]);
                        *codes.entry(code).or_default() += 1;
                        c.state = State::Refused;
                    }
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => {
                if c.state == State::Open {
                    c.state = State::Closed;
                }
                return;
            }
        }
    }
}

fn code_of(payload: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(payload).unwrap_or_default();
    let code = v["code"].as_str().unwrap_or("?");
    let msg = v["message"].as_str().unwrap_or("");
    format!("{code}: {msg}")
}

/// `get_stats` on a fresh blocking connection.
fn server_stats(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let req = br#"{"type":"get_stats"}"#;
    s.write_all(&(req.len() as u32).to_be_bytes())?;
    s.write_all(req)?;
    let mut h = [0u8; 4];
    s.read_exact(&mut h)?;
    let mut p = vec![0u8; u32::from_be_bytes(h) as usize];
    s.read_exact(&mut p)?;
    let v: serde_json::Value = serde_json::from_slice(&p).map_err(std::io::Error::other)?;
    let pick = [
        "connected_clients",
        "total_connections",
        "bytes_received",
        "rss_bytes",
        "partial_frame_bytes",
    ];
    let mut out = String::new();
    for k in pick {
        out.push_str(&format!("{k}={} ", v[k]));
    }
    out.push_str(&format!(
        "server_full={} protocol_errors={}",
        v["errors_by_code"]["server_full"], v["protocol_errors"]
    ));
    Ok(out)
}
