//! Per-frame compression: the codecs a connection may negotiate with
//! `hello`, and bounded compression and decompression of one frame's
//! payload.
//!
//! Each compressed frame is self-contained: one complete zlib stream
//! (RFC 1950, `deflate`) or one complete zstd frame, so a receiver needs
//! no state from earlier frames (Python's `zlib.decompress` takes it as
//! is). The contexts here are reused from frame to frame only to avoid
//! allocating them each time; nothing carries over between frames.
//!
//! The frame header marks a compressed payload with its top bit
//! ([`COMPRESSED_FLAG`]); the low 31 bits are the compressed length. Only a
//! connection that negotiated a codec may set it (see docs/PROTOCOL.md).

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use thiserror::Error;

/// The header bit of a compressed frame.
pub const COMPRESSED_FLAG: u32 = 1 << 31;

/// The default size above which a payload is worth compressing: below
/// it the codec's fixed overhead eats most of the saving, and small
/// frames stay on the fast path.
pub const DEFAULT_THRESHOLD: usize = 1024;

/// zstd level 1: the fast end, which still takes telemetry-like JSON
/// down several-fold (bench-results/README.md, "Compression").
const ZSTD_LEVEL: i32 = 1;
/// zlib level 1 for the same reason; the seed's examples use zlib's
/// default (6), which costs about 3× the CPU for a few percent.
const DEFLATE_LEVEL: u32 = 1;

/// Output is grown in steps of at most this much while decompressing, so
/// a small frame never reserves `max_frame_bytes`.
const INFLATE_STEP: usize = 64 << 10;

/// A compression codec a connection can negotiate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// zstd frames (`zstd`).
    Zstd,
    /// zlib streams (`deflate`), as the seed's examples use.
    Deflate,
}

impl Codec {
    /// How many codecs there are (the length of per-codec arrays).
    pub const COUNT: usize = 2;
    /// Every codec, in the order of per-codec arrays.
    pub const ALL: [Codec; Codec::COUNT] = [Codec::Zstd, Codec::Deflate];

    /// The name `hello` uses.
    pub const fn as_str(self) -> &'static str {
        match self {
            Codec::Zstd => "zstd",
            Codec::Deflate => "deflate",
        }
    }

    /// The codec of a `hello` name (`None` for names this build lacks).
    pub fn from_name(name: &str) -> Option<Codec> {
        Codec::ALL.into_iter().find(|c| c.as_str() == name)
    }

    /// Position in [`Codec::ALL`].
    #[inline]
    pub const fn index(self) -> usize {
        self as usize
    }
}

/// Why a compressed payload was refused.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum DecompressError {
    /// It inflates past the allowed size (a zip bomb, or simply too big).
    #[error("decompressed payload exceeds {limit} bytes")]
    TooLarge {
        /// The bound that was hit.
        limit: usize,
    },
    /// Not a valid stream of the codec, truncated, or with bytes after
    /// its end.
    #[error("invalid {codec} stream")]
    Corrupt {
        /// The codec's name.
        codec: &'static str,
    },
}

/// Compresses frames; one per shard (or per client connection), reused.
pub struct Compressor {
    zstd: zstd::bulk::Compressor<'static>,
    deflate: Compress,
}

impl std::fmt::Debug for Compressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Compressor")
    }
}

impl Default for Compressor {
    fn default() -> Self {
        Compressor::new()
    }
}

impl Compressor {
    /// Contexts for both codecs.
    pub fn new() -> Compressor {
        Compressor {
            zstd: zstd::bulk::Compressor::new(ZSTD_LEVEL).expect("zstd level 1 is valid"),
            deflate: Compress::new(Compression::new(DEFLATE_LEVEL), true),
        }
    }

    /// Appends `payload` to `out` as one compressed frame (header with
    /// [`COMPRESSED_FLAG`], then the compressed bytes) if that is smaller
    /// than the plain frame. Returns whether it did; if not, `out` is as it
    /// was and the caller sends the payload plain.
    pub fn compress_frame(&mut self, codec: Codec, payload: &[u8], out: &mut Vec<u8>) -> bool {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        let body = out.len();
        let ok = match codec {
            Codec::Zstd => {
                // zstd writes a slice from its start (a Vec it would fill
                // from index 0), so it gets the tail of `out` as one.
                out.resize(body + zstd::zstd_safe::compress_bound(payload.len()), 0);
                match self.zstd.compress_to_buffer(payload, &mut out[body..]) {
                    Ok(n) => {
                        out.truncate(body + n);
                        true
                    }
                    Err(_) => {
                        out.truncate(body);
                        false
                    }
                }
            }
            Codec::Deflate => {
                // Room for the plain size only: a stream that does not fit
                // saves nothing, and is abandoned.
                out.reserve(payload.len());
                self.deflate.reset();
                matches!(
                    self.deflate
                        .compress_vec(payload, out, FlushCompress::Finish),
                    Ok(Status::StreamEnd)
                )
            }
        };
        let n = out.len() - body;
        if !ok || n >= payload.len() || n as u64 >= COMPRESSED_FLAG as u64 {
            out.truncate(start);
            return false;
        }
        out[start..body].copy_from_slice(&(n as u32 | COMPRESSED_FLAG).to_be_bytes());
        true
    }
}

