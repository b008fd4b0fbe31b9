//! Negotiated per-frame compression over real sockets on 127.0.0.1: the
//! client library for each codec (and against servers without it), the
//! frames on the wire after `hello` (the threshold, the top bit never sent
//! to a connection that did not negotiate, one compression per codec for a
//! broadcast or a publish to mixed recipients), zip bombs and garbage
//! streams, and `ringcast client` / `ringcast bench` with `--compress`.
//!
//! Frames from the server are checked with the `flate2` and `zstd` crates
//! directly, not with the library's own codec module.

mod support;

use ringcast::client::{Client, ClientConfig, ClientError, Codec, Event, ReconnectPolicy};
use serde_json::{json, Value};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use support::fake::{client_config, FakeOptions, FakeServer, LIMIT};
use support::server::{builder, spawn, Backend};
use support::wait::next_matching;
use support::wire::{frame, frame_bytes, is_reset, is_timeout};

const FLAG: u32 = 1 << 31;

/// `records` telemetry-like objects: compresses several-fold, as real
/// JSON does.
fn telemetry(records: usize) -> Value {
    Value::Array(
        (0..records)
            .map(|i| {
                json!({
                    "sensor": format!("sensor-{:03}", i % 37),
                    "ts": 1_718_000_000_000u64 + i as u64 * 250,
                    "temp_c": 15.0 + (i * 7 % 150) as f64 / 10.0,
                    "humidity": 30 + i % 41,
                    "status": if i % 19 == 0 { "warn" } else { "ok" },
                })
            })
            .collect(),
    )
}

/// A server for these tests: two shards, no idle timeout.
fn server() -> ringcast::server::ServerHandle {
    spawn(builder(2).idle_timeout_secs(0))
}

/// Decompresses a payload from the server with the reference crates.
fn inflate(codec: Codec, payload: &[u8]) -> Vec<u8> {
    match codec {
        Codec::Deflate => {
            let mut out = Vec::new();
            flate2::read::ZlibDecoder::new(payload)
                .read_to_end(&mut out)
                .expect("a zlib stream");
            out
        }
        Codec::Zstd => zstd::stream::decode_all(payload).expect("a zstd frame"),
    }
}

/// Compresses a request payload with the reference crates; returns the
/// whole flagged frame.
fn packed_frame(codec: Codec, payload: &[u8]) -> Vec<u8> {
    let body = match codec {
        Codec::Deflate => {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(payload).unwrap();
            e.finish().unwrap()
        }
        Codec::Zstd => zstd::stream::encode_all(payload, 1).unwrap(),
    };
    assert!(body.len() < payload.len(), "compressible test payload");
    let mut f = (body.len() as u32 | FLAG).to_be_bytes().to_vec();
    f.extend_from_slice(&body);
    f
}

/// One frame as it came off the wire.
#[derive(Debug)]
struct Wire {
    packed: bool,
    /// The payload as sent (compressed when `packed`).
    payload: Vec<u8>,
}

/// A raw connection that reads flagged headers itself.
struct Raw {
    stream: TcpStream,
    codec: Option<Codec>,
}

