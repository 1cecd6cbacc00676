//! Masquerading pod traffic to the node address and translating replies back
//! (RFC 3022 NAPT, with RFC 5508's handling of ICMP errors about translated flows).
//!
//! Checksums are updated incrementally (RFC 1624): the IPv4 header for the address,
//! TCP/UDP for the address (pseudo-header) and port, ICMP echo for the identifier.
//! A UDP checksum of zero ("none") stays zero.

use std::net::Ipv4Addr;

use crate::tables::{FlowKey, L4Proto, NatBinding};
use crate::verdict::DropReason;
use crate::wire::bytes::{rd_ip4, rd8, rd16, wr16};
use crate::wire::checksum;
use crate::wire::classify::{
    ICMP_DEST_UNREACHABLE, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, ICMP_PARAMETER_PROBLEM,
    ICMP_TIME_EXCEEDED, L4, V4,
};
use crate::wire::packet::ip_proto;

/// Offset of the checksum field in each transport header.
const TCP_CSUM: usize = 16;
const UDP_CSUM: usize = 6;
const ICMP_CSUM: usize = 2;
/// Offset of the echo identifier in an ICMP echo header.
const ICMP_ID: usize = 4;

/// The flow key of a packet for conntrack, as it is on the wire.
#[inline]
pub(crate) fn flow_key(ip: &V4, l4: &L4) -> Option<FlowKey> {
    let proto = match l4.proto {
        ip_proto::TCP => L4Proto::Tcp,
        ip_proto::UDP => L4Proto::Udp,
        ip_proto::ICMP if matches!(l4.icmp_type, ICMP_ECHO_REQUEST | ICMP_ECHO_REPLY) => {
            L4Proto::IcmpEcho
        }
        _ => return None,
    };
    Some(FlowKey {
        proto,
        src: ip.src,
        src_port: l4.sport,
        dst: ip.dst,
        dst_port: l4.dport,
    })
}

/// Rewrites the source address and port of the packet `ip` in `d` to `to`.
#[inline]
pub(crate) fn rewrite_source(d: &mut [u8], ip: &V4, l4: &L4, to: NatBinding) -> Option<()> {
    rewrite(d, ip.l3, ip.src, l4, to, Side::Source)
}

/// Rewrites the destination address and port of the packet `ip` in `d` to `to`.
#[inline]
pub(crate) fn rewrite_destination(d: &mut [u8], ip: &V4, l4: &L4, to: NatBinding) -> Option<()> {
    rewrite(d, ip.l3, ip.dst, l4, to, Side::Destination)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Source,
    Destination,
}

/// Rewrites one side (address and port) of the IPv4 packet whose header is at `l3`,
/// updating the IP header checksum and the transport checksum. The transport checksum
/// is only touched when it lies inside `d` (a quoted header in an ICMP error may be cut
/// short); the address and port must be there.
fn rewrite(
    d: &mut [u8],
    l3: usize,
    old_addr: Ipv4Addr,
    l4: &L4,
    to: NatBinding,
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
        checksum::update_ipv4_addr(ip_csum, old_addr, to.addr),
    )?;
    crate::wire::bytes::put(d, l3 + addr_off, &to.addr.octets())?;
    match l4.proto {
        ip_proto::TCP | ip_proto::UDP => {
            let port_at = l4.off + port_off;
            let old_port = rd16(d, port_at)?;
            wr16(d, port_at, to.port)?;
            let (csum_at, udp) = if l4.proto == ip_proto::TCP {
                (TCP_CSUM, false)
            } else {
                (UDP_CSUM, true)
            };
            if let Some(c) = rd16(d, l4.off + csum_at) {
                let c = if udp {
                    checksum::udp_update_u16(
                        checksum::udp_update_ipv4_addr(c, old_addr, to.addr),
                        old_port,
                        to.port,
                    )
                } else {
                    checksum::update_u16(
                        checksum::update_ipv4_addr(c, old_addr, to.addr),
                        old_port,
                        to.port,
                    )
                };
                wr16(d, l4.off + csum_at, c)?;
            }
        }
        ip_proto::ICMP => {
            // Only the echo identifier is translated; ICMP has no pseudo-header.
            let id_at = l4.off + ICMP_ID;
            let old_id = rd16(d, id_at)?;
            wr16(d, id_at, to.port)?;
            if let Some(c) = rd16(d, l4.off + ICMP_CSUM) {
                wr16(
                    d,
                    l4.off + ICMP_CSUM,
                    checksum::update_u16(c, old_id, to.port),
                )?;
            }
        }
        _ => return None,
    }
    Some(())
}

