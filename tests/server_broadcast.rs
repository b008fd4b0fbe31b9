//! Broadcast across shards (both wake-up modes), per-sender ordering, and a
//! slow consumer cut while everyone else receives everything.

mod support;

use ringcast::server::WakeMode;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;
use support::pacing;
use support::server::{builder, spawn};
use support::wait::wait_until;
use support::wire::{frame, is_timestamp, u64_of, Client, READ_TIMEOUT};

const CLIENTS: usize = 16;
const PER_SENDER: u64 = 200;

/// 16 clients over 2 shards; clients 0 and 1 each broadcast 200 numbered
/// messages; everyone else receives both sequences, each in order. Returns
/// the server's cross-shard wake-ups by path ([msg_ring, eventfd]).
fn cross_shard_broadcast(wake: WakeMode) -> ([u64; 2], String) {
    let server = spawn(builder(2).wake(wake));
    let addr = server.local_addr();
    let mut clients = Client::connect_many(addr, CLIENTS);
    let ids: Vec<String> = clients.iter().map(|c| c.client_id()).collect();

    // Every client registered, on both shards.
    let mut stats = Value::Null;
    wait_until(
        Duration::from_secs(3),
        format!("{CLIENTS} connected clients"),
        || {
            stats = clients[0].stats();
            u64_of(&stats, "connected_clients") == CLIENTS as u64
        },
    );
    let per_shard: Vec<u64> = stats["connections_per_shard"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_u64().unwrap())
        .collect();
    assert_eq!(per_shard.len(), 2, "{stats}");
    assert!(
        per_shard.iter().all(|&n| n > 0),
        "SO_REUSEPORT put every client on one shard: {per_shard:?}"
    );

    let threads: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(me, mut c)| {
            let ids = ids.clone();
            std::thread::spawn(move || {
                let sender = me < 2;
                if sender {
                    let mut bytes = Vec::new();
                    for n in 0..PER_SENDER {
                        bytes.extend(frame(&json!({
                            "type": "broadcast",
                            "content": {"sender": me, "n": n},
                            "id": n,
                        })));
                    }
                    c.send_raw(&bytes);
                }
                // Senders get 200 broadcast_sent and the other sender's 200
                // messages; everyone else both senders' messages.
                let mut next: HashMap<String, u64> = HashMap::new();
                let mut next_ack = 0u64;
                let want_msgs = if sender { PER_SENDER } else { 2 * PER_SENDER };
                let mut msgs = 0u64;
                while msgs < want_msgs || (sender && next_ack < PER_SENDER) {
                    let v = c.recv();
                    match v["type"].as_str() {
                        Some("broadcast_sent") => {
                            assert!(sender, "client {me} got {v}");
                            assert_eq!(v["id"], next_ack, "acks out of order");
                            assert_eq!(u64_of(&v, "recipients"), CLIENTS as u64 - 1, "{v}");
                            next_ack += 1;
                        }
                        Some("broadcast_message") => {
                            assert!(v.get("id").is_none(), "{v}");
                            let from = v["from"].as_str().unwrap().to_string();
                            let s = v["content"]["sender"].as_u64().unwrap() as usize;
                            assert_ne!(s, me, "client {me} received its own broadcast");
                            assert_eq!(from, ids[s], "wrong from in {v}");
                            assert!(is_timestamp(v["timestamp"].as_str().unwrap()));
                            let n = v["content"]["n"].as_u64().unwrap();
                            let e = next.entry(from).or_insert(0);
                            assert_eq!(n, *e, "client {me}: sender {s} out of order");
                            *e += 1;
                            msgs += 1;
                        }
                        _ => panic!("client {me}: unexpected {v}"),
                    }
                }
                c.expect_silence(Duration::from_millis(100));
                c
            })
        })
        .collect();
    let mut clients: Vec<Client> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let s = clients[5].stats();
    assert_eq!(
        u64_of(&s, "broadcasts_delivered"),
        2 * PER_SENDER * (CLIENTS as u64 - 1),
        "{s}"
    );
    let backend = s["io_backend"].as_str().unwrap().to_string();
    (server.totals().wakeups, backend)
}

