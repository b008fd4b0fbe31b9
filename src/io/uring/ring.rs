//! One io_uring instance with a safe API: every operation that lends
//! memory to the kernel takes ownership of it (a [`SendBatch`] and its
//! [`SendHeader`], a timeout's timespec, an eventfd read buffer) and hands
//! it back in the [`Completion`], so no caller can free or reuse memory the
//! kernel may still touch.
//!
//! User data: callers pass any `u64` below [`USER_DATA_LIMIT`]; values at or
//! above it are the layer's own (an index into its table of owned resources).

use crate::io::SendBatch;
use io_uring::{cqueue, opcode, squeue, types, IoUring, Probe};
use slab::Slab;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

/// Caller user data must be below this; the top bit is the layer's.
pub const USER_DATA_LIMIT: u64 = 1 << 63;

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

/// The `msghdr` and iovec array of one `sendmsg`, kept between sends so a
/// send allocates nothing.
pub struct SendHeader {
    msg: Box<libc::msghdr>,
    iov: Vec<libc::iovec>,
}

impl Default for SendHeader {
    fn default() -> Self {
        SendHeader {
            // SAFETY: an all-zero msghdr is a valid empty header.
            msg: Box::new(unsafe { std::mem::zeroed() }),
            iov: Vec::with_capacity(crate::io::MAX_SEND_SEGMENTS),
        }
    }
}

impl std::fmt::Debug for SendHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendHeader")
            .field("iov_capacity", &self.iov.capacity())
            .finish()
    }
}

// SAFETY: the raw pointers inside only ever point into this header's own
// iovec array or at a batch travelling with it; it belongs to one thread at
// a time.
unsafe impl Send for SendHeader {}

/// What the layer keeps alive for an operation in flight.
/// Timeouts and reads are never looked at again: they are held only so
/// the kernel's pointer stays valid until the completion.
#[allow(dead_code)]
enum Owned {
    Send(SendBatch, SendHeader),
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
    /// The send batch and its header, for send completions.
    pub send: Option<(SendBatch, SendHeader)>,
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

    /// The kernel still uses the rest of the provided buffer
    /// (`IORING_CQE_F_BUF_MORE`, incrementally consumed rings only).
    #[inline]
    pub fn buffer_more(&self) -> bool {
        const IORING_CQE_F_BUF_MORE: u32 = 1 << 4;
        self.flags & IORING_CQE_F_BUF_MORE != 0
    }
}

/// One io_uring instance, used from one thread.
pub struct Uring {
    pub(super) inner: IoUring,
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
    /// `sendmsg`, using `hdr`'s reused allocations for the iovec array. The
    /// batch and header come back in the completion.
    pub fn send(
        &mut self,
        fd: RawFd,
        batch: SendBatch,
        mut hdr: SendHeader,
        user_data: u64,
    ) -> io::Result<()> {
        hdr.iov.clear();
        for s in batch.slices() {
            hdr.iov.push(libc::iovec {
                iov_base: s.as_ptr() as *mut libc::c_void,
                iov_len: s.len(),
            });
        }
        hdr.msg.msg_iov = hdr.iov.as_mut_ptr();
        hdr.msg.msg_iovlen = hdr.iov.len() as _;
        let hdr_ptr: *const libc::msghdr = &*hdr.msg;
        // Moving the batch and header into the table moves only their
        // Vec/Box headers; the heap memory the iovecs and msghdr point to
        // stays where it is until the completion hands them back.
        let ud = self.own(user_data, Owned::Send(batch, hdr));
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
                        if let Owned::Send(b, h) = o {
                            c.send = Some((b, h));
                        }
                    }
                    None => continue,
                }
            }
            out.push(c);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

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
