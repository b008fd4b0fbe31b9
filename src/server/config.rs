//! Server configuration: every setting in one table, with its default and
//! why.
//!
//! `server_settings!` below is the table. Each row is one setting:
//!
//! ```text
//! /// Help text: the first paragraph is also the `--help` line.
//! ///
//! /// Further paragraphs: the rationale (rustdoc only).
//! max_frame_bytes: usize = DEFAULT_MAX_FRAME_BYTES,
//! ```
//!
//! and becomes, with nothing else to write:
//!
//! - the [`ServerConfig`] field, documented, and its [`Default`];
//! - the [`ServerBuilder`](super::ServerBuilder) method `.max_frame_bytes(v)`;
//! - the flag `--max-frame-bytes`, the variable `RINGCAST_MAX_FRAME_BYTES`
//!   and the config-file key `max_frame_bytes` (src/cli/server.rs);
//! - a line of `ringcast server --print-config`, and the `[default: …]` of
//!   `--help`, both from the default value here.
//!
//! An `Option<T>` setting is off unless set: its flag and key take a `T`.
//! A row may start with marks for the command line (src/cli/server.rs):
//! `[NoFlag]`: a file key with no flag of its own (`pin`, whose flag is
//! `--no-pin`); `[Secret]`: never printed by `--print-config`, its
//! variable's value hidden in `--help` (`auth_token`).

/// Default listen address: the seed's `localhost:9999`.
pub const DEFAULT_ADDR: &str = "127.0.0.1:9999";

/// Default for [`ServerConfig::max_partial_bytes`]: 256 MiB per shard.
pub const DEFAULT_MAX_PARTIAL_BYTES: usize = 256 << 20;

pub use crate::session::config::SMALL_PARTIAL_BYTES;
pub use crate::session::grant::{Access, Namespace, Namespaces};

