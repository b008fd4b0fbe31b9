//! The messages: parsing requests off a tape and writing responses as frames.
//!
//! Field names and shapes follow the seed protocol exactly (see
//! docs/PROTOCOL.md). Every response to a request copies the request's
//! optional `id` back unchanged so pipelined clients can correlate.

use super::error::{ErrorCode, RequestError};
use super::json::JsonValue;

/// The value of `echoed_by` in echo responses.
pub const SERVER_NAME: &str = "ringcast";

/// The request types the server itself understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestKind {
    /// `ping` → `pong`.
    Ping,
    /// `echo` → `echo_response`.
    Echo,
    /// `broadcast` → `broadcast_sent`, and `broadcast_message` to the others.
    Broadcast,
    /// `get_stats` → `server_stats`.
    GetStats,
    /// `message` (plain text from the interactive client) → `message_ack`.
    Message,
    /// `auth` → `auth_ok` (only meaningful when the server requires a token).
    Auth,
    /// Any other type: handled by a registered custom handler, or `unknown_type`.
    Custom,
    /// `subscribe {channel}` → `subscribed`.
    Subscribe,
    /// `unsubscribe {channel}` → `unsubscribed`.
    Unsubscribe,
    /// `publish {channel, content}` → `published`, and `channel_message` to
    /// the channel's subscribers.
    Publish,
    /// `hello {compression}` → `hello_ok`: version and feature discovery,
    /// and the compression codec (see [`super::codec`]).
    Hello,
    /// `history {channel, since?, limit?}` → `history`: a history
    /// channel's kept publications.
    History,
    /// `refresh {token}` → `refreshed`: a new token for the same user
    /// replaces the connection's claims (see `session::grant`).
    Refresh,
}

impl RequestKind {
    /// How many kinds there are (the length of per-type counter arrays).
    pub const COUNT: usize = 13;

    /// Known kinds, in the order used for per-type counters (new kinds are
    /// appended, so existing counter positions never move).
    pub const ALL: [RequestKind; RequestKind::COUNT] = [
        RequestKind::Ping,
        RequestKind::Echo,
        RequestKind::Broadcast,
        RequestKind::GetStats,
        RequestKind::Message,
        RequestKind::Auth,
        RequestKind::Custom,
        RequestKind::Subscribe,
        RequestKind::Unsubscribe,
        RequestKind::Publish,
        RequestKind::Hello,
        RequestKind::History,
        RequestKind::Refresh,
    ];

    /// Classifies a `type` string.
    #[inline]
    pub fn from_type(t: &str) -> RequestKind {
        match t {
            "ping" => RequestKind::Ping,
            "echo" => RequestKind::Echo,
            "broadcast" => RequestKind::Broadcast,
            "get_stats" => RequestKind::GetStats,
            "message" => RequestKind::Message,
            "auth" => RequestKind::Auth,
            "subscribe" => RequestKind::Subscribe,
            "unsubscribe" => RequestKind::Unsubscribe,
            "publish" => RequestKind::Publish,
            "hello" => RequestKind::Hello,
            "history" => RequestKind::History,
            "refresh" => RequestKind::Refresh,
            _ => RequestKind::Custom,
        }
    }

    /// The counter label (`custom` for every custom type).
    pub const fn label(self) -> &'static str {
        match self {
            RequestKind::Ping => "ping",
            RequestKind::Echo => "echo",
            RequestKind::Broadcast => "broadcast",
            RequestKind::GetStats => "get_stats",
            RequestKind::Message => "message",
            RequestKind::Auth => "auth",
            RequestKind::Custom => "custom",
            RequestKind::Subscribe => "subscribe",
            RequestKind::Unsubscribe => "unsubscribe",
            RequestKind::Publish => "publish",
            RequestKind::Hello => "hello",
            RequestKind::History => "history",
            RequestKind::Refresh => "refresh",
        }
    }

    /// Index into per-type counter arrays.
    #[inline]
    pub const fn index(self) -> usize {
        self as usize
    }
}

