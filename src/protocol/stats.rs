//! `get_stats` → `server_stats`: the figures a server reports, as it
//! writes them (borrowed, allocation-free) and as a client reads them.

use super::json::{write_response, JsonValue, ObjectWriter};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The figures in a `server_stats` response, borrowed from the caller so
/// that writing one allocates nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct StatsReport<'a> {
    /// Clients connected now, over all shards.
    pub connected_clients: u64,
    /// Whole seconds since the server started.
    pub uptime_seconds: u64,
    /// Requests handled since start.
    pub total_messages: u64,
    /// When the server started (timestamp format).
    pub server_start_time: &'a str,
    /// Now (timestamp format).
    pub current_time: &'a str,
    /// Number of shards.
    pub shards: u64,
    /// Connections accepted since start.
    pub total_connections: u64,
    /// Requests by type label (ping, echo, …, custom).
    pub messages_by_type: &'a [(&'a str, u64)],
    /// Bytes read from clients.
    pub bytes_received: u64,
    /// Bytes written to clients.
    pub bytes_sent: u64,
    /// `broadcast_message` frames queued to recipients.
    pub broadcasts_delivered: u64,
    /// Clients cut for falling `max_pending_bytes` behind.
    pub slow_consumer_disconnects: u64,
    /// Error frames sent (framing and JSON-level).
    pub protocol_errors: u64,
    /// Error frames by code.
    pub errors_by_code: &'a [(&'a str, u64)],
    /// Resident set size of the server process.
    pub rss_bytes: u64,
    /// Requests handled during the last whole second.
    pub messages_per_second: u64,
    /// Connected clients per shard.
    pub connections_per_shard: &'a [u64],
    /// Buffer (capacity, bytes) held by partially received frames, over
    /// all shards.
    pub partial_frame_bytes: u64,
    /// The I/O backend the shards run on (`io-uring` or `epoll`).
    pub io_backend: &'a str,
    /// Failed TLS handshakes by reason (all zero without TLS).
    pub tls_handshake_failures: &'a [(&'a str, u64)],
    /// Refused `auth` and `refresh` tokens by reason (`session::grant`).
    pub auth_failures: &'a [(&'a str, u64)],
    /// Channels with subscribers, summed over shards.
    pub channels: u64,
    /// Subscriptions held by connected clients.
    pub subscriptions: u64,
    /// `publish` requests handled.
    pub publishes: u64,
    /// `channel_message` frames queued to subscribers.
    pub channel_deliveries: u64,
    /// The cluster, when the server runs with a backplane.
    pub cluster: Option<ClusterReport<'a>>,
    /// Negotiated compression.
    pub compression: CompressionReport,
    /// Channel history, when the server keeps it (`history_size` > 0).
    pub history: Option<HistoryReport>,
}

/// `history` in `server_stats`: what the channel history holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryReport {
    /// Channels with a log.
    pub channels: u64,
    /// Publications kept.
    pub publications: u64,
    /// Bytes they hold (frames plus bookkeeping).
    pub bytes: u64,
    /// Publications dropped by size, TTL or `max_history_bytes`, ever.
    pub evicted: u64,
}

/// `compression` in `server_stats` (see
/// [`CompressionCounters`](crate::server::stats::CompressionCounters)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompressionReport {
    /// Connections per codec, by [`Codec::index`](super::codec::Codec::index).
    pub connections: [u64; super::codec::Codec::COUNT],
    /// Compressed frames received.
    pub frames_in: u64,
    /// Their payload bytes as received.
    pub bytes_in_wire: u64,
    /// Their payload bytes decompressed.
    pub bytes_in_plain: u64,
    /// Compressed frames queued to clients.
    pub frames_out: u64,
    /// Their payload bytes before compression.
    pub bytes_out_plain: u64,
    /// Their payload bytes as sent.
    pub bytes_out_wire: u64,
    /// Compression operations run.
    pub compressions: u64,
}

/// `plain / wire` with two decimals as a JSON number (0 before any
/// traffic), written without allocating (get_stats allocates nothing).
fn write_ratio(o: &mut ObjectWriter<'_>, key: &str, plain: u64, wire: u64) {
    let hundredths = match wire {
        0 => 0,
        w => (plain as u128 * 100 / w as u128).min(u64::MAX as u128) as u64,
    };
    let out = o.key(key);
    super::json::write_u64(out, hundredths / 100);
    let frac = hundredths % 100;
    out.extend_from_slice(&[b'.', b'0' + (frac / 10) as u8, b'0' + (frac % 10) as u8]);
}

