//! The sans-IO pipeline: a frame, the current [`Tables`] and the time in; a
//! [`Verdict`] out, with the frame's bytes already rewritten for it.
//!
//! ```text
//!  from a pod port                              from the uplink
//!  ───────────────                              ───────────────
//!  ARP for gateway ──► Reply (ARP reply)        ARP, non-IP, VLAN, not to our MAC ──► ToHost
//!  NS for gateway  ──► Reply (NA)               to node_addr:
//!  source not this pod's ──► Drop                 UDP to vxlan_port ──► decap ──► pod port
//!  to node ──► ToHost                             NAT reply (SNAT on) ──► un-SNAT ──► pod port
//!  echo to gateway ──► Reply (rest: Drop)
//!  route(dst):                                      (owned by another worker ──► HandOff)
//!    LocalPod     ──► MACs, TTL ──► pod port        anything else ──► ToHost
//!    VxlanNode    ──► TTL, MTU, encap ──► uplink  to a local pod (underlay) ──► pod port
//!    UnderlayNode ──► MACs, TTL, MTU ──► uplink   anything else ──► ToHost (from the
//!                                                   host port: Drop, it would loop)
//!    Outside      ──► MACs, TTL, MTU, SNAT ──► uplink
//!      (destination owned by another worker ──► HandOff; no NAT port ──► Refuse,
//!       ICMP administratively prohibited to the pod)
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
//! - A decapsulated packet must come from a pod block routed to the node that sent it
//!   (outer source address); anything else is `VxlanSpoofedSource`: a node could
//!   otherwise speak for another node's pods or for the outside.
//! - IPv6 hop-limit expiry is answered with ICMPv6 time exceeded as IPv4's TTL expiry
//!   is with ICMP: from the gateway towards pods, from the node's IPv6 address towards
//!   the uplink (dropped as `TtlExpired` when the node has none).
//! - Decapsulated packets whose TTL expires are dropped (`TtlExpired`) without an ICMP
//!   error, which would have to be encapsulated back; replies to masqueraded flows
//!   likewise.
//! - IPv6 has no SNAT: IPv6 pod traffic to the outside while SNAT is on is dropped as
//!   `Unsupported` (the pod's address would leak or the reply would never come back).
//! - Pod traffic to multicast or broadcast addresses is not forwarded (`Unsupported`).
//! - The dataplane never fragments: an oversized DF packet gets "fragmentation
//!   needed" with the egress MTU (uplink MTU − 50 into the overlay), one without DF
//!   is dropped as `FragmentationNeeded`. ICMP errors are rate limited per worker.
//! - A UDP packet to the VXLAN port from a node not in `known_vteps` is looked up as
//!   a possible NAT reply (the SNAT range may contain 8472) and otherwise dropped as
//!   `VxlanUnknownSource`; VXLAN is never forwarded anywhere but to a local pod.
//! - The outer UDP checksum of VXLAN we send is zero (RFC 7348, flannel's default);
//!   received VXLAN is accepted with or without one (not verified).
//! - The host port (a TUN device, when there is one) is the uplink's twin for what
//!   the kernel routes to the dataplane: frames from it are judged as from the
//!   uplink. Plain routed packets leave through `NodeSettings::routed_port`: the
//!   uplink on AF_XDP, the host port on the TUN backend (the kernel owns the NIC
//!   there and forwards them); VXLAN always leaves through the uplink.
//! - `NodeSettings::mode` is not consulted per packet: the route table already says
//!   whether a block is reached over VXLAN or routed.
//!
//! [`Pipeline::process_batch`] does the work in two passes per group of 64 so that
//! the SNAT table lookups of the group overlap their cache misses. It decides as
//! [`Pipeline::process`] called frame by frame, except that within a group all
//! masquerading lookups happen before all reply lookups (a reply in the same group
//! as its flow's first packet finds the flow).

