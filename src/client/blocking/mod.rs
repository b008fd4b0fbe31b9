//! [`Client`], the blocking client: requests, the receiver thread,
//! heartbeat and reconnection.

use super::connection::Reply;
use super::connection::{establish, Conn, Established, Failure};
use super::frames::FrameReader;
use super::{
    ClientBuilder, ClientConfig, ClientError, Codec, Event, LostReason, Message, Result,
    ServerHello,
};
use crate::protocol::{time::unix_ms_now, ErrorCode, ServerStats, TimestampCache};
use crate::random::Rng;
use crate::sync::{lock, read, wait_timeout, write};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex, OnceLock, RwLock};
use std::thread::{self, JoinHandle, ThreadId};
use std::time::{Duration, Instant};

mod refresh;
mod resume;

type Callback = Arc<dyn Fn(&Event) + Send + Sync>;

#[derive(Debug, Clone, PartialEq)]
enum Phase {
    Connected,
    Reconnecting,
    /// Lost, and not coming back (no policy, or attempts spent).
    Dead(String),
    /// Closed by [`Client::disconnect`].
    Closed,
}

struct State {
    phase: Phase,
    conn: Option<Arc<Conn>>,
}

struct Inner {
    cfg: ClientConfig,
    addrs: Vec<SocketAddr>,
    state: Mutex<State>,
    changed: Condvar,
    next_id: AtomicU64,
    callback: RwLock<Option<Callback>>,
    subscribers: Mutex<Vec<SyncSender<Event>>>,
    dropped_events: AtomicU64,
    io_thread: OnceLock<ThreadId>,
    /// The channels this connection holds, each with its position on a
    /// history channel (the last offset received, and the epoch). Written
    /// by the receiver thread only, in the order frames arrive, so a
    /// position is never older than what was delivered.
    channels: Mutex<HashMap<String, Option<(u64, String)>>>,
    /// Subscribes sent after a reconnection, whose answers say recovered
    /// or lost: (channel, the answer).
    resubscribing: Mutex<Vec<(String, Receiver<Reply>)>>,
    /// The current connection's token expiry (Unix seconds), from
    /// `auth_ok` or the last `refreshed`; see `refresh`.
    expires_at: Mutex<Option<u64>>,
}

