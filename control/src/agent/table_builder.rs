//! Configuration + local pods + resolved next-hop MACs → one immutable [`Tables`].
//!
//! Pure: every fact about the host arrives as an argument, so the mapping from
//! configuration to routes is unit-tested without a network.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};

use hybridway_dataplane::frame::PortId;
use hybridway_dataplane::tables::{NodeSettings, Prefix, RouteTableBuilder, RouteTarget, Tables};
use hybridway_dataplane::wire::MacAddr;
use serde::{Deserialize, Serialize};

use super::config::{AgentConfig, ModeConfig, PeerNodeConfig};

/// A pod on this node, as the CNI plugin (or `hybridway pod add`) describes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalPod {
    pub name: String,
    pub ip: Ipv4Addr,
    #[serde(with = "mac_string")]
    pub mac: MacAddr,
    /// Host-side interface of the pod's veth.
    pub interface: String,
    /// The pod's network namespace (a path, or a name under /run/netns). On the
    /// AF_XDP backend the agent looks at the pod's end of the veth there and makes it
    /// finish its frames in software (see `port::ethtool`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
}

/// MACs as "02:00:00:00:00:01" strings in the pod state file and control protocol.
pub(crate) mod mac_string {
    use hybridway_dataplane::wire::MacAddr;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(mac: &MacAddr, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(mac)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<MacAddr, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// A local pod and the dataplane port that reaches it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodAttachment {
    pub pod: LocalPod,
    pub port: PortId,
}

/// What the builder needs to know about the uplink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UplinkFacts {
    pub port: PortId,
    /// Where plain routed packets leave: `port` on AF_XDP, the host port on TUN.
    pub routed_port: PortId,
    /// The host port (the kernel's TUN door into the dataplane), when open.
    pub host_port: Option<PortId>,
    pub mac: MacAddr,
    pub mtu: u16,
    /// Length of the uplink subnet (nodes outside it are reached via the gateway).
    pub prefix_len: u8,
    /// Next hop for outside destinations (configured or the kernel's default route).
    pub gateway: Option<Ipv4Addr>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    #[error("pod {name}: address {ip} is outside this node's pod block {block}")]
    PodOutsideBlock {
        name: String,
        ip: Ipv4Addr,
        block: Prefix,
    },
    #[error("pod {name}: address {ip} is the pod gateway")]
    PodIsGateway { name: String, ip: Ipv4Addr },
    #[error("pod {name}: address {ip} is already used by pod {other}")]
    DuplicatePodIp {
        name: String,
        ip: Ipv4Addr,
        other: String,
    },
    #[error(
        "nodes[{index}] ({name}) is off the uplink subnet and no gateway is known (set uplink.gateway)"
    )]
    NoGatewayForNode { index: usize, name: String },
}

/// A built snapshot and the next hops whose MAC was not known (their routes carry a
/// zero MAC until a later build resolves them).
#[derive(Clone, Debug)]
pub struct Built {
    pub tables: Tables,
    pub unresolved: Vec<Ipv4Addr>,
    /// Peer nodes left out ([`OffSubnetPeers::Skip`]), by name.
    pub skipped: Vec<String>,
}

/// What to do with a peer node that is off the uplink subnet when no gateway is
/// known (nothing to send its traffic to).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OffSubnetPeers {
    /// Refuse the whole configuration: file mode, where the file is wrong and the
    /// user fixes it.
    Refuse,
    /// Leave that peer out of the tables and keep the rest: Kubernetes mode, where
    /// one Node this agent cannot reach must not freeze every other change.
    Skip,
}

/// True when `n` can be reached: on the uplink subnet, or through the gateway.
pub fn reachable(cfg: &AgentConfig, uplink: &UplinkFacts, n: &PeerNodeConfig) -> bool {
    uplink.gateway.is_some() || on_link(cfg, uplink, n.address)
}

