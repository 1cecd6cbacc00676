//! The raw AF_XDP kernel interface (`linux/if_xdp.h`): the socket, the UMEM area and
//! the four shared-memory rings. Everything unsafe about AF_XDP is in this file.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

pub const SOL_XDP: libc::c_int = 283;
const XDP_MMAP_OFFSETS: libc::c_int = 1;
const XDP_RX_RING: libc::c_int = 2;
const XDP_TX_RING: libc::c_int = 3;
const XDP_UMEM_REG: libc::c_int = 4;
const XDP_UMEM_FILL_RING: libc::c_int = 5;
const XDP_UMEM_COMPLETION_RING: libc::c_int = 6;
const XDP_STATISTICS: libc::c_int = 7;
const XDP_OPTIONS: libc::c_int = 8;
const XDP_OPTIONS_ZEROCOPY: u32 = 1;

pub const XDP_COPY: u16 = 1 << 1;
pub const XDP_ZEROCOPY: u16 = 1 << 2;
pub const XDP_USE_NEED_WAKEUP: u16 = 1 << 3;
const XDP_RING_NEED_WAKEUP: u32 = 1;

const XDP_PGOFF_RX_RING: libc::off_t = 0;
const XDP_PGOFF_TX_RING: libc::off_t = 0x8000_0000;
const XDP_UMEM_PGOFF_FILL_RING: libc::off_t = 0x1_0000_0000;
const XDP_UMEM_PGOFF_COMPLETION_RING: libc::off_t = 0x1_8000_0000;

pub const HUGE_PAGE_SIZE: usize = 2 << 20;

#[repr(C)]
#[derive(Default)]
struct SockaddrXdp {
    family: u16,
    flags: u16,
    ifindex: u32,
    queue_id: u32,
    shared_umem_fd: u32,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct RingOffset {
    producer: u64,
    consumer: u64,
    desc: u64,
    flags: u64,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct MmapOffsets {
    rx: RingOffset,
    tx: RingOffset,
    fr: RingOffset,
    cr: RingOffset,
}

#[repr(C)]
#[derive(Default)]
struct UmemReg {
    addr: u64,
    len: u64,
    chunk_size: u32,
    headroom: u32,
    flags: u32,
}

/// One descriptor of the RX and TX rings.
#[repr(C)]
#[derive(Default, Clone, Copy, Debug)]
pub struct XdpDesc {
    pub addr: u64,
    pub len: u32,
    pub options: u32,
}

/// Kernel-side drop counters of one socket (`XDP_STATISTICS`).
#[repr(C)]
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq)]
pub struct XdpStatistics {
    pub rx_dropped: u64,
    pub rx_invalid_descs: u64,
    pub tx_invalid_descs: u64,
    pub rx_ring_full: u64,
    pub rx_fill_ring_empty_descs: u64,
    pub tx_ring_empty_descs: u64,
}

/// An anonymous shared mapping (UMEM packet memory or a ring), unmapped on drop.
#[derive(Debug)]
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; moving it to another
// thread moves that ownership (the worker that owns the port is the only user).
unsafe impl Send for Mapping {}

