//! Kubernetes Services as the dataplane serves them: which endpoints a packet to a
//! ClusterIP:port or a NodePort may be sent to.
//!
//! The control thread resolves Services and EndpointSlices into [`ServiceSpec`]s
//! (ports already matched by name, endpoints already known local or not) and builds
//! one immutable [`ServiceTable`]; it rides in the snapshot behind an `Arc`, so a
//! snapshot rebuilt for a route change does not copy it. Which endpoint a flow gets,
//! and keeping it, is per-worker state in the pipeline (`pipeline::service`).
//!
//! Endpoint choice follows kube-proxy (`pkg/proxy/topology.go`, `CategorizeEndpoints`,
//! and the iptables proxier's chains), so a Service behaves the same whether a pod
//! sits on a hybrid node or a kube-proxy node:
//! - **Cluster endpoints** are the ready ones; when none is ready, the serving and
//!   terminating ones (a rolling update must not black-hole a Service whose every
//!   pod is shutting down). Not-ready, non-serving endpoints are never used.
//! - **Local endpoints** are the same rule applied to endpoints on this node.
//! - `internalTrafficPolicy: Local` sends pod traffic to local endpoints only;
//!   `externalTrafficPolicy: Local` does that for NodePort traffic (and keeps the
//!   client's address, which is the point of it).
//! - A Service with no usable endpoint at all *rejects* (ICMP port unreachable, the
//!   iptables `REJECT` rule); one whose policy leaves no endpoint while others exist
//!   elsewhere *drops*, as kube-proxy's "has no local endpoints" rule does.
//!
//! Only IPv4 TCP and UDP: the parser gives the pipeline no SCTP ports (SCTP frontends
//! are left out of the table and counted in [`ServiceTable::skipped`]).

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::ops::Range;
use std::time::Duration;

use crate::tables::L4Proto;
use crate::tables::port_set::PortSet;
use crate::wire::classify::NO_PORT;

/// kube-proxy's default `sessionAffinityConfig.clientIP.timeoutSeconds` (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT: Duration = Duration::from_secs(10_800);

/// Protocol of a Service port as the API names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ServiceProto {
    Tcp,
    Udp,
    Sctp,
}

impl ServiceProto {
    /// The conntrack protocol, or `None` where the dataplane does not serve it.
    fn l4(self) -> Option<L4Proto> {
        match self {
            ServiceProto::Tcp => Some(L4Proto::Tcp),
            ServiceProto::Udp => Some(L4Proto::Udp),
            ServiceProto::Sctp => None,
        }
    }
}

/// One Service, resolved by the control thread.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceSpec {
    /// `namespace/name`, for logs only.
    pub name: String,
    /// The IPv4 ClusterIPs (empty for a headless Service, which has no frontend).
    pub cluster_ips: Vec<Ipv4Addr>,
    pub ports: Vec<ServicePortSpec>,
    /// `sessionAffinity: ClientIP` with its timeout; `None` for `None`.
    pub affinity: Option<Duration>,
    /// `internalTrafficPolicy: Local`.
    pub internal_local: bool,
    /// `externalTrafficPolicy: Local` (NodePort traffic).
    pub external_local: bool,
}

/// One port of a Service and the endpoints that serve it (EndpointSlice ports are
/// matched to it by name before this point).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePortSpec {
    pub proto: ServiceProto,
    pub port: u16,
    pub node_port: Option<u16>,
    pub endpoints: Vec<EndpointSpec>,
}

/// An endpoint address and port with its EndpointSlice conditions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndpointSpec {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// On this node (EndpointSlice `nodeName` is ours).
    pub local: bool,
}

/// Where a packet is sent: an endpoint's address and port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Backend {
    pub addr: Ipv4Addr,
    pub port: u16,
}

/// What identifies a frontend: protocol, ClusterIP and port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FrontendKey {
    pub proto: L4Proto,
    pub addr: Ipv4Addr,
    pub port: u16,
}

/// One ClusterIP:port (or NodePort) and the endpoints it may send to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frontend {
    pub key: FrontendKey,
    /// ClientIP affinity timeout.
    pub affinity: Option<Duration>,
    /// `externalTrafficPolicy: Local`: NodePort traffic keeps the client's address.
    pub external_local: bool,
    /// Endpoints for traffic from pods (internal traffic policy applied).
    internal: Range<u32>,
    /// Endpoints for NodePort traffic (external traffic policy applied).
    external: Range<u32>,
    /// Some endpoint is usable: an empty choice then drops instead of rejecting.
    has_endpoints: bool,
}

