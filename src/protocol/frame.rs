//! Length-prefixed framing: a 4-byte big-endian length `N`, then `N` bytes of payload.
//!
//! [`FrameDecoder`] is incremental and sans-IO: feed it whatever chunks the
//! transport produced and it hands out complete payloads, in place (no copy)
//! when a frame lies inside one chunk, and from its own reused buffer when a
//! frame straddles chunks. It never reserves memory for a length it has only
//! been told about: the straddle buffer grows with the bytes that actually
//! arrived, so a hostile header costs nothing, and its growth stops at the
//! frame's size (header + payload), never past it.
//!
//! A receiver that shares a memory budget among many decoders (the server's
//! shard) passes each feed an upper bound on the straddle buffer's capacity
//! ([`FrameDecoder::feed_bounded`]) and reads back what the buffer holds
//! ([`FrameDecoder::buffered_capacity`]); the decoder does no accounting of
//! its own.

use super::error::FrameError;
use std::ops::ControlFlow;

/// Bytes in a frame header.
pub const HEADER_LEN: usize = 4;

/// Default payload limit: 1 MiB, enough for any sane JSON message while
/// bounding what one connection can make the server hold.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 1 << 20;

/// After a straddling frame completes, a straddle buffer larger than this is
/// freed rather than kept, so a connection that once sent a large frame does
/// not pin that memory while idle.
const KEEP_STRADDLE_CAPACITY: usize = 64 * 1024;

/// Where a decoder gets and returns its straddle buffer, so that a busy
/// thread recycles a few large buffers instead of every connection keeping
/// (or reallocating) its own. The server passes its shard pool; [`NoPool`]
/// keeps the buffer in the decoder.
pub trait BufferPool {
    /// A cleared buffer, if one is available.
    fn take(&mut self) -> Option<Vec<u8>>;
    /// Offers a cleared buffer back; a pool that does not keep it returns it.
    fn give(&mut self, buf: Vec<u8>) -> Option<Vec<u8>>;
}

/// No pool: the decoder keeps a straddle buffer of up to 64 KiB between
/// frames and frees a larger one.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoPool;

impl BufferPool for NoPool {
    fn take(&mut self) -> Option<Vec<u8>> {
        None
    }
    fn give(&mut self, buf: Vec<u8>) -> Option<Vec<u8>> {
        Some(buf)
    }
}

/// A bounded pool of spare byte buffers, for one thread: reply buffers
/// after their send completes, straddle buffers after their frame
/// completes. Recycling them keeps large messages from costing an
/// allocation each (and, past glibc's mmap threshold, page faults).
/// Buffers the pool declines are dropped, so with a pool a connection
/// keeps no straddle buffer between frames.
#[derive(Debug)]
pub struct BoundedPool {
    bufs: Vec<Vec<u8>>,
    bytes: usize,
    max_capacity: usize,
    max_bytes: usize,
}

impl BoundedPool {
    /// Keeps buffers of at most `max_capacity` bytes, `max_bytes` in all.
    pub fn new(max_capacity: usize, max_bytes: usize) -> Self {
        BoundedPool {
            bufs: Vec::new(),
            bytes: 0,
            max_capacity,
            max_bytes,
        }
    }

    /// Bytes of capacity held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl BufferPool for BoundedPool {
    fn take(&mut self) -> Option<Vec<u8>> {
        let v = self.bufs.pop()?;
        self.bytes -= v.capacity();
        Some(v)
    }

    fn give(&mut self, mut buf: Vec<u8>) -> Option<Vec<u8>> {
        let cap = buf.capacity();
        if cap > 0 && cap <= self.max_capacity && self.bytes + cap <= self.max_bytes {
            buf.clear();
            self.bytes += cap;
            self.bufs.push(buf);
        }
        None
    }
}

