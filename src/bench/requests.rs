//! What the generator sends: pre-built requests for requesters, and
//! broadcasts and publishes whose content starts with their publish time
//! (read back at the subscribers by [`publish_time`]), compressed when the
//! connection negotiated a codec.

use super::plan::Role;
use super::{BenchConfig, Content, Workload};
use crate::protocol::codec::{Codec, Compressor};
use crate::protocol::json::ObjectWriter;
use crate::protocol::{frame, HEADER_LEN};

/// Pre-built request frames, and what broadcasts and publishes carry.
struct Requests {
    ping: Vec<u8>,
    echo: Vec<u8>,
    /// The echo frame compressed with `--compress`'s codec, when that
    /// saves bytes (the content never changes, so it is compressed once:
    /// the server still decompresses every one).
    echo_packed: Option<(Codec, Vec<u8>)>,
    stats: Vec<u8>,
    /// What follows the publish time in broadcast and publish content.
    pad: String,
    content: Content,
}

impl Requests {
    fn new(size: usize, content: Content, compress: Option<Codec>) -> Requests {
        let mut ping = Vec::new();
        let st = frame::begin_frame(&mut ping);
        let mut o = ObjectWriter::new(&mut ping);
        o.raw_str("type", "ping");
        o.raw_str("timestamp", "2024-01-01T12:00:00.000Z");
        o.raw_str("client_info", "ringcast-bench");
        o.finish();
        frame::finish_frame(&mut ping, st);
        let records = match content {
            Content::Filler => String::new(),
            Content::Telemetry => super::telemetry_records(size),
        };
        let mut echo = Vec::new();
        let st = frame::begin_frame(&mut echo);
        let mut o = ObjectWriter::new(&mut echo);
        o.raw_str("type", "echo");
        match content {
            Content::Filler => o.str("content", &"x".repeat(size)),
            Content::Telemetry => {
                let v = o.key("content");
                v.push(b'[');
                v.extend_from_slice(records.as_bytes());
                v.push(b']');
            }
        }
        o.finish();
        frame::finish_frame(&mut echo, st);
        let echo_packed = compress.and_then(|c| {
            let mut f = Vec::new();
            Compressor::new()
                .compress_frame(c, &echo[HEADER_LEN..], &mut f)
                .then_some((c, f))
        });
        let mut stats = Vec::new();
        frame::encode_frame(&mut stats, br#"{"type":"get_stats"}"#);
        let pad = match content {
            // The publish time and the JSON around it take about 24 bytes.
            Content::Filler => "x".repeat(size.saturating_sub(24)),
            Content::Telemetry => records,
        };
        Requests {
            ping,
            echo,
            echo_packed,
            stats,
            pad,
            content,
        }
    }
}

/// The name of pubsub channel `n`: `bench-<n>`, or with `--pattern`
/// `bench-<n>.x`, which only the pattern `bench-<n>.*` matches (so a run
/// with patterns delivers exactly what one with channels does).
pub(super) fn channel_name(n: usize, pattern: bool) -> String {
    match pattern {
        false => format!("bench-{n}"),
        true => format!("bench-{n}.x"),
    }
}

/// What a pubsub subscriber subscribes to for channel `n`: the channel,
/// or with `--pattern` the one pattern that matches it.
pub(super) fn subscription_name(n: usize, pattern: bool) -> String {
    match pattern {
        false => channel_name(n, false),
        true => format!("bench-{n}.*"),
    }
}

/// Writes each connection's next request: a requester's pre-built frame, a
/// publisher's broadcast or publish stamped with its send time.
pub(super) struct RequestWriter {
    reqs: Requests,
    workload: Workload,
    /// The pubsub channels' names, made once.
    channel_names: Vec<String>,
    /// Compresses broadcasts and publishes (their content starts with the
    /// publish time, so each is compressed as it is sent).
    compressor: Compressor,
    /// Where a frame to be compressed is written first.
    scratch: Vec<u8>,
}

/// The connection a request is written for.
pub(super) struct Sender<'a> {
    /// What it does.
    pub(super) role: Role,
    /// A publisher's first channel.
    pub(super) channel: usize,
    /// Requests it has written so far (rotates the mixed workload and a
    /// publisher's channel).
    pub(super) counter: &'a mut u64,
    /// Its codec and the server's threshold (None: uncompressed).
    pub(super) codec: Option<(Codec, usize)>,
}

impl RequestWriter {
    /// The requests of a run configured by `cfg`.
    pub(super) fn new(cfg: &BenchConfig) -> RequestWriter {
        RequestWriter {
            reqs: Requests::new(cfg.size, cfg.content, cfg.compress),
            workload: cfg.workload,
            channel_names: (0..cfg.channels.max(1))
                .map(|n| channel_name(n, cfg.pattern))
                .collect(),
            compressor: Compressor::new(),
            scratch: Vec::new(),
        }
    }

