//! IPv6 pod traffic: local, overlay and underlay routing, hop limit and packet too
//! big errors, and neighbour solicitations for the gateway.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod pipeline_support;

use std::net::Ipv6Addr;

use etherparse::{Icmpv6Type, PacketBuilder};
use hybridway_dataplane::pipeline::Pipeline;
use hybridway_dataplane::tables::SnatConfig;
use hybridway_dataplane::verdict::{DropReason, Verdict};
use pipeline_support::*;

fn ip6(f: &[u8], at: usize) -> Ipv6Addr {
    Ipv6Addr::from(<[u8; 16]>::try_from(&f[at..at + 16]).unwrap())
}

/// Each IPv6 case runs on a fresh pipeline.
fn run6(
    t: &hybridway_dataplane::tables::Tables,
    f: &[u8],
    port: hybridway_dataplane::frame::PortId,
) -> (Verdict, Vec<u8>) {
    run(&mut Pipeline::new(0, &SnatConfig::default()), t, f, port)
}

#[test]
fn local_overlay_and_underlay() {
    let t = tables(false);
    let input = udp6(POD1_6, POD2_6, 1000, 2000, 64, b"six");
    let (v, out) = run6(&t, &input, POD1_PORT);
    assert_eq!(v, Verdict::Forward { port: POD2_PORT });
    assert_eq!(&out[0..6], &POD2_MAC.0);
    assert_eq!(&out[6..12], &GATEWAY_MAC.0);
    assert_eq!(out[14 + 7], 63);
    assert_eq!(&out[22..], &input[22..]);
    assert_checksums(&out, 0);

    let input = udp6(POD1_6, REMOTE_POD6, 1000, 2000, 64, b"six");
    let (v, out) = run6(&t, &input, POD1_PORT);
    assert_eq!(v, Verdict::Forward { port: UPLINK });
    assert_eq!(out.len(), input.len() + 50);
    assert_eq!(&out[42..50], &[0x08, 0, 0, 0, 0, 0, 1, 0]);
    assert_eq!(&out[50..56], &REMOTE_VTEP_MAC.0);
    assert_eq!(&out[62..64], &[0x86, 0xdd]);
    assert_eq!(out[50 + 14 + 7], 63);
    assert_checksums(&out, 0);
    assert_checksums(&out, 50);

    let input = udp6(POD1_6, UNDERLAY_POD6, 1000, 2000, 64, b"six");
    let (v, out) = run6(&t, &input, POD1_PORT);
    assert_eq!(v, Verdict::Forward { port: UPLINK });
    assert_eq!(&out[0..6], &UNDERLAY_NODE_MAC.0);
    assert_eq!(&out[6..12], &UPLINK_MAC.0);
    assert_checksums(&out, 0);

    // Without SNAT, IPv6 to the outside is routed as is.
    let (v, out) = run6(&t, &udp6(POD1_6, OUTSIDE6, 1, 2, 64, b"x"), POD1_PORT);
    assert_eq!(v, Verdict::Forward { port: UPLINK });
    assert_eq!(ip6(&out, 22), POD1_6);
}

#[test]
fn vxlan_carrying_ipv6_is_decapsulated() {
    let t = tables(false);
    let inner = with_macs(
        udp6(REMOTE_POD6, POD1_6, 1, 2, 64, b"in"),
        REMOTE_VTEP_MAC,
        VTEP_MAC,
    );
    let (v, out) = run6(&t, &vxlan_in(REMOTE_NODE, 1, 0x08, &inner), UPLINK);
    assert_eq!(v, Verdict::Forward { port: POD1_PORT });
    assert_eq!(out.len(), inner.len());
    assert_eq!(out[21], 63);
    assert_checksums(&out, 0);
}

#[test]
fn hop_limit_expiry_and_packet_too_big() {
    let t = tables(false);
    let input = udp6(POD1_6, UNDERLAY_POD6, 1, 2, 1, b"x");
    let (v, out) = run6(&t, &input, POD1_PORT);
    assert_eq!(v, Verdict::Reply);
    assert_eq!(&out[0..6], &POD1_MAC.0);
    assert_eq!(ip6(&out, 22), GATEWAY6);
    assert_eq!(ip6(&out, 38), POD1_6);
    assert_eq!(out[20], 58);
    assert_eq!(&out[54..56], &[3, 0], "time exceeded, hop limit");
    assert_eq!(&out[62..], &input[14..]);
    assert_checksums(&out, 0);

    // 1451-byte packet towards the overlay (MTU 1450).
    let input = udp6(POD1_6, REMOTE_POD6, 1, 2, 64, &[1; 1451 - 48]);
    let (v, out) = run6(&t, &input, POD1_PORT);
    assert_eq!(v, Verdict::Reply);
    assert_eq!(&out[54..56], &[2, 0], "packet too big");
    assert_eq!(u32::from_be_bytes(out[58..62].try_into().unwrap()), 1450);
    assert_eq!(out.len(), 14 + 1280, "error fits the minimum MTU");
    assert_checksums(&out, 0);
}