/// MSG_RING asked for: on io_uring the other shard is woken through its
/// ring; on epoll (no rings) the eventfd fallback carries every wake-up.
#[test]
fn broadcast_reaches_all_shards_in_order_msg_ring() {
    let ([ring, eventfd], backend) = cross_shard_broadcast(WakeMode::MsgRing);
    match backend.as_str() {
        "io-uring" => {
            assert!(
                ring > 0,
                "no MSG_RING wake-up on io_uring ({eventfd} by eventfd)"
            );
            assert_eq!(eventfd, 0, "io_uring fell back to the eventfd");
        }
        _ => assert!(
            ring == 0 && eventfd > 0,
            "{backend}: {ring} ring, {eventfd} eventfd"
        ),
    }
}

#[test]
fn broadcast_reaches_all_shards_in_order_eventfd() {
    let ([ring, eventfd], _) = cross_shard_broadcast(WakeMode::Eventfd);
    assert!(ring == 0 && eventfd > 0, "{ring} ring, {eventfd} eventfd");
}

#[test]
fn slow_consumer_is_cut_while_others_receive_everything() {
    const READERS: usize = 3;
    /// Upper bound on broadcasts (20 MiB): far more than the kernel buffers
    /// of the slow connection plus max_pending_bytes.
    const MAX: u64 = 20_000;
    /// Broadcasts sent after the cut, to show the others keep receiving.
    const AFTER_CUT: u64 = 500;
    const WINDOW: u64 = 32;
    let server = spawn(builder(2).max_pending_bytes(256 << 10));
    let addr = server.local_addr();
    let mut sender = Client::connect(addr);
    // The slow one advertises a tiny window and never reads (until the end).
    let (mut slow, readers) =
        pacing::connect_audience(addr, &mut sender, READERS, Duration::from_secs(3));
    let sender_id = sender.client_id();

    // Each reader's progress: the sender never gets more than READ_AHEAD
    // broadcasts ahead of the slowest reader, so a reader thread that the
    // (busy, 2-core) machine deschedules for a while is not itself cut as a
    // slow consumer; only the one that never reads falls behind.
    const READ_AHEAD: u64 = 64;
    let progress = pacing::ReaderProgress::new(READERS);
    let reader_threads =
        pacing::spawn_ordered_readers(readers, &sender_id, 1024, READ_TIMEOUT, &progress);

    // Windowed sending: at most WINDOW broadcasts unacknowledged, so a
    // reader that keeps up never has much pending. Keep going until the
    // slow consumer is cut, then a little longer.
    let body = "b".repeat(1024 - 8);
    let mut acked = 0;
    let mut end = MAX;
    let mut n = 0;
    while n < end {
        sender.send(&json!({"type": "broadcast", "content": format!("{n:08}{body}"), "id": n}));
        n += 1;
        while n - acked > WINDOW {
            let v = sender.recv();
            assert_eq!(v["type"], "broadcast_sent", "{v}");
            assert_eq!(v["id"], acked);
            acked += 1;
        }
        progress.wait_within(n, READ_AHEAD, Duration::from_secs(10));
        if end == MAX && n % 64 == 0 && server.totals().slow_consumer_disconnects >= 1 {
            end = n + AFTER_CUT;
        }
    }
    assert!(
        end < MAX,
        "no slow consumer cut after {MAX} broadcasts of 1 KiB"
    );
    sender.send(&json!({"type": "broadcast", "content": "END", "id": "end"}));
    while acked < end {
        let v = sender.recv();
        assert_eq!(v["id"], acked, "{v}");
        acked += 1;
    }
    assert_eq!(sender.recv()["id"], "end");
    let mut readers = Vec::new();
    for t in reader_threads {
        let (mut r, got) = t.join().unwrap();
        assert_eq!(got, end, "a reader missed broadcasts");
        r.expect_silence(Duration::from_millis(50));
        readers.push(r);
    }

    let stats = sender.stats();
    assert_eq!(u64_of(&stats, "slow_consumer_disconnects"), 1, "{stats}");
    assert_eq!(stats["errors_by_code"]["slow_consumer"], 1, "{stats}");
    // The readers are still connected, the slow one is not.
    assert_eq!(u64_of(&stats, "connected_clients"), READERS as u64 + 1);
    // The slow client now reads: an in-order prefix of the broadcasts,
    // possibly the slow_consumer error, then the connection ends.
    let frames = slow.read_until_closed(Duration::from_secs(5));
    let mut got = 0u64;
    let mut saw_error = false;
    for v in &frames {
        assert!(!saw_error, "frames after the error: {v}");
        match v["type"].as_str() {
            Some("broadcast_message") => {
                assert_eq!(&v["content"].as_str().unwrap()[..8], format!("{got:08}"));
                got += 1;
            }
            Some("error") => {
                assert_eq!(v["code"], "slow_consumer", "{v}");
                saw_error = true;
            }
            _ => panic!("unexpected {v}"),
        }
    }
    assert!(got < end, "the slow client got everything ({got})");
    eprintln!(
        "slow consumer cut after ~{} broadcasts; it received {got}, error frame: {saw_error}",
        end - AFTER_CUT
    );
    for r in &mut readers {
        assert_eq!(r.request(&json!({"type": "ping"}))["type"], "pong");
    }
}

