//! Graceful shutdown: everything owed is delivered, then `shutting_down`,
//! then EOF; bounded by drain_secs when a client does not read.

mod support;

use serde_json::json;
use std::time::{Duration, Instant};
use support::server::{builder, spawn, start};
use support::wait::wait_until;
use support::wire::{frame, Client};

const ECHOS: u64 = 200;
const CONTENT: usize = 4096;

/// Starts `shutdown()` on another thread; returns a handle yielding how
/// long it took.
fn shutdown_in_background(
    server: ringcast::server::ServerHandle,
) -> std::thread::JoinHandle<Duration> {
    std::thread::spawn(move || {
        let started = Instant::now();
        server.shutdown();
        started.elapsed()
    })
}

/// Connects a client that owes nothing but has `ECHOS` replies of
/// `CONTENT` bytes pending (it has not read them), and waits until the
/// server has answered all of them.
fn client_with_pending_replies(server: &ringcast::server::ServerHandle) -> Client {
    let addr = server.local_addr();
    let mut busy = Client::connect_small_rcvbuf(addr, 4096);
    let mut bytes = Vec::new();
    for i in 0..ECHOS {
        let content = format!("{i:06}{}", "e".repeat(CONTENT - 6));
        bytes.extend(frame(&json!({"type": "echo", "content": content, "id": i})));
    }
    busy.send_raw(&bytes);
    wait_until(
        Duration::from_secs(3),
        "the server to read every echo request",
        || server.totals().messages[1] == ECHOS,
    );
    busy
}

#[test]
fn shutdown_delivers_pending_output_then_shutting_down() {
    let drain_secs = 3;
    let server = spawn(builder(2).drain_secs(drain_secs));
    let addr = server.local_addr();
    let mut idle = Client::connect_many(addr, 3);
    for c in &mut idle {
        assert_eq!(c.request(&json!({"type": "ping"}))["type"], "pong");
    }
    let mut busy = client_with_pending_replies(&server);
    let shutdown = shutdown_in_background(server);

    for i in 0..ECHOS {
        let v = busy.recv();
        assert_eq!(v["type"], "echo_response", "{v}");
        assert_eq!(v["id"], i);
        let content = v["content"].as_str().unwrap();
        assert_eq!(content.len(), CONTENT);
        assert_eq!(&content[..6], format!("{i:06}"));
    }
    let v = busy.expect_error("shutting_down");
    assert!(v.get("id").is_none(), "{v}");
    let rest = busy.read_until_closed(Duration::from_secs(drain_secs + 2));
    assert!(rest.is_empty(), "frames after shutting_down: {rest:?}");
    drop(busy);
    for c in &mut idle {
        c.expect_error("shutting_down");
        let rest = c.read_until_closed(Duration::from_secs(drain_secs + 2));
        assert!(rest.is_empty(), "frames after shutting_down: {rest:?}");
    }
    drop(idle);

    let took = shutdown.join().unwrap();
    assert!(
        took < Duration::from_secs(drain_secs + 2),
        "shutdown took {took:?} (drain_secs {drain_secs})"
    );
}

#[test]
fn shutdown_cuts_a_client_that_never_reads() {
    let drain_secs = 1;
    let server = spawn(builder(1).drain_secs(drain_secs));
    // Its replies do not all fit in the socket buffers, so they cannot be
    // flushed: the drain deadline must cut it.
    let _stuck = client_with_pending_replies(&server);
    let took = shutdown_in_background(server).join().unwrap();
    assert!(
        took < Duration::from_secs(drain_secs + 3),
        "shutdown took {took:?} (drain_secs {drain_secs})"
    );
}

#[test]

fn shutdown_is_prompt_once_clients_have_closed() {
    let server = spawn(builder(2).drain_secs(5));
    let addr = server.local_addr();
    let mut clients = Client::connect_many(addr, 4);
    for c in &mut clients {
        assert_eq!(c.request(&json!({"type": "ping"}))["type"], "pong");
    }
    let shutdown = shutdown_in_background(server);
    for mut c in clients {
        c.expect_error("shutting_down");
        assert!(c.read_until_closed(Duration::from_secs(4)).is_empty());
    }
    let took = shutdown.join().unwrap();
    assert!(
        took < Duration::from_millis(1000),
        "shutdown took {took:?} although every client had read everything and closed"
    );
}

#[test]

fn nobody_listens_after_shutdown() {
    for shards in [1, 2] {
        let server = start(shards);
        let addr = server.local_addr();
        server.shutdown();
        assert!(
            std::net::TcpStream::connect(addr).is_err(),
            "a connection to {addr} was accepted after shutdown() returned ({shards} shards)"
        );
    }
}