/// A parsed request: a view over the frame's tape, valid while the frame is.
#[derive(Debug, Clone, Copy)]
pub struct Request<'t, 'a> {
    /// What the server does with it.
    pub kind: RequestKind,
    /// The `type` string as sent.
    pub type_name: &'a str,
    /// The optional correlation `id` (a JSON scalar).
    pub id: Option<JsonValue<'t, 'a>>,
    /// The whole object, for custom handlers and optional fields.
    pub root: JsonValue<'t, 'a>,
}

impl<'t, 'a> Request<'t, 'a> {
    /// Validates a parsed payload as a request.
    ///
    /// Errors carry the request's `type` when it could be read, and its `id`
    /// is still wanted in the error response, so [`Request::id_of`] exists.
    pub fn from_value(root: JsonValue<'t, 'a>) -> Result<Self, RequestError<'a>> {
        if !root.is_object() {
            return Err(RequestError::new(
                ErrorCode::NotAnObject,
                "a message must be a JSON object",
            ));
        }
        let mut type_name = None;
        let mut id = None;
        let mut type_seen = false;
        for (k, v) in root.entries() {
            match k {
                "type" => {
                    type_seen = true;
                    type_name = v.as_str();
                }
                "id" => id = Some(v),
                _ => {}
            }
        }
        let Some(type_name) = type_name else {
            return Err(RequestError::new(
                ErrorCode::MissingType,
                if type_seen {
                    "the type field must be a string"
                } else {
                    "a message needs a string type field"
                },
            ));
        };
        let err = |message| RequestError {
            code: ErrorCode::InvalidField,
            message,
            request_type: Some(type_name),
        };
        if let Some(id) = id {
            if !id.is_scalar() {
                return Err(err(
                    "id must be a JSON scalar (string, number, bool or null)",
                ));
            }
        }
        let kind = RequestKind::from_type(type_name);
        match kind {
            RequestKind::Echo
            | RequestKind::Broadcast
            | RequestKind::Message
            | RequestKind::Publish
                if root.get("content").is_none() =>
            {
                return Err(err("this message type needs a content field"));
            }
            RequestKind::Subscribe
            | RequestKind::Unsubscribe
            | RequestKind::Publish
            | RequestKind::History => {
                let Some(channel) = root.get("channel").and_then(|c| c.as_str()) else {
                    return Err(err("this message type needs a string channel field"));
                };
                if let Err(message) = check_channel(channel) {
                    return Err(RequestError {
                        code: ErrorCode::InvalidChannel,
                        message,
                        request_type: Some(type_name),
                    });
                }
                check_history_fields(kind, &root).map_err(err)?;
            }
            RequestKind::Hello
                if root.get("compression").is_some_and(|c| {
                    !c.is_null()
                        && !c
                            .elements()
                            .is_some_and(|mut e| e.all(|n| n.as_str().is_some()))
                }) =>
            {
                return Err(err("hello's compression must be an array of codec names"));
            }
            RequestKind::Auth if root.get("token").and_then(|t| t.as_str()).is_none() => {
                return Err(err("auth needs a string token field"));
            }
            RequestKind::Refresh if root.get("token").and_then(|t| t.as_str()).is_none() => {
                return Err(err("refresh needs a string token field"));
            }
            _ => {}
        }
        Ok(Request {
            kind,
            type_name,
            id,
            root,
        })
    }

    /// The `id` of a payload that may not be a valid request, so that even
    /// error responses can be correlated.
    pub fn id_of(root: &JsonValue<'t, 'a>) -> Option<JsonValue<'t, 'a>> {
        root.get("id").filter(|v| v.is_scalar())
    }

    /// The `type` of a payload, if it has a string one.
    pub fn type_of(root: &JsonValue<'t, 'a>) -> Option<&'a str> {
        root.get("type").and_then(|v| v.as_str())
    }

    /// A field of the request.
    #[inline]
    pub fn get(&self, key: &str) -> Option<JsonValue<'t, 'a>> {
        self.root.get(key)
    }

    /// The `channel` of a `subscribe`, `unsubscribe`, `publish` or
    /// `history` (checked by [`Request::from_value`]); empty for other kinds.
    pub fn channel(&self) -> &'a str {
        self.get("channel").and_then(|c| c.as_str()).unwrap_or("")
    }

    /// A `subscribe`'s `recover {offset, epoch}` (checked by
    /// [`Request::from_value`]), if it has one.
    pub fn recover(&self) -> Option<Recover<'a>> {
        let r = self.get("recover")?;
        Some(Recover {
            offset: r.get("offset")?.as_u64()?,
            epoch: r.get("epoch")?.as_str()?,
        })
    }

    /// A `history` request's `since` and `limit` (checked by
    /// [`Request::from_value`]), defaults filled in.
    pub fn history_query(&self) -> HistoryQuery {
        HistoryQuery {
            since: self.get("since").and_then(|v| v.as_u64()).unwrap_or(0),
            limit: self
                .get("limit")
                .and_then(|v| v.as_u64())
                .unwrap_or(HISTORY_DEFAULT_LIMIT) as usize,
        }
    }
}

