//! A blocking client for ringcast servers (std::net, one background thread).
//!
//! ```no_run
//! use ringcast::client::{Client, Event};
//! use std::time::Duration;
//!
//! let client = Client::builder()
//!     .request_timeout(Duration::from_secs(2))
//!     .heartbeat(Some(Duration::from_secs(5)))
//!     .connect("127.0.0.1:9999")?;
//! client.set_message_callback(|ev: &Event| {
//!     if let Event::Message(m) = ev {
//!         println!("pushed: {}", m.raw);
//!     }
//! });
//! let rtt = client.ping()?;
//! let back = client.echo("hello")?;
//! let n = client.broadcast("hi all")?;
//! let stats = client.get_stats()?;
//! println!("{rtt:?} {back} {n} {}", stats.connected_clients);
//! client.disconnect();
//! # Ok::<(), ringcast::client::ClientError>(())
//! ```
//!
//! # How it works
//!
//! Every request gets a fresh `u64` `id`; the server copies it into the
//! answer. A background receiver thread decodes frames
//! ([`FrameDecoder`](crate::protocol::FrameDecoder), then serde_json: this
//! is not a hot path) and routes each one: an answer goes to the thread
//! waiting for that `id`; anything else (a `broadcast_message`, a
//! `channel_message` of a channel it subscribed to, a pushed
//! `error` such as `shutting_down`) is *unsolicited* and goes, as an
//! [`Event::Message`], to the callback set with
//! [`Client::set_message_callback`] and to every receiver obtained from
//! [`Client::messages`]. So one [`Client`] can be shared by many threads
//! (`&Client` is enough; wrap it in an `Arc` to move it), and a broadcast
//! arriving between a request and its answer is never taken for the answer.
//!
//! The same thread reports [`Event::Disconnected`] and, when a
//! [`ReconnectPolicy`] is enabled, reconnects with exponential backoff and
//! jitter and reports [`Event::Reconnected`] (or
//! [`Event::ReconnectFailed`] once the attempts are spent). After a
//! reconnection it subscribes again to every channel it held: on a history
//! channel with `recover` from the last offset received, then reports
//! [`Event::Recovered`] (the missed publications follow, in order) or
//! [`Event::Lost`] (docs/PROTOCOL.md, *Channel history and recovery*). A
//! request made
//! while the client is not connected fails at once with
//! [`ClientError::Disconnected`], unless
//! [`ClientBuilder::wait_for_reconnect`] is set: then it waits for the
//! reconnection, up to the request timeout.
//!
//! The optional heartbeat pings the server every interval; after
//! `heartbeat_max_missed` pongs in a row fail to arrive within an interval,
//! the connection is declared dead (and reconnected if the policy says so).
//!
//! The callback runs on the receiver thread: keep it short, and do not make
//! requests from it (they would wait for the very thread that must read
//! their answer; they fail with [`ClientError::InCallback`] instead). Use
//! [`Client::messages`] to handle events on a thread of your own.
//!
//! # Compression
//!
//! With [`ClientBuilder::compression`] (codecs in order of preference) every
//! connection, and every reconnection, starts with `hello` (before `auth`):
//! the server picks a codec and says so in `hello_ok`
//! ([`Client::server_hello`]). From then on frames from the server may be
//! compressed (the top bit of the length; see docs/PROTOCOL.md) and are
//! decompressed here, never past [`ClientConfig::max_frame_bytes`]; requests
//! whose payload is over the server's `compression_threshold` go compressed
//! when that saves bytes. A server without the codec (`compression: null`),
//! or one from before `hello` (it answers `unknown_type`, or, when it
//! requires a token, closes with `unauthorized`: the client then connects
//! again without `hello`), is used uncompressed. Do not send `hello` through
//! [`Client::request`] yourself: the reader would not expect compressed
//! frames.
//!
//! Servers that do not copy `id`s (like the Python seed server) still work
//! for one request at a time: an answer without an `id` whose type is a
//! known response type (`pong`, `echo_response`, …) goes to the oldest
//! waiting request.

mod blocking;
mod connection;
pub(crate) mod frames;
pub(crate) mod handshake;
mod pool;
pub mod tls;

