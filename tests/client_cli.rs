//! `ringcast client` as a process: demo, interactive through a pipe, and
//! performance, against a server in this process on 127.0.0.1.

mod support;

use ringcast::client::{Client, ClientConfig};
use std::io::Write;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;
use support::server::{run_ringcast, wait_exit, Backend, LogLines, Run};

/// Runs `ringcast client <args>` with `stdin` piped in; killed after 20 s.
fn ringcast_client(args: &[&str], stdin: &str) -> Run {
    run_ringcast(
        &[&["client"], args].concat(),
        stdin,
        Duration::from_secs(20),
    )
}

#[test]
fn interactive_through_a_pipe() {
    let server = Backend::start();
    let addr = server.addr().to_string();
    let r = ringcast_client(
        &["interactive", "--addr", &addr],
        "/ping\n/echo hi\nhello\n/stats\n/custom no_such_type {\"k\":1}\n/bogus\n/help\n/exit\n/echo never sent\n",
    );
    r.assert_code(0);
    let o = &r.stdout;
    assert!(o.contains("pong in "), "{o}");
    assert!(o.contains("← \"hi\" (echoed by"), "{o}");
    assert!(o.contains("ack at "), "{o}");
    assert!(o.contains("connected_clients"), "{o}");
    assert!(o.contains("error unknown_type"), "{o}");
    assert!(o.contains("/broadcast <text>"), "help: {o}");
    assert!(!o.contains("never sent"), "{o}");
    assert!(r.stderr.contains("unknown command /bogus"), "{}", r.stderr);
    assert!(!o.contains('\x1b'), "no colour through a pipe");
    // Labels and arrows are aligned in one column.
    for l in o.lines().filter(|l| l.contains('→') || l.contains('←')) {
        let col = l.chars().position(|c| c == '→' || c == '←').unwrap();
        assert_eq!(col, 14, "{l:?}");
    }
    server.stop();
}

/// `ringcast client interactive --addr addr` as a child, its stdin, and
/// its output read line by line on a thread, so each step waits for what
/// it needs to see instead of sleeping and hoping.
fn interactive(addr: &str) -> (Child, ChildStdin, LogLines) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .args(["client", "interactive", "--addr", addr])
        .env("NO_COLOR", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = LogLines::new(child.stdout.take().unwrap());
    let stdin = child.stdin.take().unwrap();
    (child, stdin, out)
}

/// Waits up to 20 s for a line containing `needle`; shows what was seen if
/// it never comes.
fn wait_for(needle: &str, out: &mut LogLines) {
    if out.wait_for_text(needle, Duration::from_secs(20)).is_none() {
        panic!("never saw {needle:?} in:\n{}", out.seen.join("\n"));
    }
}

#[test]
fn interactive_ends_at_eof_and_prints_broadcasts_from_others() {
    let server = Backend::start();
    let addr = server.addr().to_string();
    let other = Client::connect_with(server.addr(), ClientConfig::default()).unwrap();
    let (mut child, mut stdin, mut out) = interactive(&addr);
    stdin.write_all(b"/ping\n").unwrap();
    wait_for("pong", &mut out);
    // Connected (it answered a ping): a broadcast from the other client
    // must be printed while the piped client waits for its next line.
    assert_eq!(other.broadcast("news for you").unwrap(), 1);
    wait_for("] news for you", &mut out);
    let seen = out.seen.join("\n");
    assert!(seen.contains("[broadcast from "), "{seen}");
    stdin.write_all(b"/echo last\n").unwrap();
    drop(stdin); // EOF
    wait_for("\"last\"", &mut out);
    let status = wait_exit(&mut child, Duration::from_secs(20)).expect("no exit at EOF");
    assert_eq!(status.code(), Some(0));
    drop(other);
    server.stop();
}

