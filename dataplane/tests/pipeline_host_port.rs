//! The host port: the TUN device through which the kernel routes traffic into the
//! dataplane and receives what the pipeline says is the host's. On the TUN backend it
//! is also where plain routed packets leave (the kernel owns the NIC there).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod pipeline_support;

use hybridway_dataplane::frame::PortId;
use hybridway_dataplane::pipeline::Pipeline;
use hybridway_dataplane::tables::services::{
    EndpointSpec, ServicePortSpec, ServiceProto, ServiceSpec, ServiceTable,
};
use hybridway_dataplane::tables::{SnatConfig, Tables};
use hybridway_dataplane::verdict::{DropReason, Verdict};
use pipeline_support::*;

const HOST: PortId = PortId(9);
/// Frames the kernel writes into the host port reach the pipeline addressed to the
/// uplink's MAC (the TUN port synthesises that header).
const KERNEL_MAC: hybridway_dataplane::wire::MacAddr =
    hybridway_dataplane::wire::MacAddr([0x02, 0, 0, 0, 0x77, 0x77]);

/// The TUN backend: VXLAN on the uplink (the UDP socket), everything plain through
/// the host port.
fn tun_backend(snat: bool) -> Tables {
    let mut t = tables(snat);
    t.node.routed_port = HOST;
    t.node.host_port = Some(HOST);
    t
}

/// AF_XDP with a host port: routed packets still leave on the uplink.
fn xdp_with_host_port(snat: bool) -> Tables {
    let mut t = tables(snat);
    t.node.host_port = Some(HOST);
    t
}

fn from_kernel(f: Vec<u8>) -> Vec<u8> {
    with_macs(f, KERNEL_MAC, UPLINK_MAC)
}

#[test]
fn on_the_tun_backend_plain_packets_leave_through_the_host_port_and_vxlan_through_the_uplink() {
    let t = tun_backend(false);
    let mut p = Pipeline::new(0, &SnatConfig::default());
    let (v, out) = run(
        &mut p,
        &t,
        &udp4(POD1, UNDERLAY_POD, 1, 2, 64, b"u"),
        POD1_PORT,
    );
    assert_eq!(v, Verdict::Forward { port: HOST });
    assert_eq!(out[22], 63, "TTL decremented");
    assert_checksums(&out, 0);
    let (v, _) = run(&mut p, &t, &udp4(POD1, OUTSIDE, 1, 2, 64, b"o"), POD1_PORT);
    assert_eq!(v, Verdict::Forward { port: HOST });
    let (v, out) = run(
        &mut p,
        &t,
        &udp4(POD1, REMOTE_POD, 1, 2, 64, b"v"),
        POD1_PORT,
    );
    assert_eq!(v, Verdict::Forward { port: UPLINK });
    assert_eq!(u16_at(&out, 36), 8472, "VXLAN");
}

#[test]
fn on_the_tun_backend_masquerading_leaves_through_the_host_port_and_replies_come_back_from_it() {
    let t = tun_backend(true);
    let mut p = Pipeline::new(0, &SnatConfig::default());
    let syn = tcp4(POD1, OUTSIDE, 40000, 443, 64, true, b"");
    let (v, out) = run(&mut p, &t, &syn, POD1_PORT);
    assert_eq!(v, Verdict::Forward { port: HOST });
    assert_eq!(ip4(&out, 26), NODE, "masqueraded to the node address");
    let nat_port = u16_at(&out, 34);

    // The kernel routes the reply (to node:nat_port) into the host port.
    let reply = from_kernel(tcp4(OUTSIDE, NODE, 443, nat_port, 60, false, b"ok"));
    let (v, back) = run(&mut p, &t, &reply, HOST);
    assert_eq!(v, Verdict::Forward { port: POD1_PORT });
    assert_eq!(ip4(&back, 30), POD1);
    assert_eq!(u16_at(&back, 36), 40000);
    assert_eq!(&back[0..6], &POD1_MAC.0);
    assert_checksums(&back, 0);
}

