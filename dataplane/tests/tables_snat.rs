//! Conntrack/SNAT shard behaviour: bindings, per-state timeouts, capacity, port
//! slices, ICMP echo identifiers, and a model check against a plain HashMap.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::time::Duration;

use hybridway_dataplane::tables::conntrack::{Direction, tcp_flags::*};
use hybridway_dataplane::tables::{
    FlowKey, FlowState, L4Proto, NatBinding, SnatConfig, SnatError, SnatShard, TcpSegment,
    Timeouts, owner_of_remote,
};
use hybridway_dataplane::{DropReason, Now};
use proptest::prelude::*;

const NAT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
const POD: Ipv4Addr = Ipv4Addr::new(198, 19, 1, 5);
const REMOTE: Ipv4Addr = Ipv4Addr::new(198, 18, 200, 1);

fn timeouts() -> Timeouts {
    Timeouts {
        tcp_syn_sent: Duration::from_secs(10),
        tcp_established: Duration::from_secs(1000),
        tcp_fin_wait: Duration::from_secs(20),
        tcp_last_ack: Duration::from_secs(20),
        tcp_time_wait: Duration::from_secs(20),
        tcp_close: Duration::from_secs(20),
        udp: Duration::from_secs(30),
        icmp: Duration::from_secs(5),
    }
}

fn config(capacity: usize) -> SnatConfig {
    SnatConfig {
        workers: 1,
        port_range: 10_000..=19_999,
        capacity_per_worker: capacity,
        timeouts: timeouts(),
    }
}

fn key(proto: L4Proto, src_port: u16, dst_port: u16) -> FlowKey {
    FlowKey {
        proto,
        src: POD,
        src_port,
        dst: REMOTE,
        dst_port,
    }
}

/// The reply to `out` after translation to `b`, as it arrives on the wire.
fn reply(out: &FlowKey, b: NatBinding) -> FlowKey {
    let dst_port = b.port;
    let src_port = if out.proto == L4Proto::IcmpEcho {
        b.port
    } else {
        out.dst_port
    };
    FlowKey {
        proto: out.proto,
        src: out.dst,
        src_port,
        dst: b.addr,
        dst_port,
    }
}

/// A segment with `flags` and every sequence number 0 (in the window of a flow
/// whose segments all are).
fn seg(flags: u8) -> TcpSegment {
    TcpSegment::with_flags(flags)
}

fn secs(s: u64) -> Now {
    Now::from_millis(s * 1000)
}

#[test]
fn outbound_binding_is_stable_and_reply_maps_back() {
    let mut shard = SnatShard::new(0, &config(16));
    let k = key(L4Proto::Udp, 5353, 53);
    let b = shard.outbound(&k, NAT, seg(0), secs(1)).unwrap();
    assert_eq!(b.addr, NAT);
    assert!((10_000..=19_999).contains(&b.port));
    assert_eq!(shard.outbound(&k, NAT, seg(0), secs(2)).unwrap(), b);
    assert_eq!(shard.len(), 1);
    let r = reply(&k, b);
    assert_eq!(
        shard.inbound(&r, seg(0), secs(3)),
        Some(NatBinding {
            addr: POD,
            port: 5353
        })
    );
    // A different remote port, or a stranger, gets nothing (port-dependent filtering).
    assert_eq!(
        shard.inbound(&FlowKey { src_port: 54, ..r }, seg(0), secs(3)),
        None
    );
    assert_eq!(
        shard.inbound(
            &FlowKey {
                src: Ipv4Addr::new(198, 18, 200, 2),
                ..r
            },
            seg(0),
            secs(3)
        ),
        None
    );
    assert_eq!(
        shard.inbound(
            &FlowKey {
                proto: L4Proto::Tcp,
                ..r
            },
            seg(0),
            secs(3)
        ),
        None
    );
}

#[test]
fn udp_times_out_after_its_idle_timeout_and_refresh_extends_it() {
    let mut shard = SnatShard::new(0, &config(16));
    let k = key(L4Proto::Udp, 4000, 53);
    let b = shard.outbound(&k, NAT, seg(0), secs(0)).unwrap();
    let r = reply(&k, b);
    // Refreshed by the reply at 20 s: alive until 50 s.
    assert!(shard.inbound(&r, seg(0), secs(20)).is_some());
    assert_eq!(shard.sweep(secs(45), usize::MAX), 0);
    assert!(
        shard
            .inbound(&r, seg(0), Now::from_millis(49_999))
            .is_some()
    );
    // Last refresh at 49.999 s: expired at 79.999 s.
    assert!(
        shard
            .inbound(&r, seg(0), Now::from_millis(79_999))
            .is_none()
    );
    assert_eq!(shard.sweep(secs(82), usize::MAX), 1);
    assert_eq!(shard.len(), 0);
    assert_eq!(shard.peek_inbound(&r), None);
}

