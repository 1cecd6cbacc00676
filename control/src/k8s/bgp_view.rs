//! `BGPClusterConfig` + Nodes → what this node's speaker runs. Pure, unit-tested.
//!
//! This node speaks when a `BGPClusterConfig` selects it (`nodeSelector`) and lists
//! it under `bgpSpeakers`; it then advertises the pod block of every node the same
//! selector picks that has a block (the pool), with the node's address so that the
//! speaker's next-hop rule (`bgp::rib`: the owning node on the peer's subnet, else
//! the speaker) applies. One configuration model: the blocks are the controller's
//! annotations the Node watch already reads (`cluster_view`), never a list of their
//! own.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::str::FromStr;

use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use kube::core::{Selector, SelectorExt};

use super::annotations;
use super::cluster_view::{exact_prefix, node_address};
use super::crd::BGPClusterConfig;
use crate::bgp::config::{
    BgpConfig, BgpSection, PasswordRef, PeerConfig, RouteConfig, SecretKeyRef, SpeakerConfig,
    pool_routes,
};
use crate::bgp::runner::SpeakerPlan;

/// Local settings of the agent's speaker (not in the resource).
#[derive(Clone, Debug)]
pub struct SpeakerSettings {
    pub listen_port: u16,
    /// Graceful restart time (s): 600 by default, as DESIGN.md asks.
    pub restart_time: u16,
    pub hold_time: u16,
    pub connect_retry_ms: u64,
    /// Under the state directory: makes a restart within `restart_time` a graceful one.
    pub restart_marker: Option<PathBuf>,
}

impl Default for SpeakerSettings {
    fn default() -> Self {
        SpeakerSettings {
            listen_port: 179,
            restart_time: 600,
            hold_time: 90,
            connect_retry_ms: 2000,
            restart_marker: None,
        }
    }
}

/// The plan for node `own`, or `None` when no resource makes it a speaker. A
/// resource that cannot be used (an ASN out of range) is an `Err` with the reason.
pub fn plan(
    own: &str,
    nodes: &[&Node],
    configs: &[&BGPClusterConfig],
    settings: &SpeakerSettings,
) -> Result<Option<SpeakerPlan>, String> {
    let Some(me) = nodes.iter().find(|n| n.name_any() == own) else {
        return Ok(None);
    };
    let mut chosen: Vec<&BGPClusterConfig> = configs
        .iter()
        .copied()
        .filter(|c| c.spec.bgp_speakers.iter().any(|s| s.name == own) && selects(c, me))
        .collect();
    chosen.sort_by_key(|c| c.name_any());
    let Some(cfg) = chosen.first() else {
        return Ok(None);
    };
    if chosen.len() > 1 {
        tracing::warn!(
            node = own,
            used = %cfg.name_any(),
            "several BGPClusterConfigs make this node a speaker; the first by name is used"
        );
    }
    let asn = |v: i64, what: &str| {
        u32::try_from(v)
            .ok()
            .filter(|a| *a > 0)
            .ok_or_else(|| format!("{what} {v} is not 1-4294967295"))
    };
    let local_asn = asn(cfg.spec.local_asn, "localASN")?;
    let speaker = cfg
        .spec
        .bgp_speakers
        .iter()
        .find(|s| s.name == own)
        .ok_or("not a speaker")?;
    let mut peers = Vec::new();
    for p in &speaker.peers {
        peers.push(PeerConfig {
            name: p.name.clone(),
            peer_asn: asn(p.peer_asn, &format!("peer {} peerASN", p.name))?,
            peer_address: IpAddr::from_str(&p.peer_address).map_err(|_| {
                format!(
                    "peer {} peerAddress {:?} is not an address",
                    p.name, p.peer_address
                )
            })?,
            auth_password: p.auth_password.as_ref().map(|a| PasswordRef {
                file: None,
                secret_key_ref: Some(SecretKeyRef {
                    name: a.secret_key_ref.name.clone(),
                    key: a.secret_key_ref.key.clone(),
                }),
            }),
            // The resource has no import setting (DESIGN.md keeps its schema):
            // what the switches send is not installed.
            import_routes: false,
        });
    }
    let router_id: Option<Ipv4Addr> = node_address(me);
    let routes = pool_routes(nodes.iter().filter(|n| selects(cfg, n)).filter_map(|n| {
        let block = exact_prefix(n.annotations().get(annotations::HYBRID_POD_BLOCK)?).ok()?;
        Some(RouteConfig {
            node: n.name_any(),
            node_address: IpAddr::V4(node_address(n)?),
            pod_block: block,
        })
    }));
    Ok(Some(SpeakerPlan {
        resource: cfg.name_any(),
        config: BgpConfig {
            settings: BgpSection {
                local_asn,
                router_id,
                listen_address: None,
                listen_port: settings.listen_port,
                restart_time: settings.restart_time,
                hold_time: settings.hold_time,
                connect_retry_ms: settings.connect_retry_ms,
                bgp_speakers: vec![SpeakerConfig {
                    name: own.to_string(),
                    peers,
                }],
                restart_marker: settings.restart_marker.clone(),
                status_file: None,
                metrics_file: None,
            },
            node_name: own.to_string(),
            routes,
        },
    }))
}

