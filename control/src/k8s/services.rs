//! Services and EndpointSlices (`discovery.k8s.io/v1`) → the dataplane's
//! [`ServiceSpec`]s, as kube-proxy reads them. Pure: the watch
//! (`services_watch`) passes the objects of its stores.
//!
//! What is read, and why:
//! - Only Services with a ClusterIP (not headless, not `ExternalName`), and not
//!   those labelled `service.kubernetes.io/service-proxy-name` (they ask for another
//!   proxy; kube-proxy skips them too). IPv4 ClusterIPs only.
//! - A Service's slices are those labelled `kubernetes.io/service-name` in its
//!   namespace, IPv4 ones. A slice port matches a Service port by name and protocol
//!   (the endpoint controller names them alike; an unnamed port is ""), which gives
//!   the endpoint's port: `targetPort` may be a name that differs per pod.
//! - Conditions as the API defines their absence: `ready` unknown is ready,
//!   `serving` unknown is `ready`, `terminating` unknown is not terminating.
//! - An endpoint is local when its `nodeName` is this node.
//! - NodePorts only for `NodePort` and `LoadBalancer` Services; the external
//!   traffic policy only matters for them.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use hybridway_dataplane::tables::services::{
    DEFAULT_AFFINITY_TIMEOUT, EndpointSpec, ServicePortSpec, ServiceProto, ServiceSpec,
};
use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Services with this label are served by another proxy.
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";

/// The specs of every Service the dataplane serves, sorted by `namespace/name`.
/// `node_name`: this node (endpoints there are local).
pub fn service_specs<'a>(
    node_name: &str,
    services: impl IntoIterator<Item = &'a Service>,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
) -> Vec<ServiceSpec> {
    let mut by_service: HashMap<(String, String), Vec<&EndpointSlice>> = HashMap::new();
    for slice in slices {
        if slice.address_type != "IPv4" {
            continue;
        }
        let Some(name) = slice.labels().get(SERVICE_NAME_LABEL) else {
            continue;
        };
        let ns = slice.namespace().unwrap_or_default();
        by_service
            .entry((ns, name.clone()))
            .or_default()
            .push(slice);
    }
    let mut specs: Vec<ServiceSpec> = services
        .into_iter()
        .filter_map(|svc| {
            let key = (svc.namespace().unwrap_or_default(), svc.name_any());
            let slices = by_service.get(&key).map(Vec::as_slice).unwrap_or_default();
            spec_of(node_name, svc, slices)
        })
        .collect();
    specs.sort_by(|a, b| a.name.cmp(&b.name));
    specs
}

fn spec_of(node_name: &str, svc: &Service, slices: &[&EndpointSlice]) -> Option<ServiceSpec> {
    if svc.labels().contains_key(SERVICE_PROXY_NAME_LABEL) {
        return None;
    }
    let s = svc.spec.as_ref()?;
    let kind = s.type_.as_deref().unwrap_or("ClusterIP");
    if kind == "ExternalName" {
        return None;
    }
    let ips: Vec<&String> = match &s.cluster_ips {
        Some(list) if !list.is_empty() => list.iter().collect(),
        _ => s.cluster_ip.iter().collect(),
    };
    let cluster_ips: Vec<Ipv4Addr> = ips.iter().filter_map(|ip| ip.parse().ok()).collect();
    if cluster_ips.is_empty() {
        // Headless ("None") or IPv6 only.
        return None;
    }
    let with_node_ports = matches!(kind, "NodePort" | "LoadBalancer");
    let ports = s
        .ports
        .iter()
        .flatten()
        .filter_map(|p| port_spec(node_name, p, slices, with_node_ports))
        .collect();
    let affinity = (s.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        s.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .and_then(|t| u64::try_from(t).ok())
            .map_or(DEFAULT_AFFINITY_TIMEOUT, Duration::from_secs)
    });
    Some(ServiceSpec {
        name: format!("{}/{}", svc.namespace().unwrap_or_default(), svc.name_any()),
        cluster_ips,
        ports,
        affinity,
        internal_local: s.internal_traffic_policy.as_deref() == Some("Local"),
        external_local: with_node_ports && s.external_traffic_policy.as_deref() == Some("Local"),
    })
}

fn protocol(p: Option<&str>) -> Option<ServiceProto> {
    match p.unwrap_or("TCP") {
        "TCP" => Some(ServiceProto::Tcp),
        "UDP" => Some(ServiceProto::Udp),
        "SCTP" => Some(ServiceProto::Sctp),
        _ => None,
    }
}

