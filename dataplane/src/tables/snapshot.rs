//! The immutable forwarding snapshot and its atomic publication (RCU style).

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::frame::PortId;
use crate::tables::routes::{Prefix, RouteTable};
use crate::tables::services::ServiceTable;
use crate::tables::vteps::VtepSet;
use crate::wire::MacAddr;

/// How pod traffic crosses between nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Mode {
    /// VXLAN over UDP between node addresses.
    #[default]
    Overlay,
    /// Plain routing; pod routes are advertised over BGP.
    Underlay,
}

/// Facts about this node that the pipeline needs for every packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSettings {
    pub mode: Mode,
    /// The node's address on the uplink: VXLAN outer source, SNAT address.
    pub node_addr: Ipv4Addr,
    pub node_addr_v6: Option<Ipv6Addr>,
    /// The uplink: VXLAN leaves and arrives here (on the TUN backend, the VXLAN UDP
    /// socket).
    pub uplink_port: PortId,
    /// Where plain (unencapsulated) IP leaving the node goes: underlay routes, the
    /// outside. The uplink itself on AF_XDP; on the TUN backend the host port, from
    /// which the kernel forwards it (the kernel owns the NIC there).
    pub routed_port: PortId,
    /// The kernel's door into the dataplane (a TUN device), when there is one. Frames
    /// from it are judged as frames from the uplink: the kernel routed them here
    /// (packets for local pods, replies to masqueraded flows, the host's own packets
    /// to pods). The workers write `ToHost` frames into it, so the kernel receives
    /// what the pipeline says is the host's.
    pub host_port: Option<PortId>,
    pub uplink_mac: MacAddr,
    /// MTU of the uplink; the overlay pod MTU is this minus 50.
    pub uplink_mtu: u16,
    /// This node's VTEP MAC (inner destination MAC of VXLAN sent to us).
    pub vtep_mac: MacAddr,
    pub vni: u32,
    /// VXLAN UDP destination port (8472, as Linux and flannel use).
    pub vxlan_port: u16,
    /// Whether VXLAN packets we send carry DF.
    pub vxlan_df: bool,
    /// Gateway address that pods use as their default route, answered by ARP/NDP.
    pub gateway_v4: Ipv4Addr,
    pub gateway_v6: Option<Ipv6Addr>,
    /// MAC the dataplane answers with for the gateway.
    pub gateway_mac: MacAddr,
    /// Masquerade pod traffic that leaves the cluster to `node_addr`.
    pub snat: bool,
    /// The host's own address in the pod network (its block's first address, as
    /// flannel puts on `flannel.1`): the kernel reaches pods on other nodes from it
    /// through the host port, so their replies are routed back like pod traffic.
    /// `None`: the host reaches local pods only.
    pub host_pod_addr: Option<Ipv4Addr>,
}

impl NodeSettings {
    /// Whether frames from `port` come from outside the node's pods: the uplink or the
    /// host port.
    #[inline]
    pub fn is_uplink_side(&self, port: PortId) -> bool {
        port == self.uplink_port || Some(port) == self.host_port
    }
}

/// One immutable snapshot of everything the workers read.
#[derive(Clone, Debug)]
pub struct Tables {
    /// Bumped on every publication, for logs and tests.
    pub generation: u64,
    pub node: NodeSettings,
    pub routes: RouteTable,
    /// Destinations never masqueraded (cluster pod, service and node ranges).
    pub no_snat: Vec<Prefix>,
    /// Node addresses VXLAN is accepted from (every remote node in the table), as
    /// the set the workers probe per packet.
    pub known_vteps: VtepSet,
    /// Kubernetes Services; shared between snapshots that differ in routes only.
    pub services: Arc<ServiceTable>,
}

impl Tables {
    /// Whether traffic to `dst` stays unmasqueraded.
    pub fn is_no_snat(&self, dst: Ipv4Addr) -> bool {
        self.no_snat.iter().any(|p| p.contains(dst.into()))
    }

    /// Whether VXLAN from `src` comes from a known node.
    pub fn is_known_vtep(&self, src: Ipv4Addr) -> bool {
        self.known_vteps.contains(src)
    }
}

/// The published snapshot. Workers call [`SharedTables::load`] once per batch; the
/// control thread calls [`SharedTables::publish`]; neither blocks the other.
#[derive(Debug)]
pub struct SharedTables {
    current: ArcSwap<Tables>,
}

impl SharedTables {
    pub fn new(initial: Tables) -> Self {
        SharedTables {
            current: ArcSwap::from_pointee(initial),
        }
    }

    /// The snapshot in force now; hold the guard for one batch, not longer.
    pub fn load(&self) -> arc_swap::Guard<Arc<Tables>> {
        self.current.load()
    }

    /// Replaces the snapshot; the generation is set to one past the current one.
    pub fn publish(&self, mut next: Tables) {
        next.generation = self.current.load().generation.wrapping_add(1);
        self.current.store(Arc::new(next));
    }
}
