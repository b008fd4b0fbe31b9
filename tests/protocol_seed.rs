//! The seed protocol's examples, end to end through the sans-IO core:
//! every request example is framed, decoded by `FrameDecoder` and classified
//! by `parse_request`; every response writer's output is checked field by
//! field against the seed's response examples (names, JSON types, values).
//! Also: `id` correlation, request rejections, error codes and timestamps.

mod support;

use ringcast::protocol::frame::{FrameDecoder, DEFAULT_MAX_FRAME_BYTES, HEADER_LEN};
use ringcast::protocol::message::{
    write_auth_ok, write_broadcast_message, write_broadcast_sent, write_echo_response, write_error,
    write_message_ack, write_pong, write_server_stats, CompressionReport, SERVER_NAME,
};
use ringcast::protocol::{
    parse_request, ErrorCode, FrameError, JsonParser, Request, RequestKind, ServerStats,
    StatsReport, TimestampCache,
};
use serde_json::{json, Value};
use std::ops::ControlFlow;
use support::wire::{frame_bytes, is_timestamp, keys};

/// The seed's request examples, verbatim (pretty-printed as in the seed).
const SEED_PING: &str = r#"{
  "type": "ping",
  "timestamp": "2024-01-01T12:00:00.000Z",
  "client_info": "TCP Client info"
}"#;
const SEED_ECHO: &str = r#"{
  "type": "echo",
  "content": "Hello TCP Server!",
  "timestamp": "2024-01-01T12:00:00.000Z"
}"#;
const SEED_BROADCAST: &str = r#"{
  "type": "broadcast",
  "content": "Message to all clients",
  "timestamp": "2024-01-01T12:00:00.000Z"
}"#;
const SEED_GET_STATS: &str = r#"{
  "type": "get_stats",
  "timestamp": "2024-01-01T12:00:00.000Z"
}"#;

/// 2024-01-01T12:00:00.001Z, the seed's response time.
const SEED_NOW_MS: u64 = 1_704_110_400_001;

fn assert_timestamp(v: &Value, what: &str) {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {v}"));
    assert!(is_timestamp(s), "{what} = {s:?} is not a timestamp");
}

fn sorted(mut k: Vec<&str>) -> Vec<&str> {
    k.sort_unstable();
    k
}

/// Decodes the single frame in `out` and parses its payload with serde_json.
fn one_frame(out: &[u8]) -> Value {
    let mut frames = Vec::new();
    let mut buf = out.to_vec();
    FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES)
        .feed(&mut buf, |p| {
            frames.push(p.to_vec());
            ControlFlow::Continue(())
        })
        .expect("a well-formed response frame");
    assert_eq!(frames.len(), 1, "exactly one frame");
    let len = u32::from_be_bytes(out[..HEADER_LEN].try_into().unwrap()) as usize;
    assert_eq!(
        len + HEADER_LEN,
        out.len(),
        "header length covers the payload"
    );
    serde_json::from_slice(&frames[0]).expect("response is valid JSON")
}

/// Parses `payload` as a request and hands it to `f`; panics on rejection.
fn with_request<R>(payload: &str, f: impl FnOnce(&Request<'_, '_>) -> R) -> R {
    let mut parser = JsonParser::new();
    let mut buf = payload.as_bytes().to_vec();
    parse_request(&mut parser, &mut buf, |r| match r {
        Ok(req) => f(&req),
        Err(rej) => panic!("rejected {payload}: {:?}", rej.error),
    })
}

/// The outcome of a rejected payload, owned.
#[derive(Debug, PartialEq)]
struct Rejection {
    code: ErrorCode,
    request_type: Option<String>,
    /// The error response written for it, parsed.
    response: Value,
}

fn reject(payload: &[u8]) -> Rejection {
    let mut parser = JsonParser::new();
    let mut buf = payload.to_vec();
    parse_request(&mut parser, &mut buf, |r| match r {
        Ok(req) => panic!(
            "accepted {:?} as {:?}",
            String::from_utf8_lossy(payload),
            req.kind
        ),
        Err(rej) => {
            let mut out = Vec::new();
            write_error(
                &mut out,
                rej.id.as_ref(),
                rej.error.code,
                rej.error.message,
                rej.error.request_type,
            );
            Rejection {
                code: rej.error.code,
                request_type: rej.error.request_type.map(str::to_owned),
                response: one_frame(&out),
            }
        }
    })
}

