//! JSON in and out of frames.
//!
//! In: [`JsonParser`] parses a payload in place with simd-json into a tape,
//! reusing simd-json's buffers and the tape across messages, so a warmed-up
//! parser allocates nothing per message. [`JsonValue`] is a zero-copy view of
//! one value on that tape.
//!
//! Out: responses are written straight into the caller's output buffer by the
//! small hand-written writer below. A serde `Serialize` round trip would build
//! and walk a value per message; the responses have fixed shapes, so writing
//! their bytes directly is both simpler and several times faster (see
//! docs/ARCHITECTURE.md for the numbers).

use simd_json::{Buffers, Node, StaticNode, Tape};

/// Parses frames in place, reusing its buffers. One per thread (shard,
/// client receiver, generator thread): it is cheap to keep and costly to
/// rebuild.
pub struct JsonParser {
    buffers: Buffers,
    /// The reused tape, stored with a `'static` lifetime while empty.
    tape: Option<Tape<'static>>,
}

impl Default for JsonParser {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for JsonParser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonParser").finish_non_exhaustive()
    }
}

/// The payload was not valid UTF-8 JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidJson;

impl JsonParser {
    /// A parser with buffers sized for typical small messages; they grow to
    /// the largest message seen and are kept.
    pub fn new() -> Self {
        JsonParser {
            buffers: Buffers::new(4096),
            tape: Some(Tape(Vec::with_capacity(64))),
        }
    }

    /// Parses `payload` in place (strings are unescaped inside it) and calls
    /// `f` with the root value. The tape is only valid inside `f`.
    pub fn parse<'a, R>(
        &mut self,
        payload: &'a mut [u8],
        f: impl for<'t> FnOnce(Result<JsonValue<'t, 'a>, InvalidJson>) -> R,
    ) -> R {
        // simd-json 0.15 decodes a lone surrogate escape as U+0000 instead
        // of rejecting it, which would silently change a client's data.
        if has_lone_surrogate_escape(payload) {
            return f(Err(InvalidJson));
        }
        let mut tape: Tape<'a> = self.tape.take().unwrap_or_else(|| Tape(Vec::new())).reset();
        let r = match simd_json::fill_tape(payload, &mut self.buffers, &mut tape) {
            Ok(()) if !tape.0.is_empty() => f(Ok(JsonValue(&tape.0))),
            _ => f(Err(InvalidJson)),
        };
        self.tape = Some(tape.reset());
        r
    }
}

/// The value of four hex digits, if they are.
fn hex4(b: &[u8]) -> Option<u32> {
    let s = std::str::from_utf8(b.get(..4)?).ok()?;
    u32::from_str_radix(s, 16)
        .ok()
        .filter(|_| s.bytes().all(|c| c.is_ascii_hexdigit()))
}

/// Whether `payload` holds a `\uD800`–`\uDFFF` escape that is not part of a
/// high+low surrogate pair. Backslashes are found 64 bytes at a time (a
/// vectorisable fold), so payloads without escapes cost one pass.
fn has_lone_surrogate_escape(payload: &[u8]) -> bool {
    let mut i = 0;
    while i < payload.len() {
        let end = (i + SCAN_BLOCK).min(payload.len());
        if !payload[i..end].iter().fold(false, |a, &b| a | (b == b'\\')) {
            i = end;
            continue;
        }
        while i < end {
            if payload[i] != b'\\' {
                i += 1;
                continue;
            }
            if payload.get(i + 1) != Some(&b'u') {
                i += 2; // a two-character escape (or a stray backslash simd-json rejects)
                continue;
            }
            match hex4(&payload[(i + 2).min(payload.len())..]) {
                Some(0xD800..=0xDBFF) => {
                    let low = (payload.get(i + 6) == Some(&b'\\')
                        && payload.get(i + 7) == Some(&b'u'))
                    .then(|| hex4(&payload[(i + 8).min(payload.len())..]))
                    .flatten();
                    if !matches!(low, Some(0xDC00..=0xDFFF)) {
                        return true;
                    }
                    i += 12;
                }
                Some(0xDC00..=0xDFFF) => return true,
                _ => i += 6,
            }
        }
        i = i.max(end);
    }
    false
}

