//! `ringcast bench`: its flags, turned into a [`BenchConfig`] and run.

use crate::bench::{self, BenchConfig, Content, Workload};
use crate::server::IoBackend;
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Arguments of `ringcast bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Server address.
    #[arg(long, default_value = crate::server::config::DEFAULT_ADDR)]
    pub addr: SocketAddr,
    /// What to send.
    #[arg(long, default_value_t = Workload::Echo)]
    pub workload: Workload,
    /// I/O backend of the generator: auto (io_uring, else epoll),
    /// io-uring or epoll.
    #[arg(long, env = "RINGCAST_IO_BACKEND", default_value_t = IoBackend::Auto)]
    pub io_backend: IoBackend,
    /// Generator threads, each with its own I/O backend (default: the cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Connections (request/response workloads and `connections`).
    #[arg(long, short = 'c', default_value_t = 64)]
    pub connections: usize,
    /// Requests outstanding per connection (closed loop).
    #[arg(long, short = 'P', default_value_t = 1)]
    pub pipeline: usize,
    /// Open loop: total messages per second, latency measured from each
    /// message's intended send time (coordinated-omission corrected).
    #[arg(long)]
    pub rate: Option<u64>,
    /// Bytes of echo or broadcast content.
    #[arg(long, default_value_t = 32)]
    pub size: usize,
    /// What echo, broadcast and publish content is: `filler` (a string of
    /// --size bytes) or `telemetry` (an array of telemetry-like records of
    /// about --size bytes: realistic JSON, for --compress).
    #[arg(long, default_value_t = Content::Filler)]
    pub content: Content,
    /// Negotiate per-frame compression with `hello` on every connection:
    /// replies are decompressed, requests over the server's threshold are
    /// sent compressed. The server must agree, or the run fails.
    #[arg(long, value_enum, value_name = "CODEC")]
    pub compress: Option<super::CompressFlag>,
    /// New connections per second (default: as fast as possible).
    #[arg(long)]
    pub connect_rate: Option<u64>,
    /// Seconds to measure.
    #[arg(long, short = 'd', default_value_t = 10.0)]
    pub duration: f64,
    /// Stop after this many requests in total (instead of --duration).
    #[arg(long)]
    pub requests: Option<u64>,
    /// Seconds of warm-up before measuring.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Broadcast, pubsub and recover workloads: publishers.
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    /// Broadcast workload: subscribers; pubsub and recover: subscribers per
    /// channel.
    #[arg(long, default_value_t = 100)]
    pub subscribers: usize,
    /// Pubsub and recover workloads: channels (named bench-0, bench-1, …).
    #[arg(long, default_value_t = 10)]
    pub channels: usize,
    /// Pubsub workload: the channels keep history. The bench does not start
    /// a server: the target must run with `--history-size N` (a subscribe
    /// answered without an offset fails the run). The report adds what the
    /// history held at the end (bytes per retained publication). The
    /// recover workload always needs such a server.
    #[arg(long)]
    pub history: bool,
    /// Recover workload: publications each subscriber misses (at least)
    /// while it is away, before it resumes with `recover`. The server's
    /// --history-size and --history-recover-limit must cover it (and what
    /// arrives while it reconnects), or its recoveries are refused.
    #[arg(long, default_value_t = 1_000)]
    pub missed: u64,
    /// Pubsub workload: channels each subscriber connection subscribes to
    /// (subscriber connections: channels × subscribers / this).
    #[arg(long, default_value_t = 1)]
    pub subscriptions: usize,
    /// Pubsub workload: subscribe with patterns (bench-N.*), publishing to
    /// bench-N.x, instead of the channels bench-N: the same deliveries.
    #[arg(long)]
    pub pattern: bool,
    /// Another server to spread connections over (repeat it): the nodes of
    /// one cluster. Connections are dealt round robin over --addr and these.
    #[arg(long = "node", value_name = "ADDR")]
    pub more_addrs: Vec<std::net::SocketAddr>,
    /// Connections workload: spread over source addresses 127.0.0.1..=N.
    #[arg(long, default_value_t = 1)]
    pub source_ips: usize,
    /// Write the report as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the latency distribution in HdrHistogram's .hgrm format.
    #[arg(long)]
    pub hgrm: Option<PathBuf>,
    /// Draw latency by percentile to an SVG file.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// A label stored in the JSON report.
    #[arg(long, default_value = "")]
    pub label: String,
    /// Token sent in `auth` on every connection: the server's --auth-token,
    /// or a JWT (the connect workload then measures its verification).
    #[arg(long, env = "RINGCAST_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// No progress lines.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// TLS.
    #[command(flatten)]
    pub tls: super::tls::TlsArgs,
}

impl BenchArgs {
    /// The run configuration.
    pub fn to_config(&self) -> BenchConfig {
        let d = BenchConfig::default();
        BenchConfig {
            addr: self.addr,
            workload: self.workload,
            threads: self.threads.unwrap_or(d.threads),
            connections: self.connections,
            pipeline: self.pipeline,
            rate: self.rate,
            size: self.size,
            connect_rate: self.connect_rate,
            duration: Duration::from_secs_f64(self.duration.max(0.0)),
            requests: self.requests,
            warmup: Duration::from_secs_f64(self.warmup.max(0.0)),
            publishers: self.publishers,
            subscribers: self.subscribers,
            channels: self.channels,
            subscriptions: self.subscriptions,
            pattern: self.pattern,
            more_addrs: self.more_addrs.clone(),
            source_ips: self.source_ips,
            progress: !self.quiet,
            label: self.label.clone(),
            token: self.token.clone(),
            io_backend: self.io_backend,
            tls: self.tls.to_options(&self.addr.to_string()),
            compress: self.compress.map(Into::into),
            content: self.content,
            history: self.history,
            missed: self.missed,
        }
    }
}

/// Runs `ringcast bench`.
pub fn run(args: BenchArgs) -> ExitCode {
    let _ = crate::io::raise_nofile_limit();
    let report = match bench::run(args.to_config()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ringcast bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    print!("{}", report.to_text());
    let hist = bench::last_histogram();
    let mut ok = true;
    if let Some(p) = &args.json {
        let text = serde_json::to_string_pretty(&report).unwrap_or_default();
        if let Err(e) = std::fs::write(p, text + "\n") {
            eprintln!("ringcast bench: writing {}: {e}", p.display());
            ok = false;
        }
    }
    if let (Some(p), Some(h)) = (&args.hgrm, &hist) {
        if let Err(e) = std::fs::write(p, bench::report::to_hgrm(h)) {
            eprintln!("ringcast bench: writing {}: {e}", p.display());
            ok = false;
        }
    }
    if let (Some(p), Some(h)) = (&args.plot, &hist) {
        let title = format!(
            "ringcast {} — {} conns, pipeline {}, {:.0} msgs/s",
            report.workload, report.connections, report.pipeline, report.msgs_per_sec
        );
        let name = if report.label.is_empty() {
            "latency"
        } else {
            &report.label
        };
        if let Err(e) = bench::plot::write_svg(p, &title, &[(name, h)]) {
            eprintln!("ringcast bench: drawing {}: {e}", p.display());
            ok = false;
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
