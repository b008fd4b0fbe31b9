//! Channel history across nodes, held in a real redis-server: offsets
//! every node agrees on, recovery on a node other than the one a client
//! left, a node that joins late serving what was published before it
//! came, and a Redis that lost its data telling clients so (a new epoch),
//! never a silent gap.

mod support;

use serde_json::{json, Value};
use std::time::Duration;
use support::hostile::serial;
use support::redis::{available, Redis};
use support::server::CliServer;
use support::wait::wait_until;
use support::wire::{u64_of, Client};

const FLOOD: u64 = 10_000;
const MEMBERSHIP: Duration = Duration::from_secs(10);

fn node(redis: &Redis, size: u64) -> CliServer {
    let url = redis.url();
    let size = size.to_string();
    CliServer::start(
        &[
            "--backplane",
            url.as_str(),
            "--history-size",
            &size,
            "--history-recover-limit",
            &size,
        ],
        &[],
    )
}

fn subscribe(c: &mut Client, channel: &str, recover: Option<(u64, &str)>) -> Value {
    let mut req = json!({"type": "subscribe", "channel": channel, "id": "s"});
    if let Some((offset, epoch)) = recover {
        req["recover"] = json!({"offset": offset, "epoch": epoch});
    }
    let v = c.request(&req);
    assert_eq!(v["type"], "subscribed", "{v}");
    v
}

/// The next channel message, with its (offset, epoch, content).
fn next_message(c: &mut Client) -> (u64, String, Value) {
    let v = c.recv();
    assert_eq!(v["type"], "channel_message", "{v}");
    (
        u64_of(&v, "offset"),
        v["epoch"].as_str().expect("an epoch").to_owned(),
        v["content"].clone(),
    )
}

fn cut(c: Client) {
    socket2::SockRef::from(&c.stream)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(c);
}

fn nodes_seen(c: &mut Client) -> u64 {
    let s = c.request(&json!({"type": "get_stats"}));
    u64_of(&s["cluster"], "nodes")
}

#[test]
fn a_subscriber_reset_mid_flood_recovers_everything_on_another_node() {
    if !available("a_subscriber_reset_mid_flood_recovers_everything_on_another_node") {
        return;
    }
    let _one_at_a_time = serial();
    let redis = Redis::start();
    let nodes: Vec<CliServer> = (0..3).map(|_| node(&redis, FLOOD)).collect();
    let mut sub = Client::connect(nodes[0].addr);
    let first = subscribe(&mut sub, "feed", None);
    assert_eq!(first["offset"], 0, "{first}");
    let epoch = first["epoch"].as_str().expect("an epoch").to_owned();

    // The publisher, on another node, writes as fast as it can; its
    // replies are counted by a thread of their own.
    let mut publisher = Client::connect(nodes[1].addr);
    wait_until(MEMBERSHIP, "3 nodes", || nodes_seen(&mut publisher) == 3);
    let flood = support::wire::Flood::start(publisher, "feed", FLOOD);

    let mut got = Vec::new();
    while got.len() < 1500 {
        let (offset, e, content) = next_message(&mut sub);
        assert_eq!((offset, e.as_str()), (content.as_u64().unwrap(), &*epoch));
        got.push(offset);
    }
    cut(sub);
    let last = *got.last().unwrap();

    // Back on the third node.
    let mut again = Client::connect(nodes[2].addr);
    let v = subscribe(&mut again, "feed", Some((last, &epoch)));
    assert_eq!(v["recovered"], true, "{v}");
    assert_eq!(v["epoch"], json!(epoch));
    while got.len() < FLOOD as usize {
        let (offset, e, content) = next_message(&mut again);
        assert_eq!((offset, e.as_str()), (content.as_u64().unwrap(), &*epoch));
        got.push(offset);
    }
    let want: Vec<u64> = (1..=FLOOD).collect();
    assert!(
        got == want,
        "not every publication once in order (first divergence at {:?})",
        got.iter().zip(&want).position(|(a, b)| a != b)
    );
    flood.finish();
    again.expect_silence(Duration::from_millis(300));
}

#[test]
fn publishers_on_every_node_share_one_offset_order() {
    if !available("publishers_on_every_node_share_one_offset_order") {
        return;
    }
    let _one_at_a_time = serial();
    let redis = Redis::start();
    let nodes: Vec<CliServer> = (0..3).map(|_| node(&redis, 1000)).collect();
    let mut subs: Vec<Client> = nodes.iter().map(|n| Client::connect(n.addr)).collect();
    for s in subs.iter_mut() {
        subscribe(s, "shared", None);
    }
    let mut pubs: Vec<Client> = nodes.iter().map(|n| Client::connect(n.addr)).collect();
    for p in pubs.iter_mut() {
        wait_until(MEMBERSHIP, "3 nodes", || nodes_seen(p) == 3);
    }
    // Each publisher's replies carry its publications' offsets, growing.
    const EACH: u64 = 200;
    let handles: Vec<_> = pubs
        .into_iter()
        .enumerate()
        .map(|(i, mut p)| {
            std::thread::spawn(move || {
                let mut offsets = Vec::new();
                for n in 0..EACH {
                    let v = p.request(&json!({"type": "publish", "channel": "shared",
                        "content": {"node": i, "n": n}, "id": n}));
                    assert_eq!(v["type"], "published", "{v}");
                    assert_eq!(v["id"], n, "{v}");
                    offsets.push(u64_of(&v, "offset"));
                    assert!(v["epoch"].is_string(), "{v}");
                }
                offsets
            })
        })
        .collect();
    let published: Vec<Vec<u64>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    for o in &published {
        assert!(
            o.windows(2).all(|w| w[0] < w[1]),
            "a publisher's offsets grow"
        );
    }
    let total = 3 * EACH;
    let mut orders = Vec::new();
    for (i, s) in subs.iter_mut().enumerate() {
        let mut order = Vec::new();
        let mut next_n = [0u64; 3];
        for want in 1..=total {
            let (offset, _, content) = next_message(s);
            assert_eq!(offset, want, "node {i}: offsets are 1, 2, 3… with no gap");
            let (from, n) = (u64_of(&content, "node") as usize, u64_of(&content, "n"));
            assert_eq!(n, next_n[from], "node {i}: per-publisher order");
            next_n[from] += 1;
            order.push(content);
        }
        s.expect_silence(Duration::from_millis(300));
        orders.push(order);
    }
    assert!(
        orders.windows(2).all(|w| w[0] == w[1]),
        "every node delivers the same order"
    );
    // The offsets the publishers were told are the ones delivered.
    let mut all: Vec<u64> = published.concat();
    all.sort_unstable();
    assert_eq!(all, (1..=total).collect::<Vec<_>>());
}

