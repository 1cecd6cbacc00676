//! The sans-IO pipeline: a frame, the current [`Tables`] and the time in; a
//! [`Verdict`] out, with the frame's bytes already rewritten for it.
//!
//! ```text
//!  from a pod port                              from the uplink
//!  ───────────────                              ───────────────
//!  ARP for gateway ──► Reply (ARP reply)        ARP, non-IP, VLAN, not to our MAC ──► ToHost
//!  NS for gateway  ──► Reply (NA)               to node_addr:
//!  source not this pod's ──► Drop                 UDP to vxlan_port ──► decap ──► pod port
//!  to node/gateway ──► ToHost                     NAT reply (SNAT on) ──► un-SNAT ──► pod port
//!  route(dst):                                      (owned by another worker ──► HandOff)
//!    LocalPod     ──► MACs, TTL ──► pod port        anything else ──► ToHost
//!    VxlanNode    ──► TTL, MTU, encap ──► uplink  to a local pod (underlay) ──► pod port
//!    UnderlayNode ──► MACs, TTL, MTU ──► uplink   anything else ──► ToHost
//!    Outside      ──► MACs, TTL, MTU, SNAT ──► uplink
//!  TTL expired / DF and too big ──► Reply (ICMP error)
//! ```
//!
//! Decisions worth knowing:
//! - ARP on the uplink always goes to the host: the host owns the node address and
//!   resolves its own next hops there. On pod ports only requests for the gateway
//!   address are answered; any other ARP is dropped as `ArpNotForUs`.
//! - The uplink is shared with the host, so anything on it that is not clearly
//!   hybridway's (VXLAN to us, a reply to a masqueraded flow, a packet for a local pod)
//!   goes to the host unchanged rather than being dropped.
//! - Pods may only send from their own address (`SourceNotLocal`): a pod spoofing
//!   another's address could otherwise fill the SNAT table in its name.
//! - Decapsulated packets whose TTL expires are dropped (`TtlExpired`) without an ICMP
//!   error, which would have to be encapsulated back; replies to masqueraded flows
//!   likewise.
//! - IPv6 has no SNAT: IPv6 pod traffic to the outside while SNAT is on is dropped as
//!   `Unsupported` (the pod's address would leak or the reply would never come back).
//! - Pod traffic to multicast or broadcast addresses is not forwarded (`Unsupported`).

mod bytes;
mod icmp;
mod neighbor;
mod parse;
mod snat;
mod vxlan;

use std::net::Ipv4Addr;

use self::icmp::{IcmpError, IcmpRateLimit};
use self::parse::{Packet, V4, V6};
use self::vxlan::Tunnel;
use crate::frame::{Frame, PortId};
use crate::tables::{NodeSettings, RouteTarget, SnatConfig, SnatShard, Tables, owner_of_port};
use crate::time::Now;
use crate::verdict::{DropReason, Verdict, WorkerId};
use crate::wire::checksum;

pub use self::vxlan::source_port as vxlan_source_port;

/// Bytes VXLAN over IPv4 adds: the overlay MTU is the uplink MTU minus this.
pub const VXLAN_OVERHEAD: usize = vxlan::OVERHEAD;

/// Largest batch [`Pipeline::process_batch`] is designed for.
pub const MAX_BATCH: usize = 64;

/// One worker's pipeline: its SNAT shard and the little state packet processing
/// keeps (IP identification counter, ICMP error rate limit).
#[derive(Debug)]
pub struct Pipeline {
    worker: WorkerId,
    snat_config: SnatConfig,
    snat: SnatShard,
    /// Identification of IPv4 headers we originate (outer VXLAN, ICMP errors).
    ip_id: u16,
    icmp_limit: IcmpRateLimit,
}

type Step = Result<Verdict, DropReason>;

impl Pipeline {
    pub fn new(worker: WorkerId, snat: &SnatConfig) -> Self {
        Pipeline {
            worker,
            snat_config: snat.clone(),
            snat: SnatShard::new(worker, snat),
            // Start each worker elsewhere so two workers' ids rarely collide.
            ip_id: worker.wrapping_mul(0x9e37),
            icmp_limit: IcmpRateLimit::new(),
        }
    }

    pub fn worker(&self) -> WorkerId {
        self.worker
    }

    /// This worker's SNAT shard (for stats).
    pub fn snat(&self) -> &SnatShard {
        &self.snat
    }

    /// This worker's SNAT shard (for sweeping expired flows between batches).
    pub fn snat_mut(&mut self) -> &mut SnatShard {
        &mut self.snat
    }

