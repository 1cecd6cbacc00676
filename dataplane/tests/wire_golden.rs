//! Golden bytes for every view: parse a fixed byte array into its Repr, emit the Repr
//! into a buffer filled with 0xa5 and get the same bytes back (smoltcp's `udp.rs`
//! test style). Checksums in the arrays were computed independently (by hand/Python).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hybridway_dataplane::wire::checksum;
use hybridway_dataplane::wire::classify::{Packet, classify};
use hybridway_dataplane::wire::icmp_quote::{is_translatable_error, quoted};
use hybridway_dataplane::wire::ipv6_ext;
use hybridway_dataplane::wire::{L3, PacketInfo, Transport, VxlanPacket, VxlanRepr};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, Icmpv4Packet, Icmpv4Repr, Icmpv6Packet, Icmpv6Repr, IpProtocol, Ipv4Packet,
    Ipv4Repr, Ipv6Packet, Ipv6Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber, UdpPacket,
    UdpRepr,
};

const SRC4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const DST4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const SRC6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
const DST6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

#[rustfmt::skip]
const ETHERNET: [u8; 18] = [
    0x02, 0, 0, 0, 0, 0x02,  0x02, 0, 0, 0, 0, 0x01,  0x08, 0x00,
    0xaa, 0xbb, 0xcc, 0xdd,
];

#[rustfmt::skip]
const VLAN_TAG: [u8; 8] = [
    0xa0, 0x64, // PCP 5, DEI 0, VID 100
    0x08, 0x00, // inner EtherType IPv4
    0xaa, 0xbb, 0xcc, 0xdd,
];

#[rustfmt::skip]
const ARP_REQUEST: [u8; 28] = [
    0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01,
    0x02, 0, 0, 0, 0, 0x01,  198, 18, 0, 1,
    0, 0, 0, 0, 0, 0,        198, 18, 0, 2,
];

/// IPv4 (DF, TTL 64, id 0) + UDP 1234 → 8472 + 4 payload bytes.
#[rustfmt::skip]
const IPV4_UDP: [u8; 32] = [
    0x45, 0x00, 0x00, 0x20, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xae, 0xa5,
    0xc6, 0x12, 0x00, 0x01, 0xc6, 0x12, 0x00, 0x02,
    0x04, 0xd2, 0x21, 0x18, 0x00, 0x0c, 0xb0, 0x26, 0xde, 0xad, 0xbe, 0xef,
];

/// TCP SYN 40000 → 80, seq 0x01020304, window 64240, MSS 1460 (checksum for SRC4→DST4).
#[rustfmt::skip]
const TCP_SYN: [u8; 24] = [
    0x9c, 0x40, 0x00, 0x50, 0x01, 0x02, 0x03, 0x04, 0x00, 0x00, 0x00, 0x00,
    0x60, 0x02, 0xfa, 0xf0, 0x70, 0x77, 0x00, 0x00, 0x02, 0x04, 0x05, 0xb4,
];

#[rustfmt::skip]
const ICMPV4_ECHO: [u8; 12] = [0x08, 0x00, 0x21, 0x04, 0x12, 0x34, 0x00, 0x01, b'a', b'b', b'c', b'd'];

#[rustfmt::skip]
const ICMPV6_ECHO: [u8; 12] = [0x80, 0x00, 0x4d, 0x48, 0x12, 0x34, 0x00, 0x01, b'a', b'b', b'c', b'd'];

#[rustfmt::skip]
const IPV6_HEADER: [u8; 40] = [
    0x60, 0x00, 0x00, 0x00, 0x00, 0x0c, 0x3a, 0x40,
    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01,
    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02,
];

#[rustfmt::skip]
const VXLAN: [u8; 12] = [0x08, 0, 0, 0, 0x00, 0x00, 0x01, 0, 0xaa, 0xbb, 0xcc, 0xdd];

fn caps() -> ChecksumCapabilities {
    ChecksumCapabilities::default()
}

