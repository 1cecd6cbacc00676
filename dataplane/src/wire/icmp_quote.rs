//! The original packet quoted inside an ICMP error (RFC 792: IP header + at least the
//! first 8 bytes of its payload; RFC 4443: as much of the IPv6 packet as fits).
//!
//! NAT needs it to find the flow an error is about and to un-translate it: the quote
//! is of the packet *as we sent it*, so its source is the translated address/port.
//! The quote is truncated by design, so its IP length fields are not checked against
//! the bytes present; only the header and the 8 transport bytes we read must be there.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::WireError;
use super::checksum::{self, read_u16, write_u16};
use super::ipv6_ext;
use super::packet::{L3, PacketInfo, Transport, ip_proto};

/// Transport bytes an ICMP error must quote.
pub const QUOTED_L4_LEN: usize = 8;

/// What the first 8 quoted transport bytes say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuotedTransport {
    Tcp {
        src_port: u16,
        dst_port: u16,
    },
    Udp {
        src_port: u16,
        dst_port: u16,
    },
    /// An echo request or reply (ICMP type 8/0, ICMPv6 128/129) and its identifier.
    IcmpEcho {
        id: u16,
    },
    /// Anything else (other protocols, other ICMP types, a non-first fragment).
    Other,
}

/// The parsed quote. Offsets are relative to the start of the quote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuotedPacket {
    pub l3: L3,
    pub protocol: u8,
    pub src_ip: IpAddr,
    pub dst_ip: IpAddr,
    /// Offset of the quoted transport header.
    pub l4_offset: usize,
    pub transport: QuotedTransport,
}

impl QuotedPacket {
    /// Parses an IPv4 quote (the payload of an ICMPv4 error, after its 8-byte header).
    pub fn parse_v4(quote: &[u8]) -> Result<Self, WireError> {
        let vihl = *quote.first().ok_or(WireError::Truncated)?;
        if vihl >> 4 != 4 {
            return Err(WireError::Invalid);
        }
        let ihl = usize::from(vihl & 0x0f) * 4;
        if ihl < 20 {
            return Err(WireError::Invalid);
        }
        if quote.len() < ihl {
            return Err(WireError::Truncated);
        }
        let protocol = *quote.get(9).ok_or(WireError::Truncated)?;
        let frag = read_u16(quote, 6).ok_or(WireError::Truncated)?;
        let src = addr4(quote, 12)?;
        let dst = addr4(quote, 16)?;
        let transport = if frag & 0x1fff != 0 {
            QuotedTransport::Other
        } else {
            quoted_transport(
                quote.get(ihl..).ok_or(WireError::Truncated)?,
                protocol,
                false,
            )?
        };
        Ok(QuotedPacket {
            l3: L3::Ipv4,
            protocol,
            src_ip: IpAddr::V4(src),
            dst_ip: IpAddr::V4(dst),
            l4_offset: ihl,
            transport,
        })
    }

    /// Parses an IPv6 quote (the payload of an ICMPv6 error), walking extension
    /// headers that are present in full.
    pub fn parse_v6(quote: &[u8]) -> Result<Self, WireError> {
        let fixed = quote.get(..40).ok_or(WireError::Truncated)?;
        if fixed.first().map(|v| v >> 4) != Some(6) {
            return Err(WireError::Invalid);
        }
        let next = *fixed.get(6).ok_or(WireError::Truncated)?;
        let src: [u8; 16] = fixed
            .get(8..24)
            .and_then(|s| s.try_into().ok())
            .ok_or(WireError::Truncated)?;
        let dst: [u8; 16] = fixed
            .get(24..40)
            .and_then(|s| s.try_into().ok())
            .ok_or(WireError::Truncated)?;
        let walk = ipv6_ext::walk(quote, next).map_err(|_| WireError::Truncated)?;
        let non_first = walk.fragment.is_some_and(|f| f.offset != 0);
        let transport = if walk.stopped || non_first {
            QuotedTransport::Other
        } else {
            quoted_transport(
                quote.get(walk.offset..).ok_or(WireError::Truncated)?,
                walk.protocol,
                true,
            )?
        };
        Ok(QuotedPacket {
            l3: L3::Ipv6,
            protocol: walk.protocol,
            src_ip: IpAddr::V6(Ipv6Addr::from(src)),
            dst_ip: IpAddr::V6(Ipv6Addr::from(dst)),
            l4_offset: walk.offset,
            transport,
        })
    }

    /// Parses the quote of an ICMP error frame classified by [`PacketInfo::parse`].
    pub fn from_error(frame: &[u8], info: &PacketInfo) -> Result<Self, WireError> {
        if !matches!(info.transport, Transport::IcmpError { .. }) {
            return Err(WireError::Invalid);
        }
        let quote = frame
            .get(info.payload_offset()..info.l3_end())
            .ok_or(WireError::Truncated)?;
        match info.l3 {
            L3::Ipv4 => Self::parse_v4(quote),
            L3::Ipv6 => Self::parse_v6(quote),
            L3::Arp => Err(WireError::Invalid),
        }
    }

    /// The quoted flow's (source, destination) ports, or the echo id in both.
    pub const fn flow_ports(&self) -> Option<(u16, u16)> {
        match self.transport {
            QuotedTransport::Tcp { src_port, dst_port }
            | QuotedTransport::Udp { src_port, dst_port } => Some((src_port, dst_port)),
            QuotedTransport::IcmpEcho { id } => Some((id, id)),
            QuotedTransport::Other => None,
        }
    }
}

