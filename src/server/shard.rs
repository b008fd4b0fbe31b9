//! The shard event loop: one thread, one ring, one listener.
//!
//! Each turn: publish returned receive buffers, start sends for connections
//! that produced output, then one `io_uring_enter` that submits everything
//! and waits; reap completions (accepts, receive chunks parsed in place,
//! send completions), deliver broadcasts from the mailbox, wake other
//! shards. Connections live in a slab; user data names the operation kind,
//! the slot and its generation, so a stale completion can never touch a
//! reused slot.

use super::broadcast::Wake;
use super::config::SMALL_PARTIAL_BYTES;
use super::conn::{Bucket, Conn, Output, Phase, Recv};
use super::stats::{bump, RssReader, ShardCounters};
use super::{ServerError, Shared, WakeMode};
use crate::protocol::frame::{BoundedPool as BufPool, BufferPool};
use crate::protocol::message::{self, StatsReport};
use crate::protocol::{
    parse_request, ErrorCode, FrameDecoder, JsonParser, RequestKind, TimestampCache,
};
use crate::uring::{
    self, pack_user_data as ud, unpack_user_data as ud_parts, BufRing, Completion, SendBatch, Uring,
};
use bytes::Bytes;
use slab::Slab;
use std::net::TcpListener;
use std::ops::ControlFlow;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

// Operation kinds in the top byte of the user data (bit 63 stays clear:
// it belongs to the io_uring layer).
const K_ACCEPT: u64 = 1;
const K_RECV: u64 = 2;
const K_SEND: u64 = 3;
const K_SHUTDOWN: u64 = 4;
const K_CANCEL: u64 = 5;
const K_TICK: u64 = 6;
const K_EVENTFD: u64 = 7;
const K_WAKE: u64 = 8;

/// Pause reading a connection's requests while this much of its output is
/// unsent: TCP flow control then slows the client instead of our memory
/// growing. 1 MiB keeps dozens of large replies in flight.
const HIGH_WATER: usize = 1 << 20;
/// Resume reading when unsent output falls below this.
const LOW_WATER: usize = 256 << 10;
/// Largest spare buffer a shard keeps: a maximum-size frame (1 MiB)
/// straddling receive buffers, after Vec growth.
const POOL_MAX_CAPACITY: usize = 2 << 20;
/// What one pool may hold in all (a shard has two: replies, straddles), so
/// a burst of large messages does not pin memory afterwards.
const POOL_MAX_BYTES: usize = 32 << 20;
/// A reply buffer starts this large (one recv buffer of small replies).
const REPLY_BUF_CAPACITY: usize = 16 << 10;
/// Milliseconds a closing connection may take to flush its last frame, and
/// to linger for the peer's close, before it is cut.
const CLOSE_GRACE_MS: u64 = 2000;
/// Broadcast-only connections flushed per loop turn (see `flush_dirty`).
const PUSH_FLUSH_BUDGET: usize = 64;
/// Fan-out backlog (connections waiting for a broadcast send, on any shard)
/// above which connections that publish are paused like any other
/// backpressure: publishers are slowed to the rate the fan-out sustains,
/// instead of every subscriber's queue (and latency) growing.
const FANOUT_BACKLOG_LIMIT: usize = 4 * PUSH_FLUSH_BUDGET;
/// The shard's housekeeping tick (idle sweep, deadlines, messages/s).
const TICK: Duration = Duration::from_secs(1);

/// Per-turn scratch and per-shard tools used while handling frames.
struct Ctx<'a> {
    shared: &'a Shared,
    counters: &'a ShardCounters,
    parser: JsonParser,
    ts: TimestampCache,
    now_ms: u64,
    /// Milliseconds since the shard started (monotonic), for idle and deadlines.
    now_mono_ms: u64,
    rss: RssReader,
    per_shard: Vec<u64>,
    pool: BufPool,
    /// Broadcast frames produced this turn, with the sender's slot.
    outgoing: Vec<(Bytes, usize)>,
    rate: f64,
    burst: f64,
    /// Time requests into `counters.request_duration` (only when the
    /// metrics endpoint is on: it costs two clock reads per receive chunk).
    time_requests: bool,
}

impl Ctx<'_> {
    fn reply_buf<'o>(pool: &mut BufPool, out: &'o mut Output) -> &'o mut Vec<u8> {
        if out.building.capacity() == 0 {
            out.building = pool
                .take()
                .unwrap_or_else(|| Vec::with_capacity(REPLY_BUF_CAPACITY));
        }
        &mut out.building
    }

    fn recycle(pool: &mut BufPool, v: Vec<u8>) {
        pool.give(v);
    }
}

