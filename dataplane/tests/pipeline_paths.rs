//! Every pipeline path with hand-built frames: exact output fields and checksums
//! verified by full recomputation.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod pipeline_support;

use std::net::Ipv4Addr;

use hybridway_dataplane::pipeline::{Pipeline, vxlan_source_port};
use hybridway_dataplane::tables::SnatConfig;
use hybridway_dataplane::time::Now;
use hybridway_dataplane::verdict::{DropReason, Verdict};
use hybridway_dataplane::wire::checksum;
use pipeline_support::*;

fn pipeline() -> Pipeline {
    Pipeline::new(0, &SnatConfig::default())
}

// ── ARP ─────────────────────────────────────────────────────────────────────

fn arp_request(sender_ip: Ipv4Addr, target_ip: Ipv4Addr, op: u16) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&POD1_MAC.0);
    f.extend_from_slice(&[0x08, 0x06, 0x00, 0x01, 0x08, 0x00, 6, 4]);
    f.extend_from_slice(&op.to_be_bytes());
    f.extend_from_slice(&POD1_MAC.0);
    f.extend_from_slice(&sender_ip.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target_ip.octets());
    f.extend_from_slice(&[0; 18]); // Ethernet padding to 60 bytes
    f
}

#[test]
fn arp_for_gateway_is_answered() {
    let t = tables(false);
    let mut buf = Buf::new();
    let mut frame = buf.frame(&arp_request(POD1, GATEWAY, 1), POD1_PORT);
    assert_eq!(pipeline().process(&mut frame, &t, T0), Verdict::Reply);
    let mut want = Vec::new();
    want.extend_from_slice(&POD1_MAC.0);
    want.extend_from_slice(&GATEWAY_MAC.0);
    want.extend_from_slice(&[0x08, 0x06, 0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x02]);
    want.extend_from_slice(&GATEWAY_MAC.0);
    want.extend_from_slice(&GATEWAY.octets());
    want.extend_from_slice(&POD1_MAC.0);
    want.extend_from_slice(&POD1.octets());
    assert_eq!(frame.data(), &want[..]);
}

#[test]
fn other_arp_is_not_ours() {
    let t = tables(false);
    let mut p = pipeline();
    for f in [arp_request(POD1, POD2, 1), arp_request(POD1, GATEWAY, 2)] {
        let mut buf = Buf::new();
        let mut frame = buf.frame(&f, POD1_PORT);
        assert_eq!(
            p.process(&mut frame, &t, T0),
            Verdict::Drop(DropReason::ArpNotForUs)
        );
    }
    let mut bad = arp_request(POD1, GATEWAY, 1);
    bad[16] = 0x86; // protocol type IPv6
    let mut buf = Buf::new();
    let mut frame = buf.frame(&bad, POD1_PORT);
    assert_eq!(
        p.process(&mut frame, &t, T0),
        Verdict::Drop(DropReason::MalformedArp)
    );
    // On the uplink, ARP belongs to the host (it owns the node address).
    let mut buf = Buf::new();
    let mut frame = buf.frame(&arp_request(REMOTE_NODE, NODE, 1), UPLINK);
    assert_eq!(p.process(&mut frame, &t, T0), Verdict::ToHost);
}

// ── pod → pod, same node ────────────────────────────────────────────────────

#[test]
fn pod_to_local_pod_rewrites_macs_and_ttl() {
    let t = tables(false);
    let input = tcp4(POD1, POD2, 40000, 80, 64, true, b"hello");
    let mut buf = Buf::new();
    let mut frame = buf.frame(&input, POD1_PORT);
    assert_eq!(
        pipeline().process(&mut frame, &t, T0),
        Verdict::Forward { port: POD2_PORT }
    );
    let out = frame.data();
    assert_eq!(out.len(), input.len());
    assert_eq!(&out[0..6], &POD2_MAC.0);
    assert_eq!(&out[6..12], &GATEWAY_MAC.0);
    assert_eq!(out[14 + 8], 63);
    // Everything but MACs, TTL and header checksum is unchanged.
    assert_eq!(&out[12..22], &input[12..22]);
    assert_eq!(&out[26..], &input[26..]);
    assert_checksums(out, 0);
}

