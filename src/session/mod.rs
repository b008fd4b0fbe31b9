//! One connection's protocol state machine, without I/O.
//!
//! A [`Session`] holds no socket, reads no clock and knows no backend or
//! server: the caller feeds it bytes and events, with the time and the
//! settings in [`Env`], and carries out what it asks for; what it needs
//! beyond its connection (deliver a publish, subscribe, a stats snapshot,
//! a custom handler) it asks of the [`Host`] in `Env`. It depends on
//! `protocol` alone (and fills an `io::SendBatch`). It owns every per-connection rule: framing,
//! dispatch, auth, the rate limit, the idle timeout, the drain and linger
//! deadlines, the backpressure water marks, the slow-consumer cut, the
//! partial-frame budget, the phases and the shutdown notice.
//!
//! # Call order
//!
//! Inputs (`handle_*`), any number, in the order events happen:
//! - [`Session::handle_data`]: bytes received (parsed in place);
//! - [`Session::handle_sent`]: a send finished (the batch comes back);
//! - [`Session::handle_eof`] / [`Session::handle_failed`]: the peer closed, or the
//!   connection broke;
//! - [`Session::handle_tick`]: time passed (idle timeout, deadlines);
//! - [`Session::push_broadcast`]: a broadcast or channel frame for this client;
//! - [`Session::begin_shutdown`]: the server is stopping.
//!
//! Then, after each input (the shard does this once per touched session
//! per loop turn), the outputs:
//! - [`Session::wants_read`]: pause or resume reading;
//! - [`Session::poll_action`]: send our FIN, or close, until `None`;
//! - [`Session::poll_transmit`]: a batch of segments to send, at most one
//!   in flight.
//!
//! # Phases
//!
//! `Open` → (framing error, `server_full`, `unauthorized`, `slow_consumer`,
//! shutdown, or peer EOF) → `Draining` (the final frame is flushed; input is
//! read and dropped) → `Lingering` (our FIN is sent; input is read and
//! dropped until the peer closes, so the peer reads our last frame rather
//! than a reset caused by unread input) → `Closed` (the backend closes the
//! socket). Draining and lingering each have a deadline of
//! [`CLOSE_GRACE_MS`] (draining at shutdown: the server's `drain_secs`).
//!
//! # Transports
//!
//! A session speaks plain TCP or TLS ([`Transport`]); the shard does not
//! know which. With TLS ([`tls`]) the bytes of `handle_data` are
//! ciphertext, decrypted before the frame decoder sees them, and
//! `poll_transmit` returns ciphertext. The handshake runs in `Open`: the
//! session is established (counted, receives broadcasts) once it is done,
//! and is cut if it is not done within `tls_handshake_timeout_secs`.
//! close_notify goes out before our FIN, and a peer's close_notify is
//! its EOF.

mod compress;
pub mod config;
pub mod conninfo;
pub mod counters;
mod dispatch;
mod env;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fake;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod grant;
mod handshake;
pub mod host;
mod output;
pub mod tls;
mod token;

pub use config::SessionConfig;
pub use conninfo::ConnStats;
pub use env::Env;
pub use host::{ConnId, Handler, Host, Position, Routed, SubscribeError, Subscribed, WriteMessage};

use crate::io::SendBatch;
use crate::protocol::codec::Codec;
use crate::protocol::{ErrorCode, FrameDecoder, HEADER_LEN};
use bytes::Bytes;
use config::SMALL_PARTIAL_BYTES;
use counters::{bump, unbump};
use dispatch::{handle_frame, Caller};
use output::{reply_buf, Bucket, Output};
use std::ops::ControlFlow;
use tls::{HandshakeFailure, Tls, TlsInput};

/// How a connection's bytes travel.
#[derive(Debug)]
pub enum Transport {
    /// As they are.
    Plain,
    /// Through TLS: the connection rustls made for this client.
    Tls(Box<rustls::ServerConnection>),
}

