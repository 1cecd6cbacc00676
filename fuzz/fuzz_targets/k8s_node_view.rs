//! Node annotations are bytes from the API server: flannel's `backend-data`, the
//! block and mode annotations, `public-ip` and `spec.podCIDR` of a peer, and this
//! node's own block, become the agent's cluster view without a panic, and whatever
//! view comes out is a configuration the agent accepts.
#![no_main]

use std::collections::BTreeMap;

use hybridway_control::agent::config::{AgentConfig, LocalConfig};
use hybridway_control::k8s::{annotations, cluster_view, flannel};
use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeSpec, NodeStatus};
use libfuzzer_sys::fuzz_target;

fn node(name: &str, addr: &str, ann: BTreeMap<String, String>, pod_cidr: Option<&str>) -> Node {
    let mut n = Node::default();
    n.metadata.name = Some(name.into());
    n.metadata.annotations = Some(ann);
    n.spec = Some(NodeSpec {
        pod_cidr: pod_cidr.map(Into::into),
        ..NodeSpec::default()
    });
    n.status = Some(NodeStatus {
        addresses: Some(vec![NodeAddress {
            type_: "InternalIP".into(),
            address: addr.into(),
        }]),
        ..NodeStatus::default()
    });
    n
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let f: Vec<&str> = text.splitn(7, '\n').collect();
    let get = |i: usize| f.get(i).copied().unwrap_or("");
    let _ = flannel::parse_backend_data(get(0));
    let mut peer = BTreeMap::from([
        (flannel::BACKEND_DATA.to_string(), get(0).to_string()),
        (flannel::BACKEND_TYPE.to_string(), get(1).to_string()),
        (flannel::PUBLIC_IP.to_string(), get(2).to_string()),
    ]);
    if !get(3).is_empty() {
        peer.insert(annotations::HYBRID_POD_BLOCK.into(), get(3).into());
        peer.insert(annotations::HYBRID_MODE.into(), get(4).into());
    }
    let me = BTreeMap::from([
        (
            annotations::HYBRID_POD_BLOCK.to_string(),
            get(5).to_string(),
        ),
        (annotations::HYBRID_MODE.to_string(), "overlay".to_string()),
    ]);
    let nodes = [
        node("me", "198.18.64.10", me, None),
        node("peer", get(6), peer, Some(get(3))),
    ];
    if let Ok(view) = cluster_view::build("me", 1, &nodes) {
        let local: LocalConfig =
            serde_yaml::from_str("uplink: {interface: eth0}").expect("a fixed local file");
        // The view refused what the agent would refuse, except what only the agent
        // checks about its own block (size, gateway): those are errors, not panics.
        let _ = AgentConfig::from_parts(local, view.facts);
    }
});
