//! Pattern subscriptions on real sockets: across the shards of one server
//! (each matching client gets each publication once, naming the concrete
//! channel, in per-publisher order; the others get nothing), and across
//! three `ringcast server` processes joined through a real redis-server.

mod support;

use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;
use support::hostile::serial;
use support::redis::{available, Redis};
use support::server::{builder, spawn, CliServer};
use support::wait::wait_until;
use support::wire::{frame, u64_of, Client};

const PER_CHANNEL: u64 = 100;
/// What the publishers publish to.
const CHANNELS: [&str; 4] = ["room.a", "room.b.c", "lobby.a", "room.b"];

/// Who subscribes to what (clients 0 and 1 publish, subscribed to nothing):
/// overlapping channels and patterns, and two that match nothing sent.
fn subscriptions_of(me: usize) -> &'static [&'static str] {
    match me {
        2 => &["room.*"],
        3 => &["room.>", "room.a", "room.*"],
        4 => &["*.a"],
        5 => &[">"],
        6 => &["room.b.*", "*.b.c"],
        7 => &["lobby.b", "*.*.*.*"],
        _ => &[],
    }
}

fn matches(pattern: &str, channel: &str) -> bool {
    let (p, c): (Vec<&str>, Vec<&str>) =
        (pattern.split('.').collect(), channel.split('.').collect());
    if p.last() == Some(&">") {
        return c.len() >= p.len()
            && p[..p.len() - 1]
                .iter()
                .zip(&c)
                .all(|(p, c)| *p == "*" || p == c);
    }
    p.len() == c.len() && p.iter().zip(&c).all(|(p, c)| *p == "*" || p == c)
}

fn subscribe(c: &mut Client, ch: &str) -> Value {
    let v = c.request(&json!({"type": "subscribe", "channel": ch, "id": ch}));
    assert_eq!(v["type"], "subscribed", "{v}");
    assert_eq!(v["channel"], ch);
    v
}

/// Reads `want` channel messages (skipping probes); each (publisher,
/// channel) stream must come in order, with no repeat; then nothing more.
fn collect(c: &mut Client, want: u64, me: &str) -> HashMap<(u64, String), u64> {
    let mut next: HashMap<(u64, String), u64> = HashMap::new();
    let mut got = 0;
    while got < want {
        let v = c.recv();
        assert_eq!(v["type"], "channel_message", "{me}: {v}");
        if v["content"]["probe"] == true {
            continue;
        }
        got += 1;
        let ch = v["channel"].as_str().expect("a channel").to_owned();
        assert!(!ch.contains('*') && !ch.contains('>'), "{me}: {v}");
        assert_eq!(
            v["content"]["ch"],
            ch.as_str(),
            "{me}: the concrete channel: {v}"
        );
        let from = v["content"]["from"].as_u64().expect("from");
        let e = next.entry((from, ch)).or_insert(0);
        assert_eq!(v["content"]["n"], *e, "{me}: out of order or twice: {v}");
        *e += 1;
    }
    c.expect_silence(Duration::from_millis(300));
    next
}

