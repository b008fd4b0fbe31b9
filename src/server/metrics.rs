//! The metrics endpoint: `GET /metrics` in the Prometheus text exposition
//! format (version 0.0.4) and `GET /healthz`, over a minimal HTTP/1.1
//! responder on a thread of its own (`--metrics-addr`, off by default).
//!
//! Nothing here runs on a shard. The shards keep writing their plain
//! single-writer counters ([`super::stats`]); a scrape reads them through a
//! prometheus-client [`Collector`], so there is no second set of metric
//! objects to keep in step and the hot path pays nothing for the endpoint.
//! The one cost the endpoint adds to the shards is request timing (two
//! clock reads and two stores per receive chunk, not per request), and only
//! when it is configured.
//!
//! The responder serves one connection at a time, closes every connection
//! after its response, and gives a client [`IO_TIMEOUT`] to send its request
//! head and another to read the response (one deadline for all of it, not
//! per write), plus a short linger: a stuck or slow client holds the thread
//! for at most about 4.2 s, and delays scrapes queued behind it by as much.
//! At stop the listener is shut down, which ends the blocked `accept`.

use super::stats::{DurationHistogram, RssReader, ShardCounters, DURATION_BOUNDS};
use super::{ServerError, Shared};
use crate::protocol::{ErrorCode, RequestKind};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{prometheus_text, DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Time a client has to send its request head; also the write timeout.
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest request head (request line and headers) accepted.
const MAX_HEAD: usize = 8 * 1024;
/// How long a response waits for the client to close before closing anyway.
const LINGER: Duration = Duration::from_millis(200);
/// Input discarded while lingering, at most.
const MAX_LINGER_BYTES: usize = 64 * 1024;
/// Content type of every answer but the metrics.
const TEXT: &str = "text/plain; charset=utf-8";

/// Binds the endpoint's listener (a plain blocking socket: no
/// SO_REUSEPORT, so a port already in use is an error, not a silent share).
pub(crate) fn bind(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr).map_err(|e| {
        let hint = match e.kind() {
            io::ErrorKind::AddrInUse => {
                " (something is listening there: pick another --metrics-addr)"
            }
            io::ErrorKind::PermissionDenied => " (ports below 1024 need CAP_NET_BIND_SERVICE)",
            io::ErrorKind::AddrNotAvailable => " (no local interface has this address)",
            _ => "",
        };
        ServerError::Bind(io::Error::new(
            e.kind(),
            format!("cannot listen for metrics on {addr}: {e}{hint}"),
        ))
    })
}

