//! Negotiated compression, driven in memory: `hello`, compressed requests
//! and replies, the threshold, bombs and bad streams, and broadcasts to
//! mixed recipients compressed once per codec.

use crate::protocol::codec::Codec;
use crate::protocol::codec::{Compressor, Decompressor, COMPRESSED_FLAG};
use crate::protocol::frame::encode_frame;
use crate::protocol::ErrorCode;
use crate::route::testing::{shared, ServerConfig, TestEnv};
use crate::session::*;
use serde_json::{json, Value};
use std::sync::atomic::Ordering::Relaxed;

/// One frame off the wire: compressed or not, and the payload as sent.
#[derive(Debug)]
struct Wire {
    packed: bool,
    payload: Vec<u8>,
}

impl Wire {
    /// The JSON, decompressed with `codec` when the frame is flagged.
    fn json(&self, codec: Option<Codec>) -> Value {
        let plain = match (self.packed, codec) {
            (false, _) => self.payload.clone(),
            (true, Some(c)) => {
                let mut out = Vec::new();
                Decompressor::new()
                    .decompress(c, &self.payload, &mut out, 64 << 20)
                    .expect("a valid stream");
                out
            }
            (true, None) => panic!("a flagged frame on a connection without a codec"),
        };
        serde_json::from_slice(&plain).expect("JSON")
    }
}

fn split(bytes: &[u8]) -> Vec<Wire> {
    let mut v = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let h = u32::from_be_bytes(bytes[pos..pos + 4].try_into().unwrap());
        let len = (h & !COMPRESSED_FLAG) as usize;
        v.push(Wire {
            packed: h & COMPRESSED_FLAG != 0,
            payload: bytes[pos + 4..pos + 4 + len].to_vec(),
        });
        pos += 4 + len;
    }
    v
}

fn frame(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame(&mut out, v.to_string().as_bytes());
    out
}

/// A compressed frame of `v`.
fn packed_frame(codec: Codec, v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    assert!(Compressor::new().compress_frame(codec, v.to_string().as_bytes(), &mut out));
    out
}

/// Telemetry-like records: compresses several-fold, as real JSON does.
fn telemetry(records: usize) -> Value {
    Value::Array(
        (0..records)
            .map(|i| json!({"sensor": format!("s-{}", i % 13), "temp": 20.5 + (i % 7) as f64, "ok": i % 5 != 0}))
            .collect(),
    )
}

/// Feeds `bytes`, then sends everything and returns the frames.
fn exchange(env: &mut TestEnv<'_>, s: &mut Session, mut bytes: Vec<u8>) -> Vec<Wire> {
    s.handle_data(env, &mut bytes);
    drain(env, s)
}

fn drain(env: &mut TestEnv<'_>, s: &mut Session) -> Vec<Wire> {
    let mut all = Vec::new();
    while let Some(batch) = s.poll_transmit(env) {
        let bytes: Vec<u8> = batch.slices().flatten().copied().collect();
        let n = bytes.len();
        s.handle_sent(env, batch, Ok(n));
        all.extend(bytes);
    }
    split(&all)
}

fn session(env: &mut TestEnv<'_>, id: usize) -> Session {
    Session::new(env, id, format!("c{id}").into(), None, Transport::Plain)
}

fn hello(env: &mut TestEnv<'_>, s: &mut Session, offer: Value) -> Value {
    let r = exchange(
        env,
        s,
        frame(&json!({"type": "hello", "compression": offer, "id": 7})),
    );
    assert_eq!(r.len(), 1);
    assert!(!r[0].packed, "hello_ok is never compressed");
    r[0].json(None)
}

