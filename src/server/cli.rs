//! `ringcast server`: flags, config file, logging, signals.
//!
//! Every setting has one name used three ways: the flag `--max-frame-bytes`,
//! the variable `RINGCAST_MAX_FRAME_BYTES` and the config-file key
//! `max_frame_bytes`. A flag beats a variable, a variable beats the file,
//! the file beats the built-in default (shown in `--help`).

use super::{Server, ServerConfig, WakeMode};
use clap::Args;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// Arguments of `ringcast server`; also the schema of the config file (every
/// field optional: what is absent falls through to the next source).
#[derive(Debug, Clone, Default, PartialEq, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerArgs {
    /// Read settings from this TOML file; flags and RINGCAST_* variables
    /// override it. See deploy/ringcast.toml.
    #[arg(long, env = "RINGCAST_CONFIG", value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    #[serde(skip)]
    pub print_config: bool,
    /// Address to listen on [default: 127.0.0.1:9999].
    #[arg(long, env = "RINGCAST_ADDR")]
    pub addr: Option<SocketAddr>,
    /// Shards (threads with their own ring); 0 = one per core [default: 0].
    #[arg(long, env = "RINGCAST_SHARDS")]
    pub shards: Option<usize>,
    /// Do not pin shard threads to cores (file key: `pin = false`).
    #[arg(long, env = "RINGCAST_NO_PIN", value_parser = clap::builder::BoolishValueParser::new())]
    #[serde(skip)]
    pub no_pin: bool,
    /// Pin shard threads to cores (file key only; the flag is --no-pin).
    #[arg(skip)]
    pub pin: Option<bool>,
    /// Connections over all shards; one more gets `server_full` [default: 100000].
    #[arg(long, env = "RINGCAST_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Connections from one IP address; 0 = unlimited [default: 0].
    #[arg(long, env = "RINGCAST_MAX_CONNECTIONS_PER_IP")]
    pub max_connections_per_ip: Option<usize>,
    /// Largest frame payload accepted, in bytes [default: 1048576].
    #[arg(long, env = "RINGCAST_MAX_FRAME_BYTES")]
    pub max_frame_bytes: Option<usize>,
    /// Per-shard budget for partly received frames; a connection whose
    /// partial frame would need more gets `server_full` and is closed
    /// [default: 268435456].
    #[arg(long, env = "RINGCAST_MAX_PARTIAL_BYTES")]
    pub max_partial_bytes: Option<usize>,
    /// Unsent output after which a client is cut with `slow_consumer`
    /// [default: 8388608].
    #[arg(long, env = "RINGCAST_MAX_PENDING_BYTES")]
    pub max_pending_bytes: Option<usize>,
    /// Close connections without a complete frame for this many seconds;
    /// 0 = never [default: 300].
    #[arg(long, env = "RINGCAST_IDLE_TIMEOUT_SECS")]
    pub idle_timeout_secs: Option<u64>,
    /// Listen backlog [default: 4096].
    #[arg(long, env = "RINGCAST_BACKLOG")]
    pub backlog: Option<i32>,
    /// Seconds to flush pending output at shutdown [default: 5].
    #[arg(long, env = "RINGCAST_DRAIN_SECS")]
    pub drain_secs: Option<u64>,
    /// Receive buffers per shard, a power of two [default: 512].
    #[arg(long, env = "RINGCAST_RECV_BUFFERS")]
    pub recv_buffers: Option<u16>,
    /// Size of each receive buffer in bytes [default: 32768].
    #[arg(long, env = "RINGCAST_RECV_BUFFER_SIZE")]
    pub recv_buffer_size: Option<usize>,
    /// Submission queue entries per shard ring [default: 4096].
    #[arg(long, env = "RINGCAST_RING_ENTRIES")]
    pub ring_entries: Option<u32>,
    /// Require `{"type":"auth","token":…}` as the first frame.
    #[arg(long, env = "RINGCAST_AUTH_TOKEN", hide_env_values = true)]
    pub auth_token: Option<String>,
    /// Read the auth token from this file (trailing newline ignored); for
    /// systemd credentials and container secrets.
    #[arg(long, env = "RINGCAST_AUTH_TOKEN_FILE", value_name = "FILE")]
    pub auth_token_file: Option<PathBuf>,
    /// Per-connection messages per second; 0 = unlimited [default: 0].
    #[arg(long, env = "RINGCAST_RATE_LIMIT")]
    pub rate_limit: Option<u32>,
    /// Burst for the rate limit; 0 = one second's worth [default: 0].
    #[arg(long, env = "RINGCAST_RATE_BURST")]
    pub rate_burst: Option<u32>,
    /// How shards wake each other for broadcasts [default: msg-ring].
    #[arg(long, value_enum, env = "RINGCAST_WAKE")]
    pub wake: Option<WakeMode>,
    /// I/O backend: io-uring, epoll, or auto (io_uring, falling back to
    /// epoll where it is refused) [default: auto].
    #[arg(long, value_enum, env = "RINGCAST_IO_BACKEND")]
    pub io_backend: Option<super::IoBackend>,
    /// Serve Prometheus `/metrics` and `/healthz` over HTTP on this address
    /// (off unless set; keep it on a private interface).
    #[arg(long, env = "RINGCAST_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Log format [default: text].
    #[arg(long, value_enum, env = "RINGCAST_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Seconds between info log lines with the headline stats; 0 = off
    /// [default: 60].
    #[arg(long, env = "RINGCAST_STATS_INTERVAL_SECS")]
    pub stats_interval_secs: Option<u64>,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Default seconds between periodic stats lines.
