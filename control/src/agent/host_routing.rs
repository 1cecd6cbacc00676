//! How the kernel and the dataplane share a node: which routes, policy rules and
//! sysctls connect them, per backend. Pure (a plan of `ip` arguments), so what is
//! installed is unit-tested; [`KernelRoutes`] applies and undoes it.
//!
//! Both backends have a **host port** (`hwhost`, a TUN device): the kernel's door into
//! the dataplane. The dataplane writes into it what is the host's (a pod talking to
//! its node, a reply nobody masqueraded); the kernel routes into it what is the
//! dataplane's. On AF_XDP that is only the host's own packets to pods; the steering
//! program takes the rest off the NIC (VXLAN, the pod block, SNAT replies, NodePorts).
//!
//! **The node's own traffic to pods** (kubelet probes, webhooks, host-network
//! processes), both backends:
//!
//! ```text
//!  <block first address>/32 dev hwhost          the host's pod-network address
//!  <pod block> dev hwhost src <node>            local pods (AF_XDP; TUN: the veths)
//!  <peer block> dev hwhost src <block first address> mtu <pod MTU>
//!                                               every other node's block (peer_routes)
//!  <service CIDR> dev hwhost src <block first address>
//!                                               services.hostClusterIpRanges (no kube-proxy)
//! ```
//!
//! Towards other nodes the host speaks from its block's first address (no pod has
//! it; flannel puts the same address on `flannel.1`): the far node's anti-spoofing
//! accepts it (it is in this node's block), and the replies are routed back like any
//! pod traffic, over VXLAN or the underlay into this node's dataplane, which hands
//! them to the host. The node address would not do: a hybrid peer drops VXLAN whose
//! inner source is no pod of the sender, and its replies would leave plain.
//!
//! On the **TUN backend** the kernel keeps the NIC, so policy routing does what the
//! steering program does on AF_XDP, and the host port is also where the dataplane's
//! plain routed packets leave (the kernel forwards them out of the uplink):
//!
//! ```text
//!  pref  89  iif <uplink> to <node> ipproto udp dport <VXLAN> lookup local  the VXLAN socket
//!  pref  90  iif <uplink> to <pod block>                     lookup 26743  → hwhost
//!  pref  91  iif <uplink> to <node> ipproto tcp dport <SNAT>  lookup 26743  (NAT replies)
//!  pref  92  iif <uplink> to <node> ipproto udp dport <SNAT>  lookup 26743
//!  pref  93  iif <uplink> to <node> ipproto icmp              lookup 26743  (echo replies,
//!                                                                           errors; the rest
//!                                                                           comes back ToHost)
//!  pref  94  iif <uplink> to <node> ipproto tcp dport <NodePorts> lookup 26743
//!  pref  95  iif <uplink> to <node> ipproto udp dport <NodePorts> lookup 26743
//!  pref 100  lookup local        (moved from 0, so that 91-93 see the node's address first)
//!  pref 110  iif hwhost lookup 26745   underlay: other nodes' blocks via their address
//!  pref 111  iif hwhost lookup main    the outside, the node's own subnet
//!  pref 112  iif hwhost unreachable    never back into the dataplane
//!  pref 119  from <block first address> lookup main   the host's own (below)
//!  pref 120  from <pod block> lookup 26744   pods' traffic → hw0 (other local pods: main)
//! ```
//!
//! Early demux is off on this backend (`net.ipv4.{tcp,udp}_early_demux=0`): node
//! services on ports inside the SNAT range reach their sockets through the
//! dataplane (rules 91/92, then `ToHost`), and a packet that early demux has given
//! a socket is never forwarded.
//!
//! **NodePorts stay out of the kernel's conntrack** on this backend (nftables table
//! `ip hybridway`, chain `raw_prerouting` at the raw priority, so before any NAT):
//!
//! ```text
//!  iifname <uplink> ip daddr <node> tcp|udp dport <NodePorts> notrack   (rules 94/95)
//!  iifname hwhost   ip saddr <node> tcp|udp sport <NodePorts> notrack   (the replies)
//! ```
//!
//! With kube-proxy on the node (the usual install) its `PREROUTING` DNAT would take
//! NodePort packets before rules 94/95 are consulted, and route one for an endpoint
//! on this node through `hwhost`, the dataplane and `hw0` back into the kernel:
//! conntrack meets the flow twice, gives the second sight another source port, and
//! the pod's reply goes to a port nobody listens on. Untracked, the packets are out
//! of reach of NAT and take rules 94/95 into the dataplane, as on AF_XDP; their
//! replies leave through `hwhost` untracked too (tracked, a reply whose first packet
//! the kernel sees is invalid, and kube-proxy's `KUBE-FORWARD` drops invalid
//! packets). NodePort-range ports no Service uses still reach the host's sockets
//! (kube-proxy's load balancer health checks) through the dataplane.
//!
//! Packets the dataplane writes into `hwhost` may carry the node's address as their
//! source (masqueraded) or an outside one (ICMP to the host): `accept_local` and no
//! strict reverse-path filter on the device let the kernel take them.
//!
//! [`KernelRoutes`]: super::kernel_routes::KernelRoutes

