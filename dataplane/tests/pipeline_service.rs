//! Kubernetes Services in the pipeline: a pod's packets to ClusterIP:port are sent to
//! an endpoint and the replies come back from ClusterIP:port; no endpoint rejects;
//! hairpin, traffic policy, session affinity, endpoint removal and worker hand-off.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod pipeline_support;

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use hybridway_dataplane::frame::PortId;
use hybridway_dataplane::pipeline::Pipeline;
use hybridway_dataplane::tables::services::{
    EndpointSpec, ServicePortSpec, ServiceProto, ServiceSpec, ServiceTable,
};
use hybridway_dataplane::tables::{SnatConfig, Tables};
use hybridway_dataplane::time::Now;
use hybridway_dataplane::verdict::{DropReason, Verdict};
use pipeline_support::*;

const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 240, 10);
const REMOTE_POD_2: Ipv4Addr = Ipv4Addr::new(198, 19, 2, 21);

fn endpoint(addr: Ipv4Addr, local: bool) -> EndpointSpec {
    EndpointSpec {
        addr,
        port: 8080,
        ready: true,
        serving: true,
        terminating: false,
        local,
    }
}

/// A Service on VIP port 80 (TCP and UDP) with `endpoints` on port 8080.
fn service(endpoints: &[EndpointSpec]) -> ServiceSpec {
    let port = |proto| ServicePortSpec {
        proto,
        port: 80,
        node_port: None,
        endpoints: endpoints.to_vec(),
    };
    ServiceSpec {
        name: "default/web".into(),
        cluster_ips: vec![VIP],
        ports: vec![port(ServiceProto::Tcp), port(ServiceProto::Udp)],
        ..ServiceSpec::default()
    }
}

fn with_services(mut t: Tables, specs: &[ServiceSpec]) -> Tables {
    t.services = Arc::new(ServiceTable::build(specs));
    t.generation += 1;
    t
}

fn pipeline() -> Pipeline {
    Pipeline::new(0, &SnatConfig::default())
}

fn run_at(p: &mut Pipeline, t: &Tables, f: &[u8], port: PortId, now: Now) -> (Verdict, Vec<u8>) {
    let mut buf = Buf::new();
    let mut frame = buf.frame(f, port);
    let v = p.process(&mut frame, t, now);
    (v, frame.data().to_vec())
}

/// Source and destination address and port of the IPv4 packet at `l3`.
fn tuple(f: &[u8], l3: usize) -> (Ipv4Addr, u16, Ipv4Addr, u16) {
    let l4 = l3 + usize::from(f[l3] & 0x0f) * 4;
    (
        ip4(f, l3 + 12),
        u16_at(f, l4),
        ip4(f, l3 + 16),
        u16_at(f, l4 + 2),
    )
}

/// The packet the receiver of `out` sends back: addresses and ports swapped, from
/// `mac` to the gateway.
fn answer(out: &[u8], l3: usize, tcp: bool) -> Vec<u8> {
    let (src, sport, dst, dport) = tuple(out, l3);
    let f = if tcp {
        tcp4(dst, src, dport, sport, 64, false, b"reply")
    } else {
        udp4(dst, src, dport, sport, 64, b"reply")
    };
    with_macs(f, POD2_MAC, GATEWAY_MAC)
}

#[test]
fn tcp_to_a_cluster_ip_reaches_a_local_endpoint_and_the_reply_comes_from_the_cluster_ip() {
    let t = with_services(tables(false), &[service(&[endpoint(POD2, true)])]);
    let mut p = pipeline();
    let syn = tcp4(POD1, VIP, 40000, 80, 64, true, b"");
    let (v, out) = run(&mut p, &t, &syn, POD1_PORT);
    assert_eq!(v, Verdict::Forward { port: POD2_PORT });
    assert_eq!(tuple(&out, 14), (POD1, 40000, POD2, 8080));
    assert_eq!(&out[0..6], &POD2_MAC.0);
    assert_checksums(&out, 0);

    let (v, back) = run(&mut p, &t, &answer(&out, 14, true), POD2_PORT);
    assert_eq!(v, Verdict::Forward { port: POD1_PORT });
    assert_eq!(tuple(&back, 14), (VIP, 80, POD1, 40000));
    assert_checksums(&back, 0);
    assert_eq!(p.service_flows(), 1);
}