/// The shard thread's body.
pub(crate) fn run(
    id: usize,
    shared: Arc<Shared>,
    listener: TcpListener,
    wake_fd: OwnedFd,
    core: Option<core_affinity::CoreId>,
    ready: std::sync::mpsc::Sender<Result<uring::Features, ServerError>>,
) {
    if let Some(core) = core {
        if !core_affinity::set_for_current(core) {
            tracing::warn!(
                shard = id,
                core = core.id,
                "could not pin shard to its core"
            );
        }
    }
    let cfg = &shared.config;
    let mut ring = match Uring::new(cfg.ring_entries) {
        Ok(r) => r,
        Err(e) => {
            let _ = ready.send(Err(ServerError::Uring(uring::explain_setup_error(&e))));
            return;
        }
    };
    let bufs = match BufRing::new(&ring, 0, cfg.recv_buffers, cfg.recv_buffer_size) {
        Ok(b) => b,
        Err(e) => {
            let _ = ready.send(Err(ServerError::Uring(format!(
                "cannot register the receive buffer ring ({e}): ringcast needs Linux 6.0 or newer; \
                 if RLIMIT_MEMLOCK is low, raise it (ulimit -l)"
            ))));
            return;
        }
    };
    shared.mailboxes[id].set_ring_fd(ring.fd());
    let use_msg_ring = cfg.wake == WakeMode::MsgRing && ring.features().msg_ring;
    let setup = (|| -> std::io::Result<()> {
        ring.accept_multi(listener.as_raw_fd(), ud(K_ACCEPT, 0, 0))?;
        ring.read_eventfd(wake_fd.as_raw_fd(), ud(K_EVENTFD, 0, 0))?;
        ring.timeout(TICK, ud(K_TICK, 0, 0))?;
        Ok(())
    })();
    if let Err(e) = setup {
        let _ = ready.send(Err(ServerError::Io(e)));
        return;
    }
    let _ = ready.send(Ok(ring.features().clone()));
    drop(ready);

    let rate = cfg.rate_limit as f64;
    let burst = if cfg.rate_burst > 0 {
        cfg.rate_burst as f64
    } else {
        rate
    };
    let mut shard = Shard {
        id,
        ring,
        bufs,
        listener: Some(listener),
        wake_fd,
        conns: Slab::new(),
        next_gen: 1,
        dirty: Vec::new(),
        dirty_pushes: std::collections::VecDeque::new(),
        fanout_paused: Vec::new(),
        batches: Vec::new(),
        straddle_pool: BufPool::new(POOL_MAX_CAPACITY, POOL_MAX_BYTES),
        partial_bytes: 0,
        wake_targets: vec![None; shared.shards],
        use_msg_ring,
        stopping: false,
        stop_deadline: 0,
        accept_armed: true,
        last_tick_messages: 0,
        warn_budget: WarnBudget::default(),
        ctx: Ctx {
            shared: &shared,
            counters: &shared.counters[id],
            parser: JsonParser::new(),
            ts: TimestampCache::new(),
            now_ms: crate::protocol::time::unix_ms_now(),
            now_mono_ms: 0,
            rss: RssReader::new(),
            per_shard: Vec::with_capacity(shared.shards),
            pool: BufPool::new(POOL_MAX_CAPACITY, POOL_MAX_BYTES),
            outgoing: Vec::new(),
            rate,
            burst,
            time_requests: cfg.metrics_addr.is_some(),
        },
    };
    if let Err(e) = shard.run() {
        shard
            .ctx
            .shared
            .failed_shards
            .fetch_add(1, Ordering::SeqCst);
        tracing::error!(shard = id, error = %e, "shard stopped on an I/O error");
    }
}

struct Shard<'a> {
    id: usize,
    ring: Uring,
    bufs: BufRing,
    listener: Option<TcpListener>,
    wake_fd: OwnedFd,
    conns: Slab<Conn>,
    next_gen: u32,
    /// Connections with new replies this turn (all flushed each turn).
    dirty: Vec<usize>,
    /// Connections with only broadcasts to send (flushed round robin).
    dirty_pushes: std::collections::VecDeque<usize>,
    /// Publishers paused until the fan-out backlog drains.
    fanout_paused: Vec<usize>,
    /// Spare send batches (they keep their iovec and msghdr allocations).
    batches: Vec<SendBatch>,
    /// Spare straddle buffers for frames that cross receive buffers (the
    /// reply buffers have their own pool in `ctx`: both are in use at once).
    straddle_pool: BufPool,
    /// Capacity of the straddle buffers this shard's connections hold (the
    /// partial frames `max_partial_bytes` budgets); mirrored in the
    /// `partial_frame_bytes` gauge.
    partial_bytes: usize,
    /// Shards to wake at the end of this turn.
    wake_targets: Vec<Option<std::os::fd::RawFd>>,
    use_msg_ring: bool,
    stopping: bool,
    stop_deadline: u64,
    accept_armed: bool,
    last_tick_messages: u64,
    /// Caps the warnings a flood of misbehaving clients can write.
    warn_budget: WarnBudget,
    ctx: Ctx<'a>,
}

/// Connection-ending warnings allowed per shard per second.
const WARNINGS_PER_SEC: u32 = 20;

/// Lets through at most [`WARNINGS_PER_SEC`] warnings a second; the next
/// allowed line reports how many were held back.
#[derive(Debug, Default)]
struct WarnBudget {
    second: u64,
    used: u32,
    suppressed: u64,
}

impl WarnBudget {
    /// `Some(suppressed since the last allowed warning)` if one may be
    /// logged now.
    fn allow(&mut self, now_mono_ms: u64) -> Option<u64> {
        let second = now_mono_ms / 1000;
        if second != self.second {
            self.second = second;
            self.used = 0;
        }
        if self.used >= WARNINGS_PER_SEC {
            self.suppressed += 1;
            return None;
        }
        self.used += 1;
        Some(std::mem::take(&mut self.suppressed))
    }

    /// The warnings held back in a second that has ended (so that a flood
    /// which stops still gets its count logged, from the 1 s tick).
    fn take_stale(&mut self, now_mono_ms: u64) -> Option<u64> {
        if self.suppressed > 0 && now_mono_ms / 1000 != self.second {
            self.used = 0;
            self.second = now_mono_ms / 1000;
            return Some(std::mem::take(&mut self.suppressed));
        }
        None
    }
}