/// The gateway MAC the dataplane answers ARP with: stable per node.
pub fn gateway_mac(cfg: &AgentConfig) -> MacAddr {
    MacAddr::local_from(format!("{}/pod-gateway", cfg.node.name).as_bytes())
}

/// The addresses whose MAC the builder will ask for: the peers on the uplink subnet
/// and the gateway.
pub fn next_hops(cfg: &AgentConfig, uplink: &UplinkFacts) -> Vec<Ipv4Addr> {
    let mut hops: Vec<Ipv4Addr> = cfg
        .nodes
        .iter()
        .filter_map(|n| {
            if on_link(cfg, uplink, n.address) {
                Some(n.address)
            } else {
                uplink.gateway
            }
        })
        .collect();
    hops.extend(uplink.gateway);
    hops.sort_unstable();
    hops.dedup();
    hops
}

/// The next hop towards `nodes[index]`: the node itself on the uplink subnet, else
/// the gateway.
pub fn node_next_hop(
    cfg: &AgentConfig,
    uplink: &UplinkFacts,
    index: usize,
    n: &PeerNodeConfig,
) -> Result<Ipv4Addr, BuildError> {
    if on_link(cfg, uplink, n.address) {
        return Ok(n.address);
    }
    uplink.gateway.ok_or_else(|| BuildError::NoGatewayForNode {
        index,
        name: n.name.clone(),
    })
}

fn on_link(cfg: &AgentConfig, uplink: &UplinkFacts, addr: Ipv4Addr) -> bool {
    Prefix::new(IpAddr::V4(cfg.node.address), uplink.prefix_len)
        .is_ok_and(|p| p.contains(IpAddr::V4(addr)))
}

fn host(addr: Ipv4Addr) -> Prefix {
    // A /32 is always valid.
    Prefix::new(IpAddr::V4(addr), 32).unwrap_or_else(|_| unreachable_prefix())
}

fn unreachable_prefix() -> Prefix {
    // Never reached: Prefix::new only fails for lengths above 32/128.
    Prefix::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0).unwrap_or_else(|_| unreachable_prefix())
}

