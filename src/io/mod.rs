//! The backend seam: sockets in, typed events out.
//!
//! A [`Backend`] owns a shard's listener and connections and reports what
//! happened to them as [`Event`]s; the caller (the server's shard loop, or
//! the load generator) owns every protocol decision. Two implementations sit
//! behind it, chosen at start-up:
//!
//! - [`uring`]: io_uring with multishot accept and receive, a provided-buffer
//!   ring, `MSG_RING` wake-ups and SINGLE_ISSUER/DEFER_TASKRUN. The only raw
//!   io_uring in the crate.
//! - [`epoll`]: one edge-triggered epoll instance, non-blocking sockets,
//!   one gathered `sendmsg` of queued segments, an eventfd for wake-ups. For hosts that
//!   block io_uring (Docker's default seccomp profile,
//!   `kernel.io_uring_disabled`, gVisor).
//!
//! All `unsafe` in the crate is in this module tree.
//!
//! # Contract
//!
//! - The caller names each listener with a [`ListenerId`] in
//!   [`Backend::listen`]; every accepted connection is reported with it.
//! - The caller names each connection with a [`Token`] of its choosing
//!   (a slab key) in [`Backend::add`], and may reuse it once
//!   [`Event::Closed`] for it has been reported.
//! - At most one [`Backend::send`] per connection is in flight; its
//!   [`Event::Sent`] hands the batch back with the byte count (short sends
//!   happen: the caller resends the rest).
//! - [`Event::Data`] lends bytes for the duration of the callback; they may
//!   be modified in place (the JSON parser unescapes there).
//! - Reading is on after `add`; [`Backend::set_reading`] pauses and resumes
//!   it (backpressure). Data already received may still arrive after a
//!   pause.
//! - [`Backend::close`] ends a connection: everything in flight completes
//!   (a pending send comes back in `Sent` with an error), then `Closed`.
//!
//! Adding a backend: implement the same methods in `io/<name>/`, add a
//! variant to [`Backend`] and [`Kind`], and run the test suite with
//! `RINGCAST_IO_BACKEND=<name>`.

mod batch;
pub mod epoll;
pub mod sys;
pub mod uring;

pub use batch::{Segment, SendBatch, MAX_SEND_SEGMENTS};
pub use sys::raise_nofile_limit;

use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::fd::RawFd;
use std::time::Duration;

/// Names one connection to its backend; chosen by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Token(pub usize);

/// Names one listening socket to its backend; chosen by the caller in
/// [`Backend::listen`] and reported with each connection it accepts (a
/// server tells its plain port from its TLS port by it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ListenerId(pub u8);

/// Something that happened, reported by [`Backend::poll`].
#[derive(Debug)]
pub enum Event<'a> {
    /// A connection arrived on the listener the id names.
    Accepted(TcpStream, ListenerId),
    /// Accepting failed (for example EMFILE); retried at the next
    /// [`Backend::tick`].
    AcceptFailed(io::Error),
    /// Bytes from the peer, lent for the callback; may be modified in place.
    Data(Token, &'a mut [u8]),
    /// The peer closed its side; nothing more will be read.
    Eof(Token),
    /// The connection failed (reset, or an error reading it).
    Failed(Token, io::Error),
    /// A send finished: the batch comes back with the bytes sent (possibly
    /// fewer than it held) or the error.
    Sent(Token, SendBatch, io::Result<usize>),
    /// Nothing names the token any more; the caller may reuse it.
    Closed(Token),
}

/// Which implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// io_uring.
    Uring,
    /// epoll.
    Epoll,
}

impl Kind {
    /// The name in logs, `get_stats` and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Uring => "io-uring",
            Kind::Epoll => "epoll",
        }
    }
}

/// Sizes a backend is built with.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Receive buffers (io_uring's provided-buffer ring; a power of two).
    pub recv_buffers: u16,
    /// Bytes per receive buffer (epoll reads at most this per event;
    /// io_uring on 6.12+ registers the same total memory as larger,
    /// incrementally consumed buffers: see `uring::bufring`).
    pub recv_buffer_size: usize,
    /// Submission queue entries (io_uring).
    pub ring_entries: u32,
}

