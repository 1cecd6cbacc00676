//! Kubernetes Services for pods: a pod's packet to ClusterIP:port is sent to one
//! endpoint (destination NAT), chosen when the flow starts and kept for its life;
//! the endpoint's replies get the ClusterIP:port back as their source. kube-proxy's
//! job, done here because on AF_XDP a pod's packets never meet the kernel's
//! netfilter (see `tables::services` for which endpoints qualify).
//!
//! Decisions worth knowing:
//! - **Own flow map, not the SNAT shard.** The SNAT shard allocates NAT ports and
//!   keys flows by remote; a Service flow allocates nothing and is keyed by the
//!   client's tuple. A small per-worker map (`ServiceFlows`) with the conntrack TCP
//!   state machine and timeouts (`tables::conntrack`) is all it needs. It is
//!   bounded (the SNAT capacity), allocated when the worker starts, swept with the
//!   SNAT shard.
//! - **Which worker keeps a flow: the one that owns the client's address**
//!   ([`client_owner`]): the pod's packets and the replies to it both name it. A pod
//!   packet to a ClusterIP, or a packet from an endpoint, that arrived on another
//!   worker is handed off. With more than one worker a packet is only taken for a
//!   possible reply when its source is an endpoint in the current table; replies
//!   from an endpoint removed since, arriving on the wrong worker, are not
//!   translated (the connection then fails as it would with the endpoint gone).
//!   Decapsulated VXLAN cannot be handed off (the frame is no longer what arrived),
//!   so such replies are translated only on the owning worker.
//! - **Endpoint per flow by flow hash**, sticky per client address with
//!   `sessionAffinity: ClientIP` (the timeout refreshed by every new flow, as
//!   kube-proxy's `recent` match does).
//! - **Endpoints that go away**: TCP flows keep their endpoint (kube-proxy leaves
//!   their conntrack entries; a terminating pod finishes its connections). A UDP
//!   flow whose endpoint is no longer offered moves to a current one at its next
//!   packet, which is what kube-proxy's conntrack clean-up achieves for DNS.
//! - **Hairpin** (a pod reaching itself through its Service): the source is
//!   translated to the pods' gateway address as well, or the pod's kernel would see
//!   a packet from itself and drop it as a martian. On the TUN backend the same is
//!   done for every endpoint on this node: the kernel forwards between local pods
//!   there, so the endpoint's reply would reach the client without the dataplane
//!   and never get its ClusterIP back. kube-proxy masquerades to the
//!   node's bridge address for the same reason. The gateway and not the node
//!   address: the node address is the host's, which also talks to pods (kubelet
//!   probes) and must not have its packets taken for Service replies; the gateway
//!   address belongs to the dataplane alone. The client's port is kept.
//! - **No endpoint**: ICMP port unreachable from the ClusterIP (kube-proxy's
//!   `REJECT`), also for a ClusterIP on a port no Service has (kube-proxy's
//!   nftables mode); `Local` policy without a local endpoint drops silently.
//! - Not translated yet: ICMP errors about Service flows (the client sees them
//!   from the endpoint address), IP fragments (dropped).

use std::collections::HashMap;
use std::net::Ipv4Addr;

use super::icmp::IcmpError;
use super::{Pipeline, snat};
use crate::frame::Frame;
use crate::tables::conntrack::Direction;
use crate::tables::services::{Backend, FrontendKey, Origin, Selection};
use crate::tables::{FlowKey, FlowState, L4Proto, NatBinding, RouteTarget, Tables, Timeouts};
use crate::time::Now;
use crate::verdict::{DropReason, Verdict, WorkerId};
use crate::wire::classify::{L4, V4};
use crate::wire::rewrite;

/// What the Service stage made of a packet.
pub(super) enum ServiceStep {
    /// Route this packet on (translated, or not a Service packet at all).
    Continue(V4),
    /// Decided here (handed off, rejected).
    Done(Verdict),
}

/// One tracked Service flow, keyed by the client's packet as the client sent it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Flow {
    pub frontend: FrontendKey,
    /// A pod's flow to a ClusterIP, or an outside client's to a NodePort.
    pub origin: Origin,
    pub backend: Backend,
    /// The source the client is translated to (hairpin, NodePort with the Cluster
    /// policy): the gateway, with the client's port or a free one.
    pub masquerade: Option<NatBinding>,
    /// The key replies arrive with.
    pub reply: FlowKey,
    pub state: FlowState,
    pub expires: Now,
    /// Snapshot generation the backend was last checked against (UDP).
    pub generation: u64,
}

