//! Node objects → [`ClusterFacts`]: the agent's Kubernetes source of the same
//! configuration model the file mode uses. Pure, so every rule below is unit-tested
//! without an API server:
//!
//! - **this node**: its block and pool mode from the controller's annotations
//!   (`k8s::annotations`), its address from `status.addresses` (InternalIP, else
//!   ExternalIP); no block yet means not ready ([`NotReady`]).
//! - **hybrid nodes** (the controller's block annotation): between two underlay
//!   nodes pod packets are routed; with any overlay node on either side they cross
//!   VXLAN, using the VTEP the other agent published in flannel's annotations.
//! - **cloud nodes running flannel** (`spec.podCIDR`, `backend-type: vxlan`, a
//!   `backend-data` VTEP): always VXLAN.
//!
//! A node missing what its kind needs (no VTEP published yet, a block that overlaps
//! another) is left out with a reason rather than refusing the whole view: one bad
//! Node must not stop a node from forwarding to the others.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

use hybridway_dataplane::tables::Prefix;
use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;

use super::{annotations, flannel};
use crate::agent::config::{
    ClusterFacts, ModeConfig, NodeConfig, PeerNodeConfig, PodNetworkConfig,
};

/// Why this node's own facts are not known yet.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    #[error("node {0} is not in the API server")]
    NoNode(String),
    #[error("node {0} has no hybrid pod block yet (waiting for the controller's {key})", key = annotations::HYBRID_POD_BLOCK)]
    NoBlock(String),
    #[error("node {node}: annotation {key}={value:?} is not valid: {why}")]
    BadAnnotation {
        node: String,
        key: &'static str,
        value: String,
        why: String,
    },
    #[error("node {0} has no IPv4 InternalIP or ExternalIP in status.addresses")]
    NoAddress(String),
}

/// A node left out of the view, and why (logged once per change by the watcher).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    pub node: String,
    pub why: String,
}

/// The view built from every Node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct View {
    pub facts: ClusterFacts,
    pub skipped: Vec<Skipped>,
}

/// The node's IPv4 address: InternalIP first, else ExternalIP.
pub fn node_address(node: &Node) -> Option<Ipv4Addr> {
    let addrs = node.status.as_ref()?.addresses.as_ref()?;
    ["InternalIP", "ExternalIP"].iter().find_map(|kind| {
        addrs
            .iter()
            .filter(|a| a.type_ == *kind)
            .find_map(|a| Ipv4Addr::from_str(&a.address).ok())
    })
}

/// The address other nodes send VXLAN to: flannel's `public-ip`, else the node's.
fn vtep_address(node: &Node) -> Option<Ipv4Addr> {
    node.annotations()
        .get(flannel::PUBLIC_IP)
        .and_then(|s| Ipv4Addr::from_str(s).ok())
        .or_else(|| node_address(node))
}

/// The pods' gateway in a block: its first address.
pub fn gateway_of(block: Prefix) -> Ipv4Addr {
    match block.addr() {
        IpAddr::V4(a) => Ipv4Addr::from(u32::from(a).saturating_add(1)),
        IpAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
    }
}

/// An IPv4 block exactly as written (host bits set is an error, not a silent
/// normalisation).
pub(crate) fn exact_prefix(s: &str) -> Result<Prefix, String> {
    let p = crate::agent::config::exact_prefix(s)?;
    if !p.is_ipv4() {
        return Err("not an IPv4 prefix".into());
    }
    Ok(p)
}

fn mode_of(node: &Node) -> Result<ModeConfig, String> {
    match node
        .annotations()
        .get(annotations::HYBRID_MODE)
        .map(String::as_str)
    {
        Some("overlay") => Ok(ModeConfig::Overlay),
        Some("underlay") => Ok(ModeConfig::Underlay),
        Some(other) => Err(format!(
            "{}={other:?} is neither overlay nor underlay",
            annotations::HYBRID_MODE
        )),
        None => Err(format!("no {} annotation", annotations::HYBRID_MODE)),
    }
}

