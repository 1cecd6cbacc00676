//! The BGP speaker's configuration: the `bgp` section of the agent's file
//! ([`BgpSection`]) and what a running speaker is given ([`BgpConfig`]).
//!
//! One configuration model for nodes and routes: the section names the peers and
//! the speaker's knobs, never the pod blocks. Those come from where the agent's
//! tables come from: the file's `node`/`pods`/`nodes` in file mode
//! (`agent::bgp::plan`), the Node objects in Kubernetes mode (`k8s::bgp_view`), both
//! through [`pool_routes`]. Field names mirror `BGPClusterConfig` (`localASN`,
//! `bgpSpeakers`, `peers`, `peerASN`, `peerAddress`, `authPassword`).
//!
//! ```yaml
//! bgp:
//!   localASN: 65010
//!   restartTime: 600                 # graceful restart, 1-4095 s; 0 disables it
//!   bgpSpeakers:                     # this node speaks when its node.name is listed
//!   - name: hybrid-node-1
//!     peers:
//!     - name: switch-1
//!       peerASN: 65001
//!       peerAddress: 198.18.0.1
//!       authPassword: {file: /etc/hybridway/bgp-password}
//!       importRoutes: false          # default: what the switch sends is not installed
//! ```

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use hybridway_dataplane::tables::Prefix;
use serde::Deserialize;

/// A `bgp` section whose values contradict each other: the field (under `bgp.`)
/// and why.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

/// The `bgp` section of the agent's file.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BgpSection {
    #[serde(rename = "localASN")]
    pub local_asn: u32,
    /// BGP Identifier; defaults to `node.address`.
    #[serde(default, rename = "routerID")]
    pub router_id: Option<Ipv4Addr>,
    /// Address to listen on (default: any).
    #[serde(default)]
    pub listen_address: Option<IpAddr>,
    #[serde(default = "default_port")]
    pub listen_port: u16,
    /// Graceful restart time in seconds (1-4095); 0 turns graceful restart off.
    #[serde(default = "default_restart_time")]
    pub restart_time: u16,
    #[serde(default = "default_hold_time")]
    pub hold_time: u16,
    /// First connect-retry delay in milliseconds, doubled per failure up to 60 s.
    #[serde(default = "default_retry_ms")]
    pub connect_retry_ms: u64,
    /// The speakers and their peers; a node not listed runs no speaker.
    pub bgp_speakers: Vec<SpeakerConfig>,
    /// A file that survives restarts (e.g. under /var/lib): present and younger than
    /// `restartTime` at start means this start is a restart, so our OPEN carries the
    /// graceful-restart "R" bit. Removed on a final stop (SIGINT / Cease).
    #[serde(default)]
    pub restart_marker: Option<PathBuf>,
    /// Where to write peer status (JSON) and metrics (Prometheus text) every second.
    #[serde(default)]
    pub status_file: Option<PathBuf>,
    #[serde(default)]
    pub metrics_file: Option<PathBuf>,
}

/// What a running speaker is given: the section's settings (its `bgpSpeakers`
/// only this node's entry, `routerID` resolved), which speaker it is and the pool's
/// routes (built by [`pool_routes`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BgpConfig {
    pub settings: BgpSection,
    /// This node's name: selects our entry in `settings.bgp_speakers`.
    pub node_name: String,
    pub routes: Vec<RouteConfig>,
}