#[test]
fn from_the_host_port_packets_for_local_pods_are_delivered_and_the_rest_is_the_hosts() {
    for t in [tun_backend(false), xdp_with_host_port(true)] {
        let mut p = Pipeline::new(0, &SnatConfig::default());
        // Underlay traffic (or the host's own) for a local pod.
        let f = from_kernel(udp4(UNDERLAY_POD, POD2, 5, 6, 64, b"in"));
        let (v, out) = run(&mut p, &t, &f, HOST);
        assert_eq!(v, Verdict::Forward { port: POD2_PORT });
        assert_eq!(&out[0..6], &POD2_MAC.0);
        assert_eq!(&out[6..12], &GATEWAY_MAC.0);
        // A ping to the node address that is not a reply to a masqueraded flow.
        let f = from_kernel(ping4(OUTSIDE, NODE, 61_234, 64, true, b"mine"));
        assert_eq!(run(&mut p, &t, &f, HOST).0, Verdict::ToHost);
        // An address of the pod block that no pod has: the kernel routed it here, so
        // giving it back would loop.
        let f = from_kernel(udp4(UNDERLAY_POD, GATEWAY, 5, 6, 64, b"gw"));
        assert_eq!(
            run(&mut p, &t, &f, HOST).0,
            Verdict::Drop(DropReason::HostLoop)
        );
        // The same off the wire is the host's business.
        let f = with_macs(
            udp4(UNDERLAY_POD, GATEWAY, 5, 6, 64, b"gw"),
            ROUTER_MAC,
            UPLINK_MAC,
        );
        assert_eq!(run(&mut p, &t, &f, UPLINK).0, Verdict::ToHost);
    }
}

#[test]
fn a_pods_packets_to_the_node_go_to_the_host_and_errors_about_them_come_from_the_node() {
    let t = xdp_with_host_port(true);
    let mut p = Pipeline::new(0, &SnatConfig::default());
    let (v, out) = run(
        &mut p,
        &t,
        &tcp4(POD1, NODE, 40000, 10250, 64, true, b""),
        POD1_PORT,
    );
    assert_eq!(v, Verdict::ToHost);
    assert_eq!(ip4(&out, 30), NODE, "unchanged");
    // An expiring packet from the host port is answered as from the uplink: the
    // node's address, the uplink's MAC.
    let f = from_kernel(udp4(UNDERLAY_POD, POD1, 5, 6, 1, b"ttl"));
    let (v, err) = run(&mut p, &t, &f, HOST);
    assert_eq!(v, Verdict::Reply);
    assert_eq!(ip4(&err, 26), NODE);
    assert_eq!(&err[6..12], &UPLINK_MAC.0);
}

// ---- The node's own traffic to pods on other nodes (issue 14) ----

#[test]
fn the_host_reaches_a_pod_on_another_node_over_vxlan_and_the_reply_comes_back_to_it() {
    for t in [tun_backend(true), xdp_with_host_port(true)] {
        let mut p = Pipeline::new(0, &SnatConfig::default());
        let syn = from_kernel(tcp4(HOST_POD_ADDR, REMOTE_POD, 45000, 8080, 64, true, b""));
        let (v, out) = run(&mut p, &t, &syn, HOST);
        assert_eq!(v, Verdict::Forward { port: UPLINK });
        let inner_l3 = 14 + 20 + 8 + 8 + 14;
        assert_eq!(ip4(&out, 30), REMOTE_NODE, "outer destination");
        assert_eq!(ip4(&out, inner_l3 + 12), HOST_POD_ADDR, "source kept");
        assert_checksums(&out, 50);

        let reply = with_macs(
            tcp4(REMOTE_POD, HOST_POD_ADDR, 8080, 45000, 64, false, b"ok"),
            REMOTE_VTEP_MAC,
            VTEP_MAC,
        );
        let (v, _) = run(&mut p, &t, &vxlan_in(REMOTE_NODE, 1, 0x08, &reply), UPLINK);
        assert_eq!(v, Verdict::ToHost);
        assert_eq!(p.snat().len(), 0);
    }
}