/// The running endpoint thread.
pub(crate) struct MetricsEndpoint {
    addr: SocketAddr,
    /// A second handle on the listening socket, to shut it down at stop.
    listener: TcpListener,
    closing: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsEndpoint {
    /// Starts serving on `listener`.
    pub fn start(listener: TcpListener, shared: Arc<Shared>) -> io::Result<MetricsEndpoint> {
        let addr = listener.local_addr()?;
        let handle = listener.try_clone()?;
        let closing = Arc::new(AtomicBool::new(false));
        let flag = closing.clone();
        let thread = std::thread::Builder::new()
            .name("ringcast-metrics".into())
            .spawn(move || serve(listener, shared, flag))?;
        tracing::info!(addr = %addr, "metrics endpoint listening (/metrics, /healthz)");
        Ok(MetricsEndpoint {
            addr,
            listener: handle,
            closing,
            thread: Some(thread),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, lets a response in progress finish (bounded by
    /// twice [`IO_TIMEOUT`] plus the linger) and joins the thread.
    pub fn stop(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.closing.store(true, Ordering::SeqCst);
        // shutdown(2) on a listening socket wakes a blocked accept (EINVAL)
        // and refuses new connections; closing our handle alone would not,
        // since the thread holds the same socket.
        let _ = socket2::SockRef::from(&self.listener).shutdown(Shutdown::Both);
        let _ = thread.join();
    }
}

impl Drop for MetricsEndpoint {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The endpoint thread's body.
fn serve(listener: TcpListener, shared: Arc<Shared>, closing: Arc<AtomicBool>) {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(ShardCollector::new(shared.clone())));
    let mut body = String::with_capacity(16 * 1024);
    for conn in listener.incoming() {
        if closing.load(Ordering::SeqCst) {
            break;
        }
        match conn {
            Ok(stream) => {
                if let Err(e) = respond(stream, &registry, &shared, &mut body) {
                    tracing::debug!(error = %e, "metrics request failed");
                }
            }
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "metrics endpoint: accept failed");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// What the request head asked for.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics,
    Healthz,
    NotFound,
    MethodNotAllowed,
    BadRequest,
}

/// Routes a request head (everything up to the blank line). Returns the
/// route and whether the method was HEAD (headers only).
fn route(head: &[u8]) -> (Route, bool) {
    let line_end = head.iter().position(|b| *b == b'\n').unwrap_or(head.len());
    let Ok(line) = std::str::from_utf8(&head[..line_end]) else {
        return (Route::BadRequest, false);
    };
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return (Route::BadRequest, false);
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return (Route::BadRequest, false);
    }
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        return (Route::MethodNotAllowed, false);
    }
    let path = target.split('?').next().unwrap_or(target);
    let route = match path {
        "/metrics" => Route::Metrics,
        "/healthz" => Route::Healthz,
        _ => Route::NotFound,
    };
    (route, head_only)
}

/// Where the request head ends (after the blank line), if it has.
fn head_end(buf: &[u8]) -> Option<usize> {
    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
        return Some(i + 4);
    }
    buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2)
}

/// Reads one request from `stream` and answers it, then closes.
fn respond(
    mut stream: TcpStream,
    registry: &Registry,
    shared: &Shared,
    body: &mut String,
) -> io::Result<()> {
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let deadline = Instant::now() + IO_TIMEOUT;
    let mut buf = [0u8; MAX_HEAD];
    let mut len = 0;
    let (route, head_only) = loop {
        if let Some(end) = head_end(&buf[..len]) {
            break route(&buf[..end]);
        }
        if len == buf.len() {
            return write_response(
                &mut stream,
                "431 Request Header Fields Too Large",
                TEXT,
                b"request head too large\n",
                false,
            );
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let timed_out = left.is_zero() || {
            stream.set_read_timeout(Some(left))?;
            match stream.read(&mut buf[len..]) {
                Ok(0) => return Ok(()), // gone before asking anything
                Ok(n) => {
                    len += n;
                    false
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => false,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    true
                }
                Err(e) => return Err(e),
            }
        };
        if timed_out {
            let status = "408 Request Timeout";
            return write_response(&mut stream, status, TEXT, b"request timeout\n", false);
        }
    };
    match route {
        Route::Metrics => {
            body.clear();
            if prometheus_text::encode(body, registry).is_err() {
                return write_response(
                    &mut stream,
                    "500 Internal Server Error",
                    TEXT,
                    b"encoding failed\n",
                    head_only,
                );
            }
            write_response(
                &mut stream,
                "200 OK",
                prometheus_text::CONTENT_TYPE,
                body.as_bytes(),
                head_only,
            )
        }
        Route::Healthz => {
            if shared.stop.load(Ordering::Relaxed) {
                write_response(
                    &mut stream,
                    "503 Service Unavailable",
                    TEXT,
                    b"shutting down\n",
                    head_only,
                )
            } else if shared.failed_shards.load(Ordering::Relaxed) > 0 {
                write_response(
                    &mut stream,
                    "503 Service Unavailable",
                    TEXT,
                    b"a shard stopped on an I/O error (see the log)\n",
                    head_only,
                )
            } else if shared.cluster().is_some_and(|c| !c.threads_alive()) {
                // Still serving its own clients: not a reason to restart it.
                write_response(
                    &mut stream,
                    "200 OK",
                    TEXT,
                    b"degraded: a cluster backplane thread died and is being restarted (see the log)\n",
                    head_only,
                )
            } else if shared.cluster().is_some_and(|c| !c.is_up()) {
                write_response(
                    &mut stream,
                    "200 OK",
                    TEXT,
                    b"degraded: the cluster backplane is unreachable; delivering locally\n",
                    head_only,
                )
            } else {
                write_response(&mut stream, "200 OK", TEXT, b"ok\n", head_only)
            }
        }
        Route::NotFound => write_response(
            &mut stream,
            "404 Not Found",
            TEXT,
            b"not found: try /metrics or /healthz\n",
            head_only,
        ),
        Route::MethodNotAllowed => write_response(
            &mut stream,
            "405 Method Not Allowed",
            TEXT,
            b"only GET and HEAD\n",
            false,
        ),
        Route::BadRequest => write_response(
            &mut stream,
            "400 Bad Request",
            TEXT,
            b"bad request\n",
            false,
        ),
    }
}

/// Writes all of `bytes` before `deadline`, or fails with `TimedOut`.
fn write_all_by(stream: &mut TcpStream, mut bytes: &[u8], deadline: Instant) -> io::Result<()> {
    while !bytes.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "metrics client too slow to read its response",
            ));
        }
        stream.set_write_timeout(Some(left))?;
        match stream.write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes a complete response (within [`IO_TIMEOUT`]) and closes our side.
fn write_response(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &[u8],
    head_only: bool,
) -> io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if status.starts_with("405") {
        head.push_str("Allow: GET, HEAD\r\n");
    }
    head.push_str("\r\n");
    // One deadline for the whole response: a write timeout alone bounds
    // each send(2), and a client reading a few bytes at a time could hold
    // the thread (and the server's stop) for as long as it liked.
    let deadline = Instant::now() + IO_TIMEOUT;
    write_all_by(stream, head.as_bytes(), deadline)?;
    if !head_only {
        write_all_by(stream, body, deadline)?;
    }
    stream.shutdown(Shutdown::Write)?;
    // Lingering close: closing with unread input (a rejected head, a
    // pipelined request) would send a reset that can destroy the response
    // before the client reads it; wait briefly for the client's close.
    stream.set_read_timeout(Some(LINGER))?;
    let deadline = Instant::now() + LINGER;
    let mut sink = [0u8; 4096];
    let mut drained = 0;
    while drained < MAX_LINGER_BYTES && Instant::now() < deadline {
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
    Ok(())
}

/// Reads every shard's counters at scrape time and encodes them.
struct ShardCollector {
    shared: Arc<Shared>,
    rss: RssReader,
    /// "0", "1", … (label values, made once).
    shard_names: Vec<String>,
}

impl std::fmt::Debug for ShardCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardCollector")
            .field("shards", &self.shard_names.len())
            .finish()
    }
}

