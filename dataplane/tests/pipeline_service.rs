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
use hybridway_dataplane::tables::{RouteTarget, SnatConfig, Tables};
use hybridway_dataplane::time::Now;
use hybridway_dataplane::verdict::{DropReason, Verdict};
use hybridway_dataplane::wire::{MacAddr, checksum};
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
fn node_port_flows_are_kept_by_the_worker_that_owns_the_client_and_replies_find_it() {
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
    assert_eq!((src, eport), (GATEWAY, 8080));
    // The endpoint's reply, decapsulated on any worker, is translated by the owner.
    let reply = with_macs(
        udp4(endpoint, GATEWAY, 8080, sport, 64, b"answer"),
        REMOTE_VTEP_MAC,
        VTEP_MAC,
    );
    let reply = vxlan_in(REMOTE_NODE, 1, 0x08, &reply);
    for arrives_on in 0..4 {
        let (v, back) = follow(&mut workers, &t, &reply, UPLINK, arrives_on);
        assert_eq!(v, Verdict::Forward { port: UPLINK });
        assert_eq!(tuple(&back, 14), (NODE, NODE_PORT, OUTSIDE, 5353));
    }
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

// ---- Several workers: whichever worker a reply arrives on, the flow's owner
// translates it (issue 14) ----

/// Pipelines for `n` workers.
fn workers(n: u16) -> Vec<Pipeline> {
    let config = SnatConfig {
        workers: n,
        ..SnatConfig::default()
    };
    (0..n).map(|w| Pipeline::new(w, &config)).collect()
}

/// Runs `f`, received on `port`, on worker `arrives_on`, and follows a hand-off as
/// the worker loop does: the owner runs its pipeline on the frame as it arrived,
/// which it must not hand off again.
fn follow(
    workers: &mut [Pipeline],
    t: &Tables,
    f: &[u8],
    port: PortId,
    arrives_on: usize,
) -> (Verdict, Vec<u8>) {
    let (v, out) = run(&mut workers[arrives_on], t, f, port);
    let Verdict::HandOff { worker } = v else {
        return (v, out);
    };
    assert_ne!(usize::from(worker), arrives_on);
    assert_eq!(out, f, "a hand-off carries the frame as it arrived");
    let (v, out) = run(&mut workers[usize::from(worker)], t, &out, port);
    assert!(!matches!(v, Verdict::HandOff { .. }), "handed off twice");
    (v, out)
}

/// The worker that keeps the flow `f` starts (the others hand it there), and the
/// frame as that worker sent it on.
fn start_flow(workers: &mut [Pipeline], t: &Tables, f: &[u8], port: PortId) -> (usize, Vec<u8>) {
    let mut kept = None;
    let mut handed = Vec::new();
    for (i, p) in workers.iter_mut().enumerate() {
        match run(p, t, f, port) {
            (Verdict::HandOff { worker }, _) => handed.push(usize::from(worker)),
            (Verdict::Forward { .. }, out) => kept = Some((i, out)),
            (other, _) => panic!("{other:?}"),
        }
    }
    let (owner, out) = kept.expect("no worker kept the flow");
    assert!(handed.iter().all(|&w| w == owner), "{handed:?} vs {owner}");
    // Only the owner tracks it: start it there alone.
    for (i, p) in workers.iter_mut().enumerate() {
        assert_eq!(p.service_flows(), usize::from(i == owner));
    }
    (owner, out)
}

#[test]
fn a_remote_endpoints_reply_decapsulated_by_another_worker_comes_from_the_cluster_ip() {
    for eps in [REMOTE_POD, REMOTE_POD_2] {
        let t = with_services(tables(false), &[service(&[endpoint(eps, false)])]);
        let mut w = workers(2);
        let query = udp4(POD1, VIP, 5353, 80, 64, b"query");
        let (owner, out) = start_flow(&mut w, &t, &query, POD1_PORT);
        let inner_l3 = 14 + 20 + 8 + 8 + 14;
        assert_eq!(tuple(&out, inner_l3), (POD1, 5353, eps, 8080));
        let reply = with_macs(
            udp4(eps, POD1, 8080, 5353, 64, b"answer"),
            REMOTE_VTEP_MAC,
            VTEP_MAC,
        );
        let reply = vxlan_in(REMOTE_NODE, 1, 0x08, &reply);
        for arrives_on in [1 - owner, owner] {
            let (v, back) = follow(&mut w, &t, &reply, UPLINK, arrives_on);
            assert_eq!(v, Verdict::Forward { port: POD1_PORT }, "on {arrives_on}");
            assert_eq!(tuple(&back, 14), (VIP, 80, POD1, 5353));
            assert_checksums(&back, 0);
        }
    }
}

#[test]
fn a_spoofed_reply_handed_off_is_still_refused_by_the_owner() {
    let t = with_services(tables(false), &[service(&[endpoint(REMOTE_POD, false)])]);
    let mut w = workers(2);
    let query = udp4(POD1, VIP, 5353, 80, 64, b"query");
    let (owner, _) = start_flow(&mut w, &t, &query, POD1_PORT);
    // The endpoint's reply from a node that does not own the endpoint's block.
    let mut t2 = t.clone();
    let impostor = Ipv4Addr::new(198, 18, 0, 9);
    t2.known_vteps = [REMOTE_NODE, impostor].into();
    let reply = with_macs(
        udp4(REMOTE_POD, POD1, 8080, 5353, 64, b"answer"),
        REMOTE_VTEP_MAC,
        VTEP_MAC,
    );
    let (v, _) = follow(
        &mut w,
        &t2,
        &vxlan_in(impostor, 1, 0x08, &reply),
        UPLINK,
        1 - owner,
    );
    assert_eq!(v, Verdict::Drop(DropReason::VxlanSpoofedSource));
}

#[test]
fn the_hosts_own_flow_to_a_remote_endpoint_gets_its_cluster_ip_back_on_any_worker() {
    let mut t = with_services(tables(false), &[service(&[endpoint(REMOTE_POD, false)])]);
    let host = PortId(9);
    t.node.host_port = Some(host);
    let mut w = workers(2);
    let syn = with_macs(
        tcp4(HOST_POD_ADDR, VIP, 41000, 80, 64, true, b""),
        ROUTER_MAC,
        UPLINK_MAC,
    );
    let (owner, out) = start_flow(&mut w, &t, &syn, host);
    let inner_l3 = 14 + 20 + 8 + 8 + 14;
    assert_eq!(
        tuple(&out, inner_l3),
        (HOST_POD_ADDR, 41000, REMOTE_POD, 8080)
    );
    let reply = with_macs(
        tcp4(REMOTE_POD, HOST_POD_ADDR, 8080, 41000, 64, false, b"reply"),
        REMOTE_VTEP_MAC,
        VTEP_MAC,
    );
    let reply = vxlan_in(REMOTE_NODE, 1, 0x08, &reply);
    for arrives_on in [1 - owner, owner] {
        let (v, back) = follow(&mut w, &t, &reply, UPLINK, arrives_on);
        assert_eq!(v, Verdict::ToHost, "on {arrives_on}");
        assert_eq!(tuple(&back, 14), (VIP, 80, HOST_POD_ADDR, 41000));
    }
}

#[test]
fn a_node_port_reply_decapsulated_by_another_worker_leaves_from_the_node_port() {
    let t = with_services(
        tables(false),
        &[node_port_service(&[endpoint(REMOTE_POD, false)], false)],
    );
    let mut w = workers(2);
    let inner_l3 = 14 + 20 + 8 + 8 + 14;
    // Client ports the owner keeps and ports it must move.
    for sport in 40000..40004 {
        let q = from_outside(udp4(OUTSIDE, NODE, sport, NODE_PORT, 64, b"query"));
        let (owner, out) = start_flow_again(&mut w, &t, &q, UPLINK);
        let (src, mport, ..) = tuple(&out, inner_l3);
        assert_eq!(src, GATEWAY);
        let reply = with_macs(
            udp4(REMOTE_POD, GATEWAY, 8080, mport, 64, b"answer"),
            REMOTE_VTEP_MAC,
            VTEP_MAC,
        );
        let reply = vxlan_in(REMOTE_NODE, 1, 0x08, &reply);
        let back = (NODE, NODE_PORT, OUTSIDE, sport);
        let to = (UPLINK, ROUTER_MAC);
        reply_on_each_worker(&mut w, &t, &reply, UPLINK, owner, to, back);
    }
}

/// Feeds `reply`, received on `port`, to the worker that does not keep its flow
/// and to the `owner`: both times it leaves on `to`, to MAC `to_mac`, as `back`
/// (source, source port, destination, destination port).
fn reply_on_each_worker(
    w: &mut [Pipeline],
    t: &Tables,
    reply: &[u8],
    port: PortId,
    owner: usize,
    (to, to_mac): (PortId, MacAddr),
    back: (Ipv4Addr, u16, Ipv4Addr, u16),
) {
    for arrives_on in [1 - owner, owner] {
        let (v, out) = follow(w, t, reply, port, arrives_on);
        assert_eq!(v, Verdict::Forward { port: to }, "{back:?} on {arrives_on}");
        assert_eq!(tuple(&out, 14), back);
        assert_eq!(&out[0..6], &to_mac.0, "{back:?} on {arrives_on}");
        assert_checksums(&out, 0);
    }
}

/// [`start_flow`] on workers that may already keep other flows: arriving on the
/// first worker, handed off from there if it must be.
fn start_flow_again(
    workers: &mut [Pipeline],
    t: &Tables,
    f: &[u8],
    port: PortId,
) -> (usize, Vec<u8>) {
    let (v, out) = follow(workers, t, f, port, 0);
    assert!(matches!(v, Verdict::Forward { .. }), "{v:?}");
    let owner = match run(&mut workers[0], t, f, port).0 {
        Verdict::HandOff { worker } => usize::from(worker),
        _ => 0,
    };
    (owner, out)
}

/// A third local pod, on its own port, whose address another worker owns than
/// POD1's with two workers.
const POD3: Ipv4Addr = Ipv4Addr::new(198, 19, 1, 12);
const POD3_PORT: PortId = PortId(3);
const POD3_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0xbb, 0x12]);

