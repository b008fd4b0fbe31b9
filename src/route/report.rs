//! What `get_stats` reports: the server's figures, summed over shards and
//! read from the process, written as one `server_stats` frame.

use super::Router;
use crate::protocol::stats::{self, StatsReport};
use crate::protocol::{ErrorCode, JsonValue, RequestKind};
use crate::session::grant::TokenRefusal;
use crate::session::tls::HandshakeFailure;

/// Writes `server_stats` for shard `shard`'s client: totals over all
/// shards (and the cluster, with one), the process's RSS, `now`.
pub(crate) fn write_stats(
    router: &Router,
    rss: &RssReader,
    per_shard: &mut Vec<u64>,
    out: &mut Vec<u8>,
    id: Option<&JsonValue<'_, '_>>,
    now: &str,
    now_ms: u64,
) {
    let t = router.totals(per_shard);
    let by_type: [(&str, u64); RequestKind::COUNT] =
        std::array::from_fn(|i| (RequestKind::ALL[i].label(), t.messages[i]));
    let by_code: [(&str, u64); ErrorCode::COUNT] =
        std::array::from_fn(|i| (ErrorCode::ALL[i].as_str(), t.errors[i]));
    let tls_failures: [(&str, u64); HandshakeFailure::COUNT] = std::array::from_fn(|i| {
        (
            HandshakeFailure::ALL[i].as_str(),
            t.tls_handshake_failures[i],
        )
    });
    let auth_failures: [(&str, u64); TokenRefusal::COUNT] =
        std::array::from_fn(|i| (TokenRefusal::ALL[i].as_str(), t.auth_failures[i]));
    let node = &router.node;
    let report = StatsReport {
        connected_clients: t.connected,
        uptime_seconds: now_ms.saturating_sub(node.start_unix_ms) / 1000,
        total_messages: t.total_messages(),
        server_start_time: &node.start_time,
        current_time: now,
        shards: router.shards() as u64,
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
        io_backend: node.io_backend,
        tls_handshake_failures: &tls_failures,
        auth_failures: &auth_failures,
        channels: t.channels,
        subscriptions: t.subscriptions,
        publishes: t.messages_of(RequestKind::Publish),
        channel_deliveries: t.channel_deliveries,
        compression: t.compression,
        history: router
            .history
            .is_some()
            .then(|| router.history_figures(now_ms)),
        cluster: router.cluster.as_ref().map(|c| {
            let f = c.figures();
            stats::ClusterReport {
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
    stats::write_server_stats(out, id, &report);
}

/// Reads the resident set size from an open `/proc/self/statm` with one
/// `pread` into a stack buffer (no allocation, so `get_stats` stays free of
/// heap traffic).
#[derive(Debug)]
pub struct RssReader {
    statm: Option<std::fs::File>,
    page: u64,
}

impl Default for RssReader {
    fn default() -> Self {
        Self::new()
    }
}

impl RssReader {
    /// Opens `/proc/self/statm` (RSS reads as 0 where it is missing).
    pub fn new() -> Self {
        RssReader {
            statm: std::fs::File::open("/proc/self/statm").ok(),
            page: page_size(),
        }
    }

    /// Resident set size in bytes.
    pub fn rss_bytes(&self) -> u64 {
        use std::os::unix::fs::FileExt;
        let Some(f) = &self.statm else { return 0 };
        let mut buf = [0u8; 128];
        let Ok(n) = f.read_at(&mut buf, 0) else {
            return 0;
        };
        // "size resident shared ...": the second field, in pages.
        let mut fields = buf[..n].split(|b| *b == b' ');
        fields.next();
        let pages = fields
            .next()
            .and_then(|f| std::str::from_utf8(f).ok())
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0);
        pages * self.page
    }
}

fn page_size() -> u64 {
    crate::io::sys::page_size()
}
