//! Outgoing bytes as the backends take them: a gathered batch of segments,
//! some owned by one connection, some shared by every recipient of a
//! broadcast. Plain data: no descriptor, no kernel type.

use bytes::Bytes;
use std::collections::VecDeque;

/// One segment of outgoing bytes: a reply buffer the connection owns, or a
/// broadcast frame shared by every recipient (serialised once).
#[derive(Debug)]
pub enum Segment {
    /// Bytes owned by this connection (reused after the send completes).
    Owned(Vec<u8>),
    /// A frame shared with other connections.
    Shared(Bytes),
}

impl Segment {
    /// The bytes.
    #[inline]
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Segment::Owned(v) => v,
            Segment::Shared(b) => b,
        }
    }
}

/// The most segments one send gathers (well under IOV_MAX = 1024; more
/// wait for the next send, which keeps the iovec array small).
pub const MAX_SEND_SEGMENTS: usize = 64;

/// Bytes handed to a backend for one gathered send. The backend owns it
/// while the send is in flight and returns it in [`super::Event::Sent`], so
/// the caller can advance past what was sent and recycle buffers.
#[derive(Debug, Default)]
pub struct SendBatch {
    /// Segments in order; the first `offset` bytes of the first are already sent.
    pub segments: VecDeque<Segment>,
    /// Bytes of `segments[0]` sent by earlier sends.
    pub offset: usize,
}

impl SendBatch {
    /// Total bytes still to send.
    pub fn remaining(&self) -> usize {
        self.segments
            .iter()
            .map(|s| s.as_slice().len())
            .sum::<usize>()
            - self.offset
    }

    /// Whether nothing is left to send.
    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// The unsent bytes as at most [`MAX_SEND_SEGMENTS`] slices, in order.
    pub fn slices(&self) -> impl Iterator<Item = &[u8]> {
        self.segments
            .iter()
            .take(MAX_SEND_SEGMENTS)
            .enumerate()
            .map(|(i, s)| {
                let s = s.as_slice();
                if i == 0 {
                    &s[self.offset..]
                } else {
                    s
                }
            })
    }

    /// Drops `n` sent bytes from the front, returning fully sent owned
    /// buffers through `recycle`.
    pub fn advance(&mut self, mut n: usize, mut recycle: impl FnMut(Vec<u8>)) {
        while n > 0 {
            let Some(first) = self.segments.front() else {
                break;
            };
            let left = first.as_slice().len() - self.offset;
            if n < left {
                self.offset += n;
                return;
            }
            n -= left;
            self.offset = 0;
            if let Some(Segment::Owned(v)) = self.segments.pop_front() {
                recycle(v);
            }
        }
    }

    /// Empties the batch, returning owned buffers through `recycle`.
    pub fn clear(&mut self, mut recycle: impl FnMut(Vec<u8>)) {
        for s in self.segments.drain(..) {
            if let Segment::Owned(v) = s {
                recycle(v);
            }
        }
        self.offset = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(n: usize) -> Segment {
        Segment::Owned(vec![0; n])
    }

    #[test]
    fn advance_through_segments() {
        let mut b = SendBatch {
            segments: [
                seg(10),
                seg(5),
                Segment::Shared(Bytes::from_static(b"abcdef")),
            ]
            .into(),
            ..Default::default()
        };
        assert_eq!(b.remaining(), 21);
        let mut recycled = 0;
        b.advance(3, |_| recycled += 1);
        assert_eq!((b.offset, b.segments.len(), b.remaining()), (3, 3, 18));
        assert_eq!(b.slices().map(<[u8]>::len).collect::<Vec<_>>(), [7, 5, 6]);
        b.advance(9, |_| recycled += 1);
        assert_eq!((b.offset, b.segments.len(), b.remaining()), (2, 2, 9));
        b.advance(3, |_| recycled += 1);
        assert_eq!((b.offset, b.segments.len(), b.remaining()), (0, 1, 6));
        b.advance(6, |_| recycled += 1);
        assert_eq!((b.offset, b.segments.len(), b.remaining()), (0, 0, 0));
        assert_eq!(recycled, 2);
    }
}
