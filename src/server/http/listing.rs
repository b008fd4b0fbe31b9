//! The read endpoints: `GET /v1/stats`, `/v1/connections`,
//! `/v1/channels`, `/v1/cluster`.
//!
//! Connections and channels are collected from every shard through its
//! mailbox (a [`Control::Snapshot`], answered between two of the shard's
//! loop turns: see src/route/control.rs), merged, filtered, sorted and
//! paged here on the listener's thread. Stats and cluster read the
//! counters the shards and the backplane already keep.

use super::ctx::{ok, Ctx, Req};
use super::reply::{Answer, ApiError, ErrorCode};
use crate::protocol::TimestampCache;
use crate::route::control::{ConnSnapshot, Control, ShardSnapshot, CLOSED_KEEP};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;

/// Connections or channels a page holds when `limit` is not given.
pub const DEFAULT_LIMIT: usize = 256;
/// The most a page holds (a larger `limit` is cut to it): a page of
/// connections with their subscriptions stays well under a megabyte.
pub const MAX_LIMIT: usize = 1024;

/// `GET /v1/stats`: the `server_stats` object `get_stats` answers.
pub(super) async fn stats(ctx: &Ctx, _req: Req) -> Result<Answer, ApiError> {
    let now_ms = crate::protocol::time::unix_ms_now();
    let mut ts = TimestampCache::new();
    let now = ts.format(now_ms).to_string();
    let mut frame = Vec::with_capacity(4096);
    crate::route::report::write_stats(
        &ctx.shared.router,
        &ctx.rss,
        &mut Vec::new(),
        &mut frame,
        None,
        &now,
        now_ms,
    );
    let body = frame.split_off(crate::protocol::HEADER_LEN);
    Ok(super::reply::with_type(
        hyper::StatusCode::OK,
        "application/json",
        body.into(),
    ))
}

/// A query string's parameters (the last value of a repeated one wins).
pub(super) fn query(req: &Req) -> Result<HashMap<String, String>, ApiError> {
    let mut q = HashMap::new();
    for pair in req.uri().query().unwrap_or("").split('&') {
        if pair.is_empty() {
            continue;
        }
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| {
            percent_decode(s).ok_or_else(|| {
                ApiError::new(ErrorCode::InvalidQuery, format!("bad escape in {pair:?}"))
            })
        };
        q.insert(decode(k)?, decode(v)?);
    }
    Ok(q)
}

/// Decodes `%XX` escapes and `+` (a space), as forms and browsers write
/// query strings.
fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Paging and order shared by the listings.
struct Page {
    offset: usize,
    limit: usize,
    desc: bool,
}

/// Reads `offset`, `limit` and `order` (`asc`/`desc`; `default_desc`
/// when absent), refusing what is not one of them.
fn page(q: &HashMap<String, String>, default_desc: bool) -> Result<Page, ApiError> {
    let num = |name: &str, default: usize| -> Result<usize, ApiError> {
        match q.get(name) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| {
                ApiError::new(
                    ErrorCode::InvalidQuery,
                    format!("{name} must be a non-negative integer, got {v:?}"),
                )
            }),
        }
    };
    let desc = match q.get("order").map(String::as_str) {
        None => default_desc,
        Some("asc") => false,
        Some("desc") => true,
        Some(o) => return Err(bad_choice("order", o, &["asc", "desc"])),
    };
    Ok(Page {
        offset: num("offset", 0)?,
        limit: num("limit", DEFAULT_LIMIT)?.min(MAX_LIMIT),
        desc,
    })
}

fn bad_choice(name: &str, got: &str, choices: &[&str]) -> ApiError {
    ApiError::new(
        ErrorCode::InvalidQuery,
        format!("{name} must be one of {}, got {got:?}", choices.join(", ")),
    )
}

/// Every shard's snapshot.
async fn snapshots(ctx: &Ctx) -> Result<Vec<ShardSnapshot>, ApiError> {
    ctx.ask_shards(Control::Snapshot).await
}

/// The sort keys of `/v1/connections`.
const CONN_SORTS: [&str; 8] = [
    "cid",
    "idle",
    "pending",
    "msgs_in",
    "msgs_out",
    "bytes_out",
    "subscriptions",
    "uptime",
];