#[derive(Debug, PartialEq)]
struct Seen {
    kind: RequestKind,
    type_name: String,
    timestamp: Option<String>,
    content: Option<String>,
    client_info: Option<String>,
}

fn decode_requests(chunks: &mut [Vec<u8>]) -> Vec<Seen> {
    let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES);
    let mut parser = JsonParser::new();
    let mut seen = Vec::new();
    for chunk in chunks.iter_mut() {
        dec.feed(chunk, |payload| {
            parse_request(&mut parser, payload, |r| {
                let req = r.expect("seed request accepted");
                let s = |k: &str| req.get(k).and_then(|v| v.as_str()).map(str::to_owned);
                assert!(req.id.is_none());
                seen.push(Seen {
                    kind: req.kind,
                    type_name: req.type_name.to_owned(),
                    timestamp: s("timestamp"),
                    content: s("content"),
                    client_info: s("client_info"),
                });
            });
            ControlFlow::Continue(())
        })
        .expect("seed frames are well formed");
    }
    assert!(!dec.in_frame());
    seen
}

fn expected_seed_requests() -> Vec<Seen> {
    let ts = Some("2024-01-01T12:00:00.000Z".to_owned());
    vec![
        Seen {
            kind: RequestKind::Ping,
            type_name: "ping".into(),
            timestamp: ts.clone(),
            content: None,
            client_info: Some("TCP Client info".into()),
        },
        Seen {
            kind: RequestKind::Echo,
            type_name: "echo".into(),
            timestamp: ts.clone(),
            content: Some("Hello TCP Server!".into()),
            client_info: None,
        },
        Seen {
            kind: RequestKind::Broadcast,
            type_name: "broadcast".into(),
            timestamp: ts.clone(),
            content: Some("Message to all clients".into()),
            client_info: None,
        },
        Seen {
            kind: RequestKind::GetStats,
            type_name: "get_stats".into(),
            timestamp: ts,
            content: None,
            client_info: None,
        },
    ]
}

fn seed_stream() -> Vec<u8> {
    let mut stream = Vec::new();
    for p in [SEED_PING, SEED_ECHO, SEED_BROADCAST, SEED_GET_STATS] {
        stream.extend(frame_bytes(p.as_bytes()));
    }
    stream
}

#[test]
fn seed_requests_decode_in_one_chunk() {
    let got = decode_requests(&mut [seed_stream()]);
    assert_eq!(got, expected_seed_requests());
}

#[test]
fn seed_requests_decode_byte_by_byte() {
    let mut chunks: Vec<Vec<u8>> = seed_stream().iter().map(|b| vec![*b]).collect();
    let got = decode_requests(&mut chunks);
    assert_eq!(got, expected_seed_requests());
}

#[test]
fn seed_requests_decode_compact() {
    // The same requests as a client would really send them: compact JSON.
    let mut stream = Vec::new();
    for p in [SEED_PING, SEED_ECHO, SEED_BROADCAST, SEED_GET_STATS] {
        let v: Value = serde_json::from_str(p).unwrap();
        stream.extend(frame_bytes(&serde_json::to_vec(&v).unwrap()));
    }
    let mut chunks: Vec<Vec<u8>> = stream.chunks(7).map(<[u8]>::to_vec).collect();
    assert_eq!(decode_requests(&mut chunks), expected_seed_requests());
}

#[test]
fn pong_matches_seed() {
    let mut ts = TimestampCache::new();
    let now = ts.format(SEED_NOW_MS).to_owned();
    let mut out = Vec::new();
    with_request(SEED_PING, |req| {
        write_pong(&mut out, req, &now, "127.0.0.1:12345")
    });
    let v = one_frame(&out);
    assert_eq!(
        keys(&v),
        sorted(vec![
            "type",
            "ping_timestamp",
            "pong_timestamp",
            "client_id"
        ])
    );
    assert_eq!(v["type"], "pong");
    assert_eq!(v["ping_timestamp"], "2024-01-01T12:00:00.000Z");
    assert_eq!(v["pong_timestamp"], "2024-01-01T12:00:00.001Z");
    assert_eq!(v["client_id"], "127.0.0.1:12345");
    assert_timestamp(&v["pong_timestamp"], "pong_timestamp");
    // The seed's own example, as a whole.
    let seed: Value = serde_json::from_str(
        r#"{"type":"pong","ping_timestamp":"2024-01-01T12:00:00.000Z",
            "pong_timestamp":"2024-01-01T12:00:00.001Z","client_id":"127.0.0.1:12345"}"#,
    )
    .unwrap();
    assert_eq!(v, seed);
}