/// `t` with POD3, on the TUN backend (the kernel forwards between local pods, so
/// every flow to a local endpoint is masqueraded to the gateway).
fn tun_with_pod3(t: Tables) -> Tables {
    let pod3 = RouteTarget::LocalPod {
        port: POD3_PORT,
        mac: POD3_MAC,
    };
    let routes: Vec<_> = t.routes.iter().map(|(p, r)| (*p, *r)).collect();
    let more = ("198.19.1.12/32".parse().unwrap(), pod3);
    let host = PortId(9);
    let mut t = with_routes(t, routes.into_iter().chain([more]));
    t.node.host_port = Some(host);
    t.node.routed_port = host;
    t
}

/// Flows masqueraded to the gateway: to a local endpoint on the TUN backend (POD3,
/// whose address another worker owns than the client's) and hairpin (POD1 itself).
#[test]
fn masqueraded_flows_are_found_by_the_reply_on_any_worker() {
    let tun = tun_with_pod3(with_services(
        tables(false),
        &[service(&[endpoint(POD3, true)])],
    ));
    let hairpin = with_services(tables(false), &[service(&[endpoint(POD1, true)])]);
    for (t, ep, ep_mac, ep_port) in [
        (tun, POD3, POD3_MAC, POD3_PORT),
        (hairpin, POD1, POD1_MAC, POD1_PORT),
    ] {
        let mut w = workers(2);
        let mut ports = HashSet::new();
        for sport in 40000..40006 {
            let syn = tcp4(POD1, VIP, sport, 80, 64, true, b"");
            let (owner, out) = start_flow_again(&mut w, &t, &syn, POD1_PORT);
            let (src, mport, dst, dport) = tuple(&out, 14);
            assert_eq!((src, dst, dport), (GATEWAY, ep, 8080));
            assert!(ports.insert(mport), "gateway port {mport} given twice");
            let reply = with_macs(
                tcp4(ep, GATEWAY, 8080, mport, 64, false, b"reply"),
                ep_mac,
                GATEWAY_MAC,
            );
            for arrives_on in [1 - owner, owner] {
                let (v, back) = follow(&mut w, &t, &reply, ep_port, arrives_on);
                let to_client = Verdict::Forward { port: POD1_PORT };
                assert_eq!(v, to_client, "{ep}: {sport} on {arrives_on}");
                assert_eq!(tuple(&back, 14), (VIP, 80, POD1, sport));
                assert_checksums(&back, 0);
            }
        }
        // The owner keeps the client's port where it can.
        assert!(ports.iter().any(|p| (40000..40006).contains(p)));
    }
}

