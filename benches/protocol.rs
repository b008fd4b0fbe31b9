//! Protocol core benchmarks.
//!
//! - `pipeline_*`: what a shard does per chunk read off a socket: decode
//!   frames, `parse_request`, format the timestamp and write the
//!   `echo_response` frame into a reused output buffer. Echo requests with
//!   32-byte and 64 KiB content; reported as messages/s and as input bytes/s.
//! - `parse_*`: parse only, on the same echo payloads, comparing our
//!   simd-json tape path (`parse_request`, then reading `content`) with
//!   serde_json (into a `Value`, and into a borrowed derived struct) and
//!   sonic-rs (into its `Value`, and into the same borrowed struct).
//!
//! simd-json parses in place (strings with escapes are unescaped inside the
//! input), so each simd-json iteration first restores its input with one
//! `copy_from_slice` into a reused buffer, inside the timed routine: about
//! 10 ns for the small payload and a 64 KiB memcpy (a few µs) for the large
//! one, a small handicap that serde_json and sonic-rs, reading the shared
//! slice, do not pay. The pipeline benchmarks restore their chunk the same
//! way, standing in for the kernel's copy of a socket read.
//! - `codec_*` (issue 16): one frame's payload compressed and decompressed
//!   with each codec, on 16 KiB and 64 KiB of telemetry-like JSON (what a
//!   compressed reply, request or broadcast costs the shard once); the
//!   compressed sizes are printed before the group runs.
//!
//! Results and the machine they came from: docs/protocol-bench.md.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use ringcast::protocol::frame::{encode_frame, FrameDecoder, DEFAULT_MAX_FRAME_BYTES};
use ringcast::protocol::message::{write_echo_response, write_error};
use ringcast::protocol::{parse_request, JsonParser, TimestampCache};
use serde::Deserialize;
use sonic_rs::JsonValueTrait;
use std::ops::ControlFlow;
use std::time::Duration;

/// An echo request as the load generator sends it.
fn echo_payload(content_len: usize) -> Vec<u8> {
    let content: String = (0..content_len)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    format!(
        r#"{{"type":"echo","content":"{content}","timestamp":"2024-01-01T12:00:00.000Z","id":"c1-000042"}}"#
    )
    .into_bytes()
}

/// The sizes measured: name, content bytes, frames per chunk.
const SIZES: [(&str, usize, usize); 2] = [("echo_32B", 32, 64), ("echo_64KiB", 64 * 1024, 4)];

struct Pipeline {
    decoder: FrameDecoder,
    parser: JsonParser,
    clock: TimestampCache,
    now_ms: u64,
    out: Vec<u8>,
}

impl Pipeline {
    fn new() -> Self {
        Pipeline {
            decoder: FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES),
            parser: JsonParser::new(),
            clock: TimestampCache::new(),
            now_ms: 1_704_110_400_000,
            out: Vec::with_capacity(1 << 20),
        }
    }

    /// Handles one chunk; returns the bytes of responses written.
    fn on_chunk(&mut self, chunk: &mut [u8]) -> usize {
        self.out.clear();
        self.now_ms += 1;
        let now = self.clock.format(self.now_ms);
        let (parser, out) = (&mut self.parser, &mut self.out);
        self.decoder
            .feed(chunk, |payload| {
                parse_request(parser, payload, |r| match r {
                    Ok(req) => write_echo_response(out, &req, now),
                    Err(rej) => write_error(
                        out,
                        rej.id.as_ref(),
                        rej.error.code,
                        rej.error.message,
                        rej.error.request_type,
                    ),
                });
                ControlFlow::Continue(())
            })
            .expect("valid frames");
        self.out.len()
    }
}

fn chunk_of(payload: &[u8], frames: usize) -> Vec<u8> {
    let mut chunk = Vec::new();
    for _ in 0..frames {
        encode_frame(&mut chunk, payload);
    }
    chunk
}

fn pipeline(c: &mut Criterion) {
    for (group_name, by_bytes) in [("pipeline_msgs", false), ("pipeline_bytes", true)] {
        let mut g = c.benchmark_group(group_name);
        for (name, content_len, frames) in SIZES {
            let chunk = chunk_of(&echo_payload(content_len), frames);
            g.throughput(if by_bytes {
                Throughput::Bytes(chunk.len() as u64)
            } else {
                Throughput::Elements(frames as u64)
            });
            let mut p = Pipeline::new();
            // Sanity: every frame answered with an echo_response.
            let written = p.on_chunk(&mut chunk.clone());
            assert!(written > frames * content_len);
            let mut buf = chunk.clone();
            g.bench_function(name, |b| {
                b.iter(|| {
                    buf.copy_from_slice(&chunk);
                    black_box(p.on_chunk(&mut buf))
                })
            });
        }
        g.finish();
    }
}

