//! The `recover` workload: subscribers that drop and resume with
//! `subscribe {recover: {offset, epoch}}` while publishers keep publishing
//! into history channels (the server must run with `--history-size`).
//!
//! Every connection is a thread with one blocking socket (the ring-based
//! generator of [`super::worker`] keeps no per-subscriber state machine,
//! and what is measured here is the server's replay, not the generator's
//! receive path).
//!
//! - A publisher publishes to the channels in turn, `--pipeline` publishes
//!   outstanding (or paced by `--rate`, shared by the publishers). Each
//!   `published` carries the publication's offset; the highest per channel
//!   is kept where the subscribers read it.
//! - A subscriber joins its channel, stays live for [`LIVE_PHASE`], is cut
//!   by a reset (SO_LINGER 0: whatever the server had queued is lost, as in
//!   a network failure), waits until at least `--missed` publications were
//!   acknowledged on its channel past the last offset it saw, connects
//!   again and subscribes with `recover` (that offset and its epoch).
//! - Catch-up time: from writing that `subscribe` to receiving the
//!   publication whose offset the `subscribed` answer names (the channel's
//!   latest then: the last one replayed), in an HdrHistogram (µs).
//! - Loss: `recovered: false` (counted as the offsets between the last seen
//!   and the channel's latest), an offset gap or a new epoch on a live
//!   message. A publication received twice is an error.

use super::replies::MAX_FRAME;
use super::report::{new_histogram, HistoryHeld, Latency, Machine, RecoverFigures, Report};
use super::requests::{channel_name, write_publish};
use super::setup::{connect_auth, get_stats};
use super::tls::{BenchTls, ReadWrite};
use super::{utc_now, BenchConfig, BenchError, Content};
use crate::protocol::codec::{Codec, Decompressor, COMPRESSED_FLAG};
use crate::protocol::json::ObjectWriter;
use crate::protocol::{encode_frame, HEADER_LEN};
use hdrhistogram::Histogram;
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a subscriber stays connected after it caught up (or first
/// joined) before it is cut: long enough to see live publications flow
/// after the replay, short enough for many drop/resume cycles a second.
const LIVE_PHASE: Duration = Duration::from_millis(100);
/// How long a blocking read waits before the thread looks at the clock
/// (the run's end, the live phase's end, a publisher's next due send).
const POLL: Duration = Duration::from_millis(20);
/// Open loop: how often a publisher wakes to send what is due.
const POLL_OPEN_LOOP: Duration = Duration::from_millis(1);
/// The longest wait for a `subscribed` answer or for a catch-up to end: a
/// replay of the server's whole recover limit takes milliseconds, so this
/// only catches a server that never answers.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// After the run ends: how long publishers wait for their last answers.
const DRAIN: Duration = Duration::from_secs(2);
/// Open loop: publishes in flight per publisher at most (a server that
/// stalls is not buried under an unbounded backlog).
const MAX_IN_FLIGHT: usize = 4096;
/// Subscribers at most: each is a thread.
pub const MAX_SUBSCRIBERS: usize = 512;

/// What every thread of a run shares.
struct Shared {
    /// Measuring starts (warm-up over).
    from: Instant,
    /// Publishing stops; no new drop/resume cycle starts.
    until: Instant,
    /// Set when a thread failed: everyone stops.
    stop: AtomicBool,
    /// Per channel: the highest offset acknowledged to a publisher.
    tops: Vec<AtomicU64>,
}

impl Shared {
    fn over(&self) -> bool {
        Instant::now() >= self.until || self.stop.load(Ordering::Relaxed)
    }
}

/// What one thread counted.
struct Tally {
    /// Catch-up times (µs) of measured recoveries.
    hist: Histogram<u64>,
    /// Recoveries answered `recovered: true`.
    recoveries: u64,
    /// Publications replayed by them.
    recovered: u64,
    /// Their catch-up times summed (ns).
    catch_up_ns: u64,
    /// Resubscriptions answered `recovered: false`.
    refused: u64,
    /// Publications lost: refused recoveries, offset gaps, new epochs.
    lost: u64,
    /// Publications received twice (or out of order).
    duplicates: u64,
    /// Channel messages received (replayed and live).
    deliveries: u64,
    /// Frame bytes received.
    bytes: u64,
    /// Publications acknowledged (publishers).
    published: u64,
    /// Error frames, broken connections, duplicates.
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            hist: new_histogram(),
            recoveries: 0,
            recovered: 0,
            catch_up_ns: 0,
            refused: 0,
            lost: 0,
            duplicates: 0,
            deliveries: 0,
            bytes: 0,
            published: 0,
            errors: 0,
            first_error: None,
        }
    }

    fn error(&mut self, what: impl FnOnce() -> String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(what());
        }
    }

    fn add(&mut self, o: Tally) {
        self.hist.add(&o.hist).expect("histograms share bounds");
        self.recoveries += o.recoveries;
        self.recovered += o.recovered;
        self.catch_up_ns += o.catch_up_ns;
        self.refused += o.refused;
        self.lost += o.lost;
        self.duplicates += o.duplicates;
        self.deliveries += o.deliveries;
        self.bytes += o.bytes;
        self.published += o.published;
        self.errors += o.errors;
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
    }
}

