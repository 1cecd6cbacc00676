//! IPv4 from a pod port: the source check, the gateway's own answers, routing to a
//! local pod, into the overlay, onto the underlay or out (masqueraded) — the entry
//! point for everything a pod sends over IPv4.

use super::icmp::{self, IcmpError};
use super::service::ServiceStep;
use super::vxlan::{self, Tunnel};
use super::{
    Action, Pending, Pipeline, Step, decrement_ttl_v4, forward_to_local_pod_v4, overlay_mtu, snat,
    super_frame,
};
use crate::frame::Frame;
use crate::tables::{
    L4Proto, NatBinding, NodeSettings, RouteTarget, SnatError, Tables, owner_of_remote,
};
use crate::time::Now;
use crate::verdict::{DropReason, Verdict};
use crate::wire::MacAddr;
use crate::wire::classify::{self, V4};
use crate::wire::{bytes, rewrite};

impl Pipeline {
    pub(super) fn pod_v4(
        &mut self,
        frame: &mut Frame<'_>,
        ip: &V4,
        tables: &Tables,
        now: Now,
    ) -> Result<Action, DropReason> {
        let node = &tables.node;
        let in_port = frame.meta.in_port;
        // Before the source check: DHCP discovery comes from 0.0.0.0, and it is not
        // spoofing.
        if ip.dst.is_broadcast() || ip.dst.is_multicast() {
            return Err(DropReason::Unsupported);
        }
        match tables.routes.lookup_v4(ip.src) {
            Some(RouteTarget::LocalPod { port, .. }) if *port == in_port => {}
            _ => return Err(DropReason::SourceNotLocal),
        }
        let translated;
        let ip = match self.service_from_pod(frame, ip, tables, now)? {
            ServiceStep::Pass => ip,
            ServiceStep::Continue(t) => {
                translated = t;
                &translated
            }
            ServiceStep::Done(v) => return Ok(Action::Done(v)),
        };
        if ip.dst == node.node_addr || Some(ip.dst) == node.host_pod_addr {
            return Ok(Action::Done(Verdict::ToHost));
        }
        if ip.dst == node.gateway_v4 {
            let l4 = ip.l4.ok_or(DropReason::NoRoute)?;
            icmp::echo_reply_v4(frame, ip, &l4, node.gateway_mac)?;
            return Ok(Action::Done(Verdict::Reply));
        }
        let target = *tables.routes.lookup_v4(ip.dst).ok_or(DropReason::NoRoute)?;
        if ip.ttl <= 1 {
            return self
                .icmp_v4(
                    frame,
                    ip,
                    IcmpError::TimeExceeded,
                    node.gateway_v4,
                    node,
                    now,
                )
                .map(Action::Done);
        }
        self.route_v4(frame, ip, target, tables, now)
    }

    /// Sends a packet on to `target` (TTL already checked): a local pod, a node over
    /// VXLAN or the underlay, or out (masqueraded when it leaves the cluster, unless
    /// it already carries the node's address: a NodePort reply).
    pub(super) fn route_v4(
        &mut self,
        frame: &mut Frame<'_>,
        ip: &V4,
        target: RouteTarget,
        tables: &Tables,
        now: Now,
    ) -> Result<Action, DropReason> {
        let node = &tables.node;
        match target {
            RouteTarget::LocalPod { port, mac } => {
                forward_to_local_pod_v4(frame.data_mut(), ip, port, mac, node).map(Action::Done)
            }
            RouteTarget::VxlanNode {
                node_addr,
                vtep_mac,
                vni,
                next_hop_mac,
            } => {
                let mtu = overlay_mtu(node);
                if super_frame::ip_len_on_wire(frame, ip.total_len) > usize::from(mtu) {
                    return self.too_big_v4(frame, ip, mtu, node, now).map(Action::Done);
                }
                decrement_ttl_v4(frame.data_mut(), ip)?;
                let tunnel = Tunnel {
                    remote: node_addr,
                    remote_vtep: vtep_mac,
                    vni,
                    next_hop_mac,
                };
                let id = self.next_ip_id();
                vxlan::encapsulate(frame, node, &tunnel, ip.flow_hash(), id, ip.tos)?;
                Ok(Action::Done(Verdict::Forward {
                    port: node.uplink_port,
                }))
            }
            RouteTarget::UnderlayNode { next_hop_mac, .. } => {
                self.out_uplink_v4(frame, ip, next_hop_mac, false, tables, now)
            }
            RouteTarget::Outside { next_hop_mac } => {
                let masquerade =
                    node.snat && ip.src != node.node_addr && !tables.is_no_snat(ip.dst);
                self.out_uplink_v4(frame, ip, next_hop_mac, masquerade, tables, now)
            }
        }
    }

