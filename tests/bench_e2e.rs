//! The load generator end to end: a short run against a real server on
//! 127.0.0.1, checking it measures something and sees no errors.

mod support;

use ringcast::bench::{self, BenchConfig, Workload};
use std::time::Duration;
use support::server::{builder, spawn};

fn server() -> ringcast::server::ServerHandle {
    spawn(builder(2).idle_timeout_secs(0))
}

fn config(addr: std::net::SocketAddr, workload: Workload) -> BenchConfig {
    BenchConfig {
        addr,
        workload,
        threads: 2,
        connections: 8,
        pipeline: 4,
        duration: Duration::from_millis(800),
        warmup: Duration::from_millis(200),
        progress: false,
        ..BenchConfig::default()
    }
}

#[test]
fn closed_loop_echo_measures_and_sees_no_errors() {
    let s = server();
    let r = bench::run(config(s.local_addr(), Workload::Echo)).unwrap();
    assert!(r.messages > 100, "{}", r.to_text());
    assert!(r.msgs_per_sec > 0.0 && r.mb_per_sec > 0.0);
    assert_eq!(r.errors, 0, "{}", r.to_text());
    assert_eq!(r.latency_us.count, r.messages);
    assert!(r.latency_us.p50 <= r.latency_us.p99 && r.latency_us.p99 <= r.latency_us.max);
    // The server counted at least what the generator measured.
    let t = s.totals();
    assert!(
        t.messages[1] >= r.messages,
        "server echo count {:?}",
        t.messages
    );
    let h = bench::last_histogram().expect("histogram kept for --hgrm");
    assert!(bench::report::to_hgrm(&h).contains("#[Mean"));
    s.shutdown();
}

#[test]
fn open_loop_hits_its_rate_and_requests_mode_stops_exactly() {
    let s = server();
    let mut c = config(s.local_addr(), Workload::Ping);
    c.rate = Some(2_000);
    let r = bench::run(c).unwrap();
    assert_eq!(r.errors, 0, "{}", r.to_text());
    // 2,000/s for 0.8 s: within 20 % of 1,600 responses.
    assert!((1_280..=1_920).contains(&r.messages), "{}", r.to_text());

    let mut c = config(s.local_addr(), Workload::Mixed);
    c.requests = Some(1_000);
    let r = bench::run(c).unwrap();
    assert_eq!(r.messages, 1_000, "{}", r.to_text());
    assert_eq!(r.errors, 0);
    s.shutdown();
}

#[test]
fn broadcast_workload_times_deliveries() {
    let s = server();
    let mut c = config(s.local_addr(), Workload::Broadcast);
    c.publishers = 1;
    c.subscribers = 10;
    c.pipeline = 2;
    let r = bench::run(c).unwrap();
    assert_eq!(r.errors, 0, "{}", r.to_text());
    assert!(r.deliveries_per_sec > 0.0, "{}", r.to_text());
    assert_eq!(r.messages, r.latency_us.count);
    s.shutdown();
}

#[test]
fn pubsub_workload_subscribes_every_subscriber_and_times_deliveries() {
    let s = server();
    let mut c = config(s.local_addr(), Workload::Pubsub);
    c.publishers = 2;
    c.channels = 3;
    c.subscribers = 4;
    c.pipeline = 2;
    let r = bench::run(c).unwrap();
    assert_eq!(r.errors, 0, "{}", r.to_text());
    assert_eq!(r.connections, 2 + 3 * 4);
    assert!(r.deliveries_per_sec > 0.0, "{}", r.to_text());
    assert_eq!(r.messages, r.latency_us.count);
    let mut probe = support::wire::Client::connect(s.local_addr());
    let stats = probe.stats();
    assert!(stats["publishes"].as_u64() > Some(0), "{stats}");
    support::wait::wait_until(
        Duration::from_secs(5),
        "the bench's subscriptions to go with its connections",
        || probe.stats()["subscriptions"] == 0,
    );
    s.shutdown();
}
