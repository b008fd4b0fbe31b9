//! Drives one TLS [`Session`] with arbitrary bytes, in memory, for the
//! `tls_session` fuzz target (fuzz/fuzz_targets/tls_session.rs) and the
//! property test below, which runs the same function in `cargo test`.
//!
//! Built only for tests and with the `fuzzing` feature (which the fuzz
//! crate turns on); not part of the API.
//!
//! The input's first byte picks what the random bytes are:
//! - **0, first flight**: the ciphertext of a new connection, as it
//!   arrives (a ClientHello is expected; plain text, garbage, anything);
//! - **1, after a valid prefix**: a real client's ClientHello, cut at a
//!   point the next two bytes choose (all of it included), then the bytes;
//! - **2, after the handshake, as records**: a real client finishes the
//!   handshake, then the bytes arrive as ciphertext (forged records);
//! - **3, after the handshake, as plaintext**: the real client encrypts
//!   the bytes, so they reach the frame decoder and the dispatcher through
//!   TLS.
//!
//! The second byte shapes the delivery: the size of each piece handed to
//! `handle_data`, whether sends complete in two halves (a short send), and
//! whether a second passes between pieces (the 1 s tick, so handshake,
//! drain and linger deadlines fire).
//!
//! Besides "no panic", it checks:
//! - after the handshake (modes 2 and 3), everything the server sends is
//!   TLS the real client accepts: records it decrypts, or an alert (before
//!   it, the random bytes may have made a ClientHello the real client did
//!   not send, so its view proves nothing);
//! - after the handshake (modes 2 and 3), the plaintext the client reads
//!   is whole frames, each a JSON object with a string `type`;
//! - the session either keeps going (still open, reading) or ends
//!   cleanly: after the peer's EOF and the deadlines it is closed, holds
//!   no output, is no longer counted as connected or as a handshake in
//!   progress, and a failed handshake was counted exactly once (never for
//!   a connection whose handshake finished).

use super::counters::ShardCounters;
use super::fake::FakeHost;
use super::{Action, Env, Phase, Session, SessionConfig, Transport, CLOSE_GRACE_MS};
use crate::io::SendBatch;
use std::io::{Read, Write};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// A server and a client configuration that trust each other: a fresh
/// self-signed certificate for "localhost" (rcgen), ringcast's providers
/// and suite order, TLS 1.2 and 1.3.
pub struct TlsFuzzConfig {
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
}

impl TlsFuzzConfig {
    /// Makes the certificate and both configurations (once per process is
    /// enough: every run gets new connections).
    pub fn new() -> TlsFuzzConfig {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
            .expect("rcgen makes a certificate");
        let cert = ck.cert.der().clone();
        let key = rustls::pki_types::PrivateKeyDer::try_from(ck.signing_key.serialize_der())
            .expect("rcgen's key is PKCS#8");
        // As the server builds it (src/server/tls.rs).
        let mut server = rustls::ServerConfig::builder_with_provider(crate::tls::server_provider())
            .with_protocol_versions(rustls::ALL_VERSIONS)
            .expect("the provider supports both versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .expect("the key matches");
        server.ignore_client_order = true;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).expect("a usable root");
        let client = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_protocol_versions(rustls::ALL_VERSIONS)
            .expect("the provider supports both versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        TlsFuzzConfig {
            server: Arc::new(server),
            client: Arc::new(client),
        }
    }
}

impl Default for TlsFuzzConfig {
    fn default() -> Self {
        TlsFuzzConfig::new()
    }
}

/// Piece sizes the second input byte chooses from (its low 3 bits).
const PIECES: [usize; 8] = [1, 5, 64, 517, 4096, 16 * 1024 + 5, 100_000, usize::MAX];

/// The session, its shard environment and a real client, in memory.
struct Rig<'a> {
    env: Env<'a, FakeHost>,
    s: Session,
    client: rustls::ClientConnection,
    /// The client has seen an error (the server's alert): it reads no more.
    client_failed: bool,
    /// Whether the client reads what the server sends, and whether only
    /// an alert may make it fail (see the module doc).
    client_reads: bool,
    strict: bool,
    /// Plaintext the client decrypted, not yet checked as frames.
    plain: Vec<u8>,
    /// Sends complete in two halves.
    short_sends: bool,
    /// The backend reported `Close`.
    closed: bool,
}

