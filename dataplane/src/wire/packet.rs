//! One-pass classification of a received frame for the pipeline's hot path.
//!
//! [`PacketInfo::parse`] walks Ethernet → optional 802.1Q tag → ARP | IPv4 | IPv6
//! (extension headers) → TCP | UDP | ICMP once, checks every length it relies on, and
//! records what the later stages need (offsets, addresses, ports, flags) in a small
//! `Copy` struct. Nothing is allocated and nothing can panic; the stages then use the
//! offsets to build `new_checked` views or rewrite bytes in place.
//!
//! What it does *not* check, deliberately: TCP/UDP/ICMP checksums (hardware or the
//! receiver does; NAT updates them incrementally) and IPv4 options' contents. The IPv4
//! header checksum *is* verified and reported in [`PacketInfo::ipv4_checksum_ok`] so
//! the pipeline decides what to do with a bad one.

use super::bytes::{rd16, rd32};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::MacAddr;
use super::checksum;
use super::ipv6_ext::{self, Ipv6ExtError};
use crate::verdict::DropReason;

/// EtherType values the dataplane handles.
pub mod ethertype {
    pub const IPV4: u16 = 0x0800;
    pub const ARP: u16 = 0x0806;
    pub const VLAN: u16 = 0x8100;
    pub const QINQ: u16 = 0x88a8;
    pub const IPV6: u16 = 0x86dd;
}

/// IP protocol numbers the classifier looks into.
pub mod ip_proto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ICMPV6: u8 = 58;
}

/// Ethernet header length without a VLAN tag.
pub const ETHERNET_HEADER_LEN: usize = 14;
/// 802.1Q tag length.
pub const VLAN_TAG_LEN: usize = 4;
pub const IPV4_MIN_HEADER_LEN: usize = 20;
pub const IPV6_HEADER_LEN: usize = 40;
pub const UDP_HEADER_LEN: usize = 8;
pub const TCP_MIN_HEADER_LEN: usize = 20;
pub const ICMP_HEADER_LEN: usize = 8;
pub const ARP_ETH_IPV4_LEN: usize = 28;

/// Why a frame could not be classified; each maps onto one [`DropReason`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ParseError {
    /// Shorter than an Ethernet header or a truncated 802.1Q tag.
    MalformedEthernet,
    /// Not ARP, IPv4 or IPv6 (after at most one VLAN tag).
    UnsupportedEtherType,
    /// ARP truncated or not Ethernet/IPv4.
    MalformedArp,
    /// IPv4 version/IHL/total length inconsistent with the frame.
    MalformedIpv4,
    /// IPv6 version/payload length wrong, or an extension header chain past the packet.
    MalformedIpv6,
    /// TCP/UDP/ICMP header truncated or its length fields inconsistent.
    MalformedTransport,
}

impl ParseError {
    pub const fn drop_reason(self) -> DropReason {
        match self {
            ParseError::MalformedEthernet => DropReason::MalformedEthernet,
            ParseError::UnsupportedEtherType => DropReason::UnsupportedEtherType,
            ParseError::MalformedArp => DropReason::MalformedArp,
            ParseError::MalformedIpv4 => DropReason::MalformedIpv4,
            ParseError::MalformedIpv6 => DropReason::MalformedIpv6,
            ParseError::MalformedTransport => DropReason::MalformedTransport,
        }
    }
}

impl From<ParseError> for DropReason {
    fn from(e: ParseError) -> Self {
        e.drop_reason()
    }
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.drop_reason().label())
    }
}

impl std::error::Error for ParseError {}

/// The network layer of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L3 {
    Arp,
    Ipv4,
    Ipv6,
}

/// TCP flag bits (the low byte of the flags field).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;

    pub const fn fin(self) -> bool {
        self.0 & Self::FIN != 0
    }
    pub const fn syn(self) -> bool {
        self.0 & Self::SYN != 0
    }
    pub const fn rst(self) -> bool {
        self.0 & Self::RST != 0
    }
    pub const fn ack(self) -> bool {
        self.0 & Self::ACK != 0
    }
}

/// What sits above the network layer, as far as the classifier looked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// ARP: `operation` is 1 (request) or 2 (reply); other values are kept as seen.
    Arp {
        operation: u16,
    },
    Tcp {
        src_port: u16,
        dst_port: u16,
        flags: TcpFlags,
    },
    Udp {
        src_port: u16,
        dst_port: u16,
    },
    /// ICMP (v4 type 8/0) or ICMPv6 (type 128/129) echo.
    IcmpEcho {
        request: bool,
        id: u16,
        seq: u16,
    },
    /// An ICMP error (v4 types 3, 4, 5, 11, 12; v6 types 1–4). The quoted original
    /// packet starts at [`PacketInfo::payload_offset`]; see [`super::icmp_quote`].
    IcmpError {
        icmp_type: u8,
        code: u8,
    },
    /// Any other ICMP message (including NDP on ICMPv6).
    IcmpOther {
        icmp_type: u8,
        code: u8,
    },
    /// A non-first fragment: it has no transport header.
    Fragment,
    /// A protocol the classifier does not look into (including ESP and no-next-header).
    Other,
}

