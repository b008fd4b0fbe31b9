//! How `ringcast client` prints: labels in one column, coloured only when
//! stdout is a terminal and `NO_COLOR` is unset; with `--json`, the raw
//! frames received instead, one per line, for scripts.

use super::AppOptions;
use crate::client::{Client, ClientError, Event, Message};
use crate::protocol::ServerStats;
use serde_json::Value;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// Width of the label column.
pub(crate) const LABEL_W: usize = 14;

pub(crate) const BOLD: &str = "1";
pub(crate) const DIM: &str = "2";
pub(crate) const RED: &str = "31";
const GREEN: &str = "32";
const YELLOW: &str = "33";
const CYAN: &str = "36";

/// How to print: colour or not, human or raw JSON.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Style {
    pub(crate) color: bool,
    pub(crate) json: bool,
}

impl Style {
    pub(crate) fn detect(json: bool) -> Style {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Style {
            color: !json && !no_color && std::io::stdout().is_terminal(),
            json,
        }
    }

    pub(crate) fn paint(&self, sgr: &str, s: &str) -> String {
        if self.color {
            format!("\x1b[{sgr}m{s}\x1b[0m")
        } else {
            s.to_owned()
        }
    }

    /// A label padded to the column (padding first, so colour codes do not
    /// upset the alignment).
    pub(crate) fn label(&self, l: &str) -> String {
        self.paint(BOLD, &format!("{l:<LABEL_W$}"))
    }

    /// An empty label column.
    pub(crate) fn indent(&self) -> String {
        " ".repeat(LABEL_W)
    }

    pub(crate) fn sent(&self, s: &str) -> String {
        format!("{} {s}", self.paint(CYAN, "→"))
    }

    pub(crate) fn got(&self, s: &str) -> String {
        format!("{} {s}", self.paint(GREEN, "←"))
    }

    pub(crate) fn got_error(&self, s: &str) -> String {
        format!("{} {}", self.paint(RED, "←"), self.paint(RED, s))
    }
}

/// A duration in milliseconds with three decimals.
pub(crate) fn fmt_ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn quoted(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => format!("{s:?}"),
        Some(v) => v.to_string(),
        None => "(none)".into(),
    }
}

/// Lines that describe an answer, for human output.
pub(crate) fn describe_answer(m: &Message, rtt: Duration) -> Vec<String> {
    match m.kind() {
        "pong" => vec![format!(
            "pong in {} (client_id {})",
            fmt_ms(rtt),
            m.get_str("client_id").unwrap_or("?")
        )],
        "echo_response" => vec![format!(
            "{} (echoed by {}, {})",
            quoted(m.get("content")),
            m.get_str("echoed_by").unwrap_or("?"),
            fmt_ms(rtt)
        )],
        "broadcast_sent" => {
            let n = m.get_u64("recipients").unwrap_or(0);
            vec![format!(
                "sent to {n} other client{} ({})",
                if n == 1 { "" } else { "s" },
                fmt_ms(rtt)
            )]
        }
        "subscribed" | "unsubscribed" => vec![format!(
            "{} {} ({} channel{} now, {}){}",
            m.kind(),
            m.get_str("channel").unwrap_or("?"),
            m.get_u64("subscriptions").unwrap_or(0),
            if m.get_u64("subscriptions") == Some(1) {
                ""
            } else {
                "s"
            },
            fmt_ms(rtt),
            position(m)
        )],
        "published" => {
            let n = m.get_u64("recipients").unwrap_or(0);
            vec![format!(
                "published to {} for {n} subscriber{} ({}){}",
                m.get_str("channel").unwrap_or("?"),
                if n == 1 { "" } else { "s" },
                fmt_ms(rtt),
                position(m)
            )]
        }
        "history" => describe_history(m, rtt),
        "server_stats" => match serde_json::from_value::<ServerStats>(m.value.clone()) {
            Ok(s) => describe_stats(&s),
            Err(e) => vec![format!("unreadable server_stats ({e}): {}", m.raw)],
        },
        "message_ack" => vec![format!(
            "ack at {} ({})",
            m.get_str("timestamp").unwrap_or("?"),
            fmt_ms(rtt)
        )],
        "auth_ok" => vec!["authenticated".into()],
        "error" => vec![describe_error(m)],
        _ => vec![m.raw.clone()],
    }
}

