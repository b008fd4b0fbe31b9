//! The io_uring backend: the only raw io_uring in the crate.
//!
//! - [`ring`]: one ring with a safe API (operations own what they lend the
//!   kernel until their completion).
//! - [`bufring`]: the provided-buffer ring multishot receives fill.
//! - This file: [`UringDriver`], the backend seam over them. Each operation
//!   in flight is an [`Op`] carried in the user data, with the connection's
//!   slot generation, so a stale completion can never touch a reused slot.
//!   errno handling (ENOBUFS re-arms, ECANCELED after a pause, EOF) stays
//!   here; the caller sees [`Event`]s.

mod bufring;
mod ring;

pub use bufring::BufRing;
pub use ring::{explain_setup_error, Completion, Features, SendHeader, Uring};

use super::{Event, ListenerId, Options, SendBatch, SetupError, Token};
use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

/// An operation in flight, as its user data says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    /// The multishot accept of the listener at this index.
    Accept(u32),
    /// Cancelling that accept at stop.
    CancelAccept(u32),
    /// A connection's multishot receive.
    Recv(Slot),
    /// A connection's `sendmsg`.
    Send(Slot),
    /// `shutdown(2)` of a closing connection.
    Shutdown(Slot),
    /// Cancelling a connection's receive (a pause).
    Cancel(Slot),
    /// The read posted on our wake-up eventfd.
    WakeRead,
    /// A `MSG_RING` to another ring (posted there too, with result 0);
    /// on failure here, the eventfd to write instead.
    MsgRing(RawFd),
}

/// A connection slot and its generation (24 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    key: u32,
    gen: u32,
}

impl Op {
    fn kind(self) -> u64 {
        match self {
            Op::Accept(_) => 1,
            Op::CancelAccept(_) => 2,
            Op::Recv(_) => 3,
            Op::Send(_) => 4,
            Op::Shutdown(_) => 5,
            Op::Cancel(_) => 6,
            Op::WakeRead => 7,
            Op::MsgRing(_) => 8,
        }
    }

    /// Kind in bits 56..63 (bit 63 stays clear: it is the ring's own),
    /// generation in 32..56, slot or fd in 0..32.
    fn user_data(self) -> u64 {
        let low = match self {
            Op::Recv(s) | Op::Send(s) | Op::Shutdown(s) | Op::Cancel(s) => {
                ((s.gen as u64 & 0xff_ffff) << 32) | s.key as u64
            }
            Op::MsgRing(fd) => fd as u32 as u64,
            Op::Accept(i) | Op::CancelAccept(i) => i as u64,
            Op::WakeRead => 0,
        };
        (self.kind() << 56) | low
    }

    fn from_user_data(u: u64) -> Option<Op> {
        let slot = Slot {
            key: u as u32,
            gen: ((u >> 32) & 0xff_ffff) as u32,
        };
        Some(match u >> 56 {
            1 => Op::Accept(u as u32),
            2 => Op::CancelAccept(u as u32),
            3 => Op::Recv(slot),
            4 => Op::Send(slot),
            5 => Op::Shutdown(slot),
            6 => Op::Cancel(slot),
            7 => Op::WakeRead,
            8 => Op::MsgRing(u as u32 as RawFd),
            _ => return None,
        })
    }
}

/// The receive side of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recv {
    /// No receive in the kernel.
    Off,
    /// A multishot receive is armed.
    Armed,
    /// A cancel is on its way; the receive has not ended yet.
    Cancelling,
}

#[derive(Debug)]
struct Conn {
    stream: TcpStream,
    gen: u32,
    recv: Recv,
    /// The caller wants input (not paused).
    want_read: bool,
    /// Operations in flight naming this connection; freed at zero once closing.
    ops: u32,
    closing: bool,
}

/// A listening socket, what the caller named it, and its accept.
#[derive(Debug)]
struct Listening {
    sock: TcpListener,
    id: ListenerId,
    /// The multishot accept is in the kernel.
    armed: bool,
}

/// The io_uring backend (see the module doc).
#[derive(Debug)]
pub struct UringDriver {
    // Field order: the buffer ring is unregistered with the ring's close;
    // the kernel pins its pages meanwhile, so either drop order is sound.
    ring: Uring,
    bufs: BufRing,
    conns: Vec<Option<Conn>>,
    next_gen: u32,
    /// Indexed by the `Op::Accept` index; emptied by `stop_listening`.
    listeners: Vec<Listening>,
    wake_fd: Option<RawFd>,
    /// Spare `sendmsg` headers (their iovec arrays are reused).
    headers: Vec<SendHeader>,
    /// Connections freed outside `poll`, reported at the next one.
    closed: Vec<Token>,
    cqes: Vec<Completion>,
}

