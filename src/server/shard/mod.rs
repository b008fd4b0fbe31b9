//! The shard event loop: one thread, one backend, its listeners (plain,
//! and TLS when on).
//!
//! Each turn: start sends for sessions with output, publish the fan-out
//! backlog, then one [`Backend::poll`] that submits everything and waits;
//! its events go to the sessions; broadcasts produced in the turn go to the
//! local sessions and the other shards' mailboxes; then every session that
//! changed is asked what it wants (read or pause, FIN, close, send). The
//! rules live in [`Session`]; this file only moves bytes and runs fan-out.

mod control;
mod fanout;

use super::admission::Admission;
use super::{ServerError, Shared, WakeMode};
use crate::io::{Backend, Event, ListenerId, Options, Token};
use crate::route::{Delivery, ShardRoute};
use crate::session::{Action, Env, Session, Transport};
use slab::Slab;
use std::collections::VecDeque;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Broadcast-only connections flushed per loop turn (see `flush`). Short
/// turns let the publisher's next broadcasts in sooner; broadcast 1 →
/// 1,000 (issue 15, medians of 3 alternated): 4 gave 0.88–1.09 M
/// deliveries/s against 0.50 M for 64, at the same p99 (65–73 ms); 1 and 2
/// were no better than 4, 16 was 0.62 M.
const PUSH_FLUSH_BUDGET: usize = 4;
/// The shard's housekeeping tick (idle sweep, deadlines, messages/s).
const TICK: Duration = Duration::from_secs(1);
/// At stop, how long to wait for the backend to finish with connections.
const FINISH_WAIT: Duration = Duration::from_secs(2);

/// A session and the shard's bookkeeping for it.
struct Entry {
    session: Session,
    /// Reading as last told to the backend.
    reading: bool,
    /// In `touched` this turn.
    touched: bool,
    /// In `dirty` (replies to flush this turn).
    dirty: bool,
    /// In `pushes` (broadcasts to flush, round robin).
    push_dirty: bool,
    /// Admitted: holds a connection slot to release at close.
    admitted: Admission,
}

/// The shard thread's body.
pub(crate) fn run(
    id: usize,
    shared: Arc<Shared>,
    listeners: Vec<(TcpListener, ListenerId)>,
    wake_fd: OwnedFd,
    core: Option<core_affinity::CoreId>,
    ready: std::sync::mpsc::Sender<Result<String, ServerError>>,
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
    let opts = Options {
        recv_buffers: cfg.recv_buffers,
        recv_buffer_size: cfg.recv_buffer_size,
        ring_entries: cfg.ring_entries,
    };
    let mut backend = match Backend::new(shared.io_backend, &opts, Some(wake_fd.as_raw_fd())) {
        Ok(b) => b,
        Err(e) => {
            let _ = ready.send(Err(ServerError::Backend(e.explanation)));
            return;
        }
    };
    if cfg.wake == WakeMode::MsgRing {
        if let Some(fd) = backend.ring_fd() {
            shared.router.mailboxes[id].set_ring_fd(fd);
        }
    }
    for (listener, lid) in listeners {
        if let Err(e) = backend.listen(listener, lid) {
            let _ = ready.send(Err(ServerError::Io(e)));
            return;
        }
    }
    let _ = ready.send(Ok(backend.features()));
    drop(ready);
    let mut session_config = cfg.session_config(shared.cluster().is_some());
    session_config.verifier = shared.verifier.clone();
    let mut env = Env::new(
        session_config,
        id,
        &shared.router.counters[id],
        ShardRoute::new(&shared.router, id),
        cfg.tls_addr.is_some(),
    );
    env.now_ms = crate::protocol::time::unix_ms_now();
    let mut shard = Shard {
        id,
        shared: &shared,
        time_requests: cfg.http_addr.is_some(),
        backend,
        _wake_fd: wake_fd,
        sessions: Slab::new(),
        env,
        touched: Vec::new(),
        dirty: Vec::new(),
        pushes: VecDeque::new(),
        fanout_seq: 0,
        run: Vec::new(),
        run_except: None,
        fanout_paused: Vec::new(),
        added: Vec::new(),
        recipients: Vec::new(),
        wake_targets: vec![None; shared.shards],
        stopping: false,
        stop_deadline: 0,
        next_tick: 0,
        last_tick_messages: 0,
        closed: VecDeque::new(),
    };
    if let Err(e) = shard.run() {
        shared.failed_shards.fetch_add(1, Ordering::SeqCst);
        tracing::error!(shard = id, error = %e, "shard stopped on an I/O error");
    }
}

