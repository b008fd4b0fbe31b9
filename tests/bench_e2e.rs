//! The load generator end to end: a short run against a real server on
//! 127.0.0.1, checking it measures something and sees no errors; the
//! recover workload against a server with channel history, within and
//! beyond what it keeps.

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

/// A server keeping `size` publications per channel, recovering up to
/// `limit` missed.
fn history_server(size: usize, limit: u64) -> ringcast::server::ServerHandle {
    spawn(
        builder(2)
            .idle_timeout_secs(0)
            .history_size(size)
            .history_recover_limit(limit),
    )
}

fn recover_config(addr: std::net::SocketAddr, missed: u64) -> BenchConfig {
    BenchConfig {
        publishers: 1,
        channels: 2,
        subscribers: 2,
        pipeline: 8,
        missed,
        duration: Duration::from_secs(2),
        ..config(addr, Workload::Recover)
    }
}

#[test]
fn recover_workload_replays_every_missed_publication_and_times_the_catch_up() {
    let s = history_server(10_000, 10_000);
    let r = bench::run(recover_config(s.local_addr(), 200)).unwrap();
    let f = r.recover.as_ref().expect("recover figures");
    assert_eq!(r.errors, 0, "{}", r.to_text());
    assert_eq!((f.refused, f.lost, f.duplicates), (0, 0, 0), "{f:?}");
    // Four subscribers, each cut and resumed at least once in 2 s.
    assert!(f.recoveries >= 4, "{}", r.to_text());
    // Each resumed after at least 200 publications of its channel.
    assert!(f.recovered >= 200 * f.recoveries, "{f:?}");
    assert!(f.missed_per_recovery >= 200.0, "{f:?}");
    assert_eq!(r.messages, f.recovered);
    assert!(f.recovered_per_sec > 0.0 && f.replay_per_sec > f.recovered_per_sec);
    // One catch-up time per recovery, in the histogram --hgrm writes.
    let l = &r.latency_us;
    assert_eq!(l.count, f.recoveries, "{}", r.to_text());
    assert!(l.p50 > 0 && l.p50 <= l.p99 && l.p99 <= l.max, "{l:?}");
    assert_eq!(bench::last_histogram().unwrap().len(), f.recoveries);
    // The server published what the publishers were told, and holds it.
    let h = r.history.expect("history held");
    assert!(
        h.publications > 0 && h.bytes_per_publication > 32.0,
        "{h:?}"
    );
    let mut probe = support::wire::Client::connect(s.local_addr());
    let stats = probe.stats();
    assert!(stats["publishes"].as_u64() >= Some(f.published), "{stats}");
    s.shutdown();
}

#[test]
fn recover_workload_reports_refusals_beyond_history_size_as_loss() {
    // 50 kept, 200 missed: every resubscription is refused.
    let s = history_server(50, 10_000);
    let r = bench::run(recover_config(s.local_addr(), 200)).unwrap();
    let f = r.recover.as_ref().unwrap();
    assert_eq!(r.errors, 0, "{}", r.to_text());
    assert_eq!(
        (f.recoveries, f.recovered, f.duplicates),
        (0, 0, 0),
        "{f:?}"
    );
    assert!(f.refused >= 4, "{}", r.to_text());
    // Each refusal lost at least the 200 its subscriber was away for.
    assert!(f.lost >= 200 * f.refused, "{f:?}");
    assert_eq!(r.latency_us.count, 0);
    s.shutdown();
}

#[test]
fn history_runs_against_a_server_without_history_fail_clearly() {
    let s = server();
    let e = bench::run(recover_config(s.local_addr(), 10)).unwrap_err();
    assert!(e.to_string().contains("--history-size"), "{e}");
    let mut c = config(s.local_addr(), Workload::Pubsub);
    c.history = true;
    let e = bench::run(c).unwrap_err();
    assert!(e.to_string().contains("--history-size"), "{e}");
    let mut c = config(s.local_addr(), Workload::Echo);
    c.history = true;
    let e = bench::run(c).unwrap_err();
    assert!(e.to_string().contains("pubsub"), "{e}");
    s.shutdown();
}

#[test]
fn pubsub_with_history_reports_what_the_history_holds() {
    let s = history_server(1_000, 1_000);
    let mut c = config(s.local_addr(), Workload::Pubsub);
    c.history = true;
    c.publishers = 2;
    c.channels = 3;
    c.subscribers = 2;
    let r = bench::run(c).unwrap();
    assert_eq!(r.errors, 0, "{}", r.to_text());
    assert!(r.deliveries_per_sec > 0.0, "{}", r.to_text());
    let h = r.history.expect("history held");
    // Three channels, up to 1,000 kept each, every one at least a frame.
    assert!((1..=3_000).contains(&h.publications), "{h:?}");
    assert!(h.bytes_per_publication > 32.0, "{h:?}");
    assert!(r.to_text().contains("bytes each"), "{}", r.to_text());
    s.shutdown();
}