/// One connection: a blocking stream (TLS or not) that reads whole frames,
/// and tolerates read timeouts between and inside them.
struct Link {
    io: Box<dyn ReadWrite + Send>,
    /// The same socket, to set timeouts and cut it.
    sock: TcpStream,
    codec: Option<Codec>,
    buf: Vec<u8>,
    start: usize,
    inflater: Decompressor,
}

impl Link {
    fn open(cfg: &BenchConfig, server: SocketAddr, tls: Option<&BenchTls>) -> io::Result<Link> {
        let c = connect_auth(server, None, cfg.token.as_deref(), tls, cfg.compress)?;
        let sock = c.sock.try_clone()?;
        let io: Box<dyn ReadWrite + Send> = match c.tls {
            Some(t) => Box::new(rustls::StreamOwned::new(t, c.sock)),
            None => Box::new(c.sock),
        };
        sock.set_read_timeout(Some(POLL))?;
        Ok(Link {
            io,
            sock,
            codec: c.codec.map(|(k, _)| k),
            buf: Vec::with_capacity(64 << 10),
            start: 0,
            inflater: Decompressor::new(),
        })
    }

    /// Sends one frame of `payload` (uncompressed: the server takes both).
    fn send(&mut self, payload: &[u8]) -> io::Result<()> {
        let mut f = Vec::with_capacity(payload.len() + HEADER_LEN);
        encode_frame(&mut f, payload);
        self.io.write_all(&f)
    }

    /// The next whole frame's payload (decompressed), or None when nothing
    /// came within the read timeout.
    fn next_frame(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            if let Some(f) = self.take()? {
                return Ok(Some(f));
            }
            if self.start > 0 {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            let have = self.buf.len();
            self.buf.resize(have + (64 << 10), 0);
            let r = self.io.read(&mut self.buf[have..]);
            self.buf.truncate(have + *r.as_ref().unwrap_or(&0));
            match r {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None)
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// A whole frame from the buffer, if one is there.
    fn take(&mut self) -> io::Result<Option<Vec<u8>>> {
        let b = &self.buf[self.start..];
        if b.len() < HEADER_LEN {
            return Ok(None);
        }
        let raw = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        let packed = self.codec.filter(|_| raw & COMPRESSED_FLAG != 0);
        let len = if packed.is_some() {
            raw & !COMPRESSED_FLAG
        } else {
            raw
        } as usize;
        if len == 0 || len > MAX_FRAME {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("server sent a frame header of {len} bytes"),
            ));
        }
        if b.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let payload = &b[HEADER_LEN..HEADER_LEN + len];
        self.start += HEADER_LEN + len;
        match packed {
            None => Ok(Some(payload.to_vec())),
            Some(c) => {
                let mut plain = Vec::new();
                self.inflater
                    .decompress(c, payload, &mut plain, MAX_FRAME)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                Ok(Some(plain))
            }
        }
    }

