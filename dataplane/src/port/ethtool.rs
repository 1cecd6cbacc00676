//! Transmit offloads of an interface, read and turned off through the `SIOCETHTOOL`
//! ioctl (the legacy one-feature commands, which every kernel still answers).
//!
//! Why a dataplane needs this: a veth whose sending end keeps checksum offload
//! hands the peer frames with the TCP/UDP checksum left for "hardware" to finish
//! (CHECKSUM_PARTIAL). The kernel finishes it when the frame stays in the kernel;
//! an AF_XDP socket gets the bytes as they are, and the receiver counts
//! `TcpInCsumErrors`. Segmentation offload (TSO/GSO) hands over 64 KiB frames the
//! same way. A veth never computes anything itself, so for an AF_XDP pod port the
//! pod's end must send finished, MTU-sized frames.
//!
//! The ioctl works on the interface of that name in the calling thread's network
//! namespace (the socket is opened there); see `port::netns::NetnsGuard`.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::port::sys_result::check;

// From <linux/ethtool.h>: get/set one feature with a `struct ethtool_value`.
const ETHTOOL_GTXCSUM: u32 = 0x16;
const ETHTOOL_STXCSUM: u32 = 0x17;
const ETHTOOL_GTSO: u32 = 0x1e;
const ETHTOOL_STSO: u32 = 0x1f;
const ETHTOOL_GGSO: u32 = 0x23;
const ETHTOOL_SGSO: u32 = 0x24;

/// A transmit offload that leaves work for a device to finish.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxOffload {
    /// `tx-checksumming`: checksums left unfinished (CHECKSUM_PARTIAL).
    Checksum,
    /// `tcp-segmentation-offload`: TCP super-frames.
    Tso,
    /// `generic-segmentation-offload`: super-frames segmented late.
    Gso,
}

impl TxOffload {
    /// All of them, in the order they are turned off (checksum first: TSO depends on it).
    pub const ALL: [TxOffload; 3] = [TxOffload::Checksum, TxOffload::Tso, TxOffload::Gso];

    /// The name `ethtool -k` prints.
    pub fn label(self) -> &'static str {
        match self {
            TxOffload::Checksum => "tx-checksumming",
            TxOffload::Tso => "tcp-segmentation-offload",
            TxOffload::Gso => "generic-segmentation-offload",
        }
    }

    fn commands(self) -> (u32, u32) {
        match self {
            TxOffload::Checksum => (ETHTOOL_GTXCSUM, ETHTOOL_STXCSUM),
            TxOffload::Tso => (ETHTOOL_GTSO, ETHTOOL_STSO),
            TxOffload::Gso => (ETHTOOL_GGSO, ETHTOOL_SGSO),
        }
    }
}

/// `struct ethtool_value`.
#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// `struct ifreq` with the `ifr_data` pointer member (40 bytes on Linux).
#[repr(C)]
struct IfReqData {
    name: [u8; libc::IFNAMSIZ],
    data: *mut EthtoolValue,
    _pad: [u8; 16],
}

fn socket() -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; the fd is owned at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    check(fd)?;
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ethtool(ifname: &str, cmd: u32, data: u32) -> io::Result<u32> {
    let bytes = ifname.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "interface names have 1 to 15 bytes",
        ));
    }
    let mut value = EthtoolValue { cmd, data };
    let mut req = IfReqData {
        name: [0; libc::IFNAMSIZ],
        data: &mut value,
        _pad: [0; 16],
    };
    if let Some(dst) = req.name.get_mut(..bytes.len()) {
        dst.copy_from_slice(bytes);
    }
    let sock = socket()?;
    // SAFETY: `req` is a valid ifreq whose data member points at `value`; both live
    // on this stack frame for the whole call, and SIOCETHTOOL reads/writes only them.
    let rc = unsafe {
        libc::ioctl(
            sock.as_raw_fd(),
            libc::SIOCETHTOOL as libc::Ioctl,
            &mut req as *mut IfReqData,
        )
    };
    check(rc)?;
    Ok(value.data)
}

/// Whether `offload` is on for `ifname` (in the calling thread's namespace).
pub fn is_on(ifname: &str, offload: TxOffload) -> io::Result<bool> {
    ethtool(ifname, offload.commands().0, 0).map(|v| v != 0)
}

/// Turns off every [`TxOffload`] of `ifname` that is on; returns those it turned off.
pub fn finish_frames_in_software(ifname: &str) -> io::Result<Vec<TxOffload>> {
    let mut changed = Vec::new();
    for offload in TxOffload::ALL {
        if is_on(ifname, offload)? {
            ethtool(ifname, offload.commands().1, 0)?;
            changed.push(offload);
        }
    }
    Ok(changed)
}

/// `struct ifreq` with the `ifr_ifindex` member (40 bytes on Linux).
#[repr(C)]
struct IfReqIndex {
    name: [u8; libc::IFNAMSIZ],
    index: libc::c_int,
    _pad: [u8; 20],
}

/// The name of the interface with index `index` in the calling thread's namespace
/// (how the pod's end of a veth is found from the host end's `iflink`).
pub fn interface_name(index: u32) -> io::Result<String> {
    let mut req = IfReqIndex {
        name: [0; libc::IFNAMSIZ],
        index: libc::c_int::try_from(index).map_err(io::Error::other)?,
        _pad: [0; 20],
    };
    let sock = socket()?;
    // SAFETY: `req` is a valid ifreq living on this frame for the whole call;
    // SIOCGIFNAME reads its index and writes only its name field.
    let rc = unsafe {
        libc::ioctl(
            sock.as_raw_fd(),
            libc::SIOCGIFNAME as libc::Ioctl,
            &mut req as *mut IfReqIndex,
        )
    };
    check(rc)?;
    std::ffi::CStr::from_bytes_until_nul(&req.name)
        .map(|c| c.to_string_lossy().into_owned())
        .map_err(io::Error::other)
}