impl Mapping {
    /// Anonymous memory of `len` bytes, on 2 MiB huge pages when `huge` (then `len`
    /// must be a multiple of [`HUGE_PAGE_SIZE`]).
    pub fn anonymous(len: usize, huge: bool) -> io::Result<Mapping> {
        let mut flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE;
        if huge {
            flags |= libc::MAP_HUGETLB;
        }
        // SAFETY: a fresh anonymous mapping with no address hint aliases nothing; the
        // result is checked against MAP_FAILED before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                -1,
                0,
            )
        };
        Self::checked(ptr, len)
    }

    /// Maps ring memory of the XDP socket `fd` at page offset `pgoff`.
    fn ring(fd: RawFd, len: usize, pgoff: libc::off_t) -> io::Result<Mapping> {
        // SAFETY: mapping kernel ring memory of a socket we own; the kernel validates
        // fd, length and offset, and the result is checked before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd,
                pgoff,
            )
        };
        Self::checked(ptr, len)
    }

    fn checked(ptr: *mut libc::c_void, len: usize) -> io::Result<Mapping> {
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        NonNull::new(ptr.cast::<u8>())
            .map(|ptr| Mapping { ptr, len })
            .ok_or_else(|| io::Error::other("mmap returned NULL"))
    }

    pub fn len(&self) -> usize {
        self.len
    }

    fn addr(&self) -> u64 {
        self.ptr.as_ptr() as u64
    }

    /// `len` bytes at `start`, or `None` outside the mapping.
    pub fn get(&self, start: usize, len: usize) -> Option<&[u8]> {
        let end = start.checked_add(len)?;
        if end > self.len {
            return None;
        }
        // SAFETY: start..end lies inside the live mapping owned by self. Callers ask
        // only for chunks the kernel handed back (RX ring) and not yet returned, so
        // the kernel does not write them while the slice lives.
        Some(unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(start), len) })
    }

    /// `len` writable bytes at `start`, or `None` outside the mapping.
    pub fn get_mut(&mut self, start: usize, len: usize) -> Option<&mut [u8]> {
        let end = start.checked_add(len)?;
        if end > self.len {
            return None;
        }
        // SAFETY: as in get(); callers write only free chunks (owned by neither ring)
        // and &mut self makes this the only Rust reference.
        Some(unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().add(start), len) })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: ptr/len came from a successful mmap and nothing refers to the
        // mapping once its owner is dropped.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// A single-producer/single-consumer ring shared with the kernel.
///
/// For the fill and TX rings user space produces; for the RX and completion rings it
/// consumes. Indices run freely and wrap; `mask` maps them to slots.
#[derive(Debug)]
pub struct Ring<T> {
    producer: NonNull<AtomicU32>,
    consumer: NonNull<AtomicU32>,
    flags: NonNull<AtomicU32>,
    descs: NonNull<T>,
    size: u32,
    mask: u32,
    /// Our copy of the index we advance (producer for fill/TX, consumer for RX/comp).
    local: u32,
    /// Last seen value of the index the kernel advances.
    remote: u32,
    _map: Mapping,
}

// SAFETY: the ring's memory is owned by its mapping; the kernel is the only other
// party and synchronises through the atomics.
unsafe impl<T: Send> Send for Ring<T> {}

impl<T: Copy> Ring<T> {
    fn map(
        fd: RawFd,
        off: RingOffset,
        size: u32,
        pgoff: libc::off_t,
        producer_side: bool,
    ) -> io::Result<Self> {
        let len = usize::try_from(off.desc).map_err(io::Error::other)?
            + size as usize * std::mem::size_of::<T>();
        let map = Mapping::ring(fd, len, pgoff)?;
        let at = |o: u64| -> io::Result<NonNull<u8>> {
            let o = usize::try_from(o).map_err(io::Error::other)?;
            if o >= len {
                return Err(io::Error::other("ring offset outside the mapping"));
            }
            // SAFETY: o < len, so the pointer stays inside the mapping.
            Ok(unsafe { NonNull::new_unchecked(map.ptr.as_ptr().add(o)) })
        };
        let producer = at(off.producer)?.cast::<AtomicU32>();
        let consumer = at(off.consumer)?.cast::<AtomicU32>();
        let flags = at(off.flags)?.cast::<AtomicU32>();
        let descs = at(off.desc)?.cast::<T>();
        // SAFETY: the kernel placed aligned u32 indices at these offsets.
        let (prod, cons) = unsafe {
            (
                producer.as_ref().load(Ordering::Acquire),
                consumer.as_ref().load(Ordering::Acquire),
            )
        };
        let (local, remote) = if producer_side {
            (prod, cons)
        } else {
            (cons, prod)
        };
        Ok(Ring {
            producer,
            consumer,
            flags,
            descs,
            size,
            mask: size - 1,
            local,
            remote,
            _map: map,
        })
    }

    fn producer(&self) -> &AtomicU32 {
        // SAFETY: points into our live mapping at the kernel-given aligned offset.
        unsafe { self.producer.as_ref() }
    }