/// A `ClientIP` affinity: the endpoint a client's new flows to a frontend go to.
#[derive(Clone, Copy, Debug)]
struct Sticky {
    backend: Backend,
    expires: Now,
}

type Map<K, V> = HashMap<K, V, ahash::RandomState>;

/// A map with room for `n` entries, so the packet path never grows it.
fn map<K, V>(n: usize) -> Map<K, V> {
    HashMap::with_capacity_and_hasher(n, ahash::RandomState::new())
}

/// One worker's Service flows. See the module docs.
#[derive(Debug)]
pub(super) struct ServiceFlows {
    flows: Map<u128, Flow>,
    /// Reply key → the flow's key.
    replies: Map<u128, FlowKey>,
    affinity: Map<(FrontendKey, Ipv4Addr), Sticky>,
    capacity: usize,
    timeouts: Timeouts,
}

/// Flows a worker tracks at most before the SNAT capacity is known to be smaller.
const MAX_FLOWS: usize = 65_536;

impl ServiceFlows {
    pub fn new(capacity: usize, timeouts: Timeouts) -> Self {
        let capacity = capacity.clamp(1, MAX_FLOWS);
        ServiceFlows {
            flows: map(capacity),
            replies: map(capacity),
            affinity: map(capacity),
            capacity,
            timeouts,
        }
    }

    /// Number of tracked Service flows.
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// Forgets expired flows and affinities.
    pub fn sweep(&mut self, now: Now) {
        let replies = &mut self.replies;
        self.flows.retain(|_, f| {
            let live = f.expires > now;
            if !live {
                replies.remove(&pack(&f.reply));
            }
            live
        });
        self.affinity.retain(|_, s| s.expires > now);
    }

    /// Whether replies with `reply` already belong to a live flow other than `key`'s.
    pub(super) fn reply_taken(&self, reply: &FlowKey, key: &FlowKey, now: Now) -> bool {
        self.replies.get(&pack(reply)).is_some_and(|other| {
            other != key
                && self
                    .flows
                    .get(&pack(other))
                    .is_some_and(|f| f.expires > now)
        })
    }

    /// Tracks a new flow (room already checked with `has_room`).
    pub(super) fn insert(&mut self, key: FlowKey, flow: Flow) {
        self.replies.insert(pack(&flow.reply), key);
        self.flows.insert(pack(&key), flow);
    }

    pub(super) fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    fn remove(&mut self, key: &FlowKey) {
        if let Some(f) = self.flows.remove(&pack(key)) {
            self.replies.remove(&pack(&f.reply));
        }
    }

    /// Room for one more flow: expired ones are swept when the map is full.
    pub(super) fn has_room(&mut self, now: Now) -> bool {
        if self.flows.len() >= self.capacity {
            self.sweep(now);
        }
        self.flows.len() < self.capacity
    }
}

/// The worker that keeps every Service flow of `client` (a fixed multiplicative
/// hash, so every worker computes the same one).
#[inline]
pub(super) fn client_owner(workers: u16, client: Ipv4Addr) -> WorkerId {
    let h = u64::from(client.to_bits()).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32;
    WorkerId::try_from((h * u64::from(workers.max(1))) >> 32).unwrap_or(0)
}

/// A flow key as one integer: hashed with one call instead of one per field (the
/// derived `Hash` of [`FlowKey`] costs more than the map lookup itself).
#[inline]
fn pack(k: &FlowKey) -> u128 {
    (u128::from(k.proto.code()) << 96)
        | (u128::from(k.src.to_bits()) << 64)
        | (u128::from(k.src_port) << 48)
        | (u128::from(k.dst.to_bits()) << 16)
        | u128::from(k.dst_port)
}

pub(super) fn flow_key(ip: &V4, l4: &L4) -> Option<FlowKey> {
    snat::flow_key(ip, l4).filter(|k| k.proto != L4Proto::IcmpEcho)
}

