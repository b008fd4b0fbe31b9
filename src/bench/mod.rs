//! The load generator behind `ringcast bench`.
//!
//! Threads each own an io_uring and many connections (see [`worker`]), so the
//! generator costs little per message and is not the bottleneck. Latency
//! goes into one HdrHistogram per thread (µs, 3 significant digits), merged
//! at the end. Closed loop keeps `pipeline` requests outstanding per
//! connection; open loop (`rate`) sends on a fixed schedule and measures
//! from each message's intended send time, so a stalled server cannot hide
//! its stall (coordinated omission).

mod conn;
mod conn_workloads;
pub mod plan;
pub mod plot;
pub mod recover;
mod replies;
pub mod report;
mod requests;
mod setup;
pub mod tls;
pub mod worker;

use crate::server::IoBackend;
use plan::{Plan, Role, Slot};
use report::{Latency, Machine, Report};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the generator sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// `ping` → `pong`.
    Ping,
    /// `echo` of `size` bytes of content.
    Echo,
    /// Publishers broadcast to subscribers; latency is publish → delivery.
    Broadcast,
    /// `channels` channels with `subscribers` subscribers each; every
    /// publisher publishes to the channels in turn; latency is publish →
    /// delivery.
    Pubsub,
    /// `get_stats`.
    Stats,
    /// 45 % ping, 45 % echo, 10 % get_stats.
    Mixed,
    /// Open and hold many connections, ping a sample, report RSS per connection.
    Connections,
    /// New connections, each with one ping, then closed: connections per
    /// second, and the latency of connect + TLS handshake (with `--tls`) +
    /// first reply.
    Connect,
    /// Pubsub on history channels where subscribers drop (a reset) and
    /// resume with `recover` while publishers keep publishing: publications
    /// recovered per second, time to catch up, loss (see [`recover`]).
    Recover,
}

impl Workload {
    /// Every workload, in the order `--help` lists them.
    pub const ALL: [Workload; 9] = [
        Workload::Ping,
        Workload::Echo,
        Workload::Broadcast,
        Workload::Pubsub,
        Workload::Stats,
        Workload::Mixed,
        Workload::Connections,
        Workload::Connect,
        Workload::Recover,
    ];

    /// Lower-case name (as `--workload` takes it).
    pub fn name(self) -> &'static str {
        match self {
            Workload::Ping => "ping",
            Workload::Echo => "echo",
            Workload::Broadcast => "broadcast",
            Workload::Pubsub => "pubsub",
            Workload::Stats => "stats",
            Workload::Mixed => "mixed",
            Workload::Connections => "connections",
            Workload::Connect => "connect",
            Workload::Recover => "recover",
        }
    }
}

crate::choices::named_choices!(Workload, name, "workload");

/// What echo, broadcast and publish requests carry as `content`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Content {
    /// A string of `size` filler bytes (`"xxx…"`): cheap to build and to
    /// parse, and it compresses to nearly nothing.
    #[default]
    Filler,
    /// An array of telemetry-like records (sensor, timestamps, readings)
    /// of about `size` bytes in all: realistic JSON for compression, which
    /// takes it down several-fold rather than a thousand-fold.
    Telemetry,
}

impl Content {
    /// Every kind, in the order `--help` lists them.
    pub const ALL: [Content; 2] = [Content::Filler, Content::Telemetry];

    /// Lower-case name (as `--content` takes it).
    pub fn name(self) -> &'static str {
        match self {
            Content::Filler => "filler",
            Content::Telemetry => "telemetry",
        }
    }
}

crate::choices::named_choices!(Content, name, "content");