impl UringDriver {
    /// Sets up a ring and its buffer ring on this thread, with our wake-up
    /// read posted.
    pub fn new(opts: &Options, wake_fd: Option<RawFd>) -> Result<UringDriver, SetupError> {
        let ring = Uring::new(opts.ring_entries).map_err(|e| SetupError {
            explanation: explain_setup_error(&e),
            cause: e,
        })?;
        let bufs =
            BufRing::new(&ring, 0, opts.recv_buffers, opts.recv_buffer_size).map_err(|e| {
                SetupError {
                    explanation: format!(
                    "cannot register the receive buffer ring ({e}): ringcast's io_uring backend \
                     needs Linux 6.0 or newer and io_uring_register allowed; if RLIMIT_MEMLOCK \
                     is low, raise it (ulimit -l)"
                ),
                    cause: e,
                }
            })?;
        let mut d = UringDriver {
            ring,
            bufs,
            conns: Vec::new(),
            next_gen: 1,
            listeners: Vec::new(),
            wake_fd,
            headers: Vec::new(),
            closed: Vec::new(),
            cqes: Vec::with_capacity(1024),
        };
        if let Some(fd) = wake_fd {
            d.ring
                .read_eventfd(fd, Op::WakeRead.user_data())
                .map_err(|e| SetupError {
                    explanation: format!("cannot post the wake-up read ({e})"),
                    cause: e,
                })?;
        }
        Ok(d)
    }

    pub(super) fn features(&self) -> String {
        self.ring.features().to_string()
    }

    pub(super) fn ring_fd(&self) -> Option<RawFd> {
        self.ring.features().msg_ring.then(|| self.ring.fd())
    }

    pub(super) fn listen(&mut self, listener: TcpListener, id: ListenerId) -> io::Result<()> {
        let i = self.listeners.len() as u32;
        self.ring
            .accept_multi(listener.as_raw_fd(), Op::Accept(i).user_data())?;
        self.listeners.push(Listening {
            sock: listener,
            id,
            armed: true,
        });
        Ok(())
    }

    pub(super) fn stop_listening(&mut self) {
        // shutdown(2) on a listening socket makes the kernel refuse new
        // connections at once (dropping it would leave it open while the
        // multishot accept still holds a reference); cancel the accept too.
        for (i, l) in std::mem::take(&mut self.listeners).into_iter().enumerate() {
            let _ = socket2::SockRef::from(&l.sock).shutdown(std::net::Shutdown::Both);
            if l.armed {
                let i = i as u32;
                let _ = self
                    .ring
                    .cancel(Op::Accept(i).user_data(), Op::CancelAccept(i).user_data());
            }
        }
    }

    pub(super) fn add(&mut self, token: Token, stream: TcpStream) -> io::Result<()> {
        let gen = self.next_gen;
        self.next_gen = (self.next_gen + 1) & 0xff_ffff;
        if self.conns.len() <= token.0 {
            self.conns.resize_with(token.0 + 1, || None);
        }
        debug_assert!(self.conns[token.0].is_none(), "token {token:?} in use");
        self.conns[token.0] = Some(Conn {
            stream,
            gen,
            recv: Recv::Off,
            want_read: true,
            ops: 0,
            closing: false,
        });
        self.arm_recv(token.0)
    }

    fn slot(&self, key: usize) -> Slot {
        let gen = self.conns[key].as_ref().map_or(0, |c| c.gen);
        Slot {
            key: key as u32,
            gen,
        }
    }

    fn arm_recv(&mut self, key: usize) -> io::Result<()> {
        let u = Op::Recv(self.slot(key)).user_data();
        let group = self.bufs.group();
        let Some(c) = self.conns[key].as_mut() else {
            return Ok(());
        };
        c.recv = Recv::Armed;
        c.ops += 1;
        let fd = c.stream.as_raw_fd();
        self.ring.recv_multi(fd, group, u)
    }

