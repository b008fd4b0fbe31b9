//! Latency histograms and the report: text, JSON and the HdrHistogram
//! percentile-distribution (`.hgrm`) format.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::fmt::Write as _;

/// Lowest and highest recordable latency (µs) and significant digits.
pub const HIST_LOW_US: u64 = 1;
/// One minute: anything slower is clamped (and visible as the max).
pub const HIST_HIGH_US: u64 = 60_000_000;
/// Three significant digits, as wrk2 and HdrHistogram's defaults.
pub const HIST_SIGFIG: u8 = 3;

/// A new latency histogram in microseconds.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(HIST_LOW_US, HIST_HIGH_US, HIST_SIGFIG)
        .expect("static histogram bounds are valid")
}

/// Merges per-thread histograms into one.
pub fn merge<'a>(parts: impl IntoIterator<Item = &'a Histogram<u64>>) -> Histogram<u64> {
    let mut h = new_histogram();
    for p in parts {
        // Same bounds everywhere, so adding cannot fail.
        h.add(p).expect("histograms share bounds");
    }
    h
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Latency {
    /// Samples.
    pub count: u64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// 99.99th percentile.
    pub p9999: u64,
    /// Largest sample.
    pub max: u64,
}

impl Latency {
    /// Reads the percentiles off a histogram.
    pub fn from_histogram(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            count: h.len(),
            mean: h.mean(),
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            p9999: h.value_at_quantile(0.9999),
            max: h.max(),
        }
    }
}

/// The machine a result was measured on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// Logical CPUs available.
    pub cores: usize,
    /// `uname -r`.
    pub kernel: String,
    /// CPU model name.
    pub cpu: String,
}

impl Machine {
    /// Reads the current machine.
    pub fn current() -> Machine {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split(':').nth(1))
                    .map(|m| m.trim().to_string())
            })
            .unwrap_or_default();
        Machine {
            cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            kernel,
            cpu,
        }
    }
}

/// Frame bytes (headers included; TLS record overhead not) in the measured
/// window, as they went over the wire and as they would have without
/// compression. Without `--compress` each pair is equal.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct WireBytes {
    /// Sent, as sent (compressed frames at their compressed size).
    pub bytes_sent: u64,
    /// Received, as received.
    pub bytes_received: u64,
    /// Sent, uncompressed.
    pub plain_bytes_sent: u64,
    /// Received, after decompression.
    pub plain_bytes_received: u64,
}

impl std::ops::Add for WireBytes {
    type Output = WireBytes;

    fn add(self, o: WireBytes) -> WireBytes {
        WireBytes {
            bytes_sent: self.bytes_sent + o.bytes_sent,
            bytes_received: self.bytes_received + o.bytes_received,
            plain_bytes_sent: self.plain_bytes_sent + o.plain_bytes_sent,
            plain_bytes_received: self.plain_bytes_received + o.plain_bytes_received,
        }
    }
}

fn ratio(plain: u64, wire: u64) -> f64 {
    if wire == 0 {
        1.0
    } else {
        plain as f64 / wire as f64
    }
}

/// What the server's channel history held, from `get_stats` after a run.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct HistoryHeld {
    /// Publications kept.
    pub publications: u64,
    /// Bytes they hold (frames plus bookkeeping).
    pub bytes: u64,
    /// `bytes / publications`.
    pub bytes_per_publication: f64,
    /// Publications dropped by size, TTL or `max_history_bytes`, ever.
    pub evicted: u64,
}

impl From<crate::protocol::stats::HistoryReport> for HistoryHeld {
    fn from(h: crate::protocol::stats::HistoryReport) -> HistoryHeld {
        HistoryHeld {
            publications: h.publications,
            bytes: h.bytes,
            bytes_per_publication: h.bytes as f64 / h.publications.max(1) as f64,
            evicted: h.evicted,
        }
    }
}

/// The recover workload's figures (the catch-up times are the report's
/// latency).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RecoverFigures {
    /// Publications acknowledged to the publishers.
    pub published: u64,
    /// Resubscriptions answered `recovered: true` whose replay ended.
    pub recoveries: u64,
    /// Publications they replayed.
    pub recovered: u64,
    /// `recovered` per second of the measured run.
    pub recovered_per_sec: f64,
    /// `recovered` per second of catch-up (subscribe sent to the last
    /// replayed received, summed): how fast a replay streams.
    pub replay_per_sec: f64,
    /// Publications replayed per recovery, on average.
    pub missed_per_recovery: f64,
    /// Resubscriptions answered `recovered: false`.
    pub refused: u64,
    /// Publications lost: by refusals, offset gaps and new epochs.
    pub lost: u64,
    /// Publications received twice (counted in the errors too).
    pub duplicates: u64,
}