/// Incremental frame decoder. One per connection.
///
/// Call [`FrameDecoder::feed`] with each chunk in arrival order. After it
/// returns an error the stream is out of step: close the connection.
#[derive(Debug)]
pub struct FrameDecoder {
    max_frame_bytes: usize,
    /// Bytes of the frame in progress (header included) that arrived in
    /// earlier chunks. Empty when the previous chunk ended on a frame boundary.
    straddle: Vec<u8>,
    poisoned: Option<FrameError>,
    /// The top bit of a header marks a compressed payload (only after the
    /// connection negotiated a codec; before that such a header is simply a
    /// length over the limit).
    flagged: bool,
}

impl FrameDecoder {
    /// A decoder that rejects payloads longer than `max_frame_bytes`.
    pub fn new(max_frame_bytes: usize) -> Self {
        FrameDecoder {
            max_frame_bytes,
            straddle: Vec::new(),
            poisoned: None,
            flagged: false,
        }
    }

    /// The configured payload limit.
    pub fn max_frame_bytes(&self) -> usize {
        self.max_frame_bytes
    }

    /// Bytes held for a frame that has not completed yet.
    pub fn buffered(&self) -> usize {
        self.straddle.len()
    }

    /// Capacity held by the straddle buffer (for memory accounting).
    pub fn buffered_capacity(&self) -> usize {
        self.straddle.capacity()
    }

    /// Whether a frame is in progress (a truncated frame if the peer closes now).
    pub fn in_frame(&self) -> bool {
        !self.straddle.is_empty()
    }

    /// From now on a header with the top bit set announces a compressed
    /// payload of the low 31 bits' length (see [`super::codec`]).
    pub fn accept_compressed(&mut self) {
        self.flagged = true;
    }

    /// Checks a complete header and returns the payload length, and
    /// whether the payload is compressed.
    fn check_header(&self, h: [u8; HEADER_LEN]) -> Result<(usize, bool), FrameError> {
        let raw = u32::from_be_bytes(h);
        let compressed = self.flagged && raw & super::codec::COMPRESSED_FLAG != 0;
        let len = match compressed {
            true => (raw & !super::codec::COMPRESSED_FLAG) as u64,
            false => raw as u64,
        };
        if len == 0 {
            return Err(FrameError::Empty);
        }
        if len > self.max_frame_bytes as u64 {
            return Err(FrameError::TooLarge {
                len,
                max: self.max_frame_bytes,
            });
        }
        Ok((len as usize, compressed))
    }

    /// Feeds one chunk. `on_frame` is called with each complete payload, in
    /// order; it may modify the payload in place (the JSON parser does).
    /// Returning `ControlFlow::Break` from it stops decoding; the rest of the
    /// chunk is dropped (the caller is closing the connection).
    ///
    /// Returns the first framing error; frames before it have been delivered.
    pub fn feed<F>(&mut self, chunk: &mut [u8], on_frame: F) -> Result<(), FrameError>
    where
        F: FnMut(&mut [u8]) -> ControlFlow<()>,
    {
        self.feed_pooled(chunk, &mut NoPool, on_frame)
    }

    /// Like [`FrameDecoder::feed`], but a straddle buffer is taken from
    /// `pool` when a frame starts to straddle and given back as soon as it
    /// completes, so an idle connection holds no buffer at all.
    pub fn feed_pooled<P, F>(
        &mut self,
        chunk: &mut [u8],
        pool: &mut P,
        on_frame: F,
    ) -> Result<(), FrameError>
    where
        P: BufferPool + ?Sized,
        F: FnMut(&mut [u8]) -> ControlFlow<()>,
    {
        self.feed_bounded(chunk, pool, usize::MAX, on_frame)
    }