#[test]
fn udp_to_a_cluster_ip_reaches_a_remote_endpoint_over_vxlan_and_back() {
    let t = with_services(tables(false), &[service(&[endpoint(REMOTE_POD, false)])]);
    let mut p = pipeline();
    let query = udp4(POD1, VIP, 5353, 80, 64, b"query");
    let (v, out) = run(&mut p, &t, &query, POD1_PORT);
    assert_eq!(v, Verdict::Forward { port: UPLINK });
    // Outer Ethernet + IPv4 + UDP + VXLAN, then the inner frame.
    let inner_l3 = 14 + 20 + 8 + 8 + 14;
    assert_eq!(tuple(&out, inner_l3), (POD1, 5353, REMOTE_POD, 8080));
    assert_checksums(&out, 50);

    let reply = with_macs(
        udp4(REMOTE_POD, POD1, 8080, 5353, 64, b"answer"),
        REMOTE_VTEP_MAC,
        VTEP_MAC,
    );
    let (v, back) = run(&mut p, &t, &vxlan_in(REMOTE_NODE, 1, 0x08, &reply), UPLINK);
    assert_eq!(v, Verdict::Forward { port: POD1_PORT });
    assert_eq!(tuple(&back, 14), (VIP, 80, POD1, 5353));
    assert_checksums(&back, 0);
}

#[test]
fn without_endpoints_the_client_hears_port_unreachable_from_the_cluster_ip() {
    let t = with_services(tables(false), &[service(&[])]);
    let mut p = pipeline();
    for f in [
        tcp4(POD1, VIP, 40000, 80, 64, true, b""),
        // A ClusterIP on a port no Service has.
        udp4(POD1, VIP, 40000, 81, 64, b""),
    ] {
        let (v, out) = run(&mut p, &t, &f, POD1_PORT);
        assert_eq!(v, Verdict::Refuse(DropReason::ServiceNoEndpoints));
        assert_eq!(ip4(&out, 26), VIP);
        assert_eq!(ip4(&out, 30), POD1);
        assert_eq!((out[34], out[35]), (3, 3), "ICMP port unreachable");
        assert_checksums(&out, 0);
    }
}

#[test]
fn local_traffic_policy_without_a_local_endpoint_drops() {
    let mut s = service(&[endpoint(REMOTE_POD, false)]);
    s.internal_local = true;
    let t = with_services(tables(false), &[s]);
    let (v, _) = run(
        &mut pipeline(),
        &t,
        &tcp4(POD1, VIP, 40000, 80, 64, true, b""),
        POD1_PORT,
    );
    assert_eq!(v, Verdict::Drop(DropReason::ServiceNoLocalEndpoints));
}

#[test]
fn a_pod_reaches_itself_through_its_service_from_the_gateway() {
    let t = with_services(tables(false), &[service(&[endpoint(POD1, true)])]);
    let mut p = pipeline();
    let (v, out) = run(
        &mut p,
        &t,
        &tcp4(POD1, VIP, 40000, 80, 64, true, b""),
        POD1_PORT,
    );
    assert_eq!(v, Verdict::Forward { port: POD1_PORT });
    assert_eq!(tuple(&out, 14), (GATEWAY, 40000, POD1, 8080));
    assert_checksums(&out, 0);

    let reply = with_macs(
        tcp4(POD1, GATEWAY, 8080, 40000, 64, false, b"hi"),
        POD1_MAC,
        GATEWAY_MAC,
    );
    let (v, back) = run(&mut p, &t, &reply, POD1_PORT);
    assert_eq!(v, Verdict::Forward { port: POD1_PORT });
    assert_eq!(tuple(&back, 14), (VIP, 80, POD1, 40000));
    assert_checksums(&back, 0);
}