/// IP fragmentation state. Present only when the packet *is* a fragment (MF set or a
/// non-zero offset, or an IPv6 fragment header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fragment {
    /// Offset of this fragment's data in bytes.
    pub offset: u16,
    /// More fragments follow.
    pub more: bool,
    /// IPv4 identification (16 bits) or IPv6 fragment identification (32 bits).
    pub id: u32,
}

impl Fragment {
    pub const fn is_first(&self) -> bool {
        self.offset == 0
    }
}

/// Everything the pipeline needs to know about a frame, found in one pass.
///
/// Offsets are from the start of the frame. For ARP, `l4` and `payload` equal the end
/// of the ARP body and the addresses are the sender (src) and target (dst) protocol
/// addresses. For IP, `src_ip`/`dst_ip` are the header's addresses, `l4` is the
/// transport header (after IPv4 options or IPv6 extension headers) and `payload` the
/// transport payload (after the 8-byte ICMP header, so for ICMP errors the quoted
/// packet); `l3_end` is where the IP packet ends by its length field (any bytes after
/// it are Ethernet padding).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketInfo {
    pub dst_mac: MacAddr,
    pub src_mac: MacAddr,
    /// The 802.1Q tag control information (PCP, DEI, VID) when the frame is tagged.
    pub vlan_tci: Option<u16>,
    /// EtherType after any VLAN tag.
    pub ethertype: u16,
    pub l3: L3,
    /// Offset of the network header.
    pub l3_offset: u32,
    /// Offset of the transport header.
    pub l4_offset: u32,
    /// Offset of the transport payload.
    pub payload_offset: u32,
    /// End of the network packet by its own length field (≤ frame length).
    pub l3_end: u32,
    /// Final protocol number: after IPv6 extension headers, the upper-layer one.
    pub protocol: u8,
    pub src_ip: IpAddr,
    pub dst_ip: IpAddr,
    pub transport: Transport,
    /// IPv4 TTL or IPv6 hop limit (0 for ARP).
    pub ttl: u8,
    /// IPv4 Don't Fragment bit (IPv6 never fragments in transit: `true`).
    pub dont_fragment: bool,
    pub fragment: Option<Fragment>,
    /// IPv4 header checksum verifies (`true` for IPv6 and ARP, which have none).
    pub ipv4_checksum_ok: bool,
}

impl PacketInfo {
    /// Classifies `frame`. Errors name the first layer that is malformed.
    #[inline]
    pub fn parse(frame: &[u8]) -> Result<PacketInfo, ParseError> {
        let (dst_mac, src_mac) = match frame.get(..12) {
            Some(m) if frame.len() >= ETHERNET_HEADER_LEN => (mac_at(m, 0), mac_at(m, 6)),
            _ => return Err(ParseError::MalformedEthernet),
        };
        let mut ethertype = rd16(frame, 12).ok_or(ParseError::MalformedEthernet)?;
        let mut l3_offset = ETHERNET_HEADER_LEN;
        let mut vlan_tci = None;
        if ethertype == ethertype::VLAN {
            vlan_tci = Some(rd16(frame, 14).ok_or(ParseError::MalformedEthernet)?);
            ethertype = rd16(frame, 16).ok_or(ParseError::MalformedEthernet)?;
            l3_offset += VLAN_TAG_LEN;
        }
        let mut info = PacketInfo {
            dst_mac,
            src_mac,
            vlan_tci,
            ethertype,
            l3: L3::Arp,
            l3_offset: l3_offset as u32,
            l4_offset: 0,
            payload_offset: 0,
            l3_end: 0,
            protocol: 0,
            src_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            dst_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            transport: Transport::Other,
            ttl: 0,
            dont_fragment: false,
            fragment: None,
            ipv4_checksum_ok: true,
        };
        match ethertype {
            ethertype::IPV4 => {
                info.l3 = L3::Ipv4;
                parse_ipv4(frame, l3_offset, &mut info)?;
            }
            ethertype::IPV6 => {
                info.l3 = L3::Ipv6;
                parse_ipv6(frame, l3_offset, &mut info)?;
            }
            ethertype::ARP => parse_arp(frame, l3_offset, &mut info)?,
            _ => return Err(ParseError::UnsupportedEtherType),
        }
        Ok(info)
    }