/// `records` telemetry-like JSON objects, comma-separated (no brackets),
/// adding records until the text is at least `size` bytes (one at least).
/// Deterministic: every run sends the same bytes.
pub fn telemetry_records(size: usize) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(size + 256);
    // A fixed seed: the same bytes every run, so runs compare.
    let mut rng = crate::random::Rng::with_seed(0x9e37_79b9_7f4a_7c15);
    let mut next = move || rng.next_u64();
    let mut ts: u64 = 1_718_000_000_000;
    let mut i = 0u64;
    while s.len() < size || i == 0 {
        if i > 0 {
            s.push(',');
        }
        ts += 250 + next() % 1000;
        let r = next();
        let _ = write!(
            s,
            r#"{{"sensor":"sensor-{:04}","site":"plant-{}","seq":{},"ts":{},"temp_c":{}.{:02},"humidity":{}.{},"pressure_hpa":{}.{},"battery":0.{:02},"status":"{}"}}"#,
            r % 64,
            (r >> 8) % 4,
            i,
            ts,
            15 + (r >> 12) % 15,
            (r >> 16) % 100,
            30 + (r >> 24) % 40,
            (r >> 30) % 10,
            990 + (r >> 34) % 40,
            (r >> 40) % 10,
            50 + (r >> 44) % 50,
            if (r >> 52) % 20 == 0 { "warn" } else { "ok" },
        );
        i += 1;
    }
    s
}

/// A run's parameters.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Server address.
    pub addr: SocketAddr,
    /// More servers (nodes of one cluster): connections are dealt round
    /// robin over `addr` and these, so publishers and subscribers sit on
    /// every node.
    pub more_addrs: Vec<SocketAddr>,
    /// Workload.
    pub workload: Workload,
    /// Generator threads.
    pub threads: usize,
    /// Connections (requesters; for broadcast, publishers + subscribers).
    pub connections: usize,
    /// Requests outstanding per connection (closed loop).
    pub pipeline: usize,
    /// Total messages/s (open loop); None = closed loop.
    pub rate: Option<u64>,
    /// Content bytes for echo and broadcast.
    pub size: usize,
    /// New connections per second (None = as fast as possible).
    pub connect_rate: Option<u64>,
    /// Measured duration.
    pub duration: Duration,
    /// Stop after this many requests in total instead of a duration.
    pub requests: Option<u64>,
    /// Warm-up before measuring.
    pub warmup: Duration,
    /// Broadcast publishers.
    pub publishers: usize,
    /// Broadcast subscribers; pubsub: subscribers per channel.
    pub subscribers: usize,
    /// Pubsub: channels.
    pub channels: usize,
    /// Pubsub: channels each subscriber connection subscribes to (its
    /// own and the next ones): subscriber connections are
    /// `channels × subscribers / subscriptions`.
    pub subscriptions: usize,
    /// Pubsub: subscribe with patterns (`bench-<n>.*`, publishing to
    /// `bench-<n>.x`) instead of channels; the deliveries are the same.
    pub pattern: bool,
    /// Source addresses 127.0.0.1..=N (connections workload).
    pub source_ips: usize,
    /// Print a progress line each second (to stderr).
    pub progress: bool,
    /// Free-form label in the report.
    pub label: String,
    /// Token for servers that require `auth` as the first frame.
    pub token: Option<String>,
    /// The generator's I/O backend (`auto`: io_uring, else epoll).
    pub io_backend: IoBackend,
    /// Connect over TLS (None: plain TCP).
    pub tls: Option<crate::client::TlsOptions>,
    /// Negotiate this codec with `hello` on every connection (None: no
    /// hello, plain frames). Replies are decompressed; requests over the
    /// server's threshold are sent compressed.
    pub compress: Option<crate::protocol::codec::Codec>,
    /// What echo, broadcast and publish carry.
    pub content: Content,
    /// Pubsub: the channels are history channels (the server runs with
    /// `--history-size`): a subscribe answered without an offset fails the
    /// run, and the report gives what the history held at the end.
    pub history: bool,
    /// Recover: publications a subscriber misses (at least) before it
    /// resumes.
    pub missed: u64,
}