/// A pod that is a Service's endpoint on a port, opening its own connection from
/// that port to the outside (an NTP server syncing from port 123): the packet may
/// be a reply to a NodePort flow (`Local`: the client is outside) or a new
/// masqueraded flow, and both stages must name the same worker, or the second
/// hand-off is dropped.
#[test]
fn an_endpoints_own_masqueraded_flow_from_its_service_port_is_handed_off_once() {
    let t = with_services(tables(true), &[service(&[endpoint(POD2, true)])]);
    let mut w = workers(2);
    for dport in 120..136 {
        let f = udp4(POD2, OUTSIDE, 8080, dport, 64, b"ntp");
        for arrives_on in 0..2 {
            let (v, out) = follow(&mut w, &t, &f, POD2_PORT, arrives_on);
            assert_eq!(v, Verdict::Forward { port: UPLINK }, "to {dport}");
            assert_eq!(tuple(&out, 14).0, NODE, "masqueraded");
        }
    }
}

#[test]
fn a_node_port_local_flow_is_kept_where_its_outside_client_is_and_replies_find_it() {
    let t = with_services(
        tables(true),
        &[node_port_service(&[endpoint(POD2, true)], true)],
    );
    let mut w = workers(2);
    for sport in 40000..40008 {
        let syn = from_outside(tcp4(OUTSIDE, NODE, sport, NODE_PORT, 64, true, b""));
        let (owner, out) = start_flow_again(&mut w, &t, &syn, UPLINK);
        assert_eq!(tuple(&out, 14), (OUTSIDE, sport, POD2, 8080));
        let reply = answer(&out, 14, true);
        let back = (NODE, NODE_PORT, OUTSIDE, sport);
        let to = (UPLINK, ROUTER_MAC);
        reply_on_each_worker(&mut w, &t, &reply, POD2_PORT, owner, to, back);
    }
    assert_eq!(
        w.iter().map(|p| p.snat().len()).sum::<usize>(),
        0,
        "no reply masqueraded"
    );
}

// ---- NodePort clients without a gateway: replies go back to the MAC the client's
// packets came from (np15) ----

/// A client on the uplink's own subnet, reached on-link (no router between).
const ON_LINK_CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 77);
const ON_LINK_CLIENT_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x77]);
/// A second router on the uplink's segment, not the default route's.
const ROUTER2_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0xfd]);

/// The clients of these tests: on the uplink's subnet (its own MAC) and off it
/// (behind a router that is not the node's default next hop, if it has one).
const CLIENTS: [(Ipv4Addr, MacAddr); 2] =
    [(ON_LINK_CLIENT, ON_LINK_CLIENT_MAC), (OUTSIDE, ROUTER2_MAC)];

/// The reply `back` left on the uplink from the node to `mac`, TTL decremented.
fn assert_to_client(v: Verdict, back: &[u8], mac: MacAddr) {
    assert_eq!(v, Verdict::Forward { port: UPLINK });
    assert_eq!(&back[0..6], &mac.0, "to the MAC the client came from");
    assert_eq!(&back[6..12], &UPLINK_MAC.0);
    assert_eq!(back[22], 63, "TTL decremented");
    assert_checksums(back, 0);
}

#[test]
fn without_a_gateway_node_port_replies_from_a_local_endpoint_go_back_to_the_clients_mac() {
    for local in [false, true] {
        for snat in [false, true] {
            let t = without_gateway(with_services(
                tables(snat),
                &[node_port_service(&[endpoint(POD2, true)], local)],
            ));
            for batched in [false, true] {
                let go = if batched { run_batched } else { run };
                let mut p = pipeline();
                for (client, mac) in CLIENTS {
                    let syn = with_macs(
                        tcp4(client, NODE, 40000, NODE_PORT, 64, true, b""),
                        mac,
                        UPLINK_MAC,
                    );
                    let (v, out) = go(&mut p, &t, &syn, UPLINK);
                    assert_eq!(v, Verdict::Forward { port: POD2_PORT });
                    let seen = if local { client } else { GATEWAY };
                    assert_eq!(tuple(&out, 14).0, seen);
                    let (v, back) = go(&mut p, &t, &answer(&out, 14, true), POD2_PORT);
                    assert_to_client(v, &back, mac);
                    assert_eq!(tuple(&back, 14), (NODE, NODE_PORT, client, 40000));
                }
                assert_eq!(p.snat().len(), 0, "no reply masqueraded");
            }
        }
    }
}

