//! Three `ringcast server` processes joined through a real redis-server:
//! broadcasts and publishes from every node reach every intended client on
//! every node, in order, exactly once; a Redis outage loses nothing within
//! the buffer bound and refuses beyond it; a SIGKILLed node costs the
//! others nothing and a restarted one reads from the stream's end.

mod support;

use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;
use support::hostile::serial;
use support::redis::{available, Redis};
use support::server::CliServer;
use support::wait::wait_until;
use support::wire::{frame, u64_of, Client};

const NODES: usize = 3;
const PER_SENDER: u64 = 100;
/// Heartbeats are 1 s apart and expire after 3 s; membership changes show
/// within this.
const MEMBERSHIP: Duration = Duration::from_secs(10);

fn node(redis: &Redis, extra: &[&str]) -> CliServer {
    let url = redis.url();
    let mut args = vec!["--backplane", url.as_str()];
    args.extend_from_slice(extra);
    CliServer::start(&args, &[])
}

fn cluster_of(c: &mut Client) -> Value {
    let s = c.request(&json!({"type": "get_stats"}));
    s["cluster"].clone()
}

fn subscribe(c: &mut Client, ch: &str) {
    let v = c.request(&json!({"type": "subscribe", "channel": ch}));
    assert_eq!(v["type"], "subscribed", "{v}");
}

#[test]
fn broadcasts_and_publishes_reach_every_node_in_order_exactly_once() {
    if !available("broadcasts_and_publishes_reach_every_node_in_order_exactly_once") {
        return;
    }
    let _one_at_a_time = serial();
    let redis = Redis::start();
    let nodes: Vec<CliServer> = (0..NODES).map(|_| node(&redis, &[])).collect();
    // On every node: a publisher (P), a subscriber of "room" (S), a
    // listener subscribed to nothing (L).
    let mut pubs: Vec<Client> = nodes.iter().map(|n| Client::connect(n.addr)).collect();
    let mut subs: Vec<Client> = nodes.iter().map(|n| Client::connect(n.addr)).collect();
    for s in subs.iter_mut() {
        subscribe(s, "room");
    }
    let mut lists: Vec<Client> = nodes.iter().map(|n| Client::connect(n.addr)).collect();
    let ids: Vec<String> = pubs.iter().map(|c| c.client_id()).collect();
    // Every node has seen the others' heartbeats written after all nine
    // clients connected (so after the subscriptions too).
    for p in pubs.iter_mut() {
        wait_until(MEMBERSHIP, "every node to see all 9 clients", || {
            let c = cluster_of(p);
            c["nodes"] == NODES && c["connected_clients"] == 3 * NODES as u64
        });
    }
    let threads: Vec<_> = pubs
        .into_iter()
        .enumerate()
        .map(|(i, mut p)| {
            std::thread::spawn(move || {
                let mut bytes = Vec::new();
                for n in 0..PER_SENDER {
                    let content = json!({"node": i, "n": n});
                    bytes.extend(frame(&json!({"type": "broadcast", "content": content})));
                    bytes.extend(frame(
                        &json!({"type": "publish", "channel": "room", "content": content}),
                    ));
                }
                p.send_raw(&bytes);
                p
            })
        })
        .collect();
    let mut pubs: Vec<Client> = threads.into_iter().map(|t| t.join().unwrap()).collect();

    // Reads until `want` messages came; checks each (sender, kind) stream
    // is in order and nothing extra arrives.
    fn collect(
        c: &mut Client,
        want: u64,
        ids: &[String],
        me: &str,
    ) -> HashMap<(usize, String), u64> {
        let mut next: HashMap<(usize, String), u64> = HashMap::new();
        let mut got = 0;
        while got < want {
            let v = c.recv();
            let kind = v["type"].as_str().unwrap_or("").to_owned();
            match kind.as_str() {
                "broadcast_message" | "channel_message" => {
                    let from = v["content"]["node"].as_u64().unwrap() as usize;
                    assert_eq!(v["from"], ids[from], "{me}: {v}");
                    let e = next.entry((from, kind)).or_insert(0);
                    assert_eq!(v["content"]["n"], *e, "{me}: out of order or twice: {v}");
                    *e += 1;
                    got += 1;
                }
                "broadcast_sent" => assert_eq!(u64_of(&v, "recipients"), 8, "{me}: {v}"),
                "published" => assert_eq!(u64_of(&v, "recipients"), 3, "{me}: {v}"),
                _ => panic!("{me}: unexpected {v}"),
            }
        }
        c.expect_silence(Duration::from_millis(300));
        next
    }
    for (i, s) in subs.iter_mut().enumerate() {
        let seen = collect(s, 2 * NODES as u64 * PER_SENDER, &ids, &format!("S{i}"));
        assert_eq!(seen.len(), 2 * NODES, "S{i}: {seen:?}");
    }
    for (i, l) in lists.iter_mut().enumerate() {
        let seen = collect(l, NODES as u64 * PER_SENDER, &ids, &format!("L{i}"));
        assert!(
            seen.keys().all(|(_, k)| k == "broadcast_message"),
            "L{i}: {seen:?}"
        );
    }
    for (i, p) in pubs.iter_mut().enumerate() {
        // The other publishers' broadcasts, and its own 2 × 100 answers.
        let mut acks = 0;
        let mut next: HashMap<usize, u64> = HashMap::new();
        while acks < 2 * PER_SENDER || next.values().sum::<u64>() < 2 * PER_SENDER {
            let v = p.recv();
            match v["type"].as_str() {
                Some("broadcast_sent") => {
                    assert_eq!(u64_of(&v, "recipients"), 8, "{v}");
                    acks += 1;
                }
                Some("published") => {
                    assert_eq!(u64_of(&v, "recipients"), 3, "{v}");
                    acks += 1;
                }
                Some("broadcast_message") => {
                    let from = v["content"]["node"].as_u64().unwrap() as usize;
                    assert_ne!(from, i, "P{i} got its own broadcast back: {v}");
                    let e = next.entry(from).or_insert(0);
                    assert_eq!(v["content"]["n"], *e, "P{i}: {v}");
                    *e += 1;
                }
                _ => panic!("P{i}: unexpected {v}"),
            }
        }
        p.expect_silence(Duration::from_millis(300));
    }
    let c = cluster_of(&mut lists[0]);
    assert_eq!(c["backplane"], "connected", "{c}");
}

