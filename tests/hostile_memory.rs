//! The shard-wide budget for partially received frames (`max_partial_bytes`,
//! issue #6), against a real server over real sockets on 127.0.0.1.
//!
//! - `the_budget_refuses_large_partial_frames_and_frees_on_completion`: one
//!   shard whose budget is exactly one maximum-size frame; precise figures
//!   from the `partial_frame_bytes` gauge.
//! - `a_flood_of_partial_frames_stays_within_the_budget`: many connections
//!   each send part of a large frame (1,000 by default,
//!   HOSTILE_BUDGET_CONNS, fewer if the descriptor limit is low) against a
//!   small budget; the server's memory, the refusals, and recovery.
//!
//! The server runs in-process, so RSS covers the server and the test
//! clients together; the tests run one at a time (`serial()`). Run with
//! `--nocapture` for the figures recorded in docs/RELIABILITY.md.

mod support;

use ringcast::server::ServerHandle;
use serde_json::{json, Value};
use std::cell::{Cell, RefCell};
use std::io::Write;
use std::time::{Duration, Instant};
use support::hostile::{env_or, rss_of, serial, short, Watchdog, MIB};
use support::server::{builder, spawn};
use support::wait::wait_until;
use support::wire::{frame, frame_bytes, is_timeout, u64_of, Client};

/// The error message a refused connection gets (docs/PROTOCOL.md).
const BUDGET_MESSAGE: &str = "server input buffer budget exhausted; retry later";

/// A partial frame may always hold this much (`SMALL_PARTIAL_BYTES`).
const SMALL: u64 = 4 << 10;

