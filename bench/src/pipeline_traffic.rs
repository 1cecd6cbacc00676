//! The pipeline's benchmark scenarios, shared by the criterion bench
//! (`benches/pipeline.rs`) and the instructions-per-packet harness
//! (`src/bin/pipeline_instructions.rs`): a node-sized table, the frames of each path
//! and a batch of 64 frame buffers refilled between runs.
//!
//! Filling a batch is never what is measured: both callers time or count only the
//! `Pipeline::process_batch` call that [`Batch::run`] hands them.

use std::net::{IpAddr, Ipv4Addr};

use hybridway_dataplane::frame::{FRAME_HEADROOM, Frame, FrameMeta, PortId};
use hybridway_dataplane::pipeline::Pipeline;
use hybridway_dataplane::tables::services::{
    EndpointSpec, ServicePortSpec, ServiceProto, ServiceSpec, ServiceTable,
};
use hybridway_dataplane::tables::{
    Mode, NodeSettings, Prefix, RouteTableBuilder, RouteTarget, SnatConfig, Tables,
};
use hybridway_dataplane::time::Now;
use hybridway_dataplane::verdict::Verdict;
use hybridway_dataplane::wire::{MacAddr, checksum};

pub const BATCH: usize = 64;
pub const BUF: usize = 2048;
pub const UPLINK: PortId = PortId(0);
pub const POD_PORT: PortId = PortId(1);
pub const NODE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const REMOTE_NODE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const POD: Ipv4Addr = Ipv4Addr::new(198, 19, 1, 10);
pub const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(198, 19, 2, 20);
pub const GATEWAY_MAC: MacAddr = MacAddr([2, 0, 0, 0, 0xaa, 1]);
pub const POD_MAC: MacAddr = MacAddr([2, 0, 0, 0, 0xbb, 10]);
pub const UPLINK_MAC: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);
pub const VTEP_MAC: MacAddr = MacAddr([2, 0, 0, 0, 0x0f, 1]);
pub const T0: Now = Now(1_000);
/// First ClusterIP of the service scenario (service CIDR 198.18.240.0/20).
pub const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 240, 10);
/// The pods' gateway: the masquerade source of `Cluster` NodePort flows.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 19, 1, 1);
/// The uplink's router: the default route's next hop, outside clients' packets come
/// from it.
pub const ROUTER_MAC: MacAddr = MacAddr([2, 0, 0, 0, 0, 0xfe]);
/// The NodePort of the node-port scenario.
pub const NODE_PORT: u16 = 30053;

/// A node-sized snapshot: this node's pod, 250 more local pods, 200 remote node
/// blocks over VXLAN and a default route out, SNAT on.
pub fn tables() -> Tables {
    let mut b = RouteTableBuilder::new();
    let p = |s: &str| s.parse::<Prefix>().expect("prefix");
    b.add(
        p("198.19.1.10/32"),
        RouteTarget::LocalPod {
            port: POD_PORT,
            mac: POD_MAC,
        },
    )
    .expect("route");
    for i in 0..250u8 {
        let _ = b.add(
            Prefix::new(IpAddr::V4(Ipv4Addr::new(198, 19, 1, i)), 32).expect("prefix"),
            RouteTarget::LocalPod {
                port: PortId(100 + u16::from(i)),
                mac: MacAddr([2, 0, 0, 1, 0, i]),
            },
        );
    }
    for i in 2..202u8 {
        b.add(
            Prefix::new(IpAddr::V4(Ipv4Addr::new(198, 19, i, 0)), 24).expect("prefix"),
            RouteTarget::VxlanNode {
                node_addr: Ipv4Addr::new(198, 18, 0, i),
                vtep_mac: MacAddr([2, 0, 0, 0, 0x0f, i]),
                vni: 1,
                next_hop_mac: MacAddr([2, 0, 0, 0, 0, i]),
            },
        )
        .expect("route");
    }
    b.add(
        p("0.0.0.0/0"),
        RouteTarget::Outside {
            next_hop_mac: ROUTER_MAC,
        },
    )
    .expect("route");
    Tables {
        generation: 1,
        node: NodeSettings {
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
            gateway_v6: None,
            gateway_mac: GATEWAY_MAC,
            snat: true,
            host_pod_addr: None,
        },
        routes: b.build(),
        no_snat: vec![p("198.19.0.0/16"), p("198.18.0.0/24")],
        known_vteps: (2..202u8).map(|i| Ipv4Addr::new(198, 18, 0, i)).collect(),
        services: Default::default(),
    }
}

