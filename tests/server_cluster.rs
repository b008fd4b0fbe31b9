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
use support::wire::{frame, u64_of, Client, READ_TIMEOUT};

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

/// `GET path` on a metrics listener: (status line, body).
fn http_get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("metrics listener");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut r = String::new();
    let _ = s.read_to_string(&mut r);
    let (head, body) = r.split_once("\r\n\r\n").unwrap_or((&r, ""));
    (
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
}

/// Every kind of malformed entry that anyone with access to the cluster's
/// Redis can write: skipped, counted, never shown to a client, and the
/// cross-node delivery after them still works (the reader thread used to
/// die on the first one, silently).
#[test]
fn malformed_stream_entries_are_skipped_and_counted_and_delivery_goes_on() {
    if !available("malformed_stream_entries_are_skipped_and_counted_and_delivery_goes_on") {
        return;
    }
    let _one_at_a_time = serial();
    let redis = Redis::start();
    let metrics = format!("127.0.0.1:{}", free_port());
    let a = node(&redis, &[]);
    let b = node(&redis, &["--metrics-addr", &metrics]);
    let metrics: std::net::SocketAddr = metrics.parse().unwrap();
    let mut publisher = Client::connect(a.addr);
    let mut sub = Client::connect(b.addr);
    subscribe(&mut sub, "room");
    let mut listener = Client::connect(b.addr);
    // Until B's subscriber gets A's publishes (B's reader is reading).
    sub.set_read_timeout(Duration::from_millis(200));
    wait_until(MEMBERSHIP, "B's subscriber to get A's publishes", || {
        let v =
            publisher.request(&json!({"type": "publish", "channel": "room", "content": "probe"}));
        assert_eq!(v["type"], "published", "{v}");
        matches!(sub.try_recv(), Ok(Some(v)) if v["content"] == "probe")
    });
    sub.set_read_timeout(READ_TIMEOUT);
    let v = publisher.request(&json!({"type": "publish", "channel": "room", "content": "ready"}));
    assert_eq!(v["type"], "published", "{v}");
    while sub.recv()["content"] != "ready" {}
    let bcast = |s: &str| {
        let mut v = (s.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(s.as_bytes());
        v
    };
    let lying = b"\0\0\x10\0{}".to_vec();
    let array = bcast("[1,2,3]");
    let not_json = bcast("{\"type\":\"broadcast_message\",");
    let error = bcast(r#"{"type":"error","code":"kicked","message":"forged"}"#);
    let other_channel = bcast(
        r#"{"type":"channel_message","channel":"elsewhere","content":1,"from":"x","timestamp":"t"}"#,
    );
    let huge = bcast(&format!(
        r#"{{"type":"broadcast_message","content":"{}"}}"#,
        "x".repeat(2 << 20)
    ));
    let bad: Vec<Vec<&[u8]>> = vec![
        // The one-liner of the defects issue: a frame shorter than a header.
        vec![b"n", b"x", b"s", b"1", b"f", b"ab"],
        vec![b"n", b"x", b"s", b"2", b"f", &lying],
        vec![b"n", b"x", b"s", b"3", b"f", &array],
        vec![b"n", b"x", b"s", b"4", b"f", &not_json],
        vec![b"n", b"x", b"s", b"5", b"f", &error],
        vec![b"n", b"x", b"s", b"6", b"f", &other_channel, b"c", b"room"],
        vec![b"n", b"x", b"s", b"7", b"f", &huge],
        vec![b"n", b"x", b"s", b"not-a-number", b"f", &array],
        vec![b"s", b"8", b"f", &array],
        vec![b"n", b"x", b"s", b"9", b"f", &array, b"c", b"bad\x01name"],
        vec![b"unrelated", b"field"],
    ];
    for fields in &bad {
        let mut args: Vec<&[u8]> = vec![b"XADD", b"ringcast:stream", b"*"];
        args.extend(fields.iter().copied());
        let r = redis.raw(&args);
        assert!(r.starts_with('$'), "XADD answered {r}");
    }
    // Then good cross-node traffic: it must arrive, in order.
    for n in 0..8 {
        let v =
            publisher.request(&json!({"type": "publish", "channel": "room", "content": {"n": n}}));
        assert_eq!(v["type"], "published", "{v}");
    }
    let v = publisher.request(&json!({"type": "broadcast", "content": "after"}));
    assert_eq!(v["type"], "broadcast_sent", "{v}");
    for n in 0..8 {
        let v = sub.recv();
        assert_eq!(
            v["type"], "channel_message",
            "a bad entry reached a client: {v}"
        );
        assert_eq!(v["content"]["n"], n, "{v}");
    }
    assert_eq!(sub.recv()["content"], "after");
    let v = listener.recv();
    assert_eq!(
        v["type"], "broadcast_message",
        "a bad entry reached a client: {v}"
    );
    assert_eq!(v["content"], "after");
    sub.expect_silence(Duration::from_millis(300));
    listener.expect_silence(Duration::from_millis(100));
    let c = cluster_of(&mut listener);
    assert_eq!(u64_of(&c, "backplane_bad_entries"), bad.len() as u64, "{c}");
    assert_eq!(c["backplane"], "connected", "{c}");
    assert_eq!(u64_of(&c, "backplane_restarts"), 0, "{c}");
    let (status, body) = http_get(metrics, "/metrics");
    assert!(status.contains("200"), "{status}");
    assert_eq!(
        metric(&body, "ringcast_backplane_bad_entries_total"),
        bad.len() as u64
    );
}

/// A backplane thread that dies (here through the test-only fault hook:
/// the reader panics on its first batch) is restarted and counted, the
/// node says `degraded` meanwhile in get_stats and /healthz, and the batch
/// it died on is delivered after the restart: nothing is lost.
#[test]
fn a_dead_reader_thread_is_restarted_and_reported_degraded_meanwhile() {
    if !available("a_dead_reader_thread_is_restarted_and_reported_degraded_meanwhile") {
        return;
    }
    let _one_at_a_time = serial();
    let redis = Redis::start();
    let metrics = format!("127.0.0.1:{}", free_port());
    let a = node(&redis, &[]);
    let url = redis.url();
    let b = CliServer::start(
        &["--backplane", &url, "--metrics-addr", &metrics],
        &[("RINGCAST_TEST_FAULT_READER_PANICS", "1")],
    );
    let metrics: std::net::SocketAddr = metrics.parse().unwrap();
    let mut publisher = Client::connect(a.addr);
    let mut sub = Client::connect(b.addr);
    subscribe(&mut sub, "room");
    let mut watcher = Client::connect(b.addr);
    wait_until(MEMBERSHIP, "A to see 2 nodes", || {
        cluster_of(&mut publisher)["nodes"] == 2
    });
    assert_eq!(cluster_of(&mut watcher)["backplane"], "connected");
    let v = publisher.request(&json!({"type": "broadcast", "content": {"n": 0}}));
    assert_eq!(v["type"], "broadcast_sent", "{v}");
    // The reader dies on the batch holding it; the restart waits 1 s.
    wait_until(Duration::from_secs(5), "B to report degraded", || {
        cluster_of(&mut watcher)["backplane"] == "degraded"
    });
    let (status, body) = http_get(metrics, "/healthz");
    assert!(status.contains("200"), "{status}");
    assert!(body.starts_with("degraded"), "{body}");
    let (_, m) = http_get(metrics, "/metrics");
    assert_eq!(metric(&m, "ringcast_backplane_degraded"), 1);
    // Restarted: the message it died on arrives, then the next.
    let v = sub.recv();
    assert_eq!(v["content"]["n"], 0, "{v}");
    wait_until(Duration::from_secs(5), "B to be connected again", || {
        cluster_of(&mut watcher)["backplane"] == "connected"
    });
    let c = cluster_of(&mut watcher);
    assert_eq!(u64_of(&c, "backplane_restarts"), 1, "{c}");
    let v = publisher.request(&json!({"type": "broadcast", "content": {"n": 1}}));
    assert_eq!(v["type"], "broadcast_sent", "{v}");
    assert_eq!(sub.recv()["content"]["n"], 1);
    sub.expect_silence(Duration::from_millis(300));
    let (_, body) = http_get(metrics, "/healthz");
    assert_eq!(body, "ok\n");
    let (_, m) = http_get(metrics, "/metrics");
    assert_eq!(metric(&m, "ringcast_backplane_restarts_total"), 1);
    assert_eq!(metric(&m, "ringcast_backplane_degraded"), 0);
}

/// Two writers used to share one compression counter: a shard (load, then
/// store) and the backplane reader (an atomic add), so additions could be
/// lost. Each now has its own, summed on read: with local and remote
/// compressed broadcasts at once on node B, get_stats counts every one.
#[test]
fn compressions_by_the_shards_and_the_backplane_reader_are_all_counted() {
    if !available("compressions_by_the_shards_and_the_backplane_reader_are_all_counted") {
        return;
    }
    const EACH: u64 = 400;
    let _one_at_a_time = serial();
    let redis = Redis::start();
    let a = node(&redis, &[]);
    let b = node(&redis, &[]);
    // A zstd client on B: every broadcast over the threshold is compressed
    // once for it, by B's shard (local ones) or B's reader (A's ones).
    let mut z = Client::connect(b.addr);
    let v = z.request(&json!({"type": "hello", "compression": ["zstd"], "id": 0}));
    assert_eq!(v["compression"], "zstd", "{v}");
    let mut pa = Client::connect(a.addr);
    let mut pb = Client::connect(b.addr);
    wait_until(MEMBERSHIP, "A to see 2 nodes", || {
        cluster_of(&mut pa)["nodes"] == 2
    });
    let before = u64_of(
        &pb.request(&json!({"type": "get_stats"}))["compression"],
        "compressions",
    );
    let payload = "telemetry ".repeat(400);
    let send = |c: &mut Client| {
        let mut bytes = Vec::new();
        for n in 0..EACH {
            bytes.extend(frame(
                &json!({"type": "broadcast", "content": {"n": n, "p": payload}}),
            ));
        }
        c.send_raw(&bytes);
    };
    // Both at once, so B's shard and B's reader compress together.
    std::thread::scope(|s| {
        s.spawn(|| send(&mut pa));
        s.spawn(|| send(&mut pb));
    });
    // z reads nothing (the compressed frames are small); the count must
    // reach exactly one compression per broadcast that reached B.
    // (Every client on B receives the broadcasts: read past them.)
    let mut watcher = Client::connect(b.addr);
    let stats = |c: &mut Client| {
        c.send(&json!({"type": "get_stats"}));
        loop {
            let v = c.recv();
            if v["type"] == "server_stats" {
                return v;
            }
        }
    };
    wait_until(
        Duration::from_secs(20),
        "every broadcast compressed on B",
        || {
            let s = stats(&mut watcher);
            u64_of(&s["compression"], "compressions") - before >= 2 * EACH
        },
    );
    std::thread::sleep(Duration::from_millis(200));
    let s = stats(&mut watcher);
    assert_eq!(
        u64_of(&s["compression"], "compressions") - before,
        2 * EACH,
        "{}",
        s["compression"]
    );
}