#[test]
fn tcp_states_pick_their_timeouts() {
    let mut shard = SnatShard::new(0, &config(16));
    let k = key(L4Proto::Tcp, 40_000, 443);

    // SYN only: syn timeout (10 s).
    let b = shard.outbound(&k, NAT, seg(SYN), secs(0)).unwrap();
    assert_eq!(shard.state_of(&k), Some(FlowState::TcpSynSent));
    let r = reply(&k, b);
    assert!(
        shard.inbound(&r, seg(SYN | ACK), secs(11)).is_none(),
        "unanswered SYN expires after tcp_syn_sent"
    );
    assert_eq!(shard.sweep(secs(12), usize::MAX), 1);

    // Handshake completes: established timeout (1000 s).
    let b = shard.outbound(&k, NAT, seg(SYN), secs(100)).unwrap();
    let r = reply(&k, b);
    assert!(shard.inbound(&r, seg(SYN | ACK), secs(101)).is_some());
    assert_eq!(shard.state_of(&k), Some(FlowState::TcpEstablished));
    assert_eq!(shard.outbound(&k, NAT, seg(ACK), secs(102)).unwrap(), b);
    assert_eq!(shard.sweep(secs(900), usize::MAX), 0);
    assert!(
        shard.inbound(&r, seg(ACK), secs(1101)).is_some(),
        "established lives tcp_established"
    );

    // FIN: closing timeout (20 s) even though established had ~1000 s left; the
    // sweep must find it at the shorter expiry.
    assert!(shard.inbound(&r, seg(FIN | ACK), secs(1102)).is_some());
    assert_eq!(shard.state_of(&k), Some(FlowState::TcpFinIn));
    assert_eq!(shard.sweep(secs(1115), usize::MAX), 0);
    assert_eq!(shard.sweep(secs(1124), usize::MAX), 1);
    assert_eq!(shard.len(), 0);
}

#[test]
fn rst_closes_and_new_syn_reopens() {
    let mut shard = SnatShard::new(0, &config(16));
    let k = key(L4Proto::Tcp, 40_001, 80);
    let b = shard.outbound(&k, NAT, seg(SYN), secs(0)).unwrap();
    let r = reply(&k, b);
    shard.inbound(&r, seg(SYN | ACK), secs(1)).unwrap();
    shard.inbound(&r, seg(RST), secs(2)).unwrap();
    assert_eq!(shard.state_of(&k), Some(FlowState::TcpClose));
    assert_eq!(
        shard.outbound(&k, NAT, seg(SYN), secs(3)).unwrap(),
        b,
        "same tuple keeps its binding"
    );
    assert_eq!(shard.state_of(&k), Some(FlowState::TcpSynSent));
    // The state machine the shard follows, spelled out.
    assert_eq!(
        FlowState::TcpSynSent.next(Direction::Inbound, SYN | ACK),
        FlowState::TcpEstablished
    );
}

#[test]
fn icmp_echo_id_is_translated_and_restored() {
    let mut shard = SnatShard::new(0, &config(16));
    // Two pods pinging the same remote with the same identifier.
    let k1 = FlowKey {
        proto: L4Proto::IcmpEcho,
        src: POD,
        src_port: 7,
        dst: REMOTE,
        dst_port: 7,
    };
    let k2 = FlowKey {
        src: Ipv4Addr::new(198, 19, 1, 6),
        ..k1
    };
    let b1 = shard.outbound(&k1, NAT, seg(0), secs(0)).unwrap();
    let b2 = shard.outbound(&k2, NAT, seg(0), secs(0)).unwrap();
    assert_ne!(
        b1.port, b2.port,
        "identifiers must differ towards the same remote"
    );
    // The reply carries the translated identifier in both "port" fields.
    let r1 = FlowKey {
        proto: L4Proto::IcmpEcho,
        src: REMOTE,
        src_port: b1.port,
        dst: NAT,
        dst_port: b1.port,
    };
    assert_eq!(
        shard.inbound(&r1, seg(0), secs(1)),
        Some(NatBinding { addr: POD, port: 7 })
    );
    assert_eq!(
        shard.peek_inbound(&reply(&k2, b2)),
        Some(NatBinding {
            addr: k2.src,
            port: 7
        })
    );
    // ICMP timeout is 5 s after the last packet (the reply at 1 s).
    assert!(shard.inbound(&r1, seg(0), secs(6)).is_none());
}

#[test]
fn peek_does_not_refresh() {
    let mut shard = SnatShard::new(0, &config(16));
    let k = key(L4Proto::Udp, 1, 2);
    let b = shard.outbound(&k, NAT, seg(0), secs(0)).unwrap();
    let r = reply(&k, b);
    assert!(shard.peek_inbound(&r).is_some());
    assert!(shard.peek_inbound(&r).is_some());
    assert!(
        shard.inbound(&r, seg(0), secs(30)).is_none(),
        "peeks did not extend the 30 s UDP timeout"
    );
}

#[test]
fn full_table_reclaims_an_expired_entry_else_refuses() {
    let mut shard = SnatShard::new(0, &config(4));
    assert_eq!(shard.capacity(), 4);
    let keys: Vec<_> = (0..5).map(|i| key(L4Proto::Udp, 1000 + i, 53)).collect();
    for (i, k) in keys.iter().take(4).enumerate() {
        shard.outbound(k, NAT, seg(0), secs(i as u64)).unwrap();
    }
    assert_eq!(
        shard.outbound(&keys[4], NAT, seg(0), secs(10)),
        Err(SnatError::TableFull)
    );
    assert_eq!(
        DropReason::from(SnatError::TableFull),
        DropReason::ConntrackFull
    );
    // Keep all but the second flow alive; at 40 s only that one has expired.
    for k in [&keys[0], &keys[2], &keys[3]] {
        shard.outbound(k, NAT, seg(0), secs(20)).unwrap();
    }
    shard.outbound(&keys[4], NAT, seg(0), secs(40)).unwrap();
    assert_eq!(shard.len(), 4);
    let r1 = reply(
        &keys[1],
        NatBinding {
            addr: NAT,
            port: 10_001,
        },
    );
    assert_eq!(
        shard.peek_inbound(&r1),
        None,
        "the expired flow was the one reclaimed"
    );
    for k in [&keys[0], &keys[2], &keys[3], &keys[4]] {
        assert!(shard.state_of(k).is_some());
    }
}

