//! The packet an ICMPv4 error quotes (RFC 792: its IP header and at least the first
//! 8 bytes of its transport header), read where it lies inside the error, for
//! translating errors about masqueraded flows (RFC 5508).

use std::net::Ipv4Addr;

use super::bytes::{rd_ip4, rd8, rd16};
use super::classify::{ICMP_DEST_UNREACHABLE, ICMP_PARAMETER_PROBLEM, ICMP_TIME_EXCEEDED, L4, V4};
use super::packet::ip_proto;

/// Offset of the echo identifier in an ICMP echo header.
const ICMP_ID: usize = 4;

/// Whether an ICMPv4 type is an error that quotes the packet that caused it and must
/// be translated with it (RFC 5508 REQ-3).
#[inline]
pub fn is_translatable_error(icmp_type: u8) -> bool {
    matches!(
        icmp_type,
        ICMP_DEST_UNREACHABLE | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROBLEM | 4 | 5
    )
}

/// The packet quoted in an ICMP error: its IPv4 header at `l3` and its transport
/// header (as far as it was quoted: at least the 8 bytes RFC 792 guarantees).
#[derive(Clone, Copy, Debug)]
pub struct Quoted {
    pub l3: usize,
    pub src: Ipv4Addr,
    pub l4: L4,
}

/// Finds the quoted packet of the ICMP error `outer` (its ICMP header at `icmp.off`)
/// and its destination address.
pub fn quoted(d: &[u8], outer: &V4, icmp: &L4) -> Option<(Quoted, Ipv4Addr)> {
    let l3 = icmp.off + 8;
    let end = outer.end();
    let ver_ihl = rd8(d, l3)?;
    let ihl = usize::from(ver_ihl & 0x0f) * 4;
    if ver_ihl >> 4 != 4 || ihl < 20 {
        return None;
    }
    let frag = rd16(d, l3 + 6)?;
    if frag & 0x1fff != 0 {
        return None;
    }
    let proto = rd8(d, l3 + 9)?;
    let src = rd_ip4(d, l3 + 12)?;
    let dst = rd_ip4(d, l3 + 16)?;
    let off = l3 + ihl;
    if off + 8 > end {
        return None;
    }
    let mut l4 = L4::at(proto, off);
    match proto {
        ip_proto::TCP | ip_proto::UDP => {
            l4.sport = rd16(d, off)?;
            l4.dport = rd16(d, off + 2)?;
        }
        ip_proto::ICMP => {
            l4.icmp_type = rd8(d, off)?;
            l4.sport = rd16(d, off + ICMP_ID)?;
            l4.dport = l4.sport;
        }
        _ => return None,
    }
    Some((Quoted { l3, src, l4 }, dst))
}