#[test]
fn a_redis_outage_loses_nothing_within_the_buffer_and_refuses_beyond_it() {
    if !available("a_redis_outage_loses_nothing_within_the_buffer_and_refuses_beyond_it") {
        return;
    }
    let _one_at_a_time = serial();
    let mut redis = Redis::start();
    // A: small buffer, B and C: receivers.
    let a = node(&redis, &["--backplane-buffer-bytes", "4096"]);
    let others: Vec<CliServer> = (1..NODES).map(|_| node(&redis, &[])).collect();
    let mut publisher = Client::connect(a.addr);
    let mut local = Client::connect(a.addr);
    subscribe(&mut local, "feed");
    let mut remote: Vec<Client> = others.iter().map(|n| Client::connect(n.addr)).collect();
    for r in remote.iter_mut() {
        subscribe(r, "feed");
    }
    wait_until(MEMBERSHIP, "A to see 3 nodes", || {
        cluster_of(&mut publisher)["nodes"] == NODES
    });
    let publish = |p: &mut Client, n: u64| {
        p.request(&json!({"type": "publish", "channel": "feed", "content": {"n": n, "pad": "x".repeat(100)}}))
    };
    // Before: everything everywhere.
    let v = publish(&mut publisher, 0);
    assert_eq!(v["type"], "published", "{v}");
    redis.kill();
    // During: local delivery goes on; the first messages wait in A's
    // buffer, then the bound refuses the rest, each with an error.
    let (mut buffered, mut refused) = (vec![0u64], 0u64);
    for n in 1..200 {
        let v = publish(&mut publisher, n);
        match v["type"].as_str() {
            Some("published") => {
                assert_eq!(refused, 0, "accepted after a refusal while still down: {v}");
                buffered.push(n);
            }
            Some("error") => {
                assert_eq!(v["code"], "backplane_unavailable", "{v}");
                refused += 1;
            }
            _ => panic!("{v}"),
        }
    }
    assert!(
        buffered.len() > 2 && refused > 0,
        "{} buffered, {refused} refused",
        buffered.len()
    );
    for n in 0..200 {
        assert_eq!(local.recv()["content"]["n"], n, "local delivery goes on");
    }
    let c = cluster_of(&mut publisher);
    assert_eq!(c["backplane"], "reconnecting", "{c}");
    assert!(u64_of(&c, "buffered_bytes") > 0, "{c}");
    redis.restart();
    // After: the buffered ones arrive in order, exactly once; nothing refused.
    for (i, r) in remote.iter_mut().enumerate() {
        for n in &buffered {
            let v = r.recv();
            assert_eq!(v["content"]["n"], *n, "node {}: {v}", i + 1);
        }
        r.expect_silence(Duration::from_millis(500));
    }
    wait_until(MEMBERSHIP, "A's backplane to come back", || {
        cluster_of(&mut publisher)["backplane"] == "connected"
    });
    let v = publish(&mut publisher, 1000);
    assert_eq!(v["type"], "published", "{v}");
    for r in remote.iter_mut() {
        assert_eq!(r.recv()["content"]["n"], 1000);
    }
    let s = publisher.request(&json!({"type": "get_stats"}));
    assert_eq!(s["errors_by_code"]["backplane_unavailable"], refused, "{s}");
}