#[test]
fn interactive_json_prints_raw_frames_one_per_line() {
    let server = Backend::start();
    let addr = server.addr().to_string();
    let r = ringcast_client(
        &["interactive", "--json", "--addr", &addr],
        "/ping\n/echo hi\nhello\n",
    );
    r.assert_code(0);
    let types: Vec<String> = r
        .stdout
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("each line is JSON");
            v["type"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(types, ["pong", "echo_response", "message_ack"]);
    server.stop();
}

#[test]
fn demo_walks_through_every_exchange() {
    let server = Backend::start();
    let addr = server.addr().to_string();
    let r = ringcast_client(&["demo", "--addr", &addr], "");
    r.assert_code(0);
    let o = &r.stdout;
    for want in [
        "ringcast client demo: connected to",
        "ping          → ping (ringcast-client/",
        "pong in ",
        "echo          → \"Hello, ringcast!\"",
        "← \"Hello, ringcast!\" (echoed by",
        "broadcast     → \"Hello, everyone!\"",
        "← sent to 0 other clients",
        "stats         → get_stats",
        "connected_clients",
        "custom        → custom_type {\"data\":\"value\"}",
        "← error unknown_type",
        "message       → \"Just a plain message\"",
        "ack at ",
        "demo complete",
    ] {
        assert!(o.contains(want), "missing {want:?} in:\n{o}");
    }
    // The custom type's unknown_type error is what the stock server
    // answers: the demo says so under it, and how to add a handler, so a
    // new user does not take it for a failure.
    let lines: Vec<&str> = o.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.contains("← error unknown_type"))
        .expect("the custom type's answer");
    let note = lines[at + 1..].join("\n");
    assert!(
        lines[at + 1].contains("expected: the stock server has no handler for custom_type"),
        "no explanation under the error:\n{o}"
    );
    assert!(
        note.contains("Server::builder().handler(\"custom_type\""),
        "how to register a handler:\n{o}"
    );
    // Default mode is demo.
    let r2 = ringcast_client(&["--addr", &addr], "");
    r2.assert_code(0);
    assert!(r2.stdout.contains("demo complete"));
    server.stop();
}

#[test]
fn demo_json_and_auth_token() {
    let server = Backend::with_token("tok");
    let addr = server.addr().to_string();
    let r = ringcast_client(&["demo", "--json", "--token", "tok", "--addr", &addr], "");
    r.assert_code(0);
    let types: Vec<String> = r
        .stdout
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        types,
        [
            "pong",
            "echo_response",
            "broadcast_sent",
            "server_stats",
            "error",
            "message_ack"
        ]
    );
    let bad = ringcast_client(&["demo", "--token", "nope", "--addr", &addr], "");
    bad.assert_code(1);
    assert!(bad.stderr.contains("unauthorized"), "{}", bad.stderr);
    server.stop();
}

#[test]
fn unreachable_server_is_a_clear_error() {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let r = ringcast_client(&["demo", "--addr", &addr, "--timeout", "2"], "");
    r.assert_code(1);
    assert!(
        r.stderr.contains(&format!("cannot connect to {addr}")),
        "{}",
        r.stderr
    );
}

#[test]
fn performance_reports_rate_and_percentiles() {
    let server = Backend::start();
    let addr = server.addr().to_string();
    let r = ringcast_client(
        &[
            "performance",
            "--addr",
            &addr,
            "--count",
            "2000",
            "--window",
            "16",
            "--size",
            "32",
        ],
        "",
    );
    r.assert_code(0);
    for want in [
        "throughput",
        "msgs/s",
        "latency p50",
        "latency p99",
        "latency max",
    ] {
        assert!(r.stdout.contains(want), "{}", r.stdout);
    }
    let j = ringcast_client(
        &["performance", "--json", "--addr", &addr, "--count", "500"],
        "",
    );
    let v: serde_json::Value = serde_json::from_str(j.stdout.trim()).unwrap();
    assert_eq!(v["requests"], 500);
    assert!(v["msgs_per_s"].as_f64().unwrap() > 0.0);
    server.stop();
}

