//! The io_uring layer: the only module that touches raw io_uring, and the
//! only one with `unsafe`.
//!
//! [`Uring`] wraps one ring and offers a safe API: every operation that lends
//! memory to the kernel takes ownership of it (a [`SendBatch`], a timeout's
//! timespec, an eventfd read buffer) and hands it back in the [`Completion`],
//! so no caller can free or reuse memory the kernel may still touch.
//! [`BufRing`] owns a provided-buffer ring for multishot receives.
//!
//! User data: callers pass any `u64` below [`USER_DATA_LIMIT`]; values at or
//! above it are the layer's own (an index into its table of owned resources).

mod bufring;

pub use bufring::BufRing;

use bytes::Bytes;
use io_uring::{cqueue, opcode, squeue, types, IoUring, Probe};
use slab::Slab;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

/// Caller user data must be below this; the top bit is the layer's.
pub const USER_DATA_LIMIT: u64 = 1 << 63;

/// Packs an operation kind (7 bits), a slot generation (24 bits) and a
/// slot index (32 bits) into user data below [`USER_DATA_LIMIT`]: the
/// convention the shard loop and the load generator share, so a stale
/// completion for a reused slot is recognised by its generation.
#[inline]
pub fn pack_user_data(kind: u64, gen: u32, slot: usize) -> u64 {
    debug_assert!(kind < 128);
    (kind << 56) | ((gen as u64 & 0xff_ffff) << 32) | (slot as u64 & 0xffff_ffff)
}

/// The inverse of [`pack_user_data`]: `(kind, generation, slot)`.
#[inline]
pub fn unpack_user_data(u: u64) -> (u64, u32, usize) {
    (
        u >> 56,
        ((u >> 32) & 0xff_ffff) as u32,
        (u & 0xffff_ffff) as usize,
    )
}

/// What the kernel offered when the ring was set up (logged at start-up).
#[derive(Debug, Clone, Default)]
pub struct Features {
    /// `IORING_SETUP_SINGLE_ISSUER` accepted.
    pub single_issuer: bool,
    /// `IORING_SETUP_DEFER_TASKRUN` accepted.
    pub defer_taskrun: bool,
    /// `IORING_SETUP_COOP_TASKRUN` accepted.
    pub coop_taskrun: bool,
    /// `IORING_OP_MSG_RING` supported (cross-ring wake-ups without a syscall).
    pub msg_ring: bool,
    /// The kernel never drops completions on CQ overflow.
    pub nodrop: bool,
}

impl std::fmt::Display for Features {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names = vec!["multishot-accept", "multishot-recv", "buf-ring"];
        if self.single_issuer {
            names.push("single-issuer");
        }
        if self.defer_taskrun {
            names.push("defer-taskrun");
        }
        if self.coop_taskrun {
            names.push("coop-taskrun");
        }
        if self.msg_ring {
            names.push("msg-ring");
        }
        if self.nodrop {
            names.push("nodrop");
        }
        f.write_str(&names.join(","))
    }
}

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

/// Bytes handed to the kernel for one `sendmsg`. Owned by the layer while
/// the send is in flight; returned in the completion so the caller can
/// advance past what was sent and recycle buffers.
#[derive(Debug, Default)]
pub struct SendBatch {
    /// Segments in order; the first `offset` bytes of the first are already sent.
    pub segments: std::collections::VecDeque<Segment>,
    /// Bytes of `segments[0]` sent by earlier sends.
    pub offset: usize,
    iov: Vec<libc::iovec>,
    hdr: Option<Box<libc::msghdr>>,
}

// SAFETY: the raw pointers inside `iov`/`hdr` only ever point into this
// batch's own segments; a batch belongs to one shard thread at a time.
unsafe impl Send for SendBatch {}

impl SendBatch {
    /// Total bytes still to send.
    pub fn remaining(&self) -> usize {
        self.segments
            .iter()
            .map(|s| s.as_slice().len())
            .sum::<usize>()
            - self.offset
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
}

/// What the layer keeps alive for an operation in flight.
/// Timeouts and reads are never looked at again: they are held only so
/// the kernel's pointer stays valid until the completion.
#[allow(dead_code)]
enum Owned {
    Send(SendBatch),
    Timeout(Box<types::Timespec>),
    Read(Box<[u8; 8]>),
}

/// One completion, with the caller's user data and anything it lent.
#[derive(Debug)]
pub struct Completion {
    /// The caller's user data.
    pub user_data: u64,
    /// Result: a count or a negative errno.
    pub result: i32,
    /// Completion flags (see the helpers below).
    pub flags: u32,
    /// The send batch, for send completions.
    pub send: Option<SendBatch>,
}

impl Completion {
    /// More completions will follow for this (multishot) operation.
    #[inline]
    pub fn more(&self) -> bool {
        cqueue::more(self.flags)
    }

