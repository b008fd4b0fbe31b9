//! What `ringcast top` draws: the screen as lines of text, from two
//! samples of the server's figures (for rates) and a page of connections.
//! Pure, so it is tested without a terminal.

use super::api::Connection;
use crate::protocol::ServerStats;
use std::collections::HashMap;

/// How the connection table is ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortBy {
    /// Frames in plus out per second, measured between two samples.
    Rate,
    /// Bytes queued for the client, not yet sent (a slow consumer's mark).
    Pending,
    /// Bytes sent to the client, ever.
    BytesOut,
}

impl SortBy {
    /// The `sort` the API is asked for. For `Rate` the API cannot sort
    /// (it keeps no rates), so `top` fetches the busiest by `msgs_out`
    /// and orders them by the rate it measures.
    pub fn api_key(self) -> &'static str {
        match self {
            SortBy::Rate => "msgs_out",
            SortBy::Pending => "pending",
            SortBy::BytesOut => "bytes_out",
        }
    }

    fn label(self) -> &'static str {
        match self {
            SortBy::Rate => "rate",
            SortBy::Pending => "pending bytes",
            SortBy::BytesOut => "bytes out",
        }
    }
}

/// One sample of the server's totals, with the server's clock.
#[derive(Debug, Clone)]
pub struct Sample {
    /// The figures.
    pub stats: ServerStats,
    /// `current_time` in ms since the epoch.
    pub at_ms: i64,
}

impl Sample {
    /// Wraps `stats`; the time comes from its `current_time`, or `local_ms`
    /// when that does not parse.
    pub fn new(stats: ServerStats, local_ms: i64) -> Sample {
        let at_ms = chrono::DateTime::parse_from_rfc3339(&stats.current_time)
            .map(|t| t.timestamp_millis())
            .unwrap_or(local_ms);
        Sample { stats, at_ms }
    }
}

/// Per-second rates between two samples.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Rates {
    /// Requests handled.
    pub msgs_in: f64,
    /// Frames queued to clients: a reply per request plus deliveries.
    pub msgs_out: f64,
    /// Broadcast and channel deliveries.
    pub deliveries: f64,
    /// Bytes read from clients.
    pub bytes_in: f64,
    /// Bytes written to clients.
    pub bytes_out: f64,
    /// Error frames.
    pub errors: f64,
}

fn deliveries(s: &ServerStats) -> u64 {
    s.broadcasts_delivered + s.channel_deliveries
}

impl Rates {
    /// The rates from `old` to `new`, or None when no time passed between
    /// them on the server's clock.
    pub fn between(old: &Sample, new: &Sample) -> Option<Rates> {
        let secs = (new.at_ms - old.at_ms) as f64 / 1000.0;
        if secs <= 0.0 {
            return None;
        }
        let per_s = |a: u64, b: u64| b.saturating_sub(a) as f64 / secs;
        let (o, n) = (&old.stats, &new.stats);
        Some(Rates {
            msgs_in: per_s(o.total_messages, n.total_messages),
            msgs_out: per_s(
                o.total_messages + deliveries(o),
                n.total_messages + deliveries(n),
            ),
            deliveries: per_s(deliveries(o), deliveries(n)),
            bytes_in: per_s(o.bytes_received, n.bytes_received),
            bytes_out: per_s(o.bytes_sent, n.bytes_sent),
            errors: per_s(o.protocol_errors, n.protocol_errors),
        })
    }
}

/// Everything one screen shows.
#[derive(Debug, Default)]
pub struct Screen<'a> {
    /// `--http-addr`.
    pub addr: &'a str,
    /// The newest sample, if any arrived.
    pub sample: Option<&'a Sample>,
    /// Rates between the last two samples.
    pub rates: Option<Rates>,
    /// Open connections in all (from the listing).
    pub connections_total: Option<u64>,
    /// The rows to list, ordered.
    pub rows: &'a [Row<'a>],
    /// How they are ordered.
    pub sort: Option<SortBy>,
    /// A problem to show instead of hiding (unreachable, refused, …).
    pub problem: Option<&'a str>,
    /// A problem with the listing alone.
    pub listing_problem: Option<&'a str>,
}

/// A connection and its measured rate (frames in and out per second).
#[derive(Debug, Clone, Copy)]
pub struct Row<'a> {
    /// The listing's row.
    pub conn: &'a Connection,
    /// Its rate, once two listings have seen it.
    pub rate: Option<f64>,
}

