//! Nothing lost: a mixed workload for SOAK_SECS seconds (default 3, the
//! short version for CI; scripts/soak.sh runs 60 against the release
//! binary) in which
//! - every request gets exactly one response, in order, matched by id and
//!   checked for content (ping, echo of 0 to 48 KiB, message, get_stats, an
//!   unknown type and an echo without content, both answered with errors);
//! - every broadcast reaches every live subscriber exactly once and in
//!   order (each broadcaster numbers its broadcasts; each receiver checks
//!   the numbers per sender have no gap and no repeat, and the connections
//!   alive throughout receive all of them);
//! - connections come and go meanwhile (churners: a ping and an echo, then
//!   a half-close, reading until the server closes, so every broadcast
//!   queued to them is read);
//! - at the end the server's counters agree with the clients':
//!   messages_by_type per type, errors_by_code, and broadcasts_delivered
//!   equal to the broadcast frames all clients read; no slow consumer.
//!
//! By default the server runs in-process (2 shards). With SOAK_ADDR=ip:port
//! the test drives that server instead, which must be fresh (its counters
//! are compared) and have nobody else connected.

mod support;

use serde_json::{json, Value};
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::hostile::{env_or, rss_of, Rng, MIB};
use support::server::start;
use support::wait::wait_until;
use support::wire::{frame, u64_of, Client};

const REQUESTERS: usize = 4;
const BROADCASTERS: usize = 3;
const SUBSCRIBERS: usize = 8;
/// Requests a connection may have unanswered.
const WINDOW: usize = 32;
/// Broadcasts per second per broadcaster (so the readers, on a small
/// machine, keep up and none is cut as a slow consumer).
const BROADCAST_RATE: u64 = 1000;
/// Longest wait for any one frame.
const FRAME_TIMEOUT: Duration = Duration::from_secs(15);

/// What the clients did, to compare with the server's counters.
#[derive(Default)]
struct Tally {
    ping: AtomicU64,
    echo: AtomicU64,
    message: AtomicU64,
    get_stats: AtomicU64,
    custom: AtomicU64,
    broadcast: AtomicU64,
    invalid_field: AtomicU64,
    /// broadcast_message frames read by every client.
    broadcast_frames: AtomicU64,
    churn_connections: AtomicU64,
    max_rss: AtomicU64,
}

/// A request sent and not yet answered.
#[derive(Debug)]
enum Expect {
    Pong {
        id: u64,
        ts: String,
    },
    Echo {
        id: u64,
        content: String,
    },
    Ack {
        id: u64,
    },
    Stats {
        id: u64,
    },
    Unknown {
        id: u64,
    },
    InvalidField {
        id: u64,
    },
    BroadcastSent {
        id: u64,
    },
    /// The writer's last request (a ping): no more responses after it.
    Last {
        id: u64,
    },
}

/// Per-sender sequence check of broadcast_message frames.
struct Broadcasts {
    /// client_id of each broadcaster.
    senders: Arc<Vec<String>>,
    /// Next sequence number expected from each sender (None: none seen
    /// yet, for connections that joined late).
    next: Vec<Option<u64>>,
    /// Senders whose END was seen, with their count.
    ended: Vec<Option<u64>>,
    frames: u64,
}

impl Broadcasts {
    fn new(senders: Arc<Vec<String>>, from_start: bool) -> Broadcasts {
        let n = senders.len();
        Broadcasts {
            senders,
            next: vec![if from_start { Some(0) } else { None }; n],
            ended: vec![None; n],
            frames: 0,
        }
    }

