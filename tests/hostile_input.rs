//! Hostile input over real sockets. After every case the offending
//! connection has received the documented error (or been closed, as
//! docs/PROTOCOL.md says), and the server still answers other clients: a
//! [`Watchdog`] pings on a second, long-lived connection and on a fresh one.
//!
//! Already covered elsewhere, and not repeated here in detail:
//! tests/server_messages.rs (`{not json`, invalid UTF-8 inside a string,
//! a top-level array and string, missing `type`, `"type": 5`,
//! `frame_too_large` at exactly limit + 1 with a 1 KiB limit, 0xFFFFFFFF,
//! `empty_frame`) and tests/server_pipeline.rs (1,000 pipelined frames, a
//! frame one byte every 5 ms). This file adds the health check after each
//! of those framing errors, and the cases nobody covered.

mod support;

use serde_json::{json, Value};
use std::io::Write;
use std::net::Shutdown;
use std::time::{Duration, Instant};
use support::hostile::{short, Rng, Watchdog};
use support::server::{builder, spawn, start};
use support::wire::{expected_frames, frame, frame_bytes, Client};

const DEFAULT_MAX: u32 = 1 << 20;

/// Asserts the next frame is a closing error `code` without id or
/// request_type, and that the connection then ends with nothing more.
fn expect_closing_error(c: &mut Client, code: &str, case: &str) {
    let v = c.recv();
    assert_eq!(v["type"], "error", "{case}: {v}");
    assert_eq!(v["code"], code, "{case}: {v}");
    assert!(
        v.get("id").is_none(),
        "{case}: closing errors carry no id: {v}"
    );
    assert!(v.get("request_type").is_none(), "{case}: {v}");
    let rest = c.read_until_closed(Duration::from_secs(4));
    assert!(rest.is_empty(), "{case}: frames after the error: {rest:?}");
}

#[test]
fn framing_errors_close_only_the_offender() {
    let server = start(2);
    let addr = server.local_addr();
    let mut dog = Watchdog::new(addr);
    let ping = frame(&json!({"type": "ping", "id": "after"}));

    // (case, bytes sent, error code)
    let mut cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("length 0", vec![0, 0, 0, 0], "empty_frame"),
        ("length 0xFFFFFFFF", vec![0xff; 4], "frame_too_large"),
        (
            "length max_frame_bytes + 1 (1 MiB + 1), header only",
            (DEFAULT_MAX + 1).to_be_bytes().to_vec(),
            "frame_too_large",
        ),
    ];
    // The same with the rest of the stream following: nothing after the
    // bad header may be read, so the valid ping after it gets no pong.
    let mut zero_then_ping = vec![0, 0, 0, 0];
    zero_then_ping.extend_from_slice(&ping);
    cases.push(("length 0, then a valid ping", zero_then_ping, "empty_frame"));
    let mut big_then_payload = (DEFAULT_MAX + 1).to_be_bytes().to_vec();
    big_then_payload.extend(std::iter::repeat_n(b' ', 64 << 10));
    big_then_payload.extend_from_slice(&ping);
    cases.push((
        "length 1 MiB + 1 with 64 KiB of its payload and a ping",
        big_then_payload,
        "frame_too_large",
    ));
    let mut max_then_ping = 0xffff_ffffu32.to_be_bytes().to_vec();
    max_then_ping.extend_from_slice(&ping);
    cases.push((
        "length 0xFFFFFFFF, then a valid ping",
        max_then_ping,
        "frame_too_large",
    ));

    for (case, bytes, code) in &cases {
        let mut c = Client::connect(addr);
        c.send_raw(bytes);
        expect_closing_error(&mut c, code, case);
        dog.check(case);
    }
    let s = dog.client().stats();
    assert_eq!(s["errors_by_code"]["empty_frame"], 2, "{s}");
    assert_eq!(s["errors_by_code"]["frame_too_large"], 4, "{s}");
    assert_eq!(s["messages_by_type"]["ping"], dog_pings(&cases), "{s}");
}

/// Pings the watchdog made after `cases` (two per case plus its first),
/// i.e. no ping that followed a bad header was counted.
fn dog_pings<T>(cases: &[T]) -> u64 {
    1 + 2 * cases.len() as u64
}

