//! One request frame in, its response written: auth first, the rate limit,
//! then the message types of the seed protocol.

use super::env::Env;
use super::output::{Bucket, Output};
use super::tls::HandshakeFailure;
use crate::protocol::codec::Codec;
use crate::protocol::frame::{BoundedPool, BufferPool};
use crate::protocol::message::{self, StatsReport};
use crate::protocol::{parse_request, raw, ErrorCode, RequestKind};
use crate::server::broadcast::Delivery;
use crate::server::channels::{slot_of, SubscribeError};
use bytes::Bytes;
use std::ops::ControlFlow;
use std::sync::Arc;

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
    /// The codec `hello` chose (set by a `hello`).
    pub codec: &'s mut Option<Codec>,
    /// A `hello` was answered on this connection.
    pub hello_seen: &'s mut bool,
    pub tls: bool,
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
    let shard = env.shard;
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
        channels,
        compressor,
        ..
    } = env;
    let now = ts.format(now_ms);
    let (rate, burst) = (*rate, *burst);
    // Echoes: validated and copied raw, without the tape (issue 15); a
    // request for another type is told apart by its "type" member, which
    // clients write first, so it costs one short scan.
    if *me.authed && rate == 0.0 {
        if let Some(echo) = raw::echo(payload) {
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
        // `hello` may come before `auth`; it does not authenticate.
        if !*me.authed && req.kind != RequestKind::Hello {
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
            refuse(
                counters,
                buf,
                &req,
                ErrorCode::RateLimited,
                "rate limit exceeded; slow down",
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
                let mut d = Delivery::new(Bytes::from(frame), None);
                d.pack(shared, compressor, &counters.compression.compressions);
                let remote = shared
                    .cluster
                    .as_ref()
                    .map(|c| (c.try_send(&d.frame, None), c.remote_clients()));
                outgoing.push((d, me.id));
                if let Some((false, _)) = remote {
                    backplane_refused(counters, buf, &req);
                } else {
                    let t = crate::server::stats::Totals::read(&shared.counters, per_shard);
                    let others = remote.map_or(0, |(_, n)| n);
                    let n = t.connected.saturating_sub(1) + others;
                    message::write_broadcast_sent(buf, &req, n, now);
                }
            }
            RequestKind::Hello if *me.hello_seen => {
                refuse(
                    counters,
                    buf,
                    &req,
                    ErrorCode::HelloRepeated,
                    "hello was already answered on this connection; the codec is unchanged",
                );
            }
            RequestKind::Hello => {
                *me.hello_seen = true;
                // The first codec in the client's order that we have.
                *me.codec = match shared.config.compression {
                    true => req
                        .get("compression")
                        .and_then(|c| c.elements())
                        .and_then(|mut e| e.find_map(|n| n.as_str().and_then(Codec::from_name))),
                    false => None,
                };
                let mut features = ["broadcast", "channels", "", "", "", ""];
                let mut n = 2;
                for (on, name) in [
                    (shared.config.compression, "compression"),
                    (shared.config.auth_token.is_some(), "auth"),
                    (me.tls, "tls"),
                    (shared.cluster.is_some(), "cluster"),
                ] {
                    if on {
                        features[n] = name;
                        n += 1;
                    }
                }
                let hello = message::HelloOk {
                    compression: *me.codec,
                    max_frame_bytes: shared.config.max_frame_bytes,
                    compression_threshold: shared.config.compression_threshold_bytes,
                    features: &features[..n],
                };
                message::write_hello_ok(buf, req.id.as_ref(), &hello);
            }
            RequestKind::Subscribe => {
                let interest = &shared.interest[shard];
                let max = shared.config.max_subscriptions;
                match channels.subscribe(interest, me.id, req.channel(), max) {
                    Ok(held) => message::write_subscribed(buf, &req, held as u64),
                    Err(SubscribeError::TooMany) => {
                        refuse(
                            counters,
                            buf,
                            &req,
                            ErrorCode::TooManySubscriptions,
                            "this connection holds max_subscriptions channels; unsubscribe first",
                        );
                    }
                }
                channels.store_gauges(counters);
            }
            RequestKind::Unsubscribe => {
                let interest = &shared.interest[shard];
                let held = channels.unsubscribe(interest, me.id, req.channel());
                message::write_unsubscribed(buf, &req, held as u64);
                channels.store_gauges(counters);
            }
            RequestKind::Publish => {
                let channel = req.channel();
                // Exact here; elsewhere the other shards' interest counts,
                // read without a lock (see server::channels).
                let slot = slot_of(channel);
                let remote: u64 = (0..shared.shards)
                    .filter(|i| *i != shard)
                    .map(|i| u64::from(shared.interest[i].count(slot)))
                    .sum();
                let recipients = channels.subscriber_count(channel) as u64 + remote;
                // Serialised once here; every subscriber shares these bytes.
                let mut frame = Vec::with_capacity(160);
                message::write_channel_message(&mut frame, &req, me.client_id, now);
                let mut d = Delivery::new(Bytes::from(frame), Some(Arc::from(channel)));
                d.pack(shared, compressor, &counters.compression.compressions);
                let remote = shared.cluster.as_ref().map(|c| {
                    (
                        c.try_send(&d.frame, d.channel.as_ref()),
                        c.remote_subscribers(channel),
                    )
                });
                outgoing.push((d, me.id));
                if let Some((false, _)) = remote {
                    backplane_refused(counters, buf, &req);
                } else {
                    let others = remote.map_or(0, |(_, n)| n);
                    message::write_published(buf, &req, recipients + others, now);
                }
            }
            RequestKind::GetStats => {
                let t = shared.totals(per_shard);
                let by_type: [(&str, u64); RequestKind::COUNT] =
                    std::array::from_fn(|i| (RequestKind::ALL[i].label(), t.messages[i]));
                let by_code: [(&str, u64); ErrorCode::COUNT] =
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
                    channels: t.channels,
                    subscriptions: t.subscriptions,
                    publishes: t.messages_of(RequestKind::Publish),
                    channel_deliveries: t.channel_deliveries,
                    compression: t.compression,
                    cluster: shared.cluster.as_ref().map(|c| {
                        let f = c.figures();
                        message::ClusterReport {
                            node_id: f.node_id,
                            nodes: f.nodes,
                            connected_clients: t.connected + f.remote_clients,
                            backplane: f.backplane,
                            buffered_bytes: f.buffered_bytes,
                            bad_entries: f.bad_entries,
                            restarts: f.restarts,
                        }
                    }),
                };
                message::write_server_stats(buf, req.id.as_ref(), &report);
            }
            RequestKind::Custom => match shared.handlers.get(req.type_name) {
                Some(h) => h.handle(&req, me.client_id, now, buf),
                None => {
                    refuse(
                        counters,
                        buf,
                        &req,
                        ErrorCode::UnknownType,
                        "no handler for this message type",
                    );
                }
            },
        }
        ControlFlow::Continue(())
    })
}

/// Answers a broadcast or publish that reached this node's clients only:
/// the backplane is down and its buffer full.
fn backplane_refused(
    counters: &crate::server::stats::ShardCounters,
    buf: &mut Vec<u8>,
    req: &crate::protocol::Request<'_, '_>,
) {
    refuse(
        counters,
        buf,
        req,
        ErrorCode::BackplaneUnavailable,
        "the cluster backplane is unreachable and its buffer is full: \
         delivered to this node's clients only",
    );
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

/// Counts an error and answers `req` with it.
fn refuse(
    counters: &crate::server::stats::ShardCounters,
    buf: &mut Vec<u8>,
    req: &crate::protocol::Request<'_, '_>,
    code: ErrorCode,
    text: &str,
) {
    counters.error(code);
    message::write_error(buf, req.id.as_ref(), code, text, Some(req.type_name));
}