/// Decompresses frames; one per shard (or per client connection), reused.
pub struct Decompressor {
    zstd: zstd::stream::raw::Decoder<'static>,
    deflate: Decompress,
}

impl std::fmt::Debug for Decompressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Decompressor")
    }
}

impl Default for Decompressor {
    fn default() -> Self {
        Decompressor::new()
    }
}

impl Decompressor {
    /// Contexts for both codecs.
    pub fn new() -> Decompressor {
        Decompressor {
            zstd: zstd::stream::raw::Decoder::new().expect("a zstd decoder"),
            deflate: Decompress::new(true),
        }
    }

    /// Replaces `out`'s contents with `input` decompressed. Output beyond
    /// `limit` bytes is never produced: the frame is refused with
    /// [`DecompressError::TooLarge`] as soon as it would pass the limit,
    /// and `out` grows in steps, so a bomb costs at most `limit` bytes.
    pub fn decompress(
        &mut self,
        codec: Codec,
        input: &[u8],
        out: &mut Vec<u8>,
        limit: usize,
    ) -> Result<(), DecompressError> {
        out.clear();
        let corrupt = DecompressError::Corrupt {
            codec: codec.as_str(),
        };
        match codec {
            Codec::Deflate => {
                self.deflate.reset(true);
                let mut pos = 0;
                loop {
                    grow(out, limit)?;
                    let before = self.deflate.total_in();
                    let status = self
                        .deflate
                        .decompress_vec(&input[pos..], out, FlushDecompress::None)
                        .map_err(|_| corrupt)?;
                    pos += (self.deflate.total_in() - before) as usize;
                    match status {
                        Status::StreamEnd if pos == input.len() => return Ok(()),
                        Status::StreamEnd => return Err(corrupt), // trailing bytes
                        // Input used up without the end of the stream: truncated.
                        _ if pos == input.len() && out.len() < out.capacity() => {
                            return Err(corrupt)
                        }
                        _ => {}
                    }
                }
            }
            Codec::Zstd => {
                use zstd::stream::raw::{InBuffer, Operation, OutBuffer};
                self.zstd.reinit().map_err(|_| corrupt)?;
                let mut inb = InBuffer::around(input);
                loop {
                    grow(out, limit)?;
                    let len = out.len();
                    let cap = out.capacity();
                    // Writes into the Vec's spare capacity from `len` on
                    // and sets its length when dropped.
                    let hint = {
                        let mut outb = OutBuffer::around_pos(out, len);
                        self.zstd.run(&mut inb, &mut outb).map_err(|_| corrupt)?
                    };
                    if hint == 0 {
                        // A frame ended: it must be the whole input.
                        return if inb.pos() == input.len() {
                            Ok(())
                        } else {
                            Err(corrupt)
                        };
                    }
                    if inb.pos() == input.len() && out.len() < cap {
                        return Err(corrupt); // truncated
                    }
                }
            }
        }
    }
}