/// Pause reading a connection's requests while this much of its output is
/// unsent: TCP flow control then slows the client instead of our memory
/// growing. 1 MiB keeps dozens of large replies in flight.
pub const HIGH_WATER: usize = 1 << 20;
/// Resume reading when unsent output falls below this.
pub const LOW_WATER: usize = 256 << 10;
/// Milliseconds a closing connection may take to flush its last frame, and
/// to linger for the peer's close, before it is cut.
pub const CLOSE_GRACE_MS: u64 = 2000;

/// Where a session is in its life (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Serving requests.
    Open,
    /// Flushing a final frame; input is dropped. Cut at `deadline`
    /// (monotonic ms).
    Draining {
        /// When to give up flushing.
        deadline: u64,
    },
    /// Our FIN is sent; input is dropped until the peer closes or `deadline`.
    Lingering {
        /// When to stop waiting for the peer.
        deadline: u64,
    },
    /// Done: the socket is to be (or has been) closed.
    Closed,
}

/// What the session asks the shard to do to its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send our FIN (`shutdown(SHUT_WR)`), keep reading.
    ShutdownWrite,
    /// Close the connection.
    Close,
}

/// One connection's protocol state (see the module doc).
#[derive(Debug)]
pub struct Session {
    /// The shard's name for it (its slab key): tags its broadcasts.
    id: usize,
    /// "ip:port" of the peer, as the seed's client_id.
    client_id: Box<str>,
    decoder: FrameDecoder,
    out: Output,
    /// What a short send left, sent before anything newer.
    leftover: Option<SendBatch>,
    /// Bytes in the batch in flight (0 when none).
    inflight: usize,
    send_inflight: bool,
    phase: Phase,
    /// The peer has closed its side.
    eof: bool,
    /// Monotonic ms of the last complete frame (or of the accept).
    last_active: u64,
    /// Passed authentication (or none is required).
    authed: bool,
    /// Counted in the shard's `connected` gauge; receives broadcasts.
    established: bool,
    bucket: Bucket,
    /// Reading paused for backpressure (output above the high water mark).
    paused: bool,
    /// Reading paused because broadcast fan-out is behind.
    fanout_paused: bool,
    /// `ShutdownWrite` to report.
    want_fin: bool,
    /// `Close` reported.
    close_reported: bool,
    /// The TLS state of a TLS connection (boxed: plain ones pay a pointer).
    tls: Option<Box<Tls>>,
    /// The compression codec negotiated with `hello`, if any.
    codec: Option<Codec>,
    /// `hello` was answered.
    hello_seen: bool,
    /// What `auth` proved: the grant and its expiry.
    cred: token::Credentials,
    /// Counters, user and close reason for the operator ([`conninfo`]).
    stats: ConnStats,
}

impl Session {
    /// A session for a connection just accepted from `client_id`, over
    /// `transport`. With a `refusal` (the server is full) the session only
    /// sends `server_full` with it as the message, and closes. A TLS
    /// connection beyond the shard's `tls_max_handshakes` in progress is
    /// closed at once (counted as a `busy` handshake failure).
    pub fn new<H: Host>(
        env: &mut Env<'_, H>,
        id: usize,
        client_id: Box<str>,
        refusal: Option<&'static str>,
        transport: Transport,
    ) -> Session {
        let authed = !env.config.auth_required();
        let mut s = Session {
            id,
            client_id,
            decoder: FrameDecoder::new(env.config.max_frame_bytes),
            out: Output::default(),
            leftover: None,
            inflight: 0,
            send_inflight: false,
            phase: Phase::Open,
            eof: false,
            last_active: env.now_mono_ms,
            authed,
            established: false,
            bucket: Bucket::full(env.config.rate_burst, env.now_ms),
            paused: false,
            fanout_paused: false,
            want_fin: false,
            close_reported: false,
            tls: None,
            codec: None,
            hello_seen: false,
            cred: token::Credentials::default(),
            stats: ConnStats {
                connected_at_ms: env.now_ms,
                ..ConnStats::default()
            },
        };
        if let Transport::Tls(conn) = transport {
            if env.tls_handshakes >= env.config.tls_max_handshakes {
                s.handshake_failed(env, HandshakeFailure::Busy);
                s.close_now(env);
                return s;
            }
            env.tls_handshakes += 1;
            let deadline = env.now_mono_ms + env.config.tls_handshake_timeout_secs * 1000;
            s.tls = Some(Box::new(Tls::new(*conn, deadline)));
        }
        match refusal {
            Some(msg) => s.fail(env, ErrorCode::ServerFull, msg),
            // A TLS client is established when its handshake is done.
            None if authed && s.tls.is_none() => s.establish(env),
            None => {}
        }
        s
    }