#[test]
fn spoofed_source_is_dropped() {
    let t = tables(false);
    let mut p = pipeline();
    // POD2's address from POD1's port.
    let mut buf = Buf::new();
    let mut frame = buf.frame(&udp4(POD2, POD1, 1, 2, 64, b"x"), POD1_PORT);
    assert_eq!(
        p.process(&mut frame, &t, T0),
        Verdict::Drop(DropReason::SourceNotLocal)
    );
    let mut buf = Buf::new();
    let mut frame = buf.frame(&udp4(OUTSIDE, POD2, 1, 2, 64, b"x"), POD1_PORT);
    assert_eq!(
        p.process(&mut frame, &t, T0),
        Verdict::Drop(DropReason::SourceNotLocal)
    );
}

#[test]
fn broadcast_and_host_traffic() {
    let t = tables(false);
    let mut p = pipeline();
    let mut buf = Buf::new();
    let mut frame = buf.frame(
        &udp4(POD1, Ipv4Addr::BROADCAST, 68, 67, 64, b"x"),
        POD1_PORT,
    );
    assert_eq!(
        p.process(&mut frame, &t, T0),
        Verdict::Drop(DropReason::Unsupported)
    );
    // DHCP discovery is not a spoofed source.
    let mut buf = Buf::new();
    let dhcp = udp4(Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST, 68, 67, 64, b"d");
    let mut frame = buf.frame(&dhcp, POD1_PORT);
    assert_eq!(
        p.process(&mut frame, &t, T0),
        Verdict::Drop(DropReason::Unsupported)
    );
    let mut buf = Buf::new();
    let mut frame = buf.frame(&udp4(POD1, NODE, 5000, 53, 64, b"x"), POD1_PORT);
    assert_eq!(p.process(&mut frame, &t, T0), Verdict::ToHost);
    // The gateway has no host interface behind it: only pings are answered.
    let mut buf = Buf::new();
    let mut frame = buf.frame(&udp4(POD1, GATEWAY, 5000, 53, 64, b"x"), POD1_PORT);
    assert_eq!(
        p.process(&mut frame, &t, T0),
        Verdict::Drop(DropReason::NoRoute)
    );
}

#[test]
fn the_gateway_answers_pings() {
    let t = tables(false);
    let mut p = pipeline();
    let (v, out) = run(
        &mut p,
        &t,
        &ping4(POD1, GATEWAY, 77, 5, false, b"hello gateway"),
        POD1_PORT,
    );
    assert_eq!(v, Verdict::Reply);
    assert_eq!(&out[0..6], &POD1_MAC.0);
    assert_eq!(&out[6..12], &GATEWAY_MAC.0);
    assert_eq!((ip4(&out, 26), ip4(&out, 30)), (GATEWAY, POD1));
    assert_eq!(out[22], 64, "a fresh TTL");
    assert_eq!(out[34], 0, "echo reply");
    assert_eq!(u16_at(&out, 38), 77, "identifier kept");
    assert!(out.ends_with(b"hello gateway"));
    assert_checksums(&out, 0);
    // A request with a broken checksum is not answered.
    let mut bad = ping4(POD1, GATEWAY, 77, 5, false, b"x");
    bad[36] ^= 0xff;
    assert_eq!(
        run(&mut p, &t, &bad, POD1_PORT).0,
        Verdict::Drop(DropReason::MalformedTransport)
    );
}

#[test]
fn bad_ipv4_checksum_is_dropped_not_forwarded() {
    let t = tables(false);
    let mut f = udp4(POD1, POD2, 1, 2, 64, b"x");
    f[24] ^= 0xff;
    let mut buf = Buf::new();
    let mut frame = buf.frame(&f, POD1_PORT);
    assert_eq!(
        pipeline().process(&mut frame, &t, T0),
        Verdict::Drop(DropReason::MalformedIpv4)
    );
}