#[test]
fn on_the_tun_backend_local_endpoints_see_the_gateway_so_replies_cross_the_dataplane() {
    let mut t = with_services(tables(false), &[service(&[endpoint(POD2, true)])]);
    let host = PortId(9);
    t.node.host_port = Some(host);
    t.node.routed_port = host;
    let mut p = pipeline();
    let syn = tcp4(POD1, VIP, 40000, 80, 64, true, b"");
    let (v, out) = run(&mut p, &t, &syn, POD1_PORT);
    assert_eq!(v, Verdict::Forward { port: POD2_PORT });
    assert_eq!(tuple(&out, 14), (GATEWAY, 40000, POD2, 8080));
    assert_checksums(&out, 0);
    let (v, back) = run(&mut p, &t, &answer(&out, 14, true), POD2_PORT);
    assert_eq!(v, Verdict::Forward { port: POD1_PORT });
    assert_eq!(tuple(&back, 14), (VIP, 80, POD1, 40000));
    assert_checksums(&back, 0);
}

/// Endpoint chosen for a new TCP flow from `sport`.
fn endpoint_of(p: &mut Pipeline, t: &Tables, sport: u16, now: Now) -> Ipv4Addr {
    let syn = tcp4(POD1, VIP, sport, 80, 64, true, b"");
    let (v, out) = run_at(p, t, &syn, POD1_PORT, now);
    assert!(matches!(v, Verdict::Forward { .. }), "{v:?}");
    let l3 = if v == (Verdict::Forward { port: UPLINK }) {
        64
    } else {
        14
    };
    tuple(&out, l3).2
}

#[test]
fn flows_spread_over_endpoints_unless_client_ip_affinity_holds() {
    let eps = [endpoint(REMOTE_POD, false), endpoint(REMOTE_POD_2, false)];
    let t = with_services(tables(false), &[service(&eps)]);
    let mut p = pipeline();
    let spread: Vec<_> = (0..32)
        .map(|i| endpoint_of(&mut p, &t, 40000 + i, T0))
        .collect();
    let used: HashSet<_> = spread.iter().collect();
    assert_eq!(used.len(), 2, "flows spread over both endpoints");

    let mut s = service(&eps);
    s.affinity = Some(Duration::from_secs(60));
    let t = with_services(tables(false), &[s]);
    let mut p = pipeline();
    let first = endpoint_of(&mut p, &t, 45000, T0);
    for i in 1..32 {
        assert_eq!(endpoint_of(&mut p, &t, 45000 + i, T0), first);
    }
    // After the timeout the next flow is placed afresh (and sticks from then on): a
    // source port whose hash picks the other endpoint now gets it.
    let other = spread.iter().position(|e| *e != first).unwrap() as u16;
    let later = Now(T0.millis() + 61_000);
    let (_, out) = run_at(
        &mut p,
        &t,
        &tcp4(POD1, VIP, 40000 + other, 80, 64, true, b""),
        POD1_PORT,
        later,
    );
    assert_ne!(tuple(&out, 64).2, first);
}