#[test]
fn pong_without_ping_timestamp_has_null() {
    let mut out = Vec::new();
    with_request(r#"{"type":"ping"}"#, |req| {
        write_pong(&mut out, req, "2024-01-01T12:00:00.001Z", "c")
    });
    let v = one_frame(&out);
    assert_eq!(v["ping_timestamp"], Value::Null);
    assert!(v.as_object().unwrap().contains_key("ping_timestamp"));
}

#[test]
fn echo_response_matches_seed() {
    let mut out = Vec::new();
    with_request(SEED_ECHO, |req| {
        write_echo_response(&mut out, req, "2024-01-01T12:00:00.001Z")
    });
    let v = one_frame(&out);
    assert_eq!(
        keys(&v),
        sorted(vec!["type", "content", "timestamp", "echoed_by"])
    );
    assert_eq!(v["type"], "echo_response");
    assert_eq!(v["content"], "Hello TCP Server!");
    assert_timestamp(&v["timestamp"], "timestamp");
    assert_eq!(v["echoed_by"], SERVER_NAME);
    assert!(v["echoed_by"].is_string());
}

#[test]
fn echo_content_is_copied_unchanged_whatever_its_json_type() {
    let content =
        json!({"nested": [1, -2, 3.5, "a\"b\\c\u{1}", null, true, {"k": {}}], "é": "漢字🎉"});
    let req = json!({"type": "echo", "content": content}).to_string();
    let mut out = Vec::new();
    with_request(&req, |r| {
        write_echo_response(&mut out, r, "2024-01-01T12:00:00.001Z")
    });
    assert_eq!(one_frame(&out)["content"], content);
}

#[test]
fn broadcast_sent_matches_seed() {
    let mut out = Vec::new();
    with_request(SEED_BROADCAST, |req| {
        write_broadcast_sent(&mut out, req, 5, "2024-01-01T12:00:00.001Z")
    });
    let v = one_frame(&out);
    assert_eq!(keys(&v), sorted(vec!["type", "recipients", "timestamp"]));
    assert_eq!(v["type"], "broadcast_sent");
    assert_eq!(v["recipients"].as_u64(), Some(5));
    assert_timestamp(&v["timestamp"], "timestamp");
}

#[test]
fn broadcast_message_carries_content_from_timestamp_and_no_id() {
    let mut out = Vec::new();
    let req = r#"{"type":"broadcast","content":"Message to all clients","id":"sender-7"}"#;
    with_request(req, |r| {
        assert!(r.id.is_some());
        write_broadcast_message(&mut out, r, "127.0.0.1:40000", "2024-01-01T12:00:00.001Z")
    });
    let v = one_frame(&out);
    assert_eq!(
        keys(&v),
        sorted(vec!["type", "content", "from", "timestamp"])
    );
    assert_eq!(v["type"], "broadcast_message");
    assert_eq!(v["content"], "Message to all clients");
    assert_eq!(v["from"], "127.0.0.1:40000");
    assert_timestamp(&v["timestamp"], "timestamp");
}

#[test]
fn message_ack_shape() {
    let mut out = Vec::new();
    with_request(r#"{"type":"message","content":"hi","id":3}"#, |r| {
        assert_eq!(r.kind, RequestKind::Message);
        write_message_ack(&mut out, r, "2024-01-01T12:00:00.001Z")
    });
    let v = one_frame(&out);
    assert_eq!(keys(&v), sorted(vec!["type", "timestamp", "id"]));
    assert_eq!(v["type"], "message_ack");
    assert_eq!(v["id"], 3);
    assert_timestamp(&v["timestamp"], "timestamp");
}

#[test]
fn auth_ok_shape() {
    let mut out = Vec::new();
    with_request(r#"{"type":"auth","token":"s3cret","id":"a"}"#, |r| {
        assert_eq!(r.kind, RequestKind::Auth);
        write_auth_ok(&mut out, r.id.as_ref())
    });
    assert_eq!(one_frame(&out), json!({"type": "auth_ok", "id": "a"}));
}