#[test]
fn a_killed_node_costs_the_others_nothing_and_rejoins_at_the_end() {
    if !available("a_killed_node_costs_the_others_nothing_and_rejoins_at_the_end") {
        return;
    }
    let _one_at_a_time = serial();
    let redis = Redis::start();
    let a = node(&redis, &[]);
    let b = node(&redis, &[]);
    let mut c = node(&redis, &[]);
    let mut publisher = Client::connect(a.addr);
    let mut sub_b = Client::connect(b.addr);
    subscribe(&mut sub_b, "feed");
    let mut sub_c = Client::connect(c.addr);
    subscribe(&mut sub_c, "feed");
    wait_until(MEMBERSHIP, "3 nodes", || {
        cluster_of(&mut publisher)["nodes"] == NODES
    });
    let mut bytes = Vec::new();
    for n in 0..2 * PER_SENDER {
        bytes.extend(frame(
            &json!({"type": "publish", "channel": "feed", "content": n}),
        ));
        if n == PER_SENDER {
            publisher.send_raw(&std::mem::take(&mut bytes));
            c.child.kill().unwrap(); // SIGKILL mid-stream
            let _ = c.child.wait();
        }
    }
    publisher.send_raw(&bytes);
    for n in 0..2 * PER_SENDER {
        assert_eq!(sub_b.recv()["content"], n, "B lost or reordered");
        assert_eq!(publisher.recv()["type"], "published");
    }
    sub_b.expect_silence(Duration::from_millis(300));
    wait_until(MEMBERSHIP, "C to leave the membership", || {
        cluster_of(&mut sub_b)["nodes"] == 2
    });
    // Restarted (a new member): reads from the stream's end, no history.
    c = node(&redis, &[]);
    let mut again = Client::connect(c.addr);
    subscribe(&mut again, "feed");
    wait_until(MEMBERSHIP, "C to rejoin", || {
        cluster_of(&mut again)["nodes"] == NODES
    });
    let v = publisher.request(&json!({"type": "publish", "channel": "feed", "content": "after"}));
    assert_eq!(v["type"], "published", "{v}");
    assert_eq!(
        again.recv()["content"],
        "after",
        "only what came after its start"
    );
    assert_eq!(sub_b.recv()["content"], "after");
}