    /// Checks one broadcast_message: content "b<sender>:<seq>:<padding>"
    /// or "b<sender>:END:<count>".
    fn check(&mut self, v: &Value, who: &str) {
        self.frames += 1;
        let content = v["content"].as_str().expect("string content");
        let mut parts = content.splitn(3, ':');
        let sender: usize = parts.next().unwrap()[1..].parse().unwrap();
        let seq = parts.next().unwrap();
        assert_eq!(
            v["from"], self.senders[sender],
            "{who}: wrong from for {content:.30}"
        );
        assert!(self.ended[sender].is_none(), "{who}: frame after END");
        if seq == "END" {
            let count: u64 = parts.next().unwrap().parse().unwrap();
            if let Some(next) = self.next[sender] {
                assert_eq!(next, count, "{who}: missed broadcasts of sender {sender}");
            }
            self.ended[sender] = Some(count);
            return;
        }
        let seq: u64 = seq.parse().unwrap();
        let want = self.next[sender].unwrap_or(seq);
        assert_eq!(
            seq, want,
            "{who}: broadcast {seq} from sender {sender} where {want} was due"
        );
        self.next[sender] = Some(seq + 1);
    }

    fn all_ended(&self, except: Option<usize>) -> bool {
        self.ended
            .iter()
            .enumerate()
            .all(|(i, e)| e.is_some() || Some(i) == except)
    }
}

/// Checks one response against what was expected.
fn check_response(v: &Value, e: &Expect, who: &str, tally: &Tally) -> bool {
    let t = v["type"].as_str().unwrap_or("");
    let ctx = || format!("{who}: expected {e:?}, got {v:.200}");
    match e {
        Expect::Pong { id, ts } => {
            assert!(t == "pong" && v["id"] == *id, "{}", ctx());
            assert_eq!(v["ping_timestamp"], ts.as_str(), "{}", ctx());
        }
        Expect::Echo { id, content } => {
            assert!(t == "echo_response" && v["id"] == *id, "{}", ctx());
            assert!(v["content"] == content.as_str(), "{}", ctx());
        }
        Expect::Ack { id } => assert!(t == "message_ack" && v["id"] == *id, "{}", ctx()),
        Expect::Stats { id } => {
            assert!(t == "server_stats" && v["id"] == *id, "{}", ctx());
            tally.max_rss.fetch_max(rss_of(v), Relaxed);
        }
        Expect::Unknown { id } => {
            assert!(t == "error" && v["id"] == *id, "{}", ctx());
            assert_eq!(v["code"], "unknown_type", "{}", ctx());
            assert_eq!(v["request_type"], "soak_custom", "{}", ctx());
        }
        Expect::InvalidField { id } => {
            assert!(t == "error" && v["id"] == *id, "{}", ctx());
            assert_eq!(v["code"], "invalid_field", "{}", ctx());
        }
        Expect::BroadcastSent { id } => {
            assert!(t == "broadcast_sent" && v["id"] == *id, "{}", ctx());
        }
        Expect::Last { id } => {
            assert!(t == "pong" && v["id"] == *id, "{}", ctx());
            return true;
        }
    }
    false
}

/// Reads a connection until its writer's last response and every
/// broadcaster's END (its own excepted) have arrived.
fn read_loop(
    mut c: Client,
    who: String,
    expected: Option<Receiver<Expect>>,
    mut bc: Broadcasts,
    me: Option<usize>,
    tally: Arc<Tally>,
) -> (Client, u64) {
    c.set_read_timeout(FRAME_TIMEOUT);
    let mut writer_done = expected.is_none();
    let mut responses = 0u64;
    while !(writer_done && bc.all_ended(me)) {
        let v = c.recv();
        if v["type"] == "broadcast_message" {
            bc.check(&v, &who);
            continue;
        }
        let rx = expected
            .as_ref()
            .unwrap_or_else(|| panic!("{who}: unasked {v}"));
        let e = rx
            .recv_timeout(FRAME_TIMEOUT)
            .unwrap_or_else(|_| panic!("{who}: a response nobody asked for: {v}"));
        responses += 1;
        if check_response(&v, &e, &who, &tally) {
            writer_done = true;
        }
    }
    tally.broadcast_frames.fetch_add(bc.frames, Relaxed);
    (c, responses)
}

