//! Channel history on real sockets, one node: a subscriber cut by a reset
//! while a publisher floods resumes with `recover` and gets every
//! publication exactly once, in order; recovery is refused beyond
//! `history_size`, after the TTL and after a restart (a new epoch); bad
//! input is answered and the connection kept. Run on each backend with
//! `RINGCAST_IO_BACKEND`.

mod support;

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::server::{builder, spawn};
use support::wire::{u64_of, Client};

const FLOOD: u64 = 10_000;

fn subscribe(c: &mut Client, channel: &str, recover: Option<(u64, &str)>) -> Value {
    let mut req = json!({"type": "subscribe", "channel": channel, "id": "s"});
    if let Some((offset, epoch)) = recover {
        req["recover"] = json!({"offset": offset, "epoch": epoch});
    }
    let v = c.request(&req);
    assert_eq!(v["type"], "subscribed", "{v}");
    v
}

/// Publishes `n` numbered messages (content 1..=n) and reads the replies.
fn publish_numbered(c: &mut Client, channel: &str, from: u64, to: u64) -> Value {
    let mut last = Value::Null;
    for n in from..=to {
        last = c.request(&json!({"type": "publish", "channel": channel, "content": n}));
        assert_eq!(last["type"], "published", "{last}");
    }
    last
}

/// The next frame is the answer to a ping: nothing else was queued.
fn nothing_more(c: &mut Client) {
    let v = c.request(&json!({"type": "ping", "id": "end"}));
    assert_eq!(
        (v["type"].clone(), v["id"].clone()),
        (json!("pong"), json!("end")),
        "{v}"
    );
}

/// Cuts the connection with a reset (SO_LINGER 0), as a network failure
/// would: whatever the server had queued for it is lost.
fn cut(c: Client) {
    socket2::SockRef::from(&c.stream)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(c);
}

fn content_of(v: &Value) -> u64 {
    assert_eq!(v["type"], "channel_message", "{v}");
    let n = u64_of(v, "content");
    assert_eq!(
        u64_of(v, "offset"),
        n,
        "one publisher from a fresh channel: offset = number"
    );
    n
}

#[test]
fn a_subscriber_reset_mid_flood_recovers_every_publication_once_in_order() {
    let server = spawn(
        builder(2)
            .history_size(FLOOD as usize)
            .history_recover_limit(FLOOD),
    );
    let addr = server.local_addr();
    let mut sub = Client::connect(addr);
    let first = subscribe(&mut sub, "feed", None);
    assert_eq!(first["offset"], 0);
    let epoch = first["epoch"].as_str().expect("an epoch").to_owned();

    // The publisher writes as fast as it can; its replies are read by a
    // thread of their own so neither side waits on the other.
    let publisher = Client::connect(addr);
    let flood = support::wire::Flood::start(publisher, "feed", FLOOD);

    // Read part of the flood, then reset the connection mid-stream.
    let mut got = Vec::new();
    while got.len() < 1500 {
        got.push(content_of(&sub.recv()));
    }
    cut(sub);
    let last = *got.last().unwrap();

    let mut again = Client::connect(addr);
    let v = subscribe(&mut again, "feed", Some((last, &epoch)));
    assert_eq!(v["recovered"], true, "{v}");
    assert_eq!(v["epoch"], json!(epoch));
    let at = u64_of(&v, "offset");
    assert!(at >= last, "{v}");
    while got.len() < FLOOD as usize {
        got.push(content_of(&again.recv()));
    }
    let want: Vec<u64> = (1..=FLOOD).collect();
    assert!(
        got == want,
        "not every publication once in order (first divergence at {:?})",
        got.iter().zip(&want).position(|(a, b)| a != b)
    );
    flood.finish();
    nothing_more(&mut again);
}

