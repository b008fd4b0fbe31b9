//! One backplane stream entry, decoded and checked before any shard sees it.
//!
//! Anyone who can write to the cluster's Redis can write to its stream: a
//! shared Redis, a tool, a node of another version. So an entry is never
//! trusted: it becomes an [`Entry`] only when every field is present and
//! well formed and its frame is one this server would itself have made
//! (a header whose length matches, within `max_frame_bytes`, a JSON object
//! of the right `type`). Anything else is a [`BadEntry`]: skipped, counted
//! and logged by the reader, never written to a client.

use crate::protocol::pattern::check_concrete;
use crate::protocol::{JsonParser, HEADER_LEN};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::Arc;
use thiserror::Error;

/// A well-formed entry written by another node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The node that wrote it (`n`).
    pub node: String,
    /// That node's sequence number for it (`s`).
    pub seq: u64,
    /// The channel of a publish (`c`); `None` for a broadcast.
    pub channel: Option<Arc<str>>,
    /// The frame (`f`): header and JSON payload, as clients get it (on
    /// a history channel, with the offset and epoch added to what `f`
    /// holds).
    pub frame: Bytes,
    /// On a history channel, the place Redis gave it (`o`, `e`).
    pub placed: Option<Placed>,
}

/// A history channel's publication's place, assigned in Redis (see
/// [`super::history`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    /// Its offset in the channel.
    pub offset: u64,
    /// The store's epoch.
    pub epoch: Arc<str>,
    /// Where the publication's own fields (`"content":…,"from":…,
    /// "timestamp":…`) lie in [`Entry::frame`], for `history` answers.
    pub body: std::ops::Range<usize>,
}

/// Why an entry was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BadEntry {
    /// A field every entry has (`n`, `s` or `f`) is missing or not a string.
    #[error("field {0:?} missing or not a string")]
    Missing(&'static str),
    /// The node id is empty or not UTF-8.
    #[error("node id empty or not UTF-8")]
    Node,
    /// The sequence number is not a decimal u64.
    #[error("sequence number is not an unsigned integer")]
    Seq,
    /// The channel is not a valid channel name (or is a pattern).
    #[error("channel is not a valid channel name")]
    Channel,
    /// The frame is shorter than its header.
    #[error("frame shorter than its 4-byte header")]
    Short,
    /// The header's length is not the payload's (or has the compressed flag).
    #[error("frame header says {said} bytes, payload has {has}")]
    Length {
        /// What the header says.
        said: u64,
        /// What follows it.
        has: u64,
    },
    /// The payload is over `max_frame_bytes`.
    #[error("frame payload of {0} bytes is over max_frame_bytes")]
    TooLarge(usize),
    /// The offset (`o`) is not a positive integer, the epoch (`e`) not a
    /// short token, or one is given without the other or without a
    /// channel.
    #[error("history offset or epoch missing or malformed")]
    Placed,
    /// A history entry's frame does not start as this server writes a
    /// `channel_message` (type, then channel, then the publication).
    #[error("history frame not laid out as a channel_message")]
    Layout,
    /// The payload is not a JSON object of the type its kind of entry has
    /// (`broadcast_message` without a channel, `channel_message` naming
    /// the entry's channel).
    #[error("payload is not a {0} JSON object")]
    Payload(&'static str),
    /// A control entry ([`super::control`]) is malformed: why.
    #[error("control entry: {0}")]
    Control(&'static str),
}

/// Decodes and checks the fields of one stream entry. `scratch` is a
/// reused buffer for the parse (simd-json parses in place; the frame
/// itself stays untouched).
pub fn decode(
    fields: &HashMap<String, redis::Value>,
    max_frame_bytes: usize,
    parser: &mut JsonParser,
    scratch: &mut Vec<u8>,
) -> Result<Entry, BadEntry> {
    let get = |k: &'static str| -> Result<Vec<u8>, BadEntry> {
        fields
            .get(k)
            .and_then(|v| redis::from_redis_value_ref::<Vec<u8>>(v).ok())
            .ok_or(BadEntry::Missing(k))
    };
    let node = String::from_utf8(get("n")?).map_err(|_| BadEntry::Node)?;
    if node.is_empty() {
        return Err(BadEntry::Node);
    }
    let seq = std::str::from_utf8(&get("s")?)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or(BadEntry::Seq)?;
    let frame = get("f")?;
    let channel = match fields.get("c") {
        None => None,
        Some(v) => {
            let c = redis::from_redis_value_ref::<Vec<u8>>(v)
                .ok()
                .and_then(|c| String::from_utf8(c).ok())
                // A concrete channel: a pattern would reach the
                // subscribers of patterns it only textually matches.
                .filter(|c| check_concrete(c).is_ok())
                .ok_or(BadEntry::Channel)?;
            Some(Arc::<str>::from(c))
        }
    };
    check_frame(&frame, channel.as_deref(), max_frame_bytes, parser, scratch)?;
    let text = |k: &'static str| {
        fields
            .get(k)
            .map(|v| redis::from_redis_value_ref::<String>(v).map_err(|_| BadEntry::Placed))
            .transpose()
    };
    let (offset, epoch) = (text("o")?, text("e")?);
    let (frame, placed) = match (offset, epoch, channel.as_deref()) {
        (None, None, _) => (Bytes::from(frame), None),
        (Some(o), Some(e), Some(ch)) => {
            let offset = o
                .parse::<u64>()
                .ok()
                .filter(|o| *o > 0)
                .ok_or(BadEntry::Placed)?;
            if !super::history::valid_epoch(&e) {
                return Err(BadEntry::Placed);
            }
            let (frame, body) = place(&frame, ch, offset, &e)?;
            let epoch = Arc::from(e);
            (
                frame,
                Some(Placed {
                    offset,
                    epoch,
                    body,
                }),
            )
        }
        _ => return Err(BadEntry::Placed),
    };
    Ok(Entry {
        node,
        seq,
        channel,
        frame,
        placed,
    })
}

