//! The TLS transport of a session: rustls between the backend's bytes and
//! the frame decoder, and between [`Output`] and the batches sent.
//!
//! In: ciphertext lent by the backend goes into rustls (`read_tls`), which
//! decrypts it; the plaintext is read into the shard's one reusable buffer
//! ([`Env::tls_plain`](super::Env)) and parsed there in place, like a
//! plain connection's receive buffer.
//!
//! Out: the session's queued segments (its replies, and broadcast frames
//! shared with every recipient) are moved into `plain` and encrypted only
//! when a send is about to start, at most [`TLS_SEND_BYTES`] at a time, into
//! an owned ciphertext buffer from the shard's pool that the backend sends.
//! A broadcast is still serialised once; only its encryption is per
//! recipient, which TLS makes unavoidable (each connection has its own
//! keys).
//!
//! rustls's own output buffer is drained into `cipher` after every call
//! that may fill it, so everything the connection holds for the client is
//! in `plain`, `cipher` or the session's [`Output`]: the water marks and
//! `max_pending_bytes` count those bytes (plaintext not yet encrypted plus
//! ciphertext not yet sent), which is the memory the client's slowness
//! costs us. Ciphertext is the plaintext plus at most 29 bytes per record
//! of up to 16 KiB (TLS 1.2 with AES-GCM: a 5-byte header, an 8-byte
//! explicit nonce, a 16-byte tag; TLS 1.3 adds 22), and at most
//! [`TLS_SEND_BYTES`] is encrypted ahead of the socket.

use super::output::Output;
use super::{Env, Host};
use crate::io::{Segment, SendBatch, MAX_SEND_SEGMENTS};
use crate::protocol::frame::BufferPool;
use rustls::ServerConnection;
use std::io::{IoSlice, Read, Write};

/// Plaintext encrypted per send at most: enough to fill a socket buffer
/// in one `sendmsg`, small enough that a slow reader does not make us
/// encrypt (and hold) far more than the kernel will take.
pub const TLS_SEND_BYTES: usize = 256 << 10;
/// Why a TLS handshake failed, as counted in `tls_handshake_failures`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// Not a TLS record at all (plain text on the TLS port, garbage).
    Malformed,
    /// TLS, but no version, cipher suite or group in common.
    Incompatible,
    /// A client certificate missing, expired or not signed by the client CA.
    ClientCertificate,
    /// Not finished within `tls_handshake_timeout_secs`.
    Timeout,
    /// The peer closed before finishing it (a truncated ClientHello, say).
    Eof,
    /// Refused: the shard already had `tls_max_handshakes` in progress.
    Busy,
    /// Any other rustls error (bad signatures, decrypt failures …).
    Other,
}

impl HandshakeFailure {
    /// How many reasons there are (the length of every per-reason array).
    pub const COUNT: usize = 7;
    /// Every reason, in the order stats and metrics list them.
    pub const ALL: [HandshakeFailure; Self::COUNT] = [
        HandshakeFailure::Malformed,
        HandshakeFailure::Incompatible,
        HandshakeFailure::ClientCertificate,
        HandshakeFailure::Timeout,
        HandshakeFailure::Eof,
        HandshakeFailure::Busy,
        HandshakeFailure::Other,
    ];

    /// The label in `get_stats` and `/metrics`.
    pub fn as_str(self) -> &'static str {
        match self {
            HandshakeFailure::Malformed => "malformed",
            HandshakeFailure::Incompatible => "incompatible",
            HandshakeFailure::ClientCertificate => "client_certificate",
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::Eof => "eof",
            HandshakeFailure::Busy => "busy",
            HandshakeFailure::Other => "other",
        }
    }

    /// Its position in [`HandshakeFailure::ALL`] (the counter index).
    pub fn index(self) -> usize {
        self as usize
    }

    /// The reason a rustls error stands for.
    pub fn of(e: &rustls::Error) -> HandshakeFailure {
        use rustls::Error as E;
        match e {
            E::InvalidMessage(_) => HandshakeFailure::Malformed,
            E::PeerIncompatible(_) => HandshakeFailure::Incompatible,
            E::NoCertificatesPresented | E::InvalidCertificate(_) => {
                HandshakeFailure::ClientCertificate
            }
            _ => HandshakeFailure::Other,
        }
    }
}