    /// Like [`FrameDecoder::feed_pooled`], but the straddle buffer's
    /// capacity may not grow past `max_capacity` bytes during this call.
    /// When keeping the bytes of a partial frame would need more, the feed
    /// stops with [`FrameError::OverBudget`] (frames before that point have
    /// been delivered) and the decoder is poisoned like after any error.
    ///
    /// Capacity the buffer already holds is never taken away, and a pooled
    /// buffer larger than `max_capacity` is handed back and a smaller one
    /// allocated, so the pool never causes a refusal.
    pub fn feed_bounded<P, F>(
        &mut self,
        chunk: &mut [u8],
        pool: &mut P,
        max_capacity: usize,
        mut on_frame: F,
    ) -> Result<(), FrameError>
    where
        P: BufferPool + ?Sized,
        F: FnMut(&mut [u8]) -> ControlFlow<()>,
    {
        self.feed_flagged(chunk, pool, max_capacity, |p, _| on_frame(p))
    }

    /// Like [`FrameDecoder::feed_bounded`], and `on_frame` is also told
    /// whether the payload is compressed (always false until
    /// [`FrameDecoder::accept_compressed`]).
    pub fn feed_flagged<P, F>(
        &mut self,
        chunk: &mut [u8],
        pool: &mut P,
        max_capacity: usize,
        mut on_frame: F,
    ) -> Result<(), FrameError>
    where
        P: BufferPool + ?Sized,
        F: FnMut(&mut [u8], bool) -> ControlFlow<()>,
    {
        if let Some(e) = self.poisoned {
            return Err(e);
        }
        let r = self.feed_inner(chunk, pool, max_capacity, &mut on_frame);
        if let Err(e) = r {
            self.poisoned = Some(e);
            self.reset(pool);
        }
        r
    }

    /// Forgets a partial frame: its buffer goes back to `pool` (or is freed)
    /// and the decoder holds nothing. For a caller that has stopped reading
    /// the stream (the connection is closing): the next byte fed would be
    /// taken for the start of a header.
    pub fn reset<P: BufferPool + ?Sized>(&mut self, pool: &mut P) {
        let mut buf = std::mem::take(&mut self.straddle);
        if buf.capacity() > 0 {
            buf.clear();
            drop(pool.give(buf));
        }
    }

    /// Makes room for `more` bytes of the frame in progress, which is
    /// `frame_len` bytes long in all (header included): capacity grows
    /// geometrically, as `Vec` would, but never past the frame's size, nor
    /// past `max_capacity`, squeezing the last step to fit when possible.
    fn reserve(
        &mut self,
        more: usize,
        frame_len: usize,
        max_capacity: usize,
    ) -> Result<(), FrameError> {
        let len = self.straddle.len();
        let cap = self.straddle.capacity();
        let needed = len + more;
        if needed <= cap {
            return Ok(());
        }
        if needed > max_capacity {
            return Err(FrameError::OverBudget {
                needed,
                max: max_capacity,
            });
        }
        let target = cap
            .saturating_mul(2)
            .min(frame_len)
            .min(max_capacity)
            .max(needed);
        self.straddle.reserve_exact(target - len);
        Ok(())
    }

    /// Starts keeping bytes of a frame that continues in the next chunk;
    /// the frame is `frame_len` bytes long in all (header included), or
    /// `HEADER_LEN` while its header is incomplete.
    fn begin_straddle<P: BufferPool + ?Sized>(
        &mut self,
        pool: &mut P,
        bytes: &[u8],
        frame_len: usize,
        max_capacity: usize,
    ) -> Result<(), FrameError> {
        if self.straddle.capacity() == 0 {
            if let Some(mut v) = pool.take() {
                v.clear();
                if v.capacity() <= max_capacity {
                    self.straddle = v;
                } else {
                    // Too large for what this call may hold: back it goes
                    // (it was just taken, so the pool has room for it).
                    drop(pool.give(v));
                }
            }
        }
        self.reserve(bytes.len(), frame_len, max_capacity)?;
        self.straddle.extend_from_slice(bytes);
        Ok(())
    }

