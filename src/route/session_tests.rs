//! The session's rules, driven in memory with a simulated clock: no
//! socket, no sleep, no pacing. Each test is a short script of inputs
//! (`handle_*`, `env.now_*`) and checks the outputs (frames, pause/resume,
//! FIN, close).

use crate::protocol::frame::encode_frame;
use crate::protocol::FrameDecoder;
use crate::route::testing::{shared, ServerConfig, Shared, TestEnv};
use crate::route::Delivery;
use crate::session::tls::HandshakeFailure;
use crate::session::*;
use serde_json::{json, Value};
use std::ops::ControlFlow;
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub(super) fn frame(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame(&mut out, v.to_string().as_bytes());
    out
}

/// One session on a simulated shard.
pub(super) struct Harness<'a> {
    pub(super) env: TestEnv<'a>,
    pub(super) s: Session,
}

impl<'a> Harness<'a> {
    pub(super) fn new(shared: &'a Shared) -> Harness<'a> {
        let mut env = shared.env(0);
        env.now_ms = 1_700_000_000_000;
        env.now_mono_ms = 0;
        let s = Session::new(&mut env, 0, "127.0.0.1:5000".into(), None, Transport::Plain);
        Harness { env, s }
    }

    fn send(&mut self, v: &Value) {
        let mut b = frame(v);
        self.s.handle_data(&mut self.env, &mut b);
    }

    /// Advances the simulated clock by `ms` and runs the shard's tick.
    fn advance(&mut self, ms: u64) -> bool {
        self.env.now_ms += ms;
        self.env.now_mono_ms += ms;
        self.s.handle_tick(&mut self.env)
    }

    /// Takes what the session wants to send and reports it all sent;
    /// returns the frames.
    fn flush(&mut self) -> Vec<Value> {
        let mut frames = Vec::new();
        while let Some(batch) = self.s.poll_transmit(&mut self.env) {
            let bytes: Vec<u8> = batch.slices().flatten().copied().collect();
            let n = bytes.len();
            self.s.handle_sent(&mut self.env, batch, Ok(n));
            frames.extend(decode(bytes));
        }
        frames
    }

    /// Reports `n` bytes of the next batch sent (a short send).
    fn flush_partly(&mut self, n: usize) -> usize {
        let batch = self.s.poll_transmit(&mut self.env).expect("output to send");
        let all = batch.remaining();
        self.s.handle_sent(&mut self.env, batch, Ok(n.min(all)));
        all
    }

    fn actions(&mut self) -> Vec<Action> {
        std::iter::from_fn(|| self.s.poll_action()).collect()
    }
}

pub(super) fn decode(mut bytes: Vec<u8>) -> Vec<Value> {
    let mut d = FrameDecoder::new(usize::MAX >> 1);
    let mut out = Vec::new();
    d.feed(&mut bytes, |p| {
        out.push(serde_json::from_slice(p).expect("server frames are JSON"));
        ControlFlow::Continue(())
    })
    .expect("server frames are well framed");
    out
}

pub(super) fn types(frames: &[Value]) -> Vec<&str> {
    frames
        .iter()
        .map(|f| f["type"].as_str().unwrap_or("?"))
        .collect()
}

pub(super) fn code(f: &Value) -> &str {
    f["code"].as_str().unwrap_or("?")
}

#[test]
fn answers_in_order_and_copies_ids() {
    let sh = shared(ServerConfig::default());
    let mut h = Harness::new(&sh);
    let mut bytes = frame(&json!({"type": "ping", "id": 1}));
    bytes.extend(frame(&json!({"type": "echo", "content": "hi", "id": "b"})));
    // Split anywhere: the second frame straddles two receive chunks.
    let (a, b) = bytes.split_at_mut(20);
    h.s.handle_data(&mut h.env, a);
    h.s.handle_data(&mut h.env, b);
    let f = h.flush();
    assert_eq!(types(&f), ["pong", "echo_response"]);
    assert_eq!(
        (f[0]["id"].clone(), f[1]["id"].clone()),
        (json!(1), json!("b"))
    );
    assert_eq!(f[1]["content"], "hi");
    assert_eq!(f[0]["client_id"], "127.0.0.1:5000");
    assert!(h.s.wants_read());
}

#[test]
fn pauses_above_the_high_water_mark_and_resumes_below_the_low() {
    let sh = shared(ServerConfig::default());
    let mut h = Harness::new(&sh);
    let content = "x".repeat(60 << 10);
    let mut sent = 0;
    while h.s.wants_read() {
        h.send(&json!({"type": "echo", "content": content}));
        sent += 1;
        assert!(sent < 100, "never paused");
    }
    assert!(h.s.pending() > HIGH_WATER, "paused at {}", h.s.pending());
    // Draining the output in small steps: still paused above LOW_WATER...
    while h.s.pending() >= LOW_WATER {
        assert!(!h.s.wants_read(), "resumed at {}", h.s.pending());
        h.flush_partly(64 << 10);
    }
    // ...and reading again below it.
    assert!(h.s.wants_read());
    assert_eq!(h.s.phase(), Phase::Open);
}

#[test]
fn cuts_a_slow_consumer_and_keeps_only_the_error() {
    let cfg = ServerConfig {
        max_pending_bytes: 10_000,
        ..ServerConfig::default()
    };
    let sh = shared(cfg);
    let mut h = Harness::new(&sh);
    let b = Delivery::new(bytes::Bytes::from(vec![b'x'; 3_000]), None);
    for _ in 0..3 {
        assert!(h.s.push_broadcast(&mut h.env, &b.frame, &b.packed, 1));
    }
    // The fourth would pass 10,000 unread bytes.
    assert!(!h.s.push_broadcast(&mut h.env, &b.frame, &b.packed, 1));
    assert!(matches!(h.s.phase(), Phase::Draining { .. }));
    assert!(
        !h.s.is_established(),
        "a cut client gets no more broadcasts"
    );
    let f = h.flush();
    assert_eq!(types(&f), ["error"], "queued broadcasts were dropped");
    assert_eq!(code(&f[0]), "slow_consumer");
    assert_eq!(
        sh.counters[0]
            .slow_consumer_disconnects
            .load(Ordering::Relaxed),
        1
    );
    // Flushed: our FIN goes out, then the session lingers for the peer.
    assert_eq!(h.actions(), [Action::ShutdownWrite]);
    assert!(matches!(h.s.phase(), Phase::Lingering { .. }));
    h.s.handle_eof(&mut h.env);
    assert_eq!(h.actions(), [Action::Close]);
}

#[test]
fn idle_timeout_counts_complete_frames_only() {
    let cfg = ServerConfig {
        idle_timeout_secs: 10,
        ..ServerConfig::default()
    };
    let sh = shared(cfg);
    let mut h = Harness::new(&sh);
    assert!(!h.advance(9_000));
    h.send(&json!({"type": "ping"})); // activity at 9 s
    assert!(!h.advance(9_000)); // 18 s: 9 s idle
                                // A trickled frame is not activity: one byte at a time, never complete.
    let f = frame(&json!({"type": "echo", "content": "slow"}));
    for byte in &f[..f.len() - 1] {
        let mut b = [*byte];
        h.s.handle_data(&mut h.env, &mut b);
    }
    assert!(h.advance(1_000), "closed at 10 s without a complete frame");
    assert_eq!(h.s.phase(), Phase::Closed);
    assert_eq!(h.actions(), [Action::Close]);
    assert_eq!(
        h.env.partial_bytes, 0,
        "the partial frame's buffer is released"
    );
}

#[test]
fn drain_and_linger_deadlines() {
    let sh = shared(ServerConfig::default());
    let mut h = Harness::new(&sh);
    let mut zero = 0u32.to_be_bytes();
    h.s.handle_data(&mut h.env, &mut zero);
    assert!(matches!(h.s.phase(), Phase::Draining { .. }));
    // Never flushed (the peer reads nothing): cut at the drain deadline.
    assert!(!h.advance(CLOSE_GRACE_MS - 1));
    assert!(h.advance(1));
    assert_eq!(h.actions(), [Action::Close]);

    let mut h = Harness::new(&sh);
    let mut zero = 0u32.to_be_bytes();
    h.s.handle_data(&mut h.env, &mut zero);
    assert_eq!(code(&h.flush()[0]), "empty_frame");
    assert_eq!(h.actions(), [Action::ShutdownWrite]);
    // Input while lingering is read and dropped.
    h.send(&json!({"type": "ping"}));
    assert!(h.flush().is_empty());
    assert!(h.s.wants_read(), "lingering reads until the peer closes");
    // The peer never closes: cut at the linger deadline.
    assert!(!h.advance(CLOSE_GRACE_MS - 1));
    assert!(h.advance(1));
    assert_eq!(h.actions(), [Action::Close]);
}

#[test]
fn auth_comes_first() {
    let cfg = ServerConfig {
        auth_token: Some("s3cret".into()),
        ..ServerConfig::default()
    };
    let sh = shared(cfg);
    let mut h = Harness::new(&sh);
    assert!(!h.s.is_established(), "not counted before auth");
    h.send(&json!({"type": "ping"}));
    let f = h.flush();
    assert_eq!(code(&f[0]), "unauthorized");
    assert!(matches!(h.s.phase(), Phase::Lingering { .. }));

    let mut h = Harness::new(&sh);
    h.send(&json!({"type": "auth", "token": "wrong"}));
    assert_eq!(code(&h.flush()[0]), "unauthorized");

    let mut h = Harness::new(&sh);
    h.send(&json!({"type": "auth", "token": "s3cret", "id": 7}));
    h.send(&json!({"type": "ping"}));
    let f = h.flush();
    assert_eq!(types(&f), ["auth_ok", "pong"]);
    assert_eq!(f[0]["id"], 7);
    assert!(h.s.is_established());
    assert_eq!(sh.counters[0].connected.load(Ordering::Relaxed), 1);
}

#[test]
fn rate_limit_allows_the_burst_then_refills_with_time() {
    let cfg = ServerConfig {
        rate_limit: 10,
        rate_burst: 3,
        ..ServerConfig::default()
    };
    let sh = shared(cfg);
    let mut h = Harness::new(&sh);
    for _ in 0..4 {
        h.send(&json!({"type": "ping"}));
    }
    let f = h.flush();
    assert_eq!(types(&f), ["pong", "pong", "pong", "error"]);
    assert_eq!(code(&f[3]), "rate_limited");
    assert_eq!(h.s.phase(), Phase::Open, "rate limiting does not close");
    // 10/s: one token back after 100 ms.
    h.env.now_ms += 100;
    h.send(&json!({"type": "ping"}));
    h.send(&json!({"type": "ping"}));
    assert_eq!(types(&h.flush()), ["pong", "error"]);
}

#[test]
fn framing_errors_are_answered_then_closed() {
    let cfg = ServerConfig {
        max_frame_bytes: 1000,
        max_partial_bytes: 4096,
        ..ServerConfig::default()
    };
    let sh = shared(cfg);
    let mut h = Harness::new(&sh);
    // The header alone decides: nothing after it is read.
    let mut b = 1001u32.to_be_bytes().to_vec();
    b.extend(frame(&json!({"type": "ping"})));
    h.s.handle_data(&mut h.env, &mut b);
    let f = h.flush();
    assert_eq!(types(&f), ["error"]);
    assert_eq!(code(&f[0]), "frame_too_large");
    assert!(f[0].get("id").is_none());
    assert!(!h.s.wants_read() || matches!(h.s.phase(), Phase::Lingering { .. }));
    assert_eq!(h.actions(), [Action::ShutdownWrite]);
}

#[test]
fn json_errors_are_answered_and_the_connection_stays_usable() {
    let sh = shared(ServerConfig::default());
    let mut h = Harness::new(&sh);
    let mut b = Vec::new();
    encode_frame(&mut b, b"{not json");
    h.s.handle_data(&mut h.env, &mut b);
    h.send(&json!({"type": 5, "id": 1}));
    h.send(&json!({"type": "nope", "id": 2}));
    h.send(&json!({"type": "ping", "id": 3}));
    let f = h.flush();
    let codes: Vec<&str> = f[..3].iter().map(code).collect();
    assert_eq!(codes, ["invalid_json", "missing_type", "unknown_type"]);
    assert_eq!(f[3]["type"], "pong");
    assert_eq!(h.s.phase(), Phase::Open);
    assert!(h.actions().is_empty());
}

#[test]
fn shutdown_notice_is_flushed_by_the_drain_deadline() {
    let sh = shared(ServerConfig::default());
    let mut h = Harness::new(&sh);
    h.send(&json!({"type": "ping"}));
    h.s.begin_shutdown(&mut h.env, 5_000);
    // The reply asked for goes first, then the notice.
    let f = h.flush();
    assert_eq!(types(&f), ["pong", "error"]);
    assert_eq!(code(&f[1]), "shutting_down");
    assert_eq!(h.actions(), [Action::ShutdownWrite]);

    // A client that reads nothing is cut at the server's drain deadline.
    let mut h = Harness::new(&sh);
    h.s.begin_shutdown(&mut h.env, 5_000);
    assert!(!h.advance(4_999));
    assert!(h.advance(1));
    assert_eq!(h.actions(), [Action::Close]);
}

#[test]
fn partial_frames_share_the_shard_budget() {
    let cfg = ServerConfig {
        max_frame_bytes: 100_000,
        max_partial_bytes: 150_000,
        ..ServerConfig::default()
    };
    let sh = shared(cfg);
    let mut env = sh.env(0);
    let mut a = Session::new(&mut env, 0, "a".into(), None, Transport::Plain);
    let mut b = Session::new(&mut env, 1, "b".into(), None, Transport::Plain);
    let mut c = Session::new(&mut env, 2, "c".into(), None, Transport::Plain);
    // Each announces a 90,000-byte frame and sends 80,000 bytes of it.
    let partial = || {
        let mut v = 90_000u32.to_be_bytes().to_vec();
        v.extend(std::iter::repeat_n(b' ', 80_000));
        v
    };
    a.handle_data(&mut env, &mut partial());
    assert_eq!(a.phase(), Phase::Open);
    assert!(env.partial_bytes >= 80_000);
    b.handle_data(&mut env, &mut partial());
    assert!(matches!(b.phase(), Phase::Draining { .. }), "over budget");
    let out = b.poll_transmit(&mut env).expect("an error frame");
    let v = decode(out.slices().flatten().copied().collect());
    assert_eq!(code(&v[0]), "server_full");
    // Small frames are still served while the budget is used up.
    let mut ping = frame(&json!({"type": "ping"}));
    c.handle_data(&mut env, &mut ping[..5]);
    c.handle_data(&mut env, &mut ping[5..]);
    assert_eq!(c.phase(), Phase::Open);
    // Closing releases a's share at once.
    a.handle_failed(&mut env);
    assert_eq!(env.partial_bytes, 0);
}

#[test]
fn eof_answers_what_was_asked_then_closes_without_lingering() {
    let sh = shared(ServerConfig::default());
    let mut h = Harness::new(&sh);
    h.send(&json!({"type": "echo", "content": "last"}));
    h.s.handle_eof(&mut h.env);
    assert!(h.actions().is_empty(), "the reply is not flushed yet");
    assert!(!h.s.wants_read());
    let f = h.flush();
    assert_eq!(f[0]["content"], "last");
    assert_eq!(
        h.actions(),
        [Action::Close],
        "no FIN dance after the peer's EOF"
    );
}

#[test]
fn broadcasts_are_shared_not_copied_and_published_once() {
    let sh = shared(ServerConfig::default());
    let mut env = sh.env(0);
    let mut a = Session::new(&mut env, 0, "a".into(), None, Transport::Plain);
    let mut b = Session::new(&mut env, 1, "b".into(), None, Transport::Plain);
    let mut req = frame(&json!({"type": "broadcast", "content": "hello"}));
    a.handle_data(&mut env, &mut req);
    assert_eq!(env.host.outgoing.len(), 1);
    let (d, sender) = env.host.outgoing.pop().expect("one frame");
    assert_eq!(sender, 0);
    assert!(d.channel.is_none(), "a broadcast names no channel");
    assert!(b.push_broadcast(&mut env, &d.frame, &d.packed, 1));
    let f = d.frame;
    let batch = b.poll_transmit(&mut env).expect("the broadcast");
    // The recipient's segment is the very buffer published.
    let seg = batch.segments.front().expect("one segment");
    assert_eq!(seg.as_slice().as_ptr(), f.as_ptr());
    let v = decode(batch.slices().flatten().copied().collect());
    assert_eq!(v[0]["type"], "broadcast_message");
    assert_eq!(v[0]["content"], "hello");
}

/// A TLS session on a simulated shard and a rustls client for it, in
/// memory: bytes move only when the test says so.
struct TlsPair<'a> {
    h: Harness<'a>,
    client: rustls::ClientConnection,
}