/// The result of one `ringcast bench` run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Free-form label (`--label`).
    pub label: String,
    /// Server address.
    pub addr: String,
    /// Workload name.
    pub workload: String,
    /// Connections (requesters, or publishers + subscribers).
    pub connections: usize,
    /// Requests outstanding per connection (closed loop).
    pub pipeline: usize,
    /// Target rate in messages/s (open loop), 0 = closed loop.
    pub rate: u64,
    /// Content bytes per echo or broadcast.
    pub size: usize,
    /// Generator threads.
    pub threads: usize,
    /// Seconds measured (warm-up excluded).
    pub seconds: f64,
    /// Responses (or broadcast deliveries) measured.
    pub messages: u64,
    /// Messages per second.
    pub msgs_per_sec: f64,
    /// Megabytes (10^6) per second received.
    pub mb_per_sec: f64,
    /// Deliveries per second (broadcast and pubsub workloads).
    pub deliveries_per_sec: f64,
    /// Latency in microseconds.
    pub latency_us: Latency,
    /// Error frames and lost responses.
    pub errors: u64,
    /// Connections re-established after an unexpected close.
    pub reconnects: u64,
    /// Connections workload: server RSS growth per held connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_bytes_per_connection: Option<f64>,
    /// The codec negotiated (`--compress`), or null.
    pub compression: Option<String>,
    /// What echo and broadcast content was (`filler`, `telemetry`).
    pub content: String,
    /// Bytes on the wire, and what they would have been uncompressed.
    #[serde(flatten)]
    pub wire: WireBytes,
    /// What the server's channel history held at the end (pubsub with
    /// `--history`, recover).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<HistoryHeld>,
    /// The recover workload's figures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recover: Option<RecoverFigures>,
    /// Where it ran.
    pub machine: Machine,
    /// When (UTC).
    pub date: String,
}

impl Report {
    /// The human summary.
    pub fn to_text(&self) -> String {
        let l = &self.latency_us;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "ringcast bench: {} against {} ({} connections, pipeline {}, {} threads{})",
            self.workload,
            self.addr,
            self.connections,
            self.pipeline,
            self.threads,
            if self.rate > 0 {
                format!(", target {} msg/s", self.rate)
            } else {
                String::new()
            }
        );
        let _ = writeln!(
            s,
            "  {:>14} msgs in {:.2} s  = {:>12.0} msgs/s  {:>9.2} MB/s",
            self.messages, self.seconds, self.msgs_per_sec, self.mb_per_sec
        );
        if self.deliveries_per_sec > 0.0 {
            let _ = writeln!(
                s,
                "  {:>14.0} deliveries/s (broadcast or channel messages received)",
                self.deliveries_per_sec
            );
        }
        let _ = writeln!(
            s,
            "  latency µs: p50 {}  p90 {}  p99 {}  p99.9 {}  p99.99 {}  max {}  (mean {:.1})",
            l.p50, l.p90, l.p99, l.p999, l.p9999, l.max, l.mean
        );
        let _ = writeln!(
            s,
            "  errors {}  reconnects {}",
            self.errors, self.reconnects
        );
        let w = &self.wire;
        if w.bytes_sent + w.bytes_received > 0 {
            let _ = write!(
                s,
                "  wire bytes: sent {}  received {}",
                w.bytes_sent, w.bytes_received
            );
            match &self.compression {
                Some(c) => {
                    let _ = writeln!(
                        s,
                        "  ({c}, {} content: {:.2}x and {:.2}x smaller than {} / {})",
                        self.content,
                        ratio(w.plain_bytes_sent, w.bytes_sent),
                        ratio(w.plain_bytes_received, w.bytes_received),
                        w.plain_bytes_sent,
                        w.plain_bytes_received
                    );
                }
                None => {
                    let _ = writeln!(s, "  (uncompressed, {} content)", self.content);
                }
            }
        }
        if let Some(r) = &self.recover {
            let _ = writeln!(
                s,
                "  recovered {} publications in {} recoveries ({:.0} missed each): {:.0}/s over the run, \
                 {:.0}/s while replaying",
                r.recovered, r.recoveries, r.missed_per_recovery, r.recovered_per_sec, r.replay_per_sec
            );
            let _ = writeln!(
                s,
                "  catch-up (subscribe sent -> last replayed received) is the latency above; \
                 refused {}  lost {}  duplicates {}  published {}",
                r.refused, r.lost, r.duplicates, r.published
            );
        }
        if let Some(h) = &self.history {
            let _ = writeln!(
                s,
                "  server history: {} publications in {} bytes ({:.0} bytes each), {} evicted",
                h.publications, h.bytes, h.bytes_per_publication, h.evicted
            );
        }
        if let Some(r) = self.rss_bytes_per_connection {
            let _ = writeln!(s, "  server RSS growth per connection: {r:.0} bytes");
        }
        let _ = writeln!(
            s,
            "  machine: {} cores, kernel {}, {}",
            self.machine.cores, self.machine.kernel, self.machine.cpu
        );
        s
    }
}

