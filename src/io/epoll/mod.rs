//! The epoll backend, for hosts that refuse io_uring.
//!
//! One epoll instance per shard. Input is **edge-triggered**: a pause or a
//! resume costs no `epoll_ctl`. Output interest is added only while a send
//! waits for room (one `epoll_ctl` each way), since a socket registered for
//! `EPOLLOUT` for good wakes the loop whenever an ACK frees send buffer.
//! Chosen by measurement against level-triggered and always-`EPOLLOUT`
//! edge-triggered variants: bench-results/README.md. The price of
//! edges is remembering readiness ourselves: a connection whose last read
//! filled the buffer, or that was paused while readable, stays on the
//! `ready` list and is read in a later `poll` without waiting for a new
//! edge. A read shorter than the buffer means the socket was drained, and
//! any later data raises a new edge, unless the peer's FIN was signalled
//! (`EPOLLRDHUP`): then the EOF behind the data is read in the next `poll`.
//!
//! Sends are attempted at once with one gathered `sendmsg` of the batch's
//! segments;
//! only what the socket refused waits for `EPOLLOUT`. Completions are
//! reported from the next `poll`, as io_uring would, so the caller sees the
//! same order of events on both backends.

use super::{Event, ListenerId, Options, SendBatch, SetupError, Token, MAX_SEND_SEGMENTS};
use std::collections::VecDeque;
use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// epoll data of the wake-up eventfd, and the tag of a listener's (its
/// index in the listener table below it); connections use their token,
/// a slab key far below either.
const WAKER: u64 = u64::MAX;
const LISTENER_TAG: u64 = 1 << 62;
/// Events taken per `epoll_wait`.
const EVENTS: usize = 1024;
/// A connection's interest: input, edge-triggered (a pause or resume costs
/// no `epoll_ctl`) ...
const INPUT: u32 = (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLET) as u32;
/// ... and output only while a send waits for room: registered for good,
/// `EPOLLOUT` would wake the loop for every ACK that frees send buffer.
const INPUT_OUTPUT: u32 = INPUT | libc::EPOLLOUT as u32;
/// Reads per connection per `poll`: a busy connection's data is taken in
/// a few large steps (as io_uring's multishot receive delivers whatever the
/// socket holds), which keeps the buffers of frames that straddle reads
/// from growing in lockstep across connections (measured: 390 vs 295 KiB of
/// RSS per half-received 512 KiB frame, 1,000 connections), while 8 × the
/// buffer bounds what one connection takes before the others get a turn.
const READS_PER_POLL: usize = 8;
/// Connections accepted per `poll`, so a connect storm cannot starve the
/// connections already served; the rest wait for the next `poll`.
const ACCEPTS_PER_POLL: usize = 256;

#[derive(Debug)]
struct Conn {
    stream: TcpStream,
    want_read: bool,
    /// Input may be waiting (an edge seen, or the last read filled the buffer).
    readable: bool,
    /// On the `ready` list.
    queued: bool,
    /// A send the socket refused part of, waiting for `EPOLLOUT`.
    blocked: Option<SendBatch>,
    /// The peer's FIN (or an error) was signalled: it is read after any
    /// data, and no further edge will announce it, so a short read does not
    /// mean drained.
    hup: bool,
    /// EOF or an error was read: nothing more to read.
    ended: bool,
}

/// A listening socket and what the caller named it.
#[derive(Debug)]
struct Listening {
    sock: TcpListener,
    id: ListenerId,
    /// May have connections waiting (edge seen, not drained).
    ready: bool,
}

/// A completion to report from the next `poll`.
#[derive(Debug)]
enum Done {
    Sent(Token, SendBatch, io::Result<usize>),
    Closed(Token),
}

/// The epoll backend (see the module doc).
#[derive(Debug)]
pub struct EpollDriver {
    epfd: OwnedFd,
    conns: Vec<Option<Conn>>,
    /// Emptied by `stop_listening`.
    listeners: Vec<Listening>,
    wake_fd: Option<RawFd>,
    /// One receive buffer: data is handed out before the next read.
    buf: Vec<u8>,
    ready: Vec<usize>,
    done: VecDeque<Done>,
    events: Vec<libc::epoll_event>,
}