impl Pipeline {
    /// Number of Service flows this worker tracks.
    pub fn service_flows(&self) -> usize {
        self.services.len()
    }

    /// Forgets expired Service flows (called with the SNAT sweep).
    pub fn sweep_services(&mut self, now: Now) {
        self.services.sweep(now);
    }

    /// A packet from a local pod (source already checked): a reply from an endpoint
    /// pod is given its ClusterIP back; a packet to a ClusterIP is sent to an
    /// endpoint; anything else continues unchanged.
    pub(super) fn service_from_pod(
        &mut self,
        frame: &mut Frame<'_>,
        ip: &V4,
        tables: &Tables,
        now: Now,
    ) -> Result<ServiceStep, DropReason> {
        let services = &tables.services;
        if services.is_empty() && self.services.flows.is_empty() {
            return Ok(ServiceStep::Continue(*ip));
        }
        if services.may_be_cluster_ip(ip.dst) {
            return self.cluster_ip_packet(frame, ip, tables, now);
        }
        self.service_reply(frame, ip, tables, now, true)
    }

    /// A reply from an endpoint to a client pod of this node: its source becomes
    /// the ClusterIP:port the client spoke to (and, hairpin, its destination the
    /// client again). `may_hand_off`: the frame is still as it arrived.
    pub(super) fn service_reply(
        &mut self,
        frame: &mut Frame<'_>,
        ip: &V4,
        tables: &Tables,
        now: Now,
        may_hand_off: bool,
    ) -> Result<ServiceStep, DropReason> {
        let pass = Ok(ServiceStep::Continue(*ip));
        let workers = self.snat_config.workers;
        if self.services.flows.is_empty() && workers <= 1 {
            return pass;
        }
        let Some(l4) = ip.l4.filter(|_| ip.frag_offset == 0) else {
            return pass;
        };
        let Some(key) = flow_key(ip, &l4) else {
            return pass;
        };
        if workers > 1 {
            if !tables
                .services
                .is_endpoint(key.proto, key.src, key.src_port)
            {
                return pass;
            }
            // A hairpin reply goes to the gateway; its client is its source.
            let client = if key.dst == tables.node.gateway_v4 {
                key.src
            } else {
                key.dst
            };
            let owner = client_owner(workers, client);
            if owner != self.worker {
                return if may_hand_off {
                    Ok(ServiceStep::Done(Verdict::HandOff { worker: owner }))
                } else {
                    pass
                };
            }
        }
        let Some(client_key) = self.services.replies.get(&pack(&key)).copied() else {
            return pass;
        };
        let timeouts = self.services.timeouts;
        let Some(flow) = self.services.flows.get_mut(&pack(&client_key)) else {
            return pass;
        };
        if flow.expires <= now {
            self.services.remove(&client_key);
            return pass;
        }
        flow.state = flow.state.next(Direction::Inbound, l4.tcp_flags);
        flow.expires = now.after(flow.state.timeout(&timeouts));
        let d = frame.data_mut();
        let from = NatBinding {
            addr: client_key.dst,
            port: client_key.dst_port,
        };
        rewrite::rewrite_source(d, ip, &l4, from.addr, from.port)
            .ok_or(DropReason::MalformedTransport)?;
        let mut out = V4 {
            src: from.addr,
            l4: Some(L4 {
                sport: from.port,
                ..l4
            }),
            ..*ip
        };
        if flow.masquerade.is_some() {
            // Back to the client as it sent: address and port.
            let to = NatBinding {
                addr: client_key.src,
                port: client_key.src_port,
            };
            rewrite::rewrite_destination(d, &out, &l4, to.addr, to.port)
                .ok_or(DropReason::MalformedTransport)?;
            out.dst = to.addr;
        }
        Ok(ServiceStep::Continue(out))
    }