/// A connection to a ringcast server. See the [module docs](super).
///
/// All methods take `&self`: share one `Client` between threads (by
/// reference or in an `Arc`) and their requests are multiplexed over the one
/// connection. Dropping it is [`Client::disconnect`].
pub struct Client {
    inner: Arc<Inner>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("addrs", &self.inner.addrs)
            .field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A builder, to set timeouts, auth, heartbeat and reconnection.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::new()
    }

    /// Connects with the default [`ClientConfig`].
    pub fn connect(addr: impl ToSocketAddrs) -> Result<Client> {
        Self::connect_with(addr, ClientConfig::default())
    }

    /// Connects with `config`: TCP connect within `connect_timeout`, then
    /// `auth` when a token is set. Reconnections go to the same addresses.
    pub fn connect_with(addr: impl ToSocketAddrs, config: ClientConfig) -> Result<Client> {
        let addrs: Vec<SocketAddr> = addr.to_socket_addrs()?.collect();
        Self::connect_addrs(addrs, config, false)
    }

    /// Connects; with `verify` (and no token) a ping must be answered
    /// before the client is returned.
    pub(crate) fn connect_addrs(
        addrs: Vec<SocketAddr>,
        cfg: ClientConfig,
        verify: bool,
    ) -> Result<Client> {
        if addrs.is_empty() {
            return Err(ClientError::InvalidArgument(
                "the address resolved to nothing".into(),
            ));
        }
        let next_id = AtomicU64::new(1);
        let est = establish(&addrs, &cfg, &next_id, verify)?;
        let inner = Arc::new(Inner {
            cfg,
            addrs,
            state: Mutex::new(State {
                phase: Phase::Connected,
                conn: Some(est.conn.clone()),
            }),
            changed: Condvar::new(),
            next_id,
            callback: RwLock::new(None),
            subscribers: Mutex::new(Vec::new()),
            dropped_events: AtomicU64::new(0),
            io_thread: OnceLock::new(),
            channels: Mutex::new(HashMap::new()),
            resubscribing: Mutex::new(Vec::new()),
            expires_at: Mutex::new(est.expires_at),
        });
        let mut threads = Vec::new();
        let i = inner.clone();
        threads.push(
            thread::Builder::new()
                .name("ringcast-client-rx".into())
                .spawn(move || io_main(i, est))?,
        );
        if let Some(every) = inner.cfg.heartbeat_interval {
            let i = inner.clone();
            threads.push(
                thread::Builder::new()
                    .name("ringcast-client-hb".into())
                    .spawn(move || heartbeat_main(i, every))?,
            );
        }
        if inner.cfg.token_provider.is_some() {
            let i = inner.clone();
            threads.push(
                thread::Builder::new()
                    .name("ringcast-client-token".into())
                    .spawn(move || refresh::refresh_main(i))?,
            );
        }
        Ok(Client {
            inner,
            threads: Mutex::new(threads),
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.cfg
    }

    /// The server addresses (as resolved at connect time).
    pub fn server_addrs(&self) -> &[SocketAddr] {
        &self.inner.addrs
    }

    /// The local address of the current connection.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        lock(&self.inner.state).conn.as_ref()?.local_addr()
    }

    /// The compression codec negotiated on the current connection (None:
    /// not asked for, refused, an older server, or not connected). Each
    /// reconnection negotiates again.
    pub fn compression(&self) -> Option<Codec> {
        self.server_hello().and_then(|h| h.compression)
    }

    /// What the server said in `hello_ok` on the current connection (None
    /// without compression configured, from a server from before `hello`,
    /// or while not connected).
    pub fn server_hello(&self) -> Option<ServerHello> {
        lock(&self.inner.state).conn.as_ref()?.hello().cloned()
    }

    /// Whether a live connection is up right now.
    pub fn is_connected(&self) -> bool {
        let st = lock(&self.inner.state);
        st.phase == Phase::Connected && st.conn.as_ref().is_some_and(|c| !c.is_dead())
    }

    /// Sets the callback for unsolicited messages and connection events,
    /// replacing any earlier one. It runs on the receiver thread, in order.
    pub fn set_message_callback<F>(&self, f: F)
    where
        F: Fn(&Event) + Send + Sync + 'static,
    {
        *write(&self.inner.callback) = Some(Arc::new(f));
    }

    /// Removes the callback.
    pub fn clear_message_callback(&self) {
        *write(&self.inner.callback) = None;
    }

    /// A new receiver of every event from now on (each receiver gets its own
    /// copy). It holds up to [`ClientConfig::event_buffer`] unread events;
    /// past that, new ones are dropped for it. Iterating it ends once the
    /// client is closed or has given up reconnecting.
    pub fn messages(&self) -> Receiver<Event> {
        let (tx, rx) = sync_channel(self.inner.cfg.event_buffer.max(1));
        let closed = matches!(
            lock(&self.inner.state).phase,
            Phase::Closed | Phase::Dead(_)
        );
        if !closed {
            lock(&self.inner.subscribers).push(tx);
        }
        rx
    }

    /// Events dropped because a [`Client::messages`] receiver was full.
    pub fn dropped_events(&self) -> u64 {
        self.inner.dropped_events.load(Ordering::Relaxed)
    }

    /// Sends `ping` and returns the round-trip time.
    pub fn ping(&self) -> Result<Duration> {
        self.ping_timeout(self.inner.cfg.request_timeout)
    }

    fn ping_timeout(&self, timeout: Duration) -> Result<Duration> {
        let mut f = Map::new();
        f.insert("timestamp".into(), Value::from(now_timestamp()));
        f.insert(
            "client_info".into(),
            Value::from(self.inner.cfg.client_info.as_str()),
        );
        let start = Instant::now();
        let m = self.inner.request("ping", &f, timeout)?;
        let rtt = start.elapsed();
        expect_kind(&m, "pong")?;
        Ok(rtt)
    }

    /// Sends `echo` and returns the content the server echoed.
    pub fn echo(&self, content: &str) -> Result<String> {
        let m = self.request_with_content("echo", content)?;
        expect_kind(&m, "echo_response")?;
        match m.get("content") {
            Some(Value::String(s)) => Ok(s.clone()),
            _ => Err(ClientError::Protocol(
                "echo_response without a string content".into(),
            )),
        }
    }

    /// Sends `broadcast` and returns how many other clients it reached.
    pub fn broadcast(&self, content: &str) -> Result<u64> {
        let m = self.request_with_content("broadcast", content)?;
        expect_kind(&m, "broadcast_sent")?;
        m.get_u64("recipients")
            .ok_or_else(|| ClientError::Protocol("broadcast_sent without recipients".into()))
    }

    /// Sends `subscribe` and returns how many channels this connection now
    /// holds. The channel's messages then arrive as [`Event::Message`]s of
    /// kind `channel_message`, to the callback and to [`Client::messages`].
    ///
    /// After an automatic reconnection ([`Event::Reconnected`]) the client
    /// subscribes again to every channel it holds. On a history channel it
    /// asks to `recover` from the last offset it received, and reports
    /// [`Event::Recovered`] (the missed publications follow, in order) or
    /// [`Event::Lost`]; a channel without history is reported lost. A live
    /// gap in offsets or a new epoch is reported lost too, and a
    /// publication received twice is delivered once.
    pub fn subscribe(&self, channel: &str) -> Result<u64> {
        let m = self.channel_request("subscribe", channel, None)?;
        expect_kind(&m, "subscribed")?;
        subscriptions_of(&m)
    }

    /// Sends `unsubscribe` and returns how many channels this connection
    /// still holds (leaving a channel it is not in is no error).
    pub fn unsubscribe(&self, channel: &str) -> Result<u64> {
        let m = self.channel_request("unsubscribe", channel, None)?;
        expect_kind(&m, "unsubscribed")?;
        subscriptions_of(&m)
    }

    /// Sends `publish` and returns how many subscribers it reached (this
    /// client too, if it is subscribed).
    pub fn publish(&self, channel: &str, content: impl Into<Value>) -> Result<u64> {
        let m = self.channel_request("publish", channel, Some(content.into()))?;
        expect_kind(&m, "published")?;
        m.get_u64("recipients")
            .ok_or_else(|| ClientError::Protocol("published without recipients".into()))
    }

    /// A channel request, its name checked here first so that a bad one is
    /// [`ClientError::InvalidArgument`] without a round trip.
    fn channel_request(
        &self,
        type_name: &str,
        channel: &str,
        content: Option<Value>,
    ) -> Result<Message> {
        crate::protocol::message::check_channel(channel)
            .map_err(|why| ClientError::InvalidArgument(why.into()))?;
        let mut f = Map::new();
        f.insert("channel".into(), Value::from(channel));
        if let Some(c) = content {
            f.insert("content".into(), c);
        }
        self.inner
            .request(type_name, &f, self.inner.cfg.request_timeout)
    }

    /// Sends `get_stats` and returns the server's figures.
    pub fn get_stats(&self) -> Result<ServerStats> {
        let mut f = Map::new();
        f.insert("timestamp".into(), Value::from(now_timestamp()));
        let m = self
            .inner
            .request("get_stats", &f, self.inner.cfg.request_timeout)?;
        expect_kind(&m, "server_stats")?;
        serde_json::from_value(m.value)
            .map_err(|e| ClientError::Protocol(format!("bad server_stats: {e}")))
    }

    /// Sends a plain-text `message` and returns the `message_ack`.
    pub fn send_text(&self, text: &str) -> Result<Message> {
        let mut f = Map::new();
        f.insert("content".into(), Value::from(text));
        let m = self
            .inner
            .request("message", &f, self.inner.cfg.request_timeout)?;
        expect_kind(&m, "message_ack")?;
        Ok(m)
    }

    /// Sends a message of any `type` with `fields` (a JSON object, a
    /// `serde_json::Map`, or `Value::Null` for none; `type` and `id` in it
    /// are replaced) and returns the answer, whatever its type. An `error`
    /// answer is [`ClientError::Server`].
    pub fn send_custom(&self, type_name: &str, fields: impl Into<Value>) -> Result<Message> {
        let m = self.request(type_name, fields)?;
        if m.is_error() {
            return Err(m.to_server_error());
        }
        Ok(m)
    }

    /// Like [`Client::send_custom`], but an `error` answer is returned as
    /// the frame it is rather than as an error (for tools that show every
    /// frame).
    pub fn request(&self, type_name: &str, fields: impl Into<Value>) -> Result<Message> {
        let fields = match fields.into() {
            Value::Object(m) => m,
            Value::Null => Map::new(),
            other => {
                return Err(ClientError::InvalidArgument(format!(
                    "custom fields must be a JSON object, not {other}"
                )))
            }
        };
        self.inner
            .request_raw(type_name, &fields, self.inner.cfg.request_timeout)
    }

    fn request_with_content(&self, type_name: &str, content: &str) -> Result<Message> {
        let mut f = Map::new();
        f.insert("content".into(), Value::from(content));
        f.insert("timestamp".into(), Value::from(now_timestamp()));
        self.inner
            .request(type_name, &f, self.inner.cfg.request_timeout)
    }

    /// Closes the connection and stops the background threads. Requests in
    /// flight fail with [`ClientError::Disconnected`], later ones too.
    /// Idempotent; also done on drop.
    pub fn disconnect(&self) {
        let conn = {
            let mut st = lock(&self.inner.state);
            st.phase = Phase::Closed;
            st.conn.take()
        };
        self.inner.changed.notify_all();
        if let Some(c) = conn {
            c.close_notify();
            c.kill("closed by the client");
        }
        let threads = std::mem::take(&mut *lock(&self.threads));
        let me = thread::current().id();
        for t in threads {
            // From the callback, the receiver thread cannot join itself; it
            // sees the Closed phase and ends on its own.
            if t.thread().id() != me {
                let _ = t.join();
            }
        }
        lock(&self.inner.subscribers).clear();
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.disconnect();
    }
}