/// This node's facts from its Node object.
pub fn own_facts(node: &Node) -> Result<(NodeConfig, ModeConfig, PodNetworkConfig), NotReady> {
    let name = node.name_any();
    let bad = |key: &'static str, value: &str, why: String| NotReady::BadAnnotation {
        node: name.clone(),
        key,
        value: value.to_string(),
        why,
    };
    let Some(text) = node.annotations().get(annotations::HYBRID_POD_BLOCK) else {
        return Err(NotReady::NoBlock(name));
    };
    let block = exact_prefix(text).map_err(|why| bad(annotations::HYBRID_POD_BLOCK, text, why))?;
    let mode = mode_of(node).map_err(|why| {
        let value = node
            .annotations()
            .get(annotations::HYBRID_MODE)
            .cloned()
            .unwrap_or_default();
        bad(annotations::HYBRID_MODE, &value, why)
    })?;
    let address = node_address(node).ok_or_else(|| NotReady::NoAddress(name.clone()))?;
    Ok((
        NodeConfig { name, address },
        mode,
        PodNetworkConfig {
            block,
            gateway: gateway_of(block),
        },
    ))
}

/// Another node as a table entry, seen from a node in mode `own_mode` with VNI `vni`.
pub fn peer_of(node: &Node, own_mode: ModeConfig, vni: u32) -> Result<PeerNodeConfig, String> {
    let a = node.annotations();
    let vtep = match a.get(flannel::BACKEND_DATA) {
        Some(d) if a.get(flannel::BACKEND_TYPE).map(String::as_str) == Some(flannel::VXLAN) => {
            Some(flannel::parse_backend_data(d).map_err(|e| e.to_string())?)
        }
        Some(_) => {
            return Err(format!(
                "{} is not {:?}; only flannel's vxlan backend is spoken",
                flannel::BACKEND_TYPE,
                flannel::VXLAN
            ));
        }
        None => None,
    };
    if let Some(v) = vtep
        && v.vni != vni
    {
        return Err(format!("its VNI {} is not ours ({vni})", v.vni));
    }
    let (pod_block, mode) = match a.get(annotations::HYBRID_POD_BLOCK) {
        Some(text) => {
            let block = exact_prefix(text)
                .map_err(|e| format!("{}: {e}", annotations::HYBRID_POD_BLOCK))?;
            let theirs = mode_of(node)?;
            let mode = if theirs == ModeConfig::Underlay && own_mode == ModeConfig::Underlay {
                ModeConfig::Underlay
            } else {
                ModeConfig::Overlay
            };
            (block, mode)
        }
        None => {
            let cidr = node
                .spec
                .as_ref()
                .and_then(|s| s.pod_cidr.as_deref())
                .ok_or("neither a hybrid block nor spec.podCIDR")?;
            if vtep.is_none() {
                return Err(
                    "spec.podCIDR but no flannel vxlan annotations (not running flannel yet?)"
                        .into(),
                );
            }
            (
                exact_prefix(cidr).map_err(|e| format!("spec.podCIDR: {e}"))?,
                ModeConfig::Overlay,
            )
        }
    };
    if mode == ModeConfig::Overlay && vtep.is_none() {
        return Err("reached by VXLAN but its VTEP is not published yet".into());
    }
    let address = if mode == ModeConfig::Overlay {
        vtep_address(node)
    } else {
        node_address(node)
    }
    .ok_or("no IPv4 address")?;
    Ok(PeerNodeConfig {
        name: node.name_any(),
        address,
        pod_block,
        mode: (mode != own_mode).then_some(mode),
        vtep_mac: vtep.map(|v| v.mac),
    })
}