fn addr4(data: &[u8], at: usize) -> Result<Ipv4Addr, WireError> {
    let b: [u8; 4] = data
        .get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .ok_or(WireError::Truncated)?;
    Ok(Ipv4Addr::from(b))
}

fn quoted_transport(l4: &[u8], protocol: u8, v6: bool) -> Result<QuotedTransport, WireError> {
    let h = l4.get(..QUOTED_L4_LEN).ok_or(WireError::Truncated)?;
    let [a0, a1, b0, b1, c0, c1, ..] = *h else {
        return Err(WireError::Truncated);
    };
    let first = u16::from_be_bytes([a0, a1]);
    let second = u16::from_be_bytes([b0, b1]);
    Ok(match protocol {
        ip_proto::TCP => QuotedTransport::Tcp {
            src_port: first,
            dst_port: second,
        },
        ip_proto::UDP => QuotedTransport::Udp {
            src_port: first,
            dst_port: second,
        },
        ip_proto::ICMP if !v6 && matches!(a0, 0 | 8) => QuotedTransport::IcmpEcho {
            id: u16::from_be_bytes([c0, c1]),
        },
        ip_proto::ICMPV6 if v6 && matches!(a0, 128 | 129) => QuotedTransport::IcmpEcho {
            id: u16::from_be_bytes([c0, c1]),
        },
        _ => QuotedTransport::Other,
    })
}

/// Which end of the quoted flow to rewrite.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuotedSide {
    Source,
    Destination,
}

/// Un-translates an ICMPv4 error about a NATed flow in place: sets the quoted packet's
/// address and port (or echo id) on `side`, fixes the quoted IPv4 header checksum and,
/// when it is inside the quote, the quoted TCP/UDP checksum, then recomputes the outer
/// ICMP checksum over the whole message (the error path is rare; a full sum is
/// simplest and always right). The outer IP header is the caller's to rewrite.
pub fn rewrite_quoted_v4(
    frame: &mut [u8],
    info: &PacketInfo,
    side: QuotedSide,
    addr: Ipv4Addr,
    port: u16,
) -> Result<(), WireError> {
    if info.l3 != L3::Ipv4 {
        return Err(WireError::Invalid);
    }
    let q_at = info.payload_offset();
    let quote = frame.get(q_at..info.l3_end()).ok_or(WireError::Truncated)?;
    let q = QuotedPacket::parse_v4(quote)?;
    let IpAddr::V4(old_addr) = (match side {
        QuotedSide::Source => q.src_ip,
        QuotedSide::Destination => q.dst_ip,
    }) else {
        return Err(WireError::Invalid);
    };
    let addr_at = q_at + if side == QuotedSide::Source { 12 } else { 16 };
    let ip_sum_at = q_at + 10;
    let l4 = q_at + q.l4_offset;
    let (port_at, l4_sum) = match (q.transport, side) {
        (QuotedTransport::Tcp { .. }, QuotedSide::Source) => (Some(l4), Some((l4 + 16, false))),
        (QuotedTransport::Tcp { .. }, QuotedSide::Destination) => {
            (Some(l4 + 2), Some((l4 + 16, false)))
        }
        (QuotedTransport::Udp { .. }, QuotedSide::Source) => (Some(l4), Some((l4 + 6, true))),
        (QuotedTransport::Udp { .. }, QuotedSide::Destination) => {
            (Some(l4 + 2), Some((l4 + 6, true)))
        }
        // The echo id sits in the quoted ICMP header; its checksum is in the quote too.
        (QuotedTransport::IcmpEcho { .. }, _) => (Some(l4 + 4), Some((l4 + 2, false))),
        (QuotedTransport::Other, _) => (None, None),
    };

    let ip_sum = read_u16(frame, ip_sum_at).ok_or(WireError::Truncated)?;
    write_u16(
        frame,
        ip_sum_at,
        checksum::update_ipv4_addr(ip_sum, old_addr, addr),
    );
    if let Some(dst) = frame.get_mut(addr_at..addr_at + 4) {
        dst.copy_from_slice(&addr.octets());
    }
    if let Some(p_at) = port_at {
        let old_port = read_u16(frame, p_at).ok_or(WireError::Truncated)?;
        write_u16(frame, p_at, port);
        // A quoted TCP checksum lies past the 8 guaranteed bytes; update it only if present.
        if let Some((s_at, udp, s)) = l4_sum.and_then(|(a, u)| Some((a, u, read_u16(frame, a)?))) {
            let is_icmp = matches!(q.transport, QuotedTransport::IcmpEcho { .. });
            let s = if is_icmp {
                checksum::update_u16(s, old_port, port)
            } else if udp {
                checksum::udp_update_ipv4_addr(
                    checksum::udp_update_u16(s, old_port, port),
                    old_addr,
                    addr,
                )
            } else {
                checksum::update_ipv4_addr(checksum::update_u16(s, old_port, port), old_addr, addr)
            };
            write_u16(frame, s_at, s);
        }
    }
    fill_icmp_checksum(frame, info)
}

/// Recomputes an ICMPv4 message's checksum over `l4..l3_end`.
pub fn fill_icmp_checksum(frame: &mut [u8], info: &PacketInfo) -> Result<(), WireError> {
    let l4 = info.l4_offset();
    if !write_u16(frame, l4 + 2, 0) {
        return Err(WireError::Truncated);
    }
    let msg = frame.get(l4..info.l3_end()).ok_or(WireError::Truncated)?;
    let c = checksum::checksum(msg);
    write_u16(frame, l4 + 2, c);
    Ok(())
}
