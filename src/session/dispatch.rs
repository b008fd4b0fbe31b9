//! One request frame in, its response written: auth first, the rate limit,
//! then the message types of the seed protocol.

use super::counters::ShardCounters;
use super::env::Env;
use super::grant::{Op, TokenRefusal};
use super::host::{Host, Routed, SubscribeError};
use super::output::{reply_buf, Bucket, Output};
use super::token::{authenticate, Credentials};
use crate::protocol::codec::Codec;
use crate::protocol::{auth, message};
use crate::protocol::{parse_request, raw, ErrorCode, RequestKind};
use bytes::Bytes;
use std::ops::ControlFlow;

/// Why a session is closing after an error frame.
pub(crate) type Closing = (ErrorCode, &'static str);

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
    /// What `auth` proved.
    pub cred: &'s mut Credentials,
}

/// Handles one request frame; writes the response into `out`. Returns
/// `Break` with the error to send when the connection must close.
pub(crate) fn handle_frame<H: Host>(
    env: &mut Env<'_, H>,
    me: Caller<'_>,
    payload: &mut [u8],
    out: &mut Output,
) -> ControlFlow<Closing> {
    let now_ms = env.now_ms;
    let Env {
        config,
        parser,
        ts,
        counters,
        host,
        pool,
        ..
    } = env;
    let counters: &ShardCounters = counters;
    let now = ts.format(now_ms);
    let (rate, burst) = (config.rate_limit, config.rate_burst);
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
                    return token_refused(counters, TokenRefusal::Missing);
                }
                return ControlFlow::Continue(());
            }
        };
        // `hello` may come before `auth`; it does not authenticate.
        if !*me.authed && req.kind != RequestKind::Hello {
            let token = match req.kind {
                RequestKind::Auth => req.get("token").and_then(|t| t.as_str()),
                _ => None,
            };
            return match authenticate(config, token, now_ms) {
                Ok(grant) => {
                    *me.authed = true;
                    counters.message(RequestKind::Auth);
                    match grant.user() {
                        Some(user) => {
                            let expires_at = match &grant {
                                super::grant::Grant::Token(c) => c.expires_at,
                                _ => None,
                            };
                            auth::write_auth_ok_user(buf, req.id.as_ref(), user, expires_at)
                        }
                        None => message::write_auth_ok(buf, req.id.as_ref()),
                    }
                    me.cred.grant = grant;
                    ControlFlow::Continue(())
                }
                Err(why) => token_refused(counters, why),
            };
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
        if let Err((code, text)) = check_names(&req) {
            refuse(counters, buf, &req, code, text);
            return ControlFlow::Continue(());
        }
        counters.message(req.kind);
        match req.kind {
            RequestKind::Ping => message::write_pong(buf, &req, now, me.client_id),
            RequestKind::Echo => message::write_echo_response(buf, &req, now),
            RequestKind::Message => message::write_message_ack(buf, &req, now),
            RequestKind::Auth => message::write_auth_ok(buf, req.id.as_ref()),
            RequestKind::Broadcast if !me.cred.grant.may_broadcast() => denied(counters, buf, &req),
            RequestKind::Subscribe | RequestKind::Publish | RequestKind::History
                if !me
                    .cred
                    .grant
                    .permits(&config.namespaces, op_of(req.kind), req.channel()) =>
            {
                denied(counters, buf, &req)
            }
            RequestKind::Refresh => {
                let token = req.get("token").and_then(|t| t.as_str());
                match me.cred.refresh(config, token, now_ms) {
                    Ok(expires_at) => {
                        auth::write_refreshed(buf, req.id.as_ref(), expires_at);
                        drop_refused(host, me.id, me.cred, config, buf);
                    }
                    Err(why) => return token_refused(counters, why),
                }
            }
            RequestKind::Broadcast => {
                // Serialised once here; every recipient shares these bytes.
                let mut frame = Vec::with_capacity(128);
                let user = me.cred.user();
                message::write_broadcast_message_by(&mut frame, &req, me.client_id, user, now);
                match host.broadcast(me.id, Bytes::from(frame)) {
                    Routed::Recipients(n) => message::write_broadcast_sent(buf, &req, n, now),
                    Routed::Placing(n) => message::write_broadcast_sent(buf, &req, n, now),
                    Routed::LocalOnly | Routed::Nowhere => {
                        backplane_refused(counters, buf, &req, true)
                    }
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
                *me.codec = match config.compression {
                    true => req
                        .get("compression")
                        .and_then(|c| c.elements())
                        .and_then(|mut e| e.find_map(|n| n.as_str().and_then(Codec::from_name))),
                    false => None,
                };
                let mut features = ["broadcast", "channels", "", "", "", ""];
                let mut n = 2;
                for (on, name) in [
                    (config.compression, "compression"),
                    (config.auth_required(), "auth"),
                    (me.tls, "tls"),
                    (config.cluster, "cluster"),
                ] {
                    if on {
                        features[n] = name;
                        n += 1;
                    }
                }
                let hello = message::HelloOk {
                    compression: *me.codec,
                    max_frame_bytes: config.max_frame_bytes,
                    compression_threshold: config.compression_threshold_bytes,
                    features: &features[..n],
                };
                message::write_hello_ok(buf, req.id.as_ref(), &hello);
            }
            RequestKind::Subscribe => {
                let recover = req.recover();
                // Replayed publications follow `subscribed`, so they are
                // gathered apart first (rare: only a recovery has any).
                let mut replay = Vec::new();
                match host.subscribe_with(me.id, req.channel(), now_ms, recover, &mut replay) {
                    Ok(s) => {
                        let position = s.position.as_ref().map(|p| p.pair());
                        let recovered = recover.is_some().then_some(s.recovered);
                        message::write_subscribed(buf, &req, s.held as u64, position, recovered);
                        buf.extend_from_slice(&replay);
                    }
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
            }
            RequestKind::Unsubscribe => {
                let held = host.unsubscribe(me.id, req.channel());
                message::write_unsubscribed(buf, &req, held as u64);
            }
            RequestKind::Publish => {
                // Serialised once, by the host's call (with the offset on
                // a history channel); every subscriber shares these bytes.
                let user = me.cred.user();
                let mut write = |frame: &mut Vec<u8>, position: Option<(u64, &str)>| {
                    message::write_channel_message_by(
                        frame,
                        &req,
                        me.client_id,
                        user,
                        now,
                        position,
                    )
                };
                match host.publish_with(me.id, req.channel(), now_ms, &mut write) {
                    (Routed::Recipients(n), p) => {
                        let position = p.as_ref().map(|p| p.pair());
                        message::write_published(buf, &req, n, now, position);
                    }
                    (Routed::Placing(n), _) => {
                        let mut reply = Vec::with_capacity(128);
                        message::write_published(&mut reply, &req, n, now, None);
                        if !host.await_placement(me.id, me.client_id, Bytes::from(reply)) {
                            backplane_refused(counters, buf, &req, false);
                        }
                    }
                    (Routed::LocalOnly, _) => backplane_refused(counters, buf, &req, true),
                    (Routed::Nowhere, _) => backplane_refused(counters, buf, &req, false),
                }
            }
            RequestKind::History => {
                let mut entries = Vec::new();
                match host.history(req.channel(), now_ms, req.history_query(), &mut entries) {
                    Some(p) => message::write_history(buf, &req, p.offset, &p.epoch, &entries),
                    None => refuse(
                        counters,
                        buf,
                        &req,
                        ErrorCode::NoHistory,
                        "this channel keeps no history (the server's history_size is 0)",
                    ),
                }
            }
            RequestKind::GetStats => host.write_stats(buf, req.id.as_ref(), now, now_ms),
            RequestKind::Custom => match host.handler(req.type_name) {
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
    counters: &ShardCounters,
    buf: &mut Vec<u8>,
    req: &crate::protocol::Request<'_, '_>,
    delivered_here: bool,
) {
    let message = match delivered_here {
        true => {
            "the cluster backplane is unreachable and its buffer is full: \
             delivered to this node's clients only"
        }
        false => {
            "the cluster backplane is unreachable and its buffer is full: \
             a history channel's offset comes from Redis, so this publication \
             was delivered to no one; publish it again later"
        }
    };
    refuse(counters, buf, req, ErrorCode::BackplaneUnavailable, message);
}

/// The permission a channel request needs.
fn op_of(kind: RequestKind) -> Op {
    match kind {
        RequestKind::Publish => Op::Publish,
        RequestKind::History => Op::History,
        _ => Op::Subscribe,
    }
}

/// Answers a request the grant does not allow; the connection stays.
fn denied(counters: &ShardCounters, buf: &mut Vec<u8>, req: &crate::protocol::Request<'_, '_>) {
    let text = match req.kind {
        RequestKind::Broadcast => "your token does not allow broadcast",
        _ => "your token or this channel's namespace does not allow this on this channel",
    };
    refuse(counters, buf, req, ErrorCode::PermissionDenied, text);
}

/// A refused `auth` or `refresh`: counted by reason, and the connection
/// closes with `unauthorized` naming the check that failed.
fn token_refused(counters: &ShardCounters, why: TokenRefusal) -> ControlFlow<Closing> {
    super::counters::bump(&counters.auth_failures[why.index()], 1);
    ControlFlow::Break((ErrorCode::Unauthorized, why.message()))
}

/// After a refresh: drops the subscriptions the new claims no longer
/// allow, telling the client each one (`unsubscribed` with a `reason`).
fn drop_refused<H: Host>(
    host: &mut H,
    conn: usize,
    cred: &Credentials,
    config: &super::SessionConfig,
    buf: &mut Vec<u8>,
) {
    for channel in host.subscriptions_of(conn) {
        if !cred
            .grant
            .permits(&config.namespaces, Op::Subscribe, &channel)
        {
            let held = host.unsubscribe(conn, &channel);
            auth::write_dropped(buf, &channel, "permission_denied", held as u64);
        }
    }
}

/// Counts an error and answers `req` with it.
/// Checks a channel request's name beyond the parser's limits
/// (`protocol::pattern`): a subscription may name a pattern, without
/// `recover` (offsets are per channel); a publish or history needs one
/// concrete channel.
fn check_names(req: &crate::protocol::Request<'_, '_>) -> Result<(), (ErrorCode, &'static str)> {
    use crate::protocol::pattern;
    let checked = match req.kind {
        RequestKind::Subscribe | RequestKind::Unsubscribe => {
            pattern::check_subscribe(req.channel())
        }
        RequestKind::Publish | RequestKind::History => pattern::check_concrete(req.channel()),
        _ => return Ok(()),
    };
    checked.map_err(|m| (ErrorCode::InvalidChannel, m))?;
    if req.kind == RequestKind::Subscribe
        && req.get("recover").is_some()
        && pattern::is_pattern(req.channel())
    {
        return Err((
            ErrorCode::InvalidField,
            "recover needs a channel: a pattern has no offsets (they are per channel)",
        ));
    }
    Ok(())
}

fn refuse(
    counters: &ShardCounters,
    buf: &mut Vec<u8>,
    req: &crate::protocol::Request<'_, '_>,
    code: ErrorCode,
    text: &str,
) {
    counters.error(code);
    message::write_error(buf, req.id.as_ref(), code, text, Some(req.type_name));
}