fn expect_kind(m: &Message, want: &str) -> Result<()> {
    if m.kind() == want {
        Ok(())
    } else {
        Err(ClientError::Protocol(format!(
            "expected {want}, got {:?}",
            m.kind()
        )))
    }
}

fn now_timestamp() -> String {
    TimestampCache::new().format(unix_ms_now()).to_owned()
}

impl Inner {
    /// The live connection, or why there is none (waiting for a
    /// reconnection if so configured).
    fn current_conn(&self, deadline: Instant) -> Result<Arc<Conn>> {
        let mut st = lock(&self.state);
        loop {
            match &st.phase {
                Phase::Connected => {
                    if let Some(c) = &st.conn {
                        return Ok(c.clone());
                    }
                }
                Phase::Closed => {
                    return Err(ClientError::Disconnected {
                        reason: "the client was closed".into(),
                    })
                }
                Phase::Dead(reason) => {
                    return Err(ClientError::Disconnected {
                        reason: reason.clone(),
                    })
                }
                Phase::Reconnecting if !self.cfg.wait_for_reconnect => {
                    return Err(ClientError::Disconnected {
                        reason: "connection lost; reconnecting".into(),
                    })
                }
                Phase::Reconnecting => {}
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ClientError::Timeout(self.cfg.request_timeout));
            }
            st = wait_timeout(&self.changed, st, deadline - now);
        }
    }

    /// Sends a request and waits for its answer; `error` answers are errors.
    fn request(
        &self,
        type_name: &str,
        fields: &Map<String, Value>,
        timeout: Duration,
    ) -> Result<Message> {
        let m = self.request_raw(type_name, fields, timeout)?;
        if m.is_error() {
            return Err(m.to_server_error());
        }
        Ok(m)
    }

    /// Sends a request and waits for its answer, whatever its type.
    fn request_raw(
        &self,
        type_name: &str,
        fields: &Map<String, Value>,
        timeout: Duration,
    ) -> Result<Message> {
        if self.io_thread.get() == Some(&thread::current().id()) {
            return Err(ClientError::InCallback);
        }
        let conn = self.current_conn(Instant::now() + timeout)?;
        let (id, rx) = conn.send(&self.next_id, type_name, fields)?;
        match rx.recv_timeout(timeout) {
            Ok(r) => r,
            Err(RecvTimeoutError::Timeout) => {
                conn.forget(id);
                Err(ClientError::Timeout(timeout))
            }
            Err(RecvTimeoutError::Disconnected) => Err(ClientError::Disconnected {
                reason: "connection lost".into(),
            }),
        }
    }

    fn emit(&self, ev: Event) {
        let cb = read(&self.callback).clone();
        if let Some(cb) = cb {
            // A panicking callback must not take the receiver thread (and
            // with it every waiting request) down.
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cb(&ev)));
            if r.is_err() {
                tracing::error!("the client message callback panicked; event dropped");
            }
        }
        let mut subs = lock(&self.subscribers);
        subs.retain(|tx| match tx.try_send(ev.clone()) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                self.dropped_events.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(TrySendError::Disconnected(_)) => false,
        });
    }

    /// Whether the client was closed by the user.
    fn closed(&self) -> bool {
        lock(&self.state).phase == Phase::Closed
    }

    /// Sleeps up to `d`, waking early if the client is closed. Returns
    /// whether it was closed.
    fn sleep_unless_closed(&self, d: Duration) -> bool {
        let deadline = Instant::now() + d;
        let mut st = lock(&self.state);
        loop {
            if st.phase == Phase::Closed {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            st = wait_timeout(&self.changed, st, deadline - now);
        }
    }

    /// Routes one received frame.
    fn dispatch(&self, conn: &Conn, m: Message) {
        if !self.track_channels(&m) {
            return;
        }
        let Some(m) = conn.route(m) else { return };
        // Our ids are handed out in increasing order: a numeric id we have
        // issued that nobody waits for is a late answer to a request that
        // timed out, not news for the application.
        if let Some(id) = m.get("id").and_then(Value::as_u64) {
            if id < self.next_id.load(Ordering::Relaxed) {
                tracing::debug!(id, "dropping a late answer");
                return;
            }
        }
        self.emit(Event::Message(m));
    }
}

