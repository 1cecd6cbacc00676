//! In-place header rewrites for NAT and forwarding, each keeping every checksum that
//! covers the changed field right with an RFC 1624 incremental update.
//!
//! They work on a frame already classified by [`PacketInfo::parse`] (its offsets say
//! where the fields are) and never index out of bounds: a field that is not there is
//! an error and nothing is written. Which checksums a field feeds:
//!
//! | field             | IPv4 header | TCP | UDP (0 stays 0) | ICMPv4 |
//! |-------------------|-------------|-----|-----------------|--------|
//! | IPv4 address      | yes         | yes (pseudo-header) | yes | no |
//! | TCP/UDP port      |             | yes | yes             |        |
//! | ICMP echo id      |             |     |                 | yes    |
//! | TTL               | yes         |     |                 |        |
//!
//! A non-first fragment has no transport header, so only the IP header changes.

use std::net::Ipv4Addr;

use super::checksum::{self, read_u16, write_u16};
use super::packet::{L3, PacketInfo, Transport, ip_proto};

/// A rewrite that does not apply to the frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RewriteError {
    /// The frame is not IPv4 (these helpers do IPv4 NAT only).
    #[error("not an IPv4 packet")]
    NotIpv4,
    /// The packet has no field of that kind (e.g. a port on ICMP, or a fragment).
    #[error("packet has no such transport field")]
    NoSuchField,
    /// The frame is shorter than the classification said (it changed since).
    #[error("frame shorter than its classification")]
    OutOfBounds,
}

const IPV4_TTL: usize = 8;
const IPV4_CHECKSUM: usize = 10;
const IPV4_SRC: usize = 12;
const IPV4_DST: usize = 16;
const TCP_CHECKSUM: usize = 16;
const UDP_CHECKSUM: usize = 6;
const ICMP_CHECKSUM: usize = 2;
const ICMP_ECHO_ID: usize = 4;

/// Which transport checksum (if any) an IPv4 address change must update.
#[derive(Clone, Copy)]
enum L4Sum {
    None,
    Tcp(usize),
    Udp(usize),
}

fn l4_sum(info: &PacketInfo) -> L4Sum {
    let l4 = info.l4_offset();
    match info.transport {
        Transport::Tcp { .. } => L4Sum::Tcp(l4 + TCP_CHECKSUM),
        Transport::Udp { .. } => L4Sum::Udp(l4 + UDP_CHECKSUM),
        _ => L4Sum::None,
    }
}

fn read_addr(frame: &[u8], at: usize) -> Option<Ipv4Addr> {
    let b: [u8; 4] = frame.get(at..at + 4)?.try_into().ok()?;
    Some(Ipv4Addr::from(b))
}

fn set_ipv4_addr(
    frame: &mut [u8],
    info: &PacketInfo,
    field: usize,
    new: Ipv4Addr,
) -> Result<Ipv4Addr, RewriteError> {
    if info.l3 != L3::Ipv4 {
        return Err(RewriteError::NotIpv4);
    }
    let l3 = info.l3_offset();
    let at = l3 + field;
    let old = read_addr(frame, at).ok_or(RewriteError::OutOfBounds)?;
    let ip_sum = read_u16(frame, l3 + IPV4_CHECKSUM).ok_or(RewriteError::OutOfBounds)?;
    // Read every checksum before writing anything so a failure leaves the frame as it was.
    let l4 = match l4_sum(info) {
        L4Sum::None => None,
        L4Sum::Tcp(c) => {
            let s = read_u16(frame, c).ok_or(RewriteError::OutOfBounds)?;
            Some((c, checksum::update_ipv4_addr(s, old, new)))
        }
        L4Sum::Udp(c) => {
            let s = read_u16(frame, c).ok_or(RewriteError::OutOfBounds)?;
            Some((c, checksum::udp_update_ipv4_addr(s, old, new)))
        }
    };
    if let Some(dst) = frame.get_mut(at..at + 4) {
        dst.copy_from_slice(&new.octets());
    }
    write_u16(
        frame,
        l3 + IPV4_CHECKSUM,
        checksum::update_ipv4_addr(ip_sum, old, new),
    );
    if let Some((c, s)) = l4 {
        write_u16(frame, c, s);
    }
    Ok(old)
}

/// Rewrites the IPv4 source address; returns the old one.
pub fn set_ipv4_src(
    frame: &mut [u8],
    info: &PacketInfo,
    new: Ipv4Addr,
) -> Result<Ipv4Addr, RewriteError> {
    set_ipv4_addr(frame, info, IPV4_SRC, new)
}

