//! IPv4 from the uplink side (the uplink or the host port): VXLAN to decapsulate,
//! replies to masqueraded flows (and ICMP errors about them), routed packets for a
//! local pod; everything else is the host's. A decapsulated Service reply whose flow
//! another worker keeps is handed off with its outer header put back (see
//! `service`).

use std::net::IpAddr;

use super::icmp::IcmpError;
use super::ipv6::decrement_hop_limit;
use super::service::ServiceStep;
use super::vxlan;
use super::{Action, Pending, Pipeline, Step, decrement_ttl_v4, forward_to_local_pod_v4, snat};
use crate::frame::{Frame, PortId};
use crate::tables::{L4Proto, NatBinding, NodeSettings, RouteTarget, Tables, owner_of_remote};
use crate::time::Now;
use crate::verdict::{DropReason, Verdict};
use crate::wire::MacAddr;
use crate::wire::classify::{self, Packet, V4};
use crate::wire::packet::ip_proto;
use crate::wire::{bytes, icmp_quote, rewrite};

impl Pipeline {
    pub(super) fn uplink_v4(
        &mut self,
        frame: &mut Frame<'_>,
        ip: &V4,
        tables: &Tables,
        now: Now,
    ) -> Result<Action, DropReason> {
        let node = &tables.node;
        if ip.dst == node.node_addr {
            if let Some(l4) = ip.l4
                && l4.proto == ip_proto::UDP
                && l4.dport == node.vxlan_port
            {
                let known = tables.known_vteps.contains(ip.src);
                if node.snat && !known {
                    // The SNAT port range may include the VXLAN port: a reply to a
                    // masqueraded flow from a non-node wins, else it is bad VXLAN.
                    return match self.unmasquerade(frame, ip, tables, now)? {
                        Action::Done(Verdict::ToHost) => Err(DropReason::VxlanUnknownSource),
                        Action::Unmasquerade(p) => Ok(Action::Unmasquerade(Pending {
                            not_vxlan: true,
                            ..p
                        })),
                        other => Ok(other),
                    };
                }
                return self.decap(frame, ip, known, tables, now);
            }
            if let Some(action) = self.node_port(frame, ip, tables, now)? {
                return Ok(action);
            }
            if node.snat {
                return self.unmasquerade(frame, ip, tables, now);
            }
            return Ok(Action::Done(Verdict::ToHost));
        }
        if Some(ip.dst) == node.host_pod_addr {
            // The host's own connections to pods on other nodes (or to Services):
            // their replies.
            return self.hand_to_host(frame, ip, tables, now);
        }
        if from_the_host(frame, ip, node) && tables.services.may_be_cluster_ip(ip.dst) {
            // The host's own packet to a ClusterIP (routed into the host port from
            // its pod-network address): served like a pod's.
            return self.host_to_cluster_ip(frame, ip, tables, now);
        }
        match tables.routes.lookup_v4(ip.dst) {
            Some(target @ (RouteTarget::VxlanNode { .. } | RouteTarget::UnderlayNode { .. }))
                if from_the_host(frame, ip, node) =>
            {
                // The host reaching a pod on another node (kubelet probes, webhooks,
                // host-network processes): the kernel routed it into the host port.
                if ip.ttl <= 1 {
                    return Err(DropReason::TtlExpired);
                }
                let target = *target;
                self.route_v4(frame, ip, target, tables, now)
            }
            Some(RouteTarget::LocalPod { port, mac }) => {
                let translated;
                let ip = match self.service_reply(frame, ip, tables, now)? {
                    ServiceStep::Pass => ip,
                    ServiceStep::Continue(t) => {
                        translated = t;
                        &translated
                    }
                    ServiceStep::Done(v) => return Ok(Action::Done(v)),
                };
                if ip.ttl <= 1 {
                    return self
                        .icmp_v4(
                            frame,
                            ip,
                            IcmpError::TimeExceeded,
                            node.node_addr,
                            node,
                            now,
                        )
                        .map(Action::Done);
                }
                forward_to_local_pod_v4(frame.data_mut(), ip, *port, *mac, node).map(Action::Done)
            }
            _ if ip.dst == node.gateway_v4 => match self.gateway_reply(frame, ip, tables, now)? {
                Some(action) => Ok(action),
                None => not_for_a_pod(frame, node).map(Action::Done),
            },
            _ => not_for_a_pod(frame, node).map(Action::Done),
        }
    }