/// Ethernet + IPv4 + UDP with `len` bytes in all; UDP checksum 0; the body is 0x5a.
pub fn udp_frame(
    src_mac: MacAddr,
    dst_mac: MacAddr,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    len: usize,
) -> Vec<u8> {
    let mut f = vec![0x5au8; len.max(42)];
    f[0..6].copy_from_slice(&dst_mac.0);
    f[6..12].copy_from_slice(&src_mac.0);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    write_ip_udp(&mut f, src, dst, sport, dport);
    f
}

/// Writes the IPv4 (TTL 64, DF) and UDP headers of a frame of `f.len()` bytes.
pub fn write_ip_udp(f: &mut [u8], src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) {
    let ip_len = (f.len() - 14) as u16;
    let ip = &mut f[14..34];
    ip.copy_from_slice(&[
        0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ]);
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let c = checksum::checksum(ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f[34..36].copy_from_slice(&sport.to_be_bytes());
    f[36..38].copy_from_slice(&dport.to_be_bytes());
    f[38..40].copy_from_slice(&(ip_len - 20).to_be_bytes());
    f[40..42].copy_from_slice(&[0, 0]);
}

/// A pod's packet of `size` bytes to a pod behind a remote node (encapsulation).
pub fn pod_to_remote_pod(size: usize) -> Vec<u8> {
    udp_frame(POD_MAC, GATEWAY_MAC, POD, REMOTE_POD, 1234, 5678, size)
}

/// VXLAN from the remote node carrying a `size`-byte frame from its pod to ours
/// (decapsulation).
pub fn vxlan_from_remote_pod(size: usize) -> Vec<u8> {
    let mut inner = udp_frame(
        MacAddr([2, 0, 0, 0, 0x0f, 2]),
        VTEP_MAC,
        REMOTE_POD,
        POD,
        5678,
        1234,
        size,
    );
    // One hop already taken on the sending node.
    inner[22] = 63;
    inner[24..26].fill(0);
    let c = checksum::checksum(&inner[14..34]);
    inner[24..26].copy_from_slice(&c.to_be_bytes());
    let mut f = udp_frame(
        MacAddr([2, 0, 0, 0, 0, 2]),
        UPLINK_MAC,
        REMOTE_NODE,
        NODE,
        40000,
        8472,
        50 + inner.len(),
    );
    f[42..50].copy_from_slice(&[0x08, 0, 0, 0, 0, 0, 1, 0]);
    f[50..].copy_from_slice(&inner);
    f
}

/// Writes `packet` into `buf`: whole the first time, later only its first `headers`
/// bytes (what the pipeline rewrites), as a NIC writing a fresh packet would leave it.
pub fn refill(buf: &mut [u8], packet: &[u8], headers: usize) -> usize {
    let body_missing = buf[packet.len() - 1] != 0x5a || buf[12] != 0x08;
    if body_missing {
        buf[..packet.len()].copy_from_slice(packet);
    } else {
        buf[..headers].copy_from_slice(&packet[..headers]);
    }
    packet.len()
}

/// A tiny xorshift so flows are picked uniformly without touching the rand API.
#[derive(Debug)]
pub struct Rng(pub u64);

impl Rng {
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Flow `i`: pod source port and remote address (60,000 ports per remote).
pub fn flow(i: usize) -> (u16, Ipv4Addr) {
    let port = 1024 + (i % 60_000) as u16;
    let remote = Ipv4Addr::new(198, 18, 100 + (i / 60_000) as u8, 7);
    (port, remote)
}

/// Writes flow `i`'s packet from the pod, 64 bytes; returns its length.
pub fn write_masquerade(buf: &mut [u8], i: usize) -> usize {
    let (port, remote) = flow(i);
    let f = &mut buf[..64];
    f[..14].copy_from_slice(&[2, 0, 0, 0, 0xaa, 1, 2, 0, 0, 0, 0xbb, 10, 8, 0]);
    write_ip_udp(f, POD, remote, port, 53);
    64
}

/// Writes the reply to flow `i` (masqueraded to `nat_port`), 64 bytes.
pub fn write_reply(buf: &mut [u8], i: usize, nat_port: u16) -> usize {
    let (_, remote) = flow(i);
    let f = &mut buf[..64];
    f[..14].copy_from_slice(&[2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 0xfe, 8, 0]);
    write_ip_udp(f, remote, NODE, 53, nat_port);
    64
}

/// One worker's pipeline with room for `n` flows and a quarter more, SNAT and
/// Service flows alike, so that the scenarios compare like for like.
fn pipeline_for(n: usize) -> Pipeline {
    let config = SnatConfig {
        capacity_per_worker: n + n / 4,
        ..SnatConfig::default()
    };
    Pipeline::new(0, &config)
}

/// A pipeline with `n` established UDP flows from POD; returns each flow's NAT port.
pub fn established(n: usize, t: &Tables) -> (Pipeline, Vec<u16>) {
    let mut p = pipeline_for(n);
    let mut nat_ports = Vec::with_capacity(n);
    let mut buf = [0u8; BUF];
    for i in 0..n {
        let (port, remote) = flow(i);
        let f = udp_frame(POD_MAC, GATEWAY_MAC, POD, remote, port, 53, 64);
        let mut frame =
            Frame::copy_from(&mut buf, &f, FrameMeta { in_port: POD_PORT }).expect("room");
        assert_eq!(
            p.process(&mut frame, t, T0),
            Verdict::Forward { port: UPLINK }
        );
        let d = frame.data();
        nat_ports.push(u16::from_be_bytes([d[34], d[35]]));
    }
    (p, nat_ports)
}

/// A pipeline and tables with 1,000 Services of 10 endpoints each (host-network
/// endpoints, routed without SNAT like `established`'s packets are routed with
/// it) and `n` established UDP flows from POD to the first Service's port 53.
pub fn service_flows(n: usize) -> (Pipeline, Tables) {
    let mut t = tables();
    let specs: Vec<ServiceSpec> = (0..1_000u32)
        .map(|s| ServiceSpec {
            name: format!("default/svc-{s}"),
            cluster_ips: vec![Ipv4Addr::from_bits(u32::from(VIP) + s)],
            ports: vec![ServicePortSpec {
                proto: ServiceProto::Udp,
                port: 53,
                node_port: None,
                endpoints: (0..10u8)
                    .map(|e| EndpointSpec {
                        addr: Ipv4Addr::new(198, 18, 0, 100 + e),
                        port: 5353,
                        ready: true,
                        serving: true,
                        terminating: false,
                        local: false,
                    })
                    .collect(),
            }],
            ..ServiceSpec::default()
        })
        .collect();
    t.services = std::sync::Arc::new(ServiceTable::build(&specs));
    let mut p = pipeline_for(n);
    let mut buf = [0u8; BUF];
    for i in 0..n {
        let f = udp_frame(POD_MAC, GATEWAY_MAC, POD, VIP, 1024 + i as u16, 53, 64);
        let mut frame =
            Frame::copy_from(&mut buf, &f, FrameMeta { in_port: POD_PORT }).expect("room");
        assert_eq!(
            p.process(&mut frame, &t, T0),
            Verdict::Forward { port: UPLINK }
        );
    }
    assert_eq!(p.service_flows(), n);
    (p, t)
}

/// Writes the packet of [`service_flows`]' flow from pod port `port` to the
/// ClusterIP, 64 bytes.
pub fn write_to_service(buf: &mut [u8], port: u16) -> usize {
    let f = &mut buf[..64];
    f[..14].copy_from_slice(&[2, 0, 0, 0, 0xaa, 1, 2, 0, 0, 0, 0xbb, 10, 8, 0]);
    write_ip_udp(f, POD, VIP, port, 53);
    64
}

/// Tables with one NodePort Service (UDP [`NODE_PORT`], `Cluster` policy, one
/// endpoint: POD:5353) and a pipeline with `n` established flows to it from outside
/// clients ([`flow`]'s remotes and ports, through the router); returns each flow's
/// gateway port (the masqueraded source the endpoint sees and answers).
pub fn node_port_flows(n: usize) -> (Pipeline, Tables, Vec<u16>) {
    let mut t = tables();
    let spec = ServiceSpec {
        name: "default/np".into(),
        cluster_ips: vec![VIP],
        ports: vec![ServicePortSpec {
            proto: ServiceProto::Udp,
            port: 53,
            node_port: Some(NODE_PORT),
            endpoints: vec![EndpointSpec {
                addr: POD,
                port: 5353,
                ready: true,
                serving: true,
                terminating: false,
                local: true,
            }],
        }],
        ..ServiceSpec::default()
    };
    t.services = std::sync::Arc::new(ServiceTable::build(&[spec]));
    let mut p = pipeline_for(n);
    let mut gateway_ports = Vec::with_capacity(n);
    let mut buf = [0u8; BUF];
    for i in 0..n {
        let mut f = [0u8; 64];
        write_to_node_port(&mut f, i);
        let mut frame =
            Frame::copy_from(&mut buf, &f, FrameMeta { in_port: UPLINK }).expect("room");
        assert_eq!(
            p.process(&mut frame, &t, T0),
            Verdict::Forward { port: POD_PORT }
        );
        let d = frame.data();
        gateway_ports.push(u16::from_be_bytes([d[34], d[35]]));
    }
    assert_eq!(p.service_flows(), n);
    (p, t, gateway_ports)
}

/// Writes outside client `i`'s packet to [`NODE_PORT`] ([`node_port_flows`]), 64
/// bytes.
pub fn write_to_node_port(buf: &mut [u8], i: usize) -> usize {
    let (port, remote) = flow(i);
    let f = &mut buf[..64];
    f[..6].copy_from_slice(&UPLINK_MAC.0);
    f[6..12].copy_from_slice(&ROUTER_MAC.0);
    f[12..14].copy_from_slice(&[8, 0]);
    write_ip_udp(f, remote, NODE, port, NODE_PORT);
    64
}

/// Writes the endpoint's reply to a [`node_port_flows`] flow masqueraded to
/// `gateway_port`, 64 bytes.
pub fn write_node_port_reply(buf: &mut [u8], gateway_port: u16) -> usize {
    let f = &mut buf[..64];
    f[..6].copy_from_slice(&GATEWAY_MAC.0);
    f[6..12].copy_from_slice(&POD_MAC.0);
    f[12..14].copy_from_slice(&[8, 0]);
    write_ip_udp(f, POD, GATEWAY, 5353, gateway_port);
    64
}

/// 64 frame buffers; `fill` writes packet `i` of the next batch into buffer `i`.
#[derive(Debug)]
pub struct Batch {
    bufs: Vec<[u8; BUF]>,
    lens: [usize; BATCH],
    pub verdicts: [Verdict; BATCH],
}

impl Default for Batch {
    fn default() -> Self {
        Self::new()
    }
}

impl Batch {
    pub fn new() -> Self {
        Batch {
            bufs: vec![[0u8; BUF]; BATCH],
            lens: [0; BATCH],
            verdicts: [Verdict::ToHost; BATCH],
        }
    }

    pub fn fill(&mut self, mut packet: impl FnMut(usize, &mut [u8]) -> usize) {
        for (i, buf) in self.bufs.iter_mut().enumerate() {
            self.lens[i] = packet(i, &mut buf[FRAME_HEADROOM..]);
        }
    }

    /// The lengths of the frames last filled (for keeping a fill-only loop honest).
    pub fn lens(&self) -> &[usize; BATCH] {
        &self.lens
    }

    /// Wraps the buffers as frames from `in_port` and hands them, with the verdict
    /// slots, to `process` (which calls `process_batch`, timed or counted).
    pub fn run<R>(
        &mut self,
        in_port: PortId,
        process: impl FnOnce(&mut [Frame<'_>], &mut [Verdict]) -> R,
    ) -> R {
        let lens = self.lens;
        let mut frames: [Frame<'_>; BATCH] = {
            let mut it = self.bufs.iter_mut().zip(lens);
            std::array::from_fn(|_| {
                let (buf, len) = it.next().expect("BATCH buffers");
                Frame::new(&mut buf[..], FRAME_HEADROOM, len, FrameMeta { in_port })
            })
        };
        process(&mut frames, &mut self.verdicts)
    }

    pub fn assert_all(&self, want: Verdict) {
        for v in &self.verdicts {
            assert_eq!(
                *v,
                want,
                "{:?}",
                self.verdicts.iter().take(4).collect::<Vec<_>>()
            );
        }
    }
}

/// Refills `batch` with `packet` (a pod's frame, [`pod_to_remote_pod`]), one flow per
/// frame (the source port's low byte is the frame's index).
pub fn fill_encap(batch: &mut Batch, packet: &[u8]) {
    batch.fill(|i, buf| {
        let len = refill(buf, packet, 42);
        buf[35] = i as u8;
        len
    });
}

/// Refills `batch` with `packet` (VXLAN, [`vxlan_from_remote_pod`]).
pub fn fill_decap(batch: &mut Batch, packet: &[u8]) {
    batch.fill(|_, buf| refill(buf, packet, 50 + 42));
}
