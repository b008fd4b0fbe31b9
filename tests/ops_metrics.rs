//! The metrics endpoint (`metrics_addr` / `--metrics-addr`): `/metrics` is
//! scraped over a real socket during traffic and parsed as Prometheus text;
//! counters move by exactly what was sent; `/healthz`, errors, start-up
//! failure on a busy port, and a clean stop with the endpoint running.

mod support;

use prometheus_parse::{LineInfo, Sample, Scrape, Value as PromValue};
use ringcast::server::{ServerError, ServerHandle};
use serde_json::{json, Value};
use std::cell::RefCell;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};
use support::server::{build, builder, local_args, server_command, spawn};
use support::wait::wait_until;
use support::wire::{frame, frame_bytes, Client};

/// A server with `shards` shards and the metrics endpoint on a free port.
fn start_with_metrics(shards: usize) -> (ServerHandle, SocketAddr) {
    let handle = spawn(builder(shards).metrics_addr(Some("127.0.0.1:0".parse().unwrap())));
    let m = handle.metrics_addr().expect("metrics endpoint configured");
    assert_ne!(m.port(), 0, "the real port is reported");
    (handle, m)
}

/// One HTTP response: status code, head (lower-cased), body.
struct Response {
    status: u16,
    head: String,
    body: String,
}

/// Sends `request` verbatim and reads the whole response (the endpoint
/// closes every connection after answering).
fn http_raw(addr: SocketAddr, request: &[u8]) -> Response {
    let mut s = TcpStream::connect(addr).expect("connect to the metrics endpoint");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read the response to EOF");
    let text = String::from_utf8(raw).expect("UTF-8 response");
    let (head, body) = text
        .split_once("\r\n\r\n")
        .expect("a blank line ends the head");
    let status = head
        .strip_prefix("HTTP/1.1 ")
        // An HTTP/1.0 request is answered in HTTP/1.0.
        .or_else(|| head.strip_prefix("HTTP/1.0 "))
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    let head = head.to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .expect("content-length header")
        .trim()
        .parse()
        .unwrap();
    assert!(head.contains("\r\nconnection: close"), "{head}");
    if !request.starts_with(b"HEAD ") {
        assert_eq!(body.len(), len, "content-length matches the body");
    }
    Response {
        status,
        head,
        body: body.to_string(),
    }
}