    pub(super) fn decap(
        &mut self,
        frame: &mut Frame<'_>,
        outer: &V4,
        known_source: bool,
        tables: &Tables,
        now: Now,
    ) -> Result<Action, DropReason> {
        vxlan::decapsulate(frame, outer, known_source, &tables.node)?;
        let inner = match classify::classify(frame.data()) {
            Ok(p) => p,
            Err(_) => return Err(DropReason::VxlanMalformed),
        };
        let (src, dst, ttl) = match inner {
            Packet::V4(ip) => (IpAddr::V4(ip.src), IpAddr::V4(ip.dst), ip.ttl),
            Packet::V6(ip) => (IpAddr::V6(ip.src), IpAddr::V6(ip.dst), ip.hop_limit),
            Packet::Arp | Packet::Other => return Err(DropReason::UnsupportedEtherType),
        };
        let to_gateway = dst == IpAddr::V4(tables.node.gateway_v4);
        let to_host = tables.node.host_pod_addr.map(IpAddr::V4) == Some(dst);
        let local_pod = match tables.routes.lookup(dst) {
            Some(RouteTarget::LocalPod { port, mac }) => Some((*port, *mac)),
            _ if to_gateway || to_host => None,
            _ => return Err(DropReason::VxlanNotForUs),
        };
        // Anti-spoofing: a node speaks only for the pods of its own blocks (its host
        // sends from its block's first address, as flannel's does).
        match tables.routes.lookup(src) {
            Some(RouteTarget::VxlanNode { node_addr, .. }) if *node_addr == outer.src => {}
            _ => return Err(DropReason::VxlanSpoofedSource),
        }
        if ttl <= 1 {
            return Err(DropReason::TtlExpired);
        }
        let Some((port, mac)) = local_pod else {
            if to_host {
                // A reply to the host's own connection to a pod over there (through
                // a Service, maybe).
                return match inner {
                    Packet::V4(ip) => {
                        let action = self.hand_to_host(frame, &ip, tables, now)?;
                        as_arrived_if_handed_off(frame, outer, action)
                    }
                    _ => Ok(Action::Done(Verdict::ToHost)),
                };
            }
            // To the gateway: a remote endpoint's reply to a masqueraded NodePort flow.
            return match inner {
                Packet::V4(ip) => {
                    let action = self
                        .gateway_reply(frame, &ip, tables, now)?
                        .ok_or(DropReason::VxlanNotForUs)?;
                    as_arrived_if_handed_off(frame, outer, action)
                }
                _ => Err(DropReason::VxlanNotForUs),
            };
        };
        let inner = match inner {
            Packet::V4(ip) => match self.service_reply(frame, &ip, tables, now)? {
                ServiceStep::Pass => inner,
                ServiceStep::Continue(ip) => Packet::V4(ip),
                ServiceStep::Done(v) => {
                    return as_arrived_if_handed_off(frame, outer, Action::Done(v));
                }
            },
            other => other,
        };
        let d = frame.data_mut();
        match inner {
            Packet::V4(ip) => decrement_ttl_v4(d, &ip)?,
            Packet::V6(ip) => decrement_hop_limit(d, &ip)?,
            Packet::Arp | Packet::Other => {}
        }
        bytes::set_macs(d, 0, mac, tables.node.gateway_mac).ok_or(DropReason::MalformedEthernet)?;
        Ok(Action::Done(Verdict::Forward { port }))
    }