    /// The phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Output not yet acknowledged by the backend, in flight included.
    /// With TLS: plaintext not yet encrypted plus ciphertext not yet sent
    /// (see [`tls`]).
    pub fn pending(&self) -> usize {
        self.out.len()
            + self.inflight
            + self.leftover.as_ref().map_or(0, |b| b.remaining())
            + self.tls.as_ref().map_or(0, |t| t.pending())
    }

    /// Bytes of buffer held by a partial frame.
    pub fn partial_capacity(&self) -> usize {
        self.decoder.buffered_capacity()
    }

    /// Whether it is counted as connected and receives broadcasts.
    pub fn is_established(&self) -> bool {
        self.established
    }

    fn establish<H: Host>(&mut self, env: &mut Env<'_, H>) {
        self.established = true;
        bump(&env.counters.connected, 1);
    }

    fn unestablish<H: Host>(&mut self, env: &mut Env<'_, H>) {
        if self.established {
            self.established = false;
            // A closing connection receives nothing more: its channels go now.
            env.host.drop_subscriptions(self.id);
            unbump(&env.counters.connected);
        }
    }

    // ---- inputs ----

    /// Bytes received. Frames inside `data` are parsed in place; a frame
    /// that continues past it is kept in a straddle buffer, within the
    /// shard's partial-frame budget. Returns the requests handled (the
    /// caller, which owns the clock, times them).
    pub fn handle_data<H: Host>(&mut self, env: &mut Env<'_, H>, data: &mut [u8]) -> u64 {
        bump(&env.counters.bytes_received, data.len() as u64);
        self.stats.bytes_in += data.len() as u64;
        let Some(mut tls) = self.tls.take() else {
            return self.handle_plaintext(env, data, false);
        };
        let mut frames = 0;
        // `self.tls` is out while plaintext is handled: what it holds is
        // not in `pending()` then, so the high-water check is repeated below.
        let handshaking = tls.handshaking;
        let r = tls.receive(env, data, |env, input| {
            match input {
                // Established before the request that came with the
                // client's Finished is dispatched (it may be `get_stats`,
                // which must count its own connection).
                TlsInput::HandshakeDone => self.handshake_finished(env),
                TlsInput::Plain(plain) => frames += self.handle_plaintext(env, plain, true),
            }
            self.phase == Phase::Open
        });
        self.tls = Some(tls);
        if self.phase == Phase::Open && self.pending() > HIGH_WATER {
            self.paused = true;
        }
        if let Some(e) = r.failed {
            if handshaking && !r.handshake_done {
                self.handshake_failed(env, HandshakeFailure::of(&e));
            } else {
                tracing::debug!(client_id = %self.client_id, error = %e, "TLS error");
            }
            // The alert is queued; flush it, then FIN and close. Nothing
            // else may be written after it.
            self.drop_output(env);
            self.close_after_flush(env);
        } else if r.peer_closed {
            self.handle_eof(env);
        }
        frames
    }

