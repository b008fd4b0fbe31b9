//! Server configuration: every limit in one place, with its default and why.

use std::net::SocketAddr;

/// Default listen address: the seed's `localhost:9999`.
pub const DEFAULT_ADDR: &str = "127.0.0.1:9999";

/// Everything a server needs to start. Built by [`super::ServerBuilder`] or
/// from the CLI flags.
#[derive(Debug, Clone)]
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
}

/// How a shard wakes another after queueing a broadcast for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
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
        if self.max_connections == 0 {
            return Err("max connections must be at least 1".into());
        }
        if self.shards > 1024 {
            return Err("at most 1024 shards".into());
        }
        Ok(())
    }
}
