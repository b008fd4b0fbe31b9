//! Delivery across nodes over Redis Streams (`--backplane redis://…`).
//!
//! Two threads of their own talk to Redis; the shards never do:
//!
//! - the **writer** takes what local clients broadcast and publish from
//!   [`Cluster::outbox`] (a lock-free queue the shards push to, bounded in
//!   bytes by `backplane_buffer_bytes`), and XADDs it to one stream in
//!   pipelined batches, in order; once a second it writes this node's
//!   heartbeat (a key that expires) and reads the others';
//! - the **reader** XREADs BLOCK from the last id it saw, skips this node's
//!   own entries and any entry it already had (per-node sequence numbers),
//!   and pushes the rest into the shards' mailboxes, exactly as a shard
//!   hands a broadcast to another shard.
//!
//! While Redis is unreachable the writer keeps what it could not write,
//! in order, and both threads reconnect with exponential backoff and
//! jitter; local delivery is unaffected. A message that would take the
//! buffer past its bound is refused (`backplane_unavailable` to its sender)
//! and delivered locally only.

use crate::server::broadcast::Delivery;
use crate::server::channels::{slot_of, Interest, INTEREST_SLOTS};
use crate::server::Shared;
use bytes::Bytes;
use crossbeam_queue::SegQueue;
use redis::streams::StreamReadReply;
use redis::{Commands, Connection, RedisResult};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

/// The stream every node writes to and reads from.
pub const STREAM_KEY: &str = "ringcast:stream";
/// Prefix of the heartbeat keys (`ringcast:node:<node id>`).
pub const NODE_KEY_PREFIX: &str = "ringcast:node:";
/// Approximate bound on the stream's length (`XADD MAXLEN ~`). A node that
/// loses Redis, or falls behind, resumes from its last id and misses
/// nothing as long as fewer entries than this were written meanwhile:
/// 100,000 entries are several seconds of a busy cluster, and at a few
/// hundred bytes an entry about 50 MiB of Redis memory at most.
pub const STREAM_MAXLEN: usize = 100_000;
/// Entries per XADD pipeline and per XREAD: large enough that Redis spends
/// its CPU on entries, not round trips; small enough that one batch is a
/// few hundred KiB.
pub const BATCH_ENTRIES: usize = 512;
/// How long XREAD blocks when there is nothing to read (the reader checks
/// for a stop this often).
const READ_BLOCK_MS: usize = 500;
/// While Redis is up but this many bytes wait to be written, publishers
/// are paused like any fan-out backpressure (src/server/shard/fanout.rs):
/// the backplane, not a queue, sets their pace. 1 MiB is thousands of
/// small messages, a few pipelines' worth: enough to keep the writer busy,
/// small enough that waiting in it adds milliseconds, not seconds.
pub const PAUSE_PUBLISHERS_BYTES: usize = 1 << 20;
/// Heartbeat period; membership and remote counts are this fresh.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// A node whose heartbeat is older than this has left: three missed beats,
/// so a busy moment does not drop a live node.
pub const HEARTBEAT_TTL: Duration = Duration::from_secs(3);
/// Reconnection backoff: first wait, cap.
const BACKOFF_FIRST: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Connect and I/O timeout for Redis commands (the reader adds its block).
const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// One message for the other nodes.
#[derive(Debug)]
struct Outbound {
    frame: Bytes,
    channel: Option<Arc<str>>,
}

/// What the writer has not yet written, with its sequence number.
struct Pending {
    seq: u64,
    out: Outbound,
}