#[test]
fn hello_picks_the_clients_first_codec_that_the_server_has() {
    let sh = shared(ServerConfig::default());
    let mut env = sh.env(0);
    let mut s = session(&mut env, 0);
    let ok = hello(&mut env, &mut s, json!(["lz4", "deflate", "zstd"]));
    assert_eq!(ok["type"], "hello_ok");
    assert_eq!(ok["compression"], "deflate");
    assert_eq!(ok["id"], 7);
    assert_eq!(ok["protocol"], 1);
    assert_eq!(ok["max_frame_bytes"], 1 << 20);
    assert_eq!(ok["compression_threshold"], 1024);
    assert!(ok["server"].as_str().unwrap().starts_with("ringcast/"));
    assert_eq!(
        ok["features"],
        json!(["broadcast", "channels", "compression"])
    );
    assert_eq!(s.codec(), Some(Codec::Deflate));
    let gauge = &sh.counters[0].compression.connections;
    assert_eq!(gauge[Codec::Deflate.index()].load(Relaxed), 1);
    // Nothing we have, or nothing offered: no codec.
    for offer in [json!(["lz4"]), json!([]), Value::Null] {
        let mut t = session(&mut env, 1);
        assert_eq!(
            hello(&mut env, &mut t, offer.clone())["compression"],
            Value::Null
        );
        assert_eq!(t.codec(), None, "{offer}");
    }
    // Closing gives the gauge back.
    s.abort(&mut env);
    assert_eq!(gauge[Codec::Deflate.index()].load(Relaxed), 0);
}

#[test]
fn a_server_with_compression_off_answers_null() {
    let sh = shared(ServerConfig {
        compression: false,
        ..ServerConfig::default()
    });
    let mut env = sh.env(0);
    let mut s = session(&mut env, 0);
    let ok = hello(&mut env, &mut s, json!(["zstd"]));
    assert_eq!(ok["compression"], Value::Null);
    assert_eq!(ok["features"], json!(["broadcast", "channels"]));
}

#[test]
fn replies_over_the_threshold_are_compressed_and_requests_may_be() {
    for codec in Codec::ALL {
        let sh = shared(ServerConfig::default());
        let mut env = sh.env(0);
        let mut s = session(&mut env, 0);
        hello(&mut env, &mut s, json!([codec.as_str()]));
        // A large echo, sent plain: the reply comes back compressed.
        let big = telemetry(400);
        let r = exchange(
            &mut env,
            &mut s,
            frame(&json!({"type": "echo", "content": big, "id": 1})),
        );
        assert_eq!(r.len(), 1);
        assert!(r[0].packed, "{codec:?}: a 15 KiB reply is compressed");
        let v = r[0].json(Some(codec));
        assert_eq!(v["type"], "echo_response");
        assert_eq!(v["content"], big);
        assert!(
            r[0].payload.len() * 3 < v.to_string().len(),
            "it compresses"
        );
        // The same, sent compressed.
        let req = json!({"type": "echo", "content": big, "id": 2});
        let r = exchange(&mut env, &mut s, packed_frame(codec, &req));
        assert_eq!(r[0].json(Some(codec))["content"], big);
        assert_eq!(r[0].json(Some(codec))["id"], 2);
        // A ping stays plain: under the threshold.
        let r = exchange(&mut env, &mut s, frame(&json!({"type": "ping", "id": 3})));
        assert!(!r[0].packed);
        assert_eq!(r[0].json(None)["type"], "pong");
        let c = &sh.counters[0].compression;
        assert_eq!(c.frames_in.load(Relaxed), 1);
        assert_eq!(c.frames_out.load(Relaxed), 2);
        assert!(c.bytes_in_plain.load(Relaxed) > 3 * c.bytes_in_wire.load(Relaxed));
        assert!(c.bytes_out_plain.load(Relaxed) > 3 * c.bytes_out_wire.load(Relaxed));
        assert_eq!(s.phase(), Phase::Open);
    }
}

#[test]
fn the_threshold_is_exclusive() {
    let sh = shared(ServerConfig {
        compression_threshold_bytes: 2000,
        ..ServerConfig::default()
    });
    let mut env = sh.env(0);
    let mut s = session(&mut env, 0);
    hello(&mut env, &mut s, json!(["zstd"]));
    // An echo_response of exactly 2000 bytes of payload stays plain; one
    // byte more is compressed.
    for (extra, packed) in [(0, false), (1, true)] {
        let probe = json!({"type": "echo", "content": "", "id": 1});
        let r = exchange(&mut env, &mut s, frame(&probe));
        let base = r[0].payload.len();
        let content = "a".repeat(2000 - base + extra);
        let r = exchange(
            &mut env,
            &mut s,
            frame(&json!({"type": "echo", "content": content, "id": 1})),
        );
        let len = if r[0].packed {
            r[0].json(Some(Codec::Zstd)).to_string().len()
        } else {
            r[0].payload.len()
        };
        // The timestamp has a fixed width, so sizes repeat exactly.
        assert_eq!(len, 2000 + extra);
        assert_eq!(r[0].packed, packed, "payload of {len}");
    }
    // (Content that does not shrink goes plain: JSON text always shrinks
    // a little, so codec::tests covers that with random bytes.)
}