impl ShardCollector {
    fn new(shared: Arc<Shared>) -> ShardCollector {
        let shard_names = (0..shared.shards).map(|i| i.to_string()).collect();
        ShardCollector {
            shared,
            rss: RssReader::new(),
            shard_names,
        }
    }

    /// One gauge without labels.
    fn gauge<N: prometheus_client::encoding::EncodeGaugeValue>(
        enc: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        v: N,
    ) -> std::fmt::Result {
        ConstGauge::new(v).encode(enc.encode_descriptor(name, help, None, MetricType::Gauge)?)
    }

    /// One counter without labels (`name` without `_total`).
    fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
        ConstCounter::new(v).encode(enc.encode_descriptor(name, help, None, MetricType::Counter)?)
    }

    /// One series per shard, labelled `shard`. `name` of a counter is
    /// given without `_total`, which the encoder appends.
    fn per_shard(
        &self,
        enc: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        ty: MetricType,
        value: impl Fn(&ShardCounters) -> u64,
    ) -> std::fmt::Result {
        let mut m = enc.encode_descriptor(name, help, None, ty)?;
        for (c, shard) in self.shared.router.counters.iter().zip(&self.shard_names) {
            let labels = [("shard", shard.as_str())];
            let fam = m.encode_family(&labels)?;
            let v = value(c);
            match ty {
                MetricType::Counter => ConstCounter::new(v).encode(fam)?,
                _ => ConstGauge::new(v).encode(fam)?,
            }
        }
        Ok(())
    }

    /// One counter per shard and second label (`type`, `code`), for every
    /// value of that label (zeros included, so the series exist from start).
    fn per_shard_by(
        &self,
        enc: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        label: &str,
        values: &[&str],
        read: impl Fn(&ShardCounters, usize) -> u64,
    ) -> std::fmt::Result {
        self.per_shard_by_typed(enc, name, help, MetricType::Counter, label, values, read)
    }

    /// [`Self::per_shard_by`] for a metric of any type (a gauge).
    #[allow(clippy::too_many_arguments)]
    fn per_shard_by_typed(
        &self,
        enc: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        kind: MetricType,
        label: &str,
        values: &[&str],
        read: impl Fn(&ShardCounters, usize) -> u64,
    ) -> std::fmt::Result {
        let mut m = enc.encode_descriptor(name, help, None, kind)?;
        for (c, shard) in self.shared.router.counters.iter().zip(&self.shard_names) {
            for (i, v) in values.iter().enumerate() {
                let labels = [("shard", shard.as_str()), (label, *v)];
                let fam = m.encode_family(&labels)?;
                match kind {
                    MetricType::Counter => ConstCounter::new(read(c, i)).encode(fam)?,
                    _ => ConstGauge::new(read(c, i)).encode(fam)?,
                }
            }
        }
        Ok(())
    }
}