/// The table of server settings (see the module documentation). It hands
/// its rows to the macro `$then`, after the tokens given with it:
/// `server_settings!(config_struct! {})` here, `builder_setters!` in
/// src/server/mod.rs, `layer!` in src/cli/server.rs.
///
/// The rows are expanded in those modules too: name types so that they
/// resolve there (std types by path, types of this module as they are;
/// src/cli/server.rs imports everything public here).
macro_rules! server_settings {
    ($then:ident! { $($with:tt)* }) => {
        $then! {
            { $($with)* }

            /// Address to listen on; every shard binds it (SO_REUSEPORT).
            addr: std::net::SocketAddr = DEFAULT_ADDR.parse().expect("valid default address"),
            /// Serve plain TCP on `addr`.
            ///
            /// The flag that turns it off (to serve TLS only) is `--no-plain`
            /// (`RINGCAST_NO_PLAIN`); the file key is `plain`.
            [NoFlag] plain: bool = true,
            /// Address for TLS clients, beside the plain one (like Redis's
            /// tls-port); needs tls_cert and tls_key.
            ///
            /// None (the default): no TLS listener.
            tls_addr: Option<std::net::SocketAddr> = None,
            /// PEM file with the server's certificate chain, leaf first.
            tls_cert: Option<std::path::PathBuf> = None,
            /// PEM file with tls_cert's private key (RSA, ECDSA or Ed25519).
            tls_key: Option<std::path::PathBuf> = None,
            /// PEM file of CA certificates for mutual TLS: TLS clients must
            /// present a certificate that one of them signed.
            ///
            /// A verified certificate does not replace `auth_token`: when both
            /// are set, a TLS client needs both (the certificate proves the
            /// machine, the token the application).
            tls_client_ca: Option<std::path::PathBuf> = None,
            /// Oldest TLS version accepted: 1.2 or 1.3.
            tls_min_version: crate::tls::TlsVersion = crate::tls::TlsVersion::V1_2,
            /// Seconds a TLS client has to finish its handshake.
            ///
            /// 10 s: a handshake takes two round trips, so this is generous
            /// for any real client on any network, and cuts a slow-loris on
            /// the handshake (which holds a socket and rustls state) early.
            tls_handshake_timeout_secs: u64 = 10,
            /// TLS handshakes in progress per shard; a connection beyond them
            /// is closed at once.
            ///
            /// 1024: a reconnect storm of a thousand clients per shard still
            /// completes (each handshake lasts two round trips), while a flood
            /// of stalled handshakes holds at most this many sockets and rustls
            /// states per shard until the handshake timeout cuts them.
            tls_max_handshakes: usize = 1024,
            /// Shards (threads with their own I/O backend); 0 = one per core this
            /// process may run on.
            shards: usize = 0,
            /// Pin each shard thread to a core.
            ///
            /// The flag that turns it off is `--no-pin` (`RINGCAST_NO_PIN`);
            /// the file key is `pin`.
            [NoFlag] pin: bool = true,
            /// Connections over all shards; one more gets `server_full`.
            max_connections: usize = 100_000,
            /// Connections from one IP address; 0 = unlimited.
            max_connections_per_ip: usize = 0,
            /// Largest frame payload accepted, in bytes.
            max_frame_bytes: usize = crate::protocol::DEFAULT_MAX_FRAME_BYTES,
            /// Per-shard budget for partly received frames; a connection whose
            /// partial frame would need more gets `server_full` and is closed.
            ///
            /// The budget covers the buffers holding partially received frames
            /// (the straddle buffers of frames that cross receive buffers,
            /// counted by capacity). A connection whose partial frame would
            /// need more than
            /// [`SMALL_PARTIAL_BYTES`](crate::server::config::SMALL_PARTIAL_BYTES)
            /// of buffer while the shard's partial frames hold this much is
            /// refused.
            ///
            /// Default 256 MiB per shard
            /// ([`DEFAULT_MAX_PARTIAL_BYTES`](crate::server::config::DEFAULT_MAX_PARTIAL_BYTES)):
            /// per shard rather than one figure divided among shards, so
            /// shards share no counter on the receive path, and so that the
            /// room for large frames on a shard does not shrink as cores are
            /// added. That is room for 256 maximum-size (1 MiB) frames
            /// arriving at once on every shard: far above what legitimate
            /// traffic keeps in flight (a pipelined 64 KiB echo holds at most
            /// one partial frame, ≤ 64 KiB, per connection; a handful of
            /// clients sending 1 MiB frames hold a few MiB), while 10,000
            /// clients each trickling a 1 MiB frame hold at most 256 MiB per
            /// shard instead of ~10 GiB. Must be at least `max_frame_bytes` +
            /// 4, so a maximum-size frame always fits on an otherwise quiet
            /// shard.
            max_partial_bytes: usize = DEFAULT_MAX_PARTIAL_BYTES,
            /// Unsent output (broadcasts included) after which a client is cut
            /// with `slow_consumer`.
            ///
            /// 8 MiB: several seconds of a busy broadcast stream, small enough
            /// that thousands of stalled readers fit in memory.
            max_pending_bytes: usize = 8 << 20,
            /// Channels one connection may be subscribed to at once; one more
            /// `subscribe` gets `too_many_subscriptions`.
            ///
            /// 1,000 covers a client that follows many rooms or topics, and
            /// bounds what one connection can make every shard's index and
            /// its own bookkeeping hold (about 100 bytes a subscription plus
            /// the name).
            max_subscriptions: usize = 1_000,
            /// Publications kept per channel for recovery and `history`;
            /// 0 = no history (the default).
            ///
            /// A channel with history numbers its publications (`offset`,
            /// `epoch`), and a client that reconnects may resubscribe with
            /// `recover` to get what it missed (docs/PROTOCOL.md). Off by
            /// default: it costs memory and serialises each history
            /// channel's publishes on one lock (src/route/history.rs).
            history_size: usize = 0,
            /// Seconds a publication is kept in a channel's history.
            ///
            /// 300: enough to ride out a reconnect, a deploy or a laptop
            /// lid, short enough that memory does not hold stale traffic.
            history_ttl_secs: u64 = 300,
            /// Bytes all channels' history may hold; past it the oldest
            /// publications anywhere are dropped first.
            ///
            /// 256 MiB: over a million small publications, and a fixed
            /// ceiling however many channels are used.
            max_history_bytes: usize = 256 << 20,
            /// Most publications one `recover` may replay; a client further
            /// behind is told it lost messages (`recovered: false`).
            ///
            /// 1,000: a replay is queued to the client at once, before any
            /// live message; past this it is cheaper for the application
            /// to reload its state than to be flooded with old messages.
            history_recover_limit: u64 = 1_000,
            /// Offer per-frame compression (zstd, deflate) to clients that
            /// ask for it in `hello`.
            ///
            /// The flag that turns it off is `--no-compression`
            /// (`RINGCAST_NO_COMPRESSION`); the file key is `compression`.
            /// Off, `hello_ok` answers `compression: null`.
            [NoFlag] compression: bool = true,
            /// Payloads larger than this many bytes are compressed toward
            /// clients that negotiated a codec, when that saves bytes.
            ///
            /// 1 KiB: below it a codec's fixed overhead eats most of the
            /// saving, and small frames keep their fast path untouched.
            compression_threshold_bytes: usize = crate::protocol::codec::DEFAULT_THRESHOLD,
            /// Close connections without a complete frame for this many
            /// seconds; 0 = never.
            idle_timeout_secs: u64 = 300,
            /// Listen backlog.
            backlog: i32 = 4096,
            /// Seconds to flush pending output at shutdown before closing
            /// anyway.
            drain_secs: u64 = 5,
            /// Receive buffers per shard, a power of two.
            ///
            /// 512 x 32 KiB = 16 MiB per shard, touched lazily: enough for
            /// hundreds of busy connections per turn; idle ones hold none.
            /// With io_uring on Linux 6.12+ the same memory is registered as
            /// 256 KiB buffers consumed incrementally (io::uring::bufring).
            recv_buffers: u16 = 512,
            /// Size of each receive buffer in bytes.
            recv_buffer_size: usize = 32 * 1024,
            /// Submission queue entries per shard ring (io_uring).
            ring_entries: u32 = 4096,
            /// Require `{"type":"auth","token":…}` as the first frame.
            ///
            /// None (the default): no authentication. On the command line and
            /// in the config file, `auth_token_file` may name a file holding
            /// the token instead (src/cli/server.rs).
            [Secret] auth_token: Option<String> = None,
            /// HMAC secret for JWTs (HS256, HS384, HS512) that `auth` and
            /// `refresh` may carry instead of the static auth token.
            ///
            /// None (the default): no HMAC tokens. On the command line and in
            /// the config file, `jwt_secret_file` may name a file holding it
            /// (src/cli/server.rs). docs/PROTOCOL.md, "Tokens".
            [Secret] jwt_secret: Option<String> = None,
            /// PEM file with the public key for JWTs signed with RS256/384/512,
            /// PS256, ES256/384 or EdDSA (by the key's kind).
            jwt_public_key: Option<std::path::PathBuf> = None,
            /// The `aud` a JWT must carry; none (the default): not checked.
            jwt_audience: Option<String> = None,
            /// The `iss` a JWT must carry; none (the default): not checked.
            jwt_issuer: Option<String> = None,
            /// Seconds of clock skew allowed on a JWT's exp and nbf.
            ///
            /// 30: NTP keeps servers within a second; this covers a client's
            /// token minted on a badly set machine without letting an
            /// expired token live on for long.
            jwt_leeway_secs: u64 = 30,
            /// Seconds a connection whose token expired (`token_expired`) has
            /// to send `refresh` before it is closed.
            ///
            /// 10: a client refreshing on that error needs one round trip to
            /// its own backend and one to us.
            token_refresh_grace_secs: u64 = 10,
            /// Namespace rules (`[[namespace]]` tables in the config file): who
            /// may subscribe and publish on the channels each pattern matches;
            /// first match wins.
            ///
            /// Empty (the default): no namespaces. docs/PROTOCOL.md,
            /// "Namespaces".
            [NoFlag] namespace: crate::session::grant::Namespaces = Default::default(),
            /// Per-connection messages per second; 0 = unlimited.
            rate_limit: u32 = 0,
            /// Burst for the rate limit; 0 = one second's worth.
            rate_burst: u32 = 0,
            /// How shards wake each other for cross-shard broadcasts.
            wake: WakeMode = WakeMode::MsgRing,
            /// Serve HTTP on this address: Prometheus `/metrics`, `/healthz` and
            /// the JSON API under `/v1/` (off unless set). Also `--metrics-addr`.
            ///
            /// None = no listener, and no request timing. The former name,
            /// `metrics_addr` (flag `--metrics-addr`, variable
            /// `RINGCAST_METRICS_ADDR`, file key), still works. See
            /// docs/OPERATIONS.md.
            http_addr: Option<std::net::SocketAddr> = None,
            /// Key the HTTP API requires, sent as `Authorization: Bearer <key>`.
            ///
            /// Writes (`POST /v1/…`) always need it and are refused without
            /// one; reads need it unless `http_addr` is a loopback address
            /// and no key is set. `api_key_file` may name a file holding it
            /// instead (src/cli/server.rs).
            [Secret] api_key: Option<String> = None,
            /// HTTP connections open at once; one more gets 503.
            ///
            /// 4,096: every dashboard, scraper and API client of a node many
            /// times over (a thousand idle ones included), while a flood of
            /// idle sockets cannot take the process's descriptors (each holds
            /// two until the head deadline cuts it).
            http_max_connections: usize = 4096,
            /// HTTP requests per second one IP address may make; 0 = unlimited.
            ///
            /// 1,000, with a second's worth of burst: a dashboard polls a few
            /// times a second and a backend publishing through the API rarely
            /// needs more from one address; one that does raises it.
            http_rate_limit: u32 = 1000,
            /// Join a cluster: deliver broadcasts and publishes to the clients of
            /// every node through Redis Streams at this
            /// `redis://[user:pass@]host:port[/db]` URL.
            ///
            /// None (the default): one node. Never printed by `--print-config`
            /// (it may hold a password). See src/cluster/.
            [Secret] backplane: Option<String> = None,
            /// This node's name in the cluster; default host:port plus a
            /// random suffix (a restarted node joins as a new member).
            node_id: Option<String> = None,
            /// Bytes of broadcasts and publishes held for the backplane while
            /// Redis is unreachable; past it, senders get
            /// `backplane_unavailable` (their message reaches this node only).
            ///
            /// 64 MiB: about a minute of 1,000 small messages a second, kept in
            /// order and written when Redis returns.
            backplane_buffer_bytes: usize = 64 << 20,
            /// Kernel interface for socket I/O: auto (io_uring, falling back to
            /// epoll with one warning where io_uring is refused), io-uring
            /// (refuse to start without it) or epoll.
            io_backend: IoBackend = IoBackend::Auto,
        }
    };
}
pub(crate) use server_settings;