impl Rig<'_> {
    /// Carries out what the session asks (actions, sends) until it asks
    /// nothing more; what it sends goes to the client.
    fn pump(&mut self) {
        loop {
            let mut progressed = false;
            while let Some(a) = self.s.poll_action() {
                progressed = true;
                if a == Action::Close {
                    self.closed = true;
                }
            }
            if let Some(batch) = self.s.poll_transmit(&mut self.env) {
                progressed = true;
                self.send(batch);
            }
            if !progressed {
                return;
            }
        }
    }

    /// One send: all of it, or (short sends) the first half, then the
    /// rest as the next batch.
    fn send(&mut self, batch: SendBatch) {
        let bytes: Vec<u8> = batch.slices().flatten().copied().collect();
        let n = if self.short_sends && bytes.len() > 1 {
            bytes.len() / 2
        } else {
            bytes.len()
        };
        self.s.handle_sent(&mut self.env, batch, Ok(n));
        self.client_reads_bytes(&bytes[..n]);
    }

    /// Ciphertext from the server, read by the client. The server must
    /// only ever send TLS the client accepts, or an alert that ends it.
    fn client_reads_bytes(&mut self, mut bytes: &[u8]) {
        while self.client_reads && !bytes.is_empty() && !self.client_failed {
            match self.client.read_tls(&mut bytes) {
                Ok(0) => return, // after close_notify the client reads no more
                Ok(_) => {}
                Err(e) if self.strict => panic!("client read_tls: {e}"),
                Err(_) => self.client_failed = true,
            }
            match self.client.process_new_packets() {
                Ok(_) => {}
                Err(rustls::Error::AlertReceived(_)) => self.client_failed = true,
                Err(e) if self.strict => panic!("the server sent TLS the client refuses: {e}"),
                Err(_) => self.client_failed = true,
            }
            let _ = self.client.reader().read_to_end(&mut self.plain);
        }
    }

    /// What the client has to send (handshake messages, records).
    fn client_output(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        while self.client.wants_write() {
            self.client.write_tls(&mut out).expect("writing into a Vec");
        }
        out
    }

    /// Hands `bytes` to the session in pieces of `piece` bytes, as the
    /// shard would: only while it wants to read (after flushing, as a
    /// client reading its replies lets it resume), sending after each.
    fn feed(&mut self, bytes: &[u8], piece: usize, tick: bool) {
        for chunk in bytes.chunks(piece.max(1)) {
            if !self.s.wants_read() {
                self.pump();
                if !self.s.wants_read() {
                    return; // closed, or closing with the peer gone
                }
            }
            let mut chunk = chunk.to_vec();
            self.s.handle_data(&mut self.env, &mut chunk);
            self.pump();
            if tick {
                self.advance(1000);
            }
        }
    }

    fn advance(&mut self, ms: u64) {
        self.env.now_ms += ms;
        self.env.now_mono_ms += ms;
        self.s.handle_tick(&mut self.env);
        self.pump();
    }

    /// A full handshake with the real client.
    fn handshake(&mut self) {
        for _ in 0..4 {
            let hello = self.client_output();
            self.feed(&hello, usize::MAX, false);
        }
        assert!(!self.client.is_handshaking(), "the handshake finishes");
        assert!(self.s.is_established(), "established after the handshake");
    }

    /// Checks the plaintext the client read: whole frames, each a JSON
    /// object with a string `type` (a partial last frame is allowed: the
    /// server may still be sending it when the input ends).
    fn check_frames(&self) {
        let mut rest = &self.plain[..];
        while rest.len() >= 4 {
            let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
            let Some(body) = rest.get(4..4 + len) else {
                return;
            };
            let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_else(|e| {
                panic!(
                    "a reply is not JSON ({e}): {}",
                    String::from_utf8_lossy(body)
                )
            });
            assert!(v.get("type").is_some_and(|t| t.is_string()), "no type: {v}");
            rest = &rest[4 + len..];
        }
    }
}

