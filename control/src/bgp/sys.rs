//! The one place the BGP speaker talks to the kernel directly: TCP MD5 signatures
//! (RFC 2385) through `setsockopt(TCP_MD5SIG)`, which neither std nor socket2 offers.
#![allow(unsafe_code)]

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, BorrowedFd};

/// `TCP_MD5SIG_MAXKEYLEN` from `<linux/tcp.h>`.
pub const MD5_MAX_KEY_LEN: usize = 80;

/// `struct tcp_md5sig` from `<linux/tcp.h>`: a `__kernel_sockaddr_storage` (128
/// bytes), flags, prefix length, key length, ifindex, then the key. Built as bytes so
/// no Rust struct has to match the kernel's layout by hand.
const SOCKADDR_STORAGE_LEN: usize = 128;
const MD5SIG_LEN: usize = SOCKADDR_STORAGE_LEN + 1 + 1 + 2 + 4 + MD5_MAX_KEY_LEN;

fn md5sig_bytes(peer: IpAddr, key: &[u8]) -> io::Result<[u8; MD5SIG_LEN]> {
    if key.len() > MD5_MAX_KEY_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "TCP MD5 key longer than 80 bytes",
        ));
    }
    let mut buf = [0u8; MD5SIG_LEN];
    // sockaddr_in / sockaddr_in6: family in host order, port 0, then the address.
    let (family, addr_at, octets): (u16, usize, Vec<u8>) = match peer {
        IpAddr::V4(a) => (libc::AF_INET as u16, 4, a.octets().to_vec()),
        IpAddr::V6(a) => (libc::AF_INET6 as u16, 8, a.octets().to_vec()),
    };
    let fill = |buf: &mut [u8; MD5SIG_LEN], at: usize, bytes: &[u8]| {
        if let Some(dst) = buf.get_mut(at..at + bytes.len()) {
            dst.copy_from_slice(bytes);
        }
    };
    fill(&mut buf, 0, &family.to_ne_bytes());
    fill(&mut buf, addr_at, &octets);
    // tcpm_flags = 0, tcpm_prefixlen = 0 (exact address), tcpm_keylen, tcpm_ifindex = 0.
    fill(
        &mut buf,
        SOCKADDR_STORAGE_LEN + 2,
        &(key.len() as u16).to_ne_bytes(),
    );
    fill(&mut buf, SOCKADDR_STORAGE_LEN + 8, key);
    Ok(buf)
}

/// Sign (or, with an empty key, stop signing) TCP segments to/from `peer` on this
/// socket. On a listening socket the key is inherited by accepted connections.
pub fn set_tcp_md5(fd: BorrowedFd<'_>, peer: IpAddr, key: &[u8]) -> io::Result<()> {
    let buf = md5sig_bytes(peer, key)?;
    // SAFETY: `fd` is a live socket borrowed for the call; `buf` is a fully
    // initialised `struct tcp_md5sig` image of exactly the size passed, and the
    // kernel only reads from it during the call.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_MD5SIG,
            buf.as_ptr().cast::<libc::c_void>(),
            MD5SIG_LEN as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn md5sig_layout() {
        let b = md5sig_bytes("198.18.0.1".parse().unwrap(), b"secret").unwrap();
        assert_eq!(b.len(), 216);
        assert_eq!(u16::from_ne_bytes([b[0], b[1]]), libc::AF_INET as u16);
        assert_eq!(&b[4..8], &[198, 18, 0, 1]);
        assert_eq!(u16::from_ne_bytes([b[130], b[131]]), 6);
        assert_eq!(&b[136..142], b"secret");
        assert!(md5sig_bytes("198.18.0.1".parse().unwrap(), &[0; 81]).is_err());
    }
}
