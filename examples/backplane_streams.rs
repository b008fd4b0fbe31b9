//! `backplane_streams`: the cluster backplane's Redis traffic (src/cluster/)
//! without the servers, to compare stream layouts (issue #13, "one stream,
//! or one per channel hash slot"). `scripts/bench-backplane-streams.sh`
//! starts a throwaway redis-server and runs this for each layout.
//!
//! ```text
//! cargo run --release --example backplane_streams -- --redis redis://127.0.0.1:PORT \
//!     [--redis-pid PID] [--layout one|slots] [--streams 16] [--every 1] [--merge] \
//!     [--nodes 3] [--channels 10] [--entries 300000] [--rate ENTRIES_PER_SEC]
//! ```
//!
//! It starts nothing: it talks to the Redis it is given. Per node, one
//! **writer** thread XADDs publishes exactly as `writer_main` does (fields
//! `n` node id, `s` sequence, `f` frame of `--frame-bytes`, `c` channel;
//! `MAXLEN ~ --maxlen`; pipelines of up to 512 XADDs) and one **reader**
//! thread XREADs `COUNT 512 BLOCK 500` as `reader_main` does, skipping its
//! own node's entries. The frame starts with the send time in µs, so the
//! reader measures write-to-read latency.
//!
//! Layouts:
//! - `one`: every entry to one stream (what src/cluster does);
//! - `slots`: one stream per channel hash slot, `slot_of(channel) % S`
//!   (S = `--streams`, a divisor of the 16,384 interest slots); a publish
//!   goes to its slot's stream and a reader XREADs all S streams in one
//!   call (`STREAMS k1..kS id1..idS`).
//!
//! `--every K`: node n subscribes to channel c when (c + n) % K == 0 (K = 2:
//! half the channels). With `slots`, a reader then XREADs only the streams
//! of the slots its channels fall in (`--every 1` reads all S); with `one`
//! it reads everything and drops what no local client wants, as the real
//! reader does.
//!
//! `--merge` (slots only): the reader restores each sender's order across
//! streams (see [`Merger`]); without it, per-slot streams deliver one
//! sender's entries out of order across slots, and the run counts how many.
//!
//! Prints one line of `key=value` figures: entries written, entries/s
//! written and delivered, latency p50/p99/max, entries lost (trimmed before
//! read), deliveries out of sender order, and Redis's and this process's
//! CPU µs per entry written (`/proc/PID/stat` utime+stime, before and
//! after). Keys are prefixed by `--prefix` and deleted at the end.

use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use redis::streams::StreamReadReply;
use redis::{Connection, RedisResult};
use ringcast::protocol::interest::{slot_of, INTEREST_SLOTS};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// As in src/cluster/mod.rs.
const BATCH_ENTRIES: usize = 512;
const READ_BLOCK_MS: usize = 500;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Layout {
    /// One stream for everything (the current backplane).
    One,
    /// One stream per channel hash slot.
    Slots,
}

#[derive(Parser, Debug)]
#[command(about = "Redis stream layouts for the ringcast backplane")]
struct Args {
    /// redis://host:port of a Redis to use (nothing is started).
    #[arg(long)]
    redis: String,
    /// Redis's process id, to read its CPU time from /proc.
    #[arg(long)]
    redis_pid: Option<u32>,
    #[arg(long, value_enum, default_value = "one")]
    layout: Layout,
    /// Streams in the `slots` layout (a divisor of 16384).
    #[arg(long, default_value_t = 16)]
    streams: usize,
    /// Node n subscribes to channel c when (c + n) % every == 0.
    #[arg(long, default_value_t = 1)]
    every: usize,
    /// Restore each sender's order across slot streams on the reader.
    #[arg(long)]
    merge: bool,
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    #[arg(long, default_value_t = 10)]
    channels: usize,
    /// Entries written in all (split over the nodes).
    #[arg(long, default_value_t = 300_000)]
    entries: u64,
    /// Bytes per frame (the `f` field).
    #[arg(long, default_value_t = 200)]
    frame_bytes: usize,
    /// MAXLEN ~ per stream.
    #[arg(long, default_value_t = 100_000)]
    maxlen: usize,
    /// Total entries/s over all writers (open loop); default: as fast as
    /// Redis takes them (closed loop, one pipeline in flight per writer).
    #[arg(long)]
    rate: Option<f64>,
    /// Closed loop only: writers wait while a reader's newest entry is
    /// this much older than the newest written (pacing on the readers' progress; without it the
    /// writers run ahead and MAXLEN trims what the readers have not read).
    #[arg(long, default_value_t = 250)]
    max_lag_ms: u64,
    /// Key prefix (a fresh one per run).
    #[arg(long, default_value = "bps")]
    prefix: String,
    /// Label printed first on the result line.
    #[arg(long, default_value = "run")]
    label: String,
    /// Clock ticks per second of /proc/PID/stat (`getconf CLK_TCK`).
    #[arg(long, default_value_t = 100)]
    clk_tck: u64,
    /// Give up waiting for readers this long after the writers finish.
    #[arg(long, default_value_t = 20)]
    drain_secs: u64,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces), from field 3.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// The stream a channel's entries go to.