impl Raw {
    fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_nodelay(true).unwrap();
        stream
            .set_write_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        Raw {
            stream,
            codec: None,
        }
    }

    /// Connects and says hello offering `offer`; returns the hello_ok.
    fn hello(addr: SocketAddr, offer: &[&str]) -> (Raw, Value) {
        let mut r = Raw::connect(addr);
        r.send(&json!({"type": "hello", "compression": offer, "client": "raw-test", "id": 1}));
        let w = r.recv_wire();
        assert!(!w.packed, "hello_ok is never compressed");
        let ok: Value = serde_json::from_slice(&w.payload).unwrap();
        assert_eq!(ok["type"], "hello_ok", "{ok}");
        r.codec = ok["compression"].as_str().and_then(Codec::from_name);
        (r, ok)
    }

    fn send(&mut self, v: &Value) {
        self.stream.write_all(&frame(v)).unwrap();
    }

    fn send_raw(&mut self, b: &[u8]) {
        self.stream.write_all(b).unwrap();
    }

    /// The next frame, within 5 s; None on a clean close at a frame
    /// boundary.
    fn try_recv_wire(&mut self) -> io::Result<Option<Wire>> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut h = [0u8; 4];
        if !self.read_full(&mut h, deadline)? {
            return Ok(None);
        }
        let raw = u32::from_be_bytes(h);
        let len = (raw & !FLAG) as usize;
        assert!(len <= 16 << 20, "header {raw:#x}");
        let mut payload = vec![0u8; len];
        if !self.read_full(&mut payload, deadline)? {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(Some(Wire {
            packed: raw & FLAG != 0,
            payload,
        }))
    }

    fn read_full(&mut self, buf: &mut [u8], deadline: Instant) -> io::Result<bool> {
        let mut got = 0;
        while got < buf.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::ErrorKind::TimedOut.into());
            }
            self.stream.set_read_timeout(Some(left))?;
            match self.stream.read(&mut buf[got..]) {
                Ok(0) if got == 0 => return Ok(false),
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    fn recv_wire(&mut self) -> Wire {
        match self.try_recv_wire() {
            Ok(Some(w)) => w,
            Ok(None) => panic!("unexpected EOF"),
            Err(e) => panic!("reading a frame: {e}"),
        }
    }

    /// The next frame's JSON (decompressed with the negotiated codec), and
    /// whether it came compressed.
    fn recv(&mut self) -> (Value, bool) {
        let w = self.recv_wire();
        let plain = self.plain(&w);
        (serde_json::from_slice(&plain).unwrap(), w.packed)
    }

    /// A frame's payload, decompressed if it was compressed.
    fn plain(&self, w: &Wire) -> Vec<u8> {
        match (w.packed, self.codec) {
            (false, _) => w.payload.clone(),
            (true, Some(c)) => inflate(c, &w.payload),
            (true, None) => panic!("the top bit on a connection that negotiated nothing"),
        }
    }

    /// Reads until the server closes; returns the frames before that.
    fn until_closed(&mut self) -> Vec<Value> {
        let mut v = Vec::new();
        loop {
            match self.try_recv_wire() {
                Ok(Some(w)) => v.push(serde_json::from_slice(&self.plain(&w)).unwrap()),
                Ok(None) => return v,
                Err(e) if is_reset(&e) => return v,
                Err(e) if is_timeout(&e) => panic!("still open after {} frames: {v:?}", v.len()),
                Err(e) => panic!("{e}"),
            }
        }
    }

    /// Asserts nothing arrives within `d`.
    fn expect_silence(&mut self, d: Duration) {
        self.stream.set_read_timeout(Some(d)).unwrap();
        let mut b = [0u8; 1];
        match self.stream.read(&mut b) {
            Err(e) if is_timeout(&e) => {}
            other => panic!("expected silence, got {other:?}"),
        }
    }
}

/// The server's `compression` stats, over a fresh plain connection.
fn compression_stats(addr: SocketAddr) -> Value {
    let mut c = support::wire::Client::connect(addr);
    let v = c.stats();
    assert!(v["compression"].is_object(), "{v}");
    v["compression"].clone()
}

