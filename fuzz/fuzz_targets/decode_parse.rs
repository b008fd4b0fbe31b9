//! Arbitrary bytes as a TCP stream, split in two at a fuzzer-chosen point,
//! through `FrameDecoder` (64 KiB limit) and `parse_request`, answering each
//! frame the way the server does. Checks, beyond "no panic":
//! - the decoder's straddle buffer stays within the frame size limit and,
//!   for half the inputs, a partial-frame budget (`feed_bounded`), and a
//!   refused frame's buffer is released;
//! - every response written is one well-formed frame holding a JSON object
//!   with a string `type` (serde_json as the judge);
//! - a response to a request with a scalar `id` carries that `id`.
#![no_main]

mod judge;

use judge::too_deep_for_judge;
use libfuzzer_sys::fuzz_target;
use ringcast::protocol::frame::{FrameDecoder, NoPool, HEADER_LEN};
use ringcast::protocol::message::{
    write_auth_ok, write_broadcast_message, write_broadcast_sent, write_echo_response, write_error,
    write_message_ack, write_pong, write_server_stats,
};
use ringcast::protocol::FrameError;
use ringcast::protocol::{parse_request, ErrorCode, JsonParser, RequestKind, StatsReport};
use std::ops::ControlFlow;

const MAX: usize = 64 * 1024;
const NOW: &str = "2024-01-01T12:00:00.001Z";


/// Checks that `out` is a sequence of frames, each a JSON object with a
/// string `type`; returns them (`None` for one too deep to judge).
fn check_frames(out: &[u8]) -> Vec<Option<serde_json::Value>> {
    let mut frames = Vec::new();
    let mut pos = 0;
    while pos < out.len() {
        assert!(out.len() - pos >= HEADER_LEN, "truncated header");
        let len = u32::from_be_bytes(out[pos..pos + HEADER_LEN].try_into().unwrap()) as usize;
        let body = &out[pos + HEADER_LEN..pos + HEADER_LEN + len];
        if too_deep_for_judge(body) {
            frames.push(None);
            pos += HEADER_LEN + len;
            continue;
        }
        let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_else(|e| {
            panic!(
                "invalid response JSON ({e}): {}",
                String::from_utf8_lossy(body)
            )
        });
        assert!(v.get("type").is_some_and(|t| t.is_string()), "no type: {v}");
        frames.push(Some(v));
        pos += HEADER_LEN + len;
    }
    frames
}

fn respond(parser: &mut JsonParser, payload: &mut [u8], out: &mut Vec<u8>) {
    let start = out.len();
    // The id as serde_json sees it, when the payload is an object with one.
    let mut want_id: Option<serde_json::Value> = None;
    parse_request(parser, payload, |r| match r {
        Ok(req) => {
            if let Some(id) = &req.id {
                let mut s = Vec::new();
                id.write_json(&mut s);
                want_id = Some(serde_json::from_slice(&s).expect("id writes as JSON"));
            }
            match req.kind {
                RequestKind::Ping => write_pong(out, &req, NOW, "127.0.0.1:1"),
                RequestKind::Echo => write_echo_response(out, &req, NOW),
                RequestKind::Broadcast => {
                    write_broadcast_sent(out, &req, 3, NOW);
                    write_broadcast_message(out, &req, "127.0.0.1:1", NOW);
                }
                RequestKind::GetStats => {
                    let report = StatsReport {
                        server_start_time: NOW,
                        current_time: NOW,
                        messages_by_type: &[("ping", 1)],
                        errors_by_code: &[("invalid_json", 2)],
                        connections_per_shard: &[1, 2],
                        ..StatsReport::default()
                    };
                    write_server_stats(out, req.id.as_ref(), &report)
                }
                RequestKind::Message => write_message_ack(out, &req, NOW),
                RequestKind::Auth => write_auth_ok(out, req.id.as_ref()),
                RequestKind::Custom => write_error(
                    out,
                    req.id.as_ref(),
                    ErrorCode::UnknownType,
                    "no handler for this type",
                    Some(req.type_name),
                ),
            }
        }
        Err(rej) => write_error(
            out,
            rej.id.as_ref(),
            rej.error.code,
            rej.error.message,
            rej.error.request_type,
        ),
    });
    let frames = check_frames(&out[start..]);
    assert!(!frames.is_empty());
    if let (Some(id), Some(first)) = (want_id, &frames[0]) {
        // The first response answers the request (a broadcast_message has no id).
        assert_eq!(first.get("id"), Some(&id), "id not copied back");
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let split = u16::from_le_bytes([data[0], data[1]]) as usize;
    // Half the inputs run under a partial-frame budget, as the server's
    // shards do (`feed_bounded`), from 4 KiB up to just under the limit.
    let budget = if data[1] & 0x80 != 0 {
        4096 + (data[0] as usize) * 240
    } else {
        usize::MAX
    };
    let mut stream = data[2..].to_vec();
    let split = split % (stream.len() + 1);
    let (a, b) = stream.split_at_mut(split);

    let mut decoder = FrameDecoder::new(MAX);
    let mut parser = JsonParser::new();
    let mut out = Vec::new();
    for chunk in [a, b] {
        let r = decoder.feed_bounded(chunk, &mut NoPool, budget, |payload| {
            assert!(!payload.is_empty() && payload.len() <= MAX);
            respond(&mut parser, payload, &mut out);
            ControlFlow::Continue(())
        });
        // Growth stops at the frame's size and at the budget.
        assert!(decoder.buffered_capacity() <= (MAX + HEADER_LEN).min(budget));
        if let Err(FrameError::OverBudget { needed, max }) = r {
            assert_eq!(max, budget);
            assert!(needed > budget && budget < MAX + HEADER_LEN);
            assert_eq!(
                decoder.buffered_capacity(),
                0,
                "a refused frame's buffer is released"
            );
            break;
        }
        if let Err(e) = r {
            let start = out.len();
            write_error(&mut out, None, e.code(), "framing error", None);
            assert!(e.code().closes_connection());
            check_frames(&out[start..]);
            break;
        }
    }
});