#[test]
fn ports_are_reused_per_destination_until_exhausted() {
    let cfg = SnatConfig {
        port_range: 20_000..=20_002,
        ..config(64)
    };
    let mut shard = SnatShard::new(0, &cfg);
    let mut used = HashSet::new();
    for i in 0..3 {
        let b = shard
            .outbound(&key(L4Proto::Tcp, 100 + i, 443), NAT, seg(SYN), secs(0))
            .unwrap();
        assert!(
            used.insert(b.port),
            "port {} handed out twice towards one destination",
            b.port
        );
    }
    assert_eq!(
        shard.outbound(&key(L4Proto::Tcp, 200, 443), NAT, seg(SYN), secs(0)),
        Err(SnatError::PortsExhausted)
    );
    assert_eq!(
        DropReason::from(SnatError::PortsExhausted),
        DropReason::SnatPortsExhausted
    );
    // Another remote port, another protocol, or another remote: the same ports again.
    shard
        .outbound(&key(L4Proto::Tcp, 200, 8443), NAT, seg(SYN), secs(0))
        .unwrap();
    shard
        .outbound(&key(L4Proto::Udp, 200, 443), NAT, seg(0), secs(0))
        .unwrap();
    let other = FlowKey {
        dst: Ipv4Addr::new(198, 18, 200, 9),
        ..key(L4Proto::Tcp, 200, 443)
    };
    assert!(used.contains(&shard.outbound(&other, NAT, seg(SYN), secs(0)).unwrap().port));
    // Once a flow expires its port comes back.
    assert_eq!(
        shard.sweep(secs(11), usize::MAX),
        5,
        "all but the UDP flow (30 s)"
    );
    shard
        .outbound(&key(L4Proto::Tcp, 200, 443), NAT, seg(SYN), secs(11))
        .unwrap();
}

#[test]
fn changed_nat_address_starts_a_new_binding() {
    let mut shard = SnatShard::new(0, &config(16));
    let k = key(L4Proto::Udp, 9, 9);
    let b = shard.outbound(&k, NAT, seg(0), secs(0)).unwrap();
    let new_nat = Ipv4Addr::new(198, 18, 0, 11);
    let b2 = shard.outbound(&k, new_nat, seg(0), secs(1)).unwrap();
    assert_eq!(b2.addr, new_nat);
    assert_eq!(shard.len(), 1);
    assert_eq!(shard.peek_inbound(&reply(&k, b)), None);
    assert!(shard.peek_inbound(&reply(&k, b2)).is_some());
}

#[test]
fn every_destination_has_one_owner_and_every_worker_the_whole_range() {
    for workers in [1u16, 2, 3, 7] {
        let cfg = SnatConfig {
            workers,
            port_range: 1024..=65535,
            ..SnatConfig::default()
        };
        let mut per_worker = vec![0usize; usize::from(workers)];
        for i in 0..10_000u32 {
            let remote = Ipv4Addr::from(0xc612_0000 + i / 7);
            let port = 80 + (i % 7) as u16;
            let w = owner_of_remote(&cfg, L4Proto::Tcp, remote, port).unwrap();
            assert!(w < workers);
            per_worker[usize::from(w)] += 1;
            // ICMP echo: the identifier is the pod's, only the address counts.
            assert_eq!(
                owner_of_remote(&cfg, L4Proto::IcmpEcho, remote, port),
                owner_of_remote(&cfg, L4Proto::IcmpEcho, remote, 1),
            );
        }
        let fair = 10_000 / usize::from(workers);
        assert!(
            per_worker.iter().all(|&n| n > fair / 2),
            "destinations spread over the workers: {per_worker:?}"
        );
        for w in 0..workers {
            let shard = SnatShard::new(w, &cfg);
            assert_eq!(shard.ports(), 1024..=65535, "no port slices");
        }
    }
    let none = SnatConfig {
        workers: 0,
        ..SnatConfig::default()
    };
    assert_eq!(owner_of_remote(&none, L4Proto::Udp, REMOTE, 53), None);
    assert!(SnatConfig::default().is_nat_port(1024));
    assert!(!SnatConfig::default().is_nat_port(1023));
}

#[test]
fn the_pods_own_port_is_kept_when_in_range_and_free() {
    let mut shard = SnatShard::new(0, &config(64));
    // In the range (10,000-19,999) and free: kept.
    let k = key(L4Proto::Tcp, 15_000, 443);
    assert_eq!(
        shard.outbound(&k, NAT, seg(SYN), secs(0)).unwrap().port,
        15_000
    );
    // Another pod with the same port to the same destination: another port.
    let other = FlowKey {
        src: Ipv4Addr::new(198, 19, 1, 6),
        ..k
    };
    let b = shard.outbound(&other, NAT, seg(SYN), secs(0)).unwrap();
    assert_ne!(b.port, 15_000);
    // The same port towards another destination: kept again.
    let elsewhere = FlowKey {
        dst_port: 8443,
        ..other
    };
    assert_eq!(
        shard
            .outbound(&elsewhere, NAT, seg(SYN), secs(0))
            .unwrap()
            .port,
        15_000
    );
    // Outside the range: a port from the range.
    let low = key(L4Proto::Udp, 5353, 53);
    assert!((10_000..=19_999).contains(&shard.outbound(&low, NAT, seg(0), secs(0)).unwrap().port));
}