pub use crate::protocol::codec::Codec;
pub use blocking::Client;
pub use handshake::ServerHello;
pub use pool::{Pool, PooledClient};
pub use tls::TlsOptions;

use crate::backoff::Backoff;

use crate::protocol::{ErrorCode, DEFAULT_MAX_FRAME_BYTES};
use serde_json::Value;
use std::fmt;
use std::net::ToSocketAddrs;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

/// Default largest response payload the client accepts: 16 MiB.
pub const DEFAULT_CLIENT_MAX_FRAME_BYTES: usize = 16 << 20;

// The client accepts larger frames than the server does (it reads server
// stats and echoes of large payloads), never smaller ones.
const _: () = assert!(DEFAULT_CLIENT_MAX_FRAME_BYTES >= DEFAULT_MAX_FRAME_BYTES);

/// The `code` of a server `error` frame: one of ours, or one this build
/// does not know (a newer server, or another implementation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerCode {
    /// A code of [`ErrorCode`].
    Known(ErrorCode),
    /// Any other string (or `"?"` when the frame had no string code).
    Other(String),
}

impl ServerCode {
    /// Parses a wire code.
    pub fn from_wire(s: &str) -> ServerCode {
        ErrorCode::from_wire(s).map_or_else(|| ServerCode::Other(s.to_owned()), ServerCode::Known)
    }

    /// The known code, if it is one.
    pub fn known(&self) -> Option<ErrorCode> {
        match self {
            ServerCode::Known(c) => Some(*c),
            ServerCode::Other(_) => None,
        }
    }

    /// The wire string.
    pub fn as_str(&self) -> &str {
        match self {
            ServerCode::Known(c) => c.as_str(),
            ServerCode::Other(s) => s,
        }
    }
}

impl fmt::Display for ServerCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything a client call can fail with. Bad bytes from the server are
/// [`ClientError::Protocol`] or [`ClientError::FrameTooLarge`], never a panic.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ClientError {
    /// A socket error (connect refused, reset, …).
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// No answer (or no connection) within the configured time.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// Not connected: closed by [`Client::disconnect`], lost, reconnecting,
    /// or reconnection gave up. Requests in flight when the connection
    /// dropped fail with this too.
    #[error("disconnected: {reason}")]
    Disconnected {
        /// Why, in words.
        reason: String,
    },
    /// The server answered with an `error` frame.
    #[error("server error {code}: {message}")]
    Server {
        /// The `code` field.
        code: ServerCode,
        /// The `message` field.
        message: String,
    },
    /// The server sent something that breaks the protocol (invalid JSON, a
    /// non-object, a truncated or empty frame, an answer of the wrong type).
    /// The connection is dropped when the bytes themselves were bad.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The server announced a frame over the client's `max_frame_bytes`,
    /// or sent a compressed one that inflates past it.
    #[error("server frame of {len} bytes exceeds the client limit of {max} bytes")]
    FrameTooLarge {
        /// Announced payload length (a compressed frame's: `max + 1`, as
        /// decompression stops there).
        len: u64,
        /// The configured limit.
        max: usize,
    },
    /// An argument the protocol cannot carry (e.g. custom fields that are
    /// not a JSON object).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A request was made from the message callback, which runs on the
    /// thread that reads answers: it could never complete.
    #[error("requests cannot be made from the message callback (use Client::messages)")]
    InCallback,
    /// [`Pool::get`] found no free client within its wait.
    #[error("no pooled client free within {0:?}")]
    PoolExhausted(Duration),
}

