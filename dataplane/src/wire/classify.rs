//! One pass over the headers the pipeline decides on: where the IP header and the
//! transport header start, and the few fields every path reads.
//!
//! Validation happens once, in [`PacketInfo::parse`]: after [`classify`] succeeds, the
//! offsets it returns are inside the packet, the IPv4 header checksum is right and
//! the transport header (when the packet carries one) is complete.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::bytes::{rd8, rd16};
use super::checksum;
use super::packet::{
    ETHERNET_HEADER_LEN, L3, PacketInfo, ParseError, Transport, ethertype, ip_proto,
};
use crate::verdict::DropReason;

/// ICMPv4 types the pipeline treats specially.
pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_DEST_UNREACHABLE: u8 = 3;
pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
pub const ICMP_PARAMETER_PROBLEM: u8 = 12;

/// The ports of a transport header that has none (ICMP other than echo: errors
/// among them). A port filter that must let ICMP errors through holds it.
pub const NO_PORT: u16 = 0;

/// The transport header of a first (or only) fragment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct L4 {
    pub proto: u8,
    /// Offset of the transport header in the frame.
    pub off: usize,
    /// TCP/UDP ports; for ICMP echo both are the identifier; [`NO_PORT`] for other
    /// ICMP.
    pub sport: u16,
    pub dport: u16,
    /// TCP flags (0 for other protocols).
    pub tcp_flags: u8,
    /// ICMP/ICMPv6 type and code (0 for TCP/UDP).
    pub icmp_type: u8,
    pub icmp_code: u8,
}

impl L4 {
    /// A transport header of protocol `proto` at `off`, its fields not read yet.
    #[inline(always)]
    pub(crate) fn at(proto: u8, off: usize) -> L4 {
        L4 {
            proto,
            off,
            sport: NO_PORT,
            dport: NO_PORT,
            tcp_flags: 0,
            icmp_type: 0,
            icmp_code: 0,
        }
    }
}

