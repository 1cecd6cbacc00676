//! The controller's parameters: ConfigMap `kube-system/hybridway-config`, key
//! `config.yaml`. `hybridway check-config` reads the same text from a file.
//!
//! ```yaml
//! hybridPodCIDR: 198.19.128.0/17   # every hybrid pod address comes from here
//! nodeMaskSize: 24                 # one /24 block per hybrid node (default 24)
//! sourceNAT: true                  # masquerade pod traffic leaving the cluster (default)
//! nodePools:                       # the first pool whose selector matches wins
//! - name: onprem-a
//!   mode: underlay                 # or overlay
//!   nodeSelector: {matchLabels: {alibabacloud.com/nodepool-id: np-a}}
//! checkRanges:                     # each list optional: discovered when absent
//!   serviceCIDRs: [198.18.240.0/20]
//!   clusterPodCIDRs: [198.19.0.0/17]
//!   cloudNodeCIDRs: [198.18.0.0/18]
//!   onPremNodeCIDRs: [198.18.64.0/18]
//! ```
//!
//! Parsing and the checks that need nothing but the file live here; the ranges a
//! cluster holds are discovered by `k8s::discovery` and checked with the same
//! [`check_overlaps`].

use crate::config_lines::line_of;
use std::collections::HashSet;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use hybridway_dataplane::tables::Prefix;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::core::{Selector, SelectorExt};
use serde::{Deserialize, Deserializer};

use crate::agent::config::ModeConfig;
use crate::ipam::NodeBlockAllocator;

/// Namespace of the ConfigMap, the leader Lease and the BGP password Secrets.
pub const NAMESPACE: &str = "kube-system";
/// Name of the parameters ConfigMap.
pub const CONFIG_MAP: &str = "hybridway-config";
/// Key of the YAML text inside the ConfigMap.
pub const CONFIG_KEY: &str = "config.yaml";
/// Default per-node block size.
pub const DEFAULT_NODE_MASK_SIZE: u8 = 24;

/// Parameters that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ParamsError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Syntax, unknown or missing field, wrong type: serde_yaml names field and line.
    #[error("{origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("{origin}{}: {field}: {message}", line.map(|l| format!(" line {l}")).unwrap_or_default())]
    Invalid {
        origin: String,
        line: Option<usize>,
        field: String,
        message: String,
    },
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ControllerParams {
    #[serde(rename = "hybridPodCIDR", deserialize_with = "de_prefix")]
    pub hybrid_pod_cidr: Prefix,
    #[serde(default = "default_mask")]
    pub node_mask_size: u8,
    #[serde(default = "default_true", rename = "sourceNAT")]
    pub source_nat: bool,
    pub node_pools: Vec<NodePool>,
    #[serde(default)]
    pub check_ranges: CheckRanges,
}

fn default_mask() -> u8 {
    DEFAULT_NODE_MASK_SIZE
}
fn default_true() -> bool {
    true
}

/// Nodes chosen by a label selector, all in one mode.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodePool {
    pub name: String,
    pub mode: ModeConfig,
    pub node_selector: LabelSelector,
}

impl NodePool {
    /// Whether the node with these labels is in this pool (a selector that does
    /// not parse matches nothing; [`ControllerParams::validate`] refuses it first).
    pub fn selects(&self, labels: &std::collections::BTreeMap<String, String>) -> bool {
        Selector::try_from(self.node_selector.clone()).is_ok_and(|s| s.matches(labels))
    }
}

/// Ranges the hybrid pod CIDR must not overlap; `None` means "discover".
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CheckRanges {
    #[serde(default, rename = "serviceCIDRs", deserialize_with = "de_opt_prefixes")]
    pub service_cidrs: Option<Vec<Prefix>>,
    #[serde(
        default,
        rename = "clusterPodCIDRs",
        deserialize_with = "de_opt_prefixes"
    )]
    pub cluster_pod_cidrs: Option<Vec<Prefix>>,
    #[serde(
        default,
        rename = "cloudNodeCIDRs",
        deserialize_with = "de_opt_prefixes"
    )]
    pub cloud_node_cidrs: Option<Vec<Prefix>>,
    #[serde(
        default,
        rename = "onPremNodeCIDRs",
        deserialize_with = "de_opt_prefixes"
    )]
    pub on_prem_node_cidrs: Option<Vec<Prefix>>,
}

// serde_yaml gives errors raised here no position: they start with the field name
// so that `from_yaml` can find its line.
fn de_prefix<'de, D: Deserializer<'de>>(d: D) -> Result<Prefix, D::Error> {
    let s = String::deserialize(d)?;
    Prefix::from_str(&s).map_err(|e| serde::de::Error::custom(format!("hybridPodCIDR: {e}")))
}

fn de_opt_prefixes<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<Prefix>>, D::Error> {
    let v = Option::<Vec<String>>::deserialize(d)?;
    v.map(|v| {
        v.iter()
            .map(|s| {
                Prefix::from_str(s)
                    .map_err(|e| serde::de::Error::custom(format!("checkRanges: {e}")))
            })
            .collect()
    })
    .transpose()
}

