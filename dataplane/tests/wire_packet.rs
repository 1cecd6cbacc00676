//! `PacketInfo::parse`: what it records for each kind of frame, and that truncated or
//! garbage input is an error (the right one), never a panic or an out-of-range offset.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::net::{IpAddr, Ipv4Addr};

use hybridway_dataplane::DropReason;
use hybridway_dataplane::wire::checksum;
use hybridway_dataplane::wire::classify::{Packet, classify};
use hybridway_dataplane::wire::icmp_quote::quoted;
use hybridway_dataplane::wire::{Fragment, L3, PacketInfo, ParseError, Transport};
use proptest::prelude::*;

const ETH_V4: [u8; 14] = [2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
const ETH_V6: [u8; 14] = [2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x86, 0xdd];
const ETH_ARP: [u8; 14] = [
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2, 0, 0, 0, 0, 1, 0x08, 0x06,
];

/// The destination address of a frame, as the general classifier reads it.
fn info_dst(f: &[u8]) -> IpAddr {
    PacketInfo::parse(f).unwrap().dst_ip
}

/// Ethernet + IPv4 header (valid checksum) + `l4`.
fn ipv4(proto: u8, flags_frag: u16, l4: &[u8]) -> Vec<u8> {
    let mut f = ETH_V4.to_vec();
    let total = (20 + l4.len()) as u16;
    let mut h = vec![
        0x45, 0, 0, 0, 0xab, 0xcd, 0, 0, 17, proto, 0, 0, 198, 18, 0, 1, 198, 19, 2, 5,
    ];
    h[2..4].copy_from_slice(&total.to_be_bytes());
    h[6..8].copy_from_slice(&flags_frag.to_be_bytes());
    let c = checksum::checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&h);
    f.extend_from_slice(l4);
    f
}

fn ipv6(next: u8, body: &[u8]) -> Vec<u8> {
    let mut f = ETH_V6.to_vec();
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(body.len() as u16).to_be_bytes());
    f.extend_from_slice(&[next, 3]);
    f.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    f.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    f.extend_from_slice(body);
    f
}

const UDP: [u8; 12] = [0x30, 0x39, 0x00, 0x35, 0x00, 0x0c, 0, 0, 1, 2, 3, 4];
#[rustfmt::skip]
const TCP_SYN_ACK: [u8; 20] = [0x00, 0x50, 0x9c, 0x40, 0, 0, 0, 1, 0, 0, 0, 2, 0x50, 0x12, 0xff, 0xff, 0, 0, 0, 0];

#[test]
fn arp_records_sender_and_target() {
    let mut f = ETH_ARP.to_vec();
    f.extend_from_slice(&[
        0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 1, 198, 19, 1, 5, 0, 0, 0, 0, 0, 0, 198, 19, 1, 1,
    ]);
    let info = PacketInfo::parse(&f).unwrap();
    assert_eq!(info.l3, L3::Arp);
    assert_eq!(info.transport, Transport::Arp { operation: 1 });
    assert_eq!(info.src_ip, IpAddr::V4(Ipv4Addr::new(198, 19, 1, 5)));
    assert_eq!(info.dst_ip, IpAddr::V4(Ipv4Addr::new(198, 19, 1, 1)));
    assert_eq!(info.l3_end(), 42);
    // Not Ethernet/IPv4 ARP (hardware length 8).
    let mut bad = f.clone();
    bad[18] = 8;
    assert_eq!(PacketInfo::parse(&bad), Err(ParseError::MalformedArp));
    assert_eq!(PacketInfo::parse(&f[..41]), Err(ParseError::MalformedArp));
}

