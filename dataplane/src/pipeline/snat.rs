//! Masquerading pod traffic to the node address and translating replies back
//! (RFC 3022 NAPT, with RFC 5508's handling of ICMP errors about translated flows).
//!
//! Checksums are updated incrementally (RFC 1624): the IPv4 header for the address,
//! TCP/UDP for the address (pseudo-header) and port, ICMP echo for the identifier.
//! A UDP checksum of zero ("none") stays zero.

use std::net::Ipv4Addr;

use crate::tables::{FlowKey, L4Proto, NatBinding};
use crate::verdict::DropReason;
use crate::wire::checksum;
use crate::wire::classify::{ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, L4, V4};
use crate::wire::icmp_quote::Quoted;
use crate::wire::packet::ip_proto;
use crate::wire::rewrite::{Side, fill_icmp_checksum, rewrite_destination_address, rewrite_side};

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

/// The inbound conntrack key for the flow the quoted packet belongs to: the quoted
/// packet went out (src = NAT address), so the key a reply would carry is its
/// reverse.
pub(crate) fn reply_key(q: &Quoted, dst: Ipv4Addr) -> Option<FlowKey> {
    let proto = match q.l4.proto {
        ip_proto::TCP => L4Proto::Tcp,
        ip_proto::UDP => L4Proto::Udp,
        ip_proto::ICMP if q.l4.icmp_type == ICMP_ECHO_REQUEST => L4Proto::IcmpEcho,
        _ => return None,
    };
    Some(FlowKey {
        proto,
        src: dst,
        src_port: q.l4.dport,
        dst: q.src,
        dst_port: q.l4.sport,
    })
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
        rewrite_side(quote, q.l3, q.src, &q.l4, pod.addr, pod.port, Side::Source).ok_or(bad)?;
    }
    rewrite_destination_address(d, outer, pod.addr).ok_or(bad)?;
    fill_icmp_checksum(d, icmp.off, end).ok_or(bad)
}

/// Verifies an ICMP message's checksum before translating it, so a corrupt error is
/// not given a fresh, valid checksum.
pub(crate) fn icmp_checksum_ok(d: &[u8], outer: &V4, icmp: &L4) -> bool {
    d.get(icmp.off..outer.end())
        .is_some_and(|m| checksum::sum(m) == 0xffff)
}