/// `", offset N of epoch E"` on a history channel's answer, else nothing.
fn position(m: &Message) -> String {
    match (m.get_u64("offset"), m.get_str("epoch")) {
        (Some(o), Some(e)) => format!(", offset {o} of epoch {e}"),
        _ => String::new(),
    }
}

/// A `history` answer: the channel's position, then one line per
/// publication, oldest first, with its offset.
fn describe_history(m: &Message, rtt: Duration) -> Vec<String> {
    let pubs = m
        .get("publications")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut lines = vec![format!(
        "history of {}: {} publication{}, latest offset {} of epoch {} ({})",
        m.get_str("channel").unwrap_or("?"),
        pubs.len(),
        if pubs.len() == 1 { "" } else { "s" },
        m.get_u64("offset").unwrap_or(0),
        m.get_str("epoch").unwrap_or("?"),
        fmt_ms(rtt)
    )];
    for p in pubs {
        lines.push(format!(
            "#{} {} (from {}, {})",
            p.get("offset").and_then(Value::as_u64).unwrap_or(0),
            match p.get("content") {
                Some(Value::String(s)) => s.clone(),
                v => quoted(v),
            },
            p.get("from").and_then(Value::as_str).unwrap_or("?"),
            p.get("timestamp").and_then(Value::as_str).unwrap_or("?")
        ));
    }
    lines
}

fn describe_error(m: &Message) -> String {
    format!(
        "error {}: {}",
        m.get_str("code").unwrap_or("?"),
        m.get_str("message").unwrap_or("")
    )
}

fn describe_stats(s: &ServerStats) -> Vec<String> {
    let counts = |m: &std::collections::BTreeMap<String, u64>| {
        if m.is_empty() {
            "-".to_owned()
        } else {
            m.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        }
    };
    let rows: Vec<(&str, String)> = vec![
        ("connected_clients", s.connected_clients.to_string()),
        ("uptime_seconds", s.uptime_seconds.to_string()),
        ("total_messages", s.total_messages.to_string()),
        ("messages_per_second", s.messages_per_second.to_string()),
        ("total_connections", s.total_connections.to_string()),
        ("shards", s.shards.to_string()),
        ("bytes_received", s.bytes_received.to_string()),
        ("bytes_sent", s.bytes_sent.to_string()),
        ("broadcasts_delivered", s.broadcasts_delivered.to_string()),
        ("channels", s.channels.to_string()),
        ("subscriptions", s.subscriptions.to_string()),
        ("publishes", s.publishes.to_string()),
        ("channel_deliveries", s.channel_deliveries.to_string()),
        ("protocol_errors", s.protocol_errors.to_string()),
        ("messages_by_type", counts(&s.messages_by_type)),
        ("errors_by_code", counts(&s.errors_by_code)),
        ("server_start_time", s.server_start_time.clone()),
        ("current_time", s.current_time.clone()),
    ];
    let mut rows = rows;
    if let Some(c) = &s.compression {
        rows.push(("compression", counts(&c.connections)));
        rows.push((
            "",
            format!(
                "in {} frames x{:.2}, out {} frames x{:.2}, {} compressions",
                c.frames_in, c.ratio_in, c.frames_out, c.ratio_out, c.compressions
            ),
        ));
    }
    rows.into_iter()
        .map(|(k, v)| format!("{k:<21}{v}"))
        .collect()
}