    /// Plaintext received (after TLS, if any): parsed in place.
    /// `tls`: whether the bytes came through TLS (`self.tls` is taken out
    /// while they are handled, so it cannot say). Returns the requests
    /// handled.
    fn handle_plaintext<H: Host>(
        &mut self,
        env: &mut Env<'_, H>,
        data: &mut [u8],
        tls: bool,
    ) -> u64 {
        if self.phase != Phase::Open {
            return 0; // closing: input is read only so the socket closes cleanly
        }
        // The budget for partial frames: this connection's straddle buffer
        // may grow to what the shard's other partial frames leave of
        // `max_partial_bytes`, and always to SMALL_PARTIAL_BYTES.
        let held = self.decoder.buffered_capacity();
        let others = env.partial_bytes - held;
        let max_capacity = env
            .config
            .max_partial_bytes
            .saturating_sub(others)
            .max(SMALL_PARTIAL_BYTES);
        let mut frames = 0u64;
        let mut close = None;
        let codec_before = self.codec;
        let Session {
            id,
            client_id,
            decoder,
            out,
            last_active,
            authed,
            bucket,
            established,
            codec,
            hello_seen,
            cred,
            ..
        } = self;
        let mut straddle_pool = std::mem::replace(
            &mut env.straddle_pool,
            crate::protocol::frame::BoundedPool::new(0, 0),
        );
        let result =
            decoder.feed_flagged(data, &mut straddle_pool, max_capacity, |payload, packed| {
                // Activity is a complete frame, not a byte: a client that
                // trickles a frame (slowloris) is idle until it completes one.
                *last_active = env.now_mono_ms;
                // Replies are compressed with the codec in force before this
                // request: `hello_ok` itself always goes plain.
                let reply_codec = *codec;
                let me = Caller {
                    id: *id,
                    client_id,
                    authed,
                    bucket,
                    codec,
                    hello_seen,
                    tls,
                    cred,
                };
                frames += 1;
                let start = out.building.len();
                let flow = match (packed, reply_codec) {
                    // The decoder flags frames only once a codec is in force.
                    (true, Some(c)) => match compress::inflate(env, c, payload) {
                        Ok(mut plain) => {
                            let flow = handle_frame(env, me, &mut plain, out);
                            compress::give_inflate(env, plain);
                            flow
                        }
                        Err((buf, reason)) => {
                            compress::give_inflate(env, buf);
                            ControlFlow::Break(reason)
                        }
                    },
                    _ => handle_frame(env, me, payload, out),
                };
                if let ControlFlow::Break(reason) = flow {
                    close = Some(reason);
                    return ControlFlow::Break(());
                }
                if let Some(c) = reply_codec {
                    compress::pack_replies(env, c, out, start);
                }
                if *authed && !*established {
                    *established = true;
                    bump(&env.counters.connected, 1);
                }
                ControlFlow::Continue(())
            });
        env.straddle_pool = straddle_pool;
        // One answer per request handled (see `ConnStats::msgs_out`).
        self.stats.msgs_in += frames;
        self.stats.msgs_out += frames;
        env.set_partial(held, self.decoder.buffered_capacity());
        if let (None, Some(c)) = (codec_before, self.codec) {
            // Negotiated in this chunk: the client reads hello_ok before it
            // may send a compressed frame, so none came in this chunk.
            self.decoder.accept_compressed();
            bump(&env.counters.compression.connections[c.index()], 1);
        }
        if let Err(e) = result {
            let code = e.code();
            let msg = match code {
                ErrorCode::EmptyFrame => "frame length must not be zero",
                ErrorCode::ServerFull => "server input buffer budget exhausted; retry later",
                _ => "frame length exceeds the server's max_frame_bytes",
            };
            self.fail(env, code, msg);
            return frames;
        }
        if let Some((code, msg)) = close {
            self.fail(env, code, msg);
            return frames;
        }
        if self.pending() > HIGH_WATER {
            // Backpressure: stop taking this client's requests until its
            // replies drain. TCP flow control slows the client meanwhile.
            self.paused = true;
        }
        frames
    }

