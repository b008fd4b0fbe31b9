//! Every message type end to end, exact response shapes, and the request- and
//! frame-level errors (which close the connection and which do not).

mod support;

use ringcast::protocol::message::write_response;
use ringcast::server::IoBackend;
use serde_json::json;
use std::time::Duration;
use support::server::{builder, io_backend_from_env, spawn, start};
use support::wait::wait_until;
use support::wire::{frame, frame_bytes, is_timestamp, keys, u64_of, Client};

#[test]
fn ping_pong_fields() {
    let server = start(1);
    let mut c = Client::connect(server.local_addr());
    let ts = "2024-05-06T07:08:09.123Z";
    let v = c.request(&json!({"type": "ping", "timestamp": ts, "id": "p1"}));
    assert_eq!(v["type"], "pong", "{v}");
    assert_eq!(v["ping_timestamp"], ts);
    assert!(
        is_timestamp(v["pong_timestamp"].as_str().unwrap()),
        "bad pong_timestamp in {v}"
    );
    assert_eq!(v["client_id"], c.client_id());
    assert_eq!(v["id"], "p1");
    assert_eq!(
        keys(&v),
        [
            "client_id",
            "id",
            "ping_timestamp",
            "pong_timestamp",
            "type"
        ]
    );

    // Without a timestamp the field is null; without an id there is no id.
    let v = c.request(&json!({"type": "ping"}));
    assert_eq!(v["type"], "pong");
    assert!(v["ping_timestamp"].is_null(), "{v}");
    assert!(v.get("id").is_none(), "{v}");
}

#[test]
fn echo_returns_content_unchanged() {
    let server = start(1);
    let mut c = Client::connect(server.local_addr());
    let contents = [
        json!("hello"),
        json!(""),
        json!("héllo wörld ✓ 😀 \"quoted\" back\\slash\nnew\tline \u{0001}\u{001f} </script>"),
        json!({"a": [1, 2, {"b": null}], "c": true, "d": 1.5, "e": -3, "f": 12345678901234_u64, "g": "x\"y"}),
        json!([1, "two", [3], {}]),
        json!(42),
        json!(null),
        json!(false),
    ];
    for (i, content) in contents.iter().enumerate() {
        let v = c.request(&json!({"type": "echo", "content": content, "id": i}));
        assert_eq!(v["type"], "echo_response", "{v}");
        assert_eq!(&v["content"], content, "content changed");
        assert_eq!(v["id"], i);
        assert_eq!(v["echoed_by"], "ringcast");
        assert!(is_timestamp(v["timestamp"].as_str().unwrap()), "{v}");
        assert_eq!(
            keys(&v),
            ["content", "echoed_by", "id", "timestamp", "type"]
        );
    }
    // Escapes that serde would not produce itself: \u escapes and \/.
    let raw = br#"{"type":"echo","content":"\u00e9\/\ud83d\ude00\u0000","id":"r"}"#;
    c.send_raw(&frame_bytes(raw));
    let v = c.recv();
    assert_eq!(v["type"], "echo_response", "{v}");
    assert_eq!(v["content"], "é/😀\u{0}");
    assert_eq!(v["id"], "r");
}

#[test]
fn message_is_acked() {
    let server = start(1);
    let mut c = Client::connect(server.local_addr());
    let v = c.request(&json!({"type": "message", "content": "hi there", "id": 9}));
    assert_eq!(v["type"], "message_ack", "{v}");
    assert_eq!(v["id"], 9);
    assert!(is_timestamp(v["timestamp"].as_str().unwrap()), "{v}");
    assert_eq!(keys(&v), ["id", "timestamp", "type"]);
}