/// Many readers, 100 a shard, so each waits up to 25 loop turns for its
/// round-robin send while the publisher goes on and broadcasts are
/// gathered into runs: every reader gets every broadcast, in order, nobody
/// is cut, and the publisher is never left paused (the test would hang on
/// its acknowledgements). (Readers stay within 32 broadcasts, 128 KiB, of
/// the publisher: a reader thread that 200 others keep off the CPU is not a
/// slow consumer here; that bound also means the fan-out pause need not
/// fire, so this guards delivery and resumption, not the pause threshold.)
#[test]
fn fanout_to_many_waiting_readers_loses_nothing_and_never_sticks() {
    const READERS: usize = 200;
    const N: u64 = 400;
    const BODY: usize = 4 << 10;
    const WINDOW: u64 = 8;
    const READ_AHEAD: u64 = 32;
    let server = spawn(builder(2).max_pending_bytes(256 << 10));
    let addr = server.local_addr();
    let mut sender = Client::connect(addr);
    let readers = Client::connect_many(addr, READERS);
    sender.wait_connected(READERS as u64 + 1, Duration::from_secs(5));
    let sender_id = sender.client_id();
    let progress = pacing::ReaderProgress::new(READERS);
    let threads = pacing::spawn_ordered_readers(readers, &sender_id, BODY, READ_TIMEOUT, &progress);
    let body = "b".repeat(BODY - 8);
    let mut acked = 0;
    for n in 0..N {
        sender.send(&json!({"type": "broadcast", "content": format!("{n:08}{body}"), "id": n}));
        while n + 1 - acked > WINDOW {
            let v = sender.recv();
            assert_eq!(v["type"], "broadcast_sent", "{v}");
            acked += 1;
        }
        progress.wait_within(n + 1, READ_AHEAD, Duration::from_secs(20));
    }
    sender.send(&json!({"type": "broadcast", "content": "END", "id": "end"}));
    while acked < N {
        assert_eq!(sender.recv()["id"], acked);
        acked += 1;
    }
    assert_eq!(sender.recv()["id"], "end");
    let mut kept = Vec::new();
    for t in threads {
        let (r, got) = t.join().unwrap();
        assert_eq!(got, N, "a reader missed broadcasts");
        kept.push(r);
    }
    let stats = sender.stats();
    assert_eq!(u64_of(&stats, "slow_consumer_disconnects"), 0, "{stats}");
    assert_eq!(u64_of(&stats, "connected_clients"), READERS as u64 + 1);
}