#[test]
fn a_port_search_starts_at_a_random_place() {
    // Pods whose own ports lie outside the range (10,000-19,999) need a searched
    // port. Searched from where the last one stopped, twenty flows would get twenty
    // consecutive ports; from a random offset (RFC 6056, the kernel's
    // `nf_nat_l4proto_unique_tuple`) they are scattered over the range.
    let mut shard = SnatShard::new(0, &config(64));
    let mut ports: Vec<u16> = (0..20)
        .map(|i| {
            let k = key(L4Proto::Tcp, 40_000 + i, 443);
            shard.outbound(&k, NAT, seg(SYN), secs(0)).unwrap().port
        })
        .collect();
    assert!(ports.iter().all(|p| (10_000..=19_999).contains(p)));
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 20, "ports are unique towards one destination");
    let spread = ports[19] - ports[0];
    assert!(spread > 1_000, "20 ports within {spread} of each other");
}

/// Opens and closes one TCP connection of `k` the way a client that closes first
/// does; returns its binding (the flow ends in TIME_WAIT).
fn connect_and_close(shard: &mut SnatShard, k: &FlowKey, at: u64) -> NatBinding {
    let b = shard.outbound(k, NAT, seg(SYN), secs(at)).unwrap();
    let r = reply(k, b);
    shard.inbound(&r, seg(SYN | ACK), secs(at)).unwrap();
    shard.outbound(k, NAT, seg(ACK), secs(at)).unwrap();
    shard.outbound(k, NAT, seg(FIN | ACK), secs(at)).unwrap();
    shard.inbound(&r, seg(FIN | ACK), secs(at)).unwrap();
    shard.outbound(k, NAT, seg(ACK), secs(at)).unwrap();
    b
}

#[test]
fn a_new_syn_reopens_a_mapping_in_time_wait() {
    let mut shard = SnatShard::new(0, &config(16));
    let k = key(L4Proto::Tcp, 40_000, 443);
    let b = connect_and_close(&mut shard, &k, 0);
    assert_eq!(shard.state_of(&k), Some(FlowState::TcpTimeWait));
    // RFC 7857 section 2.2: the pod reuses its port at once; so does the NAT.
    assert_eq!(shard.outbound(&k, NAT, seg(SYN), secs(1)).unwrap(), b);
    assert_eq!(shard.state_of(&k), Some(FlowState::TcpSynSent));
    assert!(
        shard
            .inbound(&reply(&k, b), seg(SYN | ACK), secs(1))
            .is_some()
    );
    assert_eq!(shard.len(), 1);
}

#[test]
fn closing_states_follow_their_own_timeouts() {
    let s = Duration::from_secs;
    let cfg = SnatConfig {
        timeouts: Timeouts {
            tcp_fin_wait: s(40),
            tcp_last_ack: s(30),
            tcp_time_wait: s(120),
            tcp_close: s(10),
            ..timeouts()
        },
        ..config(16)
    };
    let mut shard = SnatShard::new(0, &cfg);
    let k = key(L4Proto::Tcp, 40_000, 443);
    let b = shard.outbound(&k, NAT, seg(SYN), secs(0)).unwrap();
    let r = reply(&k, b);
    shard.inbound(&r, seg(SYN | ACK), secs(0)).unwrap();
    shard.outbound(&k, NAT, seg(FIN | ACK), secs(0)).unwrap();
    assert_eq!(shard.state_of(&k), Some(FlowState::TcpFinOut));
    shard.inbound(&r, seg(FIN | ACK), secs(39)).unwrap();
    assert_eq!(shard.state_of(&k), Some(FlowState::TcpLastAckOut));
    // LAST_ACK lives 30 s: gone at 69 s unless the last ACK comes.
    assert!(shard.inbound(&r, seg(ACK), secs(70)).is_none());
    // Again, with the last ACK: TIME_WAIT, 120 s.
    let k = key(L4Proto::Tcp, 40_001, 443);
    let b = connect_and_close(&mut shard, &k, 100);
    assert!(shard.inbound(&reply(&k, b), seg(ACK), secs(219)).is_some());
    assert!(shard.inbound(&reply(&k, b), seg(ACK), secs(340)).is_none());
    // RST (the remote refusing the SYN at sequence 0): CLOSE, 10 s.
    let k = key(L4Proto::Tcp, 40_002, 443);
    let b = shard.outbound(&k, NAT, seg(SYN), secs(400)).unwrap();
    let refused = TcpSegment {
        ack: 1,
        ..seg(RST | ACK)
    };
    shard.inbound(&reply(&k, b), refused, secs(400)).unwrap();
    assert_eq!(shard.state_of(&k), Some(FlowState::TcpClose));
    assert!(shard.inbound(&reply(&k, b), seg(ACK), secs(411)).is_none());
}