    pub(super) fn set_reading(&mut self, token: Token, on: bool) -> io::Result<()> {
        let slot = self.slot(token.0);
        let Some(c) = self.conns.get_mut(token.0).and_then(Option::as_mut) else {
            return Ok(());
        };
        c.want_read = on;
        match (on, c.recv) {
            (true, Recv::Off) if !c.closing => self.arm_recv(token.0),
            (false, Recv::Armed) => {
                // The receive ends with -ECANCELED (or after data); it is
                // re-armed then if reading was resumed meanwhile.
                c.recv = Recv::Cancelling;
                c.ops += 1;
                self.ring
                    .cancel(Op::Recv(slot).user_data(), Op::Cancel(slot).user_data())
            }
            _ => Ok(()),
        }
    }

    pub(super) fn send(&mut self, token: Token, batch: SendBatch) -> io::Result<()> {
        let u = Op::Send(self.slot(token.0)).user_data();
        let hdr = self.headers.pop().unwrap_or_default();
        let c = self.conns[token.0].as_mut().expect("send on a live token");
        c.ops += 1;
        let fd = c.stream.as_raw_fd();
        self.ring.send(fd, batch, hdr, u)
    }

    pub(super) fn shutdown_write(&mut self, token: Token) {
        if let Some(c) = self.conns.get(token.0).and_then(Option::as_ref) {
            let _ = c.stream.shutdown(std::net::Shutdown::Write);
        }
    }

    pub(super) fn close(&mut self, token: Token) -> io::Result<()> {
        let u = Op::Shutdown(self.slot(token.0)).user_data();
        let Some(c) = self.conns.get_mut(token.0).and_then(Option::as_mut) else {
            return Ok(());
        };
        if c.closing {
            return Ok(());
        }
        c.closing = true;
        if c.ops == 0 {
            self.conns[token.0] = None;
            self.closed.push(token);
            return Ok(());
        }
        // shutdown(2) ends the multishot receive (EOF) and fails a send
        // stuck on a full socket, so every operation completes.
        c.ops += 1;
        let fd = c.stream.as_raw_fd();
        self.ring.shutdown(fd, u)
    }

    pub(super) fn wake_ring(&mut self, ring_fd: RawFd, fallback_eventfd: RawFd) -> bool {
        let u = Op::MsgRing(fallback_eventfd).user_data();
        if self.ring.msg_ring(ring_fd, 0, u).is_err() {
            super::sys::eventfd_signal(fallback_eventfd);
            return false;
        }
        true
    }

    pub(super) fn tick(&mut self) -> io::Result<()> {
        for (i, l) in self.listeners.iter_mut().enumerate() {
            if !l.armed {
                self.ring
                    .accept_multi(l.sock.as_raw_fd(), Op::Accept(i as u32).user_data())?;
                l.armed = true;
            }
        }
        Ok(())
    }