#[test]
fn broadcast_to_others_without_id() {
    let server = start(2);
    let addr = server.local_addr();
    let mut a = Client::connect(addr);
    let mut b = Client::connect(addr);
    let mut c = Client::connect(addr);
    // Make sure all three are registered before broadcasting.
    a.wait_connected(3, Duration::from_secs(3));
    let v = a.request(&json!({"type": "broadcast", "content": {"k": "v ✓"}, "id": "b1"}));
    assert_eq!(v["type"], "broadcast_sent", "{v}");
    assert_eq!(v["recipients"], 2);
    assert_eq!(v["id"], "b1");
    assert!(is_timestamp(v["timestamp"].as_str().unwrap()), "{v}");
    for r in [&mut b, &mut c] {
        let m = r.recv();
        assert_eq!(m["type"], "broadcast_message", "{m}");
        assert_eq!(m["content"], json!({"k": "v ✓"}));
        assert_eq!(m["from"], a.client_id());
        assert!(is_timestamp(m["timestamp"].as_str().unwrap()), "{m}");
        assert!(
            m.get("id").is_none(),
            "broadcast_message carries an id: {m}"
        );
        assert_eq!(keys(&m), ["content", "from", "timestamp", "type"]);
    }
    // The sender does not receive its own broadcast: its next frame is the pong.
    let v = a.request(&json!({"type": "ping", "id": 1}));
    assert_eq!(v["type"], "pong", "{v}");
}

#[test]
fn get_stats_fields() {
    let server = start(2);
    let addr = server.local_addr();
    let mut a = Client::connect(addr);
    let mut b = Client::connect(addr);
    let mut c = Client::connect(addr);
    wait_until(
        Duration::from_secs(3),
        "3 connections in the server's totals",
        || server.totals().connected == 3,
    );
    a.request(&json!({"type": "ping"}));
    a.request(&json!({"type": "ping"}));
    b.request(&json!({"type": "echo", "content": "x"}));
    a.request(&json!({"type": "broadcast", "content": "hey"}));
    b.recv();
    c.recv();
    c.send_raw(&frame_bytes(b"{oops"));
    c.expect_error("invalid_json");
    c.request(&json!({"type": "message", "content": "m"}));

    let v = c.request(&json!({"type": "get_stats", "id": "s"}));
    assert_eq!(v["type"], "server_stats", "{v}");
    assert_eq!(v["id"], "s");
    assert_eq!(u64_of(&v, "connected_clients"), 3);
    assert!(v["uptime_seconds"].is_u64(), "{v}");
    assert_eq!(u64_of(&v, "total_messages"), 6);
    assert!(
        is_timestamp(v["server_start_time"].as_str().unwrap()),
        "{v}"
    );
    assert!(is_timestamp(v["current_time"].as_str().unwrap()), "{v}");
    assert!(v["server_start_time"].as_str() <= v["current_time"].as_str());
    assert_eq!(u64_of(&v, "shards"), 2);
    assert_eq!(u64_of(&v, "total_connections"), 3);
    assert_eq!(
        v["messages_by_type"],
        json!({"ping": 2, "echo": 1, "broadcast": 1, "get_stats": 1, "message": 1, "auth": 0,
               "custom": 0, "subscribe": 0, "unsubscribe": 0, "publish": 0, "hello": 0,
               "history": 0, "refresh": 0})
    );
    assert!(u64_of(&v, "bytes_received") > 0);
    assert!(u64_of(&v, "bytes_sent") > 0);
    assert_eq!(u64_of(&v, "broadcasts_delivered"), 2);
    assert_eq!(u64_of(&v, "slow_consumer_disconnects"), 0);
    assert_eq!(u64_of(&v, "protocol_errors"), 1);
    let codes = v["errors_by_code"].as_object().unwrap();
    assert_eq!(codes.len(), ringcast::protocol::ErrorCode::COUNT, "{v}");
    for code in ringcast::protocol::ErrorCode::ALL {
        let want = u64::from(code.as_str() == "invalid_json");
        assert_eq!(codes[code.as_str()], want, "{code}: {v}");
    }
    assert!(u64_of(&v, "rss_bytes") > 0);
    assert!(v["messages_per_second"].is_u64(), "{v}");
    let per_shard: Vec<u64> = v["connections_per_shard"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_u64().unwrap())
        .collect();
    assert_eq!(per_shard.len(), 2);
    assert_eq!(per_shard.iter().sum::<u64>(), 3);

    // connected_clients follows closes.
    drop(a);
    drop(b);
    c.wait_connected(1, Duration::from_secs(3));
}

