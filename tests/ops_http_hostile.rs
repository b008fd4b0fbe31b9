//! Hostile input on the HTTP listener (docs/RELIABILITY.md lists these):
//! missing, wrong and misplaced keys, bodies over the limit, invalid JSON
//! and channels, slowloris, a thousand idle connections, the connection cap
//! and the per-IP rate limit. After each, the message port and other HTTP
//! clients still work.

mod support;

use serde_json::json;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use support::http::{raise_nofile, raw, request, Api};
use support::server::{builder, spawn};
use support::wire::Client;

const KEY: &str = "k3y-for-tests";

fn start(
    b: impl FnOnce(ringcast::server::ServerBuilder) -> ringcast::server::ServerBuilder,
) -> (ringcast::server::ServerHandle, SocketAddr) {
    let handle = spawn(b(builder(1).http_addr(Some("127.0.0.1:0".parse().unwrap()))));
    let addr = handle.http_addr().unwrap();
    (handle, addr)
}

/// The message port answers and an API read works: nothing was harmed.
fn unharmed(handle: &ringcast::server::ServerHandle, api: &Api) {
    let mut c = Client::connect(handle.local_addr());
    assert_eq!(c.request(&json!({"type": "ping"}))["type"], "pong");
    let t0 = Instant::now();
    assert_eq!(api.get_ok("/v1/stats")["type"], "server_stats");
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "a read took {:?}",
        t0.elapsed()
    );
}

