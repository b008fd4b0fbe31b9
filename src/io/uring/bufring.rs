//! A provided-buffer ring (`IORING_REGISTER_PBUF_RING`, kernel 5.19+).
//!
//! The kernel picks a buffer from the ring for each multishot receive
//! completion, so an idle connection holds no receive buffer at all: memory
//! is per shard, not per connection. The application gets the buffer id in
//! the completion flags, reads it, and gives it back with [`BufRing::with_buf`]
//! (which returns it on exit) and [`BufRing::commit`] (which publishes the
//! returned buffers to the kernel once per batch).
//!
//! Where the kernel has it (6.12+), the ring is registered for incremental
//! consumption (`IOU_PBUF_RING_INC`): a receive takes only the bytes it
//! needs from the head buffer, and the next receive, on any connection,
//! continues where it stopped. The completion says `IORING_CQE_F_BUF_MORE`
//! while the kernel still has part of the buffer, so it goes back to the
//! ring only with the completion that used it up. Without it every receive
//! takes a whole buffer, so large buffers run out when many connections
//! receive in one turn; with it, buffers can be large (fewer receives and
//! fewer frames straddling two buffers) at no such cost, so the memory asked
//! for is registered as buffers of at least 256 KiB.

use io_uring::types::BufRingEntry;
use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

/// `IOU_PBUF_RING_INC` (io_uring.h, 6.12): consume buffers incrementally.
const IOU_PBUF_RING_INC: u16 = 2;

/// The smallest buffer registered for incremental consumption. Measured
/// against 512 x 32 KiB (the same 16 MiB, bench-results/README.md, issue
/// 15): 0.88x server CPU per 64 KiB echo and 1.16x msgs/s; 1 MiB buffers
/// did no better. At the default layout it is also the most one receive
/// takes from a connection before its session can pause it.
pub const INCREMENTAL_BUFFER_SIZE: usize = 256 << 10;

/// `count` x `size` bytes as buffers of at least
/// [`INCREMENTAL_BUFFER_SIZE`]: a power of two of them, at least one.
fn incremental_layout(count: u16, size: usize) -> (u16, usize) {
    if size >= INCREMENTAL_BUFFER_SIZE {
        return (count, size);
    }
    let n = (count as usize * size / INCREMENTAL_BUFFER_SIZE).max(1);
    // Round down to a power of two (n >= 1, and n <= count).
    let n = 1usize << (usize::BITS - 1 - n.leading_zeros());
    (n as u16, INCREMENTAL_BUFFER_SIZE)
}

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
    /// Registered with `IOU_PBUF_RING_INC`.
    incremental: bool,
    /// Per buffer, the bytes of it earlier completions took (incremental
    /// mode: the next completion naming it starts there).
    consumed: Vec<u32>,
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
            .field("incremental", &self.incremental)
            .finish()
    }
}

impl BufRing {
    /// Allocates and registers a ring of `count` buffers (a power of two,
    /// at most 32768) of `size` bytes with buffer group id `group`.
    ///
    /// Where the kernel consumes buffers incrementally, the same memory is
    /// registered as buffers of at least [`INCREMENTAL_BUFFER_SIZE`]: a
    /// receive then takes only what it needs, so large buffers cost small
    /// messages nothing and save large frames receives and straddles.
    /// Elsewhere the layout is as asked.
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
        let (inc_count, inc_size) = incremental_layout(count, size);
        match BufRing::register(ring, group, inc_count, inc_size, IOU_PBUF_RING_INC) {
            // Before 6.12 the flag is unknown: whole buffers per receive.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                BufRing::register(ring, group, count, size, 0)
            }
            r => r,
        }
    }

    fn register(
        ring: &super::ring::Uring,
        group: u16,
        count: u16,
        size: usize,
        flags: u16,
    ) -> io::Result<BufRing> {
        let ring_map = Mapping::new(count as usize * std::mem::size_of::<BufRingEntry>())?;
        let bufs = Mapping::new(count as usize * size)?;
        let mut br = BufRing {
            group,
            count,
            size,
            mask: count - 1,
            ring: ring_map,
            bufs,
            incremental: flags & IOU_PBUF_RING_INC != 0,
            consumed: vec![0; count as usize],
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
                flags,
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

    /// Whether receives consume buffers incrementally.
    pub fn incremental(&self) -> bool {
        self.incremental
    }

    /// How many buffers, of how many bytes, are registered.
    pub fn layout(&self) -> (u16, usize) {
        (self.count, self.size)
    }

    /// Lends the `len` bytes a completion put in buffer `bid` to `f`, then
    /// gives the buffer back to the ring unless the kernel still uses the
    /// rest of it (`more`: the completion had `IORING_CQE_F_BUF_MORE`).
    /// The bytes may be modified in place.
    ///
    /// `bid`, `len` and `more` must come from a completion of this ring's
    /// group, taken in completion order: the kernel has handed those bytes
    /// over and will not touch them again until the buffer is returned.
    pub fn with_buf<R>(
        &mut self,
        bid: u16,
        len: usize,
        more: bool,
        f: impl FnOnce(&mut [u8]) -> R,
    ) -> R {
        let start = self.consumed.get(bid as usize).copied().unwrap_or(0) as usize;
        assert!(
            bid < self.count && start + len <= self.size,
            "buffer id {bid}/{start}+{len} out of range"
        );
        // SAFETY: bounds checked above; the kernel gave up these bytes with
        // the completion that named `bid`, it writes the buffer only past
        // them (incremental mode) or not at all until it is returned, and
        // that happens only after `f` returns, so this is the only live
        // reference to them.
        let buf = unsafe {
            std::slice::from_raw_parts_mut(self.bufs.ptr.add(bid as usize * self.size + start), len)
        };
        let r = f(buf);
        self.consumed_up_to(bid, len, more);
        r
    }

    /// Gives back the bytes a completion put in buffer `bid` without
    /// reading them (a completion we discard).
    pub fn give_back(&mut self, bid: u16, len: usize, more: bool) {
        if bid < self.count {
            self.consumed_up_to(bid, len, more);
        }
    }

    /// Records that a completion used `len` bytes of `bid`; the buffer
    /// returns to the ring once the kernel is done with it.
    fn consumed_up_to(&mut self, bid: u16, len: usize, more: bool) {
        if self.incremental && more {
            self.consumed[bid as usize] += len as u32;
        } else {
            self.consumed[bid as usize] = 0;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incremental_layout_keeps_the_memory_in_larger_buffers() {
        // The default: 512 x 32 KiB = 16 MiB as 64 x 256 KiB.
        assert_eq!(incremental_layout(512, 32 << 10), (64, 256 << 10));
        // Already large: as asked.
        assert_eq!(incremental_layout(16, 1 << 20), (16, 1 << 20));
        // Not a whole power of two of 256 KiB: rounded down.
        assert_eq!(incremental_layout(8, 100_000), (2, 256 << 10));
        // Less than one: one buffer.
        assert_eq!(incremental_layout(2, 64), (1, 256 << 10));
    }

    #[test]
    fn registers_incrementally_where_the_kernel_can() {
        let Ok(ring) = super::super::ring::Uring::new(8) else {
            eprintln!("io_uring unavailable here: nothing to check");
            return;
        };
        let br = BufRing::new(&ring, 0, 512, 32 << 10).unwrap();
        if br.incremental() {
            assert_eq!(br.layout(), (64, 256 << 10));
        } else {
            eprintln!("no IOU_PBUF_RING_INC here (Linux < 6.12): whole buffers");
            assert_eq!(br.layout(), (512, 32 << 10));
        }
    }
}
