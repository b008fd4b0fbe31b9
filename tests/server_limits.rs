//! Limits: connections (global and per IP), authentication, rate limit,
//! idle timeout, and how promptly a closed connection frees its slot.

mod support;

use serde_json::json;
use std::time::{Duration, Instant};
use support::server::{builder, spawn};
use support::wire::{frame, Client};

#[test]
fn max_connections() {
    let server = spawn(builder(2).max_connections(5));
    let addr = server.local_addr();
    let mut clients: Vec<Client> = Vec::new();
    for _ in 0..5 {
        let mut c = Client::connect(addr);
        assert_eq!(c.request(&json!({"type": "ping"}))["type"], "pong");
        clients.push(c);
    }
    // The sixth gets server_full (without sending anything), then EOF.
    let mut sixth = Client::connect(addr);
    let v = sixth.expect_error("server_full");
    assert!(v.get("id").is_none(), "{v}");
    assert!(sixth.read_until_closed(Duration::from_secs(4)).is_empty());
    // The first five still work.
    for c in &mut clients {
        assert_eq!(c.request(&json!({"type": "ping"}))["type"], "pong");
    }
    let s = clients[0].stats();
    assert_eq!(s["connected_clients"], 5, "{s}");
    assert_eq!(s["errors_by_code"]["server_full"], 1, "{s}");
    // After one leaves, a new one is accepted.
    drop(clients.pop());
    let mut newcomer = Client::connect_admitted(addr, Duration::from_secs(3));
    assert_eq!(newcomer.request(&json!({"type": "ping"}))["type"], "pong");
}

#[test]
fn max_connections_per_ip() {
    let server = spawn(builder(2).max_connections_per_ip(2));
    let addr = server.local_addr();
    let mut a = Client::connect(addr);
    let mut b = Client::connect(addr);
    assert_eq!(a.request(&json!({"type": "ping"}))["type"], "pong");
    assert_eq!(b.request(&json!({"type": "ping"}))["type"], "pong");
    let mut c = Client::connect(addr);
    c.expect_error("server_full");
    assert!(c.read_until_closed(Duration::from_secs(4)).is_empty());
    assert_eq!(a.request(&json!({"type": "ping"}))["type"], "pong");
    drop(b);
    let mut d = Client::connect_admitted(addr, Duration::from_secs(3));
    assert_eq!(d.request(&json!({"type": "ping"}))["type"], "pong");
}

/// A connection closed after an error frame lingers until the peer closes;
/// once the peer has closed, the slot must be freed at once, not at the
/// lingering deadline.
#[test]

fn slot_freed_promptly_after_error_close() {
    let server = spawn(builder(1).max_connections(1));
    let addr = server.local_addr();
    let mut a = Client::connect(addr);
    a.send_raw(&[0, 0, 0, 0]);
    a.expect_error("empty_frame");
    assert!(a.read_until_closed(Duration::from_secs(4)).is_empty());
    drop(a);
    let started = Instant::now();
    let _b = Client::connect_admitted(addr, Duration::from_secs(4));
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(500),
        "slot freed only after {took:?}"
    );
}