/// A TCP connection with real sequence numbers: the pod's ISN 1000, the remote's
/// 5000, both offering window scale 7; the pod sends 1000 bytes, the remote 2000.
/// Returns the binding, the reply key and the remote's next sequence number.
fn established_with_data(shard: &mut SnatShard, k: &FlowKey) -> (NatBinding, FlowKey, u32) {
    let syn = TcpSegment {
        seq: 1000,
        window: 64_240,
        window_scale: Some(7),
        ..seg(SYN)
    };
    let b = shard.outbound(k, NAT, syn, secs(0)).unwrap();
    let r = reply(k, b);
    let syn_ack = TcpSegment {
        seq: 5000,
        ack: 1001,
        window: 65_160,
        window_scale: Some(7),
        ..seg(SYN | ACK)
    };
    shard.inbound(&r, syn_ack, secs(0)).unwrap();
    let data = |seq, ack, payload_len| TcpSegment {
        seq,
        ack,
        window: 502,
        payload_len,
        ..seg(ACK)
    };
    shard
        .outbound(k, NAT, data(1001, 5001, 1000), secs(0))
        .unwrap();
    shard.inbound(&r, data(5001, 2001, 2000), secs(0)).unwrap();
    shard
        .outbound(k, NAT, data(2001, 7001, 0), secs(0))
        .unwrap();
    assert_eq!(shard.state_of(k), Some(FlowState::TcpEstablished));
    (b, r, 7001)
}

#[test]
fn an_rst_outside_the_window_leaves_the_flow_established() {
    let mut shard = SnatShard::new(0, &config(16));
    let k = key(L4Proto::Tcp, 40_100, 443);
    let (_, r, next) = established_with_data(&mut shard, &k);
    let rst = |seq: u32| TcpSegment { seq, ..seg(RST) };
    // Guesses far ahead of and far behind what the remote may send.
    for seq in [
        next.wrapping_add(50_000_000),
        next.wrapping_sub(50_000_000),
        next ^ (1 << 31),
    ] {
        assert_eq!(shard.inbound(&r, rst(seq), secs(1)), None, "seq {seq}");
        assert_eq!(shard.state_of(&k), Some(FlowState::TcpEstablished));
    }
    // Nor can an off-path sender widen the window with a segment of its own
    // first: out of the window, it moves nothing.
    let far = next.wrapping_add(1 << 30);
    let widen = TcpSegment {
        seq: far,
        payload_len: 1,
        ..seg(ACK)
    };
    assert!(
        shard.inbound(&r, widen, secs(1)).is_some(),
        "data is still translated"
    );
    assert_eq!(shard.inbound(&r, rst(far), secs(1)), None);
    // An out-of-window FIN does not move the state either.
    let fin = TcpSegment {
        seq: far,
        ..seg(FIN | ACK)
    };
    shard.inbound(&r, fin, secs(1)).unwrap();
    assert_eq!(shard.state_of(&k), Some(FlowState::TcpEstablished));
}

#[test]
fn an_rst_in_the_window_closes_the_flow() {
    let mut shard = SnatShard::new(0, &config(16));
    for (port, offset) in [(40_200u16, 0u32), (40_201, 1000)] {
        let k = key(L4Proto::Tcp, port, 443);
        let (b, r, next) = established_with_data(&mut shard, &k);
        let rst = TcpSegment {
            seq: next.wrapping_add(offset),
            ..seg(RST)
        };
        let pod = NatBinding {
            addr: k.src,
            port: k.src_port,
        };
        assert_eq!(
            shard.inbound(&r, rst, secs(1)),
            Some(pod),
            "offset {offset}"
        );
        assert_eq!(shard.state_of(&k), Some(FlowState::TcpClose));
        // And the pod's own RST closes its flow as well.
        let k2 = key(L4Proto::Tcp, port + 50, 443);
        established_with_data(&mut shard, &k2);
        let own = TcpSegment {
            seq: 2001,
            ..seg(RST | ACK)
        };
        assert_eq!(shard.outbound(&k2, NAT, own, secs(1)).unwrap().addr, b.addr);
        assert_eq!(shard.state_of(&k2), Some(FlowState::TcpClose));
    }
}

#[test]
fn a_refusal_must_acknowledge_the_syn() {
    let mut shard = SnatShard::new(0, &config(16));
    let k = key(L4Proto::Tcp, 40_300, 443);
    let syn = TcpSegment {
        seq: 77_000,
        ..seg(SYN)
    };
    let b = shard.outbound(&k, NAT, syn, secs(0)).unwrap();
    let r = reply(&k, b);
    for bad in [
        seg(RST),
        TcpSegment {
            ack: 12_345,
            ..seg(RST | ACK)
        },
    ] {
        assert_eq!(shard.inbound(&r, bad, secs(0)), None);
        assert_eq!(shard.state_of(&k), Some(FlowState::TcpSynSent));
    }
    let refusal = TcpSegment {
        ack: 77_001,
        ..seg(RST | ACK)
    };
    assert!(shard.inbound(&r, refusal, secs(0)).is_some());
    assert_eq!(shard.state_of(&k), Some(FlowState::TcpClose));
    // A flow picked up mid-stream (no SYN seen) has no window to check against.
    let k = key(L4Proto::Tcp, 40_301, 443);
    let mid = TcpSegment { seq: 9, ..seg(ACK) };
    let b = shard.outbound(&k, NAT, mid, secs(0)).unwrap();
    assert!(shard.inbound(&reply(&k, b), seg(RST), secs(0)).is_some());
    assert_eq!(shard.state_of(&k), Some(FlowState::TcpClose));
}

