//! `--io-backend auto` on a host that refuses io_uring.
//!
//! The child `ringcast server` runs under a seccomp filter shaped like
//! Docker's default profile since 25.0: every system call is allowed except
//! `io_uring_setup`, `io_uring_enter` and `io_uring_register`, which fail
//! with EPERM. The filter is loaded on a thread that then spawns the
//! server, which inherits it across fork and exec, as a container's process
//! does from runc.
//!
//! - `auto` (the default) logs one warning naming the cause and the fix,
//!   runs on epoll, and serves every message type; `get_stats` says so.
//! - `io-uring` refuses to start, with the same cause.

mod support;

use ringcast::client::Client;
use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};
use serde_json::json;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;
use support::fake::next_broadcast;
use support::server::{local_args, sigterm, spawn_confined, Confined, IO_BACKEND_ENV};

/// Allow everything, deny io_uring with EPERM.
fn docker_like_filter() -> BpfProgram {
    let rules = [
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
    ]
    .into_iter()
    .map(|nr| (nr, vec![]))
    .collect::<BTreeMap<_, _>>();
    SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        TargetArch::x86_64,
    )
    .expect("filter builds")
    .try_into()
    .expect("filter compiles")
}

/// `ringcast server` with `shards` shards on 127.0.0.1 and `more` flags,
/// under the Docker-like filter, with the default backend unless `more`
/// names one (whatever the suite's `RINGCAST_IO_BACKEND`).
fn spawn_without_io_uring(shards: usize, more: &[&str]) -> Confined {
    let mut args = vec!["server".to_owned()];
    args.extend(local_args(shards));
    args.extend(more.iter().map(|s| s.to_string()));
    spawn_confined(vec![docker_like_filter()], &args, |c| {
        c.env_remove(IO_BACKEND_ENV);
    })
}

#[test]
fn auto_falls_back_to_epoll_and_serves_every_message_type() {
    let mut server = spawn_without_io_uring(2, &["--log-format", "json"]);
    let v = server.listening();
    assert_eq!(v["fields"]["io_backend"], "epoll", "{v}");
    let addr: SocketAddr = v["fields"]["addr"].as_str().unwrap().parse().unwrap();
    // Exactly one warning, naming the cause and the fix.
    let warnings: Vec<&String> = server
        .log
        .seen
        .iter()
        .filter(|l| l.contains(r#""level":"WARN""#))
        .collect();
    assert_eq!(warnings.len(), 1, "{:#?}", server.log.seen);
    assert!(
        warnings[0].contains("epoll")
            && warnings[0].contains("io_uring is disabled for this process")
            && warnings[0].contains("seccomp profile"),
        "{}",
        warnings[0]
    );

    let a = Client::connect(addr).expect("connect");
    let b = Client::connect(addr).expect("connect");
    let b_events = b.messages();
    a.ping().expect("ping");
    assert_eq!(a.echo("hello").unwrap(), "hello");
    let big = "y".repeat(256 * 1024);
    assert_eq!(a.echo(&big).unwrap(), big);
    let ack = a.send_text("just text").expect("plain text");
    assert_eq!(ack.kind(), "message_ack");
    let err = a
        .send_custom("custom_type", json!({"data": "value"}))
        .expect_err("no handler for custom_type");
    assert!(err.to_string().contains("unknown_type"), "{err}");
    assert_eq!(a.broadcast("to everyone").unwrap(), 1);
    let got = next_broadcast(&b_events);
    assert_eq!(got.get("content"), Some(&json!("to everyone")));
    let stats = a.get_stats().expect("get_stats");
    assert_eq!(stats.io_backend, "epoll");
    assert_eq!(stats.connected_clients, 2);
    assert_eq!(stats.shards, 2);
    a.disconnect();
    b.disconnect();

    // SIGTERM, as a container runtime sends at stop.
    sigterm(&server.child);
    let (status, log) = server.wait(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{log}");
}

#[test]
fn io_uring_backend_refuses_to_start_with_the_cause() {
    let server = spawn_without_io_uring(1, &["--io-backend", "io-uring"]);
    let (status, log) = server.wait(Duration::from_secs(15));
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("io_uring is disabled for this process") && log.contains("seccomp profile"),
        "the server names the cause: {log}"
    );
    assert!(!log.contains("ringcast listening"), "{log}");
}
