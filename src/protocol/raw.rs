//! `echo` requests without the JSON tape: validate, then copy the content
//! as it was sent.
//!
//! For a 64 KiB echo the tape path costs most of the server's own work:
//! the lone-surrogate pre-scan, simd-json's copy into its aligned buffer and
//! its structural scan over every byte, the in-place unescape, and the
//! escape scan when the string is written back; for a 32-byte echo its
//! fixed costs (tape, aligned copy) are most of it. Here a payload that is
//! a flat object (string, number and literal members only) with
//! `"type":"echo"` is checked in one pass, strings
//! skipped 32 bytes at a time and validated (escapes, surrogate pairs, no
//! control characters, UTF-8), and `content` (a string) and `id` are
//! copied into the response as they were written: the same JSON values the
//! tape path would write, not always the same bytes (an escape such as
//! `\u0041` stays as sent instead of becoming `A`).
//!
//! [`echo`] never accepts a payload the tape path would reject: it
//! is strict, and anything it does not handle (nested values, escaped
//! keys, a float or out-of-range integer `id`, another type) returns
//! `None` and takes the tape path, which also writes every error.

use super::frame::{begin_frame, finish_frame, HEADER_LEN};
use super::json::block_needs_escape;
use super::message::SERVER_NAME;

/// An `echo` request's raw members, borrowed from the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawEcho<'a> {
    /// The `id` value as sent (a string with its quotes, an integer,
    /// `true`, `false` or `null`); the last one, as the tape path reads it.
    pub id: Option<&'a [u8]>,
    /// The `content` string as sent, quotes included; the first one.
    pub content: &'a [u8],
}

/// Bytes per step of the string scan.
const BLOCK: usize = 32;

#[inline]
fn skip_ws(p: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = p.get(i) {
        i += 1;
    }
    i
}

/// Four hex digits at `p[i..]`.
fn hex4(p: &[u8], i: usize) -> Option<u32> {
    let h = p.get(i..i + 4)?;
    h.iter().try_fold(0u32, |v, &c| {
        let d = (c as char).to_digit(16)?;
        Some(v << 4 | d)
    })
}

/// The string starting with the quote at `p[i]`: returns the index after
/// its closing quote and whether it has an escape, or `None` if it is not a
/// valid JSON string (bad or unpaired-surrogate escape, control character,
/// bad UTF-8, unterminated).
fn scan_string(p: &[u8], i: usize) -> Option<(usize, bool)> {
    debug_assert_eq!(p.get(i), Some(&b'"'));
    let mut j = i + 1;
    let mut escaped = false;
    // Any byte >= 0x80 seen: only then is UTF-8 checked (ASCII is valid).
    let mut high = 0u8;
    loop {
        while j + BLOCK <= p.len() {
            let block = &p[j..j + BLOCK];
            high |= block.iter().fold(0u8, |a, &b| a | (b & 0x80));
            if block_needs_escape(block) {
                break;
            }
            j += BLOCK;
        }
        // Byte by byte through the block that stopped the scan (or the
        // tail), so each byte is looked at a bounded number of times: short
        // strings, such as keys, cost one pass.
        let end = (j + BLOCK).min(p.len());
        if j >= end {
            return None; // unterminated
        }
        while j < end {
            match p[j] {
                b'"' => {
                    if high != 0 {
                        std::str::from_utf8(&p[i + 1..j]).ok()?;
                    }
                    return Some((j + 1, escaped));
                }
                b'\\' => {
                    escaped = true;
                    j = match *p.get(j + 1)? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => j + 2,
                        b'u' => match hex4(p, j + 2)? {
                            0xD800..=0xDBFF => {
                                if p.get(j + 6..j + 8)? != b"\\u"
                                    || !(0xDC00..=0xDFFF).contains(&hex4(p, j + 8)?)
                                {
                                    return None;
                                }
                                j + 12
                            }
                            0xDC00..=0xDFFF => return None,
                            _ => j + 6,
                        },
                        _ => return None,
                    };
                    break; // back to the block scan from after the escape
                }
                c if c < 0x20 => return None,
                c => {
                    high |= c & 0x80;
                    j += 1;
                }
            }
        }
    }
}

