//! The client library against a server in this process on 127.0.0.1.
//! Every wait is bounded: request timeouts are short and polls have limits.

mod support;

use ringcast::client::{
    Client, ClientConfig, ClientError, Event, Pool, ReconnectPolicy, ServerCode,
};
use ringcast::protocol::ErrorCode;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::fake::{client_config, heartbeat_client, LIMIT};
use support::server::Backend;
use support::wait::{next_matching, wait_until};

fn fast_reconnect(attempts: u32) -> ReconnectPolicy {
    ReconnectPolicy {
        enabled: true,
        max_attempts: attempts,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        multiplier: 2.0,
        jitter: 0.5,
    }
}

/// A client of `addr` that reconnects quickly (200 attempts), requests
/// waiting for the reconnection if `wait_for_reconnect`.
fn reconnecting_client(addr: SocketAddr, wait_for_reconnect: bool) -> Client {
    Client::connect_with(
        addr,
        ClientConfig {
            reconnect: fast_reconnect(200),
            wait_for_reconnect,
            ..client_config()
        },
    )
    .unwrap()
}

/// The next event that `pick` accepts, skipping others, within `LIMIT`.
fn next_event<T>(rx: &Receiver<Event>, mut pick: impl FnMut(&Event) -> Option<T>) -> T {
    next_matching(rx, LIMIT, "the event", |e| pick(&e))
}

#[test]
fn every_library_call() {
    let server = Backend::start();
    let c = Client::connect_with(server.addr(), client_config()).unwrap();
    assert!(c.is_connected());
    assert!(c.local_addr().is_some());

    let rtt = c.ping().unwrap();
    assert!(rtt < Duration::from_secs(5));

    let text = "hello ✓ \"quoted\" \\ back\nslash";
    assert_eq!(c.echo(text).unwrap(), text);
    assert_eq!(c.echo("").unwrap(), "");

    let other = Client::connect_with(server.addr(), client_config()).unwrap();
    other.ping().unwrap();
    assert_eq!(c.broadcast("to everyone").unwrap(), 1);

    let stats = c.get_stats().unwrap();
    assert!(stats.connected_clients >= 2, "{stats:?}");
    assert!(stats.total_messages >= 4, "{stats:?}");

    let ack = c.send_text("plain text").unwrap();
    assert_eq!(ack.kind(), "message_ack");
    assert!(ack.get_str("timestamp").is_some());

    match c.send_custom("no_such_type", json!({"a": 1})) {
        Err(ClientError::Server { code, .. }) => {
            assert_eq!(code, ServerCode::Known(ErrorCode::UnknownType))
        }
        other => panic!("{other:?}"),
    }
    let custom = c
        .send_custom("fake_custom", json!({"data": {"x": [1, 2], "s": "é"}}))
        .unwrap();
    assert_eq!(custom.kind(), "fake_custom_ok");
    assert_eq!(custom.get("data"), Some(&json!({"x": [1, 2], "s": "é"})));
    let raw = c.request("no_such_type", serde_json::Map::new()).unwrap();
    assert!(raw.is_error());
    assert_eq!(raw.get_str("code"), Some("unknown_type"));
    assert!(matches!(
        c.send_custom("x", json!([1, 2])),
        Err(ClientError::InvalidArgument(_))
    ));

    c.disconnect();
    assert!(!c.is_connected());
    assert!(matches!(c.ping(), Err(ClientError::Disconnected { .. })));
    c.disconnect(); // idempotent
    drop(other);
    server.stop();
}

#[test]
fn concurrent_requests_from_many_threads_are_correlated() {
    let server = Backend::start();
    let c = Client::connect_with(server.addr(), client_config()).unwrap();
    std::thread::scope(|s| {
        for t in 0..8 {
            let c = &c;
            s.spawn(move || {
                for i in 0..150 {
                    let content = format!("thread {t} request {i}");
                    assert_eq!(c.echo(&content).unwrap(), content);
                    if i % 10 == 0 {
                        c.ping().unwrap();
                    }
                }
            });
        }
    });
    server.stop();
}

