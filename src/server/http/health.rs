//! `GET /metrics` (Prometheus text exposition, version 0.0.4; what a
//! scrape reads is [`super::collector`]) and `GET /healthz`. Both answer
//! with `Connection: close`, as the endpoint always did.

use super::ctx::{Ctx, Req};
use super::reply::{self, Answer, ApiError, ErrorCode};
use hyper::StatusCode;
use prometheus_client::encoding::prometheus_text;
use std::sync::atomic::Ordering;

/// `GET /metrics`.
pub(super) async fn metrics(ctx: &Ctx, _req: Req) -> Result<Answer, ApiError> {
    let mut body = String::with_capacity(16 * 1024);
    prometheus_text::encode(&mut body, &ctx.registry)
        .map_err(|_| ApiError::new(ErrorCode::Unavailable, "encoding the metrics failed"))?;
    Ok(reply::closing(reply::with_type(
        StatusCode::OK,
        prometheus_text::CONTENT_TYPE,
        body.into(),
    )))
}

/// `GET /healthz`: 200 `ok`, 200 `degraded: …` (the backplane is down or
/// restarting: the node still serves its own clients, no reason to restart
/// it), 503 while stopping or once a shard has stopped on an I/O error.
pub(super) async fn healthz(ctx: &Ctx, _req: Req) -> Result<Answer, ApiError> {
    let shared = &ctx.shared;
    let (status, text): (StatusCode, &'static str) = if shared.stop.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
    } else if shared.failed_shards.load(Ordering::Relaxed) > 0 {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "a shard stopped on an I/O error (see the log)\n",
        )
    } else if shared.cluster().is_some_and(|c| !c.threads_alive()) {
        (
            StatusCode::OK,
            "degraded: a cluster backplane thread died and is being restarted (see the log)\n",
        )
    } else if shared.cluster().is_some_and(|c| !c.is_up()) {
        (
            StatusCode::OK,
            "degraded: the cluster backplane is unreachable; delivering locally\n",
        )
    } else {
        (StatusCode::OK, "ok\n")
    };
    Ok(reply::closing(reply::with_type(
        status,
        "text/plain; charset=utf-8",
        text.into(),
    )))
}
