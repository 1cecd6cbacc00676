//! The `bgp` configuration section. Until the Kubernetes wiring lands, the agent reads
//! it from YAML; field names mirror `BGPClusterConfig` (`localASN`, `bgpSpeakers`,
//! `peers`, `peerASN`, `peerAddress`, `authPassword`).
//!
//! ```yaml
//! bgp:
//!   localASN: 65010
//!   nodeName: hybrid-node-1          # which speaker this process is
//!   restartTime: 600                 # graceful restart, 1-4095 s; 0 disables it
//!   bgpSpeakers:
//!   - name: hybrid-node-1
//!     peers:
//!     - name: switch-1
//!       peerASN: 65001
//!       peerAddress: 198.18.0.1
//!       authPassword: {file: /etc/hybridway/bgp-password}
//!   routes:                          # the pool's pod blocks
//!   - {node: hybrid-node-1, nodeAddress: 198.18.0.10, podBlock: 198.19.1.0/24}
//! ```

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use hybridway_dataplane::tables::Prefix;
use serde::Deserialize;

/// Errors in the `bgp` section.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid YAML in {path}: {source}")]
    Yaml {
        path: PathBuf,
        source: serde_yaml::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

/// The top of the file: other sections belong to other parts of the agent.
#[derive(Clone, Debug, Deserialize)]
pub struct ConfigFile {
    pub bgp: BgpConfig,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BgpConfig {
    #[serde(rename = "localASN")]
    pub local_asn: u32,
    /// This node's name: selects our entry in `bgpSpeakers`.
    pub node_name: String,
    /// BGP Identifier; defaults to this node's address from `routes`.
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
    pub bgp_speakers: Vec<SpeakerConfig>,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
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
}

/// Where a peer's password comes from. `secretKeyRef` is the `BGPClusterConfig`
/// form; until the Kubernetes wiring lands it reports "not available" in status.
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

/// One node's pod block.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteConfig {
    pub node: String,
    pub node_address: IpAddr,
    #[serde(with = "prefix_str")]
    pub pod_block: Prefix,
}

mod prefix_str {
    use hybridway_dataplane::tables::Prefix;
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Prefix, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl BgpConfig {
    pub fn load(path: &Path) -> Result<BgpConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        let file: ConfigFile = serde_yaml::from_str(&text).map_err(|source| ConfigError::Yaml {
            path: path.into(),
            source,
        })?;
        file.bgp.validate()?;
        Ok(file.bgp)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.restart_time > 4095 {
            return bad(format!(
                "restartTime {} is out of range: 1-4095 s (0 disables graceful restart)",
                self.restart_time
            ));
        }
        if self.hold_time == 1 || self.hold_time == 2 {
            return bad(format!(
                "holdTime {} is invalid: 0 or at least 3 s",
                self.hold_time
            ));
        }
        if self.speaker().is_none() {
            return bad(format!(
                "nodeName {:?} is not one of bgpSpeakers",
                self.node_name
            ));
        }
        if self.router_id().is_none() {
            return bad(format!(
                "no routerID given and node {:?} has no IPv4 nodeAddress in routes to derive one from",
                self.node_name
            ));
        }
        for (i, r) in self.routes.iter().enumerate() {
            if self
                .routes
                .iter()
                .skip(i + 1)
                .any(|o| o.pod_block == r.pod_block)
            {
                return bad(format!(
                    "pod block {} is listed twice in routes",
                    r.pod_block
                ));
            }
        }
        Ok(())
    }

    pub fn speaker(&self) -> Option<&SpeakerConfig> {
        self.bgp_speakers.iter().find(|s| s.name == self.node_name)
    }

    pub fn router_id(&self) -> Option<Ipv4Addr> {
        self.router_id.or_else(|| {
            self.routes
                .iter()
                .filter(|r| r.node == self.node_name)
                .find_map(|r| match r.node_address {
                    IpAddr::V4(a) => Some(a),
                    IpAddr::V6(_) => None,
                })
        })
    }
}