mod bytes;
mod exhaustion;
mod icmp;
mod neighbor;
mod parse;
mod snat;
mod vxlan;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use self::exhaustion::ExhaustionLog;
use self::icmp::{IcmpError, IcmpRateLimit};
use self::parse::{L4, Packet, V4, V6};
use self::vxlan::Tunnel;
use crate::frame::{Frame, PortId};
use crate::tables::{
    FlowKey, L4Proto, NatBinding, NodeSettings, RouteTarget, SnatConfig, SnatError, SnatShard,
    Tables, owner_of_remote,
};
use crate::time::Now;
use crate::verdict::{DropReason, Verdict, WorkerId};
use crate::wire::MacAddr;

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
    exhaustion: ExhaustionLog,
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
            exhaustion: ExhaustionLog::new(),
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
        let step = match self.step(frame, tables, now) {
            Ok(Action::Done(v)) => Ok(v),
            Ok(Action::Masquerade(p)) => {
                let r = self
                    .snat
                    .outbound(&p.key, tables.node.node_addr, p.l4.tcp_flags, now);
                self.finish_masquerade(frame, &p, r, tables, now)
            }
            Ok(Action::Unmasquerade(p)) => {
                let r = self.snat.inbound(&p.key, p.l4.tcp_flags, now);
                self.finish_unmasquerade(frame, &p, r, tables)
            }
            Err(reason) => Err(reason),
        };
        step.unwrap_or_else(Verdict::Drop)
    }

    /// Processes a batch: `verdicts[i]` is the verdict for `frames[i]`. Extra verdict
    /// slots are left alone; frames without a slot are not processed.
    ///
    /// In groups of [`MAX_BATCH`]: every frame is classified and routed first; frames
    /// that need the SNAT table only have their flow key taken. Then the keys are
    /// resolved together with [`SnatShard::outbound_batch`] and
    /// [`SnatShard::inbound_batch`], which overlap their cache misses, and those frames
    /// are finished. With a million tracked flows this is what keeps a lookup from
    /// costing one full memory latency per packet.
    pub fn process_batch(
        &mut self,
        frames: &mut [Frame<'_>],
        tables: &Tables,
        now: Now,
        verdicts: &mut [Verdict],
    ) {
        let n = frames.len().min(verdicts.len());
        let (Some(frames), Some(verdicts)) = (frames.get_mut(..n), verdicts.get_mut(..n)) else {
            return;
        };
        for (f, v) in frames
            .chunks_mut(MAX_BATCH)
            .zip(verdicts.chunks_mut(MAX_BATCH))
        {
            self.process_group(f, tables, now, v);
        }
    }

    fn process_group(
        &mut self,
        frames: &mut [Frame<'_>],
        tables: &Tables,
        now: Now,
        verdicts: &mut [Verdict],
    ) {
        let mut outs = Lookups::new();
        let mut ins = Lookups::new();
        for (i, (frame, verdict)) in frames.iter_mut().zip(verdicts.iter_mut()).enumerate() {
            *verdict = match self.step(frame, tables, now) {
                Ok(Action::Done(v)) => v,
                Ok(Action::Masquerade(p)) => {
                    outs.push(i, p);
                    continue;
                }
                Ok(Action::Unmasquerade(p)) => {
                    ins.push(i, p);
                    continue;
                }
                Err(reason) => Verdict::Drop(reason),
            };
        }
        if outs.len > 0 {
            let mut results = [Err(SnatError::TableFull); MAX_BATCH];
            let res = results.get_mut(..outs.len).unwrap_or_default();
            let node_addr = tables.node.node_addr;
            self.snat
                .outbound_batch(outs.keys(), outs.flags(), node_addr, now, res);
            for (j, r) in res.iter().enumerate() {
                let Some((i, p)) = outs.get(j) else { continue };
                if let (Some(frame), Some(v)) = (frames.get_mut(i), verdicts.get_mut(i)) {
                    *v = self
                        .finish_masquerade(frame, p, *r, tables, now)
                        .unwrap_or_else(Verdict::Drop);
                }
            }
        }
        if ins.len > 0 {
            let mut results = [None; MAX_BATCH];
            let res = results.get_mut(..ins.len).unwrap_or_default();
            self.snat.inbound_batch(ins.keys(), ins.flags(), now, res);
            for (j, r) in res.iter().enumerate() {
                let Some((i, p)) = ins.get(j) else { continue };
                if let (Some(frame), Some(v)) = (frames.get_mut(i), verdicts.get_mut(i)) {
                    *v = self
                        .finish_unmasquerade(frame, p, *r, tables)
                        .unwrap_or_else(Verdict::Drop);
                }
            }
        }
    }

    /// First pass over a frame: everything but the SNAT table lookup.
    fn step(
        &mut self,
        frame: &mut Frame<'_>,
        tables: &Tables,
        now: Now,
    ) -> Result<Action, DropReason> {
        let node = &tables.node;
        let from_uplink = node.is_uplink_side(frame.meta.in_port);
        let packet = parse::classify(frame.data());
        if from_uplink {
            // A frame the dataplane cannot even classify still belongs to the host if
            // it is not addressed to the node's MAC; only ours are judged.
            let to_us = bytes::rd_mac(frame.data(), 0) == Some(node.uplink_mac);
            return match packet {
                Ok(Packet::V4(ip)) if to_us => self.uplink_v4(frame, &ip, tables, now),
                Ok(Packet::V6(ip)) if to_us => {
                    self.uplink_v6(frame, &ip, tables, now).map(Action::Done)
                }
                Err(reason) if to_us => Err(reason),
                _ => Ok(Action::Done(Verdict::ToHost)),
            };
        }
        match packet? {
            Packet::Arp => neighbor::answer_arp(frame, node).map(|()| Action::Done(Verdict::Reply)),
            Packet::V4(ip) => self.pod_v4(frame, &ip, tables, now),
            Packet::V6(ip) => self.pod_v6(frame, &ip, tables, now).map(Action::Done),
            Packet::Other => Err(DropReason::UnsupportedEtherType),
        }
    }

    // ── IPv4 from a pod ─────────────────────────────────────────────────────────

    fn pod_v4(
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
        if ip.dst == node.node_addr {
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
        match target {
            RouteTarget::LocalPod { port, mac } => {
                let d = frame.data_mut();
                decrement_ttl_v4(d, ip)?;
                bytes::set_macs(d, 0, mac, node.gateway_mac)
                    .ok_or(DropReason::MalformedEthernet)?;
                Ok(Action::Done(Verdict::Forward { port }))
            }
            RouteTarget::VxlanNode {
                node_addr,
                vtep_mac,
                vni,
                next_hop_mac,
            } => {
                let mtu = overlay_mtu(node);
                if ip.total_len > usize::from(mtu) {
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
                let masquerade = node.snat && !tables.is_no_snat(ip.dst);
                self.out_uplink_v4(frame, ip, next_hop_mac, masquerade, tables, now)
            }
        }
    }

    /// Routes a pod's packet out of the uplink unencapsulated, or leaves it for the
    /// SNAT lookup when it is to be masqueraded.
    fn out_uplink_v4(
        &mut self,
        frame: &mut Frame<'_>,
        ip: &V4,
        next_hop_mac: MacAddr,
        masquerade: bool,
        tables: &Tables,
        now: Now,
    ) -> Result<Action, DropReason> {
        let node = &tables.node;
        if ip.total_len > usize::from(node.uplink_mtu) {
            return self
                .too_big_v4(frame, ip, node.uplink_mtu, node, now)
                .map(Action::Done);
        }
        if masquerade {
            // The worker that owns the destination translates the flow (see
            // `tables::snat`); the frame is still as the pod sent it.
            let p = masquerade_key(ip, next_hop_mac)?;
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
    fn finish_masquerade(
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
        snat::rewrite_source(d, &p.ip, &p.l4, binding).ok_or(DropReason::MalformedTransport)?;
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
    fn refuse_exhausted(
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
        let src = if node.is_uplink_side(frame.meta.in_port) {
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

    fn uplink_v4(
        &mut self,
        frame: &mut Frame<'_>,
        ip: &V4,
        tables: &Tables,
        now: Now,
    ) -> Result<Action, DropReason> {
        let node = &tables.node;
        if ip.dst == node.node_addr {
            if let Some(l4) = ip.l4
                && l4.proto == parse::PROTO_UDP
                && l4.dport == node.vxlan_port
            {
                let known = tables.known_vteps.contains(ip.src);
                if node.snat && !known {
                    // The SNAT port range may include the VXLAN port: a reply to a
                    // masqueraded flow from a non-node wins, else it is bad VXLAN.
                    return match self.unmasquerade(frame, ip, tables)? {
                        Action::Done(Verdict::ToHost) => Err(DropReason::VxlanUnknownSource),
                        Action::Unmasquerade(p) => Ok(Action::Unmasquerade(Pending {
                            not_vxlan: true,
                            ..p
                        })),
                        other => Ok(other),
                    };
                }
                return self.decap(frame, ip, known, tables).map(Action::Done);
            }
            if node.snat {
                return self.unmasquerade(frame, ip, tables);
            }
            return Ok(Action::Done(Verdict::ToHost));
        }
        match tables.routes.lookup_v4(ip.dst) {
            Some(RouteTarget::LocalPod { port, mac }) => {
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
                let (port, mac) = (*port, *mac);
                let d = frame.data_mut();
                decrement_ttl_v4(d, ip)?;
                bytes::set_macs(d, 0, mac, node.gateway_mac)
                    .ok_or(DropReason::MalformedEthernet)?;
                Ok(Action::Done(Verdict::Forward { port }))
            }
            _ => not_for_a_pod(frame, node).map(Action::Done),
        }
    }

    fn decap(
        &mut self,
        frame: &mut Frame<'_>,
        outer: &V4,
        known_source: bool,
        tables: &Tables,
    ) -> Step {
        vxlan::decapsulate(frame, outer, known_source, &tables.node)?;
        let inner = match parse::classify(frame.data()) {
            Ok(p) => p,
            Err(_) => return Err(DropReason::VxlanMalformed),
        };
        let (src, dst, ttl) = match inner {
            Packet::V4(ip) => (IpAddr::V4(ip.src), IpAddr::V4(ip.dst), ip.ttl),
            Packet::V6(ip) => (IpAddr::V6(ip.src), IpAddr::V6(ip.dst), ip.hop_limit),
            Packet::Arp | Packet::Other => return Err(DropReason::UnsupportedEtherType),
        };
        let Some(RouteTarget::LocalPod { port, mac }) = tables.routes.lookup(dst) else {
            return Err(DropReason::VxlanNotForUs);
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
    /// (left for the SNAT lookup), an ICMP error about one, or the host's own.
    fn unmasquerade(
        &mut self,
        frame: &mut Frame<'_>,
        ip: &V4,
        tables: &Tables,
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
        if l4.proto == parse::PROTO_ICMP && snat::is_translatable_error(l4.icmp_type) {
            return self
                .unmasquerade_icmp_error(frame, ip, &l4, tables)
                .map(Action::Done);
        }
        let Some(key) = snat::flow_key(ip, &l4) else {
            return host;
        };
        if key.proto == L4Proto::IcmpEcho && l4.icmp_type != parse::ICMP_ECHO_REPLY {
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
                key,
                next_hop_mac: MacAddr::ZERO,
                not_vxlan: false,
            })),
        }
    }

    /// Second half of un-masquerading, once the SNAT shard answered.
    fn finish_unmasquerade(
        &mut self,
        frame: &mut Frame<'_>,
        p: &Pending,
        pod: Option<NatBinding>,
        tables: &Tables,
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
        snat::rewrite_destination(d, &p.ip, &p.l4, pod).ok_or(DropReason::MalformedTransport)?;
        decrement_ttl_v4(d, &p.ip)?;
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
        if ip.total_len > usize::from(mtu) {
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

    fn uplink_v6(&mut self, frame: &mut Frame<'_>, ip: &V6, tables: &Tables, now: Now) -> Step {
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

    /// Replaces the frame with an ICMPv6 error from `src` about `ip`, or drops it when
    /// no error may be sent (or there is no address to send it from).
    fn icmp_v6(
        &mut self,
        frame: &mut Frame<'_>,
        ip: &V6,
        kind: IcmpError,
        src: Option<Ipv6Addr>,
        node: &NodeSettings,
        now: Now,
    ) -> Step {
        let Some(src) = src else {
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

/// What the first pass decided about a frame.
enum Action {
    Done(Verdict),
    /// A pod's packet to masquerade, waiting for its SNAT binding.
    Masquerade(Pending),
    /// A packet to the node address that may be a reply to a masqueraded flow.
    Unmasquerade(Pending),
}

/// A frame waiting for the SNAT shard: what the second pass needs to finish it.
#[derive(Clone, Copy, Debug)]
struct Pending {
    ip: V4,
    l4: L4,
    key: FlowKey,
    next_hop_mac: MacAddr,
    /// UDP to the VXLAN port from a non-node: without a flow it is bad VXLAN, not the
    /// host's.
    not_vxlan: bool,
}

/// The flow key of a pod's packet to masquerade, or why it cannot be.
fn masquerade_key(ip: &V4, next_hop_mac: MacAddr) -> Result<Pending, DropReason> {
    if ip.frag_offset != 0 {
        return Err(DropReason::UntranslatableFragment);
    }
    let l4 = ip.l4.ok_or(DropReason::Unsupported)?;
    let key = snat::flow_key(ip, &l4).ok_or(DropReason::Unsupported)?;
    if key.proto == L4Proto::IcmpEcho && l4.icmp_type != parse::ICMP_ECHO_REQUEST {
        // A pod answering a ping from outside: there is no flow to answer for.
        return Err(DropReason::Unsupported);
    }
    Ok(Pending {
        ip: *ip,
        l4,
        key,
        next_hop_mac,
        not_vxlan: false,
    })
}

/// The SNAT lookups of one group of frames: frame index and pending state per key,
/// keys and TCP flags in the contiguous slices the batch calls take.
struct Lookups {
    len: usize,
    keys: [FlowKey; MAX_BATCH],
    flags: [u8; MAX_BATCH],
    pending: [Option<(usize, Pending)>; MAX_BATCH],
}

impl Lookups {
    fn new() -> Self {
        const NO_KEY: FlowKey = FlowKey {
            proto: L4Proto::Udp,
            src: Ipv4Addr::UNSPECIFIED,
            src_port: 0,
            dst: Ipv4Addr::UNSPECIFIED,
            dst_port: 0,
        };
        Lookups {
            len: 0,
            keys: [NO_KEY; MAX_BATCH],
            flags: [0; MAX_BATCH],
            pending: [None; MAX_BATCH],
        }
    }

    fn push(&mut self, frame: usize, p: Pending) {
        if let (Some(k), Some(f), Some(slot)) = (
            self.keys.get_mut(self.len),
            self.flags.get_mut(self.len),
            self.pending.get_mut(self.len),
        ) {
            *k = p.key;
            *f = p.l4.tcp_flags;
            *slot = Some((frame, p));
            self.len += 1;
        }
    }

    fn keys(&self) -> &[FlowKey] {
        self.keys.get(..self.len).unwrap_or_default()
    }

    fn flags(&self) -> &[u8] {
        self.flags.get(..self.len).unwrap_or_default()
    }

    fn get(&self, j: usize) -> Option<(usize, &Pending)> {
        self.pending.get(j)?.as_ref().map(|(i, p)| (*i, p))
    }
}

/// A packet from the uplink side that is not for a local pod (nor the node's
/// address): the host's when it came off the wire; when the host itself routed it
/// here (the host port), handing it back would loop between the kernel's routes and
/// ours — an address in the pod block that no pod has.
fn not_for_a_pod(frame: &Frame<'_>, node: &NodeSettings) -> Step {
    if Some(frame.meta.in_port) == node.host_port {
        return Err(DropReason::HostLoop);
    }
    Ok(Verdict::ToHost)
}

/// The pod MTU in overlay mode: the uplink's minus the VXLAN overhead.
fn overlay_mtu(node: &NodeSettings) -> u16 {
    node.uplink_mtu.saturating_sub(VXLAN_OVERHEAD as u16)
}

/// The MAC the dataplane speaks with on `port`.
fn port_mac(port: PortId, node: &NodeSettings) -> MacAddr {
    if node.is_uplink_side(port) {
        node.uplink_mac
    } else {
        node.gateway_mac
    }
}

/// Decrements the IPv4 TTL and updates the header checksum (RFC 1624; the TTL shares
/// a 16-bit word with the protocol).
#[inline]
fn decrement_ttl_v4(d: &mut [u8], ip: &V4) -> Result<(), DropReason> {
    bytes::update16(d, ip.l3 + 8, ip.l3 + 10, |w| w.wrapping_sub(0x0100))
        .ok_or(DropReason::MalformedIpv4)
}

#[inline]
fn decrement_hop_limit(d: &mut [u8], ip: &V6) -> Result<(), DropReason> {
    bytes::wr8(d, ip.l3 + 7, ip.hop_limit.saturating_sub(1)).ok_or(DropReason::MalformedIpv6)
}