/// Number of tape nodes a value occupies, header included.
#[inline]
fn node_count(n: &Node<'_>) -> usize {
    match n {
        Node::Object { count, .. } | Node::Array { count, .. } => *count + 1,
        _ => 1,
    }
}

/// A zero-copy view of one JSON value on a simd-json tape.
#[derive(Clone, Copy, Debug)]
pub struct JsonValue<'t, 'a>(&'t [Node<'a>]);

impl<'t, 'a> JsonValue<'t, 'a> {
    #[inline]
    fn head(&self) -> &Node<'a> {
        &self.0[0]
    }

    /// The string, if this is a string.
    #[inline]
    pub fn as_str(&self) -> Option<&'a str> {
        match self.head() {
            Node::String(s) => Some(s),
            _ => None,
        }
    }

    /// The number as u64, if this is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match self.head() {
            Node::Static(StaticNode::U64(v)) => Some(*v),
            Node::Static(StaticNode::I64(v)) if *v >= 0 => Some(*v as u64),
            _ => None,
        }
    }

    /// Whether this is an object.
    #[inline]
    pub fn is_object(&self) -> bool {
        matches!(self.head(), Node::Object { .. })
    }

    /// Whether this is a scalar (string, number, bool or null).
    #[inline]
    pub fn is_scalar(&self) -> bool {
        matches!(self.head(), Node::String(_) | Node::Static(_))
    }

    /// Whether this is JSON `null`.
    #[inline]
    pub fn is_null(&self) -> bool {
        matches!(self.head(), Node::Static(StaticNode::Null))
    }

    /// Looks a key up in an object (first match). Linear in the number of
    /// top-level keys; nested values are skipped in O(1) each.
    pub fn get(&self, key: &str) -> Option<JsonValue<'t, 'a>> {
        self.entries().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// The key/value pairs of an object (empty for any other value).
    pub fn entries(&self) -> Entries<'t, 'a> {
        match self.head() {
            Node::Object { len, .. } => Entries {
                nodes: &self.0[1..],
                left: *len,
            },
            _ => Entries {
                nodes: &[],
                left: 0,
            },
        }
    }

    /// The elements of an array, or `None` if this is not an array.
    pub fn elements(&self) -> Option<Elements<'t, 'a>> {
        match self.head() {
            Node::Array { len, .. } => Some(Elements {
                nodes: &self.0[1..],
                left: *len,
            }),
            _ => None,
        }
    }

    /// Appends this value as compact JSON to `out`. Iterative, so nesting
    /// depth costs heap (a small stack), never the thread's stack.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        // Open containers: (is_object, members not yet completed).
        let mut stack: Vec<(bool, usize)> = Vec::new();
        let nodes = self.0;
        let mut i = 0;
        loop {
            // Write the value starting at nodes[i].
            let node = &nodes[i];
            i += 1;
            match node {
                Node::Object { len, .. } => {
                    out.push(b'{');
                    if *len == 0 {
                        out.push(b'}');
                    } else {
                        stack.push((true, *len));
                        i = write_key(out, nodes, i);
                        continue;
                    }
                }
                Node::Array { len, .. } => {
                    out.push(b'[');
                    if *len == 0 {
                        out.push(b']');
                    } else {
                        stack.push((false, *len));
                        continue;
                    }
                }
                Node::String(s) => write_str(out, s),
                Node::Static(s) => write_static(out, s),
            }
            // A value is complete: close every container it completes.
            loop {
                let Some(top) = stack.last_mut() else {
                    return;
                };
                top.1 -= 1;
                if top.1 == 0 {
                    out.push(if top.0 { b'}' } else { b']' });
                    stack.pop();
                    continue;
                }
                out.push(b',');
                if top.0 {
                    i = write_key(out, nodes, i);
                }
                break;
            }
        }
    }
}