    /// Appends the next request of `s` to `out`, stamped `now`; returns its
    /// frame's uncompressed length, or None for a subscriber (it sends
    /// nothing).
    pub(super) fn write(&mut self, s: Sender<'_>, now: u64, out: &mut Vec<u8>) -> Option<usize> {
        let reqs = &self.reqs;
        match s.role {
            Role::Subscriber => None,
            Role::Publisher => {
                let before = out.len();
                // Written where it can be compressed from, when it may be.
                let dst = if s.codec.is_some() {
                    self.scratch.clear();
                    &mut self.scratch
                } else {
                    &mut *out
                };
                if self.workload == Workload::Pubsub {
                    // Each publisher cycles through every channel, starting
                    // at its own, so the channels share the load evenly.
                    let n = self.channel_names.len() as u64;
                    let ch = (s.channel as u64 + *s.counter) % n;
                    *s.counter += 1;
                    let name = &self.channel_names[ch as usize];
                    write_publish(dst, name, now, &reqs.pad, reqs.content);
                } else {
                    write_broadcast(dst, now, &reqs.pad, reqs.content);
                }
                let Some((codec, threshold)) = s.codec else {
                    return Some(out.len() - before);
                };
                let payload = &self.scratch[HEADER_LEN..];
                if payload.len() <= threshold
                    || !self.compressor.compress_frame(codec, payload, out)
                {
                    out.extend_from_slice(&self.scratch);
                }
                Some(self.scratch.len())
            }
            Role::Requester => {
                let f = match self.workload {
                    Workload::Ping => &reqs.ping,
                    Workload::Echo => &reqs.echo,
                    Workload::Stats => &reqs.stats,
                    _ => match *s.counter % 10 {
                        0 => &reqs.stats,
                        n if n % 2 == 1 => &reqs.ping,
                        _ => &reqs.echo,
                    },
                };
                *s.counter += 1;
                let packed = match (&reqs.echo_packed, s.codec) {
                    (Some((k, packed)), Some((codec, threshold)))
                        if std::ptr::eq(f, &reqs.echo)
                            && *k == codec
                            && f.len() - HEADER_LEN > threshold =>
                    {
                        Some(packed)
                    }
                    _ => None,
                };
                out.extend_from_slice(packed.unwrap_or(f));
                Some(f.len())
            }
        }
    }
}

