//! One load-generator thread: its own I/O backend (the server's seam,
//! io_uring or epoll), many connections, closed or open loop.
//!
//! Responses on a connection come in request order, so a FIFO of send times
//! per connection matches each response to its request without parsing ids.
//! Every request queued in a loop turn is stamped with that turn's clock
//! reading; requests queued in one turn leave in one `sendmsg`.

use super::report::new_histogram;
use super::report::WireBytes;
use super::{Content, Control, Workload};
use crate::io::{Backend, Event, Options, Segment, SendBatch, Token};
use crate::protocol::codec::{Codec, Compressor, Decompressor};
use crate::protocol::frame::BoundedPool;
use crate::protocol::json::ObjectWriter;
use crate::protocol::{frame, FrameDecoder, HEADER_LEN};
use hdrhistogram::Histogram;
use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// What a connection does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Sends requests and times their responses.
    Requester,
    /// Sends broadcasts (their `broadcast_sent` acks pace it).
    Publisher,
    /// Only receives broadcasts and times their delivery.
    Subscriber,
}

/// One connection of a thread's share.
#[derive(Debug, Clone, Copy)]
pub struct Slot {
    /// What it does.
    pub role: Role,
    /// The server it connects to.
    pub server: SocketAddr,
    /// Pubsub: the channel a subscriber joins, or where a publisher starts.
    pub channel: usize,
}

/// One thread's share of the run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Thread index.
    pub index: usize,
    /// This thread's connections.
    pub slots: Vec<Slot>,
    /// Requests this thread may send in total (None = until the end time).
    pub request_budget: Option<u64>,
    /// Open loop: messages/s per connection (None = closed loop).
    pub rate_per_conn: Option<f64>,
    /// Source addresses to spread connections over.
    pub source_ips: Vec<IpAddr>,
}

/// What a thread measured.
#[derive(Debug)]
pub struct Outcome {
    /// Latency (µs) of measured responses or deliveries.
    pub hist: Histogram<u64>,
    /// Responses (requesters, publishers) measured.
    pub responses: u64,
    /// Broadcast deliveries measured at subscribers.
    pub deliveries: u64,
    /// Bytes received during the measured window.
    pub bytes: u64,
    /// Frame bytes sent and received in the measured window, on the wire
    /// and uncompressed.
    pub wire: WireBytes,
    /// Error frames and lost responses.
    pub errors: u64,
    /// Re-established connections.
    pub reconnects: u64,
    /// First error seen, for the report.
    pub first_error: Option<String>,
    /// When this thread finished (clock ns).
    pub finished_ns: u64,
}

struct Conn {
    role: Role,
    server: SocketAddr,
    channel: usize,
    decoder: FrameDecoder,
    /// Requests queued this turn (sent at the end of the turn).
    out: Vec<u8>,
    /// What a short send left (sent first).
    leftover: Option<SendBatch>,
    send_inflight: bool,
    /// Open on the backend (false from the server's close until reconnected).
    live: bool,
    /// Send time (ns on the run's clock) of each request without a response.
    sent: VecDeque<u64>,
    /// Open loop: when the next request is due (ns).
    next_due: u64,
    /// Rotates the mixed workload.
    counter: u64,
    /// The connection's TLS state (None: plain).
    tls: Option<Box<rustls::ClientConnection>>,
    /// The codec negotiated, and the server's threshold: requests with a
    /// larger payload go compressed.
    codec: Option<(Codec, usize)>,
}

/// Connects to `addr`, from `source` when given.
pub fn connect(addr: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    if let Some(ip) = source {
        s.bind(&SocketAddr::new(ip, 0).into())?;
    }
    s.connect_timeout(&addr.into(), Duration::from_secs(5))?;
    s.set_nodelay(true)?;
    Ok(s.into())
}

/// A connection set up (handshakes done) before it joins the ring.
pub struct Connected {
    /// The socket.
    pub sock: TcpStream,
    /// Its TLS state (None: plain TCP).
    pub tls: Option<rustls::ClientConnection>,
    /// The codec `hello_ok` chose and the server's compression threshold
    /// (None: no `--compress`).
    pub codec: Option<(Codec, usize)>,
}