fn default_port() -> u16 {
    179
}
fn default_restart_time() -> u16 {
    600
}
fn default_hold_time() -> u16 {
    90
}
fn default_retry_ms() -> u64 {
    2000
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SpeakerConfig {
    pub name: String,
    pub peers: Vec<PeerConfig>,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerConfig {
    pub name: String,
    #[serde(rename = "peerASN")]
    pub peer_asn: u32,
    pub peer_address: IpAddr,
    #[serde(default)]
    pub auth_password: Option<PasswordRef>,
    /// Install the routes this peer sends into the kernel's main routing table
    /// (`proto bgp`), removed again when withdrawn or when the session ends. Off by
    /// default: the speaker advertises the pool and installs nothing it hears.
    #[serde(default)]
    pub import_routes: bool,
}

/// Where a peer's password comes from: a file, or (the `BGPClusterConfig` form) a
/// Secret of `kube-system`, which only the agent in Kubernetes mode watches: in
/// file mode a `secretKeyRef` peer reports "not available" in its status.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PasswordRef {
    #[serde(default)]
    pub file: Option<PathBuf>,
    #[serde(default)]
    pub secret_key_ref: Option<SecretKeyRef>,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct SecretKeyRef {
    pub name: String,
    pub key: String,
}

/// One node's pod block, and the node's address (the next hop a peer on its
/// subnet is given, `rib::PeerContext::next_hop`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteConfig {
    pub node: String,
    pub node_address: IpAddr,
    pub pod_block: Prefix,
}

impl BgpSection {
    /// Checks what serde cannot; `node_name` is the file's `node.name`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field: &str, message: String| {
            Err(ConfigError {
                field: field.into(),
                message,
            })
        };
        if self.local_asn == 0 {
            return bad("localASN", "must be 1-4294967295".into());
        }
        if self.restart_time > 4095 {
            return bad(
                "restartTime",
                format!(
                    "{} is out of range: 1-4095 s (0 disables graceful restart)",
                    self.restart_time
                ),
            );
        }
        if self.hold_time == 1 || self.hold_time == 2 {
            return bad(
                "holdTime",
                format!("{} is invalid: 0 or at least 3 s", self.hold_time),
            );
        }
        for (i, s) in self.bgp_speakers.iter().enumerate() {
            if self.bgp_speakers.iter().take(i).any(|o| o.name == s.name) {
                return bad(
                    &format!("bgpSpeakers[{i}].name"),
                    format!("{:?} is listed twice", s.name),
                );
            }
            for (j, p) in s.peers.iter().enumerate() {
                let at = |f: &str| format!("bgpSpeakers[{i}].peers[{j}].{f}");
                if p.peer_asn == 0 {
                    return bad(&at("peerASN"), "must be 1-4294967295".into());
                }
                if let Some(a) = &p.auth_password
                    && a.file.is_some() == a.secret_key_ref.is_some()
                {
                    return bad(
                        &at("authPassword"),
                        "give exactly one of file and secretKeyRef".into(),
                    );
                }
            }
        }
        Ok(())
    }

    /// The speaker node `node` runs, advertising `routes`; `None` when `node` is not
    /// one of `bgpSpeakers`. `address` is the default BGP Identifier.
    pub fn speaker_config(
        &self,
        node: &str,
        address: Ipv4Addr,
        routes: Vec<RouteConfig>,
    ) -> Option<BgpConfig> {
        let me = self.bgp_speakers.iter().find(|s| s.name == node)?;
        Some(BgpConfig {
            settings: BgpSection {
                router_id: Some(self.router_id.unwrap_or(address)),
                bgp_speakers: vec![me.clone()],
                ..self.clone()
            },
            node_name: node.to_string(),
            routes,
        })
    }
}

/// The pool's pod blocks as the speaker advertises them, whoever lists the pool
/// (the file's nodes, the Nodes a `BGPClusterConfig` selects): sorted by block, a
/// block listed twice advertised once.
pub fn pool_routes(members: impl IntoIterator<Item = RouteConfig>) -> Vec<RouteConfig> {
    let mut routes: Vec<RouteConfig> = members.into_iter().collect();
    routes.sort_by_key(|r| r.pod_block);
    routes.dedup_by_key(|r| r.pod_block);
    routes
}

impl BgpConfig {
    pub fn speaker(&self) -> Option<&SpeakerConfig> {
        self.settings
            .bgp_speakers
            .iter()
            .find(|s| s.name == self.node_name)
    }

    pub fn router_id(&self) -> Option<Ipv4Addr> {
        self.settings.router_id
    }
}
