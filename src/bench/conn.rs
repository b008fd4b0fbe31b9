//! One connection of a generator thread: what it has queued and sent,
//! the send times of its requests still unanswered, and its TLS and codec
//! state. The thread's loop (src/bench/worker.rs) calls its methods on
//! each backend event; the buffers they lend and take back are the
//! thread's, shared by all its connections.
//!
//! Responses on a connection come in request order, so a FIFO of send
//! times matches each response to its request without parsing ids.

use super::plan::{Outcome, Role, Slot};
use super::replies::{decoder_for, Tally, MAX_FRAME};
use super::requests::{RequestWriter, Sender};
use super::setup::Connected;
use crate::io::{Segment, SendBatch};
use crate::protocol::codec::{Codec, Decompressor};
use crate::protocol::frame::BoundedPool;
use crate::protocol::{FrameDecoder, HEADER_LEN};
use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::ops::ControlFlow;

/// Send buffers, recycled between a thread's connections.
#[derive(Default)]
pub(super) struct SendBuffers {
    /// Empty batches.
    batches: Vec<SendBatch>,
    /// Empty byte buffers (segments that were sent).
    spare: Vec<Vec<u8>>,
}

/// Receive scratch, shared by a thread's connections.
pub(super) struct RecvBuffers {
    /// Frames that straddle receive buffers are gathered here.
    straddle_pool: BoundedPool,
    inflater: Decompressor,
    /// Decompressed payloads, reused frame to frame.
    inflated: Vec<u8>,
    /// TLS: where records are decrypted.
    plain: Vec<u8>,
}

impl RecvBuffers {
    /// Scratch for a thread; `tls` when its connections speak TLS.
    pub(super) fn new(tls: bool) -> RecvBuffers {
        RecvBuffers {
            // Keeps buffers of up to 4 MiB for reuse, 64 MiB in all.
            straddle_pool: BoundedPool::new(4 << 20, 64 << 20),
            inflater: Decompressor::new(),
            inflated: Vec::new(),
            // One full TLS record at a time at least.
            plain: vec![0u8; if tls { 64 << 10 } else { 0 }],
        }
    }
}

/// One connection (see the module doc).
pub(super) struct Conn {
    role: Role,
    server: SocketAddr,
    channel: usize,
    decoder: FrameDecoder,
    /// Requests queued this turn (sent at the end of the turn).
    out: Vec<u8>,
    /// What a short send left (sent first).
    leftover: Option<SendBatch>,
    send_inflight: bool,
    /// Open on the backend (false from the server's close until reconnected).
    live: bool,
    /// Send time (ns on the run's clock) of each request without a response.
    sent: VecDeque<u64>,
    /// Open loop: when the next request is due (ns).
    pub(super) next_due: u64,
    /// Rotates the mixed workload and a publisher's channel.
    counter: u64,
    /// The connection's TLS state (None: plain).
    tls: Option<Box<rustls::ClientConnection>>,
    /// The codec negotiated, and the server's threshold: requests with a
    /// larger payload go compressed.
    codec: Option<(Codec, usize)>,
}

impl Conn {
    /// The connection of `slot`, set up; its socket is to be added to the
    /// backend. `counter` starts its rotation (the slot's index, so a
    /// thread's connections do not all send the same request at once).
    pub(super) fn new(slot: &Slot, set_up: Connected, counter: u64) -> (Conn, TcpStream) {
        let conn = Conn {
            role: slot.role,
            server: slot.server,
            channel: slot.channel,
            decoder: decoder_for(set_up.codec),
            out: Vec::with_capacity(4096),
            leftover: None,
            send_inflight: false,
            live: true,
            sent: VecDeque::new(),
            next_due: 0,
            counter,
            tls: set_up.tls.map(Box::new),
            codec: set_up.codec,
        };
        (conn, set_up.sock)
    }

    /// What it was set up as (to set it up again).
    pub(super) fn slot(&self) -> Slot {
        Slot {
            role: self.role,
            server: self.server,
            channel: self.channel,
        }
    }

    /// Whether it is open on the backend.
    pub(super) fn is_live(&self) -> bool {
        self.live
    }

    /// Requests sent and not answered yet.
    pub(super) fn outstanding(&self) -> usize {
        self.sent.len()
    }

    /// Set up again after the server closed it; returns the new socket, to
    /// be added to the backend. What was queued for the old one is dropped.
    pub(super) fn reconnected(&mut self, set_up: Connected) -> TcpStream {
        self.tls = set_up.tls.map(Box::new);
        self.codec = set_up.codec;
        self.decoder = decoder_for(set_up.codec);
        self.out.clear();
        self.leftover = None;
        self.live = true;
        set_up.sock
    }

