//! Proves the server's per-message hot path allocates nothing once warm:
//! frame decoding, `parse_request`, the cached timestamp and writing the
//! response into a reused buffer.
//!
//! A counting global allocator wraps `System`. Only allocations made on a
//! thread that has switched counting on are counted (a thread-local flag), so
//! the test harness's own threads and tests running in parallel add no noise;
//! the counts are kept per thread for the same reason.

mod support;

use ringcast::protocol::frame::{FrameDecoder, DEFAULT_MAX_FRAME_BYTES};
use ringcast::protocol::message::{
    write_echo_response, write_error, write_pong, write_server_stats,
};
use ringcast::protocol::{parse_request, JsonParser, RequestKind, StatsReport, TimestampCache};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, Ordering};
use support::wire::frame_bytes;

struct Counting;

/// Allocation events (alloc, alloc_zeroed, realloc) on counting threads, all
/// threads together; each test reads its own thread's count below.
static TOTAL: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static ENABLED: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<u64> = const { Cell::new(0) };
}

fn record() {
    // `try_with`: the allocator can run while thread-locals are torn down.
    if ENABLED.try_with(Cell::get).unwrap_or(false) {
        let _ = COUNT.try_with(|c| c.set(c.get() + 1));
        TOTAL.fetch_add(1, Ordering::Relaxed);
    }
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record();
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record();
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record();
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Runs `f` with counting on for this thread; returns how many allocations it made.
fn count_allocs(f: impl FnOnce()) -> u64 {
    COUNT.with(|c| c.set(0));
    let before = TOTAL.load(Ordering::Relaxed);
    ENABLED.with(|e| e.set(true));
    f();
    ENABLED.with(|e| e.set(false));
    let n = COUNT.with(Cell::get);
    assert!(TOTAL.load(Ordering::Relaxed) - before >= n);
    n
}

static BY_TYPE: [(&str, u64); 10] = [
    ("ping", 10),
    ("echo", 20),
    ("broadcast", 3),
    ("get_stats", 1),
    ("message", 0),
    ("auth", 0),
    ("custom", 0),
    ("subscribe", 2),
    ("unsubscribe", 1),
    ("publish", 4),
];
static BY_CODE: [(&str, u64); 2] = [("invalid_json", 1), ("unknown_type", 2)];
static PER_SHARD: [u64; 2] = [4, 5];

/// One connection's state on a server shard, minus the socket.
struct Shard {
    decoder: FrameDecoder,
    parser: JsonParser,
    clock: TimestampCache,
    /// Fake clock: advances 7 ms per message, so the cache refreshes its
    /// milliseconds every message and its calendar part every ~143 messages.
    now_ms: u64,
    out: Vec<u8>,
    responses: u64,
}

impl Shard {
    fn new() -> Self {
        Shard {
            decoder: FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES),
            parser: JsonParser::new(),
            clock: TimestampCache::new(),
            now_ms: 1_704_110_399_000,
            out: Vec::with_capacity(1 << 20),
            responses: 0,
        }
    }

    /// The server's work for one chunk read off the socket.
    fn on_chunk(&mut self, chunk: &mut [u8]) {
        self.out.clear();
        let Shard {
            decoder,
            parser,
            clock,
            now_ms,
            out,
            responses,
        } = self;
        decoder
            .feed(chunk, |payload| {
                *now_ms += 7;
                let now = clock.format(*now_ms);
                parse_request(parser, payload, |r| match r {
                    Ok(req) => match req.kind {
                        RequestKind::Ping => write_pong(out, &req, now, "127.0.0.1:12345"),
                        RequestKind::Echo => write_echo_response(out, &req, now),
                        RequestKind::GetStats => {
                            let report = StatsReport {
                                connected_clients: 3,
                                uptime_seconds: 3600,
                                total_messages: 1250,
                                server_start_time: "2024-01-01T11:00:00.000Z",
                                current_time: now,
                                shards: 2,
                                total_connections: 9,
                                messages_by_type: &BY_TYPE,
                                bytes_received: 1,
                                bytes_sent: 2,
                                broadcasts_delivered: 3,
                                slow_consumer_disconnects: 0,
                                protocol_errors: 3,
                                errors_by_code: &BY_CODE,
                                rss_bytes: 1 << 24,
                                messages_per_second: 1000,
                                connections_per_shard: &PER_SHARD,
                                partial_frame_bytes: 4096,
                                io_backend: "io-uring",
                                tls_handshake_failures: &[],
                                auth_failures: &[],
                                channels: 2,
                                subscriptions: 3,
                                publishes: 4,
                                channel_deliveries: 5,
                                cluster: None,
                                compression: Default::default(),
                                history: None,
                            };
                            write_server_stats(out, req.id.as_ref(), &report)
                        }
                        other => panic!("unexpected kind {other:?}"),
                    },
                    Err(rej) => write_error(
                        out,
                        rej.id.as_ref(),
                        rej.error.code,
                        rej.error.message,
                        rej.error.request_type,
                    ),
                });
                *responses += 1;
                ControlFlow::Continue(())
            })
            .expect("valid frames");
    }
}

/// Frames of `payload`, `per_chunk` to a chunk, as a byte stream.
fn stream(payload: &str, per_chunk: usize) -> Vec<u8> {
    let mut s = Vec::new();
    for _ in 0..per_chunk {
        s.extend(frame_bytes(payload.as_bytes()));
    }
    s
}

