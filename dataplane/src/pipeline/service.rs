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
//!   SNAT shard. Its flows sit in a dense array (freed slots reused first) behind
//!   two of conntrack's 8-byte-bucket indexes (client key and reply key → slot), so
//!   10,000 flows take about 1 MiB and a packet one hash and two cache lines: a
//!   hash map sized for the 65,536-flow bound spread them over 16 MiB, and every
//!   packet paid a cache miss for it (DNAT ran 1.6-2.2x slower than established
//!   SNAT).
//! - **Most pod packets are not Service packets**, and are let through on two
//!   compares: the ClusterIP range (`ServiceTable::may_be_cluster_ip`) and the
//!   source port among the endpoint ports flows go to (a bitmap per worker, and the
//!   table's with several workers), before any flow key is hashed.
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
use crate::tables::flow_index::FlowIndex;
use crate::tables::port_set::PortSet;
use crate::tables::services::{Backend, FrontendKey, Origin, Selection};
use crate::tables::{FlowKey, FlowState, L4Proto, NatBinding, RouteTarget, Tables, Timeouts};
use crate::time::Now;
use crate::verdict::{DropReason, Verdict, WorkerId};
use crate::wire::classify::{L4, V4};
use crate::wire::rewrite;

/// What the Service stage made of a packet.
pub(super) enum ServiceStep {
    /// Not a Service packet: route it on as it is.
    Pass,
    /// Route this packet on, translated to this.
    Continue(V4),
    /// Decided here (handed off, rejected).
    Done(Verdict),
}

/// One tracked Service flow, keyed by the client's packet as the client sent it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Flow {
    /// The client's packet as the client sent it.
    pub key: FlowKey,
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
    /// Flow slots, dense from the start; `None` is a freed slot (also in `free`).
    slots: Vec<Option<Flow>>,
    free: Vec<u32>,
    by_client: FlowIndex,
    by_reply: FlowIndex,
    hasher: ahash::RandomState,
    /// The endpoint ports of the flows tracked (a superset between sweeps).
    reply_ports: PortSet,
    affinity: Map<(FrontendKey, Ipv4Addr), Sticky>,
    len: usize,
    capacity: usize,
    timeouts: Timeouts,
}

/// Flows a worker tracks at most before the SNAT capacity is known to be smaller.
const MAX_FLOWS: usize = 65_536;

impl ServiceFlows {
    pub fn new(capacity: usize, timeouts: Timeouts) -> Self {
        let capacity = capacity.clamp(1, MAX_FLOWS);
        ServiceFlows {
            slots: Vec::with_capacity(capacity),
            free: Vec::with_capacity(capacity),
            by_client: FlowIndex::with_capacity(capacity),
            by_reply: FlowIndex::with_capacity(capacity),
            hasher: ahash::RandomState::new(),
            reply_ports: PortSet::default(),
            affinity: map(capacity),
            len: 0,
            capacity,
            timeouts,
        }
    }

    /// Number of tracked Service flows.
    pub fn len(&self) -> usize {
        self.len
    }

    #[inline]
    fn hash(&self, k: &FlowKey) -> u32 {
        self.hasher.hash_one(pack(k)) as u32
    }

    /// Whether a packet from `port` may be a reply to a tracked flow.
    #[inline]
    fn may_be_reply_port(&self, port: u16) -> bool {
        self.reply_ports.contains(port)
    }

    /// The slot of the flow whose client packets have `key`.
    #[inline]
    fn find(&self, key: &FlowKey) -> Option<u32> {
        self.find_in(&self.by_client, key, |f| &f.key)
    }

    /// The slot of the flow whose replies have `key`.
    #[inline]
    fn find_reply(&self, key: &FlowKey) -> Option<u32> {
        self.find_in(&self.by_reply, key, |f| &f.reply)
    }

    /// The slot `index` names for `key`, checked against the flow's `key_of`.
    #[inline]
    fn find_in(
        &self,
        index: &FlowIndex,
        key: &FlowKey,
        key_of: fn(&Flow) -> &FlowKey,
    ) -> Option<u32> {
        let slots = &self.slots;
        index
            .find(
                self.hash(key),
                |s| matches!(slots.get(s as usize), Some(Some(f)) if key_of(f) == key),
            )
            .map(|hit| hit.value)
    }

    #[inline]
    fn get_mut(&mut self, slot: u32) -> Option<&mut Flow> {
        self.slots.get_mut(slot as usize)?.as_mut()
    }