/// `cluster` in `server_stats`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClusterReport<'a> {
    /// This node's id.
    pub node_id: &'a str,
    /// Nodes alive (heartbeats not expired), this one included.
    pub nodes: u64,
    /// Clients connected over all nodes (the others' from their last
    /// heartbeats).
    pub connected_clients: u64,
    /// `connected`, `reconnecting` or `degraded`.
    pub backplane: &'a str,
    /// Bytes held for the backplane, not yet written to Redis.
    pub buffered_bytes: u64,
    /// Malformed stream entries skipped.
    pub bad_entries: u64,
    /// Backplane threads restarted after they died.
    pub restarts: u64,
}

/// `server_stats`: the seed's five fields first, then ours.
pub fn write_server_stats(out: &mut Vec<u8>, id: Option<&JsonValue<'_, '_>>, s: &StatsReport<'_>) {
    write_response(out, "server_stats", id, |o| {
        o.u64("connected_clients", s.connected_clients);
        o.u64("uptime_seconds", s.uptime_seconds);
        o.u64("total_messages", s.total_messages);
        o.raw_str("server_start_time", s.server_start_time);
        o.raw_str("current_time", s.current_time);
        o.u64("shards", s.shards);
        o.u64("total_connections", s.total_connections);
        write_counts(o.key("messages_by_type"), s.messages_by_type);
        o.u64("bytes_received", s.bytes_received);
        o.u64("bytes_sent", s.bytes_sent);
        o.u64("broadcasts_delivered", s.broadcasts_delivered);
        o.u64("slow_consumer_disconnects", s.slow_consumer_disconnects);
        o.u64("protocol_errors", s.protocol_errors);
        write_counts(o.key("errors_by_code"), s.errors_by_code);
        o.u64("rss_bytes", s.rss_bytes);
        o.u64("messages_per_second", s.messages_per_second);
        let a = o.key("connections_per_shard");
        a.push(b'[');
        for (i, n) in s.connections_per_shard.iter().enumerate() {
            if i > 0 {
                a.push(b',');
            }
            super::json::write_u64(a, *n);
        }
        a.push(b']');
        o.u64("partial_frame_bytes", s.partial_frame_bytes);
        o.raw_str("io_backend", s.io_backend);
        write_counts(o.key("tls_handshake_failures"), s.tls_handshake_failures);
        write_counts(o.key("auth_failures"), s.auth_failures);
        o.u64("channels", s.channels);
        o.u64("subscriptions", s.subscriptions);
        o.u64("publishes", s.publishes);
        o.u64("channel_deliveries", s.channel_deliveries);
        if let Some(c) = &s.cluster {
            let mut w = ObjectWriter::new(o.key("cluster"));
            w.str("node_id", c.node_id);
            w.u64("nodes", c.nodes);
            w.u64("connected_clients", c.connected_clients);
            w.raw_str("backplane", c.backplane);
            w.u64("buffered_bytes", c.buffered_bytes);
            w.u64("backplane_bad_entries", c.bad_entries);
            w.u64("backplane_restarts", c.restarts);
            w.finish();
        }
        if let Some(h) = &s.history {
            let mut w = ObjectWriter::new(o.key("history"));
            w.u64("channels", h.channels);
            w.u64("publications", h.publications);
            w.u64("bytes", h.bytes);
            w.u64("evicted", h.evicted);
            w.finish();
        }
        let c = &s.compression;
        let mut w = ObjectWriter::new(o.key("compression"));
        let mut per = ObjectWriter::new(w.key("connections"));
        for codec in super::codec::Codec::ALL {
            per.u64(codec.as_str(), c.connections[codec.index()]);
        }
        per.finish();
        w.u64("frames_in", c.frames_in);
        w.u64("bytes_in_wire", c.bytes_in_wire);
        w.u64("bytes_in_plain", c.bytes_in_plain);
        w.u64("frames_out", c.frames_out);
        w.u64("bytes_out_plain", c.bytes_out_plain);
        w.u64("bytes_out_wire", c.bytes_out_wire);
        w.u64("compressions", c.compressions);
        write_ratio(&mut w, "ratio_in", c.bytes_in_plain, c.bytes_in_wire);
        write_ratio(&mut w, "ratio_out", c.bytes_out_plain, c.bytes_out_wire);
        w.finish();
    });
}

fn write_counts(out: &mut Vec<u8>, counts: &[(&str, u64)]) {
    let mut o = ObjectWriter::new(out);
    for (k, v) in counts {
        o.u64(k, *v);
    }
    o.finish();
}