#[test]
fn a_full_range_gives_closed_flows_ports_to_new_flows_but_never_live_ones() {
    let cfg = SnatConfig {
        port_range: 20_000..=20_003,
        ..config(64)
    };
    let mut shard = SnatShard::new(0, &cfg);
    // Two established flows and two closed (TIME_WAIT) ones hold all four ports.
    let live: Vec<FlowKey> = (0..2).map(|i| key(L4Proto::Tcp, 100 + i, 443)).collect();
    let mut live_ports = HashSet::new();
    for k in &live {
        let b = shard.outbound(k, NAT, seg(SYN), secs(0)).unwrap();
        shard
            .inbound(&reply(k, b), seg(SYN | ACK), secs(0))
            .unwrap();
        live_ports.insert(b.port);
    }
    let mut closed_ports = HashSet::new();
    for i in 0..2 {
        closed_ports
            .insert(connect_and_close(&mut shard, &key(L4Proto::Tcp, 200 + i, 443), 0).port);
    }
    // Two new flows take the closed flows' ports; a third finds none.
    for i in 0..2 {
        let b = shard
            .outbound(&key(L4Proto::Tcp, 300 + i, 443), NAT, seg(SYN), secs(1))
            .unwrap();
        assert!(
            closed_ports.remove(&b.port),
            "port {} was not a closed flow's",
            b.port
        );
    }
    assert_eq!(
        shard.outbound(&key(L4Proto::Tcp, 400, 443), NAT, seg(SYN), secs(1)),
        Err(SnatError::PortsExhausted)
    );
    // The live flows kept theirs.
    for k in &live {
        assert!(matches!(shard.state_of(k), Some(FlowState::TcpEstablished)));
    }
    assert_eq!(shard.len(), 4);
}

#[test]
fn memory_per_flow_is_at_most_128_bytes_when_full() {
    let n = 100_000;
    let mut shard = SnatShard::new(
        0,
        &SnatConfig {
            capacity_per_worker: n,
            ..SnatConfig::default()
        },
    );
    for i in 0..n as u32 {
        let k = FlowKey {
            proto: L4Proto::Udp,
            src: POD,
            src_port: 5000,
            // Distinct remotes (keys only: no packet is sent anywhere).
            dst: Ipv4Addr::from(0xc612_0000 + i),
            dst_port: 443,
        };
        shard.outbound(&k, NAT, seg(0), secs(0)).unwrap();
    }
    assert_eq!(shard.len(), n);
    let per_flow = shard.memory_bytes() / shard.len();
    assert!(per_flow <= 128, "{per_flow} bytes per flow");
}

#[test]
fn large_batches_equal_single_calls() {
    // Enough flows that the batch calls take their cache-warming path.
    let n = 50_000u32;
    let cfg = SnatConfig {
        capacity_per_worker: n as usize,
        ..SnatConfig::default()
    };
    let mut single = SnatShard::new(0, &cfg);
    let mut batched = SnatShard::new(0, &cfg);
    let keys: Vec<FlowKey> = (0..n)
        .map(|i| FlowKey {
            proto: L4Proto::Tcp,
            src: Ipv4Addr::from(0xc613_0000 | (i & 0xffff)),
            src_port: 1000 + (i >> 16) as u16,
            dst: Ipv4Addr::from(0xc612_0000 | (i.wrapping_mul(2_654_435_761) >> 16)),
            dst_port: 443,
        })
        .collect();
    let flags = vec![seg(SYN); keys.len()];
    let mut out = vec![Err(SnatError::TableFull); keys.len()];
    batched.outbound_batch(&keys, &flags, NAT, secs(0), &mut out);
    let mut replies = Vec::new();
    for (k, got) in keys.iter().zip(&out) {
        let want = single.outbound(k, NAT, seg(SYN), secs(0));
        assert_eq!(*got, want);
        replies.push(reply(k, want.unwrap()));
    }
    let mut back = vec![None; replies.len()];
    batched.inbound_batch(
        &replies,
        &vec![seg(SYN | ACK); replies.len()],
        secs(1),
        &mut back,
    );
    for ((r, k), got) in replies.iter().zip(&keys).zip(&back) {
        assert_eq!(
            *got,
            Some(NatBinding {
                addr: k.src,
                port: k.src_port
            })
        );
        assert_eq!(single.inbound(r, seg(SYN | ACK), secs(1)), *got);
    }
    assert_eq!(batched.state_of(&keys[7]), Some(FlowState::TcpEstablished));
}

#[test]
fn shards_and_tables_move_between_threads() {
    fn send<T: Send>() {}
    fn send_sync<T: Send + Sync>() {}
    send::<SnatShard>();
    send_sync::<hybridway_dataplane::tables::RouteTable>();
    let shard = SnatShard::new(0, &config(4));
    let len = std::thread::spawn(move || shard.len()).join().unwrap();
    assert_eq!(len, 0);
}

#[test]
fn zero_and_huge_capacities_are_handled() {
    let mut none = SnatShard::new(0, &config(0));
    assert_eq!(
        none.outbound(&key(L4Proto::Udp, 1, 1), NAT, seg(0), secs(0)),
        Err(SnatError::TableFull)
    );
    let huge = SnatShard::new(0, &config(usize::MAX));
    assert_eq!(
        huge.capacity(),
        hybridway_dataplane::tables::snat::MAX_CAPACITY_PER_WORKER
    );
}