// ── overlay: encapsulation ──────────────────────────────────────────────────

#[test]
fn pod_to_remote_pod_is_vxlan_encapsulated() {
    let t = tables(false);
    let input = udp4(POD1, REMOTE_POD, 5353, 9999, 64, &[0xab; 100]);
    let mut buf = Buf::new();
    let mut frame = buf.frame(&input, POD1_PORT);
    let headroom = frame.headroom();
    assert_eq!(
        pipeline().process(&mut frame, &t, T0),
        Verdict::Forward { port: UPLINK }
    );
    let out = frame.data();
    assert_eq!(out.len(), input.len() + 50);
    // The payload did not move: only headroom was used.
    assert_eq!(frame.headroom(), headroom - 50);
    // Outer Ethernet.
    assert_eq!(&out[0..6], &REMOTE_NODE_MAC.0);
    assert_eq!(&out[6..12], &UPLINK_MAC.0);
    assert_eq!(u16_at(out, 12), 0x0800);
    // Outer IPv4.
    assert_eq!(out[14], 0x45);
    assert_eq!(out[15], 0);
    assert_eq!(usize::from(u16_at(out, 16)), input.len() + 36);
    assert_eq!(
        u16_at(out, 20),
        0,
        "DF clear (vxlan_df = false), not a fragment"
    );
    assert_eq!(out[22], 64);
    assert_eq!(out[23], 17);
    assert_eq!(ip4(out, 26), NODE);
    assert_eq!(ip4(out, 30), REMOTE_NODE);
    assert_eq!(checksum::checksum(&out[14..34]), 0);
    // Outer UDP.
    let sport = u16_at(out, 34);
    assert!((32768..61000).contains(&sport), "{sport}");
    assert_eq!(u16_at(out, 36), 8472);
    assert_eq!(usize::from(u16_at(out, 38)), input.len() + 16);
    assert_eq!(u16_at(out, 40), 0);
    // VXLAN: I flag, VNI 1.
    assert_eq!(&out[42..50], &[0x08, 0, 0, 0, 0, 0, 1, 0]);
    // Inner Ethernet: our VTEP → remote VTEP; inner IP with TTL decremented.
    assert_eq!(&out[50..56], &REMOTE_VTEP_MAC.0);
    assert_eq!(&out[56..62], &VTEP_MAC.0);
    assert_eq!(out[50 + 14 + 8], 63);
    assert_eq!(
        &out[50 + 14 + 9..],
        &input[14 + 9..]
            .iter()
            .enumerate()
            .map(|(i, b)| if (1..3).contains(&i) {
                out[50 + 14 + 9 + i]
            } else {
                *b
            })
            .collect::<Vec<_>>()[..]
    );
    assert_checksums(out, 50);
}

#[test]
fn outer_source_port_follows_the_inner_flow() {
    let t = tables(false);
    let mut p = pipeline();
    let mut port_of = |sport: u16| {
        let mut buf = Buf::new();
        let mut frame = buf.frame(&udp4(POD1, REMOTE_POD, sport, 80, 64, b"x"), POD1_PORT);
        assert_eq!(
            p.process(&mut frame, &t, T0),
            Verdict::Forward { port: UPLINK }
        );
        u16_at(frame.data(), 34)
    };
    assert_eq!(port_of(1000), port_of(1000));
    let distinct: std::collections::HashSet<u16> = (1000..1100).map(&mut port_of).collect();
    assert!(
        distinct.len() > 90,
        "{} distinct ports for 100 flows",
        distinct.len()
    );
    assert_eq!(vxlan_source_port(0), 32768);
}