fn subscriptions_of(m: &Message) -> Result<u64> {
    m.get_u64("subscriptions")
        .ok_or_else(|| ClientError::Protocol(format!("{} without subscriptions", m.kind())))
}

/// The receiver thread: reads and routes frames; on loss, reports it and
/// reconnects per the policy.
fn io_main(inner: Arc<Inner>, first: Established) {
    let _ = inner.io_thread.set(thread::current().id());
    let mut est = first;
    loop {
        let Established {
            conn,
            mut reader,
            early,
            ..
        } = est;
        for m in early {
            inner.emit(Event::Message(m));
        }
        let failure = read_until_dead(&inner, &conn, &mut reader);
        conn.fail_all(&failure);
        let reason = failure.reason();
        drop(reader);
        {
            let mut st = lock(&inner.state);
            if st.phase == Phase::Closed {
                break;
            }
            st.conn = None;
            st.phase = if inner.cfg.reconnect.enabled {
                Phase::Reconnecting
            } else {
                Phase::Dead(reason.clone())
            };
        }
        inner.changed.notify_all();
        tracing::debug!(%reason, "connection lost");
        inner.emit(Event::Disconnected {
            reason: reason.clone(),
        });
        if !inner.cfg.reconnect.enabled {
            break;
        }
        match reconnect(&inner) {
            Reconnect::Up(e, attempt) => {
                {
                    let mut st = lock(&inner.state);
                    if st.phase == Phase::Closed {
                        e.conn.kill("closed by the client");
                        break;
                    }
                    st.phase = Phase::Connected;
                    st.conn = Some(e.conn.clone());
                }
                *lock(&inner.expires_at) = e.expires_at;
                inner.changed.notify_all();
                inner.emit(Event::Reconnected { attempt });
                inner.resubscribe(&e.conn);
                est = *e;
            }
            Reconnect::Closed => break,
            Reconnect::GaveUp(attempts, last_error) => {
                {
                    let mut st = lock(&inner.state);
                    if st.phase != Phase::Closed {
                        st.phase = Phase::Dead(format!(
                            "gave up reconnecting after {attempts} attempts: {last_error}"
                        ));
                    }
                }
                inner.changed.notify_all();
                inner.emit(Event::ReconnectFailed {
                    attempts,
                    last_error,
                });
                break;
            }
        }
    }
    // No more events: end the iterators of `messages()`.
    lock(&inner.subscribers).clear();
}