fn port_spec(
    node_name: &str,
    p: &ServicePort,
    slices: &[&EndpointSlice],
    with_node_ports: bool,
) -> Option<ServicePortSpec> {
    let proto = protocol(p.protocol.as_deref())?;
    let port = u16::try_from(p.port).ok()?;
    let name = p.name.as_deref().unwrap_or("");
    let mut endpoints = Vec::new();
    for slice in slices {
        let Some(target) = slice.ports.iter().flatten().find_map(|sp| {
            let same_name = sp.name.as_deref().unwrap_or("") == name;
            let same_proto = protocol(sp.protocol.as_deref()) == Some(proto);
            (same_name && same_proto)
                .then_some(sp.port)
                .flatten()
                .and_then(|n| u16::try_from(n).ok())
        }) else {
            continue;
        };
        for ep in &slice.endpoints {
            let c = ep.conditions.as_ref();
            let ready = c.and_then(|c| c.ready).unwrap_or(true);
            let serving = c.and_then(|c| c.serving).unwrap_or(ready);
            let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
            let local = ep.node_name.as_deref() == Some(node_name);
            endpoints.extend(ep.addresses.iter().filter_map(|a| a.parse().ok()).map(
                |addr: Ipv4Addr| EndpointSpec {
                    addr,
                    port: target,
                    ready,
                    serving,
                    terminating,
                    local,
                },
            ));
        }
    }
    let node_port = if with_node_ports {
        p.node_port.and_then(|n| u16::try_from(n).ok())
    } else {
        None
    };
    Some(ServicePortSpec {
        proto,
        port,
        node_port,
        endpoints,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn svc(yaml: &str) -> Service {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn slice(yaml: &str) -> EndpointSlice {
        serde_yaml::from_str(yaml).unwrap()
    }

    const DNS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: dns, namespace: kube-system}
spec:
  clusterIP: 198.18.240.10
  clusterIPs: [198.18.240.10]
  ports:
  - {name: dns, port: 53, protocol: UDP, targetPort: dns}
  - {name: dns-tcp, port: 53, protocol: TCP, targetPort: 5353}
"#;

    const DNS_SLICE: &str = r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: dns-abc
  namespace: kube-system
  labels: {kubernetes.io/service-name: dns}
addressType: IPv4
ports:
- {name: dns, port: 1053, protocol: UDP}
- {name: dns-tcp, port: 5353, protocol: TCP}
endpoints:
- addresses: [198.19.128.5]
  nodeName: hybrid-1
- addresses: [198.19.129.7]
  nodeName: hybrid-2
  conditions: {ready: false, serving: true, terminating: true}
"#;

    #[test]
    fn ports_match_by_name_and_protocol_and_conditions_default_as_the_api_says() {
        let specs = service_specs("hybrid-1", &[svc(DNS)], &[slice(DNS_SLICE)]);
        assert_eq!(specs.len(), 1);
        let s = &specs[0];
        assert_eq!(s.name, "kube-system/dns");
        assert_eq!(s.cluster_ips, [Ipv4Addr::new(198, 18, 240, 10)]);
        assert_eq!(s.affinity, None);
        let udp = &s.ports[0];
        assert_eq!(
            (udp.proto, udp.port, udp.node_port),
            (ServiceProto::Udp, 53, None)
        );
        assert_eq!(udp.endpoints.len(), 2);
        assert_eq!(
            udp.endpoints[0],
            EndpointSpec {
                addr: Ipv4Addr::new(198, 19, 128, 5),
                port: 1053,
                ready: true,
                serving: true,
                terminating: false,
                local: true,
            }
        );
        let e = udp.endpoints[1];
        assert_eq!(
            (e.ready, e.serving, e.terminating, e.local),
            (false, true, true, false)
        );
        assert_eq!(s.ports[1].endpoints[0].port, 5353);
    }

    #[test]
    fn slices_of_other_services_namespaces_and_families_are_ignored() {
        let mut other_ns = slice(DNS_SLICE);
        other_ns.metadata.namespace = Some("default".into());
        let mut v6 = slice(DNS_SLICE);
        v6.address_type = "IPv6".into();
        let specs = service_specs("hybrid-1", &[svc(DNS)], &[other_ns, v6]);
        assert!(specs[0].ports.iter().all(|p| p.endpoints.is_empty()));
    }

    #[test]
    fn headless_external_name_and_other_proxies_services_are_skipped() {
        let headless = svc(&DNS
            .replace("clusterIP: 198.18.240.10", "clusterIP: None")
            .replace("clusterIPs: [198.18.240.10]", "clusterIPs: [None]"));
        let mut other = svc(DNS);
        other
            .labels_mut()
            .insert(SERVICE_PROXY_NAME_LABEL.into(), "else".into());
        let external = svc(
            "apiVersion: v1\nkind: Service\nmetadata: {name: x, namespace: d}\nspec: {type: ExternalName, externalName: example.org}\n",
        );
        assert!(service_specs("n", &[headless, other, external], &[]).is_empty());
    }

    #[test]
    fn node_ports_affinity_and_traffic_policies() {
        let s = svc(r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  type: NodePort
  clusterIP: 198.18.240.20
  ports: [{port: 80, nodePort: 30080, targetPort: 8080}]
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}
  internalTrafficPolicy: Local
  externalTrafficPolicy: Local
"#);
        let specs = service_specs("n", std::slice::from_ref(&s), &[]);
        let spec = &specs[0];
        assert_eq!(spec.ports[0].node_port, Some(30080));
        assert_eq!(spec.ports[0].proto, ServiceProto::Tcp);
        assert_eq!(spec.affinity, Some(Duration::from_secs(60)));
        assert!(spec.internal_local && spec.external_local);

        let mut cluster_ip = s;
        let sp = cluster_ip.spec.as_mut().unwrap();
        sp.type_ = Some("ClusterIP".into());
        sp.session_affinity_config = None;
        let specs = service_specs("n", &[cluster_ip], &[]);
        assert_eq!(specs[0].ports[0].node_port, None);
        assert!(!specs[0].external_local);
        assert_eq!(specs[0].affinity, Some(DEFAULT_AFFINITY_TIMEOUT));
    }
}