/// Rewrites the IPv4 destination address; returns the old one.
pub fn set_ipv4_dst(
    frame: &mut [u8],
    info: &PacketInfo,
    new: Ipv4Addr,
) -> Result<Ipv4Addr, RewriteError> {
    set_ipv4_addr(frame, info, IPV4_DST, new)
}

/// Rewrites the 16-bit transport field at `l4 + field` covered by the checksum at
/// `l4 + sum_field` (UDP rule applied when `udp`).
fn set_l4_word(
    frame: &mut [u8],
    at: usize,
    sum_at: usize,
    udp: bool,
    new: u16,
) -> Result<u16, RewriteError> {
    let old = read_u16(frame, at).ok_or(RewriteError::OutOfBounds)?;
    let sum = read_u16(frame, sum_at).ok_or(RewriteError::OutOfBounds)?;
    let sum = if udp {
        checksum::udp_update_u16(sum, old, new)
    } else {
        checksum::update_u16(sum, old, new)
    };
    write_u16(frame, at, new);
    write_u16(frame, sum_at, sum);
    Ok(old)
}

fn set_port(
    frame: &mut [u8],
    info: &PacketInfo,
    offset_in_l4: usize,
    new: u16,
) -> Result<u16, RewriteError> {
    let l4 = info.l4_offset();
    match info.transport {
        Transport::Tcp { .. } => {
            set_l4_word(frame, l4 + offset_in_l4, l4 + TCP_CHECKSUM, false, new)
        }
        Transport::Udp { .. } => {
            set_l4_word(frame, l4 + offset_in_l4, l4 + UDP_CHECKSUM, true, new)
        }
        _ => Err(RewriteError::NoSuchField),
    }
}

/// Rewrites the TCP/UDP source port; returns the old one. Works for IPv6 too.
pub fn set_src_port(frame: &mut [u8], info: &PacketInfo, new: u16) -> Result<u16, RewriteError> {
    set_port(frame, info, 0, new)
}

/// Rewrites the TCP/UDP destination port; returns the old one. Works for IPv6 too.
pub fn set_dst_port(frame: &mut [u8], info: &PacketInfo, new: u16) -> Result<u16, RewriteError> {
    set_port(frame, info, 2, new)
}

/// Rewrites the ICMPv4 echo identifier; returns the old one.
pub fn set_icmp_echo_id(
    frame: &mut [u8],
    info: &PacketInfo,
    new: u16,
) -> Result<u16, RewriteError> {
    match info.transport {
        Transport::IcmpEcho { .. } if info.protocol == ip_proto::ICMP => {
            let l4 = info.l4_offset();
            set_l4_word(frame, l4 + ICMP_ECHO_ID, l4 + ICMP_CHECKSUM, false, new)
        }
        _ => Err(RewriteError::NoSuchField),
    }
}

/// Decrements the IPv4 TTL (updating the header checksum) or the IPv6 hop limit;
/// returns the new value. A TTL already 0 is left alone and `Ok(0)` returned, so the
/// caller's "expired" check is one comparison.
pub fn decrement_ttl(frame: &mut [u8], info: &PacketInfo) -> Result<u8, RewriteError> {
    let l3 = info.l3_offset();
    match info.l3 {
        L3::Ipv4 => {
            let ttl = *frame.get(l3 + IPV4_TTL).ok_or(RewriteError::OutOfBounds)?;
            if ttl == 0 {
                return Ok(0);
            }
            // TTL is the high byte of the word it shares with the protocol.
            let word = read_u16(frame, l3 + IPV4_TTL).ok_or(RewriteError::OutOfBounds)?;
            let sum = read_u16(frame, l3 + IPV4_CHECKSUM).ok_or(RewriteError::OutOfBounds)?;
            let new_word = word - 0x0100;
            write_u16(frame, l3 + IPV4_TTL, new_word);
            write_u16(
                frame,
                l3 + IPV4_CHECKSUM,
                checksum::update_u16(sum, word, new_word),
            );
            Ok(ttl - 1)
        }
        L3::Ipv6 => {
            let hop = frame.get_mut(l3 + 7).ok_or(RewriteError::OutOfBounds)?;
            *hop = hop.saturating_sub(1);
            Ok(*hop)
        }
        L3::Arp => Err(RewriteError::NoSuchField),
    }
}

/// Recomputes the IPv4 header checksum from scratch (after building a header).
pub fn fill_ipv4_checksum(header: &mut [u8]) -> Result<(), RewriteError> {
    if !write_u16(header, IPV4_CHECKSUM, 0) {
        return Err(RewriteError::OutOfBounds);
    }
    let ihl = usize::from(header.first().copied().unwrap_or(0) & 0x0f) * 4;
    let c = checksum::checksum(header.get(..ihl).ok_or(RewriteError::OutOfBounds)?);
    write_u16(header, IPV4_CHECKSUM, c);
    Ok(())
}