#[test]
fn auth_required() {
    let server = spawn(builder(2).auth_token(Some("s3cret".into())));
    let addr = server.local_addr();

    // Right token: auth_ok with the id, then requests work.
    let mut a = Client::connect(addr);
    let v = a.request(&json!({"type": "auth", "token": "s3cret", "id": "a1"}));
    assert_eq!(v["type"], "auth_ok", "{v}");
    assert_eq!(v["id"], "a1");
    let v = a.request(&json!({"type": "ping", "id": 1}));
    assert_eq!(v["type"], "pong", "{v}");
    assert_eq!(v["id"], 1);

    // Wrong token: unauthorized, closed.
    let mut w = Client::connect(addr);
    w.send(&json!({"type": "auth", "token": "nope", "id": 2}));
    w.expect_error("unauthorized");
    assert!(w.read_until_closed(Duration::from_secs(4)).is_empty());

    // A prefix of the token is wrong too.
    let mut w = Client::connect(addr);
    w.send(&json!({"type": "auth", "token": "s3cre"}));
    w.expect_error("unauthorized");
    assert!(w.read_until_closed(Duration::from_secs(4)).is_empty());

    // A ping first: unauthorized, closed.
    let mut p = Client::connect(addr);
    p.send(&json!({"type": "ping"}));
    p.expect_error("unauthorized");
    assert!(p.read_until_closed(Duration::from_secs(4)).is_empty());

    // Unauthenticated clients get no broadcasts and are not counted.
    let mut b = Client::connect(addr);
    assert_eq!(
        b.request(&json!({"type": "auth", "token": "s3cret"}))["type"],
        "auth_ok"
    );
    let mut lurker = Client::connect(addr);
    let s = a.stats();
    assert_eq!(s["connected_clients"], 2, "{s}");
    assert_eq!(s["messages_by_type"]["auth"], 2, "{s}");
    let v = a.request(&json!({"type": "broadcast", "content": "for members", "id": 3}));
    assert_eq!(v["type"], "broadcast_sent", "{v}");
    assert_eq!(v["recipients"], 1, "{v}");
    let m = b.recv();
    assert_eq!(m["type"], "broadcast_message", "{m}");
    assert_eq!(m["content"], "for members");
    lurker.expect_silence(Duration::from_millis(200));
    // The lurker can still authenticate, and then it is a member.
    assert_eq!(
        lurker.request(&json!({"type": "auth", "token": "s3cret"}))["type"],
        "auth_ok"
    );
    let v = a.request(&json!({"type": "broadcast", "content": "again"}));
    assert_eq!(v["recipients"], 2, "{v}");
    assert_eq!(lurker.recv()["content"], "again");
    assert_eq!(b.recv()["content"], "again");
}

#[test]
fn rate_limit() {
    let server = spawn(builder(1).rate_limit(50).rate_burst(10));
    let mut c = Client::connect(server.local_addr());
    let (ok, limited) = c.ping_flood(100);
    // At least the burst passes; at 50/s little more can within the time
    // 100 small frames take to arrive.
    assert!((10..60).contains(&ok), "{ok} passed, {limited} limited");
    assert!(limited > 0);
    // Still open; after a second the bucket has refilled.
    std::thread::sleep(Duration::from_millis(1100));
    for i in 0..5 {
        let v = c.request(&json!({"type": "ping", "id": i}));
        assert_eq!(v["type"], "pong", "{v}");
    }
    let s = c.stats();
    assert_eq!(s["errors_by_code"]["rate_limited"], limited, "{s}");
}

#[test]
fn idle_connection_is_closed() {
    let server = spawn(builder(1).idle_timeout_secs(1));
    let mut idle = Client::connect(server.local_addr());
    let started = Instant::now();
    idle.read_until_closed(Duration::from_secs(3));
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed after {:?}, before the idle timeout",
        started.elapsed()
    );
}

#[test]

fn active_connection_survives_idle_timeout() {
    let server = spawn(builder(1).idle_timeout_secs(1));
    let mut active = Client::connect(server.local_addr());
    let started = Instant::now();
    let mut i = 0;
    while started.elapsed() < Duration::from_millis(3200) {
        let v = match active.try_recv_after(&json!({"type": "ping", "id": i})) {
            Some(v) => v,
            None => panic!(
                "active connection (ping every 300 ms) closed after {:?}",
                started.elapsed()
            ),
        };
        assert_eq!(v["type"], "pong", "{v}");
        i += 1;
        std::thread::sleep(Duration::from_millis(300));
    }
}

trait TryRequest {
    fn try_recv_after(&mut self, v: &serde_json::Value) -> Option<serde_json::Value>;
}

impl TryRequest for Client {
    /// Sends (ignoring a write error) and reads one frame; None if closed.
    fn try_recv_after(&mut self, v: &serde_json::Value) -> Option<serde_json::Value> {
        use std::io::Write;
        if self.stream.write_all(&frame(v)).is_err() {
            return None;
        }
        self.try_recv().ok().flatten()
    }
}
