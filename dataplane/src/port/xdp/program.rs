//! The XDP steering program (`bpf/steer.bpf.c`): loaded with aya, configured through
//! its read-only globals, attached to one interface and detached on drop.

use std::fmt;
use std::net::Ipv4Addr;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};

use aya::maps::{MapData, XskMap};
use aya::programs::{Xdp, XdpFlags};
use aya::{Ebpf, EbpfLoader};

use super::super::PortError;

static STEER_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/steer.bpf.o"));

/// UDP port of VXLAN as Linux and flannel use it.
pub use crate::wire::VXLAN_PORT;

/// Which received frames go to the AF_XDP sockets; everything else goes to the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SteerRules {
    /// Every frame (pod veths: all their traffic is hybridway's).
    pub steer_all: bool,
    /// IPv4 UDP to this address and [`SteerRules::vxlan_port`] (overlay).
    pub node_addr: Option<Ipv4Addr>,
    pub vxlan_port: u16,
    /// IPv4 to this prefix (underlay: the local pod block).
    pub pod_block: Option<(Ipv4Addr, u8)>,
    /// IPv4 TCP/UDP to [`SteerRules::node_addr`] with a destination port in this
    /// inclusive range (NodePorts).
    pub node_ports: Option<(u16, u16)>,
}

impl SteerRules {
    /// All traffic of a pod veth.
    pub fn everything() -> Self {
        SteerRules {
            steer_all: true,
            node_addr: None,
            vxlan_port: VXLAN_PORT,
            pod_block: None,
            node_ports: None,
        }
    }

    /// VXLAN to `node_addr` (overlay uplink).
    pub fn vxlan_to(node_addr: Ipv4Addr) -> Self {
        SteerRules {
            steer_all: false,
            node_addr: Some(node_addr),
            vxlan_port: VXLAN_PORT,
            pod_block: None,
            node_ports: None,
        }
    }

    /// Also steer TCP/UDP to the node address on ports `min..=max` (NodePorts).
    pub fn with_node_ports(mut self, min: u16, max: u16) -> Self {
        self.node_ports = (min <= max && max != 0).then_some((min, max));
        self
    }

    /// Also steer IPv4 to the pod block `addr/len` (underlay uplink).
    pub fn with_pod_block(mut self, addr: Ipv4Addr, len: u8) -> Self {
        self.pod_block = Some((addr, len.min(32)));
        self
    }
}

/// Replies to masqueraded flows that the program steers (see
/// [`XdpSteering::attach_with_snat`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnatSteer {
    pub addr: Ipv4Addr,
    pub ports: std::ops::RangeInclusive<u16>,
}

/// How to attach the program.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AttachMode {
    /// Native (driver) mode, falling back to generic (SKB) mode.
    #[default]
    Auto,
    /// Driver mode only.
    Native,
    /// Generic (SKB) mode: works on every interface, slower.
    Generic,
}

/// The steering program attached to one interface. Ports hold it in an `Arc` and
/// register their socket; the program is detached when the last holder drops it.
pub struct XdpSteering {
    ifname: String,
    attached_native: bool,
    // The Ebpf owns the program and its bpf_link: dropping it detaches the program.
    inner: Mutex<(XskMap<MapData>, Ebpf)>,
}

impl fmt::Debug for XdpSteering {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XdpSteering")
            .field("ifname", &self.ifname)
            .field("attached_native", &self.attached_native)
            .finish()
    }
}

fn prog_err(ifname: &str, what: &str, e: impl fmt::Display) -> PortError {
    PortError::Program(format!("{what} on {ifname}: {e}"))
}

impl XdpSteering {
    /// Loads the program with `rules` and attaches it to `ifname`.
    pub fn attach(
        ifname: &str,
        rules: SteerRules,
        mode: AttachMode,
    ) -> Result<Arc<Self>, PortError> {
        Self::attach_with_snat(ifname, rules, None, mode)
    }