/// A writer's request: the frame and what must come back.
fn request(kind: u64, id: u64, rng: &mut Rng, tally: &Tally) -> (Value, Expect) {
    match kind {
        0..=39 => {
            tally.ping.fetch_add(1, Relaxed);
            let ts = format!("t{id}");
            (
                json!({"type": "ping", "timestamp": ts, "id": id}),
                Expect::Pong { id, ts },
            )
        }
        40..=74 => {
            tally.echo.fetch_add(1, Relaxed);
            // Mostly small, sometimes up to 48 KiB (straddling buffers).
            let len = if rng.below(10) == 0 {
                rng.below(48 << 10)
            } else {
                rng.below(200)
            } as usize;
            let mut content = format!("e{id}:");
            let unit = "abc é✓ \"q\" \\ \n";
            while content.len() < len {
                content.push_str(unit);
            }
            (
                json!({"type": "echo", "content": content, "id": id}),
                Expect::Echo { id, content },
            )
        }
        75..=89 => {
            tally.message.fetch_add(1, Relaxed);
            (
                json!({"type": "message", "content": "soak", "id": id}),
                Expect::Ack { id },
            )
        }
        90..=91 => {
            tally.get_stats.fetch_add(1, Relaxed);
            (json!({"type": "get_stats", "id": id}), Expect::Stats { id })
        }
        92..=95 => {
            tally.custom.fetch_add(1, Relaxed);
            (
                json!({"type": "soak_custom", "id": id}),
                Expect::Unknown { id },
            )
        }
        _ => {
            tally.invalid_field.fetch_add(1, Relaxed);
            (
                json!({"type": "echo", "id": id}),
                Expect::InvalidField { id },
            )
        }
    }
}

/// Sends `v`, first queueing `e` for the reader (blocking while WINDOW
/// requests are unanswered).
fn send(c: &mut Client, tx: &SyncSender<Expect>, v: &Value, e: Expect) {
    tx.send(e).expect("the reader stopped early");
    c.send(v);
}

/// The final request of every writer.
fn send_last(c: &mut Client, tx: &SyncSender<Expect>, id: u64, tally: &Tally) {
    tally.ping.fetch_add(1, Relaxed);
    send(
        c,
        tx,
        &json!({"type": "ping", "id": id}),
        Expect::Last { id },
    );
}

fn requester(mut c: Client, tx: SyncSender<Expect>, seed: u64, until: Instant, tally: Arc<Tally>) {
    let mut rng = Rng::new(seed);
    let mut id = 0;
    while Instant::now() < until {
        let (v, e) = request(rng.below(100), id, &mut rng, &tally);
        send(&mut c, &tx, &v, e);
        id += 1;
    }
    send_last(&mut c, &tx, id, &tally);
}

fn broadcaster(
    mut c: Client,
    tx: SyncSender<Expect>,
    me: usize,
    until: Instant,
    tally: Arc<Tally>,
) -> u64 {
    let mut rng = Rng::new(0xb0 + me as u64);
    let started = Instant::now();
    let mut seq = 0u64;
    while Instant::now() < until {
        // Paced: BROADCAST_RATE per second on average.
        let due = started + Duration::from_micros(seq * 1_000_000 / BROADCAST_RATE);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let pad = "p".repeat(rng.below(512) as usize);
        let v = json!({"type": "broadcast", "content": format!("b{me}:{seq}:{pad}"), "id": seq});
        tally.broadcast.fetch_add(1, Relaxed);
        send(&mut c, &tx, &v, Expect::BroadcastSent { id: seq });
        seq += 1;
    }
    tally.broadcast.fetch_add(1, Relaxed);
    let v = json!({"type": "broadcast", "content": format!("b{me}:END:{seq}"), "id": seq});
    send(&mut c, &tx, &v, Expect::BroadcastSent { id: seq });
    send_last(&mut c, &tx, seq + 1, &tally);
    seq
}