#[test]
fn without_a_gateway_node_port_replies_from_remote_endpoints_go_back_to_the_clients_mac() {
    let t = without_gateway(with_services(
        tables(true),
        &[
            node_port_service(&[endpoint(REMOTE_POD, false)], false),
            ServiceSpec {
                name: "default/underlay".into(),
                cluster_ips: vec![Ipv4Addr::new(198, 18, 240, 11)],
                ports: vec![ServicePortSpec {
                    proto: ServiceProto::Udp,
                    port: 80,
                    node_port: Some(NODE_PORT + 1),
                    endpoints: vec![endpoint(UNDERLAY_POD, false)],
                }],
                ..ServiceSpec::default()
            },
        ],
    ));
    let mut p = pipeline();
    for (client, mac) in CLIENTS {
        // Over VXLAN: the endpoint's node encapsulates the reply to the gateway.
        let q = with_macs(
            udp4(client, NODE, 5353, NODE_PORT, 64, b"q"),
            mac,
            UPLINK_MAC,
        );
        let (v, out) = run(&mut p, &t, &q, UPLINK);
        assert_eq!(v, Verdict::Forward { port: UPLINK });
        let inner_l3 = 14 + 20 + 8 + 8 + 14;
        let (src, mport, dst, _) = tuple(&out, inner_l3);
        assert_eq!((src, dst), (GATEWAY, REMOTE_POD));
        let reply = with_macs(
            udp4(REMOTE_POD, GATEWAY, 8080, mport, 64, b"answer"),
            REMOTE_VTEP_MAC,
            VTEP_MAC,
        );
        let (v, back) = run(&mut p, &t, &vxlan_in(REMOTE_NODE, 1, 0x08, &reply), UPLINK);
        assert_to_client(v, &back, mac);
        assert_eq!(tuple(&back, 14), (NODE, NODE_PORT, client, 5353));

        // On the underlay: the reply to the gateway comes in plain.
        let q = with_macs(
            udp4(client, NODE, 5353, NODE_PORT + 1, 64, b"q"),
            mac,
            UPLINK_MAC,
        );
        let (v, out) = run(&mut p, &t, &q, UPLINK);
        assert_eq!(v, Verdict::Forward { port: UPLINK });
        let (src, mport, dst, _) = tuple(&out, 14);
        assert_eq!((src, dst), (GATEWAY, UNDERLAY_POD));
        let reply = with_macs(
            udp4(UNDERLAY_POD, GATEWAY, 8080, mport, 64, b"answer"),
            UNDERLAY_NODE_MAC,
            UPLINK_MAC,
        );
        let (v, back) = run(&mut p, &t, &reply, UPLINK);
        assert_to_client(v, &back, mac);
        assert_eq!(tuple(&back, 14), (NODE, NODE_PORT + 1, client, 5353));
    }
}

#[test]
fn without_a_gateway_node_port_replies_find_the_clients_mac_on_any_worker() {
    let cluster_remote = node_port_service(&[endpoint(REMOTE_POD, false)], false);
    let local = node_port_service(&[endpoint(POD2, true)], true);
    for spec in [cluster_remote, local] {
        let t = without_gateway(with_services(tables(false), std::slice::from_ref(&spec)));
        let mut w = workers(2);
        for (client, mac) in CLIENTS {
            for sport in 40000..40004 {
                let q = with_macs(
                    udp4(client, NODE, sport, NODE_PORT, 64, b"q"),
                    mac,
                    UPLINK_MAC,
                );
                let (owner, out) = start_flow_again(&mut w, &t, &q, UPLINK);
                let back = (NODE, NODE_PORT, client, sport);
                if spec.external_local {
                    let reply = answer(&out, 14, false);
                    reply_on_each_worker(&mut w, &t, &reply, POD2_PORT, owner, (UPLINK, mac), back);
                } else {
                    let inner_l3 = 14 + 20 + 8 + 8 + 14;
                    let (_, mport, ..) = tuple(&out, inner_l3);
                    let reply = with_macs(
                        udp4(REMOTE_POD, GATEWAY, 8080, mport, 64, b"answer"),
                        REMOTE_VTEP_MAC,
                        VTEP_MAC,
                    );
                    let reply = vxlan_in(REMOTE_NODE, 1, 0x08, &reply);
                    reply_on_each_worker(&mut w, &t, &reply, UPLINK, owner, (UPLINK, mac), back);
                }
            }
        }
    }
}

#[test]
fn with_a_gateway_node_port_replies_still_go_back_through_the_router_the_client_came_through() {
    // Two routers on the segment: the reply follows the request, not the default
    // route (ROUTER_MAC), and a flow whose packets move to the other router follows.
    let t = with_services(
        tables(true),
        &[node_port_service(&[endpoint(POD2, true)], false)],
    );
    let mut p = pipeline();
    let syn = with_macs(
        tcp4(OUTSIDE, NODE, 40000, NODE_PORT, 64, true, b""),
        ROUTER2_MAC,
        UPLINK_MAC,
    );
    let (_, out) = run(&mut p, &t, &syn, UPLINK);
    let reply = answer(&out, 14, true);
    let (v, back) = run(&mut p, &t, &reply, POD2_PORT);
    assert_to_client(v, &back, ROUTER2_MAC);
    let ack = from_outside(tcp4(OUTSIDE, NODE, 40000, NODE_PORT, 64, false, b"get"));
    let (v, _) = run(&mut p, &t, &ack, UPLINK);
    assert_eq!(v, Verdict::Forward { port: POD2_PORT });
    let (v, back) = run(&mut p, &t, &reply, POD2_PORT);
    assert_to_client(v, &back, ROUTER_MAC);
    assert_eq!(p.service_flows(), 1);
}

#[test]
fn a_node_port_client_in_the_cluster_is_answered_by_its_route_not_its_mac() {
    // A remote node's pod reaching this node's NodePort without masquerade: its
    // packets come plain from its node, its replies go back into the overlay.
    let t = without_gateway(with_services(
        tables(false),
        &[node_port_service(&[endpoint(POD2, true)], true)],
    ));
    let mut p = pipeline();
    let syn = with_macs(
        tcp4(REMOTE_POD, NODE, 40000, NODE_PORT, 64, true, b""),
        REMOTE_NODE_MAC,
        UPLINK_MAC,
    );
    let (v, out) = run(&mut p, &t, &syn, UPLINK);
    assert_eq!(v, Verdict::Forward { port: POD2_PORT });
    let (v, back) = run(&mut p, &t, &answer(&out, 14, true), POD2_PORT);
    assert_eq!(v, Verdict::Forward { port: UPLINK });
    assert_eq!(u16_at(&back, 36), 8472, "VXLAN");
    let inner_l3 = 14 + 20 + 8 + 8 + 14;
    assert_eq!(tuple(&back, inner_l3), (NODE, NODE_PORT, REMOTE_POD, 40000));
}