/// The whole frame (header included) of an echo whose payload is exactly
/// `payload_len` bytes.
fn echo_frame(payload_len: usize) -> Vec<u8> {
    let pad = payload_len - r#"{"type":"echo","content":""}"#.len();
    let payload = format!(r#"{{"type":"echo","content":"{}"}}"#, "e".repeat(pad));
    let f = frame_bytes(payload.as_bytes());
    assert_eq!(f.len(), 4 + payload_len);
    f
}

fn partial_of(stats: &Value) -> u64 {
    u64_of(stats, "partial_frame_bytes")
}

fn server_full_of(stats: &Value) -> u64 {
    u64_of(&stats["errors_by_code"], "server_full")
}

/// Asserts that `c` gets the budget's `server_full` and then the close.
fn expect_budget_refusal(c: &mut Client, who: &str) {
    let frames = c.read_until_closed(Duration::from_secs(5));
    assert_eq!(
        frames.len(),
        1,
        "{who}: expected one error frame, got {frames:?}"
    );
    let v = &frames[0];
    assert_eq!(v["type"], "error", "{who}: {v}");
    assert_eq!(v["code"], "server_full", "{who}: {v}");
    assert_eq!(v["message"], BUDGET_MESSAGE, "{who}: {v}");
    assert!(
        v.get("id").is_none() && v.get("request_type").is_none(),
        "{v}"
    );
}

/// Sends `bytes` in two writes split at `at`, the second once the server
/// has read the first (so the first part waits in a buffer of its own).
fn send_in_two(c: &mut Client, bytes: &[u8], at: usize, server: &ServerHandle) {
    let before = server.totals().bytes_received;
    c.send_raw(&bytes[..at]);
    wait_until(
        Duration::from_secs(5),
        format!("the server to read the first {at} bytes"),
        || server.totals().bytes_received >= before + at as u64,
    );
    c.send_raw(&bytes[at..]);
}

/// Whether bytes are waiting on client `i`'s connection (peeked, not read).
fn frame_waiting(c: &Client, i: usize) -> bool {
    c.stream.set_nonblocking(true).unwrap();
    let mut b = [0u8; 1];
    let waiting = match c.stream.peek(&mut b) {
        Ok(n) => n > 0,
        Err(e) if is_timeout(&e) => false,
        Err(e) => panic!("client {i}: {e}"),
    };
    c.stream.set_nonblocking(false).unwrap();
    waiting
}

/// The peak resident set of this process so far (VmHWM), in bytes.
fn vm_hwm() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

#[test]
fn the_budget_refuses_large_partial_frames_and_frees_on_completion() {
    let _serial = serial();
    // One shard; frames up to 64 KiB; the budget is exactly one whole
    // maximum-size frame (the least `validate` accepts).
    const MAX: usize = 64 << 10;
    let server = spawn(builder(1).max_frame_bytes(MAX).max_partial_bytes(MAX + 4));
    let addr = server.local_addr();
    let mut stats = Client::connect(addr);
    let s0 = stats.stats();
    assert_eq!(partial_of(&s0), 0);
    let full_before = server_full_of(&s0);

    // The hog sends all of a maximum-size echo but its last 4 bytes.
    let big = echo_frame(MAX);
    let mut hog = Client::connect(addr);
    hog.send_raw(&big[..big.len() - 4]);
    let held = Cell::new(0);
    wait_until(
        Duration::from_secs(5),
        || format!("the hog's partial frame in the gauge ({})", held.get()),
        || {
            held.set(partial_of(&stats.stats()));
            held.get() >= (big.len() - 4) as u64
        },
    );
    let held = held.get();
    // Growth stops at the frame's size: no doubling past it.
    assert!(held <= big.len() as u64, "gauge {held}");

    // The budget has at most 4 bytes left. A small request split across two
    // writes (so it waits in a buffer of its own) is still served.
    let mut small = Client::connect(addr);
    let ping = frame(&json!({"type": "ping", "id": "split"}));
    send_in_two(&mut small, &ping, 10, &server);
    let v = small.recv();
    assert_eq!(v["type"], "pong", "{v}");
    assert_eq!(v["id"], "split");

    // A 10 KiB frame needs more than the 4 KiB any partial frame may hold:
    // refused with `server_full`, then closed.
    let ten = echo_frame(10 << 10);
    let mut refused = Client::connect(addr);
    refused.send_raw(&ten[..6 << 10]);
    expect_budget_refusal(&mut refused, "the 10 KiB frame");
    let s = stats.stats();
    assert_eq!(server_full_of(&s), full_before + 1);
    assert_eq!(partial_of(&s), held, "the refusal released what it held");

    // The hog completes its frame: it is answered, and the budget is free.
    hog.set_read_timeout(Duration::from_secs(10));
    hog.send_raw(&big[big.len() - 4..]);
    let v = hog.recv();
    assert_eq!(v["type"], "echo_response", "{}", short(&v));
    assert_eq!(v["content"].as_str().unwrap().len(), MAX - 28);
    wait_until(Duration::from_secs(5), "the budget to be free", || {
        partial_of(&stats.stats()) == 0
    });

    // Now the 10 KiB frame is accepted, split in two writes.
    let mut again = Client::connect(addr);
    send_in_two(&mut again, &ten, 6 << 10, &server);
    assert_eq!(again.recv()["type"], "echo_response");

    // A partial frame dropped by a client that goes away is released too.
    let mut vanish = Client::connect(addr);
    vanish.send_raw(&big[..40 << 10]);
    wait_until(
        Duration::from_secs(5),
        "the vanishing client's partial frame in the gauge",
        || partial_of(&stats.stats()) >= 40 << 10,
    );
    drop(vanish);
    wait_until(
        Duration::from_secs(5),
        "a closed connection's partial frame to leave the gauge",
        || partial_of(&stats.stats()) == 0,
    );
    assert_eq!(server_full_of(&stats.stats()), full_before + 1);
}

#[test]
fn a_flood_of_partial_frames_stays_within_the_budget() {
    let _serial = serial();
    const SHARDS: u64 = 2;
    /// Per shard.
    const BUDGET: u64 = 8 << 20;
    /// Each client's frame, and how much of it it sends.
    const FRAME: usize = 512 << 10;
    const SENT: usize = 384 << 10;
    /// What the server may hold besides partial frames: each shard's pool
    /// of spare straddle buffers (up to 32 MiB; its reply-buffer pool stays
    /// small here) and its receive buffer ring (512 x 32 KiB), plus 32 MiB
    /// for allocator slack, connection state and the test's own memory.
    const OVERHEAD: u64 = SHARDS * (32 + 16) * MIB + 32 * MIB;

    // Each connection costs two descriptors here (client and server side).
    let fd_limit = ringcast::io::raise_nofile_limit()
        .map(|(_, now)| now as usize)
        .unwrap_or(1024);
    let want = env_or("HOSTILE_BUDGET_CONNS", 1000usize);
    let conns = want.min(fd_limit.saturating_sub(200) / 2);
    // Without the budget the server would hold every byte sent: more than
    // the bound asserted below, or the test could not tell.
    let bound = SHARDS * BUDGET + OVERHEAD;
    assert!(
        (conns * SENT) as u64 > bound + 64 * MIB,
        "{conns} connections (descriptor limit {fd_limit}) are too few to test the bound"
    );

    let server = spawn(builder(SHARDS as usize).max_partial_bytes(BUDGET as usize));
    let addr = server.local_addr();
    let mut stats = Client::connect(addr);
    let s0 = stats.stats();
    let (baseline_rss, full_before) = (rss_of(&s0), server_full_of(&s0));
    let received_before = server.totals().bytes_received;
    let big = echo_frame(FRAME);

    let started = Instant::now();
    let mut clients = Vec::with_capacity(conns);
    let (mut max_rss, mut max_partial) = (baseline_rss, 0);
    let mut write_errors = 0;
    for i in 0..conns {
        let mut c = Client::connect(addr);
        // A refused connection is read and dropped until we close it, so
        // the write completes; count a failure rather than panic on it.
        if c.stream.write_all(&big[..4 + SENT]).is_err() {
            write_errors += 1;
        }
        clients.push(c);
        if i % 50 == 49 {
            let s = stats.stats();
            max_rss = max_rss.max(rss_of(&s));
            max_partial = max_partial.max(partial_of(&s));
        }
    }
    let sent = (conns * (4 + SENT)) as u64;
    wait_until(
        Duration::from_secs(20),
        || {
            format!(
                "the server to read {sent} bytes (it read {})",
                server.totals().bytes_received - received_before
            )
        },
        || server.totals().bytes_received - received_before >= sent,
    );
    let sent_in = started.elapsed();
    // The refusals' error frames are queued as the bytes are read and sent
    // at the end of that loop turn: wait until they have all arrived.
    wait_until(
        Duration::from_secs(5),
        "an error frame on every connection the server refused",
        || {
            let refused = server_full_of(&stats.stats()) - full_before;
            let waiting = clients
                .iter()
                .enumerate()
                .filter(|(i, c)| frame_waiting(c, *i))
                .count();
            waiting as u64 == refused
        },
    );
    let s = stats.stats();
    let (rss_held, partial_held) = (rss_of(&s), partial_of(&s));
    max_rss = max_rss.max(rss_held);
    max_partial = max_partial.max(partial_held);
    let refused_by_server = server_full_of(&s) - full_before;

    // Which connections were refused: those with a frame waiting.
    let mut refused = Vec::new();
    let mut held = Vec::new();
    for (i, c) in clients.iter().enumerate() {
        if frame_waiting(c, i) {
            refused.push(i);
        } else {
            held.push(i);
        }
    }
    for &i in &refused {
        expect_budget_refusal(&mut clients[i], &format!("client {i}"));
    }
    let peak = vm_hwm();
    eprintln!(
        "{conns} connections x {} KiB of a {} KiB frame in {sent_in:?}, budget {} MiB x {SHARDS} \
         shards: {} held, {} refused (server_full); partial_frame_bytes {} KiB (max seen {} KiB); \
         RSS {} MiB baseline, {} MiB held, max sampled {} MiB, process peak (VmHWM) {} MiB; \
         {write_errors} write errors",
        SENT >> 10,
        FRAME >> 10,
        BUDGET / MIB,
        held.len(),
        refused.len(),
        partial_held >> 10,
        max_partial >> 10,
        baseline_rss / MIB,
        rss_held / MIB,
        max_rss / MIB,
        peak / MIB,
    );

    // (b) The connections over budget got the error (checked above) and
    // are exactly those the server counted; some were held.
    assert_eq!(refused.len() as u64, refused_by_server);
    assert!(!held.is_empty(), "the budget admitted no one");
    assert!(
        held.len() as u64 <= SHARDS * BUDGET / (4 + SENT) as u64,
        "{} held: more than the budget has room for",
        held.len()
    );
    // Every byte the held ones sent is buffered, and no more than the
    // budget (every partial frame here is far above 4 KiB, so none of them
    // is exempt).
    assert!(
        partial_held >= held.len() as u64 * (4 + SENT) as u64,
        "gauge {partial_held} for {} held frames",
        held.len()
    );
    assert!(partial_held <= SHARDS * BUDGET, "gauge {partial_held}");
    assert!(
        max_partial <= SHARDS * BUDGET + conns as u64 * SMALL,
        "gauge peaked at {max_partial}"
    );
    // (a) Memory: the budget plus fixed overhead, not what was sent.
    assert!(
        max_rss.saturating_sub(baseline_rss) <= bound,
        "RSS grew {} MiB (bound {} MiB)",
        (max_rss - baseline_rss) / MIB,
        bound / MIB
    );
    assert!(
        peak.saturating_sub(baseline_rss) <= bound,
        "peak RSS {} MiB over a {} MiB baseline (bound +{} MiB)",
        peak / MIB,
        baseline_rss / MIB,
        bound / MIB
    );

    // (c) Still serving: a fresh client and a long-lived one.
    let mut dog = Watchdog::new(addr);
    dog.check("a flood of partial frames");

    // (d) Everyone leaves: the accounting returns to zero, and a large
    // frame within the budget is accepted again.
    drop(clients);
    let last = RefCell::new(Value::Null);
    wait_until(
        Duration::from_secs(10),
        || {
            format!(
                "no partial frames and 2 clients after every client left: {}",
                short(&last.borrow())
            )
        },
        || {
            let s = stats.stats();
            let done = partial_of(&s) == 0 && u64_of(&s, "connected_clients") == 2;
            *last.borrow_mut() = s;
            done
        },
    );
    let mut late = Client::connect(addr);
    late.set_read_timeout(Duration::from_secs(10));
    late.send_raw(&big);
    let v = late.recv();
    assert_eq!(v["type"], "echo_response", "{}", short(&v));
    assert_eq!(v["content"].as_str().unwrap().len(), FRAME - 28);
    let after = stats.stats();
    assert_eq!(server_full_of(&after) - full_before, refused_by_server);
    eprintln!("after they closed: RSS {} MiB", rss_of(&after) / MIB);
}