/// What a range to check is, as named in messages (`... overlaps serviceCIDR ...`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeKind {
    ServiceCidr,
    ClusterPodCidr,
    CloudNodeCidr,
    OnPremNodeCidr,
}

impl RangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RangeKind::ServiceCidr => "serviceCIDR",
            RangeKind::ClusterPodCidr => "clusterPodCIDR",
            RangeKind::CloudNodeCidr => "cloudNodeCIDR",
            RangeKind::OnPremNodeCidr => "onPremNodeCIDR",
        }
    }

    fn field(self) -> &'static str {
        match self {
            RangeKind::ServiceCidr => "checkRanges.serviceCIDRs",
            RangeKind::ClusterPodCidr => "checkRanges.clusterPodCIDRs",
            RangeKind::CloudNodeCidr => "checkRanges.cloudNodeCIDRs",
            RangeKind::OnPremNodeCidr => "checkRanges.onPremNodeCIDRs",
        }
    }
}

/// One range to check and where it came from (a parameter or a discovered object).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckedRange {
    pub kind: RangeKind,
    pub prefix: Prefix,
    /// `None` when given in the parameters, else the object it was found on.
    pub found_on: Option<String>,
}

/// The hybrid pod CIDR overlaps a range it must stay clear of.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct Overlap {
    pub hybrid: Prefix,
    pub range: CheckedRange,
}

impl fmt::Display for Overlap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "hybridPodCIDR {} overlaps {} {}",
            self.hybrid,
            self.range.kind.as_str(),
            self.range.prefix
        )?;
        if let Some(on) = &self.range.found_on {
            write!(f, " (found on {on})")?;
        }
        Ok(())
    }
}

/// The first range that `hybrid` overlaps, in the order given.
pub fn check_overlaps<'a>(
    hybrid: Prefix,
    ranges: impl IntoIterator<Item = &'a CheckedRange>,
) -> Result<(), Overlap> {
    match ranges.into_iter().find(|r| r.prefix.overlaps(&hybrid)) {
        Some(r) => Err(Overlap {
            hybrid,
            range: r.clone(),
        }),
        None => Ok(()),
    }
}