/// One line for an event, or None when there is nothing to print.
/// In JSON mode only frames are printed (raw); connection events go to
/// stderr as text.
pub(crate) fn describe_event(style: &Style, ev: &Event) -> Option<EventLine> {
    let line = match ev {
        Event::Message(m) if style.json => return Some(EventLine::Out(m.raw.clone())),
        Event::Message(m) if m.kind() == "broadcast_message" => format!(
            "{} {}",
            style.paint(
                YELLOW,
                &format!("[broadcast from {}]", m.get_str("from").unwrap_or("?"))
            ),
            match m.get("content") {
                Some(Value::String(s)) => s.clone(),
                v => quoted(v),
            }
        ),
        Event::Message(m) if m.kind() == "channel_message" => format!(
            "{} {}",
            style.paint(
                YELLOW,
                &format!(
                    "[{}{} from {}]",
                    m.get_str("channel").unwrap_or("?"),
                    // A history channel's messages show their offset.
                    m.get_u64("offset")
                        .map_or_else(String::new, |o| format!(" #{o}")),
                    m.get_str("from").unwrap_or("?")
                )
            ),
            match m.get("content") {
                Some(Value::String(s)) => s.clone(),
                v => quoted(v),
            }
        ),
        Event::Message(m) if m.is_error() => {
            style.paint(RED, &format!("[server] {}", describe_error(m)))
        }
        Event::Message(m) => format!("{} {}", style.paint(YELLOW, "[pushed]"), m.raw),
        Event::Disconnected { reason } => {
            return Some(EventLine::Err(format!("[disconnected] {reason}")))
        }
        Event::Reconnected { attempt } => {
            return Some(EventLine::Err(format!(
                "[reconnected] on attempt {attempt}"
            )))
        }
        Event::Recovered { channel } => {
            return Some(EventLine::Err(format!(
                "[recovered] {channel}: the missed publications follow"
            )))
        }
        Event::Lost { channel, reason } => {
            return Some(EventLine::Err(format!(
                "[lost] {channel}: publications may have been missed ({reason:?})"
            )))
        }
        Event::ReconnectFailed {
            attempts,
            last_error,
        } => {
            return Some(EventLine::Err(format!(
                "[gave up reconnecting] after {attempts} attempts: {last_error}"
            )))
        }
    };
    Some(EventLine::Out(line))
}

/// Where an event line goes.
pub(crate) enum EventLine {
    Out(String),
    Err(String),
}

/// What `--compress` came to on the current connection, in words (None
/// when it was not asked for).
pub(crate) fn describe_compression(client: &Client, args: &AppOptions) -> Option<String> {
    let want = args.compress?;
    Some(match client.server_hello() {
        Some(h) => match h.compression {
            Some(c) => format!(
                "{} (frames over {} B; {})",
                c.as_str(),
                h.compression_threshold,
                h.server
            ),
            None => format!(
                "none: {} did not agree to {} (uncompressed)",
                h.server,
                want.as_str()
            ),
        },
        None => format!(
            "none: the server predates hello (uncompressed, {} not offered)",
            want.as_str()
        ),
    })
}

/// Sends one request and prints the exchange; returns the answer.
pub(crate) fn exchange(
    client: &Client,
    style: &Style,
    label: &str,
    shown: &str,
    type_name: &str,
    fields: Value,
) -> Result<Message, ClientError> {
    exchange_expecting(client, style, label, shown, type_name, fields, None)
}

/// Like [`exchange`], but an `error` answer with the code `expected` is
/// printed as an ordinary answer, not in red: it is what the caller meant
/// to show.
pub(crate) fn exchange_expecting(
    client: &Client,
    style: &Style,
    label: &str,
    shown: &str,
    type_name: &str,
    fields: Value,
    expected: Option<&str>,
) -> Result<Message, ClientError> {
    if !style.json {
        println!("{}{}", style.label(label), style.sent(shown));
    }
    let start = Instant::now();
    let m = client.request(type_name, fields)?;
    let rtt = start.elapsed();
    if style.json {
        println!("{}", m.raw);
    } else {
        let failed = m.is_error() && (expected.is_none() || m.get_str("code") != expected);
        for (i, line) in describe_answer(&m, rtt).iter().enumerate() {
            let text = if i > 0 {
                format!("  {line}")
            } else if failed {
                style.got_error(line)
            } else {
                style.got(line)
            };
            println!("{}{text}", style.indent());
        }
    }
    Ok(m)
}