    /// Whether replies with `reply` belong to a live flow other than `key`'s. A flow
    /// that holds them but has expired (or is `key`'s own, about to be replaced) is
    /// forgotten: it makes way.
    pub(super) fn reply_taken(&mut self, reply: &FlowKey, key: &FlowKey, now: Now) -> bool {
        let Some(slot) = self.find_reply(reply) else {
            return false;
        };
        if matches!(self.slots.get(slot as usize), Some(Some(f)) if f.expires > now && f.key != *key)
        {
            return true;
        }
        self.remove(slot);
        false
    }

    pub(super) fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// Tracks `flow` (its key and reply key absent: see `reply_taken`); `false` when
    /// full.
    pub(super) fn insert(&mut self, flow: Flow) -> bool {
        if self.len >= self.capacity {
            return false;
        }
        let slot = match self.free.pop() {
            Some(s) => s,
            None => match u32::try_from(self.slots.len()) {
                Ok(s) => {
                    self.slots.push(None);
                    s
                }
                Err(_) => return false,
            },
        };
        let Some(entry) = self.slots.get_mut(slot as usize) else {
            return false;
        };
        *entry = Some(flow);
        self.by_client.insert(self.hash(&flow.key), slot);
        self.by_reply.insert(self.hash(&flow.reply), slot);
        self.reply_ports.insert(flow.reply.src_port);
        self.len += 1;
        true
    }

    fn remove(&mut self, slot: u32) {
        let Some(flow) = self.slots.get_mut(slot as usize).and_then(Option::take) else {
            return;
        };
        if let Some(hit) = self.by_client.find(self.hash(&flow.key), |s| s == slot) {
            self.by_client.remove(hit.bucket);
        }
        if let Some(hit) = self.by_reply.find(self.hash(&flow.reply), |s| s == slot) {
            self.by_reply.remove(hit.bucket);
        }
        self.free.push(slot);
        self.len -= 1;
    }

    /// Forgets expired flows and affinities, and the reply ports no flow has now.
    pub fn sweep(&mut self, now: Now) {
        let mut removed = false;
        for slot in 0..self.slots.len() {
            if let Some(Some(f)) = self.slots.get(slot)
                && f.expires <= now
            {
                self.remove(slot as u32);
                removed = true;
            }
        }
        if removed {
            let ports = &mut self.reply_ports;
            ports.clear();
            for f in self.slots.iter().flatten() {
                ports.insert(f.reply.src_port);
            }
        }
        self.affinity.retain(|_, s| s.expires > now);
    }

    /// Room for one more flow: expired ones are swept when the map is full.
    pub(super) fn has_room(&mut self, now: Now) -> bool {
        if self.len >= self.capacity {
            self.sweep(now);
        }
        self.len < self.capacity
    }
}

/// The worker that keeps every Service flow of `client` (a fixed multiplicative
/// hash, so every worker computes the same one).
#[inline]
pub(super) fn client_owner(workers: u16, client: Ipv4Addr) -> WorkerId {
    let h = u64::from(client_hash(client));
    WorkerId::try_from((h * u64::from(workers.max(1))) >> 32).unwrap_or(0)
}