/// The session environment of a shard: its sessions talk to its router.
type ShardEnv<'a> = Env<'a, ShardRoute<'a>>;

struct Shard<'a> {
    id: usize,
    shared: &'a Shared,
    /// Time requests (only when the metrics endpoint is on: two clock
    /// reads per receive chunk).
    time_requests: bool,
    backend: Backend,
    /// Kept open for as long as the backend may read it.
    _wake_fd: OwnedFd,
    sessions: Slab<Entry>,
    env: ShardEnv<'a>,
    /// Sessions that had an input this turn, to ask what they want.
    touched: Vec<usize>,
    /// Sessions with replies to their own requests (all flushed each turn).
    dirty: Vec<usize>,
    /// Sessions with only broadcasts to send (flushed round robin), each
    /// with the value of `fanout_seq` when it joined: the front is the
    /// recipient waiting longest, and `fanout_seq` minus its mark is how
    /// many deliveries it has waited through (the fan-out depth).
    pushes: VecDeque<(usize, u64)>,
    /// Deliveries queued to this shard's sessions so far.
    fanout_seq: u64,
    /// Small broadcasts being gathered this turn, and the session they
    /// skip (their sender; `None` for other shards' broadcasts).
    run: Vec<Delivery>,
    run_except: Option<usize>,
    /// Publishers paused until the fan-out backlog drains.
    fanout_paused: Vec<usize>,
    /// Connections accepted during the poll, handed to the backend after it.
    added: Vec<(usize, std::net::TcpStream)>,
    /// Recipients of the delivery being queued (kept for its capacity).
    recipients: Vec<usize>,
    /// Rings of shards to wake at the end of this turn.
    wake_targets: Vec<Option<std::os::fd::RawFd>>,
    stopping: bool,
    stop_deadline: u64,
    /// Monotonic ms of the next housekeeping tick.
    next_tick: u64,
    last_tick_messages: u64,
    /// Connections closed lately, for the operator's listing (see
    /// `control`).
    closed: VecDeque<crate::route::control::ConnSnapshot>,
}

