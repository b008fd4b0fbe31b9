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

pub mod control;
pub mod entry;
pub mod history;
mod reader;
mod seqs;
mod writer;

use crate::backoff::Backoff;
use crate::protocol::interest::Interest;
use crate::random::{random_u64, Rng};
use crate::sync::lock;
use bytes::Bytes;
pub use control::{ControlEntry, ControlOp};
use crossbeam_queue::SegQueue;
pub use entry::{BadEntry, Entry};
use reader::Reader;
use redis::Connection;
use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};
use writer::Writer;

/// What the backplane needs from the node it serves. The server's router
/// implements it; tests may implement it too.
pub trait Host: Send + Sync + 'static {
    /// An entry from another node, checked: deliver it to this node's
    /// clients (called on the reader thread, in stream order).
    fn deliver(&self, entry: Entry);
    /// This node's connected clients, its subscribers per interest slot
    /// (pushed to `slots` as `(slot, count)`, non-zero only) and per
    /// pattern (pushed to `patterns`), for the heartbeat (called on the
    /// writer thread once a second).
    fn local_figures(
        &self,
        slots: &mut Vec<(usize, u64)>,
        patterns: &mut Vec<(String, u64)>,
    ) -> u64;
    /// The other nodes together now have `new` subscribers of `pattern`
    /// (they had `old`), from their heartbeats: for the recipient counts
    /// (called on the writer thread, only for what changed).
    fn remote_pattern(&self, pattern: &str, old: u64, new: u64);
    /// The writer's backlog fell back under [`PAUSE_PUBLISHERS_BYTES`]:
    /// publishers paused for it may resume.
    fn backlog_cleared(&self);
    /// Redis placed a history publication of this node at `place`
    /// (offset, epoch; `None` when it had been placed before and its reply
    /// lost): send its publisher `reply` (called on the writer thread).
    fn placed(&self, reply: history::Reply, place: Option<(u64, &str)>) {
        let _ = (reply, place);
    }
    /// The history held in Redis, read when the reader starts, before any
    /// entry (only with [`Cluster::with_history`]).
    fn history_loaded(&self, loaded: history::Loaded) {
        let _ = loaded;
    }
    /// The store's epoch as read on a new connection to Redis: a new one
    /// means Redis lost the history (only with [`Cluster::with_history`]).
    fn history_epoch(&self, epoch: &str) {
        let _ = epoch;
    }
    /// A control entry from another node, checked: act on this node's
    /// clients (called on the reader thread, in stream order).
    fn control(&self, op: ControlOp);
}

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
/// A backplane thread that died is restarted after this, doubling up to
/// [`RESTART_MAX`]: long enough that a thread failing on every entry does
/// not spin, short enough that a one-off fault costs a second of delay
/// (the entries wait in Redis meanwhile, and are read after the restart).
const RESTART_FIRST: Duration = Duration::from_secs(1);
const RESTART_MAX: Duration = Duration::from_secs(30);
/// A thread that ran this long before it died starts its backoff afresh.
const RESTART_RESET: Duration = Duration::from_secs(60);
/// At most one warning about bad stream entries per this period (the rest
/// are counted, and the count is in the next warning).
const BAD_ENTRY_LOG_EVERY: Duration = Duration::from_secs(10);
/// The test-only fault hook: with this variable set to N, the reader
/// panics on its first N batches that hold entries (before delivering
/// them), so the tests can show a restart and the degraded health without
/// a real bug. Documented in docs/RELIABILITY.md; never set in production.
pub const FAULT_READER_PANICS_ENV: &str = "RINGCAST_TEST_FAULT_READER_PANICS";

/// One message for the other nodes.
#[derive(Debug)]
struct Outbound {
    frame: Bytes,
    channel: Option<Arc<str>>,
    /// A history channel's publication: placed by the history script,
    /// and answered with this reply.
    history: Option<history::Placement>,
    /// A control entry instead of a message (`frame` is then empty).
    control: Option<Arc<ControlOp>>,
}