    fn feed_inner<P, F>(
        &mut self,
        chunk: &mut [u8],
        pool: &mut P,
        max_capacity: usize,
        on_frame: &mut F,
    ) -> Result<(), FrameError>
    where
        P: BufferPool + ?Sized,
        F: FnMut(&mut [u8], bool) -> ControlFlow<()>,
    {
        let mut pos = 0;
        // 1. Finish a frame begun in an earlier chunk.
        if !self.straddle.is_empty() {
            if self.straddle.len() < HEADER_LEN {
                let take = (HEADER_LEN - self.straddle.len()).min(chunk.len());
                self.reserve(take, HEADER_LEN, max_capacity)?;
                self.straddle.extend_from_slice(&chunk[..take]);
                pos = take;
                if self.straddle.len() < HEADER_LEN {
                    return Ok(());
                }
            }
            let mut h = [0u8; HEADER_LEN];
            h.copy_from_slice(&self.straddle[..HEADER_LEN]);
            let (len, compressed) = self.check_header(h)?;
            let have = self.straddle.len() - HEADER_LEN;
            let take = (len - have).min(chunk.len() - pos);
            self.reserve(take, HEADER_LEN + len, max_capacity)?;
            self.straddle.extend_from_slice(&chunk[pos..pos + take]);
            pos += take;
            if self.straddle.len() - HEADER_LEN < len {
                return Ok(());
            }
            let flow = on_frame(&mut self.straddle[HEADER_LEN..], compressed);
            let mut done = std::mem::take(&mut self.straddle);
            done.clear();
            // A buffer the pool declines is kept only if it is modest.
            if let Some(back) = pool.give(done) {
                if back.capacity() <= KEEP_STRADDLE_CAPACITY {
                    self.straddle = back;
                }
            }
            if flow.is_break() {
                return Ok(());
            }
        }
        // 2. Whole frames inside this chunk: handed out in place.
        loop {
            let rest = chunk.len() - pos;
            if rest < HEADER_LEN {
                if rest > 0 {
                    self.begin_straddle(pool, &chunk[pos..], HEADER_LEN, max_capacity)?;
                }
                return Ok(());
            }
            let mut h = [0u8; HEADER_LEN];
            h.copy_from_slice(&chunk[pos..pos + HEADER_LEN]);
            let (len, compressed) = self.check_header(h)?;
            if rest - HEADER_LEN < len {
                // 3. The tail straddles into the next chunk: keep what arrived.
                return self.begin_straddle(pool, &chunk[pos..], HEADER_LEN + len, max_capacity);
            }
            let start = pos + HEADER_LEN;
            pos = start + len;
            if on_frame(&mut chunk[start..pos], compressed).is_break() {
                return Ok(());
            }
        }
    }
}

/// Starts a frame at the end of `out`: reserves the header and returns the
/// offset to pass to [`finish_frame`] once the payload has been appended.
#[inline]
pub fn begin_frame(out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    start
}

/// Patches the header of the frame begun at `start`. Returns the payload length.
///
/// # Panics
/// If the payload exceeds `u32::MAX` bytes, which the server's limits make
/// impossible (responses are bounded by `max_frame_bytes` plus a small overhead).
#[inline]
pub fn finish_frame(out: &mut [u8], start: usize) -> usize {
    let len = out.len() - start - HEADER_LEN;
    let n = u32::try_from(len).expect("frame payload over 4 GiB");
    out[start..start + HEADER_LEN].copy_from_slice(&n.to_be_bytes());
    len
}