/// Makes room to decompress more into `out`, refusing past `limit`: one
/// byte of room past the limit is allowed so that a stream producing
/// exactly `limit` bytes is told apart from one producing more.
fn grow(out: &mut Vec<u8>, limit: usize) -> Result<(), DecompressError> {
    if out.len() < out.capacity() {
        return Ok(());
    }
    if out.len() > limit {
        return Err(DecompressError::TooLarge { limit });
    }
    let room = (limit + 1 - out.len()).min(INFLATE_STEP.max(out.len()));
    out.reserve_exact(room);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn telemetry(n: usize) -> Vec<u8> {
        let mut s = String::from("{\"type\":\"echo\",\"content\":[");
        let mut i = 0;
        while s.len() < n {
            s.push_str(&format!(
                "{{\"sensor\":\"s-{}\",\"temp\":{}.{},\"ok\":true}},",
                i % 17,
                20 + i % 9,
                i % 10
            ));
            i += 1;
        }
        s.push_str("0]}");
        s.into_bytes()
    }

    fn round_trip(codec: Codec, payload: &[u8]) -> Vec<u8> {
        let mut c = Compressor::new();
        let mut d = Decompressor::new();
        let mut framed = b"prefix".to_vec();
        assert!(c.compress_frame(codec, payload, &mut framed));
        assert_eq!(&framed[..6], b"prefix", "appends after what was there");
        let h = u32::from_be_bytes(framed[6..10].try_into().unwrap());
        assert_ne!(h & COMPRESSED_FLAG, 0);
        let n = (h & !COMPRESSED_FLAG) as usize;
        assert_eq!(n, framed.len() - 10);
        assert!(n < payload.len());
        let mut out = Vec::new();
        d.decompress(codec, &framed[10..], &mut out, 1 << 20)
            .expect("round trip");
        out
    }

    #[test]
    fn both_codecs_round_trip_and_contexts_are_reusable() {
        for codec in Codec::ALL {
            for size in [1500, 16 << 10, 64 << 10, 700 << 10] {
                let p = telemetry(size);
                assert_eq!(round_trip(codec, &p), p, "{codec:?} {size}");
            }
            // The same contexts, frame after frame.
            let mut c = Compressor::new();
            let mut d = Decompressor::new();
            for size in [2000, 50_000, 3000] {
                let p = telemetry(size);
                let mut f = Vec::new();
                assert!(c.compress_frame(codec, &p, &mut f));
                let mut out = Vec::new();
                d.decompress(codec, &f[4..], &mut out, 1 << 20).unwrap();
                assert_eq!(out, p);
            }
        }
    }

    #[test]
    fn the_deflate_stream_is_plain_zlib() {
        // What Python's zlib.decompress (or any zlib) reads.
        let p = telemetry(4000);
        let mut f = Vec::new();
        assert!(Compressor::new().compress_frame(Codec::Deflate, &p, &mut f));
        let mut z = flate2::read::ZlibDecoder::new(&f[4..]);
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut z, &mut out).unwrap();
        assert_eq!(out, p);
    }

    #[test]
    fn incompressible_payloads_are_left_alone() {
        let mut x = 0x9e37_79b9_u32;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        for codec in Codec::ALL {
            let mut out = vec![1, 2, 3];
            assert!(!Compressor::new().compress_frame(codec, &noise, &mut out));
            assert_eq!(out, [1, 2, 3]);
        }
    }

    #[test]
    fn a_bomb_stops_at_the_limit() {
        let zeros = vec![b' '; 8 << 20];
        for codec in Codec::ALL {
            let mut f = Vec::new();
            assert!(Compressor::new().compress_frame(codec, &zeros, &mut f));
            assert!(f.len() < 64 << 10, "8 MiB of spaces compresses to little");
            let mut out = Vec::new();
            let r = Decompressor::new().decompress(codec, &f[4..], &mut out, 1 << 20);
            assert_eq!(r, Err(DecompressError::TooLarge { limit: 1 << 20 }));
            assert!(out.capacity() <= (1 << 20) + 1, "{}", out.capacity());
            // Exactly at the limit is fine.
            let exact = vec![b' '; 1 << 20];
            let mut f = Vec::new();
            assert!(Compressor::new().compress_frame(codec, &exact, &mut f));
            Decompressor::new()
                .decompress(codec, &f[4..], &mut out, 1 << 20)
                .unwrap();
            assert_eq!(out.len(), 1 << 20);
        }
    }

    #[test]
    fn garbage_truncation_and_trailing_bytes_are_corrupt() {
        let p = telemetry(5000);
        for codec in Codec::ALL {
            let mut f = Vec::new();
            assert!(Compressor::new().compress_frame(codec, &p, &mut f));
            let body = &f[4..];
            let mut d = Decompressor::new();
            let mut out = Vec::new();
            let corrupt = Err(DecompressError::Corrupt {
                codec: codec.as_str(),
            });
            assert_eq!(
                d.decompress(codec, b"not a stream", &mut out, 1 << 20),
                corrupt
            );
            assert_eq!(
                d.decompress(codec, &body[..body.len() / 2], &mut out, 1 << 20),
                corrupt
            );
            let mut extra = body.to_vec();
            extra.extend_from_slice(b"tail");
            assert_eq!(d.decompress(codec, &extra, &mut out, 1 << 20), corrupt);
            // And the context still works afterwards.
            d.decompress(codec, body, &mut out, 1 << 20).unwrap();
            assert_eq!(out, p);
        }
    }
}