fn get(addr: SocketAddr, path: &str) -> Response {
    http_raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: test\r\nAccept: */*\r\n\r\n").as_bytes(),
    )
}

/// Metric families' types from the `# TYPE` lines.
type Types = HashMap<String, String>;

/// GET /metrics, checked line by line as Prometheus text and parsed.
fn scrape(addr: SocketAddr) -> (Scrape, Types) {
    let r = get(addr, "/metrics");
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.head
            .contains("content-type: text/plain; version=0.0.4; charset=utf-8"),
        "{}",
        r.head
    );
    let mut types = Types::new();
    for line in r.body.lines() {
        // The parser skips what it cannot read; make sure nothing was skipped.
        match LineInfo::parse(line) {
            LineInfo::Doc { .. } => {}
            LineInfo::Type {
                metric_name,
                metric_alias,
                ..
            } => {
                let (name, ty) = line
                    .strip_prefix("# TYPE ")
                    .and_then(|t| t.split_once(' '))
                    .unwrap();
                assert_eq!(metric_alias.as_deref().unwrap_or(&metric_name), name);
                assert!(name.starts_with("ringcast_"), "unprefixed metric {name}");
                if ty == "counter" {
                    assert!(name.ends_with("_total"), "counter {name} lacks _total");
                } else {
                    assert!(!name.ends_with("_total"), "{ty} {name} ends with _total");
                }
                assert!(
                    types.insert(name.into(), ty.into()).is_none(),
                    "{name} twice"
                );
            }
            LineInfo::Sample { value, .. } => {
                assert!(
                    value == "+Inf" || value.parse::<f64>().is_ok(),
                    "bad value in {line:?}"
                );
            }
            LineInfo::Empty | LineInfo::Ignored => panic!("not Prometheus text: {line:?}"),
        }
    }
    let s = Scrape::parse(r.body.lines().map(|l| Ok(l.to_string()))).expect("parses");
    (s, types)
}

fn labels_match(s: &Sample, want: &[(&str, &str)]) -> bool {
    want.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
}

/// Sum of the counter or gauge samples of `name` whose labels include `want`.
fn sum(s: &Scrape, name: &str, want: &[(&str, &str)]) -> f64 {
    let mut found = false;
    let total = s
        .samples
        .iter()
        .filter(|x| x.metric == name && labels_match(x, want))
        .map(|x| {
            found = true;
            match x.value {
                // Untyped: a histogram's _sum and _count, to this parser.
                PromValue::Counter(v) | PromValue::Gauge(v) | PromValue::Untyped(v) => v,
                ref other => panic!("{name} is not a single value: {other:?}"),
            }
        })
        .sum();
    assert!(found, "no {name} sample with {want:?}");
    total
}

/// The `shard` label values present on `name`.
fn shards_of(s: &Scrape, name: &str) -> Vec<String> {
    let mut v: Vec<String> = s
        .samples
        .iter()
        .filter(|x| x.metric == name)
        .filter_map(|x| x.labels.get("shard").map(str::to_string))
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Request-duration histogram over all shards: (count, sum) and, per shard,
/// a check that buckets are cumulative and end at `+Inf` == `_count`.
fn histogram(s: &Scrape) -> (f64, f64) {
    let mut count = 0.0;
    let mut hists = 0;
    for x in &s.samples {
        if x.metric != "ringcast_request_duration_seconds" {
            continue;
        }
        let PromValue::Histogram(b) = &x.value else {
            panic!("request duration is not a histogram: {x:?}");
        };
        hists += 1;
        let mut b = b.clone();
        b.sort_by(|p, q| p.less_than.total_cmp(&q.less_than));
        assert!(b.windows(2).all(|w| w[0].count <= w[1].count), "{b:?}");
        let last = b.last().unwrap();
        assert_eq!(last.less_than, f64::INFINITY);
        assert!(b[0].less_than > 0.0 && b[0].less_than < 1e-6, "{b:?}");
        let shard = x.labels.get("shard").unwrap();
        let c = sum(
            s,
            "ringcast_request_duration_seconds_count",
            &[("shard", shard)],
        );
        assert_eq!(last.count, c, "+Inf bucket equals _count");
        count += c;
    }
    assert!(hists > 0, "no request duration histogram");
    let total_sum = s
        .samples
        .iter()
        .filter(|x| x.metric == "ringcast_request_duration_seconds_sum")
        .map(|x| match x.value {
            PromValue::Untyped(v) => v,
            ref o => panic!("{o:?}"),
        })
        .sum();
    (count, total_sum)
}

/// Reads one frame raw; returns its JSON and its size on the wire.
fn recv_counted(c: &mut Client) -> (Value, u64) {
    let p = c.recv_raw();
    (serde_json::from_slice(&p).unwrap(), 4 + p.len() as u64)
}

/// Sends a frame; returns its size on the wire.
fn send_counted(c: &mut Client, f: Vec<u8>) -> u64 {
    c.send_raw(&f);
    f.len() as u64
}

#[test]
fn counters_move_by_exactly_the_traffic_and_parse_as_prometheus_text() {
    let (handle, maddr) = start_with_metrics(2);
    let addr = handle.local_addr();
    let mut a = Client::connect(addr);
    let mut b = Client::connect(addr);
    wait_until(
        Duration::from_secs(5),
        "both clients to show as connected",
        || sum(&scrape(maddr).0, "ringcast_connections", &[]) == 2.0,
    );
    let (before, types) = scrape(maddr);

    // Every per-shard family has a series for each of the two shards.
    for (name, ty) in [
        ("ringcast_connections", "gauge"),
        ("ringcast_connections_accepted_total", "counter"),
        ("ringcast_messages_total", "counter"),
        ("ringcast_messages_per_second", "gauge"),
        ("ringcast_received_bytes_total", "counter"),
        ("ringcast_sent_bytes_total", "counter"),
        ("ringcast_broadcast_deliveries_total", "counter"),
        ("ringcast_channel_deliveries_total", "counter"),
        ("ringcast_channels", "gauge"),
        ("ringcast_subscriptions", "gauge"),
        ("ringcast_slow_consumer_disconnects_total", "counter"),
        ("ringcast_partial_frame_bytes", "gauge"),
        ("ringcast_protocol_errors_total", "counter"),
        ("ringcast_request_duration_seconds", "histogram"),
    ] {
        assert_eq!(
            types.get(name).map(String::as_str),
            Some(ty),
            "type of {name}"
        );
        assert_eq!(shards_of(&before, name), ["0", "1"], "shards of {name}");
    }
    for (name, ty) in [
        ("ringcast_build_info", "gauge"),
        ("ringcast_start_time_seconds", "gauge"),
        ("ringcast_uptime_seconds", "gauge"),
        ("ringcast_shards", "gauge"),
        ("ringcast_failed_shards", "gauge"),
        ("ringcast_resident_memory_bytes", "gauge"),
    ] {
        assert_eq!(
            types.get(name).map(String::as_str),
            Some(ty),
            "type of {name}"
        );
    }
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        sum(&before, "ringcast_build_info", &[("version", version)]),
        1.0
    );
    // The backend label names the one the shards run on: the one the test
    // asked for, or io_uring where the default (auto) finds it.
    let backend = match support::server::io_backend_from_env() {
        Some(ringcast::server::IoBackend::Epoll) => "epoll",
        _ => "io-uring",
    };
    assert_eq!(
        sum(&before, "ringcast_build_info", &[("io_backend", backend)]),
        1.0,
        "ringcast_build_info names the backend"
    );
    assert_eq!(sum(&before, "ringcast_shards", &[]), 2.0);
    assert_eq!(sum(&before, "ringcast_failed_shards", &[]), 0.0);
    assert!(sum(&before, "ringcast_resident_memory_bytes", &[]) > 0.0);
    assert!(sum(&before, "ringcast_start_time_seconds", &[]) > 1.6e9);
    assert_eq!(
        sum(&before, "ringcast_connections_accepted_total", &[]),
        2.0
    );
    // Zero-valued series exist from the start, one per code and type.
    assert_eq!(
        sum(
            &before,
            "ringcast_protocol_errors_total",
            &[("code", "slow_consumer")]
        ),
        0.0
    );
    assert_eq!(
        sum(&before, "ringcast_messages_total", &[("type", "custom")]),
        0.0
    );
    let (count_before, _) = histogram(&before);

    // Traffic from `a`: 10 pings, 5 echoes, 1 broadcast (to `b`), 1 frame
    // of bad JSON. Every byte each way is counted.
    let (mut up, mut down) = (0u64, 0u64);
    for i in 0..10 {
        up += send_counted(&mut a, frame(&json!({"type": "ping", "id": i})));
        let (v, n) = recv_counted(&mut a);
        assert_eq!(v["type"], "pong");
        down += n;
    }
    for i in 0..5 {
        up += send_counted(
            &mut a,
            frame(&json!({"type": "echo", "id": i, "content": "x".repeat(100)})),
        );
        let (v, n) = recv_counted(&mut a);
        assert_eq!(v["type"], "echo_response");
        down += n;
    }
    up += send_counted(
        &mut a,
        frame(&json!({"type": "broadcast", "content": "hi"})),
    );
    let (v, n) = recv_counted(&mut a);
    assert_eq!(v["type"], "broadcast_sent");
    down += n;
    let (v, n) = recv_counted(&mut b);
    assert_eq!(v["type"], "broadcast_message");
    down += n;
    up += send_counted(&mut a, frame_bytes(b"{\"type\": \"ping\""));
    let (v, n) = recv_counted(&mut a);
    assert_eq!(v["code"], "invalid_json", "{v}");
    down += n;
    let requests = 10 + 5 + 1 + 1;

    // Sent bytes are counted when the send completes, which may be just
    // after the client has read them: poll for that one.
    let sent_before = sum(&before, "ringcast_sent_bytes_total", &[]);
    let after = RefCell::new(scrape(maddr).0);
    let sent_moved = || sum(&after.borrow(), "ringcast_sent_bytes_total", &[]) - sent_before;
    wait_until(
        Duration::from_secs(5),
        || format!("sent bytes to move by {down} (moved by {})", sent_moved()),
        || {
            *after.borrow_mut() = scrape(maddr).0;
            sent_moved() == down as f64
        },
    );
    let after = after.into_inner();
    let delta =
        |name: &str, want: &[(&str, &str)]| sum(&after, name, want) - sum(&before, name, want);
    assert_eq!(delta("ringcast_messages_total", &[("type", "ping")]), 10.0);
    assert_eq!(delta("ringcast_messages_total", &[("type", "echo")]), 5.0);
    assert_eq!(
        delta("ringcast_messages_total", &[("type", "broadcast")]),
        1.0
    );
    assert_eq!(delta("ringcast_messages_total", &[]), 16.0);
    assert_eq!(
        delta(
            "ringcast_protocol_errors_total",
            &[("code", "invalid_json")]
        ),
        1.0
    );
    assert_eq!(delta("ringcast_protocol_errors_total", &[]), 1.0);
    assert_eq!(delta("ringcast_received_bytes_total", &[]), up as f64);
    assert_eq!(delta("ringcast_broadcast_deliveries_total", &[]), 1.0);
    assert_eq!(delta("ringcast_slow_consumer_disconnects_total", &[]), 0.0);
    assert_eq!(delta("ringcast_connections_accepted_total", &[]), 0.0);
    assert_eq!(sum(&after, "ringcast_connections", &[]), 2.0);
    assert!(delta("ringcast_uptime_seconds", &[]) > 0.0);

    // Every frame that reached the dispatcher was timed, the bad one too.
    let (count_after, sum_after) = histogram(&after);
    assert_eq!(count_after - count_before, requests as f64);
    assert!(sum_after > 0.0 && sum_after < 1.0, "sum {sum_after}");

    drop((a, b));
    wait_until(
        Duration::from_secs(5),
        "the connections gauge to fall back to 0",
        || sum(&scrape(maddr).0, "ringcast_connections", &[]) == 0.0,
    );
    shutdown_within(handle, Duration::from_secs(10));
}

/// Shuts down on another thread; fails (instead of hanging the test binary)
/// if that takes longer than `limit`.
fn shutdown_within(handle: ServerHandle, limit: Duration) -> Duration {
    within(limit, "shutdown", move || {
        handle.shutdown();
    })
}

#[test]
fn healthz_errors_and_503_while_stopping() {
    let (handle, maddr) = start_with_metrics(1);
    let r = get(maddr, "/healthz");
    assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));
    assert_eq!(get(maddr, "/healthz?verbose=1").status, 200);
    assert_eq!(get(maddr, "/nope").status, 404);
    assert_eq!(get(maddr, "/metrics/extra").status, 404);
    let r = http_raw(
        maddr,
        b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(r.status, 405);
    assert!(r.head.contains("allow: get, head"), "{}", r.head);
    assert_eq!(http_raw(maddr, b"hello there\r\n\r\n").status, 400);
    assert_eq!(http_raw(maddr, b"GET /metrics SPDY/3\r\n\r\n").status, 400);
    let big = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "y".repeat(9000));
    assert_eq!(http_raw(maddr, big.as_bytes()).status, 431);
    let r = http_raw(maddr, b"HEAD /metrics HTTP/1.1\r\n\r\n");
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty(), "HEAD has no body");
    // HTTP/1.0 and bare-LF heads are answered too.
    assert_eq!(http_raw(maddr, b"GET /healthz HTTP/1.0\n\n").status, 200);

    // Stopping: the endpoint answers until the shards are done.
    handle.stop();
    let r = get(maddr, "/healthz");
    assert_eq!((r.status, r.body.as_str()), (503, "shutting down\n"));
    assert_eq!(get(maddr, "/metrics").status, 200);
    within(Duration::from_secs(10), "join", move || {
        handle.join().expect("joins");
    });
    assert!(
        TcpStream::connect(maddr).is_err(),
        "nothing listens on the metrics port after the stop"
    );
}

/// Runs `f` on a thread and fails if it has not returned within `limit`.
fn within(limit: Duration, what: &str, f: impl FnOnce() + Send + 'static) -> Duration {
    let (tx, rx) = std::sync::mpsc::channel();
    let t0 = Instant::now();
    std::thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("{what} did not return within {limit:?}"));
    t0.elapsed()
}

#[test]
fn stops_cleanly_with_the_endpoint_running() {
    // Idle endpoint, a client connected that reads until the server closes
    // it (so the shards' drain is quick): the stop is prompt.
    let (handle, maddr) = start_with_metrics(2);
    let mut c = Client::connect(handle.local_addr());
    c.request(&json!({"type": "ping"}));
    let reader = std::thread::spawn(move || c.read_until_closed(Duration::from_secs(10)));
    scrape(maddr);
    let took = shutdown_within(handle, Duration::from_secs(10));
    assert!(took < Duration::from_secs(5), "stop took {took:?}");
    let last = reader.join().unwrap();
    assert_eq!(last.len(), 1, "{last:?}");
    assert_eq!(last[0]["code"], "shutting_down");

    // A client stuck on the endpoint (connected, sending nothing) neither
    // wedges it for other scrapers nor blocks the stop beyond its timeout.
    let (handle, maddr) = start_with_metrics(1);
    let mut stuck = TcpStream::connect(maddr).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let t0 = Instant::now();
    let (s, _) = scrape(maddr);
    assert!(!s.samples.is_empty());
    assert!(
        t0.elapsed() < Duration::from_secs(8),
        "scrape behind a stuck client took {:?}",
        t0.elapsed()
    );
    stuck
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut answer = String::new();
    stuck.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    let _stuck_again = TcpStream::connect(maddr).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    shutdown_within(handle, Duration::from_secs(10));

    // Dropping the handle stops the endpoint too.
    let (handle, maddr) = start_with_metrics(1);
    within(Duration::from_secs(10), "drop", move || drop(handle));
    assert!(TcpStream::connect(maddr).is_err());
}

#[test]
fn busy_metrics_port_is_a_clear_start_up_error() {
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap();
    let err = build(builder(1).metrics_addr(Some(addr))).expect_err("the metrics port is taken");
    let ServerError::Bind(e) = &err else {
        panic!("expected a bind error, got {err:?}");
    };
    assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse);
    let msg = err.to_string();
    assert!(msg.contains(&addr.to_string()), "{msg}");
    assert!(msg.contains("metrics"), "{msg}");

    // The same through the CLI flag and its environment variable: the
    // process exits with the message instead of running without metrics.
    for via_env in [false, true] {
        let mut cmd = server_command();
        cmd.args(local_args(1));
        if via_env {
            cmd.env("RINGCAST_METRICS_ADDR", addr.to_string());
        } else {
            cmd.args(["--metrics-addr", &addr.to_string()]);
        }
        let out = cmd.output().expect("run ringcast server");
        assert!(
            !out.status.success(),
            "server started on a busy metrics port"
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("cannot listen for metrics on {addr}")),
            "{stderr}"
        );
    }
    drop(busy);
}

#[test]
fn off_by_default() {
    let handle = spawn(builder(1));
    assert_eq!(handle.metrics_addr(), None);
    shutdown_within(handle, Duration::from_secs(10));
}

/// deploy/grafana-dashboard.json queries only metrics that exist: each one
/// a live server exposes (the backplane's, which need a cluster, are
/// checked against docs/METRICS.md instead), every query on the import's
/// data source, and the instance variable wired in.
#[test]
fn the_grafana_dashboard_queries_metrics_that_exist() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana-dashboard.json");
    let dash: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let (_h, m) = start_with_metrics(2);
    let scrape = get(m, "/metrics").body;
    let docs = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/METRICS.md"),
    )
    .unwrap();
    let exposed = |name: &str| {
        scrape
            .lines()
            .filter(|l| !l.starts_with('#'))
            .any(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
    };
    let mut queried = 0;
    for p in dash["panels"].as_array().unwrap() {
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${DS_PROMETHEUS}", "{}", p["title"]);
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            assert!(expr.contains("instance=~\"$instance\""), "{expr}");
            let mut rest = expr;
            while let Some(i) = rest.find("ringcast_") {
                let name: String = rest[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[i + name.len()..];
                queried += 1;
                if name.starts_with("ringcast_backplane_") || name == "ringcast_cluster_nodes" {
                    assert!(
                        docs.contains(&format!("`{name}`")),
                        "{name} is not in docs/METRICS.md"
                    );
                } else {
                    assert!(
                        exposed(&name),
                        "{name} (in {:?}) is not exposed",
                        p["title"]
                    );
                }
            }
        }
    }
    assert!(queried >= 20, "only {queried} metric references");
    let var = &dash["templating"]["list"][0];
    assert_eq!(var["name"], "instance");
    assert!(
        exposed("ringcast_build_info"),
        "the instance variable's source"
    );
}

#[test]
fn history_figures_are_exported_when_history_is_on() {
    let handle = spawn(
        builder(1)
            .metrics_addr(Some("127.0.0.1:0".parse().unwrap()))
            .history_size(2),
    );
    let m = handle.metrics_addr().unwrap();
    let mut c = Client::connect(handle.local_addr());
    for n in 0..3 {
        let v = c.request(&json!({"type": "publish", "channel": "h", "content": n}));
        assert_eq!(v["offset"], n + 1);
    }
    let (s, types) = scrape(m);
    assert_eq!(types["ringcast_history_publications"], "gauge");
    assert_eq!(types["ringcast_history_evicted_total"], "counter");
    assert_eq!(sum(&s, "ringcast_history_channels", &[]), 1.0);
    assert_eq!(sum(&s, "ringcast_history_publications", &[]), 2.0);
    assert_eq!(sum(&s, "ringcast_history_evicted_total", &[]), 1.0);
    assert!(sum(&s, "ringcast_history_bytes", &[]) > 100.0);
    let stats = c.request(&json!({"type": "get_stats"}));
    assert_eq!(
        stats["history"],
        json!({"channels": 1, "publications": 2, "bytes": sum(&s, "ringcast_history_bytes", &[]) as u64, "evicted": 1})
    );
    shutdown_within(handle, Duration::from_secs(10));
}