#[test]
fn a_node_started_later_serves_recovery_and_history_from_redis() {
    if !available("a_node_started_later_serves_recovery_and_history_from_redis") {
        return;
    }
    let _one_at_a_time = serial();
    let redis = Redis::start();
    let a = node(&redis, 100);
    let mut p = Client::connect(a.addr);
    let mut epoch = String::new();
    for n in 1..=30u64 {
        let v = p.request(&json!({"type": "publish", "channel": "late", "content": n}));
        assert_eq!(u64_of(&v, "offset"), n, "{v}");
        epoch = v["epoch"].as_str().unwrap().to_owned();
    }
    // A node that was not there when they were published.
    let b = node(&redis, 100);
    let mut c = Client::connect(b.addr);
    let v = subscribe(&mut c, "late", Some((20, &epoch)));
    assert_eq!(
        (
            v["recovered"].clone(),
            v["offset"].clone(),
            v["epoch"].clone()
        ),
        (json!(true), json!(30), json!(epoch)),
        "{v}"
    );
    for n in 21..=30 {
        let (offset, e, content) = next_message(&mut c);
        assert_eq!((offset, e.as_str(), content), (n, epoch.as_str(), json!(n)));
    }
    let h = c.request(&json!({"type": "history", "channel": "late", "since": 27}));
    assert_eq!(h["type"], "history", "{h}");
    let offsets: Vec<u64> = h["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| u64_of(p, "offset"))
        .collect();
    assert_eq!(offsets, vec![28, 29, 30], "{h}");
    // A quiet channel nobody published to: offset 0 under the same epoch
    // the first publication will carry (no false loss).
    let v = subscribe(&mut c, "quiet", None);
    assert_eq!(
        (v["offset"].clone(), v["epoch"].clone()),
        (json!(0), json!(epoch))
    );
    let v = p.request(&json!({"type": "publish", "channel": "quiet", "content": "first"}));
    assert_eq!(
        (v["offset"].clone(), v["epoch"].clone()),
        (json!(1), json!(epoch))
    );
    let (offset, e, _) = next_message(&mut c);
    assert_eq!((offset, e), (1, epoch));
}

#[test]
fn redis_restarted_without_its_data_means_a_new_epoch_never_a_silent_gap() {
    if !available("redis_restarted_without_its_data_means_a_new_epoch_never_a_silent_gap") {
        return;
    }
    let _one_at_a_time = serial();
    let mut redis = Redis::start();
    let a = node(&redis, 100);
    let b = node(&redis, 100);
    let mut sub = Client::connect(a.addr);
    let first = subscribe(&mut sub, "r", None);
    let old = first["epoch"].as_str().unwrap().to_owned();
    let mut p = Client::connect(b.addr);
    wait_until(MEMBERSHIP, "2 nodes", || nodes_seen(&mut p) == 2);
    for n in 1..=5u64 {
        let v = p.request(&json!({"type": "publish", "channel": "r", "content": n}));
        assert_eq!(v["type"], "published", "{v}");
    }
    for n in 1..=5 {
        assert_eq!(next_message(&mut sub).0, n);
    }
    redis.restart();
    // Once B writes again, Redis has a new epoch, and offsets restart.
    let v = support::wait::poll(Duration::from_secs(20), || {
        let v = p.request(&json!({"type": "publish", "channel": "r", "content": 6}));
        (v["type"] == "published").then_some(v)
    })
    .expect("B publishes again once Redis is back");
    let new = v["epoch"].as_str().unwrap().to_owned();
    assert_ne!(new, old, "{v}");
    assert_eq!(v["offset"], 1, "{v}");
    // The live subscriber sees the new epoch: its client reports a loss.
    let (offset, e, content) = next_message(&mut sub);
    assert_eq!((offset, e.as_str(), content), (1, new.as_str(), json!(6)));
    // A client recovering from the old epoch is told it lost messages.
    let mut back = Client::connect(a.addr);
    let v = subscribe(&mut back, "r", Some((5, &old)));
    assert_eq!(
        (
            v["recovered"].clone(),
            v["epoch"].clone(),
            v["offset"].clone()
        ),
        (json!(false), json!(new), json!(1)),
        "{v}"
    );
}
