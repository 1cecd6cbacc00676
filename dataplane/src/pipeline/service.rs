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
//! - **Which worker keeps a flow: the one that owns its client.** A pod or the
//!   host (ClusterIP flows) is owned by its address alone ([`client_owner`]), so
//!   all its flows, and its ClientIP affinity, live on one worker; an outside client
//!   (NodePort flows) as the SNAT shard owns flows to it (`owner_of_remote`, by
//!   address and port): an endpoint pod's packet to such a client may be a reply or
//!   the pod's own new masqueraded flow (an NTP server syncing from port 123), and
//!   the two readings must name the same worker, or the frame would need a second
//!   hand-off, which the worker loop drops. Every packet of the client names its
//!   owner, so one that arrived on another worker is handed off before any lookup.
//!   A reply names the client too, unless the flow is masqueraded to the gateway
//!   (hairpin, local endpoints on TUN, NodePort `Cluster`): then its destination
//!   port does. A worker masquerades only to gateway ports that [`port_owner`]
//!   gives it (the client's own when it is one, else the next of every
//!   `workers`-th port), and a reply to the gateway goes to the worker its port
//!   names ([`reply_owner`]). An address-based owner would fail there: the reply
//!   carries the endpoint and the gateway, and flows from many clients (on many
//!   workers) to one endpoint share both. Splitting the ports also keeps two
//!   workers from handing out one gateway port towards the same endpoint, which
//!   per-worker maps could not see.
//! - **An endpoint outside the cluster with SNAT on** (the `kubernetes` Service: the
//!   API server; any EndpointSlice naming an outside address): the client's packet
//!   is DNATed by the worker that owns the client, then masqueraded by the one that
//!   owns the endpoint as a remote (`owner_of_remote`), so the translated packet is
//!   handed on; the reply goes to the SNAT owner as it arrived, is un-SNATed there
//!   (`from_uplink::finish_unmasquerade`) and, now a packet from the uplink to a
//!   local pod, handed to the client's owner, which gives it the ClusterIP:port
//!   back: kube-proxy's DNAT + MASQUERADE undone in reverse order. Each state stays
//!   where every other packet of its kind finds it; the price is a second hand-off
//!   for such flows when the two owners differ (the worker loop allows two,
//!   `worker::handoff::MAX_HAND_OFFS`). The frame handed on after un-SNAT is not as
//!   it arrived, but the owner trusts nothing in it that a frame from the wire could
//!   not carry. Keeping both on one worker would need the endpoint before the flow
//!   lookup (the client's packet names only the ClusterIP), or NAT ports that name
//!   their worker. A pod's direct flow to an address that is also an endpoint pays
//!   the same hand-off for nothing (found in no Service flow, it passes unchanged).
//! - **Replies on the wrong worker are handed off as they arrived**, also when
//!   they came decapsulated from VXLAN (a remote endpoint's reply: RSS spreads
//!   VXLAN by the outer source port, a hash of the inner flow, so about half of them
//!   land elsewhere). The hand-off is decided before anything in the frame is
//!   written, and decapsulation only moves the frame's start, so `from_uplink`
//!   puts the outer header back (`vxlan::restore_outer`) and the owner decapsulates
//!   again, anti-spoofing check included; no second kind of parcel, no trust in what
//!   another worker checked. A merged train (one super-frame) stays whole until the
//!   worker loop cuts it into VXLAN datagrams for the hand-off, as any super-frame.
//!   With one worker none of this runs (`workers > 1` checks only).
//! - With more than one worker a packet is only taken for a possible reply when its
//!   source is an endpoint in the current table; replies from an endpoint removed
//!   since, arriving on the wrong worker, are not translated (the connection then
//!   fails as it would with the endpoint gone).
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
//!   address belongs to the dataplane alone. The client's port is kept unless
//!   another flow to the endpoint has it (or, with several workers, it is not one
//!   of this worker's gateway ports); then a nearby one is taken.
//! - **No endpoint**: ICMP port unreachable from the ClusterIP (kube-proxy's
//!   `REJECT`), also for a ClusterIP on a port no Service has (kube-proxy's
//!   nftables mode); `Local` policy without a local endpoint drops silently.
//! - **ICMP errors about Service flows** (the endpoint's port unreachable, a
//!   router's or our own "fragmentation needed") are translated back to the client
//!   as Linux conntrack translates RELATED errors: the quoted packet as the client
//!   sent it, from the ClusterIP when the endpoint sent the error
//!   (`translate_error`, `untranslate_for_error`). The quoted flow's reply key finds
//!   the flow and its worker, so errors are handed off as replies are. Not
//!   translated: errors from the client's side about a flow's replies (rare: the
//!   client is a pod of this node or the NodePort's outside client), and IP
//!   fragments (dropped).

