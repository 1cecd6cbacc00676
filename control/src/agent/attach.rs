//! Opening the dataplane's ports for the uplink and for pods, per backend.
//!
//! AF_XDP: the steering program goes on the uplink (only VXLAN to this node, or the
//! local pod block in underlay, reaches the sockets; SSH and kubelet stay with the
//! kernel) and on each pod's host-side veth (everything the pod sends is ours). One
//! socket per queue; the program is detached when the last socket of an interface
//! is dropped, which is how SIGTERM leaves the node as it was found.

use std::sync::Arc;

use hybridway_dataplane::frame::PortId;
use hybridway_dataplane::port::xdp::{AttachMode, SteerRules, XdpConfig, XdpPort, XdpSteering};
use hybridway_dataplane::port::{Backend, Port, PortError};

use super::config::{AgentConfig, ModeConfig};

/// UMEM chunks of a pod port (a pod sees less traffic than the uplink; 2 MiB).
const POD_FRAMES: u32 = 1024;
const POD_RING: u32 = 512;

/// Number of receive queues of `ifname` (1 when sysfs does not say).
pub fn rx_queues(ifname: &str) -> usize {
    std::fs::read_dir(format!("/sys/class/net/{ifname}/queues"))
        .map(|d| d.filter_map(Result::ok).filter(|e| e.file_name().to_string_lossy().starts_with("rx-")).count())
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
        PortOpener { backend, hugepages: cfg.dataplane.hugepages }
    }

    /// What the uplink's steering program sends to the dataplane.
    fn uplink_rules(cfg: &AgentConfig) -> SteerRules {
        let block = cfg.pods.block;
        let block_v4 = match block.addr() {
            std::net::IpAddr::V4(a) => a,
            std::net::IpAddr::V6(_) => std::net::Ipv4Addr::UNSPECIFIED,
        };
        match cfg.mode {
            ModeConfig::Overlay => SteerRules { vxlan_port: cfg.vxlan.port, ..SteerRules::vxlan_to(cfg.node.address) },
            ModeConfig::Underlay => SteerRules {
                steer_all: false,
                node_addr: None,
                vxlan_port: cfg.vxlan.port,
                pod_block: None,
            }
            .with_pod_block(block_v4, block.len()),
        }
    }

    /// One port per queue of the uplink, `queues` of them, all with id `id`.
    pub fn open_uplink(&self, cfg: &AgentConfig, id: PortId, queues: usize) -> Result<Vec<Box<dyn Port>>, PortError> {
        match self.backend {
            Backend::AfXdp | Backend::Auto => {
                let ifname = &cfg.uplink.interface;
                let steering = XdpSteering::attach(ifname, Self::uplink_rules(cfg), AttachMode::Auto)?;
                (0..queues)
                    .map(|q| {
                        let mut c = XdpConfig::new(ifname, u32::try_from(q).unwrap_or(0), id);
                        c.hugepages = self.hugepages;
                        XdpPort::open(&c, Arc::clone(&steering)).map(|p| Box::new(p) as Box<dyn Port>)
                    })
                    .collect()
            }
            Backend::Tun => Err(PortError::TunUnavailable {
                missing: "the TUN backend is not wired into the agent yet; use backend: af_xdp".into(),
            }),
        }
    }

    /// The port of a pod's host-side veth (queue 0).
    pub fn open_pod(&self, ifname: &str, id: PortId) -> Result<Box<dyn Port>, PortError> {
        match self.backend {
            Backend::AfXdp | Backend::Auto => {
                let steering = XdpSteering::attach(ifname, SteerRules::everything(), AttachMode::Auto)?;
                let mut c = XdpConfig::new(ifname, 0, id);
                c.hugepages = self.hugepages;
                c.frames = POD_FRAMES;
                c.ring_size = POD_RING;
                Ok(Box::new(XdpPort::open(&c, steering)?))
            }
            Backend::Tun => Err(PortError::TunUnavailable {
                missing: "the TUN backend is not wired into the agent yet; use backend: af_xdp".into(),
            }),
        }
    }
}