use std::ops::RangeInclusive;

use hybridway_dataplane::port::Backend;
use hybridway_dataplane::wire::VXLAN_OVERHEAD_V4;

use super::config::{AgentConfig, ModeConfig};
use super::kernel_routes::{KernelRoutes, RouteArgs, RouteError, RuleArgs, args};
use super::table_builder::{BuildError, OffSubnetPeers, UplinkFacts, node_next_hop, reachable};

/// The TUN device every local pod's traffic crosses on the TUN backend.
pub const POD_TUN: &str = "hw0";
/// The host port's TUN device (both backends).
pub const HOST_TUN: &str = "hwhost";

/// Routing table: into the dataplane through the host port.
pub const TABLE_TO_DATAPLANE: u32 = 26743;
/// Routing table: pods' traffic into the pod TUN.
pub const TABLE_FROM_PODS: u32 = 26744;
/// Routing table: the dataplane's underlay packets to other nodes.
pub const TABLE_UNDERLAY: u32 = 26745;

/// What VXLAN adds to a packet (outer IPv4), as a route MTU.
const VXLAN_OVERHEAD: u16 = VXLAN_OVERHEAD_V4 as u16;

/// Where the kernel's `lookup local` rule goes so that the agent's rules precede it.
pub const LOCAL_RULE_PREF: u32 = 100;

/// What to install for one agent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostRouting {
    /// `ip address` arguments, added before the routes that name them as source.
    pub addresses: Vec<Vec<String>>,
    pub sysctls: Vec<(String, String)>,
    /// Set where the kernel has them (IPv6 may be compiled out or disabled).
    pub sysctls_if_present: Vec<(String, String)>,
    pub routes: Vec<RouteArgs>,
    pub rules: Vec<RuleArgs>,
    /// Move `lookup local` from priority 0 to this one first.
    pub move_local_rule: Option<u32>,
    /// nftables rules (`ip` family, before conntrack) whose packets stay untracked.
    pub notrack: Vec<String>,
}