#[test]
fn without_a_gateway_a_node_port_without_endpoints_answers_the_clients_mac() {
    let t = without_gateway(with_services(
        tables(false),
        &[node_port_service(&[], false)],
    ));
    for (client, mac) in CLIENTS {
        let syn = with_macs(
            tcp4(client, NODE, 40000, NODE_PORT, 64, true, b""),
            mac,
            UPLINK_MAC,
        );
        let (v, out) = run(&mut pipeline(), &t, &syn, UPLINK);
        assert_eq!(v, Verdict::Refuse(DropReason::ServiceNoEndpoints));
        assert_eq!(&out[0..6], &mac.0);
        assert_eq!((ip4(&out, 26), ip4(&out, 30)), (NODE, client));
        assert_eq!((out[34], out[35]), (3, 3), "ICMP port unreachable");
    }
}

// ---- An endpoint outside the cluster (the `kubernetes` Service: the API server)
// with SNAT on: DNATed, then masqueraded; the reply un-SNATed, then un-DNATed ----

/// `kubernetes`-like: VIP:80 to OUTSIDE (a host outside the pod network) :8080.
fn outside_endpoint_service() -> Tables {
    with_services(tables(true), &[service(&[endpoint(OUTSIDE, false)])])
}

/// A segment from `remote`:8080 to the node's `nat_port`, as it arrives on the
/// uplink; `syn`: the SYN-ACK to the client's SYN (sequence 1000).
fn from_remote(remote: Ipv4Addr, nat_port: u16, syn: bool) -> Vec<u8> {
    let b = eth(ROUTER_MAC, UPLINK_MAC)
        .ipv4(remote.octets(), NODE.octets(), 64)
        .tcp(8080, nat_port, 5000, 64000);
    let b = if syn { b.syn().ack(1001) } else { b.ack(1001) };
    let mut v = Vec::new();
    b.write(&mut v, b"").unwrap();
    v
}

/// [`run`] through [`Pipeline::process_batch`], the frame alone in its batch.
fn run_batched(p: &mut Pipeline, t: &Tables, f: &[u8], port: PortId) -> (Verdict, Vec<u8>) {
    let mut buf = Buf::new();
    let mut frames = [buf.frame(f, port)];
    let mut verdicts = [Verdict::ToHost];
    p.process_batch(&mut frames, t, T0, &mut verdicts);
    (verdicts[0], frames[0].data().to_vec())
}

#[test]
fn a_pods_flow_to_an_outside_endpoint_is_masqueraded_and_the_reply_comes_from_the_cluster_ip() {
    for tun in [false, true] {
        let mut t = outside_endpoint_service();
        if tun {
            t.node.host_port = Some(PortId(9));
            t.node.routed_port = PortId(9);
        }
        let out_port = t.node.routed_port;
        for batched in [false, true] {
            let go = if batched { run_batched } else { run };
            let mut p = pipeline();
            let syn = tcp4(POD1, VIP, 40000, 80, 64, true, b"");
            let (v, out) = go(&mut p, &t, &syn, POD1_PORT);
            assert_eq!(v, Verdict::Forward { port: out_port });
            let (src, nat_port, dst, dport) = tuple(&out, 14);
            assert_eq!((src, dst, dport), (NODE, OUTSIDE, 8080));
            assert_checksums(&out, 0);
            assert_eq!((p.service_flows(), p.snat().len()), (1, 1));

            let (v, back) = go(&mut p, &t, &from_remote(OUTSIDE, nat_port, true), UPLINK);
            assert_eq!(v, Verdict::Forward { port: POD1_PORT }, "tun {tun}");
            assert_eq!(tuple(&back, 14), (VIP, 80, POD1, 40000), "tun {tun}");
            assert_eq!(&back[0..6], &POD1_MAC.0);
            assert_checksums(&back, 0);

            // The connection goes on: the client's next segment leaves as the first.
            let ack = tcp4(POD1, VIP, 40000, 80, 64, false, b"GET /");
            let (v, out) = go(&mut p, &t, &ack, POD1_PORT);
            assert_eq!(v, Verdict::Forward { port: out_port });
            assert_eq!(tuple(&out, 14), (NODE, nat_port, OUTSIDE, 8080));
        }
    }
}

#[test]
fn a_direct_flow_to_an_outside_endpoint_keeps_its_address() {
    // The same remote reached without the Service: its reply is the pod's own.
    let t = outside_endpoint_service();
    let mut p = pipeline();
    let syn = tcp4(POD1, OUTSIDE, 40000, 8080, 64, true, b"");
    let (_, out) = run(&mut p, &t, &syn, POD1_PORT);
    let (_, nat_port, ..) = tuple(&out, 14);
    let (v, back) = run(&mut p, &t, &from_remote(OUTSIDE, nat_port, true), UPLINK);
    assert_eq!(v, Verdict::Forward { port: POD1_PORT });
    assert_eq!(tuple(&back, 14), (OUTSIDE, 8080, POD1, 40000));
}

/// Runs `f` on worker `arrives_on` and follows hand-offs as the worker loop does,
/// at most two (`worker::handoff::MAX_HAND_OFFS`); returns the verdict, the frame
/// as it left and the number of hand-offs.
fn follow_hand_offs(
    workers: &mut [Pipeline],
    t: &Tables,
    f: &[u8],
    port: PortId,
    arrives_on: usize,
) -> (Verdict, Vec<u8>, usize) {
    let (mut v, mut out) = run(&mut workers[arrives_on], t, f, port);
    let mut hops = 0;
    while let Verdict::HandOff { worker } = v {
        hops += 1;
        assert!(hops <= 2, "handed off a third time");
        (v, out) = run(&mut workers[usize::from(worker)], t, &out, port);
    }
    (v, out, hops)
}