    /// The provided buffer the kernel filled, if any.
    #[inline]
    pub fn buffer_id(&self) -> Option<u16> {
        cqueue::buffer_select(self.flags)
    }
}

/// One io_uring instance, used from one thread.
pub struct Uring {
    inner: IoUring,
    owned: Slab<(u64, Owned)>,
    features: Features,
}

impl std::fmt::Debug for Uring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uring")
            .field("features", &self.features)
            .finish()
    }
}

/// Why io_uring could not be set up, with the fix, in one message.
pub fn explain_setup_error(e: &io::Error) -> String {
    let why = match e.raw_os_error() {
        Some(libc::ENOSYS) => {
            "the kernel has no io_uring (ringcast needs Linux 6.0 or newer, built with CONFIG_IO_URING)"
        }
        Some(libc::EPERM) | Some(libc::EACCES) => {
            "io_uring is disabled for this process: check `sysctl kernel.io_uring_disabled` (set it to 0) \
             and, in a container, use a seccomp profile that allows io_uring_setup, io_uring_enter and \
             io_uring_register (see deploy/README.md)"
        }
        Some(libc::ENOMEM) => {
            "not enough locked memory for the ring: raise RLIMIT_MEMLOCK (ulimit -l, LimitMEMLOCK=)"
        }
        Some(libc::EINVAL) => "the kernel rejected the ring parameters: ringcast needs Linux 6.0 or newer",
        _ => "io_uring setup failed",
    };
    format!("{why} ({e})")
}

impl Uring {
    /// Creates a ring with `entries` submission slots, asking for the best
    /// task-running mode the kernel has and falling back step by step:
    /// SINGLE_ISSUER+DEFER_TASKRUN (6.1), then COOP_TASKRUN (5.19), then none.
    /// Must be called on the thread that will use the ring.
    pub fn new(entries: u32) -> io::Result<Uring> {
        let cq = entries.saturating_mul(4);
        let mut features = Features::default();
        let attempt = IoUring::builder()
            .setup_cqsize(cq)
            .setup_single_issuer()
            .setup_defer_taskrun()
            .build(entries);
        let inner = match attempt {
            Ok(r) => {
                features.single_issuer = true;
                features.defer_taskrun = true;
                r
            }
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                match IoUring::builder()
                    .setup_cqsize(cq)
                    .setup_coop_taskrun()
                    .build(entries)
                {
                    Ok(r) => {
                        features.coop_taskrun = true;
                        r
                    }
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                        IoUring::builder().setup_cqsize(cq).build(entries)?
                    }
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        };
        let mut probe = Probe::new();
        if inner.submitter().register_probe(&mut probe).is_ok() {
            features.msg_ring = probe.is_supported(opcode::MsgRingData::CODE);
        }
        features.nodrop = inner.params().is_feature_nodrop();
        Ok(Uring {
            inner,
            owned: Slab::new(),
            features,
        })
    }

    /// The features found.
    pub fn features(&self) -> &Features {
        &self.features
    }

    /// The ring's file descriptor (the target of MSG_RING from other rings).
    pub fn fd(&self) -> RawFd {
        self.inner.as_raw_fd()
    }

    /// Operations whose resources the layer holds (sends, timeouts, reads).
    pub fn owned_in_flight(&self) -> usize {
        self.owned.len()
    }