/// What to do with a new flow to a frontend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Selection<'a> {
    /// Pick one of these (never empty).
    Endpoints(&'a [Backend]),
    /// No endpoint at all: tell the client (ICMP port unreachable).
    Reject,
    /// Endpoints exist but the traffic policy allows none of them: drop silently.
    Drop,
}

/// Which traffic a frontend is asked about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A pod on this node (internal traffic policy).
    Pod,
    /// From outside the node to a NodePort (external traffic policy).
    External,
}

/// All Services of the cluster, immutable once built.
#[derive(Clone, Debug, Default)]
pub struct ServiceTable {
    frontends: Vec<Frontend>,
    backends: Vec<Backend>,
    by_cluster_ip: HashMap<FrontendKey, u32, ahash::RandomState>,
    /// NodePorts by protocol and port (the address is the node's, not stored).
    by_node_port: HashMap<(L4Proto, u16), u32, ahash::RandomState>,
    /// Smallest and largest NodePort: replies to masqueraded flows, on ports the
    /// agent keeps outside the NodePort range, stay off the hash map.
    node_port_bounds: Option<(u16, u16)>,
    /// Smallest and largest ClusterIP: one compare pair keeps pod-to-pod traffic off
    /// the hash map (ClusterIPs all come from the service CIDR).
    vip_bounds: Option<(u32, u32)>,
    /// Every ClusterIP, whatever its ports.
    cluster_ips: HashSet<Ipv4Addr, ahash::RandomState>,
    /// Every endpoint listed for a frontend, whatever its conditions: with several
    /// workers, what makes a packet a possible reply worth handing to the worker
    /// that owns its flow. Not only the ones new flows may use: a flow opened while
    /// its endpoint was ready keeps it when the pod turns terminating or not ready
    /// (kube-proxy leaves established flows alone), and its replies must still be
    /// translated.
    endpoints: HashSet<(L4Proto, Backend), ahash::RandomState>,
    /// The ports of `endpoints`: most packets are turned away on this alone.
    endpoint_ports: PortSet,
    skipped: usize,
}

impl ServiceTable {
    /// Builds the table (on the control thread, off the packet path; sequential, see
    /// README "Dependencies we do not use"); ClusterIPs or NodePorts given twice keep
    /// their first Service.
    pub fn build(specs: &[ServiceSpec]) -> ServiceTable {
        // Per Service, its frontends with local backend lists; then one flat array.
        let parts: Vec<Vec<Part>> = specs.iter().map(frontends_of).collect();
        let count: usize = parts.iter().map(Vec::len).sum();
        let mut table = ServiceTable {
            frontends: Vec::with_capacity(count),
            backends: Vec::with_capacity(count * 4),
            by_cluster_ip: HashMap::with_capacity_and_hasher(count, ahash::RandomState::new()),
            by_node_port: HashMap::with_hasher(ahash::RandomState::new()),
            node_port_bounds: None,
            vip_bounds: None,
            cluster_ips: HashSet::with_hasher(ahash::RandomState::new()),
            endpoints: HashSet::with_hasher(ahash::RandomState::new()),
            endpoint_ports: PortSet::default(),
            skipped: specs
                .iter()
                .flat_map(|s| &s.ports)
                .filter(|p| p.proto.l4().is_none())
                .count(),
        };
        for part in parts.into_iter().flatten() {
            let Part {
                mut fe,
                node_port,
                internal,
                external,
                listed,
            } = part;
            let Ok(index) = u32::try_from(table.frontends.len()) else {
                table.skipped += 1;
                continue;
            };
            if table.by_cluster_ip.contains_key(&fe.key) {
                table.skipped += 1;
                continue;
            }
            let proto = fe.key.proto;
            for b in &listed {
                table.endpoints.insert((proto, *b));
                table.endpoint_ports.insert(b.port);
                // ICMP errors about flows to an endpoint carry no port: they pass the
                // same filter as the endpoint's replies (see `may_be_endpoint_port`).
                table.endpoint_ports.insert(NO_PORT);
            }
            fe.internal = table.push_backends(&internal);
            fe.external = if internal == external {
                fe.internal.clone()
            } else {
                table.push_backends(&external)
            };
            table.by_cluster_ip.insert(fe.key, index);
            if let Some(np) = node_port {
                table
                    .by_node_port
                    .entry((fe.key.proto, np))
                    .or_insert(index);
                table.node_port_bounds = Some(match table.node_port_bounds {
                    None => (np, np),
                    Some((lo, hi)) => (lo.min(np), hi.max(np)),
                });
            }
            table.cluster_ips.insert(fe.key.addr);
            let ip = fe.key.addr.to_bits();
            table.vip_bounds = Some(match table.vip_bounds {
                None => (ip, ip),
                Some((lo, hi)) => (lo.min(ip), hi.max(ip)),
            });
            table.frontends.push(fe);
        }
        table
    }

