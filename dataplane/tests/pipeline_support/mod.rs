//! Shared fixtures for the pipeline tests: a populated node table, packet builders
//! (etherparse, independent of the code under test) and full checksum verification.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use etherparse::PacketBuilder;
use hybridway_dataplane::frame::{FRAME_BUFFER_SIZE, Frame, FrameMeta, PortId};
use hybridway_dataplane::pipeline::Pipeline;
use hybridway_dataplane::tables::{
    Mode, NodeSettings, Prefix, RouteTableBuilder, RouteTarget, Tables,
};
use hybridway_dataplane::time::Now;
use hybridway_dataplane::verdict::Verdict;
use hybridway_dataplane::wire::{MacAddr, checksum};

pub const UPLINK: PortId = PortId(0);
pub const POD1_PORT: PortId = PortId(1);
pub const POD2_PORT: PortId = PortId(2);

pub const NODE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const REMOTE_NODE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const UNDERLAY_NODE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);
/// Outside the cluster (not in the no-SNAT ranges).
pub const OUTSIDE: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 7);
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 19, 1, 1);
/// The host's address in the pod network (the block's first address).
pub const HOST_POD_ADDR: Ipv4Addr = Ipv4Addr::new(198, 19, 1, 0);
pub const POD1: Ipv4Addr = Ipv4Addr::new(198, 19, 1, 10);
pub const POD2: Ipv4Addr = Ipv4Addr::new(198, 19, 1, 11);
pub const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(198, 19, 2, 20);
pub const UNDERLAY_POD: Ipv4Addr = Ipv4Addr::new(198, 19, 3, 30);

pub const GATEWAY6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
pub const POD1_6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x10);
pub const POD2_6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x11);
pub const REMOTE_POD6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 0x20);
pub const UNDERLAY_POD6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 3, 0, 0, 0, 0, 0x30);
pub const OUTSIDE6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 7);

pub const UPLINK_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x01]);
pub const REMOTE_NODE_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x02]);
pub const UNDERLAY_NODE_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x03]);
pub const ROUTER_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0xfe]);
pub const VTEP_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0x0f, 0x01]);
pub const REMOTE_VTEP_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0x0f, 0x02]);
pub const GATEWAY_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0xaa, 0x01]);
pub const POD1_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0xbb, 0x10]);
pub const POD2_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0xbb, 0x11]);

pub fn node_settings(snat: bool) -> NodeSettings {
    NodeSettings {
        mode: Mode::Overlay,
        node_addr: NODE,
        node_addr_v6: None,
        uplink_port: UPLINK,
        routed_port: UPLINK,
        host_port: None,
        uplink_mac: UPLINK_MAC,
        uplink_mtu: 1500,
        vtep_mac: VTEP_MAC,
        vni: 1,
        vxlan_port: 8472,
        vxlan_df: false,
        gateway_v4: GATEWAY,
        gateway_v6: Some(GATEWAY6),
        gateway_mac: GATEWAY_MAC,
        snat,
        host_pod_addr: Some(HOST_POD_ADDR),
    }
}

fn p(s: &str) -> Prefix {
    s.parse().unwrap()
}

/// Two local pods, a remote overlay node, an underlay node and a default route.
pub fn tables(snat: bool) -> Tables {
    let mut b = RouteTableBuilder::new();
    let pod1 = RouteTarget::LocalPod {
        port: POD1_PORT,
        mac: POD1_MAC,
    };
    let pod2 = RouteTarget::LocalPod {
        port: POD2_PORT,
        mac: POD2_MAC,
    };
    let vx = RouteTarget::VxlanNode {
        node_addr: REMOTE_NODE,
        vtep_mac: REMOTE_VTEP_MAC,
        vni: 1,
        next_hop_mac: REMOTE_NODE_MAC,
    };
    let under = RouteTarget::UnderlayNode {
        next_hop: IpAddr::V4(UNDERLAY_NODE),
        next_hop_mac: UNDERLAY_NODE_MAC,
    };
    let out = RouteTarget::Outside {
        next_hop_mac: ROUTER_MAC,
    };
    b.add(p("198.19.1.10/32"), pod1).unwrap();
    b.add(p("198.19.1.11/32"), pod2).unwrap();
    b.add(p("198.19.2.0/24"), vx).unwrap();
    b.add(p("198.19.3.0/24"), under).unwrap();
    b.add(p("0.0.0.0/0"), out).unwrap();
    b.add(p("2001:db8:1::10/128"), pod1).unwrap();
    b.add(p("2001:db8:1::11/128"), pod2).unwrap();
    b.add(p("2001:db8:2::/64"), vx).unwrap();
    b.add(p("2001:db8:3::/64"), under).unwrap();
    b.add(p("::/0"), out).unwrap();
    Tables {
        generation: 1,
        node: node_settings(snat),
        routes: b.build(),
        no_snat: vec![p("198.19.0.0/16"), p("198.18.0.0/24")],
        known_vteps: [REMOTE_NODE].into(),
        services: Default::default(),
    }
}