impl Shard<'_> {
    fn run(&mut self) -> std::io::Result<()> {
        let started = Instant::now();
        let tick_ms = TICK.as_millis() as u64;
        self.next_tick = tick_ms;
        loop {
            self.flush()?;
            self.update_fanout();
            if !self.touched.is_empty() {
                // Publishers the fan-out just let go: resume their reading
                // now, not after a poll that may sleep until the next tick.
                self.settle()?;
            }
            let timeout = if self.pushes.is_empty() {
                Duration::from_millis(self.next_tick.saturating_sub(self.env.now_mono_ms))
            } else {
                Duration::ZERO // broadcast sends still to start: do not sleep
            };
            self.poll(Some(timeout))?;
            // The clock is read once per turn: every response in the batch
            // carries this turn's timestamp.
            self.env.now_ms = crate::protocol::time::unix_ms_now();
            self.env.now_mono_ms = started.elapsed().as_millis() as u64;
            self.deliver_broadcasts();
            self.serve_control();
            if self.env.now_mono_ms >= self.next_tick {
                self.next_tick = self.env.now_mono_ms + tick_ms;
                self.on_tick()?;
            }
            if self.shared.stop.load(Ordering::Relaxed) && !self.stopping {
                self.begin_stop();
            }
            self.settle()?;
            if self.stopping
                && (self.sessions.is_empty()
                    || self.env.now_mono_ms > self.stop_deadline + crate::session::CLOSE_GRACE_MS)
            {
                break;
            }
        }
        self.finish()
    }

    /// One backend poll: events go to their sessions.
    fn poll(&mut self, timeout: Option<Duration>) -> std::io::Result<()> {
        let Shard {
            backend,
            sessions,
            env,
            touched,
            added,
            stopping,
            id,
            shared,
            time_requests,
            closed,
            ..
        } = self;
        let shared: &Shared = shared;
        let time_requests = *time_requests;
        // The turn's clock is read after the poll, but the poll may have
        // slept (up to a tick): requests in it read the wall clock once,
        // at the first event, or their timestamps and history TTLs would
        // be as old as the sleep.
        let mut clock_read = false;
        backend.poll(timeout, |ev| {
            if !clock_read {
                clock_read = true;
                env.now_ms = crate::protocol::time::unix_ms_now();
            }
            let key = match ev {
                Event::Accepted(stream, lid) => {
                    if *stopping {
                        return; // dropped: closed at once
                    }
                    if let Some(key) = accept(*id, shared, sessions, env, &stream, lid) {
                        added.push((key, stream));
                        touch(sessions, touched, key);
                    }
                    return;
                }
                Event::AcceptFailed(e) => {
                    tracing::warn!(shard = *id, error = %e, "accept failed; retrying at the next tick");
                    return;
                }
                Event::Closed(Token(key)) => {
                    let e = sessions.remove(key);
                    control::remember_closed(closed, *id, env, key, &e);
                    e.admitted.release(shared);
                    tracing::debug!(shard = *id, client_id = %e.session.client_id(), "connection closed");
                    return;
                }
                Event::Data(Token(key), data) => {
                    // Request timing (metrics on): two clock reads per
                    // receive chunk, not two per request; see
                    // `DurationHistogram::record_batch`. The shard reads
                    // the clock; the session never does.
                    let started = time_requests.then(std::time::Instant::now);
                    let frames = sessions[key].session.handle_data(env, data);
                    if let (Some(t0), 1..) = (started, frames) {
                        let ns = t0.elapsed().as_nanos() as u64;
                        env.counters.request_duration.record_batch(ns, frames);
                    }
                    key
                }
                Event::Eof(Token(key)) => {
                    sessions[key].session.handle_eof(env);
                    key
                }
                Event::Failed(Token(key), _) => {
                    sessions[key].session.handle_failed(env);
                    key
                }
                Event::Sent(Token(key), batch, r) => {
                    sessions[key].session.handle_sent(env, batch, r);
                    key
                }
            };
            touch(sessions, touched, key);
        })?;
        for (key, stream) in self.added.drain(..) {
            self.backend.add(Token(key), stream)?;
        }
        Ok(())
    }

    /// Asks every touched session what it wants and tells the backend.
    fn settle(&mut self) -> std::io::Result<()> {
        let mut touched = std::mem::take(&mut self.touched);
        for key in touched.drain(..) {
            let Some(e) = self.sessions.get_mut(key) else {
                continue;
            };
            e.touched = false;
            while let Some(a) = e.session.poll_action() {
                match a {
                    Action::ShutdownWrite => self.backend.shutdown_write(Token(key)),
                    Action::Close => self.backend.close(Token(key))?,
                }
            }
            let want = e.session.wants_read();
            if want != e.reading {
                e.reading = want;
                if e.session.phase() != crate::session::Phase::Closed {
                    self.backend.set_reading(Token(key), want)?;
                }
            }
            if e.session.wants_send() && !e.dirty {
                e.dirty = true;
                self.dirty.push(key);
            }
        }
        self.touched = touched;
        Ok(())
    }

    /// Starts a send for every session that has output and none in flight.
    ///
    /// Sessions with replies to their own requests are all flushed every
    /// turn. Sessions that only received broadcasts are flushed at most
    /// `PUSH_FLUSH_BUDGET` per turn, round robin: a large fan-out then no
    /// longer holds up the loop (and the publisher's acknowledgement) for
    /// hundreds of sends, and the recipients left for a later turn gather
    /// more broadcasts into each send.
    fn flush(&mut self) -> std::io::Result<()> {
        let mut dirty = std::mem::take(&mut self.dirty);
        for key in dirty.drain(..) {
            if let Some(e) = self.sessions.get_mut(key) {
                e.dirty = false;
                if let Some(batch) = e.session.poll_transmit(&mut self.env) {
                    self.backend.send(Token(key), batch)?;
                }
            }
        }
        self.dirty = dirty;
        let mut budget = PUSH_FLUSH_BUDGET;
        while budget > 0 {
            let Some((key, _)) = self.pushes.pop_front() else {
                break;
            };
            if let Some(e) = self.sessions.get_mut(key) {
                e.push_dirty = false;
                if let Some(batch) = e.session.poll_transmit(&mut self.env) {
                    self.backend.send(Token(key), batch)?;
                    budget -= 1;
                }
            }
        }
        Ok(())
    }

    fn on_tick(&mut self) -> std::io::Result<()> {
        let counters = self.env.counters;
        let total = counters.total_messages();
        counters
            .messages_last_second
            .store(total - self.last_tick_messages, Ordering::Relaxed);
        self.last_tick_messages = total;
        if let Some(n) = self.env.stale_warnings() {
            tracing::warn!(
                shard = self.id,
                suppressed = n,
                "connection warnings suppressed"
            );
        }
        debug_assert_eq!(
            self.sessions
                .iter()
                .map(|(_, e)| e.session.partial_capacity())
                .sum::<usize>(),
            self.env.partial_bytes(),
            "partial frame accounting out of step"
        );
        for (key, e) in self.sessions.iter_mut() {
            if e.session.handle_tick(&mut self.env) && !e.touched {
                e.touched = true;
                self.touched.push(key);
            }
        }
        self.backend.tick()
    }

    /// Graceful stop: no new connections; every client gets `shutting_down`
    /// and its pending output is flushed within `drain_secs`.
    fn begin_stop(&mut self) {
        self.stopping = true;
        self.stop_deadline = self.env.now_mono_ms + self.shared.config.drain_secs * 1000;
        self.backend.stop_listening();
        for (key, e) in self.sessions.iter_mut() {
            e.session.begin_shutdown(&mut self.env, self.stop_deadline);
            if !e.touched {
                e.touched = true;
                self.touched.push(key);
            }
        }
    }

    /// After the loop: cut whatever is left and wait briefly for the
    /// backend to finish with it, so no buffer is freed under the kernel.
    fn finish(&mut self) -> std::io::Result<()> {
        let keys: Vec<usize> = self.sessions.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.sessions[key].session.abort(&mut self.env);
            touch(&mut self.sessions, &mut self.touched, key);
        }
        self.settle()?;
        let deadline = Instant::now() + FINISH_WAIT;
        while !self.sessions.is_empty() && Instant::now() < deadline {
            self.poll(Some(Duration::from_millis(100)))?;
            self.settle()?;
        }
        debug_assert!(!self.sessions.is_empty() || self.env.partial_bytes() == 0);
        let t = self.shared.totals(&mut Vec::new());
        tracing::info!(
            shard = self.id,
            total_messages = t.total_messages(),
            total_connections = t.total_connections,
            "shard stopped"
        );
        Ok(())
    }
}