/// Largest offset a client may send: 2^53 - 1, the largest integer every
/// JSON reader (JavaScript's included) holds exactly. A channel would need
/// 285 years at a million publications a second to reach it.
pub const MAX_OFFSET: u64 = (1 << 53) - 1;

/// Publications a `history` answer holds unless `limit` says otherwise.
pub const HISTORY_DEFAULT_LIMIT: u64 = 100;

/// Most publications one `history` answer may hold: a page of 1,000 small
/// publications is ~200 KB, well inside one reply; more is paged by `since`.
pub const HISTORY_MAX_LIMIT: u64 = 1000;

/// Longest epoch accepted in `recover`: ours are 20 characters or fewer;
/// anything much longer is not one of ours and is refused before it is
/// compared.
pub const MAX_EPOCH_BYTES: usize = 64;

/// A position a client asks to resume from: the last offset it saw of a
/// history channel, and that channel's epoch then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recover<'a> {
    /// The last offset received.
    pub offset: u64,
    /// The channel's epoch when it was received.
    pub epoch: &'a str,
}

/// What a `history` request asks for: publications after `since`, at most
/// `limit` of them, oldest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryQuery {
    /// Publications with a larger offset (0: from the oldest kept).
    pub since: u64,
    /// At most this many (1 to [`HISTORY_MAX_LIMIT`]).
    pub limit: usize,
}