/// `t` with these routes instead of its own.
pub fn with_routes(t: Tables, routes: impl IntoIterator<Item = (Prefix, RouteTarget)>) -> Tables {
    let mut b = RouteTableBuilder::new();
    for (prefix, target) in routes {
        b.add(prefix, target).unwrap();
    }
    Tables {
        routes: b.build(),
        ..t
    }
}

/// `t` without a default route: no `uplink.gateway` configured, none in the kernel.
pub fn without_gateway(t: Tables) -> Tables {
    let routes: Vec<_> = t
        .routes
        .iter()
        .filter(|(_, r)| !matches!(r, RouteTarget::Outside { .. }))
        .map(|(p, r)| (*p, *r))
        .collect();
    let t = with_routes(t, routes);
    assert_eq!(t.routes.lookup_v4(OUTSIDE), None);
    t
}

/// A frame buffer with the standard headroom in front of `bytes`.
pub struct Buf(pub Box<[u8; FRAME_BUFFER_SIZE]>);

impl Buf {
    pub fn new() -> Self {
        Buf(Box::new([0u8; FRAME_BUFFER_SIZE]))
    }

    pub fn frame(&mut self, bytes: &[u8], in_port: PortId) -> Frame<'_> {
        Frame::copy_from(&mut self.0[..], bytes, FrameMeta { in_port }).unwrap()
    }
}

pub fn eth(
    src: MacAddr,
    dst: MacAddr,
) -> etherparse::PacketBuilderStep<etherparse::Ethernet2Header> {
    PacketBuilder::ethernet2(src.0, dst.0)
}

pub fn udp4(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    ttl: u8,
    payload: &[u8],
) -> Vec<u8> {
    let b = eth(POD1_MAC, GATEWAY_MAC)
        .ipv4(src.octets(), dst.octets(), ttl)
        .udp(sport, dport);
    let mut v = Vec::new();
    b.write(&mut v, payload).unwrap();
    v
}

pub fn tcp4(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    ttl: u8,
    syn: bool,
    payload: &[u8],
) -> Vec<u8> {
    let mut b = eth(POD1_MAC, GATEWAY_MAC)
        .ipv4(src.octets(), dst.octets(), ttl)
        .tcp(sport, dport, 1000, 64000);
    if syn {
        b = b.syn();
    } else {
        b = b.ack(77);
    }
    let mut v = Vec::new();
    b.write(&mut v, payload).unwrap();
    v
}

pub fn ping4(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    id: u16,
    ttl: u8,
    reply: bool,
    payload: &[u8],
) -> Vec<u8> {
    let b = eth(POD1_MAC, GATEWAY_MAC).ipv4(src.octets(), dst.octets(), ttl);
    let b = if reply {
        b.icmpv4_echo_reply(id, 1)
    } else {
        b.icmpv4_echo_request(id, 1)
    };
    let mut v = Vec::new();
    b.write(&mut v, payload).unwrap();
    v
}

pub fn udp6(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    sport: u16,
    dport: u16,
    hop: u8,
    payload: &[u8],
) -> Vec<u8> {
    let b = eth(POD1_MAC, GATEWAY_MAC)
        .ipv6(src.octets(), dst.octets(), hop)
        .udp(sport, dport);
    let mut v = Vec::new();
    b.write(&mut v, payload).unwrap();
    v
}

/// An ICMPv4 error from `from` to `to` (type, code, the 4 bytes after the checksum:
/// the MTU of "fragmentation needed") quoting the IPv4 packet at `l3` in `about`, as
/// much of it as a router quotes (576 bytes in all); from `POD1_MAC` to the gateway.
pub fn icmp4_error(
    about: &[u8],
    l3: usize,
    from: Ipv4Addr,
    to: Ipv4Addr,
    (icmp_type, code): (u8, u8),
    rest: [u8; 4],
) -> Vec<u8> {
    let total = usize::from(u16_at(about, l3 + 2));
    let quote = &about[l3..l3 + total.min(576 - 28)];
    let b = eth(POD1_MAC, GATEWAY_MAC)
        .ipv4(from.octets(), to.octets(), 64)
        .icmpv4_raw(icmp_type, code, rest);
    let mut v = Vec::new();
    b.write(&mut v, quote).unwrap();
    v
}

/// Sets the Ethernet addresses of a built frame.
pub fn with_macs(mut f: Vec<u8>, src: MacAddr, dst: MacAddr) -> Vec<u8> {
    f[0..6].copy_from_slice(&dst.0);
    f[6..12].copy_from_slice(&src.0);
    f
}