/// Why a backend could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("{explanation}")]
pub struct SetupError {
    /// What the kernel said.
    #[source]
    pub cause: io::Error,
    /// The cause and the fix, for a person.
    pub explanation: String,
}

/// A shard's (or load-generator thread's) I/O backend.
// One per thread, built once and never moved on the hot path: the size
// difference between the variants costs nothing, a Box would cost a
// pointer chase per operation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Backend {
    /// io_uring.
    Uring(uring::UringDriver),
    /// epoll.
    Epoll(epoll::EpollDriver),
}

macro_rules! each {
    ($self:expr, $d:ident => $e:expr) => {
        match $self {
            Backend::Uring($d) => $e,
            Backend::Epoll($d) => $e,
        }
    };
}

impl Backend {
    /// Builds a backend on the calling thread (the thread that will use it).
    /// `wake_fd` is an eventfd whose writes interrupt [`Backend::poll`].
    pub fn new(kind: Kind, opts: &Options, wake_fd: Option<RawFd>) -> Result<Backend, SetupError> {
        Ok(match kind {
            Kind::Uring => Backend::Uring(uring::UringDriver::new(opts, wake_fd)?),
            Kind::Epoll => Backend::Epoll(epoll::EpollDriver::new(opts, wake_fd)?),
        })
    }

    /// Which implementation this is.
    pub fn kind(&self) -> Kind {
        match self {
            Backend::Uring(_) => Kind::Uring,
            Backend::Epoll(_) => Kind::Epoll,
        }
    }

    /// What the kernel offered, for the start-up line.
    pub fn features(&self) -> String {
        each!(self, d => d.features())
    }

    /// The ring fd other io_uring shards can wake with `MSG_RING`, if any.
    pub fn ring_fd(&self) -> Option<RawFd> {
        each!(self, d => d.ring_fd())
    }

    /// Starts accepting on `listener` (any number of them); its
    /// connections arrive as [`Event::Accepted`] with `id`.
    pub fn listen(&mut self, listener: TcpListener, id: ListenerId) -> io::Result<()> {
        each!(self, d => d.listen(listener, id))
    }

    /// Stops accepting on every listener at once: the kernel refuses new
    /// connections.
    pub fn stop_listening(&mut self) {
        each!(self, d => d.stop_listening())
    }

    /// Takes over `stream` as `token` and starts reading it.
    pub fn add(&mut self, token: Token, stream: TcpStream) -> io::Result<()> {
        each!(self, d => d.add(token, stream))
    }

    /// Pauses (`false`) or resumes (`true`) reading a connection.
    pub fn set_reading(&mut self, token: Token, on: bool) -> io::Result<()> {
        each!(self, d => d.set_reading(token, on))
    }

    /// Sends the batch (one gathered write); [`Event::Sent`] follows.
    pub fn send(&mut self, token: Token, batch: SendBatch) -> io::Result<()> {
        each!(self, d => d.send(token, batch))
    }

    /// Sends our FIN; reading goes on.
    pub fn shutdown_write(&mut self, token: Token) {
        each!(self, d => d.shutdown_write(token))
    }

    /// Ends a connection; [`Event::Closed`] follows once nothing is in flight.
    pub fn close(&mut self, token: Token) -> io::Result<()> {
        each!(self, d => d.close(token))
    }

    /// Wakes the owner of another io_uring ring (`MSG_RING`, riding this
    /// backend's next submission); `fallback_eventfd` is written instead
    /// where that is not possible. Returns whether it was a `MSG_RING`.
    pub fn wake_ring(&mut self, ring_fd: RawFd, fallback_eventfd: RawFd) -> bool {
        each!(self, d => d.wake_ring(ring_fd, fallback_eventfd))
    }

    /// Once a second: retries what failed for lack of resources (accept).
    pub fn tick(&mut self) -> io::Result<()> {
        each!(self, d => d.tick())
    }