/// Runs one input (see the module doc).
pub fn drive_tls(cfg: &TlsFuzzConfig, input: &[u8]) {
    let (mode, knobs, data) = match input {
        [m, k, rest @ ..] => (m % 4, *k, rest),
        [m] => (m % 4, 0, &[][..]),
        [] => (0, 0, &[][..]),
    };
    let piece = PIECES[usize::from(knobs & 7)];
    let short_sends = knobs & 8 != 0;
    let tick = knobs & 16 != 0;

    let config = SessionConfig::default();
    let counters = ShardCounters::default();
    let mut env = Env::new(config.clone(), 0, &counters, FakeHost::default(), true);
    env.now_ms = 1_700_000_000_000;
    env.now_mono_ms = 0;
    let conn = rustls::ServerConnection::new(cfg.server.clone()).expect("a server connection");
    let s = Session::new(
        &mut env,
        0,
        "127.0.0.1:5000".into(),
        None,
        Transport::Tls(Box::new(conn)),
    );
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let client = rustls::ClientConnection::new(cfg.client.clone(), name).expect("a client");
    let mut rig = Rig {
        env,
        s,
        client,
        client_failed: false,
        client_reads: mode != 0,
        strict: false,
        plain: Vec::new(),
        short_sends,
        closed: false,
    };

    match mode {
        0 => rig.feed(data, piece, tick),
        1 => {
            let hello = rig.client_output();
            let (cut, rest) = match data {
                [a, b, rest @ ..] => (usize::from(u16::from_le_bytes([*a, *b])), rest),
                _ => (usize::MAX, data),
            };
            let cut = cut.min(hello.len());
            let mut first = hello[..cut].to_vec();
            first.extend_from_slice(rest);
            rig.feed(&first, piece, tick);
        }
        2 => {
            rig.handshake();
            rig.strict = true;
            rig.feed(data, piece, tick);
        }
        _ => {
            rig.handshake();
            rig.strict = true;
            for chunk in data.chunks(piece.clamp(1, 1 << 20)) {
                rig.client
                    .writer()
                    .write_all(chunk)
                    .expect("client plaintext");
                let records = rig.client_output();
                rig.feed(&records, usize::MAX, tick);
            }
        }
    }
    if mode == 3 {
        assert!(!rig.client_failed, "no alert for valid records");
        rig.check_frames();
    }

    // Either still going, or ending cleanly: the peer closes, the
    // deadlines pass, and the session must be closed with nothing left.
    if rig.s.phase() == Phase::Open {
        assert!(rig.s.wants_read() || rig.s.pending() > 0, "open but stuck");
    }
    if !rig.closed {
        rig.s.handle_eof(&mut rig.env);
        rig.pump();
    }
    for _ in 0..3 {
        if rig.closed {
            break;
        }
        let grace = CLOSE_GRACE_MS.max(config.tls_handshake_timeout_secs * 1000);
        rig.advance(grace);
    }
    assert!(rig.closed, "closed after EOF and the deadlines");
    assert_eq!(rig.s.phase(), Phase::Closed);
    assert_eq!(rig.s.pending(), 0, "nothing held after the close");
    assert_eq!(rig.env.tls_handshakes, 0, "no handshake left in progress");
    let counters = &counters;
    assert_eq!(counters.connected.load(Ordering::Relaxed), 0);
    let failures: u64 = counters
        .tls_handshake_failures
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum();
    let expected = if mode >= 2 { 0 } else { 1 };
    assert_eq!(
        failures, expected,
        "handshake failures counted (mode {mode})"
    );
}

#[cfg(test)]
mod tests {
    use super::{drive_tls, TlsFuzzConfig};
    use proptest::prelude::*;
    use std::sync::OnceLock;

    fn cfg() -> &'static TlsFuzzConfig {
        static CFG: OnceLock<TlsFuzzConfig> = OnceLock::new();
        CFG.get_or_init(TlsFuzzConfig::new)
    }

    /// A frame: 4-byte big-endian length, then the payload.
    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut v = (payload.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn known_inputs_in_every_mode_and_delivery() {
        let echo = frame(br#"{"type":"echo","content":"hi","id":1}"#);
        let mut requests = echo.repeat(40);
        requests.extend(frame(b"not json"));
        requests.extend(frame(br#"{"type":"ping"}"#));
        requests.extend([0, 0, 0, 0]); // an empty frame: an error, then the close
        let bodies: [&[u8]; 5] = [
            b"",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            &[22, 3, 1, 0, 5, 1, 0, 0, 1, 0], // a truncated ClientHello
            &[23, 3, 3, 0, 20, 1, 2, 3],      // an application-data record, too early
            &requests,
        ];
        for mode in 0..4u8 {
            for knobs in [0u8, 3, 7, 8 | 1, 16 | 4, 31] {
                for body in bodies {
                    let mut input = vec![mode, knobs];
                    if mode == 1 {
                        input.extend([0xff, 0xff]); // the whole ClientHello
                    }
                    input.extend_from_slice(body);
                    drive_tls(cfg(), &input);
                }
            }
        }
        // A ClientHello cut short at every length from 0 to 300.
        for cut in 0..300u16 {
            let mut input = vec![1, 0];
            input.extend(cut.to_le_bytes());
            drive_tls(cfg(), &input);
        }
    }

    /// The fuzz target's seed corpus runs here too (and any crash input
    /// added to it later).
    #[test]
    fn the_seed_corpus() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/tls_session");
        let mut n = 0;
        for entry in std::fs::read_dir(dir).expect("the seed corpus") {
            let path = entry.unwrap().path();
            drive_tls(cfg(), &std::fs::read(&path).unwrap());
            n += 1;
        }
        assert!(n >= 10, "{n} seeds");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn random_bytes_never_break_a_tls_session(
            mode in 0u8..4,
            knobs in any::<u8>(),
            body in proptest::collection::vec(any::<u8>(), 0..3000),
        ) {
            let mut input = vec![mode, knobs];
            input.extend(body);
            drive_tls(cfg(), &input);
        }

        /// Random bytes after a TLS record header (content type, version)
        /// get past the first check, into the record layer.
        #[test]
        fn random_records_in_the_first_flight(
            kind in prop::sample::select(vec![20u8, 21, 22, 23, 24]),
            knobs in any::<u8>(),
            len in any::<u16>(),
            body in proptest::collection::vec(any::<u8>(), 0..2000),
        ) {
            let mut input = vec![0, knobs, kind, 3, 3];
            input.extend(len.to_be_bytes());
            input.extend(body);
            drive_tls(cfg(), &input);
        }
    }
}