/// The backplane's shared state (in [`Shared`]).
pub struct Cluster {
    /// This node's name in the cluster.
    pub node_id: String,
    client: redis::Client,
    outbox: SegQueue<Outbound>,
    /// Bytes queued for Redis, not yet written (the buffer the bound is on).
    buffered: AtomicUsize,
    limit: usize,
    /// Both connections are up.
    up: AtomicBool,
    /// Nodes alive at the last heartbeat read, this one included.
    nodes: AtomicU64,
    /// Clients connected on the other nodes, from their last heartbeats.
    remote_clients: AtomicU64,
    /// Subscribers on the other nodes per interest slot, from their last
    /// heartbeats.
    remote_interest: Interest,
    /// Entries written to the stream.
    pub written: AtomicU64,
    /// Other nodes' entries delivered here.
    pub received: AtomicU64,
    /// Messages refused with `backplane_unavailable`.
    pub refused: AtomicU64,
    /// Reconnections to Redis.
    pub reconnects: AtomicU64,
    writer_sleeping: AtomicBool,
    writer: OnceLock<Thread>,
    stop: AtomicBool,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

/// The backplane's figures, for `get_stats` and metrics.
#[derive(Debug, Clone, Copy)]
pub struct ClusterFigures<'a> {
    /// This node.
    pub node_id: &'a str,
    /// Nodes alive, this one included.
    pub nodes: u64,
    /// Clients on the other nodes.
    pub remote_clients: u64,
    /// `connected` or `reconnecting`.
    pub backplane: &'static str,
    /// Bytes waiting to be written to Redis.
    pub buffered_bytes: u64,
}

impl Cluster {
    /// The backplane for `url`, named `node_id`. Fails on a URL the redis
    /// crate cannot read (the error does not repeat the URL: it may hold a
    /// password).
    pub fn new(url: &str, node_id: String, limit: usize) -> Result<Cluster, String> {
        if !url.starts_with("redis://") {
            return Err("the backplane must be a redis://[user:pass@]host:port[/db] URL".into());
        }
        let client = redis::Client::open(url).map_err(|e| format!("bad backplane URL: {e}"))?;
        Ok(Cluster {
            node_id,
            client,
            outbox: SegQueue::new(),
            buffered: AtomicUsize::new(0),
            limit,
            up: AtomicBool::new(false),
            nodes: AtomicU64::new(1),
            remote_clients: AtomicU64::new(0),
            remote_interest: Interest::default(),
            written: AtomicU64::new(0),
            received: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            writer_sleeping: AtomicBool::new(false),
            writer: OnceLock::new(),
            stop: AtomicBool::new(false),
            threads: Mutex::new(Vec::new()),
        })
    }