/// Builds the snapshot. `neighbors` maps next-hop addresses to MACs.
pub fn build_tables(
    cfg: &AgentConfig,
    uplink: &UplinkFacts,
    pods: &[PodAttachment],
    neighbors: &HashMap<Ipv4Addr, MacAddr>,
    off_subnet: OffSubnetPeers,
) -> Result<Built, BuildError> {
    let mut skipped = Vec::new();
    let mut routes = RouteTableBuilder::new();
    let mut unresolved = Vec::new();
    let mut mac_of = |ip: Ipv4Addr| match neighbors.get(&ip) {
        Some(mac) => *mac,
        None => {
            unresolved.push(ip);
            MacAddr::ZERO
        }
    };

    let mut seen: HashMap<Ipv4Addr, &str> = HashMap::new();
    for a in pods {
        let (name, ip) = (&a.pod.name, a.pod.ip);
        if !cfg.pods.block.contains(IpAddr::V4(ip)) {
            return Err(BuildError::PodOutsideBlock {
                name: name.clone(),
                ip,
                block: cfg.pods.block,
            });
        }
        if ip == cfg.pods.gateway {
            return Err(BuildError::PodIsGateway {
                name: name.clone(),
                ip,
            });
        }
        if let Some(other) = seen.insert(ip, name) {
            return Err(BuildError::DuplicatePodIp {
                name: name.clone(),
                ip,
                other: other.to_string(),
            });
        }
        // Unique /32s inside the block: the builder cannot refuse them.
        let _ = routes.add(
            host(ip),
            RouteTarget::LocalPod {
                port: a.port,
                mac: a.pod.mac,
            },
        );
    }

    let vni = cfg.vxlan.vni;
    for (index, n) in cfg.nodes.iter().enumerate() {
        if off_subnet == OffSubnetPeers::Skip && !reachable(cfg, uplink, n) {
            skipped.push(n.name.clone());
            continue;
        }
        let hop = node_next_hop(cfg, uplink, index, n)?;
        let next_hop_mac = mac_of(hop);
        let target = match n.mode_from(cfg.mode) {
            ModeConfig::Overlay => RouteTarget::VxlanNode {
                node_addr: n.address,
                vtep_mac: n.vtep_mac.unwrap_or(MacAddr::ZERO),
                vni,
                next_hop_mac,
            },
            ModeConfig::Underlay => RouteTarget::UnderlayNode {
                next_hop: IpAddr::V4(hop),
                next_hop_mac,
            },
        };
        // Validation refused overlapping blocks, so duplicates cannot happen.
        let _ = routes.add(n.pod_block, target);
    }

    if let Some(gw) = uplink.gateway {
        let next_hop_mac = mac_of(gw);
        let _ = routes.add(unreachable_prefix(), RouteTarget::Outside { next_hop_mac });
    }

    // Skipped nodes stay out of source NAT too: their pods are still the cluster's.
    let mut no_snat = vec![cfg.pods.block, host(cfg.node.address)];
    for n in &cfg.nodes {
        no_snat.push(n.pod_block);
        no_snat.push(host(n.address));
    }
    no_snat.extend(cfg.snat.cluster_ranges.iter().copied());

    let node = NodeSettings {
        mode: cfg.mode.into(),
        node_addr: cfg.node.address,
        node_addr_v6: None,
        uplink_port: uplink.port,
        routed_port: uplink.routed_port,
        host_port: uplink.host_port,
        uplink_mac: uplink.mac,
        uplink_mtu: uplink.mtu,
        vtep_mac: cfg.vtep_mac(),
        vni,
        vxlan_port: cfg.vxlan.port,
        vxlan_df: cfg.vxlan.df,
        gateway_v4: cfg.pods.gateway,
        gateway_v6: None,
        gateway_mac: gateway_mac(cfg),
        snat: cfg.snat.enabled,
        host_pod_addr: cfg.pods.host_addr(),
    };
    unresolved.sort_unstable();
    unresolved.dedup();
    Ok(Built {
        tables: Tables {
            generation: 0,
            node,
            routes: routes.build(),
            no_snat,
            known_vteps: cfg.nodes.iter().map(|n| n.address).collect(),
            services: Default::default(),
        },
        unresolved,
        skipped,
    })
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
mod tests {
    use super::*;

    const CFG: &str = r#"
node: {name: node-a, address: 198.18.0.1}
mode: overlay
uplink: {interface: eth0}
pods: {block: 198.19.1.0/24, gateway: 198.19.1.1}
nodes:
  - {name: node-b, address: 198.18.0.2, podBlock: 198.19.2.0/24, vtepMac: "02:00:00:00:00:0b"}
  - {name: node-c, address: 198.18.5.3, podBlock: 198.19.3.0/24, vtepMac: "02:00:00:00:00:0c"}
snat: {clusterRanges: [198.18.100.0/24]}
"#;

    fn mac(s: &str) -> MacAddr {
        s.parse().unwrap()
    }

    fn uplink() -> UplinkFacts {
        UplinkFacts {
            port: PortId(0),
            routed_port: PortId(0),
            host_port: None,
            mac: mac("02:00:00:00:00:0a"),
            mtu: 1500,
            prefix_len: 24,
            gateway: Some(Ipv4Addr::new(198, 18, 0, 254)),
        }
    }

    fn pod(name: &str, last: u8, port: u16) -> PodAttachment {
        PodAttachment {
            pod: LocalPod {
                name: name.into(),
                ip: Ipv4Addr::new(198, 19, 1, last),
                mac: MacAddr([2, 0, 0, 1, 0, last]),
                interface: format!("veth{last}"),
                netns: None,
            },
            port: PortId(port),
        }
    }

    fn neighbors() -> HashMap<Ipv4Addr, MacAddr> {
        HashMap::from([
            (Ipv4Addr::new(198, 18, 0, 2), mac("02:00:00:00:01:02")),
            (Ipv4Addr::new(198, 18, 0, 254), mac("02:00:00:00:01:fe")),
        ])
    }

    #[test]
    fn overlay_routes_pods_peers_and_outside() {
        let cfg = AgentConfig::from_yaml(CFG).unwrap();
        assert_eq!(
            next_hops(&cfg, &uplink()),
            vec![Ipv4Addr::new(198, 18, 0, 2), Ipv4Addr::new(198, 18, 0, 254)]
        );
        let built = build_tables(
            &cfg,
            &uplink(),
            &[pod("p1", 10, 1), pod("p2", 11, 2)],
            &neighbors(),
            OffSubnetPeers::Refuse,
        )
        .unwrap();
        assert!(built.unresolved.is_empty());
        let t = &built.tables;
        assert_eq!(
            t.routes.lookup_v4(Ipv4Addr::new(198, 19, 1, 11)),
            Some(&RouteTarget::LocalPod {
                port: PortId(2),
                mac: MacAddr([2, 0, 0, 1, 0, 11])
            })
        );
        // A pod address with no pod behind it falls through to... the default route is
        // not taken for the local block: it only matches outside destinations.
        assert_eq!(
            t.routes.lookup_v4(Ipv4Addr::new(198, 19, 2, 7)),
            Some(&RouteTarget::VxlanNode {
                node_addr: Ipv4Addr::new(198, 18, 0, 2),
                vtep_mac: mac("02:00:00:00:00:0b"),
                vni: 1,
                next_hop_mac: mac("02:00:00:00:01:02"),
            })
        );
        // node-c is off the uplink subnet: its outer frames go to the gateway's MAC.
        assert_eq!(
            t.routes.lookup_v4(Ipv4Addr::new(198, 19, 3, 7)),
            Some(&RouteTarget::VxlanNode {
                node_addr: Ipv4Addr::new(198, 18, 5, 3),
                vtep_mac: mac("02:00:00:00:00:0c"),
                vni: 1,
                next_hop_mac: mac("02:00:00:00:01:fe"),
            })
        );
        assert_eq!(
            t.routes.lookup_v4(Ipv4Addr::new(198, 18, 100, 1)),
            Some(&RouteTarget::Outside {
                next_hop_mac: mac("02:00:00:00:01:fe")
            })
        );
        assert!(t.is_known_vtep(Ipv4Addr::new(198, 18, 0, 2)));
        assert!(!t.is_known_vtep(Ipv4Addr::new(198, 18, 0, 9)));
        assert!(t.is_no_snat(Ipv4Addr::new(198, 19, 3, 1)));
        assert!(t.is_no_snat(Ipv4Addr::new(198, 18, 100, 1)));
        assert!(t.is_no_snat(Ipv4Addr::new(198, 18, 0, 2)));
        assert!(!t.is_no_snat(Ipv4Addr::new(198, 18, 0, 77)));
        assert_eq!(t.node.gateway_v4, Ipv4Addr::new(198, 19, 1, 1));
        assert_eq!(t.node.vtep_mac, MacAddr::local_from(b"node-a"));
        assert!(t.node.snat);
    }

    #[test]
    fn underlay_routes_via_the_node_and_reports_unresolved_macs() {
        let cfg = AgentConfig::from_yaml(&CFG.replace("mode: overlay", "mode: underlay")).unwrap();
        let mut n = neighbors();
        n.remove(&Ipv4Addr::new(198, 18, 0, 2));
        let built = build_tables(&cfg, &uplink(), &[], &n, OffSubnetPeers::Refuse).unwrap();
        assert_eq!(built.unresolved, vec![Ipv4Addr::new(198, 18, 0, 2)]);
        assert_eq!(
            built.tables.routes.lookup_v4(Ipv4Addr::new(198, 19, 2, 7)),
            Some(&RouteTarget::UnderlayNode {
                next_hop: IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2)),
                next_hop_mac: MacAddr::ZERO
            })
        );
        assert_eq!(
            built.tables.routes.lookup_v4(Ipv4Addr::new(198, 19, 3, 7)),
            Some(&RouteTarget::UnderlayNode {
                next_hop: IpAddr::V4(Ipv4Addr::new(198, 18, 0, 254)),
                next_hop_mac: mac("02:00:00:00:01:fe")
            })
        );
    }

    #[test]
    fn bad_pods_and_missing_gateway_are_refused() {
        let cfg = AgentConfig::from_yaml(CFG).unwrap();
        let mut p = pod("far", 10, 1);
        p.pod.ip = Ipv4Addr::new(198, 19, 9, 9);
        let e =
            build_tables(&cfg, &uplink(), &[p], &neighbors(), OffSubnetPeers::Refuse).unwrap_err();
        assert!(matches!(e, BuildError::PodOutsideBlock { .. }), "{e}");
        let e = build_tables(
            &cfg,
            &uplink(),
            &[pod("gw", 1, 1)],
            &neighbors(),
            OffSubnetPeers::Refuse,
        )
        .unwrap_err();
        assert!(matches!(e, BuildError::PodIsGateway { .. }), "{e}");
        let e = build_tables(
            &cfg,
            &uplink(),
            &[pod("a", 10, 1), pod("b", 10, 2)],
            &neighbors(),
            OffSubnetPeers::Refuse,
        )
        .unwrap_err();
        assert!(e.to_string().contains("already used by pod a"), "{e}");
        let no_gw = UplinkFacts {
            gateway: None,
            ..uplink()
        };
        let e = build_tables(&cfg, &no_gw, &[], &neighbors(), OffSubnetPeers::Refuse).unwrap_err();
        assert!(e.to_string().contains("nodes[1] (node-c)"), "{e}");
    }

    /// Kubernetes mode: a peer off the uplink subnet with no gateway is left out and
    /// the others are routed (the whole build used to fail on it).
    #[test]
    fn an_unreachable_peer_is_skipped_and_the_rest_kept() {
        let cfg = AgentConfig::from_yaml(CFG).unwrap();
        let no_gw = UplinkFacts {
            gateway: None,
            ..uplink()
        };
        let built = build_tables(
            &cfg,
            &no_gw,
            &[pod("p1", 10, 1)],
            &neighbors(),
            OffSubnetPeers::Skip,
        )
        .unwrap();
        assert_eq!(built.skipped, ["node-c"]);
        let t = &built.tables;
        assert!(
            t.routes.lookup_v4(Ipv4Addr::new(198, 19, 2, 7)).is_some(),
            "node-b kept"
        );
        assert!(
            t.routes.lookup_v4(Ipv4Addr::new(198, 19, 1, 10)).is_some(),
            "pods kept"
        );
        assert_eq!(
            t.routes.lookup_v4(Ipv4Addr::new(198, 19, 3, 7)),
            None,
            "node-c left out"
        );
        // With a gateway nothing is skipped.
        let built = build_tables(&cfg, &uplink(), &[], &neighbors(), OffSubnetPeers::Skip).unwrap();
        assert!(built.skipped.is_empty());
    }

    #[test]
    fn without_a_gateway_there_is_no_default_route() {
        let cfg = AgentConfig::from_yaml(&CFG.replace(
            "  - {name: node-c, address: 198.18.5.3, podBlock: 198.19.3.0/24, vtepMac: \"02:00:00:00:00:0c\"}\n",
            "",
        ))
        .unwrap();
        let built = build_tables(
            &cfg,
            &UplinkFacts {
                gateway: None,
                ..uplink()
            },
            &[],
            &neighbors(),
            OffSubnetPeers::Refuse,
        )
        .unwrap();
        assert_eq!(
            built
                .tables
                .routes
                .lookup_v4(Ipv4Addr::new(198, 18, 100, 1)),
            None
        );
    }
}