impl Default for BenchConfig {
    fn default() -> Self {
        BenchConfig {
            addr: crate::server::config::DEFAULT_ADDR.parse().expect("valid"),
            more_addrs: Vec::new(),
            workload: Workload::Echo,
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            connections: 64,
            pipeline: 1,
            rate: None,
            size: 32,
            connect_rate: None,
            duration: Duration::from_secs(10),
            requests: None,
            warmup: Duration::from_secs(1),
            publishers: 1,
            subscribers: 100,
            channels: 10,
            subscriptions: 1,
            pattern: false,
            source_ips: 1,
            progress: true,
            label: String::new(),
            token: None,
            io_backend: IoBackend::Auto,
            tls: None,
            compress: None,
            content: Content::Filler,
            history: false,
            missed: 1_000,
        }
    }
}

/// Shared between the threads of one run.
pub struct Control {
    /// The run's parameters.
    pub config: BenchConfig,
    clock: Instant,
    /// Measuring starts at this clock reading (ns); 0 until every thread
    /// has connected.
    measure_from: AtomicU64,
    /// Sending stops at this clock reading (ns).
    measure_until: AtomicU64,
    /// Threads connected so far.
    connected: AtomicUsize,
    /// Set to end the run early.
    pub stop: AtomicBool,
    /// Messages measured so far, per thread (for the progress line).
    pub progress: Vec<AtomicU64>,
}

impl Control {
    /// Nanoseconds on the run's clock (monotonic, shared by all threads).
    #[inline]
    pub fn now_ns(&self) -> u64 {
        self.clock.elapsed().as_nanos() as u64
    }