    /// A default node id: the listen address plus a random suffix, so a
    /// restarted node is a new member (and its sequence numbers a new
    /// series).
    pub fn default_node_id(addr: std::net::SocketAddr) -> String {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| addr.ip().to_string());
        format!("{host}:{}-{:08x}", addr.port(), random_u64() as u32)
    }

    /// Queues a local client's broadcast (`channel` None) or publish for
    /// the other nodes. False when the buffer bound would be passed: the
    /// message is then delivered on this node only.
    pub fn try_send(&self, frame: &Bytes, channel: Option<&Arc<str>>) -> bool {
        let n = frame.len();
        if self.buffered.fetch_add(n, Ordering::AcqRel) + n > self.limit {
            self.buffered.fetch_sub(n, Ordering::AcqRel);
            self.refused.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        self.outbox.push(Outbound {
            frame: frame.clone(),
            channel: channel.cloned(),
        });
        true
    }

    /// Wakes the writer if it sleeps (a shard calls this once per turn in
    /// which it queued something).
    pub fn wake_writer(&self) {
        if self.writer_sleeping.load(Ordering::Acquire) {
            if let Some(t) = self.writer.get() {
                t.unpark();
            }
        }
    }

    /// Subscribers of `channel` on the other nodes (their last heartbeats;
    /// approximate, see docs/PROTOCOL.md).
    pub fn remote_subscribers(&self, channel: &str) -> u64 {
        u64::from(self.remote_interest.count(slot_of(channel)))
    }

    /// Clients on the other nodes (their last heartbeats).
    pub fn remote_clients(&self) -> u64 {
        self.remote_clients.load(Ordering::Relaxed)
    }

    /// Whether publishers should wait for the backplane: Redis is up and
    /// more than [`PAUSE_PUBLISHERS_BYTES`] wait to be written. (While it is
    /// down, nothing is paused: the bounded buffer and `backplane_unavailable`
    /// take over.)
    pub fn backlogged(&self) -> bool {
        self.is_up() && self.buffered.load(Ordering::Relaxed) > PAUSE_PUBLISHERS_BYTES
    }

    /// Whether Redis is reachable now.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// The figures for reports.
    pub fn figures(&self) -> ClusterFigures<'_> {
        ClusterFigures {
            node_id: &self.node_id,
            nodes: self.nodes.load(Ordering::Relaxed),
            remote_clients: self.remote_clients(),
            backplane: if self.is_up() {
                "connected"
            } else {
                "reconnecting"
            },
            buffered_bytes: self.buffered.load(Ordering::Relaxed) as u64,
        }
    }

    /// Starts the writer and reader threads.
    pub(crate) fn start(shared: &Arc<Shared>) -> std::io::Result<()> {
        let Some(c) = shared.cluster.as_ref() else {
            return Ok(());
        };
        let mut threads = lock(&c.threads);
        let s = shared.clone();
        let w = std::thread::Builder::new()
            .name("ringcast-backplane-writer".into())
            .spawn(move || writer_main(&s))?;
        let _ = c.writer.set(w.thread().clone());
        threads.push(w);
        let s = shared.clone();
        threads.push(
            std::thread::Builder::new()
                .name("ringcast-backplane-reader".into())
                .spawn(move || reader_main(&s))?,
        );
        Ok(())
    }

    /// Stops both threads and waits for them (after the shards stopped).
    pub fn stop_and_join(&self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.writer.get() {
            t.unpark();
        }
        for t in lock(&self.threads).drain(..) {
            let _ = t.join();
        }
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Connects, retrying with exponential backoff and jitter until it
    /// succeeds or the server stops (None).
    fn connect(&self, read_timeout: Duration, who: &str) -> Option<Connection> {
        let mut wait = BACKOFF_FIRST;
        let mut warned = false;
        loop {
            if self.stopping() {
                return None;
            }
            let r = self
                .client
                .get_connection_with_timeout(IO_TIMEOUT)
                .and_then(|c| {
                    c.set_read_timeout(Some(read_timeout))?;
                    c.set_write_timeout(Some(IO_TIMEOUT))?;
                    Ok(c)
                });
            match r {
                Ok(c) => {
                    if warned {
                        tracing::info!(node_id = %self.node_id, who, "backplane reconnected");
                    }
                    return Some(c);
                }
                Err(e) => {
                    if !warned {
                        tracing::warn!(node_id = %self.node_id, who, error = %e,
                            "backplane unreachable; delivering locally, buffering for the other nodes");
                        warned = true;
                    }
                    // Full jitter in [wait/2, wait]: nodes that lost Redis
                    // together do not all come back in the same instant.
                    let unit = (random_u64() >> 11) as f64 / (1u64 << 53) as f64;
                    let d = wait.mul_f64(0.5 + unit / 2.0);
                    let until = Instant::now() + d;
                    while Instant::now() < until && !self.stopping() {
                        std::thread::sleep(Duration::from_millis(10).min(d));
                    }
                    wait = (wait * 2).min(BACKOFF_MAX);
                }
            }
        }
    }
}