    /// Queues the next request, stamped `now`, counting its bytes into
    /// `sent` when given (the measured window). Returns false when nothing
    /// was queued: the budget is spent, or a subscriber (which still takes
    /// its share of the budget, as it always has).
    pub(super) fn issue(
        &mut self,
        now: u64,
        writer: &mut RequestWriter,
        budget: &mut Option<u64>,
        sent: Option<&mut super::report::WireBytes>,
    ) -> bool {
        if let Some(b) = budget {
            if *b == 0 {
                return false;
            }
            *b -= 1;
        }
        let before = self.out.len();
        let s = Sender {
            role: self.role,
            channel: self.channel,
            counter: &mut self.counter,
            codec: self.codec,
        };
        let Some(plain_len) = writer.write(s, now, &mut self.out) else {
            return false;
        };
        if let Some(w) = sent {
            w.bytes_sent += (self.out.len() - before) as u64;
            w.plain_bytes_sent += plain_len as u64;
        }
        self.sent.push_back(now);
        true
    }

    /// The batch to send now, if the connection is open, has no send in
    /// flight, and has something to send: what a short send left first,
    /// then everything queued since (encrypted with TLS).
    pub(super) fn take_send(&mut self, bufs: &mut SendBuffers) -> io::Result<Option<SendBatch>> {
        if !self.live || self.send_inflight || (self.leftover.is_none() && self.out.is_empty()) {
            return Ok(None);
        }
        let mut batch = self
            .leftover
            .take()
            .unwrap_or_else(|| bufs.batches.pop().unwrap_or_default());
        if !self.out.is_empty() {
            let mut fresh = bufs.spare.pop().unwrap_or_default();
            let seg = match &mut self.tls {
                None => std::mem::replace(&mut self.out, fresh),
                Some(t) => {
                    super::tls::encrypt(t, &self.out, &mut fresh)?;
                    self.out.clear();
                    fresh
                }
            };
            batch.segments.push_back(Segment::Owned(seg));
        }
        self.send_inflight = true;
        Ok(Some(batch))
    }

    /// A send completed: `r` is how much of `b` went out. A short send's
    /// rest is sent first next time; a failed one is dropped (the receive
    /// side sees the close).
    pub(super) fn on_sent(
        &mut self,
        mut b: SendBatch,
        r: io::Result<usize>,
        bufs: &mut SendBuffers,
    ) {
        self.send_inflight = false;
        match r {
            Ok(n) => {
                b.advance(n, |mut v| {
                    v.clear();
                    bufs.spare.push(v);
                });
                if b.is_empty() {
                    bufs.batches.push(b);
                } else {
                    self.leftover = Some(b);
                }
            }
            Err(_) => b.clear(|v| bufs.spare.push(v)),
        }
    }

    /// Bytes received: decrypts and decodes them and counts every frame
    /// into `tally`. Returns how many requests they answered (so as many
    /// may be issued). A stream that cannot be decoded counts one error.
    pub(super) fn on_data(
        &mut self,
        chunk: &mut [u8],
        rx: &mut RecvBuffers,
        tally: &mut Tally<'_>,
    ) -> usize {
        if tally.measuring {
            tally.out.bytes += chunk.len() as u64;
        }
        let mut replies = 0usize;
        let (role, sent) = (self.role, &mut self.sent);
        let decoder = &mut self.decoder;
        let codec = self.codec.map(|(k, _)| k);
        let RecvBuffers {
            straddle_pool,
            inflater,
            inflated,
            plain,
        } = rx;
        let mut feed = |data: &mut [u8]| {
            let r = decoder.feed_flagged(data, straddle_pool, usize::MAX, |payload, packed| {
                let plain: &[u8] = match (packed, codec) {
                    (true, Some(k)) => match inflater.decompress(k, payload, inflated, MAX_FRAME) {
                        Ok(()) => inflated,
                        Err(e) => {
                            if tally.bad_frame(sent, &e.to_string()) {
                                replies += 1;
                            }
                            return ControlFlow::Continue(());
                        }
                    },
                    _ => payload,
                };
                if tally.measuring {
                    let w = &mut tally.out.wire;
                    w.bytes_received += (HEADER_LEN + payload.len()) as u64;
                    w.plain_bytes_received += (HEADER_LEN + plain.len()) as u64;
                }
                if tally.frame(role, sent, plain) {
                    replies += 1;
                }
                ControlFlow::Continue(())
            });
            r.is_ok()
        };
        let ok = match &mut self.tls {
            None => feed(chunk),
            Some(t) => {
                let mut ok = true;
                let r = super::tls::decrypt(t, chunk, plain, |p| {
                    ok = feed(p);
                    ok
                });
                ok && r.is_ok()
            }
        };
        if !ok {
            tally.out.errors += 1;
        }
        replies
    }

    /// The server closed it (or it failed). Unless the run is over and
    /// nothing was outstanding, that is an error, and every request still
    /// unanswered is lost. The caller closes it on the backend.
    pub(super) fn on_lost(&mut self, sending: bool, out: &mut Outcome) {
        if sending || !self.sent.is_empty() {
            out.errors += self.sent.len() as u64 + 1;
            if out.first_error.is_none() {
                out.first_error = Some("connection closed by the server".into());
            }
        }
        self.sent.clear();
        self.live = false;
    }
}