/// Checks a `subscribe`'s `recover` and a `history`'s `since` and `limit`;
/// the error is the message for `invalid_field`.
fn check_history_fields(kind: RequestKind, root: &JsonValue<'_, '_>) -> Result<(), &'static str> {
    let offset_ok = |v: &JsonValue<'_, '_>| v.as_u64().is_some_and(|n| n <= MAX_OFFSET);
    match kind {
        RequestKind::Subscribe => {
            let Some(r) = root.get("recover") else {
                return Ok(());
            };
            if !r.is_object() {
                return Err("recover must be an object {offset, epoch}");
            }
            if !r.get("offset").is_some_and(|v| offset_ok(&v)) {
                return Err("recover.offset must be an integer from 0 to 2^53-1");
            }
            match r.get("epoch").and_then(|e| e.as_str()) {
                Some(e) if e.len() <= MAX_EPOCH_BYTES => Ok(()),
                Some(_) => Err("recover.epoch is longer than any epoch this server makes"),
                None => Err("recover.epoch must be a string"),
            }
        }
        RequestKind::History => {
            if root.get("since").is_some_and(|v| !offset_ok(&v)) {
                return Err("since must be an integer from 0 to 2^53-1");
            }
            let limit_ok = |v: JsonValue<'_, '_>| {
                v.as_u64()
                    .is_some_and(|n| (1..=HISTORY_MAX_LIMIT).contains(&n))
            };
            if root.get("limit").is_some_and(|v| !limit_ok(v)) {
                return Err("limit must be an integer from 1 to 1000");
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Longest channel name, in bytes of UTF-8. Names are keys in every
/// shard's subscriber index and are copied into every `channel_message`,
/// so they are kept short; 256 bytes holds any hierarchical name people
/// use (`tenant/room/topic`, a UUID or two) with room to spare.
pub const MAX_CHANNEL_BYTES: usize = 256;

/// Checks a channel name: 1 to [`MAX_CHANNEL_BYTES`] bytes, no control
/// characters (they would make names that log and display ambiguously).
/// The error is the message for `invalid_channel`.
pub fn check_channel(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("a channel name must not be empty");
    }
    if name.len() > MAX_CHANNEL_BYTES {
        return Err("a channel name must be at most 256 bytes of UTF-8");
    }
    if name.chars().any(char::is_control) {
        return Err("a channel name must not contain control characters");
    }
    Ok(())
}

pub use super::json::write_response;

/// `pong`: `ping_timestamp` is the ping's `timestamp` (null if it had none).
pub fn write_pong(out: &mut Vec<u8>, req: &Request<'_, '_>, now: &str, client_id: &str) {
    write_response(out, "pong", req.id.as_ref(), |o| {
        match req.get("timestamp") {
            Some(ts) => o.value("ping_timestamp", &ts),
            None => o.null("ping_timestamp"),
        }
        o.raw_str("pong_timestamp", now);
        o.str("client_id", client_id);
    });
}

/// `echo_response`: the request's `content`, unchanged.
pub fn write_echo_response(out: &mut Vec<u8>, req: &Request<'_, '_>, now: &str) {
    write_response(out, "echo_response", req.id.as_ref(), |o| {
        if let Some(c) = req.get("content") {
            o.value("content", &c);
        }
        o.raw_str("timestamp", now);
        o.raw_str("echoed_by", SERVER_NAME);
    });
}

/// `broadcast_sent`: how many clients the broadcast was delivered or queued to.
pub fn write_broadcast_sent(out: &mut Vec<u8>, req: &Request<'_, '_>, recipients: u64, now: &str) {
    write_response(out, "broadcast_sent", req.id.as_ref(), |o| {
        o.u64("recipients", recipients);
        o.raw_str("timestamp", now);
    });
}

/// `broadcast_message`, as delivered to every other client. Carries no `id`:
/// the sender's id would collide with the recipients' own correlation ids.
pub fn write_broadcast_message(out: &mut Vec<u8>, req: &Request<'_, '_>, from: &str, now: &str) {
    write_broadcast_message_by(out, req, from, None, now)
}

/// [`write_broadcast_message`] with the sender's `user` (a token's `sub`),
/// when it authenticated with one.
pub fn write_broadcast_message_by(
    out: &mut Vec<u8>,
    req: &Request<'_, '_>,
    from: &str,
    user: Option<&str>,
    now: &str,
) {
    write_response(out, "broadcast_message", None, |o| {
        if let Some(c) = req.get("content") {
            o.value("content", &c);
        }
        o.str("from", from);
        if let Some(u) = user {
            o.str("user", u);
        }
        o.raw_str("timestamp", now);
    });
}

/// `subscribed`: the connection now holds `subscriptions` channels. On a
/// history channel it carries the channel's `position` (its latest offset
/// and epoch); when the request asked to `recover`, `recovered` says
/// whether the missed publications follow.
pub fn write_subscribed(
    out: &mut Vec<u8>,
    req: &Request<'_, '_>,
    subscriptions: u64,
    position: Option<(u64, &str)>,
    recovered: Option<bool>,
) {
    write_response(out, "subscribed", req.id.as_ref(), |o| {
        o.str("channel", req.channel());
        o.u64("subscriptions", subscriptions);
        if let Some((offset, epoch)) = position {
            o.u64("offset", offset);
            o.str("epoch", epoch);
        }
        if let Some(r) = recovered {
            o.key("recovered")
                .extend_from_slice(if r { b"true" } else { b"false" });
        }
    });
}

/// `unsubscribed`, whether or not the connection was subscribed (as in
/// Redis, leaving a channel you are not in is no error); `subscriptions`
/// is what the connection holds now.
pub fn write_unsubscribed(out: &mut Vec<u8>, req: &Request<'_, '_>, subscriptions: u64) {
    write_response(out, "unsubscribed", req.id.as_ref(), |o| {
        o.str("channel", req.channel());
        o.u64("subscriptions", subscriptions);
    });
}

/// `published`: how many subscribers the message was delivered or queued
/// to; on a history channel, the publication's `offset` and `epoch`.
pub fn write_published(
    out: &mut Vec<u8>,
    req: &Request<'_, '_>,
    recipients: u64,
    now: &str,
    position: Option<(u64, &str)>,
) {
    write_response(out, "published", req.id.as_ref(), |o| {
        o.str("channel", req.channel());
        o.u64("recipients", recipients);
        o.raw_str("timestamp", now);
        if let Some((offset, epoch)) = position {
            o.u64("offset", offset);
            o.str("epoch", epoch);
        }
    });
}

/// `channel_message`, as delivered to every subscriber of the channel. No
/// `id`, for the reason `broadcast_message` has none. On a history channel
/// it ends with the publication's `offset` and `epoch`.
///
/// Returns where the publication's own fields (`"content":…` through the
/// timestamp) lie in `out`: a history keeps that span to answer `history`
/// without parsing the frame again.
pub fn write_channel_message(
    out: &mut Vec<u8>,
    req: &Request<'_, '_>,
    from: &str,
    now: &str,
    position: Option<(u64, &str)>,
) -> std::ops::Range<usize> {
    write_channel_message_by(out, req, from, None, now, position)
}

/// [`write_channel_message`] with the publisher's `user` (a token's
/// `sub`), when it authenticated with one; it is part of the span a
/// history keeps.
pub fn write_channel_message_by(
    out: &mut Vec<u8>,
    req: &Request<'_, '_>,
    from: &str,
    user: Option<&str>,
    now: &str,
    position: Option<(u64, &str)>,
) -> std::ops::Range<usize> {
    let mut body = 0..0;
    write_response(out, "channel_message", None, |o| {
        o.str("channel", req.channel());
        // The span starts after the comma `key` writes before "content".
        body.start = o.written() + 1;
        if let Some(c) = req.get("content") {
            o.value("content", &c);
        }
        o.str("from", from);
        if let Some(u) = user {
            o.str("user", u);
        }
        o.raw_str("timestamp", now);
        body.end = o.written();
        if let Some((offset, epoch)) = position {
            o.u64("offset", offset);
            o.str("epoch", epoch);
        }
    });
    body
}

/// `frame` (a whole frame: header, then a JSON object) with `"offset"`
/// and `"epoch"` added last, as [`write_channel_message`] and
/// [`write_published`] write them on a history channel: for a frame
/// written before its offset was known (a cluster's history channels get
/// theirs from Redis). `epoch` must need no escaping. None if `frame` is
/// not a header and an object.
pub fn add_position(frame: &[u8], offset: u64, epoch: &str) -> Option<Vec<u8>> {
    let payload = frame.get(super::HEADER_LEN..)?;
    if payload.len() < 2 || payload.last() != Some(&b'}') {
        return None;
    }
    let end = payload.len() - 1;
    let mut out = Vec::with_capacity(frame.len() + 48);
    out.extend_from_slice(&[0; super::HEADER_LEN]);
    out.extend_from_slice(&payload[..end]);
    out.extend_from_slice(b",\"offset\":");
    super::json::write_u64(&mut out, offset);
    out.extend_from_slice(b",\"epoch\":\"");
    out.extend_from_slice(epoch.as_bytes());
    out.extend_from_slice(b"\"}");
    let len = (out.len() - super::HEADER_LEN) as u32;
    out[..super::HEADER_LEN].copy_from_slice(&len.to_be_bytes());
    Some(out)
}

/// One entry of a `history` answer's `publications`, from the span
/// [`write_channel_message`] returned: `{"offset":N,` then the span, `}`.
pub fn write_history_entry(out: &mut Vec<u8>, offset: u64, body: &[u8]) {
    out.extend_from_slice(b"{\"offset\":");
    super::json::write_u64(out, offset);
    out.push(b',');
    out.extend_from_slice(body);
    out.push(b'}');
}

/// `history`: a history channel's latest `offset`, its `epoch`, and the
/// kept publications asked for, written by `entries` as
/// [`write_history_entry`]s separated by commas.
pub fn write_history(
    out: &mut Vec<u8>,
    req: &Request<'_, '_>,
    offset: u64,
    epoch: &str,
    entries: &[u8],
) {
    write_response(out, "history", req.id.as_ref(), |o| {
        o.str("channel", req.channel());
        o.u64("offset", offset);
        o.str("epoch", epoch);
        let a = o.key("publications");
        a.push(b'[');
        a.extend_from_slice(entries);
        a.push(b']');
    });
}

/// `message_ack` for a plain-text `message`.
pub fn write_message_ack(out: &mut Vec<u8>, req: &Request<'_, '_>, now: &str) {
    write_response(out, "message_ack", req.id.as_ref(), |o| {
        o.raw_str("timestamp", now);
    });
}

/// `auth_ok` after a valid `auth`.
pub fn write_auth_ok(out: &mut Vec<u8>, id: Option<&JsonValue<'_, '_>>) {
    write_response(out, "auth_ok", id, |_| {});
}

/// What `hello_ok` tells a client about the server and its connection.
#[derive(Debug, Clone, Copy)]
pub struct HelloOk<'a> {
    /// The codec chosen for this connection, if any.
    pub compression: Option<super::codec::Codec>,
    /// The largest payload (decompressed) accepted.
    pub max_frame_bytes: usize,
    /// Payloads larger than this are compressed.
    pub compression_threshold: usize,
    /// Capabilities present (see docs/PROTOCOL.md, `hello`).
    pub features: &'a [&'a str],
}