/// Reads and routes frames until the connection fails; returns why.
///
/// An `error` whose code means the server closes the connection
/// (`shutting_down`, `slow_consumer`, …) ends it here at once: nothing more
/// will be answered, and closing our side lets the server finish sooner.
fn read_until_dead(inner: &Inner, conn: &Conn, reader: &mut FrameReader) -> Failure {
    loop {
        match reader.next_message() {
            Ok(m) => {
                let closing = m
                    .is_error()
                    .then(|| m.get_str("code").and_then(ErrorCode::from_wire))
                    .flatten()
                    .filter(|c| c.closes_connection());
                let reason = closing.map(|code| match code {
                    ErrorCode::ShuttingDown => "the server is shutting down".to_owned(),
                    _ => format!(
                        "the server closed the connection: {code}: {}",
                        m.get_str("message").unwrap_or("")
                    ),
                });
                inner.dispatch(conn, m);
                inner.settle_resubscriptions();
                if let Some(reason) = reason {
                    return Failure::Lost(reason);
                }
            }
            Err(e) => {
                if let Some(r) = conn.kill_reason() {
                    return Failure::Lost(r);
                }
                return Failure::from_error(e);
            }
        }
    }
}

enum Reconnect {
    Up(Box<Established>, u32),
    Closed,
    GaveUp(u32, String),
}

