//! Pipelining, frames split into single bytes, and a tiny receive-buffer
//! ring (multishot receive ending with ENOBUFS and being re-armed).

mod support;

use serde_json::json;
use std::io::Write;
use std::time::{Duration, Instant};
use support::server::{builder, spawn, start};
use support::wire::{frame, Client};

#[test]
fn thousand_pipelined_requests_answered_in_order() {
    let server = start(2);
    let mut c = Client::connect(server.local_addr());
    let mut bytes = Vec::new();
    for i in 0..1000u64 {
        let req = if i % 2 == 0 {
            json!({"type": "ping", "timestamp": format!("t{i}"), "id": i})
        } else {
            json!({"type": "echo", "content": format!("content #{i} ✓"), "id": i})
        };
        bytes.extend(frame(&req));
    }
    c.send_raw(&bytes);
    for i in 0..1000u64 {
        let v = c.recv();
        assert_eq!(v["id"], i, "out of order: {v}");
        if i % 2 == 0 {
            assert_eq!(v["type"], "pong", "{v}");
            assert_eq!(v["ping_timestamp"], format!("t{i}"));
        } else {
            assert_eq!(v["type"], "echo_response", "{v}");
            assert_eq!(v["content"], format!("content #{i} ✓"));
        }
    }
    c.expect_silence(Duration::from_millis(100));
}

#[test]
fn frame_sent_one_byte_at_a_time() {
    let server = start(1);
    let mut c = Client::connect(server.local_addr());
    let mut bytes = frame(&json!({"type": "echo", "content": "byte by byte ✓", "id": "slow"}));
    bytes.extend(frame(&json!({"type": "ping", "id": 2})));
    let started = Instant::now();
    for b in &bytes {
        c.stream.write_all(std::slice::from_ref(b)).unwrap();
        c.stream.flush().unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    let v = c.recv();
    assert_eq!(v["type"], "echo_response", "{v}");
    assert_eq!(v["content"], "byte by byte ✓");
    assert_eq!(v["id"], "slow");
    let v = c.recv();
    assert_eq!(v["type"], "pong", "{v}");
    assert_eq!(v["id"], 2);
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[test]
fn tiny_buffer_ring_serves_many_busy_connections() {
    const CONNS: usize = 100;
    const PER_CONN: usize = 50;
    let server = spawn(builder(1).recv_buffers(4).recv_buffer_size(256));
    let addr = server.local_addr();
    let mut clients = Client::connect_many(addr, CONNS);
    let content = |c: usize, i: usize| {
        let head = format!("c{c}-m{i}-");
        format!("{head}{}", "y".repeat(300 - head.len()))
    };
    // Every connection pipelines all its requests at once (17 KiB each,
    // well inside a socket buffer), so the server sees 100 busy sockets
    // competing for 4 x 256-byte buffers.
    for (c, client) in clients.iter_mut().enumerate() {
        let mut bytes = Vec::new();
        for i in 0..PER_CONN {
            bytes.extend(frame(
                &json!({"type": "echo", "content": content(c, i), "id": i}),
            ));
        }
        client.send_raw(&bytes);
    }
    for (c, client) in clients.iter_mut().enumerate() {
        for i in 0..PER_CONN {
            let v = client.recv();
            assert_eq!(v["type"], "echo_response", "conn {c}: {v}");
            assert_eq!(v["id"], i, "conn {c} out of order");
            assert_eq!(v["content"], content(c, i), "conn {c} message {i}");
        }
    }
    // All still usable afterwards.
    for client in &mut clients {
        assert_eq!(client.request(&json!({"type": "ping"}))["type"], "pong");
    }
    let s = clients[0].stats();
    assert_eq!(
        s["messages_by_type"]["echo"],
        (CONNS * PER_CONN) as u64,
        "{s}"
    );
    assert_eq!(s["connected_clients"], CONNS as u64);
}