/// Sends `total` copies of `payload` through a warmed-up shard, in chunks of
/// `per_chunk` frames, optionally re-cut at `cut`-byte boundaries so frames
/// straddle chunks. Returns the allocations counted after warm-up.
fn hot_path_allocs(payload: &str, total: usize, per_chunk: usize, cut: Option<usize>) -> u64 {
    let template = stream(payload, per_chunk);
    let chunks: Vec<Vec<u8>> = match cut {
        Some(n) => template.chunks(n).map(<[u8]>::to_vec).collect(),
        None => vec![template],
    };
    let mut work: Vec<Vec<u8>> = chunks.clone();
    let mut shard = Shard::new();
    let mut round = |shard: &mut Shard| {
        for (w, c) in work.iter_mut().zip(&chunks) {
            // The parser unescapes strings in place: restore the bytes, as a
            // fresh socket read would (a copy into existing memory).
            w.copy_from_slice(c);
            shard.on_chunk(w);
        }
    };
    // Warm-up: buffers grow to their working size.
    for _ in 0..4 {
        round(&mut shard);
    }
    let warm = shard.responses;
    let rounds = total / per_chunk;
    let n = count_allocs(|| {
        for _ in 0..rounds {
            round(&mut shard);
        }
    });
    // The work was really done: one response per request.
    assert_eq!(shard.responses - warm, (rounds * per_chunk) as u64);
    assert!(!shard.out.is_empty());
    n
}

const PING: &str = r#"{"type":"ping","timestamp":"2024-01-01T12:00:00.000Z","client_info":"TCP Client info","id":17}"#;
const GET_STATS: &str =
    r#"{"type":"get_stats","timestamp":"2024-01-01T12:00:00.000Z","id":"stats-1"}"#;

fn echo(content_len: usize) -> String {
    let content: String = (0..content_len)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    format!(
        r#"{{"type":"echo","content":"{content}","timestamp":"2024-01-01T12:00:00.000Z","id":"e-1"}}"#
    )
}

#[test]
fn the_counter_sees_allocations() {
    // Guards against a counter that cannot fail: a Vec allocation is seen.
    let n = count_allocs(|| {
        let v: Vec<u8> = Vec::with_capacity(std::hint::black_box(64));
        std::hint::black_box(&v);
    });
    assert_eq!(n, 1);
    // And a warm shard with a too-small output buffer must allocate to grow it.
    let mut shard = Shard::new();
    shard.out = Vec::new();
    let mut chunk = stream(PING, 1);
    let n = count_allocs(|| shard.on_chunk(&mut chunk));
    assert!(n >= 1, "growing the output buffer was not counted");
}

#[test]
fn ping_allocates_nothing() {
    assert_eq!(
        hot_path_allocs(PING, 10_000, 1, None),
        0,
        "one frame per chunk"
    );
    assert_eq!(
        hot_path_allocs(PING, 10_000, 100, None),
        0,
        "100 frames per chunk"
    );
    assert_eq!(
        hot_path_allocs(PING, 10_000, 100, Some(333)),
        0,
        "frames straddle chunks"
    );
    assert_eq!(
        hot_path_allocs(PING, 2_000, 100, Some(1)),
        0,
        "1-byte chunks"
    );
}

#[test]
fn echo_32_bytes_allocates_nothing() {
    let e = echo(32);
    assert_eq!(
        hot_path_allocs(&e, 10_000, 1, None),
        0,
        "one frame per chunk"
    );
    assert_eq!(
        hot_path_allocs(&e, 10_000, 100, None),
        0,
        "100 frames per chunk"
    );
    assert_eq!(
        hot_path_allocs(&e, 10_000, 100, Some(333)),
        0,
        "frames straddle chunks"
    );
}

#[test]
fn echo_64_kib_in_one_chunk_allocates_nothing() {
    // Parser buffers grow to the largest message and are kept.
    let e = echo(64 * 1024);
    assert_eq!(hot_path_allocs(&e, 200, 2, None), 0);
}

#[test]
fn get_stats_allocates_nothing() {
    assert_eq!(
        hot_path_allocs(GET_STATS, 10_000, 1, None),
        0,
        "one frame per chunk"
    );
    assert_eq!(
        hot_path_allocs(GET_STATS, 10_000, 100, Some(333)),
        0,
        "straddling"
    );
}

#[test]
fn rejections_allocate_nothing() {
    for bad in [
        r#"{"type":"ping","id":[1]}"#,
        r#"{"id":3}"#,
        r#"[1,2,3]"#,
        r#"{"type":"echo","id":"x"}"#,
    ] {
        assert_eq!(hot_path_allocs(bad, 5_000, 50, None), 0, "{bad}");
    }
}

#[test]
fn timestamp_cache_allocates_nothing() {
    let mut c = TimestampCache::new();
    let mut sum = 0usize;
    let n = count_allocs(|| {
        // Across seconds, days, months and years.
        let mut ms = 1_600_000_000_000u64;
        for _ in 0..10_000 {
            ms += 7_919_113;
            sum += c.format(ms).len();
        }
    });
    assert_eq!(sum, 10_000 * 24);
    assert_eq!(n, 0);
}