impl ControllerParams {
    /// Reads, parses and validates a file: either the bare `config.yaml` text or a
    /// whole ConfigMap manifest whose `data` holds it.
    pub fn load(path: &Path) -> Result<Self, ParamsError> {
        let text = std::fs::read_to_string(path).map_err(|source| ParamsError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let origin = path.display().to_string();
        match config_map_payload(&text) {
            Some(inner) => Self::from_yaml(&inner, &format!("{origin} (data.{CONFIG_KEY})")),
            None => Self::from_yaml(&text, &origin),
        }
    }

    /// Parses and validates YAML text; `origin` names it in messages.
    pub fn from_yaml(text: &str, origin: &str) -> Result<Self, ParamsError> {
        let params: ControllerParams = serde_yaml::from_str(text).map_err(|e| {
            let message = e.to_string();
            match message.split_once(": ") {
                Some((field, rest)) if !message.contains(" at line ") => ParamsError::Invalid {
                    origin: origin.to_string(),
                    line: line_of(text, field),
                    field: field.to_string(),
                    message: rest.to_string(),
                },
                _ => ParamsError::Parse {
                    origin: origin.to_string(),
                    message,
                },
            }
        })?;
        params
            .validate()
            .map_err(|(field, message)| ParamsError::Invalid {
                origin: origin.to_string(),
                line: line_of(text, &field),
                field,
                message,
            })?;
        Ok(params)
    }

    /// The ranges given in the file (the others are discovered in a cluster).
    pub fn given_ranges(&self) -> Vec<CheckedRange> {
        let r = &self.check_ranges;
        [
            (RangeKind::ServiceCidr, &r.service_cidrs),
            (RangeKind::ClusterPodCidr, &r.cluster_pod_cidrs),
            (RangeKind::CloudNodeCidr, &r.cloud_node_cidrs),
            (RangeKind::OnPremNodeCidr, &r.on_prem_node_cidrs),
        ]
        .into_iter()
        .flat_map(|(kind, list)| {
            list.iter().flatten().map(move |&prefix| CheckedRange {
                kind,
                prefix,
                found_on: None,
            })
        })
        .collect()
    }

    /// The pool a node with these labels belongs to: the first that selects it.
    pub fn pool_for(
        &self,
        labels: &std::collections::BTreeMap<String, String>,
    ) -> Option<&NodePool> {
        self.node_pools.iter().find(|p| p.selects(labels))
    }

    /// Everything the file alone can show wrong, as (field path, message).
    fn validate(&self) -> Result<(), (String, String)> {
        NodeBlockAllocator::new(self.hybrid_pod_cidr, self.node_mask_size).map_err(|e| {
            let field = if self.hybrid_pod_cidr.is_ipv4() {
                "nodeMaskSize"
            } else {
                "hybridPodCIDR"
            };
            (field.to_string(), e.to_string())
        })?;
        if self.node_pools.is_empty() {
            return Err((
                "nodePools".into(),
                "at least one pool is needed (no node would get a block)".into(),
            ));
        }
        let mut names = HashSet::new();
        for (i, pool) in self.node_pools.iter().enumerate() {
            let at = |f: &str| format!("nodePools[{i}].{f}");
            if pool.name.trim().is_empty() {
                return Err((at("name"), "must not be empty".into()));
            }
            if !names.insert(pool.name.as_str()) {
                return Err((at("name"), format!("pool {} is named twice", pool.name)));
            }
            let selector = Selector::try_from(pool.node_selector.clone())
                .map_err(|e| (at("nodeSelector"), e.to_string()))?;
            if selector.selects_all() {
                return Err((
                    at("nodeSelector"),
                    "selects every node; name the pool's labels".into(),
                ));
            }
        }
        for r in self.given_ranges() {
            check_overlaps(self.hybrid_pod_cidr, [&r])
                .map_err(|e| (r.kind.field().to_string(), e.to_string()))?;
        }
        Ok(())
    }
}

/// The `data.config.yaml` of a ConfigMap manifest, if `text` is one.
fn config_map_payload(text: &str) -> Option<String> {
    let doc: serde_yaml::Value = serde_yaml::from_str(text).ok()?;
    if doc.get("kind")?.as_str()? != "ConfigMap" {
        return None;
    }
    Some(doc.get("data")?.get(CONFIG_KEY)?.as_str()?.to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    const GOOD: &str = "\
hybridPodCIDR: 198.19.128.0/17
nodePools:
- name: onprem-a
  mode: underlay
  nodeSelector: {matchLabels: {pool: a}}
- name: onprem-b
  mode: overlay
  nodeSelector:
    matchExpressions: [{key: pool, operator: In, values: [b]}]
checkRanges:
  serviceCIDRs: [198.18.240.0/20]
  clusterPodCIDRs: [198.19.0.0/17]
";

    #[test]
    fn defaults_and_pools() {
        let p = ControllerParams::from_yaml(GOOD, "t").unwrap();
        assert_eq!(p.node_mask_size, 24);
        assert!(p.source_nat);
        assert_eq!(p.check_ranges.cloud_node_cidrs, None);
        let labels = |v: &str| [("pool".to_string(), v.to_string())].into();
        assert_eq!(p.pool_for(&labels("b")).unwrap().name, "onprem-b");
        assert_eq!(p.pool_for(&labels("a")).unwrap().mode, ModeConfig::Underlay);
        assert!(p.pool_for(&labels("c")).is_none());
    }

    #[test]
    fn overlap_is_refused_with_both_cidrs_and_the_line() {
        let bad = GOOD.replace("198.19.128.0/17", "198.19.0.0/16");
        let e = ControllerParams::from_yaml(&bad, "c.yaml").unwrap_err();
        assert_eq!(
            e.to_string(),
            "c.yaml line 12: checkRanges.clusterPodCIDRs: \
             hybridPodCIDR 198.19.0.0/16 overlaps clusterPodCIDR 198.19.0.0/17"
        );
    }

    #[test]
    fn bad_values_name_the_field() {
        let cases = [
            (
                "nodePools:",
                "nodeMaskSize: 8\nnodePools:",
                "line 2: nodeMaskSize: nodeMaskSize 8 does not fit",
            ),
            (
                "name: onprem-b",
                "name: onprem-a",
                "line 6: nodePools[1].name: pool onprem-a is named twice",
            ),
            (
                "{matchLabels: {pool: a}}",
                "{}",
                "line 5: nodePools[0].nodeSelector: selects every node",
            ),
            (
                "operator: In",
                "operator: Near",
                "nodePools[1].nodeSelector",
            ),
            (
                "198.19.128.0/17",
                "198.19.128.0/33",
                "line 1: hybridPodCIDR: prefix length 33",
            ),
            (
                "mode: overlay",
                "mode: sideways",
                "unknown variant `sideways`",
            ),
        ];
        for (from, to, want) in cases {
            let e = ControllerParams::from_yaml(&GOOD.replace(from, to), "c.yaml")
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{to}: {e}");
        }
    }

    #[test]
    fn configmap_manifest_is_accepted_by_load() {
        let dir = std::env::temp_dir().join(format!("hw-params-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("cm.yaml");
        let indented: String = GOOD.lines().map(|l| format!("    {l}\n")).collect();
        std::fs::write(
            &path,
            format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: hybridway-config, namespace: kube-system}}\ndata:\n  config.yaml: |\n{indented}"),
        )
        .unwrap();
        assert_eq!(ControllerParams::load(&path).unwrap().node_pools.len(), 2);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
