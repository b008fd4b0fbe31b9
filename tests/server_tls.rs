//! TLS against a real server on 127.0.0.1 (on the backend
//! RINGCAST_IO_BACKEND names): our client, mutual TLS, key types, TLS
//! versions, certificate reload, hostile handshakes and their counters.
//! Certificates are made at test time (tests/support/tls.rs).

mod support;

use ringcast::client::{Client, ClientError, TlsOptions};
use ringcast::tls::TlsVersion;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;
use support::server::spawn;
use support::tls::{connect, tls_addr, Pki};
use support::wait::wait_until;

use ringcast::session::tls::HandshakeFailure;

/// Failed handshakes of `why` so far.
fn failures(h: &ringcast::server::ServerHandle, why: HandshakeFailure) -> u64 {
    h.totals().tls_handshake_failures[why.index()]
}

#[test]
fn ping_echo_broadcast_and_stats_over_tls_beside_plain() {
    let pki = Pki::new();
    let h = spawn(pki.server(2));
    let a = connect(&h, pki.client_options()).expect("TLS client connects");
    let b = connect(&h, pki.client_options()).expect("TLS client connects");
    let plain = Client::connect(h.local_addr()).expect("plain still served");
    a.ping().unwrap();
    assert_eq!(a.echo("over TLS").unwrap(), "over TLS");
    let big = "x".repeat(200_000); // many records, several sends
    assert_eq!(a.echo(&big).unwrap(), big);
    let rx = b.messages();
    let prx = plain.messages();
    // b's client is done with the handshake once it has sent its Finished;
    // the server counts b as a recipient only once it has read it (and the
    // plain client once its shard has accepted it): a reply proves both.
    // Without these, 1 of about 10 runs here counted 1 recipient.
    b.ping().unwrap();
    plain.ping().unwrap();
    assert_eq!(a.broadcast("to all").unwrap(), 2);
    for r in [&rx, &prx] {
        let m =
            support::wait::next_matching(r, Duration::from_secs(5), "the broadcast", |e| match e {
                ringcast::client::Event::Message(m) if m.kind() == "broadcast_message" => {
                    Some(m.get_str("content").map(str::to_owned))
                }
                _ => None,
            });
        assert_eq!(m.as_deref(), Some("to all"));
    }
    let stats = plain.get_stats().unwrap();
    assert_eq!(stats.connected_clients, 3);
    assert_eq!(stats.tls_handshake_failures.values().sum::<u64>(), 0);
    assert_eq!(stats.tls_handshake_failures.len(), 7, "{stats:?}");
    a.disconnect();
    b.disconnect();
    wait_until(Duration::from_secs(5), "the TLS clients are gone", || {
        h.totals().connected == 1
    });
}

#[test]
fn rsa_ecdsa_and_ed25519_server_keys() {
    for alg in [
        &rcgen::PKCS_RSA_SHA256,
        &rcgen::PKCS_ECDSA_P384_SHA384,
        &rcgen::PKCS_ED25519,
    ] {
        let pki = Pki::with_server_key(alg);
        let h = spawn(pki.server(1));
        let c = connect(&h, pki.client_options()).unwrap_or_else(|e| panic!("{alg:?}: {e}"));
        assert_eq!(c.echo("k").unwrap(), "k");
    }
}

#[test]
fn tls_only_server_and_the_server_name() {
    let pki = Pki::new();
    let h = spawn(pki.server(1).plain(false));
    assert_eq!(h.local_addr(), tls_addr(&h));
    // Verified against the name the certificate carries ...
    let named = TlsOptions {
        server_name: Some("localhost".into()),
        ..pki.client_options()
    };
    connect(&h, named).unwrap().ping().unwrap();
    // ... and refused for a name it does not.
    let wrong = TlsOptions {
        server_name: Some("example.com".into()),
        ..pki.client_options()
    };
    let e = connect(&h, wrong)
        .err()
        .unwrap_or_else(|| panic!("wrong name refused"));
    assert!(e.to_string().contains("TLS handshake failed"), "{e}");
    // A client that trusts another CA refuses the server.
    let stranger = Pki::new();
    let e = connect(&h, stranger.client_options())
        .err()
        .unwrap_or_else(|| panic!("untrusted"));
    assert!(e.to_string().contains("certificate"), "{e}");
}

