//! One pass over the headers the pipeline decides on: where the IP header and the
//! transport header start, and the few fields every path reads.
//!
//! Validation happens once, in [`PacketInfo::parse`]: after [`classify`] succeeds, the
//! offsets it returns are inside the packet, the IPv4 header checksum is right and
//! the transport header (when the packet carries one) is complete.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::bytes::rd8;
use crate::verdict::DropReason;
use crate::wire::packet::{L3, PacketInfo, ParseError, Transport};

pub(crate) const ETH_LEN: usize = 14;
pub(crate) const ETHERTYPE_IPV4: u16 = 0x0800;
pub(crate) const ETHERTYPE_ARP: u16 = 0x0806;
pub(crate) const ETHERTYPE_IPV6: u16 = 0x86dd;

pub(crate) const PROTO_ICMP: u8 = 1;
pub(crate) const PROTO_TCP: u8 = 6;
pub(crate) const PROTO_UDP: u8 = 17;
pub(crate) const PROTO_ICMPV6: u8 = 58;

/// ICMPv4 types the pipeline treats specially.
pub(crate) const ICMP_ECHO_REPLY: u8 = 0;
pub(crate) const ICMP_DEST_UNREACHABLE: u8 = 3;
pub(crate) const ICMP_ECHO_REQUEST: u8 = 8;
pub(crate) const ICMP_TIME_EXCEEDED: u8 = 11;
pub(crate) const ICMP_PARAMETER_PROBLEM: u8 = 12;

/// The transport header of a first (or only) fragment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct L4 {
    pub proto: u8,
    /// Offset of the transport header in the frame.
    pub off: usize,
    /// TCP/UDP ports; for ICMP echo both are the identifier; 0 for other ICMP.
    pub sport: u16,
    pub dport: u16,
    /// TCP flags (0 for other protocols).
    pub tcp_flags: u8,
    /// ICMP/ICMPv6 type and code (0 for TCP/UDP).
    pub icmp_type: u8,
    pub icmp_code: u8,
}

/// An IPv4 packet at offset `l3` of the frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct V4 {
    pub l3: usize,
    /// Header length in bytes (options included).
    pub ihl: usize,
    /// Total length from the header; bytes past it are Ethernet padding.
    pub total_len: usize,
    pub tos: u8,
    pub ttl: u8,
    pub proto: u8,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub df: bool,
    /// Fragment offset in 8-byte units; non-zero means no transport header here.
    pub frag_offset: u16,
    pub more_fragments: bool,
    /// The transport header for TCP, UDP and ICMP first fragments.
    pub l4: Option<L4>,
}

impl V4 {
    pub fn is_fragment(&self) -> bool {
        self.frag_offset != 0 || self.more_fragments
    }

    /// End offset of the IP packet in the frame.
    pub fn end(&self) -> usize {
        self.l3 + self.total_len
    }
}

/// An IPv6 packet at offset `l3` of the frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct V6 {
    pub l3: usize,
    /// 40 + payload length.
    pub total_len: usize,
    pub traffic_class: u8,
    pub hop_limit: u8,
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    /// The upper-layer protocol after the extension headers.
    pub proto: u8,
    /// A fragment header is present with a non-zero offset.
    pub non_first_fragment: bool,
    pub l4: Option<L4>,
}

impl V6 {
    pub fn end(&self) -> usize {
        self.l3 + self.total_len
    }
}

/// What a frame is, as far as the pipeline cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Packet {
    Arp,
    V4(V4),
    V6(V6),
    /// Another EtherType or a VLAN-tagged frame: not pod traffic.
    Other,
}

