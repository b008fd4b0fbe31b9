//! What every handler may use: the listener's context ([`Ctx`]: the
//! server, the key, the limiter, the shards' mailboxes), reading a JSON
//! body within the limits, and the 200 answer.

use super::auth::Keys;
use super::limits::RateLimiter;
use super::reply::{self, Answer, ApiError, ErrorCode};
use super::BODY_TIMEOUT;
use crate::route::control::{Control, Reply};
use crate::route::report::RssReader;
use crate::server::Shared;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::CONTENT_LENGTH;
use hyper::Request;
use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// A request as a handler gets it.
pub(super) type Req = Request<Incoming>;

/// How long the shards have to answer a listing, disconnect or unsubscribe
/// (each answers within one loop turn; only a stopped shard is later).
const SHARD_ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// What every request's handler may use.
pub(super) struct Ctx {
    pub shared: Arc<Shared>,
    pub keys: Keys,
    pub limiter: RefCell<RateLimiter>,
    pub max_connections: usize,
    pub registry: prometheus_client::registry::Registry,
    pub rss: RssReader,
    /// The listener's address (the node's name without a backplane or
    /// `node_id`).
    pub bound: Option<SocketAddr>,
}

impl Ctx {
    /// The context for `shared`'s listener bound at `bound`.
    pub fn new(shared: Arc<Shared>, bound: Option<SocketAddr>) -> Ctx {
        let cfg = &shared.config;
        let loopback = bound.is_some_and(|a| a.ip().is_loopback());
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(super::collector::ShardCollector::new(
            shared.clone(),
        )));
        Ctx {
            keys: Keys::new(cfg.api_key.as_deref(), loopback),
            limiter: RefCell::new(RateLimiter::new(cfg.http_rate_limit)),
            max_connections: cfg.http_max_connections,
            registry,
            rss: RssReader::new(),
            bound,
            shared,
        }
    }

    /// This node's name: its cluster id, else `node_id`, else the
    /// listener's address.
    pub fn node(&self) -> String {
        if let Some(c) = self.shared.cluster() {
            return c.node_id.clone();
        }
        if let Some(id) = &self.shared.config.node_id {
            return id.clone();
        }
        self.bound.map(|a| a.to_string()).unwrap_or_default()
    }

    /// Sends every shard the request `make` builds and waits for all the
    /// answers (503 if one is not in within [`SHARD_ANSWER_TIMEOUT`]).
    pub async fn ask_shards<T: Send + 'static>(
        &self,
        make: impl Fn(Reply<T>) -> Control,
    ) -> Result<Vec<T>, ApiError> {
        let mailboxes = &self.shared.router.mailboxes;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for m in mailboxes.iter() {
            let tx = tx.clone();
            m.push_control(make(Box::new(move |t| {
                let _ = tx.send(t);
            })));
        }
        drop(tx);
        let mut answers = Vec::with_capacity(mailboxes.len());
        let deadline = tokio::time::sleep(SHARD_ANSWER_TIMEOUT);
        tokio::pin!(deadline);
        while answers.len() < mailboxes.len() {
            tokio::select! {
                a = rx.recv() => match a {
                    Some(a) => answers.push(a),
                    None => break,
                },
                _ = &mut deadline => break,
            }
        }
        if answers.len() < mailboxes.len() {
            return Err(ApiError::new(
                ErrorCode::Unavailable,
                "a shard did not answer in time (the server may be stopping)",
            ));
        }
        Ok(answers)
    }
}

/// Body bytes read and dropped past the limit before a 413, so the
/// client is done sending when it gets the answer (a close with its data
/// unread would reset the connection under the answer).
const DRAIN_PAST_LIMIT: usize = 64 * 1024;

/// Reads a request's JSON body: at most `max_frame_bytes` of it (413),
/// within [`BODY_TIMEOUT`] (408), valid JSON (400 `invalid_json`).
pub(super) async fn read_json(ctx: &Ctx, req: Req) -> Result<serde_json::Value, ApiError> {
    let max = ctx.shared.config.max_frame_bytes;
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_large = || {
        ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("the body is over the server's max_frame_bytes ({max} bytes)"),
        )
    };
    let timed_out = || ApiError::new(ErrorCode::RequestTimeout, "the body did not arrive in time");
    let mut body = req.into_body();
    if declared.is_some_and(|n| n > max as u64) {
        drain(&mut body, DRAIN_PAST_LIMIT + max).await;
        return Err(too_large());
    }
    let read = tokio::time::timeout(BODY_TIMEOUT, Limited::new(&mut body, max).collect()).await;
    let bytes = match read {
        Err(_) => return Err(timed_out()),
        Ok(Ok(c)) => c.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            drain(&mut body, DRAIN_PAST_LIMIT).await;
            return Err(too_large());
        }
        Ok(Err(e)) => {
            return Err(ApiError::new(
                ErrorCode::InvalidJson,
                format!("the body could not be read: {e}"),
            ))
        }
    };
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidJson,
            format!("the body is not valid JSON: {e}"),
        )
    })
}

/// Reads and drops up to `most` bytes of `body` (within the body deadline).
async fn drain(body: &mut Incoming, most: usize) {
    let _ = tokio::time::timeout(BODY_TIMEOUT, async {
        let mut seen = 0;
        while seen <= most {
            match body.frame().await {
                Some(Ok(f)) => seen += f.data_ref().map_or(0, |d| d.len()),
                _ => break,
            }
        }
    })
    .await;
}

/// 200 with `v`.
pub(super) fn ok(v: serde_json::Value) -> Result<Answer, ApiError> {
    Ok(reply::json(&v))
}