#[test]
fn truncated_frames_then_close() {
    let server = start(2);
    let addr = server.local_addr();
    let mut dog = Watchdog::new(addr);
    let echo = frame(&json!({"type": "echo", "content": "x".repeat(200), "id": 1}));

    let cuts: [(&str, usize); 4] = [
        ("half a header", 2),
        ("a header only", 4),
        ("a header and half the payload", echo.len() / 2),
        ("all but the last byte", echo.len() - 1),
    ];
    // The client closes completely: nobody is left to answer; the server
    // must drop the connection and its partial frame.
    for (what, n) in cuts {
        let case = format!("{what}, then close");
        let mut c = Client::connect(addr);
        c.send_raw(&echo[..n]);
        drop(c);
        dog.check(&case);
    }
    // Half-close: the server sees EOF inside a frame, sends nothing (there
    // is no complete request to answer) and closes its side promptly.
    for (what, n) in cuts {
        let case = format!("{what}, then shutdown(SHUT_WR)");
        let mut c = Client::connect(addr);
        c.send_raw(&echo[..n]);
        c.stream.shutdown(Shutdown::Write).unwrap();
        let started = Instant::now();
        let frames = c.read_until_closed(Duration::from_secs(4));
        assert!(frames.is_empty(), "{case}: got {frames:?}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{case}: closed only after {:?}",
            started.elapsed()
        );
        dog.check(&case);
    }
    // A complete request before the truncated one is still answered.
    let mut c = Client::connect(addr);
    let mut bytes = frame(&json!({"type": "ping", "id": "whole"}));
    bytes.extend_from_slice(&echo[..echo.len() / 2]);
    c.send_raw(&bytes);
    c.stream.shutdown(Shutdown::Write).unwrap();
    let frames = c.read_until_closed(Duration::from_secs(4));
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0]["id"], "whole");
    dog.check("a whole ping and half an echo, then shutdown(SHUT_WR)");

    // None of them is still counted as connected.
    dog.client().wait_connected(1, Duration::from_secs(4));
    let s = dog.client().stats();
    assert_eq!(s["messages_by_type"]["echo"], 0, "{s}");
    assert_eq!(s["protocol_errors"], 0, "{s}");
}

#[test]
fn frame_one_byte_every_10_ms_while_others_are_served() {
    let server = start(1);
    let addr = server.local_addr();
    let mut dog = Watchdog::new(addr);
    let bytes = frame(&json!({"type": "ping", "id": "slow"}));
    assert_eq!(bytes.len(), 31);
    let mut c = Client::connect(addr);
    for (i, b) in bytes.iter().enumerate() {
        c.stream.write_all(std::slice::from_ref(b)).unwrap();
        std::thread::sleep(Duration::from_millis(10));
        // The shard (one here) keeps serving others mid-trickle.
        if i % 8 == 7 {
            dog.check(&format!("byte {i} of a trickled frame"));
        }
    }
    let v = c.recv();
    assert_eq!(v["type"], "pong", "{v}");
    assert_eq!(v["id"], "slow");
    dog.check("a trickled frame");
}