/// Writes the object key at `nodes[i]` and a colon; returns the next index.
fn write_key(out: &mut Vec<u8>, nodes: &[Node<'_>], i: usize) -> usize {
    if let Node::String(k) = &nodes[i] {
        write_str(out, k);
    }
    out.push(b':');
    i + 1
}

/// Iterator over an object's members.
pub struct Entries<'t, 'a> {
    nodes: &'t [Node<'a>],
    left: usize,
}

impl<'t, 'a> Iterator for Entries<'t, 'a> {
    type Item = (&'a str, JsonValue<'t, 'a>);
    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let Node::String(k) = self.nodes.first()? else {
            return None;
        };
        let n = node_count(self.nodes.get(1)?);
        let v = JsonValue(&self.nodes[1..1 + n]);
        self.nodes = &self.nodes[1 + n..];
        Some((k, v))
    }
}

/// The elements of a JSON array, in order.
#[derive(Debug)]
pub struct Elements<'t, 'a> {
    nodes: &'t [Node<'a>],
    left: usize,
}

impl<'t, 'a> Iterator for Elements<'t, 'a> {
    type Item = JsonValue<'t, 'a>;
    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let n = node_count(self.nodes.first()?);
        let v = JsonValue(&self.nodes[..n]);
        self.nodes = &self.nodes[n..];
        Some(v)
    }
}

fn write_static(out: &mut Vec<u8>, s: &StaticNode) {
    match s {
        StaticNode::I64(v) => out.extend_from_slice(itoa::Buffer::new().format(*v).as_bytes()),
        StaticNode::U64(v) => out.extend_from_slice(itoa::Buffer::new().format(*v).as_bytes()),
        StaticNode::F64(v) => {
            if v.is_finite() {
                // `{:?}` keeps a `.0` on integral floats, so 1.0 stays a float.
                use std::io::Write;
                let _ = write!(out, "{v:?}");
            } else {
                out.extend_from_slice(b"null");
            }
        }
        StaticNode::Bool(true) => out.extend_from_slice(b"true"),
        StaticNode::Bool(false) => out.extend_from_slice(b"false"),
        StaticNode::Null => out.extend_from_slice(b"null"),
    }
}

/// Bytes that must be escaped inside a JSON string: `"`, `\` and controls.
#[inline]
fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// Bytes checked per block by [`write_str`]'s fast scan.
const SCAN_BLOCK: usize = 64;

/// Whether any byte of `block` needs escaping. Written as a branch-free
/// fold so the compiler turns it into vector compares (16+ bytes per
/// instruction on x86_64); safe code, no intrinsics.
#[inline]
pub(crate) fn block_needs_escape(block: &[u8]) -> bool {
    block.iter().fold(0u8, |acc, &b| {
        acc | u8::from(b < 0x20) | u8::from(b == b'"') | u8::from(b == b'\\')
    }) != 0
}

/// Appends `s` as a quoted JSON string.
///
/// Hand-written because echo and broadcast copy client content into every
/// response: the scan checks 64 bytes per step with vectorised compares and
/// copies clean runs with one memcpy, which is what makes 64 KiB echoes
/// cheap (serde_json's escaper goes byte by byte through a table).
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    let b = s.as_bytes();
    out.reserve(b.len() + 2);
    out.push(b'"');
    let mut run_start = 0;
    let mut i = 0;
    while i < b.len() {
        if i + SCAN_BLOCK <= b.len() && !block_needs_escape(&b[i..i + SCAN_BLOCK]) {
            i += SCAN_BLOCK;
            continue;
        }
        let end = (i + SCAN_BLOCK).min(b.len());
        while i < end {
            let c = b[i];
            if needs_escape(c) {
                out.extend_from_slice(&b[run_start..i]);
                write_escape(out, c);
                run_start = i + 1;
            }
            i += 1;
        }
    }
    out.extend_from_slice(&b[run_start..]);
    out.push(b'"');
}