/// `GET /v1/connections` (see docs/OPERATIONS.md for every parameter).
pub(super) async fn connections(ctx: &Ctx, req: Req) -> Result<Answer, ApiError> {
    let q = query(&req)?;
    let sort = q.get("sort").map_or("cid", String::as_str);
    if !CONN_SORTS.contains(&sort) {
        return Err(bad_choice("sort", sort, &CONN_SORTS));
    }
    let page = page(&q, sort != "cid")?;
    let state = q.get("state").map_or("open", String::as_str);
    let (open, closed) = match state {
        "open" => (true, false),
        "closed" => (false, true),
        "all" => (true, true),
        s => return Err(bad_choice("state", s, &["open", "closed", "all"])),
    };
    let subs = match q.get("subs").map(String::as_str) {
        None | Some("0") | Some("false") => false,
        Some("1") | Some("true") => true,
        Some(s) => return Err(bad_choice("subs", s, &["0", "1"])),
    };
    let channel = q.get("channel");
    let user = q.get("user");
    let client_id = q.get("client_id");
    let shards = snapshots(ctx).await?;
    let now_ms = shards.iter().map(|s| s.now_ms).max().unwrap_or(0);
    let mut all: Vec<ConnSnapshot> = Vec::new();
    for s in &shards {
        if open {
            all.extend(s.open.iter().cloned());
        }
    }
    if closed {
        // The newest CLOSED_KEEP over all shards.
        let mut gone: Vec<ConnSnapshot> = shards
            .iter()
            .flat_map(|s| s.closed.iter().cloned())
            .collect();
        gone.sort_by_key(|c| std::cmp::Reverse(c.closed_at_ms));
        gone.truncate(CLOSED_KEEP);
        all.extend(gone);
    }
    all.retain(|c| {
        channel.is_none_or(|ch| c.subscriptions.iter().any(|s| **s == **ch))
            && user.is_none_or(|u| c.user.as_deref() == Some(u.as_str()))
            && client_id.is_none_or(|id| *c.client_id == **id)
    });
    let end = |c: &ConnSnapshot| c.closed_at_ms.unwrap_or(now_ms);
    let key = |c: &ConnSnapshot| -> u64 {
        match sort {
            "idle" => end(c).saturating_sub(c.last_activity_ms),
            "pending" => c.pending_bytes,
            "msgs_in" => c.msgs_in,
            "msgs_out" => c.msgs_out,
            "bytes_out" => c.bytes_out,
            "subscriptions" => c.subscriptions.len() as u64,
            "uptime" => end(c).saturating_sub(c.connected_at_ms),
            _ => c.connected_at_ms,
        }
    };
    all.sort_by(|a, b| {
        let o = key(a)
            .cmp(&key(b))
            .then_with(|| a.connected_at_ms.cmp(&b.connected_at_ms))
            .then_with(|| a.client_id.cmp(&b.client_id));
        if page.desc {
            o.reverse()
        } else {
            o
        }
    });
    let total = all.len();
    let mut ts = TimestampCache::new();
    let list: Vec<Value> = all
        .iter()
        .skip(page.offset)
        .take(page.limit)
        .map(|c| conn_json(c, now_ms, subs, &mut ts))
        .collect();
    ok(json!({
        "node": ctx.node(),
        "total": total,
        "offset": page.offset,
        "limit": page.limit,
        "connections": list,
    }))
}

/// One connection's JSON (see docs/OPERATIONS.md).
fn conn_json(c: &ConnSnapshot, now_ms: u64, subs: bool, ts: &mut TimestampCache) -> Value {
    let end = c.closed_at_ms.unwrap_or(now_ms);
    let mut v = json!({
        "client_id": &*c.client_id,
        "addr": &*c.addr,
        "user": c.user.as_deref(),
        "shard": c.shard,
        "tls": c.tls,
        "codec": c.codec,
        "connected_at": ts.format(c.connected_at_ms),
        "last_activity": ts.format(c.last_activity_ms),
        "idle_ms": end.saturating_sub(c.last_activity_ms),
        "subscriptions": if subs {
            json!(c.subscriptions.iter().map(|s| &**s).collect::<Vec<_>>())
        } else {
            json!(c.subscriptions.len())
        },
        "msgs_in": c.msgs_in,
        "msgs_out": c.msgs_out,
        "bytes_in": c.bytes_in,
        "bytes_out": c.bytes_out,
        "pending_bytes": c.pending_bytes,
    });
    if let (Some(at), Some(reason)) = (c.closed_at_ms, c.reason) {
        v["closed_at"] = json!(ts.format(at));
        v["reason"] = json!(reason);
    }
    v
}