/// Marks a session as changed this turn.
fn touch(sessions: &mut Slab<Entry>, touched: &mut Vec<usize>, key: usize) {
    if let Some(e) = sessions.get_mut(key) {
        if !e.touched {
            e.touched = true;
            touched.push(key);
        }
    }
}

/// A new connection: admission, then its session. Returns its key.
fn accept(
    shard: usize,
    shared: &Shared,
    sessions: &mut Slab<Entry>,
    env: &mut ShardEnv<'_>,
    stream: &std::net::TcpStream,
    lid: ListenerId,
) -> Option<usize> {
    let peer = stream.peer_addr().ok()?; // already gone: dropped
    let transport = match (&shared.tls, lid) {
        (Some(acceptor), super::TLS_LISTENER) => match acceptor.accept() {
            Ok(conn) => Transport::Tls(Box::new(conn)),
            Err(e) => {
                // Only an invalid configuration does this, and it was
                // checked at start and at each reload.
                tracing::error!(shard, peer = %peer, error = %e, "cannot start a TLS connection");
                return None;
            }
        },
        _ => Transport::Plain,
    };
    let _ = stream.set_nodelay(true);
    let (admitted, refusal) = Admission::admit(shared, env.counters, peer.ip());
    if let Some(msg) = refusal {
        tracing::debug!(shard, peer = %peer, "{msg}");
    }
    let entry = sessions.vacant_entry();
    let key = entry.key();
    let session = Session::new(
        env,
        key,
        peer.to_string().into_boxed_str(),
        refusal,
        transport,
    );
    tracing::debug!(shard, client_id = %session.client_id(), "connection opened");
    entry.insert(Entry {
        session,
        reading: true,
        touched: false,
        dirty: false,
        push_dirty: false,
        admitted,
    });
    Some(key)
}
