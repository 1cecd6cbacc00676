//! Builds the frames the `pipeline` target sends: Ethernet, IPv4 (with options and
//! fragment fields), IPv6 (with extension headers), TCP, UDP, ICMP and ICMPv6 (echo,
//! neighbour solicitation, errors quoting a packet) and VXLAN, every checksum right
//! unless asked otherwise. Fuzzed bytes pick the fields (`pipeline_input`); the
//! frames must be good enough to get past the parser into the paths behind it.

use std::net::{Ipv4Addr, Ipv6Addr};

use hybridway_dataplane::wire::{MacAddr, checksum};

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERTYPE_ARP: u16 = 0x0806;
const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;
const ICMPV6: u8 = 58;

/// A transport header (and the message of ICMP).
#[derive(Clone, Debug)]
pub enum L4 {
    /// UDP; `checksum: false` sends zero ("none", IPv4 only).
    Udp {
        sport: u16,
        dport: u16,
        checksum: bool,
    },
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
        seq: u32,
        ack: u32,
        window: u16,
        /// A window scale option (SYNs carry one).
        window_scale: Option<u8>,
    },
    /// Echo request or reply (ICMP or ICMPv6 by the IP version).
    Echo { request: bool, id: u16 },
    /// ICMPv6 neighbour solicitation for `target`.
    NeighborSolicit { target: Ipv6Addr },
    /// An ICMP error of `kind`/`code` quoting `quote` (an IP packet, already cut).
    Error { kind: u8, code: u8, quote: Vec<u8> },
    /// Another protocol number with no header of ours.
    Other(u8),
}

impl Default for L4 {
    fn default() -> Self {
        L4::Udp {
            sport: 1234,
            dport: 53,
            checksum: true,
        }
    }
}

/// An IPv4 packet to build.
#[derive(Clone, Debug)]
pub struct Ip4 {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ttl: u8,
    pub tos: u8,
    pub id: u16,
    /// Flags and fragment offset as on the wire (0x4000 is DF).
    pub flags_frag: u16,
    /// Option words (NOPs) after the 20-byte header: 0 to 10.
    pub option_words: u8,
    pub l4: L4,
    pub payload: Vec<u8>,
}

impl Default for Ip4 {
    fn default() -> Self {
        Ip4 {
            src: Ipv4Addr::UNSPECIFIED,
            dst: Ipv4Addr::UNSPECIFIED,
            ttl: 64,
            tos: 0,
            id: 1,
            flags_frag: 0x4000,
            option_words: 0,
            l4: L4::default(),
            payload: Vec::new(),
        }
    }
}

/// An IPv6 extension header to put before the transport header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Ext6 {
    #[default]
    None,
    HopByHop,
    /// A fragment header with this offset (8-byte units) and M flag.
    Fragment {
        offset: u16,
        more: bool,
    },
}

/// An IPv6 packet to build.
#[derive(Clone, Debug)]
pub struct Ip6 {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub hop_limit: u8,
    pub traffic_class: u8,
    pub ext: Ext6,
    pub l4: L4,
    pub payload: Vec<u8>,
}

impl Default for Ip6 {
    fn default() -> Self {
        Ip6 {
            src: Ipv6Addr::UNSPECIFIED,
            dst: Ipv6Addr::UNSPECIFIED,
            hop_limit: 64,
            traffic_class: 0,
            ext: Ext6::None,
            l4: L4::default(),
            payload: Vec::new(),
        }
    }
}