/// Short-lived connections until `until`: a ping and an echo, a half-close,
/// then everything the server sends until it closes.
fn churner(addr: SocketAddr, senders: Arc<Vec<String>>, until: Instant, tally: Arc<Tally>) -> u64 {
    let mut n = 0;
    while Instant::now() < until {
        let mut c = Client::connect(addr);
        c.set_read_timeout(FRAME_TIMEOUT);
        let who = format!("churner {n} ({})", c.client_id());
        let mut bytes = frame(&json!({"type": "ping", "timestamp": "c", "id": 0}));
        bytes.extend(frame(&json!({"type": "echo", "content": who, "id": 1})));
        tally.ping.fetch_add(1, Relaxed);
        tally.echo.fetch_add(1, Relaxed);
        c.send_raw(&bytes);
        c.stream.shutdown(Shutdown::Write).unwrap();
        let mut bc = Broadcasts::new(senders.clone(), false);
        let mut responses = 0;
        for v in c.read_until_closed(FRAME_TIMEOUT) {
            if v["type"] == "broadcast_message" {
                bc.check(&v, &who);
                continue;
            }
            let e = match responses {
                0 => Expect::Pong {
                    id: 0,
                    ts: "c".into(),
                },
                1 => Expect::Echo {
                    id: 1,
                    content: who.clone(),
                },
                _ => panic!("{who}: an extra response {v}"),
            };
            check_response(&v, &e, &who, &tally);
            responses += 1;
        }
        assert_eq!(responses, 2, "{who}: responses missing");
        tally.broadcast_frames.fetch_add(bc.frames, Relaxed);
        n += 1;
    }
    tally.churn_connections.fetch_add(n, Relaxed);
    n
}

