//! `ringcast server`: flags, logging, signals.

use super::{Server, ServerConfig, WakeMode};
use clap::Args;
use std::net::SocketAddr;
use std::process::ExitCode;

/// Arguments of `ringcast server`.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// Address to listen on.
    #[arg(long, default_value = super::config::DEFAULT_ADDR, env = "RINGCAST_ADDR")]
    pub addr: SocketAddr,
    /// Shards (threads with their own ring); 0 = one per core.
    #[arg(long, default_value_t = 0, env = "RINGCAST_SHARDS")]
    pub shards: usize,
    /// Do not pin shard threads to cores.
    #[arg(long)]
    pub no_pin: bool,
    /// Connections over all shards; one more gets `server_full`.
    #[arg(long, default_value_t = 100_000, env = "RINGCAST_MAX_CONNECTIONS")]
    pub max_connections: usize,
    /// Connections from one IP address (0 = unlimited).
    #[arg(long, default_value_t = 0, env = "RINGCAST_MAX_CONNECTIONS_PER_IP")]
    pub max_connections_per_ip: usize,
    /// Largest frame payload accepted, in bytes.
    #[arg(long, default_value_t = crate::protocol::DEFAULT_MAX_FRAME_BYTES, env = "RINGCAST_MAX_FRAME_BYTES")]
    pub max_frame_bytes: usize,
    /// Unsent output after which a broadcast recipient is cut with `slow_consumer`.
    #[arg(long, default_value_t = 8 << 20, env = "RINGCAST_MAX_PENDING_BYTES")]
    pub max_pending_bytes: usize,
    /// Close connections idle this many seconds (0 = never).
    #[arg(long, default_value_t = 300, env = "RINGCAST_IDLE_TIMEOUT_SECS")]
    pub idle_timeout_secs: u64,
    /// Listen backlog.
    #[arg(long, default_value_t = 4096, env = "RINGCAST_BACKLOG")]
    pub backlog: i32,
    /// Seconds to flush pending output at shutdown.
    #[arg(long, default_value_t = 5, env = "RINGCAST_DRAIN_SECS")]
    pub drain_secs: u64,
    /// Receive buffers per shard (a power of two).
    #[arg(long, default_value_t = 512, env = "RINGCAST_RECV_BUFFERS")]
    pub recv_buffers: u16,
    /// Size of each receive buffer in bytes.
    #[arg(long, default_value_t = 32 * 1024, env = "RINGCAST_RECV_BUFFER_SIZE")]
    pub recv_buffer_size: usize,
    /// Require `{"type":"auth","token":…}` as the first frame.
    #[arg(long, env = "RINGCAST_AUTH_TOKEN", hide_env_values = true)]
    pub auth_token: Option<String>,
    /// Per-connection messages per second (0 = unlimited).
    #[arg(long, default_value_t = 0, env = "RINGCAST_RATE_LIMIT")]
    pub rate_limit: u32,
    /// Burst for the rate limit (0 = one second's worth).
    #[arg(long, default_value_t = 0, env = "RINGCAST_RATE_BURST")]
    pub rate_burst: u32,
    /// How shards wake each other for broadcasts.
    #[arg(long, value_enum, default_value = "msg-ring", env = "RINGCAST_WAKE")]
    pub wake: WakeMode,
    /// Serve Prometheus `/metrics` and `/healthz` over HTTP on this address (off by default).
    #[arg(long, env = "RINGCAST_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Log format.
    #[arg(long, value_enum, default_value = "text", env = "RINGCAST_LOG_FORMAT")]
    pub log_format: LogFormat,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl ServerArgs {
    /// The configuration these flags describe.
    pub fn to_config(&self) -> ServerConfig {
        ServerConfig {
            addr: self.addr,
            shards: self.shards,
            pin: !self.no_pin,
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
            max_frame_bytes: self.max_frame_bytes,
            max_pending_bytes: self.max_pending_bytes,
            idle_timeout_secs: self.idle_timeout_secs,
            backlog: self.backlog,
            drain_secs: self.drain_secs,
            recv_buffers: self.recv_buffers,
            recv_buffer_size: self.recv_buffer_size,
            ring_entries: ServerConfig::default().ring_entries,
            auth_token: self.auth_token.clone(),
            rate_limit: self.rate_limit,
            rate_burst: self.rate_burst,
            wake: self.wake,
            metrics_addr: self.metrics_addr,
        }
    }
}

/// Installs the tracing subscriber (RUST_LOG honoured; default `info`).
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => b.try_init(),
        LogFormat::Json => b.json().try_init(),
    };
}

/// Raises RLIMIT_NOFILE to its hard limit so the connection limit, not the
/// descriptor limit, is what caps clients.
fn raise_nofile() {
    match rlimit_nofile_raise() {
        Ok((old, new)) => tracing::info!(from = old, to = new, "raised RLIMIT_NOFILE"),
        Err(e) => tracing::warn!(error = %e, "could not raise RLIMIT_NOFILE"),
    }
}

fn rlimit_nofile_raise() -> std::io::Result<(u64, u64)> {
    crate::uring::raise_nofile_limit()
}

/// Runs `ringcast server` until SIGINT or SIGTERM.
pub fn run(args: ServerArgs) -> ExitCode {
    init_logging(args.log_format);
    raise_nofile();
    let server = match Server::builder().config(args.to_config()).build() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ringcast server: {e}");
            return ExitCode::FAILURE;
        }
    };
    let handle = match server.spawn() {
        Ok(h) => h,
        Err(e) => {
            eprintln!("ringcast server: {e}");
            return ExitCode::FAILURE;
        }
    };
    let stopper = handle.stopper();
    let mut signals = match signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ringcast server: cannot install signal handlers: {e}");
            handle.shutdown();
            return ExitCode::FAILURE;
        }
    };
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            tracing::info!(signal = sig, "shutting down: draining clients");
            stopper.stop();
        }
    });
    match handle.join() {
        Ok(t) => {
            tracing::info!(
                total_messages = t.total_messages(),
                total_connections = t.total_connections,
                bytes_received = t.bytes_received,
                bytes_sent = t.bytes_sent,
                broadcasts_delivered = t.broadcasts_delivered,
                protocol_errors = t.protocol_errors(),
                "ringcast stopped"
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ringcast server: {e}");
            ExitCode::FAILURE
        }
    }
}
