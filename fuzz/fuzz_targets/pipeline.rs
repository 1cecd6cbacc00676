//! Arbitrary frames, from the uplink or from a pod port, through a populated table
//! (routes and Services) and a pipeline that already has masqueraded and Service
//! flows: no panic, the frame stays in its buffer, and every verdict is well-formed.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, OnceLock};

use hybridway_dataplane::frame::{FRAME_BUFFER_SIZE, Frame, FrameMeta, PortId};
use hybridway_dataplane::pipeline::Pipeline;
use hybridway_dataplane::tables::services::{
    EndpointSpec, ServicePortSpec, ServiceProto, ServiceSpec, ServiceTable,
};
use hybridway_dataplane::tables::{
    Mode, NodeSettings, Prefix, RouteTableBuilder, RouteTarget, SnatConfig, Tables,
};
use hybridway_dataplane::time::Now;
use hybridway_dataplane::verdict::Verdict;
use hybridway_dataplane::wire::{MacAddr, PacketInfo, checksum};
use libfuzzer_sys::fuzz_target;

const UPLINK: PortId = PortId(0);
const POD_PORTS: [PortId; 2] = [PortId(1), PortId(2)];
/// The host port (TUN) of the TUN-backend tables.
const HOST: PortId = PortId(3);
const NODE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 7);
const POD1: Ipv4Addr = Ipv4Addr::new(198, 19, 1, 10);
/// ClusterIPs: .10 has local, remote and POD1's own endpoints (hairpin); .11 none;
/// .12 is `internalTrafficPolicy: Local` with a remote endpoint only.
const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 240, 10);

fn services() -> ServiceTable {
    let ep = |addr: Ipv4Addr, local| EndpointSpec {
        addr,
        port: 5353,
        ready: true,
        serving: true,
        terminating: false,
        local,
    };
    let spec = |last: u8, endpoints: Vec<EndpointSpec>| ServiceSpec {
        name: format!("default/svc-{last}"),
        cluster_ips: vec![Ipv4Addr::new(198, 18, 240, last)],
        ports: [ServiceProto::Udp, ServiceProto::Tcp]
            .into_iter()
            .map(|proto| ServicePortSpec {
                proto,
                port: 53,
                node_port: Some(30053),
                endpoints: endpoints.clone(),
            })
            .collect(),
        affinity: (last == 10).then_some(std::time::Duration::from_secs(10)),
        internal_local: last == 12,
        external_local: false,
    };
    ServiceTable::build(&[
        spec(
            10,
            vec![
                ep(POD1, true),
                ep(Ipv4Addr::new(198, 19, 1, 11), true),
                ep(Ipv4Addr::new(198, 19, 2, 20), false),
                ep(OUTSIDE, false),
            ],
        ),
        spec(11, vec![]),
        spec(12, vec![ep(Ipv4Addr::new(198, 19, 2, 20), false)]),
    ])
}

/// Whether a packet to `dst` may be translated (and then handed off or given to the
/// host rewritten): a ClusterIP of [`services`].
fn is_cluster_ip(bytes: &[u8]) -> bool {
    bytes
        .get(30..34)
        .is_some_and(|d| d[..3] == VIP.octets()[..3])
}