/// An IPv4 packet at offset `l3` of the frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct V4 {
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
pub struct V6 {
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
pub enum Packet {
    Arp,
    V4(V4),
    V6(V6),
    /// Another EtherType or a VLAN-tagged frame: not pod traffic.
    Other,
}

/// Classifies `d`, keeping what the pipeline's paths need split by IP version so no
/// path matches on `IpAddr` again. Untagged IPv4, nearly all the traffic, takes a
/// specialised parser that builds [`V4`] directly (it saves a third of the cost of
/// a decapsulation, which parses two headers); everything else goes through the
/// one-pass [`PacketInfo::parse`]. Both give the same answer: a unit test compares
/// them on random and mutated frames.
/// A bad IPv4 header checksum is a `MalformedIpv4` drop here: a router must not
/// forward such a packet (RFC 1812 5.2.2), and NAT must not launder it.
#[inline(always)]
pub fn classify(d: &[u8]) -> Result<Packet, DropReason> {
    if rd16(d, 12) == Some(ethertype::IPV4) {
        return parse_v4(d, ETHERNET_HEADER_LEN).map(Packet::V4);
    }
    classify_with_packet_info(d)
}

/// [`classify`] for everything but untagged IPv4: through [`PacketInfo::parse`].
#[inline(always)]
pub fn classify_with_packet_info(d: &[u8]) -> Result<Packet, DropReason> {
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

#[inline(always)]
fn l4_of(info: &PacketInfo) -> Option<L4> {
    let v6 = info.l3 == L3::Ipv6;
    let mut l4 = L4::at(info.protocol, info.l4_offset());
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

/// The IPv4 header at `l3` (checksum verified) and the transport header of a first
/// fragment, with the same checks as [`PacketInfo::parse`].
#[inline(always)]
fn parse_v4(d: &[u8], l3: usize) -> Result<V4, DropReason> {
    use DropReason::MalformedIpv4;
    let fixed: &[u8; 20] = d
        .get(l3..l3 + 20)
        .and_then(|h| h.try_into().ok())
        .ok_or(MalformedIpv4)?;
    let ihl = usize::from(fixed[0] & 0x0f) * 4;
    let total_len = usize::from(u16::from_be_bytes([fixed[2], fixed[3]]));
    if fixed[0] >> 4 != 4 || ihl < 20 || total_len < ihl {
        return Err(MalformedIpv4);
    }
    let header = d.get(l3..l3 + ihl).ok_or(MalformedIpv4)?;
    if l3 + total_len > d.len() {
        return Err(MalformedIpv4);
    }
    let checksum_ok = if ihl == 20 {
        header_sum(fixed) == 0xffff
    } else {
        checksum::sum(header) == 0xffff
    };
    let frag = u16::from_be_bytes([fixed[6], fixed[7]]);
    let proto = fixed[9];
    let mut ip = V4 {
        l3,
        ihl,
        total_len,
        tos: fixed[1],
        ttl: fixed[8],
        proto,
        src: Ipv4Addr::new(fixed[12], fixed[13], fixed[14], fixed[15]),
        dst: Ipv4Addr::new(fixed[16], fixed[17], fixed[18], fixed[19]),
        df: frag & 0x4000 != 0,
        frag_offset: frag & 0x1fff,
        more_fragments: frag & 0x2000 != 0,
        l4: None,
    };
    if ip.frag_offset == 0 {
        let seg = d.get(l3 + ihl..l3 + total_len).ok_or(MalformedIpv4)?;
        ip.l4 = parse_l4_v4(seg, l3 + ihl, proto, ip.more_fragments)?;
    }
    // Checked last so that errors rank as in `PacketInfo::parse` + `classify`.
    if !checksum_ok {
        return Err(MalformedIpv4);
    }
    Ok(ip)
}

/// Sum of an option-less IPv4 header: ten words, unrolled by the compiler.
#[inline(always)]
fn header_sum(h: &[u8; 20]) -> u16 {
    let mut acc = 0u32;
    for pair in h.chunks_exact(2) {
        if let [a, b] = *pair {
            acc += u32::from(u16::from_be_bytes([a, b]));
        }
    }
    checksum::fold(acc)
}

/// TCP, UDP or ICMP header at the start of `seg` (frame offset `off`).
#[inline(always)]
fn parse_l4_v4(
    seg: &[u8],
    off: usize,
    proto: u8,
    fragmented: bool,
) -> Result<Option<L4>, DropReason> {
    use DropReason::MalformedTransport;
    let mut l4 = L4::at(proto, off);
    match proto {
        ip_proto::TCP => {
            let h: &[u8; 20] = seg
                .get(..20)
                .and_then(|h| h.try_into().ok())
                .ok_or(MalformedTransport)?;
            let hl = usize::from(h[12] >> 4) * 4;
            if hl < 20 || hl > seg.len() {
                return Err(MalformedTransport);
            }
            l4.sport = u16::from_be_bytes([h[0], h[1]]);
            l4.dport = u16::from_be_bytes([h[2], h[3]]);
            l4.tcp_flags = h[13];
        }
        ip_proto::UDP => {
            let h: &[u8; 8] = seg
                .get(..8)
                .and_then(|h| h.try_into().ok())
                .ok_or(MalformedTransport)?;
            let len = usize::from(u16::from_be_bytes([h[4], h[5]]));
            // A first fragment carries only part of the datagram.
            if len < 8 || (!fragmented && len > seg.len()) {
                return Err(MalformedTransport);
            }
            l4.sport = u16::from_be_bytes([h[0], h[1]]);
            l4.dport = u16::from_be_bytes([h[2], h[3]]);
        }
        ip_proto::ICMP => {
            let h: &[u8; 8] = seg
                .get(..8)
                .and_then(|h| h.try_into().ok())
                .ok_or(MalformedTransport)?;
            l4.icmp_type = h[0];
            if matches!(h[0], ICMP_ECHO_REQUEST | ICMP_ECHO_REPLY) {
                // Echo is identified by its identifier; the code is not kept.
                l4.sport = u16::from_be_bytes([h[4], h[5]]);
                l4.dport = l4.sport;
            } else {
                l4.icmp_code = h[1];
            }
        }
        _ => return Ok(None),
    }
    Ok(Some(l4))
}

/// A flow hash of the 5-tuple (addresses folded to 64 bits), stable across runs so
/// that one flow always takes the same outer UDP source port and thus the same ECMP
/// path and receive queue.
#[inline]
pub fn flow_hash(addrs: u64, proto: u8, sport: u16, dport: u16) -> u32 {
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

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Ethernet + IPv4 + UDP, valid, for mutation.
    fn frame() -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 20 + 6];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14..34].copy_from_slice(&[
            0x45, 0, 0, 46, 0, 1, 0x40, 0, 64, 17, 0, 0, 198, 19, 1, 10, 198, 18, 100, 7,
        ]);
        let c = checksum::checksum(&f[14..34]);
        f[24..26].copy_from_slice(&c.to_be_bytes());
        // UDP length 26; read as TCP the data offset byte (46) is 0x50: 20 bytes.
        f[34..42].copy_from_slice(&[0x13, 0x88, 0, 53, 0, 26, 0, 0]);
        f[46] = 0x50;
        f
    }

    fn fix(f: &mut [u8]) {
        if f.len() >= 34 {
            let ihl = (usize::from(f[14] & 0x0f) * 4).clamp(20, 60);
            if f.len() >= 14 + ihl {
                f[24] = 0;
                f[25] = 0;
                let c = checksum::checksum(&f[14..14 + ihl]);
                f[24..26].copy_from_slice(&c.to_be_bytes());
            }
        }
    }

    /// The fast IPv4 parser and the general classifier agree on every frame.
    #[test]
    fn fast_ipv4_path_agrees_with_packet_info() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let base = frame();
        for round in 0..200_000 {
            let mut f = base.clone();
            // UDP, TCP and ICMP (echo request) in turn.
            f[23] = [17, 6, 1][round % 3];
            if round % 3 == 2 {
                f[34] = 8;
            }
            fix(&mut f);
            // Mutate a few bytes of the IP/transport headers, sometimes fix the checksum,
            // sometimes change the length.
            for _ in 0..(next() % 4 + 1) {
                let at = 14 + (next() as usize % (f.len() - 14));
                f[at] = next() as u8;
            }
            if next() % 3 == 0 {
                let len = next() as usize % 64 + 14;
                f.resize(len, 0);
            }
            if next() % 2 == 0 {
                fix(&mut f);
            }
            f[12..14].copy_from_slice(&[0x08, 0x00]);
            let fast = classify(&f);
            let general = classify_with_packet_info(&f);
            assert_eq!(fast, general, "round {round}: {f:02x?}");
        }
    }
}