/// What a hostile payload must get back.
enum Expect {
    /// This JSON-level error (the connection stays usable).
    Error(&'static str),
    /// This error, or a correct answer judged by the function.
    ErrorOr(&'static str, fn(&Value) -> bool),
    /// A response of this type.
    Reply(&'static str),
}

#[test]
fn invalid_payloads_get_errors_and_keep_the_connection() {
    use Expect::*;
    let cases: Vec<(&str, &[u8], Expect)> = vec![
        // Invalid UTF-8 (outside strings, in a key, overlong, truncated,
        // an encoded surrogate).
        ("bare invalid UTF-8", b"\xff\xfe\xfd", Error("invalid_json")),
        (
            "invalid UTF-8 in a key",
            b"{\"ty\xffpe\":\"ping\"}",
            Error("invalid_json"),
        ),
        (
            "overlong UTF-8 in a string",
            b"{\"type\":\"echo\",\"content\":\"\xc0\xaf\"}",
            Error("invalid_json"),
        ),
        (
            "truncated UTF-8 sequence in a string",
            b"{\"type\":\"echo\",\"content\":\"\xe2\x82\"}",
            Error("invalid_json"),
        ),
        (
            "UTF-8-encoded surrogate in a string",
            b"{\"type\":\"echo\",\"content\":\"\xed\xa0\x80\"}",
            Error("invalid_json"),
        ),
        // Invalid JSON.
        (
            "unclosed object",
            b"{\"type\":\"ping\"",
            Error("invalid_json"),
        ),
        (
            "trailing comma",
            b"{\"type\":\"ping\",}",
            Error("invalid_json"),
        ),
        ("single quotes", b"{'type':'ping'}", Error("invalid_json")),
        (
            "garbage after the object",
            b"{\"type\":\"ping\"} x",
            Error("invalid_json"),
        ),
        (
            "two objects in one frame",
            b"{\"type\":\"ping\"}{\"type\":\"ping\"}",
            Error("invalid_json"),
        ),
        ("whitespace only", b"   \n\t ", Error("invalid_json")),
        ("a NUL byte", b"\0", Error("invalid_json")),
        (
            "NaN",
            b"{\"type\":\"echo\",\"content\":NaN}",
            Error("invalid_json"),
        ),
        (
            "leading zero",
            b"{\"type\":\"echo\",\"content\":01}",
            Error("invalid_json"),
        ),
        // Valid JSON, not an object (array and string are in
        // server_messages.rs).
        ("a number", b"42", Error("not_an_object")),
        ("a float", b"-1.5e300", Error("not_an_object")),
        ("true", b"true", Error("not_an_object")),
        ("null", b"null", Error("not_an_object")),
        ("an empty array", b"[]", Error("not_an_object")),
        // Missing or non-string `type` (absent and 5 are in
        // server_messages.rs).
        ("an empty object", b"{}", Error("missing_type")),
        ("type null", b"{\"type\":null}", Error("missing_type")),
        ("type true", b"{\"type\":true}", Error("missing_type")),
        (
            "type an array",
            b"{\"type\":[\"ping\"]}",
            Error("missing_type"),
        ),
        (
            "type an object",
            b"{\"type\":{\"t\":\"ping\"}}",
            Error("missing_type"),
        ),
        (
            "type the empty string",
            b"{\"type\":\"\"}",
            Error("unknown_type"),
        ),
        (
            "type with a NUL",
            b"{\"type\":\"ping\\u0000\"}",
            Error("unknown_type"),
        ),
        // Valid UTF-8 JSON that is not valid Unicode, or not valid JSON by
        // RFC 8259 but harmless: an error or a correct answer.
        (
            "a raw control character in a string",
            b"{\"type\":\"echo\",\"content\":\"a\x01b\"}",
            ErrorOr("invalid_json", |v| v["content"] == "a\u{1}b"),
        ),
        // Edge cases that are valid requests.
        ("escaped type", b"{\"type\":\"\\u0070ing\"}", Reply("pong")),
        (
            "a request padded with whitespace",
            b" { \"type\" : \"ping\" } ",
            Reply("pong"),
        ),
        (
            "a UTF-8 byte order mark",
            b"\xef\xbb\xbf{\"type\":\"ping\"}",
            ErrorOr("invalid_json", |v| v["type"] == "pong"),
        ),
    ];

    let server = start(2);
    let addr = server.local_addr();
    let mut dog = Watchdog::new(addr);
    // One hostile connection for every case: each error must leave it usable.
    let mut c = Client::connect(addr);
    for (i, (case, payload, expect)) in cases.iter().enumerate() {
        c.send_raw(&frame_bytes(payload));
        let v = match c.try_recv() {
            Ok(Some(v)) => v,
            other => panic!("{case}: no valid frame back: {other:?}"),
        };
        match expect {
            Error(code) => {
                assert_eq!(v["type"], "error", "{case}: {v}");
                assert_eq!(v["code"], *code, "{case}: {v}");
            }
            ErrorOr(code, ok) => {
                let is_error = v["type"] == "error" && v["code"] == *code;
                assert!(is_error || ok(&v), "{case}: {v}");
                eprintln!("{case}: {v}");
            }
            Reply(t) => assert_eq!(v["type"], *t, "{case}: {v}"),
        }
        // Still in step: the next request is answered, with its id.
        let v = c.request(&json!({"type": "ping", "id": i}));
        assert_eq!(v["type"], "pong", "after {case}: {v}");
        assert_eq!(v["id"], i, "after {case}: {v}");
        dog.check(case);
    }
}

/// `\u` escapes of UTF-16 surrogate pairs come back as their character.
#[test]
fn surrogate_pair_escapes() {
    let server = start(1);
    let addr = server.local_addr();
    let mut dog = Watchdog::new(addr);
    let mut c = Client::connect(addr);
    let pairs = [
        (r"\ud83e\udd80", "🦀"),
        (r"\udbff\udfff", "\u{10ffff}"),
        (r"\uD834\uDD1E", "𝄞"),
    ];
    for (esc, want) in pairs {
        let payload = format!(r#"{{"type":"echo","content":"a{esc}b","id":1}}"#);
        c.send_raw(&frame_bytes(payload.as_bytes()));
        let v = c.recv();
        assert_eq!(v["content"], format!("a{want}b"), "{esc}: {v}");
        dog.check(esc);
    }
}

/// A lone surrogate escape is not a Unicode scalar value: the server must
/// answer invalid_json (or replace it with U+FFFD), never turn it into some
/// other character. Lone low surrogates and a high one followed by another
/// escape are rejected today; a high one followed by anything else (or the
/// closing quote) silently becomes U+0000.
#[test]
fn lone_surrogate_escapes_are_rejected() {
    let server = start(1);
    let addr = server.local_addr();
    let mut dog = Watchdog::new(addr);
    let mut c = Client::connect(addr);
    let mut wrong = Vec::new();
    for esc in [
        r"\ud800",
        r"\udbff",
        r"\ud800x",
        r"\ud800\n",
        r"\udc00",
        r"\udfff",
        r"\ud800\u0041",
        r"\ud800\ud800",
        r"\udc00\ud800",
    ] {
        let payload = format!(r#"{{"type":"echo","content":"a{esc}b","id":2}}"#);
        c.send_raw(&frame_bytes(payload.as_bytes()));
        let v = c.recv();
        let ok = v["code"] == "invalid_json"
            || v["content"]
                .as_str()
                .is_some_and(|s| s.starts_with("a\u{fffd}") && s.ends_with('b'));
        eprintln!("{esc}: {v}");
        if !ok {
            wrong.push(format!("{esc} -> {}", v["content"]));
        }
        dog.check(esc);
    }
    assert!(
        wrong.is_empty(),
        "lone surrogates turned into other characters: {wrong:?}"
    );
}

#[test]
fn one_mib_string_is_echoed_intact() {
    let server = spawn(builder(2).max_frame_bytes(2 << 20));
    let addr = server.local_addr();
    let mut dog = Watchdog::new(addr);
    // 1 MiB of text with multi-byte characters and characters that need
    // escaping, so the escape scan and the straddle path both work.
    let unit = "abcdefghijklmnopqrstuvwxyz0123456789 é✓ \"quoted\" back\\slash tab\t nl\n 🦀 ";
    let mut content = String::with_capacity((1 << 20) + unit.len());
    let mut i = 0u64;
    while content.len() < 1 << 20 {
        content.push_str(&format!("{i:08}"));
        content.push_str(unit);
        i += 1;
    }
    while content.len() > 1 << 20 {
        content.pop();
    }
    assert_eq!(content.len(), 1 << 20);
    let mut c = Client::connect(addr);
    c.set_read_timeout(Duration::from_secs(10));
    for id in 0..3 {
        let v = c.request(&json!({"type": "echo", "content": content, "id": id}));
        assert_eq!(v["type"], "echo_response", "id {id}: {}", short(&v));
        assert_eq!(v["id"], id);
        assert!(
            v["content"] == content.as_str(),
            "echo {id} changed the content"
        );
        dog.check("a 1 MiB echo");
    }
    // And as a broadcast to another client.
    let mut other = Client::connect(addr);
    other.set_read_timeout(Duration::from_secs(10));
    assert_eq!(other.request(&json!({"type": "ping"}))["type"], "pong");
    let v = c.request(&json!({"type": "broadcast", "content": content, "id": "b"}));
    assert_eq!(v["type"], "broadcast_sent", "{}", short(&v));
    let m = other.recv();
    assert_eq!(m["type"], "broadcast_message");
    assert!(
        m["content"] == content.as_str(),
        "broadcast changed the content"
    );
    dog.check("a 1 MiB broadcast");
}

/// Sends `payload` as one frame and reads one raw response frame.
fn raw_request(c: &mut Client, payload: &[u8]) -> Vec<u8> {
    c.send_raw(&frame_bytes(payload));
    c.recv_raw()
}

#[test]
fn json_nested_100000_levels() {
    const DEPTH: usize = 100_000;
    let server = start(2);
    let addr = server.local_addr();
    let mut dog = Watchdog::new(addr);
    let mut c = Client::connect(addr);
    c.set_read_timeout(Duration::from_secs(10));

    let arrays = format!("{}{}", "[".repeat(DEPTH), "]".repeat(DEPTH));
    let objects = format!("{}0{}", "{\"a\":".repeat(DEPTH), "}".repeat(DEPTH));
    let mixed = format!(
        "{}\"deep\"{}",
        "[{\"k\":".repeat(DEPTH / 2),
        "}]".repeat(DEPTH / 2)
    );
    for (what, content) in [
        ("arrays", &arrays),
        ("objects", &objects),
        ("arrays and objects", &mixed),
    ] {
        // As an echo's content: either an error or the same value back.
        let case = format!("{DEPTH} levels of {what} as echo content");
        let req = format!("{{\"type\":\"echo\",\"content\":{content},\"id\":\"deep\"}}");
        let started = Instant::now();
        let resp = raw_request(&mut c, req.as_bytes());
        let took = started.elapsed();
        let prefix = format!("{{\"type\":\"echo_response\",\"content\":{content},\"timestamp\":\"");
        if resp.starts_with(prefix.as_bytes()) {
            let tail = std::str::from_utf8(&resp[prefix.len()..]).unwrap();
            assert!(
                tail.ends_with("\",\"echoed_by\":\"ringcast\",\"id\":\"deep\"}"),
                "{case}: {tail}"
            );
        } else {
            let v: Value = serde_json::from_slice(&resp)
                .unwrap_or_else(|e| panic!("{case}: neither the echo nor a shallow error ({e})"));
            assert_eq!(v["type"], "error", "{case}: {v}");
            assert_eq!(v["code"], "invalid_json", "{case}: {v}");
        }
        eprintln!(
            "{case}: {} in {took:?}",
            if resp.starts_with(prefix.as_bytes()) {
                "echoed intact"
            } else {
                "error"
            }
        );
        dog.check(&case);

        // As a top-level value: not an object.
        let case = format!("{DEPTH} levels of {what} at top level");
        let resp = raw_request(&mut c, content.as_bytes());
        let v: Value = serde_json::from_slice(&resp).expect("a shallow response");
        assert_eq!(v["type"], "error", "{case}: {v}");
        let code = v["code"].as_str().unwrap();
        let expected = if what == "objects" {
            // An object at top level, but without a type.
            "missing_type"
        } else {
            "not_an_object"
        };
        assert!(code == expected || code == "invalid_json", "{case}: {v}");
        eprintln!("{case}: {code}");
        dog.check(&case);
    }

    // A deep but otherwise valid request, with the depth in a field the
    // server ignores.
    let req = format!("{{\"type\":\"ping\",\"x\":{objects},\"id\":\"p\"}}");
    let resp = raw_request(&mut c, req.as_bytes());
    let v: Value = serde_json::from_slice(&resp).unwrap();
    assert!(v["type"] == "pong" || v["code"] == "invalid_json", "{v}");
    eprintln!("a ping with a {DEPTH}-level field: {}", v["type"]);
    dog.check("a ping with a 100,000-level field");

    // Unbalanced: opened and never closed.
    let req = format!("{{\"type\":\"echo\",\"content\":{}}}", "[".repeat(DEPTH));
    let resp = raw_request(&mut c, req.as_bytes());
    let v: Value = serde_json::from_slice(&resp).unwrap();
    assert_eq!(v["code"], "invalid_json", "{v}");
    dog.check("100,000 unclosed brackets");

    // Still in step.
    let v = c.request(&json!({"type": "ping", "id": "end"}));
    assert_eq!(v["id"], "end", "{v}");
}

#[test]
fn ten_thousand_frames_pipelined_in_one_write() {
    const N: u64 = 10_000;
    let server = start(2);
    let addr = server.local_addr();
    let mut dog = Watchdog::new(addr);
    let mut c = Client::connect(addr);
    // Every kind of answer, errors included, each with its id.
    let mut bytes = Vec::new();
    for i in 0..N {
        let req = match i % 6 {
            0 => json!({"type": "ping", "id": i}),
            1 => json!({"type": "echo", "content": format!("#{i}"), "id": i}),
            2 => json!({"type": "message", "content": "m", "id": i}),
            3 => json!({"type": "no_such_type", "id": i}),
            4 => json!({"type": "echo", "id": i}),
            _ => json!({"id": i}),
        };
        bytes.extend(frame(&req));
    }
    let total = bytes.len();
    // One write from another thread, so reading here keeps both sides
    // flowing whatever the socket buffer sizes.
    let mut w = c.stream.try_clone().unwrap();
    let writer = std::thread::spawn(move || w.write_all(&bytes).map(|_| total));
    let started = Instant::now();
    for i in 0..N {
        let v = c.recv();
        assert_eq!(v["id"], i, "out of order: {v}");
        let (t, code) = (v["type"].as_str().unwrap(), v["code"].as_str());
        match i % 6 {
            0 => assert_eq!(t, "pong", "{v}"),
            1 => {
                assert_eq!(t, "echo_response", "{v}");
                assert_eq!(v["content"], format!("#{i}"));
            }
            2 => assert_eq!(t, "message_ack", "{v}"),
            3 => assert_eq!(code, Some("unknown_type"), "{v}"),
            4 => assert_eq!(code, Some("invalid_field"), "{v}"),
            _ => assert_eq!(code, Some("missing_type"), "{v}"),
        }
    }
    let sent = writer.join().unwrap().expect("the one write");
    eprintln!(
        "{N} frames ({sent} bytes) in one write, all answered in order in {:?}",
        started.elapsed()
    );
    c.expect_silence(Duration::from_millis(100));
    dog.check("10,000 pipelined frames");
}

/// What the server must do with `bytes` followed by EOF, by the rules of
/// docs/PROTOCOL.md: the JSON-level errors for the frames before the first
/// bad header (`0` frames here when they are random), then the closing error
/// if there is a bad header.
fn model(bytes: &[u8], max: u32) -> (usize, Option<&'static str>) {
    let (frames, closing) = expected_frames(bytes, max as usize);
    (frames.len(), closing.map(|e| e.code().as_str()))
}

#[test]
fn one_mb_of_random_bytes() {
    let server = start(2);
    let addr = server.local_addr();
    let mut dog = Watchdog::new(addr);
    for seed in [1u64, 2, 3, 0x5eed] {
        let mut rng = Rng::new(seed);
        let mut bytes = vec![0u8; 1_000_000];
        rng.fill(&mut bytes);
        let (frames, closing) = model(&bytes, DEFAULT_MAX);
        let mut c = Client::connect(addr);
        let mut w = c.stream.try_clone().unwrap();
        // The server stops reading at the bad header but drains (and drops)
        // input until we close, so the write completes.
        let writer = std::thread::spawn(move || {
            let r = w.write_all(&bytes);
            let _ = w.shutdown(Shutdown::Write);
            r
        });
        let got = c.read_until_closed(Duration::from_secs(5));
        let _ = writer.join().unwrap();
        let case = format!("1 MB of random bytes, seed {seed:#x}");
        assert_eq!(
            got.len(),
            frames + closing.is_some() as usize,
            "{case}: {got:?}"
        );
        for v in &got[..frames] {
            assert_eq!(v["type"], "error", "{case}: {v}");
            assert!(v["code"] != "frame_too_large" && v["code"] != "empty_frame");
        }
        if let Some(code) = closing {
            let v = &got[frames];
            assert_eq!(v["code"], code, "{case}: {v}");
        }
        eprintln!("{case}: {frames} JSON errors, then {closing:?}");
        dog.check(&case);
    }
}

#[test]
fn one_mb_of_frames_with_random_payloads() {
    // Valid headers around random payloads: every frame gets a JSON-level
    // error and the connection stays open throughout.
    let server = start(2);
    let addr = server.local_addr();
    let mut dog = Watchdog::new(addr);
    let mut rng = Rng::new(0xfeed);
    let mut bytes = Vec::with_capacity(1_100_000);
    let mut frames = 0;
    while bytes.len() < 1_000_000 {
        let mut payload = vec![0u8; 1 + rng.below(4096) as usize];
        rng.fill(&mut payload);
        bytes.extend(frame_bytes(&payload));
        frames += 1;
    }
    bytes.extend(frame(&json!({"type": "ping", "id": "last"})));
    let mut c = Client::connect(addr);
    let mut w = c.stream.try_clone().unwrap();
    let writer = std::thread::spawn(move || w.write_all(&bytes));
    for i in 0..frames {
        let v = c.recv();
        assert_eq!(v["type"], "error", "frame {i}: {v}");
        let code = v["code"].as_str().unwrap();
        assert!(
            ["invalid_json", "not_an_object", "missing_type"].contains(&code),
            "frame {i}: {v}"
        );
    }
    writer.join().unwrap().unwrap();
    let v = c.recv();
    assert_eq!(v["id"], "last", "{v}");
    eprintln!("{frames} random payloads, each answered with an error");
    dog.check("frames with random payloads");
}