/// Writes the HdrHistogram percentile distribution (the `.hgrm` text the
/// public plotter reads): values in milliseconds (recorded in µs, scaled by
/// 1000), five steps per half-distance to 100 %, then the summary footer.
pub fn to_hgrm(h: &Histogram<u64>) -> String {
    let scale = 1000.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    if !h.is_empty() {
        // TotalCount is cumulative: samples at or below Value.
        let mut cumulative = 0u64;
        for v in h.iter_quantiles(5) {
            cumulative += v.count_since_last_iteration();
            let q = v.quantile_iterated_to();
            let value = v.value_iterated_to() as f64 / scale;
            if q < 1.0 {
                let _ = writeln!(
                    s,
                    "{:>12.3} {:>2.12} {:>10} {:>14.2}",
                    value,
                    q,
                    cumulative,
                    1.0 / (1.0 - q)
                );
            } else {
                let _ = writeln!(s, "{value:>12.3} {q:>2.12} {cumulative:>10}");
            }
        }
    }
    let _ = writeln!(
        s,
        "#[Mean    = {:>12.3}, StdDeviation   = {:>12.3}]",
        h.mean() / scale,
        h.stdev() / scale
    );
    let _ = writeln!(
        s,
        "#[Max     = {:>12.3}, Total count    = {:>12}]",
        h.max() as f64 / scale,
        h.len()
    );
    let _ = writeln!(
        s,
        "#[Buckets = {:>12}, SubBuckets     = {:>12}]",
        h.buckets(),
        h.distinct_values()
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_adds_counts_and_keeps_extremes() {
        let mut a = new_histogram();
        let mut b = new_histogram();
        for v in 1..=1000 {
            a.record(v).unwrap();
        }
        b.record(50_000).unwrap();
        let m = merge([&a, &b]);
        assert_eq!(m.len(), 1001);
        assert_eq!(m.min(), 1);
        assert!(m.max() >= 50_000 && m.max() < 50_100);
        let l = Latency::from_histogram(&m);
        assert!((495..=505).contains(&l.p50), "{l:?}");
        assert!(l.p999 >= 999);
    }

    #[test]
    fn hgrm_has_the_plotter_layout() {
        let mut h = new_histogram();
        for v in 1..=10_000u64 {
            h.record(v).unwrap();
        }
        let text = to_hgrm(&h);
        let mut lines = text.lines();
        let head: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        assert_eq!(
            head,
            ["Value", "Percentile", "TotalCount", "1/(1-Percentile)"]
        );
        assert_eq!(lines.next(), Some(""));
        let rows: Vec<Vec<&str>> = text
            .lines()
            .skip(2)
            .take_while(|l| !l.starts_with('#'))
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert!(rows.len() > 20);
        // Percentiles rise monotonically to 1, and counts add up to the total.
        let mut last = -1.0;
        let mut total = 0u64;
        for r in &rows {
            let q: f64 = r[1].parse().unwrap();
            assert!(q >= last);
            last = q;
            let t: u64 = r[2].parse().unwrap();
            assert!(t >= total, "TotalCount is cumulative");
            total = t;
        }
        assert_eq!(last, 1.0);
        assert_eq!(total, 10_000);
        // First value: 1 µs = 0.001 ms.
        assert_eq!(rows[0][0], "0.001");
        assert!(text.contains("#[Mean    ="));
        assert!(text.contains("Total count    =        10000]"));
        assert!(text.contains("#[Buckets ="));
    }
}
