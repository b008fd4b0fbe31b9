//! The few plain syscalls the rest of the crate needs (eventfds, limits),
//! kept here so `unsafe` stays inside the io layer.

use std::io;
use std::os::fd::RawFd;

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

/// Reads (and so resets) an eventfd's counter; `false` when it was zero.
pub fn eventfd_drain(fd: RawFd) -> bool {
    let mut v: u64 = 0;
    // SAFETY: reads 8 bytes into a live local.
    let n = unsafe { libc::read(fd, (&mut v as *mut u64).cast(), 8) };
    n == 8
}