    /// Queues an entry, submitting first if the queue is full.
    fn push(&mut self, entry: squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: every entry built by this module either lends no memory
            // or lends memory owned by `self.owned` until its completion.
            let pushed = unsafe { self.inner.submission().push(&entry).is_ok() };
            if pushed {
                return Ok(());
            }
            self.inner.submit()?;
        }
    }

    fn own(&mut self, user_data: u64, o: Owned) -> u64 {
        debug_assert!(user_data < USER_DATA_LIMIT);
        USER_DATA_LIMIT | self.owned.insert((user_data, o)) as u64
    }

    /// Multishot accept on a listening socket (5.19).
    pub fn accept_multi(&mut self, listener: RawFd, user_data: u64) -> io::Result<()> {
        let e = opcode::AcceptMulti::new(types::Fd(listener))
            .flags(libc::SOCK_CLOEXEC)
            .build()
            .user_data(user_data);
        self.push(e)
    }

    /// Multishot receive into buffers of `group` (6.0).
    pub fn recv_multi(&mut self, fd: RawFd, group: u16, user_data: u64) -> io::Result<()> {
        let e = opcode::RecvMulti::new(types::Fd(fd), group)
            .build()
            .user_data(user_data);
        self.push(e)
    }

    /// Sends the batch's bytes (from `offset` in its first segment) with one
    /// `sendmsg`. The batch comes back in the completion.
    pub fn send(&mut self, fd: RawFd, mut batch: SendBatch, user_data: u64) -> io::Result<()> {
        batch.iov.clear();
        for (i, seg) in batch.segments.iter().enumerate().take(MAX_SEND_SEGMENTS) {
            let s = seg.as_slice();
            let s = if i == 0 { &s[batch.offset..] } else { s };
            batch.iov.push(libc::iovec {
                iov_base: s.as_ptr() as *mut libc::c_void,
                iov_len: s.len(),
            });
        }
        // SAFETY: an all-zero msghdr is a valid empty header.
        let mut hdr: Box<libc::msghdr> = batch
            .hdr
            .take()
            .unwrap_or_else(|| Box::new(unsafe { std::mem::zeroed() }));
        hdr.msg_iov = batch.iov.as_mut_ptr();
        hdr.msg_iovlen = batch.iov.len() as _;
        let hdr_ptr: *const libc::msghdr = &*hdr;
        batch.hdr = Some(hdr);
        // Moving the batch into the table moves only the Vec/Box headers; the
        // heap memory the iovecs and msghdr point to stays where it is.
        let ud = self.own(user_data, Owned::Send(batch));
        let e = opcode::SendMsg::new(types::Fd(fd), hdr_ptr)
            .flags(libc::MSG_NOSIGNAL as u32)
            .build()
            .user_data(ud);
        self.push(e)
    }

    /// A one-shot timer that completes after `after` (with -ETIME).
    pub fn timeout(&mut self, after: Duration, user_data: u64) -> io::Result<()> {
        let ts = Box::new(
            types::Timespec::new()
                .sec(after.as_secs())
                .nsec(after.subsec_nanos()),
        );
        let ptr: *const types::Timespec = &*ts;
        let ud = self.own(user_data, Owned::Timeout(ts));
        self.push(opcode::Timeout::new(ptr).build().user_data(ud))
    }

    /// Reads 8 bytes (an eventfd counter) from `fd`.
    pub fn read_eventfd(&mut self, fd: RawFd, user_data: u64) -> io::Result<()> {
        let mut buf = Box::new([0u8; 8]);
        let ptr = buf.as_mut_ptr();
        let ud = self.own(user_data, Owned::Read(buf));
        self.push(
            opcode::Read::new(types::Fd(fd), ptr, 8)
                .build()
                .user_data(ud),
        )
    }

    /// Posts a completion with `user_data` and `result` on another ring
    /// (5.18), without a completion here on success.
    pub fn msg_ring(&mut self, target_ring: RawFd, result: i32, user_data: u64) -> io::Result<()> {
        let e = opcode::MsgRingData::new(types::Fd(target_ring), result, user_data, None)
            .build()
            .flags(squeue::Flags::SKIP_SUCCESS)
            .user_data(user_data);
        self.push(e)
    }

    /// Cancels the operation submitted with `target` user data (caller data
    /// only: the layer's own sends are stopped by shutting the socket down).
    pub fn cancel(&mut self, target: u64, user_data: u64) -> io::Result<()> {
        self.push(
            opcode::AsyncCancel::new(target)
                .build()
                .user_data(user_data),
        )
    }

    /// `shutdown(fd, SHUT_RDWR)`: pending receives and sends on it complete.
    pub fn shutdown(&mut self, fd: RawFd, user_data: u64) -> io::Result<()> {
        self.push(
            opcode::Shutdown::new(types::Fd(fd), libc::SHUT_RDWR)
                .build()
                .user_data(user_data),
        )
    }

    /// Closes `fd`.
    pub fn close(&mut self, fd: RawFd, user_data: u64) -> io::Result<()> {
        self.push(
            opcode::Close::new(types::Fd(fd))
                .build()
                .user_data(user_data),
        )
    }

    /// Submits what is queued and waits for at least `want` completions:
    /// one `io_uring_enter` per event-loop turn.
    pub fn submit_and_wait(&mut self, want: usize) -> io::Result<usize> {
        match self.inner.submit_and_wait(want) {
            Ok(n) => Ok(n),
            // Interrupted by a signal, or the CQ is momentarily full: the
            // caller drains completions and comes back.
            Err(e)
                if e.raw_os_error() == Some(libc::EINTR)
                    || e.raw_os_error() == Some(libc::EBUSY) =>
            {
                Ok(0)
            }
            Err(e) => Err(e),
        }
    }

    /// Like [`Uring::submit_and_wait`], but returns after `timeout` even
    /// with no completion (5.11 EXT_ARG): for loops that must act on time,
    /// such as an open-loop load generator.
    pub fn submit_and_wait_timeout(&mut self, want: usize, timeout: Duration) -> io::Result<usize> {
        let ts = types::Timespec::new()
            .sec(timeout.as_secs())
            .nsec(timeout.subsec_nanos());
        let args = types::SubmitArgs::new().timespec(&ts);
        match self.inner.submitter().submit_with_args(want, &args) {
            Ok(n) => Ok(n),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY)
                ) =>
            {
                Ok(0)
            }
            Err(e) => Err(e),
        }
    }

    /// Submits what is queued without waiting.
    pub fn submit(&mut self) -> io::Result<usize> {
        self.inner.submit()
    }

    /// Moves every available completion into `out` (cleared first).
    pub fn drain(&mut self, out: &mut Vec<Completion>) {
        out.clear();
        let owned = &mut self.owned;
        for cqe in self.inner.completion() {
            let mut c = Completion {
                user_data: cqe.user_data(),
                result: cqe.result(),
                flags: cqe.flags(),
                send: None,
            };
            if c.user_data >= USER_DATA_LIMIT {
                let key = (c.user_data & !USER_DATA_LIMIT) as usize;
                match owned.try_remove(key) {
                    Some((ud, o)) => {
                        c.user_data = ud;
                        if let Owned::Send(b) = o {
                            c.send = Some(b);
                        }
                    }
                    None => continue,
                }
            }
            out.push(c);
        }
    }
}