fn n(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

/// A library client offering `codecs`.
fn client(addr: SocketAddr, codecs: &[Codec]) -> Client {
    Client::connect_with(
        addr,
        ClientConfig {
            compression: codecs.to_vec(),
            ..client_config()
        },
    )
    .unwrap()
}

#[test]
fn each_codec_round_trips_a_large_telemetry_echo_through_the_client_library() {
    let s = server();
    let addr = s.local_addr();
    let big = telemetry(600);
    let big_len = big.to_string().len();
    assert!(big_len > 40_000, "{big_len}");
    for codec in [Codec::Zstd, Codec::Deflate] {
        let before = compression_stats(addr);
        let c = client(addr, &[codec]);
        assert_eq!(c.compression(), Some(codec));
        let h = c.server_hello().expect("hello_ok");
        assert_eq!(h.compression, Some(codec));
        assert_eq!(h.protocol, 1);
        assert_eq!(h.max_frame_bytes, 1 << 20);
        assert_eq!(h.compression_threshold, 1024);
        assert!(h.server.starts_with("ringcast/"), "{h:?}");
        assert!(h.has_feature("compression") && h.has_feature("broadcast"));

        // Large: compressed both ways. Small: plain; both answered.
        let m = c
            .send_custom("echo", json!({"content": big.clone()}))
            .unwrap();
        assert_eq!(m.kind(), "echo_response");
        assert_eq!(m.get("content"), Some(&big));
        assert_eq!(c.echo("small").unwrap(), "small");
        let text = "the quick brown fox jumps over the lazy dog; ".repeat(200);
        assert_eq!(c.echo(&text).unwrap(), text);

        // A broadcast to another client of the same codec.
        let other = client(addr, &[codec]);
        let events = other.messages();
        let reached = c.broadcast(&text).unwrap();
        assert!(reached >= 1);
        let b = next_matching(&events, LIMIT, "the broadcast", |e| match e {
            Event::Message(m) if m.kind() == "broadcast_message" => Some(m),
            _ => None,
        });
        assert_eq!(b.get_str("content"), Some(text.as_str()));

        // The server saw compressed frames both ways, and counts the codec.
        let stats = c.get_stats().unwrap();
        let after = stats.compression.expect("get_stats compression");
        assert_eq!(after.connections.get(codec.as_str()), Some(&2));
        assert!(after.frames_in >= n(&before, "frames_in") + 3, "{after:?}");
        assert!(
            after.frames_out >= n(&before, "frames_out") + 3,
            "{after:?}"
        );
        assert!(after.bytes_in_plain > after.bytes_in_wire * 3, "{after:?}");
        drop(other);
        drop(c);
    }
    // The client's order of preference decides.
    let c = client(addr, &[Codec::Deflate, Codec::Zstd]);
    assert_eq!(c.compression(), Some(Codec::Deflate));
    let c = client(addr, &[Codec::Zstd, Codec::Deflate]);
    assert_eq!(c.compression(), Some(Codec::Zstd));
    // Without compression configured, no hello at all.
    let c = Client::connect_with(addr, client_config()).unwrap();
    assert_eq!(c.compression(), None);
    assert_eq!(c.server_hello(), None);
    let stats = c.get_stats().unwrap();
    assert_eq!(stats.messages_by_type.get("hello"), Some(&6));
    s.shutdown();
}

#[test]
fn servers_without_the_codec_or_from_before_hello_are_used_uncompressed() {
    let big = telemetry(300);
    // A server with compression off answers hello with compression: null.
    let s = spawn(builder(1).idle_timeout_secs(0).compression(false));
    let c = client(s.local_addr(), &[Codec::Zstd, Codec::Deflate]);
    assert_eq!(c.compression(), None);
    let h = c.server_hello().expect("hello_ok");
    assert_eq!(h.compression, None);
    let m = c
        .send_custom("echo", json!({"content": big.clone()}))
        .unwrap();
    assert_eq!(m.get("content"), Some(&big));
    let stats = c.get_stats().unwrap().compression.unwrap();
    assert_eq!((stats.frames_in, stats.frames_out), (0, 0));
    drop(c);
    s.shutdown();

    // A server from before hello answers unknown_type: no hello_ok.
    let fake = FakeServer::start(FakeOptions::default());
    let c = client(fake.addr(), &[Codec::Zstd]);
    assert_eq!(c.compression(), None);
    assert_eq!(c.server_hello(), None);
    let m = c
        .send_custom("echo", json!({"content": big.clone()}))
        .unwrap();
    assert_eq!(m.get("content"), Some(&big));
    drop(c);
    fake.stop();

    // One that also requires a token closes the connection at hello
    // (unauthorized): the client connects again without hello.
    let fake = FakeServer::start(FakeOptions {
        token: Some("s3cret".into()),
        ..FakeOptions::default()
    });
    let c = Client::connect_with(
        fake.addr(),
        ClientConfig {
            compression: vec![Codec::Zstd],
            auth_token: Some("s3cret".into()),
            ..client_config()
        },
    )
    .unwrap();
    assert_eq!(c.compression(), None);
    assert_eq!(c.echo("after auth").unwrap(), "after auth");
    drop(c);
    // A wrong token is still refused.
    let r = Client::connect_with(
        fake.addr(),
        ClientConfig {
            compression: vec![Codec::Zstd],
            auth_token: Some("wrong".into()),
            ..client_config()
        },
    );
    assert!(
        matches!(&r, Err(ClientError::Server { code, .. }) if code.as_str() == "unauthorized"),
        "{r:?}"
    );
    fake.stop();

    // And a current server that requires a token takes hello before auth.
    let b = Backend::with_token("tok");
    let c = Client::connect_with(
        b.addr(),
        ClientConfig {
            compression: vec![Codec::Deflate],
            auth_token: Some("tok".into()),
            ..client_config()
        },
    )
    .unwrap();
    assert_eq!(c.compression(), Some(Codec::Deflate));
    assert!(c.server_hello().unwrap().has_feature("auth"));
    let m = c
        .send_custom("echo", json!({"content": big.clone()}))
        .unwrap();
    assert_eq!(m.get("content"), Some(&big));
    drop(c);
    b.stop();
}

#[test]
fn every_reconnection_says_hello_again() {
    let first = Backend::start();
    let addr = first.addr();
    let c = Client::connect_with(
        addr,
        ClientConfig {
            compression: vec![Codec::Zstd],
            reconnect: ReconnectPolicy {
                enabled: true,
                max_attempts: 200,
                initial_backoff: Duration::from_millis(20),
                max_backoff: Duration::from_millis(200),
                multiplier: 2.0,
                jitter: 0.5,
            },
            wait_for_reconnect: true,
            ..client_config()
        },
    )
    .unwrap();
    let events = c.messages();
    assert_eq!(c.compression(), Some(Codec::Zstd));
    let reconnected = |what: &str| {
        next_matching(&events, LIMIT, what, |e| {
            matches!(e, Event::Reconnected { .. }).then_some(())
        })
    };
    let big = telemetry(300);
    let echo = |c: &Client| {
        let m = c
            .send_custom("echo", json!({"content": big.clone()}))
            .unwrap();
        assert_eq!(m.get("content"), Some(&big));
    };
    // Replaced by a server from before hello: uncompressed there.
    first.stop();
    let old = FakeServer::start_on(addr, FakeOptions::default());
    reconnected("reconnection to the old server");
    assert_eq!(c.compression(), None);
    assert_eq!(c.server_hello(), None);
    echo(&c);
    // And back to a current one: compressed again.
    old.stop();
    let again = Backend::start_on(addr);
    reconnected("reconnection to the new server");
    assert_eq!(c.compression(), Some(Codec::Zstd));
    echo(&c);
    let stats = c.get_stats().unwrap().compression.unwrap();
    assert!(stats.frames_in >= 1 && stats.frames_out >= 1, "{stats:?}");
    drop(c);
    again.stop();
}

#[test]
fn the_threshold_on_the_wire() {
    let s = server();
    let addr = s.local_addr();
    for codec in [Codec::Zstd, Codec::Deflate] {
        let (mut r, ok) = Raw::hello(addr, &["lz4", codec.as_str()]);
        assert_eq!(ok["compression"], codec.as_str());
        assert_eq!(ok["id"], 1);
        let threshold = ok["compression_threshold"].as_u64().unwrap() as usize;
        assert_eq!(threshold, 1024);
        // Measure an echo_response's overhead (no id: fixed size).
        r.send(&json!({"type": "echo", "content": "a".repeat(100)}));
        let w = r.recv_wire();
        assert!(!w.packed);
        let overhead = w.payload.len() - 100;
        // A reply of exactly the threshold goes plain ...
        r.send(&json!({"type": "echo", "content": "a".repeat(threshold - overhead)}));
        let w = r.recv_wire();
        assert_eq!((w.packed, w.payload.len()), (false, threshold));
        // ... one byte more, compressed (it saves bytes).
        r.send(&json!({"type": "echo", "content": "a".repeat(threshold + 1 - overhead)}));
        let w = r.recv_wire();
        assert!(w.packed, "{} bytes plain", w.payload.len());
        assert!(w.payload.len() < threshold);
        let plain = r.plain(&w);
        assert_eq!(plain.len(), threshold + 1);
        let v: Value = serde_json::from_slice(&plain).unwrap();
        assert_eq!(v["type"], "echo_response");
        // Small replies stay plain: a pong.
        r.send(&json!({"type": "ping", "id": 2}));
        let (v, packed) = r.recv();
        assert_eq!((v["type"].as_str(), packed), (Some("pong"), false));
        // A compressed request is answered, and so is a plain large one
        // (plain frames stay valid in both directions).
        let big = telemetry(200);
        let req = json!({"type": "echo", "content": big, "id": 3}).to_string();
        r.send_raw(&packed_frame(codec, req.as_bytes()));
        let (v, packed) = r.recv();
        assert!(packed);
        assert_eq!((&v["content"], &v["id"]), (&big, &json!(3)));
        r.send_raw(&frame_bytes(req.as_bytes()));
        let (v, packed) = r.recv();
        assert!(packed);
        assert_eq!(v["content"], big);
        // A second hello: hello_repeated, codec unchanged.
        r.send(&json!({"type": "hello", "compression": ["deflate", "zstd"], "id": 4}));
        let (v, _) = r.recv();
        assert_eq!(
            (v["type"].as_str(), v["code"].as_str()),
            (Some("error"), Some("hello_repeated"))
        );
        r.send(&json!({"type": "echo", "content": big, "id": 5}));
        let (v, packed) = r.recv();
        assert!(packed);
        assert_eq!(v["id"], 5);
    }
    // Offering nothing the server has: compression null, never the flag.
    let (mut r, ok) = Raw::hello(addr, &["lz4", "brotli"]);
    assert_eq!(ok["compression"], Value::Null);
    r.send(&json!({"type": "echo", "content": telemetry(200)}));
    assert!(!r.recv_wire().packed);
    s.shutdown();
}

/// Reads the next `want` frame on each of the given raw connections and
/// returns its plain payload bytes (asserting how it came).
fn delivered(r: &mut Raw, want: &str) -> Vec<u8> {
    let w = r.recv_wire();
    assert_eq!(
        w.packed,
        r.codec.is_some(),
        "compressed exactly on the connections that negotiated a codec"
    );
    let plain = r.plain(&w);
    let v: Value = serde_json::from_slice(&plain).unwrap();
    assert_eq!(v["type"], want, "{v}");
    plain
}

#[test]
fn one_broadcast_and_one_publish_to_mixed_recipients_compress_once_per_codec() {
    let s = server();
    let addr = s.local_addr();
    // Recipients: two that never say hello, one deflate, two zstd (a raw
    // socket and the library), all subscribed to "mix"; the sender says
    // no hello either.
    let mut plain: Vec<support::wire::Client> = (0..2)
        .map(|_| support::wire::Client::connect(addr))
        .collect();
    let (mut deflate, _) = Raw::hello(addr, &["deflate"]);
    let (mut zstd, _) = Raw::hello(addr, &["zstd"]);
    assert_eq!(
        (deflate.codec, zstd.codec),
        (Some(Codec::Deflate), Some(Codec::Zstd))
    );
    let lib = client(addr, &[Codec::Zstd]);
    let lib_events = lib.messages();
    for p in plain.iter_mut() {
        let v = p.request(&json!({"type": "subscribe", "channel": "mix"}));
        assert_eq!(v["type"], "subscribed");
    }
    for r in [&mut deflate, &mut zstd] {
        r.send(&json!({"type": "subscribe", "channel": "mix"}));
        assert_eq!(r.recv().0["type"], "subscribed");
    }
    lib.subscribe("mix").unwrap();
    let mut sender = support::wire::Client::connect(addr);
    sender.wait_connected(6, LIMIT);
    let before = compression_stats(addr);

    let content = telemetry(400);
    let v = sender.request(&json!({"type": "broadcast", "content": content}));
    // (A stats connection that just closed may still be counted.)
    assert!(n(&v, "recipients") >= 5, "{v}");
    let reference = plain[0].recv_raw();
    assert_eq!(
        plain[1].recv_raw(),
        reference,
        "plain recipients share one frame"
    );
    let bv: Value = serde_json::from_slice(&reference).unwrap();
    assert_eq!(
        (&bv["type"], &bv["content"]),
        (&json!("broadcast_message"), &content)
    );
    assert_eq!(delivered(&mut deflate, "broadcast_message"), reference);
    assert_eq!(delivered(&mut zstd, "broadcast_message"), reference);
    let m = support::fake::next_broadcast(&lib_events);
    assert_eq!(m.get("content"), Some(&content));
    let mid = compression_stats(addr);
    assert_eq!(
        n(&mid, "compressions"),
        n(&before, "compressions") + 2,
        "one compression per codec in use, not per recipient: {before} -> {mid}"
    );
    assert_eq!(n(&mid, "frames_out"), n(&before, "frames_out") + 3);

    let v = sender.request(&json!({"type": "publish", "channel": "mix", "content": content}));
    assert_eq!(v["recipients"], 5, "{v}");
    let reference = plain[0].recv_raw();
    assert_eq!(plain[1].recv_raw(), reference);
    let cv: Value = serde_json::from_slice(&reference).unwrap();
    assert_eq!(
        (&cv["type"], &cv["channel"]),
        (&json!("channel_message"), &json!("mix"))
    );
    assert_eq!(delivered(&mut deflate, "channel_message"), reference);
    assert_eq!(delivered(&mut zstd, "channel_message"), reference);
    let m = next_matching(&lib_events, LIMIT, "the channel message", |e| match e {
        Event::Message(m) if m.kind() == "channel_message" => Some(m),
        _ => None,
    });
    assert_eq!(m.get("content"), Some(&content));
    let after = compression_stats(addr);
    assert_eq!(n(&after, "compressions"), n(&mid, "compressions") + 2);
    assert_eq!(n(&after, "frames_out"), n(&mid, "frames_out") + 3);

    // The connections without hello never saw the top bit: each frame they
    // read parsed as plain JSON above; nothing else is waiting for them.
    for p in plain.iter_mut() {
        p.expect_silence(Duration::from_millis(100));
    }
    deflate.expect_silence(Duration::from_millis(50));
    zstd.expect_silence(Duration::from_millis(50));
    drop(lib);
    s.shutdown();
}

#[test]
fn a_zip_bomb_is_frame_too_large_then_close() {
    let s = server();
    let addr = s.local_addr();
    // 8 MiB of spaces inflate far past the 1 MiB max_frame_bytes.
    let bomb = vec![b' '; 8 << 20];
    for codec in [Codec::Zstd, Codec::Deflate] {
        let f = packed_frame(codec, &bomb);
        assert!(f.len() < 256 << 10, "{} bytes compressed", f.len());
        let (mut r, _) = Raw::hello(addr, &[codec.as_str()]);
        r.send_raw(&f);
        let got = r.until_closed();
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(
            (got[0]["type"].as_str(), got[0]["code"].as_str()),
            (Some("error"), Some("frame_too_large")),
            "{got:?}"
        );
    }
    // The server is fine, and did not keep the memory.
    let mut c = support::wire::Client::connect(addr);
    let st = c.stats();
    assert_eq!(st["errors_by_code"]["frame_too_large"], 2, "{st}");
    assert!(
        st["partial_frame_bytes"].as_u64().unwrap() < 4 << 20,
        "{st}"
    );
    s.shutdown();
}

#[test]
fn garbage_empty_and_unnegotiated_compressed_frames_close_the_connection() {
    let s = server();
    let addr = s.local_addr();
    let expect_closing = |r: &mut Raw, code: &str| {
        let got = r.until_closed();
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0]["code"], code, "{got:?}");
    };
    for codec in [Codec::Zstd, Codec::Deflate] {
        // Not a stream of the codec.
        let (mut r, _) = Raw::hello(addr, &[codec.as_str()]);
        let junk = b"this is certainly not a compressed stream";
        let mut f = (junk.len() as u32 | FLAG).to_be_bytes().to_vec();
        f.extend_from_slice(junk);
        r.send_raw(&f);
        expect_closing(&mut r, "compression_error");
        // A valid stream cut short.
        let (mut r, _) = Raw::hello(addr, &[codec.as_str()]);
        let whole = packed_frame(codec, telemetry(100).to_string().as_bytes());
        let body = &whole[4..whole.len() / 2];
        let mut f = (body.len() as u32 | FLAG).to_be_bytes().to_vec();
        f.extend_from_slice(body);
        r.send_raw(&f);
        expect_closing(&mut r, "compression_error");
        // An empty compressed frame.
        let (mut r, _) = Raw::hello(addr, &[codec.as_str()]);
        r.send_raw(&FLAG.to_be_bytes());
        expect_closing(&mut r, "empty_frame");
    }
    // Without hello, the top bit is a length over max_frame_bytes.
    let mut r = Raw::connect(addr);
    r.send_raw(&packed_frame(
        Codec::Zstd,
        telemetry(100).to_string().as_bytes(),
    ));
    expect_closing(&mut r, "frame_too_large");
    // Nor after a hello that chose nothing.
    let (mut r, _) = Raw::hello(addr, &["lz4"]);
    r.send_raw(&packed_frame(
        Codec::Deflate,
        telemetry(100).to_string().as_bytes(),
    ));
    expect_closing(&mut r, "frame_too_large");
    s.shutdown();
}

