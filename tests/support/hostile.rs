//! For the hostile and resource tests: a health watchdog, a seeded RNG,
//! descriptor and RSS probes, settling after a flood, one-at-a-time
//! execution within a test binary, and settings from the environment.

use crate::support::wait::wait_until;
use crate::support::wire::{u64_of, Client};
use serde_json::{json, Value};
use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

pub const MIB: u64 = 1 << 20;

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

/// Open descriptors of this process (the server runs in-process, so this
/// counts its descriptors and the test's).
pub fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// `rss_bytes` of a `server_stats` frame.
pub fn rss_of(stats: &Value) -> u64 {
    u64_of(stats, "rss_bytes")
}

/// What [`settle`] saw last.
#[derive(Clone, Copy, Debug, Default)]
pub struct Settled {
    pub clients: u64,
    pub fds: usize,
    pub accepted: u64,
}

/// Waits until the server (asked on `stats`) reports `clients` connected
/// and this process's descriptor count is at most `slack` above `fds`,
/// with the accepted count no longer moving between two polls; panics
/// after `within`, naming `after` and the last figures. Returns the
/// figures it settled at.
pub fn settle(
    stats: &mut Client,
    clients: u64,
    fds: usize,
    slack: usize,
    within: Duration,
    after: &str,
) -> Settled {
    let last = Cell::new(Settled::default());
    let mut accepted_before = u64::MAX;
    wait_until(
        within,
        || {
            let l = last.get();
            format!(
                "the server to settle after {after}: {} clients connected (want {clients}), \
                 {} descriptors open (baseline {fds}, slack {slack}), {} accepted",
                l.clients, l.fds, l.accepted
            )
        },
        || {
            let st = stats.stats();
            let now = Settled {
                clients: u64_of(&st, "connected_clients"),
                fds: fd_count(),
                accepted: u64_of(&st, "total_connections"),
            };
            let stable = now.accepted == accepted_before;
            accepted_before = now.accepted;
            last.set(now);
            stable && now.clients == clients && now.fds <= fds + slack
        },
    );
    last.get()
}

/// Runs the tests of one binary that call it one at a time (hold the guard
/// for the whole test), so one test's sockets and memory never show up in
/// another's figures. A failed test does not block the others.
pub fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// The variable `name` parsed as a `T`, or `default` when it is unset or
/// does not parse.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