    /// Decides what happens to one frame, rewriting it as needed.
    pub fn process(&mut self, frame: &mut Frame<'_>, tables: &Tables, now: Now) -> Verdict {
        match self.step(frame, tables, now) {
            Ok(v) => v,
            Err(reason) => Verdict::Drop(reason),
        }
    }

    /// Processes a batch: `verdicts[i]` is the verdict for `frames[i]`. Extra verdict
    /// slots are left alone; frames without a slot are not processed.
    ///
    /// Frames are classified and resolved one after the other: the per-frame work is
    /// short enough that the CPU's out-of-order window already overlaps the next
    /// frame's header loads with this frame's table lookups.
    pub fn process_batch(
        &mut self,
        frames: &mut [Frame<'_>],
        tables: &Tables,
        now: Now,
        verdicts: &mut [Verdict],
    ) {
        for (frame, verdict) in frames.iter_mut().zip(verdicts.iter_mut()) {
            *verdict = self.process(frame, tables, now);
        }
    }

    fn step(&mut self, frame: &mut Frame<'_>, tables: &Tables, now: Now) -> Step {
        let node = &tables.node;
        let from_uplink = frame.meta.in_port == node.uplink_port;
        let packet = parse::classify(frame.data());
        if from_uplink {
            // A frame the dataplane cannot even classify still belongs to the host if
            // it is not addressed to the node's MAC; only ours are judged.
            let to_us = bytes::rd_mac(frame.data(), 0) == Some(node.uplink_mac);
            return match packet {
                Ok(Packet::V4(ip)) if to_us => self.uplink_v4(frame, &ip, tables, now),
                Ok(Packet::V6(ip)) if to_us => self.uplink_v6(frame, &ip, tables),
                Err(reason) if to_us => Err(reason),
                _ => Ok(Verdict::ToHost),
            };
        }
        match packet? {
            Packet::Arp => neighbor::answer_arp(frame, node).map(|()| Verdict::Reply),
            Packet::V4(ip) => self.pod_v4(frame, &ip, tables, now),
            Packet::V6(ip) => self.pod_v6(frame, &ip, tables, now),
            Packet::Other => Err(DropReason::UnsupportedEtherType),
        }
    }

    // ── IPv4 from a pod ─────────────────────────────────────────────────────────

    fn pod_v4(&mut self, frame: &mut Frame<'_>, ip: &V4, tables: &Tables, now: Now) -> Step {
        let node = &tables.node;
        let in_port = frame.meta.in_port;
        match tables.routes.lookup_v4(ip.src) {
            Some(RouteTarget::LocalPod { port, .. }) if *port == in_port => {}
            _ => return Err(DropReason::SourceNotLocal),
        }
        if ip.dst.is_broadcast() || ip.dst.is_multicast() {
            return Err(DropReason::Unsupported);
        }
        if ip.dst == node.node_addr || ip.dst == node.gateway_v4 {
            return Ok(Verdict::ToHost);
        }
        let target = *tables.routes.lookup_v4(ip.dst).ok_or(DropReason::NoRoute)?;
        if ip.ttl <= 1 {
            return self.icmp_v4(
                frame,
                ip,
                IcmpError::TimeExceeded,
                node.gateway_v4,
                node,
                now,
            );
        }
        match target {
            RouteTarget::LocalPod { port, mac } => {
                let d = frame.data_mut();
                decrement_ttl_v4(d, ip)?;
                bytes::set_macs(d, 0, mac, node.gateway_mac)
                    .ok_or(DropReason::MalformedEthernet)?;
                Ok(Verdict::Forward { port })
            }
            RouteTarget::VxlanNode {
                node_addr,
                vtep_mac,
                vni,
                next_hop_mac,
            } => {
                let mtu = overlay_mtu(node);
                if ip.total_len > usize::from(mtu) {
                    return self.too_big_v4(frame, ip, mtu, node, now);
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
                Ok(Verdict::Forward {
                    port: node.uplink_port,
                })
            }
            RouteTarget::UnderlayNode { next_hop_mac, .. } => {
                self.out_uplink_v4(frame, ip, next_hop_mac, false, tables, now)
            }
            RouteTarget::Outside { next_hop_mac } => {
                let masquerade = node.snat && !tables.is_no_snat(ip.dst);
                self.out_uplink_v4(frame, ip, next_hop_mac, masquerade, tables, now)
            }
        }
    }

    /// Routes a pod's packet out of the uplink unencapsulated, masquerading it first
    /// when asked.
    fn out_uplink_v4(
        &mut self,
        frame: &mut Frame<'_>,
        ip: &V4,
        next_hop_mac: crate::wire::MacAddr,
        masquerade: bool,
        tables: &Tables,
        now: Now,
    ) -> Step {
        let node = &tables.node;
        if ip.total_len > usize::from(node.uplink_mtu) {
            return self.too_big_v4(frame, ip, node.uplink_mtu, node, now);
        }
        if masquerade {
            self.masquerade(frame, ip, node.node_addr, now)?;
        }
        let d = frame.data_mut();
        // After masquerading `ip.src` is stale, but the TTL/checksum update only reads
        // the header words it changes from the frame.
        decrement_ttl_v4(d, ip)?;
        bytes::set_macs(d, 0, next_hop_mac, node.uplink_mac)
            .ok_or(DropReason::MalformedEthernet)?;
        Ok(Verdict::Forward {
            port: node.uplink_port,
        })
    }

    fn masquerade(
        &mut self,
        frame: &mut Frame<'_>,
        ip: &V4,
        nat_addr: Ipv4Addr,
        now: Now,
    ) -> Result<(), DropReason> {
        if ip.frag_offset != 0 {
            return Err(DropReason::UntranslatableFragment);
        }
        let l4 = ip.l4.ok_or(DropReason::Unsupported)?;
        let key = snat::flow_key(ip, &l4).ok_or(DropReason::Unsupported)?;
        if key.proto == crate::tables::L4Proto::IcmpEcho && l4.icmp_type != parse::ICMP_ECHO_REQUEST
        {
            // A pod answering a ping from outside: there is no flow to answer for.
            return Err(DropReason::Unsupported);
        }
        let binding = self
            .snat
            .outbound(&key, nat_addr, l4.tcp_flags, now)
            .map_err(DropReason::from)?;
        snat::rewrite_source(frame.data_mut(), ip, &l4, binding)
            .ok_or(DropReason::MalformedTransport)
    }

    fn too_big_v4(
        &mut self,
        frame: &mut Frame<'_>,
        ip: &V4,
        mtu: u16,
        node: &NodeSettings,
        now: Now,
    ) -> Step {
        if !ip.df {
            // The dataplane does not fragment; senders that allow it still get no
            // error, as RFC 1191 only covers DF packets.
            return Err(DropReason::FragmentationNeeded);
        }
        let src = if frame.meta.in_port == node.uplink_port {
            node.node_addr
        } else {
            node.gateway_v4
        };
        self.icmp_v4(frame, ip, IcmpError::TooBig { mtu }, src, node, now)
    }

    /// Replaces the frame with an ICMP error about `ip`, or drops it when no error may
    /// be sent.
    fn icmp_v4(
        &mut self,
        frame: &mut Frame<'_>,
        ip: &V4,
        kind: IcmpError,
        src: Ipv4Addr,
        node: &NodeSettings,
        now: Now,
    ) -> Step {
        if !icmp::may_send_v4(ip) {
            return Err(kind.drop_reason());
        }
        if !self.icmp_limit.allow(now) {
            return Err(DropReason::IcmpRateLimited);
        }
        let mac = port_mac(frame.meta.in_port, node);
        let id = self.next_ip_id();
        icmp::build_v4(frame, ip, kind, src, mac, id)?;
        Ok(Verdict::Reply)
    }

    // ── IPv4 from the uplink ────────────────────────────────────────────────────

    fn uplink_v4(&mut self, frame: &mut Frame<'_>, ip: &V4, tables: &Tables, now: Now) -> Step {
        let node = &tables.node;
        if ip.dst == node.node_addr {
            if let Some(l4) = ip.l4
                && l4.proto == parse::PROTO_UDP
                && l4.dport == node.vxlan_port
            {
                return self.decap(frame, ip, tables);
            }
            if node.snat {
                return self.unmasquerade(frame, ip, tables, now);
            }
            return Ok(Verdict::ToHost);
        }
        match tables.routes.lookup_v4(ip.dst) {
            Some(RouteTarget::LocalPod { port, mac }) => {
                if ip.ttl <= 1 {
                    return self.icmp_v4(
                        frame,
                        ip,
                        IcmpError::TimeExceeded,
                        node.node_addr,
                        node,
                        now,
                    );
                }
                let (port, mac) = (*port, *mac);
                let d = frame.data_mut();
                decrement_ttl_v4(d, ip)?;
                bytes::set_macs(d, 0, mac, node.gateway_mac)
                    .ok_or(DropReason::MalformedEthernet)?;
                Ok(Verdict::Forward { port })
            }
            _ => Ok(Verdict::ToHost),
        }
    }

    fn decap(&mut self, frame: &mut Frame<'_>, outer: &V4, tables: &Tables) -> Step {
        vxlan::decapsulate(frame, outer, tables)?;
        let inner = match parse::classify(frame.data()) {
            Ok(p) => p,
            Err(_) => return Err(DropReason::VxlanMalformed),
        };
        let (dst, ttl) = match inner {
            Packet::V4(ip) => (std::net::IpAddr::V4(ip.dst), ip.ttl),
            Packet::V6(ip) => (std::net::IpAddr::V6(ip.dst), ip.hop_limit),
            Packet::Arp | Packet::Other => return Err(DropReason::UnsupportedEtherType),
        };
        let Some(RouteTarget::LocalPod { port, mac }) = tables.routes.lookup(dst) else {
            return Err(DropReason::VxlanNotForUs);
        };
        if ttl <= 1 {
            return Err(DropReason::TtlExpired);
        }
        let d = frame.data_mut();
        match inner {
            Packet::V4(ip) => decrement_ttl_v4(d, &ip)?,
            Packet::V6(ip) => decrement_hop_limit(d, &ip)?,
            Packet::Arp | Packet::Other => {}
        }
        bytes::set_macs(d, 0, *mac, tables.node.gateway_mac)
            .ok_or(DropReason::MalformedEthernet)?;
        Ok(Verdict::Forward { port: *port })
    }

    /// A packet to the node address while SNAT is on: a reply to a masqueraded flow
    /// (translated back to the pod), an ICMP error about one, or the host's own.
    fn unmasquerade(&mut self, frame: &mut Frame<'_>, ip: &V4, tables: &Tables, now: Now) -> Step {
        if ip.frag_offset != 0 {
            // Without the transport header the flow is unknown; the host reassembles
            // its own fragments.
            return Ok(Verdict::ToHost);
        }
        let Some(l4) = ip.l4 else {
            return Ok(Verdict::ToHost);
        };
        if l4.proto == parse::PROTO_ICMP && snat::is_translatable_error(l4.icmp_type) {
            return self.unmasquerade_icmp_error(frame, ip, &l4, tables);
        }
        let Some(key) = snat::flow_key(ip, &l4) else {
            return Ok(Verdict::ToHost);
        };
        if key.proto == crate::tables::L4Proto::IcmpEcho && l4.icmp_type != parse::ICMP_ECHO_REPLY {
            // A ping to the node itself.
            return Ok(Verdict::ToHost);
        }
        match owner_of_port(&self.snat_config, key.dst_port) {
            None => return Ok(Verdict::ToHost),
            Some(owner) if owner != self.worker => return Ok(Verdict::HandOff { worker: owner }),
            Some(_) => {}
        }
        let Some(pod) = self.snat.inbound(&key, l4.tcp_flags, now) else {
            return Ok(Verdict::ToHost);
        };
        let Some(RouteTarget::LocalPod { port, mac }) = tables.routes.lookup_v4(pod.addr) else {
            // The pod is gone; its flow will time out.
            return Err(DropReason::NoRoute);
        };
        if ip.ttl <= 1 {
            return Err(DropReason::TtlExpired);
        }
        let d = frame.data_mut();
        snat::rewrite_destination(d, ip, &l4, pod).ok_or(DropReason::MalformedTransport)?;
        decrement_ttl_v4(d, ip)?;
        bytes::set_macs(d, 0, *mac, tables.node.gateway_mac)
            .ok_or(DropReason::MalformedEthernet)?;
        Ok(Verdict::Forward { port: *port })
    }

    fn unmasquerade_icmp_error(
        &mut self,
        frame: &mut Frame<'_>,
        ip: &V4,
        icmp: &parse::L4,
        tables: &Tables,
    ) -> Step {
        let d = frame.data();
        let Some((quoted, quoted_dst)) = snat::quoted(d, ip, icmp) else {
            return Ok(Verdict::ToHost);
        };
        if quoted.src != tables.node.node_addr {
            return Ok(Verdict::ToHost);
        }
        let Some(key) = quoted.reply_key(quoted_dst) else {
            return Ok(Verdict::ToHost);
        };
        match owner_of_port(&self.snat_config, key.dst_port) {
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
        snat::untranslate_error(d, ip, icmp, &quoted, pod)?;
        decrement_ttl_v4(d, ip)?;
        bytes::set_macs(d, 0, *mac, tables.node.gateway_mac)
            .ok_or(DropReason::MalformedEthernet)?;
        Ok(Verdict::Forward { port: *port })
    }

    // ── IPv6 ────────────────────────────────────────────────────────────────────

    fn pod_v6(&mut self, frame: &mut Frame<'_>, ip: &V6, tables: &Tables, now: Now) -> Step {
        let node = &tables.node;
        if neighbor::is_neighbor_solicit(ip) {
            return neighbor::answer_ns(frame, ip, node).map(|()| Verdict::Reply);
        }
        match tables.routes.lookup_v6(ip.src) {
            Some(RouteTarget::LocalPod { port, .. }) if *port == frame.meta.in_port => {}
            _ => return Err(DropReason::SourceNotLocal),
        }
        if ip.dst.is_multicast() {
            return Err(DropReason::Unsupported);
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
            return self.icmp_v6(frame, ip, IcmpError::TimeExceeded, node, now);
        }
        let mtu = match target {
            RouteTarget::LocalPod { .. } => u16::MAX,
            RouteTarget::VxlanNode { .. } => overlay_mtu(node),
            RouteTarget::UnderlayNode { .. } | RouteTarget::Outside { .. } => node.uplink_mtu,
        };
        if ip.total_len > usize::from(mtu) {
            // IPv6 routers never fragment: always "packet too big".
            return self.icmp_v6(frame, ip, IcmpError::TooBig { mtu }, node, now);
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
                    port: node.uplink_port,
                })
            }
        }
    }