    /// A packet to the node address while SNAT is on: a reply to a masqueraded flow
    /// (left for the SNAT lookup), an ICMP error about one, or the host's own.
    pub(super) fn unmasquerade(
        &mut self,
        frame: &mut Frame<'_>,
        ip: &V4,
        tables: &Tables,
        now: Now,
    ) -> Result<Action, DropReason> {
        let host = Ok(Action::Done(Verdict::ToHost));
        if ip.frag_offset != 0 {
            // Without the transport header the flow is unknown; the host reassembles
            // its own fragments.
            return host;
        }
        let Some(l4) = ip.l4 else {
            return host;
        };
        if l4.proto == ip_proto::ICMP && icmp_quote::is_translatable_error(l4.icmp_type) {
            return self
                .unmasquerade_icmp_error(frame, ip, tables, now)
                .map(Action::Done);
        }
        let Some(key) = snat::flow_key(ip, &l4) else {
            return host;
        };
        if key.proto == L4Proto::IcmpEcho && l4.icmp_type != classify::ICMP_ECHO_REPLY {
            // A ping to the node itself.
            return host;
        }
        if !self.snat_config.is_nat_port(key.dst_port) {
            return host;
        }
        match owner_of_remote(&self.snat_config, key.proto, key.src, key.src_port) {
            None => host,
            Some(owner) if owner != self.worker => {
                Ok(Action::Done(Verdict::HandOff { worker: owner }))
            }
            Some(_) => Ok(Action::Unmasquerade(Pending {
                ip: *ip,
                l4,
                tcp: snat::tcp_segment(frame.data(), ip, &l4),
                key,
                next_hop_mac: MacAddr::ZERO,
                not_vxlan: false,
            })),
        }
    }

    /// Second half of un-masquerading, once the SNAT shard answered: the reply gets
    /// the pod's address and port back and then, when it answers a pod's Service
    /// flow to an endpoint outside the cluster (DNATed, then masqueraded), the
    /// ClusterIP:port as its source: un-SNAT, then un-DNAT, kube-proxy's order
    /// reversed. The Service flow may be another worker's (see `service`): the
    /// un-SNATed reply, now a packet from the uplink to a local pod, is handed to it.
    pub(super) fn finish_unmasquerade(
        &mut self,
        frame: &mut Frame<'_>,
        p: &Pending,
        pod: Option<NatBinding>,
        tables: &Tables,
        now: Now,
    ) -> Step {
        let Some(pod) = pod else {
            return if p.not_vxlan {
                Err(DropReason::VxlanUnknownSource)
            } else {
                Ok(Verdict::ToHost)
            };
        };
        let Some(RouteTarget::LocalPod { port, mac }) = tables.routes.lookup_v4(pod.addr) else {
            // The pod is gone; its flow will time out.
            return Err(DropReason::NoRoute);
        };
        if p.ip.ttl <= 1 {
            return Err(DropReason::TtlExpired);
        }
        let d = frame.data_mut();
        rewrite::rewrite_destination(d, &p.ip, &p.l4, pod.addr, pod.port)
            .ok_or(DropReason::MalformedTransport)?;
        if self.may_be_service_reply(p.l4.sport, tables) {
            return self.unmasqueraded_service_reply(frame, p, pod, (*port, *mac), tables, now);
        }
        // Spelled out, not `forward_to_local_pod_v4`: on this path (every reply to a
        // masqueraded flow) the call compiled to 15 more instructions per packet.
        decrement_ttl_v4(d, &p.ip)?;
        bytes::set_macs(d, 0, *mac, tables.node.gateway_mac)
            .ok_or(DropReason::MalformedEthernet)?;
        Ok(Verdict::Forward { port: *port })
    }

    /// [`Pipeline::finish_unmasquerade`] for a reply (already un-SNATed to `pod`) that
    /// may answer a Service flow: given its ClusterIP:port back, or handed to the
    /// worker that keeps the flow; else on to the pod unchanged. Out of line: most
    /// replies to masqueraded flows are not from an endpoint port.
    #[cold]
    #[inline(never)]
    fn unmasqueraded_service_reply(
        &mut self,
        frame: &mut Frame<'_>,
        p: &Pending,
        pod: NatBinding,
        (port, mac): (PortId, MacAddr),
        tables: &Tables,
        now: Now,
    ) -> Step {
        let unmasqueraded = V4 {
            dst: pod.addr,
            l4: Some(classify::L4 {
                dport: pod.port,
                ..p.l4
            }),
            ..p.ip
        };
        self.unmasqueraded_to_local_pod(frame, &unmasqueraded, (port, mac), tables, now)
    }

    /// A packet from the uplink side that un-SNAT addressed to a local pod (a reply,
    /// an ICMP error): when it answers a Service flow it gets the ClusterIP:port back
    /// (or is handed to the worker that keeps the flow), then it goes to the pod.
    fn unmasqueraded_to_local_pod(
        &mut self,
        frame: &mut Frame<'_>,
        unmasqueraded: &V4,
        (port, mac): (PortId, MacAddr),
        tables: &Tables,
        now: Now,
    ) -> Step {
        let translated;
        let ip = match self.service_reply(frame, unmasqueraded, tables, now)? {
            ServiceStep::Pass => unmasqueraded,
            ServiceStep::Continue(t) => {
                translated = t;
                &translated
            }
            ServiceStep::Done(v) => return Ok(v),
        };
        forward_to_local_pod_v4(frame.data_mut(), ip, port, mac, &tables.node)
    }