#[test]
fn with_several_workers_a_flow_to_an_outside_endpoint_works_from_any_worker() {
    let mut twice = 0;
    for n in [2u16, 4] {
        // Outside endpoints whose SNAT owner is, or is not, the client's owner.
        for last in 1..=8 {
            let remote = Ipv4Addr::new(198, 18, 100, last);
            let t = with_services(tables(true), &[service(&[endpoint(remote, false)])]);
            let mut w = workers(n);
            let syn = tcp4(POD1, VIP, 40000, 80, 64, true, b"");
            let (v, out, hops) = follow_hand_offs(&mut w, &t, &syn, POD1_PORT, 0);
            assert_eq!(v, Verdict::Forward { port: UPLINK });
            let (src, nat_port, dst, _) = tuple(&out, 14);
            assert_eq!((src, dst), (NODE, remote));
            twice += usize::from(hops == 2);
            for arrives_on in 0..usize::from(n) {
                let reply = from_remote(remote, nat_port, arrives_on == 0);
                let (v, back, hops) = follow_hand_offs(&mut w, &t, &reply, UPLINK, arrives_on);
                assert_eq!(
                    v,
                    Verdict::Forward { port: POD1_PORT },
                    "{n}: on {arrives_on}"
                );
                assert_eq!(tuple(&back, 14), (VIP, 80, POD1, 40000));
                assert_checksums(&back, 0);
                twice += usize::from(hops == 2);

                let ack = tcp4(POD1, VIP, 40000, 80, 64, false, b"more");
                let (v, out, _) = follow_hand_offs(&mut w, &t, &ack, POD1_PORT, arrives_on);
                assert_eq!(v, Verdict::Forward { port: UPLINK });
                assert_eq!(tuple(&out, 14), (NODE, nat_port, remote, 8080));
            }
            // One Service flow, one SNAT flow, each on one worker.
            let flows: usize = w.iter().map(Pipeline::service_flows).sum();
            let nat: usize = w.iter().map(|p| p.snat().len()).sum();
            assert_eq!((flows, nat), (1, 1));
        }
    }
    assert!(twice > 0, "no case needed the second hand-off");
}

// ---- ICMP errors about Service flows (icmp15): translated back to the client as
// Linux conntrack translates errors RELATED to a NATed flow ----

const PORT_UNREACHABLE: (u8, u8) = (3, 3);
const FRAG_NEEDED: (u8, u8) = (3, 4);
/// An error: type and code, and the 4 bytes after the checksum.
type IcmpErr = ((u8, u8), [u8; 4]);
/// The two errors this is about ("fragmentation needed" with next-hop MTU 1400).
const ERRORS: [IcmpErr; 2] = [
    (PORT_UNREACHABLE, [0; 4]),
    (FRAG_NEEDED, [0, 0, 0x05, 0x78]),
];
/// A router on the uplink between the node and an underlay endpoint.
const ROUTER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 254);
/// Where the IPv4 packet of a VXLAN frame we send starts.
const INNER_L3: usize = 14 + 20 + 8 + 8 + 14;

/// The error `from` sends about the packet this node sent the endpoint `ep` (`out`),
/// as it reaches this node, and the port it arrives on: a local endpoint's from its
/// pod port, a remote one's over VXLAN, an underlay one's (or a router's before it)
/// from the uplink. It goes where errors go: to the quoted packet's source.
fn error_back(
    out: &[u8],
    ep: Ipv4Addr,
    from: Ipv4Addr,
    (kind, rest): IcmpErr,
) -> (Vec<u8>, PortId) {
    let l3 = if ep == REMOTE_POD { INNER_L3 } else { 14 };
    let to = tuple(out, l3).0;
    let err = icmp4_error(out, l3, from, to, kind, rest);
    match ep {
        POD2 => (with_macs(err, POD2_MAC, GATEWAY_MAC), POD2_PORT),
        REMOTE_POD => {
            let inner = with_macs(err, REMOTE_VTEP_MAC, VTEP_MAC);
            (vxlan_in(REMOTE_NODE, 1, 0x08, &inner), UPLINK)
        }
        _ => (from_outside(err), UPLINK),
    }
}

/// Asserts that the frame `back` is the ICMP error `error` from `from` to `to`,
/// quoting `sent` (a frame, IPv4 at 14) as its client sent it: addresses, ports and
/// bytes, every checksum the client's kernel checks (outer IPv4, ICMP, quoted IPv4
/// header, and the quoted transport checksum, which comes out as the client's).
fn assert_error_about(
    back: &[u8],
    (kind, rest): IcmpErr,
    from: Ipv4Addr,
    to: Ipv4Addr,
    sent: &[u8],
) {
    assert_eq!(
        (ip4(back, 26), ip4(back, 30)),
        (from, to),
        "outer addresses"
    );
    assert_eq!((back[34], back[35]), kind, "ICMP type and code");
    assert_eq!(&back[38..42], &rest, "rest of the ICMP header");
    assert_checksums(back, 0);
    let q = 42;
    assert_eq!(
        tuple(back, q),
        tuple(sent, 14),
        "quoted as the client sent it"
    );
    assert_eq!(
        checksum::checksum(&back[q..q + 20]),
        0,
        "quoted IPv4 checksum"
    );
    let l4 = &back[q + 20..];
    assert_eq!(
        l4,
        &sent[34..34 + l4.len()],
        "quoted transport header and data"
    );
}

/// The client's query to the ClusterIP.
fn query() -> Vec<u8> {
    udp4(POD1, VIP, 5353, 80, 64, b"query")
}

