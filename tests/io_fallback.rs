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

use ringcast::client::{Client, Event};
use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

const RINGCAST: &str = env!("CARGO_BIN_EXE_ringcast");

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

struct Server {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

fn spawn_without_io_uring(args: &[&str]) -> Server {
    let filter = docker_like_filter();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let mut child = std::thread::spawn(move || {
        seccompiler::apply_filter(&filter).expect("seccomp filter loads");
        Command::new(RINGCAST)
            .args(&args)
            .env_remove("RINGCAST_IO_BACKEND")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ringcast spawns under the filter")
    })
    .join()
    .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Server {
        child,
        lines,
        seen: Vec::new(),
    }
}

impl Server {
    /// Reads log lines until one contains `what` or `within` passes.
    fn wait_for(&mut self, what: &str, within: Duration) -> Option<String> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let line = self.lines.recv_timeout(left).ok()?;
            self.seen.push(line.clone());
            if line.contains(what) {
                return Some(line);
            }
        }
    }

    /// Waits for the exit; returns the code and every line of stderr.
    fn exit(mut self, within: Duration) -> (Option<i32>, String) {
        let deadline = Instant::now() + within;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("ringcast did not exit: {:#?}", self.seen);
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(2)) {
            self.seen.push(l);
        }
        (status.code(), self.seen.join("\n"))
    }
}

#[test]
fn auto_falls_back_to_epoll_and_serves_every_message_type() {
    let mut server = spawn_without_io_uring(&[
        "server",
        "--addr",
        "127.0.0.1:0",
        "--shards",
        "2",
        "--no-pin",
        "--log-format",
        "json",
    ]);
    let Some(line) = server.wait_for("ringcast listening", Duration::from_secs(15)) else {
        let _ = server.child.kill();
        panic!("no 'ringcast listening' line: {:#?}", server.seen);
    };
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["fields"]["io_backend"], "epoll", "{line}");
    let addr: SocketAddr = v["fields"]["addr"].as_str().unwrap().parse().unwrap();
    // Exactly one warning, naming the cause and the fix.
    let warnings: Vec<&String> = server
        .seen
        .iter()
        .filter(|l| l.contains(r#""level":"WARN""#))
        .collect();
    assert_eq!(warnings.len(), 1, "{:#?}", server.seen);
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
    let deadline = Instant::now() + Duration::from_secs(5);
    let got = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match b_events.recv_timeout(left) {
            Ok(Event::Message(m)) if m.kind() == "broadcast_message" => break m,
            Ok(_) => continue,
            Err(e) => panic!("no broadcast_message for the second client: {e}"),
        }
    };
    assert_eq!(got.get("content"), Some(&json!("to everyone")));
    let stats = a.get_stats().expect("get_stats");
    assert_eq!(stats.io_backend, "epoll");
    assert_eq!(stats.connected_clients, 2);
    assert_eq!(stats.shards, 2);
    a.disconnect();
    b.disconnect();

    // SIGTERM, as a container runtime sends at stop.
    let pid = server.child.id().to_string();
    Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    let (code, log) = server.exit(Duration::from_secs(20));
    assert_eq!(code, Some(0), "{log}");
}

#[test]
fn io_uring_backend_refuses_to_start_with_the_cause() {
    let server = spawn_without_io_uring(&[
        "server",
        "--addr",
        "127.0.0.1:0",
        "--shards",
        "1",
        "--no-pin",
        "--io-backend",
        "io-uring",
    ]);
    let (code, log) = server.exit(Duration::from_secs(15));
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("io_uring is disabled for this process") && log.contains("seccomp profile"),
        "the server names the cause: {log}"
    );
    assert!(!log.contains("ringcast listening"), "{log}");
}