    /// Routes a pod's packet out of the uplink unencapsulated, or leaves it for the
    /// SNAT lookup when it is to be masqueraded.
    pub(super) fn out_uplink_v4(
        &mut self,
        frame: &mut Frame<'_>,
        ip: &V4,
        next_hop_mac: MacAddr,
        masquerade: bool,
        tables: &Tables,
        now: Now,
    ) -> Result<Action, DropReason> {
        let node = &tables.node;
        if super_frame::ip_len_on_wire(frame, ip.total_len) > usize::from(node.uplink_mtu) {
            return self
                .too_big_v4(frame, ip, node.uplink_mtu, node, now)
                .map(Action::Done);
        }
        if masquerade {
            // The worker that owns the destination translates the flow (see
            // `tables::snat`); the frame is still as the pod sent it.
            let p = masquerade_key(frame.data(), ip, next_hop_mac)?;
            return match owner_of_remote(&self.snat_config, p.key.proto, p.key.dst, p.key.dst_port)
            {
                Some(owner) if owner != self.worker => {
                    Ok(Action::Done(Verdict::HandOff { worker: owner }))
                }
                _ => Ok(Action::Masquerade(p)),
            };
        }
        let d = frame.data_mut();
        decrement_ttl_v4(d, ip)?;
        bytes::set_macs(d, 0, next_hop_mac, node.uplink_mac)
            .ok_or(DropReason::MalformedEthernet)?;
        Ok(Action::Done(Verdict::Forward {
            port: node.routed_port,
        }))
    }

    /// Second half of masquerading, once the SNAT shard answered.
    pub(super) fn finish_masquerade(
        &mut self,
        frame: &mut Frame<'_>,
        p: &Pending,
        binding: Result<NatBinding, SnatError>,
        tables: &Tables,
        now: Now,
    ) -> Step {
        let node = &tables.node;
        let binding = match binding {
            Ok(b) => b,
            Err(SnatError::PortsExhausted) => return self.refuse_exhausted(frame, p, node, now),
            Err(e) => return Err(e.into()),
        };
        let d = frame.data_mut();
        rewrite::rewrite_source(d, &p.ip, &p.l4, binding.addr, binding.port)
            .ok_or(DropReason::MalformedTransport)?;
        // `p.ip.src` is stale now, but the TTL update reads the words it changes.
        decrement_ttl_v4(d, &p.ip)?;
        bytes::set_macs(d, 0, p.next_hop_mac, node.uplink_mac)
            .ok_or(DropReason::MalformedEthernet)?;
        Ok(Verdict::Forward {
            port: node.routed_port,
        })
    }

    /// No NAT port is free towards the destination: the pod hears ICMP
    /// "communication administratively prohibited" (type 3 code 13) from its
    /// gateway, so its connect fails at once (Linux: EHOSTUNREACH) instead of
    /// timing out, and the refusal is counted and logged. ICMP rather than a TCP
    /// reset: one answer for TCP, UDP and ping alike, it blames the network rather
    /// than the server ("connection refused" would), and it is rate limited like
    /// every error the dataplane originates.
    pub(super) fn refuse_exhausted(
        &mut self,
        frame: &mut Frame<'_>,
        p: &Pending,
        node: &NodeSettings,
        now: Now,
    ) -> Step {
        self.exhaustion
            .refused(self.worker, &p.key, &self.snat_config, now);
        let reason = DropReason::SnatPortsExhausted;
        match self.icmp_v4(
            frame,
            &p.ip,
            IcmpError::AdminProhibited,
            node.gateway_v4,
            node,
            now,
        ) {
            Ok(_) => Ok(Verdict::Refuse(reason)),
            Err(_) => Err(reason),
        }
    }
}

/// The flow key of a pod's packet to masquerade, or why it cannot be.
pub(super) fn masquerade_key(
    d: &[u8],
    ip: &V4,
    next_hop_mac: MacAddr,
) -> Result<Pending, DropReason> {
    if ip.frag_offset != 0 {
        return Err(DropReason::UntranslatableFragment);
    }
    let l4 = ip.l4.ok_or(DropReason::Unsupported)?;
    let key = snat::flow_key(ip, &l4).ok_or(DropReason::Unsupported)?;
    if key.proto == L4Proto::IcmpEcho && l4.icmp_type != classify::ICMP_ECHO_REQUEST {
        // A pod answering a ping from outside: there is no flow to answer for.
        return Err(DropReason::Unsupported);
    }
    Ok(Pending {
        ip: *ip,
        l4,
        tcp: snat::tcp_segment(d, ip, &l4),
        key,
        next_hop_mac,
        not_vxlan: false,
    })
}