use std::collections::HashMap;
use std::net::Ipv4Addr;

use super::icmp::IcmpError;
use super::{Pipeline, snat};
use crate::frame::Frame;
use crate::tables::conntrack::Direction;
use crate::tables::flow_index::FlowIndex;
use crate::tables::port_set::PortSet;
use crate::tables::services::{Backend, FrontendKey, Origin, Selection};
use crate::tables::{
    FlowKey, FlowState, L4Proto, NatBinding, RouteTarget, SnatConfig, Tables, Timeouts,
    owner_of_remote,
};
use crate::time::Now;
use crate::verdict::{DropReason, Verdict, WorkerId};
use crate::wire::MacAddr;
use crate::wire::classify::{L4, NO_PORT, V4};
use crate::wire::packet::ip_proto;
use crate::wire::{icmp_quote, rewrite};

/// What the Service stage made of a packet.
pub(super) enum ServiceStep {
    /// Not a Service packet: route it on as it is.
    Pass,
    /// Route this packet on, translated to this.
    Continue(V4),
    /// Decided here (handed off, rejected, a NodePort reply sent to its client).
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
    /// A NodePort flow's: the MAC its client's packets arrive from (the client's
    /// own on the uplink's subnet, else a router's); replies to a client outside
    /// the cluster go back to it (see `node_port`). Zero for a pod's flow.
    pub client_mac: MacAddr,
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

    /// The flow whose replies have `key`, unless it has expired.
    fn live_reply_flow(&self, key: &FlowKey, now: Now) -> Option<Flow> {
        let slot = self.find_reply(key)?;
        let flow = self.slots.get(slot as usize).copied().flatten()?;
        (flow.expires > now).then_some(flow)
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
        admit_reply_port(&mut self.reply_ports, flow.reply.src_port);
        self.len += 1;
        true
    }