    fn uplink_v6(&mut self, frame: &mut Frame<'_>, ip: &V6, tables: &Tables) -> Step {
        let node = &tables.node;
        match tables.routes.lookup_v6(ip.dst) {
            Some(RouteTarget::LocalPod { port, mac }) if Some(ip.dst) != node.node_addr_v6 => {
                if ip.hop_limit <= 1 {
                    return Err(DropReason::TtlExpired);
                }
                let (port, mac) = (*port, *mac);
                let d = frame.data_mut();
                decrement_hop_limit(d, ip)?;
                bytes::set_macs(d, 0, mac, node.gateway_mac)
                    .ok_or(DropReason::MalformedEthernet)?;
                Ok(Verdict::Forward { port })
            }
            _ => Ok(Verdict::ToHost),
        }
    }

    fn icmp_v6(
        &mut self,
        frame: &mut Frame<'_>,
        ip: &V6,
        kind: IcmpError,
        node: &NodeSettings,
        now: Now,
    ) -> Step {
        let Some(src) = node.gateway_v6 else {
            return Err(kind.drop_reason());
        };
        if !icmp::may_send_v6(ip) {
            return Err(kind.drop_reason());
        }
        if !self.icmp_limit.allow(now) {
            return Err(DropReason::IcmpRateLimited);
        }
        let mac = port_mac(frame.meta.in_port, node);
        icmp::build_v6(frame, ip, kind, src, mac)?;
        Ok(Verdict::Reply)
    }