    /// A send finished: `result` is the bytes sent from `batch`, or the error.
    pub fn handle_sent<H: Host>(
        &mut self,
        env: &mut Env<'_, H>,
        mut batch: SendBatch,
        result: std::io::Result<usize>,
    ) {
        self.send_inflight = false;
        self.inflight = 0;
        let n = match result {
            Ok(n) if self.phase != Phase::Closed => n,
            Ok(_) => {
                env.spare_batch(batch);
                return;
            }
            Err(_) => {
                env.spare_batch(batch);
                self.close_now(env);
                return;
            }
        };
        bump(&env.counters.bytes_sent, n as u64);
        self.stats.bytes_out += n as u64;
        let pool = &mut env.pool;
        batch.advance(n, |v| {
            drop(crate::protocol::frame::BufferPool::give(pool, v))
        });
        if batch.is_empty() {
            env.spare_batch(batch);
        } else {
            self.leftover = Some(batch);
        }
        if self.paused && self.pending() < LOW_WATER {
            self.paused = false;
        }
        self.after_flush(env);
    }

    /// The peer closed its side: answer what was asked, then close.
    pub fn handle_eof<H: Host>(&mut self, env: &mut Env<'_, H>) {
        if self.eof {
            return; // close_notify came first, then the FIN
        }
        self.eof = true;
        self.stats.closing(conninfo::reason::PEER_CLOSED);
        if self.tls.as_ref().is_some_and(|t| t.handshaking) {
            self.handshake_failed(env, HandshakeFailure::Eof);
        }
        if self.decoder.in_frame() {
            tracing::debug!(client_id = %self.client_id, "peer closed in the middle of a frame");
        }
        match self.phase {
            Phase::Open => self.close_after_flush(env),
            // Still flushing our last frame: finish that, then close.
            Phase::Draining { .. } => self.after_flush(env),
            // The peer read our FIN and closed: nothing left to wait for.
            Phase::Lingering { .. } => self.close_now(env),
            Phase::Closed => {}
        }
    }

    /// The connection broke: close at once.
    pub fn handle_failed<H: Host>(&mut self, env: &mut Env<'_, H>) {
        self.eof = true;
        self.stats.closing(conninfo::reason::PEER_CLOSED);
        if self.tls.as_ref().is_some_and(|t| t.handshaking) {
            self.handshake_failed(env, HandshakeFailure::Eof);
        }
        self.close_now(env);
    }

    /// Time passed (the shard calls this once a second): the idle timeout,
    /// the drain and linger deadlines, and the token's expiry. Returns
    /// true if it closed or queued a frame (`token_expired`).
    pub fn handle_tick<H: Host>(&mut self, env: &mut Env<'_, H>) -> bool {
        let now = env.now_mono_ms;
        if self.phase == Phase::Open && self.tick_token(env) {
            return true;
        }
        let idle = env.config.idle_timeout_secs;
        if let (Phase::Open, Some(t)) = (self.phase, &self.tls) {
            if t.handshaking && now >= t.deadline {
                // A slow-loris on the handshake: no alert, nothing to flush.
                self.handshake_failed(env, HandshakeFailure::Timeout);
                self.close_now(env);
                return true;
            }
        }
        let expired = match self.phase {
            Phase::Open => {
                let idle = idle > 0 && now.saturating_sub(self.last_active) >= idle * 1000;
                if idle {
                    tracing::debug!(client_id = %self.client_id, "idle timeout");
                    self.stats.closing(conninfo::reason::IDLE_TIMEOUT);
                }
                idle
            }
            Phase::Draining { deadline } | Phase::Lingering { deadline } => now >= deadline,
            Phase::Closed => false,
        };
        if expired {
            self.close_now(env);
        }
        expired
    }