/// Routed IPv6 from the uplink to a local pod whose hop limit runs out: ICMPv6 time
/// exceeded from the node's address, back out of the uplink (as IPv4 gets ICMP).
#[test]
fn hop_limit_expiry_from_the_uplink_answers_time_exceeded() {
    let node6 = Ipv6Addr::new(0x2001, 0xdb8, 0xfe, 0, 0, 0, 0, 1);
    let mut t = tables(false);
    t.node.node_addr_v6 = Some(node6);
    let input = with_macs(
        udp6(UNDERLAY_POD6, POD1_6, 1, 2, 1, b"x"),
        UNDERLAY_NODE_MAC,
        UPLINK_MAC,
    );
    let (v, out) = run6(&t, &input, UPLINK);
    assert_eq!(v, Verdict::Reply);
    assert_eq!(&out[0..6], &UNDERLAY_NODE_MAC.0);
    assert_eq!(&out[6..12], &UPLINK_MAC.0);
    assert_eq!(ip6(&out, 22), node6);
    assert_eq!(ip6(&out, 38), UNDERLAY_POD6);
    assert_eq!(out[20], 58);
    assert_eq!(&out[54..56], &[3, 0], "time exceeded, hop limit");
    assert_eq!(&out[62..], &input[14..]);
    assert_checksums(&out, 0);

    // Without an IPv6 node address there is nothing to answer from: a counted drop.
    let t = tables(false);
    let (v, _) = run6(&t, &input, UPLINK);
    assert_eq!(v, Verdict::Drop(DropReason::TtlExpired));
}

fn neighbor_solicit(target: Ipv6Addr, src: Ipv6Addr, hop: u8) -> Vec<u8> {
    let t = target.octets();
    let dst = Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(t[13]),
        u16::from_be_bytes([t[14], t[15]]),
    );
    let b = PacketBuilder::ethernet2(POD1_MAC.0, [0x33, 0x33, 0xff, t[13], t[14], t[15]])
        .ipv6(src.octets(), dst.octets(), hop)
        .icmpv6(Icmpv6Type::Unknown {
            type_u8: 135,
            code_u8: 0,
            bytes5to8: [0; 4],
        });
    let mut body = target.octets().to_vec();
    body.extend_from_slice(&[1, 1]);
    body.extend_from_slice(&POD1_MAC.0);
    let mut v = Vec::new();
    b.write(&mut v, &body).unwrap();
    v
}

#[test]
fn neighbor_solicitation_for_the_gateway_is_answered() {
    let t = tables(false);
    let (v, out) = run6(&t, &neighbor_solicit(GATEWAY6, POD1_6, 255), POD1_PORT);
    assert_eq!(v, Verdict::Reply);
    assert_eq!(out.len(), 14 + 40 + 32);
    assert_eq!(&out[0..6], &POD1_MAC.0);
    assert_eq!(&out[6..12], &GATEWAY_MAC.0);
    assert_eq!(out[21], 255);
    assert_eq!(ip6(&out, 22), GATEWAY6);
    assert_eq!(ip6(&out, 38), POD1_6);
    assert_eq!(out[54], 136);
    assert_eq!(out[58], 0xe0, "router, solicited, override");
    assert_eq!(ip6(&out, 62), GATEWAY6);
    assert_eq!(&out[78..80], &[2, 1]);
    assert_eq!(&out[80..86], &GATEWAY_MAC.0);
    assert_checksums(&out, 0);

    let (v, _) = run6(&t, &neighbor_solicit(POD2_6, POD1_6, 255), POD1_PORT);
    assert_eq!(v, Verdict::Drop(DropReason::ArpNotForUs));
    let (v, _) = run6(&t, &neighbor_solicit(GATEWAY6, POD1_6, 64), POD1_PORT);
    assert_eq!(
        v,
        Verdict::Drop(DropReason::MalformedTransport),
        "hop limit must be 255"
    );
    let (v, _) = run6(
        &t,
        &neighbor_solicit(GATEWAY6, Ipv6Addr::UNSPECIFIED, 255),
        POD1_PORT,
    );
    assert_eq!(
        v,
        Verdict::Drop(DropReason::ArpNotForUs),
        "DAD probes get no answer"
    );
}

#[test]
fn spoofed_and_multicast_ipv6_are_dropped() {
    let t = tables(false);
    let (v, _) = run6(&t, &udp6(POD2_6, POD1_6, 1, 2, 64, b"x"), POD1_PORT);
    assert_eq!(v, Verdict::Drop(DropReason::SourceNotLocal));
    let (v, _) = run6(
        &t,
        &udp6(POD1_6, "ff02::fb".parse().unwrap(), 5353, 5353, 255, b"x"),
        POD1_PORT,
    );
    assert_eq!(v, Verdict::Drop(DropReason::Unsupported));
}

#[test]
fn link_local_multicast_from_a_pod_is_unsupported_not_spoofed() {
    let t = tables(false);
    let link_local = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0x10);
    let all_routers = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);
    let (v, _) = run6(
        &t,
        &udp6(link_local, all_routers, 1, 2, 255, b"rs"),
        POD1_PORT,
    );
    assert_eq!(v, Verdict::Drop(DropReason::Unsupported));
    // A unicast packet from a link-local source is still not this pod's address.
    let (v, _) = run6(
        &t,
        &udp6(link_local, REMOTE_POD6, 1, 2, 64, b"x"),
        POD1_PORT,
    );
    assert_eq!(v, Verdict::Drop(DropReason::SourceNotLocal));
}