/// The frame a history publication is delivered as: `plain` (checked by
/// [`check_frame`]) with `"offset"` and `"epoch"` added last, as a node
/// writes them on one node (`protocol::message::write_channel_message`);
/// with the span of the publication's own fields.
pub fn place(
    plain: &[u8],
    channel: &str,
    offset: u64,
    epoch: &str,
) -> Result<(Bytes, std::ops::Range<usize>), BadEntry> {
    let payload = &plain[HEADER_LEN..];
    let mut head = br#"{"type":"channel_message","channel":"#.to_vec();
    crate::protocol::json::write_str(&mut head, channel);
    head.push(b',');
    if !payload.starts_with(&head) || payload.last() != Some(&b'}') || payload.len() <= head.len() {
        return Err(BadEntry::Layout);
    }
    let end = payload.len() - 1;
    let out =
        crate::protocol::message::add_position(plain, offset, epoch).ok_or(BadEntry::Layout)?;
    let body = HEADER_LEN + head.len()..HEADER_LEN + end;
    Ok((Bytes::from(out), body))
}

/// Checks that `frame` is one frame this server would have made for the
/// entry: header length = payload length (no compressed flag: nodes write
/// plain frames), payload within `max_frame_bytes`, a JSON object whose
/// `type` is `broadcast_message` (no channel) or `channel_message` whose
/// `channel` is the entry's.
pub fn check_frame(
    frame: &[u8],
    channel: Option<&str>,
    max_frame_bytes: usize,
    parser: &mut JsonParser,
    scratch: &mut Vec<u8>,
) -> Result<(), BadEntry> {
    let Some((header, payload)) = frame.split_first_chunk::<HEADER_LEN>() else {
        return Err(BadEntry::Short);
    };
    let said = u32::from_be_bytes(*header);
    if said as usize != payload.len() {
        return Err(BadEntry::Length {
            said: u64::from(said),
            has: payload.len() as u64,
        });
    }
    if payload.len() > max_frame_bytes {
        return Err(BadEntry::TooLarge(payload.len()));
    }
    let want = match channel {
        None => "broadcast_message",
        Some(_) => "channel_message",
    };
    scratch.clear();
    scratch.extend_from_slice(payload);
    let ok = parser.parse(scratch, |v| {
        let Ok(v) = v else { return false };
        v.is_object()
            && v.get("type").and_then(|t| t.as_str()) == Some(want)
            && match channel {
                None => v.get("channel").is_none(),
                Some(c) => v.get("channel").and_then(|x| x.as_str()) == Some(c),
            }
    });
    if ok {
        Ok(())
    } else {
        Err(BadEntry::Payload(want))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::Value;

    fn framed(s: &str) -> Vec<u8> {
        let mut v = (s.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(s.as_bytes());
        v
    }

    fn fields(pairs: &[(&str, &[u8])]) -> HashMap<String, Value> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Value::BulkString(v.to_vec())))
            .collect()
    }

    fn dec(f: &HashMap<String, Value>) -> Result<Entry, BadEntry> {
        decode(f, 1 << 20, &mut JsonParser::new(), &mut Vec::new())
    }

    const BCAST: &str = r#"{"type":"broadcast_message","content":1,"from":"a","timestamp":"t"}"#;
    const CHMSG: &str =
        r#"{"type":"channel_message","channel":"news","content":1,"from":"a","timestamp":"t"}"#;

    #[test]
    fn good_entries_decode() {
        let b = framed(BCAST);
        let e = dec(&fields(&[("n", b"node-a"), ("s", b"17"), ("f", &b)])).unwrap();
        assert_eq!((e.node.as_str(), e.seq, e.channel), ("node-a", 17, None));
        assert_eq!(&e.frame[..], &b[..]);
        let c = framed(CHMSG);
        let e = dec(&fields(&[
            ("n", b"x"),
            ("s", b"1"),
            ("f", &c),
            ("c", b"news"),
        ]))
        .unwrap();
        assert_eq!(e.channel.as_deref(), Some("news"));
    }

    #[test]
    fn every_kind_of_bad_entry_is_refused() {
        let b = framed(BCAST);
        let cases: Vec<(HashMap<String, Value>, BadEntry)> = vec![
            (fields(&[("s", b"1"), ("f", &b)]), BadEntry::Missing("n")),
            (fields(&[("n", b"a"), ("f", &b)]), BadEntry::Missing("s")),
            (fields(&[("n", b"a"), ("s", b"1")]), BadEntry::Missing("f")),
            (
                fields(&[("n", b""), ("s", b"1"), ("f", &b)]),
                BadEntry::Node,
            ),
            (
                fields(&[("n", b"\xff"), ("s", b"1"), ("f", &b)]),
                BadEntry::Node,
            ),
            (
                fields(&[("n", b"a"), ("s", b"x"), ("f", &b)]),
                BadEntry::Seq,
            ),
            (
                fields(&[("n", b"a"), ("s", b"-1"), ("f", &b)]),
                BadEntry::Seq,
            ),
            // The one-line attack of the defects issue: a 2-byte frame.
            (
                fields(&[("n", b"x"), ("s", b"1"), ("f", b"ab")]),
                BadEntry::Short,
            ),
            (
                fields(&[("n", b"x"), ("s", b"1"), ("f", b"")]),
                BadEntry::Short,
            ),
            (
                fields(&[("n", b"x"), ("s", b"1"), ("f", b"\0\0\0\x09{}")]),
                BadEntry::Length { said: 9, has: 2 },
            ),
            (
                // The compressed flag (top bit) is not a length.
                fields(&[("n", b"x"), ("s", b"1"), ("f", b"\x80\0\0\x02{}")]),
                BadEntry::Length {
                    said: 0x8000_0002,
                    has: 2,
                },
            ),
            (
                fields(&[("n", b"x"), ("s", b"1"), ("f", &framed("[1,2]"))]),
                BadEntry::Payload("broadcast_message"),
            ),
            (
                fields(&[("n", b"x"), ("s", b"1"), ("f", &framed("{not json"))]),
                BadEntry::Payload("broadcast_message"),
            ),
            (
                // An error frame must not be injected into clients' streams.
                fields(&[
                    ("n", b"x"),
                    ("s", b"1"),
                    ("f", &framed(r#"{"type":"error","code":"x"}"#)),
                ]),
                BadEntry::Payload("broadcast_message"),
            ),
            (
                // A channel message without its channel field.
                fields(&[("n", b"x"), ("s", b"1"), ("f", &b), ("c", b"news")]),
                BadEntry::Payload("channel_message"),
            ),
            (
                // A channel message for another channel than the entry's.
                fields(&[
                    ("n", b"x"),
                    ("s", b"1"),
                    ("f", &framed(CHMSG)),
                    ("c", b"other"),
                ]),
                BadEntry::Payload("channel_message"),
            ),
            (
                fields(&[("n", b"x"), ("s", b"1"), ("f", &b), ("c", b"")]),
                BadEntry::Channel,
            ),
            (
                // A pattern names no channel one may publish to.
                fields(&[("n", b"x"), ("s", b"1"), ("f", &b), ("c", b"news.*")]),
                BadEntry::Channel,
            ),
        ];
        for (f, want) in cases {
            assert_eq!(dec(&f), Err(want.clone()), "{f:?}");
        }
        let big = framed(&format!(
            r#"{{"type":"broadcast_message","content":"{}"}}"#,
            "x".repeat(100)
        ));
        let f = fields(&[("n", b"x"), ("s", b"1"), ("f", &big)]);
        let r = decode(&f, 64, &mut JsonParser::new(), &mut Vec::new());
        assert!(matches!(r, Err(BadEntry::TooLarge(_))), "{r:?}");
    }

    #[test]
    fn a_field_of_another_redis_type_is_refused() {
        let mut f = fields(&[("n", b"a"), ("s", b"1")]);
        f.insert(
            "f".into(),
            Value::Array(vec![Value::BulkString(b"\0\0\0\x02{}".to_vec())]),
        );
        assert_eq!(dec(&f), Err(BadEntry::Missing("f")));
        // Nil reads as empty bytes: shorter than a header.
        f.insert("f".into(), Value::Nil);
        assert_eq!(dec(&f), Err(BadEntry::Short));
    }
}