impl Outbound {
    /// Bytes it holds of the buffer's bound.
    fn size(&self) -> usize {
        self.frame.len() + self.control.as_ref().map_or(0, |c| c.size())
    }
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
    /// Stream entries skipped as malformed (never delivered).
    pub bad_entries: AtomicU64,
    /// Backplane threads restarted after they died.
    pub restarts: AtomicU64,
    /// The writer and the reader are running (false while one waits to be
    /// restarted).
    writer_alive: AtomicBool,
    reader_alive: AtomicBool,
    /// Entries larger than this are refused as bad (the node's own limit).
    max_frame_bytes: usize,
    /// Node ids whose heartbeats were alive at the last read (the reader
    /// forgets the sequence numbers of the others).
    alive: Mutex<Arc<HashSet<String>>>,
    /// Channel history, held in Redis ([`history`]); `None`: none.
    history: Option<history::HistoryTarget>,
    /// The reader has loaded the history (or there is none to load).
    history_ready: AtomicBool,
    /// The other nodes as their last heartbeats describe them (for
    /// `GET /v1/cluster`).
    peers: Mutex<Vec<Peer>>,
    /// What is left of the test-only fault hook ([`FAULT_READER_PANICS_ENV`]).
    fault_reader_panics: AtomicU64,
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

/// Another node, as its last heartbeat describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its node id.
    pub id: String,
    /// Clients connected to it.
    pub clients: u64,
    /// When it wrote the heartbeat (Unix ms); `None` from a node that does
    /// not say.
    pub heartbeat_unix_ms: Option<u64>,
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
    /// `connected`, `reconnecting` (Redis unreachable) or `degraded` (a
    /// backplane thread died and waits to be restarted).
    pub backplane: &'static str,
    /// Bytes waiting to be written to Redis.
    pub buffered_bytes: u64,
    /// Stream entries skipped as malformed.
    pub bad_entries: u64,
    /// Backplane threads restarted after they died.
    pub restarts: u64,
}

impl Cluster {
    /// The backplane for `url`, named `node_id`. Fails on a URL the redis
    /// crate cannot read (the error does not repeat the URL: it may hold a
    /// password).
    /// `max_frame_bytes` bounds the entries read from other nodes.
    pub fn new(
        url: &str,
        node_id: String,
        limit: usize,
        max_frame_bytes: usize,
    ) -> Result<Cluster, String> {
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
            bad_entries: AtomicU64::new(0),
            restarts: AtomicU64::new(0),
            writer_alive: AtomicBool::new(true),
            reader_alive: AtomicBool::new(true),
            max_frame_bytes,
            alive: Mutex::new(Arc::new(HashSet::new())),
            history: None,
            history_ready: AtomicBool::new(false),
            peers: Mutex::new(Vec::new()),
            fault_reader_panics: AtomicU64::new(
                std::env::var(FAULT_READER_PANICS_ENV)
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
            ),
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
        self.queue(frame, channel, None)
    }

    /// Whether `n` more bytes fit in the buffer now.
    pub fn has_room(&self, n: usize) -> bool {
        self.buffered.load(Ordering::Relaxed) + n <= self.limit
    }

    /// Queues a local client's publication to a history channel (`frame`
    /// without offset): Redis places it, and every node, this one too,
    /// delivers it when it reads it back. False as [`Cluster::try_send`]
    /// (it is then delivered nowhere: an offset only Redis can give).
    pub fn try_send_history(
        &self,
        frame: &Bytes,
        channel: &Arc<str>,
        reply: history::Placement,
    ) -> bool {
        self.queue(frame, Some(channel), Some(reply))
    }

    /// Keeps channel history in Redis (see [`history`]).
    pub fn with_history(mut self, target: history::HistoryTarget) -> Cluster {
        self.history = Some(target);
        self
    }

    /// The largest frame payload this node takes from the stream.
    pub fn max_frame_bytes(&self) -> usize {
        self.max_frame_bytes
    }

    /// Whether history is kept in Redis.
    pub fn keeps_history(&self) -> bool {
        self.history.is_some()
    }