/// What [`Tls::receive`] hands its callback, in the order it happens.
#[derive(Debug)]
pub(crate) enum TlsInput<'a> {
    /// The handshake just finished (already no longer counted as in
    /// progress). Comes before any plaintext of the same input: with TLS
    /// 1.3 the client's Finished and its first request often arrive in one
    /// read, and the request must find its connection established.
    HandshakeDone,
    /// Decrypted application data, in the shard's buffer.
    Plain(&'a mut [u8]),
}

/// What feeding ciphertext produced, besides plaintext.
#[derive(Debug, Default)]
pub(crate) struct Received {
    /// The handshake finished during this input.
    pub handshake_done: bool,
    /// The peer sent close_notify: no more input will come.
    pub peer_closed: bool,
    /// The connection broke (a handshake failure, or a bad record later);
    /// an alert is queued in `cipher`.
    pub failed: Option<rustls::Error>,
}

/// One connection's TLS state (see the module doc).
#[derive(Debug)]
pub(crate) struct Tls {
    conn: ServerConnection,
    /// Ciphertext out of rustls, not yet handed to the backend.
    cipher: Vec<u8>,
    /// Plaintext moved out of the [`Output`], not yet encrypted.
    plain: SendBatch,
    /// Monotonic ms by which the handshake must finish.
    pub deadline: u64,
    /// Counted in the shard's handshakes in progress.
    pub handshaking: bool,
    /// Nothing more may be written: close_notify is queued, or rustls hit
    /// a fatal error (its alert is queued instead).
    write_closed: bool,
}

impl Tls {
    /// A connection that has just been accepted; its handshake must finish
    /// by `deadline`.
    pub fn new(conn: ServerConnection, deadline: u64) -> Tls {
        Tls {
            conn,
            cipher: Vec::new(),
            plain: SendBatch::default(),
            deadline,
            handshaking: true,
            write_closed: false,
        }
    }

    /// Bytes held for the client: plaintext not yet encrypted, ciphertext
    /// not yet sent.
    pub fn pending(&self) -> usize {
        self.plain.remaining() + self.cipher.len()
    }

    /// Feeds ciphertext from the peer. The end of the handshake, then each
    /// run of plaintext it yields (in the shard's buffer, to parse in
    /// place), is handed to `on_input`, which returns false to stop
    /// reading (the session is closing: the rest is decrypted and dropped,
    /// so close_notify is still seen).
    pub fn receive<H: Host>(
        &mut self,
        env: &mut Env<'_, H>,
        mut data: &[u8],
        mut on_input: impl FnMut(&mut Env<'_, H>, TlsInput<'_>) -> bool,
    ) -> Received {
        let mut r = Received::default();
        let mut buf = std::mem::take(&mut env.tls_plain);
        let mut reading = true;
        while !data.is_empty() && r.failed.is_none() && !r.peer_closed {
            if let Err(e) = self.conn.read_tls(&mut data) {
                // Only when rustls's buffer is full, which it cannot be:
                // every record is processed before the next read.
                r.failed = Some(rustls::Error::General(e.to_string()));
                break;
            }
            let state = match self.conn.process_new_packets() {
                Ok(s) => s,
                Err(e) => {
                    r.failed = Some(e);
                    break;
                }
            };
            let mut left = state.plaintext_bytes_to_read();
            r.peer_closed = state.peer_has_closed();
            if self.handshaking && !self.conn.is_handshaking() {
                r.handshake_done = true;
                self.handshaking = false;
                env.tls_handshakes -= 1;
                reading = on_input(env, TlsInput::HandshakeDone);
            }
            while left > 0 {
                let n = match self.conn.reader().read(&mut buf) {
                    Ok(n) if n > 0 => n,
                    _ => break,
                };
                left -= n.min(left);
                if reading {
                    reading = on_input(env, TlsInput::Plain(&mut buf[..n]));
                }
            }
        }
        env.tls_plain = buf;
        if r.failed.is_some() {
            // rustls queued the alert that tells the peer why.
            self.write_closed = true;
        }
        self.drain();
        r
    }