fn ctl(epfd: RawFd, op: libc::c_int, fd: RawFd, events: u32, data: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: data };
    // SAFETY: `ev` is a live local the kernel reads during the call.
    cvt(unsafe { libc::epoll_ctl(epfd, op, fd, &mut ev) }).map(drop)
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

impl EpollDriver {
    /// Creates the epoll instance, with `wake_fd` registered.
    pub fn new(opts: &Options, wake_fd: Option<RawFd>) -> Result<EpollDriver, SetupError> {
        let setup = |e: io::Error| SetupError {
            explanation: format!("cannot create an epoll instance ({e})"),
            cause: e,
        };
        // SAFETY: epoll_create1 takes no pointers; the result is checked and owned.
        let fd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) }).map_err(setup)?;
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        let epfd = unsafe { OwnedFd::from_raw_fd(fd) };
        let d = EpollDriver {
            epfd,
            conns: Vec::new(),
            listeners: Vec::new(),
            wake_fd,
            buf: vec![0; opts.recv_buffer_size.max(64)],
            ready: Vec::new(),
            done: VecDeque::new(),
            events: Vec::with_capacity(EVENTS),
        };
        if let Some(w) = wake_fd {
            // Level-triggered: drained by a read whenever it fires.
            d.ctl(libc::EPOLL_CTL_ADD, w, libc::EPOLLIN as u32, WAKER)
                .map_err(setup)?;
        }
        Ok(d)
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, events: u32, data: u64) -> io::Result<()> {
        ctl(self.epfd.as_raw_fd(), op, fd, events, data)
    }

    pub(super) fn features(&self) -> String {
        "edge-triggered,gathered-sendmsg".into()
    }

    pub(super) fn ring_fd(&self) -> Option<RawFd> {
        None
    }

    pub(super) fn listen(&mut self, listener: TcpListener, id: ListenerId) -> io::Result<()> {
        listener.set_nonblocking(true)?;
        let ev = (libc::EPOLLIN | libc::EPOLLET) as u32;
        let tag = LISTENER_TAG | self.listeners.len() as u64;
        self.ctl(libc::EPOLL_CTL_ADD, listener.as_raw_fd(), ev, tag)?;
        self.listeners.push(Listening {
            sock: listener,
            id,
            ready: true,
        });
        Ok(())
    }

    pub(super) fn stop_listening(&mut self) {
        for l in self.listeners.drain(..) {
            // As for io_uring: refuse new connections at once.
            let _ = socket2::SockRef::from(&l.sock).shutdown(std::net::Shutdown::Both);
        }
    }

    pub(super) fn add(&mut self, token: Token, stream: TcpStream) -> io::Result<()> {
        stream.set_nonblocking(true)?;
        self.ctl(
            libc::EPOLL_CTL_ADD,
            stream.as_raw_fd(),
            INPUT,
            token.0 as u64,
        )?;
        if self.conns.len() <= token.0 {
            self.conns.resize_with(token.0 + 1, || None);
        }
        debug_assert!(self.conns[token.0].is_none(), "token {token:?} in use");
        self.conns[token.0] = Some(Conn {
            stream,
            want_read: true,
            readable: false,
            queued: false,
            blocked: None,
            hup: false,
            ended: false,
        });
        Ok(())
    }

    fn enqueue(&mut self, key: usize) {
        if let Some(c) = self.conns.get_mut(key).and_then(Option::as_mut) {
            if c.readable && c.want_read && !c.queued && !c.ended {
                c.queued = true;
                self.ready.push(key);
            }
        }
    }

    pub(super) fn set_reading(&mut self, token: Token, on: bool) -> io::Result<()> {
        if let Some(c) = self.conns.get_mut(token.0).and_then(Option::as_mut) {
            c.want_read = on;
        }
        self.enqueue(token.0);
        Ok(())
    }

    pub(super) fn send(&mut self, token: Token, batch: SendBatch) -> io::Result<()> {
        let c = self.conns[token.0].as_mut().expect("send on a live token");
        debug_assert!(c.blocked.is_none(), "one send in flight per connection");
        match send_gathered(&c.stream, &batch) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                c.blocked = Some(batch);
                let (epfd, fd) = (self.epfd.as_raw_fd(), c.stream.as_raw_fd());
                ctl(epfd, libc::EPOLL_CTL_MOD, fd, INPUT_OUTPUT, token.0 as u64)?;
            }
            r => self.done.push_back(Done::Sent(token, batch, r)),
        }
        Ok(())
    }

    pub(super) fn shutdown_write(&mut self, token: Token) {
        if let Some(c) = self.conns.get(token.0).and_then(Option::as_ref) {
            let _ = c.stream.shutdown(std::net::Shutdown::Write);
        }
    }

    pub(super) fn close(&mut self, token: Token) -> io::Result<()> {
        if let Some(c) = self.conns.get_mut(token.0).and_then(Option::take) {
            if let Some(b) = c.blocked {
                let e = io::Error::from_raw_os_error(libc::ECANCELED);
                self.done.push_back(Done::Sent(token, b, Err(e)));
            }
            // Closing the descriptor (its only reference) also removes it
            // from the epoll set.
            drop(c.stream);
            self.done.push_back(Done::Closed(token));
        }
        Ok(())
    }

    pub(super) fn wake_ring(&mut self, _ring_fd: RawFd, fallback_eventfd: RawFd) -> bool {
        super::sys::eventfd_signal(fallback_eventfd);
        false
    }

    pub(super) fn tick(&mut self) -> io::Result<()> {
        // An accept that failed (EMFILE) left connections queued without a
        // new edge: try again.
        for l in &mut self.listeners {
            l.ready = true;
        }
        Ok(())
    }

    pub(super) fn poll(
        &mut self,
        timeout: Option<Duration>,
        mut on_event: impl FnMut(Event<'_>),
    ) -> io::Result<()> {
        if !self.done.is_empty() {
            // Completions first; the caller comes back at once, and the
            // next poll waits for the kernel.
            while let Some(d) = self.done.pop_front() {
                match d {
                    Done::Sent(t, b, r) => on_event(Event::Sent(t, b, r)),
                    Done::Closed(t) => on_event(Event::Closed(t)),
                }
            }
            return Ok(());
        }
        let busy = !self.ready.is_empty() || self.listeners.iter().any(|l| l.ready);
        let ms = match timeout {
            _ if busy => 0,
            None => -1,
            // Round up: a timeout must not return before it is due.
            Some(d) => d.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32,
        };
        self.events.clear();
        // SAFETY: the kernel writes at most EVENTS entries into the
        // vector's spare capacity, and we set the length to what it wrote.
        let n = unsafe {
            libc::epoll_wait(
                self.epfd.as_raw_fd(),
                self.events.as_mut_ptr(),
                EVENTS as i32,
                ms,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        } else {
            // SAFETY: epoll_wait initialised the first `n` entries.
            unsafe { self.events.set_len(n as usize) };
        }
        let mut events = std::mem::take(&mut self.events);
        for ev in &events {
            let (flags, data) = (ev.events, ev.u64);
            match data {
                WAKER => {
                    if let Some(fd) = self.wake_fd {
                        super::sys::eventfd_drain(fd);
                    }
                }
                tag if tag & LISTENER_TAG != 0 => {
                    if let Some(l) = self.listeners.get_mut((tag & !LISTENER_TAG) as usize) {
                        l.ready = true;
                    }
                }
                key => self.on_ready(key as usize, flags, &mut on_event),
            }
        }
        events.clear();
        self.events = events;
        for i in 0..self.listeners.len() {
            if self.listeners[i].ready {
                self.accept(i, &mut on_event);
            }
        }
        self.read_ready(&mut on_event);
        Ok(())
    }

    fn on_ready(&mut self, key: usize, flags: u32, on_event: &mut impl FnMut(Event<'_>)) {
        let epfd = self.epfd.as_raw_fd();
        let Some(c) = self.conns.get_mut(key).and_then(Option::as_mut) else {
            return;
        };
        let input = (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32;
        if flags & input != 0 {
            c.readable = true;
        }
        if flags & (libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0 {
            c.hup = true;
        }
        let output = (libc::EPOLLOUT | libc::EPOLLHUP | libc::EPOLLERR) as u32;
        if flags & output != 0 {
            if let Some(b) = c.blocked.take() {
                match send_gathered(&c.stream, &b) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => c.blocked = Some(b),
                    r => {
                        on_event(Event::Sent(Token(key), b, r));
                        // Room again: stop hearing about output. On failure
                        // the next blocked send re-registers it anyway.
                        let fd = c.stream.as_raw_fd();
                        let _ = ctl(epfd, libc::EPOLL_CTL_MOD, fd, INPUT, key as u64);
                    }
                }
            }
        }
        self.enqueue(key);
    }

    /// Accepts from listener `i` (at most `ACCEPTS_PER_POLL` per listener).
    fn accept(&mut self, i: usize, on_event: &mut impl FnMut(Event<'_>)) {
        let l = &mut self.listeners[i];
        let (lfd, id) = (l.sock.as_raw_fd(), l.id);
        for _ in 0..ACCEPTS_PER_POLL {
            // SAFETY: null address pointers are allowed (we do not want the
            // peer address here); the result is checked.
            let fd = unsafe {
                libc::accept4(
                    lfd,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                )
            };
            if fd < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::WouldBlock => l.ready = false,
                    io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted => continue,
                    // EMFILE and friends: retried at the next tick.
                    _ => {
                        l.ready = false;
                        on_event(Event::AcceptFailed(e));
                    }
                }
                return;
            }
            // SAFETY: accept4 just created this descriptor; nothing else owns it.
            on_event(Event::Accepted(unsafe { TcpStream::from_raw_fd(fd) }, id));
        }
    }

    /// Reads once from each connection that may have input and wants it.
    fn read_ready(&mut self, on_event: &mut impl FnMut(Event<'_>)) {
        let mut ready = std::mem::take(&mut self.ready);
        let mut keep = Vec::new();
        for key in ready.drain(..) {
            let Some(c) = self.conns.get_mut(key).and_then(Option::as_mut) else {
                continue;
            };
            c.queued = false;
            let token = Token(key);
            for _ in 0..READS_PER_POLL {
                if !c.want_read || !c.readable || c.ended {
                    break;
                }
                let fd = c.stream.as_raw_fd();
                // SAFETY: reads into our own buffer, at most its length.
                let n = unsafe { libc::read(fd, self.buf.as_mut_ptr().cast(), self.buf.len()) };
                if n > 0 {
                    let n = n as usize;
                    // A short read drained the socket: the next data raises
                    // an edge. After the peer's FIN the EOF is still to read.
                    let drained = n < self.buf.len() && !c.hup;
                    if drained {
                        c.readable = false;
                    }
                    on_event(Event::Data(token, &mut self.buf[..n]));
                    if drained {
                        break;
                    }
                } else if n == 0 {
                    c.ended = true;
                    on_event(Event::Eof(token));
                } else {
                    let e = io::Error::last_os_error();
                    match e.kind() {
                        io::ErrorKind::WouldBlock => c.readable = false,
                        io::ErrorKind::Interrupted => {}
                        _ => {
                            c.ended = true;
                            on_event(Event::Failed(token, e));
                        }
                    }
                }
            }
            if c.readable && c.want_read && !c.ended {
                // The per-poll read cap was reached: more next time.
                c.queued = true;
                keep.push(key);
            }
        }
        // Nothing else queues during poll (the caller changes interest
        // only between polls), so the list is exactly what is left.
        debug_assert!(self.ready.is_empty());
        self.ready = keep;
    }
}

/// One gathered `sendmsg` of the batch's unsent bytes; MSG_NOSIGNAL, so a
/// peer that has gone away is an EPIPE error, not a signal.
fn send_gathered(stream: &TcpStream, batch: &SendBatch) -> io::Result<usize> {
    let mut iov = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; MAX_SEND_SEGMENTS];
    let mut n = 0;
    for s in batch.slices() {
        iov[n] = libc::iovec {
            iov_base: s.as_ptr() as *mut libc::c_void,
            iov_len: s.len(),
        };
        n += 1;
    }
    // SAFETY: a msghdr naming `n` iovecs that point into the live batch,
    // which outlives the call; sendmsg only reads them.
    let r = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = iov.as_mut_ptr();
        msg.msg_iovlen = n as _;
        libc::sendmsg(stream.as_raw_fd(), &msg, libc::MSG_NOSIGNAL)
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}