    /// A broadcast or channel frame for this client: `plain`, serialised
    /// once for every recipient, and `packed`, the same compressed once per
    /// codec where that paid (by [`Codec::index`]); `frames`: the messages
    /// in it (a gathered run holds several). A client that has
    /// fallen more than `max_pending_bytes` behind is cut with
    /// `slow_consumer` instead. Returns whether the frame was queued.
    pub fn push_broadcast<H: Host>(
        &mut self,
        env: &mut Env<'_, H>,
        plain: &Bytes,
        packed: &[Option<Bytes>; Codec::COUNT],
        frames: u64,
    ) -> bool {
        if !self.established {
            return false;
        }
        let frame = self
            .codec
            .and_then(|c| packed[c.index()].as_ref())
            .unwrap_or(plain);
        if self.pending() + frame.len() > env.config.max_pending_bytes {
            self.drop_output(env);
            self.fail(
                env,
                ErrorCode::SlowConsumer,
                "you fell too far behind reading broadcasts",
            );
            return false;
        }
        if !std::ptr::eq(frame, plain) {
            // The shared compressed frame.
            env.counters
                .compression
                .frame_out(plain.len() - HEADER_LEN, frame.len() - HEADER_LEN);
        }
        self.out.push_shared(frame.clone());
        self.stats.msgs_out += frames;
        true
    }

    /// The server is stopping: `shutting_down` is sent and flushed by
    /// `deadline` (monotonic ms).
    pub fn begin_shutdown<H: Host>(&mut self, env: &mut Env<'_, H>, deadline: u64) {
        if self.phase == Phase::Open {
            self.fail(env, ErrorCode::ShuttingDown, "the server is shutting down");
            if let Phase::Draining { .. } = self.phase {
                self.phase = Phase::Draining { deadline };
            }
        }
    }

    /// Reading is paused while broadcast fan-out is behind (see the shard).
    pub fn set_fanout_paused(&mut self, paused: bool) {
        self.fanout_paused = paused;
    }

    /// Closes at once (the server's final cut).
    pub fn abort<H: Host>(&mut self, env: &mut Env<'_, H>) {
        self.close_now(env);
    }

    // ---- outputs ----

    /// Whether the connection should be read: not while paused for
    /// backpressure or fan-out; while closing, until the peer's EOF (input
    /// is dropped, so the peer never gets a reset for unread data).
    pub fn wants_read(&self) -> bool {
        match self.phase {
            Phase::Open => !self.paused && !self.fanout_paused,
            Phase::Draining { .. } | Phase::Lingering { .. } => !self.eof,
            Phase::Closed => false,
        }
    }

    /// The next thing to do to the connection, if any.
    pub fn poll_action(&mut self) -> Option<Action> {
        if self.want_fin {
            self.want_fin = false;
            return Some(Action::ShutdownWrite);
        }
        if self.phase == Phase::Closed && !self.close_reported {
            self.close_reported = true;
            return Some(Action::Close);
        }
        None
    }

    /// Whether [`Session::poll_transmit`] would return a batch.
    pub fn wants_send(&self) -> bool {
        !self.send_inflight
            && self.phase != Phase::Closed
            && (self.leftover.is_some()
                || match &self.tls {
                    None => self.out.len() > 0,
                    // Handshake messages flow before any request.
                    Some(t) => t.has_output(&self.out),
                })
    }

    /// A batch to send, if there is output and no send in flight: what a
    /// short send left first, then queued replies and broadcasts in order.
    pub fn poll_transmit<H: Host>(&mut self, env: &mut Env<'_, H>) -> Option<SendBatch> {
        if !self.wants_send() {
            return None;
        }
        let batch = match self.leftover.take() {
            Some(b) => b,
            None => {
                let mut b = env.batch();
                match &mut self.tls {
                    None => self.out.fill(&mut b),
                    Some(t) => t.fill(env, &mut self.out, &mut b),
                }
                b
            }
        };
        if batch.is_empty() {
            env.spare_batch(batch);
            return None;
        }
        self.inflight = batch.remaining();
        self.send_inflight = true;
        Some(batch)
    }