/// `server_stats` as a client reads it (serde; not on the server's hot path).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerStats {
    /// Clients connected now.
    pub connected_clients: u64,
    /// Seconds since start.
    pub uptime_seconds: u64,
    /// Requests handled since start.
    pub total_messages: u64,
    /// Start time.
    pub server_start_time: String,
    /// The server's current time.
    pub current_time: String,
    /// Shards (absent from servers that do not report it).
    #[serde(default)]
    pub shards: u64,
    /// Connections accepted since start.
    #[serde(default)]
    pub total_connections: u64,
    /// Requests by type.
    #[serde(default)]
    pub messages_by_type: BTreeMap<String, u64>,
    /// Bytes read from clients.
    #[serde(default)]
    pub bytes_received: u64,
    /// Bytes written to clients.
    #[serde(default)]
    pub bytes_sent: u64,
    /// Broadcast deliveries.
    #[serde(default)]
    pub broadcasts_delivered: u64,
    /// Slow-consumer disconnects.
    #[serde(default)]
    pub slow_consumer_disconnects: u64,
    /// Error frames sent.
    #[serde(default)]
    pub protocol_errors: u64,
    /// Error frames by code.
    #[serde(default)]
    pub errors_by_code: BTreeMap<String, u64>,
    /// Server RSS in bytes.
    #[serde(default)]
    pub rss_bytes: u64,
    /// Requests during the last second.
    #[serde(default)]
    pub messages_per_second: u64,
    /// Connected clients per shard.
    #[serde(default)]
    pub connections_per_shard: Vec<u64>,
    /// Buffer held by partially received frames, in bytes.
    #[serde(default)]
    pub partial_frame_bytes: u64,
    /// The server's I/O backend (`io-uring` or `epoll`; empty from servers
    /// that do not report it).
    #[serde(default)]
    pub io_backend: String,
    /// Failed TLS handshakes by reason (`malformed`, `incompatible`,
    /// `client_certificate`, `timeout`, `eof`, `busy`, `other`).
    #[serde(default)]
    pub tls_handshake_failures: BTreeMap<String, u64>,
    /// Refused tokens by reason (`missing`, `static_token`, `too_large`,
    /// `malformed`, `alg_none`, `algorithm`, `signature`, `expired`,
    /// `not_yet_valid`, `audience`, `issuer`, `claims`, `other_user`,
    /// `not_token`).
    #[serde(default)]
    pub auth_failures: BTreeMap<String, u64>,
    /// Channels with subscribers, summed over shards.
    #[serde(default)]
    pub channels: u64,
    /// Subscriptions held.
    #[serde(default)]
    pub subscriptions: u64,
    /// `publish` requests handled.
    #[serde(default)]
    pub publishes: u64,
    /// Channel message deliveries.
    #[serde(default)]
    pub channel_deliveries: u64,
    /// The cluster (absent without a backplane).
    #[serde(default)]
    pub cluster: Option<ClusterStats>,
    /// Negotiated compression (absent from servers without it).
    #[serde(default)]
    pub compression: Option<CompressionStats>,
    /// Channel history (absent when the server keeps none).
    #[serde(default)]
    pub history: Option<HistoryReport>,
}

/// `compression` in `server_stats`, as a client reads it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompressionStats {
    /// Connections per codec name.
    pub connections: BTreeMap<String, u64>,
    /// Compressed frames received.
    pub frames_in: u64,
    /// Their payload bytes as received.
    pub bytes_in_wire: u64,
    /// Their payload bytes decompressed.
    pub bytes_in_plain: u64,
    /// Compressed frames queued to clients.
    pub frames_out: u64,
    /// Their payload bytes before compression.
    pub bytes_out_plain: u64,
    /// Their payload bytes as sent.
    pub bytes_out_wire: u64,
    /// Compression operations run (one per broadcast and codec, however
    /// many recipients share it).
    pub compressions: u64,
    /// `bytes_in_plain / bytes_in_wire` (0 before any).
    pub ratio_in: f64,
    /// `bytes_out_plain / bytes_out_wire` (0 before any).
    pub ratio_out: f64,
}

/// `cluster` in `server_stats`, as a client reads it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterStats {
    /// This node's id.
    pub node_id: String,
    /// Nodes alive.
    pub nodes: u64,
    /// Clients over all nodes.
    pub connected_clients: u64,
    /// `connected`, `reconnecting` (Redis unreachable) or `degraded` (a
    /// backplane thread is being restarted).
    pub backplane: String,
    /// Bytes waiting to be written to Redis.
    pub buffered_bytes: u64,
    /// Malformed stream entries skipped.
    #[serde(default)]
    pub backplane_bad_entries: u64,
    /// Backplane threads restarted after they died.
    #[serde(default)]
    pub backplane_restarts: u64,
}