/// Runs the `ringcast` binary with `args`; killed after 60 s.
fn ringcast(args: &[&str], stdin: &str) -> (i32, String, String) {
    let r = support::server::run_ringcast(args, stdin, Duration::from_secs(60));
    (r.code.unwrap_or(-1), r.stdout, r.stderr)
}

#[test]
fn ringcast_client_compress_zstd_end_to_end() {
    let s = server();
    let addr = s.local_addr().to_string();
    let (code, out, err) = ringcast(
        &["client", "demo", "--addr", &addr, "--compress", "zstd"],
        "",
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("compression   zstd (frames over 1024 B"),
        "{out}"
    );
    assert!(out.contains("demo complete"), "{out}");
    // Its get_stats shows the server's compression figures.
    assert!(
        out.contains("compression          ") && out.contains("zstd=1"),
        "{out}"
    );

    // Interactive: a long echo goes compressed both ways.
    let before = compression_stats(s.local_addr());
    let text = "telemetry sensor-042 temp 21.5 humidity 44 status ok; ".repeat(100);
    let (code, out, err) = ringcast(
        &[
            "client",
            "interactive",
            "--addr",
            &addr,
            "--compress",
            "deflate",
        ],
        &format!("/echo {text}\n/exit\n"),
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("compression   deflate"), "{out}");
    assert!(out.contains(text.trim_end()), "{out}");
    let after = compression_stats(s.local_addr());
    assert!(n(&after, "frames_in") > n(&before, "frames_in"), "{after}");
    assert!(
        n(&after, "frames_out") > n(&before, "frames_out"),
        "{after}"
    );

    // Performance mode reports the bytes on the wire.
    let (code, out, err) = ringcast(
        &[
            "client",
            "performance",
            "--addr",
            &addr,
            "--compress",
            "zstd",
            "--json",
            "--count",
            "400",
            "--size",
            "4000",
        ],
        "",
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (v["compression"].as_str(), v["errors"].as_u64()),
        (Some("zstd"), Some(0))
    );
    assert!(
        n(&v, "bytes_sent") * 4 < n(&v, "plain_bytes_sent")
            && n(&v, "bytes_received") * 4 < n(&v, "plain_bytes_received"),
        "{v}"
    );
    // Without --compress: no compression line, nothing compressed.
    let (code, out, _) = ringcast(&["client", "demo", "--addr", &addr], "");
    assert_eq!(code, 0);
    assert!(!out.contains("(frames over"), "{out}");
    s.shutdown();
}

