//! The raw UDP socket calls the VXLAN port needs beyond `std`: `SO_REUSEPORT`,
//! `UDP_GRO` with its control message on receive and `UDP_SEGMENT` on send.
//! Everything unsafe about the UDP port is in this file.
#![allow(unsafe_code)]

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::port::sys_result::{check, nonblocking};

fn setsockopt_int(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: value is a live c_int and its size is passed.
    check(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
}

fn sockaddr(addr: SocketAddrV4) -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain old data; all-zero is a valid value.
    let mut sa: libc::sockaddr_in = unsafe { zeroed() };
    sa.sin_family = libc::AF_INET as libc::sa_family_t;
    sa.sin_port = addr.port().to_be();
    sa.sin_addr = libc::in_addr {
        s_addr: u32::from_ne_bytes(addr.ip().octets()),
    };
    sa
}

fn from_sockaddr(sa: &libc::sockaddr_in) -> SocketAddrV4 {
    SocketAddrV4::new(
        Ipv4Addr::from(sa.sin_addr.s_addr.to_ne_bytes()),
        u16::from_be(sa.sin_port),
    )
}

/// A non-blocking UDP socket bound to `local`, sharing the port with the other
/// sockets of the group when `reuse_port`.
pub fn bind(local: SocketAddrV4, reuse_port: bool) -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is fresh and owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    if reuse_port {
        setsockopt_int(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
    }
    // Larger buffers absorb bursts between polls.
    let _ = setsockopt_int(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, 4 << 20);
    let _ = setsockopt_int(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_SNDBUF, 4 << 20);
    let sa = sockaddr(local);
    // SAFETY: sa is a live sockaddr_in and its size is passed.
    check(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    })?;
    Ok(fd)
}

/// Turns on UDP GRO: the kernel may hand over several datagrams of one flow in a
/// single read, with their size in a control message.
pub fn enable_gro(fd: RawFd) -> io::Result<()> {
    setsockopt_int(fd, libc::SOL_UDP, libc::UDP_GRO, 1)
}

/// The local address of `fd`.
pub fn local_addr(fd: RawFd) -> io::Result<SocketAddrV4> {
    // SAFETY: sockaddr_in is plain old data.
    let mut sa: libc::sockaddr_in = unsafe { zeroed() };
    let mut len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: sa is writable and len says its size.
    check(unsafe { libc::getsockname(fd, (&mut sa as *mut libc::sockaddr_in).cast(), &mut len) })?;
    Ok(from_sockaddr(&sa))
}

/// One datagram (or a GRO train of equal-size datagrams) read into `buf`.
#[derive(Clone, Copy, Debug)]
pub struct Received {
    pub len: usize,
    pub from: SocketAddrV4,
    /// Size of each datagram of a GRO train; `None` for a single datagram.
    pub gro_size: Option<usize>,
}

#[repr(C)]
union Cmsg {
    hdr: libc::cmsghdr,
    buf: [u8; 64],
}

/// Receives without blocking; `Ok(None)` when nothing waits.
pub fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<Option<Received>> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: plain old data, zero is valid.
    let mut from: libc::sockaddr_in = unsafe { zeroed() };
    let mut control = Cmsg { buf: [0; 64] };
    // SAFETY: msghdr is plain old data.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_name = (&mut from as *mut libc::sockaddr_in).cast();
    msg.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = (&mut control as *mut Cmsg).cast();
    msg.msg_controllen = size_of::<Cmsg>();
    // SAFETY: every pointer in msg refers to a live local buffer of the stated size.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT) };
    let Some(n) = nonblocking(n)? else {
        return Ok(None);
    };
    let mut gro_size = None;
    // SAFETY: the CMSG_* macros walk the control buffer the kernel filled, bounded
    // by msg_controllen; each header is checked before its data is read.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_UDP && (*cmsg).cmsg_type == libc::UDP_GRO {
                let size = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>());
                gro_size = usize::try_from(size).ok().filter(|&s| s > 0);
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok(Some(Received {
        len: n,
        from: from_sockaddr(&from),
        gro_size,
    }))
}

/// Sends the concatenation of `parts` to `to`, cut by the kernel into datagrams of
/// `segment` bytes when given (UDP GSO). `Ok(false)` when the socket buffer is full.
pub fn send(
    fd: RawFd,
    to: SocketAddrV4,
    parts: &[&[u8]],
    segment: Option<u16>,
) -> io::Result<bool> {
    // Up to 64 datagrams (the UDP GSO cap) of two parts each.
    let mut iov: [libc::iovec; 128] = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; 128];
    let mut count = 0;
    for (slot, part) in iov.iter_mut().zip(parts) {
        *slot = libc::iovec {
            iov_base: part.as_ptr() as *mut libc::c_void,
            iov_len: part.len(),
        };
        count += 1;
    }
    let sa = sockaddr(to);
    let mut control = Cmsg { buf: [0; 64] };
    // SAFETY: msghdr is plain old data.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_name = (&sa as *const libc::sockaddr_in as *mut libc::sockaddr_in).cast();
    msg.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = count;
    if let Some(size) = segment {
        // SAFETY: CMSG_SPACE/LEN are arithmetic; the control buffer (64 bytes) holds
        // one cmsghdr with a u16, and CMSG_FIRSTHDR is non-null because
        // msg_controllen covers it.
        unsafe {
            msg.msg_control = (&mut control as *mut Cmsg).cast();
            msg.msg_controllen = libc::CMSG_SPACE(size_of::<u16>() as u32) as usize;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_UDP;
            (*cmsg).cmsg_type = libc::UDP_SEGMENT;
            (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), size);
        }
    }
    // SAFETY: every pointer in msg refers to live buffers the kernel only reads.
    let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT) };
    Ok(nonblocking(n)?.is_some())
}