fn selects(cfg: &BGPClusterConfig, node: &Node) -> bool {
    Selector::try_from(cfg.spec.node_selector.clone()).is_ok_and(|s| s.matches(node.labels()))
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
    use crate::k8s::crd::SecretKeyRef as CrdSecretKeyRef;
    use crate::k8s::crd::{AuthPassword, BGPClusterConfigSpec, BgpPeer, BgpSpeaker};
    use k8s_openapi::api::core::v1::{NodeAddress, NodeStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
    use std::collections::BTreeMap;

    fn node(name: &str, pool: &str, addr: &str, block: Option<&str>) -> Node {
        let mut n = Node::default();
        n.metadata.name = Some(name.into());
        n.metadata.labels = Some(BTreeMap::from([("pool".into(), pool.into())]));
        if let Some(b) = block {
            n.metadata.annotations = Some(BTreeMap::from([(
                annotations::HYBRID_POD_BLOCK.into(),
                b.into(),
            )]));
        }
        n.status = Some(NodeStatus {
            addresses: Some(vec![NodeAddress {
                type_: "InternalIP".into(),
                address: addr.into(),
            }]),
            ..NodeStatus::default()
        });
        n
    }

    fn resource(name: &str, pool: &str, speakers: &[&str]) -> BGPClusterConfig {
        BGPClusterConfig::new(
            name,
            BGPClusterConfigSpec {
                local_asn: 65010,
                node_selector: LabelSelector {
                    match_labels: Some(BTreeMap::from([("pool".into(), pool.into())])),
                    ..LabelSelector::default()
                },
                bgp_speakers: speakers
                    .iter()
                    .map(|s| BgpSpeaker {
                        name: (*s).into(),
                        peers: vec![BgpPeer {
                            name: "switch-1".into(),
                            peer_asn: 65001,
                            peer_address: "198.18.64.1".into(),
                            auth_password: Some(AuthPassword {
                                secret_key_ref: CrdSecretKeyRef {
                                    name: "bgp-secret".into(),
                                    key: "password".into(),
                                },
                            }),
                        }],
                    })
                    .collect(),
            },
        )
    }

    fn nodes() -> Vec<Node> {
        vec![
            node("a1", "a", "198.18.64.10", Some("198.19.128.0/24")),
            node("a2", "a", "198.18.64.11", Some("198.19.129.0/24")),
            node("a3", "a", "198.18.64.12", None),
            node("b1", "b", "198.18.64.20", Some("198.19.130.0/24")),
        ]
    }

    #[test]
    fn a_speaker_advertises_every_block_of_its_pool() {
        let n = nodes();
        let refs: Vec<&Node> = n.iter().collect();
        let r = resource("bgp", "a", &["a1", "a2"]);
        let p = plan("a1", &refs, &[&r], &SpeakerSettings::default())
            .unwrap()
            .unwrap();
        assert_eq!(p.resource, "bgp");
        let c = &p.config;
        assert_eq!(c.settings.local_asn, 65010);
        assert_eq!(c.settings.restart_time, 600);
        assert_eq!(c.router_id(), Some(Ipv4Addr::new(198, 18, 64, 10)));
        let blocks: Vec<String> = c.routes.iter().map(|r| r.pod_block.to_string()).collect();
        assert_eq!(blocks, ["198.19.128.0/24", "198.19.129.0/24"]);
        let peer = &c.speaker().unwrap().peers[0];
        assert_eq!(peer.peer_asn, 65001);
        assert_eq!(
            peer.auth_password
                .as_ref()
                .unwrap()
                .secret_key_ref
                .as_ref()
                .unwrap()
                .name,
            "bgp-secret"
        );
    }

    #[test]
    fn not_a_speaker_unless_selected_and_listed() {
        let n = nodes();
        let refs: Vec<&Node> = n.iter().collect();
        let r = resource("bgp", "a", &["a1", "b1"]);
        let s = SpeakerSettings::default();
        assert_eq!(plan("a2", &refs, &[&r], &s).unwrap(), None, "not listed");
        assert_eq!(
            plan("b1", &refs, &[&r], &s).unwrap(),
            None,
            "listed, not selected"
        );
        assert_eq!(plan("ghost", &refs, &[&r], &s).unwrap(), None);
    }

    #[test]
    fn a_route_change_is_not_a_session_change() {
        let mut n = nodes();
        let r = resource("bgp", "a", &["a1"]);
        let s = SpeakerSettings::default();
        let before = plan("a1", &n.iter().collect::<Vec<_>>(), &[&r], &s)
            .unwrap()
            .unwrap();
        n.pop();
        n.push(node("a4", "a", "198.18.64.13", Some("198.19.131.0/24")));
        let after = plan("a1", &n.iter().collect::<Vec<_>>(), &[&r], &s)
            .unwrap()
            .unwrap();
        assert_ne!(before, after);
        assert!(!before.sessions_differ(&after));
        let mut r2 = r.clone();
        r2.spec.bgp_speakers[0].peers[0].peer_asn = 65002;
        let changed = plan("a1", &n.iter().collect::<Vec<_>>(), &[&r2], &s)
            .unwrap()
            .unwrap();
        assert!(after.sessions_differ(&changed));
    }

    #[test]
    fn secret_store_reasons() {
        use crate::bgp::password::{PasswordSource, SecretPassword, SecretStore, Unreadable};
        let store = SecretStore::default();
        let src = SecretPassword {
            name: "bgp-secret".into(),
            key: "password".into(),
            store: store.clone(),
        };
        assert!(
            src.password()
                .unwrap_err()
                .to_string()
                .contains("not available")
        );
        store.replace(
            BTreeMap::new(),
            BTreeMap::from([("bgp-secret".into(), Unreadable::Pending)]),
        );
        assert!(
            src.password()
                .unwrap_err()
                .to_string()
                .contains("not read from the API server yet")
        );
        store.replace(
            BTreeMap::new(),
            BTreeMap::from([("bgp-secret".into(), Unreadable::Forbidden)]),
        );
        assert!(
            src.password()
                .unwrap_err()
                .to_string()
                .contains("is not readable by the agent")
        );
        store.replace(BTreeMap::new(), BTreeMap::new());
        assert!(
            src.password()
                .unwrap_err()
                .to_string()
                .contains("does not exist")
        );
        store.replace(
            BTreeMap::from([("bgp-secret".into(), BTreeMap::new())]),
            BTreeMap::new(),
        );
        assert!(
            src.password()
                .unwrap_err()
                .to_string()
                .contains("no key password")
        );
        store.replace(
            BTreeMap::from([(
                "bgp-secret".into(),
                BTreeMap::from([("password".into(), b"s3cret\n".to_vec())]),
            )]),
            BTreeMap::new(),
        );
        assert_eq!(src.password().unwrap().bytes(), b"s3cret");
        assert!(!format!("{store:?}").contains("s3cret"));
    }
}