#[test]
fn a_removed_endpoint_gets_no_new_flows_tcp_flows_finish_udp_flows_move() {
    let both = [endpoint(REMOTE_POD, false), endpoint(REMOTE_POD_2, false)];
    let t = with_services(tables(false), &[service(&both)]);
    let mut p = pipeline();
    // A TCP and a UDP flow that went to REMOTE_POD.
    let tcp_port = (40000..)
        .find(|s| endpoint_of(&mut p, &t, *s, T0) == REMOTE_POD)
        .unwrap();
    let udp_port = (50000..)
        .find(|s| {
            let (_, out) = run(&mut p, &t, &udp4(POD1, VIP, *s, 80, 64, b"q"), POD1_PORT);
            tuple(&out, 64).2 == REMOTE_POD
        })
        .unwrap();

    let t = with_services(t, &[service(&both[1..])]);
    let data = tcp4(POD1, VIP, tcp_port, 80, 64, false, b"more");
    let (_, out) = run(&mut p, &t, &data, POD1_PORT);
    assert_eq!(tuple(&out, 64).2, REMOTE_POD, "the TCP flow finishes");
    let (_, out) = run(
        &mut p,
        &t,
        &udp4(POD1, VIP, udp_port, 80, 64, b"q"),
        POD1_PORT,
    );
    assert_eq!(tuple(&out, 64).2, REMOTE_POD_2, "the UDP flow moves");
    for i in 0..16 {
        assert_eq!(endpoint_of(&mut p, &t, 60000 + i, T0), REMOTE_POD_2);
    }
}

#[test]
fn flows_expire_and_are_swept() {
    let t = with_services(tables(false), &[service(&[endpoint(POD2, true)])]);
    let mut p = pipeline();
    run(&mut p, &t, &udp4(POD1, VIP, 5353, 80, 64, b"q"), POD1_PORT);
    assert_eq!(p.service_flows(), 1);
    p.sweep_services(Now(T0.millis() + 299_000));
    assert_eq!(p.service_flows(), 1);
    p.sweep_services(Now(T0.millis() + 301_000));
    assert_eq!(p.service_flows(), 0);
    // A late reply is not translated any more.
    let (_, back) = run(
        &mut p,
        &t,
        &with_macs(
            udp4(POD2, POD1, 8080, 5353, 64, b"late"),
            POD2_MAC,
            GATEWAY_MAC,
        ),
        POD2_PORT,
    );
    assert_eq!(tuple(&back, 14).0, POD2);
}

#[test]
fn flows_and_replies_are_kept_by_the_worker_that_owns_the_client() {
    let t = with_services(tables(false), &[service(&[endpoint(POD2, true)])]);
    let config = SnatConfig {
        workers: 4,
        ..SnatConfig::default()
    };
    let mut workers: Vec<Pipeline> = (0..4).map(|w| Pipeline::new(w, &config)).collect();
    let syn = tcp4(POD1, VIP, 40000, 80, 64, true, b"");
    let mut owner = None;
    for p in &mut workers {
        let (v, out) = run(p, &t, &syn, POD1_PORT);
        match v {
            Verdict::HandOff { worker } => owner = Some(worker),
            Verdict::Forward { port } => {
                assert_eq!(port, POD2_PORT);
                let owner_here = p.worker();
                // The reply arriving at any other worker is handed to this one.
                let reply = answer(&out, 14, true);
                for q in 0..4u16 {
                    if q == owner_here {
                        continue;
                    }
                    let (v, _) = run(&mut Pipeline::new(q, &config), &t, &reply, POD2_PORT);
                    assert_eq!(v, Verdict::HandOff { worker: owner_here });
                }
                let (v, back) = run(p, &t, &reply, POD2_PORT);
                assert_eq!(v, Verdict::Forward { port: POD1_PORT });
                assert_eq!(tuple(&back, 14).0, VIP);
            }
            other => panic!("{other:?}"),
        }
    }
    let owner = owner.unwrap();
    assert_eq!(workers[usize::from(owner)].service_flows(), 1);
}

#[test]
fn traffic_that_is_not_for_a_service_is_untouched() {
    let t = with_services(tables(false), &[service(&[endpoint(POD2, true)])]);
    let mut p = pipeline();
    let f = udp4(POD1, REMOTE_POD, 5353, 80, 64, b"q");
    let (v, out) = run(&mut p, &t, &f, POD1_PORT);
    assert_eq!(v, Verdict::Forward { port: UPLINK });
    assert_eq!(tuple(&out, 64), (POD1, 5353, REMOTE_POD, 80));
    assert_eq!(p.service_flows(), 0);
}