fn tls_config() -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = ck.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::try_from(ck.signing_key.serialize_der()).unwrap();
    let server = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (Arc::new(server), Arc::new(client))
}

impl<'a> TlsPair<'a> {
    fn new(shared: &'a Shared) -> TlsPair<'a> {
        let (server, client) = tls_config();
        let mut env = shared.env(0);
        env.tls_plain = vec![0; 32 << 10];
        let conn = rustls::ServerConnection::new(server).unwrap();
        let s = Session::new(
            &mut env,
            0,
            "127.0.0.1:5000".into(),
            None,
            Transport::Tls(Box::new(conn)),
        );
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        TlsPair {
            h: Harness { env, s },
            client: rustls::ClientConnection::new(client, name).unwrap(),
        }
    }

    /// Client → server: what the client has to send.
    fn deliver_to_server(&mut self) {
        let mut bytes = Vec::new();
        while self.client.wants_write() {
            self.client.write_tls(&mut bytes).unwrap();
        }
        if !bytes.is_empty() {
            self.h.s.handle_data(&mut self.h.env, &mut bytes);
        }
    }

    /// Server → client: everything the session sends; returns the frames
    /// the client decrypts.
    fn deliver_to_client(&mut self) -> Vec<Value> {
        let mut plain = Vec::new();
        while let Some(batch) = self.h.s.poll_transmit(&mut self.h.env) {
            let bytes: Vec<u8> = batch.slices().flatten().copied().collect();
            self.h
                .s
                .handle_sent(&mut self.h.env, batch, Ok(bytes.len()));
            let mut rd = &bytes[..];
            while !rd.is_empty() {
                self.client.read_tls(&mut rd).unwrap();
                self.client.process_new_packets().unwrap();
            }
            let _ = std::io::Read::read_to_end(&mut self.client.reader(), &mut plain);
        }
        decode(plain)
    }

    fn handshake(&mut self) {
        for _ in 0..4 {
            self.deliver_to_server();
            self.deliver_to_client();
        }
        assert!(!self.client.is_handshaking());
    }
}

#[test]
fn tls_handshake_then_requests_then_close_notify_before_the_fin() {
    let sh = shared(ServerConfig::default());
    let mut p = TlsPair::new(&sh);
    // The server answers the ClientHello with no request sent.
    p.deliver_to_server();
    assert!(p.h.s.wants_send(), "handshake bytes must flow");
    assert!(!p.h.s.is_established(), "not before the handshake is done");
    p.handshake();
    assert!(p.h.s.is_established());
    assert_eq!(p.h.env.tls_handshakes, 0);
    std::io::Write::write_all(
        &mut p.client.writer(),
        &frame(&json!({"type": "echo", "content": "sealed", "id": 7})),
    )
    .unwrap();
    p.deliver_to_server();
    let f = p.deliver_to_client();
    assert_eq!(types(&f), ["echo_response"]);
    assert_eq!(f[0]["content"], "sealed");
    // The client's close_notify is its EOF: the server answers with its
    // own close_notify, then closes (the peer already ended).
    p.client.send_close_notify();
    p.deliver_to_server();
    p.deliver_to_client();
    assert!(p.client.process_new_packets().unwrap().peer_has_closed());
    assert_eq!(p.h.actions(), [Action::Close]);
}

/// TLS 1.3: the client's Finished and its first request arrive in one
/// read. The session must be established (counted, able to receive
/// broadcasts) before that request is answered: a `get_stats` sent first
/// used to see `connected_clients: 0` while its own connection was open.
#[test]
fn a_request_that_comes_with_the_clients_finished_finds_its_connection_established() {
    let sh = shared(ServerConfig::default());
    let mut p = TlsPair::new(&sh);
    p.deliver_to_server(); // ClientHello
    p.deliver_to_client(); // ServerHello … server Finished
    assert!(!p.h.s.is_established());
    // rustls holds the request until its Finished is written, then both
    // leave in one flight, which the server gets in one handle_data.
    std::io::Write::write_all(
        &mut p.client.writer(),
        &frame(&json!({"type": "get_stats", "id": 1})),
    )
    .unwrap();
    let mut bytes = Vec::new();
    while p.client.wants_write() {
        p.client.write_tls(&mut bytes).unwrap();
    }
    p.h.s.handle_data(&mut p.h.env, &mut bytes);
    let f = p.deliver_to_client();
    assert_eq!(types(&f), ["server_stats"], "{f:?}");
    assert_eq!(f[0]["connected_clients"], 1, "{}", f[0]);
    assert!(p.h.s.is_established());
    assert_eq!(p.h.env.tls_handshakes, 0);
}

#[test]
fn a_stalled_tls_handshake_is_cut_at_its_deadline() {
    let cfg = ServerConfig {
        tls_handshake_timeout_secs: 10,
        ..ServerConfig::default()
    };
    let sh = shared(cfg);
    let mut p = TlsPair::new(&sh);
    assert_eq!(p.h.env.tls_handshakes, 1);
    assert!(!p.h.advance(9_999));
    assert!(p.h.advance(1));
    assert_eq!(p.h.actions(), [Action::Close]);
    assert_eq!(p.h.env.tls_handshakes, 0);
    let timeouts = &sh.counters[0].tls_handshake_failures[HandshakeFailure::Timeout.index()];
    assert_eq!(timeouts.load(Ordering::Relaxed), 1);
}

#[test]
fn garbage_gets_an_alert_and_a_close_and_counts_once() {
    let sh = shared(ServerConfig::default());
    let mut p = TlsPair::new(&sh);
    let mut junk = b"GET / HTTP/1.1\r\n\r\n".to_vec();
    p.h.s.handle_data(&mut p.h.env, &mut junk);
    let batch = p.h.s.poll_transmit(&mut p.h.env).expect("an alert");
    let bytes: Vec<u8> = batch.slices().flatten().copied().collect();
    assert_eq!(bytes[0], 21, "a TLS alert record");
    p.h.s.handle_sent(&mut p.h.env, batch, Ok(bytes.len()));
    assert_eq!(p.h.actions(), [Action::ShutdownWrite]);
    p.h.s.handle_eof(&mut p.h.env);
    assert_eq!(p.h.actions(), [Action::Close]);
    let c = &sh.counters[0].tls_handshake_failures;
    assert_eq!(
        c[HandshakeFailure::Malformed.index()].load(Ordering::Relaxed),
        1
    );
    assert_eq!(c.iter().map(|a| a.load(Ordering::Relaxed)).sum::<u64>(), 1);
}