#[test]
fn soak_nothing_lost() {
    let secs: f64 = env_or("SOAK_SECS", 3.0);
    let (_server, addr) = match std::env::var("SOAK_ADDR") {
        Ok(a) => (None, a.parse::<SocketAddr>().expect("SOAK_ADDR is ip:port")),
        Err(_) => {
            let s = start(2);
            let a = s.local_addr();
            (Some(s), a)
        }
    };
    let tally = Arc::new(Tally::default());
    let persistent = REQUESTERS + BROADCASTERS + SUBSCRIBERS;

    // Everyone connected before the first broadcast, so each must get all.
    let requesters = Client::connect_many(addr, REQUESTERS);
    let broadcasters = Client::connect_many(addr, BROADCASTERS);
    let subscribers = Client::connect_many(addr, SUBSCRIBERS);
    let senders: Arc<Vec<String>> = Arc::new(broadcasters.iter().map(|c| c.client_id()).collect());
    {
        let mut control = Client::connect(addr);
        wait_until(Duration::from_secs(5), "all clients connected", || {
            tally.get_stats.fetch_add(1, Relaxed);
            u64_of(&control.stats(), "connected_clients") == persistent as u64 + 1
        });
        control.stream.shutdown(Shutdown::Write).unwrap();
        assert!(control.read_until_closed(FRAME_TIMEOUT).is_empty());
    }

    let started = Instant::now();
    let until = started + Duration::from_secs_f64(secs);
    let mut readers = Vec::new();
    let mut writers = Vec::new();
    for (k, c) in requesters.into_iter().enumerate() {
        let (tx, rx) = sync_channel(WINDOW);
        let w = c.stream.try_clone().map(Client::from_stream).unwrap();
        let tally2 = tally.clone();
        writers.push(std::thread::spawn(move || {
            requester(w, tx, 0x5eed + k as u64, until, tally2);
            0
        }));
        let (bc, tally2) = (Broadcasts::new(senders.clone(), true), tally.clone());
        readers.push(std::thread::spawn(move || {
            read_loop(c, format!("requester {k}"), Some(rx), bc, None, tally2)
        }));
    }
    let mut counts_handles = Vec::new();
    for (k, c) in broadcasters.into_iter().enumerate() {
        let (tx, rx) = sync_channel(WINDOW);
        let w = c.stream.try_clone().map(Client::from_stream).unwrap();
        let tally2 = tally.clone();
        counts_handles.push(std::thread::spawn(move || {
            broadcaster(w, tx, k, until, tally2)
        }));
        let (bc, tally2) = (Broadcasts::new(senders.clone(), true), tally.clone());
        readers.push(std::thread::spawn(move || {
            read_loop(c, format!("broadcaster {k}"), Some(rx), bc, Some(k), tally2)
        }));
    }
    for (k, c) in subscribers.into_iter().enumerate() {
        let (bc, tally2) = (Broadcasts::new(senders.clone(), true), tally.clone());
        readers.push(std::thread::spawn(move || {
            read_loop(c, format!("subscriber {k}"), None, bc, None, tally2)
        }));
    }
    let churn = {
        let (senders, tally2) = (senders.clone(), tally.clone());
        std::thread::spawn(move || churner(addr, senders, until, tally2))
    };

    for w in writers {
        w.join().expect("a requester failed");
    }
    let sent: Vec<u64> = counts_handles
        .into_iter()
        .map(|h| h.join().expect("a broadcaster failed"))
        .collect();
    let mut clients = Vec::new();
    let mut responses = 0;
    for r in readers {
        let (c, n) = r.join().expect("a reader failed");
        responses += n;
        clients.push(c);
    }
    let churned = churn.join().expect("the churner failed");
    let ran = started.elapsed();

    // The counters, from a fresh connection once nothing else is moving.
    let mut control = Client::connect(addr);
    tally.get_stats.fetch_add(1, Relaxed);
    let s = control.stats();
    let t = |a: &AtomicU64| a.load(Relaxed);
    let by_type = &s["messages_by_type"];
    let by_code = &s["errors_by_code"];
    let broadcasts_sent: u64 = sent.iter().map(|n| n + 1).sum();
    eprintln!(
        "soak: {ran:.1?}: {responses} responses to the persistent clients; requests ping {} \
         echo {} message {} get_stats {} custom {} invalid {}; {broadcasts_sent} broadcasts \
         ({sent:?} + END each), {} broadcast frames read, {churned} churn connections; \
         max RSS seen {} MiB",
        t(&tally.ping),
        t(&tally.echo),
        t(&tally.message),
        t(&tally.get_stats),
        t(&tally.custom),
        t(&tally.invalid_field),
        t(&tally.broadcast_frames),
        t(&tally.max_rss) / MIB,
    );
    eprintln!("server: {s}");
    assert_eq!(by_type["ping"], t(&tally.ping), "pings: {s}");
    assert_eq!(by_type["echo"], t(&tally.echo), "echoes: {s}");
    assert_eq!(by_type["message"], t(&tally.message), "messages: {s}");
    assert_eq!(by_type["get_stats"], t(&tally.get_stats), "get_stats: {s}");
    assert_eq!(by_type["custom"], t(&tally.custom), "custom: {s}");
    assert_eq!(by_type["broadcast"], t(&tally.broadcast), "broadcasts: {s}");
    assert_eq!(by_type["auth"], 0, "{s}");
    assert_eq!(broadcasts_sent, t(&tally.broadcast));
    assert_eq!(by_code["unknown_type"], t(&tally.custom), "{s}");
    assert_eq!(by_code["invalid_field"], t(&tally.invalid_field), "{s}");
    assert_eq!(
        u64_of(&s, "protocol_errors"),
        t(&tally.custom) + t(&tally.invalid_field),
        "{s}"
    );
    assert_eq!(
        u64_of(&s, "broadcasts_delivered"),
        t(&tally.broadcast_frames),
        "broadcast frames queued by the server vs read by the clients: {s}"
    );
    // (Each persistent client has already checked, at each END, that it
    // read every broadcast of every other sender, from the first.)
    assert_eq!(u64_of(&s, "slow_consumer_disconnects"), 0, "{s}");
    assert_eq!(
        u64_of(&s, "connected_clients"),
        persistent as u64 + 1,
        "{s}"
    );
    assert!(sent.iter().all(|&n| n > 0), "no broadcasts sent: {sent:?}");

    // Everyone leaves cleanly: nothing more was owed to anyone.
    for mut c in clients {
        c.stream.shutdown(Shutdown::Write).unwrap();
        let rest = c.read_until_closed(FRAME_TIMEOUT);
        assert!(rest.is_empty(), "frames nobody asked for: {rest:?}");
    }
}