#[test]
fn ringcast_bench_compress_zstd_end_to_end() {
    let s = server();
    let addr = s.local_addr().to_string();
    let dir = std::env::temp_dir().join(format!("ringcast-bench-compress-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json_path = dir.join("report.json");
    let run = |extra: &[&str]| -> Value {
        let mut args = vec![
            "bench",
            "--addr",
            &addr,
            "--workload",
            "echo",
            "--content",
            "telemetry",
            "--size",
            "16384",
            "-c",
            "4",
            "-P",
            "2",
            "--threads",
            "1",
            "-d",
            "0.6",
            "--warmup",
            "0.2",
            "-q",
            "--json",
            json_path.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let (code, out, err) = ringcast(&args, "");
        assert_eq!(code, 0, "{out}\n{err}");
        serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap()
    };
    let before = compression_stats(s.local_addr());
    let packed = run(&["--compress", "zstd"]);
    assert_eq!(packed["compression"], "zstd", "{packed}");
    assert_eq!(packed["content"], "telemetry");
    assert_eq!(packed["errors"], 0, "{packed}");
    assert!(n(&packed, "messages") > 10, "{packed}");
    assert!(
        n(&packed, "bytes_sent") * 3 < n(&packed, "plain_bytes_sent")
            && n(&packed, "bytes_received") * 3 < n(&packed, "plain_bytes_received"),
        "{packed}"
    );
    let after = compression_stats(s.local_addr());
    assert!(n(&after, "frames_in") >= n(&before, "frames_in") + n(&packed, "messages"));

    let plain = run(&[]);
    assert_eq!(plain["compression"], Value::Null, "{plain}");
    assert_eq!(plain["errors"], 0, "{plain}");
    assert_eq!(n(&plain, "bytes_sent"), n(&plain, "plain_bytes_sent"));
    assert_eq!(
        n(&plain, "bytes_received"),
        n(&plain, "plain_bytes_received")
    );
    // Per message, the compressed run put far fewer bytes on the wire.
    let per = |v: &Value, k: &str| n(v, k) as f64 / n(v, "messages") as f64;
    assert!(per(&packed, "bytes_received") * 3.0 < per(&plain, "bytes_received"));

    // Broadcast to compressed subscribers, through the library.
    let r = ringcast::bench::run(ringcast::bench::BenchConfig {
        addr: s.local_addr(),
        workload: ringcast::bench::Workload::Broadcast,
        threads: 1,
        publishers: 1,
        subscribers: 6,
        size: 8000,
        content: ringcast::bench::Content::Telemetry,
        compress: Some(Codec::Deflate),
        duration: Duration::from_millis(500),
        warmup: Duration::from_millis(100),
        progress: false,
        ..ringcast::bench::BenchConfig::default()
    })
    .unwrap();
    assert_eq!(r.errors, 0, "{}", r.to_text());
    assert!(r.latency_us.count > 10, "{}", r.to_text());
    assert!(
        r.wire.bytes_received * 3 < r.wire.plain_bytes_received,
        "{}",
        r.to_text()
    );
    let _ = std::fs::remove_dir_all(&dir);
    s.shutdown();
}

#[test]
fn compression_over_tls_for_the_library_and_the_load_generator() {
    let pki = support::tls::Pki::new();
    let h = spawn(pki.server(2).idle_timeout_secs(0));
    let addr = support::tls::tls_addr(&h);
    let c = Client::connect_with(
        addr,
        ClientConfig {
            tls: Some(pki.client_options()),
            compression: vec![Codec::Zstd],
            ..client_config()
        },
    )
    .unwrap();
    assert_eq!(c.compression(), Some(Codec::Zstd));
    assert!(c.server_hello().unwrap().has_feature("tls"));
    let big = telemetry(500);
    let m = c
        .send_custom("echo", json!({"content": big.clone()}))
        .unwrap();
    assert_eq!(m.get("content"), Some(&big));
    let stats = c.get_stats().unwrap().compression.unwrap();
    assert!(stats.frames_in >= 1 && stats.frames_out >= 1, "{stats:?}");
    drop(c);

    let r = ringcast::bench::run(ringcast::bench::BenchConfig {
        addr,
        workload: ringcast::bench::Workload::Echo,
        threads: 1,
        connections: 2,
        pipeline: 2,
        size: 8000,
        content: ringcast::bench::Content::Telemetry,
        compress: Some(Codec::Zstd),
        tls: Some(pki.client_options()),
        duration: Duration::from_millis(400),
        warmup: Duration::from_millis(100),
        progress: false,
        ..ringcast::bench::BenchConfig::default()
    })
    .unwrap();
    assert_eq!(r.errors, 0, "{}", r.to_text());
    assert!(r.messages > 10, "{}", r.to_text());
    assert!(
        r.wire.bytes_received * 3 < r.wire.plain_bytes_received,
        "{}",
        r.to_text()
    );
    h.shutdown();
}