/// A JSON number at `p[i..]` (strict grammar): the index after it, and
/// whether it is an integer that the tape path writes back unchanged
/// (no fraction or exponent, no `-0`, fits an i64 or u64).
fn scan_number(p: &[u8], i: usize) -> Option<(usize, bool)> {
    let digits = |mut j: usize| {
        let s = j;
        while p.get(j).is_some_and(u8::is_ascii_digit) {
            j += 1;
        }
        (j > s).then_some(j)
    };
    let mut j = i;
    let neg = p.get(j) == Some(&b'-');
    if neg {
        j += 1;
    }
    let int_start = j;
    j = match p.get(j)? {
        b'0' => j + 1,
        b'1'..=b'9' => digits(j)?,
        _ => return None,
    };
    let int_end = j;
    let mut plain = true;
    if p.get(j) == Some(&b'.') {
        plain = false;
        j = digits(j + 1)?;
    }
    if let Some(b'e' | b'E') = p.get(j) {
        plain = false;
        j += 1;
        if let Some(b'+' | b'-') = p.get(j) {
            j += 1;
        }
        j = digits(j)?;
    }
    if plain {
        let s = std::str::from_utf8(&p[int_start..int_end]).ok()?;
        plain = if neg {
            s != "0" && s.parse::<u64>().is_ok_and(|v| v <= i64::MIN.unsigned_abs())
        } else {
            s.parse::<u64>().is_ok()
        };
    }
    Some((j, plain))
}

/// The payload as an `echo` request whose members can be copied raw, or
/// `None` (take the tape path). See the module doc.
pub fn echo(p: &[u8]) -> Option<RawEcho<'_>> {
    let mut i = skip_ws(p, 0);
    if p.get(i) != Some(&b'{') {
        return None;
    }
    i = skip_ws(p, i + 1);
    let (mut ty, mut id, mut content) = (None, None, None);
    loop {
        if p.get(i) != Some(&b'"') {
            return None; // `{}` or not a key: the tape path explains
        }
        let (key_end, key_escaped) = scan_string(p, i)?;
        let key = &p[i..key_end];
        i = skip_ws(p, key_end);
        if p.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(p, i + 1);
        let start = i;
        let (end, simple) = match *p.get(i)? {
            b'"' => (scan_string(p, i)?.0, true),
            b'-' | b'0'..=b'9' => scan_number(p, i)?,
            b't' if p[i..].starts_with(b"true") => (i + 4, true),
            b'f' if p[i..].starts_with(b"false") => (i + 5, true),
            b'n' if p[i..].starts_with(b"null") => (i + 4, true),
            _ => return None,
        };
        let value = &p[start..end];
        if key_escaped {
            return None; // might spell one of ours
        }
        match key {
            b"\"type\"" if value != b"\"echo\"" => return None, // not ours: no need to read on
            b"\"type\"" => ty = Some(value),
            b"\"id\"" => id = Some((value, simple)),
            b"\"content\"" if content.is_none() => content = Some(value),
            _ => {}
        }
        i = skip_ws(p, end);
        match p.get(i)? {
            b',' => i = skip_ws(p, i + 1),
            b'}' => break,
            _ => return None,
        }
    }
    if skip_ws(p, i + 1) != p.len() || ty != Some(b"\"echo\"") {
        return None;
    }
    let content = content.filter(|c| c.first() == Some(&b'"'))?;
    let id = match id {
        Some((v, true)) => Some(v),
        Some((_, false)) => return None,
        None => None,
    };
    Some(RawEcho { id, content })
}