    /// The (source, destination) port pair that identifies the flow: TCP/UDP ports, or
    /// the echo identifier in both places for ICMP echo. `None` for anything else.
    #[inline]
    pub const fn flow_ports(&self) -> Option<(u16, u16)> {
        match self.transport {
            Transport::Tcp {
                src_port, dst_port, ..
            }
            | Transport::Udp { src_port, dst_port } => Some((src_port, dst_port)),
            Transport::IcmpEcho { id, .. } => Some((id, id)),
            _ => None,
        }
    }

    /// True for UDP to the VXLAN port (the outer header of an encapsulated frame).
    #[inline]
    pub const fn is_vxlan(&self) -> bool {
        matches!(
            self.transport,
            Transport::Udp {
                dst_port: super::vxlan::VXLAN_PORT,
                ..
            }
        )
    }

    /// Length of the IP packet (from the network header to `l3_end`).
    #[inline]
    pub const fn l3_len(&self) -> usize {
        self.l3_end.saturating_sub(self.l3_offset) as usize
    }

    #[inline]
    pub const fn l3_offset(&self) -> usize {
        self.l3_offset as usize
    }

    #[inline]
    pub const fn l4_offset(&self) -> usize {
        self.l4_offset as usize
    }

    #[inline]
    pub const fn payload_offset(&self) -> usize {
        self.payload_offset as usize
    }

    #[inline]
    pub const fn l3_end(&self) -> usize {
        self.l3_end as usize
    }
}

#[inline]
fn mac_at(data: &[u8], at: usize) -> MacAddr {
    let mut m = [0u8; 6];
    if let Some(src) = data.get(at..at + 6) {
        m.copy_from_slice(src);
    }
    MacAddr(m)
}

#[inline]
fn ipv4_at(data: &[u8], at: usize) -> Option<Ipv4Addr> {
    rd32(data, at).map(Ipv4Addr::from_bits)
}

#[inline]
fn ipv6_at(data: &[u8], at: usize) -> Option<Ipv6Addr> {
    let b: [u8; 16] = data.get(at..at + 16)?.try_into().ok()?;
    Some(Ipv6Addr::from(b))
}

fn parse_arp(frame: &[u8], at: usize, info: &mut PacketInfo) -> Result<(), ParseError> {
    let arp = frame
        .get(at..at + ARP_ETH_IPV4_LEN)
        .ok_or(ParseError::MalformedArp)?;
    // Ethernet (1) / IPv4 (0x0800), hardware length 6, protocol length 4.
    if rd16(arp, 0) != Some(1)
        || rd16(arp, 2) != Some(ethertype::IPV4)
        || arp.get(4..6) != Some(&[6, 4])
    {
        return Err(ParseError::MalformedArp);
    }
    let operation = rd16(arp, 6).ok_or(ParseError::MalformedArp)?;
    let spa = ipv4_at(arp, 14).ok_or(ParseError::MalformedArp)?;
    let tpa = ipv4_at(arp, 24).ok_or(ParseError::MalformedArp)?;
    let end = (at + ARP_ETH_IPV4_LEN) as u32;
    info.src_ip = IpAddr::V4(spa);
    info.dst_ip = IpAddr::V4(tpa);
    info.transport = Transport::Arp { operation };
    info.l4_offset = end;
    info.payload_offset = end;
    info.l3_end = end;
    Ok(())
}