/// The server runs on the backend `RINGCAST_IO_BACKEND` names (the suite's
/// switch, applied by `support::server::build`), and `get_stats` says so.
#[test]
fn io_backend_follows_the_environment() {
    let server = start(1);
    let s = Client::connect(server.local_addr()).stats();
    let reported = s["io_backend"]
        .as_str()
        .unwrap_or_else(|| panic!("no io_backend in {s}"));
    match io_backend_from_env() {
        Some(b) if b != IoBackend::Auto => assert_eq!(reported, b.as_str(), "{s}"),
        _ => assert!(["io-uring", "epoll"].contains(&reported), "{s}"),
    }
}

#[test]
fn unknown_type_and_custom_handler() {
    let server = spawn(builder(1).handler(
        "reverse",
        |req: &ringcast::protocol::Request<'_, '_>,
         client_id: &str,
         now: &str,
         out: &mut Vec<u8>| {
            let text = req.get("text").and_then(|t| t.as_str()).unwrap_or("");
            let reversed: String = text.chars().rev().collect();
            write_response(out, "reversed", req.id.as_ref(), |o| {
                o.str("text", &reversed);
                o.str("client_id", client_id);
                o.raw_str("timestamp", now);
            });
        },
    ));
    let mut c = Client::connect(server.local_addr());
    let v = c.request(&json!({"type": "reverse", "text": "abc✓", "id": 5}));
    assert_eq!(v["type"], "reversed", "{v}");
    assert_eq!(v["text"], "✓cba");
    assert_eq!(v["client_id"], c.client_id());
    assert_eq!(v["id"], 5);
    assert!(is_timestamp(v["timestamp"].as_str().unwrap()), "{v}");

    let v = c.request(&json!({"type": "frobnicate", "id": "u"}));
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["code"], "unknown_type");
    assert_eq!(v["request_type"], "frobnicate");
    assert_eq!(v["id"], "u");
    // Still usable.
    assert_eq!(c.request(&json!({"type": "ping"}))["type"], "pong");
    let s = c.stats();
    assert_eq!(s["messages_by_type"]["custom"], 2, "{s}");
    assert_eq!(s["errors_by_code"]["unknown_type"], 1, "{s}");
}

#[test]
fn id_is_copied_back() {
    let server = start(1);
    let mut c = Client::connect(server.local_addr());
    let ids = [
        json!("abc"),
        json!("quote\"d ✓"),
        json!(0),
        json!(-17),
        json!(18446744073709551615_u64),
        json!(2.5),
        json!(true),
        json!(false),
        json!(null),
    ];
    for id in &ids {
        for req in [
            json!({"type": "ping", "id": id}),
            json!({"type": "echo", "content": 1, "id": id}),
            json!({"type": "message", "content": "m", "id": id}),
            json!({"type": "get_stats", "id": id}),
            json!({"type": "nope", "id": id}),
        ] {
            let v = c.request(&req);
            assert_eq!(v.get("id"), Some(id), "id not copied for {req}: got {v}");
        }
    }
    // A non-scalar id is an invalid_field error, connection stays usable.
    let v = c.request(&json!({"type": "ping", "id": [1]}));
    assert_eq!(v["code"], "invalid_field", "{v}");
    assert_eq!(v["request_type"], "ping");
    assert_eq!(c.request(&json!({"type": "ping"}))["type"], "pong");
}