    /// Moves what rustls has to send (handshake messages, alerts, records)
    /// into `cipher`.
    fn drain(&mut self) {
        while self.conn.wants_write() {
            if self.conn.write_tls(&mut self.cipher).is_err() {
                break; // writing into a Vec cannot fail
            }
        }
    }

    /// Whether there is anything to send, now or once encrypted.
    pub fn has_output(&self, out: &Output) -> bool {
        !self.cipher.is_empty() || (self.can_write() && (out.len() > 0 || !self.plain.is_empty()))
    }

    /// Application data may be encrypted: the handshake is done and the
    /// connection is not closed for writing.
    fn can_write(&self) -> bool {
        !self.conn.is_handshaking() && !self.write_closed
    }

    /// Fills `batch` with ciphertext: what is already waiting, then the
    /// session's queued plaintext, encrypted up to [`TLS_SEND_BYTES`].
    pub fn fill<H: Host>(&mut self, env: &mut Env<'_, H>, out: &mut Output, batch: &mut SendBatch) {
        if self.can_write() {
            let pool = &mut env.pool;
            let mut encrypted = 0;
            while encrypted < TLS_SEND_BYTES {
                if self.plain.segments.len() < MAX_SEND_SEGMENTS {
                    out.fill(&mut self.plain);
                }
                if self.plain.is_empty() {
                    break;
                }
                // One call for many small segments: rustls packs them into
                // full records instead of a record (and an AEAD call) each.
                let k = self.plain.segments.len().min(MAX_SEND_SEGMENTS);
                let slices: [IoSlice<'_>; MAX_SEND_SEGMENTS] = {
                    let mut it = self.plain.slices();
                    std::array::from_fn(|_| IoSlice::new(it.next().unwrap_or(&[])))
                };
                let n = self.conn.writer().write_vectored(&slices[..k]).unwrap_or(0);
                self.plain.advance(n, |v| drop(BufferPool::give(pool, v)));
                self.drain();
                encrypted += n;
                if n == 0 {
                    break;
                }
            }
        }
        if !self.cipher.is_empty() {
            let fresh = env.pool.take().unwrap_or_default();
            batch
                .segments
                .push_back(Segment::Owned(std::mem::replace(&mut self.cipher, fresh)));
        }
    }

    /// Queues close_notify (once; not after a fatal error, whose alert
    /// already ended the stream, nor before the handshake is done: there
    /// is no session to end). Returns whether it was queued.
    pub fn close(&mut self) -> bool {
        if self.write_closed || self.conn.is_handshaking() {
            return false;
        }
        self.write_closed = true;
        self.conn.send_close_notify();
        self.drain();
        true
    }

    /// Drops the plaintext not yet encrypted, returning owned buffers
    /// through `recycle`; a segment already partly encrypted is kept, so
    /// the client never gets part of a frame. Ciphertext stays: it may
    /// hold the alert that explains the close.
    pub fn discard_plain(&mut self, mut recycle: impl FnMut(Vec<u8>)) {
        let offset = self.plain.offset;
        let partial = (offset > 0)
            .then(|| self.plain.segments.pop_front())
            .flatten();
        self.plain.clear(&mut recycle);
        if let Some(seg) = partial {
            self.plain.segments.push_back(seg);
            self.plain.offset = offset;
        }
    }

    /// Drops the ciphertext not yet sent (the connection is closing at
    /// once).
    pub fn discard_cipher(&mut self, recycle: impl FnOnce(Vec<u8>)) {
        recycle(std::mem::take(&mut self.cipher));
    }
}