#[test]
fn mutual_tls_accepts_known_clients_and_refuses_others() {
    let pki = Pki::new();
    let h = spawn(pki.server(1).tls_client_ca(Some(pki.ca.clone())));
    connect(&h, pki.mtls_options()).unwrap().ping().unwrap();
    // No certificate: the server refuses the handshake (TLS 1.3 reports it
    // after the client's Finished, so the first request fails instead).
    let refused = |opts: TlsOptions| match connect(&h, opts) {
        Err(_) => {}
        Ok(c) => assert!(
            c.ping().is_err(),
            "a client without a valid certificate was served"
        ),
    };
    refused(pki.client_options());
    let (cert, key) = pki.write_stranger_client();
    refused(TlsOptions {
        cert: Some(cert),
        key: Some(key),
        ..pki.client_options()
    });
    wait_until(Duration::from_secs(5), "both counted", || {
        failures(&h, HandshakeFailure::ClientCertificate) == 2
    });
}

#[test]
fn mutual_tls_and_the_auth_token_are_both_required() {
    let pki = Pki::new();
    let h = spawn(
        pki.server(1)
            .tls_client_ca(Some(pki.ca.clone()))
            .auth_token(Some("s3cret".into())),
    );
    let no_token = connect(&h, pki.mtls_options()).unwrap();
    let e = no_token
        .ping()
        .err()
        .unwrap_or_else(|| panic!("a certificate alone is not enough"));
    assert!(
        matches!(
            e,
            ClientError::Server { .. } | ClientError::Disconnected { .. }
        ),
        "{e}"
    );
    let both = Client::builder()
        .tls(pki.mtls_options())
        .auth_token("s3cret")
        .connect(tls_addr(&h))
        .unwrap();
    both.ping().unwrap();
}

#[test]
fn tls13_only_refuses_a_tls12_client() {
    let pki = Pki::new();
    let h = spawn(pki.server(1).tls_min_version(TlsVersion::V1_3));
    connect(&h, pki.client_options()).unwrap().ping().unwrap();
    let config = rustls::ClientConfig::builder_with_provider(ringcast::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(ringcast::tls::load_roots(&pki.ca).unwrap())
        .with_no_client_auth();
    assert!(handshake(&h, Arc::new(config)).is_err());
    wait_until(Duration::from_secs(5), "counted as incompatible", || {
        failures(&h, HandshakeFailure::Incompatible) == 1
    });
}

#[test]
fn the_server_picks_aes_128_gcm_whatever_the_clients_order() {
    let pki = Pki::new();
    let h = spawn(pki.server(1));
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        // rustls's client lists AES-256-GCM first; the server decides.
        let config = rustls::ClientConfig::builder_with_provider(ringcast::tls::provider())
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(ringcast::tls::load_roots(&pki.ca).unwrap())
            .with_no_client_auth();
        let sock = TcpStream::connect(tls_addr(&h)).unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut sock = sock;
        while conn.is_handshaking() {
            conn.complete_io(&mut sock).unwrap();
        }
        let suite = conn.negotiated_cipher_suite().unwrap().suite();
        let want = if version.version == rustls::ProtocolVersion::TLSv1_3 {
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
        } else {
            rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        };
        assert_eq!(suite, want, "{:?}", version.version);
    }
}

/// Handshakes with `config` and returns the leaf certificate served.
fn handshake(
    h: &ringcast::server::ServerHandle,
    config: Arc<rustls::ClientConfig>,
) -> Result<CertificateDer<'static>, std::io::Error> {
    let sock = TcpStream::connect(tls_addr(h))?;
    sock.set_read_timeout(Some(Duration::from_secs(5)))?;
    let name = ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(config, name).unwrap();
    let mut s = rustls::StreamOwned::new(conn, sock);
    // A ping completes the handshake and proves the session works.
    s.write_all(&support::wire::frame(&serde_json::json!({"type": "ping"})))?;
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    let mut body = vec![0; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body)?;
    let leaf = s.conn.peer_certificates().expect("a certificate")[0].clone();
    Ok(leaf.into_owned())
}

fn leaf_of(path: &std::path::Path) -> CertificateDer<'static> {
    CertificateDer::pem_file_iter(path)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
}

