//! The ranges the hybrid pod CIDR must stay clear of, when the parameters do not
//! give them: service CIDRs from `ServiceCIDR` objects, the cluster's pod CIDRs from
//! the `podCIDRs` of nodes outside every hybrid pool, and node addresses (as /32s)
//! from Node status, split into cloud (outside the pools) and on-premises (inside).

use std::net::IpAddr;
use std::str::FromStr;

use hybridway_dataplane::tables::Prefix;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::networking::v1::ServiceCIDR;
use kube::ResourceExt;
use kube::api::{Api, ListParams};

use super::params::{CheckedRange, ControllerParams, RangeKind};

/// Given ranges plus, for each kind not given, what the nodes show.
pub fn ranges_from_nodes<'a>(
    params: &ControllerParams,
    nodes: impl IntoIterator<Item = &'a Node>,
) -> Vec<CheckedRange> {
    let given = &params.check_ranges;
    let mut out = params.given_ranges();
    for node in nodes {
        let on = format!("node {}", node.name_any());
        let hybrid = params.pool_for(node.labels()).is_some();
        if !hybrid && given.cluster_pod_cidrs.is_none() {
            let cidrs = node.spec.as_ref().and_then(|s| s.pod_cidrs.clone());
            for c in cidrs.iter().flatten() {
                if let Ok(prefix) = Prefix::from_str(c) {
                    out.push(CheckedRange {
                        kind: RangeKind::ClusterPodCidr,
                        prefix,
                        found_on: Some(on.clone()),
                    });
                }
            }
        }
        let kind = if hybrid {
            (given.on_prem_node_cidrs.is_none()).then_some(RangeKind::OnPremNodeCidr)
        } else {
            (given.cloud_node_cidrs.is_none()).then_some(RangeKind::CloudNodeCidr)
        };
        let Some(kind) = kind else { continue };
        let addrs = node.status.as_ref().and_then(|s| s.addresses.clone());
        for a in addrs.iter().flatten() {
            if let Ok(ip) = IpAddr::from_str(&a.address) {
                let len = if ip.is_ipv4() { 32 } else { 128 };
                if let Ok(prefix) = Prefix::new(ip, len) {
                    out.push(CheckedRange {
                        kind,
                        prefix,
                        found_on: Some(on.clone()),
                    });
                }
            }
        }
    }
    out
}

/// Service CIDRs from the cluster's `ServiceCIDR` objects, unless given. A cluster
/// without the API (older than 1.33) has none to offer.
pub async fn service_cidrs(
    client: &kube::Client,
    params: &ControllerParams,
) -> Result<Vec<CheckedRange>, kube::Error> {
    if params.check_ranges.service_cidrs.is_some() {
        return Ok(Vec::new());
    }
    let api: Api<ServiceCIDR> = Api::all(client.clone());
    let list = match api.list(&ListParams::default()).await {
        Ok(l) => l,
        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    Ok(list
        .items
        .iter()
        .flat_map(|sc| {
            let on = format!("ServiceCIDR {}", sc.name_any());
            let cidrs = sc
                .spec
                .as_ref()
                .and_then(|s| s.cidrs.clone())
                .unwrap_or_default();
            cidrs.into_iter().filter_map(move |c| {
                Prefix::from_str(&c).ok().map(|prefix| CheckedRange {
                    kind: RangeKind::ServiceCidr,
                    prefix,
                    found_on: Some(on.clone()),
                })
            })
        })
        .collect())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeAddress, NodeSpec, NodeStatus};
    use kube::api::ObjectMeta;

    fn node(name: &str, pool: Option<&str>, addr: &str, pod_cidr: Option<&str>) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: pool.map(|p| [("pool".to_string(), p.to_string())].into()),
                ..ObjectMeta::default()
            },
            spec: Some(NodeSpec {
                pod_cidrs: pod_cidr.map(|c| vec![c.to_string()]),
                ..NodeSpec::default()
            }),
            status: Some(NodeStatus {
                addresses: Some(vec![NodeAddress {
                    type_: "InternalIP".into(),
                    address: addr.into(),
                }]),
                ..NodeStatus::default()
            }),
        }
    }

    #[test]
    fn discovers_what_is_not_given() {
        let params = ControllerParams::from_yaml(
            "hybridPodCIDR: 198.19.128.0/17\nnodePools:\n- {name: a, mode: overlay, nodeSelector: {matchLabels: {pool: a}}}\ncheckRanges: {cloudNodeCIDRs: [198.18.0.0/18]}\n",
            "t",
        )
        .unwrap();
        let nodes = [
            node("cloud-1", None, "198.18.0.5", Some("198.19.0.0/24")),
            node("hyb-1", Some("a"), "198.18.64.5", Some("198.19.128.0/24")),
        ];
        let r = ranges_from_nodes(&params, &nodes);
        let shown: Vec<String> = r
            .iter()
            .map(|r| format!("{} {} {:?}", r.kind.as_str(), r.prefix, r.found_on))
            .collect();
        assert_eq!(
            shown,
            [
                "cloudNodeCIDR 198.18.0.0/18 None",
                "clusterPodCIDR 198.19.0.0/24 Some(\"node cloud-1\")",
                "onPremNodeCIDR 198.18.64.5/32 Some(\"node hyb-1\")",
            ]
        );
    }
}