const SEED_STATS_KEYS: [&str; 6] = [
    "type",
    "connected_clients",
    "uptime_seconds",
    "total_messages",
    "server_start_time",
    "current_time",
];

const EXTRA_STATS_KEYS: [&str; 21] = [
    "shards",
    "total_connections",
    "messages_by_type",
    "bytes_received",
    "bytes_sent",
    "broadcasts_delivered",
    "slow_consumer_disconnects",
    "protocol_errors",
    "errors_by_code",
    "rss_bytes",
    "messages_per_second",
    "connections_per_shard",
    "partial_frame_bytes",
    "io_backend",
    "tls_handshake_failures",
    "auth_failures",
    "channels",
    "subscriptions",
    "publishes",
    "channel_deliveries",
    "compression",
];

#[test]
fn server_stats_matches_seed_plus_extras() {
    let by_type = [("ping", 1000), ("echo", 200), ("custom", 0)];
    let by_code = [("invalid_json", 2)];
    let per_shard = [2, 1];
    let report = StatsReport {
        connected_clients: 3,
        uptime_seconds: 3600,
        total_messages: 1250,
        server_start_time: "2024-01-01T11:00:00.000Z",
        current_time: "2024-01-01T12:00:00.000Z",
        shards: 2,
        total_connections: 17,
        messages_by_type: &by_type,
        bytes_received: 123_456,
        bytes_sent: 654_321,
        broadcasts_delivered: 40,
        slow_consumer_disconnects: 1,
        protocol_errors: 2,
        errors_by_code: &by_code,
        rss_bytes: 10 << 20,
        messages_per_second: 99,
        connections_per_shard: &per_shard,
        partial_frame_bytes: 65536,
        io_backend: "io-uring",
        tls_handshake_failures: &[("malformed", 0)],
        auth_failures: &[("expired", 0)],
        channels: 5,
        subscriptions: 12,
        publishes: 30,
        channel_deliveries: 300,
        cluster: None,
        history: None,
        compression: CompressionReport {
            connections: [2, 1],
            frames_in: 4,
            bytes_in_wire: 1000,
            bytes_in_plain: 8000,
            frames_out: 30,
            bytes_out_plain: 300_000,
            bytes_out_wire: 70_000,
            compressions: 3,
        },
    };
    let mut out = Vec::new();
    with_request(SEED_GET_STATS, |r| {
        write_server_stats(&mut out, r.id.as_ref(), &report)
    });
    let v = one_frame(&out);
    let mut want: Vec<&str> = SEED_STATS_KEYS.to_vec();
    want.extend(EXTRA_STATS_KEYS);
    assert_eq!(keys(&v), sorted(want));
    assert_eq!(
        v["compression"],
        serde_json::json!({"connections": {"zstd": 2, "deflate": 1}, "frames_in": 4,
            "bytes_in_wire": 1000, "bytes_in_plain": 8000, "frames_out": 30,
            "bytes_out_plain": 300_000, "bytes_out_wire": 70_000, "compressions": 3,
            "ratio_in": 8.0, "ratio_out": 4.28})
    );
    let back: ringcast::protocol::ServerStats = serde_json::from_value(v.clone()).unwrap();
    assert_eq!(back.compression.expect("read back").ratio_out, 4.28);
    // The seed's six fields, with the seed's values and JSON types.
    let seed: Value = serde_json::from_str(
        r#"{"type":"server_stats","connected_clients":3,"uptime_seconds":3600,
            "total_messages":1250,"server_start_time":"2024-01-01T11:00:00.000Z",
            "current_time":"2024-01-01T12:00:00.000Z"}"#,
    )
    .unwrap();
    for k in SEED_STATS_KEYS {
        assert_eq!(v[k], seed[k], "field {k}");
    }
    assert_timestamp(&v["server_start_time"], "server_start_time");
    assert_timestamp(&v["current_time"], "current_time");
    // The seed's fields come first, in the seed's order.
    let text = std::str::from_utf8(&out[HEADER_LEN..]).unwrap();
    let pos: Vec<usize> = SEED_STATS_KEYS
        .iter()
        .map(|k| text.find(&format!("\"{k}\":")).unwrap())
        .collect();
    assert!(pos.windows(2).all(|w| w[0] < w[1]), "seed order: {text}");
    assert!(EXTRA_STATS_KEYS
        .iter()
        .all(|k| text.find(&format!("\"{k}\":")).unwrap() > pos[5]));
    // Extras.
    assert_eq!(v["shards"], 2);
    assert_eq!(
        v["messages_by_type"],
        json!({"ping":1000,"echo":200,"custom":0})
    );
    assert_eq!(v["errors_by_code"], json!({"invalid_json":2}));
    assert_eq!(v["connections_per_shard"], json!([2, 1]));
    assert_eq!(v["rss_bytes"], 10 << 20);
    assert_eq!(v["partial_frame_bytes"], 65536);
    assert_eq!(v["io_backend"], "io-uring");
    assert_eq!(
        (
            &v["channels"],
            &v["subscriptions"],
            &v["publishes"],
            &v["channel_deliveries"]
        ),
        (&json!(5), &json!(12), &json!(30), &json!(300))
    );
    // And the client-side type reads it back.
    let stats: ServerStats = serde_json::from_value(v).unwrap();
    assert_eq!(stats.total_messages, 1250);
    assert_eq!(stats.messages_by_type["echo"], 200);
    assert_eq!(stats.connections_per_shard, vec![2, 1]);
    assert_eq!(stats.partial_frame_bytes, 65536);
    assert_eq!((stats.channels, stats.subscriptions), (5, 12));
    assert_eq!((stats.publishes, stats.channel_deliveries), (30, 300));
    // A seed-only server's stats (no extras) also deserialize.
    let stats: ServerStats = serde_json::from_value(seed).unwrap();
    assert_eq!(stats.connected_clients, 3);
    assert_eq!(stats.shards, 0);
}