    fn consumer(&self) -> &AtomicU32 {
        // SAFETY: as in producer().
        unsafe { self.consumer.as_ref() }
    }

    /// Does the kernel ask to be woken (`XDP_RING_NEED_WAKEUP`)?
    pub fn needs_wakeup(&self) -> bool {
        // SAFETY: as in producer().
        unsafe { self.flags.as_ref() }.load(Ordering::Relaxed) & XDP_RING_NEED_WAKEUP != 0
    }

    fn slot(&self, index: u32) -> *mut T {
        // SAFETY: (index & mask) < size and the mapping holds size descriptors.
        unsafe { self.descs.as_ptr().add((index & self.mask) as usize) }
    }

    // --- producer side (fill, TX) ---

    /// Free slots we may fill now; reads the kernel's index only when the cached
    /// count is below `want`.
    pub fn free(&mut self, want: u32) -> u32 {
        let free = self.size - self.local.wrapping_sub(self.remote);
        if free >= want {
            return free;
        }
        self.remote = self.consumer().load(Ordering::Acquire);
        self.size - self.local.wrapping_sub(self.remote)
    }

    /// Writes one entry; the caller checked [`Ring::free`]. Visible after `submit`.
    pub fn push(&mut self, value: T) {
        // SAFETY: the slot is free (the kernel consumed it), so we are its only writer.
        unsafe { self.slot(self.local).write(value) };
        self.local = self.local.wrapping_add(1);
    }

    /// Entries submitted that the kernel has not consumed yet.
    pub fn unconsumed(&mut self) -> u32 {
        self.remote = self.consumer().load(Ordering::Acquire);
        self.local.wrapping_sub(self.remote)
    }

    /// Publishes pushed entries to the kernel.
    pub fn submit(&self) {
        self.producer().store(self.local, Ordering::Release);
    }

    // --- consumer side (RX, completion) ---

    /// Entries ready to read.
    pub fn ready(&mut self) -> u32 {
        let cached = self.remote.wrapping_sub(self.local);
        if cached > 0 {
            return cached;
        }
        self.remote = self.producer().load(Ordering::Acquire);
        self.remote.wrapping_sub(self.local)
    }

    /// Reads the next entry; the caller checked [`Ring::ready`].
    pub fn pop(&mut self) -> T {
        // SAFETY: the kernel produced this slot (Acquire in ready()) and will not
        // touch it until we release it.
        let value = unsafe { self.slot(self.local).read() };
        self.local = self.local.wrapping_add(1);
        value
    }

    /// Returns consumed slots to the kernel.
    pub fn release(&self) {
        self.consumer().store(self.local, Ordering::Release);
    }
}

/// An AF_XDP socket with its UMEM registered and its four rings mapped.
#[derive(Debug)]
pub struct XskRings {
    pub fill: Ring<u64>,
    pub comp: Ring<u64>,
    pub rx: Ring<XdpDesc>,
    pub tx: Ring<XdpDesc>,
    pub zero_copy: bool,
    fd: OwnedFd,
}

