//! No descriptor leak over 2,000 connections closed in every way a client
//! can close. Alone in its test binary: the server runs in-process, so
//! /proc/self/fd counts its descriptors and ours, and no other test may
//! open or close sockets meanwhile.

mod common;

use common::*;
use serde_json::json;

use std::net::TcpStream;
use std::time::{Duration, Instant};

const CONNECTIONS: usize = 2000;

fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn no_descriptor_leak_over_2000_connections() {
    let server = start(2);
    let addr = server.local_addr();
    let mut stats = Client::connect(addr);
    assert_eq!(stats.request(&json!({"type": "ping"}))["type"], "pong");
    let baseline_fds = fd_count();
    let baseline_clients = u64_of(&stats.stats(), "connected_clients");
    assert_eq!(baseline_clients, 1);

    let started = Instant::now();
    let ping = frame(&json!({"type": "ping", "id": 1}));
    let mut proven = 0u64;
    for i in 0..CONNECTIONS {
        let s = TcpStream::connect(addr).expect("connect");
        let mut c = Client::from_stream(s);
        let mode = i % 5;
        if mode != 3 {
            // One exchange first, so the server has certainly accepted it.
            c.send_raw(&ping);
            assert_eq!(c.recv()["type"], "pong");
            proven += 1;
        }
        match mode {
            // A clean close after the exchange.
            0 => {}
            // Closing in the middle of a frame.
            1 => c.send_raw(&ping[..ping.len() / 2]),
            // A reset (SO_LINGER 0) with a reply possibly in flight.
            2 => {
                c.send_raw(&ping);
                socket2::SockRef::from(&c.stream)
                    .set_linger(Some(Duration::ZERO))
                    .unwrap();
            }
            // Connect and leave at once (possibly before the server has
            // even accepted it).
            3 => {}
            // A framing error the client does not always wait to read.
            _ => {
                c.send_raw(&[0xff, 0xff, 0xff, 0xff]);
                if i % 10 == 4 {
                    c.expect_error("frame_too_large");
                }
            }
        }
    }
    let opened = started.elapsed();

    // Settled: every connection accepted has been closed, and no more
    // are arriving from the listen queue.
    let mut last = (0, 0, 0);
    let mut accepted_before = u64::MAX;
    let settled = wait_until(Duration::from_secs(6), || {
        let st = stats.stats();
        let (clients, accepted) = (
            u64_of(&st, "connected_clients"),
            u64_of(&st, "total_connections"),
        );
        let fds = fd_count();
        let stable = accepted == accepted_before;
        accepted_before = accepted;
        last = (clients, fds, accepted);
        stable && clients == baseline_clients && fds <= baseline_fds + 2
    });
    eprintln!(
        "{CONNECTIONS} connections in {opened:?}; settled after {:?}: \
         clients {} (baseline {baseline_clients}), fds {} (baseline {baseline_fds})",
        started.elapsed() - opened,
        last.0,
        last.1
    );
    assert!(
        settled,
        "after {CONNECTIONS} connections: {} clients connected (baseline {baseline_clients}), \
         {} descriptors open (baseline {baseline_fds})",
        last.0, last.1
    );
    // Every connection that exchanged a ping was accepted, and perhaps
    // some that left at once.
    assert!(
        (proven + 1..=CONNECTIONS as u64 + 1).contains(&last.2),
        "{} connections accepted, {proven} proven",
        last.2
    );
    // The server still works.
    let mut c = Client::connect(addr);
    assert_eq!(c.request(&json!({"type": "ping"}))["type"], "pong");
}