/// The plan for `backend`; `snat_ports` is the range whose replies are the dataplane's.
pub fn plan(backend: Backend, cfg: &AgentConfig, snat_ports: &RangeInclusive<u16>) -> HostRouting {
    let block = cfg.pods.block.to_string();
    let mut p = HostRouting {
        sysctls: vec![
            (format!("net.ipv4.conf.{HOST_TUN}.rp_filter"), "0".into()),
            (format!("net.ipv4.conf.{HOST_TUN}.accept_local"), "1".into()),
        ],
        // The devices carry IPv4 only (the agent has no IPv6 configuration yet); the
        // kernel's own IPv6 chatter on them (router solicitations, MLD) would only
        // be counted as drops.
        sysctls_if_present: vec![(format!("net.ipv6.conf.{HOST_TUN}.disable_ipv6"), "1".into())],
        ..HostRouting::default()
    };
    let node = cfg.node.address;
    if let Some(host) = cfg.pods.host_addr() {
        p.addresses.push(args(&format!("{host}/32 dev {HOST_TUN}")));
        // Nodes without kube-proxy: the host's ClusterIP traffic to the dataplane.
        for range in &cfg.services.host_cluster_ip_ranges {
            p.routes
                .push(args(&format!("{range} dev {HOST_TUN} src {host}")));
        }
    }
    if backend != Backend::Tun {
        // The node address, not the pod-network one: kubelet probes come from the
        // node as pods expect.
        p.routes
            .push(args(&format!("{block} dev {HOST_TUN} src {node}")));
        return p;
    }
    p.sysctls.extend([
        ("net.ipv4.ip_forward".into(), "1".into()),
        // A packet for a node service inside the SNAT port range is routed through
        // the dataplane (pref 91/92) and handed back; early demux would attach the
        // service's socket to its second and later segments before routing, and the
        // kernel never forwards a packet that carries a socket: the handshake's ACK
        // would vanish.
        ("net.ipv4.tcp_early_demux".into(), "0".into()),
        ("net.ipv4.udp_early_demux".into(), "0".into()),
        // Replies from the outside reach pods through hw0 with outside sources.
        (format!("net.ipv4.conf.{POD_TUN}.rp_filter"), "0".into()),
    ]);
    p.sysctls_if_present
        .push((format!("net.ipv6.conf.{POD_TUN}.disable_ipv6"), "1".into()));
    let uplink = &cfg.uplink.interface;
    let (lo, hi) = (snat_ports.start(), snat_ports.end());
    let node_ports = cfg.services.node_port_range;
    let (np_lo, np_hi) = (node_ports.min, node_ports.max);
    let to_dp = format!("lookup {TABLE_TO_DATAPLANE}");
    let vxlan = cfg.vxlan.port;
    p.rules = [
        // VXLAN reaches the dataplane's UDP socket, whose reads are GRO trains of up
        // to 64 datagrams, even where the VXLAN port lies inside the SNAT range (8472
        // is in the default 1024-29999): rule 92 would send it through hwhost, one
        // datagram per read. A reply to a flow masqueraded to the VXLAN port arrives
        // there too and the pipeline un-NATs it all the same.
        format!("pref 89 iif {uplink} to {node} ipproto udp dport {vxlan} lookup local"),
        format!("pref 90 iif {uplink} to {block} {to_dp}"),
        format!("pref 91 iif {uplink} to {node} ipproto tcp dport {lo}-{hi} {to_dp}"),
        format!("pref 92 iif {uplink} to {node} ipproto udp dport {lo}-{hi} {to_dp}"),
        format!("pref 93 iif {uplink} to {node} ipproto icmp {to_dp}"),
        format!("pref 94 iif {uplink} to {node} ipproto tcp dport {np_lo}-{np_hi} {to_dp}"),
        format!("pref 95 iif {uplink} to {node} ipproto udp dport {np_lo}-{np_hi} {to_dp}"),
        format!("pref 110 iif {HOST_TUN} lookup {TABLE_UNDERLAY}"),
        format!("pref 111 iif {HOST_TUN} lookup main"),
        format!("pref 112 iif {HOST_TUN} unreachable"),
        format!("pref 120 from {block} lookup {TABLE_FROM_PODS}"),
    ]
    .iter()
    .map(|r| args(r))
    .collect();
    if let Some(host) = cfg.pods.host_addr() {
        // The host's pod-network address is inside the block: its packets are the
        // host's, routed by main (into hwhost towards other nodes), not a pod's.
        p.rules
            .push(args(&format!("pref 119 from {host} lookup main")));
    }
    p.move_local_rule = Some(LOCAL_RULE_PREF);
    p.notrack = ["tcp", "udp"]
        .iter()
        .flat_map(|proto| {
            [
                format!(
                    "iifname \"{uplink}\" ip daddr {node} {proto} dport {np_lo}-{np_hi} notrack"
                ),
                format!(
                    "iifname \"{HOST_TUN}\" ip saddr {node} {proto} sport {np_lo}-{np_hi} notrack"
                ),
            ]
        })
        .collect();
    let gateway = cfg.pods.gateway;
    p.routes.extend(
        [
            format!("default dev {HOST_TUN} table {TABLE_TO_DATAPLANE}"),
            // Pods on this node reach each other through the kernel (main: /32 per veth);
            // the gateway address is the dataplane's.
            format!("throw {block} table {TABLE_FROM_PODS}"),
            format!("{gateway}/32 dev {POD_TUN} table {TABLE_FROM_PODS}"),
            format!("default dev {POD_TUN} table {TABLE_FROM_PODS}"),
        ]
        .iter()
        .map(|r| args(r))
        .collect::<Vec<_>>(),
    );
    p
}