pub const DEFAULT_STATS_INTERVAL_SECS: u64 = 60;

/// Calls `$m!($($pre)*; field, ...)` with every setting that has the same
/// name and type (`Option<T>` here, `T` there) in [`ServerConfig`], so the
/// merge and conversion code below lists them once.
macro_rules! with_server_fields {
    ($m:ident!($($pre:tt)*)) => {
        $m!($($pre)*; addr, shards, pin, max_connections, max_connections_per_ip,
            max_frame_bytes, max_partial_bytes, max_pending_bytes, idle_timeout_secs, backlog, drain_secs,
            recv_buffers, recv_buffer_size, ring_entries, rate_limit, rate_burst, wake, io_backend)
    };
}

macro_rules! fill_missing {
    ($hi:ident, $lo:ident; $($f:ident),*) => {
        $( if $hi.$f.is_none() { $hi.$f = $lo.$f.take(); } )*
    };
}

macro_rules! apply_to_config {
    ($args:ident, $cfg:ident; $($f:ident),*) => {
        $( if let Some(v) = $args.$f.clone() { $cfg.$f = v; } )*
    };
}

macro_rules! from_config {
    ($args:ident, $cfg:ident; $($f:ident),*) => {
        $( $args.$f = Some($cfg.$f.clone()); )*
    };
}

/// The configuration a server process runs with, every source merged.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// What the shards get.
    pub server: ServerConfig,
    /// Log output format.
    pub log_format: LogFormat,
    /// Seconds between periodic stats lines (0 = off).
    pub stats_interval_secs: u64,
    /// Where the auth token was read from, if from a file.
    pub auth_token_file: Option<PathBuf>,
}

impl ServerArgs {
    /// Reads a config file: TOML whose keys are the flag names with `_`.
    /// Unknown keys and wrong types are errors naming the line.
    pub fn from_file(path: &Path) -> Result<ServerArgs, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
        Self::from_toml(&text).map_err(|e| format!("config file {}: {e}", path.display()))
    }

    /// Parses config-file text. Errors quote the offending line, except a
    /// line that may hold a secret (its key mentions `token`), which is
    /// named by number only.
    pub fn from_toml(text: &str) -> Result<ServerArgs, String> {
        toml::from_str(text).map_err(|e: toml::de::Error| {
            let line_no = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            let line = line_no.and_then(|n| text.lines().nth(n - 1)).unwrap_or("");
            if line.to_ascii_lowercase().contains("token") {
                // Neither the line nor the value (which the message may quote).
                let mut msg = e.message().to_string();
                if let Some((_, value)) = line.split_once('=') {
                    for v in [value.trim(), value.trim().trim_matches(['"', '\''])] {
                        if !v.is_empty() {
                            msg = msg.replace(v, "<redacted>");
                        }
                    }
                }
                format!(
                    "line {}: {msg} (line not shown: it may hold a secret)",
                    line_no.unwrap_or(0)
                )
            } else {
                e.to_string().trim_end().to_string()
            }
        })
    }

    /// Merges the flags and variables (already in `self`) over the config
    /// file (if `--config` names one) over the defaults.
    pub fn resolve(mut self) -> Result<Settings, String> {
        if self.no_pin {
            self.pin = Some(false);
        }
        if let Some(path) = self.config.clone() {
            let mut file = ServerArgs::from_file(&path)?;
            let me = &mut self;
            // The token and the token file are one setting: either given
            // by a flag or variable replaces both from the file.
            if me.auth_token.is_some() || me.auth_token_file.is_some() {
                file.auth_token = None;
                file.auth_token_file = None;
            }
            with_server_fields!(fill_missing!(me, file));
            fill_missing!(me, file; auth_token, auth_token_file, metrics_addr, log_format,
                stats_interval_secs);
        }
        let mut server = ServerConfig::default();
        let args = &self;
        with_server_fields!(apply_to_config!(args, server));
        server.metrics_addr = self.metrics_addr;
        server.auth_token = match (&self.auth_token, &self.auth_token_file) {
            (Some(_), Some(_)) => {
                return Err("give the auth token or a file holding it, not both".into())
            }
            (Some(t), None) => Some(t.clone()),
            (None, Some(path)) => Some(read_token(path)?),
            (None, None) => None,
        };
        if server.auth_token.as_deref() == Some("") {
            return Err("the auth token is empty".into());
        }
        server.validate()?;
        Ok(Settings {
            server,
            log_format: self.log_format.unwrap_or(LogFormat::Text),
            stats_interval_secs: self
                .stats_interval_secs
                .unwrap_or(DEFAULT_STATS_INTERVAL_SECS),
            auth_token_file: self.auth_token_file,
        })
    }
}

