//! The frame codec between a session's frames and its transport: requests
//! that arrive compressed are decompressed before parsing, and replies
//! over the threshold are compressed before they are queued. Broadcasts
//! arrive compressed already (the router packs them once per codec).
//!
//! Only a connection that negotiated a codec with `hello` gets here; the
//! others never pay more than one `Option` check per frame.

use super::config::SMALL_PARTIAL_BYTES;
use super::counters::bump;
use super::dispatch::Closing;
use super::env::Env;
use super::host::Host;
use super::output::Output;
use crate::protocol::codec::{Codec, DecompressError};
use crate::protocol::{ErrorCode, HEADER_LEN};

/// A decompression buffer larger than this is freed after its frame (and
/// leaves the partial-frame budget); smaller ones are kept for the next.
const KEEP_INFLATE_CAPACITY: usize = 256 << 10;

/// Decompresses `payload` into the shard's inflate buffer, which is
/// returned (taken out of `env`; give it back with [`give_inflate`]).
/// Output stops at `max_frame_bytes`, and at what the shard's partial-frame
/// budget leaves, so a bomb costs at most that.
pub(super) fn inflate<H: Host>(
    env: &mut Env<'_, H>,
    codec: Codec,
    payload: &[u8],
) -> Result<Vec<u8>, (Vec<u8>, Closing)> {
    let mut buf = std::mem::take(&mut env.inflate);
    let held = buf.capacity();
    let max_frame = env.config.max_frame_bytes;
    let room = env
        .config
        .max_partial_bytes
        .saturating_sub(env.partial_bytes - held)
        .max(SMALL_PARTIAL_BYTES);
    let limit = max_frame.min(room);
    let r = env.decompressor.decompress(codec, payload, &mut buf, limit);
    env.set_partial(held, buf.capacity());
    match r {
        Ok(()) => {
            let c = &env.counters.compression;
            bump(&c.frames_in, 1);
            bump(&c.bytes_in_wire, payload.len() as u64);
            bump(&c.bytes_in_plain, buf.len() as u64);
            Ok(buf)
        }
        Err(DecompressError::TooLarge { .. }) if limit < max_frame => Err((
            buf,
            (
                ErrorCode::ServerFull,
                "server input buffer budget exhausted; retry later",
            ),
        )),
        Err(DecompressError::TooLarge { .. }) => Err((
            buf,
            (
                ErrorCode::FrameTooLarge,
                "decompressed frame exceeds the server's max_frame_bytes",
            ),
        )),
        Err(DecompressError::Corrupt { .. }) => Err((
            buf,
            (
                ErrorCode::CompressionError,
                "compressed frame is not a valid stream of the negotiated codec",
            ),
        )),
    }
}

/// Returns the inflate buffer to the shard, freeing it if it grew large.
pub(super) fn give_inflate<H: Host>(env: &mut Env<'_, H>, mut buf: Vec<u8>) {
    if buf.capacity() > KEEP_INFLATE_CAPACITY {
        env.set_partial(buf.capacity(), 0);
        buf = Vec::new();
    }
    buf.clear();
    env.inflate = buf;
}

/// Compresses, in place, the reply frames written to `out` from byte
/// `start` on whose payload is over the threshold (when that saves bytes).
pub(super) fn pack_replies<H: Host>(
    env: &mut Env<'_, H>,
    codec: Codec,
    out: &mut Output,
    start: usize,
) {
    let threshold = env.config.compression_threshold_bytes;
    let b = &mut out.building;
    if b.len() - start <= HEADER_LEN + threshold {
        return; // the common case: small replies, nothing to do
    }
    let mut packed = std::mem::take(&mut env.deflate);
    packed.clear();
    let c = &env.counters.compression;
    let mut pos = start;
    while pos + HEADER_LEN <= b.len() {
        let len =
            u32::from_be_bytes(b[pos..pos + HEADER_LEN].try_into().expect("4 bytes")) as usize;
        let end = pos + HEADER_LEN + len;
        let payload = &b[pos + HEADER_LEN..end];
        let at = packed.len();
        if len > threshold && env.compressor.compress_frame(codec, payload, &mut packed) {
            bump(&c.compressions, 1);
            c.frame_out(len, packed.len() - at - HEADER_LEN);
        } else {
            if len > threshold {
                bump(&c.compressions, 1); // tried; it did not pay
            }
            packed.extend_from_slice(&b[pos..end]);
        }
        pos = end;
    }
    b.truncate(start);
    b.extend_from_slice(&packed);
    env.deflate = packed;
}