    fn next_ip_id(&mut self) -> u16 {
        self.ip_id = self.ip_id.wrapping_add(1);
        self.ip_id
    }
}

/// The pod MTU in overlay mode: the uplink's minus the VXLAN overhead.
fn overlay_mtu(node: &NodeSettings) -> u16 {
    node.uplink_mtu.saturating_sub(VXLAN_OVERHEAD as u16)
}

/// The MAC the dataplane speaks with on `port`.
fn port_mac(port: PortId, node: &NodeSettings) -> crate::wire::MacAddr {
    if port == node.uplink_port {
        node.uplink_mac
    } else {
        node.gateway_mac
    }
}

/// Decrements the IPv4 TTL and updates the header checksum (RFC 1624; the TTL shares
/// a 16-bit word with the protocol).
#[inline]
fn decrement_ttl_v4(d: &mut [u8], ip: &V4) -> Result<(), DropReason> {
    let at = ip.l3 + 8;
    let old = bytes::rd16(d, at).ok_or(DropReason::MalformedIpv4)?;
    let new = old.wrapping_sub(0x0100);
    let c = bytes::rd16(d, ip.l3 + 10).ok_or(DropReason::MalformedIpv4)?;
    bytes::wr16(d, at, new).ok_or(DropReason::MalformedIpv4)?;
    bytes::wr16(d, ip.l3 + 10, checksum::update_u16(c, old, new)).ok_or(DropReason::MalformedIpv4)
}

#[inline]
fn decrement_hop_limit(d: &mut [u8], ip: &V6) -> Result<(), DropReason> {
    bytes::wr8(d, ip.l3 + 7, ip.hop_limit.saturating_sub(1)).ok_or(DropReason::MalformedIpv6)
}