/// Reads a secret from a file, without its trailing line break.
fn read_token(path: &Path) -> Result<String, String> {
    let t = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read auth token file {}: {e}", path.display()))?;
    Ok(t.trim_end_matches(['\n', '\r']).to_string())
}

impl Settings {
    /// The configuration as a config file that reproduces it. An auth token
    /// given literally is not printed (a comment says one is set); one read
    /// from a file is printed as that file's path.
    pub fn to_toml(&self) -> String {
        let mut args = ServerArgs::default();
        let cfg = &self.server;
        with_server_fields!(from_config!(args, cfg));
        args.auth_token_file = self.auth_token_file.clone();
        args.metrics_addr = cfg.metrics_addr;
        args.log_format = Some(self.log_format);
        args.stats_interval_secs = Some(self.stats_interval_secs);
        let body = toml::to_string(&args).expect("settings serialise as TOML");
        let mut out = String::from(
            "# ringcast server: effective configuration (defaults < file < RINGCAST_* < flags)\n",
        );
        out.push_str(&body);
        if self.server.auth_token.is_some() && self.auth_token_file.is_none() {
            out.push_str("# auth_token is set but not printed\n");
        }
        out
    }
}

/// Installs the tracing subscriber (RUST_LOG honoured; default `info`).
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only for a person at a terminal: escape codes in the journal or
    // a log file are noise (NO_COLOR turns them off anywhere).
    use std::io::IsTerminal;
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
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
    crate::io::raise_nofile_limit()
}

/// Runs `ringcast server` until SIGINT or SIGTERM.
pub fn run(args: ServerArgs) -> ExitCode {
    let print = args.print_config;
    let settings = match args.resolve() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ringcast server: {e}");
            return ExitCode::FAILURE;
        }
    };
    if print {
        print!("{}", settings.to_toml());
        return ExitCode::SUCCESS;
    }
    init_logging(settings.log_format);
    raise_nofile();
    let server = match Server::builder().config(settings.server.clone()).build() {
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
    let watcher = handle.watcher();
    let reporter = StatsReporter::start(watcher.clone(), settings.stats_interval_secs);
    let result = handle.join();
    drop(reporter);
    match result {
        Ok(_) if watcher.failed_shards() > 0 => {
            // A supervisor should know: exit non-zero (Restart=on-failure).
            eprintln!(
                "ringcast server: {} shard(s) stopped on an I/O error (see the log)",
                watcher.failed_shards()
            );
            ExitCode::FAILURE
        }
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

/// Logs the headline stats at info level every interval, from its own
/// thread; stops when dropped.
struct StatsReporter {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StatsReporter {
    fn start(watcher: super::Watcher, interval_secs: u64) -> StatsReporter {
        if interval_secs == 0 {
            return StatsReporter {
                stop: None,
                thread: None,
            };
        }
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let interval = Duration::from_secs(interval_secs);
        let thread = std::thread::Builder::new()
            .name("ringcast-stats".into())
            .spawn(move || {
                let rss = super::stats::RssReader::new();
                let mut last = watcher.totals().total_messages();
                // Wakes each interval; a message or a hang-up ends the loop.
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    rx.recv_timeout(interval)
                {
                    let t = watcher.totals();
                    let total = t.total_messages();
                    tracing::info!(
                        connected = t.connected,
                        total_connections = t.total_connections,
                        total_messages = total,
                        messages_per_second = (total - last) / interval_secs,
                        bytes_received = t.bytes_received,
                        bytes_sent = t.bytes_sent,
                        broadcasts_delivered = t.broadcasts_delivered,
                        slow_consumer_disconnects = t.slow_consumer_disconnects,
                        protocol_errors = t.protocol_errors(),
                        rss_bytes = rss.rss_bytes(),
                        "stats"
                    );
                    last = total;
                }
            })
            .ok();
        StatsReporter {
            stop: Some(tx),
            thread,
        }
    }
}

impl Drop for StatsReporter {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