#[test]
fn without_a_codec_the_top_bit_is_a_length_over_the_limit() {
    let sh = shared(ServerConfig::default());
    let mut env = sh.env(0);
    // No hello, and a hello that got no codec.
    for said_hello in [false, true] {
        let mut s = session(&mut env, 0);
        if said_hello {
            hello(&mut env, &mut s, json!(["brotli"]));
        }
        let mut bytes = packed_frame(
            Codec::Zstd,
            &json!({"type": "echo", "content": "x".repeat(3000)}),
        );
        let r = exchange(&mut env, &mut s, std::mem::take(&mut bytes));
        assert_eq!(r.len(), 1);
        assert!(!r[0].packed);
        assert_eq!(r[0].json(None)["code"], "frame_too_large");
        assert!(matches!(
            s.phase(),
            Phase::Draining { .. } | Phase::Lingering { .. }
        ));
    }
}

#[test]
fn a_bomb_stops_at_max_frame_bytes_and_frees_its_buffer() {
    for codec in Codec::ALL {
        let sh = shared(ServerConfig::default());
        let mut env = sh.env(0);
        let mut s = session(&mut env, 0);
        hello(&mut env, &mut s, json!([codec.as_str()]));
        // 16 MiB of JSON that compresses to a few KiB.
        let bomb = json!({"type": "echo", "content": " ".repeat(16 << 20)});
        let bytes = packed_frame(codec, &bomb);
        assert!(bytes.len() < 1 << 20, "{} bytes", bytes.len());
        let r = exchange(&mut env, &mut s, bytes);
        assert_eq!(r.len(), 1);
        let e = r[0].json(None);
        assert_eq!(e["type"], "error");
        assert_eq!(e["code"], "frame_too_large");
        assert!(matches!(
            s.phase(),
            Phase::Draining { .. } | Phase::Lingering { .. }
        ));
        assert_eq!(
            env.partial_bytes, 0,
            "the decompression buffer is given back"
        );
        assert!(env.inflate.capacity() <= 256 << 10);
    }
}

#[test]
fn bad_streams_and_empty_compressed_frames_close_after_an_error() {
    let sh = shared(ServerConfig::default());
    let mut env = sh.env(0);
    let good = packed_frame(
        Codec::Deflate,
        &json!({"type": "echo", "content": "y".repeat(4000)}),
    );
    let mut truncated = good[..good.len() - 10].to_vec();
    let n = (truncated.len() - 4) as u32 | COMPRESSED_FLAG;
    truncated[..4].copy_from_slice(&n.to_be_bytes());
    let mut garbage = (20u32 | COMPRESSED_FLAG).to_be_bytes().to_vec();
    garbage.extend_from_slice(b"this is not deflate!");
    let empty = COMPRESSED_FLAG.to_be_bytes().to_vec();
    for (bytes, code) in [
        (garbage, "compression_error"),
        (truncated, "compression_error"),
        (empty, "empty_frame"),
    ] {
        let mut s = session(&mut env, 0);
        hello(&mut env, &mut s, json!(["deflate"]));
        let r = exchange(&mut env, &mut s, bytes);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].json(None)["code"], code);
        assert!(matches!(
            s.phase(),
            Phase::Draining { .. } | Phase::Lingering { .. }
        ));
    }
    let t = sh.totals(&mut Vec::new());
    assert_eq!(t.errors[ErrorCode::CompressionError.index()], 2);
}