impl Shard<'_> {
    fn run(&mut self) -> std::io::Result<()> {
        let started = Instant::now();
        let mut cqes: Vec<Completion> = Vec::with_capacity(1024);
        loop {
            self.flush_dirty()?;
            self.update_fanout()?;
            self.bufs.commit();
            if self.dirty_pushes.is_empty() {
                self.ring.submit_and_wait(1)?;
            } else {
                // Broadcast sends still to start: submit and reap without sleeping.
                self.ring.submit_and_wait_timeout(1, Duration::ZERO)?;
            }
            // The clock is read once per turn: every response in the batch
            // carries this turn's timestamp.
            self.ctx.now_ms = crate::protocol::time::unix_ms_now();
            self.ctx.now_mono_ms = started.elapsed().as_millis() as u64;
            self.ring.drain(&mut cqes);
            for c in cqes.drain(..) {
                self.complete(c)?;
            }
            self.deliver_broadcasts();
            if self.ctx.shared.stop.load(Ordering::Relaxed) && !self.stopping {
                self.begin_stop()?;
            }
            if self.stopping
                && (self.conns.is_empty()
                    || self.ctx.now_mono_ms > self.stop_deadline + CLOSE_GRACE_MS)
            {
                break;
            }
        }
        self.finish()
    }

    /// Dispatches one completion.
    fn complete(&mut self, c: Completion) -> std::io::Result<()> {
        let (kind, gen, key) = ud_parts(c.user_data);
        match kind {
            K_ACCEPT => self.on_accept(&c)?,
            K_RECV => self.on_recv(&c, gen, key)?,
            K_SEND => self.on_send(c, gen, key)?,
            K_SHUTDOWN | K_CANCEL => self.op_done(gen, key),
            K_TICK => self.on_tick()?,
            K_EVENTFD => {
                if !self.stopping || !self.conns.is_empty() {
                    self.ring
                        .read_eventfd(self.wake_fd.as_raw_fd(), ud(K_EVENTFD, 0, 0))?;
                }
            }
            K_WAKE => {
                // Our own MSG_RING failed (success posts nothing here): fall
                // back to the target's eventfd so the wake-up is not lost.
                if c.result < 0 {
                    tracing::debug!(
                        target_shard = key,
                        error = c.result,
                        "MSG_RING failed; waking by eventfd"
                    );
                    if let Some(mb) = self.ctx.shared.mailboxes.get(key) {
                        mb.wake_external();
                    }
                }
                // On the receiving side the mailbox is drained every turn.
            }
            _ => {
                if let Some(bid) = c.buffer_id() {
                    self.bufs.give_back(bid);
                }
            }
        }
        Ok(())
    }

    fn conn_mut(&mut self, gen: u32, key: usize) -> Option<&mut Conn> {
        self.conns.get_mut(key).filter(|c| c.gen & 0xff_ffff == gen)
    }

    fn on_accept(&mut self, c: &Completion) -> std::io::Result<()> {
        if !c.more() {
            self.accept_armed = false;
        }
        if c.result < 0 {
            let e = std::io::Error::from_raw_os_error(-c.result);
            if !self.stopping {
                tracing::warn!(shard = self.id, error = %e, "accept failed; retrying at the next tick");
            }
            return Ok(());
        }
        let stream = uring::accepted_stream(c.result);
        if self.stopping {
            return Ok(()); // dropped: closed at once
        }
        if !self.accept_armed {
            if let Some(l) = &self.listener {
                self.ring.accept_multi(l.as_raw_fd(), ud(K_ACCEPT, 0, 0))?;
                self.accept_armed = true;
            }
        }
        let peer = match stream.peer_addr() {
            Ok(p) => p,
            Err(_) => return Ok(()), // already gone
        };
        let _ = stream.set_nodelay(true);
        let shared = self.ctx.shared;
        let cfg = &shared.config;
        bump(&self.ctx.counters.total_connections, 1);
        let total = shared.connections.fetch_add(1, Ordering::AcqRel) + 1;
        let mut full = total > cfg.max_connections;
        let mut ip_slot = false;
        if !full && cfg.max_connections_per_ip > 0 {
            let mut m = shared.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            let n = m.entry(peer.ip()).or_insert(0);
            if *n >= cfg.max_connections_per_ip {
                full = true;
            } else {
                *n += 1;
                ip_slot = true;
            }
        }
        let gen = self.next_gen;
        self.next_gen = self.next_gen.wrapping_add(1) & 0xff_ffff;
        let conn = Conn {
            stream,
            gen,
            client_id: peer.to_string().into_boxed_str(),
            ip: peer.ip(),
            decoder: FrameDecoder::new(cfg.max_frame_bytes),
            out: Output::default(),
            inflight: 0,
            send_inflight: false,
            recv: Recv::Done,
            recv_inflight: false,
            ops: 0,
            phase: Phase::Open,
            last_active: self.ctx.now_mono_ms,
            authed: cfg.auth_token.is_none(),
            established: false,
            ip_slot,
            dirty: false,
            push_dirty: false,
            fanout_paused: false,
            bucket: Bucket::full(self.ctx.burst, self.ctx.now_ms),
        };
        let key = self.conns.insert(conn);
        if full {
            let msg = if total > cfg.max_connections {
                "the server is at its connection limit"
            } else {
                "too many connections from your address"
            };
            tracing::debug!(shard = self.id, peer = %peer, "{msg}");
            self.fail(key, ErrorCode::ServerFull, msg);
            return Ok(());
        }
        let conn = &mut self.conns[key];
        if conn.authed {
            conn.established = true;
            bump(&self.ctx.counters.connected, 1);
        }
        tracing::debug!(shard = self.id, client_id = %conn.client_id, "connection opened");
        self.arm_recv(key)
    }

    fn arm_recv(&mut self, key: usize) -> std::io::Result<()> {
        let conn = &mut self.conns[key];
        let fd = conn.fd();
        let u = ud(K_RECV, conn.gen, key);
        conn.recv = Recv::Armed;
        conn.recv_inflight = true;
        conn.ops += 1;
        self.ring.recv_multi(fd, self.bufs.group(), u)
    }

    fn on_recv(&mut self, c: &Completion, gen: u32, key: usize) -> std::io::Result<()> {
        let Some(conn) = self.conn_mut(gen, key) else {
            if let Some(bid) = c.buffer_id() {
                self.bufs.give_back(bid);
            }
            return Ok(());
        };
        let ended = !c.more();
        if ended {
            conn.ops -= 1;
            conn.recv_inflight = false;
        }
        if c.result > 0 {
            let Some(bid) = c.buffer_id() else {
                return Ok(());
            };
            let n = c.result as usize;
            bump(&self.ctx.counters.bytes_received, n as u64);
            self.on_data(key, bid, n);
        }
        let Some(conn) = self.conns.get_mut(key) else {
            return Ok(());
        };
        if !ended {
            return Ok(());
        }
        match c.result {
            // Out of receive buffers: they are returned every turn, so simply re-arm.
            r if r == -libc::ENOBUFS => {
                if conn.recv == Recv::Armed && conn.phase != Phase::Closing {
                    conn.recv = Recv::Done;
                    return self.arm_recv(key);
                }
                // Paused stays paused (maybe_resume re-arms it); otherwise done.
                if conn.recv != Recv::Paused {
                    conn.recv = Recv::Done;
                }
            }
            r if r > 0 => {
                // The multishot ended after data (cancelled for backpressure, or the kernel stopped it).
                if conn.recv == Recv::Armed && conn.phase != Phase::Closing {
                    conn.recv = Recv::Done;
                    return self.arm_recv(key);
                }
                if conn.recv != Recv::Paused {
                    conn.recv = Recv::Done;
                }
            }
            r if r == -libc::ECANCELED => {
                if conn.recv != Recv::Paused {
                    conn.recv = Recv::Done;
                }
            }
            0 => {
                // The peer closed its side: answer what was asked, then close.
                conn.recv = Recv::Done;
                if conn.decoder.in_frame() {
                    tracing::debug!(client_id = %conn.client_id, "peer closed in the middle of a frame");
                }
                match conn.phase {
                    Phase::Open => self.close_after_flush(key),
                    // Still flushing our last frame: finish that, then close.
                    Phase::Draining { .. } => self.after_flush(key),
                    // The peer read our FIN and closed: nothing left to wait for.
                    Phase::Lingering { .. } => self.abort(key),
                    Phase::Closing => {}
                }
            }
            _ => {
                conn.recv = Recv::Done;
                self.abort(key);
            }
        }
        self.maybe_free(key);
        self.maybe_resume(key)
    }

    /// Handles `n` received bytes in buffer `bid` for connection `key`.
    fn on_data(&mut self, key: usize, bid: u16, n: usize) {
        let conn = &mut self.conns[key];
        if conn.phase != Phase::Open {
            // Closing: input is read only so the socket can close cleanly.
            self.bufs.give_back(bid);
            return;
        }
        let published_before = self.ctx.outgoing.len();
        // The budget for partial frames: this connection's straddle buffer
        // may grow to what the shard's other partial frames leave of
        // `max_partial_bytes`, and always to SMALL_PARTIAL_BYTES.
        let held = conn.decoder.buffered_capacity();
        let others = self.partial_bytes - held;
        let max_capacity = self
            .ctx
            .shared
            .config
            .max_partial_bytes
            .saturating_sub(others)
            .max(SMALL_PARTIAL_BYTES);
        // Request timing (metrics on): two clock reads per receive chunk,
        // not two per request; see `DurationHistogram::record_batch`.
        let started = self.ctx.time_requests.then(Instant::now);
        let mut frames = 0u64;
        let ctx = &mut self.ctx;
        let mut close: Option<(ErrorCode, &'static str)> = None;
        let result = self.bufs.with_buf(bid, n, |chunk| {
            let Conn {
                decoder,
                out,
                client_id,
                authed,
                established,
                bucket,
                last_active,
                ..
            } = conn;
            let straddle_pool = &mut self.straddle_pool;
            decoder.feed_bounded(chunk, straddle_pool, max_capacity, |payload| {
                // Activity is a complete frame, not a byte: a client that
                // trickles a frame (slowloris) is idle until it completes one.
                *last_active = ctx.now_mono_ms;
                let flow = handle_frame(ctx, key, payload, out, client_id, authed, bucket);
                frames += 1;
                if let ControlFlow::Break(reason) = flow {
                    close = Some(reason);
                    return ControlFlow::Break(());
                }
                if *authed && !*established {
                    *established = true;
                    bump(&ctx.counters.connected, 1);
                }
                ControlFlow::Continue(())
            })
        });
        let now_held = self.conns[key].decoder.buffered_capacity();
        self.set_partial(held, now_held);
        if let (Some(t0), 1..) = (started, frames) {
            let ns = t0.elapsed().as_nanos() as u64;
            self.ctx.counters.request_duration.record_batch(ns, frames);
        }
        if let Err(e) = result {
            let code = e.code();
            let msg = match code {
                ErrorCode::EmptyFrame => "frame length must not be zero",
                ErrorCode::ServerFull => {
                    tracing::debug!(
                        shard = self.id,
                        client_id = %self.conns[key].client_id,
                        error = %e,
                        partial_bytes = self.partial_bytes,
                        "partial frame over the shard's max_partial_bytes budget"
                    );
                    "server input buffer budget exhausted; retry later"
                }
                _ => "frame length exceeds the server's max_frame_bytes",
            };
            self.fail(key, code, msg);
            return;
        }
        if let Some((code, msg)) = close {
            self.fail(key, code, msg);
            return;
        }
        self.mark_dirty(key);
        let published = self.ctx.outgoing.len() > published_before;
        let fanout_full = published && self.fanout_busy();
        let conn = &mut self.conns[key];
        if fanout_full && conn.recv == Recv::Armed {
            conn.fanout_paused = true;
            self.fanout_paused.push(key);
        }
        if (conn.pending() > HIGH_WATER || fanout_full) && conn.recv == Recv::Armed {
            // Backpressure: stop taking this client's requests until its
            // replies drain (or the fan-out catches up). TCP flow control
            // slows the client meanwhile.
            conn.recv = Recv::Paused;
            conn.ops += 1;
            let (target, cancel) = (ud(K_RECV, conn.gen, key), ud(K_CANCEL, conn.gen, key));
            if self.ring.cancel(target, cancel).is_err() {
                self.conns[key].ops -= 1;
            }
        }
    }

    /// Records that a connection's straddle buffer went from `before` to
    /// `after` bytes of capacity.
    fn set_partial(&mut self, before: usize, after: usize) {
        if before != after {
            self.partial_bytes = self.partial_bytes - before + after;
            self.ctx
                .counters
                .partial_frame_bytes
                .store(self.partial_bytes as u64, Ordering::Relaxed);
        }
    }

    /// Drops the partial frame of a connection that stops reading requests
    /// (its buffer goes back to the pool) and releases its share of the
    /// budget at once rather than when the slot is freed.
    fn release_partial(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        let held = conn.decoder.buffered_capacity();
        if held > 0 {
            conn.decoder.reset(&mut self.straddle_pool);
            self.set_partial(held, 0);
        }
    }

    fn mark_dirty(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        if !conn.dirty && conn.out.len() > 0 {
            conn.dirty = true;
            self.dirty.push(key);
        }
    }

    /// Sends an error that ends the connection: flush it, then close.
    fn fail(&mut self, key: usize, code: ErrorCode, msg: &str) {
        let conn = &mut self.conns[key];
        let buf = Ctx::reply_buf(&mut self.ctx.pool, &mut conn.out);
        message::write_error(buf, None, code, msg, None);
        self.ctx.counters.error(code);
        if code == ErrorCode::SlowConsumer {
            bump(&self.ctx.counters.slow_consumer_disconnects, 1);
        }
        if code == ErrorCode::ShuttingDown {
            tracing::debug!(client_id = %conn.client_id, "{msg}");
        } else if let Some(suppressed) = self.warn_budget.allow(self.ctx.now_mono_ms) {
            tracing::warn!(
                shard = self.id,
                client_id = %conn.client_id,
                code = code.as_str(),
                pending = conn.pending(),
                suppressed,
                "closing connection: {msg}"
            );
        }
        self.close_after_flush(key);
        self.mark_dirty(key);
    }

    /// Stops serving; closes once the output is flushed (bounded by a deadline).
    fn close_after_flush(&mut self, key: usize) {
        let now = self.ctx.now_mono_ms;
        let conn = &mut self.conns[key];
        if conn.phase != Phase::Open {
            return;
        }
        conn.phase = Phase::Draining {
            deadline: now + CLOSE_GRACE_MS,
        };
        self.release_partial(key);
        self.unestablish(key);
        self.after_flush(key);
    }

    fn unestablish(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        if conn.established {
            conn.established = false;
            let c = &self.ctx.counters.connected;
            c.store(
                c.load(Ordering::Relaxed).saturating_sub(1),
                Ordering::Relaxed,
            );
        }
    }

    /// Called when output may have drained: moves a draining connection on.
    fn after_flush(&mut self, key: usize) {
        let now = self.ctx.now_mono_ms;
        let conn = &mut self.conns[key];
        if let Phase::Draining { .. } = conn.phase {
            if conn.pending() == 0 {
                if conn.recv == Recv::Armed {
                    // Send our FIN, keep reading until the peer closes.
                    conn.phase = Phase::Lingering {
                        deadline: now + CLOSE_GRACE_MS,
                    };
                    let _ = conn.stream.shutdown(std::net::Shutdown::Write);
                } else {
                    self.abort(key);
                }
            }
        }
    }

    /// Closes now: cancels everything in flight; the slot is freed when
    /// the last completion arrives.
    fn abort(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        if conn.phase == Phase::Closing {
            return;
        }
        conn.phase = Phase::Closing;
        let (gen, fd) = (conn.gen, conn.fd());
        let had_ops = conn.ops > 0;
        self.release_partial(key);
        self.unestablish(key);
        let discard = {
            let conn = &mut self.conns[key];
            let mut v = Vec::new();
            conn.out.discard(|b| v.push(b));
            v
        };
        for b in discard {
            Ctx::recycle(&mut self.ctx.pool, b);
        }
        if had_ops {
            // shutdown(2) ends the multishot receive (EOF) and fails a send
            // stuck on a full socket, so every operation completes.
            self.conns[key].ops += 1;
            if self.ring.shutdown(fd, ud(K_SHUTDOWN, gen, key)).is_err() {
                self.conns[key].ops -= 1;
            }
        }
        self.maybe_free(key);
    }

    fn op_done(&mut self, gen: u32, key: usize) {
        if let Some(conn) = self.conn_mut(gen, key) {
            conn.ops -= 1;
            self.maybe_free(key);
        }
    }

    /// Frees the slot of a closing connection once nothing is in flight.
    fn maybe_free(&mut self, key: usize) {
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        if conn.phase != Phase::Closing || conn.ops > 0 {
            return;
        }
        let conn = self.conns.remove(key);
        // Released when it stopped being Open (close_after_flush, abort).
        debug_assert_eq!(conn.decoder.buffered_capacity(), 0);
        let shared = self.ctx.shared;
        shared.connections.fetch_sub(1, Ordering::AcqRel);
        if conn.ip_slot {
            let mut m = shared.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = m.get_mut(&conn.ip) {
                *n -= 1;
                if *n == 0 {
                    m.remove(&conn.ip);
                }
            }
        }
        tracing::debug!(shard = self.id, client_id = %conn.client_id, "connection closed");
        // Dropping the stream closes the descriptor: nothing names it any more.
    }

    /// Starts a send for every connection that has output and none in flight.
    ///
    /// Connections with replies to their own requests are all flushed every
    /// turn. Connections that only received broadcasts are flushed at most
    /// `PUSH_FLUSH_BUDGET` per turn, round robin: a large fan-out then no
    /// longer holds up the loop (and the publisher's acknowledgement) for
    /// hundreds of sends, and the recipients left for a later turn gather
    /// more broadcasts into each send.
    fn flush_dirty(&mut self) -> std::io::Result<()> {
        let mut dirty = std::mem::take(&mut self.dirty);
        for key in dirty.drain(..) {
            if let Some(conn) = self.conns.get_mut(key) {
                conn.dirty = false;
                if !conn.send_inflight && conn.phase != Phase::Closing {
                    let batch = self.batches.pop().unwrap_or_default();
                    self.start_send(key, batch)?;
                }
            }
        }
        self.dirty = dirty;
        let mut budget = PUSH_FLUSH_BUDGET;
        while budget > 0 {
            let Some(key) = self.dirty_pushes.pop_front() else {
                break;
            };
            if let Some(conn) = self.conns.get_mut(key) {
                conn.push_dirty = false;
                if !conn.send_inflight && conn.phase != Phase::Closing && conn.out.len() > 0 {
                    let batch = self.batches.pop().unwrap_or_default();
                    self.start_send(key, batch)?;
                    budget -= 1;
                }
            }
        }
        Ok(())
    }

    /// Moves queued output into `batch` (after what it still holds) and sends it.
    fn start_send(&mut self, key: usize, mut batch: SendBatch) -> std::io::Result<()> {
        let conn = &mut self.conns[key];
        conn.out.seal();
        while batch.segments.len() < uring::MAX_SEND_SEGMENTS {
            let Some(seg) = conn.out.queue.pop_front() else {
                break;
            };
            conn.out.queued -= seg.as_slice().len();
            batch.segments.push_back(seg);
        }
        if batch.segments.is_empty() {
            self.batches.push(batch);
            return Ok(());
        }
        conn.inflight = batch.remaining();
        conn.send_inflight = true;
        conn.ops += 1;
        let (fd, u) = (conn.fd(), ud(K_SEND, conn.gen, key));
        self.ring.send(fd, batch, u)
    }

    fn on_send(&mut self, c: Completion, gen: u32, key: usize) -> std::io::Result<()> {
        let Some(mut batch) = c.send else {
            return Ok(());
        };
        let pool = &mut self.ctx.pool;
        let Some(conn) = self.conns.get_mut(key).filter(|c| c.gen & 0xff_ffff == gen) else {
            batch.advance(usize::MAX, |b| Ctx::recycle(pool, b));
            batch.segments.clear();
            self.batches.push(batch);
            return Ok(());
        };
        conn.ops -= 1;
        conn.send_inflight = false;
        conn.inflight = 0;
        if c.result < 0 || conn.phase == Phase::Closing {
            batch.segments.clear();
            batch.offset = 0;
            self.batches.push(batch);
            if c.result < 0 {
                self.abort(key);
            }
            self.maybe_free(key);
            return Ok(());
        }
        bump(&self.ctx.counters.bytes_sent, c.result as u64);
        batch.advance(c.result as usize, |b| Ctx::recycle(pool, b));
        if !batch.segments.is_empty() || conn.out.len() > 0 {
            // Short send or new output meanwhile: keep going (what is left
            // of the batch goes first, so order is kept).
            self.start_send(key, batch)?;
        } else {
            self.batches.push(batch);
        }
        self.maybe_resume(key)?;
        self.after_flush(key);
        Ok(())
    }

    /// Re-arms the receive of a connection paused for backpressure once its
    /// output has drained below `LOW_WATER` and the old receive has ended.
    /// Called wherever one of those conditions may have just become true.
    fn maybe_resume(&mut self, key: usize) -> std::io::Result<()> {
        let Some(conn) = self.conns.get_mut(key) else {
            return Ok(());
        };
        if conn.recv == Recv::Paused
            && !conn.recv_inflight
            && !conn.fanout_paused
            && conn.is_open()
            && conn.pending() < LOW_WATER
        {
            conn.recv = Recv::Done;
            self.arm_recv(key)?;
        }
        Ok(())
    }

    /// Whether broadcast fan-out is behind on any shard.
    fn fanout_busy(&self) -> bool {
        self.ctx
            .shared
            .mailboxes
            .iter()
            .any(|m| m.backlog() > FANOUT_BACKLOG_LIMIT)
    }

    /// Publishes this shard's fan-out backlog and resumes publishers paused
    /// for fan-out once every shard has caught up.
    fn update_fanout(&mut self) -> std::io::Result<()> {
        let shared = self.ctx.shared;
        let backlog = self.dirty_pushes.len();
        let was = shared.mailboxes[self.id].backlog();
        shared.mailboxes[self.id].set_backlog(backlog);
        if was > FANOUT_BACKLOG_LIMIT && backlog <= FANOUT_BACKLOG_LIMIT {
            // Caught up: shards with paused publishers may be asleep.
            for (i, m) in shared.mailboxes.iter().enumerate() {
                if i != self.id {
                    m.wake_external();
                }
            }
        }
        if self.fanout_paused.is_empty() || self.fanout_busy() {
            return Ok(());
        }
        let mut paused = std::mem::take(&mut self.fanout_paused);
        for key in paused.drain(..) {
            if let Some(conn) = self.conns.get_mut(key) {
                conn.fanout_paused = false;
                self.maybe_resume(key)?;
            }
        }
        self.fanout_paused = paused;
        Ok(())
    }

    /// Delivers this turn's broadcasts: to local connections now, and to
    /// other shards' mailboxes (waking each at most once).
    fn deliver_broadcasts(&mut self) {
        let shared = self.ctx.shared;
        let mut outgoing = std::mem::take(&mut self.ctx.outgoing);
        for (frame, sender) in outgoing.drain(..) {
            for (i, mb) in shared.mailboxes.iter().enumerate() {
                if i != self.id {
                    if let Wake::Ring(fd) = mb.push(frame.clone(), self.use_msg_ring) {
                        self.wake_targets[i] = Some(fd);
                    }
                }
            }
            self.deliver_local(&frame, Some(sender));
        }
        self.ctx.outgoing = outgoing;
        let mailbox = &shared.mailboxes[self.id];
        let mut inbound = Vec::new();
        mailbox.drain(|b| inbound.push(b));
        for frame in inbound {
            self.deliver_local(&frame, None);
        }
        for i in 0..self.wake_targets.len() {
            if let Some(fd) = self.wake_targets[i].take() {
                if self.ring.msg_ring(fd, 0, ud(K_WAKE, 0, i)).is_err() {
                    shared.mailboxes[i].wake_external();
                }
            }
        }
    }

    fn deliver_local(&mut self, frame: &Bytes, except: Option<usize>) {
        let max = self.ctx.shared.config.max_pending_bytes;
        let mut slow = Vec::new();
        let mut delivered = 0;
        for (key, conn) in self.conns.iter_mut() {
            if !conn.established || Some(key) == except {
                continue;
            }
            if conn.pending() + frame.len() > max {
                slow.push(key);
                continue;
            }
            conn.out.push_shared(frame.clone());
            delivered += 1;
            if !conn.push_dirty {
                conn.push_dirty = true;
                self.dirty_pushes.push_back(key);
            }
        }
        bump(&self.ctx.counters.broadcasts_delivered, delivered);
        for key in slow {
            let pool = &mut self.ctx.pool;
            self.conns[key].out.discard(|b| Ctx::recycle(pool, b));
            self.fail(
                key,
                ErrorCode::SlowConsumer,
                "you fell too far behind reading broadcasts",
            );
        }
    }

    fn on_tick(&mut self) -> std::io::Result<()> {
        let total = self.ctx.counters.total_messages();
        self.ctx
            .counters
            .messages_last_second
            .store(total - self.last_tick_messages, Ordering::Relaxed);
        self.last_tick_messages = total;
        if let Some(n) = self.warn_budget.take_stale(self.ctx.now_mono_ms) {
            tracing::warn!(
                shard = self.id,
                suppressed = n,
                "connection warnings suppressed"
            );
        }
        debug_assert_eq!(
            self.conns
                .iter()
                .map(|(_, c)| c.decoder.buffered_capacity())
                .sum::<usize>(),
            self.partial_bytes,
            "partial frame accounting out of step"
        );
        let now = self.ctx.now_mono_ms;
        let idle = self.ctx.shared.config.idle_timeout_secs;
        let mut expired = Vec::new();
        for (key, conn) in self.conns.iter() {
            match conn.phase {
                Phase::Open if idle > 0 && now.saturating_sub(conn.last_active) >= idle * 1000 => {
                    expired.push((key, true))
                }
                Phase::Draining { deadline } | Phase::Lingering { deadline } if now >= deadline => {
                    expired.push((key, false))
                }
                _ => {}
            }
        }
        for (key, idle) in expired {
            if idle {
                tracing::debug!(client_id = %self.conns[key].client_id, "idle timeout");
            }
            self.abort(key);
        }
        if !self.accept_armed && !self.stopping {
            if let Some(l) = &self.listener {
                self.ring.accept_multi(l.as_raw_fd(), ud(K_ACCEPT, 0, 0))?;
                self.accept_armed = true;
            }
        }
        self.ring.timeout(TICK, ud(K_TICK, 0, 0))
    }

    /// Graceful stop: no new connections; every client gets `shutting_down`
    /// and its pending output is flushed within `drain_secs`.
    fn begin_stop(&mut self) -> std::io::Result<()> {
        self.stopping = true;
        self.stop_deadline = self.ctx.now_mono_ms + self.ctx.shared.config.drain_secs * 1000;
        // Stop listening now: shutdown(2) on a listening socket makes the
        // kernel refuse new connections at once (merely dropping it would
        // leave it open while the multishot accept still holds a reference),
        // and the accept completes, so cancel it too.
        if let Some(l) = self.listener.take() {
            let _ = socket2::SockRef::from(&l).shutdown(std::net::Shutdown::Both);
            let _ = self.ring.cancel(
                ud(K_ACCEPT, 0, 0),
                ud(K_CANCEL, 0, usize::MAX & 0xffff_ffff),
            );
        }
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            if self.conns[key].is_open() {
                self.fail(key, ErrorCode::ShuttingDown, "the server is shutting down");
                if let Phase::Draining { .. } = self.conns[key].phase {
                    self.conns[key].phase = Phase::Draining {
                        deadline: self.stop_deadline,
                    };
                }
            }
        }
        Ok(())
    }

    /// After the loop: cut whatever is left and wait briefly for its
    /// operations so no buffer is freed under the kernel.
    fn finish(&mut self) -> std::io::Result<()> {
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.abort(key);
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut cqes = Vec::new();
        while !self.conns.is_empty() && Instant::now() < deadline {
            self.ring.submit_and_wait(1)?;
            self.ring.drain(&mut cqes);
            for c in cqes.drain(..) {
                let (kind, gen, key) = ud_parts(c.user_data);
                match kind {
                    K_RECV => {
                        if let Some(bid) = c.buffer_id() {
                            self.bufs.give_back(bid);
                        }
                        if !c.more() {
                            if let Some(conn) = self.conn_mut(gen, key) {
                                conn.ops -= 1;
                                conn.recv = Recv::Done;
                            }
                            self.maybe_free(key);
                        }
                    }
                    K_SEND => self.on_send(c, gen, key)?,
                    K_SHUTDOWN | K_CANCEL => self.op_done(gen, key),
                    _ => {}
                }
            }
            self.bufs.commit();
        }
        debug_assert!(!self.conns.is_empty() || self.partial_bytes == 0);
        let t = self.ctx.shared.totals(&mut Vec::new());
        tracing::info!(
            shard = self.id,
            total_messages = t.total_messages(),
            total_connections = t.total_connections,
            "shard stopped"
        );
        Ok(())
    }
}