    // ---- transitions ----

    /// Sends an error that ends the connection: flush it, then close.
    fn fail<H: Host>(&mut self, env: &mut Env<'_, H>, code: ErrorCode, msg: &str) {
        self.stats.closing(conninfo::reason_of(code));
        let buf = reply_buf(&mut env.pool, &mut self.out);
        crate::protocol::message::write_error(buf, None, code, msg, None);
        env.counters.error(code);
        if code == ErrorCode::SlowConsumer {
            bump(&env.counters.slow_consumer_disconnects, 1);
        }
        if code == ErrorCode::ShuttingDown {
            tracing::debug!(client_id = %self.client_id, "{msg}");
        } else if let Some(suppressed) = env.warn_budget.allow(env.now_mono_ms) {
            tracing::warn!(
                shard = env.shard,
                client_id = %self.client_id,
                code = code.as_str(),
                pending = self.pending(),
                partial_bytes = env.partial_bytes,
                suppressed,
                "closing connection: {msg}"
            );
        }
        self.close_after_flush(env);
    }

    /// Stops serving; closes once the output is flushed (bounded by a deadline).
    fn close_after_flush<H: Host>(&mut self, env: &mut Env<'_, H>) {
        if self.phase != Phase::Open {
            return;
        }
        self.phase = Phase::Draining {
            deadline: env.now_mono_ms + CLOSE_GRACE_MS,
        };
        self.release_partial(env);
        self.unestablish(env);
        self.after_flush(env);
    }

    /// Moves a draining session on once its output has gone.
    fn after_flush<H: Host>(&mut self, env: &mut Env<'_, H>) {
        if let Phase::Draining { .. } = self.phase {
            if self.pending() == 0 {
                // TLS: close_notify before the FIN, so the peer can tell
                // our end from a truncation.
                if self.tls.as_mut().is_some_and(|t| t.close()) {
                    return; // after_flush again once it is sent
                }
                if self.eof {
                    self.close_now(env);
                } else {
                    // Send our FIN, keep reading until the peer closes.
                    self.phase = Phase::Lingering {
                        deadline: env.now_mono_ms + CLOSE_GRACE_MS,
                    };
                    self.want_fin = true;
                }
            }
        }
    }

    fn close_now<H: Host>(&mut self, env: &mut Env<'_, H>) {
        if self.phase == Phase::Closed {
            return;
        }
        self.phase = Phase::Closed;
        self.want_fin = false;
        if let Some(c) = self.codec {
            unbump(&env.counters.compression.connections[c.index()]);
        }
        self.release_partial(env);
        self.unestablish(env);
        if let Some(t) = &mut self.tls {
            if t.handshaking {
                t.handshaking = false;
                env.tls_handshakes -= 1;
            }
        }
        self.drop_output(env);
        if let Some(t) = &mut self.tls {
            let pool = &mut env.pool;
            t.discard_cipher(|b| drop(crate::protocol::frame::BufferPool::give(pool, b)));
        }
        if let Some(b) = self.leftover.take() {
            env.spare_batch(b);
        }
    }

    /// Drops the output not yet handed to the backend (TLS: encrypted or
    /// not), recycling its buffers.
    fn drop_output<H: Host>(&mut self, env: &mut Env<'_, H>) {
        let pool = &mut env.pool;
        let mut recycle = |b| drop(crate::protocol::frame::BufferPool::give(pool, b));
        self.out.discard(&mut recycle);
        if let Some(t) = &mut self.tls {
            t.discard_plain(&mut recycle);
        }
    }

    /// Drops the partial frame of a session that stops reading requests
    /// and releases its share of the budget at once.
    fn release_partial<H: Host>(&mut self, env: &mut Env<'_, H>) {
        let held = self.decoder.buffered_capacity();
        if held > 0 {
            self.decoder.reset(&mut env.straddle_pool);
            env.set_partial(held, 0);
        }
    }
}