impl ClientError {
    /// The server error code, when this is a [`ClientError::Server`].
    pub fn server_code(&self) -> Option<&ServerCode> {
        match self {
            ClientError::Server { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Whether the error means the connection is unusable (as opposed to
    /// one request failing).
    pub fn is_disconnect(&self) -> bool {
        matches!(
            self,
            ClientError::Io(_)
                | ClientError::Disconnected { .. }
                | ClientError::Protocol(_)
                | ClientError::FrameTooLarge { .. }
        )
    }
}

/// Result alias of the client.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// One received frame: the parsed object and the payload text as received.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// The parsed JSON object.
    pub value: Value,
    /// The payload as it came off the wire (UTF-8 JSON).
    pub raw: String,
}

impl Message {
    /// The `type` field (`""` when absent).
    pub fn kind(&self) -> &str {
        self.value.get("type").and_then(Value::as_str).unwrap_or("")
    }

    /// A field.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.value.get(key)
    }

    /// A string field.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.value.get(key).and_then(Value::as_str)
    }

    /// A non-negative integer field.
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.value.get(key).and_then(Value::as_u64)
    }

    /// Whether this is an `error` frame.
    pub fn is_error(&self) -> bool {
        self.kind() == "error"
    }

    /// This `error` frame as a [`ClientError::Server`].
    pub fn to_server_error(&self) -> ClientError {
        ClientError::Server {
            code: ServerCode::from_wire(self.get_str("code").unwrap_or("?")),
            message: self.get_str("message").unwrap_or("").to_owned(),
        }
    }
}

/// What the receiver thread reports to the callback and to
/// [`Client::messages`] receivers, in the order it happened.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// An unsolicited frame: a `broadcast_message`, a `channel_message`, an `error` pushed by the
    /// server (`shutting_down`, `slow_consumer`, …) or any frame that
    /// answers no request of this client.
    Message(Message),
    /// The connection was lost (not reported for [`Client::disconnect`]).
    Disconnected {
        /// Why, in words.
        reason: String,
    },
    /// A new connection is up (and authenticated) after a loss.
    Reconnected {
        /// Which attempt succeeded, from 1.
        attempt: u32,
    },
    /// Reconnection gave up; the client stays disconnected.
    ReconnectFailed {
        /// Attempts made.
        attempts: u32,
        /// The last attempt's error.
        last_error: String,
    },
    /// After a reconnection the client subscribed to `channel` again with
    /// `recover`, and the server replays every publication missed: they
    /// follow as [`Event::Message`]s, in order, before any live one.
    Recovered {
        /// The channel.
        channel: String,
    },
    /// Publications of `channel` may have been missed (see [`LostReason`]).
    /// The subscription goes on from the channel's latest position.
    Lost {
        /// The channel.
        channel: String,
        /// How the loss was found.
        reason: LostReason,
    },
}

/// Why [`Event::Lost`] was reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LostReason {
    /// After a reconnection the channel was subscribed again and the server
    /// could not replay what was missed (`recovered: false`: trimmed,
    /// another epoch, too many, or a channel without history).
    Reconnect,
    /// A live `channel_message` skipped offsets.
    Gap,
    /// A live `channel_message` came in another epoch (the server's store
    /// of the channel's history was lost meanwhile).
    Epoch,
}

/// When and how to reconnect after a lost connection.
///
/// The `n`-th attempt (from 1) waits `min(initial_backoff * multiplier^(n-1),
/// max_backoff)`, less a random share of up to `jitter` of it (so `jitter =
/// 0.5` waits between half and all of it), so that many clients cut by one
/// server restart do not all come back in the same instant.
#[derive(Debug, Clone, PartialEq)]
pub struct ReconnectPolicy {
    /// Whether to reconnect at all.
    pub enabled: bool,
    /// Attempts before giving up (then [`Event::ReconnectFailed`]).
    pub max_attempts: u32,
    /// Wait before the first attempt.
    pub initial_backoff: Duration,
    /// Cap on the wait.
    pub max_backoff: Duration,
    /// Growth factor between attempts.
    pub multiplier: f64,
    /// Share of each wait, 0 to 1, that is randomly taken off.
    pub jitter: f64,
}

impl ReconnectPolicy {
    /// No reconnection.
    pub fn disabled() -> Self {
        ReconnectPolicy {
            enabled: false,
            ..Self::default()
        }
    }

    /// Reconnect, with the default backoff, up to `max_attempts` times.
    pub fn attempts(max_attempts: u32) -> Self {
        ReconnectPolicy {
            enabled: true,
            max_attempts,
            ..Self::default()
        }
    }