fn parse_ipv4(frame: &[u8], at: usize, info: &mut PacketInfo) -> Result<(), ParseError> {
    let fixed = frame
        .get(at..at + IPV4_MIN_HEADER_LEN)
        .ok_or(ParseError::MalformedIpv4)?;
    let [vihl, _tos, _, _, _, _, _, _, ttl, proto, ..] = *fixed else {
        return Err(ParseError::MalformedIpv4);
    };
    if vihl >> 4 != 4 {
        return Err(ParseError::MalformedIpv4);
    }
    let header_len = usize::from(vihl & 0x0f) * 4;
    let total_len = usize::from(rd16(fixed, 2).ok_or(ParseError::MalformedIpv4)?);
    if header_len < IPV4_MIN_HEADER_LEN || total_len < header_len {
        return Err(ParseError::MalformedIpv4);
    }
    let end = at + total_len;
    let packet = frame.get(at..end).ok_or(ParseError::MalformedIpv4)?;
    let header = packet.get(..header_len).ok_or(ParseError::MalformedIpv4)?;
    let id = rd16(fixed, 4).ok_or(ParseError::MalformedIpv4)?;
    let frag = rd16(fixed, 6).ok_or(ParseError::MalformedIpv4)?;
    info.ipv4_checksum_ok = match <&[u8; IPV4_MIN_HEADER_LEN]>::try_from(header) {
        Ok(h) => checksum::sum_ipv4_header(h) == 0xffff,
        Err(_) => checksum::sum(header) == 0xffff,
    };
    info.src_ip = IpAddr::V4(ipv4_at(fixed, 12).ok_or(ParseError::MalformedIpv4)?);
    info.dst_ip = IpAddr::V4(ipv4_at(fixed, 16).ok_or(ParseError::MalformedIpv4)?);
    info.ttl = ttl;
    info.protocol = proto;
    info.dont_fragment = frag & 0x4000 != 0;
    let more = frag & 0x2000 != 0;
    let offset = (frag & 0x1fff) << 3;
    if more || offset != 0 {
        info.fragment = Some(Fragment {
            offset,
            more,
            id: u32::from(id),
        });
    }
    info.l3_end = end as u32;
    let l4 = at + header_len;
    info.l4_offset = l4 as u32;
    if offset != 0 {
        info.transport = Transport::Fragment;
        info.payload_offset = l4 as u32;
        return Ok(());
    }
    parse_transport(frame, l4, end, proto, false, info)
}

fn parse_ipv6(frame: &[u8], at: usize, info: &mut PacketInfo) -> Result<(), ParseError> {
    let fixed = frame
        .get(at..at + IPV6_HEADER_LEN)
        .ok_or(ParseError::MalformedIpv6)?;
    let [v, _, _, _, _, _, next, hop, ..] = *fixed else {
        return Err(ParseError::MalformedIpv6);
    };
    if v >> 4 != 6 {
        return Err(ParseError::MalformedIpv6);
    }
    // A zero payload length means a jumbogram (RFC 2675), which never fits a frame.
    let payload_len = usize::from(rd16(fixed, 4).ok_or(ParseError::MalformedIpv6)?);
    let end = at + IPV6_HEADER_LEN + payload_len;
    if end > frame.len() {
        return Err(ParseError::MalformedIpv6);
    }
    info.src_ip = IpAddr::V6(ipv6_at(fixed, 8).ok_or(ParseError::MalformedIpv6)?);
    info.dst_ip = IpAddr::V6(ipv6_at(fixed, 24).ok_or(ParseError::MalformedIpv6)?);
    info.ttl = hop;
    info.dont_fragment = true;
    info.l3_end = end as u32;
    let packet = frame.get(at..end).ok_or(ParseError::MalformedIpv6)?;
    let walk = ipv6_ext::walk(packet, next).map_err(|e| match e {
        Ipv6ExtError::Truncated | Ipv6ExtError::Invalid => ParseError::MalformedIpv6,
    })?;
    info.protocol = walk.protocol;
    let l4 = at + walk.offset;
    info.l4_offset = l4 as u32;
    if let Some(f) = walk.fragment {
        info.fragment = Some(Fragment {
            offset: f.offset,
            more: f.more,
            id: f.id,
        });
        if f.offset != 0 {
            info.transport = Transport::Fragment;
            info.payload_offset = l4 as u32;
            return Ok(());
        }
    }
    if walk.stopped {
        // ESP or "no next header": nothing we can read above.
        info.transport = Transport::Other;
        info.payload_offset = l4 as u32;
        return Ok(());
    }
    parse_transport(frame, l4, end, walk.protocol, true, info)
}