#[test]
fn the_host_reaches_a_pod_on_an_underlay_node_and_the_reply_comes_back_to_it() {
    let t = tun_backend(false);
    let mut p = Pipeline::new(0, &SnatConfig::default());
    let ping = from_kernel(ping4(HOST_POD_ADDR, UNDERLAY_POD, 7, 64, false, b"p"));
    let (v, out) = run(&mut p, &t, &ping, HOST);
    assert_eq!(v, Verdict::Forward { port: HOST }, "routed by the kernel");
    assert_eq!(&out[0..6], &UNDERLAY_NODE_MAC.0);
    // The reply, to the pod block, comes through the host port too (rule 90).
    let pong = from_kernel(ping4(UNDERLAY_POD, HOST_POD_ADDR, 7, 64, true, b"p"));
    let (v, _) = run(&mut p, &t, &pong, HOST);
    assert_eq!(v, Verdict::ToHost);
}

#[test]
fn only_the_hosts_own_address_reaches_other_nodes_pods_through_the_host_port() {
    let t = tun_backend(false);
    let mut p = Pipeline::new(0, &SnatConfig::default());
    for src in [OUTSIDE, NODE] {
        let f = from_kernel(udp4(src, REMOTE_POD, 1, 2, 64, b"x"));
        let (v, _) = run(&mut p, &t, &f, HOST);
        assert_eq!(v, Verdict::Drop(DropReason::HostLoop), "{src}");
    }
    // Off the wire, the host's pod-network address as a source is not the host.
    let f = from_kernel(udp4(HOST_POD_ADDR, REMOTE_POD, 1, 2, 64, b"x"));
    let (v, _) = run(&mut p, &t, &f, UPLINK);
    assert_eq!(v, Verdict::ToHost);
}

#[test]
fn a_pod_reaches_the_hosts_pod_network_address_through_the_host() {
    let t = xdp_with_host_port(false);
    let mut p = Pipeline::new(0, &SnatConfig::default());
    let (v, _) = run(
        &mut p,
        &t,
        &udp4(POD1, HOST_POD_ADDR, 1, 2, 64, b"x"),
        POD1_PORT,
    );
    assert_eq!(v, Verdict::ToHost);
}

// ---- The node's own traffic to ClusterIPs, without kube-proxy (issue 14) ----

const VIP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(198, 18, 240, 10);

fn with_service(t: Tables, endpoint: std::net::Ipv4Addr) -> Tables {
    with_spec(t, service_spec(endpoint))
}

fn with_spec(mut t: Tables, spec: ServiceSpec) -> Tables {
    t.services = std::sync::Arc::new(ServiceTable::build(&[spec]));
    t
}

/// VIP:80 (TCP) to `endpoint`:8080.
fn service_spec(endpoint: std::net::Ipv4Addr) -> ServiceSpec {
    ServiceSpec {
        name: "default/web".into(),
        cluster_ips: vec![VIP],
        ports: vec![ServicePortSpec {
            proto: ServiceProto::Tcp,
            port: 80,
            node_port: None,
            endpoints: vec![EndpointSpec {
                addr: endpoint,
                port: 8080,
                ready: true,
                serving: true,
                terminating: false,
                local: false,
            }],
        }],
        ..ServiceSpec::default()
    }
}