    /// Waits up to `timeout` for the reader's first read of the history,
    /// so that the first clients are answered from it (false: Redis did
    /// not answer in time; positions are then this node's own until it
    /// does, and a client told one of them may be told later it lost
    /// messages, never given a silent gap).
    pub fn wait_history_loaded(&self, timeout: Duration) -> bool {
        let until = Instant::now() + timeout;
        while !self.history_ready.load(Ordering::Acquire) {
            if Instant::now() >= until || self.stopping() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }

    fn queue(
        &self,
        frame: &Bytes,
        channel: Option<&Arc<str>>,
        history: Option<history::Placement>,
    ) -> bool {
        let n = frame.len();
        if self.buffered.fetch_add(n, Ordering::AcqRel) + n > self.limit {
            self.buffered.fetch_sub(n, Ordering::AcqRel);
            self.refused.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        self.outbox.push(Outbound {
            frame: frame.clone(),
            channel: channel.cloned(),
            history,
            control: None,
        });
        true
    }

    /// Queues an operator's disconnect or unsubscribe for the other nodes
    /// (see [`control`]); false when the buffer bound would be passed.
    pub fn try_send_control(&self, op: ControlOp) -> bool {
        let out = Outbound {
            frame: Bytes::new(),
            channel: None,
            history: None,
            control: Some(Arc::new(op)),
        };
        let n = out.size();
        if self.buffered.fetch_add(n, Ordering::AcqRel) + n > self.limit {
            self.buffered.fetch_sub(n, Ordering::AcqRel);
            self.refused.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        self.outbox.push(out);
        self.wake_writer();
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

    /// Subscribers in interest slot `slot` on the other nodes (their last
    /// heartbeats; approximate, see docs/PROTOCOL.md).
    pub fn remote_subscribers(&self, slot: usize) -> u64 {
        u64::from(self.remote_interest.count(slot))
    }

    /// Whether both backplane threads are running (not waiting to be
    /// restarted after a failure).
    pub fn threads_alive(&self) -> bool {
        self.writer_alive.load(Ordering::Relaxed) && self.reader_alive.load(Ordering::Relaxed)
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

    /// The other nodes alive at the last heartbeat read.
    pub fn peers(&self) -> Vec<Peer> {
        lock(&self.peers).clone()
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
            backplane: if !self.threads_alive() {
                "degraded"
            } else if self.is_up() {
                "connected"
            } else {
                "reconnecting"
            },
            buffered_bytes: self.buffered.load(Ordering::Relaxed) as u64,
            bad_entries: self.bad_entries.load(Ordering::Relaxed),
            restarts: self.restarts.load(Ordering::Relaxed),
        }
    }

    /// Starts the writer and reader threads, each under its supervisor,
    /// serving `host`.
    pub fn start(self: &Arc<Cluster>, host: Arc<dyn Host>) -> std::io::Result<()> {
        let mut threads = lock(&self.threads);
        let (c, h) = (self.clone(), host.clone());
        let w = std::thread::Builder::new()
            .name("ringcast-backplane-writer".into())
            .spawn(move || {
                let mut st = Writer::new();
                supervise(&c, "writer", &c.writer_alive, || st.run(&c, &*h));
                st.finish(&c);
            })?;
        let _ = self.writer.set(w.thread().clone());
        threads.push(w);
        let c = self.clone();
        threads.push(
            std::thread::Builder::new()
                .name("ringcast-backplane-reader".into())
                .spawn(move || {
                    let mut st = Reader::new();
                    supervise(&c, "reader", &c.reader_alive, || st.run(&c, &*host));
                })?,
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
        // Full jitter in [wait/2, wait]: nodes that lost Redis together do
        // not all come back in the same instant.
        let backoff = Backoff {
            initial: BACKOFF_FIRST,
            max: BACKOFF_MAX,
            multiplier: 2.0,
            jitter: 0.5,
        };
        let mut rng = Rng::from_entropy();
        let mut attempt = 0;
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
                    attempt += 1;
                    let d = backoff.next_wait(attempt, &mut rng);
                    let until = Instant::now() + d;
                    while Instant::now() < until && !self.stopping() {
                        std::thread::sleep(Duration::from_millis(10).min(d));
                    }
                }
            }
        }
    }
}

/// Runs `run` (a backplane thread's loop, which returns only once the
/// server stops) until the server stops: if it ends otherwise (a panic),
/// the thread is marked down, counted, and `run` is called again after a
/// backoff. The loop's state lives in the caller, so it survives.
fn supervise(c: &Cluster, who: &'static str, alive: &AtomicBool, mut run: impl FnMut()) {
    let mut wait = RESTART_FIRST;
    loop {
        alive.store(true, Ordering::Relaxed);
        let started = Instant::now();
        let r = std::panic::catch_unwind(AssertUnwindSafe(&mut run));
        if c.stopping() {
            return;
        }
        alive.store(false, Ordering::Relaxed);
        c.restarts.fetch_add(1, Ordering::Relaxed);
        let why = match &r {
            Err(p) => p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into()),
            Ok(()) => "it returned before the server stopped".into(),
        };
        if started.elapsed() >= RESTART_RESET {
            wait = RESTART_FIRST;
        }
        tracing::error!(node_id = %c.node_id, thread = who, reason = %why, restart_in = ?wait,
            "backplane thread died; restarting it (the backplane is degraded meanwhile)");
        let until = Instant::now() + wait;
        while Instant::now() < until && !c.stopping() {
            std::thread::sleep(Duration::from_millis(10));
        }
        if c.stopping() {
            return;
        }
        wait = (wait * 2).min(RESTART_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_thread_is_restarted_counted_and_reported_degraded() {
        let c =
            Arc::new(Cluster::new("redis://127.0.0.1:1", "n".into(), 1 << 20, 1 << 20).unwrap());
        let mut runs = 0;
        let c2 = c.clone();
        let seen_degraded = std::thread::scope(|s| {
            let h = s.spawn(|| {
                supervise(&c, "test", &c.reader_alive, || {
                    runs += 1;
                    if runs == 1 {
                        panic!("boom");
                    }
                    // The second run lives until the stop.
                    while !c.stopping() {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                })
            });
            let mut degraded = false;
            let deadline = Instant::now() + Duration::from_secs(10);
            while c2.restarts.load(Ordering::Relaxed) == 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            if c2.figures().backplane == "degraded" {
                degraded = true;
            }
            // Back up after the backoff.
            while !c2.threads_alive() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            c2.stop.store(true, Ordering::SeqCst);
            h.join().unwrap();
            degraded
        });
        assert!(seen_degraded, "down while waiting to restart");
        assert_eq!(c.restarts.load(Ordering::Relaxed), 1);
        assert_eq!(runs, 2);
        assert_ne!(c.figures().backplane, "degraded");
    }
}