#[test]
fn timeouts_longer_than_the_wheel_still_expire_on_time() {
    // 5 h, beyond the wheel's ~2 h 20 min horizon: queued at the horizon, re-queued.
    let t = Timeouts {
        udp: Duration::from_secs(5 * 3600),
        ..timeouts()
    };
    let mut shard = SnatShard::new(
        0,
        &SnatConfig {
            timeouts: t,
            ..config(8)
        },
    );
    let k = key(L4Proto::Udp, 7, 7);
    let b = shard.outbound(&k, NAT, seg(0), secs(0)).unwrap();
    assert_eq!(shard.sweep(secs(3 * 3600), usize::MAX), 0);
    assert_eq!(shard.sweep(secs(5 * 3600 - 2), usize::MAX), 0);
    assert!(shard.peek_inbound(&reply(&k, b)).is_some());
    assert_eq!(shard.sweep(secs(5 * 3600 + 2), usize::MAX), 1);
}

#[derive(Clone, Debug)]
enum Op {
    Out { flow: usize, flags: u8 },
    In { flow: usize, flags: u8 },
    Advance(u64),
    Sweep(usize),
}

fn op() -> impl Strategy<Value = Op> {
    let flags = prop::sample::select(vec![0u8, SYN, SYN | ACK, ACK, FIN | ACK, RST]);
    prop_oneof![
        4 => (0..24usize, flags.clone()).prop_map(|(flow, flags)| Op::Out { flow, flags }),
        4 => (0..24usize, flags).prop_map(|(flow, flags)| Op::In { flow, flags }),
        2 => (0..40_000u64).prop_map(Op::Advance),
        1 => (0..8usize).prop_map(Op::Sweep),
    ]
}