/// Reads the transport header at `frame[l4..end]`.
fn parse_transport(
    frame: &[u8],
    l4: usize,
    end: usize,
    proto: u8,
    v6: bool,
    info: &mut PacketInfo,
) -> Result<(), ParseError> {
    let seg = frame.get(l4..end).ok_or(ParseError::MalformedTransport)?;
    let (transport, header_len) = match proto {
        ip_proto::TCP => {
            let h = seg
                .get(..TCP_MIN_HEADER_LEN)
                .ok_or(ParseError::MalformedTransport)?;
            let [sp0, sp1, dp0, dp1, _, _, _, _, _, _, _, _, off, flags, ..] = *h else {
                return Err(ParseError::MalformedTransport);
            };
            let hl = usize::from(off >> 4) * 4;
            if hl < TCP_MIN_HEADER_LEN || hl > seg.len() {
                return Err(ParseError::MalformedTransport);
            }
            let t = Transport::Tcp {
                src_port: u16::from_be_bytes([sp0, sp1]),
                dst_port: u16::from_be_bytes([dp0, dp1]),
                flags: TcpFlags(flags),
            };
            (t, hl)
        }
        ip_proto::UDP => {
            let h = seg
                .get(..UDP_HEADER_LEN)
                .ok_or(ParseError::MalformedTransport)?;
            let [sp0, sp1, dp0, dp1, l0, l1, _, _] = *h else {
                return Err(ParseError::MalformedTransport);
            };
            let ulen = usize::from(u16::from_be_bytes([l0, l1]));
            // Fragments carry only part of the datagram, so the UDP length can only be
            // checked against the packet when it is whole.
            let whole = info.fragment.is_none();
            if ulen < UDP_HEADER_LEN || (whole && ulen > seg.len()) {
                return Err(ParseError::MalformedTransport);
            }
            let t = Transport::Udp {
                src_port: u16::from_be_bytes([sp0, sp1]),
                dst_port: u16::from_be_bytes([dp0, dp1]),
            };
            (t, UDP_HEADER_LEN)
        }
        ip_proto::ICMP if !v6 => (icmp(seg, false)?, ICMP_HEADER_LEN),
        ip_proto::ICMPV6 if v6 => (icmp(seg, true)?, ICMP_HEADER_LEN),
        _ => (Transport::Other, 0),
    };
    info.transport = transport;
    info.payload_offset = (l4 + header_len) as u32;
    Ok(())
}

fn icmp(seg: &[u8], v6: bool) -> Result<Transport, ParseError> {
    let h = seg
        .get(..ICMP_HEADER_LEN)
        .ok_or(ParseError::MalformedTransport)?;
    let [ty, code, _, _, i0, i1, s0, s1] = *h else {
        return Err(ParseError::MalformedTransport);
    };
    let id = u16::from_be_bytes([i0, i1]);
    let seq = u16::from_be_bytes([s0, s1]);
    let t = match (v6, ty) {
        (false, 8) | (true, 128) => Transport::IcmpEcho {
            request: true,
            id,
            seq,
        },
        (false, 0) | (true, 129) => Transport::IcmpEcho {
            request: false,
            id,
            seq,
        },
        (false, 3 | 4 | 5 | 11 | 12) | (true, 1..=4) => Transport::IcmpError {
            icmp_type: ty,
            code,
        },
        _ => Transport::IcmpOther {
            icmp_type: ty,
            code,
        },
    };
    Ok(t)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    /// Ethernet + IPv4 (valid header checksum) + UDP 198.18.0.1:1234 → 198.18.0.2:8472.
    #[rustfmt::skip]
    const UDP_FRAME: [u8; 46] = [
        0x02, 0, 0, 0, 0, 2,  0x02, 0, 0, 0, 0, 1,  0x08, 0x00,
        0x45, 0x00, 0x00, 0x20, 0x12, 0x34, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00,
        198, 18, 0, 1,  198, 18, 0, 2,
        0x04, 0xd2, 0x21, 0x18, 0x00, 0x0c, 0x00, 0x00,
        0xde, 0xad, 0xbe, 0xef,
    ];

    fn with_ip_checksum(mut f: [u8; 46]) -> [u8; 46] {
        let c = checksum::checksum(&f[14..34]);
        f[24..26].copy_from_slice(&c.to_be_bytes());
        f
    }

    #[test]
    fn classifies_udp() {
        let f = with_ip_checksum(UDP_FRAME);
        let info = PacketInfo::parse(&f).unwrap();
        assert_eq!(info.l3, L3::Ipv4);
        assert_eq!(
            (
                info.l3_offset(),
                info.l4_offset(),
                info.payload_offset(),
                info.l3_end()
            ),
            (14, 34, 42, 46)
        );
        assert_eq!(info.src_ip, IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)));
        assert_eq!(info.dst_ip, IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2)));
        assert_eq!(
            info.transport,
            Transport::Udp {
                src_port: 1234,
                dst_port: 8472
            }
        );
        assert!(info.is_vxlan());
        assert!(info.ipv4_checksum_ok && info.dont_fragment);
        assert_eq!((info.ttl, info.protocol, info.fragment), (64, 17, None));
        let mut bad = f;
        bad[22] = 63;
        assert!(!PacketInfo::parse(&bad).unwrap().ipv4_checksum_ok);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let f = with_ip_checksum(UDP_FRAME);
        for n in 0..f.len() {
            let e = PacketInfo::parse(&f[..n]).unwrap_err();
            let want = match n {
                0..14 => ParseError::MalformedEthernet,
                _ => ParseError::MalformedIpv4,
            };
            assert_eq!(e, want, "len {n}");
        }
    }
}