/// TUN backend, nodes reached by underlay: the kernel routes the dataplane's packets for other nodes'
/// blocks to the same next hops as the dataplane's own tables.
pub fn underlay_routes(
    backend: Backend,
    cfg: &AgentConfig,
    uplink: &UplinkFacts,
    off_subnet: OffSubnetPeers,
) -> Result<Vec<RouteArgs>, BuildError> {
    if backend != Backend::Tun {
        return Ok(Vec::new());
    }
    cfg.nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| n.mode_from(cfg.mode) == ModeConfig::Underlay)
        .filter(|(_, n)| off_subnet == OffSubnetPeers::Refuse || reachable(cfg, uplink, n))
        .map(|(index, n)| {
            let hop = node_next_hop(cfg, uplink, index, n)?;
            Ok(args(&format!(
                "{} via {hop} dev {} onlink table {TABLE_UNDERLAY}",
                n.pod_block, cfg.uplink.interface
            )))
        })
        .collect()
}

/// Both backends: the host reaches every other node's pods through the host port,
/// from its pod-network address, with the MTU pods have towards that node.
pub fn peer_routes(cfg: &AgentConfig, uplink_mtu: u16) -> Vec<RouteArgs> {
    let Some(host) = cfg.pods.host_addr() else {
        return Vec::new();
    };
    cfg.nodes
        .iter()
        .map(|n| {
            let routed =
                cfg.mode == ModeConfig::Underlay && n.mode_from(cfg.mode) == ModeConfig::Underlay;
            let mtu = if routed {
                uplink_mtu
            } else {
                uplink_mtu.saturating_sub(VXLAN_OVERHEAD)
            };
            args(&format!(
                "{} dev {HOST_TUN} src {host} mtu {mtu}",
                n.pod_block
            ))
        })
        .collect()
}

/// Whether `route` is one of [`peer_routes`] (main table, from the host's
/// pod-network address).
pub fn is_peer_route(route: &RouteArgs, cfg: &AgentConfig) -> bool {
    let Some(host) = cfg.pods.host_addr() else {
        return false;
    };
    // The MTU tells them from the ClusterIP routes of the same device and source.
    matches!(route.as_slice(), [_, dev, tun, src, addr, mtu, _]
        if dev == "dev" && tun == HOST_TUN && src == "src" && *addr == host.to_string() && mtu == "mtu")
}

/// Whether `route` is one of [`underlay_routes`].
pub fn is_underlay_route(route: &RouteArgs) -> bool {
    route.ends_with(&["table".to_string(), TABLE_UNDERLAY.to_string()])
}

/// Installs `plan` (remembered by `kernel`, undone when it is cleared).
pub fn apply(plan: &HostRouting, kernel: &mut KernelRoutes) -> Result<(), RouteError> {
    for a in &plan.addresses {
        kernel.add_address(a.clone())?;
    }
    for (key, value) in &plan.sysctls {
        kernel.sysctl(key, value)?;
    }
    for (key, value) in &plan.sysctls_if_present {
        if let Err(e) = kernel.sysctl(key, value) {
            tracing::debug!(error = %e, "optional sysctl not set");
        }
    }
    warn_on_strict_rp_filter();
    for r in &plan.routes {
        kernel.add_route(r.clone())?;
    }
    for r in &plan.rules {
        kernel.add_rule(r.clone())?;
    }
    if let Some(pref) = plan.move_local_rule {
        kernel.move_local_rule(pref)?;
    }
    if !plan.notrack.is_empty() {
        // A node without kube-proxy works without; one with it breaks NodePorts to
        // endpoints on this node: say so, and keep forwarding.
        if let Err(e) = kernel.set_notrack(&plan.notrack) {
            tracing::warn!(error = %e, "NodePort packets stay in the kernel's conntrack: with kube-proxy on this node, a NodePort whose endpoint is on this node does not answer (install nftables, the `nft` program)");
        }
    }
    Ok(())
}

