//! A provided-buffer ring (`IORING_REGISTER_PBUF_RING`, kernel 5.19+).
//!
//! The kernel picks a buffer from the ring for each multishot receive
//! completion, so an idle connection holds no receive buffer at all: memory
//! is per shard, not per connection. The application gets the buffer id in
//! the completion flags, reads it, and gives it back with [`BufRing::with_buf`]
//! (which returns it on exit) and [`BufRing::commit`] (which publishes the
//! returned buffers to the kernel once per batch).

use io_uring::types::BufRingEntry;
use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

/// Anonymous private mapping: page-aligned, lazily backed (RSS grows only as
/// the kernel fills buffers), freed on drop.
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    fn new(len: usize) -> io::Result<Mapping> {
        // SAFETY: an anonymous private mapping with no address hint has no
        // preconditions; the result is checked before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping {
            ptr: ptr.cast(),
            len,
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: ptr/len are exactly what mmap returned; nothing borrows the
        // mapping past the owner's lifetime (BufRing unregisters first).
        unsafe {
            libc::munmap(self.ptr.cast(), self.len);
        }
    }
}

/// A registered ring of `count` receive buffers of `size` bytes each.
pub struct BufRing {
    group: u16,
    count: u16,
    size: usize,
    mask: u16,
    /// The ring of `count` entries the kernel reads buffer addresses from.
    ring: Mapping,
    /// The buffers, contiguous: buffer `bid` is at `bid * size`.
    bufs: Mapping,
    /// Our copy of the tail; published to the kernel by `commit`.
    tail: u16,
    /// Whether `tail` moved since the last commit.
    dirty: bool,
}

// SAFETY (for the raw pointers inside): a BufRing belongs to one shard thread.
// It is never shared; moving it between threads before use is fine.
unsafe impl Send for BufRing {}

impl std::fmt::Debug for BufRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BufRing")
            .field("group", &self.group)
            .field("count", &self.count)
            .field("size", &self.size)
            .finish()
    }
}

impl BufRing {
    /// Allocates and registers a ring of `count` buffers (a power of two,
    /// at most 32768) of `size` bytes with buffer group id `group`.
    pub fn new(
        ring: &super::ring::Uring,
        group: u16,
        count: u16,
        size: usize,
    ) -> io::Result<BufRing> {
        if !count.is_power_of_two() || count > 32768 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "buffer ring size must be a power of two of at most 32768",
            ));
        }
        if size == 0 || size > u32::MAX as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "bad receive buffer size",
            ));
        }
        let ring_map = Mapping::new(count as usize * std::mem::size_of::<BufRingEntry>())?;
        let bufs = Mapping::new(count as usize * size)?;
        let mut br = BufRing {
            group,
            count,
            size,
            mask: count - 1,
            ring: ring_map,
            bufs,
            tail: 0,
            dirty: false,
        };
        // SAFETY: the ring mapping is page-aligned and `count` entries long.
        // The kernel pins its pages on registration, so even if this BufRing
        // is dropped before the ring is closed the kernel never sees freed memory.
        unsafe {
            ring.inner.submitter().register_buf_ring_with_flags(
                br.ring.ptr as u64,
                count,
                group,
                0,
            )?;
        }
        for bid in 0..count {
            br.push(bid);
        }
        br.commit();
        Ok(br)
    }

    /// The buffer group id to name in receive operations.
    pub fn group(&self) -> u16 {
        self.group
    }

    fn entries(&self) -> *mut BufRingEntry {
        self.ring.ptr.cast()
    }

    /// Adds buffer `bid` at our tail (not yet visible to the kernel).
    fn push(&mut self, bid: u16) {
        let idx = (self.tail & self.mask) as usize;
        // SAFETY: idx < count, so the entry lies inside the ring mapping; the
        // kernel only reads entries between its head and the published tail,
        // and this slot is beyond the published tail until `commit`.
        let entry = unsafe { &mut *self.entries().add(idx) };
        // SAFETY: bid < count, so the buffer lies inside the buffers mapping.
        let addr = unsafe { self.bufs.ptr.add(bid as usize * self.size) };
        entry.set_addr(addr as u64);
        entry.set_len(self.size as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
        self.dirty = true;
    }

    /// Lends buffer `bid` (which a completion said holds `len` bytes) to `f`,
    /// then returns it to the ring. The buffer may be modified in place.
    ///
    /// `bid` and `len` must come from a completion of this ring's group: the
    /// kernel has handed that buffer over and will not touch it again until
    /// it is returned.
    pub fn with_buf<R>(&mut self, bid: u16, len: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
        assert!(
            bid < self.count && len <= self.size,
            "buffer id {bid}/{len} out of range"
        );
        // SAFETY: bounds checked above; the kernel gave up this buffer with
        // the completion that named `bid`, and it goes back to the ring only
        // after `f` returns, so this is the only live reference to it.
        let buf = unsafe {
            std::slice::from_raw_parts_mut(self.bufs.ptr.add(bid as usize * self.size), len)
        };
        let r = f(buf);
        self.push(bid);
        r
    }

    /// Gives back buffer `bid` without reading it (a completion we discard).
    pub fn give_back(&mut self, bid: u16) {
        if bid < self.count {
            self.push(bid);
        }
    }

    /// Publishes the buffers returned since the last commit to the kernel.
    pub fn commit(&mut self) {
        if !self.dirty {
            return;
        }
        self.dirty = false;
        // SAFETY: the ring base is the first entry of a registered, page-
        // aligned buf_ring, so the tail field is where the kernel reads it;
        // the release store orders our entry writes before the new tail.
        unsafe {
            let tail = BufRingEntry::tail(self.entries()) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }
}