#[test]
fn tcp_flags_ports_and_ttl() {
    let f = ipv4(6, 0x4000, &TCP_SYN_ACK);
    let info = PacketInfo::parse(&f).unwrap();
    let Transport::Tcp {
        src_port: 80,
        dst_port: 40000,
        flags,
    } = info.transport
    else {
        panic!("{:?}", info.transport)
    };
    assert!(flags.syn() && flags.ack() && !flags.fin() && !flags.rst());
    assert_eq!((info.ttl, info.protocol, info.dont_fragment), (17, 6, true));
    assert_eq!(info.flow_ports(), Some((80, 40000)));
    assert_eq!((info.l4_offset(), info.payload_offset()), (34, 54));
    // A data offset past the segment is a transport error.
    let mut bad = TCP_SYN_ACK;
    bad[12] = 0x60;
    assert_eq!(
        PacketInfo::parse(&ipv4(6, 0, &bad)),
        Err(ParseError::MalformedTransport)
    );
    bad[12] = 0x40;
    assert_eq!(
        PacketInfo::parse(&ipv4(6, 0, &bad)),
        Err(ParseError::MalformedTransport)
    );
}

#[test]
fn udp_length_is_checked() {
    let info = PacketInfo::parse(&ipv4(17, 0, &UDP)).unwrap();
    assert_eq!(
        info.transport,
        Transport::Udp {
            src_port: 12345,
            dst_port: 53
        }
    );
    assert_eq!(info.payload_offset(), 42);
    let mut long = UDP;
    long[5] = 13;
    assert_eq!(
        PacketInfo::parse(&ipv4(17, 0, &long)),
        Err(ParseError::MalformedTransport)
    );
    let mut short = UDP;
    short[5] = 7;
    assert_eq!(
        PacketInfo::parse(&ipv4(17, 0, &short)),
        Err(ParseError::MalformedTransport)
    );
}

#[test]
fn ipv4_fragments_are_recognised() {
    // First fragment (MF, offset 0): the transport header is there and read.
    let first = PacketInfo::parse(&ipv4(17, 0x2000, &UDP)).unwrap();
    assert_eq!(
        first.fragment,
        Some(Fragment {
            offset: 0,
            more: true,
            id: 0xabcd
        })
    );
    assert!(first.fragment.unwrap().is_first());
    assert_eq!(
        first.transport,
        Transport::Udp {
            src_port: 12345,
            dst_port: 53
        }
    );
    // A first fragment's UDP length covers the whole datagram, beyond this packet.
    let mut long = UDP;
    long[5] = 200;
    assert!(PacketInfo::parse(&ipv4(17, 0x2000, &long)).is_ok());
    // Non-first (offset 185*8 = 1480): no transport header, not even a port guess.
    let later = PacketInfo::parse(&ipv4(17, 185, &UDP)).unwrap();
    assert_eq!(
        later.fragment,
        Some(Fragment {
            offset: 1480,
            more: false,
            id: 0xabcd
        })
    );
    assert_eq!(later.transport, Transport::Fragment);
    assert_eq!(later.flow_ports(), None);
    assert_eq!(later.payload_offset(), later.l4_offset());
    // Not a fragment at all.
    assert_eq!(
        PacketInfo::parse(&ipv4(17, 0x4000, &UDP)).unwrap().fragment,
        None
    );
}

#[test]
fn ipv4_header_errors() {
    let good = ipv4(17, 0, &UDP);
    let mut v = good.clone();
    v[14] = 0x55; // version 5
    assert_eq!(PacketInfo::parse(&v), Err(ParseError::MalformedIpv4));
    let mut ihl = good.clone();
    ihl[14] = 0x44; // IHL 16 bytes
    assert_eq!(PacketInfo::parse(&ihl), Err(ParseError::MalformedIpv4));
    let mut total = good.clone();
    total[17] = 0xff; // total length past the frame
    assert_eq!(PacketInfo::parse(&total), Err(ParseError::MalformedIpv4));
    let mut under = good.clone();
    under[17] = 19; // total length < header
    assert_eq!(PacketInfo::parse(&under), Err(ParseError::MalformedIpv4));
    let mut sum = good;
    sum[24] ^= 0xff;
    assert!(!PacketInfo::parse(&sum).unwrap().ipv4_checksum_ok);
}