    #[cold]
    #[inline(never)]
    pub(super) fn unmasquerade_icmp_error(
        &mut self,
        frame: &mut Frame<'_>,
        ip: &V4,
        tables: &Tables,
        now: Now,
    ) -> Step {
        // Read again here rather than passed: the caller keeps its copy in registers.
        let Some(icmp) = &ip.l4 else {
            return Ok(Verdict::ToHost);
        };
        let d = frame.data();
        let Some((quoted, quoted_dst)) = icmp_quote::quoted(d, ip, icmp) else {
            return Ok(Verdict::ToHost);
        };
        if quoted.src != tables.node.node_addr {
            return Ok(Verdict::ToHost);
        }
        let Some(key) = snat::reply_key(&quoted, quoted_dst) else {
            return Ok(Verdict::ToHost);
        };
        if !self.snat_config.is_nat_port(key.dst_port) {
            return Ok(Verdict::ToHost);
        }
        match owner_of_remote(&self.snat_config, key.proto, key.src, key.src_port) {
            None => return Ok(Verdict::ToHost),
            Some(owner) if owner != self.worker => return Ok(Verdict::HandOff { worker: owner }),
            Some(_) => {}
        }
        let Some(pod) = self.snat.peek_inbound(&key) else {
            return Ok(Verdict::ToHost);
        };
        if !snat::icmp_checksum_ok(d, ip, icmp) {
            return Err(DropReason::MalformedTransport);
        }
        let Some(RouteTarget::LocalPod { port, mac }) = tables.routes.lookup_v4(pod.addr) else {
            return Err(DropReason::NoRoute);
        };
        if ip.ttl <= 1 {
            return Err(DropReason::TtlExpired);
        }
        let d = frame.data_mut();
        let t = snat::ErrorTranslation {
            quoted_src: Some(pod),
            outer_dst: Some(pod.addr),
            ..Default::default()
        };
        let unmasqueraded = snat::untranslate_error(d, ip, icmp, &quoted, quoted_dst, t)?;
        // About a pod's Service flow to an endpoint outside the cluster (DNATed, then
        // masqueraded), the error is now one about the DNATed flow: un-SNAT, then
        // un-DNAT, as for its replies (`finish_unmasquerade`).
        self.unmasqueraded_to_local_pod(frame, &unmasqueraded, (*port, *mac), tables, now)
    }
}

/// `action` for a frame decapsulated from `outer`; when it hands the frame to the
/// worker that keeps its Service flow, the frame is first made what arrived again:
/// that worker decapsulates it (anti-spoofing check included) itself. The hand-off
/// is decided before anything in the frame is written (`service_reply`), and
/// decapsulation only moved the frame's start and end, so putting the outer header
/// back restores it.
fn as_arrived_if_handed_off(
    frame: &mut Frame<'_>,
    outer: &V4,
    action: Action,
) -> Result<Action, DropReason> {
    if let Action::Done(Verdict::HandOff { .. }) = action {
        vxlan::restore_outer(frame, outer)?;
    }
    Ok(action)
}

/// Whether a packet is the host's own, from its pod-network address, written into
/// the host port by the kernel (never one forwarded from the uplink: the kernel does
/// not route outside traffic with that source into the overlay).
fn from_the_host(frame: &Frame<'_>, ip: &V4, node: &NodeSettings) -> bool {
    Some(frame.meta.in_port) == node.host_port && Some(ip.src) == node.host_pod_addr
}

/// A packet from the uplink side that is not for a local pod (nor the node's
/// address): the host's when it came off the wire; when the host itself routed it
/// here (the host port), handing it back would loop between the kernel's routes and
/// ours — an address in the pod block that no pod has.
pub(super) fn not_for_a_pod(frame: &Frame<'_>, node: &NodeSettings) -> Step {
    if Some(frame.meta.in_port) == node.host_port {
        return Err(DropReason::HostLoop);
    }
    Ok(Verdict::ToHost)
}