#[test]
fn callback_gets_broadcasts_from_others_while_requests_are_in_flight() {
    const N: usize = 200;
    let server = Backend::start();
    let a = Client::connect_with(server.addr(), client_config()).unwrap();
    let b = Client::connect_with(server.addr(), client_config()).unwrap();
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let s2 = seen.clone();
    a.set_message_callback(move |ev| {
        if let Event::Message(m) = ev {
            assert_eq!(m.kind(), "broadcast_message", "{}", m.raw);
            assert!(m.get("id").is_none());
            s2.lock()
                .unwrap()
                .push(m.get_str("content").unwrap().to_owned());
        }
    });
    let rx = a.messages();
    // Both connections are registered server-side once they have answers.
    a.ping().unwrap();
    b.ping().unwrap();
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        for t in 0..4 {
            let (a, done) = (&a, &done);
            s.spawn(move || {
                let mut i = 0;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    let content = format!("a{t}-{i}");
                    assert_eq!(a.echo(&content).unwrap(), content);
                    i += 1;
                }
            });
        }
        for i in 0..N {
            assert!(b.broadcast(&format!("b-{i}")).unwrap() >= 1);
        }
        wait_until(LIMIT, "all broadcasts at the callback", || {
            seen.lock().unwrap().len() >= N
        });
        done.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    let got = seen.lock().unwrap().clone();
    let want: Vec<String> = (0..N).map(|i| format!("b-{i}")).collect();
    assert_eq!(got, want, "in order, each once");
    // The channel got the same events.
    for w in &want {
        let c = next_event(&rx, |e| match e {
            Event::Message(m) => Some(m.get_str("content").unwrap().to_owned()),
            _ => None,
        });
        assert_eq!(&c, w);
    }
    server.stop();
}

#[test]
fn auth_token_is_sent_first() {
    let server = Backend::with_token("secret");
    let ok = Client::builder()
        .request_timeout(Duration::from_secs(5))
        .auth_token("secret")
        .connect(server.addr())
        .unwrap();
    ok.ping().unwrap();
    assert_eq!(ok.echo("authed").unwrap(), "authed");

    match Client::builder()
        .request_timeout(Duration::from_secs(5))
        .auth_token("wrong")
        .connect(server.addr())
    {
        Err(ClientError::Server { code, .. }) => {
            assert_eq!(code, ServerCode::Known(ErrorCode::Unauthorized))
        }
        other => panic!("{other:?}"),
    }

    // Without a token the first request is refused (or the server closes).
    let no = Client::connect_with(server.addr(), client_config()).unwrap();
    match no.ping() {
        Err(ClientError::Server { code, .. }) => {
            assert_eq!(code, ServerCode::Known(ErrorCode::Unauthorized))
        }
        Err(ClientError::Disconnected { .. }) => {}
        other => panic!("{other:?}"),
    }
    server.stop();
}

#[test]
fn reconnects_after_the_server_restarts_on_the_same_port() {
    let server = Backend::start();
    let addr = server.addr();
    let c = reconnecting_client(addr, false);
    let events = c.messages();
    c.ping().unwrap();
    let before = c.local_addr();

    server.stop();
    let reason = next_event(&events, |e| match e {
        Event::Disconnected { reason } => Some(reason.clone()),
        _ => None,
    });
    assert!(
        reason.contains("shutting down") || reason.contains("closed"),
        "{reason}"
    );
    // Fails fast while the server is away.
    let t = Instant::now();
    assert!(matches!(c.ping(), Err(ClientError::Disconnected { .. })));
    assert!(t.elapsed() < Duration::from_secs(1));

    let server = Backend::start_on(addr);
    let attempt = next_event(&events, |e| match e {
        Event::Reconnected { attempt } => Some(*attempt),
        _ => None,
    });
    assert!(attempt >= 1);
    assert!(c.is_connected());
    assert_eq!(c.echo("back again").unwrap(), "back again");
    assert_ne!(c.local_addr(), before);
    drop(c);
    server.stop();
}