fn tables(snat: bool, tun: bool) -> Tables {
    let mut b = RouteTableBuilder::new();
    let mut add = |p: &str, t| {
        if let Ok(p) = p.parse::<Prefix>() {
            let _ = b.add(p, t);
        }
    };
    let pod = |i: usize, last: u8| RouteTarget::LocalPod {
        port: POD_PORTS[i],
        mac: MacAddr([2, 0, 0, 0, 0xbb, last]),
    };
    add("198.19.1.10/32", pod(0, 10));
    add("198.19.1.11/32", pod(1, 11));
    add("2001:db8:1::10/128", pod(0, 10));
    let vx = RouteTarget::VxlanNode {
        node_addr: Ipv4Addr::new(198, 18, 0, 2),
        vtep_mac: MacAddr([2, 0, 0, 0, 0x0f, 2]),
        vni: 1,
        next_hop_mac: MacAddr([2, 0, 0, 0, 0, 2]),
    };
    add("198.19.2.0/24", vx);
    add("2001:db8:2::/64", vx);
    let under = RouteTarget::UnderlayNode {
        next_hop: IpAddr::V4(Ipv4Addr::new(198, 18, 0, 3)),
        next_hop_mac: MacAddr([2, 0, 0, 0, 0, 3]),
    };
    add("198.19.3.0/24", under);
    add(
        "0.0.0.0/0",
        RouteTarget::Outside {
            next_hop_mac: MacAddr([2, 0, 0, 0, 0, 0xfe]),
        },
    );
    add(
        "::/0",
        RouteTarget::Outside {
            next_hop_mac: MacAddr([2, 0, 0, 0, 0, 0xfe]),
        },
    );
    Tables {
        generation: 1,
        node: NodeSettings {
            mode: Mode::Overlay,
            node_addr: NODE,
            node_addr_v6: None,
            uplink_port: UPLINK,
            routed_port: if tun { HOST } else { UPLINK },
            host_port: tun.then_some(HOST),
            uplink_mac: MacAddr([2, 0, 0, 0, 0, 1]),
            uplink_mtu: 1500,
            vtep_mac: MacAddr([2, 0, 0, 0, 0x0f, 1]),
            vni: 1,
            vxlan_port: 8472,
            vxlan_df: snat,
            gateway_v4: Ipv4Addr::new(198, 19, 1, 1),
            gateway_v6: Some(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1)),
            gateway_mac: MacAddr([2, 0, 0, 0, 0xaa, 1]),
            snat,
            host_pod_addr: None,
        },
        routes: b.build(),
        no_snat: ["198.19.0.0/16", "198.18.0.0/24"]
            .iter()
            .filter_map(|p| p.parse().ok())
            .collect(),
        known_vteps: [Ipv4Addr::new(198, 18, 0, 2)].into(),
        services: Arc::new(services()),
    }
}

/// SNAT off and on, AF_XDP and TUN backend.
fn all_tables() -> &'static [Tables; 4] {
    static T: OnceLock<[Tables; 4]> = OnceLock::new();
    T.get_or_init(|| {
        [
            tables(false, false),
            tables(true, false),
            tables(false, true),
            tables(true, true),
        ]
    })
}

fn config() -> SnatConfig {
    SnatConfig {
        workers: 2,
        capacity_per_worker: 64,
        ..SnatConfig::default()
    }
}

/// UDP packets from POD1 to the outside and to a ClusterIP, so the SNAT shard and
/// the Service flows hold flows whose replies the fuzzer can hit.
fn seed_flow(p: &mut Pipeline, t: &Tables) {
    seed_flow_to(p, t, OUTSIDE);
    seed_flow_to(p, t, VIP);
}

fn seed_flow_to(p: &mut Pipeline, t: &Tables, dst: Ipv4Addr) {
    let mut f = vec![0u8; 14 + 28];
    f[0..6].copy_from_slice(&t.node.gateway_mac.0);
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 0xbb, 10]);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip = &mut f[14..];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&28u16.to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&POD1.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let c = checksum::checksum(&ip[..20]);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip[20..22].copy_from_slice(&5000u16.to_be_bytes());
    ip[22..24].copy_from_slice(&53u16.to_be_bytes());
    ip[24..26].copy_from_slice(&8u16.to_be_bytes());
    let mut buf = [0u8; FRAME_BUFFER_SIZE];
    if let Ok(mut frame) = Frame::copy_from(
        &mut buf,
        &f,
        FrameMeta {
            in_port: POD_PORTS[0],
        },
    ) {
        let _ = p.process(&mut frame, t, Now(0));
    }
}