fn reconnect(inner: &Inner) -> Reconnect {
    let policy = &inner.cfg.reconnect;
    let mut rng = Rng::from_entropy();
    let mut last_error = String::from("no attempt made");
    for attempt in 1..=policy.max_attempts {
        let wait = policy.schedule().next_wait(attempt, &mut rng);
        if inner.sleep_unless_closed(wait) {
            return Reconnect::Closed;
        }
        match establish(&inner.addrs, &inner.cfg, &inner.next_id, true) {
            Ok(e) => return Reconnect::Up(Box::new(e), attempt),
            Err(e) => {
                tracing::debug!(attempt, error = %e, "reconnection attempt failed");
                last_error = e.to_string();
            }
        }
    }
    if inner.closed() {
        return Reconnect::Closed;
    }
    Reconnect::GaveUp(policy.max_attempts, last_error)
}

/// The heartbeat thread: pings every `every`; `heartbeat_max_missed` pongs
/// missed in a row kill the connection.
fn heartbeat_main(inner: Arc<Inner>, every: Duration) {
    let every = every.max(Duration::from_millis(1));
    let max_missed = inner.cfg.heartbeat_max_missed.max(1);
    let mut missed = 0u32;
    let mut conn_seen: Option<Arc<Conn>> = None;
    let mut just_missed = false;
    loop {
        // After a missed pong the interval has already passed while waiting.
        if !std::mem::take(&mut just_missed) && inner.sleep_unless_closed(every) {
            return;
        }
        let conn = {
            let st = lock(&inner.state);
            match (&st.phase, &st.conn) {
                (Phase::Closed, _) => return,
                (Phase::Connected, Some(c)) => c.clone(),
                _ => continue,
            }
        };
        if !conn_seen.as_ref().is_some_and(|c| Arc::ptr_eq(c, &conn)) {
            missed = 0;
            conn_seen = Some(conn.clone());
        }
        let mut f = Map::new();
        f.insert("timestamp".into(), Value::from(now_timestamp()));
        f.insert(
            "client_info".into(),
            Value::from(inner.cfg.client_info.as_str()),
        );
        let sent = match conn.send(&inner.next_id, "ping", &f) {
            Ok(s) => s,
            Err(_) => continue,
        };
        match sent.1.recv_timeout(every) {
            Ok(_) => missed = 0,
            Err(RecvTimeoutError::Timeout) => {
                conn.forget(sent.0);
                missed += 1;
                just_missed = true;
                tracing::debug!(missed, "heartbeat pong missed");
                if missed >= max_missed {
                    conn.kill(&format!(
                        "heartbeat: {missed} pongs missed (interval {every:?})"
                    ));
                    missed = 0;
                }
            }
            Err(RecvTimeoutError::Disconnected) => {}
        }
    }
}