/// A hash of a client address alone: which worker owns its flows, and the endpoint
/// of a NodePort's ClientIP affinity.
#[inline]
pub(super) fn client_hash(client: Ipv4Addr) -> u32 {
    (u64::from(client.to_bits()).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as u32
}

/// The endpoint `hash` picks from `list`.
#[inline]
pub(super) fn pick(list: &[Backend], hash: u32) -> Option<Backend> {
    let n = u32::try_from(list.len()).ok()?;
    let at = hash.checked_rem(n)?;
    list.get(at as usize).copied()
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
    #[inline(always)]
    pub(super) fn service_from_pod(
        &mut self,
        frame: &mut Frame<'_>,
        ip: &V4,
        tables: &Tables,
        now: Now,
    ) -> Result<ServiceStep, DropReason> {
        if tables.services.may_be_cluster_ip(ip.dst) {
            return self.cluster_ip_packet(frame, ip, tables, now);
        }
        self.service_reply(frame, ip, tables, now, true)
    }

    /// A reply from an endpoint to a client pod of this node: its source becomes
    /// the ClusterIP:port the client spoke to (and, hairpin, its destination the
    /// client again). `may_hand_off`: the frame is still as it arrived.
    #[inline(always)]
    pub(super) fn service_reply(
        &mut self,
        frame: &mut Frame<'_>,
        ip: &V4,
        tables: &Tables,
        now: Now,
        may_hand_off: bool,
    ) -> Result<ServiceStep, DropReason> {
        // Only a packet from an endpoint port can be a reply: with one worker, a
        // port of a flow it tracks; with several, any endpoint's (the flow may be
        // another worker's).
        let may_be_reply = ip.l4.is_some_and(|l4| {
            if self.snat_config.workers > 1 {
                tables.services.may_be_endpoint_port(l4.sport)
            } else {
                self.services.may_be_reply_port(l4.sport)
            }
        });
        if !may_be_reply {
            return Ok(ServiceStep::Pass);
        }
        self.translate_reply(frame, ip, tables, now, may_hand_off)
    }

    /// [`Pipeline::service_reply`] past its port filter.
    #[inline(never)]
    fn translate_reply(
        &mut self,
        frame: &mut Frame<'_>,
        ip: &V4,
        tables: &Tables,
        now: Now,
        may_hand_off: bool,
    ) -> Result<ServiceStep, DropReason> {
        let pass = Ok(ServiceStep::Pass);
        let workers = self.snat_config.workers;
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
        let Some(slot) = self.services.find_reply(&key) else {
            return pass;
        };
        let timeouts = self.services.timeouts;
        let Some(flow) = self.services.get_mut(slot) else {
            return pass;
        };
        let client_key = flow.key;
        if flow.expires <= now {
            self.services.remove(slot);
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
            return Ok(ServiceStep::Pass);
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
            return Ok(ServiceStep::Pass);
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
        if !self.services.has_room(now) || !self.services.insert(flow) {
            return Err(DropReason::ConntrackFull);
        }
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
        let slot = self.services.find(key)?;
        let flow = self.services.get_mut(slot)?;
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
            self.services.remove(slot);
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
        pick(list, ip.flow_hash())
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
        key: *key,
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
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Client `i`'s flow to the ClusterIP, sent to endpoint `10.0.0.<i>`:5353.
    fn flow(i: u8, expires: u64) -> Flow {
        let key = FlowKey {
            proto: L4Proto::Udp,
            src: Ipv4Addr::new(198, 19, 1, i),
            src_port: 5000,
            dst: Ipv4Addr::new(198, 18, 240, 10),
            dst_port: 53,
        };
        let backend = Backend {
            addr: Ipv4Addr::new(198, 19, 2, i),
            port: 5353 + u16::from(i),
        };
        Flow {
            key,
            frontend: FrontendKey {
                proto: L4Proto::Udp,
                addr: key.dst,
                port: 53,
            },
            origin: Origin::Pod,
            backend,
            masquerade: None,
            reply: FlowKey {
                proto: L4Proto::Udp,
                src: backend.addr,
                src_port: backend.port,
                dst: key.src,
                dst_port: key.src_port,
            },
            state: FlowState::Udp,
            expires: Now(expires),
            generation: 1,
        }
    }

    #[test]
    fn flows_are_found_by_either_key_until_removed_and_slots_are_reused() {
        let mut m = ServiceFlows::new(4, Timeouts::default());
        let (a, b) = (flow(1, 100), flow(2, 100));
        assert!(m.insert(a) && m.insert(b));
        assert_eq!(m.len(), 2);
        let sa = m.find(&a.key).unwrap();
        assert_eq!(m.find_reply(&a.reply), Some(sa));
        assert_eq!(m.find_reply(&b.reply), m.find(&b.key));
        assert_ne!(m.find(&b.key), Some(sa));
        assert_eq!(m.find_reply(&a.key), None);
        m.remove(sa);
        assert_eq!((m.find(&a.key), m.find_reply(&a.reply)), (None, None));
        assert!(m.find(&b.key).is_some());
        // The freed slot is taken first: the flows stay dense.
        let c = flow(3, 100);
        assert!(m.insert(c));
        assert_eq!(m.find(&c.key), Some(sa));
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn a_full_map_refuses_until_expired_flows_are_swept() {
        let mut m = ServiceFlows::new(2, Timeouts::default());
        assert!(m.insert(flow(1, 10)) && m.insert(flow(2, 100)));
        assert!(!m.insert(flow(3, 100)));
        assert!(!m.has_room(Now(5)));
        assert!(m.has_room(Now(10)));
        assert!(m.insert(flow(3, 100)));
        assert!(m.find(&flow(1, 0).key).is_none());
    }

    #[test]
    fn only_endpoint_ports_of_live_flows_pass_the_reply_filter() {
        let mut m = ServiceFlows::new(8, Timeouts::default());
        assert!(!m.may_be_reply_port(5354));
        assert!(m.insert(flow(1, 10)) && m.insert(flow(2, 100)));
        assert!(m.may_be_reply_port(5354) && m.may_be_reply_port(5355));
        assert!(!m.may_be_reply_port(5000) && !m.may_be_reply_port(53));
        m.sweep(Now(50));
        assert!(!m.may_be_reply_port(5354), "swept flow's port still passes");
        assert!(m.may_be_reply_port(5355));
    }

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