#[test]
fn vxlan_df_and_ecn_are_copied_per_configuration() {
    let mut t = tables(false);
    t.node.vxlan_df = true;
    let mut f = udp4(POD1, REMOTE_POD, 1, 2, 64, b"x");
    f[15] = 0xb8 | 0x03; // DSCP EF, ECN CE
    fix_ipv4_checksum(&mut f, 14);
    let mut buf = Buf::new();
    let mut frame = buf.frame(&f, POD1_PORT);
    assert_eq!(
        pipeline().process(&mut frame, &t, T0),
        Verdict::Forward { port: UPLINK }
    );
    let out = frame.data();
    assert_eq!(u16_at(out, 20), 0x4000);
    assert_eq!(
        out[15], 0x02,
        "CE becomes ECT(0) outside, DSCP not inherited"
    );
    assert_checksums(out, 0);
}

#[test]
fn too_big_for_the_overlay_gets_fragmentation_needed() {
    let t = tables(false);
    // 1451-byte IP packet: fits the uplink (1500) but not the overlay (1450).
    let input = udp4(POD1, REMOTE_POD, 1, 2, 64, &[7; 1451 - 28]);
    let mut buf = Buf::new();
    let mut frame = buf.frame(&input, POD1_PORT);
    assert_eq!(pipeline().process(&mut frame, &t, T0), Verdict::Reply);
    let out = frame.data();
    assert_eq!(&out[0..6], &POD1_MAC.0);
    assert_eq!(&out[6..12], &GATEWAY_MAC.0);
    assert_eq!(ip4(out, 26), GATEWAY);
    assert_eq!(ip4(out, 30), POD1);
    assert_eq!(out[23], 1);
    assert_eq!(
        &out[34..36],
        &[3, 4],
        "destination unreachable, fragmentation needed"
    );
    assert_eq!(u16_at(out, 40), 1450, "next-hop MTU");
    // The quote is the original packet from its IP header, cut at 576 bytes in all.
    assert_eq!(out.len(), 14 + 576);
    assert_eq!(&out[42..], &input[14..14 + 576 - 28]);
    assert_checksums(out, 0);
    // Without DF the dataplane does not fragment: counted drop.
    let mut buf = Buf::new();
    let mut frame = buf.frame(&set_df(input, false), POD1_PORT);
    assert_eq!(
        pipeline().process(&mut frame, &t, T0),
        Verdict::Drop(DropReason::FragmentationNeeded)
    );
}

#[test]
fn ttl_expiry_gets_time_exceeded_from_the_gateway() {
    let t = tables(false);
    let input = tcp4(POD1, OUTSIDE, 40000, 443, 1, true, b"");
    let mut buf = Buf::new();
    let mut frame = buf.frame(&input, POD1_PORT);
    assert_eq!(pipeline().process(&mut frame, &t, T0), Verdict::Reply);
    let out = frame.data();
    assert_eq!(ip4(out, 26), GATEWAY);
    assert_eq!(ip4(out, 30), POD1);
    assert_eq!(out[22], 64);
    assert_eq!(&out[34..36], &[11, 0]);
    assert_eq!(&out[42..], &input[14..], "short packets are quoted whole");
    assert_checksums(out, 0);
}

#[test]
fn no_icmp_error_about_an_icmp_error_and_rate_limited() {
    let t = tables(false);
    let mut p = pipeline();
    // An ICMP time exceeded from POD1 with TTL 1: dropped silently.
    let mut err = eth(POD1_MAC, GATEWAY_MAC)
        .ipv4(POD1.octets(), OUTSIDE.octets(), 1)
        .icmpv4_raw(11, 0, [0; 4]);
    let _ = &mut err;
    let mut v = Vec::new();
    err.write(&mut v, &[0x45; 28]).unwrap();
    let mut buf = Buf::new();
    let mut frame = buf.frame(&v, POD1_PORT);
    assert_eq!(
        p.process(&mut frame, &t, T0),
        Verdict::Drop(DropReason::TtlExpired)
    );
    // A burst of expiring packets: the first 50 get errors, the rest are rate limited.
    let input = udp4(POD1, OUTSIDE, 1, 2, 1, b"x");
    let verdicts: Vec<_> = (0..60)
        .map(|_| {
            let mut buf = Buf::new();
            let mut frame = buf.frame(&input, POD1_PORT);
            p.process(&mut frame, &t, T0)
        })
        .collect();
    assert_eq!(
        verdicts.iter().filter(|v| **v == Verdict::Reply).count(),
        50
    );
    assert_eq!(verdicts[59], Verdict::Drop(DropReason::IcmpRateLimited));
    let mut buf = Buf::new();
    let mut frame = buf.frame(&input, POD1_PORT);
    assert_eq!(
        p.process(&mut frame, &t, Now(T0.0 + 100)),
        Verdict::Reply,
        "refilled after 100 ms"
    );
}

