//! One request frame in, its response written: auth first, the rate limit,
//! then the message types of the seed protocol.

use super::env::Env;
use super::output::{Bucket, Output};
use super::tls::HandshakeFailure;
use crate::protocol::frame::{BoundedPool, BufferPool};
use crate::protocol::message::{self, StatsReport};
use crate::protocol::{parse_request, raw, ErrorCode, RequestKind};
use bytes::Bytes;
use std::ops::ControlFlow;

/// Why a session is closing after an error frame.
pub(crate) type Closing = (ErrorCode, &'static str);

/// The reply buffer to append to, taken from the pool when empty.
pub(crate) fn reply_buf<'o>(pool: &mut BoundedPool, out: &'o mut Output) -> &'o mut Vec<u8> {
    if out.building.capacity() == 0 {
        out.building = pool
            .take()
            .unwrap_or_else(|| Vec::with_capacity(super::env::REPLY_BUF_CAPACITY));
    }
    &mut out.building
}

/// The per-connection state one request may change.
pub(crate) struct Caller<'s> {
    pub id: usize,
    pub client_id: &'s str,
    pub authed: &'s mut bool,
    pub bucket: &'s mut Bucket,
}

/// Handles one request frame; writes the response into `out`. Returns
/// `Break` with the error to send when the connection must close.
pub(crate) fn handle_frame(
    env: &mut Env<'_>,
    me: Caller<'_>,
    payload: &mut [u8],
    out: &mut Output,
) -> ControlFlow<Closing> {
    let shared = env.shared;
    let now_ms = env.now_ms;
    let Env {
        parser,
        ts,
        counters,
        outgoing,
        rss,
        per_shard,
        pool,
        rate,
        burst,
        ..
    } = env;
    let now = ts.format(now_ms);
    let (rate, burst) = (*rate, *burst);
    // Large echoes: validated and copied raw, without the tape (issue 15).
    if payload.len() >= raw::RAW_ECHO_MIN && *me.authed && rate == 0.0 {
        if let Some(echo) = raw::large_echo(payload) {
            counters.message(RequestKind::Echo);
            raw::write_echo_response(reply_buf(pool, out), &echo, now);
            return ControlFlow::Continue(());
        }
    }
    parse_request(parser, payload, |r| {
        let buf = reply_buf(pool, out);
        let req = match r {
            Ok(req) => req,
            Err(rej) => {
                counters.error(rej.error.code);
                message::write_error(
                    buf,
                    rej.id.as_ref(),
                    rej.error.code,
                    rej.error.message,
                    rej.error.request_type,
                );
                if !*me.authed {
                    return ControlFlow::Break((
                        ErrorCode::Unauthorized,
                        "the first message must be auth",
                    ));
                }
                return ControlFlow::Continue(());
            }
        };
        if !*me.authed {
            let token = req.get("token").and_then(|t| t.as_str());
            let expected = shared.config.auth_token.as_deref().unwrap_or("");
            if req.kind == RequestKind::Auth
                && token.is_some_and(|t| constant_time_eq(t.as_bytes(), expected.as_bytes()))
            {
                *me.authed = true;
                counters.message(RequestKind::Auth);
                message::write_auth_ok(buf, req.id.as_ref());
                return ControlFlow::Continue(());
            }
            return ControlFlow::Break((
                ErrorCode::Unauthorized,
                "the first message must be auth with a valid token",
            ));
        }
        if rate > 0.0 && !me.bucket.take(rate, burst, now_ms) {
            counters.error(ErrorCode::RateLimited);
            message::write_error(
                buf,
                req.id.as_ref(),
                ErrorCode::RateLimited,
                "rate limit exceeded; slow down",
                Some(req.type_name),
            );
            return ControlFlow::Continue(());
        }
        counters.message(req.kind);
        match req.kind {
            RequestKind::Ping => message::write_pong(buf, &req, now, me.client_id),
            RequestKind::Echo => message::write_echo_response(buf, &req, now),
            RequestKind::Message => message::write_message_ack(buf, &req, now),
            RequestKind::Auth => message::write_auth_ok(buf, req.id.as_ref()),
            RequestKind::Broadcast => {
                // Serialised once here; every recipient shares these bytes.
                let mut frame = Vec::with_capacity(128);
                message::write_broadcast_message(&mut frame, &req, me.client_id, now);
                outgoing.push((Bytes::from(frame), me.id));
                let t = crate::server::stats::Totals::read(&shared.counters, per_shard);
                message::write_broadcast_sent(buf, &req, t.connected.saturating_sub(1), now);
            }
            RequestKind::GetStats => {
                let t = shared.totals(per_shard);
                let by_type: [(&str, u64); 7] =
                    std::array::from_fn(|i| (RequestKind::ALL[i].label(), t.messages[i]));
                let by_code: [(&str, u64); 12] =
                    std::array::from_fn(|i| (ErrorCode::ALL[i].as_str(), t.errors[i]));
                let tls_failures: [(&str, u64); 7] = std::array::from_fn(|i| {
                    (
                        HandshakeFailure::ALL[i].as_str(),
                        t.tls_handshake_failures[i],
                    )
                });
                let report = StatsReport {
                    connected_clients: t.connected,
                    uptime_seconds: now_ms.saturating_sub(shared.start_unix_ms) / 1000,
                    total_messages: t.total_messages(),
                    server_start_time: &shared.start_time,
                    current_time: now,
                    shards: shared.shards as u64,
                    total_connections: t.total_connections,
                    messages_by_type: &by_type,
                    bytes_received: t.bytes_received,
                    bytes_sent: t.bytes_sent,
                    broadcasts_delivered: t.broadcasts_delivered,
                    slow_consumer_disconnects: t.slow_consumer_disconnects,
                    protocol_errors: t.protocol_errors(),
                    errors_by_code: &by_code,
                    rss_bytes: rss.rss_bytes(),
                    messages_per_second: t.messages_per_second,
                    connections_per_shard: per_shard,
                    partial_frame_bytes: t.partial_frame_bytes,
                    io_backend: shared.io_backend.as_str(),
                    tls_handshake_failures: &tls_failures,
                };
                message::write_server_stats(buf, req.id.as_ref(), &report);
            }
            RequestKind::Custom => match shared.handlers.get(req.type_name) {
                Some(h) => h.handle(&req, me.client_id, now, buf),
                None => {
                    counters.error(ErrorCode::UnknownType);
                    message::write_error(
                        buf,
                        req.id.as_ref(),
                        ErrorCode::UnknownType,
                        "no handler for this message type",
                        Some(req.type_name),
                    );
                }
            },
        }
        ControlFlow::Continue(())
    })
}

/// Compares secrets in time independent of where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u8 | ((a.len() ^ b.len()) >> 8) as u8;
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= x ^ y;
    }
    diff == 0 && a.len() == b.len()
}