/// The protocol version `hello_ok` announces; bumped only for changes an
/// old client could not follow.
pub const PROTOCOL_VERSION: u64 = 1;

/// `hello_ok`: the codec chosen, and what the server is and offers.
pub fn write_hello_ok(out: &mut Vec<u8>, id: Option<&JsonValue<'_, '_>>, h: &HelloOk<'_>) {
    write_response(out, "hello_ok", id, |o| {
        match h.compression {
            Some(c) => o.raw_str("compression", c.as_str()),
            None => o.null("compression"),
        }
        o.raw_str("server", concat!("ringcast/", env!("CARGO_PKG_VERSION")));
        o.u64("protocol", PROTOCOL_VERSION);
        o.u64("max_frame_bytes", h.max_frame_bytes as u64);
        o.u64("compression_threshold", h.compression_threshold as u64);
        let a = o.key("features");
        a.push(b'[');
        for (i, f) in h.features.iter().enumerate() {
            if i > 0 {
                a.push(b',');
            }
            super::json::write_str(a, f);
        }
        a.push(b']');
    });
}

/// `error` with a stable code, a message and, when known, the request type.
pub fn write_error(
    out: &mut Vec<u8>,
    id: Option<&JsonValue<'_, '_>>,
    code: ErrorCode,
    message: &str,
    request_type: Option<&str>,
) {
    write_response(out, "error", id, |o| {
        o.raw_str("code", code.as_str());
        o.str("message", message);
        if let Some(t) = request_type {
            o.str("request_type", t);
        }
    });
}

pub use super::stats::*;