// ── overlay: decapsulation ──────────────────────────────────────────────────

fn inner_to_pod1(ttl: u8) -> Vec<u8> {
    with_macs(
        udp4(REMOTE_POD, POD1, 7000, 8000, ttl, b"from far away"),
        REMOTE_VTEP_MAC,
        VTEP_MAC,
    )
}

#[test]
fn vxlan_from_a_known_node_is_delivered_to_the_pod() {
    let t = tables(false);
    let inner = inner_to_pod1(63);
    let mut buf = Buf::new();
    let mut frame = buf.frame(&vxlan_in(REMOTE_NODE, 1, 0x08, &inner), UPLINK);
    assert_eq!(
        pipeline().process(&mut frame, &t, T0),
        Verdict::Forward { port: POD1_PORT }
    );
    let out = frame.data();
    assert_eq!(out.len(), inner.len());
    assert_eq!(&out[0..6], &POD1_MAC.0);
    assert_eq!(&out[6..12], &GATEWAY_MAC.0);
    assert_eq!(out[22], 62);
    assert_eq!(&out[12..22], &inner[12..22]);
    assert_eq!(&out[26..], &inner[26..]);
    assert_checksums(out, 0);
}

#[test]
fn bad_vxlan_is_counted_and_never_forwarded() {
    let t = tables(false);
    let mut p = pipeline();
    let inner = inner_to_pod1(64);
    let cases: Vec<(Vec<u8>, DropReason)> = vec![
        (
            vxlan_in(UNDERLAY_NODE, 1, 0x08, &inner),
            DropReason::VxlanUnknownSource,
        ),
        (
            vxlan_in(REMOTE_NODE, 2, 0x08, &inner),
            DropReason::VxlanWrongVni,
        ),
        (
            vxlan_in(REMOTE_NODE, 1, 0x00, &inner),
            DropReason::VxlanMalformed,
        ),
        (
            vxlan_in(REMOTE_NODE, 1, 0x08, &inner[..10]),
            DropReason::VxlanMalformed,
        ),
        (
            vxlan_in(REMOTE_NODE, 1, 0x08, &inner[..30]),
            DropReason::VxlanMalformed,
        ),
        (
            vxlan_in(
                REMOTE_NODE,
                1,
                0x08,
                &with_macs(inner.clone(), REMOTE_VTEP_MAC, POD2_MAC),
            ),
            DropReason::VxlanNotForUs,
        ),
        (
            // Inner destination is not a local pod: never routed onwards.
            vxlan_in(
                REMOTE_NODE,
                1,
                0x08,
                &with_macs(
                    udp4(REMOTE_POD, OUTSIDE, 1, 2, 64, b"x"),
                    REMOTE_VTEP_MAC,
                    VTEP_MAC,
                ),
            ),
            DropReason::VxlanNotForUs,
        ),
        (
            vxlan_in(REMOTE_NODE, 1, 0x08, &inner_to_pod1(1)),
            DropReason::TtlExpired,
        ),
    ];
    for (i, (f, want)) in cases.into_iter().enumerate() {
        let mut buf = Buf::new();
        let mut frame = buf.frame(&f, UPLINK);
        assert_eq!(
            p.process(&mut frame, &t, T0),
            Verdict::Drop(want),
            "case {i}"
        );
    }
}