#[test]
fn reload_switches_certificates_for_new_handshakes_only() {
    let mut pki = Pki::new();
    let h = spawn(pki.server(2));
    let trust = pki.client_options().client_config().unwrap();
    let first = leaf_of(&pki.cert);
    assert_eq!(handshake(&h, trust.clone()).unwrap(), first);
    let live = connect(&h, pki.client_options()).unwrap();

    // New files at the same paths, then a reload.
    let (cert, key) = (pki.cert.clone(), pki.key.clone());
    pki.write_server("renewed", &rcgen::PKCS_ECDSA_P256_SHA256, &cert, &key);
    let second = leaf_of(&pki.cert);
    assert_ne!(first, second);
    h.reload_tls(&tls_config(&pki)).expect("reload");
    assert_eq!(handshake(&h, trust.clone()).unwrap(), second);
    // The connection made before the reload is untouched.
    assert_eq!(live.echo("still here").unwrap(), "still here");

    // A bad file: the reload fails, the current certificate stays.
    std::fs::write(&pki.key, "not a key").unwrap();
    let e = h
        .reload_tls(&tls_config(&pki))
        .err()
        .unwrap_or_else(|| panic!("bad key refused"));
    assert!(e.to_string().contains("server.key"), "{e}");
    assert_eq!(handshake(&h, trust).unwrap(), second);
}

/// The server configuration naming `pki`'s files (what a reload reads).
fn tls_config(pki: &Pki) -> ringcast::server::ServerConfig {
    ringcast::server::ServerConfig {
        tls_addr: Some("127.0.0.1:0".parse().unwrap()),
        tls_cert: Some(pki.cert.clone()),
        tls_key: Some(pki.key.clone()),
        ..Default::default()
    }
}

#[test]
fn bad_tls_files_stop_the_server_at_build_with_the_file_named() {
    let pki = Pki::new();
    std::fs::write(&pki.key, "-----BEGIN NOTHING-----\n").unwrap();
    let e = support::server::build(pki.server(1))
        .err()
        .unwrap_or_else(|| panic!("refused"));
    assert!(e.to_string().contains("server.key"), "{e}");
    let missing = support::server::builder(1)
        .tls_addr(Some("127.0.0.1:0".parse().unwrap()))
        .tls_cert(Some("/nonexistent/cert.pem".into()))
        .tls_key(Some(pki.key.clone()));
    let e = support::server::build(missing)
        .err()
        .unwrap_or_else(|| panic!("refused"));
    assert!(e.to_string().contains("/nonexistent/cert.pem"), "{e}");
    let half = support::server::builder(1).tls_addr(Some("127.0.0.1:0".parse().unwrap()));
    let e = support::server::build(half)
        .err()
        .unwrap_or_else(|| panic!("refused"));
    assert!(e.to_string().contains("tls_cert"), "{e}");
}

/// Reads until the server closes; returns what it sent.
fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if support::wire::is_reset(&e) => return got,
            Err(e) => panic!("the server neither answered nor closed: {e}"),
        }
    }
}

#[test]
fn plain_text_and_garbage_on_the_tls_port_get_an_alert_and_are_closed() {
    let pki = Pki::new();
    let h = spawn(pki.server(1));
    let survivor = connect(&h, pki.client_options()).unwrap();
    let inputs: [&[u8]; 3] = [
        &support::wire::frame(&serde_json::json!({"type": "ping"})),
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        &[0x16, 0x03, 0x01, 0xff, 0xff, 0xde, 0xad], // a record longer than TLS allows
    ];
    for input in inputs {
        let mut s = TcpStream::connect(tls_addr(&h)).unwrap();
        s.write_all(input).unwrap();
        let got = read_to_close(&mut s);
        // A TLS alert record: content type 21.
        assert_eq!(got.first(), Some(&21), "no alert for {input:?}: {got:?}");
    }
    assert_eq!(survivor.echo("unharmed").unwrap(), "unharmed");
    wait_until(Duration::from_secs(5), "counted as malformed", || {
        failures(&h, HandshakeFailure::Malformed) == 3
    });
}