    /// Submits what is queued, waits until something happens or `timeout`
    /// passes (`None`: no limit), and reports every event to `on_event`.
    pub fn poll(
        &mut self,
        timeout: Option<Duration>,
        on_event: impl FnMut(Event<'_>),
    ) -> io::Result<()> {
        each!(self, d => d.poll(timeout, on_event))
    }
}

/// Checks whether io_uring with every feature ringcast needs can be set up
/// here; the error says why not and how to fix it.
///
/// The probe ring lives and dies on a thread of its own: tearing a ring down
/// queues task work on the thread that created it, and that interrupts the
/// thread's timed socket calls with EINTR (measured: an embedding thread's
/// `recv` with a read timeout failed within 0.2 ms of the probe).
pub fn probe_uring() -> Result<(), SetupError> {
    let probe = Options {
        recv_buffers: 2,
        recv_buffer_size: 64,
        ring_entries: 8,
    };
    std::thread::Builder::new()
        .name("ringcast-probe".into())
        .spawn(move || uring::UringDriver::new(&probe, None).map(drop))
        .map_err(|e| SetupError {
            explanation: format!("cannot start a thread to probe io_uring ({e})"),
            cause: e,
        })?
        .join()
        .unwrap_or_else(|_| {
            let e = io::Error::other("the io_uring probe thread panicked");
            Err(SetupError {
                explanation: e.to_string(),
                cause: e,
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{Shutdown, TcpListener};

    /// The backends this kernel offers (io_uring may be refused here; the
    /// test then says so and covers epoll alone).
    fn kinds() -> Vec<Kind> {
        match probe_uring() {
            Ok(()) => vec![Kind::Uring, Kind::Epoll],
            Err(e) => {
                eprintln!("io_uring unavailable, testing epoll only: {e}");
                vec![Kind::Epoll]
            }
        }
    }

    fn opts() -> Options {
        Options {
            recv_buffers: 8,
            recv_buffer_size: 4096,
            ring_entries: 64,
        }
    }

    /// Polls until `done` says so, collecting events as text; panics after
    /// 200 polls of 10 ms.
    fn poll_until(
        b: &mut Backend,
        seen: &mut Vec<String>,
        mut done: impl FnMut(&[String]) -> bool,
    ) {
        for _ in 0..200 {
            b.poll(Some(Duration::from_millis(10)), |ev| {
                seen.push(match ev {
                    Event::Data(t, d) => format!("data {} {}", t.0, String::from_utf8_lossy(d)),
                    Event::Eof(t) => format!("eof {}", t.0),
                    Event::Sent(t, batch, r) => {
                        format!("sent {} {:?} of {}", t.0, r.ok(), batch.remaining())
                    }
                    Event::Closed(t) => format!("closed {}", t.0),
                    Event::Failed(t, e) => format!("failed {} {e}", t.0),
                    Event::Accepted(..) => "accepted".into(),
                    Event::AcceptFailed(e) => format!("accept failed {e}"),
                })
            })
            .unwrap();
            if done(seen) {
                return;
            }
        }
        panic!("events so far: {seen:?}");
    }

    /// Data and the peer's FIN that arrived together, before the socket
    /// was added, are both reported: the data, then EOF (an edge-triggered
    /// backend gets one edge for both).
    #[test]
    fn data_and_fin_together_are_data_then_eof() {
        for kind in kinds() {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let mut peer = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let (ours, _) = l.accept().unwrap();
            peer.write_all(b"last words").unwrap();
            peer.shutdown(Shutdown::Write).unwrap();
            std::thread::sleep(Duration::from_millis(20)); // both are queued
            let mut b = Backend::new(kind, &opts(), None).unwrap();
            b.add(Token(3), ours).unwrap();
            let mut seen = Vec::new();
            poll_until(&mut b, &mut seen, |s| {
                s.iter().any(|e| e.starts_with("eof"))
            });
            assert_eq!(seen, ["data 3 last words", "eof 3"], "{kind:?}");
            b.close(Token(3)).unwrap();
            poll_until(&mut b, &mut seen, |s| {
                s.last().is_some_and(|e| e == "closed 3")
            });
        }
    }

    /// One poll of up to `ms`, appending each connection's data to its
    /// vector in `got`.
    fn collect(b: &mut Backend, got: &mut [Vec<u8>], ms: u64) {
        b.poll(Some(Duration::from_millis(ms)), |ev| {
            if let Event::Data(t, d) = ev {
                got[t.0].extend_from_slice(d);
            }
        })
        .unwrap();
    }

    /// Small receives on several connections, interleaved, many times the
    /// receive buffers' total: each connection's bytes arrive whole and in
    /// order (on io_uring with incremental buffers, consecutive receives of
    /// different connections share one buffer at growing offsets, and a
    /// buffer returns to the ring only once used up).
    #[test]
    fn interleaved_small_receives_keep_every_stream_intact() {
        for kind in kinds() {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let mut b = Backend::new(kind, &opts(), None).unwrap();
            let mut peers = Vec::new();
            for t in 0..3 {
                let peer = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
                peer.set_nodelay(true).unwrap();
                // The writes interleave with our polls on this thread: a
                // backend that stopped receiving fails the test, not hangs it.
                peer.set_write_timeout(Some(Duration::from_secs(10)))
                    .unwrap();
                let (ours, _) = l.accept().unwrap();
                b.add(Token(t), ours).unwrap();
                peers.push(peer);
            }
            // 3 × 3,000 pieces of 1–97 bytes is ~440 KiB: more than the
            // receive buffers hold (8 × 4 KiB, or one of 256 KiB where
            // consumed incrementally), so each is used up and returned.
            let mut want = vec![Vec::new(); 3];
            let mut got = vec![Vec::new(); 3];
            for i in 0..3000usize {
                for (t, peer) in peers.iter_mut().enumerate() {
                    let piece: Vec<u8> = (0..1 + (i * 7 + t * 13) % 97)
                        .map(|k| (i + k + t * 31) as u8)
                        .collect();
                    peer.write_all(&piece).unwrap();
                    want[t].extend_from_slice(&piece);
                }
                if i % 8 == 7 {
                    collect(&mut b, &mut got, 1);
                }
            }
            for _ in 0..500 {
                if (0..3).all(|t| got[t].len() >= want[t].len()) {
                    break;
                }
                collect(&mut b, &mut got, 10);
            }
            for t in 0..3 {
                assert!(got[t] == want[t], "{kind:?}: connection {t}'s bytes differ");
            }
        }
    }

    /// A send reports the bytes written; a paused connection reports no
    /// data until resumed, and then what arrived meanwhile.
    #[test]
    fn send_and_pause_resume() {
        for kind in kinds() {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let mut peer = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let (ours, _) = l.accept().unwrap();
            let mut b = Backend::new(kind, &opts(), None).unwrap();
            b.add(Token(0), ours).unwrap();
            let mut batch = SendBatch::default();
            batch
                .segments
                .push_back(Segment::Shared(bytes::Bytes::from_static(b"hello ")));
            batch.segments.push_back(Segment::Owned(b"world".to_vec()));
            b.send(Token(0), batch).unwrap();
            let mut seen = Vec::new();
            poll_until(&mut b, &mut seen, |s| !s.is_empty());
            assert_eq!(seen, ["sent 0 Some(11) of 11"], "{kind:?}");
            let mut got = [0u8; 11];
            std::io::Read::read_exact(&mut peer, &mut got).unwrap();
            assert_eq!(&got, b"hello world");

            b.set_reading(Token(0), false).unwrap();
            // Let a cancel (io_uring) complete before the data arrives.
            for _ in 0..5 {
                b.poll(Some(Duration::from_millis(10)), |_| {}).unwrap();
            }
            peer.write_all(b"while paused").unwrap();
            let mut quiet = Vec::new();
            for _ in 0..10 {
                b.poll(Some(Duration::from_millis(10)), |ev| {
                    quiet.push(format!("{ev:?}"))
                })
                .unwrap();
            }
            assert!(quiet.is_empty(), "{kind:?} paused but got {quiet:?}");
            b.set_reading(Token(0), true).unwrap();
            let mut seen = Vec::new();
            poll_until(&mut b, &mut seen, |s| !s.is_empty());
            assert_eq!(seen, ["data 0 while paused"], "{kind:?}");
        }
    }
}
