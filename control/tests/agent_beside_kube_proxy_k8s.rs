//! hybridway beside the real kube-proxy on the same node (issue 14, coexistence): the
//! usual install keeps kube-proxy on every node, so the Services cluster
//! (`hybridway_lab::service_lab`) runs it on the hybrid client node h1 next to the
//! agent, and checks that neither breaks the other:
//!
//! - the Service scenarios of `common::services` from h1's client pod (ClusterIP
//!   with the endpoint on the same node, on the other hybrid node and on the
//!   flannel node; DNS over UDP and TCP; affinity; endpoint removal; rejection);
//! - an outside host reaches h1:NodePort (`externalTrafficPolicy: Cluster`) with
//!   the endpoint on the other hybrid node, on the flannel node and on h1 itself,
//!   and a `Local` LoadBalancer's NodePort and kube-proxy's health check of it;
//! - h1's own namespace reaches ClusterIPs with endpoints on every node
//!   (kube-proxy's DNAT and masquerade, then the agent's `hwhost`);
//! - kube-proxy stays healthy and syncs every change the test makes;
//! - pods and h1 itself reach the `kubernetes` Service (its endpoint, the API
//!   server, is outside the cluster: DNAT, then SNAT), also without kube-proxy.
//!
//! And who serves each path, as README's "With kube-proxy on the node" table says:
//! the node's conntrack holds a translated flow where kube-proxy's rules did it
//! (TUN: pods' ClusterIP flows; both backends: the host's ClusterIP flows), none
//! where the dataplane took the packets first (AF_XDP: pods' flows; both: NodePorts,
//! which the agent keeps out of conntrack on TUN).
//!
//! kube-proxy starts before the agent (as on a node where the network plugin comes
//! up last); the outside host is every node's default gateway. Five clusters in
//! one binary: TUN with kube-proxy in iptables and nftables mode, AF_XDP with
//! iptables (on AF_XDP only the host's own packets meet kube-proxy's rules, the
//! same in either mode); TUN and AF_XDP without kube-proxy, for the `kubernetes`
//! Service alone.
//!
//! Needs root (CI runs as root).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::services::{
    LB_HEALTH, LB_LOCAL, NP_CLOUD, NP_NEAR, NP_REMOTE, TCP_8080, WEB, WEB_CLOUD, WEB_LOCAL,
    build_with, run_scenarios_in, who_answers_at,
};
use hybridway_lab::kube_proxy::{ProxyMode, SYNC_DURATION};
use hybridway_lab::service_lab::{
    Backend, CLIENT, CLOUD, ClientKind, Extras, LOCAL, REMOTE_A, ServiceLab,
    local_load_balancer_yaml, node_port_service_yaml, slice_yaml,
};
use hybridway_lab::{Netns, wait_for};

/// The `kubernetes` Service's ClusterIP.
const KUBERNETES: Ipv4Addr = Ipv4Addr::new(198, 18, 240, 1);

#[test]
fn tun_node_beside_kube_proxy_iptables() {
    beside_kube_proxy(Backend::Tun, ProxyMode::Iptables);
}

#[test]
fn af_xdp_node_beside_kube_proxy_iptables() {
    beside_kube_proxy(Backend::AfXdp, ProxyMode::Iptables);
}

#[test]
fn tun_node_beside_kube_proxy_nftables() {
    beside_kube_proxy(Backend::Tun, ProxyMode::Nftables);
}