    /// Like [`XdpSteering::attach`], and also steers replies to masqueraded flows:
    /// TCP/UDP to `snat.addr` with a destination port in `snat.ports`, and ICMP echo
    /// replies with an identifier in that range.
    pub fn attach_with_snat(
        ifname: &str,
        rules: SteerRules,
        snat: Option<SnatSteer>,
        mode: AttachMode,
    ) -> Result<Arc<Self>, PortError> {
        if super::super::probe::ifindex(ifname).is_none() {
            return Err(PortError::NoSuchInterface(ifname.to_owned()));
        }
        let be32 = |a: Ipv4Addr| u32::from_ne_bytes(a.octets());
        let steer_all = u32::from(rules.steer_all);
        let node_addr = rules.node_addr.map(be32).unwrap_or(0);
        let vxlan_port = u16::from_ne_bytes(rules.vxlan_port.to_be_bytes());
        let (pod_net, pod_mask) = match rules.pod_block {
            Some((addr, len)) if len > 0 => {
                let mask = u32::MAX << (32 - u32::from(len));
                (u32::from(addr) & mask, mask)
            }
            _ => (0, 0),
        };
        let pod_net = u32::from_ne_bytes(pod_net.to_be_bytes());
        let pod_mask = u32::from_ne_bytes(pod_mask.to_be_bytes());
        let (nat_addr, nat_min, nat_max) = match &snat {
            Some(s) => (be32(s.addr), *s.ports.start(), *s.ports.end()),
            None => (0, 0, 0),
        };
        let (node_port_min, node_port_max) = rules.node_ports.unwrap_or((0, 0));
        let mut ebpf = EbpfLoader::new()
            .set_global("STEER_ALL", &steer_all, true)
            .set_global("NODE_ADDR", &node_addr, true)
            .set_global("VXLAN_PORT", &vxlan_port, true)
            .set_global("POD_NET", &pod_net, true)
            .set_global("POD_MASK", &pod_mask, true)
            .set_global("NAT_ADDR", &nat_addr, true)
            .set_global("NAT_PORT_MIN", &nat_min, true)
            .set_global("NAT_PORT_MAX", &nat_max, true)
            .set_global("NODE_PORT_MIN", &node_port_min, true)
            .set_global("NODE_PORT_MAX", &node_port_max, true)
            .load(STEER_OBJECT)
            .map_err(|e| {
                prog_err(
                    ifname,
                    "loading the steering program (needs CAP_BPF and a BPF-enabled kernel)",
                    e,
                )
            })?;
        let program: &mut Xdp = ebpf
            .program_mut("hybridway_steer")
            .ok_or_else(|| {
                prog_err(
                    ifname,
                    "finding the program",
                    "hybridway_steer missing from the object",
                )
            })?
            .try_into()
            .map_err(|e| prog_err(ifname, "program type", e))?;
        program
            .load()
            .map_err(|e| prog_err(ifname, "verifying the steering program", e))?;
        let attached_native = match mode {
            AttachMode::Native => {
                program
                    .attach(ifname, XdpFlags::DRV_MODE)
                    .map_err(|e| attach_err(ifname, "native", e))?;
                true
            }
            AttachMode::Generic => {
                program
                    .attach(ifname, XdpFlags::SKB_MODE)
                    .map_err(|e| attach_err(ifname, "generic", e))?;
                false
            }
            AttachMode::Auto => match program.attach(ifname, XdpFlags::DRV_MODE) {
                Ok(_) => true,
                Err(native) => {
                    tracing::info!(ifname, error = %native, "native XDP refused, attaching in generic (SKB) mode");
                    program
                        .attach(ifname, XdpFlags::SKB_MODE)
                        .map_err(|e| attach_err(ifname, "generic", e))?;
                    false
                }
            },
        };
        let map = ebpf.take_map("xsks").ok_or_else(|| {
            prog_err(ifname, "finding the XSKMAP", "xsks missing from the object")
        })?;
        let xsks = XskMap::try_from(map).map_err(|e| prog_err(ifname, "opening the XSKMAP", e))?;
        tracing::info!(
            ifname,
            native = attached_native,
            ?rules,
            "XDP steering program attached"
        );
        Ok(Arc::new(XdpSteering {
            ifname: ifname.to_owned(),
            attached_native,
            inner: Mutex::new((xsks, ebpf)),
        }))
    }

    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// Was the program attached in native (driver) mode rather than generic mode?
    pub fn is_native(&self) -> bool {
        self.attached_native
    }

    /// Sends frames steered on `queue` to the AF_XDP socket `fd`.
    pub fn register(&self, queue: u32, fd: RawFd) -> Result<(), PortError> {
        let mut guard = self
            .inner
            .lock()
            .map_err(|_| prog_err(&self.ifname, "XSKMAP", "lock poisoned"))?;
        guard
            .0
            .set(queue, fd, 0)
            .map_err(|e| prog_err(&self.ifname, "registering the socket in the XSKMAP", e))
    }
}

impl Drop for XdpSteering {
    fn drop(&mut self) {
        tracing::info!(ifname = %self.ifname, "detaching the XDP steering program");
    }
}

fn attach_err(ifname: &str, mode: &str, e: aya::programs::ProgramError) -> PortError {
    PortError::XdpUnavailable {
        ifname: ifname.to_owned(),
        missing: format!(
            "the interface refused an XDP program in {mode} mode ({e}); another program may be attached"
        ),
    }
}