// ---- NodePorts (issue 14): from the uplink to an endpoint and back ----

const NODE_PORT: u16 = 30080;

/// `service` with NodePort 30080 on both ports and the given external policy.
fn node_port_service(endpoints: &[EndpointSpec], external_local: bool) -> ServiceSpec {
    let mut s = service(endpoints);
    for p in &mut s.ports {
        p.node_port = Some(NODE_PORT);
    }
    s.external_local = external_local;
    s
}

/// A client's packet from outside to the node's NodePort, as the uplink delivers it.
fn from_outside(f: Vec<u8>) -> Vec<u8> {
    with_macs(f, ROUTER_MAC, UPLINK_MAC)
}

#[test]
fn node_port_cluster_policy_reaches_a_local_endpoint_from_the_gateway_and_replies_leave_from_the_node()
 {
    // SNAT on: the reply, now from the node's address, must not be masqueraded again.
    let t = with_services(
        tables(true),
        &[node_port_service(&[endpoint(POD2, true)], false)],
    );
    let mut p = pipeline();
    let syn = from_outside(tcp4(OUTSIDE, NODE, 40000, NODE_PORT, 64, true, b""));
    let (v, out) = run(&mut p, &t, &syn, UPLINK);
    assert_eq!(v, Verdict::Forward { port: POD2_PORT });
    assert_eq!(tuple(&out, 14), (GATEWAY, 40000, POD2, 8080));
    assert_eq!(&out[0..6], &POD2_MAC.0);
    assert_eq!(out[22], 63, "TTL decremented");
    assert_checksums(&out, 0);

    let (v, back) = run(&mut p, &t, &answer(&out, 14, true), POD2_PORT);
    assert_eq!(v, Verdict::Forward { port: UPLINK });
    assert_eq!(tuple(&back, 14), (NODE, NODE_PORT, OUTSIDE, 40000));
    assert_eq!(&back[0..6], &ROUTER_MAC.0);
    assert_checksums(&back, 0);
    assert_eq!(p.snat().len(), 0, "the reply was not masqueraded");

    // The client's next segment finds the flow.
    let ack = from_outside(tcp4(OUTSIDE, NODE, 40000, NODE_PORT, 64, false, b"get"));
    let (v, out) = run(&mut p, &t, &ack, UPLINK);
    assert_eq!(v, Verdict::Forward { port: POD2_PORT });
    assert_eq!(tuple(&out, 14), (GATEWAY, 40000, POD2, 8080));
    assert_eq!(p.service_flows(), 1);
}

#[test]
fn node_port_cluster_policy_reaches_a_remote_endpoint_over_vxlan_and_the_reply_comes_back() {
    let t = with_services(
        tables(false),
        &[node_port_service(&[endpoint(REMOTE_POD, false)], false)],
    );
    let mut p = pipeline();
    let q = from_outside(udp4(OUTSIDE, NODE, 5353, NODE_PORT, 64, b"query"));
    let (v, out) = run(&mut p, &t, &q, UPLINK);
    assert_eq!(v, Verdict::Forward { port: UPLINK });
    let inner_l3 = 14 + 20 + 8 + 8 + 14;
    assert_eq!(ip4(&out, 14 + 16), REMOTE_NODE, "outer destination");
    assert_eq!(tuple(&out, inner_l3), (GATEWAY, 5353, REMOTE_POD, 8080));
    assert_checksums(&out, 50);

    // The endpoint answers the gateway; its node encapsulates it back to us.
    let reply = with_macs(
        udp4(REMOTE_POD, GATEWAY, 8080, 5353, 64, b"answer"),
        REMOTE_VTEP_MAC,
        VTEP_MAC,
    );
    let (v, back) = run(&mut p, &t, &vxlan_in(REMOTE_NODE, 1, 0x08, &reply), UPLINK);
    assert_eq!(v, Verdict::Forward { port: UPLINK });
    assert_eq!(tuple(&back, 14), (NODE, NODE_PORT, OUTSIDE, 5353));
    assert_eq!(&back[0..6], &ROUTER_MAC.0);
    assert_checksums(&back, 0);
}

