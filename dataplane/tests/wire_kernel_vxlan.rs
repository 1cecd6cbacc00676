//! A VXLAN frame as the Linux kernel emits it (flannel-style device), parsed with our
//! views: the committed fixture, and a fresh capture from a live kernel in netns.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::Command;

use hybridway_dataplane::wire::checksum;
use hybridway_dataplane::wire::{
    L3, MacAddr, PacketInfo, Transport, VXLAN_OVERHEAD_V4, VXLAN_PORT, VxlanPacket, VxlanRepr,
};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, Icmpv4Packet, Icmpv4Repr,
    IpProtocol, Ipv4Packet, Ipv4Repr, UdpPacket, UdpRepr,
};

const FIXTURE: &str = include_str!("fixtures/kernel_vxlan_icmp.hex");

// The addresses written in the fixture header (and set by the capture script).
const NODE_IP_A: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const NODE_IP_B: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const UNDERLAY_MAC_A: MacAddr = MacAddr([0x02, 0, 0xc6, 0x12, 0, 0x01]);
const UNDERLAY_MAC_B: MacAddr = MacAddr([0x02, 0, 0xc6, 0x12, 0, 0x02]);
const VTEP_MAC_A: MacAddr = MacAddr([0x02, 0, 0xc6, 0x13, 0x01, 0]);
const VTEP_MAC_B: MacAddr = MacAddr([0x02, 0, 0xc6, 0x13, 0x02, 0]);
const VTEP_IP_A: Ipv4Addr = Ipv4Addr::new(198, 19, 1, 0);
const VTEP_IP_B: Ipv4Addr = Ipv4Addr::new(198, 19, 2, 0);

fn parse_hex(text: &str) -> Vec<u8> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(str::split_whitespace)
        .map(|b| u8::from_str_radix(b, 16).expect("hex byte"))
        .collect()
}