/// Starts a flow with `sent` (from the client's `port`) on a fresh pipeline, has
/// `from` answer it with each of [`ERRORS`] (the endpoint is `ep`), once through
/// `process` and once through `process_batch`, and returns what reached the client.
fn errors_for(
    t: &Tables,
    sent: &[u8],
    port: PortId,
    ep: Ipv4Addr,
    from: Ipv4Addr,
) -> Vec<(IcmpErr, bool, Verdict, Vec<u8>)> {
    let mut seen = Vec::new();
    for batched in [false, true] {
        let go = if batched { run_batched } else { run };
        for error in ERRORS {
            let mut p = pipeline();
            let (v, out) = go(&mut p, t, sent, port);
            assert!(matches!(v, Verdict::Forward { .. }), "{v:?}");
            let (err, at) = error_back(&out, ep, from, error);
            let (v, back) = go(&mut p, t, &err, at);
            assert_eq!(p.snat().len(), 0, "nothing masqueraded");
            seen.push((error, batched, v, back));
        }
    }
    seen
}

#[test]
fn errors_from_a_local_endpoint_reach_the_client_from_the_cluster_ip() {
    for tun in [false, true] {
        let mut t = with_services(tables(false), &[service(&[endpoint(POD2, true)])]);
        if tun {
            // The endpoint sees (and answers) the gateway there.
            t.node.host_port = Some(PortId(9));
            t.node.routed_port = PortId(9);
        }
        for (error, batched, v, back) in errors_for(&t, &query(), POD1_PORT, POD2, POD2) {
            let case = format!("tun {tun}, batched {batched}, {error:?}");
            assert_eq!(v, Verdict::Forward { port: POD1_PORT }, "{case}");
            assert_eq!(&back[0..6], &POD1_MAC.0);
            assert_eq!(back[22], 63, "TTL");
            assert_error_about(&back, error, VIP, POD1, &query());
        }
    }
}

#[test]
fn errors_from_a_remote_endpoint_over_vxlan_reach_the_client_from_the_cluster_ip() {
    let t = with_services(tables(false), &[service(&[endpoint(REMOTE_POD, false)])]);
    for (error, _, v, back) in errors_for(&t, &query(), POD1_PORT, REMOTE_POD, REMOTE_POD) {
        assert_eq!(v, Verdict::Forward { port: POD1_PORT }, "{error:?}");
        assert_error_about(&back, error, VIP, POD1, &query());
    }
}

#[test]
fn errors_from_an_underlay_endpoint_or_a_router_on_the_way_reach_the_client() {
    let t = with_services(tables(false), &[service(&[endpoint(UNDERLAY_POD, false)])]);
    // The endpoint's own error comes from the ClusterIP; a router's keeps its
    // address (as with Linux: only the endpoint's address is the flow's).
    for (from, seen_from) in [(UNDERLAY_POD, VIP), (ROUTER, ROUTER)] {
        for (error, _, v, back) in errors_for(&t, &query(), POD1_PORT, UNDERLAY_POD, from) {
            assert_eq!(v, Verdict::Forward { port: POD1_PORT }, "{from} {error:?}");
            assert_error_about(&back, error, seen_from, POD1, &query());
        }
    }
}

#[test]
fn errors_about_node_port_flows_reach_the_outside_client_from_the_node_port() {
    // `Cluster` (masqueraded to the gateway): endpoint local, over VXLAN, on the
    // underlay (and a router before it). `Local` (the client's own address), SNAT on.
    let cases = [
        (false, POD2, POD2, NODE),
        (false, REMOTE_POD, REMOTE_POD, NODE),
        (false, UNDERLAY_POD, UNDERLAY_POD, NODE),
        (false, UNDERLAY_POD, ROUTER, ROUTER),
        (true, POD2, POD2, NODE),
    ];
    let q = from_outside(udp4(OUTSIDE, NODE, 5353, NODE_PORT, 64, b"query"));
    for (local, ep, from, seen_from) in cases {
        let t = with_services(
            tables(local),
            &[node_port_service(&[endpoint(ep, local)], local)],
        );
        for (error, batched, v, back) in errors_for(&t, &q, UPLINK, ep, from) {
            let case = format!("local {local}, {ep} via {from}, {error:?}, batched {batched}");
            assert_eq!(v, Verdict::Forward { port: UPLINK }, "{case}");
            assert_eq!(&back[0..6], &ROUTER_MAC.0, "{case}");
            assert_error_about(&back, error, seen_from, OUTSIDE, &q);
        }
    }
}

#[test]
fn without_a_gateway_errors_about_node_port_flows_go_back_to_the_clients_mac() {
    // As the flow's replies do (see `without_a_gateway_node_port_replies_*`): the
    // client on the uplink's subnet and behind a router that is not the node's.
    for local in [false, true] {
        let t = without_gateway(with_services(
            tables(local),
            &[node_port_service(&[endpoint(POD2, local)], local)],
        ));
        for (client, mac) in CLIENTS {
            let q = with_macs(
                udp4(client, NODE, 5353, NODE_PORT, 64, b"query"),
                mac,
                UPLINK_MAC,
            );
            for (error, batched, v, back) in errors_for(&t, &q, UPLINK, POD2, POD2) {
                let case = format!("local {local}, {client}, {error:?}, batched {batched}");
                assert_eq!(v, Verdict::Forward { port: UPLINK }, "{case}");
                assert_eq!(
                    &back[0..6],
                    &mac.0,
                    "{case}: to the MAC the client came from"
                );
                assert_error_about(&back, error, NODE, client, &q);
            }
        }
    }
}

/// A client's packet with DF set, larger than the overlay's MTU (1450).
fn too_big(src: Ipv4Addr, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    set_df(udp4(src, dst, 5353, dport, 64, &[0x5a; 1460]), true)
}