impl Collector for ShardCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        use std::sync::atomic::Ordering::Relaxed;
        use MetricType::{Counter, Gauge};
        let shared = &*self.shared;
        {
            let mut m = enc.encode_descriptor(
                "ringcast_build_info",
                "Always 1; the labels name the running build and its I/O backend.",
                None,
                Gauge,
            )?;
            let labels = [
                ("version", env!("CARGO_PKG_VERSION")),
                ("io_backend", self.shared.io_backend.as_str()),
            ];
            ConstGauge::new(1i64).encode(m.encode_family(&labels)?)?;
        }
        let now_ms = crate::protocol::time::unix_ms_now();
        Self::gauge(
            &mut enc,
            "ringcast_start_time_seconds",
            "When the server started, in seconds since the Unix epoch.",
            shared.router.node.start_unix_ms as f64 / 1000.0,
        )?;
        Self::gauge(
            &mut enc,
            "ringcast_uptime_seconds",
            "Seconds since the server started.",
            now_ms.saturating_sub(shared.router.node.start_unix_ms) as f64 / 1000.0,
        )?;
        Self::gauge(
            &mut enc,
            "ringcast_shards",
            "Shards (event-loop threads, each with its own io_uring).",
            shared.shards as u64,
        )?;
        Self::gauge(
            &mut enc,
            "ringcast_failed_shards",
            "Shards that stopped on an I/O error (0 when healthy; /healthz answers 503 otherwise).",
            shared.failed_shards.load(Relaxed) as u64,
        )?;
        Self::gauge(
            &mut enc,
            "ringcast_resident_memory_bytes",
            "Resident set size of the server process.",
            self.rss.rss_bytes(),
        )?;
        self.per_shard(
            &mut enc,
            "ringcast_connections",
            "Clients connected now (established: accepted, authenticated where required, not refused).",
            Gauge,
            |c| c.connected.load(Relaxed),
        )?;
        self.per_shard(
            &mut enc,
            "ringcast_connections_accepted",
            "Connections accepted since start (refused ones included).",
            Counter,
            |c| c.total_connections.load(Relaxed),
        )?;
        let kinds = RequestKind::ALL.map(RequestKind::label);
        self.per_shard_by(
            &mut enc,
            "ringcast_messages",
            "Requests handled, by request type (every custom type counts as custom).",
            "type",
            &kinds,
            |c, i| c.messages[i].load(Relaxed),
        )?;
        self.per_shard(
            &mut enc,
            "ringcast_messages_per_second",
            "Requests handled in the last whole second.",
            Gauge,
            |c| c.messages_last_second.load(Relaxed),
        )?;
        self.per_shard(
            &mut enc,
            "ringcast_received_bytes",
            "Bytes read from client sockets.",
            Counter,
            |c| c.bytes_received.load(Relaxed),
        )?;
        self.per_shard(
            &mut enc,
            "ringcast_sent_bytes",
            "Bytes written to client sockets.",
            Counter,
            |c| c.bytes_sent.load(Relaxed),
        )?;
        self.per_shard(
            &mut enc,
            "ringcast_broadcast_deliveries",
            "Broadcast frames queued to recipients on this shard.",
            Counter,
            |c| c.broadcasts_delivered.load(Relaxed),
        )?;
        self.per_shard(
            &mut enc,
            "ringcast_channel_deliveries",
            "channel_message frames queued to subscribers on this shard.",
            Counter,
            |c| c.channel_deliveries.load(Relaxed),
        )?;
        self.per_shard(
            &mut enc,
            "ringcast_channels",
            "Channels with at least one subscriber on this shard.",
            Gauge,
            |c| c.channels.load(Relaxed),
        )?;
        self.per_shard(
            &mut enc,
            "ringcast_subscriptions",
            "Channel subscriptions held by this shard's connections.",
            Gauge,
            |c| c.subscriptions.load(Relaxed),
        )?;
        self.per_shard(
            &mut enc,
            "ringcast_slow_consumer_disconnects",
            "Clients cut for falling too far behind reading broadcasts.",
            Counter,
            |c| c.slow_consumer_disconnects.load(Relaxed),
        )?;
        self.per_shard(
            &mut enc,
            "ringcast_partial_frame_bytes",
            "Buffer capacity held by partly received frames (per shard at most max_partial_bytes + 4 KiB per connection).",
            Gauge,
            |c| c.partial_frame_bytes.load(Relaxed),
        )?;
        if shared.router.history.is_some() {
            let h = shared
                .router
                .history_figures(crate::protocol::time::unix_ms_now());
            Self::gauge(
                &mut enc,
                "ringcast_history_channels",
                "Channels with a history log.",
                h.channels,
            )?;
            Self::gauge(
                &mut enc,
                "ringcast_history_publications",
                "Publications kept in channel history.",
                h.publications,
            )?;
            Self::gauge(
                &mut enc,
                "ringcast_history_bytes",
                "Bytes channel history holds (frames and bookkeeping; at most max_history_bytes).",
                h.bytes,
            )?;
            Self::counter(
                &mut enc,
                "ringcast_history_evicted",
                "Publications dropped from history by size, TTL or max_history_bytes.",
                h.evicted,
            )?;
        }
        if let Some(c) = shared.cluster() {
            let f = c.figures();
            Self::gauge(
                &mut enc,
                "ringcast_backplane_up",
                "1 while the cluster backplane (Redis) is reachable, 0 while reconnecting.",
                u64::from(c.is_up()),
            )?;
            Self::gauge(
                &mut enc,
                "ringcast_backplane_buffered_bytes",
                "Bytes of broadcasts and publishes held for the backplane, not yet written.",
                f.buffered_bytes,
            )?;
            Self::gauge(
                &mut enc,
                "ringcast_backplane_degraded",
                "1 while a backplane thread is down, waiting to be restarted.",
                u64::from(!c.threads_alive()),
            )?;
            Self::gauge(
                &mut enc,
                "ringcast_cluster_nodes",
                "Nodes alive (heartbeats not expired), this one included.",
                f.nodes,
            )?;
            for (name, help, v) in [
                (
                    "ringcast_backplane_written",
                    "Entries this node wrote to the stream.",
                    &c.written,
                ),
                (
                    "ringcast_backplane_received",
                    "Other nodes' entries delivered on this node.",
                    &c.received,
                ),
                (
                    "ringcast_backplane_refused",
                    "Messages refused with backplane_unavailable (buffer full).",
                    &c.refused,
                ),
                (
                    "ringcast_backplane_reconnects",
                    "Connections (re)established to Redis by the writer.",
                    &c.reconnects,
                ),
                (
                    "ringcast_backplane_bad_entries",
                    "Malformed stream entries skipped (never delivered to a client).",
                    &c.bad_entries,
                ),
                (
                    "ringcast_backplane_restarts",
                    "Backplane threads restarted after they died.",
                    &c.restarts,
                ),
                (
                    "ringcast_backplane_compressions",
                    "Compressions run for other nodes' messages (also in get_stats compression.compressions).",
                    &shared.router.remote_compressions,
                ),
            ] {
                Self::counter(&mut enc, name, help, v.load(Relaxed))?;
            }
        }
        let codes = ErrorCode::ALL.map(ErrorCode::as_str);
        self.per_shard_by(
            &mut enc,
            "ringcast_protocol_errors",
            "Error frames sent to clients, by error code.",
            "code",
            &codes,
            |c, i| c.errors[i].load(Relaxed),
        )?;
        let reasons = crate::session::tls::HandshakeFailure::ALL.map(|r| r.as_str());
        self.per_shard_by(
            &mut enc,
            "ringcast_tls_handshake_failures",
            "TLS handshakes that failed, by reason: malformed (not TLS: plain text or garbage \
             on the TLS port), incompatible (no common version or cipher), client_certificate \
             (missing or not verified), timeout, eof (closed mid-handshake), busy (over \
             tls_max_handshakes), other.",
            "reason",
            &reasons,
            |c, i| c.tls_handshake_failures[i].load(Relaxed),
        )?;
        let codecs = crate::protocol::codec::Codec::ALL.map(|c| c.as_str());
        self.per_shard_by_typed(
            &mut enc,
            "ringcast_compressed_connections",
            "Connections that negotiated a compression codec in hello, by codec.",
            MetricType::Gauge,
            "codec",
            &codecs,
            |c, i| c.compression.connections[i].load(Relaxed),
        )?;
        let directions = ["in", "out"];
        self.per_shard_by(
            &mut enc,
            "ringcast_compressed_frames",
            "Compressed frames received (in) and queued to clients (out; a shared broadcast \
             counts once per recipient).",
            "direction",
            &directions,
            |c, i| [&c.compression.frames_in, &c.compression.frames_out][i].load(Relaxed),
        )?;
        self.per_shard_by(
            &mut enc,
            "ringcast_compressed_payload_bytes",
            "Payload bytes of compressed frames as they crossed the wire, by direction.",
            "direction",
            &directions,
            |c, i| [&c.compression.bytes_in_wire, &c.compression.bytes_out_wire][i].load(Relaxed),
        )?;
        self.per_shard_by(
            &mut enc,
            "ringcast_uncompressed_payload_bytes",
            "Payload bytes of compressed frames before compression (out) or after \
             decompression (in); divided by ringcast_compressed_payload_bytes, the ratio.",
            "direction",
            &directions,
            |c, i| {
                [
                    &c.compression.bytes_in_plain,
                    &c.compression.bytes_out_plain,
                ][i]
                    .load(Relaxed)
            },
        )?;
        self.per_shard(
            &mut enc,
            "ringcast_compressions",
            "Compression operations run (a broadcast shared by any number of clients of one \
             codec is one).",
            Counter,
            |c| c.compression.compressions.load(Relaxed),
        )?;
        self.per_shard_by(
            &mut enc,
            "ringcast_wakeups",
            "Other shards woken to drain their mailboxes, by path (msg_ring: an io_uring \
             MSG_RING; eventfd: an eventfd write, epoll's path and io_uring's fallback).",
            "path",
            &["msg_ring", "eventfd"],
            |c, i| c.wakeups[i].load(Relaxed),
        )?;
        let mut m = enc.encode_descriptor(
            "ringcast_request_duration_seconds",
            "Time a shard spends handling requests, per request: from starting on the receive \
             chunk that completes them (framing, JSON parse, dispatch) until their responses are in \
             the output buffer. A chunk of n requests that took t counts n requests of t/n each: \
             exact for clients that await each response, the chunk's average for pipelined ones. \
             _sum and _count are exact. Excludes time in socket buffers and waiting for the event \
             loop.",
            None,
            MetricType::Histogram,
        )?;
        let mut buckets = [(0.0, 0); DURATION_BOUNDS + 1];
        for (c, shard) in shared.router.counters.iter().zip(&self.shard_names) {
            let (counts, sum_ns) = c.request_duration.read();
            for (i, (b, n)) in buckets.iter_mut().zip(counts).enumerate() {
                let bound = if i < DURATION_BOUNDS {
                    DurationHistogram::upper_bound_seconds(i)
                } else {
                    f64::INFINITY
                };
                *b = (bound, n);
            }
            // The count is the buckets' sum, so `+Inf` and `_count` agree.
            let count = counts.iter().sum();
            let labels = [("shard", shard.as_str())];
            m.encode_family(&labels)?.encode_histogram::<NoLabelSet>(
                sum_ns as f64 / 1e9,
                count,
                &buckets,
                None,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let r = |s: &str| route(s.as_bytes());
        assert_eq!(r("GET /metrics HTTP/1.1\r\n\r\n"), (Route::Metrics, false));
        assert_eq!(
            r("GET /metrics?x=1 HTTP/1.0\r\n\r\n"),
            (Route::Metrics, false)
        );
        assert_eq!(r("HEAD /healthz HTTP/1.1\r\n\r\n"), (Route::Healthz, true));
        assert_eq!(r("GET /nope HTTP/1.1\r\n\r\n"), (Route::NotFound, false));
        assert_eq!(
            r("POST /metrics HTTP/1.1\r\n\r\n"),
            (Route::MethodNotAllowed, false)
        );
        assert_eq!(r("GET /metrics\r\n\r\n"), (Route::BadRequest, false));
        assert_eq!(r("GET /metrics HTTP/2\r\n\r\n"), (Route::BadRequest, false));
        assert_eq!(
            r("GET metrics HTTP/1.1\r\n\r\n"),
            (Route::BadRequest, false)
        );
        assert_eq!(
            r("GET  /metrics HTTP/1.1\r\n\r\n"),
            (Route::BadRequest, false)
        );
        assert_eq!(
            route(b"GET /\xff HTTP/1.1\r\n\r\n"),
            (Route::BadRequest, false)
        );
    }

    #[test]
    fn head_ends_at_blank_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), Some(27));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\n"), Some(16));
    }
}
