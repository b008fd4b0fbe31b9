//! What a scrape reads: every shard's counters (and the backplane's),
//! encoded at scrape time by a prometheus-client [`Collector`] (see the
//! parent module's doc for why a collector rather than metric objects).

use super::super::stats::{DurationHistogram, RssReader, ShardCounters, DURATION_BOUNDS};
use super::super::Shared;
use crate::protocol::{ErrorCode, RequestKind};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use std::sync::Arc;

/// Reads every shard's counters at scrape time and encodes them.
pub(super) struct ShardCollector {
    shared: Arc<Shared>,
    rss: RssReader,
    /// "0", "1", … (label values, made once).
    shard_names: Vec<String>,
}

impl std::fmt::Debug for ShardCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardCollector")
            .field("shards", &self.shard_names.len())
            .finish()
    }
}

impl ShardCollector {
    pub(super) fn new(shared: Arc<Shared>) -> ShardCollector {
        let shard_names = (0..shared.shards).map(|i| i.to_string()).collect();
        ShardCollector {
            shared,
            rss: RssReader::new(),
            shard_names,
        }
    }

    /// One gauge without labels.
    fn gauge<N: prometheus_client::encoding::EncodeGaugeValue>(
        enc: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        v: N,
    ) -> std::fmt::Result {
        ConstGauge::new(v).encode(enc.encode_descriptor(name, help, None, MetricType::Gauge)?)
    }

    /// One counter without labels (`name` without `_total`).
    fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
        ConstCounter::new(v).encode(enc.encode_descriptor(name, help, None, MetricType::Counter)?)
    }

    /// One series per shard, labelled `shard`. `name` of a counter is
    /// given without `_total`, which the encoder appends.
    fn per_shard(
        &self,
        enc: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        ty: MetricType,
        value: impl Fn(&ShardCounters) -> u64,
    ) -> std::fmt::Result {
        let mut m = enc.encode_descriptor(name, help, None, ty)?;
        for (c, shard) in self.shared.router.counters.iter().zip(&self.shard_names) {
            let labels = [("shard", shard.as_str())];
            let fam = m.encode_family(&labels)?;
            let v = value(c);
            match ty {
                MetricType::Counter => ConstCounter::new(v).encode(fam)?,
                _ => ConstGauge::new(v).encode(fam)?,
            }
        }
        Ok(())
    }

    /// One counter per shard and second label (`type`, `code`), for every
    /// value of that label (zeros included, so the series exist from start).
    fn per_shard_by(
        &self,
        enc: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        label: &str,
        values: &[&str],
        read: impl Fn(&ShardCounters, usize) -> u64,
    ) -> std::fmt::Result {
        self.per_shard_by_typed(enc, name, help, MetricType::Counter, label, values, read)
    }

    /// [`Self::per_shard_by`] for a metric of any type (a gauge).
    #[allow(clippy::too_many_arguments)]
    fn per_shard_by_typed(
        &self,
        enc: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        kind: MetricType,
        label: &str,
        values: &[&str],
        read: impl Fn(&ShardCounters, usize) -> u64,
    ) -> std::fmt::Result {
        let mut m = enc.encode_descriptor(name, help, None, kind)?;
        for (c, shard) in self.shared.router.counters.iter().zip(&self.shard_names) {
            for (i, v) in values.iter().enumerate() {
                let labels = [("shard", shard.as_str()), (label, *v)];
                let fam = m.encode_family(&labels)?;
                match kind {
                    MetricType::Counter => ConstCounter::new(read(c, i)).encode(fam)?,
                    _ => ConstGauge::new(read(c, i)).encode(fam)?,
                }
            }
        }
        Ok(())
    }
}

