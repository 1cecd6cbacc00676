//! The raw TUN interface: `/dev/net/tun` ioctls, non-blocking reads and `writev`.
//! Everything unsafe about TUN is in this file.
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use crate::port::sys_result::{check, nonblocking};

/// `struct ifreq` with the short-flags / int member (40 bytes on Linux).
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    value: libc::c_int,
    _pad: [u8; 20],
}

impl IfReq {
    fn new(name: &str, value: libc::c_int) -> io::Result<IfReq> {
        let bytes = name.as_bytes();
        if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "interface names have 1 to 15 bytes",
            ));
        }
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            value,
            _pad: [0; 20],
        };
        if let Some(dst) = req.name.get_mut(..bytes.len()) {
            dst.copy_from_slice(bytes);
        }
        Ok(req)
    }

    fn name(&self) -> String {
        CStr::from_bytes_until_nul(&self.name)
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

fn ioctl<T>(fd: RawFd, request: libc::Ioctl, arg: *mut T) -> io::Result<()> {
    // SAFETY: every caller passes a pointer to a live value of the type the request
    // expects (ifreq or an int), valid for the duration of the call.
    let rc = unsafe { libc::ioctl(fd, request, arg) };
    check(rc)
}

/// Opens one queue of TUN device `name` (created if missing) in layer-3 mode with the
/// virtio-net header; returns the fd and the name the kernel gave.
pub fn open_queue(name: &str) -> io::Result<(OwnedFd, String)> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")?;
    let fd = OwnedFd::from(file);
    let flags = libc::IFF_TUN | libc::IFF_NO_PI | libc::IFF_MULTI_QUEUE | libc::IFF_VNET_HDR;
    let mut req = IfReq::new(name, flags)?;
    ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req)?;
    Ok((fd, req.name()))
}

/// Sets the virtio-net header size the queue uses.
pub fn set_vnet_hdr_size(fd: RawFd, size: usize) -> io::Result<()> {
    let mut size = libc::c_int::try_from(size).map_err(io::Error::other)?;
    ioctl(fd, libc::TUNSETVNETHDRSZ, &mut size)
}

/// Tells the kernel which offloads (`TUN_F_*`) we accept on packets it sends us.
pub fn set_offload(fd: RawFd, flags: libc::c_uint) -> io::Result<()> {
    // TUNSETOFFLOAD takes the flags by value, not by pointer.
    // SAFETY: an integer argument; no memory is passed.
    let rc = unsafe { libc::ioctl(fd, libc::TUNSETOFFLOAD, libc::c_ulong::from(flags)) };
    check(rc)
}

fn inet_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is fresh and owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sets the MTU of interface `name`.
pub fn set_mtu(name: &str, mtu: u32) -> io::Result<()> {
    let sock = inet_socket()?;
    let mut req = IfReq::new(name, libc::c_int::try_from(mtu).map_err(io::Error::other)?)?;
    ioctl(sock.as_raw_fd(), libc::SIOCSIFMTU, &mut req)
}

/// Sets the transmit queue length of interface `name` (for a TUN device: how many
/// packets wait for its reader per queue).
pub fn set_tx_queue_len(name: &str, len: u32) -> io::Result<()> {
    let sock = inet_socket()?;
    let mut req = IfReq::new(name, libc::c_int::try_from(len).map_err(io::Error::other)?)?;
    ioctl(sock.as_raw_fd(), libc::SIOCSIFTXQLEN, &mut req)
}

/// Brings interface `name` up.
pub fn set_up(name: &str) -> io::Result<()> {
    let sock = inet_socket()?;
    let mut req = IfReq::new(name, 0)?;
    ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req)?;
    // ifr_flags is a short at the start of the union.
    req.value |= libc::IFF_UP | libc::IFF_RUNNING;
    ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &mut req)
}

/// Reads one packet without blocking; `Ok(None)` when none waits.
pub fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<Option<usize>> {
    // SAFETY: buf is a live writable buffer of buf.len() bytes.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    nonblocking(n)
}

/// Writes `head` then `body` as one packet; `Ok(false)` when the queue is full.
pub fn writev(fd: RawFd, head: &[u8], body: &[u8]) -> io::Result<bool> {
    let iov = [
        libc::iovec {
            iov_base: head.as_ptr() as *mut libc::c_void,
            iov_len: head.len(),
        },
        libc::iovec {
            iov_base: body.as_ptr() as *mut libc::c_void,
            iov_len: body.len(),
        },
    ];
    // SAFETY: both iovecs describe live buffers that the kernel only reads.
    let n = unsafe { libc::writev(fd, iov.as_ptr(), 2) };
    Ok(nonblocking(n)?.is_some())
}