    /// The schedule these settings describe (the crate's one backoff).
    fn schedule(&self) -> Backoff {
        Backoff {
            initial: self.initial_backoff,
            max: self.max_backoff,
            multiplier: self.multiplier,
            jitter: self.jitter,
        }
    }

    /// The wait before attempt `attempt` (from 1), before jitter.
    pub fn backoff(&self, attempt: u32) -> Duration {
        self.schedule().wait(attempt)
    }

    /// The wait before attempt `attempt`, with jitter from `unit` (in `[0, 1)`).
    pub fn backoff_with_jitter(&self, attempt: u32, unit: f64) -> Duration {
        self.schedule().wait_with_jitter(attempt, unit)
    }
}

impl Default for ReconnectPolicy {
    /// Enabled, 10 attempts, 100 ms doubling up to 5 s, jitter 0.5.
    fn default() -> Self {
        ReconnectPolicy {
            enabled: true,
            max_attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            multiplier: 2.0,
            jitter: 0.5,
        }
    }
}

/// Where a client gets its tokens: a function returning a fresh JWT, or
/// why it cannot (the connection attempt then fails with that reason).
/// It is called on the client's own threads; it may block (ask a backend).
#[derive(Clone)]
pub struct TokenProvider(pub Arc<dyn Fn() -> std::result::Result<String, String> + Send + Sync>);

impl TokenProvider {
    /// A fresh token, or the provider's error as [`ClientError::InvalidArgument`].
    pub fn token(&self) -> Result<String> {
        (self.0)().map_err(|e| ClientError::InvalidArgument(format!("token provider: {e}")))
    }
}

impl std::fmt::Debug for TokenProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenProvider(..)")
    }
}

impl PartialEq for TokenProvider {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// Settings of a [`Client`] (and of every client of a [`Pool`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ClientConfig {
    /// Limit on each TCP connect (and on each reconnection attempt).
    pub connect_timeout: Duration,
    /// Limit on waiting for each answer (and on authentication).
    pub request_timeout: Duration,
    /// Sent as `{"type":"auth","token":…}` first on every connection;
    /// anything but `auth_ok` fails the connection. A JWT works as well as
    /// the server's static token.
    pub auth_token: Option<String>,
    /// Called for a fresh token (a JWT) before each connection and
    /// reconnection, and before the current one expires (then sent in
    /// `refresh`); replaces `auth_token` when set. Centrifugo's `getToken`.
    pub token_provider: Option<TokenProvider>,
    /// Ping the server this often (None: no heartbeat).
    pub heartbeat_interval: Option<Duration>,
    /// Pongs missed in a row that declare the connection dead.
    pub heartbeat_max_missed: u32,
    /// What to do when the connection is lost.
    pub reconnect: ReconnectPolicy,
    /// Whether requests made while reconnecting wait for the new connection
    /// (up to `request_timeout`) instead of failing with
    /// [`ClientError::Disconnected`] at once.
    pub wait_for_reconnect: bool,
    /// Largest payload accepted from the server.
    pub max_frame_bytes: usize,
    /// Events each [`Client::messages`] receiver may hold unread; beyond
    /// that new events are dropped for that receiver (and counted, see
    /// [`Client::dropped_events`]).
    pub event_buffer: usize,
    /// Sent as `client_info` in pings.
    pub client_info: String,
    /// Speak TLS (None: plain TCP).
    pub tls: Option<TlsOptions>,
    /// Codecs to offer in `hello`, in order of preference. Empty (the
    /// default): no `hello`, nothing compressed, exactly the protocol of
    /// servers from before compression.
    pub compression: Vec<Codec>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            auth_token: None,
            token_provider: None,
            heartbeat_interval: None,
            heartbeat_max_missed: 2,
            reconnect: ReconnectPolicy::disabled(),
            wait_for_reconnect: false,
            max_frame_bytes: DEFAULT_CLIENT_MAX_FRAME_BYTES,
            event_buffer: 1024,
            client_info: concat!("ringcast-client/", env!("CARGO_PKG_VERSION")).to_owned(),
            tls: None,
            compression: Vec::new(),
        }
    }
}