    /// Sends the replies of `key`'s flow to `mac` from now on: the client's packets
    /// come from there now (another router of the segment took over).
    pub(super) fn follow_client(&mut self, key: &FlowKey, mac: MacAddr) {
        if let Some(slot) = self.find(key)
            && let Some(flow) = self.get_mut(slot)
        {
            flow.client_mac = mac;
        }
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
                admit_reply_port(ports, f.reply.src_port);
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

/// Lets packets from a flow's endpoint port past the reply filter, and ICMP errors
/// (which have no port: [`NO_PORT`]) with them, since they may be about the flow.
fn admit_reply_port(ports: &mut PortSet, port: u16) {
    ports.insert(port);
    ports.insert(NO_PORT);
}

/// The worker that keeps every Service flow of `client` (a fixed multiplicative
/// hash, so every worker computes the same one).
#[inline]
pub(super) fn client_owner(workers: u16, client: Ipv4Addr) -> WorkerId {
    let h = u64::from(client_hash(client));
    WorkerId::try_from((h * u64::from(workers.max(1))) >> 32).unwrap_or(0)
}

/// The worker that keeps the flow a reply with `key` (from an endpoint) belongs to,
/// the one that owns its client. A client in this node's pod network (a pod, the
/// host's pod-network address: ClusterIP flows) by its address alone
/// ([`client_owner`]); a reply to the gateway (a masqueraded flow, whose client is
/// not in the reply) by its port ([`port_owner`]); any other client is outside (a
/// NodePort's with `Local`) and owned as the SNAT shard owns flows to it
/// ([`owner_of_remote`]): an endpoint pod's packet to it may also be the pod's own
/// new masqueraded flow, and the two readings must not name different workers (the
/// second hand-off would be dropped).
#[inline]
pub(super) fn reply_owner(config: &SnatConfig, key: &FlowKey, tables: &Tables) -> WorkerId {
    let node = &tables.node;
    if key.dst == node.gateway_v4 {
        return port_owner(config.workers, key.dst_port);
    }
    let in_pod_network = Some(key.dst) == node.host_pod_addr
        || matches!(
            tables.routes.lookup_v4(key.dst),
            Some(RouteTarget::LocalPod { .. })
        );
    if in_pod_network {
        client_owner(config.workers, key.dst)
    } else {
        outside_client_owner(config, key.proto, key.dst, key.dst_port)
    }
}

/// The worker that keeps the flows of an outside client `addr`:`port` (NodePort
/// flows): the one that masquerades pod flows to it (see [`reply_owner`]).
#[inline]
pub(super) fn outside_client_owner(
    config: &SnatConfig,
    proto: L4Proto,
    addr: Ipv4Addr,
    port: u16,
) -> WorkerId {
    owner_of_remote(config, proto, addr, port).unwrap_or(0)
}

/// The worker whose masqueraded flows use gateway port `port`: every worker has
/// every `workers`-th port, so the ports near a client's have one of each.
#[inline]
pub(super) fn port_owner(workers: u16, port: u16) -> WorkerId {
    port.checked_rem(workers).unwrap_or(0)
}

/// How many ports a masqueraded flow tries before it gives up on a busy endpoint
/// (`service_flow_conflict`).
const MASQUERADE_PORT_TRIES: u16 = 16;

/// The `i`-th gateway port `worker` tries for a flow masqueraded from
/// `client_port`: the client's own when [`port_owner`] gives it to this worker,
/// then the next ones that it gives this worker, above the well-known ports (none
/// past 65535). With one worker: the client's port, then the next ones.
fn masquerade_port(client_port: u16, i: u16, worker: WorkerId, workers: u16) -> Option<u16> {
    let keep = port_owner(workers, client_port) == worker;
    if keep && i == 0 {
        return Some(client_port);
    }
    let w = u32::from(workers.max(1));
    let nth = u32::from(i) - u32::from(keep);
    let lo = (u32::from(client_port) + 1).max(1024);
    let first = lo + (u32::from(worker) + w - lo % w) % w;
    u16::try_from(first + nth * w).ok()
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
        self.service_reply(frame, ip, tables, now)
    }

    /// A reply from an endpoint to a client pod of this node: its source becomes
    /// the ClusterIP:port the client spoke to (and, masqueraded, its destination the
    /// client again).
    ///
    /// A reply that belongs to another worker's flow is handed off before anything
    /// in the frame is written: a caller that stripped headers first (VXLAN) can put
    /// them back.
    #[inline(always)]
    pub(super) fn service_reply(
        &mut self,
        frame: &mut Frame<'_>,
        ip: &V4,
        tables: &Tables,
        now: Now,
    ) -> Result<ServiceStep, DropReason> {
        let may_be_reply = ip
            .l4
            .is_some_and(|l4| self.may_be_service_reply(l4.sport, tables));
        if !may_be_reply {
            return Ok(ServiceStep::Pass);
        }
        self.translate_reply(frame, ip, tables, now)
    }

    /// An ICMP error about a Service flow, from its endpoint or a router on the way
    /// (port unreachable, fragmentation needed): RELATED to the flow, as Linux
    /// conntrack calls it, and translated back as the flow's replies are, so the
    /// client's socket hears it. The quoted packet (the client's, as the endpoint got
    /// it) gets the client's source and the ClusterIP:port (NodePort: the node's
    /// address and port) as its destination; the outer destination becomes the client
    /// when the flow was masqueraded, the outer source the frontend when the error
    /// came from the endpoint itself (a router's address is kept). The quoted flow's
    /// reply key finds the flow and the worker that keeps it, as a reply's own key
    /// would. The flow's state and timeout are left alone.
    #[cold]
    #[inline(never)]
    fn translate_error(
        &mut self,
        frame: &mut Frame<'_>,
        ip: &V4,
        icmp: &L4,
        tables: &Tables,
        now: Now,
    ) -> Result<ServiceStep, DropReason> {
        let pass = Ok(ServiceStep::Pass);
        if ip.frag_offset != 0 || !icmp_quote::is_translatable_error(icmp.icmp_type) {
            return pass;
        }
        let d = frame.data();
        let Some((quoted, quoted_dst)) = icmp_quote::quoted(d, ip, icmp) else {
            return pass;
        };
        if quoted.src != ip.dst {
            // Errors go to the sender of the packet they quote; this one is not
            // about a packet its destination sent.
            return pass;
        }
        let Some(key) = snat::reply_key(&quoted, quoted_dst) else {
            return pass;
        };
        if !self.may_be_service_reply(key.src_port, tables) {
            return pass;
        }
        if let Some(elsewhere) = self.not_this_workers_reply(&key, tables) {
            return Ok(elsewhere);
        }
        let Some(flow) = self.services.live_reply_flow(&key, now) else {
            return pass;
        };
        if !snat::icmp_checksum_ok(d, ip, icmp) {
            return Err(DropReason::MalformedTransport);
        }
        let client = NatBinding {
            addr: flow.key.src,
            port: flow.key.src_port,
        };
        let t = snat::ErrorTranslation {
            quoted_src: flow.masquerade.map(|_| client),
            quoted_dst: Some(NatBinding {
                addr: flow.key.dst,
                port: flow.key.dst_port,
            }),
            outer_src: (ip.src == flow.backend.addr).then_some(flow.key.dst),
            outer_dst: flow.masquerade.map(|_| client.addr),
        };
        let out = snat::untranslate_error(frame.data_mut(), ip, icmp, &quoted, quoted_dst, t)?;
        if flow.origin == Origin::External {
            // To a NodePort client: where its replies go (see `node_port`).
            return self.node_port_reply(frame, out, flow.client_mac, tables, now);
        }
        Ok(ServiceStep::Continue(out))
    }

    /// For an error the dataplane itself sends about a client's packet it has
    /// translated for a Service flow (too big for the overlay, TTL run out on the way
    /// to the endpoint): the packet put back as the client sent it, so that the error
    /// quotes what the client's socket knows and goes to the client (Linux translates
    /// its own errors about NATed packets the same way). `None` for any other packet.
    #[cold]
    #[inline(never)]
    pub(super) fn untranslate_for_error(
        &mut self,
        frame: &mut Frame<'_>,
        ip: &V4,
        now: Now,
    ) -> Result<Option<V4>, DropReason> {
        let Some(l4) = ip.l4.filter(|_| ip.frag_offset == 0) else {
            return Ok(None);
        };
        let Some(sent) = flow_key(ip, &l4) else {
            return Ok(None);
        };
        let Some(flow) = self.services.live_reply_flow(&sent.reversed(), now) else {
            return Ok(None);
        };
        // The flow's translation reversed: to the frontend, from the client.
        let undo = Flow {
            backend: Backend {
                addr: flow.key.dst,
                port: flow.key.dst_port,
            },
            masquerade: flow.masquerade.map(|_| NatBinding {
                addr: flow.key.src,
                port: flow.key.src_port,
            }),
            ..flow
        };
        match translate(frame, ip, &l4, &undo)? {
            ServiceStep::Continue(out) => Ok(Some(out)),
            ServiceStep::Pass | ServiceStep::Done(_) => Ok(None),
        }
    }

    /// Whether a packet from source port `sport` may be a Service reply. Only a
    /// packet from an endpoint port can be one: with one worker, a port of a flow
    /// it tracks; with several, any endpoint's (the flow may be another worker's).
    /// ICMP errors (`NO_PORT`) pass whenever there is a flow (an endpoint): they may
    /// be about one. Letting them through this filter rather than a check of their
    /// own keeps every other packet's path as short as it was.
    #[inline(always)]
    pub(super) fn may_be_service_reply(&self, sport: u16, tables: &Tables) -> bool {
        if self.snat_config.workers > 1 {
            tables.services.may_be_endpoint_port(sport)
        } else {
            self.services.may_be_reply_port(sport)
        }
    }

    /// With several workers, what becomes of a packet with the reply key `key` (a
    /// reply, or an error quoting the flow) that this worker cannot translate: `Pass`
    /// when its source is no endpoint, a hand-off when another worker keeps the flow.
    /// `None`: it is this worker's to look up.
    #[inline]
    fn not_this_workers_reply(&self, key: &FlowKey, tables: &Tables) -> Option<ServiceStep> {
        if self.snat_config.workers <= 1 {
            return None;
        }
        if !tables
            .services
            .is_endpoint(key.proto, key.src, key.src_port)
        {
            return Some(ServiceStep::Pass);
        }
        let owner = reply_owner(&self.snat_config, key, tables);
        (owner != self.worker).then_some(ServiceStep::Done(Verdict::HandOff { worker: owner }))
    }

    /// [`Pipeline::service_reply`] past its port filter.
    #[inline(never)]
    fn translate_reply(
        &mut self,
        frame: &mut Frame<'_>,
        ip: &V4,
        tables: &Tables,
        now: Now,
    ) -> Result<ServiceStep, DropReason> {
        let pass = Ok(ServiceStep::Pass);
        let Some(l4) = ip.l4.filter(|_| ip.frag_offset == 0) else {
            return pass;
        };
        if l4.proto == ip_proto::ICMP {
            // Past the port filter on `NO_PORT`: maybe an error about a flow.
            return self.translate_error(frame, ip, &l4, tables, now);
        }
        let Some(key) = flow_key(ip, &l4) else {
            return pass;
        };
        if let Some(elsewhere) = self.not_this_workers_reply(&key, tables) {
            return Ok(elsewhere);
        }
        let Some(slot) = self.services.find_reply(&key) else {
            return pass;
        };
        let timeouts = self.services.timeouts;
        let Some(flow) = self.services.get_mut(slot) else {
            return pass;
        };
        let (client_key, origin, client_mac) = (flow.key, flow.origin, flow.client_mac);
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
        if origin == Origin::External {
            return self.node_port_reply(frame, out, client_mac, tables, now);
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
        let masquerade = needs_masquerade(tables, key.src, backend);
        let flow = self.track(
            &key,
            &l4,
            fe.key,
            (Origin::Pod, MacAddr::ZERO),
            backend,
            masquerade,
            tables,
            now,
        )?;
        translate(frame, ip, &l4, &flow)
    }

    /// Starts tracking the client's new flow `key` to `backend`, `masquerade`d to the
    /// gateway or not; `client_mac`: see [`Flow::client_mac`]. A masqueraded flow
    /// gets the first free port of [`masquerade_port`]'s: replies to the gateway
    /// name this worker by it.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn track(
        &mut self,
        key: &FlowKey,
        l4: &L4,
        frontend: FrontendKey,
        (origin, client_mac): (Origin, MacAddr),
        backend: Backend,
        masquerade: bool,
        tables: &Tables,
        now: Now,
    ) -> Result<Flow, DropReason> {
        let timeouts = self.services.timeouts;
        let flow_to = |masquerade| {
            new_flow(
                key,
                l4,
                frontend,
                (origin, client_mac),
                backend,
                masquerade,
                tables,
                now,
                timeouts,
            )
        };
        let flow = if masquerade {
            let gateway = tables.node.gateway_v4;
            let (worker, workers) = (self.worker, self.snat_config.workers);
            (0..MASQUERADE_PORT_TRIES)
                .filter_map(|i| masquerade_port(key.src_port, i, worker, workers))
                .map(|port| {
                    flow_to(Some(NatBinding {
                        addr: gateway,
                        port,
                    }))
                })
                .find(|f| !self.services.reply_taken(&f.reply, key, now))
        } else {
            Some(flow_to(None)).filter(|f| !self.services.reply_taken(&f.reply, key, now))
        };
        let flow = flow.ok_or(DropReason::ServiceFlowConflict)?;
        if !self.services.has_room(now) || !self.services.insert(flow) {
            return Err(DropReason::ConntrackFull);
        }
        Ok(flow)
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
fn new_flow(
    key: &FlowKey,
    l4: &L4,
    frontend: FrontendKey,
    (origin, client_mac): (Origin, MacAddr),
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
        client_mac,
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
            client_mac: MacAddr::ZERO,
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
        assert!(!m.may_be_reply_port(5354) && !m.may_be_reply_port(NO_PORT));
        assert!(m.insert(flow(1, 10)) && m.insert(flow(2, 100)));
        assert!(m.may_be_reply_port(5354) && m.may_be_reply_port(5355));
        assert!(m.may_be_reply_port(NO_PORT), "ICMP errors pass with flows");
        assert!(!m.may_be_reply_port(5000) && !m.may_be_reply_port(53));
        m.sweep(Now(50));
        assert!(!m.may_be_reply_port(5354), "swept flow's port still passes");
        assert!(m.may_be_reply_port(5355) && m.may_be_reply_port(NO_PORT));
        m.sweep(Now(200));
        assert!(
            !m.may_be_reply_port(NO_PORT),
            "no flow, no error to translate"
        );
    }

    #[test]
    fn one_worker_masquerades_from_the_clients_port_then_the_next_ones() {
        assert_eq!(masquerade_port(40000, 0, 0, 1), Some(40000));
        assert_eq!(masquerade_port(40000, 3, 0, 1), Some(40003));
        assert_eq!(masquerade_port(65535, 1, 0, 1), None);
        // A well-known client port is kept, never taken for another.
        assert_eq!(masquerade_port(80, 0, 0, 1), Some(80));
        assert_eq!(masquerade_port(80, 1, 0, 1), Some(1024));
    }

    #[test]
    fn masquerade_ports_name_the_worker_that_chose_them() {
        for workers in [2u16, 3, 8] {
            for worker in 0..workers {
                for client in [1000u16, 40000, 40001, 65530] {
                    let ports: Vec<u16> = (0..MASQUERADE_PORT_TRIES)
                        .filter_map(|i| masquerade_port(client, i, worker, workers))
                        .collect();
                    assert!(ports.iter().all(|&p| port_owner(workers, p) == worker));
                    assert!(ports.iter().all(|&p| p >= 1024 || p == client));
                    assert!(ports.is_sorted_by(|a, b| a < b), "{ports:?}");
                    let kept = port_owner(workers, client) == worker;
                    assert_eq!(ports.first() == Some(&client), kept);
                    if client < 60000 {
                        assert_eq!(ports.len(), usize::from(MASQUERADE_PORT_TRIES));
                    }
                }
            }
        }
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