#[test]
fn server_stats_with_empty_lists() {
    let mut out = Vec::new();
    let report = StatsReport {
        server_start_time: "2024-01-01T11:00:00.000Z",
        current_time: "2024-01-01T12:00:00.000Z",
        ..StatsReport::default()
    };
    write_server_stats(&mut out, None, &report);
    let v = one_frame(&out);
    assert_eq!(v["messages_by_type"], json!({}));
    assert_eq!(v["errors_by_code"], json!({}));
    assert_eq!(v["connections_per_shard"], json!([]));
}

#[test]
fn error_response_shape() {
    let mut out = Vec::new();
    write_error(
        &mut out,
        None,
        ErrorCode::UnknownType,
        "no handler for \"custom_type\"",
        Some("custom_type"),
    );
    assert_eq!(
        one_frame(&out),
        json!({"type":"error","code":"unknown_type",
               "message":"no handler for \"custom_type\"","request_type":"custom_type"})
    );
    // Without a request type (e.g. a framing error) the field is absent.
    let mut out = Vec::new();
    write_error(&mut out, None, ErrorCode::FrameTooLarge, "too large", None);
    let v = one_frame(&out);
    assert_eq!(keys(&v), sorted(vec!["type", "code", "message"]));
    assert_eq!(v["code"], "frame_too_large");
}