/// Connects, runs the TLS handshake when `tls` is given, says `hello`
/// offering `compress` when given (the server must agree: a bench asked to
/// measure compression does not quietly measure without it), and, when a
/// token is given, authenticates (blocking, before the connection joins
/// the ring).
pub fn connect_auth(
    addr: SocketAddr,
    source: Option<IpAddr>,
    token: Option<&str>,
    tls: Option<&super::tls::BenchTls>,
    compress: Option<Codec>,
) -> io::Result<Connected> {
    let mut sock = connect(addr, source)?;
    sock.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut conn = match tls {
        Some(t) => Some(t.handshake(&mut sock)?),
        None => None,
    };
    let mut codec = None;
    {
        let mut s = super::tls::stream(&mut sock, conn.as_mut());
        if let Some(want) = compress {
            codec = Some(hello(&mut *s, want)?);
        }
        if let Some(token) = token {
            let mut payload = Vec::new();
            let mut o = ObjectWriter::new(&mut payload);
            o.raw_str("type", "auth");
            o.str("token", token);
            o.finish();
            let reply = super::conns::roundtrip_with(&mut *s, &payload, codec.map(|(c, _)| c))?;
            if !reply.starts_with(br#"{"type":"auth_ok""#) {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "authentication refused: {}",
                        String::from_utf8_lossy(&reply)
                    ),
                ));
            }
        }
    }
    sock.set_read_timeout(None)?;
    Ok(Connected {
        sock,
        tls: conn,
        codec,
    })
}

/// Sends `hello` offering `want`; returns the codec and the server's
/// threshold, or an error if the server does not agree to it.
fn hello(s: &mut dyn super::tls::ReadWrite, want: Codec) -> io::Result<(Codec, usize)> {
    let mut payload = Vec::new();
    let mut o = ObjectWriter::new(&mut payload);
    o.raw_str("type", "hello");
    o.key("compression")
        .extend_from_slice(format!("[\"{}\"]", want.as_str()).as_bytes());
    o.raw_str("client", "ringcast-bench");
    o.finish();
    let reply = super::conns::roundtrip(s, &payload)?;
    let v: serde_json::Value = serde_json::from_slice(&reply)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let chosen = v.get("compression").and_then(|c| c.as_str());
    if v.get("type").and_then(|t| t.as_str()) != Some("hello_ok") || chosen != Some(want.as_str()) {
        return Err(io::Error::other(format!(
            "--compress {}: the server did not agree (it answered {})",
            want.as_str(),
            String::from_utf8_lossy(&reply)
        )));
    }
    let threshold = v
        .get("compression_threshold")
        .and_then(|t| t.as_u64())
        .map_or(crate::protocol::codec::DEFAULT_THRESHOLD, |t| {
            usize::try_from(t).unwrap_or(usize::MAX)
        });
    Ok((want, threshold))
}

/// Pre-built request frames, and what broadcasts and publishes carry.
struct Requests {
    ping: Vec<u8>,
    echo: Vec<u8>,
    /// The echo frame compressed with `--compress`'s codec, when that
    /// saves bytes (the content never changes, so it is compressed once:
    /// the server still decompresses every one).
    echo_packed: Option<(Codec, Vec<u8>)>,
    stats: Vec<u8>,
    /// What follows the publish time in broadcast and publish content.
    pad: String,
    content: Content,
}