/// Anti-spoofing: a node may only send from the pod blocks routed to it (its own
/// host sends from its block too); the drop has its own reason.
#[test]
fn vxlan_whose_inner_source_is_not_the_senders_is_dropped() {
    let mut t = tables(false);
    // A second known node: REMOTE_POD's block is REMOTE_NODE's, not its.
    let other_node = Ipv4Addr::new(198, 18, 0, 9);
    t.known_vteps = [REMOTE_NODE, other_node].into();
    let mut p = pipeline();
    let from = |src| {
        with_macs(
            udp4(src, POD1, 7000, 8000, 63, b"spoofed"),
            REMOTE_VTEP_MAC,
            VTEP_MAC,
        )
    };
    let cases = [
        (other_node, from(REMOTE_POD), "another node's pod"),
        (REMOTE_NODE, from(POD2), "one of our own pods"),
        (REMOTE_NODE, from(UNDERLAY_POD), "an underlay node's pod"),
        (REMOTE_NODE, from(OUTSIDE), "the outside"),
    ];
    for (node, inner, what) in cases {
        let mut buf = Buf::new();
        let mut frame = buf.frame(&vxlan_in(node, 1, 0x08, &inner), UPLINK);
        assert_eq!(
            p.process(&mut frame, &t, T0),
            Verdict::Drop(DropReason::VxlanSpoofedSource),
            "{what}"
        );
    }
    // The sender's own pod is delivered.
    let mut buf = Buf::new();
    let mut frame = buf.frame(&vxlan_in(REMOTE_NODE, 1, 0x08, &from(REMOTE_POD)), UPLINK);
    assert_eq!(
        p.process(&mut frame, &t, T0),
        Verdict::Forward { port: POD1_PORT }
    );
}

#[test]
fn uplink_traffic_that_is_not_ours_goes_to_the_host() {
    let t = tables(false);
    let mut p = pipeline();
    let to_node = with_macs(
        tcp4(OUTSIDE, NODE, 5555, 22, 64, true, b""),
        ROUTER_MAC,
        UPLINK_MAC,
    );
    let other_mac = with_macs(udp4(OUTSIDE, POD1, 1, 2, 64, b""), ROUTER_MAC, ROUTER_MAC);
    let to_elsewhere = with_macs(
        udp4(OUTSIDE, REMOTE_POD, 1, 2, 64, b""),
        ROUTER_MAC,
        UPLINK_MAC,
    );
    for f in [to_node, other_mac, to_elsewhere] {
        let mut buf = Buf::new();
        let mut frame = buf.frame(&f, UPLINK);
        assert_eq!(p.process(&mut frame, &t, T0), Verdict::ToHost);
    }
}

// ── underlay ────────────────────────────────────────────────────────────────

#[test]
fn underlay_is_routed_with_ttl_decremented() {
    let t = tables(false);
    let input = tcp4(POD1, UNDERLAY_POD, 40000, 80, 20, false, b"data");
    let mut buf = Buf::new();
    let mut frame = buf.frame(&input, POD1_PORT);
    assert_eq!(
        pipeline().process(&mut frame, &t, T0),
        Verdict::Forward { port: UPLINK }
    );
    let out = frame.data();
    assert_eq!(&out[0..6], &UNDERLAY_NODE_MAC.0);
    assert_eq!(&out[6..12], &UPLINK_MAC.0);
    assert_eq!(out[22], 19);
    assert_eq!(&out[26..], &input[26..]);
    assert_checksums(out, 0);
    // And from the uplink to a local pod (the other node's pod answering).
    let back = with_macs(
        tcp4(UNDERLAY_POD, POD1, 80, 40000, 20, false, b"ok"),
        UNDERLAY_NODE_MAC,
        UPLINK_MAC,
    );
    let mut buf = Buf::new();
    let mut frame = buf.frame(&back, UPLINK);
    assert_eq!(
        pipeline().process(&mut frame, &t, T0),
        Verdict::Forward { port: POD1_PORT }
    );
    assert_eq!(&frame.data()[0..6], &POD1_MAC.0);
    assert_eq!(frame.data()[22], 19);
    assert_checksums(frame.data(), 0);
}