#[test]
fn ethernet_round_trip() {
    let frame = EthernetFrame::new_checked(&ETHERNET[..]).unwrap();
    let repr = EthernetRepr::parse(&frame).unwrap();
    assert_eq!(
        repr,
        EthernetRepr {
            src_addr: EthernetAddress(MAC_A),
            dst_addr: EthernetAddress(MAC_B),
            ethertype: EthernetProtocol::Ipv4
        }
    );
    assert_eq!(frame.payload(), &ETHERNET[14..]);
    let mut buf = [0xa5u8; 18];
    let mut out = EthernetFrame::new_unchecked(&mut buf[..]);
    repr.emit(&mut out);
    out.payload_mut().copy_from_slice(&ETHERNET[14..]);
    assert_eq!(buf, ETHERNET);
    assert!(EthernetFrame::new_checked(&ETHERNET[..13]).is_err());
}

#[test]
fn arp_round_trip() {
    let packet = ArpPacket::new_checked(&ARP_REQUEST[..]).unwrap();
    let repr = ArpRepr::parse(&packet).unwrap();
    assert_eq!(
        repr,
        ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Request,
            source_hardware_addr: EthernetAddress(MAC_A),
            source_protocol_addr: SRC4,
            target_hardware_addr: EthernetAddress([0; 6]),
            target_protocol_addr: DST4,
        }
    );
    let mut buf = [0xa5u8; 28];
    repr.emit(&mut ArpPacket::new_unchecked(&mut buf[..]));
    assert_eq!(buf, ARP_REQUEST);
    assert!(ArpPacket::new_checked(&ARP_REQUEST[..27]).is_err());
}

#[test]
fn ipv4_udp_round_trip() {
    let ip = Ipv4Packet::new_checked(&IPV4_UDP[..]).unwrap();
    let ip_repr = Ipv4Repr::parse(&ip, &caps()).unwrap();
    assert_eq!(
        ip_repr,
        Ipv4Repr {
            src_addr: SRC4,
            dst_addr: DST4,
            next_header: IpProtocol::Udp,
            payload_len: 12,
            hop_limit: 64
        }
    );
    let udp = UdpPacket::new_checked(ip.payload()).unwrap();
    let udp_repr = UdpRepr::parse(&udp, &SRC4.into(), &DST4.into(), &caps()).unwrap();
    assert_eq!(
        udp_repr,
        UdpRepr {
            src_port: 1234,
            dst_port: 8472
        }
    );
    assert_eq!(udp.payload(), &[0xde, 0xad, 0xbe, 0xef]);

    let mut buf = [0xa5u8; 32];
    let mut out = Ipv4Packet::new_unchecked(&mut buf[..]);
    ip_repr.emit(&mut out, &caps());
    udp_repr.emit(
        &mut UdpPacket::new_unchecked(out.payload_mut()),
        &SRC4.into(),
        &DST4.into(),
        4,
        |p| p.copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]),
        &caps(),
    );
    assert_eq!(buf, IPV4_UDP);
    // Truncations and a bad header checksum are errors, never panics.
    for n in 0..IPV4_UDP.len() {
        assert!(Ipv4Packet::new_checked(&IPV4_UDP[..n]).is_err(), "len {n}");
    }
    let mut bad = IPV4_UDP;
    bad[11] ^= 1;
    assert!(Ipv4Repr::parse(&Ipv4Packet::new_checked(&bad[..]).unwrap(), &caps()).is_err());
}

#[test]
fn tcp_round_trip() {
    let tcp = TcpPacket::new_checked(&TCP_SYN[..]).unwrap();
    let repr = TcpRepr::parse(&tcp, &SRC4.into(), &DST4.into(), &caps()).unwrap();
    assert_eq!((repr.src_port, repr.dst_port), (40000, 80));
    assert_eq!(repr.control, TcpControl::Syn);
    assert_eq!(repr.seq_number, TcpSeqNumber(0x01020304));
    assert_eq!(
        (repr.ack_number, repr.window_len, repr.max_seg_size),
        (None, 64240, Some(1460))
    );
    let mut buf = [0xa5u8; 24];
    repr.emit(
        &mut TcpPacket::new_unchecked(&mut buf[..]),
        &SRC4.into(),
        &DST4.into(),
        &caps(),
    );
    assert_eq!(buf, TCP_SYN);
    let mut short_offset = TCP_SYN;
    short_offset[12] = 0x40; // data offset 4 words < 5
    assert!(TcpPacket::new_checked(&short_offset[..]).is_err());
    let mut long_offset = TCP_SYN;
    long_offset[12] = 0xf0; // 60 bytes > 24
    assert!(TcpPacket::new_checked(&long_offset[..]).is_err());
}