    /// Called by each thread once connected; blocks until all are, then
    /// returns the measuring window `(from, until)` in clock ns. The last
    /// thread to connect starts the clock's schedule, so connecting (which
    /// may be slow for many connections) is never measured.
    pub fn connected_wait(&self) -> (u64, u64) {
        let n = self.connected.fetch_add(1, Ordering::SeqCst) + 1;
        if n == self.config.threads {
            let now = self.now_ns();
            let (warm, len) = if self.config.requests.is_some() {
                (0, u64::MAX / 4)
            } else {
                let w = self.config.warmup.as_nanos() as u64;
                (w, w + self.config.duration.as_nanos() as u64)
            };
            self.measure_from.store(now + warm, Ordering::SeqCst);
            self.measure_until.store(now + len, Ordering::SeqCst);
        }
        loop {
            let until = self.measure_until.load(Ordering::SeqCst);
            if until != 0 {
                return (self.measure_from.load(Ordering::SeqCst), until);
            }
            if self.stop.load(Ordering::Relaxed) {
                return (0, 0);
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Bad parameters.
    #[error("invalid parameters: {0}")]
    Config(String),
    /// A generator thread failed (connect, ring setup…).
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Runs a load test and returns its report.
pub fn run(config: BenchConfig) -> Result<Report, BenchError> {
    if config.workload == Workload::Connections {
        return conn_workloads::run(&config);
    }
    if config.workload == Workload::Connect {
        return conn_workloads::run_connect(&config);
    }
    if config.workload == Workload::Recover {
        return recover::run(&config);
    }
    if config.history && config.workload != Workload::Pubsub {
        return Err(BenchError::Config(
            "--history applies to the pubsub workload (recover always uses history)".into(),
        ));
    }
    let threads = config.threads.max(1);
    let (roles, conns_total) = match config.workload {
        Workload::Broadcast => {
            if config.publishers == 0 {
                return Err(BenchError::Config(
                    "broadcast needs at least one publisher".into(),
                ));
            }
            let mut r = vec![Role::Publisher; config.publishers];
            r.extend(std::iter::repeat_n(Role::Subscriber, config.subscribers));
            let n = r.len();
            (r, n)
        }
        Workload::Pubsub => {
            if config.publishers == 0 || config.channels == 0 {
                return Err(BenchError::Config(
                    "pubsub needs at least one publisher and one channel".into(),
                ));
            }
            let per_conn = config.subscriptions.max(1);
            let total = config.channels.saturating_mul(config.subscribers);
            if per_conn > config.channels || total % per_conn != 0 {
                return Err(BenchError::Config(format!(
                    "--subscriptions {per_conn} must be at most --channels and divide \
                     channels × subscribers ({total})"
                )));
            }
            let mut r = vec![Role::Publisher; config.publishers];
            let subscribers = total / per_conn;
            r.extend(std::iter::repeat_n(Role::Subscriber, subscribers));
            let n = r.len();
            (r, n)
        }
        _ => {
            if config.connections == 0 {
                return Err(BenchError::Config("need at least one connection".into()));
            }
            (
                vec![Role::Requester; config.connections],
                config.connections,
            )
        }
    };
    let threads = threads.min(conns_total);
    let mut config = config;
    config.threads = threads;
    // Deal connections round-robin so every thread gets a mix of roles,
    // and every server (node) a share of each role. Each connection's
    // channel: a subscriber's is the one it joins (S per channel), a
    // publisher's the one it starts its rotation at.
    let servers: Vec<SocketAddr> = std::iter::once(config.addr)
        .chain(config.more_addrs.iter().copied())
        .collect();
    let mut per_thread: Vec<Vec<Slot>> = vec![Vec::new(); threads];
    let (mut publisher, mut subscriber) = (0usize, 0usize);
    for (i, r) in roles.iter().enumerate() {
        let channel = match r {
            Role::Publisher => {
                publisher += 1;
                publisher - 1
            }
            Role::Subscriber => {
                // Its first channel; it holds `subscriptions` from there,
                // so every channel gets `subscribers` of them.
                subscriber += 1;
                ((subscriber - 1) * config.subscriptions.max(1)) % config.channels.max(1)
            }
            Role::Requester => 0,
        };
        per_thread[i % threads].push(Slot {
            role: *r,
            server: servers[i % servers.len()],
            channel,
        });
    }
    let senders = roles
        .iter()
        .filter(|r| **r != Role::Subscriber)
        .count()
        .max(1);
    let rate_per_conn = config.rate.map(|r| r as f64 / senders as f64);
    let ctl = Arc::new(Control {
        measure_from: AtomicU64::new(0),
        measure_until: AtomicU64::new(0),
        connected: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
        progress: (0..threads).map(|_| AtomicU64::new(0)).collect(),
        config: config.clone(),
        clock: Instant::now(),
    });
    let mut handles = Vec::new();
    for (i, roles) in per_thread.into_iter().enumerate() {
        let budget = config
            .requests
            .map(|n| n / threads as u64 + u64::from((i as u64) < n % threads as u64));
        let plan = Plan {
            index: i,
            slots: roles,
            request_budget: budget,
            rate_per_conn,
            source_ips: source_ips(config.source_ips),
        };
        let ctl = ctl.clone();
        handles.push(
            std::thread::Builder::new()
                .name(format!("ringcast-bench-{i}"))
                .spawn(move || {
                    let r = worker::run(plan, ctl.clone());
                    if r.is_err() {
                        // Release the others from the connect barrier.
                        ctl.stop.store(true, Ordering::SeqCst);
                    }
                    r
                })?,
        );
    }
    let mut last = 0u64;
    let mut tick = Instant::now();
    while handles.iter().any(|h| !h.is_finished()) {
        std::thread::sleep(Duration::from_millis(20));
        if tick.elapsed() >= Duration::from_secs(1) {
            let done: u64 = ctl.progress.iter().map(|p| p.load(Ordering::Relaxed)).sum();
            if config.progress {
                let from = ctl.measure_from.load(Ordering::Relaxed);
                let phase = if from == 0 {
                    "connecting"
                } else if ctl.now_ns() < from {
                    "warm-up"
                } else {
                    "measuring"
                };
                eprintln!(
                    "  [{:>5.1}s {phase:>10}] {:>12.0} msgs/s",
                    ctl.now_ns() as f64 / 1e9,
                    done.saturating_sub(last) as f64 / tick.elapsed().as_secs_f64()
                );
            }
            last = done;
            tick = Instant::now();
        }
    }
    let mut outcomes = Vec::new();
    for h in handles {
        match h.join() {
            Ok(Ok(o)) => outcomes.push(o),
            Ok(Err(e)) => return Err(BenchError::Io(e)),
            Err(_) => {
                return Err(BenchError::Io(std::io::Error::other(
                    "a generator thread panicked",
                )))
            }
        }
    }
    let hist = report::merge(outcomes.iter().map(|o| &o.hist));
    let responses: u64 = outcomes.iter().map(|o| o.responses).sum();
    let deliveries: u64 = outcomes.iter().map(|o| o.deliveries).sum();
    let bytes: u64 = outcomes.iter().map(|o| o.bytes).sum();
    let wire = outcomes
        .iter()
        .fold(report::WireBytes::default(), |w, o| w + o.wire);
    let errors: u64 = outcomes.iter().map(|o| o.errors).sum();
    let reconnects: u64 = outcomes.iter().map(|o| o.reconnects).sum();
    if let Some(e) = outcomes.iter().find_map(|o| o.first_error.clone()) {
        eprintln!("  first error: {}", truncate(&e, 200));
    }
    let seconds = if config.requests.is_some() {
        outcomes
            .iter()
            .map(|o| o.finished_ns)
            .max()
            .unwrap_or(0)
            .saturating_sub(ctl.measure_from.load(Ordering::Relaxed)) as f64
            / 1e9
    } else {
        config.duration.as_secs_f64()
    };
    let history = if config.history {
        let held = setup::get_stats(config.addr)?.history;
        Some(report::HistoryHeld::from(held.ok_or_else(|| {
            BenchError::Config(
                "--history: the server reports no history (start it with --history-size N)".into(),
            )
        })?))
    } else {
        None
    };
    let messages = if matches!(config.workload, Workload::Broadcast | Workload::Pubsub) {
        deliveries
    } else {
        responses
    };
    let report = Report {
        label: config.label.clone(),
        addr: servers
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(","),
        workload: config.workload.name().into(),
        connections: conns_total,
        pipeline: config.pipeline,
        rate: config.rate.unwrap_or(0),
        size: config.size,
        threads,
        seconds,
        messages,
        msgs_per_sec: messages as f64 / seconds.max(1e-9),
        mb_per_sec: bytes as f64 / 1e6 / seconds.max(1e-9),
        deliveries_per_sec: deliveries as f64 / seconds.max(1e-9),
        latency_us: Latency::from_histogram(&hist),
        errors,
        reconnects,
        rss_bytes_per_connection: None,
        compression: config.compress.map(|c| c.as_str().to_owned()),
        content: config.content.name().into(),
        wire,
        history,
        recover: None,
        machine: Machine::current(),
        date: utc_now(),
    };
    LAST_HIST.with(|h| *h.borrow_mut() = Some(hist));
    Ok(report)
}

thread_local! {
    /// The merged histogram of the last run on this thread (for --hgrm and --plot).
    static LAST_HIST: std::cell::RefCell<Option<hdrhistogram::Histogram<u64>>> = const { std::cell::RefCell::new(None) };
}

pub(crate) fn set_last_histogram(h: hdrhistogram::Histogram<u64>) {
    LAST_HIST.with(|c| *c.borrow_mut() = Some(h));
}

/// The merged histogram of the last [`run`] on this thread.
pub fn last_histogram() -> Option<hdrhistogram::Histogram<u64>> {
    LAST_HIST.with(|h| h.borrow().clone())
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// 127.0.0.1 ..= 127.0.0.N.
pub fn source_ips(n: usize) -> Vec<IpAddr> {
    if n <= 1 {
        return Vec::new();
    }
    (1..=n.min(254))
        .map(|i| IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, i as u8)))
        .collect()
}

/// The current UTC time as a timestamp string.
pub fn utc_now() -> String {
    crate::protocol::TimestampCache::new()
        .format(crate::protocol::time::unix_ms_now())
        .to_string()
}