/// A random number from std's per-process random hash keys (no extra
/// dependency, no unsafe; plenty for ids and jitter).
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The writer: outbox → XADD pipelines, in order; heartbeats.
fn writer_main(shared: &Shared) {
    let Some(c) = shared.cluster.as_ref() else {
        return;
    };
    // Sequence numbers start at this node's start time in µs, so that a
    // node restarted under the same id still counts upwards.
    let mut seq = crate::protocol::time::unix_ms_now() * 1000;
    let mut pending: VecDeque<Pending> = VecDeque::new();
    let mut con: Option<Connection> = None;
    let mut next_beat = Instant::now();
    let mut pipe = redis::Pipeline::new();
    while !c.stopping() || (!pending.is_empty() && con.is_some()) {
        while let Some(out) = c.outbox.pop() {
            seq += 1;
            pending.push_back(Pending { seq, out });
        }
        let Some(conn) = con.as_mut() else {
            c.up.store(false, Ordering::Relaxed);
            con = c.connect(IO_TIMEOUT, "writer");
            if con.is_some() {
                c.reconnects.fetch_add(1, Ordering::Relaxed);
            }
            continue;
        };
        let mut ok = true;
        if Instant::now() >= next_beat {
            next_beat = Instant::now() + HEARTBEAT;
            ok = heartbeat(shared, c, conn).is_ok();
        }
        if ok && !pending.is_empty() {
            let n = pending.len().min(BATCH_ENTRIES);
            pipe.clear();
            for p in pending.iter().take(n) {
                let cmd = pipe
                    .cmd("XADD")
                    .arg(STREAM_KEY)
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(STREAM_MAXLEN)
                    .arg("*")
                    .arg("n")
                    .arg(&c.node_id)
                    .arg("s")
                    .arg(p.seq)
                    .arg("f")
                    .arg(p.out.frame.as_ref());
                if let Some(ch) = &p.out.channel {
                    cmd.arg("c").arg(ch.as_ref());
                }
                cmd.ignore();
            }
            match pipe.query::<()>(conn) {
                Ok(()) => {
                    let bytes: usize = pending.drain(..n).map(|p| p.out.frame.len()).sum();
                    let was = c.buffered.fetch_sub(bytes, Ordering::AcqRel);
                    if was > PAUSE_PUBLISHERS_BYTES && was - bytes <= PAUSE_PUBLISHERS_BYTES {
                        // Shards with paused publishers may be asleep.
                        for m in shared.mailboxes.iter() {
                            m.wake_external();
                        }
                    }
                    c.written.fetch_add(n as u64, Ordering::Relaxed);
                }
                // Kept, in order, for the next connection. A batch that
                // reached Redis before the failure is written again then;
                // readers drop it by its sequence numbers.
                Err(_) => ok = false,
            }
        }
        if !ok {
            con = None;
            continue;
        }
        c.up.store(true, Ordering::Relaxed);
        if pending.is_empty() && c.outbox.is_empty() {
            c.writer_sleeping.store(true, Ordering::Release);
            if c.outbox.is_empty() && !c.stopping() {
                std::thread::park_timeout(next_beat.saturating_duration_since(Instant::now()));
            }
            c.writer_sleeping.store(false, Ordering::Release);
        }
    }
    if let Some(conn) = con.as_mut() {
        let _: RedisResult<()> = conn.del(format!("{NODE_KEY_PREFIX}{}", c.node_id));
    }
}

/// Writes this node's heartbeat and reads the others': how many clients
/// each has, and its subscribers per interest slot.
fn heartbeat(shared: &Shared, c: &Cluster, con: &mut Connection) -> RedisResult<()> {
    let t = shared.totals(&mut Vec::new());
    let mut body = format!("clients {}\n", t.connected);
    for slot in 0..INTEREST_SLOTS {
        let n: u64 = shared
            .interest
            .iter()
            .map(|i| u64::from(i.count(slot)))
            .sum();
        if n > 0 {
            body.push_str(&format!("{slot} {n}\n"));
        }
    }
    let key = format!("{NODE_KEY_PREFIX}{}", c.node_id);
    redis::cmd("SET")
        .arg(&key)
        .arg(&body)
        .arg("PX")
        .arg(HEARTBEAT_TTL.as_millis() as u64)
        .query::<()>(con)?;
    let keys: Vec<String> = con
        .scan_match::<_, String>(format!("{NODE_KEY_PREFIX}*"))?
        .collect::<RedisResult<_>>()?;
    let others: Vec<&String> = keys.iter().filter(|k| **k != key).collect();
    let bodies: Vec<Option<String>> = if others.is_empty() {
        Vec::new()
    } else {
        redis::cmd("MGET").arg(&others).query(con)?
    };
    let mut clients = 0u64;
    let mut slots = vec![0u32; INTEREST_SLOTS];
    let mut alive = 1u64;
    for b in bodies.into_iter().flatten() {
        alive += 1;
        for line in b.lines() {
            let mut f = line.split(' ');
            match (f.next(), f.next().and_then(|v| v.parse::<u64>().ok())) {
                (Some("clients"), Some(n)) => clients += n,
                (Some(s), Some(n)) => {
                    if let Some(slot) = s.parse::<usize>().ok().filter(|s| *s < INTEREST_SLOTS) {
                        slots[slot] = slots[slot].saturating_add(n.min(u64::from(u32::MAX)) as u32);
                    }
                }
                _ => {}
            }
        }
    }
    for (slot, n) in slots.into_iter().enumerate() {
        c.remote_interest.set(slot, n);
    }
    c.remote_clients.store(clients, Ordering::Relaxed);
    c.nodes.store(alive, Ordering::Relaxed);
    Ok(())
}