#[test]
fn scalar_ids_are_copied_back_unchanged() {
    let ids = [
        json!("req-1"),
        json!(""),
        json!("quote\" é 🎉"),
        json!(0),
        json!(42),
        json!(-7),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(true),
        json!(false),
        json!(null),
    ];
    for id in ids {
        let req = json!({"type":"ping","timestamp":"2024-01-01T12:00:00.000Z","id":id});
        let mut out = Vec::new();
        with_request(&req.to_string(), |r| {
            assert!(r.id.is_some(), "id {id} seen");
            write_pong(&mut out, r, "2024-01-01T12:00:00.001Z", "c");
        });
        let v = one_frame(&out);
        assert_eq!(v["id"], id, "id {id}");
        assert!(v.as_object().unwrap().contains_key("id"));
        // Each writer that answers a request copies it.
        let req = json!({"type":"echo","content":"x","id":id}).to_string();
        let now = "2024-01-01T12:00:00.001Z";
        let mut outs = vec![Vec::new(); 3];
        with_request(&req, |r| {
            write_echo_response(&mut outs[0], r, now);
            write_broadcast_sent(&mut outs[1], r, 1, now);
            write_message_ack(&mut outs[2], r, now);
        });
        for o in &outs {
            assert_eq!(one_frame(o)["id"], id, "id {id}");
        }
        // And errors for a payload that was rejected after the id was read.
        let r = reject(json!({"type":"echo","id":id}).to_string().as_bytes());
        assert_eq!(r.code, ErrorCode::InvalidField);
        assert_eq!(r.response["id"], id);
    }
    // Without an id, no id.
    let mut out = Vec::new();
    with_request(r#"{"type":"ping"}"#, |r| write_pong(&mut out, r, "t", "c"));
    assert!(!one_frame(&out).as_object().unwrap().contains_key("id"));
}

#[test]
fn non_scalar_id_is_invalid_field() {
    for id in [r#"[1,2]"#, r#"{"a":1}"#, "[]", "{}"] {
        let payload = format!(r#"{{"type":"ping","id":{id}}}"#);
        let r = reject(payload.as_bytes());
        assert_eq!(r.code, ErrorCode::InvalidField, "{payload}");
        assert_eq!(r.request_type.as_deref(), Some("ping"));
        assert_eq!(r.response["code"], "invalid_field");
        assert_eq!(r.response["request_type"], "ping");
        // A non-scalar id is not echoed.
        assert!(!r.response.as_object().unwrap().contains_key("id"));
    }
}

#[test]
fn missing_or_non_string_type_is_missing_type() {
    for payload in [
        r#"{}"#,
        r#"{"id":1}"#,
        r#"{"content":"x","id":"k"}"#,
        r#"{"type":5}"#,
        r#"{"type":null,"id":9}"#,
        r#"{"type":["ping"]}"#,
        r#"{"type":{"name":"ping"}}"#,
        r#"{"nested":{"type":"ping"}}"#,
    ] {
        let r = reject(payload.as_bytes());
        assert_eq!(r.code, ErrorCode::MissingType, "{payload}");
        assert_eq!(r.request_type, None);
        assert_eq!(r.response["code"], "missing_type");
        let want: Value = serde_json::from_str::<Value>(payload).unwrap()["id"].clone();
        assert_eq!(r.response.get("id").cloned().unwrap_or(Value::Null), want);
    }
}

#[test]
fn non_object_top_level_is_not_an_object() {
    for payload in [
        "[]",
        r#"[{"type":"ping"}]"#,
        "1",
        "-2.5",
        r#""ping""#,
        "true",
        "null",
    ] {
        let r = reject(payload.as_bytes());
        assert_eq!(r.code, ErrorCode::NotAnObject, "{payload}");
        assert_eq!(r.response["code"], "not_an_object");
        assert!(r.response.get("id").is_none());
    }
}

#[test]
fn bad_json_and_bad_utf8_are_invalid_json() {
    for payload in [
        &b"{"[..],
        b"{\"type\":\"ping\"",
        b"{\"type\":\"ping\",}",
        b"{'type':'ping'}",
        b"not json",
        b"{\"type\":\"ping\"} trailing",
        b" ",
        b"{\"type\":\"\xff\"}",
        b"{\"type\":\"ping\",\"content\":\"\xc3\x28\"}",
        b"\xef\xbb\xbf\xff",
        b"{\"type\":\"ping\",\"s\":\"\xed\xa0\x80\"}",
    ] {
        let r = reject(payload);
        assert_eq!(
            r.code,
            ErrorCode::InvalidJson,
            "{:?}",
            String::from_utf8_lossy(payload)
        );
        assert_eq!(r.request_type, None);
        assert_eq!(r.response["code"], "invalid_json");
    }
}

#[test]
fn integers_beyond_64_bits_are_invalid_json() {
    // Documented limit (docs/PROTOCOL.md): simd-json, built without its
    // `big-int-as-float` feature, rejects integers that fit neither u64 nor
    // i64, although they are valid JSON (serde_json reads them as f64).
    // Enabling that feature changes this answer: update the doc and this test.
    for payload in [
        r#"{"type":"echo","content":18446744073709551616}"#,
        r#"{"type":"echo","content":-9223372036854775809}"#,
        r#"{"type":"ping","id":100000000000000000000000}"#,
    ] {
        assert!(serde_json::from_str::<Value>(payload).is_ok());
        assert_eq!(
            reject(payload.as_bytes()).code,
            ErrorCode::InvalidJson,
            "{payload}"
        );
    }
    // The extremes that do fit are accepted and echoed exactly.
    let req = r#"{"type":"echo","content":[18446744073709551615,-9223372036854775808]}"#;
    let mut out = Vec::new();
    with_request(req, |r| {
        write_echo_response(&mut out, r, "2024-01-01T12:00:00.001Z")
    });
    assert_eq!(one_frame(&out)["content"], json!([u64::MAX, i64::MIN]));
}

#[test]
fn required_fields_are_invalid_field() {
    for (payload, ty) in [
        (r#"{"type":"echo"}"#, "echo"),
        (r#"{"type":"broadcast","id":1}"#, "broadcast"),
        (r#"{"type":"message"}"#, "message"),
        (r#"{"type":"auth"}"#, "auth"),
        (r#"{"type":"auth","token":42}"#, "auth"),
    ] {
        let r = reject(payload.as_bytes());
        assert_eq!(r.code, ErrorCode::InvalidField, "{payload}");
        assert_eq!(r.request_type.as_deref(), Some(ty));
        assert_eq!(r.response["request_type"], ty);
    }
}

#[test]
fn custom_types_are_accepted_as_custom() {
    with_request(r#"{"type":"custom_type","data":"value","id":5}"#, |r| {
        assert_eq!(r.kind, RequestKind::Custom);
        assert_eq!(r.type_name, "custom_type");
        assert_eq!(r.get("data").and_then(|v| v.as_str()), Some("value"));
    });
}

#[test]
fn every_error_code_round_trips() {
    let mut seen = std::collections::HashSet::new();
    for code in ErrorCode::ALL {
        let s = code.as_str();
        assert!(seen.insert(s), "duplicate wire string {s}");
        assert_eq!(ErrorCode::from_wire(s), Some(code));
        assert_eq!(code.to_string(), s);
        assert!(
            !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
            "{s}"
        );
        // Every code survives an error frame.
        let mut out = Vec::new();
        write_error(&mut out, None, code, "m", None);
        assert_eq!(one_frame(&out)["code"], s);
    }
    assert_eq!(ErrorCode::from_wire("nope"), None);
    assert_eq!(ErrorCode::from_wire("INVALID_JSON"), None);
    // Framing errors map to codes that close the connection; JSON-level ones do not.
    assert_eq!(FrameError::Empty.code(), ErrorCode::EmptyFrame);
    assert_eq!(
        FrameError::TooLarge { len: 2, max: 1 }.code(),
        ErrorCode::FrameTooLarge
    );
    for c in [ErrorCode::EmptyFrame, ErrorCode::FrameTooLarge] {
        assert!(c.closes_connection());
    }
    for c in [
        ErrorCode::InvalidJson,
        ErrorCode::NotAnObject,
        ErrorCode::MissingType,
        ErrorCode::UnknownType,
        ErrorCode::InvalidField,
    ] {
        assert!(!c.closes_connection(), "{c}");
    }
}

#[test]
fn framing_errors_from_headers() {
    let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES);
    assert_eq!(
        dec.feed(&mut [0, 0, 0, 0], |_| ControlFlow::Continue(())),
        Err(FrameError::Empty)
    );
    let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES);
    let too_big = (DEFAULT_MAX_FRAME_BYTES as u32 + 1).to_be_bytes();
    let mut buf = too_big.to_vec();
    assert_eq!(
        dec.feed(&mut buf, |_| ControlFlow::Continue(())),
        Err(FrameError::TooLarge {
            len: DEFAULT_MAX_FRAME_BYTES as u64 + 1,
            max: DEFAULT_MAX_FRAME_BYTES
        })
    );
    assert_eq!(DEFAULT_MAX_FRAME_BYTES, 1 << 20);
}

#[test]
fn timestamps_have_the_seed_format() {
    assert!(is_timestamp("2024-01-01T12:00:00.000Z"));
    for bad in [
        "2024-01-01T12:00:00.000",
        "2024-01-01 12:00:00.000Z",
        "2024-01-01T12:00:00Z",
        "2024-1-01T12:00:00.000Z",
        "2024-01-01T12:00:00.0000Z",
        "２024-01-01T12:00:00.000Z",
        "",
    ] {
        assert!(!is_timestamp(bad), "{bad}");
    }
    let mut c = TimestampCache::new();
    for ms in [
        0,
        1,
        999,
        1_704_110_400_001,
        4_102_444_799_999,
        253_402_300_799_999,
    ] {
        let s = c.format(ms);
        assert!(is_timestamp(s), "{ms} -> {s}");
    }
    assert_eq!(c.format(SEED_NOW_MS), "2024-01-01T12:00:00.001Z");
}
