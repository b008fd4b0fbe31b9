//! Server configuration: every limit in one place, with its default and why.

use std::net::SocketAddr;

/// Default listen address: the seed's `localhost:9999`.
pub const DEFAULT_ADDR: &str = "127.0.0.1:9999";

/// Default for [`ServerConfig::max_partial_bytes`]: 256 MiB per shard.
pub const DEFAULT_MAX_PARTIAL_BYTES: usize = 256 << 20;

/// A partial frame may always hold this much buffer, budget or not, so
/// that small frames split across receive buffers (pipelined requests)
/// are still served while large partial frames have used up the budget.
/// It bounds the overshoot: a shard's partial frames hold at most
/// `max_partial_bytes` + 4 KiB × its connections.
pub const SMALL_PARTIAL_BYTES: usize = 4 << 10;

/// Everything a server needs to start. Built by [`super::ServerBuilder`] or
/// from the CLI flags.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// Address every shard listens on (SO_REUSEPORT).
    pub addr: SocketAddr,
    /// Number of shards; 0 = one per core the process may run on.
    pub shards: usize,
    /// Pin each shard thread to a core.
    pub pin: bool,
    /// Connections over all shards; one more gets `server_full`.
    pub max_connections: usize,
    /// Connections from one IP address; 0 = unlimited.
    pub max_connections_per_ip: usize,
    /// Largest accepted frame payload.
    pub max_frame_bytes: usize,
    /// Budget, per shard, for the buffers holding partially received frames
    /// (the straddle buffers of frames that cross receive buffers, counted
    /// by capacity). A connection whose partial frame would need more than
    /// [`SMALL_PARTIAL_BYTES`] of buffer while the shard's partial frames
    /// hold this much gets `server_full` and is closed.
    ///
    /// Default 256 MiB per shard ([`DEFAULT_MAX_PARTIAL_BYTES`]): per shard
    /// rather than one figure divided among shards, so shards share no
    /// counter on the receive path, and so that the room for large frames
    /// on a shard does not shrink as cores are added. That is room for 256
    /// maximum-size (1 MiB) frames arriving at once on every shard: far
    /// above what legitimate traffic keeps in flight (a pipelined 64 KiB
    /// echo holds at most one partial frame, ≤ 64 KiB, per connection; a
    /// handful of clients sending 1 MiB frames hold a few MiB), while
    /// 10,000 clients each trickling a 1 MiB frame hold at most 256 MiB per
    /// shard instead of ~10 GiB. Must be at least `max_frame_bytes` + 4, so
    /// a maximum-size frame always fits on an otherwise quiet shard.
    pub max_partial_bytes: usize,
    /// A connection whose unsent output (broadcasts included) exceeds this is
    /// cut with `slow_consumer`. 8 MiB: several seconds of a busy broadcast
    /// stream, small enough that thousands of stalled readers fit in memory.
    pub max_pending_bytes: usize,
    /// Seconds without input before a connection is closed; 0 = never.
    pub idle_timeout_secs: u64,
    /// Listen backlog.
    pub backlog: i32,
    /// Seconds to flush pending output on shutdown before closing anyway.
    pub drain_secs: u64,
    /// Receive buffers per shard (a power of two).
    pub recv_buffers: u16,
    /// Size of each receive buffer.
    pub recv_buffer_size: usize,
    /// Submission queue entries per shard ring.
    pub ring_entries: u32,
    /// Shared secret the first frame must carry (`auth`); None = no auth.
    pub auth_token: Option<String>,
    /// Per-connection request rate (messages/s); 0 = unlimited.
    pub rate_limit: u32,
    /// Token-bucket burst for the rate limit; 0 = one second's worth.
    pub rate_burst: u32,
    /// How shards wake each other for cross-shard broadcasts.
    pub wake: WakeMode,
    /// Address of the HTTP endpoint serving `/metrics` (Prometheus text)
    /// and `/healthz`; None = no endpoint, and no request timing.
    pub metrics_addr: Option<SocketAddr>,
    /// Which kernel interface the shards use for I/O.
    pub io_backend: IoBackend,
}

/// The kernel interface for socket I/O (see `src/io/`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
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
    /// The name used in flags, the config file, logs and stats.
    pub fn as_str(self) -> &'static str {
        match self {
            IoBackend::Auto => "auto",
            IoBackend::IoUring => "io-uring",
            IoBackend::Epoll => "epoll",
        }
    }
}

/// How a shard wakes another after queueing a broadcast for it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum WakeMode {
    /// `IORING_OP_MSG_RING` from the sender's ring: no extra syscall, it
    /// rides the sender's next `io_uring_enter` (default when supported).
    MsgRing,
    /// A `write` to the target's eventfd, which has a read posted on its ring.
    Eventfd,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            addr: DEFAULT_ADDR.parse().expect("valid default address"),
            shards: 0,
            pin: true,
            max_connections: 100_000,
            max_connections_per_ip: 0,
            max_frame_bytes: crate::protocol::DEFAULT_MAX_FRAME_BYTES,
            max_partial_bytes: DEFAULT_MAX_PARTIAL_BYTES,
            max_pending_bytes: 8 << 20,
            idle_timeout_secs: 300,
            backlog: 4096,
            drain_secs: 5,
            // 512 x 32 KiB = 16 MiB per shard, touched lazily: enough for
            // hundreds of busy connections per turn; idle ones hold none.
            recv_buffers: 512,
            recv_buffer_size: 32 * 1024,
            ring_entries: 4096,
            auth_token: None,
            rate_limit: 0,
            rate_burst: 0,
            wake: WakeMode::MsgRing,
            metrics_addr: None,
            io_backend: IoBackend::Auto,
        }
    }
}

impl ServerConfig {
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
        Ok(())
    }
}