    /// A pod's packet to an address in the ClusterIP range.
    fn cluster_ip_packet(
        &mut self,
        frame: &mut Frame<'_>,
        ip: &V4,
        tables: &Tables,
        now: Now,
    ) -> Result<ServiceStep, DropReason> {
        let services = &tables.services;
        let key = match ip.l4.filter(|_| ip.frag_offset == 0) {
            Some(l4) => flow_key(ip, &l4).map(|k| (k, l4)),
            None => None,
        };
        let Some((key, l4)) = key else {
            if services.is_cluster_ip(ip.dst) {
                return Err(if ip.is_fragment() {
                    DropReason::UntranslatableFragment
                } else {
                    DropReason::Unsupported
                });
            }
            return Ok(ServiceStep::Continue(*ip));
        };
        let workers = self.snat_config.workers;
        if workers > 1 {
            let owner = client_owner(workers, key.src);
            if owner != self.worker {
                return Ok(ServiceStep::Done(Verdict::HandOff { worker: owner }));
            }
        }
        if let Some(flow) = self.existing_flow(&key, l4.tcp_flags, tables, now) {
            return translate(frame, ip, &l4, &flow);
        }
        let Some(fe) = services.cluster_ip(key.proto, key.dst, key.dst_port) else {
            if services.is_cluster_ip(ip.dst) {
                return self.reject(frame, ip, tables, now);
            }
            return Ok(ServiceStep::Continue(*ip));
        };
        let list = match services.select(fe, Origin::Pod) {
            Selection::Endpoints(list) => list,
            Selection::Reject => return self.reject(frame, ip, tables, now),
            Selection::Drop => return Err(DropReason::ServiceNoLocalEndpoints),
        };
        let backend = self.choose(fe.key, fe.affinity.is_some(), list, ip, now);
        if let (Some(timeout), Some(b)) = (fe.affinity, backend) {
            self.stick(fe.key, key.src, b, now.after(timeout));
        }
        let backend = backend.ok_or(DropReason::ServiceNoEndpoints)?;
        let masquerade = needs_masquerade(tables, key.src, backend).then_some(NatBinding {
            addr: tables.node.gateway_v4,
            port: key.src_port,
        });
        let flow = new_flow(
            &key,
            &l4,
            fe.key,
            Origin::Pod,
            backend,
            masquerade,
            tables,
            now,
            self.services.timeouts,
        );
        if self.services.reply_taken(&flow.reply, &key, now) {
            return Err(DropReason::ServiceFlowConflict);
        }
        if !self.services.has_room(now) {
            return Err(DropReason::ConntrackFull);
        }
        self.services.insert(key, flow);
        translate(frame, ip, &l4, &flow)
    }

    /// The live flow of `key`, its state advanced; `None` when there is none (or no
    /// longer a valid one: expired, or a UDP flow whose endpoint is gone).
    pub(super) fn existing_flow(
        &mut self,
        key: &FlowKey,
        tcp_flags: u8,
        tables: &Tables,
        now: Now,
    ) -> Option<Flow> {
        let timeouts = self.services.timeouts;
        let flow = self.services.flows.get_mut(&pack(key))?;
        let mut valid = flow.expires > now;
        if valid && key.proto == L4Proto::Udp && flow.generation != tables.generation {
            let fe = flow.frontend;
            valid = tables
                .services
                .cluster_ip(fe.proto, fe.addr, fe.port)
                .is_some_and(|f| tables.services.serves(f, flow.origin, flow.backend));
            flow.generation = tables.generation;
        }
        if !valid {
            self.services.remove(key);
            return None;
        }
        flow.state = flow.state.next(Direction::Outbound, tcp_flags);
        flow.expires = now.after(flow.state.timeout(&timeouts));
        Some(*flow)
    }

    /// The endpoint of a new flow: the client's sticky one when affinity holds and it
    /// is still offered, else one picked by the flow hash.
    fn choose(
        &mut self,
        fe: FrontendKey,
        affinity: bool,
        list: &[Backend],
        ip: &V4,
        now: Now,
    ) -> Option<Backend> {
        if affinity
            && let Some(s) = self.services.affinity.get(&(fe, ip.src))
            && s.expires > now
            && list.contains(&s.backend)
        {
            return Some(s.backend);
        }
        let n = u32::try_from(list.len()).ok()?;
        let at = ip.flow_hash().checked_rem(n)?;
        list.get(at as usize).copied()
    }

    fn stick(&mut self, fe: FrontendKey, client: Ipv4Addr, backend: Backend, expires: Now) {
        let map = &mut self.services.affinity;
        if map.len() >= self.services.capacity {
            // Lost affinity is not fatal; stalling on a full map would be.
            map.retain(|_, s| s.expires > expires);
        }
        if map.len() < self.services.capacity || map.contains_key(&(fe, client)) {
            map.insert((fe, client), Sticky { backend, expires });
        }
    }