#[test]
fn icmpv4_echo_round_trip() {
    let icmp = Icmpv4Packet::new_checked(&ICMPV4_ECHO[..]).unwrap();
    let repr = Icmpv4Repr::parse(&icmp, &caps()).unwrap();
    assert_eq!(
        repr,
        Icmpv4Repr::EchoRequest {
            ident: 0x1234,
            seq_no: 1,
            data: b"abcd"
        }
    );
    let mut buf = [0xa5u8; 12];
    repr.emit(&mut Icmpv4Packet::new_unchecked(&mut buf[..]), &caps());
    assert_eq!(buf, ICMPV4_ECHO);
}

#[test]
fn ipv6_icmpv6_round_trip() {
    let mut packet = IPV6_HEADER.to_vec();
    packet.extend_from_slice(&ICMPV6_ECHO);
    let ip = Ipv6Packet::new_checked(&packet[..]).unwrap();
    let ip_repr = Ipv6Repr::parse(&ip).unwrap();
    assert_eq!(
        ip_repr,
        Ipv6Repr {
            src_addr: SRC6,
            dst_addr: DST6,
            next_header: IpProtocol::Icmpv6,
            payload_len: 12,
            hop_limit: 64
        }
    );
    let icmp = Icmpv6Packet::new_checked(ip.payload()).unwrap();
    let repr = Icmpv6Repr::parse(&SRC6, &DST6, &icmp, &caps()).unwrap();
    assert_eq!(
        repr,
        Icmpv6Repr::EchoRequest {
            ident: 0x1234,
            seq_no: 1,
            data: b"abcd"
        }
    );

    let mut buf = vec![0xa5u8; packet.len()];
    let mut out = Ipv6Packet::new_unchecked(&mut buf[..]);
    ip_repr.emit(&mut out);
    repr.emit(
        &SRC6,
        &DST6,
        &mut Icmpv6Packet::new_unchecked(out.payload_mut()),
        &caps(),
    );
    assert_eq!(buf, packet);
    for n in 0..packet.len() {
        assert!(Ipv6Packet::new_checked(&packet[..n]).is_err(), "len {n}");
    }
}

#[test]
fn vxlan_round_trip() {
    let vx = VxlanPacket::new_checked(&VXLAN[..]).unwrap();
    let repr = VxlanRepr::parse(&vx).unwrap();
    assert_eq!(repr, VxlanRepr { vni: 1 });
    assert_eq!(repr.to_bytes(), VXLAN[..8]);
    // VNIs wider than 24 bits are masked, never spill into the reserved byte.
    assert_eq!(
        VxlanRepr { vni: 0x1ff_ffff }.to_bytes(),
        [0x08, 0, 0, 0, 0xff, 0xff, 0xff, 0]
    );
}

/// A whole frame: Ethernet + 802.1Q + IPv4 + UDP, classified in one pass.
#[test]
fn packet_info_on_a_tagged_frame() {
    let mut frame = ETHERNET[..12].to_vec();
    frame.extend_from_slice(&[0x81, 0x00]);
    frame.extend_from_slice(&VLAN_TAG[..4]);
    frame.extend_from_slice(&IPV4_UDP);
    frame.extend_from_slice(&[0; 6]); // Ethernet padding after the IP packet
    let info = PacketInfo::parse(&frame).unwrap();
    assert_eq!(info.vlan_tci, Some(0xa064));
    assert_eq!(info.ethertype, 0x0800);
    assert_eq!(
        (
            info.l3_offset(),
            info.l4_offset(),
            info.payload_offset(),
            info.l3_end()
        ),
        (18, 38, 46, 50)
    );
    assert_eq!(
        (info.src_ip, info.dst_ip),
        (IpAddr::V4(SRC4), IpAddr::V4(DST4))
    );
    assert_eq!(
        info.transport,
        Transport::Udp {
            src_port: 1234,
            dst_port: 8472
        }
    );
    assert!(info.ipv4_checksum_ok && info.dont_fragment && info.is_vxlan());
    assert_eq!(info.l3, L3::Ipv4);
}