#[test]
fn requests_wait_for_the_reconnection_when_configured() {
    let server = Backend::start();
    let addr = server.addr();
    let c = reconnecting_client(addr, true);
    let events = c.messages();
    server.stop();
    next_event(&events, |e| {
        matches!(e, Event::Disconnected { .. }).then_some(())
    });
    let restart = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        Backend::start_on(addr)
    });
    // Issued while down; answered once the new connection is up.
    assert_eq!(c.echo("patient").unwrap(), "patient");
    drop(c);
    restart.join().unwrap().stop();
}

#[test]
fn reconnection_gives_up_after_the_configured_attempts() {
    let server = Backend::start();
    let c = Client::connect_with(
        server.addr(),
        ClientConfig {
            reconnect: ReconnectPolicy {
                max_attempts: 3,
                initial_backoff: Duration::from_millis(10),
                ..fast_reconnect(3)
            },
            ..client_config()
        },
    )
    .unwrap();
    let events = c.messages();
    server.stop();
    let attempts = next_event(&events, |e| match e {
        Event::ReconnectFailed { attempts, .. } => Some(*attempts),
        _ => None,
    });
    assert_eq!(attempts, 3);
    match c.ping() {
        Err(ClientError::Disconnected { reason }) => {
            assert!(reason.contains("gave up"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    // No more events will come: the iterator ends.
    assert!(events.recv_timeout(LIMIT).is_err());
}

#[test]
fn heartbeat_keeps_a_healthy_connection() {
    let server = Backend::start();
    let c = heartbeat_client(server.addr(), Duration::from_millis(30));
    let events = c.messages();
    std::thread::sleep(Duration::from_millis(400));
    assert!(c.is_connected());
    assert!(events.try_recv().is_err(), "no events: pongs are answers");
    c.ping().unwrap();
    drop(c);
    server.stop();
}

#[test]
fn pool_lends_clients_and_replaces_dead_ones() {
    let server = Backend::start();
    let addr = server.addr();
    let pool = Pool::new(addr, 2, client_config())
        .unwrap()
        .with_get_timeout(Duration::from_millis(200));
    assert_eq!((pool.size(), pool.idle()), (2, 2));
    {
        let a = pool.get().unwrap();
        let b = pool.get().unwrap();
        assert_ne!(a.local_addr(), b.local_addr());
        a.ping().unwrap();
        b.ping().unwrap();
        assert!(matches!(pool.get(), Err(ClientError::PoolExhausted(_))));
    }
    assert_eq!(pool.idle(), 2);

    // A client that dies while lent is replaced on the next get.
    let dead_addr = {
        let a = pool.get().unwrap();
        a.disconnect();
        a.local_addr()
    };
    assert!(dead_addr.is_none());
    for _ in 0..4 {
        let c = pool.get().unwrap();
        assert!(c.is_connected());
        c.ping().unwrap();
    }

    // A server restart kills every pooled connection: all are replaced.
    server.stop();
    let server = Backend::start_on(addr);
    wait_until(LIMIT, "pooled clients to notice", || {
        let c = pool.get().unwrap();
        c.echo("fresh").is_ok()
    });
    let a = pool.get().unwrap();
    let b = pool.get().unwrap();
    assert_eq!(a.echo("a").unwrap(), "a");
    assert_eq!(b.echo("b").unwrap(), "b");
    drop((a, b));
    drop(pool);
    server.stop();
}

#[test]
fn frames_over_the_client_limit_are_errors() {
    let server = Backend::start();
    let c = Client::builder()
        .request_timeout(Duration::from_secs(5))
        .max_frame_bytes(256)
        .connect(server.addr())
        .unwrap();
    let events = c.messages();
    assert_eq!(c.echo("small").unwrap(), "small");
    match c.echo(&"x".repeat(1000)) {
        Err(ClientError::FrameTooLarge { len, max }) => {
            assert!(len > 1000);
            assert_eq!(max, 256);
        }
        other => panic!("{other:?}"),
    }
    next_event(&events, |e| {
        matches!(e, Event::Disconnected { .. }).then_some(())
    });
    assert!(!c.is_connected());
    drop(c);
    server.stop();
}

#[test]
fn requests_from_the_callback_fail_instead_of_deadlocking() {
    let server = Backend::start();
    let a = Arc::new(Client::connect_with(server.addr(), client_config()).unwrap());
    let b = Client::connect_with(server.addr(), client_config()).unwrap();
    let weak = Arc::downgrade(&a);
    let result: Arc<Mutex<Option<String>>> = Arc::default();
    let r2 = result.clone();
    a.set_message_callback(move |ev| {
        if let (Event::Message(_), Some(c)) = (ev, weak.upgrade()) {
            *r2.lock().unwrap() = Some(format!("{:?}", c.ping()));
        }
    });
    a.ping().unwrap();
    assert_eq!(b.broadcast("poke").unwrap(), 1);
    wait_until(LIMIT, "the callback", || result.lock().unwrap().is_some());
    assert!(result
        .lock()
        .unwrap()
        .as_deref()
        .unwrap()
        .contains("InCallback"));
    a.ping().unwrap();
    drop((a, b));
    server.stop();
}

#[test]
fn connect_errors_are_reported() {
    // A port nobody listens on (bound then released).
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let t = Instant::now();
    assert!(matches!(
        Client::connect_with(addr, client_config()),
        Err(ClientError::Io(_))
    ));
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(matches!(
        Pool::new(addr, 2, client_config()),
        Err(ClientError::Io(_))
    ));
}

#[test]
fn channels_through_the_library() {
    let server = Backend::start();
    let sub = Client::connect_with(server.addr(), client_config()).unwrap();
    let publisher = Client::connect_with(server.addr(), client_config()).unwrap();
    let rx = sub.messages();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    sub.set_message_callback(move |e| {
        if let Event::Message(m) = e {
            if m.kind() == "channel_message" {
                s2.lock().unwrap().push(m.get("content").cloned());
            }
        }
    });
    assert_eq!(sub.subscribe("news").unwrap(), 1);
    assert_eq!(sub.subscribe("sport").unwrap(), 2);
    assert_eq!(publisher.publish("news", json!({"n": 1})).unwrap(), 1);
    assert_eq!(publisher.publish("weather", "nobody").unwrap(), 0);
    let m = next_event(&rx, |e| match e {
        Event::Message(m) if m.kind() == "channel_message" => Some(m.clone()),
        _ => None,
    });
    assert_eq!(m.get_str("channel"), Some("news"));
    assert_eq!(m.get("content"), Some(&json!({"n": 1})));
    assert_eq!(
        m.get_str("from"),
        Some(publisher.local_addr().unwrap().to_string().as_str())
    );
    wait_until(LIMIT, "the callback to see the message too", || {
        seen.lock().unwrap().as_slice() == [Some(json!({"n": 1}))]
    });
    assert_eq!(sub.unsubscribe("news").unwrap(), 1);
    assert_eq!(
        sub.unsubscribe("news").unwrap(),
        1,
        "not subscribed: no error"
    );
    assert_eq!(publisher.publish("news", "gone").unwrap(), 0);
    // Bad names are refused before they are sent.
    for bad in ["", "a\u{1}b"] {
        match sub.subscribe(bad) {
            Err(ClientError::InvalidArgument(why)) => assert!(why.contains("channel"), "{why}"),
            other => panic!("{bad:?}: {other:?}"),
        }
    }
    assert!(matches!(
        publisher.publish(&"x".repeat(257), 1),
        Err(ClientError::InvalidArgument(_))
    ));
    let stats = publisher.get_stats().unwrap();
    assert_eq!(stats.subscriptions, 1);
    assert_eq!(stats.publishes, 3);
    assert_eq!(stats.channel_deliveries, 1);
    server.stop();
}