fn check(verdict: Verdict, frame: &Frame<'_>, t: &Tables, config: &SnatConfig, worker: u16) {
    assert!(frame.offset() + frame.len() <= FRAME_BUFFER_SIZE);
    match verdict {
        Verdict::Forward { port } => {
            let known = port == t.node.uplink_port
                || port == t.node.routed_port
                || Some(port) == t.node.host_port
                || t.routes
                    .iter()
                    .any(|(_, r)| matches!(r, RouteTarget::LocalPod { port: p, .. } if *p == port));
            assert!(known, "forward to unknown {port}");
            well_formed(frame);
        }
        Verdict::Reply | Verdict::Refuse(_) => well_formed(frame),
        Verdict::HandOff { worker: w } => {
            assert!(w < config.workers && w != worker, "hand-off to {w}")
        }
        Verdict::ToHost | Verdict::Drop(_) => {}
    }
}

/// Whatever we transmit classifies cleanly and has a correct IPv4 header checksum.
fn well_formed(frame: &Frame<'_>) {
    let info = PacketInfo::parse(frame.data());
    assert!(info.is_ok(), "sending a frame we cannot parse: {info:?}");
    if let Ok(info) = info {
        assert!(info.ipv4_checksum_ok, "sending a bad IPv4 header checksum");
    }
}

fn fix_ipv4_checksum(f: &mut [u8], l3: usize) {
    let Some(&ver_ihl) = f.get(l3) else { return };
    let ihl = usize::from(ver_ihl & 0x0f) * 4;
    if ver_ihl >> 4 != 4 || ihl < 20 {
        return;
    }
    let Some(header) = f.get_mut(l3..l3 + ihl) else {
        return;
    };
    header[10] = 0;
    header[11] = 0;
    let c = checksum::checksum(header);
    header[10..12].copy_from_slice(&c.to_be_bytes());
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    let t = &all_tables()[usize::from(selector & 1 | (selector >> 3) & 2)];
    let in_port = match (selector >> 1) & 3 {
        0 => UPLINK,
        1 => POD_PORTS[0],
        2 => POD_PORTS[1],
        _ => HOST,
    };
    let config = config();
    let worker = u16::from(selector >> 7);
    let mut p = Pipeline::new(worker, &config);
    seed_flow(&mut p, t);

    let mut fixed;
    let bytes = if selector & 0x08 != 0 {
        // Let the fuzzer past header checksum validation: fix the IPv4 header checksum
        // of the frame and of a VXLAN inner frame, where they would be.
        fixed = bytes.to_vec();
        fix_ipv4_checksum(&mut fixed, 14);
        fix_ipv4_checksum(&mut fixed, 14 + 50);
        &fixed[..]
    } else {
        bytes
    };
    let mut buf = [0u8; FRAME_BUFFER_SIZE];
    let Ok(mut frame) = Frame::copy_from(&mut buf, bytes, FrameMeta { in_port }) else {
        return;
    };
    let verdict = p.process(&mut frame, t, Now(1));
    check(verdict, &frame, t, &config, worker);
    if matches!(verdict, Verdict::ToHost | Verdict::HandOff { .. }) && !is_cluster_ip(bytes) {
        // The host and the owning worker get the frame exactly as it arrived (a
        // packet to a ClusterIP may already be sent to its endpoint: the node itself,
        // or one the SNAT owner masquerades).
        assert_eq!(frame.data(), bytes, "{verdict:?} frame was modified");
    }

    // The same bytes as a batch of two, with a small buffer (little headroom) second.
    let mut a = [0u8; FRAME_BUFFER_SIZE];
    let mut small = vec![0u8; bytes.len() + 8];
    let (Ok(fa), Ok(fb)) = (
        Frame::copy_from(&mut a, bytes, FrameMeta { in_port }),
        Frame::copy_from(&mut small, bytes, FrameMeta { in_port }),
    ) else {
        return;
    };
    let mut frames = [fa, fb];
    let mut verdicts = [Verdict::ToHost; 2];
    p.process_batch(&mut frames, t, Now(2), &mut verdicts);
    check(verdicts[0], &frames[0], t, &config, worker);
    assert!(frames[1].offset() + frames[1].len() <= bytes.len() + 8);
    if !matches!(
        verdicts[1],
        Verdict::Drop(_) | Verdict::ToHost | Verdict::HandOff { .. }
    ) {
        well_formed(&frames[1]);
    }
});
