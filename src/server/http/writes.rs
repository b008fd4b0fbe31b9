//! The write endpoints: `POST /v1/publish`, `/v1/broadcast`,
//! `/v1/disconnect`, `/v1/unsubscribe`. Each always needs the API key.
//!
//! A publish or broadcast is serialised once, with `"from": "api"`, by the
//! same writers a client's message goes through, and enters the router
//! like another node's entry (src/route/external.rs): every shard with
//! recipients, and the other nodes through the backplane. A disconnect or
//! an unsubscribe is a request to every shard's mailbox
//! (src/route/control.rs), and with a backplane a control entry to the
//! other nodes (src/cluster/control.rs); the count answered is this
//! node's.

use super::ctx::{ok, read_json, Ctx, Req};
use super::reply::{Answer, ApiError, ErrorCode};
use crate::cluster::ControlOp;
use crate::protocol::message::{check_channel, write_broadcast_message, write_channel_message};
use crate::protocol::{parse_request, JsonParser, TimestampCache};
use crate::route::control::{Control, Target};
use crate::session::Routed;
use serde_json::{json, Map, Value};
use std::sync::Arc;

/// The `from` of every message the API sends.
pub const FROM: &str = "api";

/// The reason a disconnected client is told when none is given.
const DEFAULT_REASON: &str = "disconnected by an operator";

/// The body as an object with only the fields `allowed`.
fn object(v: Value, allowed: &[&str]) -> Result<Map<String, Value>, ApiError> {
    let Value::Object(m) = v else {
        return Err(ApiError::new(
            ErrorCode::InvalidJson,
            "the body must be a JSON object",
        ));
    };
    if let Some(k) = m.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(ApiError::new(
            ErrorCode::InvalidField,
            format!(
                "unknown field {k:?}; this endpoint takes {}",
                allowed.join(", ")
            ),
        ));
    }
    Ok(m)
}

/// A string field, if present (400 if present but not a string).
fn string<'m>(m: &'m Map<String, Value>, name: &str) -> Result<Option<&'m str>, ApiError> {
    match m.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ApiError::new(
            ErrorCode::InvalidField,
            format!("{name} must be a string"),
        )),
    }
}

/// The `channel` field, checked as a client's would be.
fn channel(m: &Map<String, Value>) -> Result<&str, ApiError> {
    let c = string(m, "channel")?
        .ok_or_else(|| ApiError::new(ErrorCode::InvalidField, "channel is required"))?;
    check_channel(c).map_err(|why| ApiError::new(ErrorCode::InvalidChannel, why))?;
    Ok(c)
}

/// `content`, which every message needs (any JSON value).
fn content(m: &Map<String, Value>) -> Result<&Value, ApiError> {
    m.get("content")
        .ok_or_else(|| ApiError::new(ErrorCode::InvalidField, "content is required"))
}

/// Builds the request a client would have sent (`{"type":…,…}`), parses
/// it with the server's own parser, and gives it to `f`: the frame is
/// then written by the very code that writes a client's.
fn as_request<R>(
    fields: Value,
    f: impl for<'t, 'a> FnOnce(&crate::protocol::Request<'t, 'a>) -> R,
) -> Result<R, ApiError> {
    let mut payload = fields.to_string().into_bytes();
    let mut parser = JsonParser::new();
    parse_request(&mut parser, &mut payload, |r| match r {
        Ok(req) => Ok(f(&req)),
        Err(rejected) => Err(ApiError::new(
            ErrorCode::InvalidField,
            rejected.error.message,
        )),
    })
}

/// How long an API publish to a cluster's history channel waits for Redis
/// to place it.
const PLACE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

fn backplane_refused() -> ApiError {
    ApiError::new(
        ErrorCode::BackplaneUnavailable,
        "the cluster backplane is unreachable and its buffer is full: \
         the message reached this node's clients only",
    )
}