/// Classifies `d` with the one-pass [`PacketInfo::parse`] and keeps what the
/// pipeline's paths need, split by IP version so no path matches on `IpAddr` again.
/// A bad IPv4 header checksum is a `MalformedIpv4` drop here: a router must not
/// forward such a packet (RFC 1812 5.2.2), and NAT must not launder it.
#[inline]
pub(crate) fn classify(d: &[u8]) -> Result<Packet, DropReason> {
    let info = match PacketInfo::parse(d) {
        Ok(info) => info,
        Err(ParseError::UnsupportedEtherType) => return Ok(Packet::Other),
        Err(e) => return Err(e.drop_reason()),
    };
    if info.vlan_tci.is_some() {
        return Ok(Packet::Other);
    }
    let l3 = info.l3_offset();
    let total_len = info.l3_len();
    let l4 = l4_of(&info);
    match (info.l3, info.src_ip, info.dst_ip) {
        (L3::Arp, ..) => Ok(Packet::Arp),
        (L3::Ipv4, IpAddr::V4(src), IpAddr::V4(dst)) => {
            if !info.ipv4_checksum_ok {
                return Err(DropReason::MalformedIpv4);
            }
            let frag = info.fragment;
            Ok(Packet::V4(V4 {
                l3,
                ihl: info.l4_offset() - l3,
                total_len,
                tos: rd8(d, l3 + 1).ok_or(DropReason::MalformedIpv4)?,
                ttl: info.ttl,
                proto: info.protocol,
                src,
                dst,
                df: info.dont_fragment,
                frag_offset: frag.map_or(0, |f| f.offset >> 3),
                more_fragments: frag.is_some_and(|f| f.more),
                l4,
            }))
        }
        (L3::Ipv6, IpAddr::V6(src), IpAddr::V6(dst)) => {
            let b0 = rd8(d, l3).ok_or(DropReason::MalformedIpv6)?;
            let b1 = rd8(d, l3 + 1).ok_or(DropReason::MalformedIpv6)?;
            Ok(Packet::V6(V6 {
                l3,
                total_len,
                traffic_class: (b0 << 4) | (b1 >> 4),
                hop_limit: info.ttl,
                src,
                dst,
                proto: info.protocol,
                non_first_fragment: info.fragment.is_some_and(|f| f.offset != 0),
                l4,
            }))
        }
        _ => Err(DropReason::MalformedEthernet),
    }
}

fn l4_of(info: &PacketInfo) -> Option<L4> {
    let v6 = info.l3 == L3::Ipv6;
    let mut l4 = L4 {
        proto: info.protocol,
        off: info.l4_offset(),
        sport: 0,
        dport: 0,
        tcp_flags: 0,
        icmp_type: 0,
        icmp_code: 0,
    };
    match info.transport {
        Transport::Tcp {
            src_port,
            dst_port,
            flags,
        } => {
            l4.sport = src_port;
            l4.dport = dst_port;
            l4.tcp_flags = flags.0;
        }
        Transport::Udp { src_port, dst_port } => {
            l4.sport = src_port;
            l4.dport = dst_port;
        }
        Transport::IcmpEcho { request, id, .. } => {
            l4.icmp_type = match (v6, request) {
                (false, true) => ICMP_ECHO_REQUEST,
                (false, false) => ICMP_ECHO_REPLY,
                (true, true) => 128,
                (true, false) => 129,
            };
            l4.sport = id;
            l4.dport = id;
        }
        Transport::IcmpError { icmp_type, code } | Transport::IcmpOther { icmp_type, code } => {
            l4.icmp_type = icmp_type;
            l4.icmp_code = code;
        }
        Transport::Arp { .. } | Transport::Fragment | Transport::Other => return None,
    }
    Some(l4)
}

/// A flow hash of the 5-tuple (addresses folded to 64 bits), stable across runs so
/// that one flow always takes the same outer UDP source port and thus the same ECMP
/// path and receive queue.
#[inline]
pub(crate) fn flow_hash(addrs: u64, proto: u8, sport: u16, dport: u16) -> u32 {
    let ports = (u64::from(proto) << 32) | (u64::from(sport) << 16) | u64::from(dport);
    let h = mix64(addrs ^ mix64(ports));
    (h ^ (h >> 32)) as u32
}

/// splitmix64's finaliser: every input bit affects every output bit.
#[inline]
const fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl V4 {
    pub fn flow_hash(&self) -> u32 {
        let addrs = (u64::from(self.src.to_bits()) << 32) | u64::from(self.dst.to_bits());
        let (s, d) = self.l4.map_or((0, 0), |l| (l.sport, l.dport));
        flow_hash(addrs, self.proto, s, d)
    }
}

impl V6 {
    pub fn flow_hash(&self) -> u32 {
        let x = self.src.to_bits() ^ self.dst.to_bits().rotate_left(64);
        let addrs = (x as u64) ^ ((x >> 64) as u64);
        let (s, d) = self.l4.map_or((0, 0), |l| (l.sport, l.dport));
        flow_hash(addrs, self.proto, s, d)
    }
}