/// Builds a [`ClientConfig`] and connects. From [`Client::builder`].
#[derive(Debug, Clone, Default)]
pub struct ClientBuilder {
    config: ClientConfig,
}

impl ClientBuilder {
    /// A builder with the default settings.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts from `config`.
    pub fn from_config(config: ClientConfig) -> Self {
        ClientBuilder { config }
    }

    /// See [`ClientConfig::connect_timeout`].
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.config.connect_timeout = d;
        self
    }

    /// See [`ClientConfig::request_timeout`].
    pub fn request_timeout(mut self, d: Duration) -> Self {
        self.config.request_timeout = d;
        self
    }

    /// See [`ClientConfig::auth_token`].
    pub fn auth_token(mut self, token: impl Into<String>) -> Self {
        self.config.auth_token = Some(token.into());
        self
    }

    /// See [`ClientConfig::token_provider`].
    pub fn token_provider<F>(mut self, f: F) -> Self
    where
        F: Fn() -> std::result::Result<String, String> + Send + Sync + 'static,
    {
        self.config.token_provider = Some(TokenProvider(Arc::new(f)));
        self
    }

    /// See [`ClientConfig::heartbeat_interval`].
    pub fn heartbeat(mut self, interval: Option<Duration>) -> Self {
        self.config.heartbeat_interval = interval;
        self
    }

    /// See [`ClientConfig::heartbeat_max_missed`] (at least 1).
    pub fn heartbeat_max_missed(mut self, n: u32) -> Self {
        self.config.heartbeat_max_missed = n.max(1);
        self
    }

    /// See [`ClientConfig::reconnect`].
    pub fn reconnect(mut self, policy: ReconnectPolicy) -> Self {
        self.config.reconnect = policy;
        self
    }

    /// See [`ClientConfig::wait_for_reconnect`].
    pub fn wait_for_reconnect(mut self, wait: bool) -> Self {
        self.config.wait_for_reconnect = wait;
        self
    }

    /// See [`ClientConfig::max_frame_bytes`].
    pub fn max_frame_bytes(mut self, n: usize) -> Self {
        self.config.max_frame_bytes = n;
        self
    }

    /// See [`ClientConfig::event_buffer`].
    pub fn event_buffer(mut self, n: usize) -> Self {
        self.config.event_buffer = n;
        self
    }

    /// See [`ClientConfig::client_info`].
    pub fn client_info(mut self, info: impl Into<String>) -> Self {
        self.config.client_info = info.into();
        self
    }

    /// See [`ClientConfig::tls`].
    pub fn tls(mut self, options: TlsOptions) -> Self {
        self.config.tls = Some(options);
        self
    }

    /// See [`ClientConfig::compression`]: offer these codecs, in this
    /// order of preference (empty: no compression).
    pub fn compression(mut self, codecs: impl IntoIterator<Item = Codec>) -> Self {
        self.config.compression = codecs.into_iter().collect();
        self
    }

    /// The configuration built so far.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// Connects (and authenticates, when a token is set).
    pub fn connect(self, addr: impl ToSocketAddrs) -> Result<Client> {
        Client::connect_with(addr, self.config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let p = ReconnectPolicy::default();
        assert_eq!(p.backoff(1), Duration::from_millis(100));
        assert_eq!(p.backoff(2), Duration::from_millis(200));
        assert_eq!(p.backoff(4), Duration::from_millis(800));
        assert_eq!(p.backoff(10), Duration::from_secs(5));
        assert_eq!(p.backoff(u32::MAX), Duration::from_secs(5));
        assert_eq!(p.backoff_with_jitter(1, 0.0), Duration::from_millis(100));
        assert!(p.backoff_with_jitter(1, 0.999) >= Duration::from_millis(50));
    }

    #[test]
    fn server_codes_round_trip() {
        assert_eq!(
            ServerCode::from_wire("shutting_down"),
            ServerCode::Known(ErrorCode::ShuttingDown)
        );
        assert_eq!(
            ServerCode::from_wire("nope"),
            ServerCode::Other("nope".into())
        );
        assert_eq!(ServerCode::from_wire("nope").to_string(), "nope");
    }
}