#[test]
fn icmp_echo_and_error_with_quote() {
    let echo = PacketInfo::parse(&ipv4(1, 0, &[0, 0, 0, 0, 0x12, 0x34, 0, 7])).unwrap();
    assert_eq!(
        echo.transport,
        Transport::IcmpEcho {
            request: false,
            id: 0x1234,
            seq: 7
        }
    );
    assert_eq!(echo.flow_ports(), Some((0x1234, 0x1234)));

    // Fragmentation needed (3/4) quoting an IPv4/UDP header + 8 bytes.
    let inner = ipv4(17, 0x4000, &UDP);
    let mut icmp = vec![3, 4, 0, 0, 0, 0, 0x05, 0x78];
    icmp.extend_from_slice(&inner[14..14 + 28]);
    let f = ipv4(1, 0, &icmp);
    let info = PacketInfo::parse(&f).unwrap();
    assert_eq!(
        info.transport,
        Transport::IcmpError {
            icmp_type: 3,
            code: 4
        }
    );
    assert_eq!(info.payload_offset(), 42);
    let Ok(Packet::V4(outer)) = classify(&f) else {
        panic!("not IPv4")
    };
    let (q, dst) = quoted(&f, &outer, &outer.l4.unwrap()).unwrap();
    assert_eq!(q.src, Ipv4Addr::new(198, 18, 0, 1));
    assert_eq!((q.l4.proto, q.l4.sport, q.l4.dport), (17, 12345, 53));
    assert_eq!(IpAddr::V4(dst), info_dst(&inner));
    // ICMP header itself truncated.
    assert_eq!(
        PacketInfo::parse(&ipv4(1, 0, &[8, 0, 0, 0, 0])),
        Err(ParseError::MalformedTransport)
    );
}

#[test]
fn ipv6_transport_fragments_and_errors() {
    let info = PacketInfo::parse(&ipv6(17, &UDP)).unwrap();
    assert_eq!(info.l3, L3::Ipv6);
    assert_eq!(
        (info.ttl, info.l4_offset(), info.payload_offset()),
        (3, 54, 62)
    );
    assert_eq!(
        info.transport,
        Transport::Udp {
            src_port: 12345,
            dst_port: 53
        }
    );

    // Fragment header (non-first) then UDP: recognised, no transport.
    let mut body = vec![17, 0, 0x05, 0xc8, 0, 0, 0, 9];
    body.extend_from_slice(&UDP);
    let frag = PacketInfo::parse(&ipv6(44, &body)).unwrap();
    assert_eq!(
        frag.fragment,
        Some(Fragment {
            offset: 1480,
            more: false,
            id: 9
        })
    );
    assert_eq!((frag.transport, frag.protocol), (Transport::Fragment, 17));

    // ESP: stop, the rest is opaque.
    let esp = PacketInfo::parse(&ipv6(50, &[0; 16])).unwrap();
    assert_eq!(
        (esp.transport, esp.protocol, esp.l4_offset()),
        (Transport::Other, 50, 54)
    );

    // ICMPv6 packet too big (type 2) and echo request (128).
    let ptb = PacketInfo::parse(&ipv6(58, &[2, 0, 0, 0, 0, 0, 5, 0xdc])).unwrap();
    assert_eq!(
        ptb.transport,
        Transport::IcmpError {
            icmp_type: 2,
            code: 0
        }
    );
    let echo = PacketInfo::parse(&ipv6(58, &[128, 0, 0, 0, 0, 1, 0, 2])).unwrap();
    assert_eq!(
        echo.transport,
        Transport::IcmpEcho {
            request: true,
            id: 1,
            seq: 2
        }
    );

    // An extension header that claims more than the packet holds.
    assert_eq!(
        PacketInfo::parse(&ipv6(60, &[17, 4, 0, 0, 0, 0, 0, 0])),
        Err(ParseError::MalformedIpv6)
    );
    // Payload length beyond the frame.
    let mut long = ipv6(17, &UDP);
    long[19] = 0xff;
    assert_eq!(PacketInfo::parse(&long), Err(ParseError::MalformedIpv6));
    let mut v = ipv6(17, &UDP);
    v[14] = 0x40;
    assert_eq!(PacketInfo::parse(&v), Err(ParseError::MalformedIpv6));
}