/// The echo request, read into a borrowed struct (no copies of strings).
#[derive(Deserialize)]
struct EchoRequest<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    content: &'a str,
    #[allow(dead_code)]
    timestamp: &'a str,
    id: Option<&'a str>,
}

fn parse_only(c: &mut Criterion) {
    for (name, content_len, _) in SIZES {
        let payload = echo_payload(content_len);
        let mut g = c.benchmark_group(format!("parse_{name}"));
        g.throughput(Throughput::Bytes(payload.len() as u64));

        let mut parser = JsonParser::new();
        let content_of = |parser: &mut JsonParser, buf: &mut [u8]| {
            parse_request(parser, buf, |r| {
                let req = r.expect("valid request");
                assert_eq!(req.type_name, "echo");
                req.get("content").and_then(|v| v.as_str()).map(str::len)
            })
        };
        assert_eq!(
            content_of(&mut parser, &mut payload.clone()),
            Some(content_len)
        );
        let mut buf = payload.clone();
        g.bench_function("simd_json_tape", |b| {
            b.iter(|| {
                buf.copy_from_slice(black_box(&payload));
                black_box(content_of(&mut parser, &mut buf))
            })
        });

        g.bench_function("serde_json_value", |b| {
            b.iter(|| {
                let v: serde_json::Value = serde_json::from_slice(black_box(&payload)).unwrap();
                black_box(v["content"].as_str().map(str::len))
            })
        });

        g.bench_function("serde_json_struct", |b| {
            b.iter(|| {
                let v: EchoRequest<'_> = serde_json::from_slice(black_box(&payload)).unwrap();
                black_box((v.kind.len(), v.content.len(), v.id.map(str::len)))
            })
        });

        g.bench_function("sonic_rs_value", |b| {
            b.iter(|| {
                let v: sonic_rs::Value = sonic_rs::from_slice(black_box(&payload)).unwrap();
                black_box(v.get("content").and_then(|c| c.as_str()).map(str::len))
            })
        });

        g.bench_function("sonic_rs_struct", |b| {
            b.iter(|| {
                let v: EchoRequest<'_> = sonic_rs::from_slice(black_box(&payload)).unwrap();
                black_box((v.kind.len(), v.content.len(), v.id.map(str::len)))
            })
        });
        g.finish();
    }
}

/// A JSON echo payload of telemetry-like records, about `size` bytes: what
/// compression is for (field names and small values repeating).
fn telemetry_payload(size: usize) -> Vec<u8> {
    let mut s = String::from(r#"{"type":"echo","content":["#);
    let mut i = 0u64;
    while s.len() + 120 < size {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!(
            r#"{{"device":"sensor-{:04}","ts":{},"temp_c":{}.{},"humidity":{},"status":"{}"}}"#,
            i % 500,
            1_700_000_000_000u64 + i * 250,
            18 + i % 9,
            i * 7 % 10,
            40 + i % 30,
            if i % 11 == 0 { "warn" } else { "ok" }
        ));
        i += 1;
    }
    s.push_str("]}");
    s.into_bytes()
}

fn codec(c: &mut Criterion) {
    use ringcast::protocol::codec::{Codec, Compressor, Decompressor};
    for size in [16 << 10, 64 << 10] {
        let payload = telemetry_payload(size);
        let mut g = c.benchmark_group(format!("codec_{}k", size >> 10));
        g.throughput(Throughput::Bytes(payload.len() as u64));
        for codec in Codec::ALL {
            let mut comp = Compressor::new();
            let mut frame = Vec::with_capacity(payload.len());
            assert!(comp.compress_frame(codec, &payload, &mut frame));
            eprintln!(
                "codec_{}k/{}: {} bytes -> {} ({:.1}x)",
                size >> 10,
                codec.as_str(),
                payload.len(),
                frame.len() - 4,
                payload.len() as f64 / (frame.len() - 4) as f64
            );
            g.bench_function(format!("{}_compress", codec.as_str()), |b| {
                let mut out = Vec::with_capacity(payload.len());
                b.iter(|| {
                    out.clear();
                    black_box(comp.compress_frame(codec, black_box(&payload), &mut out))
                })
            });
            let mut d = Decompressor::new();
            let mut out = Vec::with_capacity(payload.len() + 1);
            g.bench_function(format!("{}_decompress", codec.as_str()), |b| {
                b.iter(|| {
                    d.decompress(codec, black_box(&frame[4..]), &mut out, 1 << 20)
                        .unwrap();
                    black_box(out.len())
                })
            });
        }
        g.finish();
    }
}

fn config() -> Criterion {
    Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(20)
        .nresamples(20_000)
}

criterion_group! {
    name = benches;
    config = config();
    targets = pipeline, parse_only, codec
}
criterion_main!(benches);
