//! In-place IPv4/IPv6 header rewrites for NAT and forwarding, each keeping every
//! checksum that covers the changed field right with an RFC 1624 incremental update.
//!
//! They work at the offsets [`super::classify`] validated and never index out of
//! bounds: a field that is not there is `None` and the caller drops the frame.
//! Which checksums a field feeds:
//!
//! | field             | IPv4 header | TCP | UDP (0 stays 0) | ICMPv4 |
//! |-------------------|-------------|-----|-----------------|--------|
//! | IPv4 address      | yes         | yes (pseudo-header) | yes | no |
//! | TCP/UDP port      |             | yes | yes             |        |
//! | ICMP echo id      |             |     |                 | yes    |
//! | TTL               | yes         |     |                 |        |

use std::net::Ipv4Addr;

use super::bytes::{put, rd16, update16, wr8, wr16};
use super::checksum;
use super::classify::{L4, V4, V6};
use super::packet::ip_proto;

/// Offset of the checksum field in each transport header.
const TCP_CSUM: usize = 16;
const UDP_CSUM: usize = 6;
const ICMP_CSUM: usize = 2;
/// Offset of the echo identifier in an ICMP echo header.
const ICMP_ID: usize = 4;
const IPV4_TTL: usize = 8;
const IPV4_CSUM: usize = 10;
const IPV4_SRC: usize = 12;
const IPV4_DST: usize = 16;
const IPV6_HOP_LIMIT: usize = 7;

/// Which end of a flow a rewrite changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Source,
    Destination,
}

/// Rewrites the source address and port (echo identifier for ICMP) of `ip` in `d`.
#[inline]
pub fn rewrite_source(d: &mut [u8], ip: &V4, l4: &L4, addr: Ipv4Addr, port: u16) -> Option<()> {
    rewrite_side(d, ip.l3, ip.src, l4, addr, port, Side::Source)
}

/// Rewrites the destination address and port (echo identifier for ICMP) of `ip`.
#[inline]
pub fn rewrite_destination(
    d: &mut [u8],
    ip: &V4,
    l4: &L4,
    addr: Ipv4Addr,
    port: u16,
) -> Option<()> {
    rewrite_side(d, ip.l3, ip.dst, l4, addr, port, Side::Destination)
}

/// Rewrites one side (address and port) of the IPv4 packet whose header is at `l3`,
/// updating the IP header checksum and the transport checksum. The transport checksum
/// is only touched when it lies inside `d` (a quoted header in an ICMP error may be cut
/// short); the address and port must be there.
pub fn rewrite_side(
    d: &mut [u8],
    l3: usize,
    old_addr: Ipv4Addr,
    l4: &L4,
    addr: Ipv4Addr,
    port: u16,
    side: Side,
) -> Option<()> {
    let (addr_off, port_off) = match side {
        Side::Source => (12, 0),
        Side::Destination => (16, 2),
    };
    let ip_csum = rd16(d, l3 + 10)?;
    wr16(
        d,
        l3 + 10,
        checksum::update_ipv4_addr(ip_csum, old_addr, addr),
    )?;
    put(d, l3 + addr_off, &addr.octets())?;
    match l4.proto {
        ip_proto::TCP | ip_proto::UDP => {
            let port_at = l4.off + port_off;
            let old_port = rd16(d, port_at)?;
            wr16(d, port_at, port)?;
            let (csum_at, udp) = if l4.proto == ip_proto::TCP {
                (TCP_CSUM, false)
            } else {
                (UDP_CSUM, true)
            };
            if let Some(c) = rd16(d, l4.off + csum_at) {
                let c = if udp {
                    checksum::udp_update_u16(
                        checksum::udp_update_ipv4_addr(c, old_addr, addr),
                        old_port,
                        port,
                    )
                } else {
                    checksum::update_u16(
                        checksum::update_ipv4_addr(c, old_addr, addr),
                        old_port,
                        port,
                    )
                };
                wr16(d, l4.off + csum_at, c)?;
            }
        }
        ip_proto::ICMP => {
            // Only the echo identifier is translated; ICMP has no pseudo-header.
            let id_at = l4.off + ICMP_ID;
            let old_id = rd16(d, id_at)?;
            wr16(d, id_at, port)?;
            if let Some(c) = rd16(d, l4.off + ICMP_CSUM) {
                wr16(d, l4.off + ICMP_CSUM, checksum::update_u16(c, old_id, port))?;
            }
        }
        _ => return None,
    }
    Some(())
}

/// Rewrites only one IPv4 address of `ip` (the outer header of an ICMP error, whose
/// message checksum the caller recomputes).
pub fn rewrite_address(d: &mut [u8], ip: &V4, side: Side, to: Ipv4Addr) -> Option<()> {
    let (at, old) = match side {
        Side::Source => (IPV4_SRC, ip.src),
        Side::Destination => (IPV4_DST, ip.dst),
    };
    let c = rd16(d, ip.l3 + IPV4_CSUM)?;
    wr16(d, ip.l3 + IPV4_CSUM, checksum::update_ipv4_addr(c, old, to))?;
    put(d, ip.l3 + at, &to.octets())
}

/// Recomputes the ICMP checksum of the message `d[at..end]`.
pub fn fill_icmp_checksum(d: &mut [u8], at: usize, end: usize) -> Option<()> {
    wr16(d, at + ICMP_CSUM, 0)?;
    let c = checksum::checksum(d.get(at..end)?);
    wr16(d, at + ICMP_CSUM, c)
}

/// Decrements the IPv4 TTL and updates the header checksum (the TTL shares a 16-bit
/// word with the protocol). The caller has checked the TTL is above 1.
#[inline]
pub fn decrement_ttl_v4(d: &mut [u8], ip: &V4) -> Option<()> {
    update16(d, ip.l3 + IPV4_TTL, ip.l3 + IPV4_CSUM, |w| {
        w.wrapping_sub(0x0100)
    })
}

/// Decrements the IPv6 hop limit (no checksum covers it).
#[inline]
pub fn decrement_hop_limit(d: &mut [u8], ip: &V6) -> Option<()> {
    wr8(d, ip.l3 + IPV6_HOP_LIMIT, ip.hop_limit.saturating_sub(1))
}