/// Clears or sets DF on an IPv4 frame and fixes the header checksum.
pub fn set_df(mut f: Vec<u8>, df: bool) -> Vec<u8> {
    if df {
        f[20] |= 0x40;
    } else {
        f[20] &= !0x40;
    }
    fix_ipv4_checksum(&mut f, 14);
    f
}

pub fn fix_ipv4_checksum(f: &mut [u8], l3: usize) {
    let ihl = usize::from(f[l3] & 0x0f) * 4;
    f[l3 + 10] = 0;
    f[l3 + 11] = 0;
    let c = checksum::checksum(&f[l3..l3 + ihl]);
    f[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
}

/// Recomputes every checksum of the IPv4 or IPv6 packet after the Ethernet header at
/// `l2` from scratch and asserts the packet carries exactly those.
pub fn assert_checksums(f: &[u8], l2: usize) {
    let ethertype = u16::from_be_bytes([f[l2 + 12], f[l2 + 13]]);
    let l3 = l2 + 14;
    match ethertype {
        0x0800 => {
            let ihl = usize::from(f[l3] & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([f[l3 + 2], f[l3 + 3]]));
            assert_eq!(
                checksum::checksum(&f[l3..l3 + ihl]),
                0,
                "IPv4 header checksum"
            );
            let src = Ipv4Addr::new(f[l3 + 12], f[l3 + 13], f[l3 + 14], f[l3 + 15]);
            let dst = Ipv4Addr::new(f[l3 + 16], f[l3 + 17], f[l3 + 18], f[l3 + 19]);
            let seg = &f[l3 + ihl..l3 + total];
            let frag = u16::from_be_bytes([f[l3 + 6], f[l3 + 7]]);
            if frag & 0x3fff != 0 {
                return;
            }
            match f[l3 + 9] {
                6 => assert_eq!(
                    checksum::transport_checksum_v4(src, dst, 6, seg),
                    0,
                    "TCP checksum"
                ),
                17 => {
                    let c = u16::from_be_bytes([seg[6], seg[7]]);
                    if c != 0 {
                        assert_eq!(
                            checksum::transport_checksum_v4(src, dst, 17, seg),
                            0,
                            "UDP checksum"
                        );
                    }
                }
                1 => assert_eq!(checksum::checksum(seg), 0, "ICMP checksum"),
                _ => {}
            }
        }
        0x86dd => {
            let plen = usize::from(u16::from_be_bytes([f[l3 + 4], f[l3 + 5]]));
            let src = Ipv6Addr::from(<[u8; 16]>::try_from(&f[l3 + 8..l3 + 24]).unwrap());
            let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&f[l3 + 24..l3 + 40]).unwrap());
            let next = f[l3 + 6];
            let seg = &f[l3 + 40..l3 + 40 + plen];
            if matches!(next, 6 | 17 | 58) {
                assert_eq!(
                    checksum::transport_checksum_v6(src, dst, next, seg),
                    0,
                    "IPv6 transport checksum"
                );
            }
        }
        other => panic!("not IP: ethertype {other:#06x}"),
    }
}

/// Builds a VXLAN frame as a remote node would send it to us: `inner` is the inner
/// Ethernet frame.
pub fn vxlan_in(src_node: Ipv4Addr, vni: u32, flags: u8, inner: &[u8]) -> Vec<u8> {
    let mut payload = vec![flags, 0, 0, 0];
    payload.extend_from_slice(&vni.to_be_bytes()[1..]);
    payload.push(0);
    payload.extend_from_slice(inner);
    let b = eth(REMOTE_NODE_MAC, UPLINK_MAC)
        .ipv4(src_node.octets(), NODE.octets(), 64)
        .udp(40000, 8472);
    let mut v = Vec::new();
    b.write(&mut v, &payload).unwrap();
    v
}

/// The time every pipeline test runs at unless it moves the clock itself.
pub const T0: Now = Now(1_000);

/// The IPv4 address at `f[at..at + 4]`.
pub fn ip4(f: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(f[at], f[at + 1], f[at + 2], f[at + 3])
}

/// The big-endian word at `f[at..at + 2]`.
pub fn u16_at(f: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([f[at], f[at + 1]])
}

/// Runs frame `f`, received on `port`, through `p` at [`T0`]; returns the verdict and
/// the frame as it left.
pub fn run(p: &mut Pipeline, t: &Tables, f: &[u8], port: PortId) -> (Verdict, Vec<u8>) {
    let mut buf = Buf::new();
    let mut frame = buf.frame(f, port);
    let v = p.process(&mut frame, t, T0);
    (v, frame.data().to_vec())
}