/// Orders `conns` for display by `sort`, with rates measured against the
/// previous listing (`prev`: client id → frames in + out, and `secs`
/// between the two).
pub fn rows<'a>(
    conns: &'a [Connection],
    prev: &HashMap<String, u64>,
    secs: f64,
    sort: SortBy,
) -> Vec<Row<'a>> {
    let mut rows: Vec<Row<'a>> = conns
        .iter()
        .map(|c| Row {
            conn: c,
            rate: prev
                .get(&c.client_id)
                .filter(|_| secs > 0.0)
                .map(|p| (c.msgs_in + c.msgs_out).saturating_sub(*p) as f64 / secs),
        })
        .collect();
    match sort {
        SortBy::Rate => rows.sort_by(|a, b| {
            b.rate
                .unwrap_or(0.0)
                .total_cmp(&a.rate.unwrap_or(0.0))
                .then(b.conn.msgs_out.cmp(&a.conn.msgs_out))
        }),
        SortBy::Pending => rows.sort_by_key(|r| std::cmp::Reverse(r.conn.pending_bytes)),
        SortBy::BytesOut => rows.sort_by_key(|r| std::cmp::Reverse(r.conn.bytes_out)),
    }
    rows
}

/// A count with thousands separators.
pub fn count(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A rate: one decimal under 10, else a whole count.
pub fn rate(r: f64) -> String {
    if r < 10.0 {
        format!("{r:.1}")
    } else {
        count(r.round() as u64)
    }
}

/// Bytes in binary units.
pub fn bytes(n: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let (mut v, mut i) = (n, 0);
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{v:.0} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

fn duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// The screen as at most `height` lines, each at most `width` characters.
pub fn render(s: &Screen<'_>, width: usize, height: usize) -> Vec<String> {
    let mut lines = Vec::with_capacity(height);
    let na = "…".to_string();
    match s.sample {
        Some(sample) => {
            let st = &sample.stats;
            let node = st
                .cluster
                .as_ref()
                .map(|c| format!("node {} · ", c.node_id))
                .unwrap_or_default();
            lines.push(format!(
                "ringcast top · http://{} · {node}{} · {} shards · up {} · {}",
                s.addr,
                st.io_backend,
                st.shards,
                duration(st.uptime_seconds * 1000),
                st.current_time.get(11..19).unwrap_or(""),
            ));
            let r = s.rates;
            let f = |v: fn(&Rates) -> f64| r.as_ref().map(|r| rate(v(r))).unwrap_or(na.clone());
            let fb = |v: fn(&Rates) -> f64| {
                r.as_ref()
                    .map(|r| format!("{}/s", bytes(v(r))))
                    .unwrap_or(na.clone())
            };
            lines.push(format!(
                "clients {}  accepted {}  channels {}  subscriptions {}  rss {}",
                count(st.connected_clients),
                count(st.total_connections),
                count(st.channels),
                count(st.subscriptions),
                bytes(st.rss_bytes as f64),
            ));
            lines.push(format!(
                "msgs in/s {}  out/s {}  deliveries/s {}  bytes in {}  out {}",
                f(|r| r.msgs_in),
                f(|r| r.msgs_out),
                f(|r| r.deliveries),
                fb(|r| r.bytes_in),
                fb(|r| r.bytes_out),
            ));
            let mut codes: Vec<(&String, &u64)> =
                st.errors_by_code.iter().filter(|(_, n)| **n > 0).collect();
            codes.sort_by(|a, b| b.1.cmp(a.1));
            let codes: Vec<String> = codes
                .iter()
                .take(4)
                .map(|(c, n)| format!("{c} {}", count(**n)))
                .collect();
            lines.push(format!(
                "totals: msgs {}  errors {}{}  errors/s {}  slow-consumer cuts {}{}",
                count(st.total_messages),
                count(st.protocol_errors),
                if codes.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", codes.join(", "))
                },
                f(|r| r.errors),
                count(st.slow_consumer_disconnects),
                st.cluster
                    .as_ref()
                    .map(|c| format!("  cluster {} nodes, backplane {}", c.nodes, c.backplane))
                    .unwrap_or_default(),
            ));
        }
        None => lines.push(format!("ringcast top · http://{}", s.addr)),
    }
    lines.push(match s.problem {
        Some(p) => format!("! {p}"),
        None => String::new(),
    });
    if let Some(sort) = s.sort {
        lines.push(format!(
            "connections: {} open, top by {} (keys: r rate, p pending, b bytes out, q quit)",
            s.connections_total.map(count).unwrap_or(na.clone()),
            sort.label(),
        ));
    }
    if let Some(p) = s.listing_problem {
        lines.push(format!("! {p}"));
    } else if s.sort.is_some() {
        lines.push(format!(
            "{:<22} {:<12} {:>5} {:>9} {:>10} {:>10} {:>10} {:>10} {:>8} {:>5}",
            "CLIENT",
            "USER",
            "SHARD",
            "MSGS/S",
            "IN",
            "OUT",
            "BYTES OUT",
            "PENDING",
            "IDLE",
            "SUBS"
        ));
        for row in s.rows.iter().take(height.saturating_sub(lines.len())) {
            let c = row.conn;
            lines.push(format!(
                "{:<22} {:<12} {:>5} {:>9} {:>10} {:>10} {:>10} {:>10} {:>8} {:>5}",
                c.client_id,
                c.user.as_deref().unwrap_or("-"),
                c.shard,
                row.rate.map(rate).unwrap_or(na.clone()),
                count(c.msgs_in),
                count(c.msgs_out),
                bytes(c.bytes_out as f64),
                bytes(c.pending_bytes as f64),
                duration(c.idle_ms),
                c.subscriptions,
            ));
        }
    }
    lines.truncate(height);
    for l in &mut lines {
        if l.chars().count() > width {
            *l = l.chars().take(width).collect();
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(json: &str) -> ServerStats {
        serde_json::from_str(json).unwrap()
    }

    fn sample(at: &str, msgs: u64, bytes_sent: u64, deliveries: u64) -> Sample {
        Sample::new(
            stats(&format!(
                r#"{{"connected_clients":3,"uptime_seconds":61,"total_messages":{msgs},
                "server_start_time":"2026-01-01T00:00:00.000Z","current_time":"{at}",
                "bytes_sent":{bytes_sent},"channel_deliveries":{deliveries},
                "errors_by_code":{{"invalid_json":2,"rate_limited":0}},"protocol_errors":2,
                "io_backend":"epoll","shards":2}}"#
            )),
            0,
        )
    }

    #[test]
    fn rates_use_the_servers_clock() {
        let a = sample("2026-01-01T00:01:00.000Z", 1000, 0, 0);
        let b = sample("2026-01-01T00:01:02.000Z", 3000, 4096, 600);
        let r = Rates::between(&a, &b).unwrap();
        assert_eq!(r.msgs_in, 1000.0);
        assert_eq!(r.deliveries, 300.0);
        assert_eq!(r.msgs_out, 1300.0);
        assert_eq!(r.bytes_out, 2048.0);
        assert!(Rates::between(&b, &b).is_none());
    }

    #[test]
    fn the_screen_shows_totals_rates_and_rows_within_its_size() {
        let a = sample("2026-01-01T00:01:00.000Z", 1000, 0, 0);
        let b = sample("2026-01-01T00:01:02.000Z", 3000, 4096, 600);
        let conns: Vec<Connection> = (0..50)
            .map(|i| Connection {
                client_id: format!("127.0.0.1:{}", 40000 + i),
                msgs_in: i * 10,
                pending_bytes: i,
                ..Default::default()
            })
            .collect();
        let prev: HashMap<String, u64> = conns.iter().map(|c| (c.client_id.clone(), 0)).collect();
        let rows = rows(&conns, &prev, 2.0, SortBy::Pending);
        assert_eq!(rows[0].conn.client_id, "127.0.0.1:40049");
        assert_eq!(rows[0].rate, Some(245.0));
        let screen = Screen {
            addr: "127.0.0.1:9090",
            sample: Some(&b),
            rates: Rates::between(&a, &b),
            connections_total: Some(50),
            rows: &rows,
            sort: Some(SortBy::Pending),
            ..Default::default()
        };
        let lines = render(&screen, 100, 20);
        assert_eq!(lines.len(), 20);
        assert!(lines.iter().all(|l| l.chars().count() <= 100));
        let text = lines.join("\n");
        assert!(text.contains("clients 3 "), "{text}");
        assert!(text.contains("msgs in/s 1,000 "), "{text}");
        assert!(text.contains("deliveries/s 300 "), "{text}");
        assert!(text.contains("invalid_json 2"), "{text}");
        assert!(!text.contains("rate_limited"), "{text}");
        assert!(text.contains("50 open, top by pending bytes"), "{text}");
        assert!(text.contains("127.0.0.1:40049"), "{text}");
    }

    #[test]
    fn a_problem_is_shown_not_hidden() {
        let screen = Screen {
            addr: "127.0.0.1:1",
            problem: Some("cannot reach http://127.0.0.1:1: connection refused"),
            ..Default::default()
        };
        let text = render(&screen, 200, 10).join("\n");
        assert!(text.contains("! cannot reach"), "{text}");
    }

    #[test]
    fn units() {
        assert_eq!(count(1234567), "1,234,567");
        assert_eq!(count(999), "999");
        assert_eq!(bytes(1536.0), "1.5 KiB");
        assert_eq!(rate(2.24), "2.2");
        assert_eq!(duration(3_725_000), "1h02m");
    }
}