/// The reader: XREAD from the last id; others' entries to the shards.
fn reader_main(shared: &Shared) {
    let Some(c) = shared.cluster.as_ref() else {
        return;
    };
    let read_timeout = IO_TIMEOUT + Duration::from_millis(READ_BLOCK_MS as u64);
    // Where to read from: the stream's end at start (a new node gets no
    // history), then always the last id delivered, across reconnections.
    let mut last_id: Option<String> = None;
    let mut last_seq: HashMap<String, u64> = HashMap::new();
    let mut con: Option<Connection> = None;
    let mut compressor = crate::protocol::codec::Compressor::new();
    while !c.stopping() {
        let Some(conn) = con.as_mut() else {
            con = c.connect(read_timeout, "reader");
            continue;
        };
        if last_id.is_none() {
            match stream_end(conn) {
                Ok(id) => last_id = Some(id),
                Err(_) => {
                    con = None;
                    continue;
                }
            }
        }
        let from = last_id.clone().unwrap_or_else(|| "0-0".into());
        let reply: RedisResult<Option<StreamReadReply>> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(BATCH_ENTRIES)
            .arg("BLOCK")
            .arg(READ_BLOCK_MS)
            .arg("STREAMS")
            .arg(STREAM_KEY)
            .arg(&from)
            .query(conn);
        let reply = match reply {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "backplane read failed");
                con = None;
                continue;
            }
        };
        let Some(reply) = reply else { continue };
        for key in reply.keys {
            for entry in key.ids {
                last_id = Some(entry.id.clone());
                let get = |k: &str| -> Option<Vec<u8>> {
                    entry
                        .map
                        .get(k)
                        .and_then(|v| redis::from_redis_value_ref::<Vec<u8>>(v).ok())
                };
                let (Some(node), Some(seq), Some(frame)) = (get("n"), get("s"), get("f")) else {
                    continue; // not ours
                };
                let node = String::from_utf8_lossy(&node).into_owned();
                if node == c.node_id {
                    continue; // our own: delivered locally already
                }
                let Some(seq) = std::str::from_utf8(&seq)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                else {
                    continue;
                };
                let seen = last_seq.entry(node).or_insert(0);
                if seq <= *seen {
                    continue; // written twice after a lost reply
                }
                *seen = seq;
                let channel: Option<Arc<str>> = get("c")
                    .and_then(|c| String::from_utf8(c).ok())
                    .map(Arc::from);
                let mut d = Delivery::new(Bytes::from(frame), channel);
                // Compressed here, once, like a local publish on its shard.
                d.pack(shared, &mut compressor, &shared.counters[0]);
                deliver(shared, d);
                c.received.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The id of the stream's last entry ("0-0" when it is empty or absent).
fn stream_end(con: &mut Connection) -> RedisResult<String> {
    let r: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
        .arg(STREAM_KEY)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query(con)?;
    Ok(r.ids.first().map_or_else(|| "0-0".into(), |e| e.id.clone()))
}

/// Hands a remote entry to every shard that has recipients for it (every
/// shard for a broadcast), through the shards' mailboxes.
fn deliver(shared: &Shared, d: Delivery) {
    let slot = d.channel.as_deref().map(slot_of);
    for (i, mb) in shared.mailboxes.iter().enumerate() {
        if slot.is_some_and(|s| shared.interest[i].count(s) == 0) {
            continue;
        }
        // This thread has no ring: the push wakes the shard by its eventfd
        // (at most once until the shard drains its mailbox).
        mb.push(d.clone(), false);
    }
}