#[test]
fn recovery_beyond_history_size_is_refused_and_within_it_replays() {
    let server = spawn(builder(2).history_size(5));
    let addr = server.local_addr();
    let mut p = Client::connect(addr);
    let last = publish_numbered(&mut p, "h", 1, 10);
    assert_eq!(last["offset"], 10);
    let epoch = last["epoch"].as_str().unwrap().to_owned();
    let mut c = Client::connect(addr);
    // 1..5 are gone: from 4 needs 5.
    let v = subscribe(&mut c, "h", Some((4, &epoch)));
    assert_eq!(
        (v["recovered"].clone(), v["offset"].clone()),
        (json!(false), json!(10))
    );
    nothing_more(&mut c);
    c.request(&json!({"type": "unsubscribe", "channel": "h"}));
    let v = subscribe(&mut c, "h", Some((5, &epoch)));
    assert_eq!(v["recovered"], true);
    let replay: Vec<u64> = (0..5).map(|_| content_of(&c.recv())).collect();
    assert_eq!(replay, [6, 7, 8, 9, 10]);
    nothing_more(&mut c);
    // And live after the replay.
    publish_numbered(&mut p, "h", 11, 11);
    assert_eq!(content_of(&c.recv()), 11);

    let h = &c.request(&json!({"type": "get_stats"}))["history"];
    assert_eq!(
        (
            h["channels"].clone(),
            h["publications"].clone(),
            h["evicted"].clone()
        ),
        (json!(1), json!(5), json!(6)),
        "{h}"
    );
    assert!(u64_of(h, "bytes") > 5 * 100, "{h}");
    let r = c.request(&json!({"type": "history", "channel": "h", "since": 8}));
    let offsets: Vec<u64> = r["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| u64_of(p, "offset"))
        .collect();
    assert_eq!(offsets, [9, 10, 11], "{r}");
    assert_eq!(r["publications"][0]["content"], 9);
}

#[test]
fn recovery_after_the_ttl_is_refused() {
    let server = spawn(builder(1).history_size(100).history_ttl_secs(1));
    let addr = server.local_addr();
    let mut p = Client::connect(addr);
    let last = publish_numbered(&mut p, "h", 1, 3);
    let epoch = last["epoch"].as_str().unwrap().to_owned();
    let mut c = Client::connect(addr);
    let v = subscribe(&mut c, "h", Some((1, &epoch)));
    assert_eq!(v["recovered"], true, "within the TTL");
    assert_eq!([content_of(&c.recv()), content_of(&c.recv())], [2, 3]);
    c.request(&json!({"type": "unsubscribe", "channel": "h"}));
    std::thread::sleep(Duration::from_millis(1300));
    let v = subscribe(&mut c, "h", Some((1, &epoch)));
    assert_eq!(v["recovered"], false, "{v}");
    assert_ne!(v["epoch"], json!(epoch), "the log was dropped: a new epoch");
    nothing_more(&mut c);
}

#[test]
fn recovery_after_a_restart_is_refused_with_a_new_epoch() {
    let server = spawn(builder(1).history_size(100));
    let mut p = Client::connect(server.local_addr());
    let before = publish_numbered(&mut p, "h", 1, 3);
    drop(p);
    drop(server);
    let server = spawn(builder(1).history_size(100));
    let mut p = Client::connect(server.local_addr());
    let after = publish_numbered(&mut p, "h", 1, 3);
    assert_eq!(after["offset"], 3);
    assert_ne!(after["epoch"], before["epoch"], "a restart is a new epoch");
    let v = subscribe(&mut p, "h", Some((1, before["epoch"].as_str().unwrap())));
    assert_eq!(v["recovered"], false);
    nothing_more(&mut p);
}

#[test]
fn bad_history_input_gets_clear_errors_and_the_connection_stays() {
    let server = spawn(builder(1).history_size(10));
    let mut c = Client::connect(server.local_addr());
    let bad = [
        json!({"type": "subscribe", "channel": "h", "recover": {"epoch": "e"}}),
        json!({"type": "subscribe", "channel": "h", "recover": {"offset": null, "epoch": "e"}}),
        json!({"type": "subscribe", "channel": "h", "recover": {"offset": -3, "epoch": "e"}}),
        json!({"type": "subscribe", "channel": "h", "recover": {"offset": 1e40, "epoch": "e"}}),
        json!({"type": "subscribe", "channel": "h", "recover": {"offset": u64::MAX, "epoch": "e"}}),
        json!({"type": "subscribe", "channel": "h", "recover": {"offset": 1, "epoch": ["e"]}}),
        json!({"type": "history", "channel": "h", "limit": 0}),
        json!({"type": "history", "channel": "h", "limit": 5000}),
        json!({"type": "history", "channel": "h", "since": "1"}),
    ];
    for (i, b) in bad.iter().enumerate() {
        let mut b = b.clone();
        b["id"] = json!(i);
        let v = c.request(&b);
        assert_eq!(
            (v["type"].clone(), v["code"].clone(), v["id"].clone()),
            (json!("error"), json!("invalid_field"), json!(i)),
            "{b} -> {v}"
        );
        assert!(
            v["message"].as_str().is_some_and(|m| m.contains("offset")
                || m.contains("epoch")
                || m.contains("limit")
                || m.contains("since")),
            "{v}"
        );
    }
    nothing_more(&mut c);
    let stats = c.request(&json!({"type": "get_stats"}));
    assert_eq!(stats["subscriptions"], 0, "no bad subscribe took effect");
    let started = Instant::now();
    let server = spawn(builder(1));
    let mut c = Client::connect(server.local_addr());
    let v = c.request(&json!({"type": "history", "channel": "h", "id": 1}));
    assert_eq!(
        (v["code"].clone(), v["id"].clone()),
        (json!("no_history"), json!(1)),
        "{v}"
    );
    nothing_more(&mut c);
    assert!(started.elapsed() < Duration::from_secs(10));
}
