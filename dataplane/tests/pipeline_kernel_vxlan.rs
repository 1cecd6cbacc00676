//! Compatibility with the Linux kernel's VXLAN device as flannel configures it, using
//! the frame captured by `scripts/capture-vxlan-fixture.sh`
//! (`tests/fixtures/kernel_vxlan_icmp.hex`; addresses and MACs from its header).
#![allow(
    clippy::too_many_arguments,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::net::Ipv4Addr;

use hybridway_dataplane::frame::{FRAME_BUFFER_SIZE, Frame, FrameMeta, PortId};
use hybridway_dataplane::pipeline::Pipeline;
use hybridway_dataplane::tables::{
    Mode, NodeSettings, Prefix, RouteTableBuilder, RouteTarget, SnatConfig, Tables,
};
use hybridway_dataplane::time::Now;
use hybridway_dataplane::verdict::Verdict;
use hybridway_dataplane::wire::{MacAddr, checksum};

const UPLINK: PortId = PortId(0);
const POD_PORT: PortId = PortId(7);
const A_NODE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const B_NODE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const A_MAC: MacAddr = MacAddr([0x02, 0x00, 0xc6, 0x12, 0x00, 0x01]);
const B_MAC: MacAddr = MacAddr([0x02, 0x00, 0xc6, 0x12, 0x00, 0x02]);
const A_VTEP: MacAddr = MacAddr([0x02, 0x00, 0xc6, 0x13, 0x01, 0x00]);
const B_VTEP: MacAddr = MacAddr([0x02, 0x00, 0xc6, 0x13, 0x02, 0x00]);
const GATEWAY_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0xaa, 0x01]);
const POD_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0xbb, 0x01]);

fn fixture() -> Vec<u8> {
    let text = include_str!("fixtures/kernel_vxlan_icmp.hex");
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(|l| l.split_whitespace())
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect()
}

/// A node as the capture's node `me` with the other one as its only peer; the local
/// "pod" is the VTEP address the kernel pinged from/to.
fn node(
    me: Ipv4Addr,
    mac: MacAddr,
    vtep: MacAddr,
    local: &str,
    peer: Ipv4Addr,
    peer_mac: MacAddr,
    peer_vtep: MacAddr,
    peer_block: &str,
) -> Tables {
    let mut b = RouteTableBuilder::new();
    b.add(
        local.parse::<Prefix>().unwrap(),
        RouteTarget::LocalPod {
            port: POD_PORT,
            mac: POD_MAC,
        },
    )
    .unwrap();
    b.add(
        peer_block.parse::<Prefix>().unwrap(),
        RouteTarget::VxlanNode {
            node_addr: peer,
            vtep_mac: peer_vtep,
            vni: 1,
            next_hop_mac: peer_mac,
        },
    )
    .unwrap();
    Tables {
        generation: 1,
        node: NodeSettings {
            mode: Mode::Overlay,
            node_addr: me,
            node_addr_v6: None,
            uplink_port: UPLINK,
            routed_port: UPLINK,
            host_port: None,
            uplink_mac: mac,
            uplink_mtu: 1500,
            vtep_mac: vtep,
            vni: 1,
            vxlan_port: 8472,
            vxlan_df: false,
            gateway_v4: Ipv4Addr::new(198, 19, 255, 1),
            gateway_v6: None,
            gateway_mac: GATEWAY_MAC,
            snat: false,
            host_pod_addr: None,
        },
        routes: b.build(),
        no_snat: vec![],
        known_vteps: [peer].into(),
        services: Default::default(),
    }
}

fn receiver() -> Tables {
    node(
        B_NODE,
        B_MAC,
        B_VTEP,
        "198.19.2.0/32",
        A_NODE,
        A_MAC,
        A_VTEP,
        "198.19.1.0/24",
    )
}

fn sender() -> Tables {
    node(
        A_NODE,
        A_MAC,
        A_VTEP,
        "198.19.1.0/32",
        B_NODE,
        B_MAC,
        B_VTEP,
        "198.19.2.0/24",
    )
}

#[test]
fn kernel_vxlan_is_decapsulated_to_the_pod() {
    let wire = fixture();
    let inner = &wire[50..];
    let t = receiver();
    let mut buf = vec![0u8; FRAME_BUFFER_SIZE];
    let mut frame = Frame::copy_from(&mut buf, &wire, FrameMeta { in_port: UPLINK }).unwrap();
    let v = Pipeline::new(0, &SnatConfig::default()).process(&mut frame, &t, Now(1));
    assert_eq!(v, Verdict::Forward { port: POD_PORT });
    let out = frame.data();
    assert_eq!(out.len(), inner.len());
    assert_eq!(&out[0..6], &POD_MAC.0);
    assert_eq!(&out[6..12], &GATEWAY_MAC.0);
    assert_eq!(out[22], inner[22] - 1, "TTL decremented");
    assert_eq!(&out[26..], &inner[26..], "addresses and ICMP untouched");
    assert_eq!(checksum::checksum(&out[14..34]), 0);
}

#[test]
fn our_encapsulation_matches_the_kernels_outer_headers() {
    let wire = fixture();
    // The inner frame as the pod would have sent it to its gateway: one hop earlier,
    // so that after our TTL decrement the inner packet equals the kernel's.
    let mut pod_frame = wire[50..].to_vec();
    pod_frame[0..6].copy_from_slice(&GATEWAY_MAC.0);
    pod_frame[6..12].copy_from_slice(&POD_MAC.0);
    pod_frame[22] += 1;
    pod_frame[24..26].fill(0);
    let c = checksum::checksum(&pod_frame[14..34]);
    pod_frame[24..26].copy_from_slice(&c.to_be_bytes());

    let t = sender();
    let mut buf = vec![0u8; FRAME_BUFFER_SIZE];
    let mut frame =
        Frame::copy_from(&mut buf, &pod_frame, FrameMeta { in_port: POD_PORT }).unwrap();
    let v = Pipeline::new(0, &SnatConfig::default()).process(&mut frame, &t, Now(1));
    assert_eq!(v, Verdict::Forward { port: UPLINK });
    let ours = frame.data().to_vec();
    assert_eq!(ours.len(), wire.len());
    // The inner frame is byte for byte the kernel's (VTEP MACs, TTL, checksum).
    assert_eq!(&ours[50..], &wire[50..]);
    // Outer headers equal except what legitimately varies: IP identification and
    // hence header checksum, the UDP source port (flow hash), and the UDP checksum
    // (the capture's device computed one; zero, which we send, is what RFC 7348
    // recommends for IPv4 and what flannel's default device sends).
    let mask = |f: &[u8]| {
        let mut f = f[..50].to_vec();
        for i in [18, 19, 24, 25, 34, 35, 40, 41] {
            f[i] = 0;
        }
        f
    };
    assert_eq!(mask(&ours), mask(&wire));
    assert_eq!(checksum::checksum(&ours[14..34]), 0);
    assert_eq!(&ours[40..42], &[0, 0]);

    // And the receiver accepts what we sent, like it accepted the kernel's.
    let mut buf = vec![0u8; FRAME_BUFFER_SIZE];
    let mut frame = Frame::copy_from(&mut buf, &ours, FrameMeta { in_port: UPLINK }).unwrap();
    let v = Pipeline::new(0, &SnatConfig::default()).process(&mut frame, &receiver(), Now(1));
    assert_eq!(v, Verdict::Forward { port: POD_PORT });
}