#[test]
fn ethernet_level_errors_map_to_drop_reasons() {
    assert_eq!(PacketInfo::parse(&[]), Err(ParseError::MalformedEthernet));
    let mut vlan = ETH_V4.to_vec();
    vlan[12..14].copy_from_slice(&[0x81, 0x00]);
    vlan.extend_from_slice(&[0, 1, 8]);
    assert_eq!(PacketInfo::parse(&vlan), Err(ParseError::MalformedEthernet));
    let mut lldp = ETH_V4.to_vec();
    lldp[12..14].copy_from_slice(&[0x88, 0xcc]);
    assert_eq!(
        PacketInfo::parse(&lldp),
        Err(ParseError::UnsupportedEtherType)
    );
    let pairs = [
        (ParseError::MalformedEthernet, DropReason::MalformedEthernet),
        (
            ParseError::UnsupportedEtherType,
            DropReason::UnsupportedEtherType,
        ),
        (ParseError::MalformedArp, DropReason::MalformedArp),
        (ParseError::MalformedIpv4, DropReason::MalformedIpv4),
        (ParseError::MalformedIpv6, DropReason::MalformedIpv6),
        (
            ParseError::MalformedTransport,
            DropReason::MalformedTransport,
        ),
    ];
    for (e, r) in pairs {
        assert_eq!(DropReason::from(e), r);
        assert_eq!(e.to_string(), r.label());
    }
}

/// Whatever `parse` accepts, its offsets are ordered and inside the frame.
fn check_offsets(frame: &[u8], info: &PacketInfo) {
    assert!(info.l3_offset() <= info.l4_offset(), "{info:?}");
    assert!(info.l4_offset() <= info.payload_offset(), "{info:?}");
    assert!(info.payload_offset() <= info.l3_end(), "{info:?}");
    assert!(info.l3_end() <= frame.len(), "{info:?}");
}

fn valid_frames() -> Vec<Vec<u8>> {
    let mut icmp_err = vec![11, 0, 0, 0, 0, 0, 0, 0];
    icmp_err.extend_from_slice(&ipv4(6, 0, &TCP_SYN_ACK)[14..42]);
    vec![
        ipv4(17, 0, &UDP),
        ipv4(6, 0x4000, &TCP_SYN_ACK),
        ipv4(1, 0, &[8, 0, 0, 0, 0, 1, 0, 1]),
        ipv4(1, 0, &icmp_err),
        ipv6(17, &UDP),
        ipv6(
            0,
            &[
                6, 0, 1, 4, 0, 0, 0, 0, 0, 80, 0, 80, 0, 0, 0, 0, 0, 0, 0, 0, 0x50, 2, 0, 0, 0, 0,
                0, 0,
            ],
        ),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(5000))]

    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        if let Ok(info) = PacketInfo::parse(&bytes) {
            check_offsets(&bytes, &info);
        }
    }

    #[test]
    fn mutated_frames_never_panic(
        which in 0usize..6,
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut f = valid_frames().swap_remove(which);
        prop_assert!(PacketInfo::parse(&f).is_ok());
        for (i, v) in flips {
            let i = i.index(f.len());
            f[i] = v;
        }
        let n = cut.index(f.len() + 1);
        for frame in [&f[..], &f[..n]] {
            if let Ok(info) = PacketInfo::parse(frame) {
                check_offsets(frame, &info);
                if let Ok(Packet::V4(outer)) = classify(frame)
                    && let Some(l4) = outer.l4
                {
                    let _ = quoted(frame, &outer, &l4);
                }
            }
        }
    }

    /// Truncating a valid frame anywhere before its end is an error at the layer cut.
    #[test]
    fn truncation_is_an_error(which in 0usize..6, cut in any::<prop::sample::Index>()) {
        let f = valid_frames().swap_remove(which);
        let n = cut.index(f.len());
        let err = PacketInfo::parse(&f[..n]).unwrap_err();
        let want_l3 = if f[12] == 0x08 { ParseError::MalformedIpv4 } else { ParseError::MalformedIpv6 };
        prop_assert_eq!(err, if n < 14 { ParseError::MalformedEthernet } else { want_l3 });
    }
}