    /// Cuts the connection with a reset, as a failing network would.
    fn cut(self) {
        let _ = socket2::SockRef::from(&self.sock).set_linger(Some(Duration::ZERO));
    }
}

/// The number after `"offset":` in a channel message (the last such key:
/// the server writes it after the content).
fn offset_of(payload: &[u8]) -> Option<u64> {
    const KEY: &[u8] = br#""offset":"#;
    let at = memchr::memmem::rfind(payload, KEY)? + KEY.len();
    let digits = payload[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    std::str::from_utf8(&payload[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

/// The string after `"epoch":"` in a channel message.
fn epoch_of(payload: &[u8]) -> Option<&[u8]> {
    const KEY: &[u8] = br#""epoch":""#;
    let at = memchr::memmem::rfind(payload, KEY)? + KEY.len();
    let end = memchr::memchr(b'"', &payload[at..])?;
    Some(&payload[at..at + end])
}

fn no_history(channel: &str) -> io::Error {
    io::Error::other(format!(
        "{channel} has no history: the server must run with --history-size N \
         (the recover workload and bench --history measure history channels)"
    ))
}

/// A recovery under way: the replay runs to offset `to`.
struct CatchUp {
    from: u64,
    to: u64,
    sent: Instant,
}

/// One subscriber's drop/resume cycles until the run ends. With several
/// servers (`--node`), each resume is on the next one: a cluster's
/// recovery is served by a node other than the one the client left.
fn subscriber(
    sh: &Shared,
    cfg: &BenchConfig,
    servers: &[SocketAddr],
    first: usize,
    channel: usize,
    tls: Option<&BenchTls>,
) -> io::Result<Tally> {
    let name = channel_name(channel, false);
    let mut t = Tally::new();
    // The last offset seen and its epoch (None before the first subscribe).
    let mut pos: Option<(u64, String)> = None;
    let mut cycle = 0;
    while !sh.over() {
        let server = servers[(first + cycle) % servers.len()];
        cycle += 1;
        let mut link = Link::open(cfg, server, tls)?;
        let mut req = Vec::new();
        let mut o = ObjectWriter::new(&mut req);
        o.raw_str("type", "subscribe");
        o.str("channel", &name);
        if let Some((offset, epoch)) = &pos {
            let r = o.key("recover");
            let mut ro = ObjectWriter::new(r);
            ro.u64("offset", *offset);
            ro.str("epoch", epoch);
            ro.finish();
        }
        o.finish();
        let sent = Instant::now();
        link.send(&req)?;
        let reply = wait_answer(&mut link, &mut t)?;
        let v: serde_json::Value = serde_json::from_slice(&reply)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        if v["type"] != "subscribed" {
            return Err(io::Error::other(format!("subscribe refused: {v}")));
        }
        let (Some(offset), Some(epoch)) = (v["offset"].as_u64(), v["epoch"].as_str()) else {
            return Err(no_history(&name));
        };
        let measured = sent >= sh.from && sent < sh.until;
        let mut catch = None;
        if let Some((last, held)) = &pos {
            if v["recovered"] == true {
                if offset > *last {
                    catch = Some(CatchUp {
                        from: *last,
                        to: offset,
                        sent,
                    });
                }
            } else if measured {
                t.refused += 1;
                // Same epoch: exactly the offsets skipped; a new epoch:
                // the old one's rest is unknown, the new one's are all lost.
                t.lost += if held == epoch {
                    offset.saturating_sub(*last)
                } else {
                    offset
                };
            }
        }
        // Recovered: the replay from the last offset seen follows; else
        // live delivery starts after the channel's latest.
        let resume_at = catch.as_ref().map_or(offset, |c| c.from);
        pos = Some((resume_at, epoch.to_owned()));
        let pos = pos.as_mut().expect("just set");
        let mut live_until = catch.is_none().then(|| Instant::now() + LIVE_PHASE);
        loop {
            let now = Instant::now();
            match (&catch, live_until) {
                (Some(c), _) if now.duration_since(c.sent) > ANSWER_TIMEOUT => {
                    return Err(io::Error::other(format!(
                        "{name}: the replay of offsets {} to {} did not end within {ANSWER_TIMEOUT:?}",
                        c.from + 1,
                        c.to
                    )));
                }
                (None, Some(u)) if now >= u || sh.over() => break,
                _ => {}
            }
            let f = match link.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => continue,
                Err(e) => {
                    // The server closed it (a slow consumer, say): an
                    // error, and the cycle goes on with a new connection.
                    t.error(|| format!("{name}: subscriber connection lost: {e}"));
                    break;
                }
            };
            t.bytes += (HEADER_LEN + f.len()) as u64;
            if !f.starts_with(br#"{"type":"channel_message""#) {
                t.error(|| String::from_utf8_lossy(&f).into_owned());
                continue;
            }
            t.deliveries += 1;
            let Some(o) = offset_of(&f) else {
                return Err(no_history(&name));
            };
            if epoch_of(&f).is_some_and(|e| e != pos.1.as_bytes()) {
                // The channel's log was dropped and started again: the new
                // epoch's offsets before this one were missed, and some of
                // the old one's perhaps (counted as one at least).
                t.lost += o.max(1);
                pos.1 = String::from_utf8_lossy(epoch_of(&f).unwrap_or_default()).into_owned();
                pos.0 = o;
                continue;
            }
            if o <= pos.0 {
                t.duplicates += 1;
                t.error(|| format!("{name}: offset {o} received again (after {})", pos.0));
                continue;
            }
            if o > pos.0 + 1 {
                t.lost += o - pos.0 - 1;
            }
            pos.0 = o;
            if let Some(c) = &catch {
                if o >= c.to {
                    let took = c.sent.elapsed();
                    if measured {
                        t.recoveries += 1;
                        t.recovered += c.to - c.from;
                        t.catch_up_ns += took.as_nanos() as u64;
                        t.hist.saturating_record(took.as_micros() as u64);
                    }
                    catch = None;
                    live_until = Some(Instant::now() + LIVE_PHASE);
                }
            }
        }
        link.cut();
        // Away until enough was published to miss.
        let want = pos.0.saturating_add(cfg.missed);
        while sh.tops[channel].load(Ordering::Relaxed) < want && !sh.over() {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    Ok(t)
}

/// Reads until a frame that is not a channel message (the answer).
fn wait_answer(link: &mut Link, t: &mut Tally) -> io::Result<Vec<u8>> {
    let deadline = Instant::now() + ANSWER_TIMEOUT;
    loop {
        match link.next_frame()? {
            Some(f) if f.starts_with(br#"{"type":"channel_message""#) => {
                // Nothing may come before the answer on a new connection.
                t.error(|| "a channel message before the subscribe's answer".into());
            }
            Some(f) => return Ok(f),
            None if Instant::now() > deadline => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the server did not answer a subscribe",
                ))
            }
            None => {}
        }
    }
}

/// One publisher: publishes to the channels in turn, from `first`, until
/// the run ends, keeping each channel's highest acknowledged offset.
fn publisher(
    sh: &Shared,
    cfg: &BenchConfig,
    server: SocketAddr,
    first: usize,
    rate: Option<f64>,
    tls: Option<&BenchTls>,
) -> io::Result<Tally> {
    let mut link = Link::open(cfg, server, tls)?;
    let pad = match cfg.content {
        Content::Filler => "x".repeat(cfg.size.saturating_sub(24)),
        Content::Telemetry => super::telemetry_records(cfg.size),
    };
    let channels = cfg.channels.max(1);
    let names: Vec<String> = (0..channels).map(|n| channel_name(n, false)).collect();
    let mut t = Tally::new();
    let mut counter = first;
    // The channel of each publish in flight (answers come in order).
    let mut in_flight: VecDeque<usize> = VecDeque::new();
    let mut out = Vec::new();
    let clock = Instant::now();
    let mut send = |link: &mut Link, in_flight: &mut VecDeque<usize>| -> io::Result<()> {
        let ch = counter % channels;
        counter += 1;
        out.clear();
        write_publish(
            &mut out,
            &names[ch],
            clock.elapsed().as_nanos() as u64,
            &pad,
            cfg.content,
        );
        in_flight.push_back(ch);
        link.io.write_all(&out)
    };
    let interval = rate.map(|r| Duration::from_secs_f64(1.0 / r.max(1e-3)));
    let mut next_due = Instant::now();
    match interval {
        None => {
            for _ in 0..cfg.pipeline.max(1) {
                send(&mut link, &mut in_flight)?;
            }
        }
        Some(_) => link.sock.set_read_timeout(Some(POLL_OPEN_LOOP))?,
    }
    let mut drain_until = None;
    loop {
        let over = sh.over();
        if over {
            let d = *drain_until.get_or_insert_with(|| Instant::now() + DRAIN);
            if in_flight.is_empty() || Instant::now() > d {
                t.errors += in_flight.len() as u64;
                break;
            }
        }
        if let (Some(iv), false) = (interval, over) {
            while next_due <= Instant::now() && in_flight.len() < MAX_IN_FLIGHT {
                send(&mut link, &mut in_flight)?;
                next_due += iv;
            }
        }
        let Some(f) = link.next_frame()? else {
            continue;
        };
        if f.starts_with(br#"{"type":"channel_message""#) {
            continue;
        }
        let Some(ch) = in_flight.pop_front() else {
            t.error(|| format!("an answer to nothing: {}", String::from_utf8_lossy(&f)));
            continue;
        };
        if f.starts_with(br#"{"type":"published""#) {
            let Some(o) = offset_of(&f) else {
                return Err(no_history(&names[ch]));
            };
            sh.tops[ch].fetch_max(o, Ordering::Relaxed);
            t.published += 1;
        } else {
            t.error(|| String::from_utf8_lossy(&f).into_owned());
        }
        if interval.is_none() && !over {
            send(&mut link, &mut in_flight)?;
        }
    }
    Ok(t)
}

/// Runs the recover workload (see the module doc).
pub fn run(cfg: &BenchConfig) -> Result<Report, BenchError> {
    let subscribers = cfg.channels.saturating_mul(cfg.subscribers);
    if cfg.publishers == 0 || cfg.channels == 0 || subscribers == 0 {
        return Err(BenchError::Config(
            "recover needs at least one publisher, one channel and one subscriber".into(),
        ));
    }
    if subscribers > MAX_SUBSCRIBERS {
        return Err(BenchError::Config(format!(
            "recover runs a thread per subscriber: at most {MAX_SUBSCRIBERS} \
             (--channels x --subscribers is {subscribers})"
        )));
    }
    if cfg.missed == 0 {
        return Err(BenchError::Config("--missed must be at least 1".into()));
    }
    let tls = match &cfg.tls {
        Some(o) => Some(BenchTls::new(o, cfg.addr)?),
        None => None,
    };
    let servers: Vec<SocketAddr> = std::iter::once(cfg.addr)
        .chain(cfg.more_addrs.iter().copied())
        .collect();
    let start = Instant::now();
    let sh = Arc::new(Shared {
        from: start + cfg.warmup,
        until: start + cfg.warmup + cfg.duration,
        stop: AtomicBool::new(false),
        tops: (0..cfg.channels).map(|_| AtomicU64::new(0)).collect(),
    });
    let rate = cfg.rate.map(|r| r as f64 / cfg.publishers as f64);
    let mut handles = Vec::new();
    let spawn = |i: usize, f: Box<dyn FnOnce() -> io::Result<Tally> + Send>| {
        let sh = sh.clone();
        std::thread::Builder::new()
            .name(format!("ringcast-recover-{i}"))
            .spawn(move || {
                let r = f();
                if r.is_err() {
                    sh.stop.store(true, Ordering::SeqCst);
                }
                r
            })
    };
    for p in 0..cfg.publishers {
        let (sh2, cfg2, tls2) = (sh.clone(), cfg.clone(), tls.clone());
        let server = servers[p % servers.len()];
        handles.push(spawn(
            p,
            Box::new(move || publisher(&sh2, &cfg2, server, p, rate, tls2.as_ref())),
        )?);
    }
    for s in 0..subscribers {
        let (sh2, cfg2, tls2) = (sh.clone(), cfg.clone(), tls.clone());
        let servers2 = servers.clone();
        let first = cfg.publishers + s;
        let channel = s % cfg.channels;
        handles.push(spawn(
            cfg.publishers + s,
            Box::new(move || subscriber(&sh2, &cfg2, &servers2, first, channel, tls2.as_ref())),
        )?);
    }
    let threads = handles.len();
    let mut total = Tally::new();
    let mut failure = None;
    for h in handles {
        match h.join() {
            Ok(Ok(t)) => total.add(t),
            Ok(Err(e)) => failure = failure.or(Some(e)),
            Err(_) => failure = failure.or(Some(io::Error::other("a recover thread panicked"))),
        }
    }
    if let Some(e) = failure {
        return Err(BenchError::Io(e));
    }
    if let Some(e) = &total.first_error {
        eprintln!("  first error: {e}");
    }
    let held = get_stats(cfg.addr)?.history.map(HistoryHeld::from);
    let secs = cfg.duration.as_secs_f64().max(1e-9);
    let figures = RecoverFigures {
        published: total.published,
        recoveries: total.recoveries,
        recovered: total.recovered,
        recovered_per_sec: total.recovered as f64 / secs,
        replay_per_sec: total.recovered as f64 / (total.catch_up_ns as f64 / 1e9).max(1e-9),
        missed_per_recovery: total.recovered as f64 / total.recoveries.max(1) as f64,
        refused: total.refused,
        lost: total.lost,
        duplicates: total.duplicates,
    };
    let hist = total.hist;
    Ok(Report {
        label: cfg.label.clone(),
        addr: servers
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(","),
        workload: "recover".into(),
        connections: cfg.publishers + subscribers,
        pipeline: cfg.pipeline,
        rate: cfg.rate.unwrap_or(0),
        size: cfg.size,
        threads,
        seconds: secs,
        messages: total.recovered,
        msgs_per_sec: total.recovered as f64 / secs,
        mb_per_sec: total.bytes as f64 / 1e6 / secs,
        deliveries_per_sec: total.deliveries as f64 / secs,
        latency_us: Latency::from_histogram(&hist),
        errors: total.errors,
        reconnects: 0,
        rss_bytes_per_connection: None,
        compression: cfg.compress.map(|c| c.as_str().to_owned()),
        content: cfg.content.name().into(),
        wire: Default::default(),
        history: held,
        recover: Some(figures),
        machine: Machine::current(),
        date: utc_now(),
    })
    .inspect(|_| super::set_last_histogram(hist))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_and_epochs_are_read_after_the_content() {
        let m = br#"{"type":"channel_message","channel":"c","content":"t=1;\"offset\":9","from":"x","timestamp":"t","offset":42,"epoch":"e1"}"#;
        assert_eq!(offset_of(m), Some(42));
        assert_eq!(epoch_of(m), Some(&b"e1"[..]));
        assert_eq!(
            offset_of(br#"{"type":"channel_message","content":1}"#),
            None
        );
        assert_eq!(epoch_of(br#"{"type":"published","offset":3}"#), None);
    }
}
