//! Side-effect-free checks of what the kernel offers.
#![allow(unsafe_code)]

use std::fs::OpenOptions;
use std::io;

/// Can an AF_XDP socket be created? `Err` says what is missing.
pub fn xdp_sockets() -> Result<(), String> {
    // SAFETY: socket(2) with constant arguments; the returned fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        let err = io::Error::last_os_error();
        return Err(match err.raw_os_error() {
            Some(libc::EAFNOSUPPORT) => "kernel lacks XDP sockets (CONFIG_XDP_SOCKETS)".to_owned(),
            Some(libc::EPERM) | Some(libc::EACCES) => {
                "creating XDP sockets needs CAP_NET_RAW and CAP_BPF/CAP_SYS_ADMIN".to_owned()
            }
            _ => format!("cannot create an XDP socket: {err}"),
        });
    }
    // SAFETY: fd is a socket we own and have not closed.
    unsafe { libc::close(fd) };
    Ok(())
}

/// Can `/dev/net/tun` be opened? `Err` says what is missing.
pub fn tun_device() -> Result<(), String> {
    match OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(
            "/dev/net/tun is missing (kernel lacks CONFIG_TUN or the device node is not created)"
                .to_owned(),
        ),
        Err(e) => Err(format!("cannot open /dev/net/tun: {e}")),
    }
}

/// Index of interface `name` in the caller's network namespace, or `None` when it
/// does not exist.
pub fn ifindex(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: c is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (index != 0).then_some(index)
}