fn setsockopt<T>(fd: RawFd, opt: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: value points to a live T of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            SOL_XDP,
            opt,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn getsockopt<T: Default>(fd: RawFd, opt: libc::c_int) -> io::Result<T> {
    let mut value = T::default();
    let mut len = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: value is a live, writable T and len says its size.
    let rc = unsafe { libc::getsockopt(fd, SOL_XDP, opt, (&mut value as *mut T).cast(), &mut len) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(value)
    }
}

/// Creates an AF_XDP socket.
pub fn xsk_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// What went wrong while setting up a socket, with the step that failed.
#[derive(Debug)]
pub struct SetupError {
    pub step: &'static str,
    pub error: io::Error,
}

fn step<T>(step: &'static str, r: io::Result<T>) -> Result<T, SetupError> {
    r.map_err(|error| SetupError { step, error })
}

/// Registers `umem` (split into `chunk_size` chunks) on `fd`, sizes and maps the
/// rings, and binds to `ifindex`/`queue` with `bind_flags`.
pub fn setup(
    fd: OwnedFd,
    umem: &mut Mapping,
    chunk_size: u32,
    ring_size: u32,
    ifindex: u32,
    queue: u32,
    bind_flags: u16,
) -> Result<XskRings, SetupError> {
    let raw = fd.as_raw_fd();
    let reg = UmemReg {
        addr: umem.addr(),
        len: umem.len() as u64,
        chunk_size,
        headroom: 0,
        flags: 0,
    };
    step(
        "registering the UMEM (XDP_UMEM_REG)",
        setsockopt(raw, XDP_UMEM_REG, &reg),
    )?;
    step(
        "sizing the fill ring",
        setsockopt(raw, XDP_UMEM_FILL_RING, &ring_size),
    )?;
    step(
        "sizing the completion ring",
        setsockopt(raw, XDP_UMEM_COMPLETION_RING, &ring_size),
    )?;
    step(
        "sizing the RX ring",
        setsockopt(raw, XDP_RX_RING, &ring_size),
    )?;
    step(
        "sizing the TX ring",
        setsockopt(raw, XDP_TX_RING, &ring_size),
    )?;
    let off: MmapOffsets = step(
        "reading ring offsets (XDP_MMAP_OFFSETS)",
        getsockopt(raw, XDP_MMAP_OFFSETS),
    )?;
    let fill = step(
        "mapping the fill ring",
        Ring::map(raw, off.fr, ring_size, XDP_UMEM_PGOFF_FILL_RING, true),
    )?;
    let comp = step(
        "mapping the completion ring",
        Ring::map(
            raw,
            off.cr,
            ring_size,
            XDP_UMEM_PGOFF_COMPLETION_RING,
            false,
        ),
    )?;
    let rx = step(
        "mapping the RX ring",
        Ring::map(raw, off.rx, ring_size, XDP_PGOFF_RX_RING, false),
    )?;
    let tx = step(
        "mapping the TX ring",
        Ring::map(raw, off.tx, ring_size, XDP_PGOFF_TX_RING, true),
    )?;
    let addr = SockaddrXdp {
        family: libc::AF_XDP as u16,
        flags: bind_flags,
        ifindex,
        queue_id: queue,
        shared_umem_fd: 0,
    };
    // SAFETY: addr is a live sockaddr_xdp and the length passed is its size.
    let rc = unsafe {
        libc::bind(
            raw,
            (&addr as *const SockaddrXdp).cast(),
            std::mem::size_of::<SockaddrXdp>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(SetupError {
            step: "binding the socket to the queue",
            error: io::Error::last_os_error(),
        });
    }
    let zero_copy = getsockopt::<u32>(raw, XDP_OPTIONS)
        .map(|f| f & XDP_OPTIONS_ZEROCOPY != 0)
        .unwrap_or(false);
    Ok(XskRings {
        fill,
        comp,
        rx,
        tx,
        zero_copy,
        fd,
    })
}

impl XskRings {
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Asks the kernel to transmit what the TX ring holds.
    pub fn kick_tx(&self) -> io::Result<()> {
        // SAFETY: a zero-length sendto with no buffer or address on our socket.
        let rc = unsafe {
            libc::sendto(
                self.fd(),
                std::ptr::null(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null(),
                0,
            )
        };
        if rc < 0 {
            let err = io::Error::last_os_error();
            // Busy/again: the kernel is still draining the ring; try on the next flush.
            match err.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EBUSY) | Some(libc::ENOBUFS)
                | Some(libc::ENETDOWN) => Ok(()),
                _ => Err(err),
            }
        } else {
            Ok(())
        }
    }

    /// Wakes the driver to refill (needed when the fill ring asks for it).
    pub fn kick_rx(&self) {
        // SAFETY: a zero-length recvfrom with no buffer or address on our socket.
        unsafe {
            libc::recvfrom(
                self.fd(),
                std::ptr::null_mut(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
    }

    /// The kernel's drop counters for this socket.
    pub fn statistics(&self) -> io::Result<XdpStatistics> {
        getsockopt(self.fd(), XDP_STATISTICS)
    }
}