/// The transport header and payload of `l4` with its checksum left zero, the
/// protocol number, and where the checksum goes (`None`: no checksum of ours).
fn transport(l4: &L4, v6: bool, payload: &[u8]) -> (Vec<u8>, u8, Option<usize>) {
    let mut s = Vec::with_capacity(40 + payload.len());
    let (proto, sum_at) = match l4 {
        L4::Udp {
            sport,
            dport,
            checksum,
        } => {
            s.extend_from_slice(&sport.to_be_bytes());
            s.extend_from_slice(&dport.to_be_bytes());
            let len = u16::try_from(8 + payload.len()).unwrap_or(u16::MAX);
            s.extend_from_slice(&len.to_be_bytes());
            s.extend_from_slice(&[0, 0]);
            (UDP, (*checksum || v6).then_some(6))
        }
        L4::Tcp {
            sport,
            dport,
            flags,
            seq,
            ack,
            window,
            window_scale,
        } => {
            let words = 5 + u8::from(window_scale.is_some());
            s.extend_from_slice(&sport.to_be_bytes());
            s.extend_from_slice(&dport.to_be_bytes());
            s.extend_from_slice(&seq.to_be_bytes());
            s.extend_from_slice(&ack.to_be_bytes());
            s.extend_from_slice(&[words << 4, *flags]);
            s.extend_from_slice(&window.to_be_bytes());
            s.extend_from_slice(&[0, 0, 0, 0]);
            if let Some(shift) = window_scale {
                s.extend_from_slice(&[1, 3, 3, *shift]);
            }
            (TCP, Some(16))
        }
        L4::Echo { request, id } => {
            let kind = match (v6, request) {
                (false, true) => 8,
                (false, false) => 0,
                (true, true) => 128,
                (true, false) => 129,
            };
            s.extend_from_slice(&[kind, 0, 0, 0]);
            s.extend_from_slice(&id.to_be_bytes());
            s.extend_from_slice(&[0, 1]);
            (if v6 { ICMPV6 } else { ICMP }, Some(2))
        }
        L4::NeighborSolicit { target } => {
            s.extend_from_slice(&[135, 0, 0, 0, 0, 0, 0, 0]);
            s.extend_from_slice(&target.octets());
            // Source link-layer address option.
            s.extend_from_slice(&[1, 1, 2, 0, 0, 0, 0xbb, 10]);
            (ICMPV6, Some(2))
        }
        L4::Error { kind, code, quote } => {
            s.extend_from_slice(&[*kind, *code, 0, 0, 0, 0, 0, 0]);
            s.extend_from_slice(quote);
            (if v6 { ICMPV6 } else { ICMP }, Some(2))
        }
        L4::Other(proto) => (*proto, None),
    };
    s.extend_from_slice(payload);
    (s, proto, sum_at)
}

/// The IPv4 packet `ip` (header, transport, payload), every checksum filled.
pub fn ipv4(ip: &Ip4) -> Vec<u8> {
    let (mut seg, proto, sum_at) = transport(&ip.l4, false, &ip.payload);
    if let Some(at) = sum_at {
        let c = if proto == ICMP {
            checksum::checksum(&seg)
        } else {
            checksum::transport_checksum_v4(ip.src, ip.dst, proto, &seg)
        };
        // A computed UDP checksum of zero is sent as all ones (RFC 768).
        let c = if proto == UDP && c == 0 { 0xffff } else { c };
        if let Some(b) = seg.get_mut(at..at + 2) {
            b.copy_from_slice(&c.to_be_bytes());
        }
    }
    let words = 5 + usize::from(ip.option_words.min(10));
    let total = u16::try_from(words * 4 + seg.len()).unwrap_or(u16::MAX);
    let mut h = vec![0u8; words * 4];
    h[0] = 0x40 | words as u8;
    h[1] = ip.tos;
    h[2..4].copy_from_slice(&total.to_be_bytes());
    h[4..6].copy_from_slice(&ip.id.to_be_bytes());
    h[6..8].copy_from_slice(&ip.flags_frag.to_be_bytes());
    h[8] = ip.ttl;
    h[9] = proto;
    h[12..16].copy_from_slice(&ip.src.octets());
    h[16..20].copy_from_slice(&ip.dst.octets());
    for b in &mut h[20..] {
        *b = 1;
    }
    let c = checksum::checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(&seg);
    h
}

