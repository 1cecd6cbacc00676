//! The node the `pipeline` fuzz target runs frames through: two local pods (IPv4
//! and IPv6), a remote overlay node, an underlay node, a default route, three
//! Services, and a pipeline that already carries masqueraded and Service flows
//! (UDP, TCP and ping) whose replies a fuzzed frame can hit.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

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
use hybridway_dataplane::wire::MacAddr;

use crate::frames::{self, Ip4, L4};

pub const UPLINK: PortId = PortId(0);
pub const POD_PORTS: [PortId; 2] = [PortId(1), PortId(2)];
/// The host port (TUN) of the TUN-backend tables.
pub const HOST: PortId = PortId(3);

pub const NODE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The overlay node in `known_vteps`; its block is 198.19.2.0/24.
pub const REMOTE_NODE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// The underlay node; its block is 198.19.3.0/24 (not a VTEP).
pub const UNDERLAY_NODE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);
/// Outside the cluster (not in the no-SNAT ranges).
pub const OUTSIDE: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 7);
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 19, 1, 1);
pub const POD1: Ipv4Addr = Ipv4Addr::new(198, 19, 1, 10);
pub const POD2: Ipv4Addr = Ipv4Addr::new(198, 19, 1, 11);
pub const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(198, 19, 2, 20);
pub const UNDERLAY_POD: Ipv4Addr = Ipv4Addr::new(198, 19, 3, 30);
/// ClusterIPs: .10 has local, remote, outside and POD1's own endpoints (hairpin),
/// with ClientIP affinity; .11 none; .12 is `internalTrafficPolicy: Local` with a
/// remote endpoint only (and NodePort 30054 with `externalTrafficPolicy: Local`).
/// Each serves UDP and TCP port 53 (.10 also on NodePort 30053).
pub const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 240, 10);
pub const VIP_NO_ENDPOINTS: Ipv4Addr = Ipv4Addr::new(198, 18, 240, 11);
pub const VIP_LOCAL_POLICY: Ipv4Addr = Ipv4Addr::new(198, 18, 240, 12);
pub const SERVICE_PORT: u16 = 53;
pub const ENDPOINT_PORT: u16 = 5353;
pub const NODE_PORT: u16 = 30053;
/// The NodePort of [`VIP_LOCAL_POLICY`], with `externalTrafficPolicy: Local`.
pub const NODE_PORT_LOCAL: u16 = 30054;
/// The host's own address in the pod network (its traffic to pods and ClusterIPs).
pub const HOST_POD_ADDR: Ipv4Addr = Ipv4Addr::new(198, 19, 1, 0);

pub const GATEWAY6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
pub const POD1_6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x10);
pub const POD2_6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x11);
pub const REMOTE_POD6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 0x20);
pub const UNDERLAY_POD6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 3, 0, 0, 0, 0, 0x30);
pub const OUTSIDE6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 7);
/// The node's own IPv6 address (the uplink side's ICMPv6 errors come from it).
pub const NODE6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xfe, 0, 0, 0, 0, 1);

pub const UPLINK_MAC: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);
pub const VTEP_MAC: MacAddr = MacAddr([2, 0, 0, 0, 0x0f, 1]);
pub const REMOTE_VTEP_MAC: MacAddr = MacAddr([2, 0, 0, 0, 0x0f, 2]);
pub const REMOTE_NODE_MAC: MacAddr = MacAddr([2, 0, 0, 0, 0, 2]);
pub const ROUTER_MAC: MacAddr = MacAddr([2, 0, 0, 0, 0, 0xfe]);
pub const GATEWAY_MAC: MacAddr = MacAddr([2, 0, 0, 0, 0xaa, 1]);
pub const POD_MACS: [MacAddr; 2] = [
    MacAddr([2, 0, 0, 0, 0xbb, 10]),
    MacAddr([2, 0, 0, 0, 0xbb, 11]),
];

/// Source ports of the flows [`seeded`] starts from POD1.
pub const SEED_UDP_PORT: u16 = 5000;
pub const SEED_TCP_PORT: u16 = 5001;
pub const SEED_PING_ID: u16 = 77;
/// Initial sequence number of the seeded TCP SYNs.
pub const SEED_TCP_SEQ: u32 = 1_000;

fn services() -> ServiceTable {
    let ep = |addr: Ipv4Addr, local| EndpointSpec {
        addr,
        port: ENDPOINT_PORT,
        ready: true,
        serving: true,
        terminating: false,
        local,
    };
    let spec = |vip: Ipv4Addr, endpoints: Vec<EndpointSpec>| ServiceSpec {
        name: format!("default/svc-{vip}"),
        cluster_ips: vec![vip],
        ports: [ServiceProto::Udp, ServiceProto::Tcp]
            .into_iter()
            .map(|proto| ServicePortSpec {
                proto,
                port: SERVICE_PORT,
                node_port: if vip == VIP {
                    Some(NODE_PORT)
                } else {
                    (vip == VIP_LOCAL_POLICY).then_some(NODE_PORT_LOCAL)
                },
                endpoints: endpoints.clone(),
            })
            .collect(),
        affinity: (vip == VIP).then_some(Duration::from_secs(10)),
        internal_local: vip == VIP_LOCAL_POLICY,
        external_local: vip == VIP_LOCAL_POLICY,
    };
    ServiceTable::build(&[
        spec(
            VIP,
            vec![
                ep(POD1, true),
                ep(POD2, true),
                ep(REMOTE_POD, false),
                ep(OUTSIDE, false),
            ],
        ),
        spec(VIP_NO_ENDPOINTS, vec![]),
        spec(VIP_LOCAL_POLICY, vec![ep(REMOTE_POD, false)]),
    ])
}