/// `echo_response` for a [`RawEcho`]: the same members, in the same order,
/// as [`super::message::write_echo_response`].
pub fn write_echo_response(out: &mut Vec<u8>, e: &RawEcho<'_>, now: &str) {
    // Fixed pieces written whole after one reserve (not member by member
    // through `ObjectWriter`): at 32-byte echoes the per-push capacity
    // checks were a tenth of the server's instructions.
    const HEAD: &[u8] = br#"{"type":"echo_response","content":"#;
    const TS: &[u8] = br#","timestamp":""#;
    const BY: &[u8] = br#"","echoed_by":""#;
    const ID: &[u8] = br#"","id":"#;
    let id_len = e.id.map_or(0, |id| ID.len() + id.len());
    out.reserve(
        HEADER_LEN
            + HEAD.len()
            + e.content.len()
            + TS.len()
            + now.len()
            + BY.len()
            + SERVER_NAME.len()
            + id_len
            + 2,
    );
    let start = begin_frame(out);
    out.extend_from_slice(HEAD);
    out.extend_from_slice(e.content);
    out.extend_from_slice(TS);
    out.extend_from_slice(now.as_bytes());
    out.extend_from_slice(BY);
    out.extend_from_slice(SERVER_NAME.as_bytes());
    match e.id {
        Some(id) => {
            out.extend_from_slice(ID);
            out.extend_from_slice(id);
        }
        None => out.push(b'"'),
    }
    out.push(b'}');
    finish_frame(out, start);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{parse_request, JsonParser, RequestKind};

    const NOW: &str = "2024-01-01T00:00:00.000Z";

    /// The tape path's response to `payload`, if it is an echo.
    fn tape(payload: &[u8]) -> Option<Vec<u8>> {
        let mut buf = payload.to_vec();
        let mut parser = JsonParser::new();
        parse_request(&mut parser, &mut buf, |r| {
            let req = r.ok().filter(|r| r.kind == RequestKind::Echo)?;
            let mut out = Vec::new();
            crate::protocol::message::write_echo_response(&mut out, &req, NOW);
            Some(out)
        })
    }

    fn value(frame: &[u8]) -> serde_json::Value {
        serde_json::from_slice(&frame[4..]).expect("a response is JSON")
    }

    /// Content padding before the interesting part: none, around the
    /// 32-byte scan block, and large (64 KiB echoes take this path too).
    const PADS: [usize; 9] = [0, 1, 5, 30, 31, 32, 33, 95, 4096];

    #[test]
    fn same_values_as_the_tape_path() {
        for pad in PADS {
            same_values_with_pad(pad);
        }
    }

    fn same_values_with_pad(pad: usize) {
        let big = |s: &str| format!("{}{s}", "x".repeat(pad));
        let cases = [
            format!(r#"{{"type":"echo","content":"{}"}}"#, big("")),
            format!(
                r#" {{ "id" : 7 , "type" : "echo" , "content" : "{}" }} "#,
                big(r#"\"\\\/\b\f\n\r\t"#)
            ),
            format!(
                r#"{{"type":"echo","content":"{}","id":"a\"b"}}"#,
                big(r"\u0041\u00e9\ud83d\ude00\u0000")
            ),
            format!(
                r#"{{"type":"echo","content":"{}","id":-12,"x":1.5e3,"y":null,"z":false}}"#,
                big("héllo ✓ 😀")
            ),
            format!(
                r#"{{"type":"echo","content":"{}","content":"second","id":1,"id":true}}"#,
                big("")
            ),
            format!(
                r#"{{"type":"echo","content":"{}","id":18446744073709551615}}"#,
                big("")
            ),
            format!(
                r#"{{"type":"echo","content":"{}","id":-9223372036854775808}}"#,
                big("")
            ),
        ];
        for c in &cases {
            let raw = echo(c.as_bytes()).unwrap_or_else(|| panic!("raw path refused {c:.80}"));
            let mut out = Vec::new();
            write_echo_response(&mut out, &raw, NOW);
            let want = tape(c.as_bytes()).expect("the tape path takes it");
            assert_eq!(value(&out), value(&want), "{c:.80}");
            assert_eq!(
                u32::from_be_bytes(out[..4].try_into().unwrap()) as usize,
                out.len() - 4
            );
        }
    }

    #[test]
    fn same_bytes_as_the_tape_path_without_escapes() {
        for c in [
            r#"{"type":"echo","content":"hello","id":7}"#,
            r#"{"type":"echo","content":"hello","id":"a-b"}"#,
            r#"{"type":"echo","content":"héllo"}"#,
        ] {
            let raw = echo(c.as_bytes()).expect("raw path");
            let mut out = Vec::new();
            write_echo_response(&mut out, &raw, NOW);
            assert_eq!(out, tape(c.as_bytes()).unwrap(), "{c}");
        }
    }

    #[test]
    fn anything_else_takes_the_tape_path() {
        for pad in PADS {
            refused_with_pad(pad);
        }
    }

    fn refused_with_pad(pad: usize) {
        let big = |s: &str| format!("{}{s}", "x".repeat(pad));
        let refused = [
            // Not valid JSON: the tape path writes the error.
            format!(r#"{{"type":"echo","content":"{}"#, big("")),
            format!(r#"{{"type":"echo","content":"{}"}}x"#, big("")),
            format!(r#"{{"type":"echo","content":"{}\x01"}}"#, big("")),
            format!(r#"{{"type":"echo","content":"{}\q"}}"#, big("")),
            format!(r#"{{"type":"echo","content":"{}\ud800"}}"#, big("")),
            format!(r#"{{"type":"echo","content":"{}\udc00\ud800"}}"#, big("")),
            format!(r#"{{"type":"echo","content":"{}\u12"}}"#, big("")),
            format!(r#"{{"type":"echo","content":"{}","id":01}}"#, big("")),
            format!(r#"{{"type":"echo","content":"{}","id":1.}}"#, big("")),
            format!(r#"{{"type":"echo","content":"{}","id":tru}}"#, big("")),
            format!(r#"{{"type":"echo","content":"{}",}}"#, big("")),
            // Valid, but for the tape path to write.
            format!(r#"{{"type":"echo","content":"{}","id":1.5}}"#, big("")),
            format!(r#"{{"type":"echo","content":"{}","id":-0}}"#, big("")),
            format!(
                r#"{{"type":"echo","content":"{}","id":18446744073709551616}}"#,
                big("")
            ),
            format!(
                r#"{{"type":"echo","content":"{}","meta":{{"a":1}}}}"#,
                big("")
            ),
            format!(r#"{{"type":"echo","content":["{}"]}}"#, big("")),
            format!(r#"{{"type":"echo","content":12,"pad":"{}"}}"#, big("")),
            format!(r#"{{"type":"ping","content":"{}"}}"#, big("")),
            format!(r#"{{"type":"ech\u006f","content":"{}"}}"#, big("")),
            format!(r#"{{"typ\u0065":"echo","content":"{}"}}"#, big("")),
            format!(r#"{{"content":"{}"}}"#, big("")),
            format!(r#"["{}"]"#, big("")),
        ];
        for c in &refused {
            assert_eq!(echo(c.as_bytes()), None, "{c:.100}");
        }
        // Invalid UTF-8 inside the content.
        let mut b = format!(r#"{{"type":"echo","content":"{}"#, big("")).into_bytes();
        b.extend_from_slice(b"\xff\"}");
        assert_eq!(echo(&b), None);
    }

    proptest::proptest! {
        /// Any content string, escaped as serde_json writes it: the raw
        /// path takes the echo and answers with the tape path's values.
        #[test]
        fn any_content_same_as_tape(content in ".*", id in proptest::option::of(any_id())) {
            let mut req = serde_json::json!({"type": "echo", "content": content});
            if let Some(id) = id {
                req["id"] = id;
            }
            let payload = serde_json::to_vec(&req).unwrap();
            let raw = echo(&payload).expect("the raw path takes a plain echo");
            let mut out = Vec::new();
            write_echo_response(&mut out, &raw, NOW);
            let want = tape(&payload).expect("the tape path takes it");
            proptest::prop_assert_eq!(value(&out), value(&want));
        }

        /// Arbitrary bytes after an echo's opening: whatever the raw path
        /// accepts, the tape path accepts with the same reply.
        #[test]
        fn never_accepts_what_the_tape_rejects(tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            let mut payload = br#"{"type":"echo","content":""#.to_vec();
            payload.extend_from_slice(&tail);
            if let Some(raw) = echo(&payload) {
                let mut out = Vec::new();
                write_echo_response(&mut out, &raw, NOW);
                let want = tape(&payload).expect("the raw path took what the tape rejects");
                proptest::prop_assert_eq!(value(&out), value(&want));
            }
        }
    }

    fn any_id() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        prop_oneof![
            any::<i64>().prop_map(serde_json::Value::from),
            any::<u64>().prop_map(serde_json::Value::from),
            ".{0,8}".prop_map(serde_json::Value::from),
            any::<bool>().prop_map(serde_json::Value::from),
            Just(serde_json::Value::Null),
        ]
    }
}