#[test]
fn patterns_across_shards_deliver_each_publication_once_in_order() {
    let server = spawn(builder(2));
    let addr = server.local_addr();
    let mut clients: Vec<Client> = (0..10).map(|_| Client::connect(addr)).collect();
    for (me, c) in clients.iter_mut().enumerate() {
        for (i, p) in subscriptions_of(me).iter().enumerate() {
            assert_eq!(subscribe(c, p)["subscriptions"], i as u64 + 1);
        }
    }
    let stats = clients[0].request(&json!({"type": "get_stats"}));
    let per_shard = stats["connections_per_shard"].as_array().unwrap().clone();
    assert!(
        per_shard.iter().all(|n| n.as_u64() > Some(0)),
        "SO_REUSEPORT put every client on one shard: {per_shard:?}"
    );
    let held: usize = (0..10).map(|me| subscriptions_of(me).len()).sum();
    assert_eq!(u64_of(&stats, "subscriptions"), held as u64, "{stats}");

    let mut publishers: Vec<Client> = clients.drain(..2).collect();
    let threads: Vec<_> = publishers
        .drain(..)
        .enumerate()
        .map(|(from, mut p)| {
            std::thread::spawn(move || {
                let mut bytes = Vec::new();
                for n in 0..PER_CHANNEL {
                    for ch in CHANNELS {
                        let content = json!({"from": from, "n": n, "ch": ch});
                        bytes.extend(frame(
                            &json!({"type": "publish", "channel": ch, "content": content}),
                        ));
                    }
                }
                p.send_raw(&bytes);
                for _ in 0..PER_CHANNEL * CHANNELS.len() as u64 {
                    assert_eq!(p.recv()["type"], "published");
                }
                p
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap().expect_silence(Duration::from_millis(100));
    }
    for (i, c) in clients.iter_mut().enumerate() {
        let me = i + 2;
        let subs = subscriptions_of(me);
        let mine: Vec<&str> = CHANNELS
            .iter()
            .copied()
            .filter(|ch| subs.iter().any(|p| matches(p, ch)))
            .collect();
        let seen = collect(
            c,
            2 * PER_CHANNEL * mine.len() as u64,
            &format!("client {me}"),
        );
        let mut streams: Vec<(u64, String)> = seen.into_keys().collect();
        streams.sort();
        let mut want: Vec<(u64, String)> = (0..2)
            .flat_map(|f| mine.iter().map(move |ch| (f, ch.to_string())))
            .collect();
        want.sort();
        assert_eq!(streams, want, "client {me}");
    }
    // The tests' `matches` is the definition: the cases above mean this.
    assert!(matches("room.>", "room.b.c") && !matches("room.*", "room.b.c"));
    assert!(!matches("*.*.*.*", "room.b.c") && matches("*.b.c", "room.b.c"));
}

#[test]
fn publishing_to_a_pattern_and_bad_patterns_are_refused_and_unsubscribe_works() {
    let server = spawn(builder(2));
    let addr = server.local_addr();
    let mut c = Client::connect(addr);
    let mut p = Client::connect(addr);
    for (req, code) in [
        (
            json!({"type": "publish", "channel": "a.*", "content": 1}),
            "invalid_channel",
        ),
        (
            json!({"type": "subscribe", "channel": ">.a"}),
            "invalid_channel",
        ),
        (
            json!({"type": "subscribe", "channel": "a.b*"}),
            "invalid_channel",
        ),
        (
            json!({"type": "subscribe", "channel": "a.*", "recover": {"offset": 0, "epoch": "x"}}),
            "invalid_field",
        ),
    ] {
        let v = c.request(&req);
        assert_eq!(v["type"], "error", "{req}: {v}");
        assert_eq!(v["code"], code, "{req}: {v}");
    }
    subscribe(&mut c, "a.*");
    let v = p.request(&json!({"type": "publish", "channel": "a.b", "content": 1}));
    assert_eq!(u64_of(&v, "recipients"), 1, "{v}");
    assert_eq!(c.recv()["channel"], "a.b");
    let v = c.request(&json!({"type": "unsubscribe", "channel": "a.*"}));
    assert_eq!(v["subscriptions"], 0);
    let v = p.request(&json!({"type": "publish", "channel": "a.b", "content": 2}));
    assert_eq!(u64_of(&v, "recipients"), 0, "{v}");
    c.expect_silence(Duration::from_millis(200));
}

#[test]
fn a_pattern_subscriber_gets_publications_from_other_nodes_once_in_order() {
    if !available("a_pattern_subscriber_gets_publications_from_other_nodes_once_in_order") {
        return;
    }
    let _one_at_a_time = serial();
    let redis = Redis::start();
    let url = redis.url();
    let nodes: Vec<CliServer> = (0..3)
        .map(|_| CliServer::start(&["--backplane", url.as_str()], &[]))
        .collect();
    let mut sub = Client::connect(nodes[2].addr);
    // Overlapping: each publication matches both, and comes once.
    subscribe(&mut sub, "room.*");
    subscribe(&mut sub, "room.>");
    let mut pubs: Vec<Client> = nodes[..2].iter().map(|n| Client::connect(n.addr)).collect();
    // The other nodes learn C's patterns from its heartbeat: counted in
    // `recipients`, one per matching subscription there.
    for p in pubs.iter_mut() {
        wait_until(
            Duration::from_secs(10),
            "C's patterns in A's and B's count",
            || {
                let v = p.request(&json!({"type": "publish", "channel": "probe.x", "content": 0}));
                assert_eq!(u64_of(&v, "recipients"), 0, "{v}");
                let v = p.request(&json!({"type": "publish", "channel": "room.probe", "content": {"probe": true}}));
                u64_of(&v, "recipients") == 2
            },
        );
    }
    let threads: Vec<_> = pubs
        .into_iter()
        .enumerate()
        .map(|(from, mut p)| {
            std::thread::spawn(move || {
                let mut bytes = Vec::new();
                for n in 0..PER_CHANNEL {
                    for ch in ["room.1", "room.2", "other.1"] {
                        let content = json!({"from": from, "n": n, "ch": ch});
                        bytes.extend(frame(
                            &json!({"type": "publish", "channel": ch, "content": content}),
                        ));
                    }
                }
                p.send_raw(&bytes);
                for _ in 0..3 * PER_CHANNEL {
                    assert_eq!(p.recv()["type"], "published");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let seen = collect(&mut sub, 2 * 2 * PER_CHANNEL, "C");
    let mut streams: Vec<(u64, String)> = seen.into_keys().collect();
    streams.sort();
    assert_eq!(
        streams,
        [
            (0, "room.1".to_string()),
            (0, "room.2".to_string()),
            (1, "room.1".to_string()),
            (1, "room.2".to_string())
        ]
    );
}
