//! No descriptor leak over 2,000 connections closed in every way a client
//! can close. Alone in its test binary: the server runs in-process, so
//! /proc/self/fd counts its descriptors and ours, and no other test may
//! open or close sockets meanwhile.

mod support;

use serde_json::json;
use std::net::TcpStream;
use std::time::{Duration, Instant};
use support::hostile::{fd_count, settle};
use support::server::start;
use support::wire::{frame, u64_of, Client};

const CONNECTIONS: usize = 2000;

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
    let last = settle(
        &mut stats,
        baseline_clients,
        baseline_fds,
        2,
        Duration::from_secs(6),
        &format!("{CONNECTIONS} connections"),
    );
    eprintln!(
        "{CONNECTIONS} connections in {opened:?}; settled after {:?}: \
         clients {} (baseline {baseline_clients}), fds {} (baseline {baseline_fds})",
        started.elapsed() - opened,
        last.clients,
        last.fds
    );
    // Every connection that exchanged a ping was accepted, and perhaps
    // some that left at once.
    assert!(
        (proven + 1..=CONNECTIONS as u64 + 1).contains(&last.accepted),
        "{} connections accepted, {proven} proven",
        last.accepted
    );
    // The server still works.
    let mut c = Client::connect(addr);
    assert_eq!(c.request(&json!({"type": "ping"}))["type"], "pong");
}