fn key_of(args: &Args, channel: &str) -> String {
    match args.layout {
        Layout::One => format!("{}:stream", args.prefix),
        Layout::Slots => format!("{}:s{}", args.prefix, slot_of(channel) % args.streams),
    }
}

/// Which channels node `n` subscribes to.
fn subscribed(args: &Args, node: usize, ch: usize) -> bool {
    (ch + node) % args.every == 0
}

/// The node's name in the `n` field: as long as a real default id.
fn node_name(n: usize) -> String {
    format!("bench-host:{}-{:08x}", 7000 + n, 0x5eed_0000u32 + n as u32)
}

/// Figures shared between threads.
struct Shared {
    /// Entries written per key, final once `writers_done`.
    written_per_key: Mutex<HashMap<String, u64>>,
    written: AtomicU64,
    writers_left: AtomicU64,
    /// The send time (µs) of the newest batch written.
    last_sent_us: AtomicU64,
    /// Per reader: the send time (µs) of the newest entry it has read.
    reader_seen_us: Vec<AtomicU64>,
    /// When the last writer finished, µs after the start.
    writers_done_us: AtomicU64,
    abort: AtomicBool,
}

fn connect(url: &str, read_timeout: Duration) -> RedisResult<Connection> {
    let c = redis::Client::open(url)?.get_connection_with_timeout(Duration::from_secs(2))?;
    c.set_read_timeout(Some(read_timeout))?;
    c.set_write_timeout(Some(Duration::from_secs(5)))?;
    Ok(c)
}

/// A deterministic xorshift, so every run publishes the same sequence.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn writer(
    args: &Args,
    shared: &Shared,
    node: usize,
    count: u64,
    channels: &[(String, String)],
    t0: Instant,
) {
    let mut con = connect(&args.redis, Duration::from_secs(10)).expect("writer connect");
    let id = node_name(node);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (node as u64 + 1));
    let pad = vec![b'x'; args.frame_bytes.saturating_sub(24)];
    let mut frame = Vec::with_capacity(args.frame_bytes);
    let mut per_key: HashMap<String, u64> = HashMap::new();
    let mut pipe = redis::Pipeline::new();
    let per_writer_rate = args.rate.map(|r| r / args.nodes as f64);
    let start = Instant::now();
    let mut seq = 0u64;
    while seq < count && !shared.abort.load(Ordering::Relaxed) {
        let n = match per_writer_rate {
            None => {
                let last = shared.last_sent_us.load(Ordering::Relaxed);
                let behind = |r: &AtomicU64| last.saturating_sub(r.load(Ordering::Relaxed));
                if shared.reader_seen_us.iter().map(behind).max().unwrap_or(0)
                    > args.max_lag_ms * 1000
                {
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
                BATCH_ENTRIES as u64
            }
            Some(r) => {
                // Entries due by now; sleep until the next one when none.
                let due = (start.elapsed().as_secs_f64() * r) as u64;
                if due <= seq {
                    let next = Duration::from_secs_f64((seq + 1) as f64 / r);
                    std::thread::sleep(next.saturating_sub(start.elapsed()));
                    continue;
                }
                (due - seq).min(BATCH_ENTRIES as u64)
            }
        }
        .min(count - seq);
        pipe.clear();
        let t = now_us();
        for _ in 0..n {
            seq += 1;
            let (ch, key) = &channels[(rng.next() % channels.len() as u64) as usize];
            frame.clear();
            // {"t":<16 digits>,"p":"xxx…"} : the send time first, for the reader.
            frame.extend_from_slice(format!("{{\"t\":{t:016},\"p\":\"").as_bytes());
            frame.extend_from_slice(&pad);
            frame.extend_from_slice(b"\"}");
            pipe.cmd("XADD")
                .arg(key)
                .arg("MAXLEN")
                .arg("~")
                .arg(args.maxlen)
                .arg("*")
                .arg("n")
                .arg(&id)
                .arg("s")
                .arg(seq)
                .arg("f")
                .arg(&frame[..])
                .arg("c")
                .arg(ch)
                .ignore();
            *per_key.entry(key.clone()).or_insert(0) += 1;
        }
        if let Err(e) = pipe.query::<()>(&mut con) {
            eprintln!("writer {node}: {e}");
            shared.abort.store(true, Ordering::Relaxed);
            break;
        }
        shared.written.fetch_add(n, Ordering::Relaxed);
        shared.last_sent_us.fetch_max(t, Ordering::Relaxed);
    }
    let mut all = shared
        .written_per_key
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    for (k, v) in per_key {
        *all.entry(k).or_insert(0) += v;
    }
    drop(all);
    shared
        .writers_done_us
        .fetch_max(t0.elapsed().as_micros() as u64, Ordering::AcqRel);
    shared.writers_left.fetch_sub(1, Ordering::AcqRel);
}

