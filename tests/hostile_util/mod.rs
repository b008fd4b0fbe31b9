//! Helpers shared by the hostile_* tests (on top of tests/common): a health
//! watchdog, raw frame reading (for responses serde_json cannot parse, such
//! as 100,000 levels of nesting), a seeded RNG, descriptor and RSS probes,
//! and a `ringcast server` child process for the CLI tests.

#![allow(dead_code)]

use crate::common::*;
use serde_json::{json, Value};
use std::io::{self, Read};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Checks, after each hostile case, that the server still answers other
/// clients: a ping on a long-lived second connection and a ping on a fresh
/// one.
pub struct Watchdog {
    addr: SocketAddr,
    client: Client,
    n: u64,
}

impl Watchdog {
    pub fn new(addr: SocketAddr) -> Watchdog {
        let mut client = Client::connect(addr);
        assert_eq!(client.request(&json!({"type": "ping"}))["type"], "pong");
        Watchdog { addr, client, n: 0 }
    }

    /// Panics (naming `case`) unless both pings are answered in time.
    /// Broadcasts reaching the watchdog's connection are skipped.
    pub fn check(&mut self, case: &str) {
        self.n += 1;
        let id = format!("watchdog-{}", self.n);
        self.client.send(&json!({"type": "ping", "id": id}));
        let v = loop {
            let v = self.client.recv();
            if v["type"] != "broadcast_message" {
                break v;
            }
        };
        assert_eq!(
            v["type"],
            "pong",
            "after {case}: watchdog got {}",
            short(&v)
        );
        assert_eq!(v["id"], id.as_str(), "after {case}: {}", short(&v));
        let mut fresh = Client::connect(self.addr);
        let v = fresh.request(&json!({"type": "ping", "id": "fresh"}));
        assert_eq!(
            v["type"],
            "pong",
            "after {case}: a new connection got {}",
            short(&v)
        );
    }

    /// The watchdog's own connection (for stats).
    pub fn client(&mut self) -> &mut Client {
        &mut self.client
    }
}

/// `v` as JSON text, cut to 300 characters (for assertion messages about
/// frames that may be megabytes long).
pub fn short(v: &Value) -> String {
    let s = v.to_string();
    match s.char_indices().nth(300) {
        Some((i, _)) => format!("{}… ({} bytes)", &s[..i], s.len()),
        None => s,
    }
}

/// Reads one frame's raw payload; `Ok(None)` on EOF at a frame boundary.
pub fn recv_raw(stream: &mut TcpStream) -> io::Result<Option<Vec<u8>>> {
    let mut h = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match stream.read(&mut h[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let mut payload = vec![0u8; u32::from_be_bytes(h) as usize];
    stream.read_exact(&mut payload)?;
    Ok(Some(payload))
}

/// splitmix64: a tiny seeded generator, so "random" inputs are the same
/// on every run.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let r = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
    }
}

/// Open descriptors of this process (the server runs in-process).
pub fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// `rss_bytes` of a `server_stats` frame.
pub fn rss_of(stats: &Value) -> u64 {
    u64_of(stats, "rss_bytes")
}

pub const MIB: u64 = 1 << 20;

/// A `ringcast server` child process on 127.0.0.1 with a kernel-chosen
/// port; killed (SIGKILL) on drop if still running.
pub struct CliServer {
    pub child: Child,
    pub addr: SocketAddr,
    /// Kept so the reader thread has somewhere to put later lines.
    _log: LogLines,
}

impl CliServer {
    /// Starts `ringcast server --addr 127.0.0.1:0 --shards 2 --no-pin
    /// --log-format json` plus `args`, with `envs` set, and waits for its
    /// "ringcast listening" log line to learn the port.
    pub fn start(args: &[&str], envs: &[(&str, &str)]) -> CliServer {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringcast"));
        cmd.args([
            "server",
            "--addr",
            "127.0.0.1:0",
            "--shards",
            "2",
            "--no-pin",
            "--log-format",
            "json",
        ])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        // Only what the test asks for comes from the environment.
        for (k, _) in std::env::vars() {
            if k.starts_with("RINGCAST_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("RUST_LOG", "info");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start ringcast server");
        let mut log = LogLines::new(child.stderr.take().unwrap());
        let Some(listening) = log.wait_for("ringcast listening", Duration::from_secs(10)) else {
            let _ = child.kill();
            panic!("ringcast server printed no listening line within 10 s");
        };
        let a = listening["fields"]["addr"].as_str().expect("addr field");
        CliServer {
            child,
            addr: a.parse().expect("listening address"),
            _log: log,
        }
    }

    /// SIGTERM, then waits up to `within` for a clean exit; returns whether
    /// it exited successfully.
    pub fn terminate(&mut self, within: Duration) -> bool {
        sigterm(&self.child);
        wait_exit(&mut self.child, within).is_some_and(|st| st.success())
    }
}

impl Drop for CliServer {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