    pub(super) fn poll(
        &mut self,
        timeout: Option<Duration>,
        mut on_event: impl FnMut(Event<'_>),
    ) -> io::Result<()> {
        let mut wait = timeout;
        if !self.closed.is_empty() {
            for t in self.closed.drain(..) {
                on_event(Event::Closed(t));
            }
            wait = Some(Duration::ZERO);
        }
        self.bufs.commit();
        match wait {
            None => self.ring.submit_and_wait(1)?,
            Some(d) => self.ring.submit_and_wait_timeout(1, d)?,
        };
        let mut cqes = std::mem::take(&mut self.cqes);
        self.ring.drain(&mut cqes);
        let mut r = Ok(());
        for c in cqes.drain(..) {
            if let Err(e) = self.complete(c, &mut on_event) {
                r = Err(e);
            }
        }
        self.cqes = cqes;
        r
    }

    /// Looks up the connection a completion names, if it is still that one.
    fn live(&mut self, s: Slot) -> Option<&mut Conn> {
        self.conns
            .get_mut(s.key as usize)
            .and_then(Option::as_mut)
            .filter(|c| c.gen == s.gen)
    }

    fn complete(&mut self, c: Completion, on_event: &mut impl FnMut(Event<'_>)) -> io::Result<()> {
        let Some(op) = Op::from_user_data(c.user_data) else {
            return Ok(());
        };
        match op {
            Op::Accept(i) => self.on_accept(i as usize, &c, on_event)?,
            Op::Recv(s) => self.on_recv(&c, s, on_event)?,
            Op::Send(s) => {
                let (batch, hdr) = c.send.expect("a send completion carries its batch");
                self.headers.push(hdr);
                if let Some(conn) = self.live(s) {
                    conn.ops -= 1;
                    let r = if c.result < 0 {
                        Err(io::Error::from_raw_os_error(-c.result))
                    } else {
                        Ok(c.result as usize)
                    };
                    on_event(Event::Sent(Token(s.key as usize), batch, r));
                    self.maybe_free(s, on_event);
                }
            }
            Op::Shutdown(s) | Op::Cancel(s) => {
                if let Some(conn) = self.live(s) {
                    conn.ops -= 1;
                    self.maybe_free(s, on_event);
                }
            }
            Op::WakeRead => {
                if let Some(fd) = self.wake_fd {
                    self.ring.read_eventfd(fd, Op::WakeRead.user_data())?;
                }
            }
            Op::MsgRing(fallback) => {
                // Posted on the target with result 0: nothing to do there
                // (the mailbox is drained every turn). Ours failed: fall back
                // to the target's eventfd so the wake-up is not lost.
                if c.result < 0 {
                    tracing::debug!(error = c.result, "MSG_RING failed; waking by eventfd");
                    super::sys::eventfd_signal(fallback);
                }
            }
            Op::CancelAccept(_) => {}
        }
        Ok(())
    }

    /// A completion of listener `i`'s multishot accept.
    fn on_accept(
        &mut self,
        i: usize,
        c: &Completion,
        on_event: &mut impl FnMut(Event<'_>),
    ) -> io::Result<()> {
        // After `stop_listening` the table is empty: accepted sockets are
        // dropped, so closed at once.
        let stream = (c.result >= 0).then(|| ring::accepted_stream(c.result));
        let Some(l) = self.listeners.get_mut(i) else {
            return Ok(());
        };
        if !c.more() {
            l.armed = false;
        }
        let id = l.id;
        let Some(stream) = stream else {
            on_event(Event::AcceptFailed(io::Error::from_raw_os_error(-c.result)));
            return Ok(()); // re-armed at the next tick
        };
        if !self.listeners[i].armed {
            self.tick()?;
        }
        on_event(Event::Accepted(stream, id));
        Ok(())
    }

    fn on_recv(
        &mut self,
        c: &Completion,
        s: Slot,
        on_event: &mut impl FnMut(Event<'_>),
    ) -> io::Result<()> {
        let token = Token(s.key as usize);
        let len = c.result.max(0) as usize;
        let Some(conn) = self.live(s) else {
            if let Some(bid) = c.buffer_id() {
                self.bufs.give_back(bid, len, c.buffer_more());
            }
            return Ok(());
        };
        let closing = conn.closing;
        if let Some(bid) = c.buffer_id() {
            if closing || len == 0 {
                self.bufs.give_back(bid, len, c.buffer_more());
            } else {
                self.bufs.with_buf(bid, len, c.buffer_more(), |b| {
                    on_event(Event::Data(token, b))
                });
            }
        }
        if c.more() {
            return Ok(());
        }
        let Some(conn) = self.live(s) else {
            return Ok(());
        };
        conn.ops -= 1;
        conn.recv = Recv::Off;
        let rearm = conn.want_read && !conn.closing;
        match c.result {
            0 => {
                if !closing {
                    on_event(Event::Eof(token));
                }
            }
            // Out of receive buffers (they come back every turn), cancelled
            // for a pause, or stopped by the kernel after data: re-arm if
            // reading is wanted.
            r if r > 0 || r == -libc::ENOBUFS || r == -libc::ECANCELED => {
                if rearm {
                    self.arm_recv(token.0)?;
                }
            }
            r => {
                if !closing {
                    on_event(Event::Failed(token, io::Error::from_raw_os_error(-r)));
                }
            }
        }
        self.maybe_free(s, on_event);
        Ok(())
    }

    /// Frees a closing connection once nothing names it.
    fn maybe_free(&mut self, s: Slot, on_event: &mut impl FnMut(Event<'_>)) {
        if let Some(c) = self.live(s) {
            if c.closing && c.ops == 0 {
                // Dropping the stream closes the descriptor.
                self.conns[s.key as usize] = None;
                on_event(Event::Closed(Token(s.key as usize)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_round_trips_every_op() {
        let s = Slot {
            key: 0xdead_beef,
            gen: 0xab_cdef,
        };
        for op in [
            Op::Accept(3),
            Op::CancelAccept(1),
            Op::Recv(s),
            Op::Send(s),
            Op::Shutdown(s),
            Op::Cancel(s),
            Op::WakeRead,
            Op::MsgRing(17),
        ] {
            let u = op.user_data();
            assert!(u < ring::USER_DATA_LIMIT, "{op:?} uses the ring's bit");
            assert_eq!(Op::from_user_data(u), Some(op));
        }
        assert_eq!(Op::from_user_data(0), None);
    }
}