/// One entry as the reader holds it.
struct Entry {
    node: usize,
    seq: u64,
    sent_us: u64,
    channel: usize,
}

/// Restores each sender's order across the streams of one XREAD reply.
///
/// One XREAD is one instant in Redis (single-threaded), so a reply holds,
/// for every stream it read, everything written up to that instant, except
/// where COUNT cut a stream short. A stream id's first part is Redis's
/// clock in ms at the XADD, shared by all the streams of one Redis. So an
/// entry whose id is earlier (in ms) than the last id returned from every
/// cut stream was written before anything not yet read: every earlier
/// entry of its sender is in hand, and sorting what is in hand by (sender,
/// sequence) delivers it in send order. The rest is held for the next
/// reply. (Only within one Redis: on a Redis Cluster the slots' clocks
/// differ and this does not hold.)
#[derive(Default)]
struct Merger {
    held: Vec<(u64, Entry)>,
    /// Most entries held at once.
    peak: usize,
}

impl Merger {
    fn ready(&mut self, watermark_ms: u64, out: &mut Vec<Entry>) {
        let mut i = 0;
        while i < self.held.len() {
            if self.held[i].0 < watermark_ms {
                out.push(self.held.swap_remove(i).1);
            } else {
                i += 1;
            }
        }
        out.sort_unstable_by_key(|e| (e.node, e.seq));
    }
}

fn id_ms(id: &str) -> u64 {
    id.split('-')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0)
}

/// What one reader saw.
struct ReadFigures {
    read: u64,
    delivered: u64,
    out_of_order: u64,
    expected: u64,
    held_peak: usize,
    /// When it last got an entry.
    last_read: Option<Instant>,
    hist: Histogram<u64>,
}