/// Whether an ICMPv4 type is an error that quotes the packet that caused it and must
/// be translated with it (RFC 5508 REQ-3).
#[inline]
pub(crate) fn is_translatable_error(icmp_type: u8) -> bool {
    matches!(
        icmp_type,
        ICMP_DEST_UNREACHABLE | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROBLEM | 4 | 5
    )
}

/// The packet quoted in an ICMP error: its IPv4 header at `l3` and its transport
/// header (as far as it was quoted: at least the 8 bytes RFC 792 guarantees).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Quoted {
    pub l3: usize,
    pub src: Ipv4Addr,
    pub l4: L4,
}

impl Quoted {
    /// The inbound conntrack key for the flow the quoted packet belongs to: the quoted
    /// packet went out (src = NAT address), so the key a reply would carry is its
    /// reverse.
    pub fn reply_key(&self, dst: Ipv4Addr) -> Option<FlowKey> {
        let proto = match self.l4.proto {
            ip_proto::TCP => L4Proto::Tcp,
            ip_proto::UDP => L4Proto::Udp,
            ip_proto::ICMP if self.l4.icmp_type == ICMP_ECHO_REQUEST => L4Proto::IcmpEcho,
            _ => return None,
        };
        Some(FlowKey {
            proto,
            src: dst,
            src_port: self.l4.dport,
            dst: self.src,
            dst_port: self.l4.sport,
        })
    }
}

/// Finds the quoted packet of the ICMP error `outer` (its ICMP header at `icmp.off`)
/// and its destination address.
pub(crate) fn quoted(d: &[u8], outer: &V4, icmp: &L4) -> Option<(Quoted, Ipv4Addr)> {
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
    let mut l4 = L4 {
        proto,
        off,
        sport: 0,
        dport: 0,
        tcp_flags: 0,
        icmp_type: 0,
        icmp_code: 0,
    };
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

/// Translates an ICMP error about a masqueraded flow back to the pod: the outer
/// destination, and the quoted packet's source address and port with the quoted IP
/// and transport checksums; then the ICMP checksum over the changed message.
pub(crate) fn untranslate_error(
    d: &mut [u8],
    outer: &V4,
    icmp: &L4,
    q: &Quoted,
    pod: NatBinding,
) -> Result<(), DropReason> {
    let bad = DropReason::MalformedTransport;
    // The quote may be cut anywhere after 8 transport bytes: limit rewrites to it.
    let end = outer.end();
    {
        let quote = d.get_mut(..end).ok_or(bad)?;
        rewrite(quote, q.l3, q.src, &q.l4, pod, Side::Source).ok_or(bad)?;
    }
    rewrite_outer_destination(d, outer, pod.addr).ok_or(bad)?;
    let msg_at = icmp.off;
    wr16(d, msg_at + ICMP_CSUM, 0).ok_or(bad)?;
    let c = checksum::checksum(d.get(msg_at..end).ok_or(bad)?);
    wr16(d, msg_at + ICMP_CSUM, c).ok_or(bad)
}

/// Rewrites only the IPv4 destination address (the outer header of an ICMP error).
fn rewrite_outer_destination(d: &mut [u8], ip: &V4, to: Ipv4Addr) -> Option<()> {
    let c = rd16(d, ip.l3 + 10)?;
    wr16(d, ip.l3 + 10, checksum::update_ipv4_addr(c, ip.dst, to))?;
    crate::wire::bytes::put(d, ip.l3 + 16, &to.octets())
}

/// Verifies an ICMP message's checksum before translating it, so a corrupt error is
/// not given a fresh, valid checksum.
pub(crate) fn icmp_checksum_ok(d: &[u8], outer: &V4, icmp: &L4) -> bool {
    d.get(icmp.off..outer.end())
        .is_some_and(|m| checksum::sum(m) == 0xffff)
}