/// The view of the cluster from node `own` (`vni`: this node's VXLAN network).
pub fn build<'a>(
    own: &str,
    vni: u32,
    nodes: impl IntoIterator<Item = &'a Node>,
) -> Result<View, NotReady> {
    let mut others = BTreeMap::new();
    let mut me = None;
    for n in nodes {
        let name = n.name_any();
        if name == own {
            me = Some(n);
        } else {
            others.insert(name, n);
        }
    }
    let me = me.ok_or_else(|| NotReady::NoNode(own.to_string()))?;
    let (node, mode, pods) = own_facts(me)?;
    let mut skipped = Vec::new();
    let mut peers: Vec<PeerNodeConfig> = Vec::new();
    let mut addrs = HashSet::from([node.address]);
    for (name, n) in others {
        let peer = peer_of(n, mode, vni).and_then(|p| {
            if p.pod_block.overlaps(&pods.block) {
                return Err(format!(
                    "its block {} overlaps ours {}",
                    p.pod_block, pods.block
                ));
            }
            if let Some(o) = peers.iter().find(|o| o.pod_block.overlaps(&p.pod_block)) {
                return Err(format!(
                    "its block {} overlaps {}'s {}",
                    p.pod_block, o.name, o.pod_block
                ));
            }
            if !addrs.insert(p.address) {
                return Err(format!("its address {} is another node's", p.address));
            }
            Ok(p)
        });
        match peer {
            Ok(p) => peers.push(p),
            Err(why) => skipped.push(Skipped { node: name, why }),
        }
    }
    Ok(View {
        facts: ClusterFacts {
            node,
            mode,
            pods,
            nodes: peers,
        },
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
    use k8s_openapi::api::core::v1::{NodeAddress, NodeSpec, NodeStatus};

    fn node(name: &str, addr: &str, ann: &[(&str, &str)], pod_cidr: Option<&str>) -> Node {
        let mut n = Node::default();
        n.metadata.name = Some(name.into());
        n.metadata.annotations = Some(
            ann.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        n.spec = Some(NodeSpec {
            pod_cidr: pod_cidr.map(Into::into),
            ..NodeSpec::default()
        });
        n.status = Some(NodeStatus {
            addresses: Some(vec![
                NodeAddress {
                    type_: "Hostname".into(),
                    address: name.into(),
                },
                NodeAddress {
                    type_: "InternalIP".into(),
                    address: addr.into(),
                },
            ]),
            ..NodeStatus::default()
        });
        n
    }

    fn hybrid(name: &str, addr: &str, block: &str, mode: &str, mac: Option<&str>) -> Node {
        let data = mac.map(|m| format!(r#"{{"VNI":1,"VtepMAC":"{m}"}}"#));
        let mut ann = vec![
            (annotations::HYBRID_POD_BLOCK, block),
            (annotations::HYBRID_MODE, mode),
        ];
        if let Some(d) = &data {
            ann.extend([
                (flannel::BACKEND_DATA, d.as_str()),
                (flannel::BACKEND_TYPE, "vxlan"),
            ]);
        }
        node(name, addr, &ann, Some(block))
    }

    fn cloud(name: &str, addr: &str, cidr: &str, mac: &str, public: &str) -> Node {
        let data = format!(r#"{{"VNI":1,"VtepMAC":"{mac}"}}"#);
        node(
            name,
            addr,
            &[
                (flannel::BACKEND_DATA, &data),
                (flannel::BACKEND_TYPE, "vxlan"),
                (flannel::PUBLIC_IP, public),
                (flannel::KUBE_SUBNET_MANAGER, "true"),
            ],
            Some(cidr),
        )
    }

    fn cluster() -> Vec<Node> {
        vec![
            hybrid(
                "h-under-1",
                "198.18.64.10",
                "198.19.128.0/24",
                "underlay",
                Some("02:00:00:00:00:0a"),
            ),
            hybrid(
                "h-under-2",
                "198.18.64.11",
                "198.19.129.0/24",
                "underlay",
                None,
            ),
            hybrid(
                "h-over",
                "198.18.64.12",
                "198.19.130.0/24",
                "overlay",
                Some("02:00:00:00:00:0c"),
            ),
            cloud(
                "c-1",
                "198.18.0.10",
                "198.19.0.0/24",
                "0a:00:00:00:00:01",
                "198.18.0.10",
            ),
        ]
    }

    #[test]
    fn underlay_node_routes_underlay_peers_and_tunnels_to_the_rest() {
        let v = build("h-under-1", 1, &cluster()).unwrap();
        assert!(v.skipped.is_empty(), "{:?}", v.skipped);
        let f = &v.facts;
        assert_eq!(f.node.address, Ipv4Addr::new(198, 18, 64, 10));
        assert_eq!(f.mode, ModeConfig::Underlay);
        assert_eq!(f.pods.block.to_string(), "198.19.128.0/24");
        assert_eq!(f.pods.gateway, Ipv4Addr::new(198, 19, 128, 1));
        let by: BTreeMap<_, _> = f.nodes.iter().map(|p| (p.name.as_str(), p)).collect();
        assert_eq!(by["h-under-2"].mode_from(f.mode), ModeConfig::Underlay);
        assert_eq!(by["h-under-2"].vtep_mac, None);
        assert_eq!(by["h-over"].mode_from(f.mode), ModeConfig::Overlay);
        assert_eq!(by["c-1"].mode_from(f.mode), ModeConfig::Overlay);
        assert_eq!(by["c-1"].pod_block.to_string(), "198.19.0.0/24");
        assert_eq!(by["c-1"].vtep_mac.unwrap().to_string(), "0a:00:00:00:00:01");
    }

    #[test]
    fn overlay_node_skips_a_peer_without_a_vtep_and_says_why() {
        let v = build("h-over", 1, &cluster()).unwrap();
        assert_eq!(v.facts.mode, ModeConfig::Overlay);
        let names: Vec<_> = v.facts.nodes.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["c-1", "h-under-1"]);
        assert_eq!(v.skipped.len(), 1);
        assert_eq!(v.skipped[0].node, "h-under-2");
        assert!(v.skipped[0].why.contains("VTEP"), "{:?}", v.skipped);
        // Every peer is reached the node's own way: no per-peer mode is written.
        assert!(v.facts.nodes.iter().all(|p| p.mode.is_none()));
    }

    #[test]
    fn public_ip_is_the_vtep_address() {
        let mut nodes = cluster();
        nodes[3] = cloud(
            "c-1",
            "198.18.0.10",
            "198.19.0.0/24",
            "0a:00:00:00:00:01",
            "198.18.0.99",
        );
        let v = build("h-over", 1, &nodes).unwrap();
        let c = v.facts.nodes.iter().find(|p| p.name == "c-1").unwrap();
        assert_eq!(c.address, Ipv4Addr::new(198, 18, 0, 99));
    }

    #[test]
    fn not_ready_until_the_controller_gave_a_block() {
        let mut nodes = cluster();
        nodes.push(node("new", "198.18.64.20", &[], None));
        let e = build("new", 1, &nodes).unwrap_err();
        assert!(matches!(e, NotReady::NoBlock(_)), "{e}");
        assert!(matches!(
            build("ghost", 1, &nodes).unwrap_err(),
            NotReady::NoNode(_)
        ));
        nodes.push(hybrid(
            "hostbits",
            "198.18.64.21",
            "198.19.140.5/24",
            "overlay",
            None,
        ));
        let e = build("hostbits", 1, &nodes).unwrap_err().to_string();
        assert!(
            e.contains("host bits") && e.contains("198.19.140.0/24"),
            "{e}"
        );
        // Seen from another node the same Node is skipped, not fatal.
        let v = build("h-over", 1, &nodes).unwrap();
        assert!(
            v.skipped
                .iter()
                .any(|s| s.node == "hostbits" && s.why.contains("host bits"))
        );
        assert!(v.skipped.iter().any(|s| s.node == "new"));
    }

    #[test]
    fn conflicting_or_foreign_peers_are_skipped() {
        let mut nodes = cluster();
        nodes.push(cloud(
            "c-dup",
            "198.18.0.11",
            "198.19.0.0/25",
            "0a:00:00:00:00:02",
            "198.18.0.11",
        ));
        nodes.push(cloud(
            "c-vni",
            "198.18.0.12",
            "198.19.2.0/24",
            "0a:00:00:00:00:03",
            "198.18.0.12",
        ));
        let n = nodes.last_mut().unwrap();
        n.annotations_mut().insert(
            flannel::BACKEND_DATA.into(),
            r#"{"VNI":7,"VtepMAC":"0a:00:00:00:00:03"}"#.into(),
        );
        nodes.push(cloud(
            "c-host",
            "198.18.0.13",
            "198.19.3.0/24",
            "0a:00:00:00:00:04",
            "198.18.0.13",
        ));
        nodes
            .last_mut()
            .unwrap()
            .annotations_mut()
            .insert(flannel::BACKEND_TYPE.into(), "host-gw".into());
        let v = build("h-over", 1, &nodes).unwrap();
        let why = |n: &str| {
            v.skipped
                .iter()
                .find(|s| s.node == n)
                .map(|s| s.why.clone())
                .unwrap_or_default()
        };
        assert!(why("c-dup").contains("overlaps c-1"), "{:?}", v.skipped);
        assert!(why("c-vni").contains("VNI 7"), "{:?}", v.skipped);
        assert!(why("c-host").contains("vxlan"), "{:?}", v.skipped);
    }

    #[test]
    fn the_facts_make_a_valid_agent_configuration() {
        let v = build("h-under-1", 1, &cluster()).unwrap();
        let local: crate::agent::config::LocalConfig =
            serde_yaml::from_str("uplink: {interface: eth0}").unwrap();
        let cfg = crate::agent::AgentConfig::from_parts(local, v.facts.clone()).unwrap();
        assert_eq!(cfg.cluster_facts(), v.facts);
        // And they persist as they are.
        let text = serde_json::to_string(&v.facts).unwrap();
        assert_eq!(
            serde_json::from_str::<ClusterFacts>(&text).unwrap(),
            v.facts
        );
    }
}