/// Writes the `content` of a broadcast or publish: the publish time first
/// (`"t=<ns>;<pad>"` for filler, `["t=<ns>",<records>]` for telemetry).
fn write_timed_content(out: &mut Vec<u8>, now_ns: u64, pad: &str, content: Content) {
    match content {
        Content::Filler => {
            out.extend_from_slice(br#""content":"t="#);
            crate::protocol::json::write_u64(out, now_ns);
            out.push(b';');
            out.extend_from_slice(pad.as_bytes());
            out.push(b'"');
        }
        Content::Telemetry => {
            out.extend_from_slice(br#""content":["t="#);
            crate::protocol::json::write_u64(out, now_ns);
            out.push(b'"');
            if !pad.is_empty() {
                out.push(b',');
                out.extend_from_slice(pad.as_bytes());
            }
            out.push(b']');
        }
    }
}

/// Writes a publish to `channel` whose content starts with the publish time.
pub(super) fn write_publish(
    out: &mut Vec<u8>,
    channel: &str,
    now_ns: u64,
    pad: &str,
    content: Content,
) {
    let st = frame::begin_frame(out);
    out.extend_from_slice(br#"{"type":"publish","channel":""#);
    out.extend_from_slice(channel.as_bytes());
    out.extend_from_slice(br#"","#);
    write_timed_content(out, now_ns, pad, content);
    out.push(b'}');
    frame::finish_frame(out, st);
}

/// Writes a broadcast whose content starts with the publish time.
fn write_broadcast(out: &mut Vec<u8>, now_ns: u64, pad: &str, content: Content) {
    let st = frame::begin_frame(out);
    out.extend_from_slice(br#"{"type":"broadcast","#);
    write_timed_content(out, now_ns, pad, content);
    out.push(b'}');
    frame::finish_frame(out, st);
}

/// The publish time inside a broadcast_message payload, if it is one of ours.
pub fn publish_time(payload: &[u8]) -> Option<u64> {
    const KEY: &[u8] = br#""content":"t="#;
    const KEY_ARRAY: &[u8] = br#""content":["t="#;
    // memmem: this runs for every frame a subscriber receives, and a
    // byte-by-byte window compare was 6 % of the generator's CPU in
    // broadcast 1 -> 1,000 (the generator shares the server's cores).
    let find = |k: &[u8]| memchr::memmem::find(payload, k).map(|p| p + k.len());
    let at = find(KEY).or_else(|| find(KEY_ARRAY))?;
    let mut v: u64 = 0;
    let mut any = false;
    for &b in &payload[at..] {
        if b.is_ascii_digit() {
            v = v.checked_mul(10)?.checked_add((b - b'0') as u64)?;
            any = true;
        } else {
            break;
        }
    }
    any.then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_time_is_read_from_content() {
        let mut f = Vec::new();
        write_broadcast(&mut f, 123_456_789, "pad", Content::Filler);
        let payload = &f[4..];
        let v: serde_json::Value = serde_json::from_slice(payload).unwrap();
        assert_eq!(v["content"], "t=123456789;pad");
        let delivered = br#"{"type":"broadcast_message","content":"t=123456789;pad","from":"x"}"#;
        assert_eq!(publish_time(delivered), Some(123_456_789));
        assert_eq!(
            publish_time(br#"{"type":"broadcast_message","content":"hello"}"#),
            None
        );
    }

    #[test]
    fn telemetry_content_is_json_with_the_publish_time_first() {
        let pad = crate::bench::telemetry_records(2000);
        for channel in [None, Some("bench-3")] {
            let mut f = Vec::new();
            match channel {
                None => write_broadcast(&mut f, 987_654_321, &pad, Content::Telemetry),
                Some(ch) => write_publish(&mut f, ch, 987_654_321, &pad, Content::Telemetry),
            }
            let v: serde_json::Value = serde_json::from_slice(&f[4..]).unwrap();
            let content = v["content"].as_array().unwrap();
            assert_eq!(content[0], "t=987654321");
            assert!(content.len() > 10, "{}", content.len());
            assert!(content[1]["sensor"].is_string() && content[1]["temp_c"].is_f64());
            assert!(f.len() > 2000 && f.len() < 2400, "{}", f.len());
        }
        let delivered =
            br#"{"type":"channel_message","channel":"c","content":["t=42",{"a":1}],"from":"x"}"#;
        assert_eq!(publish_time(delivered), Some(42));
        // Echo: an array of records of about the size asked for, and
        // (telemetry compresses well) a compressed copy.
        let r = Requests::new(16 << 10, Content::Telemetry, Some(Codec::Zstd));
        let v: serde_json::Value = serde_json::from_slice(&r.echo[4..]).unwrap();
        assert!(v["content"].as_array().unwrap().len() > 50);
        let (k, packed) = r.echo_packed.as_ref().unwrap();
        assert_eq!(*k, Codec::Zstd);
        assert!(
            packed.len() * 3 < r.echo.len(),
            "{} vs {}",
            packed.len(),
            r.echo.len()
        );
        assert_eq!(Requests::new(64, Content::Filler, None).pad.len(), 40);
    }

    #[test]
    fn requests_rotate_and_publishers_cycle_through_the_channels() {
        let cfg = BenchConfig {
            workload: Workload::Pubsub,
            channels: 3,
            ..BenchConfig::default()
        };
        let mut w = RequestWriter::new(&cfg);
        let mut counter = 0;
        let mut channels = Vec::new();
        for now in 0..4 {
            let mut out = Vec::new();
            let s = Sender {
                role: Role::Publisher,
                channel: 1,
                counter: &mut counter,
                codec: None,
            };
            let n = w.write(s, now, &mut out).unwrap();
            assert_eq!(n, out.len());
            let v: serde_json::Value = serde_json::from_slice(&out[4..]).unwrap();
            channels.push(v["channel"].as_str().unwrap().to_owned());
            assert_eq!(publish_time(&out[4..]), Some(now));
        }
        assert_eq!(channels, ["bench-1", "bench-2", "bench-0", "bench-1"]);
        let s = Sender {
            role: Role::Subscriber,
            channel: 0,
            counter: &mut counter,
            codec: None,
        };
        assert_eq!(w.write(s, 0, &mut Vec::new()), None);
        // Mixed: stats, ping, echo, ping, ... by the counter.
        let cfg = BenchConfig {
            workload: Workload::Mixed,
            ..BenchConfig::default()
        };
        let mut w = RequestWriter::new(&cfg);
        let mut counter = 0;
        let kinds: Vec<String> = (0..4)
            .map(|_| {
                let mut out = Vec::new();
                let s = Sender {
                    role: Role::Requester,
                    channel: 0,
                    counter: &mut counter,
                    codec: None,
                };
                w.write(s, 0, &mut out).unwrap();
                let v: serde_json::Value = serde_json::from_slice(&out[4..]).unwrap();
                v["type"].as_str().unwrap().to_owned()
            })
            .collect();
        assert_eq!(kinds, ["get_stats", "ping", "echo", "ping"]);
    }
}