#[test]
fn interactive_subscribes_publishes_and_prints_channel_messages() {
    let server = Backend::start();
    let addr = server.addr().to_string();
    let other = Client::connect_with(server.addr(), ClientConfig::default()).unwrap();
    let (mut child, mut stdin, mut out) = interactive(&addr);
    stdin.write_all(b"/sub news\n").unwrap();
    wait_for("subscribed news (1 channel now", &mut out);
    assert_eq!(other.publish("news", "extra extra").unwrap(), 1);
    wait_for("extra extra", &mut out);
    let from = format!("[news from {}] extra extra", other.local_addr().unwrap());
    assert!(
        out.seen.iter().any(|l| l == &from),
        "{}",
        out.seen.join("\n")
    );
    stdin.write_all(b"/pub news to myself\n").unwrap();
    // The answer and the pushed message are printed by two threads, in
    // either order.
    wait_for("published to news for 1 subscriber", &mut out);
    if !out.seen.iter().any(|l| l.ends_with("] to myself")) {
        wait_for("] to myself", &mut out);
    }
    stdin.write_all(b"/unsub news\n").unwrap();
    wait_for("unsubscribed news (0 channels now", &mut out);
    assert_eq!(other.publish("news", "unheard").unwrap(), 0);
    drop(stdin); // EOF
    let status = wait_exit(&mut child, Duration::from_secs(20)).expect("no exit at EOF");
    assert_eq!(status.code(), Some(0));
    assert!(!out.seen.join("\n").contains("unheard"));
    drop(other);
    server.stop();
}

#[test]
fn interactive_reads_history_and_shows_offsets() {
    let server = support::server::spawn(support::server::builder(2).history_size(100));
    let addr = server.local_addr().to_string();
    let other = Client::connect_with(server.local_addr(), ClientConfig::default()).unwrap();
    for i in 1..=3 {
        other.publish("prices", format!("p{i}").as_str()).unwrap();
    }
    let (mut child, mut stdin, mut out) = interactive(&addr);
    // One page: after offset 1, at most 1.
    stdin.write_all(b"/history prices 1 1\n").unwrap();
    wait_for(
        "history of prices: 1 publication, latest offset 3 of epoch ",
        &mut out,
    );
    wait_for("#2 p2 (from ", &mut out);
    stdin.write_all(b"/sub prices\n").unwrap();
    wait_for("subscribed prices (1 channel now", &mut out);
    let seen = out.seen.join("\n");
    assert!(!seen.contains("#1 p1") && !seen.contains("#3 p3"), "{seen}");
    let sub = out
        .seen
        .iter()
        .find(|l| l.contains("subscribed prices"))
        .unwrap();
    assert!(sub.contains(", offset 3 of epoch "), "{sub}");
    // A channel message shows its offset.
    other.publish("prices", "p4").unwrap();
    let from = format!("[prices #4 from {}] p4", other.local_addr().unwrap());
    wait_for(&from, &mut out);
    // The whole history, oldest first.
    stdin.write_all(b"/history prices\n").unwrap();
    wait_for(
        "history of prices: 4 publications, latest offset 4",
        &mut out,
    );
    wait_for("#4 p4 (from ", &mut out);
    let lines: Vec<&String> = out
        .seen
        .iter()
        .skip_while(|l| !l.contains("4 publications"))
        .filter(|l| l.trim_start().starts_with('#'))
        .collect();
    let offsets: Vec<String> = lines
        .iter()
        .map(|l| l.trim_start().split(' ').next().unwrap().to_owned())
        .collect();
    assert_eq!(offsets, ["#1", "#2", "#3", "#4"], "{lines:?}");
    drop(stdin); // EOF
    let status = wait_exit(&mut child, Duration::from_secs(20)).expect("no exit at EOF");
    assert_eq!(status.code(), Some(0));
    drop(other);
    server.shutdown();
}

#[test]
fn interactive_history_without_history_is_an_error_and_the_session_goes_on() {
    let server = Backend::start();
    let addr = server.addr().to_string();
    let r = ringcast_client(
        &["interactive", "--addr", &addr],
        "/history news\n/history news 1 5000\n/ping\n/exit\n",
    );
    r.assert_code(0);
    assert!(r.stdout.contains("error no_history"), "{}", r.stdout);
    assert!(r.stdout.contains("pong in "), "{}", r.stdout);
    assert!(
        r.stderr.contains("limit must be a number from 1 to 1000"),
        "{}",
        r.stderr
    );
    server.stop();
}