#[test]
fn node_port_reply_from_an_underlay_endpoint_to_the_gateway_goes_back_to_the_client() {
    let t = with_services(
        tables(false),
        &[node_port_service(&[endpoint(UNDERLAY_POD, false)], false)],
    );
    let mut p = pipeline();
    let q = from_outside(udp4(OUTSIDE, NODE, 5353, NODE_PORT, 64, b"query"));
    let (v, out) = run(&mut p, &t, &q, UPLINK);
    assert_eq!(v, Verdict::Forward { port: UPLINK });
    assert_eq!(&out[0..6], &UNDERLAY_NODE_MAC.0);
    assert_eq!(tuple(&out, 14), (GATEWAY, 5353, UNDERLAY_POD, 8080));
    let reply = from_outside(udp4(UNDERLAY_POD, GATEWAY, 8080, 5353, 64, b"answer"));
    let (v, back) = run(&mut p, &t, &reply, UPLINK);
    assert_eq!(v, Verdict::Forward { port: UPLINK });
    assert_eq!(tuple(&back, 14), (NODE, NODE_PORT, OUTSIDE, 5353));
    assert_checksums(&back, 0);
}

#[test]
fn node_port_local_policy_keeps_the_client_address_and_drops_without_a_local_endpoint() {
    let t = with_services(
        tables(true),
        &[node_port_service(
            &[endpoint(POD2, true), endpoint(REMOTE_POD, false)],
            true,
        )],
    );
    let mut p = pipeline();
    for sport in 40000..40016 {
        let syn = from_outside(tcp4(OUTSIDE, NODE, sport, NODE_PORT, 64, true, b""));
        let (v, out) = run(&mut p, &t, &syn, UPLINK);
        assert_eq!(
            v,
            Verdict::Forward { port: POD2_PORT },
            "only the local one"
        );
        assert_eq!(tuple(&out, 14), (OUTSIDE, sport, POD2, 8080));
        let (v, back) = run(&mut p, &t, &answer(&out, 14, true), POD2_PORT);
        assert_eq!(v, Verdict::Forward { port: UPLINK });
        assert_eq!(tuple(&back, 14), (NODE, NODE_PORT, OUTSIDE, sport));
    }
    assert_eq!(p.snat().len(), 0);

    let t = with_services(
        tables(false),
        &[node_port_service(&[endpoint(REMOTE_POD, false)], true)],
    );
    let syn = from_outside(tcp4(OUTSIDE, NODE, 40000, NODE_PORT, 64, true, b""));
    let (v, _) = run(&mut pipeline(), &t, &syn, UPLINK);
    assert_eq!(v, Verdict::Drop(DropReason::ServiceNoLocalEndpoints));
}

#[test]
fn node_port_without_endpoints_answers_port_unreachable_from_the_node() {
    let t = with_services(tables(false), &[node_port_service(&[], false)]);
    let syn = from_outside(tcp4(OUTSIDE, NODE, 40000, NODE_PORT, 64, true, b""));
    let (v, out) = run(&mut pipeline(), &t, &syn, UPLINK);
    assert_eq!(v, Verdict::Refuse(DropReason::ServiceNoEndpoints));
    assert_eq!(ip4(&out, 26), NODE);
    assert_eq!(ip4(&out, 30), OUTSIDE);
    assert_eq!((out[34], out[35]), (3, 3), "ICMP port unreachable");
}