#[test]
fn hello_may_precede_auth_and_only_once() {
    let sh = shared(ServerConfig {
        auth_token: Some("s3cret".into()),
        ..ServerConfig::default()
    });
    let mut env = sh.env(0);
    let mut s = session(&mut env, 0);
    let ok = hello(&mut env, &mut s, json!(["zstd"]));
    assert_eq!(
        ok["features"],
        json!(["broadcast", "channels", "compression", "auth"])
    );
    assert!(!s.is_established(), "hello does not authenticate");
    let r = exchange(
        &mut env,
        &mut s,
        frame(&json!({"type": "auth", "token": "s3cret"})),
    );
    assert_eq!(r[0].json(None)["type"], "auth_ok");
    let r = exchange(
        &mut env,
        &mut s,
        frame(&json!({"type": "hello", "compression": ["deflate"], "id": 9})),
    );
    let e = r[0].json(None);
    assert_eq!(e["code"], "hello_repeated");
    assert_eq!(e["id"], 9);
    assert_eq!(s.codec(), Some(Codec::Zstd), "the codec is unchanged");
    assert_eq!(s.phase(), Phase::Open);
    // A bad offer is a field error, connection kept (once authenticated:
    // before, any bad request closes, as for every type).
    let sh = shared(ServerConfig::default());
    let mut env = sh.env(0);
    let mut t = session(&mut env, 1);
    let r = exchange(
        &mut env,
        &mut t,
        frame(&json!({"type": "hello", "compression": "zstd"})),
    );
    assert_eq!(r[0].json(None)["code"], "invalid_field");
    let r = exchange(
        &mut env,
        &mut t,
        frame(&json!({"type": "hello", "compression": ["zstd", 3]})),
    );
    assert_eq!(r[0].json(None)["code"], "invalid_field");
    assert_eq!(t.phase(), Phase::Open);
}

#[test]
fn a_broadcast_to_mixed_recipients_is_compressed_once_per_codec() {
    let sh = shared(ServerConfig::default());
    let mut env = sh.env(0);
    let mut publisher = session(&mut env, 0);
    let codecs = [
        None,
        None,
        Some(Codec::Zstd),
        Some(Codec::Zstd),
        Some(Codec::Zstd),
        Some(Codec::Deflate),
        Some(Codec::Deflate),
    ];
    let mut recipients: Vec<Session> = (1..=codecs.len()).map(|i| session(&mut env, i)).collect();
    for (s, c) in recipients.iter_mut().zip(codecs) {
        if let Some(c) = c {
            hello(&mut env, s, json!([c.as_str()]));
        }
    }
    let content = telemetry(300);
    exchange(
        &mut env,
        &mut publisher,
        frame(&json!({"type": "broadcast", "content": content})),
    );
    let (d, _) = env.host.outgoing.pop().expect("the broadcast");
    let c = &sh.counters[0].compression;
    assert_eq!(c.compressions.load(Relaxed), 2, "one per codec in use");
    for (s, codec) in recipients.iter_mut().zip(codecs) {
        assert!(s.push_broadcast(&mut env, &d.frame, &d.packed, 1));
        let batch = s.poll_transmit(&mut env).expect("the broadcast");
        let seg = batch
            .segments
            .front()
            .expect("one segment")
            .as_slice()
            .as_ptr();
        // Every recipient shares its codec's one buffer (or the plain one).
        assert_eq!(seg, d.frame_for(codec).as_ptr());
        let bytes: Vec<u8> = batch.slices().flatten().copied().collect();
        s.handle_sent(&mut env, batch, Ok(bytes.len()));
        let w = split(&bytes);
        assert_eq!(w[0].packed, codec.is_some());
        let v = w[0].json(codec);
        assert_eq!(v["type"], "broadcast_message");
        assert_eq!(v["content"], content);
    }
    assert_eq!(c.frames_out.load(Relaxed), 5);
    // Nobody compressed: a broadcast is not compressed at all.
    let sh = shared(ServerConfig::default());
    let mut env = sh.env(0);
    let mut p = session(&mut env, 0);
    exchange(
        &mut env,
        &mut p,
        frame(&json!({"type": "broadcast", "content": content})),
    );
    let (d, _) = env.host.outgoing.pop().expect("the broadcast");
    assert!(d.packed.iter().all(Option::is_none));
    assert_eq!(sh.counters[0].compression.compressions.load(Relaxed), 0);
}