fn reader(
    args: &Args,
    shared: &Shared,
    node: usize,
    keys: Vec<String>,
    names: &HashMap<String, usize>,
    ready: &Barrier,
) -> ReadFigures {
    let read_timeout = Duration::from_secs(5) + Duration::from_millis(READ_BLOCK_MS as u64);
    let mut con = connect(&args.redis, read_timeout).expect("reader connect");
    let own = node_name(node);
    let mut ids: Vec<String> = vec!["0-0".into(); keys.len()];
    let key_index: HashMap<&str, usize> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (k.as_str(), i))
        .collect();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("histogram");
    let mut last_seq: Vec<u64> = vec![0; args.nodes];
    let (mut read, mut delivered, mut out_of_order) = (0u64, 0u64, 0u64);
    let mut merger = Merger::default();
    let mut batch: Vec<Entry> = Vec::new();
    let mut drain_until: Option<Instant> = None;
    let mut expected = u64::MAX;
    let mut last_read = None;
    ready.wait();
    loop {
        if shared.writers_left.load(Ordering::Acquire) == 0 && expected == u64::MAX {
            let per_key = shared
                .written_per_key
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            expected = keys.iter().filter_map(|k| per_key.get(k)).sum();
            drain_until = Some(Instant::now() + Duration::from_secs(args.drain_secs));
        }
        if read >= expected
            || drain_until.is_some_and(|d| Instant::now() > d)
            || shared.abort.load(Ordering::Relaxed)
        {
            break;
        }
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(BATCH_ENTRIES)
            .arg("BLOCK")
            .arg(READ_BLOCK_MS)
            .arg("STREAMS")
            .arg(&keys)
            .arg(&ids);
        let reply: Option<StreamReadReply> = match cmd.query(&mut con) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("reader {node}: {e}");
                shared.abort.store(true, Ordering::Relaxed);
                break;
            }
        };
        let Some(reply) = reply else { continue };
        last_read = Some(Instant::now());
        let mut watermark = u64::MAX;
        let mut newest = 0u64;
        for key in reply.keys {
            let Some(&k) = key_index.get(key.key.as_str()) else {
                continue;
            };
            if key.ids.len() >= BATCH_ENTRIES {
                watermark = watermark.min(key.ids.last().map_or(0, |e| id_ms(&e.id)));
            }
            for entry in key.ids {
                read += 1;
                let get = |k: &str| -> Option<Vec<u8>> {
                    entry
                        .map
                        .get(k)
                        .and_then(|v| redis::from_redis_value_ref::<Vec<u8>>(v).ok())
                };
                ids[k] = entry.id.clone();
                let (Some(n), Some(s), Some(f)) = (get("n"), get("s"), get("f")) else {
                    continue;
                };
                let sent_us = f
                    .get(5..21)
                    .and_then(|t| std::str::from_utf8(t).ok())
                    .and_then(|t| t.parse::<u64>().ok())
                    .unwrap_or(0);
                newest = newest.max(sent_us);
                if n == own.as_bytes() {
                    continue; // our own: delivered locally already
                }
                let seq = std::str::from_utf8(&s)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                    .unwrap_or(0);
                let node = String::from_utf8(n)
                    .ok()
                    .and_then(|n| names.get(&n).copied())
                    .unwrap_or(0);
                let channel = get("c")
                    .and_then(|c| String::from_utf8(c).ok())
                    .and_then(|c| c.strip_prefix("ch-")?.parse().ok())
                    .unwrap_or(0);
                let e = Entry {
                    node,
                    seq,
                    sent_us,
                    channel,
                };
                if args.merge {
                    merger.held.push((id_ms(&entry.id), e));
                } else {
                    batch.push(e);
                }
            }
        }
        shared.reader_seen_us[node].fetch_max(newest, Ordering::Relaxed);
        if args.merge {
            merger.peak = merger.peak.max(merger.held.len());
            merger.ready(watermark, &mut batch);
        }
        let now = now_us();
        for e in batch.drain(..) {
            if !subscribed(args, node, e.channel) {
                continue; // no local subscriber: dropped, as the real reader does
            }
            if e.seq < last_seq[e.node] {
                out_of_order += 1;
            }
            last_seq[e.node] = last_seq[e.node].max(e.seq);
            delivered += 1;
            let _ = hist.record(now.saturating_sub(e.sent_us).max(1));
        }
    }
    // What the merger still holds at the end is delivered in order too.
    if args.merge {
        merger.ready(u64::MAX, &mut batch);
        for e in batch.drain(..) {
            if subscribed(args, node, e.channel) {
                delivered += 1;
                if e.seq < last_seq[e.node] {
                    out_of_order += 1;
                }
                last_seq[e.node] = last_seq[e.node].max(e.seq);
            }
        }
    }
    ReadFigures {
        read,
        delivered,
        out_of_order,
        expected: if expected == u64::MAX { 0 } else { expected },
        held_peak: merger.peak,
        last_read,
        hist,
    }
}