/// Creates a non-blocking eventfd (for wake-ups from threads without a ring).
pub fn eventfd() -> io::Result<std::os::fd::OwnedFd> {
    // SAFETY: eventfd has no memory preconditions; the fd is checked and owned.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) })
}

/// Adds 1 to an eventfd, waking a ring that has a read posted on it.
pub fn eventfd_signal(fd: RawFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live local; failure (EAGAIN when the
    // counter is saturated) still leaves the reader woken.
    unsafe {
        libc::write(fd, (&one as *const u64).cast(), 8);
    }
}

/// The system page size.
pub fn page_size() -> u64 {
    // SAFETY: sysconf reads a constant; no memory is passed.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 {
        n as u64
    } else {
        4096
    }
}

/// Takes ownership of a descriptor returned by a successful accept completion.
///
/// `fd` must be the non-negative result of an accept on this ring, not yet
/// wrapped: each accepted descriptor is wrapped exactly once, by the shard
/// that reaped it.
pub fn accepted_stream(fd: i32) -> std::net::TcpStream {
    assert!(fd >= 0, "accept result {fd} is not a descriptor");
    // SAFETY: the kernel just created this descriptor for us in an accept
    // completion; nothing else owns it, and the TcpStream closes it once.
    unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) }
}

/// Raises RLIMIT_NOFILE's soft limit to its hard limit (and, for a
/// privileged process, the hard limit to `fs.nr_open`); returns (old, new).
pub fn raise_nofile_limit() -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the live local struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let old = lim.rlim_cur;
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(0);
    if nr_open > lim.rlim_max {
        let want = libc::rlimit {
            rlim_cur: nr_open,
            rlim_max: nr_open,
        };
        // SAFETY: setrlimit reads the live local struct. Raising the hard
        // limit fails without CAP_SYS_RESOURCE; we then keep the old one.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } == 0 {
            return Ok((old, nr_open));
        }
    }
    lim.rlim_cur = lim.rlim_max;
    // SAFETY: setrlimit reads the live local struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((old, lim.rlim_cur))
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
        b.advance(9, |_| recycled += 1);
        assert_eq!((b.offset, b.segments.len(), b.remaining()), (2, 2, 9));
        b.advance(3, |_| recycled += 1);
        assert_eq!((b.offset, b.segments.len(), b.remaining()), (0, 1, 6));
        b.advance(6, |_| recycled += 1);
        assert_eq!((b.offset, b.segments.len(), b.remaining()), (0, 0, 0));
        assert_eq!(recycled, 2);
    }

    #[test]
    fn ring_sets_up_with_a_fallback() {
        match Uring::new(64) {
            Ok(r) => assert!(r.fd() >= 0),
            Err(e) => {
                eprintln!(
                    "skipping ring_sets_up_with_a_fallback: {}",
                    explain_setup_error(&e)
                );
            }
        }
    }
}