/// Every check that holds for any capture (ids, checksums, the UDP source port and
/// the echo timestamp vary between captures; their *validity* does not).
fn check_kernel_frame(frame: &[u8]) {
    // One pass over the outer headers.
    let outer = PacketInfo::parse(frame).unwrap();
    assert_eq!(outer.l3, L3::Ipv4);
    assert_eq!(
        (outer.dst_mac, outer.src_mac),
        (UNDERLAY_MAC_B, UNDERLAY_MAC_A)
    );
    assert_eq!(outer.src_ip, IpAddr::V4(NODE_IP_A));
    assert_eq!(outer.dst_ip, IpAddr::V4(NODE_IP_B));
    assert!(outer.is_vxlan(), "{:?}", outer.transport);
    assert!(outer.ipv4_checksum_ok);
    assert_eq!(outer.fragment, None);
    assert_eq!((outer.l4_offset(), outer.payload_offset()), (34, 42));
    assert_eq!(outer.l3_end(), frame.len());

    // The same through the views.
    let eth = EthernetFrame::new_checked(frame).unwrap();
    let eth_repr = EthernetRepr::parse(&eth).unwrap();
    assert_eq!(eth_repr.ethertype, EthernetProtocol::Ipv4);
    assert_eq!(eth_repr.src_addr, EthernetAddress(UNDERLAY_MAC_A.0));
    let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
    let ip_repr = Ipv4Repr::parse(&ip, &ChecksumCapabilities::default()).unwrap();
    assert_eq!(ip_repr.next_header, IpProtocol::Udp);
    assert_eq!(ip.hop_limit(), 64);
    assert_eq!((ip.src_addr(), ip.dst_addr()), (NODE_IP_A, NODE_IP_B));
    let udp = UdpPacket::new_checked(ip.payload()).unwrap();
    // The kernel computes the outer UDP checksum by default; it must verify.
    let udp_repr = UdpRepr::parse(
        &udp,
        &NODE_IP_A.into(),
        &NODE_IP_B.into(),
        &ChecksumCapabilities::default(),
    )
    .unwrap();
    assert_eq!(udp_repr.dst_port, VXLAN_PORT);
    assert_ne!(udp.checksum(), 0);
    let pseudo = checksum::pseudo_header_v4(NODE_IP_A, NODE_IP_B, 17, udp.len());
    assert_eq!(
        checksum::combine(&[pseudo, checksum::sum(ip.payload())]),
        0xffff
    );

    let vx = VxlanPacket::new_checked(udp.payload()).unwrap();
    assert!(vx.i_flag());
    assert_eq!(VxlanRepr::parse(&vx).unwrap(), VxlanRepr { vni: 1 });
    assert_eq!(
        &udp.payload()[..8],
        &VxlanRepr { vni: 1 }.to_bytes(),
        "kernel header bytes equal ours"
    );

    // The encapsulated frame starts exactly VXLAN_OVERHEAD_V4 bytes in.
    let inner_frame = &udp.payload()[8..];
    assert_eq!(frame.len() - inner_frame.len(), VXLAN_OVERHEAD_V4);
    let inner = PacketInfo::parse(inner_frame).unwrap();
    // flannel: the inner destination MAC is the remote VTEP's MAC.
    assert_eq!((inner.dst_mac, inner.src_mac), (VTEP_MAC_B, VTEP_MAC_A));
    assert_eq!(
        (inner.src_ip, inner.dst_ip),
        (IpAddr::V4(VTEP_IP_A), IpAddr::V4(VTEP_IP_B))
    );
    assert!(inner.ipv4_checksum_ok && inner.dont_fragment);
    let Transport::IcmpEcho {
        request: true,
        seq: 1,
        ..
    } = inner.transport
    else {
        panic!("inner is not the first echo request: {:?}", inner.transport);
    };
    let inner_eth = EthernetFrame::new_checked(inner_frame).unwrap();
    let inner_ip = Ipv4Packet::new_checked(inner_eth.payload()).unwrap();
    let icmp = Icmpv4Packet::new_checked(inner_ip.payload()).unwrap();
    match Icmpv4Repr::parse(&icmp, &ChecksumCapabilities::default()).unwrap() {
        Icmpv4Repr::EchoRequest {
            seq_no: 1, data, ..
        } => {
            // ping -s 56 -p a5: a 16-byte timestamp, then the pattern.
            assert_eq!(data.len(), 56);
            assert!(data[16..].iter().all(|&b| b == 0xa5));
        }
        other => panic!("unexpected ICMP {other:?}"),
    }

    // Our emitters reproduce the kernel's outer Ethernet, UDP (but the source port) and
    // VXLAN bytes from their Reprs.
    let mut ours = vec![0xa5u8; frame.len()];
    ours[VXLAN_OVERHEAD_V4..].copy_from_slice(inner_frame);
    eth_repr.emit(&mut EthernetFrame::new_unchecked(&mut ours[..]));
    assert_eq!(ours[..14], frame[..14]);
    let udp_len = usize::from(udp.len());
    let mut udp_bytes = vec![0xa5u8; udp_len];
    udp_bytes[16..].copy_from_slice(inner_frame);
    let mut ours_udp = UdpPacket::new_unchecked(&mut udp_bytes[..]);
    let repr = UdpRepr {
        src_port: udp_repr.src_port,
        dst_port: VXLAN_PORT,
    };
    repr.emit(
        &mut ours_udp,
        &NODE_IP_A.into(),
        &NODE_IP_B.into(),
        8 + inner_frame.len(),
        |p| p[..8].copy_from_slice(&VxlanRepr { vni: 1 }.to_bytes()),
        &ChecksumCapabilities::default(),
    );
    assert_eq!(
        &udp_bytes[..],
        ip.payload(),
        "UDP header, checksum and payload equal the kernel's"
    );
}

#[test]
fn committed_fixture_parses() {
    let frame = parse_hex(FIXTURE);
    assert_eq!(frame.len(), 148);
    check_kernel_frame(&frame);
}

#[test]
fn fixture_header_names_the_vteps() {
    for needle in [
        "vtep mac 02:00:c6:13:01:00",
        "vtep mac 02:00:c6:13:02:00",
        "node ip 198.18.0.1",
        "node ip 198.18.0.2",
        "underlay mac 02:00:c6:12:00:01",
        "underlay mac 02:00:c6:12:00:02",
        "VNI 1",
    ] {
        assert!(FIXTURE.contains(needle), "fixture header lacks {needle:?}");
    }
}

/// Re-runs the capture script against the running kernel and checks the fresh frame
/// the same way. Needs root (CI runs as root); it does not skip.
#[test]
fn live_kernel_capture_parses() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = std::env::temp_dir().join(format!("hybridway-vxlan-{}.hex", std::process::id()));
    let status = Command::new("bash")
        .arg(root.join("scripts/capture-vxlan-fixture.sh"))
        .arg(&out)
        .status()
        .expect("run scripts/capture-vxlan-fixture.sh");
    let text = std::fs::read_to_string(&out);
    let _ = std::fs::remove_file(&out);
    assert!(
        status.success(),
        "capture script failed (needs root, iproute2, tcpdump, ethtool)"
    );
    check_kernel_frame(&parse_hex(&text.unwrap()));
}
