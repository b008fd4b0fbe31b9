//! The session's rules, driven in memory with a simulated clock: no
//! socket, no sleep, no pacing. Each test is a short script of inputs
//! (`handle_*`, `env.now_*`) and checks the outputs (frames, pause/resume,
//! FIN, close).

use crate::protocol::frame::encode_frame;
use crate::protocol::RequestKind;
use crate::protocol::{ErrorCode, FrameDecoder};
use crate::route::testing::{shards, shared, ServerConfig, Shared, TestEnv};
use crate::route::Delivery;
use crate::session::tls::HandshakeFailure;
use crate::session::*;
use serde_json::{json, Value};
use std::ops::ControlFlow;
use std::sync::atomic::Ordering;
use std::sync::Arc;

fn frame(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame(&mut out, v.to_string().as_bytes());
    out
}

/// One session on a simulated shard.
struct Harness<'a> {
    env: TestEnv<'a>,
    s: Session,
}

impl<'a> Harness<'a> {
    fn new(shared: &'a Shared) -> Harness<'a> {
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

fn decode(mut bytes: Vec<u8>) -> Vec<Value> {
    let mut d = FrameDecoder::new(usize::MAX >> 1);
    let mut out = Vec::new();
    d.feed(&mut bytes, |p| {
        out.push(serde_json::from_slice(p).expect("server frames are JSON"));
        ControlFlow::Continue(())
    })
    .expect("server frames are well framed");
    out
}

fn types(frames: &[Value]) -> Vec<&str> {
    frames
        .iter()
        .map(|f| f["type"].as_str().unwrap_or("?"))
        .collect()
}

fn code(f: &Value) -> &str {
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
        assert!(h.s.push_broadcast(&mut h.env, &b.frame, &b.packed));
    }
    // The fourth would pass 10,000 unread bytes.
    assert!(!h.s.push_broadcast(&mut h.env, &b.frame, &b.packed));
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
    assert!(b.push_broadcast(&mut env, &d.frame, &d.packed));
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

/// `n` sessions on shard `shard` of `sh`, named "c0", "c1", … (session
/// ids are their index).
fn sessions(env: &mut TestEnv<'_>, n: usize) -> Vec<Session> {
    (0..n)
        .map(|i| Session::new(env, i, format!("c{i}").into(), None, Transport::Plain))
        .collect()
}

/// Sends `v` from `s` and returns the frames it gets back.
fn ask(env: &mut TestEnv<'_>, s: &mut Session, v: &Value) -> Vec<Value> {
    let mut b = frame(v);
    s.handle_data(env, &mut b);
    let mut frames = Vec::new();
    while let Some(batch) = s.poll_transmit(env) {
        let bytes: Vec<u8> = batch.slices().flatten().copied().collect();
        let n = bytes.len();
        s.handle_sent(env, batch, Ok(n));
        frames.extend(decode(bytes));
    }
    frames
}

#[test]
fn subscribe_and_unsubscribe_are_answered_with_the_id_and_the_count_held() {
    let sh = shared(ServerConfig::default());
    let mut env = sh.env(0);
    let mut c = sessions(&mut env, 1);
    let r = ask(
        &mut env,
        &mut c[0],
        &json!({"type": "subscribe", "channel": "news", "id": 1}),
    );
    assert_eq!(
        r,
        [json!({"type": "subscribed", "channel": "news", "subscriptions": 1, "id": 1})]
    );
    // Again: answered the same, still one subscription.
    let r = ask(
        &mut env,
        &mut c[0],
        &json!({"type": "subscribe", "channel": "news", "id": "x"}),
    );
    assert_eq!(r[0]["subscriptions"], 1);
    assert_eq!(r[0]["id"], "x");
    let r = ask(
        &mut env,
        &mut c[0],
        &json!({"type": "subscribe", "channel": "sport"}),
    );
    assert_eq!(r[0]["subscriptions"], 2);
    assert_eq!(sh.totals(&mut Vec::new()).subscriptions, 2);
    assert_eq!(sh.totals(&mut Vec::new()).channels, 2);
    // Not subscribed: answered, not an error.
    let r = ask(
        &mut env,
        &mut c[0],
        &json!({"type": "unsubscribe", "channel": "weather", "id": 2}),
    );
    assert_eq!(
        r,
        [json!({"type": "unsubscribed", "channel": "weather", "subscriptions": 2, "id": 2})]
    );
    let r = ask(
        &mut env,
        &mut c[0],
        &json!({"type": "unsubscribe", "channel": "news"}),
    );
    assert_eq!(r[0]["subscriptions"], 1);
    assert_eq!(env.host.channels.subscriber_count("news"), 0);
    assert_eq!(sh.totals(&mut Vec::new()).subscriptions, 1);
    let t = sh.totals(&mut Vec::new());
    assert_eq!(t.messages_of(RequestKind::Subscribe), 3);
    assert_eq!(t.messages_of(RequestKind::Unsubscribe), 2);
    assert_eq!(t.protocol_errors(), 0);
}

#[test]
fn channel_names_are_checked_with_clear_errors() {
    let sh = shared(ServerConfig::default());
    let mut env = sh.env(0);
    let mut c = sessions(&mut env, 1);
    let longest = "é".repeat(128); // 256 bytes of UTF-8
    assert_eq!(longest.len(), crate::protocol::message::MAX_CHANNEL_BYTES);
    let r = ask(
        &mut env,
        &mut c[0],
        &json!({"type": "subscribe", "channel": longest}),
    );
    assert_eq!(r[0]["type"], "subscribed");
    for (req, code) in [
        (
            json!({"type": "subscribe", "channel": "", "id": 1}),
            "invalid_channel",
        ),
        (
            json!({"type": "subscribe", "channel": "x".repeat(257), "id": 1}),
            "invalid_channel",
        ),
        (
            json!({"type": "publish", "channel": "a\u{0}b", "content": 1, "id": 1}),
            "invalid_channel",
        ),
        (
            json!({"type": "unsubscribe", "channel": "tab\there", "id": 1}),
            "invalid_channel",
        ),
        (
            json!({"type": "subscribe", "channel": "del\u{7f}", "id": 1}),
            "invalid_channel",
        ),
        (json!({"type": "subscribe", "id": 1}), "invalid_field"),
        (
            json!({"type": "subscribe", "channel": 5, "id": 1}),
            "invalid_field",
        ),
        (
            json!({"type": "publish", "channel": "a", "id": 1}),
            "invalid_field",
        ),
    ] {
        let r = ask(&mut env, &mut c[0], &req);
        assert_eq!(r.len(), 1, "{req}");
        assert_eq!(r[0]["type"], "error", "{req}");
        assert_eq!(r[0]["code"], code, "{req}");
        assert_eq!(r[0]["id"], 1, "{req}");
        assert_eq!(r[0]["request_type"], req["type"], "{req}");
    }
    assert_eq!(
        c[0].phase(),
        Phase::Open,
        "a bad name leaves the connection open"
    );
    let t = sh.totals(&mut Vec::new());
    assert_eq!(t.errors[ErrorCode::InvalidChannel.index()], 5);
    assert_eq!(t.errors[ErrorCode::InvalidField.index()], 3);
    assert_eq!(t.subscriptions, 1, "no rejected name was subscribed");
}

#[test]
fn subscriptions_per_connection_are_capped() {
    let sh = shared(ServerConfig {
        max_subscriptions: 2,
        ..ServerConfig::default()
    });
    let mut env = sh.env(0);
    let mut c = sessions(&mut env, 2);
    for ch in ["a", "b"] {
        let r = ask(
            &mut env,
            &mut c[0],
            &json!({"type": "subscribe", "channel": ch}),
        );
        assert_eq!(r[0]["type"], "subscribed");
    }
    let r = ask(
        &mut env,
        &mut c[0],
        &json!({"type": "subscribe", "channel": "c", "id": 7}),
    );
    assert_eq!(r[0]["code"], "too_many_subscriptions");
    assert_eq!(r[0]["id"], 7);
    // Subscribing again to one it holds is no new subscription.
    let r = ask(
        &mut env,
        &mut c[0],
        &json!({"type": "subscribe", "channel": "a"}),
    );
    assert_eq!(r[0]["type"], "subscribed");
    // The cap is per connection; and leaving one makes room.
    let r = ask(
        &mut env,
        &mut c[1],
        &json!({"type": "subscribe", "channel": "c"}),
    );
    assert_eq!(r[0]["type"], "subscribed");
    ask(
        &mut env,
        &mut c[0],
        &json!({"type": "unsubscribe", "channel": "a"}),
    );
    let r = ask(
        &mut env,
        &mut c[0],
        &json!({"type": "subscribe", "channel": "c"}),
    );
    assert_eq!(r[0]["subscriptions"], 2);
    assert_eq!(
        sh.totals(&mut Vec::new()).errors[ErrorCode::TooManySubscriptions.index()],
        1
    );
}

#[test]
fn publish_counts_subscribers_and_queues_one_shared_frame() {
    let sh = shared(ServerConfig::default());
    let mut env = sh.env(0);
    let mut c = sessions(&mut env, 3);
    for i in [1, 2] {
        ask(
            &mut env,
            &mut c[i],
            &json!({"type": "subscribe", "channel": "news"}),
        );
    }
    let r = ask(
        &mut env,
        &mut c[0],
        &json!({"type": "publish", "channel": "news", "content": {"k": [1, 2]}, "id": "p"}),
    );
    assert_eq!(r.len(), 1);
    assert_eq!(r[0]["type"], "published");
    assert_eq!(r[0]["channel"], "news");
    assert_eq!(r[0]["recipients"], 2, "the publisher is not subscribed");
    assert_eq!(r[0]["id"], "p");
    let (d, sender) = env.host.outgoing.pop().expect("one delivery");
    assert_eq!(sender, 0);
    assert_eq!(d.channel.as_deref(), Some("news"));
    let v = decode(d.frame.to_vec());
    assert_eq!(
        v[0],
        json!({"type": "channel_message", "channel": "news", "content": {"k": [1, 2]},
               "from": "c0", "timestamp": r[0]["timestamp"]})
    );
    // A subscribed publisher counts itself, as in Redis.
    ask(
        &mut env,
        &mut c[0],
        &json!({"type": "subscribe", "channel": "news"}),
    );
    let r = ask(
        &mut env,
        &mut c[0],
        &json!({"type": "publish", "channel": "news", "content": 1}),
    );
    assert_eq!(r[0]["recipients"], 3);
    // Nobody there: answered with 0, still published (and counted).
    let r = ask(
        &mut env,
        &mut c[0],
        &json!({"type": "publish", "channel": "empty", "content": 1}),
    );
    assert_eq!(r[0]["recipients"], 0);
    assert_eq!(
        sh.totals(&mut Vec::new()).messages_of(RequestKind::Publish),
        3
    );
}

#[test]
fn closing_drops_every_subscription() {
    let sh = shared(ServerConfig::default());
    let mut env = sh.env(0);
    let mut c = sessions(&mut env, 2);
    for ch in ["a", "b", "c"] {
        ask(
            &mut env,
            &mut c[0],
            &json!({"type": "subscribe", "channel": ch}),
        );
    }
    ask(
        &mut env,
        &mut c[1],
        &json!({"type": "subscribe", "channel": "a"}),
    );
    assert_eq!(sh.totals(&mut Vec::new()).subscriptions, 4);
    c[0].handle_eof(&mut env);
    assert_eq!(env.host.channels.subscriber_count("a"), 1);
    assert_eq!(env.host.channels.subscriber_count("b"), 0);
    let t = sh.totals(&mut Vec::new());
    assert_eq!((t.subscriptions, t.channels), (1, 1));
    c[1].handle_failed(&mut env);
    let t = sh.totals(&mut Vec::new());
    assert_eq!((t.subscriptions, t.channels), (0, 0));
    let slot = crate::protocol::interest::slot_of("a");
    assert_eq!(sh.interest[0].count(slot), 0, "interest withdrawn");
}

#[test]
fn publish_counts_subscribers_on_other_shards_from_their_interest() {
    let sh = shards(ServerConfig::default(), 2);
    let mut env0 = sh.env(0);
    let mut env1 = sh.env(1);
    let mut a = sessions(&mut env0, 1);
    let mut b = sessions(&mut env1, 2);
    for s in b.iter_mut() {
        let r = ask(
            &mut env1,
            s,
            &json!({"type": "subscribe", "channel": "room"}),
        );
        assert_eq!(r[0]["type"], "subscribed");
    }
    let slot = crate::protocol::interest::slot_of("room");
    assert_eq!(
        (sh.interest[0].count(slot), sh.interest[1].count(slot)),
        (0, 2)
    );
    let r = ask(
        &mut env0,
        &mut a[0],
        &json!({"type": "publish", "channel": "room", "content": "hi"}),
    );
    assert_eq!(r[0]["recipients"], 2);
    ask(
        &mut env1,
        &mut b[0],
        &json!({"type": "unsubscribe", "channel": "room"}),
    );
    let r = ask(
        &mut env0,
        &mut a[0],
        &json!({"type": "publish", "channel": "room", "content": "hi"}),
    );
    assert_eq!(r[0]["recipients"], 1);
}

#[test]
fn an_unauthenticated_client_cannot_subscribe() {
    let sh = shared(ServerConfig {
        auth_token: Some("t".into()),
        ..ServerConfig::default()
    });
    let mut env = sh.env(0);
    let mut c = sessions(&mut env, 1);
    let r = ask(
        &mut env,
        &mut c[0],
        &json!({"type": "subscribe", "channel": "a"}),
    );
    assert_eq!(r[0]["code"], "unauthorized");
    assert_eq!(env.host.channels.subscription_count(), 0);
}

/// A node keeping history: `size` publications a channel, TTL 60 s.
fn with_history(size: usize, n: usize) -> Shared {
    shards(
        ServerConfig {
            history: crate::route::history::HistorySettings {
                size,
                ttl_ms: 60_000,
                max_bytes: 1 << 20,
                recover_limit: 1000,
            },
            ..ServerConfig::default()
        },
        n,
    )
}

/// What the shard loop does with shard `shard`'s mailbox: each delivery to
/// the subscribers its index names (skipping those whose subscription
/// began at or after a history publication).
fn fan_out(sh: &Shared, shard: usize, env: &mut TestEnv<'_>, sessions: &mut [Session]) {
    let mut got = Vec::new();
    sh.mailboxes[shard].drain(|d| got.push(d));
    for d in got {
        let ch = d.channel.as_deref().expect("a channel message");
        let keys: Vec<usize> = env
            .host
            .channels
            .subscribers_of(ch, d.history_seq)
            .collect();
        for k in keys {
            assert!(sessions[k].push_broadcast(env, &d.frame, &d.packed));
        }
    }
}

/// Everything `s` has to send, as frames.
fn take(env: &mut TestEnv<'_>, s: &mut Session) -> Vec<Value> {
    let mut frames = Vec::new();
    while let Some(batch) = s.poll_transmit(env) {
        let bytes: Vec<u8> = batch.slices().flatten().copied().collect();
        let n = bytes.len();
        s.handle_sent(env, batch, Ok(n));
        frames.extend(decode(bytes));
    }
    frames
}

fn offsets(frames: &[Value]) -> Vec<u64> {
    frames
        .iter()
        .filter(|f| f["type"] == "channel_message")
        .map(|f| f["offset"].as_u64().expect("an offset"))
        .collect()
}

#[test]
fn a_publication_racing_a_recovery_is_delivered_once_in_order() {
    let sh = with_history(100, 2);
    let mut env0 = sh.env(0);
    let mut env1 = sh.env(1);
    let mut p = sessions(&mut env0, 1);
    // On shard 1: a watcher (so shard 1 has interest: publications reach
    // its mailbox) and the session that will recover.
    let mut b = sessions(&mut env1, 2);
    let sub = |ch: &str| json!({"type": "subscribe", "channel": ch});
    let r = ask(&mut env1, &mut b[0], &sub("prices"));
    let epoch = r[0]["epoch"].as_str().expect("an epoch").to_owned();
    assert_eq!(r[0]["offset"], 0);
    let publish = |n: u64| json!({"type": "publish", "channel": "prices", "content": n});
    for n in 1..=3 {
        let r = ask(&mut env0, &mut p[0], &publish(n));
        assert_eq!(
            (r[0]["offset"].as_u64(), r[0]["epoch"].as_str()),
            (Some(n), Some(&*epoch))
        );
    }
    // 2 and 3 are still in shard 1's mailbox, not delivered, when b[1]
    // recovers from 1: they come in the replay and must not come again.
    let r = ask(
        &mut env1,
        &mut b[1],
        &json!({"type": "subscribe", "channel": "prices", "id": 7,
                "recover": {"offset": 1, "epoch": epoch}}),
    );
    assert_eq!(r[0]["type"], "subscribed");
    assert_eq!(
        (
            r[0]["recovered"].clone(),
            r[0]["offset"].clone(),
            r[0]["id"].clone()
        ),
        (json!(true), json!(3), json!(7))
    );
    assert_eq!(offsets(&r), [2, 3], "the replay follows subscribed at once");
    // One published after the read: live.
    ask(&mut env0, &mut p[0], &publish(4));
    fan_out(&sh, 1, &mut env1, &mut b);
    let live = take(&mut env1, &mut b[1]);
    assert_eq!(offsets(&live), [4], "2 and 3 not twice, 4 once");
    assert_eq!(live[0]["content"], 4);
    assert_eq!(offsets(&take(&mut env1, &mut b[0])), [1, 2, 3, 4]);
    // The publisher's own shard had no subscriber: nothing queued there.
    let mut none = 0;
    sh.mailboxes[0].drain(|_| none += 1);
    assert_eq!(none, 0);
}

#[test]
fn recovery_is_refused_past_the_history_and_on_another_epoch() {
    let sh = with_history(2, 1);
    let mut env = sh.env(0);
    let mut c = sessions(&mut env, 2);
    let mut epoch = String::new();
    for n in 1..=3 {
        let r = ask(
            &mut env,
            &mut c[0],
            &json!({"type": "publish", "channel": "h", "content": n}),
        );
        epoch = r[0]["epoch"].as_str().unwrap().to_owned();
    }
    let recover = |offset: u64, epoch: &str| json!({"type": "subscribe", "channel": "h", "recover": {"offset": offset, "epoch": epoch}});
    // 1 is gone (size 2): from 0 is refused, from 1 is granted.
    let r = ask(&mut env, &mut c[1], &recover(0, &epoch));
    assert_eq!((r.len(), r[0]["recovered"].clone()), (1, json!(false)));
    assert_eq!(r[0]["offset"], 3);
    ask(
        &mut env,
        &mut c[1],
        &json!({"type": "unsubscribe", "channel": "h"}),
    );
    let r = ask(&mut env, &mut c[1], &recover(1, &epoch));
    assert_eq!(r[0]["recovered"], true);
    assert_eq!(offsets(&r), [2, 3]);
    ask(
        &mut env,
        &mut c[1],
        &json!({"type": "unsubscribe", "channel": "h"}),
    );
    let r = ask(&mut env, &mut c[1], &recover(1, "another"));
    assert_eq!((r.len(), r[0]["recovered"].clone()), (1, json!(false)));
    // Already subscribed: nothing replayed (it would double).
    let r = ask(&mut env, &mut c[1], &recover(1, &epoch));
    assert_eq!((r.len(), r[0]["recovered"].clone()), (1, json!(false)));
    // The TTL (60 s): everything gone, the channel restarts under a new epoch.
    env.now_ms += 60_000;
    let r = ask(
        &mut env,
        &mut c[0],
        &json!({"type": "publish", "channel": "h", "content": 4}),
    );
    assert_eq!(r[0]["offset"], 1);
    assert_ne!(r[0]["epoch"], json!(epoch));
}

#[test]
fn history_reads_and_bad_history_input_keep_the_connection() {
    let sh = with_history(10, 1);
    let mut env = sh.env(0);
    let mut c = sessions(&mut env, 1);
    for n in 1..=3 {
        ask(
            &mut env,
            &mut c[0],
            &json!({"type": "publish", "channel": "h", "content": {"n": n}}),
        );
    }
    let r = ask(
        &mut env,
        &mut c[0],
        &json!({"type": "history", "channel": "h", "since": 1, "limit": 1, "id": "q"}),
    );
    assert_eq!(r[0]["type"], "history");
    assert_eq!(
        (r[0]["offset"].clone(), r[0]["id"].clone()),
        (json!(3), json!("q"))
    );
    let pubs = r[0]["publications"].as_array().unwrap();
    assert_eq!(pubs.len(), 1);
    assert_eq!(pubs[0]["offset"], 2);
    assert_eq!(pubs[0]["content"], json!({"n": 2}));
    assert_eq!(pubs[0]["from"], "c0");
    assert!(pubs[0]["timestamp"].is_string());
    let bad = [
        json!({"type": "subscribe", "channel": "h", "recover": {"epoch": "e"}}),
        json!({"type": "subscribe", "channel": "h", "recover": {"offset": "1", "epoch": "e"}}),
        json!({"type": "subscribe", "channel": "h", "recover": {"offset": -1, "epoch": "e"}}),
        json!({"type": "subscribe", "channel": "h", "recover": {"offset": 1e300, "epoch": "e"}}),
        json!({"type": "subscribe", "channel": "h", "recover": {"offset": 9007199254740992u64, "epoch": "e"}}),
        json!({"type": "subscribe", "channel": "h", "recover": {"offset": 1, "epoch": 5}}),
        json!({"type": "subscribe", "channel": "h", "recover": 1}),
        json!({"type": "history", "channel": "h", "limit": 0}),
        json!({"type": "history", "channel": "h", "limit": 1001}),
        json!({"type": "history", "channel": "h", "since": -1}),
        json!({"type": "history", "channel": ""}),
    ];
    for b in &bad {
        let r = ask(&mut env, &mut c[0], b);
        assert_eq!(r.len(), 1, "{b}");
        assert_eq!(r[0]["type"], "error", "{b}");
        let want = if b["channel"] == "" {
            "invalid_channel"
        } else {
            "invalid_field"
        };
        assert_eq!(code(&r[0]), want, "{b}");
        assert!(r[0]["message"].as_str().unwrap().len() > 10, "{b}");
    }
    assert_eq!(env.host.channels.subscription_count(), 0);
    let r = ask(&mut env, &mut c[0], &json!({"type": "ping"}));
    assert_eq!(r[0]["type"], "pong", "still connected");
}

#[test]
fn without_history_channels_carry_no_offsets_and_history_is_refused() {
    let sh = shared(ServerConfig::default());
    let mut env = sh.env(0);
    let mut c = sessions(&mut env, 1);
    let r = ask(
        &mut env,
        &mut c[0],
        &json!({"type": "subscribe", "channel": "h", "recover": {"offset": 3, "epoch": "e"}}),
    );
    assert_eq!(r[0]["recovered"], false);
    assert!(r[0].get("offset").is_none() && r[0].get("epoch").is_none());
    let r = ask(
        &mut env,
        &mut c[0],
        &json!({"type": "publish", "channel": "h", "content": 1}),
    );
    assert!(r[0].get("offset").is_none());
    let r = ask(
        &mut env,
        &mut c[0],
        &json!({"type": "history", "channel": "h", "id": 2}),
    );
    assert_eq!((code(&r[0]), r[0]["id"].clone()), ("no_history", json!(2)));
    assert_eq!(r[0]["request_type"], "history");
    let r = ask(&mut env, &mut c[0], &json!({"type": "ping"}));
    assert_eq!(r[0]["type"], "pong");
}

#[test]
fn a_live_subscriber_keeps_receiving_after_the_channel_restarts_under_a_new_epoch() {
    let sh = with_history(10, 1);
    let mut env = sh.env(0);
    let mut c = sessions(&mut env, 2);
    let publish = |n: u64| json!({"type": "publish", "channel": "h", "content": n});
    for n in 1..=3 {
        ask(&mut env, &mut c[0], &publish(n));
    }
    // Subscribed at offset 3: live delivery starts after it.
    let r = ask(
        &mut env,
        &mut c[1],
        &json!({"type": "subscribe", "channel": "h"}),
    );
    assert_eq!(r[0]["offset"], 3);
    fan_out(&sh, 0, &mut env, &mut c);
    assert!(offsets(&take(&mut env, &mut c[1])).is_empty());
    // Past the TTL the log is dropped; the next publication is offset 1 of
    // a new epoch, and the subscriber, still live, gets it.
    env.now_ms += 60_000;
    let r = ask(&mut env, &mut c[0], &publish(4));
    assert_eq!(r[0]["offset"], 1);
    fan_out(&sh, 0, &mut env, &mut c);
    let got = take(&mut env, &mut c[1]);
    assert_eq!(
        (offsets(&got), got[0]["content"].clone()),
        (vec![1], json!(4))
    );
}