/// An ICMP time-exceeded quoting only header + 8 bytes of a 1000-byte UDP datagram:
/// smoltcp's Icmpv4Repr refuses it (quoted total length > quote); the pipeline's quote
/// reader, which un-NATs such errors, reads it.
#[test]
fn icmp_error_quote_of_a_truncated_packet() {
    let mut quote = IPV4_UDP[..28].to_vec();
    quote[2..4].copy_from_slice(&1000u16.to_be_bytes());
    let mut icmp = vec![11, 0, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&quote);
    let mut p = Icmpv4Packet::new_unchecked(&mut icmp[..]);
    p.fill_checksum();
    assert!(Icmpv4Repr::parse(&Icmpv4Packet::new_checked(&icmp[..]).unwrap(), &caps()).is_err());
    // The error as a frame: Ethernet, IPv4 (router → SRC4), ICMP, the quote.
    let error = |icmp: &[u8]| {
        let mut f = vec![0u8; 14 + 20];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[16..18].copy_from_slice(&((20 + icmp.len()) as u16).to_be_bytes());
        f[22] = 64;
        f[23] = 1;
        f[26..30].copy_from_slice(&[198, 18, 0, 254]);
        f[30..34].copy_from_slice(&SRC4.octets());
        let c = checksum::checksum(&f[14..34]);
        f[24..26].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(icmp);
        f
    };
    let frame = error(&icmp);
    let Ok(Packet::V4(outer)) = classify(&frame) else {
        panic!("not IPv4")
    };
    let l4 = outer.l4.unwrap();
    assert!(is_translatable_error(l4.icmp_type));
    let (q, dst) = quoted(&frame, &outer, &l4).unwrap();
    assert_eq!((q.l3, q.src, dst), (14 + 20 + 8, SRC4, DST4));
    assert_eq!(
        (q.l4.proto, q.l4.off, q.l4.sport, q.l4.dport),
        (17, 14 + 20 + 8 + 20, 1234, 8472)
    );
    // Less than the IP header and 8 transport bytes quoted: nothing to translate.
    for n in 0..28 {
        let frame = error(&icmp[..8 + n]);
        let Ok(Packet::V4(outer)) = classify(&frame) else {
            panic!("not IPv4")
        };
        assert!(
            quoted(&frame, &outer, &outer.l4.unwrap()).is_none(),
            "len {n}"
        );
    }
}

#[test]
fn ipv6_extension_walk_golden() {
    #[rustfmt::skip]
    let exts = [
        60, 0, 1, 4, 0, 0, 0, 0,        // hop-by-hop → destination options
        6, 0, 1, 4, 0, 0, 0, 0,         // destination options → TCP
    ];
    let mut packet = IPV6_HEADER.to_vec();
    packet[4..6].copy_from_slice(&((exts.len() + TCP_SYN.len()) as u16).to_be_bytes());
    packet[6] = 0;
    packet.extend_from_slice(&exts);
    packet.extend_from_slice(&TCP_SYN);
    let w = ipv6_ext::walk(&packet, 0).unwrap();
    assert_eq!(
        (w.protocol, w.offset, w.ext_count, w.stopped),
        (6, 56, 2, false)
    );
    let mut frame = ETHERNET[..12].to_vec();
    frame.extend_from_slice(&[0x86, 0xdd]);
    frame.extend_from_slice(&packet);
    let info = PacketInfo::parse(&frame).unwrap();
    assert_eq!(
        (info.protocol, info.l4_offset(), info.payload_offset()),
        (6, 14 + 56, 14 + 56 + 24)
    );
    assert!(
        matches!(info.transport, Transport::Tcp { src_port: 40000, dst_port: 80, flags } if flags.syn())
    );
}