#[test]
fn a_truncated_client_hello_is_closed_when_the_peer_gives_up() {
    let pki = Pki::new();
    let h = spawn(pki.server(1));
    // The first bytes of a real ClientHello, then EOF.
    let hello = client_hello(&pki);
    let mut s = TcpStream::connect(tls_addr(&h)).unwrap();
    s.write_all(&hello[..hello.len() / 2]).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    read_to_close(&mut s);
    wait_until(Duration::from_secs(5), "counted as eof", || {
        failures(&h, HandshakeFailure::Eof) == 1
    });
    connect(&h, pki.client_options()).unwrap().ping().unwrap();
}

/// The bytes of a ClientHello our client sends.
fn client_hello(pki: &Pki) -> Vec<u8> {
    let config = pki.client_options().client_config().unwrap();
    let mut c =
        rustls::ClientConnection::new(config, ServerName::try_from("localhost").unwrap()).unwrap();
    let mut out = Vec::new();
    c.write_tls(&mut out).unwrap();
    out
}

#[test]
fn a_stalled_handshake_is_cut_at_the_deadline() {
    let pki = Pki::new();
    let h = spawn(pki.server(1).tls_handshake_timeout_secs(1));
    let hello = client_hello(&pki);
    let mut s = TcpStream::connect(tls_addr(&h)).unwrap();
    s.write_all(&hello[..10]).unwrap(); // and nothing more
    let t0 = std::time::Instant::now();
    read_to_close(&mut s);
    assert!(t0.elapsed() < Duration::from_secs(4), "{:?}", t0.elapsed());
    assert_eq!(failures(&h, HandshakeFailure::Timeout), 1);
}

#[test]
fn handshakes_in_progress_are_capped_per_shard() {
    let pki = Pki::new();
    let h = spawn(pki.server(1).tls_max_handshakes(2));
    let hello = client_hello(&pki);
    // Two stalled handshakes hold the cap ...
    let mut stalled: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut s = TcpStream::connect(tls_addr(&h)).unwrap();
            s.write_all(&hello[..10]).unwrap();
            s
        })
        .collect();
    wait_until(Duration::from_secs(5), "both accepted", || {
        h.totals().total_connections == 2
    });
    // ... so a third connection is closed at once.
    let mut third = TcpStream::connect(tls_addr(&h)).unwrap();
    assert!(read_to_close(&mut third).is_empty());
    assert_eq!(failures(&h, HandshakeFailure::Busy), 1);
    // Once they are gone, handshakes go through again.
    stalled.clear();
    wait_until(Duration::from_secs(5), "the stalled ones closed", || {
        failures(&h, HandshakeFailure::Eof) == 2
    });
    connect(&h, pki.client_options()).unwrap().ping().unwrap();
}

/// A fresh TLS 1.3 connection whose first frame is `get_stats`: rustls
/// sends that request in the same flight as the client's Finished, so the
/// server reads both at once. The answer must count the asking connection
/// (it used to say 0 in about 1 run of 4). Many connections, to catch it.
#[test]
fn get_stats_as_the_first_tls_frame_counts_its_own_connection() {
    const CONNECTIONS: usize = 60;
    let pki = Pki::new();
    let h = spawn(pki.server(2));
    let config = Arc::new(
        rustls::ClientConfig::builder_with_provider(ringcast::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(ringcast::tls::load_roots(&pki.ca).unwrap())
            .with_no_client_auth(),
    );
    let mut open = Vec::new();
    for i in 0..CONNECTIONS {
        let sock = TcpStream::connect(tls_addr(&h)).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        sock.set_nodelay(true).unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let conn = rustls::ClientConnection::new(config.clone(), name).unwrap();
        let mut s = rustls::StreamOwned::new(conn, sock);
        s.write_all(&support::wire::frame(
            &serde_json::json!({"type": "get_stats", "id": i}),
        ))
        .unwrap();
        let mut len = [0u8; 4];
        s.read_exact(&mut len).unwrap();
        let mut body = vec![0; u32::from_be_bytes(len) as usize];
        s.read_exact(&mut body).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["type"], "server_stats", "{v}");
        // Every earlier connection is still open, and so is this one.
        assert_eq!(
            v["connected_clients"],
            i as u64 + 1,
            "connection {i} was not counted when its first request was answered: {v}"
        );
        open.push(s);
    }
}