#[test]
fn request_errors_keep_the_connection() {
    let server = start(1);
    let mut c = Client::connect(server.local_addr());

    c.send_raw(&frame_bytes(b"{not json"));
    let v = c.expect_error("invalid_json");
    assert!(v.get("id").is_none());
    assert_eq!(c.request(&json!({"type": "ping", "id": 1}))["type"], "pong");

    // Invalid UTF-8 inside a string is invalid JSON too.
    c.send_raw(&frame_bytes(
        b"{\"type\":\"echo\",\"content\":\"\xff\xfe\"}",
    ));
    c.expect_error("invalid_json");
    assert_eq!(c.request(&json!({"type": "ping"}))["type"], "pong");

    c.send_raw(&frame_bytes(b"[1,2,3]"));
    c.expect_error("not_an_object");
    c.send_raw(&frame_bytes(b"\"just a string\""));
    c.expect_error("not_an_object");
    assert_eq!(c.request(&json!({"type": "ping"}))["type"], "pong");

    let v = c.request(&json!({"id": 7, "content": "no type"}));
    assert_eq!(v["code"], "missing_type", "{v}");
    assert_eq!(v["id"], 7);
    let v = c.request(&json!({"type": 5, "id": "t"}));
    assert_eq!(v["code"], "missing_type", "{v}");
    assert_eq!(v["id"], "t");
    assert_eq!(c.request(&json!({"type": "ping"}))["type"], "pong");

    let v = c.request(&json!({"type": "echo", "id": 3}));
    assert_eq!(v["code"], "invalid_field", "{v}");
    assert_eq!(v["request_type"], "echo");
    assert_eq!(v["id"], 3);
    let v = c.request(&json!({"type": "broadcast"}));
    assert_eq!(v["code"], "invalid_field", "{v}");
    assert_eq!(v["request_type"], "broadcast");

    let v = c.request(&json!({"type": "ping", "id": 99}));
    assert_eq!(v["type"], "pong");
    assert_eq!(v["id"], 99);
    let s = c.stats();
    assert_eq!(s["errors_by_code"]["invalid_json"], 2, "{s}");
    assert_eq!(s["errors_by_code"]["not_an_object"], 2, "{s}");
    assert_eq!(s["errors_by_code"]["missing_type"], 2, "{s}");
    assert_eq!(s["errors_by_code"]["invalid_field"], 2, "{s}");
    assert_eq!(s["protocol_errors"], 8, "{s}");
}

#[test]
fn oversize_frame_is_rejected_and_closed() {
    let server = spawn(builder(1).max_frame_bytes(1024));
    let addr = server.local_addr();

    // Exactly max_frame_bytes is fine.
    let mut c = Client::connect(addr);
    let pad = "x".repeat(1024 - r#"{"type":"echo","content":""}"#.len());
    let payload = format!(r#"{{"type":"echo","content":"{pad}"}}"#);
    assert_eq!(payload.len(), 1024);
    c.send_raw(&frame_bytes(payload.as_bytes()));
    assert_eq!(c.recv()["type"], "echo_response");

    // One more is frame_too_large, then EOF.
    let mut c = Client::connect(addr);
    c.send_raw(&1025u32.to_be_bytes());
    let v = c.expect_error("frame_too_large");
    assert!(v.get("id").is_none());
    let rest = c.read_until_closed(Duration::from_secs(4));
    assert!(rest.is_empty(), "frames after the error: {rest:?}");

    // Even with the payload following.
    let mut c = Client::connect(addr);
    let mut bytes = 1025u32.to_be_bytes().to_vec();
    bytes.extend_from_slice(&[b' '; 1025]);
    c.send_raw(&bytes);
    c.expect_error("frame_too_large");
    assert!(c.read_until_closed(Duration::from_secs(4)).is_empty());

    let mut c = Client::connect(addr);
    c.send_raw(&[0xff, 0xff, 0xff, 0xff]);
    c.expect_error("frame_too_large");
    assert!(c.read_until_closed(Duration::from_secs(4)).is_empty());

    // A valid request before the bad header is still answered, in order.
    let mut c = Client::connect(addr);
    let mut bytes = frame(&json!({"type": "ping", "id": 1}));
    bytes.extend_from_slice(&[0xff, 0xff, 0xff, 0xff]);
    c.send_raw(&bytes);
    assert_eq!(c.recv()["type"], "pong");
    c.expect_error("frame_too_large");
    assert!(c.read_until_closed(Duration::from_secs(4)).is_empty());

    let s = Client::connect(addr).stats();
    assert_eq!(s["errors_by_code"]["frame_too_large"], 4, "{s}");
}

#[test]
fn empty_frame_is_rejected_and_closed() {
    let server = start(1);
    let mut c = Client::connect(server.local_addr());
    c.send_raw(&[0, 0, 0, 0]);
    c.expect_error("empty_frame");
    assert!(c.read_until_closed(Duration::from_secs(4)).is_empty());
}