fn beside_kube_proxy(backend: Backend, mode: ProxyMode) {
    hybridway_lab::require_root();
    let kind = ClientKind::Hybridway(backend);
    let label = format!("{} beside kube-proxy-{}", kind.label(), mode.flag());
    let extras = Extras {
        kube_proxy_beside_agent: Some(mode),
        outside_host: true,
        snat: true,
        ..Extras::default()
    };
    let lab = build_with(kind, &extras);
    let synced_at_start = proxy(&lab).sync_totals(SYNC_DURATION).unwrap();

    // Pods → ClusterIP, DNS, affinity, endpoint removal, rejection.
    let mut lab = run_scenarios_in(lab);
    let client = lab.pod(CLIENT).unwrap();
    let pods_through_kube_proxy = backend == Backend::Tun;
    assert_eq!(
        proxy(&lab).translated_a_flow_to(WEB, 80).unwrap(),
        pods_through_kube_proxy,
        "{label}: kube-proxy's DNAT of the client pod's flows to {WEB}:80 (from {})",
        client.ip
    );

    // The node itself and pods → the `kubernetes` Service, whose endpoint is the API
    // server's own address outside the pod networks: the agent's own connection to
    // it goes this way in the usual install. A pod's flow is DNATed to the API
    // server and then masqueraded (its destination is outside the cluster): on
    // AF_XDP the reply is un-SNATed and then un-DNATed by the dataplane, on TUN by
    // kube-proxy's rules and the kernel's conntrack.
    let askers = [
        ("h1 itself", &lab.client_node().unwrap().ns),
        ("the client pod", &client.ns),
    ];
    for (who, ns) in askers {
        let code = wait_for(
            Duration::from_secs(30),
            &format!("{label}: {who} reaches the kubernetes Service"),
            || api_server_answers(ns),
        );
        assert!(
            code.len() == 3 && code != "000",
            "{label}: {who}: HTTP {code}"
        );
    }

    // The outside → h1:NodePort, endpoints on the other hybrid node, on the flannel
    // node and on h1 itself; `Local` with the endpoint on h1.
    let ep = |pod: &str| (lab.pod(pod).unwrap().ip, lab.node_of(pod).unwrap());
    let node_ports = [
        (NP_REMOTE, REMOTE_A),
        (NP_CLOUD, CLOUD),
        (NP_NEAR, LOCAL),
        (LB_LOCAL, LOCAL),
    ];
    for ((name, ip, node_port), pod) in node_ports {
        let manifest = if (name, ip, node_port) == LB_LOCAL {
            local_load_balancer_yaml(name, ip, (80, node_port, 8080), LB_HEALTH)
        } else {
            node_port_service_yaml(name, ip, 80, node_port, 8080)
        };
        lab.apply(&manifest).unwrap();
        lab.apply(&slice_yaml(name, TCP_8080, &[ep(pod)])).unwrap();
    }
    let outside = lab.outside_host().unwrap();
    let h1 = lab.client_node().unwrap();
    for ((_, _, node_port), want) in node_ports {
        // kube-proxy may program a new Service before the agent's watch delivers it;
        // until the dataplane has it, the node's kernel owns the port and kube-proxy's
        // rules answer (a flow they translate stays in conntrack). What is checked here
        // is who answers once both have the Service.
        wait_for(
            Duration::from_secs(30),
            &format!("{label}: h1's agent serves NodePort {node_port}"),
            || {
                lab.agent_serves_node_port(h1, "tcp", node_port)
                    .then_some(())
            },
        );
        let got = wait_for(
            Duration::from_secs(30),
            &format!("{label}: the outside reaches h1:{node_port}"),
            || who_answers_at(outside, h1.addr, node_port),
        );
        assert_eq!(got, want, "{label}: h1:{node_port}");
        assert!(
            !proxy(&lab)
                .translated_a_flow_to(h1.addr, node_port)
                .unwrap(),
            "{label}: kube-proxy's rules took h1:{node_port} from the dataplane"
        );
    }

    // A load balancer's health check of the `Local` Service: kube-proxy's own
    // server on the node, on a port of the NodePort range that no Service's
    // NodePort uses (the dataplane passes it on to the host).
    let health = wait_for(
        Duration::from_secs(30),
        &format!("{label}: kube-proxy's health check on h1:{LB_HEALTH}"),
        || {
            let out = outside
                .output(&format!(
                    "curl -sS --max-time 5 -w ' HTTP %{{http_code}}' http://{}:{LB_HEALTH}/",
                    h1.addr
                ))
                .ok()?;
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            text.contains("localEndpoints").then_some(text)
        },
    );
    assert!(
        health.ends_with("HTTP 200") && health.contains("\"localEndpoints\": 1"),
        "{label}: health check of {} on h1: {health}",
        LB_LOCAL.0
    );

    // The node itself → ClusterIP, endpoints on every node: kube-proxy's rules, on
    // both backends.
    for (ip, want) in [(WEB_LOCAL, LOCAL), (WEB, REMOTE_A), (WEB_CLOUD, CLOUD)] {
        let got = wait_for(
            Duration::from_secs(30),
            &format!("{label}: h1 itself reaches {ip}"),
            || who_answers_at(&h1.ns, ip, 80),
        );
        assert_eq!(got, want, "{label}: h1 itself to {ip}");
    }
    assert!(
        proxy(&lab).translated_a_flow_to(WEB, 80).unwrap(),
        "{label}: h1's own flow to {WEB}:80 was not kube-proxy's"
    );

    // kube-proxy kept up: it synced the changes above and its health check says its
    // rules are in sync with the last one.
    let proxy = lab.nodes[0].kube_proxy.as_mut().unwrap();
    let synced = proxy.sync_totals(SYNC_DURATION).unwrap();
    assert!(
        synced.count > synced_at_start.count,
        "{label}: kube-proxy synced nothing after it started ({synced:?}); log {}",
        proxy.log().display()
    );
    proxy
        .wait_healthy(Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{label}: {e}"));
}

/// Without kube-proxy, both backends: the client pod reaches the `kubernetes`
/// Service through the dataplane alone (DNAT to the API server, then SNAT; the
/// reply un-SNATed, then un-DNATed), the path every controller pod on a hybrid
/// node without kube-proxy depends on.
fn kubernetes_service_without_kube_proxy(backend: Backend) {
    hybridway_lab::require_root();
    let kind = ClientKind::Hybridway(backend);
    let extras = Extras {
        kube_proxy_beside_agent: None,
        outside_host: true,
        snat: true,
        // The Service flow's worker and the SNAT flow's may differ: two hand-offs.
        workers: 2,
        no_default_route: false,
    };
    let lab = build_with(kind, &extras);
    let client = lab.pod(CLIENT).unwrap();
    let label = format!("{} without kube-proxy", kind.label());
    let code = wait_for(
        Duration::from_secs(30),
        &format!("{label}: the client pod reaches the kubernetes Service"),
        || api_server_answers(&client.ns),
    );
    assert!(code.len() == 3, "{label}: HTTP {code}");
}

#[test]
fn tun_node_without_kube_proxy_pods_reach_the_kubernetes_service() {
    kubernetes_service_without_kube_proxy(Backend::Tun);
}

#[test]
fn af_xdp_node_without_kube_proxy_pods_reach_the_kubernetes_service() {
    kubernetes_service_without_kube_proxy(Backend::AfXdp);
}

/// The HTTP status of the API server's `/version` through the `kubernetes` Service
/// (its ClusterIP, the service CIDR's first address), asked from `ns`; `None` when
/// no TLS connection is made.
fn api_server_answers(ns: &Netns) -> Option<String> {
    let out = ns
        .output(&format!(
            "curl -sk --max-time 5 -o /dev/null -w '%{{http_code}}' https://{KUBERNETES}/version"
        ))
        .ok()?;
    let code = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && code != "000").then_some(code)
}

/// h1's kube-proxy.
fn proxy(lab: &ServiceLab) -> &hybridway_lab::kube_proxy::KubeProxy {
    lab.client_node().unwrap().kube_proxy.as_ref().unwrap()
}