/// Declares [`ServerConfig`] and its `Default` from the table.
macro_rules! config_struct {
    (
        {}
        $(
            $(#[doc = $doc:literal])*
            $([$($mark:ident),*])?
            $name:ident: $ty:ty = $default:expr
        ),* $(,)?
    ) => {
        /// Everything a server needs to start. Built by
        /// [`ServerBuilder`](super::ServerBuilder) or from the command line
        /// (src/cli/server.rs); every field is a row of the `server_settings!`
        /// table in src/server/config.rs.
        #[derive(Debug, Clone, PartialEq)]
        pub struct ServerConfig {
            $( $(#[doc = $doc])* pub $name: $ty, )*
        }

        impl Default for ServerConfig {
            fn default() -> Self {
                ServerConfig {
                    $( $name: $default, )*
                }
            }
        }
    };
}
server_settings!(config_struct! {});

// `Display` and `FromStr` for the enums of named choices below.
use crate::choices::named_choices;

/// The kernel interface for socket I/O (see `src/io/`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IoBackend {
    /// io_uring; falls back to epoll, with one warning naming the cause and
    /// the fix, when the kernel or a seccomp filter refuses it.
    Auto,
    /// io_uring only: refuse to start where it is unavailable.
    IoUring,
    /// epoll (readiness, non-blocking sockets): runs wherever Linux does.
    Epoll,
}

impl IoBackend {
    /// Every choice, in the order `--help` lists them.
    pub const ALL: [IoBackend; 3] = [IoBackend::Auto, IoBackend::IoUring, IoBackend::Epoll];

    /// The name used in flags, the config file, logs and stats.
    pub fn as_str(self) -> &'static str {
        match self {
            IoBackend::Auto => "auto",
            IoBackend::IoUring => "io-uring",
            IoBackend::Epoll => "epoll",
        }
    }
}

named_choices!(IoBackend, as_str, "I/O backend");

/// How a shard wakes another after queueing a broadcast for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WakeMode {
    /// `IORING_OP_MSG_RING` from the sender's ring: no extra syscall, it
    /// rides the sender's next `io_uring_enter` (default when supported).
    MsgRing,
    /// A `write` to the target's eventfd, which has a read posted on its ring.
    Eventfd,
}