#[test]
fn keys_missing_wrong_or_misplaced_are_refused() {
    let (handle, addr) = start(|b| b.api_key(Some(KEY.into())));
    let api = Api {
        addr,
        key: Some(KEY.into()),
    };
    let body = json!({"channel": "c", "content": 1}).to_string();
    let cases: [(&str, Vec<(&str, String)>); 6] = [
        ("no key", vec![]),
        ("wrong key", vec![("Authorization", "Bearer nope".into())]),
        (
            "a prefix of the key",
            vec![("Authorization", format!("Bearer {}", &KEY[..5]))],
        ),
        (
            "the key with a suffix",
            vec![("Authorization", format!("Bearer {KEY}x"))],
        ),
        (
            "the key without the scheme",
            vec![("Authorization", KEY.into())],
        ),
        ("the key in another header", vec![("X-Api-Key", KEY.into())]),
    ];
    for (what, headers) in &cases {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        for (method, path, b) in [
            ("GET", "/v1/connections", None),
            ("GET", "/v1/stats", None),
            ("POST", "/v1/publish", Some(body.as_str())),
            ("POST", "/v1/disconnect", Some(r#"{"user":"u"}"#)),
        ] {
            let a = request(addr, method, path, &h, b);
            assert_eq!(
                (a.status, a.code().as_str()),
                (401, "unauthorized"),
                "{what} {method} {path}: {}",
                a.body
            );
            assert!(a.head.contains("www-authenticate: bearer"), "{}", a.head);
        }
    }
    // /metrics and /healthz need no key.
    assert_eq!(request(addr, "GET", "/healthz", &[], None).status, 200);
    assert_eq!(request(addr, "GET", "/metrics", &[], None).status, 200);
    unharmed(&handle, &api);
    handle.shutdown();
}

#[test]
fn without_a_key_writes_are_forbidden_and_say_how_to_set_one() {
    // Loopback, no key: reads are open, writes are not.
    let (handle, addr) = start(|b| b);
    let open = Api { addr, key: None };
    assert_eq!(open.get_ok("/v1/connections")["total"], 0);
    let a = open.post("/v1/publish", &json!({"channel": "c", "content": 1}));
    assert_eq!((a.status, a.code().as_str()), (403, "forbidden"));
    let msg = a.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        msg.contains("--api-key") && msg.contains("--api-key-file"),
        "{msg}"
    );
    handle.shutdown();

    // Not loopback, no key: reads are refused too.
    let handle = spawn(builder(1).http_addr(Some("0.0.0.0:0".parse().unwrap())));
    let port = handle.http_addr().unwrap().port();
    let api = Api {
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        key: None,
    };
    let a = api.get("/v1/connections");
    assert_eq!(
        (a.status, a.code().as_str()),
        (403, "forbidden"),
        "{}",
        a.body
    );
    assert_eq!(api.get("/healthz").status, 200);
    handle.shutdown();
}

#[test]
fn bad_bodies_get_their_status_and_code() {
    let (handle, addr) = start(|b| b.api_key(Some(KEY.into())).max_frame_bytes(4096));
    let api = Api {
        addr,
        key: Some(KEY.into()),
    };
    // Over max_frame_bytes: 413, whether the length is declared or not.
    let big = json!({"channel": "c", "content": "x".repeat(5000)});
    let a = api.post("/v1/publish", &big);
    assert_eq!(
        (a.status, a.code().as_str()),
        (413, "payload_too_large"),
        "{}",
        a.body
    );
    let chunked_body = big.to_string();
    let chunked = format!(
        "POST /v1/publish HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {KEY}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{chunked_body}\r\n0\r\n\r\n",
        chunked_body.len()
    );
    let a = raw(addr, chunked.as_bytes(), Duration::from_secs(10));
    assert_eq!(
        (a.status, a.code().as_str()),
        (413, "payload_too_large"),
        "{}",
        a.body
    );
    // Not JSON, not an object, wrong fields, bad channels.
    let auth = format!("Bearer {KEY}");
    let h = [("Authorization", auth.as_str())];
    for (body, status, code) in [
        ("{nope", 400, "invalid_json"),
        ("", 400, "invalid_json"),
        ("[1,2]", 400, "invalid_json"),
        (r#"{"content":1}"#, 400, "invalid_field"),
        (r#"{"channel":5,"content":1}"#, 400, "invalid_field"),
        (r#"{"channel":"c"}"#, 400, "invalid_field"),
        (
            r#"{"channel":"c","content":1,"extra":2}"#,
            400,
            "invalid_field",
        ),
        (r#"{"channel":"","content":1}"#, 400, "invalid_channel"),
        (
            r#"{"channel":"a\u0001b","content":1}"#,
            400,
            "invalid_channel",
        ),
    ] {
        let a = request(addr, "POST", "/v1/publish", &h, Some(body));
        assert_eq!(
            (a.status, a.code()),
            (status, code.to_string()),
            "{body}: {}",
            a.body
        );
    }
    let long = json!({"channel": "c".repeat(300), "content": 1});
    assert_eq!(api.post("/v1/publish", &long).code(), "invalid_channel");
    let a = api.post("/v1/unsubscribe", &json!({"client_id": "x", "channel": ""}));
    assert_eq!(a.code(), "invalid_channel");
    let a = api.post("/v1/disconnect", &json!({"client_id": "x", "user": "y"}));
    assert_eq!((a.status, a.code().as_str()), (400, "invalid_field"));
    // Unknown paths and methods.
    assert_eq!(api.get("/v1/nothing").code(), "not_found");
    let a = api.get("/v1/publish");
    assert_eq!((a.status, a.code().as_str()), (405, "method_not_allowed"));
    assert!(a.head.contains("allow: post"), "{}", a.head);
    unharmed(&handle, &api);
    handle.shutdown();
}

#[test]
fn slowloris_and_a_thousand_idle_connections_harm_no_one() {
    raise_nofile();
    let (handle, addr) = start(|b| b.api_key(Some(KEY.into())));
    let api = Api {
        addr,
        key: Some(KEY.into()),
    };
    let idle: Vec<TcpStream> = (0..1000)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    // A slowloris: a head trickled a byte every 200 ms, never finished.
    let mut slow = TcpStream::connect(addr).unwrap();
    let trickler = std::thread::spawn(move || {
        let t0 = Instant::now();
        // Between bytes, wait for the answer instead of sleeping: once it
        // is there, stop writing (a write after the server's close would
        // draw a reset that could discard the answer unread).
        slow.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        for b in b"GET /v1/stats HTTP/1.1\r\nHost: slow\r\nX-Slow: "
            .iter()
            .cycle()
        {
            if slow.write_all(&[*b]).is_err() || t0.elapsed() > Duration::from_secs(10) {
                break;
            }
            if slow.peek(&mut [0u8; 1]).is_ok() {
                break; // the answer (or the close) is in
            }
        }
        slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = Vec::new();
        let _ = slow.read_to_end(&mut got);
        (t0.elapsed(), String::from_utf8_lossy(&got).to_string())
    });
    // Meanwhile, everyone else is served at once.
    for _ in 0..5 {
        unharmed(&handle, &api);
    }
    let (took, answer) = trickler.join().unwrap();
    assert!(
        took < Duration::from_secs(8),
        "the slowloris was cut after {took:?}"
    );
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer:?}");
    assert!(answer.contains(r#""code":"request_timeout""#), "{answer}");
    // The idle ones are cut by the head deadline too (they sent nothing).
    for mut s in idle {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        assert!(
            got.is_empty() || got.starts_with(b"HTTP/1.1 408 "),
            "{:?}",
            String::from_utf8_lossy(&got)
        );
    }
    unharmed(&handle, &api);
    handle.shutdown();
}

#[test]
fn the_connection_cap_answers_503_and_frees_up() {
    let (handle, addr) = start(|b| b.api_key(Some(KEY.into())).http_max_connections(4));
    let api = Api {
        addr,
        key: Some(KEY.into()),
    };
    let held: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(200));
    let a = api.get("/v1/stats");
    assert_eq!(
        (a.status, a.code().as_str()),
        (503, "too_many_connections"),
        "{}",
        a.body
    );
    drop(held);
    std::thread::sleep(Duration::from_millis(200));
    unharmed(&handle, &api);
    handle.shutdown();
}

#[test]
fn the_rate_limit_answers_429_per_address() {
    let (handle, addr) = start(|b| b.api_key(Some(KEY.into())).http_rate_limit(5));
    let api = Api {
        addr,
        key: Some(KEY.into()),
    };
    let statuses: Vec<u16> = (0..8).map(|_| api.get("/v1/stats").status).collect();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert!(
        limited >= 2 && statuses[..5].iter().all(|s| *s == 200),
        "{statuses:?}"
    );
    let a = api.get("/v1/stats");
    assert_eq!((a.status, a.code().as_str()), (429, "rate_limited"));
    assert!(a.head.contains("retry-after: 1"), "{}", a.head);
    // The message port does not care; a second later the address may again.
    let mut c = Client::connect(handle.local_addr());
    assert_eq!(c.request(&json!({"type": "ping"}))["type"], "pong");
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(api.get("/v1/stats").status, 200);
    handle.shutdown();
}