/// The IPv6 packet `ip`, every checksum filled.
pub fn ipv6(ip: &Ip6) -> Vec<u8> {
    let (mut seg, proto, sum_at) = transport(&ip.l4, true, &ip.payload);
    if let Some(at) = sum_at {
        let c = checksum::transport_checksum_v6(ip.src, ip.dst, proto, &seg);
        if let Some(b) = seg.get_mut(at..at + 2) {
            b.copy_from_slice(&c.to_be_bytes());
        }
    }
    let (next, ext) = match ip.ext {
        Ext6::None => (proto, Vec::new()),
        // Hop-by-hop: PadN filling the 8 bytes.
        Ext6::HopByHop => (0, vec![proto, 0, 1, 4, 0, 0, 0, 0]),
        Ext6::Fragment { offset, more } => {
            let f = (offset << 3) | u16::from(more);
            let mut e = vec![proto, 0];
            e.extend_from_slice(&f.to_be_bytes());
            e.extend_from_slice(&[0, 0, 0, 9]);
            (44, e)
        }
    };
    let payload_len = u16::try_from(ext.len() + seg.len()).unwrap_or(u16::MAX);
    let mut h = vec![0u8; 40];
    h[0] = 0x60 | (ip.traffic_class >> 4);
    h[1] = ip.traffic_class << 4;
    h[4..6].copy_from_slice(&payload_len.to_be_bytes());
    h[6] = next;
    h[7] = ip.hop_limit;
    h[8..24].copy_from_slice(&ip.src.octets());
    h[24..40].copy_from_slice(&ip.dst.octets());
    h.extend_from_slice(&ext);
    h.extend_from_slice(&seg);
    h
}

/// An Ethernet frame carrying `packet` (IPv4 or IPv6, by its version nibble).
pub fn ethernet(dst: MacAddr, src: MacAddr, packet: &[u8]) -> Vec<u8> {
    let ethertype = match packet.first().map(|b| b >> 4) {
        Some(6) => ETHERTYPE_IPV6,
        _ => ETHERTYPE_IPV4,
    };
    with_ethertype(dst, src, ethertype, packet)
}

fn with_ethertype(dst: MacAddr, src: MacAddr, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst.0);
    f.extend_from_slice(&src.0);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An ARP request from `sender` for `target`, broadcast.
pub fn arp_request(sender_mac: MacAddr, sender: Ipv4Addr, target: Ipv4Addr, op: u16) -> Vec<u8> {
    let mut a = vec![0x00, 0x01, 0x08, 0x00, 6, 4];
    a.extend_from_slice(&op.to_be_bytes());
    a.extend_from_slice(&sender_mac.0);
    a.extend_from_slice(&sender.octets());
    a.extend_from_slice(&[0; 6]);
    a.extend_from_slice(&target.octets());
    with_ethertype(MacAddr([0xff; 6]), sender_mac, ETHERTYPE_ARP, &a)
}

/// The outer headers of a VXLAN frame around `inner` (an Ethernet frame).
#[derive(Clone, Debug)]
pub struct Vxlan {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub dport: u16,
    /// VXLAN flags byte (0x08: the I flag).
    pub flags: u8,
    pub vni: u32,
    /// Whether the outer UDP checksum is filled (else zero).
    pub udp_checksum: bool,
}

/// `inner` encapsulated as `v` says, in an IPv4 packet (no Ethernet header).
pub fn vxlan(v: &Vxlan, inner: &[u8]) -> Vec<u8> {
    let mut payload = vec![v.flags, 0, 0, 0];
    payload.extend_from_slice(&(v.vni << 8).to_be_bytes());
    payload.extend_from_slice(inner);
    ipv4(&Ip4 {
        src: v.src,
        dst: v.dst,
        flags_frag: 0,
        l4: L4::Udp {
            sport: 40_000,
            dport: v.dport,
            checksum: v.udp_checksum,
        },
        payload,
        ..Ip4::default()
    })
}
