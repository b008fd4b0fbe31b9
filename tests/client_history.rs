//! The Rust client resumes history channels by itself: through a TCP proxy
//! the test cuts mid-stream, it reconnects, subscribes again with
//! `recover`, reports `Recovered` and gets every missed publication once,
//! in order; when the server cannot replay (history trimmed) it reports
//! `Lost`.

mod support;

use ringcast::client::{Client, ClientConfig, Event, LostReason, ReconnectPolicy};
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::server::{builder, spawn};

/// A loopback proxy to `target` whose connections the test can reset
/// ([`Proxy::cut`]), and which can refuse new ones for a while
/// ([`Proxy::refuse`]: accepted, then closed at once).
struct Proxy {
    addr: SocketAddr,
    open: Arc<Mutex<Vec<TcpStream>>>,
    refusing: Arc<AtomicBool>,
}

impl Proxy {
    fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(Mutex::new(Vec::new()));
        let refusing = Arc::new(AtomicBool::new(false));
        let (o, r) = (open.clone(), refusing.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                if r.load(Ordering::SeqCst) {
                    continue; // dropped: closed at once
                }
                let up = TcpStream::connect(target).unwrap();
                let mut held = o.lock().unwrap();
                held.push(client.try_clone().unwrap());
                held.push(up.try_clone().unwrap());
                for (mut a, mut b) in [
                    (client.try_clone().unwrap(), up.try_clone().unwrap()),
                    (up, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = io::copy(&mut a, &mut b);
                        let _ = b.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Proxy {
            addr,
            open,
            refusing,
        }
    }

    /// Resets every connection through the proxy (RST: in-flight data lost).
    fn cut(&self) {
        for s in self.open.lock().unwrap().drain(..) {
            socket2::SockRef::from(&s)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    fn refuse(&self, on: bool) {
        self.refusing.store(on, Ordering::SeqCst);
    }
}

fn client_through(p: &Proxy) -> Client {
    Client::connect_with(
        p.addr,
        ClientConfig {
            reconnect: ReconnectPolicy {
                enabled: true,
                max_attempts: 500,
                initial_backoff: Duration::from_millis(10),
                max_backoff: Duration::from_millis(50),
                multiplier: 2.0,
                jitter: 0.5,
            },
            request_timeout: Duration::from_secs(10),
            ..ClientConfig::default()
        },
    )
    .unwrap()
}

/// What the application saw of channel `feed`: message contents, and
/// "recovered" / "lost:…", skipping other events; until `until` is seen.
fn timeline(rx: &Receiver<Event>, until: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    while seen.last().map(String::as_str) != Some(until) {
        let left = deadline.saturating_duration_since(Instant::now());
        let e = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no {until:?} in time; saw {seen:?}"));
        match e {
            Event::Message(m) if m.kind() == "channel_message" => {
                assert_eq!(m.get_str("channel"), Some("feed"));
                seen.push(m.get("content").unwrap().to_string());
            }
            Event::Recovered { channel } => seen.push(format!("recovered:{channel}")),
            Event::Lost { channel, reason } => seen.push(format!("lost:{channel}:{reason:?}")),
            _ => {}
        }
    }
    seen
}

fn numbers(r: std::ops::RangeInclusive<u64>) -> Vec<String> {
    r.map(|n| n.to_string()).collect()
}

#[test]
fn a_cut_mid_stream_is_recovered_once_in_order() {
    let server = spawn(builder(2).history_size(1000));
    let proxy = Proxy::start(server.local_addr());
    let c = client_through(&proxy);
    let events = c.messages();
    c.subscribe("feed").unwrap();
    let publisher = Client::connect(server.local_addr()).unwrap();
    for n in 1..=50u64 {
        publisher.publish("feed", n).unwrap();
    }
    assert_eq!(timeline(&events, "50"), numbers(1..=50));
    proxy.cut();
    // Published while the client reconnects: replayed or live, once each.
    for n in 51..=100u64 {
        publisher.publish("feed", n).unwrap();
    }
    let mut want = vec!["recovered:feed".to_owned()];
    want.extend(numbers(51..=100));
    assert_eq!(timeline(&events, "100"), want);
    // And it stays subscribed, live.
    publisher.publish("feed", 101).unwrap();
    assert_eq!(timeline(&events, "101"), ["101"]);
}

#[test]
fn a_cut_the_history_cannot_cover_is_reported_lost() {
    let server = spawn(builder(1).history_size(5));
    let proxy = Proxy::start(server.local_addr());
    let c = client_through(&proxy);
    let events = c.messages();
    c.subscribe("feed").unwrap();
    let publisher = Client::connect(server.local_addr()).unwrap();
    publisher.publish("feed", 1).unwrap();
    assert_eq!(timeline(&events, "1"), ["1"]);
    // Kept out while 10 are published: 2..6 are trimmed (5 kept).
    proxy.refuse(true);
    proxy.cut();
    for n in 2..=11u64 {
        publisher.publish("feed", n).unwrap();
    }
    proxy.refuse(false);
    assert_eq!(
        timeline(&events, &format!("lost:feed:{:?}", LostReason::Reconnect)),
        ["lost:feed:Reconnect"]
    );
    publisher.publish("feed", 12).unwrap();
    assert_eq!(
        timeline(&events, "12"),
        ["12"],
        "no second loss: 12 follows 11"
    );
}