fn write_escape(out: &mut Vec<u8>, c: u8) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    match c {
        b'"' => out.extend_from_slice(b"\\\""),
        b'\\' => out.extend_from_slice(b"\\\\"),
        b'\n' => out.extend_from_slice(b"\\n"),
        b'\r' => out.extend_from_slice(b"\\r"),
        b'\t' => out.extend_from_slice(b"\\t"),
        0x08 => out.extend_from_slice(b"\\b"),
        0x0c => out.extend_from_slice(b"\\f"),
        _ => out.extend_from_slice(&[
            b'\\',
            b'u',
            b'0',
            b'0',
            HEX[(c >> 4) as usize],
            HEX[(c & 15) as usize],
        ]),
    }
}

/// Appends an unsigned integer.
#[inline]
pub fn write_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

/// Writes the members of a JSON object one by one, handling the commas.
///
/// ```
/// let mut out = Vec::new();
/// let mut o = ringcast::protocol::json::ObjectWriter::new(&mut out);
/// o.str("type", "pong");
/// o.u64("n", 3);
/// o.finish();
/// assert_eq!(out, br#"{"type":"pong","n":3}"#);
/// ```
pub struct ObjectWriter<'o> {
    out: &'o mut Vec<u8>,
    first: bool,
}

impl<'o> ObjectWriter<'o> {
    /// Opens an object at the end of `out`.
    #[inline]
    pub fn new(out: &'o mut Vec<u8>) -> Self {
        out.push(b'{');
        ObjectWriter { out, first: true }
    }

    /// Writes `"key":` (with a leading comma when needed) and returns the
    /// buffer for the value. `key` must not need escaping.
    #[inline]
    pub fn key(&mut self, key: &str) -> &mut Vec<u8> {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        self.out.push(b'"');
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
        self.out
    }

    /// A string member.
    #[inline]
    pub fn str(&mut self, key: &str, v: &str) {
        let o = self.key(key);
        write_str(o, v);
    }

    /// A string member whose value needs no escaping (our own timestamps, codes).
    #[inline]
    pub fn raw_str(&mut self, key: &str, v: &str) {
        let o = self.key(key);
        o.push(b'"');
        o.extend_from_slice(v.as_bytes());
        o.push(b'"');
    }

    /// An unsigned integer member.
    #[inline]
    pub fn u64(&mut self, key: &str, v: u64) {
        let o = self.key(key);
        write_u64(o, v);
    }

    /// A member whose value is copied from a parsed value.
    #[inline]
    pub fn value(&mut self, key: &str, v: &JsonValue<'_, '_>) {
        let o = self.key(key);
        v.write_json(o);
    }

    /// Bytes in the buffer so far (to mark where members lie).
    #[inline]
    pub fn written(&self) -> usize {
        self.out.len()
    }

    /// A `null` member.
    #[inline]
    pub fn null(&mut self, key: &str) {
        self.key(key).extend_from_slice(b"null");
    }

    /// Closes the object.
    #[inline]
    pub fn finish(self) {
        self.out.push(b'}');
    }
}