    fn push_backends(&mut self, list: &[Backend]) -> Range<u32> {
        let start = u32::try_from(self.backends.len()).unwrap_or(u32::MAX);
        self.backends.extend_from_slice(list);
        let end = u32::try_from(self.backends.len()).unwrap_or(u32::MAX);
        start..end
    }

    /// The frontend a pod's packet to `addr`:`port` hits, if any.
    #[inline]
    pub fn cluster_ip(&self, proto: L4Proto, addr: Ipv4Addr, port: u16) -> Option<&Frontend> {
        if !self.may_be_cluster_ip(addr) {
            return None;
        }
        let i = self.by_cluster_ip.get(&FrontendKey { proto, addr, port })?;
        self.frontends.get(*i as usize)
    }

    /// Whether `addr` may be a ClusterIP (cheap; false for nearly all other traffic).
    #[inline]
    pub fn may_be_cluster_ip(&self, addr: Ipv4Addr) -> bool {
        let ip = addr.to_bits();
        self.vip_bounds.is_some_and(|(lo, hi)| ip >= lo && ip <= hi)
    }

    /// Whether `addr` is a ClusterIP of any Service (any port): traffic to it on a
    /// port no Service has is rejected, as kube-proxy's nftables mode does.
    pub fn is_cluster_ip(&self, addr: Ipv4Addr) -> bool {
        self.may_be_cluster_ip(addr) && self.cluster_ips.contains(&addr)
    }

    /// Whether `addr`:`port` is an endpoint of some Service (in any condition).
    #[inline]
    pub fn is_endpoint(&self, proto: L4Proto, addr: Ipv4Addr, port: u16) -> bool {
        self.may_be_endpoint_port(port) && self.endpoints.contains(&(proto, Backend { addr, port }))
    }

    /// Whether some endpoint listens on `port` (cheap; false for most traffic). Also
    /// true for [`NO_PORT`] when there is any endpoint, so that an ICMP error, which
    /// may be about a flow to one, is looked at where a reply would be.
    #[inline]
    pub fn may_be_endpoint_port(&self, port: u16) -> bool {
        self.endpoint_ports.contains(port)
    }

    /// Whether any Service has a NodePort (cheap; keeps the NodePort lookup off the
    /// node's other traffic).
    #[inline]
    pub fn has_node_ports(&self) -> bool {
        self.node_port_bounds.is_some()
    }

    /// The frontend behind NodePort `port`.
    #[inline]
    pub fn node_port(&self, proto: L4Proto, port: u16) -> Option<&Frontend> {
        let (lo, hi) = self.node_port_bounds?;
        if port < lo || port > hi {
            return None;
        }
        let i = self.by_node_port.get(&(proto, port))?;
        self.frontends.get(*i as usize)
    }

    /// Where a new flow to `fe` from `origin` may go.
    #[inline]
    pub fn select(&self, fe: &Frontend, origin: Origin) -> Selection<'_> {
        let range = match origin {
            Origin::Pod => &fe.internal,
            Origin::External => &fe.external,
        };
        match self.backends.get(range.start as usize..range.end as usize) {
            Some(list) if !list.is_empty() => Selection::Endpoints(list),
            _ if fe.has_endpoints => Selection::Drop,
            _ => Selection::Reject,
        }
    }

    /// Whether `backend` is still one `fe` may send new flows to.
    pub fn serves(&self, fe: &Frontend, origin: Origin, backend: Backend) -> bool {
        matches!(self.select(fe, origin), Selection::Endpoints(l) if l.contains(&backend))
    }

    /// Every NodePort, in order (for `hybridway status`; not on the packet path).
    pub fn node_ports(&self) -> Vec<(L4Proto, u16)> {
        let mut ports: Vec<_> = self.by_node_port.keys().copied().collect();
        ports.sort_unstable_by_key(|&(proto, port)| (port, proto.code()));
        ports
    }

    /// Number of frontends (ClusterIP:port pairs).
    pub fn len(&self) -> usize {
        self.frontends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frontends.is_empty()
    }

    /// Service ports left out: SCTP, duplicates of an earlier ClusterIP:port.
    pub fn skipped(&self) -> usize {
        self.skipped
    }
}

