//! Client behaviour that needs a misbehaving peer: bad bytes, silence, slow
//! answers, no ids. The peers are std TcpListener threads in this process.

mod support;

use ringcast::client::{Client, ClientError, Event};
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::fake::{
    bad_server, client_config, heartbeat_client, FakeOptions, FakeServer, SilentPeer, LIMIT,
};
use support::wait::{next_matching, wait_until};
use support::wire::frame_bytes;

#[test]
fn heartbeat_detects_a_peer_that_accepts_and_never_answers() {
    let peer = SilentPeer::start();
    let c = heartbeat_client(peer.addr(), Duration::from_millis(100));
    let events = c.messages();
    let t = Instant::now();
    let reason = next_matching(&events, LIMIT, "a Disconnected event", |e| match e {
        Event::Disconnected { reason } => Some(reason),
        _ => None,
    });
    assert!(reason.contains("heartbeat"), "{reason}");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert!(!c.is_connected());
    match c.ping() {
        Err(ClientError::Disconnected { .. }) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn silent_peer_without_heartbeat_times_requests_out() {
    let peer = SilentPeer::start();
    let c = Client::builder()
        .request_timeout(Duration::from_millis(150))
        .connect(peer.addr())
        .unwrap();
    let t = Instant::now();
    assert!(matches!(c.ping(), Err(ClientError::Timeout(_))));
    assert!(t.elapsed() < Duration::from_secs(2));
    // Authentication against a silent peer times out too.
    let r = Client::builder()
        .request_timeout(Duration::from_millis(150))
        .auth_token("t")
        .connect(peer.addr());
    assert!(matches!(r, Err(ClientError::Timeout(_))), "{r:?}");
}

/// Sends one ping to a server that answers with `reply`; returns the error.
fn ping_bad(reply: Vec<u8>, then_close: bool) -> ClientError {
    let addr = bad_server(reply, then_close);
    let c = Client::connect_with(addr, client_config()).unwrap();
    let events = c.messages();
    let err = c.ping().expect_err("bad bytes must fail the request");
    // The connection is reported lost, and the client stays usable (fails cleanly).
    next_matching(&events, LIMIT, "a Disconnected event", |e| {
        matches!(e, Event::Disconnected { .. }).then_some(())
    });
    assert!(c.ping().is_err());
    err
}

#[test]
fn bad_bytes_from_the_server_are_errors_not_panics() {
    let e = ping_bad(frame_bytes(b"this is not json{"), false);
    assert!(
        matches!(&e, ClientError::Protocol(m) if m.contains("not valid JSON")),
        "{e:?}"
    );

    let e = ping_bad(frame_bytes(b"[1,2,3]"), false);
    assert!(
        matches!(&e, ClientError::Protocol(m) if m.contains("not a JSON object")),
        "{e:?}"
    );

    let e = ping_bad(
        frame_bytes(b"{\"type\":\"pong\",\"x\":\"\xff\xfe\"}"),
        false,
    );
    assert!(matches!(e, ClientError::Protocol(_)), "{e:?}");

    let e = ping_bad(vec![0, 0, 0, 0], false);
    assert!(
        matches!(&e, ClientError::Protocol(m) if m.contains("empty")),
        "{e:?}"
    );

    let e = ping_bad(vec![0x7f, 0xff, 0xff, 0xff, b'{'], false);
    assert!(
        matches!(
            e,
            ClientError::FrameTooLarge {
                len: 0x7fff_ffff,
                ..
            }
        ),
        "{e:?}"
    );

    let mut truncated = frame_bytes(br#"{"type":"pong","id":1,"padding":"......"}"#);
    truncated.truncate(20);
    let e = ping_bad(truncated, true);
    assert!(
        matches!(&e, ClientError::Disconnected { reason } if reason.contains("middle of a frame")),
        "{e:?}"
    );

    // A well-formed answer of the wrong type for our id.
    let e = ping_bad(
        frame_bytes(br#"{"type":"echo_response","id":1,"content":"?"}"#),
        true,
    );
    assert!(
        matches!(&e, ClientError::Protocol(m) if m.contains("expected pong")),
        "{e:?}"
    );

    // Random garbage, many times: never a panic. Half of it framed
    // properly, so that the JSON parser sees it.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..24 {
        let mut junk = Vec::new();
        for _ in 0..64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            junk.push(x as u8);
        }
        if i % 2 == 0 {
            junk[0] = b'{';
            junk = frame_bytes(&junk);
        }
        let _ = ping_bad(junk, true);
    }
}

#[test]
fn a_broadcast_between_a_request_and_its_answer_goes_to_the_callback() {
    let server = FakeServer::start(FakeOptions::default());
    let a = Client::connect_with(server.addr(), client_config()).unwrap();
    let b = Client::connect_with(server.addr(), client_config()).unwrap();
    let log: Arc<Mutex<Vec<String>>> = Arc::default();
    let l2 = log.clone();
    a.set_message_callback(move |ev| {
        if let Event::Message(m) = ev {
            l2.lock().unwrap().push(format!("callback {}", m.kind()));
        }
    });
    let before = server.messages();
    std::thread::scope(|s| {
        let slow = s.spawn(|| {
            let m = a.send_custom("slow", json!({"ms": 400})).unwrap();
            log.lock().unwrap().push(format!("answer {}", m.kind()));
        });
        // The server holds A's answer back (400 ms from receiving it); B
        // broadcasts meanwhile.
        wait_until(LIMIT, "the slow request at the server", || {
            server.messages() > before
        });
        assert_eq!(b.broadcast("in between").unwrap(), 1);
        slow.join().unwrap();
    });
    assert_eq!(
        *log.lock().unwrap(),
        ["callback broadcast_message", "answer slow_ok"]
    );
}

#[test]
fn a_timed_out_request_does_not_steal_or_leak_its_late_answer() {
    let server = FakeServer::start(FakeOptions::default());
    let c = Client::builder()
        .request_timeout(Duration::from_millis(100))
        .connect(server.addr())
        .unwrap();
    let events = c.messages();
    assert!(matches!(
        c.send_custom("slow", json!({"ms": 300})),
        Err(ClientError::Timeout(_))
    ));
    // The next answer is the ping's, not the late slow_ok.
    std::thread::sleep(Duration::from_millis(300));
    c.ping().unwrap();
    assert!(events.try_recv().is_err(), "late answers are dropped");
    assert_eq!(
        c.send_custom("fake_custom", json!({"data": {"x": [1, 2]}}))
            .unwrap()
            .get("data"),
        Some(&json!({"x": [1, 2]}))
    );
}

#[test]
fn servers_that_do_not_copy_ids_still_work_one_request_at_a_time() {
    let server = FakeServer::start(FakeOptions {
        no_ids: true,
        ..FakeOptions::default()
    });
    let a = Client::connect_with(server.addr(), client_config()).unwrap();
    let b = Client::connect_with(server.addr(), client_config()).unwrap();
    let got: Arc<Mutex<Vec<String>>> = Arc::default();
    let g2 = got.clone();
    a.set_message_callback(move |ev| {
        if let Event::Message(m) = ev {
            g2.lock().unwrap().push(m.kind().to_owned());
        }
    });
    a.ping().unwrap();
    b.ping().unwrap(); // b's connection is registered server-side
    assert_eq!(a.echo("no ids").unwrap(), "no ids");
    assert!(a.get_stats().unwrap().connected_clients >= 2);
    b.broadcast("hey").unwrap();
    wait_until(LIMIT, "the broadcast", || !got.lock().unwrap().is_empty());
    assert_eq!(a.echo("after").unwrap(), "after");
    assert_eq!(*got.lock().unwrap(), ["broadcast_message"]);
}

#[test]
fn a_connection_dropped_mid_request_fails_the_request() {
    let server = FakeServer::start(FakeOptions::default());
    let c = Client::connect_with(server.addr(), client_config()).unwrap();
    let t = Instant::now();
    match c.send_custom("close", json!({})) {
        Err(ClientError::Disconnected { reason }) => assert!(reason.contains("closed"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert!(t.elapsed() < Duration::from_secs(2));
    assert!(!c.is_connected());
}

#[test]
fn the_message_iterator_ends_when_the_client_is_closed() {
    let server = FakeServer::start(FakeOptions::default());
    let c = Client::connect_with(server.addr(), client_config()).unwrap();
    let rx = c.messages();
    c.disconnect();
    assert!(matches!(
        rx.recv_timeout(LIMIT),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected)
    ));
    assert!(c.messages().recv_timeout(LIMIT).is_err());
}

#[test]
fn a_panicking_callback_does_not_stop_the_receiver() {
    let server = FakeServer::start(FakeOptions::default());
    let a = Client::connect_with(server.addr(), client_config()).unwrap();
    let b = Client::connect_with(server.addr(), client_config()).unwrap();
    a.ping().unwrap();
    a.set_message_callback(|_| panic!("callback bug (expected in this test)"));
    let rx = a.messages();
    assert_eq!(b.broadcast("boom").unwrap(), 1);
    assert!(matches!(rx.recv_timeout(LIMIT), Ok(Event::Message(_))));
    assert_eq!(a.echo("still alive").unwrap(), "still alive");
}
