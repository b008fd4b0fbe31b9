//! Channels on real sockets: subscribe, publish and unsubscribe across
//! shards, per-sender order, exactly the subscribers (the publisher only if
//! subscribed), subscriptions dropped at disconnect, a slow subscriber cut
//! while the others keep receiving.

mod support;

use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;
use support::server::{builder, spawn};
use support::wait::wait_until;
use support::wire::{frame, is_timestamp, u64_of, Client};

const CLIENTS: usize = 16;
const PER_CHANNEL: u64 = 200;

/// Who subscribes to what: client 0 publishes to `a` and `b` and is itself
/// in `a`; client 1 publishes to `a`; 2–9 are in `a`, 6–13 in `b`; 14 and 15
/// in neither (they must receive nothing).
fn channels_of(me: usize) -> Vec<&'static str> {
    let mut v = Vec::new();
    if me == 0 || (2..=9).contains(&me) {
        v.push("a");
    }
    if (6..=13).contains(&me) {
        v.push("b");
    }
    v
}

fn subscribe(c: &mut Client, channel: &str) -> Value {
    let v = c.request(&json!({"type": "subscribe", "channel": channel, "id": channel}));
    assert_eq!(v["type"], "subscribed", "{v}");
    assert_eq!(v["channel"], channel);
    assert_eq!(v["id"], channel);
    v
}