/// A frontend before its endpoint lists join the table's flat array.
struct Part {
    fe: Frontend,
    node_port: Option<u16>,
    internal: Vec<Backend>,
    external: Vec<Backend>,
    /// Every endpoint of the port, usable or not (a superset of the two lists).
    listed: Vec<Backend>,
}

/// The frontends of one Service: one per ClusterIP and TCP/UDP port, with the
/// internal and external endpoint lists.
fn frontends_of(s: &ServiceSpec) -> Vec<Part> {
    let mut out = Vec::with_capacity(s.cluster_ips.len() * s.ports.len());
    for p in &s.ports {
        let Some(proto) = p.proto.l4() else { continue };
        let cluster = usable(&p.endpoints, false);
        let local = usable(&p.endpoints, true);
        let internal = if s.internal_local { &local } else { &cluster };
        let external = if s.external_local { &local } else { &cluster };
        let listed: Vec<Backend> = p
            .endpoints
            .iter()
            .map(|e| Backend {
                addr: e.addr,
                port: e.port,
            })
            .collect();
        for &addr in &s.cluster_ips {
            let fe = Frontend {
                key: FrontendKey {
                    proto,
                    addr,
                    port: p.port,
                },
                affinity: s.affinity,
                external_local: s.external_local,
                internal: 0..0,
                external: 0..0,
                has_endpoints: !cluster.is_empty(),
            };
            out.push(Part {
                fe,
                node_port: p.node_port,
                internal: internal.clone(),
                external: external.clone(),
                listed: listed.clone(),
            });
        }
    }
    out
}