impl Collector for ShardCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        use std::sync::atomic::Ordering::Relaxed;
        use MetricType::{Counter, Gauge};
        let shared = &*self.shared;
        {
            let mut m = enc.encode_descriptor(
                "ringcast_build_info",
                "Always 1; the labels name the running build and its I/O backend.",
                None,
                Gauge,
            )?;
            let labels = [
                ("version", env!("CARGO_PKG_VERSION")),
                ("io_backend", self.shared.io_backend.as_str()),
            ];
            ConstGauge::new(1i64).encode(m.encode_family(&labels)?)?;
        }
        let now_ms = crate::protocol::time::unix_ms_now();
        Self::gauge(
            &mut enc,
            "ringcast_start_time_seconds",
            "When the server started, in seconds since the Unix epoch.",
            shared.router.node.start_unix_ms as f64 / 1000.0,
        )?;
        Self::gauge(
            &mut enc,
            "ringcast_uptime_seconds",
            "Seconds since the server started.",
            now_ms.saturating_sub(shared.router.node.start_unix_ms) as f64 / 1000.0,
        )?;
        Self::gauge(
            &mut enc,
            "ringcast_shards",
            "Shards (event-loop threads, each with its own io_uring).",
            shared.shards as u64,
        )?;
        Self::gauge(
            &mut enc,
            "ringcast_failed_shards",
            "Shards that stopped on an I/O error (0 when healthy; /healthz answers 503 otherwise).",
            shared.failed_shards.load(Relaxed) as u64,
        )?;
        Self::gauge(
            &mut enc,
            "ringcast_resident_memory_bytes",
            "Resident set size of the server process.",
            self.rss.rss_bytes(),
        )?;
        self.per_shard(
            &mut enc,
            "ringcast_connections",
            "Clients connected now (established: accepted, authenticated where required, not refused).",
            Gauge,
            |c| c.connected.load(Relaxed),
        )?;
        self.per_shard(
            &mut enc,
            "ringcast_connections_accepted",
            "Connections accepted since start (refused ones included).",
            Counter,
            |c| c.total_connections.load(Relaxed),
        )?;
        let kinds = RequestKind::ALL.map(RequestKind::label);
        self.per_shard_by(
            &mut enc,
            "ringcast_messages",
            "Requests handled, by request type (every custom type counts as custom).",
            "type",
            &kinds,
            |c, i| c.messages[i].load(Relaxed),
        )?;
        self.per_shard(
            &mut enc,
            "ringcast_messages_per_second",
            "Requests handled in the last whole second.",
            Gauge,
            |c| c.messages_last_second.load(Relaxed),
        )?;
        self.per_shard(
            &mut enc,
            "ringcast_received_bytes",
            "Bytes read from client sockets.",
            Counter,
            |c| c.bytes_received.load(Relaxed),
        )?;
        self.per_shard(
            &mut enc,
            "ringcast_sent_bytes",
            "Bytes written to client sockets.",
            Counter,
            |c| c.bytes_sent.load(Relaxed),
        )?;
        self.per_shard(
            &mut enc,
            "ringcast_broadcast_deliveries",
            "Broadcast frames queued to recipients on this shard.",
            Counter,
            |c| c.broadcasts_delivered.load(Relaxed),
        )?;
        self.per_shard(
            &mut enc,
            "ringcast_channel_deliveries",
            "channel_message frames queued to subscribers on this shard.",
            Counter,
            |c| c.channel_deliveries.load(Relaxed),
        )?;
        self.per_shard(
            &mut enc,
            "ringcast_channels",
            "Channels with at least one subscriber on this shard.",
            Gauge,
            |c| c.channels.load(Relaxed),
        )?;
        self.per_shard(
            &mut enc,
            "ringcast_subscriptions",
            "Channel subscriptions held by this shard's connections.",
            Gauge,
            |c| c.subscriptions.load(Relaxed),
        )?;
        self.per_shard(
            &mut enc,
            "ringcast_slow_consumer_disconnects",
            "Clients cut for falling too far behind reading broadcasts.",
            Counter,
            |c| c.slow_consumer_disconnects.load(Relaxed),
        )?;
        self.per_shard(
            &mut enc,
            "ringcast_partial_frame_bytes",
            "Buffer capacity held by partly received frames (per shard at most max_partial_bytes + 4 KiB per connection).",
            Gauge,
            |c| c.partial_frame_bytes.load(Relaxed),
        )?;
        if shared.router.history.is_some() {
            let h = shared
                .router
                .history_figures(crate::protocol::time::unix_ms_now());
            Self::gauge(
                &mut enc,
                "ringcast_history_channels",
                "Channels with a history log.",
                h.channels,
            )?;
            Self::gauge(
                &mut enc,
                "ringcast_history_publications",
                "Publications kept in channel history.",
                h.publications,
            )?;
            Self::gauge(
                &mut enc,
                "ringcast_history_bytes",
                "Bytes channel history holds (frames and bookkeeping; at most max_history_bytes).",
                h.bytes,
            )?;
            Self::counter(
                &mut enc,
                "ringcast_history_evicted",
                "Publications dropped from history by size, TTL or max_history_bytes.",
                h.evicted,
            )?;
        }
        if let Some(c) = shared.cluster() {
            let f = c.figures();
            Self::gauge(
                &mut enc,
                "ringcast_backplane_up",
                "1 while the cluster backplane (Redis) is reachable, 0 while reconnecting.",
                u64::from(c.is_up()),
            )?;
            Self::gauge(
                &mut enc,
                "ringcast_backplane_buffered_bytes",
                "Bytes of broadcasts and publishes held for the backplane, not yet written.",
                f.buffered_bytes,
            )?;
            Self::gauge(
                &mut enc,
                "ringcast_backplane_degraded",
                "1 while a backplane thread is down, waiting to be restarted.",
                u64::from(!c.threads_alive()),
            )?;
            Self::gauge(
                &mut enc,
                "ringcast_cluster_nodes",
                "Nodes alive (heartbeats not expired), this one included.",
                f.nodes,
            )?;
            for (name, help, v) in [
                (
                    "ringcast_backplane_written",
                    "Entries this node wrote to the stream.",
                    &c.written,
                ),
                (
                    "ringcast_backplane_received",
                    "Other nodes' entries delivered on this node.",
                    &c.received,
                ),
                (
                    "ringcast_backplane_refused",
                    "Messages refused with backplane_unavailable (buffer full).",
                    &c.refused,
                ),
                (
                    "ringcast_backplane_reconnects",
                    "Connections (re)established to Redis by the writer.",
                    &c.reconnects,
                ),
                (
                    "ringcast_backplane_bad_entries",
                    "Malformed stream entries skipped (never delivered to a client).",
                    &c.bad_entries,
                ),
                (
                    "ringcast_backplane_restarts",
                    "Backplane threads restarted after they died.",
                    &c.restarts,
                ),
                (
                    "ringcast_backplane_compressions",
                    "Compressions run for other nodes' messages (also in get_stats compression.compressions).",
                    &shared.router.remote_compressions,
                ),
            ] {
                Self::counter(&mut enc, name, help, v.load(Relaxed))?;
            }
        }
        let codes = ErrorCode::ALL.map(ErrorCode::as_str);
        self.per_shard_by(
            &mut enc,
            "ringcast_protocol_errors",
            "Error frames sent to clients, by error code.",
            "code",
            &codes,
            |c, i| c.errors[i].load(Relaxed),
        )?;
        let reasons = crate::session::tls::HandshakeFailure::ALL.map(|r| r.as_str());
        self.per_shard_by(
            &mut enc,
            "ringcast_tls_handshake_failures",
            "TLS handshakes that failed, by reason: malformed (not TLS: plain text or garbage \
             on the TLS port), incompatible (no common version or cipher), client_certificate \
             (missing or not verified), timeout, eof (closed mid-handshake), busy (over \
             tls_max_handshakes), other.",
            "reason",
            &reasons,
            |c, i| c.tls_handshake_failures[i].load(Relaxed),
        )?;
        let reasons = crate::session::grant::TokenRefusal::ALL.map(|r| r.as_str());
        self.per_shard_by(
            &mut enc,
            "ringcast_auth_failures",
            "Refused auth and refresh tokens, by the check that failed (docs/PROTOCOL.md, \
             Tokens): missing, static_token, too_large, malformed, alg_none, algorithm, \
             signature, expired, not_yet_valid, audience, issuer, claims, other_user, not_token.",
            "reason",
            &reasons,
            |c, i| c.auth_failures[i].load(Relaxed),
        )?;
        let codecs = crate::protocol::codec::Codec::ALL.map(|c| c.as_str());
        self.per_shard_by_typed(
            &mut enc,
            "ringcast_compressed_connections",
            "Connections that negotiated a compression codec in hello, by codec.",
            MetricType::Gauge,
            "codec",
            &codecs,
            |c, i| c.compression.connections[i].load(Relaxed),
        )?;
        let directions = ["in", "out"];
        self.per_shard_by(
            &mut enc,
            "ringcast_compressed_frames",
            "Compressed frames received (in) and queued to clients (out; a shared broadcast \
             counts once per recipient).",
            "direction",
            &directions,
            |c, i| [&c.compression.frames_in, &c.compression.frames_out][i].load(Relaxed),
        )?;
        self.per_shard_by(
            &mut enc,
            "ringcast_compressed_payload_bytes",
            "Payload bytes of compressed frames as they crossed the wire, by direction.",
            "direction",
            &directions,
            |c, i| [&c.compression.bytes_in_wire, &c.compression.bytes_out_wire][i].load(Relaxed),
        )?;
        self.per_shard_by(
            &mut enc,
            "ringcast_uncompressed_payload_bytes",
            "Payload bytes of compressed frames before compression (out) or after \
             decompression (in); divided by ringcast_compressed_payload_bytes, the ratio.",
            "direction",
            &directions,
            |c, i| {
                [
                    &c.compression.bytes_in_plain,
                    &c.compression.bytes_out_plain,
                ][i]
                    .load(Relaxed)
            },
        )?;
        self.per_shard(
            &mut enc,
            "ringcast_compressions",
            "Compression operations run (a broadcast shared by any number of clients of one \
             codec is one).",
            Counter,
            |c| c.compression.compressions.load(Relaxed),
        )?;
        self.per_shard_by(
            &mut enc,
            "ringcast_wakeups",
            "Other shards woken to drain their mailboxes, by path (msg_ring: an io_uring \
             MSG_RING; eventfd: an eventfd write, epoll's path and io_uring's fallback).",
            "path",
            &["msg_ring", "eventfd"],
            |c, i| c.wakeups[i].load(Relaxed),
        )?;
        let mut m = enc.encode_descriptor(
            "ringcast_request_duration_seconds",
            "Time a shard spends handling requests, per request: from starting on the receive \
             chunk that completes them (framing, JSON parse, dispatch) until their responses are in \
             the output buffer. A chunk of n requests that took t counts n requests of t/n each: \
             exact for clients that await each response, the chunk's average for pipelined ones. \
             _sum and _count are exact. Excludes time in socket buffers and waiting for the event \
             loop.",
            None,
            MetricType::Histogram,
        )?;
        let mut buckets = [(0.0, 0); DURATION_BOUNDS + 1];
        for (c, shard) in shared.router.counters.iter().zip(&self.shard_names) {
            let (counts, sum_ns) = c.request_duration.read();
            for (i, (b, n)) in buckets.iter_mut().zip(counts).enumerate() {
                let bound = if i < DURATION_BOUNDS {
                    DurationHistogram::upper_bound_seconds(i)
                } else {
                    f64::INFINITY
                };
                *b = (bound, n);
            }
            // The count is the buckets' sum, so `+Inf` and `_count` agree.
            let count = counts.iter().sum();
            let labels = [("shard", shard.as_str())];
            m.encode_family(&labels)?.encode_histogram::<NoLabelSet>(
                sum_ns as f64 / 1e9,
                count,
                &buckets,
                None,
            )?;
        }
        Ok(())
    }
}
