//! IPv6, from pods and from the uplink: neighbour solicitations for the gateway,
//! the source check, routing with hop limit and "packet too big" (IPv6 has no SNAT
//! here and is never fragmented).

use super::from_uplink::not_for_a_pod;
use super::icmp::IcmpError;
use super::vxlan::{self, Tunnel};
use super::{Pipeline, Step, neighbor, overlay_mtu, super_frame};
use crate::frame::Frame;
use crate::tables::{RouteTarget, Tables};
use crate::time::Now;
use crate::verdict::{DropReason, Verdict};
use crate::wire::classify::V6;
use crate::wire::{bytes, rewrite};

impl Pipeline {
    pub(super) fn pod_v6(
        &mut self,
        frame: &mut Frame<'_>,
        ip: &V6,
        tables: &Tables,
        now: Now,
    ) -> Step {
        let node = &tables.node;
        if neighbor::is_neighbor_solicit(ip) {
            return neighbor::answer_ns(frame, ip, node).map(|()| Verdict::Reply);
        }
        // Before the source check: router solicitations and MLD reports come from
        // link-local addresses, and they are not spoofing.
        if ip.dst.is_multicast() {
            return Err(DropReason::Unsupported);
        }
        match tables.routes.lookup_v6(ip.src) {
            Some(RouteTarget::LocalPod { port, .. }) if *port == frame.meta.in_port => {}
            _ => return Err(DropReason::SourceNotLocal),
        }
        if Some(ip.dst) == node.gateway_v6 || Some(ip.dst) == node.node_addr_v6 {
            return Ok(Verdict::ToHost);
        }
        let target = *tables.routes.lookup_v6(ip.dst).ok_or(DropReason::NoRoute)?;
        if node.snat
            && let RouteTarget::Outside { .. } = target
        {
            return Err(DropReason::Unsupported);
        }
        if ip.hop_limit <= 1 {
            return self.icmp_v6(
                frame,
                ip,
                IcmpError::TimeExceeded,
                node.gateway_v6,
                node,
                now,
            );
        }
        let mtu = match target {
            RouteTarget::LocalPod { .. } => u16::MAX,
            RouteTarget::VxlanNode { .. } => overlay_mtu(node),
            RouteTarget::UnderlayNode { .. } | RouteTarget::Outside { .. } => node.uplink_mtu,
        };
        if super_frame::ip_len_on_wire(frame, ip.total_len) > usize::from(mtu) {
            // IPv6 routers never fragment: always "packet too big".
            return self.icmp_v6(
                frame,
                ip,
                IcmpError::TooBig { mtu },
                node.gateway_v6,
                node,
                now,
            );
        }
        decrement_hop_limit(frame.data_mut(), ip)?;
        match target {
            RouteTarget::LocalPod { port, mac } => {
                bytes::set_macs(frame.data_mut(), 0, mac, node.gateway_mac)
                    .ok_or(DropReason::MalformedEthernet)?;
                Ok(Verdict::Forward { port })
            }
            RouteTarget::VxlanNode {
                node_addr,
                vtep_mac,
                vni,
                next_hop_mac,
            } => {
                let tunnel = Tunnel {
                    remote: node_addr,
                    remote_vtep: vtep_mac,
                    vni,
                    next_hop_mac,
                };
                let id = self.next_ip_id();
                vxlan::encapsulate(frame, node, &tunnel, ip.flow_hash(), id, ip.traffic_class)?;
                Ok(Verdict::Forward {
                    port: node.uplink_port,
                })
            }
            RouteTarget::UnderlayNode { next_hop_mac, .. }
            | RouteTarget::Outside { next_hop_mac } => {
                bytes::set_macs(frame.data_mut(), 0, next_hop_mac, node.uplink_mac)
                    .ok_or(DropReason::MalformedEthernet)?;
                Ok(Verdict::Forward {
                    port: node.routed_port,
                })
            }
        }
    }

    pub(super) fn uplink_v6(
        &mut self,
        frame: &mut Frame<'_>,
        ip: &V6,
        tables: &Tables,
        now: Now,
    ) -> Step {
        let node = &tables.node;
        match tables.routes.lookup_v6(ip.dst) {
            Some(RouteTarget::LocalPod { port, mac }) if Some(ip.dst) != node.node_addr_v6 => {
                if ip.hop_limit <= 1 {
                    // As IPv4 from the uplink: the error comes from the node's address.
                    let src = node.node_addr_v6;
                    return self.icmp_v6(frame, ip, IcmpError::TimeExceeded, src, node, now);
                }
                let (port, mac) = (*port, *mac);
                let d = frame.data_mut();
                decrement_hop_limit(d, ip)?;
                bytes::set_macs(d, 0, mac, node.gateway_mac)
                    .ok_or(DropReason::MalformedEthernet)?;
                Ok(Verdict::Forward { port })
            }
            _ => not_for_a_pod(frame, node),
        }
    }
}

#[inline]
pub(super) fn decrement_hop_limit(d: &mut [u8], ip: &V6) -> Result<(), DropReason> {
    rewrite::decrement_hop_limit(d, ip).ok_or(DropReason::MalformedIpv6)
}
