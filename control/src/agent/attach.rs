//! Opening the dataplane's ports for the uplink and for pods, per backend.
//!
//! AF_XDP: the steering program goes on the uplink (only VXLAN to this node, the
//! local pod block, SNAT replies and NodePorts reach the sockets; SSH and kubelet stay
//! with the kernel) and on each pod's host-side veth (everything the pod sends is ours). One
//! socket per queue; the program is detached when the last socket of an interface
//! is dropped, which is how SIGTERM leaves the node as it was found.
//!
//! TUN: the kernel keeps the NIC and the pods' veths; a pod TUN device (`hw0`) and
//! the VXLAN UDP socket carry the overlay, and the host port carries everything
//! plain (see `host_routing`).

use std::ops::RangeInclusive;
use std::sync::Arc;

use hybridway_dataplane::frame::PortId;
use hybridway_dataplane::port::tun::{TunConfig, TunPort};
use hybridway_dataplane::port::udp::{UdpConfig, UdpPort};
use hybridway_dataplane::port::xdp::{
    AttachMode, SnatSteer, SteerRules, XdpConfig, XdpPort, XdpSteering,
};
use hybridway_dataplane::port::{Backend, Port, PortError};
use hybridway_dataplane::wire::MacAddr;

use super::config::AgentConfig;

/// UMEM chunks of a pod port (4 MiB; the uplink has 8). Half of them receive: a pod's
/// TCP sender bursts a whole window into the port while the worker is descheduled,
/// and with 512 receive chunks 3-7 % of its segments were dropped there (measured
/// end to end, `bench/e2e`), each one a retransmit and a congestion-window cut.
const POD_FRAMES: u32 = 2048;
const POD_RING: u32 = 1024;

/// Number of receive queues of `ifname` (1 when sysfs does not say).
pub fn rx_queues(ifname: &str) -> usize {
    std::fs::read_dir(format!("/sys/class/net/{ifname}/queues"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
                .count()
        })
        .unwrap_or(1)
        .max(1)
}

/// Opens ports of one backend.
#[derive(Debug)]
pub struct PortOpener {
    pub backend: Backend,
    hugepages: bool,
}

impl PortOpener {
    pub fn new(backend: Backend, cfg: &AgentConfig) -> Self {
        PortOpener {
            backend,
            hugepages: cfg.dataplane.hugepages,
        }
    }

    /// What the uplink's steering program sends to the dataplane.
    fn uplink_rules(cfg: &AgentConfig) -> SteerRules {
        let block = cfg.pods.block;
        let block_v4 = match block.addr() {
            std::net::IpAddr::V4(a) => a,
            std::net::IpAddr::V6(_) => std::net::Ipv4Addr::UNSPECIFIED,
        };
        // Both modes take VXLAN to the node and plain packets to the local pods: an
        // overlay's replies from outside arrive routed (BGP) when SNAT is off, and an
        // underlay node still meets VXLAN from the nodes it reaches by overlay (cloud
        // nodes running flannel, overlay pools).
        // NodePorts: to the node's address on the cluster's NodePort range.
        let node_ports = cfg.services.node_port_range;
        SteerRules {
            vxlan_port: cfg.vxlan.port,
            ..SteerRules::vxlan_to(cfg.node.address)
        }
        .with_pod_block(block_v4, block.len())
        .with_node_ports(node_ports.min, node_ports.max)
    }

    /// One port per queue of the uplink, `queues` of them, all with id `id`.
    /// `snat_ports`: the SNAT range whose replies the dataplane must see (SNAT on).
    pub fn open_uplink(
        &self,
        cfg: &AgentConfig,
        id: PortId,
        queues: usize,
        snat_ports: Option<RangeInclusive<u16>>,
        uplink_mac: MacAddr,
    ) -> Result<Vec<Box<dyn Port>>, PortError> {
        match self.backend {
            Backend::AfXdp | Backend::Auto => {
                let ifname = &cfg.uplink.interface;
                let snat = snat_ports.map(|ports| SnatSteer {
                    addr: cfg.node.address,
                    ports,
                });
                let steering = XdpSteering::attach_with_snat(
                    ifname,
                    Self::uplink_rules(cfg),
                    snat,
                    AttachMode::Auto,
                )?;
                (0..queues)
                    .map(|q| {
                        let mut c = XdpConfig::new(ifname, u32::try_from(q).unwrap_or(0), id);
                        c.hugepages = self.hugepages;
                        XdpPort::open(&c, Arc::clone(&steering))
                            .map(|p| Box::new(p) as Box<dyn Port>)
                    })
                    .collect()
            }
            // TUN backend: the uplink side of the overlay is a UDP socket per worker
            // (SO_REUSEPORT) on node:vxlan_port; the kernel keeps the NIC. Plain
            // packets cross the host port instead (`open_tun`, `host_routing`). An
            // underlay node opens it too: flannel's nodes reach it over VXLAN.
            Backend::Tun => {
                let mut c = UdpConfig::new(
                    std::net::SocketAddrV4::new(cfg.node.address, cfg.vxlan.port),
                    id,
                );
                c.mac = uplink_mac;
                Ok(UdpPort::open(&c, queues)?
                    .into_iter()
                    .map(|p| Box::new(p) as Box<dyn Port>)
                    .collect())
            }
        }
    }

    /// A TUN device, one queue per worker: the pod TUN (`hw0`, TUN backend) or the
    /// host port (`hwhost`, both backends), through which the kernel and the
    /// dataplane hand each other packets (see `host_routing`). `to_mac`: the
    /// destination MAC of frames read from it — the uplink's for the host port, so
    /// the pipeline judges them as the uplink's; `None` keeps the device's own.
    pub fn open_tun(
        &self,
        name: &str,
        queues: usize,
        id: PortId,
        mtu: u16,
        to_mac: Option<MacAddr>,
    ) -> Result<Vec<Box<dyn Port>>, PortError> {
        let mut c = TunConfig::new(name, queues, id);
        c.mtu = Some(u32::from(mtu));
        if let Some(mac) = to_mac {
            c.mac = mac;
        }
        Ok(TunPort::open(&c)?
            .into_iter()
            .map(|p| Box::new(p) as Box<dyn Port>)
            .collect())
    }

    /// The port of a pod's host-side veth (queue 0).
    pub fn open_pod(&self, ifname: &str, id: PortId) -> Result<Box<dyn Port>, PortError> {
        match self.backend {
            Backend::AfXdp | Backend::Auto => {
                let steering =
                    XdpSteering::attach(ifname, SteerRules::everything(), AttachMode::Auto)?;
                let mut c = XdpConfig::new(ifname, 0, id);
                c.hugepages = self.hugepages;
                c.frames = POD_FRAMES;
                c.ring_size = POD_RING;
                Ok(Box::new(XdpPort::open(&c, steering)?))
            }
            Backend::Tun => Err(PortError::Config(
                "on the TUN backend pods have no port of their own".into(),
            )),
        }
    }
}