fn flow_key(i: usize) -> FlowKey {
    let proto = [L4Proto::Tcp, L4Proto::Udp, L4Proto::IcmpEcho][i % 3];
    // Few pods, remotes and ports so flows share destinations and NAT ports.
    let port = 100 + (i / 3 % 3) as u16;
    FlowKey {
        proto,
        src: Ipv4Addr::new(198, 19, 0, (i / 9) as u8),
        src_port: port,
        dst: Ipv4Addr::new(198, 18, 9, (i % 2) as u8),
        dst_port: if proto == L4Proto::IcmpEcho { port } else { 53 },
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Outbound then the reply's inbound returns the original pod address and port,
    /// for random flows, and no two live flows share an inbound key.
    #[test]
    fn reply_returns_the_original(flows in prop::collection::hash_set(
        (prop::sample::select(vec![L4Proto::Tcp, L4Proto::Udp, L4Proto::IcmpEcho]),
         any::<u32>(), any::<u16>(), any::<u32>(), any::<u16>()), 1..200),
        workers in 1u16..5)
    {
        let cfg = SnatConfig { workers, capacity_per_worker: 256, ..SnatConfig::default() };
        let mut shards: Vec<_> = (0..workers).map(|w| SnatShard::new(w, &cfg)).collect();
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for (i, &(proto, src, sp, dst, dp)) in flows.iter().enumerate() {
            let dp = if proto == L4Proto::IcmpEcho { sp } else { dp };
            let k = FlowKey { proto, src: src.into(), src_port: sp, dst: dst.into(), dst_port: dp };
            // ICMP flows are keyed by (pod, id, remote); skip duplicates of that.
            if !seen.insert((proto, src, sp, dst, if proto == L4Proto::IcmpEcho { 0 } else { dp })) {
                continue;
            }
            let _ = i;
            // Every flow is translated by its destination's owner, as the pipeline
            // arranges.
            let w = owner_of_remote(&cfg, k.proto, k.dst, k.dst_port).unwrap();
            let b = shards[usize::from(w)].outbound(&k, NAT, seg(SYN), Now(0)).unwrap();
            out.push((k, b));
        }
        for (k, b) in out {
            let r = reply(&k, b);
            let owner = owner_of_remote(&cfg, r.proto, r.src, r.src_port).unwrap();
            let got = shards[owner as usize].inbound(&reply(&k, b), seg(SYN | ACK), Now(1));
            prop_assert_eq!(got, Some(NatBinding { addr: k.src, port: k.src_port }));
        }
    }

    /// The batch calls give exactly the results of one call per packet in order,
    /// including duplicates within a batch and flows created mid-batch.
    #[test]
    fn batches_equal_single_calls(
        rounds in prop::collection::vec(
            prop::collection::vec((0..40usize, prop::sample::select(vec![0u8, SYN, ACK, FIN | ACK, RST])), 0..50),
            1..6),
    ) {
        let cfg = SnatConfig { port_range: 40_000..=40_005, ..config(30) };
        let mut single = SnatShard::new(0, &cfg);
        let mut batched = SnatShard::new(0, &cfg);
        for (round, ops) in rounds.iter().enumerate() {
            let now = Now((round as u64) * 4000);
            let keys: Vec<FlowKey> = ops.iter().map(|&(f, _)| flow_key(f)).collect();
            let segs: Vec<TcpSegment> = ops.iter().map(|&(_, fl)| seg(fl)).collect();
            let mut out = vec![Err(SnatError::TableFull); keys.len()];
            batched.outbound_batch(&keys, &segs, NAT, now, &mut out);
            let mut replies = Vec::new();
            for ((k, &sg), got) in keys.iter().zip(&segs).zip(&out) {
                let want = single.outbound(k, NAT, sg, now);
                prop_assert_eq!(*got, want);
                if let Ok(b) = want {
                    replies.push(reply(k, b));
                }
            }
            let rflags = vec![seg(ACK); replies.len()];
            let mut back = vec![None; replies.len()];
            let later = Now(now.millis() + 1000);
            batched.inbound_batch(&replies, &rflags, later, &mut back);
            for (r, got) in replies.iter().zip(&back) {
                prop_assert_eq!(*got, single.inbound(r, seg(ACK), later));
                prop_assert!(got.is_some());
            }
            prop_assert_eq!(single.len(), batched.len());
        }
    }

    /// Random operations against a model that tracks which flows are alive.
    #[test]
    fn matches_a_model(ops in prop::collection::vec(op(), 1..300)) {
        let cfg = SnatConfig { port_range: 30_000..=30_003, ..config(12) };
        let t = cfg.timeouts;
        let mut shard = SnatShard::new(0, &cfg);
        // flow -> (binding, state, expires, unanswered). Every segment has sequence
        // numbers 0, so all are in the window but one kind: a TCP flow opened by a
        // bare SYN is "unanswered" until the remote sends something other than an
        // RST, and till then an RST without ACK of the SYN changes nothing and is
        // not translated (RFC 793 §3.4).
        let mut model: HashMap<usize, (NatBinding, FlowState, u64, bool)> = HashMap::new();
        let bare_syn = |k: &FlowKey, flags: u8| k.proto == L4Proto::Tcp && flags & (SYN | ACK | RST) == SYN;
        let mut now = 0u64;
        for op in ops {
            match op {
                Op::Advance(ms) => now += ms,
                Op::Sweep(n) => {
                    let before = shard.len();
                    let got = shard.sweep(Now(now), n);
                    prop_assert!(got <= n);
                    prop_assert_eq!(shard.len(), before - got);
                }
                Op::Out { flow, flags } => {
                    let k = flow_key(flow);
                    let res = shard.outbound(&k, NAT, seg(flags), Now(now));
                    match model.get(&flow).copied() {
                        Some((b, s, exp, unanswered)) if exp > now => {
                            prop_assert_eq!(res, Ok(b));
                            let unanswered = unanswered || s.reopened_by(Direction::Outbound, flags);
                            let s = s.next(Direction::Outbound, flags);
                            model.insert(flow, (b, s, now + s.timeout(&t).as_millis() as u64, unanswered));
                        }
                        _ => match res {
                            Ok(b) => {
                                // The new port must not clash with a live flow to the same place.
                                // Only a closed flow's port may be taken over (and
                                // that flow is gone).
                                let mut taken = Vec::new();
                                for (&other, &(ob, os, exp, _)) in &model {
                                    let ok = flow_key(other);
                                    let same_dest = ok.proto == k.proto && ok.dst == k.dst
                                        && (k.proto == L4Proto::IcmpEcho || ok.dst_port == k.dst_port);
                                    if other != flow && exp > now && same_dest && ob.port == b.port {
                                        prop_assert!(os.is_closed(), "took the port of a live {:?} flow", os);
                                        taken.push(other);
                                    }
                                }
                                for other in taken {
                                    model.remove(&other);
                                }
                                let s = FlowState::initial(k.proto, flags);
                                model.insert(flow, (b, s, now + s.timeout(&t).as_millis() as u64, bare_syn(&k, flags)));
                            }
                            Err(SnatError::TableFull) => {
                                let live = model.values().filter(|v| v.2 > now).count();
                                // Full means every slot holds a flow that is live or expired
                                // less than a wheel tick (1.024 s) ago.
                                let recent = model.values().filter(|v| v.2 + 1024 > now).count();
                                prop_assert!(live <= 12 && recent >= 12, "live {} recent {}", live, recent);
                                model.remove(&flow);
                            }
                            Err(SnatError::PortsExhausted) => {
                                model.remove(&flow);
                            }
                        },
                    }
                }
                Op::In { flow, flags } => {
                    let k = flow_key(flow);
                    let Some((b, s, exp, unanswered)) = model.get(&flow).copied() else {
                        continue;
                    };
                    let got = shard.inbound(&reply(&k, b), seg(flags), Now(now));
                    let ignored = |unanswered: bool| unanswered && flags & RST != 0;
                    if exp > now && ignored(unanswered) {
                        prop_assert_eq!(got, None);
                    } else if exp > now {
                        prop_assert_eq!(got, Some(NatBinding { addr: k.src, port: k.src_port }));
                        let s = s.next(Direction::Inbound, flags);
                        model.insert(flow, (b, s, now + s.timeout(&t).as_millis() as u64, false));
                    } else {
                        // The port may since serve a live flow to the same remote.
                        let r = reply(&k, b);
                        let owner = model
                            .iter()
                            .find(|&(&f, &(ob, _, e, _))| f != flow && e > now && reply(&flow_key(f), ob) == r)
                            .map(|(&f, &v)| (f, v))
                            .filter(|(_, v)| !ignored(v.3));
                        let expected = owner.map(|(f, _)| NatBinding { addr: flow_key(f).src, port: flow_key(f).src_port });
                        prop_assert_eq!(got, expected);
                        // That packet refreshed the flow now owning the port.
                        if let Some((f, (ob, os, _, _))) = owner {
                            let s = os.next(Direction::Inbound, flags);
                            model.insert(f, (ob, s, now + s.timeout(&t).as_millis() as u64, false));
                        }
                    }
                }
            }
            prop_assert!(shard.len() <= 12);
        }
    }
}