impl WakeMode {
    /// Every choice, in the order `--help` lists them.
    pub const ALL: [WakeMode; 2] = [WakeMode::MsgRing, WakeMode::Eventfd];

    /// The name used in flags and the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            WakeMode::MsgRing => "msg-ring",
            WakeMode::Eventfd => "eventfd",
        }
    }
}

named_choices!(WakeMode, as_str, "wake mode");

impl ServerConfig {
    /// What a session reads of these settings; `cluster`: the node runs
    /// with a backplane.
    pub fn session_config(&self, cluster: bool) -> crate::session::SessionConfig {
        let rate = self.rate_limit as f64;
        crate::session::SessionConfig {
            max_frame_bytes: self.max_frame_bytes,
            max_partial_bytes: self.max_partial_bytes,
            max_pending_bytes: self.max_pending_bytes,
            idle_timeout_secs: self.idle_timeout_secs,
            auth_token: self.auth_token.clone(),
            rate_limit: rate,
            rate_burst: if self.rate_burst > 0 {
                self.rate_burst as f64
            } else {
                rate
            },
            compression: self.compression,
            compression_threshold_bytes: self.compression_threshold_bytes,
            tls_max_handshakes: self.tls_max_handshakes,
            tls_handshake_timeout_secs: self.tls_handshake_timeout_secs,
            cluster,
            // Built once with the server (it reads key files): `Shared`.
            verifier: None,
            token_leeway_secs: self.jwt_leeway_secs,
            token_refresh_grace_secs: self.token_refresh_grace_secs,
            namespaces: self.namespace.clone(),
        }
    }