/// `POST /v1/publish` `{channel, content}` → `{recipients, offset?, epoch?}`.
pub(super) async fn publish(ctx: &Ctx, req: Req) -> Result<Answer, ApiError> {
    let m = object(read_json(ctx, req).await?, &["channel", "content"])?;
    let channel = channel(&m)?;
    let fields = json!({"type": "publish", "channel": channel, "content": content(&m)?});
    let now_ms = crate::protocol::time::unix_ms_now();
    let mut ts = TimestampCache::new();
    let now = ts.format(now_ms);
    let router = &ctx.shared.router;
    let (routed, mut position, placed) = as_request(fields, |r| {
        let mut write = |frame: &mut Vec<u8>, position: Option<(u64, &str)>| {
            write_channel_message(frame, r, FROM, now, position)
        };
        router.publish_external(channel, now_ms, &mut write)
    })?;
    let n = match routed {
        Routed::Recipients(n) | Routed::Placing(n) => n,
        Routed::LocalOnly => return Err(backplane_refused()),
        Routed::Nowhere => {
            return Err(ApiError::new(
                ErrorCode::BackplaneUnavailable,
                "the cluster backplane is unreachable and its buffer is full: a history \
                 channel's offset comes from Redis, so this publication was delivered \
                 to no one; publish it again later",
            ))
        }
    };
    if let Some(rx) = placed {
        // A cluster's history channel: Redis gives the offset. Waited for
        // off the runtime's thread; past PLACE_WAIT the answer goes
        // without it (the publication stays queued and is placed later).
        position = tokio::task::spawn_blocking(move || rx.recv_timeout(PLACE_WAIT).ok().flatten())
            .await
            .ok()
            .flatten();
    }
    let mut answer = json!({"recipients": n});
    if let Some(p) = position {
        answer["offset"] = json!(p.offset);
        answer["epoch"] = json!(&*p.epoch);
    }
    ok(answer)
}

/// `POST /v1/broadcast` `{content}` → `{recipients}`.
pub(super) async fn broadcast(ctx: &Ctx, req: Req) -> Result<Answer, ApiError> {
    let m = object(read_json(ctx, req).await?, &["content"])?;
    let fields = json!({"type": "broadcast", "content": content(&m)?});
    let mut ts = TimestampCache::new();
    let now = ts.format(crate::protocol::time::unix_ms_now());
    let frame = as_request(fields, |r| {
        let mut frame = Vec::with_capacity(192);
        write_broadcast_message(&mut frame, r, FROM, now);
        frame
    })?;
    match ctx.shared.router.broadcast_external(frame.into()) {
        Routed::Recipients(n) | Routed::Placing(n) => ok(json!({"recipients": n})),
        Routed::LocalOnly | Routed::Nowhere => Err(backplane_refused()),
    }
}

/// `{client_id}` or `{user}`: exactly one of them.
fn target(m: &Map<String, Value>) -> Result<Target, ApiError> {
    match (string(m, "client_id")?, string(m, "user")?) {
        (Some(id), None) => Ok(Target::ClientId(Arc::from(id))),
        (None, Some(u)) => Ok(Target::User(Arc::from(u))),
        _ => Err(ApiError::new(
            ErrorCode::InvalidField,
            "give either client_id or user",
        )),
    }
}

/// `POST /v1/disconnect` `{client_id}` or `{user}`, `reason?` →
/// `{disconnected}`. Each connection first gets `error` `kicked` with the
/// reason as its message.
pub(super) async fn disconnect(ctx: &Ctx, req: Req) -> Result<Answer, ApiError> {
    let m = object(read_json(ctx, req).await?, &["client_id", "user", "reason"])?;
    let target = target(&m)?;
    let reason: Arc<str> = Arc::from(string(&m, "reason")?.unwrap_or(DEFAULT_REASON));
    let n: u64 = ctx
        .ask_shards(|reply| Control::Disconnect {
            target: target.clone(),
            reason: reason.clone(),
            reply,
        })
        .await?
        .into_iter()
        .sum();
    to_other_nodes(ctx, ControlOp::Disconnect { target, reason })?;
    ok(json!({ "disconnected": n }))
}

/// `POST /v1/unsubscribe` `{client_id}` or `{user}`, `channel` →
/// `{unsubscribed}`.
pub(super) async fn unsubscribe(ctx: &Ctx, req: Req) -> Result<Answer, ApiError> {
    let m = object(
        read_json(ctx, req).await?,
        &["client_id", "user", "channel"],
    )?;
    let target = target(&m)?;
    let channel: Arc<str> = Arc::from(channel(&m)?);
    let n: u64 = ctx
        .ask_shards(|reply| Control::Unsubscribe {
            target: target.clone(),
            channel: channel.clone(),
            reply,
        })
        .await?
        .into_iter()
        .sum();
    to_other_nodes(ctx, ControlOp::Unsubscribe { target, channel })?;
    ok(json!({ "unsubscribed": n }))
}

/// With a backplane, sends `op` to the other nodes (each acts on its own
/// clients when it reads it; the count answered is this node's).
fn to_other_nodes(ctx: &Ctx, op: ControlOp) -> Result<(), ApiError> {
    match ctx.shared.cluster() {
        Some(c) if !c.try_send_control(op) => Err(ApiError::new(
            ErrorCode::BackplaneUnavailable,
            "the cluster backplane is unreachable and its buffer is full: \
             this node's clients only were acted on",
        )),
        _ => Ok(()),
    }
}