fn main() {
    let args = Args::parse();
    assert!(
        args.streams > 0 && INTEREST_SLOTS % args.streams == 0,
        "--streams must divide {INTEREST_SLOTS}"
    );
    assert!(args.nodes > 0 && args.channels > 0 && args.every > 0);
    let channels: Vec<(String, String)> = (0..args.channels)
        .map(|c| {
            let name = format!("ch-{c}");
            let key = key_of(&args, &name);
            (name, key)
        })
        .collect();
    let names: HashMap<String, usize> = (0..args.nodes).map(|n| (node_name(n), n)).collect();
    // The keys each node reads.
    let reader_keys: Vec<Vec<String>> = (0..args.nodes)
        .map(|n| match args.layout {
            Layout::One => vec![key_of(&args, "")],
            Layout::Slots if args.every == 1 => (0..args.streams)
                .map(|s| format!("{}:s{s}", args.prefix))
                .collect(),
            Layout::Slots => {
                let mut k: Vec<String> = channels
                    .iter()
                    .enumerate()
                    .filter(|(c, _)| subscribed(&args, n, *c))
                    .map(|(_, (_, key))| key.clone())
                    .collect();
                k.sort();
                k.dedup();
                k
            }
        })
        .collect();
    let mut all_keys: Vec<String> = channels.iter().map(|(_, k)| k.clone()).collect();
    all_keys.extend(reader_keys.iter().flatten().cloned());
    all_keys.sort();
    all_keys.dedup();
    let mut admin = connect(&args.redis, Duration::from_secs(30)).expect("connect");
    let _: () = redis::cmd("DEL")
        .arg(&all_keys)
        .query(&mut admin)
        .expect("DEL");

    let shared = Shared {
        written_per_key: Mutex::new(HashMap::new()),
        written: AtomicU64::new(0),
        writers_left: AtomicU64::new(args.nodes as u64),
        last_sent_us: AtomicU64::new(0),
        reader_seen_us: (0..args.nodes).map(|_| AtomicU64::new(0)).collect(),
        writers_done_us: AtomicU64::new(0),
        abort: AtomicBool::new(false),
    };
    let ready = Barrier::new(args.nodes + 1);
    let redis_pid = args.redis_pid.map(|p| p.to_string());
    let (mut cpu_redis0, mut cpu_self0) = (None, None);
    let mut t0 = Instant::now();
    let per_node = args.entries / args.nodes as u64;
    let figures: Vec<ReadFigures> = std::thread::scope(|s| {
        let readers: Vec<_> = reader_keys
            .iter()
            .enumerate()
            .map(|(n, keys)| {
                let (args, shared, names, ready) = (&args, &shared, &names, &ready);
                let keys = keys.clone();
                s.spawn(move || reader(args, shared, n, keys, names, ready))
            })
            .collect();
        ready.wait(); // every reader connected before the first write
        std::thread::sleep(Duration::from_millis(100));
        cpu_redis0 = redis_pid.as_deref().and_then(cpu_ticks);
        cpu_self0 = cpu_ticks("self");
        t0 = Instant::now();
        for r in &shared.reader_seen_us {
            r.store(now_us(), Ordering::Relaxed);
        }
        for n in 0..args.nodes {
            let (args, shared, channels) = (&args, &shared, &channels);
            s.spawn(move || writer(args, shared, n, per_node, channels, t0));
        }
        readers
            .into_iter()
            .map(|r| r.join().expect("reader"))
            .collect()
    });
    // Until the last entry reached a reader (not the reader's last, idle, XREAD).
    let elapsed = figures
        .iter()
        .filter_map(|f| f.last_read)
        .max()
        .map_or(t0.elapsed(), |t| t.saturating_duration_since(t0))
        .as_secs_f64()
        .max(1e-6);
    let cpu_redis = redis_pid
        .as_deref()
        .and_then(cpu_ticks)
        .zip(cpu_redis0)
        .map(|(b, a)| b.saturating_sub(a));
    let cpu_self = cpu_ticks("self")
        .zip(cpu_self0)
        .map(|(b, a)| b.saturating_sub(a));
    let _: RedisResult<()> = redis::cmd("DEL").arg(&all_keys).query(&mut admin);

    let written = shared.written.load(Ordering::Relaxed);
    let write_secs = (shared.writers_done_us.load(Ordering::Relaxed) as f64 / 1e6).max(1e-6);
    let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("histogram");
    let (mut read, mut delivered, mut ooo, mut lost, mut held) = (0, 0, 0, 0, 0);
    for f in &figures {
        read += f.read;
        delivered += f.delivered;
        ooo += f.out_of_order;
        lost += f.expected.saturating_sub(f.read);
        held = held.max(f.held_peak);
        hist.add(&f.hist).expect("histogram add");
    }
    let per_entry = |ticks: Option<u64>| {
        ticks.map_or("na".to_string(), |t| {
            format!(
                "{:.2}",
                t as f64 * 1e6 / args.clk_tck as f64 / written.max(1) as f64
            )
        })
    };
    let keys_read: usize = reader_keys.iter().map(Vec::len).sum();
    println!(
        "label={} layout={:?} streams={} every={} merge={} nodes={} channels={} keys_read_per_reader={:.1} \
         written={} write_secs={:.2} secs={:.2} written_per_s={:.0} read={} read_per_s={:.0} delivered={} delivered_per_s={:.0} \
         p50_us={} p99_us={} max_us={} lost={} out_of_order={} merge_held_peak={} \
         redis_cpu_us_per_entry={} client_cpu_us_per_entry={} aborted={}",
        args.label,
        args.layout,
        if args.layout == Layout::One { 1 } else { args.streams },
        args.every,
        args.merge,
        args.nodes,
        args.channels,
        keys_read as f64 / args.nodes as f64,
        written,
        write_secs,
        elapsed,
        written as f64 / write_secs,
        read,
        read as f64 / elapsed,
        delivered,
        delivered as f64 / elapsed,
        hist.value_at_quantile(0.5),
        hist.value_at_quantile(0.99),
        hist.max(),
        lost,
        ooo,
        held,
        per_entry(cpu_redis),
        per_entry(cpu_self),
        shared.abort.load(Ordering::Relaxed),
    );
}