    /// The number of shards to run: the configured count, or one per core
    /// this process may run on.
    pub fn effective_shards(&self) -> usize {
        if self.shards > 0 {
            return self.shards;
        }
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    }

    /// Checks values that would otherwise fail obscurely later.
    pub fn validate(&self) -> Result<(), String> {
        if !self.recv_buffers.is_power_of_two() {
            return Err(format!(
                "recv buffers must be a power of two, got {}",
                self.recv_buffers
            ));
        }
        if self.recv_buffer_size < 64 {
            return Err("recv buffer size must be at least 64 bytes".into());
        }
        if self.max_frame_bytes == 0 || self.max_frame_bytes > u32::MAX as usize {
            return Err("max frame bytes must be between 1 and 4294967295".into());
        }
        if self.max_partial_bytes < self.max_frame_bytes + crate::protocol::HEADER_LEN {
            return Err(format!(
                "max partial bytes ({}) must be at least max frame bytes + 4 ({}), \
                 or a maximum-size frame could never be received",
                self.max_partial_bytes,
                self.max_frame_bytes + crate::protocol::HEADER_LEN
            ));
        }
        if self.compression
            && self.max_frame_bytes >= crate::protocol::codec::COMPRESSED_FLAG as usize
        {
            return Err(
                "with compression on, max frame bytes must be below 2147483648: \
                 the top bit of a frame's length marks a compressed frame"
                    .into(),
            );
        }
        if self.http_max_connections == 0 {
            return Err("http_max_connections must be at least 1".into());
        }
        if self.api_key.as_deref() == Some("") {
            return Err("the API key is empty".into());
        }
        if self.max_connections == 0 {
            return Err("max connections must be at least 1".into());
        }
        // Both are turned into milliseconds; keep that far from overflow.
        if self.idle_timeout_secs > u32::MAX as u64 || self.drain_secs > u32::MAX as u64 {
            return Err("idle_timeout_secs and drain_secs must be at most 4294967295".into());
        }
        if self.shards > 1024 {
            return Err("at most 1024 shards".into());
        }
        match (self.tls_addr, &self.tls_cert, &self.tls_key) {
            (Some(_), Some(_), Some(_)) | (None, None, None) => {}
            (Some(_), _, _) => return Err("tls_addr needs both tls_cert and tls_key".into()),
            (None, _, _) => {
                return Err("tls_cert and tls_key are used only with tls_addr: set it too".into())
            }
        }
        if self.tls_client_ca.is_some() && self.tls_addr.is_none() {
            return Err("tls_client_ca is used only with tls_addr: set it too".into());
        }
        if !self.plain && self.tls_addr.is_none() {
            return Err("plain TCP is off and no tls_addr is set: nothing to listen on".into());
        }
        if self.tls_handshake_timeout_secs == 0 || self.tls_handshake_timeout_secs > u32::MAX as u64
        {
            return Err("tls_handshake_timeout_secs must be between 1 and 4294967295".into());
        }
        if self.tls_max_handshakes == 0 {
            return Err("tls_max_handshakes must be at least 1".into());
        }
        self.namespace.validate()?;
        if self.jwt_leeway_secs > u32::MAX as u64 || self.token_refresh_grace_secs > u32::MAX as u64
        {
            return Err(
                "jwt_leeway_secs and token_refresh_grace_secs must be at most 4294967295".into(),
            );
        }
        if self.history_size > 0
            && (self.history_ttl_secs == 0 || self.history_ttl_secs > u32::MAX as u64)
        {
            return Err("history_ttl_secs must be between 1 and 4294967295".into());
        }
        Ok(())
    }
}