#[test]
fn outside_without_snat_is_routed_unchanged() {
    let t = tables(false);
    let input = udp4(POD1, OUTSIDE, 5000, 53, 64, b"query");
    let mut buf = Buf::new();
    let mut frame = buf.frame(&input, POD1_PORT);
    assert_eq!(
        pipeline().process(&mut frame, &t, T0),
        Verdict::Forward { port: UPLINK }
    );
    let out = frame.data();
    assert_eq!(&out[0..6], &ROUTER_MAC.0);
    assert_eq!(ip4(out, 26), POD1);
    assert_eq!(u16_at(out, 34), 5000);
    assert_checksums(out, 0);
}

#[test]
fn known_nodes_follow_the_snapshot_in_force() {
    let others = (10..60u8).map(|i| Ipv4Addr::new(198, 18, 0, i));
    let mut t = tables(false);
    t.known_vteps = others.clone().chain([REMOTE_NODE]).collect();
    let mut p = pipeline();
    let inner = inner_to_pod1(64);
    let mut decide = |t: &hybridway_dataplane::tables::Tables| {
        let mut buf = Buf::new();
        let mut frame = buf.frame(&vxlan_in(REMOTE_NODE, 1, 0x08, &inner), UPLINK);
        p.process(&mut frame, t, T0)
    };
    assert_eq!(decide(&t), Verdict::Forward { port: POD1_PORT });
    // The next snapshot no longer has the node: its VXLAN is refused at once.
    let mut next = t.clone();
    next.generation += 1;
    next.known_vteps = others.collect();
    assert_eq!(decide(&next), Verdict::Drop(DropReason::VxlanUnknownSource));
    assert_eq!(decide(&t), Verdict::Forward { port: POD1_PORT });
}

#[test]
fn without_headroom_the_frame_is_refused_not_grown() {
    use hybridway_dataplane::frame::{Frame, FrameMeta};
    let t = tables(false);
    let mut p = pipeline();
    // 20 bytes of headroom: VXLAN needs 50, an ICMP error 28.
    for (input, want) in [
        (udp4(POD1, REMOTE_POD, 1, 2, 64, b"x"), DropReason::NoRoom),
        (udp4(POD1, OUTSIDE, 1, 2, 1, b"x"), DropReason::NoRoom),
    ] {
        let mut buf = vec![0u8; 20 + input.len() + 4];
        buf[20..20 + input.len()].copy_from_slice(&input);
        let mut frame = Frame::new(&mut buf, 20, input.len(), FrameMeta { in_port: POD1_PORT });
        assert_eq!(p.process(&mut frame, &t, T0), Verdict::Drop(want));
        assert!(frame.offset() + frame.len() <= 20 + input.len() + 4);
    }
}

#[test]
fn ttl_expiry_on_the_way_in_is_reported_from_the_node_address() {
    let t = tables(false);
    let input = with_macs(
        udp4(UNDERLAY_POD, POD1, 1, 2, 1, b"x"),
        UNDERLAY_NODE_MAC,
        UPLINK_MAC,
    );
    let mut buf = Buf::new();
    let mut frame = buf.frame(&input, UPLINK);
    assert_eq!(pipeline().process(&mut frame, &t, T0), Verdict::Reply);
    let out = frame.data();
    assert_eq!(&out[0..6], &UNDERLAY_NODE_MAC.0);
    assert_eq!(&out[6..12], &UPLINK_MAC.0);
    assert_eq!(ip4(out, 26), NODE);
    assert_eq!(ip4(out, 30), UNDERLAY_POD);
    assert_eq!(&out[34..36], &[11, 0]);
    assert_checksums(out, 0);
}