#[test]
fn the_host_reaches_a_cluster_ip_whose_endpoint_is_on_another_node() {
    for t in [
        with_service(tun_backend(false), REMOTE_POD),
        with_service(xdp_with_host_port(false), REMOTE_POD),
    ] {
        let mut p = Pipeline::new(0, &SnatConfig::default());
        let syn = from_kernel(tcp4(HOST_POD_ADDR, VIP, 45000, 80, 64, true, b""));
        let (v, out) = run(&mut p, &t, &syn, HOST);
        assert_eq!(v, Verdict::Forward { port: UPLINK });
        let inner_l3 = 14 + 20 + 8 + 8 + 14;
        assert_eq!(ip4(&out, inner_l3 + 12), HOST_POD_ADDR);
        assert_eq!(ip4(&out, inner_l3 + 16), REMOTE_POD, "DNATed");
        assert_checksums(&out, 50);

        let reply = with_macs(
            tcp4(REMOTE_POD, HOST_POD_ADDR, 8080, 45000, 64, false, b"ok"),
            REMOTE_VTEP_MAC,
            VTEP_MAC,
        );
        let (v, back) = run(&mut p, &t, &vxlan_in(REMOTE_NODE, 1, 0x08, &reply), UPLINK);
        assert_eq!(v, Verdict::ToHost);
        assert_eq!(ip4(&back, 26), VIP, "the reply comes from the ClusterIP");
        assert_eq!(u16_at(&back, 34), 80);
        assert_checksums(&back, 0);
    }
}

#[test]
fn the_host_reaches_a_cluster_ip_whose_endpoint_is_a_local_pod() {
    let t = with_service(xdp_with_host_port(false), POD2);
    let mut p = Pipeline::new(0, &SnatConfig::default());
    let syn = from_kernel(tcp4(HOST_POD_ADDR, VIP, 45000, 80, 64, true, b""));
    let (v, out) = run(&mut p, &t, &syn, HOST);
    assert_eq!(v, Verdict::Forward { port: POD2_PORT });
    assert_eq!(ip4(&out, 30), POD2);
    let reply = with_macs(
        tcp4(POD2, HOST_POD_ADDR, 8080, 45000, 64, false, b"ok"),
        POD2_MAC,
        GATEWAY_MAC,
    );
    let (v, back) = run(&mut p, &t, &reply, POD2_PORT);
    assert_eq!(v, Verdict::ToHost);
    assert_eq!(ip4(&back, 26), VIP);
    assert_checksums(&back, 0);
}

// ---- NodePorts on the TUN backend without a gateway (np15): the kernel routes the
// replies (rule 111, `lookup main`: its on-link route too), the dataplane only has
// to hand them to it ----

#[test]
fn on_the_tun_backend_without_a_gateway_node_port_replies_go_to_the_kernel() {
    const NODE_PORT: u16 = 30080;
    for local in [false, true] {
        let mut spec = service_spec(POD2);
        spec.ports[0].node_port = Some(NODE_PORT);
        spec.ports[0].endpoints[0].local = true;
        spec.external_local = local;
        let t = without_gateway(with_spec(tun_backend(true), spec));
        let mut p = Pipeline::new(0, &SnatConfig::default());
        // Rules 94/95 route the client's packet into the host port.
        let syn = from_kernel(tcp4(OUTSIDE, NODE, 40000, NODE_PORT, 64, true, b""));
        let (v, out) = run(&mut p, &t, &syn, HOST);
        assert_eq!(v, Verdict::Forward { port: POD2_PORT });
        assert_eq!(ip4(&out, 30), POD2);
        let reply = with_macs(
            tcp4(
                POD2,
                ip4(&out, 26),
                8080,
                u16_at(&out, 34),
                64,
                false,
                b"ok",
            ),
            POD2_MAC,
            GATEWAY_MAC,
        );
        let (v, back) = run(&mut p, &t, &reply, POD2_PORT);
        assert_eq!(v, Verdict::Forward { port: HOST }, "local {local}");
        assert_eq!((ip4(&back, 26), u16_at(&back, 34)), (NODE, NODE_PORT));
        assert_eq!((ip4(&back, 30), u16_at(&back, 36)), (OUTSIDE, 40000));
        assert_checksums(&back, 0);
        assert_eq!(p.snat().len(), 0, "not masqueraded again");
    }
}