#[test]
fn our_own_fragmentation_needed_about_a_service_flow_quotes_what_the_client_sent() {
    let overlay_mtu = (FRAG_NEEDED, [0, 0, 0x05, 0xaa]);
    let t = with_services(tables(false), &[service(&[endpoint(REMOTE_POD, false)])]);
    let big = too_big(POD1, VIP, 80);
    let (v, back) = run(&mut pipeline(), &t, &big, POD1_PORT);
    assert_eq!(v, Verdict::Reply);
    assert_error_about(&back, overlay_mtu, GATEWAY, POD1, &big);
    // A NodePort flow masqueraded to the gateway: to the outside client, quoting
    // its packet to the node's port.
    let t = with_services(
        tables(false),
        &[node_port_service(&[endpoint(REMOTE_POD, false)], false)],
    );
    let big = from_outside(too_big(OUTSIDE, NODE, NODE_PORT));
    let (v, back) = run(&mut pipeline(), &t, &big, UPLINK);
    assert_eq!(v, Verdict::Reply);
    assert_eq!(&back[0..6], &ROUTER_MAC.0);
    assert_error_about(&back, overlay_mtu, NODE, OUTSIDE, &big);
}

#[test]
fn errors_about_service_flows_reach_the_worker_that_keeps_the_flow() {
    let [unreachable, frag_needed] = ERRORS;
    for n in [2u16, 4] {
        // ClusterIP, endpoints over VXLAN (decapsulated on any worker) and local.
        let eps = [endpoint(REMOTE_POD, false), endpoint(POD2, true)];
        let t = with_services(tables(false), &[service(&eps)]);
        let mut w = workers(n);
        for sport in 40000..40008 {
            let q = udp4(POD1, VIP, sport, 80, 64, b"query");
            let (_, out) = start_flow_again(&mut w, &t, &q, POD1_PORT);
            let ep = if tuple(&out, 14).2 == POD2 {
                POD2
            } else {
                REMOTE_POD
            };
            let (err, port) = error_back(&out, ep, ep, unreachable);
            for arrives_on in 0..usize::from(n) {
                let (v, back) = follow(&mut w, &t, &err, port, arrives_on);
                let to_client = Verdict::Forward { port: POD1_PORT };
                assert_eq!(v, to_client, "{n}: {ep} on {arrives_on}");
                assert_error_about(&back, unreachable, VIP, POD1, &q);
            }
        }
        // NodePort `Cluster` over VXLAN: found by the gateway port.
        let eps = [endpoint(REMOTE_POD, false)];
        let t = with_services(tables(false), &[node_port_service(&eps, false)]);
        let mut w = workers(n);
        for sport in 40000..40004 {
            let q = from_outside(udp4(OUTSIDE, NODE, sport, NODE_PORT, 64, b"query"));
            let (_, out) = start_flow_again(&mut w, &t, &q, UPLINK);
            let (err, port) = error_back(&out, REMOTE_POD, REMOTE_POD, frag_needed);
            for arrives_on in 0..usize::from(n) {
                let (v, back) = follow(&mut w, &t, &err, port, arrives_on);
                assert_eq!(v, Verdict::Forward { port: UPLINK }, "{n}: on {arrives_on}");
                assert_error_about(&back, frag_needed, NODE, OUTSIDE, &q);
            }
        }
    }
}

#[test]
fn an_error_from_an_outside_endpoint_is_un_snated_then_un_dnated_on_any_worker() {
    let [unreachable, _] = ERRORS;
    for n in [1u16, 2, 4] {
        for last in 1..=4 {
            let remote = Ipv4Addr::new(198, 18, 100, last);
            let t = with_services(tables(true), &[service(&[endpoint(remote, false)])]);
            let mut w = workers(n);
            let (v, out, _) = follow_hand_offs(&mut w, &t, &query(), POD1_PORT, 0);
            assert_eq!(v, Verdict::Forward { port: UPLINK });
            let (err, port) = error_back(&out, remote, remote, unreachable);
            for arrives_on in 0..usize::from(n) {
                let (v, back, _) = follow_hand_offs(&mut w, &t, &err, port, arrives_on);
                let to_client = Verdict::Forward { port: POD1_PORT };
                assert_eq!(v, to_client, "{n}: on {arrives_on}");
                assert_error_about(&back, unreachable, VIP, POD1, &query());
            }
        }
    }
}

#[test]
fn errors_about_other_flows_pass_unchanged_and_corrupt_ones_are_dropped() {
    let [unreachable, _] = ERRORS;
    let t = with_services(tables(false), &[service(&[endpoint(POD2, true)])]);
    let mut p = pipeline();
    let (_, out) = run(&mut p, &t, &query(), POD1_PORT);
    // POD1's own flow to POD2 (not through the Service) from another port.
    let direct = udp4(POD1, POD2, 5354, 8080, 64, b"direct");
    let (err, port) = error_back(&direct, POD2, POD2, unreachable);
    let (v, back) = run(&mut p, &t, &err, port);
    assert_eq!(v, Verdict::Forward { port: POD1_PORT });
    assert_eq!((ip4(&back, 26), ip4(&back, 30)), (POD2, POD1));
    assert_eq!(&back[34..], &err[34..], "the ICMP message as it was");
    // The Service flow's error sent elsewhere than to the client (here the node):
    // not the client's, left alone.
    let (mut elsewhere, port) = error_back(&out, POD2, POD2, unreachable);
    elsewhere[30..34].copy_from_slice(&NODE.octets());
    fix_ipv4_checksum(&mut elsewhere, 14);
    let (v, back) = run(&mut p, &t, &elsewhere, port);
    assert_eq!(v, Verdict::ToHost);
    assert_eq!(back, elsewhere, "untouched");
    // The Service flow's error with a bad ICMP checksum: not given a good one.
    let (mut bad, port) = error_back(&out, POD2, POD2, unreachable);
    bad[36] ^= 0xff;
    let (v, _) = run(&mut p, &t, &bad, port);
    assert_eq!(v, Verdict::Drop(DropReason::MalformedTransport));
}