/// `net.ipv4.conf.all.rp_filter = 1` overrides the host port's 0 (the kernel takes
/// the larger): packets the dataplane hands the host with outside sources are dropped.
fn warn_on_strict_rp_filter() {
    let all = std::fs::read_to_string("/proc/sys/net/ipv4/conf/all/rp_filter").unwrap_or_default();
    if all.trim() == "1" {
        tracing::warn!(
            "net.ipv4.conf.all.rp_filter is 1 (strict): ICMP and replies the dataplane hands to the host through {HOST_TUN} will be dropped by the kernel; set it to 0 or 2"
        );
    }
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
    use hybridway_dataplane::frame::PortId;
    use hybridway_dataplane::wire::MacAddr;
    use std::net::Ipv4Addr;

    fn cfg(mode: &str) -> AgentConfig {
        AgentConfig::from_yaml(&format!(
            r#"
node: {{name: node-a, address: 198.18.0.1}}
mode: {mode}
uplink: {{interface: eth0}}
pods: {{block: 198.19.1.0/24, gateway: 198.19.1.1}}
nodes:
  - {{name: node-b, address: 198.18.0.2, podBlock: 198.19.2.0/24, vtepMac: "02:00:00:00:00:0b"}}
  - {{name: node-c, address: 198.18.5.3, podBlock: 198.19.3.0/24, vtepMac: "02:00:00:00:00:0c"}}
"#
        ))
        .unwrap()
    }

    fn joined(v: &[Vec<String>]) -> Vec<String> {
        v.iter().map(|a| a.join(" ")).collect()
    }

    #[test]
    fn af_xdp_routes_the_pod_block_into_the_host_port_and_nothing_else() {
        let p = plan(Backend::AfXdp, &cfg("overlay"), &(61000..=65534));
        assert_eq!(
            joined(&p.routes),
            ["198.19.1.0/24 dev hwhost src 198.18.0.1"]
        );
        assert_eq!(joined(&p.addresses), ["198.19.1.0/32 dev hwhost"]);
        let mut c = cfg("overlay");
        c.services.host_cluster_ip_ranges = vec!["198.18.240.0/20".parse().unwrap()];
        let routes = joined(&plan(Backend::Tun, &c, &(61000..=65534)).routes);
        assert!(
            routes.contains(&"198.18.240.0/20 dev hwhost src 198.19.1.0".to_string()),
            "{routes:?}"
        );
        assert!(p.rules.is_empty());
        assert_eq!(p.move_local_rule, None);
        // The steering program takes NodePorts before netfilter could.
        assert!(p.notrack.is_empty());
        assert!(
            p.sysctls
                .contains(&("net.ipv4.conf.hwhost.accept_local".into(), "1".into()))
        );
    }

    #[test]
    fn tun_steers_the_dataplanes_traffic_with_rules_ahead_of_the_local_table() {
        let p = plan(Backend::Tun, &cfg("underlay"), &(61000..=65534));
        let rules = joined(&p.rules);
        assert!(
            rules.contains(
                &"pref 91 iif eth0 to 198.18.0.1 ipproto tcp dport 61000-65534 lookup 26743"
                    .to_string()
            ),
            "{rules:?}"
        );
        assert!(rules.contains(&"pref 120 from 198.19.1.0/24 lookup 26744".to_string()));
        assert!(rules.contains(&"pref 119 from 198.19.1.0 lookup main".to_string()));
        // VXLAN goes to the socket before the SNAT rules could take it.
        assert!(
            rules.contains(
                &"pref 89 iif eth0 to 198.18.0.1 ipproto udp dport 8472 lookup local".to_string()
            ),
            "{rules:?}"
        );
        // NodePorts from the uplink go to the dataplane.
        for proto in ["tcp", "udp"] {
            assert!(
                rules.iter().any(|r| r.contains(&format!(
                    "iif eth0 to 198.18.0.1 ipproto {proto} dport 30000-32767 lookup 26743"
                ))),
                "{rules:?}"
            );
        }
        // Every rule that must see the node's address comes before the local table.
        for r in &p.rules {
            let pref: u32 = r[1].parse().unwrap();
            if r.iter().any(|w| w == "198.18.0.1") {
                assert!(pref < LOCAL_RULE_PREF, "{r:?}");
            }
        }
        assert_eq!(p.move_local_rule, Some(LOCAL_RULE_PREF));
        // NodePorts and their replies stay out of conntrack, so kube-proxy's NAT never
        // takes them from the dataplane.
        assert_eq!(
            p.notrack,
            [
                "iifname \"eth0\" ip daddr 198.18.0.1 tcp dport 30000-32767 notrack",
                "iifname \"hwhost\" ip saddr 198.18.0.1 tcp sport 30000-32767 notrack",
                "iifname \"eth0\" ip daddr 198.18.0.1 udp dport 30000-32767 notrack",
                "iifname \"hwhost\" ip saddr 198.18.0.1 udp sport 30000-32767 notrack",
            ]
        );
        // Node services inside the SNAT range: their segments must stay forwardable.
        for key in ["net.ipv4.tcp_early_demux", "net.ipv4.udp_early_demux"] {
            assert!(p.sysctls.contains(&(key.into(), "0".into())), "{key}");
        }
        let routes = joined(&p.routes);
        assert!(routes.contains(&"throw 198.19.1.0/24 table 26744".to_string()));
        assert!(routes.contains(&"198.19.1.1/32 dev hw0 table 26744".to_string()));
        assert!(
            p.sysctls
                .contains(&("net.ipv4.ip_forward".into(), "1".into()))
        );
    }

    #[test]
    fn tun_underlay_routes_follow_the_dataplanes_next_hops() {
        let uplink = UplinkFacts {
            port: PortId(0),
            routed_port: PortId(2),
            host_port: Some(PortId(2)),
            mac: MacAddr::ZERO,
            mtu: 1500,
            prefix_len: 24,
            gateway: Some(Ipv4Addr::new(198, 18, 0, 254)),
        };
        let r = underlay_routes(
            Backend::Tun,
            &cfg("underlay"),
            &uplink,
            OffSubnetPeers::Refuse,
        )
        .unwrap();
        assert_eq!(
            joined(&r),
            [
                "198.19.2.0/24 via 198.18.0.2 dev eth0 onlink table 26745",
                "198.19.3.0/24 via 198.18.0.254 dev eth0 onlink table 26745",
            ]
        );
        assert!(r.iter().all(is_underlay_route));
        // Without a gateway the off-subnet node has no next hop: refused in file
        // mode, left out (and the rest kept) in Kubernetes mode.
        let no_gw = UplinkFacts {
            gateway: None,
            ..uplink
        };
        assert!(
            underlay_routes(
                Backend::Tun,
                &cfg("underlay"),
                &no_gw,
                OffSubnetPeers::Refuse
            )
            .is_err()
        );
        let r =
            underlay_routes(Backend::Tun, &cfg("underlay"), &no_gw, OffSubnetPeers::Skip).unwrap();
        assert_eq!(
            joined(&r),
            ["198.19.2.0/24 via 198.18.0.2 dev eth0 onlink table 26745"]
        );
        assert!(
            underlay_routes(
                Backend::Tun,
                &cfg("overlay"),
                &uplink,
                OffSubnetPeers::Refuse
            )
            .unwrap()
            .is_empty()
        );
        assert!(
            underlay_routes(
                Backend::AfXdp,
                &cfg("underlay"),
                &uplink,
                OffSubnetPeers::Refuse
            )
            .unwrap()
            .is_empty()
        );
    }

    #[test]
    fn the_host_reaches_other_nodes_pods_from_its_pod_network_address() {
        for (mode, mtu) in [("overlay", 1450), ("underlay", 1500)] {
            let c = cfg(mode);
            let r = peer_routes(&c, 1500);
            assert_eq!(
                joined(&r),
                [
                    format!("198.19.2.0/24 dev hwhost src 198.19.1.0 mtu {mtu}"),
                    format!("198.19.3.0/24 dev hwhost src 198.19.1.0 mtu {mtu}"),
                ]
            );
            assert!(r.iter().all(|x| is_peer_route(x, &c)));
            let mut with_cluster_ips = c.clone();
            with_cluster_ips.services.host_cluster_ip_ranges =
                vec!["198.18.240.0/20".parse().unwrap()];
            for backend in [Backend::AfXdp, Backend::Tun] {
                for other in plan(backend, &with_cluster_ips, &(61000..=65534)).routes {
                    assert!(!is_peer_route(&other, &c), "{other:?}");
                }
            }
        }
    }
}