/// Appends one whole frame (header + `payload`) to `out`.
pub fn encode_frame(out: &mut Vec<u8>, payload: &[u8]) {
    let start = begin_frame(out);
    out.extend_from_slice(payload);
    finish_frame(out, start);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(dec: &mut FrameDecoder, chunks: &mut [Vec<u8>]) -> Result<Vec<Vec<u8>>, FrameError> {
        let mut got = Vec::new();
        for c in chunks.iter_mut() {
            dec.feed(c, |p| {
                got.push(p.to_vec());
                ControlFlow::Continue(())
            })?;
        }
        Ok(got)
    }

    fn frames(payloads: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in payloads {
            encode_frame(&mut out, p);
        }
        out
    }

    #[test]
    fn many_frames_in_one_chunk() {
        let mut d = FrameDecoder::new(100);
        let got = collect(&mut d, &mut [frames(&[b"a", b"bc", b"{}"])]).unwrap();
        assert_eq!(got, vec![b"a".to_vec(), b"bc".to_vec(), b"{}".to_vec()]);
        assert!(!d.in_frame());
    }

    #[test]
    fn frame_split_byte_by_byte() {
        let bytes = frames(&[b"hello", b"world!"]);
        let mut chunks: Vec<Vec<u8>> = bytes.iter().map(|b| vec![*b]).collect();
        let mut d = FrameDecoder::new(100);
        let got = collect(&mut d, &mut chunks).unwrap();
        assert_eq!(got, vec![b"hello".to_vec(), b"world!".to_vec()]);
    }

    #[test]
    fn in_place_frames_are_not_copied() {
        let mut buf = frames(&[b"xyz"]);
        let base = buf.as_ptr() as usize;
        let mut d = FrameDecoder::new(100);
        d.feed(&mut buf, |p| {
            assert_eq!(p.as_ptr() as usize, base + HEADER_LEN);
            ControlFlow::Continue(())
        })
        .unwrap();
    }

    #[test]
    fn the_top_bit_marks_compression_only_once_accepted() {
        let mut bytes = (5u32 | super::super::codec::COMPRESSED_FLAG)
            .to_be_bytes()
            .to_vec();
        bytes.extend_from_slice(b"abcde");
        let mut d = FrameDecoder::new(1 << 20);
        let r = d.feed(&mut bytes.clone(), |_| ControlFlow::Continue(()));
        assert!(matches!(r, Err(FrameError::TooLarge { .. })), "{r:?}");
        let mut d = FrameDecoder::new(1 << 20);
        d.accept_compressed();
        let mut seen = Vec::new();
        let mut two = bytes.clone();
        two.extend_from_slice(&[0, 0, 0, 2, b'{', b'}']);
        // Split mid-header, so the straddle path sees the flag too.
        let (a, b) = two.split_at_mut(2);
        for chunk in [a, b] {
            d.feed_flagged(chunk, &mut NoPool, usize::MAX, |p, packed| {
                seen.push((p.to_vec(), packed));
                ControlFlow::Continue(())
            })
            .unwrap();
        }
        assert_eq!(seen, [(b"abcde".to_vec(), true), (b"{}".to_vec(), false)]);
        // Flagged with a zero length: empty.
        let mut d = FrameDecoder::new(1 << 20);
        d.accept_compressed();
        let mut empty = super::super::codec::COMPRESSED_FLAG.to_be_bytes();
        let r = d.feed(&mut empty, |_| ControlFlow::Continue(()));
        assert_eq!(r, Err(FrameError::Empty));
    }

    #[test]
    fn zero_length_is_empty_frame() {
        let mut d = FrameDecoder::new(100);
        let r = d.feed(&mut [0, 0, 0, 0], |_| ControlFlow::Continue(()));
        assert_eq!(r, Err(FrameError::Empty));
        // Poisoned: later input is refused with the same error.
        let r = d.feed(&mut frames(&[b"x"]), |_| panic!("no frames after an error"));
        assert_eq!(r, Err(FrameError::Empty));
    }

    #[test]
    fn oversize_is_rejected_from_header_alone() {
        let mut d = FrameDecoder::new(100);
        let r = d.feed(&mut [0, 0, 0, 101], |_| ControlFlow::Continue(()));
        assert_eq!(r, Err(FrameError::TooLarge { len: 101, max: 100 }));
        let mut d = FrameDecoder::new(100);
        // Header split over two chunks.
        assert!(d
            .feed(&mut [0xff, 0xff], |_| ControlFlow::Continue(()))
            .is_ok());
        let r = d.feed(&mut [0xff, 0xff], |_| ControlFlow::Continue(()));
        assert_eq!(
            r,
            Err(FrameError::TooLarge {
                len: u32::MAX as u64,
                max: 100
            })
        );
    }

    #[test]
    fn a_huge_header_reserves_nothing() {
        let mut d = FrameDecoder::new(1 << 30);
        let mut head = vec![0x3f, 0xff, 0xff, 0xff, b'{'];
        d.feed(&mut head, |_| ControlFlow::Continue(())).unwrap();
        assert!(
            d.buffered_capacity() < 1024,
            "capacity {}",
            d.buffered_capacity()
        );
    }

    #[test]
    fn frame_of_exactly_the_limit_is_accepted() {
        let payload = vec![b'x'; 100];
        let mut d = FrameDecoder::new(100);
        let got = collect(&mut d, &mut [frames(&[&payload])]).unwrap();
        assert_eq!(got[0].len(), 100);
    }

    #[test]
    fn break_stops_delivery() {
        let mut d = FrameDecoder::new(100);
        let mut n = 0;
        d.feed(&mut frames(&[b"a", b"b", b"c"]), |_| {
            n += 1;
            ControlFlow::Break(())
        })
        .unwrap();
        assert_eq!(n, 1);
    }

    #[test]
    fn large_straddle_buffer_is_released() {
        let payload = vec![b'x'; 200_000];
        let bytes = frames(&[&payload]);
        let mut d = FrameDecoder::new(1 << 20);
        let mut chunks: Vec<Vec<u8>> = bytes.chunks(1000).map(|c| c.to_vec()).collect();
        let got = collect(&mut d, &mut chunks).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(d.buffered_capacity(), 0);
    }

    /// Feeds `chunks` with `feed_bounded`, collecting payloads.
    fn feed_all_bounded(
        d: &mut FrameDecoder,
        pool: &mut BoundedPool,
        chunks: &mut [Vec<u8>],
        max_capacity: usize,
    ) -> (Vec<Vec<u8>>, Result<(), FrameError>) {
        let mut got = Vec::new();
        for c in chunks.iter_mut() {
            let r = d.feed_bounded(c, pool, max_capacity, |p| {
                got.push(p.to_vec());
                ControlFlow::Continue(())
            });
            if r.is_err() {
                return (got, r);
            }
        }
        (got, Ok(()))
    }

    #[test]
    fn straddle_growth_stops_at_the_frame_size() {
        let payload = vec![b'x'; 1 << 20];
        let bytes = frames(&[&payload]);
        let mut d = FrameDecoder::new(1 << 20);
        let mut chunks: Vec<Vec<u8>> = bytes.chunks(32 * 1024).map(|c| c.to_vec()).collect();
        let last = chunks.len() - 1;
        let mut max_cap = 0;
        for c in chunks[..last].iter_mut() {
            d.feed(c, |_| panic!("not complete yet")).unwrap();
            max_cap = max_cap.max(d.buffered_capacity());
        }
        // Plain `Vec` doubling would reach 2 MiB for the last 4 bytes.
        assert!(max_cap <= bytes.len(), "capacity {max_cap}");
        let mut n = 0;
        d.feed(&mut chunks[last], |p| {
            assert_eq!(p.len(), 1 << 20);
            n += 1;
            ControlFlow::Continue(())
        })
        .unwrap();
        assert_eq!(n, 1);
    }

    #[test]
    fn over_budget_stops_after_the_frames_before_it() {
        let big = vec![b'y'; 10_000];
        let mut stream = frames(&[b"one", b"two", &big]);
        stream.truncate(stream.len() - 1);
        let mut pool = BoundedPool::new(1 << 20, 1 << 20);
        let mut d = FrameDecoder::new(1 << 20);
        // The two small frames lie in the first chunk; the big one would
        // need 5,000 bytes of buffer at once.
        let mut chunks: Vec<Vec<u8>> = stream.chunks(5_000).map(|c| c.to_vec()).collect();
        let (got, r) = feed_all_bounded(&mut d, &mut pool, &mut chunks, 4_096);
        assert_eq!(got, vec![b"one".to_vec(), b"two".to_vec()]);
        assert!(
            matches!(r, Err(FrameError::OverBudget { max: 4_096, .. })),
            "{r:?}"
        );
        assert_eq!(
            r.unwrap_err().code(),
            crate::protocol::ErrorCode::ServerFull
        );
        assert_eq!(d.buffered_capacity(), 0);
        // Poisoned, like after any framing error.
        let again = d.feed_bounded(&mut frames(&[b"z"]), &mut pool, usize::MAX, |_| {
            panic!("no frames after an error")
        });
        assert!(matches!(again, Err(FrameError::OverBudget { .. })));
    }

    #[test]
    fn a_bound_is_used_to_the_byte_before_refusing() {
        let payload = vec![b'q'; 100_000];
        let bytes = frames(&[&payload]);
        let mut pool = BoundedPool::new(0, 0);
        let mut d = FrameDecoder::new(1 << 20);
        // 40,000 bytes held; doubling would ask for 80,000, the bound is
        // 50,000: the buffer is squeezed to exactly the bound.
        let mut first = bytes[..40_000].to_vec();
        d.feed_bounded(&mut first, &mut pool, 50_000, |_| panic!())
            .unwrap();
        let mut second = bytes[40_000..45_000].to_vec();
        d.feed_bounded(&mut second, &mut pool, 50_000, |_| panic!())
            .unwrap();
        assert_eq!(d.buffered(), 45_000);
        assert_eq!(d.buffered_capacity(), 50_000);
        let mut third = bytes[45_000..50_000].to_vec();
        d.feed_bounded(&mut third, &mut pool, 50_000, |_| panic!())
            .unwrap();
        assert_eq!(d.buffered(), 50_000);
        let mut fourth = bytes[50_000..50_001].to_vec();
        let r = d.feed_bounded(&mut fourth, &mut pool, 50_000, |_| panic!());
        assert_eq!(
            r,
            Err(FrameError::OverBudget {
                needed: 50_001,
                max: 50_000
            })
        );
    }

    #[test]
    fn a_pooled_buffer_over_the_bound_is_not_used() {
        let mut pool = BoundedPool::new(1 << 20, 1 << 20);
        assert!(pool.give(Vec::with_capacity(512 << 10)).is_none());
        let mut d = FrameDecoder::new(1 << 20);
        let mut head = frames(&[&[b'p'; 1_000]]);
        head.truncate(500);
        d.feed_bounded(&mut head, &mut pool, 4_096, |_| panic!())
            .unwrap();
        assert!(d.buffered_capacity() <= 4_096, "{}", d.buffered_capacity());
        assert_eq!(pool.bytes(), 512 << 10, "the large buffer went back");
        // Without a bound the pooled buffer is used.
        let mut d = FrameDecoder::new(1 << 20);
        let mut head = frames(&[&[b'p'; 1_000]]);
        head.truncate(500);
        d.feed_pooled(&mut head, &mut pool, |_| panic!()).unwrap();
        assert_eq!(d.buffered_capacity(), 512 << 10);
        assert_eq!(pool.bytes(), 0);
    }

    #[test]
    fn reset_returns_the_partial_frame_buffer() {
        let mut pool = BoundedPool::new(1 << 20, 1 << 20);
        let mut d = FrameDecoder::new(1 << 20);
        let mut head = frames(&[&[b'r'; 10_000]]);
        head.truncate(6_000);
        d.feed_pooled(&mut head, &mut pool, |_| panic!()).unwrap();
        let cap = d.buffered_capacity();
        assert!(cap >= 6_000);
        d.reset(&mut pool);
        assert_eq!(d.buffered_capacity(), 0);
        assert!(!d.in_frame());
        assert_eq!(pool.bytes(), cap);
    }
}