/// Whether `name` matches `pattern`, where `*` stands for any run of
/// characters (none included) and every other character for itself.
pub(super) fn glob(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // Iterative match with one backtrack point (the last `*`).
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && p[pi] != '*' && p[pi] == n[ni] {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// One channel summed over the shards.
#[derive(Default)]
struct ChannelSum {
    subscribers: u64,
    publishes: u64,
    deliveries: u64,
}

/// `GET /v1/channels` (see docs/OPERATIONS.md).
pub(super) async fn channels(ctx: &Ctx, req: Req) -> Result<Answer, ApiError> {
    let q = query(&req)?;
    let sort = q.get("sort").map_or("subscribers", String::as_str);
    let sorts = ["subscribers", "publishes", "deliveries"];
    if !sorts.contains(&sort) {
        return Err(bad_choice("sort", sort, &sorts));
    }
    let page = page(&q, true)?;
    let pattern = q.get("pattern");
    let mut sums: HashMap<Arc<str>, ChannelSum> = HashMap::new();
    for s in snapshots(ctx).await? {
        for c in s.channels {
            if pattern.is_some_and(|p| !glob(p, &c.channel)) {
                continue;
            }
            let sum = sums.entry(c.channel).or_default();
            sum.subscribers += c.subscribers;
            // Each shard counts the publications it delivered since the
            // channel had subscribers there: the longest-held count is
            // the node's.
            sum.publishes = sum.publishes.max(c.publishes);
            sum.deliveries += c.deliveries;
        }
    }
    let mut all: Vec<(Arc<str>, ChannelSum)> = sums.into_iter().collect();
    let key = |s: &ChannelSum| match sort {
        "publishes" => s.publishes,
        "deliveries" => s.deliveries,
        _ => s.subscribers,
    };
    all.sort_by(|a, b| {
        let o = key(&a.1).cmp(&key(&b.1));
        let o = if page.desc { o.reverse() } else { o };
        o.then_with(|| a.0.cmp(&b.0))
    });
    let total = all.len();
    let history = ctx.shared.router.history.as_ref().map(crate::sync::lock);
    let list: Vec<Value> = all
        .iter()
        .skip(page.offset)
        .take(page.limit)
        .map(|(name, s)| {
            let mut v = json!({
                "channel": &**name,
                "subscribers": s.subscribers,
                "publishes": s.publishes,
                "deliveries": s.deliveries,
            });
            if let Some(p) = history.as_ref().and_then(|h| h.peek(name)) {
                v["offset"] = json!(p.offset);
                v["epoch"] = json!(&*p.epoch);
            }
            v
        })
        .collect();
    drop(history);
    ok(json!({
        "node": ctx.node(),
        "total": total,
        "offset": page.offset,
        "limit": page.limit,
        "channels": list,
    }))
}

/// `GET /v1/cluster`: this node, every node seen at the last heartbeat
/// read, and the backplane's state.
pub(super) async fn cluster(ctx: &Ctx, _req: Req) -> Result<Answer, ApiError> {
    let router = &ctx.shared.router;
    let node = ctx.node();
    let here = json!({
        "id": &node,
        "clients": router.connected(),
        "heartbeat_age_ms": 0,
        "self": true,
    });
    let Some(c) = ctx.shared.cluster() else {
        return ok(json!({
            "node": node,
            "nodes": [here],
            "backplane": "none",
            "buffered_bytes": 0,
            "bad_entries": 0,
        }));
    };
    let f = c.figures();
    let now_ms = crate::protocol::time::unix_ms_now();
    let mut nodes = vec![here];
    let peers = c.peers();
    nodes.extend(peers.iter().map(|p| {
        json!({
            "id": &p.id,
            "clients": p.clients,
            "heartbeat_age_ms": p.heartbeat_unix_ms.map(|at| now_ms.saturating_sub(at)),
            "self": false,
        })
    }));
    ok(json!({
        "node": node,
        "nodes": nodes,
        "backplane": f.backplane,
        "buffered_bytes": f.buffered_bytes,
        "bad_entries": f.bad_entries,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("orders.*", "orders.eu"));
        assert!(glob("orders.*", "orders."));
        assert!(!glob("orders.*", "order"));
        assert!(glob("*", ""));
        assert!(glob("*.eu", "orders.eu"));
        assert!(glob("o*s.*u", "orders.eu"));
        assert!(!glob("o*s.*x", "orders.eu"));
        assert!(glob("news", "news"));
        assert!(!glob("news", "news2"));
    }

    #[test]
    fn query_strings_decode() {
        assert_eq!(percent_decode("a%2Eb+c").as_deref(), Some("a.b c"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%2"), None);
    }
}