fn tables(snat: bool, tun: bool) -> Tables {
    let mut b = RouteTableBuilder::new();
    let mut add = |p: &str, t| {
        if let Ok(p) = p.parse::<Prefix>() {
            let _ = b.add(p, t);
        }
    };
    let pod = |i: usize| RouteTarget::LocalPod {
        port: POD_PORTS[i],
        mac: POD_MACS[i],
    };
    let vx = RouteTarget::VxlanNode {
        node_addr: REMOTE_NODE,
        vtep_mac: REMOTE_VTEP_MAC,
        vni: 1,
        next_hop_mac: REMOTE_NODE_MAC,
    };
    let under = RouteTarget::UnderlayNode {
        next_hop: IpAddr::V4(UNDERLAY_NODE),
        next_hop_mac: MacAddr([2, 0, 0, 0, 0, 3]),
    };
    let out = RouteTarget::Outside {
        next_hop_mac: ROUTER_MAC,
    };
    add("198.19.1.10/32", pod(0));
    add("198.19.1.11/32", pod(1));
    add("198.19.2.0/24", vx);
    add("198.19.3.0/24", under);
    add("0.0.0.0/0", out);
    add("2001:db8:1::10/128", pod(0));
    add("2001:db8:1::11/128", pod(1));
    add("2001:db8:2::/64", vx);
    add("2001:db8:3::/64", under);
    add("::/0", out);
    Tables {
        generation: 1,
        node: NodeSettings {
            mode: Mode::Overlay,
            node_addr: NODE,
            node_addr_v6: tun.then_some(NODE6),
            uplink_port: UPLINK,
            routed_port: if tun { HOST } else { UPLINK },
            host_port: tun.then_some(HOST),
            uplink_mac: UPLINK_MAC,
            uplink_mtu: 1500,
            vtep_mac: VTEP_MAC,
            vni: 1,
            vxlan_port: 8472,
            vxlan_df: snat,
            gateway_v4: GATEWAY,
            host_pod_addr: Some(HOST_POD_ADDR),
            gateway_v6: Some(GATEWAY6),
            gateway_mac: GATEWAY_MAC,
            snat,
        },
        routes: b.build(),
        no_snat: ["198.19.0.0/16", "198.18.0.0/24"]
            .iter()
            .filter_map(|p| p.parse().ok())
            .collect(),
        known_vteps: [REMOTE_NODE].into(),
        services: Arc::new(services()),
    }
}

/// SNAT off and on, AF_XDP and TUN backend (the TUN one with a node IPv6 address).
pub fn all_tables() -> &'static [Tables; 4] {
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

/// Two workers, so hand-offs happen; small shards, so full tables are reachable.
pub fn config() -> SnatConfig {
    SnatConfig {
        workers: 2,
        capacity_per_worker: 64,
        ..SnatConfig::default()
    }
}

/// What the flows [`seeded`] started were translated to: replies to them are
/// addressed to these ports (the pod's own ones when SNAT is off).
#[derive(Clone, Copy, Debug, Default)]
pub struct Seeded {
    pub nat_udp: u16,
    pub nat_tcp: u16,
    pub nat_ping: u16,
}

/// A pipeline for `worker` whose flows from POD1 (UDP, a TCP SYN and a ping to the
/// outside; UDP and a TCP SYN to the ClusterIP) are already tracked where this
/// worker owns them.
pub fn seeded(worker: u16, t: &Tables) -> (Pipeline, Seeded) {
    let mut p = Pipeline::new(worker, &config());
    let udp = L4::Udp {
        sport: SEED_UDP_PORT,
        dport: SERVICE_PORT,
        checksum: true,
    };
    let syn = L4::Tcp {
        sport: SEED_TCP_PORT,
        dport: SERVICE_PORT,
        flags: 0x02,
        seq: SEED_TCP_SEQ,
        ack: 0,
        window: 64_240,
        window_scale: Some(7),
    };
    let ping = L4::Echo {
        request: true,
        id: SEED_PING_ID,
    };
    let mut out = Seeded {
        nat_udp: SEED_UDP_PORT,
        nat_tcp: SEED_TCP_PORT,
        nat_ping: SEED_PING_ID,
    };
    let flows = [
        (OUTSIDE, udp.clone()),
        (OUTSIDE, syn.clone()),
        (OUTSIDE, ping),
        (VIP, udp),
        (VIP, syn),
    ];
    for (dst, l4) in flows {
        let slot = match l4 {
            L4::Udp { .. } => &mut out.nat_udp,
            L4::Tcp { .. } => &mut out.nat_tcp,
            _ => &mut out.nat_ping,
        };
        let ip = Ip4 {
            src: POD1,
            dst,
            l4,
            ..Ip4::default()
        };
        let frame = frames::ethernet(GATEWAY_MAC, POD_MACS[0], &frames::ipv4(&ip));
        let nat = send(&mut p, t, &frame, POD_PORTS[0]);
        if dst == OUTSIDE
            && let Some(port) = nat
        {
            *slot = port;
        }
    }
    (p, out)
}

/// Processes `bytes`; when forwarded, the source port (or echo identifier) it left
/// with.
fn send(p: &mut Pipeline, t: &Tables, bytes: &[u8], in_port: PortId) -> Option<u16> {
    let mut buf = [0u8; FRAME_BUFFER_SIZE];
    let mut frame = Frame::copy_from(&mut buf, bytes, FrameMeta { in_port }).ok()?;
    let Verdict::Forward { .. } = p.process(&mut frame, t, Now(0)) else {
        return None;
    };
    let d = frame.data();
    let ihl = usize::from(d.get(14)? & 0x0f) * 4;
    let at = 14 + ihl + if d.get(14 + 9) == Some(&1) { 4 } else { 0 };
    Some(u16::from_be_bytes([*d.get(at)?, *d.get(at + 1)?]))
}