/// The endpoints new flows may use (of this node only with `local_only`): the ready
/// ones, else the serving terminating ones. Duplicates (an address in two slices)
/// count once.
fn usable(endpoints: &[EndpointSpec], local_only: bool) -> Vec<Backend> {
    let pick = |want: fn(&EndpointSpec) -> bool| -> Vec<Backend> {
        let mut v: Vec<Backend> = endpoints
            .iter()
            .filter(|e| (!local_only || e.local) && want(e))
            .map(|e| Backend {
                addr: e.addr,
                port: e.port,
            })
            .collect();
        v.sort_unstable_by_key(|b| (b.addr, b.port));
        v.dedup();
        v
    };
    let ready = pick(|e| e.ready);
    if !ready.is_empty() {
        return ready;
    }
    pick(|e| e.serving && e.terminating)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 240, 10);

    fn ep(last: u8, ready: bool, serving: bool, terminating: bool, local: bool) -> EndpointSpec {
        EndpointSpec {
            addr: Ipv4Addr::new(198, 19, 128, last),
            port: 8080,
            ready,
            serving,
            terminating,
            local,
        }
    }

    fn svc(endpoints: Vec<EndpointSpec>) -> ServiceSpec {
        ServiceSpec {
            name: "default/web".into(),
            cluster_ips: vec![VIP],
            ports: vec![ServicePortSpec {
                proto: ServiceProto::Tcp,
                port: 80,
                node_port: Some(30080),
                endpoints,
            }],
            ..ServiceSpec::default()
        }
    }

    fn chosen(t: &ServiceTable, origin: Origin) -> Selection<'_> {
        let fe = t.cluster_ip(L4Proto::Tcp, VIP, 80).unwrap();
        t.select(fe, origin)
    }

    fn addrs(sel: Selection<'_>) -> Vec<u8> {
        match sel {
            Selection::Endpoints(l) => l.iter().map(|b| b.addr.octets()[3]).collect(),
            other => panic!("expected endpoints, got {other:?}"),
        }
    }

    #[test]
    fn ready_endpoints_only_and_terminating_as_fallback() {
        let t = ServiceTable::build(&[svc(vec![
            ep(1, true, true, false, false),
            ep(2, false, false, false, false),
            ep(3, false, true, true, false),
        ])]);
        assert_eq!(addrs(chosen(&t, Origin::Pod)), [1]);
        // Every pod terminating: the serving ones still take new flows.
        let t = ServiceTable::build(&[svc(vec![
            ep(2, false, false, true, false),
            ep(3, false, true, true, false),
        ])]);
        assert_eq!(addrs(chosen(&t, Origin::Pod)), [3]);
    }

    #[test]
    fn endpoints_in_any_condition_stay_known_for_their_flows_replies() {
        // Only 1 takes new flows; 2 (not ready) and 3 (terminating) may still have
        // flows opened while they were ready, whose replies must be recognised.
        let t = ServiceTable::build(&[svc(vec![
            ep(1, true, true, false, false),
            ep(2, false, false, false, false),
            ep(3, false, true, true, false),
        ])]);
        assert_eq!(addrs(chosen(&t, Origin::Pod)), [1]);
        for last in [1, 2, 3] {
            let addr = Ipv4Addr::new(198, 19, 128, last);
            assert!(t.is_endpoint(L4Proto::Tcp, addr, 8080), "{addr}");
        }
        assert!(!t.is_endpoint(L4Proto::Tcp, Ipv4Addr::new(198, 19, 128, 4), 8080));
        assert!(!t.is_endpoint(L4Proto::Udp, Ipv4Addr::new(198, 19, 128, 2), 8080));
    }

    #[test]
    fn no_usable_endpoint_rejects() {
        let t = ServiceTable::build(&[svc(vec![])]);
        assert_eq!(chosen(&t, Origin::Pod), Selection::Reject);
        let t = ServiceTable::build(&[svc(vec![ep(2, false, false, false, true)])]);
        assert_eq!(chosen(&t, Origin::Pod), Selection::Reject);
    }

    #[test]
    fn traffic_policies_local() {
        let endpoints = vec![
            ep(1, true, true, false, false),
            ep(2, true, true, false, true),
        ];
        let mut s = svc(endpoints.clone());
        s.internal_local = true;
        let t = ServiceTable::build(&[s]);
        assert_eq!(addrs(chosen(&t, Origin::Pod)), [2]);
        assert_eq!(addrs(chosen(&t, Origin::External)), [1, 2]);

        let mut s = svc(endpoints);
        s.external_local = true;
        let t = ServiceTable::build(&[s]);
        assert_eq!(addrs(chosen(&t, Origin::Pod)), [1, 2]);
        let fe = t.node_port(L4Proto::Tcp, 30080).unwrap();
        assert_eq!(addrs(t.select(fe, Origin::External)), [2]);

        // Local policy, no local endpoint but remote ones: drop, not reject.
        let mut s = svc(vec![ep(1, true, true, false, false)]);
        s.internal_local = true;
        let t = ServiceTable::build(&[s]);
        assert_eq!(chosen(&t, Origin::Pod), Selection::Drop);
    }

    #[test]
    fn lookups_miss_other_addresses_ports_and_protocols() {
        let mut s = svc(vec![ep(1, true, true, false, false)]);
        s.ports.push(ServicePortSpec {
            proto: ServiceProto::Sctp,
            port: 80,
            node_port: None,
            endpoints: vec![],
        });
        let t = ServiceTable::build(&[s]);
        assert_eq!(t.len(), 1);
        assert_eq!(t.skipped(), 1);
        assert!(t.cluster_ip(L4Proto::Udp, VIP, 80).is_none());
        assert!(t.cluster_ip(L4Proto::Tcp, VIP, 81).is_none());
        assert!(
            t.cluster_ip(L4Proto::Tcp, Ipv4Addr::new(198, 19, 1, 1), 80)
                .is_none()
        );
        assert!(t.is_cluster_ip(VIP));
        assert!(!t.is_cluster_ip(Ipv4Addr::new(198, 18, 240, 11)));
        assert!(t.node_port(L4Proto::Udp, 30080).is_none());
    }

    #[test]
    fn node_ports_are_listed_in_port_order() {
        let mut s = svc(vec![ep(1, true, true, false, false)]);
        for (proto, port, node_port) in [
            (ServiceProto::Udp, 53, 30053),
            (ServiceProto::Tcp, 53, 30053),
            (ServiceProto::Tcp, 81, 30000),
            (ServiceProto::Tcp, 82, 0),
        ] {
            s.ports.push(ServicePortSpec {
                proto,
                port,
                node_port: (node_port != 0).then_some(node_port),
                endpoints: vec![],
            });
        }
        let t = ServiceTable::build(&[s]);
        assert_eq!(
            t.node_ports(),
            [
                (L4Proto::Tcp, 30000),
                (L4Proto::Tcp, 30053),
                (L4Proto::Udp, 30053),
                (L4Proto::Tcp, 30080)
            ]
        );
        assert!(ServiceTable::default().node_ports().is_empty());
    }

    #[test]
    fn duplicate_endpoints_count_once_and_duplicate_frontends_keep_the_first() {
        let a = svc(vec![
            ep(1, true, true, false, false),
            ep(1, true, true, false, false),
        ]);
        let b = svc(vec![ep(9, true, true, false, false)]);
        let t = ServiceTable::build(&[a, b]);
        assert_eq!(addrs(chosen(&t, Origin::Pod)), [1]);
        assert_eq!(t.skipped(), 1);
    }
}