/// Writes a response frame: header, `{"type":…`, the caller's fields, the
/// request's `id`, `}`. Everything lands in `out` with no allocation once
/// `out` has capacity.
#[inline]
pub fn write_response(
    out: &mut Vec<u8>,
    type_name: &str,
    id: Option<&JsonValue<'_, '_>>,
    fields: impl FnOnce(&mut ObjectWriter<'_>),
) {
    let start = super::frame::begin_frame(out);
    let mut o = ObjectWriter::new(out);
    o.raw_str("type", type_name);
    fields(&mut o);
    if let Some(id) = id {
        o.value("id", id);
    }
    o.finish();
    super::frame::finish_frame(out, start);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(src: &str) -> String {
        let mut p = JsonParser::new();
        let mut buf = src.as_bytes().to_vec();
        p.parse(&mut buf, |v| {
            let mut out = Vec::new();
            v.unwrap().write_json(&mut out);
            String::from_utf8(out).unwrap()
        })
    }

    #[test]
    fn writes_back_what_it_parsed() {
        for src in [
            r#"{"a":1,"b":[1,2,{"c":null}],"d":{"e":"f\"g"},"h":[],"i":{}}"#,
            r#"[[[]],[{}],{"x":[true,false]}]"#,
            r#""plain""#,
            r#"-12"#,
            r#"{"nested":{"deep":{"deeper":[1,[2,[3]]]}},"after":true}"#,
            r#"1.5"#,
        ] {
            let got = roundtrip(src);
            let a: serde_json::Value = serde_json::from_str(src).unwrap();
            let b: serde_json::Value = serde_json::from_str(&got).unwrap();
            assert_eq!(a, b, "{src} -> {got}");
        }
    }

    #[test]
    fn deep_nesting_does_not_recurse() {
        let depth = 100_000;
        let src = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        assert_eq!(roundtrip(&src), src);
    }

    #[test]
    fn escapes_match_serde_json() {
        for s in [
            "",
            "plain ascii text that is long enough for words",
            "quote\" back\\slash",
            "ctl \u{0001}\u{001f}\n\r\t\u{0008}\u{000c}",
            "unicode é 漢字 🎉 and \"more\" 12345678",
            "\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"",
        ] {
            let mut out = Vec::new();
            write_str(&mut out, s);
            let back: String = serde_json::from_slice(&out).unwrap();
            assert_eq!(back, s);
        }
    }

    #[test]
    fn block_scan_agrees_with_bytewise() {
        for b in 0..=255u8 {
            let mut block = [b'a'; SCAN_BLOCK];
            block[37] = b;
            assert_eq!(block_needs_escape(&block), needs_escape(b), "byte {b:#x}");
        }
    }

    #[test]
    fn long_strings_with_escapes_anywhere() {
        for pos in [0usize, 1, 63, 64, 65, 127, 128, 200] {
            let mut s = "y".repeat(201);
            s.replace_range(pos..pos + 1, "\"");
            let mut out = Vec::new();
            write_str(&mut out, &s);
            let back: String = serde_json::from_slice(&out).unwrap();
            assert_eq!(back, s, "escape at {pos}");
        }
    }

    #[test]
    fn lone_surrogates_are_found_and_pairs_are_not() {
        for (src, lone) in [
            (r#""a\ud800b""#, true),
            (r#""a\udbff""#, true),
            (r#""\udc00""#, true),
            (r#""\ud800\u0041""#, true),
            (r#""\ud800\ud800""#, true),
            (r#""\ud83d\ude00""#, false),
            (r#""\\ud800""#, false), // an escaped backslash, then text
            (r#""\u00e9 \n \"""#, false),
            (r#""plain""#, false),
        ] {
            assert_eq!(has_lone_surrogate_escape(src.as_bytes()), lone, "{src}");
        }
        let mut long = "x".repeat(200);
        long.push_str(r"\ud800");
        assert!(has_lone_surrogate_escape(long.as_bytes()));
        let mut p = JsonParser::new();
        let mut buf = br#"{"content":"a\ud800b"}"#.to_vec();
        assert!(p.parse(&mut buf, |v| v.is_err()));
        let mut buf = br#"{"content":"\ud83d\ude00"}"#.to_vec();
        assert!(
            p.parse(&mut buf, |v| v.unwrap().get("content").unwrap().as_str()
                == Some("\u{1F600}"))
        );
    }

    #[test]
    fn get_skips_nested_values() {
        let mut p = JsonParser::new();
        let mut buf = br#"{"x":{"type":"inner"},"y":[{"type":1}],"type":"outer"}"#.to_vec();
        p.parse(&mut buf, |v| {
            let v = v.unwrap();
            assert_eq!(v.get("type").unwrap().as_str(), Some("outer"));
            assert!(v.get("missing").is_none());
        });
    }

    #[test]
    fn invalid_inputs_are_errors() {
        let mut p = JsonParser::new();
        for bad in [
            &b"{"[..],
            b"",
            b"{\"a\":}",
            b"\xff\xfe",
            b"{\"a\":\"\xc3\x28\"}",
            b"nul",
        ] {
            let mut buf = bad.to_vec();
            assert!(p.parse(&mut buf, |v| v.is_err()), "{bad:?}");
        }
    }
}
