//! Masquerading pod traffic to the node address and translating replies back
//! (RFC 3022 NAPT, with RFC 5508's handling of ICMP errors about translated flows).
//!
//! Checksums are updated incrementally (RFC 1624): the IPv4 header for the address,
//! TCP/UDP for the address (pseudo-header) and port, ICMP echo for the identifier.
//! A UDP checksum of zero ("none") stays zero.

use std::net::Ipv4Addr;

use crate::tables::conntrack::tcp_flags;
use crate::tables::{FlowKey, L4Proto, NatBinding, TcpSegment};
use crate::verdict::DropReason;
use crate::wire::bytes::{rd_array, rd8, rd16};
use crate::wire::checksum;
use crate::wire::classify::{ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, L4, V4};
use crate::wire::icmp_quote::Quoted;
use crate::wire::packet::ip_proto;
use crate::wire::rewrite::{Side, fill_icmp_checksum, rewrite_address, rewrite_side};

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

/// What conntrack reads from the TCP header of the packet `ip` in `d` (its window
/// check): sequence and acknowledgement numbers, window, payload length and, on
/// a SYN, the window scale option. All zero for other protocols and for a header
/// cut short (the parser already refused those).
#[inline]
pub(crate) fn tcp_segment(d: &[u8], ip: &V4, l4: &L4) -> TcpSegment {
    const SEQ: usize = 4;
    const ACK: usize = 8;
    const DATA_OFFSET: usize = 12;
    const WINDOW: usize = 14;
    let at = l4.off;
    let (Some(seq), Some(ack), Some(doff), Some(window)) = (
        rd_array::<4>(d, at + SEQ),
        rd_array::<4>(d, at + ACK),
        rd8(d, at + DATA_OFFSET),
        rd16(d, at + WINDOW),
    ) else {
        return TcpSegment::default();
    };
    if l4.proto != ip_proto::TCP {
        return TcpSegment::default();
    }
    let header_len = usize::from(doff >> 4) * 4;
    let payload_len = (ip.l3 + ip.total_len).saturating_sub(at + header_len);
    let window_scale = if l4.tcp_flags & tcp_flags::SYN != 0 {
        d.get(at + 20..at + header_len)
            .and_then(window_scale_option)
    } else {
        None
    };
    TcpSegment {
        flags: l4.tcp_flags,
        seq: u32::from_be_bytes(seq),
        ack: u32::from_be_bytes(ack),
        window,
        payload_len: u32::try_from(payload_len).unwrap_or(u32::MAX),
        window_scale,
    }
}

/// The shift of the window scale option (RFC 7323 §2.2: kind 3, length 3) among
/// TCP options.
fn window_scale_option(mut opts: &[u8]) -> Option<u8> {
    const END: u8 = 0;
    const NOP: u8 = 1;
    const WINDOW_SCALE: u8 = 3;
    loop {
        match *opts {
            [] | [END, ..] => return None,
            [NOP, ref rest @ ..] => opts = rest,
            [WINDOW_SCALE, 3, shift, ..] => return Some(shift),
            [_, len, ..] if len >= 2 => opts = opts.get(usize::from(len)..)?,
            _ => return None,
        }
    }
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

/// How an ICMP error about a translated flow is translated back (RFC 5508, and
/// Linux conntrack's `nf_nat_icmp_reply_translation` for DNAT): what the quoted
/// packet's source and destination become, and the outer header's addresses. `None`
/// leaves a field as it is.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ErrorTranslation {
    pub quoted_src: Option<NatBinding>,
    pub quoted_dst: Option<NatBinding>,
    pub outer_src: Option<Ipv4Addr>,
    pub outer_dst: Option<Ipv4Addr>,
}

/// Translates an ICMP error about a translated flow back as `t` says: the quoted
/// packet's addresses and ports with the quoted IP and transport checksums, the outer
/// addresses with the outer IP checksum; then the ICMP checksum over the changed
/// message. `quoted_dst` is the quoted packet's destination address as it was.
/// Returns the outer header as it now is.
pub(crate) fn untranslate_error(
    d: &mut [u8],
    outer: &V4,
    icmp: &L4,
    q: &Quoted,
    quoted_dst: Ipv4Addr,
    t: ErrorTranslation,
) -> Result<V4, DropReason> {
    let bad = DropReason::MalformedTransport;
    // The quote may be cut anywhere after 8 transport bytes: limit rewrites to it.
    let end = outer.end();
    {
        let quote = d.get_mut(..end).ok_or(bad)?;
        if let Some(to) = t.quoted_src {
            rewrite_side(quote, q.l3, q.src, &q.l4, to.addr, to.port, Side::Source).ok_or(bad)?;
        }
        if let Some(to) = t.quoted_dst {
            rewrite_side(
                quote,
                q.l3,
                quoted_dst,
                &q.l4,
                to.addr,
                to.port,
                Side::Destination,
            )
            .ok_or(bad)?;
        }
    }
    let mut now = *outer;
    if let Some(to) = t.outer_src {
        rewrite_address(d, &now, Side::Source, to).ok_or(bad)?;
        now.src = to;
    }
    if let Some(to) = t.outer_dst {
        rewrite_address(d, &now, Side::Destination, to).ok_or(bad)?;
        now.dst = to;
    }
    fill_icmp_checksum(d, icmp.off, end).ok_or(bad)?;
    Ok(now)
}

/// Verifies an ICMP message's checksum before translating it, so a corrupt error is
/// not given a fresh, valid checksum.
pub(crate) fn icmp_checksum_ok(d: &[u8], outer: &V4, icmp: &L4) -> bool {
    d.get(icmp.off..outer.end())
        .is_some_and(|m| checksum::sum(m) == 0xffff)
}

#[cfg(test)]
mod tests {
    use super::window_scale_option;

    #[test]
    fn the_window_scale_option_is_found_among_others() {
        // MSS 1460, SACK permitted, timestamps, NOP, window scale 7: Linux's SYN.
        let linux_syn = [
            2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7,
        ];
        assert_eq!(window_scale_option(&linux_syn), Some(7));
        assert_eq!(window_scale_option(&[2, 4, 0x05, 0xb4]), None);
        // End of options, a bad length, a cut-off option: no scale, no panic.
        assert_eq!(window_scale_option(&[0, 3, 3, 7]), None);
        assert_eq!(window_scale_option(&[8, 1, 3, 3, 7]), None);
        assert_eq!(window_scale_option(&[8, 10, 0]), None);
        assert_eq!(window_scale_option(&[3, 3]), None);
    }
}
