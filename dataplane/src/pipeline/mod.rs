//! The sans-IO pipeline: a frame, the current [`Tables`] and the time in; a
//! [`Verdict`] out, with the frame's bytes already rewritten for it.
//!
//! ```text
//!  from a pod port                              from the uplink
//!  ───────────────                              ───────────────
//!  ARP for gateway ──► Reply (ARP reply)        ARP, non-IP, VLAN, not to our MAC ──► ToHost
//!  NS for gateway  ──► Reply (NA)               to node_addr:
//!  source not this pod's ──► Drop                 UDP to vxlan_port ──► decap ──► pod port
//!  to node ──► ToHost                             NodePort ──► DNAT (Cluster: + masquerade
//!                                                   to the gateway) ──► routed like a pod's
//!                                                 NAT reply (SNAT on) ──► un-SNAT ──►
//!                                                   (Service reply: un-DNAT) ──► pod port
//!  echo to gateway ──► Reply (rest: Drop)
//!  route(dst):                                      (owned by another worker ──► HandOff)
//!    LocalPod     ──► MACs, TTL ──► pod port        anything else ──► ToHost
//!    VxlanNode    ──► TTL, MTU, encap ──► uplink  to a local pod (underlay) ──► pod port
//!    UnderlayNode ──► MACs, TTL, MTU ──► uplink   to the gateway, to the host's pod-network
//!    Outside      ──► MACs, TTL, MTU, SNAT ──► uplink address: Service reply, else ToHost
//!      (destination owned by another worker ──►   from the host port, the host's own to
//!       HandOff; no NAT port ──► Refuse, ICMP       another node's pod or a ClusterIP
//!       administratively prohibited to the pod)     ──► routed like a pod's
//!  TTL expired / DF and too big ──►               anything else ──► ToHost (from the
//!    Reply (ICMP error)                             host port: Drop, it would loop)
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
//! - A packet whose flow another worker keeps (SNAT: by the remote; Services: by the
//!   client, or the gateway port of a masqueraded flow) is handed off as it
//!   arrived: decapsulated VXLAN gets its outer header back first, so the owner
//!   checks it anew. One exception: the reply of a Service flow that was also
//!   masqueraded (an endpoint outside the cluster) is handed on once more after
//!   un-SNAT, to the Service flow's worker (see `service`).
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
//!
//! Files, one path each: `from_pod` (IPv4 from a pod port), `from_uplink` (IPv4
//! from the uplink and the host port), `ipv6` (IPv6 both ways), `batch` (the
//! batched SNAT lookups), `errors` (when an ICMP error answers a packet),
//! `service` (Kubernetes Services: DNAT to an endpoint and back, hooked into
//! `from_pod` and `from_uplink`), `node_port` (NodePorts from the uplink and their
//! replies); the header work lives in `vxlan`, `snat`, `icmp`
//! and `neighbor`.

mod batch;
mod errors;
mod exhaustion;
mod from_pod;
mod from_uplink;
mod icmp;
mod ipv6;
mod neighbor;
mod node_port;
mod service;
mod snat;
mod super_frame;
mod vxlan;

use self::exhaustion::ExhaustionLog;
use self::icmp::IcmpRateLimit;
use self::service::ServiceFlows;
use crate::frame::{Frame, PortId};
use crate::tables::{FlowKey, NodeSettings, SnatConfig, SnatShard, Tables, TcpSegment};
use crate::time::Now;
use crate::verdict::{DropReason, Verdict, WorkerId};
use crate::wire::MacAddr;
use crate::wire::classify::{self, L4, Packet, V4};
use crate::wire::vxlan::VXLAN_OVERHEAD_V4;
use crate::wire::{bytes, rewrite};

pub use self::vxlan::source_port as vxlan_source_port;

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
    services: ServiceFlows,
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
            services: ServiceFlows::new(snat.capacity_per_worker, snat.timeouts),
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
        let partial = super_frame::PartialChecksum::take(frame);
        let verdict = self.process_one(frame, tables, now);
        if let Some(p) = partial {
            p.restore(frame);
        }
        verdict
    }

    fn process_one(&mut self, frame: &mut Frame<'_>, tables: &Tables, now: Now) -> Verdict {
        let step = match self.step(frame, tables, now) {
            Ok(Action::Done(v)) => Ok(v),
            Ok(Action::Masquerade(p)) => {
                let r = self
                    .snat
                    .outbound(&p.key, tables.node.node_addr, p.tcp, now);
                self.finish_masquerade(frame, &p, r, tables, now)
            }
            Ok(Action::Unmasquerade(p)) => {
                let r = self.snat.inbound(&p.key, p.tcp, now);
                self.finish_unmasquerade(frame, &p, r, tables, now)
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

    /// First pass over a frame: everything but the SNAT table lookup.
    fn step(
        &mut self,
        frame: &mut Frame<'_>,
        tables: &Tables,
        now: Now,
    ) -> Result<Action, DropReason> {
        let node = &tables.node;
        let from_uplink = node.is_uplink_side(frame.meta.in_port);
        let packet = classify::classify(frame.data());
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
    /// What conntrack checks against the flow's TCP window.
    tcp: TcpSegment,
    key: FlowKey,
    next_hop_mac: MacAddr,
    /// UDP to the VXLAN port from a non-node: without a flow it is bad VXLAN, not the
    /// host's.
    not_vxlan: bool,
}

/// The pod MTU in overlay mode: the uplink's minus the VXLAN overhead.
fn overlay_mtu(node: &NodeSettings) -> u16 {
    node.uplink_mtu.saturating_sub(VXLAN_OVERHEAD_V4 as u16)
}

/// [`rewrite::decrement_ttl_v4`], a counted drop if the header is not there.
#[inline]
fn decrement_ttl_v4(d: &mut [u8], ip: &V4) -> Result<(), DropReason> {
    rewrite::decrement_ttl_v4(d, ip).ok_or(DropReason::MalformedIpv4)
}

/// The last step of every IPv4 path to a local pod: one hop fewer, addressed from
/// the pods' gateway to the pod's MAC, out of its port.
#[inline]
fn forward_to_local_pod_v4(
    d: &mut [u8],
    ip: &V4,
    port: PortId,
    mac: MacAddr,
    node: &NodeSettings,
) -> Step {
    decrement_ttl_v4(d, ip)?;
    bytes::set_macs(d, 0, mac, node.gateway_mac).ok_or(DropReason::MalformedEthernet)?;
    Ok(Verdict::Forward { port })
}