/// Handles one request frame; writes the response into `out`. Returns
/// `Break` with an error to send when the connection must close.
#[allow(clippy::too_many_arguments)]
fn handle_frame(
    ctx: &mut Ctx<'_>,
    key: usize,
    payload: &mut [u8],
    out: &mut Output,
    client_id: &str,
    authed: &mut bool,
    bucket: &mut Bucket,
) -> ControlFlow<(ErrorCode, &'static str)> {
    let shared = ctx.shared;
    let now = ctx.ts.format(ctx.now_ms);
    let counters = ctx.counters;
    let pool = &mut ctx.pool;
    let parser = &mut ctx.parser;
    let outgoing = &mut ctx.outgoing;
    let (rate, burst, now_ms) = (ctx.rate, ctx.burst, ctx.now_ms);
    let rss = &ctx.rss;
    let per_shard = &mut ctx.per_shard;
    parse_request(parser, payload, |r| {
        let buf = Ctx::reply_buf(pool, out);
        let req = match r {
            Ok(req) => req,
            Err(rej) => {
                counters.error(rej.error.code);
                message::write_error(
                    buf,
                    rej.id.as_ref(),
                    rej.error.code,
                    rej.error.message,
                    rej.error.request_type,
                );
                if !*authed {
                    return ControlFlow::Break((
                        ErrorCode::Unauthorized,
                        "the first message must be auth",
                    ));
                }
                return ControlFlow::Continue(());
            }
        };
        if !*authed {
            let token = req.get("token").and_then(|t| t.as_str());
            let expected = shared.config.auth_token.as_deref().unwrap_or("");
            if req.kind == RequestKind::Auth
                && token.is_some_and(|t| constant_time_eq(t.as_bytes(), expected.as_bytes()))
            {
                *authed = true;
                counters.message(RequestKind::Auth);
                message::write_auth_ok(buf, req.id.as_ref());
                return ControlFlow::Continue(());
            }
            return ControlFlow::Break((
                ErrorCode::Unauthorized,
                "the first message must be auth with a valid token",
            ));
        }
        if rate > 0.0 && !bucket.take(rate, burst, now_ms) {
            counters.error(ErrorCode::RateLimited);
            message::write_error(
                buf,
                req.id.as_ref(),
                ErrorCode::RateLimited,
                "rate limit exceeded; slow down",
                Some(req.type_name),
            );
            return ControlFlow::Continue(());
        }
        counters.message(req.kind);
        match req.kind {
            RequestKind::Ping => message::write_pong(buf, &req, now, client_id),
            RequestKind::Echo => message::write_echo_response(buf, &req, now),
            RequestKind::Message => message::write_message_ack(buf, &req, now),
            RequestKind::Auth => message::write_auth_ok(buf, req.id.as_ref()),
            RequestKind::Broadcast => {
                let mut frame = Vec::with_capacity(128);
                message::write_broadcast_message(&mut frame, &req, client_id, now);
                outgoing.push((Bytes::from(frame), key));
                let t = super::stats::Totals::read(&shared.counters, per_shard);
                message::write_broadcast_sent(buf, &req, t.connected.saturating_sub(1), now);
            }
            RequestKind::GetStats => {
                let t = shared.totals(per_shard);
                let by_type: [(&str, u64); 7] =
                    std::array::from_fn(|i| (RequestKind::ALL[i].label(), t.messages[i]));
                let by_code: [(&str, u64); 12] =
                    std::array::from_fn(|i| (ErrorCode::ALL[i].as_str(), t.errors[i]));
                let report = StatsReport {
                    connected_clients: t.connected,
                    uptime_seconds: now_ms.saturating_sub(shared.start_unix_ms) / 1000,
                    total_messages: t.total_messages(),
                    server_start_time: &shared.start_time,
                    current_time: now,
                    shards: shared.shards as u64,
                    total_connections: t.total_connections,
                    messages_by_type: &by_type,
                    bytes_received: t.bytes_received,
                    bytes_sent: t.bytes_sent,
                    broadcasts_delivered: t.broadcasts_delivered,
                    slow_consumer_disconnects: t.slow_consumer_disconnects,
                    protocol_errors: t.protocol_errors(),
                    errors_by_code: &by_code,
                    rss_bytes: rss.rss_bytes(),
                    messages_per_second: t.messages_per_second,
                    connections_per_shard: per_shard,
                    partial_frame_bytes: t.partial_frame_bytes,
                };
                message::write_server_stats(buf, req.id.as_ref(), &report);
            }
            RequestKind::Custom => match shared.handlers.get(req.type_name) {
                Some(h) => h.handle(&req, client_id, now, buf),
                None => {
                    counters.error(ErrorCode::UnknownType);
                    message::write_error(
                        buf,
                        req.id.as_ref(),
                        ErrorCode::UnknownType,
                        "no handler for this message type",
                        Some(req.type_name),
                    );
                }
            },
        }
        ControlFlow::Continue(())
    })
}

/// Compares secrets in time independent of where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u8 | ((a.len() ^ b.len()) >> 8) as u8;
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= x ^ y;
    }
    diff == 0 && a.len() == b.len()
}

#[cfg(test)]
mod warn_budget_tests {
    use super::{WarnBudget, WARNINGS_PER_SEC};

    #[test]
    fn caps_a_second_and_reports_what_it_held_back() {
        let mut w = WarnBudget::default();
        for _ in 0..WARNINGS_PER_SEC {
            assert_eq!(w.allow(5_000), Some(0));
        }
        assert_eq!(w.allow(5_100), None);
        assert_eq!(w.allow(5_999), None);
        // Still the same second: nothing stale to report.
        assert_eq!(w.take_stale(5_999), None);
        // The next allowed warning carries the count ...
        assert_eq!(w.allow(6_000), Some(2));
        // ... or, if the flood stopped, the tick reports it.
        for _ in 0..WARNINGS_PER_SEC {
            w.allow(7_000);
        }
        w.allow(7_001);
        assert_eq!(w.take_stale(8_000), Some(1));
        assert_eq!(w.take_stale(9_000), None);
        assert_eq!(w.allow(9_000), Some(0));
    }
}
