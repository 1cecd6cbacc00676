//! Masquerading: pod traffic to the outside translated to the node address, replies
//! and ICMP errors about translated flows translated back, hand-off between workers.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod pipeline_support;

use std::net::Ipv4Addr;

use hybridway_dataplane::pipeline::Pipeline;
use hybridway_dataplane::tables::{FlowKey, FlowState, L4Proto, SnatConfig, owner_of_remote};
use hybridway_dataplane::verdict::{DropReason, Verdict};
use hybridway_dataplane::wire::checksum;
use pipeline_support::*;
use proptest::prelude::*;

fn put16(f: &mut [u8], at: usize, v: u16) {
    f[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// The packet a remote host sends back for `out` (a translated packet that left the
/// uplink): addresses and ports swapped, which keeps every checksum valid; echo
/// requests become replies.
fn reply_to(out: &[u8]) -> Vec<u8> {
    let mut r = out.to_vec();
    r[0..6].copy_from_slice(&UPLINK_MAC.0);
    r[6..12].copy_from_slice(&ROUTER_MAC.0);
    let (src, dst) = (ip4(out, 26), ip4(out, 30));
    r[26..30].copy_from_slice(&dst.octets());
    r[30..34].copy_from_slice(&src.octets());
    r[22] = 64;
    fix_ipv4_checksum(&mut r, 14);
    match out[23] {
        6 | 17 => {
            put16(&mut r, 34, u16_at(out, 36));
            put16(&mut r, 36, u16_at(out, 34));
        }
        1 => {
            r[34] = 0;
            put16(&mut r, 36, 0);
            let total = usize::from(u16_at(&r, 16));
            let c = checksum::checksum(&r[34..14 + total]);
            put16(&mut r, 36, c);
        }
        p => panic!("protocol {p}"),
    }
    r
}

#[test]
fn tcp_is_masqueraded_and_the_reply_restored() {
    let t = tables(true);
    let mut p = Pipeline::new(0, &SnatConfig::default());
    let syn = tcp4(POD1, OUTSIDE, 40000, 443, 64, true, b"");
    let (v, out) = run(&mut p, &t, &syn, POD1_PORT);
    assert_eq!(v, Verdict::Forward { port: UPLINK });
    assert_eq!(&out[0..6], &ROUTER_MAC.0);
    assert_eq!(&out[6..12], &UPLINK_MAC.0);
    assert_eq!(ip4(&out, 26), NODE);
    assert_eq!(ip4(&out, 30), OUTSIDE);
    assert_eq!(out[22], 63);
    let nat_port = u16_at(&out, 34);
    assert!(nat_port >= 1024);
    assert_eq!(u16_at(&out, 36), 443);
    assert_checksums(&out, 0);
    assert_eq!(p.snat().len(), 1);

    let (v, back) = run(&mut p, &t, &reply_to(&out), UPLINK);
    assert_eq!(v, Verdict::Forward { port: POD1_PORT });
    assert_eq!(&back[0..6], &POD1_MAC.0);
    assert_eq!(&back[6..12], &GATEWAY_MAC.0);
    assert_eq!(ip4(&back, 26), OUTSIDE);
    assert_eq!(ip4(&back, 30), POD1);
    assert_eq!(u16_at(&back, 34), 443);
    assert_eq!(u16_at(&back, 36), 40000);
    assert_eq!(back[22], 63);
    assert_checksums(&back, 0);

    // The same flow keeps its port.
    let (_, again) = run(
        &mut p,
        &t,
        &tcp4(POD1, OUTSIDE, 40000, 443, 64, false, b"more"),
        POD1_PORT,
    );
    assert_eq!(u16_at(&again, 34), nat_port);
    assert_eq!(p.snat().len(), 1);
}

/// A segment from OUTSIDE:443 to the node's `nat_port`, as it arrives on the uplink.
fn from_outside(nat_port: u16, seq: u32, flags: &str) -> Vec<u8> {
    let mut b = eth(ROUTER_MAC, UPLINK_MAC)
        .ipv4(OUTSIDE.octets(), NODE.octets(), 64)
        .tcp(443, nat_port, seq, 64000);
    for flag in flags.chars() {
        b = match flag {
            'S' => b.syn(),
            'A' => b.ack(1001),
            'R' => b.rst(),
            f => panic!("flag {f}"),
        };
    }
    let mut v = Vec::new();
    b.write(&mut v, b"").unwrap();
    v
}

#[test]
fn a_reset_outside_the_flows_window_never_reaches_the_pod() {
    let t = tables(true);
    let mut p = Pipeline::new(0, &SnatConfig::default());
    // The pod's SYN has sequence number 1000, the remote's SYN-ACK 5000.
    let (_, out) = run(
        &mut p,
        &t,
        &tcp4(POD1, OUTSIDE, 40_010, 443, 64, true, b""),
        POD1_PORT,
    );
    let nat_port = u16_at(&out, 34);
    let (v, _) = run(&mut p, &t, &from_outside(nat_port, 5000, "SA"), UPLINK);
    assert_eq!(v, Verdict::Forward { port: POD1_PORT });
    let key = FlowKey {
        proto: L4Proto::Tcp,
        src: POD1,
        src_port: 40_010,
        dst: OUTSIDE,
        dst_port: 443,
    };
    assert_eq!(p.snat().state_of(&key), Some(FlowState::TcpEstablished));
    // An off-path guess of the NAT port with a sequence number far from 5001: not
    // translated (the host gets it, as any packet of no flow), the flow lives on.
    let (v, _) = run(
        &mut p,
        &t,
        &from_outside(nat_port, 5001 + (1 << 30), "R"),
        UPLINK,
    );
    assert_eq!(v, Verdict::ToHost);
    assert_eq!(p.snat().state_of(&key), Some(FlowState::TcpEstablished));
    // The remote's own reset, at the sequence number the pod expects, closes it.
    let (v, back) = run(&mut p, &t, &from_outside(nat_port, 5001, "R"), UPLINK);
    assert_eq!(v, Verdict::Forward { port: POD1_PORT });
    assert_eq!(u16_at(&back, 36), 40_010);
    assert_eq!(p.snat().state_of(&key), Some(FlowState::TcpClose));
}

#[test]
fn udp_without_checksum_keeps_none() {
    let t = tables(true);
    let mut p = Pipeline::new(0, &SnatConfig::default());
    let mut f = udp4(POD1, OUTSIDE, 5000, 53, 64, b"query");
    put16(&mut f, 40, 0);
    let (v, out) = run(&mut p, &t, &f, POD1_PORT);
    assert_eq!(v, Verdict::Forward { port: UPLINK });
    assert_eq!(ip4(&out, 26), NODE);
    assert_eq!(u16_at(&out, 40), 0);
    assert_checksums(&out, 0);
}

#[test]
fn ping_identifier_is_translated() {
    let t = tables(true);
    let mut p = Pipeline::new(0, &SnatConfig::default());
    let (v, out) = run(
        &mut p,
        &t,
        &ping4(POD1, OUTSIDE, 0x1234, 64, false, b"abcdefgh"),
        POD1_PORT,
    );
    assert_eq!(v, Verdict::Forward { port: UPLINK });
    assert_eq!(ip4(&out, 26), NODE);
    assert_checksums(&out, 0);
    let (v, back) = run(&mut p, &t, &reply_to(&out), UPLINK);
    assert_eq!(v, Verdict::Forward { port: POD1_PORT });
    assert_eq!(ip4(&back, 30), POD1);
    assert_eq!(back[34], 0);
    assert_eq!(u16_at(&back, 38), 0x1234);
    assert_checksums(&back, 0);
    // A ping to the node itself is the host's.
    let (v, _) = run(
        &mut p,
        &t,
        &with_macs(
            ping4(OUTSIDE, NODE, 7, 64, false, b""),
            ROUTER_MAC,
            UPLINK_MAC,
        ),
        UPLINK,
    );
    assert_eq!(v, Verdict::ToHost);
}

/// An ICMP error from `from` about the packet `about` (which left the uplink).
fn icmp_error_about(about: &[u8], from: Ipv4Addr, icmp_type: u8, code: u8) -> Vec<u8> {
    let err = icmp4_error(about, 14, from, NODE, (icmp_type, code), [0; 4]);
    with_macs(err, ROUTER_MAC, UPLINK_MAC)
}

#[test]
fn icmp_error_about_a_translated_flow_is_translated_back() {
    let t = tables(true);
    let mut p = Pipeline::new(0, &SnatConfig::default());
    for (original, proto) in [
        (udp4(POD1, OUTSIDE, 5000, 53, 64, b"query"), 17u8),
        (tcp4(POD1, OUTSIDE, 40000, 443, 64, true, b""), 6),
        (ping4(POD1, OUTSIDE, 0x4242, 64, false, b"ping"), 1),
    ] {
        let (_, out) = run(&mut p, &t, &original, POD1_PORT);
        let err = icmp_error_about(&out, OUTSIDE, 3, 3);
        let (v, back) = run(&mut p, &t, &err, UPLINK);
        assert_eq!(v, Verdict::Forward { port: POD1_PORT }, "proto {proto}");
        assert_eq!(ip4(&back, 26), OUTSIDE);
        assert_eq!(ip4(&back, 30), POD1, "outer destination");
        assert_checksums(&back, 0);
        // The quoted packet is the original as it left the pod (TTL one less).
        let q = 42;
        assert_eq!(ip4(&back, q + 12), POD1, "quoted source");
        assert_eq!(ip4(&back, q + 16), OUTSIDE);
        assert_eq!(
            checksum::checksum(&back[q..q + 20]),
            0,
            "quoted IP header checksum"
        );
        assert_eq!(
            &back[q + 20..],
            &original[34..],
            "quoted transport header restored, checksum included"
        );
    }
    // A truncated quote (only 8 transport bytes of TCP) is still translated.
    let (_, out) = run(
        &mut p,
        &t,
        &tcp4(POD1, OUTSIDE, 40001, 443, 64, true, b""),
        POD1_PORT,
    );
    let mut short = out.clone();
    short.truncate(14 + 28);
    put16(&mut short, 16, 28);
    let err = icmp_error_about(&short, OUTSIDE, 11, 0);
    let (v, back) = run(&mut p, &t, &err, UPLINK);
    assert_eq!(v, Verdict::Forward { port: POD1_PORT });
    assert_eq!(u16_at(&back, 42 + 20), 40001);
    assert_checksums(&back, 0);
}

#[test]
fn flows_and_replies_are_handed_to_the_worker_that_owns_the_destination() {
    let t = tables(true);
    let config = SnatConfig {
        workers: 2,
        ..SnatConfig::default()
    };
    let owner = owner_of_remote(&config, L4Proto::Udp, OUTSIDE, 53).unwrap();
    let mut workers = [Pipeline::new(0, &config), Pipeline::new(1, &config)];
    let [w0, w1] = &mut workers;
    let (owner_p, other) = if owner == 0 { (w0, w1) } else { (w1, w0) };
    let query = udp4(POD1, OUTSIDE, 5000, 53, 64, b"q");
    // The pod's packet reaches the other worker first: handed over untouched.
    let (v, unchanged) = run(other, &t, &query, POD1_PORT);
    assert_eq!(v, Verdict::HandOff { worker: owner });
    assert_eq!(unchanged, query, "a handed-off frame is not modified");
    assert_eq!(other.snat().len(), 0);
    let (v, out) = run(owner_p, &t, &query, POD1_PORT);
    assert_eq!(v, Verdict::Forward { port: UPLINK });
    let reply = reply_to(&out);
    let (v, unchanged) = run(other, &t, &reply, UPLINK);
    assert_eq!(v, Verdict::HandOff { worker: owner });
    assert_eq!(unchanged, reply, "a handed-off frame is not modified");
    let (v, back) = run(owner_p, &t, &reply, UPLINK);
    assert_eq!(v, Verdict::Forward { port: POD1_PORT });
    assert_eq!(ip4(&back, 30), POD1);
    // ICMP errors are handed off by the quoted flow's destination too.
    let (v, _) = run(other, &t, &icmp_error_about(&out, OUTSIDE, 3, 3), UPLINK);
    assert_eq!(v, Verdict::HandOff { worker: owner });
}

#[test]
fn exhausted_ports_answer_the_pod_with_admin_prohibited_and_count() {
    let t = tables(true);
    // One NAT port, which the pod's first connection keeps.
    let config = SnatConfig {
        port_range: 40_000..=40_000,
        ..SnatConfig::default()
    };
    let mut p = Pipeline::new(0, &config);
    let first = tcp4(POD1, OUTSIDE, 40_000, 443, 64, true, b"");
    assert_eq!(
        run(&mut p, &t, &first, POD1_PORT).0,
        Verdict::Forward { port: UPLINK }
    );
    let second = tcp4(POD1, OUTSIDE, 40_001, 443, 64, true, b"");
    let (v, err) = run(&mut p, &t, &second, POD1_PORT);
    assert_eq!(v, Verdict::Refuse(DropReason::SnatPortsExhausted));
    // Back to the pod, from its gateway: destination unreachable, administratively
    // prohibited, quoting the pod's own SYN so its socket fails at once.
    assert_eq!(&err[0..6], &POD1_MAC.0);
    assert_eq!(&err[6..12], &GATEWAY_MAC.0);
    assert_eq!(ip4(&err, 26), GATEWAY);
    assert_eq!(ip4(&err, 30), POD1);
    assert_eq!(err[23], 1, "ICMP");
    assert_eq!((err[34], err[35]), (3, 13));
    assert_eq!(
        &err[42..42 + 20 + 20],
        &second[14..14 + 40],
        "the SYN is quoted"
    );
    assert_checksums(&err, 0);
    // UDP and ping get the same answer; another destination still has the port.
    let (v, _) = run(
        &mut p,
        &t,
        &udp4(POD1, OUTSIDE, 7, 443, 64, b"q"),
        POD1_PORT,
    );
    assert_eq!(
        v,
        Verdict::Forward { port: UPLINK },
        "UDP is another mapping"
    );
    let (v, _) = run(
        &mut p,
        &t,
        &udp4(POD2, OUTSIDE, 8, 443, 64, b"q"),
        POD2_PORT,
    );
    assert_eq!(v, Verdict::Refuse(DropReason::SnatPortsExhausted));
    let elsewhere = tcp4(
        POD1,
        Ipv4Addr::new(198, 18, 100, 8),
        40_001,
        443,
        64,
        true,
        b"",
    );
    assert_eq!(
        run(&mut p, &t, &elsewhere, POD1_PORT).0,
        Verdict::Forward { port: UPLINK }
    );
}

#[test]
fn exhaustion_past_the_icmp_rate_limit_is_still_a_counted_drop() {
    let t = tables(true);
    let config = SnatConfig {
        port_range: 40_000..=40_000,
        ..SnatConfig::default()
    };
    let mut p = Pipeline::new(0, &config);
    run(&mut p, &t, &udp4(POD1, OUTSIDE, 1, 53, 64, b"q"), POD1_PORT);
    let verdicts: Vec<Verdict> = (0..200)
        .map(|i| {
            run(
                &mut p,
                &t,
                &udp4(POD1, OUTSIDE, 2 + i, 53, 64, b"q"),
                POD1_PORT,
            )
            .0
        })
        .collect();
    let refused = verdicts
        .iter()
        .filter(|v| **v == Verdict::Refuse(DropReason::SnatPortsExhausted))
        .count();
    let dropped = verdicts
        .iter()
        .filter(|v| **v == Verdict::Drop(DropReason::SnatPortsExhausted))
        .count();
    assert!(
        refused > 0 && dropped > 0,
        "{refused} refused, {dropped} dropped"
    );
    assert_eq!(refused + dropped, 200);
}

#[test]
fn traffic_to_the_node_without_a_flow_goes_to_the_host() {
    let t = tables(true);
    let mut p = Pipeline::new(0, &SnatConfig::default());
    // A port outside the SNAT range (ssh) and an unknown one inside it.
    for port in [22u16, 30000] {
        let f = with_macs(
            tcp4(OUTSIDE, NODE, 5555, port, 64, true, b""),
            ROUTER_MAC,
            UPLINK_MAC,
        );
        assert_eq!(
            run(&mut p, &t, &f, UPLINK).0,
            Verdict::ToHost,
            "port {port}"
        );
    }
}

#[test]
fn no_snat_destinations_and_snat_off_are_not_translated() {
    let t = tables(true);
    let mut p = Pipeline::new(0, &SnatConfig::default());
    // 198.18.0.50 is outside the cluster routes but in the no-SNAT ranges.
    let dst = Ipv4Addr::new(198, 18, 0, 50);
    let (v, out) = run(&mut p, &t, &udp4(POD1, dst, 5000, 53, 64, b"q"), POD1_PORT);
    assert_eq!(v, Verdict::Forward { port: UPLINK });
    assert_eq!(ip4(&out, 26), POD1);
    assert_eq!(p.snat().len(), 0);
}

#[test]
fn untranslatable_packets_are_counted() {
    let t = tables(true);
    let mut p = Pipeline::new(0, &SnatConfig::default());
    // A non-first fragment.
    let mut frag = udp4(POD1, OUTSIDE, 5000, 53, 64, b"fragment data");
    put16(&mut frag, 20, 0x0010);
    fix_ipv4_checksum(&mut frag, 14);
    assert_eq!(
        run(&mut p, &t, &frag, POD1_PORT).0,
        Verdict::Drop(DropReason::UntranslatableFragment)
    );
    // IPv6 to the outside while SNAT is on.
    let v6 = udp6(POD1_6, OUTSIDE6, 1, 2, 64, b"x");
    assert_eq!(
        run(&mut p, &t, &v6, POD1_PORT).0,
        Verdict::Drop(DropReason::Unsupported)
    );
    // A protocol with no ports (GRE).
    let mut gre = udp4(POD1, OUTSIDE, 1, 2, 64, b"x");
    gre[23] = 47;
    fix_ipv4_checksum(&mut gre, 14);
    assert_eq!(
        run(&mut p, &t, &gre, POD1_PORT).0,
        Verdict::Drop(DropReason::Unsupported)
    );
}

#[test]
fn a_full_table_is_a_counted_drop() {
    let t = tables(true);
    let config = SnatConfig {
        capacity_per_worker: 4,
        ..SnatConfig::default()
    };
    let mut p = Pipeline::new(0, &config);
    let verdicts: Vec<_> = (0..6)
        .map(|i| {
            run(
                &mut p,
                &t,
                &udp4(POD1, OUTSIDE, 5000 + i, 53, 64, b"q"),
                POD1_PORT,
            )
            .0
        })
        .collect();
    assert!(
        verdicts[..4]
            .iter()
            .all(|v| *v == Verdict::Forward { port: UPLINK })
    );
    assert_eq!(verdicts[4], Verdict::Drop(DropReason::ConntrackFull));
}

#[derive(Debug, Clone)]
enum Flow {
    Tcp {
        sport: u16,
        dport: u16,
        syn: bool,
    },
    Udp {
        sport: u16,
        dport: u16,
        zero_csum: bool,
    },
    Echo {
        id: u16,
    },
}

fn flow() -> impl Strategy<Value = Flow> {
    prop_oneof![
        (1u16.., 1u16.., any::<bool>()).prop_map(|(sport, dport, syn)| Flow::Tcp {
            sport,
            dport,
            syn
        }),
        (1u16.., 1u16.., any::<bool>()).prop_map(|(sport, dport, zero_csum)| Flow::Udp {
            sport,
            dport,
            zero_csum
        }),
        any::<u16>().prop_map(|id| Flow::Echo { id }),
    ]
}

proptest! {
    /// Masquerading a packet and un-masquerading the reply gives exactly the reply the
    /// pod would have got without NAT: addresses, ports/identifier and checksums.
    #[test]
    fn snat_then_unsnat_restores_the_flow(
        flow in flow(),
        pod_host in 10u8..12,
        remote in any::<[u8; 2]>(),
        payload in proptest::collection::vec(any::<u8>(), 0..200),
        workers in 1u16..4,
    ) {
        let t = tables(true);
        let pod = Ipv4Addr::new(198, 19, 1, pod_host);
        let port = if pod_host == 10 { POD1_PORT } else { POD2_PORT };
        let remote = Ipv4Addr::new(198, 18, 100 + remote[0] % 100, remote[1]);
        let original = match flow {
            Flow::Tcp { sport, dport, syn } => tcp4(pod, remote, sport, dport, 64, syn, &payload),
            Flow::Udp { sport, dport, zero_csum } => {
                let mut f = udp4(pod, remote, sport, dport, 64, &payload);
                if zero_csum { put16(&mut f, 40, 0); }
                f
            }
            Flow::Echo { id } => ping4(pod, remote, id, 64, false, &payload),
        };
        let config = SnatConfig { workers, ..SnatConfig::default() };
        let mut pipelines: Vec<Pipeline> = (0..workers).map(|w| Pipeline::new(w, &config)).collect();
        let dport = match flow {
            Flow::Tcp { dport, .. } | Flow::Udp { dport, .. } => dport,
            Flow::Echo { id } => id,
        };
        let proto = match flow {
            Flow::Tcp { .. } => L4Proto::Tcp,
            Flow::Udp { .. } => L4Proto::Udp,
            Flow::Echo { .. } => L4Proto::IcmpEcho,
        };
        let owner = usize::from(owner_of_remote(&config, proto, remote, dport).unwrap());
        let (v, out) = run(&mut pipelines[owner], &t, &original, port);
        prop_assert_eq!(v, Verdict::Forward { port: UPLINK });
        prop_assert_eq!(ip4(&out, 26), NODE);
        assert_checksums(&out, 0);
        let reply = reply_to(&out);
        // Whichever worker receives the reply, it ends up at the owner.
        let (v, _) = run(&mut pipelines[0], &t, &reply, UPLINK);
        if owner != 0 {
            prop_assert_eq!(v, Verdict::HandOff { worker: owner as u16 });
        }
        let (v, back) = run(&mut pipelines[owner], &t, &reply, UPLINK);
        prop_assert_eq!(v, Verdict::Forward { port });
        let expected = reply_to(&original);
        prop_assert_eq!(ip4(&back, 26), remote);
        prop_assert_eq!(ip4(&back, 30), pod);
        // Transport header and payload byte for byte (ports, id, checksum).
        prop_assert_eq!(&back[34..], &expected[34..]);
        assert_checksums(&back, 0);
    }
}

#[test]
fn a_nat_port_equal_to_the_vxlan_port_still_gets_its_replies() {
    let t = tables(true);
    // A one-port range: the only NAT port is 8472.
    let config = SnatConfig {
        port_range: 8472..=8472,
        ..SnatConfig::default()
    };
    let mut p = Pipeline::new(0, &config);
    let (v, out) = run(
        &mut p,
        &t,
        &udp4(POD1, OUTSIDE, 5000, 53, 64, b"q"),
        POD1_PORT,
    );
    assert_eq!(v, Verdict::Forward { port: UPLINK });
    assert_eq!(u16_at(&out, 34), 8472);
    let (v, back) = run(&mut p, &t, &reply_to(&out), UPLINK);
    assert_eq!(v, Verdict::Forward { port: POD1_PORT });
    assert_eq!(ip4(&back, 30), POD1);
    // Real VXLAN from a known node is still decapsulated, and from others dropped.
    let inner = with_macs(
        udp4(REMOTE_POD, POD1, 1, 2, 64, b"x"),
        REMOTE_VTEP_MAC,
        VTEP_MAC,
    );
    assert_eq!(
        run(&mut p, &t, &vxlan_in(REMOTE_NODE, 1, 0x08, &inner), UPLINK).0,
        Verdict::Forward { port: POD1_PORT }
    );
    assert_eq!(
        run(
            &mut p,
            &t,
            &vxlan_in(Ipv4Addr::new(198, 18, 100, 9), 1, 0x08, &inner),
            UPLINK
        )
        .0,
        Verdict::Drop(DropReason::VxlanUnknownSource)
    );
}

#[test]
fn a_batch_decides_exactly_like_one_frame_at_a_time() {
    use hybridway_dataplane::frame::{FRAME_BUFFER_SIZE, Frame, FrameMeta};
    let t = tables(true);
    let config = SnatConfig {
        workers: 2,
        ..SnatConfig::default()
    };
    // Flows established on worker 0 first, so the batch holds replies too.
    let mut seed = Pipeline::new(0, &config);
    let mut replies = Vec::new();
    for i in 0..20u16 {
        let (_, out) = run(
            &mut seed,
            &t,
            &udp4(POD1, OUTSIDE, 6000 + i, 53, 64, b"q"),
            POD1_PORT,
        );
        replies.push(reply_to(&out));
    }
    let mut inputs: Vec<(Vec<u8>, hybridway_dataplane::frame::PortId)> = Vec::new();
    for i in 0..150u16 {
        let f = match i % 6 {
            0 => (udp4(POD1, OUTSIDE, 7000 + i, 53, 64, b"new"), POD1_PORT),
            1 => (replies[usize::from(i) % 20].clone(), UPLINK),
            2 => (tcp4(POD1, POD2, 1, 2, 64, true, b""), POD1_PORT),
            3 => (udp4(POD1, REMOTE_POD, 1, 2, 64, b"x"), POD1_PORT),
            4 => (
                with_macs(
                    tcp4(OUTSIDE, NODE, 5555, 7000 + i, 64, true, b""),
                    ROUTER_MAC,
                    UPLINK_MAC,
                ),
                UPLINK,
            ),
            _ => (udp4(POD1, OUTSIDE, 7000 + i, 53, 1, b"expiring"), POD1_PORT),
        };
        inputs.push(f);
    }
    // One at a time.
    let mut one = Pipeline::new(0, &config);
    let _ = clone_state(&mut one, &t);
    let expected: Vec<(Verdict, Vec<u8>)> = inputs
        .iter()
        .map(|(f, port)| run(&mut one, &t, f, *port))
        .collect();
    // As one batch (three groups of at most 64).
    let mut batched = Pipeline::new(0, &config);
    let _ = clone_state(&mut batched, &t);
    let mut bufs: Vec<Vec<u8>> = inputs
        .iter()
        .map(|_| vec![0u8; FRAME_BUFFER_SIZE])
        .collect();
    let mut frames: Vec<Frame<'_>> = bufs
        .iter_mut()
        .zip(&inputs)
        .map(|(b, (f, port))| Frame::copy_from(b, f, FrameMeta { in_port: *port }).unwrap())
        .collect();
    let mut verdicts = vec![Verdict::ToHost; frames.len()];
    batched.process_batch(&mut frames, &t, T0, &mut verdicts);
    for (i, ((v, bytes), frame)) in expected.iter().zip(&frames).enumerate() {
        assert_eq!(verdicts[i], *v, "frame {i}");
        assert_eq!(frame.data(), &bytes[..], "frame {i}");
    }
    assert!(
        verdicts.contains(&Verdict::Forward { port: POD1_PORT }),
        "replies were translated"
    );
}

/// Puts the same 20 established flows into a fresh pipeline (NAT ports are
/// deterministic for a fresh shard).
fn clone_state(p: &mut Pipeline, t: &hybridway_dataplane::tables::Tables) -> usize {
    for i in 0..20u16 {
        let _ = run(
            p,
            t,
            &udp4(POD1, OUTSIDE, 6000 + i, 53, 64, b"q"),
            POD1_PORT,
        );
    }
    p.snat().len()
}