impl Requests {
    fn new(size: usize, content: Content, compress: Option<Codec>) -> Requests {
        let mut ping = Vec::new();
        let st = frame::begin_frame(&mut ping);
        let mut o = ObjectWriter::new(&mut ping);
        o.raw_str("type", "ping");
        o.raw_str("timestamp", "2024-01-01T12:00:00.000Z");
        o.raw_str("client_info", "ringcast-bench");
        o.finish();
        frame::finish_frame(&mut ping, st);
        let records = match content {
            Content::Filler => String::new(),
            Content::Telemetry => super::telemetry_records(size),
        };
        let mut echo = Vec::new();
        let st = frame::begin_frame(&mut echo);
        let mut o = ObjectWriter::new(&mut echo);
        o.raw_str("type", "echo");
        match content {
            Content::Filler => o.str("content", &"x".repeat(size)),
            Content::Telemetry => {
                let v = o.key("content");
                v.push(b'[');
                v.extend_from_slice(records.as_bytes());
                v.push(b']');
            }
        }
        o.finish();
        frame::finish_frame(&mut echo, st);
        let echo_packed = compress.and_then(|c| {
            let mut f = Vec::new();
            Compressor::new()
                .compress_frame(c, &echo[HEADER_LEN..], &mut f)
                .then_some((c, f))
        });
        let mut stats = Vec::new();
        frame::encode_frame(&mut stats, br#"{"type":"get_stats"}"#);
        let pad = match content {
            // The publish time and the JSON around it take about 24 bytes.
            Content::Filler => "x".repeat(size.saturating_sub(24)),
            Content::Telemetry => records,
        };
        Requests {
            ping,
            echo,
            echo_packed,
            stats,
            pad,
            content,
        }
    }
}

/// The name of pubsub channel `n`.
fn channel_name(n: usize) -> String {
    format!("bench-{n}")
}

/// Connects (and says hello and authenticates) like [`connect_auth`]; a
/// pubsub subscriber then joins its channel before the connection joins
/// the ring.
fn connect_slot(
    cfg: &super::BenchConfig,
    slot: &Slot,
    src: Option<IpAddr>,
    tls: Option<&super::tls::BenchTls>,
) -> io::Result<Connected> {
    let mut c = connect_auth(slot.server, src, cfg.token.as_deref(), tls, cfg.compress)?;
    if cfg.workload == Workload::Pubsub && slot.role == Role::Subscriber {
        let mut payload = Vec::new();
        let mut o = ObjectWriter::new(&mut payload);
        o.raw_str("type", "subscribe");
        o.str("channel", &channel_name(slot.channel));
        o.finish();
        c.sock.set_read_timeout(Some(Duration::from_secs(5)))?;
        let reply = {
            let mut s = super::tls::stream(&mut c.sock, c.tls.as_mut());
            super::conns::roundtrip_with(&mut *s, &payload, c.codec.map(|(k, _)| k))?
        };
        c.sock.set_read_timeout(None)?;
        if !reply.starts_with(br#"{"type":"subscribed""#) {
            return Err(io::Error::other(format!(
                "subscribe refused: {}",
                String::from_utf8_lossy(&reply)
            )));
        }
    }
    Ok(c)
}

/// Writes the `content` of a broadcast or publish: the publish time first
/// (`"t=<ns>;<pad>"` for filler, `["t=<ns>",<records>]` for telemetry).
fn write_timed_content(out: &mut Vec<u8>, now_ns: u64, pad: &str, content: Content) {
    match content {
        Content::Filler => {
            out.extend_from_slice(br#""content":"t="#);
            crate::protocol::json::write_u64(out, now_ns);
            out.push(b';');
            out.extend_from_slice(pad.as_bytes());
            out.push(b'"');
        }
        Content::Telemetry => {
            out.extend_from_slice(br#""content":["t="#);
            crate::protocol::json::write_u64(out, now_ns);
            out.push(b'"');
            if !pad.is_empty() {
                out.push(b',');
                out.extend_from_slice(pad.as_bytes());
            }
            out.push(b']');
        }
    }
}

/// Writes a publish to `channel` whose content starts with the publish time.
fn write_publish(out: &mut Vec<u8>, channel: &str, now_ns: u64, pad: &str, content: Content) {
    let st = frame::begin_frame(out);
    out.extend_from_slice(br#"{"type":"publish","channel":""#);
    out.extend_from_slice(channel.as_bytes());
    out.extend_from_slice(br#"","#);
    write_timed_content(out, now_ns, pad, content);
    out.push(b'}');
    frame::finish_frame(out, st);
}

/// Writes a broadcast whose content starts with the publish time.
fn write_broadcast(out: &mut Vec<u8>, now_ns: u64, pad: &str, content: Content) {
    let st = frame::begin_frame(out);
    out.extend_from_slice(br#"{"type":"broadcast","#);
    write_timed_content(out, now_ns, pad, content);
    out.push(b'}');
    frame::finish_frame(out, st);
}

/// The publish time inside a broadcast_message payload, if it is one of ours.
pub fn publish_time(payload: &[u8]) -> Option<u64> {
    const KEY: &[u8] = br#""content":"t="#;
    const KEY_ARRAY: &[u8] = br#""content":["t="#;
    // memmem: this runs for every frame a subscriber receives, and a
    // byte-by-byte window compare was 6 % of the generator's CPU in
    // broadcast 1 -> 1,000 (the generator shares the server's cores).
    let find = |k: &[u8]| memchr::memmem::find(payload, k).map(|p| p + k.len());
    let at = find(KEY).or_else(|| find(KEY_ARRAY))?;
    let mut v: u64 = 0;
    let mut any = false;
    for &b in &payload[at..] {
        if b.is_ascii_digit() {
            v = v.checked_mul(10)?.checked_add((b - b'0') as u64)?;
            any = true;
        } else {
            break;
        }
    }
    any.then_some(v)
}

/// Largest frame the generator accepts (compressed, or decompressed).
const MAX_FRAME: usize = 64 << 20;

/// A decoder for a connection's replies: flagged frames are compressed
/// ones when a codec was negotiated.
fn decoder_for(codec: Option<(Codec, usize)>) -> FrameDecoder {
    let mut d = FrameDecoder::new(MAX_FRAME);
    if codec.is_some() {
        d.accept_compressed();
    }
    d
}

/// What kind of frame a response is, from its first bytes (servers write
/// `type` first); anything else is parsed to be sure.
fn frame_type(payload: &[u8]) -> FrameKind {
    if payload.starts_with(br#"{"type":"broadcast_message""#)
        || payload.starts_with(br#"{"type":"channel_message""#)
    {
        return FrameKind::Broadcast;
    }
    if payload.starts_with(br#"{"type":"error""#) {
        return FrameKind::Error;
    }
    if payload.starts_with(br#"{"type":""#) {
        return FrameKind::Response;
    }
    // Not our layout: look properly.
    let v: Result<serde_json::Value, _> = serde_json::from_slice(payload);
    match v
        .as_ref()
        .ok()
        .and_then(|v| v.get("type"))
        .and_then(|t| t.as_str())
    {
        Some("broadcast_message" | "channel_message") => FrameKind::Broadcast,
        Some("error") | None => FrameKind::Error,
        Some(_) => FrameKind::Response,
    }
}

/// Whether a payload is a broadcast or channel message (it answers no
/// request).
pub fn is_delivery(payload: &[u8]) -> bool {
    frame_type(payload) == FrameKind::Broadcast
}

#[derive(PartialEq, Eq)]
enum FrameKind {
    Response,
    Broadcast,
    Error,
}

/// What one response frame did to its connection's bookkeeping.
struct Tally<'a> {
    out: &'a mut Outcome,
    measuring: bool,
    now: u64,
}

impl Tally<'_> {
    /// A frame that could not be decompressed: an error, and (if a request
    /// is waiting) taken for its answer so the connection keeps going.
    /// Returns whether it answered one.
    fn bad_frame(&mut self, sent: &mut VecDeque<u64>, why: &str) -> bool {
        self.out.errors += 1;
        if self.out.first_error.is_none() {
            self.out.first_error = Some(format!("bad compressed frame: {why}"));
        }
        sent.pop_front().is_some()
    }

    /// Counts one frame received on a connection of `role`; returns whether
    /// it answered a request (so another may be issued).
    fn frame(&mut self, role: Role, sent: &mut VecDeque<u64>, payload: &[u8]) -> bool {
        let out = &mut *self.out;
        match frame_type(payload) {
            FrameKind::Broadcast => {
                if role == Role::Subscriber && self.measuring {
                    if let Some(t) = publish_time(payload) {
                        out.hist
                            .saturating_record(self.now.saturating_sub(t) / 1000);
                        out.deliveries += 1;
                    }
                }
                false
            }
            kind => {
                if kind == FrameKind::Error {
                    out.errors += 1;
                    if out.first_error.is_none() {
                        out.first_error = Some(String::from_utf8_lossy(payload).into_owned());
                    }
                }
                let Some(t) = sent.pop_front() else {
                    return false;
                };
                if self.measuring {
                    if kind == FrameKind::Response && role == Role::Requester {
                        out.hist
                            .saturating_record(self.now.saturating_sub(t) / 1000);
                    }
                    out.responses += 1;
                }
                true
            }
        }
    }
}

/// Runs one thread's share until the control says stop.
pub fn run(plan: Plan, ctl: Arc<Control>) -> io::Result<Outcome> {
    let cfg = &ctl.config;
    let kind = crate::server::resolve_backend(cfg.io_backend)
        .map_err(|e| io::Error::other(e.to_string()))?;
    // Buffers big enough for 64 KiB frames to arrive in few completions.
    let opts = Options {
        recv_buffers: 1024,
        recv_buffer_size: 64 * 1024,
        ring_entries: 4096,
    };
    let mut backend =
        Backend::new(kind, &opts, None).map_err(|e| io::Error::other(e.explanation))?;
    let reqs = Requests::new(cfg.size, cfg.content, cfg.compress);
    let tls = match &cfg.tls {
        Some(o) => Some(super::tls::BenchTls::new(o, cfg.addr)?),
        None => None,
    };
    // TLS: where records are decrypted, one full record at a time at least.
    let mut plain_buf = vec![0u8; if tls.is_some() { 64 << 10 } else { 0 }];
    let mut conns: Vec<Conn> = Vec::with_capacity(plan.slots.len());
    let mut streams = Vec::with_capacity(plan.slots.len());
    let mut out = Outcome {
        hist: new_histogram(),
        responses: 0,
        deliveries: 0,
        bytes: 0,
        wire: WireBytes::default(),
        errors: 0,
        reconnects: 0,
        first_error: None,
        finished_ns: 0,
    };
    let progress = &ctl.progress[plan.index];
    // Connect, paced by --connect-rate (shared evenly by the threads).
    let gap = cfg
        .connect_rate
        .filter(|r| *r > 0)
        .map(|r| Duration::from_secs_f64(cfg.threads as f64 / r as f64));
    for (i, slot) in plan.slots.iter().enumerate() {
        let src = if plan.source_ips.is_empty() {
            None
        } else {
            Some(plan.source_ips[i % plan.source_ips.len()])
        };
        let set_up = connect_slot(cfg, slot, src, tls.as_ref())
            .map_err(|e| io::Error::new(e.kind(), format!("connecting to {}: {e}", slot.server)))?;
        streams.push(set_up.sock);
        conns.push(Conn {
            role: slot.role,
            server: slot.server,
            channel: slot.channel,
            decoder: decoder_for(set_up.codec),
            out: Vec::with_capacity(4096),
            leftover: None,
            send_inflight: false,
            live: true,
            sent: VecDeque::new(),
            next_due: 0,
            counter: i as u64,
            tls: set_up.tls.map(Box::new),
            codec: set_up.codec,
        });
        if let Some(g) = gap {
            std::thread::sleep(g);
        }
    }
    let (measure_from, measure_until) = ctl.connected_wait();
    for (i, s) in streams.drain(..).enumerate() {
        backend.add(Token(i), s)?;
    }
    let start = ctl.now_ns();
    let pipeline = cfg.pipeline.max(1);
    let mut budget = plan.request_budget;
    let channel_names: Vec<String> = (0..cfg.channels.max(1)).map(channel_name).collect();
    let mut batches: Vec<SendBatch> = Vec::new();
    let mut spare: Vec<Vec<u8>> = Vec::new();
    let mut straddle_pool = BoundedPool::new(4 << 20, 64 << 20);
    let mut inflater = Decompressor::new();
    let mut inflated: Vec<u8> = Vec::new();
    let mut to_close: Vec<usize> = Vec::new();
    let mut to_reopen: Vec<usize> = Vec::new();
    let wait = if plan.rate_per_conn.is_some() {
        Duration::from_micros(200)
    } else {
        Duration::from_millis(50)
    };
    // Compressing broadcasts and publishes (their content starts with the
    // publish time, so each is compressed as it is sent).
    let mut compressor = Compressor::new();
    let mut scratch: Vec<u8> = Vec::new();
    // Bytes of requests sent in the measured window: (wire, plain).
    let mut sent_bytes = (0u64, 0u64);
    let content = reqs.content;
    // Closed loop: fill the pipeline.
    let mut issue = |c: &mut Conn, now: u64, budget: &mut Option<u64>| -> bool {
        if let Some(b) = budget {
            if *b == 0 {
                return false;
            }
            *b -= 1;
        }
        let before = c.out.len();
        let plain_len = match c.role {
            Role::Subscriber => return false,
            Role::Publisher => {
                // Written where it can be compressed from, when it may be.
                let dst = if c.codec.is_some() {
                    scratch.clear();
                    &mut scratch
                } else {
                    &mut c.out
                };
                if cfg.workload == Workload::Pubsub {
                    // Each publisher cycles through every channel, starting
                    // at its own, so the channels share the load evenly.
                    let ch = (c.channel as u64 + c.counter) % channel_names.len() as u64;
                    c.counter += 1;
                    write_publish(dst, &channel_names[ch as usize], now, &reqs.pad, content);
                } else {
                    write_broadcast(dst, now, &reqs.pad, content);
                }
                if let Some((codec, threshold)) = c.codec {
                    let payload = &scratch[HEADER_LEN..];
                    if payload.len() <= threshold
                        || !compressor.compress_frame(codec, payload, &mut c.out)
                    {
                        c.out.extend_from_slice(&scratch);
                    }
                    scratch.len()
                } else {
                    c.out.len() - before
                }
            }
            Role::Requester => {
                let f = match cfg.workload {
                    Workload::Ping => &reqs.ping,
                    Workload::Echo => &reqs.echo,
                    Workload::Stats => &reqs.stats,
                    _ => match c.counter % 10 {
                        0 => &reqs.stats,
                        n if n % 2 == 1 => &reqs.ping,
                        _ => &reqs.echo,
                    },
                };
                c.counter += 1;
                let packed = match (&reqs.echo_packed, c.codec) {
                    (Some((k, packed)), Some((codec, threshold)))
                        if std::ptr::eq(f, &reqs.echo)
                            && *k == codec
                            && f.len() - HEADER_LEN > threshold =>
                    {
                        Some(packed)
                    }
                    _ => None,
                };
                c.out.extend_from_slice(packed.unwrap_or(f));
                f.len()
            }
        };
        if now >= measure_from && now < measure_until {
            sent_bytes.0 += (c.out.len() - before) as u64;
            sent_bytes.1 += plain_len as u64;
        }
        c.sent.push_back(now);
        true
    };
    if plan.rate_per_conn.is_none() {
        for c in conns.iter_mut() {
            for _ in 0..pipeline {
                issue(c, start, &mut budget);
            }
        }
    } else {
        let per = plan.rate_per_conn.unwrap_or(1.0);
        let n = conns.len().max(1) as f64;
        for (i, c) in conns.iter_mut().enumerate() {
            // Stagger connections evenly over one interval.
            c.next_due = start + ((i as f64 / n) * 1e9 / per) as u64;
        }
    }
    let mut draining_since: Option<u64> = None;
    let mut now = start;
    loop {
        // Start sends for connections with queued requests: what a short
        // send left goes first, then everything queued since.
        for (i, c) in conns.iter_mut().enumerate() {
            if c.live && !c.send_inflight && (c.leftover.is_some() || !c.out.is_empty()) {
                let mut batch = c
                    .leftover
                    .take()
                    .unwrap_or_else(|| batches.pop().unwrap_or_default());
                if !c.out.is_empty() {
                    let mut fresh = spare.pop().unwrap_or_default();
                    let seg = match &mut c.tls {
                        None => std::mem::replace(&mut c.out, fresh),
                        Some(t) => {
                            super::tls::encrypt(t, &c.out, &mut fresh)?;
                            c.out.clear();
                            fresh
                        }
                    };
                    batch.segments.push_back(Segment::Owned(seg));
                }
                c.send_inflight = true;
                backend.send(Token(i), batch)?;
            }
        }
        let sending = now < measure_until && !ctl.stop.load(Ordering::Relaxed);
        let measuring = now >= measure_from && now < measure_until;
        backend.poll(Some(wait), |ev| match ev {
            Event::Sent(Token(i), mut b, r) => {
                let c = &mut conns[i];
                c.send_inflight = false;
                match r {
                    Ok(n) => {
                        b.advance(n, |mut v| {
                            v.clear();
                            spare.push(v);
                        });
                        if b.is_empty() {
                            batches.push(b);
                        } else {
                            c.leftover = Some(b); // short send: resent first
                        }
                    }
                    // The receive side sees the close.
                    Err(_) => b.clear(|v| spare.push(v)),
                }
            }
            Event::Data(Token(i), chunk) => {
                let c = &mut conns[i];
                if measuring {
                    out.bytes += chunk.len() as u64;
                }
                let mut replies = 0usize;
                let (role, sent) = (c.role, &mut c.sent);
                let mut tally = Tally {
                    out: &mut out,
                    measuring,
                    now,
                };
                let decoder = &mut c.decoder;
                let pool = &mut straddle_pool;
                let codec = c.codec.map(|(k, _)| k);
                let (inflater, inflated) = (&mut inflater, &mut inflated);
                let mut feed = |data: &mut [u8]| {
                    let r = decoder.feed_flagged(data, pool, usize::MAX, |payload, packed| {
                        let plain: &[u8] = match (packed, codec) {
                            (true, Some(k)) => {
                                match inflater.decompress(k, payload, inflated, MAX_FRAME) {
                                    Ok(()) => inflated,
                                    Err(e) => {
                                        if tally.bad_frame(sent, &e.to_string()) {
                                            replies += 1;
                                        }
                                        return std::ops::ControlFlow::Continue(());
                                    }
                                }
                            }
                            _ => payload,
                        };
                        if tally.measuring {
                            let w = &mut tally.out.wire;
                            w.bytes_received += (HEADER_LEN + payload.len()) as u64;
                            w.plain_bytes_received += (HEADER_LEN + plain.len()) as u64;
                        }
                        if tally.frame(role, sent, plain) {
                            replies += 1;
                        }
                        std::ops::ControlFlow::Continue(())
                    });
                    r.is_ok()
                };
                let ok = match &mut c.tls {
                    None => feed(chunk),
                    Some(t) => {
                        let mut ok = true;
                        let r = super::tls::decrypt(t, chunk, &mut plain_buf, |p| {
                            ok = feed(p);
                            ok
                        });
                        ok && r.is_ok()
                    }
                };
                if !ok {
                    tally.out.errors += 1;
                }
                if plan.rate_per_conn.is_none() && sending {
                    for _ in 0..replies {
                        if !issue(c, now, &mut budget) {
                            break;
                        }
                    }
                }
            }
            Event::Eof(Token(i)) | Event::Failed(Token(i), _) => {
                let c = &mut conns[i];
                if sending || !c.sent.is_empty() {
                    // Unexpected close: count what was lost, reconnect.
                    out.errors += c.sent.len() as u64 + 1;
                    if out.first_error.is_none() {
                        out.first_error = Some("connection closed by the server".into());
                    }
                }
                c.sent.clear();
                c.live = false;
                to_close.push(i);
            }
            Event::Closed(Token(i)) => to_reopen.push(i),
            Event::Accepted(..) | Event::AcceptFailed(_) => {}
        })?;
        for i in to_close.drain(..) {
            backend.close(Token(i))?;
        }
        now = ctl.now_ns();
        let sending = now < measure_until && !ctl.stop.load(Ordering::Relaxed);
        for i in to_reopen.drain(..) {
            if !sending {
                continue;
            }
            let slot = Slot {
                role: conns[i].role,
                server: conns[i].server,
                channel: conns[i].channel,
            };
            if let Ok(set_up) = connect_slot(cfg, &slot, None, tls.as_ref()) {
                let c = &mut conns[i];
                let s = set_up.sock;
                c.tls = set_up.tls.map(Box::new);
                c.codec = set_up.codec;
                c.decoder = decoder_for(set_up.codec);
                c.out.clear();
                c.leftover = None;
                c.live = true;
                out.reconnects += 1;
                backend.add(Token(i), s)?;
                if plan.rate_per_conn.is_none() {
                    for _ in 0..pipeline {
                        issue(c, now, &mut budget);
                    }
                }
            }
        }
        // Open loop: issue what is due, stamped with its intended time
        // (coordinated-omission correction, as wrk2 does).
        if let Some(per) = plan.rate_per_conn {
            if sending {
                let interval = (1e9 / per) as u64;
                for c in conns.iter_mut().filter(|c| c.live) {
                    let mut next = c.next_due;
                    due_sends(&mut next, interval, now, |due| issue(c, due, &mut budget));
                    c.next_due = next;
                }
            }
        }
        progress.store(out.responses + out.deliveries, Ordering::Relaxed);
        let outstanding: usize = conns.iter().map(|c| c.sent.len()).sum();
        let budget_done = budget == Some(0);
        if !sending || budget_done {
            if budget_done && outstanding == 0 && plan.request_budget.is_some() {
                break;
            }
            if !sending {
                let since = *draining_since.get_or_insert(now);
                // Subscribers get a moment for deliveries still in flight;
                // everyone gets at most two seconds for outstanding replies.
                let grace = if outstanding == 0 {
                    200_000_000
                } else {
                    2_000_000_000
                };
                if now.saturating_sub(since) > grace {
                    out.errors += outstanding as u64;
                    break;
                }
            }
        }
    }
    out.wire.bytes_sent = sent_bytes.0;
    out.wire.plain_bytes_sent = sent_bytes.1;
    out.finished_ns = ctl.now_ns();
    Ok(out)
}

/// Open loop: calls `send(intended_time)` for every send due by `now` on a
/// fixed schedule (`*next_due`, then every `interval` ns), advancing the
/// schedule; stops early if `send` returns false. Each request is stamped
/// with when it *should* have left, not when it did, so a stall shows up
/// in the latency of every request it delayed (coordinated omission).
pub fn due_sends(next_due: &mut u64, interval: u64, now: u64, mut send: impl FnMut(u64) -> bool) {
    while *next_due <= now {
        if !send(*next_due) {
            break;
        }
        *next_due += interval.max(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_time_is_read_from_content() {
        let mut f = Vec::new();
        write_broadcast(&mut f, 123_456_789, "pad", Content::Filler);
        let payload = &f[4..];
        let v: serde_json::Value = serde_json::from_slice(payload).unwrap();
        assert_eq!(v["content"], "t=123456789;pad");
        let delivered = br#"{"type":"broadcast_message","content":"t=123456789;pad","from":"x"}"#;
        assert_eq!(publish_time(delivered), Some(123_456_789));
        assert_eq!(
            publish_time(br#"{"type":"broadcast_message","content":"hello"}"#),
            None
        );
    }

    #[test]
    fn telemetry_content_is_json_with_the_publish_time_first() {
        let pad = crate::bench::telemetry_records(2000);
        for channel in [None, Some("bench-3")] {
            let mut f = Vec::new();
            match channel {
                None => write_broadcast(&mut f, 987_654_321, &pad, Content::Telemetry),
                Some(ch) => write_publish(&mut f, ch, 987_654_321, &pad, Content::Telemetry),
            }
            let v: serde_json::Value = serde_json::from_slice(&f[4..]).unwrap();
            let content = v["content"].as_array().unwrap();
            assert_eq!(content[0], "t=987654321");
            assert!(content.len() > 10, "{}", content.len());
            assert!(content[1]["sensor"].is_string() && content[1]["temp_c"].is_f64());
            assert!(f.len() > 2000 && f.len() < 2400, "{}", f.len());
        }
        let delivered =
            br#"{"type":"channel_message","channel":"c","content":["t=42",{"a":1}],"from":"x"}"#;
        assert_eq!(publish_time(delivered), Some(42));
        // Echo: an array of records of about the size asked for, and
        // (telemetry compresses well) a compressed copy.
        let r = Requests::new(16 << 10, Content::Telemetry, Some(Codec::Zstd));
        let v: serde_json::Value = serde_json::from_slice(&r.echo[4..]).unwrap();
        assert!(v["content"].as_array().unwrap().len() > 50);
        let (k, packed) = r.echo_packed.as_ref().unwrap();
        assert_eq!(*k, Codec::Zstd);
        assert!(
            packed.len() * 3 < r.echo.len(),
            "{} vs {}",
            packed.len(),
            r.echo.len()
        );
        assert_eq!(Requests::new(64, Content::Filler, None).pad.len(), 40);
    }

    #[test]
    fn coordinated_omission_hand_worked() {
        // 1,000 req/s on one connection (1 ms apart), starting at t = 0.
        // The generator's loop is stalled until t = 10 ms (the server did
        // not answer, say), then every response arrives at t = 10.1 ms.
        let ms = 1_000_000u64;
        let mut next = 0;
        let mut intended = Vec::new();
        due_sends(&mut next, ms, 10 * ms, |t| {
            intended.push(t);
            true
        });
        // Eleven sends were due (t = 0, 1, ..., 10 ms), and the schedule
        // moves on to 11 ms, not to "now + 1 ms".
        assert_eq!(intended, (0..=10).map(|i| i * ms).collect::<Vec<_>>());
        assert_eq!(next, 11 * ms);
        // Latency from intended time: 10.1, 9.1, ..., 0.1 ms. Measured from
        // the actual send (all at 10 ms) it would be 0.1 ms for every one.
        let arrive = 10 * ms + ms / 10;
        let mut h = crate::bench::report::new_histogram();
        for t in &intended {
            h.record((arrive - t) / 1000).unwrap();
        }
        let l = crate::bench::report::Latency::from_histogram(&h);
        assert_eq!(l.count, 11);
        assert!((5095..=5110).contains(&l.p50), "p50 {}", l.p50); // 5.1 ms
        assert!((10_095..=10_110).contains(&l.max), "max {}", l.max); // 10.1 ms
        assert!((95..=105).contains(&h.min()), "min {}", h.min()); // 0.1 ms
                                                                   // A budget that runs out stops the schedule where it is.
        let mut next = 0;
        let mut left = 3;
        due_sends(&mut next, ms, 10 * ms, |_| {
            left -= 1;
            left >= 0
        });
        assert_eq!(next, 3 * ms);
    }

    #[test]
    fn frames_are_classified() {
        assert!(frame_type(br#"{"type":"error","code":"x"}"#) == FrameKind::Error);
        assert!(frame_type(br#"{"type":"pong"}"#) == FrameKind::Response);
        assert!(frame_type(br#"{"code":"x","type":"error"}"#) == FrameKind::Error);
        assert!(frame_type(br#"{"from":"a","type":"broadcast_message"}"#) == FrameKind::Broadcast);
        assert!(frame_type(br#"{"id":1,"type":"echo_response"}"#) == FrameKind::Response);
    }
}