#[test]
fn publishes_reach_exactly_the_subscribers_on_every_shard_in_order() {
    let server = spawn(builder(2));
    let addr = server.local_addr();
    let mut clients: Vec<Client> = (0..CLIENTS).map(|_| Client::connect(addr)).collect();
    let ids: Vec<String> = clients.iter().map(|c| c.client_id()).collect();
    for (me, c) in clients.iter_mut().enumerate() {
        for ch in channels_of(me) {
            subscribe(c, ch);
        }
    }
    let stats = clients[0].request(&json!({"type": "get_stats"}));
    let per_shard = &stats["connections_per_shard"];
    assert!(
        per_shard
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n.as_u64() > Some(0)),
        "SO_REUSEPORT put every client on one shard: {per_shard}"
    );
    assert_eq!(u64_of(&stats, "subscriptions"), 9 + 8, "{stats}");

    // Which (sender, channel) streams each client must see.
    let expect = |me: usize| -> Vec<(usize, &'static str)> {
        let mut v = Vec::new();
        for ch in channels_of(me) {
            v.push((0, ch));
            if ch == "a" {
                v.push((1, "a"));
            }
        }
        v
    };
    let threads: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(me, mut c)| {
            let ids = ids.clone();
            let streams = expect(me);
            std::thread::spawn(move || {
                let mut publishes = 0u64;
                if me < 2 {
                    let mut bytes = Vec::new();
                    for n in 0..PER_CHANNEL {
                        let targets: &[&str] = if me == 0 { &["a", "b"] } else { &["a"] };
                        for ch in targets {
                            bytes.extend(frame(&json!({
                                "type": "publish", "channel": ch,
                                "content": {"sender": me, "n": n}, "id": n,
                            })));
                            publishes += 1;
                        }
                    }
                    c.send_raw(&bytes);
                }
                let mut next: HashMap<(usize, String), u64> = HashMap::new();
                let want = streams.len() as u64 * PER_CHANNEL;
                let (mut got, mut acks) = (0u64, 0u64);
                while got < want || acks < publishes {
                    let v = c.recv();
                    match v["type"].as_str() {
                        Some("published") => {
                            let ch = v["channel"].as_str().unwrap();
                            // a: 2–9 and client 0; b: 6–13.
                            let subscribers = if ch == "a" { 9 } else { 8 };
                            assert_eq!(u64_of(&v, "recipients"), subscribers, "{v}");
                            assert!(is_timestamp(v["timestamp"].as_str().unwrap()));
                            acks += 1;
                        }
                        Some("channel_message") => {
                            assert!(v.get("id").is_none(), "{v}");
                            let ch = v["channel"].as_str().unwrap().to_string();
                            let s = v["content"]["sender"].as_u64().unwrap() as usize;
                            assert_eq!(v["from"], ids[s], "{v}");
                            assert!(
                                streams.contains(&(s, ch.as_str())),
                                "client {me} is not in {ch} but got {v}"
                            );
                            let e = next.entry((s, ch)).or_insert(0);
                            assert_eq!(v["content"]["n"], *e, "client {me}: out of order");
                            *e += 1;
                            got += 1;
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
    let s = clients[14].request(&json!({"type": "get_stats"}));
    assert_eq!(u64_of(&s, "publishes"), 3 * PER_CHANNEL, "{s}");
    assert_eq!(
        u64_of(&s, "channel_deliveries"),
        PER_CHANNEL * (9 + 8 + 9),
        "{s}"
    );
    assert_eq!(u64_of(&s, "broadcasts_delivered"), 0, "{s}");
    let channels = u64_of(&s, "channels");
    assert!(
        (2..=4).contains(&channels),
        "two channels on one or two shards: {s}"
    );
    assert_eq!(s["messages_by_type"]["subscribe"], 17, "{s}");
}

#[test]
fn unsubscribing_and_disconnecting_stop_deliveries() {
    let server = spawn(builder(2));
    let addr = server.local_addr();
    let mut publisher = Client::connect(addr);
    let mut stays = Client::connect(addr);
    let mut leaves = Client::connect(addr);
    let mut quits = Client::connect(addr);
    for c in [&mut stays, &mut leaves, &mut quits] {
        subscribe(c, "room");
    }
    subscribe(&mut quits, "other");
    let publish = |p: &mut Client, n: u64| {
        let v = p.request(&json!({"type": "publish", "channel": "room", "content": n}));
        assert_eq!(v["type"], "published", "{v}");
        u64_of(&v, "recipients")
    };
    assert_eq!(publish(&mut publisher, 0), 3);
    for c in [&mut stays, &mut leaves, &mut quits] {
        assert_eq!(c.recv()["content"], 0);
    }
    let v = leaves.request(&json!({"type": "unsubscribe", "channel": "room", "id": 5}));
    assert_eq!(
        v,
        json!({"type": "unsubscribed", "channel": "room", "subscriptions": 0, "id": 5})
    );
    // Leaving again is answered the same way, not an error.
    let v = leaves.request(&json!({"type": "unsubscribe", "channel": "room"}));
    assert_eq!(v["type"], "unsubscribed");
    drop(quits);
    wait_until(
        Duration::from_secs(5),
        "the closed client's two subscriptions to go",
        || {
            u64_of(
                &publisher.request(&json!({"type": "get_stats"})),
                "subscriptions",
            ) == 1
        },
    );
    assert_eq!(publish(&mut publisher, 1), 1);
    assert_eq!(stays.recv()["content"], 1);
    leaves.expect_silence(Duration::from_millis(200));
    // A client subscribed to the channel also still gets broadcasts.
    let v = publisher.request(&json!({"type": "broadcast", "content": "all"}));
    assert_eq!(u64_of(&v, "recipients"), 2);
    assert_eq!(stays.recv()["type"], "broadcast_message");
    assert_eq!(leaves.recv()["type"], "broadcast_message");
}

#[test]
fn bad_channel_requests_are_answered_and_the_connection_stays() {
    let server = spawn(builder(1).max_subscriptions(3));
    let mut c = Client::connect(server.local_addr());
    for (req, code) in [
        (
            json!({"type": "subscribe", "channel": "", "id": 1}),
            "invalid_channel",
        ),
        (
            json!({"type": "publish", "channel": "x".repeat(257), "content": 1, "id": 1}),
            "invalid_channel",
        ),
        (
            json!({"type": "subscribe", "channel": "bell\u{7}", "id": 1}),
            "invalid_channel",
        ),
        (
            json!({"type": "subscribe", "channel": ["a"], "id": 1}),
            "invalid_field",
        ),
        (
            json!({"type": "publish", "channel": "a", "id": 1}),
            "invalid_field",
        ),
    ] {
        let v = c.request(&req);
        assert_eq!(v["code"], code, "{req} → {v}");
        assert_eq!(v["id"], 1);
    }
    for ch in ["1", "2", "3"] {
        subscribe(&mut c, ch);
    }
    c.send(&json!({"type": "subscribe", "channel": "4", "id": "four"}));
    let v = c.expect_error("too_many_subscriptions");
    assert_eq!(v["id"], "four");
    let v = c.request(&json!({"type": "get_stats"}));
    assert_eq!(v["errors_by_code"]["invalid_channel"], 3, "{v}");
    assert_eq!(v["errors_by_code"]["invalid_field"], 2, "{v}");
    assert_eq!(v["errors_by_code"]["too_many_subscriptions"], 1, "{v}");
    assert_eq!(u64_of(&v, "subscriptions"), 3);
}

#[test]
fn a_slow_subscriber_is_cut_while_the_others_keep_receiving() {
    const CONTENT: usize = 16 << 10;
    let server = spawn(builder(2).max_pending_bytes(512 << 10));
    let addr = server.local_addr();
    let mut slow = Client::connect_small_rcvbuf(addr, 4096);
    subscribe(&mut slow, "feed");
    // The publisher is a subscriber too, and reads its own message back
    // before the next: it paces itself on a healthy reader.
    let mut publisher = Client::connect(addr);
    subscribe(&mut publisher, "feed");
    let text = "x".repeat(CONTENT);
    let mut cut = false;
    // 20 MiB at most: far past the slow socket's buffers plus 512 KiB.
    for n in 0..1280u64 {
        let v = publisher
            .request(&json!({"type": "publish", "channel": "feed", "content": text, "id": n}));
        assert_eq!(v["type"], "published", "{v}");
        let m = publisher.recv();
        assert_eq!(m["type"], "channel_message");
        assert!(
            m["content"] == text.as_str(),
            "the content came back changed"
        );
        if u64_of(&v, "recipients") == 1 {
            cut = true;
            break;
        }
    }
    assert!(cut, "the slow subscriber was never cut");
    let frames = slow.read_until_closed(Duration::from_secs(10));
    let last = frames.last().expect("frames before the close");
    assert_eq!(last["code"], "slow_consumer", "{last}");
    let v = publisher.request(&json!({"type": "get_stats"}));
    assert_eq!(u64_of(&v, "slow_consumer_disconnects"), 1, "{v}");
    assert_eq!(u64_of(&v, "subscriptions"), 1, "{v}");
}