    /// ICMP port unreachable from the ClusterIP, as kube-proxy's `REJECT` rule.
    pub(super) fn reject(
        &mut self,
        frame: &mut Frame<'_>,
        ip: &V4,
        tables: &Tables,
        now: Now,
    ) -> Result<ServiceStep, DropReason> {
        let reason = DropReason::ServiceNoEndpoints;
        match self.icmp_v4(
            frame,
            ip,
            IcmpError::PortUnreachable,
            ip.dst,
            &tables.node,
            now,
        ) {
            Ok(_) => Ok(ServiceStep::Done(Verdict::Refuse(reason))),
            Err(DropReason::IcmpRateLimited) => Err(DropReason::IcmpRateLimited),
            Err(_) => Err(reason),
        }
    }
}

/// Whether the client's source must be translated too (to the gateway) so that the
/// endpoint's replies come back through the dataplane: a hairpin, and, when the
/// kernel forwards between local pods itself (the TUN backend: plain packets leave
/// through the host port, and the kernel routes pod to pod on the node directly),
/// any endpoint on this node.
fn needs_masquerade(tables: &Tables, client: Ipv4Addr, backend: Backend) -> bool {
    if backend.addr == client {
        return true;
    }
    let node = &tables.node;
    let kernel_forwards_local_pods = Some(node.routed_port) == node.host_port;
    kernel_forwards_local_pods
        && matches!(
            tables.routes.lookup_v4(backend.addr),
            Some(RouteTarget::LocalPod { .. })
        )
}

/// A new flow from the client's packet `key` to `backend` (its state from the first
/// packet, its reply key from the translation).
#[allow(clippy::too_many_arguments)]
pub(super) fn new_flow(
    key: &FlowKey,
    l4: &L4,
    frontend: FrontendKey,
    origin: Origin,
    backend: Backend,
    masquerade: Option<NatBinding>,
    tables: &Tables,
    now: Now,
    timeouts: Timeouts,
) -> Flow {
    let state = FlowState::initial(key.proto, l4.tcp_flags);
    let client = masquerade.unwrap_or(NatBinding {
        addr: key.src,
        port: key.src_port,
    });
    Flow {
        frontend,
        origin,
        backend,
        masquerade,
        reply: FlowKey {
            proto: key.proto,
            src: backend.addr,
            src_port: backend.port,
            dst: client.addr,
            dst_port: client.port,
        },
        state,
        expires: now.after(state.timeout(&timeouts)),
        generation: tables.generation,
    }
}

/// Rewrites the client's packet for `flow`: destination to the endpoint and, when
/// masqueraded, source to the gateway. Returns the packet as it now is.
pub(super) fn translate(
    frame: &mut Frame<'_>,
    ip: &V4,
    l4: &L4,
    flow: &Flow,
) -> Result<ServiceStep, DropReason> {
    let d = frame.data_mut();
    let to = NatBinding {
        addr: flow.backend.addr,
        port: flow.backend.port,
    };
    rewrite::rewrite_destination(d, ip, l4, to.addr, to.port)
        .ok_or(DropReason::MalformedTransport)?;
    let mut out = V4 {
        dst: to.addr,
        l4: Some(L4 {
            dport: to.port,
            ..*l4
        }),
        ..*ip
    };
    if let Some(from) = flow.masquerade {
        rewrite::rewrite_source(d, &out, l4, from.addr, from.port)
            .ok_or(DropReason::MalformedTransport)?;
        out.src = from.addr;
        if let Some(l4) = out.l4.as_mut() {
            l4.sport = from.port;
        }
    }
    Ok(ServiceStep::Continue(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_owner_is_in_range_and_stable() {
        for workers in [1u16, 2, 3, 8] {
            for i in 0..1000u32 {
                let a = Ipv4Addr::from_bits(0xc613_8000 + i);
                let w = client_owner(workers, a);
                assert!(w < workers);
                assert_eq!(w, client_owner(workers, a));
            }
        }
        assert_eq!(client_owner(0, Ipv4Addr::LOCALHOST), 0);
    }
}