#[test]
fn two_clients_with_one_port_to_one_endpoint_get_distinct_masquerade_ports() {
    let t = with_services(
        tables(false),
        &[node_port_service(&[endpoint(POD2, true)], false)],
    );
    let other = Ipv4Addr::new(198, 18, 100, 8);
    let mut p = pipeline();
    let mut seen = Vec::new();
    for client in [OUTSIDE, other] {
        let syn = from_outside(tcp4(client, NODE, 40000, NODE_PORT, 64, true, b""));
        let (v, out) = run(&mut p, &t, &syn, UPLINK);
        assert_eq!(v, Verdict::Forward { port: POD2_PORT });
        let (src, sport, ..) = tuple(&out, 14);
        assert_eq!(src, GATEWAY);
        seen.push((client, sport, answer(&out, 14, true)));
    }
    assert_eq!((seen[0].1, seen[1].1), (40000, 40001));
    for (client, _, reply) in &seen {
        let (v, back) = run(&mut p, &t, reply, POD2_PORT);
        assert_eq!(v, Verdict::Forward { port: UPLINK });
        assert_eq!(tuple(&back, 14), (NODE, NODE_PORT, *client, 40000));
    }
}

#[test]
fn node_port_flows_are_kept_by_the_worker_that_owns_the_address_replies_go_to() {
    let eps = [endpoint(REMOTE_POD, false), endpoint(REMOTE_POD_2, false)];
    let t = with_services(tables(false), &[node_port_service(&eps, false)]);
    let config = SnatConfig {
        workers: 4,
        ..SnatConfig::default()
    };
    let mut workers: Vec<Pipeline> = (0..4).map(|w| Pipeline::new(w, &config)).collect();
    let q = from_outside(udp4(OUTSIDE, NODE, 5353, NODE_PORT, 64, b"query"));
    let inner_l3 = 14 + 20 + 8 + 8 + 14;
    let mut handed = None;
    let mut done = None;
    for p in &mut workers {
        let (v, out) = run(p, &t, &q, UPLINK);
        match v {
            Verdict::HandOff { worker } => handed = Some(worker),
            Verdict::Forward { port: UPLINK } => {
                done = Some((p.worker(), tuple(&out, inner_l3)));
            }
            other => panic!("{other:?}"),
        }
    }
    let (owner, (src, sport, endpoint, eport)) = done.unwrap();
    assert_eq!(handed, Some(owner));
    assert_eq!((src, sport, eport), (GATEWAY, 5353, 8080));
    // The endpoint's reply (decapsulated, so not handed off) is translated there.
    let reply = with_macs(
        udp4(endpoint, GATEWAY, 8080, 5353, 64, b"answer"),
        REMOTE_VTEP_MAC,
        VTEP_MAC,
    );
    let (v, back) = run(
        &mut workers[usize::from(owner)],
        &t,
        &vxlan_in(REMOTE_NODE, 1, 0x08, &reply),
        UPLINK,
    );
    assert_eq!(v, Verdict::Forward { port: UPLINK });
    assert_eq!(tuple(&back, 14), (NODE, NODE_PORT, OUTSIDE, 5353));
}

#[test]
fn traffic_to_the_node_on_other_ports_stays_the_hosts() {
    let t = with_services(
        tables(true),
        &[node_port_service(&[endpoint(POD2, true)], false)],
    );
    let mut p = pipeline();
    for f in [
        tcp4(OUTSIDE, NODE, 40000, 22, 64, true, b""),
        udp4(OUTSIDE, NODE, 40000, NODE_PORT + 1, 64, b""),
        // The gateway address from outside, not a reply to any flow.
        udp4(OUTSIDE, GATEWAY, 40000, 5353, 64, b""),
    ] {
        let (v, _) = run(&mut p, &t, &from_outside(f), UPLINK);
        assert_eq!(v, Verdict::ToHost);
    }
    assert_eq!(p.service_flows(), 0);
}
